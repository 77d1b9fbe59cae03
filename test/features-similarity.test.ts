import { describe, expect, it, vi } from 'vitest';

import { SaekitError } from '../lib/errors.js';
import { averageRanks, cka, permutationTest, pwcca, pwccaPermutationTest, rsa, rsaPermutationTest, svcca, svccaPermutationTest } from '../lib/features/similarity.js';
import { lcg } from './helpers/reference.js';
import { code, orthogonal, random, transform } from './helpers/similarity.js';
import { jacobiEigenvalues } from './helpers/spectrum-reference.js';
import { everyLookATurn } from './helpers/event-loop.js';

function naivePearson(x: number[], y: number[]): number {
  const m = x.length;
  const mx = x.reduce((a, b) => a + b, 0) / m;
  const my = y.reduce((a, b) => a + b, 0) / m;
  let sxy = 0;
  let sxx = 0;
  let syy = 0;
  for (let i = 0; i < m; i++) {
    sxy += (x[i]! - mx) * (y[i]! - my);
    sxx += (x[i]! - mx) ** 2;
    syy += (y[i]! - my) ** 2;
  }
  return sxy / Math.sqrt(sxx * syy);
}

/** Average ranks the slow way: 1 + #smaller + (#equal - 1) / 2. */
function naiveRanks(x: number[]): number[] {
  return x.map((v) => 1 + x.filter((w) => w < v).length + (x.filter((w) => w === v).length - 1) / 2);
}

function column(X: Float64Array, n: number, d: number, c: number): number[] {
  return Array.from({ length: n }, (_, r) => X[r * d + c]!);
}

describe('svcca', () => {
  it('is 1 for an orthogonally transformed, rescaled, shifted copy', async () => {
    const next = lcg(11);
    const n = 200;
    const d = 8;
    const A = random(n, d, next);
    const B = transform(A, n, d, orthogonal(d, next), d, 3.7, 5);
    const r = await svcca(A, B, { n, dA: d, dB: d });
    expect(r.mode).toBe('svcca');
    expect(r.keptA).toBe(r.keptB);
    expect(r.keptA).toBeGreaterThan(1);
    expect(Math.abs(r.score - 1)).toBeLessThan(1e-9);
    const all = await svcca(Float32Array.from(A), B, { n, dA: d, dB: d, keep: d });
    expect(all.keptA).toBe(d);
    expect(all.correlations.length).toBe(d);
    // The float32 copy of A is not exactly A, but it is the same subspace up to rounding.
    for (const c of all.correlations) expect(Math.abs(c - 1)).toBeLessThan(1e-6);
  });

  it('embeds a lower-dimensional space: a rotated copy padded into more dims is still 1', async () => {
    const next = lcg(12);
    const n = 120;
    const dA = 4;
    const dB = 6;
    const A = random(n, dA, next);
    // B = A Q W with Q orthogonal 4x4 and W a 4x6 map with orthonormal rows (isometric embedding).
    const Q = orthogonal(dA, next);
    const W6 = orthogonal(dB, next);
    const W = W6.subarray(0, dA * dB);
    const B = transform(transform(A, n, dA, Q, dA), n, dA, W, dB, 0.25);
    const r = await svcca(A, B, { n, dA, dB, keep: 0.999999 });
    expect(r.keptA).toBe(dA);
    expect(r.keptB).toBe(dA); // the two extra directions carry no variance
    expect(Math.abs(r.score - 1)).toBeLessThan(1e-9);
  });

  it('d = 1: the single canonical correlation is |Pearson r|', async () => {
    const next = lcg(13);
    const n = 30;
    const a = random(n, 1, next);
    const b = Float64Array.from(a, (v) => -0.7 * v + (next() - 0.5));
    const r = await svcca(a, b, { n, dA: 1, dB: 1 });
    const expected = Math.abs(naivePearson([...a], [...b]));
    expect(r.correlations.length).toBe(1);
    expect(r.correlations[0]).toBeCloseTo(expected, 12);
    expect(r.score).toBeCloseTo(expected, 12);
  });

  it('d = 2, all directions kept: matches the eigenvalues of Sxx^-1 Sxy Syy^-1 Syx (closed-form 2 x 2)', async () => {
    const next = lcg(14);
    const n = 40;
    const A = random(n, 2, next);
    const B = Float64Array.from({ length: n * 2 }, (_, i) => (i % 2 ? 0.3 * A[i - 1]! : A[i + 1]! - 0.5 * A[i]!) + 0.8 * (next() - 0.5));
    const cov = (X: number[][], Y: number[][]) => {
      const out = [
        [0, 0],
        [0, 0],
      ];
      for (let i = 0; i < 2; i++) for (let j = 0; j < 2; j++) {
        const x = X[i]!;
        const y = Y[j]!;
        const mx = x.reduce((a, b) => a + b, 0) / n;
        const my = y.reduce((a, b) => a + b, 0) / n;
        out[i]![j] = x.reduce((s, v, k) => s + (v - mx) * (y[k]! - my), 0) / (n - 1);
      }
      return out;
    };
    const mul = (P: number[][], R: number[][]) => P.map((row) => [0, 1].map((j) => row[0]! * R[0]![j]! + row[1]! * R[1]![j]!));
    const inv = (P: number[][]) => {
      const det = P[0]![0]! * P[1]![1]! - P[0]![1]! * P[1]![0]!;
      return [
        [P[1]![1]! / det, -P[0]![1]! / det],
        [-P[1]![0]! / det, P[0]![0]! / det],
      ];
    };
    const X = [column(A, n, 2, 0), column(A, n, 2, 1)];
    const Y = [column(B, n, 2, 0), column(B, n, 2, 1)];
    const Sxy = cov(X, Y);
    const Syx = cov(Y, X);
    const M = mul(mul(inv(cov(X, X)), Sxy), mul(inv(cov(Y, Y)), Syx));
    const tr = M[0]![0]! + M[1]![1]!;
    const det = M[0]![0]! * M[1]![1]! - M[0]![1]! * M[1]![0]!;
    const disc = Math.sqrt(tr * tr - 4 * det);
    const expected = [Math.sqrt((tr + disc) / 2), Math.sqrt((tr - disc) / 2)];
    const r = await svcca(A, B, { n, dA: 2, dB: 2, keep: 2 });
    expect(r.correlations.length).toBe(2);
    expect(r.correlations[0]).toBeCloseTo(expected[0]!, 10);
    expect(r.correlations[1]).toBeCloseTo(expected[1]!, 10);
    expect(r.score).toBeCloseTo((expected[0]! + expected[1]!) / 2, 10);
  });

  it('of unrelated random data is near its row-shuffled baseline', async () => {
    const next = lcg(15);
    const n = 150;
    const A = random(n, 5, next);
    const B = random(n, 6, next);
    const score = async (a: Float64Array, b: Float64Array) => (await svcca(a, b, { n, dA: 5, dB: 6 })).score;
    const t = await permutationTest(score, A, B, { n, dB: 6, runs: 40, seed: 3 });
    const mean = t.shuffled.reduce((s, v) => s + v, 0) / t.shuffled.length;
    const sd = Math.sqrt(t.shuffled.reduce((s, v) => s + (v - mean) ** 2, 0) / (t.shuffled.length - 1));
    expect(t.pValue).toBeGreaterThan(0.05);
    expect(Math.abs(t.score - mean)).toBeLessThan(3 * sd);
    // A related pair, for contrast, is far above its baseline.
    const related = Float64Array.from({ length: n * 6 }, (_, i) => A[Math.floor(i / 6) * 5 + (i % 5)]! + 0.3 * (next() - 0.5));
    const u = await permutationTest(score, A, related, { n, dB: 6, runs: 40, seed: 3 });
    expect(u.pValue).toBeCloseTo(1 / 41, 15);
    // An undefined score is not significant (it came out as the smallest p-value, 1 / 41).
    const undef = await permutationTest(() => Number.NaN, A, B, { n, dB: 6, runs: 40, seed: 3 });
    expect(undef.pValue).toBeNaN();
    expect(undef.shuffled.length).toBe(0);
  });

  it("compat 'univ-feat-geom' keeps one direction for unit-norm rows (sum s^2 > 1/keep), equal to keep = 1", async () => {
    const next = lcg(16);
    const n = 300;
    const unit = (X: Float64Array, d: number) => {
      for (let r = 0; r < n; r++) {
        const norm = Math.hypot(...X.subarray(r * d, r * d + d));
        for (let c = 0; c < d; c++) X[r * d + c]! /= norm;
      }
      return X;
    };
    const A = unit(random(n, 6, next), 6);
    const B = unit(transform(A, n, 6, random(6, 7, next), 7), 7);
    const compat = await svcca(A, B, { n, dA: 6, dB: 7, compat: 'univ-feat-geom' });
    expect(compat.mode).toBe('univ-feat-geom');
    expect(compat.keptA).toBe(1);
    expect(compat.keptB).toBe(1);
    const one = await svcca(A, B, { n, dA: 6, dB: 7, keep: 1 });
    expect(compat.score).toBeCloseTo(one.score, 14);
    const correct = await svcca(A, B, { n, dA: 6, dB: 7 });
    expect(correct.keptA).toBeGreaterThan(1);
    expect(correct.score).toBeGreaterThan(0.9); // B is a linear image of A, up to the row renormalisation
  });

  it('validates its inputs', async () => {
    const A = new Float64Array(20);
    expect(await code(svcca(A, A, { n: 10, dA: 2, dB: 3 }))).toBe('ERR_SAEKIT_SHAPE');
    expect(await code(svcca(A, A, { n: 4, dA: 5, dB: 4 }))).toBe('ERR_SAEKIT_SHAPE'); // n must exceed d
    expect(await code(svcca(A, A, { n: 10, dA: 2, dB: 2, keep: 1.5 }))).toBe('ERR_SAEKIT_ARG');
    expect(await code(svcca(A, A, { n: 10, dA: 2, dB: 2, keep: 3 }))).toBe('ERR_SAEKIT_ARG');
    expect(await code(svcca(A, A, { n: 10, dA: 2, dB: 2, compat: 'x' as 'univ-feat-geom' }))).toBe('ERR_SAEKIT_ARG');
    expect(await code(svcca([] as unknown as Float64Array, A, { n: 10, dA: 2, dB: 2 }))).toBe('ERR_SAEKIT_ARG');
    const bad = new Float64Array(20);
    bad[3] = NaN;
    expect(await code(svcca(bad, A, { n: 10, dA: 2, dB: 2 }))).toBe('ERR_SAEKIT_NONFINITE');
    expect(await code(svcca(A, A, { n: 10.5, dA: 2, dB: 2 }))).toBe('ERR_SAEKIT_ARG');
  });

  it('keep as a share stops at the first direction whose cumulative variance reaches it exactly (orthogonal columns, fresh shares)', async () => {
    const seed = (Date.now() ^ 0x6a09e667) >>> 0;
    const next = lcg(seed);
    // Walsh functions on 8 rows: 7 centred, mutually orthogonal +-1 columns (squared norm 8).
    const n = 8;
    const walsh = (c: number, r: number) => (((c + 1) & r).toString(2).split('1').length % 2 === 0 ? -1 : 1);
    for (let trial = 0; trial < 20; trial++) {
      const d = 2 + Math.floor(next() * 6);
      // Squared singular values 8 s^2 with s^2 small integers (many equal), columns in random order.
      const s2 = Array.from({ length: d }, () => 1 + Math.floor(next() * 3));
      const A = new Float64Array(n * d);
      for (let c = 0; c < d; c++) for (let r = 0; r < n; r++) A[r * d + c] = Math.sqrt(s2[c]!) * walsh(c, r);
      const sorted = [...s2].sort((x, y) => y - x);
      const total = sorted.reduce((x, y) => x + y, 0);
      // An exact share: the first k0 directions' variance over the total.
      const k0 = 1 + Math.floor(next() * (d - 1));
      const keep = sorted.slice(0, k0).reduce((x, y) => x + y, 0) / total;
      const r = await svcca(A, A, { n, dA: d, dB: d, keep });
      expect(r.keptA, `seed ${seed}, trial ${trial}: s^2 ${s2}, keep ${keep}`).toBe(k0);
    }
  });
});

