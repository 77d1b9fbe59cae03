import { describe, expect, it } from 'vitest';

import { fromArray, SparseAutoencoder } from '../lib/index.js';
import { correlation } from '../lib/features/correlation.js';
import { lcg } from './helpers/reference.js';

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
      results.push(await correlation({ sae: A, source: src }, { sae: B }, { batchSize }));
    }
    const r = results[0]!;
    let worst = 0;
    for (let q = 0; q < want.length; q++) worst = Math.max(worst, Math.abs(r.r[q]! - want[q]!));
    expect(worst, `seed ${seed}`).toBeLessThan(1e-5); // float32 output of a float64 computation
    for (const other of results.slice(1)) expect(Array.from(other.r)).toEqual(Array.from(r.r));
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
    const r = await correlation({ source: fromArray(xa, 2) }, { source: fromArray(xb, 2) }, { kind: 'dense', batchSize: 65536 });
    expect(Math.abs(r.r[0]! - want[0]!)).toBeLessThan(1e-4);
    expect(Math.abs(r.r[0]! - 0.8)).toBeLessThan(5e-3);
    expect(r.constantB[1]).toBe(1);
    expect(r.r[1]).toBe(0);
  }, 60_000);

  it('preacts and the token mask; bad input', async () => {
    const next = lcg(4);
    const [dIn, L, rows] = [5, 7, 300];
    const x = Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
    using A = SparseAutoencoder.create({ dIn, numLatents: L, k: 2, seed: 1 });
    const keep = (t: number) => t % 3 !== 0;
    const r = await correlation({ sae: A, source: fromArray(x, dIn) }, { sae: A }, { kind: 'preacts', mask: keep, batchSize: 64 });
    const pre = await A.preActivations(x);
    const kept = Array.from({ length: rows }, (_, t) => t).filter(keep);
    const P = new Float64Array(kept.length * L);
    kept.forEach((t, i) => P.set(pre.subarray(t * L, (t + 1) * L), i * L));
    const want = naivePearson(P, P, kept.length, L, L);
    expect(r.tokens).toBe(kept.length);
    for (let q = 0; q < want.length; q++) expect(Math.abs(r.r[q]! - want[q]!)).toBeLessThan(1e-4);
    await expect(correlation({ sae: A, source: fromArray(x, dIn) }, { source: fromArray(x.subarray(0, 10), dIn) }, { kind: 'dense' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE' });
    await expect(correlation({ sae: A, source: fromArray(x, dIn) }, { sae: A }, { maxBytes: 10 })).rejects.toMatchObject({ code: 'ERR_SAEKIT_MEMORY' });
    await expect(correlation({ source: fromArray(x, dIn) }, {}, { kind: 'codes' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG' });
  });
});
