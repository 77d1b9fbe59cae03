/**
 * Edges of the activation sources the rest of the data tests leave open (each found by mutation
 * testing): option bounds at their exact limits, the default chunk size, rows named by a stream split
 * unevenly across its items, the staging buffer of a list that mixes 16-bit and staged float64
 * files, symbolic links in a folder, and hidden files and folders in glob patterns.
 */
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { fromArray, fromAsyncIterable, openActivations } from '../lib/data/index.js';
import { expandGlob } from '../lib/data/glob.js';
import { resolveBatchOptions } from '../lib/data/options.js';
import { collect, concatRows, f16ToNumber, randomHalfBits, randomRows, writeNpyFixture } from './helpers/data-fixtures.js';
import { lcg } from './helpers/reference.js';

let dir: string;
const p = (...parts: string[]) => path.join(dir, ...parts);

beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-data-edges-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** A fresh seed per run (printed with any failure). */
const freshSeed = (): number => (Math.random() * 2 ** 31) >>> 0;

describe('batch options at their exact bounds', () => {
  it('bufferBytes: at most 2^32 - 1 float32 values (the mixing buffer is one typed array)', () => {
    for (const dIn of [1, 3]) {
      const most = Math.floor((2 ** 32 - 1) / dIn);
      expect(resolveBatchOptions({ bufferBytes: most * dIn * 4 }, dIn, 'error').bufferRows).toBe(most);
      expect(() => resolveBatchOptions({ bufferBytes: (most + 1) * dIn * 4 }, dIn, 'error')).toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/\(2\^32 float32 values\) for options\.bufferBytes/) }),
      );
    }
    // Through a source too: refused when batches() is called, before any read.
    expect(() => fromArray(new Float32Array(6), 1).batches({ bufferBytes: 2 ** 34 })).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.bufferBytes/) }));
  });

  it('chunkRows: chunks of at most 2^28 values, whatever dIn', () => {
    for (const dIn of [2, 5, 4096]) {
      const most = Math.floor(2 ** 28 / dIn);
      expect(resolveBatchOptions({ chunkRows: most }, dIn, 'error').chunkRows).toBe(most);
      expect(() => resolveBatchOptions({ chunkRows: most + 1 }, dIn, 'error')).toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(new RegExp(`between 1 and ${most} \\(dIn = ${dIn}\\) for options\\.chunkRows but received ${most + 1} `)) }),
      );
    }
  });

  it('default chunks are at most half a small buffer: a shuffled pass with only bufferBytes set still serves rows from across the file first', async () => {
    // 3000 one-value rows (row r holds r), a buffer of 30 rows: chunks of 15 rows, their order
    // permuted, so the first batch comes from two chunks drawn from 200. Chunks of 64 KiB (16384
    // rows: the whole file) would leave the first batch among the first 20 rows.
    const rows = 3000;
    const x = Float32Array.from({ length: rows }, (_, i) => i);
    await writeNpyFixture(p('spread.npy'), 'float32', [rows, 1], x);
    const src = await openActivations(p('spread.npy'));
    expect(resolveBatchOptions({ bufferBytes: 30 * 4 }, 1, 'error').chunkRows).toBe(15);
    for (const seed of [1, 2, 3]) {
      const [first] = await collect(src, { batchSize: 10, shuffle: true, seed, bufferBytes: 30 * 4 });
      expect(Math.max(...first!.data), `seed ${seed}: rows ${[...first!.data].join(', ')}`).toBeGreaterThanOrEqual(30);
    }
    await src.close();
  });

  it('options.dIn of a raw file: 2^24 is accepted, 2^24 + 1 refused', async () => {
    writeFileSync(p('empty.f32'), new Uint8Array(0));
    const src = await openActivations(p('empty.f32'), { dIn: 2 ** 24 });
    expect([src.dIn, src.numRows]).toEqual([2 ** 24, 0]);
    await src.close();
    await expect(openActivations(p('empty.f32'), { dIn: 2 ** 24 + 1 })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/options\.dIn/) });
  });

  it('dIn of fromArray and fromAsyncIterable: 2^24 is accepted, 2^24 + 1 refused', () => {
    const none = (): AsyncIterable<Float32Array> => ({ async *[Symbol.asyncIterator]() {} });
    const arr = fromArray(new Float32Array(0), 2 ** 24);
    expect([arr.dIn, arr.numRows]).toEqual([2 ** 24, 0]);
    const it = fromAsyncIterable(none(), 2 ** 24);
    expect(it.dIn).toBe(2 ** 24);
    const refused = expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/dIn/) });
    expect(() => fromArray(new Float32Array(0), 2 ** 24 + 1)).toThrow(refused);
    expect(() => fromAsyncIterable(none(), 2 ** 24 + 1)).toThrow(refused);
  });
});

