import { describe, expect, it } from 'vitest';

import { fromArray, SaekitError, SparseAutoencoder } from '../lib/index.js';
import { codeLength, descriptionLength } from '../lib/eval/mdl.js';
import { gapBound, watchCall } from './helpers/event-loop.js';
import { customSource } from './helpers/data-fixtures.js';
import { lcg } from './helpers/reference.js';

function codes(rows: number, k: number, values: number[], indices: number[]) {
  return { rows, numLatents: 8, k, values: Float32Array.from(values), indices: Int32Array.from(indices) };
}

/** Naive per-latent entropies with a different code path (sorting the (latent, bin) keys). */
function naiveDL(cs: ReturnType<typeof codes>[], L: number, delta: number): number {
  const keys: [number, number][] = [];
  let tokens = 0;
  for (const c of cs) {
    tokens += c.rows;
    c.values.forEach((v, q) => {
      if (v > 0) keys.push([c.indices[q]!, Math.floor(v / delta)]);
    });
  }
  keys.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let bits = 0;
  for (let l = 0; l < L; l++) {
    const mine = keys.filter((k) => k[0] === l);
    if (!mine.length) continue;
    const p = mine.length / tokens;
    let h = p < 1 ? -(p * Math.log2(p) + (1 - p) * Math.log2(1 - p)) : 0;
    const runs = new Map<number, number>();
    for (const [, b] of mine) runs.set(b, (runs.get(b) ?? 0) + 1);
    let hv = 0;
    for (const c of runs.values()) if (c < mine.length) hv -= (c / mine.length) * Math.log2(c / mine.length);
    h += p * hv;
    bits += h;
  }
  return bits;
}

