/**
 * File formats: safetensors, .npy and .npz. Round trips of fresh random bytes in every dtype and
 * odd shapes, golden files written by numpy, ml_dtypes and the reference safetensors writer
 * (test/fixtures/io, see generate.py), hand-built byte layouts from the specs, and one assertion
 * per class of malformed input.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, closeSync, constants, existsSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { totalmem } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import * as zlib from 'node:zlib';

import { describe, expect, it } from 'vitest';

import { SaekitError } from '../lib/errors.js';
import {
  encodeNpy,
  parseNpy,
  readNpy,
  readNpyHeader,
  readNpz,
  readSafetensors,
  writeFileAtomic,
  writeNpy,
  writeNpz,
  writeSafetensors,
  type IoTensor,
} from '../lib/io/index.js';
import { listForMessage, previewValue, transposeSteps } from '../lib/io/common.js';
import { _readNpzSource, decodeNpz, encodeNpzParts } from '../lib/io/npz.js';
import { makeDirs, memorySource } from '../lib/io/source.js';
import { SparseAutoencoder } from '../lib/index.js';
import { decodeSafetensors, encodeSafetensors, encodeSafetensorsParts, parseSafetensorsHeader } from '../lib/io/safetensors.js';
import { parseNpyHeaderBytes } from '../lib/io/npy.js';
import { scanJsonKeys } from '../lib/io/json-keys.js';
import { crc32, encodeZipParts, readZipDirectory } from '../lib/io/zip.js';
import { distUrl, escapeRe, haveDist, runInChild } from './helpers/child.js';
import { gapBound, watchCall } from './helpers/event-loop.js';
import { lcg } from './helpers/reference.js';
import {
  ALL_DTYPES,
  bytesOf,
  expectIoError,
  expectSameTensor,
  fixture,
  FIXTURES,
  freshSeed,
  ITEM,
  loadManifest,
  manifestTensor,
  numel,
  ODD_SHAPES,
  randomTensor,
  rng,
  tmpDir,
} from './helpers/io-helpers.js';

const manifest = loadManifest();

/** A safetensors file from a header (object or raw JSON text) and data bytes; `n` overrides N. */
function stFile(header: string | Uint8Array | object, data: Uint8Array | number = 0, n?: number | bigint): Uint8Array {
  const json = header instanceof Uint8Array ? header : Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const body = typeof data === 'number' ? new Uint8Array(data) : data;
  const out = new Uint8Array(8 + json.length + body.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(n ?? json.length), true);
  out.set(json, 8);
  out.set(body, 8 + json.length);
  return out;
}

function parseSt(bytes: Uint8Array, name = 'mem.safetensors') {
  return parseSafetensorsHeader(bytes, bytes.length, name);
}

/** An .npy file from raw header text (padded to 64 bytes like numpy unless `exact`) and data. */
function npyFile(dict: string, data: Uint8Array | number = 0, version = 1, exact = false): Uint8Array {
  const lenBytes = version === 1 ? 2 : 4;
  let header = dict;
  if (!exact) {
    const total = 8 + lenBytes + header.length + 1;
    header += ' '.repeat((64 - (total % 64)) % 64) + '\n';
  }
  const hb = Buffer.from(header, version === 3 ? 'utf8' : 'latin1');
  const body = typeof data === 'number' ? new Uint8Array(data) : data;
  const out = new Uint8Array(8 + lenBytes + hb.length + body.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, version, 0]);
  const dv = new DataView(out.buffer);
  if (lenBytes === 2) dv.setUint16(8, hb.length, true);
  else dv.setUint32(8, hb.length, true);
  out.set(hb, 8 + lenBytes);
  out.set(body, 8 + lenBytes + hb.length);
  return out;
}

function swapped(bytes: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(bytes);
  for (let i = 0; i < out.length; i += size) out.subarray(i, i + size).reverse();
  return out;
}

function noTempFiles(dir: string): void {
  expect(readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
}

/** `n` nested empty arrays: JSON.parse accepts any depth, String() and JSON.stringify overflow the stack on it. */
const deepArray = (n: number) => '['.repeat(n) + ']'.repeat(n);

/**
 * Runs `read` on a FIFO at `fifo` and returns how it settled. Where the reader blocks opening
 * the FIFO (waiting for a writer), a writer is opened after 3 s to release it, so a regression
 * fails the test instead of hanging the worker.
 */
async function settleOnFifo<T>(fifo: string, read: () => Promise<T>): Promise<{ hung: boolean; result: PromiseSettledResult<T> }> {
  const settled = Promise.allSettled([read()]).then(([r]) => r!);
  const first = await Promise.race([settled, sleep(3000).then(() => 'hung' as const)]);
  if (first !== 'hung') return { hung: false, result: first };
  closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK));
  return { hung: true, result: await settled };
}

