/**
 * The addon's positioned reads (native/napi/io_read.cpp) called directly, on fresh random data
 * compared element by element with the file's own values: float32 reads in 1 MiB pieces (plain
 * and through the staging buffer), rows into slots (float32 and raw 16-bit), converted reads
 * (bfloat16, float16, float64) at unaligned destinations, the non-finite screen at every piece
 * boundary, reads that end past the end of the file, the destination's lifetime, and allocHost's
 * huge-page advice.
 */
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { openActivations } from '../lib/data/index.js';
import { native } from '../lib/native/index.js';
import { bf16ToNumber, concatRows, f16ToNumber, randomHalfBits, sortedRowKeys, writeNpyFixture } from './helpers/data-fixtures.js';
import { lcg } from './helpers/reference.js';

const linux = process.platform === 'linux';
const b = native();
let dir: string;
let fileNo = 0;

beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-ioread-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** A fresh seed per run (printed with any failure). */
const freshSeed = (): number => (Math.random() * 2 ** 31) >>> 0 || 1;

/** Writes `bytes` to a fresh file and runs fn with it open for reading. */
async function withFile<T>(bytes: Uint8Array, fn: (fd: number, file: string) => Promise<T>): Promise<T> {
  const file = path.join(dir, `f${fileNo++}.bin`);
  writeFileSync(file, bytes);
  const fd = openSync(file, 'r');
  try {
    return await fn(fd, file);
  } finally {
    closeSync(fd);
  }
}

const bytesOf = (a: ArrayBufferView): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

function randomF32(n: number, seed: number): Float32Array {
  const next = lcg(seed);
  return Float32Array.from({ length: n }, () => next() * 8 - 4);
}

/** Index of the first element where a and b differ (Object.is), or -1. */
function firstDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return i;
  return -1;
}

/** Every element of a equals v (or -1 when so; else the first index that does not). */
function firstNot(a: ArrayLike<number>, v: number): number {
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], v)) return i;
  return -1;
}

/** A float32 read moves 2^18 elements (1 MiB) per piece. */
const PIECE = 1 << 18;
const SENTINEL = -7.25;

/**
 * A Float32Array view of `count` elements in a 2 MiB-aligned allocHost block whose absolute
 * address relative to file offset `pos` is (byteOffset - pos) mod 4096 = `rel`: 1..63 makes the
 * read go through the staging buffer, 0 or 2048 straight into dst. Everything around the view is
 * SENTINEL (1 MiB after it: a piece-sized overrun lands there).
 */
function viewAt(count: number, pos: number, rel: number): { all: Float32Array; view: Float32Array; first: number } {
  const pre = ((((rel + pos) % 4096) + 4096) % 4096) / 4 + 1024; // a whole page (and more) before
  const total = Math.max(pre + count + PIECE + 1024, 1 << 19); // 2 MiB at least: a 2 MiB-aligned block
  const all = new Float32Array(b.allocHost(total * 4), 0, total).fill(SENTINEL);
  return { all, view: all.subarray(pre, pre + count), first: pre };
}

