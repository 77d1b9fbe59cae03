/**
 * Chunk co-occurrence (lib/eval/cooccurrence.ts): the packed pair counts against a naive count of
 * every chunk's pairs, above the old 4,096-latent limit of dense counts included; the memory limit
 * checked up front; a failed add() leaving the accumulator either unchanged or refusing further
 * use; the checks of cooccurrence()'s input and of phiCoefficient's counts.
 */
import { describe, expect, it } from 'vitest';
import {
  COOCCURRENCE_DENSE_MAX,
  COOCCURRENCE_MAX_LATENTS,
  CooccurrenceAccumulator,
  cooccurrence,
  phiCoefficient,
  type CooccurrenceCodes,
  type CooccurrencePair,
} from '../lib/eval/cooccurrence.js';
import { fromArray, SparseAutoencoder } from '../lib/index.js';
import { gapBound, watchCall } from './helpers/event-loop.js';
import { lcg } from './helpers/reference.js';
import { activeSets, sliceCodes } from './helpers/cooccurrence-reference.js';

/** Random codes: skewed latent frequencies over [0, numLatents), some values at 0 or 0.5 (below thresholds). */
function randomCodes(rows: number, k: number, numLatents: number, next: () => number): CooccurrenceCodes {
  const values = new Float32Array(rows * k);
  const indices = new Int32Array(rows * k);
  for (let i = 0; i < rows * k; i++) {
    indices[i] = Math.min(numLatents - 1, Math.floor(next() ** 2 * numLatents));
    const u = next();
    values[i] = u < 0.1 ? 0 : u < 0.2 ? 0.5 : u * 2;
  }
  return { rows, k, values, indices };
}

/**
 * Counting reference: the set of active latents of each chunk, then every pair of each set
 * counted in a Map, and phi from the 2x2 table (n11 n00 - n10 n01) / sqrt(n1. n0. n.1 n.0).
 * Returns every co-occurring pair in the result's order (phi desc, count desc, i asc, j asc).
 */
function naive(c: CooccurrenceCodes, numLatents: number, chunkTokens: number, threshold: number, dropPartial: boolean) {
  return naiveOfChunks(activeSets(c, chunkTokens, threshold, dropPartial), numLatents);
}

/** naive() from the chunks' sets of active latents. */
function naiveOfChunks(chunks: Set<number>[], numLatents: number) {
  const T = chunks.length;
  const active = new Array<number>(numLatents).fill(0);
  const pairs = new Map<string, number>();
  for (const s of chunks) {
    const list = [...s];
    for (const i of list) active[i] += 1;
    for (const i of list) for (const j of list) if (i < j) pairs.set(`${i},${j}`, (pairs.get(`${i},${j}`) ?? 0) + 1);
  }
  const all: CooccurrencePair[] = [];
  for (const [key, n11] of pairs) {
    const [i, j] = key.split(',').map(Number);
    const n10 = active[i] - n11;
    const n01 = active[j] - n11;
    const n00 = T - n11 - n10 - n01;
    const v = (n11 * n00 - n10 * n01) / Math.sqrt((n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00));
    all.push({ i, j, count: n11, phi: Number.isFinite(v) ? v : 0 });
  }
  all.sort((x, y) => y.phi - x.phi || y.count - x.count || x.i - y.i || x.j - y.j);
  return { T, active, all };
}

