/**
 * The core API layer's argument checks at their exact bounds, and the defaults the JSDoc states:
 * validators (integer and number ranges, seeds, shapes, signals), error descriptions, tensor and
 * matmul options, the SAE's Adam and dead-mask defaults, dispose, and EncodeBatcher's queue.
 * Each error is checked for its code and for a message naming the argument and what it expects.
 */
import { describe, expect, it } from 'vitest';

import { EncodeBatcher, ops, randn, SparseAutoencoder, tensor, zeros, type SparseCodes } from '../lib/index.js';
import { describe as describeValue } from '../lib/errors.js';
import { checkNumber, checkSignal } from '../lib/validate.js';
import { lcg } from './helpers/reference.js';

/** The SaekitError `f` throws (synchronously or as a rejection). */
async function errorOf(f: () => unknown): Promise<{ code: string; message: string }> {
  try {
    await f();
  } catch (e) {
    return e as { code: string; message: string };
  }
  throw new Error('expected an error');
}

describe('validators at their exact bounds', () => {
  it('checkNumber refuses NaN and infinities (even with max Infinity) and, with exclusiveMin, the minimum itself; messages say > or >=', () => {
    const next = lcg(Date.now() % 100_000);
    for (let trial = 0; trial < 20; trial++) {
      const min = Math.round(next() * 100) / 7;
      for (const bad of [NaN, Infinity, -Infinity]) {
        for (const max of [Infinity, min + 3]) {
          expect(() => checkNumber('opt.x', bad, min, max)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG' }));
        }
      }
      expect(checkNumber('opt.x', min, min, Infinity)).toBe(min);
      expect(() => checkNumber('opt.x', min, min, Infinity, true)).toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: `Expected finite number > ${min} for opt.x but received ${min} (number)` }),
      );
      expect(() => checkNumber('opt.x', min - 1, min, min + 3)).toThrow(
        expect.objectContaining({ message: `Expected finite number >= ${min} and <= ${min + 3} for opt.x but received ${min - 1} (number)` }),
      );
      const above = min + next() * 5 + 1e-9;
      expect(checkNumber('opt.x', above, min, Infinity, true)).toBe(above);
    }
  });

  it('public options behind checkNumber: prefetch scale 0 and deadMask NaN or Infinity are refused naming the option', async () => {
    using sae = SparseAutoencoder.create({ dIn: 3, numLatents: 5, k: 2, seed: 1, device: 'cpu' });
    using opt = sae.adam();
    expect(await errorOf(() => opt.prefetch(new Float32Array(6), { scale: 0 }))).toMatchObject({
      code: 'ERR_SAEKIT_ARG',
      message: 'Expected finite number > 0 for options.scale but received 0 (number)',
    });
    using ok = opt.prefetch(new Float32Array(6), { scale: Number.MIN_VALUE });
    expect(ok.rows).toBe(2);
    for (const bad of [NaN, Infinity]) {
      expect(await errorOf(() => sae.deadMask(bad))).toMatchObject({
        code: 'ERR_SAEKIT_ARG',
        message: `Expected finite number >= 0 for thresholdTokens but received ${bad} (number)`,
      });
    }
    expect(await errorOf(() => opt.step(new Float32Array([1, 2, 3, 4, 5, 7]), { lr: NaN }))).toMatchObject({
      code: 'ERR_SAEKIT_ARG',
      message: expect.stringMatching(/^Expected finite number >= 0 and <= 1000000 for options\.lr but received NaN/),
    });
  });

  it('seeds: a bigint up to 2^64 - 1 is taken, 2^64 is refused naming options.seed and the bound', async () => {
    using a = randn([3], { seed: (1n << 64n) - 1n, device: 'cpu' });
    expect(a.shape).toEqual([3]);
    expect(await errorOf(() => randn([3], { seed: 1n << 64n, device: 'cpu' }))).toMatchObject({
      code: 'ERR_SAEKIT_ARG',
      message: 'Expected non-negative safe integer or bigint below 2^64 for options.seed but received 18446744073709551616n (bigint)',
    });
    expect(await errorOf(() => randn([3], { seed: 1, stream: 1n << 64n, device: 'cpu' }))).toMatchObject({
      code: 'ERR_SAEKIT_ARG',
      message: expect.stringMatching(/below 2\^64 for options\.stream/),
    });
  });

  it('shapes: 8 dimensions and a dimension of exactly 2^50 (with a 0 beside it) are taken; 9 dimensions or 2^50 + 1 are refused', async () => {
    using eight = zeros([1, 1, 1, 1, 1, 1, 1, 1], { device: 'cpu' });
    expect(eight.ndim).toBe(8);
    using big = zeros([2 ** 50, 0], { device: 'cpu' });
    expect(big.shape).toEqual([2 ** 50, 0]);
    expect(await errorOf(() => zeros([1, 1, 1, 1, 1, 1, 1, 1, 1], { device: 'cpu' }))).toMatchObject({
      code: 'ERR_SAEKIT_SHAPE',
      message: 'Expected at most 8 dimensions for shape but received an array of length 9',
    });
    expect(await errorOf(() => zeros([0, 2 ** 50 + 1], { device: 'cpu' }))).toMatchObject({
      code: 'ERR_SAEKIT_SHAPE',
      message: `Expected non-negative integer at most 2^50 for shape[1] but received ${2 ** 50 + 1} (number)`,
    });
  });

  it('checkSignal takes undefined or an AbortSignal; null or a look-alike is refused naming the option', () => {
    expect(checkSignal('options.signal', undefined)).toBeUndefined();
    const s = new AbortController().signal;
    expect(checkSignal('options.signal', s)).toBe(s);
    for (const [bad, shown] of [[null, 'null'], [{ aborted: false }, 'an object'], [false, 'false (boolean)']] as const) {
      expect(() => checkSignal('options.signal', bad)).toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: `Expected an AbortSignal for options.signal but received ${shown}` }),
      );
    }
  });

  it("describe() shows a string of up to 40 characters whole and cuts a longer one after its first 40 ('...')", () => {
    const next = lcg((Date.now() >>> 2) % 100_000);
    for (let trial = 0; trial < 10; trial++) {
      const n = 1 + Math.floor(next() * 80);
      const s = Array.from({ length: n }, () => String.fromCharCode(97 + Math.floor(next() * 26))).join('');
      expect(describeValue(s)).toBe(n > 40 ? `'${s.slice(0, 40)}...' (string)` : `'${s}' (string)`);
    }
    expect(describeValue('a'.repeat(40))).toBe(`'${'a'.repeat(40)}' (string)`);
    expect(describeValue('b'.repeat(41))).toBe(`'${'b'.repeat(40)}...' (string)`);
  });
});

