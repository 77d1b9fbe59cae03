/**
 * NumPy's .npy format (numpy/lib/_format_impl.py): the magic `\x93NUMPY`, a major and minor
 * version byte, the header length (u16 little-endian in version 1.0, u32 in 2.0 and 3.0), then
 * a Python dict literal such as `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`,
 * space-padded and ending in a newline so the data starts on a 64-byte boundary. Versions 1.0
 * and 2.0 headers are latin1, 3.0 headers UTF-8. `shape: ()` is a scalar (one element).
 *
 * Supported descr values (byte order `<` little, `>` big, `=` read as little, `|` for 1-byte
 * types): `f4` float32, `f2` float16, `f8` float64, `i4` int32, `i8` int64, `u1` uint8, and
 * `V2` as bfloat16. ml_dtypes registers bfloat16 with numpy as kind 'V' and byte order '=', so
 * np.save writes an ml_dtypes.bfloat16 array as `'descr': '<V2'` (checked with ml_dtypes 0.5.4
 * and numpy 2.4 on a little-endian machine; np.load reads it back as raw 2-byte voids, which
 * `.view(ml_dtypes.bfloat16)` restores). The writer uses `<V2` for bfloat16 for the same reason.
 * A plain `|V2` (numpy's own void type, byte order not applicable) is rejected as ambiguous.
 * Object arrays (`|O`, pickles) are always rejected.
 */
import { argError, arrayTypeError, SaekitError } from '../errors.js';
import { due, pause, runAll, runSliced } from '../slices.js';
import {
  adviseHugePages,
  allocIoArray,
  arrayFromBytesSteps,
  byteSwapSteps,
  bytePieces,
  checkedNumel,
  checkIoTensor,
  checkPath,
  concatBytes,
  copyBytes,
  formatError,
  HOST_BIG_ENDIAN,
  ITEM_SIZE,
  listForMessage,
  littleEndianPieces,
  MAX_BUFFER_BYTES,
  NPY_MAX_DIMS,
  pieceLimits,
  STEP_ELEMENTS,
  type IoArray,
  type IoDType,
  type IoTensor,
} from './common.js';
import { parsePyDict, PyLiteralError, type PyValue } from './py-literal.js';
import { openFileSource, writeChunksAtomic, type ByteSource } from './source.js';

/** What an .npy header says about the array that follows it. */
export interface NpyHeader {
  dtype: IoDType;
  shape: number[];
  /** True when the data is stored in Fortran (column-major) order. */
  fortranOrder: boolean;
  /** True when the stored elements are big-endian. */
  bigEndian: boolean;
  /** Absolute byte offset of the data in the file. */
  dataOffset: number;
  /** Length of the data in bytes (numel × item size). */
  byteLength: number;
}

const WHAT = 'npy file';
const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
/** numpy's _MAX_HEADER_SIZE: longer headers are refused (numpy only reads them on request). */
export const MAX_NPY_HEADER = 10_000;
/** Bytes before the header: magic (6), version (2) and the longest length field (4). */
const MAX_PREFIX = 12;

const KIND_SIZE_TO_DTYPE: Readonly<Record<string, IoDType>> = {
  f4: 'float32',
  f2: 'float16',
  f8: 'float64',
  i4: 'int32',
  i8: 'int64',
  u1: 'uint8',
  V2: 'bfloat16',
};
const DTYPE_TO_DESCR: Readonly<Record<IoDType, string>> = {
  float32: '<f4',
  float16: '<f2',
  float64: '<f8',
  int32: '<i4',
  int64: '<i8',
  uint8: '|u1',
  bfloat16: '<V2',
};

