/**
 * The read path on fresh random inputs of odd sizes, each compared with the rows computed
 * directly from the data in the test: in-order passes (recycled too) with rows skipped as
 * non-finite, shuffled passes whose buffer is filled through a scratch smaller than a window,
 * 16-bit mixing buffers, a source that fits in the buffer, epochs of a stream, the tensor a
 * .safetensors file is read by, shard checks, and the errors of a pass (truncated or rewritten
 * files, a failed or ended pass).
 */
import { mkdirSync, mkdtempSync, rmSync, statSync, truncateSync, utimesSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { fromArray, fromAsyncIterable, openActivations, type ActivationSource, type Batch, type BatchOptions } from '../lib/data/index.js';
import { allocLongLivedF32 } from '../lib/data/convert.js';
import { _sweepSparesAfter, releaseSpare, takeSpare } from '../lib/data/memory.js';
import { bf16ToNumber, concatRows, f16ToNumber, npyBytes, randomHalfBits, randomRows, sortedRowKeys, writeNpyFixture, writeSafetensorsFixture } from './helpers/data-fixtures.js';
import { lcg } from './helpers/reference.js';

let dir: string;
const p = (...parts: string[]) => path.join(dir, ...parts);

beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-read-path-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** A fresh seed per run (printed with any failure). */
const freshSeed = (): number => (Math.random() * 2 ** 31) >>> 0;

/** Rows of every batch, copied (recycled batches are only valid until the next next()). */
async function collectCopies(src: ActivationSource, opts?: BatchOptions): Promise<Batch[]> {
  const out: Batch[] = [];
  for await (const b of src.batches(opts)) out.push({ rows: b.rows, dIn: b.dIn, data: b.data.slice() });
  return out;
}

/** The rows of x (rows × dIn) that hold no NaN or infinity, in order. */
function finiteRows(x: Float32Array, dIn: number): Float32Array {
  const keep: number[] = [];
  for (let r = 0; r < x.length / dIn; r++) if (x.subarray(r * dIn, (r + 1) * dIn).every(Number.isFinite)) keep.push(r);
  const out = new Float32Array(keep.length * dIn);
  keep.forEach((r, i) => out.set(x.subarray(r * dIn, (r + 1) * dIn), i * dIn));
  return out;
}

/** Index of the first element where a and b differ (Object.is), or -1; lengths must match. */
function firstDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return i;
  return -1;
}

describe('in-order passes with rows skipped as non-finite', () => {
  it("recycled batches (fills ahead of the consumer) serve the finite rows once each, in file order, cut into full batches", async () => {
    for (let trial = 0; trial < 4; trial++) {
      const seed = freshSeed();
      const rnd = lcg(seed);
      const dIn = 3 + Math.floor(rnd() * 9);
      const rows = 150 + Math.floor(rnd() * 200);
      const x = randomRows(rows, dIn, seed);
      // About one row in six non-finite, at random rows and columns.
      for (let r = 0; r < rows; r++) if (rnd() < 1 / 6) x[r * dIn + Math.floor(rnd() * dIn)] = [NaN, Infinity, -Infinity][Math.floor(rnd() * 3)]!;
      const file = p(`skip-${trial}.npy`);
      await writeNpyFixture(file, 'float32', [rows, dIn], x);
      const want = finiteRows(x, dIn);
      const kept = want.length / dIn;
      const batchSize = 5 + Math.floor(rnd() * 20);
      for (const recycle of [true, false]) {
        const src = await openActivations(file, { onNonFinite: 'skip' });
        const bs = await collectCopies(src, { batchSize, recycle });
        const msg = `seed ${seed}, dIn ${dIn}, rows ${rows}, batchSize ${batchSize}, recycle ${recycle}`;
        expect(bs.map((b) => b.rows), msg).toEqual([...Array(Math.floor(kept / batchSize)).fill(batchSize), ...(kept % batchSize ? [kept % batchSize] : [])]);
        expect(firstDiff(concatRows(bs), want), msg).toBe(-1);
        expect(src.skippedRows, msg).toBe(rows - kept);
        await src.close();
      }
    }
  });
});

