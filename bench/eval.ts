/**
 * eval: metrics.evaluate tokens/s against sae.encode + sae.decode alone on the same data (issue 6's
 * baseline; sae.forward, which does both in one call, is shown too), and the max-cosine geometry
 * time for numLatents 24576 and 65536 at dIn 768. Target: overhead <= 15%. Each side is warmed
 * (--warmup passes), then the passes alternate (baseline, evaluate) --repeats times and the
 * overhead is the median of the pairs' ratios: one cold evaluate against a warm baseline (as
 * before) read anywhere from -35% to +73% on a loaded machine.
 */
import { fromArray } from '../lib/data/index.js';
import { evaluate, maxCosine } from '../lib/eval/evaluate.js';
import { SparseAutoencoder } from '../lib/index.js';
import { type Benchmark, lcgArray, median, type Row } from './harness.js';

export const evalBench: Benchmark = {
  name: 'eval',
  description: 'metrics.evaluate vs sae.encode + sae.decode alone (interleaved pairs); max-cosine geometry time',
  async run(opts) {
    const [dIn, numLatents, k, batch, batches] = opts.quick ? [128, 2048, 16, 1024, 4] : [768, 24576, 32, 4096, 6];
    const rows: Row[] = [];
    const x = lcgArray(batch * batches * dIn, 1);
    using sae = SparseAutoencoder.create({ dIn, numLatents, k, seed: 1 });
    const part = (b: number) => x.subarray(b * batch * dIn, (b + 1) * batch * dIn);
    const timed = async (fn: () => Promise<unknown>) => {
      const t0 = performance.now();
      await fn();
      return (performance.now() - t0) / 1e3;
    };
    const encodeDecode = () => timed(async () => {
      for (let b = 0; b < batches; b++) await sae.decode(await sae.encode(part(b)));
    });
    const forward = () => timed(async () => {
      for (let b = 0; b < batches; b++) await sae.forward(part(b));
    });
    const evaluated = () => timed(() => evaluate(sae, fromArray(x, dIn), { batchSize: batch, geometry: false }));
    for (let i = 0; i < Math.max(1, opts.warmup); i++) {
      await encodeDecode();
      await forward();
      await evaluated();
    }
    const pairs: { base: number; fwd: number; ev: number }[] = [];
    for (let i = 0; i < Math.max(1, opts.repeats); i++) pairs.push({ base: await encodeDecode(), fwd: await forward(), ev: await evaluated() });
    const tokens = batch * batches;
    const tps = (s: number[]) => tokens / median(s);
    const overhead = (r: number) => `${(100 * (r - 1)).toFixed(1)}%`;
    rows.push({ what: 'sae.encode + sae.decode', 'tok/s': tps(pairs.map((p) => p.base)), overhead: '-' });
    rows.push({ what: 'sae.forward (both in one call)', 'tok/s': tps(pairs.map((p) => p.fwd)), overhead: overhead(median(pairs.map((p) => p.fwd / p.base))) });
    rows.push({ what: 'metrics.evaluate (no geometry)', 'tok/s': tps(pairs.map((p) => p.ev)), overhead: overhead(median(pairs.map((p) => p.ev / p.base))) });
    for (const m of opts.quick ? [2048] : [24576, 65536]) {
      const w = lcgArray(m * dIn, 2);
      const t = performance.now();
      await maxCosine(w, m, dIn);
      rows.push({ what: `max cosine, ${m} latents x ${dIn}`, 'tok/s': '-', overhead: `${((performance.now() - t) / 1e3).toFixed(2)} s` });
    }
    return { rows, meta: { dIn, numLatents, k, batch, batches, pairs } };
  },
};
