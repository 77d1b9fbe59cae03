/**
 * Batch production: passes in order (rows read straight into fresh batch arrays, the next batch
 * read while the current one waits for the consumer) and shuffled passes through a SAELens-style
 * mixing buffer (see shuffleEpoch).
 */
import { native } from '../native/index.js';
import { allocF32 } from './convert.js';
import type { Rng } from './prng.js';
import type { Emit } from './pump.js';
import type { RowStream } from './rows.js';

export interface PassOptions {
  dIn: number;
  batchSize: number;
  dropLast: boolean;
}

/** One pass in stream order: each batch is filled in place, one batch read ahead. */
export async function sequentialEpoch(stream: RowStream, o: PassOptions, emit: Emit): Promise<void> {
  const size = o.batchSize * o.dIn;
  const start = (): Promise<{ data: Float32Array; rows: number }> => {
    const data = allocF32(size);
    const p = stream.fill(data, o.batchSize).then((rows) => ({ data, rows }));
    p.catch(() => undefined); // awaited below; never an unhandled rejection
    return p;
  };
  let next: ReturnType<typeof start> | null = start();
  try {
    while (next) {
      const { data, rows }: { data: Float32Array; rows: number } = await next;
      next = rows === o.batchSize ? start() : null;
      if (rows === o.batchSize) await emit({ rows, dIn: o.dIn, data });
      else if (rows > 0 && !o.dropLast) await emit({ rows, dIn: o.dIn, data: data.slice(0, rows * o.dIn) });
    }
  } finally {
    if (next) await next.catch(() => undefined);
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

/**
 * The mixing buffer's memory: one Float32Array holding three windows of `half` rows, so every
 * row move stays inside one array (no views allocated). Allocated once per batches() iteration;
 * pages are touched only as rows land in them.
 */
export class MixingMemory {
  readonly buf: Float32Array;
  constructor(
    readonly dIn: number,
    readonly half: number,
  ) {
    this.buf = new Float32Array(3 * half * dIn);
  }
  window(w: number): Float32Array {
    return this.buf.subarray(w * this.half * this.dIn, (w + 1) * this.half * this.dIn);
  }
}

/**
 * One shuffled epoch. The scheme (after SAELens's mixing buffer, sae_lens/training/mixing_buffer.py):
 *  1. fill the buffer with 2 × half rows (the stream is the chunks in a seeded order);
 *  2. draw a uniformly random half of the resident rows in random order (a partial
 *     Fisher-Yates over the list of resident rows) and serve them as batches; the other half
 *     stays. Once the stream is exhausted, the whole buffer is served;
 *  3. while serving, the next `half` rows are read straight into the spare window; they join
 *     the resident rows for the next draw. Then the resident rows that lie in the window with the
 *     most served (now free) slots move to the free slots of the other window, and that window
 *     becomes the spare for the next round. Repeat.
 * Slots move, but the draw runs over the resident list (kept rows in list order, then the new
 * rows in stream order), so batches depend only on the seed and the stream, never on timing.
 * Rows are gathered (natively, one memmove per row) straight into a fresh batch array.
 */
export async function shuffleEpoch(stream: RowStream, o: PassOptions, mem: MixingMemory, rng: Rng, emit: Emit): Promise<void> {
  const d = o.dIn;
  const bs = o.batchSize;
  const { half, buf } = mem;
  const list = new Uint32Array(2 * half);
  let pos = 0; // rows gathered into the current batch
  let cur: Float32Array | undefined; // the batch being gathered (a fresh array per batch)
  let sinceYield = 0;

  const flush = async (rows: number): Promise<void> => {
    const data = rows === bs ? cur! : cur!.slice(0, rows * d);
    cur = undefined;
    pos = 0;
    await emit({ rows, dIn: d, data });
    sinceYield += rows * d;
    if (sinceYield >= 1 << 22) {
      sinceYield = 0;
      await yieldToLoop();
    }
  };

  // 1. Initial fill: windows 0 and 1.
  let n = 0;
  const n0 = await stream.fill(mem.window(0), half);
  for (let i = 0; i < n0; i++) list[n++] = i;
  let ended = n0 < half;
  if (!ended) {
    const n1 = await stream.fill(mem.window(1), half);
    for (let i = 0; i < n1; i++) list[n++] = half + i;
    ended = n1 < half;
  }
  let spare = 2;
  let filling: Promise<number> | null = null;
  try {
    while (n > 0) {
      const h = ended ? n : half;
      if (!ended) {
        filling = stream.fill(mem.window(spare), half);
        filling.catch(() => undefined); // awaited below
      }
      // 2. Draw h rows in random order into list[0..h) and serve them.
      draw(list, n, h, rng);
      for (let i = 0; i < h; ) {
        const take = Math.min(h - i, bs - pos);
        cur ??= allocF32(bs * d);
        native().gatherRows(buf, list, i, take, cur, pos * d, d);
        pos += take;
        i += take;
        if (pos === bs) await flush(bs);
      }
      if (ended) break;
      // 3. The spare window's new rows join the kept ones; pick the next spare and empty it.
      const m = await filling!;
      filling = null;
      if (m < half) {
        // The stream has ended: the next round serves everything, wherever it lies.
        list.copyWithin(0, h, n);
        n -= h;
        for (let i = 0; i < m; i++) list[n++] = spare * half + i;
        ended = true;
        continue;
      }
      const free = [0, 0, 0];
      for (let i = 0; i < h; i++) free[(list[i]! / half) | 0]!++;
      const a = (spare + 1) % 3;
      const b = (spare + 2) % 3;
      const next = free[a]! >= free[b]! ? a : b;
      const other = next === a ? b : a;
      evacuate(buf, list, h, n, half, next, other, free[other]!, d);
      list.copyWithin(0, h, n);
      n -= h;
      for (let i = 0; i < m; i++) list[n++] = spare * half + i;
      spare = next;
    }
    if (pos > 0 && !o.dropLast) await flush(pos);
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


/**
 * Empties window `next`: its resident rows (in list[h..n)) move to the served slots (in
 * list[0..h)) of window `other`, of which there are exactly as many; the list follows them.
 */
function evacuate(buf: Float32Array, list: Uint32Array, h: number, n: number, half: number, next: number, other: number, holesInOther: number, d: number): void {
  const holes = new Uint32Array(holesInOther);
  let nh = 0;
  for (let i = 0; i < h; i++) if (((list[i]! / half) | 0) === other) holes[nh++] = list[i]!;
  let hi = 0;
  for (let i = h; i < n; i++) {
    const slot = list[i]!;
    if (((slot / half) | 0) !== next) continue;
    const to = holes[hi++]!;
    buf.copyWithin(to * d, slot * d, slot * d + d);
    list[i] = to;
  }
}