describe('rsa', () => {
  /** Naive RSA: full RDMs, upper triangles, then Spearman (naive average ranks) or Pearson. */
  function naiveRsa(A: Float64Array, B: Float64Array, n: number, dA: number, dB: number, inner: string, outer: string): number {
    const rdm = (X: Float64Array, d: number) => {
      const rows = Array.from({ length: n }, (_, r) => [...X.subarray(r * d, r * d + d)]);
      const tri: number[] = [];
      for (let i = 0; i < n; i++) {
        for (let j = i + 1; j < n; j++) {
          const x = rows[i]!;
          const y = rows[j]!;
          if (inner === 'euclidean') tri.push(Math.sqrt(x.reduce((s, v, k) => s + (v - y[k]!) ** 2, 0)));
          else if (inner === 'cosine') tri.push(1 - x.reduce((s, v, k) => s + v * y[k]!, 0) / (Math.hypot(...x) * Math.hypot(...y)));
          else tri.push(1 - naivePearson(x, y));
        }
      }
      return tri;
    };
    const ta = rdm(A, dA);
    const tb = rdm(B, dB);
    return outer === 'spearman' ? naivePearson(naiveRanks(ta), naiveRanks(tb)) : naivePearson(ta, tb);
  }

  it('equals a direct Spearman computation, with many ties (integer points, Euclidean)', async () => {
    const next = lcg(21);
    const n = 25;
    const A = Float64Array.from({ length: n * 2 }, () => Math.floor(next() * 4));
    const B = Float64Array.from({ length: n * 3 }, (_, i) => (i % 3 === 2 ? Math.floor(next() * 2) : A[Math.floor(i / 3) * 2 + (i % 3)]! + Math.floor(next() * 2)));
    const expected = naiveRsa(A, B, n, 2, 3, 'euclidean', 'spearman');
    const got = (await rsa(A, B, { n, dA: 2, dB: 3, inner: 'euclidean' })).score;
    expect(got).toBeCloseTo(expected, 12);
    expect(got).toBeGreaterThan(0.1);
  });

  it('dissimilarities equal in exact arithmetic tie (2-wide rows under correlation, parallel and orthogonal rows under cosine), fresh data', async () => {
    const seed = process.env.SEED ? Number(process.env.SEED) : (Date.now() ^ 0x1b873593) >>> 0;
    const next = lcg(seed);
    const n = 12 + Math.floor(next() * 30);
    const dB = 3 + Math.floor(next() * 4);
    const B = random(n, dB, next); // generic (3 wide or more): no ties on this side
    const tb = (inner: 'correlation' | 'cosine'): number[] => {
      const out: number[] = [];
      const row = (r: number) => {
        const v = [...B.subarray(r * dB, (r + 1) * dB)];
        const mean = inner === 'correlation' ? v.reduce((a, b) => a + b, 0) / dB : 0;
        return v.map((x) => x - mean);
      };
      for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) {
        const [x, y] = [row(i), row(j)];
        out.push(1 - x.reduce((a, v, k) => a + v * y[k]!, 0) / (Math.hypot(...x) * Math.hypot(...y)));
      }
      return out;
    };
    // 2-wide rows: after centring each is a multiple of (1, -1), so 1 - r is exactly 0 or 2.
    const A2 = Float64Array.from({ length: n * 2 }, () => (next() - 0.5) * 10);
    A2.set([3.1, -2.3, -1.7, 4.9]); // both signs present: the level triangle is not constant
    const sign = (r: number) => Math.sign(A2[2 * r]! - A2[2 * r + 1]!);
    const levels2: number[] = [];
    for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) levels2.push(sign(i) === sign(j) ? 0 : 2);
    const want2 = naivePearson(naiveRanks(levels2), naiveRanks(tb('correlation')));
    expect(Math.abs((await rsa(A2, B, { n, dA: 2, dB })).score - want2), `seed ${seed}`).toBeLessThan(1e-12);
    // Rows c * (+-q_g) for random orthonormal q_g and scales c: 1 - cosine is exactly 0, 1 or 2.
    const dA = 3 + Math.floor(next() * 4);
    const Q = orthogonal(dA, next);
    const groups = Array.from({ length: n }, () => [Math.floor(next() * 3), next() < 0.5 ? -1 : 1] as const);
    const A = new Float64Array(n * dA);
    groups.forEach(([g, s], r) => {
      const c = 0.3 + 3 * next();
      for (let k = 0; k < dA; k++) A[r * dA + k] = s * c * Q[g * dA + k]!;
    });
    const levels: number[] = [];
    for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) {
      const [[gi, si], [gj, sj]] = [groups[i]!, groups[j]!];
      levels.push(gi !== gj ? 1 : si === sj ? 0 : 2);
    }
    const want = naivePearson(naiveRanks(levels), naiveRanks(tb('cosine')));
    expect(Math.abs((await rsa(A, B, { n, dA, dB, inner: 'cosine' })).score - want), `seed ${seed}`).toBeLessThan(1e-12);
  });

  it('cosine and correlation are scale-free even for rows near 1e200 (their norms overflowed to Inf / Inf = NaN)', async () => {
    const next = lcg(23);
    const n = 15;
    const A = random(n, 5, next);
    const B = random(n, 4, next);
    for (const inner of ['correlation', 'cosine'] as const) {
      const plain = (await rsa(A, B, { n, dA: 5, dB: 4, inner })).score;
      expect((await rsa(A.map((v) => v * 1e200), B, { n, dA: 5, dB: 4, inner })).score, inner).toBeCloseTo(plain, 12);
      expect((await rsa(A.map((v) => v * 1e-200), B, { n, dA: 5, dB: 4, inner })).score, inner).toBeCloseTo(plain, 12);
    }
  });

  it('default (correlation inner, Spearman outer) and the other variants match the naive versions', async () => {
    const next = lcg(22);
    const n = 20;
    const A = random(n, 5, next);
    const B = Float64Array.from({ length: n * 4 }, (_, i) => A[Math.floor(i / 4) * 5 + (i % 4)]! + 0.7 * (next() - 0.5));
    expect((await rsa(A, B, { n, dA: 5, dB: 4 })).score).toBeCloseTo(naiveRsa(A, B, n, 5, 4, 'correlation', 'spearman'), 12);
    for (const inner of ['correlation', 'cosine', 'euclidean'] as const) {
      for (const outer of ['spearman', 'pearson'] as const) {
        expect((await rsa(A, Float32Array.from(B), { n, dA: 5, dB: 4, inner, outer })).score).toBeCloseTo(
          naiveRsa(A, Float64Array.from(Float32Array.from(B)), n, 5, 4, inner, outer),
          12,
        );
      }
    }
  });

  it('a zero row (cosine) or a constant row (correlation) is at dissimilarity 1 from every row (fresh data, naive reference)', async () => {
    const seed = (Date.now() ^ 0x3c6ef372) >>> 0;
    const next = lcg(seed);
    const n = 9 + Math.floor(next() * 12);
    const [dA, dB] = [3 + Math.floor(next() * 5), 3 + Math.floor(next() * 5)]; // 2-wide rows: correlations +-1 up to rounding (ties for ranks)
    const A = random(n, dA, next);
    const B = random(n, dB, next);
    // A few rows of A without direction: zero, or (for 'correlation') constant.
    const flat = new Set<number>();
    for (let c = 1 + Math.floor(next() * 3); c > 0; c--) flat.add(Math.floor(next() * n));
    for (const inner of ['cosine', 'correlation'] as const) {
      const X = A.slice();
      for (const r of flat) X.fill(inner === 'cosine' ? 0 : 1.5 + next(), r * dA, (r + 1) * dA);
      const tri = (M: Float64Array, d: number, flatRows: Set<number>): number[] => {
        const out: number[] = [];
        const row = (r: number) => {
          const v = [...M.subarray(r * d, (r + 1) * d)];
          const mean = inner === 'correlation' ? v.reduce((a, b) => a + b, 0) / d : 0;
          return v.map((x) => x - mean);
        };
        for (let i = 0; i < n; i++) {
          for (let j = i + 1; j < n; j++) {
            const [x, y] = [row(i), row(j)];
            const nx = Math.hypot(...x);
            const ny = Math.hypot(...y);
            // The convention: a row of zero norm (after centring) has similarity 0 to every row.
            // (A constant row's centred values may be rounding residues: it is flat by construction.)
            out.push(nx === 0 || ny === 0 || flatRows.has(i) || flatRows.has(j) ? 1 : 1 - x.reduce((a, v, k) => a + v * y[k]!, 0) / (nx * ny));
          }
        }
        return out;
      };
      const [ta, tb] = [tri(X, dA, flat), tri(B, dB, new Set())];
      for (const outer of ['pearson', 'spearman'] as const) {
        const want = outer === 'pearson' ? naivePearson(ta, tb) : naivePearson(naiveRanks(ta), naiveRanks(tb));
        const got = (await rsa(X, B, { n, dA, dB, inner, outer })).score;
        expect(Math.abs(got - want), `seed ${seed}: ${inner} / ${outer}, flat rows ${[...flat]}`).toBeLessThanOrEqual(1e-12);
      }
    }
  });

  it('of a matrix with itself is 1', async () => {
    const next = lcg(23);
    const A = random(30, 6, next);
    expect((await rsa(A, A, { n: 30, dA: 6, dB: 6 })).score).toBeCloseTo(1, 14);
    expect((await rsa(A, A, { n: 30, dA: 6, dB: 6, inner: 'euclidean', outer: 'pearson' })).score).toBeCloseTo(1, 14);
  });

  it('validates its inputs', async () => {
    const A = new Float64Array(12);
    expect(await code(rsa(A, A, { n: 2, dA: 6, dB: 6 }))).toBe('ERR_SAEKIT_ARG'); // needs n >= 3
    expect(await code(rsa(A, A, { n: 4, dA: 3, dB: 4 }))).toBe('ERR_SAEKIT_SHAPE');
    expect(await code(rsa(A, A, { n: 4, dA: 3, dB: 3, inner: 'l1' as 'cosine' }))).toBe('ERR_SAEKIT_ARG');
    expect(await code(rsa(A, A, { n: 4, dA: 3, dB: 3, outer: 'kendall' as 'pearson' }))).toBe('ERR_SAEKIT_ARG');
  });
});

