// The built-in GEMM must pass the same tests as OpenBLAS. The switch is read when the addon
// loads, which happens lazily on the first call below (each test file runs in its own process).
process.env.SAEKIT_BLAS = 'builtin';

import { describe, expect, it } from 'vitest';

import { backend, ops, tensor } from '../lib/index.js';
import { native } from '../lib/native/index.js';
import { matmulSuite } from './helpers/matmul-suite.js';
import { lcg, randomMatrix, referenceMatmul } from './helpers/reference.js';

describe('ops.matmul (built-in GEMM, SAEKIT_BLAS=builtin)', () => {
  it('runs the built-in GEMM', () => {
    const { blas } = backend.info();
    expect(blas.name).toBe('builtin');
    expect(['avx512', 'avx2', 'sse4.2']).toContain(blas.version);
  });
  matmulSuite(2, { device: 'cpu' });

  it('computes every entry the same way whatever the shape: a block of rows and columns gives the full product\'s bits', async () => {
    // The README promises it (OpenBLAS's Haswell / Zen kernels do not keep it): a row's encoding
    // does not depend on how many rows are encoded with it.
    const seed = Date.now() % 100_000;
    const next = lcg(seed);
    for (const [M, K, N] of [[37, 300, 19], [130, 777, 70], [5, 1001, 300], [64, 16, 513]] as const) {
      const a = Float32Array.from({ length: M * K }, () => next() - 0.5);
      const b = Float32Array.from({ length: K * N }, () => next() - 0.5);
      using ta = tensor(a, [M, K]);
      using tb = tensor(b, [K, N]);
      using tf = await ops.matmul(ta, tb);
      const full = (await tf.toArray()) as Float32Array;
      for (const [m0, m1, n0, n1] of [[0, 1, 0, 4], [3, M, 2, N], [1, M - 1, 0, N - 3], [M - 2, M, N - 1, N]]) {
        const [m, n] = [m1 - m0, n1 - n0];
        const sb = new Float32Array(K * n);
        for (let k = 0; k < K; k++) sb.set(b.subarray(k * N + n0, k * N + n1), k * n);
        using sa = tensor(a.slice(m0 * K, m1 * K), [m, K]);
        using tsb = tensor(sb, [K, n]);
        using tp = await ops.matmul(sa, tsb);
        const p = (await tp.toArray()) as Float32Array;
        let differ = 0;
        for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) if (!Object.is(p[i * n + j], full[(m0 + i) * N + n0 + j])) differ++;
        expect(differ, `seed ${seed}, ${M}x${K}x${N}, rows [${m0}, ${m1}), columns [${n0}, ${n1})`).toBe(0);
      }
    }
  });
});

