import { describe, expect, it } from 'vitest';

import * as saekit from '../lib/index.js';
import { mfr, mfrCachePlan, minEigenvalue, roundFloat16, sharkey, synthetic } from '../lib/data/synthetic-compat.js';
import { allocationHook, Rng } from '../lib/data/synthetic.js';
import type { ActivationSource, BatchOptions } from '../lib/data/types.js';
import { expectNamedError } from './helpers/errors.js';
import { lcg } from './helpers/reference.js';
import { jacobiEigenvalues } from './helpers/spectrum-reference.js';
import { phiRef, within5Sigma } from './helpers/synthetic-normal.js';

/** Fresh seeds each run (reported in failure messages), as in the other suites. */
function freshSeed(salt: number): number {
  return (Date.now() ^ Math.imul(salt, 0x9e3779b1)) >>> 0;
}

async function collect(source: ActivationSource, options?: BatchOptions): Promise<Float32Array> {
  const parts: Float32Array[] = [];
  for await (const b of source.batches(options)) parts.push(b.data);
  const data = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    data.set(p, at);
    at += p.length;
  }
  return data;
}

/** float16 rounding written plainly: the nearest multiple of the binade's quantum, ties to even. */
function f16Ref(x: number): number {
  const a = Math.abs(x);
  if (a === 0 || Number.isNaN(a)) return x;
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  if (2 ** (e + 1) <= a) e++;
  const q = 2 ** (Math.max(e, -14) - 10);
  const m = a / q; // exact: q is a power of two
  let r = Math.floor(m);
  const frac = m - r;
  if (frac > 0.5 || (frac === 0.5 && r % 2 === 1)) r++;
  const v = r * q;
  const out = v > 65504 ? Infinity : v;
  return x < 0 ? -out : out;
}

/** Rows recomputed from codes and features: per coordinate a float64 sum in code order, rounded by `round`. */
function rowsFromCodes(codes: { indptr: Int32Array; indices: Int32Array; values: Float32Array }, F: Float32Array, dIn: number, round: (x: number) => number): Float32Array {
  const rows = codes.indptr.length - 1;
  const out = new Float32Array(rows * dIn);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < dIn; c++) {
      let s = 0;
      for (let t = codes.indptr[r]!; t < codes.indptr[r + 1]!; t++) s += codes.values[t]! * F[codes.indices[t]! * dIn + c]!;
      out[r * dIn + c] = round(s);
    }
  }
  return out;
}

describe('roundFloat16', () => {
  it('matches a plain nearest-even rounding on edge cases and random values of every binade', () => {
    const edges = [0, -0, 1, 65504, 65519.99, 65520, 70000, 2 ** -24, 2 ** -25, 3 * 2 ** -25, 2 ** -14, 2 ** -14 - 2 ** -25, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 2047.5, 2049, -3.14159];
    for (const x of edges) expect(Object.is(roundFloat16(x), f16Ref(x)) || roundFloat16(x) === f16Ref(x), `x = ${x}`).toBe(true);
    const seed = freshSeed(1);
    const next = lcg(seed);
    for (let i = 0; i < 20000; i++) {
      const x = (next() - 0.5) * 2 ** Math.floor(next() * 44 - 28);
      expect(roundFloat16(x), `x = ${x}, seed ${seed}`).toBe(f16Ref(x));
    }
  });
});

