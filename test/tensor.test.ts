import { describe, expect, it } from 'vitest';

import { backend, DTYPES, io, ops, rand, randn, SaekitError, Tensor, tensor, zeros, type DType } from '../lib/index.js';
import { native } from '../lib/native/index.js';
import { distUrl, haveDist, runInChild } from './helpers/child.js';
import { tensorSuite } from './helpers/tensor-suite.js';

describe('Tensor', () => {
  tensorSuite('cpu');

  it("the default device is backend.use()'s: 'auto' picks the CPU without a usable GPU", () => {
    using t = tensor([1, 2]);
    expect(t.device).toBe(backend.info().cuda.available && !backend.info().cuda.loopback ? 'cuda:0' : 'cpu');
    const prev = backend.use('cpu');
    try {
      using z = zeros([2]);
      using r = randn([2], { seed: 1 });
      expect([z.device, r.device]).toEqual(['cpu', 'cpu']);
    } finally {
      backend.use(prev);
    }
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
      // @ts-expect-error the constructor is private: `new Tensor()` does not compile for consumers either
      [() => new Tensor({} as never, Symbol('x')), 'ERR_SAEKIT_ARG', /cannot be constructed directly/],
      [() => tensor([1], undefined, { device: 'gpu' as 'cpu' }), 'ERR_SAEKIT_ARG', /one of 'auto', 'cpu', 'cuda', 'cuda:N' for options\.device but received 'gpu'/],
      [() => zeros([1], { device: 'cuda:-1' as 'cpu' }), 'ERR_SAEKIT_ARG', /options\.device/],
      [() => randn([1], { device: 0 as unknown as 'cpu' }), 'ERR_SAEKIT_ARG', /options\.device/],
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
    const t = randn([2], { seed: 1, device: 'cpu' });
    t.dispose();
    const err = await t.toArray().catch((e: Error) => e);
    expect(err).toBeInstanceOf(SaekitError);
    expect((err as Error).stack).toMatch(/tensor\.test\.ts/);
  });
});

describe('tensor options are checked by name', () => {
  it('misspelt options of tensor, zeros and randn are errors naming the nearest option', () => {
    expect(() => tensor(new Float32Array(4), [2, 2], { dtpye: 'float32' } as never)).toThrow(/Unknown option options\.dtpye \(did you mean options\.dtype\?\)/);
    expect(() => zeros([2], { devce: 'cpu' } as never)).toThrow(/did you mean options\.device/);
    expect(() => randn([2], { sed: 1 } as never)).toThrow(/did you mean options\.seed/);
  });

  it('a typed array in the options place is refused as not an options object (an empty one was taken as {}, a longer one named its indices as options)', () => {
    expect(() => zeros([2], new Float32Array(0) as never)).toThrow(/Expected an options object for options but received a Float32Array of length 0/);
    expect(() => tensor(new Float32Array(4), [2, 2], new Float32Array(4) as never)).toThrow(/Expected an options object for options but received a Float32Array of length 4/);
  });
});

describe('DTYPES and io.IO_DTYPES', () => {
  it('is frozen: the dtype checks read it, so a consumer emptying it made t.to(\'float32\') refuse float32', async () => {
    expect(Object.isFrozen(DTYPES)).toBe(true);
    expect(() => (DTYPES as DType[]).splice(0)).toThrow(TypeError);
    using t = zeros([2]);
    using u = await t.to('float32');
    expect(u.dtype).toBe('float32');
    // The same for io.IO_DTYPES, which the file writers' checks read.
    expect(Object.isFrozen(io.IO_DTYPES)).toBe(true);
  });
});

