/**
 * Shared pieces of the file-format layer: the dtype table, tensor validation, byte order,
 * checked size arithmetic and the error helpers. Internal to lib/io.
 */
import { stat } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { endianness } from 'node:os';

import { argError, SaekitError } from '../errors.js';
import { native } from '../native/index.js';
import { runAll } from '../slices.js';
import { checkKept } from '../validate.js';

/** Element types the file readers and writers handle. */
export type IoDType = 'float32' | 'float16' | 'bfloat16' | 'float64' | 'int32' | 'int64' | 'uint8';

/** The array that holds an IoDType's values; float16 and bfloat16 are raw bits in a Uint16Array. */
export type IoArray = Float32Array | Uint16Array | Float64Array | Int32Array | BigInt64Array | Uint8Array;

/** A dense tensor read from or written to a file. `data` is always in C (row-major) order. */
export interface IoTensor {
  dtype: IoDType;
  shape: number[];
  data: IoArray;
}

/** All IoDTypes, in a fixed order. */
export const IO_DTYPES: readonly IoDType[] = Object.freeze(['float32', 'float16', 'bfloat16', 'float64', 'int32', 'int64', 'uint8']);

type ArrayCtor = { new (buffer: ArrayBuffer, byteOffset?: number, length?: number): IoArray; readonly name: string };

/** Bytes per element of each dtype. */
export const ITEM_SIZE: Readonly<Record<IoDType, number>> = {
  float32: 4,
  float16: 2,
  bfloat16: 2,
  float64: 8,
  int32: 4,
  int64: 8,
  uint8: 1,
};

const ARRAY_CTOR: Readonly<Record<IoDType, ArrayCtor>> = {
  float32: Float32Array,
  float16: Uint16Array,
  bfloat16: Uint16Array,
  float64: Float64Array,
  int32: Int32Array,
  int64: BigInt64Array,
  uint8: Uint8Array,
};

/** Whether this machine stores numbers big-endian (files are little-endian unless they say so). */
export const HOST_BIG_ENDIAN = endianness() === 'BE';

/** The largest single buffer this Node can allocate (4 GiB on Node 20). */
export const MAX_BUFFER_BYTES = 2 ** 32;

/** A malformed-file error: "<what> '<name>': <reason>" with code ERR_SAEKIT_FORMAT. */
export function formatError(what: string, name: string, reason: string): SaekitError {
  return new SaekitError('ERR_SAEKIT_FORMAT', `Invalid ${what} '${name}': ${reason}`);
}

/** Wraps a failure of the file system (missing file, no permission, disk full) as ERR_SAEKIT_ARG. */
export function fsError(action: string, path: string, err: unknown): SaekitError {
  if (err instanceof SaekitError) return err;
  const e = err as { code?: unknown; message?: unknown };
  const detail = typeof e?.message === 'string' ? e.message : String(err);
  const out = new SaekitError('ERR_SAEKIT_ARG', `Cannot ${action} '${path}': ${detail}`);
  (out as { cause?: unknown }).cause = err;
  return out;
}

/**
 * fs.stat, or null for a path that does not exist (ENOENT, ENOTDIR); any other failure (a loop of
 * symbolic links, no permission) is ERR_SAEKIT_ARG naming the path and the system's reason,
 * rather than being taken for a missing file.
 */
export async function statOrMissing(p: string): Promise<Stats | null> {
  try {
    return await stat(p);
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw fsError('read', p, err);
  }
}

/** Longest string shown by previewValue, in characters. */
const PREVIEW_CHARS = 40;

/**
 * A value read from a file, described for an error message in at most about 50 characters:
 * numbers, booleans and null as written, strings quoted and cut at 40 characters, arrays and
 * objects by kind (and length) only. Never recurses: String() or JSON.stringify of a deeply
 * nested array (which JSON.parse accepts) overflows the stack, and a string field can be
 * megabytes long.
 */
export function previewValue(x: unknown): string {
  if (typeof x === 'string') return x.length > PREVIEW_CHARS ? `${JSON.stringify(x.slice(0, PREVIEW_CHARS))}...` : JSON.stringify(x);
  if (typeof x === 'number' || typeof x === 'boolean' || x === null || x === undefined) return String(x);
  if (Array.isArray(x)) return `an array of ${x.length} item${x.length === 1 ? '' : 's'}`;
  return typeof x === 'object' ? 'an object' : `a ${typeof x}`;
}

