import { totalmem } from 'node:os';

import { describe, expect, it } from 'vitest';

import { fromArray, SaekitError, SparseAutoencoder } from '../lib/index.js';
import { correlation } from '../lib/features/correlation.js';
import { composeMatches, foldWeights, match, saeMatch } from '../lib/features/match.js';
import { bruteForceAssignment } from './helpers/eval-reference.js';
import { gapBound, watchCall } from './helpers/event-loop.js';
import { lcg } from './helpers/reference.js';
import { native } from '../lib/native/index.js';

function randomCorr(nA: number, nB: number, next: () => number): Float64Array {
  return Float64Array.from({ length: nA * nB }, () => next() * 2 - 1);
}

/**
 * Textbook O(n^2 m) Hungarian with potentials (Kuhn–Munkres, e-maxx form) minimising over an
 * [n, m] cost, n <= m, 1-based internally. Returns the optimal total.
 */
function textbookHungarianMin(a: Float64Array, n: number, m: number): number {
  const u = new Float64Array(n + 1);
  const v = new Float64Array(m + 1);
  const p = new Int32Array(m + 1);
  const way = new Int32Array(m + 1);
  for (let i = 1; i <= n; i++) {
    p[0] = i;
    let j0 = 0;
    const minv = new Float64Array(m + 1).fill(Infinity);
    const used = new Uint8Array(m + 1);
    do {
      used[j0] = 1;
      const i0 = p[j0]!;
      let delta = Infinity;
      let j1 = 0;
      for (let j = 1; j <= m; j++) {
        if (used[j]) continue;
        const cur = a[(i0 - 1) * m + (j - 1)]! - u[i0]! - v[j]!;
        if (cur < minv[j]!) {
          minv[j] = cur;
          way[j] = j0;
        }
        if (minv[j]! < delta) {
          delta = minv[j]!;
          j1 = j;
        }
      }
      for (let j = 0; j <= m; j++) {
        if (used[j]) {
          u[p[j]!]! += delta;
          v[j]! -= delta;
        } else minv[j]! -= delta;
      }
      j0 = j1;
    } while (p[j0] !== 0);
    do {
      const j1 = way[j0]!;
      p[j0] = p[j1]!;
      j0 = j1;
    } while (j0);
  }
  let total = 0;
  for (let j = 1; j <= m; j++) if (p[j]! > 0) total += a[(p[j]! - 1) * m + (j - 1)]!;
  return total;
}

function pairTotal(pairs: { score: number }[]): number {
  return pairs.reduce((s, p) => s + p.score, 0);
}

function isOneToOne(pairs: { a: number; b: number }[]): boolean {
  return new Set(pairs.map((p) => p.a)).size === pairs.length && new Set(pairs.map((p) => p.b)).size === pairs.length;
}

describe('match: argmax', () => {
  it('maps every B feature to its best A feature, ties to the lowest index', async () => {
    // nA = 3, nB = 4
    const corr = Float32Array.from([
      0.5, 0.1, 0.3, 0.2,
      0.9, 0.1, 0.3, -1,
      0.9, 0.0, 0.7, -2,
    ]);
    const r = await match(corr, { nA: 3, nB: 4, method: 'argmax' });
    expect(Array.from(r.bToA)).toEqual([1, 0, 2, 0]);
    expect(r.pairs.map((p) => [p.a, p.b])).toEqual([[0, 1], [0, 3], [1, 0], [2, 2]]);
    expect(r.pairs.find((p) => p.b === 2)!.score).toBeCloseTo(0.7, 6);
    expect(r.meanScore).toBeCloseTo((0.9 + 0.1 + 0.7 + 0.2) / 4, 6);
    // All equal: everything to A feature 0.
    const flat = await match(new Float64Array(6).fill(0.25), { nA: 3, nB: 2, method: 'argmax' });
    expect(Array.from(flat.bToA)).toEqual([0, 0]);
  });
});

/**
 * univ_feat_geom's pairing, written from docs/references.md §1.4 steps 1, 3 and 4 in float64: every B
 * feature's argmax A feature (ties to the lowest a); the "1-1" filter counts each A feature in that
 * unfiltered list, keeps A features seen once, and for the others only the first pair in B order;
 * then pairs with score > threshold (strict).
 */
function univFeatGeomPairs(corr: Float64Array, nA: number, nB: number, threshold: number): [number, number][] {
  const arg: number[] = [];
  for (let b = 0; b < nB; b++) {
    let best = 0;
    for (let a = 1; a < nA; a++) if (corr[a * nB + b]! > corr[best * nB + b]!) best = a;
    arg.push(best);
  }
  const count = new Map<number, number>();
  for (const a of arg) count.set(a, (count.get(a) ?? 0) + 1);
  const taken = new Set<number>();
  const out: [number, number][] = [];
  for (let b = 0; b < nB; b++) {
    const a = arg[b]!;
    if (count.get(a)! > 1) {
      if (taken.has(a)) continue;
      taken.add(a);
    }
    if (corr[a * nB + b]! > threshold) out.push([a, b]);
  }
  return out.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
}

