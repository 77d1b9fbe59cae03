import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';

import { fromArray, fromAsyncIterable, openActivations, type ActivationSource, type Batch, type BatchOptions } from '../lib/data/index.js';
import { anyNonFinite } from '../lib/data/convert.js';
import { BatchPool } from '../lib/data/engine.js';
import { _sweepSparesAfter, beginPass, endPass, releaseSpare, takeSpare } from '../lib/data/memory.js';
import { allocLongLivedF32 } from '../lib/data/convert.js';
import { readNpy } from '../lib/io/index.js';
import { native } from '../lib/native/index.js';
import { Rng } from '../lib/data/prng.js';
import { resolveBatchOptions } from '../lib/data/options.js';
import { CHECK_UNITS } from '../lib/slices.js';
import {
  bf16ToNumber,
  collect,
  concatRows,
  f16ToNumber,
  randomHalfBits,
  npyHeader,
  randomRows,
  sortedRowKeys,
  writeNpyFixture,
  writeSafetensorsFixture,
} from './helpers/data-fixtures.js';
import { screenSuite } from './helpers/screen-suite.js';

let dir: string;
const p = (...parts: string[]) => path.join(dir, ...parts);

beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-data-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** Checks shapes and freshness of batches: rows * dIn values each, no two sharing memory. */
function checkBatches(batches: Batch[], dIn: number): void {
  const buffers = new Set<ArrayBufferLike>();
  for (const b of batches) {
    expect(b.dIn).toBe(dIn);
    expect(b.data).toBeInstanceOf(Float32Array);
    expect(b.data.length).toBe(b.rows * dIn);
    expect(buffers.has(b.data.buffer)).toBe(false);
    buffers.add(b.data.buffer);
  }
}

function expectSameRows(a: Float32Array, b: Float32Array): void {
  expect(a.length).toBe(b.length);
  let firstDiff = -1;
  for (let i = 0; i < a.length; i++) {
    if (!Object.is(a[i], b[i])) {
      firstDiff = i;
      break;
    }
  }
  expect(firstDiff).toBe(-1);
}

/** Splits batches into epochs of `rows` rows each (batches never span epochs). */
function epochsOf(batches: Batch[], rows: number): Batch[][] {
  const out: Batch[][] = [];
  let cur: Batch[] = [];
  let n = 0;
  for (const b of batches) {
    cur.push(b);
    n += b.rows;
    expect(n).toBeLessThanOrEqual(rows);
    if (n === rows) {
      out.push(cur);
      cur = [];
      n = 0;
    }
  }
  expect(cur).toEqual([]);
  return out;
}