describe('sharkey: uncorrelated mode (docs/references.md §4.3)', () => {
  it('p_i = 0.99^i * 5/512 without renormalisation: expected L0 0.97, measured within 5 sigma; codes U(0, 1)', () => {
    const seed = freshSeed(2);
    const N = 150000;
    const d = sharkey({ seed, numRows: N, dIn: 16 });
    expect(d.compat).toBe('sharkey');
    expect(d.mode).toBe('uncorrelated');
    const p = d.probabilities!;
    let sum = 0;
    let varSum = 0;
    for (let i = 0; i < 512; i++) {
      expect(p[i]).toBeCloseTo(0.99 ** i * (5 / 512), 15);
      sum += p[i]!;
      varSum += p[i]! * (1 - p[i]!);
    }
    expect(sum).toBeCloseTo((5 / 512) * ((1 - 0.99 ** 512) / 0.01), 12);
    expect(sum).toBeGreaterThan(0.97);
    expect(sum).toBeLessThan(0.972);
    expect(Array.from(d.batchProbabilities(3))).toEqual(Array.from(p));
    const codes = d.codes(0, N);
    const nnz = codes.indptr[N]!;
    expect(Math.abs(nnz / N - sum), `seed ${seed}`).toBeLessThan(5 * Math.sqrt(varSum / N));
    const counts = new Float64Array(512);
    for (const i of codes.indices) counts[i]!++;
    for (let i = 0; i < 512; i++) expect(within5Sigma(counts[i]!, N, p[i]!), `feature ${i}: ${counts[i]} of ${N}, seed ${seed}`).toBe(true);
    let vs = 0;
    for (const v of codes.values) {
      expect(v > 0 && v < 1).toBe(true);
      vs += v;
    }
    expect(Math.abs(vs / nnz - 0.5)).toBeLessThan(5 * Math.sqrt(1 / 12 / nnz));
  });

  it('featureStrengths multiplies by a second U(0, 1): mean 1/4, P(c < 1/4) = (1 + ln 4) / 4; odd sizes keep the rates', () => {
    const seed = freshSeed(3);
    const N = 60000;
    const d = sharkey({ seed, dIn: 7, numFeatures: 13, numActive: 2.5, decay: 0.8, featureStrengths: true, numRows: N, batchSize: 7 });
    const codes = d.codes(0, N);
    const nnz = codes.values.length;
    let s = 0;
    let below = 0;
    for (const v of codes.values) {
      s += v;
      if (v < 0.25) below++;
    }
    expect(Math.abs(s / nnz - 0.25), `seed ${seed}`).toBeLessThan(5 * Math.sqrt(7 / 144 / nnz));
    expect(within5Sigma(below, nnz, (1 + Math.log(4)) / 4), `seed ${seed}`).toBe(true);
    const counts = new Float64Array(13);
    for (const i of codes.indices) counts[i]!++;
    for (let i = 0; i < 13; i++) expect(within5Sigma(counts[i]!, N, (0.8 ** i * 2.5) / 13), `feature ${i}, seed ${seed}`).toBe(true);
    // Rows are the documented float64 sums of codes x features, rounded once to float32.
    expect(d.rows(0, 500)).toEqual(rowsFromCodes(d.codes(0, 500), d.features, 7, Math.fround));
  });

  it('features are unit rows of standard normals (isotropic: mean cosine ~ 0, variance ~ 1/dIn)', () => {
    const d = sharkey({ seed: freshSeed(4), numRows: 1 });
    const F = d.features;
    expect(F.length).toBe(512 * 256);
    for (let i = 0; i < 512; i++) {
      let n2 = 0;
      for (let c = 0; c < 256; c++) n2 += F[i * 256 + c]! ** 2;
      expect(Math.abs(n2 - 1)).toBeLessThan(1e-5);
    }
    let s = 0;
    let s2 = 0;
    let m = 0;
    for (let i = 0; i < 512; i += 3) {
      for (let j = i + 1; j < 512; j += 5) {
        let dot = 0;
        for (let c = 0; c < 256; c++) dot += F[i * 256 + c]! * F[j * 256 + c]!;
        s += dot;
        s2 += dot * dot;
        m++;
      }
    }
    expect(Math.abs(s / m)).toBeLessThan(5 * Math.sqrt(1 / 256 / m));
    expect(Math.abs(s2 / m - 1 / 256)).toBeLessThan(0.15 / 256);
  });
});