/** Maps a descr string to a dtype and byte order, or throws a format error naming it. */
function dtypeOfDescr(descr: string, name: string): { dtype: IoDType; bigEndian: boolean } {
  const m = /^([<>=|])([a-zA-Z])(\d{0,3})$/.exec(descr);
  if (m && m[2] === 'O') throw formatError(WHAT, name, `descr '${descr}' is an object array (pickled Python objects), which is never loaded`);
  const dtype = m ? KIND_SIZE_TO_DTYPE[`${m[2]}${m[3]}`] : undefined;
  if (!m || dtype === undefined) throw formatError(WHAT, name, `unsupported descr '${descr.slice(0, 40)}'`);
  const order = m[1]!;
  if (order === '|' && ITEM_SIZE[dtype] > 1) {
    const hint = dtype === 'bfloat16' ? " (a raw 2-byte void; bfloat16 from ml_dtypes is saved as '<V2')" : '';
    throw formatError(WHAT, name, `unsupported descr '${descr}': byte order '|' is only valid for 1-byte types${hint}`);
  }
  return { dtype, bigEndian: order === '>' && ITEM_SIZE[dtype] > 1 };
}

/** Checks the magic and version; returns the size of the length field and the header's text encoding. */
function readVersion(bytes: Uint8Array, size: number, name: string): { lenBytes: 2 | 4; utf8: boolean } {
  if (size < 10 || bytes.length < 10) throw formatError(WHAT, name, `file is ${size} bytes, too short for an npy header`);
  if (MAGIC.some((b, i) => bytes[i] !== b)) throw formatError(WHAT, name, 'missing the \\x93NUMPY magic string');
  const major = bytes[6]!;
  const minor = bytes[7]!;
  if ((major !== 1 && major !== 2 && major !== 3) || minor !== 0) throw formatError(WHAT, name, `unsupported format version ${major}.${minor}`);
  return { lenBytes: major === 1 ? 2 : 4, utf8: major === 3 };
}

/** Decodes the header bytes to text (latin1 for 1.0/2.0, strict UTF-8 for 3.0). */
function headerText(bytes: Uint8Array, utf8: boolean, name: string): string {
  if (!utf8) return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('latin1');
  try {
    // A leading U+FEFF stays, so the dict parser refuses it as np.load does (Python's tokenizer
    // sees a non-printable character); TextDecoder would drop it as a byte-order mark.
    return new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw formatError(WHAT, name, 'version 3.0 header is not valid UTF-8');
  }
}

/** Validates the parsed dict: exactly descr (str), fortran_order (bool) and shape (tuple of ints). */
function headerFields(dict: Map<string, PyValue>, name: string): { descr: string; fortranOrder: boolean; shape: number[] } {
  const keys = [...dict.keys()].sort().join(', ');
  if (keys !== 'descr, fortran_order, shape') throw formatError(WHAT, name, `header keys are {${keys.slice(0, 80)}}, expected {descr, fortran_order, shape}`);
  const descr = dict.get('descr');
  const fortranOrder = dict.get('fortran_order');
  const shape = dict.get('shape');
  if (typeof descr !== 'string') throw formatError(WHAT, name, "'descr' is not a string");
  if (typeof fortranOrder !== 'boolean') throw formatError(WHAT, name, "'fortran_order' is not True or False");
  if (!Array.isArray(shape)) throw formatError(WHAT, name, "'shape' is not a tuple of integers");
  return { descr, fortranOrder, shape: shape as number[] };
}

/**
 * Parses an .npy header from the file's first bytes.
 * @internal
 * @param bytes At least the whole header (magic through the padding); more is fine.
 * @param size Size of the whole file (or buffer): the data must fill it exactly.
 * @param name File path or label for error messages.
 */
