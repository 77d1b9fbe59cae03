/**
 * Fuzzing the file readers: 19,200 random mutations (bit flips, byte overwrites, header
 * edits, truncations, insertions, deletions, splices, header-length edits) of valid safetensors,
 * .npy and .npz files, fresh each run. Each read must either fail with a SaekitError coded
 * ERR_SAEKIT_FORMAT that names the file, or succeed with data that is consistent with the bytes
 * (and equal to the original wherever the mutation left the meaningful bytes alone). Parsing is
 * in memory, through the same code paths as the file readers; a few hundred go through files.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { SaekitError } from '../lib/errors.js';
import { readSafetensors, type IoDType, type IoTensor } from '../lib/io/index.js';
import { encodeNpy, parseNpy } from '../lib/io/npy.js';
import { decodeNpz, encodeNpzParts } from '../lib/io/npz.js';
import { encodeSafetensors, openSafetensors, type SafetensorsReader } from '../lib/io/safetensors.js';
import { memorySource } from '../lib/io/source.js';
import { ALL_DTYPES, bytesOf, fixture, freshSeed, ITEM, numel, randomTensor, rng, tmpDir } from './helpers/io-helpers.js';

/** The whole file's time budget; the loops stop and fail past it (a hang shows up as a failure). */
const BUDGET_MS = 25_000;
const started = performance.now();

function overBudget(): boolean {
  return performance.now() - started > BUDGET_MS;
}

/** A mutated copy of `src`; [lo, hi) is the touched range when the length did not change. */
interface Mutation {
  bytes: Uint8Array;
  kind: string;
  sameLength: boolean;
  lo: number;
  hi: number;
}

const INTERESTING = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x20, 0x0a];
const SYNTAX = [...'{}[]"\':,()0123456789-+.eE TFLNn\\'].map((c) => c.charCodeAt(0));

/**
 * One random mutation. `headerEnd` is where the header stops: 60% of in-place edits land before it.
 * `lengthField` is the [offset, size] of the header-length field to edit (safetensors u64, npy u16/u32).
 */