/**
 * Which row of x (rows × dIn) each served row is (found by its first value, then compared whole);
 * fails on a row that is not one of x's.
 */
function rowIndices(served: Float32Array, x: Float32Array, dIn: number, msg: string): number[] {
  const byFirst = new Map<number, number>();
  for (let r = 0; r < x.length / dIn; r++) byFirst.set(x[r * dIn]!, r);
  expect(byFirst.size, `${msg}: first values distinct`).toBe(x.length / dIn);
  const out: number[] = [];
  for (let i = 0; i < served.length / dIn; i++) {
    const r = byFirst.get(served[i * dIn]!);
    expect(r, `${msg}: served row ${i} is a row of the data`).toBeDefined();
    expect(firstDiff(served.subarray(i * dIn, (i + 1) * dIn), x.subarray(r! * dIn, (r! + 1) * dIn)), `${msg}: served row ${i} equals row ${r}`).toBe(-1);
    out.push(r!);
  }
  return out;
}

describe("onNonFinite 'error' names the first non-finite value", () => {
  it('by file (or array) and row, its value and its column: the first column, the last, or one between, with a later one in the same row', async () => {
    const seed = freshSeed();
    const dIn = 4 + (seed % 9);
    const rows = 20 + (seed % 40);
    for (const col of [0, 1 + (seed % (dIn - 2)), dIn - 1]) {
      const row = (seed + col) % rows;
      const bad = [NaN, Infinity, -Infinity][(seed + col) % 3]!;
      const x = randomRows(rows, dIn, seed + col);
      x[row * dIn + col] = bad;
      // A second non-finite value later in the row (the message names the first).
      if (col < dIn - 1) x[row * dIn + dIn - 1] = NaN;
      const file = p(`first-bad-${seed}-${col}.npy`);
      await writeNpyFixture(file, 'float32', [rows, dIn], x);
      const msg = `seed ${seed}, row ${row}, column ${col}`;
      for (const shuffle of [false, true]) {
        const opts = { batchSize: 4, shuffle, bufferBytes: 12 * dIn * 4, chunkRows: 5 };
        await expect(collectCopies(await openActivations(file), opts), msg).rejects.toMatchObject({
          code: 'ERR_SAEKIT_NONFINITE',
          message: `Expected finite activations but row ${row} of ${file} has ${String(bad)} at column ${col} (pass onNonFinite: 'skip' to drop such rows)`,
        });
        await expect(collectCopies(fromArray(x, dIn), opts), msg).rejects.toMatchObject({
          code: 'ERR_SAEKIT_NONFINITE',
          message: `Expected finite activations but row ${row} of the array has ${String(bad)} at column ${col} (pass onNonFinite: 'skip' to drop such rows)`,
        });
      }
    }
  });
});

describe('shuffled passes over wide rows (the buffer filled through a scratch of fewer rows than a window)', () => {
  it('fromArray and fromAsyncIterable serve every row exactly once per epoch', async () => {
    const seed = freshSeed();
    const rnd = lcg(seed);
    // The scratch holds floor(2^20 / (4 dIn)) = 4 to 6 rows; a window holds 9 to 13.
    const dIn = 2 * Math.floor(20000 + rnd() * 10000) + 1;
    const half = 9 + Math.floor(rnd() * 5);
    const rows = 2 * half + 5 + Math.floor(rnd() * 15);
    const x = randomRows(rows, dIn, seed);
    const opts: BatchOptions = { batchSize: 3 + Math.floor(rnd() * 6), shuffle: true, seed: seed + 1, bufferBytes: 3 * half * dIn * 4, epochs: 2 };
    const iterable = {
      async *[Symbol.asyncIterator]() {
        for (let r = 0; r < rows; r += 7) yield x.subarray(r * dIn, Math.min(rows, r + 7) * dIn);
      },
    };
    for (const [kind, src] of [
      ['fromArray', fromArray(x, dIn)],
      ['fromAsyncIterable', fromAsyncIterable(iterable, dIn)],
    ] as const) {
      const msg = `${kind}, seed ${seed}, dIn ${dIn}, rows ${rows}, half ${half}`;
      const got = rowIndices(concatRows(await collectCopies(src, opts)), x, dIn, msg);
      expect(got.length, msg).toBe(2 * rows);
      for (const epoch of [got.slice(0, rows), got.slice(rows)]) {
        expect([...epoch].sort((a, b) => a - b), msg).toEqual(Array.from({ length: rows }, (_, i) => i));
      }
      await src.close();
    }
  });
});

