import { describe, expect, it } from 'vitest';

import {
  allocationHook,
  choleskyLower,
  makePermutation,
  normalCdf,
  normalQuantile,
  normalSamples,
  philox4x32,
  Rng,
  superposition,
  type SuperpositionOptions,
} from '../lib/data/synthetic.js';
import { synthetic } from '../lib/index.js';
import type { ActivationSource, BatchOptions } from '../lib/data/types.js';
import { gapBound, watchCall } from './helpers/event-loop.js';
import { lcg } from './helpers/reference.js';
import { orthantRef, phiRef, quantileRef, reluNormalMoment, within5Sigma } from './helpers/synthetic-normal.js';
import { expectNamedError } from './helpers/errors.js';
import { SaekitError } from '../lib/errors.js';

/** Fresh seeds each run (reported in failure messages), as in the other suites. */
function freshSeed(salt: number): number {
  return (Date.now() ^ Math.imul(salt, 0x9e3779b1)) >>> 0;
}

async function collect(source: ActivationSource, options?: BatchOptions): Promise<{ sizes: number[]; data: Float32Array }> {
  const parts: Float32Array[] = [];
  const sizes: number[] = [];
  for await (const b of source.batches(options)) {
    expect(b.dIn).toBe(source.dIn);
    expect(b.data.length).toBe(b.rows * b.dIn);
    sizes.push(b.rows);
    parts.push(b.data);
  }
  const data = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    data.set(p, at);
    at += p.length;
  }
  return { sizes, data };
}

function fireCounts(codes: { indices: Int32Array }, n: number): Float64Array {
  const counts = new Float64Array(n);
  for (const i of codes.indices) counts[i]!++;
  return counts;
}

describe('Philox 4x32-10 (TypeScript port)', () => {
  it('matches the Random123 known-answer vectors', () => {
    const KAT: [number[], number[], number[]][] = [
      [[0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]],
      [[0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], [0xffffffff, 0xffffffff], [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]],
      [[0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0], [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]],
    ];
    const out = new Uint32Array(4);
    for (const [c, k, want] of KAT) {
      philox4x32(c[0]!, c[1]!, c[2]!, c[3]!, k[0]!, k[1]!, out);
      expect(Array.from(out)).toEqual(want);
    }
  });
});

describe('normal CDF and quantile', () => {
  it('agree with direct numerical integration of the density', () => {
    for (let x = -8; x <= 4; x += 0.37) {
      const ref = phiRef(x);
      // Simpson reference: relative 1e-9 in the lower tail, absolute 1e-11 elsewhere.
      expect(Math.abs(normalCdf(x) - ref), `x=${x}`).toBeLessThanOrEqual(Math.max(1e-9 * ref, 1e-11));
    }
    expect(normalCdf(-40)).toBe(0);
    expect(normalCdf(40)).toBe(1);
  });

  it('the quantile inverts the CDF to ~1e-13 relative, and matches known values', () => {
    for (const p of [1e-300, 1e-12, 1e-6, 0.001, 0.0123, 0.1, 0.3, 0.5, 0.7, 0.9, 0.999, 1 - 1e-9]) {
      const z = normalQuantile(p);
      const back = normalCdf(z);
      const q = Math.min(p, 1 - p);
      expect(Math.abs(back - p), `p=${p} z=${z}`).toBeLessThanOrEqual(1e-13 * q + 1e-16);
    }
    expect(Math.abs(normalQuantile(0.975) - 1.959963984540054)).toBeLessThan(1e-12);
    expect(Math.abs(normalQuantile(0.3) - quantileRef(0.3))).toBeLessThan(1e-9);
    expect(normalQuantile(0)).toBe(-Infinity);
    expect(normalQuantile(1)).toBe(Infinity);
    expect(normalQuantile(0.5)).toBe(0);
  });
});

describe('normal sampler (ziggurat)', () => {
  it('has the moments of N(0, 1) and the right conditional tail beyond the base layer', () => {
    const seed = freshSeed(3);
    const N = 1 << 23;
    const z = normalSamples(seed, N);
    let m1 = 0;
    let m2 = 0;
    let m4 = 0;
    for (const x of z) {
      m1 += x;
      m2 += x * x;
      m4 += x ** 4;
    }
    m1 /= N;
    m2 /= N;
    m4 /= N;
    // 5 sigma: sd(mean) = 1/sqrt(N), sd(E[x^2]) = sqrt(2/N), sd(E[x^4]) = sqrt(96/N).
    expect(Math.abs(m1), `seed ${seed}`).toBeLessThanOrEqual(5 / Math.sqrt(N));
    expect(Math.abs(m2 - 1), `seed ${seed}`).toBeLessThanOrEqual(5 * Math.sqrt(2 / N));
    expect(Math.abs(m4 - 3), `seed ${seed}`).toBeLessThanOrEqual(5 * Math.sqrt(96 / N));
    // Beyond r = 3.4426 values come from the separate tail method: its share and its shape
    // (KS against the truncated normal, alpha = 1e-6).
    const r = 3.4426198558966528;
    const tail = Float64Array.from(z.filter((x) => Math.abs(x) > r).map(Math.abs)).sort();
    const pTail = 2 * phiRef(-r);
    expect(within5Sigma(tail.length, N, pTail), `seed ${seed}: ${tail.length} tail values`).toBe(true);
    let d = 0;
    for (let i = 0; i < tail.length; i++) {
      const F = 1 - normalCdf(-tail[i]!) / normalCdf(-r); // P(|Z| <= t | |Z| > r)
      d = Math.max(d, Math.abs((i + 1) / tail.length - F), Math.abs(i / tail.length - F));
    }
    expect(d, `seed ${seed}`).toBeLessThanOrEqual(Math.sqrt(Math.log(2e6) / (2 * tail.length)));
    // The mean excess is more sensitive: E[|Z| | |Z| > r] = lambda = phi(r) / Q(r) (inverse Mills
    // ratio), Var = 1 + r lambda - lambda^2. (An unthinned exponential proposal gives r + 1/r.)
    const lambda = Math.exp(-0.5 * r * r) / Math.sqrt(2 * Math.PI) / normalCdf(-r);
    const tailMean = tail.reduce((a, x) => a + x, 0) / tail.length;
    expect(Math.abs(tailMean - lambda), `seed ${seed}`).toBeLessThanOrEqual(5 * Math.sqrt((1 + r * lambda - lambda ** 2) / tail.length));
    // Histogram over the body (wedges): 5 sigma per bin of width 0.25 over [-3, 3].
    const bins = new Float64Array(24);
    for (const x of z) if (x >= -3 && x < 3) bins[Math.floor((x + 3) * 4)]!++;
    for (let b = 0; b < 24; b++) {
      const p = normalCdf(-3 + (b + 1) / 4) - normalCdf(-3 + b / 4);
      expect(within5Sigma(bins[b]!, N, p), `seed ${seed} bin ${b}`).toBe(true);
    }
  });
});

describe('superposition: ground truth', () => {
  it('features are unit rows, probabilities follow the documented formulas', () => {
    const seed = freshSeed(1);
    const { features, probabilities, source } = superposition({
      dIn: 37,
      numFeatures: 101,
      firing: { kind: 'zipf', exponent: 1.3, maxP: 0.4, minP: 0.003, scale: 'clip' },
      seed,
    });
    expect(source.dIn).toBe(37);
    expect(source.numRows).toBe(65536);
    expect(features.length).toBe(101 * 37);
    for (let i = 0; i < 101; i++) {
      let s = 0;
      for (let k = 0; k < 37; k++) s += features[i * 37 + k]! ** 2;
      // Each stored component is the float64 value rounded to float32 (relative 2^-24).
      expect(Math.abs(Math.sqrt(s) - 1), `seed ${seed} feature ${i}`).toBeLessThanOrEqual(2 ** -23);
    }
    for (let i = 0; i < 101; i++) expect(probabilities[i]).toBe(Math.max(0.003, 0.4 * Math.pow(i + 1, -1.3)));
    const u = superposition({ dIn: 4, numFeatures: 8, firing: { kind: 'expected-active', n: 3 } }).probabilities;
    expect(Array.from(u)).toEqual(new Array(8).fill(3 / 8));
    const v = synthetic.superposition({ dIn: 4, numFeatures: 8, firing: { kind: 'uniform', p: 0.25 } }).probabilities;
    expect(Array.from(v)).toEqual(new Array(8).fill(0.25));
  });

  it('features look isotropic: mean cosine between distinct features ~ 0 with variance ~ 1/dIn', () => {
    const seed = freshSeed(2);
    const d = 50;
    const n = 200;
    const { features } = superposition({ dIn: d, numFeatures: n, firing: { kind: 'uniform', p: 0.1 }, seed });
    let s = 0;
    let s2 = 0;
    let m = 0;
    for (let i = 0; i < n; i++) {
      for (let j = i + 1; j < n; j++) {
        let c = 0;
        for (let k = 0; k < d; k++) c += features[i * d + k]! * features[j * d + k]!;
        s += c;
        s2 += c * c;
        m++;
      }
    }
    // For independent uniform directions cos has mean 0 and variance 1/d. The pair cosines are
    // only pairwise independent, so use generous bounds (a wrong generator, e.g. U(0,1)
    // components, gives mean cosine ~0.75).
    expect(Math.abs(s / m), `seed ${seed}`).toBeLessThan(0.01);
    expect(Math.abs((s2 / m) * d - 1), `seed ${seed}`).toBeLessThan(0.1);
  });
});

