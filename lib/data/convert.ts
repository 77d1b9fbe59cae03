/** Element conversion to float32 and the non-finite screen, on whole chunks (no per-element calls). */
import { callNative, SaekitError } from '../errors.js';
import { native } from '../native/index.js';
import type { NonFinitePolicy } from './options.js';

/** Element types an activation file may hold. */
export type DiskDType = 'float32' | 'float16' | 'bfloat16' | 'float64';
export const DISK_DTYPES: readonly DiskDType[] = ['float32', 'float16', 'bfloat16', 'float64'];
export const ITEM_BYTES: Readonly<Record<DiskDType, number>> = { float32: 4, float16: 2, bfloat16: 2, float64: 8 };

/** A Float32Array of `n` elements in its own uninitialised ArrayBuffer (the caller writes every element). */
export function allocF32(n: number): Float32Array {
  return new Float32Array(Buffer.allocUnsafeSlow(n * 4).buffer, 0, n);
}

/** Reverses the bytes of every element of `bytes` (offset a multiple of `itemSize`) in place. */
export function swapBytes(bytes: Uint8Array, itemSize: number): void {
  if (itemSize === 2) {
    const u = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.length >>> 1);
    for (let i = 0; i < u.length; i++) {
      const x = u[i]!;
      u[i] = ((x & 0xff) << 8) | (x >>> 8);
    }
  } else if (itemSize === 4 || itemSize === 8) {
    const u = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length >>> 2);
    for (let i = 0; i < u.length; i++) {
      const x = u[i]!;
      u[i] = ((x & 0xff) << 24) | ((x & 0xff00) << 8) | ((x >>> 8) & 0xff00) | (x >>> 24);
    }
    if (itemSize === 8) {
      for (let i = 0; i + 1 < u.length; i += 2) {
        const t = u[i]!;
        u[i] = u[i + 1]!;
        u[i + 1] = t;
      }
    }
  }
}

/**
 * Converts `n` elements of `raw` (little-endian `dtype`, byteOffset a multiple of 8) into
 * out[0..n). float16 and bfloat16 go through the addon; float64 rounds to nearest even.
 * When `raw` and `out` share their bytes (float32) nothing is copied.
 */
export function toFloat32(raw: Uint8Array, dtype: DiskDType, out: Float32Array, n: number): void {
  switch (dtype) {
    case 'float32':
      if (raw.buffer !== out.buffer || raw.byteOffset !== out.byteOffset) out.set(new Float32Array(raw.buffer, raw.byteOffset, n));
      return;
    case 'float64':
      out.set(new Float64Array(raw.buffer, raw.byteOffset, n));
      return;
    default: {
      const src = new Uint16Array(raw.buffer, raw.byteOffset, n);
      const dst = out.length === n ? out : out.subarray(0, n);
      callNative(() => native().convertInto(src, dtype, dst, 'float32'));
    }
  }
}

/** True when a[start..end) holds a NaN or an infinity (the addon's vectorised exponent test). */
export function anyNonFinite(a: Float32Array, start: number, end: number): boolean {
  return native().anyNonFinite(a, start, end);
}

/**
 * True when the raw little-endian float16/bfloat16 bits hold a NaN or an infinity (exponent
 * field all ones): two values per 32-bit word, with no float conversion. Their float32
 * conversions are finite exactly when this is false.
 */
export function anyNonFinite16(raw: Uint8Array, dtype: 'float16' | 'bfloat16'): boolean {
  // After >>> 1, each half's exponent field (bf16 bits 7..14, f16 bits 10..14) sits one bit
  // lower; adding one past the field sets bit 14 (30) of that half only when it is all ones.
  const [mask, one] = dtype === 'bfloat16' ? [0x3fc03fc0, 0x00400040] : [0x3e003e00, 0x02000200];
  let m0 = 0;
  let m1 = 0;
  let m2 = 0;
  let m3 = 0;
  // Elements outside the 4-byte-aligned middle are tested one at a time.
  const half = (at: number) => ((((raw[at]! | (raw[at + 1]! << 8)) >>> 1) & mask) + one) | 0;
  let lo = raw.byteOffset & 3 ? Math.min(raw.length, 4 - (raw.byteOffset & 3)) : 0;
  if (raw.byteOffset & 1) lo = raw.length - (raw.length & 1); // odd offset: no aligned middle
  for (let b = 0; b + 1 < lo; b += 2) m0 |= half(b);
  const words = (raw.length - lo) >>> 2;
  const u = words > 0 ? new Int32Array(raw.buffer, raw.byteOffset + lo, words) : new Int32Array(0);
  let i = 0;
  for (; i + 4 <= words; i += 4) {
    m0 |= ((u[i]! >>> 1) & mask) + one;
    m1 |= ((u[i + 1]! >>> 1) & mask) + one;
    m2 |= ((u[i + 2]! >>> 1) & mask) + one;
    m3 |= ((u[i + 3]! >>> 1) & mask) + one;
  }
  for (; i < words; i++) m0 |= ((u[i]! >>> 1) & mask) + one;
  for (let b = lo + words * 4; b + 1 < raw.length; b += 2) m0 |= half(b);
  return ((m0 | m1 | m2 | m3) & 0x40004000) !== 0;
}

/** Where a row's data came from, for error messages. */
export type RowLabel = (rowInPiece: number) => string;

/** Counts rows dropped by onNonFinite: 'skip'. */
export interface SkipCounter {
  skippedRows: number;
}

/**
 * Screens `rows` rows of `a` for NaN and infinities. 'error' throws ERR_SAEKIT_NONFINITE naming
 * the first bad row through `label`; 'skip' removes bad rows in place (later rows move up) and
 * counts them. Returns the rows kept.
 */
export function screenRows(a: Float32Array, rows: number, dIn: number, policy: NonFinitePolicy, label: RowLabel, counter: SkipCounter): number {
  if (!anyNonFinite(a, 0, rows * dIn)) return rows;
  let kept = 0;
  for (let r = 0; r < rows; r++) {
    const start = r * dIn;
    if (anyNonFinite(a, start, start + dIn)) {
      if (policy === 'error') {
        let c = 0;
        while (c < dIn && Number.isFinite(a[start + c]!)) c++;
        throw new SaekitError(
          'ERR_SAEKIT_NONFINITE',
          `Expected finite activations but ${label(r)} has ${String(a[start + c])} at column ${c} ` +
            `(pass onNonFinite: 'skip' to drop such rows)`,
        );
      }
      counter.skippedRows++;
      continue;
    }
    if (kept !== r) a.copyWithin(kept * dIn, start, start + dIn);
    kept++;
  }
  return kept;
}