describe('rows wider than a default chunk (4 MiB)', () => {
  it('are read one row to a chunk, in order and shuffled, from an array and from a file', async () => {
    const seed = freshSeed();
    const dIn = 2 ** 20 + 1 + 2 * (seed % 30000);
    const rows = 3;
    const x = randomRows(rows, dIn, seed);
    const file = p(`wide-${seed}.f32`);
    writeFileSync(file, new Uint8Array(x.buffer));
    for (const src of [fromArray(x, dIn), await openActivations(file, { dIn })]) {
      const msg = `seed ${seed}, dIn ${dIn}, rows ${rows}`;
      expect(firstDiff(concatRows(await collectCopies(src, { batchSize: 2 })), x), msg).toBe(-1);
      const got = rowIndices(concatRows(await collectCopies(src, { batchSize: 2, shuffle: true, seed })), x, dIn, msg);
      expect([...got].sort((a, b) => a - b), msg).toEqual(Array.from({ length: rows }, (_, i) => i));
      await src.close();
    }
  });
});

describe('safetensors tensor choice', () => {
  it("the only 2-D tensor is read by default beside 1-D and 3-D ones; options.tensor picks any, and applies to the .safetensors files of a list that also holds .npy files; options.dtype must match the tensor", async () => {
    const seed = freshSeed();
    const dIn = 3 + (seed % 9);
    const [r1, r2, r3] = [4 + (seed % 7), 3 + (seed % 5), 5 + (seed % 3)];
    const acts = randomRows(r1, dIn, seed);
    const resid = randomRows(2 * r2, dIn, seed + 1);
    const other = randomRows(r3, dIn, seed + 2);
    const st = p(`b-${seed}.safetensors`);
    await writeSafetensorsFixture(st, {
      bias: { dtype: 'float32', shape: [dIn], data: randomRows(1, dIn, seed + 3) },
      resid: { dtype: 'float32', shape: [2, r2, dIn], data: resid },
      acts: { dtype: 'float32', shape: [r1, dIn], data: acts },
    });
    const npy = p(`a-${seed}.npy`);
    await writeNpyFixture(npy, 'float32', [r3, dIn], other);
    const rowsOf = async (src: ActivationSource) => concatRows(await collectCopies(src, { batchSize: 4 }));
    const msg = `seed ${seed}`;
    expect(firstDiff(await rowsOf(await openActivations(st)), acts), msg).toBe(-1);
    expect(firstDiff(await rowsOf(await openActivations(st, { tensor: 'resid' })), resid), msg).toBe(-1);
    // a-*.npy comes first in name order; options.tensor names the tensor of the .safetensors file.
    for (const tensor of ['acts', 'resid']) {
      const src = await openActivations([st, npy], { tensor });
      expect(firstDiff(await rowsOf(src), concatRows([{ data: other }, { data: tensor === 'acts' ? acts : resid }])), `${msg}, ${tensor}`).toBe(-1);
    }
    // options.dtype must match the tensor read, as for .npy files.
    for (const dtype of ['float16', 'bfloat16', 'float64'] as const) {
      await expect(openActivations(st, { dtype }), `${msg}, ${dtype}`).rejects.toMatchObject({
        code: 'ERR_SAEKIT_DTYPE',
        message: expect.stringContaining(`Expected options.dtype = '${dtype}' to match tensor 'acts' of ${st}, which holds float32`),
      });
      await expect(openActivations(st, { dtype, tensor: 'resid' }), `${msg}, ${dtype}`).rejects.toMatchObject({ code: 'ERR_SAEKIT_DTYPE', message: expect.stringContaining(`tensor 'resid' of ${st}, which holds float32`) });
    }
    expect(firstDiff(await rowsOf(await openActivations(st, { dtype: 'float32' })), acts), msg).toBe(-1);
    await expect(openActivations([npy], { tensor: 'acts' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.tensor only with \.safetensors files/) });
  });
});

