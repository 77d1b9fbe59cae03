/**
 * evaluate() and maxCosine() against the naive float64 references in helpers/eval-reference.ts.
 *
 * Inputs are fresh each run (seeded from the clock; the seed is in every failure message). The
 * reference computes each metric from its definition over the SAE's own outputs (codes and
 * reconstructions of the same batches), so the only difference is float64 summation order:
 * sums of at most ~10^4 terms of one sign (or ratios of them) agree to gamma_n ~ 1e-12 relative.
 * The FVU denominator is a streaming Chan merge against a two-pass sum, both backward stable to
 * ~n eps. Geometry goes through a float32 GEMM: its bound is cosineTolerance(d) (geometry.ts).
 */
import { describe, expect, it, vi } from 'vitest';

import { fromArray, fromAsyncIterable } from '../lib/data/index.js';
import { SaekitError } from '../lib/errors.js';
import { evaluate, maxCosine, type EvaluateResult } from '../lib/eval/evaluate.js';
import { SparseAutoencoder, type SaeWeights, type SparseCodes } from '../lib/index.js';
import { Tensor } from '../lib/tensor/index.js';
import { customSource, watchedSource } from './helpers/data-fixtures.js';
import { cosineTolerance, refMaxCosine, refMetrics } from './helpers/eval-reference.js';
import { everyLookATurn, gapBound, watchCall } from './helpers/event-loop.js';
import { lcg } from './helpers/reference.js';

/** float64 summation-order tolerance (relative), see the header. */
const REL = 1e-11;

function freshSeed(salt: number): number {
  return (Date.now() ^ Math.imul(salt + 1, 2654435761)) >>> 0;
}

/** A fresh seed, its label for failure messages and its generator. */
function freshRng(salt: number): { seed: number; ctx: string; next: () => number } {
  const seed = freshSeed(salt);
  return { seed, ctx: `seed ${seed}`, next: lcg(seed) };
}

function randomWeights(dIn: number, L: number, next: () => number): SaeWeights {
  const W_dec = Float32Array.from({ length: L * dIn }, () => next() * 2 - 1);
  const W_enc = Float32Array.from({ length: dIn * L }, () => ((next() * 2 - 1) * 1.5) / Math.sqrt(dIn));
  const b_enc = Float32Array.from({ length: L }, () => (next() * 2 - 1) * 0.3);
  const b_dec = Float32Array.from({ length: dIn }, () => (next() * 2 - 1) * 0.3);
  return { W_enc, b_enc, W_dec, b_dec };
}

/** Rows with a per-dimension offset of up to +-scale (so the global mean matters) and noise in [-1, 1). */
function randomX(rows: number, dIn: number, next: () => number, scale = 2): Float32Array {
  const offset = Array.from({ length: dIn }, () => (next() * 2 - 1) * scale);
  return Float32Array.from({ length: rows * dIn }, (_, i) => offset[i % dIn]! + next() * 2 - 1);
}

function close(got: number, want: number, rel: number, what: string): void {
  const tol = rel * Math.max(Math.abs(want), 1e-300);
  expect(Math.abs(got - want), `${what}: got ${got} want ${want}`).toBeLessThanOrEqual(tol);
}

/** The SAE's outputs on consecutive batches of `batchSize` rows of the first `n` rows of x. */
async function forwardBatches(sae: SparseAutoencoder, x: Float32Array, n: number, dIn: number, batchSize: number) {
  const recon = new Float32Array(n * dIn);
  const k = sae.k;
  const values = new Float32Array(n * k);
  const indices = new Int32Array(n * k);
  const batchRows: number[] = [];
  for (let s = 0; s < n; s += batchSize) {
    const rows = Math.min(batchSize, n - s);
    const r = await sae.forward(x.slice(s * dIn, (s + rows) * dIn));
    recon.set(r.recon, s * dIn);
    values.set(r.codes.values, s * k);
    indices.set(r.codes.indices, s * k);
    batchRows.push(rows);
  }
  const codes: SparseCodes = { rows: n, numLatents: sae.numLatents, k, values, indices };
  return { recon, codes, batchRows };
}

