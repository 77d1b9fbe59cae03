/**
 * The safetensors format (huggingface/safetensors): an 8-byte little-endian header length N, N
 * bytes of UTF-8 JSON, then the tensors' bytes, row-major and little-endian, packed from offset 0
 * with no holes. The JSON maps each tensor name to { dtype, shape, data_offsets: [begin, end] }
 * (offsets relative to byte 8 + N) and may hold "__metadata__", a string-to-string map.
 *
 * The reader loads and validates only the header (every dtype of the spec, sub-byte ones
 * included), then reads one tensor at a time with positioned reads: read() converts F32, F16,
 * BF16, F64, I32, I64 and U8 to typed arrays, readBytes gives any tensor's raw bytes; the writer pads the header with spaces to a multiple of 8 bytes and orders
 * tensors by descending item size (then dtype), then name, like the reference writer, so every
 * tensor starts naturally aligned and the output is byte-identical to the reference's.
 * A tensor over 4 GiB (no single Uint8Array views it on Node 20) is written and read in 1 GiB
 * pieces of its own array, so checkpoints and weights of large SAEs round-trip.
 *
 * @example
 * ```ts
 * import { io } from 'saekit';
 * await io.writeSafetensors('sae.safetensors', { W_enc: { dtype: 'float32', shape: [2, 3], data: new Float32Array(6) } }, { d_in: '2' });
 * const reader = await io.readSafetensors('sae.safetensors');
 * try {
 *   const w = await reader.read('W_enc'); // { dtype: 'float32', shape: [2, 3], data: Float32Array(6) }
 * } finally {
 *   await reader.close();
 * }
 * ```
 */
import { argError, SaekitError } from '../errors.js';
import {
  arrayFromBytes,
  BYTE_PIECE,
  byteSwap,
  checkedNumel,
  checkIoTensor,
  checkPath,
  concatBytes,
  defineOwn,
  formatError,
  HOST_BIG_ENDIAN,
  ITEM_SIZE,
  listForMessage,
  littleEndianPieces,
  MAX_BUFFER_BYTES,
  newIoArray,
  checkWellFormed,
  hasLoneSurrogate,
  type IoArray,
  type IoDType,
  type IoTensor,
} from './common.js';
import { scanJsonKeys } from './json-keys.js';
import { jsonLimitExceeded, type JsonLimits } from './json-limits.js';
import { memorySource, openFileSource, writeChunksAtomic, type ByteSource } from './source.js';

/** One tensor's entry in a safetensors header. */
export interface SafetensorsEntry {
  name: string;
  /**
   * The element type, or null for the spec's other dtypes (BOOL, I8, I16, U16, U32, U64, C64,
   * the F8/F6/F4 formats): those are listed and validated, and readBytes reads them, but read()
   * refuses them (ERR_SAEKIT_DTYPE).
   */
  dtype: IoDType | null;
  /** The file's own dtype code ('F32', 'BF16', 'BOOL', ...). */
  code: string;
  shape: number[];
  /** Absolute byte offset of the tensor's data in the file (8 + N + begin). */
  offset: number;
  byteLength: number;
}