describe('openActivations: file kinds, in order', () => {
  it('.npy float32: batches concatenate to the file exactly; sizes, short last batch, dropLast', async () => {
    const x = randomRows(1001, 7, 1);
    await writeNpyFixture(p('a.npy'), 'float32', [1001, 7], x);
    const src = await openActivations(p('a.npy'));
    expect(src.dIn).toBe(7);
    expect(src.numRows).toBe(1001);
    const bs = await collect(src, { batchSize: 64 });
    checkBatches(bs, 7);
    expect(bs.map((b) => b.rows)).toEqual([...Array(15).fill(64), 41]);
    expectSameRows(concatRows(bs), x);
    const dropped = await collect(src, { batchSize: 64, dropLast: true });
    expect(dropped.map((b) => b.rows)).toEqual(Array(15).fill(64));
    expectSameRows(concatRows(dropped), x.subarray(0, 960 * 7));
    // Default batchSize 4096 > rows: one short batch.
    const one = await collect(src);
    expect(one.map((b) => b.rows)).toEqual([1001]);
    expect(await collect(src, { dropLast: true })).toEqual([]);
    await src.close();
  });

  it('.npy with leading dimensions flattens them into rows', async () => {
    const x = randomRows(6 * 5, 33, 2);
    await writeNpyFixture(p('ctx.npy'), 'float32', [6, 5, 33], x);
    const src = await openActivations(p('ctx.npy'));
    expect([src.dIn, src.numRows]).toEqual([33, 30]);
    expectSameRows(concatRows(await collect(src, { batchSize: 7 })), x);
  });

  it('.safetensors: the only 2-D tensor by default (data at an odd offset), options.tensor, and errors listing candidates', async () => {
    const x = randomRows(257, 33, 3);
    await writeSafetensorsFixture(p('one.safetensors'), {
      bias: { dtype: 'float32', shape: [33], data: randomRows(1, 33, 9) },
      acts: { dtype: 'float32', shape: [257, 33], data: x },
    });
    const src = await openActivations(p('one.safetensors'));
    expect([src.dIn, src.numRows]).toEqual([33, 257]);
    expectSameRows(concatRows(await collect(src, { batchSize: 100 })), x);

    const y = randomRows(50, 33, 4);
    await writeSafetensorsFixture(p('two.safetensors'), {
      a: { dtype: 'float32', shape: [257, 33], data: x },
      b: { dtype: 'float32', shape: [50, 33], data: y },
    });
    await expect(openActivations(p('two.safetensors'))).rejects.toMatchObject({
      code: 'ERR_SAEKIT_ARG',
      message: expect.stringMatching(/options\.tensor.*2 2-D tensors.*'a' \[257, 33\].*'b' \[50, 33\]/),
    });
    const b = await openActivations(p('two.safetensors'), { tensor: 'b' });
    expectSameRows(concatRows(await collect(b)), y);
    await expect(openActivations(p('two.safetensors'), { tensor: 'c' })).rejects.toMatchObject({
      code: 'ERR_SAEKIT_ARG',
      message: expect.stringMatching(/no 'c' \(it has: 'a', 'b'\)/),
    });
    await writeSafetensorsFixture(p('none.safetensors'), { v: { dtype: 'float32', shape: [33], data: randomRows(1, 33, 5) } });
    await expect(openActivations(p('none.safetensors'))).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/which has no tensor of 2 or more dimensions/) });
    // No 2-D tensor: the only one of more dimensions, its leading ones flattened ([batch, seq, dIn]);
    // two of them need options.tensor.
    await writeSafetensorsFixture(p('three.safetensors'), {
      bias: { dtype: 'float32', shape: [33], data: randomRows(1, 33, 6) },
      acts: { dtype: 'float32', shape: [3, 5, 33], data: x.subarray(0, 15 * 33) },
    });
    const s3 = await openActivations(p('three.safetensors'));
    expect([s3.dIn, s3.numRows]).toEqual([33, 15]);
    expectSameRows(concatRows(await collect(s3, { batchSize: 4 })), x.subarray(0, 15 * 33));
    await writeSafetensorsFixture(p('three2.safetensors'), {
      a: { dtype: 'float32', shape: [3, 5, 33], data: x.subarray(0, 15 * 33) },
      b: { dtype: 'float32', shape: [1, 2, 2, 33], data: x.subarray(0, 4 * 33) },
    });
    await expect(openActivations(p('three2.safetensors'))).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/which has no 2-D tensor and 2 of more dimensions \(tensors: 'a' \[3, 5, 33\]/) });
    await writeSafetensorsFixture(p('int.safetensors'), { i: { dtype: 'int32', shape: [4, 3], data: new Int32Array(12) } });
    await expect(openActivations(p('int.safetensors'))).rejects.toMatchObject({ code: 'ERR_SAEKIT_DTYPE', message: expect.stringMatching(/int32/) });
    // A tensor of a dtype saekit does not convert (a BOOL mask beside the activations) does not hide the others.
    const header = Buffer.from(JSON.stringify({ acts: { dtype: 'F32', shape: [257, 33], data_offsets: [0, 257 * 33 * 4] }, mask: { dtype: 'BOOL', shape: [257], data_offsets: [257 * 33 * 4, 257 * 33 * 4 + 257] } }));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    writeFileSync(p('mask.safetensors'), Buffer.concat([len, header, Buffer.from(x.buffer, x.byteOffset, x.byteLength), Buffer.alloc(257, 1)]));
    const masked = await openActivations(p('mask.safetensors'));
    expectSameRows(concatRows(await collect(masked, { batchSize: 64 })), x);
    await expect(openActivations(p('mask.safetensors'), { tensor: 'mask' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_DTYPE', message: expect.stringMatching(/tensor 'mask' of .*mask\.safetensors but it holds BOOL/) });
  });

  it('raw files: options.dtype and options.dIn, dtype implied by .f32/.f16/.bf16/.f64, size checks', async () => {
    const x = randomRows(99, 7, 6);
    writeFileSync(p('r.bin'), new Uint8Array(x.buffer));
    const src = await openActivations(p('r.bin'), { dtype: 'float32', dIn: 7 });
    expect(src.numRows).toBe(99);
    expectSameRows(concatRows(await collect(src, { batchSize: 10 })), x);
    writeFileSync(p('r.f32'), new Uint8Array(x.buffer));
    expectSameRows(concatRows(await collect(await openActivations(p('r.f32'), { dIn: 7 }))), x);

    await expect(openActivations(p('r.bin'), { dIn: 7 })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.dtype for the raw file .*r\.bin/) });
    await expect(openActivations(p('r.bin'), { dtype: 'float32' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.dIn for the raw file/) });
    await expect(openActivations(p('r.bin'), { dtype: 'float32', dIn: 8 })).rejects.toMatchObject({
      code: 'ERR_SAEKIT_SHAPE',
      message: expect.stringMatching(/r\.bin.*multiple of dIn × 4 = 32 bytes.*2772 bytes/),
    });
    await expect(openActivations(p('r.f32'), { dtype: 'float16', dIn: 7 })).rejects.toMatchObject({ code: 'ERR_SAEKIT_DTYPE', message: expect.stringMatching(/\.f32 holds float32/) });
  });

  it('raw and self-describing files mixed: options.dtype messages say it applies to every file and point to dtype extensions, not "leave it out"', async () => {
    const f = p('mixraw');
    mkdirSync(f);
    const dIn = 3 + Math.floor(Math.random() * 9);
    const seed = () => 1 + Math.floor(Math.random() * 2 ** 30);
    await writeNpyFixture(p('mixraw', 'a.npy'), 'float16', [3, dIn], randomHalfBits(3 * dIn, 'float16', seed()));
    const raw = randomRows(4, dIn, seed());
    writeFileSync(p('mixraw', 'b.bin'), new Uint8Array(raw.buffer));
    // With options.dtype: the .npy holds another dtype, and leaving options.dtype out is no way out for b.bin.
    await expect(openActivations(f, { dIn, dtype: 'float32' })).rejects.toMatchObject({
      code: 'ERR_SAEKIT_DTYPE',
      message: expect.stringMatching(/a\.npy, which holds float16 \(options\.dtype applies to every file, so all must hold float32: .*b\.bin with a dtype extension \(\.f32, \.f16, \.bf16, \.f64\)/),
    });
    await expect(openActivations(f, { dIn, dtype: 'float32' })).rejects.toMatchObject({ message: expect.not.stringMatching(/leave it out\)/) });
    // Without it: b.bin needs a dtype, which the .npy must hold too; or a dtype extension.
    await expect(openActivations(f, { dIn })).rejects.toMatchObject({
      code: 'ERR_SAEKIT_ARG',
      message: expect.stringMatching(/options\.dtype for the raw file .*b\.bin .*applies to every file.*dtype extension: \.f32, \.f16, \.bf16, \.f64/),
    });
    // The way out the messages give: b.f32 beside the float16 .npy, no options.dtype.
    rmSync(p('mixraw', 'b.bin'));
    writeFileSync(p('mixraw', 'b.f32'), new Uint8Array(raw.buffer));
    const src = await openActivations(f, { dIn });
    expect(src.numRows).toBe(7);
    expectSameRows(concatRows(await collect(src)).subarray(3 * dIn), raw);
    // Self-describing files alone (or with typed raw files) keep the plain hint.
    await expect(openActivations(f, { dIn, dtype: 'float32' })).rejects.toMatchObject({ message: expect.stringMatching(/options\.dtype is for raw files; leave it out/) });
  });

  it('a folder: supported files in name order, shards of different lengths (and an empty one), others ignored', async () => {
    const f = p('folder');
    mkdirSync(f);
    const parts = [randomRows(100, 7, 11), randomRows(257, 7, 12), randomRows(0, 7, 13), randomRows(1, 7, 14), randomRows(64, 7, 15)];
    for (const [i, x] of parts.entries()) await writeNpyFixture(p('folder', `shard_${String(i).padStart(3, '0')}.npy`), 'float32', [x.length / 7, 7], x);
    writeFileSync(p('folder', 'README.txt'), 'not activations');
    writeFileSync(p('folder', 'junk.bin'), 'raw files need options.dIn');
    const src = await openActivations(f);
    expect(src.numRows).toBe(422);
    const want = concatRows(parts.map((data) => ({ data })));
    for (const batchSize of [1, 7, 64, 100, 500]) {
      const bs = await collect(src, { batchSize });
      checkBatches(bs, 7);
      expect(bs.slice(0, -1).every((b) => b.rows === batchSize)).toBe(true);
      expectSameRows(concatRows(bs), want);
    }
    await src.close();
  });

  it('glob patterns (*, ?, **) and lists are read in name order; no match, duplicates and dIn mismatches are errors', async () => {
    const g = p('glob');
    mkdirSync(p('glob', 'sub', 'deeper'), { recursive: true });
    const a = randomRows(10, 7, 21);
    const b = randomRows(13, 7, 22);
    const c = randomRows(5, 7, 23);
    await writeNpyFixture(p('glob', 'b1.npy'), 'float32', [13, 7], b);
    await writeNpyFixture(p('glob', 'a1.npy'), 'float32', [10, 7], a);
    await writeNpyFixture(p('glob', 'sub', 'deeper', 'c1.npy'), 'float32', [5, 7], c);
    await writeNpyFixture(p('glob', '.hidden.npy'), 'float32', [5, 7], c);
    const rows = async (src: ActivationSource) => concatRows(await collect(src, { batchSize: 4 }));
    expectSameRows(await rows(await openActivations(`${g}/*.npy`)), concatRows([{ data: a }, { data: b }]));
    expectSameRows(await rows(await openActivations(`${g}/?1.npy`)), concatRows([{ data: a }, { data: b }]));
    // glob/**/*.npy: a1, b1, sub/deeper/c1 (path order).
    expectSameRows(await rows(await openActivations(`${g}/**/*.npy`)), concatRows([{ data: a }, { data: b }, { data: c }]));
    expectSameRows(await rows(await openActivations(`${g}/sub/**/c?.npy`)), c);
    // A list, given out of order, is read in name order.
    expectSameRows(await rows(await openActivations([p('glob', 'b1.npy'), p('glob', 'a1.npy')])), concatRows([{ data: a }, { data: b }]));
    await expect(openActivations(`${g}/*.nothing`)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/matches none/) });
    // A trailing '/' matches folders only (as in a shell): refused with a hint, not read as glob/*.
    await expect(openActivations(`${g}/*/`)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/glob\/\*\/' ends in '\/', which matches folders only: name their files \('.*glob\/\*\/\*\.npy'\) or pass the folders/) });
    await expect(openActivations([p('glob', 'a1.npy'), `${g}/a*.npy`])).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/a1\.npy' is listed twice/) });
    await writeNpyFixture(p('glob', 'z9.npy'), 'float32', [2, 8], randomRows(2, 8, 24));
    await expect(openActivations(`${g}/*.npy`)).rejects.toMatchObject({
      code: 'ERR_SAEKIT_SHAPE',
      message: expect.stringMatching(/dIn = 7 of .*a1\.npy but .*z9\.npy has dIn = 8/),
    });
    await expect(openActivations(p('glob', 'a1.npy'), { dIn: 8 })).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE', message: expect.stringMatching(/options\.dIn = 8 but .*a1\.npy has dIn = 7/) });
  });

  it('bad paths and files fail with coded errors naming them', async () => {
    await expect(openActivations(p('missing.npy'))).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/missing\.npy' does not exist/) });
    writeFileSync(p('notes.txt'), 'x');
    await expect(openActivations(p('notes.txt'))).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/unknown extension '\.txt'/) });
    writeFileSync(p('arch.npz'), 'x');
    await expect(openActivations(p('arch.npz'))).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/\.npz archives cannot be streamed/) });
    mkdirSync(p('empty'));
    await expect(openActivations(p('empty'))).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/empty' has none/) });
    await expect(openActivations([])).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG' });
    await expect(openActivations(42 as never)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/for pathOrPaths/) });
    await expect(openActivations(p('a.npy'), { dtype: 'int8' as never })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.dtype/) });
    await writeNpyFixture(p('vec.npy'), 'float32', [7], randomRows(1, 7, 1));
    await expect(openActivations(p('vec.npy'))).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE', message: expect.stringMatching(/2-D array \[rows, dIn\] in .*vec\.npy but its shape is \[7\]/) });
    writeFileSync(p('bad.npy'), 'definitely not numpy');
    await expect(openActivations(p('bad.npy'))).rejects.toMatchObject({ code: 'ERR_SAEKIT_FORMAT' });
    // An empty file may claim any row width: the same limit as options.dIn, naming the file.
    writeFileSync(p('wide.npy'), npyHeader('float32', [0, 2 ** 40]));
    await expect(openActivations(p('wide.npy'))).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE', message: expect.stringMatching(/rows of at most 2\^24 = 16777216 values in .*wide\.npy/) });
    writeFileSync(p('wide-ok.npy'), npyHeader('float32', [0, 2 ** 24]));
    const wide = await openActivations(p('wide-ok.npy'));
    expect(wide.dIn).toBe(2 ** 24);
    await wide.close();
    // A loop of symbolic links is not "missing".
    symlinkSync(p('loop-2.npy'), p('loop-1.npy'));
    symlinkSync(p('loop-1.npy'), p('loop-2.npy'));
    await expect(openActivations(p('loop-1.npy'))).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/loop-1\.npy': .*ELOOP/) });
  });
});

