/**
 * Fixtures for the data-source tests and benchmark: random rows, tiny independent writers for
 * .npy (C or Fortran order, little or big-endian) and .safetensors, and float16/bfloat16
 * decoders written from the IEEE/bfloat16 definitions (independent of the addon).
 */
import { promises as fs } from 'node:fs';

import type { ActivationSource, Batch, BatchOptions } from '../../lib/data/index.js';

export type FixtureDType = 'float32' | 'float16' | 'bfloat16' | 'float64';

/** Deterministic uniform [-1, 1) floats (LCG). */
export function randomRows(rows: number, dIn: number, seed: number): Float32Array {
  const out = new Float32Array(rows * dIn);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < out.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2147483648 - 1;
  }
  return out;
}

/** Random finite 16-bit patterns of `dtype` (exponent field never all ones). */
export function randomHalfBits(n: number, dtype: 'float16' | 'bfloat16', seed: number): Uint16Array {
  const out = new Uint16Array(n);
  let s = seed >>> 0 || 1;
  const expMask = dtype === 'float16' ? 0x7c00 : 0x7f80;
  for (let i = 0; i < n; i++) {
    do {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      out[i] = s >>> 16;
    } while ((out[i]! & expMask) === expMask);
  }
  return out;
}

/** float16 bits to a number, from the IEEE 754 binary16 definition. */
export function f16ToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return sign * m * 2 ** -24;
  if (e === 31) return m ? NaN : sign * Infinity;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

/** bfloat16 bits to a number: the top half of a float32. */
export function bf16ToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >> 7) & 0xff;
  const m = h & 0x7f;
  if (e === 0) return sign * m * 2 ** -133;
  if (e === 255) return m ? NaN : sign * Infinity;
  return sign * (1 + m / 128) * 2 ** (e - 127);
}

const DESCR: Record<FixtureDType, string> = { float32: 'f4', float16: 'f2', float64: 'f8', bfloat16: 'V2' };
const ITEM: Record<FixtureDType, number> = { float32: 4, float16: 2, float64: 8, bfloat16: 2 };

function bytesOf(data: Float32Array | Float64Array | Uint16Array): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/** A .npy version 1.0 header (the data follows at a 64-byte boundary). */
export function npyHeader(dtype: FixtureDType, shape: number[], opts: { fortran?: boolean; bigEndian?: boolean } = {}): Uint8Array {
  const order = opts.bigEndian ? '>' : '<';
  const shapeStr = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  let header = `{'descr': '${order}${DESCR[dtype]}', 'fortran_order': ${opts.fortran ? 'True' : 'False'}, 'shape': ${shapeStr}, }`;
  const total = 10 + header.length + 1;
  header += ' '.repeat((64 - (total % 64)) % 64) + '\n';
  const head = new Uint8Array(10 + header.length);
  head.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
  head[8] = header.length & 0xff;
  head[9] = header.length >> 8;
  for (let i = 0; i < header.length; i++) head[10 + i] = header.charCodeAt(i);
  return head;
}

/** .npy bytes for row-major `data` of `shape`; Fortran order transposes a 2-D array on disk. */
export function npyBytes(
  dtype: FixtureDType,
  shape: number[],
  data: Float32Array | Float64Array | Uint16Array,
  opts: { fortran?: boolean; bigEndian?: boolean } = {},
): Uint8Array {
  const item = ITEM[dtype];
  const head = npyHeader(dtype, shape, opts);
  let body = bytesOf(data).slice();
  if (opts.fortran) {
    const [rows, cols] = shape as [number, number];
    const t = new Uint8Array(body.length);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) t.set(body.subarray((r * cols + c) * item, (r * cols + c + 1) * item), (c * rows + r) * item);
    }
    body = t;
  }
  if (opts.bigEndian) for (let i = 0; i < body.length; i += item) body.subarray(i, i + item).reverse();
  const out = new Uint8Array(head.length + body.length);
  out.set(head);
  out.set(body, head.length);
  return out;
}