describe('sharkey: correlated mode (one MVN draw per generation batch)', () => {
  it('R = (U + U^T)/2 shifted by -1.001 lambda_min: off-diagonals in [0, 1), diagonal minus the shift in [0, 1), lambda_min(R) = -0.001 lambda', () => {
    for (const n of [9, 40]) {
      const seed = freshSeed(5 + n);
      const R = sharkey({ mode: 'correlated', numFeatures: n, dIn: 3, numRows: 10, seed }).correlationMatrix()!;
      const mu = jacobiEigenvalues(R, n).at(-1)!; // the smallest: lambda - 1.001 lambda = -0.001 lambda
      expect(mu, `seed ${seed}`).toBeGreaterThan(0);
      const shift = 1001 * mu; // -1.001 lambda
      // (U + U^T)/2 of this size has a clearly negative eigenvalue: in 20,000 numpy draws of U
      // uniform, -lambda_min was under 0.5 for 0.37% of the 9 x 9 ones (smallest 0.32) and never
      // under 1.9 at 40 x 40; the bounds leave margin below those.
      expect(shift, `seed ${seed}`).toBeGreaterThan(n === 9 ? 0.1 : 1);
      for (let i = 0; i < n; i++) {
        for (let j = 0; j < n; j++) {
          const v = R[i * n + j]!;
          expect(v).toBe(R[j * n + i]);
          if (i === j) {
            expect(v - shift, `R[${i}][${i}], seed ${seed}`).toBeGreaterThanOrEqual(-1e-9);
            expect(v - shift).toBeLessThan(1 + 1e-9);
          } else {
            expect(v >= 0 && v < 1).toBe(true);
          }
        }
      }
      expect(minEigenvalue(R, n)).toBeCloseTo(mu, 10);
    }
  });

  it('minEigenvalue agrees with Jacobi on random symmetric matrices of odd sizes', () => {
    const seed = freshSeed(6);
    const next = lcg(seed);
    for (const n of [1, 2, 3, 17, 33]) {
      const S = new Float64Array(n * n);
      for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) S[i * n + j] = S[j * n + i] = next() * 4 - 2;
      expect(minEigenvalue(S, n), `n ${n}, seed ${seed}`).toBeCloseTo(jacobiEigenvalues(S, n).at(-1)!, 9);
    }
  });

  it('batchProbabilities follow the documented stream layout: Phi(L e) * decay^i, rescaled to mean numActive / n (naive float64 reference)', () => {
    const seed = freshSeed(7);
    const n = 12;
    const decay = 0.9;
    const numActive = 3;
    const d = sharkey({ mode: 'correlated', numFeatures: n, dIn: 5, numActive, decay, batchSize: 5, numRows: 23, seed });
    expect(d.probabilities).toBeUndefined();
    expect(d.numBatches).toBe(5);
    // R from the 'SHRK' stream, purpose 2, row i of U.
    const rng = new Rng(BigInt(seed), 0x5348524b);
    const U = new Float64Array(n * n);
    for (let i = 0; i < n; i++) {
      rng.reseed(2, i);
      for (let j = 0; j < n; j++) U[i * n + j] = rng.next() / 2 ** 32;
    }
    const R = new Float64Array(n * n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) R[i * n + j] = (U[i * n + j]! + U[j * n + i]!) / 2;
    const lambda = jacobiEigenvalues(R, n).at(-1)!; // the smallest
    if (lambda < 0) for (let i = 0; i < n; i++) R[i * n + i]! -= 1.001 * lambda;
    const mine = d.correlationMatrix()!;
    for (let t = 0; t < n * n; t++) expect(mine[t]).toBeCloseTo(R[t]!, 9);
    // Cholesky, written plainly.
    const L = new Float64Array(n * n);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j <= i; j++) {
        let s = R[i * n + j]!;
        for (let k = 0; k < j; k++) s -= L[i * n + k]! * L[j * n + k]!;
        L[i * n + j] = i === j ? Math.sqrt(s) : s / L[j * n + j]!;
      }
    }
    const ps: Float64Array[] = [];
    for (let b = 0; b < 5; b++) {
      rng.reseed(6, b);
      const e = Array.from({ length: n }, () => rng.normal());
      const p = new Float64Array(n);
      for (let i = 0; i < n; i++) {
        let z = 0;
        for (let j = 0; j <= i; j++) z += L[i * n + j]! * e[j]!;
        p[i] = phiRef(z) * decay ** i;
      }
      const mean = p.reduce((a, v) => a + v, 0) / n;
      for (let i = 0; i < n; i++) p[i]! *= numActive / n / mean;
      const got = d.batchProbabilities(b);
      for (let i = 0; i < n; i++) expect(Math.abs(got[i]! - p[i]!), `batch ${b} feature ${i}, seed ${seed}`).toBeLessThan(1e-8);
      expect(got.reduce((a, v) => a + v, 0) / n).toBeCloseTo(numActive / n, 12);
      ps.push(got);
    }
    // The draw changes between batches.
    expect(Array.from(ps[0]!)).not.toEqual(Array.from(ps[1]!));
  });

  it('within a batch features fire independently at that batch\'s p (plus the all-zero fix); the rates change across batches', () => {
    // A fresh seed, and one whose batch 0 has a feature with p above 1 (it fires in every row).
    for (const seed of [freshSeed(8), 3307154273]) {
      const n = 10;
      const B = 40000;
      const d = sharkey({ mode: 'correlated', numFeatures: n, dIn: 4, numActive: 2, decay: 0.95, batchSize: B, numRows: 3 * B, seed });
      const perBatch: number[][] = [];
      for (let b = 0; b < 3; b++) {
        // The rescaled p_i can pass 1 (Phi(z_i) near 1 while the others are small, as seed
        // 3307154273 draws: p_2 = 1.14); such a feature fires in every row (`rand <= p`).
        const p = d.batchProbabilities(b).map((v) => Math.min(1, v));
        const p0 = p.reduce((a, v) => a * (1 - v), 1); // P(nothing fired) -> one uniform feature
        const codes = d.codes(b * B, B);
        const fires = new Float64Array(n);
        const both = new Float64Array(n * n);
        for (let r = 0; r < B; r++) {
          const a = codes.indptr[r]!;
          const z = codes.indptr[r + 1]!;
          expect(z).toBeGreaterThan(a); // no empty row
          for (let t = a; t < z; t++) {
            fires[codes.indices[t]!]!++;
            for (let u = t + 1; u < z; u++) both[codes.indices[t]! * n + codes.indices[u]!]!++;
          }
        }
        for (let i = 0; i < n; i++) {
          expect(within5Sigma(fires[i]!, B, p[i]! + p0 / n), `batch ${b} feature ${i}, seed ${seed}`).toBe(true);
          // Independence within the batch: P(i and j) = p_i p_j (the fix only touches rows with none).
          for (let j = i + 1; j < n; j++) expect(within5Sigma(both[i * n + j]!, B, p[i]! * p[j]!), `batch ${b} pair ${i},${j}, seed ${seed}`).toBe(true);
        }
        perBatch.push(Array.from(p));
      }
      // Across batches the rates differ by far more than sampling noise.
      let maxRel = 0;
      for (let i = 0; i < n; i++) maxRel = Math.max(maxRel, Math.abs(perBatch[0]![i]! - perBatch[1]![i]!) / perBatch[0]![i]!);
      expect(maxRel, `seed ${seed}`).toBeGreaterThan(0.05);
    }
  });

  it('a row where nothing fired gets one uniformly drawn feature with code exactly 1', () => {
    const seed = freshSeed(9);
    const N = 20000;
    const d = sharkey({ mode: 'correlated', numFeatures: 8, dIn: 3, numActive: 0.2, batchSize: N, numRows: N, seed });
    const p = d.batchProbabilities(0);
    const p0 = p.reduce((a, v) => a * (1 - v), 1);
    const codes = d.codes(0, N);
    let ones = 0;
    const fallbackFeature = new Float64Array(8);
    for (let r = 0; r < N; r++) {
      const a = codes.indptr[r]!;
      expect(codes.indptr[r + 1]! - a).toBeGreaterThanOrEqual(1);
      if (codes.indptr[r + 1]! - a === 1 && codes.values[a] === 1) {
        ones++;
        fallbackFeature[codes.indices[a]!]!++;
      }
    }
    expect(within5Sigma(ones, N, p0), `seed ${seed}`).toBe(true);
    for (let i = 0; i < 8; i++) expect(within5Sigma(fallbackFeature[i]!, ones, 1 / 8), `seed ${seed}`).toBe(true);
  });
});

