/**
 * Two devices at once (cuda:0 and cuda:1), through the public API: tensors moved between them,
 * ops interleaved across them, SAEs and a Trainer on cuda:1 next to one on cuda:0, ops mixing
 * the two refused, and an index past the last device refused with the valid range. On the
 * loopback with two devices (test/device-multi.test.ts) every result is bit-identical to the CPU;
 * on CUDA (test/cuda.test.ts: two GPUs, or the CPU emulation of the plugin with two emulated
 * devices) moves and conversions are exact and the float results are held to `tol`.
 *
 * Prerequisite: at least two devices (the caller gates the suite on it).
 */
import { expect, it } from 'vitest';

import { backend, ops, rand, SparseAutoencoder, tensor, Trainer, zeros, fromArray } from '../../lib/index.js';
import { native } from '../../lib/native/index.js';
import { handleOf } from '../../lib/tensor/index.js';
import { lcg, randomMatrix } from './reference.js';

export interface MultiDeviceSuiteOptions {
  /** Max |a - b| / (max|b| + 1e-6) between devices and the CPU for float results (0: bit-identical). */
  rel: number;
  /** SAE encoder precision on the devices ('fp32' unless testing another). */
  precision?: 'fp32' | 'tf32' | 'bf16';
}

function bits(a: ArrayLike<number> & { buffer: ArrayBufferLike; byteOffset: number; byteLength: number }): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

function expectClose(got: Float32Array, want: Float32Array, rel: number, what: string): void {
  expect(got.length, `${what}: length`).toBe(want.length);
  if (rel === 0) {
    expect(bits(got).equals(bits(want)), `${what}: bit-identical`).toBe(true);
    return;
  }
  let scale = 1e-6;
  for (const v of want) scale = Math.max(scale, Math.abs(v));
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!) / scale);
  expect(worst, what).toBeLessThanOrEqual(rel);
}