describe('conversion to float32', () => {
  it('bfloat16 and float16 (.npy, .safetensors, raw) equal an independent decoder exactly', async () => {
    const rows = 131;
    const dIn = 33;
    for (const dtype of ['bfloat16', 'float16'] as const) {
      const bits = randomHalfBits(rows * dIn, dtype, dtype === 'float16' ? 31 : 32);
      const decode = dtype === 'float16' ? f16ToNumber : bf16ToNumber;
      const want = Float32Array.from(bits, decode);
      await writeNpyFixture(p(`h-${dtype}.npy`), dtype, [rows, dIn], bits);
      await writeSafetensorsFixture(p(`h-${dtype}.safetensors`), { x: { dtype, shape: [rows, dIn], data: bits } });
      writeFileSync(p(`h.${dtype === 'float16' ? 'f16' : 'bf16'}`), new Uint8Array(bits.buffer));
      for (const file of [`h-${dtype}.npy`, `h-${dtype}.safetensors`, `h.${dtype === 'float16' ? 'f16' : 'bf16'}`]) {
        const src = await openActivations(p(file), { dIn });
        expectSameRows(concatRows(await collect(src, { batchSize: 50 })), want);
        // Shuffled: the same multiset of rows.
        expect(sortedRowKeys(concatRows(await collect(src, { batchSize: 50, shuffle: true })), dIn)).toEqual(sortedRowKeys(want, dIn));
        // ...in exactly the order the float32 rows get (the 16-bit mixing buffer changes nothing).
        const mix = { batchSize: 17, shuffle: true, seed: 11, epochs: 2, bufferBytes: 40 * dIn * 4, chunkRows: 5 };
        expectSameRows(concatRows(await collect(src, mix)), concatRows(await collect(fromArray(want, dIn), mix)));
      }
    }
  });

  it('reads larger than one conversion chunk (128K elements) convert every element, in order and shuffled', async () => {
    const rows = 2111;
    const dIn = 127; // 2000-row batches are 254,000 elements: a full chunk and a partial one
    const bits = randomHalfBits(rows * dIn, 'bfloat16', 77);
    await writeNpyFixture(p('big-bf16.npy'), 'bfloat16', [rows, dIn], bits);
    const x = new Float64Array(rows * dIn);
    for (let i = 0; i < x.length; i++) x[i] = Math.sin(i * 0.37) * 1e3 + i * 1e-7;
    await writeNpyFixture(p('big-f64.npy'), 'float64', [rows, dIn], x);
    for (const [file, want] of [['big-bf16.npy', Float32Array.from(bits, bf16ToNumber)], ['big-f64.npy', Float32Array.from(x, Math.fround)]] as const) {
      const src = await openActivations(p(file));
      expectSameRows(concatRows(await collect(src, { batchSize: 2000 })), want);
      const mix = { batchSize: 1999, shuffle: true, seed: 5, bufferBytes: 1500 * dIn * 4, chunkRows: 1400 };
      expectSameRows(concatRows(await collect(src, mix)), concatRows(await collect(fromArray(want, dIn), mix)));
    }
  });

  it('shuffled fills of aligned rows spanning several staging runs (256 KiB) keep every row, in the float32 order', async () => {
    const rows = 6007;
    for (const [dtype, dIn] of [['bfloat16', 64], ['float32', 48]] as const) {
      const file = p(`runs-${dtype}.npy`);
      let want: Float32Array;
      if (dtype === 'bfloat16') {
        const bits = randomHalfBits(rows * dIn, 'bfloat16', 91);
        await writeNpyFixture(file, 'bfloat16', [rows, dIn], bits);
        want = Float32Array.from(bits, bf16ToNumber);
      } else {
        want = randomRows(rows, dIn, 92);
        await writeNpyFixture(file, 'float32', [rows, dIn], want);
      }
      const src = await openActivations(file);
      const mix = { batchSize: 1000, shuffle: true, seed: 3, epochs: 2, bufferBytes: 5000 * dIn * 4 };
      expectSameRows(concatRows(await collect(src, mix)), concatRows(await collect(fromArray(want, dIn), mix)));
    }
  });

  it('recycled in-order batches (two fills in flight) keep every row in order across bfloat16 / float32 shards', async () => {
    const dIn = 33;
    const sizes = [157, 301, 89, 1];
    mkdirSync(p('ahead'));
    const parts: Float32Array[] = [];
    for (let i = 0; i < sizes.length; i++) {
      const bits = randomHalfBits(sizes[i]! * dIn, 'bfloat16', 300 + i);
      await writeNpyFixture(p('ahead', `s${i}.npy`), 'bfloat16', [sizes[i]!, dIn], bits);
      parts.push(Float32Array.from(bits, bf16ToNumber));
    }
    const want = concatRows(parts.map((data) => ({ data, rows: data.length / dIn, dIn })));
    const total = want.length / dIn;
    const src = await openActivations(p('ahead'));
    for (const batchSize of [1, 50, 128, 547, 600]) {
      for (const dropLast of [false, true]) {
        const got: Float32Array[] = [];
        for await (const b of src.batches({ batchSize, recycle: true, dropLast })) {
          got.push(b.data.slice());
          b.data.fill(NaN); // reused afterwards: later batches must not see this
        }
        const rows = dropLast ? Math.floor(total / batchSize) * batchSize : total;
        expect(got.length).toBe(Math.ceil(rows / batchSize));
        expectSameRows(concatRows(got.map((data) => ({ data, rows: data.length / dIn, dIn }))), want.subarray(0, rows * dIn));
      }
    }
    await src.close();
    // A non-finite row in a later shard still ends the pass with its name and row.
    const bad = randomRows(50, dIn, 310);
    bad[41 * dIn + 5] = Infinity;
    await writeNpyFixture(p('ahead', 's5.npy'), 'float32', [50, dIn], bad);
    const src2 = await openActivations(p('ahead'));
    await expect(collect(src2, { batchSize: 64, recycle: true })).rejects.toMatchObject({
      code: 'ERR_SAEKIT_NONFINITE',
      message: expect.stringMatching(/row 41 of .*ahead\/s5\.npy has Infinity at column 5/),
    });
    await src2.close();
  });

  it('recycled in-order batches larger than the reads in flight (3 x 4 MiB) keep their order', async () => {
    // Each 14 MiB batch is five reads: the second fill must not take rows before the first has
    // taken all of its own.
    const dIn = 256;
    const batchSize = 28_001;
    const rows = 2 * batchSize + 999;
    const bits = randomHalfBits(rows * dIn, 'bfloat16', 321);
    await writeNpyFixture(p('ahead-big.npy'), 'bfloat16', [rows, dIn], bits);
    const want = Float32Array.from(bits, bf16ToNumber);
    const src = await openActivations(p('ahead-big.npy'));
    const got: Float32Array[] = [];
    for await (const b of src.batches({ batchSize, recycle: true })) got.push(b.data.slice());
    expect(got.map((g) => g.length / dIn)).toEqual([batchSize, batchSize, 999]);
    expectSameRows(concatRows(got.map((data) => ({ data, rows: data.length / dIn, dIn }))), want);
    await src.close();
  });

  it('float64 rounds to nearest float32 (Math.fround); big-endian .npy is swapped', async () => {
    const rows = 77;
    const dIn = 7;
    const x = new Float64Array(rows * dIn);
    for (let i = 0; i < x.length; i++) x[i] = Math.sin(i * 12.9898) * 43758.5453 * 1.000000123;
    const want = Float32Array.from(x, Math.fround);
    await writeNpyFixture(p('d.npy'), 'float64', [rows, dIn], x);
    await writeNpyFixture(p('dbe.npy'), 'float64', [rows, dIn], x, { bigEndian: true });
    await writeSafetensorsFixture(p('d.safetensors'), { x: { dtype: 'float64', shape: [rows, dIn], data: x } });
    for (const f of ['d.npy', 'dbe.npy', 'd.safetensors']) expectSameRows(concatRows(await collect(await openActivations(p(f)), { batchSize: 10 })), want);
    const y = randomRows(rows, dIn, 8);
    await writeNpyFixture(p('fbe.npy'), 'float32', [rows, dIn], y, { bigEndian: true });
    expectSameRows(concatRows(await collect(await openActivations(p('fbe.npy')), { batchSize: 10 })), y);
    const hb = randomHalfBits(rows * dIn, 'float16', 9);
    await writeNpyFixture(p('hbe.npy'), 'float16', [rows, dIn], hb, { bigEndian: true });
    expectSameRows(concatRows(await collect(await openActivations(p('hbe.npy')), { batchSize: 10 })), Float32Array.from(hb, f16ToNumber));
  });

  it('Fortran-order 2-D .npy files are read correctly (float32 and bfloat16), in order and shuffled', async () => {
    const x = randomRows(301, 33, 41);
    await writeNpyFixture(p('fort.npy'), 'float32', [301, 33], x, { fortran: true });
    const src = await openActivations(p('fort.npy'));
    expectSameRows(concatRows(await collect(src, { batchSize: 64 })), x);
    expect(sortedRowKeys(concatRows(await collect(src, { batchSize: 64, shuffle: true, chunkRows: 10, bufferBytes: 33 * 4 * 30 })), 33)).toEqual(sortedRowKeys(x, 33));
    const bits = randomHalfBits(301 * 33, 'bfloat16', 42);
    await writeNpyFixture(p('fortbf.npy'), 'bfloat16', [301, 33], bits, { fortran: true });
    expectSameRows(concatRows(await collect(await openActivations(p('fortbf.npy')), { batchSize: 64 })), Float32Array.from(bits, bf16ToNumber));
  });

  /**
   * An N-D Fortran-order .npy of fresh random on-disk bytes (finite values), as numpy writes
   * np.asfortranarray(a): the header and the elements in column-major order. Returns the path.
   */
  function writeFortranNpy(name: string, kind: 'float32' | 'float32-be' | 'bfloat16' | 'float64', shape: number[], seed: number): string {
    const n = shape.reduce((a, b) => a * b, 1);
    const dtype = kind === 'float32-be' ? 'float32' : kind;
    let body: Uint8Array;
    if (kind === 'bfloat16') body = new Uint8Array(randomHalfBits(n, 'bfloat16', seed).buffer);
    else if (kind === 'float64') body = new Uint8Array(Float64Array.from(randomRows(n, 1, seed), (v) => v * 1.000000123).buffer);
    else body = new Uint8Array(randomRows(n, 1, seed).buffer);
    if (kind === 'float32-be') for (let i = 0; i < body.length; i += 4) body.subarray(i, i + 4).reverse();
    const head = npyHeader(dtype, shape, { fortran: true, bigEndian: kind === 'float32-be' });
    writeFileSync(p(name), Buffer.concat([head, body]));
    return p(name);
  }

  /** io.readNpy's C-order values as the float32 a source yields. */
  async function readNpyAsF32(file: string): Promise<Float32Array> {
    const t = await readNpy(file);
    if (t.dtype === 'bfloat16') return Float32Array.from(t.data as Uint16Array, bf16ToNumber);
    return Float32Array.from(t.data as Float32Array | Float64Array, Math.fround);
  }

  it('Fortran-order N-D .npy files with at most one leading dimension above 1 stream what io.readNpy reads (fresh random data, odd sizes)', async () => {
    const seed = Date.now() >>> 0;
    const shapes = [[7, 5], [7, 1], [1, 5], [1, 7, 5], [7, 1, 5], [1, 1, 7, 5], [3, 1, 1], [1, 7, 1], [1, 1, 1], [101, 1, 33], [1, 101, 1, 33]];
    for (const [i, shape] of shapes.entries()) {
      for (const kind of ['float32', 'float32-be', 'bfloat16', 'float64'] as const) {
        const label = `seed ${seed}, ${kind} fortran_order shape (${shape.join(', ')})`;
        const file = writeFortranNpy(`fnd-${i}-${kind}.npy`, kind, shape, seed + i);
        const want = await readNpyAsF32(file);
        const dIn = shape[shape.length - 1]!;
        const src = await openActivations(file);
        const got = concatRows(await collect(src, { batchSize: 8 }));
        expect(got.length, label).toBe(want.length);
        expect(Buffer.compare(Buffer.from(got.buffer), Buffer.from(want.buffer)), label).toBe(0);
        expect(sortedRowKeys(concatRows(await collect(src, { batchSize: 8, shuffle: true, chunkRows: 3, bufferBytes: dIn * 4 * 8 })), dIn), label).toEqual(sortedRowKeys(want, dIn));
        await src.close();
      }
    }
  });

  it('Fortran-order .npy files with two or more leading dimensions above 1 are refused whatever dIn is (a (2, 3, 1) array streamed permuted)', async () => {
    for (const shape of [[2, 3, 1], [2, 2, 1, 1], [2, 3, 5], [3, 1, 2, 5]]) {
      const file = writeFortranNpy(`fbad-${shape.join('x')}.npy`, 'float32', shape, 5);
      await expect(openActivations(file)).rejects.toMatchObject({
        code: 'ERR_SAEKIT_FORMAT',
        message: expect.stringContaining(`Expected C-order (or 2-D) data in ${file} but it is a ${shape.length}-D Fortran-order array of shape [${shape.join(', ')}]`),
      });
    }
    // The same shape in C order streams as it is.
    const x = randomRows(6, 1, 3);
    await writeNpyFixture(p('c231.npy'), 'float32', [2, 3, 1], x);
    expectSameRows(concatRows(await collect(await openActivations(p('c231.npy')))), x);
  });
});