describe('superposition: independent firing', () => {
  const cases: [string, SuperpositionOptions['firing'], number][] = [
    ['zipf over several probability runs', { kind: 'zipf', exponent: 1, maxP: 0.6, minP: 0.004 }, 300],
    ['zipf, slow decay', { kind: 'zipf', exponent: 0.4, maxP: 0.2 }, 150],
    ['uniform, direct tests (p > 1/4)', { kind: 'uniform', p: 0.45 }, 64],
    ['uniform, geometric skipping', { kind: 'uniform', p: 0.02 }, 257],
    ['expected-active', { kind: 'expected-active', n: 4 }, 97],
    ["zipf at SAELens' defaults (rescaled onto [0.01, 0.3])", { kind: 'zipf' }, 200],
    ['linear', { kind: 'linear', maxP: 0.6, minP: 0.002 }, 150],
    ['random (unsorted p: sampled in decreasing order, codes put back in index order)', { kind: 'random', maxP: 0.45 }, 160],
    [
      'probabilities (unsorted, with 0, 1 and direct tests)',
      { kind: 'probabilities', p: Array.from({ length: 90 }, (_, i) => [0, 1, 0.6, 0.003, 0.2, 0.05, 0.31, 0.011, 0.12][i % 9]! * (i % 4 === 3 ? 0.5 : 1)) },
      90,
    ],
  ];
  for (const [label, firing, n] of cases) {
    it(`per-feature firing rates within 5 sigma: ${label}`, () => {
      const seed = freshSeed(n);
      const N = 1 << 15;
      const data = superposition({ dIn: 8, numFeatures: n, firing, seed, numRows: N });
      const codes = data.codes(0, N);
      const counts = fireCounts(codes, n);
      let total = 0;
      let expected = 0;
      let variance = 0;
      let chi2 = 0;
      for (let i = 0; i < n; i++) {
        const p = data.probabilities[i]!;
        expect(within5Sigma(counts[i]!, N, p), `seed ${seed} feature ${i}: ${counts[i]} fires, p=${p}`).toBe(true);
        total += counts[i]!;
        expected += N * p;
        variance += N * p * (1 - p);
        if (p > 0 && p < 1) chi2 += (counts[i]! - N * p) ** 2 / (N * p * (1 - p));
      }
      // Aggregates catch small systematic biases that single features cannot: the total count
      // (5 sigma) and the chi-square statistic with n degrees of freedom (mean n, sd sqrt(2n);
      // n + 6.5 sd is a right-tail probability below 1e-6 for n >= 64 by Wilson-Hilferty).
      expect(Math.abs(total - expected), `seed ${seed}: ${total} fires in all, want ${expected}`).toBeLessThanOrEqual(5 * Math.sqrt(variance));
      expect(chi2, `seed ${seed}`).toBeLessThanOrEqual(n + 6.5 * Math.sqrt(2 * n));
      // Pairwise independence on a few pairs: co-firing ~ p_i p_j.
      const dense = new Uint8Array(N * n);
      for (let r = 0; r < N; r++) for (let t = codes.indptr[r]!; t < codes.indptr[r + 1]!; t++) dense[r * n + codes.indices[t]!] = 1;
      for (const [i, j] of [
        [0, 1],
        [1, 2],
        [0, n - 1],
        [Math.floor(n / 2), Math.floor(n / 2) + 1],
      ] as const) {
        let both = 0;
        for (let r = 0; r < N; r++) both += dense[r * n + i]! & dense[r * n + j]!;
        const pij = data.probabilities[i]! * data.probabilities[j]!;
        expect(within5Sigma(both, N, pij), `seed ${seed} pair ${i},${j}: ${both} vs ${N * pij}`).toBe(true);
      }
      // Indices strictly increase within each row.
      let unordered = 0;
      for (let r = 0; r < N; r++) {
        for (let t = codes.indptr[r]! + 1; t < codes.indptr[r + 1]!; t++) if (!(codes.indices[t]! > codes.indices[t - 1]!)) unordered++;
      }
      expect(unordered).toBe(0);
    });
  }

  it('p = 1 fires every feature in every row, p = 0 none', () => {
    const all = superposition({ dIn: 3, numFeatures: 20, firing: { kind: 'uniform', p: 1 }, numRows: 100 }).codes(0, 100);
    expect(all.indices.length).toBe(2000);
    const none = superposition({ dIn: 3, numFeatures: 20, firing: { kind: 'expected-active', n: 0 }, numRows: 100 });
    expect(none.codes(0, 100).indices.length).toBe(0);
    expect(Array.from(none.rows(0, 100)).every((x) => x === 0)).toBe(true);
  });
});

describe('superposition: correlated firing (Gaussian copula)', () => {
  it('marginals stay p_i and co-firing matches the bivariate-normal orthant probability (explicit Sigma)', () => {
    const seed = freshSeed(11);
    const next = lcg(seed);
    const n = 6;
    // Sigma = normalised (B B^T + 0.2 I), B random 6 x 3: positive definite, correlations of both signs.
    const B = Array.from({ length: n * 3 }, () => 2 * next() - 1);
    const S = new Float64Array(n * n);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        let s = i === j ? 0.2 : 0;
        for (let k = 0; k < 3; k++) s += B[i * 3 + k]! * B[j * 3 + k]!;
        S[i * n + j] = s;
      }
    }
    const dg = Array.from({ length: n }, (_, i) => Math.sqrt(S[i * n + i]!));
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) S[i * n + j] = i === j ? 1 : S[i * n + j]! / (dg[i]! * dg[j]!);
    const N = 1 << 17;
    const data = superposition({
      dIn: 5,
      numFeatures: n,
      firing: { kind: 'zipf', exponent: 0.7, maxP: 0.45 },
      correlation: S,
      numRows: N,
      seed,
    });
    expect(Array.from(data.correlationMatrix()!)).toEqual(Array.from(S));
    const p = data.probabilities;
    const codes = data.codes(0, N);
    const counts = fireCounts(codes, n);
    const pair = new Float64Array(n * n);
    for (let r = 0; r < N; r++) {
      const a = codes.indptr[r]!;
      const b = codes.indptr[r + 1]!;
      for (let s = a; s < b; s++) for (let t = s + 1; t < b; t++) pair[codes.indices[s]! * n + codes.indices[t]!]!++;
    }
    const thr = Array.from(p, (pi) => quantileRef(pi));
    let farFromIndependent = 0;
    for (let i = 0; i < n; i++) {
      expect(within5Sigma(counts[i]!, N, p[i]!), `seed ${seed} feature ${i}`).toBe(true);
      for (let j = i + 1; j < n; j++) {
        const pij = orthantRef(thr[i]!, thr[j]!, S[i * n + j]!);
        expect(within5Sigma(pair[i * n + j]!, N, pij), `seed ${seed} pair ${i},${j} rho=${S[i * n + j]}: ${pair[i * n + j]} vs ${N * pij}`).toBe(
          true,
        );
        if (!within5Sigma(pair[i * n + j]!, N, p[i]! * p[j]!)) farFromIndependent++;
      }
    }
    // The test can fail: most pairs are visibly not independent.
    expect(farFromIndependent, `seed ${seed}`).toBeGreaterThan(5);
  });

  it("'random' correlation: a valid Sigma, marginals kept, co-firing matches its orthant probabilities", () => {
    const seed = freshSeed(12);
    const n = 12;
    const N = 1 << 16;
    const data = superposition({
      dIn: 7,
      numFeatures: n,
      firing: { kind: 'uniform', p: 0.2 },
      correlation: { kind: 'random', strength: 0.8, factors: 2 },
      numRows: N,
      seed,
    });
    const S = data.correlationMatrix()!;
    // Symmetric, unit diagonal, positive definite (Cholesky succeeds).
    const L = new Float64Array(n * n);
    for (let i = 0; i < n; i++) {
      expect(S[i * n + i]).toBe(1);
      for (let j = 0; j <= i; j++) {
        expect(S[i * n + j]).toBe(S[j * n + i]);
        let s = S[i * n + j]!;
        for (let k = 0; k < j; k++) s -= L[i * n + k]! * L[j * n + k]!;
        if (i === j) {
          expect(s).toBeGreaterThan(0);
          L[i * n + i] = Math.sqrt(s);
        } else L[i * n + j] = s / L[j * n + j]!;
      }
    }
    const codes = data.codes(0, N);
    const counts = fireCounts(codes, n);
    const dense = new Uint8Array(N * n);
    for (let r = 0; r < N; r++) for (let t = codes.indptr[r]!; t < codes.indptr[r + 1]!; t++) dense[r * n + codes.indices[t]!] = 1;
    const thr = quantileRef(0.2);
    let strong = 0;
    for (let i = 0; i < n; i++) {
      expect(within5Sigma(counts[i]!, N, 0.2), `seed ${seed} feature ${i}`).toBe(true);
      for (let j = i + 1; j < n; j++) {
        const rho = S[i * n + j]!;
        if (Math.abs(rho) > 0.4) strong++;
        if (j > i + 3) continue; // a subset of pairs keeps the quadrature cheap
        let both = 0;
        for (let r = 0; r < N; r++) both += dense[r * n + i]! & dense[r * n + j]!;
        const pij = orthantRef(thr, thr, rho);
        expect(within5Sigma(both, N, pij), `seed ${seed} pair ${i},${j} rho=${rho}: ${both} vs ${N * pij}`).toBe(true);
      }
    }
    // strength 0.8 with 2 factors: |rho| = 0.8 |cos(angle)| is mostly large.
    expect(strong, `seed ${seed}`).toBeGreaterThan(10);
    expect(superposition({ dIn: 3, numFeatures: 4, firing: { kind: 'uniform', p: 0.2 } }).correlationMatrix()).toBeUndefined();
  });

  it("'random' is { kind: 'random', strength: 0.5, factors: min(8, numFeatures) } (the documented defaults)", () => {
    for (const n of [5, 8, 13]) {
      const seed = freshSeed(n);
      const common = { dIn: 7, numFeatures: n, firing: { kind: 'uniform', p: 0.3 } as const, numRows: 301, seed };
      const byName = superposition({ ...common, correlation: 'random' });
      const explicit = superposition({ ...common, correlation: { kind: 'random', strength: 0.5, factors: Math.min(8, n) } });
      expect(Array.from(byName.correlationMatrix()!), `n ${n}, seed ${seed}`).toEqual(Array.from(explicit.correlationMatrix()!));
      expect(Array.from(byName.rows(0, 301)), `n ${n}, seed ${seed}`).toEqual(Array.from(explicit.rows(0, 301)));
      const other = superposition({ ...common, correlation: { kind: 'random', strength: 0.5, factors: Math.min(8, n) - 1 } });
      expect(Array.from(other.correlationMatrix()!)).not.toEqual(Array.from(explicit.correlationMatrix()!));
    }
  });

  it("'random' with strength 0 is independent firing in distribution", () => {
    const seed = freshSeed(13);
    const N = 1 << 15;
    const data = superposition({ dIn: 3, numFeatures: 5, firing: { kind: 'uniform', p: 0.3 }, correlation: { kind: 'random', strength: 0 }, numRows: N, seed });
    const S = data.correlationMatrix()!;
    for (let i = 0; i < 5; i++) for (let j = 0; j < 5; j++) expect(S[i * 5 + j]).toBe(i === j ? 1 : 0);
    const codes = data.codes(0, N);
    let both = 0;
    for (let r = 0; r < N; r++) {
      const row = Array.from(codes.indices.subarray(codes.indptr[r]!, codes.indptr[r + 1]!));
      if (row.includes(0) && row.includes(1)) both++;
    }
    expect(within5Sigma(both, N, 0.09), `seed ${seed}: ${both}`).toBe(true);
  });
});