describe('epochs of a stream (fromAsyncIterable)', () => {
  it('an iterable that yields nothing gives no batches over any number of epochs, and no error (it is not a spent generator)', async () => {
    let passes = 0;
    const empty = {
      async *[Symbol.asyncIterator]() {
        passes++;
      },
    };
    const epochs = 2 + Math.floor(Math.random() * 4);
    const src = fromAsyncIterable(empty, 5);
    expect(await collectCopies(src, { epochs })).toEqual([]);
    expect(await collectCopies(src, { epochs, shuffle: true, bufferBytes: 999 })).toEqual([]);
    // Each epoch of a stream asks the iterable again (its numRows is unknown).
    expect(passes).toBe(2 * epochs);
  });

  it('an iterable that yields rows once and then nothing (a new iterator over a spent generator) is an error at the empty epoch, after the rows of the first', async () => {
    const seed = freshSeed();
    const dIn = 3 + (seed % 7);
    const rows = 5 + (seed % 11);
    const x = randomRows(rows, dIn, seed);
    const gen = (async function* () {
      for (let r = 0; r < rows; r += 4) yield x.slice(r * dIn, Math.min(rows, r + 4) * dIn);
    })();
    // Each [Symbol.asyncIterator]() returns a new object (so not the iterator an earlier epoch took), all over one generator.
    const spent = { [Symbol.asyncIterator]: () => ({ next: () => gen.next() }) };
    const src = fromAsyncIterable(spent, dIn);
    const got: Batch[] = [];
    await expect(
      (async () => {
        for await (const b of src.batches({ batchSize: 3, epochs: 2 })) got.push({ rows: b.rows, dIn: b.dIn, data: b.data.slice() });
      })(),
    ).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringContaining('Expected the iterable to start over for epoch 1 but it yielded nothing') });
    expect(firstDiff(concatRows(got), x), `seed ${seed}`).toBe(-1);
  });

  it('a Batch item whose rows disagree with its data length is a SHAPE error naming the item, not rows read from the data', async () => {
    const seed = freshSeed();
    const dIn = 3 + (seed % 7);
    const good = 1 + (seed % 4);
    const x = randomRows(20, dIn, seed);
    for (const rows of [3, 5, 0]) {
      // Item `good` claims `rows` rows but holds 4.
      const stream = {
        async *[Symbol.asyncIterator]() {
          for (let i = 0; i < good; i++) yield { rows: 2, dIn, data: x.slice(2 * i * dIn, 2 * (i + 1) * dIn) };
          yield { rows, dIn, data: x.slice(0, 4 * dIn) };
        },
      };
      await expect(collectCopies(fromAsyncIterable(stream, dIn), { batchSize: 3 }), `seed ${seed}, rows ${rows}`).rejects.toMatchObject({
        code: 'ERR_SAEKIT_SHAPE',
        message: `Expected item ${good} of the iterable to be a batch of dIn = ${dIn} with rows × dIn values but it has dIn = ${dIn}, rows = ${rows} and ${4 * dIn} values`,
      });
    }
  });

  it('an epoch whose rows are all skipped as non-finite does not end a stream: the next epoch is read', async () => {
    const seed = freshSeed();
    const dIn = 3 + (seed % 7);
    const rows = 11 + (seed % 13);
    const good = randomRows(rows, dIn, seed);
    const bad = good.map((v, i) => (i % dIn === seed % dIn ? NaN : v));
    let epoch = 0;
    // Epoch 0 yields only non-finite rows, epoch 1 finite ones.
    const stream = {
      async *[Symbol.asyncIterator]() {
        yield epoch++ === 0 ? bad : good;
      },
    };
    const src = fromAsyncIterable(stream, dIn);
    const got = await collectCopies(src, { batchSize: 4, epochs: 2, onNonFinite: 'skip' });
    expect(firstDiff(concatRows(got), good), `seed ${seed}`).toBe(-1);
    expect(src.skippedRows).toBe(rows);
  });
});