describe('the built-in GEMM at the edges of its register tiles and K blocks, with alpha and beta (_gemmDirect)', () => {
  // The register tile (mr x nr) and K block of each kernel (gemm_kernel_*.cpp).
  const TILES: Record<string, { mr: number; nr: number; kc: number }> = { avx512: { mr: 14, nr: 32, kc: 384 }, avx2: { mr: 6, nr: 16, kc: 256 }, 'sse4.2': { mr: 6, nr: 8, kc: 256 } };
  const gemm = (ta: boolean, tb: boolean, M: number, N: number, K: number, A: Float32Array, B: Float32Array, C: Float32Array, alpha?: number, beta?: number) =>
    native()._gemmDirect('builtin', ta, tb, M, N, K, A, B, C, alpha, beta);
  /** Largest |got - want| / bound over C = alpha op(A) op(B) + beta C0, in float64 (beta 0: C0 not read). */
  const worst = (got: Float32Array, A: Float32Array, B: Float32Array, C0: Float32Array, M: number, N: number, K: number, ta: boolean, tb: boolean, alpha: number, beta: number) => {
    const { C, bound } = referenceMatmul(A, B, M, N, K, ta, tb);
    const u = 2 ** -24;
    let w = 0;
    for (let i = 0; i < M * N; i++) {
      const c0 = beta === 0 ? 0 : beta * C0[i]!;
      const want = alpha * C[i]! + c0;
      // the product's bound scaled by |alpha|, plus the roundings of alpha * sum, beta * C and their sum
      const b = Math.abs(alpha) * bound[i]! + 3 * u * (Math.abs(alpha * C[i]!) + Math.abs(c0)) + 1e-30;
      const r = Math.abs(got[i]! - want) / b;
      if (Number.isNaN(r)) return NaN; // (a later finite ratio must not hide it)
      if (r > w) w = r;
    }
    return w;
  };

  it('matches a float64 product for sizes 1, tile - 1, tile, tile + 1 and 17 / 33 / 65 in each dimension, K across a K block, every transpose pair', () => {
    const { mr, nr, kc } = TILES[backend.info().blas.version]!;
    const next = lcg(0x7e57 + mr);
    const Ms = [1, mr - 1, mr, mr + 1, 17, 33];
    const Ns = [1, nr - 1, nr, nr + 1, 65];
    const Ks = [1, 3, 5, 129, kc + 1];
    for (const [ta, tb] of [[false, false], [true, false], [false, true], [true, true]] as const) {
      for (const M of Ms) {
        for (const N of Ns) {
          for (const K of Ks) {
            if (M * N * K > 400_000) continue;
            const A = randomMatrix(M, K, next); // read as op(A): [K, M] when ta
            const B = randomMatrix(K, N, next);
            const C = new Float32Array(M * N).fill(NaN); // beta = 0: never read, as BLAS defines
            gemm(ta, tb, M, N, K, A, B, C);
            expect(worst(C, A, B, C, M, N, K, ta, tb, 1, 0), `${M}x${N}x${K} transA=${ta} transB=${tb}`).toBeLessThanOrEqual(1);
          }
        }
      }
    }
  });

  it('alpha and beta: C = alpha op(A) op(B) + beta C for K below and above a K block; beta 0 ignores NaN in C; alpha 0 reads neither A nor B', () => {
    const { kc } = TILES[backend.info().blas.version]!;
    const next = lcg(0xa1fa);
    for (const [M, N, K] of [[17, 33, 65], [5, 7, kc + 3]] as const) {
      for (const [ta, tb] of [[false, false], [true, true], [true, false], [false, true]] as const) {
        const A = randomMatrix(M, K, next);
        const B = randomMatrix(K, N, next);
        for (const [alpha, beta] of [[-1.5, 0.75], [0.25, 1], [2, -3], [1, 0]] as const) {
          const C0 = randomMatrix(M, N, next);
          const C = C0.slice();
          gemm(ta, tb, M, N, K, A, B, C, alpha, beta);
          expect(worst(C, A, B, C0, M, N, K, ta, tb, alpha, beta), `${M}x${N}x${K} ${ta} ${tb} alpha ${alpha} beta ${beta}`).toBeLessThanOrEqual(1);
        }
        const nan = new Float32Array(M * N).fill(NaN);
        gemm(ta, tb, M, N, K, A, B, nan, -2, 0);
        expect(worst(nan, A, B, nan, M, N, K, ta, tb, -2, 0)).toBeLessThanOrEqual(1);
      }
      // alpha 0: C = beta C exactly, whatever A and B hold (NaN here); with beta 0 as well, zeros over NaN.
      const A = new Float32Array(M * K).fill(NaN);
      const B = new Float32Array(K * N).fill(Infinity);
      for (const beta of [0.5, 1, -2]) {
        const C0 = randomMatrix(M, N, next);
        const C = C0.slice();
        gemm(false, false, M, N, K, A, B, C, 0, beta);
        expect(Array.from(C)).toEqual(Array.from(C0, (c) => Math.fround(beta * c)));
      }
      const C = new Float32Array(M * N).fill(NaN);
      gemm(false, true, M, N, K, A, B, C, 0, 0);
      expect(Array.from(C)).toEqual(new Array(M * N).fill(0));
    }
  });

  it('with 4 to 6 threads C is cut into a grid of rectangles in both directions: every rectangle lands in its place', async () => {
    const before = backend.setThreads(6);
    try {
      const next = lcg(0x6e1d);
      for (const threads of [4, 6]) {
        backend.setThreads(threads);
        // setThreads is applied on the executor thread, in order: once an op queued after it has
        // settled, _gemmDirect sizes its pool from the new count.
        using one = tensor(Float32Array.of(1), [1, 1]);
        using settled = await ops.matmul(one, one);
        expect(settled.shape).toEqual([1, 1]);
        for (const [M, N, K] of [[301, 290, 160], [250, 403, 133]] as const) {
          const A = randomMatrix(M, K, next);
          const B = randomMatrix(K, N, next);
          const C = new Float32Array(M * N).fill(NaN);
          gemm(false, false, M, N, K, A, B, C);
          expect(worst(C, A, B, C, M, N, K, false, false, 1, 0), `${threads} threads, ${M}x${N}x${K}`).toBeLessThanOrEqual(1);
        }
      }
    } finally {
      backend.setThreads(before);
    }
  });

  it('ops.matmul with K = 0 writes zeros into an options.out that holds NaN (beta = 0: C is not read)', async () => {
    using out = tensor(new Float32Array(12).fill(NaN), [3, 4]);
    await ops.matmul(tensor(new Float32Array(0), [3, 0]), tensor(new Float32Array(0), [0, 4]), { out });
    expect(Array.from(await out.toArray())).toEqual(new Array(12).fill(0));
  });
});