describe('match: argmax with oneToOne (univ_feat_geom 1-1 filter)', () => {
  it('equals the reference pipeline on random matrices with many shared A features, before the threshold', async () => {
    const next = lcg(20261130);
    for (const [nA, nB] of [[1, 5], [3, 17], [7, 23], [29, 11], [40, 40]] as const) {
      const corr = randomCorr(nA, nB, next);
      for (const threshold of [-Infinity, 0.1, 0.53]) {
        const r = await match(corr, { nA, nB, method: 'argmax', oneToOne: true, ...(threshold > -Infinity ? { threshold } : {}) });
        const want = univFeatGeomPairs(corr, nA, nB, threshold);
        expect(r.pairs.map((p) => [p.a, p.b])).toEqual(want);
        expect(new Set(r.pairs.map((p) => p.a)).size).toBe(r.pairs.length); // one pair per A feature
        for (const p of r.pairs) expect(p.score).toBe(corr[p.a * nB + p.b]);
        const bToA = new Int32Array(nB).fill(-1);
        for (const [a, b] of want) bToA[b] = a;
        expect(Array.from(r.bToA)).toEqual(Array.from(bToA));
      }
    }
  });
  it('with strictThreshold keeps r > threshold as the reference does, also where a score equals it', async () => {
    const next = lcg(20261203);
    for (const [nA, nB] of [[3, 17], [7, 23], [29, 11]] as const) {
      const corr = randomCorr(nA, nB, next);
      // Thresholds that some kept pair's score equals exactly.
      const unfiltered = await match(corr, { nA, nB, method: 'argmax', oneToOne: true });
      const scores = unfiltered.pairs.map((p) => p.score).sort((x, y) => x - y);
      for (const threshold of [scores[0]!, scores[scores.length >> 1]!, scores[scores.length - 1]!]) {
        const strict = await match(corr, { nA, nB, method: 'argmax', oneToOne: true, threshold, strictThreshold: true });
        expect(strict.pairs.map((p) => [p.a, p.b])).toEqual(univFeatGeomPairs(corr, nA, nB, threshold));
        // The default keeps the pair that equals it.
        const loose = await match(corr, { nA, nB, method: 'argmax', oneToOne: true, threshold });
        expect(loose.pairs.length).toBe(strict.pairs.length + scores.filter((v) => v === threshold).length);
      }
    }
  });
  it('keeps the first pair in B order, not the best, and the threshold comes after it', async () => {
    // nA = 2, nB = 3: B features 0, 1 and 2 all have A feature 0 as their best.
    const corr = Float64Array.from([0.2, 0.9, 0.5, 0.1, 0.1, 0.1]);
    const r = await match(corr, { nA: 2, nB: 3, method: 'argmax', oneToOne: true });
    expect(r.pairs).toEqual([{ a: 0, b: 0, score: 0.2 }]);
    // Its first pair is under the threshold: A feature 0 keeps none (the better b = 1 is not promoted).
    expect((await match(corr, { nA: 2, nB: 3, method: 'argmax', oneToOne: true, threshold: 0.3 })).pairs).toEqual([]);
    // Without the filter, all three.
    expect((await match(corr, { nA: 2, nB: 3, method: 'argmax', oneToOne: false })).pairs.length).toBe(3);
  });
  it('is refused with other methods and for a non-boolean, naming options.oneToOne', async () => {
    const c = new Float64Array(6);
    for (const method of ['mutual', 'hungarian'] as const) {
      await expect(match(c, { nA: 2, nB: 3, method, oneToOne: true })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.oneToOne/) });
    }
    await expect(match(c, { nA: 2, nB: 3, method: 'argmax', oneToOne: 1 as unknown as boolean })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.oneToOne/) });
  });
});

describe('match: mutual nearest neighbours', () => {
  const corr = Float64Array.from([
    // b0   b1   b2   b3
    0.9, 0.8, 0.1, 0.0, // a0: best b0
    0.85, 0.7, 0.2, 0.1, // a1: best b0 (but b0's best is a0)
    0.1, 0.75, 0.6, 0.0, // a2: best b1; b1's best is a0 (0.8)
    0.0, 0.1, 0.65, 0.3, // a3: best b2; b2's best is a3
  ]);
  it('strict: keeps only pairs that are each other\'s argmax', async () => {
    const r = await match(corr, { nA: 4, nB: 4, method: 'mutual' });
    expect(r.pairs.map((p) => [p.a, p.b])).toEqual([[0, 0], [3, 2]]);
    expect(Array.from(r.bToA)).toEqual([0, -1, 3, -1]);
    expect(r.meanScore).toBeCloseTo((0.9 + 0.65) / 2, 12);
  });
  it("top-n: Rosetta Neurons' best buddies (a's best B feature must have a in its top-n)", async () => {
    const r = await match(corr, { nA: 4, nB: 4, method: 'mutual', top: 2 });
    // Row bests: a0 b0, a1 b0, a2 b1, a3 b2.
    // Col tops (2): b0 {a0,a1}, b1 {a0,a2}, b2 {a3,a2}, b3 {a3,a1}: all four kept.
    expect(r.pairs.map((p) => [p.a, p.b])).toEqual([[0, 0], [1, 0], [2, 1], [3, 2]]);
    // bToA picks the best-scoring pair of each B feature.
    expect(Array.from(r.bToA)).toEqual([0, 2, 3, -1]);
    // top large enough: every A feature keeps its best B feature, and only that one.
    expect((await match(corr, { nA: 4, nB: 4, method: 'mutual', top: 10 })).pairs.map((p) => [p.a, p.b])).toEqual([[0, 0], [1, 0], [2, 1], [3, 2]]);
    // Against the rule written out, on random matrices of odd sizes.
    const next = lcg(77);
    for (const [nA, nB, top] of [[7, 23, 2], [23, 7, 3], [60, 45, 3], [5, 5, 5]] as const) {
      const c = randomCorr(nA, nB, next);
      const want: number[][] = [];
      for (let a = 0; a < nA; a++) {
        let b = 0;
        for (let j = 1; j < nB; j++) if (c[a * nB + j]! > c[a * nB + b]!) b = j;
        const rank = Array.from({ length: nA }, (_, i) => i).sort((x, y) => c[y * nB + b]! - c[x * nB + b]! || x - y);
        if (rank.slice(0, top).includes(a)) want.push([a, b]);
      }
      const got = await match(c, { nA, nB, method: 'mutual', top });
      expect(got.pairs.map((p) => [p.a, p.b])).toEqual(want);
    }
  });
  it('breaks ties by the lowest index', async () => {
    const tie = Float64Array.from([1, 1, 1, 1]);
    const r = await match(tie, { nA: 2, nB: 2, method: 'mutual' });
    expect(r.pairs.map((p) => [p.a, p.b])).toEqual([[0, 0]]);
  });
});

