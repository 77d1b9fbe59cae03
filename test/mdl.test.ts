import { describe, expect, it } from 'vitest';

import { fromArray, SaekitError, SparseAutoencoder } from '../lib/index.js';
import { codeLength, descriptionLength } from '../lib/eval/mdl.js';
import { everyLookATurn, gapBound, watchCall } from './helpers/event-loop.js';
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

  it("codeLength stops at its next turn once its signal aborts (the per-latent entropy loop), and a live signal changes nothing", async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const [L, rows, k] = [301, 40_001, 4]; // 4 x 160,004 units in the entropy loop: several looks at the clock
    const c = {
      rows,
      numLatents: L,
      k,
      values: Float32Array.from({ length: rows * k }, () => next() * 5),
      indices: Int32Array.from({ length: rows * k }, () => Math.floor(next() * L)),
    };
    const plain = await codeLength([c], L, 0.37);
    const ctrl = new AbortController();
    const reason = new Error('stop');
    setImmediate(() => ctrl.abort(reason)); // runs at the first turn (the bins' gathering, which takes no signal)
    await expect(everyLookATurn(() => codeLength([c], L, 0.37, ctrl.signal)), `seed ${seed}`).rejects.toBe(reason);
    expect(await everyLookATurn(() => codeLength([c], L, 0.37, new AbortController().signal)), `seed ${seed}`).toEqual(plain);
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

  /**
   * W_enc = I, W_dec = 0.8 I (dIn 3, k 1) and `rows` rows X e_d (X in [0.5, 100.5), d random): the
   * code of every row is X, decoded to 0.8 X; quantised at width w, to 0.8 (X rounded to w's bin midpoint).
   */
  function scaledEye(seed: number, rows: number) {
    const next = lcg(seed);
    const dIn = 3;
    const X = Math.fround(0.5 + next() * 100);
    const eye = (v: number) => Float32Array.from({ length: dIn * dIn }, (_, i) => (i % (dIn + 1) === 0 ? v : 0));
    const sae = SparseAutoencoder.fromWeights({ W_enc: eye(1), b_enc: new Float32Array(dIn), W_dec: eye(0.8), b_dec: new Float32Array(dIn) }, { k: 1 });
    const x = new Float32Array(rows * dIn);
    for (let r = 0; r < rows; r++) x[r * dIn + Math.floor(next() * dIn)] = X;
    return { X, dIn, x, sae };
  }

  it('a bound met only by a coarser width than the finest (the MSE is not monotone in the width) is found, not refused', async () => {
    // W_dec = 0.8 I and every row X e_d: each code is X, quantised at width X 2^-j to
    // X (1 + 2^-(j+1)), decoded to 0.8 X (1 + 2^-(j+1)). The squared error is X^2 (0.2 - 0.4 2^-j)^2:
    // 0.04 X^2 unquantised and at j = 0 or 30, 0 (to float32 rounding) at j = 1. A bound of
    // 0.02 X^2 is met at X / 2, the coarsest power of two that meets it; only j = 30 was tried, and
    // the bound was called "below what any quantisation reaches".
    const seed = Date.now() >>> 0;
    const { X, dIn, x, sae: made } = scaledEye(seed, 50);
    using sae = made;
    const r = await descriptionLength(sae, fromArray(x, dIn), { mseBound: 0.02 * X * X });
    const err0 = X - Math.fround(Math.fround(0.8) * X);
    expect(Math.abs(r.mseUnquantized - err0 * err0), `seed ${seed}, X ${X}`).toBeLessThanOrEqual(1e-12 * X * X);
    expect(r.precision, `seed ${seed}, X ${X}`).toBe(X / 2);
    expect(r.mse, `seed ${seed}, X ${X}`).toBeLessThanOrEqual(1e-12 * X * X);
  });

  it('after the fallback, bisection between the coarsest power of two that meets the bound and twice it finds the coarsest width (closed form)', async () => {
    // The SAE above: at a width w in (X/2, X) the code X is quantised to 1.5 w and decoded to
    // 1.2 w, a squared error of (X - 1.2 w)^2. With the bound 0.025 X^2 the widths X (0.04 X^2) and
    // X 2^-30 miss it, X / 2 meets it (error 0), and in (X/2, X) it is met on
    // [(1 - sqrt(0.025)) X / 1.2, (1 + sqrt(0.025)) X / 1.2], an interval holding the first midpoint
    // X 2^-0.5: the bisection's answer is its upper end, to 24 halvings of the octave.
    const seed = Date.now() >>> 0;
    const { X, dIn, x, sae: made } = scaledEye(seed, 31);
    using sae = made;
    const r = await descriptionLength(sae, fromArray(x, dIn), { mseBound: 0.025 * X * X, batchSize: 7 });
    const want = ((1 + Math.sqrt(0.025)) * X) / 1.2;
    expect(Math.abs(r.precision / want - 1), `seed ${seed}, X ${X}: precision ${r.precision}, want ${want}`).toBeLessThan(1e-5);
    expect(r.mse, `seed ${seed}, X ${X}`).toBeLessThanOrEqual(r.mseBound);
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

  it('a width whose MSE equals the bound meets it ("within"): the bisection keeps it', async () => {
    // mseBound dIn: widths where one of the two codes rounds back (MSE exactly dIn) meet it. The
    // bisection over [2^-30, 1] tries 2^-15 (both codes off: 4 dIn), then 2^-22.5, where 1 rounds
    // back and 2^-7 does not: MSE = the bound, so the width found is at least 2^-22.5.
    expect(stubError(2 ** -15)).toBe(2);
    expect(stubError(2 ** -22.5)).toBe(1);
    const dIn = 2;
    const x = Float32Array.from({ length: 11 * dIn }, (_, i) => (i % 3) - 1);
    const r = await descriptionLength(twoCodeStub(dIn) as never, fromArray(x, dIn), { mseBound: dIn });
    expect(r.precision).toBeGreaterThanOrEqual(2 ** -22.5 * (1 - 1e-12));
    expect(r.mse).toBe(dIn * stubError(r.precision) ** 2);
    expect(r.mse).toBeLessThanOrEqual(r.mseBound);
  });

  it('compat: SAEBench bits and rmsePerDim against a float64 reference, on codes above 100 (per-latent bins on [0, max], the maximum in the last bin)', async () => {
    const seed = (Date.now() ^ 0x510e527f) >>> 0;
    const next = lcg(seed);
    const [dIn, L, k, rows] = [5, 9, 3, 173 + 2 * Math.floor(next() * 40)];
    // Codes of scale ~300: most latents' maxima pass SAEBench's initial 100, some may not.
    const W_enc = Float32Array.from({ length: dIn * L }, () => next() * 2 - 0.8);
    const W_dec = Float32Array.from({ length: L * dIn }, () => next() - 0.5);
    using sae = SparseAutoencoder.fromWeights({ W_enc, b_enc: new Float32Array(L), W_dec, b_dec: new Float32Array(dIn) }, { k });
    const x = Float32Array.from({ length: rows * dIn }, () => next() * 200);
    const got = await descriptionLength(sae, fromArray(x, dIn), { compat: true, batchSize: 37 });
    const codes = await sae.encode(x);
    const maxv = new Array<number>(L).fill(100);
    const active = new Array<number>(L).fill(0);
    codes.values.forEach((v, q) => {
      if (v > 0) {
        const l = codes.indices[q]!;
        active[l]!++;
        maxv[l] = Math.max(maxv[l]!, v);
      }
    });
    expect(maxv.some((m) => m > 100), `seed ${seed}: no latent above 100`).toBe(true);
    const ctx = `seed ${seed}`;
    expect(got.compat!.map((c) => c.numBins), ctx).toEqual([4, 6, 8, 12, 16, 32]);
    for (const c of got.compat!) {
      const nb = c.numBins;
      // Bits: per latent H_b(p) + p H(bins over all tokens, the inactive ones in bin 0).
      let bits = 0;
      for (let l = 0; l < L; l++) {
        const hist = new Array<number>(nb).fill(0);
        hist[0] = rows - active[l]!;
        codes.values.forEach((v, q) => {
          if (v > 0 && codes.indices[q] === l) hist[Math.min(nb - 1, Math.floor((v / maxv[l]!) * nb))]!++;
        });
        const p = active[l]! / rows;
        let h = 0;
        for (const n of hist) if (n > 0) h -= (n / rows) * Math.log2(n / rows);
        bits += (p > 0 && p < 1 ? -(p * Math.log2(p) + (1 - p) * Math.log2(1 - p)) : 0) + p * h;
      }
      expect(Math.abs(c.bitsPerToken - bits), `${ctx}, ${nb} bins: ${c.bitsPerToken} vs ${bits}`).toBeLessThanOrEqual(1e-12 * bits);
      // rmsePerDim: sqrt(MSE per element) / dIn, the codes moved to their bins' midpoints (width max / bins).
      const quantised = Float32Array.from(codes.values, (v, q) => {
        if (!(v > 0)) return 0;
        const w = maxv[codes.indices[q]!]! / nb;
        return (Math.min(nb - 1, Math.floor(v / w)) + 0.5) * w;
      });
      const recon = await sae.decode({ ...codes, values: quantised });
      let sse = 0;
      for (let i = 0; i < x.length; i++) sse += (x[i]! - recon[i]!) ** 2;
      const rmse = Math.sqrt(sse / rows / dIn) / dIn;
      expect(Math.abs(c.rmsePerDim - rmse), `${ctx}, ${nb} bins: ${c.rmsePerDim} vs ${rmse}`).toBeLessThanOrEqual(1e-9 * rmse);
      expect(c.valid, ctx).toBe(rmse < 0.01);
    }
  });

  it('reads no batch past maxTokens and ends the pass', async () => {
    using sae = SparseAutoencoder.create({ dIn: 4, numLatents: 7, k: 2, seed: 4 });
    const x = Float32Array.from({ length: 400 * 4 }, (_, i) => Math.sin(i * 0.37));
    const seen = { batches: 0, ended: false };
    const source = customSource(4, 400, async function* (o) {
      try {
        for await (const b of fromArray(x, 4).batches(o)) {
          seen.batches++;
          yield b;
        }
      } finally {
        seen.ended = true;
      }
    });
    // 100 tokens in batches of 50: the second batch completes maxTokens; a third was read as 0 rows.
    const r = await descriptionLength(sae, source, { maxTokens: 100, batchSize: 50 });
    expect(r.tokens).toBe(100);
    expect(seen).toEqual({ batches: 2, ended: true });
    expect(r).toEqual(await descriptionLength(sae, fromArray(x.subarray(0, 400), 4)));
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
    // 0 was taken: a bound no lossy SAE can meet, reported as 'not met' instead of refused.
    for (const bad of [0, Number.NaN, Infinity, '1' as never]) {
      await expect(descriptionLength(sae, fromArray(x, 5), { mseBound: bad }), `mseBound ${String(bad)}`).rejects.toMatchObject({
        code: 'ERR_SAEKIT_ARG',
        message: expect.stringMatching(/^Expected a positive finite number for options\.mseBound but received/),
      });
    }
    await expect(descriptionLength(sae, fromArray(x, 5), { maxTokens: 1 })).rejects.toBeInstanceOf(SaekitError);
    await expect(descriptionLength(sae, fromArray(new Float32Array(60), 6))).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE' });
    // A source without rows: nothing to measure (it resolved with 0 tokens, 0 bits and NaN MSEs).
    await expect(descriptionLength(sae, fromArray(new Float32Array(0), 5))).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: 'the source produced no rows' });
    await expect(descriptionLength(sae, fromArray(x, 5), { compat: 'no' as never })).rejects.toThrow(/options\.compat/);
    await expect(descriptionLength(sae, undefined as never)).rejects.toThrow(/source/);
    await expect(descriptionLength({} as never, fromArray(x, 5))).rejects.toThrow(/\bsae\b/);
    // Every code zero (a dead SAE): the MSE is ||x - b_dec||^2 whatever the precision, so a lower
    // bound is impossible and said so (it was returned with mse > mseBound).
    const w = await sae.weights();
    using dead = SparseAutoencoder.fromWeights({ ...w, W_enc: new Float32Array(w.W_enc.length), b_enc: new Float32Array(9).fill(-1) }, { k: 2 });
    const r = await descriptionLength(dead, fromArray(x, 5));
    expect(r.mse).toBe(r.mseUnquantized);
    // No active latent: 0 bits, and a bin width that is still a width (> 0: it was 0 when vmax 0 was taken as one).
    expect([r.bitsPerToken, r.bernoulliBits, r.valueBits]).toEqual([0, 0, 0]);
    expect(r.precision).toBeGreaterThan(0);
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