describe('superposition: magnitudes', () => {
  /** Every feature fires (p = 1): the magnitudes of 16 x rows firings, the zeros of relu-normal (not in the codes: inactive) included. */
  function magnitudes(magnitude: SuperpositionOptions['magnitude'], seed: number, rows: number): Float32Array {
    const { values } = superposition({ dIn: 2, numFeatures: 16, firing: { kind: 'uniform', p: 1 }, magnitude, numRows: rows, seed }).codes(0, rows);
    const out = new Float32Array(16 * rows);
    out.set(values);
    return out;
  }

  it('uniform: U(0, 1] with mean 1/2 and variance 1/12 (5 sigma)', () => {
    const seed = freshSeed(21);
    const v = magnitudes(undefined, seed, 1 << 14);
    const N = v.length;
    let s = 0;
    let outside = 0;
    for (const x of v) {
      if (!(x > 0 && x <= 1)) outside++;
      s += x;
    }
    expect(outside).toBe(0);
    const mean = s / N;
    let q = 0;
    for (const x of v) q += (x - mean) ** 2;
    const variance = q / (N - 1);
    expect(Math.abs(mean - 0.5), `seed ${seed}`).toBeLessThanOrEqual(5 * Math.sqrt(1 / 12 / N));
    // sd of the sample variance: sqrt((mu4 - sigma^4) / N), mu4 = 1/80 for U(0, 1).
    expect(Math.abs(variance - 1 / 12), `seed ${seed}`).toBeLessThanOrEqual(5 * Math.sqrt((1 / 80 - 1 / 144) / N));
  });

  it('relu-normal: a magnitude that rounds to float32 zero is inactive, not listed with value 0', () => {
    const rows = 64 + Math.floor(Math.random() * 64);
    const tiny = superposition({ dIn: 2, numFeatures: 5, firing: { kind: 'uniform', p: 1 }, magnitude: { kind: 'relu-normal', mean: 1e-46, std: 0 }, numRows: rows, seed: freshSeed(3) }).codes(0, rows);
    expect(tiny.indices.length).toBe(0);
    expect(Array.from(tiny.indptr)).toEqual(new Array(rows + 1).fill(0));
    // The least subnormal itself is kept, with its value.
    const least = superposition({ dIn: 2, numFeatures: 5, firing: { kind: 'uniform', p: 1 }, magnitude: { kind: 'relu-normal', mean: 2 ** -149, std: 0 }, numRows: rows, seed: freshSeed(4) }).codes(0, rows);
    expect(least.indices.length).toBe(5 * rows);
    expect(Array.from(least.values).every((x) => x === 2 ** -149)).toBe(true);
  });

  it('relu-normal: mean, variance and zero mass match the closed forms (5 sigma)', () => {
    const seed = freshSeed(22);
    const mu = 0.3;
    const sd = 0.8;
    const v = magnitudes({ kind: 'relu-normal', mean: mu, std: sd }, seed, 1 << 14);
    const N = v.length;
    const a = mu / sd;
    const pdfA = Math.exp(-0.5 * a * a) / Math.sqrt(2 * Math.PI);
    const m1 = mu * phiRef(a) + sd * pdfA; // E[max(0, mu + sd Z)]
    const m2 = (mu * mu + sd * sd) * phiRef(a) + mu * sd * pdfA; // E[max(0, .)^2]
    const variance = m2 - m1 * m1;
    // The closed forms agree with direct integration (guards the formulas themselves).
    expect(Math.abs(m1 - reluNormalMoment(1, mu, sd))).toBeLessThan(1e-9);
    expect(Math.abs(m2 - reluNormalMoment(2, mu, sd))).toBeLessThan(1e-9);
    const m3 = reluNormalMoment(3, mu, sd);
    const m4 = reluNormalMoment(4, mu, sd);
    const mu4 = m4 - 4 * m1 * m3 + 6 * m1 * m1 * m2 - 3 * m1 ** 4; // central 4th moment
    let s = 0;
    let zeros = 0;
    let negative = 0;
    for (const x of v) {
      if (!(x >= 0)) negative++;
      s += x;
      if (x === 0) zeros++;
    }
    expect(negative).toBe(0);
    const mean = s / N;
    let q = 0;
    for (const x of v) q += (x - mean) ** 2;
    const sv = q / (N - 1);
    expect(Math.abs(mean - m1), `seed ${seed}`).toBeLessThanOrEqual(5 * Math.sqrt(variance / N));
    expect(Math.abs(sv - variance), `seed ${seed}`).toBeLessThanOrEqual(5 * Math.sqrt((mu4 - variance ** 2) / N));
    expect(within5Sigma(zeros, N, phiRef(-a)), `seed ${seed}: ${zeros} zeros`).toBe(true);
  });

  it('the normal sampler has the right shape: KS distance and tail beyond the ziggurat base', () => {
    const seed = freshSeed(23);
    const v = magnitudes({ kind: 'relu-normal', mean: 0, std: 1 }, seed, 1 << 16); // 2^20 values of max(0, Z)
    const N = v.length;
    const sorted = Float64Array.from(v).sort();
    let d = 0;
    for (let i = 0; i < N; ) {
      let j = i;
      while (j < N && sorted[j] === sorted[i]) j++;
      const F = normalCdf(sorted[i]!);
      d = Math.max(d, Math.abs(j / N - F), Math.abs(i / N - (sorted[i] === 0 ? 0 : F)));
      i = j;
    }
    // KS critical value at alpha = 1e-6: sqrt(ln(2 / alpha) / (2N)).
    expect(d, `seed ${seed}`).toBeLessThanOrEqual(Math.sqrt(Math.log(2e6) / (2 * N)));
    // Tail counts: beyond the base layer r ~ 3.44 the sampler uses its separate tail method.
    for (const x of [1, 2.5, 3.6, 4.2]) {
      let c = 0;
      for (const y of v) if (y > x) c++;
      expect(within5Sigma(c, N, phiRef(-x)), `seed ${seed}: ${c} values above ${x}`).toBe(true);
    }
  });
});

describe('superposition: rows are sums of fired features', () => {
  it('each row equals the documented float64 sum of codes x features, bit for bit', () => {
    const seed = freshSeed(31);
    const dIn = 23;
    const n = 90; // more features than dimensions
    const N = 500;
    const data = superposition({ dIn, numFeatures: n, firing: { kind: 'zipf', exponent: 0.8, maxP: 0.5 }, magnitude: { kind: 'relu-normal', mean: 1, std: 0.5 }, numRows: N, seed });
    const rows = data.rows(0, N);
    const { indptr, indices, values } = data.codes(0, N);
    const F = data.features;
    let mismatches = 0;
    for (let r = 0; r < N; r++) {
      for (let k = 0; k < dIn; k++) {
        let s = 0;
        for (let t = indptr[r]!; t < indptr[r + 1]!; t++) s += values[t]! * F[indices[t]! * dIn + k]!;
        if (Math.fround(s) !== rows[r * dIn + k]) mismatches++;
      }
    }
    expect(mismatches, `seed ${seed}`).toBe(0);
    expect(indptr[N]! / N).toBeGreaterThan(1); // rows really mix several features
  });

  it('with fewer features than dimensions, rows lie in the features span and least squares recovers the codes', () => {
    const seed = freshSeed(32);
    const dIn = 32;
    const n = 10;
    const N = 300;
    const data = superposition({ dIn, numFeatures: n, firing: { kind: 'uniform', p: 0.3 }, numRows: N, seed });
    const F = data.features;
    const rows = data.rows(0, N);
    const codes = data.codes(0, N);
    // Gram matrix G = F F^T and its Cholesky factor (float64).
    const G = new Float64Array(n * n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) for (let k = 0; k < dIn; k++) G[i * n + j]! += F[i * dIn + k]! * F[j * dIn + k]!;
    const L = new Float64Array(n * n);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j <= i; j++) {
        let s = G[i * n + j]!;
        for (let k = 0; k < j; k++) s -= L[i * n + k]! * L[j * n + k]!;
        L[i * n + j] = i === j ? Math.sqrt(s) : s / L[j * n + j]!;
      }
    }
    let worstCoef = 0;
    let worstResidual = 0;
    for (let r = 0; r < N; r++) {
      const b = new Float64Array(n);
      for (let i = 0; i < n; i++) for (let k = 0; k < dIn; k++) b[i]! += F[i * dIn + k]! * rows[r * dIn + k]!;
      const y = new Float64Array(n);
      for (let i = 0; i < n; i++) {
        let s = b[i]!;
        for (let k = 0; k < i; k++) s -= L[i * n + k]! * y[k]!;
        y[i] = s / L[i * n + i]!;
      }
      const c = new Float64Array(n);
      for (let i = n - 1; i >= 0; i--) {
        let s = y[i]!;
        for (let k = i + 1; k < n; k++) s -= L[k * n + i]! * c[k]!;
        c[i] = s / L[i * n + i]!;
      }
      const want = new Float64Array(n);
      for (let t = codes.indptr[r]!; t < codes.indptr[r + 1]!; t++) want[codes.indices[t]!] = codes.values[t]!;
      for (let i = 0; i < n; i++) worstCoef = Math.max(worstCoef, Math.abs(c[i]! - want[i]!));
      let res = 0;
      let norm = 0;
      for (let k = 0; k < dIn; k++) {
        let x = 0;
        for (let i = 0; i < n; i++) x += c[i]! * F[i * dIn + k]!;
        res += (x - rows[r * dIn + k]!) ** 2;
        norm += rows[r * dIn + k]! ** 2;
      }
      worstResidual = Math.max(worstResidual, Math.sqrt(res / Math.max(norm, 1e-30)));
    }
    // Rows are float32 (relative 2^-24 per entry); 10 random unit vectors in R^32 are well
    // conditioned, so the recovered coefficients are within ~1e-6 of the codes. Mixing in a
    // wrong feature would put errors of order 0.1 here.
    expect(worstCoef, `seed ${seed}`).toBeLessThan(1e-5);
    expect(worstResidual, `seed ${seed}`).toBeLessThan(1e-6);
  });
});