describe('tensor() and matmul options', () => {
  it("int32 data at int32's exact limits is taken; one past either is refused naming the element", async () => {
    using t = tensor([[-2147483648, 2147483647]], undefined, { dtype: 'int32', device: 'cpu' });
    expect(Array.from(await t.toArray())).toEqual([-2147483648, 2147483647]);
    using f = tensor(new Float64Array([2147483647, -2147483648]), undefined, { dtype: 'int32', device: 'cpu' });
    expect(Array.from(await f.toArray())).toEqual([2147483647, -2147483648]);
    for (const [v, at] of [[2147483648, 1], [-2147483649, 0]] as const) {
      const data = at === 1 ? [[0, v]] : [[v, 0]];
      expect(await errorOf(() => tensor(data, undefined, { dtype: 'int32', device: 'cpu' }))).toMatchObject({
        code: 'ERR_SAEKIT_ARG',
        message: `Expected an int32 integer for data[0][${at}] but received ${v} (number)`,
      });
    }
  });

  it('matmul: transA / transB must be booleans; options.out of the wrong shape, or a itself, is named as options.out', async () => {
    using a = tensor(new Float32Array([1, 2, 3, 4, 5, 6]), [2, 3], { device: 'cpu' });
    using b = tensor(new Float32Array([1, 0, 0, 1, 1, 1]), [3, 2], { device: 'cpu' });
    using sq = tensor(new Float32Array([1, 2, 3, 4]), [2, 2], { device: 'cpu' });
    using id = tensor(new Float32Array([1, 0, 0, 1]), [2, 2], { device: 'cpu' });
    for (const name of ['transA', 'transB'] as const) {
      for (const [bad, shown] of [[1, '1 (number)'], ['true', "'true' (string)"]] as const) {
        expect(await errorOf(() => ops.matmul(sq, sq, { [name]: bad } as never))).toMatchObject({
          code: 'ERR_SAEKIT_ARG',
          message: `Expected boolean for options.${name} but received ${shown}`,
        });
      }
    }
    using wide = zeros([2, 5], { device: 'cpu' });
    expect(await errorOf(() => ops.matmul(a, b, { out: wide }))).toMatchObject({
      code: 'ERR_SAEKIT_SHAPE',
      message: 'Expected a float32 tensor of shape [2, 2] for options.out but received float32 [2, 5]',
    });
    // The right shape in another dtype is a dtype error, as an int32 a or b is.
    using ints = zeros([2, 2], { dtype: 'int32', device: 'cpu' });
    expect(await errorOf(() => ops.matmul(a, b, { out: ints as never }))).toMatchObject({
      code: 'ERR_SAEKIT_DTYPE',
      message: 'Expected a float32 tensor of shape [2, 2] for options.out but received int32 [2, 2]',
    });
    for (const out of [sq, id]) {
      expect(await errorOf(() => ops.matmul(sq, id, { out }))).toMatchObject({
        code: 'ERR_SAEKIT_ARG',
        message: 'Expected a tensor other than a and b for options.out but received a Tensor',
      });
    }
  });
});

