/**
 * The data pipeline's deterministic PRNG: xoshiro128** (Blackman and Vigna) on 32-bit words,
 * seeded through splitmix64. A stream is named by (seed, ...tags): the 64-bit seed is run
 * through splitmix64, each tag is xored into the state and mixed again, and the last state
 * yields two 64-bit outputs that become the four 32-bit words. BigInt is used only here, once
 * per stream; drawing numbers is plain 32-bit integer arithmetic.
 */

const MASK64 = (1n << 64n) - 1n;
const GOLDEN = 0x9e3779b97f4a7c15n;

/** One splitmix64 step: returns [next state, output]. */
function splitmix64(state: bigint): [bigint, bigint] {
  const s = (state + GOLDEN) & MASK64;
  let z = s;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return [s, z ^ (z >> 31n)];
}

export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  /** A generator for the stream named by `seed` (below 2^64) and integer `tags` (each below 2^53). */
  constructor(seed: bigint, ...tags: number[]) {
    let [s, z] = splitmix64(seed & MASK64);
    for (const t of tags) [s, z] = splitmix64((s ^ z ^ (BigInt(t) * GOLDEN)) & MASK64);
    const [s2, z2] = splitmix64(s ^ z);
    const [, z3] = splitmix64(s2);
    this.a = Number(z2 & 0xffffffffn);
    this.b = Number(z2 >> 32n);
    this.c = Number(z3 & 0xffffffffn);
    this.d = Number(z3 >> 32n);
    if ((this.a | this.b | this.c | this.d) === 0) this.a = 1; // the one state xoshiro never leaves
  }

  /** A uniform 32-bit unsigned integer. */
  nextU32(): number {
    const result = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return result;
  }

  /** A uniform integer in [0, n) for 1 <= n <= 2^32 (bitmask rejection: exact, < 2 draws on average). */
  below(n: number): number {
    if (n <= 1) return 0;
    const bits = 32 - Math.clz32(n - 1);
    if (bits === 32) {
      for (;;) {
        const r = this.nextU32();
        if (r < n) return r;
      }
    }
    const mask = (1 << bits) - 1;
    for (;;) {
      const r = this.nextU32() & mask;
      if (r < n) return r;
    }
  }

  /** Shuffles `a[0..n)` in place (Fisher-Yates from the front). */
  shuffle(a: Uint32Array, n: number = a.length): void {
    for (let i = 0; i < n - 1; i++) {
      const j = i + this.below(n - i);
      const t = a[i]!;
      a[i] = a[j]!;
      a[j] = t;
    }
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