describe('cka', () => {
  /** tr(K H L H) / sqrt(tr(K H K H) tr(L H L H)) with K = A A^T, L = B B^T, H = I - 11^T/n. */
  function naiveCka(A: Float64Array, B: Float64Array, n: number, dA: number, dB: number): number {
    const gram = (X: Float64Array, d: number) =>
      Array.from({ length: n }, (_, i) => Array.from({ length: n }, (_, j) => {
        let s = 0;
        for (let k = 0; k < d; k++) s += X[i * d + k]! * X[j * d + k]!;
        return s;
      }));
    const centre = (K: number[][]) => {
      const rowMean = K.map((row) => row.reduce((a, b) => a + b, 0) / n);
      const all = rowMean.reduce((a, b) => a + b, 0) / n;
      return K.map((row, i) => row.map((v, j) => v - rowMean[i]! - rowMean[j]! + all));
    };
    const K = centre(gram(A, dA));
    const L = centre(gram(B, dB));
    const inner = (P: number[][], Q: number[][]) => P.reduce((s, row, i) => s + row.reduce((t, v, j) => t + v * Q[i]![j]!, 0), 0);
    return inner(K, L) / Math.sqrt(inner(K, K) * inner(L, L));
  }

  it('is 1 for a rotated, rescaled, shifted copy', async () => {
    const next = lcg(31);
    for (const [n, d] of [
      [60, 5],
      [8, 12],
    ] as const) {
      const A = random(n, d, next);
      const B = transform(A, n, d, orthogonal(d, next), d, 0.01, -4);
      expect(Math.abs((await cka(A, B, { n, dA: d, dB: d })).score - 1)).toBeLessThan(1e-12);
    }
  });

  it('equals the naive centred-Gram formula (both internal paths)', async () => {
    const next = lcg(32);
    for (const [n, dA, dB] of [
      [50, 4, 6],
      [7, 10, 9],
    ] as const) {
      const A = random(n, dA, next);
      const B = Float64Array.from({ length: n * dB }, (_, i) => (i % dB < dA ? A[Math.floor(i / dB) * dA + (i % dB)]! : 0) + (next() - 0.5) + 2);
      expect((await cka(A, Float32Array.from(B), { n, dA, dB })).score).toBeCloseTo(naiveCka(A, Float64Array.from(Float32Array.from(B)), n, dA, dB), 12);
    }
  });

  it('is lower for independent data than for correlated data', async () => {
    const next = lcg(33);
    const n = 200;
    const A = random(n, 6, next);
    const indep = random(n, 6, next);
    const corr = Float64Array.from(A, (v) => v + 0.5 * (next() - 0.5));
    const s0 = (await cka(A, indep, { n, dA: 6, dB: 6 })).score;
    const s1 = (await cka(A, corr, { n, dA: 6, dB: 6 })).score;
    expect(s0).toBeGreaterThanOrEqual(0);
    expect(s0).toBeLessThan(0.2);
    expect(s1).toBeGreaterThan(0.8);
    expect(s0).toBeLessThan(s1);
  });
});