describe('shuffling', () => {
  const rows = 2003;
  const dIn = 7;
  let x: Float32Array;
  let src: ActivationSource;
  beforeAll(async () => {
    x = randomRows(rows, dIn, 51);
    const parts = [x.subarray(0, 500 * dIn), x.subarray(500 * dIn, 1700 * dIn), x.subarray(1700 * dIn)];
    mkdirSync(p('mix'));
    for (const [i, part] of parts.entries()) await writeNpyFixture(p('mix', `s${i}.npy`), 'float32', [part.length / dIn, dIn], part);
    src = await openActivations(p('mix'));
  });

  const small = { batchSize: 64, shuffle: true, bufferBytes: 150 * 7 * 4, chunkRows: 16 } as const;

  it('each epoch is a permutation of all rows; epochs differ; batch sizes hold per epoch', async () => {
    const all = await collect(src, { ...small, epochs: 3 });
    checkBatches(all, dIn);
    const epochs = epochsOf(all, rows);
    expect(epochs).toHaveLength(3);
    const want = sortedRowKeys(x, dIn);
    const flat = epochs.map((e) => concatRows(e));
    for (const [i, e] of epochs.entries()) {
      expect(e.map((b) => b.rows)).toEqual([...Array(31).fill(64), 19]);
      expect(sortedRowKeys(flat[i]!, dIn)).toEqual(want);
    }
    expect(flat[0]).not.toEqual(flat[1]);
    expect(flat[1]).not.toEqual(flat[2]);
    const dropped = await collect(src, { ...small, epochs: 2, dropLast: true });
    expect(dropped.map((b) => b.rows)).toEqual(Array(62).fill(64));
  });

  it('is deterministic: same seed (number or bigint) => same batches; different seeds differ', async () => {
    const a = concatRows(await collect(src, { ...small, seed: 7 }));
    const b = concatRows(await collect(src, { ...small, seed: 7n }));
    const again = await openActivations(p('mix'));
    const c = concatRows(await collect(again, { ...small, seed: 7 }));
    expectSameRows(a, b);
    expectSameRows(a, c);
    const d = concatRows(await collect(src, { ...small, seed: 8 }));
    expect(d).not.toEqual(a);
    expect(sortedRowKeys(d, dIn)).toEqual(sortedRowKeys(a, dIn));
    // Default seed 0, default buffer (the whole source fits: one permutation).
    const e = concatRows(await collect(src, { batchSize: 100, shuffle: true }));
    const f = concatRows(await collect(src, { batchSize: 100, shuffle: true, seed: 0 }));
    expectSameRows(e, f);
    expect(sortedRowKeys(e, dIn)).toEqual(sortedRowKeys(x, dIn));
  });

  it('a file source and fromArray on the same rows give the same shuffled sequence', async () => {
    const arr = fromArray(x, dIn);
    const fileOrder = concatRows(await collect(src, { ...small, seed: 3, epochs: 2 }));
    const arrOrder = concatRows(await collect(arr, { ...small, seed: 3, epochs: 2 }));
    // Same shard boundaries are needed for the same chunks: one shard vs three differ...
    expect(sortedRowKeys(arrOrder.subarray(0, rows * dIn), dIn)).toEqual(sortedRowKeys(x, dIn));
    await writeNpyFixture(p('whole.npy'), 'float32', [rows, dIn], x);
    const whole = concatRows(await collect(await openActivations(p('whole.npy')), { ...small, seed: 3, epochs: 2 }));
    expectSameRows(whole, arrOrder);
    expect(fileOrder).not.toEqual(arrOrder);
  });

  it('mixes rows from across the dataset even with a small buffer (chunk order is permuted)', async () => {
    const index = new Map<string, number>();
    for (let r = 0; r < rows; r++) index.set(Array.from(x.subarray(r * dIn, (r + 1) * dIn)).join(','), r);
    const served = concatRows(await collect(src, { ...small, seed: 11 }));
    const pos: number[] = [];
    for (let r = 0; r < rows; r++) pos.push(index.get(Array.from(served.subarray(r * dIn, (r + 1) * dIn)).join(','))!);
    // The first batch holds rows from several distant places of the file.
    const first = pos.slice(0, 64);
    expect(Math.max(...first) - Math.min(...first)).toBeGreaterThan(rows / 2);
    expect(new Set(first.map((r) => Math.floor(r / 16))).size).toBeGreaterThan(5);
    // Served position is nearly uncorrelated with file position.
    const n = rows;
    const mean = (n - 1) / 2;
    let cov = 0;
    let v = 0;
    for (let i = 0; i < n; i++) {
      cov += (i - mean) * (pos[i]! - mean);
      v += (i - mean) ** 2;
    }
    expect(Math.abs(cov / v)).toBeLessThan(0.2);
  });

  it('works with the smallest buffer (three rows) and one-row chunks, and with batches larger than the buffer', async () => {
    const tiny = await collect(src, { batchSize: 5, shuffle: true, bufferBytes: 3 * dIn * 4, chunkRows: 1, seed: 1 });
    expect(sortedRowKeys(concatRows(tiny), dIn)).toEqual(sortedRowKeys(x, dIn));
    const big = await collect(src, { batchSize: 1000, shuffle: true, bufferBytes: 40 * dIn * 4, seed: 2 });
    expect(big.map((b) => b.rows)).toEqual([1000, 1000, 3]);
    expect(sortedRowKeys(concatRows(big), dIn)).toEqual(sortedRowKeys(x, dIn));
    await expect(collect(src, { shuffle: true, bufferBytes: 3 * dIn * 4 - 1 })).rejects.toMatchObject({
      code: 'ERR_SAEKIT_ARG',
      message: expect.stringMatching(/three rows of 7 float32 values\) for options\.bufferBytes/),
    });
  });

  it("the mixing buffer's draw is uniform: each resident row is served in the first round with probability h / n (fresh seeds)", async () => {
    // 12 rows in one chunk, a buffer of 9 rows (half 3): the first round draws 3 of the 6 resident
    // rows 0..5, each with probability 1/2 (a biased swap, j drawn from all n, gives 0.42 to 0.65).
    const n = 12;
    const src = fromArray(Float32Array.from({ length: n }, (_, i) => i), 1);
    const trials = 2000;
    const first = new Float64Array(n);
    const base = BigInt((Date.now() * 7919) % 2 ** 40);
    for (let t = 0; t < trials; t++) {
      for await (const b of src.batches({ batchSize: 3, shuffle: true, seed: base + BigInt(t), bufferBytes: 9 * 4, chunkRows: n })) {
        for (const v of b.data) first[v]! += 1 / trials;
        break;
      }
    }
    // 5 standard deviations of a frequency of 1/2 over 2000 trials is 0.056.
    for (let r = 0; r < 6; r++) expect(Math.abs(first[r]! - 0.5), `seeds from ${base}: row ${r} served first with frequency ${first[r]}`).toBeLessThanOrEqual(0.056);
    for (let r = 6; r < n; r++) expect(first[r], `row ${r} is not resident yet`).toBe(0);
  });

  it('the shuffled row order does not depend on batchSize (only the cuts move)', async () => {
    const a = concatRows(await collect(src, { ...small, seed: 9, batchSize: 64 }));
    const b = concatRows(await collect(src, { ...small, seed: 9, batchSize: 100 }));
    const c = concatRows(await collect(src, { ...small, seed: 9, batchSize: 1 }));
    expectSameRows(a, b);
    expectSameRows(a, c);
  });

  it('prefetching never reorders: a slow consumer, a fast one and concurrent iterations see the same batches', async () => {
    const opts = { ...small, seed: 5, epochs: 2 };
    const fast = await collect(src, opts);
    const slow: Batch[] = [];
    for await (const b of src.batches(opts)) {
      slow.push(b);
      if (slow.length % 7 === 0) await new Promise((r) => setTimeout(r, 2));
    }
    const [c1, c2] = await Promise.all([collect(src, opts), collect(src, opts)]);
    for (const other of [slow, c1, c2]) expectSameRows(concatRows(other), concatRows(fast));
    // Batches are fresh: changing one changes nothing else.
    fast[0]!.data.fill(0);
    expectSameRows(concatRows(slow), concatRows(c1));
  });

  it('recycle: the same batches from a few reused arrays, valid until the next next()', async () => {
    const sources: [string, ActivationSource][] = [
      ['file', src],
      ['array', fromArray(x, dIn)],
    ];
    for (const [, s] of sources) {
      for (const opts of [{ batchSize: 100 }, { ...small, seed: 9, epochs: 2 }, { ...small, batchSize: 333, dropLast: true }]) {
        const want = concatRows(await collect(s, opts));
        const got: Float32Array[] = [];
        const buffers = new Set<ArrayBufferLike>();
        let slowly = 0;
        for await (const b of s.batches({ ...opts, recycle: true })) {
          expect(b.data.length).toBe(b.rows * dIn);
          got.push(b.data.slice()); // copied now: the array is reused after next()
          buffers.add(b.data.buffer);
          if (++slowly % 5 === 0) await new Promise((r) => setTimeout(r, 1));
          b.data.fill(NaN); // the consumer may modify it; later batches are unaffected
        }
        expectSameRows(concatRows(got.map((data) => ({ data, rows: data.length / dIn, dIn }))), want);
        // Reused: at most the read-ahead (4 MiB of batches here) plus the held and the filling ones.
        expect(buffers.size).toBeLessThan(got.length);
        expect(buffers.size).toBeLessThanOrEqual(Math.ceil((4 << 20) / ((opts.batchSize ?? 4096) * dIn * 4)) + 3);
      }
    }
    await expect(collect(src, { recycle: 'yes' as unknown as boolean })).rejects.toThrow(/options\.recycle/);
  });

  it('a closed pool offers its own arrays to later passes but not those from alloc (page-locked memory)', () => {
    const n = 4099 + Math.floor(Math.random() * 1000); // a size no other pass uses
    const fromAlloc: Float32Array[] = [];
    const pool = new BatchPool(n, true, (m) => {
      if (fromAlloc.length >= 2) return undefined;
      fromAlloc.push(new Float32Array(m));
      return fromAlloc[fromAlloc.length - 1];
    });
    const [a, b, c] = [pool.take(), pool.take(), pool.take()];
    expect(a).toBe(fromAlloc[0]);
    expect(b).toBe(fromAlloc[1]);
    expect(fromAlloc).not.toContain(c);
    pool.give(a);
    pool.give(c);
    expect(pool.take()).toBe(c); // reused within the pass, last in first out
    pool.give(c);
    pool.close();
    pool.give(b); // handed back after the pass ended
    const spares: Float32Array[] = [];
    for (let s = takeSpare(n); s; s = takeSpare(n)) spares.push(s);
    expect(spares.length).toBe(1);
    expect(spares[0]).toBe(c);
  });

  it("a pool takes from alloc only whole arrays of its size at offset 0, gives back only its own arrays' buffers, and offers an array given back after close() to later passes", () => {
    const n = 5099 + Math.floor(Math.random() * 1000); // a size no other pass uses
    // alloc's wrong answers: short views of a buffer of the right size, an offset view, a longer buffer.
    const wrong = [new Float32Array(new ArrayBuffer(n * 4), 0, n - 1), new Float32Array(new ArrayBuffer(n * 4 + 4), 4, n), new Float32Array(n + 1).subarray(0, n)];
    const offered = [...wrong];
    const pool = new BatchPool(n, true, () => offered.shift());
    for (let i = 0; i < wrong.length; i++) {
      const a = pool.take();
      expect(a.length).toBe(n);
      expect(a.buffer.byteLength).toBe(n * 4);
      expect(wrong.map((w) => w.buffer)).not.toContain(a.buffer);
    }
    // Arrays that are not the pool's own size and layout are not taken back.
    pool.give(new Float32Array(n + 1).subarray(0, n));
    pool.give(new Float32Array(new ArrayBuffer(n * 4 + 8), 8, n - 1));
    const own = pool.take();
    expect(own.length).toBe(n);
    expect(own.buffer.byteLength).toBe(n * 4);
    pool.give(own.subarray(0, 7)); // a short batch's view: its whole array comes back
    const again = pool.take();
    expect(again.buffer).toBe(own.buffer);
    expect(again.length).toBe(n);
    pool.close();
    pool.give(again); // the pass ended while the consumer held it: a spare for later passes
    expect(takeSpare(n)).toBe(again);
    expect(takeSpare(n)).toBeUndefined();
  });
});