function mutate(src: Uint8Array, next: () => number, headerEnd: number, lengthField: [number, number] | undefined, other: Uint8Array): Mutation {
  const int = (n: number) => Math.floor(next() * n);
  const pos = () => (next() < 0.6 && headerEnd > 0 ? int(Math.min(headerEnd, src.length)) : int(src.length));
  const same = (bytes: Uint8Array, kind: string, lo: number, hi: number): Mutation => ({ bytes, kind, sameLength: true, lo, hi });
  const moved = (bytes: Uint8Array, kind: string): Mutation => ({ bytes, kind, sameLength: false, lo: 0, hi: src.length });
  const copy = () => new Uint8Array(src);
  switch (int(8)) {
    case 0: {
      const b = copy();
      let lo = src.length;
      let hi = 0;
      for (let k = 1 + int(3); k > 0; k--) {
        const p = pos();
        b[p] ^= 1 << int(8);
        lo = Math.min(lo, p);
        hi = Math.max(hi, p + 1);
      }
      return same(b, 'bit flip', lo, hi);
    }
    case 1: {
      const b = copy();
      const p = pos();
      const n = Math.min(1 + int(8), b.length - p);
      for (let i = 0; i < n; i++) b[p + i] = next() < 0.5 ? int(256) : INTERESTING[int(INTERESTING.length)]!;
      return same(b, 'byte overwrite', p, p + n);
    }
    case 2: {
      const b = copy();
      const p = headerEnd > 0 ? int(Math.min(headerEnd, src.length)) : int(src.length);
      b[p] = SYNTAX[int(SYNTAX.length)]!;
      return same(b, 'header syntax', p, p + 1);
    }
    case 3:
      return moved(src.slice(0, int(src.length)), 'truncation');
    case 4: {
      const p = pos();
      const ins = next() < 0.5 ? new Uint8Array(1 + int(16)).map(() => int(256)) : src.slice(int(src.length)).subarray(0, 1 + int(32));
      return moved(concat(src.subarray(0, p), ins, src.subarray(p)), 'insertion');
    }
    case 5: {
      const p = pos();
      return moved(concat(src.subarray(0, p), src.subarray(Math.min(src.length, p + 1 + int(16)))), 'deletion');
    }
    case 6: {
      const p = pos();
      const q = int(other.length);
      return moved(concat(src.subarray(0, p), other.subarray(q, q + 1 + int(64)), src.subarray(p + int(64))), 'splice');
    }
    default: {
      if (!lengthField) {
        // archives: rewrite one aligned 16- or 32-bit field somewhere in the directory at the end
        const b = copy();
        const width = next() < 0.5 ? 2 : 4;
        const p = Math.max(0, b.length - 1 - int(Math.min(b.length, 160)));
        const dv = new DataView(b.buffer);
        if (p + width <= b.length) {
          const v = next() < 0.3 ? (width === 2 ? 0xffff : 0xffffffff) : next() < 0.5 ? int(256) : int(2 ** (8 * width));
          if (width === 2) dv.setUint16(p, v, true);
          else dv.setUint32(p, v >>> 0, true);
        }
        return same(b, 'field edit', p, p + width);
      }
      const [at, size] = lengthField;
      const b = copy();
      const dv = new DataView(b.buffer);
      const old = size === 8 ? Number(dv.getBigUint64(at, true)) : size === 4 ? dv.getUint32(at, true) : dv.getUint16(at, true);
      const r = next();
      const v = r < 0.5 ? old + int(17) - 8 : r < 0.8 ? int(2 ** (8 * Math.min(size, 4))) : 2 ** (8 * Math.min(size, 6)) - 1;
      const clamped = Math.max(0, Math.min(v, size === 2 ? 0xffff : size === 4 ? 0xffffffff : Number.MAX_SAFE_INTEGER));
      if (size === 8) dv.setBigUint64(at, BigInt(clamped), true);
      else if (size === 4) dv.setUint32(at, clamped, true);
      else dv.setUint16(at, clamped, true);
      return same(b, 'header length edit', at, at + size);
    }
  }
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Checks a failure: a SaekitError, ERR_SAEKIT_FORMAT, naming the file. */
function expectFormatFailure(err: unknown, name: string, label: string): void {
  if (!(err instanceof SaekitError)) throw new Error(`${label}: threw a non-SaekitError: ${String((err as Error)?.stack ?? err)}`);
  if (err.code !== 'ERR_SAEKIT_FORMAT' || !err.message.includes(name)) throw new Error(`${label}: wrong error ${err.code}: ${err.message}`);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) === 0;
}

/** A tensor's data must match its dtype and shape. */
function consistent(t: IoTensor, label: string): void {
  if (!ALL_DTYPES.includes(t.dtype)) throw new Error(`${label}: dtype ${t.dtype}`);
  if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw new Error(`${label}: shape ${t.shape}`);
  if (t.data.length !== numel(t.shape) || t.data.byteLength !== numel(t.shape) * ITEM[t.dtype]) throw new Error(`${label}: data length`);
}

interface Tally {
  runs: number;
  ok: number;
  failed: number;
}

/** Rank 0 to 3, each dimension 0 to `maxDim`. */
function randomShape(next: () => number, maxDim = 3): number[] {
  const rank = Math.floor(next() * 4);
  return Array.from({ length: rank }, () => Math.floor(next() * (maxDim + 1)));
}

function randomTensors(next: () => number, count: number, maxDim = 3): Record<string, IoTensor> {
  const out: Record<string, IoTensor> = {};
  for (let i = 0; i < count; i++) {
    const dtype: IoDType = ALL_DTYPES[Math.floor(next() * ALL_DTYPES.length)]!;
    out[`t${i}.${dtype}`] = randomTensor(dtype, randomShape(next, maxDim), next);
  }
  return out;
}