describe('permutationTest', () => {
  const next = lcg(41);
  const n = 12;
  const A = random(n, 2, next);
  const B = random(n, 3, next);
  // Sum over rows of A[r,0] * B[r,0]: changes with the pairing of rows.
  const score = (a: Float64Array, b: Float64Array) => {
    let s = 0;
    for (let r = 0; r < n; r++) s += a[r * 2]! * b[r * 3]!;
    return s;
  };

  it('is deterministic for a seed, and the seed matters', async () => {
    const a = await permutationTest(score, A, B, { n, dB: 3, runs: 30, seed: 7 });
    const b = await permutationTest(score, A, B, { n, dB: 3, runs: 30, seed: 7 });
    const c = await permutationTest(score, A, B, { n, dB: 3, runs: 30, seed: 8 });
    expect([...a.shuffled]).toEqual([...b.shuffled]);
    expect(a.pValue).toBe(b.pValue);
    expect([...a.shuffled]).not.toEqual([...c.shuffled]);
    expect(a.score).toBe(score(A, B));
    expect((await permutationTest(score, A, B, { n, dB: 3 })).shuffled.length).toBe(100);
  });

  it('shuffles whole rows of B and leaves A and B untouched', async () => {
    const Bcopy = Float64Array.from(B);
    const seen: Float64Array[] = [];
    await permutationTest(
      (a, b) => {
        expect(a).toBe(A);
        seen.push(Float64Array.from(b));
        return 0;
      },
      A,
      B,
      { n, dB: 3, runs: 5, seed: 1 },
    );
    expect([...B]).toEqual([...Bcopy]);
    const key = (X: Float64Array) => Array.from({ length: n }, (_, r) => X.subarray(r * 3, r * 3 + 3).join(',')).sort().join(';');
    for (const s of seen) expect(key(s)).toBe(key(B));
    expect(seen.slice(1).some((s) => s.join() !== B.join())).toBe(true);
  });

  it('pValue = (1 + #shuffled >= score) / (1 + runs)', async () => {
    const t = await permutationTest(score, A, B, { n, dB: 3, runs: 50, seed: 2 });
    const ge = t.shuffled.filter((v) => v >= t.score).length;
    expect(t.pValue).toBe((1 + ge) / 51);
    expect((await permutationTest(() => 1, A, B, { n, dB: 3, runs: 9 })).pValue).toBe(1); // ties count
    let calls = 0;
    expect((await permutationTest(() => (calls++ === 0 ? 1 : 0), A, B, { n, dB: 3, runs: 9 })).pValue).toBe(0.1);
  });

  it('validates its inputs', async () => {
    expect(await code(permutationTest(score, A, B, { n, dB: 2 }))).toBe('ERR_SAEKIT_SHAPE');
    expect(await code(permutationTest(score, A, Float32Array.from(B) as unknown as Float64Array, { n, dB: 3 }))).toBe('ERR_SAEKIT_DTYPE');
    expect(await code(permutationTest(score, A, B, { n, dB: 3, runs: 0 }))).toBe('ERR_SAEKIT_ARG');
    expect(await code(permutationTest(score, A, B, { n, dB: 3, seed: -1 }))).toBe('ERR_SAEKIT_ARG');
    expect(await code(permutationTest(() => 'x' as unknown as number, A, B, { n, dB: 3 }))).toBe('ERR_SAEKIT_ARG');
  });
});