/** Inclusion probabilities of successive weighted draws without replacement (torch.multinomial), by enumeration. */
function inclusionRef(w: number[], k: number): number[] {
  const pi = new Array<number>(w.length).fill(0);
  const rec = (taken: number[], prob: number, left: number) => {
    if (taken.length === k) {
      for (const j of taken) pi[j]! += prob;
      return;
    }
    for (let j = 0; j < w.length; j++) if (!taken.includes(j)) rec([...taken, j], (prob * w[j]!) / left, left - w[j]!);
  };
  rec([], 1, w.reduce((a, v) => a + v, 0));
  return pi;
}

describe('mfr (docs/references.md §4.4)', () => {
  it('defaults: 12 groups of 42, 32 active, features 504-511 never used; unnormalised float16 features', () => {
    const d = mfr({ numRows: 3000, batchSize: 1000, seed: freshSeed(10) });
    expect(d.compat).toBe('mfr');
    expect(d.groupSize).toBe(42);
    expect(d.probabilities).toBeUndefined();
    expect(d.features.filter((f) => f16Ref(f) !== f).length).toBe(0);
    let n2 = 0;
    for (const f of d.features) n2 += f * f;
    expect(n2 / 512).toBeGreaterThan(256 * 0.9); // randn columns: |f|^2 ~ dIn, not 1
    expect(n2 / 512).toBeLessThan(256 * 1.1);
    const codes = d.codes(0, 3000);
    // 32 coefficients per row, less those that are 0 (probability 1/2048 each in float16).
    let zeros = 0;
    for (let r = 0; r < 3000; r++) {
      const len = codes.indptr[r + 1]! - codes.indptr[r]!;
      expect(len >= 29 && len <= 32, `row ${r}: ${len} codes`).toBe(true);
      zeros += 32 - len;
    }
    expect(within5Sigma(zeros, 3000 * 32, 1 / 2048), `${zeros} zero coefficients`).toBe(true);
    expect(Math.max(...codes.indices)).toBeLessThan(504);
    for (let b = 0; b < 3; b++) {
      const sup = d.supports(b);
      expect(sup.length).toBe(12 * 32);
      for (let g = 0; g < 12; g++) {
        for (let t = 0; t < 32; t++) {
          const f = sup[g * 32 + t]!;
          expect(f >= g * 42 && f < (g + 1) * 42).toBe(true);
          if (t > 0) expect(f).toBeGreaterThan(sup[g * 32 + t - 1]!);
        }
      }
      const p = d.batchProbabilities(b);
      expect(p.reduce((a, v) => a + v, 0)).toBeCloseTo((32 * 2047) / 2048, 12); // a float16 coefficient is 0 1 time in 2048
      for (let f = 504; f < 512; f++) expect(p[f]).toBe(0);
    }
  });

  it('the default decay is 0.99: the same supports and rows as decay 0.99, others than decay 0.9', () => {
    const seed = freshSeed(12);
    const o = { dIn: 5, numFeatures: 61 + 2 * (seed % 20), groups: 3, activePerPoint: 6, numRows: 40, batchSize: 8, seed };
    const d = mfr(o);
    const explicit = mfr({ ...o, decay: 0.99 });
    const other = mfr({ ...o, decay: 0.9 });
    const sup = (x: typeof d) => Array.from({ length: d.numBatches }, (_, b) => Array.from(x.supports(b))).flat();
    expect(sup(d), `seed ${seed}`).toEqual(sup(explicit));
    expect(Array.from(d.rows(0, 40))).toEqual(Array.from(explicit.rows(0, 40)));
    expect(sup(d), `seed ${seed}`).not.toEqual(sup(other));
  });

  it('all rows of a batch that pick a group share its support; supports change between batches; groups are uniform', () => {
    const seed = freshSeed(11);
    const B = 3001;
    const groups = 5;
    const d = mfr({ dIn: 6, numFeatures: 37, groups, activePerPoint: 4, decay: 0.9, batchSize: B, numRows: 2 * B + 11, seed });
    expect(d.groupSize).toBe(7);
    expect(d.numBatches).toBe(3);
    const codes = d.codes(0, 2 * B + 11);
    const groupCount = new Float64Array(groups);
    for (let r = 0; r < 2 * B + 11; r++) {
      const sup = d.supports(Math.floor(r / B));
      const a = codes.indptr[r]!;
      const g = Math.floor(codes.indices[a]! / 7);
      if (r < 2 * B) groupCount[g]!++;
      // The group's support, less the features whose coefficient is 0 (float16: 1 in 2048).
      const own = Array.from(sup.subarray(g * 4, g * 4 + 4));
      const listed = Array.from(codes.indices.subarray(a, codes.indptr[r + 1]!));
      expect(listed.length >= 2 && listed.every((f) => own.includes(f)), `row ${r}: ${listed} of ${own}`).toBe(true);
      for (let t = a; t < codes.indptr[r + 1]!; t++) {
        const v = codes.values[t]!;
        expect(v > 0 && v < 1 && roundFloat16(v) === v).toBe(true);
      }
    }
    for (let g = 0; g < groups; g++) expect(within5Sigma(groupCount[g]!, 2 * B, 1 / groups), `seed ${seed}`).toBe(true);
    const differs = [0, 1].some((b) => Array.from(d.supports(b)).join() !== Array.from(d.supports(b + 1)).join());
    expect(differs).toBe(true);
    // Unused tail: features 35, 36.
    for (const i of codes.indices) expect(i).toBeLessThan(35);
  });

  it('a group support is a weighted sample without replacement, weights decay^j: inclusion rates match the enumeration (5 sigma)', () => {
    const seed = freshSeed(12);
    const batches = 30000;
    const decay = 0.6;
    const d = mfr({ dIn: 2, numFeatures: 5, groups: 1, activePerPoint: 2, decay, batchSize: 1, numRows: batches, seed });
    const pi = inclusionRef([1, decay, decay ** 2, decay ** 3, decay ** 4], 2);
    const counts = new Float64Array(5);
    for (let b = 0; b < batches; b++) for (const f of d.supports(b)) counts[f]!++;
    for (let j = 0; j < 5; j++) expect(within5Sigma(counts[j]!, batches, pi[j]!), `rank ${j}: ${counts[j]} of ${batches}, want ${pi[j]}, seed ${seed}`).toBe(true);
  });

  it('rows are the float64 sums of codes x features rounded to float16 (default) or float32', () => {
    const seed = freshSeed(13);
    for (const dtype of ['float16', 'float32'] as const) {
      const d = mfr({ dIn: 13, numFeatures: 29, groups: 3, activePerPoint: 5, batchSize: 17, numRows: 100, dtype, seed });
      const want = rowsFromCodes(d.codes(3, 97), d.features, 13, dtype === 'float16' ? f16Ref : Math.fround);
      expect(d.rows(3, 97)).toEqual(want);
      if (dtype === 'float32') expect(Array.from(d.features).some((f) => roundFloat16(f) !== f)).toBe(true);
    }
  });
});

