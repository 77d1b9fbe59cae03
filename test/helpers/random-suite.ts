/**
 * The random fills against the documented Philox layout (docs/random.md), on any device: the
 * same (seed, stream) gives the same stream everywhere. Uniform values are exact (24 bits of an
 * integer scaled by a power of two), so every device must match them bit for bit; normal values
 * are float64 Box-Muller rounded once to float32, so a device whose float64 log/sin/cos differ
 * from libm in the last bits (CUDA's are within 2 float64 ulps) can differ only when that moves
 * the value across a float32 rounding boundary: at most 1 float32 ulp (`normalUlps`).
 */
import { expect, it } from 'vitest';

import { rand, randn, type DeviceOption } from '../../lib/index.js';
import { native } from '../../lib/native/index.js';

/** The four words of block `block` for (seed, stream), per the documented layout (docs/random.md). */
export function philoxWords(seed: bigint, stream: bigint, block: bigint): Uint32Array {
  const lo = (x: bigint) => Number(x & 0xffffffffn);
  const hi = (x: bigint) => Number((x >> 32n) & 0xffffffffn);
  return native()._philox(Uint32Array.of(lo(block), hi(block), lo(stream), hi(stream)), Uint32Array.of(lo(seed), hi(seed)));
}

/** One float32 ulp at |x| (the spacing just above |x|; 2^-149 at zero). */
function ulp32(x: number): number {
  const a = Math.abs(x);
  if (a < 2 ** -126) return 2 ** -149;
  return 2 ** (Math.floor(Math.log2(a)) - 23);
}

export interface RandomSuiteOptions {
  /** Where the fills run (default 'cpu'). */
  device?: DeviceOption;
  /** Float32 ulps a normal fill may differ from the CPU's (default 0: bit-identical). */
  normalUlps?: number;
}

export function randomSuite(options: RandomSuiteOptions = {}): void {
  const device = options.device ?? 'cpu';
  const normalUlps = options.normalUlps ?? 0;

  it('rand follows the documented stream layout exactly', async () => {
    const seed = 0x0123456789abcdefn;
    const stream = 7n;
    const n = 1031; // not a multiple of 4
    using t = rand([n], { seed, stream, device });
    const got = await t.toArray();
    for (let i = 0; i < n; i++) {
      const w = philoxWords(seed, stream, BigInt(i >> 2))[i & 3]!;
      if (got[i] !== (w >>> 8) / 16777216) expect(got[i], `element ${i}`).toBe((w >>> 8) / 16777216);
    }
  });

  it('randn is Box-Muller on lane pairs of the same block (float64 math, rounded once)', async () => {
    const seed = 42n;
    const n = 1030;
    using t = randn([n], { seed, device });
    const got = await t.toArray();
    for (let i = 0; i < n; i++) {
      const w = philoxWords(seed, 0n, BigInt(i >> 2));
      const p = (i & 3) >> 1;
      const u1 = ((w[2 * p]! >>> 8) + 0.5) / 16777216;
      const u2 = (w[2 * p + 1]! >>> 8) / 16777216;
      const r = Math.sqrt(-2 * Math.log(u1));
      const z = (i & 1) === 0 ? r * Math.cos(2 * Math.PI * u2) : r * Math.sin(2 * Math.PI * u2);
      // libm and V8 may differ in the last bit of log/cos: allow 2 float32 ulps.
      expect(Math.abs(got[i]! - z)).toBeLessThanOrEqual(2 * 2 ** -23 * Math.max(Math.abs(z), 2 ** -10));
    }
  });

  it(`the fills equal the CPU's (uniform bit for bit, normal within ${normalUlps} float32 ulps)`, async () => {
    const n = 2053;
    const seed = BigInt(Date.now());
    for (const kind of ['uniform', 'normal'] as const) {
      const make = kind === 'uniform' ? rand : randn;
      using here = make([n], { seed, stream: 3, device });
      using cpu = make([n], { seed, stream: 3, device: 'cpu' });
      const [a, b] = await Promise.all([here.toArray(), cpu.toArray()]);
      const tol = kind === 'uniform' ? 0 : normalUlps;
      let worst = 0;
      for (let i = 0; i < n; i++) if (!Object.is(a[i], b[i])) worst = Math.max(worst, Math.abs(a[i]! - b[i]!) / ulp32(b[i]!));
      expect(worst, `${kind}, seed ${seed}: worst difference in float32 ulps`).toBeLessThanOrEqual(tol);
    }
  });

  it('is deterministic for a seed, and different seeds differ', async () => {
    using a = randn([4099], { seed: 123, device });
    using b = randn([4099], { seed: 123, device });
    using c = randn([4099], { seed: 124, device });
    const [x, y, z] = await Promise.all([a.toArray(), b.toArray(), c.toArray()]);
    expect(Buffer.from(x.buffer).equals(Buffer.from(y.buffer))).toBe(true);
    expect(x.filter((v, i) => v === z[i]).length).toBeLessThan(5);
  });

  it('bfloat16 and float16 fills equal the float32 fill rounded once', async () => {
    using a = randn([777], { seed: 5, device });
    using b = randn([777], { seed: 5, dtype: 'bfloat16', device });
    using c = randn([777], { seed: 5, dtype: 'float16', device });
    expect([b.device, c.device]).toEqual([a.device, a.device]);
    using a16 = await a.to('bfloat16');
    using ah = await a.to('float16');
    expect(Array.from(await b.toArray())).toEqual(Array.from(await a16.toArray()));
    expect(Array.from(await c.toArray())).toEqual(Array.from(await ah.toArray()));
  });
}