describe('superposition: determinism and batching', () => {
  const base = (seed: number): SuperpositionOptions => ({
    dIn: 9,
    numFeatures: 40,
    firing: { kind: 'zipf', exponent: 1, maxP: 0.5 },
    numRows: 2500,
    seed,
  });

  it('the same seed gives the same features and rows; different seeds differ', () => {
    const seed = freshSeed(41);
    const a = superposition(base(seed));
    const b = superposition(base(seed));
    const c = superposition(base(seed + 1));
    expect(Array.from(a.features)).toEqual(Array.from(b.features));
    expect(Array.from(a.rows(0, 2500))).toEqual(Array.from(b.rows(0, 2500)));
    expect(Array.from(a.features)).not.toEqual(Array.from(c.features));
    expect(Array.from(a.codes(0, 100).indices)).not.toEqual(Array.from(c.codes(0, 100).indices));
    // A bigint seed equals the same number; seeds above 2^32 use the high key word.
    expect(Array.from(superposition({ ...base(0), seed: 5n }).rows(0, 10))).toEqual(Array.from(superposition({ ...base(0), seed: 5 }).rows(0, 10)));
    expect(Array.from(superposition({ ...base(0), seed: 2n ** 40n + 5n }).rows(0, 10))).not.toEqual(
      Array.from(superposition({ ...base(0), seed: 5 }).rows(0, 10)),
    );
    // Random access: a row does not depend on which range asked for it.
    expect(Array.from(a.rows(1234, 3))).toEqual(Array.from(a.rows(0, 2500).subarray(1234 * 9, 1237 * 9)));
  });

  it('rows do not depend on batch size; the last batch is short unless dropLast', async () => {
    const seed = freshSeed(42);
    const data = superposition(base(seed));
    const want = data.rows(0, 2500);
    for (const batchSize of [1, 7, 1000, 2500, 4096]) {
      const { sizes, data: got } = await collect(data.source, { batchSize });
      expect(sizes.length).toBe(Math.ceil(2500 / batchSize));
      expect(sizes.every((s, i) => s === (i < sizes.length - 1 ? batchSize : 2500 - batchSize * (sizes.length - 1)))).toBe(true);
      expect(got.length).toBe(want.length);
      expect(Buffer.from(got.buffer).equals(Buffer.from(want.buffer)), `batchSize ${batchSize}`).toBe(true);
    }
    const dropped = await collect(data.source, { batchSize: 1000, dropLast: true });
    expect(dropped.sizes).toEqual([1000, 1000]);
    expect(Array.from(dropped.data)).toEqual(Array.from(want.subarray(0, 2000 * 9)));
    const twice = await collect(data.source, { batchSize: 600, epochs: 2 });
    expect(twice.sizes).toEqual([600, 600, 600, 600, 100, 600, 600, 600, 600, 100]);
    expect(Array.from(twice.data.subarray(2500 * 9))).toEqual(Array.from(want));
  });

  it('an epoch that gives no batch (fewer rows than a batch, with dropLast) ends the iteration, whatever epochs says', async () => {
    // It ran through every empty epoch without yielding the thread: 1e6 epochs blocked it ~0.6 s,
    // and epochs up to 2^53 - 1 are accepted.
    const data = superposition(base(freshSeed(47)));
    for (const shuffle of [false, true]) {
      const t0 = performance.now();
      const none = await collect(data.source, { batchSize: 4096, dropLast: true, shuffle, epochs: Number.MAX_SAFE_INTEGER });
      expect(none.sizes).toEqual([]);
      expect(performance.now() - t0).toBeLessThan(2000);
    }
    // One row short of a batch still gives nothing; exactly a batch gives one per epoch.
    expect((await collect(data.source, { batchSize: 2501, dropLast: true, epochs: 1e9 })).sizes).toEqual([]);
    expect((await collect(data.source, { batchSize: 2500, dropLast: true, epochs: 3 })).sizes).toEqual([2500, 2500, 2500]);
  });

  it('shuffle serves each row once per epoch, in a seeded order that changes between epochs', async () => {
    const seed = freshSeed(43);
    const data = superposition({ ...base(seed), firing: { kind: 'uniform', p: 0.5 }, numRows: 1000 }); // no all-zero rows
    const rows = data.rows(0, 1000);
    const index = new Map<string, number>();
    for (let r = 0; r < 1000; r++) index.set(Buffer.from(rows.buffer, r * 36, 36).toString('hex'), r);
    expect(index.size).toBe(1000); // rows are distinct, so they identify themselves
    const order = (d: Float32Array): number[] => {
      const out: number[] = [];
      for (let r = 0; r < d.length / 9; r++) out.push(index.get(Buffer.from(d.buffer, d.byteOffset + r * 36, 36).toString('hex')) ?? -1);
      return out;
    };
    const a = order((await collect(data.source, { batchSize: 64, shuffle: true, epochs: 2, seed: 7 })).data);
    const b = order((await collect(data.source, { batchSize: 333, shuffle: true, epochs: 2, seed: 7 })).data);
    const c = order((await collect(data.source, { batchSize: 64, shuffle: true, seed: 8 })).data);
    expect(a).toEqual(b); // same shuffle seed, any batch size
    const e0 = a.slice(0, 1000);
    const e1 = a.slice(1000);
    for (const e of [e0, e1, c]) expect([...e].sort((x, y) => x - y)).toEqual(Array.from({ length: 1000 }, (_, i) => i));
    const identity = Array.from({ length: 1000 }, (_, i) => i);
    expect(e0).not.toEqual(identity);
    expect(e0).not.toEqual(e1);
    expect(c).not.toEqual(e0);
    // Roughly uniform: the mean displacement of a random permutation is n/3.
    const disp = e0.reduce((s, r, i) => s + Math.abs(r - i), 0) / 1000;
    expect(disp).toBeGreaterThan(250);
    expect(disp).toBeLessThan(420);
  });

  it('close() ends the source', async () => {
    const data = superposition(base(1));
    const it = data.source.batches({ batchSize: 1000 })[Symbol.asyncIterator]();
    expect((await it.next()).done).toBe(false);
    await data.source.close();
    await expect(it.next()).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
    expect(() => data.source.batches()).toThrow(/has been closed/);
  });

  it('close() stops a batch that is being generated: its pending next() rejects, the generation ends', async () => {
    // A batch of 8192 rows at 4096 features takes half a second or more, in ~20 ms slices.
    const data = superposition({ dIn: 512, numFeatures: 4096, firing: { kind: 'expected-active', n: 20 }, numRows: 1 << 13, seed: 1 });
    const it = data.source.batches({ batchSize: 1 << 13 })[Symbol.asyncIterator]();
    const t0 = performance.now();
    const pending = it.next();
    await new Promise((resolve) => setTimeout(resolve, 10));
    await data.source.close();
    await expect(pending).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
    // Stopped at the next slice, not after the whole batch.
    expect(performance.now() - t0).toBeLessThan(500);
  });
});

describe('superposition: hierarchy (SAELens HierarchyNode semantics)', () => {
  // Feature 0 > 1 > {2, 3 exclusive}; 0 > 4; an organising root with exclusive children 5, 6, 7;
  // 8..11 free. Every feature fires independently with p = 0.4 before the hierarchy.
  const tree: SuperpositionOptions['hierarchy'] = [
    { feature: 0, children: [{ feature: 1, exclusiveChildren: true, children: [{ feature: 2 }, { feature: 3 }] }, { feature: 4 }] },
    { exclusiveChildren: true, children: [{ feature: 5 }, { feature: 6 }, { feature: 7 }] },
  ];
  const p = 0.4;
  // An exclusive child is kept when it fired and won the uniform draw among the m + 1 that fired:
  // p * E[1 / (1 + m)], m ~ Binomial(siblings, p).
  const keep = (siblings: number) => {
    let e = 0;
    for (let m = 0; m <= siblings; m++) {
      let c = 1;
      for (let j = 0; j < m; j++) c = (c * (siblings - j)) / (j + 1);
      e += (c * p ** m * (1 - p) ** (siblings - m)) / (1 + m);
    }
    return p * e;
  };

  it('children fire only under their parent, exclusive children one at a time, at the closed-form rates (5 sigma)', () => {
    for (const correlation of ['none', 'random'] as const) {
      const seed = freshSeed(correlation === 'none' ? 71 : 72);
      const N = 1 << 15;
      const n = 12;
      const data = superposition({ dIn: 6, numFeatures: n, firing: { kind: 'uniform', p }, correlation, hierarchy: tree, numRows: N, seed });
      const codes = data.codes(0, N);
      const on = new Uint8Array(N * n);
      for (let r = 0; r < N; r++) for (let t = codes.indptr[r]!; t < codes.indptr[r + 1]!; t++) on[r * n + codes.indices[t]!] = 1;
      let broken = 0;
      for (let r = 0; r < N; r++) {
        const f = (i: number) => on[r * n + i] === 1;
        if ((f(1) || f(4)) && !f(0)) broken++;
        if ((f(2) || f(3)) && !f(1)) broken++;
        if (f(2) && f(3)) broken++;
        if (Number(f(5)) + Number(f(6)) + Number(f(7)) > 1) broken++;
        for (let t = codes.indptr[r]! + 1; t < codes.indptr[r + 1]!; t++) if (!(codes.indices[t]! > codes.indices[t - 1]!)) broken++;
      }
      expect(broken, `seed ${seed} ${correlation}`).toBe(0);
      // The pre-hierarchy probabilities are reported unchanged.
      expect(Array.from(data.probabilities)).toEqual(new Array(n).fill(p));
      if (correlation !== 'none') continue; // correlated firing has no simple closed form for the rates
      const counts = fireCounts(codes, n);
      const want = [p, p * p, p * p * keep(1), p * p * keep(1), p * p, keep(2), keep(2), keep(2), p, p, p, p];
      for (let i = 0; i < n; i++) expect(within5Sigma(counts[i]!, N, want[i]!), `seed ${seed} feature ${i}: ${counts[i]} vs ${N * want[i]!}`).toBe(true);
      // A pair across branches: 2 and 4 both fire when 0, 1, 4 fire and 2 is kept.
      let both = 0;
      for (let r = 0; r < N; r++) both += on[r * n + 2]! & on[r * n + 4]!;
      expect(within5Sigma(both, N, p * p * keep(1) * p), `seed ${seed}: 2 & 4 ${both}`).toBe(true);
    }
  });

  it('rows are the float64 sums of the surviving codes; a hierarchy that switches nothing off changes no bit', () => {
    const seed = freshSeed(73);
    const base: SuperpositionOptions = { dIn: 9, numFeatures: 12, firing: { kind: 'zipf', exponent: 0.5, maxP: 0.6 }, magnitude: { kind: 'relu-normal', mean: 1, std: 0.4 }, numRows: 400, seed };
    const data = superposition({ ...base, hierarchy: tree });
    const rows = data.rows(0, 400);
    const { indptr, indices, values } = data.codes(0, 400);
    let mismatches = 0;
    for (let r = 0; r < 400; r++) {
      for (let k = 0; k < 9; k++) {
        let sum = 0;
        for (let t = indptr[r]!; t < indptr[r + 1]!; t++) sum += values[t]! * data.features[indices[t]! * 9 + k]!;
        if (Math.fround(sum) !== rows[r * 9 + k]) mismatches++;
      }
    }
    expect(mismatches, `seed ${seed}`).toBe(0);
    const plain = superposition(base).rows(0, 400);
    expect(Array.from(superposition({ ...base, hierarchy: [] }).rows(0, 400))).toEqual(Array.from(plain));
    // Roots only (no parent to miss, no exclusive choice): the same rows as without.
    expect(Array.from(superposition({ ...base, hierarchy: [{ feature: 3 }, { children: [{ feature: 0 }, { feature: 5 }] }] }).rows(0, 400))).toEqual(Array.from(plain));
    // A real hierarchy does change rows.
    expect(Array.from(rows)).not.toEqual(Array.from(plain));
  });

  it('rejects malformed hierarchies by name', () => {
    const ok: SuperpositionOptions = { dIn: 4, numFeatures: 6, firing: { kind: 'uniform', p: 0.1 } };
    const h = (hierarchy: unknown) => () => superposition({ ...ok, hierarchy } as SuperpositionOptions);
    expectNamedError(h({ feature: 0 }), 'options.hierarchy');
    expectNamedError(h([5]), 'options.hierarchy[0]');
    expectNamedError(h([{ feature: 6 }]), 'options.hierarchy[0].feature');
    expectNamedError(h([{ feature: 1, children: [{ feature: 2 }, { feature: 1.5 }] }]), 'options.hierarchy[0].children[1].feature');
    expectNamedError(h([{ feature: 1 }, { children: [{ feature: 1 }] }]), 'options.hierarchy[1].children[0].feature');
    expectNamedError(h([{ feature: 1, exclusiveChildren: true, children: [{ feature: 2 }] }]), 'options.hierarchy[0].exclusiveChildren');
    expectNamedError(h([{ feature: 1, exclusiveChildren: 'yes', children: [{ feature: 2 }, { feature: 3 }] }]), 'options.hierarchy[0].exclusiveChildren');
    expectNamedError(h([{ feature: 1, children: { feature: 2 } }]), 'options.hierarchy[0].children');
    expectNamedError(h([{ feature: 1, exclusive: true }]), 'exclusiveChildren');
    const shared = { feature: 2 };
    expectNamedError(h([{ feature: 1, children: [shared] }, { children: [shared] }]), 'options.hierarchy[1].children[0]');
    const loop: { feature: number; children: unknown[] } = { feature: 1, children: [] };
    loop.children.push(loop);
    expectNamedError(h([loop]), 'options.hierarchy[0].children[0]');
  });
});