describe('CooccurrenceAccumulator pair counts', () => {
  it('match a naive count of every chunk, above 4,096 latents, for any split, top size and partial chunk', async () => {
    const next = lcg(101);
    for (const [numLatents, rows, k, chunkTokens, threshold, dropPartial] of [
      [4099, 401, 6, 13, 0, false], // 31 chunks: the last one partial, counted
      [4111, 257, 5, 29, 0.5, true], // the partial last chunk dropped
      [37, 301, 3, 11, 0, false],
      [37, 301, 3, 11, 0, true],
      [2, 9, 2, 4, 0, false],
    ] as const) {
      const codes = randomCodes(rows, k, numLatents, next);
      const ref = naive(codes, numLatents, chunkTokens, threshold, dropPartial);
      const acc = new CooccurrenceAccumulator(numLatents, { chunkTokens, threshold, dropPartial });
      let at = 0;
      while (at < rows) {
        const to = Math.min(rows, at + 1 + Math.floor(next() * 97)); // odd, unaligned splits
        acc.add(sliceCodes(codes, at, to));
        at = to;
      }
      expect(ref.all.length).toBeGreaterThan(0);
      for (const top of [1, 7, 100, ref.all.length + 5]) {
        const res = await acc.result({ top });
        expect(res.chunks).toBe(ref.T);
        expect(Array.from(res.active)).toEqual(ref.active);
        // The same integers and the same float operations: equal phi, so the same order.
        expect(res.top).toEqual(ref.all.slice(0, top));
      }
    }
  });

  it('result() and cooccurrence() without options.top list the documented default of 100 pairs (fresh random codes)', async () => {
    const seed = (Date.now() ^ 0x6a09e667) >>> 0;
    const next = lcg(seed);
    const numLatents = 31 + 2 * Math.floor(next() * 10);
    const rows = 201 + 2 * Math.floor(next() * 100);
    const chunkTokens = 7 + 2 * Math.floor(next() * 4);
    const codes = randomCodes(rows, 3, numLatents, next);
    const ref = naive(codes, numLatents, chunkTokens, 0, false);
    expect(ref.all.length, `seed ${seed}`).toBeGreaterThan(100);
    const acc = new CooccurrenceAccumulator(numLatents, { chunkTokens });
    acc.add(codes);
    expect((await acc.result()).top, `seed ${seed}`).toEqual(ref.all.slice(0, 100));
    expect((await cooccurrence({ numLatents, codes }, { chunkTokens })).top, `seed ${seed}`).toEqual(ref.all.slice(0, 100));
  });

  it('a pair tied in phi with the worst kept pair but of a higher count replaces it (complementary tables, fresh random chunks)', async () => {
    // The tables (cii, cjj, cij) and (T - cii, T - cjj, T - cii - cjj + cij) have the same phi
    // to the bit (the same integers in the numerator and the denominator), and the second has
    // the higher count. The scan's pruning test on num |num| against phi_worst^2 var_i var_j
    // must not drop the second through rounding.
    const seed = (Date.now() ^ 0x510e527f) >>> 0;
    const next = lcg(seed);
    const pick = (n: number) => Math.floor(next() * n);
    let checked = 0;
    for (let trial = 0; trial < 40; trial++) {
      const tables: number[][] = [];
      const T = 6 + pick(25);
      for (let a = 1; a < T; a++) for (let b = a; b < T; b++) for (let c = Math.max(1, a + b - T); c <= Math.min(a, b); c++) {
        const [a2, b2, c2] = [T - a, T - b, T - a - b + c];
        if (T * c - a * b > 0 && c2 > c) tables.push([a, b, c, a2, b2, c2]);
      }
      const [a, b, c, a2, b2, c2] = tables[pick(tables.length)]!;
      const ctx = `seed ${seed}: T ${T}, tables (${a}, ${b}, ${c}) and (${a2}, ${b2}, ${c2})`;
      // One token per chunk; latents 0, 1 hold the first table and 2, 3 the second, on random
      // chunks, until the two pairs are the best two (the cross pairs rank lower).
      const place = (x: number, y: number, both: number) => {
        const order = Array.from({ length: T }, (_, t) => t);
        for (let t = T - 1; t > 0; t--) {
          const u = pick(t + 1);
          [order[t], order[u]] = [order[u]!, order[t]!];
        }
        // both chunks, then x-only, then y-only
        return [new Set(order.slice(0, x)), new Set([...order.slice(0, both), ...order.slice(x, x + y - both)])];
      };
      for (let attempt = 0; attempt < 2000; attempt++) {
        const [s0, s1] = place(a, b, c);
        const [s2, s3] = place(a2, b2, c2);
        const values = new Float32Array(T * 4);
        const indices = Int32Array.from({ length: T * 4 }, (_, q) => q % 4);
        for (let t = 0; t < T; t++) [s0, s1, s2, s3].forEach((set, l) => (values[t * 4 + l] = set!.has(t) ? 1 : 0));
        const codes = { rows: T, k: 4, values, indices };
        const ref = naive(codes, 4, 1, 0, false);
        const [first, second] = ref.all;
        if (!(first && second && first.i === 2 && first.j === 3 && second.i === 0 && second.j === 1 && first.phi === second.phi)) continue;
        const acc = new CooccurrenceAccumulator(4, { chunkTokens: 1 });
        acc.add(codes);
        expect((await acc.result({ top: 1 })).top, ctx).toEqual([first]);
        expect((await acc.result({ top: 2 })).top, ctx).toEqual([first, second]);
        checked++;
        break;
      }
    }
    expect(checked, `seed ${seed}: tables whose two pairs ranked first in some placement`).toBeGreaterThan(20);
  });

  it('cooccurrence() over an array of codes equals the accumulator', async () => {
    const next = lcg(7);
    const numLatents = 4100;
    const batches = [randomCodes(400, 6, numLatents, next), randomCodes(0, 6, numLatents, next), randomCodes(201, 6, numLatents, next)];
    const acc = new CooccurrenceAccumulator(numLatents, { chunkTokens: 17 });
    for (const b of batches) acc.add(b);
    expect(await cooccurrence({ numLatents, codes: batches }, { chunkTokens: 17, top: 40 })).toEqual(await acc.result({ top: 40 }));
  });

  it('counts the reference scale: 16,384 latents, k = 50, 256-token chunks of ~1,430 active latents', async () => {
    // 18 chunks of ~1M pairs each: more than the 16M distinct pairs the old pair Map refused.
    const [L, k, chunk, nChunks, pool] = [16384, 50, 256, 18, 1500];
    const next = lcg(17);
    const acc = new CooccurrenceAccumulator(L, { chunkTokens: chunk });
    const sets: Set<number>[] = [];
    for (let c = 0; c < nChunks; c++) {
      const latents = Array.from({ length: pool }, () => Math.floor(next() * L));
      const codes = { rows: chunk, k, values: new Float32Array(chunk * k).fill(2), indices: new Int32Array(chunk * k) };
      for (let q = 0; q < chunk * k; q++) codes.indices[q] = latents[Math.floor(next() * pool)];
      sets.push(new Set(codes.indices));
      acc.add(codes);
    }
    const res = await acc.result({ top: 20 });
    expect(res.chunks).toBe(nChunks);
    const active = new Float64Array(L);
    for (const s of sets) for (const i of s) active[i] += 1;
    expect(res.active).toEqual(active);
    expect(res.top).toHaveLength(20);
    for (const p of res.top) {
      const count = sets.filter((s) => s.has(p.i) && s.has(p.j)).length;
      expect(p.count).toBe(count);
      expect(p.phi).toBe(phiCoefficient(nChunks, count, active[p.i], active[p.j]));
    }
  }, 30_000);

  it('refuses numLatents above the limit up front, naming the memory', () => {
    expect(COOCCURRENCE_MAX_LATENTS).toBe(32768);
    const t0 = performance.now();
    expect(() => new CooccurrenceAccumulator(COOCCURRENCE_MAX_LATENTS + 1)).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_MEMORY', message: expect.stringMatching(/numLatents = 32769 needs 2048 MiB .*numLatents <= 32768/) }),
    );
    expect(() => new CooccurrenceAccumulator(1 << 20)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_MEMORY' }));
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(() => new CooccurrenceAccumulator(2.5)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/numLatents/) }));
  });

  it('refuses a negative threshold: latents left out of sparse codes (value 0) would count by k, not by value', () => {
    const t = -(Math.random() + 1e-9);
    expect(() => new CooccurrenceAccumulator(8, { threshold: t })).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: `Expected a finite number >= 0 for options.threshold but received ${t} (number)` }),
    );
    expect(new CooccurrenceAccumulator(8, { threshold: 0 }).threshold).toBe(0);
  });
});

