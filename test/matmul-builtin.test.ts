// The built-in GEMM must pass the same tests as OpenBLAS. The switch is read when the addon
// loads, which happens lazily on the first call below (each test file runs in its own process).
process.env.SAEKIT_BLAS = 'builtin';

import { describe, expect, it } from 'vitest';

import { backend, ops, tensor } from '../lib/index.js';
import { matmulSuite } from './helpers/matmul-suite.js';
import { lcg } from './helpers/reference.js';

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
