/**
 * The matmul test body, shared by the OpenBLAS run, the built-in GEMM run and the device runs
 * (test/device-tensor.test.ts, test/cuda.test.ts): every tensor is made on `device`. The bound
 * of referenceMatmul is a forward error bound of any summation order, so it holds for cuBLAS too.
 */
import { expect, it } from 'vitest';

import { ops, tensor, type DeviceOption } from '../../lib/index.js';
import { lcg, randomMatrix, referenceMatmul } from './reference.js';

const SHAPES: [number, number, number][] = [
  [1, 1, 1],
  [17, 33, 65],
  [257, 129, 513],
  [3, 200, 7],
  [64, 1, 31],
];

export interface MatmulSuiteOptions {
  /** Where every tensor is made (default 'cpu'). */
  device?: DeviceOption;
  /** Only the shapes whose M * N * K is at most this (the CPU emulation of CUDA is slow). */
  maxWork?: number;
}

export function matmulSuite(seedBase: number, options: MatmulSuiteOptions = {}): void {
  const device = options.device ?? 'cpu';
  const on = { device };
  for (const [M, N, K] of SHAPES.filter(([m, n, k]) => m * n * k <= (options.maxWork ?? Infinity))) {
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        it(`matches a float64 reference for ${M}x${N}x${K} transA=${transA} transB=${transB}`, async () => {
          // Fresh inputs each run: seed from the time, reported on failure.
          const seed = (Date.now() ^ (seedBase * 7919) ^ (M * 31 + N * 17 + K)) >>> 0;
          const next = lcg(seed);
          const A = randomMatrix(transA ? K : M, transA ? M : K, next);
          const B = randomMatrix(transB ? N : K, transB ? K : N, next);
          using a = tensor(A, transA ? [K, M] : [M, K], on);
          using b = tensor(B, transB ? [N, K] : [K, N], on);
          using c = await ops.matmul(a, b, { transA, transB });
          expect(c.shape).toEqual([M, N]);
          expect(c.device).toBe(a.device);
          const got = await c.toArray();
          const { C, bound } = referenceMatmul(A, B, M, N, K, transA, transB);
          let worst = 0;
          let worstAt = -1;
          for (let i = 0; i < M * N; i++) {
            const ratio = Math.abs(got[i]! - C[i]!) / bound[i]!;
            // A NaN ratio stays the worst: a later finite one must not replace it.
            if (!(ratio <= worst) && !Number.isNaN(worst)) {
              worst = ratio;
              worstAt = i;
            }
          }
          expect(worst, `seed ${seed}: entry ${worstAt} got ${got[worstAt]} want ${C[worstAt]} (bound ${bound[worstAt]})`).toBeLessThanOrEqual(1);
        });
      }
    }
  }

  it('a wrong product is caught by the same check (the tolerance is not vacuous)', async () => {
    const next = lcg(seedBase + 99);
    const [M, N, K] = [17, 33, 65];
    const A = randomMatrix(M, K, next);
    const B = randomMatrix(K, N, next);
    using c = await ops.matmul(tensor(A, [M, K], on), tensor(B, [K, N], on));
    const got = await c.toArray();
    const { C, bound } = referenceMatmul(A, B, M, N, K, false, false);
    // Perturb one product term's worth: relative 1e-4 of one entry is far outside the bound.
    got[5] = got[5]! + Math.max(1e-4 * Math.abs(C[5]!), 1e3 * bound[5]!);
    const worst = Math.max(...Array.from(got, (g, i) => Math.abs(g - C[i]!) / bound[i]!));
    expect(worst).toBeGreaterThan(1);
  });

  it('writes into options.out: same values as a new result, and checks its shape and aliasing', async () => {
    const next = lcg(seedBase + 7);
    const [M, N, K] = [19, 23, 41];
    using a = tensor(randomMatrix(M, K, next), [M, K], on);
    using b = tensor(randomMatrix(N, K, next), [N, K], on);
    using fresh = await ops.matmul(a, b, { transB: true });
    using out = tensor(new Float32Array(M * N).fill(NaN), [M, N], on);
    const r = await ops.matmul(a, b, { transB: true, out });
    expect(r).toBe(out);
    expect(Array.from(await out.toArray())).toEqual(Array.from(await fresh.toArray()));
    using wrong = tensor(new Float32Array(N * M), [N, M], on);
    await expect(ops.matmul(a, b, { transB: true, out: wrong })).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE' });
    using sq = tensor(randomMatrix(M, M, next), [M, M], on);
    await expect(ops.matmul(sq, sq, { out: sq })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG' });
  });

  it('handles an empty inner dimension (K = 0) as a zero matrix', async () => {
    using c = await ops.matmul(tensor(new Float32Array(0), [3, 0], on), tensor(new Float32Array(0), [0, 4], on));
    expect(Array.from(await c.toArray())).toEqual(new Array(12).fill(0));
  });

  it('handles empty outer dimensions', async () => {
    using c = await ops.matmul(tensor(new Float32Array(0), [0, 5], on), tensor(new Float32Array(20), [5, 4], on));
    expect(c.shape).toEqual([0, 4]);
    expect((await c.toArray()).length).toBe(0);
  });
}