describe('shard lists', () => {
  it('a file whose rows hold no values (shape [rows, 0], or [..., 0]) is refused as a SHAPE error naming it', async () => {
    const seed = freshSeed();
    const rows = 1 + (seed % 9);
    for (const shape of [[rows, 0], [0, 0], [2, rows, 0]]) {
      const npy = p(`empty-rows-${seed}-${shape.length}-${shape[0]}.npy`);
      await writeNpyFixture(npy, 'float32', shape, new Float32Array(0));
      const st = p(`empty-rows-${seed}-${shape.length}-${shape[0]}.safetensors`);
      await writeSafetensorsFixture(st, { acts: { dtype: 'float32', shape, data: new Float32Array(0) } });
      for (const file of [npy, st]) {
        await expect(openActivations(file, shape.length === 2 ? undefined : { tensor: file === st ? 'acts' : undefined }), `${file} [${shape}]`).rejects.toMatchObject({
          code: 'ERR_SAEKIT_SHAPE',
          message: expect.stringMatching(new RegExp(`Expected at least one value per row in .*${path.basename(file).replace('.', '\\.')}.* but its shape is \\[${shape.join(', ')}\\]`)),
        });
      }
    }
  });

  it("a folder leaves out hidden files (a leading dot), as a glob `*` does (macOS's ._a.npy beside a.npy)", async () => {
    const seed = freshSeed();
    const dIn = 3 + (seed % 9);
    const folder = p(`hidden-${seed}`);
    mkdirSync(folder);
    const a = randomRows(3 + (seed % 5), dIn, seed);
    await writeNpyFixture(path.join(folder, 'a.npy'), 'float32', [a.length / dIn, dIn], a);
    // Same width, so a hidden file read by mistake would pass every other check.
    await writeNpyFixture(path.join(folder, '._a.npy'), 'float32', [2, dIn], randomRows(2, dIn, seed + 1));
    await writeNpyFixture(path.join(folder, '.b.npy'), 'float32', [4, dIn], randomRows(4, dIn, seed + 2));
    for (const input of [folder, `${folder}/*.npy`]) {
      const src = await openActivations(input);
      expect(src.numRows, input).toBe(a.length / dIn);
      expect(firstDiff(concatRows(await collectCopies(src)), a), input).toBe(-1);
    }
  });

  it('a file truncated during a pass (its handle already open) is a FORMAT error naming it and the offset, native reads and staged ones alike', async () => {
    for (const bigEndian of [false, true]) {
      const seed = freshSeed();
      const dIn = 5 + (seed % 7);
      const rows = 1001 + (seed % 300);
      const file = p(`cut-${seed}-${bigEndian}.npy`);
      writeFileSync(file, npyBytes('float32', [rows, dIn], randomRows(rows, dIn, seed), { bigEndian }));
      const src = await openActivations(file);
      let served = 0;
      const pass = (async () => {
        // Batches of 3 rows: the pass reads at most 64 of them ahead of the first.
        for await (const b of src.batches({ batchSize: 3 })) {
          if (served === 0) truncateSync(file, statSync(file).size >> 1);
          served += b.rows;
        }
      })();
      await expect(pass, `big-endian ${bigEndian}, seed ${seed}`).rejects.toMatchObject({
        code: 'ERR_SAEKIT_FORMAT',
        message: expect.stringMatching(new RegExp(`^Expected \\d+ (rows|bytes) at offset \\d+ of ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} but the file ends first \\(was it truncated\\?\\)$`)),
      });
      expect(served).toBeLessThan(rows);
      await src.close();
    }
  });

  it('a file rewritten in place after the source read its header (same size, new modification time) is a FORMAT error naming it', async () => {
    const seed = freshSeed();
    const dIn = 3 + (seed % 9);
    const rows = 5 + (seed % 17);
    const file = p(`rewritten-${seed}.npy`);
    await writeNpyFixture(file, 'float32', [rows, dIn], randomRows(rows, dIn, seed));
    const src = await openActivations(file);
    expect((await collectCopies(src)).reduce((a, b) => a + b.rows, 0)).toBe(rows);
    // Other values, same bytes count and inode; the modification time moves on by a second.
    const before = statSync(file);
    writeFileSync(file, npyBytes('float32', [rows, dIn], randomRows(rows, dIn, seed + 1)));
    utimesSync(file, before.atime, new Date(before.mtimeMs + 1000));
    expect(statSync(file).size).toBe(before.size);
    expect(statSync(file).ino).toBe(before.ino);
    await expect(collectCopies(src)).rejects.toMatchObject({ code: 'ERR_SAEKIT_FORMAT', message: expect.stringContaining(`${file} was modified since the source was opened`) });
    await src.close();
  });
});

