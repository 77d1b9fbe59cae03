/**
 * train: tokens/s of Trainer.fit (on a synthetic source, and on a shuffled .npy file) against the
 * bare `opt.step` loop on the same shapes, in one run. Steady state: the time from the first
 * step's end to the last step's end (the one-time b_dec initialisation is not counted).
 * Target: trainer overhead <= 10%.
 */
import { mkdirSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { openActivations } from '../lib/data/index.js';
import { superposition } from '../lib/data/synthetic.js';
import { io, SparseAutoencoder } from '../lib/index.js';
import { Trainer } from '../lib/train/index.js';
import { type Benchmark, lcgArray, type Row } from './harness.js';


export const train: Benchmark = {
  name: 'train',
  description: 'Trainer.fit (synthetic source, .npy file) vs the bare opt.step loop, tokens/s',
  async run(opts) {
    const [dIn, numLatents, k, batch] = opts.quick ? [256, 4096, 32, 1024] : [768, 24576, 32, 4096];
    const steps = Math.max(4, opts.repeats + 1);
    const rows: Row[] = [];

    // Bare loop.
    const xs = [lcgArray(batch * dIn, 1), lcgArray(batch * dIn, 2)];
    let bareRate: number;
    {
      using sae = SparseAutoencoder.create({ dIn, numLatents, k, seed: 1 });
      using opt = sae.adam();
      await opt.step(xs[0]!);
      const t0 = performance.now();
      for (let i = 0; i < steps - 1; i++) await opt.step(xs[i % 2]!);
      bareRate = ((steps - 1) * batch) / ((performance.now() - t0) / 1e3);
      rows.push({ run: 'bare opt.step loop', 'tok/s': bareRate, overhead: '-' });
    }

    const fitRate = async (label: string, make: () => Promise<Parameters<Trainer['fit']>[0]>) => {
      const source = await make();
      using sae = SparseAutoencoder.create({ dIn, numLatents, k, seed: 1 });
      const trainer = new Trainer(sae, { batchSize: batch, totalTokens: steps * batch, warmupSteps: 1 });
      const ends: number[] = [];
      await trainer.fit(source, { onStep: () => void ends.push(performance.now()) });
      await source.close();
      const rate = ((ends.length - 1) * batch) / ((ends[ends.length - 1]! - ends[0]!) / 1e3);
      rows.push({ run: label, 'tok/s': rate, overhead: `${(100 * (bareRate / rate - 1)).toFixed(1)}%` });
    };

    await fitRate('Trainer.fit, synthetic source', async () =>
      superposition({ dIn, numFeatures: 4 * dIn, firing: { kind: 'expected-active', n: 16 }, numRows: 4 * steps * batch, seed: 3 }).source,
    );
    const dir = path.join(os.tmpdir(), 'saekit-bench');
    mkdirSync(dir, { recursive: true });
    const file = path.join(dir, `train-${dIn}-${steps * batch * 2}.npy`);
    if (!existsSync(file)) {
      const n = steps * batch * 2;
      await io.writeNpy(file, { dtype: 'float32', shape: [n, dIn], data: lcgArray(n * dIn, 4) });
    }
    await fitRate('Trainer.fit, .npy file (shuffled)', () => openActivations(file));
    return { rows, meta: { dIn, numLatents, k, batch, steps, note: 'overhead = bare tok/s / fit tok/s - 1 (steady state)' } };
  },
};
