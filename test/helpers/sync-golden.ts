/**
 * Cases whose results were saved from the synchronous implementations of svcca, rsa, cka, the
 * permutation tests, averageRanks and CooccurrenceAccumulator.result() (before they returned
 * Promises, commit da8bb2f) in test/fixtures/sync-golden.json, by test/fixtures/generate-sync-golden.ts:
 * the sliced asynchronous versions must give the same bits. Inputs come from seeded generators,
 * with odd sizes; the large cases are the ones test/event-loop-slices.test.ts times (big enough
 * that the synchronous code held the thread for most of a second, so the slicing is exercised).
 *
 * A case's digest: float64 values as the hex of their bits (NaN included), arrays of more than 32
 * values as their length and the SHA-256 of their bytes.
 */
import { createHash } from 'node:crypto';

import { CooccurrenceAccumulator, type CooccurrenceResult } from '../../lib/eval/cooccurrence.js';
import { averageRanks, cka, permutationTest, rsa, rsaPermutationTest, svcca, svccaPermutationTest, type PermutationResult, type SvccaResult } from '../../lib/features/similarity.js';
import { lcg } from './reference.js';

/** A serialisable, bit-exact summary of a result. */
export type Digest = string | number | Digest[] | { [key: string]: Digest };

/** The hex of a float64's bits. */
export function f64(x: number): string {
  return Buffer.from(Float64Array.of(x).buffer).toString('hex');
}

/** A float64 array: its values' bits, or its length and SHA-256 when longer than 32. */
export function f64s(x: Float64Array): Digest {
  if (x.length <= 32) return Array.from(x, f64);
  return `${x.length}:${createHash('sha256').update(new Uint8Array(x.buffer, x.byteOffset, x.byteLength)).digest('hex')}`;
}

function svccaDigest(r: SvccaResult): Digest {
  return { score: f64(r.score), correlations: f64s(r.correlations), keptA: r.keptA, keptB: r.keptB, mode: r.mode };
}

function permDigest(r: PermutationResult & { keptA?: number; keptB?: number }): Digest {
  const out: Record<string, Digest> = { score: f64(r.score), shuffled: f64s(r.shuffled), pValue: f64(r.pValue) };
  if (r.keptA !== undefined) out.kept = [r.keptA, r.keptB!];
  return out;
}

function coocDigest(r: CooccurrenceResult): Digest {
  const top = r.top.map((p) => `${p.i},${p.j},${p.count},${f64(p.phi)}`);
  return {
    chunks: r.chunks,
    active: f64s(r.active),
    top: top.length <= 32 ? top : `${top.length}:${createHash('sha256').update(top.join(';')).digest('hex')}`,
    ...(r.phi ? { phi: f64s(r.phi) } : {}),
  };
}

/** Uniform in [-1, 1), row-major [rows, cols]. */
function random(rows: number, cols: number, next: () => number): Float64Array {
  return Float64Array.from({ length: rows * cols }, () => next() * 2 - 1);
}

/** B correlated with A (B's column c follows A's column c mod dA), plus noise. */
function related(A: Float64Array, n: number, dA: number, dB: number, noise: number, next: () => number): Float64Array {
  return Float64Array.from({ length: n * dB }, (_, q) => A[Math.floor(q / dB) * dA + ((q % dB) % dA)]! + noise * (next() - 0.5));
}

/** Sum over rows of A[r, 0] B[r, 0]: a score that changes with the pairing of rows. */
function pairScore(n: number, dA: number, dB: number) {
  return (a: Float64Array, b: Float64Array): number => {
    let s = 0;
    for (let r = 0; r < n; r++) s += a[r * dA]! * b[r * dB]!;
    return s;
  };
}

/** A Fisher-Yates permutation of 0 .. m - 1 from `next`. */
function permutation(m: number, next: () => number): Int32Array {
  const p = Int32Array.from({ length: m }, (_, i) => i);
  for (let i = m - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [p[i], p[j]] = [p[j]!, p[i]!];
  }
  return p;
}

/** A case: prepare() builds the inputs (not timed) and returns the call, which resolves to its digest. */
export interface GoldenCase {
  name: string;
  prepare(): () => Promise<Digest>;
}

