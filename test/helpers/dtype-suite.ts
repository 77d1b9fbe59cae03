/**
 * Conversion tests against an independent reference: the nearest representable value found by
 * searching a sorted table of every finite bf16/f16 value (exact in float64), ties to the even
 * bit pattern. No bit tricks are shared with the native code. Conversions are exact, so every
 * device must pass them bit for bit (tensors are made on `device`; test/device-tensor.test.ts and
 * test/cuda.test.ts run it on a device).
 */
import { expect, it } from 'vitest';

import { tensor, type DeviceOption } from '../../lib/index.js';
import { lcg } from './reference.js';

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

function bitsToF32(b: number): number {
  u32[0] = b >>> 0;
  return f32[0]!;
}

/** The value of a 16-bit pattern, computed from the IEEE definition. */
function decode16(h: number, kind: 'bfloat16' | 'float16'): number {
  const expBits = kind === 'float16' ? 5 : 8;
  const manBits = 15 - expBits;
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> manBits) & ((1 << expBits) - 1);
  const man = h & ((1 << manBits) - 1);
  const bias = (1 << (expBits - 1)) - 1;
  if (exp === (1 << expBits) - 1) return man ? NaN : sign * Infinity;
  if (exp === 0) return sign * man * 2 ** (1 - bias - manBits);
  return sign * (1 + man / 2 ** manBits) * 2 ** (exp - bias);
}

interface Table {
  values: Float64Array; // ascending, non-negative finite values
  bits: Uint16Array; // their patterns
  maxFinite: number;
}

function table(kind: 'bfloat16' | 'float16'): Table {
  const vals: [number, number][] = [];
  for (let h = 0; h < 0x8000; h++) {
    const v = decode16(h, kind);
    if (Number.isFinite(v)) vals.push([v, h]);
  }
  vals.sort((a, b) => a[0] - b[0]);
  return {
    values: Float64Array.from(vals, (x) => x[0]),
    bits: Uint16Array.from(vals, (x) => x[1]),
    maxFinite: vals[vals.length - 1]![0],
  };
}

/** Round-to-nearest-even of a finite or infinite number to the 16-bit format (NaN handled by the caller). */
function reference16(x: number, t: Table): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  const { values, bits } = t;
  const n = values.length;
  // Overflow threshold: halfway between the largest finite value and the next power step.
  const last = values[n - 1]!;
  const ulp = last - values[n - 2]!;
  if (a >= last + ulp / 2) return sign | (bits[n - 1]! + 1); // the pattern after max finite is inf
  let lo = 0;
  let hi = n - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (values[mid]! <= a) lo = mid;
    else hi = mid;
  }
  if (a <= values[lo]!) return sign | bits[lo]!;
  const dLo = a - values[lo]!;
  const dHi = values[hi]! - a;
  if (dLo < dHi) return sign | bits[lo]!;
  if (dHi < dLo) return sign | bits[hi]!;
  return sign | ((bits[lo]! & 1) === 0 ? bits[lo]! : bits[hi]!);
}

async function convert(values: Float32Array, to: 'bfloat16' | 'float16', device: DeviceOption): Promise<Uint16Array> {
  using t = tensor(values, [values.length], { dtype: to, device });
  return (await t.toArray()) as Uint16Array;
}

export interface DtypeSuiteOptions {
  /** Where every tensor is made (default 'cpu'). */
  device?: DeviceOption;
  /** Random float32 bit patterns checked per 16-bit format (default 100000). */
  randomInputs?: number;
}