/** A shape (or offsets) for a message: "2, 3, 4", shortened after 8 entries (see previewValue). */
export function listForMessage(items: readonly unknown[]): string {
  const shown = items.slice(0, 8).map(previewValue);
  return items.length > 8 ? `${shown.join(', ')}, ... (${items.length} entries)` : shown.join(', ');
}

/**
 * Checks that `path` is a non-empty string with no NUL character (which no file system takes);
 * errors name it as `name` (the caller's parameter) and expect `expected`.
 */
export function checkPath(path: unknown, name = 'path', expected = 'a non-empty file path string'): string {
  if (typeof path !== 'string' || path.length === 0 || path.includes('\0')) throw argError(name, expected, path);
  return path;
}

/** checkPath for a folder: the error reads "Expected a folder path for `name` ...". */
export function checkFolderPath(dir: unknown, name = 'dir'): string {
  return checkPath(dir, name, 'a folder path');
}

/**
 * Number of elements of `shape`, or a reason string when a dimension is not a non-negative safe
 * integer or the product (times `itemSize`) would leave the safe-integer range. Never overflows.
 */
export function checkedNumel(shape: readonly unknown[], itemSize: number): number | string {
  let numel = 1;
  let zero = false;
  for (let i = 0; i < shape.length; i++) {
    const d = shape[i];
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) {
      return `dimension ${i} of the shape is ${typeof d === 'number' ? String(d) : typeof d}, not a non-negative integer`;
    }
    if (d === 0) zero = true;
    else if (!zero) {
      if (numel > Math.floor(Number.MAX_SAFE_INTEGER / itemSize / d)) return `shape [${listForMessage(shape)}] is too large`;
      numel *= d;
    }
  }
  return zero ? 0 : numel;
}

/** numpy's limit on the number of dimensions (NPY_MAXDIMS); .npy readers and writers keep to it. */
export const NPY_MAX_DIMS = 64;

/** True when `s` holds a lone UTF-16 surrogate (no UTF-8 form: it would be written as U+FFFD or a "\\ud800" escape). */
export function hasLoneSurrogate(s: string): boolean {
  return /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(s);
}

/** Refuses a name or metadata string that has no UTF-8 form, naming the argument. */
export function checkWellFormed(what: string, s: string): void {
  if (hasLoneSurrogate(s)) throw argError(what, 'a string without lone UTF-16 surrogates (it has no UTF-8 form)', s);
}

/**
 * Validates a tensor given to a writer: a known dtype, a shape of non-negative integers, and a
 * `data` array of the dtype's kind with exactly numel(shape) elements. Throws argument errors.
 */
export function checkIoTensor(name: string, t: unknown): IoTensor {
  if (t === null || typeof t !== 'object') throw argError(name, 'a tensor { dtype, shape, data }', t);
  const { dtype, shape, data } = t as Partial<IoTensor>;
  if (typeof dtype !== 'string' || !(IO_DTYPES as readonly string[]).includes(dtype)) {
    throw argError(`${name}.dtype`, `one of: ${IO_DTYPES.join(', ')}`, dtype, 'ERR_SAEKIT_DTYPE');
  }
  if (!Array.isArray(shape)) throw argError(`${name}.shape`, 'an array of non-negative integers', shape, 'ERR_SAEKIT_SHAPE');
  const numel = checkedNumel(shape, ITEM_SIZE[dtype]);
  if (typeof numel === 'string') throw argError(`${name}.shape`, 'an array of non-negative integers', shape, 'ERR_SAEKIT_SHAPE');
  const ctor = ARRAY_CTOR[dtype];
  if (!(data instanceof ctor)) throw argError(`${name}.data`, `a ${ctor.name} for dtype ${dtype}`, data, 'ERR_SAEKIT_DTYPE');
  if (data.length !== numel) {
    throw argError(`${name}.data`, `${numel} elements for shape [${listForMessage(shape)}]`, data, 'ERR_SAEKIT_SHAPE');
  }
  return { dtype, shape, data };
}

/** Elements a sliced loop of this layer handles between two yields (runAll / runSliced). */
export const STEP_ELEMENTS = 1 << 16;

/** The bytes of a 32-bit word in the other order. */
const swap32 = (x: number) => ((x & 0xff) << 24) | ((x & 0xff00) << 8) | ((x >>> 8) & 0xff00) | (x >>> 24);