describe('mfr: float16 coefficients, zero codes and the batch cache (audit round 2)', () => {
  it("float16 coefficients are torch.rand's half uniform k / 2048, k in [0, 2047]: never 1, 0 with probability 1/2048, k uniform", () => {
    const seed = freshSeed(20);
    const N = 20000;
    const d = mfr({ dIn: 3, numFeatures: 64, groups: 2, activePerPoint: 32, numRows: N, batchSize: 5000, seed });
    const codes = d.codes(0, N);
    const hist = new Float64Array(2048);
    for (const v of codes.values) {
      const k = v * 2048;
      if (!(Number.isInteger(k) && k >= 1 && k <= 2047)) expect.fail(`seed ${seed}: coefficient ${v} is not k / 2048 with k in [1, 2047]`);
      hist[k]!++;
    }
    const total = N * 32;
    hist[0] = total - codes.values.length; // the zeros, left out of the codes
    expect(within5Sigma(hist[0]!, total, 1 / 2048), `seed ${seed}: ${hist[0]} zeros of ${total}`).toBe(true);
    // k uniform over 2048 values: chi-square, 2047 df (mean 2047, sd 64; 6.5 sd: tail below 1e-6).
    const want = total / 2048;
    const chi2 = hist.reduce((a, c) => a + (c - want) ** 2 / want, 0);
    expect(chi2, `seed ${seed}`).toBeLessThanOrEqual(2047 + 6.5 * Math.sqrt(2 * 2047));
    // float32: U(0, 1] coefficients, none 0, so every row lists its 32.
    const f32 = mfr({ dIn: 3, numFeatures: 64, groups: 2, activePerPoint: 32, numRows: 2000, dtype: 'float32', seed }).codes(0, 2000);
    expect(f32.values.length).toBe(2000 * 32);
    expect(f32.values.every((v) => v > 0 && v <= 1)).toBe(true);
  });

  it('codes list no 0 (values all > 0), and the rows are still the float64 sums of the codes', () => {
    const seed = freshSeed(21);
    const d = mfr({ dIn: 7, numFeatures: 40, groups: 2, activePerPoint: 20, numRows: 3000, batchSize: 700, seed });
    const codes = d.codes(0, 3000);
    expect(codes.values.length, `seed ${seed}`).toBeLessThan(3000 * 20); // about 29 zeros were dropped
    expect(codes.values.every((v) => v > 0)).toBe(true);
    expect(d.rows(0, 3000)).toEqual(rowsFromCodes(codes, d.features, 7, f16Ref));
  });

  it('the batch cache stays within 64 MiB: packed features only when two batches of them fit, else rows from the features (same bits)', () => {
    const budget = 64 * 2 ** 20;
    for (const [groups, k, dIn] of [
      [12, 32, 256],
      [12, 42, 4096],
      [1, 16384, 1024],
      [1, 2048, 2100],
      [64, 256, 65536],
      [1, 2 ** 23, 1],
      [1, 2 ** 24, 1],
    ] as const) {
      const plan = mfrCachePlan(groups, k, dIn);
      const supBytes = groups * k * 4;
      const packedBytes = groups * k * dIn * 8;
      expect(plan.bytes).toBeGreaterThanOrEqual(supBytes + (plan.packed ? packedBytes : 0));
      if (plan.capacity > 1 || supBytes <= budget / 2) expect(plan.capacity * plan.bytes, `${groups} x ${k} x ${dIn}`).toBeLessThanOrEqual(budget);
      expect(plan.capacity).toBeGreaterThanOrEqual(1);
      expect(plan.packed).toBe(2 * (supBytes + packedBytes + 1024) <= budget);
    }
    // 2048 features of 2100 dims: the packing would be 33 MiB a batch. Three batches leave
    // nothing of that size resident, and the rows are the codes' float64 sums all the same.
    const seed = freshSeed(22);
    const d = mfr({ dIn: 2100, numFeatures: 2048, groups: 1, activePerPoint: 2048, decay: 1, batchSize: 1, numRows: 3, dtype: 'float32', seed });
    const before = process.memoryUsage().arrayBuffers;
    const rows = d.rows(0, 3);
    const grown = process.memoryUsage().arrayBuffers - before;
    expect(grown, `${(grown / 2 ** 20).toFixed(1)} MiB more array buffers`).toBeLessThan(16 * 2 ** 20);
    expect(rows).toEqual(rowsFromCodes(d.codes(0, 3), d.features, 2100, Math.fround));
  });
});

