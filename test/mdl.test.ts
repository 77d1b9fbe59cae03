import { describe, expect, it } from 'vitest';

import { fromArray, SaekitError, SparseAutoencoder } from '../lib/index.js';
import { codeLength, descriptionLength } from '../lib/eval/mdl.js';
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
  it('closed forms: a constant-on latent costs 0 bits; a Bernoulli(1/2) binary latent 1 bit; two equiprobable values add p * 1 bit', () => {
    // latent 3 on every token with value 2.5; latent 5 on every other token with value 1.
    const c = codes(4, 2, [2.5, 1, 2.5, 0, 2.5, 1, 2.5, 0], [3, 5, 3, 0, 3, 5, 3, 0]);
    const r = codeLength([c], 8, 1);
    expect(r.bernoulli).toBeCloseTo(1, 12);
    expect(r.value).toBe(0);
    // Now latent 5's two active values fall in different bins: + 1/2 * 1 bit.
    const c2 = codes(4, 2, [2.5, 1, 2.5, 0, 2.5, 3, 2.5, 0], [3, 5, 3, 0, 3, 5, 3, 0]);
    expect(codeLength([c2], 8, 1).bits).toBeCloseTo(1.5, 12);
  });

  it('matches a naive float64 reference on random codes, split across batches in any way', () => {
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
    expect(codeLength(parts, L, delta).bits).toBeCloseTo(naiveDL(parts, L, delta), 10);
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