describe('MDL description length', () => {
  it('closed forms: a constant-on latent costs 0 bits; a Bernoulli(1/2) binary latent 1 bit; two equiprobable values add p * 1 bit', async () => {
    // latent 3 on every token with value 2.5; latent 5 on every other token with value 1.
    const c = codes(4, 2, [2.5, 1, 2.5, 0, 2.5, 1, 2.5, 0], [3, 5, 3, 0, 3, 5, 3, 0]);
    const r = await codeLength([c], 8, 1);
    expect(r.bernoulli).toBeCloseTo(1, 12);
    expect(r.value).toBe(0);
    // Now latent 5's two active values fall in different bins: + 1/2 * 1 bit.
    const c2 = codes(4, 2, [2.5, 1, 2.5, 0, 2.5, 3, 2.5, 0], [3, 5, 3, 0, 3, 5, 3, 0]);
    expect((await codeLength([c2], 8, 1)).bits).toBeCloseTo(1.5, 12);
  });

  it('matches a naive float64 reference on random codes, split across batches in any way', async () => {
    const next = lcg(Date.now() >>> 0);
    const L = 23;
    const mk = (rows: number) => {
      const k = 3;
      const v: number[] = [];
      const ix: number[] = [];
      for (let r = 0; r < rows; r++) for (let j = 0; j < k; j++) {
        v.push(next() < 0.2 ? 0 : next() * 5);
        ix.push(Math.floor(next() ** 2 * L));
      }
      return { rows, numLatents: L, k, values: Float32Array.from(v), indices: Int32Array.from(ix) };
    };
    const parts = [mk(17), mk(1), mk(40)];
    const delta = 0.37;
    expect((await codeLength(parts, L, delta)).bits).toBeCloseTo(naiveDL(parts, L, delta), 10);
  });

  it('on a real SAE: the chosen precision meets the MSE bound, parts add up, batch splits agree; compat is labelled SAEBench', async () => {
    const next = lcg(77);
    const [dIn, L, k, rows] = [13, 41, 4, 3000];
    const x = Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 2 });
    const a = await descriptionLength(sae, fromArray(x, dIn), { batchSize: 97, compat: true });
    const b = await descriptionLength(sae, fromArray(x, dIn), { batchSize: 1000 });
    expect(a.tokens).toBe(rows);
    expect(a.mse).toBeLessThanOrEqual(a.mseBound);
    expect(a.mseBound).toBeCloseTo(a.mseUnquantized * 1.01, 10);
    expect(a.bitsPerToken).toBeCloseTo(a.bernoulliBits + a.valueBits, 12);
    expect(a.precision).toBeGreaterThan(0);
    expect(b.bitsPerToken).toBeCloseTo(a.bitsPerToken, 9);
    expect(b.precision).toBeCloseTo(a.precision, 9);
    // A tighter bound needs finer bins and more bits.
    const tight = await descriptionLength(sae, fromArray(x, dIn), { mseBound: a.mseUnquantized * 1.0001 });
    expect(tight.precision).toBeLessThan(a.precision);
    expect(tight.valueBits).toBeGreaterThan(a.valueBits);
    // SAEBench's bins start at max 100: these small codes all land in bin 0 with the zeros,
    // so its value entropy is 0 and its DL is the Bernoulli part alone, for every bin count.
    expect(a.compat!.map((c) => c.numBins)).toEqual([4, 6, 8, 12, 16, 32]);
    for (const c of a.compat!) expect(c.bitsPerToken).toBeCloseTo(a.bernoulliBits, 9);
  });

  it('a lossless SAE (unquantised MSE 0) meets the default bound: 1e-7 x the mean ||x||^2, not 1.01 x 0', async () => {
    // x = relu(x) - relu(-x) with k = dIn = 2: the codes are |x| and the reconstruction exact, so
    // only float32 round-off of the quantised values is left, which 1.01 x 0 (+ 1e-30) never met.
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const W_dec = Float32Array.from([1, 0, 0, 1, -1, 0, 0, -1]);
    const W_enc = Float32Array.from([1, 0, -1, 0, 0, 1, 0, -1]);
    using sae = SparseAutoencoder.fromWeights({ W_enc, b_enc: new Float32Array(4), W_dec, b_dec: new Float32Array(2) }, { k: 2 });
    const rows = 300;
    const x = Float32Array.from({ length: 2 * rows }, () => (next() - 0.5) * 10 ** Math.floor(next() * 7 - 3));
    let sumSq = 0;
    for (const v of x) sumSq += v * v;
    const r = await descriptionLength(sae, fromArray(x, 2), { batchSize: 64 });
    expect(r.mseUnquantized, `seed ${seed}`).toBe(0);
    expect(Math.abs(r.mseBound - (1e-7 * sumSq) / rows), `seed ${seed}`).toBeLessThanOrEqual(1e-12 * r.mseBound);
    expect(r.mse, `seed ${seed}`).toBeLessThanOrEqual(r.mseBound);
    expect(r.precision, `seed ${seed}`).toBeGreaterThan(0);
    expect(r.bitsPerToken, `seed ${seed}`).toBeCloseTo(r.bernoulliBits + r.valueBits, 12);
  });

  it('a bound met only by a coarser width than the finest (the MSE is not monotone in the width) is found, not refused', async () => {
    // W_dec = 0.8 I and every row X e_d: each code is X, quantised at width X 2^-j to
    // X (1 + 2^-(j+1)), decoded to 0.8 X (1 + 2^-(j+1)). The squared error is X^2 (0.2 - 0.4 2^-j)^2:
    // 0.04 X^2 unquantised and at j = 0 or 30, 0 (to float32 rounding) at j = 1. A bound of
    // 0.02 X^2 is met at X / 2, the coarsest power of two that meets it; only j = 30 was tried, and
    // the bound was called "below what any quantisation reaches".
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const dIn = 3;
    const X = Math.fround(0.5 + next() * 100);
    const eye = (s: number) => Float32Array.from({ length: dIn * dIn }, (_, i) => (i % (dIn + 1) === 0 ? s : 0));
    using sae = SparseAutoencoder.fromWeights({ W_enc: eye(1), b_enc: new Float32Array(dIn), W_dec: eye(0.8), b_dec: new Float32Array(dIn) }, { k: 1 });
    const rows = 50;
    const x = new Float32Array(rows * dIn);
    for (let r = 0; r < rows; r++) x[r * dIn + Math.floor(next() * dIn)] = X;
    const r = await descriptionLength(sae, fromArray(x, dIn), { mseBound: 0.02 * X * X });
    const err0 = X - Math.fround(Math.fround(0.8) * X);
    expect(Math.abs(r.mseUnquantized - err0 * err0), `seed ${seed}, X ${X}`).toBeLessThanOrEqual(1e-12 * X * X);
    expect(r.precision, `seed ${seed}, X ${X}`).toBe(X / 2);
    expect(r.mse, `seed ${seed}, X ${X}`).toBeLessThanOrEqual(1e-12 * X * X);
  });

  /**
   * A stub SAE with codes 1 (latent 0) and 2^-7 (latent 1) on every token whose decode is exact
   * when each quantised code rounds (in float32) back to its value and off by 1 per entry for each
   * that does not: MSE 0, dIn x 1 or dIn x 4.
   */
  function twoCodeStub(dIn: number) {
    const small = 2 ** -7;
    return {
      dIn,
      numLatents: 2,
      k: 2,
      encode: async (x: Float32Array) => {
        const rows = x.length / dIn;
        return { rows, numLatents: 2, k: 2, values: Float32Array.from({ length: 2 * rows }, (_, i) => (i % 2 ? small : 1)), indices: Int32Array.from({ length: 2 * rows }, (_, i) => i % 2), x };
      },
      decode: async (c: { values: Float32Array; x: Float32Array }) => {
        let e = 0;
        if (c.values.some((v, i) => i % 2 === 0 && v !== 1)) e++;
        if (c.values.some((v, i) => i % 2 === 1 && v !== small)) e++;
        return Float32Array.from(c.x, (v) => v + e);
      },
    };
  }
  /** The stub's error per entry at bin width w, from float32 rounding of the bin midpoints. */
  const stubError = (w: number) => [1, 2 ** -7].filter((v) => Math.fround((Math.floor(v / w) + 0.5) * w) !== v).length;

  it('the finest width tried is vmax x 2^-30: a bound met only there is found, not refused', async () => {
    // 2^-7 is rounded back to itself at 2^-30 (its midpoint 2^-7 + 2^-31 is a float32 tie, to even)
    // and at no coarser power of two.
    for (let j = 0; j < 30; j++) expect(stubError(2 ** -j), `2^-${j}`).toBeGreaterThan(0);
    expect(stubError(2 ** -30)).toBe(0);
    const dIn = 2;
    const x = Float32Array.from({ length: 13 * dIn }, (_, i) => (i % 5) - 2);
    const r = await descriptionLength(twoCodeStub(dIn) as never, fromArray(x, dIn), { mseBound: 0.5 });
    expect(r.mseUnquantized).toBe(0);
    expect(r.mse).toBe(0);
    expect(r.precision).toBeGreaterThanOrEqual(2 ** -30);
    expect(stubError(r.precision)).toBe(0);
  });

  it('a bound no width meets: the error names the bound given (or the default), and says which widths were tried', async () => {
    // A stub SAE whose decode is exact for its own codes and off by 1 in every entry otherwise:
    // unquantised MSE 0, every quantised width dIn.
    const dIn = 2;
    const own = new WeakSet<Float32Array>();
    const stub = {
      dIn,
      numLatents: 3,
      k: 1,
      encode: async (x: Float32Array) => {
        const rows = x.length / dIn;
        const values = Float32Array.from({ length: rows }, (_, i) => 1 + (i % 3));
        own.add(values);
        return { rows, numLatents: 3, k: 1, values, indices: Int32Array.from({ length: rows }, (_, i) => i % 3), x };
      },
      decode: async (c: { values: Float32Array; x: Float32Array }) => Float32Array.from(c.x, (v) => (own.has(c.values) ? v : v + 1)),
    };
    const x = Float32Array.from({ length: 20 * dIn }, (_, i) => (i % 7) / 4 - 0.75); // x + 1 exact in float32
    await expect(descriptionLength(stub as never, fromArray(x, dIn))).rejects.toThrow(
      /^The default mseBound, max\(1\.01 x the unquantised MSE, 1e-7 x the mean \|\|x\|\|\^2\) = [-\d.e]+, is not met by any bin width tried \(vmax x 2\^-j for j = 0\.\.30, vmax = 3\): the lowest MSE among them is 2, at width 3; the unquantised MSE is 0$/,
    );
    await expect(descriptionLength(stub as never, fromArray(x, dIn), { mseBound: 1.5 })).rejects.toThrow(/^options\.mseBound = 1\.5 is not met by any bin width tried .*lowest MSE among them is 2\b/);
  });

  it('rejects bad options and impossible bounds', async () => {
    using sae = SparseAutoencoder.create({ dIn: 5, numLatents: 9, k: 2, seed: 1 });
    const x = Float32Array.from({ length: 50 }, (_, i) => Math.sin(i));
    await expect(descriptionLength(sae, fromArray(x, 5), { mseBound: -1 })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG' });
    await expect(descriptionLength(sae, fromArray(x, 5), { maxTokens: 1 })).rejects.toBeInstanceOf(SaekitError);
    await expect(descriptionLength(sae, fromArray(new Float32Array(60), 6))).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE' });
    await expect(descriptionLength(sae, fromArray(x, 5), { compat: 'no' as never })).rejects.toThrow(/options\.compat/);
    await expect(descriptionLength(sae, undefined as never)).rejects.toThrow(/source/);
    await expect(descriptionLength({} as never, fromArray(x, 5))).rejects.toThrow(/\bsae\b/);
    // Every code zero (a dead SAE): the MSE is ||x - b_dec||^2 whatever the precision, so a lower
    // bound is impossible and said so (it was returned with mse > mseBound).
    const w = await sae.weights();
    using dead = SparseAutoencoder.fromWeights({ ...w, W_enc: new Float32Array(w.W_enc.length), b_enc: new Float32Array(9).fill(-1) }, { k: 2 });
    const r = await descriptionLength(dead, fromArray(x, 5));
    expect(r.mse).toBe(r.mseUnquantized);
    await expect(descriptionLength(dead, fromArray(x, 5), { mseBound: r.mseUnquantized / 2 })).rejects.toThrow(/every code is zero/);
  });
});