describe('SparseAutoencoder defaults and dispose', () => {
  it("adam()'s default lr is 2e-4 / sqrt(numLatents / 2^14) (odd numLatents), as its JSDoc says", () => {
    const next = lcg((Date.now() >>> 4) % 100_000);
    for (let trial = 0; trial < 4; trial++) {
      const numLatents = 1 + 2 * Math.floor(next() * 3000);
      using sae = SparseAutoencoder.create({ dIn: 3, numLatents, k: 1, seed: trial, device: 'cpu' });
      using opt = sae.adam();
      expect(opt.lr).toBeCloseTo(2e-4 * Math.sqrt(16384 / numLatents), 15);
    }
  });

  it('deadMask() counts a latent dead past 10,000,000 tokens by default (the same as deadMask(1e7))', async () => {
    const next = lcg((Date.now() >>> 5) % 100_000);
    const L = 23;
    using sae = SparseAutoencoder.create({ dIn: 3, numLatents: L, k: 1, seed: 3, device: 'cpu' });
    const counts = Float64Array.from({ length: L }, () => Math.floor(next() * 2e7));
    counts[0] = 1e7;
    counts[1] = 1e7 + 1;
    counts[2] = 1e6 + 1;
    sae.setTokensSinceFired(counts);
    const want = Array.from(counts, (c) => (c > 1e7 ? 1 : 0));
    expect(Array.from(await sae.deadMask())).toEqual(want);
    expect(Array.from(await sae.deadMask(1e7))).toEqual(want);
  });

  it("dispose() frees the SAE's optimizers too: their state, prefetch and step are ERR_SAEKIT_DISPOSED", async () => {
    const sae = SparseAutoencoder.create({ dIn: 3, numLatents: 5, k: 2, seed: 1, device: 'cpu' });
    const opt = sae.adam();
    sae.dispose();
    await expect(opt.state()).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED', message: expect.stringMatching(/optimizer was disposed/) });
    expect(await errorOf(() => opt.prefetch(new Float32Array(6)))).toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
    await expect(opt.step(new Float32Array([1, 2, 3, 4, 5, 7]))).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
  });
});