describe('16-bit files shuffled with rows skipped (the mixing buffer keeps 16-bit values)', () => {
  it('rows of the largest finite values are kept; every finite row is served once per epoch', async () => {
    for (const dtype of ['bfloat16', 'float16'] as const) {
      const seed = freshSeed();
      const rnd = lcg(seed);
      const dIn = 3 + Math.floor(rnd() * 8);
      const rows = 60 + Math.floor(rnd() * 90);
      const bits = randomHalfBits(rows * dIn, dtype, seed);
      // The top finite exponent (one below all ones): bfloat16 0x7f00-0x7f7f, float16 0x7800-0x7bff (either sign).
      const [top, topMantissa, inf, nan] = dtype === 'bfloat16' ? [0x7f00, 0x7f, 0x7f80, 0x7fc1] : [0x7800, 0x3ff, 0x7c00, 0x7e01];
      for (let r = 0; r < rows; r++) {
        const u = rnd();
        const at = r * dIn + Math.floor(rnd() * dIn);
        if (u < 0.3) bits[at] = (rnd() < 0.5 ? 0x8000 : 0) | top | Math.floor(rnd() * (topMantissa + 1));
        else if (u < 0.45) bits[at] = (rnd() < 0.5 ? 0x8000 : 0) | (rnd() < 0.5 ? inf : nan);
      }
      const file = p(`top-${dtype}-${seed}.npy`);
      await writeNpyFixture(file, dtype, [rows, dIn], bits);
      const want = finiteRows(Float32Array.from(bits, dtype === 'bfloat16' ? bf16ToNumber : f16ToNumber), dIn);
      const kept = want.length / dIn;
      const src = await openActivations(file, { onNonFinite: 'skip' });
      const msg = `${dtype}, seed ${seed}, dIn ${dIn}, rows ${rows}`;
      const bufferRows = 12 + Math.floor(rnd() * 40);
      const got = await collectCopies(src, { batchSize: 7, shuffle: true, seed, epochs: 2, bufferBytes: bufferRows * dIn * 4, chunkRows: 5 + Math.floor(rnd() * 9) });
      const all = concatRows(got);
      expect(all.length, msg).toBe(2 * want.length);
      for (const epoch of [all.subarray(0, want.length), all.subarray(want.length)]) expect(sortedRowKeys(epoch, dIn), msg).toEqual(sortedRowKeys(want, dIn));
      expect(src.skippedRows, msg).toBe(2 * (rows - kept));
      await src.close();
    }
  });
});