describe('shapes and int32 data: errors name the element and the limit', () => {
  it('a zero dimension anywhere makes an empty tensor, however large the others', () => {
    const big = 2 ** 31 + Math.floor(Math.random() * 1000);
    for (const shape of [[0, big, big], [big, big, 0], [big, 0, big]]) {
      using t = zeros(shape);
      expect(t.shape).toEqual(shape);
      expect(t.size).toBe(0);
    }
    // Without a zero the product is refused, in either order.
    for (const shape of [[2 ** 40, 2 ** 30], [2 ** 30, 2 ** 40]]) expect(() => zeros(shape)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_SHAPE', message: expect.stringMatching(/2\^60 elements/) }));
  });

  it('a dimension past 2^50 and a hole in a shape array are shape errors naming the dimension and the value', () => {
    const over = 2 ** 50 + 1 + Math.floor(Math.random() * 100);
    expect(() => zeros([3, over])).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_SHAPE', message: `Expected non-negative integer at most 2^50 for shape[1] but received ${over} (number)` }));
    // eslint-disable-next-line no-sparse-arrays
    const holed = [, 3] as number[];
    expect(() => zeros(holed)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_SHAPE', message: expect.stringMatching(/for shape\[0\] but received undefined/) }));
    expect(() => tensor(new Float32Array(3), holed)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_SHAPE', message: expect.stringMatching(/for shape\[0\] but received undefined/) }));
  });

  it("int32 data that is not an int32 integer is refused naming its nested index, from arrays and Float32Arrays alike", async () => {
    const rows = 2 + Math.floor(Math.random() * 4);
    const cols = 3 + Math.floor(Math.random() * 4);
    const r = Math.floor(Math.random() * rows);
    const c = Math.floor(Math.random() * cols);
    const nested = Array.from({ length: rows }, (_, i) => Array.from({ length: cols }, (_, j) => i * cols + j));
    nested[r]![c] = 2.5;
    expect(() => tensor(nested, undefined, { dtype: 'int32' })).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: `Expected an int32 integer for data[${r}][${c}] but received 2.5 (number)` }));
    const flat = new Float32Array(rows * cols).map((_, i) => i - 3);
    using ok = tensor(flat, [rows, cols], { dtype: 'int32' });
    expect(Array.from(await ok.toArray())).toEqual(Array.from(flat));
    flat[r * cols + c] = -1.5;
    expect(() => tensor(flat, [rows, cols], { dtype: 'int32' })).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: `Expected an int32 integer for data[${r * cols + c}] but received -1.5 (number)` }));
    flat[r * cols + c] = 2 ** 31; // exactly representable in float32, one past int32's range
    expect(() => tensor(flat, [rows, cols], { dtype: 'int32' })).toThrow(/an int32 integer/);
  });
});

/** float64 -> bfloat16 / float16 bits, rounded once to nearest even (exact arithmetic on doubles; finite normal-range inputs). */
function ref16(d: number, dtype: 'bfloat16' | 'float16'): number {
  const mant = dtype === 'bfloat16' ? 7 : 10;
  const minExp = dtype === 'bfloat16' ? -126 : -14;
  if (d === 0) return Object.is(d, -0) ? 0x8000 : 0;
  const e = Math.max(Math.floor(Math.log2(Math.abs(d))), minExp);
  const ulp = 2 ** (e - mant);
  let q = d / ulp; // exact: a power-of-two scaling
  const fl = Math.floor(q);
  const frac = q - fl;
  q = frac > 0.5 || (frac === 0.5 && fl % 2 !== 0) ? fl + 1 : fl;
  if (q === 0) return d < 0 ? 0x8000 : 0; // underflow keeps the sign: a negative value rounds to -0
  const v = q * ulp;
  if (dtype === 'float16') {
    if (Math.abs(v) > 65504) return v > 0 ? 0x7c00 : 0xfc00;
    const f = new Float32Array([v]);
    const u = new Uint32Array(f.buffer)[0]!;
    const sign = (u >>> 16) & 0x8000;
    const av = Math.abs(v);
    if (av < 2 ** -14) return sign | Math.round(av / 2 ** -24);
    const exp = Math.floor(Math.log2(av));
    return sign | ((exp + 15) << 10) | Math.round((av / 2 ** exp - 1) * 1024);
  }
  const f = new Float32Array([v]);
  return new Uint32Array(f.buffer)[0]! >>> 16;
}