describe('superposition: validation', () => {
  const ok: SuperpositionOptions = { dIn: 4, numFeatures: 6, firing: { kind: 'uniform', p: 0.1 } };
  const bad = (patch: Record<string, unknown>) => () => superposition({ ...ok, ...patch } as SuperpositionOptions);
  it('rejects bad options with errors that name them', () => {
    expectNamedError(() => superposition(undefined as unknown as SuperpositionOptions), 'options.dIn');
    expectNamedError(bad({ dIn: 0 }), 'options.dIn');
    expectNamedError(bad({ numFeatures: 1.5 }), 'options.numFeatures');
    expectNamedError(bad({ dIn: 1 << 20, numFeatures: 1 << 12 }), 'options.numFeatures');
    expectNamedError(bad({ firing: undefined }), 'options.firing');
    expectNamedError(bad({ firing: { kind: 'poisson' } }), 'options.firing.kind');
    expectNamedError(bad({ firing: { kind: 'zipf', exponent: 1, maxP: 0 } }), 'options.firing.maxP');
    expectNamedError(bad({ firing: { kind: 'zipf', exponent: 1, maxP: 1.5 } }), 'options.firing.maxP');
    expectNamedError(bad({ firing: { kind: 'zipf', exponent: -1, maxP: 0.5 } }), 'options.firing.exponent');
    expectNamedError(bad({ firing: { kind: 'zipf', exponent: 1, maxP: 0.5, minP: 0.6 } }), 'options.firing.minP');
    expectNamedError(bad({ firing: { kind: 'zipf', exponent: 0 } }), 'options.firing.exponent'); // rescale: > 0 (SAELens)
    expectNamedError(bad({ firing: { kind: 'zipf', scale: 'log' } }), 'options.firing.scale');
    expectNamedError(bad({ firing: { kind: 'linear', maxP: 0.2, minP: 0.3 } }), 'options.firing.minP');
    expectNamedError(bad({ firing: { kind: 'random', maxP: 1.01 } }), 'options.firing.maxP');
    expectNamedError(bad({ firing: { kind: 'linear', exponent: 1 } }), 'options.firing.exponent');
    expectNamedError(bad({ firing: { kind: 'probabilities', p: [0.1, 0.2] } }), 'options.firing.p');
    expectNamedError(bad({ firing: { kind: 'probabilities', p: 0.1 } }), 'options.firing.p');
    expectNamedError(bad({ firing: { kind: 'probabilities', p: [0.1, 0.2, 0.3, NaN, 0.1, 0.1] } }), 'options.firing.p[3]');
    expectNamedError(bad({ firing: { kind: 'probabilities', p: new Float64Array([0.1, 0.2, 0.3, 0.1, 0.1, 1.5]) } }), 'options.firing.p[5]');
    expectNamedError(bad({ firing: { kind: 'probabilities', p: [-0.1, 0.2, 0.3, 0.1, 0.1, 0.5] } }), 'options.firing.p[0]');
    expectNamedError(bad({ firing: { kind: 'uniform', p: 1.2 } }), 'options.firing.p');
    expectNamedError(bad({ firing: { kind: 'uniform', p: NaN } }), 'options.firing.p');
    expectNamedError(bad({ firing: { kind: 'expected-active', n: 7 } }), 'options.firing.n');
    expectNamedError(bad({ magnitude: { kind: 'gamma' } }), 'options.magnitude.kind');
    expectNamedError(bad({ magnitude: { kind: 'relu-normal', mean: 0, std: -1 } }), 'options.magnitude.std');
    expectNamedError(bad({ magnitude: { kind: 'relu-normal', mean: Infinity, std: 1 } }), 'options.magnitude.mean');
    expectNamedError(bad({ correlation: 'strong' }), 'options.correlation');
    expectNamedError(bad({ correlation: { kind: 'random', strength: 2 } }), 'options.correlation.strength');
    expectNamedError(bad({ correlation: { kind: 'random', factors: 0 } }), 'options.correlation.factors');
    expectNamedError(bad({ correlation: new Float64Array(35) }), 'options.correlation');
    expectNamedError(bad({ numRows: 0 }), 'options.numRows');
    expectNamedError(bad({ numRows: 2 ** 49 }), 'options.numRows');
    expectNamedError(bad({ seed: -1 }), 'options.seed');
  });

  it('rejects correlation matrices that are not symmetric, unit-diagonal or positive definite', () => {
    const eye = (n: number) => {
      const S = new Float64Array(n * n);
      for (let i = 0; i < n; i++) S[i * n + i] = 1;
      return S;
    };
    const asym = eye(6);
    asym[1] = 0.3;
    expectNamedError(bad({ correlation: asym }), 'options.correlation');
    const diag = eye(6);
    diag[7] = 1.1;
    expectNamedError(bad({ correlation: diag }), 'options.correlation[7]');
    const nan = eye(6);
    nan[2] = NaN;
    expectNamedError(bad({ correlation: nan }), 'options.correlation[2]');
    // rho12 = rho13 = 0.9, rho23 = -0.9: symmetric with unit diagonal, but indefinite.
    const indefinite = eye(6);
    for (const [i, j, v] of [
      [0, 1, 0.9],
      [0, 2, 0.9],
      [1, 2, -0.9],
    ] as const) {
      indefinite[i * 6 + j] = v;
      indefinite[j * 6 + i] = v;
    }
    expectNamedError(bad({ correlation: indefinite }), 'positive definite');
    expect(() => bad({ correlation: eye(6) })()).not.toThrow();
    // Pivots must be above 1e-12: rho01 with 1 - rho01^2 = 1e-13 is numerically singular (refused at row 1);
    // 1 - rho01^2 = 1e-10 is accepted.
    for (const [gap, ok] of [[1e-13, false], [1e-10, true]] as const) {
      const near = eye(6);
      near[1] = near[6] = Math.sqrt(1 - gap);
      if (ok) expect(() => bad({ correlation: near })()).not.toThrow();
      else expect(bad({ correlation: near })).toThrow(/positive definite matrix for options\.correlation but its Cholesky factorisation fails at row 1 \(pivot /);
    }
  });

  // A sparse array of 2^32 - 1 slots costs nothing to make, and the hierarchy used to walk it slot
  // by slot before its node limit applied (a fatal out-of-memory after ~40 s); the dense
  // correlation matrix of 70,000 features was a bare RangeError (of 40,000, 12.8 GB filled).
  it('refuses hierarchy arrays past the node limit by their length, and a correlation matrix past 2 GiB, by name', () => {
    const base = { dIn: 4, numFeatures: 8, firing: { kind: 'uniform', p: 0.1 } } as const;
    const t0 = performance.now();
    expect(() => superposition({ ...base, hierarchy: new Array(2 ** 32 - 1) })).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.hierarchy to keep the hierarchy within 4194304 nodes but it has 4294967295 entries/) }),
    );
    expect(() => superposition({ ...base, hierarchy: [{ feature: 0, children: new Array(2 ** 32 - 1) }] })).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.hierarchy\[0\]\.children to keep the hierarchy within 4194304 nodes but it has 4294967295 entries/) }),
    );
    expect(performance.now() - t0).toBeLessThan(1000);
    // Within the limit a short sparse array still names its first hole.
    expect(() => superposition({ ...base, hierarchy: [{ feature: 0, children: new Array(3) }] })).toThrow(/options\.hierarchy\[0\]\.children\[0\]/);
    const big = superposition({ dIn: 4, numFeatures: 16385, firing: { kind: 'uniform', p: 1e-4 }, correlation: { kind: 'random', strength: 0.5, factors: 2 }, numRows: 8 });
    expect(() => big.correlationMatrix()).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_MEMORY', message: expect.stringMatching(/16385 features .* refused above 16384 features/) }));
    const ok = superposition({ dIn: 4, numFeatures: 300, firing: { kind: 'uniform', p: 1e-2 }, correlation: { kind: 'random', strength: 0.5, factors: 2 }, numRows: 8 });
    expect(ok.correlationMatrix()!.length).toBe(300 * 300);
    // The factor loadings (numFeatures x factors float64) are bounded the same way, before any
    // allocation: 2^20 factors of 2^20 features were a bare RangeError; 16384 x 16384 (2 GiB) is the most allowed.
    const t1 = performance.now();
    for (const [numFeatures, factors, most] of [[2 ** 20, 2 ** 20, 256], [16385, 16385, 16383], [20000, 13422, 13421]] as const) {
      expect(() => superposition({ dIn: 1, numFeatures, firing: { kind: 'uniform', p: 1e-6 }, correlation: { kind: 'random', factors }, numRows: 8 })).toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_MEMORY', message: expect.stringMatching(new RegExp(`^Expected options\\.correlation\\.factors of at most ${most} with ${numFeatures} features but received ${factors}`)) }),
      );
    }
    expect(performance.now() - t1).toBeLessThan(1000);
  });

  it('rejects bad batch options and ranges', () => {
    const data = superposition({ ...ok, numRows: 100 });
    expectNamedError(() => data.source.batches({ batchSize: 0 }), 'options.batchSize');
    expectNamedError(() => data.source.batches({ epochs: 0 }), 'options.epochs');
    expectNamedError(() => data.source.batches({ shuffle: 'yes' as unknown as boolean }), 'options.shuffle');
    expectNamedError(() => data.source.batches({ seed: 1.5 }), 'options.seed');
    expectNamedError(() => data.source.batches({ dropLast: 1 as unknown as boolean }), 'options.dropLast');
    expectNamedError(() => data.rows(-1, 2), 'start');
    expectNamedError(() => data.rows(99, 2), 'count');
    expectNamedError(() => data.codes(0, 101), 'count');
  });
});

describe('superposition: active means a magnitude > 0 (SAELens), nested options checked, features copied', () => {
  it('relu-normal zeros are not in the codes, and a hierarchy child is active only with its parent active (> 0)', () => {
    const seed = freshSeed(91);
    const N = 20000;
    const data = superposition({
      dIn: 8,
      numFeatures: 4,
      firing: { kind: 'uniform', p: 0.5 },
      magnitude: { kind: 'relu-normal', mean: 0, std: 1 },
      hierarchy: [{ feature: 0, children: [{ feature: 1 }] }],
      numRows: N,
      seed,
    });
    const c = data.codes(0, N);
    for (const v of c.values) expect(v).toBeGreaterThan(0);
    let child = 0;
    for (let r = 0; r < N; r++) {
      const feats = Array.from(c.indices.subarray(c.indptr[r]!, c.indptr[r + 1]!));
      if (feats.includes(1)) {
        child++;
        expect(feats, `seed ${seed} row ${r}`).toContain(0);
      }
    }
    // P(child active) = P(parent active) P(child active | fired) = (0.5 * 0.5)^2.
    expect(within5Sigma(child, N, 0.0625), `seed ${seed}: ${child}`).toBe(true);
    // The rows are still the float64 sums of the listed codes.
    const rows = data.rows(0, 50);
    const F = data.features;
    for (let r = 0; r < 50; r++) {
      for (let j = 0; j < 8; j++) {
        let s = 0;
        for (let q = c.indptr[r]!; q < c.indptr[r + 1]!; q++) s += c.values[q]! * F[c.indices[q]! * 8 + j]!;
        expect(rows[r * 8 + j]).toBe(Math.fround(s));
      }
    }
  });

  it('misspelt keys inside firing, magnitude and correlation are errors, not ignored; features is a copy', () => {
    const base = { dIn: 4, numFeatures: 6, numRows: 10, seed: 1 };
    expectNamedError(() => superposition({ ...base, firing: { kind: 'zipf', exponent: 1, maxP: 0.5, minp: 0.2 } as never }), 'options.firing.minp (did you mean options.firing.minP?)');
    expectNamedError(() => superposition({ ...base, firing: { kind: 'uniform', p: 0.1, n: 3 } as never }), 'options.firing.n');
    expectNamedError(() => superposition({ ...base, firing: { kind: 'uniform', p: 0.1 }, magnitude: { kind: 'uniform', mean: 5 } as never }), 'options.magnitude.mean');
    expectNamedError(() => superposition({ ...base, firing: { kind: 'uniform', p: 0.1 }, correlation: { kind: 'random', strenght: 0.9 } as never }), 'options.correlation.strenght');
    expectNamedError(() => superposition({ ...base, firing: { kind: 'uniform', p: 0.1 }, correlation: 'Random' as never }), "'none', 'random', a Float64Array");
    const data = superposition({ ...base, firing: { kind: 'uniform', p: 0.5 } });
    const before = data.rows(0, 10);
    data.features.fill(0);
    expect(Array.from(data.rows(0, 10))).toEqual(Array.from(before));
  });
});