/** Small cases, odd sizes: every option of each function. */
export const smallCases: GoldenCase[] = [
  ...([
    [37, 5, 3, {}],
    [101, 7, 11, {}],
    [53, 6, 7, { keep: 4 }],
    [53, 6, 7, { compat: 'univ-feat-geom' as const }],
    [29, 1, 1, {}],
  ] as const).map(([n, dA, dB, extra], q): GoldenCase => ({
    name: `svcca n=${n} dA=${dA} dB=${dB} ${JSON.stringify(extra)}`,
    prepare() {
      const next = lcg(1000 + q);
      const A = random(n, dA, next);
      const B = Float32Array.from(related(A, n, dA, dB, 0.9, next));
      return async () => svccaDigest(await svcca(A, B, { n, dA, dB, ...extra }));
    },
  })),
  {
    name: 'svccaPermutationTest n=41 dA=4 dB=5 runs=7',
    prepare() {
      const next = lcg(1010);
      const A = random(41, 4, next);
      const B = related(A, 41, 4, 5, 1.3, next);
      return async () => permDigest(await svccaPermutationTest(A, B, { n: 41, dA: 4, dB: 5, runs: 7, seed: 3 }));
    },
  },
  ...(['correlation', 'cosine', 'euclidean'] as const).flatMap((inner) =>
    (['spearman', 'pearson'] as const).map((outer): GoldenCase => ({
      name: `rsa n=23 dA=5 dB=3 ${inner} ${outer}`,
      prepare() {
        const next = lcg(1020);
        const A = random(23, 5, next);
        const B = Float32Array.from(related(A, 23, 5, 3, 0.8, next).map((v) => Math.round(v * 4) / 4)); // ties
        return async () => ({ score: f64((await rsa(A, B, { n: 23, dA: 5, dB: 3, inner, outer })).score) });
      },
    })),
  ),
  ...([
    ['correlation', 'spearman'],
    ['euclidean', 'pearson'],
  ] as const).map(([inner, outer]): GoldenCase => ({
    name: `rsaPermutationTest n=29 dA=4 dB=3 ${inner} ${outer} runs=9`,
    prepare() {
      const next = lcg(1030);
      const A = random(29, 4, next);
      const B = related(A, 29, 4, 3, 1.1, next);
      return async () => permDigest(await rsaPermutationTest(A, B, { n: 29, dA: 4, dB: 3, inner, outer, runs: 9, seed: 5 }));
    },
  })),
  ...([
    [31, 5, 7], // through the features
    [9, 13, 11], // through the n x n Gram matrices
  ] as const).map(([n, dA, dB]): GoldenCase => ({
    name: `cka n=${n} dA=${dA} dB=${dB}`,
    prepare() {
      const next = lcg(1040 + n);
      const A = random(n, dA, next);
      const B = Float32Array.from(related(A, n, dA, dB, 1.5, next));
      return async () => ({ score: f64((await cka(A, B, { n, dA, dB })).score) });
    },
  })),
  {
    name: 'permutationTest n=13 dA=2 dB=3 runs=17',
    prepare() {
      const next = lcg(1050);
      const A = random(13, 2, next);
      const B = random(13, 3, next);
      return async () => permDigest(await permutationTest(pairScore(13, 2, 3), A, B, { n: 13, dB: 3, runs: 17, seed: 11 }));
    },
  },
  {
    name: 'permutationTest of svcca n=43 dA=3 dB=4 runs=5',
    prepare() {
      const next = lcg(1051);
      const A = random(43, 3, next);
      const B = related(A, 43, 3, 4, 1, next);
      // A number from the synchronous svcca (where the fixture was made), a Promise from the asynchronous one.
      const score = (a: Float64Array, b: Float64Array) => {
        const r = svcca(a, b, { n: 43, dA: 3, dB: 4 }) as SvccaResult | Promise<SvccaResult>;
        return r instanceof Promise ? r.then((x) => x.score) : r.score;
      };
      return async () => permDigest(await permutationTest(score, A, B, { n: 43, dB: 4, runs: 5, seed: 2 }));
    },
  },
  {
    name: 'averageRanks m=1003',
    prepare() {
      const next = lcg(1060);
      const x = Float64Array.from({ length: 1003 }, () => (next() < 0.5 ? Math.round((next() - 0.5) * 40) / 4 : (next() - 0.5) * 10 ** Math.floor(next() * 12 - 6)));
      return async () => ({ ranks: f64s(await averageRanks(x)) });
    },
  },
  {
    name: 'averageRanks m=20011, tie groups across its blocks, one of most entries',
    prepare() {
      const next = lcg(1061);
      const x = Float64Array.from({ length: 20011 }, () => (next() < 0.6 ? 0.5 : next() < 0.5 ? -0 : Math.floor(next() * 7) / 3 - 1));
      return async () => ({ ranks: f64s(await averageRanks(x)) });
    },
  },
  {
    name: 'rsa n=203 dA=2 dB=3 (2-wide rows: every correlation dissimilarity is 0 or 2)',
    prepare() {
      const next = lcg(1062);
      const A = random(203, 2, next);
      const B = related(A, 203, 2, 3, 1, next);
      return async () => ({ score: f64((await rsa(A, B, { n: 203, dA: 2, dB: 3 })).score) });
    },
  },
  ...([
    [997, 2003, 7, 9, false, 20000, false], // a top list of thousands: many equal phi
    [4099, 401, 6, 13, false, 37, false],
    [301, 203, 5, 7, true, 1000, true], // dense, partial chunk dropped
    [301, 203, 5, 7, false, 0, true], // dense, open partial chunk counted, no top pairs
  ] as const).map(([numLatents, rows, k, chunkTokens, dropPartial, top, dense], q): GoldenCase => ({
    name: `CooccurrenceAccumulator.result numLatents=${numLatents} rows=${rows} k=${k} chunk=${chunkTokens} dropPartial=${dropPartial} top=${top} dense=${dense}`,
    prepare() {
      const next = lcg(1070 + q);
      const acc = new CooccurrenceAccumulator(numLatents, { chunkTokens, threshold: 0.25, dropPartial });
      const values = Float32Array.from({ length: rows * k }, () => next());
      const indices = Int32Array.from({ length: rows * k }, () => Math.floor(next() ** 2 * numLatents));
      acc.add({ rows, k, values, indices });
      return async () => coocDigest(await acc.result({ top, dense }));
    },
  })),
];