describe('rounding to 16-bit types happens once', () => {
  it('tensor() from float64 values (Float64Array or arrays) rounds each to bfloat16/float16 once (it rounded to float32 first)', async () => {
    const cases: [number, 'bfloat16' | 'float16', number][] = [
      [1 + 2 ** -8 + 2 ** -30, 'bfloat16', 0x3f81],
      [-(1 + 2 ** -8 + 2 ** -30), 'bfloat16', 0xbf81],
      [1 + 2 ** -11 + 2 ** -40, 'float16', 0x3c01],
      // Below half the smallest subnormal: rounds to a zero of the value's sign.
      [-(2 ** -26), 'float16', 0x8000],
      [-(2 ** -140), 'bfloat16', 0x8000],
    ];
    for (const [v, dtype, want] of cases) {
      for (const data of [new Float64Array([v]), [v]]) {
        using t = tensor(data, [1], { dtype });
        expect((await t.toArray())[0], `${v} ${dtype}`).toBe(want);
      }
    }
    const seed = Date.now() >>> 0;
    let s = seed;
    const next = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
    for (const dtype of ['bfloat16', 'float16'] as const) {
      const v = Float64Array.from({ length: 4000 }, (_, i) => (next() - 0.5) * 2 ** (Math.floor(next() * 20) - 8) * (1 + (i % 3) * 2 ** -26));
      using t = tensor(v, [v.length], { dtype });
      const got = await t.toArray();
      for (let i = 0; i < v.length; i++) expect(got[i], `seed ${seed} ${dtype} ${v[i]}`).toBe(ref16(v[i]!, dtype));
    }
  });

  it('int32 to bfloat16 rounds the integer once (2^25 + 2^17 + 1 went to 2^25); Float64Array to int32 is exact or refused', async () => {
    const ints = Int32Array.from([33685505, -33685505, 2 ** 31 - 1, -(2 ** 31), 16777217, 257, -129]);
    using t = tensor(ints);
    using b = await t.to('bfloat16');
    const got = await b.toArray();
    expect(got[0]).toBe(0x4c01);
    expect(got[1]).toBe(0xcc01);
    for (let i = 0; i < ints.length; i++) expect(got[i], String(ints[i])).toBe(ref16(ints[i]!, 'bfloat16'));
    using fromInts = tensor(ints, [ints.length], { dtype: 'bfloat16' });
    expect(Array.from(await fromInts.toArray())).toEqual(Array.from(got));
    using exact = tensor(new Float64Array([16777217, 123456789, -5]), [3], { dtype: 'int32' });
    expect(Array.from(await exact.toArray())).toEqual([16777217, 123456789, -5]);
    expect(() => tensor(new Float64Array([1.5]), [1], { dtype: 'int32' })).toThrow(/data\[0\]/);
  });

  it('int32 to bfloat16 at and around every bfloat16 midpoint above 2^24 (float32 rounding toward and away from zero), against a once-rounded reference', async () => {
    // A midpoint m between two bfloat16 values; int32 values within a few float32 ulps of it. The
    // float32 step rounds m - 1 up onto m (away from zero): rounding to odd must step back below m.
    const vals: number[] = [];
    for (let e = 24; e <= 30; e++) {
      const ulp32 = 2 ** (e - 23);
      for (const k of [1, 2, 3, 64, 127, 200, 255]) {
        const m = 2 ** e + (2 * k + 1) * 2 ** (e - 8);
        if (m >= 2 ** 31) continue;
        for (const dlt of [-ulp32 - 1, -ulp32, -ulp32 / 2 - 1, -ulp32 / 2, -ulp32 / 2 + 1, -2, -1, 0, 1, 2, ulp32 / 2 - 1, ulp32 / 2, ulp32 / 2 + 1, ulp32, ulp32 + 1]) {
          const v = m + dlt;
          if (v < 2 ** 31 && v !== m - 0.5) vals.push(v, -v);
        }
      }
    }
    using t = tensor(Int32Array.from(vals));
    using b = await t.to('bfloat16');
    const got = await b.toArray();
    for (let i = 0; i < vals.length; i++) expect(got[i], String(vals[i])).toBe(ref16(vals[i]!, 'bfloat16'));
  });

  it('rand() in bfloat16/float16 stays below 1 (values that rounded up to 1 keep the largest below it)', async () => {
    for (const [dtype, top] of [['bfloat16', 0x3f7f], ['float16', 0x3bff]] as const) {
      using u = rand([200_000], { dtype, seed: 1 });
      using f = rand([200_000], { seed: 1 });
      const bits = await u.toArray();
      const f32 = await f.toArray();
      let clamped = 0;
      for (let i = 0; i < bits.length; i++) {
        const want = ref16(f32[i]!, dtype);
        if (want === (dtype === 'bfloat16' ? 0x3f80 : 0x3c00)) {
          clamped++;
          expect(bits[i]).toBe(top);
        } else expect(bits[i]).toBe(want);
      }
      expect(clamped).toBeGreaterThan(0);
    }
  });

  it('backend.use() needs a device name: without one it is an error and the default stays', () => {
    const before = backend.use('auto');
    expect(() => backend.use(undefined as never)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/for device/) }));
    using t = tensor([1, 2]);
    expect(t.device).toBe('cpu');
    backend.use(before);
  });
});