/** An open safetensors file whose header has been read and validated. */
export interface SafetensorsReader {
  readonly path: string;
  /** The "__metadata__" map ({} when the file has none). */
  readonly metadata: Record<string, string>;
  /** Every tensor, sorted by offset. */
  readonly tensors: SafetensorsEntry[];
  /** The entry named `name`, or undefined. */
  get(name: string): SafetensorsEntry | undefined;
  /** Reads one tensor with positioned reads (never the whole file) into a fresh, aligned buffer. */
  read(name: string): Promise<IoTensor>;
  /**
   * Reads `length` raw bytes at absolute `offset`; the range must lie within the file. Fills
   * `into` (at least `length` bytes) when given and returns the filled part.
   */
  readBytes(offset: number, length: number, into?: Uint8Array): Promise<Uint8Array>;
  /** Closes the file; reads after this throw. Safe to call twice. */
  close(): Promise<void>;
  /** close(), for `await using`. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** The validated content of a header, as parseSafetensorsHeader returns it. */
export interface SafetensorsHeader {
  /** N, the JSON header's length in bytes; tensor data starts at byte 8 + N. */
  headerLength: number;
  metadata: Record<string, string>;
  /** Sorted by offset. */
  tensors: SafetensorsEntry[];
}

const WHAT = 'safetensors file';
/** The reference implementation's cap on N (MAX_HEADER_SIZE). */
export const MAX_SAFETENSORS_HEADER = 100_000_000;

/**
 * Bounds checked before the header is parsed (see json-limits.ts), since 100 MB of JSON can cost
 * gigabytes in JSON.parse. Depth: a header needs 3 levels (header, entry, shape); 128 is where
 * the reference's parser (serde_json's recursion limit) stops, so no file it reads is refused
 * here. Values: a tensor entry is 10 + rank values (its name, the entry, three field names, the
 * dtype, the shape and its dimensions, data_offsets and its two numbers) and a metadata entry 2,
 * so 2,000,000 admits about 150,000 2-D tensors, several times the largest single-file
 * checkpoints (tens of thousands of tensors), or a million metadata entries. The costliest
 * headers within these bounds validate in seconds and a few hundred MB (2 million empty objects:
 * 0.5 s, 180 MB; a million metadata entries: 4 s, 350 MB), where 100 MB without them took 40 s
 * and 3-5 GB.
 */
export const SAFETENSORS_HEADER_LIMITS: Readonly<JsonLimits> = { maxDepth: 128, maxValues: 2_000_000 };

const FROM_CODE: Readonly<Record<string, IoDType>> = {
  F32: 'float32',
  F16: 'float16',
  BF16: 'bfloat16',
  F64: 'float64',
  I32: 'int32',
  I64: 'int64',
  U8: 'uint8',
};
const TO_CODE: Readonly<Record<IoDType, string>> = {
  float32: 'F32',
  float16: 'F16',
  bfloat16: 'BF16',
  float64: 'F64',
  int32: 'I32',
  int64: 'I64',
  uint8: 'U8',
};

/** Bits per element of every dtype of the format (sub-byte ones must end on a byte boundary). */
const BITS: Readonly<Record<string, number>> = {
  BOOL: 8,
  F4: 4,
  F6_E2M3: 6,
  F6_E3M2: 6,
  U8: 8,
  I8: 8,
  F8_E5M2: 8,
  F8_E4M3: 8,
  F8_E8M0: 8,
  F8_E4M3FNUZ: 8,
  F8_E5M2FNUZ: 8,
  I16: 16,
  U16: 16,
  F16: 16,
  BF16: 16,
  I32: 32,
  U32: 32,
  F32: 32,
  C64: 64,
  F64: 64,
  I64: 64,
  U64: 64,
};

/**
 * Write order of the dtypes, largest first: their positions in the reference's Dtype enum, whose
 * declaration order sorts by item size. Sorting by (rank descending, name) reproduces the
 * reference writer's byte layout exactly, and every tensor starts aligned to its item size.
 */
const WRITE_RANK: Readonly<Record<IoDType, number>> = {
  uint8: 4,
  float16: 11,
  bfloat16: 12,
  int32: 13,
  float32: 15,
  float64: 17,
  int64: 18,
};

/** A name or value quoted for an error message, shortened past 60 characters. */
function quote(s: string): string {
  return JSON.stringify(s.length > 60 ? `${s.slice(0, 60)}...` : s);
}

/**
 * Reads the 8-byte header length at the start of `bytes` and checks it against the cap and the
 * file size. Returns N.
 */
function headerLengthOf(bytes: Uint8Array, fileSize: number, name: string): number {
  if (fileSize < 8 || bytes.length < 8) throw formatError(WHAT, name, `file is ${fileSize} bytes, too short for the 8-byte header length`);
  const n = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_SAFETENSORS_HEADER)) throw formatError(WHAT, name, `header length ${n} exceeds the limit of ${MAX_SAFETENSORS_HEADER} bytes`);
  const len = Number(n);
  if (8 + len > fileSize) throw formatError(WHAT, name, `header length ${len} runs past the end of the file (${fileSize} bytes)`);
  return len;
}