describe('superposition: batches share the JS thread with the event loop', () => {
  // Synchronous, a batch of 4096 rows at 16384 features (32 active per row, dIn 768) held the JS
  // thread 370-600 ms on the loaded 2-core development machine; generated in ~20 ms slices of
  // rows, the batch's longest gap there was under 60 ms.
  it('a batch of 4096 rows at 16384 features; each row is its codes times the features (float64)', async () => {
    const seed = Date.now() >>> 0;
    const [dIn, numFeatures, rows] = [768, 16384, 4096];
    const data = superposition({ dIn, numFeatures, firing: { kind: 'expected-active', n: 32 }, numRows: rows, seed });
    const first = async () => {
      for await (const b of data.source.batches({ batchSize: rows })) return b;
      throw new Error('no batch');
    };
    const { value: batch, elapsed, longest, firings } = await watchCall(first);
    expect(longest, `seed ${seed}: longest gap of a ${elapsed.toFixed(0)} ms batch`).toBeLessThan(gapBound(elapsed));
    expect(firings).toBeGreaterThan(elapsed / 50);
    expect(batch.rows).toBe(rows);
    const codes = data.codes(0, rows);
    const F = data.features;
    const next = lcg(seed);
    for (let s = 0; s < 40; s++) {
      const t = Math.floor(next() * rows);
      const want = new Float64Array(dIn);
      for (let q = codes.indptr[t]!; q < codes.indptr[t + 1]!; q++) {
        for (let c = 0; c < dIn; c++) want[c]! += codes.values[q]! * F[codes.indices[q]! * dIn + c]!;
      }
      for (let c = 0; c < dIn; c++) expect(Math.abs(batch.data[t * dIn + c]! - want[c]!), `seed ${seed}: row ${t}, column ${c}`).toBeLessThan(1e-6 * (1 + Math.abs(want[c]!)));
    }
  }, 30_000);
});

// Mutation round 6: the documented stream layout checked against plain references (the Philox
// port is pinned by the known-answer vectors above; xoshiro128** is written out here from its
// published reference code), and the exact bounds of the options, ranges and matrices.
describe('synthetic: stream layout and exact bounds', () => {
  /** xoshiro128** (Blackman and Vigna's reference code) on a uint32 state, seeded from one Philox block. */
  function xoshiroRef(block: Uint32Array): () => number {
    const s = Array.from(block);
    if ((s[0]! | s[1]! | s[2]! | s[3]!) === 0) s[3] = 1;
    const rotl = (x: number, k: number) => ((x << k) | (x >>> (32 - k))) >>> 0;
    return () => {
      const result = Math.imul(rotl(Math.imul(s[1]!, 5) >>> 0, 7), 9) >>> 0;
      const t = (s[1]! << 9) >>> 0;
      s[2] = (s[2]! ^ s[0]!) >>> 0;
      s[3] = (s[3]! ^ s[1]!) >>> 0;
      s[1] = (s[1]! ^ s[2]!) >>> 0;
      s[0] = (s[0]! ^ s[3]!) >>> 0;
      s[2] = (s[2]! ^ t) >>> 0;
      s[3] = rotl(s[3]!, 11);
      return result;
    };
  }
  /** The documented state(purpose, index) of a seed: Philox block (index mod 2^32, index div 2^32, purpose, 'SYNT') keyed by the seed's two words. */
  function stateRef(seed: bigint, purpose: number, index: number): () => number {
    const out = new Uint32Array(4);
    philox4x32(index % 2 ** 32, Math.floor(index / 2 ** 32), purpose, 0x53594e54, Number(seed & 0xffffffffn), Number(seed >> 32n), out);
    return xoshiroRef(out);
  }

  it('Rng is xoshiro128** seeded from the Philox block (index mod 2^32, index div 2^32, purpose, tag) under both seed words', () => {
    const next = lcg(freshSeed(101));
    const seeds = [0n, BigInt(Math.floor(next() * 2 ** 32)), (BigInt(Math.floor(next() * 2 ** 32)) << 32n) | 7n, 2n ** 64n - 1n];
    const indices = [0, 1, 2 ** 32 - 1, 2 ** 32 + 3, 2 ** 47 + 12345];
    for (const seed of seeds) {
      const rng = new Rng(seed);
      for (const purpose of [1, 3, 5]) {
        for (const index of indices) {
          rng.reseed(purpose, index);
          const ref = stateRef(seed, purpose, index);
          for (let k = 0; k < 9; k++) expect(rng.next(), `seed ${seed} purpose ${purpose} index ${index} word ${k}`).toBe(ref());
        }
      }
    }
    // uniform53 is ((w1 >>> 5) * 2^26 + (w2 >>> 6)) * 2^-53 of the next two words.
    const rng = new Rng(seeds[1]!);
    rng.reseed(3, 11);
    const ref = stateRef(seeds[1]!, 3, 11);
    for (let k = 0; k < 5; k++) expect(rng.uniform53()).toBe(((ref() >>> 5) * 2 ** 26 + (ref() >>> 6)) * 2 ** -53);
  });

  it('row r past 2^32 uses the counter high word; feature i is block (1, i) normalised; direct firing tests w * 2^-32 < p', () => {
    const seed = BigInt(freshSeed(102));
    // Rows 5 and 2^32 + 5 are different rows (the counter's high word is part of the index).
    const big = superposition({ dIn: 3, numFeatures: 16, firing: { kind: 'uniform', p: 0.45 }, numRows: 2 ** 33, seed });
    const lo = big.codes(5, 1);
    const hi = big.codes(2 ** 32 + 5, 1);
    // p = 0.45 > 1/4: each feature in increasing index is fired by its own word, w * 2^-32 < p.
    for (const [r, codes] of [[5, lo], [2 ** 32 + 5, hi]] as const) {
      const ref = stateRef(seed, 3, r);
      const want: number[] = [];
      for (let i = 0; i < 16; i++) if (ref() / 2 ** 32 < 0.45) want.push(i);
      expect(Array.from(codes.indices), `seed ${seed} row ${r}`).toEqual(want);
    }
    expect(Array.from(hi.indices).join() + Array.from(hi.values).join()).not.toBe(Array.from(lo.indices).join() + Array.from(lo.values).join());
    // Feature i: dIn normals of block (1, i) (Rng's sampler), divided by their float64 norm.
    const dIn = 5;
    const { features } = superposition({ dIn, numFeatures: 7, firing: { kind: 'uniform', p: 0.1 }, seed });
    const rng = new Rng(seed);
    for (let i = 0; i < 7; i++) {
      rng.reseed(1, i);
      const g = Array.from({ length: dIn }, () => rng.normal());
      const norm = Math.sqrt(g.reduce((a, x) => a + x * x, 0));
      expect(Array.from(features.subarray(i * dIn, (i + 1) * dIn)), `seed ${seed} feature ${i}`).toEqual(g.map((x) => Math.fround(x / norm)));
    }
  });

  it('normalSamples takes one block of 2^16 values per index: value 2^16 + k is the k-th normal of block (5, 1)', () => {
    const seed = freshSeed(103);
    const z = normalSamples(seed, 65536 + 7);
    const rng = new Rng(BigInt(seed));
    rng.reseed(5, 1);
    for (let k = 0; k < 7; k++) expect(z[65536 + k], `seed ${seed} value ${65536 + k}`).toBe(rng.normal());
    rng.reseed(5, 0);
    expect(z[0]).toBe(rng.normal());
  });

  it("'random' firing is minP + (maxP - minP) w_i 2^-32 from state(6, 0); a shuffle of up to 2^16 rows is Fisher-Yates from state(4, epoch)", () => {
    const seed = BigInt(freshSeed(105));
    const p = superposition({ dIn: 2, numFeatures: 300, firing: { kind: 'random', maxP: 0.7, minP: 0.1 }, seed }).probabilities;
    const ref = stateRef(seed, 6, 0);
    for (let i = 0; i < 300; i++) expect(p[i], `seed ${seed} feature ${i}`).toBe(0.1 + (0.7 - 0.1) * (ref() / 2 ** 32));
    // Fisher-Yates: for i = n - 1 down to 1 swap i with j, j uniform in [0, i] by multiply-shift with rejection.
    for (const n of [1, 2, 10, 1000]) {
      const next = stateRef(seed, 4, 9);
      const table = Array.from({ length: n }, (_, i) => i);
      for (let i = n - 1; i > 0; i--) {
        let j: number;
        for (;;) {
          const m = BigInt(next()) * BigInt(i + 1);
          if (m % 2n ** 32n >= 2n ** 32n % BigInt(i + 1)) {
            j = Number(m >> 32n);
            break;
          }
        }
        [table[i], table[j]] = [table[j]!, table[i]!];
      }
      const perm = makePermutation(n, seed, 9);
      expect(Array.from({ length: n }, (_, i) => perm(i)), `n ${n} seed ${seed}`).toEqual(table);
    }
  });

  it('makePermutation is a bijection of [0, n) for odd n (odd and even bit counts), differs per epoch, and ignores nothing of its seed', () => {
    const next = lcg(freshSeed(104));
    for (const n of [1, 3, 5, 7, 33, 301, 333, 1001, 2049, 4097]) {
      const seed = BigInt(Math.floor(next() * 2 ** 32));
      const orders: string[] = [];
      for (const epoch of [0, 1, 2]) {
        const perm = makePermutation(n, seed, epoch);
        const seen = new Uint8Array(n);
        for (let i = 0; i < n; i++) {
          const j = perm(i);
          if (!(Number.isInteger(j) && j >= 0 && j < n && seen[j] === 0)) expect.fail(`n ${n} seed ${seed} epoch ${epoch}: perm(${i}) = ${j}`);
          seen[j] = 1;
        }
        orders.push(Array.from({ length: n }, (_, i) => perm(i)).join());
      }
      // n! orders (n >= 33): three epochs agreeing has probability below 1e-30.
      if (n >= 33) expect(new Set(orders).size, `n ${n} seed ${seed}`).toBe(3);
    }
  });

  it('choleskyLower: L L^T = S in float64 on random SPD matrices of odd sizes; the symmetric part of S; the failing row and pivot', () => {
    const seed = freshSeed(105);
    const next = lcg(seed);
    for (const n of [1, 3, 7, 13]) {
      // S = A A^T + n I: SPD and well conditioned.
      const A = Array.from({ length: n * n }, () => next() * 2 - 1);
      const S = new Float64Array(n * n);
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
        let s = i === j ? n : 0;
        for (let k = 0; k < n; k++) s += A[i * n + k]! * A[j * n + k]!;
        S[i * n + j] = s;
      }
      // A skew part added to S must not change L: it factors (S + S^T) / 2.
      const skewed = Float64Array.from(S);
      for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) {
        const d = next() - 0.5;
        skewed[i * n + j]! += d;
        skewed[j * n + i]! -= d;
      }
      for (const input of [S, skewed]) {
        const L = choleskyLower(input, n);
        if (!(L instanceof Float64Array)) throw new Error(`seed ${seed} n ${n}: refused at row ${L.row}`);
        for (let i = 0; i < n; i++) {
          for (let j = 0; j < n; j++) {
            if (j > i) expect(L[i * n + j]).toBe(0);
            let s = 0;
            for (let k = 0; k < n; k++) s += L[i * n + k]! * L[j * n + k]!;
            expect(Math.abs(s - S[i * n + j]!), `seed ${seed} n ${n} (${i}, ${j})`).toBeLessThanOrEqual(1e-12 * n * n);
          }
        }
      }
    }
    // rho01 = rho02 = 0.9, rho12 = -0.9: L00 = 1, L10 = L20 = 0.9, L11 = sqrt(0.19), L21 = -1.71 / sqrt(0.19),
    // so the pivot of row 2 is 1 - 0.81 - 1.71^2 / 0.19 = -15.2.
    const bad = Float64Array.of(1, 0.9, 0.9, 0.9, 1, -0.9, 0.9, -0.9, 1);
    const res = choleskyLower(bad, 3) as { row: number; pivot: number };
    expect(res.row).toBe(2);
    expect(Math.abs(res.pivot - (0.19 - 1.71 ** 2 / 0.19))).toBeLessThan(1e-12);
  });

  it('options at their exact bounds: n = numFeatures, minP 0, std 0, factors = numFeatures are taken; Sigma within 1e-9 of unit diagonal and symmetric', () => {
    const base = { dIn: 3, numFeatures: 6, numRows: 50 } as const;
    // expected-active n = numFeatures: p = 1, every feature in every row.
    const all = superposition({ ...base, firing: { kind: 'expected-active', n: 6 } });
    expect(Array.from(all.probabilities)).toEqual(new Array(6).fill(1));
    expect(all.codes(0, 50).indices.length).toBe(300);
    // minP 0 given is clip's default.
    const zipf = { kind: 'zipf', exponent: 1, maxP: 0.5, scale: 'clip' } as const;
    expect(Array.from(superposition({ ...base, firing: { ...zipf, minP: 0 } }).rows(0, 50))).toEqual(Array.from(superposition({ ...base, firing: zipf }).rows(0, 50)));
    // std 0: every magnitude is exactly the mean.
    const constant = superposition({ ...base, firing: { kind: 'uniform', p: 0.5 }, magnitude: { kind: 'relu-normal', mean: 0.75, std: 0 } }).codes(0, 50);
    expect(constant.values.length).toBeGreaterThan(0);
    expect(constant.values.every((v) => v === 0.75)).toBe(true);
    // factors up to numFeatures.
    const c = superposition({ ...base, firing: { kind: 'uniform', p: 0.5 }, correlation: { kind: 'random', factors: 6 } }).correlationMatrix()!;
    expect(c.length).toBe(36);
    expectNamedError(() => superposition({ ...base, firing: { kind: 'uniform', p: 0.5 }, correlation: { kind: 'random', factors: 7 } }), 'options.correlation.factors');
    // The unit diagonal and the symmetry are checked to 1e-9.
    const eye = () => Float64Array.from({ length: 36 }, (_, k) => (k % 7 === 0 ? 1 : 0));
    const firing = { kind: 'uniform', p: 0.5 } as const;
    const near = eye();
    near[14] = 1 + 1e-10;
    near[1] = 0.2;
    near[6] = 0.2 + 1e-10;
    expect(() => superposition({ ...base, firing, correlation: near })).not.toThrow();
    const diag = eye();
    diag[14] = 1 + 1e-8;
    expectNamedError(() => superposition({ ...base, firing, correlation: diag }), 'options.correlation[14] (diagonal)');
    const asym = eye();
    asym[1] = 0.2;
    asym[6] = 0.2 + 1e-8;
    expect(() => superposition({ ...base, firing, correlation: asym })).toThrow(/symmetric matrix for options\.correlation but entry \(0, 1\)/);
  });

  it('ranges at their exact bounds: an empty range at numRows is taken; codes of one row hold all of its many features', async () => {
    const data = superposition({ dIn: 2, numFeatures: 100, firing: { kind: 'uniform', p: 1 }, numRows: 9 });
    expect(data.rows(9, 0).length).toBe(0);
    expect(Array.from(data.codes(9, 0).indptr)).toEqual([0]);
    expectNamedError(() => data.rows(10, 0), 'start');
    // One row of 100 fired features (more than the first buffer of max(16, 4 * rows) codes).
    const one = data.codes(0, 1);
    expect(Array.from(one.indptr)).toEqual([0, 100]);
    expect(Array.from(one.indices)).toEqual(Array.from({ length: 100 }, (_, i) => i));
    // dropLast drops a last batch one row short of batchSize too.
    const src = superposition({ dIn: 2, numFeatures: 4, firing: { kind: 'uniform', p: 0.5 }, numRows: 2 * 7 - 1 }).source;
    const sizes: number[] = [];
    for await (const b of src.batches({ batchSize: 7, dropLast: true })) sizes.push(b.rows);
    expect(sizes).toEqual([7]);
  });
});

