import { describe, expect, it } from 'vitest';

import { backend, rand, randn } from '../lib/index.js';
import { native } from '../lib/native/index.js';
import { philoxWords, randomSuite } from './helpers/random-suite.js';

// Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors):
// counter[4] key[2] -> output[4].
const KAT: [number[], number[], number[]][] = [
  [[0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]],
  [[0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], [0xffffffff, 0xffffffff], [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]],
  [[0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0], [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]],
];

function moments(x: Float32Array): { mean: number; variance: number } {
  let s = 0;
  for (const v of x) s += v;
  const mean = s / x.length;
  let q = 0;
  for (const v of x) q += (v - mean) ** 2;
  return { mean, variance: q / (x.length - 1) };
}

function correlation(a: Float32Array, b: Float32Array): number {
  const ma = moments(a).mean;
  const mb = moments(b).mean;
  let sab = 0;
  let saa = 0;
  let sbb = 0;
  for (let i = 0; i < a.length; i++) {
    sab += (a[i]! - ma) * (b[i]! - mb);
    saa += (a[i]! - ma) ** 2;
    sbb += (b[i]! - mb) ** 2;
  }
  return sab / Math.sqrt(saa * sbb);
}

describe('Philox 4x32-10', () => {
  it('matches the Random123 known-answer vectors', () => {
    for (const [ctr, key, want] of KAT) {
      expect(Array.from(native()._philox(Uint32Array.from(ctr), Uint32Array.from(key)))).toEqual(want);
    }
  });

  randomSuite({ device: 'cpu' });

  it('a fill split over threads keeps the documented layout at every chunk start (chunks begin mid-block)', async () => {
    // Fills of at least 2^15 elements run on several threads, in chunks n * c / chunks that may
    // begin at any lane of a Philox block. n = 50003 over 3 or 4 chunks starts them at lanes 3, 3
    // (16667, 33335) and 0, 1, 2 (12500, 25001, 37502).
    const n = 50003;
    const seed = BigInt(Date.now());
    const before = backend.info().threads;
    try {
      for (const threads of [3, 7]) {
        backend.setThreads(threads);
        using u = rand([n], { seed, stream: 5, device: 'cpu' });
        using z = randn([n], { seed, stream: 5, device: 'cpu' });
        const [got, gotN] = await Promise.all([u.toArray(), z.toArray()]);
        for (let i = 0; i < n; i++) {
          const w = philoxWords(seed, 5n, BigInt(i >> 2));
          const want = (w[i & 3]! >>> 8) / 16777216;
          if (got[i] !== want) expect(got[i], `rand element ${i}, ${threads} threads, seed ${seed}`).toBe(want);
          const p = (i & 3) >> 1;
          const r = Math.sqrt(-2 * Math.log(((w[2 * p]! >>> 8) + 0.5) / 16777216));
          const theta = (2 * Math.PI * (w[2 * p + 1]! >>> 8)) / 16777216;
          const wantN = (i & 1) === 0 ? r * Math.cos(theta) : r * Math.sin(theta);
          // libm and V8 may differ in the last bit of log/cos: 2 float32 ulps, as the suite allows.
          const tol = 2 * 2 ** -23 * Math.max(Math.abs(wantN), 2 ** -10);
          if (!(Math.abs(gotN[i]! - wantN) <= tol))
            expect(Math.abs(gotN[i]! - wantN), `randn element ${i}, ${threads} threads, seed ${seed}`).toBeLessThanOrEqual(tol);
        }
      }
    } finally {
      backend.setThreads(before);
    }
  });

  it('streams of one seed are independent (|r| within 5 standard errors of 0)', async () => {
    const n = 200_000;
    using a = randn([n], { seed: 9, stream: 0, device: 'cpu' });
    using b = randn([n], { seed: 9, stream: 1, device: 'cpu' });
    using c = rand([n], { seed: 9, stream: 2 ** 40, device: 'cpu' });
    const [x, y, z] = await Promise.all([a.toArray(), b.toArray(), c.toArray()]);
    expect(Math.abs(correlation(x, y))).toBeLessThan(5 / Math.sqrt(n));
    expect(Math.abs(correlation(x, z))).toBeLessThan(5 / Math.sqrt(n));
    // Neighbouring elements of one stream are uncorrelated too.
    expect(Math.abs(correlation(x.subarray(0, n - 1), x.subarray(1)))).toBeLessThan(5 / Math.sqrt(n));
  });

  it('randn has mean 0 and variance 1, rand has mean 1/2 and variance 1/12 (5-sigma bounds)', async () => {
    const n = 1_000_000;
    const seed = Date.now();
    using a = randn([1000, 1000], { seed, device: 'cpu' });
    using b = rand([n], { seed, device: 'cpu' });
    const { mean, variance } = moments(await a.toArray());
    expect(Math.abs(mean), `seed ${seed}`).toBeLessThan(5 / Math.sqrt(n));
    expect(Math.abs(variance - 1), `seed ${seed}`).toBeLessThan(5 * Math.sqrt(2 / n));
    const u = moments(await b.toArray());
    expect(Math.abs(u.mean - 0.5)).toBeLessThan(5 * Math.sqrt(1 / 12 / n));
    // Var of (U - 1/2)^2 estimates: sd of sample variance ~ sqrt(1/180/n)
    expect(Math.abs(u.variance - 1 / 12)).toBeLessThan(5 * Math.sqrt(1 / 180 / n));
    const bu = await b.toArray();
    expect(bu.every((v) => v >= 0 && v < 1)).toBe(true);
  });
});