describe('CooccurrenceAccumulator after a failed add()', () => {
  it('a refused batch changes nothing', async () => {
    const next = lcg(5);
    const codes = randomCodes(200, 4, 50, next);
    const acc = new CooccurrenceAccumulator(50, { chunkTokens: 16 });
    acc.add(sliceCodes(codes, 0, 70));
    const before = await acc.result({ top: 1000 });
    const bad = sliceCodes(codes, 70, 200);
    bad.indices[bad.indices.length - 1] = 50; // the last entry: after a chunk's worth of good tokens
    expect(() => acc.add(bad)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/codes\.indices\[519\]/) }));
    expect(await acc.result({ top: 1000 })).toEqual(before);
    acc.add(sliceCodes(codes, 70, 200));
    const whole = new CooccurrenceAccumulator(50, { chunkTokens: 16 });
    whole.add(codes);
    expect(await acc.result({ top: 1000 })).toEqual(await whole.result({ top: 1000 }));
  });

  it('a failure midway marks the accumulator broken: later add() and result() say why', async () => {
    const codes = randomCodes(40, 3, 20, lcg(9));
    // Reads of values succeed through the checks, then throw halfway through the counting.
    let reads = 0;
    const values = new Proxy(codes.values, {
      get(target, key) {
        if (typeof key === 'string' && /^\d+$/.test(key) && ++reads > codes.values.length + 70) throw new Error('read failed');
        return Reflect.get(target, key);
      },
    });
    const acc = new CooccurrenceAccumulator(20, { chunkTokens: 8 });
    expect(() => acc.add({ ...codes, values })).toThrow('read failed');
    const broken = expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/can no longer be used: an add\(\) failed after counting part of its batch \(read failed\)/) });
    await expect(acc.result()).rejects.toThrow(broken);
    expect(() => acc.add(codes)).toThrow(broken);
  });
});

