/**
 * Row streams: a source's rows, in a given order, written straight into a destination the
 * caller owns (a batch, or a window of the mixing buffer) and screened there for non-finite
 * values. Files are cut into chunks of `chunkRows` consecutive rows (a shard's last chunk may be
 * shorter; chunks never span shards) and each chunk is read with positioned reads of at most
 * 4 MiB, several in flight: float32 C-order data is read directly into the destination; other
 * element types, big-endian and Fortran-order data go through a small staging buffer.
 */
import { argError, SaekitError } from '../errors.js';
import { anyNonFinite, ITEM_BYTES, screenRows, screenRows16, swapBytes, toFloat32, type RowLabel, type SkipCounter } from './convert.js';
import { HandleCache, nativeRead, readFully } from './files.js';
import { MAX_CHUNK_BYTES, type NonFinitePolicy } from './options.js';
import type { Rng } from './prng.js';
import type { Shard } from './shards.js';
import { StopSignal } from './pump.js';
import type { Batch } from './types.js';

export interface RowStream {
  /**
   * Writes the next rows into dst[0 .. rows × dIn) and resolves to how many it wrote: `rows`,
   * or fewer once the stream ends. With `slots`, row i goes to dst[slots[i] × dIn, +dIn)
   * instead (the mixing buffer's free slots). One fill at a time, unless `fillsInFlight` says
   * more may be started before the earlier ones settle (they take rows in call order).
   */
  fill(dst: Float32Array, rows: number, slots?: Uint32Array): Promise<number>;
  /** How many contiguous fills may be in flight at once (absent: 1). */
  readonly fillsInFlight?: number;
  /**
   * (File streams whose shards all hold `dtype`, read natively.) As fill() with slots, keeping
   * the file's 16-bit values.
   */
  fill16?(dst: Uint16Array, dtype: 'bfloat16' | 'float16', rows: number, slots: Uint32Array): Promise<number>;
  /** Waits for reads in flight and releases what the stream holds. */
  close(): Promise<void>;
  /**
   * (Streams whose input can stall: a user's async iterable.) The pass is stopping: a fill
   * waiting for input rejects with StopSignal at once instead of waiting on.
   */
  abort?(): void;
}

/** The chunks of a list of shards: chunk i is rows [start, start + rows) of one shard. */
export class ChunkPlan {
  readonly count: number;
  private readonly first: number[] = [];

  constructor(
    readonly shardRows: readonly number[],
    readonly chunkRows: number,
  ) {
    let n = 0;
    for (const r of shardRows) {
      this.first.push(n);
      n += Math.ceil(r / chunkRows);
    }
    this.count = n;
  }

  locate(i: number): { shard: number; start: number; rows: number } {
    // The last shard whose chunks start at or before i (empty shards before it are passed over).
    let lo = 0;
    let hi = this.first.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.first[mid]! <= i) lo = mid;
      else hi = mid - 1;
    }
    const start = (i - this.first[lo]!) * this.chunkRows;
    return { shard: lo, start, rows: Math.min(this.chunkRows, this.shardRows[lo]! - start) };
  }

  /** Chunk indices in file order, or in the order of a seeded Fisher-Yates permutation. */
  order(rng: Rng | null): Uint32Array {
    const o = new Uint32Array(this.count);
    for (let i = 0; i < o.length; i++) o[i] = i;
    if (rng) rng.shuffle(o);
    return o;
  }
}

/** Walks the rows of a chunk order: hands out consecutive row ranges, never across a chunk. */
class Cursor {
  private k = 0;
  private row = 0;
  private cur: { shard: number; start: number; rows: number } | null = null;

  constructor(
    private readonly plan: ChunkPlan,
    private readonly order: Uint32Array,
  ) {}

  /** The next range of at most `max` rows, or null at the end. */
  take(max: number): { shard: number; start: number; rows: number } | null {
    while (!this.cur || this.row >= this.cur.rows) {
      if (this.k >= this.order.length) return null;
      this.cur = this.plan.locate(this.order[this.k++]!);
      this.row = 0;
    }
    const rows = Math.min(max, this.cur.rows - this.row);
    const r = { shard: this.cur.shard, start: this.cur.start + this.row, rows };
    this.row += rows;
    return r;
  }
}

