/**
 * The Tensor basics on any device: creation, reads, conversions, zeros, dispose and moves
 * between devices. Everything here is exact, so every device must pass it bit for bit.
 * test/tensor.test.ts runs it on the CPU; test/device-tensor.test.ts on the loopback device;
 * test/cuda.test.ts on a GPU (and on the CPU emulation of the plugin in CI).
 */
import { expect, it } from 'vitest';

import { rand, randn, tensor, zeros, type DeviceOption, type Tensor } from '../../lib/index.js';

/** The name Tensor.device reports for a device option ('cuda' is cuda:0). */
export function deviceNameOf(device: DeviceOption): string {
  return device === 'cuda' ? 'cuda:0' : device;
}

export function tensorSuite(device: DeviceOption): void {
  const name = deviceNameOf(device);
  const on = { device };

  it(`infers shape and dtype from nested arrays and typed arrays (on ${name})`, async () => {
    using t = tensor(
      [
        [1, 2, 3],
        [4, 5, 6],
      ],
      undefined,
      on,
    );
    expect(t.shape).toEqual([2, 3]);
    expect(t.dtype).toBe('float32');
    expect(t.device).toBe(name);
    expect(t.size).toBe(6);
    expect(t.ndim).toBe(2);
    expect(Array.from(await t.toArray())).toEqual([1, 2, 3, 4, 5, 6]);
    using i = tensor(Int32Array.of(1, -2, 3), undefined, on);
    expect(i.dtype).toBe('int32');
    expect(await i.toArray()).toBeInstanceOf(Int32Array);
    expect(Array.from(await i.toArray())).toEqual([1, -2, 3]);
    using d = tensor(Float64Array.of(0.1, 0.2), [2, 1], on);
    expect(Array.from(await d.toArray())).toEqual([Math.fround(0.1), Math.fround(0.2)]);
    using s = tensor([[]], undefined, on);
    expect(s.shape).toEqual([1, 0]);
    expect((await s.toArray()).length).toBe(0);
  });

  it('copies its input, and toArray returns a fresh copy each time', async () => {
    const src = Float32Array.of(1, 2, 3, 4);
    using t = tensor(src, [2, 2], on);
    src[0] = 99;
    const a = await t.toArray();
    a[1] = -5;
    const b = await t.toArray();
    expect(Array.from(b)).toEqual([1, 2, 3, 4]);
    expect(a.buffer).not.toBe(b.buffer);
  });

  it('respects the byte offset of a typed-array view', async () => {
    const big = Float32Array.of(9, 9, 1, 2, 3, 9);
    using t = tensor(big.subarray(2, 5), undefined, on);
    expect(Array.from(await t.toArray())).toEqual([1, 2, 3]);
  });

  it('converts with to() on the same device and keeps values that are exact in the target', async () => {
    using t = tensor([0.5, -2, 1024, 0], undefined, on);
    using h = await t.to('float16');
    using b = await t.to('bfloat16');
    expect([h.dtype, h.device, b.device]).toEqual(['float16', name, name]);
    expect(Array.from(await h.toArray())).toEqual([0x3800, 0xc000, 0x6400, 0]);
    expect(Array.from(await b.toArray())).toEqual([0x3f00, 0xc000, 0x4480, 0]);
    using back = await h.to('float32');
    expect(Array.from(await back.toArray())).toEqual([0.5, -2, 1024, 0]);
    using same = await t.to('float32');
    expect(Array.from(await same.toArray())).toEqual([0.5, -2, 1024, 0]);
    // tensor() with a dtype converts on the device too.
    using direct = tensor([0.5, -2, 1024, 0], undefined, { dtype: 'bfloat16', device });
    expect(Array.from(await direct.toArray())).toEqual([0x3f00, 0xc000, 0x4480, 0]);
  });

  it('zeros are zeros in every dtype', async () => {
    for (const dtype of ['float32', 'bfloat16', 'float16', 'int32'] as const) {
      using z = zeros([3, 5], { dtype, device });
      expect([z.dtype, z.device]).toEqual([dtype, name]);
      expect(Array.from(await z.toArray())).toEqual(new Array(15).fill(0));
    }
    using empty = zeros([0, 4], on);
    expect((await empty.toArray()).length).toBe(0);
  });

  it('toDevice copies the values between this device and the CPU, in every dtype', async () => {
    const values = Float32Array.from({ length: 37 }, (_, i) => (i - 18) * 0.375);
    for (const dtype of ['float32', 'bfloat16', 'float16'] as const) {
      using cpu = tensor(values, [37], { dtype: 'float32', device: 'cpu' });
      using host = await cpu.to(dtype);
      using here = await host.toDevice(device);
      expect([here.device, here.dtype, here.shape]).toEqual([name, dtype, [37]]);
      using again = await here.toDevice(device); // same device: a copy
      expect(again).not.toBe(here);
      using back = await again.toDevice('cpu');
      expect(back.device).toBe('cpu');
      expect(Array.from(await back.toArray())).toEqual(Array.from(await host.toArray()));
    }
    using ints = tensor(Int32Array.of(-7, 0, 2147483647), undefined, on);
    using intsBack = await ints.toDevice('cpu');
    expect(Array.from(await intsBack.toArray())).toEqual([-7, 0, 2147483647]);
  });

  it('dispose frees the tensor; further use throws ERR_SAEKIT_DISPOSED; using disposes', async () => {
    const t = randn([4, 4], { seed: 1, device });
    t.dispose();
    t.dispose(); // idempotent
    expect(t.disposed).toBe(true);
    await expect(t.toArray()).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
    await expect(t.to('float16')).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
    await expect(t.toDevice('cpu')).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
    let escaped: Tensor | undefined;
    {
      using u = rand([2], { seed: 1, device });
      escaped = u;
    }
    expect(escaped.disposed).toBe(true);
    expect(String(escaped)).toBe(`Tensor(float32, [2], ${name}, disposed)`);
  });

  it('a read queued before dispose still completes', async () => {
    const t = randn([1000], { seed: 3, device });
    const pending = t.toArray();
    const moved = t.toDevice('cpu');
    t.dispose();
    expect((await pending).length).toBe(1000);
    using m = await moved;
    expect(Array.from(await m.toArray())).toEqual(Array.from(await pending));
  });
}