describe('safetensors', () => {
  it('round-trips fresh random bytes of every dtype and odd shapes, aligned, with metadata', async () => {
    const seed = freshSeed(1);
    const next = rng(seed);
    const dir = tmpDir();
    const tensors: Record<string, IoTensor> = {};
    for (const dtype of ALL_DTYPES) {
      for (const [i, shape] of ODD_SHAPES.entries()) tensors[`${dtype}.${i}`] = randomTensor(dtype, shape, next);
    }
    Object.defineProperty(tensors, '__proto__', { value: randomTensor('float32', [2], next), enumerable: true });
    tensors['ünï/cödé'] = randomTensor('int64', [3], next);
    const metadata = { format: 'pt', note: 'ünïcödé "quoted"', __proto__x: '' };
    const file = path.join(dir, 'all.safetensors');
    await writeSafetensors(file, tensors, metadata);
    noTempFiles(dir);
    const bytes = new Uint8Array(readFileSync(file));
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect((8 + n) % 8, 'header padded to a multiple of 8').toBe(0);
    const reader = await readSafetensors(file);
    try {
      expect(reader.path).toBe(file);
      expect(reader.metadata).toEqual(metadata);
      expect(reader.tensors.map((t) => t.name).sort()).toEqual(Object.keys(tensors).sort());
      let end = 8 + n;
      for (const e of reader.tensors) {
        expect(e.offset, `${e.name} contiguous`).toBe(end);
        expect(e.offset % ITEM[e.dtype!], `${e.name} aligned`).toBe(0);
        end += e.byteLength;
        expectSameTensor(await reader.read(e.name), tensors[e.name]!, `seed ${seed}: ${e.name}`);
        expect(reader.get(e.name)).toBe(e);
      }
      expect(end).toBe(bytes.length);
      expect(reader.get('missing')).toBeUndefined();
    } finally {
      await reader.close();
    }
  });

  it('writes the byte layout the spec describes (hand-built expected bytes)', async () => {
    const t = {
      b: { dtype: 'float32' as const, shape: [2], data: new Float32Array([1.5, -2]) },
      a: { dtype: 'uint8' as const, shape: [3], data: new Uint8Array([1, 2, 3]) },
      c: { dtype: 'int64' as const, shape: [1], data: new BigInt64Array([-5n]) },
    };
    const json =
      '{"__metadata__":{"k":"v"},"c":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},' +
      '"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"a":{"dtype":"U8","shape":[3],"data_offsets":[16,19]}}';
    const n = Math.ceil(json.length / 8) * 8;
    const want = new Uint8Array(8 + n + 19);
    const dv = new DataView(want.buffer);
    dv.setBigUint64(0, BigInt(n), true);
    want.set(Buffer.from(json.padEnd(n, ' ')), 8);
    dv.setBigInt64(8 + n, -5n, true);
    dv.setFloat32(8 + n + 8, 1.5, true);
    dv.setFloat32(8 + n + 12, -2, true);
    want.set([1, 2, 3], 8 + n + 16);
    expect(Buffer.from(encodeSafetensors(t, { k: 'v' })).equals(Buffer.from(want))).toBe(true);
    const dir = tmpDir();
    await writeSafetensors(path.join(dir, 'x.safetensors'), t, { k: 'v' });
    expect(readFileSync(path.join(dir, 'x.safetensors')).equals(Buffer.from(want))).toBe(true);
  });

  it('reads the reference implementation\'s file and writes the same bytes', async () => {
    const want = manifest.safetensors['reference.safetensors']!;
    const reader = await readSafetensors(path.join(FIXTURES, 'reference.safetensors'));
    const got: Record<string, IoTensor> = {};
    let metadata: Record<string, string> = {};
    try {
      metadata = reader.metadata;
      expect(reader.metadata).toEqual(want.metadata);
      expect(reader.tensors.map((t) => t.name).sort()).toEqual(Object.keys(want.tensors).sort());
      for (const [name, m] of Object.entries(want.tensors)) {
        got[name] = await reader.read(name);
        expectSameTensor(got[name], manifestTensor(m), name);
      }
    } finally {
      await reader.close();
    }
    const again = encodeSafetensors(got, metadata); // metadata in the file's key order
    expect(Buffer.compare(again, fixture('reference.safetensors'))).toBe(0);
  });

  it('reads tensors whose JSON entries come in any order relative to their data offsets (the format does not order them)', async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const m = 2 + Math.floor(next() * 6);
    const sizes = Array.from({ length: m }, () => (next() < 0.2 ? 0 : 1 + Math.floor(next() * 4))); // float32 counts, zero-size ones too
    sizes[0] = 1 + sizes[0]!;
    const perm = (k: number) => {
      const p = Array.from({ length: k }, (_, i) => i);
      for (let i = k - 1; i > 0; i--) {
        const j = Math.floor(next() * (i + 1));
        [p[i], p[j]] = [p[j]!, p[i]!];
      }
      return p;
    };
    const jsonOrder = perm(m); // the order of the JSON entries
    const dataOrder = jsonOrder.slice().reverse(); // where each tensor's bytes lie: the other way round
    const values = sizes.map((n) => Float32Array.from({ length: n }, () => next() * 2 - 1));
    const begin = new Array<number>(m);
    let at = 0;
    for (const t of dataOrder) {
      begin[t] = at;
      at += 4 * sizes[t]!;
    }
    const header: Record<string, unknown> = {};
    for (const t of jsonOrder) header[`t${t}`] = { dtype: 'F32', shape: [sizes[t]], data_offsets: [begin[t], begin[t]! + 4 * sizes[t]!] };
    const body = new Uint8Array(at);
    for (let t = 0; t < m; t++) body.set(new Uint8Array(values[t]!.buffer), begin[t]!);
    const { tensors } = await decodeSafetensors(stFile(header, body), 'mem');
    for (let t = 0; t < m; t++) expect(Array.from(tensors[`t${t}`]!.data as Float32Array), `seed ${seed}: t${t}`).toEqual(Array.from(values[t]!));
  });

  it('reads misaligned data (an unpadded header) by copying', async () => {
    const next = rng(freshSeed(2));
    const f64 = randomTensor('float64', [3], next);
    const i32 = randomTensor('int32', [2, 2], next);
    const bf = randomTensor('bfloat16', [3], next);
    const header = {
      x: { dtype: 'F64', shape: [3], data_offsets: [0, 24] },
      y: { dtype: 'I32', shape: [2, 2], data_offsets: [24, 40] },
      z: { dtype: 'BF16', shape: [3], data_offsets: [40, 46] },
    };
    let text = JSON.stringify(header);
    if ((8 + text.length) % 8 === 0) text += ' ';
    const data = Buffer.concat([bytesOf(f64.data), bytesOf(i32.data), bytesOf(bf.data)]);
    const bytes = stFile(text, data);
    const { tensors } = await decodeSafetensors(bytes, 'mem');
    expectSameTensor(tensors.x!, f64, 'x');
    expectSameTensor(tensors.y!, i32, 'y');
    expectSameTensor(tensors.z!, bf, 'z');
    expect(tensors.x!.data.byteOffset % 8).toBe(0);
  });

  it('readBytes reads raw ranges within the file only; read after close fails', async () => {
    const dir = tmpDir();
    const file = path.join(dir, 'r.safetensors');
    const data = new Float32Array([1, 2, 3, 4]);
    await writeSafetensors(file, { w: { dtype: 'float32', shape: [4], data } });
    const reader = await readSafetensors(file);
    const e = reader.get('w')!;
    expect(Buffer.compare(await reader.readBytes(e.offset, 16), bytesOf(data))).toBe(0);
    const into = new Uint8Array(32);
    const got = await reader.readBytes(e.offset + 4, 8, into);
    expect(got.buffer).toBe(into.buffer);
    expect([...got]).toEqual([...bytesOf(data).subarray(4, 12)]);
    expect((await reader.readBytes(0, 0)).length).toBe(0);
    const size = readFileSync(file).length;
    await expectIoError(() => reader.readBytes(size - 4, 5), 'length', /Expected integer between 0 and 4/, 'ERR_SAEKIT_ARG');
    await expectIoError(() => reader.readBytes(-1, 1), 'offset', /Expected integer/, 'ERR_SAEKIT_ARG');
    await expectIoError(() => reader.readBytes(0.5, 1), 'offset', /Expected integer/, 'ERR_SAEKIT_ARG');
    await expectIoError(() => reader.readBytes(0, 8, new Uint8Array(4)), 'into', /at least 8 bytes/, 'ERR_SAEKIT_ARG');
    await expectIoError(() => reader.read('nope'), file, /name of a tensor/, 'ERR_SAEKIT_ARG');
    await reader.close();
    await reader.close();
    await expectIoError(() => reader.read('w'), file, /this reader was closed/, 'ERR_SAEKIT_DISPOSED');
  });

  it('a file truncated after the reader opened it: a read past its new end is a FORMAT error naming the byte, never zeros', async () => {
    const dir = tmpDir();
    const file = path.join(dir, 'cut.safetensors');
    const n = 101 + Math.floor(Math.random() * 400);
    const data = Float32Array.from({ length: n }, (_, i) => i + 1);
    await writeSafetensors(file, { w: { dtype: 'float32', shape: [n], data } });
    const reader = await readSafetensors(file);
    const e = reader.get('w')!;
    const cut = e.offset + 4 * Math.floor(Math.random() * (n - 1)) + 1;
    truncateSync(file, cut);
    await expectIoError(() => reader.read('w'), file, new RegExp(`file ended at byte ${cut} \\(it was truncated while open\\)`), 'ERR_SAEKIT_FORMAT');
    await expectIoError(() => reader.readBytes(e.offset, 4 * n), file, new RegExp(`file ended at byte ${cut} `), 'ERR_SAEKIT_FORMAT');
    // Ranges still within the file read as before.
    expect(Buffer.compare(await reader.readBytes(e.offset, cut - e.offset - 1), bytesOf(data).subarray(0, cut - e.offset - 1))).toBe(0);
    await reader.close();
  });

  it('reads only the header when opening (a 1 GiB sparse file opens instantly)', async () => {
    const dir = tmpDir();
    const file = path.join(dir, 'big.safetensors');
    const n = 1 << 28;
    writeFileSync(file, stFile({ big: { dtype: 'F32', shape: [n], data_offsets: [0, 4 * n] } }));
    truncateSync(file, readFileSync(file).length + 4 * n);
    const t0 = performance.now();
    const reader = await readSafetensors(file);
    expect(reader.tensors[0]!.byteLength).toBe(4 * n);
    const bytes = await reader.readBytes(reader.tensors[0]!.offset + 4 * n - 8, 8);
    expect([...bytes]).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    await reader.close();
    expect(performance.now() - t0).toBeLessThan(2000);
  });

  // A tensor over 4 GiB has no single Uint8Array view on Node 20 (2^32 elements at most): a
  // Trainer checkpoint's Adam moments at dIn 4096 x 131072 latents (2 M D + M + D floats, 4 GiB
  // + 540 KiB) made the writer throw V8's RangeError and the reader refuse the file as malformed.
  it('writes a tensor over 4 GiB in pieces (the data is viewed, not copied)', () => {
    const n = 2 ** 30 + 3;
    const data = new Float32Array(n); // never touched: no memory is used
    const parts = encodeSafetensorsParts({ 'adam.m': { dtype: 'float32', shape: [n], data } });
    expect(parts.slice(1).reduce((a, c) => a + c.byteLength, 0)).toBe(4 * n);
    for (const c of parts.slice(1)) expect(c.buffer).toBe(data.buffer);
  });

  it.runIf(totalmem() >= 16 * 2 ** 30)('reads a tensor over 4 GiB (a sparse file), and a tensor past it', async () => {
    const dir = tmpDir();
    const file = path.join(dir, 'huge.safetensors');
    const n = 2 ** 30 + 1;
    writeFileSync(file, stFile({ huge: { dtype: 'F32', shape: [n], data_offsets: [0, 4 * n] }, after: { dtype: 'F32', shape: [2], data_offsets: [4 * n, 4 * n + 8] } }));
    const start = readFileSync(file).length;
    truncateSync(file, start + 4 * n + 8);
    const fd = openSync(file, 'r+');
    writeSync(fd, new Uint8Array(new Float32Array([7, 8, 9]).buffer), 0, 12, start + 4 * n - 4);
    closeSync(fd);
    const reader = await readSafetensors(file);
    try {
      expect(Array.from((await reader.read('after')).data as Float32Array)).toEqual([8, 9]);
      const huge = (await reader.read('huge')).data as Float32Array;
      expect(huge).toBeInstanceOf(Float32Array);
      expect(huge.length).toBe(n);
      expect([huge[0], huge[2 ** 28], huge[n - 1]]).toEqual([0, 0, 7]);
    } finally {
      await reader.close();
    }
  }, 180_000); // reads 4 GiB: ~10 s alone, past 60 s seen with both cores loaded

  describe('rejects malformed files with ERR_SAEKIT_FORMAT naming the file and the reason', () => {
    const ok = { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };
    const cases: [string, Uint8Array, RegExp][] = [
      ['a file shorter than 8 bytes', new Uint8Array(5), /5 bytes, too short/],
      ['a header length over 100,000,000', stFile(ok, 8, 100_000_001), /header length 100000001 exceeds the limit of 100000000/],
      ['a header length of 2^64-1', stFile(ok, 8, 2n ** 64n - 1n), /header length 18446744073709551615 exceeds the limit/],
      ['a header length past the end of the file', stFile(ok, 8, 1000), /header length 1000 runs past the end of the file/],
      ['invalid UTF-8 in the header', stFile(Buffer.concat([Buffer.from('{"'), Buffer.from([0xff, 0xfe]), Buffer.from('":1}')])), /not valid UTF-8/],
      ['a byte-order mark', stFile('\ufeff{}'), /not valid JSON/],
      ['invalid JSON', stFile('{"a": {"dtype": "F32",'), /not valid JSON/],
      ['an empty header', stFile(''), /not valid JSON/],
      ['a header that is not an object', stFile('[1, 2]'), /not a JSON object/],
      ['a duplicate tensor name', stFile('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', 8), /duplicate key "a"/],
      ['a duplicate key written with an escape', stFile('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"\\u0061":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4), /duplicate key "a"/],
      ['a duplicate key holding an escaped quote', stFile('{"a\\"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a\\"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4), /duplicate key "a\\"b"/],
      ['a duplicate field inside an entry', stFile('{"a":{"dtype":"F32","dtype":"F64","shape":[1],"data_offsets":[0,4]}}', 4), /duplicate key "dtype"/],
      ['a duplicate metadata key', stFile('{"__metadata__":{"k":"1","k":"2"}}'), /duplicate key "k"/],
      // serde_json (the reference reader) refuses an escape that leaves a lone surrogate, anywhere.
      ['a lone surrogate escape in a tensor name', stFile('{"a\\ud800":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4), /header string "a\\ud800" has a lone UTF-16 surrogate escape/],
      ['a lone low surrogate in a metadata value', stFile('{"__metadata__":{"k":"x\\uDC00y"}}'), /header string "x\\udc00y" has a lone UTF-16 surrogate/],
      ['a lone surrogate in an unknown field', stFile('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"note":["\\ud83d"]}}', 4), /lone UTF-16 surrogate/],
      ['metadata that is not an object', stFile({ __metadata__: ['x'] }), /__metadata__ is not an object of strings/],
      ['a non-string metadata value', stFile({ __metadata__: { k: 1 } }), /__metadata__ value for "k" is not a string/],
      ['an entry that is not an object', stFile({ a: 'F32' }), /tensor "a": entry is not an object/],
      ['a missing dtype', stFile({ a: { shape: [2], data_offsets: [0, 8] } }, 8), /tensor "a": dtype is missing/],
      ['an unknown dtype', stFile({ a: { dtype: 'toString', shape: [2], data_offsets: [0, 2] } }, 2), /tensor "a": unknown dtype "toString"/],
      ['a lower-case dtype', stFile({ a: { dtype: 'f32', shape: [2], data_offsets: [0, 8] } }, 8), /unknown dtype "f32"/],
      ['sub-byte elements that end inside a byte', stFile({ a: { dtype: 'F4', shape: [3], data_offsets: [0, 2] } }, 2), /shape \[3\] of F4 \(4-bit elements\) does not end on a byte boundary/],
      ['a size mismatch of a dtype saekit does not read', stFile({ a: { dtype: 'C64', shape: [2], data_offsets: [0, 8] } }, 8), /span 8 bytes but shape \[2\] of C64 needs 16/],
      ['a missing shape', stFile({ a: { dtype: 'F32', data_offsets: [0, 8] } }, 8), /shape is missing or not an array/],
      ['a negative dimension', stFile({ a: { dtype: 'F32', shape: [-2], data_offsets: [0, 8] } }, 8), /dimension 0 of the shape is -2/],
      ['a fractional dimension', stFile({ a: { dtype: 'F32', shape: [2, 1.5], data_offsets: [0, 12] } }, 12), /dimension 1 of the shape is 1.5/],
      // JSON.parse reads these as integers; the reference reader (unsigned integers) refuses the tokens.
      ['a dimension written as 2.0', stFile('{"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}', 8), /header number 2\.0 in a shape or data_offsets is not written as a non-negative integer/],
      ['a dimension written as -0', stFile('{"a":{"dtype":"F32","shape":[2,-0],"data_offsets":[0,0]}}'), /header number -0 in a shape/],
      ['offsets written with an exponent', stFile('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8e0]}}', 8), /header number 8e0 in a shape/],
      ['an offset written as 0.0 in the second entry', stFile('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8.00]}}', 8), /header number 8\.00 in a shape/],
      ['a string dimension', stFile({ a: { dtype: 'F32', shape: ['2'], data_offsets: [0, 8] } }, 8), /dimension 0 of the shape is string/],
      ['dimensions whose product overflows', stFile({ a: { dtype: 'F32', shape: [2 ** 40, 2 ** 40], data_offsets: [0, 8] } }, 8), /shape \[1099511627776, 1099511627776\] is too large/],
      ['a dimension beyond 2^53', stFile('{"a":{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,8]}}', 8), /dimension 0 of the shape is 18446744073709552000/],
      ['missing data_offsets', stFile({ a: { dtype: 'F32', shape: [2] } }, 8), /data_offsets is missing/],
      ['data_offsets of the wrong length', stFile({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8, 9] } }, 8), /not a \[begin, end\] pair/],
      ['begin after end', stFile({ a: { dtype: 'U8', shape: [0], data_offsets: [8, 0] } }, 8), /begin <= end/],
      ['negative offsets', stFile({ a: { dtype: 'U8', shape: [0], data_offsets: [-1, -1] } }, 0), /not non-negative integers/],
      ['a size mismatch', stFile({ a: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, 8), /span 8 bytes but shape \[3\] of F32 needs 12/],
      ['a hole before the first tensor', stFile({ a: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, 12), /leaves a hole of 4 bytes/],
      [
        'a hole between tensors',
        stFile({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'F32', shape: [1], data_offsets: [8, 12] } }, 12),
        /tensor "b" at data_offsets \[8, 12\] leaves a hole of 4 bytes/,
      ],
      [
        'overlapping tensors',
        stFile({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, 8),
        /overlaps the previous tensor/,
      ],
      ['trailing bytes after the last tensor', stFile(ok, 9), /tensors end at byte \d+ but the file has \d+ bytes/],
      ['a truncated last tensor', stFile(ok, 7), /tensors end at byte \d+ but the file has \d+ bytes/],
      // Refused before JSON.parse (100 MB of these cost 3-5 GB and 30-40 s to parse).
      ['arrays nested 100,000 deep in data_offsets', stFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[${deepArray(100_000)},4]}}`, 4), /header nests objects and arrays more than 128 levels deep/],
      ['nesting of 129 levels in an unknown field', stFile(`{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":${deepArray(127)}}}`), /more than 128 levels deep/],
      ['2,000,001 values (empty objects)', stFile(`{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":[${'{},'.repeat(1_999_986)}{}]}}`), /header holds more than 2000000 values \(keys included\)/],
      ['2,000,001 values (numbers)', stFile(`{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":[${'0,'.repeat(1_999_986)}0]}}`), /header holds more than 2000000 values/],
    ];
    for (const [what, bytes, reason] of cases) {
      it(what, async () => {
        await expectIoError(() => parseSt(bytes), 'mem.safetensors', reason);
        await expectIoError(() => decodeSafetensors(bytes, 'mem.safetensors'), 'mem.safetensors', reason);
      });
    }

    it('names the path when reading from disk', async () => {
      const dir = tmpDir();
      const file = path.join(dir, 'bad.safetensors');
      writeFileSync(file, stFile({ a: { dtype: 'Q9', shape: [1], data_offsets: [0, 1] } }, 1));
      const err = await expectIoError(() => readSafetensors(file), file, /unknown dtype "Q9"/);
      expect(err.message).toBe(`Invalid safetensors file '${file}': tensor "a": unknown dtype "Q9"`);
    });

    it("lists every spec dtype (sizes from their bits) and reads saekit's; read() refuses the others, readBytes reads them; null metadata is none", async () => {
      const dir = tmpDir();
      const file = path.join(dir, 'mixed.safetensors');
      // Layout by hand: F32 [2] (8 B), BOOL [3] (3 B), F4 [4] (2 B), F6_E2M3 [4] (3 B), I16 [2] (4 B), C64 [1] (8 B), F8_E4M3 [0].
      const spec: [string, string, number[], number][] = [
        ['x', 'F32', [2], 8],
        ['mask', 'BOOL', [3], 3],
        ['q4', 'F4', [4], 2],
        ['q6', 'F6_E2M3', [4], 3],
        ['ids', 'I16', [2], 4],
        ['z', 'C64', [1], 8],
        ['e', 'F8_E4M3', [0], 0],
      ];
      const header: Record<string, unknown> = { __metadata__: null };
      let off = 0;
      for (const [name, dtype, shape, bytes] of spec) {
        header[name] = { dtype, shape, data_offsets: [off, off + bytes] };
        off += bytes;
      }
      const data = Uint8Array.from({ length: off }, (_, i) => (i * 37 + 11) & 0xff);
      new DataView(data.buffer).setFloat32(0, 1.5, true);
      new DataView(data.buffer).setFloat32(4, -2.25, true);
      writeFileSync(file, stFile(header, data));
      const r = await readSafetensors(file);
      try {
        expect(r.metadata).toEqual({});
        expect(r.tensors.map((t) => [t.name, t.code, t.dtype, t.byteLength])).toEqual(spec.map(([name, code, , bytes]) => [name, code, code === 'F32' ? 'float32' : null, bytes]));
        expect(Array.from((await r.read('x')).data as Float32Array)).toEqual([1.5, -2.25]);
        for (const name of ['mask', 'q4', 'ids', 'z', 'e']) {
          await expect(r.read(name)).rejects.toMatchObject({ code: 'ERR_SAEKIT_DTYPE', message: expect.stringContaining(`"${name}" of ${file} is ${r.get(name)!.code}`) });
        }
        const ids = r.get('ids')!;
        expect(Array.from(await r.readBytes(ids.offset, ids.byteLength))).toEqual(Array.from(data.subarray(16, 20)));
      } finally {
        await r.close();
      }
    });

    it('accepts nesting of exactly 128 levels and exactly 2,000,000 values, braces inside strings not counted', () => {
      expect(parseSt(stFile(`{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":${deepArray(126)}}}`)).tensors).toHaveLength(1);
      // 14 values besides the x array's elements: {, "a", {, "dtype", "U8", "shape", [, 0, "data_offsets", [, 0, 0, "x", [
      expect(parseSt(stFile(`{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":[${'0,'.repeat(1_999_985)}0]}}`)).tensors).toHaveLength(1);
      // A number is one value however many characters it has: these 1,000,000 numbers are 1,000,014 values.
      expect(parseSt(stFile(`{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":[${'-1.5e-7,'.repeat(999_999)}123]}}`)).tensors).toHaveLength(1);
      const brackets = JSON.stringify({ __metadata__: { note: `${'[{'.repeat(300)} \\" ${'"'.repeat(5)}` } });
      expect(parseSt(stFile(brackets)).metadata.note).toMatch(/^\[\{/);
    });

    it('finds the first duplicate key of an object of any size (a linear scan for a few keys, a Set past 16), escaped or not, and none across objects', () => {
      const next = lcg(5150);
      // Writes key k either as is or with every character as a \u escape.
      const lit = (k: string, escape: boolean) => (escape ? `"${[...k].map((ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`).join('')}"` : JSON.stringify(k));
      for (let trial = 0; trial < 300; trial++) {
        const n = 1 + Math.floor(next() * 40);
        const keys = Array.from({ length: n }, (_, i) => `k${i}.${Math.floor(next() * 1000)}`);
        const dupAt = next() < 0.6 ? Math.floor(next() * (n + 1)) : -1; // where a repeat of an earlier key goes
        const repeated = dupAt > 0 ? keys[Math.floor(next() * dupAt)]! : undefined;
        const parts = keys.map((k) => `${lit(k, next() < 0.2)}: {"same": 1, "inner": [{"same": 2}]}`);
        if (repeated !== undefined) parts.splice(dupAt, 0, `${lit(repeated, next() < 0.5)} : "x"`);
        const text = `{${parts.join(', ')}}`;
        expect(() => JSON.parse(text)).not.toThrow();
        expect(scanJsonKeys(text).duplicateKey, `trial ${trial}: ${n} keys, repeat at ${dupAt}`).toBe(repeated);
      }
      // Keys equal to other objects' keys, strings that are values, and keys inside arrays are not duplicates.
      expect(scanJsonKeys('{"a": "b", "b": ["a", {"a": 1}], "c": {"b": {"b": "b"}}}')).toEqual({});
    });

    it('finds integer fields written as 2.0, 8e0 or -0 only in an entry\'s shape and data_offsets, escaped keys included', () => {
      // Integer tokens of shape / data_offsets: only those two fields of an entry, only tokens read as non-negative integers.
      const fields = ['shape', 'data_offsets'];
      const token = (text: string) => scanJsonKeys(text, fields).nonIntegerToken;
      expect(token('{"a":{"shape":[1,2],"data_offsets":[0,8],"x":[2.0]},"shape":[3.0],"__metadata__":{"shape":"2.0"}}')).toBeUndefined();
      expect(token('{"a":{"shape":[1,2.5,-3,1e400]}}')).toBeUndefined(); // the entry's checks name these
      expect(token('{"a":{"shape":[1],"x":{"shape":[2.0]}},"b":{"x":"]","data_offsets":[0, 1E1]}}')).toBe('1E1');
      expect(token('{"\\u0073hape":{"k":1},"a":{"\\u0073hape":[0.0]}}')).toBe('0.0');
      // Not watched without the fields; the first token wins; a duplicate key found later in the same pass wins over it.
      expect(scanJsonKeys('{"a":{"shape":[2.0]}}')).toEqual({});
      expect(scanJsonKeys('{"a":{"shape":[2.0, 3e0]},"b":{"shape":[-0]}}', fields)).toEqual({ nonIntegerToken: '2.0' });
      expect(scanJsonKeys('{"a":{"shape":[2.0]},"b":{"shape":[1],"shape":[1]}}', fields)).toEqual({ duplicateKey: 'shape' });
    });

    it('reads large legitimate headers: 50,000 tensors and 5,000 metadata entries, in data order (their speed: npm run bench -- header)', () => {
      const header: Record<string, unknown> = { __metadata__: Object.fromEntries(Array.from({ length: 5000 }, (_, i) => [`key.${i}`, `value ${i}`])) };
      // Listed in a shuffled order: the tensors come back sorted by their data offsets.
      const order = Array.from({ length: 50_000 }, (_, i) => i);
      const next = lcg(4242);
      for (let i = order.length - 1; i > 0; i--) {
        const j = Math.floor(next() * (i + 1));
        [order[i], order[j]] = [order[j]!, order[i]!];
      }
      for (const i of order) header[`model.layers.${i >> 4}.expert.${i & 15}.weight`] = { dtype: 'BF16', shape: [1, 1, 1], data_offsets: [2 * i, 2 * i + 2] };
      const bytes = stFile(header, 100_000);
      const h = parseSt(bytes);
      const dataStart = bytes.length - 100_000;
      expect(h.tensors).toHaveLength(50_000);
      for (let i = 0; i < 50_000; i += 997) {
        expect(h.tensors[i]).toEqual({ name: `model.layers.${i >> 4}.expert.${i & 15}.weight`, dtype: 'bfloat16', code: 'BF16', shape: [1, 1, 1], offset: dataStart + 2 * i, byteLength: 2 });
      }
      expect(Object.keys(h.metadata)).toHaveLength(5000);
      expect(h.metadata['key.4999']).toBe('value 4999');
    });

    it('describes values in messages without recursing, in bounded length', () => {
      const deep = JSON.parse(deepArray(100_000)) as unknown;
      expect(previewValue(deep)).toBe('an array of 1 item');
      expect(listForMessage([deep, 4])).toBe('an array of 1 item, 4');
      expect(previewValue('x'.repeat(15_000_000))).toBe(`"${'x'.repeat(40)}"...`);
      expect(listForMessage([{ a: 1 }, null, true, -0.5, 'ab', [1, 2]])).toBe('an object, null, true, -0.5, "ab", an array of 2 items');
      expect(listForMessage(Array.from({ length: 1000 }, (_, i) => i))).toBe('0, 1, 2, 3, 4, 5, 6, 7, ... (1000 entries)');
    });

    it('accepts empty files, 0-d and empty tensors, and unknown entry fields', () => {
      expect(parseSt(stFile('{}')).tensors).toEqual([]);
      const h = parseSt(stFile({ e: { dtype: 'F64', shape: [0, 4], data_offsets: [0, 0] }, s: { dtype: 'I32', shape: [], data_offsets: [0, 4], extra: 1 } }, 4));
      expect(h.tensors.map((t) => [t.name, t.byteLength])).toEqual([
        ['e', 0],
        ['s', 4],
      ]);
    });
  });

  it('rejects bad arguments to the writer with coded errors', async () => {
    const dir = tmpDir();
    const file = path.join(dir, 'w.safetensors');
    const good = { dtype: 'float32' as const, shape: [2], data: new Float32Array(2) };
    await expectIoError(() => writeSafetensors(file, { a: { ...good, data: new Float64Array(2) } as never }), 'tensors["a"].data', /Float32Array/, 'ERR_SAEKIT_DTYPE');
    await expectIoError(() => writeSafetensors(file, { a: { ...good, shape: [3] } }), 'tensors["a"].data', /3 elements/, 'ERR_SAEKIT_SHAPE');
    await expectIoError(() => writeSafetensors(file, { a: { ...good, dtype: 'int8' } as never }), 'tensors["a"].dtype', /one of/, 'ERR_SAEKIT_DTYPE');
    await expectIoError(() => writeSafetensors(file, { a: { ...good, shape: [-2] } }), 'tensors["a"].shape', /non-negative/, 'ERR_SAEKIT_SHAPE');
    await expectIoError(() => writeSafetensors(file, { __metadata__: good }), 'tensors', /reserved/, 'ERR_SAEKIT_ARG');
    await expectIoError(() => writeSafetensors(file, { a: good }, { k: 1 } as never), 'metadata["k"]', /string/, 'ERR_SAEKIT_ARG');
    await expectIoError(() => writeSafetensors('', { a: good }), 'path', /file path/, 'ERR_SAEKIT_ARG');
    // A lone surrogate would be written as a "\ud800" escape, which the reference's JSON parser refuses.
    await expectIoError(() => writeSafetensors(file, { 'a\uDC00': good }), 'tensors (a name)', /lone UTF-16 surrogates/, 'ERR_SAEKIT_ARG');
    await expectIoError(() => writeSafetensors(file, { a: good }, { ['k\uD800']: 'v' }), 'metadata (a key)', /lone UTF-16 surrogates/, 'ERR_SAEKIT_ARG');
    await expectIoError(() => writeSafetensors(file, { a: good }, { k: 'v\uD800' }), 'metadata["k"]', /lone UTF-16 surrogates/, 'ERR_SAEKIT_ARG');
    expect(readdirSync(dir)).toEqual([]);
  });
});

describe('npy', () => {
  for (const [name, m] of Object.entries(manifest.npy)) {
    it(`reads numpy's ${name}`, async () => {
      const want = manifestTensor(m);
      const file = path.join(FIXTURES, name);
      expectSameTensor(await readNpy(file), want, name);
      expectSameTensor(parseNpy(fixture(name), name), want, name);
      const h = await readNpyHeader(file);
      expect(h.dtype).toBe(m.dtype);
      expect(h.shape).toEqual(m.shape);
      expect(h.fortranOrder).toBe(name.includes('fortran'));
      expect(h.bigEndian).toBe(name.includes('_be'));
      expect(h.dataOffset % 64).toBe(0);
      expect(h.dataOffset + h.byteLength).toBe(fixture(name).length);
      if (m.encodeMatches) expect(Buffer.compare(encodeNpy(want), fixture(name)), 'encodeNpy == np.save bytes').toBe(0);
    });
  }

  it('reads header versions 2.0 and 3.0 and bf16 as ml_dtypes writes it', () => {
    expect(fixture('v2_f4.npy')[6]).toBe(2);
    expect(fixture('v3_i8.npy')[6]).toBe(3);
    expect(Buffer.from(fixture('bf16_2d.npy')).toString('latin1')).toContain("'descr': '<V2'");
    const utf8 = npyFile("{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }      ", new Uint8Array([7, 0, 0, 0]), 3);
    expect(parseNpy(utf8).data).toEqual(new Int32Array([7]));
  });

  it('a version 3.0 header that starts with U+FEFF is refused, as np.load refuses it (Python sees a non-printable character; TextDecoder dropped it as a byte-order mark)', async () => {
    const dict = "{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }      ";
    const data = new Uint8Array([7, 0, 0, 0]);
    expect(parseNpy(npyFile(dict, data, 3)).data).toEqual(new Int32Array([7]));
    await expectIoError(() => parseNpy(npyFile(`\ufeff${dict}`, data, 3), 'bom.npy'), 'bom.npy', /header is not a valid dict literal: expected '\{' at character 0 but found "\\ufeff"/);
  });

  it('round-trips fresh random bytes of every dtype and odd shapes', async () => {
    const seed = freshSeed(3);
    const next = rng(seed);
    const dir = tmpDir();
    for (const dtype of ALL_DTYPES) {
      for (const shape of ODD_SHAPES) {
        const t = randomTensor(dtype, shape, next);
        const bytes = encodeNpy(t);
        expect(bytes[6], 'version 1.0').toBe(1);
        const hlen = bytes[8]! | (bytes[9]! << 8);
        expect((10 + hlen) % 64).toBe(0);
        expect(bytes.byteOffset).toBe(0);
        expect(bytes.buffer.byteLength).toBe(bytes.length);
        expectSameTensor(parseNpy(bytes), t, `seed ${seed}: ${dtype} [${shape}]`);
        const file = path.join(dir, `${dtype}-${shape.join('x')}.npy`);
        await writeNpy(file, t);
        expectSameTensor(await readNpy(file), t, `seed ${seed}: ${dtype} [${shape}] file`);
      }
    }
    noTempFiles(dir);
  });

  it('transposes Fortran order and byte-swaps big-endian data of random arrays', () => {
    const seed = freshSeed(4);
    const next = rng(seed);
    const descr = { float32: 'f4', float16: 'f2', bfloat16: 'V2', float64: 'f8', int32: 'i4', int64: 'i8', uint8: 'u1' } as const;
    for (const dtype of ALL_DTYPES) {
      for (const shape of [[3, 4], [2, 3, 5], [4, 1, 2, 3], [0, 3]]) {
        const t = randomTensor(dtype, shape, next);
        const size = ITEM[dtype];
        const n = numel(shape);
        // column-major copy: element (i0..ik) at sum(i_j * prod(shape[<j]))
        const src = bytesOf(t.data);
        const fBytes = new Uint8Array(src.length);
        for (let c = 0; c < n; c++) {
          let rest = c;
          let f = 0;
          let fStride = 1;
          const idx: number[] = [];
          for (let k = shape.length - 1; k >= 0; k--) {
            idx[k] = rest % shape[k]!;
            rest = Math.floor(rest / shape[k]!);
          }
          for (let k = 0; k < shape.length; k++) {
            f += idx[k]! * fStride;
            fStride *= shape[k]!;
          }
          fBytes.set(src.subarray(c * size, (c + 1) * size), f * size);
        }
        const tuple = `(${shape.join(', ')})`;
        const order = size === 1 ? '|' : '>';
        const label = `seed ${seed}: ${dtype} [${shape}]`;
        expectSameTensor(parseNpy(npyFile(`{'descr': '${order}${descr[dtype]}', 'fortran_order': True, 'shape': ${tuple}, }`, swapped(fBytes, size))), t, label);
        expectSameTensor(parseNpy(npyFile(`{'descr': '<${descr[dtype]}', 'fortran_order': True, 'shape': ${tuple}, }`, fBytes)), t, label);
        expectSameTensor(parseNpy(npyFile(`{'descr': '>${descr[dtype]}', 'fortran_order': False, 'shape': ${tuple}, }`, swapped(src, size))), t, label);
      }
    }
  });

  it('keeps NaN payloads bit-exact through the Fortran-order transpose', () => {
    const f32 = new Uint32Array([0x7f800001, 0xffc00123, 1, 2, 3, 0x7fa00000]); // signalling and quiet NaNs with payloads
    const got = parseNpy(npyFile("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", bytesOf(f32)));
    expect([...new Uint32Array(got.data.buffer)]).toEqual([0x7f800001, 1, 3, 0xffc00123, 2, 0x7fa00000]);
    const f64 = new BigUint64Array([0x7ff0000000000001n, 1n, 0xfff8000000abcdefn, 2n]);
    const got64 = parseNpy(npyFile("{'descr': '<f8', 'fortran_order': True, 'shape': (2, 2), }", bytesOf(f64)));
    expect([...new BigUint64Array(got64.data.buffer)]).toEqual([0x7ff0000000000001n, 0xfff8000000abcdefn, 1n, 2n]);
  });

  it("refuses more than numpy's 64 dimensions when reading and writing; 64 Fortran-order dimensions, most of size 1, transpose at once", async () => {
    const shapeOf = (nd: number, big: number[]) => Array.from({ length: nd }, (_, k) => big[k] ?? 1);
    const tuple = (shape: number[]) => `(${shape.join(', ')})`;
    // A 2 KB header of thousands of size-1 dimensions made the transpose loop walk each of them per element.
    const huge = shapeOf(3000, [2, 3]);
    await expectIoError(() => parseNpy(npyFile(`{'descr': '<f4', 'fortran_order': True, 'shape': ${tuple(huge)}, }`, 24)), '<buffer>', /shape has 3000 dimensions, more than numpy's 64/);
    await expectIoError(() => parseNpy(npyFile(`{'descr': '<f4', 'fortran_order': False, 'shape': ${tuple(shapeOf(65, []))}, }`, 4)), '<buffer>', /65 dimensions/);
    // 64 dimensions, three of them > 1 and scattered: the transpose against the column-major rule.
    const next = rng(freshSeed(5));
    const shape = shapeOf(64, []);
    shape[3] = 5;
    shape[40] = 3;
    shape[63] = 7;
    const t = randomTensor('float32', shape, next);
    // As 32-bit words: a Float32Array store may change a NaN's bits.
    const src = new Uint32Array((t.data as Float32Array).buffer);
    const fortran = new Uint32Array(src.length);
    for (let a = 0; a < 5; a++) for (let b = 0; b < 3; b++) for (let c = 0; c < 7; c++) fortran[a + 5 * b + 15 * c] = src[a * 21 + b * 7 + c]!;
    const t0 = performance.now();
    expectSameTensor(parseNpy(npyFile(`{'descr': '<f4', 'fortran_order': True, 'shape': ${tuple(shape)}, }`, bytesOf(fortran))), t, '64-D Fortran');
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(parseNpy(encodeNpy(t)).shape).toEqual(shape);
    await expectIoError(() => encodeNpy({ dtype: 'uint8', shape: shapeOf(65, []), data: new Uint8Array(1) }), 't.shape', /at most 64 dimensions/, 'ERR_SAEKIT_SHAPE');
  });

  it('accepts the harmless variations of the dict literal and never returns shared memory', () => {
    const data = new Uint8Array([1, 0, 0, 0, 2, 0, 0, 0]);
    for (const dict of [
      "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }",
      '{"shape": (2,), "descr": "<i4", "fortran_order": False}',
      "{'descr':'=i4','fortran_order':False,'shape':(2L,)}",
      "{ 'descr' : '<i4' ,\t'fortran_order' : True , 'shape' : ( 2 , ) , }",
      "{'descr': '<i4',\r\n 'fortran_order': False,\r\n 'shape': (2,),\r\n}",
    ]) {
      const bytes = npyFile(dict, data);
      const t = parseNpy(bytes);
      expect(t.data).toEqual(new Int32Array([1, 2]));
      expect(t.data.buffer).not.toBe(bytes.buffer);
    }
    expect(parseNpy(npyFile("{'descr': '<f8', 'fortran_order': False, 'shape': (), }", bytesOf(new Float64Array([2.5])))).data).toEqual(new Float64Array([2.5]));
    expect(parseNpy(npyFile("{'descr': '<i4', 'fortran_order': False, 'shape': (1, 2,), }", data), 'x').shape).toEqual([1, 2]);
    // 16 digits, the most an exact integer is read with: an empty array of 10^15 rows.
    expect(parseNpy(npyFile("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000000, 0), }")).shape).toEqual([1e15, 0]);
    expect(parseNpy(npyFile("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", data, 1, true)).shape).toEqual([2]);
  });

  it('refuses to read a header over 10,000 bytes (numpy\'s own limit), in either header version', () => {
    const dict = `{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }${' '.repeat(11_000)}`;
    for (const version of [1, 2]) {
      expect(() => parseNpy(npyFile(dict, 4, version), 'big.npy')).toThrow(/header length \d+ exceeds the limit of 10000 bytes/);
    }
    expect(parseNpy(npyFile(`{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }${' '.repeat(9_000)}`, 4, 2)).shape).toEqual([1]);
  });

  it('reads only the header (a 1 GiB sparse file)', async () => {
    const dir = tmpDir();
    const file = path.join(dir, 'big.npy');
    const head = npyFile("{'descr': '<f4', 'fortran_order': False, 'shape': (268435456,), }");
    writeFileSync(file, head);
    truncateSync(file, head.length + 2 ** 30);
    const t0 = performance.now();
    expect(await readNpyHeader(file)).toEqual({ dtype: 'float32', shape: [2 ** 28], fortranOrder: false, bigEndian: false, dataOffset: head.length, byteLength: 2 ** 30 });
    expect(performance.now() - t0).toBeLessThan(1000);
  });

  describe('rejects malformed files with ERR_SAEKIT_FORMAT naming the file and the reason', () => {
    const f4 = (shape: string, n: number) => npyFile(`{'descr': '<f4', 'fortran_order': False, 'shape': ${shape}, }`, 4 * n);
    const hdr = (dict: string) => npyFile(dict, 8);
    const cases: [string, () => Uint8Array, RegExp][] = [
      ['a file too short for the magic', () => new Uint8Array([0x93, 0x4e, 0x55]), /3 bytes, too short/],
      ['a wrong magic string', () => { const b = f4('(2,)', 2); b[1] = 0x4f; return b; }, /missing the \\x93NUMPY magic/],
      ['an unknown major version', () => { const b = f4('(2,)', 2); b[6] = 4; return b; }, /unsupported format version 4\.0/],
      ['an unknown minor version', () => { const b = f4('(2,)', 2); b[7] = 1; return b; }, /unsupported format version 1\.1/],
      ['a v2 header length cut short', () => npyFile('', 0, 2, true).subarray(0, 10), /ends inside the header length/],
      ['a header over 10,000 bytes', () => npyFile(`{'descr': '<u1', 'fortran_order': False, 'shape': (1,), }${' '.repeat(10_001)}`, 1, 2), /header length 10\d+ exceeds the limit of 10000/],
      ['a header length past the end', () => { const b = f4('(2,)', 0); b[8] = 0xff; b[9] = 0x20; return b; }, /header length 8447 runs past the end of the file/],
      ['a header that is not a dict', () => hdr("['descr', '<f4']"), /not a valid dict literal: expected '\{'/],
      ['code in the header', () => hdr("{'descr': __import__('os'), 'fortran_order': False, 'shape': (2,)}"), /not a valid dict literal: unexpected '_'/],
      ['an unterminated string', () => hdr("{'descr: '<f4'}"), /not a valid dict literal/],
      ['text after the dict', () => hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} x"), /after the closing/],
      ['a second closing brace', () => hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}}"), /unexpected '\}' after the closing '\}'/],
      ['a comma after the dict', () => hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)},"), /unexpected ',' after the closing '\}'/],
      ['items without a comma between them', () => hdr("{'descr': '<f4' 'fortran_order': False, 'shape': (2,)}"), /expected ',' or '\}' at character 16 but found '''/],
      ['dimensions without a comma between them', () => hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (2 3)}"), /expected ',' or '\)' at character \d+ but found '3'/],
      ['a lower-case long suffix (numpy writes L)', () => hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (2l,)}"), /expected ',' or '\)' at character \d+ but found 'l'/],
      ['a line break in a string', () => hdr("{'descr': '<f\n4', 'fortran_order': False, 'shape': (2,)}"), /unsupported escape or line break in string at character 10/],
      ['a missing key', () => hdr("{'descr': '<f4', 'shape': (2,)}"), /header keys are \{descr, shape\}, expected \{descr, fortran_order, shape\}/],
      ['an extra key', () => hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}"), /header keys are \{descr, fortran_order, shape, x\}/],
      ['a duplicate key', () => hdr("{'descr': '<f4', 'descr': '<f8', 'fortran_order': False, 'shape': (1,)}"), /duplicate key 'descr'/],
      ['a descr that is not a string', () => hdr("{'descr': 4, 'fortran_order': False, 'shape': (2,)}"), /'descr' is not a string/],
      ['a structured descr', () => hdr("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,)}"), /lists are not supported \(structured dtypes/],
      ['fortran_order not a bool', () => hdr("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}"), /'fortran_order' is not True or False/],
      ['a misspelt boolean', () => hdr("{'descr': '<f4', 'fortran_order': Falsey, 'shape': (2,)}"), /unknown name/],
      ['a boolean run into a digit', () => hdr("{'descr': '<f4', 'fortran_order': False0, 'shape': (2,)}"), /unknown name at character \d+/],
      ['a boolean run into an underscore', () => hdr("{'descr': '<f4', 'fortran_order': True_, 'shape': (2,)}"), /unknown name at character \d+/],
      ['a string with a Python escape', () => hdr("{'descr': '<f\\x34', 'fortran_order': False, 'shape': (2,)}"), /unsupported escape or line break in string/],
      ['shape not a tuple', () => hdr("{'descr': '<f4', 'fortran_order': False, 'shape': 2}"), /'shape' is not a tuple of integers/],
      ['a one-element tuple without its comma', () => hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (2)}"), /one-element tuple needs a trailing comma/],
      ['a negative dimension', () => hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,)}"), /expected a non-negative integer/],
      ['a dimension with a leading zero', () => hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (02,)}"), /leading zero/],
      ['a 17-digit dimension', () => hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (12345678901234567,)}"), /too large/],
      ['dimensions whose product overflows', () => hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296)}"), /shape \[4294967296, 4294967296\] is too large/],
      ['an object array from numpy', () => fixture('object.npy'), /descr '\|O' is an object array/],
      ['a bool array from numpy', () => fixture('bool.npy'), /unsupported descr '\|b1'/],
      ['a complex64 array from numpy', () => fixture('c8.npy'), /unsupported descr '<c8'/],
      ['a raw 2-byte void', () => hdr("{'descr': '|V2', 'fortran_order': False, 'shape': (4,)}"), /byte order '\|' is only valid for 1-byte types \(a raw 2-byte void/],
      ['an unknown descr', () => hdr("{'descr': 'float32', 'fortran_order': False, 'shape': (2,)}"), /unsupported descr 'float32'/],
      ['truncated data', () => f4('(3,)', 2), /data is 8 bytes but shape \(3\) of '<f4' needs 12 \(file truncated\)/],
      ['trailing data', () => f4('(1,)', 2), /data is 8 bytes but shape \(1\) of '<f4' needs 4 \(file has trailing bytes\)/],
      ['an invalid UTF-8 v3 header', () => { const b = npyFile("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", 4, 3); b[20] = 0xff; return b; }, /version 3\.0 header is not valid UTF-8/],
      // Versions 1.0 and 2.0 are latin1: the byte 0xe9 is 'é', not broken UTF-8.
      ['a latin1 byte in a v2 header', () => npyFile("{'descr': '<f\u00e9', 'fortran_order': False, 'shape': (1,), }", 4, 2), /unsupported descr '<fé'/],
    ];
    for (const [what, make, reason] of cases) {
      it(what, async () => {
        await expectIoError(() => parseNpy(make(), 'mem.npy'), 'mem.npy', reason);
      });
    }

    it('names the path when reading from disk (readNpy and readNpyHeader)', async () => {
      const dir = tmpDir();
      const file = path.join(dir, 'bad.npy');
      writeFileSync(file, fixture('object.npy'));
      await expectIoError(() => readNpy(file), file, /object array/);
      await expectIoError(() => readNpyHeader(file), file, /object array/);
      await expectIoError(() => readNpy(path.join(dir, 'missing.npy')), 'missing.npy', /ENOENT/, 'ERR_SAEKIT_ARG');
      await expectIoError(() => readNpy(dir), dir, /regular file/, 'ERR_SAEKIT_ARG');
    });
  });

  it('rejects bad arguments with coded errors', async () => {
    await expectIoError(() => parseNpy('x' as never), 'bytes', /Uint8Array/, 'ERR_SAEKIT_ARG');
    await expectIoError(() => encodeNpy({ dtype: 'int32', shape: [2], data: new Float32Array(2) } as never), 't.data', /Int32Array/, 'ERR_SAEKIT_DTYPE');
    await expectIoError(() => encodeNpy({ dtype: 'int32', shape: [3], data: new Int32Array(2) }), 't.data', /3 elements/, 'ERR_SAEKIT_SHAPE');
    await expectIoError(() => encodeNpy(null as never), 't', /tensor/, 'ERR_SAEKIT_ARG');
  });
});

describe('npz', () => {
  for (const [name, arrays] of Object.entries(manifest.npz)) {
    it(`reads numpy's ${name}`, async () => {
      const got = await readNpz(path.join(FIXTURES, name));
      expect(Object.keys(got).sort()).toEqual(Object.keys(arrays).sort());
      for (const [key, m] of Object.entries(arrays)) expectSameTensor(got[key]!, manifestTensor(m), `${name}:${key}`);
    });
  }

  it('round-trips fresh random arrays, stored and deflated, with and without ZIP64 records', async () => {
    const seed = freshSeed(5);
    const next = rng(seed);
    const arrays: Record<string, IoTensor> = {};
    for (const dtype of ALL_DTYPES) for (const [i, shape] of ODD_SHAPES.entries()) arrays[`${dtype}/${i}`] = randomTensor(dtype, shape, next);
    arrays['ünï'] = randomTensor('float32', [3], next);
    Object.defineProperty(arrays, '__proto__', { value: randomTensor('uint8', [2], next), enumerable: true });
    const dir = tmpDir();
    for (const compress of [false, true]) {
      const file = path.join(dir, `a-${compress}.npz`);
      await writeNpz(file, arrays, { compress });
      const got = await readNpz(file);
      expect(Object.keys(got).sort()).toEqual(Object.keys(arrays).sort());
      for (const key of Object.keys(arrays)) expectSameTensor(got[key]!, arrays[key]!, `seed ${seed}: ${key} compress=${compress}`);
      const z64 = Buffer.concat(await encodeNpzParts(arrays, { compress, zip64: 'always' }));
      const got64 = await decodeNpz(z64, 'z64.npz');
      for (const key of Object.keys(arrays)) expectSameTensor(got64[key]!, arrays[key]!, `seed ${seed}: ${key} zip64`);
    }
    noTempFiles(dir);
    await writeNpz(path.join(dir, 'empty.npz'), {});
    expect(await readNpz(path.join(dir, 'empty.npz'))).toEqual({});
  });

  it('writes what numpy writes: entry names, fixed dates, ZIP64-free small archives', async () => {
    const z = Buffer.concat(await encodeNpzParts({ x: { dtype: 'float32', shape: [2], data: new Float32Array([1, 2]) } }));
    expect(z.readUInt32LE(0)).toBe(0x04034b50);
    expect(z.subarray(30, 35).toString()).toBe('x.npy');
    expect(z.readUInt16LE(12)).toBe(0x21); // 1980-01-01
    expect(z.readUInt32LE(z.length - 22)).toBe(0x06054b50);
    const npy = encodeNpy({ dtype: 'float32', shape: [2], data: new Float32Array([1, 2]) });
    expect(Buffer.compare(z.subarray(35, 35 + npy.length), npy)).toBe(0);
    expect(z.length).toBe(35 + npy.length + 51 + 22);
  });

  it("finds the real end record when an array's bytes or the archive comment hold its signature", async () => {
    // The end record is the last 'PK\\5\\6' whose comment length reaches exactly to the end of
    // the file: an earlier signature (in stored data) or a later one (in the comment, claiming a
    // comment past the end) is not it.
    const seed = freshSeed(7);
    const next = rng(seed);
    for (let trial = 0; trial < 4; trial++) {
      const n = 31 + 2 * Math.floor(next() * 60); // odd
      const data = new Int32Array(n).map(() => Math.floor(next() * 2 ** 31));
      const at = Math.floor(next() * (n - 6));
      data[at] = 0x06054b50; // little-endian 'PK\5\6', then zeros: a plausible empty end record
      data.fill(0, at + 1, at + 6);
      const arrays: Record<string, IoTensor> = { a: { dtype: 'int32', shape: [n], data }, b: randomTensor('float32', [3, 5], next) };
      const z = Buffer.concat(await encodeNpzParts(arrays));
      // A comment of an odd length holding a fake end record whose comment length runs past the end.
      const comment = Buffer.alloc(22 + 2 * Math.floor(next() * 20) + 1);
      comment.writeUInt32LE(0x06054b50, 0);
      comment.writeUInt16LE(0xffff, 20);
      const withComment = Buffer.concat([z, comment]);
      withComment.writeUInt16LE(comment.length, z.length - 2);
      for (const [what, bytes] of [['data', z], ['comment', withComment]] as const) {
        const got = await decodeNpz(bytes, `${what}.npz`);
        expect(Object.keys(got).sort(), `seed ${seed}, ${what}`).toEqual(['a', 'b']);
        for (const key of ['a', 'b']) expectSameTensor(got[key]!, arrays[key]!, `seed ${seed}, ${what}: ${key}`);
      }
    }
  });

  it('computes CRC-32 like zlib (and the fallback agrees)', () => {
    expect(crc32(Buffer.from('123456789'))).toBe(0xcbf43926);
    expect(crc32(Buffer.from('123456789'), 0, true)).toBe(0xcbf43926);
    // Empty input continues the CRC unchanged (Node 20's zlib.crc32 returned 0 for an empty ArrayBuffer's view).
    for (const force of [false, true]) {
      expect(crc32(new Uint8Array(0), 0xdeadbeef, force)).toBe(0xdeadbeef);
      expect(crc32(Buffer.from('123456789').subarray(4, 4), 0xcbf43926, force)).toBe(0xcbf43926);
    }
    const next = rng(freshSeed(6));
    const data = new Uint8Array(4099).map(() => Math.floor(next() * 256));
    expect(crc32(data, 0, true)).toBe(crc32(data));
    expect(crc32(data.subarray(1000), crc32(data.subarray(0, 1000), 0, true), true)).toBe(crc32(data));
  });

  it("local headers agree with the central directory: each name, method, CRC and size (the ZIP64 field's too), each entry's data ending where the next header starts", async () => {
    const seed = freshSeed(8);
    const next = rng(seed);
    const arrays: Record<string, IoTensor> = { a: randomTensor('float32', [7, 3], next), b: randomTensor('uint8', [5], next), c: randomTensor('float64', [2, 3, 2], next) };
    for (const compress of [false, true]) {
      for (const zip64 of ['auto', 'always'] as const) {
        const what = `seed ${seed}, compress ${compress}, zip64 ${zip64}`;
        const z = Buffer.concat(await encodeNpzParts(arrays, { compress, zip64 }));
        const { entries, cdOffset } = await readZipDirectory(memorySource(z, 'm.npz'), 'npz file');
        expect(entries.map((e) => e.name), what).toEqual(['a.npy', 'b.npy', 'c.npy']);
        let at = 0;
        for (const e of entries) {
          expect([e.localHeaderOffset, z.readUInt32LE(at)], what).toEqual([at, 0x04034b50]);
          const nameLen = z.readUInt16LE(at + 26);
          const extraLen = z.readUInt16LE(at + 28);
          expect(z.toString('utf8', at + 30, at + 30 + nameLen)).toBe(e.name);
          expect([z.readUInt16LE(at + 8), z.readUInt32LE(at + 14)], what).toEqual([compress ? 8 : 0, e.crc32]);
          let csize = z.readUInt32LE(at + 18);
          let usize = z.readUInt32LE(at + 22);
          expect(zip64 === 'always', what).toBe(csize === 0xffffffff && usize === 0xffffffff);
          if (zip64 === 'always') {
            // APPNOTE 4.5.3: the ZIP64 field holds the uncompressed size, then the compressed size.
            const x = at + 30 + nameLen;
            expect([z.readUInt16LE(x), z.readUInt16LE(x + 2)], what).toEqual([1, 16]);
            usize = Number(z.readBigUInt64LE(x + 4));
            csize = Number(z.readBigUInt64LE(x + 12));
          }
          // The uncompressed size is the .npy's length; the compressed data runs up to the next header.
          expect(usize, `${what}: ${e.name}`).toBe(encodeNpy(arrays[e.name.slice(0, -4)]!).length);
          expect([csize, usize], `${what}: ${e.name}`).toEqual([e.compressedSize, e.uncompressedSize]);
          at += 30 + nameLen + extraLen + csize;
        }
        expect(at, what).toBe(cdOffset);
      }
    }
  });

  it('entry names without the UTF-8 flag are code page 437, as the zip specification, Python\'s zipfile and np.load read them (not latin1)', async () => {
    // Two entries named with every byte 0x80-0xbf and 0xc0-0xff: written as ASCII placeholders of
    // the same length (no UTF-8 flag), then the name bytes patched in both headers.
    const highs = [Buffer.from(Array.from({ length: 64 }, (_, i) => 0x80 + i)), Buffer.from(Array.from({ length: 64 }, (_, i) => 0xc0 + i))];
    const npy = encodeNpy({ dtype: 'int32', shape: [1], data: new Int32Array([7]) });
    const z = Buffer.concat(await encodeZipParts([{ name: `${'A'.repeat(64)}.npy`, chunks: [npy] }, { name: `${'B'.repeat(64)}.npy`, chunks: [npy] }]));
    for (const [i, letter] of ['A', 'B'].entries()) {
      for (let at = z.indexOf(letter.repeat(64)); at >= 0; at = z.indexOf(letter.repeat(64), at + 64)) highs[i]!.copy(z, at);
    }
    // The reference decoding: Python's cp437 codec where python3 runs, else two known characters.
    let want: string[];
    try {
      const out = execFileSync('python3', ['-c', 'import sys, json; print(json.dumps([bytes(range(0x80, 0xc0)).decode("cp437"), bytes(range(0xc0, 0x100)).decode("cp437")]))'], { encoding: 'utf8' });
      want = JSON.parse(out) as string[];
    } catch {
      want = [];
    }
    const keys = Object.keys(await decodeNpz(z, 'cp437.npz'));
    expect(keys.map((k) => [...k].length)).toEqual([64, 64]);
    expect([keys[0]![1], keys[1]![41]]).toEqual(['ü', 'Θ']); // 0x81, 0xe9
    if (want.length > 0) expect(keys).toEqual(want);
  });

  it('an entry name with the UTF-8 flag keeps a leading U+FEFF, as Python\'s zipfile and np.load read it (TextDecoder dropped it as a byte-order mark)', async () => {
    const next = rng(freshSeed(0xfeff));
    const key = `\ufeff${Array.from({ length: 1 + Math.floor(next() * 8) }, () => String.fromCharCode(0x61 + Math.floor(next() * 26))).join('')}`;
    const data = Int32Array.from({ length: 3 }, () => Math.floor(next() * 2 ** 31));
    const z = Buffer.concat(await encodeNpzParts({ [key]: { dtype: 'int32', shape: [3], data } }));
    expect(z.indexOf(Buffer.from(`${key}.npy`))).toBeGreaterThan(0); // EF BB BF and the name, flag bit 11 set
    const got = await decodeNpz(z, 'bom.npz');
    expect(Object.keys(got)).toEqual([key]);
    expect(got[key]!.data).toEqual(data);
  });

  it('an archive of 65,535 entries gets ZIP64 end records (65,535 in the end record means "see the ZIP64 record") and reads back', async () => {
    const files = Array.from({ length: 0xffff }, (_, i) => ({ name: `${i}.npy`, chunks: [] as Uint8Array[] }));
    const z = Buffer.concat(await encodeZipParts(files));
    expect(z.readUInt32LE(z.length - 22 - 20)).toBe(0x07064b50); // the ZIP64 locator
    const { entries } = await readZipDirectory(memorySource(z, 'many.npz'), 'npz file');
    expect(entries.length).toBe(0xffff);
    expect([entries[0]!.name, entries[0xfffe]!.name]).toEqual(['0.npy', '65534.npy']);
  });

  it('reads an entry whose .npy header is as long as numpy allows (10,000 bytes, version 2), stored and deflated', async () => {
    const dict = "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }";
    const npy = npyFile(`${dict}${' '.repeat(10_000 - dict.length - 1)}\n`, new Uint8Array([1, 0, 0, 0, 2, 0, 0, 0]), 2, true);
    expect(npy.length).toBe(12 + 10_000 + 8);
    expect(parseNpy(npy).data).toEqual(new Int32Array([1, 2]));
    for (const compress of [false, true]) {
      const z = Buffer.concat(await encodeZipParts([{ name: 'h.npy', chunks: [npy] }], { compress }));
      expect((await decodeNpz(z, 'h.npz')).h!.data, `compress ${compress}`).toEqual(new Int32Array([1, 2]));
    }
  });

  it('finds the end record behind a comment of the longest length (65,535 bytes)', async () => {
    const arrays: Record<string, IoTensor> = { a: { dtype: 'int32', shape: [3], data: new Int32Array([1, -2, 3]) } };
    const z = Buffer.concat(await encodeNpzParts(arrays));
    const withComment = Buffer.concat([z, Buffer.alloc(0xffff, 0x20)]);
    withComment.writeUInt16LE(0xffff, z.length - 2);
    expectSameTensor((await decodeNpz(withComment, 'c.npz')).a!, arrays.a!, 'a 65,535-byte comment');
  });

  it('checks every entry name and .npy header before inflating any array (a small archive cannot make it allocate what it refuses)', async () => {
    // 64 MiB of zeros deflate to about 64 KB; the headers are in each entry's first bytes.
    const n = 1 << 24;
    const big = { dtype: 'float32' as const, shape: [n / 4, 4], data: new Float32Array(n) };
    const small = { dtype: 'float64' as const, shape: [3], data: new Float64Array([1, -2, 3.5]) };
    const archive = Buffer.concat(await encodeNpzParts({ big, small }, { compress: true }));
    expect(archive.length).toBeGreaterThan(50_000);
    // Counts the bytes read, except the directory search's read of the archive's tail (up to 64 KiB + 22).
    const counting = (bytes: Uint8Array, name: string) => {
      const inner = memorySource(bytes, name);
      const src = { ...inner, bytes: 0, read: (o: number, l: number, into?: Uint8Array) => ((src.bytes += o + l === bytes.length ? 0 : l), inner.read(o, l, into)) };
      return src;
    };
    // The caller's check sees both headers; refusing there reads a few KiB, never the big entry.
    const src = counting(archive, 'mem.npz');
    let seen: [string, unknown, unknown][] = [];
    const refused = await _readNpzSource(src, (h) => {
      seen = [...h].map(([k, v]) => [k, v.dtype, v.shape]);
      throw new Error('refused by the caller');
    }).catch((e: unknown) => e);
    expect(String(refused)).toMatch(/refused by the caller/);
    expect(seen).toEqual([['big', 'float32', [n / 4, 4]], ['small', 'float64', [3]]]);
    expect(src.bytes).toBeLessThan(8192);
    // A later entry with a broken header is found before the big one is inflated.
    const bad = Buffer.from("\x93NUMPY\x01\x00\x16\x00{'descr': '<f4'}     \n", 'latin1');
    const broken = Buffer.concat(await encodeZipParts([{ name: 'big.npy', chunks: [encodeNpy(big)] }, { name: 'bad.npy', chunks: [bad] }], { compress: true }));
    const src2 = counting(broken, 'b.npz');
    await expect(_readNpzSource(src2)).rejects.toMatchObject({ code: 'ERR_SAEKIT_FORMAT', message: expect.stringMatching(/b\.npz:bad\.npy'.*shape/) });
    expect(src2.bytes).toBeLessThan(8192);
    // Read whole, the same archive gives its arrays.
    const all = await decodeNpz(archive, 'mem.npz');
    expect(all.big!.shape).toEqual([n / 4, 4]);
    expect((all.big!.data as Float32Array).every((v) => v === 0)).toBe(true);
    expect(Array.from(all.small!.data as Float64Array)).toEqual([1, -2, 3.5]);
  });

  describe('rejects malformed archives with ERR_SAEKIT_FORMAT naming the file and the reason', () => {
    const one = { w: { dtype: 'float32' as const, shape: [4], data: new Float32Array([1, 2, 3, 4]) } };
    const stored = async () => Buffer.concat(await encodeNpzParts(one));
    const deflated = async () => Buffer.concat(await encodeNpzParts(one, { compress: true }));
    const zip64 = async () => Buffer.concat(await encodeNpzParts(one, { zip64: 'always' }));
    const cdAt = (z: Buffer) => z.readUInt32LE(z.length - 6);
    const edit = (fn: (z: Buffer) => void, make = stored) => async () => {
      const z = await make();
      fn(z);
      return z;
    };
    /** An archive of `entries` (name, raw content), stored. */
    const handZip = async (entries: [string, Uint8Array][]) => Buffer.concat(await encodeZipParts(entries.map(([n, b]) => ({ name: n, chunks: [b] }))));
    /** The first central-directory record of an archive (found by its signature). */
    const cdRecord = (z: Buffer) => z.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
    const npyW = encodeNpy(one.w);
    const cases: [string, () => Promise<Uint8Array>, RegExp][] = [
      ['a file too short for a zip archive', async () => new Uint8Array(10), /10 bytes, too short for a zip archive/],
      ['no end record', async () => new Uint8Array(100).fill(7), /no end-of-central-directory record/],
      ['a truncated archive', async () => (await stored()).subarray(0, 60), /no end-of-central-directory record/],
      ['a multi-disk archive', edit((z) => z.writeUInt16LE(1, z.length - 18)), /multi-disk/],
      ['a central directory out of bounds', edit((z) => z.writeUInt32LE(z.length, z.length - 6)), /central directory \[\d+, \+\d+\) runs past/],
      ['more entries than the directory holds', edit((z) => { z.writeUInt16LE(9, z.length - 14); z.writeUInt16LE(9, z.length - 12); }), /9 entries cannot fit/],
      ['a bad central record signature', edit((z) => z.writeUInt32LE(0x12345678, cdAt(z))), /central directory record at \+0 is missing/],
      ['an encrypted entry', edit((z) => z.writeUInt16LE(1, cdAt(z) + 8)), /entry 'w\.npy' is encrypted/],
      ['an unsupported compression method', edit((z) => z.writeUInt16LE(12, cdAt(z) + 10)), /compression method 12 \(only stored and deflate/],
      ['a saturated size without ZIP64 data', edit((z) => z.writeUInt32LE(0xffffffff, cdAt(z) + 24)), /needs a ZIP64 extra field/],
      ['saturated end-record values without a ZIP64 locator', edit((z) => z.writeUInt32LE(0xffffffff, z.length - 6)), /ZIP64 locator is missing/],
      ['a local header offset out of bounds', edit((z) => z.writeUInt32LE(cdAt(z) - 10, cdAt(z) + 42)), /local header offset \d+ is out of bounds/],
      ['a bad local header signature', edit((z) => z.writeUInt32LE(0, 0)), /local header signature is wrong/],
      ['a compressed size past the data', edit((z) => { z.writeUInt32LE(5000, cdAt(z) + 20); z.writeUInt32LE(5000, cdAt(z) + 24); }), /runs past the end of the entries/],
      ['stored sizes that differ', edit((z) => z.writeUInt32LE(10, cdAt(z) + 20)), /stored entry sizes differ/],
      ['an impossible deflate ratio', edit((z) => z.writeUInt32LE(2 ** 31, cdAt(z) + 24), deflated), /more than deflate can produce/],
      [
        // (No longer refused for its size alone: entries past 4 GiB are read in pieces; this one's stored sizes disagree.)
        'an uncompressed size past 4 GiB (in a ZIP64 field) that the stored data does not have',
        edit((z) => z.writeBigUInt64LE(2n ** 33n, cdRecord(z) + 46 + 5 + 4), async () => Buffer.concat(await encodeNpzParts(one, { zip64: 'always' }))),
        /stored entry sizes differ \(\d+ != 8589934592\)/,
      ],
      [
        'a ZIP64 field too short for its saturated values',
        edit((z) => z.writeUInt16LE(8, cdRecord(z) + 46 + 5 + 2), async () => Buffer.concat(await encodeNpzParts(one, { zip64: 'always' }))),
        /ZIP64 field lacks the compressed size/,
      ],
      [
        'a ZIP64 end record out of bounds',
        edit((z) => z.writeBigUInt64LE(BigInt(z.length), z.length - 22 - 20 + 8), async () => Buffer.concat(await encodeNpzParts(one, { zip64: 'always' }))),
        /ZIP64 end record offset \d+ is out of bounds/,
      ],
      [
        // The record would overlap its locator (20 bytes before the end record): out of bounds too.
        'a ZIP64 end record overlapping its locator',
        edit((z) => z.writeBigUInt64LE(z.readBigUInt64LE(z.length - 22 - 20 + 8) + 8n, z.length - 22 - 20 + 8), async () => Buffer.concat(await encodeNpzParts(one, { zip64: 'always' }))),
        /ZIP64 end record offset \d+ is out of bounds/,
      ],
      [
        // The ZIP64 end record starts where the directory must end, not the classic end record.
        'a central directory running into the ZIP64 end record',
        edit((z) => z.writeBigUInt64LE(z.readBigUInt64LE(z.length - 22 - 20 - 56 + 40) + 1n, z.length - 22 - 20 - 56 + 40), async () => Buffer.concat(await encodeNpzParts(one, { zip64: 'always' }))),
        /central directory \[\d+, \+\d+\) runs past its end records at \d+/,
      ],
      // Bytes between the directory and its end records: Python's zipfile takes them as a prefix
      // and shifts every offset (np.load read other arrays from such a file than saekit did).
      [
        'a gap between the central directory and the end record',
        async () => {
          const z = await stored();
          return Buffer.concat([z.subarray(0, z.length - 22), Buffer.alloc(16), z.subarray(z.length - 22)]);
        },
        /central directory \[\d+, \+51\) ends 16 bytes before its end records at \d+ \(a gap or a prefix, which zip readers resolve differently\)/,
      ],
      [
        'a second archive between the central directory and the end record (two meanings)',
        async () => {
          const [x, y] = [await stored(), Buffer.concat(await encodeNpzParts({ w: { dtype: 'float32', shape: [4], data: new Float32Array(4).fill(7) } }))];
          return Buffer.concat([x.subarray(0, x.length - 22), y.subarray(0, y.length - 22), x.subarray(x.length - 22)]);
        },
        /ends \d+ bytes before its end records/,
      ],
      [
        // Python's zipfile reads the 56 bytes before the locator, whatever its offset says.
        'a ZIP64 end record that does not end where its locator starts',
        async () => {
          const z = await zip64();
          const loc = z.length - 22 - 20;
          return Buffer.concat([z.subarray(0, loc), Buffer.alloc(8), z.subarray(loc)]);
        },
        /ZIP64 end record at \d+ does not end where its locator starts \(\d+\): zip readers disagree on such an archive/,
      ],
      [
        // A disk number of 0xffff says the ZIP64 field holds the real one (after the three sizes); it does not.
        'a saturated disk number without its ZIP64 field',
        edit((z) => z.writeUInt16LE(0xffff, cdRecord(z) + 34), async () => Buffer.concat(await encodeNpzParts(one, { zip64: 'always' }))),
        /multi-disk zip archives are not supported/,
      ],
      // Only an empty entry ending in '/' is a folder; one with data is an entry that is not an array.
      ['a folder-like entry holding data', () => handZip([['w.npy', npyW], ['d/', new Uint8Array([1, 2, 3])]]), /entry 'd\/' is not an \.npy array/],
      ['corrupt deflate data', edit((z) => z.fill(0xff, 40, 60), deflated), /deflate data is corrupt/],
      ['a wrong declared size after inflating', edit((z) => z.writeUInt32LE(z.readUInt32LE(cdAt(z) + 24) - 1, cdAt(z) + 24), deflated), /inflated to|deflate data is corrupt/],
      ['a CRC mismatch', edit((z) => { z[z.length - 22 - 51 - 1] ^= 1; }), /CRC-32 mismatch/],
      ['a non-.npy entry', () => handZip([['readme.txt', Buffer.from('hi')]]), /entry 'readme\.txt' is not an \.npy array/],
      ['a duplicate entry', () => handZip([['a.npy', npyW], ['a.npy', npyW]]), /duplicate entry 'a\.npy'/],
      ['an entry that is not a valid .npy', () => handZip([['a.npy', Buffer.from('not numpy at all')]]), /mem\.npz:a\.npy': missing the \\x93NUMPY magic/],
      ['an entry name that is not UTF-8', edit((z) => { z.writeUInt16LE(0x0800, cdAt(z) + 8); z[cdAt(z) + 46] = 0xff; }), /entry name is not valid UTF-8/],
      // np.load refuses these too (zipfile: "File name in directory ... and header ... differ", "Overlapped entries").
      ['a local header naming another file', edit((z) => z.write('v', 30, 'latin1')), /entry 'w\.npy': the local header names it 'v\.npy'/],
      [
        'two directory records for one local entry',
        async () => {
          const z = await handZip([['a.npy', npyW], ['b.npy', npyW]]);
          z.writeUInt32LE(0, cdAt(z) + 46 + 5 + 42); // b.npy's record now points at a.npy's local header
          return z;
        },
        /entries 'a\.npy' and 'b\.npy' overlap \(local headers at 0 and 0/,
      ],
      [
        'an entry whose data runs into the next local header',
        async () => {
          const z = await handZip([['a.npy', npyW], ['b.npy', npyW]]);
          z.writeUInt32LE(z.readUInt32LE(cdAt(z) + 46 + 5 + 42) - 10, cdAt(z) + 46 + 5 + 42);
          return z;
        },
        /entries 'a\.npy' and 'b\.npy' overlap/,
      ],
      [
        "directory records past the end record's count",
        edit((z) => { z.writeUInt16LE(1, z.length - 14); z.writeUInt16LE(1, z.length - 12); }, () => handZip([['a.npy', npyW], ['b.npy', npyW]])),
        /end record counts 1 entry but the central directory holds 51 more bytes after them \(102 in all\)/,
      ],
      // Multi-disk archives say so in several fields; each alone is refused (Python's zipfile checks the locator's disk count too).
      ['a ZIP64 locator counting two disks', edit((z) => z.writeUInt32LE(2, z.length - 22 - 20 + 16), zip64), /multi-disk zip archives are not supported/],
      ['a ZIP64 end record on disk 1', edit((z) => z.writeUInt32LE(1, z.length - 22 - 20 - 56 + 16), zip64), /multi-disk zip archives are not supported/],
      ['a ZIP64 end record whose directory starts on disk 1', edit((z) => z.writeUInt32LE(1, z.length - 22 - 20 - 56 + 20), zip64), /multi-disk zip archives are not supported/],
      ['a ZIP64 end record counting more entries in all than on this disk', edit((z) => z.writeBigUInt64LE(2n, z.length - 22 - 20 - 56 + 24), zip64), /multi-disk zip archives are not supported/],
      ['an end record counting more entries in all than on this disk', edit((z) => z.writeUInt16LE(2, z.length - 14)), /multi-disk zip archives are not supported/],
      // Flag bit 6 (strong encryption) alone: Python's zipfile refuses it too.
      ['an entry with the strong-encryption flag', edit((z) => z.writeUInt16LE(0x40, cdAt(z) + 8)), /entry 'w\.npy' is encrypted/],
      ['a central record whose comment runs past the directory', edit((z) => z.writeUInt16LE(100, cdAt(z) + 32)), /central directory record at \+0 runs past the directory/],
      [
        // An unknown 16-byte field, then a ZIP64 field claiming 24 bytes where 4 are left: its
        // values would be read past the record (a RangeError, not a format error).
        'a ZIP64 field running past the extra data',
        edit((z) => {
          const e0 = cdRecord(z) + 46 + 5;
          z.writeUInt16LE(0x9999, e0);
          z.writeUInt16LE(16, e0 + 2);
          z.writeUInt16LE(0x0001, e0 + 20);
          z.writeUInt16LE(24, e0 + 22);
        }, zip64),
        /entry 'w\.npy' has an extra field running past its end/,
      ],
      // The stored entry's CRC is checked above; a deflated entry's is taken while it inflates.
      ['a CRC mismatch in a deflated entry', edit((z) => z.writeUInt32LE(z.readUInt32LE(cdAt(z) + 16) ^ 1, cdAt(z) + 16), deflated), /entry 'w\.npy': CRC-32 mismatch/],
    ];
    for (const [what, make, reason] of cases) {
      it(what, async () => {
        await expectIoError(async () => decodeNpz(await make(), 'mem.npz'), 'mem.npz', reason);
      });
    }

    it('refuses a zip bomb of directory records that all point at one deflated entry, before inflating anything', async () => {
      // 4 MB of zeros deflates to about 4 KB; 100 records naming it would inflate 400 MB.
      const big = encodeNpy({ dtype: 'uint8', shape: [4_000_000], data: new Uint8Array(4_000_000) });
      const one = Buffer.concat(await encodeZipParts([{ name: 'a000.npy', chunks: [big] }], { compress: true }));
      const cd = cdAt(one);
      const record = one.subarray(cd, one.length - 22);
      const records = Array.from({ length: 100 }, (_, i) => {
        const r = Buffer.from(record);
        r.write(`a${String(i).padStart(3, '0')}`, 46, 'latin1');
        return r;
      });
      const end = Buffer.from(one.subarray(one.length - 22));
      end.writeUInt16LE(100, 8);
      end.writeUInt16LE(100, 10);
      end.writeUInt32LE(record.length * 100, 12);
      const bomb = Buffer.concat([one.subarray(0, cd), ...records, end]);
      expect(bomb.length).toBeLessThan(20_000);
      const t0 = performance.now();
      await expectIoError(() => decodeNpz(bomb, 'bomb.npz'), 'bomb.npz', /entries 'a000\.npy' and 'a001\.npy' overlap/);
      expect(performance.now() - t0).toBeLessThan(500);
    });

    it('a saturated disk number takes its value from the ZIP64 field after the three sizes: 0 loads, 1 is multi-disk', async () => {
      for (const disk of [0, 1]) {
        // The 'always' archive's record carries the three 8-byte values; append the 4-byte disk
        // number to its ZIP64 field and move the records after it.
        const z = Buffer.concat(await encodeNpzParts(one, { zip64: 'always' }));
        const cd = cdRecord(z);
        const e0 = cd + 46 + 5;
        expect([z.readUInt16LE(e0), z.readUInt16LE(e0 + 2), z.readUInt16LE(cd + 30)]).toEqual([1, 24, 28]);
        const diskField = Buffer.alloc(4);
        diskField.writeUInt32LE(disk);
        const y = Buffer.concat([z.subarray(0, e0 + 28), diskField, z.subarray(e0 + 28)]);
        y.writeUInt16LE(28, e0 + 2);
        y.writeUInt16LE(32, cd + 30);
        y.writeUInt16LE(0xffff, cd + 34);
        const rec = y.length - 22 - 20 - 56;
        y.writeBigUInt64LE(y.readBigUInt64LE(rec + 40) + 4n, rec + 40); // directory size
        y.writeBigUInt64LE(BigInt(rec), y.length - 22 - 20 + 8); // the locator's offset of the ZIP64 end record
        if (disk === 0) expectSameTensor((await decodeNpz(y, 'd.npz')).w!, one.w, 'disk 0');
        else await expectIoError(() => decodeNpz(y, 'd.npz'), 'd.npz', /multi-disk zip archives are not supported/);
      }
    });

    it('names the path when reading from disk', async () => {
      const dir = tmpDir();
      const file = path.join(dir, 'bad.npz');
      writeFileSync(file, Buffer.from('PK not really a zip archive'));
      await expectIoError(() => readNpz(file), file, /no end-of-central-directory record/);
    });

    it('checks that the fixtures really use ZIP64 local headers and deflate', () => {
      for (const name of ['savez.npz', 'savez_compressed.npz']) {
        const z = Buffer.from(fixture(name));
        expect(z.readUInt32LE(18), 'local sizes live in the ZIP64 extra field').toBe(0xffffffff);
        const extra = 30 + z.readUInt16LE(26);
        expect(z.readUInt16LE(extra)).toBe(0x0001);
        const csize = Number(z.readBigUInt64LE(extra + 12));
        const data = z.subarray(extra + z.readUInt16LE(28), extra + z.readUInt16LE(28) + csize);
        const npy = z.readUInt16LE(8) === 8 ? zlib.inflateRawSync(data) : data;
        expect(name === 'savez_compressed.npz').toBe(z.readUInt16LE(8) === 8);
        expect(npy.subarray(0, 6).toString('latin1')).toBe('\x93NUMPY');
      }
    });
  });

  it('rejects bad arguments with coded errors', async () => {
    const dir = tmpDir();
    await expectIoError(() => writeNpz(path.join(dir, 'x.npz'), { a: { dtype: 'uint8', shape: [1], data: new Int32Array(1) } as never }), 'arrays["a"].data', /Uint8Array/, 'ERR_SAEKIT_DTYPE');
    await expectIoError(() => writeNpz(path.join(dir, 'x.npz'), {}, { compress: 1 } as never), 'options.compress', /boolean/, 'ERR_SAEKIT_ARG');
    // A name past a zip entry's 65535 bytes (with its .npy) names arrays, not an internal 'name'.
    await expectIoError(() => writeNpz(path.join(dir, 'x.npz'), { ['é'.repeat(32766)]: { dtype: 'float32', shape: [1], data: new Float32Array(1) } }), 'arrays (a name)', /a name of at most 65531 UTF-8 bytes/, 'ERR_SAEKIT_ARG');
    await writeNpz(path.join(dir, 'long.npz'), { ['a'.repeat(65531)]: { dtype: 'float32', shape: [1], data: new Float32Array([3]) } });
    expect(Object.values(await readNpz(path.join(dir, 'long.npz'))).map((t) => Array.from(t.data as Float32Array))).toEqual([[3]]);
    rmSync(path.join(dir, 'long.npz'));
    await expectIoError(() => writeNpz(path.join(dir, 'x.npz'), [] as never), 'arrays', /object of named tensors/, 'ERR_SAEKIT_ARG');
    // Names with a lone surrogate have no UTF-8 form: two of them became the same entry 'w\uFFFD.npy'.
    const one = { dtype: 'uint8' as const, shape: [1], data: new Uint8Array(1) };
    await expectIoError(() => writeNpz(path.join(dir, 'x.npz'), { 'w\uD800': one, 'w\uDC00': one }), 'arrays (a name)', /lone UTF-16 surrogates/, 'ERR_SAEKIT_ARG');
    expect(readdirSync(dir)).toEqual([]);
    await writeNpz(path.join(dir, 'x.npz'), { 'w\uD83D\uDE00': one });
    expect(Object.keys(await readNpz(path.join(dir, 'x.npz')))).toEqual(['w\u{1F600}']);
  });
});

describe('writeFileAtomic', () => {
  it('utf8Prefix keeps whole characters within a UTF-8 byte budget', async () => {
    const { utf8Prefix } = await import('../lib/io/source.js');
    const cases: [string, number][] = [['abc', 2], ['ab数c', 4], ['ab数c', 5], ['😀😀x', 7], ['😀😀x', 8], ['é'.repeat(60), 100], ['', 3]];
    for (const [s, max] of cases) {
      const p = utf8Prefix(s, max);
      // The longest prefix of whole code points (for..of) whose encoding fits.
      const cps = [...s];
      let want = '';
      for (const c of cps) {
        if (Buffer.byteLength(want + c, 'utf8') > max) break;
        want += c;
      }
      expect(p, `${s} ${max}`).toBe(want);
    }
  });

  it('a target named with 80 CJK characters (244 bytes, within the 255-byte limit) writes: the temporary name is cut by bytes, not UTF-16 units', async () => {
    const dir = tmpDir();
    const name = `${'数'.repeat(80)}.npy`;
    expect(Buffer.byteLength(name)).toBe(244);
    const data = Float32Array.from({ length: 6 }, (_, i) => i - 2.5);
    await writeNpy(path.join(dir, name), { dtype: 'float32', shape: [2, 3], data });
    await writeSafetensors(path.join(dir, `${'数'.repeat(77)}.safetensors`), { a: { dtype: 'float32', shape: [6], data } });
    expect((await readNpy(path.join(dir, name))).data).toEqual(data);
    expect(readdirSync(dir).sort()).toEqual([name, `${'数'.repeat(77)}.safetensors`].sort());
  });

  it('writes bytes and strings, replaces existing files and leaves no temporary file', async () => {
    const dir = tmpDir();
    const file = path.join(dir, 'out.bin');
    await writeFileAtomic(file, new Uint8Array([1, 2, 3]));
    expect([...readFileSync(file)]).toEqual([1, 2, 3]);
    await writeFileAtomic(file, 'ünï');
    expect(readFileSync(file, 'utf8')).toBe('ünï');
    expect(readdirSync(dir)).toEqual(['out.bin']);
  });

  it('a replaced file keeps its permission bits (a private file stays private); a new one takes the default', async () => {
    const dir = tmpDir();
    const umask = process.umask();
    const cases: [string, (f: string) => Promise<void>][] = [
      ['bin', (f) => writeFileAtomic(f, 'new')],
      ['npy', (f) => writeNpy(f, { dtype: 'float32', shape: [1], data: new Float32Array([1]) })],
      ['safetensors', (f) => writeSafetensors(f, { a: { dtype: 'float32', shape: [1], data: new Float32Array([1]) } })],
    ];
    for (const [ext, write] of cases) {
      const fresh = path.join(dir, `fresh.${ext}`);
      await write(fresh);
      expect(statSync(fresh).mode & 0o7777, ext).toBe(0o666 & ~umask);
      for (const mode of [0o600, 0o640, 0o444]) {
        const file = path.join(dir, `m${mode.toString(8)}.${ext}`);
        writeFileSync(file, 'old');
        chmodSync(file, mode);
        await write(file);
        expect(statSync(file).mode & 0o7777, `${ext} ${mode.toString(8)}`).toBe(mode);
        expect(readFileSync(file).toString()).not.toBe('old');
      }
    }
    // An SAE saved over a private one: both of its files stay private.
    using sae = SparseAutoencoder.create({ dIn: 4, numLatents: 8, k: 2, seed: 1 });
    const saeDir = path.join(dir, 'sae');
    await sae.save(saeDir);
    for (const f of readdirSync(saeDir)) chmodSync(path.join(saeDir, f), 0o600);
    await sae.save(saeDir);
    expect(readdirSync(saeDir).sort()).toEqual(['cfg.json', 'sae_weights.safetensors']);
    for (const f of readdirSync(saeDir)) expect(statSync(path.join(saeDir, f)).mode & 0o7777, f).toBe(0o600);
  });

  it('writes through a symbolic link, as open() and np.save do: the file it leads to is replaced (a dangling one is created), the link stays', async () => {
    // The temporary file was renamed over the link itself: the link became a plain file and its target kept the old data.
    const dir = tmpDir();
    mkdirSync(path.join(dir, 'real'));
    const target = path.join(dir, 'real', 'target.npy');
    writeFileSync(target, 'old');
    chmodSync(target, 0o600);
    symlinkSync(path.join('real', 'target.npy'), path.join(dir, 'link.npy')); // relative to the link's folder
    symlinkSync('link.npy', path.join(dir, 'chain.npy')); // a link to a link
    const data = Float32Array.from({ length: 6 }, (_, i) => Math.fround(Math.sin(i)));
    for (const name of ['link.npy', 'chain.npy']) {
      await writeNpy(path.join(dir, name), { dtype: 'float32', shape: [2, 3], data: data.map((v) => v + name.length) });
      expect(lstatSync(path.join(dir, name)).isSymbolicLink(), name).toBe(true);
      expect(Array.from((await readNpy(target)).data as Float32Array)).toEqual(Array.from(data.map((v) => v + name.length)));
      expect(statSync(target).mode & 0o7777, 'the target keeps its mode').toBe(0o600);
    }
    // A dangling link: its target is created.
    symlinkSync(path.join(dir, 'real', 'new.safetensors'), path.join(dir, 'dangling.safetensors'));
    await writeSafetensors(path.join(dir, 'dangling.safetensors'), { a: { dtype: 'float32', shape: [6], data } });
    expect(lstatSync(path.join(dir, 'dangling.safetensors')).isSymbolicLink()).toBe(true);
    const r = await readSafetensors(path.join(dir, 'real', 'new.safetensors'));
    expect(Array.from((await r.read('a')).data as Float32Array)).toEqual(Array.from(data));
    await r.close();
    // A loop of links: the path itself is replaced (open() would fail with ELOOP; the write still lands).
    symlinkSync('loop-b', path.join(dir, 'loop-a'));
    symlinkSync('loop-a', path.join(dir, 'loop-b'));
    await writeFileAtomic(path.join(dir, 'loop-a'), 'x');
    expect(readFileSync(path.join(dir, 'loop-a'), 'utf8')).toBe('x');
    expect(readdirSync(dir).sort()).toEqual(['chain.npy', 'dangling.safetensors', 'link.npy', 'loop-a', 'loop-b', 'real']);
    expect(readdirSync(path.join(dir, 'real')).sort()).toEqual(['new.safetensors', 'target.npy']);
  });

  it('writes files whose names are near the 255-byte limit (the temporary name stays short)', async () => {
    const dir = tmpDir();
    const file = path.join(dir, `${'a'.repeat(246)}.npy`);
    await writeNpy(file, { dtype: 'float32', shape: [2], data: new Float32Array([1, 2]) });
    expect(Array.from((await readNpy(file)).data as Float32Array)).toEqual([1, 2]);
    expect(readdirSync(dir)).toEqual([path.basename(file)]);
  });

  it('fails cleanly, keeps the old file and removes the temporary file', async () => {
    const dir = tmpDir();
    mkdirSync(path.join(dir, 'sub'));
    writeFileSync(path.join(dir, 'sub', 'keep'), 'x');
    // renaming a file over a non-empty folder fails after the data was written
    const err = await expectIoError(() => writeFileAtomic(path.join(dir, 'sub'), 'data'), path.join(dir, 'sub'), /Cannot write/, 'ERR_SAEKIT_ARG');
    expect(err).toBeInstanceOf(SaekitError);
    expect(readdirSync(dir)).toEqual(['sub']);
    expect(readFileSync(path.join(dir, 'sub', 'keep'), 'utf8')).toBe('x');
    await expectIoError(() => writeFileAtomic(path.join(dir, 'missing', 'f'), 'data'), 'missing', /ENOENT/, 'ERR_SAEKIT_ARG');
    await expectIoError(() => writeFileAtomic(path.join(dir, 'f'), 5 as never), 'data', /Uint8Array or a string/, 'ERR_SAEKIT_ARG');
    expect(readdirSync(dir)).toEqual(['sub']);
  });
});

describe('makeDirs (mkdir -p for saves and checkpoints)', () => {
  // Settles or fails the test within `ms` (Node's recursive mkdir never settled on these paths).
  const within = <T>(p: Promise<T>, ms = 3000): Promise<T> =>
    Promise.race([p, sleep(ms).then(() => Promise.reject(new Error(`did not settle within ${ms} ms`)))]);

  it('creates the missing folders of a nested path, and accepts folders that exist', async () => {
    const dir = tmpDir();
    const deep = path.join(dir, 'a', 'b b', 'c');
    await makeDirs(deep);
    expect(statSync(deep).isDirectory()).toBe(true);
    await makeDirs(deep); // again: nothing to do
    await makeDirs(path.join(dir, 'a'));
    await Promise.all([makeDirs(path.join(dir, 'p', 'q')), makeDirs(path.join(dir, 'p', 'r')), makeDirs(path.join(dir, 'p', 'q'))]);
    expect(readdirSync(path.join(dir, 'p')).sort()).toEqual(['q', 'r']);
    // A relative path is relative to the working directory.
    const rel = path.relative(process.cwd(), path.join(dir, 'rel', 'x'));
    await makeDirs(rel);
    expect(existsSync(path.join(dir, 'rel', 'x'))).toBe(true);
  });

  it('fails with the fs error where a file or a dangling symlink stands in the way, and under /proc, instead of never settling', async () => {
    const dir = tmpDir();
    writeFileSync(path.join(dir, 'file'), 'x');
    await expect(within(makeDirs(path.join(dir, 'file')))).rejects.toMatchObject({ code: 'EEXIST' });
    await expect(within(makeDirs(path.join(dir, 'file', 'sub')))).rejects.toMatchObject({ code: 'ENOTDIR' });
    symlinkSync(path.join(dir, 'nowhere'), path.join(dir, 'dangling'));
    await expect(within(makeDirs(path.join(dir, 'dangling', 'sub')))).rejects.toMatchObject({ code: 'EEXIST' });
    expect(existsSync(path.join(dir, 'nowhere'))).toBe(false);
    if (process.platform !== 'linux' || !existsSync('/proc/self')) return;
    const proc = `/proc/saekit-test-${process.pid}/x`;
    await expect(within(makeDirs(proc))).rejects.toMatchObject({ code: 'ENOENT' });
    // Through the public API: saving an SAE there is a clean error too.
    using sae = SparseAutoencoder.create({ dIn: 4, numLatents: 8, k: 2, seed: 1 });
    await expect(within(sae.save(proc))).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/Cannot create the folder '\/proc\/.*ENOENT/) });
    await expect(within(sae.save(path.join(dir, 'file', 'sae')))).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/ENOTDIR/) });
  });
});

describe('files that are not regular files', () => {
  it('FIFOs and devices are refused at once with ERR_SAEKIT_ARG naming the path (opening a FIFO used to wait for a writer forever)', async () => {
    if (process.platform === 'win32') return;
    const dir = tmpDir();
    const readers: Record<string, (file: string) => Promise<unknown>> = { 'pipe.safetensors': readSafetensors, 'pipe.npy': readNpy, 'pipe.npz': readNpz };
    const outcomes = await Promise.all(
      Object.entries(readers).map(([name, read]) => {
        const fifo = path.join(dir, name);
        execFileSync('mkfifo', [fifo]);
        return settleOnFifo(fifo, () => read(fifo)).then((o) => ({ fifo, ...o }));
      }),
    );
    for (const { fifo, hung, result } of outcomes) {
      expect(hung, `${fifo}: the open waited for a writer`).toBe(false);
      expect(result.status).toBe('rejected');
      await expectIoError(() => Promise.reject((result as PromiseRejectedResult).reason), fifo, /not one \(a folder, FIFO or device\)/, 'ERR_SAEKIT_ARG');
    }
    await expectIoError(() => readNpy('/dev/zero'), '/dev/zero', /regular file/, 'ERR_SAEKIT_ARG');
  }, 15_000);
});

describe('readNpy, readNpz and writeNpz share the JS thread with the event loop', () => {
  // Synchronous, the Fortran-order reorder held the JS thread ~300 ms for 64 MiB on the loaded
  // 2-core development machine, the byte swap ~300 ms for 128 MiB, readNpz's CRC-32 and copy of a
  // 128 MiB stored entry ~280 ms, and writeNpz's CRC-32 and concatenation before deflating 128 MiB
  // ~340 ms; sliced, the longest gaps there were 50-70 ms (the reads' own buffer allocation).
  const seed = Date.now() >>> 0;
  const randomWords = (n: number, next: () => number) => {
    const w = new Uint32Array(n);
    for (let i = 0; i < n; i++) w[i] = (next() * 2 ** 32) >>> 0;
    return w;
  };
  const writeNpyFile = (file: string, dict: string, body: Uint32Array) => {
    const fd = openSync(file, 'w');
    try {
      writeSync(fd, npyFile(dict));
      writeSync(fd, new Uint8Array(body.buffer));
    } finally {
      closeSync(fd);
    }
  };

  it('readNpy of a 64 MiB Fortran-order file: C order, every bit as in the file', async () => {
    const next = lcg(seed);
    const [rows, cols] = [4096, 4096];
    const F = randomWords(rows * cols, next); // column-major: F[j * rows + i] is element (i, j)
    const file = path.join(tmpDir(), 'f.npy');
    writeNpyFile(file, `{'descr': '<f4', 'fortran_order': True, 'shape': (${rows}, ${cols}), }`, F);
    const { value: t, elapsed, longest, firings } = await watchCall(() => readNpy(file));
    expect(longest, `seed ${seed}: longest gap of a ${elapsed.toFixed(0)} ms read`).toBeLessThan(gapBound(elapsed));
    expect(firings).toBeGreaterThan(elapsed / 50);
    expect(t.shape).toEqual([rows, cols]);
    const got = new Uint32Array(t.data.buffer, t.data.byteOffset, rows * cols);
    let bad = -1;
    for (let i = 0; i < rows && bad < 0; i++) for (let j = 0; j < cols; j++) if (got[i * cols + j] !== F[j * rows + i]) bad = i * cols + j;
    expect(bad, `seed ${seed}: first element out of place`).toBe(-1);
  }, 30_000);

  it('readNpy of a 128 MiB big-endian file: every value as the file\'s big-endian bytes say', async () => {
    const next = lcg(seed + 1);
    const n = 1 << 25;
    const B = randomWords(n, next);
    const file = path.join(tmpDir(), 'b.npy');
    writeNpyFile(file, `{'descr': '>f4', 'fortran_order': False, 'shape': (${n},), }`, B);
    const { value: t, elapsed, longest, firings } = await watchCall(() => readNpy(file));
    expect(longest, `seed ${seed}: longest gap of a ${elapsed.toFixed(0)} ms read`).toBeLessThan(gapBound(elapsed));
    expect(firings).toBeGreaterThan(elapsed / 50);
    const got = new Uint32Array(t.data.buffer, t.data.byteOffset, n);
    const dv = new DataView(B.buffer);
    let bad = -1;
    for (let k = 0; k < n; k++) {
      if (got[k] !== dv.getUint32(4 * k, false)) {
        bad = k;
        break;
      }
    }
    expect(bad, `seed ${seed}: first element not swapped`).toBe(-1);
  }, 30_000);

  it('readNpz of a 128 MiB stored entry: the array as written, in the entry\'s own buffer', async () => {
    const next = lcg(seed + 2);
    const n = 1 << 25;
    const data = new Float32Array(randomWords(n, next).buffer);
    const file = path.join(tmpDir(), 'a.npz');
    await writeNpz(file, { a: { dtype: 'float32', shape: [n], data } });
    const { value: got, elapsed, longest, firings } = await watchCall(() => readNpz(file));
    expect(longest, `seed ${seed}: longest gap of a ${elapsed.toFixed(0)} ms read`).toBeLessThan(gapBound(elapsed));
    expect(firings).toBeGreaterThan(elapsed / 50);
    const a = got.a!.data;
    expect(a.length).toBe(n);
    expect(Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(data.buffer))).toBe(true);
    expect(a.buffer.byteLength).toBeLessThan(a.byteLength + 1024); // no second copy of the data: the entry's header only
  }, 30_000);

  // Before, a deflated entry was inflated by one zlib call whose output Node joins on the JS
  // thread (longest gap 280-410 ms of a 1.5-1.9 s read on the loaded development machine); now
  // the output is copied into the result piece by piece as it comes (15-40 ms of a 0.4-0.8 s
  // read, once 144 ms). The old read's length let it pass gapBound's sixth: the bound here is
  // 150 ms or a twentieth of the read.
  it('readNpz of a 128 MiB deflated entry: the array as written', async () => {
    const next = lcg(seed + 4);
    const n = 1 << 25;
    const data = new Float32Array(n);
    for (let i = 0; i < n; i += 1 + Math.floor(next() * 50)) data[i] = next();
    const file = path.join(tmpDir(), 'd.npz');
    await writeNpz(file, { a: { dtype: 'float32', shape: [n], data } }, { compress: true });
    const bound = (elapsed: number) => Math.max(150, elapsed / 20);
    const { value: got, elapsed, longest, firings } = await watchCall(() => readNpz(file), { bound });
    expect(longest, `seed ${seed}: longest gap of a ${elapsed.toFixed(0)} ms read`).toBeLessThan(bound(elapsed));
    expect(firings).toBeGreaterThan(elapsed / 50);
    const a = got.a!.data;
    expect(a.length).toBe(n);
    expect(Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(data.buffer))).toBe(true);
  }, 30_000);

  it('writeNpz compress of 128 MiB: the same deflate stream as one zlib.deflateRawSync of the .npy bytes', async () => {
    const next = lcg(seed + 3);
    const n = 1 << 25;
    const data = new Float32Array(n); // mostly zeros: deflate is quick, the CRC and copies are not
    for (let i = 0; i < n; i += 1 + Math.floor(next() * 200)) data[i] = next();
    const file = path.join(tmpDir(), 'c.npz');
    const { elapsed, longest, firings } = await watchCall(() => writeNpz(file, { a: { dtype: 'float32', shape: [n], data } }, { compress: true }));
    expect(longest, `seed ${seed}: longest gap of a ${elapsed.toFixed(0)} ms write`).toBeLessThan(gapBound(elapsed));
    expect(firings).toBeGreaterThan(elapsed / 50);
    const want = zlib.deflateRawSync(encodeNpy({ dtype: 'float32', shape: [n], data }));
    const bytes = readFileSync(file);
    const at = 30 + bytes.readUInt16LE(26) + bytes.readUInt16LE(28); // the first entry's data
    expect(bytes.readUInt32LE(14)).toBe(crc32(encodeNpy({ dtype: 'float32', shape: [n], data }), 0, true)); // the table-driven CRC-32
    expect(Buffer.compare(bytes.subarray(at, at + want.length), want)).toBe(0);
  }, 30_000);
});

describe('writers whose arrays are detached or resized while they run', () => {
  // The data chunks are views on the caller's arrays, written across awaits. A view whose buffer
  // was detached or shrunk has length 0: the writers wrote what was left (nothing), renamed that
  // truncated file over the old one and resolved; writeNpz with compress crashed the process.
  const seed = freshSeed(77);
  const n = 1 << 20; // 4 MiB of float32: each write spans several turns of the event loop
  const tick = () => new Promise<void>((r) => setImmediate(r));
  const detach = (a: ArrayBufferView) => structuredClone(a.buffer, { transfer: [a.buffer as ArrayBuffer] });
  const randomData = (next: () => number) => Float32Array.from({ length: n }, () => next() * 2 - 1);
  type Writer = (file: string, data: Float32Array) => Promise<unknown>;
  const writers: [string, string, string, Writer][] = [
    ['writeNpy', 'npy', 't.data', (f, data) => writeNpy(f, { dtype: 'float32', shape: [n], data })],
    ['writeSafetensors', 'safetensors', 'tensors["w"].data', (f, data) => writeSafetensors(f, { w: { dtype: 'float32', shape: [n], data } })],
    ['writeNpz', 'npz', 'arrays["w"].data', (f, data) => writeNpz(f, { w: { dtype: 'float32', shape: [n], data } })],
    ['writeFileAtomic', 'bin', 'data', (f, data) => writeFileAtomic(f, new Uint8Array(data.buffer))],
  ];
  const readBack = async (ext: string, file: string): Promise<Float32Array> => {
    if (ext === 'npy') return (await readNpy(file)).data as Float32Array;
    if (ext === 'npz') return (await readNpz(file)).w!.data as Float32Array;
    if (ext === 'bin') return new Float32Array(new Uint8Array(readFileSync(file)).buffer);
    const r = await readSafetensors(file);
    try {
      return (await r.read('w')).data as Float32Array;
    } finally {
      await r.close();
    }
  };

  for (const [fn, ext, name, write] of writers) {
    it(`${fn}: detached after 0-64 turns of the event loop, it rejects naming ${name} and keeps the old file, or resolves with the whole array`, async () => {
      const next = rng(seed);
      const dir = tmpDir();
      const file = path.join(dir, `out.${ext}`);
      await write(file, randomData(next));
      const old = readFileSync(file);
      let rejected = 0;
      for (const ticks of [0, 1, 2, 4, 8, 16, 64]) {
        const data = randomData(next);
        const expected = data.slice();
        const p = write(file, data);
        for (let t = 0; t < ticks; t++) await tick();
        detach(data);
        const r = await Promise.allSettled([p]).then(([s]) => s!);
        if (r.status === 'rejected') {
          rejected++;
          expect(r.reason, `seed ${seed}, ${ticks} ticks`).toMatchObject({
            code: 'ERR_SAEKIT_ARG',
            message: expect.stringContaining(`Expected ${name} to keep its ${4 * n} bytes until the call settles but it now has 0 (was its ArrayBuffer detached or resized?)`),
          });
          expect(readFileSync(file).equals(old), `seed ${seed}, ${ticks} ticks: the old file is intact`).toBe(true);
        } else {
          // Detached after its last byte was written: the file is complete.
          const back = await readBack(ext, file); // readNpz's array is a view into its entry's buffer
          expect(Buffer.from(back.buffer, back.byteOffset, back.byteLength).equals(Buffer.from(expected.buffer)), `seed ${seed}, ${ticks} ticks`).toBe(true);
          old.set(readFileSync(file)); // the good file now
        }
        noTempFiles(dir);
      }
      expect(rejected, 'detached at once, the write must fail').toBeGreaterThan(0);
    });
  }

  it('writeNpy and writeSafetensors of data on a resizable ArrayBuffer shrunk while pending: ERR_SAEKIT_ARG, the old file kept', async () => {
    const next = rng(seed ^ 1);
    const dir = tmpDir();
    for (const [ext, name, write] of [writers[0]!, writers[1]!].map(([, e, nm, w]) => [e, nm, w] as const)) {
      const file = path.join(dir, `rab.${ext}`);
      await write(file, randomData(next));
      const old = readFileSync(file);
      const rab = new (ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => ArrayBuffer & { resize(n: number): void })(4 * n, { maxByteLength: 8 * n });
      const data = new Float32Array(rab);
      data.set(randomData(next));
      const p = write(file, data);
      rab.resize(16);
      await expect(p).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(new RegExp(`Expected ${escapeRe(name)} to keep its ${4 * n} bytes .* now has 0 \\(was its ArrayBuffer detached or resized\\?\\)`)) });
      expect(readFileSync(file).equals(old)).toBe(true);
      noTempFiles(dir);
    }
  });

  it.runIf(haveDist)('writeNpz with compress: detached while the CRC or the deflater runs, it rejects (no uncaught TypeError, no Promise left pending) and keeps the old file', () => {
    // In a child process: the uncaught TypeError ("Cannot perform Construct on a detached
    // ArrayBuffer") took down the whole process, and with other timings the Promise never settled.
    const dir = tmpDir();
    const script = `
      import { io } from ${distUrl};
      import { readFileSync } from 'node:fs';
      const file = ${JSON.stringify(path.join(dir, 'c.npz'))};
      const n = 1 << 21;
      let s = ${seed};
      const random = () => Float32Array.from({ length: n }, () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32));
      await io.writeNpz(file, { w: { dtype: 'float32', shape: [n], data: random() } }, { compress: true });
      const old = readFileSync(file);
      const out = [];
      for (const ticks of [0, 1, 4]) {
        const data = random();
        const p = io.writeNpz(file, { w: { dtype: 'float32', shape: [n], data } }, { compress: true });
        for (let t = 0; t < ticks; t++) await new Promise((r) => setImmediate(r));
        structuredClone(data.buffer, { transfer: [data.buffer] });
        const timeout = new Promise((r) => setTimeout(() => r('pending'), 20000));
        const r = await Promise.race([p.then(() => 'resolved', (e) => e.code + ': ' + e.message), timeout]);
        out.push({ ticks, r, kept: readFileSync(file).equals(old) });
      }
      console.log(JSON.stringify(out));
    `;
    const out = JSON.parse(runInChild(script)) as { ticks: number; r: string; kept: boolean }[];
    for (const { ticks, r, kept } of out) {
      expect(r, `${ticks} ticks`).toBe(`ERR_SAEKIT_ARG: Expected arrays["w"].data to keep its ${8 * 2 ** 20} bytes until the call settles but it now has 0 (was its ArrayBuffer detached or resized?)`);
      expect(kept, `${ticks} ticks: the old archive is intact`).toBe(true);
    }
    noTempFiles(dir);
  }, 120_000);
});

/**
 * Bounds of the formats at their exact limits, and the writers' byte layouts against the specs'
 * formulas written out here (mutation round 7, io2). Each case names the mutant it kills.
 */
describe('format limits at their exact values and header layouts as the specs compute them', () => {
  /** numpy's _write_array_header + _wrap_header (format 1.0), written out from numpy/lib/_format_impl.py. */
  function numpyHeader(descr: string, shape: number[]): Uint8Array {
    const tuple = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
    let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${tuple}, }`;
    if (shape.length > 0) header += ' '.repeat(21 - String(shape[0]).length);
    const hlen = header.length + 1;
    const padlen = 64 - ((6 + 2 + 2 + hlen) % 64);
    const text = header + ' '.repeat(padlen) + '\n';
    const out = new Uint8Array(10 + text.length);
    out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
    new DataView(out.buffer).setUint16(8, hlen + padlen, true);
    out.set(Buffer.from(text, 'latin1'), 10);
    return out;
  }

  it('encodeNpy writes the header numpy writes for every residue of the header length mod 64 (a full 64 bytes of padding when already aligned)', () => {
    const next = lcg(7001);
    const residues = new Set<number>();
    for (let trial = 0; trial < 400; trial++) {
      // Empty arrays (a 0 first) of 1-9 further dimensions of 1-12 digits: any header length, no data.
      const shape = [0, ...Array.from({ length: 1 + Math.floor(next() * 9) }, () => Math.floor(10 ** (next() * 12)))];
      const dtype = ALL_DTYPES[trial % ALL_DTYPES.length]!;
      const descr = { float32: '<f4', float16: '<f2', bfloat16: '<V2', float64: '<f8', int32: '<i4', int64: '<i8', uint8: '|u1' }[dtype];
      const got = encodeNpy({ dtype, shape, data: randomTensor(dtype, [0], next).data });
      const want = numpyHeader(descr, shape);
      expect(Buffer.from(got).toString('latin1'), `[${shape}]`).toBe(Buffer.from(want).toString('latin1'));
      expect(got.length % 64).toBe(0);
      const text = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${shape.join(', ')}), }`;
      residues.add((10 + text.length + 20 + 1) % 64);
    }
    // The trials include headers whose text plus newline already ends on a 64-byte boundary.
    expect(residues.has(0)).toBe(true);
    expect(residues.size).toBe(64);
  });

  it('npy: a header of exactly 10,000 bytes is read (parseNpy, readNpy, readNpyHeader); 10,001 is refused', async () => {
    const dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
    const data = bytesOf(new Float32Array([1.25, -3]));
    const exact = (len: number) => npyFile(dict + ' '.repeat(len - dict.length - 1) + '\n', data, 2, true);
    expect(exact(10_000).length).toBe(12 + 10_000 + 8);
    expect(Array.from(parseNpy(exact(10_000)).data as Float32Array)).toEqual([1.25, -3]);
    await expectIoError(() => parseNpy(exact(10_001), 'mem.npy'), 'mem.npy', /header length 10001 exceeds the limit of 10000 bytes/);
    const dir = tmpDir();
    const file = path.join(dir, 'long-header.npy');
    writeFileSync(file, exact(10_000));
    expect(Array.from((await readNpy(file)).data as Float32Array)).toEqual([1.25, -3]);
    expect(await readNpyHeader(file)).toEqual({ dtype: 'float32', shape: [2], fortranOrder: false, bigEndian: false, dataOffset: 10_012, byteLength: 8 });
  });

  it("npy: a one-byte type is never big-endian, whatever order character its descr has ('>u1', '|u1', '<u1')", () => {
    for (const order of ['>', '|', '<', '=']) {
      const bytes = npyFile(`{'descr': '${order}u1', 'fortran_order': False, 'shape': (3,), }`, new Uint8Array([1, 2, 250]));
      expect(parseNpyHeaderBytes(bytes, bytes.length, 'm.npy')).toMatchObject({ dtype: 'uint8', bigEndian: false, byteLength: 3 });
      expect(Array.from(parseNpy(bytes).data as Uint8Array)).toEqual([1, 2, 250]);
    }
  });

  it('npy: the size check counts bytes, not elements (numel x item size at the edge of 2^53), and zero-size shapes of huge dimensions are empty', async () => {
    const f4 = (shape: string) => npyFile(`{'descr': '<f4', 'fortran_order': False, 'shape': ${shape}, }`);
    // floor((2^53 - 1) / 4) elements fit; their size is checked against the (empty) data.
    await expectIoError(() => parseNpy(f4('(2251799813685247,)'), 'm.npy'), 'm.npy', /needs 9007199254740988 \(file truncated\)/);
    // 2^51 elements of 4 bytes are 2^53 bytes: too large, whether in one dimension or two.
    await expectIoError(() => parseNpy(f4('(2251799813685248,)'), 'm.npy'), 'm.npy', /shape \[2251799813685248\] is too large/);
    await expectIoError(() => parseNpy(f4('(2, 1125899906842624)'), 'm.npy'), 'm.npy', /shape \[2, 1125899906842624\] is too large/);
    // A 0 anywhere makes the array empty, as numpy has it: (0, 2^32, 2^32) is a valid empty array.
    const t = parseNpy(f4('(0, 4294967296, 4294967296)'));
    expect([t.shape, t.data.length]).toEqual([[0, 2 ** 32, 2 ** 32], 0]);
    const h = parseSt(stFile({ e: { dtype: 'F64', shape: [0, 2 ** 40, 2 ** 40], data_offsets: [0, 0] } }));
    expect(h.tensors.map((e) => [e.name, e.shape, e.byteLength])).toEqual([['e', [0, 2 ** 40, 2 ** 40], 0]]);
  });

  it('writers refuse data longer than the shape, not only shorter (the header would not describe the bytes)', async () => {
    await expectIoError(() => encodeNpy({ dtype: 'int32', shape: [2], data: new Int32Array(3) }), 't.data', /2 elements for shape \[2\]/, 'ERR_SAEKIT_SHAPE');
    const dir = tmpDir();
    await expectIoError(() => writeSafetensors(path.join(dir, 'x.safetensors'), { a: { dtype: 'uint8', shape: [4], data: new Uint8Array(5) } }), 'tensors["a"].data', /4 elements/, 'ERR_SAEKIT_SHAPE');
    expect(readdirSync(dir)).toEqual([]);
  });

  it('safetensors: N of exactly 100,000,000 passes the cap (then needs its bytes), one more is refused; N one byte past the end is refused as such', async () => {
    const prefix = (n: number) => {
      const b = new Uint8Array(8);
      new DataView(b.buffer).setBigUint64(0, BigInt(n), true);
      return b;
    };
    await expectIoError(() => parseSafetensorsHeader(prefix(100_000_000), 100_000_008, 'm.st'), 'm.st', /only 8 of the 100000008 header bytes are available/);
    await expectIoError(() => parseSafetensorsHeader(prefix(100_000_001), 200_000_000, 'm.st'), 'm.st', /header length 100000001 exceeds the limit of 100000000 bytes/);
    // A header that ends 1 to 8 bytes past the file's end: named as such, in memory and on disk.
    const dir = tmpDir();
    for (const over of [1, 7, 8]) {
      const bytes = stFile('{}   ', 0, 5 + over);
      await expectIoError(() => parseSt(bytes), 'mem.safetensors', new RegExp(`header length ${5 + over} runs past the end of the file \\(13 bytes\\)`));
      const file = path.join(dir, `over${over}.safetensors`);
      writeFileSync(file, bytes);
      await expectIoError(() => readSafetensors(file), file, /runs past the end of the file \(13 bytes\)/);
    }
    // A file of under 8 bytes on disk: too short, not a read past its end.
    const tiny = path.join(dir, 'tiny.safetensors');
    writeFileSync(tiny, new Uint8Array([1, 0, 0, 0, 0]));
    await expectIoError(() => readSafetensors(tiny), tiny, /file is 5 bytes, too short for the 8-byte header length/);
  });

  it('safetensors: offsets at or past 2^53 are refused as offsets (not as a hole); an empty tensor may share its begin with the next, in any JSON order', async () => {
    await expectIoError(
      () => parseSt(stFile('{"a":{"dtype":"U8","shape":[0],"data_offsets":[9007199254740992,9007199254740992]}}')),
      'mem.safetensors',
      /data_offsets \[9007199254740992, 9007199254740992\] are not non-negative integers/,
    );
    // The reference sorts by (begin, end): the empty "e" at [4, 4] comes before "b" at [4, 8] whichever is listed first.
    for (const header of [
      { a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] }, e: { dtype: 'F32', shape: [0], data_offsets: [4, 4] } },
      { b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] }, e: { dtype: 'F32', shape: [0], data_offsets: [4, 4] }, a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } },
    ]) {
      const { tensors } = await decodeSafetensors(stFile(header, bytesOf(new Float32Array([1.5, -2]))), 'm.st');
      expect([Array.from(tensors.a!.data as Float32Array), Array.from(tensors.b!.data as Float32Array), tensors.e!.data.length]).toEqual([[1.5], [-2], 0]);
    }
  });

  it('safetensors readBytes: an empty range at the end of the file is within it, one byte past is not; `into` of exactly `length` bytes is enough', async () => {
    const dir = tmpDir();
    const file = path.join(dir, 'r.safetensors');
    await writeSafetensors(file, { w: { dtype: 'uint8', shape: [3], data: new Uint8Array([7, 8, 9]) } });
    const size = readFileSync(file).length;
    const reader = await readSafetensors(file);
    try {
      expect((await reader.readBytes(size, 0)).length).toBe(0);
      await expectIoError(() => reader.readBytes(size + 1, 0), 'offset', new RegExp(`integer between 0 and ${size}`), 'ERR_SAEKIT_ARG');
      await expectIoError(() => reader.readBytes(size, 1), 'length', /integer between 0 and 0/, 'ERR_SAEKIT_ARG');
      const into = new Uint8Array(3);
      const got = await reader.readBytes(size - 3, 3, into);
      expect([got.buffer === into.buffer, Array.from(got)]).toEqual([true, [7, 8, 9]]);
    } finally {
      await reader.close();
    }
  });

  it('writeSafetensors pads the header to the next multiple of 8 only when it is not one already (the reference writer)', () => {
    const residues = new Set<number>();
    for (let len = 1; len <= 16; len++) {
      const name = 'n'.repeat(len);
      const json = `{"${name}":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`;
      const n = json.length % 8 === 0 ? json.length : json.length + 8 - (json.length % 8);
      residues.add(json.length % 8);
      const want = new Uint8Array(8 + n + 1);
      new DataView(want.buffer).setBigUint64(0, BigInt(n), true);
      want.set(Buffer.from(json.padEnd(n, ' ')), 8);
      want[8 + n] = 42;
      expect(Buffer.from(encodeSafetensors({ [name]: { dtype: 'uint8', shape: [1], data: new Uint8Array([42]) } })).toString('latin1'), name).toBe(Buffer.from(want).toString('latin1'));
    }
    expect(residues.size).toBe(8);
  });

  it('writeSafetensors orders names of one dtype by their UTF-8 bytes as the reference does (U+E000 before U+10000, the reverse of UTF-16 order)', () => {
    const t = (v: number) => ({ dtype: 'float32' as const, shape: [1], data: new Float32Array([v]) });
    const bytes = encodeSafetensors({ '\u{10000}': t(2), '\uE000': t(1), z: t(0) });
    const h = parseSt(bytes);
    expect(h.tensors.map((e) => [e.name, e.offset - 8 - h.headerLength])).toEqual([
      ['z', 0],
      ['\uE000', 4],
      ['\u{10000}', 8],
    ]);
  });

  it('transposeSteps (blocks of 16 output rows, 8192 input rows between yields) equals the naive transpose bit for bit: odd shapes, block edges', () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const shapes: [number, number][] = [[1, 1], [1, 37], [37, 1], [16, 16], [17, 15], [8193, 3], [3, 8193], [8192 + 17, 33]];
    for (let t = 0; t < 12; t++) shapes.push([1 + Math.floor(next() * 300), 1 + Math.floor(next() * 300)]);
    for (const [rows, cols] of shapes) {
      const m = Float32Array.from({ length: rows * cols }, () => (next() - 0.5) * 1e3);
      let yields = 0;
      const work = transposeSteps(m, rows, cols);
      let r = work.next();
      for (; !r.done; r = work.next()) yields++;
      const out = new Uint32Array(r.value.buffer);
      const src = new Uint32Array(m.buffer);
      let bad = -1;
      for (let i = 0; i < rows && bad < 0; i++) for (let j = 0; j < cols; j++) if (out[j * rows + i] !== src[i * cols + j]) bad = i * cols + j;
      expect(bad, `seed ${seed}: ${rows} x ${cols}`).toBe(-1);
      expect(yields, `${rows} x ${cols}`).toBe(Math.ceil(cols / 16) * Math.ceil(rows / 8192));
    }
  });

  it('littleEndianPieces views a subarray over 4 GiB at its own byte offset', () => {
    const n = 2 ** 30 + 3;
    const whole = new Float32Array(n + 2); // never touched: no memory is used
    const data = whole.subarray(2);
    const parts = encodeSafetensorsParts({ w: { dtype: 'float32', shape: [n], data } });
    expect(parts.slice(1).map((c) => [c.byteOffset, c.byteLength])).toEqual([
      [8, 2 ** 30],
      [8 + 2 ** 30, 2 ** 30],
      [8 + 2 ** 31, 2 ** 30],
      [8 + 3 * 2 ** 30, 2 ** 30],
      [8 + 2 ** 32, 12],
    ]);
  });
});