describe('match: large matrices, row-major and in chunks', () => {
  /** The column-by-column rules written out (the pre-chunking implementation's semantics). */
  function refArgmax(c: Float32Array | Float64Array, nA: number, nB: number): number[][] {
    const out: number[][] = [];
    for (let b = 0; b < nB; b++) {
      let a0 = 0;
      for (let a = 1; a < nA; a++) if (c[a * nB + b]! > c[a0 * nB + b]!) a0 = a;
      out.push([a0, b]);
    }
    return out.sort((x, y) => x[0]! - y[0]! || x[1]! - y[1]!);
  }
  function refMutual(c: Float32Array | Float64Array, nA: number, nB: number, top: number): number[][] {
    const out: number[][] = [];
    for (let a = 0; a < nA; a++) {
      let b = 0;
      for (let j = 1; j < nB; j++) if (c[a * nB + j]! > c[a * nB + b]!) b = j;
      // a is in b's top-n when fewer than n rows beat it (a higher value, or equal and lower index).
      let ahead = 0;
      for (let i = 0; i < nA; i++) if (c[i * nB + b]! > c[a * nB + b]! || (c[i * nB + b] === c[a * nB + b] && i < a)) ahead++;
      if (ahead < top) out.push([a, b]);
    }
    return out;
  }

  it('argmax and mutual equal the column-wise rules on matrices spanning several chunks, with many ties', async () => {
    const next = lcg(4242);
    // Values on a coarse grid (many ties), float32 and float64, odd sizes; 801 x 677 spans
    // several 512k-value chunks.
    for (const [nA, nB, Arr] of [[801, 677, Float32Array], [37, 1, Float64Array], [1, 41, Float32Array], [613, 299, Float64Array]] as const) {
      const c = new Arr(nA * nB).map(() => Math.round(next() * 16) / 16);
      const got = await match(c, { nA, nB, method: 'argmax' });
      expect(got.pairs.map((p) => [p.a, p.b])).toEqual(refArgmax(c, nA, nB));
      for (const top of [1, 3, nA + 5]) {
        const m = await match(c, { nA, nB, method: 'mutual', top });
        expect(m.pairs.map((p) => [p.a, p.b])).toEqual(refMutual(c, nA, nB, top));
      }
    }
  });

  it('mutual equals the rule on many small matrices of a few levels: a tie at the end of a top list, and between pairs of one B feature in bToA, goes to the lower index', async () => {
    const seed = (Date.now() ^ 0x68e31da4) >>> 0;
    const next = lcg(seed);
    for (let trial = 0; trial < 400; trial++) {
      const nA = 3 + Math.floor(next() * 10);
      const nB = 1 + Math.floor(next() * 6);
      const levels = 2 + Math.floor(next() * 3);
      const top = 1 + Math.floor(next() * (nA - 1));
      const c = Float64Array.from({ length: nA * nB }, () => Math.floor(next() * levels) / levels);
      const got = await match(c, { nA, nB, method: 'mutual', top });
      const ctx = `seed ${seed} trial ${trial}: ${nA} x ${nB}, top ${top}`;
      const want = refMutual(c, nA, nB, top);
      expect(got.pairs.map((p) => [p.a, p.b]), ctx).toEqual(want);
      // bToA: each B feature's highest-scoring kept pair, ties to the lowest a (pairs come by a).
      const bToA = new Array<number>(nB).fill(-1);
      for (const [a, b] of want) if (bToA[b!] === -1 || c[a! * nB + b!]! > c[bToA[b!]! * nB + b!]!) bToA[b!] = a!;
      expect(Array.from(got.bToA), ctx).toEqual(bToA);
    }
  });

  it('gives the event loop turns while it scans a large matrix, and reports the first non-finite value', async () => {
    const next = lcg(9);
    const n = 1100; // 1.21M values: three chunks
    const c = Float32Array.from({ length: n * n }, () => next());
    for (const method of ['argmax', 'mutual'] as const) {
      let ticks = 0;
      let stop = false;
      const tick = (): void => {
        ticks++;
        if (!stop) setImmediate(tick);
      };
      setImmediate(tick);
      const p = match(c, { nA: n, nB: n, method });
      const before = ticks;
      await p;
      stop = true;
      // A synchronous scan would let no tick run between the call and its settlement.
      expect(ticks - before).toBeGreaterThanOrEqual(2);
    }
    const bad = c.slice();
    bad[n * 800 + 7] = Infinity;
    bad[n * 900] = NaN;
    for (const method of ['argmax', 'mutual', 'hungarian'] as const) {
      await expect(match(bad, { nA: n, nB: n, method })).rejects.toMatchObject({ code: 'ERR_SAEKIT_NONFINITE', message: `Expected finite number for corr[${n * 800 + 7}] but received Infinity (number)` });
    }
    // A correlation() result's matrix is named corr.r (its length and its values; they said corr).
    const x = Float32Array.from({ length: 40 }, (_, i) => Math.sin(i * 1.3));
    const res = await correlation({ source: fromArray(x, 4) }, { source: fromArray(x.map((v) => v * v), 4) }, { kind: 'dense' });
    if (res.mode !== 'full') throw new Error('expected a full matrix');
    const short = { ...res, r: res.r.subarray(0, 15) };
    const nonFinite = { ...res, r: res.r.map((v, i) => (i === 6 ? NaN : v)) };
    for (const method of ['argmax', 'mutual', 'hungarian'] as const) {
      await expect(match(short, { method })).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE', message: 'Expected an array of length nA * nB = 16 for corr.r but received a Float32Array of length 15' });
      await expect(match(nonFinite, { method })).rejects.toMatchObject({ code: 'ERR_SAEKIT_NONFINITE', message: expect.stringMatching(/^Expected .*corr\.r\b.*NaN/) });
    }
  });
});

describe('match: hungarian', () => {
  it('equals brute force over all matchings for n <= 7 (square and rectangular)', async () => {
    const next = lcg(12345);
    const shapes: [number, number][] = [[1, 1], [2, 2], [3, 3], [5, 5], [7, 7], [2, 5], [5, 2], [4, 7], [7, 4], [6, 3], [1, 6]];
    for (const [nA, nB] of shapes) {
      for (let rep = 0; rep < 3; rep++) {
        const c = randomCorr(nA, nB, next);
        const r = await match(c, { nA, nB });
        expect(r.pairs.length).toBe(Math.min(nA, nB));
        expect(isOneToOne(r.pairs)).toBe(true);
        expect(pairTotal(r.pairs)).toBeCloseTo(bruteForceAssignment(c, nA, nB, true), 10);
        // The textbook oracle used below agrees with brute force too.
        const n = Math.min(nA, nB);
        const m = Math.max(nA, nB);
        const neg = Float64Array.from({ length: n * m }, (_, k) => -(nA <= nB ? c[k]! : c[(k % m) * nB + Math.floor(k / m)]!));
        expect(-textbookHungarianMin(neg, n, m)).toBeCloseTo(bruteForceAssignment(c, nA, nB, true), 10);
      }
    }
  });
  it('equals an independent textbook Hungarian on 100x100 and 60x90 (and 90x60)', async () => {
    const next = lcg(777);
    for (const [nA, nB] of [[100, 100], [60, 90], [90, 60]] as [number, number][]) {
      const c = randomCorr(nA, nB, next);
      const r = await match(Float32Array.from(c), { nA, nB, method: 'hungarian' });
      expect(isOneToOne(r.pairs)).toBe(true);
      expect(r.pairs.length).toBe(Math.min(nA, nB));
      // Textbook: minimise the negated scores with rows = the smaller side (as float32 values).
      const f = Float32Array.from(c);
      const n = Math.min(nA, nB);
      const m = Math.max(nA, nB);
      const neg = new Float64Array(n * m);
      for (let i = 0; i < n; i++) for (let j = 0; j < m; j++) neg[i * m + j] = -(nA <= nB ? f[i * nB + j]! : f[j * nB + i]!);
      expect(pairTotal(r.pairs)).toBeCloseTo(-textbookHungarianMin(neg, n, m), 8);
    }
  });
});