export function parseNpyHeaderBytes(bytes: Uint8Array, size: number, name: string): NpyHeader {
  const { lenBytes, utf8 } = readVersion(bytes, size, name);
  if (bytes.length < 8 + lenBytes) throw formatError(WHAT, name, 'file ends inside the header length');
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const hlen = lenBytes === 2 ? dv.getUint16(8, true) : dv.getUint32(8, true);
  if (hlen > MAX_NPY_HEADER) throw formatError(WHAT, name, `header length ${hlen} exceeds the limit of ${MAX_NPY_HEADER} bytes`);
  const dataOffset = 8 + lenBytes + hlen;
  if (dataOffset > size || dataOffset > bytes.length) throw formatError(WHAT, name, `header length ${hlen} runs past the end of the file (${size} bytes)`);
  let dict: Map<string, PyValue>;
  try {
    dict = parsePyDict(headerText(bytes.subarray(8 + lenBytes, dataOffset), utf8, name));
  } catch (err) {
    if (err instanceof PyLiteralError) throw formatError(WHAT, name, `header is not a valid dict literal: ${err.message}`);
    throw err;
  }
  const { descr, fortranOrder, shape } = headerFields(dict, name);
  if (shape.length > NPY_MAX_DIMS) throw formatError(WHAT, name, `shape has ${shape.length} dimensions, more than numpy's ${NPY_MAX_DIMS}`);
  const { dtype, bigEndian } = dtypeOfDescr(descr, name);
  const numel = checkedNumel(shape, ITEM_SIZE[dtype]);
  if (typeof numel === 'string') throw formatError(WHAT, name, numel);
  const byteLength = numel * ITEM_SIZE[dtype];
  if (size - dataOffset !== byteLength) {
    const what = size - dataOffset < byteLength ? 'truncated' : 'has trailing bytes';
    throw formatError(WHAT, name, `data is ${size - dataOffset} bytes but shape (${listForMessage(shape)}) of '${descr}' needs ${byteLength} (file ${what})`);
  }
  return { dtype, shape, fortranOrder, bigEndian, dataOffset, byteLength };
}

/** ERR_SAEKIT_MEMORY for an array of `name` that cannot be reordered here. */
function reorderError(name: string, n: number, itemSize: number, reason: string): SaekitError {
  return new SaekitError('ERR_SAEKIT_MEMORY', `Cannot reorder the Fortran-order array of '${name}' (${n} elements of ${itemSize} bytes) to C order here: ${reason}`);
}

/**
 * Reorders Fortran-order (column-major) elements of `shape` into a new C-order array. Elements
 * move as unsigned integer words, never as floats, so every bit pattern (NaN payloads included)
 * is kept exactly. The result has its own ArrayBuffer (any size, 4 GiB and over included); the
 * words are viewed as Uint8 / Uint16 / Uint32 (two per 8-byte element). A typed array holds at
 * most pieceLimits.buffer (2^32) elements, so a float64 / int64 array over 16 GiB is viewed as
 * several Uint32 views of whole elements each. An ArrayBuffer this runtime cannot allocate is an
 * ERR_SAEKIT_MEMORY naming `name`. Work for runAll / runSliced: yields every STEP_ELEMENTS elements.
 */