/** Screens rows [at, at + rows) of dst in place; returns the rows kept (moved up to `at`). */
function screenAt(dst: Float32Array, at: number, rows: number, dIn: number, policy: NonFinitePolicy, label: RowLabel, counter: SkipCounter): number {
  const view = dst.subarray(at * dIn, (at + rows) * dIn);
  if (!anyNonFinite(view, 0, view.length)) return rows;
  return screenRows(view, rows, dIn, policy, label, counter);
}

/** Rows of the scratch used to fill listed slots (about 1 MiB). */
const SCRATCH_ROWS = (dIn: number): number => Math.max(1, Math.floor((1 << 20) / (4 * dIn)));

export interface FileContext {
  shards: readonly Shard[];
  dIn: number;
  handles: HandleCache;
  policy: NonFinitePolicy;
  counter: SkipCounter;
}

/**
 * Row `row` of shard `s`, where `value` was found. A float64 value that is infinite after its
 * rounding may have been finite in the file (past float32's range); a NaN was a NaN there.
 */
function rowLabel(s: Shard, row: number, value: number): string {
  return `row ${row} of ${s.label}${s.dtype === 'float64' && !Number.isNaN(value) ? ' (after rounding float64 to float32)' : ''}`;
}

interface Part {
  shard: Shard;
  start: number;
  rows: number;
  /** Planned first row in dst (data read directly lands here). */
  at: number;
  stage: ArrayBuffer | null;
  /** Read, converted and screened natively (off the JS thread); resolves true if a value is non-finite. */
  native: boolean;
  read: Promise<void | boolean>;
}

/** Rows of file shards in a chunk order, `depth` reads in flight. */
export class FileRowStream implements RowStream {
  private readonly cursor: Cursor;
  private readonly partRows: number;
  private readonly stageBytes: number;
  private readonly staging: ArrayBuffer[] = [];
  private readonly pending = new Set<Promise<void | boolean>>();
  /** Every shard can be read by the native job (little-endian, C order). */
  private readonly allNative: boolean;
  private scratch: Float32Array | null = null;
  /** Settles when the latest fill has taken all its rows from the cursor (the next may start taking). */
  private planned: Promise<void> = Promise.resolve();
  /**
   * With the 'error' policy a fill never takes rows after its first reads are planned (a
   * non-finite row ends the pass instead of leaving room), so a second fill can take the rows
   * that follow at once: two batches are read at a time, which keeps both cores busy across
   * the end of one batch and the start of the next.
   */
  readonly fillsInFlight: number;

  constructor(
    private readonly ctx: FileContext,
    plan: ChunkPlan,
    order: Uint32Array,
    private readonly depth: number,
  ) {
    this.cursor = new Cursor(plan, order);
    // Reads of at most MAX_CHUNK_BYTES of file data (16-bit files: twice the rows).
    // (Loops, not Math.min(...): a spread of one argument per shard overflows the stack past ~120k shards.)
    let minItem = Infinity;
    let maxItem = 0;
    for (const s of ctx.shards) {
      minItem = Math.min(minItem, ITEM_BYTES[s.dtype]);
      maxItem = Math.max(maxItem, ITEM_BYTES[s.dtype]);
    }
    this.partRows = Math.max(1, Math.floor(MAX_CHUNK_BYTES / (ctx.dIn * minItem)));
    this.stageBytes = this.partRows * ctx.dIn * maxItem;
    this.allNative = ctx.shards.every((s) => !s.fortran && !s.bigEndian);
    this.fillsInFlight = ctx.policy === 'error' ? 2 : 1;
  }

  private track(read: Promise<void | boolean>): Promise<void | boolean> {
    const tracked = read.finally(() => this.pending.delete(tracked));
    tracked.catch(() => undefined); // awaited in order by fill(); never an unhandled rejection
    this.pending.add(tracked);
    return tracked;
  }