describe('staging buffer boundaries', () => {
  // First in the file: each I/O thread's staging buffer is still small, so a stage shorter than
  // its offset within a page plus the read would overrun its heap block (and a later, larger read
  // frees that block).
  it('converted and slot reads of sizes from a few bytes to past a page, at file offsets placing the stage at either end of its page, read exactly the file', async () => {
    const seed = freshSeed();
    const bits = randomHalfBits(40_000, 'bfloat16', seed);
    await withFile(bytesOf(bits), async (fd) => {
      const next = lcg(seed);
      // Exactly one page of data (2048 values) whose stage starts 4080 bytes into its page, on
      // every I/O thread (a stage one page long would be overrun by 4080 bytes).
      for (let k = 0; k < 32; k++) {
        const dst = new Float32Array(2048);
        expect(await b.readRows(fd, 2032 + 4096 * (k % 4), 2048, 'bfloat16', dst, 0)).toBe(false);
        expect(firstDiff(dst, Float32Array.from(bits.subarray(1016 + 2048 * (k % 4), 1016 + 2048 * (k % 4) + 2048), bf16ToNumber)), `seed ${seed} page read ${k}`).toBe(-1);
      }
      for (let round = 0; round < 48; round++) {
        // Elements ~1 KiB to ~6 KiB; the offset puts the stage's start 2032..2048 or 4080 bytes into its page.
        const count = 500 + Math.floor(next() * 2600) + round * 8;
        const startByte = round % 2 ? 2032 + 4096 * Math.floor(next() * 4) : 2 * Math.floor(next() * 8) + 4096 * Math.floor(next() * 4);
        const at = startByte / 2;
        const dst = new Float32Array(count + 2).fill(SENTINEL);
        expect(await b.readRows(fd, startByte, count, 'bfloat16', dst, 1)).toBe(false);
        const want = new Float32Array(count + 2).fill(SENTINEL);
        for (let i = 0; i < count; i++) want[i + 1] = bf16ToNumber(bits[at + i]!);
        expect(firstDiff(dst, want), `seed ${seed} round ${round}: ${count} at byte ${startByte}`).toBe(-1);
        // The same bytes as rows of 10 into slots (raw 16-bit).
        const rows = Math.floor(count / 10);
        const raw = new Uint16Array((rows + 1) * 10).fill(0x1234);
        const slots = Uint32Array.from({ length: rows }, (_, r) => rows - r);
        expect(await b.readRowsToSlots(fd, startByte, rows, 10, 'bfloat16', raw, slots, 0)).toBe(false);
        expect(firstNot(raw.subarray(0, 10), 0x1234), `seed ${seed} round ${round}: slot 0 untouched`).toBe(-1);
        for (let r = 0; r < rows; r++) expect(firstDiff(raw.subarray(slots[r]! * 10, slots[r]! * 10 + 10), bits.subarray(at + r * 10, at + r * 10 + 10)), `seed ${seed} round ${round} row ${r}`).toBe(-1);
      }
      // A larger read now grows each thread's stage (freeing the small one).
      for (let k = 0; k < 8; k++) {
        const dst = new Float32Array(30_000);
        await b.readRows(fd, 2032 + 2 * k, 30_000, 'bfloat16', dst, 0);
        expect(dst[29_999], `seed ${seed}`).toBe(bf16ToNumber(bits[1016 + k + 29_999]!));
      }
    });
  });
});

describe('float32 reads in 1 MiB pieces', () => {
  for (const [how, rel] of [
    ['straight into dst', 0],
    ['into dst half a page off the file offset', 2048],
    ['through the staging buffer (dst 16 bytes past the file offset within a page)', 16],
    ['through the staging buffer (dst 60 bytes past)', 60],
  ] as const) {
    it(`${how}: exact values, nothing written outside [dstOffset, +count), and a NaN or infinity in the first or last element of any piece is seen`, async () => {
      const seed = freshSeed();
      const next = lcg(seed);
      const count = 2 * PIECE + 1 + Math.floor(next() * 3000);
      const lead = 1 + Math.floor(next() * 50); // elements of the file before the read
      const vals = randomF32(lead + count + 3, seed);
      await withFile(bytesOf(vals), async (fd, file) => {
        const pos = lead * 4;
        const { all, view, first } = viewAt(count, pos, rel);
        expect(await b.readRows(fd, pos, count, 'float32', all, first)).toBe(false);
        expect(firstDiff(view, vals.subarray(lead, lead + count)), `seed ${seed}`).toBe(-1);
        expect(firstNot(all.subarray(0, first), SENTINEL), `seed ${seed}: before dst`).toBe(-1);
        expect(firstNot(all.subarray(first + count), SENTINEL), `seed ${seed}: after dst`).toBe(-1);
        // One non-finite value at a time, at each piece's first and last element and at the read's
        // last; the rest finite. dst is refilled with sentinels, so the screen must look at the
        // values read, not at what dst held before.
        const wfd = openSync(file, 'r+');
        try {
          const spots = [0, PIECE - 1, PIECE, 2 * PIECE - 1, 2 * PIECE, count - 1];
          for (const [k, at] of spots.entries()) {
            const bad = k % 2 ? Infinity : NaN;
            writeSync(wfd, Float32Array.of(bad), 0, 4, pos + at * 4);
            all.fill(SENTINEL);
            expect(await b.readRows(fd, pos, count, 'float32', all, first), `seed ${seed}: ${bad} at element ${at}`).toBe(true);
            expect(Object.is(view[at], bad), `seed ${seed}: element ${at}`).toBe(true);
            writeSync(wfd, vals.subarray(lead + at, lead + at + 1), 0, 4, pos + at * 4);
          }
          // All finite again, with dst holding NaNs beforehand.
          all.fill(NaN);
          expect(await b.readRows(fd, pos, count, 'float32', all, first), `seed ${seed}: NaNs only in dst beforehand`).toBe(false);
          expect(firstDiff(view, vals.subarray(lead, lead + count)), `seed ${seed}`).toBe(-1);
        } finally {
          closeSync(wfd);
        }
      });
    });
  }
});