describe('EncodeBatcher queue', () => {
  const [dIn, L, k] = [11, 37, 3];
  const rowsOf = (n: number, next: () => number) => Float32Array.from({ length: n * dIn }, () => 2 * next() - 1);
  const same = (a: SparseCodes, b: SparseCodes) => {
    expect(Array.from(a.indices)).toEqual(Array.from(b.indices));
    for (let i = 0; i < a.values.length; i++) expect(Math.abs(a.values[i]! - b.values[i]!)).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(b.values[i]!)));
  };

  it('maxRows defaults to 4096: 4096 waiting rows go as one batch, one more row makes another', async () => {
    const next = lcg((Date.now() >>> 6) % 100_000);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 5, device: 'cpu' });
    const b = new EncodeBatcher(sae);
    expect(b.maxRows).toBe(4096);
    // The first request goes alone (the batcher is idle); the rest wait for it.
    const sizes = [1, 2048, 2047, 1, 1];
    const xs = sizes.map((n) => rowsOf(n, next));
    const got = await Promise.all(xs.map((x) => b.encode(x)));
    expect(b.batches).toBe(3); // [1], [2048 + 2047 + 1 = 4096], [1]
    same(got[4]!, await sae.encode(xs[4]!));
  });

  it("a request is copied when encode() is called: the caller may reuse x at once, while the request waits", async () => {
    const next = lcg((Date.now() >>> 7) % 100_000);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 6, device: 'cpu' });
    using b = new EncodeBatcher(sae);
    const x0 = rowsOf(3, next);
    const x1 = rowsOf(5, next);
    const orig = x1.slice();
    const p = [b.encode(x0), b.encode(x1)];
    x1.fill(0.5); // reused by the caller while the second request waits for the first
    const [, got] = await Promise.all(p);
    same(got!, await sae.encode(orig));
  });

  it('dispose() drops the waiting requests: they are never encoded (one batch in all)', async () => {
    const next = lcg((Date.now() >>> 8) % 100_000);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 8, device: 'cpu' });
    const b = new EncodeBatcher(sae);
    const pending = [2, 1, 4, 3].map((n) => b.encode(rowsOf(n, next)).then((c) => c, (e: unknown) => e));
    b.dispose();
    const settled = await Promise.all(pending);
    expect(settled.slice(1).every((e) => (e as { code?: string }).code === 'ERR_SAEKIT_DISPOSED')).toBe(true);
    await new Promise((r) => setTimeout(r, 300));
    expect(b.batches).toBe(1);
  });
});

describe('paths with a NUL character', () => {
  it('writeFileAtomic and readNpy refuse them up front, naming path and what it must be (not a temporary name)', async () => {
    const { readNpy, writeFileAtomic } = await import('../lib/io/index.js');
    for (const f of [() => writeFileAtomic('/tmp/saekit-a\0b', 'x'), () => readNpy('/tmp/saekit-a\0b.npy')]) {
      expect(await errorOf(f)).toMatchObject({
        code: 'ERR_SAEKIT_ARG',
        message: expect.stringMatching(/^Expected a non-empty file path string for path but received '\/tmp\/saekit-a\0b/),
      });
    }
  });
});

describe('save() and writeSaeFiles() with a NUL in the folder path', () => {
  it("refuse it up front naming dir and 'a folder path' (it failed late, in Node's words about 'path')", async () => {
    const { writeSaeFiles } = await import('../lib/io/index.js');
    using sae = SparseAutoencoder.create({ dIn: 3, numLatents: 5, k: 2, seed: 1, device: 'cpu' });
    const w = await sae.weights();
    const cfg = { architecture: 'topk' as const, dIn: 3, numLatents: 5, k: 2, applyBDecToInput: true };
    for (const f of [() => sae.save('/tmp/saekit-x\0y'), () => writeSaeFiles('/tmp/saekit-x\0y', cfg, w)]) {
      expect(await errorOf(f)).toMatchObject({
        code: 'ERR_SAEKIT_ARG',
        message: expect.stringMatching(/^Expected a folder path for dir but received '\/tmp\/saekit-x\0y' \(string\)$/),
      });
    }
  });
});

describe('runSliced', () => {
  it("an abort seen after a pause closes the generator (its finally block runs) and rejects with the signal's reason", async () => {
    const { runSliced } = await import('../lib/slices.js');
    let closed = false;
    let steps = 0;
    function* work(): Generator<number, string> {
      try {
        for (;;) {
          const t0 = performance.now();
          while (performance.now() - t0 < 3); // ~3 ms of work a step: a pause comes within a few steps
          steps++;
          yield 1 << 17;
        }
      } finally {
        closed = true;
      }
    }
    const ac = new AbortController();
    const reason = new Error('stop here');
    ac.abort(reason);
    await expect(runSliced(work(), ac.signal)).rejects.toBe(reason);
    expect(steps).toBeGreaterThan(0);
    expect(closed).toBe(true);
  });
});

describe('forBlocks', () => {
  it('hands its body every index of [0, n) exactly once, in order, in blocks of at most 2^16 (odd n, and n around a block)', async () => {
    const { forBlocks } = await import('../lib/slices.js');
    const next = lcg((Date.now() >>> 9) % 100_000);
    const sizes = [0, 1, 2, 65535, 65536, 65537, 2 * 65536 + 1, 1 + 2 * Math.floor(next() * 100_000)];
    for (const n of sizes) {
      const seen = new Uint8Array(n);
      let last = 0;
      await forBlocks(n, (i0, i1) => {
        expect(i0).toBe(last);
        expect(i1 - i0).toBeGreaterThan(0);
        expect(i1 - i0).toBeLessThanOrEqual(65536);
        for (let i = i0; i < i1; i++) seen[i]++;
        last = i1;
      });
      expect(last, `n ${n}`).toBe(n);
      expect(seen.every((c) => c === 1), `n ${n}`).toBe(true);
    }
  });
});

describe('decode() and codes of another SAE', () => {
  it('codes.numLatents other than the SAE\'s is ERR_SAEKIT_SHAPE naming codes.numLatents and the expected count, even when every index is in range', async () => {
    const next = lcg((Date.now() >>> 10) % 100_000);
    const [dIn, L, k] = [7, 19, 3];
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 2, device: 'cpu' });
    const codes = await sae.encode(Float32Array.from({ length: 5 * dIn }, () => 2 * next() - 1));
    expect((await sae.decode(codes)).length).toBe(5 * dIn);
    for (const other of [L + 1, L - 1, 2 * L]) {
      expect(await errorOf(() => sae.decode({ ...codes, numLatents: other }))).toMatchObject({
        code: 'ERR_SAEKIT_SHAPE',
        message: `Expected ${L} for codes.numLatents but received ${other} (number)`,
      });
    }
  });
});

