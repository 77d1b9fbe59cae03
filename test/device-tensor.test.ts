/**
 * Tensors on a device without a GPU: SAEKIT_DEVICE_LOOPBACK=1 puts the CPU backend table behind
 * the device (native/napi/device.cpp), so 'cuda' tensors are allocated, uploaded, converted,
 * filled, multiplied and downloaded through the device path (the backend table's alloc, free,
 * upload, download, convert, fill and GEMM slots), with results bit-identical to the CPU's.
 * The same suites run on a real GPU in test/cuda.test.ts.
 */
process.env.SAEKIT_DEVICE_LOOPBACK = '1'; // before the addon resolves its device table

import { describe, expect, it } from 'vitest';

import { backend, ops, rand, randn, SparseAutoencoder, tensor, zeros } from '../lib/index.js';
import { native } from '../lib/native/index.js';
import { handleOf } from '../lib/tensor/index.js';
import { distUrl, haveDist, runInChild } from './helpers/child.js';
import { dtypeSuite } from './helpers/dtype-suite.js';
import { matmulSuite } from './helpers/matmul-suite.js';
import { randomSuite } from './helpers/random-suite.js';
import { lcg, randomMatrix } from './helpers/reference.js';
import { tensorSuite } from './helpers/tensor-suite.js';

describe('tensors on the loopback device', () => {
  it('is a CUDA device to the API, and never the default', () => {
    const { cuda } = backend.info();
    expect([cuda.available, cuda.loopback]).toEqual([true, true]);
    using t = tensor([1]);
    expect(t.device).toBe('cpu');
    const prev = backend.use('cuda');
    try {
      using u = tensor([1]);
      using z = zeros([1]);
      using r = rand([1], { seed: 1 });
      expect([u.device, z.device, r.device]).toEqual(['cuda:0', 'cuda:0', 'cuda:0']);
      using c = tensor([1], undefined, { device: 'cpu' });
      expect(c.device).toBe('cpu');
    } finally {
      backend.use(prev);
    }
  });

  tensorSuite('cuda');
  randomSuite({ device: 'cuda', normalUlps: 0 });
  matmulSuite(3, { device: 'cuda' });
  dtypeSuite({ device: 'cuda:0' });

  it('matmul on the device equals the CPU bit for bit (same GEMM behind the table)', async () => {
    const next = lcg(11);
    const [M, N, K] = [33, 17, 70];
    const A = randomMatrix(M, K, next);
    const B = randomMatrix(N, K, next);
    using ac = tensor(A, [M, K], { device: 'cpu' });
    using bc = tensor(B, [N, K], { device: 'cpu' });
    using ad = await ac.toDevice('cuda');
    using bd = await bc.toDevice('cuda');
    using cc = await ops.matmul(ac, bc, { transB: true });
    using cd = await ops.matmul(ad, bd, { transB: true });
    expect(cd.device).toBe('cuda:0');
    expect(Buffer.from((await cd.toArray()).buffer).equals(Buffer.from((await cc.toArray()).buffer))).toBe(true);
  });

  it('SAE ops take a device tensor (downloaded first, in queue order)', async () => {
    const next = lcg(5);
    const x = randomMatrix(6, 8, next);
    using sae = SparseAutoencoder.create({ dIn: 8, numLatents: 16, k: 2, seed: 1, device: 'cpu' });
    using xd = tensor(x, [6, 8], { device: 'cuda' });
    const fromDevice = await sae.encode(xd);
    const fromHost = await sae.encode(x);
    expect(Array.from(fromDevice.indices)).toEqual(Array.from(fromHost.indices));
    expect(Array.from(fromDevice.values)).toEqual(Array.from(fromHost.values));
    const w = await sae.weights();
    using wEnc = tensor(w.W_enc, [8, 16], { device: 'cuda' });
    using copy = SparseAutoencoder.fromWeights({ ...w, W_enc: wEnc }, { k: 2, device: 'cpu' });
    expect(Array.from((await copy.weights()).W_enc)).toEqual(Array.from(w.W_enc));
  });
});

