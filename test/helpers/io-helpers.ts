/** Helpers of the file-format tests: random tensors, byte comparisons, golden-file manifests. */
import { mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { expect } from 'vitest';

import { SaekitError } from '../../lib/errors.js';
import type { IoArray, IoDType, IoTensor } from '../../lib/io/index.js';

export const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'io');

export const ALL_DTYPES: IoDType[] = ['float32', 'float16', 'bfloat16', 'float64', 'int32', 'int64', 'uint8'];

export const ITEM: Record<IoDType, number> = { float32: 4, float16: 2, bfloat16: 2, float64: 8, int32: 4, int64: 8, uint8: 1 };

const CTOR = {
  float32: Float32Array,
  float16: Uint16Array,
  bfloat16: Uint16Array,
  float64: Float64Array,
  int32: Int32Array,
  int64: BigInt64Array,
  uint8: Uint8Array,
} as const;

/** Odd shapes: 0-d, empty dims, 1-D, 2-D, 3-D, length-1 axes. */
export const ODD_SHAPES: number[][] = [[], [0], [3, 0, 2], [1], [7], [3, 5], [2, 3, 4], [1, 1, 1, 5], [0, 0]];

export function tmpDir(): string {
  return mkdtempSync(path.join(os.tmpdir(), 'saekit-io-'));
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** A tensor whose bytes are random (every bit pattern, NaNs included), from `next` in [0, 1). */
export function randomTensor(dtype: IoDType, shape: number[], next: () => number): IoTensor {
  const n = numel(shape);
  const bytes = new Uint8Array(n * ITEM[dtype]);
  for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(next() * 256);
  return { dtype, shape, data: new CTOR[dtype](bytes.buffer, 0, n) };
}

/** The bytes of a typed array (a view). */
export function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** Same dtype, shape, array class and bit-identical data. */
export function expectSameTensor(got: IoTensor, want: IoTensor, label: string): void {
  expect(got.dtype, label).toBe(want.dtype);
  expect(got.shape, label).toEqual(want.shape);
  expect(got.data.constructor, label).toBe(want.data.constructor);
  expect(got.data.length, label).toBe(want.data.length);
  expect(Buffer.compare(bytesOf(got.data), bytesOf(want.data)), `${label}: data bytes differ`).toBe(0);
}

/** Expects `fn` to fail with a SaekitError of `code` whose message contains `file` and matches `reason`. */
export async function expectIoError(fn: () => unknown, file: string, reason: RegExp, code = 'ERR_SAEKIT_FORMAT'): Promise<SaekitError> {
  let caught: unknown;
  try {
    await fn();
  } catch (e) {
    caught = e;
  }
  expect(caught, `expected an error matching ${reason}`).toBeInstanceOf(SaekitError);
  const err = caught as SaekitError;
  expect(err.code, err.message).toBe(code);
  expect(err.message).toContain(file);
  expect(err.message).toMatch(reason);
  return err;
}

/** Expected content of a golden file, as generate.py wrote it to manifest.json. */
export interface ManifestTensor {
  dtype: IoDType;
  shape: number[];
  values: (number | string)[];
  encodeMatches?: boolean;
}

export interface Manifest {
  npy: Record<string, ManifestTensor>;
  npz: Record<string, Record<string, ManifestTensor>>;
  safetensors: Record<string, { metadata: Record<string, string>; tensors: Record<string, ManifestTensor> }>;
}

export function loadManifest(): Manifest {
  return JSON.parse(readFileSync(path.join(FIXTURES, 'manifest.json'), 'utf8')) as Manifest;
}

/** The tensor a manifest entry describes (int64 from decimal strings, 16-bit floats from raw bits). */
export function manifestTensor(m: ManifestTensor): IoTensor {
  const data =
    m.dtype === 'int64' ? BigInt64Array.from(m.values, (v) => BigInt(v as string)) : new CTOR[m.dtype](m.values.length);
  if (m.dtype !== 'int64') (data as Float64Array).set(m.values as number[]);
  return { dtype: m.dtype, shape: m.shape, data };
}

export function fixture(name: string): Uint8Array {
  return new Uint8Array(readFileSync(path.join(FIXTURES, name)));
}

/** A deterministic generator (xorshift32) from a seed; the tests seed it from the clock. */
export function rng(seed: number): () => number {
  let s = seed >>> 0 || 0x9e3779b9;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
}

export function freshSeed(salt: number): number {
  return (Date.now() ^ Math.imul(salt, 2654435761)) >>> 0;
}
