/**
 * features.pwcca (projection-weighted CCA, Morcos, Raghu and Bengio 2018) against a float64
 * reference written here by another route: covariances, whitening by Cholesky factors, and the
 * canonical directions from a cyclic Jacobi eigen-decomposition of the symmetric K K^T (saekit goes
 * through orthonormal bases of the data and a one-sided Jacobi SVD of Qa^T Qb).
 */
import { describe, expect, it } from 'vitest';

import { SaekitError } from '../lib/errors.js';
import { features } from '../lib/index.js';
import { permutationTest, pwccaPermutationTest } from '../lib/features/similarity.js';
import { lcg } from './helpers/reference.js';
import { code, orthogonal, random, transform } from './helpers/similarity.js';

const { pwcca } = features;

type Mat = number[][]; // row-major, rows of columns

/** B = coupling * (A's first min(dA, dB) columns, mixed) + noise, so the correlations spread. */
function related(A: Float64Array, n: number, dA: number, dB: number, next: () => number, noise = 0.6): Float64Array {
  const B = new Float64Array(n * dB);
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < dB; c++) {
      let s = noise * (next() * 2 - 1);
      if (c < dA) s += A[r * dA + c]! * (1 + c) / dA + 0.3 * A[r * dA + ((c + 1) % dA)]!;
      B[r * dB + c] = s;
    }
  }
  return B;
}

function centred(X: Float64Array, n: number, d: number): Mat {
  const out: Mat = [];
  for (let r = 0; r < n; r++) out.push(Array.from({ length: d }, (_, c) => X[r * d + c]!));
  for (let c = 0; c < d; c++) {
    let m = 0;
    for (let r = 0; r < n; r++) m += out[r]![c]!;
    m /= n;
    for (let r = 0; r < n; r++) out[r]![c]! -= m;
  }
  return out;
}

/** X^T Y for row-major X [n, p], Y [n, q]. */
function crossProduct(X: Mat, Y: Mat): Mat {
  const p = X[0]!.length;
  const q = Y[0]!.length;
  const out: Mat = Array.from({ length: p }, () => new Array<number>(q).fill(0));
  for (let r = 0; r < X.length; r++) for (let i = 0; i < p; i++) for (let j = 0; j < q; j++) out[i]![j]! += X[r]![i]! * Y[r]![j]!;
  return out;
}

function matMul(X: Mat, Y: Mat): Mat {
  return X.map((row) => Y[0]!.map((_, j) => row.reduce((s, v, k) => s + v * Y[k]![j]!, 0)));
}

function transpose(X: Mat): Mat {
  return X[0]!.map((_, j) => X.map((row) => row[j]!));
}

/** Lower-triangular L with S = L L^T. */
function cholesky(S: Mat): Mat {
  const d = S.length;
  const L: Mat = Array.from({ length: d }, () => new Array<number>(d).fill(0));
  for (let i = 0; i < d; i++) {
    for (let j = 0; j <= i; j++) {
      let s = S[i]![j]!;
      for (let k = 0; k < j; k++) s -= L[i]![k]! * L[j]![k]!;
      L[i]![j] = i === j ? Math.sqrt(s) : s / L[j]![j]!;
    }
  }
  return L;
}

/** The inverse of a lower-triangular matrix, by forward substitution. */
function lowerInverse(L: Mat): Mat {
  const d = L.length;
  const inv: Mat = Array.from({ length: d }, () => new Array<number>(d).fill(0));
  for (let c = 0; c < d; c++) {
    for (let i = 0; i < d; i++) {
      let s = i === c ? 1 : 0;
      for (let k = 0; k < i; k++) s -= L[i]![k]! * inv[k]![c]!;
      inv[i]![c] = s / L[i]![i]!;
    }
  }
  return inv;
}