/** An unpadded safetensors file (data misaligned), built by hand. */
function unpaddedSafetensors(next: () => number): Uint8Array {
  const a = randomTensor('float64', [3], next);
  const b = randomTensor('int32', [2], next);
  const json = Buffer.from(JSON.stringify({ a: { dtype: 'F64', shape: [3], data_offsets: [0, 24] }, b: { dtype: 'I32', shape: [2], data_offsets: [24, 32] }, __metadata__: { x: 'y' } }));
  const head = new Uint8Array(8);
  new DataView(head.buffer).setBigUint64(0, BigInt(json.length), true);
  return concat(head, json, bytesOf(a.data), bytesOf(b.data));
}

/**
 * Every tensor of `reader`. A mutation can turn a dtype into another valid safetensors dtype that
 * read() does not convert ("F16" into "I16", say): read() must refuse it with ERR_SAEKIT_DTYPE
 * naming the tensor and the file, and its raw bytes (from readBytes) stand in as a uint8 vector.
 */
async function readAllSafetensors(reader: SafetensorsReader, label = ''): Promise<Map<string, IoTensor>> {
  const out = new Map<string, IoTensor>();
  for (const e of reader.tensors) {
    if (e.dtype !== null) {
      out.set(e.name, await reader.read(e.name));
      continue;
    }
    const err = await reader.read(e.name).then(
      () => undefined,
      (x: unknown) => x,
    );
    if (!(err instanceof SaekitError) || err.code !== 'ERR_SAEKIT_DTYPE' || !err.message.includes(reader.path) || !err.message.includes(e.code)) {
      throw new Error(`${label}: reading ${e.name} of unconverted dtype ${e.code} gave ${String(err)}`);
    }
    const bytes = await reader.readBytes(e.offset, e.byteLength);
    out.set(e.name, { dtype: 'uint8', shape: [bytes.length], data: bytes });
  }
  return out;
}

/** One safetensors mutation: parse, then check the outcome against the original. */
async function fuzzSafetensorsOnce(src: Uint8Array, m: Mutation, viaFile: string | undefined, label: string, tally: Tally): Promise<void> {
  const name = viaFile ?? 'fuzz.safetensors';
  const original = await openSafetensors(memorySource(src, 'seed'));
  const originalData = await readAllSafetensors(original);
  const dataStart = 8 + Number(new DataView(src.buffer, src.byteOffset).getBigUint64(0, true));
  let reader: SafetensorsReader;
  try {
    if (viaFile) writeFileSync(viaFile, m.bytes);
    reader = viaFile ? await readSafetensors(viaFile) : await openSafetensors(memorySource(m.bytes, name));
  } catch (err) {
    expectFormatFailure(err, name, label);
    tally.failed++;
    return;
  }
  try {
    const got = await readAllSafetensors(reader, label);
    for (const e of reader.tensors) {
      const t = got.get(e.name)!;
      consistent(t, `${label} ${e.name}`);
      if (!sameBytes(bytesOf(t.data), m.bytes.subarray(e.offset, e.offset + e.byteLength))) throw new Error(`${label}: ${e.name} is not the file's bytes`);
    }
    if (m.sameLength && m.lo >= dataStart) {
      // only tensor bytes changed: same header, and untouched tensors read exactly as before
      expect(reader.tensors, label).toEqual(original.tensors);
      expect(reader.metadata, label).toEqual(original.metadata);
      for (const e of original.tensors) {
        if (e.offset + e.byteLength <= m.lo || e.offset >= m.hi) {
          if (!sameBytes(bytesOf(got.get(e.name)!.data), bytesOf(originalData.get(e.name)!.data))) throw new Error(`${label}: untouched ${e.name} changed`);
        }
      }
    }
    tally.ok++;
  } finally {
    await reader.close();
  }
}

function npyDataOffset(src: Uint8Array): number {
  const dv = new DataView(src.buffer, src.byteOffset);
  return src[6] === 1 ? 10 + dv.getUint16(8, true) : 12 + dv.getUint32(8, true);
}