describe('descriptionLength: options.signal', () => {
  const [dIn, L, k, rows] = [6, 17, 3, 400];
  const x = (() => {
    const next = lcg(123);
    return Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
  })();

  it('an aborted signal rejects before reading; an abort between the batches read rejects with its reason and ends the pass', async () => {
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 3 });
    const state = { started: false, ended: false, batches: 0 };
    const ctrl = new AbortController();
    const reason = new Error('enough');
    const source = (abortAfter: number) =>
      customSource(dIn, rows, async function* (o) {
        state.started = true;
        try {
          for await (const b of fromArray(x, dIn).batches(o)) {
            if (++state.batches === abortAfter) ctrl.abort(reason);
            yield b;
          }
        } finally {
          state.ended = true;
        }
      });
    const before = AbortSignal.abort();
    await expect(descriptionLength(sae, source(0), { signal: before })).rejects.toBe(before.reason);
    expect(state.started).toBe(false);
    // Aborted as the second of 8 batches is handed over: it is not used, and no third batch is read.
    await expect(descriptionLength(sae, source(2), { batchSize: 50, signal: ctrl.signal })).rejects.toBe(reason);
    expect(state.batches).toBe(2);
    expect(state.ended).toBe(true);
  });

  it('an abort during the search over bin widths stops its decoding; without an abort the result is unchanged', async () => {
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 3 });
    const plain = await descriptionLength(sae, fromArray(x, dIn), { batchSize: 50, compat: true });
    const signalled = await descriptionLength(sae, fromArray(x, dIn), { batchSize: 50, compat: true, signal: new AbortController().signal });
    expect(signalled).toEqual(plain);
    // 8 batches decoded per width: abort at the 20th decode (the third width), well before the end.
    const decode = sae.decode.bind(sae);
    let decodes = 0;
    const ctrl = new AbortController();
    sae.decode = (async (c: Parameters<typeof decode>[0]) => {
      if (++decodes === 20) ctrl.abort();
      return decode(c);
    }) as typeof sae.decode;
    await expect(descriptionLength(sae, fromArray(x, dIn), { batchSize: 50, signal: ctrl.signal })).rejects.toMatchObject({ name: 'AbortError' });
    expect(decodes).toBe(20);
  });

  it('a signal that is not an AbortSignal is refused naming options.signal', async () => {
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 3 });
    for (const bad of [{}, 'stop', { aborted: true, addEventListener() {} }]) {
      await expect(descriptionLength(sae, fromArray(x, dIn), { signal: bad as unknown as AbortSignal })).rejects.toMatchObject({
        code: 'ERR_SAEKIT_ARG',
        message: expect.stringMatching(/options\.signal/),
      });
    }
  });
});

