/**
 * Batch production: passes in order (rows read straight into fresh batch arrays, the next batch
 * read while the current one waits for the consumer) and shuffled passes through a SAELens-style
 * mixing buffer (see shuffleEpoch).
 */
import { native } from '../native/index.js';
import { allocBatchF32, allocLongLivedF32 } from './convert.js';
import { releaseSpare, takeSpare } from './memory.js';
import type { Rng } from './prng.js';
import type { Emit } from './pump.js';
import type { RowStream } from './rows.js';
import type { Batch } from './types.js';

export interface PassOptions {
  dIn: number;
  batchSize: number;
  dropLast: boolean;
  /** Where batch arrays come from. */
  pool: BatchPool;
}

/**
 * An internal batches() option, keyed by this symbol (not part of BatchOptions), for recycled
 * batches: the consumer hands each batch back itself by calling `batch[RELEASE_BATCH]()` instead
 * of when it asks for the next one, and `alloc`, if given, makes the pool's new arrays. The
 * Trainer on a GPU uses it: its batch arrays are page-locked memory, uploaded where they lie, so
 * each must stay untouched until the step that uploads it has ended. evaluate() uses it without
 * `alloc` to keep a batch while it reads the next. A source that ignores the option serves
 * batches without RELEASE_BATCH (recycled on the next next(), as usual).
 */
export const BATCH_ARRAYS: unique symbol = Symbol('saekit.batchArrays');
/** The release function of a batch served under BATCH_ARRAYS (idempotent). */
export const RELEASE_BATCH: unique symbol = Symbol('saekit.releaseBatch');
export interface BatchArrays {
  alloc?(n: number): Float32Array | undefined;
}
export type ReleasableBatch = Batch & { [RELEASE_BATCH]?: () => void };

/**
 * Batch arrays. Without recycling every batch is a new array (the consumer owns it). With
 * recycling, arrays the consumer has finished with (give(), called by the pump when the next
 * batch is asked for) are handed out again, so a pass touches a few batches' worth of memory
 * instead of faulting in a new array per batch. A short last batch is a view of a full array.
 */
export class BatchPool {
  private readonly free: Float32Array[] = [];
  /** Buffers that came from `alloc` (page-locked memory): they go back to their owner, not to the spare pool. */
  private readonly lent = new WeakSet<ArrayBufferLike>();
  private closed = false;

  constructor(
    readonly size: number,
    readonly recycle: boolean,
    /** Where new recycled arrays come from first (BATCH_ARRAYS); undefined or a wrong length: the usual memory. Dropped by close(). */
    private alloc?: (n: number) => Float32Array | undefined,
  ) {}

  take(): Float32Array {
    if (!this.recycle) return allocBatchF32(this.size);
    const own = this.free.pop();
    if (own) return own;
    const a = this.alloc?.(this.size);
    if (a && a.length === this.size && a.byteOffset === 0 && a.buffer.byteLength === this.size * 4) {
      this.lent.add(a.buffer);
      return a;
    }
    return takeSpare(this.size) ?? allocLongLivedF32(this.size);
  }

  /** Returns a batch's array (or a view of one) to the pool; ignored without recycling. */
  give(data: Float32Array): void {
    if (!this.recycle) return;
    if (data.byteOffset !== 0 || data.buffer.byteLength !== this.size * 4) return;
    const a = data.length === this.size ? data : new Float32Array(data.buffer, 0, this.size);
    if (!this.closed) this.free.push(a);
    else if (!this.lent.has(a.buffer)) releaseSpare(a);
  }

  /**
   * The pass is over: free arrays (and any given back later) may serve other passes, except
   * `alloc`'s, which are dropped so their owner (the model's page-locked pool) gets them back
   * when they are collected instead of a later pass keeping page-locked memory alive. `alloc`
   * itself is dropped too (it may close over its consumer: the Trainer's holds its model's optimizer).
   */
  close(): void {
    this.closed = true;
    this.alloc = undefined;
    for (const a of this.free.splice(0)) if (!this.lent.has(a.buffer)) releaseSpare(a);
  }