describe('normal CDF and quantile: the far tails (mutation round 6)', () => {
  /** Q(x) = 1 - Phi(x) for x >= 8 by the asymptotic series phi(x)/x * sum_k (-1)^k (2k-1)!! / x^(2k), summed while its terms shrink (relative error below e^(-x^2/2)). */
  function upperTailRef(x: number): number {
    let term = 1;
    let sum = 1;
    for (let k = 1; k < 200; k++) {
      const t = (-term * (2 * k - 1)) / (x * x);
      if (Math.abs(t) >= Math.abs(term)) break;
      term = t;
      sum += term;
    }
    return (Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI) / x) * sum;
  }

  it('Phi(-x) for x from 8 to 37 matches the asymptotic series to 1e-12 relative', () => {
    for (const x of [8, 9.5, 10, 13, 20, 27.5, 37]) {
      const want = upperTailRef(x);
      expect(Math.abs(normalCdf(-x) - want) / want, `x=${x}: ${normalCdf(-x)} vs ${want}`).toBeLessThanOrEqual(1e-12);
    }
  });

  it('the quantile of a tail probability round-trips relatively, and Phi^-1(1 - p) = -Phi^-1(p) for exact 1 - p', () => {
    for (const p of [1e-300, 1e-200, 1e-100, 1e-30, 1e-12]) {
      const back = normalCdf(normalQuantile(p));
      expect(Math.abs(back - p) / p, `p=${p}`).toBeLessThanOrEqual(1e-12);
    }
    for (const e of [3, 10, 20, 40, 50]) {
      const p = 2 ** -e; // 1 - p is exact
      expect(Math.abs(normalQuantile(1 - p) + normalQuantile(p)), `p=2^-${e}`).toBeLessThanOrEqual(1e-12 * Math.abs(normalQuantile(p)));
    }
  });
});