/** One .npy mutation. `plain` seeds are C-order little-endian, so their data bytes are the file's. */
function fuzzNpyOnce(src: Uint8Array, m: Mutation, plain: boolean, label: string, tally: Tally): void {
  const original = parseNpy(src, 'seed');
  let t: IoTensor;
  try {
    t = parseNpy(m.bytes, 'fuzz.npy');
  } catch (err) {
    expectFormatFailure(err, 'fuzz.npy', label);
    tally.failed++;
    return;
  }
  consistent(t, label);
  const off = npyDataOffset(src);
  if (m.sameLength && m.lo >= off) {
    expect(t.dtype, label).toBe(original.dtype);
    expect(t.shape, label).toEqual(original.shape);
    // the data is the file's bytes, so everything outside [lo, hi) equals the original
    if (plain && !sameBytes(bytesOf(t.data), m.bytes.subarray(off))) throw new Error(`${label}: data is not the file's bytes`);
  }
  tally.ok++;
}

/** One .npz mutation: CRC-protected, so a read that keeps every key must return the original arrays. */
async function fuzzNpzOnce(src: Uint8Array, original: Record<string, IoTensor>, m: Mutation, label: string, tally: Tally): Promise<void> {
  let got: Record<string, IoTensor>;
  try {
    got = await decodeNpz(m.bytes, 'fuzz.npz');
  } catch (err) {
    expectFormatFailure(err, 'fuzz.npz', label);
    tally.failed++;
    return;
  }
  for (const [k, t] of Object.entries(got)) consistent(t, `${label} ${k}`);
  if (Object.keys(got).sort().join('\0') === Object.keys(original).sort().join('\0')) {
    for (const k of Object.keys(original)) {
      expect(got[k]!.dtype, label).toBe(original[k]!.dtype);
      expect(got[k]!.shape, label).toEqual(original[k]!.shape);
      if (!sameBytes(bytesOf(got[k]!.data), bytesOf(original[k]!.data))) throw new Error(`${label}: ${k} changed but passed the CRC`);
    }
  }
  tally.ok++;
}