describe('spare memory gives its pages back', () => {
  const linux = process.platform === 'linux';
  const MiB = 1 << 20;

  it.runIf(linux)('discardHost frees an allocHost block at once and leaves it usable; other buffers are left alone', () => {
    const n = (48 * MiB) / 4 + 4096 * (1 + Math.floor(Math.random() * 100)); // 48 MiB and an odd number of pages more
    const a = new Float32Array(native().allocHost(n * 4), 0, n);
    const v = 1 + Math.floor(Math.random() * 1000);
    a.fill(v);
    const before = process.memoryUsage.rss();
    expect(native().discardHost(a.buffer as ArrayBuffer)).toBe(true);
    const freed = before - process.memoryUsage.rss();
    expect(freed).toBeGreaterThan(40 * MiB);
    // Still a valid buffer: zeros where it was discarded, and writable again.
    expect(a.length).toBe(n);
    for (let i = 0; i < n; i += 1021) expect(a[i]).toBe(0);
    expect(a[n - 1]).toBe(0);
    a[n - 1] = v;
    a[0] = -v;
    expect([a[0], a[n - 1]]).toEqual([-v, v]);
    // Not allocHost's: nothing done.
    const plain = new Float32Array(n).fill(v);
    expect(native().discardHost(plain.buffer)).toBe(false);
    expect(plain[n >> 1]).toBe(v);
    const small = new Float32Array(native().allocHost(4096 + 12), 0, 1027).fill(v); // 64-byte aligned, not whole pages
    expect(native().discardHost(small.buffer as ArrayBuffer)).toBe(false);
    expect(small[1026]).toBe(v);
    expect(() => native().discardHost(a as unknown as ArrayBuffer)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/buffer/) }));
  });

  it('allocHost over 4 GiB gives a usable buffer (Node 20 refuses external buffers that large: a plain one, not a double free)', () => {
    // Untouched memory: only the pages written below are ever faulted in. The same
    // external-or-plain helper hands every native result (toArray, weights) to JS.
    const bytes = 2 ** 32 + 64 * (1 + Math.floor(Math.random() * 100));
    const ab = native().allocHost(bytes);
    expect(ab.byteLength).toBe(bytes);
    const f = new Float32Array(ab);
    const v = Math.random();
    f[f.length - 1] = v;
    f[0] = -v;
    expect([f[0], f[f.length - 1]]).toEqual([Math.fround(-v), Math.fround(v)]);
    expect(f[f.length >> 1]).toBe(0);
  });

  it.runIf(linux)('a spare keeps its pages while passes take it, and gives them back when a later pass ends without it or it idles', () => {
    // A size no pass in this file uses, at least 2 MiB (allocHost memory).
    const n = (2 * MiB) / 4 + 1024 * (3 + Math.floor(Math.random() * 500));
    const a = allocLongLivedF32(n).fill(7);
    const early = beginPass();
    releaseSpare(a);
    endPass(early); // began before the release: could not have taken it
    expect(a[n >> 1]).toBe(7);
    const p = beginPass();
    expect(takeSpare(n)).toBe(a); // taken by this pass
    releaseSpare(a); // and released as it ends
    endPass(p);
    expect(a[n >> 1]).toBe(7);
    const q = beginPass();
    endPass(q); // a later pass ended without taking it
    expect(a[n >> 1]).toBe(0);
    expect(a[n - 1]).toBe(0);
    expect(takeSpare(n)).toBe(a); // still reusable
    a.fill(5);
    releaseSpare(a);
    _sweepSparesAfter(10);
    expect(a[3]).toBe(5);
    _sweepSparesAfter(5000); // idle
    expect(a[3]).toBe(0);
    expect(takeSpare(n)).toBe(a);
    expect(takeSpare(n)).toBeUndefined();
  });

  it.runIf(linux)("a shuffled pass's mixing buffer is reused by the next pass, and discarded when a pass ends without it", async () => {
    const dIn = 64;
    const rows = 2000 + Math.floor(Math.random() * 1000);
    const src = fromArray(randomRows(rows, dIn, 91), dIn);
    // A 24 MiB mixing buffer (three windows of 32768 rows; the source does not fit in two) of ones.
    const ones = fromArray(new Float32Array(70001 * dIn).fill(1), dIn);
    const n = 3 * 32768 * dIn;
    const shuffled = async () => {
      for await (const b of ones.batches({ batchSize: 4096, shuffle: true, bufferBytes: 24 * MiB })) expect(b.data[b.data.length - 1]).toBe(1);
    };
    const inOrder = async () => {
      let got = 0;
      for await (const b of src.batches({ batchSize: 1000 })) got += b.rows;
      expect(got).toBe(rows);
    };
    await shuffled();
    const m = takeSpare(n)!;
    expect(m).toBeDefined();
    expect([m[0], m[n / 3], m[(2 * n) / 3 - 1]]).toEqual([1, 1, 1]); // the first two windows were filled
    releaseSpare(m);
    await shuffled(); // takes it (a second mixing buffer would leave two spares below)
    const again = takeSpare(n)!;
    expect(again).toBe(m);
    expect(takeSpare(n)).toBeUndefined();
    expect(m[0]).toBe(1);
    releaseSpare(m);
    await inOrder(); // no use for it
    expect(takeSpare(n)).toBe(m);
    for (let i = 0; i < n; i += 4099) expect(m[i]).toBe(0);
  });

  it('a spare whose buffer was detached (transferred away) after its release is not handed out; a live one of the same size still is', () => {
    const n = 7001 + Math.floor(Math.random() * 1000) * 2; // a size no other test uses
    const live = new Float32Array(n).fill(2);
    const gone = new Float32Array(n).fill(1);
    releaseSpare(live);
    releaseSpare(gone); // the newer: taken first while it lives
    structuredClone(gone.buffer, { transfer: [gone.buffer] });
    expect(gone.length).toBe(0);
    const got = takeSpare(n);
    expect(got === live, 'the live spare').toBe(true);
    expect(got!.length).toBe(n);
    expect(takeSpare(n)).toBeUndefined();
  });

  it.runIf(process.platform === 'linux')('of two spares of one size, the one released last (still holding its pages) is handed out first', () => {
    const n = (2 * MiB) / 4 + 1024 * (501 + Math.floor(Math.random() * 400)); // allocHost memory, a size no other test uses
    const old = allocLongLivedF32(n).fill(4);
    releaseSpare(old);
    _sweepSparesAfter(5000); // idle: gives its pages back
    expect(old[7]).toBe(0);
    const recent = allocLongLivedF32(n).fill(6);
    releaseSpare(recent);
    // (identity compared as a boolean: a failing toBe would print two 2 MiB arrays)
    expect(takeSpare(n) === recent, 'the spare released last').toBe(true);
    expect(recent[7]).toBe(6);
    expect(takeSpare(n) === old, 'then the older one').toBe(true);
    expect(takeSpare(n)).toBeUndefined();
  });
});