/** Decodes and parses the JSON header text into a plain object, rejecting duplicate keys. */
function parseHeaderJson(bytes: Uint8Array, name: string): Record<string, unknown> {
  const excess = jsonLimitExceeded(bytes, SAFETENSORS_HEADER_LIMITS);
  if (excess !== undefined) throw formatError(WHAT, name, `header ${excess}`);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw formatError(WHAT, name, 'header is not valid UTF-8');
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw formatError(WHAT, name, `header is not valid JSON (${(err as Error).message})`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw formatError(WHAT, name, 'header is not a JSON object');
  // UTF-8 text holds no lone surrogate, but a \ud800 escape makes one, which has no UTF-8 form:
  // the reference reader (serde_json) refuses it anywhere in the header.
  if (/\\u[dD][89a-fA-F]/.test(text)) {
    const lone = findLoneSurrogate(value);
    if (lone !== undefined) throw formatError(WHAT, name, `header string ${quote(lone)} has a lone UTF-16 surrogate escape (no UTF-8 form)`);
  }
  const { duplicateKey: dup, nonIntegerToken: num } = scanJsonKeys(text, ENTRY_INTEGER_FIELDS);
  if (dup !== undefined) throw formatError(WHAT, name, `duplicate key ${quote(dup)} in the header`);
  if (num !== undefined) throw formatError(WHAT, name, `header number ${num} in a shape or data_offsets is not written as a non-negative integer`);
  return value as Record<string, unknown>;
}

/** The first key or string value inside `v` (a JSON value) with a lone surrogate, if any. */
function findLoneSurrogate(v: unknown): string | undefined {
  const stack: unknown[] = [v];
  while (stack.length > 0) {
    const x = stack.pop();
    if (typeof x === 'string') {
      if (hasLoneSurrogate(x)) return x;
    } else if (x !== null && typeof x === 'object') {
      for (const [k, y] of Object.entries(x)) {
        if (hasLoneSurrogate(k)) return k;
        stack.push(y);
      }
    }
  }
  return undefined;
}

/** A tensor entry's fields of unsigned integers (the reference reader refuses `2.0` there; JSON.parse does not). */
const ENTRY_INTEGER_FIELDS = ['shape', 'data_offsets'];

/** Validates "__metadata__": an object whose values are all strings. */
function parseMetadata(value: unknown, name: string): Record<string, string> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw formatError(WHAT, name, '__metadata__ is not an object of strings');
  }
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(value)) {
    if (typeof v !== 'string') throw formatError(WHAT, name, `__metadata__ value for ${quote(k)} is not a string`);
    defineOwn(out, k, v);
  }
  return out;
}

/** Validates one tensor entry (without the packing checks) and returns it with begin/end. */
function parseEntry(key: string, value: unknown, dataStart: number, name: string): SafetensorsEntry & { begin: number; end: number } {
  const bad = (reason: string) => formatError(WHAT, name, `tensor ${quote(key)}: ${reason}`);
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw bad('entry is not an object');
  const { dtype: code, shape, data_offsets: offsets } = value as Record<string, unknown>;
  if (typeof code !== 'string') throw bad('dtype is missing or not a string');
  const bits = Object.prototype.hasOwnProperty.call(BITS, code) ? BITS[code] : undefined;
  if (bits === undefined) throw bad(`unknown dtype ${quote(code)}`);
  const dtype = Object.prototype.hasOwnProperty.call(FROM_CODE, code) ? FROM_CODE[code]! : null;
  if (!Array.isArray(shape)) throw bad('shape is missing or not an array');
  const numel = checkedNumel(shape, Math.max(1, bits / 8));
  if (typeof numel === 'string') throw bad(numel);
  if ((numel * bits) % 8 !== 0) throw bad(`shape [${listForMessage(shape)}] of ${code} (${bits}-bit elements) does not end on a byte boundary`);
  if (!Array.isArray(offsets) || offsets.length !== 2) throw bad('data_offsets is missing or not a [begin, end] pair');
  const [begin, end] = offsets as unknown[];
  if (!isOffset(begin) || !isOffset(end) || end < begin) throw bad(`data_offsets [${listForMessage(offsets)}] are not non-negative integers with begin <= end`);
  const byteLength = (numel * bits) / 8;
  if (end - begin !== byteLength) {
    throw bad(`data_offsets [${begin}, ${end}] span ${end - begin} bytes but shape [${listForMessage(shape)}] of ${code} needs ${byteLength}`);
  }
  return { name: key, dtype, code, shape: shape.slice() as number[], offset: dataStart + begin, byteLength, begin, end };
}