describe('match: threshold and validation', () => {
  it('drops pairs whose score is below the threshold', async () => {
    const corr = Float64Array.from([0.9, 0.05, 0.05, 0.1, 0.3, 0.2]);
    const all = await match(corr, { nA: 2, nB: 3, method: 'argmax' });
    expect(Array.from(all.bToA)).toEqual([0, 1, 1]);
    const kept = await match(corr, { nA: 2, nB: 3, method: 'argmax', threshold: 0.25 });
    expect(kept.pairs.map((p) => [p.a, p.b])).toEqual([[0, 0], [1, 1]]);
    expect(Array.from(kept.bToA)).toEqual([0, 1, -1]);
    expect(kept.meanScore).toBeCloseTo(0.6, 12);
    // Kept when equal to the threshold, unless strictThreshold.
    expect((await match(corr, { nA: 2, nB: 3, method: 'argmax', threshold: 0.3 })).pairs.length).toBe(2);
    expect((await match(corr, { nA: 2, nB: 3, method: 'argmax', threshold: 0.3, strictThreshold: true })).pairs).toEqual([{ a: 0, b: 0, score: 0.9 }]);
    expect((await match(corr, { nA: 2, nB: 3, method: 'argmax', threshold: 0.3, strictThreshold: false })).pairs.length).toBe(2);
    const none = await match(corr, { nA: 2, nB: 3, method: 'hungarian', threshold: 5 });
    expect(none.pairs).toEqual([]);
    expect(Array.from(none.bToA)).toEqual([-1, -1, -1]);
    expect(none.meanScore).toBeNaN();
  });
  it('rejects bad input with named SaekitErrors', async () => {
    const c = new Float64Array(6);
    const bad = async (f: () => unknown, code: string, text: RegExp) => {
      try {
        await f();
      } catch (e) {
        expect(e).toBeInstanceOf(SaekitError);
        expect((e as SaekitError).code).toBe(code);
        expect((e as Error).message).toMatch(text);
        return;
      }
      throw new Error('did not throw');
    };
    await bad(() => match([0, 1] as unknown as Float64Array, { nA: 1, nB: 2 }), 'ERR_SAEKIT_ARG', /corr/);
    await bad(() => match(c, { nA: 2, nB: 2 }), 'ERR_SAEKIT_SHAPE', /corr/);
    await bad(() => match(c, { nA: 2.5, nB: 2 }), 'ERR_SAEKIT_ARG', /options\.nA/);
    await bad(() => match(c, { nA: 2, nB: 3, method: 'greedy' as 'argmax' }), 'ERR_SAEKIT_ARG', /options\.method/);
    await bad(() => match(c, { nA: 2, nB: 3, method: 'mutual', top: 0 }), 'ERR_SAEKIT_ARG', /options\.top/);
    await bad(() => match(c, { nA: 2, nB: 3, strictThreshold: 1 as unknown as boolean }), 'ERR_SAEKIT_ARG', /options\.strictThreshold/);
    await bad(() => match(c, { nA: 2, nB: 3, threshold: NaN }), 'ERR_SAEKIT_ARG', /options\.threshold/);
    await bad(() => match(Float64Array.from([0, NaN, 0, 0, 0, 0]), { nA: 2, nB: 3 }), 'ERR_SAEKIT_NONFINITE', /corr\[1\]/);
  });
  it('a plain matrix needs nA and nB: the call without them does not compile and is refused at run time', async () => {
    const c = new Float32Array(4);
    // The @ts-expect-error lines are checked by `npm run typecheck`: they fail it if the call compiles.
    // @ts-expect-error options (nA, nB) are required with a plain matrix
    await expect(match(c)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/an options object with nA and nB for options/) });
    // @ts-expect-error nB is required with a plain matrix
    await expect(match(c, { nA: 2, method: 'argmax' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.nB/) });
    // @ts-expect-error nA is required with a plain matrix
    await expect(match(new Float64Array(4), {})).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.nA/) });
    expect((await match(c, { nA: 2, nB: 2, method: 'argmax' })).bToA.length).toBe(2);
  });
});

/** A random permutation of 0..n-1. */
function randomPermutation(n: number, next: () => number): Int32Array {
  const p = Int32Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [p[i], p[j]] = [p[j]!, p[i]!];
  }
  return p;
}

interface RawWeights {
  W_enc: Float32Array;
  b_enc: Float32Array;
  W_dec: Float32Array;
  b_dec: Float32Array;
  threshold?: Float32Array;
}

/** Random weights with unit decoder rows and W_enc = W_dec^T (plus a bias), [n latents, d]. */
function randomWeights(n: number, d: number, next: () => number, jumprelu: boolean): RawWeights {
  const W_dec = new Float32Array(n * d);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let c = 0; c < d; c++) {
      W_dec[i * d + c] = next() * 2 - 1;
      s += W_dec[i * d + c]! ** 2;
    }
    for (let c = 0; c < d; c++) W_dec[i * d + c]! /= Math.sqrt(s);
  }
  const W_enc = new Float32Array(d * n);
  for (let r = 0; r < d; r++) for (let i = 0; i < n; i++) W_enc[r * n + i] = W_dec[i * d + r]! + 0.1 * (next() - 0.5);
  const b_enc = Float32Array.from({ length: n }, () => 0.1 * (next() - 0.5));
  const b_dec = Float32Array.from({ length: d }, () => 0.1 * (next() - 0.5));
  const w: RawWeights = { W_enc, b_enc, W_dec, b_dec };
  if (jumprelu) w.threshold = Float32Array.from({ length: n }, () => 0.05 + 0.5 * next());
  return w;
}

/**
 * B = A with latent j of B = latent perm[j]... defined so that latent i of A is latent q[i] of B,
 * plus noise, and (scales) decoder rows times s_j with encoder column, b_enc and threshold / s_j.
 */