describe('evaluate: every field against a naive float64 reference', () => {
  const cases = [
    { dIn: 7, L: 45, k: 3, rows: 301, batchSize: 64, maxTokens: 290 },
    { dIn: 33, L: 203, k: 3, rows: 517, batchSize: 100, maxTokens: Infinity },
    // A mean 1e4 times the spread: a one-pass sum x^2 - N mean^2 would lose ~1e-8 relative here.
    { dIn: 7, L: 45, k: 3, rows: 1000, batchSize: 37, maxTokens: 999, scale: 1e4 },
  ];
  for (const [ci, c] of cases.entries()) {
    it(`dIn ${c.dIn}, numLatents ${c.L}, k ${c.k}, ${c.rows} rows, batchSize ${c.batchSize}, maxTokens ${c.maxTokens}`, async () => {
      const { seed, ctx, next } = freshRng(ci);
      const w = randomWeights(c.dIn, c.L, next);
      const x = randomX(c.rows, c.dIn, next, c.scale);
      using sae = SparseAutoencoder.fromWeights(w, { k: c.k });
      const got = await evaluate(sae, fromArray(x, c.dIn), { batchSize: c.batchSize, maxTokens: c.maxTokens, compat: true, histogramBins: 13 });
      const n = Math.min(c.rows, c.maxTokens);
      const { recon, codes, batchRows } = await forwardBatches(sae, x, n, c.dIn, c.batchSize);
      const want = refMetrics(x, recon, codes, n, c.dIn, c.L, batchRows);

      expect(got.tokens, ctx).toBe(n);
      for (const f of ['mse', 'fvu', 'explained_variance', 'cossim', 'l2_ratio', 'relative_reconstruction_bias', 'l0', 'l1'] as const) {
        close(got[f], want[f], REL, `${ctx}: ${f}`);
      }
      // Sanity of the sample: a random SAE reconstructs badly but not absurdly.
      expect(got.fvu, ctx).toBeGreaterThan(0);
      expect(Number.isFinite(got.fvu), ctx).toBe(true);
      expect(Array.from(got.feature_density), ctx).toEqual(Array.from(want.feature_density));
      expect(got.dead_fraction, ctx).toBe(want.dead_fraction);
      expect(got.dense_fraction_1pct, ctx).toBe(want.dense_fraction_1pct);
      expect(got.dense_fraction_10pct, ctx).toBe(want.dense_fraction_10pct);
      close(got.compat!.explained_variance_legacy, want.explained_variance_legacy, REL, `${ctx}: explained_variance_legacy`);
      close(got.compat!.explained_variance_saebench, want.explained_variance_saebench, REL, `${ctx}: explained_variance_saebench`);
      for (const f of ['fvu_sparsify', 'frac_variance_explained_dictionary_learning', 'l2_loss_dictionary_learning'] as const) {
        close(got.compat![f], want[f], REL, `${ctx}: ${f}`);
      }
      // dictionary_learning's residual is centred: it explains at least as much as sparsify's FVU says.
      expect(got.compat!.frac_variance_explained_dictionary_learning, ctx).toBeGreaterThanOrEqual(1 - got.compat!.fvu_sparsify - 1e-12);
      // The variants differ from the conventional EV on offset data (the point of labelling them).
      expect(got.compat!.explained_variance_saebench, ctx).not.toBeCloseTo(got.explained_variance, 3);

      // Histogram: 13 equal bins over [-ceil(log10 n), 0]; each fired latent in its half-open bin.
      const h = got.log10_density_histogram;
      const lo = -Math.ceil(Math.log10(n));
      expect(h.edges.length, ctx).toBe(14);
      expect(h.edges[0], ctx).toBe(lo);
      expect(h.edges[13], ctx).toBe(0);
      for (let b = 0; b < 13; b++) expect(h.edges[b + 1]! - h.edges[b]!, ctx).toBeCloseTo(-lo / 13, 12);
      // Each edge is the double nearest lo (13 - b) / 13 (its shortest form has no rounding noise).
      for (let b = 0; b < 13; b++) expect(h.edges[b], ctx).toBe((lo * (13 - b)) / 13);
      const counts = new Array<number>(13).fill(0);
      for (const p of want.feature_density) {
        if (p === 0) continue;
        const v = Math.log10(p);
        let b = 0;
        while (b < 12 && v >= h.edges[b + 1]!) b++;
        counts[b]!++;
      }
      expect(h.counts, ctx).toEqual(counts);

      // Geometry against the O(n^2) float64 reference.
      const wt = await sae.weights();
      const encRows = new Float32Array(c.L * c.dIn);
      for (let i = 0; i < c.dIn; i++) for (let j = 0; j < c.L; j++) encRows[j * c.dIn + i] = wt.W_enc[i * c.L + j]!;
      const tol = cosineTolerance(c.dIn);
      for (const [name, rows, gotArr, gotMean] of [
        ['enc', encRows, got.max_cos_enc!, got.mean_max_cos_enc!],
        ['dec', wt.W_dec, got.max_cos_dec!, got.mean_max_cos_dec!],
      ] as const) {
        const ref = refMaxCosine(rows, c.L, c.dIn);
        expect(gotArr.length, ctx).toBe(c.L);
        let worst = 0;
        let m = 0;
        for (let i = 0; i < c.L; i++) {
          worst = Math.max(worst, Math.abs(gotArr[i]! - ref[i]!));
          m += gotArr[i]!;
        }
        expect(worst, `${ctx}: max_cos_${name}`).toBeLessThanOrEqual(tol);
        expect(gotMean, ctx).toBeCloseTo(m / c.L, 14);
      }
    });
  }

  it('zero and near-zero rows of x: l2_ratio divides their ||x_hat|| by 1 (SAELens), every field finite', async () => {
    const { seed, ctx, next } = freshRng(7);
    const dIn = 11;
    const L = 37;
    const rows = 203;
    const w = randomWeights(dIn, L, next);
    const x = randomX(rows, dIn, next);
    // Zeroed padding rows, and rows just below / above the 1e-4 norm threshold.
    const tiny = [0, 5, 99, 202];
    for (const r of [...tiny, 17, 18]) x.fill(0, r * dIn, (r + 1) * dIn);
    x[17 * dIn + 3] = 9e-5;
    x[18 * dIn + 4] = 2e-4;
    using sae = SparseAutoencoder.fromWeights(w, { k: 3 });
    const got = await evaluate(sae, fromArray(x, dIn), { batchSize: 64 });
    const { recon, codes, batchRows } = await forwardBatches(sae, x, rows, dIn, 64);
    const want = refMetrics(x, recon, codes, rows, dIn, L, batchRows);
    for (const f of ['mse', 'fvu', 'cossim', 'l2_ratio', 'relative_reconstruction_bias', 'l0', 'l1'] as const) {
      expect(Number.isFinite(got[f]), `${ctx}: ${f} = ${got[f]}`).toBe(true);
      close(got[f], want[f], REL, `${ctx}: ${f}`);
    }
    // The closed form of the guard: the tiny rows contribute ||x_hat|| itself.
    let ratio = 0;
    for (let r = 0; r < rows; r++) {
      let a2 = 0;
      let b2 = 0;
      for (let j = 0; j < dIn; j++) {
        a2 += x[r * dIn + j]! ** 2;
        b2 += recon[r * dIn + j]! ** 2;
      }
      ratio += Math.sqrt(b2) / (r === 17 || tiny.includes(r) ? 1 : Math.sqrt(a2));
    }
    close(got.l2_ratio, ratio / rows, REL, `${ctx}: l2_ratio closed form`);
  });

  it('a source that fails while a forward pass runs rejects evaluate() with its error (no unhandled rejection)', async () => {
    const next = lcg(freshSeed(9));
    // Forward passes of a few ms, so the read-ahead of batch 3 fails while the loop waits for batch 1's.
    const [dIn, L, rows] = [64, 2048, 2048];
    using sae = SparseAutoencoder.fromWeights(randomWeights(dIn, L, next), { k: 2 });
    const x = randomX(rows, dIn, next);
    const failing = customSource(dIn, undefined, async function* () {
      for (let i = 0; ; i++) {
        if (i === 2) throw new Error('read failed on batch 3');
        await new Promise((r) => setTimeout(r, 1));
        yield { rows, dIn, data: x.slice() };
      }
    });
    await expect(evaluate(sae, failing, { batchSize: rows, geometry: false })).rejects.toThrow(/read failed on batch 3/);
  });

  it('onProgress reports the tokens accumulated after each batch, up to maxTokens', async () => {
    const next = lcg(freshSeed(8));
    const [dIn, L, rows] = [5, 13, 250];
    using sae = SparseAutoencoder.fromWeights(randomWeights(dIn, L, next), { k: 2 });
    const seen: number[] = [];
    const r = await evaluate(sae, fromArray(randomX(rows, dIn, next), dIn), { batchSize: 64, maxTokens: 200, onProgress: (t) => void seen.push(t) });
    expect(r.tokens).toBe(200);
    expect(seen).toEqual([64, 128, 192, 200]);
    await expect(evaluate(sae, fromArray(randomX(rows, dIn, next), dIn), { onProgress: 3 as never })).rejects.toThrow(/options\.onProgress/);
  });
});