describe("superposition: firing kinds (SAELens' firing_probabilities.py)", () => {
  /** SAELens' zipfian_firing_probabilities written plainly (float64): ranks^-e min-max rescaled onto [minP, maxP]. */
  function zipfRef(n: number, e: number, maxP: number, minP: number): number[] {
    if (n === 1) return [maxP];
    const w = Array.from({ length: n }, (_, i) => 1 / (i + 1) ** e);
    const lo = Math.min(...w);
    const hi = Math.max(...w);
    return w.map((x) => minP + ((maxP - minP) * (x - lo)) / (hi - lo));
  }

  it("'zipf' rescales the ranks onto [minP, maxP] by default, with SAELens' defaults (exponent 1, 0.3, 0.01)", () => {
    const cases: [number, { exponent?: number; maxP?: number; minP?: number }, number, number, number][] = [
      [1000, {}, 1, 0.3, 0.01],
      [101, { exponent: 1.3, maxP: 0.4, minP: 0.003 }, 1.3, 0.4, 0.003],
      [64, { exponent: 0.05, maxP: 0.5 }, 0.05, 0.5, 0.01],
      [50, { exponent: 3, minP: 0 }, 3, 0.3, 0],
      [1, { exponent: 2, maxP: 0.2 }, 2, 0.2, 0.01],
    ];
    for (const [n, given, e, maxP, minP] of cases) {
      const got = superposition({ dIn: 2, numFeatures: n, firing: { kind: 'zipf', ...given } }).probabilities;
      const want = zipfRef(n, e, maxP, minP);
      expect(got[0], `n ${n}`).toBe(maxP);
      if (n > 1) expect(got[n - 1], `n ${n}`).toBe(minP);
      for (let i = 0; i < n; i++) expect(Math.abs(got[i]! - want[i]!), `n ${n} e ${e} feature ${i}: ${got[i]} vs ${want[i]}`).toBeLessThanOrEqual(1e-15);
    }
    // At the defaults over 1000 features a row has 11.88 features on average (the clipped
    // formula max(0.01, 0.3 / (i + 1)) gives 10.90).
    const l0 = superposition({ dIn: 2, numFeatures: 1000, firing: { kind: 'zipf' } }).probabilities.reduce((a, p) => a + p, 0);
    expect(l0).toBeCloseTo(zipfRef(1000, 1, 0.3, 0.01).reduce((a, p) => a + p, 0), 12);
    expect(l0).toBeCloseTo(11.88, 2);
    // A tiny exponent stays exact: t_i -> ln(n / (i + 1)) / ln n.
    const tiny = superposition({ dIn: 2, numFeatures: 9, firing: { kind: 'zipf', exponent: 1e-12, maxP: 1, minP: 0 } }).probabilities;
    for (let i = 0; i < 9; i++) expect(Math.abs(tiny[i]! - Math.log(9 / (i + 1)) / Math.log(9))).toBeLessThan(1e-9);
    // Down to the smallest subnormal exponent, p is the limit to double precision (the expm1
    // quotient was 0.11 off at 5e-324).
    for (const e of [1e-300, 1e-312, 1e-320, 5e-324]) {
      const q = superposition({ dIn: 2, numFeatures: 33, firing: { kind: 'zipf', exponent: e, maxP: 0.7, minP: 0.05 } }).probabilities;
      for (let i = 0; i < 33; i++) expect(Math.abs(q[i]! - (0.05 + (0.65 * Math.log(33 / (i + 1))) / Math.log(33))), `e ${e} feature ${i}`).toBeLessThan(1e-15);
    }
  });

  it("scale 'clip' is saekit 0.x's zipf: max(minP, maxP (i + 1)^-exponent) and the same rows as before", () => {
    const o = { dIn: 5, numFeatures: 40, numRows: 64, seed: 123 };
    const data = superposition({ ...o, firing: { kind: 'zipf', exponent: 0.9, maxP: 0.5, minP: 0.01, scale: 'clip' } });
    for (let i = 0; i < 40; i++) expect(data.probabilities[i]).toBe(Math.max(0.01, 0.5 * (i + 1) ** -0.9));
    // Pinned from saekit before zipf's default changed: { kind: 'zipf', exponent: 0.9, maxP: 0.5, minP: 0.01 } then.
    const rows = data.rows(0, 64);
    expect(Array.from(rows.subarray(0, 4))).toEqual([1.1319094896316528, 1.091726541519165, -0.2407529354095459, -0.4851321876049042]);
    expect(rows.reduce((a, v) => a + v, 0)).toBe(45.75390757713467);
    const codes = data.codes(0, 64);
    expect(codes.indices.length).toBe(173);
    expect(Array.from(codes.indices.subarray(0, 12))).toEqual([1, 3, 10, 23, 32, 1, 4, 0, 2, 11, 1, 2]);
    // The default scale is not the clipped one.
    const rescaled = superposition({ ...o, firing: { kind: 'zipf', exponent: 0.9, maxP: 0.5, minP: 0.01 } }).probabilities;
    expect(rescaled[5]).not.toBe(data.probabilities[5]);
  });

  it("'linear' is torch.linspace(maxP, minP, n) (defaults 0.3, 0.01); 'random' is minP + (maxP - minP) u from stream purpose 6 (defaults 0.5, 0.01)", () => {
    for (const n of [1, 2, 7, 100]) {
      const p = superposition({ dIn: 2, numFeatures: n, firing: { kind: 'linear' } }).probabilities;
      expect(p[0]).toBe(0.3);
      if (n > 1) expect(p[n - 1]).toBe(0.01);
      for (let i = 0; i < n; i++) expect(Math.abs(p[i]! - (0.3 + (i * (0.01 - 0.3)) / Math.max(1, n - 1))), `n ${n} i ${i}`).toBeLessThanOrEqual(1e-16);
    }
    // torch.linspace's formula: index i < floor(n / 2) from the start, the rest back from the end,
    // so the middle entry of an odd n comes from the end (fresh ranges, odd n).
    const r = lcg(freshSeed(61));
    for (let trial = 0; trial < 200; trial++) {
      const n = 3 + 2 * Math.floor(r() * 50);
      const maxP = 0.2 + 0.8 * r();
      const minP = maxP * r();
      const step = (minP - maxP) / (n - 1);
      const mid = (n - 1) / 2;
      const p = superposition({ dIn: 2, numFeatures: n, firing: { kind: 'linear', maxP, minP } }).probabilities;
      expect(p[mid], `n ${n} ${maxP} ${minP}`).toBe(minP - (n - 1 - mid) * step);
      expect(p[mid - 1]).toBe(maxP + (mid - 1) * step);
    }
    const seed = freshSeed(60);
    const n = 5000;
    const p = superposition({ dIn: 2, numFeatures: n, firing: { kind: 'random' }, seed }).probabilities;
    const again = superposition({ dIn: 3, numFeatures: n, firing: { kind: 'random' }, seed }).probabilities;
    const other = superposition({ dIn: 2, numFeatures: n, firing: { kind: 'random' }, seed: seed + 1 }).probabilities;
    expect(again).toEqual(p);
    expect(other).not.toEqual(p);
    // Uniform on [0.01, 0.5): every value inside, mean and variance of U(0.01, 0.5) within 5 sigma.
    let m = 0;
    let v = 0;
    for (const x of p) {
      expect(x >= 0.01 && x < 0.5).toBe(true);
      m += x / n;
    }
    for (const x of p) v += (x - m) ** 2 / (n - 1);
    const w = 0.49;
    expect(Math.abs(m - 0.255), `seed ${seed}`).toBeLessThan(5 * (w / Math.sqrt(12 * n)));
    expect(Math.abs(v - w * w / 12), `seed ${seed}`).toBeLessThan(5 * w * w * Math.sqrt(1 / 180 / n));
  });

  it("'probabilities' takes p as given (any ArrayLike); the rows' rates follow it", () => {
    const given = [0.5, 0, 1, 0.25, 0.01, 0.9];
    for (const p of [given, Float64Array.from(given), Float32Array.from(given)]) {
      const data = superposition({ dIn: 2, numFeatures: 6, firing: { kind: 'probabilities', p }, numRows: 200 });
      expect(Array.from(data.probabilities)).toEqual(Array.from(p));
      const counts = fireCounts(data.codes(0, 200), 6);
      expect(counts[1]).toBe(0);
      expect(counts[2]).toBe(200);
    }
  });
});

describe('shuffle: the epoch permutation', () => {
  it('for a few rows every order is equally likely (chi-square over the 120 orders of 5 rows, and positions of 7)', () => {
    const seed = BigInt(freshSeed(70));
    const epochs = 24000;
    const seen = new Map<string, number>();
    for (let e = 0; e < epochs; e++) {
      const perm = makePermutation(5, seed, e);
      const key = [0, 1, 2, 3, 4].map(perm).join();
      seen.set(key, (seen.get(key) ?? 0) + 1);
    }
    expect(seen.size).toBe(120);
    const want = epochs / 120;
    let chi2 = 0;
    for (const c of seen.values()) chi2 += (c - want) ** 2 / want;
    // 119 degrees of freedom: mean 119, sd 15.4; 119 + 6.5 sd has a right tail below 1e-6.
    // (The Feistel network alone gave 4273 on 1000 per order.)
    expect(chi2, `seed ${seed}`).toBeLessThanOrEqual(119 + 6.5 * Math.sqrt(2 * 119));
    // Where row 0 lands among 7 positions, and which row comes first: uniform (6 df each).
    const landing = new Float64Array(7);
    const first = new Float64Array(7);
    const runs = 14000;
    for (let e = 0; e < runs; e++) {
      const perm = makePermutation(7, seed, e);
      first[perm(0)]!++;
      for (let t = 0; t < 7; t++) if (perm(t) === 0) landing[t]!++;
    }
    for (const h of [landing, first]) {
      const x2 = h.reduce((a, c) => a + (c - runs / 7) ** 2 / (runs / 7), 0);
      expect(x2, `seed ${seed}: ${Array.from(h)}`).toBeLessThanOrEqual(6 + 6.5 * Math.sqrt(12));
    }
  });

  it('the same (n, seed, epoch) gives the same order; large n (above 2^16) stays a bijection', () => {
    const seed = BigInt(freshSeed(71));
    for (const n of [10, 65536, 65537, 100003]) {
      const a = makePermutation(n, seed, 3);
      const b = makePermutation(n, seed, 3);
      const c = makePermutation(n, seed, 4);
      const seen = new Uint8Array(n);
      let same = 0;
      for (let i = 0; i < n; i++) {
        const j = a(i);
        if (b(i) !== j) expect.fail(`n ${n} seed ${seed}: perm(${i}) = ${j} once, ${b(i)} again`);
        if (!(j >= 0 && j < n && seen[j] === 0)) expect.fail(`n ${n} seed ${seed}: perm(${i}) = ${j}`);
        seen[j] = 1;
        if (c(i) === j) same++;
      }
      expect(same, `n ${n}`).toBeLessThan(n);
    }
  });
});

describe('superposition: memory that cannot be had', () => {
  it('is ERR_SAEKIT_MEMORY naming the size and the option to lower (features, their copy, rows, codes, batches), not a bare RangeError', async () => {
    const firing = { kind: 'uniform', p: 0.5 } as const;
    const memory = async (fn: () => unknown, name: string, size: RegExp) => {
      let err: unknown;
      try {
        await fn();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(SaekitError);
      expect((err as SaekitError).code).toBe('ERR_SAEKIT_MEMORY');
      expect((err as SaekitError).message).toContain(name);
      expect((err as SaekitError).message).toMatch(size);
    };
    try {
      allocationHook.fails = (_what, bytes) => bytes > 2 ** 20;
      await memory(() => superposition({ dIn: 1024, numFeatures: 300, firing }), 'lower options.numFeatures or options.dIn', /300 x 1024 feature matrix needs 307200 float32 values \(1\.2 MiB\)/);
      const data = superposition({ dIn: 256, numFeatures: 100, firing, numRows: 100000 });
      await memory(() => data.rows(10, 1500), 'lower count', /rows\(10, 1500\) of 256 dimensions needs 384000 float32 values/);
      await memory(() => data.codes(0, 100000), 'lower count', /codes\(0, 100000\)/);
      await memory(async () => {
        for await (const b of data.source.batches({ batchSize: 2048 })) void b;
      }, 'lower batchSize', /a batch of 2048 rows of 256 dimensions/);
      allocationHook.fails = (what) => what.startsWith('the copy');
      await memory(() => superposition({ dIn: 8, numFeatures: 30, firing }), 'options.numFeatures', /copy of the 30 x 8 feature matrix/);
    } finally {
      allocationHook.fails = null;
    }
  });
});

describe('docs/random.md documents the synthetic generators\' streams', () => {
  it('has a section giving the counter layout, every tag and purpose, and the shuffle', async () => {
    const { readFileSync } = await import('node:fs');
    const doc = readFileSync(new URL('../docs/random.md', import.meta.url), 'utf8');
    const section = doc.split('## Synthetic data generators')[1];
    expect(section, 'docs/random.md has no "## Synthetic data generators" section').toBeDefined();
    expect(section).toContain('counter    = (index mod 2^32, index div 2^32, purpose, tag)');
    // The tags the generators use: a state under each matches the documented Philox block.
    for (const tag of [0x53594e54, 0x5348524b, 0x4d465247]) {
      expect(section).toContain(`0x${tag.toString(16)}`);
      const rng = new Rng(5n, tag);
      rng.reseed(3, 7);
      const block = new Uint32Array(4);
      philox4x32(7, 0, 3, tag, 5, 0, block);
      expect(rng.next()).toBe(Math.imul(((Math.imul(block[1]!, 5) << 7) | (Math.imul(block[1]!, 5) >>> 25)), 9) >>> 0);
    }
    for (const purpose of [1, 2, 3, 4, 5, 6]) expect(section).toMatch(new RegExp(`\\| ${purpose} \\|`));
    expect(section).toContain('Fisher-Yates');
    expect(section).toContain('(w >>> 21) / 2048');
  });
});

describe('the uniform magnitude is documented as U(0, 1], as drawn', () => {
  it('(w + 0.5) 2^-32 rounded to float32 reaches 1 at the top words and never 0; the option doc and the README say U(0, 1]', async () => {
    // The drawn value's range: the largest words round up to exactly 1, the smallest stays > 0.
    expect(Math.fround((2 ** 32 - 1 + 0.5) / 2 ** 32)).toBe(1);
    expect(Math.fround((2 ** 32 - 128 + 0.5) / 2 ** 32)).toBe(1); // the top 128 words: probability 2^-25
    expect(Math.fround(0.5 / 2 ** 32)).toBeGreaterThan(0);
    const { readFileSync } = await import('node:fs');
    const src = readFileSync(new URL('../lib/data/synthetic.ts', import.meta.url), 'utf8');
    const optionDoc = /\/\*\*([^*]|\*(?!\/))*\*\/\s*magnitude\?: Magnitude;/.exec(src)![0];
    expect(optionDoc).toContain('U(0, 1]');
    expect(optionDoc).not.toContain('U(0, 1)');
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
    expect(readme).toMatch(/U\(0, 1\] or ReLU-normal magnitudes/);
    expect(readme).not.toMatch(/U\(0, 1\) or ReLU-normal magnitudes/);
  });
});
