/**
 * One suite, two uses: the same SAE on the CPU and on a device, driven through the public API
 * on fresh random inputs (odd sizes included). On the loopback device (the CPU kernels behind the
 * device table) results must be bit-identical; on a real GPU they must agree within tolerances
 * justified per precision (see test/cuda.test.ts).
 */
import type { expect as vitestExpect } from 'vitest';

import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { SparseAutoencoder, Trainer, fromArray, openActivations, type AdamOptimizer, type DeviceOption } from '../../lib/index.js';
import { npyBytes } from './data-fixtures.js';
import { normalizeDecoderCase } from './normalize-case.js';
import { lcg, randomMatrix } from './reference.js';

export interface Tolerance {
  /** Max |a - b| / (max|b| + 1e-6) for dense outputs (0: bit-identical). */
  rel: number;
  /** Fraction of TopK indices allowed to differ (near-ties under reduced precision). */
  indexMismatch: number;
}

function maxRel(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let scale = 1e-6;
  for (let i = 0; i < b.length; i++) scale = Math.max(scale, Math.abs(b[i]!));
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!) / scale);
  return worst;
}

function expectClose(a: Float32Array, b: Float32Array, tol: number, what: string): void {
  if (tol === 0) {
    let first = -1;
    for (let i = 0; i < a.length && first < 0; i++) if (!Object.is(a[i], b[i])) first = i;
    expect(first, `${what}: first difference`).toBe(-1);
    return;
  }
  expect(maxRel(a, b), what).toBeLessThanOrEqual(tol);
}

function indexMismatch(a: Int32Array, b: Int32Array, rows: number, k: number): number {
  let bad = 0;
  for (let r = 0; r < rows; r++) {
    const sa = new Set(a.subarray(r * k, (r + 1) * k));
    for (let j = 0; j < k; j++) if (!sa.has(b[r * k + j]!)) bad++;
  }
  return bad / (rows * k);
}

/**
 * The test API the suite uses: vitest's, or the small stand-in of bench/gpu/parity.ts (GPU
 * machines have no node_modules): it, expect(v, message?) with toBe, toEqual,
 * toBeLessThanOrEqual, toMatch, toThrow(expect.objectContaining(...)), rejects.toMatchObject.
 */
export interface SuiteApi {
  it: (name: string, fn: () => Promise<void> | void) => void;
  expect: typeof vitestExpect;
}

let expect: typeof vitestExpect;