describe('cooccurrence() input checks', () => {
  it('names the argument for every bad input before any work', async () => {
    const d = 6;
    using sae = SparseAutoencoder.create({ dIn: d, numLatents: 16, k: 3, seed: 1 });
    const next = lcg(3);
    const x = Float32Array.from({ length: 100 * d }, () => next() - 0.5);
    const source = fromArray(x, d);
    const ok = await cooccurrence({ sae, source: fromArray(x, d), maxTokens: 35 }, { chunkTokens: 10 });
    expect(ok.chunks).toBe(4);
    expect((await cooccurrence({ sae, source: fromArray(x, d), maxTokens: Infinity, batchSize: 7 }, { chunkTokens: 10 })).chunks).toBe(10);
    const arg = (re: RegExp) => expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(re) });
    for (const maxTokens of [-5, 0, Number.NaN, 10.5, '10']) {
      await expect(cooccurrence({ sae, source, maxTokens: maxTokens as number })).rejects.toThrow(arg(/input\.maxTokens/));
    }
    for (const batchSize of [0, 2.5]) await expect(cooccurrence({ sae, source, batchSize })).rejects.toThrow(arg(/input\.batchSize/));
    await expect(cooccurrence({ sae, source, maxToken: 100 } as never)).rejects.toThrow(arg(/Unknown option input\.maxToken \(did you mean input\.maxTokens\?\)/));
    await expect(cooccurrence({ source } as never)).rejects.toThrow(arg(/input\.sae/));
    await expect(cooccurrence({ sae } as never)).rejects.toThrow(arg(/input\.source/));
    await expect(cooccurrence(null as never)).rejects.toThrow(arg(/for input but received null/));
    await expect(cooccurrence({ sae, source }, null as never)).rejects.toThrow(arg(/for options but received null/));
    await expect(cooccurrence({ sae, source }, { top: -1 })).rejects.toThrow(arg(/options\.top/));
    await expect(cooccurrence({ sae, source }, { chunkToken: 5 } as never)).rejects.toThrow(arg(/did you mean options\.chunkTokens/));
    await expect(cooccurrence({ numLatents: 16, code: [] } as never)).rejects.toThrow(arg(/Unknown option input\.code /));
    await expect(cooccurrence({ numLatents: 16, codes: undefined } as never)).rejects.toThrow(arg(/input\.codes/));
    await expect(cooccurrence({ numLatents: 16, codes: [null] } as never)).rejects.toThrow(arg(/input\.codes\[0\]/));
    await expect(cooccurrence({ numLatents: 0, codes: [] })).rejects.toThrow(arg(/input\.numLatents/));
  });
});

describe('phiCoefficient', () => {
  it('equals the 2x2-table phi on every possible table and refuses impossible counts, naming them', () => {
    for (const T of [0, 1, 5, 8]) {
      for (let a = 0; a <= T; a++) {
        for (let b = 0; b <= T; b++) {
          for (let c = Math.max(0, a + b - T); c <= Math.min(a, b); c++) {
            const [n11, n10, n01] = [c, a - c, b - c];
            const n00 = T - n11 - n10 - n01;
            const v = (n11 * n00 - n10 * n01) / Math.sqrt((n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00));
            const got = phiCoefficient(T, c, a, b);
            expect(got).toBe(Number.isFinite(v) ? v : 0);
            expect(Math.abs(got)).toBeLessThanOrEqual(1 + 1e-12);
          }
        }
      }
    }
    const arg = (re: RegExp) => expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(re) });
    expect(() => phiCoefficient(10, 5, 3, 3)).toThrow(arg(/between max\(0, cii \+ cjj - T\) = 0 and min\(cii, cjj\) = 3 for cij but received 5/));
    expect(() => phiCoefficient(10, 1, 8, 8)).toThrow(arg(/= 6 and .* for cij but received 1/)); // n00 would be -5
    expect(() => phiCoefficient(10, 1, 20, 3)).toThrow(arg(/integer between 0 and T = 10 for cii/));
    expect(() => phiCoefficient(10, 1, 2, -1)).toThrow(arg(/for cjj/));
    expect(() => phiCoefficient(Number.NaN, 1, 2, 3)).toThrow(arg(/for T but received NaN/));
    expect(() => phiCoefficient(10, 1.5, 2, 3)).toThrow(arg(/for cij/));
    expect(() => phiCoefficient(10, Number.NaN, 2, 3)).toThrow(arg(/for cij/));
  });
});