  private start(dst: Float32Array | Uint16Array, at: number, max: number, slots: Uint32Array | undefined, part: number): Part | null {
    const r = this.cursor.take(Math.min(max, part));
    if (!r) return null;
    const s = this.ctx.shards[r.shard]!;
    const { dIn } = this.ctx;
    const item = ITEM_BYTES[s.dtype];
    if (!s.fortran && !s.bigEndian) {
      // The common case: one native job reads, converts and screens straight into dst.
      const pos = s.dataOffset + r.start * dIn * item;
      const read = this.ctx.handles.use(s, (fh) => nativeRead(fh.fd, pos, r.rows, dIn, s, dst, slots ? { slots, first: at } : at * dIn));
      return { shard: s, start: r.start, rows: r.rows, at, stage: null, native: true, read: this.track(read) };
    }
    if (!(dst instanceof Float32Array)) throw new Error('internal: 16-bit fills need natively read shards');
    const direct = s.dtype === 'float32' && !s.fortran;
    const stage = direct ? null : (this.staging.pop() ?? new ArrayBuffer(this.stageBytes));
    const bytes = r.rows * dIn * item;
    const into = direct ? new Uint8Array(dst.buffer, dst.byteOffset + at * dIn * 4, bytes) : new Uint8Array(stage!, 0, bytes);
    let read: Promise<void>;
    if (!s.fortran) {
      read = this.ctx.handles.use(s, (fh) => readFully(fh, into, s.dataOffset + r.start * dIn * item, s.label));
    } else {
      // Column c of rows [start, start + rows) is contiguous on disk: one read per column.
      read = this.ctx.handles.use(s, async (fh) => {
        for (let c0 = 0; c0 < dIn; c0 += 32) {
          const reads: Promise<void>[] = [];
          for (let c = c0; c < Math.min(dIn, c0 + 32); c++) {
            reads.push(readFully(fh, into.subarray(c * r.rows * item, (c + 1) * r.rows * item), s.dataOffset + (c * s.rows + r.start) * item, s.label));
          }
          await Promise.all(reads);
        }
      });
    }
    return { shard: s, start: r.start, rows: r.rows, at, stage, native: false, read: this.track(read) };
  }

  /** Converts (if needed) and moves a finished part to row `to` of dst, screens it; returns rows kept. */
  private finish(p: Part, dst: Float32Array | Uint16Array, to: number, nonFinite: boolean, slots: Uint32Array | undefined): number {
    const { dIn } = this.ctx;
    const s = p.shard;
    const n = p.rows * dIn;
    const label = (r: number, v: number) => rowLabel(s, p.start + r, v);
    if (p.native) {
      if (slots) {
        // Rows dropped earlier leave room: move this part's rows up the slot list.
        if (to !== p.at) for (let r = 0; r < p.rows; r++) dst.copyWithin(slots[to + r]! * dIn, slots[p.at + r]! * dIn, slots[p.at + r]! * dIn + dIn);
        if (!nonFinite) return p.rows;
        if (dst instanceof Uint16Array) return screenRows16(dst, s.dtype as 'bfloat16' | 'float16', p.rows, dIn, this.ctx.policy, label, this.ctx.counter, (r) => slots[to + r]! * dIn);
        return screenRows(dst, p.rows, dIn, this.ctx.policy, label, this.ctx.counter, (r) => slots[to + r]! * dIn);
      }
      if (to !== p.at) dst.copyWithin(to * dIn, p.at * dIn, p.at * dIn + n);
      if (!nonFinite) return p.rows;
      if (dst instanceof Uint16Array) throw new Error('internal: 16-bit fills use slots');
      return screenRows(dst.subarray(to * dIn, (to + p.rows) * dIn), p.rows, dIn, this.ctx.policy, label, this.ctx.counter);
    }
    if (!(dst instanceof Float32Array)) throw new Error('internal: 16-bit fills need natively read shards');
    if (!p.stage) {
      if (to !== p.at) dst.copyWithin(to * dIn, p.at * dIn, p.at * dIn + n);
      if (s.bigEndian) swapBytes(new Uint8Array(dst.buffer, dst.byteOffset + to * dIn * 4, n * 4), 4);
    } else {
      try {
        const item = ITEM_BYTES[s.dtype];
        const raw = new Uint8Array(p.stage, 0, n * item);
        if (s.bigEndian) swapBytes(raw, item);
        if (!s.fortran) {
          // Converted first; the screen below is the addon's vectorised test on the float32 rows.
          toFloat32(raw, s.dtype, dst.subarray(to * dIn, to * dIn + n), n);
        } else {
          // Column-major float32 (the staging buffer itself for float32), then transposed into dst.
          const cm =
            s.dtype === 'float32'
              ? new Float32Array(p.stage, 0, n)
              : (() => {
                  const t = new Float32Array(n);
                  toFloat32(raw, s.dtype, t, n);
                  return t;
                })();
          const rows = p.rows;
          const base = to * dIn;
          for (let c = 0; c < dIn; c++) {
            const col = c * rows;
            for (let r = 0; r < rows; r++) dst[base + r * dIn + c] = cm[col + r]!;
          }
        }
      } finally {
        this.staging.push(p.stage);
        p.stage = null;
      }
    }
    return screenAt(dst, to, p.rows, dIn, this.ctx.policy, label, this.ctx.counter);
  }

