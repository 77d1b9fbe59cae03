import { describe, expect, it } from 'vitest';

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { backend, fromArray, openActivations, SparseAutoencoder, type ActivationSource } from '../lib/index.js';
import { writeNpy } from '../lib/io/index.js';
import { correlation, type CorrelationMatrix, type CorrelationResult, type CorrelationSide, type CorrelationTop, type CorrelationTopMatches } from '../lib/features/correlation.js';
import { match } from '../lib/features/match.js';
import { native } from '../lib/native/index.js';
import { distUrl, haveDist, runInChild } from './helpers/child.js';
import { customSource, watchedSource } from './helpers/data-fixtures.js';
import { gapBound, watchCall } from './helpers/event-loop.js';
import { lcg } from './helpers/reference.js';

function full(c: CorrelationResult): CorrelationMatrix {
  if (c.mode !== 'full') throw new Error('expected the full matrix');
  return c;
}

/** Naive float64 Pearson between the columns of X [n, p] and Y [n, q] (two-pass, centred). */
function naivePearson(X: Float64Array, Y: Float64Array, n: number, p: number, q: number): Float64Array {
  const mx = new Float64Array(p);
  const my = new Float64Array(q);
  for (let t = 0; t < n; t++) {
    for (let i = 0; i < p; i++) mx[i]! += X[t * p + i]! / n;
    for (let j = 0; j < q; j++) my[j]! += Y[t * q + j]! / n;
  }
  const r = new Float64Array(p * q);
  const sx = new Float64Array(p);
  const sy = new Float64Array(q);
  for (let t = 0; t < n; t++) {
    for (let i = 0; i < p; i++) sx[i]! += (X[t * p + i]! - mx[i]!) ** 2;
    for (let j = 0; j < q; j++) sy[j]! += (Y[t * q + j]! - my[j]!) ** 2;
  }
  for (let i = 0; i < p; i++) {
    for (let j = 0; j < q; j++) {
      let c = 0;
      for (let t = 0; t < n; t++) c += (X[t * p + i]! - mx[i]!) * (Y[t * q + j]! - my[j]!);
      r[i * q + j] = sx[i]! > 0 && sy[j]! > 0 ? c / Math.sqrt(sx[i]! * sy[j]!) : 0;
    }
  }
  return r;
}

function denseCodes(values: Float32Array, indices: Int32Array, rows: number, k: number, m: number): Float64Array {
  const out = new Float64Array(rows * m);
  for (let t = 0; t < rows; t++) for (let j = 0; j < k; j++) out[t * m + indices[t * k + j]!]! += values[t * k + j]!;
  return out;
}