function permuted(w: RawWeights, n: number, d: number, q: Int32Array, next: () => number, noise: number, scales?: Float64Array): RawWeights {
  const W_enc = new Float32Array(d * n);
  const W_dec = new Float32Array(n * d);
  const b_enc = new Float32Array(n);
  const threshold = w.threshold ? new Float32Array(n) : undefined;
  for (let i = 0; i < n; i++) {
    const j = q[i]!;
    const s = scales ? scales[j]! : 1;
    for (let c = 0; c < d; c++) W_dec[j * d + c] = s * (w.W_dec[i * d + c]! + noise * (next() - 0.5));
    for (let r = 0; r < d; r++) W_enc[r * n + j] = (w.W_enc[r * n + i]! + noise * (next() - 0.5)) / s;
    b_enc[j] = w.b_enc[i]! / s;
    if (threshold) threshold[j] = w.threshold![i]! / s;
  }
  const out: RawWeights = { W_enc, b_enc, W_dec, b_dec: w.b_dec.slice() };
  if (threshold) out.threshold = threshold;
  return out;
}

describe('saeMatch', () => {
  const n = 40;
  const d = 16;
  it('recovers a random permutation of a TopK SAE with small noise (decoder, and with encoder)', async () => {
    const next = lcg(2024);
    const wA = randomWeights(n, d, next, false);
    const q = randomPermutation(n, next);
    const wB = permuted(wA, n, d, q, next, 0.01);
    const A = SparseAutoencoder.fromWeights(wA, { k: 4 });
    const B = SparseAutoencoder.fromWeights(wB, { k: 4 });
    for (const encoder of [false, true]) {
      const r = await saeMatch(A, B, { encoder });
      expect(Array.from(r.permutation)).toEqual(Array.from(q));
      expect(r.mse.length).toBe(n);
      expect(r.meanMse).toBeGreaterThan(0);
      expect(r.meanMse).toBeLessThan(1e-4);
      expect(r.meanMse).toBeCloseTo(r.mse.reduce((s, x) => s + x, 0) / n, 15);
    }
    // Matching an SAE to itself: identity with zero MSE.
    const self = await saeMatch(A, A);
    expect(Array.from(self.permutation)).toEqual(Array.from({ length: n }, (_, i) => i));
    expect(self.meanMse).toBe(0);
    // The n x n assignment's memory (12 bytes a pair) is checked against maxBytes before any work.
    await expect(saeMatch(A, B, { maxBytes: 12 * n * n - 1 })).rejects.toMatchObject({
      code: 'ERR_SAEKIT_MEMORY',
      message: expect.stringMatching(new RegExp(`^the ${n} x ${n} assignment of saeMatch needs about ${12 * n * n} bytes .* over options\\.maxBytes = ${12 * n * n - 1}$`)),
    });
    expect(Array.from((await saeMatch(A, B, { maxBytes: 12 * n * n })).permutation)).toEqual(Array.from(q));
    await expect(saeMatch(A, B, { maxBytes: 0 })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.maxBytes/) });
    A.dispose();
    B.dispose();
    // The default is half the machine's memory: 65536 latents (48 GiB) is refused up front on a
    // machine under 96 GiB (an SAE of dIn 1 is small; only the latents count).
    if (totalmem() < 96 * 2 ** 30) {
      using wide = SparseAutoencoder.create({ dIn: 1, numLatents: 65536, k: 1, seed: 1 });
      await expect(saeMatch(wide, wide)).rejects.toMatchObject({ code: 'ERR_SAEKIT_MEMORY', message: expect.stringMatching(/needs about 51539607552 bytes \(48\.0 GiB\), over options\.maxBytes = \d+ \(half this machine's memory\)$/) });
    }
  });

  it('with fold, recovers the permutation of a JumpReLU SAE whose latents are rescaled', async () => {
    const next = lcg(99);
    const wA = randomWeights(n, d, next, true);
    const q = randomPermutation(n, next);
    const scales = Float64Array.from({ length: n }, () => Math.exp(3 * (next() - 0.5) * 2));
    const wB = permuted(wA, n, d, q, next, 0.002, scales);
    const A = SparseAutoencoder.fromWeights(wA, { architecture: 'jumprelu' });
    const B = SparseAutoencoder.fromWeights(wB, { architecture: 'jumprelu' });
    // The rescaled B reconstructs exactly as A does on permuted-free inputs (noise aside): check
    // with the noise-free version.
    const wB0 = permuted(wA, n, d, q, () => 0.5, 0, scales);
    const B0 = SparseAutoencoder.fromWeights(wB0, { architecture: 'jumprelu' });
    const x = Float32Array.from({ length: 32 * d }, () => 2 * next() - 1);
    const ra = (await A.forward(x)).recon;
    const rb = (await B0.forward(x)).recon;
    for (let i = 0; i < ra.length; i++) expect(rb[i]).toBeCloseTo(ra[i]!, 4);

    const folded = await saeMatch(A, B);
    expect(Array.from(folded.permutation)).toEqual(Array.from(q));
    expect(folded.meanMse).toBeLessThan(1e-4);
    const folded0 = await saeMatch(A, B0, { fold: true, encoder: true });
    expect(Array.from(folded0.permutation)).toEqual(Array.from(q));
    expect(folded0.meanMse).toBeLessThan(1e-9);
    // Without folding the scales dominate the cost and the match is worse.
    const unfolded = await saeMatch(A, B, { fold: false });
    expect(unfolded.meanMse).toBeGreaterThan(folded.meanMse);
  });

  it('folding leaves reconstructions unchanged', async () => {
    const next = lcg(5);
    const w = randomWeights(n, d, next, true);
    const sae = SparseAutoencoder.fromWeights(w, { architecture: 'jumprelu' });
    const f = foldWeights(await sae.weights());
    expect(Array.from(f.threshold!)).toEqual(new Array(n).fill(1));
    const foldedSae = SparseAutoencoder.fromWeights(f, { architecture: 'jumprelu' });
    const x = Float32Array.from({ length: 64 * d }, () => 2 * next() - 1);
    const before = await sae.decode(await sae.encode(x));
    const after = await foldedSae.decode(await foldedSae.encode(x));
    let fired = 0;
    const codes = await sae.encode(x);
    for (const v of codes.values) if (v > 0) fired++;
    expect(fired).toBeGreaterThan(0);
    for (let i = 0; i < before.length; i++) expect(Math.abs(after[i]! - before[i]!)).toBeLessThan(1e-5);
    // TopK (no thresholds): folding is the identity.
    const t = SparseAutoencoder.fromWeights(randomWeights(n, d, next, false), { k: 3 });
    const tw = await t.weights();
    const tf = foldWeights(tw);
    expect(tf.W_dec).toEqual(tw.W_dec);
    expect(tf.W_enc).toEqual(tw.W_enc);
    expect(tf.threshold).toBeUndefined();
  });

  it('a threshold of 0 cannot be folded: the error names saeA or saeB and fold: false, which then matches the raw weights', async () => {
    const next = lcg(61);
    const [n, d] = [7, 5];
    const w = randomWeights(n, d, next, true);
    const wz = { ...w, threshold: w.threshold!.slice() };
    wz.threshold[3] = 0;
    using A = SparseAutoencoder.fromWeights(w, { architecture: 'jumprelu' });
    using Z = SparseAutoencoder.fromWeights(wz, { architecture: 'jumprelu' });
    await expect(saeMatch(A, Z)).rejects.toMatchObject({
      code: 'ERR_SAEKIT_ARG',
      message: 'Expected a finite number > 0 (folding divides by it) for saeB.threshold[3] but received 0 (number); pass fold: false to match without folding',
    });
    await expect(saeMatch(Z, A)).rejects.toMatchObject({ message: expect.stringMatching(/for saeA\.threshold\[3\]/) });
    expect(() => foldWeights(wz)).toThrow(/for weights\.threshold\[3\] but received 0 \(number\)$/);
    // A finite weight whose folded value overflows float32 (W_enc / a tiny threshold) is refused
    // naming the latent (it was matched as an infinite parameter, the error blaming the weights).
    const wt = { ...w, W_enc: w.W_enc.slice(), threshold: w.threshold!.slice() };
    wt.threshold[2] = 1e-30;
    wt.W_enc[4 * n + 2] = 1e10; // row 4, latent 2: 1e40 folded
    expect(() => foldWeights(wt)).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_NONFINITE', message: expect.stringMatching(/^Expected folded weights within float32's range but the weights' latent 2 folds W_enc\[4\]\[2\] \/ threshold\[2\] = 10000000000 to Infinity \(threshold\[2\] = 1\.0000000031710769e-30\)$/) }),
    );
    using T = SparseAutoencoder.fromWeights(wt, { architecture: 'jumprelu' });
    await expect(saeMatch(A, T, { encoder: true })).rejects.toMatchObject({
      code: 'ERR_SAEKIT_NONFINITE',
      message: expect.stringMatching(/but saeB's latent 2 folds W_enc\[4\]\[2\] .*; pass fold: false to match without folding$/),
    });
    // Matching the decoder rows alone reads no folded encoder: it still matches.
    expect((await saeMatch(A, T)).permutation).toHaveLength(n);
    // Unfolded, the weights are equal up to the threshold: the identity, MSE 0.
    const r = await saeMatch(A, Z, { fold: false });
    expect(Array.from(r.permutation)).toEqual(Array.from({ length: n }, (_, i) => i));
    expect(r.meanMse).toBe(0);
  });

  it('rejects mismatched sizes and bad arguments', async () => {
    const next = lcg(8);
    const A = SparseAutoencoder.fromWeights(randomWeights(10, 8, next, false), { k: 2 });
    const B = SparseAutoencoder.fromWeights(randomWeights(12, 8, next, false), { k: 2 });
    const C = SparseAutoencoder.fromWeights(randomWeights(10, 6, next, false), { k: 2 });
    await expect(saeMatch(A, B)).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE', message: expect.stringMatching(/numLatents/) });
    await expect(saeMatch(A, C)).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE', message: expect.stringMatching(/dIn/) });
    await expect(saeMatch(A, {} as SparseAutoencoder)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/saeB/) });
    await expect(saeMatch(A, A, { fold: 1 as unknown as boolean })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.fold/) });
    await expect(saeMatch(A, A, { encoder: 'yes' as unknown as boolean })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.encoder/) });
    const w = randomWeights(4, 3, next, true);
    w.threshold![2] = 0;
    expect(() => foldWeights(w)).toThrow(/threshold\[2\]/);
  });
});