/** Cyclic Jacobi eigen-decomposition of a symmetric matrix: eigenvalues descending, eigenvectors as columns of vecs. */
function symmetricEigen(S: Mat): { values: number[]; vecs: Mat } {
  const d = S.length;
  const a = S.map((r) => r.slice());
  const v: Mat = Array.from({ length: d }, (_, i) => Array.from({ length: d }, (_, j) => (i === j ? 1 : 0)));
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < d; p++) for (let q = p + 1; q < d; q++) off += a[p]![q]! ** 2;
    if (off < 1e-30) break;
    for (let p = 0; p < d; p++) {
      for (let q = p + 1; q < d; q++) {
        if (Math.abs(a[p]![q]!) < 1e-300) continue;
        const theta = (a[q]![q]! - a[p]![p]!) / (2 * a[p]![q]!);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < d; k++) {
          const akp = a[k]![p]!;
          const akq = a[k]![q]!;
          a[k]![p] = c * akp - s * akq;
          a[k]![q] = s * akp + c * akq;
        }
        for (let k = 0; k < d; k++) {
          const apk = a[p]![k]!;
          const aqk = a[q]![k]!;
          a[p]![k] = c * apk - s * aqk;
          a[q]![k] = s * apk + c * aqk;
        }
        for (let k = 0; k < d; k++) {
          const vkp = v[k]![p]!;
          const vkq = v[k]![q]!;
          v[k]![p] = c * vkp - s * vkq;
          v[k]![q] = s * vkp + c * vkq;
        }
      }
    }
  }
  const order = Array.from({ length: d }, (_, i) => i).sort((x, y) => a[y]![y]! - a[x]![x]!);
  return { values: order.map((i) => a[i]![i]!), vecs: v.map((row) => order.map((i) => row[i]!)) };
}

/**
 * PWCCA from its definition: X, Y centred [n, p], [n, q]; the canonical correlations are the square
 * roots of the eigenvalues of K K^T with K = Lx^-1 Sxy Ly^-T; X's weights w_i = Lx^-T e_i give unit
 * variates h_i = X w_i; alpha_i = sum_j |<h_i, z_j>| over the columns z_j of Z (X's neurons).
 */
function reference(X: Mat, Y: Mat, Z: Mat = X): { score: number; rho: number[]; weights: number[]; mean: number } {
  const p = X[0]!.length;
  const q = Y[0]!.length;
  const c = Math.min(p, q);
  const ix = lowerInverse(cholesky(crossProduct(X, X)));
  const iy = lowerInverse(cholesky(crossProduct(Y, Y)));
  const K = matMul(matMul(ix, crossProduct(X, Y)), transpose(iy));
  const { values, vecs } = symmetricEigen(matMul(K, transpose(K)));
  const W = matMul(transpose(ix), vecs); // columns: X's canonical weights
  const H = matMul(X, W); // columns: unit canonical variates
  const P = crossProduct(Z, H); // P[j][i] = <z_j, h_i>
  const rho = values.slice(0, c).map((l) => Math.min(1, Math.sqrt(Math.max(0, l))));
  const alpha = rho.map((_, i) => P.reduce((s, row) => s + Math.abs(row[i]!), 0));
  const total = alpha.reduce((s, v) => s + v, 0);
  return {
    score: alpha.reduce((s, a, i) => s + a * rho[i]!, 0) / total,
    rho,
    weights: alpha.map((a) => a / total),
    mean: rho.reduce((s, v) => s + v, 0) / c,
  };
}

/** The reference on X's and Y's k leading principal directions (by an eigen-decomposition of X^T X), weighting by X's own neurons. */
function referenceTruncated(X: Mat, Y: Mat, kX: number, kY = kX): ReturnType<typeof reference> {
  const reduce = (M: Mat, k: number) => {
    const { vecs } = symmetricEigen(crossProduct(M, M));
    return matMul(M, vecs.map((row) => row.slice(0, Math.min(k, M[0]!.length))));
  };
  return reference(reduce(X, kX), reduce(Y, kY), X);
}

