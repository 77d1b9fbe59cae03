import { describe, expect, it } from 'vitest';

import { rand, randn, SaekitError, Tensor, tensor, zeros } from '../lib/index.js';

describe('Tensor', () => {
  it('infers shape and dtype from nested arrays and typed arrays', async () => {
    using t = tensor([
      [1, 2, 3],
      [4, 5, 6],
    ]);
    expect(t.shape).toEqual([2, 3]);
    expect(t.dtype).toBe('float32');
    expect(t.device).toBe('cpu');
    expect(t.size).toBe(6);
    expect(t.ndim).toBe(2);
    expect(Array.from(await t.toArray())).toEqual([1, 2, 3, 4, 5, 6]);
    using i = tensor(Int32Array.of(1, -2, 3));
    expect(i.dtype).toBe('int32');
    expect(await i.toArray()).toBeInstanceOf(Int32Array);
    using d = tensor(Float64Array.of(0.1, 0.2), [2, 1]);
    expect(Array.from(await d.toArray())).toEqual([Math.fround(0.1), Math.fround(0.2)]);
    using s = tensor([[]]);
    expect(s.shape).toEqual([1, 0]);
  });

  it('copies its input, and toArray returns a fresh copy each time', async () => {
    const src = Float32Array.of(1, 2, 3, 4);
    using t = tensor(src, [2, 2]);
    src[0] = 99;
    const a = await t.toArray();
    a[1] = -5;
    const b = await t.toArray();
    expect(Array.from(b)).toEqual([1, 2, 3, 4]);
    expect(a.buffer).not.toBe(b.buffer);
  });

  it('respects the byte offset of a typed-array view', async () => {
    const big = Float32Array.of(9, 9, 1, 2, 3, 9);
    using t = tensor(big.subarray(2, 5));
    expect(Array.from(await t.toArray())).toEqual([1, 2, 3]);
  });

  it('converts with to() and keeps values that are exact in the target', async () => {
    using t = tensor([0.5, -2, 1024, 0]);
    using h = await t.to('float16');
    using b = await t.to('bfloat16');
    expect(h.dtype).toBe('float16');
    expect(Array.from(await h.toArray())).toEqual([0x3800, 0xc000, 0x6400, 0]);
    expect(Array.from(await b.toArray())).toEqual([0x3f00, 0xc000, 0x4480, 0]);
    using back = await h.to('float32');
    expect(Array.from(await back.toArray())).toEqual([0.5, -2, 1024, 0]);
  });

  it('zeros are zeros in every dtype', async () => {
    for (const dtype of ['float32', 'bfloat16', 'float16', 'int32'] as const) {
      using z = zeros([3, 5], { dtype });
      expect(z.dtype).toBe(dtype);
      expect(Array.from(await z.toArray())).toEqual(new Array(15).fill(0));
    }
  });

  it('dispose frees the tensor; further use throws ERR_SAEKIT_DISPOSED; using disposes', async () => {
    const t = randn([4, 4], { seed: 1 });
    t.dispose();
    t.dispose(); // idempotent
    expect(t.disposed).toBe(true);
    await expect(t.toArray()).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
    await expect(t.to('float16')).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
    let escaped: Tensor | undefined;
    {
      using u = rand([2], { seed: 1 });
      escaped = u;
    }
    expect(escaped.disposed).toBe(true);
    expect(String(escaped)).toBe('Tensor(float32, [2], cpu, disposed)');
  });

  it('a read queued before dispose still completes', async () => {
    const t = randn([1000], { seed: 3 });
    const pending = t.toArray();
    t.dispose();
    expect((await pending).length).toBe(1000);
  });

  it('errors name the argument, the expectation and the value', () => {
    const cases: [() => unknown, string, RegExp][] = [
      [() => tensor(Float32Array.of(1, 2, 3), [2, 2]), 'ERR_SAEKIT_SHAPE', /Expected data of length 4 for shape \[2, 2\] but received length 3/],
      [() => tensor(Uint16Array.of(1)), 'ERR_SAEKIT_DTYPE', /for options.dtype but received undefined/],
      [() => tensor([[1, 2], [3]]), 'ERR_SAEKIT_SHAPE', /ragged/],
      [() => tensor([1, 'a' as unknown as number]), 'ERR_SAEKIT_ARG', /Expected a number for data\[1\] but received 'a' \(string\)/],
      [() => zeros([2, -1]), 'ERR_SAEKIT_SHAPE', /Expected non-negative integer for shape\[1\] but received -1 \(number\)/],
      [() => zeros([2], { dtype: 'float64' as 'float32' }), 'ERR_SAEKIT_DTYPE', /one of: float32, bfloat16, float16, int32 for options.dtype/],
      [() => randn([2], { seed: -1 }), 'ERR_SAEKIT_ARG', /for options.seed but received -1 \(number\)/],
      [() => randn([2], { dtype: 'int32' as 'float32' }), 'ERR_SAEKIT_DTYPE', /one of: float32, bfloat16, float16 for options.dtype/],
      [() => new Tensor({} as never, Symbol('x')), 'ERR_SAEKIT_ARG', /cannot be constructed directly/],
    ];
    for (const [fn, code, msg] of cases) {
      let caught: unknown;
      try {
        fn();
      } catch (e) {
        caught = e;
      }
      expect(caught, String(msg)).toBeInstanceOf(SaekitError);
      expect((caught as SaekitError).code).toBe(code);
      expect((caught as SaekitError).message).toMatch(msg);
    }
  });

  it('an async failure carries the caller stack', async () => {
    const t = randn([2], { seed: 1 });
    t.dispose();
    const err = await t.toArray().catch((e: Error) => e);
    expect(err).toBeInstanceOf(SaekitError);
    expect((err as Error).stack).toMatch(/tensor\.test\.ts/);
  });
});
