/**
 * Wrong types and sizes fed to every exported function: only clean, coded errors, never a crash
 * (a crash would kill this test process and fail the file).
 */
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import * as saekit from '../lib/index.js';
import { native } from '../lib/native/index.js';
import { bf16ToNumber, f16ToNumber, randomHalfBits } from './helpers/data-fixtures.js';
import { lcg, randomMatrix, referenceMatmul } from './helpers/reference.js';

const CODES = new Set([
  'ERR_SAEKIT_ARG',
  'ERR_SAEKIT_SHAPE',
  'ERR_SAEKIT_DTYPE',
  'ERR_SAEKIT_DISPOSED',
  'ERR_SAEKIT_DEVICE',
  'ERR_SAEKIT_MEMORY',
]);

function junk(): unknown[] {
  const disposed = saekit.zeros([2]);
  disposed.dispose();
  return [
    undefined,
    null,
    0,
    -1,
    1.5,
    NaN,
    Infinity,
    2 ** 53,
    -(2 ** 31),
    '',
    'float32',
    'cpu',
    true,
    {},
    [],
    [-1],
    [1.5],
    [2 ** 40, 2 ** 40],
    [2 ** 36],
    [1, 2, 3, 4, 5, 6, 7, 8, 9],
    ['2'],
    Symbol('s'),
    () => 1,
    10n,
    -1n,
    new Float32Array(3),
    new Uint16Array(2),
    new Int32Array(1),
    new Float64Array(2),
    new Uint8Array(4),
    new ArrayBuffer(8),
    disposed,
    { shape: [2], dtype: 'float32' },
    Object.create(null),
  ];
}

async function expectCleanError(fn: () => unknown, label: string): Promise<void> {
  try {
    const r = fn();
    if (r instanceof Promise) await r;
  } catch (e) {
    expect(e, label).toBeInstanceOf(saekit.SaekitError);
    expect(CODES.has((e as saekit.SaekitError).code), `${label}: ${(e as Error).message}`).toBe(true);
    expect((e as Error).message.length, label).toBeGreaterThan(10);
  }
}

