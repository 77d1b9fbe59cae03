import { describe, expect, it } from 'vitest';

import { CooccurrenceAccumulator, phiCoefficient } from '../lib/eval/cooccurrence.js';
import { fitLogistic, sparseProbe, sparseProbeAsync } from '../lib/eval/probe.js';
import { everyLookATurn, gapBound, watchCall } from './helpers/event-loop.js';
import { psEval } from '../lib/eval/pseval.js';
import { lcg } from './helpers/reference.js';
import { activeSets, sliceCodes } from './helpers/cooccurrence-reference.js';

// ---------------------------------------------------------------- naive float64 references

function gaussian(next: () => number): () => number {
  return () => Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next());
}

// ---------------------------------------------------------------- co-occurrence

interface Codes {
  rows: number;
  k: number;
  values: Float32Array;
  indices: Int32Array;
}

function randomCodes(rows: number, k: number, numLatents: number, next: () => number, pool = numLatents): Codes {
  const values = new Float32Array(rows * k);
  const indices = new Int32Array(rows * k);
  for (let i = 0; i < rows * k; i++) {
    // Correlated latents: low indices fire more; some values are exactly at or below thresholds.
    indices[i] = Math.floor(next() ** 2 * pool);
    const u = next();
    values[i] = u < 0.1 ? 0 : u < 0.2 ? 0.5 : u * 2 - 0.4;
  }
  return { rows, k, values, indices };
}

/** Direct 2x2 tables: chunk x latent activity, then phi per pair by counting chunks. */
function naiveCooccurrence(c: Codes, numLatents: number, chunkTokens: number, threshold: number, dropPartial = false) {
  const chunks = activeSets(c, chunkTokens, threshold, dropPartial);
  const T = chunks.length;
  const phi = (i: number, j: number) => {
    let n11 = 0;
    let n10 = 0;
    let n01 = 0;
    let n00 = 0;
    for (const s of chunks) {
      const a = s.has(i);
      const b = s.has(j);
      if (a && b) n11++;
      else if (a) n10++;
      else if (b) n01++;
      else n00++;
    }
    const v = (n11 * n00 - n10 * n01) / Math.sqrt((n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00));
    return { count: n11, phi: Number.isFinite(v) ? v : 0 };
  };
  const active = Array.from({ length: numLatents }, (_, i) => chunks.filter((s) => s.has(i)).length);
  return { T, phi, active };
}


/** The probe's documented split order: Fisher-Yates over 0..n-1 driven by mulberry32 from `state`, written out here. */
function shuffledOrder(state: number, n: number): number[] {
  let a = state >>> 0;
  const rnd = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order;
}