describe('a shuffled source that fits in the buffer', () => {
  it('is served as one uniform permutation: with an odd number of rows every row, the last included, lands in the first half as often as the others (fresh seeds)', async () => {
    // k rows in one chunk, a buffer of 3k rows (more than the source): one draw over all k rows. Each row lands among
    // the first floor(k / 2) served with probability floor(k / 2) / k (0.43 to 0.47 here).
    const k = 2 * (3 + Math.floor(Math.random() * 5)) + 1;
    const src = fromArray(Float32Array.from({ length: k }, (_, i) => i), 1);
    const trials = 150;
    const inFirstHalf = new Float64Array(k);
    const base = BigInt(freshSeed()) * 1000n;
    for (let t = 0; t < trials; t++) {
      const served: number[] = [];
      for await (const b of src.batches({ batchSize: 4, shuffle: true, seed: base + BigInt(t), bufferBytes: 3 * k * 4 })) served.push(...b.data);
      expect([...served].sort((a, b) => a - b)).toEqual(Array.from({ length: k }, (_, i) => i));
      for (const r of served.slice(0, Math.floor(k / 2))) inFirstHalf[r]! += 1 / trials;
    }
    // Hoeffding: P(|frequency - p| > 0.3) <= 2 exp(-2 x 150 x 0.09) < 4e-12 per row (under 1e-10 for all);
    // a row never in the first half is 0.43 or more away.
    const p = Math.floor(k / 2) / k;
    for (let r = 0; r < k; r++) expect(Math.abs(inFirstHalf[r]! - p), `k ${k}, seeds from ${base}: row ${r} in the first half with frequency ${inFirstHalf[r]}`).toBeLessThanOrEqual(0.3);
  });
});

describe('rows served per epoch (fresh odd sizes)', () => {
  it('in order and shuffled, recycled or not, with and without dropLast: each row once per epoch (or all but the short batch), whole batches, no empty batch; in order, in file order', async () => {
    const seed = freshSeed();
    const next = lcg(seed);
    const dIn = 1 + Math.floor(next() * 6);
    const bs = 2 + Math.floor(next() * 9);
    const epochs = 2;
    // A multiple of the batch size (no short batch: none may be served, empty or not), and one that is not.
    for (const rows of [bs * (1 + Math.floor(next() * 5)), bs * (1 + Math.floor(next() * 5)) + 1 + Math.floor(next() * (bs - 1))]) {
      const x = Float32Array.from({ length: rows * dIn }, (_, i) => Math.floor(i / dIn)); // row r holds r in every column
      const file = p(`served-${seed}-${rows}.npy`);
      await writeNpyFixture(file, 'float32', [rows, dIn], x);
      const full = Math.floor(rows / bs);
      const short = rows - full * bs;
      for (const [kind, src] of [['array', fromArray(x, dIn)], ['file', await openActivations(file)]] as const) {
        for (const shuffle of [false, true]) {
          for (const recycle of [false, true]) {
            for (const dropLast of [false, true]) {
              const what = `seed ${seed}, ${kind}, rows ${rows}, dIn ${dIn}, batchSize ${bs}, shuffle ${shuffle}, recycle ${recycle}, dropLast ${dropLast}`;
              const opts = { batchSize: bs, shuffle, recycle, dropLast, epochs, seed, bufferBytes: (3 + Math.floor(next() * rows)) * dIn * 4, chunkRows: 1 + Math.floor(next() * 5) };
              const batches = await collectCopies(src, opts);
              const perEpoch = full + (short > 0 && !dropLast ? 1 : 0);
              expect(batches.map((b) => b.rows), what).toEqual(Array.from({ length: epochs }, () => [...Array<number>(full).fill(bs), ...(short > 0 && !dropLast ? [short] : [])]).flat());
              for (let e = 0; e < epochs; e++) {
                const served: number[] = [];
                for (const b of batches.slice(e * perEpoch, (e + 1) * perEpoch)) {
                  for (let r = 0; r < b.rows; r++) {
                    const row = b.data.subarray(r * dIn, (r + 1) * dIn);
                    expect(row.every((v) => v === row[0]), `${what}: a row mixes rows`).toBe(true);
                    served.push(row[0]!);
                  }
                }
                if (!shuffle) expect(served, what).toEqual(Array.from({ length: served.length }, (_, i) => i));
                const sorted = [...served].sort((a, b) => a - b);
                expect(new Set(sorted).size, `${what}: a row served twice in epoch ${e}`).toBe(sorted.length);
                expect(sorted.every((r) => Number.isInteger(r) && r >= 0 && r < rows), what).toBe(true);
              }
            }
          }
        }
        await src.close();
      }
    }
  });

  it("the mixing buffer's windows are floor(bufferRows / 3) rows: the first round draws from the first two windows' rows only, and from every one of them", async () => {
    const n = 41;
    const src = fromArray(Float32Array.from({ length: n }, (_, i) => i), 1);
    const base = BigInt(freshSeed()) * 1000n;
    for (const bufferRows of [9, 10, 11, 12, 13, 14, 17]) {
      const half = Math.floor(bufferRows / 3);
      const firstRound = new Set<number>();
      // Each of the 2 half resident rows is in a round's draw of half with probability 1/2: missing from 40 draws, 2^-40.
      for (let t = 0n; t < 40n; t++) {
        for await (const b of src.batches({ batchSize: half, shuffle: true, seed: base + t, bufferBytes: bufferRows * 4, chunkRows: n })) {
          for (const v of b.data) firstRound.add(v);
          break;
        }
      }
      expect([...firstRound].sort((a, b) => a - b), `bufferRows ${bufferRows}, seeds from ${base}`).toEqual(Array.from({ length: 2 * half }, (_, i) => i));
    }
  });
});

