/**
 * train: tokens/s of Trainer.fit (on a synthetic source, and on a shuffled .npy file) against the
 * bare `opt.step` loop on the same shapes, in one run. Steady state: the time from the first
 * step's end to the last step's end (the one-time b_dec initialisation is not counted). The three
 * runs alternate over 3 rounds; each overhead is the median of its per-round ratios.
 * Target: trainer overhead <= 10%.
 */
import { mkdirSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { openActivations } from '../lib/data/index.js';
import { superposition } from '../lib/data/synthetic.js';
import { io, SparseAutoencoder } from '../lib/index.js';
import { Trainer } from '../lib/train/index.js';
import { type Benchmark, lcgArray, median, type Row } from './harness.js';

/** Rounds of the three runs (bare loop, fit on a synthetic source, fit on a file), alternating. */
const ROUNDS = 3;


export const train: Benchmark = {
  name: 'train',
  description: 'Trainer.fit (synthetic source, .npy file) vs the bare opt.step loop, tokens/s',
  async run(opts) {
    const [dIn, numLatents, k, batch] = opts.quick ? [256, 4096, 32, 1024] : [768, 24576, 32, 4096];
    const steps = Math.max(4, opts.repeats + 1);

    const xs = [lcgArray(batch * dIn, 1), lcgArray(batch * dIn, 2)];
    const dir = path.join(os.tmpdir(), 'saekit-bench');
    mkdirSync(dir, { recursive: true });
    const file = path.join(dir, `train-${dIn}-${steps * batch * 2}.npy`);
    if (!existsSync(file)) {
      const n = steps * batch * 2;
      await io.writeNpy(file, { dtype: 'float32', shape: [n, dIn], data: lcgArray(n * dIn, 4) });
    }

    /** Tokens/s of the bare loop: steps after the first. */
    const bare = async (): Promise<number> => {
      using sae = SparseAutoencoder.create({ dIn, numLatents, k, seed: 1 });
      using opt = sae.adam();
      await opt.step(xs[0]!);
      const t0 = performance.now();
      for (let i = 0; i < steps - 1; i++) await opt.step(xs[i % 2]!);
      return ((steps - 1) * batch) / ((performance.now() - t0) / 1e3);
    };
    /** Tokens/s of Trainer.fit: from the first step's end to the last's. */
    const fit = async (make: () => Promise<Parameters<Trainer['fit']>[0]>): Promise<number> => {
      const source = await make();
      using sae = SparseAutoencoder.create({ dIn, numLatents, k, seed: 1 });
      const trainer = new Trainer(sae, { batchSize: batch, totalTokens: steps * batch, warmupSteps: 1 });
      const ends: number[] = [];
      await trainer.fit(source, { onStep: () => void ends.push(performance.now()) });
      await source.close();
      return ((ends.length - 1) * batch) / ((ends[ends.length - 1]! - ends[0]!) / 1e3);
    };
    const runs = {
      'bare opt.step loop': bare,
      'Trainer.fit, synthetic source': () =>
        fit(async () => superposition({ dIn, numFeatures: 4 * dIn, firing: { kind: 'expected-active', n: 16 }, numRows: 4 * steps * batch, seed: 3 }).source),
      'Trainer.fit, .npy file (shuffled)': () => fit(() => openActivations(file)),
    };
    // The three runs alternate, ROUNDS times, the order rotating; each overhead is the median of
    // its per-round ratios to that round's bare loop.
    const names = Object.keys(runs) as (keyof typeof runs)[];
    const rates = Object.fromEntries(names.map((n) => [n, [] as number[]])) as Record<keyof typeof runs, number[]>;
    for (let r = 0; r < ROUNDS; r++) {
      for (let j = 0; j < names.length; j++) {
        const name = names[(r + j) % names.length]!;
        rates[name].push(await runs[name]());
      }
    }
    const bareRates = rates['bare opt.step loop'];
    const rows: Row[] = names.map((n) => ({
      run: n,
      'tok/s': median(rates[n]),
      overhead: n === 'bare opt.step loop' ? '-' : `${(100 * (median(bareRates.map((b, i) => b / rates[n][i]!)) - 1)).toFixed(1)}%`,
    }));
    return { rows, meta: { dIn, numLatents, k, batch, steps, rounds: ROUNDS, tokensPerSecond: rates, note: 'overhead = median over rounds of bare tok/s / fit tok/s - 1 (steady state)' } };
  },
};