function* fortranToC(src: IoArray, fullShape: readonly number[], itemSize: number, name: string): Generator<number, IoArray> {
  const n = src.length;
  // Dimensions of size 1 do not move anything: without them the loop below does less per element.
  const shape = fullShape.filter((d) => d !== 1);
  const nd = shape.length;
  if (nd < 2 || n === 0) return src;
  const words = Math.max(1, itemSize / 4); // 32-bit words per element (2 for 8-byte types)
  let out: ArrayBuffer;
  try {
    out = new ArrayBuffer(src.byteLength);
  } catch (err) {
    if (err instanceof RangeError) throw reorderError(name, n, itemSize, `a second buffer of ${src.byteLength} bytes cannot be allocated (${err.message})`);
    throw err;
  }
  if (src.byteLength > pieceLimits.buffer) adviseHugePages(out); // as allocIoArray: fewer first-write faults
  // Elements per view: all of them, unless their words are more than one typed array holds
  // (only 8-byte elements can be: src is itself one typed array of n elements).
  const per = words > 1 && n * words > pieceLimits.buffer ? Math.floor(pieceLimits.buffer / words) : n;
  const views = (buffer: ArrayBufferLike, byteOffset: number) => {
    const list: (Uint8Array | Uint16Array | Uint32Array)[] = [];
    for (let e = 0; e < n; e += per) {
      const at = byteOffset + e * itemSize;
      const count = Math.min(per, n - e);
      list.push(itemSize === 1 ? new Uint8Array(buffer, at, count) : itemSize === 2 ? new Uint16Array(buffer, at, count) : new Uint32Array(buffer, at, count * words));
    }
    return list;
  };
  const fromViews = views(src.buffer, src.byteOffset);
  const toViews = views(out, 0);
  const stride: number[] = [1];
  for (let k = 1; k < nd; k++) stride[k] = stride[k - 1]! * shape[k - 1]!;
  const idx = new Array<number>(nd).fill(0);
  let off = 0; // the source element of destination element o
  const from0 = fromViews[0]!;
  const to0 = toViews[0]!;
  const split = fromViews.length > 1;
  for (let o0 = 0; o0 < n; o0 += STEP_ELEMENTS) {
    const o1 = Math.min(n, o0 + STEP_ELEMENTS);
    for (let o = o0; o < o1; o++) {
      if (!split) {
        for (let w = 0; w < words; w++) to0[o * words + w] = from0[off * words + w]!;
      } else {
        const to = toViews[Math.floor(o / per)]!;
        const from = fromViews[Math.floor(off / per)]!;
        const t = (o % per) * words;
        const f = (off % per) * words;
        for (let w = 0; w < words; w++) to[t + w] = from[f + w]!;
      }
      for (let k = nd - 1; k >= 0; k--) {
        off += stride[k]!;
        if (++idx[k]! < shape[k]!) break;
        off -= stride[k]! * shape[k]!;
        idx[k] = 0;
      }
    }
    // The reads are strided: each can miss the cache (a few units per element).
    yield 4 * words * (o1 - o0);
  }
  return new (src.constructor as new (b: ArrayBuffer) => IoArray)(out);
}

/**
 * Builds the tensor from the header and its data bytes (an owned copy, swapped and reordered
 * here). Work for runAll / runSliced.
 */
function* decodeData(h: NpyHeader, data: Uint8Array, name: string): Generator<number, IoTensor> {
  const flat = yield* arrayFromBytesSteps(h.dtype, data, h.bigEndian);
  return { dtype: h.dtype, shape: h.shape.slice(), data: h.fortranOrder ? yield* fortranToC(flat, h.shape, ITEM_SIZE[h.dtype], name) : flat };
}

/**
 * decodeData for data already in its typed array (read there in pieces: over
 * pieceLimits.buffer bytes it has no single byte view), in the file's byte order: swapped a
 * piece at a time (no element spans two), then reordered. Work for runAll / runSliced.
 * @internal (readNpz's large entries)
 */
export function* decodeArraySteps(h: NpyHeader, flat: IoArray, name: string): Generator<number, IoTensor> {
  const size = ITEM_SIZE[h.dtype];
  if (h.bigEndian !== HOST_BIG_ENDIAN && size > 1) for (const piece of bytePieces(flat)) yield* byteSwapSteps(piece, size);
  return { dtype: h.dtype, shape: h.shape.slice(), data: h.fortranOrder ? yield* fortranToC(flat, h.shape, size, name) : flat };
}

/** A zeroed typed array for the data `h` describes, or ERR_SAEKIT_MEMORY naming `name`. @internal */
export function allocNpyArray(h: NpyHeader, name: string): IoArray {
  return allocIoArray(h.dtype, h.byteLength / ITEM_SIZE[h.dtype], `the array of '${name}'`);
}