  fill16(dst: Uint16Array, dtype: 'bfloat16' | 'float16', rows: number, slots: Uint32Array): Promise<number> {
    if (!this.allNative || this.ctx.shards.some((s) => s.dtype !== dtype)) throw new Error(`internal: not all shards are ${dtype}`);
    return this.fillAny(dst, rows, slots);
  }

  fill(dst: Float32Array, rows: number, slots?: Uint32Array): Promise<number> {
    return this.fillAny(dst, rows, slots);
  }

  private async fillAny(dst: Float32Array | Uint16Array, rows: number, slots?: Uint32Array): Promise<number> {
    if (slots && !this.allNative && dst instanceof Float32Array) {
      this.scratch ??= new Float32Array(this.partRows * this.ctx.dIn);
      return fillSlotsViaScratch(this, this.scratch, this.partRows, dst, rows, slots, this.ctx.dIn);
    }
    // Fills take rows from the cursor in call order: wait until the one before has taken all of
    // its rows (not until its reads are done).
    const before = this.planned;
    let donePlanning!: () => void;
    this.planned = new Promise<void>((resolve) => (donePlanning = resolve));
    const queue: Part[] = [];
    let filled = 0;
    let planned = 0;
    // Reads of equal size, at least two per fill: a batch read as one large and one small part
    // leaves a core idle for the last third of the fill.
    const part = Math.ceil(rows / Math.max(Math.min(2, rows), Math.ceil(rows / this.partRows)));
    try {
      await before;
      for (;;) {
        while (queue.length < this.depth && planned < rows) {
          const p = this.start(dst, planned, rows - planned, slots, part);
          if (!p) {
            planned = rows; // the stream has ended
            break;
          }
          queue.push(p);
          planned += p.rows;
        }
        if (planned >= rows) donePlanning();
        const head = queue.shift();
        if (!head) return filled;
        const nonFinite = (await head.read) === true;
        // Top up before the conversion and screen, so the next reads overlap them.
        while (queue.length < this.depth && planned < rows) {
          const p = this.start(dst, planned, rows - planned, slots, part);
          if (!p) break;
          queue.push(p);
          planned += p.rows;
        }
        filled += this.finish(head, dst, filled, nonFinite, slots);
        // Rows dropped as non-finite leave room: plan past what is in flight.
        if (queue.length === 0) planned = filled;
      }
    } finally {
      donePlanning();
      if (queue.length) {
        await Promise.allSettled(queue.map((p) => p.read));
        for (const p of queue) if (p.stage) this.staging.push(p.stage);
      }
    }
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.pending]);
  }
}

/**
 * fill() into listed slots through a contiguous scratch of `scratchRows` rows: each piece is
 * filled in stream order, then its rows are copied to their slots.
 */