describe('compat generators: determinism, batching and the public namespace', () => {
  it('the same seed gives the same features and rows, another seed others; batches() equals rows() for any batch size, shuffled epochs too', async () => {
    const seed = freshSeed(14);
    const make = [
      (s: number) => sharkey({ dIn: 9, numFeatures: 21, numActive: 3, numRows: 157, seed: s }),
      (s: number) => sharkey({ mode: 'correlated', dIn: 9, numFeatures: 21, numActive: 3, batchSize: 10, numRows: 157, seed: s }),
      (s: number) => mfr({ dIn: 9, numFeatures: 21, groups: 4, activePerPoint: 3, batchSize: 10, numRows: 157, seed: s }),
    ];
    for (const f of make) {
      const a = f(seed);
      const b = f(seed);
      const c = f(seed + 1);
      expect(b.features).toEqual(a.features);
      const all = a.rows(0, 157);
      expect(b.rows(0, 157)).toEqual(all);
      expect(c.rows(0, 157)).not.toEqual(all);
      expect(a.rows(40, 7)).toEqual(all.subarray(40 * 9, 47 * 9));
      for (const batchSize of [1, 13, 64, 500]) expect(await collect(a.source, { batchSize })).toEqual(all);
      // A shuffled epoch serves every row once.
      const shuffled = await collect(a.source, { batchSize: 32, shuffle: true, seed: 3 });
      const key = (x: Float32Array, r: number) => Array.from(x.subarray(r * 9, r * 9 + 9)).join();
      const want = Array.from({ length: 157 }, (_, r) => key(all, r)).sort();
      const got = Array.from({ length: 157 }, (_, r) => key(shuffled, r)).sort();
      expect(got).toEqual(want);
      await a.source.close();
    }
  });

  it('synthetic (lib/index) holds superposition, sharkey and mfr', () => {
    expect(saekit.synthetic).toBe(synthetic);
    expect(typeof saekit.synthetic.superposition).toBe('function');
    expect(saekit.synthetic.sharkey({ numRows: 2, dIn: 3, numFeatures: 4 }).compat).toBe('sharkey');
    expect(saekit.synthetic.mfr({ numRows: 2, dIn: 3, numFeatures: 4, groups: 2, activePerPoint: 1 }).compat).toBe('mfr');
  });

  it('rejects bad options with SaekitErrors that name them', () => {
    expectNamedError(() => sharkey({ mode: 'copula' as never }), 'options.mode');
    expectNamedError(() => sharkey({ decay: 0 }), 'options.decay');
    expectNamedError(() => sharkey({ decay: 1.5 }), 'options.decay');
    expectNamedError(() => sharkey({ numActive: 600 }), 'options.numActive');
    expectNamedError(() => sharkey({ dIn: 2.5 }), 'options.dIn');
    expectNamedError(() => sharkey({ batchSize: 0 }), 'options.batchSize');
    expectNamedError(() => sharkey({ featureStrengths: 1 as never }), 'options.featureStrengths');
    expectNamedError(() => sharkey({ mode: 'correlated', numFeatures: 5000 }), 'options.numFeatures');
    expectNamedError(() => sharkey({ numfeatures: 5 } as never), 'options.numFeatures');
    expectNamedError(() => sharkey({ seed: -1 }), 'options.seed');
    expectNamedError(() => mfr({ activePerPoint: 43 }), 'options.activePerPoint');
    expectNamedError(() => mfr({ numFeatures: 100 }), 'options.activePerPoint'); // default 32 > 100 // 12 = 8
    expectNamedError(() => mfr({ groups: 0 }), 'options.groups');
    expectNamedError(() => mfr({ groups: 600 }), 'options.groups');
    expectNamedError(() => mfr({ dtype: 'bfloat16' as never }), 'options.dtype');
    expectNamedError(() => mfr({ decay: -0.1 }), 'options.decay');
    expectNamedError(() => mfr({ numRows: 0 }), 'options.numRows');
    const d = mfr({ numRows: 10, batchSize: 4 });
    expectNamedError(() => d.supports(3), 'batch');
    expectNamedError(() => d.batchProbabilities(-1), 'batch');
    expectNamedError(() => d.rows(5, 6), 'count');
    expectNamedError(() => sharkey({ numRows: 10 }).codes(11, 0), 'start');
  });
});