function isOffset(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

/**
 * Parses and validates a safetensors header held in memory.
 *
 * @internal Exposed for tests and fuzzing; use readSafetensors for files.
 * @param bytes The file's first bytes: at least 8 + N of them (more is fine).
 * @param fileSize The size of the whole file in bytes.
 * @param name The file path (or label) that error messages name.
 * @throws SaekitError ERR_SAEKIT_FORMAT naming `name` and the reason for any malformed header:
 *   N over 100,000,000 or past the end, JSON nested deeper than 128 levels or holding more than
 *   2,000,000 values (SAFETENSORS_HEADER_LIMITS), invalid UTF-8 or JSON, duplicate keys, a bad
 *   "__metadata__", an entry with a missing or unknown dtype, a bad shape or offsets, a size
 *   mismatch, holes or overlaps between tensors, or data that does not end exactly at the file's end.
 */
export function parseSafetensorsHeader(bytes: Uint8Array, fileSize: number, name: string): SafetensorsHeader {
  const n = headerLengthOf(bytes, fileSize, name);
  if (bytes.length < 8 + n) throw formatError(WHAT, name, `only ${bytes.length} of the ${8 + n} header bytes are available`);
  const json = parseHeaderJson(bytes.subarray(8, 8 + n), name);
  let metadata: Record<string, string> = {};
  const entries: (SafetensorsEntry & { begin: number; end: number })[] = [];
  for (const [key, value] of Object.entries(json)) {
    // The reference reads the field as an Option: null means no metadata.
    if (key === '__metadata__') metadata = value === null ? {} : parseMetadata(value, name);
    else entries.push(parseEntry(key, value, 8 + n, name));
  }
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let expected = 0;
  for (const e of entries) {
    if (e.begin !== expected) {
      const what = e.begin < expected ? 'overlaps the previous tensor' : `leaves a hole of ${e.begin - expected} bytes before it`;
      throw formatError(WHAT, name, `tensor ${quote(e.name)} at data_offsets [${e.begin}, ${e.end}] ${what}`);
    }
    expected = e.end;
  }
  if (8 + n + expected !== fileSize) {
    throw formatError(WHAT, name, `tensors end at byte ${8 + n + expected} but the file has ${fileSize} bytes`);
  }
  const tensors = entries.map(({ name: key, dtype, code, shape, offset, byteLength }) => ({ name: key, dtype, code, shape, offset, byteLength }));
  return { headerLength: n, metadata, tensors };
}

class Reader implements SafetensorsReader {
  readonly path: string;
  readonly metadata: Record<string, string>;
  readonly tensors: SafetensorsEntry[];
  readonly #source: ByteSource;
  readonly #byName = new Map<string, SafetensorsEntry>();

  constructor(source: ByteSource, header: SafetensorsHeader) {
    this.path = source.name;
    this.#source = source;
    this.metadata = header.metadata;
    this.tensors = header.tensors;
    for (const e of header.tensors) this.#byName.set(e.name, e);
  }

  get(name: string): SafetensorsEntry | undefined {
    return this.#byName.get(name);
  }

  async read(name: string): Promise<IoTensor> {
    const e = typeof name === 'string' ? this.#byName.get(name) : undefined;
    if (!e) throw argError('name', `the name of a tensor in '${this.path}'`, name);
    if (e.dtype === null) {
      throw new SaekitError(
        'ERR_SAEKIT_DTYPE',
        `Expected a tensor of dtype ${Object.keys(FROM_CODE).join(', ')} but ${quote(e.name)} of ${this.path} is ${e.code} (readBytes reads its raw bytes)`,
      );
    }
    if (e.byteLength > MAX_BUFFER_BYTES) return { dtype: e.dtype, shape: e.shape.slice(), data: await this.#readPieces(e, e.dtype) };
    const bytes = await this.#source.read(e.offset, e.byteLength);
    return { dtype: e.dtype, shape: e.shape.slice(), data: arrayFromBytes(e.dtype, bytes, false) };
  }

  /**
   * A tensor over MAX_BUFFER_BYTES (no Uint8Array can view it whole on Node 20): its typed array
   * is made first and filled in pieces of BYTE_PIECE bytes.
   */
  async #readPieces(e: SafetensorsEntry, dtype: IoDType): Promise<IoArray> {
    const size = ITEM_SIZE[dtype];
    const count = e.byteLength / size;
    let data: IoArray;
    try {
      data = newIoArray(dtype, count);
    } catch (err) {
      if (!(err instanceof RangeError)) throw err;
      throw new SaekitError(
        'ERR_SAEKIT_MEMORY',
        `Cannot hold tensor ${quote(e.name)} of ${this.path} (${count} elements, ${e.byteLength} bytes) in one typed array here: ${err.message}`,
      );
    }
    for (let p = 0; p < e.byteLength; p += BYTE_PIECE) {
      const view = new Uint8Array(data.buffer, p, Math.min(BYTE_PIECE, e.byteLength - p));
      await this.#source.read(e.offset + p, view.length, view);
      if (HOST_BIG_ENDIAN && size > 1) byteSwap(view, size);
    }
    return data;
  }

  async readBytes(offset: number, length: number, into?: Uint8Array): Promise<Uint8Array> {
    const size = this.#source.size;
    if (!Number.isSafeInteger(offset) || offset < 0 || offset > size) throw argError('offset', `integer between 0 and ${size}`, offset);
    if (!Number.isSafeInteger(length) || length < 0 || offset + length > size) {
      throw argError('length', `integer between 0 and ${size - offset} (the bytes left after offset ${offset})`, length);
    }
    // The request, not the file, is at fault: one Uint8Array holds at most 4 GiB.
    if (length > MAX_BUFFER_BYTES) throw argError('length', `integer of at most ${MAX_BUFFER_BYTES} (one Uint8Array holds no more; read larger spans in pieces)`, length);
    if (into !== undefined && (!(into instanceof Uint8Array) || into.length < length)) {
      throw argError('into', `a Uint8Array of at least ${length} bytes`, into);
    }
    return this.#source.read(offset, length, into);
  }

  close(): Promise<void> {
    return this.#source.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * Opens a safetensors reader on any byte source; reads and validates only the header.
 * Closes nothing on failure (the caller owns `source`).
 * @internal
 */
export async function openSafetensors(source: ByteSource): Promise<SafetensorsReader> {
  const prefix = await source.read(0, Math.min(8, source.size));
  const n = headerLengthOf(prefix, source.size, source.name);
  const bytes = await source.read(0, 8 + n);
  return new Reader(source, parseSafetensorsHeader(bytes, source.size, source.name));
}

/**
 * Opens the safetensors file at `path`, reading and validating only its header. Read tensors
 * with `reader.read(name)` and call `reader.close()` when done.
 *
 * @throws SaekitError ERR_SAEKIT_FORMAT for a malformed file (see parseSafetensorsHeader),
 *   ERR_SAEKIT_ARG when the file cannot be opened.
 */
export async function readSafetensors(path: string): Promise<SafetensorsReader> {
  checkPath(path);
  const source = await openFileSource(path, WHAT);
  try {
    return await openSafetensors(source);
  } catch (err) {
    await source.close().catch(() => undefined);
    throw err;
  }
}

/**
 * Reads every tensor of an in-memory safetensors file.
 * @internal For tests and fuzzing.
 */
export async function decodeSafetensors(bytes: Uint8Array, name: string): Promise<{ metadata: Record<string, string>; tensors: Record<string, IoTensor> }> {
  const reader = await openSafetensors(memorySource(bytes, name));
  const tensors: Record<string, IoTensor> = {};
  for (const e of reader.tensors) defineOwn(tensors, e.name, await reader.read(e.name));
  return { metadata: reader.metadata, tensors };
}

/** Compares strings by their UTF-8 bytes (the order the reference writer uses). */
function compareUtf8(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/**
 * The header and data chunks of a safetensors file, in order.
 * @internal
 */
export function encodeSafetensorsParts(tensors: Record<string, IoTensor>, metadata?: Record<string, string>): Uint8Array[] {
  if (tensors === null || typeof tensors !== 'object' || Array.isArray(tensors)) throw argError('tensors', 'an object of named tensors', tensors);
  const meta = checkMetadata(metadata);
  const named = Object.keys(tensors).map((key) => {
    if (key === '__metadata__') throw argError('tensors', 'no tensor named "__metadata__" (the name is reserved)', key);
    checkWellFormed('tensors (a name)', key);
    return { key, t: checkIoTensor(`tensors[${JSON.stringify(key)}]`, tensors[key]) };
  });
  named.sort((a, b) => WRITE_RANK[b.t.dtype] - WRITE_RANK[a.t.dtype] || compareUtf8(a.key, b.key));
  const fields: string[] = [];
  if (meta) fields.push(`"__metadata__":${JSON.stringify(meta)}`);
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const { key, t } of named) {
    const end = offset + t.data.byteLength;
    fields.push(`${JSON.stringify(key)}:{"dtype":"${TO_CODE[t.dtype]}","shape":[${t.shape.join(',')}],"data_offsets":[${offset},${end}]}`);
    chunks.push(...littleEndianPieces(t.data, ITEM_SIZE[t.dtype], `tensors[${JSON.stringify(key)}].data`));
    offset = end;
  }
  const json = Buffer.from(`{${fields.join(',')}}`, 'utf8');
  const n = Math.ceil(json.length / 8) * 8;
  const head = Buffer.alloc(8 + n, 0x20);
  head.writeBigUInt64LE(BigInt(n), 0);
  json.copy(head, 8);
  return [head, ...chunks];
}

function checkMetadata(metadata: unknown): Record<string, string> | undefined {
  if (metadata === undefined) return undefined;
  if (metadata === null || typeof metadata !== 'object' || Array.isArray(metadata)) throw argError('metadata', 'an object of strings', metadata);
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== 'string') throw argError(`metadata[${JSON.stringify(k)}]`, 'a string', v);
    checkWellFormed('metadata (a key)', k);
    checkWellFormed(`metadata[${JSON.stringify(k)}]`, v);
  }
  return metadata as Record<string, string>;
}

/**
 * A safetensors file in memory (the bytes writeSafetensors writes).
 * @internal For tests and fuzzing.
 */
export function encodeSafetensors(tensors: Record<string, IoTensor>, metadata?: Record<string, string>): Uint8Array {
  return concatBytes(encodeSafetensorsParts(tensors, metadata));
}

/**
 * Writes `tensors` (name → tensor) and optional string `metadata` to `path` as safetensors,
 * atomically (see writeFileAtomic). Tensors are stored by descending item size (ties broken by
 * dtype as the reference does), then name, so each starts aligned to its element size; the
 * header is space-padded to a multiple of 8 bytes. The tensors' data arrays are read while the
 * Promise is pending, not copied: they must stay untouched until the Promise settles.
 *
 * @throws SaekitError ERR_SAEKIT_ARG / _DTYPE / _SHAPE for a bad tensor, a tensor named
 *   "__metadata__" or non-string metadata; ERR_SAEKIT_ARG when the file cannot be written, or
 *   when a data array is detached or resized before the write ends (`path` keeps its old content).
 */
export async function writeSafetensors(path: string, tensors: Record<string, IoTensor>, metadata?: Record<string, string>): Promise<void> {
  checkPath(path);
  await writeChunksAtomic(path, encodeSafetensorsParts(tensors, metadata));
}