/**
 * Large cases: the synchronous code held the thread for about syncMs in one piece (the median of
 * 8 runs on the 2-core development machine, shared with other work; the range beside it);
 * test/event-loop-slices.test.ts times them sliced.
 */
export const largeCases: Record<string, GoldenCase & { syncMs: number }> = {
  svcca: {
    name: 'svcca n=2001 dA=63 dB=57',
    syncMs: 580, // 481-718 ms in 8 runs
    prepare() {
      const next = lcg(2001);
      const A = random(2001, 63, next);
      const B = related(A, 2001, 63, 57, 2, next);
      return async () => svccaDigest(await svcca(A, B, { n: 2001, dA: 63, dB: 57 }));
    },
  },
  svccaPermutationTest: {
    name: 'svccaPermutationTest n=2001 dA=63 dB=57 runs=9',
    syncMs: 920, // 831-1075 ms in 8 runs
    prepare() {
      const next = lcg(2002);
      const A = random(2001, 63, next);
      const B = related(A, 2001, 63, 57, 2, next);
      return async () => permDigest(await svccaPermutationTest(A, B, { n: 2001, dA: 63, dB: 57, runs: 9, seed: 1 }));
    },
  },
  rsa: {
    name: 'rsa n=1501 dA=33 dB=29',
    syncMs: 580, // 556-743 ms in 8 runs
    prepare() {
      const next = lcg(2003);
      const A = random(1501, 33, next);
      const B = related(A, 1501, 33, 29, 2, next);
      return async () => ({ score: f64((await rsa(A, B, { n: 1501, dA: 33, dB: 29 })).score) });
    },
  },
  rsaPermutationTest: {
    name: 'rsaPermutationTest n=1201 dA=33 dB=29 runs=9',
    syncMs: 540, // 489-615 ms in 8 runs
    prepare() {
      const next = lcg(2004);
      const A = random(1201, 33, next);
      const B = related(A, 1201, 33, 29, 2, next);
      return async () => permDigest(await rsaPermutationTest(A, B, { n: 1201, dA: 33, dB: 29, runs: 9, seed: 4 }));
    },
  },
  ckaFeatures: {
    name: 'cka n=4001 dA=201 dB=179 (through the features)',
    syncMs: 820, // 724-898 ms in 8 runs
    prepare() {
      const next = lcg(2005);
      const A = random(4001, 201, next);
      const B = related(A, 4001, 201, 179, 2, next);
      return async () => ({ score: f64((await cka(A, B, { n: 4001, dA: 201, dB: 179 })).score) });
    },
  },
  ckaGram: {
    name: 'cka n=301 dA=1201 dB=1099 (through the Gram matrices)',
    syncMs: 900, // 841-964 ms in 8 runs
    prepare() {
      const next = lcg(2006);
      const A = random(301, 1201, next);
      const B = related(A, 301, 1201, 1099, 2, next);
      return async () => ({ score: f64((await cka(A, B, { n: 301, dA: 1201, dB: 1099 })).score) });
    },
  },
  permutationTest: {
    name: 'permutationTest n=20001 dA=2 dB=3 runs=201 (a synchronous score)',
    syncMs: 500, // 364-644 ms in 8 runs
    prepare() {
      const next = lcg(2007);
      const A = random(20001, 2, next);
      const B = random(20001, 3, next);
      return async () => permDigest(await permutationTest(pairScore(20001, 2, 3), A, B, { n: 20001, dB: 3, runs: 201, seed: 9 }));
    },
  },
  cooccurrence: {
    name: 'CooccurrenceAccumulator.result numLatents=16384, every latent active',
    syncMs: 1060, // 938-1206 ms in 8 runs
    prepare() {
      // Every latent active (in a chunk of its own), and 64 chunks of 16 codes for pairs: the
      // scan visits all n(n - 1)/2 pairs while the adds stay cheap.
      const L = 16384;
      const next = lcg(2008);
      const acc = new CooccurrenceAccumulator(L, { chunkTokens: 1 });
      acc.add({ rows: L, k: 1, values: new Float32Array(L).fill(1), indices: permutation(L, next) });
      acc.add({ rows: 64, k: 16, values: new Float32Array(1024).fill(1), indices: Int32Array.from({ length: 1024 }, () => Math.floor(next() * L)) });
      return async () => coocDigest(await acc.result({ top: 100 }));
    },
  },
};