/**
 * byteSwap as work for runAll / runSliced (slices.ts): yields every STEP_ELEMENTS elements.
 * Elements move as 16- or 32-bit words where `bytes` starts on such a boundary (several times
 * faster than byte by byte: 4 GiB of float32 in ~1 s rather than ~9), else byte by byte.
 */
export function* byteSwapSteps(bytes: Uint8Array, itemSize: number): Generator<number, void> {
  if (itemSize === 1) return;
  const n = Math.floor(bytes.length / itemSize);
  const wordSize = Math.min(itemSize, 4);
  if (bytes.byteOffset % wordSize === 0) {
    const words = itemSize === 2 ? new Uint16Array(bytes.buffer, bytes.byteOffset, n) : new Uint32Array(bytes.buffer, bytes.byteOffset, (n * itemSize) / 4);
    for (let e0 = 0; e0 < n; e0 += STEP_ELEMENTS) {
      const e1 = Math.min(n, e0 + STEP_ELEMENTS);
      if (itemSize === 2) {
        for (let i = e0; i < e1; i++) {
          const x = words[i]!;
          words[i] = ((x & 0xff) << 8) | (x >>> 8);
        }
      } else if (itemSize === 4) {
        for (let i = e0; i < e1; i++) words[i] = swap32(words[i]!);
      } else {
        for (let i = 2 * e0; i < 2 * e1; i += 2) {
          const lo = words[i]!;
          words[i] = swap32(words[i + 1]!);
          words[i + 1] = swap32(lo);
        }
      }
      yield (e1 - e0) * itemSize;
    }
    return;
  }
  const step = STEP_ELEMENTS * itemSize;
  for (let i0 = 0; i0 < bytes.length; i0 += step) {
    const i1 = Math.min(bytes.length, i0 + step);
    for (let i = i0; i + itemSize <= i1; i += itemSize) {
      for (let a = i, b = i + itemSize - 1; a < b; a++, b--) {
        const x = bytes[a]!;
        bytes[a] = bytes[b]!;
        bytes[b] = x;
      }
    }
    yield i1 - i0;
  }
}

/** Swaps the byte order of every `itemSize`-byte element of `bytes` in place (itemSize 1, 2, 4 or 8). */
export function byteSwap(bytes: Uint8Array, itemSize: number): void {
  runAll(byteSwapSteps(bytes, itemSize));
}

/**
 * A typed array over `bytes`, which must be a fresh copy the caller owns (it is reused, or
 * copied once into an aligned buffer when its offset is not a multiple of the item size).
 * `bigEndian` says the bytes are big-endian; they are swapped to host order in place.
 */
export function arrayFromBytes(dtype: IoDType, bytes: Uint8Array, bigEndian: boolean): IoArray {
  return runAll(arrayFromBytesSteps(dtype, bytes, bigEndian));
}

/** arrayFromBytes as work for runAll / runSliced (the swap yields; an aligning copy is one memcpy). */
export function* arrayFromBytesSteps(dtype: IoDType, bytes: Uint8Array, bigEndian: boolean): Generator<number, IoArray> {
  const size = ITEM_SIZE[dtype];
  let owned = bytes;
  if (bytes.byteOffset % size !== 0 || !(bytes.buffer instanceof ArrayBuffer)) {
    owned = new Uint8Array(bytes.length);
    owned.set(bytes);
  }
  if (bigEndian !== HOST_BIG_ENDIAN) yield* byteSwapSteps(owned, size);
  return new ARRAY_CTOR[dtype](owned.buffer as ArrayBuffer, owned.byteOffset, owned.length / size);
}

/** A fresh copy of `bytes` in its own ArrayBuffer (so the result can back any typed array). */
export function copyBytes(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(bytes.length);
  out.set(bytes);
  return out;
}

/**
 * The little-endian bytes of a tensor's data (a view on little-endian hosts, a swapped copy
 * otherwise). A view is registered as a planned chunk named `name` (see checkPlanned).
 */
export function littleEndianBytes(data: IoArray, itemSize: number, name: string): Uint8Array {
  const view = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (!HOST_BIG_ENDIAN || itemSize === 1) return planChunk(view, name);
  const copy = copyBytes(view);
  byteSwap(copy, itemSize);
  return copy;
}

