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

/**
 * allocF32 for long-lived buffers written at random (the mixing buffer, recycled batches): native
 * memory from allocHost, large blocks on transparent huge pages (one page fault per 2 MiB, few TLB
 * misses). Whatever the size: the I/O jobs refill a recycled batch array the consumer has handed
 * back but may still hold, and only allocHost's memory outlives a transfer of its ArrayBuffer
 * (structuredClone and postMessage copy it; after ArrayBuffer.prototype.transfer the job's
 * HostUse defers the free), where V8's own would be freed under the job once the new owner is
 * collected (heap-use-after-free under ASan, for batches under 2 MiB). Not for short-lived
 * arrays: huge pages cost more to hand out.
 */
export function allocLongLivedF32(n: number): Float32Array {
  return new Float32Array(native().allocHost(n * 4), 0, n);
}

/**
 * allocF32 for the fresh batch arrays a pass hands out (the consumer may keep them; V8 frees them
 * itself): the whole 2 MiB pages inside a large one are marked for transparent huge pages, so the
 * read's first writes into memory malloc has just taken from the system fault once per 2 MiB, not
 * once per 4 KiB. On a VM where a 4 KiB fault costs ~12 us (bench read prints it) that halved a
 * 2 GiB in-order float32 pass (measured 2026-12-02: ~850 -> ~540 ms, minor faults ~45,000 -> ~6,000
 * a pass; same peak RSS). allocHost's blocks do the same but go back only through a finalizer
 * that runs after the collection: with a 400 MiB JS heap such a pass peaked at 1.6 GB against 0.8.
 */
export function allocBatchF32(n: number): Float32Array {
  const a = allocF32(n);
  if (n * 4 >= 4 << 20) native().adviseHugePages(a.buffer as ArrayBuffer);
  return a;
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

/** Where a row's data came from, for error messages; `value` is the non-finite value found in it. */
export type RowLabel = (rowInPiece: number, value: number) => string;

/** Counts rows dropped by onNonFinite: 'skip'. */
export interface SkipCounter {
  skippedRows: number;
}

/**
 * Screens `rows` rows of `a` for NaN and infinities. 'error' throws ERR_SAEKIT_NONFINITE naming
 * the first bad row through `label`; 'skip' removes bad rows in place (later rows move up) and
 * counts them. Returns the rows kept. Row r starts at rowAt(r) (default r × dIn).
 */
export function screenRows(
  a: Float32Array,
  rows: number,
  dIn: number,
  policy: NonFinitePolicy,
  label: RowLabel,
  counter: SkipCounter,
  rowAt: (r: number) => number = (r) => r * dIn,
): number {
  let kept = 0;
  for (let r = 0; r < rows; r++) {
    const start = rowAt(r);
    if (anyNonFinite(a, start, start + dIn)) {
      if (policy === 'error') {
        let c = 0;
        while (c < dIn && Number.isFinite(a[start + c]!)) c++;
        throw new SaekitError(
          'ERR_SAEKIT_NONFINITE',
          `Expected finite activations but ${label(r, a[start + c]!)} has ${String(a[start + c])} at column ${c} ` +
            `(pass onNonFinite: 'skip' to drop such rows)`,
        );
      }
      counter.skippedRows++;
      continue;
    }
    if (kept !== r) a.copyWithin(rowAt(kept), start, start + dIn);
    kept++;
  }
  return kept;
}

/**
 * screenRows for rows of 16-bit values (`dtype` bits), e.g. the mixing buffer of a bfloat16
 * file: the same checks and messages, on the values the rows convert to.
 */
export function screenRows16(
  a: Uint16Array,
  dtype: 'bfloat16' | 'float16',
  rows: number,
  dIn: number,
  policy: NonFinitePolicy,
  label: RowLabel,
  counter: SkipCounter,
  rowAt: (r: number) => number,
): number {
  const mask = dtype === 'bfloat16' ? 0x7f80 : 0x7c00;
  let kept = 0;
  for (let r = 0; r < rows; r++) {
    const start = rowAt(r);
    let c = 0;
    while (c < dIn && (a[start + c]! & mask) !== mask) c++;
    if (c < dIn) {
      if (policy === 'error') {
        const v = new Float32Array(1);
        callNative(() => native().convertInto(a.subarray(start + c, start + c + 1), dtype, v, 'float32'));
        throw new SaekitError(
          'ERR_SAEKIT_NONFINITE',
          `Expected finite activations but ${label(r, v[0]!)} has ${String(v[0])} at column ${c} (pass onNonFinite: 'skip' to drop such rows)`,
        );
      }
      counter.skippedRows++;
      continue;
    }
    if (kept !== r) a.copyWithin(rowAt(kept), start, start + dIn);
    kept++;
  }
  return kept;
}