describe('fast ranks and permutation tests that reuse each side (saekit compare)', () => {
  it('averageRanks equals naive average ranks: ties, negatives, -0 and 0, subnormals, odd sizes', async () => {
    const next = lcg(Date.now() >>> 0);
    const cases: number[][] = [[], [3], [-0, 0, 0, -0], [5e-324, -5e-324, 0, 1e300, -1e300, 2, 2]];
    for (const m of [7, 101, 1003]) {
      cases.push(Array.from({ length: m }, () => Math.round((next() - 0.5) * 20) / 4)); // many ties
      cases.push(Array.from({ length: m }, () => (next() - 0.5) * 10 ** Math.floor(next() * 12 - 6))); // wide range
    }
    for (const x of cases) expect(Array.from(await averageRanks(Float64Array.from(x)))).toEqual(naiveRanks(x));
  });

  it('averageRanks past its blocks of 4096: tie groups across blocks, one of most entries (against a sort)', async () => {
    const next = lcg(Date.now() >>> 0);
    for (const m of [4095, 4096, 4097, 3 * 4096 + 1, 20011]) {
      for (const share of [0, 0.3, 0.97]) {
        const x = Float64Array.from({ length: m }, () => (next() < share ? 0.25 : Math.floor(next() * 50) / 7 - 3));
        const order = Array.from({ length: m }, (_, i) => i).sort((p, q) => x[p]! - x[q]!);
        const want = new Array<number>(m);
        for (let i = 0; i < m; ) {
          let j = i + 1;
          while (j < m && x[order[j]!] === x[order[i]!]) j++;
          for (let k = i; k < j; k++) want[order[k]!] = (i + 1 + j) / 2;
          i = j;
        }
        expect(Array.from(await averageRanks(x)), `m = ${m}, ties ${share}`).toEqual(want);
      }
    }
  });

  it('rsaPermutationTest is bit-identical to permutationTest(rsa) for every inner and outer, and svccaPermutationTest equals permutationTest(svcca) to rounding', async () => {
    const next = lcg(Date.now() >>> 0);
    for (const [n, dA, dB] of [[37, 3, 5], [20, 4, 1], [3, 2, 2]] as const) {
      const A = random(n, dA, next);
      const B = Float64Array.from({ length: n * dB }, (_, q) => A[Math.floor(q / dB) * dA + (q % dB) % dA]! + 0.7 * (next() - 0.5));
      // Ties in one variant: rounded copies.
      const Bt = B.map((v) => Math.round(v * 2) / 2);
      for (const inner of ['correlation', 'cosine', 'euclidean'] as const) {
        for (const outer of ['spearman', 'pearson'] as const) {
          for (const b of [B, Bt]) {
            const opts = { n, dA, dB, inner, outer };
            const want = await permutationTest(async (x, y) => (await rsa(x, y, opts)).score, A, b, { n, dB, runs: 9, seed: 5 });
            const got = await rsaPermutationTest(A, b, { ...opts, runs: 9, seed: 5 });
            expect(got.score).toBe(want.score);
            expect(Array.from(got.shuffled)).toEqual(Array.from(want.shuffled));
            expect(got.pValue).toBe(want.pValue);
          }
        }
      }
      if (n > Math.max(dA, dB)) {
        for (const keep of [0.99, 1]) {
          const want = await permutationTest(async (x, y) => (await svcca(x, y, { n, dA, dB, keep })).score, A, B, { n, dB, runs: 6, seed: 3 });
          const got = await svccaPermutationTest(A, B, { n, dA, dB, keep, runs: 6, seed: 3 });
          expect(got.score).toBe(want.score);
          got.shuffled.forEach((v, i) => expect(Math.abs(v - want.shuffled[i]!)).toBeLessThan(1e-9));
        }
      }
    }
  });

  it('rsa with an n whose triangles cannot be allocated is ERR_SAEKIT_MEMORY naming n', async () => {
    const n = 100000;
    const A = new Float64Array(n * 2).map((_, i) => i % 7);
    let err: unknown;
    try {
      await rsa(A, A, { n, dA: 2, dB: 2 });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SaekitError);
    expect(err).toMatchObject({ code: 'ERR_SAEKIT_MEMORY', message: expect.stringMatching(/options\.n .* received n = 100000/) });
  });
});

describe('degenerate inputs: constant columns and rows, extreme magnitudes', () => {
  // A mean such as 0.1 x 7 / 7 is not exact in float64; centring left a residue of ~1e-17 along
  // (1, ..., 1) that CKA and SVCCA then saw as a perfectly shared direction.
  const constants = [0.1, 0.3, 1 / 3, 3, -2.7e-5];

  it('constant sides: CKA and SVCCA are NaN (no variance, nothing kept), whatever the constant', async () => {
    const next = lcg(Date.now() & 0xffff);
    for (const [n, dA, dB] of [[7, 3, 2], [11, 1, 4], [2, 1, 1]] as const) {
      for (const c of constants) {
        const A = new Float64Array(n * dA).fill(c);
        const B = new Float32Array(n * dB).fill(c * 2);
        const R = random(n, dB, next);
        expect((await cka(A, B, { n, dA, dB })).score, `cka n ${n} c ${c}`).toBeNaN();
        expect((await cka(A, R, { n, dA, dB })).score, `cka vs random, c ${c}`).toBeNaN();
        if (n > dA && n > dB) {
          for (const other of [B, R]) {
            const s = await svcca(A, other, { n, dA, dB });
            expect([s.score, s.keptA], `svcca n ${n} c ${c}`).toEqual([NaN, 0]);
          }
        }
        const t = await permutationTest(async (a, b) => (await cka(a, b, { n, dA, dB })).score, A, Float64Array.from(B), { n, dB, runs: 3 });
        expect([t.score, t.pValue]).toEqual([NaN, NaN]);
      }
    }
    // One constant column among varying ones: CKA equals CKA without it (zero contribution).
    const n = 9;
    const A = random(n, 3, next);
    const B = random(n, 2, next);
    const A4 = new Float64Array(n * 4);
    for (let r = 0; r < n; r++) A4.set([A[r * 3]!, 0.1, A[r * 3 + 1]!, A[r * 3 + 2]!], r * 4);
    expect((await cka(A4, B, { n, dA: 4, dB: 2 })).score).toBeCloseTo((await cka(A, B, { n, dA: 3, dB: 2 })).score, 12);
  });

  it('RSA: a constant row has dissimilarity 1 to every row whatever its constant; all rows constant gives NaN', async () => {
    const next = lcg((Date.now() >>> 8) & 0xffff);
    const [n, dA, dB] = [9, 3, 4];
    const A = random(n, dA, next);
    const B = random(n, dB, next);
    const scores: number[] = [];
    for (const [c2, c4] of [[0.5, 0.25], [0.1, 0.3], [1 / 3, -7.1]]) {
      const A2 = Float64Array.from(A);
      A2.fill(c2, 2 * dA, 3 * dA);
      A2.fill(c4, 4 * dA, 5 * dA);
      scores.push((await rsa(A2, B, { n, dA, dB })).score);
    }
    expect(scores[1]).toBe(scores[0]);
    expect(scores[2]).toBe(scores[0]);
    const vals = [0.1, 0.3, 0.7, 1.1, 0.2, 0.6, 0.9, 1 / 3, 0.15];
    const allA = Float64Array.from({ length: n * dA }, (_, i) => vals[Math.floor(i / dA)]!);
    const allB = Float64Array.from({ length: n * dA }, (_, i) => vals[(Math.floor(i / dA) + 3) % n]!);
    expect((await rsa(allA, allB, { n, dA, dB: dA })).score).toBeNaN();
  });

  it('a constant column of 1 beside columns varying at 1e-80 to 1e-200: CKA, SVCCA and PWCCA are those of the varying columns alone (their centred squares vanished: NaN or lost digits)', async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    // n above the widths (CKA through the features) and n below them (through the Gram matrices).
    for (const [n, w, dB] of [[23 + 2 * Math.floor(next() * 10), 2 + Math.floor(next() * 3), 3], [5, 7, 6]] as const) {
      const X = random(n, w, next);
      const B = random(n, dB, next);
      const want = {
        cka: (await cka(X, B, { n, dA: w, dB })).score,
        svcca: n > w + 1 && n > dB ? (await svcca(X, B, { n, dA: w, dB })).score : NaN,
        pwcca: n > w + 1 && n > dB ? (await pwcca(X, B, { n, dA: w, dB })).score : NaN,
      };
      for (const e of [1e-80, 1e-100, 1e-170, 1e-200]) {
        // Column 0 is 1 everywhere (raw max 1: no rescaling of the raw side), the others e * X.
        const A = new Float64Array(n * (w + 1));
        for (let r = 0; r < n; r++) {
          A[r * (w + 1)] = 1;
          for (let c = 0; c < w; c++) A[r * (w + 1) + 1 + c] = e * X[r * w + c]!;
        }
        const at = `seed ${seed}, n ${n}, scale ${e}`;
        expect(Math.abs((await cka(A, B, { n, dA: w + 1, dB })).score - want.cka), `cka ${at}`).toBeLessThan(1e-12);
        expect(Math.abs((await cka(B, A, { n, dA: dB, dB: w + 1 })).score - want.cka), `cka swapped ${at}`).toBeLessThan(1e-12);
        if (!Number.isNaN(want.svcca)) {
          expect(Math.abs((await svcca(A, B, { n, dA: w + 1, dB })).score - want.svcca), `svcca ${at}`).toBeLessThan(1e-12);
          expect(Math.abs((await pwcca(A, B, { n, dA: w + 1, dB })).score - want.pwcca), `pwcca ${at}`).toBeLessThan(1e-12);
        }
      }
    }
  });

  it('Euclidean RSA of rows differing by 1e-80 to 1e-200 beside a shared column of 1 is that of the differences alone (their squares vanished: NaN or lost digits)', async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const n = 9 + 2 * Math.floor(next() * 6);
    const w = 2 + Math.floor(next() * 3);
    const X = random(n, w, next);
    const B = random(n, 3, next);
    for (const outer of ['pearson', 'spearman'] as const) {
      const want = (await rsa(X, B, { n, dA: w, dB: 3, inner: 'euclidean', outer })).score;
      for (const e of [1e-80, 1e-160, 1e-170, 1e-200]) {
        const A = new Float64Array(n * (w + 1));
        for (let r = 0; r < n; r++) {
          A[r * (w + 1)] = 1;
          for (let c = 0; c < w; c++) A[r * (w + 1) + 1 + c] = e * X[r * w + c]!;
        }
        const got = (await rsa(A, B, { n, dA: w + 1, dB: 3, inner: 'euclidean', outer })).score;
        expect(Math.abs(got - want), `seed ${seed}, ${outer}, scale ${e}`).toBeLessThan(1e-12);
      }
    }
  });

  it('SVCCA, CKA and Euclidean RSA are unchanged when one side is scaled by 1e160 or 1e-170 (squares overflowed or vanished: NaN)', async () => {
    const next = lcg((Date.now() >>> 4) & 0xffff);
    const [n, dA, dB] = [13, 3, 2];
    const A = random(n, dA, next);
    const B = random(n, dB, next);
    const base = {
      cka: (await cka(A, B, { n, dA, dB })).score,
      svcca: (await svcca(A, B, { n, dA, dB })).score,
      rsa: (await rsa(A, B, { n, dA, dB, inner: 'euclidean' })).score,
      rsaPearson: (await rsa(A, B, { n, dA, dB, inner: 'euclidean', outer: 'pearson' })).score,
    };
    for (const f of [1e160, 1e-170, 2 ** 200, -1e300]) {
      const S = A.map((v) => v * f);
      expect((await cka(S, B, { n, dA, dB })).score, `cka x ${f}`).toBeCloseTo(base.cka, 12);
      expect((await svcca(S, B, { n, dA, dB })).score, `svcca x ${f}`).toBeCloseTo(base.svcca, 12);
      expect((await rsa(S, B, { n, dA, dB, inner: 'euclidean' })).score, `rsa x ${f}`).toBeCloseTo(base.rsa, 12);
      expect((await rsa(S, B, { n, dA, dB, inner: 'euclidean', outer: 'pearson' })).score, `rsa pearson x ${f}`).toBeCloseTo(base.rsaPearson, 12);
    }
    // A power-of-2 scale inside the safe range changes no bit.
    const P = A.map((v) => v * 2 ** 40);
    expect((await cka(P, B, { n, dA, dB })).score).toBe(base.cka);
  });
});