/**
 * The largest piece of a tensor's bytes that one Uint8Array views when the tensor is over
 * MAX_BUFFER_BYTES: typed arrays hold at most 2^32 elements on Node 20, so such a tensor (a
 * checkpoint's Adam moments at dIn 4096 x 131072 latents) has no single byte view and is
 * written and read in pieces.
 */
export const BYTE_PIECE = 2 ** 30;

/**
 * The sizes the piecewise readers and writers work with: past `buffer` bytes an array has no
 * single Uint8Array view (MAX_BUFFER_BYTES) and is read and written as views of at most `piece`
 * bytes (BYTE_PIECE); `buffer` is also the most elements fortranToC puts in one word view. Tests
 * lower both (_setPieceLimits) to run those paths on small arrays; nothing else changes them.
 * @internal
 */
export const pieceLimits: { readonly buffer: number; readonly piece: number } = { buffer: MAX_BUFFER_BYTES, piece: BYTE_PIECE };

/**
 * Sets pieceLimits for a test, or restores the defaults when called without an argument.
 * `piece` must be a positive multiple of 8 (whole elements of every dtype) and `buffer` at
 * least 8 and at most the defaults. @internal
 */
export function _setPieceLimits(limits?: { buffer: number; piece: number }): void {
  const { buffer, piece } = limits ?? { buffer: MAX_BUFFER_BYTES, piece: BYTE_PIECE };
  if (!Number.isSafeInteger(piece) || piece <= 0 || piece % 8 !== 0 || piece > BYTE_PIECE) throw new RangeError(`piece ${piece} is not a multiple of 8 in (0, ${BYTE_PIECE}]`);
  if (!Number.isSafeInteger(buffer) || buffer < 8 || buffer > MAX_BUFFER_BYTES) throw new RangeError(`buffer ${buffer} is not in [8, ${MAX_BUFFER_BYTES}]`);
  Object.assign(pieceLimits, { buffer, piece });
}

/**
 * Uint8Array views, in order, over the bytes of `data`, each at most pieceLimits.piece bytes (a
 * multiple of 8, so no element is split between two): the pieces a tensor over
 * pieceLimits.buffer is read, swapped and written in.
 */
export function bytePieces(data: IoArray): Uint8Array[] {
  const pieces: Uint8Array[] = [];
  const { piece } = pieceLimits;
  for (let p = 0; p < data.byteLength; p += piece) pieces.push(new Uint8Array(data.buffer, data.byteOffset + p, Math.min(piece, data.byteLength - p)));
  return pieces;
}

/**
 * littleEndianBytes as a list of chunks: one when the data fits in pieceLimits.buffer
 * (MAX_BUFFER_BYTES), else pieces of at most pieceLimits.piece (BYTE_PIECE) bytes (each a view
 * registered as `name`, or a swapped copy).
 */
export function littleEndianPieces(data: IoArray, itemSize: number, name: string): Uint8Array[] {
  if (data.byteLength <= pieceLimits.buffer) return [littleEndianBytes(data, itemSize, name)];
  return bytePieces(data).map((view) => {
    if (!HOST_BIG_ENDIAN || itemSize === 1) return planChunk(view, name);
    const copy = copyBytes(view);
    byteSwap(copy, itemSize);
    return copy;
  });
}

/** A zeroed array of `count` elements of `dtype`; a RangeError when this runtime cannot make it. */
export function newIoArray(dtype: IoDType, count: number): IoArray {
  return new ARRAY_CTOR[dtype](new ArrayBuffer(count * ITEM_SIZE[dtype]), 0, count);
}

/**
 * newIoArray for a reader: a count this runtime cannot hold in one typed array (over 2^32
 * elements, or more memory than it can allocate) is ERR_SAEKIT_MEMORY naming `what` (the file
 * and array), never V8's bare RangeError.
 */
export function allocIoArray(dtype: IoDType, count: number, what: string): IoArray {
  const bytes = count * ITEM_SIZE[dtype];
  const fail = (reason: string) => new SaekitError('ERR_SAEKIT_MEMORY', `Cannot hold ${what} (${count} elements of ${dtype}, ${bytes} bytes) in one typed array here: ${reason}`);
  // Checked first: V8 would allocate the ArrayBuffer before refusing the length.
  if (count > MAX_BUFFER_BYTES) throw fail(`a typed array holds at most ${MAX_BUFFER_BYTES} elements`);
  let out: IoArray;
  try {
    out = newIoArray(dtype, count);
  } catch (err) {
    if (err instanceof RangeError) throw fail(err.message);
    throw err;
  }
  adviseHugePages(out.buffer as ArrayBuffer);
  return out;
}

