/**
 * The device path without a GPU: SAEKIT_DEVICE_LOOPBACK=1 puts the CPU kernels behind the device
 * SAE table (native/core/sae_device.h), so device selection, parameter placement, the N-API
 * device calls, optimizer state on the device and the trainer are all exercised here, and must
 * give bit-identical results to the CPU path.
 */
process.env.SAEKIT_DEVICE_LOOPBACK = '1'; // before the addon resolves its device table

import { describe, expect, it } from 'vitest';

import { backend, EncodeBatcher, features, fromArray, SparseAutoencoder } from '../lib/index.js';
import { autoDevice, cudaDevice, resolveDevice } from '../lib/backend/index.js';
import { native } from '../lib/native/index.js';
import { lcg, randomMatrix } from './helpers/reference.js';
import { deviceParitySuite } from './helpers/device-suite.js';
import { sparseCorrDeviceSuite } from './helpers/sparse-corr-suite.js';

describe('device selection (loopback device)', () => {
  it('info() lists the loopback device; auto never picks it; names are checked', () => {
    const { cuda } = backend.info();
    expect(cuda.available).toBe(true);
    expect(cuda.loopback).toBe(true);
    expect(cuda.reason).toBe('');
    expect(cuda.devices).toEqual([expect.stringMatching(/loopback/)]);
    using auto = SparseAutoencoder.create({ dIn: 8, numLatents: 16, k: 2 });
    expect(auto.device).toBe('cpu');
    using on = SparseAutoencoder.create({ dIn: 8, numLatents: 16, k: 2, device: 'cuda:0' });
    expect(on.device).toBe('cuda:0');
    expect(() => SparseAutoencoder.create({ dIn: 8, numLatents: 16, k: 2, device: 'cuda:1' })).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_DEVICE', message: expect.stringMatching(/cuda:0 and cuda:0/) }),
    );
    // Any number of digits is a device index, out of range here (not a malformed name).
    for (const far of ['cuda:10000', `cuda:${'9'.repeat(400)}`]) {
      expect(() => SparseAutoencoder.create({ dIn: 8, numLatents: 16, k: 2, device: far as 'cuda' })).toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_DEVICE', message: expect.stringMatching(new RegExp(`between cuda:0 and cuda:0 but received '${far.slice(0, 40)}`)) }),
      );
      expect(() => backend.use(far as 'cuda')).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_DEVICE' }));
    }
    for (const bad of ['gpu', 'cuda:', 'cuda:-1', 'CUDA', 3]) {
      expect(() => SparseAutoencoder.create({ dIn: 8, numLatents: 16, k: 2, device: bad as 'cpu' })).toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.device/) }),
      );
    }
    expect(() => SparseAutoencoder.create({ dIn: 8, numLatents: 16, k: 2, device: 'cuda', precision: 'fp16' as 'bf16' })).toThrow(/options\.precision/);
  });

  it('backend.use() sets the default device, for JumpReLU SAEs too', async () => {
    const prev = backend.use('cuda');
    try {
      using sae = SparseAutoencoder.create({ dIn: 8, numLatents: 16, k: 2, seed: 1 });
      expect(sae.device).toBe('cuda:0');
      const w = await sae.weights();
      const jr = { ...w, threshold: new Float32Array(16).fill(0.1) };
      using devJr = SparseAutoencoder.fromWeights(jr, { architecture: 'jumprelu' });
      expect(devJr.device).toBe('cuda:0');
      using cpuJr = SparseAutoencoder.fromWeights(jr, { architecture: 'jumprelu', device: 'cpu' });
      expect(cpuJr.device).toBe('cpu');
    } finally {
      expect(backend.use(prev)).toBe('cuda');
    }
    expect(() => backend.use('tpu' as 'cpu')).toThrow(/device/);
  });
});

describe("'auto' device selection", () => {
  it('picks the first usable CUDA device, else the CPU; never the loopback', () => {
    const h200 = 'NVIDIA H200, 139 GiB, sm_90';
    const old = 'Tesla V100, 16 GiB, sm_70 (unusable: this build needs sm_80 or newer)';
    expect(autoDevice({ available: true, loopback: false, devices: [h200, h200] })).toEqual({ kind: 'cuda', index: 0 });
    expect(autoDevice({ available: true, loopback: false, devices: [old, h200] })).toEqual({ kind: 'cuda', index: 1 });
    expect(autoDevice({ available: true, loopback: false, devices: [old] })).toEqual({ kind: 'cpu' });
    expect(autoDevice({ available: false, loopback: false, devices: [] })).toEqual({ kind: 'cpu' });
    expect(autoDevice({ available: true, loopback: true, devices: ['loopback'] })).toEqual({ kind: 'cpu' });
  });

  it("an explicit 'cuda' / 'cuda:N' naming a device listed as unusable throws ERR_SAEKIT_DEVICE (auto skips it)", () => {
    const h200 = 'NVIDIA H200, 139 GiB, sm_90';
    const old = 'Tesla V100, 16 GiB, sm_70 (unusable: this build needs sm_80 or newer)';
    const cuda = { available: true, reason: '', devices: [old, h200] };
    for (const d of ['cuda', 'cuda:0']) {
      expect(() => cudaDevice('options.device', d, cuda)).toThrow(
        expect.objectContaining({
          code: 'ERR_SAEKIT_DEVICE',
          message: `Expected a usable CUDA device for options.device = '${d}' but cuda:0 is ${old}; usable: cuda:1`,
        }),
      );
    }
    expect(cudaDevice('options.device', 'cuda:1', cuda)).toEqual({ kind: 'cuda', index: 1 });
    expect(() => cudaDevice('device', 'cuda', { available: true, reason: '', devices: [old] })).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_DEVICE', message: `Expected a usable CUDA device for device = 'cuda' but cuda:0 is ${old}` }),
    );
    expect(() => cudaDevice('device', 'cuda:2', cuda)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_DEVICE', message: expect.stringMatching(/between cuda:0 and cuda:1/) }));
  });

  it("device names resolve against the plugin candidates of the moment, as info() reports them: under candidates that find no device, 'cuda' is refused with their reason and 'auto' is the CPU", () => {
    expect(resolveDevice('options.device', 'cuda')).toEqual({ kind: 'cuda', index: 0 });
    const saved = { plugin: process.env.SAEKIT_CUDA_PLUGIN, loopback: process.env.SAEKIT_DEVICE_LOOPBACK, cuda: process.env.SAEKIT_CUDA };
    try {
      // Another candidate list, resolved with neither the loopback nor a plugin probe (SAEKIT_CUDA=0: no device even where one is built).
      process.env.SAEKIT_DEVICE_LOOPBACK = '0';
      process.env.SAEKIT_CUDA = '0';
      process.env.SAEKIT_CUDA_PLUGIN = `/nonexistent/saekit-resolve-${process.pid}.so`;
      const { cuda } = backend.info();
      expect(cuda.available).toBe(false);
      expect(() => resolveDevice('options.device', 'cuda:0')).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_DEVICE', message: `Expected a usable CUDA device for options.device = 'cuda:0' but ${cuda.reason}` }));
      expect(resolveDevice('options.device', 'auto')).toEqual({ kind: 'cpu' });
    } finally {
      for (const [name, v] of [['SAEKIT_CUDA_PLUGIN', saved.plugin], ['SAEKIT_DEVICE_LOOPBACK', saved.loopback], ['SAEKIT_CUDA', saved.cuda]] as const) {
        if (v === undefined) delete process.env[name];
        else process.env[name] = v;
      }
    }
    expect(resolveDevice('options.device', 'cuda:0')).toEqual({ kind: 'cuda', index: 0 });
  });
});

describe('feature correlation with the co-moment GEMM on the device', () => {
  it("kind 'dense' and 'preacts' give the CPU's result exactly", async () => {
    const dIn = 13;
    const x = randomMatrix(700, dIn, lcg(41));
    const src = fromArray(x, dIn);
    using sa = SparseAutoencoder.create({ dIn, numLatents: 37, k: 5, seed: 1 });
    using sb = SparseAutoencoder.create({ dIn, numLatents: 29, k: 4, seed: 2 });
    for (const kind of ['dense', 'preacts'] as const) {
      const side = (sae: SparseAutoencoder) => (kind === 'dense' ? { source: src } : { sae, source: src });
      for (const opts of [{ batchSize: 128 }, { batchSize: 100, output: 'top' as const, top: 3, maxBytes: 37 * 16 * 7 }]) {
        const cpu = await features.correlation(side(sa), side(sb), { kind, ...opts });
        const dev = await features.correlation(side(sa), side(sb), { kind, ...opts, device: 'cuda' });
        expect(dev).toEqual(cpu);
      }
    }
    await expect(features.correlation({ source: src }, { source: src }, { kind: 'dense', device: 'gpu' as 'cpu' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG' });
  });
});

describe('sparse-code correlation through the device table (loopback)', () => {
  sparseCorrDeviceSuite('cuda:0');

  it('batchInvariant encodes are refused on a device, by name (its GEMM is not batch-invariant), natively too', async () => {
    using on = SparseAutoencoder.create({ dIn: 6, numLatents: 10, k: 2, seed: 4, device: 'cuda:0' });
    const x = randomMatrix(3, 6, lcg(44));
    await expect(on.encode(x, { batchInvariant: true })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.batchInvariant.*cuda:0/) });
    expect(() => new EncodeBatcher(on, { batchInvariant: true })).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG' }));
    // The addon checks too, in the job (the model may still be on its way to the device when called).
    type Handle = { encode(x: Float32Array, inv: boolean): Promise<unknown> };
    const handle = (s: SparseAutoencoder) => (s as unknown as { handle(): Handle }).handle();
    await expect(handle(on).encode(x, true)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/batchInvariant/) });
    using fresh = SparseAutoencoder.create({ dIn: 6, numLatents: 10, k: 2, seed: 5, device: 'cuda:0' });
    await expect(handle(fresh).encode(x, true)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG' });
    // false is the usual encode.
    expect((await on.encode(x, { batchInvariant: false })).rows).toBe(3);
  });

  it('a device that does not exist is refused with ERR_SAEKIT_DEVICE, natively too', async () => {
    const dIn = 5;
    const src = fromArray(randomMatrix(20, dIn, lcg(43)), dIn);
    using sa = SparseAutoencoder.create({ dIn, numLatents: 7, k: 2, seed: 3 });
    await expect(features.correlation({ sae: sa, source: src }, { sae: sa }, { device: 'cuda:1' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_DEVICE' });
    const b = native();
    const store = b.sparseCorrCreate(3, 3, 0, 0, 0);
    b.sparseCorrAppend(store, Float32Array.of(1, 2), Int32Array.of(0, 1), Float32Array.of(1, 2), Int32Array.of(0, 1), 2);
    expect(() => b.sparseCorrRun(store, true, 0, false, 'cuda:2')).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_DEVICE', message: expect.stringMatching(/cuda:2/) }));
    // the first index past the one device: the addon's own bound, below lib's
    expect(() => b.sparseCorrRun(store, true, 0, false, 'cuda:1')).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_DEVICE', message: 'Expected a device between cuda:0 and cuda:0 but received cuda:1' }));
    expect(() => b.sparseCorrRun(store, true, 0, false, 'gpu')).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG' }));
    // The store survives a refused device and still runs.
    const r = await b.sparseCorrRun(store, true, 0, false, 'cuda:0');
    expect(r.r).toEqual(Float32Array.of(1, -1, 0, -1, 1, 0, 0, 0, 0));
  });

  it('a later resolution that finds no device (other plugin candidates) leaves new tensors on the working one', async () => {
    // The first device table that works serves the process (native/napi/device.cpp): a resolution
    // under other candidates that fails is reported by info() but must not take cuda:0 away.
    expect(backend.info().cuda.available).toBe(true);
    const b = native();
    const saved = process.env.SAEKIT_DEVICE_LOOPBACK;
    try {
      process.env.SAEKIT_DEVICE_LOOPBACK = '0';
      const other = b.info(['/nonexistent/saekit-no-such-plugin.node']).cuda;
      expect([other.available, other.loopback, other.devices]).toEqual([false, false, []]);
    } finally {
      process.env.SAEKIT_DEVICE_LOOPBACK = saved;
    }
    const t = b.fromArray(Float32Array.of(1.5, -2, 3), [3], 'float32', 'float32', 'cuda:0');
    expect(t.device).toBe('cuda:0');
    expect(Array.from(await t.toArray())).toEqual([1.5, -2, 3]);
    t.dispose();
  });
});

describe('the loopback device matches the CPU bit for bit', () => {
  deviceParitySuite({ it, expect }, 'cuda', 'bf16', { rel: 0, indexMismatch: 0 });
});