describe('CooccurrenceAccumulator', () => {
  it('phi, counts and top pairs match direct 2x2 tables', async () => {
    const numLatents = 30;
    const codes = randomCodes(1000, 4, numLatents, lcg(3));
    for (const threshold of [0, 0.5]) {
      const acc = new CooccurrenceAccumulator(numLatents, { chunkTokens: 37, threshold });
      acc.add(codes);
      const res = await acc.result({ top: 50, dense: true });
      const ref = naiveCooccurrence(codes, numLatents, 37, threshold);
      expect(res.chunks).toBe(Math.ceil(1000 / 37));
      expect(res.chunks).toBe(ref.T);
      expect(Array.from(res.active)).toEqual(ref.active);
      const all: { i: number; j: number; count: number; phi: number }[] = [];
      for (let i = 0; i < numLatents; i++) {
        for (let j = 0; j < numLatents; j++) {
          const { count, phi } = i === j ? { count: ref.active[i], phi: 0 < ref.active[i] && ref.active[i] < ref.T ? 1 : 0 } : ref.phi(i, j);
          expect(res.phi![i * numLatents + j]).toBeCloseTo(phi, 13);
          if (i < j && count > 0) all.push({ i, j, count, phi });
        }
      }
      all.sort((x, y) => y.phi - x.phi || y.count - x.count || x.i - y.i || x.j - y.j);
      expect(res.top).toHaveLength(50);
      res.top.forEach((p, t) => {
        expect([p.i, p.j, p.count]).toEqual([all[t].i, all[t].j, all[t].count]);
        expect(p.phi).toBeCloseTo(all[t].phi, 13);
      });
    }
  });

  it('gives the same result for any split into add() calls; a chunk continues across calls', async () => {
    const numLatents = 20;
    const codes = randomCodes(500, 3, numLatents, lcg(11));
    const whole = new CooccurrenceAccumulator(numLatents, { chunkTokens: 64 });
    whole.add(codes);
    const expected = await whole.result({ top: 1000, dense: true });
    const next = lcg(12);
    for (let trial = 0; trial < 5; trial++) {
      const acc = new CooccurrenceAccumulator(numLatents, { chunkTokens: 64 });
      let at = 0;
      while (at < codes.rows) {
        const to = Math.min(codes.rows, at + Math.floor(next() * 90)); // includes empty batches
        acc.add(sliceCodes(codes, at, to));
        if (next() < 0.3) await acc.result(); // a mid-stream result must not close the open chunk
        at = to;
      }
      expect(await acc.result({ top: 1000, dense: true })).toEqual(expected);
    }
    // One token at a time, as an extreme split.
    const one = new CooccurrenceAccumulator(numLatents, { chunkTokens: 64 });
    for (let r = 0; r < codes.rows; r++) one.add(sliceCodes(codes, r, r + 1));
    expect(await one.result({ top: 1000, dense: true })).toEqual(expected);
  });

  it('counts or drops the trailing partial chunk', async () => {
    const codes = randomCodes(100, 2, 10, lcg(21));
    const keep = new CooccurrenceAccumulator(10, { chunkTokens: 30 });
    keep.add(codes);
    expect((await keep.result()).chunks).toBe(4);
    const drop = new CooccurrenceAccumulator(10, { chunkTokens: 30, dropPartial: true });
    drop.add(codes);
    const r = await drop.result({ dense: true });
    expect(r.chunks).toBe(3);
    const ref = naiveCooccurrence(codes, 10, 30, 0, true);
    expect(Array.from(r.active)).toEqual(ref.active);
    expect(r.phi![1 * 10 + 2]).toBeCloseTo(ref.phi(1, 2).phi, 13);
  });

  it('applies the threshold strictly (value > threshold)', async () => {
    const acc = new CooccurrenceAccumulator(4, { chunkTokens: 1, threshold: 1 });
    // Token 0: latents 0 (value 1, not active) and 1 (1.5). Token 1: latents 1 and 2 (2 each).
    acc.add({ rows: 2, k: 2, values: Float32Array.of(1, 1.5, 2, 2), indices: Int32Array.of(0, 1, 1, 2) });
    const r = await acc.result({ dense: true });
    expect(Array.from(r.active)).toEqual([0, 2, 1, 0]);
    expect(r.top).toEqual([{ i: 1, j: 2, count: 1, phi: 0 }]); // latent 1 is always on: phi 0
    expect(phiCoefficient(4, 2, 2, 2)).toBe(1);
    expect(phiCoefficient(4, 0, 2, 2)).toBe(-1);
  });

  it('uses sparse pair storage for many latents with the same phi', async () => {
    const numLatents = 5000;
    const next = lcg(31);
    const codes = randomCodes(600, 3, numLatents, next, 40);
    for (let i = 0; i < codes.indices.length; i++) codes.indices[i] = codes.indices[i] * 111 + 7; // spread over 0..4336
    const acc = new CooccurrenceAccumulator(numLatents, { chunkTokens: 16 });
    acc.add(sliceCodes(codes, 0, 250));
    acc.add(sliceCodes(codes, 250, 600));
    const res = await acc.result({ top: 30 });
    expect(res.phi).toBeUndefined();
    const ref = naiveCooccurrence(codes, numLatents, 16, 0);
    expect(res.chunks).toBe(ref.T);
    for (const p of res.top) {
      const e = ref.phi(p.i, p.j);
      expect(p.count).toBe(e.count);
      expect(p.phi).toBeCloseTo(e.phi, 13);
    }
    // The best pair is the best over all co-occurring pairs.
    const used = [...new Set(codes.indices)].sort((a, b) => a - b);
    let best = -Infinity;
    for (let a = 0; a < used.length; a++) {
      for (let b = a + 1; b < used.length; b++) {
        const e = ref.phi(used[a], used[b]);
        if (e.count > 0) best = Math.max(best, e.phi);
      }
    }
    expect(res.top[0].phi).toBeCloseTo(best, 13);
    await expect(acc.result({ dense: true })).rejects.toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG' }));
  });

  it('validates its arguments', () => {
    expect(() => new CooccurrenceAccumulator(0)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG' }));
    expect(() => new CooccurrenceAccumulator(4, { chunkTokens: 0 })).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG' }));
    expect(() => new CooccurrenceAccumulator(4, { threshold: Number.NaN })).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG' }));
    const acc = new CooccurrenceAccumulator(4);
    expect(() => acc.add({ rows: 2, k: 2, values: new Float32Array(3), indices: new Int32Array(4) })).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_SHAPE' }),
    );
    expect(() => acc.add({ rows: 1, k: 1, values: new Float32Array(1), indices: Int32Array.of(4) })).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_ARG' }),
    );
  });
});

// ---------------------------------------------------------------- sparse probing

