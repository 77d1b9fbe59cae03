/** Sources under misuse: input arrays detached while a pass reads them, options that do not apply. */
import { mkdtempSync, renameSync, truncateSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { fromArray, openActivations } from '../lib/data/index.js';
import { io } from '../lib/index.js';
import { lcg } from './helpers/reference.js';

describe('fromArray', () => {
  for (const shuffle of [false, true]) {
    it(`data detached mid-pass (shuffle ${shuffle}): ERR_SAEKIT_ARG naming the change, on this pass and later ones`, async () => {
      const next = lcg(31);
      const [rows, dIn] = [1000, 7];
      const data = Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
      const src = fromArray(data, dIn);
      const pass = async (detachAfter: number) => {
        let i = 0;
        for await (const b of src.batches({ batchSize: 64, shuffle, bufferBytes: 64 * dIn * 4 * 3 })) {
          expect(b.data.length).toBe(b.rows * dIn);
          if (++i === detachAfter) structuredClone(data.buffer, { transfer: [data.buffer] });
        }
      };
      await expect(pass(2)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/keep its 7000 values .* now has 0 \(its ArrayBuffer was detached/) });
      await expect(pass(0)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG' });
    });
  }
});

describe('openActivations', () => {
  it('options.tensor on files that are not .safetensors is an error, not ignored', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-open-'));
    const file = path.join(dir, 'acts.npy');
    await io.writeNpy(file, { dtype: 'float32', shape: [4, 3], data: new Float32Array(12).fill(1) });
    await expect(openActivations(file, { tensor: 'acts' })).rejects.toMatchObject({
      code: 'ERR_SAEKIT_ARG',
      message: expect.stringMatching(/options\.tensor only with \.safetensors files .* none of the 1 file\(s\) is one \(.*acts\.npy\)/),
    });
    const src = await openActivations(file);
    expect(src.dIn).toBe(3);
    await src.close();
  });
});

describe('files changed between passes', () => {
  it('a file replaced or resized after the source read its header is a FORMAT error naming it, not a read of stale layout', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-changed-'));
    const file = path.join(dir, 'acts.npy');
    const write = (to: string, dtype: 'float32' | 'float16', rows: number) =>
      dtype === 'float32'
        ? io.writeNpy(to, { dtype, shape: [rows, 8], data: Float32Array.from({ length: rows * 8 }, (_, i) => i % 7) })
        : io.writeNpy(to, { dtype, shape: [rows, 8], data: new Uint16Array(rows * 8).fill(0x3c00) }); // 1.0
    await write(file, 'float32', 64);
    const src = await openActivations(file);
    const pass = async () => {
      let rows = 0;
      for await (const b of src.batches({ batchSize: 16 })) rows += b.rows;
      return rows;
    };
    expect(await pass()).toBe(64);
    // Same size in bytes, other layout (float16, twice the rows), renamed into place.
    await write(path.join(dir, 'new.npy'), 'float16', 128);
    renameSync(path.join(dir, 'new.npy'), file);
    await expect(pass()).rejects.toMatchObject({ code: 'ERR_SAEKIT_FORMAT', message: expect.stringMatching(/acts\.npy was replaced since the source was opened/) });
    await src.close();
    const again = await openActivations(file);
    expect(again.numRows).toBe(128);
    truncateSync(file, 1000);
    await expect((async () => {
      for await (const b of again.batches({ batchSize: 16 })) void b;
    })()).rejects.toMatchObject({ code: 'ERR_SAEKIT_FORMAT', message: expect.stringMatching(/acts\.npy changed size \(\d+ to 1000 bytes\)/) });
    await again.close();
  });
});

describe('recycled batch arrays', () => {
  it('a shuffled pass with dropLast gives the dropped short batch array back: arrays stay bounded over epochs', async () => {
    const next = lcg(41);
    const [rows, dIn, batchSize] = [1000, 5, 64]; // 1000 = 15 x 64 + 40: a short batch every epoch
    const data = Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
    const src = fromArray(data, dIn);
    const seen = new Set<ArrayBufferLike>();
    let batches = 0;
    for await (const b of src.batches({ batchSize, shuffle: true, dropLast: true, recycle: true, epochs: 12, bufferBytes: 3 * 200 * dIn * 4 })) {
      expect(b.rows).toBe(batchSize);
      seen.add(b.data.buffer);
      batches++;
    }
    expect(batches).toBe(12 * 15);
    // Before: one more array per epoch (13 here), the dropped batch's.
    expect(seen.size).toBeLessThanOrEqual(4);
  });
});

describe('await using', () => {
  it('closes the sources saekit makes and a safetensors reader at the end of the block', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-using-'));
    const npy = path.join(dir, 'acts.npy');
    const st = path.join(dir, 'acts.safetensors');
    const data = Float32Array.from({ length: 12 }, (_, i) => i);
    await io.writeNpy(npy, { dtype: 'float32', shape: [4, 3], data });
    await io.writeSafetensors(st, { acts: { dtype: 'float32', shape: [4, 3], data } });
    const kept: { batches: () => AsyncIterable<unknown> }[] = [];
    let reader: io.SafetensorsReader | undefined;
    {
      await using a = await openActivations(npy);
      await using b = fromArray(data, 3);
      await using r = await io.readSafetensors(st);
      for (const s of [a, b]) {
        let rows = 0;
        for await (const batch of s.batches({ batchSize: 3 })) rows += batch.rows;
        expect(rows).toBe(4);
        kept.push({ batches: () => s.batches() });
      }
      expect(Array.from((await r.read('acts')).data as Float32Array)).toEqual(Array.from(data));
      reader = r;
    }
    // Closed: a new pass, and a read, are ERR_SAEKIT_DISPOSED.
    for (const s of kept) {
      await expect((async () => {
        for await (const _ of s.batches()) void _;
      })()).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
    }
    await expect(reader!.read('acts')).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });
  });
});