/** Eigenvalues of Xc^T Xc (the squared singular values of the column-centred X), descending. */
function centredSquaredSingularValues(X: Float64Array, n: number, d: number): number[] {
  const mean = new Float64Array(d);
  for (let r = 0; r < n; r++) for (let c = 0; c < d; c++) mean[c]! += X[r * d + c]! / n;
  const S = new Float64Array(d * d);
  for (let r = 0; r < n; r++) for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) S[i * d + j]! += (X[r * d + i]! - mean[i]!) * (X[r * d + j]! - mean[j]!);
  return jacobiEigenvalues(S, d);
}

/** The first k whose leading k squared singular values hold at least `keep` of their sum. */
function directionsFor(s2: number[], keep: number): number {
  const total = s2.reduce((a, b) => a + b, 0);
  let cum = 0;
  for (let i = 0; i < s2.length; i++) {
    cum += s2[i]!;
    if (cum >= keep * total) return i + 1;
  }
  return s2.length;
}

describe('svcca: kept directions and the score (fresh random data)', () => {
  it('the default keep is 0.99 of the variance: keptA and keptB match the eigenvalues of the centred covariance', async () => {
    for (let trial = 0; trial < 4; trial++) {
      const seed = (Date.now() + trial * 7919) >>> 0;
      const next = lcg(seed);
      const dA = 5 + 2 * Math.floor(next() * 3);
      const dB = 4 + 2 * Math.floor(next() * 3);
      const n = 41 + 2 * Math.floor(next() * 40);
      // Columns of scales 0.5^c, mixed by a rotation: shares near 3/4, 3/16, ... so that a keep of
      // 0.99 and one of 0.9 keep different numbers of directions.
      const scaled = (d: number) => transform(Float64Array.from(random(n, d, next), (v, i) => v * 0.5 ** (i % d)), n, d, orthogonal(d, next), d);
      const A = scaled(dA);
      const B = scaled(dB);
      const sA = centredSquaredSingularValues(A, n, dA);
      const sB = centredSquaredSingularValues(B, n, dB);
      const r = await svcca(A, B, { n, dA, dB });
      expect([r.keptA, r.keptB], `seed ${seed}`).toEqual([directionsFor(sA, 0.99), directionsFor(sB, 0.99)]);
      expect(directionsFor(sA, 0.9), `seed ${seed}: the data tells 0.9 from 0.99`).toBeLessThan(directionsFor(sA, 0.99));
    }
  });

  it('the score is the mean of the min(keptA, keptB) canonical correlations when the sides keep different numbers', async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const dA = 7 + 2 * Math.floor(next() * 3);
    const dB = 3;
    const n = 61 + 2 * Math.floor(next() * 30);
    const A = random(n, dA, next);
    const B = Float64Array.from({ length: n * dB }, (_, i) => A[Math.floor(i / dB) * dA + (i % dB)]! + 0.5 * (next() - 0.5));
    const keep = 5; // B has 3 dimensions: it keeps its rank, 3
    const r = await svcca(A, B, { n, dA, dB, keep });
    expect([r.keptA, r.keptB], `seed ${seed}`).toEqual([5, 3]);
    expect(r.correlations.length).toBe(3);
    const mean = r.correlations.reduce((a, b) => a + b, 0) / 3;
    expect(Math.abs(r.score - mean), `seed ${seed}`).toBeLessThan(1e-12);
    for (let i = 1; i < 3; i++) expect(r.correlations[i]!).toBeLessThanOrEqual(r.correlations[i - 1]!);
  });

  it('an integer keep above a side\'s rank keeps only its rank (no directions of zero variance)', async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const dA = 5 + 2 * Math.floor(next() * 2);
    const rankA = dA - 2;
    const n = 41 + 2 * Math.floor(next() * 30);
    // The last two columns of A are combinations of the others: rank dA - 2.
    const A = random(n, dA, next);
    for (let r = 0; r < n; r++) {
      A[r * dA + dA - 2] = A[r * dA]! + 2 * A[r * dA + 1]!;
      A[r * dA + dA - 1] = A[r * dA + 1]! - 0.5 * A[r * dA + 2]!;
    }
    const B = random(n, dA, next);
    const r = await svcca(A, B, { n, dA, dB: dA, keep: dA });
    expect(r.keptA, `seed ${seed}`).toBe(rankA);
    expect(r.keptB).toBe(dA);
    // The kept directions span A's column space: the same as A's first rankA (independent) columns.
    const Ar = Float64Array.from({ length: n * rankA }, (_, i) => A[Math.floor(i / rankA) * dA + (i % rankA)]!);
    const want = await svcca(Ar, B, { n, dA: rankA, dB: dA, keep: dA });
    expect(want.keptA).toBe(rankA);
    expect(Math.abs(r.score - want.score), `seed ${seed}`).toBeLessThan(1e-9);
    for (const c of r.correlations) expect(c).toBeLessThanOrEqual(1);
  });

  it('svccaPermutationTest of a constant side: score NaN, pValue NaN and no shuffled runs, as permutationTest(svcca)', async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const n = 21 + 2 * Math.floor(next() * 10);
    const A = new Float64Array(n * 3).fill(0.7);
    const B = random(n, 2, next);
    const want = await permutationTest(async (a, b) => (await svcca(a, b, { n, dA: 3, dB: 2 })).score, A, B, { n, dB: 2, runs: 7, seed: 1 });
    expect(want.pValue).toBeNaN();
    const got = await svccaPermutationTest(A, B, { n, dA: 3, dB: 2, runs: 7, seed: 1 });
    expect(got.score).toBeNaN();
    expect(got.pValue, `seed ${seed}`).toBeNaN();
    expect(got.shuffled.length).toBe(0);
  });
});