describe('sparseProbe', () => {
  function separable(n: number, m: number, signal: number, seed: number) {
    const next = lcg(seed);
    const labels = Uint8Array.from({ length: n }, () => (next() < 0.4 ? 1 : 0));
    const features = new Float32Array(n * m);
    for (let r = 0; r < n; r++) {
      for (let j = 0; j < m; j++) features[r * m + j] = next();
      features[r * m + signal] = labels[r] ? 2 + next() : next();
    }
    return { features, labels };
  }

  it('finds the separating latent with k = 1 and reaches accuracy 1', () => {
    const { features, labels } = separable(250, 20, 7, 41);
    const { results } = sparseProbe(features, labels, { m: 20 });
    expect(results.map((r) => r.k)).toEqual([1, 2, 5]);
    for (const r of results) {
      expect(r.latents[0]).toBe(7);
      expect(r.latents).toHaveLength(r.k);
      expect(r.accuracy).toBe(1);
      expect(r.f1).toBe(1);
    }
  });

  it('standardize: the default probe is invariant to the features\' scale; standardize false fits the raw activations (SAEBench)', () => {
    const next = lcg(47);
    const [n, m] = [240, 9];
    const labels = Uint8Array.from({ length: n }, () => (next() < 0.45 ? 1 : 0));
    const base = Float32Array.from({ length: n * m }, (_, i) => next() + (labels[Math.floor(i / m)] && i % m === 3 ? 0.4 : 0));
    const small = base.map((v) => v * 0.01);
    const a = sparseProbe(base, labels, { m, k: [1, 2], seed: 9 });
    const b = sparseProbe(small, labels, { m, k: [1, 2], seed: 9 });
    for (let i = 0; i < 2; i++) {
      expect(b.results[i]!.latents).toEqual(a.results[i]!.latents);
      expect(b.results[i]!.accuracy).toBe(a.results[i]!.accuracy);
      b.results[i]!.weights.forEach((w, j) => expect(Math.abs(w - a.results[i]!.weights[j]!)).toBeLessThan(1e-4));
    }
    // Raw: the documented split (mulberry32 Fisher-Yates, first round(n * 0.2) are the test split),
    // then sklearn's objective on the raw train features of the selected latents.
    const raw = sparseProbe(small, labels, { m, k: [2], seed: 9, standardize: false }).results[0]!;
    const train = shuffledOrder(9, n).slice(Math.round(n * 0.2));
    const X = Float64Array.from({ length: train.length * 2 }, (_, q) => small[train[Math.floor(q / 2)]! * m + raw.latents[q % 2]!]!);
    const y = Uint8Array.from(train, (r) => labels[r]!);
    const ref = fitLogistic(X, y, train.length, 2, 1);
    raw.weights.forEach((w, j) => expect(Math.abs(w - ref.w[j]!)).toBeLessThan(1e-8 * (1 + Math.abs(ref.w[j]!))));
    expect(Math.abs(raw.intercept - ref.b)).toBeLessThan(1e-8);
  });

  it('standardize: the weights are the fit on train features centred and divided by their population sd (float64 reference, fresh data)', () => {
    const seed = (Date.now() ^ 0x2545f491) >>> 0;
    const next = lcg(seed);
    const n = 61 + 2 * Math.floor(next() * 60);
    const m = 5 + Math.floor(next() * 9);
    const k = 1 + Math.floor(next() * 4);
    const labels = Uint8Array.from({ length: n }, () => (next() < 0.5 ? 1 : 0));
    labels[0] = 1;
    labels[1] = 0;
    const features = Float32Array.from({ length: n * m }, (_, i) => (next() - 0.3) * (1 + (i % m)) + (labels[Math.floor(i / m)] ? 0.3 * (i % 3) : 0));
    const probeSeed = Math.floor(next() * 2 ** 31);
    let r;
    try {
      r = sparseProbe(features, labels, { m, k: [k], seed: probeSeed, testFraction: 0.25 }).results[0]!;
    } catch (err) {
      if ((err as Error).message.includes('both classes')) return; // an unlucky split: nothing to compare
      throw err;
    }
    const train = shuffledOrder(probeSeed, n).slice(Math.round(n * 0.25));
    const X = new Float64Array(train.length * k);
    for (let j = 0; j < k; j++) {
      let mean = 0;
      for (const row of train) mean += features[row * m + r.latents[j]!]!;
      mean /= train.length;
      let v = 0;
      for (const row of train) v += (features[row * m + r.latents[j]!]! - mean) ** 2;
      const sd = Math.sqrt(v / train.length) || 1;
      train.forEach((row, i) => (X[i * k + j] = (features[row * m + r.latents[j]!]! - mean) / sd));
    }
    const ref = fitLogistic(X, Uint8Array.from(train, (row) => labels[row]!), train.length, k, 1);
    r.weights.forEach((w, j) => expect(Math.abs(w - ref.w[j]!), `seed ${seed}: weight ${j}`).toBeLessThan(1e-8 * (1 + Math.abs(ref.w[j]!))));
    expect(Math.abs(r.intercept - ref.b), `seed ${seed}`).toBeLessThan(1e-8 * (1 + Math.abs(ref.b)));
  });

  it('ranks latents by |mean_pos - mean_neg| over the train split, each class by its own count (unbalanced labels, float64 reference)', () => {
    const seed = (Date.now() ^ 0x1f83d9ab) >>> 0;
    const next = lcg(seed);
    const n = 81 + 2 * Math.floor(next() * 60);
    const m = 7 + 2 * Math.floor(next() * 4);
    // About 25% positives: a mean of the negatives scaled by nNeg / nPos would rank otherwise.
    const labels = Uint8Array.from({ length: n }, () => (next() < 0.25 ? 1 : 0));
    labels[0] = 1;
    labels[1] = 0;
    const offset = Array.from({ length: m }, () => 0.5 + 2 * next());
    const shift = Array.from({ length: m }, () => next() - 0.5);
    const features = Float32Array.from({ length: n * m }, (_, i) => offset[i % m]! + next() + (labels[Math.floor(i / m)] ? shift[i % m]! : 0));
    const probeSeed = Math.floor(next() * 2 ** 31);
    let r;
    try {
      r = sparseProbe(features, labels, { m, k: [m], seed: probeSeed }).results[0]!;
    } catch (err) {
      if ((err as Error).message.includes('both classes')) return; // an unlucky split: nothing to compare
      throw err;
    }
    const train = shuffledOrder(probeSeed, n).slice(Math.round(n * 0.2));
    const score = Array.from({ length: m }, (_, j) => {
      let [sp, sn, np, nn] = [0, 0, 0, 0];
      for (const row of train) {
        if (labels[row]) [sp, np] = [sp + features[row * m + j]!, np + 1];
        else [sn, nn] = [sn + features[row * m + j]!, nn + 1];
      }
      return Math.abs(sp / np - sn / nn);
    });
    const want = Array.from({ length: m }, (_, j) => j).sort((a, b) => score[b]! - score[a]! || a - b);
    expect(r.latents, `seed ${seed}`).toEqual(want);
  });

  it('a logit of exactly 0 predicts the negative class (positive iff w.x + b > 0)', () => {
    // Constant features standardise to 0 and a balanced train split fits b = 0, w = 0 exactly:
    // every test logit is 0, so every test example is predicted negative.
    const seed = (Date.now() ^ 0x7feb352d) >>> 0;
    const next = lcg(seed);
    const n = 40 + 10 * Math.floor(next() * 10); // nTest = n / 5, and n - nTest is even
    const m = 3;
    const probeSeed = Math.floor(next() * 2 ** 31);
    const order = shuffledOrder(probeSeed, n);
    const nTest = Math.round(n * 0.2);
    const labels = new Uint8Array(n);
    // Train rows alternate 1, 0 (an even count: balanced); the test split gets both classes.
    order.forEach((row, i) => (labels[row] = i < nTest ? (i % 2 === 0 ? 1 : 0) : (i - nTest) % 2 === 0 ? 1 : 0));
    expect((n - nTest) % 2).toBe(0);
    const features = new Float32Array(n * m).fill(0.7);
    const r = sparseProbe(features, labels, { m, k: [1], seed: probeSeed }).results[0]!;
    expect(r.intercept, `seed ${seed}`).toBe(0);
    let neg = 0;
    for (const row of order.slice(0, nTest)) neg += labels[row] ? 0 : 1;
    expect(r.accuracy, `seed ${seed}`).toBe(neg / nTest);
    expect(r.f1, `seed ${seed}`).toBe(0);
  });

  it('fitLogistic and the co-occurrence accumulator refuse non-finite values and bad labels instead of reading them', () => {
    expect(() => fitLogistic(Float64Array.from([1, Number.NaN]), Uint8Array.from([0, 1]), 2, 1)).toThrow(/X\[1\] is NaN/);
    expect(() => fitLogistic(Float64Array.from([1, 2]), Uint8Array.from([0, 5]), 2, 1)).toThrow(/y\[1\]/);
    expect(() => fitLogistic([1, 2] as never, Uint8Array.from([0, 1]), 2, 1)).toThrow(/Float64Array/);
    const acc = new CooccurrenceAccumulator(4, { chunkTokens: 2 });
    expect(() => acc.add({ rows: 1, k: 2, values: Float32Array.from([1, Number.NaN]), indices: Int32Array.from([0, 1]) })).toThrow(/codes\.values\[1\] is NaN/);
  });

  it('null is not a missing option (testFraction, seed, C were taken as their defaults), and a symbol C is an ERR_SAEKIT_ARG, not a raw TypeError', () => {
    const { features, labels } = separable(40, 4, 1, 3);
    for (const key of ['testFraction', 'seed', 'C'] as const) {
      expect(() => sparseProbe(features, labels, { m: 4, [key]: null as never }), key).toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(new RegExp(`for options\\.${key} but received null`)) }),
      );
    }
    expect(sparseProbe(features, labels, { m: 4, k: [1] }).results).toEqual(sparseProbe(features, labels, { m: 4, k: [1], testFraction: 0.2, seed: 0, C: 1 }).results);
    expect(() => fitLogistic(Float64Array.from([1, 2]), Uint8Array.from([0, 1]), 2, 1, Symbol('C') as never)).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/for C but received a symbol/) }),
    );
  });

  it('is deterministic for a seed and depends on it', () => {
    const next = lcg(51);
    const n = 200;
    const m = 12;
    const labels = Uint8Array.from({ length: n }, () => (next() < 0.5 ? 1 : 0));
    const features = Float32Array.from({ length: n * m }, (_, i) => next() + (labels[Math.floor(i / m)] ? 0.3 * ((i % m) / m) : 0));
    const a = sparseProbe(features, labels, { m, k: [1, 3], seed: 5 });
    const b = sparseProbe(features, labels, { m, k: [1, 3], seed: 5 });
    const c = sparseProbe(features, labels, { m, k: [1, 3], seed: 6 });
    expect(a).toEqual(b);
    expect(a.results[1].weights).not.toEqual(c.results[1].weights);
    for (const r of a.results) {
      expect(r.accuracy).toBeGreaterThan(0.5);
      expect(r.accuracy).toBeLessThanOrEqual(1);
    }
  });

  it('uses all 64 bits of the seed: its split is mulberry32 seeded with lo XOR fmix32(hi) (seeds below 2^32 unchanged)', () => {
    // One-hot features, latent j = example j: a latent's train |mean_pos - mean_neg| is > 0 iff
    // its example is in the train split, so the probe on every latent ranks the test examples
    // last, in index order (ties: lower index first), and its latents show the split.
    const n = 40;
    const labels = Uint8Array.from({ length: n }, (_, i) => i % 2);
    const features = Float32Array.from({ length: n * n }, (_, i) => (i % (n + 1) === 0 ? 1 : 0));
    const nTest = Math.round(n * 0.25);
    // The reference: the documented state, mulberry32 and Fisher-Yates, written out here.
    const fmix32 = (h: number) => {
      h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
      h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
      return (h ^ (h >>> 16)) >>> 0;
    };
    const testSplit = (seed: bigint) => {
      const order = shuffledOrder((Number(seed & 0xffffffffn) ^ fmix32(Number(seed >> 32n))) >>> 0, n);
      return order.slice(0, nTest).sort((x, y) => x - y);
    };
    const seeds = [0n, 1n, 5n, 2n ** 32n - 1n, 2n ** 32n, 2n ** 32n + 1n, 2n ** 53n - 1n, 2n ** 63n, 2n ** 64n - 1n, BigInt(Date.now())];
    const splits = new Set<string>();
    for (const seed of seeds) {
      const r = sparseProbe(features, labels, { m: n, k: [n], testFraction: 0.25, seed }).results[0]!;
      const want = testSplit(seed);
      expect(r.latents.slice(n - nTest), `seed ${seed}`).toEqual(want);
      splits.add(want.join());
    }
    // 0, 2^32 and 2^63 were one split (only the low 32 bits were read); a number and a bigint agree.
    expect(splits.size).toBe(seeds.length);
    expect(sparseProbe(features, labels, { m: n, k: [n], testFraction: 0.25, seed: 2 ** 40 + 3 })).toEqual(sparseProbe(features, labels, { m: n, k: [n], testFraction: 0.25, seed: 2n ** 40n + 3n }));
  });

  it('fits the L2 logistic regression to its optimum (gradient ~ 0, strictly lower objective than nearby points)', () => {
    const next = lcg(61);
    const g = gaussian(next);
    const n = 300;
    const p = 4;
    const X = Float64Array.from({ length: n * p }, () => g());
    const y = Uint8Array.from({ length: n }, (_, i) => (X[i * p] - 0.5 * X[i * p + 2] + 0.3 + g() > 0 ? 1 : 0));
    for (const C of [1, 0.05]) {
      const { w, b } = fitLogistic(X, y, n, p, C);
      const objective = (ww: number[], bb: number) => {
        let s = 0;
        for (let i = 0; i < n; i++) {
          let z = bb;
          for (let j = 0; j < p; j++) z += ww[j] * X[i * p + j];
          s += Math.log(1 + Math.exp(y[i] ? -z : z));
        }
        return s + ww.reduce((a, v) => a + v * v, 0) / (2 * C);
      };
      // Naive gradient of sklearn's objective sum logloss + ||w||^2 / (2C).
      const grad = new Array(p + 1).fill(0);
      for (let i = 0; i < n; i++) {
        let z = b;
        for (let j = 0; j < p; j++) z += w[j] * X[i * p + j];
        const r = 1 / (1 + Math.exp(-z)) - y[i];
        for (let j = 0; j < p; j++) grad[j] += r * X[i * p + j];
        grad[p] += r;
      }
      for (let j = 0; j < p; j++) grad[j] += w[j] / C;
      for (const v of grad) expect(Math.abs(v)).toBeLessThan(1e-7);
      const f0 = objective(Array.from(w), b);
      for (let t = 0; t < 10; t++) {
        const dw = Array.from(w, (v) => v + (next() - 0.5) * 1e-3);
        expect(objective(dw, b + (next() - 0.5) * 1e-3)).toBeGreaterThan(f0);
      }
      if (C === 0.05) expect(Math.hypot(...w)).toBeLessThan(Math.hypot(...fitLogistic(X, y, n, p, 1).w));
    }
    // Separable data still has a finite optimum because w is penalised.
    const ys = Uint8Array.from({ length: n }, (_, i) => (X[i * p] > 0 ? 1 : 0));
    const fit = fitLogistic(X, ys, n, p, 1);
    expect(Number.isFinite(fit.b) && fit.w.every(Number.isFinite)).toBe(true);
  });

  it('converges in a few Newton steps on raw activations of any scale (the stopping test is relative), to a zero gradient', () => {
    const next = lcg(0xbeef + Math.floor(Math.random() * 1e6));
    const [n, p] = [3001, 5];
    for (const scale of [1, 50, 1000]) {
      const X = new Float64Array(n * p);
      const y = new Uint8Array(n);
      for (let i = 0; i < n; i++) {
        y[i] = next() < 0.5 ? 1 : 0;
        for (let j = 0; j < p; j++) X[i * p + j] = scale * Math.max(0, next() + (y[i] && j < 2 ? 0.3 : 0));
      }
      const fit = fitLogistic(X, y, n, p, 1);
      expect(fit.iterations, `scale ${scale}`).toBeLessThan(40);
      // The gradient of sum log(1 + exp(-m)) + |w|^2 / 2, relative to its terms' size, in float64.
      const g = new Float64Array(p + 1);
      const gs = new Float64Array(p + 1);
      for (let i = 0; i < n; i++) {
        let z = fit.b;
        for (let j = 0; j < p; j++) z += X[i * p + j]! * fit.w[j]!;
        const r = 1 / (1 + Math.exp(-z)) - y[i]!;
        for (let j = 0; j <= p; j++) {
          const xj = j < p ? X[i * p + j]! : 1;
          g[j] += r * xj;
          gs[j] += Math.abs(r * xj);
        }
      }
      for (let j = 0; j < p; j++) g[j] += fit.w[j]!;
      for (let j = 0; j <= p; j++) expect(Math.abs(g[j]!) / gs[j]!, `scale ${scale}, parameter ${j}`).toBeLessThan(1e-8);
    }
    expect(() => fitLogistic(new Float64Array(1), new Uint8Array(2), 2, 0.5)).toThrow(/p/);
    expect(() => fitLogistic(new Float64Array(0), new Uint8Array(0), 0, 1)).toThrow(/\bn\b/);
  });

  it('fits separable data under a weak penalty (C up to 1e10) to its optimum: Newton needs 20 to 30 steps there', () => {
    // The margins grow like log C, and each Newton step gains a roughly constant amount of them.
    const next = lcg(11);
    const [n, p] = [41, 3];
    const Xr = Float64Array.from({ length: n * p }, () => next() * 2 - 1);
    const cases = [
      { X: Float64Array.from([-2, -1, 1, 2]), y: Uint8Array.from([0, 0, 1, 1]), n: 4, p: 1 },
      { X: Xr, y: Uint8Array.from({ length: n }, (_, i) => (Xr[i * p]! + 0.5 * Xr[i * p + 1]! > 0 ? 1 : 0)), n, p },
    ];
    for (const { X, y, n: rows, p: cols } of cases) {
      for (const C of [1e6, 1e8, 1e10]) {
        const fit = fitLogistic(X, y, rows, cols, C);
        // sklearn's gradient, sum_i (sigma(z_i) - y_i) x_i + w / C, relative to its terms' size.
        const g = new Float64Array(cols + 1);
        const gs = new Float64Array(cols + 1);
        for (let i = 0; i < rows; i++) {
          let z = fit.b;
          for (let j = 0; j < cols; j++) z += X[i * cols + j]! * fit.w[j]!;
          const r = 1 / (1 + Math.exp(-z)) - y[i]!;
          for (let j = 0; j <= cols; j++) {
            const xj = j < cols ? X[i * cols + j]! : 1;
            g[j] += r * xj;
            gs[j] += Math.abs(r * xj);
          }
        }
        for (let j = 0; j < cols; j++) {
          g[j] += fit.w[j]! / C;
          gs[j] += Math.abs(fit.w[j]! / C);
        }
        for (let j = 0; j <= cols; j++) expect(Math.abs(g[j]!) / gs[j]!, `n ${rows}, C ${C}, parameter ${j}: ${fit.iterations} iterations`).toBeLessThan(1e-6);
      }
    }
  });

  it('fitLogistic refuses a label other than 0 or 1 and a C that is not positive and finite', () => {
    const X = Float64Array.from([1, 2, 3]);
    // A label of 2 (or 255) was read as 'truthy', i.e. as 1.
    for (const bad of [2, 255]) {
      expect(() => fitLogistic(X, Uint8Array.from([0, bad, 1]), 3, 1), `label ${bad}`).toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/^Expected 0 or 1 for y\[1\] but received/) }),
      );
    }
    // y of another length than n: the rows past it were read as label 0 (undefined), or ignored.
    for (const len of [2, 4]) {
      expect(() => fitLogistic(X, Uint8Array.from({ length: len }, (_, i) => i % 2), 3, 1), `y of length ${len}`).toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_SHAPE', message: 'fitLogistic: expected X of length 3 and y of length 3' }),
      );
    }
    // C = 0 is an infinite penalty (1 / C), not a fit.
    for (const bad of [0, -1, Number.NaN, Infinity]) {
      expect(() => fitLogistic(X, Uint8Array.from([0, 1, 1]), 3, 1, bad), `C ${bad}`).toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/^Expected a positive finite number for C but received/) }),
      );
    }
  });

  it('refuses bad options and splits naming the cause: k [], testFraction 0 or 1, C 0, an empty test or a one-row train split, one class only', () => {
    const n = 12;
    const labels = Uint8Array.from({ length: n }, (_, i) => i % 2);
    const features = Float32Array.from({ length: n * 3 }, (_, i) => (i % 7) / 7);
    const arg = (re: RegExp) => expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(re) });
    // m = 0 (with no features) gave probes of no latents.
    expect(() => sparseProbe(new Float32Array(0), labels, { m: 0 })).toThrow(arg(/^Expected integer between 1 and \d+ for options\.m but received 0/));
    // k = [] gave no probes at all.
    expect(() => sparseProbe(features, labels, { m: 3, k: [] })).toThrow(arg(/^Expected a non-empty array of positive integers for options\.k /));
    for (const tf of [0, 1, 1.5, -0.2]) {
      expect(() => sparseProbe(features, labels, { m: 3, testFraction: tf }), `testFraction ${tf}`).toThrow(arg(/for options\.testFraction but received/));
    }
    expect(() => sparseProbe(features, labels, { m: 3, C: 0 })).toThrow(arg(/^Expected a positive finite number for options\.C but received 0/));
    // round(4 x 0.1) = 0 test rows: accuracy would be 0 / 0.
    expect(() => sparseProbe(features.subarray(0, 12), labels.subarray(0, 4), { m: 3, testFraction: 0.1 })).toThrow(arg(/^Expected enough examples for a train and a test split at testFraction 0\.1 for labels/));
    // round(3 x 0.5) = 2 test rows leave one train row.
    expect(() => sparseProbe(features.subarray(0, 9), labels.subarray(0, 3), { m: 3, testFraction: 0.5 })).toThrow(arg(/^Expected enough examples for a train and a test split at testFraction 0\.5 for labels/));
    // One class only, either class: the ranking divides by each class's count.
    for (const only of [0, 1]) {
      expect(() => sparseProbe(features, new Uint8Array(n).fill(only), { m: 3 }), `all ${only}`).toThrow(arg(/^Expected both classes present in the train split for labels/));
    }
  });

  it('clips each k to m: a probe asked for more latents than m uses all m, reported as k = m', () => {
    const next = lcg(73);
    const [n, m] = [57, 3];
    const labels = Uint8Array.from({ length: n }, (_, i) => (i < 2 ? i : next() < 0.5 ? 1 : 0));
    const features = Float32Array.from({ length: n * m }, (_, i) => next() + (labels[Math.floor(i / m)] ? 0.2 * (i % m) : 0));
    const { results } = sparseProbe(features, labels, { m, k: [1, 7, m] });
    expect(results.map((r) => r.k)).toEqual([1, m, m]);
    expect(results[1]!.latents).toHaveLength(m);
    expect(results[1]!.weights).toHaveLength(m);
    expect(results[1]).toEqual(results[2]);
  });

  it('the test split is the first round(n x testFraction) of the documented shuffle, including one test row and a fraction ending in .5', () => {
    // One-hot features (latent j = example j): the probe over every latent ranks the test examples
    // (train score 0) last, in index order, so its last nTest latents are the test split.
    const cases: [number, number][] = [
      [10, 0.25], // 2.5 rounds to 3 (floor: 2)
      [14, 0.25], // 3.5 rounds to 4
      [7, 0.1], // 0.7 rounds to 1: a single test row
      [9, 0.15], // 1.35 rounds to 1
    ];
    for (const [n, testFraction] of cases) {
      const labels = Uint8Array.from({ length: n }, (_, i) => i % 2);
      const features = Float32Array.from({ length: n * n }, (_, i) => (i % (n + 1) === 0 ? 1 : 0));
      const nTest = Math.round(n * testFraction);
      for (let seed = 0; seed < 12; seed++) {
        let r;
        try {
          r = sparseProbe(features, labels, { m: n, k: [n], testFraction, seed }).results[0]!;
        } catch (err) {
          if ((err as Error).message.includes('both classes')) continue; // a one-class train split
          throw err;
        }
        const want = shuffledOrder(seed, n).slice(0, nTest).sort((x, y) => x - y);
        expect(r.latents.slice(n - nTest), `n ${n}, testFraction ${testFraction}, seed ${seed}`).toEqual(want);
      }
    }
  });

  it('accuracy and F1 = 2TP / (2TP + FP + FN) are counted on the test split from the returned weights; F1 is 0 when that is 0 / 0', () => {
    // Random data: predictions from the returned weights on the (standardised) test rows.
    const seed = (Date.now() ^ 0x6a09e667) >>> 0;
    const next = lcg(seed);
    const n = 101 + 2 * Math.floor(next() * 50);
    const m = 4;
    const labels = Uint8Array.from({ length: n }, (_, i) => (i < 2 ? i : next() < 0.45 ? 1 : 0));
    const features = Float32Array.from({ length: n * m }, (_, i) => next() + (labels[Math.floor(i / m)] ? 0.15 * (i % m) : 0));
    const probeSeed = Math.floor(next() * 2 ** 31);
    let results;
    try {
      results = sparseProbe(features, labels, { m, k: [1, 3], seed: probeSeed, standardize: false }).results;
    } catch (err) {
      if ((err as Error).message.includes('both classes')) return;
      throw err;
    }
    const test = shuffledOrder(probeSeed, n).slice(0, Math.round(n * 0.2));
    for (const r of results) {
      const c = { tp: 0, fp: 0, tn: 0, fn: 0 };
      for (const row of test) {
        let z = r.intercept;
        r.latents.forEach((l, j) => (z += r.weights[j]! * features[row * m + l]!));
        if (labels[row]) z > 0 ? c.tp++ : c.fn++;
        else z > 0 ? c.fp++ : c.tn++;
      }
      expect(r.accuracy, `seed ${seed}, k ${r.k}`).toBe((c.tp + c.tn) / test.length);
      expect(r.f1, `seed ${seed}, k ${r.k}`).toBe((2 * c.tp) / (2 * c.tp + c.fp + c.fn));
    }
    // A test split of negatives only, all predicted negative: TP = FP = FN = 0, F1 0 (not NaN), accuracy 1.
    const n2 = 30;
    const order = shuffledOrder(3, n2);
    const nTest = Math.round(n2 * 0.2);
    const lab = new Uint8Array(n2);
    order.forEach((row, i) => (lab[row] = i < nTest ? 0 : (i - nTest) % 2));
    const feat = Float32Array.from(lab, (y) => y); // m = 1: the feature is the label
    const r = sparseProbe(feat, lab, { m: 1, k: [1], seed: 3 }).results[0]!;
    expect(r.weights[0]!).toBeGreaterThan(0);
    expect(r.accuracy).toBe(1);
    expect(r.f1).toBe(0);
  });

  it('validates its arguments', () => {
    const features = new Float32Array(40);
    const labels = Uint8Array.from({ length: 10 }, (_, i) => i % 2);
    expect(() => sparseProbe(features, labels, { m: 3 })).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_SHAPE' }));
    expect(() => sparseProbe(features, Uint8Array.from({ length: 10 }, () => 2), { m: 4 })).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_ARG' }),
    );
    expect(() => sparseProbe(features, new Uint8Array(10), { m: 4 })).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG' }));
    expect(() => sparseProbe(features, labels, { m: 4, testFraction: 1 })).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG' }));
    expect(() => sparseProbe(features, labels, { m: 4, k: [0] })).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG' }));
  });
});