async function fillSlotsViaScratch(
  stream: RowStream,
  scratch: Float32Array,
  scratchRows: number,
  dst: Float32Array,
  rows: number,
  slots: Uint32Array,
  dIn: number,
): Promise<number> {
  let filled = 0;
  while (filled < rows) {
    const want = Math.min(scratchRows, rows - filled);
    const got = await stream.fill(scratch, want);
    for (let r = 0; r < got; r++) dst.set(scratch.subarray(r * dIn, (r + 1) * dIn), slots[filled + r]! * dIn);
    filled += got;
    if (got < want) break;
  }
  return filled;
}

/** Rows of an in-memory array in a chunk order (copied into the destination). */
export class ArrayRowStream implements RowStream {
  private readonly cursor: Cursor;
  private scratch: Float32Array | null = null;

  constructor(
    private readonly data: Float32Array,
    private readonly dIn: number,
    plan: ChunkPlan,
    order: Uint32Array,
    private readonly policy: NonFinitePolicy,
    private readonly counter: SkipCounter,
    /** The data's length when the source was made. */
    private readonly length: number = data.length,
  ) {
    this.cursor = new Cursor(plan, order);
  }

  fillSync(dst: Float32Array, rows: number): number {
    const d = this.dIn;
    if (this.data.length !== this.length) {
      // Detached (transferred to a worker, structuredClone with transfer) or resized since fromArray().
      throw new SaekitError(
        'ERR_SAEKIT_ARG',
        `Expected the data given to fromArray() to keep its ${this.length} values while it is read, but it now has ${this.data.length} (its ArrayBuffer was detached or resized)`,
      );
    }
    let filled = 0;
    while (filled < rows) {
      const r = this.cursor.take(rows - filled);
      if (!r) break;
      dst.set(this.data.subarray(r.start * d, (r.start + r.rows) * d), filled * d);
      filled += screenAt(dst, filled, r.rows, d, this.policy, (i) => `row ${r.start + i} of the array`, this.counter);
    }
    return filled;
  }