describe('options.signal: svcca, pwcca, rsa, cka and the permutation tests', () => {
  type Run = (signal?: AbortSignal) => Promise<unknown>;
  /** Fresh random sides of odd sizes, and each function called on them. */
  function runs(seed: number, n: number, dA: number, dB: number): [string, Run][] {
    const next = lcg(seed);
    const A = random(n, dA, next);
    const B = random(n, dB, next);
    const s = (signal?: AbortSignal) => ({ n, dA, dB, ...(signal ? { signal } : {}) });
    return [
      ['svcca', (signal) => svcca(A, B, s(signal))],
      ['pwcca', (signal) => pwcca(A, B, s(signal))],
      ['rsa', (signal) => rsa(A, B, s(signal))],
      ['cka', (signal) => cka(A, B, s(signal))],
      ['permutationTest', (signal) => permutationTest(async (a, b) => (await cka(a, b, { n, dA, dB })).score, A, B, { n, dB, runs: 5, ...(signal ? { signal } : {}) })],
      ['svccaPermutationTest', (signal) => svccaPermutationTest(A, B, { ...s(signal), runs: 5 })],
      ['pwccaPermutationTest', (signal) => pwccaPermutationTest(A, B, { ...s(signal), runs: 5 })],
      ['rsaPermutationTest', (signal) => rsaPermutationTest(A, B, { ...s(signal), runs: 5 })],
    ];
  }

  it('a signal that never aborts changes nothing (same results to the bit); an aborted one rejects with its reason; anything else is ERR_SAEKIT_ARG', async () => {
    for (const [name, run] of runs(71, 97, 7, 5)) {
      const plain = await run();
      expect(await run(new AbortController().signal), name).toEqual(plain);
      const reason = new Error(`stop ${name}`);
      await expect(run(AbortSignal.abort(reason)), name).rejects.toBe(reason);
      await expect(run({ aborted: false } as unknown as AbortSignal), name).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.signal/) });
    }
  });

  it('an abort while the work runs rejects with its reason at the next turn of the event loop', async () => {
    // Each function's work is many times CHECK_UNITS here, so it looks at the clock (and turns) often.
    for (const [name, run] of runs(72, 301, 23, 19)) {
      const ctrl = new AbortController();
      const reason = new Error(`stop ${name}`);
      setImmediate(() => ctrl.abort(reason)); // runs at the work's first turn
      await expect(everyLookATurn(() => run(ctrl.signal)), name).rejects.toBe(reason);
      // The same work with a live signal and the same turns completes.
      await expect(everyLookATurn(() => run(new AbortController().signal)), name).resolves.toBeDefined();
    }
  });

  it("permutationTest looks at the signal before each run (a synchronous score never yields), and a score's own svcca sees the test's signal", async () => {
    const next = lcg(73);
    const [n, d] = [41, 3];
    const A = random(n, d, next);
    const B = random(n, d, next);
    const ctrl = new AbortController();
    const reason = new Error('enough runs');
    let calls = 0;
    const score = (a: Float64Array, b: Float64Array) => {
      if (++calls === 4) ctrl.abort(reason); // the observed score and runs 1-3
      return a[0]! * b[1]!;
    };
    await expect(permutationTest(score, A, B, { n, dB: d, runs: 10, signal: ctrl.signal })).rejects.toBe(reason);
    expect(calls).toBe(4);
    // Nested: svcca called by the score without a signal of its own stops at its first turn
    // (its work is many times CHECK_UNITS), so the second score never finishes.
    const [m, w] = [301, 23];
    const A2 = random(m, w, next);
    const B2 = random(m, w, next);
    const outer = new AbortController();
    let started = 0;
    let finished = 0;
    const nested = permutationTest(
      async (a, b) => {
        if (++started === 2) setImmediate(() => outer.abort(reason));
        const r = await svcca(a, b, { n: m, dA: w, dB: w });
        finished++;
        return r.score;
      },
      A2,
      B2,
      { n: m, dB: w, runs: 3, signal: outer.signal },
    );
    await expect(everyLookATurn(() => nested)).rejects.toBe(reason);
    expect([started, finished]).toEqual([2, 1]);
  });
});

