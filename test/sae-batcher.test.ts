/** EncodeBatcher: concurrent encode requests coalesced into batches, split back per request. */
import { spawnSync } from 'node:child_process';
import { getEventListeners } from 'node:events';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { describe, expect, it, vi } from 'vitest';

import { backend, EncodeBatcher, SparseAutoencoder, tensor, type SparseCodes } from '../lib/index.js';
import { packageRoot } from '../lib/native/index.js';
import { lcg } from './helpers/reference.js';

const bits = (a: Float32Array): number[] => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

function rowsOf(n: number, dIn: number, next: () => number): Float32Array {
  return Float32Array.from({ length: n * dIn }, () => 2 * next() - 1);
}

/** sae.encode's codes for x alone, or its error. */
async function aloneOf(sae: SparseAutoencoder, x: Float32Array, batchInvariant = true): Promise<SparseCodes | Error> {
  return sae.encode(x, batchInvariant ? { batchInvariant } : undefined).then((c) => c, (e: unknown) => e as Error);
}

/** A request's outcome (codes as bits, or the error's code, row and message), for toEqual. */
function outcome(r: SparseCodes | Error | PromiseSettledResult<SparseCodes>): unknown {
  const v = 'status' in r ? (r.status === 'fulfilled' ? r.value : (r.reason as Error)) : r;
  if (v instanceof Error) return { code: (v as { code?: string }).code, row: (v as { row?: number }).row, message: v.message };
  return { rows: v.rows, k: v.k, numLatents: v.numLatents, ...slice(v, 0, v.rows) };
}

/** The rows [from, to) of codes with k per row. */
function slice(c: SparseCodes, from: number, to: number): { values: number[]; indices: number[] } {
  return { values: bits(c.values.subarray(from * c.k, to * c.k)), indices: Array.from(c.indices.subarray(from * c.k, to * c.k)) };
}