describe('pwcca', () => {
  it('matches the Cholesky / symmetric-eigen reference on random odd shapes (score, correlations, weights)', async () => {
    const next = lcg(101);
    for (const [n, dA, dB] of [
      [37, 3, 5],
      [61, 7, 4],
      [129, 11, 11],
      [50, 1, 6],
      [23, 5, 1],
      [97, 13, 9],
    ] as const) {
      const A = random(n, dA, next);
      const B = related(A, n, dA, dB, next);
      const r = await pwcca(A, B, { n, dA, dB });
      const ref = reference(centred(A, n, dA), centred(B, n, dB));
      const c = Math.min(dA, dB);
      expect(r.keptA).toBe(dA);
      expect(r.keptB).toBe(dB);
      expect(r.correlations.length).toBe(c);
      expect(r.weights.length).toBe(c);
      for (let i = 0; i < c; i++) {
        expect(Math.abs(r.correlations[i]! - ref.rho[i]!)).toBeLessThan(1e-9);
        expect(Math.abs(r.weights[i]! - ref.weights[i]!)).toBeLessThan(1e-7);
      }
      expect(Math.abs(r.score - ref.score)).toBeLessThan(1e-9);
      expect(Math.abs(r.meanCorrelation - ref.mean)).toBeLessThan(1e-9);
    }
  });

  it('keep truncates each side first (svcca-style) and still weights by A\'s neurons', async () => {
    const next = lcg(102);
    const [n, dA, dB] = [83, 9, 7];
    const A = random(n, dA, next);
    const B = related(A, n, dA, dB, next, 0.4);
    for (const k of [1, 3, 5]) {
      const r = await pwcca(A, B, { n, dA, dB, keep: k });
      const ref = referenceTruncated(centred(A, n, dA), centred(B, n, dB), k);
      expect(r.keptA).toBe(k);
      expect(r.keptB).toBe(k);
      expect(Math.abs(r.score - ref.score)).toBeLessThan(1e-9);
      for (let i = 0; i < k; i++) expect(Math.abs(r.weights[i]! - ref.weights[i]!)).toBeLessThan(1e-7);
    }
    // A share: the directions holding 99% of each side's variance, fewer than all when a side has
    // a near-null direction.
    const A2 = Float64Array.from(A, (v, i) => (i % dA === dA - 1 ? 1e-4 * v : v));
    const r = await pwcca(A2, B, { n, dA, dB, keep: 0.99 });
    expect(r.keptA).toBeLessThan(dA);
    expect(r.keptA).toBeGreaterThan(1);
    const ref = referenceTruncated(centred(A2, n, dA), centred(B, n, dB), r.keptA, r.keptB);
    expect(Math.abs(r.score - ref.score)).toBeLessThan(1e-9);
  });

  it('d = 1: the score is |Pearson r| with weight 1', async () => {
    const next = lcg(103);
    const n = 31;
    const a = random(n, 1, next);
    const b = Float64Array.from(a, (v) => -0.6 * v + (next() - 0.5));
    const r = await pwcca(a, b, { n, dA: 1, dB: 1 });
    const ca = centred(a, n, 1).map((x) => x[0]!);
    const cb = centred(b, n, 1).map((x) => x[0]!);
    const dotp = (x: number[], y: number[]) => x.reduce((s, v, i) => s + v * y[i]!, 0);
    const pearson = Math.abs(dotp(ca, cb) / Math.sqrt(dotp(ca, ca) * dotp(cb, cb)));
    expect(r.score).toBeCloseTo(pearson, 12);
    expect(r.weights[0]).toBe(1);
  });

  it('is 1 for identical inputs and for a rotated, rescaled, shifted copy', async () => {
    const next = lcg(104);
    const [n, d] = [90, 6];
    const A = random(n, d, next);
    const same = await pwcca(A, Float64Array.from(A), { n, dA: d, dB: d });
    expect(Math.abs(same.score - 1)).toBeLessThan(1e-9);
    const B = transform(A, n, d, orthogonal(d, next), d, 4.2, -3);
    expect(Math.abs((await pwcca(A, B, { n, dA: d, dB: d })).score - 1)).toBeLessThan(1e-9);
    expect(Math.abs((await pwcca(B, A, { n, dA: d, dB: d })).score - 1)).toBeLessThan(1e-9);
    // Float32 input is accepted (the same subspace up to float32 rounding).
    expect(Math.abs((await pwcca(Float32Array.from(A), A, { n, dA: d, dB: d })).score - 1)).toBeLessThan(1e-6);
  });

  it("invariances: B's orthogonal and invertible transforms, isotropic scaling of either side, A's signed permutations; not A's rotations", async () => {
    const next = lcg(105);
    const [n, dA, dB] = [77, 5, 6];
    const A = random(n, dA, next);
    const B = related(A, n, dA, dB, next, 0.8);
    const base = (await pwcca(A, B, { n, dA, dB })).score;
    const same = async (a: Float64Array, b: Float64Array, keep?: number) => {
      const opts = keep === undefined ? { n, dA, dB } : { n, dA, dB, keep };
      const ref = keep === undefined ? base : (await pwcca(A, B, opts)).score;
      expect(Math.abs((await pwcca(a, b, opts)).score - ref)).toBeLessThan(1e-9);
    };
    await same(A, transform(B, n, dB, orthogonal(dB, next), dB, 0.37, 2));
    await same(A, transform(B, n, dB, orthogonal(dB, next), dB, 5), 3); // truncated: orthogonal and isotropic only
    await same(A, transform(B, n, dB, random(dB, dB, next), dB)); // invertible (almost surely) with every direction kept
    await same(Float64Array.from(A, (v) => -7.5 * v + 1), B);
    const perm = [3, 0, 4, 2, 1];
    const signs = [1, -1, -1, 1, -1];
    const P = new Float64Array(dA * dA);
    perm.forEach((p, c) => (P[p * dA + c] = signs[c]!));
    await same(transform(A, n, dA, P, dA), B);
    // A rotation of A's neurons changes the L1 norms behind the weights (the correlations stay).
    const rotated = await pwcca(transform(A, n, dA, orthogonal(dA, next), dA), B, { n, dA, dB });
    expect(Math.abs(rotated.score - base)).toBeGreaterThan(1e-4);
    expect(Math.abs(rotated.meanCorrelation - (await pwcca(A, B, { n, dA, dB })).meanCorrelation)).toBeLessThan(1e-9);
  });

  it('is a weighted mean: weights >= 0 summing to 1, the score between the smallest and largest correlation, <= 1', async () => {
    const next = lcg(106);
    for (let t = 0; t < 8; t++) {
      const n = 20 + Math.floor(next() * 60);
      const dA = 1 + Math.floor(next() * 8);
      const dB = 1 + Math.floor(next() * 8);
      const A = random(n, dA, next);
      const B = next() < 0.5 ? random(n, dB, next) : related(A, n, dA, dB, next, 2 * next());
      const r = await pwcca(A, B, { n, dA, dB });
      const min = Math.min(...r.correlations);
      const max = Math.max(...r.correlations);
      expect(r.score).toBeLessThanOrEqual(1);
      expect(r.score).toBeGreaterThanOrEqual(min - 1e-15);
      expect(r.score).toBeLessThanOrEqual(max + 1e-15);
      for (const w of r.weights) expect(w).toBeGreaterThanOrEqual(0);
      expect(Math.abs(r.weights.reduce((s, w) => s + w, 0) - 1)).toBeLessThan(1e-12);
      for (let i = 1; i < r.correlations.length; i++) expect(r.correlations[i]!).toBeLessThanOrEqual(r.correlations[i - 1]!);
    }
  });

  it('differs from the mean canonical correlation when one direction carries most of the projection', async () => {
    const next = lcg(107);
    const n = 400;
    // A: one loud neuron on a signal s that B shares, two quiet neurons of their own noise. B: s
    // plus noise and two unrelated neurons. rho_1 ~ 0.99, the others ~ 0, and h_1 carries
    // nearly all of A's projection.
    const s = Array.from({ length: n }, () => next() * 2 - 1);
    const A = new Float64Array(n * 3);
    const B = new Float64Array(n * 3);
    for (let r = 0; r < n; r++) {
      A[r * 3] = 50 * s[r]!;
      A[r * 3 + 1] = 0.1 * (next() * 2 - 1);
      A[r * 3 + 2] = 0.1 * (next() * 2 - 1);
      B[r * 3] = s[r]! + 0.1 * (next() * 2 - 1);
      B[r * 3 + 1] = next() * 2 - 1;
      B[r * 3 + 2] = next() * 2 - 1;
    }
    const r = await pwcca(A, B, { n, dA: 3, dB: 3 });
    const ref = reference(centred(A, n, 3), centred(B, n, 3));
    expect(Math.abs(r.score - ref.score)).toBeLessThan(1e-9);
    expect(r.correlations[0]).toBeGreaterThan(0.98);
    expect(r.weights[0]).toBeGreaterThan(0.95);
    expect(r.score).toBeGreaterThan(0.95);
    expect(r.meanCorrelation).toBeLessThan(0.5);
    // The other way round: weighting by B, whose three neurons all carry variance, moves the
    // score towards the mean.
    const back = await pwcca(B, A, { n, dA: 3, dB: 3 });
    expect(back.score).toBeLessThan(r.score - 0.2);
    expect(Math.abs(back.meanCorrelation - r.meanCorrelation)).toBeLessThan(1e-9);
  });

  it('rejects bad arguments with named SaekitErrors', async () => {
    const next = lcg(108);
    const A = random(10, 3, next);
    const B = random(10, 2, next);
    const opts = { n: 10, dA: 3, dB: 2 };
    expect(await code(pwcca(A, B, { ...opts, n: 3 }))).toBe('ERR_SAEKIT_SHAPE'); // n must exceed dA
    expect(await code(pwcca(A, B, { ...opts, dB: 3 }))).toBe('ERR_SAEKIT_SHAPE');
    expect(await code(pwcca([1, 2] as unknown as Float64Array, B, opts))).toBe('ERR_SAEKIT_ARG');
    expect(await code(pwcca(A, B, { ...opts, keep: 0 }))).toBe('ERR_SAEKIT_ARG');
    expect(await code(pwcca(A, B, { ...opts, keep: 4 }))).toBe('ERR_SAEKIT_ARG');
    expect(await code(pwcca(A, B, { ...opts, keep: 1.5 }))).toBe('ERR_SAEKIT_ARG');
    expect(await code(pwcca(A, B, { ...opts, compat: 'univ-feat-geom' } as never))).toBe('ERR_SAEKIT_ARG');
    expect(await code(pwcca(A, B, { ...opts, dA: 0 }))).toBe('ERR_SAEKIT_ARG');
    const bad = Float64Array.from(A);
    bad[4] = NaN;
    expect(await code(pwcca(bad, B, opts))).toBe('ERR_SAEKIT_NONFINITE');
    await expect(pwcca(A, B, { ...opts, keep: -1 })).rejects.toThrow(/Expected a share in \(0, 1\) or an integer between 1 and 3 for options\.keep but received -1/);
  });

  it('a constant side has no canonical directions: NaN, like svcca', async () => {
    const next = lcg(109);
    const A = new Float64Array(20 * 2).fill(3);
    const r = await pwcca(A, random(20, 2, next), { n: 20, dA: 2, dB: 2 });
    expect(r.keptA).toBe(0);
    expect(Number.isNaN(r.score)).toBe(true);
    expect(r.correlations.length).toBe(0);
  });

  it('pwccaPermutationTest equals permutationTest(pwcca) for the same seed, up to rounding', async () => {
    const next = lcg(110);
    const [n, dA, dB] = [45, 4, 5];
    const A = random(n, dA, next);
    const B = related(A, n, dA, dB, next, 1.5);
    const fast = await pwccaPermutationTest(A, B, { n, dA, dB, runs: 12, seed: 5 });
    const slow = await permutationTest(async (a, b) => (await pwcca(a, b, { n, dA, dB })).score, A, B, { n, dB, runs: 12, seed: 5 });
    expect(Math.abs(fast.score - slow.score)).toBeLessThan(1e-12);
    expect(fast.shuffled.length).toBe(12);
    for (let i = 0; i < 12; i++) expect(Math.abs(fast.shuffled[i]! - slow.shuffled[i]!)).toBeLessThan(1e-9);
    expect(fast.pValue).toBe(slow.pValue);
    expect(fast.pValue).toBeLessThan(0.2); // related sides beat their shuffles
    expect([fast.keptA, fast.keptB]).toEqual([dA, dB]);
  });
});