describe('the backend namespace (consumer review)', () => {
  it('holds the public functions only, and resolveDevice takes the device (it took the name of an argument first: resolveDevice("cuda:0") was the CPU)', async () => {
    const { backend } = await import('../lib/index.js');
    expect(Object.keys(backend).sort()).toEqual(['deviceName', 'info', 'resolveDevice', 'setThreads', 'stats', 'use']);
    expect(backend.resolveDevice('cpu')).toEqual({ kind: 'cpu' });
    const cuda = backend.info().cuda;
    if (!cuda.available) {
      expect(() => backend.resolveDevice('cuda:0')).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_DEVICE', message: expect.stringMatching(/for device = 'cuda:0'/) }));
      expect(backend.resolveDevice('auto')).toEqual({ kind: 'cpu' });
      expect(backend.resolveDevice()).toEqual({ kind: 'cpu' });
    }
    expect(() => backend.resolveDevice('gpu' as never)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: "Expected one of 'auto', 'cpu', 'cuda', 'cuda:N' for device but received 'gpu' (string)" }));
    expect(backend.deviceName(backend.resolveDevice('cpu'))).toBe('cpu');
  });
});

describe('cudaDevice', () => {
  it("'cuda:N' with more than 9 digits is out of range even when its value is small ('cuda:0000000001'); up to 9 digits N is read as a number", async () => {
    const { cudaDevice } = await import('../lib/backend/index.js');
    const cuda = { available: true, reason: '', devices: ['A', 'B'] };
    expect(cudaDevice('options.device', 'cuda:000000001', cuda)).toEqual({ kind: 'cuda', index: 1 });
    for (const d of ['cuda:0000000001', 'cuda:2', `cuda:${'9'.repeat(25)}`]) {
      expect(() => cudaDevice('options.device', d, cuda)).toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_DEVICE', message: `Expected options.device between cuda:0 and cuda:1 but received '${d.length > 40 ? `${d.slice(0, 40)}...` : d}'` }),
      );
    }
  });
});

describe('checkedNumel', () => {
  it("counts the bytes too: a shape whose elements fit in 2^53 but whose bytes do not is 'too large'", async () => {
    const { checkedNumel } = await import('../lib/io/common.js');
    for (const [itemSize, d] of [[1, 3], [2, 1137], [4, 1], [4, 999], [8, 7], [8, 65537]] as const) {
      // The largest first dimension whose bytes stay at most 2^53 - 1 (exact, in bigint), and one past it.
      const ok = Number((2n ** 53n - 1n) / BigInt(itemSize) / BigInt(d));
      expect(checkedNumel([ok, d], itemSize)).toBe(ok * d);
      expect(checkedNumel([ok + 1, d], itemSize)).toBe(`shape [${ok + 1}, ${d}] is too large`);
      expect(checkedNumel([ok + 1, d, 0], itemSize)).toBe(`shape [${ok + 1}, ${d}, 0] is too large`);
      expect(checkedNumel([0, ok + 1, d], itemSize)).toBe(0);
    }
  });
});