describe('rows into slots', () => {
  it('float32 rows wider than a quarter of a run: every row in its slot over several runs, other slots untouched, a non-finite value in any row of a later run seen, and the last rows of the file read exactly', async () => {
    const seed = freshSeed();
    const next = lcg(seed);
    const d = 20_000 + Math.floor(next() * 3000); // 80-92 KiB rows: runs of 2-3 rows
    const rows = 9;
    const lead = 2;
    const vals = randomF32((lead + rows) * d, seed);
    await withFile(bytesOf(vals), async (fd, file) => {
      const slotRows = rows + 4;
      const perm = Array.from({ length: slotRows }, (_, i) => i).sort(() => next() - 0.5);
      const slots = Uint32Array.from(perm.slice(0, rows));
      const dst = new Float32Array(slotRows * d);
      const check = (what: string) => {
        for (let r = 0; r < rows; r++) expect(firstDiff(dst.subarray(slots[r]! * d, (slots[r]! + 1) * d), vals.subarray((lead + r) * d, (lead + r + 1) * d)), `seed ${seed} ${what}: row ${r}`).toBe(-1);
        for (const s of perm.slice(rows)) expect(firstNot(dst.subarray(s * d, (s + 1) * d), SENTINEL), `seed ${seed} ${what}: free slot ${s}`).toBe(-1);
      };
      dst.fill(SENTINEL);
      // The file's last rows: a read past them would fail.
      expect(await b.readRowsToSlots(fd, lead * d * 4, rows, d, 'float32', dst, slots, 0)).toBe(false);
      check('finite');
      const wfd = openSync(file, 'r+');
      try {
        for (const r of [0, 1, rows - 2, rows - 1]) {
          const c = r % 2 ? d - 1 : Math.floor(next() * d);
          const at = (lead + r) * d + c;
          writeSync(wfd, Float32Array.of(-Infinity), 0, 4, at * 4);
          dst.fill(SENTINEL);
          expect(await b.readRowsToSlots(fd, lead * d * 4, rows, d, 'float32', dst, slots, 0), `seed ${seed}: -Infinity in row ${r} column ${c}`).toBe(true);
          writeSync(wfd, vals.subarray(at, at + 1), 0, 4, at * 4);
        }
      } finally {
        closeSync(wfd);
      }
    });
  });

  for (const dtype of ['bfloat16', 'float16'] as const) {
    it(`raw ${dtype} rows: the bits land in their slots over several runs; the screen knows ${dtype}'s exponent (its largest finite values pass, an infinity or NaN in a later row is seen)`, async () => {
      const seed = freshSeed();
      const next = lcg(seed);
      const d = 50_000 + Math.floor(next() * 5000); // ~100 KiB rows: runs of 2 rows
      const rows = 7;
      const bits = randomHalfBits(rows * d, dtype, seed);
      // Large finite values whose exponent bits hold the other 16-bit type's all-ones exponent.
      const big = dtype === 'bfloat16' ? [0x7c00, 0xfc00, 0x7f7f, 0x7d12] : [0x7bff, 0xfbff, 0x7b80, 0x7a80];
      big.forEach((v, i) => (bits[Math.floor(next() * rows * d) || i] = v));
      await withFile(bytesOf(bits), async (fd, file) => {
        const slots = Uint32Array.from({ length: rows }, (_, r) => (r * 3) % (rows + 1));
        const dst = new Uint16Array((rows + 1) * d).fill(0xabcd);
        expect(await b.readRowsToSlots(fd, 0, rows, d, dtype, dst, slots, 0), `seed ${seed}: finite, large values included`).toBe(false);
        for (let r = 0; r < rows; r++) expect(firstDiff(dst.subarray(slots[r]! * d, (slots[r]! + 1) * d), bits.subarray(r * d, (r + 1) * d)), `seed ${seed}: row ${r}`).toBe(-1);
        const free = [...Array(rows + 1).keys()].find((s) => !slots.includes(s))!;
        expect(firstNot(dst.subarray(free * d, (free + 1) * d), 0xabcd), `seed ${seed}: free slot`).toBe(-1);
        const inf = dtype === 'bfloat16' ? 0x7f80 : 0x7c00;
        const nan = dtype === 'bfloat16' ? 0xffc1 : 0xfe01;
        const wfd = openSync(file, 'r+');
        try {
          for (const [r, v] of [[rows - 1, inf], [rows - 2, nan], [3, inf]] as const) {
            const at = r * d + Math.floor(next() * d);
            writeSync(wfd, Uint16Array.of(v), 0, 2, at * 2);
            expect(await b.readRowsToSlots(fd, 0, rows, d, dtype, dst, slots, 0), `seed ${seed}: ${v.toString(16)} in row ${r}`).toBe(true);
            writeSync(wfd, bits.subarray(at, at + 1), 0, 2, at * 2);
          }
        } finally {
          closeSync(wfd);
        }
      });
    });
  }
});