describe('fuzzing the file readers with random mutations', () => {
  it('safetensors: 8,000 in memory and 200 through files end in FORMAT errors or faithful reads', async () => {
    const seed = freshSeed(11);
    const next = rng(seed);
    const dir = tmpDir();
    const tally: Tally = { runs: 0, ok: 0, failed: 0 };
    const seeds = [fixture('reference.safetensors'), unpaddedSafetensors(next)];
    for (let s = 0; s < 6; s++) seeds.push(encodeSafetensors(randomTensors(next, 1 + Math.floor(next() * 5), 6), s % 2 ? { note: `seed ${s}` } : undefined));
    // the mutation that once failed CI: "F16" became "I16", a valid dtype read() does not convert
    const f16 = encodeSafetensors({ a: randomTensor('float16', [3, 5], next), b: randomTensor('float32', [2], next) });
    const at = Buffer.from(f16).indexOf('"F16"');
    expect(at).toBeGreaterThan(8);
    const i16 = f16.slice();
    i16[at + 1] = 0x49; // 'I'
    const before = tally.ok;
    await fuzzSafetensorsOnce(f16, { bytes: i16, kind: 'F16 to I16', sameLength: true, lo: at + 1, hi: at + 2 }, undefined, 'F16 to I16', tally);
    expect(tally.ok, 'a tensor of a valid, unconverted dtype reads as its raw bytes').toBe(before + 1);
    tally.ok = before;
    for (let i = 0; i < 8200; i++) {
      if (overBudget()) throw new Error(`seed ${seed}: over the time budget after ${i} safetensors runs`);
      const src = seeds[i % seeds.length]!;
      const n = Number(new DataView(src.buffer, src.byteOffset).getBigUint64(0, true));
      const m = mutate(src, next, 8 + n, [0, 8], seeds[(i + 1) % seeds.length]!);
      const viaFile = i >= 8000 ? path.join(dir, `f${i % 4}.safetensors`) : undefined;
      await fuzzSafetensorsOnce(src, m, viaFile, `seed ${seed} run ${i} (${m.kind})`, tally);
      tally.runs++;
    }
    expect(tally.runs).toBe(8200);
    expect(tally.ok, 'some mutations keep the file valid').toBeGreaterThan(100);
    expect(tally.failed, 'most mutations break it').toBeGreaterThan(1000);
  }, 60_000);

  it('npy: 8,000 mutations end in FORMAT errors or faithful reads', () => {
    const seed = freshSeed(12);
    const next = rng(seed);
    const tally: Tally = { runs: 0, ok: 0, failed: 0 };
    const plain: Uint8Array[] = [];
    for (let s = 0; s < 8; s++) {
      const dtype = ALL_DTYPES[s % ALL_DTYPES.length]!;
      plain.push(encodeNpy(randomTensor(dtype, s < 2 ? randomShape(next) : [1 + Math.floor(next() * 6), 2 + Math.floor(next() * 6)], next)));
    }
    plain.push(fixture('f4_c_2d.npy'), fixture('scalar_f4.npy'), fixture('v2_f4.npy'), fixture('v3_i8.npy'));
    const other = [fixture('f8_fortran_2d.npy'), fixture('i4_be.npy'), fixture('i4_fortran_3d.npy'), fixture('f2_be.npy')];
    const seeds = [...plain.map((b) => ({ b, plain: true })), ...other.map((b) => ({ b, plain: false }))];
    for (let i = 0; i < 8000; i++) {
      if (overBudget()) throw new Error(`seed ${seed}: over the time budget after ${i} npy runs`);
      const { b: src, plain: isPlain } = seeds[i % seeds.length]!;
      const lenField: [number, number] = src[6] === 1 ? [8, 2] : [8, 4];
      const m = mutate(src, next, npyDataOffset(src), lenField, seeds[(i + 3) % seeds.length]!.b);
      fuzzNpyOnce(src, m, isPlain, `seed ${seed} run ${i} (${m.kind})`, tally);
      tally.runs++;
    }
    expect(tally.ok).toBeGreaterThan(100);
    expect(tally.failed).toBeGreaterThan(1000);
  }, 60_000);

  it('npz: 3,000 mutations end in FORMAT errors or the original arrays', async () => {
    const seed = freshSeed(13);
    const next = rng(seed);
    const tally: Tally = { runs: 0, ok: 0, failed: 0 };
    const seeds: { b: Uint8Array; arrays: Record<string, IoTensor> }[] = [];
    for (const name of ['savez.npz', 'savez_compressed.npz']) seeds.push({ b: fixture(name), arrays: await decodeNpz(fixture(name), name) });
    for (const [compress, zip64] of [[false, 'auto'], [true, 'auto'], [false, 'always'], [true, 'always']] as const) {
      const arrays = randomTensors(next, 3);
      seeds.push({ b: Buffer.concat(await encodeNpzParts(arrays, { compress, zip64 })), arrays });
    }
    for (let i = 0; i < 3000; i++) {
      if (overBudget()) throw new Error(`seed ${seed}: over the time budget after ${i} npz runs`);
      const { b: src, arrays } = seeds[i % seeds.length]!;
      const m = mutate(src, next, 0, undefined, seeds[(i + 1) % seeds.length]!.b);
      await fuzzNpzOnce(src, arrays, m, `seed ${seed} run ${i} (${m.kind})`, tally);
      tally.runs++;
    }
    expect(tally.ok).toBeGreaterThan(50);
    expect(tally.failed).toBeGreaterThan(500);
  }, 60_000);

  it(`stayed within the ${BUDGET_MS / 1000} s budget`, () => {
    expect(performance.now() - started).toBeLessThan(BUDGET_MS);
  });
});
