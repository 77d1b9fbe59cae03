/**
 * The read path on fresh random inputs of odd sizes, each compared with the rows computed
 * directly from the data in the test: in-order passes (recycled too) with rows skipped as
 * non-finite, shuffled passes whose buffer is filled through a scratch smaller than a window,
 * 16-bit mixing buffers, a source that fits in the buffer, epochs of a stream, the tensor a
 * .safetensors file is read by, shard checks, and the errors of a pass (truncated or rewritten
 * files, detached arrays, a failed or ended pass).
 */
import { mkdirSync, mkdtempSync, rmSync, statSync, truncateSync, utimesSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { fromArray, fromAsyncIterable, openActivations, type ActivationSource, type Batch, type BatchOptions } from '../lib/data/index.js';
import { bf16ToNumber, concatRows, f16ToNumber, npyBytes, randomHalfBits, randomRows, sortedRowKeys, writeNpyFixture, writeSafetensorsFixture } from './helpers/data-fixtures.js';

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
      let s = seed;
      const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
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

describe('shuffled passes over wide rows (the buffer filled through a scratch of fewer rows than a window)', () => {
  it('fromArray and fromAsyncIterable serve every row exactly once per epoch', async () => {
    const seed = freshSeed();
    let s = seed;
    const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
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