describe('converted reads (bfloat16, float16, float64)', () => {
  /** Elements per conversion chunk of a contiguous read (16 blocks of 8192). */
  const CHUNK = 1 << 17;
  const decode = { bfloat16: bf16ToNumber, float16: f16ToNumber } as const;

  for (const dtype of ['bfloat16', 'float16'] as const) {
    it(`${dtype}: over several chunks into a dst at every alignment, exact values, nothing written outside; a non-finite value at a chunk's first or last element is seen, a large finite one is not`, async () => {
      const seed = freshSeed();
      const next = lcg(seed);
      const count = 2 * CHUNK + 1 + Math.floor(next() * 5000);
      const bits = randomHalfBits(count + 9, dtype, seed);
      const big = dtype === 'bfloat16' ? 0x7c01 : 0x7bff; // finite; bfloat16's has float16's infinity exponent
      bits[5] = big;
      await withFile(bytesOf(bits), async (fd, file) => {
        const want = Float32Array.from(bits.subarray(3, 3 + count), decode[dtype]);
        const all = new Float32Array(b.allocHost((count + 64) * 4), 0, count + 64);
        for (let off = 1; off <= 4; off++) {
          all.fill(SENTINEL);
          expect(await b.readRows(fd, 6, count, dtype, all, off), `seed ${seed} offset ${off}`).toBe(false);
          expect(firstDiff(all.subarray(off, off + count), want), `seed ${seed} offset ${off}`).toBe(-1);
          expect(firstNot(all.subarray(0, off), SENTINEL), `seed ${seed} offset ${off}: before`).toBe(-1);
          expect(firstNot(all.subarray(off + count), SENTINEL), `seed ${seed} offset ${off}: after`).toBe(-1);
        }
        const wfd = openSync(file, 'r+');
        try {
          const inf = dtype === 'bfloat16' ? 0x7f80 : 0x7c00;
          for (const at of [0, 8191, 8192, CHUNK - 1, CHUNK, 2 * CHUNK, count - 1]) {
            writeSync(wfd, Uint16Array.of(at % 2 ? inf : inf | 1), 0, 2, 6 + at * 2);
            expect(await b.readRows(fd, 6, count, dtype, all, 3), `seed ${seed}: non-finite at ${at}`).toBe(true);
            writeSync(wfd, bits.subarray(3 + at, 4 + at), 0, 2, 6 + at * 2);
          }
        } finally {
          closeSync(wfd);
        }
      });
    });
  }

  it('float64: rounded to float32 over several chunks; a value past float32\'s range reads as an infinity and is seen as non-finite', async () => {
    const seed = freshSeed();
    const next = lcg(seed);
    const count = CHUNK / 8 + 3 + Math.floor(next() * 999);
    const vals = Float64Array.from({ length: count }, () => (next() - 0.5) * 1e6);
    await withFile(bytesOf(vals), async (fd, file) => {
      const dst = new Float32Array(count + 2).fill(SENTINEL);
      expect(await b.readRows(fd, 0, count, 'float64', dst, 1)).toBe(false);
      expect(firstDiff(dst.subarray(1, count + 1), Float32Array.from(vals)), `seed ${seed}`).toBe(-1);
      expect([dst[0], dst[count + 1]]).toEqual([SENTINEL, SENTINEL]);
      const wfd = openSync(file, 'r+');
      try {
        for (const at of [0, count - 1]) {
          writeSync(wfd, Float64Array.of(-1e39), 0, 8, at * 8);
          expect(await b.readRows(fd, 0, count, 'float64', dst, 1), `seed ${seed}: -1e39 at ${at}`).toBe(true);
          expect(dst[1 + at]).toBe(-Infinity);
          writeSync(wfd, vals.subarray(at, at + 1), 0, 8, at * 8);
        }
      } finally {
        closeSync(wfd);
      }
    });
  });
});