describe("sharkey's @example runs as written", () => {
  it('codes(0, N) of the example is within the default numRows and its mean L0 is the documented 0.97 (5 sigma)', async () => {
    const { readFileSync } = await import('node:fs');
    const src = readFileSync(new URL('../lib/data/synthetic-compat.ts', import.meta.url), 'utf8');
    const example = src.split('@example')[1]!.split('*/')[0]!;
    expect(example).toContain("synthetic.sharkey({ mode: 'uncorrelated', seed: 1 })");
    const m = /data\.codes\(0, (\d+)\); \/\/ .*indptr\[(\d+)\] \/ (\d+) is about 0\.97/.exec(example);
    expect(m, example).not.toBeNull();
    const N = Number(m![1]);
    expect(Number(m![2])).toBe(N);
    expect(Number(m![3])).toBe(N);
    const data = synthetic.sharkey({ mode: 'uncorrelated', seed: 1 });
    const { indptr } = data.codes(0, N); // threw ERR_SAEKIT_ARG when the example asked for 100000 of 65536 rows
    // Poisson-binomial: mean sum p_i = 0.9709 (5/512 (1 - 0.99^512) / 0.01), variance sum p_i (1 - p_i).
    const p = data.probabilities!;
    const mean = p.reduce((a, x) => a + x, 0);
    const variance = p.reduce((a, x) => a + x * (1 - x), 0);
    expect(mean).toBeCloseTo(0.9709, 4);
    expect(Math.abs(indptr[N]! - N * mean)).toBeLessThanOrEqual(5 * Math.sqrt(N * variance));
  });
});