// ---------------------------------------------------------------- PS-Eval

describe('psEval', () => {
  const v = (...x: number[]) => Float32Array.from(x);

  it('counts the confusion matrix with "same meaning" as the positive class', () => {
    const pairs = [
      { a: v(0, 3, 1), b: v(0, 2, 1), same: true }, // argmax 1 = 1: TP
      { a: v(5, 3, 1), b: v(0, 2, 1), same: true }, // 0 vs 1: FN
      { a: v(0, 0, 9), b: v(1, 0, 9), same: false }, // 2 = 2: FP
      { a: v(4, 0, 1), b: v(1, 0, 9), same: false }, // 0 vs 2: TN
      { a: v(2, 2, 1), b: v(2, 0, 2), same: true }, // ties take the first index: 0 = 0: TP
      { a: v(1, 7, 7), b: v(0, 1, 0), same: false }, // 1 = 1: FP
      { a: v(-1, -3, -2), b: v(-5, -4, -6), same: false }, // 0 vs 1: TN
    ];
    const r = psEval(pairs);
    expect([r.tp, r.fp, r.tn, r.fn]).toEqual([2, 2, 2, 1]);
    expect(r.precision).toBeCloseTo(2 / 4, 15);
    expect(r.recall).toBeCloseTo(2 / 3, 15);
    expect(r.f1).toBeCloseTo(4 / 7, 15);
    expect(r.accuracy).toBeCloseTo(4 / 7, 15);
    expect(r.specificity).toBeCloseTo(2 / 4, 15);
  });

  it('returns NaN for 0/0 metrics', () => {
    const r = psEval([{ a: v(1, 0), b: v(0, 1), same: false }]);
    expect([r.tp, r.fp, r.tn, r.fn]).toEqual([0, 0, 1, 0]);
    expect(r.precision).toBeNaN();
    expect(r.recall).toBeNaN();
    expect(r.f1).toBeNaN();
    expect(r.accuracy).toBe(1);
    expect(r.specificity).toBe(1);
  });

  it('matches a naive count on fresh random pairs with ties (first index) and infinities; only NaN is refused', () => {
    const seed = (Date.now() ^ 0x3c6ef372) >>> 0;
    const next = lcg(seed);
    const L = 3 + Math.floor(next() * 9);
    const vec = () => Float32Array.from({ length: L }, () => {
      const u = next();
      return u < 0.05 ? Infinity : u < 0.1 ? -Infinity : Math.floor(u * 4); // few values: many ties
    });
    const pairs = Array.from({ length: 51 + 2 * Math.floor(next() * 40) }, () => ({ a: vec(), b: vec(), same: next() < 0.5 }));
    const first = (v: Float32Array) => v.indexOf(Math.max(...v)); // numpy's argmax: the first maximum
    let [tp, fp, tn, fn] = [0, 0, 0, 0];
    for (const { a, b, same } of pairs) {
      const eq = first(a) === first(b);
      if (same) eq ? tp++ : fn++;
      else eq ? fp++ : tn++;
    }
    const div = (x: number, y: number) => (y === 0 ? Number.NaN : x / y);
    expect(psEval(pairs), `seed ${seed}`).toEqual({
      tp,
      fp,
      tn,
      fn,
      precision: div(tp, tp + fp),
      recall: div(tp, tp + fn),
      f1: div(2 * tp, 2 * tp + fp + fn),
      accuracy: (tp + tn) / pairs.length,
      specificity: div(tn, tn + fp),
    });
  });

  it('refuses empty vectors and a pair whose length differs from the first pair\'s', () => {
    const shape = (re: RegExp) => expect.objectContaining({ code: 'ERR_SAEKIT_SHAPE', message: expect.stringMatching(re) });
    // Empty vectors had argmax 0 on both sides: a "match".
    expect(() => psEval([{ a: v(), b: v(), same: true }])).toThrow(shape(/pairs\[0\]\.a and pairs\[0\]\.b of the same non-zero length/));
    // Pairs of another number of latents (another SAE) were compared as if they were one.
    expect(() => psEval([{ a: v(1, 0, 0), b: v(0, 1, 0), same: true }, { a: v(1, 0), b: v(1, 0), same: true }])).toThrow(
      shape(/^Expected pairs\[1\]\.a and pairs\[1\]\.b of the same non-zero length 3 but received 2 and 2$/),
    );
  });

  it('validates its arguments', () => {
    expect(() => psEval([])).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG' }));
    expect(() => psEval([{ a: v(1, 2), b: v(1), same: true }])).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_SHAPE' }));
    expect(() => psEval([{ a: [1] as unknown as Float32Array, b: v(1), same: true }])).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG' }));
    expect(() => psEval([{ a: v(1), b: v(1), same: 1 as unknown as boolean }])).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG' }));
    expect(() => psEval([{ a: v(Number.NaN), b: v(1), same: true }])).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_NONFINITE' }));
    // Holes of a sparse array are missing pairs, not skipped ones.
    expect(() => psEval(new Array(4))).toThrow(/pairs\[0\]/);
    const holey = [{ a: v(1, 0), b: v(1, 0), same: true }];
    holey[2] = { a: v(1, 0), b: v(1, 0), same: true };
    expect(() => psEval(holey)).toThrow(/pairs\[1\]/);
  });
});

