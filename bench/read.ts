/**
 * read: streaming activations from disk against a plain sequential read of the same file, same
 * run. Files (cached under <tmpdir>/saekit-bench-data): a float32 .npy (2 GiB; 256 MiB with
 * --quick) and a bfloat16 .safetensors (1 GiB; 256 MiB with --quick), dIn 768. Each file is read
 * once to warm the page cache; then, per file: the plain read (16 MiB fs reads into one reused
 * page-aligned buffer), and source.batches({ batchSize: 4096 }) with shuffle false and true (default 256 MiB
 * mixing buffer), each with fresh batch arrays and with recycle: true. GB/s is file bytes over the median time; "vs read" is the median over repeats
 * of the plain read's time (the mean of the reads just before and just after) over the mode's
 * (1 = as fast as reading the file). Targets: >= 0.8 in order, >= 0.5 shuffled ("target" says
 * whether the median met it).
 * A second reference, "read into fresh arrays", reads the same way into a new batch-sized array
 * per read: the cost of handing out memory the consumer may keep (page faults, GC), which the
 * plain read into one cache-resident buffer does not pay. Peak RSS is sampled while streaming.
 * Last for the float32 file, the in-order passes again with 400 MiB of live JS objects in the
 * process: each full collection that fresh arrays cause marks the whole heap (peak RSS includes it;
 * "vs read" against the plain reads timed without the heap).
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { openActivations } from '../lib/data/index.js';
import { native } from '../lib/native/index.js';
import { npyHeader, safetensorsHeader } from '../test/helpers/data-fixtures.js';
import { type Benchmark, type Row } from './harness.js';

const D_IN = 768;
const BATCH = 4096;
const MiB = 1024 * 1024;

/** Writes `bytes` of pseudo-random payload after `head` (atomically), unless the file is already there. */
async function ensureFile(file: string, head: Uint8Array, bytes: number, fillChunk: (buf: Uint8Array, seed: number) => void): Promise<void> {
  const st = await fs.stat(file).catch(() => null);
  if (st && st.size === head.length + bytes) return;
  await fs.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}`;
  const fh = await fs.open(tmp, 'w');
  try {
    await fh.write(head);
    const buf = new Uint8Array(16 * MiB);
    for (let done = 0, k = 0; done < bytes; k++) {
      const n = Math.min(buf.length, bytes - done);
      fillChunk(buf, k + 1);
      await fh.write(buf, 0, n);
      done += n;
    }
  } finally {
    await fh.close();
  }
  await fs.rename(tmp, file);
}

function fillF32(buf: Uint8Array, seed: number): void {
  const f = new Float32Array(buf.buffer, buf.byteOffset, buf.length >> 2);
  let s = seed >>> 0;
  for (let i = 0; i < f.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    f[i] = s / 2147483648 - 1;
  }
}

function fillBf16(buf: Uint8Array, seed: number): void {
  const u = new Uint16Array(buf.buffer, buf.byteOffset, buf.length >> 1);
  let s = seed >>> 0;
  for (let i = 0; i < u.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    // Sign, exponent 112..127 (|x| in [2^-15, 2)), random mantissa: finite, activation-like.
    u[i] = (s >>> 31) << 15 | ((112 + ((s >>> 20) & 15)) << 7) | ((s >>> 8) & 0x7f);
  }
}

/**
 * The plain read's buffer: page aligned (allocHost's large blocks start on 2 MiB boundaries). The
 * kernel copies page-cache data 4-5x slower into a destination 1 to 31 bytes past the file
 * offset within a page (AMD's `rep movsb`), and a fresh 16 MiB Buffer from glibc starts 16 bytes
 * into a page: with one per read, the baseline ran at 2 or at 10 GB/s depending on where the
 * allocator put it, which inflated every ratio taken against a slow one.
 */
let plainBuffer: Uint8Array | undefined;

/** Reads the whole file sequentially in 16 MiB reads into one page-aligned buffer. */
async function plainRead(file: string): Promise<number> {
  const fh = await fs.open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    const buf = (plainBuffer ??= new Uint8Array(native().allocHost(16 * MiB)));
    let pos = 0;
    while (pos < size) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - pos), pos);
      if (bytesRead === 0) break;
      pos += bytesRead;
    }
    return pos;
  } finally {
    await fh.close();
  }
}

/**
 * Reference: the same sequential reads, each into a new batch-sized array (what any reader that
 * hands out arrays the consumer may keep pays for fresh memory), without conversion or screening.
 */
async function freshRead(file: string, chunk: number, arrayBytes = chunk): Promise<number> {
  const fh = await fs.open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    let pos = 0;
    while (pos < size) {
      const n = Math.min(chunk, size - pos);
      // A batch's file bytes into a fresh array the size of the float32 batch batches() hands out
      // (twice the file bytes for a 16-bit file).
      const { bytesRead } = await fh.read(Buffer.allocUnsafeSlow(Math.max(n, Math.ceil((n * arrayBytes) / chunk))), 0, n, pos);
      if (bytesRead === 0) break;
      pos += bytesRead;
    }
    return pos;
  } finally {
    await fh.close();
  }
}

/**
 * Live JS objects standing in for an application's own heap (a model's JS-side state, caches):
 * V8's full collections mark all of it, and fresh batch arrays trigger one every ~150 MB.
 */
const HEAP_MIB = 400;
let ballast: { i: number; s: string; a: number[] }[] | undefined;
function growHeap(): void {
  if (ballast) return;
  ballast = [];
  const target = process.memoryUsage().heapUsed + HEAP_MIB * MiB;
  for (let i = 0; process.memoryUsage().heapUsed < target; ) {
    for (const end = i + 100_000; i < end; i++) ballast.push({ i, s: `row ${i & 4095}`, a: [i, i + 1] });
  }
}

/** Peak resident set size seen while streaming (sampled every 8 batches), in MiB. */
let peakRss = 0;

async function stream(file: string, shuffle: boolean, recycle: boolean, expectRows: number): Promise<void> {
  const src = await openActivations(file);
  try {
    let rows = 0;
    let k = 0;
    for await (const b of src.batches({ batchSize: BATCH, shuffle, recycle })) {
      rows += b.rows;
      if (++k % 8 === 0) peakRss = Math.max(peakRss, process.memoryUsage.rss() / MiB);
    }
    if (rows !== expectRows) throw new Error(`read ${rows} rows of ${file}, expected ${expectRows}`);
  } finally {
    await src.close();
  }
}

/**
 * What this machine charges for a 4 KiB page fault, in microseconds: the first write to 64 MiB of
 * fresh memory less a rewrite of it, per page (median of 3). It varies 5x between machines
 * (bare metal ~0.5-1 us, VMs 3-18 us seen here) and sets the price of fresh batch arrays and of
 * any first pass, so it helps to read one machine's table against another's.
 */
function pageFaultMicros(): number {
  const n = 64 * MiB;
  const v: number[] = [];
  for (let i = 0; i < 3; i++) {
    const b = Buffer.allocUnsafeSlow(n); // past malloc's mmap threshold: fresh pages
    const t0 = performance.now();
    b.fill(1);
    const t1 = performance.now();
    b.fill(2);
    const t2 = performance.now();
    v.push((((t1 - t0) - (t2 - t1)) * 1000) / (n / 4096));
  }
  return v.sort((a, b) => a - b)[1]!;
}

export const read: Benchmark = {
  name: 'read',
  description: 'streaming .npy (f32) / .safetensors (bf16) batches vs a plain sequential read',
  async run(opts) {
    const dir = path.join(os.tmpdir(), 'saekit-bench-data');
    const f32Bytes = opts.quick ? 256 * MiB : 2048 * MiB;
    const bf16Bytes = opts.quick ? 256 * MiB : 1024 * MiB;
    const f32Rows = Math.floor(f32Bytes / (D_IN * 4));
    const bf16Rows = Math.floor(bf16Bytes / (D_IN * 2));
    const npy = path.join(dir, `acts-f32-${f32Rows}x${D_IN}.npy`);
    const st = path.join(dir, `acts-bf16-${bf16Rows}x${D_IN}.safetensors`);
    await ensureFile(npy, npyHeader('float32', [f32Rows, D_IN]), f32Rows * D_IN * 4, fillF32);
    const stBytes = bf16Rows * D_IN * 2;
    await ensureFile(st, safetensorsHeader([{ name: 'acts', dtype: 'bfloat16', shape: [bf16Rows, D_IN], byteLength: stBytes }]), stBytes, fillBf16);

    const faultUs = pageFaultMicros();
    process.stderr.write(`this machine: a 4 KiB page fault costs ~${faultUs.toFixed(1)} us (first write to fresh memory less a rewrite)\n`);
    const reps = { repeats: opts.repeats, warmup: Math.min(opts.warmup, 1) };
    const baseRssMiB = process.memoryUsage.rss() / MiB;
    const rows: Row[] = [];
    const seconds = async (fn: () => Promise<unknown>) => {
      const t0 = process.hrtime.bigint();
      await fn();
      return Number(process.hrtime.bigint() - t0) / 1e9;
    };
    const median = (v: number[]) => {
      const s = [...v].sort((a, b) => a - b);
      const m = s.length >> 1;
      return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
    };
    for (const [file, nRows, label, itemBytes] of [
      [npy, f32Rows, 'npy f32', 4],
      [st, bf16Rows, 'safetensors bf16', 2],
    ] as const) {
      const bytes = (await fs.stat(file)).size;
      await plainRead(file); // warm the page cache
      const modes: [string, () => Promise<unknown>][] = [['read into fresh arrays', () => freshRead(file, BATCH * D_IN * itemBytes, BATCH * D_IN * 4)]];
      for (const shuffle of [false, true]) {
        for (const recycle of [false, true]) {
          modes.push([`batches${shuffle ? ' shuffle' : ''}${recycle ? ' recycle' : ''}`, () => stream(file, shuffle, recycle, nRows)]);
        }
      }
      // The same in-order passes in a process with a large JS heap (last: the heap stays).
      if (itemBytes === 4) {
        for (const recycle of [false, true]) {
          modes.push([`batches${recycle ? ' recycle' : ''}, +${HEAP_MIB} MiB JS heap`, () => stream(file, false, recycle, nRows)]);
        }
      }
      const plainTimes: number[] = [];
      for (const [mode, fn] of modes) {
        const heap = mode.includes('JS heap');
        // The heap is the setting, not the work: grown before the mode's passes, and one pass
        // untimed even with --warmup 0 (the collections the growth leaves to run would land in
        // it: the growth inside the timed pass timed 400 MiB of allocation as reading).
        if (heap) growHeap();
        // Each repeat times the mode between two plain reads: the ratio of each repeat cancels
        // most of the machine's drift; the median ratio is reported.
        for (let w = 0; w < (heap ? Math.max(1, reps.warmup) : reps.warmup); w++) await fn();
        peakRss = 0;
        const ratios: number[] = [];
        const times: number[] = [];
        for (let r = 0; r < reps.repeats; r++) {
          // Plain read, mode, plain read: each pair's baseline is the mean of the reads on either
          // side of the mode (a fresh buffer per plain read once made the read after a pass look
          // twice as slow: the buffer's alignment, see plainBuffer).
          const tp1 = await seconds(() => plainRead(file));
          const tm = await seconds(fn);
          const tp2 = await seconds(() => plainRead(file));
          const tp = (tp1 + tp2) / 2;
          if (!heap) plainTimes.push(tp1, tp2);
          times.push(tm);
          ratios.push(tp / tm);
        }
        const t = median(times);
        // With the large heap, the plain reads around a fresh-array pass are slowed by the
        // collection work it leaves running: those rows compare with the plain reads before.
        const vsRead = heap ? median(plainTimes) / t : median(ratios);
        // The targets (>= 0.8 in order, >= 0.5 shuffled) against the median ratio.
        const target = mode.startsWith('batches') ? (mode.includes('shuffle') ? 0.5 : 0.8) : undefined;
        rows.push({
          file: label,
          GiB: bytes / 1024 ** 3,
          mode,
          'GB/s': bytes / t / 1e9,
          'vs read': vsRead,
          target: target === undefined ? '-' : `${vsRead >= target ? 'met' : 'NOT met'} (>= ${target})`,
          'spread %': (100 * (Math.max(...times) - Math.min(...times))) / t,
          'peak RSS MiB': mode.startsWith('batches') ? peakRss : '-',
        });
      }
      ballast = undefined;
      const tp = median(plainTimes);
      rows.splice(rows.length - modes.length, 0, {
        file: label,
        GiB: bytes / 1024 ** 3,
        mode: 'plain read',
        'GB/s': bytes / tp / 1e9,
        'vs read': 1,
        target: '-',
        'spread %': (100 * (Math.max(...plainTimes) - Math.min(...plainTimes))) / tp,
        'peak RSS MiB': '-',
      });
    }
    const maxRssMiB = process.resourceUsage().maxRSS / 1024;
    process.stderr.write(`RSS before streaming ${baseRssMiB.toFixed(0)} MiB, process peak (maxRSS) ${maxRssMiB.toFixed(0)} MiB; files ${npy}, ${st}\n`);
    const cached = ((await fs.stat(npy)).size + (await fs.stat(st)).size) / 1024 ** 3;
    process.stderr.write(`the files stay in ${dir} (${cached.toFixed(1)} GiB) for the next run; delete the folder to free the space\n`);
    return {
      rows,
      meta: {
        dIn: D_IN,
        batchSize: BATCH,
        bufferBytes: 256 * MiB,
        baseRssMiB,
        processPeakRssMiB: maxRssMiB,
        pageFaultMicros: faultUs,
        files: [npy, st],
        note: "'vs read' = plain read time / mode time; 'peak RSS' = largest RSS sampled while streaming",
      },
    };
  },
};
