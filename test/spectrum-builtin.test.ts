// The built-in eigensolver (and GEMM) through the public 'auto' path: SAEKIT_BLAS=builtin is read
// when the addon loads, which happens lazily on the first call below (each test file runs in its
// own process).
process.env.SAEKIT_BLAS = 'builtin';

import { describe, expect, it } from 'vitest';

import { backend } from '../lib/index.js';
import { spectrumSuite } from './helpers/spectrum-suite.js';

describe('SAEKIT_BLAS=builtin', () => {
  it('selects the built-in GEMM and eigensolver', () => {
    const { blas } = backend.info();
    expect(blas.name).toBe('builtin');
    expect(blas.eigen).toBe('builtin');
  });
});
spectrumSuite('auto');