/** Registers the parity tests for `device` (precision as given) against the CPU. */
export function deviceParitySuite(api: SuiteApi, device: DeviceOption, precision: 'fp32' | 'tf32' | 'bf16', tol: Tolerance): void {
  const { it } = api;
  expect = api.expect;
  const shapes = [
    { dIn: 67, numLatents: 301, k: 7, rows: 129 },
    { dIn: 128, numLatents: 1024, k: 32, rows: 256 },
  ];
  for (const s of shapes) {
    const label = `dIn ${s.dIn}, ${s.numLatents} latents, k ${s.k}, ${s.rows} rows`;
    const dims = { dIn: s.dIn, numLatents: s.numLatents, k: s.k }; // create()'s options (rows is not one)
    it(`encode, decode, forward, preActivations and gradients match the CPU (${label})`, async () => {
      const seed = 1000 + s.dIn;
      using cpu = SparseAutoencoder.create({ ...dims, seed, device: 'cpu' });
      using dev = SparseAutoencoder.create({ ...dims, seed, device, precision });
      expect(dev.device).toMatch(/^cuda:\d+$/);
      const next = lcg(seed);
      const x = randomMatrix(s.rows, s.dIn, next);
      const bDec = randomMatrix(1, s.dIn, next).map((v) => v * 0.1);
      const bEnc = randomMatrix(1, s.numLatents, next).map((v) => v * 0.05);
      cpu.setWeights({ b_dec: bDec, b_enc: bEnc });
      dev.setWeights({ b_dec: bDec, b_enc: bEnc });
      const [wc, wd] = await Promise.all([cpu.weights(), dev.weights()]);
      for (const n of ['W_enc', 'b_enc', 'W_dec', 'b_dec'] as const) expectClose(wd[n], wc[n], 0, `weights ${n}`);

      const [cc, cd] = await Promise.all([cpu.encode(x), dev.encode(x)]);
      expect(cd.k).toBe(s.k);
      const mismatch = indexMismatch(cd.indices, cc.indices, s.rows, s.k);
      expect(mismatch).toBeLessThanOrEqual(tol.indexMismatch);
      // Where every selection agrees, values and gradients can be compared element by element.
      const sameSelection = mismatch === 0;
      if (sameSelection) {
        // Same latents per row; values compared latent by latent (bf16 may reorder near-equal values).
        const byIndex = (c: { values: Float32Array; indices: Int32Array }) => {
          const v = new Float32Array(s.rows * s.numLatents);
          for (let q = 0; q < c.indices.length; q++) v[Math.floor(q / s.k) * s.numLatents + c.indices[q]!] = c.values[q]!;
          return v;
        };
        expectClose(byIndex(cd), byIndex(cc), tol.rel, 'code values by latent');
        if (tol.rel === 0) expect(Array.from(cd.indices)).toEqual(Array.from(cc.indices));
      }
      // Decoding the same codes isolates the decoder from selection differences.
      expectClose(await dev.decode(cc), await cpu.decode(cc), tol.rel, 'decode');
      const [fc, fd] = await Promise.all([cpu.forward(x), dev.forward(x)]);
      expect(Math.abs(fd.fvu - fc.fvu)).toBeLessThanOrEqual(Math.max(tol.rel * 10, 0) * Math.max(1, fc.fvu) + (tol.rel === 0 ? 0 : 1e-3));
      if (tol.rel === 0) expect(fd.fvu).toBe(fc.fvu);
      expectClose(await dev.preActivations(x), await cpu.preActivations(x), tol.rel, 'preActivations');

      const dead = new Uint8Array(s.numLatents);
      for (let l = 0; l < s.numLatents; l += 3) dead[l] = 1;
      for (const variant of ['sparsify', 'paper'] as const) {
        const auxk = { deadMask: dead, variant };
        const [gc, gd] = await Promise.all([cpu.gradients(x, { auxk }), dev.gradients(x, { auxk })]);
        expect(gc.auxkLoss, `${variant}: AuxK must be active`).toBeGreaterThan(0);
        if (sameSelection) {
          expect(gd.loss === gc.loss || Math.abs(gd.loss - gc.loss) <= tol.rel * Math.abs(gc.loss), `${variant}: loss ${gd.loss} vs ${gc.loss}`).toBe(true);
          if (tol.rel === 0) expect(gd.auxkLoss, variant).toBe(gc.auxkLoss);
          else expect(Math.abs(gd.auxkLoss - gc.auxkLoss), variant).toBeLessThanOrEqual(tol.rel * 10 * gc.auxkLoss);
          for (const n of ['W_enc', 'b_enc', 'W_dec', 'b_dec'] as const) expectClose(gd.grads[n], gc.grads[n], tol.rel * 10, `${variant}: gradient ${n}`);
        } else {
          expect(Math.abs(gd.loss - gc.loss)).toBeLessThanOrEqual(0.02 * Math.abs(gc.loss));
        }
      }
    });

    it(`Adam steps, dead-latent counters and optimizer state match the CPU (${label})`, async () => {
      const seed = 2000 + s.dIn;
      using cpu = SparseAutoencoder.create({ ...dims, seed, device: 'cpu' });
      using dev = SparseAutoencoder.create({ ...dims, seed, device, precision });
      const oc = cpu.adam({ lr: 1e-3 });
      const od = dev.adam({ lr: 1e-3 });
      const next = lcg(seed + 1);
      for (let step = 0; step < 3; step++) {
        const x = randomMatrix(s.rows, s.dIn, next);
        // the last step with the paper's AuxK (latents not fired in step 2 are dead by then)
        const so = { deadThresholdTokens: s.rows, auxkVariant: step === 2 ? ('paper' as const) : ('sparsify' as const) };
        const [a, b] = await Promise.all([oc.step(x, so), od.step(x, so)]);
        expect(b.numDead).toBe(a.numDead);
        if (tol.rel === 0) {
          expect(b.loss).toBe(a.loss);
          expect(b.l0).toBe(a.l0);
        } else {
          expect(Math.abs(b.loss - a.loss)).toBeLessThanOrEqual(0.02 * Math.abs(a.loss) + 1e-6);
        }
      }
      expect(od.steps).toBe(3);
      const [wc, wd] = await Promise.all([cpu.weights(), dev.weights()]);
      for (const n of ['W_enc', 'b_enc', 'W_dec', 'b_dec'] as const) expectClose(wd[n], wc[n], tol.rel * 100, `weights after 3 steps: ${n}`);
      if (tol.indexMismatch === 0) {
        expect(Array.from(await dev.tokensSinceFired())).toEqual(Array.from(await cpu.tokensSinceFired()));
      }
      const [sc, sd] = await Promise.all([oc.state(), od.state()]);
      expect(sd.t).toBe(3);
      expectClose(sd.m, sc.m, tol.rel * 100, 'Adam m');
      // In pieces (checkpoints of slabs longer than a typed array): the same moments, and
      // restoring them onto the device continues as the whole state does.
      const pieces = await od.statePieces(37);
      expect(pieces.t).toBe(3);
      const joined = (a: Float32Array[]) => Float32Array.from(a.flatMap((q) => Array.from(q)));
      expect(Array.from(joined(pieces.m))).toEqual(Array.from(sd.m));
      expect(Array.from(joined(pieces.v))).toEqual(Array.from(sd.v));
      od.setStatePieces(pieces);
      const back = await od.state();
      expect(Array.from(back.v)).toEqual(Array.from(sd.v));
      // State round trip: restoring the CPU state onto the device continues identically.
      od.setState(sc);
      dev.setWeights(wc);
      const x = randomMatrix(s.rows, s.dIn, next);
      const [a, b] = await Promise.all([oc.step(x), od.step(x)]);
      if (tol.rel === 0) expect(b.loss).toBe(a.loss);
      else expect(Math.abs(b.loss - a.loss)).toBeLessThanOrEqual(0.02 * Math.abs(a.loss) + 1e-6);
      // A rejected step (non-finite input) changes nothing on the device either.
      const before = await dev.weights();
      const bad = x.slice();
      const badRow = s.rows - 1;
      bad[badRow * s.dIn + (s.dIn >> 1)] = NaN;
      // The CPU's error, its row (err.row) included, across the device table's C ABI.
      const cpuErr = await oc.step(bad).catch((e: unknown) => e);
      expect(cpuErr).toMatchObject({ code: 'ERR_SAEKIT_NONFINITE', row: badRow });
      await expect(od.step(bad)).rejects.toMatchObject({ code: 'ERR_SAEKIT_NONFINITE', row: badRow, message: (cpuErr as Error).message });
      expect(od.steps).toBe(4);
      const after = await dev.weights();
      for (const n of ['W_enc', 'b_enc', 'W_dec', 'b_dec'] as const) expectClose(after[n], before[n], 0, `${n} after a rejected step`);
      oc.dispose();
      od.dispose();
    });
  }

  it("a later sae.adam() takes the SAE's Adam state on the device and the older optimizer is refused, never silently reset (the CPU keeps both)", async () => {
    const s = { dIn: 16, numLatents: 64, k: 4 };
    const next = lcg(51);
    const batches = [0, 1, 2].map(() => randomMatrix(64, s.dIn, next));
    // On the CPU each optimizer has its own moments and step count.
    using cpu = SparseAutoencoder.create({ ...s, seed: 7, device: 'cpu' });
    const ca = cpu.adam({ lr: 1e-2 });
    await ca.step(batches[0]!);
    const cb = cpu.adam({ lr: 1e-2 });
    await ca.step(batches[1]!);
    expect([(await ca.state()).t, (await cb.state()).t]).toEqual([2, 0]);
    // On the device the newest optimizer owns the one set of moments.
    using dev = SparseAutoencoder.create({ ...s, seed: 7, device, precision });
    const da = dev.adam({ lr: 1e-2 });
    await da.step(batches[0]!);
    const queued = da.step(batches[1]!); // queued before the second adam(): it runs on da's state
    const db = dev.adam({ lr: 1e-2 });
    await queued;
    expect(da.steps).toBe(2);
    const replaced = { code: 'ERR_SAEKIT_DISPOSED', message: expect.stringMatching(/^this optimizer was replaced: a later sae\.adam\(\) of the same SAE took its Adam state on cuda:\d+/) };
    await expect(da.step(batches[2]!)).rejects.toMatchObject(replaced);
    await expect(da.state()).rejects.toMatchObject(replaced);
    const fresh = await db.state();
    expect(() => da.setState(fresh)).toThrow(expect.objectContaining(replaced));
    expect(() => da.prefetch(batches[2]!)).toThrow(expect.objectContaining(replaced));
    expect(da.steps).toBe(2);
    // The newest starts from zero, then steps as usual; the replaced one can still be disposed.
    expect(fresh.t).toBe(0);
    expect(fresh.m.every((v) => v === 0) && fresh.v.every((v) => v === 0)).toBe(true);
    await db.step(batches[2]!);
    expect((await db.state()).t).toBe(1);
    da.dispose();
    await expect(da.state()).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED', message: expect.stringMatching(/was disposed/) });
    db.dispose();
  });

  it('an optimizer on the device keeps no host copy of the moments (one on the CPU holds both), and its state still round-trips', async () => {
    // Each moment 64 MiB: above glibc's largest mmap threshold (32 MiB), so a host copy is always
    // a mapping of its own. The moments are calloc'd and not written (zeroed_vector.h), so they
    // show in the process's mapped size (VmSize), not yet in its resident size.
    const s = { dIn: 64, numLatents: 131_072, k: 8 };
    const slabBytes = (2 * s.numLatents * s.dIn + s.numLatents + s.dIn) * 4;
    const mapped = () => Number(/^VmSize:\s+(\d+) kB/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]) * 1024;
    const grown = async (where: DeviceOption) => {
      using sae = SparseAutoencoder.create({ ...s, seed: 3, device: where, precision });
      await sae.tokensSinceFired(); // placed, nothing queued
      const before = mapped();
      const opt = sae.adam();
      const after = mapped();
      const st = await opt.state();
      expect([st.m.length, st.v.length, st.t]).toEqual([slabBytes / 4, slabBytes / 4, 0]);
      expect(st.m.every((v) => v === 0) && st.v.every((v) => v === 0)).toBe(true);
      opt.dispose();
      return after - before;
    };
    // m and v: 2 x the parameters.
    expect(await grown('cpu')).toBeGreaterThan(1.8 * slabBytes);
    expect(await grown(device)).toBeLessThan(0.25 * slabBytes);
    // setState / state on the device move the moments through the device.
    using dev = SparseAutoencoder.create({ dIn: 6, numLatents: 10, k: 2, seed: 4, device, precision });
    const opt = dev.adam();
    const n = 2 * 10 * 6 + 10 + 6;
    const m = Float32Array.from({ length: n }, (_, i) => i / 7 - 3);
    const v = Float32Array.from({ length: n }, (_, i) => i / 11);
    opt.setState({ m, v, t: 5 });
    expect(await opt.state()).toEqual({ m, v, t: 5 });
  });

  it('normalizeDecoder on the device: the float64 rule bit for bit, in queue order with steps, all or nothing', async () => {
    await normalizeDecoderCase(expect, device);
  });

  it('prefetched batches: steps on them equal steps on the arrays; used once; a withdrawn prefetch is never mistaken for a later batch', async () => {
    const s = { dIn: 37, numLatents: 101, k: 5 };
    for (const where of [device, 'cpu'] as const) {
      using a = SparseAutoencoder.create({ ...s, seed: 9, device: where, precision });
      using b = SparseAutoencoder.create({ ...s, seed: 9, device: where, precision });
      const oa = a.adam({ lr: 1e-3 });
      const ob = b.adam({ lr: 1e-3 });
      const next = lcg(31);
      const batch = (rows: number) => randomMatrix(rows, s.dIn, next);
      // Two prefetches in flight, the source arrays overwritten right after (prefetch copies).
      const x1 = batch(97);
      const x2 = batch(64);
      const [k1, k2] = [x1.slice(), x2.slice()];
      const p1 = oa.prefetch(x1);
      const p2 = oa.prefetch(x2);
      expect([p1.rows, p2.rows]).toEqual([97, 64]);
      x1.fill(1e30);
      x2.fill(Number.NaN);
      const run = async (pa: Parameters<typeof oa.step>[0], xb: Float32Array) => {
        const [sa, sb] = await Promise.all([oa.step(pa), ob.step(xb)]);
        expect(sa.loss).toBe(sb.loss);
        expect(sa.l0).toBe(sb.l0);
      };
      await run(p1, k1);
      expect(p1.disposed).toBe(true);
      await run(p2, k2);
      await expect(oa.step(p1)).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
      // Prefetched, then dropped: the page-locked buffer goes back to the pool and carries the
      // next plain batch; the device must upload that batch, not reuse the withdrawn copy.
      for (let r = 0; r < 2; r++) {
        const dropped = oa.prefetch(batch(80));
        dropped.dispose();
        expect(dropped.disposed).toBe(true);
        const x = batch(80);
        await run(x, x);
      }
      // Interleaved the way the Trainer does it: batch n + 1 prefetched while step n runs.
      const copies = [batch(50)];
      let pending = oa.prefetch(copies[0]!);
      for (let r = 0; r < 2; r++) {
        const xb = batch(50);
        copies.push(xb.slice());
        const stepping = oa.step(pending);
        pending = oa.prefetch(xb);
        xb.fill(0);
        await stepping;
        await ob.step(copies[r]!);
      }
      pending.dispose();
      const [wa, wb] = await Promise.all([a.weights(), b.weights()]);
      expectClose(wa.W_dec, wb.W_dec, 0, 'W_dec after prefetched steps');
      using other = SparseAutoencoder.create({ ...s, dIn: 36, seed: 9, device: where });
      const oo = other.adam({ lr: 1e-3 });
      const foreign = oa.prefetch(batch(3));
      await expect(oo.step(foreign)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG' });
      foreign.dispose();
      expect(() => oa.prefetch(new Float32Array(5))).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_SHAPE' }));
      // options.scale: the copy holds fround(x * scale), so a step on it equals a step on the
      // array scaled in JS (an odd scale, so products round; page-locked and plain copies alike).
      for (const scale of [0.7316, 3.1e-3]) {
        const x = batch(33);
        const xs = Float32Array.from(x, (v) => v * scale);
        await run(oa.prefetch(x, { scale }), xs);
      }
      for (const bad of [0, -1, Number.NaN, Infinity, '2']) {
        expect(() => oa.prefetch(batch(2), { scale: bad as number })).toThrow(
          expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringContaining('options.scale') }),
        );
      }
    }
  });

  it('borrowed prefetches: page-locked arrays from _pinnedArray are uploaded where they lie, with the results of copies', async () => {
    const s = { dIn: 37, numLatents: 101, k: 5 };
    using a = SparseAutoencoder.create({ ...s, seed: 9, device, precision });
    using b = SparseAutoencoder.create({ ...s, seed: 9, device, precision });
    const oa = a.adam({ lr: 1e-3 });
    const ob = b.adam({ lr: 1e-3 });
    expect(oa._canPin()).toBe(true);
    const next = lcg(41);
    const rows = 53;
    const pinned = oa._pinnedArray(rows * s.dIn)!;
    expect(pinned).toBeInstanceOf(Float32Array);
    expect(pinned.length).toBe(rows * s.dIn);
    const before = oa._prefetchCounts();
    const run = async (pa: Parameters<typeof oa.step>[0], xb: Float32Array) => {
      const [sa, sb] = await Promise.all([oa.step(pa), ob.step(xb)]);
      expect(sa.loss).toBe(sb.loss);
      expect(sa.l0).toBe(sb.l0);
    };
    // The same array refilled for each step, as the Trainer's recycled batches are.
    for (let r = 0; r < 3; r++) {
      const x = randomMatrix(rows, s.dIn, next);
      pinned.set(x);
      await run(oa._prefetchBorrowed(pinned), x);
    }
    // Rows 10..39 of the block (a view inside it) are borrowed too; a plain array is copied.
    const x = randomMatrix(rows, s.dIn, next);
    pinned.set(x);
    await run(oa._prefetchBorrowed(pinned.subarray(10 * s.dIn, 40 * s.dIn)), x.slice(10 * s.dIn, 40 * s.dIn));
    const plain = randomMatrix(20, s.dIn, next);
    await run(oa._prefetchBorrowed(plain), plain);
    // Borrowed, then disposed unused: the next batch in the same memory is uploaded afresh.
    pinned.set(randomMatrix(rows, s.dIn, next));
    oa._prefetchBorrowed(pinned).dispose();
    const y = randomMatrix(rows, s.dIn, next);
    pinned.set(y);
    await run(oa._prefetchBorrowed(pinned), y);
    const after = oa._prefetchCounts();
    expect(after.borrowed - before.borrowed).toBe(6);
    expect(after.copied - before.copied).toBe(1);
    const [wa, wb] = await Promise.all([a.weights(), b.weights()]);
    expectClose(wa.W_dec, wb.W_dec, 0, 'W_dec after borrowed steps');
    // Nothing to pin on the CPU.
    using c = SparseAutoencoder.create({ ...s, device: 'cpu' });
    const oc = c.adam();
    expect(oc._canPin()).toBe(false);
    expect(oc._pinnedArray(10)).toBeUndefined();
  });

  it('a JumpReLU SAE encodes, decodes and runs forward on the device like on the CPU (row widths vary)', async () => {
    for (const s of [{ dIn: 29, numLatents: 211, rows: 67 }, { dIn: 64, numLatents: 1000, rows: 130 }]) {
      const next = lcg(4242 + s.dIn);
      const weights = await (async () => {
        using base = SparseAutoencoder.create({ dIn: s.dIn, numLatents: s.numLatents, k: 1, seed: s.dIn, device: 'cpu' });
        return base.weights();
      })();
      weights.b_dec = randomMatrix(1, s.dIn, next).map((v) => v * 0.1);
      weights.b_enc = randomMatrix(1, s.numLatents, next).map((v) => -0.05 - 0.02 * Math.abs(v));
      // Every 7th latent has threshold 0 (plain ReLU), the rest up to 2: rows keep from a few to
      // a hundred or more latents, so the device's padded width has to grow.
      const threshold = new Float32Array(s.numLatents);
      for (let l = 0; l < s.numLatents; l++) threshold[l] = l % 7 === 0 ? 0 : 2 * ((next() >>> 8) / 2 ** 24);
      const w = { ...weights, threshold };
      using cpu = SparseAutoencoder.fromWeights(w, { architecture: 'jumprelu', device: 'cpu' });
      using dev = SparseAutoencoder.fromWeights(w, { architecture: 'jumprelu', device, precision });
      expect(dev.device).toMatch(/^cuda:\d+$/);
      const x = randomMatrix(s.rows, s.dIn, next).map((v) => v * 1.5);
      x.set(weights.b_dec, 3 * s.dIn); // row 3: x - b_dec = 0, so z = b_enc < 0: no active latent
      const dense = (c: { values: Float32Array; indices: Int32Array; k: number }, rows: number) => {
        const v = new Float32Array(rows * s.numLatents);
        for (let q = 0; q < c.indices.length; q++) if (c.values[q]! !== 0) v[Math.floor(q / c.k) * s.numLatents + c.indices[q]!] = c.values[q]!;
        return v;
      };
      const [cc, cd] = await Promise.all([cpu.encode(x), dev.encode(x)]);
      expect(cc.k).toBeGreaterThan(32);
      if (tol.rel === 0) {
        expect(cd.k).toBe(cc.k);
        expect(Array.from(cd.indices)).toEqual(Array.from(cc.indices));
        expectClose(cd.values, cc.values, 0, 'JumpReLU code values');
      } else {
        // Near-threshold values may flip under reduced precision: compare the dense codes.
        const [a, b] = [dense(cd, s.rows), dense(cc, s.rows)];
        let flips = 0;
        for (let i = 0; i < a.length; i++) if ((a[i] === 0) !== (b[i] === 0)) flips++;
        expect(flips / (s.rows * cc.k)).toBeLessThanOrEqual(tol.indexMismatch);
        if (flips === 0) expectClose(a, b, tol.rel, 'JumpReLU code values by latent');
      }
      expectClose(await dev.decode(cc), await cpu.decode(cc), tol.rel, 'JumpReLU decode');
      const [fc, fd] = await Promise.all([cpu.forward(x), dev.forward(x)]);
      if (tol.rel === 0) expect(fd.fvu).toBe(fc.fvu);
      else expect(Math.abs(fd.fvu - fc.fvu)).toBeLessThanOrEqual(1e-3 * Math.max(1, fc.fvu));
      // A batch where no row has an active latent: one padding column, as on the CPU.
      const none = new Float32Array(5 * s.dIn);
      for (let r = 0; r < 5; r++) none.set(weights.b_dec, r * s.dIn);
      const [zc, zd] = await Promise.all([cpu.encode(none), dev.encode(none)]);
      expect(zd.k).toBe(1);
      expect(Array.from(zd.indices)).toEqual(Array.from(zc.indices));
      expect(Array.from(zd.values)).toEqual([0, 0, 0, 0, 0]);
      // Training a JumpReLU SAE is not supported on any device yet.
      await expect(dev.gradients(x)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG' });
    }
  });

  it('a JumpReLU row with more active latents than a device keeps (8192) is refused by name; rows up to 8192 encode as on the CPU', async () => {
    // pre[l] = x[0] for every latent and threshold[l] = l / M: a row with x[0] = s has the
    // latents l < s M active (all with the value s, so ties go to the lower index everywhere).
    const dIn = 4;
    const M = 16_384;
    const W_enc = new Float32Array(dIn * M).fill(1, 0, M); // row 0 of W_enc [dIn, M]
    const W_dec = new Float32Array(M * dIn);
    for (let l = 0; l < M; l++) W_dec[l * dIn + (l % dIn)] = 1;
    const threshold = Float32Array.from({ length: M }, (_, l) => l / M);
    const w = { W_enc, b_enc: new Float32Array(M), W_dec, b_dec: new Float32Array(dIn), threshold };
    using cpu = SparseAutoencoder.fromWeights(w, { architecture: 'jumprelu', device: 'cpu' });
    using dev = SparseAutoencoder.fromWeights(w, { architecture: 'jumprelu', device, precision: 'fp32' });
    const rows = (...s: number[]) => Float32Array.from({ length: s.length * dIn }, (_, i) => (i % dIn === 0 ? s[i / dIn]! : 0));
    // Rows of 16, 8192 and 4096 active latents: the widest is exactly the limit.
    const x = rows(2 ** -10, 0.5, 0.25);
    const [cc, cd] = await Promise.all([cpu.encode(x), dev.encode(x)]);
    expect([cc.k, cd.k]).toEqual([8192, 8192]);
    expect(Array.from(cd.indices)).toEqual(Array.from(cc.indices));
    expect(Array.from(cd.values)).toEqual(Array.from(cc.values));
    // Row 1 has every latent active: the CPU keeps all 16384, a device refuses, naming the row.
    const wide = rows(0.25, 1.5);
    expect((await cpu.encode(wide)).k).toBe(M);
    await expect(dev.encode(wide)).rejects.toMatchObject({
      code: 'ERR_SAEKIT_SHAPE',
      message: expect.stringMatching(/^Expected at most 8192 active latents per row for a JumpReLU encode on .* but row 1 of x has 16384; encode it with the SAE on the CPU$/),
    });
    // The SAE stays usable.
    expect((await dev.encode(rows(0.5))).k).toBe(8192);
  });

  it('the Trainer trains on the device like on the CPU, and refuses a mismatched device', async () => {
    const dIn = 24;
    const numLatents = 96;
    const data = randomMatrix(2048, dIn, lcg(77));
    const run = async (where: DeviceOption) => {
      using sae = SparseAutoencoder.create({ dIn, numLatents, k: 4, seed: 5, device: where, precision });
      const trainer = new Trainer(sae, { batchSize: 256, totalTokens: 2048, seed: 3, device: where });
      const res = await trainer.fit(fromArray(data, dIn));
      return { res, w: await sae.weights(), counts: (trainer as unknown as { opt: AdamOptimizer }).opt._prefetchCounts() };
    };
    const [c, d] = [await run('cpu'), await run(device)];
    expect(d.res.steps).toBe(c.res.steps);
    expectClose(d.w.W_dec, c.w.W_dec, tol.rel * 1000, 'trained W_dec');
    // On the device every batch after the first (a copy: it also set b_dec) is a borrowed
    // page-locked array; on the CPU all are copied.
    expect(d.counts).toEqual({ copied: 1, borrowed: d.res.steps - 1 });
    expect(c.counts).toEqual({ copied: c.res.steps, borrowed: 0 });
    using sae = SparseAutoencoder.create({ dIn, numLatents, k: 4, device: 'cpu' });
    expect(() => new Trainer(sae, { device })).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_DEVICE' }));
  });

  it('the Trainer on a shuffled .npy file: batches read straight into page-locked arrays train as on the CPU', async () => {
    const dIn = 20;
    const rows = 1000; // not a multiple of the batch (128): each epoch drops a short last batch
    const data = randomMatrix(rows, dIn, lcg(91));
    const dir = await mkdtemp(path.join(os.tmpdir(), 'saekit-pinned-'));
    try {
      const file = path.join(dir, 'acts.npy');
      await writeFile(file, npyBytes('float32', [rows, dIn], data));
      const run = async (where: DeviceOption) => {
        using sae = SparseAutoencoder.create({ dIn, numLatents: 64, k: 3, seed: 8, device: where, precision });
        const trainer = new Trainer(sae, { batchSize: 128, epochs: 2, seed: 12, normalize: 'none', device: where });
        const src = await openActivations(file);
        try {
          const res = await trainer.fit(src);
          return { res, w: await sae.weights(), counts: (trainer as unknown as { opt: AdamOptimizer }).opt._prefetchCounts() };
        } finally {
          await src.close();
        }
      };
      const [c, d] = [await run('cpu'), await run(device)];
      expect(d.res.steps).toBe(c.res.steps);
      expect(d.res.steps).toBe(2 * Math.floor(rows / 128));
      expect(d.counts.borrowed).toBe(d.res.steps - 1);
      expectClose(d.w.W_dec, c.w.W_dec, tol.rel * 1000, 'W_dec trained from the file');
      expectClose(d.w.b_enc, c.w.b_enc, tol.rel * 1000, 'b_enc trained from the file');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
}
