import { describe, expect, it } from 'vitest';

import { backend } from '../lib/index.js';
import { matmulSuite } from './helpers/matmul-suite.js';

describe('ops.matmul (default GEMM path)', () => {
  it('reports the GEMM in use', () => {
    const { blas } = backend.info();
    expect(['openblas', 'cblas', 'builtin']).toContain(blas.name);
    if (process.env.SAEKIT_BLAS === 'builtin') expect(blas.name).toBe('builtin');
    // CI rebuilds the addon with SAEKIT_BUILD_BLAS=none to prove the portable fallback.
    if (process.env.SAEKIT_BUILD_BLAS === 'none') {
      expect(blas.linked).toBe(false);
      expect(blas.name).toBe('builtin');
      expect(blas.reason).toMatch(/without a CBLAS library/);
    } else if (process.env.CI) {
      expect(blas.linked, 'CI installs libopenblas-dev, so OpenBLAS must be linked').toBe(true);
    }
  });
  matmulSuite(1, { device: 'cpu' });
});