describe('saeMatch: options.signal', () => {
  it('an aborted signal rejects before any work; an abort between the cost chunks rejects with its reason, frees the assignment and never runs the solver; without one the result is unchanged', async () => {
    const next = lcg(515);
    // 1024 latents: the cost goes to the solver in two chunks of 512 rows (2^19 values).
    const n = 1024;
    const d = 4;
    const wA = randomWeights(n, d, next, false);
    const wB = permuted(wA, n, d, randomPermutation(n, next), next, 0.01);
    using A = SparseAutoencoder.fromWeights(wA, { k: 2 });
    using B = SparseAutoencoder.fromWeights(wB, { k: 2 });
    const addon = native() as unknown as Record<string, (...args: unknown[]) => unknown>;
    const calls = { weights: 0, append: 0, run: 0, free: 0 };
    const saved = { weights: A.weights, lapAppend: addon.lapAppend!, lapRun: addon.lapRun!, lapFree: addon.lapFree! };
    A.weights = ((...args: Parameters<typeof A.weights>) => {
      calls.weights++;
      return saved.weights.apply(A, args);
    }) as typeof A.weights;
    const ctrl = new AbortController();
    const reason = new Error('enough');
    addon.lapAppend = (...args: unknown[]) => {
      calls.append++;
      ctrl.abort(reason);
      return saved.lapAppend(...args);
    };
    addon.lapRun = (...args: unknown[]) => {
      calls.run++;
      return saved.lapRun(...args);
    };
    addon.lapFree = (...args: unknown[]) => {
      calls.free++;
      return saved.lapFree(...args);
    };
    try {
      const before = AbortSignal.abort();
      await expect(saeMatch(A, B, { signal: before })).rejects.toBe(before.reason);
      expect(calls.weights).toBe(0);
      await expect(saeMatch(A, B, { signal: ctrl.signal })).rejects.toBe(reason);
      expect(calls).toMatchObject({ weights: 1, append: 1, run: 0, free: 1 });
    } finally {
      addon.lapAppend = saved.lapAppend;
      addon.lapRun = saved.lapRun;
      addon.lapFree = saved.lapFree;
    }
    // Aborted while the solver runs: seen when it returns.
    const late = new AbortController();
    addon.lapRun = (...args: unknown[]) => {
      late.abort();
      return saved.lapRun(...args);
    };
    try {
      await expect(saeMatch(A, B, { signal: late.signal })).rejects.toMatchObject({ name: 'AbortError' });
    } finally {
      addon.lapRun = saved.lapRun;
    }
    const plain = await saeMatch(A, B, { encoder: true });
    const signalled = await saeMatch(A, B, { encoder: true, signal: new AbortController().signal });
    expect(Array.from(signalled.permutation)).toEqual(Array.from(plain.permutation));
    expect(Array.from(signalled.mse)).toEqual(Array.from(plain.mse));
    for (const bad of [{}, 'stop', { aborted: false, addEventListener() {} }]) {
      await expect(saeMatch(A, B, { signal: bad as unknown as AbortSignal })).rejects.toMatchObject({
        code: 'ERR_SAEKIT_ARG',
        message: expect.stringMatching(/options\.signal/),
      });
    }
  });
});