describe('evaluate: closed forms and invariances', () => {
  it('a decoder that represents the data exactly gives EV 1, mse 0, cossim 1', async () => {
    const { seed, ctx, next } = freshRng(10);
    const dIn = 7;
    const L = 45;
    const k = 3;
    // Latents perm[0..dIn) are the standard basis e_d (encoder and decoder); the others never
    // fire (b_enc -1e4). Rows are non-negative combinations of at most k basis vectors, so the
    // TopK codes are exactly the row's entries and x_hat = sum x_d e_d = x exactly in float32.
    const perm = Array.from({ length: L }, (_, i) => i).sort(() => next() - 0.5);
    const w = randomWeights(dIn, L, next);
    w.b_dec.fill(0);
    for (let j = 0; j < L; j++) w.b_enc[j] = -1e4;
    for (let d = 0; d < dIn; d++) {
      const j = perm[d]!;
      w.b_enc[j] = 0;
      for (let i = 0; i < dIn; i++) {
        w.W_enc[i * L + j] = i === d ? 1 : 0;
        w.W_dec[j * dIn + i] = i === d ? 1 : 0;
      }
    }
    const rows = 211;
    const x = new Float32Array(rows * dIn);
    let nnz = 0;
    for (let r = 0; r < rows; r++) {
      const m = 1 + Math.floor(next() * k);
      for (let a = 0; a < m; a++) {
        const d = Math.floor(next() * dIn);
        if (x[r * dIn + d] === 0) nnz++;
        x[r * dIn + d] = 0.25 + next() * 3;
      }
    }
    using sae = SparseAutoencoder.fromWeights(w, { k });
    const got = await evaluate(sae, fromArray(x, dIn), { batchSize: 50, compat: true });
    expect(got.tokens, ctx).toBe(rows);
    expect(got.mse, ctx).toBe(0);
    expect(got.fvu, ctx).toBe(0);
    expect(got.explained_variance, ctx).toBe(1);
    expect(got.cossim, ctx).toBeCloseTo(1, 14);
    expect(got.l2_ratio, ctx).toBeCloseTo(1, 14);
    expect(got.relative_reconstruction_bias, ctx).toBe(1);
    expect(got.compat!.explained_variance_legacy, ctx).toBe(1);
    expect(got.compat!.explained_variance_saebench, ctx).toBe(1);
    expect(got.l0, ctx).toBeCloseTo(nnz / rows, 14);
    // Only the basis latents fire; dead fraction is the rest.
    expect(got.dead_fraction, ctx).toBeCloseTo((L - dIn) / L, 14);
    for (let j = dIn; j < L; j++) expect(got.feature_density[perm[j]!], ctx).toBe(0);
    // Geometry: basis vectors are orthogonal to each other.
    for (let d = 0; d < dIn; d++) expect(got.max_cos_dec![perm[d]!]!, ctx).toBeGreaterThanOrEqual(0);
  });

  it('results do not depend on the batch split (batchSize 7, 64, 1000)', async () => {
    // sae.forward itself may round differently with the GEMM's row count (float32, ~1e-7), so
    // the data and weights here are small dyadic numbers: every product and partial sum of the
    // forward pass is exact in float32, the per-row outputs are bitwise the same for any batch,
    // and what is left to test is that the metrics' aggregation does not depend on the split.
    const { seed, ctx, next } = freshRng(11);
    const dIn = 33;
    const L = 203;
    const rows = 911;
    const int = (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1));
    const w: SaeWeights = {
      W_enc: Float32Array.from({ length: dIn * L }, () => int(-1, 1) / 2),
      b_enc: Float32Array.from({ length: L }, () => int(-8, 8) / 8),
      W_dec: Float32Array.from({ length: L * dIn }, () => int(-4, 4) / 8),
      b_dec: Float32Array.from({ length: dIn }, () => int(-4, 4) / 4),
    };
    const offset = Array.from({ length: dIn }, () => int(-8, 8) / 4);
    const x = Float32Array.from({ length: rows * dIn }, (_, i) => offset[i % dIn]! + int(-8, 8) / 4);
    using sae = SparseAutoencoder.fromWeights(w, { k: 3 });
    const src = fromArray(x, dIn);
    const runs: EvaluateResult[] = [];
    for (const batchSize of [7, 64, 1000]) runs.push(await evaluate(sae, src, { batchSize, maxTokens: 900, geometry: false, compat: true }));
    const [a, ...rest] = runs;
    for (const b of rest) {
      expect(b.tokens, ctx).toBe(900);
      for (const f of ['mse', 'fvu', 'explained_variance', 'cossim', 'l2_ratio', 'relative_reconstruction_bias', 'l0', 'l1', 'dead_fraction', 'dense_fraction_1pct', 'dense_fraction_10pct'] as const) {
        close(b[f], a![f], 1e-12, `${ctx}: ${f}`);
      }
      close(b.compat!.explained_variance_saebench, a!.compat!.explained_variance_saebench, 1e-12, `${ctx}: explained_variance_saebench`);
      expect(Array.from(b.feature_density), ctx).toEqual(Array.from(a!.feature_density));
      expect(b.log10_density_histogram, ctx).toEqual(a!.log10_density_histogram);
    }
  });

  it('l1 has the same bits for any batch split of the same codes (1, 2, 3, 7, 64, 1000), mixed magnitudes', async () => {
    // A lossless 2-d SAE, x = relu(x) - relu(-x) with k = 2: each row's codes are |x_0| and |x_1|
    // exactly (products by 1 and 0), whatever the GEMM, so the codes do not depend on the split.
    // Entries of 1e6 and 1e-6 scale make a per-batch partial sum round differently from the
    // row-by-row total (it did: 4 distinct l1 values over these batch sizes).
    const { ctx, next } = freshRng(12);
    const W_dec = Float32Array.from([1, 0, 0, 1, -1, 0, 0, -1]);
    const W_enc = Float32Array.from([1, 0, -1, 0, 0, 1, 0, -1]);
    using sae = SparseAutoencoder.fromWeights({ W_enc, b_enc: new Float32Array(4), W_dec, b_dec: new Float32Array(2) }, { k: 2 });
    const rows = 1000;
    const x = Float32Array.from({ length: 2 * rows }, () => (next() < 0.5 ? -1 : 1) * (0.1 + next()) * 10 ** (next() < 0.3 ? 6 : -6));
    // The reference: a float64 sum in token order of each row's |x_0| + |x_1|.
    let want = 0;
    for (let r = 0; r < rows; r++) want += Math.abs(x[2 * r]!) + Math.abs(x[2 * r + 1]!);
    want /= rows;
    for (const batchSize of [1, 2, 3, 7, 64, 1000]) {
      const got = await evaluate(sae, fromArray(x, 2), { batchSize, geometry: false });
      expect(got.mse, `${ctx}, batchSize ${batchSize}`).toBe(0);
      expect(got.l0, `${ctx}, batchSize ${batchSize}`).toBe(2);
      expect(got.l1, `${ctx}, batchSize ${batchSize}`).toBe(want);
    }
  });

  it('a source that reuses one batch array (recycle: true, no hand-back) gives the same result as the array itself', async () => {
    const seed = freshSeed(13);
    const next = lcg(seed);
    const dIn = 19;
    const rows = 700 + Math.floor(next() * 300);
    const batchSize = 37 + Math.floor(next() * 40);
    const x = randomX(rows, dIn, next);
    using sae = SparseAutoencoder.fromWeights(randomWeights(dIn, 131, next), { k: 5 });
    let recycled = 0;
    const reusing = customSource(dIn, rows, async function* (o) {
      const bs = o?.batchSize ?? 4096;
      const buf = new Float32Array(bs * dIn); // every batch is written here, as recycle allows
      for (let s = 0; s < rows; s += bs) {
        const n = Math.min(bs, rows - s);
        const data = o?.recycle ? buf.subarray(0, n * dIn) : new Float32Array(n * dIn);
        if (o?.recycle) recycled++;
        data.set(x.subarray(s * dIn, (s + n) * dIn));
        yield { rows: n, dIn, data };
      }
    });
    const want = await evaluate(sae, fromArray(x, dIn), { batchSize, compat: true, histogramBins: 11 });
    const got = await evaluate(sae, reusing, { batchSize, compat: true, histogramBins: 11 });
    expect(recycled, `seed ${seed}`).toBe(Math.ceil(rows / batchSize));
    expect(got, `seed ${seed}`).toEqual(want);
  });

  it("recycles a source's batch arrays, each handed back once its batch is accumulated", async () => {
    const seed = freshSeed(14);
    const next = lcg(seed);
    // 1 MiB batches, so the source reads 4 ahead (lib/data/sources.ts, pumpCapacity).
    const dIn = 64;
    const batchSize = 4096;
    const rows = 24 * batchSize + 1 + Math.floor(next() * 4000);
    const x = randomX(rows, dIn, next);
    using sae = SparseAutoencoder.fromWeights(randomWeights(dIn, 97, next), { k: 4 });
    const buffers = new Set<ArrayBufferLike>();
    const watched = watchedSource(fromArray(x, dIn), buffers);
    const want = await evaluate(sae, fromArray(x.slice(), dIn), { batchSize, compat: true });
    const got = await evaluate(sae, watched, { batchSize, compat: true });
    expect(got, `seed ${seed}`).toEqual(want);
    // The read-ahead, the two batches evaluate holds, and the fill in flight.
    expect(buffers.size, `seed ${seed}`).toBeLessThanOrEqual(8);
  });

  it('stops an endless stream at maxTokens and closes it', async () => {
    const dIn = 7;
    const next = lcg(freshSeed(12));
    let yielded = 0;
    let closed = false;
    async function* endless() {
      try {
        for (;;) {
          yielded++;
          yield Float32Array.from({ length: 10 * dIn }, () => next() * 2 - 1);
        }
      } finally {
        closed = true;
      }
    }
    using sae = SparseAutoencoder.fromWeights(randomWeights(dIn, 45, next), { k: 3 });
    const r = await evaluate(sae, fromAsyncIterable(endless(), dIn), { batchSize: 16, maxTokens: 100, geometry: false });
    expect(r.tokens).toBe(100);
    expect(closed).toBe(true);
    expect(yielded).toBeGreaterThanOrEqual(10);
  });
});