/** A raw native function's error (an Error with a code; the API wraps it in a SaekitError). */
async function expectCodedError(fn: () => Promise<unknown>, code: string, message: RegExp): Promise<void> {
  let err: unknown;
  try {
    await fn();
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${code}`).toBeInstanceOf(Error);
  expect((err as { code?: string }).code, (err as Error).message).toBe(code);
  expect((err as Error).message).toMatch(message);
}

describe('fuzzing the public API', () => {
  it('tensor, zeros, randn, rand, matmul, setThreads, Tensor.to only throw coded SaekitErrors', async () => {
    const values = junk();
    using good = saekit.tensor([[1, 2], [3, 4]]);
    const fns: [string, (x: unknown, y: unknown) => unknown][] = [
      ['tensor(x)', (x) => saekit.tensor(x as never)],
      ['tensor(x, y)', (x, y) => saekit.tensor(x as never, y as never)],
      ['tensor(f32, [n], y)', (_x, y) => saekit.tensor(new Float32Array(2), [2], y as never)],
      ['zeros(x, y)', (x, y) => saekit.zeros(x as never, y as never)],
      ['randn(x, y)', (x, y) => saekit.randn(x as never, y as never)],
      ['rand([2], {seed: x, dtype: y})', (x, y) => saekit.rand([2], { seed: x as never, dtype: y as never })],
      ['randn([2], {stream: x})', (x) => saekit.randn([2], { stream: x as never })],
      ['matmul(x, y)', (x, y) => saekit.ops.matmul(x as never, y as never)],
      ['matmul(good, x, y)', (x, y) => saekit.ops.matmul(good, x as never, y as never)],
      ['matmul(good, good, {transA: x, transB: y})', (x, y) => saekit.ops.matmul(good, good, { transA: x as never, transB: y as never })],
      ['setThreads(x)', (x) => saekit.backend.setThreads(x as never)],
      ['good.to(x)', (x) => good.to(x as never)],
    ];
    const made: saekit.Tensor[] = [];
    for (const [label, fn] of fns) {
      for (const x of values) {
        for (const y of [undefined, values[Math.floor(Math.random() * values.length)]]) {
          await expectCleanError(() => {
            const r = fn(x, y);
            if (r instanceof saekit.Tensor) made.push(r);
            return r;
          }, `${label} with ${String(typeof x)}`);
        }
      }
    }
    made.forEach((t) => t.dispose());
    saekit.backend.setThreads(saekit.backend.info().hardwareThreads);
  });

  it('the raw native functions reject random argument lists without crashing', async () => {
    const b = native() as unknown as Record<string, (...args: unknown[]) => unknown>;
    const values = junk();
    const next = lcg(Date.now() >>> 0);
    const pick = () => values[Math.floor(next() * values.length)];
    const fns = ['fromArray', 'zeros', 'random', 'matmul', '_philox', '_gemmDirect', 'setThreads', 'info', 'stats', 'convertInto', 'anyNonFinite', 'gatherRows', 'readRows', 'readRowsToSlots', 'allocHost', 'discardHost', 'lapCreate', 'lapAppend', 'lapRun', 'lapFree', 'sparseCorrCreate', 'sparseCorrAppend', 'sparseCorrRun', 'spectrumStage', 'spectrumStageWrite', 'decoderSpectrum', 'symmetricEigenvalues'];
    let threw = 0;
    for (const name of fns) {
      for (let trial = 0; trial < 300; trial++) {
        const args = Array.from({ length: Math.floor(next() * 10) }, pick);
        try {
          const r = b[name]!(...args);
          if (r instanceof Promise) await r.catch(() => undefined);
          if (r && typeof (r as { dispose?: unknown }).dispose === 'function') (r as { dispose(): void }).dispose();
        } catch (e) {
          threw++;
          expect(e).toBeInstanceOf(Error);
        }
      }
    }
    expect(threw).toBeGreaterThan(1000);
    // The addon still works afterwards.
    saekit.backend.setThreads(saekit.backend.info().hardwareThreads);
    using t = saekit.tensor([1, 2, 3]);
    expect(Array.from(await t.toArray())).toEqual([1, 2, 3]);
  });

  it('a linear assignment and a correlation store are not taken for each other, and a lap runs once', async () => {
    const b = native();
    const store = b.sparseCorrCreate(2, 2, 0, 0, 0);
    const lap = b.lapCreate(2, 2, false);
    expect(() => b.lapAppend(store as never, new Float64Array(2), 0, 'cost')).toThrow(/Expected a linear assignment from lapCreate for lap/);
    expect(() => b.sparseCorrAppend(lap as never, new Float32Array(2), new Int32Array(2), new Float32Array(2), new Int32Array(2), 1)).toThrow(/Expected a sparse correlation store/);
    expect(() => b.lapAppend(lap, new Float64Array(3), 0, 'cost')).toThrow(/whole rows of cost/);
    expect(() => b.lapAppend(lap, new Float64Array(2), 1, 'cost')).toThrow(/rowStart/);
    expect(() => b.lapRun(lap)).toThrow(/all 2 rows/);
    b.lapAppend(lap, Float64Array.of(5, 1, 1, 5), 0, 'cost');
    expect(Array.from(await b.lapRun(lap))).toEqual([1, 0]);
    expect(() => b.lapRun(lap)).toThrow(/has not run yet/);
    expect(() => b.lapCreate(2 ** 31 - 1, 2 ** 31 - 1, true)).toThrow(/at most 2\^56 entries/);
  });

  it('gatherRows copies exactly the rows asked for, and refuses a slot past src or a dst one element short', async () => {
    const b = native();
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const [d, srcRows, count, at] = [19, 13, 9, 5];
    const src = Float32Array.from({ length: srcRows * d }, () => next() * 2 - 1);
    const bits = Uint16Array.from({ length: srcRows * d }, () => Math.floor(next() * 0x7f00)); // finite bfloat16
    const slots = Uint32Array.from({ length: count + 2 }, () => Math.floor(next() * srcRows));
    slots[3] = srcRows - 1; // the last row of src
    for (const [from, dtype] of [[src, undefined], [bits, 'bfloat16']] as const) {
      const dst = new Float32Array(at + count * d).fill(-7);
      await b.gatherRows(from, slots, 1, count, dst, at, d, dtype);
      const want = new Float32Array(at + count * d).fill(-7);
      for (let j = 0; j < count; j++) {
        for (let c = 0; c < d; c++) {
          const q = slots[1 + j]! * d + c;
          want[at + j * d + c] = dtype ? new Float32Array(Uint32Array.of(bits[q]! << 16).buffer)[0]! : src[q]!;
        }
      }
      expect(Array.from(dst), `seed ${seed}, ${dtype ?? 'float32'}`).toEqual(Array.from(want));
    }
    const bad = Uint32Array.from(slots);
    bad[4] = srcRows;
    const run = (sl: Uint32Array, dst: Float32Array) => async () => b.gatherRows(src, sl, 1, count, dst, at, d);
    await expectCodedError(run(bad, new Float32Array(at + count * d)), 'ERR_SAEKIT_ARG', new RegExp(`slot ${srcRows} is past the ${srcRows} rows of src`));
    await expectCodedError(run(slots, new Float32Array(at + count * d - 1)), 'ERR_SAEKIT_SHAPE', /overflow dst of length/);
  });

  it('native methods called on foreign objects are rejected', () => {
    using t = saekit.zeros([2]);
    const NativeTensor = (native() as unknown as { NativeTensor: new () => { toArray(): unknown } }).NativeTensor;
    const empty = new NativeTensor();
    expect(() => empty.toArray()).toThrow(/disposed/);
    expect(() => native().matmul({} as never, {} as never, false, false)).toThrow(/Expected a Tensor for a/);
    expect(t.disposed).toBe(false);
    // Another kind of External (a prefetched batch) is not a correlation store: refused, not
    // misread as one (it crashed the process).
    using sae = saekit.SparseAutoencoder.create({ dIn: 4, numLatents: 8, k: 2 });
    const batch = sae.adam().prefetch(new Float32Array(8));
    const foreign = batch.take();
    const b = native() as unknown as Record<string, (...args: unknown[]) => unknown>;
    expect(() => b.sparseCorrAppend!(foreign, new Float32Array(2), new Int32Array(2), new Float32Array(2), new Int32Array(2), 1)).toThrow(/sparse correlation store/);
    expect(() => b.spectrumStageWrite!(foreign, new Float32Array(2), 0)).toThrow(/spectrum stage/);
    const store = b.sparseCorrCreate!(2, 2, 0, 0, 0);
    expect(() => b.spectrumStageWrite!(store, new Float32Array(2), 0)).toThrow(/spectrum stage/);
  });

  it('SAE and optimizer handles reject random argument lists without crashing', async () => {
    const b = native();
    const sae = b.NativeSae.create(5, 9, 2, 1n) as unknown as Record<string, (...args: unknown[]) => unknown>;
    const opt = (sae.adam as (...a: unknown[]) => Record<string, (...args: unknown[]) => unknown>)(1e-3, 0.9, 0.999, 1e-8);
    const values = [...junk(), new Float32Array(45), new Float32Array(5), new Float32Array(10), new Int32Array(4), new Float64Array(9), new Uint8Array(9), 'W_enc', 'b_dec'];
    const next = lcg(Date.now() >>> 0);
    const pick = () => values[Math.floor(next() * values.length)];
    const methods: [Record<string, (...args: unknown[]) => unknown>, string[]][] = [
      [sae, ['weights', 'encode', 'decode', 'forward', 'preActivations', 'gradients', 'sinceFired', 'setWeight', 'setSinceFired', 'adam']],
      [opt, ['step', 'state', 'setState']],
      [b.NativeSae as unknown as Record<string, (...args: unknown[]) => unknown>, ['create', 'fromWeights']],
    ];
    let threw = 0;
    for (const [obj, names] of methods) {
      for (const name of names) {
        for (let trial = 0; trial < 200; trial++) {
          const args = Array.from({ length: Math.floor(next() * 8) }, pick);
          try {
            const r = obj[name]!.apply(obj, args);
            if (r instanceof Promise) await r.catch(() => undefined);
            if (r && typeof (r as { dispose?: unknown }).dispose === 'function') (r as { dispose(): void }).dispose();
          } catch (e) {
            threw++;
            expect(e).toBeInstanceOf(Error);
          }
        }
      }
    }
    expect(threw).toBeGreaterThan(1000);
    // Non-finite hyper-parameters never reach the update.
    const x = Float32Array.from({ length: 10 }, (_, i) => i);
    for (const bad of [NaN, Infinity, -1]) {
      expect(() => opt.step!(x, bad, 0, 0)).toThrow(/lr/);
      expect(() => opt.step!(x, 1e-3, bad, 0)).toThrow(/auxkAlpha/);
    }
    // Still consistent afterwards: weights are finite, and the handle works.
    const w = (await (sae.weights as () => Promise<Record<string, Float32Array>>)()) as Record<string, Float32Array>;
    for (const n of ['W_enc', 'b_enc', 'W_dec', 'b_dec']) expect(w[n]!.every(Number.isFinite), n).toBe(true);
    (sae.dispose as () => void)();
  });
});

/** The code and message `fn` throws ([undefined, 'no error'] when it returns). */
function codeOf(fn: () => unknown): [string | undefined, string] {
  try {
    fn();
  } catch (e) {
    return [(e as { code?: string }).code, (e as Error).message];
  }
  return [undefined, 'no error'];
}

/** codeOf for a call that may reject. */
async function acode(fn: () => unknown): Promise<[string | undefined, string]> {
  try {
    await fn();
  } catch (e) {
    return [(e as { code?: string }).code, (e as Error).message];
  }
  return [undefined, 'no error'];
}

describe('native argument checks at the edge of each bound', () => {
  // The addon is a boundary of its own (workers and the CLI call it too): each check must refuse
  // the first value past its bound with a coded error naming the argument, and accept the bound.
  // These calls go to the addon directly, below the TS checks that usually come first.
  const b = native() as unknown as Record<string, (...a: unknown[]) => unknown> & {
    NativeSae: { create: (...a: unknown[]) => { adam: (...a: unknown[]) => unknown; dispose: () => void } };
  };

  it('integers, numbers, shapes and seeds', async () => {
    // get_int: one below the lower bound and one above the upper bound.
    expect(codeOf(() => b.spectrumStage!('float64', 0))).toEqual(['ERR_SAEKIT_ARG', expect.stringMatching(/^Expected integer between 1 and \d+ for length but received 0 \(number\)$/)]);
    expect(codeOf(() => b.lapCreate!(2 ** 31, 1, false))).toEqual(['ERR_SAEKIT_ARG', 'Expected integer between 0 and 2147483647 for rows but received 2147483648 (number)']);
    expect(codeOf(() => b.spectrumStage!('float64', 1))[0]).toBeUndefined();
    // get_double: just above the upper bound (lr at most 1e6).
    const sae = b.NativeSae.create(3, 5, 2, 1);
    const next = 1e6 + 2 ** -33; // the double after 1e6
    expect(codeOf(() => sae.adam(next, 0.9, 0.999, 1e-8))).toEqual(['ERR_SAEKIT_ARG', 'Expected finite number between 0 and 1000000 for lr but received 1000000.0000000001 (number)']);
    expect(codeOf(() => sae.adam(1e6, 0.9, 0.999, 1e-8))[0]).toBeUndefined();
    sae.dispose();
    // get_shape: at most 8 dimensions, each at most 2^50; get_u64: at most 2^53 - 1 as a number.
    expect(codeOf(() => b.random!(new Array(9).fill(1), 'float32', 'uniform', 1, 0))).toEqual(['ERR_SAEKIT_SHAPE', 'Expected at most 8 dimensions for shape but received an array of length 9']);
    expect(codeOf(() => b.random!([2 ** 50 + 1], 'float32', 'uniform', 1, 0))).toEqual(['ERR_SAEKIT_SHAPE', 'Expected non-negative integer at most 2^50 for shape[0] but received 1125899906842625 (number)']);
    expect(codeOf(() => b.random!([1], 'float32', 'uniform', 2 ** 53, 0))).toEqual(['ERR_SAEKIT_ARG', 'Expected non-negative safe integer or bigint below 2^64 for seed but received 9007199254740992 (number)']);
    const ok = (await b.random!(new Array(8).fill(1), 'float32', 'uniform', 2 ** 53 - 1, 0)) as { dispose?: () => void };
    ok?.dispose?.();
    // Element counts: fewer than 2^60, as the message says; exactly 2^60 is refused as a shape,
    // not tried as an allocation.
    for (const shape of [[2 ** 50, 1024], [2 ** 30, 2 ** 30], [2 ** 50, 1025]])
      expect(codeOf(() => b.random!(shape, 'float32', 'uniform', 1, 0)), `shape ${shape}`).toEqual(['ERR_SAEKIT_SHAPE', `Expected fewer than 2^60 elements for shape but received shape [${shape.join(', ')}]`]);
    // anyNonFinite: end is at least start.
    expect(codeOf(() => b.anyNonFinite!(new Float32Array(4), 2, 1))).toEqual(['ERR_SAEKIT_ARG', 'Expected integer between 2 and 4 for end but received 1 (number)']);
  });

  it('integers are whole, a bigint seed or stream stops at 2^64 - 1, and an unknown dtype is a dtype error', async () => {
    // get_int refuses a fraction rather than truncating it to a valid count.
    expect(codeOf(() => b.lapCreate!(2.5, 1, false))).toEqual(['ERR_SAEKIT_ARG', 'Expected integer between 0 and 2147483647 for rows but received 2.5 (number)']);
    // get_u64 from a bigint: 2^64 and up, and negatives, do not fit (they would wrap); 2^64 - 1 does.
    const bigMsg = (name: string) => `Expected non-negative safe integer or bigint below 2^64 for ${name} but received a bigint`;
    for (const big of [2n ** 64n, 2n ** 64n + 7n, -1n]) {
      expect(codeOf(() => b.random!([2], 'float32', 'uniform', big, 0n)), String(big)).toEqual(['ERR_SAEKIT_ARG', bigMsg('seed')]);
      expect(codeOf(() => b.random!([2], 'float32', 'uniform', 0n, big)), String(big)).toEqual(['ERR_SAEKIT_ARG', bigMsg('stream')]);
    }
    const top = (await b.random!([2], 'float32', 'uniform', 2n ** 64n - 1n, 2n ** 64n - 1n)) as { dispose: () => void };
    top.dispose();
    // get_dtype: a name outside the four is ERR_SAEKIT_DTYPE (not a generic argument error).
    expect(codeOf(() => b.zeros!([2], 'float64'))).toEqual(['ERR_SAEKIT_DTYPE', "Expected one of: float32, bfloat16, float16, int32 for dtype but received 'float64' (string)"]);
    expect(codeOf(() => b.fromArray!(new Float32Array(2), [2], 'int8', 'float32'))).toEqual(['ERR_SAEKIT_DTYPE', "Expected one of: float32, bfloat16, float16, int32 for rawDtype but received 'int8' (string)"]);
  });

  it('SAE and optimizer handles: each length, index, count and batch one past its bound is refused, naming it', async () => {
    const B = native();
    const [D, M] = [3, 5];
    const sae = B.NativeSae.create(D, M, 2, 1n);
    // codes.indices: latent M - 1 is the last one (M would read past W_dec).
    expect(await acode(() => sae.decode(new Float32Array(2), Int32Array.of(0, M), 1))).toEqual(['ERR_SAEKIT_ARG', `Expected codes.indices between 0 and ${M - 1} but received ${M} at position 1`]);
    expect((await sae.decode(new Float32Array(2), Int32Array.of(M - 1, 0), 1)).length).toBe(D);
    // x: no rows at all, as an array or as a tensor of shape [0, dIn].
    expect(await acode(() => sae.encode(new Float32Array(0)))).toEqual(['ERR_SAEKIT_SHAPE', `Expected a Float32Array whose length is a positive multiple of dIn = ${D} for x but received length 0`]);
    const empty = B.zeros([0, D], 'float32');
    expect(await acode(() => sae.encode(empty))).toEqual(['ERR_SAEKIT_SHAPE', `Expected a tensor of shape [rows >= 1, ${D}] for x but received shape [0, ${D}]`]);
    empty.dispose();
    // Lengths that must equal numLatents or the weight's size: one more is refused too.
    expect(codeOf(() => sae.setWeight('b_enc', new Float32Array(M + 1)))).toEqual(['ERR_SAEKIT_SHAPE', `Expected a Float32Array of length ${M} for b_enc but received a typed array of length ${M + 1}`]);
    expect(await acode(() => sae.gradients(new Float32Array(D), new Uint8Array(M + 1), 0))).toEqual(['ERR_SAEKIT_SHAPE', `Expected a Uint8Array of length numLatents = ${M} for auxk.deadMask but received a typed array of length ${M + 1}`]);
    const w = (n: number) => new Float32Array(n);
    expect(codeOf(() => B.NativeSae.fromWeights(w(D * M), w(M), w(M * D), w(D), D, M, 0, 'jumprelu', true, w(M + 1)))).toEqual(['ERR_SAEKIT_SHAPE', `Expected a Float32Array of length numLatents = ${M} for threshold but received a typed array of length ${M + 1}`]);
    // Counts are non-negative; beta1 stays below 1 (1 - beta1^t would be 0 in the bias correction).
    expect(codeOf(() => sae.setSinceFired(Float64Array.of(0, 1, -1, 0, 0)))).toEqual(['ERR_SAEKIT_ARG', 'Expected a non-negative integer count for sinceFired[2] but received -1 (number)']);
    expect(codeOf(() => sae.setSinceFired(Float64Array.of(0, 1, 0, 2.5, 0)))).toEqual(['ERR_SAEKIT_ARG', 'Expected a non-negative integer count for sinceFired[3] but received 2.5 (number)']);
    expect(codeOf(() => sae.adam(1e-3, 1, 0.999, 1e-8))).toEqual(['ERR_SAEKIT_ARG', 'Expected finite number between 0 and 0.99999 for beta1 but received 1 (number)']);
    // A prefetched batch: only for an SAE of its own dIn, and used once.
    const opt = sae.adam(1e-3, 0.9, 0.999, 1e-8);
    const wide = B.NativeSae.create(D + 1, M, 2, 1n);
    const foreign = wide.adam(1e-3, 0.9, 0.999, 1e-8).prefetch(new Float32Array(2 * (D + 1)));
    expect(await acode(() => opt.step(foreign, 1e-3, 0, 1e6))).toEqual(['ERR_SAEKIT_SHAPE', `Expected a batch of dIn = ${D} for x but the prefetched batch has dIn = ${D + 1}`]);
    const batch = opt.prefetch(Float32Array.from({ length: 2 * D }, (_, i) => i / 7 - 0.3));
    await opt.step(batch, 1e-3, 0, 1e6);
    expect(await acode(() => opt.step(batch, 1e-3, 0, 1e6))).toEqual(['ERR_SAEKIT_DISPOSED', 'the prefetched batch passed as x was already used or disposed']);
    // Moments in pieces add up to the slab exactly (2 D M + M + D floats), not more.
    const n = 2 * D * M + M + D;
    expect(codeOf(() => opt.setState([w(20), w(n - 19)], w(n), 0))).toEqual(['ERR_SAEKIT_SHAPE', `Expected pieces of state.m of ${n} floats in all but received ${n + 1}`]);
    wide.dispose();
    sae.dispose();
  });

  it('lengths that must match: codes.values and codes.indices, data and shape', async () => {
    const sae = b.NativeSae.create(3, 5, 2, 1) as unknown as { decode: (...a: unknown[]) => Promise<Float32Array>; dispose: () => void };
    const msg = (nv: number, ni: number) => `Expected codes.values and codes.indices of equal length, a positive multiple of codes.rows = 2, but received ${nv} and ${ni}`;
    expect(await acode(() => sae.decode(new Float32Array(4), new Int32Array(2), 2))).toEqual(['ERR_SAEKIT_SHAPE', msg(4, 2)]);
    expect(await acode(() => sae.decode(new Float32Array(5), new Int32Array(5), 2))).toEqual(['ERR_SAEKIT_SHAPE', msg(5, 5)]);
    expect((await sae.decode(new Float32Array(4), new Int32Array(4), 2)).length).toBe(6);
    sae.dispose();
    for (const n of [5, 7])
      expect(await acode(() => b.fromArray!(new Float32Array(n), [2, 3], 'float32', 'float32'))).toEqual(['ERR_SAEKIT_SHAPE', `Expected data of length 6 for shape [2, 3] but received length ${n}`]);
  });

  it('numbers in messages print as JavaScript prints them (String(x)), at every magnitude (fresh random doubles)', () => {
    const sae = b.NativeSae.create(3, 5, 2, 1);
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    // lr must lie in [0, 1e6]: a value outside is refused and printed in the message.
    const values = [1e21, 1e21 - 65536, 123456789012345680000, 2 ** 53 + 2, 1e6 + 1, 1.5e300, Number.MAX_VALUE, -1e-7, -1e-6, -0.000001234, -5e-324, -1, -0.5, -123.456];
    for (let i = 0; i < 300; i++) {
      const mag = 10 ** (Math.floor(next() * 40) - 12);
      const v = (next() < 0.5 ? -1 : 1) * mag * (1 + next());
      values.push(v > 1e6 || v < 0 ? v : -v);
      values.push(-Math.round(next() * 10 ** Math.floor(next() * 22))); // integers, 0 to 1e21
    }
    for (const v of values) {
      if (v >= 0 && v <= 1e6) continue; // Math.round can give -0
      const [code, message] = codeOf(() => sae.adam(v, 0.9, 0.999, 1e-8));
      expect(code, `seed ${seed}: ${v}`).toBe('ERR_SAEKIT_ARG');
      expect(message, `seed ${seed}`).toBe(`Expected finite number between 0 and 1000000 for lr but received ${String(v)} (number)`);
    }
    sae.dispose();
  });

  it('chunked inputs: a chunk one value or one row too long is refused, not written past the buffer', () => {
    const stage = b.spectrumStage!('float64', 4);
    expect(codeOf(() => b.spectrumStageWrite!(stage, new Float64Array(5), 0))).toEqual(['ERR_SAEKIT_SHAPE', 'Expected src of at most 4 values at offset 0 but received length 5']);
    b.spectrumStageWrite!(stage, new Float64Array(2), 0);
    expect(codeOf(() => b.spectrumStageWrite!(stage, new Float64Array(3), 2))).toEqual(['ERR_SAEKIT_SHAPE', 'Expected src of at most 2 values at offset 2 but received length 3']);
    const lap = b.lapCreate!(3, 2, false);
    expect(codeOf(() => b.lapAppend!(lap, new Float64Array(8), 0, 'cost'))).toEqual(['ERR_SAEKIT_SHAPE', expect.stringMatching(/^Expected a chunk of whole rows of cost \(a multiple of cols = 2, at most 6 values\) but received length 8$/)]);
    b.lapAppend!(lap, new Float64Array(4), 0, 'cost');
    expect(codeOf(() => b.lapAppend!(lap, new Float64Array(4), 2, 'cost'))[0]).toBe('ERR_SAEKIT_SHAPE');
    b.lapFree!(lap);
    const store = b.sparseCorrCreate!(3, 3, 0, 0, 0);
    expect(codeOf(() => b.sparseCorrAppend!(store, new Float32Array(7), new Int32Array(7), new Float32Array(4), new Int32Array(4), 2))).toEqual(['ERR_SAEKIT_SHAPE', 'Expected codesA.values of a length divisible by rows = 2 but received 7']);
    b.sparseCorrFree!(store);
  });
  it('random: int32 and an unknown kind are refused by the addon itself; the bounds beside them are accepted', async () => {
    // lib/ refuses both first; the addon must too (workers and the CLI reach it directly).
    expect(codeOf(() => b.random!([3], 'int32', 'uniform', 1n, 0n))).toEqual(['ERR_SAEKIT_DTYPE', "Expected one of: float32, bfloat16, float16 for dtype but received 'int32' (string)"]);
    expect(codeOf(() => b.random!([3], 'float32', 'gaussian', 1n, 0n))).toEqual(['ERR_SAEKIT_ARG', "Expected one of: uniform, normal for kind but received 'gaussian' (string)"]);
    for (const [dtype, kind] of [['float16', 'normal'], ['bfloat16', 'uniform']] as const) {
      const t = b.random!([3], dtype, kind, 1n, 0n) as { dtype: string; dispose: () => void };
      expect(t.dtype).toBe(dtype);
      t.dispose();
    }
  });

  it('lapAppend on a cost with no columns: any value is refused, and the solve leaves every row unassigned', async () => {
    const lap = b.lapCreate!(2, 0, false);
    expect(codeOf(() => b.lapAppend!(lap, new Float64Array(1), 0, 'cost'))).toEqual(['ERR_SAEKIT_SHAPE', 'Expected a chunk of whole rows of cost (a multiple of cols = 0, at most 0 values) but received length 1']);
    expect(b.lapAppend!(lap, new Float64Array(0), 0, 'cost')).toBe(0);
    expect(Array.from((await b.lapRun!(lap)) as Int32Array)).toEqual([-1, -1]);
  });

  it('_philox: a counter or key of the wrong length or type is refused, not read past its end', () => {
    const ok = b._philox!(new Uint32Array(4), new Uint32Array(2)) as Uint32Array;
    expect(ok.length).toBe(4);
    for (const [counter, key, name, len] of [
      [new Uint32Array(3), new Uint32Array(2), 'counter', 4],
      [new Int32Array(4), new Uint32Array(2), 'counter', 4],
      [new Uint32Array(4), new Uint32Array(1), 'key', 2],
      [new Uint32Array(4), [0, 0], 'key', 2],
    ] as const) {
      const [code, message] = codeOf(() => b._philox!(counter, key));
      expect(code, `${name} ${String(counter)}`).toBe('ERR_SAEKIT_ARG');
      expect(message).toMatch(new RegExp(`^Expected a Uint32Array of length ${len} for ${name} but received `));
    }
  });

  it('matmul: inner dimensions, the shape of out and out aliasing a or b are checked by the addon itself', async () => {
    type T = { shape: number[]; toArray: () => Promise<Float32Array>; dispose: () => void };
    const next = lcg(0x6d61746d);
    const data: Record<string, Float32Array> = {};
    const t = (name: string, rows: number, cols: number): T => {
      data[name] = randomMatrix(rows, cols, next);
      return b.fromArray!(data[name], [rows, cols], 'float32', 'float32') as T;
    };
    // a [3, 5] and b [5, 7]: op(a) op(b) is [3, 7]; with transA, a^T is [5, 3] and no longer fits b.
    const a = t('a', 3, 5), bb = t('b', 5, 7), b6 = t('b6', 6, 7);
    expect(codeOf(() => b.matmul!(a, b6, false, false))).toEqual(['ERR_SAEKIT_SHAPE', 'matmul: inner dimensions differ: op(a) is [3, 5] and op(b) is [6, 7] (a [3, 5], b [6, 7])']);
    expect(codeOf(() => b.matmul!(a, bb, true, false))).toEqual(['ERR_SAEKIT_SHAPE', 'matmul: inner dimensions differ: op(a) is [5, 3] and op(b) is [5, 7] (a [3, 5] transposed, b [5, 7])']);
    expect(codeOf(() => b.matmul!(a, bb, false, true))).toEqual(['ERR_SAEKIT_SHAPE', 'matmul: inner dimensions differ: op(a) is [3, 5] and op(b) is [7, 5] (a [3, 5], b [5, 7] transposed)']);
    // out of 21 elements but shape [7, 3], not [3, 7]
    const wrong = t('wrong', 7, 3);
    expect(codeOf(() => b.matmul!(a, bb, false, false, wrong))).toEqual(['ERR_SAEKIT_SHAPE', 'Expected a float32 tensor of shape [3, 7] for out but received float32 [7, 3]']);
    // square a and b [5, 5]: out may not be either of them (written while they are read)
    const s = t('s', 5, 5), s2 = t('s2', 5, 5);
    for (const out of [s, s2]) {
      expect(codeOf(() => b.matmul!(s, s2, false, false, out))).toEqual(['ERR_SAEKIT_ARG', 'Expected out to be a different tensor from a and b (it is written while they are read)']);
    }
    expect(Array.from(await s.toArray()), 'refused calls leave a untouched').toEqual(Array.from(data.s!));
    // The shape at the bound is accepted and written with the product.
    const out = t('out', 3, 7);
    await b.matmul!(a, bb, false, false, out);
    const { C, bound } = referenceMatmul(data.a!, data.b!, 3, 7, 5, false, false);
    const got = await out.toArray();
    for (let i = 0; i < 21; i++) expect(Math.abs(got[i]! - C[i]!), `out[${i}]`).toBeLessThanOrEqual(bound[i]!);
    for (const x of [a, bb, b6, wrong, s, s2, out]) x.dispose();
  });
  it('_gemmDirect: every transpose pair at odd M, N, K matches a float64 product, and B is checked as K x N', () => {
    const [M, N, K] = [3, 7, 5];
    const next = lcg(0x67656d6d);
    const A = randomMatrix(M, K, next), B = randomMatrix(K, N, next);
    const blas = saekit.backend.info().blas.linked;
    for (const impl of blas ? ['builtin', 'blas'] : ['builtin']) {
      for (const [ta, tb] of [[false, false], [true, false], [false, true], [true, true]] as const) {
        const C = new Float32Array(M * N).fill(NaN);
        b._gemmDirect!(impl, ta, tb, M, N, K, A, B, C);
        // A and B read as op(A) [M, K] and op(B) [K, N] from the same values
        const { C: R, bound } = referenceMatmul(A, B, M, N, K, ta, tb);
        for (let i = 0; i < M * N; i++) expect(Math.abs(C[i]! - R[i]!), `${impl} ${ta} ${tb} C[${i}]`).toBeLessThanOrEqual(bound[i]!);
      }
    }
    // B of M * N = 21 values (not K * N = 35) is refused, naming B
    const [code, message] = codeOf(() => b._gemmDirect!('builtin', false, false, M, N, K, A, new Float32Array(M * N), new Float32Array(M * N)));
    expect(code).toBe('ERR_SAEKIT_ARG');
    expect(message).toMatch(/^Expected a Float32Array of length 35 for B but received /);
  });

  it('convertInto and anyNonFinite: a dst one longer is refused, and the range starts at start', () => {
    const src = Float32Array.of(1, -2, 3);
    expect(codeOf(() => b.convertInto!(src, 'float32', new Uint16Array(4), 'bfloat16'))).toEqual(['ERR_SAEKIT_SHAPE', 'Expected dst of length 3 (as src) but received length 4']);
    expect(codeOf(() => b.convertInto!(src, 'float32', new Uint16Array(2), 'bfloat16'))).toEqual(['ERR_SAEKIT_SHAPE', 'Expected dst of length 3 (as src) but received length 2']);
    // NaN at 0 and Infinity at 6: only ranges that hold either see one
    const a = Float32Array.of(NaN, 1, 2, 3, 4, 5, Infinity);
    for (let start = 0; start <= 7; start++) {
      for (let end = start; end <= 7; end++) {
        const want = (start === 0 && end > 0) || end === 7;
        expect(b.anyNonFinite!(a, start, end), `[${start}, ${end})`).toBe(want && end > start);
      }
    }
  });
  it('spectrum jobs: n, d, the stage length and a partly written stage are checked by the addon itself', async () => {
    const staged = (dtype: 'float32' | 'float64', length: number, values: Float32Array | Float64Array) => {
      const s = b.spectrumStage!(dtype, length);
      if (values.length) b.spectrumStageWrite!(s, values, 0);
      return s;
    };
    // decoderSpectrum: n >= 2 rows (a covariance of one row is meaningless)
    const one = staged('float32', 3, Float32Array.of(1, 2, 3));
    expect(codeOf(() => b.decoderSpectrum!(one, 1, 3, 'builtin'))).toEqual(['ERR_SAEKIT_ARG', expect.stringMatching(/^Expected integer between 2 and \d+ for n but received 1 \(number\)$/)]);
    // a stage read before every value is written would read uninitialised memory
    const part32 = staged('float32', 6, new Float32Array(4));
    expect(codeOf(() => b.decoderSpectrum!(part32, 2, 3, 'builtin'))).toEqual(['ERR_SAEKIT_SHAPE', 'Expected a fully written stage (6 values) but 4 were written']);
    const part64 = staged('float64', 4, new Float64Array(3));
    expect(codeOf(() => b.symmetricEigenvalues!(part64, 2, 'builtin'))).toEqual(['ERR_SAEKIT_SHAPE', 'Expected a fully written stage (4 values) but 3 were written']);
    // a stage of 5 values is not a 2 x 2 matrix, nor 2 rows of 3
    const five64 = staged('float64', 5, new Float64Array(5));
    expect(codeOf(() => b.symmetricEigenvalues!(five64, 2, 'builtin'))).toEqual(['ERR_SAEKIT_SHAPE', 'Expected a stage of d * d = 4 values but it holds 5']);
    const seven32 = staged('float32', 7, new Float32Array(7));
    expect(codeOf(() => b.decoderSpectrum!(seven32, 2, 3, 'builtin'))).toEqual(['ERR_SAEKIT_SHAPE', 'Expected a stage of n * d = 6 values but it holds 7']);
    // Accepted at the bounds: the symmetric part of [[2, 2], [0, 2]] is [[2, 1], [1, 2]], eigenvalues 3 and 1;
    // two rows [0, 0] and [2, 4] centre to -/+[1, 2], a rank-one covariance whose one nonzero eigenvalue is proportional to 5.
    // written in three chunks, each at the count written so far
    const full64 = b.spectrumStage!('float64', 4);
    b.spectrumStageWrite!(full64, Float64Array.of(2, 2), 0);
    b.spectrumStageWrite!(full64, Float64Array.of(0), 2);
    b.spectrumStageWrite!(full64, Float64Array.of(2), 3);
    const ev = (await b.symmetricEigenvalues!(full64, 2, 'builtin')) as Float64Array;
    expect(ev[0]).toBeCloseTo(3, 12);
    expect(ev[1]).toBeCloseTo(1, 12);
    const two = staged('float32', 4, Float32Array.of(0, 0, 2, 4));
    const dv = (await b.decoderSpectrum!(two, 2, 2, 'builtin')) as Float64Array;
    expect(dv.length).toBe(2);
    expect(dv[0]).toBeGreaterThan(0);
    expect(Math.abs(dv[1]!)).toBeLessThan(1e-12 * dv[0]!);
  });
  it('sparseCorr: nA and top are checked by the addon itself, and the top, reverse and activity arrays are sized by nA and nB', async () => {
    expect(codeOf(() => b.sparseCorrCreate!(0, 5, 0, 0, 0))).toEqual(['ERR_SAEKIT_ARG', 'Expected integer between 1 and 2147483647 for nA but received 0 (number)']);
    // nA = 2 < nB = 5, 6 tokens; A has k = 1, B has k = 2. top = 4 is above nA, below nB.
    const [nA, nB, T] = [2, 5, 6];
    const va = Float32Array.from({ length: T }, (_, t) => t + 1), ia = Int32Array.from({ length: T }, (_, t) => (t * t) % nA);
    const vb = Float32Array.from({ length: 2 * T }, (_, p) => 0.5 + ((p * 7) % 5)), ib = Int32Array.from({ length: 2 * T }, (_, p) => ((p >> 1) + (p % 2) * 2) % nB);
    const store = b.sparseCorrCreate!(nA, nB, 0, 0, 0);
    expect(b.sparseCorrAppend!(store, va, ia, vb, ib, T)).toBe(T);
    expect(codeOf(() => b.sparseCorrRun!(store, false, 0, true))).toEqual(['ERR_SAEKIT_ARG', 'Expected integer between 1 and 2147483647 for top but received 0 (number)']);
    const r = (await b.sparseCorrRun!(store, false, 4, true)) as {
      tokens: number; kTop: number; kRev: number; activeA: Float64Array; activeB: Float64Array;
      topIndex: Int32Array; topR: Float32Array; revIndex: Int32Array; revR: Float32Array;
    };
    // active counts: tokens where each feature holds a nonzero value, counted here
    const count = (n: number, idx: Int32Array, v: Float32Array) => {
      const c = new Array<number>(n).fill(0);
      idx.forEach((j, p) => { if (v[p] !== 0) c[j]! += 1; });
      return c;
    };
    expect(r.tokens).toBe(T);
    expect(Array.from(r.activeA)).toEqual(count(nA, ia, va));
    expect(Array.from(r.activeB)).toEqual(count(nB, ib, vb));
    expect([r.kTop, r.kRev]).toEqual([2, 4]);
    expect([r.topIndex.length, r.topR.length, r.revIndex.length, r.revR.length]).toEqual([nB * 2, nB * 2, nA * 4, nA * 4]);
    for (let i = 0; i < nA; i++) {
      const row = Array.from(r.revIndex.subarray(i * 4, i * 4 + 4));
      expect(new Set(row).size, `revIndex row ${i}`).toBe(4);
      expect(row.every((j) => j >= 0 && j < nB)).toBe(true);
    }
  });
});

describe('native row reads and gathers: every index one past its bound is refused, and rows land where asked', () => {
  const b = native();
  const withFile = async (values: Float32Array, body: (fd: number) => Promise<void>) => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-napi-'));
    const file = path.join(dir, 'rows.f32');
    writeFileSync(file, new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
    const fd = openSync(file, 'r');
    try {
      await body(fd);
    } finally {
      closeSync(fd);
      rmSync(dir, { recursive: true, force: true });
    }
  };

  it('readRows: dstOffset and count end at the end of dst, and a view at a byte offset is written where it lies', async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const vals = Float32Array.from({ length: 24 }, () => next() * 2 - 1);
    await withFile(vals, async (fd) => {
      const dst = new Float32Array(7).fill(-7);
      expect(await b.readRows(fd, 8, 3, 'float32', dst, 4)).toBe(false);
      expect(Array.from(dst), `seed ${seed}`).toEqual([-7, -7, -7, -7, vals[2], vals[3], vals[4]]);
      expect(codeOf(() => b.readRows(fd, 0, 4, 'float32', dst, 4))).toEqual(['ERR_SAEKIT_ARG', 'Expected integer between 0 and 3 for count but received 4 (number)']);
      expect(codeOf(() => b.readRows(fd, 0, 0, 'float32', dst, 8))).toEqual(['ERR_SAEKIT_ARG', 'Expected integer between 0 and 7 for dstOffset but received 8 (number)']);
      expect(codeOf(() => b.readRows(fd, 0, 1, 'float32', dst, -1))).toEqual(['ERR_SAEKIT_ARG', 'Expected integer between 0 and 7 for dstOffset but received -1 (number)']);
      expect(Array.from(dst), 'refused reads write nothing').toEqual([-7, -7, -7, -7, vals[2], vals[3], vals[4]]);
      // A view 5 floats into its buffer: element 1 of the view is element 6 of the buffer.
      const whole = new Float32Array(12).fill(-7);
      await b.readRows(fd, 4, 2, 'float32', whole.subarray(5, 9), 1);
      const want = new Float32Array(12).fill(-7);
      want[6] = vals[1]!;
      want[7] = vals[2]!;
      expect(Array.from(whole), `seed ${seed}`).toEqual(Array.from(want));
    });
  });

  it('readRowsToSlots: a slot past the whole rows of dst, rows past the slots, and a float32 file into 16-bit slots are refused', async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const d = 3;
    const vals = Float32Array.from({ length: 8 * d }, () => next() * 2 - 1);
    await withFile(vals, async (fd) => {
      const dst = new Float32Array(3 * d + 2).fill(-7); // 3 whole rows and 2 values more
      const slots = Uint32Array.of(2, 0, 1, 3);
      expect(await b.readRowsToSlots(fd, d * 4, 3, d, 'float32', dst, slots, 0)).toBe(false);
      const want = new Float32Array(3 * d + 2).fill(-7);
      for (let r = 0; r < 3; r++) for (let c = 0; c < d; c++) want[slots[r]! * d + c] = vals[(1 + r) * d + c]!;
      expect(Array.from(dst), `seed ${seed}`).toEqual(Array.from(want));
      expect(codeOf(() => b.readRowsToSlots(fd, 0, 1, d, 'float32', dst, slots, 3))).toEqual(['ERR_SAEKIT_ARG', 'readRowsToSlots: slot 3 is past the 3 rows of dst']);
      expect(codeOf(() => b.readRowsToSlots(fd, 0, 2, d, 'float32', dst, slots, 3))).toEqual(['ERR_SAEKIT_ARG', 'Expected integer between 0 and 1 for rows but received 2 (number)']);
      for (const dtype of ['float32', 'float64'] as const)
        expect(codeOf(() => b.readRowsToSlots(fd, 0, 1, d, dtype, new Uint16Array(3 * d), slots, 0))).toEqual(['ERR_SAEKIT_ARG', `Expected 'bfloat16' or 'float16' for a Uint16Array dst for srcDtype but received '${dtype}' (string)`]);
      expect(Array.from(dst), 'refused reads write nothing').toEqual(Array.from(want));
    });
  });

  it('gatherRows: a partial last row of src is not a row, and float16 rows are converted as float16', async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const d = 5;
    const src = Float32Array.from({ length: 3 * d + 2 }, () => next() * 2 - 1); // 3 whole rows and 2 values more
    const dst = new Float32Array(2 * d).fill(-7);
    expect(codeOf(() => b.gatherRows(src, Uint32Array.of(3), 0, 1, dst, 0, d))).toEqual(['ERR_SAEKIT_ARG', 'gatherRows: slot 3 is past the 3 rows of src']);
    await b.gatherRows(src, Uint32Array.of(2, 0), 0, 2, dst, 0, d);
    expect(Array.from(dst), `seed ${seed}`).toEqual([...src.subarray(2 * d, 3 * d), ...src.subarray(0, d)]);
    const bits = randomHalfBits(3 * d, 'float16', seed);
    await b.gatherRows(bits, Uint32Array.of(1, 2), 0, 2, dst, 0, d, 'float16');
    expect(Array.from(dst), `seed ${seed}`).toEqual(Array.from(bits.subarray(d, 3 * d), f16ToNumber));
  });

  // A batch's worth of rows (over 1 MiB out), as the mixing buffer gathers them: odd widths on
  // both sides of 1024, an odd offset into dst, each row against the dtype's definition.
  it('gatherRows of 1 MiB and more, float32, bfloat16 and float16: every row exact at odd widths and offsets, nothing written outside it', async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    for (const d of [1 + 2 * Math.floor(next() * 500), 1025 + 2 * Math.floor(next() * 1500)]) {
      const srcRows = 97;
      const count = Math.ceil((1 << 20) / (4 * d)) + Math.floor(next() * 40);
      const at = 1 + Math.floor(next() * 31);
      const slots = Uint32Array.from({ length: count }, () => Math.floor(next() * srcRows));
      const f32 = Float32Array.from({ length: srcRows * d }, () => (next() * 2 - 1) * 2 ** Math.floor(next() * 40 - 20));
      const cases = [
        { name: 'float32', src: f32 as Float32Array | Uint16Array, dtype: undefined, value: (q: number) => f32[q]! },
        ...(['bfloat16', 'float16'] as const).map((dtype) => {
          const bits = randomHalfBits(srcRows * d, dtype, seed + d);
          return { name: dtype, src: bits as Float32Array | Uint16Array, dtype, value: (q: number) => (dtype === 'bfloat16' ? bf16ToNumber : f16ToNumber)(bits[q]!) };
        }),
      ];
      for (const c of cases) {
        const dst = new Float32Array(at + count * d + 7).fill(-7);
        await b.gatherRows(c.src, slots, 0, count, dst, at, d, c.dtype);
        const want = new Float32Array(dst.length).fill(-7);
        for (let j = 0; j < count; j++) for (let k = 0; k < d; k++) want[at + j * d + k] = c.value(slots[j]! * d + k);
        const label = `seed ${seed}, ${c.name}, d ${d}, ${count} rows at ${at}`;
        expect(Buffer.from(dst.buffer).equals(Buffer.from(want.buffer)), label).toBe(true);
      }
    }
  });

  it('allocHost gives a buffer of exactly the bytes asked for, whatever it rounds its block up to', () => {
    for (const bytes of [1, 4096 + 12, (2 << 20) + 12]) expect(b.allocHost(bytes).byteLength).toBe(bytes);
  });

  it.runIf(process.platform === 'linux')('discardHost leaves every small block alone, even one that happens to start on a page', () => {
    // Blocks under 2 MiB are 64-byte aligned and a page and 64 bytes long or so: one that lands on a
    // page boundary is still not whole pages, and giving back its rounded-up last page would zero
    // the allocator's memory after it (the process aborted in malloc).
    const kept: Float32Array[] = [];
    for (let i = 0; i < 300; i++) {
      const a = new Float32Array(b.allocHost(4096 * (1 + (i % 7)) + 64)).fill(i);
      kept.push(a);
      expect(b.discardHost(a.buffer as ArrayBuffer), `block ${i}`).toBe(false);
    }
    kept.forEach((a, i) => expect(a[0] === i && a[a.length - 1] === i, `block ${i}`).toBe(true));
  });
});