describe('native screens and float32 reads (default kernels)', () => {
  screenSuite();
});

describe('non-finite rows', () => {
  const dIn = 7;
  let a: Float32Array;
  let b: Float32Array;
  beforeAll(async () => {
    mkdirSync(p('nan'));
    a = randomRows(40, dIn, 61);
    b = randomRows(30, dIn, 62);
    b[12 * dIn + 3] = NaN;
    b[20 * dIn] = -Infinity;
    await writeNpyFixture(p('nan', 'a.npy'), 'float32', [40, dIn], a);
    await writeNpyFixture(p('nan', 'b.npy'), 'float32', [30, dIn], b);
  });

  it("'error' (default) names the file and the row within it", async () => {
    const src = await openActivations(p('nan'));
    for (const shuffle of [false, true]) {
      await expect(collect(src, { batchSize: 8, shuffle })).rejects.toMatchObject({
        code: 'ERR_SAEKIT_NONFINITE',
        message: expect.stringMatching(/row 12 of .*nan\/b\.npy has NaN at column 3/),
      });
    }
    await src.close();
  });

  it('a pass over a finite source stops after an epoch that gave no batch (the later epochs hold the same rows)', async () => {
    // Every row non-finite, or fewer rows left than a batch with dropLast: the old code read all
    // 1000 epochs (a Trainer plans about totalTokens / rows of them) before ending with nothing.
    const d = 5;
    const rows = 300;
    const x = new Float32Array(rows * d).fill(1);
    for (let r = 0; r < rows; r++) if (r !== 7) x[r * d + (r % d)] = Number.NaN;
    for (const shuffle of [false, true]) {
      const src = fromArray(x, d);
      const got = await collect(src, { batchSize: 8, epochs: 1000, onNonFinite: 'skip', dropLast: true, shuffle });
      expect(got, `shuffle ${shuffle}`).toEqual([]);
      // One epoch read and one more stopped before its first read.
      expect(src.skippedRows, `shuffle ${shuffle}`).toBe(rows - 1);
      // An epoch that gives a batch is followed by the next: all 3 epochs of the one good row.
      const some = await collect(src, { batchSize: 1, epochs: 3, onNonFinite: 'skip', shuffle });
      expect(some.map((b) => b.data[0]), `shuffle ${shuffle}`).toEqual([1, 1, 1]);
      await src.close();
    }
  });

  it("'skip' drops the rows and counts them (source default or per call)", async () => {
    const want = concatRows([{ data: a }, { data: b.subarray(0, 12 * dIn) }, { data: b.subarray(13 * dIn, 20 * dIn) }, { data: b.subarray(21 * dIn) }]);
    const src = await openActivations(p('nan'), { onNonFinite: 'skip' });
    const bs = await collect(src, { batchSize: 8 });
    expect(bs.map((x) => x.rows)).toEqual([...Array(8).fill(8), 4]);
    expectSameRows(concatRows(bs), want);
    expect(src.skippedRows).toBe(2);
    // Small reads: several in flight per batch, rows after a dropped one move up.
    expectSameRows(concatRows(await collect(src, { batchSize: 8, chunkRows: 3 })), want);
    expect(src.skippedRows).toBe(4);
    const sh = await collect(src, { batchSize: 8, shuffle: true, epochs: 2, bufferBytes: 10 * dIn * 4, chunkRows: 4 });
    const [e1, e2] = epochsOf(sh, 68);
    expect(sortedRowKeys(concatRows(e1!), dIn)).toEqual(sortedRowKeys(want, dIn));
    expect(sortedRowKeys(concatRows(e2!), dIn)).toEqual(sortedRowKeys(want, dIn));
    expect(src.skippedRows).toBe(8);
    // Per-call override of the source default.
    await expect(collect(src, { onNonFinite: 'error' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_NONFINITE' });
    const strict = await openActivations(p('nan'));
    expectSameRows(concatRows(await collect(strict, { batchSize: 100, onNonFinite: 'skip' })), want);
  });

  it('float64 values that overflow float32 count as non-finite', async () => {
    const x = new Float64Array(3 * dIn).fill(1);
    x[dIn + 2] = 1e300;
    await writeNpyFixture(p('big.npy'), 'float64', [3, dIn], x);
    await expect(collect(await openActivations(p('big.npy')))).rejects.toMatchObject({
      code: 'ERR_SAEKIT_NONFINITE',
      message: expect.stringMatching(/row 1 of .*big\.npy \(after rounding float64 to float32\) has Infinity/),
    });
    // A NaN was a NaN in the file: no rounding to blame.
    x[dIn + 2] = NaN;
    await writeNpyFixture(p('nan64.npy'), 'float64', [3, dIn], x);
    await expect(collect(await openActivations(p('nan64.npy')))).rejects.toMatchObject({
      code: 'ERR_SAEKIT_NONFINITE',
      message: expect.stringMatching(/row 1 of .*nan64\.npy has NaN at column 2/),
    });
  });

  it('the float32 screen is exact: huge finite values never look non-finite, any NaN or infinity does', () => {
    const max = 3.4028234663852886e38;
    const a = new Float32Array(1001).fill(max);
    expect(anyNonFinite(a, 0, a.length)).toBe(false);
    a.fill(-max, 500);
    expect(anyNonFinite(a, 0, a.length)).toBe(false);
    for (const bad of [Infinity, -Infinity, NaN]) {
      for (const at of [0, 7, 8, 999, 1000]) {
        const b = a.slice();
        b[at] = bad;
        expect(anyNonFinite(b, 0, b.length)).toBe(true);
        expect(anyNonFinite(b, at, at + 1)).toBe(true);
        expect(anyNonFinite(b, at + 1, b.length)).toBe(false);
      }
    }
    const both = new Float32Array(16);
    both[3] = Infinity;
    both[11] = -Infinity;
    expect(anyNonFinite(both, 0, 16)).toBe(true);
  });

  it('16-bit files: NaN and infinities are found after conversion; bad rows are named or skipped', async () => {
    for (const dtype of ['float16', 'bfloat16'] as const) {
      const decode = dtype === 'float16' ? f16ToNumber : bf16ToNumber;
      const bits = randomHalfBits(20 * dIn, dtype, 64);
      bits[5 * dIn + 1] = dtype === 'float16' ? 0x7c00 : 0x7f80; // +inf
      bits[9 * dIn + 6] = dtype === 'float16' ? 0xfe00 : 0xffc1; // NaN
      await writeNpyFixture(p(`bad-${dtype}.npy`), dtype, [20, dIn], bits);
      await expect(collect(await openActivations(p(`bad-${dtype}.npy`)))).rejects.toMatchObject({
        code: 'ERR_SAEKIT_NONFINITE',
        message: expect.stringMatching(new RegExp(`row 5 of .*bad-${dtype}\\.npy has Infinity at column 1`)),
      });
      const src = await openActivations(p(`bad-${dtype}.npy`), { onNonFinite: 'skip' });
      const got = concatRows(await collect(src, { batchSize: 8 }));
      const all = Float32Array.from(bits, decode);
      const want = concatRows([{ data: all.subarray(0, 5 * dIn) }, { data: all.subarray(6 * dIn, 9 * dIn) }, { data: all.subarray(10 * dIn) }]);
      expectSameRows(got, want);
      expect(src.skippedRows).toBe(2);
      // Shuffled, the mixing buffer keeps the 16-bit values: the same rows, named or skipped.
      for (const bufferRows of [4, 7, 30]) {
        const opts = { batchSize: 3, shuffle: true, seed: 3, bufferBytes: bufferRows * dIn * 4, chunkRows: 2 };
        await expect(collect(await openActivations(p(`bad-${dtype}.npy`)), opts)).rejects.toMatchObject({
          code: 'ERR_SAEKIT_NONFINITE',
          message: expect.stringMatching(new RegExp(`row (5|9) of .*bad-${dtype}\.npy has (Infinity at column 1|NaN at column 6)`)),
        });
        const sh = concatRows(await collect(src, opts));
        expect(sortedRowKeys(sh, dIn)).toEqual(sortedRowKeys(want, dIn));
      }
      expect(src.skippedRows).toBe(8);
    }
  });

  it('arrays and iterables: error naming the row, or skip (the caller\'s arrays are not modified)', async () => {
    const x = randomRows(10, dIn, 63);
    x[4 * dIn + 6] = Infinity;
    const copy = x.slice();
    await expect(collect(fromArray(x, dIn), { batchSize: 3 })).rejects.toMatchObject({ code: 'ERR_SAEKIT_NONFINITE', message: expect.stringMatching(/row 4 of the array has Infinity at column 6/) });
    const arr = fromArray(x, dIn);
    const got = concatRows(await collect(arr, { batchSize: 3, onNonFinite: 'skip' }));
    expectSameRows(got, concatRows([{ data: x.subarray(0, 4 * dIn) }, { data: x.subarray(5 * dIn) }]));
    expect(arr.skippedRows).toBe(1);
    expectSameRows(x, copy);
    const it = fromAsyncIterable(
      (async function* () {
        yield x.subarray(0, 3 * dIn);
        yield x.subarray(3 * dIn);
      })(),
      dIn,
    );
    await expect(collect(it)).rejects.toMatchObject({ message: expect.stringMatching(/row 4 of the iterable \(row 1 of item 1\)/) });
  });
});

describe('fromArray and fromAsyncIterable', () => {
  it('fromArray: exact in order, permutation shuffled, validation', async () => {
    const x = randomRows(333, 33, 71);
    const src = fromArray(x, 33);
    expect([src.dIn, src.numRows]).toEqual([33, 333]);
    const bs = await collect(src, { batchSize: 50 });
    checkBatches(bs, 33);
    expectSameRows(concatRows(bs), x);
    expect(sortedRowKeys(concatRows(await collect(src, { batchSize: 50, shuffle: true, bufferBytes: 33 * 4 * 60 })), 33)).toEqual(sortedRowKeys(x, 33));
    expect(() => fromArray(x, 32)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_SHAPE', message: expect.stringMatching(/not a multiple of 32/) }));
    expect(() => fromArray([1, 2] as never, 1)).toThrow(/Expected a Float32Array for data/);
    expect(() => fromArray(x, 0)).toThrow(/for dIn/);
  });

  it('a pass over an array drained by a consumer that awaits nothing else still lets timers run (a turn of the loop per ~20 ms slice)', async () => {
    // Every batch of an in-memory source settles in microtasks: without a turn of the event loop
    // now and then, a 1 ms interval never fired during a whole pass (0 ticks in ~1 s). The pass
    // looks at the slices' clock (performance.now) once per CHECK_UNITS values served and turns
    // the loop when its ~20 ms slice has run. Here that clock moves 25 ms per reading, so every
    // look finds its slice over: the turns a pass owes are set by its length alone, not by how
    // fast a (possibly loaded) machine runs it. The interval fires at each turn (4096 batches of
    // real work, far more than 1 ms, lie between two), but perhaps not at a first turn taken at
    // once: at least one tick per look, less one.
    const src = fromArray(randomRows(64, 4, 5), 4);
    let clock = performance.now();
    const fake = vi.spyOn(performance, 'now').mockImplementation(() => (clock += 25));
    try {
      for (const [shuffle, epochs] of [[false, 3_000], [true, 3_000], [false, 1_500]] as const) {
        let ticks = 0;
        const iv = setInterval(() => ticks++, 1);
        let batches = 0;
        try {
          for await (const b of src.batches({ batchSize: 8, epochs, shuffle })) batches += b.rows > 0 ? 1 : 0;
        } finally {
          clearInterval(iv);
        }
        expect(batches).toBe(8 * epochs);
        const looks = Math.floor((batches * 8 * 4) / CHECK_UNITS); // 5, 5 and 2
        expect(ticks, `shuffle ${shuffle}, ${epochs} epochs: ${ticks} ticks for ${looks} looks at the clock`).toBeGreaterThanOrEqual(looks - 1);
      }
    } finally {
      fake.mockRestore();
    }
    await src.close();
  });

  it('fromAsyncIterable: Float32Array and Batch items of any size, re-iterable epochs, shuffle', async () => {
    const x = randomRows(250, 7, 72);
    const cuts = [0, 3, 3, 50, 51, 199, 250];
    const iterable = {
      async *[Symbol.asyncIterator]() {
        for (let i = 0; i + 1 < cuts.length; i++) {
          const part = x.slice(cuts[i]! * 7, cuts[i + 1]! * 7);
          yield i % 2 ? part : { rows: cuts[i + 1]! - cuts[i]!, dIn: 7, data: part };
        }
      },
    };
    const src = fromAsyncIterable(iterable, 7);
    expect(src.numRows).toBeUndefined();
    const bs = await collect(src, { batchSize: 32, epochs: 2 });
    expect(bs.map((b) => b.rows)).toEqual([...Array(7).fill(32), 26, ...Array(7).fill(32), 26]);
    expectSameRows(concatRows(bs), concatRows([{ data: x }, { data: x }]));
    const sh = await collect(src, { batchSize: 32, shuffle: true, bufferBytes: 60 * 7 * 4, epochs: 2, seed: 4 });
    const [e1, e2] = epochsOf(sh, 250);
    expect(sortedRowKeys(concatRows(e1!), 7)).toEqual(sortedRowKeys(x, 7));
    expect(sortedRowKeys(concatRows(e2!), 7)).toEqual(sortedRowKeys(x, 7));
    expect(concatRows(e1!)).not.toEqual(concatRows(e2!));
  });

  it('reads ahead of the consumer: the next batch is being prepared while the current one is held', async () => {
    let requested = 0;
    const src = fromAsyncIterable(
      {
        async *[Symbol.asyncIterator]() {
          for (let i = 0; i < 10; i++) {
            requested++;
            yield randomRows(4, 7, 90 + i);
          }
        },
      },
      7,
    );
    const it = src.batches({ batchSize: 4 })[Symbol.asyncIterator]();
    await it.next();
    await new Promise((r) => setTimeout(r, 20));
    expect(requested).toBeGreaterThanOrEqual(2);
    // Two next() calls in flight at once both resolve, in order.
    const [x, y] = await Promise.all([it.next(), it.next()]);
    expect([x.done, y.done]).toEqual([false, false]);
    await it.return!();
  });

  it('an object whose [Symbol.asyncIterator]() resets it and returns itself serves every pass and epoch; one that returns itself spent is an error, not an empty pass', async () => {
    // The same iterator object twice was refused outright, though it starts over as the docs ask.
    const x = randomRows(11, 5, 74);
    class Rows implements AsyncIterator<Float32Array> {
      i = 0;
      constructor(readonly reset: boolean) {}
      [Symbol.asyncIterator]() {
        if (this.reset) this.i = 0;
        return this;
      }
      async next(): Promise<IteratorResult<Float32Array>> {
        return this.i < 11 ? { value: x.slice(this.i * 5, ++this.i * 5), done: false } : { value: undefined, done: true };
      }
    }
    const src = fromAsyncIterable(new Rows(true), 5);
    expectSameRows(concatRows(await collect(src, { batchSize: 4 })), x);
    expectSameRows(concatRows(await collect(src, { batchSize: 3, epochs: 3 })), concatRows([x, x, x].map((data) => ({ rows: 11, dIn: 5, data }))));
    const spent = fromAsyncIterable(new Rows(false), 5);
    expectSameRows(concatRows(await collect(spent, { batchSize: 4 })), x);
    await expect(collect(spent)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringContaining('Expected the iterable to start over for a new pass but it yielded nothing') });
    await expect(collect(fromAsyncIterable(new Rows(false), 5), { epochs: 2 })).rejects.toMatchObject({ message: expect.stringContaining('start over for epoch 1 but it yielded nothing') });
  });

  it('a stream whose epochs give no batch turns the event loop between epochs, so timers run and close() stops it (it spun in microtasks)', async () => {
    for (const mode of ['dropLast', 'skip', 'empty'] as const) {
      const iterable = {
        [Symbol.asyncIterator]() {
          let i = 0;
          const n = mode === 'empty' ? 0 : 3;
          return { next: async () => (i++ < n ? { value: new Float32Array(4).fill(mode === 'skip' ? NaN : 1), done: false as const } : { value: undefined, done: true as const }) };
        },
      };
      const src = fromAsyncIterable(iterable, 4);
      const t0 = performance.now();
      let fired = -1;
      setTimeout(() => {
        fired = performance.now() - t0;
        void src.close();
      }, 30);
      const pass = collect(src, { batchSize: 8, dropLast: mode === 'dropLast', epochs: 2 ** 30, onNonFinite: mode === 'skip' ? 'skip' : 'error' });
      await expect(pass, mode).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
      expect(fired, mode).toBeGreaterThan(0);
      expect(performance.now() - t0, mode).toBeLessThan(5000);
    }
  });

  it('a producer that reuses its array is safe; one-shot generators and bad items are reported', async () => {
    const reused = new Float32Array(4 * 7);
    const x = randomRows(40, 7, 73);
    const src = fromAsyncIterable(
      (async function* () {
        for (let i = 0; i < 10; i++) {
          reused.set(x.subarray(i * 28, (i + 1) * 28));
          yield reused;
        }
      })(),
      7,
    );
    expectSameRows(concatRows(await collect(src, { batchSize: 6 })), x);
    const once = fromAsyncIterable(
      (async function* () {
        yield x;
      })(),
      7,
    );
    await expect(collect(once, { epochs: 2 })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/a generator can be iterated once/) });
    // A second batches() call on a one-shot generator is the same error, not an empty pass.
    const oneShot = fromAsyncIterable(
      (async function* () {
        yield x;
      })(),
      7,
    );
    expectSameRows(concatRows(await collect(oneShot)), x);
    await expect(collect(oneShot)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/returned the iterator an earlier pass \(or epoch\) used/) });
    const bad = fromAsyncIterable(
      (async function* () {
        yield x.subarray(0, 13);
      })(),
      7,
    );
    await expect(collect(bad)).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE', message: expect.stringMatching(/item 0 of the iterable.*length is 13/) });
    const wrong = fromAsyncIterable(
      (async function* () {
        yield { rows: 1, dIn: 6, data: new Float32Array(6) };
      })(),
      7,
    );
    await expect(collect(wrong)).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE' });
    expect(() => fromAsyncIterable([x] as never, 7)).toThrow(/async iterable/);
  });
});