export async function writeNpyFixture(
  path: string,
  dtype: FixtureDType,
  shape: number[],
  data: Float32Array | Float64Array | Uint16Array,
  opts: { fortran?: boolean; bigEndian?: boolean } = {},
): Promise<void> {
  await fs.writeFile(path, npyBytes(dtype, shape, data, opts));
}

const ST_DTYPE: Record<FixtureDType, string> = { float32: 'F32', float16: 'F16', bfloat16: 'BF16', float64: 'F64' };

/** A safetensors header (length prefix and JSON) for tensors laid out back to back in the given order. */
export function safetensorsHeader(tensors: { name: string; dtype: FixtureDType | 'int32'; shape: number[]; byteLength: number }[], oddLength = false): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: { source: 'saekit test' } };
  let off = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype === 'int32' ? 'I32' : ST_DTYPE[t.dtype], shape: t.shape, data_offsets: [off, off + t.byteLength] };
    off += t.byteLength;
  }
  let json = JSON.stringify(header);
  if (oddLength && json.length % 2 === 0) json += ' ';
  if (!oddLength) json += ' '.repeat((8 - (json.length % 8)) % 8);
  const head = new Uint8Array(8 + json.length);
  new DataView(head.buffer).setBigUint64(0, BigInt(json.length), true);
  for (let i = 0; i < json.length; i++) head[8 + i] = json.charCodeAt(i);
  return head;
}

/** A .safetensors file with the given tensors, in the given order, with an odd-length header (data at an odd offset). */
export async function writeSafetensorsFixture(
  path: string,
  tensors: Record<string, { dtype: FixtureDType | 'int32'; shape: number[]; data: Float32Array | Float64Array | Uint16Array | Int32Array }>,
): Promise<void> {
  const entries = Object.entries(tensors);
  const bodies = entries.map(([, t]) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  const head = safetensorsHeader(
    entries.map(([name, t], i) => ({ name, dtype: t.dtype, shape: t.shape, byteLength: bodies[i]!.length })),
    true,
  );
  await fs.writeFile(path, Buffer.concat([head, ...bodies]));
}

/** Every batch of one pass of src.batches(opts), in order. */
export async function collect(src: ActivationSource, opts?: BatchOptions): Promise<Batch[]> {
  const out: Batch[] = [];
  for await (const b of src.batches(opts)) out.push(b);
  return out;
}

/** Concatenates batches' rows. */
export function concatRows(batches: { data: Float32Array }[]): Float32Array {
  const n = batches.reduce((a, b) => a + b.data.length, 0);
  const out = new Float32Array(n);
  let o = 0;
  for (const b of batches) {
    out.set(b.data, o);
    o += b.data.length;
  }
  return out;
}

/** Row keys (the row's values joined) sorted: equal multisets of rows give equal arrays. */
export function sortedRowKeys(data: Float32Array, dIn: number): string[] {
  const keys: string[] = [];
  for (let r = 0; r < data.length / dIn; r++) keys.push(Array.from(data.subarray(r * dIn, (r + 1) * dIn)).join(','));
  return keys.sort();
}

/**
 * A hand-written ActivationSource whose batches() runs `pass` with the options it was given (a
 * stand-in for a user's own source, or a wrapper that watches another source's batches).
 */
export function customSource(
  dIn: number,
  numRows: number | undefined,
  pass: (o: BatchOptions | undefined) => AsyncGenerator<Batch>,
  close: () => Promise<void> = async () => undefined,
): ActivationSource {
  return { dIn, numRows, batches: (o?: BatchOptions) => ({ [Symbol.asyncIterator]: () => pass(o) }), close };
}

/** customSource over `inner`'s own batches, adding each batch's ArrayBuffer to `buffers`. */
export function watchedSource(inner: ActivationSource, buffers: Set<ArrayBufferLike>): ActivationSource {
  return customSource(
    inner.dIn,
    inner.numRows,
    async function* (o) {
      for await (const b of inner.batches(o)) {
        buffers.add(b.data.buffer);
        yield b;
      }
    },
    () => inner.close(),
  );
}
