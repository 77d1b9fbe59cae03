/**
 * The native non-finite screens (float32 and 16-bit) and the float32 file read around them,
 * against a reference written here from the IEEE definition (exponent bits all ones). Run on the
 * default kernels (test/data.test.ts) and on the baseline ones (test/dtype-sse42.test.ts).
 */
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, expect, it } from 'vitest';

import { anyNonFinite } from '../../lib/data/convert.js';
import { native } from '../../lib/native/index.js';
import { lcg } from './reference.js';

/** Random finite float32 values of every magnitude (random sign, exponent 0..254, mantissa). */
function randomFinite(n: number, rnd: () => number): Float32Array {
  const out = new Float32Array(n);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < n; i++) {
    const exp = Math.floor(rnd() * 255); // never 255
    bits[i] = ((rnd() < 0.5 ? 1 : 0) << 31 | exp << 23 | Math.floor(rnd() * (1 << 23))) >>> 0;
  }
  return out;
}

/** The reference: any element whose exponent bits are all ones. */
function hasNonFinite(a: Float32Array): boolean {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i]!)) return true;
  return false;
}

export function screenSuite(): void {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-screen-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('the float32 screen finds one NaN or infinity at any position of any length, and nothing in finite data', () => {
    const rnd = lcg(71);
    // Infinities and NaNs with payloads (quiet and signalling bit patterns), as bits.
    const badBits = [0x7f800000, 0xff800000, 0x7fc00000, 0x7fc00001, 0xff800001, 0x7fffffff];
    for (const n of [1, 3, 7, 8, 15, 16, 17, 31, 33, 64, 100, 257, 1023, 4099]) {
      const a = randomFinite(n, rnd);
      expect(hasNonFinite(a)).toBe(false);
      expect(anyNonFinite(a, 0, n)).toBe(false);
      const spots = n <= 64 ? [...Array(n).keys()] : [0, 1, n >> 1, n - 2, n - 1, Math.floor(rnd() * n)];
      for (const at of spots) {
        for (const bad of badBits) {
          const b = a.slice();
          new Uint32Array(b.buffer)[at] = bad >>> 0;
          expect(hasNonFinite(b)).toBe(true);
          expect(anyNonFinite(b, 0, n)).toBe(true);
          // Ranges that leave the bad element out see none.
          expect(anyNonFinite(b, 0, at)).toBe(false);
          expect(anyNonFinite(b, at + 1, n)).toBe(false);
        }
      }
    }
  });

  it('16-bit screens (bfloat16, float16 reads): a NaN or infinity anywhere in a long read is found, and only then', async () => {
    const rnd = lcg(72);
    for (const [dtype, expMask] of [['bfloat16', 0x7f80], ['float16', 0x7c00]] as const) {
      for (const n of [5, 129, 70001]) {
        const bits = new Uint16Array(n);
        for (let i = 0; i < n; i++) {
          let h: number;
          do h = Math.floor(rnd() * 65536);
          while ((h & expMask) === expMask);
          bits[i] = h;
        }
        const file = path.join(dir, `h-${dtype}-${n}.bin`);
        const read = async (content: Uint16Array): Promise<boolean> => {
          writeFileSync(file, content);
          const fd = openSync(file, 'r');
          try {
            return await native().readRows(fd, 0, n, dtype, new Float32Array(n), 0);
          } finally {
            closeSync(fd);
          }
        };
        expect(await read(bits)).toBe(false);
        for (const at of [0, n >> 1, n - 1, Math.floor(rnd() * n)]) {
          for (const bad of [expMask, expMask | 0x8000, expMask | 1]) {
            const b = bits.slice();
            b[at] = bad;
            expect({ dtype, n, at, bad, found: await read(b) }).toEqual({ dtype, n, at, bad, found: true });
          }
        }
      }
    }
  });

  it('float32 reads land bit-exact at every destination alignment, including those read through the staging buffer', async () => {
    // The kernel copies slowly into destinations 1-63 bytes past the file offset within a page;
    // those reads are staged. Reads longer than one 1 MiB piece, odd lengths, and offsets in the
    // file that are not page aligned.
    const rnd = lcg(73);
    const n = (1 << 18) * 2 + 777;
    const values = randomFinite(n + 2048, rnd);
    const file = path.join(dir, 'f32.bin');
    writeFileSync(file, new Uint8Array(values.buffer));
    const fd = openSync(file, 'r');
    try {
      // allocHost's large blocks start on a 2 MiB boundary, so dstOffset fixes the address mod 4096.
      const host = new Float32Array(native().allocHost((n + 4096) * 4), 0, n + 4096);
      for (const skip of [0, 1, 32, 1023]) {
        const pos = skip * 4;
        for (const dstOffset of [0, 1, 2, 4, 8, 15, 16, 17, 512, 1000, 1024]) {
          const count = n - Math.floor(rnd() * 100);
          host.fill(-1);
          expect(await native().readRows(fd, pos, count, 'float32', host, dstOffset)).toBe(false);
          const got = new Uint32Array(host.buffer, dstOffset * 4, count);
          const want = new Uint32Array(values.buffer, pos, count);
          let diff = -1;
          for (let i = 0; i < count && diff < 0; i++) if (got[i] !== want[i]) diff = i;
          expect({ skip, dstOffset, diff }).toEqual({ skip, dstOffset, diff: -1 });
          expect(host[dstOffset + count]).toBe(-1); // nothing written past the read
          if (dstOffset > 0) expect(host[dstOffset - 1]).toBe(-1);
        }
      }
      // A NaN in the first piece, in a later piece, or as the last element is found.
      for (const at of [3, (1 << 18) + 5, n - 1]) {
        const b = values.slice();
        b[at] = NaN;
        writeFileSync(file, new Uint8Array(b.buffer));
        for (const dstOffset of [0, 4]) {
          expect(await native().readRows(fd, 0, n, 'float32', host, dstOffset)).toBe(true);
          expect(Number.isNaN(host[dstOffset + at]!)).toBe(true);
        }
      }
    } finally {
      closeSync(fd);
    }
  });
}