describe('evaluate: edge cases', () => {
  const [dIn, L, k] = [6, 23, 3];

  it('the legacy EV leaves out a cut last batch of one row (it gave -Infinity): equal to the run without that row', async () => {
    const next = lcg(501);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 2 });
    const x = Float32Array.from({ length: 33 * dIn }, () => next() - 0.5);
    const all = await evaluate(sae, fromArray(x, dIn), { batchSize: 16, compat: true, geometry: false });
    const cut = await evaluate(sae, fromArray(x.subarray(0, 32 * dIn), dIn), { batchSize: 16, compat: true, geometry: false });
    expect(all.tokens).toBe(33);
    expect(Number.isFinite(all.compat!.explained_variance_legacy)).toBe(true);
    expect(all.compat!.explained_variance_legacy).toBe(cut.compat!.explained_variance_legacy);
  });

  it('an empty batch from a custom source is skipped, not taken for the end of the data', async () => {
    const next = lcg(502);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 3 });
    const x = Float32Array.from({ length: 16 * dIn }, () => next() - 0.5);
    const src = customSource(dIn, undefined, async function* () {
      yield { rows: 8, dIn, data: x.slice(0, 8 * dIn) };
      yield { rows: 0, dIn, data: new Float32Array(0) };
      yield { rows: 8, dIn, data: x.slice(8 * dIn) };
    });
    const r = await evaluate(sae, src, { geometry: false });
    const ref = await evaluate(sae, fromArray(x, dIn), { geometry: false });
    expect(r.tokens).toBe(16);
    expect(r.mse).toBe(ref.mse);
  });

  it('inputs without spread give FVU and EV NaN (not Infinity), the per-batch compat variants -Infinity, Infinity and NaN; relative_reconstruction_bias NaN or Infinity at 0/0 or x/0; a NaN input is a named error', async () => {
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 4 });
    const r = await evaluate(sae, fromArray(new Float32Array(10 * dIn).fill(0.5), dIn), { geometry: false });
    expect(r.fvu).toBeNaN();
    expect(r.explained_variance).toBeNaN();
    expect(Number.isFinite(r.mse)).toBe(true);
    // The per-batch compat variants divide by the batch's spread unguarded (as upstream): with
    // an inexact reconstruction legacy EV is -Infinity and sparsify's FVU Infinity, while
    // dictionary_learning's centred residual has no spread either: 0/0, NaN (the module doc said
    // +-Infinity).
    const c = await evaluate(sae, fromArray(new Float32Array(10 * dIn).fill(0.5), dIn), { compat: true, geometry: false });
    expect(c.mse).toBeGreaterThan(0);
    expect(c.compat!.explained_variance_legacy).toBe(-Infinity);
    expect(c.compat!.fvu_sparsify).toBe(Infinity);
    expect(c.compat!.frac_variance_explained_dictionary_learning).toBeNaN();
    // relative_reconstruction_bias: NaN when x_hat is 0 on every token (codes all zero, b_dec 0),
    // Infinity when sum <x, x_hat> is 0 but x_hat is not (b_dec orthogonal to every row).
    const y = Float32Array.from({ length: 10 * dIn }, (_, i) => (i % dIn === 0 ? 0 : Math.sin(i)));
    const w = { W_enc: new Float32Array(dIn * L).fill(1), b_enc: new Float32Array(L).fill(-1e6), W_dec: new Float32Array(L * dIn).fill(1), b_dec: new Float32Array(dIn) };
    using dead = SparseAutoencoder.fromWeights(w, { k });
    expect((await evaluate(dead, fromArray(y, dIn), { geometry: false })).relative_reconstruction_bias).toBeNaN();
    w.b_dec[0] = 1;
    using orth = SparseAutoencoder.fromWeights(w, { k });
    expect((await evaluate(orth, fromArray(y, dIn), { geometry: false })).relative_reconstruction_bias).toBe(Infinity);
    const one = await evaluate(sae, fromArray(Float32Array.from({ length: dIn }, (_, i) => i), dIn), { geometry: false });
    expect(one.fvu).toBeNaN();
    const bad = customSource(dIn, undefined, async function* () {
      yield { rows: 2, dIn, data: Float32Array.from({ length: 2 * dIn }, (_, i) => i / 10) };
      yield { rows: 2, dIn, data: Float32Array.from({ length: 2 * dIn }, (_, i) => (i === dIn + 1 ? NaN : i / 10)) };
    });
    // Row 1 of the second batch: token 3 of the pass, in the message and as err.row.
    await expect(evaluate(sae, bad, { geometry: false })).rejects.toMatchObject({
      code: 'ERR_SAEKIT_NONFINITE',
      message: 'Expected finite values in the source but token 3 has NaN at column 1',
      row: 3,
    });
  });
});