  fill(dst: Float32Array, rows: number, slots?: Uint32Array): Promise<number> {
    if (slots) {
      this.scratch ??= new Float32Array(SCRATCH_ROWS(this.dIn) * this.dIn);
      return fillSlotsViaScratch(this, this.scratch, SCRATCH_ROWS(this.dIn), dst, rows, slots, this.dIn);
    }
    try {
      return Promise.resolve(this.fillSync(dst, rows));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  async close(): Promise<void> {}
}

/**
 * Rows of an async iterable of Float32Array or Batch items, in stream order. The next item is
 * requested only once the current one has been copied out, so producers may reuse arrays.
 */
export class IterableRowStream implements RowStream {
  private item: Float32Array | null = null;
  /** The current item's length when it was accepted (a detached or resized item differs). */
  private itemLength = 0;
  private itemRow = 0;
  private itemIndex = -1;
  private itemBase = 0;
  private ended = false;
  /** Rows seen so far, including skipped ones. */
  rowsSeen = 0;
  private scratch: Float32Array | null = null;
  private aborted = false;
  private stopWaiting: (() => void) | null = null;

  constructor(
    private readonly it: AsyncIterator<Float32Array | Batch>,
    private readonly dIn: number,
    private readonly policy: NonFinitePolicy,
    private readonly counter: SkipCounter,
  ) {}

  private accept(v: unknown): Float32Array {
    const index = ++this.itemIndex;
    const where = `item ${index} of the iterable`;
    if (v instanceof Float32Array) {
      if (v.length % this.dIn !== 0) {
        throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected ${where} to hold whole rows of dIn = ${this.dIn} but its length is ${v.length}`);
      }
      return v;
    }
    if (v !== null && typeof v === 'object' && (v as Batch).data instanceof Float32Array) {
      const b = v as Batch;
      if (b.dIn !== this.dIn || !Number.isInteger(b.rows) || b.rows * this.dIn !== b.data.length) {
        throw new SaekitError(
          'ERR_SAEKIT_SHAPE',
          `Expected ${where} to be a batch of dIn = ${this.dIn} with rows × dIn values but it has dIn = ${String(b.dIn)}, rows = ${String(b.rows)} and ${b.data.length} values`,
        );
      }
      return b.data;
    }
    throw new SaekitError('ERR_SAEKIT_ARG', `Expected ${where} to be a Float32Array or a Batch but it is ${v === null ? 'null' : typeof v}`);
  }

  async fill(dst: Float32Array, rows: number, slots?: Uint32Array): Promise<number> {
    if (slots) {
      this.scratch ??= new Float32Array(SCRATCH_ROWS(this.dIn) * this.dIn);
      return fillSlotsViaScratch(this, this.scratch, SCRATCH_ROWS(this.dIn), dst, rows, slots, this.dIn);
    }
    const d = this.dIn;
    let filled = 0;
    while (filled < rows) {
      if (this.item && this.itemRow * d < this.itemLength && this.item.length !== this.itemLength) {
        // Detached (transferred to a worker, structuredClone with transfer) or resized while its rows were being read.
        throw new SaekitError(
          'ERR_SAEKIT_ARG',
          `Expected item ${this.itemIndex} of the iterable to keep its ${this.itemLength} values while it is read, but it now has ${this.item.length} (its ArrayBuffer was detached or resized)`,
        );
      }
      if (!this.item || this.itemRow * d >= this.itemLength) {
        if (this.ended) break;
        this.item = null;
        const r = await this.nextItem();
        if (r === null || typeof r !== 'object') {
          // The protocol (as for await checks it): the iterator is finished, no return() for it.
          this.ended = true;
          throw argError("the result of next() of the iterable's iterator", 'an object { value, done }', r);
        }
        if (r.done) {
          this.ended = true;
          break;
        }
        this.item = this.accept(r.value);
        this.itemLength = this.item.length;
        this.itemRow = 0;
        this.itemBase = this.rowsSeen;
        this.rowsSeen += this.item.length / d;
        continue;
      }
      const item = this.item;
      const from = this.itemRow;
      const k = Math.min(rows - filled, this.itemLength / d - from);
      dst.set(item.subarray(from * d, (from + k) * d), filled * d);
      this.itemRow += k;
      const base = this.itemBase;
      const index = this.itemIndex;
      filled += screenAt(dst, filled, k, d, this.policy, (i) => `row ${base + from + i} of the iterable (row ${from + i} of item ${index})`, this.counter);
    }
    return filled;
  }

  /**
   * The iterable's next item, or StopSignal as soon as the pass stops (abort()): a producer that
   * stalls (waiting for data that never comes) must not keep break, close() or an abort waiting.
   */
  private nextItem(): Promise<IteratorResult<Float32Array | Batch>> {
    if (this.aborted) return Promise.reject(new StopSignal());
    let next: Promise<IteratorResult<Float32Array | Batch>>;
    try {
      // for await accepts a next() that returns a plain result (not a Promise), and so do we.
      next = Promise.resolve(this.it.next());
    } catch (err) {
      next = Promise.reject(err);
    }
    // An iterator whose next() failed is finished (the protocol): no return() for it.
    next.catch(() => (this.ended = true)); // may also lose the race below; its failure is then nobody's concern
    const stop = new Promise<never>((_, reject) => (this.stopWaiting = () => reject(new StopSignal())));
    return Promise.race([next, stop]).finally(() => (this.stopWaiting = null));
  }

  abort(): void {
    this.aborted = true;
    this.stopWaiting?.();
    // Tell the producer (a pending next() may never settle; an iterator with its own return()
    // hears of the stop now, an async generator once its pending step ends).
    if (!this.ended) {
      this.ended = true;
      void Promise.resolve()
        .then(() => this.it.return?.())
        .catch(() => undefined);
    }
  }

  async close(): Promise<void> {
    this.item = null;
    if (!this.ended) {
      // The pass ended early (a bad item or row): tell the producer, without waiting for it (its
      // return() may never settle, and the pass must end anyway).
      this.ended = true;
      void Promise.resolve()
        .then(() => this.it.return?.())
        .catch(() => undefined);
    }
  }
}
