/**
 * A step's float64 reductions (total variance, the paper's residual variance, column sums) are
 * summed per fixed block of 256 rows and merged in block order, and the built-in GEMM computes each
 * pre-activation as one FMA chain (never split across threads, docs/architecture.md "BLAS"), so
 * with it gradients and Adam steps give the same bits whatever the thread count. (OpenBLAS's
 * kernels change bits with the thread count, so the suite's other files only promise the same bits
 * for the same thread count.)
 */
process.env.SAEKIT_BLAS = 'builtin';

import { describe, expect, it } from 'vitest';

import type { SaeWeights } from '../lib/index.js';
import { lcg } from './helpers/reference.js';
import * as R from './helpers/sae-reference.js';

const { backend, SparseAutoencoder } = await import('../lib/index.js');

const bits = (a: Float32Array): Uint32Array => new Uint32Array(a.buffer, a.byteOffset, a.length);

function expectSameBits(a: SaeWeights, b: SaeWeights, ctx: string): void {
  for (const name of R.WEIGHT_NAMES) expect(bits(a[name]), `${ctx}: ${name}`).toEqual(bits(b[name]));
}

describe('thread count (built-in GEMM)', () => {
  it('uses the built-in GEMM in this file', () => {
    expect(backend.info().blas.name).toBe('builtin');
  });

  it('gradients and Adam steps on odd batches of several 256-row blocks give the same bits with 1, 2 and 3 threads (both AuxK variants)', async () => {
    // The float64 reductions (total variance, the paper's residual variance, column sums) are
    // summed per fixed block of 256 rows and merged in block order, so no thread count changes a bit.
    const seed = (Date.now() ^ 0x5eed) >>> 0;
    const next = lcg(seed);
    const [dIn, L, k] = [9, 24, 3];
    const batches = [1031, 517, 1283].map((rows) => Float32Array.from({ length: rows * dIn }, () => next() * 2 - 1));
    const deadMask = Uint8Array.from({ length: L }, (_, j) => (j % 3 === 1 ? 1 : 0));
    // decoder rows unit in float64 then rounded (a step needs unit rows), small biases
    const W_dec = new Float32Array(L * dIn);
    for (let j = 0; j < L; j++) {
      const row = Array.from({ length: dIn }, () => next() * 2 - 1);
      const n = Math.hypot(...row);
      for (let i = 0; i < dIn; i++) W_dec[j * dIn + i] = row[i]! / n;
    }
    const w: SaeWeights = {
      W_enc: Float32Array.from({ length: dIn * L }, () => ((next() * 2 - 1) * 1.5) / Math.sqrt(dIn)),
      b_enc: Float32Array.from({ length: L }, () => (next() * 2 - 1) * 0.3),
      W_dec,
      b_dec: Float32Array.from({ length: dIn }, () => (next() * 2 - 1) * 0.3),
    };
    for (let j = 0; j < 5; j++) w.b_enc[j] = -50; // never fire: dead from step 2 on
    const runs: { grads: number[][]; weights: SaeWeights; stats: number[][]; since: number[] }[] = [];
    const before = backend.setThreads(1);
    try {
      for (const threads of [1, 2, 3]) {
        backend.setThreads(threads);
        using sae = SparseAutoencoder.fromWeights(w, { k });
        const grads: number[][] = [];
        for (const variant of ['sparsify', 'paper'] as const) {
          const g = await sae.gradients(batches[0]!, { auxk: { deadMask, alpha: 0.25, variant } });
          grads.push([g.loss, g.fvu, g.auxkLoss], ...R.WEIGHT_NAMES.map((n) => Array.from(bits(g.grads[n]))));
        }
        const opt = sae.adam({ lr: 1e-3 });
        const stats: number[][] = [];
        for (const [t, x] of batches.entries()) {
          // step 2 on: latents that did not fire in step 1 are dead (AuxK); the last step uses the paper's form
          const st = await opt.step(x, { deadThresholdTokens: 1000, auxkAlpha: 0.25, auxkVariant: t === 2 ? 'paper' : 'sparsify' });
          stats.push([st.loss, st.fvu, st.auxkLoss, st.l0, st.numDead]);
        }
        runs.push({ grads, weights: await sae.weights(), stats, since: Array.from(await sae.tokensSinceFired()) });
        opt.dispose();
      }
    } finally {
      backend.setThreads(before);
    }
    expect(runs[0]!.stats.slice(1).map((st) => st[4]! >= 5), `seed ${seed}: dead latents in steps 2-3`).toEqual([true, true]);
    for (const [i, r] of runs.entries()) {
      const ctx = `seed ${seed}: ${i + 1} threads vs 1`;
      expect(r.grads, ctx).toEqual(runs[0]!.grads);
      expect(r.stats, ctx).toEqual(runs[0]!.stats);
      expect(r.since, ctx).toEqual(runs[0]!.since);
      expectSameBits(r.weights, runs[0]!.weights, ctx);
    }
  });
});