/**
 * Marks the whole 2 MiB pages inside a fresh array the reader is about to fill for transparent
 * huge pages (native adviseHugePages, as lib/data does for its batch arrays): its first writes
 * then fault once per 2 MiB, not per 4 KiB. On a VM where a 4 KiB fault costs ~20 us, reading a
 * 4 GiB .npy went from ~28 s to ~11 s and its byte swap from ~9 s to ~2 s. Only advice: without
 * the native addon the array is filled all the same. @internal
 */
export function adviseHugePages(buffer: ArrayBuffer): void {
  try {
    native().adviseHugePages(buffer);
  } catch {
    // No addon here (or no such advice on this system): the reads work without it.
  }
}

/**
 * Chunks of a file being written that view a caller's array: the array's name and the chunk's
 * byte length when the file was planned (its header and sizes were computed from that length).
 * The views pass through the encoders unchanged, so the writer finds them here by identity.
 */
const PLANNED = new WeakMap<Uint8Array, { name: string; byteLength: number }>();

/**
 * Registers `view` (a fixed-length view on a caller's array, made when the file is planned) for
 * checkPlanned, and returns it. A fixed-length view has length 0 once its ArrayBuffer is detached
 * or shrunk below its end.
 */
export function planChunk(view: Uint8Array, name: string): Uint8Array {
  PLANNED.set(view, { name, byteLength: view.byteLength });
  return view;
}

/**
 * Throws ERR_SAEKIT_ARG naming the caller's array when `chunk` (registered by planChunk) no
 * longer has the byte length it was planned with: its ArrayBuffer was detached or resized since
 * the write began. Chunks the encoders own pass. Returns the planned byte length.
 */
export function checkPlanned(chunk: Uint8Array): number {
  const p = PLANNED.get(chunk);
  if (p) checkKept(p.name, chunk, p.byteLength, 'bytes');
  return p ? p.byteLength : chunk.byteLength;
}

/** Sets `obj[key] = value` as an own data property, even for keys such as "__proto__". */
export function defineOwn<T>(obj: Record<string, T>, key: string, value: T): void {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

/** Whether `obj` has `key` as an own property. */
export function hasOwn(obj: object, key: string): boolean {
  return Object.prototype.hasOwnProperty.call(obj, key);
}

/** Concatenates byte chunks into one fresh Uint8Array that owns its whole ArrayBuffer. */
export function concatBytes(chunks: readonly Uint8Array[]): Uint8Array {
  let total = 0;
  for (const c of chunks) total += c.length;
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** The transpose of a row-major [rows, cols] matrix. */
export function transpose(m: Float32Array, rows: number, cols: number): Float32Array {
  return runAll(transposeSteps(m, rows, cols));
}

/** Columns of the input (rows of the output) transposeSteps moves together. */
const TRANSPOSE_COLS = 16;
/** Rows of the input transposeSteps handles between two yields. */
const TRANSPOSE_ROWS = 8192;

/**
 * transpose as work for runAll / runSliced. The output is written TRANSPOSE_COLS rows at a time,
 * each in order, reading TRANSPOSE_COLS consecutive floats of each input row: a row-by-row
 * scatter touched every page of the output for each input row, which cost ~1.5 s for a 64 MiB
 * matrix on a VM where first touches of fresh pages are slow, and held the JS thread ~270 ms at
 * the first row alone. Yields every TRANSPOSE_ROWS rows of a block.
 */
export function* transposeSteps(m: Float32Array, rows: number, cols: number): Generator<number, Float32Array> {
  const out = new Float32Array(rows * cols);
  for (let c0 = 0; c0 < cols; c0 += TRANSPOSE_COLS) {
    const c1 = Math.min(cols, c0 + TRANSPOSE_COLS);
    for (let r0 = 0; r0 < rows; r0 += TRANSPOSE_ROWS) {
      const r1 = Math.min(rows, r0 + TRANSPOSE_ROWS);
      for (let r = r0; r < r1; r++) {
        const o = r * cols;
        for (let c = c0; c < c1; c++) out[c * rows + r] = m[o + c]!;
      }
      yield 4 * (c1 - c0) * (r1 - r0);
    }
  }
  return out;
}
