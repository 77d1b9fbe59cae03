// The built-in GEMM must pass the same tests as OpenBLAS. The switch is read when the addon
// loads, which happens lazily on the first call below (each test file runs in its own process).
process.env.SAEKIT_BLAS = 'builtin';

import { describe, expect, it } from 'vitest';

import { backend } from '../lib/index.js';
import { matmulSuite } from './helpers/matmul-suite.js';

describe('ops.matmul (built-in GEMM, SAEKIT_BLAS=builtin)', () => {
  it('runs the built-in GEMM', () => {
    const { blas } = backend.info();
    expect(blas.name).toBe('builtin');
    expect(['avx512', 'avx2', 'sse4.2']).toContain(blas.version);
  });
  matmulSuite(2, { device: 'cpu' });
});