describe('cooccurrence() names the bad batch and index before counting anything', () => {
  it('a bad index deep in the second batch is named by batch and global position', async () => {
    const good = { rows: 600, k: 2, values: new Float32Array(1200).fill(1), indices: Int32Array.from({ length: 1200 }, (_, i) => i % 7) };
    const bad = { ...good, indices: good.indices.slice() };
    bad.indices[1100] = 99;
    await expect(cooccurrence({ numLatents: 8, codes: [good, bad] }, { chunkTokens: 4 })).rejects.toThrow(/input\.codes\[1\]\.indices\[1100\]/);
    const nan = { ...good, values: good.values.slice() };
    nan["values"][1000] = NaN;
    await expect(cooccurrence({ numLatents: 8, codes: nan }, { chunkTokens: 4 })).rejects.toThrow(/input\.codes\.values\[1000\] is NaN/);
  });
});

describe('cooccurrence() shares the JS thread', () => {
  // Before, cooccurrence({ numLatents, codes }) checked every batch whole, then counted the first
  // chunk, before its first turn of the event loop: 0.36-0.38 s at these sizes on the loaded
  // 2-core development machine (the first chunk's close, faulting in pages of the counts, adds
  // more at 16k+ latents). Now the checks yield every ~10 ms and counting starts a slice of its
  // own. The bound is event-loop-slices.test.ts's 150 ms, or a sixth of the call when that is
  // longer.
  it('eight batches of 131,072 x 64 codes (one array, given eight times); counts and phi match a naive count', async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const [L, rows, k, chunkTokens, threshold] = [2048, 131072, 64, 4096, 0.9999];
    const values = new Float32Array(rows * k);
    const indices = new Int32Array(rows * k);
    for (let i = 0; i < values.length; i++) {
      values[i] = next();
      indices[i] = Math.floor(next() * L);
    }
    const codes = { rows, k, values, indices };
    const { value: got, elapsed, longest, firings } = await watchCall(() =>
      cooccurrence({ numLatents: L, codes: Array<typeof codes>(8).fill(codes) }, { chunkTokens, threshold, top: 50 }),
    );
    expect(longest, `seed ${seed}: longest gap of a ${elapsed.toFixed(0)} ms call`).toBeLessThan(gapBound(elapsed));
    expect(firings, `seed ${seed}: ${elapsed.toFixed(0)} ms`).toBeGreaterThan(elapsed / 50);
    const once = activeSets(codes, chunkTokens, threshold, false); // rows is a multiple of chunkTokens
    const ref = naiveOfChunks(Array.from({ length: 8 }, () => once).flat(), L);
    expect(ref.all.length, `seed ${seed}`).toBeGreaterThan(50);
    expect(got.chunks, `seed ${seed}`).toBe(ref.T);
    expect(Array.from(got.active), `seed ${seed}`).toEqual(ref.active);
    expect(got.top, `seed ${seed}`).toEqual(ref.all.slice(0, 50));
  }, 30_000);

  // One chunk's close with ~8.7k active latents adds 1 to ~38M pair counts: before, that ran in
  // one piece (1.1-1.7 s of a 7-10 s call on the loaded development machine, where the sliced
  // close's longest gap was 50-70 ms of a 3-5 s call). The result scan makes the call long, so
  // the bound here is a twentieth of the call (gapBound's sixth would let the old close pass).
  // The counts must be those of a plain add() of the same codes.
  it('a chunk close with thousands of active latents is sliced and counts as add() does', async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const [L, rows, k, chunkTokens] = [12000, 512, 64, 256];
    const values = new Float32Array(rows * k).fill(1);
    const indices = new Int32Array(rows * k);
    for (let i = 0; i < indices.length; i++) indices[i] = Math.floor(next() * L);
    const codes = { rows, k, values, indices };
    const bound = (elapsed: number) => Math.max(150, elapsed / 20);
    const { value: got, elapsed, longest, firings } = await watchCall(() => cooccurrence({ numLatents: L, codes }, { chunkTokens, top: 40 }), { bound });
    expect(longest, `seed ${seed}: longest gap of a ${elapsed.toFixed(0)} ms call`).toBeLessThan(bound(elapsed));
    expect(firings, `seed ${seed}: ${elapsed.toFixed(0)} ms`).toBeGreaterThan(elapsed / 50);
    const acc = new CooccurrenceAccumulator(L, { chunkTokens });
    acc.add(codes);
    const want = await acc.result({ top: 40 });
    expect(got.chunks).toBe(2);
    expect(Array.from(got.active), `seed ${seed}`).toEqual(Array.from(want.active));
    expect(got.top, `seed ${seed}`).toEqual(want.top);
  }, 60_000);
});