  /** A batch of `rows` rows from a full array: the array itself, a view (recycling) or a copy. */
  shorten(data: Float32Array, rows: number, dIn: number): Float32Array {
    return this.recycle ? data.subarray(0, rows * dIn) : data.slice(0, rows * dIn);
  }
}

/**
 * One pass in stream order: each batch is filled in place, one batch read ahead (two when batch
 * arrays are recycled and the stream allows fills in flight together: file streams with the
 * 'error' policy).
 */
export async function sequentialEpoch(stream: RowStream, o: PassOptions, emit: Emit): Promise<void> {
  const start = (): Promise<{ data: Float32Array; rows: number }> => {
    const data = o.pool.take();
    const p = stream.fill(data, o.batchSize).then((rows) => ({ data, rows }));
    p.catch(() => undefined); // awaited below; never an unhandled rejection
    return p;
  };
  // Fresh batch arrays are faulted in by the reads themselves: two fills doing that at once
  // run slower than one (10-25% on a 2-core VM), so only recycled arrays go two ahead.
  const ahead = o.pool.recycle ? Math.max(1, stream.fillsInFlight ?? 1) : 1;
  const pending: ReturnType<typeof start>[] = [];
  let ended = false;
  const topUp = () => {
    while (!ended && pending.length < ahead) pending.push(start());
  };
  topUp();
  try {
    while (pending.length) {
      const { data, rows }: { data: Float32Array; rows: number } = await pending.shift()!;
      if (rows < o.batchSize) ended = true;
      topUp();
      if (rows === o.batchSize) await emit({ rows, dIn: o.dIn, data });
      else if (rows > 0 && !o.dropLast) await emit({ rows, dIn: o.dIn, data: o.pool.shorten(data, rows, o.dIn) });
      else o.pool.give(data);
    }
  } finally {
    await Promise.allSettled(pending);
  }
}