describe("an asynchronous native failure's stack", () => {
  it("points at the caller's line (this file), not at the queue", async () => {
    const dIn = 5;
    using sae = SparseAutoencoder.create({ dIn, numLatents: 9, k: 2, seed: 4, device: 'cpu' });
    // Finite inputs whose pre-activations overflow float32: found by the encoder, on the backend's threads.
    const x = new Float32Array(2 * dIn).fill(3e38);
    // A plain function that returns the Promise (no await: V8's async stack frames cannot name it).
    function encodeFromHere(): Promise<unknown> {
      return sae.encode(x);
    }
    const err = (await encodeFromHere().then(
      () => undefined,
      (e: unknown) => e,
    )) as Error & { code: string };
    expect(err).toMatchObject({ name: 'SaekitError', code: 'ERR_SAEKIT_NONFINITE' });
    expect(err.stack).toMatch(/^SaekitError: Expected codes within float32's range/);
    expect(err.stack).toMatch(/\n\s+at encodeFromHere \(.*core-api\.test\.ts:\d+:\d+\)/);
  });
});

describe('EncodeBatcher.batches', () => {
  it('counts batches encoded, not batches that failed (requests still waiting when the SAE is disposed)', async () => {
    const next = lcg((Date.now() >>> 12) % 100_000);
    const dIn = 9;
    const sae = SparseAutoencoder.create({ dIn, numLatents: 31, k: 3, seed: 12, device: 'cpu' });
    const b = new EncodeBatcher(sae);
    const rows = (n: number) => Float32Array.from({ length: n * dIn }, () => 2 * next() - 1);
    const p = [b.encode(rows(3)), b.encode(rows(2)), b.encode(rows(5))].map((q) => q.then(() => 'ok', (e: { code: string }) => e.code));
    sae.dispose(); // the first request's encode is queued; the other two wait for it
    const settled = await Promise.all(p);
    expect(settled.slice(1)).toEqual(['ERR_SAEKIT_DISPOSED', 'ERR_SAEKIT_DISPOSED']);
    expect(b.batches).toBe(settled[0] === 'ok' ? 1 : 0);
  });
});

describe('fromNative', () => {
  it("keeps an ERR_SAEKIT_* code and the row; any other error (Node's ERR_* codes included) becomes ERR_SAEKIT_NATIVE with its message", async () => {
    const { fromNative, SaekitError } = await import('../lib/errors.js');
    const shape = fromNative(Object.assign(new Error('bad rows'), { code: 'ERR_SAEKIT_SHAPE', row: 3 }));
    expect(shape).toBeInstanceOf(SaekitError);
    expect(shape).toMatchObject({ code: 'ERR_SAEKIT_SHAPE', message: 'bad rows', row: 3 });
    for (const code of ['ERR_INVALID_ARG_TYPE', 'ERR_OUT_OF_RANGE', 'ENOMEM', 7, undefined]) {
      const e = fromNative(Object.assign(new TypeError(`m ${String(code)}`), { code }));
      expect(e).toBeInstanceOf(SaekitError);
      expect(e).toMatchObject({ code: 'ERR_SAEKIT_NATIVE', message: `m ${String(code)}` });
      expect('row' in e).toBe(false);
    }
    expect(fromNative('a string')).toMatchObject({ code: 'ERR_SAEKIT_NATIVE', message: 'a string' });
  });
});

describe('device names', () => {
  it("anything but 'auto', 'cpu', 'cuda' or 'cuda:' and digits is ERR_SAEKIT_ARG naming the option, before any CUDA state is read; use() keeps the default", async () => {
    const { resolveDevice, use } = await import('../lib/backend/index.js');
    const bad: unknown[] = ['cuda:0x', 'cuda:1.5', 'cuda:1 ', ' cuda', 'xcuda', 'my-cuda:0', 'cuda:0\n', 'cuda:+1', 'cuda:0:1', 'cuda:', 'Cuda', ['cuda'], ['cuda:0'], new String('cuda'), { toString: () => 'cuda' }, 0, null];
    for (const d of bad) {
      expect(() => resolveDevice('options.device', d), String(d)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/^Expected one of 'auto', 'cpu', 'cuda', 'cuda:N' for options\.device but received/) }));
      expect(() => use(d as 'cpu'), String(d)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG' }));
    }
    // undefined is "the default" to resolveDevice, never a default to store.
    expect(() => use(undefined as unknown as 'cpu')).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG' }));
    expect(use('auto')).toBe('auto');
    expect(resolveDevice('options.device', 'cpu')).toEqual({ kind: 'cpu' });
  });
});
