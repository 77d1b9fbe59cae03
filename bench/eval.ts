/**
 * eval: metrics.evaluate tokens/s against sae.forward alone on the same data (one run), and the
 * max-cosine geometry time for numLatents 24576 and 65536 at dIn 768. Target: overhead <= 15%.
 */
import { fromArray } from '../lib/data/index.js';
import { evaluate, maxCosine } from '../lib/eval/evaluate.js';
import { SparseAutoencoder } from '../lib/index.js';
import { type Benchmark, lcgArray, type Row } from './harness.js';


export const evalBench: Benchmark = {
  name: 'eval',
  description: 'metrics.evaluate vs sae.forward alone; max-cosine geometry time',
  async run(opts) {
    const [dIn, numLatents, k, batch, batches] = opts.quick ? [128, 2048, 16, 1024, 4] : [768, 24576, 32, 4096, 6];
    const rows: Row[] = [];
    const x = lcgArray(batch * batches * dIn, 1);
    using sae = SparseAutoencoder.create({ dIn, numLatents, k, seed: 1 });
    await sae.forward(x.subarray(0, batch * dIn));
    let t0 = performance.now();
    for (let b = 0; b < batches; b++) await sae.forward(x.subarray(b * batch * dIn, (b + 1) * batch * dIn));
    const bare = (batch * batches) / ((performance.now() - t0) / 1e3);
    t0 = performance.now();
    await evaluate(sae, fromArray(x, dIn), { batchSize: batch, geometry: false });
    const ev = (batch * batches) / ((performance.now() - t0) / 1e3);
    rows.push({ what: 'sae.forward alone', 'tok/s': bare, overhead: '-' });
    rows.push({ what: 'metrics.evaluate (no geometry)', 'tok/s': ev, overhead: `${(100 * (bare / ev - 1)).toFixed(1)}%` });
    for (const m of opts.quick ? [2048] : [24576, 65536]) {
      const w = lcgArray(m * dIn, 2);
      const t = performance.now();
      await maxCosine(w, m, dIn);
      rows.push({ what: `max cosine, ${m} latents x ${dIn}`, 'tok/s': '-', overhead: `${((performance.now() - t) / 1e3).toFixed(2)} s` });
    }
    return { rows, meta: { dIn, numLatents, k, batch, batches } };
  },
};