describe('options, lifecycle and the PRNG', () => {
  it('rejects bad batch options with messages naming the option', async () => {
    const src = fromArray(randomRows(10, 7, 81), 7);
    const cases: [BatchOptions, RegExp][] = [
      [{ batchSize: 0 }, /options\.batchSize/],
      [{ batchSize: 1.5 }, /options\.batchSize/],
      [{ batchSize: '4' as never }, /options\.batchSize/],
      [{ epochs: 0 }, /options\.epochs/],
      [{ shuffle: 1 as never }, /options\.shuffle/],
      [{ seed: -1 }, /options\.seed/],
      [{ dropLast: 'yes' as never }, /options\.dropLast/],
      [{ onNonFinite: 'ignore' as never }, /options\.onNonFinite/],
      [{ bufferBytes: 10 }, /options\.bufferBytes/],
      [{ chunkRows: 0 }, /options\.chunkRows/],
    ];
    for (const [o, re] of cases) expect(() => src.batches(o)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(re) }));
    expect(() => src.batches(null as never)).toThrow(/options object/);
  });

  it('the default batchSize fits rows wider than 65536 values: min(4096, floor(2^28 / dIn)), never an error naming options.batchSize', async () => {
    const want = (dIn: number) => Math.min(4096, Math.floor(2 ** 28 / dIn));
    const widths = [1, 65535, 65536, 65537, 2 ** 24];
    for (let i = 0; i < 20; i++) widths.push(1 + Math.floor(Math.random() * 2 ** 24));
    for (const dIn of widths) expect(resolveBatchOptions(undefined, dIn, 'error').batchSize, `dIn ${dIn}`).toBe(want(dIn));
    expect(resolveBatchOptions({ shuffle: false }, 65537, 'error').batchSize).toBe(4095);
    // A wide source read with no options: its rows come back (a given batchSize is still checked).
    const dIn = 65537 + Math.floor(Math.random() * 40000);
    const x = randomRows(3, dIn, 1 + Math.floor(Math.random() * 2 ** 30));
    const src = fromArray(x, dIn);
    expectSameRows(concatRows(await collect(src)), x);
    expect(() => src.batches({ batchSize: 4096 })).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.batchSize/) }));
  });

  it('break, return() and close(): reads are settled, closed sources refuse new passes', async () => {
    const x = randomRows(5000, 7, 82);
    await writeNpyFixture(p('life.npy'), 'float32', [5000, 7], x);
    const src = await openActivations(p('life.npy'));
    let n = 0;
    for await (const b of src.batches({ batchSize: 10 })) {
      n += b.rows;
      if (n >= 30) break;
    }
    expect(n).toBe(30);
    const it = src.batches({ batchSize: 10, shuffle: true, bufferBytes: 7 * 4 * 300 })[Symbol.asyncIterator]();
    expect((await it.next()).value.rows).toBe(10);
    await src.close();
    await expect(it.next()).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
    expect(() => src.batches()).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_DISPOSED' }));
    await src.close(); // twice is fine
  });

  it('Rng: same seed and tags => same stream; below() is in range and roughly uniform; shuffle permutes', () => {
    const a = new Rng(5n, 1, 2);
    const b = new Rng(5n, 1, 2);
    const c = new Rng(5n, 2, 1);
    const sa = Array.from({ length: 8 }, () => a.nextU32());
    expect(Array.from({ length: 8 }, () => b.nextU32())).toEqual(sa);
    expect(Array.from({ length: 8 }, () => c.nextU32())).not.toEqual(sa);
    const counts = new Array(6).fill(0);
    for (let i = 0; i < 60000; i++) counts[a.below(6)]++;
    for (const k of counts) expect(Math.abs(k - 10000)).toBeLessThan(500);
    expect(a.below(1)).toBe(0);
    for (let i = 0; i < 100; i++) expect(a.below(2 ** 32)).toBeLessThan(2 ** 32);
    const perm = new Uint32Array(100).map((_, i) => i);
    a.shuffle(perm);
    expect([...perm].sort((x, y) => x - y)).toEqual([...Array(100).keys()]);
  });

  it('Rng.shuffle draws every permutation of 2, 3 and 4 elements equally often (fresh seeds)', () => {
    const base = BigInt(Date.now());
    for (const n of [2, 3, 4]) {
      let perms = 1;
      for (let i = 2; i <= n; i++) perms *= i;
      const trials = 1500 * perms;
      const counts = new Map<string, number>();
      const rng = new Rng(base, n);
      const a = new Uint32Array(n);
      for (let t = 0; t < trials; t++) {
        for (let i = 0; i < n; i++) a[i] = i;
        rng.shuffle(a);
        const key = a.join(',');
        counts.set(key, (counts.get(key) ?? 0) + 1);
      }
      expect(counts.size, `seed ${base}, n ${n}`).toBe(perms);
      // Each count is binomial(trials, 1 / perms): mean 1500, within 5 standard deviations.
      const sd = Math.sqrt(1500 * (1 - 1 / perms));
      for (const [key, c] of counts) expect(Math.abs(c - 1500), `seed ${base}, n ${n}, permutation ${key}: ${c}`).toBeLessThanOrEqual(5 * sd);
    }
  });
});