describe('EncodeBatcher', () => {
  const [dIn, L, k] = [13, 97, 5];

  it('requests that arrive while an encode runs go together; each gets exactly its rows of that batch', async () => {
    const next = lcg(Date.now() % 100_000);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 7 });
    const b = new EncodeBatcher(sae);
    const sizes = [1, 3, 7, 1, 2, 11, 1];
    const xs = sizes.map((n) => rowsOf(n, dIn, next));
    const got = await Promise.all(xs.map((x) => b.encode(x)));
    // The first found the batcher idle and went alone; the others waited for it and went as one.
    expect(b.batches).toBe(2);
    const rest = new Float32Array(xs.slice(1).reduce((s, x) => s + x.length, 0));
    let at = 0;
    for (const x of xs.slice(1)) {
      rest.set(x, at);
      at += x.length;
    }
    const whole = await sae.encode(rest);
    const alone = await sae.encode(xs[0]!);
    expect(slice(got[0]!, 0, 1)).toEqual(slice(alone, 0, 1));
    let row = 0;
    for (let i = 1; i < xs.length; i++) {
      const g = got[i]!;
      expect([g.rows, g.k, g.numLatents], `request ${i}`).toEqual([sizes[i], k, L]);
      expect(slice(g, 0, g.rows), `request ${i}`).toEqual(slice(whole, row, row + sizes[i]!));
      row += sizes[i]!;
    }
    // And against an independent float64 TopK of each row (indices; ties are measure-zero here).
    const w = await sae.weights();
    for (const [i, x] of xs.entries()) {
      for (let r = 0; r < sizes[i]!; r++) {
        const pre = Array.from({ length: L }, (_, l) => {
          let s = w.b_enc[l]!;
          for (let d = 0; d < dIn; d++) s += (x[r * dIn + d]! - w.b_dec[d]!) * w.W_enc[d * L + l]!;
          return { l, v: Math.max(s, 0) };
        });
        pre.sort((a, c) => c.v - a.v || a.l - c.l);
        const want = pre.slice(0, k).filter((p) => p.v > 0).map((p) => p.l);
        expect(Array.from(got[i]!.indices.subarray(r * k, r * k + want.length)), `request ${i} row ${r}`).toEqual(want);
      }
    }
  });

  it('maxRows bounds a batch (a larger request still goes alone, whole)', async () => {
    const next = lcg(5);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 3 });
    const b = new EncodeBatcher(sae, { maxRows: 4 });
    const sizes = [2, 3, 1, 9, 2, 2, 4];
    const got = await Promise.all(sizes.map((n) => b.encode(rowsOf(n, dIn, next))));
    // [2] alone, then [3, 1], [9], [2, 2], [4]
    expect(b.batches).toBe(5);
    expect(got.map((g) => g.rows)).toEqual(sizes);
  });

  it('a request with NaN is rejected alone; bad input and a disposed SAE are named errors', async () => {
    const next = lcg(11);
    const sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 4 });
    const b = new EncodeBatcher(sae);
    const bad = rowsOf(3, dIn, next);
    bad[dIn + 4] = Number.NaN;
    const [r1, r2, r3] = await Promise.allSettled([b.encode(rowsOf(2, dIn, next)), b.encode(bad), b.encode(rowsOf(1, dIn, next))]);
    expect(r1.status).toBe('fulfilled');
    expect(r3.status).toBe('fulfilled');
    // sae.encode's error for the same rows: its words and its err.row.
    const own = await sae.encode(bad).catch((e: unknown) => e);
    expect(own).toMatchObject({ code: 'ERR_SAEKIT_NONFINITE', row: 1 });
    expect(r2).toMatchObject({ status: 'rejected', reason: { code: 'ERR_SAEKIT_NONFINITE', row: 1, message: (own as Error).message } });
    expect((own as Error).message).toMatch(/row 1 has NaN at column 4$/);
    await expect(b.encode(new Float32Array(dIn + 1))).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE' });
    // A typed array of another element type: ERR_SAEKIT_DTYPE, as sae.encode says.
    await expect(b.encode(new Float64Array(dIn) as never)).rejects.toMatchObject({ code: 'ERR_SAEKIT_DTYPE', message: expect.stringMatching(/for x but received a Float64Array/) });
    await expect(sae.encode(new Float64Array(dIn) as never)).rejects.toMatchObject({ code: 'ERR_SAEKIT_DTYPE' });
    expect(() => new EncodeBatcher(sae, { maxrows: 3 } as never)).toThrow(/did you mean options\.maxRows/);
    expect(() => new EncodeBatcher({} as SparseAutoencoder)).toThrow(/SparseAutoencoder/);
    // Batches go to the SAE's native handle: an object that only has an encode() (a wrapper, a
    // Proxy) is refused at once, not failed at its first batch.
    expect(() => new EncodeBatcher({ encode: () => sae.encode(new Float32Array(dIn)), dIn } as unknown as SparseAutoencoder)).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/SparseAutoencoder for sae/) }),
    );
    // Disposed while requests wait: those reject with the SAE's error.
    const pending = [b.encode(rowsOf(1, dIn, next)), b.encode(rowsOf(1, dIn, next))];
    sae.dispose();
    const settled = await Promise.allSettled(pending);
    expect(settled.some((s) => s.status === 'rejected' && (s.reason as { code: string }).code === 'ERR_SAEKIT_DISPOSED')).toBe(true);
    await expect(b.encode(rowsOf(1, dIn, next))).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
    // Disposed comes first: a request with NaN is not judged on its values any more.
    await expect(b.encode(bad)).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
    const b2 = new EncodeBatcher(SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 5 }));
    b2.dispose();
    await expect(b2.encode(bad)).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED', message: 'this EncodeBatcher was disposed' });
    b2.sae.dispose();
  });

  it("a rejected request's error carries its caller's stack (as sae.encode's does), each request its own", async () => {
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 7 });
    const b = new EncodeBatcher(sae);
    // Overflowing rows (encoded again alone) and a disposal while waiting: errors made away from encode().
    const huge = new Float32Array(dIn).fill(3e38);
    async function firstCaller(): Promise<unknown> {
      return b.encode(huge).catch((e: unknown) => e);
    }
    async function secondCaller(): Promise<unknown> {
      return b.encode(huge).catch((e: unknown) => e);
    }
    const [e1, e2] = await Promise.all([firstCaller(), secondCaller()]);
    expect(e1).toMatchObject({ code: 'ERR_SAEKIT_NONFINITE', row: 0 });
    expect((e1 as Error).stack).toMatch(/\n\s+at firstCaller /);
    expect((e2 as Error).stack).toMatch(/\n\s+at secondCaller /);
    expect((e1 as Error).stack).not.toMatch(/secondCaller/);
    async function waiting(): Promise<unknown> {
      return b.encode(new Float32Array(dIn)).catch((e: unknown) => e);
    }
    const running = b.encode(new Float32Array(dIn));
    const waited = waiting();
    b.dispose();
    await running;
    const e3 = await waited;
    expect(e3).toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
    expect((e3 as Error).stack).toMatch(/\n\s+at waiting /);
  });

  it('a request whose finite values overflow the encoder is rejected alone, naming its own row; the rest of its batch resolves', async () => {
    const seed = Date.now() % 100_000;
    const next = lcg(seed);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: seed + 1 });
    const b = new EncodeBatcher(sae, { batchInvariant: true });
    // Finite values near the float32 limit pass the check for NaN and infinities and overflow the pre-activations.
    const huge = (n: number, row: number) => {
      const x = rowsOf(n, dIn, next);
      x.fill(3e38, row * dIn, (row + 1) * dIn);
      return x;
    };
    const xs = [rowsOf(1, dIn, next), rowsOf(2, dIn, next), huge(3, 1), rowsOf(1, dIn, next), huge(2, 0), rowsOf(4, dIn, next)];
    const bad = new Set([2, 4]);
    const got = await Promise.allSettled(xs.map((x) => b.encode(x)));
    const w = await sae.weights();
    for (const [i, x] of xs.entries()) {
      const label = `seed ${seed}, request ${i}`;
      if (bad.has(i)) {
        // The error sae.encode gives for the request alone: its own row, not the batch's.
        const alone = await sae.encode(x, { batchInvariant: true }).then(() => null, (e: unknown) => e as Error);
        const row = i === 2 ? 1 : 0;
        expect(alone, label).toMatchObject({ code: 'ERR_SAEKIT_NONFINITE', row, message: expect.stringMatching(`row ${row} of x`) });
        expect(got[i], label).toMatchObject({ status: 'rejected', reason: { code: 'ERR_SAEKIT_NONFINITE', row, message: alone!.message } });
        continue;
      }
      expect(got[i]!.status, label).toBe('fulfilled');
      const g = (got[i] as PromiseFulfilledResult<SparseCodes>).value;
      const alone = await sae.encode(x, { batchInvariant: true });
      expect([g.rows, g.k], label).toEqual([x.length / dIn, k]);
      expect(slice(g, 0, g.rows), label).toEqual(slice(alone, 0, alone.rows));
      // Indices against an independent float64 TopK (rows without a near-tie at the k-th place).
      for (let r = 0; r < g.rows; r++) {
        const pre = Array.from({ length: L }, (_, l) => {
          let s = w.b_enc[l]!;
          for (let d = 0; d < dIn; d++) s += (x[r * dIn + d]! - w.b_dec[d]!) * w.W_enc[d * L + l]!;
          return { l, v: Math.max(s, 0) };
        });
        pre.sort((a, c) => c.v - a.v || a.l - c.l);
        if (pre[k - 1]!.v - pre[k]!.v < 1e-4) continue;
        expect(new Set(g.indices.subarray(r * k, (r + 1) * k)), `${label} row ${r}`).toEqual(new Set(pre.slice(0, k).filter((p) => p.v > 0).map((p) => p.l)));
      }
    }
    // The first went alone; the four good waiting requests went as one batch once the two bad ones were out.
    expect(b.batches).toBe(2);
  });

  it('overflowing requests cost the rest of their batch no further encode: one encode serves the batch, each overflowing request is encoded once alone', async () => {
    const seed = Date.now() % 100_000;
    const next = lcg(seed);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: seed + 1 });
    const b = new EncodeBatcher(sae, { batchInvariant: true });
    // The first request starts at once; the 60 behind it (every 6th overflowing) go as one batch.
    const xs = Array.from({ length: 61 }, (_, i) => {
      const x = rowsOf(1 + (i % 3), dIn, next);
      if (i % 6 === 5) x.fill(3e38, 0, dIn);
      return x;
    });
    const numBad = xs.filter((x) => x[0] === Math.fround(3e38)).length;
    const before = backend.stats().submitted;
    const got = await Promise.allSettled(xs.map((x) => b.encode(x)));
    const jobs = backend.stats().submitted - before;
    expect(got.filter((g) => g.status === 'rejected').length).toBe(numBad);
    for (const [i, x] of xs.entries()) {
      const alone = await sae.encode(x, { batchInvariant: true }).then((c) => c, (e: unknown) => e as Error);
      if (alone instanceof Error) expect(got[i], `seed ${seed}, request ${i}`).toMatchObject({ status: 'rejected', reason: { code: 'ERR_SAEKIT_NONFINITE', row: 0, message: alone.message } });
      else expect(slice((got[i] as PromiseFulfilledResult<SparseCodes>).value, 0, alone.rows), `seed ${seed}, request ${i}`).toEqual(slice(alone, 0, alone.rows));
    }
    // Two batches and one encode alone per overflowing request (the old batcher encoded the
    // batch again after each overflowing request it found: 2 * numBad + 2 encodes).
    expect(b.batches).toBe(2);
    expect(jobs).toBe(2 + numBad);
  });

  it('a batch whose rows cannot be allocated (ERR_SAEKIT_MEMORY) is split: its requests are encoded in smaller batches, each getting its own codes; later requests still run', async () => {
    const next = lcg(31);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 5 });
    const b = new EncodeBatcher(sae);
    const xs = [1, 3, 4].map((n) => rowsOf(n, dIn, next));
    const later = rowsOf(2, dIn, next);
    // The batch of the two waiting requests (7 rows) cannot be allocated: Float32Array throws as
    // V8 does when memory runs out. Nothing else here allocates 7 * dIn floats.
    const F32 = globalThis.Float32Array;
    const failing = new Proxy(F32, {
      construct(target, args, newTarget) {
        if (args[0] === 7 * dIn) throw new RangeError('Array buffer allocation failed');
        return Reflect.construct(target, args, newTarget) as object;
      },
    });
    globalThis.Float32Array = failing;
    let got: PromiseSettledResult<SparseCodes>[];
    try {
      got = await Promise.allSettled(xs.map((x) => b.encode(x)));
    } finally {
      globalThis.Float32Array = F32;
    }
    // The first went alone; the batch of the other two (7 rows) failed to allocate and was split
    // into the two requests, each encoded alone.
    for (const [i, r] of got.entries()) {
      expect(r.status, `request ${i}`).toBe('fulfilled');
      const c = (r as PromiseFulfilledResult<SparseCodes>).value;
      expect(slice(c, 0, xs[i]!.length / dIn), `request ${i}`).toEqual(slice(await sae.encode(xs[i]!), 0, xs[i]!.length / dIn));
    }
    expect(b.batches).toBe(3);
    const codes = await b.encode(later);
    expect(slice(codes, 0, 2)).toEqual(slice(await sae.encode(later), 0, 2));
  });

  it('batchInvariant: every row gets the bits of encoding it alone, for any split and thread count, TopK and JumpReLU', async () => {
    // Wide enough that OpenBLAS's Haswell / Zen kernels give other bits for other row counts
    // (about a fifth of the pre-activations at these sizes; not asserted: it varies by machine).
    const seed = Date.now() % 100_000;
    const next = lcg(seed);
    const [d, M, kk, rows] = [96, 301, 7, 157];
    using topk = SparseAutoencoder.create({ dIn: d, numLatents: M, k: kk, seed: seed + 1 });
    const w = await topk.weights();
    using jump = SparseAutoencoder.fromWeights({ ...w, threshold: Float32Array.from({ length: M }, () => 0.05 + 0.1 * next()) }, { architecture: 'jumprelu' });
    const x = rowsOf(rows, d, next);
    const prev = backend.info().threads;
    try {
      for (const sae of [topk, jump]) {
        const whole = await sae.encode(x, { batchInvariant: true });
        for (const [threads, split] of [[2, 1], [1, 13], [3, 64], [2, rows]] as const) {
          backend.setThreads(threads);
          for (let r0 = 0; r0 < rows; r0 += split) {
            const n = Math.min(split, rows - r0);
            const part = await sae.encode(x.subarray(r0 * d, (r0 + n) * d), { batchInvariant: true });
            // JumpReLU pads each batch to its own widest row: compare the active codes.
            const kc = Math.min(part.k, whole.k);
            for (let q = 0; q < n; q++) {
              const a = slice(part, q, q + 1);
              const b = slice(whole, r0 + q, r0 + q + 1);
              const label = `${sae.architecture} seed ${seed}, threads ${threads}, split ${split}, row ${r0 + q}`;
              expect(a.values.slice(0, kc), label).toEqual(b.values.slice(0, kc));
              expect(a.indices.slice(0, kc), label).toEqual(b.indices.slice(0, kc));
              expect(a.values.slice(kc).every((v) => v === 0) && b.values.slice(kc).every((v) => v === 0), label).toBe(true);
            }
          }
        }
      }
    } finally {
      backend.setThreads(prev);
    }
    // The codes are the usual rule: TopK indices against an independent float64 TopK.
    const got = await topk.encode(x, { batchInvariant: true });
    for (let r = 0; r < rows; r++) {
      const pre = Array.from({ length: M }, (_, l) => {
        let s = w.b_enc[l]!;
        for (let c = 0; c < d; c++) s += (x[r * d + c]! - w.b_dec[c]!) * w.W_enc[c * M + l]!;
        return { l, v: Math.max(s, 0) };
      });
      pre.sort((a, c) => c.v - a.v || a.l - c.l);
      // Skip rows with a near-tie at the k-th place (float32 and float64 may order them apart).
      if (pre[kk - 1]!.v - pre[kk]!.v < 1e-4) continue;
      expect(new Set(got.indices.subarray(r * kk, (r + 1) * kk)), `row ${r}`).toEqual(new Set(pre.slice(0, kk).filter((p) => p.v > 0).map((p) => p.l)));
    }
    // A batcher with batchInvariant hands each request the bits of its rows encoded alone.
    const b = new EncodeBatcher(topk, { batchInvariant: true });
    expect(b.batchInvariant).toBe(true);
    const sizes = [1, 5, 2, 9, 1, 3];
    const xs = sizes.map((n) => rowsOf(n, d, next));
    const out = await Promise.all(xs.map((xi) => b.encode(xi)));
    expect(b.batches).toBe(2);
    for (const [i, xi] of xs.entries()) {
      const alone = await topk.encode(xi, { batchInvariant: true });
      expect(slice(out[i]!, 0, sizes[i]!), `request ${i}`).toEqual(slice(alone, 0, sizes[i]!));
    }
    // Bad options are named.
    await expect(topk.encode(x, { batchInvariant: 1 as never })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.batchInvariant/) });
    await expect(topk.encode(x, { batchinvariant: true } as never)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/batchInvariant/) });
    expect(() => new EncodeBatcher(topk, { batchInvariant: 'yes' as never })).toThrow(/options\.batchInvariant/);
  });

  it('JumpReLU: each request keeps its own padding, as encoding its rows alone does', async () => {
    const next = lcg(21);
    const W_enc = rowsOf(L, dIn, next);
    const W_dec = rowsOf(L, dIn, next);
    const threshold = Float32Array.from({ length: L }, () => 0.2 + next());
    using sae = SparseAutoencoder.fromWeights(
      { W_enc, b_enc: new Float32Array(L), W_dec, b_dec: new Float32Array(dIn), threshold },
      { architecture: 'jumprelu' },
    );
    const b = new EncodeBatcher(sae);
    // Small rows (few active latents) and large rows (many) in one batch.
    const small = rowsOf(2, dIn, next).map((v) => v * 0.2);
    const large = rowsOf(3, dIn, next).map((v) => v * 3);
    // And rows with no active latent at all (zeros: every pre-activation 0, below each threshold).
    const none = new Float32Array(3 * dIn);
    const [, gs, gl, gn] = await Promise.all([b.encode(rowsOf(1, dIn, next)), b.encode(small), b.encode(large), b.encode(none)]);
    expect(b.batches).toBe(2);
    const [as, al, an] = [await sae.encode(small), await sae.encode(large), await sae.encode(none)];
    expect(gs!.k).toBe(as.k);
    expect(gl!.k).toBe(al.k);
    // Padding is at least 1 (as alone): a request whose rows are all inactive gets one zero per row.
    expect(an.k).toBe(1);
    expect(gn!.k).toBe(1);
    expect(Array.from(gn!.values)).toEqual([0, 0, 0]);
    expect(gn!.values.length).toBe(an.values.length);
    expect(gs!.k).toBeLessThan(gl!.k);
    expect(Array.from(gs!.indices)).toEqual(Array.from(as.indices));
    expect(Array.from(gl!.indices)).toEqual(Array.from(al.indices));
    for (const [g, a] of [[gs!, as], [gl!, al]] as const) {
      for (let i = 0; i < a.values.length; i++) expect(Math.abs(g.values[i]! - a.values[i]!)).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(a.values[i]!)));
    }
  });
  it('dispose(): waiting requests and later calls reject with ERR_SAEKIT_DISPOSED; the batch being encoded finishes; the SAE stays usable', async () => {
    const next = lcg((Date.now() >>> 3) % 100_000);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 9 });
    const xs = [2, 1, 4, 3].map((n) => rowsOf(n, dIn, next));
    let late: Promise<SparseCodes> | undefined;
    {
      using b = new EncodeBatcher(sae);
      const pending = xs.map((x) => b.encode(x).then((c) => c, (e: unknown) => e));
      // The first request found the batcher idle and is being encoded; the other three wait.
      b.dispose();
      b.dispose(); // idempotent
      expect(b.disposed).toBe(true);
      const [first, ...rest] = await Promise.all(pending);
      expect(slice(first as SparseCodes, 0, 2)).toEqual(slice(await sae.encode(xs[0]!), 0, 2));
      for (const r of rest) expect(r).toMatchObject({ code: 'ERR_SAEKIT_DISPOSED', message: expect.stringMatching(/EncodeBatcher was disposed/) });
      late = b.encode(xs[1]!);
    }
    await expect(late).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
    // `using` disposed the batcher, not the SAE.
    expect(sae.disposed).toBe(false);
    expect((await sae.encode(xs[1]!)).rows).toBe(1);
  });

  it('maxRows is at least 1: 0 is refused naming options.maxRows', () => {
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 2 });
    expect(new EncodeBatcher(sae, { maxRows: 1 }).maxRows).toBe(1);
    expect(() => new EncodeBatcher(sae, { maxRows: 0 })).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.maxRows but received 0/) }));
  });

  it('an empty or infinite request is rejected alone (the empty one before it joins a batch); the others resolve with their own rows', async () => {
    const seed = Date.now() % 100_000;
    const next = lcg(seed);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 6 });
    const b = new EncodeBatcher(sae);
    const inf = rowsOf(2, dIn, next);
    inf[dIn + 3] = -Infinity;
    const xs = [rowsOf(1, dIn, next), rowsOf(2, dIn, next), new Float32Array(0), inf, rowsOf(3, dIn, next)];
    const got = await Promise.allSettled(xs.map((x) => b.encode(x)));
    expect(got[2]).toMatchObject({ status: 'rejected', reason: { code: 'ERR_SAEKIT_SHAPE', message: expect.stringMatching(/for x but received a Float32Array of length 0/) } });
    expect(got[3]).toMatchObject({ status: 'rejected', reason: { code: 'ERR_SAEKIT_NONFINITE', row: 1, message: expect.stringMatching(/row 1 has -Infinity at column 3$/) } });
    for (const i of [0, 1, 4]) {
      expect(got[i]!.status, `seed ${seed}, request ${i}`).toBe('fulfilled');
      const g = (got[i] as PromiseFulfilledResult<SparseCodes>).value;
      const alone = await sae.encode(xs[i]!);
      expect(slice(g, 0, g.rows).indices, `seed ${seed}, request ${i}`).toEqual(slice(alone, 0, alone.rows).indices);
    }
    expect(b.batches).toBe(2);
  });

  it("NaN and infinities are found by the native encode, not by a scan on the JS thread: each request holding one rejects alone with sae.encode's error; the rest of its batch is encoded once more, together", async () => {
    const seed = Date.now() % 100_000;
    const next = lcg(seed);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: seed + 2 });
    const b = new EncodeBatcher(sae, { batchInvariant: true });
    const sizes = [3, 1, 4, 2, 5, 1, 3, 2];
    const xs = sizes.map((n) => rowsOf(n, dIn, next));
    const bad = new Map([[2, Number.NaN], [4, Infinity], [5, -Infinity]]);
    for (const [i, v] of bad) xs[i]![Math.floor(next() * xs[i]!.length)] = v;
    const before = backend.stats().submitted;
    // The jobs submitted when each request at fault is sent alone to sae.encode: the good
    // requests' batch goes first, so they do not wait behind the failing ones.
    const encode = sae.encode.bind(sae);
    const badSentAt: number[] = [];
    const spy = vi.spyOn(sae, 'encode').mockImplementation((x, o) => {
      if (x instanceof Float32Array && x.some((v) => v - v !== 0)) badSentAt.push(backend.stats().submitted - before);
      return encode(x, o);
    });
    // encode() reads no value of x on the JS thread (it scanned each one with Number.isFinite).
    const isFinite = vi.spyOn(Number, 'isFinite');
    let pending: Promise<SparseCodes | Error>[];
    try {
      pending = xs.map((x) => b.encode(x).then((c) => c, (e: unknown) => e as Error));
      expect(isFinite).not.toHaveBeenCalled();
    } finally {
      isFinite.mockRestore();
    }
    const got = await Promise.all(pending);
    spy.mockRestore();
    const jobs = backend.stats().submitted - before;
    // Request 0 alone (1), the failed batch (2), the good requests' batch (3): then the three.
    expect(badSentAt, `seed ${seed}`).toEqual([3, 4, 5]);
    for (const [i, x] of xs.entries()) {
      const alone = await aloneOf(sae, x);
      const label = `seed ${seed}, request ${i}`;
      expect(alone instanceof Error, label).toBe(bad.has(i));
      if (alone instanceof Error) expect(alone, label).toMatchObject({ code: 'ERR_SAEKIT_NONFINITE', row: expect.any(Number) });
      expect(outcome(got[i]!), label).toEqual(outcome(alone));
    }
    // The first alone (1 encode); the batch of the other seven fails in the addon's check (1);
    // the three requests at fault alone (3) and the four others again as one batch (1).
    expect(jobs).toBe(6);
    expect(b.batches).toBe(2);
  });

  it('a request that starts at once is read before encode() returns, one that waits is copied: reusing x at once changes neither', async () => {
    const seed = Date.now() % 100_000;
    const next = lcg(seed);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: seed + 3 });
    const b = new EncodeBatcher(sae, { batchInvariant: true });
    const xs = [2, 3, 1].map((n) => rowsOf(n, dIn, next));
    const want = await Promise.all(xs.map((x) => aloneOf(sae, x)));
    const pending = xs.map((x) => b.encode(x));
    for (const x of xs) x.fill(Number.NaN);
    const got = await Promise.all(pending);
    for (let i = 0; i < xs.length; i++) expect(outcome(got[i]!), `seed ${seed}, request ${i}`).toEqual(outcome(want[i]!));
  });

  it('pendingRows counts the rows waiting for a batch; past maxPendingRows a request that would wait is refused at once with ERR_SAEKIT_MEMORY naming the option', async () => {
    const seed = Date.now() % 100_000;
    const next = lcg(seed);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: seed + 4 });
    expect(new EncodeBatcher(sae).maxPendingRows).toBe(Infinity);
    expect(new EncodeBatcher(sae, { maxPendingRows: Infinity }).maxPendingRows).toBe(Infinity);
    const b = new EncodeBatcher(sae, { maxPendingRows: 10, batchInvariant: true });
    expect([b.maxPendingRows, b.pendingRows]).toEqual([10, 0]);
    // Idle, a request starts at once whatever its size: it never waits, so it is never refused.
    const xs = [17, 3, 4, 3].map((n) => rowsOf(n, dIn, next));
    const first = b.encode(xs[0]!);
    expect(b.pendingRows).toBe(0);
    const waiting = xs.slice(1).map((x) => b.encode(x));
    expect(b.pendingRows).toBe(10);
    const over = rowsOf(1, dIn, next);
    await expect(b.encode(over)).rejects.toMatchObject({
      code: 'ERR_SAEKIT_MEMORY',
      message: 'Expected at most options.maxPendingRows = 10 rows waiting in this EncodeBatcher but this request (1 rows) would make 11; retry later, or raise options.maxPendingRows',
    });
    expect(b.pendingRows).toBe(10);
    const got = await Promise.all([first, ...waiting]);
    expect(b.pendingRows).toBe(0);
    for (const [i, x] of xs.entries()) expect(outcome(got[i]!), `seed ${seed}, request ${i}`).toEqual(outcome(await aloneOf(sae, x)));
    // Once the queue drained, the refused request is taken.
    expect(outcome(await b.encode(over))).toEqual(outcome(await aloneOf(sae, over)));
    // Read-only, and the option is checked by name and range.
    expect(() => {
      (b as { pendingRows: number }).pendingRows = 3;
    }).toThrow(TypeError);
    for (const bad of [0, -1, 1.5, Number.NaN, '10', -Infinity]) {
      expect(() => new EncodeBatcher(sae, { maxPendingRows: bad as number }), String(bad)).toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/^Expected integer between 1 and 9007199254740991 for options\.maxPendingRows but received/) }),
      );
    }
    expect(() => new EncodeBatcher(sae, { maxPendingRow: 5 } as never)).toThrow(/did you mean options\.maxPendingRows\?/);
  });

  it('encode(x, { signal }): aborted before, while waiting (it leaves the queue, never encoded) or while its batch runs (the others keep their codes), it rejects with signal.reason; unknown options are refused', async () => {
    const seed = Date.now() % 100_000;
    const next = lcg(seed);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: seed + 5 });
    const b = new EncodeBatcher(sae, { batchInvariant: true });
    const x = rowsOf(2, dIn, next);
    await expect(b.encode(x, { bogus: 1 } as never)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: 'Unknown option options.bogus; the options are: signal' });
    await expect(b.encode(x, { sigal: new AbortController().signal } as never)).rejects.toThrow(/^Unknown option options\.sigal \(did you mean options\.signal\?\)/);
    await expect(b.encode(x, { signal: 'now' } as never)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: "Expected an AbortSignal for options.signal but received 'now' (string)" });
    await expect(b.encode(x, x as never)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/^Expected an options object for options/) });
    // Aborted already: rejected with its reason, nothing queued or encoded.
    const before = backend.stats().submitted;
    const gone = new Error('gone');
    await expect(b.encode(x, { signal: AbortSignal.abort(gone) })).rejects.toBe(gone);
    expect([b.pendingRows, backend.stats().submitted - before]).toEqual([0, 0]);

    // Aborted while waiting: both requests on the signal leave the queue at once.
    const ctl = new AbortController();
    const xs = [2, 3, 1, 4].map((n) => rowsOf(n, dIn, next));
    const lead = b.encode(xs[0]!);
    const waiting = [b.encode(xs[1]!, { signal: ctl.signal }), b.encode(xs[2]!), b.encode(xs[3]!, { signal: ctl.signal })].map((p) => p.then((c) => c, (e: unknown) => e));
    expect(b.pendingRows).toBe(8);
    // One listener on the signal however many requests share it.
    expect(getEventListeners(ctl.signal, 'abort').length).toBe(1);
    ctl.abort();
    expect(b.pendingRows).toBe(1);
    expect(getEventListeners(ctl.signal, 'abort').length).toBe(0);
    const [w1, w2, w3] = await Promise.all(waiting);
    const led = await lead;
    // Two encodes (the lead, then the one request left): the aborted rows were never encoded.
    expect(backend.stats().submitted - before).toBe(2);
    expect(b.batches).toBe(2);
    expect(w1).toBe(ctl.signal.reason);
    expect(w3).toBe(ctl.signal.reason);
    expect((w1 as Error).name).toBe('AbortError');
    expect(outcome(led)).toEqual(outcome(await aloneOf(sae, xs[0]!)));
    expect(outcome(w2 as SparseCodes)).toEqual(outcome(await aloneOf(sae, xs[2]!)));

    // A signal that never aborts: its listener goes when its requests settle.
    const idle = new AbortController();
    await Promise.all([b.encode(xs[1]!, { signal: idle.signal }), b.encode(xs[2]!, { signal: idle.signal })]);
    expect(getEventListeners(idle.signal, 'abort').length).toBe(0);

    // Aborted while its batch runs: it rejects at once; the rest of that batch keeps its codes.
    // A wider SAE, so that the batch's encode takes a while.
    using wide = SparseAutoencoder.create({ dIn: 129, numLatents: 6001, k: 7, seed: seed + 6 });
    const bw = new EncodeBatcher(wide, { batchInvariant: true });
    const ys = [1, 61, 47, 53].map((n) => rowsOf(n, 129, next));
    const mid = new AbortController();
    const first = bw.encode(ys[0]!);
    const batch = [bw.encode(ys[1]!), bw.encode(ys[2]!, { signal: mid.signal }), bw.encode(ys[3]!)].map((p) => p.then((c) => c, (e: unknown) => e));
    while (bw.pendingRows > 0) await new Promise((r) => setImmediate(r));
    expect(backend.stats().pendingInThisThread, 'the batch is still being encoded').toBeGreaterThan(0);
    const why = new Error('client went away');
    mid.abort(why);
    // It settles first, before the batch's encode is done.
    expect(await Promise.race([batch[1], batch[0]])).toBe(why);
    const [g1, g2, g3] = await Promise.all(batch);
    expect(g2).toBe(why);
    await first;
    for (const [i, g] of [[1, g1], [3, g3]] as const) expect(outcome(g as SparseCodes), `seed ${seed}, request ${i}`).toEqual(outcome(await aloneOf(wide, ys[i]!)));
    expect(bw.batches).toBe(2);
  });

  it("takes a float32 Tensor [rows, dIn] as sae.encode does, on the batcher's own terms: the same codes; a wrong dtype or shape or a disposed tensor is sae.encode's error", async () => {
    const seed = Date.now() % 100_000;
    const next = lcg(seed);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: seed + 7 });
    const b = new EncodeBatcher(sae, { batchInvariant: true });
    const xs = [1, 4, 2, 3, 5].map((n) => rowsOf(n, dIn, next));
    const ts = xs.map((x) => tensor(x, [x.length / dIn, dIn]));
    try {
      // The first starts at once (sae.encode reads the tensor); the others wait (downloaded), mixed with an array.
      const pending = [b.encode(ts[0]!), b.encode(ts[1]!), b.encode(xs[2]!), b.encode(ts[3]!), b.encode(ts[4]!)];
      expect(b.pendingRows).toBe(14);
      ts[4]!.dispose(); // its rows were asked for when encode() was called
      const got = await Promise.all(pending);
      expect(b.pendingRows).toBe(0);
      for (const [i, x] of xs.entries()) expect(outcome(got[i]!), `seed ${seed}, request ${i}`).toEqual(outcome(await aloneOf(sae, x)));
      const disposed = tensor(xs[0]!, [1, dIn]);
      disposed.dispose();
      const bad = [tensor(xs[0]!, [1, dIn], { dtype: 'bfloat16' }), tensor(xs[1]!, [4 * dIn]), tensor(xs[1]!, [2, 2 * dIn]), tensor(new Float32Array(0), [0, dIn]), tensor(xs[0]!, [1, 1, dIn]), disposed];
      for (const t of bad) {
        const want = await sae.encode(t as never).then(() => null, (e: unknown) => e as Error);
        expect(want, String(t)).toBeInstanceOf(Error);
        expect(outcome(await b.encode(t as never).then((c) => c, (e: unknown) => e as Error)), String(t)).toEqual(outcome(want!));
        t.dispose();
      }
      await expect(b.encode([1, 2] as never)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: `Expected a Float32Array of rows x dIn = ${dIn} values or a float32 Tensor [rows, ${dIn}] for x but received an array of length 2` });
    } finally {
      for (const t of ts) t.dispose();
    }
  });

  it('dispose() also rejects a waiting Tensor request still being downloaded, at once: pendingRows is 0 right after', async () => {
    const next = lcg(Date.now() % 100_000);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 9 });
    const b = new EncodeBatcher(sae);
    const lead = b.encode(rowsOf(3, dIn, next)); // starts at once: the next request waits
    using t = tensor(rowsOf(2, dIn, next), [2, dIn]);
    const waiting = b.encode(t).then(() => 'resolved', (e: unknown) => e);
    expect(b.pendingRows).toBe(2);
    b.dispose();
    expect(b.pendingRows).toBe(0);
    const order: string[] = [];
    const settled = waiting.then((e) => {
      order.push('tensor request');
      return e;
    });
    await lead.then(() => order.push('lead'));
    // It rejected at dispose(), before the batch in flight ended, not when its download ended.
    expect(await settled).toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
    expect(order[0]).toBe('tensor request');
  });

  it('once the SAE is disposed, every waiting request rejects at once with ERR_SAEKIT_DISPOSED, with its own stack: no batch is built for them', async () => {
    const next = lcg(Date.now() % 100_000);
    const sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 8 });
    const b = new EncodeBatcher(sae, { maxRows: 30 });
    const x = rowsOf(1, dIn, next);
    const lead = b.encode(x);
    async function waiter(): Promise<unknown> {
      return b.encode(x).catch((e: unknown) => e);
    }
    const waiting = Array.from({ length: 3000 }, () => waiter());
    expect(b.pendingRows).toBe(3000);
    sae.dispose();
    // Count the batches built (each a Float32Array of 30 rows), as the memory test does.
    let built = 0;
    const F32 = globalThis.Float32Array;
    globalThis.Float32Array = new Proxy(F32, {
      construct(target, args, newTarget) {
        if (args[0] === 30 * dIn) built++;
        return Reflect.construct(target, args, newTarget) as object;
      },
    });
    let errs: unknown[];
    try {
      await lead; // queued before the dispose: it finishes
      errs = await Promise.all(waiting);
    } finally {
      globalThis.Float32Array = F32;
    }
    expect(built).toBe(0);
    expect(b.pendingRows).toBe(0);
    for (const e of errs) expect(e).toMatchObject({ code: 'ERR_SAEKIT_DISPOSED', message: 'the SparseAutoencoder of this batcher was disposed before the request was encoded' });
    expect((errs[2999] as Error).stack).toMatch(/\n\s+at waiter /);
    expect(errs[0]).not.toBe(errs[1]); // each request's own error
  });
});