describe('composeMatches', () => {
  it('equals a direct construction of A -> D', () => {
    const next = lcg(31);
    const n = 25;
    // Latent i of A is latent x_i of a common "identity" space; each SAE holds the space permuted.
    const sA = randomPermutation(n, next);
    const sB = randomPermutation(n, next);
    const sC = randomPermutation(n, next);
    const sD = randomPermutation(n, next);
    const inv = (p: Int32Array) => {
      const r = new Int32Array(p.length);
      p.forEach((v, i) => (r[v] = i));
      return r;
    };
    // X->Y maps latent i of X to the latent of Y holding the same identity: inv(sY)[sX[i]].
    const map = (sx: Int32Array, sy: Int32Array) => Int32Array.from(sx, (v) => inv(sy)[v]!);
    const ab = map(sA, sB);
    const bc = map(sB, sC);
    const cd = map(sC, sD);
    expect(Array.from(composeMatches(ab, bc, cd))).toEqual(Array.from(map(sA, sD)));
    expect(Array.from(composeMatches(ab))).toEqual(Array.from(ab));
    // Rectangular chains: 3 -> 4 -> 2.
    const r = composeMatches(Int32Array.from([3, 0, 2]), Int32Array.from([1, -1, 0, 1]));
    expect(Array.from(r)).toEqual([1, 1, 0]);
  });
  it('propagates -1', () => {
    const ab = Int32Array.from([1, -1, 2, 0]);
    const bc = Int32Array.from([2, -1, 0]);
    const cd = Int32Array.from([3, -1, 1]);
    expect(Array.from(composeMatches(ab, bc, cd))).toEqual([-1, -1, 3, 1]);
  });
  it('rejects bad input', () => {
    expect(() => composeMatches()).toThrow(SaekitError);
    expect(() => composeMatches([0, 1] as unknown as Int32Array)).toThrow(/perms\[0\]/);
    expect(() => composeMatches(Int32Array.from([0, 3]), Int32Array.from([0, 1]))).toThrow(/perms\[0\]\[1\]/);
    expect(() => composeMatches(Int32Array.from([0, -2]), Int32Array.from([0, 1]))).toThrow(/perms\[0\]\[1\]/);
  });
});

describe('saeMatch shares the JS thread with the event loop', () => {
  // Synchronous, building both SAEs' parameter vectors (encoder columns included, read across
  // rows of W_enc) held the JS thread ~530 ms at these sizes on the loaded 2-core development
  // machine, and the finite check and norms another 300 ms; in ~20 ms slices the longest gap there
  // was 90-140 ms. Few latents keep the GEMM and the solver short, so the call's length (and the
  // bound, a sixth of it) stays below the old stall.
  it('512 latents, dIn 16384, with encoder columns: a permutation whose mse matches a float64 reference', async () => {
    const seed = Date.now() >>> 0;
    const [n, d] = [512, 16384];
    const A = SparseAutoencoder.create({ dIn: d, numLatents: n, k: 8, seed });
    const B = SparseAutoencoder.create({ dIn: d, numLatents: n, k: 8, seed: seed + 1 });
    const { value: r, elapsed, longest, firings } = await watchCall(() => saeMatch(A, B, { encoder: true }));
    expect(longest, `seed ${seed}: longest gap of a ${elapsed.toFixed(0)} ms call`).toBeLessThan(gapBound(elapsed));
    expect(firings).toBeGreaterThan(elapsed / 50);
    const [wA, wB] = [await A.weights(), await B.weights()];
    A.dispose();
    B.dispose();
    expect([...r.permutation].sort((x, y) => x - y)).toEqual(Array.from({ length: n }, (_, i) => i));
    const next = lcg(seed);
    for (let s = 0; s < 50; s++) {
      const i = Math.floor(next() * n);
      const j = r.permutation[i]!;
      let s2 = 0;
      for (let c = 0; c < d; c++) s2 += (wA.W_dec[i * d + c]! - wB.W_dec[j * d + c]!) ** 2 + (wA.W_enc[c * n + i]! - wB.W_enc[c * n + j]!) ** 2;
      expect(Math.abs(r.mse[i]! - s2 / (2 * d)), `seed ${seed}: latent ${i}`).toBeLessThan(1e-12 * (1 + s2));
    }
  }, 60_000);
});

describe('match: the matrix detached while the call runs', () => {
  // Read across pauses, a detached matrix read undefined: argmax and mutual failed with
  // ERR_SAEKIT_NONFINITE "corr[...] ... undefined", hungarian with a bare TypeError (subarray of a
  // detached buffer), and a detach during hungarian's solve gave pairs with undefined scores.
  const [nA, nB] = [600, 2000]; // 3 chunks of rows
  const expected = `Expected corr to keep its ${nA * nB} values until the call settles but it now has 0 (was its ArrayBuffer detached or resized?)`;
  for (const method of ['argmax', 'mutual', 'hungarian'] as const) {
    it(`${method}: detached at the first pause is ERR_SAEKIT_ARG naming corr`, async () => {
      const next = lcg(Date.now() >>> 0);
      const corr = Float32Array.from({ length: nA * nB }, () => next() * 2 - 1);
      const p = match(corr, { nA, nB, method });
      setImmediate(() => structuredClone(corr.buffer, { transfer: [corr.buffer] }));
      await expect(p).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expected });
    });
  }

  it('hungarian: detached while the native solver runs is ERR_SAEKIT_ARG, not pairs with undefined scores', async () => {
    const next = lcg(Date.now() >>> 0);
    const corr = Float64Array.from({ length: nA * nB }, () => next() * 2 - 1);
    const addon = native() as unknown as { lapRun: (...a: unknown[]) => unknown };
    const lapRun = addon.lapRun;
    addon.lapRun = (...a: unknown[]) => {
      const r = lapRun.apply(addon, a);
      structuredClone(corr.buffer, { transfer: [corr.buffer] });
      return r;
    };
    try {
      await expect(match(corr, { nA, nB, method: 'hungarian' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expected });
    } finally {
      addon.lapRun = lapRun;
    }
  });
});