describe('device errors', () => {
  it('an op on two devices throws ERR_SAEKIT_DEVICE naming both (TS and native checks)', async () => {
    using a = tensor(new Float32Array(6), [2, 3], { device: 'cpu' });
    using b = tensor(new Float32Array(12), [3, 4], { device: 'cuda' });
    using bc = tensor(new Float32Array(12), [3, 4], { device: 'cpu' });
    await expect(ops.matmul(a, b)).rejects.toMatchObject({ code: 'ERR_SAEKIT_DEVICE', message: expect.stringMatching(/a is on cpu and b is on cuda:0/) });
    using out = zeros([2, 4], { device: 'cuda' });
    await expect(ops.matmul(a, bc, { out })).rejects.toMatchObject({
      code: 'ERR_SAEKIT_DEVICE',
      message: expect.stringMatching(/options\.out on cpu .* but it is on cuda:0/),
    });
    // The addon checks again, whatever the caller.
    expect(() => native().matmul(handleOf(a, 'a'), handleOf(b, 'b'), false, false)).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_DEVICE', message: expect.stringMatching(/a is on cpu and b is on cuda:0/) }),
    );
    expect(() => native().matmul(handleOf(a, 'a'), handleOf(bc, 'b'), false, false, handleOf(out, 'out'))).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_DEVICE', message: expect.stringMatching(/out on cpu .* on cuda:0/) }),
    );
  });

  it('device names are checked; a device that does not exist throws ERR_SAEKIT_DEVICE', async () => {
    for (const bad of ['gpu', 'cuda:', 'cuda:-1', 'CUDA', 3, null]) {
      expect(() => tensor([1], undefined, { device: bad as 'cpu' })).toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.device/) }),
      );
      expect(() => randn([1], { device: bad as 'cpu' })).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG' }));
    }
    expect(() => zeros([1], { device: 'cuda:1' })).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_DEVICE', message: expect.stringMatching(/between cuda:0 and cuda:0/) }),
    );
    using t = tensor([1, 2], undefined, { device: 'cuda' });
    await expect(t.toDevice('tpu' as 'cpu')).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/for device/) });
    await expect(t.toDevice('cuda:2')).rejects.toMatchObject({ code: 'ERR_SAEKIT_DEVICE' });
    // The addon's own parser (lib/ always passes a resolved name).
    expect(() => native().zeros([1], 'float32', 'cuda:x')).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG' }));
    expect(() => native().zeros([1], 'float32', 'cuda:7')).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_DEVICE' }));
  });

  it('a disposed device tensor cannot be read, converted or moved', async () => {
    const t = rand([3], { seed: 2, device: 'cuda' });
    t.dispose();
    await expect(t.toArray()).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
    await expect(t.to('bfloat16')).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
    await expect(t.toDevice('cpu')).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
    expect(String(t)).toBe('Tensor(float32, [3], cuda:0, disposed)');
  });

  it.skipIf(!haveDist)('device tensors dropped without dispose() are collected: their bytes count towards V8 collections as host tensors do', () => {
    // A child (its own heap, the loopback inherited from this process's env) drops 1000 device
    // tensors of 2 MiB: 2 GB made, never disposed. With only the wrappers' few bytes on its heap
    // V8 never collected them and RSS grew by all of it; reported, they go as host tensors do.
    const script = `
      import { randn } from ${distUrl};
      const rss = () => process.memoryUsage().rss;
      const base = rss();
      let peak = 0, last;
      for (let i = 0; i < 1000; i++) {
        last = randn([512, 1024], { device: 'cuda', seed: i });
        if (i % 25 === 0) { await last.toArray(); peak = Math.max(peak, rss()); }
      }
      await last.toArray();
      console.log(JSON.stringify({ device: last.device, grewMiB: (Math.max(peak, rss()) - base) / 2 ** 20 }));`;
    const r = JSON.parse(runInChild(script)) as { device: string; grewMiB: number };
    expect(r.device).toBe('cuda:0');
    expect(r.grewMiB).toBeLessThan(700);
  });
});