describe('host memory is reused', () => {
  it.runIf(process.platform === 'linux' && haveDist)('300 create/dispose rounds of a 4 MiB tensor leave the resident size near where it was', () => {
    // glibc's aligned_alloc carved each block from a slightly larger chunk, so a freed block was too
    // small for the next one of the same size: the heap grew ~4 MiB a round (1.2 GB here) with
    // nothing live. A child process, so that no other test's memory counts.
    const n = (1 << 20) + 16 * Math.floor(Math.random() * 100);
    const script =
      `import { tensor } from ${distUrl};` +
      `const x = new Float32Array(${n}).fill(1); tensor(x).dispose();` +
      `const r0 = process.memoryUsage.rss(); for (let i = 0; i < 300; i++) tensor(x).dispose();` +
      `console.log(process.memoryUsage.rss() - r0);`;
    const grew = Number(runInChild(script));
    expect(grew / 2 ** 20, 'MiB the resident size grew').toBeLessThan(150);
  });
});

describe('the native tensor handle and the op queue', () => {
  it('a disposed handle refuses ops with ERR_SAEKIT_DISPOSED naming it, and reports 0 bytes', async () => {
    // Below lib/'s own check (the addon is called directly by workers and the CLI as well).
    const h = native().zeros([4, 6], 'bfloat16');
    expect(h.nbytes).toBe(48);
    const other = native().zeros([6, 2], 'float32');
    h.dispose();
    expect([h.disposed, h.nbytes]).toEqual([true, 0]);
    const refused = { code: 'ERR_SAEKIT_DISPOSED', message: 'tensor is a disposed Tensor; it cannot be used any more' };
    expect(() => h.toArray()).toThrow(expect.objectContaining(refused));
    expect(() => h.to('float32')).toThrow(expect.objectContaining(refused));
    expect(() => native().matmul(h, other, false, false)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_DISPOSED', message: 'a is a disposed Tensor; it cannot be used any more' }));
    other.dispose();
  });

  it('stats().pendingInThisThread counts the ops queued from this thread and not yet settled', async () => {
    using t = zeros([5, 3]);
    const before = backend.stats().pendingInThisThread;
    const reads = [t.toArray(), t.toArray(), t.toArray()];
    // Settlements run on this thread, so none can land before the next line.
    expect(backend.stats().pendingInThisThread).toBe(before + 3);
    await Promise.all(reads);
    expect(backend.stats().pendingInThisThread).toBeLessThanOrEqual(before);
  });

  it.runIf(haveDist)('an op in flight keeps the process alive until it settles, and an idle addon lets it exit', () => {
    // The child awaits one op at top level with nothing else on its event loop: it prints only if
    // the op held the loop open (else Node exits with status 13), and execFileSync returns only once
    // the process has ended (an addon that kept holding the loop would hang it until the timeout).
    const script = `import * as s from ${distUrl};
      const t = s.zeros([64, 64]);
      const v = await t.toArray();
      t.dispose();
      console.log(JSON.stringify({ n: v.length }));`;
    expect(JSON.parse(runInChild(script))).toEqual({ n: 4096 });
  });
});

describe('nested arrays: shape errors carry ERR_SAEKIT_SHAPE and name the element', () => {
  it('a number where an array belongs, a ragged row at any depth, and a non-number leaf', () => {
    const cases: [unknown, string, string][] = [
      [[[1, 2], 3], 'ERR_SAEKIT_SHAPE', 'Expected an array for data[1] but received 3 (number)'],
      [[[[1], [2]], [[3], 4]], 'ERR_SAEKIT_SHAPE', 'Expected an array for data[1][1] but received 4 (number)'],
      [[[1, 2, 3], [4, 5]], 'ERR_SAEKIT_SHAPE', 'Expected an array of length 3 (arrays must not be ragged) for data[1]'],
      [[[1], [2, 3]], 'ERR_SAEKIT_SHAPE', 'Expected an array of length 1 (arrays must not be ragged) for data[1]'],
      // An array where a number belongs is ragged too (a shape error, as the reverse is).
      [[[1, 2], [3, [4]]], 'ERR_SAEKIT_SHAPE', 'Expected a number (arrays must not be ragged) for data[1][1] but received an array of length 1'],
      [[1, [2]], 'ERR_SAEKIT_SHAPE', 'Expected a number (arrays must not be ragged) for data[1]'],
      // A leaf of another type is a bad value, not a bad shape.
      [[[1, 2], [3, '4']], 'ERR_SAEKIT_ARG', "Expected a number for data[1][1] but received '4' (string)"],
    ];
    for (const [data, code, message] of cases) {
      expect(() => tensor(data as number[][]), JSON.stringify(data)).toThrow(expect.objectContaining({ code, message: expect.stringContaining(message) }));
    }
  });
});

describe('rounding to 16-bit types: values just below a tie (mutation round 6)', () => {
  it('a float64 just below a bfloat16/float16 tie rounds down, though its float32 rounding is the tie itself', async () => {
    // float32 rounds these up onto the 16-bit tie; rounding to odd must step back below it.
    const cases: [number, 'bfloat16' | 'float16', number][] = [
      [1 + 2 ** -8 - 2 ** -30, 'bfloat16', 0x3f80],
      [-(1 + 2 ** -8 - 2 ** -30), 'bfloat16', 0xbf80],
      [1 + 2 ** -11 - 2 ** -40, 'float16', 0x3c00],
      [-(1 + 2 ** -11 - 2 ** -40), 'float16', 0xbc00],
    ];
    for (const [v, dtype, want] of cases) {
      expect(Math.fround(v)).not.toBe(v);
      for (const data of [new Float64Array([v]), [v]]) {
        using t = tensor(data, [1], { dtype });
        expect((await t.toArray())[0], `${v} ${dtype}`).toBe(want);
      }
    }
  });
});

describe('use after dispose names the argument as the caller wrote it (mutation round 6)', () => {
  it("matmul with a disposed options.out is ERR_SAEKIT_DISPOSED naming options.out (the addon's own check says out)", async () => {
    using a = zeros([2, 3]);
    using b = zeros([3, 2]);
    const out = zeros([2, 2]);
    out.dispose();
    out.dispose(); // twice: idempotent
    await expect(ops.matmul(a, b, { out })).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED', message: 'options.out is a disposed Tensor; it cannot be used any more' });
  });
});

describe('t.to(its own dtype) is an exact copy', () => {
  it('keeps every bit, signalling NaNs and NaN payloads included (as its JSDoc says); only a conversion to another float type makes NaNs quiet', async () => {
    const next = (() => {
      let s = Date.now() % 100_000 >>> 0;
      return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0);
    })();
    // Signalling and quiet NaNs of both signs with payloads, infinities, zeros, subnormals, random bits.
    const f32 = Uint32Array.from([0x7f800001, 0xff800123, 0x7fbfffff, 0x7fc00001, 0xffffffff, 0x7f800000, 0x80000000, 0x00000001, ...Array.from({ length: 37 }, next)]);
    const h16 = Uint16Array.from([0x7c01, 0xfc01, 0x7dff, 0x7e01, 0x7f81, 0xff81, 0x7fbf, 0xffff, 0x0001, 0x8000, ...Array.from({ length: 23 }, () => next() & 0xffff)]);
    const i32 = Int32Array.from([0, -1, 2147483647, -2147483648, ...Array.from({ length: 11 }, () => next() | 0)]);
    const cases: [DType, Uint32Array | Uint16Array | Int32Array][] = [['float32', f32], ['bfloat16', h16], ['float16', h16], ['int32', i32]];
    for (const [dtype, raw] of cases) {
      const data = dtype === 'float32' ? new Float32Array(raw.buffer) : raw;
      using t = tensor(data as never, [raw.length], { dtype });
      using u = await t.to(dtype);
      const got = await u.toArray();
      const bits = (a: ArrayBufferView) => Array.from(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
      expect(bits(got), dtype).toEqual(bits(raw));
    }
    // Another float type: NaNs come out quiet.
    using s = tensor(new Float32Array(Uint32Array.from([0x7f800001, 0xff800123]).buffer), [2]);
    using b = await s.to('bfloat16');
    expect(Array.from(await b.toArray())).toEqual([0x7fc0, 0xffc0]);
  });
});

describe('nested arrays deeper than a tensor can be', () => {
  it('data nested more than 8 deep, or an array that holds itself, is ERR_SAEKIT_SHAPE naming data (the second aborted the process, the first was a RangeError or named a shape never passed)', () => {
    const message = expect.stringMatching(/^Expected arrays nested at most 8 deep \(a tensor has at most 8 dimensions\) for data/);
    const self: unknown[] = [1];
    self[0] = self;
    let deep: unknown = [1];
    for (let i = 0; i < 200_000; i++) deep = [deep];
    let nine: unknown = [1, 2];
    for (let i = 0; i < 8; i++) nine = [nine];
    for (const [what, data] of [['itself', self], ['200001 deep', deep], ['9 deep', nine]] as const) {
      expect(() => tensor(data as number[]), what).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_SHAPE', message }));
    }
    let eight: unknown = [1, 2];
    for (let i = 0; i < 7; i++) eight = [eight];
    using t = tensor(eight as number[]);
    expect(t.shape).toEqual([1, 1, 1, 1, 1, 1, 1, 2]);
  });
});

describe('argument names from the native side (review)', () => {
  it("zeros, randn and rand past 2^60 elements name shape; fromWeights past create's bounds names the weight; backend.deviceName checks its argument", async () => {
    const { SparseAutoencoder } = await import('../lib/index.js');
    for (const make of [() => zeros([2 ** 31, 2 ** 30]), () => randn([2 ** 31, 2 ** 30]), () => rand([2 ** 31, 2 ** 30])]) {
      expect(make).toThrow(expect.objectContaining({ message: expect.stringMatching(/ for shape /) }));
    }
    const w = (dIn: number, n: number) => ({ W_enc: new Float32Array(dIn * n), b_enc: new Float32Array(n), W_dec: new Float32Array(dIn * n), b_dec: new Float32Array(dIn) });
    expect(() => SparseAutoencoder.fromWeights(w(2 ** 20 + 1, 1), { k: 1 })).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_SHAPE', message: expect.stringMatching(/^Expected an array of length dIn <= 2\^20 for b_dec/) }));
    const bEnc = { W_enc: new Float32Array(0), b_enc: new Float32Array(2 ** 24 + 1), W_dec: new Float32Array(0), b_dec: new Float32Array(1) };
    expect(() => SparseAutoencoder.fromWeights(bEnc, { k: 1 })).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_SHAPE', message: expect.stringMatching(/^Expected an array of length numLatents <= 2\^24 for b_enc/) }));
    expect(backend.deviceName({ kind: 'cuda', index: 2 })).toBe('cuda:2');
    expect(backend.deviceName({ kind: 'cpu' })).toBe('cpu');
    for (const bad of [undefined, 'cpu', { kind: 'gpu' }, { kind: 'cuda', index: -1 }, { kind: 'cuda', index: 1.5 }, { kind: 'cuda' }]) {
      expect(() => backend.deviceName(bad as never), JSON.stringify(bad)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/^Expected a resolved device.* for d but received/) }));
    }
  });
});