describe('match, saeMatch and composeMatches: edges and bounds (features mutation round)', () => {
  it('an empty side gives no pairs, bToA all -1 and a NaN mean, for every method (no pair with an undefined score)', async () => {
    for (const [nA, nB] of [[0, 3], [4, 0], [0, 0]] as const) {
      for (const method of ['argmax', 'mutual', 'hungarian'] as const) {
        for (const top of method === 'mutual' ? [1, 5] : [undefined]) {
          const r = await match(new Float32Array(0), { nA, nB, method, ...(top ? { top } : {}) });
          const ctx = `${nA} x ${nB}, ${method}, top ${top}`;
          expect(r.pairs, ctx).toEqual([]);
          expect(Array.from(r.bToA), ctx).toEqual(new Array(nB).fill(-1));
          expect(r.meanScore, ctx).toBeNaN();
        }
      }
    }
  });

  it("a correlation() result's nA / nB: options that repeat them are accepted, others refused with ERR_SAEKIT_SHAPE", async () => {
    const next = lcg(81);
    const [n, dA, dB] = [30, 3, 5];
    const xa = Float32Array.from({ length: n * dA }, () => next() - 0.5);
    const xb = Float32Array.from({ length: n * dB }, () => next() - 0.5);
    const res = await correlation({ source: fromArray(xa, dA) }, { source: fromArray(xb, dB) }, { kind: 'dense', output: 'full' });
    const plain = await match(res, { method: 'argmax' });
    expect((await match(res, { method: 'argmax', nA: dA, nB: dB })).pairs).toEqual(plain.pairs);
    for (const [key, opts] of [['nA', { nA: dB }], ['nB', { nB: dA }], ['nA', { nA: dA + 1, nB: dB }]] as const) {
      await expect(match(res, { method: 'argmax', ...opts })).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE', message: expect.stringMatching(new RegExp(`undefined or the result's ${key} = .* for options\\.${key}`)) });
    }
  });

  it("options.top is refused unless method is 'mutual' (it would be silently ignored)", async () => {
    const c = new Float64Array(6);
    for (const method of ['argmax', 'hungarian', undefined] as const) {
      await expect(match(c, { nA: 2, nB: 3, top: 1, ...(method ? { method } : {}) })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.top/) });
    }
    expect((await match(c, { nA: 2, nB: 3, method: 'mutual', top: 1 })).pairs.length).toBe(1);
  });

  it('composeMatches: an entry must be below the next match\'s length (equal is out of range), -1 anywhere in the chain gives -1', () => {
    const next = lcg(82);
    // Fresh chains of odd lengths 7 -> 5 -> 9 -> 4, about a third unmatched, against the loop written out.
    const lens = [7, 5, 9, 4];
    const chain = lens.slice(0, -1).map((len, t) => Int32Array.from({ length: len }, () => (next() < 0.3 ? -1 : Math.floor(next() * lens[t + 1]!))));
    const want = Array.from(chain[0]!, (v) => {
      for (let t = 1; t < chain.length && v >= 0; t++) v = chain[t]![v]!;
      return v;
    });
    expect(Array.from(composeMatches(...chain))).toEqual(want);
    const last = lens[1]! - 1;
    expect(Array.from(composeMatches(Int32Array.of(last, -1), new Int32Array(lens[1]!).fill(2)))).toEqual([2, -1]);
    expect(() => composeMatches(Int32Array.of(0, lens[1]!), new Int32Array(lens[1]!))).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_SHAPE', message: 'Expected -1 or an index below perms[1].length = 5 for perms[0][1] but received 5 (number)' }),
    );
  });

  it('saeMatch without options matches folded decoder rows only: its mse is the float64 decoder-row MSE over d', async () => {
    const next = lcg(83);
    const [n, d] = [9, 7];
    const wA = randomWeights(n, d, next, true);
    const q = randomPermutation(n, next);
    const wB = permuted(wA, n, d, q, next, 0.05);
    using A = SparseAutoencoder.fromWeights(wA, { architecture: 'jumprelu' });
    using B = SparseAutoencoder.fromWeights(wB, { architecture: 'jumprelu' });
    const r = await saeMatch(A, B);
    expect(Array.from(r.permutation)).toEqual(Array.from(q));
    // Folded decoder rows θ_i W_dec[i, :], in float64 from the float32 products saekit makes.
    const fA = foldWeights(wA);
    const fB = foldWeights(wB);
    for (let i = 0; i < n; i++) {
      expect(fA.W_dec[i * d]).toBe(Math.fround(wA.W_dec[i * d]! * wA.threshold![i]!));
      expect(fA.b_enc[i]).toBe(Math.fround(wA.b_enc[i]! / wA.threshold![i]!));
      expect(fA.W_enc[2 * n + i]).toBe(Math.fround(wA.W_enc[2 * n + i]! / wA.threshold![i]!));
      let s2 = 0;
      for (let c = 0; c < d; c++) s2 += (fA.W_dec[i * d + c]! - fB.W_dec[q[i]! * d + c]!) ** 2;
      expect(r.mse[i]).toBeCloseTo(s2 / d, 14);
    }
  });
});

describe('saeMatch: folded weights past float32 (features mutation round)', () => {
  it("a fold that overflows float32 is ERR_SAEKIT_NONFINITE naming the SAE and latent, before the cost is built", async () => {
    const next = lcg(84);
    const [n, d] = [6, 5];
    const w = randomWeights(n, d, next, true);
    const big = { ...w, W_dec: w.W_dec.slice(), threshold: w.threshold!.slice() };
    // θ_4 W_dec[4, :] with θ_4 = 3e38 and an entry of 2: 6e38, past float32's 3.4e38.
    big.threshold[4] = 3e38;
    big.W_dec[4 * d + 2] = 2;
    using A = SparseAutoencoder.fromWeights(w, { architecture: 'jumprelu' });
    using B = SparseAutoencoder.fromWeights(big, { architecture: 'jumprelu' });
    for (const [x, y, name] of [[A, B, 'saeB'], [B, A, 'saeA']] as const) {
      // Refused by the fold itself, naming the weight it overflowed (the message blamed the SAE's weights).
      await expect(saeMatch(x, y)).rejects.toMatchObject({
        code: 'ERR_SAEKIT_NONFINITE',
        message: expect.stringMatching(new RegExp(`^Expected folded weights within float32's range but ${name}'s latent 4 folds W_dec\\[4\\]\\[2\\] \\* threshold\\[4\\] = 2 to Infinity \\(threshold\\[4\\] = 3\\.0\\d*e\\+38\\); pass fold: false to match without folding$`)),
      });
    }
    // Unfolded, the weights are finite and match.
    expect((await saeMatch(A, B, { fold: false })).permutation.length).toBe(n);
  });
});