describe('maxCosine', () => {
  it("an abort during a block's scan (after the block's own check) is seen at the scan's next turn", async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const [n, d] = [601, 7]; // one block (n < chunk); its scan counts n^2 units: looks at the clock
    const rows = Float32Array.from({ length: n * d }, () => next() - 0.5);
    const ctrl = new AbortController();
    const reason = new Error('stop');
    // The block's cosines are back once its toArray() settles: abort at the first look at the clock after that.
    let scanning = false;
    const toArray = Tensor.prototype.toArray;
    const spy = vi.spyOn(Tensor.prototype, 'toArray').mockImplementation(function (this: Tensor) {
      return toArray.call(this).then((v) => ((scanning = true), v));
    });
    try {
      await expect(everyLookATurn(() => maxCosine(rows, n, d, { signal: ctrl.signal }), () => scanning && ctrl.abort(reason)), `seed ${seed}`).rejects.toBe(reason);
    } finally {
      spy.mockRestore();
    }
    expect(scanning).toBe(true);
  });

  it('matches a naive O(n^2) float64 reference, with duplicated, scaled, opposite and zero rows, for any chunk', async () => {
    const { seed, ctx, next } = freshRng(20);
    const n = 203;
    const d = 33;
    const rows = Float32Array.from({ length: n * d }, () => next() * 2 - 1);
    rows.copyWithin(17 * d, 5 * d, 6 * d); // row 17 duplicates row 5
    for (let j = 0; j < d; j++) rows[40 * d + j] = 4 * rows[30 * d + j]!; // row 40 = 4 x row 30
    for (let j = 0; j < d; j++) rows[50 * d + j] = -rows[60 * d + j]!; // row 50 = -row 60
    rows.fill(0, 99 * d, 100 * d); // row 99 is zero
    const ref = refMaxCosine(rows, n, d);
    const tol = cosineTolerance(d);
    for (const chunk of [undefined, 1, 7, 64, 203, 1000]) {
      const got = await maxCosine(rows, n, d, chunk === undefined ? undefined : { chunk });
      let worst = 0;
      for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(got[i]! - ref[i]!));
      expect(worst, `${ctx}, chunk ${chunk}`).toBeLessThanOrEqual(tol);
      expect(got[99], ctx).toBe(0);
      for (const i of [5, 17, 30, 40]) expect(1 - got[i]!, `${ctx}: row ${i}`).toBeLessThanOrEqual(tol);
      for (const i of [5, 17, 30, 40]) expect(got[i]!, ctx).toBeLessThanOrEqual(1);
    }
  });

  it('results lie in [-1, 1] even where float32 rounding overshoots: many scaled duplicates, opposite pairs', async () => {
    const { ctx, next } = freshRng(21);
    for (const d of [37, 129, 515]) {
      const tol = cosineTolerance(d);
      // Rows m..2m-1 are positive multiples of rows 0..m-1: every max cosine is 1 up to rounding.
      const m = 33;
      const rows = new Float32Array(2 * m * d);
      for (let i = 0; i < m; i++) {
        const c = 0.5 + 3.5 * next();
        for (let j = 0; j < d; j++) rows[(m + i) * d + j] = c * (rows[i * d + j] = next() * 2 - 1);
      }
      const got = await maxCosine(rows, 2 * m, d);
      for (let i = 0; i < 2 * m; i++) {
        expect(got[i]!, `${ctx}, d ${d}, row ${i}`).toBeLessThanOrEqual(1);
        expect(1 - got[i]!, `${ctx}, d ${d}, row ${i}`).toBeLessThanOrEqual(tol);
      }
      // Two opposite rows: the max cosine of each is -1 up to rounding.
      for (let t = 0; t < 16; t++) {
        const pair = new Float32Array(2 * d);
        const c = 0.5 + 3.5 * next();
        for (let j = 0; j < d; j++) pair[d + j] = -c * (pair[j] = next() * 2 - 1);
        for (const v of await maxCosine(pair, 2, d)) {
          expect(v, `${ctx}, d ${d}, pair ${t}`).toBeGreaterThanOrEqual(-1);
          expect(v + 1, `${ctx}, d ${d}, pair ${t}`).toBeLessThanOrEqual(tol);
        }
      }
    }
  });

  it('refuses +-Infinity as well as NaN, naming the row and column; an already aborted signal rejects first, even for n = 1', async () => {
    // Infinity normalised to NaN cosines (Infinity / Infinity) instead of an error.
    for (const bad of [Infinity, -Infinity]) {
      const rows = Float32Array.from({ length: 15 }, (_, i) => i + 1);
      rows[7] = bad;
      await expect(maxCosine(rows, 5, 3)).rejects.toMatchObject({
        code: 'ERR_SAEKIT_NONFINITE',
        message: `Expected finite values in rows but received ${bad} at row 2, column 1`,
      });
    }
    const aborted = AbortSignal.abort();
    // n = 1 returned [NaN] and a NaN row was a NONFINITE error: the abort is checked before any work.
    await expect(maxCosine(Float32Array.of(1, 2), 1, 2, { signal: aborted })).rejects.toBe(aborted.reason);
    await expect(maxCosine(Float32Array.of(1, NaN, 0, 1), 2, 2, { signal: aborted })).rejects.toBe(aborted.reason);
  });

  it('rows scaled by powers of two give the same cosines, even at 2^70 and 2^-80 whose squares overflow or underflow float32 (norms in float64)', async () => {
    const { ctx, next } = freshRng(22);
    const [n, d] = [37, 29];
    const rows = Float32Array.from({ length: n * d }, () => next() * 2 - 1);
    const want = await maxCosine(rows, n, d);
    // Each row times 2^e exactly (float32 keeps every scaled value): the unit rows are the same bits.
    const exps = Array.from({ length: n }, (_, i) => [70, -80, 0, 100, -100][i % 5]!);
    const scaled = rows.map((v, i) => v * 2 ** exps[Math.floor(i / d)]!);
    for (let i = 0; i < rows.length; i++) expect(scaled[i]! / 2 ** exps[Math.floor(i / d)]!).toBe(rows[i]);
    expect(Array.from(await maxCosine(scaled, n, d)), ctx).toEqual(Array.from(want));
  });

  it('handles n = 1 (NaN), n = 2 and all-zero rows', async () => {
    expect(Number.isNaN((await maxCosine(Float32Array.of(1, 2, 3), 1, 3))[0])).toBe(true);
    const two = await maxCosine(Float32Array.of(1, 0, 0, 1), 2, 2);
    expect(Array.from(two)).toEqual([0, 0]);
    const opp = await maxCosine(Float32Array.of(3, 4, -6, -8), 2, 2);
    for (const v of opp) expect(v).toBeCloseTo(-1, 6);
    expect(Array.from(await maxCosine(new Float32Array(12), 4, 3))).toEqual([0, 0, 0, 0]);
  });
});

/** Row i's largest cosine to any other of the n rows of [n, d] `rows`, in float64 (0 for a zero row). */
function refMaxCosineOf(rows: Float32Array, n: number, d: number, i: number): number {
  const norm = (r: number) => {
    let s = 0;
    for (let j = 0; j < d; j++) s += rows[r * d + j]! ** 2;
    return Math.sqrt(s);
  };
  const ni = norm(i);
  let m = -Infinity;
  for (let r = 0; r < n; r++) {
    if (r === i) continue;
    const nr = norm(r);
    let dot = 0;
    for (let j = 0; j < d; j++) dot += rows[i * d + j]! * rows[r * d + j]!;
    m = Math.max(m, ni > 0 && nr > 0 ? dot / (ni * nr) : 0);
  }
  return m;
}