describe('descriptionLength shares the JS thread', () => {
  // Before, codeLength's Map of Maps over every code, each width's quantised codes for every
  // batch, and the sums of squares each held the JS thread in one piece: with a loose bound (no
  // bisection) codeLength's piece was 0.4-0.8 s, about a third of the call, on the loaded 2-core
  // development machine. Now they run in ~20 ms slices (gaps of 50-160 ms there). The bound is
  // event-loop-slices.test.ts's 150 ms, or a sixth of the call when that is longer (other jobs
  // stretch every slice and the call alike).
  it('16,384 latents, 4,096 tokens of k = 256 in one batch, default and loose bounds; the DL matches a float64 reference from sorted (latent, bin) keys', async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const [dIn, L, k, rows] = [8, 16384, 256, 4096];
    const x = Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed });
    const codes = await sae.encode(x);
    for (const mseBound of [undefined, 1e9]) {
      const source = fromArray(x, dIn);
      const { value: got, elapsed, longest, firings } = await watchCall(() =>
        descriptionLength(sae, source, { batchSize: rows, maxTokens: rows, ...(mseBound === undefined ? {} : { mseBound }) }),
      );
      const ctx = `seed ${seed}, mseBound ${mseBound}`;
      expect(longest, `${ctx}: longest gap of a ${elapsed.toFixed(0)} ms call`).toBeLessThan(gapBound(elapsed));
      expect(firings, `${ctx}: ${elapsed.toFixed(0)} ms`).toBeGreaterThan(elapsed / 50);
      expect(got.mse, ctx).toBeLessThanOrEqual(got.mseBound);
      // The reference: every active code's key l * 2^32 + bin, sorted; runs of equal keys are the
      // bins' counts, runs of equal l the latents'.
      const keys: number[] = [];
      for (let q = 0; q < codes.values.length; q++) {
        const v = codes.values[q]!;
        if (v > 0) keys.push(codes.indices[q]! * 2 ** 32 + Math.floor(v / got.precision));
      }
      const sorted = Float64Array.from(keys).sort();
      let bernoulli = 0;
      let value = 0;
      for (let a = 0; a < sorted.length; ) {
        const l = Math.floor(sorted[a]! / 2 ** 32);
        let b = a;
        while (b < sorted.length && Math.floor(sorted[b]! / 2 ** 32) === l) b++;
        const n = b - a;
        const p = n / rows;
        bernoulli += p < 1 ? -(p * Math.log2(p) + (1 - p) * Math.log2(1 - p)) : 0;
        let h = 0;
        for (let i = a; i < b; ) {
          let j = i;
          while (j < b && sorted[j] === sorted[i]) j++;
          if (j - i < n) h -= ((j - i) / n) * Math.log2((j - i) / n);
          i = j;
        }
        value += p * h;
        a = b;
      }
      expect(Math.abs(got.bernoulliBits - bernoulli), ctx).toBeLessThan(1e-9 * bernoulli);
      expect(Math.abs(got.valueBits - value), ctx).toBeLessThanOrEqual(1e-9 * value);
    }
  }, 60_000);

  it('reads the documented default of 65536 tokens when maxTokens is not given (fresh random data)', async () => {
    const seed = (Date.now() ^ 0x5be0cd19) >>> 0;
    const next = lcg(seed);
    const dIn = 3;
    const rows = 65536 + 1 + 2 * Math.floor(next() * 500);
    const x = Float32Array.from({ length: rows * dIn }, () => next() * 2 - 1);
    using sae = SparseAutoencoder.create({ dIn, numLatents: 5, k: 2, seed: 1 + Math.floor(next() * 1000) });
    const r = await descriptionLength(sae, fromArray(x, dIn), { batchSize: 8191 });
    expect(r.tokens, `seed ${seed}, ${rows} rows`).toBe(65536);
    expect(r).toEqual(await descriptionLength(sae, fromArray(x.subarray(0, 65536 * dIn), dIn), { batchSize: 8191 }));
  });
});