/**
 * Decodes a whole .npy file held in memory. Fortran-order data is reordered to C order and
 * big-endian data swapped to native order; the result never shares memory with `bytes`.
 *
 * @param name Label for error messages (default '<buffer>').
 * @throws SaekitError ERR_SAEKIT_FORMAT naming `name` and the reason: bad magic or version, a
 *   header over 10,000 bytes or not the exact dict literal numpy writes, an unsupported or
 *   object descr, or data that is not exactly numel × item size bytes.
 */
export function parseNpy(bytes: Uint8Array, name = '<buffer>'): IoTensor {
  if (!(bytes instanceof Uint8Array)) throw arrayTypeError('bytes', 'a Uint8Array', bytes);
  const h = parseNpyHeaderBytes(bytes, bytes.length, String(name));
  return runAll(decodeData(h, copyBytes(bytes.subarray(h.dataOffset, h.dataOffset + h.byteLength)), String(name)));
}

/**
 * parseNpy for bytes the caller hands over (readNpz's entries): the data is used in place,
 * without a copy, when `bytes` is its ArrayBuffer's only view (so the array may start at the
 * header's length into that buffer); otherwise as parseNpy. Swapping and reordering run in
 * slices between turns of the event loop. @internal
 */
export async function parseNpyOwned(bytes: Uint8Array, name: string): Promise<IoTensor> {
  const h = parseNpyHeaderBytes(bytes, bytes.length, name);
  const data = bytes.subarray(h.dataOffset, h.dataOffset + h.byteLength);
  const whole = bytes.buffer instanceof ArrayBuffer && bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength;
  // A copy (parseNpy's) is one memcpy; at tens of MiB a turn of the event loop comes first.
  if (!whole && due(data.length)) await pause();
  return runSliced(decodeData(h, whole ? data : copyBytes(data), name));
}

/** Reads and parses the header of an open source with one bounded read. */
async function headerOf(source: ByteSource): Promise<NpyHeader> {
  const prefix = await source.read(0, Math.min(source.size, MAX_PREFIX + MAX_NPY_HEADER));
  return parseNpyHeaderBytes(prefix, source.size, source.name);
}

/**
 * Reads only the header of the .npy file at `path` (at most 10,012 bytes) and checks that the
 * file's size matches it.
 * @throws SaekitError ERR_SAEKIT_FORMAT as parseNpy; ERR_SAEKIT_ARG when the file cannot be opened.
 */
export async function readNpyHeader(path: string): Promise<NpyHeader> {
  checkPath(path);
  const source = await openFileSource(path, WHAT);
  try {
    return await headerOf(source);
  } finally {
    await source.close().catch(() => undefined);
  }
}

/**
 * Reads the .npy file at `path` (the header, then the data straight into an aligned buffer; data
 * over 4 GiB, which no Uint8Array holds, straight into its typed array in 1 GiB pieces).
 * Big-endian data is swapped and Fortran-order data reordered on the JS thread in slices
 * between turns of the event loop.
 * @throws SaekitError ERR_SAEKIT_FORMAT as parseNpy; ERR_SAEKIT_ARG when the file cannot be opened;
 *   ERR_SAEKIT_MEMORY naming the file when its array cannot be held here (over 2^32 elements,
 *   memory this runtime cannot allocate).
 */
export async function readNpy(path: string): Promise<IoTensor> {
  checkPath(path);
  const source = await openFileSource(path, WHAT);
  try {
    const h = await headerOf(source);
    if (h.byteLength <= pieceLimits.buffer) return await runSliced(decodeData(h, await source.read(h.dataOffset, h.byteLength), source.name));
    // Over 4 GiB no Uint8Array can hold the data: it is read straight into its typed array, a
    // piece at a time (the header checked its length against the file's size).
    const flat = allocNpyArray(h, source.name);
    for (const piece of bytePieces(flat)) await source.read(h.dataOffset + (piece.byteOffset - flat.byteOffset), piece.length, piece);
    return await runSliced(decodeArraySteps(h, flat, source.name));
  } finally {
    await source.close().catch(() => undefined);
  }
}