describe('cooccurrence() with codes detached while it runs', () => {
  // The checks and the counting read the codes across pauses: detached, the counting failed with
  // a bare TypeError (subarray of a detached buffer) or counted nothing.
  const [rows, k, M] = [100_000, 8, 512];
  const make = (next: () => number): CooccurrenceCodes => ({
    rows,
    k,
    values: new Float32Array(rows * k).fill(1),
    indices: Int32Array.from({ length: rows * k }, (_, i) => (i % k) * (M / k) + Math.floor(next() * (M / k))),
  });
  const tick = () => new Promise<void>((r) => setImmediate(r));

  it('detached after 1-200 turns of the event loop: ERR_SAEKIT_ARG naming the array, or (detached after the end) the untouched result', async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    let rejected = 0;
    for (const [ticks, which] of [
      [1, 'values'],
      [3, 'indices'],
      [10, 'values'],
      [200, 'indices'],
    ] as const) {
      const codes = make(next);
      const want = await cooccurrence({ numLatents: M, codes: { ...codes, values: codes.values.slice(), indices: codes.indices.slice() } }, { top: 5 });
      const p = cooccurrence({ numLatents: M, codes }, { top: 5 });
      for (let t = 0; t < ticks; t++) await tick();
      structuredClone(codes[which].buffer, { transfer: [codes[which].buffer as ArrayBuffer] });
      const r = await Promise.allSettled([p]).then(([x]) => x!);
      if (r.status === 'fulfilled') {
        expect(r.value, `seed ${seed}, ${ticks} ticks`).toEqual(want);
        continue;
      }
      rejected++;
      expect(r.reason, `seed ${seed}, ${ticks} ticks`).toMatchObject({
        code: 'ERR_SAEKIT_ARG',
        message: `Expected input.codes.${which} to keep its ${rows * k} values until the call settles but it now has 0 (was its ArrayBuffer detached or resized?)`,
      });
    }
    expect(rejected, 'detached after one turn, the call must fail').toBeGreaterThan(0);
  }, 60_000);
});