describe('a stream split unevenly across its items', () => {
  it("'error' names the global row and the row within its item when the item's rows span two batches", async () => {
    const seed = freshSeed();
    const next = lcg(seed);
    const dIn = 2 + Math.floor(next() * 5);
    const sizes = [3, 5, 4, 2]; // rows per item
    const total = sizes.reduce((a, b) => a + b, 0);
    const x = randomRows(total, dIn, seed);
    // Item 1 holds rows 3..7; its row 3 (global row 6) is served by the second batch of 5 rows
    // (rows 5..9), which starts two rows into item 1.
    const col = Math.floor(next() * dIn);
    x[6 * dIn + col] = Number.NaN;
    const items = (): AsyncIterable<Float32Array> => ({
      async *[Symbol.asyncIterator]() {
        let at = 0;
        for (const n of sizes) {
          yield x.slice(at * dIn, (at + n) * dIn);
          at += n;
        }
      },
    });
    await expect(collect(fromAsyncIterable(items(), dIn), { batchSize: 5 }), `seed ${seed}`).rejects.toMatchObject({
      code: 'ERR_SAEKIT_NONFINITE',
      message: expect.stringMatching(new RegExp(`row 6 of the iterable \\(row 3 of item 1\\) has NaN at column ${col}`)),
    });
    // 'skip' drops exactly that row: the others in order, in batches of 5 and a short last one.
    const src = fromAsyncIterable(items(), dIn);
    const bs = await collect(src, { batchSize: 5, onNonFinite: 'skip' });
    expect(bs.map((b) => b.rows)).toEqual([5, 5, 3]);
    expect(concatRows(bs)).toEqual(concatRows([{ data: x.subarray(0, 6 * dIn) }, { data: x.subarray(7 * dIn) }]));
    expect(src.skippedRows).toBe(1);
  });
});

describe('files of several element types in one source', () => {
  it('a float16 file beside a big-endian float64 one: reads of float64 parts larger than 4 MiB of float16 rows fit the staging buffer', async () => {
    // float16 makes a read part partRows = 4 MiB / (2 dIn) rows; a big-endian float64 part of
    // that many rows needs 8 bytes each in staging (its bytes are swapped and converted there).
    const dIn = 64;
    const seed = freshSeed();
    const next = lcg(seed);
    const halfRows = 5;
    const wideRows = 8193 + Math.floor(next() * 64);
    const h = randomHalfBits(halfRows * dIn, 'float16', seed);
    const d = Float64Array.from({ length: wideRows * dIn }, () => (next() * 2 - 1) * 1.000000123);
    await writeNpyFixture(p('mix-a.npy'), 'float16', [halfRows, dIn], h);
    await writeNpyFixture(p('mix-b.npy'), 'float64', [wideRows, dIn], d, { bigEndian: true });
    const want = new Float32Array((halfRows + wideRows) * dIn);
    want.set(Float32Array.from(h, f16ToNumber));
    want.set(Float32Array.from(d, Math.fround), halfRows * dIn);
    const src = await openActivations([p('mix-b.npy'), p('mix-a.npy')]);
    const bs = await collect(src, { batchSize: 2 * 8193 });
    expect(bs.map((b) => b.rows), `seed ${seed}`).toEqual([halfRows + wideRows]);
    expect(Buffer.compare(Buffer.from(concatRows(bs).buffer), Buffer.from(want.buffer)), `seed ${seed}`).toBe(0);
    await src.close();
  });
});

describe('shard paths', () => {
  it('a folder reads symbolic links to files (in name order with the others), not links to folders or dangling ones', async () => {
    mkdirSync(p('linked'));
    mkdirSync(p('elsewhere'));
    const a = randomRows(4, 3, 1);
    const b = randomRows(6, 3, 2);
    const c = randomRows(5, 3, 3);
    await writeNpyFixture(p('linked', 'a.npy'), 'float32', [4, 3], a);
    await writeNpyFixture(p('elsewhere', 'target.npy'), 'float32', [6, 3], b);
    await writeNpyFixture(p('linked', 'c.npy'), 'float32', [5, 3], c);
    symlinkSync(p('elsewhere', 'target.npy'), p('linked', 'b.npy'));
    symlinkSync(p('elsewhere'), p('linked', 'd.npy')); // a folder, named like a file
    symlinkSync(p('missing.npy'), p('linked', 'e.npy'));
    const src = await openActivations(p('linked'));
    expect(src.numRows).toBe(15);
    expect(concatRows(await collect(src, { batchSize: 4 }))).toEqual(concatRows([{ data: a }, { data: b }, { data: c }]));
    await src.close();
  });

  it('glob patterns: a segment starting with `.` matches hidden names; `**` neither enters hidden folders nor lists hidden files', async () => {
    mkdirSync(p('g', '.git', 'sub'), { recursive: true });
    mkdirSync(p('g', 'v'), { recursive: true });
    for (const f of ['.h1.npy', 'a.npy', '.git/x.npy', '.git/sub/y.npy', 'v/b.npy', 'v/.c.npy']) writeFileSync(p('g', f), '');
    const g = p('g');
    expect(await expandGlob(`${g}/.h*.npy`)).toEqual([p('g', '.h1.npy')]);
    expect(await expandGlob(`${g}/v/.?.npy`)).toEqual([p('g', 'v', '.c.npy')]);
    expect(await expandGlob(`${g}/**/*.npy`)).toEqual([p('g', 'a.npy'), p('g', 'v', 'b.npy')]);
    expect(await expandGlob(`${g}/**`)).toEqual([p('g', 'a.npy'), p('g', 'v', 'b.npy')]);
  });
});