/** Lets I/O callbacks run (a consumer that never waits would otherwise starve them). */
function yieldToLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * Window geometry of the mixing buffer: three windows of `half` rows. Two hold the resident
 * rows (capacity 2 × half, SAELens's buffer) while the third is being filled from disk.
 */
export function mixingHalf(bufferRows: number, knownRows: number | undefined): number {
  let half = Math.max(1, Math.floor(bufferRows / 3));
  // A source that fits is served as one permutation: no need for more room than its rows.
  if (knownRows !== undefined && knownRows <= 2 * half) half = Math.max(1, Math.ceil(knownRows / 2));
  return half;
}

/** What the mixing buffer stores: float32 rows, or a file's own 16-bit values (converted when gathered). */
export type MixingDType = 'float32' | 'bfloat16' | 'float16';

/**
 * The mixing buffer's memory: one array of 3 × half row slots. Rows of 16-bit files stay 16-bit
 * here (half the memory and half the copying; converted when gathered into a batch). Taken
 * once per batches() iteration, from the memory of an earlier pass when one is still alive
 * (lib/data/memory.ts).
 */
export class MixingMemory {
  readonly buf: Float32Array | Uint16Array;
  constructor(
    readonly dIn: number,
    readonly half: number,
    readonly dtype: MixingDType = 'float32',
  ) {
    const n = 3 * half * dIn;
    if (dtype === 'float32') this.buf = takeSpare(n) ?? allocLongLivedF32(n);
    else {
      const words = Math.ceil(n / 2);
      const f = takeSpare(words) ?? allocLongLivedF32(words);
      this.buf = new Uint16Array(f.buffer, 0, n);
    }
  }

  /** The pass is over: the memory may serve a later pass. */
  release(): void {
    const b = this.buf;
    if (b instanceof Float32Array) releaseSpare(b);
    else releaseSpare(new Float32Array(b.buffer));
  }
}

/**
 * One shuffled epoch. The scheme (after SAELens's mixing buffer, sae_lens/training/mixing_buffer.py):
 *  1. fill the buffer with 2 × half rows (the stream is the chunks in a seeded order);
 *  2. draw a uniformly random half of the resident rows in random order (a partial
 *     Fisher-Yates over the list of resident rows) and serve them as batches; the other half
 *     stays. Once the stream is exhausted, the whole buffer is served;
 *  3. while serving, the next `half` rows are read (natively, off the JS thread) straight into
 *     the free slots: the third window at first, then the slots served in the previous round.
 *     They join the resident rows for the next draw. Repeat.
 * The draw runs over the resident list (kept rows in list order, then the new rows in stream
 * order), so batches depend only on the seed and the stream, never on timing or on which slot
 * a row occupies. Rows are gathered (natively, one memmove per row) into the batch array.
 */
export async function shuffleEpoch(stream: RowStream, o: PassOptions, mem: MixingMemory, rng: Rng, emit: Emit): Promise<void> {
  const d = o.dIn;
  const bs = o.batchSize;
  const { half, buf } = mem;
  // Fills the listed slots of the buffer (16-bit buffers keep the file's values).
  const fillSlots = (rows: number, slots: Uint32Array): Promise<number> =>
    buf instanceof Float32Array ? stream.fill(buf, rows, slots) : stream.fill16!(buf, mem.dtype as 'bfloat16' | 'float16', rows, slots);
  const list = new Uint32Array(2 * half);
  let free = new Uint32Array(half); // slots the next fill writes, in order
  let served = new Uint32Array(half); // the slots served this round: the next round's free slots
  let pos = 0; // rows gathered into the current batch
  let cur: Float32Array | undefined; // the batch being gathered
  let sinceYield = 0;

  const flush = async (rows: number): Promise<void> => {
    const data = rows === bs ? cur! : o.pool.shorten(cur!, rows, d);
    cur = undefined;
    pos = 0;
    await emit({ rows, dIn: d, data });
    sinceYield += rows * d;
    if (sinceYield >= 1 << 22) {
      sinceYield = 0;
      await yieldToLoop();
    }
  };

  // 1. Initial fill: slots [0, 2 half); slots [2 half, 3 half) are free.
  for (let i = 0; i < 2 * half; i++) list[i] = i;
  let n = await fillSlots(half, list.subarray(0, half));
  let ended = n < half;
  if (!ended) {
    const n1 = await fillSlots(half, list.subarray(half, 2 * half));
    n += n1;
    ended = n1 < half;
  }
  for (let i = 0; i < half; i++) free[i] = 2 * half + i;
  let filling: Promise<number> | null = null;
  try {
    while (n > 0) {
      const h = ended ? n : half;
      if (!ended) {
        filling = fillSlots(half, free);
        filling.catch(() => undefined); // awaited below
      }
      // 2. Draw h rows in random order into list[0..h) and serve them.
      draw(list, n, h, rng);
      for (let i = 0; i < h; ) {
        const take = Math.min(h - i, bs - pos);
        cur ??= o.pool.take();
        // Two jobs on the I/O threads (the JS thread meanwhile hands the fill's reads their next parts).
        const dt = mem.dtype === 'float32' ? undefined : mem.dtype;
        const h1 = take >> 1;
        await Promise.all([
          native().gatherRows(buf, list, i, h1, cur, pos * d, d, dt),
          native().gatherRows(buf, list, i + h1, take - h1, cur, (pos + h1) * d, d, dt),
        ]);
        pos += take;
        i += take;
        if (pos === bs) await flush(bs);
      }
      if (ended) break;
      // 3. The new rows join the kept ones; the served slots are free for the next fill.
      const m = await filling!;
      filling = null;
      served.set(list.subarray(0, h));
      list.copyWithin(0, h, n);
      n -= h;
      for (let i = 0; i < m; i++) list[n++] = free[i]!;
      [free, served] = [served, free];
      if (m < half) ended = true; // the next round serves everything
    }
    if (pos > 0 && !o.dropLast) await flush(pos);
    else if (cur) o.pool.give(cur); // the dropped short batch's array goes back to the pool
    cur = undefined;
    pos = 0;
  } finally {
    if (filling) await filling.catch(() => undefined);
  }
}

/** Moves list[0..h) to a uniformly random draw (in random order) from list[0..n). */
function draw(list: Uint32Array, n: number, h: number, rng: Rng): void {
  for (let i = 0; i < h; i++) {
    const j = i + rng.below(n - i);
    const t = list[i]!;
    list[i] = list[j]!;
    list[j] = t;
  }
}