describe('exact bounds of the checks, the defaults, the nested signal (mutation round: similarity)', () => {
  it('svcca and pwcca need n above both widths: n equal to dA or to dB is ERR_SAEKIT_SHAPE, one more row passes', async () => {
    const next = lcg(81);
    for (const [dA, dB] of [[5, 3], [3, 5], [4, 4]] as const) {
      const n = Math.max(dA, dB);
      for (const [name, f] of [['svcca', svcca], ['pwcca', pwcca]] as const) {
        expect(await code(f(random(n, dA, next), random(n, dB, next), { n, dA, dB })), `${name} n = ${n}, dA = ${dA}, dB = ${dB}`).toBe('ERR_SAEKIT_SHAPE');
        const m = n + 1;
        expect(await code(f(random(m, dA, next), random(m, dB, next), { n: m, dA, dB })), `${name} n = ${m}`).toBeUndefined();
      }
    }
  });

  it("svcca's keep: a share must be above 0 (0 and negatives are ERR_SAEKIT_ARG, not one direction); compat refuses the integer 1", async () => {
    const next = lcg(82);
    const [n, dA, dB] = [11, 3, 2];
    const A = random(n, dA, next);
    const B = random(n, dB, next);
    for (const keep of [0, -0, -0.25]) expect(await code(svcca(A, B, { n, dA, dB, keep })), `keep ${keep}`).toBe('ERR_SAEKIT_ARG');
    expect(await code(svcca(A, B, { n, dA, dB, keep: 1e-9 }))).toBeUndefined();
    expect(await code(svcca(A, B, { n, dA, dB, keep: 1, compat: 'univ-feat-geom' }))).toBe('ERR_SAEKIT_ARG');
    expect(await code(svcca(A, B, { n, dA, dB, keep: 0.5, compat: 'univ-feat-geom' }))).toBeUndefined();
  });

  it('a matrix one row too long or too short is ERR_SAEKIT_SHAPE for every score; permutationTest wants A a whole number of rows', async () => {
    const next = lcg(83);
    const [n, dA, dB] = [9, 3, 2];
    const A = random(n, dA, next);
    const B = random(n, dB, next);
    const calls = {
      svcca: (a: Float64Array, b: Float64Array) => svcca(a, b, { n, dA, dB }),
      pwcca: (a: Float64Array, b: Float64Array) => pwcca(a, b, { n, dA, dB }),
      rsa: (a: Float64Array, b: Float64Array) => rsa(a, b, { n, dA, dB }),
      cka: (a: Float64Array, b: Float64Array) => cka(a, b, { n, dA, dB }),
    };
    for (const [name, f] of Object.entries(calls)) {
      expect(await code(f(A, B)), name).toBeUndefined();
      expect(await code(f(random(n + 1, dA, next), B)), `${name}: A one row too long`).toBe('ERR_SAEKIT_SHAPE');
      expect(await code(f(A, random(n + 1, dB, next))), `${name}: B one row too long`).toBe('ERR_SAEKIT_SHAPE');
      expect(await code(f(A, random(n - 1, dB, next))), `${name}: B one row too short`).toBe('ERR_SAEKIT_SHAPE');
      const bad = B.slice();
      bad[next() * bad.length | 0] = Number.NaN;
      expect(await code(f(A, bad)), `${name}: NaN in B`).toBe('ERR_SAEKIT_NONFINITE');
    }
    const score = (a: Float64Array, b: Float64Array) => a[0]! * b[0]!;
    expect(await code(permutationTest(score, A, B, { n, dB, runs: 3 }))).toBeUndefined();
    expect(await code(permutationTest(score, A.subarray(0, n * dA - 1), B, { n, dB, runs: 3 }))).toBe('ERR_SAEKIT_SHAPE');
  });

  it('svcca-, pwcca- and rsaPermutationTest default to 100 runs and seed 0, as permutationTest does', async () => {
    const next = lcg(84);
    const [n, dA, dB] = [7, 2, 3];
    const A = random(n, dA, next);
    const B = Float64Array.from({ length: n * dB }, (_, i) => A[Math.floor(i / dB) * dA + (i % dB) % dA]! + (next() - 0.5));
    const opts = { n, dA, dB };
    const cases = [
      ['svcca', () => svccaPermutationTest(A, B, opts), async (a: Float64Array, b: Float64Array) => (await svcca(a, b, opts)).score],
      ['pwcca', () => pwccaPermutationTest(A, B, opts), async (a: Float64Array, b: Float64Array) => (await pwcca(a, b, opts)).score],
      ['rsa', () => rsaPermutationTest(A, B, opts), async (a: Float64Array, b: Float64Array) => (await rsa(a, b, opts)).score],
    ] as const;
    for (const [name, fast, score] of cases) {
      const want = await permutationTest(score, A, B, { n, dB });
      const got = await fast();
      expect(got.shuffled.length, name).toBe(100);
      got.shuffled.forEach((v, i) => expect(Math.abs(v - want.shuffled[i]!), `${name} run ${i}`).toBeLessThan(1e-9));
    }
  });

  it('an abort made in a microtask (no turn of the event loop after it) is seen before the next permutation run', async () => {
    const next = lcg(85);
    const [n, dA, dB] = [12, 2, 3];
    const A = random(n, dA, next);
    const B = random(n, dB, next);
    const calls = {
      svccaPermutationTest: (signal: AbortSignal) => svccaPermutationTest(A, B, { n, dA, dB, runs: 50, signal }),
      pwccaPermutationTest: (signal: AbortSignal) => pwccaPermutationTest(A, B, { n, dA, dB, runs: 50, signal }),
      rsaPermutationTest: (signal: AbortSignal) => rsaPermutationTest(A, B, { n, dA, dB, runs: 50, signal }),
    };
    // The clock stands still: due() never ends a slice, so no turn of the event loop (and no
    // look at the signal there) comes during these small calls.
    await new Promise((r) => setImmediate(r));
    const now = performance.now();
    const spy = vi.spyOn(performance, 'now').mockReturnValue(now);
    try {
      for (const [name, f] of Object.entries(calls)) {
        const ctrl = new AbortController();
        const reason = new Error(`stop ${name}`);
        const p = f(ctrl.signal);
        queueMicrotask(() => ctrl.abort(reason)); // runs at the call's first await
        await expect(p, name).rejects.toBe(reason);
      }
    } finally {
      spy.mockRestore();
    }
  });

  it('svcca correlations and the RSA score stay within [0, 1] / [-1, 1] for rotated copies, where rounding puts the raw values just past 1', async () => {
    // Seeded: unclamped, 25 of these 84 correlations come out above 1, and an RSA score in 6 of the 20 trials.
    const next = lcg(91);
    for (let t = 0; t < 20; t++) {
      const n = 15 + Math.floor(next() * 30);
      const d = 2 + Math.floor(next() * 6);
      const A = random(n, d, next);
      const B = transform(A, n, d, orthogonal(d, next), d, 1 + next(), next());
      const r = await svcca(A, B, { n, dA: d, dB: d, keep: d });
      for (const c of r.correlations) {
        expect(c, `trial ${t}`).toBeLessThanOrEqual(1);
        expect(1 - c, `trial ${t}`).toBeLessThan(1e-12);
      }
      expect(r.score).toBeLessThanOrEqual(1);
      for (const [X, opts] of [[B, { inner: 'euclidean', outer: 'pearson' }], [A, {}]] as const) {
        const s = (await rsa(A, X, { n, dA: d, dB: d, ...opts })).score;
        expect(s, `trial ${t}`).toBeLessThanOrEqual(1);
        expect(1 - s, `trial ${t}`).toBeLessThan(1e-12);
      }
    }
  });

  it("a score's svcca with a live signal of its own still sees permutationTest's signal", async () => {
    const next = lcg(86);
    const [m, w] = [301, 23];
    const A = random(m, w, next);
    const B = random(m, w, next);
    const outer = new AbortController();
    const reason = new Error('outer stop');
    let started = 0;
    let finished = 0;
    const nested = permutationTest(
      async (a, b) => {
        if (++started === 2) setImmediate(() => outer.abort(reason));
        const r = await svcca(a, b, { n: m, dA: w, dB: w, signal: new AbortController().signal });
        finished++;
        return r.score;
      },
      A,
      B,
      { n: m, dB: w, runs: 3, signal: outer.signal },
    );
    await expect(everyLookATurn(() => nested)).rejects.toBe(reason);
    expect([started, finished]).toEqual([2, 1]);
  });
});