describe('geometry shares the JS thread', () => {
  // Before, maxCosine's finite check and normalisation of every row ran in one turn of the event
  // loop (and then each chunk's scan of 2048 x n cosines in one more), after evaluate()'s
  // transpose of W_enc in the same turn: gaps of 0.25-0.55 s at these sizes (long rows, few
  // GEMM flops) on the loaded 2-core development machine, 60-80% of the call. Now they run in
  // ~20 ms slices (60-100 ms gaps there: the copies into native memory). The bound is
  // event-loop-slices.test.ts's 150 ms, or a sixth of the call when that is longer (BLAS threads
  // spinning after each GEMM and other jobs stretch every slice and the call alike).
  const expectFreeLoop = async <T>(call: () => Promise<T>): Promise<T> => {
    const { value: got, elapsed, longest, firings } = await watchCall(call);
    expect(longest, `longest gap of a ${elapsed.toFixed(0)} ms call`).toBeLessThan(gapBound(elapsed));
    expect(firings, `${elapsed.toFixed(0)} ms`).toBeGreaterThan(elapsed / 50);
    return got;
  };

  it('maxCosine of 64 rows of 262,144; sampled rows match a float64 reference', async () => {
    const { ctx, next } = freshRng(40);
    const [n, d] = [64, 1 << 18];
    const rows = Float32Array.from({ length: n * d }, () => next() * 2 - 1);
    rows.fill(0, 3 * d, 4 * d); // row 3 is zero
    rows.set(rows.subarray(10 * d, 11 * d), 20 * d); // row 20 duplicates row 10
    const got = await expectFreeLoop(() => maxCosine(rows, n, d));
    expect(got[3], ctx).toBe(0);
    for (const i of [10, 20, ...Array.from({ length: 6 }, () => Math.floor(next() * n))]) {
      expect(Math.abs(got[i]! - refMaxCosineOf(rows, n, d, i)), `${ctx}: row ${i}`).toBeLessThanOrEqual(cosineTolerance(d));
    }
  }, 30_000);

  it('evaluate() with geometry, 32 latents of dIn 262,144; sampled latents match a float64 reference', async () => {
    const { ctx, next } = freshRng(41);
    const [dIn, L] = [1 << 18, 32];
    const w = randomWeights(dIn, L, next);
    using sae = SparseAutoencoder.fromWeights(w, { k: 4 });
    const source = fromArray(randomX(8, dIn, next), dIn);
    const got = await expectFreeLoop(() => evaluate(sae, source, { batchSize: 8 }));
    const encRows = new Float32Array(L * dIn);
    for (let r = 0; r < dIn; r++) for (let c = 0; c < L; c++) encRows[c * dIn + r] = w.W_enc[r * L + c]!;
    for (let s = 0; s < 6; s++) {
      const i = Math.floor(next() * L);
      expect(Math.abs(got.max_cos_enc![i]! - refMaxCosineOf(encRows, L, dIn, i)), `${ctx}: encoder ${i}`).toBeLessThanOrEqual(cosineTolerance(dIn));
      expect(Math.abs(got.max_cos_dec![i]! - refMaxCosineOf(w.W_dec, L, dIn, i)), `${ctx}: decoder ${i}`).toBeLessThanOrEqual(cosineTolerance(dIn));
    }
  }, 30_000);

  it('maxCosine: rows detached while the call runs is a named error, not cosines of zeros', async () => {
    const next = lcg(freshSeed(42));
    const [n, d] = [3000, 100];
    const rows = Float32Array.from({ length: n * d }, () => next() * 2 - 1);
    await new Promise((r) => setTimeout(r, 30)); // a stale slice clock: the first look at it pauses
    setImmediate(() => structuredClone(rows.buffer, { transfer: [rows.buffer] }));
    await expect(maxCosine(rows, n, d)).rejects.toMatchObject({
      code: 'ERR_SAEKIT_ARG',
      message: expect.stringMatching(/Expected rows to keep its 300000 values until the call settles but it now has 0/),
    });
  });
});

describe('validation', () => {
  const err = async (p: Promise<unknown>, name: string, code = 'ERR_SAEKIT_ARG') => {
    const e = await p.then(
      () => null,
      (x: unknown) => x,
    );
    expect(e, name).toBeInstanceOf(SaekitError);
    expect((e as SaekitError).code, name).toBe(code);
    expect((e as SaekitError).message, name).toContain(name);
  };

  it('rejects bad options and mismatched inputs with SaekitError codes', async () => {
    const dIn = 7;
    const next = lcg(freshSeed(30));
    using sae = SparseAutoencoder.fromWeights(randomWeights(dIn, 45, next), { k: 3 });
    const src = fromArray(randomX(20, dIn, next), dIn);
    await err(evaluate(sae, src, { maxTokens: 0 }), 'options.maxTokens');
    await err(evaluate(sae, src, { maxTokens: 1.5 }), 'options.maxTokens');
    await err(evaluate(sae, src, { maxTokens: NaN }), 'options.maxTokens');
    await err(evaluate(sae, src, { maxTokens: -Infinity }), 'options.maxTokens');
    await err(evaluate(sae, src, { batchSize: 0 }), 'options.batchSize');
    await err(evaluate(sae, src, { batchSize: -3 }), 'options.batchSize');
    await err(evaluate(sae, src, { compat: 'yes' as unknown as boolean }), 'options.compat');
    await err(evaluate(sae, src, { geometry: 1 as unknown as boolean }), 'options.geometry');
    await err(evaluate(sae, src, { histogramBins: 0 }), 'options.histogramBins');
    await err(evaluate(sae, src, null as unknown as undefined), 'options');
    await err(evaluate(sae, null as unknown as typeof src), 'source');
    await err(evaluate({} as SparseAutoencoder, src), 'sae');
    await err(evaluate(sae, fromArray(new Float32Array(16), 8)), 'dIn', 'ERR_SAEKIT_SHAPE');
    await err(evaluate(sae, fromArray(new Float32Array(0), dIn)), 'at least one row');

    await err(maxCosine(new Float32Array(6), 2, 4), 'length', 'ERR_SAEKIT_SHAPE');
    await err(maxCosine(new Float32Array(0), 0, 4), 'n');
    await err(maxCosine(new Float32Array(8), 2, 4, { chunk: 0 }), 'options.chunk');
    await err(maxCosine(new Float64Array(8) as unknown as Float32Array, 2, 4), 'rows', 'ERR_SAEKIT_DTYPE');
    await err(maxCosine(Float32Array.of(1, NaN, 0, 1), 2, 2), 'NaN', 'ERR_SAEKIT_NONFINITE');
    await err(evaluate(sae, src, { signal: {} as AbortSignal }), 'options.signal');
    await err(maxCosine(new Float32Array(8), 2, 4, { signal: 'stop' as unknown as AbortSignal }), 'options.signal');
  });

  it('options.signal stops the token pass and the geometry (rejecting with its reason); the pass is ended', async () => {
    const dIn = 6;
    const next = lcg(freshSeed(31));
    using sae = SparseAutoencoder.fromWeights(randomWeights(dIn, 40, next), { k: 3 });
    const x = randomX(400, dIn, next);
    // Already aborted: rejects before reading anything.
    const before = AbortSignal.abort();
    await expect(evaluate(sae, fromArray(x, dIn), { signal: before })).rejects.toBe(before.reason);
    // Aborted from onProgress after the second batch: no more batches are evaluated, the pass ends.
    let ended = false;
    let seen = 0;
    const src = customSource(dIn, 400, async function* (o) {
      try {
        yield* fromArray(x, dIn).batches(o);
      } finally {
        ended = true;
      }
    });
    const ctrl = new AbortController();
    const reason = new Error('enough');
    await expect(
      evaluate(sae, src, {
        batchSize: 50,
        signal: ctrl.signal,
        onProgress: (t) => {
          seen = t;
          if (t >= 100) ctrl.abort(reason);
        },
      }),
    ).rejects.toBe(reason);
    expect(seen).toBeLessThanOrEqual(150);
    expect(ended).toBe(true);
    // Aborted as the last batch is accumulated: rejects instead of going on to the geometry.
    const late = new AbortController();
    const ev = evaluate(sae, fromArray(x, dIn), { onProgress: (t) => (t === 400 ? queueMicrotask(() => late.abort()) : undefined), signal: late.signal });
    await expect(ev).rejects.toMatchObject({ name: 'AbortError' });
    // maxCosine alone: one row per block, aborted once it has started (it is past its checks).
    const rows = randomX(64, dIn, next);
    const mc = new AbortController();
    const p = maxCosine(rows, 64, dIn, { chunk: 1, signal: mc.signal });
    mc.abort();
    await expect(p).rejects.toMatchObject({ name: 'AbortError' });
    // Without an abort the same call completes, matching the reference.
    const full = await maxCosine(rows, 64, dIn, { chunk: 1, signal: new AbortController().signal });
    const want = refMaxCosine(rows, 64, dIn);
    for (let i = 0; i < 64; i++) expect(Math.abs(full[i]! - want[i]!)).toBeLessThanOrEqual(cosineTolerance(dIn));
  });
});