describe('reads that end past the end of the file', () => {
  it('are FORMAT errors ("truncated"), not the bytes at the read\'s start read again, for every path (float32, staged float32, converted, slots)', async () => {
    const seed = freshSeed();
    const vals = randomF32(1000, seed);
    await withFile(bytesOf(vals), async (fd) => {
      const truncated = { code: 'ERR_SAEKIT_FORMAT', message: expect.stringMatching(/truncated/) };
      // 996 elements are there from byte 16: one more is asked for.
      await expect(b.readRows(fd, 16, 997, 'float32', new Float32Array(997), 0)).rejects.toMatchObject(truncated);
      const { all, first } = viewAt(997, 16, 16);
      await expect(b.readRows(fd, 16, 997, 'float32', all, first)).rejects.toMatchObject(truncated);
      await expect(b.readRows(fd, 16, 1993, 'bfloat16', new Float32Array(1993), 0)).rejects.toMatchObject(truncated);
      await expect(b.readRows(fd, 16, 499, 'float64', new Float32Array(499), 0)).rejects.toMatchObject(truncated);
      await expect(b.readRowsToSlots(fd, 16, 3, 333, 'float32', new Float32Array(3 * 333), Uint32Array.of(2, 0, 1), 0)).rejects.toMatchObject(truncated);
      await expect(b.readRowsToSlots(fd, 16, 3, 665, 'float16', new Uint16Array(3 * 665), Uint32Array.of(2, 0, 1), 0)).rejects.toMatchObject(truncated);
      // Exactly to the end is fine.
      const dst = new Float32Array(996);
      expect(await b.readRows(fd, 16, 996, 'float32', dst, 0)).toBe(false);
      expect(firstDiff(dst, vals.subarray(4)), `seed ${seed}`).toBe(-1);
    });
  });
});