describe('mutation round (cooc): bounds, defaults and refusals', () => {
  /** Codes of `rows` tokens (k = 3) over the latents in `pool` (random picks, values in (0, 2)). */
  const poolCodes = (rows: number, pool: number[], next: () => number): CooccurrenceCodes => {
    const k = 3;
    const values = Float32Array.from({ length: rows * k }, () => 0.01 + next() * 1.99);
    const indices = Int32Array.from({ length: rows * k }, () => pool[Math.floor(next() * pool.length)]!);
    return { rows, k, values, indices };
  };

  it('the dense phi matrix is given at numLatents = COOCCURRENCE_DENSE_MAX (4096) and refused one above; at the bound it and top equal a naive count', async () => {
    expect(COOCCURRENCE_DENSE_MAX).toBe(4096);
    const seed = (Date.now() ^ 0x3c6ef372) >>> 0;
    const next = lcg(seed);
    const n = COOCCURRENCE_DENSE_MAX;
    // A pool of latents including both ends (the matrix's first and last rows and columns).
    const pool = [0, 1, n - 2, n - 1, ...Array.from({ length: 9 }, () => 2 + Math.floor(next() * (n - 4)))];
    const chunkTokens = 3 + Math.floor(next() * 4);
    const codes = poolCodes(61 + 2 * Math.floor(next() * 30), pool, next);
    const ref = naive(codes, n, chunkTokens, 0, false);
    const acc = new CooccurrenceAccumulator(n, { chunkTokens });
    acc.add(codes);
    const res = await acc.result({ top: 1000, dense: true });
    expect(res.top, `seed ${seed}`).toEqual(ref.all);
    expect((await acc.result({ top: 1000 })).top, `seed ${seed}`).toEqual(ref.all);
    const phi = res.phi!;
    expect(phi).toHaveLength(n * n);
    // Every entry: the naive pair's phi, 1 or 0 on the diagonal, and 0 for pairs that never co-occur
    // (one of them never active or always active: phi 0) or that co-occur in no chunk.
    const want = new Map(ref.all.map((p) => [p.i * n + p.j, p.phi]));
    const T = ref.T;
    let nonzero = 0;
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        const got = phi[i * n + j]!;
        let w: number;
        if (ref.active[i] === 0 || ref.active[j] === 0) w = 0;
        else if (i === j) w = ref.active[i]! > 0 && ref.active[i]! < T ? 1 : 0;
        else {
          const [a, b] = i < j ? [i, j] : [j, i];
          // Never together: n11 = 0, so phi = -ci cj / sqrt(ci (T - ci) cj (T - cj)) (0 where undefined).
          const ci = ref.active[a]!;
          const cj = ref.active[b]!;
          const apart = -(ci * cj) / Math.sqrt(ci * (T - ci) * cj * (T - cj));
          w = want.get(a * n + b) ?? (Number.isFinite(apart) ? apart : 0);
        }
        if (got !== w) expect(got, `seed ${seed}: phi[${i}, ${j}]`).toBe(w);
        if (got !== 0) nonzero++;
      }
    }
    expect(nonzero, `seed ${seed}`).toBeGreaterThan(pool.length);
    // One latent more: refused, naming the option and the bound, before any scan. (Settled by
    // hand: a resolved 4097 x 4097 matrix would make rejects.toThrow print it.)
    const over = new CooccurrenceAccumulator(n + 1, { chunkTokens });
    over.add(codes);
    const settled = (p: Promise<unknown>) => p.then(() => 'resolved', (e: unknown) => e);
    expect(await settled(over.result({ dense: true }))).toMatchObject({ code: 'ERR_SAEKIT_ARG', message: 'Expected false when numLatents > 4096 for options.dense but received true (boolean)' });
    expect(await settled(cooccurrence({ numLatents: n + 1, codes }, { dense: true }))).toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.dense/) });
    // cooccurrence() gives the same matrix (compared entry by entry: toEqual on 16M entries is slow).
    const viaCall = (await cooccurrence({ numLatents: n, codes }, { chunkTokens, dense: true, top: 1000 })).phi!;
    expect(viaCall).toHaveLength(n * n);
    let differ = 0;
    for (let q = 0; q < n * n; q++) if (viaCall[q] !== phi[q]) differ++;
    expect(differ, `seed ${seed}`).toBe(0);
  }, 30_000);

  it('numLatents = COOCCURRENCE_MAX_LATENTS (32,768) is taken and counts the last latents of the packed triangle', async () => {
    const n = COOCCURRENCE_MAX_LATENTS;
    const seed = (Date.now() ^ 0xa54ff53a) >>> 0;
    const next = lcg(seed);
    const pool = [0, 5, n - 3, n - 2, n - 1, 1 + Math.floor(next() * (n - 5))];
    const codes = poolCodes(40 + Math.floor(next() * 40), pool, next);
    const ref = naive(codes, n, 4, 0, false);
    const acc = new CooccurrenceAccumulator(n, { chunkTokens: 4 });
    acc.add(codes);
    const res = await acc.result({ top: 100 });
    expect(res.chunks).toBe(ref.T);
    expect(res.top, `seed ${seed}`).toEqual(ref.all);
  }, 30_000);

  it('chunkTokens defaults to the documented 256 (accumulator and cooccurrence()), on a fresh odd number of rows', async () => {
    const seed = (Date.now() ^ 0x9b05688c) >>> 0;
    const next = lcg(seed);
    const numLatents = 23 + 2 * Math.floor(next() * 10);
    const rows = 3 * 256 + 1 + 2 * Math.floor(next() * 100); // three chunks and a partial fourth
    const codes = randomCodes(rows, 2, numLatents, next);
    const ref = naive(codes, numLatents, 256, 0, false);
    const acc = new CooccurrenceAccumulator(numLatents);
    expect(acc.chunkTokens).toBe(256);
    acc.add(codes);
    const res = await acc.result({ top: 1000 });
    expect(res.chunks, `seed ${seed}`).toBe(4);
    expect(Array.from(res.active), `seed ${seed}`).toEqual(ref.active);
    expect(res.top, `seed ${seed}`).toEqual(ref.all);
    expect((await cooccurrence({ numLatents, codes }, { top: 1000 })).top, `seed ${seed}`).toEqual(ref.all);
  });

  it('a negative latent index is refused, named by position (it was read as inactive and dropped)', async () => {
    const seed = (Date.now() ^ 0x1f83d9ab) >>> 0;
    const next = lcg(seed);
    const codes = randomCodes(50, 3, 20, next);
    const at = Math.floor(next() * codes.indices.length);
    codes.indices[at] = -1 - Math.floor(next() * 5);
    codes.values[at] = 1;
    const acc = new CooccurrenceAccumulator(20, { chunkTokens: 8 });
    expect(() => acc.add(codes), `seed ${seed}`).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: `Expected integer between 0 and 19 for codes.indices[${at}] but received ${codes.indices[at]} (number)` }),
    );
    await expect(cooccurrence({ numLatents: 20, codes: [codes] })).rejects.toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringContaining(`for input.codes[0].indices[${at}] but`) }),
    );
  });
  it('a threshold of Infinity is refused like NaN (expected a finite number >= 0)', () => {
    for (const t of [Infinity, -Infinity, Number.NaN]) {
      expect(() => new CooccurrenceAccumulator(8, { threshold: t }), String(t)).toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: `Expected a finite number >= 0 for options.threshold but received ${t} (number)` }),
      );
    }
  });

  it('cooccurrence() checks every entry of a long batch up front: a bad index at a slice boundary is named as input.codes, nothing counted', async () => {
    // The up-front check runs in slices of 2^16 entries; each boundary entry must be checked too.
    const seed = (Date.now() ^ 0xbb67ae85) >>> 0;
    const next = lcg(seed);
    const k = 4;
    const rows = 3 * 2 ** 14 + 1 + Math.floor(next() * 1000);
    const good = { rows, k, values: new Float32Array(rows * k).fill(1), indices: Int32Array.from({ length: rows * k }, (_, i) => i % 13) };
    for (const at of [2 ** 16 - 1, 2 ** 16, 2 ** 17 - 1, 2 ** 17, Math.floor(next() * rows * k)]) {
      const bad = { ...good, indices: good.indices.slice() };
      bad.indices[at] = 13;
      await expect(cooccurrence({ numLatents: 13, codes: [good, bad] }, { chunkTokens: 5 }), `seed ${seed}, at ${at}`).rejects.toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: `Expected integer between 0 and 12 for input.codes[1].indices[${at}] but received 13 (number)` }),
      );
      const nan = { ...good, values: good.values.slice() };
      nan.values[at] = Number.NaN;
      await expect(cooccurrence({ numLatents: 13, codes: nan }, { chunkTokens: 5 }), `seed ${seed}, at ${at}`).rejects.toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_NONFINITE', message: `input.codes.values[${at}] is NaN: expected finite values` }),
      );
    }
  });

  it('cooccurrence() refuses a source of another width than the SAE before reading it', async () => {
    const d = 6;
    using sae = SparseAutoencoder.create({ dIn: d, numLatents: 16, k: 3, seed: 1 });
    for (const w of [d - 1, d + 1, 2 * d]) {
      let reads = 0;
      const src = fromArray(new Float32Array(30 * w).fill(0.5), w);
      const batches = src.batches.bind(src);
      src.batches = ((o: never) => (reads++, batches(o))) as typeof src.batches;
      await expect(cooccurrence({ sae, source: src }, { chunkTokens: 4 }), `width ${w}`).rejects.toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_SHAPE', message: `Expected input.source of dIn = ${d} (the SAE's) but received dIn = ${w}` }),
      );
      expect(reads, `width ${w}`).toBe(0);
    }
  });
  it('phiCoefficient names a negative cii or cjj as such (not as an impossible cij)', () => {
    const seed = (Date.now() ^ 0x5f1d36f1) >>> 0;
    const next = lcg(seed);
    for (let trial = 0; trial < 20; trial++) {
      const T = 3 + Math.floor(next() * 50);
      const neg = -1 - Math.floor(next() * 5);
      const other = Math.floor(next() * (T + 1));
      expect(() => phiCoefficient(T, 0, neg, other), `seed ${seed}`).toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: `Expected integer between 0 and T = ${T} for cii but received ${neg} (number)` }),
      );
      expect(() => phiCoefficient(T, 0, other, neg), `seed ${seed}`).toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: `Expected integer between 0 and T = ${T} for cjj but received ${neg} (number)` }),
      );
    }
  });
  it('cooccurrence({ sae, source, maxTokens }) asks the source for no batch past maxTokens', async () => {
    const seed = (Date.now() ^ 0x243f6a88) >>> 0;
    const next = lcg(seed);
    const d = 5;
    using sae = SparseAutoencoder.create({ dIn: d, numLatents: 12, k: 2, seed: 2 });
    const batchSize = 7 + 2 * Math.floor(next() * 5);
    const whole = 2 + Math.floor(next() * 4);
    for (const maxTokens of [whole * batchSize, whole * batchSize + 1 + Math.floor(next() * (batchSize - 1))]) {
      const src = fromArray(Float32Array.from({ length: 20 * batchSize * d }, () => next() - 0.5), d);
      let served = 0;
      const batches = src.batches.bind(src);
      src.batches = (o) =>
        (async function* () {
          for await (const b of batches(o)) {
            served++;
            yield b;
          }
        })();
      const res = await cooccurrence({ sae, source: src, maxTokens, batchSize }, { chunkTokens: 3 });
      expect(res.chunks, `seed ${seed}`).toBe(Math.ceil(maxTokens / 3));
      expect(served, `seed ${seed}: maxTokens ${maxTokens}, batchSize ${batchSize}`).toBe(Math.ceil(maxTokens / batchSize));
    }
  });
  it('options.dropPartial and options.dense must be booleans: 1, 0, "yes" and null are refused, not read as truthy or falsy', async () => {
    const acc = new CooccurrenceAccumulator(8, { chunkTokens: 2 });
    for (const v of [1, 'yes', null, 0]) {
      expect(() => new CooccurrenceAccumulator(8, { dropPartial: v as never }), String(v)).toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/for options\.dropPartial but received/) }),
      );
      await expect(acc.result({ dense: v as never }), String(v)).rejects.toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/for options\.dense but received/) }),
      );
    }
  });
});