export function multiDeviceSuite(options: MultiDeviceSuiteOptions): void {
  const { rel } = options;
  const precision = options.precision ?? 'fp32';

  it('info() lists every device; each cuda:N is addressable', () => {
    const { devices } = backend.info().cuda;
    expect(devices.length).toBeGreaterThanOrEqual(2);
    for (let i = 0; i < devices.length; i++) {
      using t = zeros([1], { device: `cuda:${i}` });
      expect(t.device).toBe(`cuda:${i}`);
    }
  });

  it('toDevice moves values between cuda:0 and cuda:1 exactly, in every dtype (peer copy and through the host)', async () => {
    const values = Float32Array.from({ length: 53 }, (_, i) => (i - 26) * 0.3125);
    const saved = process.env.SAEKIT_DEVICE_PEER_COPY;
    try {
      // '1': the plugin's (or loopback's) peer copy; '0': download and upload through host memory.
      for (const peer of ['1', '0']) {
        process.env.SAEKIT_DEVICE_PEER_COPY = peer;
        for (const dtype of ['float32', 'bfloat16', 'float16', 'int32'] as const) {
          using host = tensor(dtype === 'int32' ? values.map(Math.trunc) : values, [53], { dtype, device: 'cpu' });
          const want = await host.toArray();
          using on0 = await host.toDevice('cuda:0');
          using on1 = await on0.toDevice('cuda:1');
          expect([on1.device, on1.dtype, on1.shape]).toEqual(['cuda:1', dtype, [53]]);
          using back0 = await on1.toDevice('cuda:0');
          expect(back0.device).toBe('cuda:0');
          for (const t of [on1, back0]) expect(bits(await t.toArray()).equals(bits(want)), `${dtype}, peer ${peer}`).toBe(true);
        }
        using empty = zeros([0, 3], { device: 'cuda:1' });
        using moved = await empty.toDevice('cuda:0');
        expect([moved.device, moved.shape]).toEqual(['cuda:0', [0, 3]]);
      }
    } finally {
      if (saved === undefined) delete process.env.SAEKIT_DEVICE_PEER_COPY;
      else process.env.SAEKIT_DEVICE_PEER_COPY = saved;
    }
    // Made on cuda:1 directly: uploads, conversions and fills run on device 1's table.
    using r1 = rand([1000], { seed: 9, device: 'cuda:1' });
    using rc = rand([1000], { seed: 9, device: 'cpu' });
    using r0 = await r1.toDevice('cuda:0');
    expect(bits(await r0.toArray()).equals(bits(await rc.toArray()))).toBe(true);
    using h1 = await r1.to('bfloat16');
    using hc = await rc.to('bfloat16');
    expect(h1.device).toBe('cuda:1');
    expect(bits(await h1.toArray()).equals(bits(await hc.toArray()))).toBe(true);
  });

  it('ops interleaved across the two devices each match the CPU', async () => {
    const next = lcg(17);
    const [M, N, K] = [19, 23, 41];
    const A = randomMatrix(M, K, next);
    const B = randomMatrix(N, K, next);
    using ac = tensor(A, [M, K], { device: 'cpu' });
    using bc = tensor(B, [N, K], { device: 'cpu' });
    using want = await ops.matmul(ac, bc, { transB: true });
    const wantValues = await want.toArray();
    // Queue work for both devices before reading anything back.
    const made = [0, 1, 0, 1].map((d) => ({
      a: tensor(A, [M, K], { device: `cuda:${d}` }),
      b: tensor(B, [N, K], { device: `cuda:${d}` }),
      d,
    }));
    const products = made.map((m) => ops.matmul(m.a, m.b, { transB: true }));
    for (let i = 0; i < made.length; i++) {
      using c = await products[i]!;
      expect(c.device).toBe(`cuda:${made[i]!.d}`);
      expectClose(await c.toArray(), wantValues, rel, `matmul on cuda:${made[i]!.d}`);
      made[i]!.a.dispose();
      made[i]!.b.dispose();
    }
  });

  it('an op on cuda:0 and cuda:1 throws ERR_SAEKIT_DEVICE naming both (TS and native checks)', async () => {
    using a = zeros([2, 3], { device: 'cuda:0' });
    using b = zeros([3, 4], { device: 'cuda:1' });
    using b0 = zeros([3, 4], { device: 'cuda:0' });
    using out1 = zeros([2, 4], { device: 'cuda:1' });
    await expect(ops.matmul(a, b)).rejects.toMatchObject({
      code: 'ERR_SAEKIT_DEVICE',
      message: expect.stringMatching(/a is on cuda:0 and b is on cuda:1/),
    });
    await expect(ops.matmul(a, b0, { out: out1 })).rejects.toMatchObject({
      code: 'ERR_SAEKIT_DEVICE',
      message: expect.stringMatching(/options\.out on cuda:0 .* but it is on cuda:1/),
    });
    expect(() => native().matmul(handleOf(a, 'a'), handleOf(b, 'b'), false, false)).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_DEVICE', message: expect.stringMatching(/a is on cuda:0 and b is on cuda:1/) }),
    );
    expect(() => native().matmul(handleOf(a, 'a'), handleOf(b0, 'b'), false, false, handleOf(out1, 'out'))).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_DEVICE', message: expect.stringMatching(/out on cuda:0 .* on cuda:1/) }),
    );
  });

  it('a device past the last one is refused with the valid range', async () => {
    const n = backend.info().cuda.devices.length;
    const range = new RegExp(`between cuda:0 and cuda:${n - 1}`);
    const bad = `cuda:${n}` as const;
    const refused = expect.objectContaining({ code: 'ERR_SAEKIT_DEVICE', message: expect.stringMatching(range) });
    expect(() => zeros([1], { device: bad })).toThrow(refused);
    expect(() => tensor([1], undefined, { device: bad })).toThrow(refused);
    expect(() => SparseAutoencoder.create({ dIn: 4, numLatents: 8, k: 2, device: bad })).toThrow(refused);
    using t = tensor([1, 2], undefined, { device: 'cuda:1' });
    await expect(t.toDevice(bad)).rejects.toMatchObject({ code: 'ERR_SAEKIT_DEVICE', message: expect.stringMatching(range) });
    // The addon checks again (lib/ always passes a resolved name).
    expect(() => native().zeros([1], 'float32', bad)).toThrow(refused);
  });

  it('SAEs on cuda:0 and cuda:1 at once: encode and Adam steps interleaved, each matching the CPU', async () => {
    const s = { dIn: 24, numLatents: 96, k: 5, seed: 7 };
    using cpu = SparseAutoencoder.create({ ...s, device: 'cpu' });
    using d0 = SparseAutoencoder.create({ ...s, device: 'cuda:0', precision });
    using d1 = SparseAutoencoder.create({ ...s, device: 'cuda:1', precision });
    expect([d0.device, d1.device]).toEqual(['cuda:0', 'cuda:1']);
    const next = lcg(23);
    const x = randomMatrix(64, s.dIn, next);
    // A batch that lives on the other device is downloaded first (as a CPU SAE takes a device tensor).
    using x0 = tensor(x, [64, s.dIn], { device: 'cuda:0' });
    const [ec, e1, e1from0] = await Promise.all([cpu.encode(x), d1.encode(x), d1.encode(x0)]);
    if (rel === 0) {
      expect(Array.from(e1.indices)).toEqual(Array.from(ec.indices));
      expect(bits(e1.values).equals(bits(ec.values))).toBe(true);
    }
    expect(Array.from(e1from0.indices)).toEqual(Array.from(e1.indices));
    expect(bits(e1from0.values).equals(bits(e1.values))).toBe(true);
    const [oc, o0, o1] = [cpu.adam({ lr: 1e-3 }), d0.adam({ lr: 1e-3 }), d1.adam({ lr: 1e-3 })];
    for (let step = 0; step < 3; step++) {
      const batch = randomMatrix(64, s.dIn, next);
      const [a, b, c] = await Promise.all([oc.step(batch), o0.step(batch), o1.step(batch)]);
      if (rel === 0) expect([b.loss, c.loss]).toEqual([a.loss, a.loss]);
      else for (const v of [b.loss, c.loss]) expect(Math.abs(v - a.loss)).toBeLessThanOrEqual(0.02 * Math.abs(a.loss) + 1e-6);
    }
    const [wc, w0, w1] = await Promise.all([cpu.weights(), d0.weights(), d1.weights()]);
    for (const n of ['W_enc', 'b_enc', 'W_dec', 'b_dec'] as const) {
      expectClose(w0[n], wc[n], rel * 100, `cuda:0 ${n} after 3 steps`);
      expectClose(w1[n], wc[n], rel * 100, `cuda:1 ${n} after 3 steps`);
    }
    for (const o of [oc, o0, o1]) o.dispose();
  });

  it('Adam steps and gradients on a device tensor: read where it lies on its own device, downloaded from another; the same as on the array', async () => {
    const s = { dIn: 24, numLatents: 96, k: 5, seed: 11 };
    const next = lcg(29);
    const batches = [0, 1, 2].map(() => randomMatrix(64, s.dIn, next));
    const run = async (device: 'cuda:0' | 'cuda:1', from: 'array' | 'cuda:0') => {
      using sae = SparseAutoencoder.create({ ...s, device, precision });
      const opt = sae.adam({ lr: 1e-3 });
      const losses: number[] = [];
      const mask = new Uint8Array(s.numLatents).fill(1, 0, 40); // AuxK over 40 latents
      let grads: Awaited<ReturnType<typeof sae.gradients>> | undefined;
      for (const b of batches) {
        if (from === 'array') {
          losses.push((await opt.step(b, { auxkAlpha: 1 / 32 })).loss);
          grads ??= await sae.gradients(b, { auxk: { deadMask: mask, alpha: 1 / 32 } });
        } else {
          const t = tensor(b, [64, s.dIn], { device: from });
          const p = opt.step(t, { auxkAlpha: 1 / 32 });
          t.dispose(); // the queued step keeps the rows alive
          losses.push((await p).loss);
          if (!grads) {
            using t2 = tensor(b, [64, s.dIn], { device: from });
            grads = await sae.gradients(t2, { auxk: { deadMask: mask, alpha: 1 / 32 } });
          }
        }
      }
      const w = await sae.weights();
      opt.dispose();
      return { losses, w, grads: grads! };
    };
    // A non-finite value in a tensor read where it lies is named like one in an array.
    {
      using sae = SparseAutoencoder.create({ ...s, device: 'cuda:0', precision });
      const opt = sae.adam();
      const bad = batches[0]!.slice();
      bad[5 * s.dIn + 3] = NaN;
      using tb = tensor(bad, [64, s.dIn], { device: 'cuda:0' });
      await expect(opt.step(tb)).rejects.toMatchObject({ code: 'ERR_SAEKIT_NONFINITE', message: expect.stringMatching(/row 5\b.*column 3/) });
      opt.dispose();
    }
    for (const device of ['cuda:0', 'cuda:1'] as const) {
      const want = await run(device, 'array');
      const got = await run(device, 'cuda:0');
      expect(got.losses, `${device}: losses`).toEqual(want.losses);
      for (const n of ['W_enc', 'b_enc', 'W_dec', 'b_dec'] as const) {
        expectClose(got.w[n], want.w[n], 0, `${device} ${n} after 3 steps on a cuda:0 tensor`);
        expectClose(got.grads.grads[n], want.grads.grads[n], 0, `${device} gradient ${n} of a cuda:0 tensor`);
      }
    }
  });

  it('a Trainer on cuda:1 trains like the CPU; a Trainer on another device than its SAE is refused', async () => {
    const dIn = 16;
    const data = randomMatrix(1024, dIn, lcg(31));
    const run = async (device: 'cpu' | 'cuda:1') => {
      using sae = SparseAutoencoder.create({ dIn, numLatents: 48, k: 4, seed: 5, device, precision });
      const trainer = new Trainer(sae, { batchSize: 128, totalTokens: 1024, seed: 3, device });
      const res = await trainer.fit(fromArray(data, dIn));
      return { res, w: await sae.weights() };
    };
    const [c, d] = [await run('cpu'), await run('cuda:1')];
    expect(d.res.steps).toBe(c.res.steps);
    expectClose(d.w.W_dec, c.w.W_dec, rel * 1000, 'trained W_dec on cuda:1');
    using sae1 = SparseAutoencoder.create({ dIn, numLatents: 48, k: 4, device: 'cuda:1' });
    expect(() => new Trainer(sae1, { device: 'cuda:0' })).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_DEVICE', message: expect.stringMatching(/cuda:1.*cuda:0|cuda:0.*cuda:1/) }),
    );
  });
}