describe('features.correlation', () => {
  it('codes: matches a naive float64 Pearson on the dense codes, for any batch split; constant features are 0 and masked', async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const [dIn, LA, LB, rows] = [9, 23, 31, 700];
    const x = Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
    using A = SparseAutoencoder.create({ dIn, numLatents: LA, k: 3, seed: 1 });
    using B = SparseAutoencoder.create({ dIn, numLatents: LB, k: 4, seed: 2 });
    const ca = await A.encode(x);
    const cb = await B.encode(x);
    const want = naivePearson(denseCodes(ca.values, ca.indices, rows, 3, LA), denseCodes(cb.values, cb.indices, rows, 4, LB), rows, LA, LB);
    const results = [];
    for (const batchSize of [13, 256, 700]) {
      const src = fromArray(x, dIn);
      results.push(full(await correlation({ sae: A, source: src }, { sae: B }, { batchSize })));
    }
    const r = results[0]!;
    // Each split against the reference: the float32 output of a float64 computation. The splits
    // are not compared bit for bit: the codes come from the encoder GEMM, and OpenBLAS's result
    // for a row can change in the last bit with the batch's row count (its Haswell/Zen kernels
    // do; the SkylakeX ones and the built-in GEMM do not). The correlation itself is bit-identical
    // for any split of the same codes: the native tests below check that.
    for (const [s, res] of results.entries()) {
      let worst = 0;
      for (let q = 0; q < want.length; q++) worst = Math.max(worst, Math.abs(res.r[q]! - want[q]!));
      expect(worst, `seed ${seed}, split ${s}`).toBeLessThan(1e-5);
    }
    // Latents that never fire are constant (0): r = 0 and flagged.
    for (let i = 0; i < LA; i++) {
      if (r.activeA[i] === 0) {
        expect(r.constantA[i]).toBe(1);
        for (let j = 0; j < LB; j++) expect(r.r[i * LB + j]).toBe(0);
      }
    }
  });

  it('dense: a column of mean 50 and std 0.01 over 10^6 rows still gives r within 1e-4 (Chan merges)', async () => {
    const next = lcg(3);
    const n = 1_000_000;
    const xa = new Float32Array(n * 2);
    const xb = new Float32Array(n * 2);
    for (let t = 0; t < n; t++) {
      const z = next() - 0.5;
      const e = next() - 0.5;
      xa[2 * t] = 50 + 0.01 * z * Math.sqrt(12);
      xa[2 * t + 1] = next();
      xb[2 * t] = 0.8 * z + 0.6 * e; // r(z, xb0) = 0.8
      xb[2 * t + 1] = 7; // constant
    }
    const want = naivePearson(Float64Array.from(xa), Float64Array.from(xb), n, 2, 2);
    const r = full(await correlation({ source: fromArray(xa, 2) }, { source: fromArray(xb, 2) }, { kind: 'dense', batchSize: 65536 }));
    expect(Math.abs(r.r[0]! - want[0]!)).toBeLessThan(1e-4);
    expect(Math.abs(r.r[0]! - 0.8)).toBeLessThan(5e-3);
    expect(r.constantB[1]).toBe(1);
    expect(r.r[1]).toBe(0);
  }, 60_000);

  it('dense: reuses each source\'s batch arrays (recycle) and gives the result of a fresh-array pass', async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const dIn = 64; // 1 MiB batches of 4096 rows: the sources read 4 ahead
    const rows = 20 * 4096 + 1 + Math.floor(next() * 4000);
    const xa = Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
    const xb = Float32Array.from({ length: rows * dIn }, (_, i) => 0.5 * xa[i]! + next() - 0.5);
    const [bufA, bufB] = [new Set<ArrayBufferLike>(), new Set<ArrayBufferLike>()];
    const got = full(await correlation({ source: watchedSource(fromArray(xa, dIn), bufA) }, { source: watchedSource(fromArray(xb, dIn), bufB) }, { kind: 'dense', batchSize: 4096 }));
    // The same batches through plain (fresh-array) iterables.
    const fresh = (x: Float32Array) => {
      const inner = fromArray(x, dIn);
      return customSource(dIn, rows, async function* (o) {
        yield* inner.batches({ ...o, recycle: false });
      });
    };
    const want = full(await correlation({ source: fresh(xa) }, { source: fresh(xb) }, { kind: 'dense', batchSize: 4096 }));
    expect(Array.from(got.r), `seed ${seed}`).toEqual(Array.from(want.r));
    expect(bufA.size, `seed ${seed}`).toBeLessThanOrEqual(7);
    expect(bufB.size, `seed ${seed}`).toBeLessThanOrEqual(7);
  }, 60_000);

  it('dense: r does not depend on the values\' scale (1e-30 to 1e19, per column), full and top mode, against a float64 two-pass Pearson', async () => {
    // Each batch's centred values used to go unscaled into the float32 GEMM: products of values
    // over ~1.8e19 overflowed (r of 1 or NaN, top lists with sentinel entries) and under ~1e-22
    // they went subnormal or to zero (r near 0).
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const [n, dA, dB] = [2500 + Math.floor(next() * 1000), 5, 4];
    const z = Float64Array.from({ length: n * 2 }, () => next() - 0.5);
    const baseA = Float64Array.from({ length: n * dA }, (_, q) => 3 * (q % dA) - 5 + z[Math.floor(q / dA) * 2 + (q % 2)]! + (0.2 + 0.3 * (q % dA)) * (next() - 0.5));
    const baseB = Float64Array.from({ length: n * dB }, (_, q) => (q % dB === 3 ? -1 : 1) * z[Math.floor(q / dB) * 2 + (q % dB) % 2]! + 0.4 * (next() - 0.5) + 2);
    const mixed = [1e-30, 1, 1e19, 1e-22, 1e18];
    for (const scale of [1, 1e-30, 1e-22, 1e18, 1e19, 'mixed'] as const) {
      const at = (c: number) => (scale === 'mixed' ? mixed[c % mixed.length]! : scale);
      const xa = Float32Array.from(baseA, (v, q) => v * at(q % dA));
      const xb = Float32Array.from(baseB, (v, q) => v * at(q % dB + 1));
      const want = naivePearson(Float64Array.from(xa), Float64Array.from(xb), n, dA, dB);
      const what = `seed ${seed}, scale ${scale}`;
      const opts = { kind: 'dense', batchSize: 1000 } as const;
      const f = full(await correlation({ source: fromArray(xa, dA) }, { source: fromArray(xb, dB) }, opts));
      expect(f.tokens).toBe(n);
      for (let q = 0; q < want.length; q++) expect(Math.abs(f.r[q]! - want[q]!), `${what}: r[${q}] = ${f.r[q]} for ${want[q]}`).toBeLessThan(1e-5);
      expect(Array.from(f.constantA).concat(Array.from(f.constantB)), what).toEqual(new Array(dA + dB).fill(0));
      const t = await correlation({ source: fromArray(xa, dA) }, { source: fromArray(xb, dB) }, { ...opts, output: 'top', top: dA, reverse: true });
      if (t.mode !== 'top') throw new Error('expected top mode');
      // Complete lists, best first: every entry a real feature with its float64 r.
      for (const [list, rows, cols, get] of [
        [t.top, dB, dA, (j: number, i: number) => want[i * dB + j]!],
        [t.reverse!, dA, dB, (i: number, j: number) => want[i * dB + j]!],
      ] as const) {
        const ref = argsortTop(rows, cols, list.k, get);
        expect(list.k).toBe(Math.min(dA, cols));
        for (let q = 0; q < rows * list.k; q++) {
          const idx = list.indices[q]!;
          expect(idx >= 0 && idx < cols, `${what}: index ${idx} at ${q}`).toBe(true);
          expect(Math.abs(list.r[q]! - get(Math.floor(q / list.k), idx)), `${what}: r ${list.r[q]} at ${q}`).toBeLessThan(1e-5);
          expect(Math.abs(list.r[q]! - ref.r[q]!), `${what}: rank ${q % list.k}`).toBeLessThan(1e-5);
        }
      }
    }
  });

  it('preacts past float32\'s range throw ERR_SAEKIT_NONFINITE naming the feature (not NaN r or unfilled top entries)', async () => {
    const [dIn, L, rows] = [3, 4, 50];
    const next = lcg(12);
    const x = Float32Array.from({ length: rows * dIn }, () => next() + 0.5);
    using A = SparseAutoencoder.create({ dIn, numLatents: L, k: 2, seed: 1 });
    const w = await A.weights();
    const W = w.W_enc.slice();
    for (let c = 0; c < dIn; c++) W[c * L + 2] = 3e38; // latent 2: x W over 3.4e38
    A.setWeights({ W_enc: W });
    expect((await A.preActivations(x)).subarray(0, L)[2]).toBe(Infinity);
    for (const output of ['full', 'top'] as const) {
      await expect(correlation({ sae: A, source: fromArray(x, dIn) }, { sae: A }, { kind: 'preacts', output })).rejects.toMatchObject({
        code: 'ERR_SAEKIT_NONFINITE',
        message: expect.stringMatching(/pre-activations but feature 2 of a is Infinity/),
      });
    }
  });

  it('top lists longer than a typed array: ERR_SAEKIT_ARG naming options.top, before any row is read (was a bare RangeError)', async () => {
    const d = 65537; // 65537 x 65537 top entries: past Node 20's 2^32
    const x = new Float32Array(3 * d).map((_, i) => Math.sin(i));
    for (const reverse of [false, true]) {
      await expect(correlation({ source: fromArray(x, d) }, {}, { kind: 'dense', output: 'top', top: d, reverse })).rejects.toMatchObject({
        name: 'SaekitError',
        code: 'ERR_SAEKIT_ARG',
        message: expect.stringMatching(/options\.top.*65537 \(number\)/),
      });
    }
  });

  it('preacts and the token mask; bad input', async () => {
    const next = lcg(4);
    const [dIn, L, rows] = [5, 7, 300];
    const x = Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
    using A = SparseAutoencoder.create({ dIn, numLatents: L, k: 2, seed: 1 });
    const keep = (t: number) => t % 3 !== 0;
    const r = full(await correlation({ sae: A, source: fromArray(x, dIn) }, { sae: A }, { kind: 'preacts', mask: keep, batchSize: 64 }));
    const pre = await A.preActivations(x);
    const kept = Array.from({ length: rows }, (_, t) => t).filter(keep);
    const P = new Float64Array(kept.length * L);
    kept.forEach((t, i) => P.set(pre.subarray(t * L, (t + 1) * L), i * L));
    const want = naivePearson(P, P, kept.length, L, L);
    expect(r.tokens).toBe(kept.length);
    for (let q = 0; q < want.length; q++) expect(Math.abs(r.r[q]! - want[q]!)).toBeLessThan(1e-4);
    await expect(correlation({ sae: A, source: fromArray(x, dIn) }, { source: fromArray(x.subarray(0, 10), dIn) }, { kind: 'dense' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE' });
    await expect(correlation({ sae: A, source: fromArray(x, dIn) }, { sae: A }, { maxBytes: 10, output: 'full' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_MEMORY' });
    expect((await correlation({ sae: A, source: fromArray(x, dIn) }, { sae: A }, { maxBytes: 10 })).mode).toBe('top');
    await expect(correlation({ sae: A, source: fromArray(x, dIn) }, { sae: A }, { output: 'some' as 'top' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.output/) });
    await expect(correlation({ sae: A, source: fromArray(x, dIn) }, { sae: A }, { top: 0 })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.top/) });
    await expect(correlation({ source: fromArray(x, dIn) }, {}, { kind: 'codes' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG' });
  });
});

/** Random sparse codes [rows, k] over n latents: distinct indices per row, some values 0. */
function randomCodes(rows: number, k: number, n: number, next: () => number, zeroFrac = 0.1) {
  const values = new Float32Array(rows * k);
  const indices = new Int32Array(rows * k);
  for (let t = 0; t < rows; t++) {
    const used = new Set<number>();
    for (let p = 0; p < k; p++) {
      // Skewed latent frequencies (low indices fire more), never the last latent (dead).
      let j: number;
      do j = Math.floor((n - 1) * next() ** 2);
      while (used.has(j));
      used.add(j);
      indices[t * k + p] = j;
      values[t * k + p] = next() < zeroFrac ? 0 : Math.fround(0.1 + 3 * next());
    }
  }
  return { values, indices, k };
}

type Codes = ReturnType<typeof randomCodes>;

/** Native sparse correlation of given codes, appended in batches of `batch` rows. */
async function nativeCorr(ca: Codes, cb: Codes, rows: number, nA: number, nB: number, batch: number, full: boolean, top: number, reverse: boolean) {
  const b = native();
  const store = b.sparseCorrCreate(nA, nB, 0, 0, 0);
  for (let t0 = 0; t0 < rows; t0 += batch) {
    const t1 = Math.min(rows, t0 + batch);
    b.sparseCorrAppend(store, ca.values.subarray(t0 * ca.k, t1 * ca.k), ca.indices.subarray(t0 * ca.k, t1 * ca.k), cb.values.subarray(t0 * cb.k, t1 * cb.k), cb.indices.subarray(t0 * cb.k, t1 * cb.k), t1 - t0);
  }
  return b.sparseCorrRun(store, full, top, reverse);
}

/** The best k of each row of a [rows, cols] float32 matrix read by get(row, col), by r desc then index asc. */
function argsortTop(rows: number, cols: number, k: number, get: (r: number, c: number) => number): CorrelationTop {
  const indices = new Int32Array(rows * k);
  const r = new Float32Array(rows * k);
  for (let i = 0; i < rows; i++) {
    const order = Array.from({ length: cols }, (_, c) => c).sort((x, y) => get(i, y) - get(i, x) || x - y);
    for (let q = 0; q < k; q++) {
      indices[i * k + q] = order[q]!;
      r[i * k + q] = get(i, order[q]!);
    }
  }
  return { k, indices, r };
}

describe('features.correlation: native sparse kernel', () => {
  it('equals a naive float64 Pearson on random sparse codes (zeros, dead and constant features, odd sizes)', async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const [rows, nA, nB, kA, kB] = [613, 37, 53, 5, 7];
    const ca = randomCodes(rows, kA, nA, next);
    const cb = randomCodes(rows, kB, nB, next);
    // B's last latent: the same value on every token (constant, but active everywhere).
    for (let t = 0; t < rows; t++) {
      const row = Array.from(cb.indices.subarray(t * kB, (t + 1) * kB));
      if (!row.includes(nB - 1)) {
        cb.indices[t * kB] = nB - 1;
      }
      cb.values[t * kB + row.indexOf(nB - 1 >= 0 && row.includes(nB - 1) ? nB - 1 : row[0]!)] = 2.5;
    }
    const res = await nativeCorr(ca, cb, rows, nA, nB, 100, true, 0, false);
    const want = naivePearson(denseCodes(ca.values, ca.indices, rows, kA, nA), denseCodes(cb.values, cb.indices, rows, kB, nB), rows, nA, nB);
    let worst = 0;
    for (let q = 0; q < want.length; q++) worst = Math.max(worst, Math.abs(res.r![q]! - want[q]!));
    expect(worst, `seed ${seed}`).toBeLessThan(1e-6);
    expect(res.tokens).toBe(rows);
    expect(res.constantA[nA - 1]).toBe(1); // never fires
    expect(res.activeA[nA - 1]).toBe(0);
    expect(res.constantB[nB - 1]).toBe(1); // fires with the same value everywhere
    expect(res.activeB[nB - 1]).toBe(rows);
    for (let i = 0; i < nA; i++) expect(Object.is(res.r![i * nB + nB - 1], 0)).toBe(true);
    // activeA counts the nonzero codes.
    let nonzero = 0;
    for (const v of ca.values) if (v !== 0) nonzero++;
    expect(res.activeA.reduce((x, y) => x + y, 0)).toBe(nonzero);
  });

  it('latents that always fire near a large mean (30 +- 0.2): the cross-moment is float64 (r to float32 rounding of a naive Pearson)', async () => {
    // r = (sum a b - n mA mB) / ... cancels ~3 digits here: products of the codes rounded to float32
    // before the float64 sum put r off by ~1e-4.
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const [rows, nA, nB, k] = [601, 7, 5, 3];
    const codes = (n: number, shared: Float64Array, w: number) => {
      const values = new Float32Array(rows * k);
      const indices = new Int32Array(rows * k);
      for (let t = 0; t < rows; t++) {
        indices[t * k] = 0;
        values[t * k] = Math.fround(30 + w * shared[t]! + 0.2 * (2 * next() - 1));
        const a = 1 + Math.floor(next() * (n - 2));
        const b = 1 + ((a + Math.floor(next() * (n - 3))) % (n - 2));
        [indices[t * k + 1], values[t * k + 1]] = [a, Math.fround(0.1 + next())];
        [indices[t * k + 2], values[t * k + 2]] = [b === a ? 0 : b, b === a ? 0 : Math.fround(0.1 + next())];
      }
      return { values, indices, k };
    };
    const shared = Float64Array.from({ length: rows }, () => 0.2 * (2 * next() - 1));
    const ca = codes(nA, shared, 1);
    const cb = codes(nB, shared, 0.6);
    const res = await nativeCorr(ca, cb, rows, nA, nB, 97, true, 0, false);
    const want = naivePearson(denseCodes(ca.values, ca.indices, rows, k, nA), denseCodes(cb.values, cb.indices, rows, k, nB), rows, nA, nB);
    expect(res.activeA[0]).toBe(rows);
    expect(res.activeB[0]).toBe(rows);
    expect(res.constantA[0]).toBe(0);
    expect(want[0]).toBeGreaterThan(0.3);
    for (let q = 0; q < want.length; q++) expect(Math.abs(res.r![q]! - want[q]!), `seed ${seed}, entry ${q}`).toBeLessThan(2e-7);
  });

  it('signed codes: activeA / activeB count negative values per feature, and r equals the float64 Pearson', async () => {
    // The documented count is of nonzero values of every sign (pre-activations, dense codes).
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const [rows, nA, nB, kA, kB] = [211, 13, 17, 4, 3];
    const ca = randomCodes(rows, kA, nA, next);
    const cb = randomCodes(rows, kB, nB, next);
    for (const c of [ca, cb]) for (let q = 0; q < c.values.length; q++) if (next() < 0.5) c.values[q] = -c.values[q]!;
    const res = await nativeCorr(ca, cb, rows, nA, nB, 37, true, 0, false);
    const count = (c: Codes, n: number) => {
      const out = new Array<number>(n).fill(0);
      for (let q = 0; q < c.values.length; q++) if (c.values[q] !== 0) out[c.indices[q]!]!++;
      return out;
    };
    expect(Array.from(res.activeA), `seed ${seed}`).toEqual(count(ca, nA));
    expect(Array.from(res.activeB), `seed ${seed}`).toEqual(count(cb, nB));
    const want = naivePearson(denseCodes(ca.values, ca.indices, rows, kA, nA), denseCodes(cb.values, cb.indices, rows, kB, nB), rows, nA, nB);
    for (let q = 0; q < want.length; q++) expect(Math.abs(res.r![q]! - want[q]!), `seed ${seed}, r[${q}]`).toBeLessThan(1e-6);
  });

  it('top matches equal the argsort of the full matrix; identical for any batch split and thread count', async () => {
    const next = lcg(4242);
    const [rows, nA, nB, kA, kB] = [997, 61, 45, 6, 4];
    const ca = randomCodes(rows, kA, nA, next, 0.05);
    const cb = randomCodes(rows, kB, nB, next, 0.05);
    const prev = backend.info().threads;
    try {
      const runs = [];
      for (const [threads, batch] of [[1, 997], [2, 64], [3, 1], [2, 500]] as const) {
        backend.setThreads(threads);
        runs.push({ fullR: await nativeCorr(ca, cb, rows, nA, nB, batch, true, 0, false), topR: await nativeCorr(ca, cb, rows, nA, nB, batch, false, 7, true) });
      }
      const R = runs[0]!.fullR.r!;
      const wantTop = argsortTop(nB, nA, 7, (j, i) => R[i * nB + j]!);
      const wantRev = argsortTop(nA, nB, 7, (i, j) => R[i * nB + j]!);
      const t = runs[0]!.topR;
      expect(t.kTop).toBe(7);
      expect(Array.from(t.topIndex!)).toEqual(Array.from(wantTop.indices));
      expect(Array.from(t.topR!)).toEqual(Array.from(wantTop.r));
      expect(Array.from(t.revIndex!)).toEqual(Array.from(wantRev.indices));
      expect(Array.from(t.revR!)).toEqual(Array.from(wantRev.r));
      for (const other of runs.slice(1)) {
        expect(Buffer.from(other.fullR.r!.buffer).equals(Buffer.from(R.buffer))).toBe(true);
        expect(Array.from(other.topR.topIndex!)).toEqual(Array.from(t.topIndex!));
        expect(Array.from(other.topR.topR!)).toEqual(Array.from(t.topR!));
        expect(Array.from(other.topR.revIndex!)).toEqual(Array.from(t.revIndex!));
      }
      // top larger than the other side: clipped to it.
      const big = await nativeCorr(ca, cb, rows, nA, nB, 200, false, 1000, true);
      expect(big.kTop).toBe(nA);
      expect(big.kRev).toBe(nB);
    } finally {
      backend.setThreads(prev);
    }
  });

  it('ties go to the lower index in top lists', async () => {
    // A latents 0..3 identical, B latents 0..2 identical: every r ties.
    const rows = 50;
    const va = new Float32Array(rows * 4);
    const ia = new Int32Array(rows * 4);
    const vb = new Float32Array(rows * 3);
    const ib = new Int32Array(rows * 3);
    for (let t = 0; t < rows; t++) {
      const v = t % 3 === 0 ? 1 : 0.5;
      for (let p = 0; p < 4; p++) [va[t * 4 + p], ia[t * 4 + p]] = [v, p];
      for (let p = 0; p < 3; p++) [vb[t * 3 + p], ib[t * 3 + p]] = [v, p];
    }
    const res = await nativeCorr({ values: va, indices: ia, k: 4 }, { values: vb, indices: ib, k: 3 }, rows, 4, 3, 7, false, 2, true);
    expect(Array.from(res.topIndex!)).toEqual([0, 1, 0, 1, 0, 1]);
    expect(Array.from(res.revIndex!)).toEqual([0, 1, 0, 1, 0, 1, 0, 1]);
  });

  it('rejects bad codes with named errors and leaves no partial batch', async () => {
    const b = native();
    const store = b.sparseCorrCreate(4, 3, 0, 0, 0);
    const err = (f: () => unknown, code: string, text: RegExp) => {
      try {
        f();
      } catch (e) {
        expect((e as { code: string }).code).toBe(code);
        expect((e as Error).message).toMatch(text);
        return;
      }
      throw new Error('did not throw');
    };
    const ok = Float32Array.of(1, 2);
    err(() => b.sparseCorrAppend(store, ok, Int32Array.of(0, 0), ok, Int32Array.of(0, 1), 1), 'ERR_SAEKIT_ARG', /codesA\.indices.*twice/);
    err(() => b.sparseCorrAppend(store, ok, Int32Array.of(0, 4), ok, Int32Array.of(0, 1), 1), 'ERR_SAEKIT_ARG', /codesA\.indices\[1\]/);
    err(() => b.sparseCorrAppend(store, ok, Int32Array.of(0, 1), Float32Array.of(1, NaN), Int32Array.of(0, 1), 1), 'ERR_SAEKIT_NONFINITE', /codesB\.values but element 1 is NaN$/);
    err(() => b.sparseCorrAppend(store, ok, Int32Array.of(0, 1), ok, Int32Array.of(0, 1, 2), 1), 'ERR_SAEKIT_SHAPE', /codesB\.indices/);
    // Zero-valued entries may repeat an index (padding).
    expect(b.sparseCorrAppend(store, Float32Array.of(1, 0), Int32Array.of(0, 0), ok, Int32Array.of(0, 1), 1)).toBe(1);
    await expect(b.sparseCorrRun(store, true, 0, false)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/at least 2 tokens/) });
    err(() => b.sparseCorrAppend(store, ok, Int32Array.of(0, 1), ok, Int32Array.of(0, 1), 1), 'ERR_SAEKIT_DISPOSED', /has not run/);
    b.sparseCorrFree(store); // after its run: nothing left, no error
  });

  it('sparseCorrFree frees a store that never ran (a correlation that failed): later use is ERR_SAEKIT_DISPOSED, freeing twice is fine', () => {
    const b = native();
    const store = b.sparseCorrCreate(5, 4, 16, 32, 32);
    const ok = Float32Array.of(1, 2);
    expect(b.sparseCorrAppend(store, ok, Int32Array.of(0, 1), ok, Int32Array.of(2, 3), 1)).toBe(1);
    b.sparseCorrFree(store);
    b.sparseCorrFree(store);
    expect(() => b.sparseCorrAppend(store, ok, Int32Array.of(0, 1), ok, Int32Array.of(2, 3), 1)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_DISPOSED' }));
    expect(() => b.sparseCorrFree({} as never)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG' }));
  });
});

describe('features.correlation: top matches through the public API', () => {
  it('codes: top lists equal the argsort of the full matrix, and match() from them equals match() on the matrix', async () => {
    const next = lcg(77);
    const [dIn, LA, LB, rows] = [12, 41, 29, 900];
    const x = Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
    using A = SparseAutoencoder.create({ dIn, numLatents: LA, k: 4, seed: 3 });
    using B = SparseAutoencoder.create({ dIn, numLatents: LB, k: 3, seed: 4 });
    // The same batch size for both: the codes are then the same bits (see the first test).
    const f = full(await correlation({ sae: A, source: fromArray(x, dIn) }, { sae: B }, { batchSize: 128 }));
    const t = await correlation({ sae: A, source: fromArray(x, dIn) }, { sae: B }, { batchSize: 128, output: 'top', top: 3, reverse: true });
    if (t.mode !== 'top') throw new Error('expected top mode');
    const want = argsortTop(LB, LA, 3, (j, i) => f.r[i * LB + j]!);
    expect(Array.from(t.top.indices)).toEqual(Array.from(want.indices));
    expect(Array.from(t.top.r)).toEqual(Array.from(want.r));
    expect(t.reverse!.k).toBe(3);
    for (const method of ['argmax', 'mutual'] as const) {
      for (const top of method === 'mutual' ? [1, 2, 3] : [undefined]) {
        const opts = { method, threshold: 0.01, ...(top ? { top } : {}) };
        const fromFull = await match(f, opts);
        const fromTop = await match(t, opts);
        expect(fromTop.pairs).toEqual(fromFull.pairs);
        expect(Array.from(fromTop.bToA)).toEqual(Array.from(fromFull.bToA));
      }
    }
    await expect(match(t, { method: 'hungarian' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/full matrix/) });
    await expect(match(t, { method: 'mutual', top: 4 })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.top/) });
    const noRev = await correlation({ sae: A, source: fromArray(x, dIn) }, { sae: B }, { output: 'top' });
    await expect(match(noRev, { method: 'mutual' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/reverse/) });
  });

  it('codes of a JumpReLU SAE (a different k per batch) equal the naive Pearson for any batch split', async () => {
    const next = lcg(2718);
    const [dIn, L, rows] = [6, 19, 500];
    const W_dec = Float32Array.from({ length: L * dIn }, () => next() - 0.5);
    const W_enc = new Float32Array(dIn * L);
    for (let r = 0; r < dIn; r++) for (let i = 0; i < L; i++) W_enc[r * L + i] = W_dec[i * dIn + r]!;
    const J = SparseAutoencoder.fromWeights(
      { W_enc, W_dec, b_enc: new Float32Array(L), b_dec: new Float32Array(dIn), threshold: Float32Array.from({ length: L }, () => 0.05 + 0.2 * next()) },
      { architecture: 'jumprelu' },
    );
    using T = SparseAutoencoder.create({ dIn, numLatents: 11, k: 3, seed: 9 });
    const x = Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
    const cj = await J.encode(x);
    const ct = await T.encode(x);
    const want = naivePearson(denseCodes(cj.values, cj.indices, rows, cj.k, L), denseCodes(ct.values, ct.indices, rows, 3, 11), rows, L, 11);
    const got = [];
    for (const batchSize of [17, 500]) got.push(full(await correlation({ sae: J, source: fromArray(x, dIn) }, { sae: T }, { batchSize })));
    for (let q = 0; q < want.length; q++) expect(Math.abs(got[0]!.r[q]! - want[q]!)).toBeLessThan(1e-5);
    expect(Array.from(got[1]!.r)).toEqual(Array.from(got[0]!.r));
    J.dispose();
  });

  it('preacts over maxBytes: column blocks give the same top matches as the full matrix', async () => {
    const next = lcg(8);
    const [dIn, LA, LB, rows] = [7, 23, 19, 400];
    const x = Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
    using A = SparseAutoencoder.create({ dIn, numLatents: LA, k: 2, seed: 5 });
    using B = SparseAutoencoder.create({ dIn, numLatents: LB, k: 2, seed: 6 });
    const keep = (tok: number) => tok % 5 !== 1;
    const f = full(await correlation({ sae: A, source: fromArray(x, dIn) }, { sae: B }, { kind: 'preacts', mask: keep, batchSize: 64 }));
    // 4 columns of B per block (23 x 4 x 16 bytes): 5 passes.
    const seen: [number, number][] = [];
    const t = await correlation({ sae: A, source: fromArray(x, dIn) }, { sae: B }, {
      kind: 'preacts', mask: keep, batchSize: 64, maxBytes: LA * 4 * 16, top: 4, reverse: true,
      onProgress: (tokens, passes) => void seen.push([tokens, passes]),
    });
    if (t.mode !== 'top') throw new Error('expected top mode');
    // Progress counts the tokens read over all 5 passes (masked ones included), once per batch.
    expect(seen.length).toBe(5 * Math.ceil(rows / 64));
    expect(seen.every(([, p]) => p === 5)).toBe(true);
    expect(seen.map(([n]) => n)).toEqual(Array.from({ length: seen.length }, (_, i) => Math.floor(i / 7) * rows + Math.min(rows, ((i % 7) + 1) * 64)));
    expect(t.tokens).toBe(f.tokens);
    // A block's co-moments come from a GEMM 4 columns wide instead of 19: OpenBLAS may round them
    // differently (see the first test), so r agrees to float32 rounding, and the ranking exactly
    // (ranks in these lists are at least 1.5e-3 apart).
    const wantTop = argsortTop(LB, LA, 4, (j, i) => f.r[i * LB + j]!);
    const wantRev = argsortTop(LA, LB, 4, (i, j) => f.r[i * LB + j]!);
    expect(Array.from(t.top.indices)).toEqual(Array.from(wantTop.indices));
    for (let q = 0; q < wantTop.r.length; q++) expect(Math.abs(t.top.r[q]! - wantTop.r[q]!)).toBeLessThan(1e-6);
    expect(Array.from(t.reverse!.indices)).toEqual(Array.from(wantRev.indices));
    for (let q = 0; q < wantRev.r.length; q++) expect(Math.abs(t.reverse!.r[q]! - wantRev.r[q]!)).toBeLessThan(1e-6);
    expect(Array.from(t.constantB)).toEqual(Array.from(f.constantB));
  });
});

describe('features.correlation: ties in the top lists', () => {
  it("dense top lists put tied features (duplicated columns, equal r) in increasing index order, both directions, against the full matrix; active counts nonzero values", async () => {
    const seed = (Date.now() ^ 0x510e527f) >>> 0;
    const next = lcg(seed);
    const n = 50 + Math.floor(next() * 200);
    const [uA, uB] = [2 + Math.floor(next() * 4), 2 + Math.floor(next() * 4)];
    // Each side's columns are copies of a few distinct random columns, at random places: the
    // copies' r with any other feature are computed from the same values, so they mostly tie (the
    // float32 GEMM may round copies at different positions apart in the last bits: 0.95102847 vs
    // 0.95102835 seen). Either way the lists must equal the full matrix's order; exact ties, from
    // integer data, are tested in 'a tie at the end of a top list goes to the lower index' below.
    const sideOf = (u: number, d: number) => {
      const base = Float32Array.from({ length: n * u }, () => (next() < 0.2 ? 0 : next() * 2 - 1));
      const pick = Array.from({ length: d }, (_, c) => (c < u ? c : Math.floor(next() * u)));
      for (let c = d - 1; c > 0; c--) {
        const j = Math.floor(next() * (c + 1));
        [pick[c], pick[j]] = [pick[j]!, pick[c]!];
      }
      return Float32Array.from({ length: n * d }, (_, q) => base[Math.floor(q / d) * u + pick[q % d]!]!);
    };
    const [dA, dB] = [uA + 2 + Math.floor(next() * 6), uB + 2 + Math.floor(next() * 6)];
    const xa = sideOf(uA, dA);
    const xb = sideOf(uB, dB);
    const opts = { kind: 'dense', batchSize: 1 + Math.floor(next() * n) } as const;
    const f = full(await correlation({ source: fromArray(xa, dA) }, { source: fromArray(xb, dB) }, opts));
    const top = 2 + Math.floor(next() * (dA - 1)); // a list of one shows no order
    const t = await correlation({ source: fromArray(xa, dA) }, { source: fromArray(xb, dB) }, { ...opts, output: 'top', top, reverse: true });
    if (t.mode !== 'top') throw new Error('expected top mode');
    const want = argsortTop(dB, dA, Math.min(top, dA), (j, i) => f.r[i * dB + j]!);
    const wantRev = argsortTop(dA, dB, Math.min(top, dB), (i, j) => f.r[i * dB + j]!);
    const ctx = `seed ${seed}: ${dA} x ${dB}, top ${top}`;
    expect(Array.from(t.top.indices), ctx).toEqual(Array.from(want.indices));
    expect(Array.from(t.top.r), ctx).toEqual(Array.from(want.r));
    expect(Array.from(t.reverse!.indices), ctx).toEqual(Array.from(wantRev.indices));
    // activeA / activeB: the tokens on which each feature is nonzero (negative values count).
    const nonzero = (x: Float32Array, d: number) => Array.from({ length: d }, (_, c) => x.filter((v, q) => q % d === c && v !== 0).length);
    expect(Array.from(f.activeA), ctx).toEqual(nonzero(xa, dA));
    expect(Array.from(f.activeB), ctx).toEqual(nonzero(xb, dB));
  });
});

describe('features.correlation: inputs and edge cases', () => {
  const dIn = 4;
  const gauss = (next: () => number) => Math.sqrt(-2 * Math.log(next() + 1e-12)) * Math.cos(2 * Math.PI * next());

  it('sources of different lengths are compared up to maxTokens when both hold that many (the CLI relies on it)', async () => {
    const next = lcg(61);
    using A = SparseAutoencoder.create({ dIn, numLatents: 9, k: 2, seed: 1 });
    using B = SparseAutoencoder.create({ dIn, numLatents: 7, k: 2, seed: 2 });
    const xa = Float32Array.from({ length: 40 * dIn }, () => next() - 0.5);
    const xb = Float32Array.from({ length: 37 * dIn }, () => next() - 0.5);
    for (const batchSize of [4096, 10, 7]) {
      const r = (await correlation({ sae: A, source: fromArray(xa, dIn) }, { sae: B, source: fromArray(xb, dIn) }, { maxTokens: 30, batchSize, output: 'full' })) as CorrelationMatrix;
      const ref = (await correlation({ sae: A, source: fromArray(xa.slice(0, 30 * dIn), dIn) }, { sae: B, source: fromArray(xb.slice(0, 30 * dIn), dIn) }, { batchSize, output: 'full' })) as CorrelationMatrix;
      expect(r.tokens).toBe(30);
      expect(Array.from(r.r)).toEqual(Array.from(ref.r));
    }
    // Past the shorter source's end: still an error naming both counts.
    await expect(correlation({ sae: A, source: fromArray(xa, dIn) }, { sae: B, source: fromArray(xb, dIn) }, { maxTokens: 39 })).rejects.toMatchObject({
      code: 'ERR_SAEKIT_SHAPE',
      message: expect.stringMatching(/same number of rows .*\(a has 40 rows, b has 37\)/),
    });
  });

  it("the dense kinds give the same r bits for any maxBytes that holds a 256-column tile: top lists equal the full matrix's entries, and so do argmax and mutual matches (r moved in the last bit with the column block under OpenBLAS)", async () => {
    const next = lcg(Date.now() >>> 0);
    const [n, p, q] = [700, 37, 600 + Math.floor(next() * 50)];
    const X = Float32Array.from({ length: n * p }, () => gauss(next));
    // B's features: noisy copies of A's, two per A feature nearly tied (argmax must pick between them).
    const Y = new Float32Array(n * q);
    for (let t = 0; t < n; t++) for (let j = 0; j < q; j++) Y[t * q + j] = X[t * p + (j % p)]! + gauss(next) * (0.5 + (j % 3) * 1e-6);
    const a = { source: fromArray(X, p) };
    const b = { source: fromArray(Y, q) };
    const full = (await correlation(a, b, { kind: 'dense', batchSize: 256 })) as CorrelationMatrix;
    expect(full.mode).toBe('full');
    const [mArg, mMut] = [await match(full, { method: 'argmax' }), await match(full, { method: 'mutual' })];
    for (const cols of [256, 300, 512 + Math.floor(next() * 88)]) {
      const top = (await correlation(a, b, { kind: 'dense', batchSize: 256, output: 'top', top: 3, reverse: true, maxBytes: p * 16 * cols })) as CorrelationTopMatches;
      for (let j = 0; j < q; j++) {
        for (let s = 0; s < top.top.k; s++) {
          const i = top.top.indices[j * top.top.k + s]!;
          expect(top.top.r[j * top.top.k + s], `columns ${cols}: r[${i}, ${j}]`).toBe(full.r[i * q + j]);
        }
      }
      expect((await match(top, { method: 'argmax' })).pairs, `columns ${cols}`).toEqual(mArg.pairs);
      expect((await match(top, { method: 'mutual' })).pairs, `columns ${cols}`).toEqual(mMut.pairs);
    }
  });

  it("kind 'codes' on a source of unknown length takes a large maxTokens as a bound, not a size to allocate (2^24 tokens of k 1024 reserved 256 GiB for 300 rows)", async () => {
    const next = lcg(Date.now() >>> 0);
    const [d, rows] = [6, 300];
    const x = Float32Array.from({ length: rows * d }, () => gauss(next));
    const stream = () => customSource(d, undefined, async function* () {
      yield { rows: 100, dIn: d, data: x.slice(0, 100 * d) };
      yield { rows: rows - 100, dIn: d, data: x.slice(100 * d) };
    });
    using A = SparseAutoencoder.create({ dIn: d, numLatents: 1024, k: 1024, seed: 1 });
    using B = SparseAutoencoder.create({ dIn: d, numLatents: 1024, k: 1024, seed: 2 });
    const r = (await correlation({ sae: A, source: stream() }, { sae: B }, { maxTokens: 2 ** 24, output: 'top', top: 2 })) as CorrelationTopMatches;
    const ref = (await correlation({ sae: A, source: fromArray(x, d) }, { sae: B }, { output: 'top', top: 2 })) as CorrelationTopMatches;
    expect(r.tokens).toBe(rows);
    expect(Array.from(r.top.r)).toEqual(Array.from(ref.top.r));
    expect(Array.from(r.top.indices)).toEqual(Array.from(ref.top.indices));
  });

  it("kind 'codes' refuses before reading a source whose known tokens pass the store's 2^31 - 1, naming options.maxTokens (it failed at that token, hours in); a mask or a maxTokens within it reads", async () => {
    const d = 4;
    let reads = 0;
    const huge = customSource(d, 2 ** 31, async function* () {
      reads++;
      yield { rows: 64, dIn: d, data: new Float32Array(64 * d).map((_, i) => Math.sin(i)) };
    });
    using A = SparseAutoencoder.create({ dIn: d, numLatents: 8, k: 2, seed: 1 });
    using B = SparseAutoencoder.create({ dIn: d, numLatents: 8, k: 2, seed: 2 });
    await expect(correlation({ sae: A, source: huge }, { sae: B })).rejects.toMatchObject({
      code: 'ERR_SAEKIT_ARG',
      message: expect.stringMatching(/^Expected at most 2147483647 for kind 'codes' \(its store counts tokens in 32 bits; the source has 2147483648 rows\) for options\.maxTokens but received undefined/),
    });
    await expect(correlation({ sae: A, source: huge }, { sae: B }, { maxTokens: 2 ** 31 })).rejects.toMatchObject({ message: expect.stringMatching(/but received 2147483648/) });
    expect(reads).toBe(0);
    // Within the limit, or with a mask (its count is not known ahead), the run reads.
    for (const o of [{ maxTokens: 2 ** 31 - 1 }, { mask: () => true }]) {
      const r = await correlation({ sae: A, source: huge }, { sae: B }, { ...o, output: 'top', top: 1 });
      expect(r.tokens).toBe(64);
    }
    expect(reads).toBe(2);
  });

  it("kind 'codes' runs fewer threads where their work lists would pass maxBytes, with the same bits", async () => {
    const next = lcg(Date.now() >>> 0);
    const [d, rows] = [7, 301];
    const x = Float32Array.from({ length: rows * d }, () => gauss(next));
    using A = SparseAutoencoder.create({ dIn: d, numLatents: 37, k: 5, seed: 5 });
    using B = SparseAutoencoder.create({ dIn: d, numLatents: 41, k: 4, seed: 6 });
    const run = (maxBytes?: number) =>
      correlation({ sae: A, source: fromArray(x, d) }, { sae: B }, { output: 'top', top: 6, reverse: true, ...(maxBytes ? { maxBytes } : {}) }) as Promise<CorrelationTopMatches>;
    const ref = await run();
    // One thread's lists (41 x (16 + 48) bytes) and less: one task.
    for (const maxBytes of [1, 41 * 64, 41 * 64 * 2 - 1]) {
      const r = await run(maxBytes);
      expect(Array.from(r.top.r), `maxBytes ${maxBytes}`).toEqual(Array.from(ref.top.r));
      expect(Array.from(r.top.indices)).toEqual(Array.from(ref.top.indices));
      expect(Array.from(r.reverse!.r)).toEqual(Array.from(ref.reverse!.r));
      expect(Array.from(r.reverse!.indices)).toEqual(Array.from(ref.reverse!.indices));
    }
    // The native argument is checked.
    const store = native().sparseCorrCreate(2, 2, 0, 0, 0);
    try {
      expect(() => native().sparseCorrRun(store, false, 1, false, 'cpu', 1, -1)).toThrow(/maxWorkBytes/);
    } finally {
      native().sparseCorrFree(store);
    }
  });

  it("two sources opened with onNonFinite 'skip' do not skip: a non-finite row is ERR_SAEKIT_NONFINITE naming its file and row (a skip on one side misaligned every later token); one shared source still skips", async () => {
    const next = lcg(Date.now() >>> 0);
    const rows = 53;
    const dir = mkdtempSync(path.join(tmpdir(), 'saekit-corr-skip-'));
    try {
      const x = Float32Array.from({ length: rows * dIn }, () => gauss(next));
      const bad = 1 + Math.floor(next() * (rows - 2));
      const xNan = x.slice();
      xNan[bad * dIn + 2] = NaN;
      const [fa, fb] = [path.join(dir, 'a.npy'), path.join(dir, 'b.npy')];
      await writeNpy(fa, { dtype: 'float32', shape: [rows, dIn], data: xNan });
      await writeNpy(fb, { dtype: 'float32', shape: [rows, dIn], data: x });
      for (const kind of ['dense', 'codes'] as const) {
        using A = SparseAutoencoder.create({ dIn, numLatents: 6, k: 2, seed: 3 });
        using B = SparseAutoencoder.create({ dIn, numLatents: 5, k: 2, seed: 4 });
        const sides = (sa: ActivationSource, sb: ActivationSource | undefined) =>
          kind === 'dense' ? ([{ source: sa }, sb ? { source: sb } : {}] as const) : ([{ sae: A, source: sa }, { sae: B, ...(sb ? { source: sb } : {}) }] as const);
        for (const batchSize of [7, 4096]) {
          await using sa = await openActivations(fa, { onNonFinite: 'skip' });
          await using sb = await openActivations(fb, { onNonFinite: 'skip' });
          const [a, b] = sides(sa, sb);
          await expect(correlation(a, b, { kind, batchSize, output: 'full' }), `${kind} batch ${batchSize}`).rejects.toMatchObject({
            code: 'ERR_SAEKIT_NONFINITE',
            message: expect.stringMatching(new RegExp(`row ${bad} of .*a\\.npy has NaN at column 2 \\(rows are not skipped when a and b have their own sources`)),
          });
          // One source for both sides skips the row for both: still aligned, and equal to the
          // two clean sources without that row.
          const [a1, b1] = sides(sa, undefined);
          const shared = (await correlation(a1, b1, { kind, batchSize, output: 'full' })) as CorrelationMatrix;
          expect(shared.tokens).toBe(rows - 1);
          const clean = Float32Array.from([...x.subarray(0, bad * dIn), ...x.subarray((bad + 1) * dIn)]);
          await using ca = fromArray(clean, dIn);
          await using cb = fromArray(clean.slice(), dIn);
          const [a2, b2] = sides(ca, cb);
          expect(Array.from(shared.r)).toEqual(Array.from(((await correlation(a2, b2, { kind, batchSize, output: 'full' })) as CorrelationMatrix).r));
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("compat 'univ-feat-geom' gives that repository's z-scores (unbiased std) over N: r (N - 1) / N, full and top, labelled (docs/references.md §1.2, §1.8)", async () => {
    const next = lcg(67);
    const n = 50;
    const [p, q] = [3, 4];
    const X = Float32Array.from({ length: n * p }, () => gauss(next));
    const Y = Float32Array.from({ length: n * q }, (_, i) => (i % q === 3 ? 2 : X[Math.floor(i / q) * p + (i % p)]! + gauss(next)));
    // univ_feat_geom's correlation_fns: Z = (X - mean) / (std_unbiased + 1e-8), C = Z_A^T Z_B / N.
    const z = (M: Float32Array, w: number) => {
      const out = new Float64Array(n * w);
      for (let c = 0; c < w; c++) {
        let m = 0;
        for (let t = 0; t < n; t++) m += M[t * w + c]! / n;
        let ss = 0;
        for (let t = 0; t < n; t++) ss += (M[t * w + c]! - m) ** 2;
        const sd = Math.sqrt(ss / (n - 1));
        for (let t = 0; t < n; t++) out[t * w + c] = (M[t * w + c]! - m) / (sd + 1e-8);
      }
      return out;
    };
    const [za, zb] = [z(X, p), z(Y, q)];
    const ref = new Float64Array(p * q);
    for (let i = 0; i < p; i++) for (let j = 0; j < q; j++) for (let t = 0; t < n; t++) ref[i * q + j]! += (za[t * p + i]! * zb[t * q + j]!) / n;
    const sides = (): [CorrelationSide, CorrelationSide] => [{ source: fromArray(X, p) }, { source: fromArray(Y, q) }];
    const plain = full(await correlation(...sides(), { kind: 'dense', batchSize: 16 }));
    const c = full(await correlation(...sides(), { kind: 'dense', batchSize: 16, compat: 'univ-feat-geom' }));
    expect(c.compat).toBe('univ-feat-geom');
    expect(plain.compat).toBeUndefined();
    for (let e = 0; e < p * q; e++) {
      expect(c.r[e]!).toBeCloseTo(ref[e]!, 6);
      expect(c.r[e]!).toBeCloseTo((plain.r[e]! * (n - 1)) / n, 7);
    }
    expect(Math.abs(plain.r[0]! - ref[0]!)).toBeGreaterThan(1e-3); // Pearson r is not the compat value
    // Top lists are scaled the same, in the same order; codes too.
    const t = await correlation(...sides(), { kind: 'dense', output: 'top', top: 2, reverse: true, compat: 'univ-feat-geom' });
    if (t.mode !== 'top') throw new Error('expected top mode');
    for (let j = 0; j < q; j++) {
      for (let s = 0; s < 2; s++) {
        const i = t.top.indices[j * 2 + s]!;
        expect(t.top.r[j * 2 + s]!).toBeCloseTo(ref[i * q + j]!, 6);
      }
    }
    expect(t.reverse!.r[0]!).toBeCloseTo(ref[t.reverse!.indices[0]!]!, 6);
    using A = SparseAutoencoder.create({ dIn, numLatents: 9, k: 2, seed: 1 });
    using B = SparseAutoencoder.create({ dIn, numLatents: 7, k: 2, seed: 2 });
    const xc = Float32Array.from({ length: n * dIn }, () => gauss(next));
    const pc = full(await correlation({ sae: A, source: fromArray(xc, dIn) }, { sae: B }));
    const cc = full(await correlation({ sae: A, source: fromArray(xc, dIn) }, { sae: B }, { compat: 'univ-feat-geom' }));
    // Scaled in float64 before the float32 rounding: within one rounding of Pearson r times the factor.
    for (let e = 0; e < 9 * 7; e++) {
      const want = (pc.r[e]! * (n - 1)) / n;
      expect(Math.abs(cc.r[e]! - want), `entry ${e}`).toBeLessThanOrEqual(2 ** -23 * Math.abs(want) + 2 ** -24 * Math.abs(pc.r[e]!));
    }
    await expect(correlation(...sides(), { kind: 'dense', compat: 'univ_feat_geom' as never })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.compat/) });
  });

  it("compat 'univ-feat-geom' top lists rank the scaled values: best first, ties to the lower index, as the scaled full matrix orders them, so match() agrees (codes and dense, fresh data)", async () => {
    // Many A features near-copies of a few B directions: r within float32 ulps of each other
    // (1 and 0.99999994), which the factor (N - 1) / N merges. Scaled after the ranking, the lists
    // kept the unscaled order and left out a lower-indexed feature that tied only after scaling.
    const seed = (Date.now() ^ 0x5bd1e995) >>> 0;
    const next = lcg(seed);
    const [n, d, base, copies] = [10, 6, 4, 40];
    const Y = Float32Array.from({ length: n * base }, () => next() * 2 - 1);
    const A = new Float32Array(n * base * copies);
    for (let t = 0; t < n; t++) for (let i = 0; i < base * copies; i++) A[t * base * copies + i] = Y[t * base + (i % base)]! + 2e-4 * (next() - 0.5);
    const nA = base * copies;
    // Codes: SAEs whose encoder columns are the same near-copies of a few directions (k = all).
    const W = Float32Array.from({ length: d * base }, () => next() * 2 - 1);
    const WA = new Float32Array(d * nA);
    for (let r = 0; r < d; r++) for (let i = 0; i < nA; i++) WA[r * nA + i] = W[r * base + (i % base)]! + 1e-3 * (next() - 0.5);
    const decA = Float32Array.from({ length: nA * d }, () => next() - 0.5);
    const decB = Float32Array.from({ length: base * d }, () => next() - 0.5);
    using sa = SparseAutoencoder.fromWeights({ W_enc: WA, b_enc: new Float32Array(nA).fill(5), W_dec: decA, b_dec: new Float32Array(d) }, { k: nA });
    using sb = SparseAutoencoder.fromWeights({ W_enc: W, b_enc: new Float32Array(base).fill(5), W_dec: decB, b_dec: new Float32Array(d) }, { k: base });
    const xs = Float32Array.from({ length: n * d }, () => next() * 2 - 1);
    const cases = [
      ['dense', () => [{ source: fromArray(A, nA) }, { source: fromArray(Y, base) }] as [CorrelationSide, CorrelationSide]],
      ['codes', () => [{ sae: sa, source: fromArray(xs, d) }, { sae: sb }] as [CorrelationSide, CorrelationSide]],
    ] as const;
    for (const [kind, sides] of cases) {
      let ties = 0;
      const opts = { kind, compat: 'univ-feat-geom' as const, batchSize: 4 };
      const f = full(await correlation(...sides(), { ...opts, output: 'full' }));
      const t = await correlation(...sides(), { ...opts, output: 'top', top: 5, reverse: true });
      if (t.mode !== 'top') throw new Error('expected top mode');
      for (let j = 0; j < base; j++) {
        // The reference: column j of the full matrix sorted by (r descending, index ascending).
        const order = Array.from({ length: nA }, (_, i) => i).sort((x, y) => f.r[y * base + j]! - f.r[x * base + j]! || x - y);
        expect(Array.from(t.top.indices.subarray(j * 5, j * 5 + 5)), `${kind} B feature ${j}, seed ${seed}`).toEqual(order.slice(0, 5));
        expect(Array.from(t.top.r.subarray(j * 5, j * 5 + 5))).toEqual(order.slice(0, 5).map((i) => f.r[i * base + j]!));
        for (let q = 0; q + 1 < nA; q++) if (f.r[order[q]! * base + j] === f.r[order[q + 1]! * base + j]) ties++;
      }
      for (let i = 0; i < nA; i++) {
        const order = Array.from({ length: base }, (_, j) => j).sort((x, y) => f.r[i * base + y]! - f.r[i * base + x]! || x - y);
        expect(Array.from(t.reverse!.indices.subarray(i * 4, i * 4 + 4)), `${kind} A feature ${i}`).toEqual(order);
      }
      for (const method of ['argmax', 'mutual'] as const) {
        expect((await match(t, { method })).pairs, `${kind} ${method}, seed ${seed}`).toEqual((await match(f, { method })).pairs);
      }
      expect(ties, `${kind}: the data holds ties after the scaling`).toBeGreaterThan(0);
    }
  });

  it('each side is checked by name: a.source / b.source must be sources, a.sae / b.sae SparseAutoencoders', async () => {
    using A = SparseAutoencoder.create({ dIn, numLatents: 9, k: 2, seed: 1 });
    const src = fromArray(new Float32Array(8 * dIn).fill(0.5), dIn);
    await expect(correlation({ source: src }, { source: new Float32Array(8) as never }, { kind: 'dense' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/for b\.source/) });
    await expect(correlation({ source: {} as never }, {}, { kind: 'dense' })).rejects.toThrow(/for a\.source/);
    await expect(correlation({ source: src, sae: A }, {})).rejects.toThrow(/SparseAutoencoder for kind 'codes' for b\.sae/);
    await expect(correlation({ source: src, sae: {} as never }, { sae: A })).rejects.toThrow(/for a\.sae/);
  });

  it('a code latent equal to one value on every one of 10^6 tokens is flagged constant (the sums\' rounding error is not spread)', async () => {
    const next = lcg(62);
    const T = 1_000_000;
    const n = 3;
    const W_enc = Float32Array.from({ length: dIn * n }, (_, i) => (i % n === 0 ? 0 : gauss(next)));
    // Latent 0: pre-activation 1.7 on every token (no input weight), above the threshold 0.5.
    using A = SparseAutoencoder.fromWeights(
      { W_enc, b_enc: Float32Array.from([1.7, 0, 0]), W_dec: Float32Array.from({ length: n * dIn }, () => gauss(next)), b_dec: new Float32Array(dIn), threshold: new Float32Array(n).fill(0.5) },
      { architecture: 'jumprelu' },
    );
    using B = SparseAutoencoder.create({ dIn, numLatents: 5, k: 2, seed: 3 });
    const x = Float32Array.from({ length: T * dIn }, () => gauss(next));
    const r = (await correlation({ sae: A, source: fromArray(x, dIn) }, { sae: B }, { output: 'full', batchSize: 65536 })) as CorrelationMatrix;
    expect(r.tokens).toBe(T);
    expect(r.activeA[0]).toBe(T);
    expect(r.constantA[0]).toBe(1);
    expect(Array.from(r.r.subarray(0, 5))).toEqual([0, 0, 0, 0, 0]);
    expect(r.constantA[1]! + r.constantA[2]!).toBe(0);
  });
});

/** Float64 Pearson r of column i of X [n, p] and column j of Y [n, q] (two-pass, centred). */
function pearsonAt(X: Float32Array, Y: Float32Array, n: number, p: number, q: number, i: number, j: number): number {
  let mx = 0;
  let my = 0;
  for (let t = 0; t < n; t++) {
    mx += X[t * p + i]!;
    my += Y[t * q + j]!;
  }
  mx /= n;
  my /= n;
  let sxy = 0;
  let sxx = 0;
  let syy = 0;
  for (let t = 0; t < n; t++) {
    const dx = X[t * p + i]! - mx;
    const dy = Y[t * q + j]! - my;
    sxy += dx * dy;
    sxx += dx * dx;
    syy += dy * dy;
  }
  return sxx > 0 && syy > 0 ? sxy / Math.sqrt(sxx * syy) : 0;
}

describe('features.correlation: the dense kinds share the JS thread and hold what maxBytes allows', () => {
  // Synchronous, the means, centring, Chan merges, r and the top lists held the JS thread for a
  // stretch per batch and one at the end: gaps of 0.3-0.86 s at these sizes on the 2-core
  // development machine, a quarter to a third of the call. Sliced, 40-110 ms there (the longest
  // piece left is tensor()'s copy of a centred 4096 x 2048 batch into native memory, 30-50 ms).
  // The bound is event-loop-slices.test.ts's 150 ms, or a sixth of the call when that is longer:
  // with 3 runnable threads per core (other jobs, and the BLAS threads spinning after each GEMM)
  // every slice and the call stretch alike, and the longest gap reached 150-230 ms in 2.1-2.6 s
  // calls.
  // The rows come as views of one array (fromArray's first 4096 x 2048 batch held the thread
  // ~100 ms here, before correlation() does any work).
  const held = (x: Float32Array, d: number) =>
    customSource(d, x.length / d, async function* (o) {
      const step = o!.batchSize!;
      for (let t0 = 0; t0 * d < x.length; t0 += step) {
        const t1 = Math.min(x.length / d, t0 + step);
        yield { rows: t1 - t0, dIn: d, data: x.subarray(t0 * d, t1 * d) };
      }
    });
  const seed = Date.now() >>> 0;
  const next = lcg(seed);
  const rows = 4096;
  const cases = {
    'dense, full matrix (2048 columns)': async () => {
      const d = 2048;
      const x = Float32Array.from({ length: rows * d }, () => next() - 0.5);
      const call = () => correlation({ source: held(x, d) }, {}, { kind: 'dense' });
      return {
        call,
        check: (c: CorrelationResult) => {
          const r = full(c);
          for (let s = 0; s < 300; s++) {
            const [i, j] = [Math.floor(next() * d), Math.floor(next() * d)];
            expect(Math.abs(r.r[i * d + j]! - pearsonAt(x, x, rows, d, d, i, j)), `seed ${seed}: r[${i}, ${j}]`).toBeLessThan(1e-5);
          }
        },
      };
    },
    'preacts, top matches both ways (2 x 2048 latents)': async () => {
      const [dIn, L, k] = [64, 2048, 5];
      const x = Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
      const A = SparseAutoencoder.create({ dIn, numLatents: L, k: 8, seed: 1 });
      const B = SparseAutoencoder.create({ dIn, numLatents: L, k: 8, seed: 2 });
      const [P, Q] = [await A.preActivations(x), await B.preActivations(x)];
      const call = () => correlation({ sae: A, source: held(x, dIn) }, { sae: B }, { kind: 'preacts', output: 'top', top: k, reverse: true });
      return {
        call,
        check: (c: CorrelationResult) => {
          A.dispose();
          B.dispose();
          if (c.mode !== 'top') throw new Error('expected top mode');
          // Lists of a few features against the float64 reference over all of the other side.
          for (const [list, get] of [[c.top, (j: number, i: number) => pearsonAt(P, Q, rows, L, L, i, j)], [c.reverse!, (i: number, j: number) => pearsonAt(P, Q, rows, L, L, i, j)]] as const) {
            for (let s = 0; s < 4; s++) {
              const f = Math.floor(next() * L);
              const want = Array.from({ length: L }, (_, o) => get(f, o)).sort((u, v) => v - u);
              for (let q = 0; q < k; q++) {
                const got = list.r[f * k + q]!;
                expect(Math.abs(got - want[q]!), `seed ${seed}: feature ${f}, rank ${q}`).toBeLessThan(1e-5);
                expect(Math.abs(get(f, list.indices[f * k + q]!) - got), `seed ${seed}: feature ${f}, rank ${q}`).toBeLessThan(1e-5);
              }
            }
          }
        },
      };
    },
  };
  for (const [name, prepare] of Object.entries(cases)) {
    it(`the event loop runs during ${name}; r matches a float64 Pearson`, async () => {
      const { call, check } = await prepare();
      const { value: c, elapsed, longest, firings } = await watchCall(call);
      expect(longest, `longest gap of a ${elapsed.toFixed(0)} ms call`).toBeLessThan(gapBound(elapsed));
      expect(firings, `${elapsed.toFixed(0)} ms`).toBeGreaterThan(elapsed / 50);
      check(c);
    }, 60_000);
  }

  it.runIf(process.platform === 'linux' && haveDist)('the JS memory a dense correlation holds stays within maxBytes; full mode needs 16 bytes per entry, top mode blocks fit', () => {
    // 2048 x 2048 features, 16 bytes per entry: the float64 co-moments (8), a batch's product in
    // its tensor and in the copy read back (4 + 4: native memory, which arrayBuffers does not
    // show), the float32 result in full mode (4, made after the last batch). arrayBuffers, sampled
    // after a collection, shows the co-moments, the result and the sources' batches (2-3 MiB).
    // Before: maxBytes 16 MiB chose the full matrix and held 3.3x that in arrayBuffers alone (the
    // co-moments, the result from the start, a float32 copy of it); a block's co-moments also
    // lived on beside the next block's.
    const s = Date.now() >>> 0;
    const script = `
      import { features, fromArray } from ${distUrl};
      const [n, d, batchSize] = [128, 2048, 16];
      let s = ${s}; const next = () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s / 4294967296; };
      const x = Float32Array.from({ length: n * d }, () => next() - 0.5);
      const y = Float32Array.from({ length: n * d }, (_, q) => 0.5 * x[q] + next() - 0.5);
      const pearson = (i, j) => {
        let mx = 0, my = 0, sxy = 0, sxx = 0, syy = 0;
        for (let t = 0; t < n; t++) { mx += x[t * d + i] / n; my += y[t * d + j] / n; }
        for (let t = 0; t < n; t++) { const a = x[t * d + i] - mx, b = y[t * d + j] - my; sxy += a * b; sxx += a * a; syy += b * b; }
        return sxy / Math.sqrt(sxx * syy);
      };
      const tick = () => new Promise((r) => setImmediate(r));
      const out = [];
      for (const maxBytes of [d * d * 4, d * d * 16 - 1, d * d * 16]) {
        gc(); await tick(); gc();
        const base = process.memoryUsage().arrayBuffers;
        let peak = 0, passes = 0, running = true;
        const sampler = (async () => {
          while (running) { gc(); await tick(); peak = Math.max(peak, process.memoryUsage().arrayBuffers - base); await new Promise((r) => setTimeout(r, 2)); }
        })();
        const c = await features.correlation({ source: fromArray(x, d) }, { source: fromArray(y, d) }, { kind: 'dense', maxBytes, batchSize, onProgress: (_, p) => { passes = p; } });
        running = false;
        await sampler;
        // Against a float64 Pearson: sampled entries (full), the best match of sampled B features (top).
        let err = 0;
        for (let q = 0; q < 16; q++) {
          const j = Math.floor(next() * d);
          if (c.mode === 'full') { const i = Math.floor(next() * d); err = Math.max(err, Math.abs(c.r[i * d + j] - pearson(i, j))); continue; }
          let best = -Infinity;
          for (let i = 0; i < d; i++) best = Math.max(best, pearson(i, j));
          err = Math.max(err, Math.abs(c.top.r[j * c.top.k] - best), Math.abs(pearson(c.top.indices[j * c.top.k], j) - c.top.r[j * c.top.k]));
        }
        out.push({ maxBytes, mode: c.mode, passes, peak, err });
      }
      console.log(JSON.stringify(out));`;
    const runs = JSON.parse(runInChild(script, ['--expose-gc'])) as { maxBytes: number; mode: string; passes: number; peak: number; err: number }[];
    const d = 2048;
    for (const r of runs) {
      const shown = (r.mode === 'full' ? 12 : 8) / 16;
      expect(r.peak, `seed ${s}: maxBytes ${r.maxBytes} (${r.maxBytes / (d * d)} bytes per entry), ${r.mode}`).toBeLessThanOrEqual(shown * r.maxBytes + 4 * 2 ** 20);
      expect(r.err, `seed ${s}: maxBytes ${r.maxBytes}`).toBeLessThan(1e-5);
    }
    // Full mode from 16 bytes per entry; below, column blocks of floor(maxBytes / (2048 x 16)).
    expect(runs.map((r) => [r.mode, r.passes]), `seed ${s}`).toEqual([['top', 4], ['top', 2], ['full', 1]]);
  }, 120_000);
});

describe('match from top lists that hold every A feature', () => {
  it('mutual with top > nA equals the full matrix when the lists are complete (k = nA), and still refuses top > k < nA', async () => {
    const next = lcg(31);
    const n = 400;
    for (const [dA, dB] of [[4, 7], [3, 3]] as const) {
      const xa = Float32Array.from({ length: n * dA }, () => next() - 0.5);
      const xb = Float32Array.from({ length: n * dB }, (_, q) => xa[Math.floor(q / dB) * dA + (q % dB) % dA]! + 0.5 * (next() - 0.5));
      const opts = { kind: 'dense' as const, reverse: true, top: 5 };
      const topRes = await correlation({ source: fromArray(xa, dA) }, { source: fromArray(xb, dB) }, { ...opts, output: 'top' });
      const fullRes = await correlation({ source: fromArray(xa, dA) }, { source: fromArray(xb, dB) }, { ...opts, output: 'full' });
      expect(topRes.mode).toBe('top');
      for (const top of [dA, dA + 2, 1000]) {
        const want = await match(fullRes, { method: 'mutual', top });
        const got = await match(topRes, { method: 'mutual', top });
        expect(got.pairs.map((p) => [p.a, p.b])).toEqual(want.pairs.map((p) => [p.a, p.b]));
      }
    }
    // Lists shorter than nA: a larger top cannot be answered from them.
    const xa = Float32Array.from({ length: n * 8 }, () => next());
    const xb = Float32Array.from({ length: n * 3 }, () => next());
    const r = await correlation({ source: fromArray(xa, 8) }, { source: fromArray(xb, 3) }, { kind: 'dense', reverse: true, top: 5, output: 'top' });
    await expect(match(r, { method: 'mutual', top: 6 })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.top/) });
  });
});

describe('features.correlation: options.signal', () => {
  const [dIn, LA, LB, rows] = [5, 11, 9, 400];
  const next = lcg(97);
  const x = Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
  /** A source over x that records whether its pass began and whether it was ended. */
  const watched = () => {
    const state = { started: false, ended: false };
    const source = customSource(dIn, rows, async function* (o) {
      state.started = true;
      try {
        yield* fromArray(x, dIn).batches(o);
      } finally {
        state.ended = true;
      }
    });
    return { state, source };
  };

  for (const kind of ['codes', 'preacts', 'dense'] as const) {
    it(`${kind}: an aborted signal rejects before reading; an abort between batches rejects with its reason and ends the pass; without one the result is unchanged`, async () => {
      using A = SparseAutoencoder.create({ dIn, numLatents: LA, k: 2, seed: 1 });
      using B = SparseAutoencoder.create({ dIn, numLatents: LB, k: 2, seed: 2 });
      const sides = (source: ReturnType<typeof customSource>): [CorrelationSide, CorrelationSide] => (kind === 'dense' ? [{ source }, {}] : [{ sae: A, source }, { sae: B }]);
      const before = AbortSignal.abort();
      const w0 = watched();
      await expect(correlation(...sides(w0.source), { kind, signal: before })).rejects.toBe(before.reason);
      expect(w0.state.started).toBe(false);

      const w1 = watched();
      const ctrl = new AbortController();
      const reason = new Error('enough');
      const seen: number[] = [];
      await expect(
        correlation(...sides(w1.source), {
          kind,
          batchSize: 50,
          signal: ctrl.signal,
          onProgress: (t) => {
            seen.push(t);
            if (t >= 100) ctrl.abort(reason);
          },
        }),
      ).rejects.toBe(reason);
      expect(seen).toEqual([50, 100]);
      expect(w1.state.ended).toBe(true);

      await expect(correlation(...sides(watched().source), { kind, signal: {} as AbortSignal })).rejects.toMatchObject({
        code: 'ERR_SAEKIT_ARG',
        message: expect.stringMatching(/options\.signal/),
      });
      await expect(correlation(...sides(watched().source), { kind, signal: 'stop' as unknown as AbortSignal })).rejects.toMatchObject({
        code: 'ERR_SAEKIT_ARG',
        message: expect.stringMatching(/options\.signal/),
      });

      const plain = full(await correlation(...sides(fromArray(x, dIn)), { kind, batchSize: 50, output: 'full' }));
      const signalled = full(await correlation(...sides(fromArray(x, dIn)), { kind, batchSize: 50, output: 'full', signal: new AbortController().signal }));
      expect(Array.from(signalled.r)).toEqual(Array.from(plain.r));
      expect(signalled.tokens).toBe(plain.tokens);
    });
  }

  it('dense top mode in column blocks: an abort at the end of the first pass starts no other pass', async () => {
    // 2 columns of B per block: 5 passes.
    const w = watched();
    const ctrl = new AbortController();
    const seen: number[] = [];
    const opts = { kind: 'dense' as const, batchSize: 100, maxBytes: dIn * 2 * 16, top: 2 };
    const p = correlation({ source: w.source }, {}, {
      ...opts,
      signal: ctrl.signal,
      onProgress: (t) => {
        seen.push(t);
        if (t === rows) ctrl.abort();
      },
    });
    await expect(p).rejects.toMatchObject({ name: 'AbortError' });
    expect(seen).toEqual([100, 200, 300, 400]);
    expect(w.state.ended).toBe(true);
    // Without an abort: the same top lists as without a signal.
    const plain = await correlation({ source: fromArray(x, dIn) }, {}, opts);
    const signalled = await correlation({ source: fromArray(x, dIn) }, {}, { ...opts, signal: new AbortController().signal });
    if (plain.mode !== 'top' || signalled.mode !== 'top') throw new Error('expected top mode');
    expect(Array.from(signalled.top.indices)).toEqual(Array.from(plain.top.indices));
    expect(Array.from(signalled.top.r)).toEqual(Array.from(plain.top.r));
  });
});

describe('features.correlation: dense column blocks (fresh random data)', () => {
  it('top mode in column blocks: lists of min(top, nA) real matches, and activeB / constantB at each feature\'s own index', async () => {
    const seed = (Date.now() ^ 0x3c6ef372) >>> 0;
    const next = lcg(seed);
    const n = 31 + 2 * Math.floor(next() * 40);
    const dA = 3 + 2 * Math.floor(next() * 2);
    const dB = 7 + 2 * Math.floor(next() * 3);
    // About 30% zeros and negative values; one constant column of B (not the first block's).
    const xa = Float32Array.from({ length: n * dA }, () => (next() < 0.3 ? 0 : next() * 2 - 1));
    const xb = Float32Array.from({ length: n * dB }, () => (next() < 0.3 ? 0 : next() * 2 - 1));
    const flat = dB - 2;
    for (let t = 0; t < n; t++) xb[t * dB + flat] = 0.25;
    const opts = { kind: 'dense', batchSize: 1 + Math.floor(next() * n) } as const;
    const f = full(await correlation({ source: fromArray(xa, dA) }, { source: fromArray(xb, dB) }, opts));
    const top = dA + 1 + Math.floor(next() * 4); // more than A has
    const w = 2; // columns per block: maxBytes = nA x w x 16
    const t = await correlation({ source: fromArray(xa, dA) }, { source: fromArray(xb, dB) }, { ...opts, output: 'top', top, maxBytes: dA * w * 16 });
    if (t.mode !== 'top') throw new Error('expected top mode');
    const ctx = `seed ${seed}: ${dA} x ${dB}, n ${n}, top ${top}`;
    expect(t.top.k, ctx).toBe(dA);
    // Every list holds each A feature once, best first, with its r (the blocks' batch products
    // round differently from the full run's: to float32 rounding).
    for (let j = 0; j < dB; j++) {
      const idx = Array.from(t.top.indices.subarray(j * dA, (j + 1) * dA));
      expect([...idx].sort((x, y) => x - y), `${ctx}, B feature ${j}`).toEqual(Array.from({ length: dA }, (_, i) => i));
      idx.forEach((i, q) => {
        expect(Math.abs(t.top.r[j * dA + q]! - f.r[i * dB + j]!), `${ctx}, B feature ${j}`).toBeLessThan(1e-6);
        if (q > 0) expect(t.top.r[j * dA + q]!).toBeLessThanOrEqual(t.top.r[j * dA + q - 1]!);
      });
    }
    const nonzero = (x: Float32Array, d: number) => Array.from({ length: d }, (_, c) => x.filter((v, q) => q % d === c && v !== 0).length);
    expect(Array.from(t.activeA), ctx).toEqual(nonzero(xa, dA));
    expect(Array.from(t.activeB), ctx).toEqual(nonzero(xb, dB));
    expect(Array.from(t.constantB), ctx).toEqual(Array.from({ length: dB }, (_, j) => (j === flat ? 1 : 0)));
    expect(t.tokens).toBe(n);
  });
});

describe('features.correlation: bounds, defaults and late aborts (features mutation round)', () => {
  const dense = { kind: 'dense' } as const;

  it('a tie at the end of a top list goes to the lower index: k copies of a best feature keep the first k', async () => {
    // 5 copies of one column in A (at scattered places), the others noise; B's columns follow it.
    // The values are integers 0..3 and the batches 16 rows (the last 8): every batch mean, centred
    // value and float32 product is exact, so the copies' r tie exactly whatever the GEMM's order.
    // Every list of length 2 then ends in a tie among the copies: the lowest two indices, both ways.
    const seed = (Date.now() ^ 0x1f83d9ab) >>> 0;
    const next = lcg(seed);
    const n = 16 * (3 + Math.floor(next() * 6)) + 8;
    const level = () => Math.floor(next() * 4);
    const dA = 9;
    const copies = [1, 3, 4, 6, 8];
    const z = Float32Array.from({ length: n }, level);
    const xa = Float32Array.from({ length: n * dA }, (_, q) => (copies.includes(q % dA) ? z[Math.floor(q / dA)]! : level()));
    const dB = 3;
    const xb = Float32Array.from({ length: n * dB }, (_, q) => z[Math.floor(q / dB)]! + (next() < 0.2 ? 1 : 0));
    const opts = { kind: 'dense', batchSize: 16 } as const;
    const f = full(await correlation({ source: fromArray(xa, dA) }, { source: fromArray(xb, dB) }, opts));
    const t = await correlation({ source: fromArray(xa, dA) }, { source: fromArray(xb, dB) }, { ...opts, output: 'top', top: 2 });
    if (t.mode !== 'top') throw new Error('expected top mode');
    const ctx = `seed ${seed}, n ${n}`;
    for (let j = 0; j < dB; j++) {
      for (const i of copies) expect(f.r[i * dB + j], ctx).toBe(f.r[copies[0]! * dB + j]);
      for (let i = 0; i < dA; i++) if (!copies.includes(i)) expect(f.r[i * dB + j]!, ctx).toBeLessThan(f.r[copies[0]! * dB + j]!);
    }
    expect(Array.from(t.top.indices), ctx).toEqual([1, 3, 1, 3, 1, 3]);
    // The other direction: B made of copies, A's lists of 2.
    const u = await correlation({ source: fromArray(xb, dB) }, { source: fromArray(xa, dA) }, { ...opts, output: 'top', top: 2, reverse: true });
    if (u.mode !== 'top') throw new Error('expected top mode');
    expect(Array.from(u.reverse!.indices), ctx).toEqual([1, 3, 1, 3, 1, 3]);
  });

  it('r stays within [-1, 1]: exact copies and negated copies give 1 and -1, not a float32 GEMM rounding past them', async () => {
    const seed = (Date.now() ^ 0x5be0cd19) >>> 0;
    const next = lcg(seed);
    const n = 3001 + Math.floor(next() * 2000);
    const d = 13;
    const xa = Float32Array.from({ length: n * d }, () => next() * 2 - 1 + 3);
    const xb = Float32Array.from(xa, (v, q) => ((q % d) % 2 ? -v : v));
    const f = full(await correlation({ source: fromArray(xa, d) }, { source: fromArray(xb, d) }, { ...dense, batchSize: 1000 + Math.floor(next() * 999) }));
    const ctx = `seed ${seed}, n ${n}`;
    for (let q = 0; q < f.r.length; q++) expect(Math.abs(f.r[q]!), `${ctx}: r[${q}]`).toBeLessThanOrEqual(1);
    // The diagonal: the Pearson r of a column with itself (1) or its negation (-1), to float32 rounding.
    for (let i = 0; i < d; i++) expect(Math.abs(f.r[i * d + i]! - (i % 2 ? -1 : 1)), `${ctx}: r[${i}, ${i}]`).toBeLessThan(1e-5);
  });

  it('codes: r stays within [-1, 1] for shifted and negated copies of an always-firing latent near a large mean (the raw-sum rounding is clipped)', async () => {
    // A = 2^14 + k / 16 on every token (exact in float32, its sums exact in float64); B_j = c_j + A
    // or c_j - A exactly, so r = +-1, but n mean^2 rounds by ~1e-6 of the variance: without the
    // clip some of these r land just past +-1 (float32 keeps ~6e-8). The sums are in token order, so
    // the result is deterministic: with seed 37 all 12 unclipped r pass +-1 (any seed must pass).
    const seed = 37;
    const next = lcg(seed);
    const rows = 601;
    const shifts = [1000, 2000.5, 3333, 5000.25, 7777, 9000.75];
    const nB = 2 * shifts.length + 1;
    const va = new Float32Array(rows);
    const ia = new Int32Array(rows);
    const vb = new Float32Array(rows * (nB - 1));
    const ib = new Int32Array(rows * (nB - 1));
    for (let t = 0; t < rows; t++) {
      va[t] = 2 ** 14 + (Math.floor(next() * 13) - 6) / 16;
      shifts.forEach((c, j) => {
        [ib[t * (nB - 1) + 2 * j], vb[t * (nB - 1) + 2 * j]] = [2 * j, c + va[t]!];
        [ib[t * (nB - 1) + 2 * j + 1], vb[t * (nB - 1) + 2 * j + 1]] = [2 * j + 1, c + 2 ** 15 - va[t]!];
      });
    }
    for (let q = 0; q < vb.length; q++) expect(vb[q], 'the fixture is exact in float32').toBe(q % 2 ? shifts[(q % (nB - 1)) >> 1]! + 2 ** 15 - va[Math.floor(q / (nB - 1))]! : shifts[(q % (nB - 1)) >> 1]! + va[Math.floor(q / (nB - 1))]!);
    const res = await nativeCorr({ values: va, indices: ia, k: 1 }, { values: vb, indices: ib, k: nB - 1 }, rows, 2, nB, 128, true, 0, false);
    expect(res.constantA[0]).toBe(0);
    expect(res.constantA[1]).toBe(1); // never fires
    for (let j = 0; j < nB - 1; j++) {
      const r = res.r![j]!;
      expect(Math.abs(r), `seed ${seed}, B latent ${j}: r = ${r}`).toBeLessThanOrEqual(1);
      expect(Math.abs(r - (j % 2 ? -1 : 1)), `seed ${seed}, B latent ${j}`).toBeLessThan(1e-5);
    }
    expect(res.r![nB - 1]).toBe(0); // B's last latent never fires
    for (let j = 0; j < nB; j++) expect(res.r![nB + j]).toBe(0);
  });

  it('column blocks are floor(maxBytes / (nA x 16)) wide: the passes reported for a maxBytes between two widths', async () => {
    const next = lcg(71);
    const [n, dA, dB] = [23, 5, 11];
    const xa = Float32Array.from({ length: n * dA }, () => next() - 0.5);
    const xb = Float32Array.from({ length: n * dB }, () => next() - 0.5);
    for (const [maxBytes, w] of [[dA * 16 * 2, 2], [dA * 16 * 3 - 1, 2], [dA * 16 * 3, 3], [dA * 16 * 4 + 17, 4], [dA * 16, 1]] as const) {
      let passes = 0;
      const t = await correlation({ source: fromArray(xa, dA) }, { source: fromArray(xb, dB) }, { ...dense, maxBytes, onProgress: (_, p) => void (passes = p) });
      expect(t.mode).toBe('top');
      expect(passes, `maxBytes ${maxBytes}`).toBe(Math.ceil(dB / w));
    }
    // Under one column, no block fits: refused (it ran in one-column blocks over maxBytes).
    await expect(correlation({ source: fromArray(xa, dA) }, { source: fromArray(xb, dB) }, { ...dense, maxBytes: dA * 16 - 1 })).rejects.toMatchObject({ code: 'ERR_SAEKIT_MEMORY' });
  });

  it('fewer than 2 tokens is ERR_SAEKIT_ARG for every kind (one row, maxTokens 1, a mask that keeps one)', async () => {
    const next = lcg(72);
    const [dIn, rows] = [3, 9];
    const x = Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
    using A = SparseAutoencoder.create({ dIn, numLatents: 6, k: 6, seed: 1 });
    const err = { code: 'ERR_SAEKIT_ARG', message: 'Expected at least 2 tokens for a correlation but received 1' };
    for (const kind of ['dense', 'preacts', 'codes'] as const) {
      const sides = (src: ReturnType<typeof fromArray>): [CorrelationSide, CorrelationSide] => (kind === 'dense' ? [{ source: src }, {}] : [{ sae: A, source: src }, { sae: A }]);
      await expect(correlation(...sides(fromArray(x.subarray(0, dIn), dIn)), { kind }), kind).rejects.toMatchObject(err);
      await expect(correlation(...sides(fromArray(x, dIn)), { kind, maxTokens: 1 }), kind).rejects.toMatchObject(err);
      await expect(correlation(...sides(fromArray(x, dIn)), { kind, mask: (t) => t === 4 }), kind).rejects.toMatchObject(err);
      await expect(correlation(...sides(fromArray(x.subarray(0, dIn), dIn)), { kind, output: 'top' }), kind).rejects.toMatchObject(err);
      expect((await correlation(...sides(fromArray(x, dIn)), { kind, maxTokens: 2 })).tokens).toBe(2);
    }
  });

  it('a source whose passes differ (top mode in column blocks re-reads it) is ERR_SAEKIT_SHAPE, not lists mixing two samples', async () => {
    const next = lcg(73);
    const [n, d] = [30, 4];
    const x = Float32Array.from({ length: n * d }, () => next() - 0.5);
    let pass = 0;
    // Each pass one row shorter than the one before.
    const shrinking = customSource(d, undefined, async function* (o) {
      const rows = n - pass++;
      yield* fromArray(x.slice(0, rows * d), d).batches(o);
    });
    await expect(correlation({ source: shrinking }, {}, { ...dense, maxBytes: d * 16 * 2 })).rejects.toMatchObject({
      code: 'ERR_SAEKIT_SHAPE',
      message: 'Expected every pass over the sources to give the same tokens (30) but one gave 29',
    });
  });

  it('maxBytes bounds the full matrix inclusively: nA x nB x 4 bytes for codes, x 16 for the dense kinds', async () => {
    const next = lcg(74);
    const [dIn, LA, LB, rows] = [5, 7, 9, 60];
    const x = Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
    using A = SparseAutoencoder.create({ dIn, numLatents: LA, k: 3, seed: 1 });
    using B = SparseAutoencoder.create({ dIn, numLatents: LB, k: 3, seed: 2 });
    for (const [kind, bytes] of [['codes', 4], ['preacts', 16]] as const) {
      const at = LA * LB * bytes;
      const run = (maxBytes: number, output?: 'full') => correlation({ sae: A, source: fromArray(x, dIn) }, { sae: B }, { kind, maxBytes, ...(output ? { output } : {}) });
      expect((await run(at)).mode, kind).toBe('full');
      expect((await run(at, 'full')).mode, kind).toBe('full');
      expect((await run(at - 1)).mode, kind).toBe('top');
      await expect(run(at - 1, 'full'), kind).rejects.toMatchObject({ code: 'ERR_SAEKIT_MEMORY', message: expect.stringMatching(new RegExp(`needs ${at} bytes, over options\\.maxBytes = ${at - 1}$`)) });
    }
    // The dense kinds' top mode takes B in column blocks: one column (nA x 16 bytes) is the
    // least it can hold, and below it the run is refused (it went on in one-column blocks over maxBytes).
    for (const kind of ['preacts', 'dense'] as const) {
      const sides = kind === 'dense' ? [{ source: fromArray(x, dIn) }, { source: fromArray(x.map((v) => v * v), dIn) }] as const : [{ sae: A, source: fromArray(x, dIn) }, { sae: B }] as const;
      const nA = kind === 'dense' ? dIn : LA;
      const col = nA * 16;
      expect((await correlation(sides[0], sides[1], { kind, maxBytes: col })).mode, kind).toBe('top');
      await expect(correlation(sides[0], sides[1], { kind, maxBytes: col - 1 }), kind).rejects.toMatchObject({
        code: 'ERR_SAEKIT_MEMORY',
        message: expect.stringMatching(new RegExp(`one column alone needs nA x 16 = ${col} bytes, over options\\.maxBytes = ${col - 1}$`)),
      });
    }
  });

  it('top mode keeps 5 matches per feature by default, min(top, other side) always; a top of 2^31 - 1 is only clipped', async () => {
    const next = lcg(75);
    const [n, dA, dB] = [40, 8, 3];
    const xa = Float32Array.from({ length: n * dA }, () => next() - 0.5);
    const xb = Float32Array.from({ length: n * dB }, () => next() - 0.5);
    const f = full(await correlation({ source: fromArray(xa, dA) }, { source: fromArray(xb, dB) }, dense));
    for (const [top, kTop, kRev] of [[undefined, 5, 3], [2 ** 31 - 1, dA, dB]] as const) {
      const t = await correlation({ source: fromArray(xa, dA) }, { source: fromArray(xb, dB) }, { ...dense, output: 'top', reverse: true, ...(top ? { top } : {}) });
      if (t.mode !== 'top') throw new Error('expected top mode');
      expect([t.top.k, t.reverse!.k], `top ${top}`).toEqual([kTop, kRev]);
      const want = argsortTop(dB, dA, kTop, (j, i) => f.r[i * dB + j]!);
      expect(Array.from(t.top.indices), `top ${top}`).toEqual(Array.from(want.indices));
    }
  });

  for (const kind of ['codes', 'dense'] as const) {
    it(`${kind}, full matrix: an abort made at the last batch's progress rejects with its reason (no result after it)`, async () => {
      const next = lcg(76);
      const [dIn, rows] = [4, 90];
      const x = Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
      using A = SparseAutoencoder.create({ dIn, numLatents: 7, k: 2, seed: 1 });
      const ctrl = new AbortController();
      const reason = new Error('stop at the end');
      const seen: number[] = [];
      const sides: [CorrelationSide, CorrelationSide] = kind === 'dense' ? [{ source: fromArray(x, dIn) }, {}] : [{ sae: A, source: fromArray(x, dIn) }, { sae: A }];
      const p = correlation(...sides, {
        kind,
        batchSize: 30,
        output: 'full',
        signal: ctrl.signal,
        onProgress: (t) => {
          seen.push(t);
          if (t === rows) ctrl.abort(reason);
        },
      });
      await expect(p).rejects.toBe(reason);
      expect(seen).toEqual([30, 60, 90]);
    });
  }
});

describe('features.correlation: refusals by name (features mutation round)', () => {
  it("an SAE whose dIn is not its source's is ERR_SAEKIT_SHAPE naming the side, for each side and kind", async () => {
    const next = lcg(91);
    const x4 = Float32Array.from({ length: 20 * 4 }, () => next() - 0.5);
    const x6 = Float32Array.from({ length: 20 * 6 }, () => next() - 0.5);
    using S4 = SparseAutoencoder.create({ dIn: 4, numLatents: 5, k: 2, seed: 1 });
    using S6 = SparseAutoencoder.create({ dIn: 6, numLatents: 5, k: 2, seed: 2 });
    for (const kind of ['codes', 'preacts'] as const) {
      await expect(correlation({ sae: S6, source: fromArray(x4, 4) }, { sae: S4 }, { kind })).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE', message: "Expected a.sae.dIn = 4 (its source's) but it is 6" });
      await expect(correlation({ sae: S4, source: fromArray(x4, 4) }, { sae: S6 }, { kind })).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE', message: "Expected b.sae.dIn = 4 (its source's) but it is 6" });
      await expect(correlation({ sae: S4, source: fromArray(x4, 4) }, { sae: S4, source: fromArray(x6, 6) }, { kind })).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE', message: "Expected b.sae.dIn = 6 (its source's) but it is 4" });
      expect((await correlation({ sae: S4, source: fromArray(x4, 4) }, { sae: S6, source: fromArray(x6, 6) }, { kind })).tokens).toBe(20);
    }
  });

  it('options.mask must be a function: anything else is ERR_SAEKIT_ARG naming it before any row is read (a falsy one was ignored)', async () => {
    const x = Float32Array.from({ length: 12 * 3 }, (_, i) => Math.sin(i));
    for (const mask of ['odd', 0, null, [true, false]]) {
      await expect(correlation({ source: fromArray(x, 3) }, {}, { kind: 'dense', mask: mask as never })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/a function \(token\) => boolean for options\.mask/) });
    }
  });

  it("a non-finite value of B is ERR_SAEKIT_NONFINITE naming B's own feature index, in full mode and in a later column block", async () => {
    const next = lcg(92);
    const [n, dA, dB] = [37, 3, 7];
    const xa = Float32Array.from({ length: n * dA }, () => next() - 0.5);
    const xb = Float32Array.from({ length: n * dB }, () => next() - 0.5);
    xb[13 * dB + 5] = -Infinity; // row 13: the second batch's row 3
    // fromArray refuses non-finite rows: batches of the raw values (as a user's own source may give).
    const raw = customSource(dB, n, async function* (o) {
      const step = o!.batchSize!;
      for (let t0 = 0; t0 < n; t0 += step) yield { rows: Math.min(n, t0 + step) - t0, dIn: dB, data: xb.subarray(t0 * dB, Math.min(n, t0 + step) * dB) };
    });
    for (const maxBytes of [undefined, dA * 2 * 16]) {
      await expect(correlation({ source: fromArray(xa, dA) }, { source: raw }, { kind: 'dense', batchSize: 10, ...(maxBytes ? { maxBytes } : {}) })).rejects.toMatchObject({
        code: 'ERR_SAEKIT_NONFINITE',
        message: 'Expected finite values but feature 5 of b is -Infinity at token 13',
        row: 13,
      });
    }
  });

  it("an encode that overflows float32 names the token of the source (err.row too), not the batch's row of an x the caller never passed; a mask's dropped tokens still count", async () => {
    const next = lcg(Date.now() >>> 0);
    const [n, d] = [50, 4];
    using A = SparseAutoencoder.create({ dIn: d, numLatents: 8, k: 2, seed: 1 });
    using B = SparseAutoencoder.create({ dIn: d, numLatents: 6, k: 2, seed: 2 });
    const clean = Float32Array.from({ length: n * d }, () => next() - 0.5);
    const bad = 9 + Math.floor(next() * 40); // past the first batch of 8
    const x = clean.slice();
    x.fill(3e38, bad * d, (bad + 1) * d);
    const mask = (t: number) => t % 3 !== (bad + 1) % 3; // drops tokens, never the bad one
    for (const batchSize of [8, 7]) {
      await expect(correlation({ sae: A, source: fromArray(x, d) }, { sae: B }, { batchSize, mask })).rejects.toMatchObject({
        code: 'ERR_SAEKIT_NONFINITE',
        row: bad,
        message: expect.stringMatching(new RegExp(`^Expected codes within float32's range but token ${bad} of the source gives Infinity`)),
      });
      await expect(correlation({ sae: A, source: fromArray(clean, d) }, { sae: B, source: fromArray(x, d) }, { batchSize })).rejects.toMatchObject({
        row: bad,
        message: expect.stringMatching(new RegExp(`token ${bad} of b's source gives Infinity`)),
      });
      await expect(correlation({ sae: A, source: fromArray(x, d) }, { sae: B }, { kind: 'preacts', batchSize, mask })).rejects.toMatchObject({
        code: 'ERR_SAEKIT_NONFINITE',
        row: bad,
        message: expect.stringMatching(new RegExp(`pre-activations but feature \\d+ of a is -?Infinity at token ${bad}$`)),
      });
    }
  });
});