/** The CUDA plugin built on the CPU emulation of the CUDA runtime (native/cuda/emu/build.sh). */
const emuPlugin = path.join(packageRoot, 'build-cuda-emu', 'libsaekit_cuda.so');
const emuCublas = path.join(packageRoot, 'build-cuda-emu', 'libfakecublas.so');

describe('EncodeBatcher on a CUDA device (the emulated plugin, in a child process)', () => {
  it('JumpReLU: a request with a row wider than a CUDA encode keeps (8192 active latents) rejects alone with sae.encode\'s error; the other requests of its batch keep their codes', (ctx) => {
    if (!existsSync(emuPlugin) || !existsSync(emuCublas)) ctx.skip(`${path.relative(packageRoot, emuPlugin)} is not built (native/cuda/emu/build.sh)`);
    const seed = Date.now() % 100_000;
    // dIn 4, 9000 latents, threshold 0.5, pre = x0 + x1 (l % 7) / 7: a row with x0 >= 0.6 and
    // x1 >= 0 activates all 9000 (too wide for the device); one with x0 <= 0.4 and x1 in [0, 1] at
    // most the 6/7 with l % 7 > 0 (7714). Odd request sizes, three of them holding one wide row.
    const body = `
const { EncodeBatcher, SparseAutoencoder } = saekit;
let s = ${seed} >>> 0;
const next = () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s / 2 ** 32; };
const [dIn, M] = [4, 9000];
const W_enc = new Float32Array(dIn * M);
for (let l = 0; l < M; l++) { W_enc[l] = 1; W_enc[M + l] = (l % 7) / 7; }
const W_dec = Float32Array.from({ length: M * dIn }, () => next() - 0.5);
using sae = SparseAutoencoder.fromWeights({ W_enc, b_enc: new Float32Array(M), W_dec, b_dec: new Float32Array(dIn), threshold: new Float32Array(M).fill(0.5) }, { architecture: 'jumprelu', device: 'cuda:0' });
const row = (wide) => [wide ? 0.6 + 0.4 * next() : -0.5 + 0.9 * next(), next(), next() - 0.5, next() - 0.5];
const sizes = [1, 3, 2, 5, 1, 4, 3, 2, 1, 3, 2];
const wideAt = new Map([[2, 1], [5, 3], [9, 0]]);
const xs = sizes.map((n, i) => Float32Array.from(Array.from({ length: n }, (_, r) => row(wideAt.get(i) === r)).flat()));
const b = new EncodeBatcher(sae);
const got = await Promise.allSettled(xs.map((x) => b.encode(x)));
// Codes as their shape and whether their bits equal sae.encode's alone (the output stays small).
const bitsOf = (c) => Buffer.concat([Buffer.from(c.values.buffer, c.values.byteOffset, c.values.byteLength), Buffer.from(c.indices.buffer, c.indices.byteOffset, c.indices.byteLength)]);
const show = (v, ref) => v instanceof Error ? { code: v.code, row: v.row, message: v.message } : { rows: v.rows, k: v.k, sameBits: ref instanceof Error ? null : bitsOf(v).equals(bitsOf(ref)) };
const out = [];
for (const [i, x] of xs.entries()) {
  const alone = await sae.encode(x).then((c) => c, (e) => e);
  out.push({ i, wide: wideAt.has(i), alone: show(alone, alone), got: show(got[i].status === 'fulfilled' ? got[i].value : got[i].reason, alone) });
}
console.log(JSON.stringify({ device: sae.device, batches: b.batches, out }));`;
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-batcher-'));
    try {
      const file = path.join(dir, 'child.mts');
      writeFileSync(file, `import * as saekit from ${JSON.stringify(path.join(packageRoot, 'lib', 'index.ts'))};\n${body}\n`);
      const r = spawnSync(process.execPath, ['--import', 'tsx', file], {
        cwd: packageRoot,
        encoding: 'utf8',
        timeout: 120_000,
        env: { ...process.env, SAEKIT_CUDA_PLUGIN: emuPlugin, SAEKIT_CUBLAS: emuCublas, SAEKIT_EMU_DEVICES: '1' },
      });
      expect({ status: r.status, signal: r.signal }, r.stderr).toEqual({ status: 0, signal: null });
      const res = JSON.parse(r.stdout.trim().split('\n').pop()!) as { device: string; batches: number; out: { i: number; wide: boolean; alone: { code?: string; message?: string }; got: unknown }[] };
      expect(res.device).toBe('cuda:0');
      for (const o of res.out) {
        const label = `seed ${seed}, request ${o.i}`;
        // err.row is the wide row's index in its request, as the message says.
        const wideRow = new Map([[2, 1], [5, 3], [9, 0]]).get(o.i);
        if (o.wide) expect(o.alone, label).toMatchObject({ code: 'ERR_SAEKIT_SHAPE', row: wideRow, message: expect.stringMatching(new RegExp(`^Expected at most 8192 active latents per row for a JumpReLU encode on cuda:0 .* but row ${wideRow} of x has 9000;`)) });
        else expect(o.alone, label).not.toHaveProperty('code');
        expect(o.got, label).toEqual(o.alone);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 130_000);
});