export function dtypeSuite(options: DtypeSuiteOptions = {}): void {
  const device = options.device ?? 'cpu';
  const randomInputs = options.randomInputs ?? 100_000;
  for (const kind of ['bfloat16', 'float16'] as const) {
    it(`${kind}: all 65536 bit patterns widen exactly and round-trip (NaN stays NaN)`, async () => {
      const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
      using h = tensor(all, [65536], { dtype: kind, device });
      using f = await h.to('float32');
      expect(f.device).toBe(h.device);
      const wide = await f.toArray();
      for (let i = 0; i < 65536; i++) {
        const want = decode16(i, kind);
        if (Number.isNaN(want)) expect(Number.isNaN(wide[i]), `pattern ${i}`).toBe(true);
        else if (!Object.is(wide[i], want)) expect(wide[i], `pattern 0x${i.toString(16)}`).toBe(want);
      }
      // NaN bits are the same wherever an element sits (vector body or scalar tail, any CPU):
      // bfloat16 keeps its payload (a shift), float16 comes out quiet (as F16C converts).
      const nanBits = (i: number): number =>
        kind === 'bfloat16' ? (i << 16) >>> 0 : (((i & 0x8000) << 16) | 0x7fc00000 | ((i & 0x3ff) << 13)) >>> 0;
      const nans = Array.from({ length: 65536 }, (_, i) => i).filter((i) => Number.isNaN(decode16(i, kind)));
      const wideBits = new Uint32Array(wide.buffer, wide.byteOffset, wide.length);
      for (const i of nans) if (wideBits[i] !== nanBits(i)) expect(wideBits[i]!.toString(16), `NaN pattern 0x${i.toString(16)}`).toBe(nanBits(i).toString(16));
      const odd = 1 + 2 * Math.floor(Math.random() * 3); // 1, 3 or 5 elements: all in the scalar tail
      for (let at = 0; at < 64; at++) {
        const pick = Uint16Array.from({ length: odd }, () => nans[Math.floor(Math.random() * nans.length)]!);
        using ht = tensor(pick, [odd], { dtype: kind, device });
        using ft = await ht.to('float32');
        const got = new Uint32Array(((await ft.toArray()) as Float32Array).buffer);
        for (let j = 0; j < odd; j++) expect(got[j]!.toString(16), `NaN pattern 0x${pick[j]!.toString(16)} alone`).toBe(nanBits(pick[j]!).toString(16));
      }
      using back = await f.to(kind);
      const bits = (await back.toArray()) as Uint16Array;
      for (let i = 0; i < 65536; i++) {
        if (Number.isNaN(decode16(i, kind))) {
          expect(Number.isNaN(decode16(bits[i]!, kind)), `NaN pattern 0x${i.toString(16)}`).toBe(true);
          expect(bits[i]! & 0x8000, 'NaN keeps its sign').toBe(i & 0x8000);
        } else if (bits[i] !== i) {
          expect(bits[i], `pattern 0x${i.toString(16)}`).toBe(i);
        }
      }
    });

    it(`${kind}: float32 -> ${kind} rounds to nearest, ties to even, at every midpoint and random inputs`, async () => {
      const t = table(kind);
      const inputs: number[] = [];
      // Midpoints between neighbours (ties) and the float32 values just around them.
      for (let i = 0; i + 1 < t.values.length; i++) {
        const mid = (t.values[i]! + t.values[i + 1]!) / 2;
        const m32 = Math.fround(mid);
        if (m32 !== mid) continue; // not representable in float32 (cannot be an input)
        u32[0] = 0;
        f32[0] = m32;
        const b = u32[0];
        inputs.push(m32, -m32, bitsToF32(b + 1), bitsToF32(b - 1));
      }
      // Random float32 bit patterns over the whole range, plus special values and edges.
      const next = lcg(Date.now() >>> 0);
      for (let i = 0; i < randomInputs; i++) inputs.push(bitsToF32(Math.floor(next() * 4294967296)));
      inputs.push(0, -0, Infinity, -Infinity, 65504, 65519.99, 65520, 65536, 1e-8, 2 ** -24, 2 ** -25, 3 * 2 ** -26, 3.4e38, 1.4e-45);
      const x = Float32Array.from(inputs);
      const got = await convert(x, kind, device);
      let bad = 0;
      let first = '';
      for (let i = 0; i < x.length; i++) {
        const v = x[i]!;
        if (Number.isNaN(v)) {
          if (!Number.isNaN(decode16(got[i]!, kind))) bad++;
          continue;
        }
        const want = reference16(v, t);
        if (got[i] !== want) {
          if (!bad) first = `${v} -> 0x${got[i]!.toString(16)}, want 0x${want.toString(16)}`;
          bad++;
        }
      }
      expect(bad, first).toBe(0);
    });
  }

  it('float16 <-> bfloat16 rounds once (through exact float32)', async () => {
    const bt = table('bfloat16');
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    using h = tensor(all, [65536], { dtype: 'float16', device });
    using b = await h.to('bfloat16');
    const got = (await b.toArray()) as Uint16Array;
    for (let i = 0; i < 65536; i++) {
      const v = decode16(i, 'float16');
      if (Number.isNaN(v)) {
        expect(Number.isNaN(decode16(got[i]!, 'bfloat16'))).toBe(true);
        continue;
      }
      const want = reference16(v, bt);
      if (got[i] !== want) expect(got[i], `f16 0x${i.toString(16)}`).toBe(want);
    }
  });

  it('int32 <-> float32: exact below 2^24, truncation toward zero, saturation, NaN -> 0', async () => {
    using i = tensor(Int32Array.from([0, 1, -1, 16777216, 16777217, 2147483647, -2147483648]), undefined, { device });
    using f = await i.to('float32');
    expect(Array.from(await f.toArray())).toEqual([0, 1, -1, 16777216, 16777216, 2147483648, -2147483648]);
    using g = tensor(Float32Array.from([1.9, -1.9, 3e9, -3e9, NaN, Infinity, -0.5]), undefined, { device });
    using j = await g.to('int32');
    expect(Array.from(await j.toArray())).toEqual([1, -1, 2147483647, -2147483648, 0, 2147483647, 0]);
    // At the edges of int32's range: 2^31 is the first float32 past it (it saturates), the float32
    // just below it and -2^31 are in range, the one below -2^31 saturates.
    const edges = [2 ** 31, 2 ** 31 - 128, -(2 ** 31), -(2 ** 31) - 256, -(2 ** 31) + 128];
    using h = tensor(Float32Array.from(edges), undefined, { device });
    using k = await h.to('int32');
    expect(Array.from(await k.toArray())).toEqual([2147483647, 2147483520, -2147483648, -2147483648, -2147483520]);
  });
}