/** numpy's spare room after the dict for growing axis 0 in place (GROWTH_AXIS_MAX_DIGITS). */
const GROWTH_DIGITS = 21;

/**
 * The header bytes numpy would write for this dtype and C-order shape: the dict with keys
 * sorted, the growth padding, then spaces and a newline up to a multiple of 64 bytes. Version
 * 1.0 unless the header is too long for a u16 length, then 2.0.
 */
function encodeHeader(dtype: IoDType, shape: readonly number[]): Uint8Array {
  const tuple = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  let dict = `{'descr': '${DTYPE_TO_DESCR[dtype]}', 'fortran_order': False, 'shape': ${tuple}, }`;
  if (shape.length > 0) dict += ' '.repeat(Math.max(0, GROWTH_DIGITS - String(shape[0]).length));
  for (const lenBytes of [2, 4] as const) {
    const hlen = dict.length + 1;
    const pad = 64 - ((8 + lenBytes + hlen) % 64);
    const total = hlen + pad;
    if (lenBytes === 2 && total > 0xffff) continue;
    const out = Buffer.alloc(8 + lenBytes + total, 0x20);
    out.set(MAGIC, 0);
    out[6] = lenBytes === 2 ? 1 : 2;
    out[7] = 0;
    if (lenBytes === 2) out.writeUInt16LE(total, 8);
    else out.writeUInt32LE(total, 8);
    out.write(dict, 8 + lenBytes, 'latin1');
    out[out.length - 1] = 0x0a;
    return out;
  }
  throw argError('shape', 'a shape whose npy header fits in 4 GiB', shape);
}

/**
 * @internal The header and data chunks of an .npy file: the data is one chunk, or pieces of 1 GiB
 * when it is over 4 GiB (no single Uint8Array views it; see littleEndianPieces).
 */
export function encodeNpyParts(t: IoTensor, name = 't'): Uint8Array[] {
  const { dtype, shape, data } = checkIoTensor(name, t);
  if (shape.length > NPY_MAX_DIMS) {
    throw argError(`${name}.shape`, `at most ${NPY_MAX_DIMS} dimensions (numpy's limit; numpy cannot read more)`, shape, 'ERR_SAEKIT_SHAPE');
  }
  return [encodeHeader(dtype, shape), ...littleEndianPieces(data, ITEM_SIZE[dtype], `${name}.data`)];
}

/**
 * Encodes a tensor as an .npy file: format 1.0 (2.0 when the header needs it), little-endian,
 * C order, with the same header bytes np.save writes (keys sorted, padded to 64 bytes).
 * bfloat16 is written as descr '<V2' like ml_dtypes.
 * @throws SaekitError ERR_SAEKIT_ARG / _DTYPE / _SHAPE for an invalid tensor; ERR_SAEKIT_MEMORY
 *   when the file would be over 4 GiB (no Uint8Array holds it: use writeNpy).
 */
export function encodeNpy(t: IoTensor): Uint8Array {
  const parts = encodeNpyParts(t);
  const total = parts.reduce((a, c) => a + c.length, 0);
  if (total > MAX_BUFFER_BYTES) {
    throw new SaekitError('ERR_SAEKIT_MEMORY', `encodeNpy cannot return ${total} bytes in one Uint8Array (at most ${MAX_BUFFER_BYTES} here); write the array to a file with writeNpy`);
  }
  return concatBytes(parts);
}

/**
 * Writes a tensor to `path` as .npy (see encodeNpy), atomically (see writeFileAtomic).
 * `t.data` is read while the Promise is pending, not copied: it must stay untouched until the
 * Promise settles. Detached or resized meanwhile, the write fails with ERR_SAEKIT_ARG naming
 * t.data and `path` keeps its old content.
 */
export async function writeNpy(path: string, t: IoTensor): Promise<void> {
  checkPath(path);
  await writeChunksAtomic(path, encodeNpyParts(t));
}