describe('density thresholds at their exact values', () => {
  it('dense_fraction_1pct / _10pct count density > 0.01 / > 0.1 strictly (SAEBench), a latent at exactly 1% or 10% is not dense', async () => {
    const { ctx, next } = freshRng(91);
    // N a multiple of 100, so that a latent can fire on exactly N/100 or N/10 tokens.
    const N = 100 * (3 + 2 * Math.floor(next() * 6)); // 300 .. 1300
    const dIn = 5;
    // Latent counts around both thresholds, plus dead and random ones.
    const counts = [N / 100, N / 10, N / 100 + 1, N / 10 + 1, N / 100 - 1, N / 10 - 1, 0, ...Array.from({ length: 6 }, () => Math.floor(next() * N))];
    for (let i = counts.length - 1; i > 0; i--) {
      const j = Math.floor(next() * (i + 1));
      [counts[i], counts[j]] = [counts[j]!, counts[i]!];
    }
    const L = counts.length;
    // fires[t * L + l]: latent l fires on a random set of counts[l] tokens.
    const fires = new Uint8Array(N * L);
    for (let l = 0; l < L; l++) {
      const order = Array.from({ length: N }, (_, t) => t);
      for (let i = 0; i < counts[l]!; i++) {
        const j = i + Math.floor(next() * (N - i));
        [order[i], order[j]] = [order[j]!, order[i]!];
        fires[order[i]! * L + l] = 1;
      }
    }
    const x = randomX(N, dIn, next);
    let seen = 0;
    // A stand-in SAE (evaluate only calls forward() without geometry): every latent in its own slot.
    const stub = {
      dIn,
      numLatents: L,
      k: L,
      forward: async (xb: Float32Array) => {
        const rows = xb.length / dIn;
        const values = new Float32Array(rows * L);
        const indices = new Int32Array(rows * L);
        for (let r = 0; r < rows; r++) {
          for (let l = 0; l < L; l++) {
            indices[r * L + l] = l;
            values[r * L + l] = fires[(seen + r) * L + l] ? 0.25 + next() : 0;
          }
        }
        seen += rows;
        return { codes: { rows, numLatents: L, k: L, values, indices }, recon: xb.map((v) => v * 0.5) };
      },
    } as unknown as SparseAutoencoder;
    const got = await evaluate(stub, fromArray(x, dIn), { batchSize: 1 + Math.floor(next() * 97), geometry: false });
    // Integer comparisons: count / N > 1/100 <=> 100 count > N.
    const over1 = counts.filter((c) => 100 * c > N).length;
    const over10 = counts.filter((c) => 10 * c > N).length;
    const dead = counts.filter((c) => c === 0).length;
    expect(got.dense_fraction_1pct, ctx).toBe(over1 / L);
    expect(got.dense_fraction_10pct, ctx).toBe(over10 / L);
    expect(got.dead_fraction, ctx).toBe(dead / L);
    for (let l = 0; l < L; l++) expect(got.feature_density[l], ctx).toBe(counts[l]! / N);
  });
});