describe("a read's destination", () => {
  it('is released once the read settles: destinations of finished reads are collected', async () => {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as (() => void) | undefined;
    if (typeof gc !== 'function') return; // no way to force a collection here
    const vals = randomF32(1 << 16, freshSeed());
    await withFile(bytesOf(vals), async (fd) => {
      let collected = 0;
      const registry = new FinalizationRegistry(() => collected++);
      const n = 24;
      for (let i = 0; i < n; i++) {
        const dst = new Float32Array(1 << 16);
        registry.register(dst, i);
        expect(await b.readRows(fd, 0, 1 << 16, 'float32', dst, 0)).toBe(false);
        const slots = new Float32Array(1 << 16);
        registry.register(slots, -i);
        expect(await b.readRowsToSlots(fd, 0, 4, 1 << 14, 'float32', slots, Uint32Array.of(3, 2, 1, 0), 0)).toBe(false);
      }
      for (let k = 0; k < 50 && collected < n; k++) {
        gc();
        await new Promise((r) => setImmediate(r));
      }
      expect(collected, 'destinations collected after their reads settled').toBeGreaterThanOrEqual(n);
    });
  });
});

/** Sizes of this process's mappings advised MADV_HUGEPAGE, by address range. */
function advised(): Map<string, number> {
  const out = new Map<string, number>();
  let range = '';
  let size = 0;
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (head) {
      range = head[0];
      size = Number(BigInt('0x' + head[2]) - BigInt('0x' + head[1]));
    } else if (line.startsWith('VmFlags:') && line.split(/\s+/).includes('hg')) out.set(range, size);
  }
  return out;
}
/** The advised mappings in `after` that `before` did not have (other memory freed meanwhile does not matter). */
const added = (before: Map<string, number>, after: Map<string, number>): number[] => [...after].filter(([k]) => !before.has(k)).map(([, v]) => v);
const thp = '/sys/kernel/mm/transparent_hugepage/enabled';
const smapsFlags = linux && existsSync(thp) && readFileSync('/proc/self/smaps', 'utf8').includes('VmFlags:');

describe('adviseHugePages and fresh batch arrays', () => {
  it.runIf(smapsFlags)('marks the whole 2 MiB pages inside a buffer (VmFlags hg), nothing in one without any, and refuses a non-buffer', () => {
    const before = advised();
    const big = Buffer.allocUnsafeSlow(12 * 1024 * 1024 + 4096 * 5);
    expect(b.adviseHugePages(big.buffer as ArrayBuffer)).toBe(true);
    // Inside 12 MiB + 20 KiB at any alignment lie at least 10 MiB of whole 2 MiB pages.
    expect(Math.max(0, ...added(before, advised()))).toBeGreaterThanOrEqual(10 * 1024 * 1024);
    const mid = advised();
    expect(b.adviseHugePages(new ArrayBuffer(1024 * 1024))).toBe(false); // under 2 MiB: no whole page inside
    expect(b.adviseHugePages(new ArrayBuffer(0))).toBe(false);
    expect(added(mid, advised())).toEqual([]);
    expect(() => b.adviseHugePages(new Float32Array(4) as unknown as ArrayBuffer)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringContaining('buffer') }));
    big[0] = 1;
  });

  it("an in-order pass without recycling asks for huge pages on each batch array of 4 MiB or more, and on none smaller; the rows are the file's", async () => {
    const seed = freshSeed();
    const rnd = lcg(seed);
    const dIn = 256 + Math.floor(rnd() * 64);
    const rows = 4096 + Math.floor(rnd() * 500);
    const x = Float32Array.from({ length: rows * dIn }, () => rnd() * 2 - 1);
    const file = path.join(dir, `huge-${seed}.npy`);
    await writeNpyFixture(file, 'float32', [rows, dIn], x);
    const src = await openActivations(file);
    const advise = b.adviseHugePages;
    const asked: ArrayBuffer[] = [];
    b.adviseHugePages = (buf) => (asked.push(buf), advise.call(b, buf));
    try {
      for (const [batchSize, marked] of [[4096, true], [512, false]] as const) {
        asked.length = 0;
        const seen: { data: Float32Array }[] = [];
        for await (const batch of src.batches({ batchSize })) seen.push(batch);
        expect(concatRows(seen)).toEqual(x);
        // Every full batch's array was advised, and only batch-sized arrays were.
        const full = seen.filter((s) => s.data.length === batchSize * dIn);
        if (marked) {
          expect(full.length).toBe(Math.floor(rows / batchSize));
          expect(full.every((s) => asked.includes(s.data.buffer as ArrayBuffer)), `batchSize ${batchSize}`).toBe(true);
          expect(asked.every((a) => a.byteLength === batchSize * dIn * 4)).toBe(true);
        } else expect(asked, `batchSize ${batchSize}: ${(batchSize * dIn * 4) >> 10} KiB arrays`).toEqual([]);
      }
    } finally {
      b.adviseHugePages = advise;
      await src.close();
    }
  });
});