describe('cooccurrence() over an SAE and a source', () => {
  it('equals the accumulator fed with the same codes, in any batch size', async () => {
    const { SparseAutoencoder: Sae, fromArray } = await import('../lib/index.js');
    const { cooccurrence, CooccurrenceAccumulator: Acc } = await import('../lib/eval/cooccurrence.js');
    const [dIn, L, k, rows] = [11, 37, 3, 1000];
    using sae = Sae.create({ dIn, numLatents: L, k, seed: 5 });
    let s = 12345;
    const x = Float32Array.from({ length: rows * dIn }, () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) - 0.5);
    const direct = new Acc(L, { chunkTokens: 64 });
    direct.add(await sae.encode(x));
    const want = await direct.result({ top: 20 });
    for (const batchSize of [7, 100, 1000]) {
      const got = await cooccurrence({ sae, source: fromArray(x, dIn), batchSize }, { chunkTokens: 64, top: 20 });
      expect(got.chunks).toBe(want.chunks);
      expect(got.top).toEqual(want.top);
    }
    const cut = await cooccurrence({ sae, source: fromArray(x, dIn), maxTokens: 128 }, { chunkTokens: 64 });
    expect(cut.chunks).toBe(2);
  });
});


describe('sparseProbeAsync (consumer review: sparseProbe held the JS thread ~2 s at 8192 x 16384)', () => {
  it('gives sparseProbe\'s results while the event loop runs, rejects bad arguments, and stops on its signal', async () => {
    const seed = (Date.now() ^ 0x68e31da4) >>> 0;
    const next = lcg(seed);
    const [n, m] = [600 + Math.floor(next() * 200), 2001 + Math.floor(next() * 500)];
    const labels = Uint8Array.from({ length: n }, () => (next() < 0.5 ? 1 : 0));
    // A few latents carry the label.
    const features = Float32Array.from({ length: n * m }, (_, i) => next() - 0.5 + ((i % m) % 97 === 3 && labels[Math.floor(i / m)] ? 0.8 : 0));
    const opts = { m, k: [1, 4, 9], seed: 11 };
    const want = sparseProbe(features, labels, opts);
    const { value: got, elapsed, longest, firings } = await watchCall(() => sparseProbeAsync(features, labels, opts));
    expect(got, `seed ${seed}`).toEqual(want);
    expect(longest, `seed ${seed}: longest gap of a ${elapsed.toFixed(0)} ms call`).toBeLessThan(gapBound(elapsed));
    expect(firings, `seed ${seed}`).toBeGreaterThan(0);
    // Arguments: the same checks, as rejections.
    await expect(sparseProbeAsync(features, labels.subarray(1), opts)).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE' });
    await expect(sparseProbeAsync(features, labels, { ...opts, C: 0 })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.C/) });
    await expect(sparseProbeAsync(features, labels, undefined as never)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/for options but received undefined/) });
    await expect(sparseProbeAsync(features, labels, { ...opts, signal: 'stop' as never })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.signal/) });
    // An abort is seen at the next slice (every look at the clock ends a slice here).
    const ctrl = new AbortController();
    const reason = new Error('stop');
    setImmediate(() => ctrl.abort(reason));
    await expect(everyLookATurn(() => sparseProbeAsync(features, labels, { ...opts, signal: ctrl.signal }))).rejects.toBe(reason);
  });
});