describe('evaluate: documented defaults, bounds and reads (mutation round)', () => {
  it('defaults: maxTokens 1,000,000, batchSize 4096 and 50 histogram bins; reads exactly the batches it needs', async () => {
    const dIn = 2;
    const next = lcg(freshSeed(40));
    using sae = SparseAutoencoder.fromWeights(randomWeights(dIn, 5, next), { k: 1 });
    const asked: (number | undefined)[] = [];
    let yielded = 0;
    const src = customSource(dIn, undefined, async function* (o) {
      asked.push(o?.batchSize);
      const rows = o?.batchSize ?? 1;
      const data = Float32Array.from({ length: rows * dIn }, () => next() * 2 - 1);
      for (;;) {
        yielded++;
        yield { rows, dIn, data };
      }
    });
    const r = await evaluate(sae, src, { geometry: false });
    expect(asked).toEqual([4096]);
    expect(r.tokens).toBe(1_000_000);
    // ceil(1e6 / 4096) batches, the last one cut: none read past maxTokens.
    expect(yielded).toBe(Math.ceil(1_000_000 / 4096));
    expect(r.log10_density_histogram.counts).toHaveLength(50);
    expect(r.log10_density_histogram.edges).toHaveLength(51);
  });

  it('histogram edges span [-max(1, ceil(log10 N)), 0] (N = 8, 100, 150) and count every latent that fired once', async () => {
    const dIn = 5;
    const next = lcg(freshSeed(41));
    using sae = SparseAutoencoder.fromWeights(randomWeights(dIn, 23, next), { k: 2 });
    const x = randomX(150, dIn, next);
    for (const [n, lo] of [
      [8, -1],
      [100, -2],
      [150, -3],
    ] as const) {
      const bins = 7;
      const r = await evaluate(sae, fromArray(x, dIn), { maxTokens: n, histogramBins: bins, geometry: false });
      const { edges, counts } = r.log10_density_histogram;
      expect(edges[0], `N ${n}`).toBe(lo);
      expect(edges[bins]).toBe(0);
      for (let b = 0; b <= bins; b++) expect(edges[b]!).toBeCloseTo(lo - (lo * b) / bins, 12);
      const fired = Array.from(r.feature_density).filter((p) => p > 0);
      expect(counts.reduce((a, c) => a + c, 0)).toBe(fired.length);
      // Each fired latent in the bin holding log10(density), [e_b, e_b+1) (the last bin also holds 0).
      const want = new Array<number>(bins).fill(0);
      for (const p of fired) {
        const v = Math.log10(p);
        let b = 0;
        while (b < bins - 1 && v >= edges[b + 1]!) b++;
        want[b]!++;
      }
      expect(counts, `N ${n}`).toEqual(want);
    }
  });

  it('batchSize above 2^24 is refused; an already aborted signal, or a source of another width (even an empty one), rejects before the source is read', async () => {
    const dIn = 3;
    const next = lcg(freshSeed(42));
    using sae = SparseAutoencoder.fromWeights(randomWeights(dIn, 6, next), { k: 2 });
    let started = 0;
    const src = customSource(dIn, 10, async function* () {
      started++;
      yield { rows: 10, dIn, data: randomX(10, dIn, next) };
    });
    const e = await evaluate(sae, src, { batchSize: (1 << 24) + 1 }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(SaekitError);
    expect((e as SaekitError).message).toContain('options.batchSize');
    const reason = new Error('stop now');
    await expect(evaluate(sae, src, { signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
    expect(started).toBe(0);
    expect((await evaluate(sae, src, { geometry: false })).tokens).toBe(10);
    expect(started).toBe(1);
    // A source of another width is a shape error before any read, even one without rows.
    for (const rows of [0, 4]) {
      const wide = await evaluate(sae, fromArray(new Float32Array(rows * (dIn + 1)), dIn + 1)).catch((x: unknown) => x);
      expect(wide, `rows ${rows}`).toBeInstanceOf(SaekitError);
      expect((wide as SaekitError).code).toBe('ERR_SAEKIT_SHAPE');
      expect((wide as SaekitError).message).toContain(`Expected a source of dIn = ${dIn}`);
    }
  });
});

describe('an encode that overflows float32 in a pass over a source', () => {
  it("is named by the source's token (err.row too), not by the batch's row of an x the caller never passed: evaluate, cooccurrence, descriptionLength", async () => {
    const { cooccurrence, descriptionLength } = await import('../lib/eval/index.js');
    const next = lcg(Date.now() >>> 0);
    const [n, d] = [60, 5];
    using sae = SparseAutoencoder.create({ dIn: d, numLatents: 12, k: 3, seed: 4 });
    const x = Float32Array.from({ length: n * d }, () => next() - 0.5);
    const bad = 8 + Math.floor(next() * 50); // past the first batch
    x.fill(3e38, bad * d, (bad + 1) * d);
    for (const batchSize of [8, 7, 64]) {
      const expected = (source: string) => ({ code: 'ERR_SAEKIT_NONFINITE', row: bad, message: expect.stringMatching(new RegExp(`but token ${bad} of ${source} gives Infinity for latent`)) });
      await expect(evaluate(sae, fromArray(x, d), { batchSize })).rejects.toMatchObject(expected('the source'));
      await expect(cooccurrence({ sae, source: fromArray(x, d), batchSize })).rejects.toMatchObject(expected('input\\.source'));
      await expect(descriptionLength(sae, fromArray(x, d), { batchSize })).rejects.toMatchObject(expected('the source'));
    }
  });
});

describe('passes over a source in batches of their own: evaluate, cooccurrence, descriptionLength', () => {
  it('default to a batch that fits rows wider than 65536 values (4096 rows would be past 2^28 values), and name the caller\'s own argument when one is too large', async () => {
    const { cooccurrence, descriptionLength } = await import('../lib/eval/index.js');
    const next = lcg(Date.now() >>> 0);
    const [n, d] = [7, 65536 + 1 + Math.floor(next() * 1000)]; // 2^28 / d < 4096
    using sae = SparseAutoencoder.create({ dIn: d, numLatents: 3, k: 1, seed: 2 });
    const x = Float32Array.from({ length: n * d }, () => next() - 0.5);
    const most = Math.floor(2 ** 28 / d);
    // The default gives what an explicit batch of all the rows gives.
    const ev = await evaluate(sae, fromArray(x, d), { geometry: false });
    expect(ev.tokens).toBe(n);
    expect(ev.fvu).toBe((await evaluate(sae, fromArray(x, d), { geometry: false, batchSize: n })).fvu);
    const co = await cooccurrence({ sae, source: fromArray(x, d) }, { chunkTokens: 2 });
    expect(co).toEqual(await cooccurrence({ sae, source: fromArray(x, d), batchSize: n }, { chunkTokens: 2 }));
    const dl = await descriptionLength(sae, fromArray(x, d));
    expect(dl).toEqual(await descriptionLength(sae, fromArray(x, d), { batchSize: n }));
    // One row more than fits is named as the caller's argument, with the largest that fits.
    const tooMany = (name: string) => ({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(new RegExp(`Expected integer between 1 and ${most} .*for ${name} but received ${most + 1}`)) });
    await expect(evaluate(sae, fromArray(x, d), { batchSize: most + 1 })).rejects.toMatchObject(tooMany('options\\.batchSize'));
    await expect(cooccurrence({ sae, source: fromArray(x, d), batchSize: most + 1 })).rejects.toMatchObject(tooMany('input\\.batchSize'));
    await expect(descriptionLength(sae, fromArray(x, d), { batchSize: most + 1 })).rejects.toMatchObject(tooMany('options\\.batchSize'));
  });

  it('pass over an empty batch from a custom source (as evaluate does), and refuse a batch of another width', async () => {
    const { cooccurrence, descriptionLength } = await import('../lib/eval/index.js');
    const next = lcg(Date.now() >>> 0);
    const [n, d] = [16 + Math.floor(next() * 20), 5];
    using sae = SparseAutoencoder.create({ dIn: d, numLatents: 12, k: 3, seed: 3 });
    const x = Float32Array.from({ length: n * d }, () => next() - 0.5);
    const cut = 1 + Math.floor(next() * (n - 1));
    const withEmpty = (width = d) =>
      customSource(d, undefined, async function* () {
        yield { rows: cut, dIn: d, data: x.slice(0, cut * d) };
        yield { rows: 0, dIn: width, data: new Float32Array(0) };
        yield { rows: n - cut, dIn: d, data: x.slice(cut * d) };
      });
    expect(await cooccurrence({ sae, source: withEmpty() }, { chunkTokens: 4 })).toEqual(await cooccurrence({ sae, source: fromArray(x, d) }, { chunkTokens: 4 }));
    expect(await descriptionLength(sae, withEmpty())).toEqual(await descriptionLength(sae, fromArray(x, d)));
    const shape = { code: 'ERR_SAEKIT_SHAPE', message: expect.stringContaining(`but the source yielded dIn = ${d + 1}`) };
    await expect(descriptionLength(sae, withEmpty(d + 1))).rejects.toMatchObject(shape);
    await expect(cooccurrence({ sae, source: withEmpty(d + 1) })).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE', message: expect.stringContaining(`from input.source but it yielded dIn = ${d + 1}`) });
  });
});