describe('compat generators: memory that cannot be had', () => {
  it('is ERR_SAEKIT_MEMORY naming the size and the option to lower, not a bare RangeError', () => {
    allocationHook.fails = (_what, bytes) => bytes > 2 ** 20;
    try {
      const memory = (fn: () => unknown, name: string, size: RegExp) => {
        expectNamedError(fn, name, 'ERR_SAEKIT_MEMORY');
        expect(() => fn()).toThrow(size);
      };
      memory(() => sharkey({ dIn: 1024, numFeatures: 512 }), 'options.numFeatures or options.dIn', /512 x 1024 feature matrix needs 524288 float32 values \(2\.0 MiB\)/);
      memory(() => mfr({ dIn: 1024, numFeatures: 512 }), 'options.numFeatures or options.dIn', /512 x 1024 feature matrix/);
      memory(() => sharkey({ mode: 'correlated', dIn: 2, numFeatures: 1024 }), 'options.numFeatures', /1024 x 1024 correlation matrix needs 1048576 float64 values \(8\.0 MiB\)/);
      // The copy handed out is the second feature matrix.
      allocationHook.fails = (what) => what.startsWith('the copy');
      memory(() => mfr({ dIn: 64, numFeatures: 384, groups: 12 }), 'options.numFeatures or options.dIn', /copy of the 384 x 64 feature matrix/);
      allocationHook.fails = (_what, bytes) => bytes > 2 ** 20;
      const small = mfr({ dIn: 256, numFeatures: 64, groups: 2, activePerPoint: 8, numRows: 100000 });
      memory(() => small.rows(0, 2000), 'count', /rows\(0, 2000\) of 256 dimensions/);
      memory(() => small.codes(0, 100000), 'count', /codes\(0, 100000\)/);
    } finally {
      allocationHook.fails = null;
    }
  });
});

describe('compat generators: options at their exact bounds (mutation round 6)', () => {
  it('numActive 0 fires nothing; activePerPoint equal to the group size takes each whole group; batch indices up to numBatches - 1', () => {
    const none = sharkey({ dIn: 3, numFeatures: 5, numActive: 0, numRows: 40 });
    expect(Array.from(none.probabilities!)).toEqual(new Array(5).fill(0));
    expect(none.codes(0, 40).indices.length).toBe(0);
    // 23 features in 4 groups of 5 (features 20-22 unused): a support of 5 is the whole group.
    const whole = mfr({ dIn: 3, numFeatures: 23, groups: 4, activePerPoint: 5, batchSize: 10, numRows: 25 });
    expect(whole.numBatches).toBe(3);
    for (const b of [0, 2]) expect(Array.from(whole.supports(b))).toEqual(Array.from({ length: 20 }, (_, i) => i));
    expectNamedError(() => whole.supports(3), 'batch');
    expectNamedError(() => whole.batchProbabilities(3), 'batch');
    expectNamedError(() => mfr({ dIn: 3, numFeatures: 23, groups: 4, activePerPoint: 6 }), 'options.activePerPoint');
  });
});