describe('allocHost', () => {
  it.runIf(smapsFlags)('marks a large block for transparent huge pages (madvise: VmFlags hg in /proc/self/smaps)', () => {
    const before = advised();
    const bytes = 6 * 1024 * 1024 + 4096 * 3;
    const a = new Uint8Array(b.allocHost(bytes));
    a[0] = 1;
    a[bytes - 1] = 2;
    expect(Math.max(0, ...added(before, advised()))).toBeGreaterThanOrEqual(bytes);
    // A small block is not advised.
    const mid = advised();
    const small = new Uint8Array(b.allocHost(64 * 1024));
    small[0] = 1;
    expect(added(mid, advised())).toEqual([]);
    expect([a[0], a[bytes - 1], small[0]]).toEqual([1, 2, 1]);
  });
});

describe('float32 and float64 files shuffled with rows skipped (the float32 mixing buffer)', () => {
  it('rows read after others were dropped move up the slot list and are screened where they land: every finite row served once per epoch, no non-finite value served', async () => {
    for (const dtype of ['float32', 'float64'] as const) {
      const seed = freshSeed();
      const rnd = lcg(seed);
      const dIn = 3 + Math.floor(rnd() * 8);
      const rows = 150 + Math.floor(rnd() * 150);
      const x = Float64Array.from({ length: rows * dIn }, () => Math.fround(rnd() * 8 - 4));
      // About one row in five non-finite: every read of a fill holds some.
      for (let r = 0; r < rows; r++) if (rnd() < 0.2) x[r * dIn + Math.floor(rnd() * dIn)] = [NaN, Infinity, -Infinity][Math.floor(rnd() * 3)]!;
      const file = path.join(dir, `skip-${dtype}-${seed}.npy`);
      await writeNpyFixture(file, dtype, [rows, dIn], dtype === 'float32' ? Float32Array.from(x) : x);
      const keep: number[] = [];
      for (let r = 0; r < rows; r++) if (x.subarray(r * dIn, (r + 1) * dIn).every(Number.isFinite)) keep.push(r);
      const want = new Float32Array(keep.length * dIn);
      keep.forEach((r, i) => want.set(x.subarray(r * dIn, (r + 1) * dIn), i * dIn));
      const src = await openActivations(file, { onNonFinite: 'skip' });
      const msg = `${dtype}, seed ${seed}, dIn ${dIn}, rows ${rows}`;
      const got: Float32Array[] = [];
      const bufferRows = 24 + Math.floor(rnd() * 40);
      for await (const b of src.batches({ batchSize: 7, shuffle: true, seed, epochs: 2, bufferBytes: bufferRows * dIn * 4, chunkRows: 5 + Math.floor(rnd() * 9) })) got.push(b.data.slice());
      const all = concatRows(got.map((data) => ({ data })));
      expect(all.every(Number.isFinite), `${msg}: a non-finite value was served`).toBe(true);
      expect(all.length, msg).toBe(2 * want.length);
      for (const epoch of [all.subarray(0, want.length), all.subarray(want.length)]) expect(sortedRowKeys(epoch, dIn), msg).toEqual(sortedRowKeys(want, dIn));
      expect(src.skippedRows, msg).toBe(2 * (rows - keep.length));
      await src.close();
    }
  });
});
