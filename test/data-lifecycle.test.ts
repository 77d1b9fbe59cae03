/** Sources under misuse: input arrays detached while a pass reads them, options that do not apply, odd lifecycles. */
import { mkdtempSync, renameSync, rmSync, truncateSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

import { describe, expect, it } from 'vitest';

import { fromArray, fromAsyncIterable, openActivations } from '../lib/data/index.js';
import { ChunkPlan, FileRowStream } from '../lib/data/rows.js';
import { HandleCache } from '../lib/data/files.js';
import { Pump } from '../lib/data/pump.js';
import type { Batch } from '../lib/data/types.js';
import { io } from '../lib/index.js';
import { packageRoot } from '../lib/native/index.js';
import { distUrl, haveDist, runInChild } from './helpers/child.js';
import { fdsOn } from './helpers/fds.js';
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

describe('fromAsyncIterable', () => {
  const dIn = 16;
  const randomRows = (rows: number, next: () => number) => Float32Array.from({ length: rows * dIn }, () => next() - 0.5);

  it('an item detached while its rows are read is ERR_SAEKIT_ARG naming the item, not a pass that ends early', async () => {
    // A detached item has length 0, which read as "fully read": the rest of its rows vanished.
    const next = lcg(Date.now() >>> 0);
    const item = randomRows(5000, next);
    const copy = item.slice();
    async function* gen() {
      yield item;
    }
    let served = 0;
    const pass = async () => {
      for await (const b of fromAsyncIterable(gen(), dIn).batches({ batchSize: 100, bufferBytes: 100 * dIn * 4 * 2 })) {
        expect(Array.from(b.data)).toEqual(Array.from(copy.subarray(served * dIn, (served + b.rows) * dIn)));
        served += b.rows;
        if (served === 100) structuredClone(item.buffer, { transfer: [item.buffer] });
      }
    };
    await expect(pass()).rejects.toMatchObject({
      code: 'ERR_SAEKIT_ARG',
      message: 'Expected item 0 of the iterable to keep its 80000 values while it is read, but it now has 0 (its ArrayBuffer was detached or resized)',
    });
    expect(served).toBeLessThan(5000);
  });

  it('an item detached once read whole (a producer that transfers it after the next request) is no error: every row, in order', async () => {
    const next = lcg(Date.now() >>> 0);
    const items = [randomRows(300, next), randomRows(257, next), randomRows(1, next)];
    const want = items.flatMap((x) => Array.from(x));
    async function* gen() {
      for (const x of items) {
        yield x;
        structuredClone(x.buffer, { transfer: [x.buffer] }); // asked for the next item: this one was copied out
      }
    }
    const got: number[] = [];
    for await (const b of fromAsyncIterable(gen(), dIn).batches({ batchSize: 64 })) got.push(...b.data);
    expect(got).toEqual(want);
  });
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

describe('recycled batch arrays and transfers (ASan audit)', () => {
  for (const shuffle of [false, true]) {
    it(`a consumer that transfers a recycled batch's buffer cannot take the memory the pass refills (shuffle ${shuffle}): small arrays are native memory too, copied, not detached`, async () => {
      const seed = (Date.now() ^ 0x2545f491) >>> 0;
      const next = lcg(seed);
      const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-transfer-'));
      const dIn = 3 + Math.floor(next() * 9);
      const rows = 2000 + Math.floor(next() * 500);
      const data = Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
      const file = path.join(dir, 'acts.npy');
      await io.writeNpy(file, { dtype: 'float32', shape: [rows, dIn], data });
      const src = await openActivations(file);
      const batchSize = 64 + Math.floor(next() * 64); // a few KiB: under allocHost's 2 MiB huge-page size
      const got: number[] = [];
      const { port1, port2 } = new MessageChannel();
      try {
        for await (const b of src.batches({ batchSize, shuffle, seed, recycle: true, bufferBytes: 4 * batchSize * dIn * 4 })) {
          got.push(...b.data);
          // Against the rule (the array is the pass's again after next()), but it must not give V8
          // the memory: before, a batch array under 2 MiB was V8's own and these detached it.
          const buffer = b.data.buffer as ArrayBuffer;
          const copy = structuredClone(buffer, { transfer: [buffer] });
          port1.postMessage(buffer, [buffer]);
          expect(b.data.buffer.byteLength, `seed ${seed}`).toBe(copy.byteLength);
          expect(b.data.length).toBe(b.rows * dIn);
        }
      } finally {
        port1.close();
        port2.close();
        await src.close();
      }
      // Every row once (in order or as a permutation of the rows).
      expect(got.length, `seed ${seed}`).toBe(rows * dIn);
      const key = (a: ArrayLike<number>, r: number) => Array.from({ length: dIn }, (_, d) => a[r * dIn + d]).join(',');
      const want = Array.from({ length: rows }, (_, r) => key(data, r));
      const have = Array.from({ length: rows }, (_, r) => key(got, r));
      expect(shuffle ? have.sort() : have).toEqual(shuffle ? want.sort() : want);
    });
  }
});

describe('HandleCache.closeAll with reads under way', () => {
  it('closes an idle handle at once and a busy one when its last read ends (a collected pass closed handles under its native reads: EBADF)', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-handles-'));
    const [a, b] = [path.join(dir, 'a.npy'), path.join(dir, 'b.npy')];
    await io.writeNpy(a, { dtype: 'float32', shape: [4, 2], data: Float32Array.from({ length: 8 }, (_, i) => i) });
    await io.writeNpy(b, { dtype: 'float32', shape: [4, 2], data: new Float32Array(8) });
    const cache = new HandleCache();
    const fileA = { path: a, label: a };
    const fileB = { path: b, label: b };
    await cache.use(fileB, async () => undefined); // cached, idle
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let inRead!: () => void;
    const started = new Promise<void>((r) => (inRead = r));
    const reading = cache.use(fileA, async (fh) => {
      inRead();
      await gate; // closeAll runs here
      const buf = new Uint8Array(8);
      const { bytesRead } = await fh.read(buf, 0, 8, 0);
      return bytesRead;
    });
    await started;
    const fdsBefore = fdsOn(a);
    let closed = false;
    const closing = cache.closeAll().then(() => (closed = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(fdsOn(b)).toBe(0); // the idle handle went at once
    expect([closed, fdsOn(a)]).toEqual([false, fdsBefore]); // the busy one stays for its read
    expect(fdsBefore).toBe(1);
    release();
    expect(await reading).toBe(8);
    await closing;
    expect(fdsOn(a)).toBe(0);
    // A later use opens the file again.
    expect(await cache.use(fileA, async (fh) => (await fh.stat()).size)).toBeGreaterThan(0);
    await cache.closeAll();
    expect(fdsOn(a)).toBe(0);
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


/** Settles with 'hung' if `p` has not settled within `ms`. */
function within<T>(p: Promise<T>, ms = 2000): Promise<T | 'hung'> {
  return Promise.race([p, new Promise<'hung'>((r) => setTimeout(() => r('hung'), ms).unref())]);
}

describe('pass lifecycles', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-life-'));

  it('an iterable whose next() fails, or that gives a bad item, ends the pass at once even if its return() never settles', async () => {
    const never = () => new Promise<IteratorResult<Float32Array>>(() => undefined);
    // next() rejects: the iterator is finished (no return() for it), the error reaches the consumer.
    let returns = 0;
    let calls = 0;
    const failing: AsyncIterable<Float32Array> = {
      [Symbol.asyncIterator]: () => ({
        next: () => (++calls === 1 ? Promise.resolve({ value: new Float32Array(6), done: false }) : Promise.reject(new Error('producer broke'))),
        return: () => (returns++, never()),
      }),
    };
    const a = fromAsyncIterable(failing, 3);
    await expect(within(collectRows(a.batches({ batchSize: 4 })))).rejects.toThrow(/producer broke/);
    expect(returns).toBe(0);
    expect(await within(a.close())).toBeUndefined();
    // A bad item: return() is called (once), not awaited.
    const badItem: AsyncIterable<Float32Array> = {
      [Symbol.asyncIterator]: () => ({ next: () => Promise.resolve({ value: new Float32Array(5), done: false }), return: () => (returns++, never()) }),
    };
    const b = fromAsyncIterable(badItem, 3);
    await expect(within(collectRows(b.batches()))).rejects.toMatchObject({ code: expect.stringMatching(/^ERR_SAEKIT_/) });
    expect(returns).toBe(1);
    expect(await within(b.close())).toBeUndefined();
  });

  it('a multi-epoch iterable pass stopped between epochs ends, and close() settles, when the next epoch stalls', async () => {
    // Epoch 0 gives one row of random values and ends; every later epoch waits for data that never comes.
    const dIn = 3 + Math.floor(Math.random() * 6);
    const stalling = () => {
      const row = Float32Array.from({ length: dIn }, () => Math.random());
      const state = { epochs: 0, returned: [] as number[] };
      const iterable = {
        [Symbol.asyncIterator]: () => {
          const e = state.epochs++;
          let sent = false;
          return {
            next: (): Promise<IteratorResult<Float32Array>> =>
              e > 0 ? new Promise(() => undefined) : Promise.resolve(sent ? { value: undefined, done: true } : ((sent = true), { value: row, done: false })),
            return: () => (state.returned.push(e), Promise.resolve({ value: undefined, done: true as const })),
          };
        },
      };
      return { row, state, src: fromAsyncIterable(iterable as AsyncIterable<Float32Array>, dIn) };
    };
    // The stalled iterators (epochs after the first) that were opened and never told of the stop (return()).
    const untold = (state: { epochs: number; returned: number[] }) => Array.from({ length: state.epochs }, (_, e) => e).filter((e) => e > 0 && !state.returned.includes(e));
    // The natural loop: for await ... break after the first batch, in order and shuffled.
    for (const shuffle of [false, true]) {
      const { row, state, src } = stalling();
      const loop = (async () => {
        for await (const b of src.batches({ batchSize: 1, epochs: 2, shuffle, bufferBytes: 1 << 16 })) {
          expect(Array.from(b.data)).toEqual(Array.from(row));
          break;
        }
        return 'ended';
      })();
      expect(await within(loop), `break, shuffle ${shuffle}`).toBe('ended');
      expect(await within(src.close()), `close(), shuffle ${shuffle}`).toBeUndefined();
      expect(untold(state), `shuffle ${shuffle}`).toEqual([]);
    }
    // return() or close() after every number of microtask turns past the first batch: the stop
    // lands before, inside and after the gap between the epochs; each must settle.
    for (const how of ['return', 'close'] as const) {
      for (let delay = 0; delay < 24; delay++) {
        const { state, src } = stalling();
        const it = src.batches({ batchSize: 1, epochs: 2 })[Symbol.asyncIterator]();
        await it.next();
        for (let i = 0; i < delay; i++) await Promise.resolve();
        const stopped = how === 'return' ? it.return!().then(() => undefined) : src.close();
        expect(await within(stopped, 1000), `${how}() after ${delay} turns`).toBeUndefined();
        expect(await within(src.close(), 1000), `close() after ${how}(), ${delay} turns`).toBeUndefined();
        expect(untold(state), `${how}() after ${delay} turns`).toEqual([]);
      }
    }
  }, 60_000);

  it('an async iterator whose next() returns a plain result (as for await allows) is read', async () => {
    const plain = () => {
      let i = 0;
      return { [Symbol.asyncIterator]: () => ({ next: () => (i < 3 ? { value: Float32Array.from([i, i++ + 0.5]), done: false } : { value: undefined, done: true }) }) };
    };
    const want: number[] = [];
    for await (const x of plain() as unknown as AsyncIterable<Float32Array>) want.push(...x);
    expect(want).toEqual([0, 0.5, 1, 1.5, 2, 2.5]);
    const src = fromAsyncIterable(plain() as unknown as AsyncIterable<Float32Array>, 2);
    const rows: number[] = [];
    for await (const b of src.batches({ batchSize: 2 })) rows.push(...b.data);
    expect(rows).toEqual(want);
  });

  it('an iterable that breaks the iteration protocol is ERR_SAEKIT_ARG naming the iterable, not a bare TypeError', async () => {
    let returns = 0;
    const cases: [string, () => unknown, RegExp][] = [
      ['[Symbol.asyncIterator]() returns undefined', () => undefined, /\[Symbol\.asyncIterator\]\(\) but received undefined/],
      ['[Symbol.asyncIterator]() returns a number', () => 7, /\[Symbol\.asyncIterator\]\(\)/],
      ['the iterator has no next()', () => ({ return: () => (returns++, Promise.resolve({ done: true })) }), /\[Symbol\.asyncIterator\]\(\) but received an object/],
      ['next() returns undefined', () => ({ next: () => undefined, return: () => (returns++, Promise.resolve({ done: true })) }), /next\(\) of the iterable's iterator but received undefined/],
      ['next() resolves to null', () => ({ next: async () => null, return: () => (returns++, Promise.resolve({ done: true })) }), /next\(\) of the iterable's iterator but received null/],
      ['next() resolves to a number after a good item', () => {
        let k = 0;
        return { next: async () => (k++ === 0 ? { value: new Float32Array(4), done: false } : 3), return: () => (returns++, Promise.resolve({ done: true })) };
      }, /next\(\) of the iterable's iterator but received 3/],
    ];
    for (const [label, iterator, message] of cases) {
      const src = fromAsyncIterable({ [Symbol.asyncIterator]: iterator } as unknown as AsyncIterable<Float32Array>, 2);
      for (const shuffle of [false, true]) {
        await expect(within(collectRows(src.batches({ batchSize: 3, shuffle, bufferBytes: 1 << 16 }))), `${label}, shuffle ${shuffle}`).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(message) });
      }
      expect(await within(src.close())).toBeUndefined();
    }
    // A broken next() result finishes the iterator (as for await treats it): no return() for it.
    expect(returns).toBe(0);
  });

  it('close() stops a pass whose reading had finished (queued batches are dropped); a second close() waits for the first', async () => {
    const file = path.join(dir, 'small.npy');
    await io.writeNpy(file, { dtype: 'float32', shape: [6, 2], data: Float32Array.from({ length: 12 }, (_, i) => i) });
    const src = await openActivations(file);
    const it = src.batches({ batchSize: 1 })[Symbol.asyncIterator]();
    expect((await it.next()).value!.data[0]).toBe(0);
    await new Promise((r) => setTimeout(r, 50)); // the 6 rows are all read and queued by now
    await src.close();
    await expect(it.next()).rejects.toMatchObject({ code: 'ERR_SAEKIT_DISPOSED' });

    const big = path.join(dir, 'big.npy');
    await io.writeNpy(big, { dtype: 'float32', shape: [20000, 8], data: new Float32Array(160000) });
    const src2 = await openActivations(big);
    const it2 = src2.batches({ batchSize: 100 })[Symbol.asyncIterator]();
    await it2.next();
    expect(fdsOn(big)).toBe(1);
    const first = src2.close();
    await src2.close(); // resolves only once the first has closed the files
    expect(fdsOn(big)).toBe(0);
    await first;
  });

  it('an iterator that was made but never started keeps no file open once the passes that ran have ended', async () => {
    const file = path.join(dir, 'idle.npy');
    await io.writeNpy(file, { dtype: 'float32', shape: [50, 2], data: new Float32Array(100) });
    const src = await openActivations(file);
    const idle = src.batches()[Symbol.asyncIterator]();
    expect(await collectRows(src.batches({ batchSize: 7 }))).toBe(50);
    // The handle cache closes asynchronously: wait for it (up to 5 s, not a fixed 20 ms a loaded machine may overrun).
    for (let t = 0; t < 500 && fdsOn(file) > 0; t++) await new Promise((r) => setTimeout(r, 10));
    expect(fdsOn(file)).toBe(0);
    // It still works, and close() still stops it.
    expect((await idle.next()).value!.rows).toBe(50);
    await src.close();
  });

  it('a pass over 200,000 shards plans its reads (no argument list per shard)', () => {
    const shards = Array.from({ length: 200_000 }, (_, i) => ({ path: `s${i}`, label: `s${i}`, dtype: 'float32' as const, rows: 1, dIn: 2, dataOffset: 128, fortran: false, bigEndian: false }));
    const plan = new ChunkPlan(
      shards.map((s) => s.rows),
      4,
    );
    const ctx = { shards, dIn: 2, handles: new HandleCache(), policy: 'error' as const, counter: { skippedRows: 0 } };
    expect(() => new FileRowStream(ctx, plan, plan.order(null), 3)).not.toThrow();
  });
});

async function collectRows(batches: AsyncIterable<{ rows: number }>): Promise<number> {
  let n = 0;
  for await (const b of batches) n += b.rows;
  return n;
}

describe('close() while a pass is being returned', () => {
  it('waits for that pass\'s reads before closing the files (return() left the pass out of those close() stopped)', async () => {
    const { backend } = await import('../lib/index.js');
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-close-'));
    const dIn = 512;
    const files: string[] = [];
    for (let f = 0; f < 3; f++) {
      const file = path.join(dir, `s${f}.npy`);
      await io.writeNpy(file, { dtype: 'float32', shape: [6000, dIn], data: new Float32Array(6000 * dIn).fill(f) });
      files.push(file);
    }
    for (let trial = 0; trial < 5; trial++) {
      const src = await openActivations(files);
      const it = src.batches({ batchSize: 4096, recycle: true })[Symbol.asyncIterator]();
      await it.next();
      const returning = it.return!(); // not awaited: close() runs while the pass unwinds
      await src.close();
      // Nothing of the pass may still run: its reads use descriptors close() has closed.
      expect(backend.stats().pendingInThisThread, `trial ${trial}`).toBe(0);
      for (const file of files) expect(fdsOn(file)).toBe(0);
      await returning;
    }
  });
});

describe('passes dropped unfinished', () => {
  it.runIf(process.platform === 'linux' && haveDist)('a pass advanced by hand and dropped is collected with its read-ahead batches, and its files close', () => {
    // A child with --expose-gc: ten passes (shuffled and in order) each take one batch and are
    // dropped without return(). The source held every one of them until close(): ~200 MB here.
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-dropped-'));
    const rows = 65536 + Math.floor(Math.random() * 1000);
    const script = `
      import { readdirSync, readlinkSync } from 'node:fs';
      const { openActivations, io } = await import(${distUrl});
      const file = ${JSON.stringify(path.join(dir, 'x.npy'))};
      await io.writeNpy(file, { dtype: 'float32', shape: [${rows}, 64], data: Float32Array.from({ length: ${rows} * 64 }, (_, i) => (i % 1013) / 1013) });
      const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
      const held = () => { const m = process.memoryUsage(); return (m.arrayBuffers + m.external) / 2 ** 20; };
      const open = () => readdirSync('/proc/self/fd').filter((f) => { try { return readlinkSync('/proc/self/fd/' + f) === file; } catch { return false; } }).length;
      const src = await openActivations(file);
      const before = held();
      async function peek(i) {
        const it = src.batches({ batchSize: 1024, shuffle: i % 2 === 0, seed: i })[Symbol.asyncIterator]();
        await it.next();
      }
      for (let i = 0; i < 10; i++) await peek(i);
      const peeked = open();
      await sleep(200);
      for (let i = 0; i < 4; i++) { global.gc(); await sleep(50); }
      const after = { grew: held() - before, open: open() };
      let n = 0;
      for await (const b of src.batches({ batchSize: 4096 })) n += b.rows;
      await src.close();
      console.log(JSON.stringify({ peeked, ...after, rows: n }));`;
    try {
      const r = JSON.parse(runInChild(script, ['--expose-gc'])) as { peeked: number; grew: number; open: number; rows: number };
      expect(r.peeked, 'the file is open while passes read').toBe(1);
      expect(r.grew, 'MiB still held after the dropped passes were collected').toBeLessThan(40);
      expect(r.open, 'the file is closed once no pass reads').toBe(0);
      expect(r.rows, 'the source still reads every row').toBe(rows);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 70_000);

  it.runIf(haveDist)('passes whose BATCH_ARRAYS alloc closes over their own iterator (the Trainer\'s) are collected with their arrays, ended or dropped', () => {
    // A child with --expose-gc runs several passes shaped like Trainer.run: alloc is a closure in
    // the scope that also holds the pass's iterator. The dropped-pass registry's held value
    // reached the pool, its alloc, that scope and so the pass: no pass was ever collected, and
    // each kept its last batch array (Pump.held), 4 MiB here (12.6 MiB per Trainer.fit at 4096 x 768).
    const engineUrl = JSON.stringify(pathToFileURL(path.join(packageRoot, 'dist', 'data', 'engine.js')).href);
    const dIn = 256 + Math.floor(Math.random() * 256);
    const script = `
      const { fromArray } = await import(${distUrl});
      const { BATCH_ARRAYS, RELEASE_BATCH } = await import(${engineUrl});
      const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
      const settle = async () => { for (let i = 0; i < 4; i++) { global.gc(); await sleep(30); } };
      const held = () => { const m = process.memoryUsage(); return (m.arrayBuffers + m.external) / 2 ** 20; };
      const dIn = ${dIn}, batchSize = Math.ceil((1 << 20) / dIn);
      const src = fromArray(Float32Array.from({ length: batchSize * 4 * dIn }, () => Math.random()), dIn);
      let made = 0, arraysFreed = 0, passesFreed = 0;
      const arrayReg = new FinalizationRegistry(() => arraysFreed++);
      const passReg = new FinalizationRegistry(() => passesFreed++);
      async function fit(steps, end) {
        const arrays = { alloc: (n) => { const a = new Float32Array(n); made++; arrayReg.register(a.buffer, 0); return a; } };
        const it = src.batches({ batchSize, epochs: 2, dropLast: true, recycle: true, [BATCH_ARRAYS]: arrays })[Symbol.asyncIterator]();
        passReg.register(it, 0);
        const next = () => it.next();
        for (let s = 0; s < steps; s++) { const r = await next(); if (r.done) break; r.value[RELEASE_BATCH]?.(); }
        if (end) await it.return();
      }
      await fit(1, true);
      await settle();
      const before = held();
      for (let i = 0; i < 6; i++) { await fit(2 + (i % 3), i % 2 === 0); await settle(); }
      console.log(JSON.stringify({ made, arraysFreed, passesFreed, grew: held() - before }));`;
    const r = JSON.parse(runInChild(script, ['--expose-gc'])) as { made: number; arraysFreed: number; passesFreed: number; grew: number };
    expect(r.made, 'the passes took their arrays from alloc').toBeGreaterThanOrEqual(7);
    expect(r.passesFreed, 'passes collected (4 ended by return(), 3 dropped)').toBe(7);
    expect(r.arraysFreed, 'alloc arrays collected').toBe(r.made);
    expect(r.grew, 'MiB still held after 6 passes of 4 MiB batches').toBeLessThan(4);
  }, 70_000);
});

describe('Pump', () => {
  it('keeps exactly its capacity of ready batches ahead of the consumer, however long the consumer waits', async () => {
    for (const capacity of [1, 2, 3, 5]) {
      let produced = 0;
      const pump = new Pump(
        async (emit) => {
          for (;;) {
            produced++;
            await emit({ rows: 1, dIn: 3, data: new Float32Array(3) } as unknown as Batch);
          }
        },
        capacity,
        () => undefined,
      );
      for (let taken = 1; taken <= 3; taken++) {
        expect((await pump.next()).done).toBe(false);
        // Turns of the event loop enough for any producer to run ahead as far as it may.
        for (let t = 0; t < 20; t++) await new Promise((r) => setTimeout(r, 1));
        // The batches taken plus `capacity` ready ones (each counted when emitted, before it waits).
        expect(produced, `capacity ${capacity}, after ${taken} taken`).toBe(taken + capacity);
      }
      await pump.return();
    }
  });

  it('stopped or returned before the first next(): the producer never runs, the pass ends at once (onDone, onOver once each) and next() is done', async () => {
    for (const how of ['stop', 'return'] as const) {
      const calls = { produce: 0, done: 0, over: 0, start: 0 };
      const pump = new Pump(
        async (emit) => {
          calls.produce++;
          await emit({ rows: 1, dIn: 1, data: new Float32Array(1) } as unknown as Batch);
        },
        2,
        () => calls.done++,
        () => undefined,
        () => undefined,
        () => calls.start++,
        () => calls.over++,
      );
      if (how === 'stop') await pump.stop();
      else expect(await pump.return()).toEqual({ value: undefined, done: true });
      expect(calls, how).toEqual({ produce: 0, done: 1, over: how === 'return' ? 1 : 0, start: 0 });
      expect(await pump.next()).toEqual({ value: undefined, done: true });
      expect(await pump.next()).toEqual({ value: undefined, done: true });
      expect(calls, how).toEqual({ produce: 0, done: 1, over: 1, start: 0 });
    }
  });

  it('return() after batches were taken: the held batch is not handed back (the consumer may still read it), every queued one is dropped, and onOver comes before the producer unwinds', async () => {
    const released: number[] = [];
    const order: string[] = [];
    let made = 0;
    const pump = new Pump(
      async (emit) => {
        try {
          for (;;) await emit({ rows: 1, dIn: 1, data: Float32Array.of(made++) } as unknown as Batch);
        } finally {
          order.push('unwound');
        }
      },
      3,
      () => order.push('done'),
      (b) => released.push(b.data[0]!),
      () => order.push('stop'),
      () => undefined,
      () => order.push('over'),
    );
    expect((await pump.next()).value!.data[0]).toBe(0);
    expect((await pump.next()).value!.data[0]).toBe(1);
    expect(released).toEqual([0]); // handed back when the next one was asked for
    await pump.return();
    expect(released).toEqual([0]);
    expect(order).toEqual(['over', 'stop', 'unwound', 'done']);
    expect(await pump.next()).toEqual({ value: undefined, done: true });
    expect(released).toEqual([0]);
  });
});