describe('a pass its consumer has ended', () => {
  it('return() and then close() of the source: next() is done, not a batch read ahead nor the close error (the consumer had already stopped)', async () => {
    const seed = freshSeed();
    const dIn = 3 + (seed % 7);
    const rows = 2001 + (seed % 500);
    const file = p(`ended-${seed}.npy`);
    await writeNpyFixture(file, 'float32', [rows, dIn], randomRows(rows, dIn, seed));
    for (const shuffle of [false, true]) {
      const src = await openActivations(file);
      const it = src.batches({ batchSize: 3, shuffle, bufferBytes: 99 * dIn * 4 })[Symbol.asyncIterator]();
      expect((await it.next()).done).toBe(false);
      await new Promise((r) => setTimeout(r, 30)); // batches read ahead and queued by now
      // close() while the pass is still unwinding from return(): the queued batches are dropped.
      await Promise.all([it.return!(), src.close()]);
      expect(await it.next(), `shuffle ${shuffle}`).toEqual({ value: undefined, done: true });
      expect(await it.next()).toEqual({ value: undefined, done: true });
    }
  });

  it('a pass that failed throws its error once: the next() calls after it are done', async () => {
    const seed = freshSeed();
    const dIn = 3 + (seed % 7);
    const rows = 20 + (seed % 30);
    const bad = seed % rows;
    const x = randomRows(rows, dIn, seed);
    x[bad * dIn + (seed % dIn)] = NaN;
    for (const shuffle of [false, true]) {
      const it = fromArray(x, dIn).batches({ batchSize: 4, shuffle, seed, bufferBytes: 9 * dIn * 4 })[Symbol.asyncIterator]();
      let error: unknown;
      for (let i = 0; i <= rows && error === undefined; i++) {
        try {
          if ((await it.next()).done) break;
        } catch (err) {
          error = err;
        }
      }
      expect(error, `shuffle ${shuffle}, seed ${seed}`).toMatchObject({ code: 'ERR_SAEKIT_NONFINITE', message: expect.stringContaining(`row ${bad} of the array has NaN`) });
      expect(await it.next()).toEqual({ value: undefined, done: true });
      expect(await it.next()).toEqual({ value: undefined, done: true });
    }
  });
});

describe('spare memory', () => {
  it.runIf(process.platform === 'linux')('a released spare keeps its pages while it idles under 1 s and gives them back at 1 s (as documented)', () => {
    // A size no other test uses, at least 2 MiB (allocHost memory, whose pages can be given back).
    const n = (2 << 20) / 4 + 4096 * (3 + Math.floor(Math.random() * 300)) + 7;
    const a = allocLongLivedF32(n).fill(3);
    releaseSpare(a);
    _sweepSparesAfter(500);
    expect(a[n - 1]).toBe(3);
    _sweepSparesAfter(1000);
    expect(a[n - 1]).toBe(0);
    expect(takeSpare(n)).toBe(a);
  });
});
