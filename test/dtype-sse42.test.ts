// The same conversion tests on the baseline (SSE4.2, scalar) kernels: SAEKIT_SIMD lowers the
// run-time dispatch, read when the addon first runs an op in this process.
process.env.SAEKIT_SIMD = 'sse42';

import { describe, expect, it } from 'vitest';

import { backend } from '../lib/index.js';
import { dtypeSuite } from './helpers/dtype-suite.js';
import { screenSuite } from './helpers/screen-suite.js';

describe('dtype conversion (SAEKIT_SIMD=sse42)', () => {
  it('runs the baseline kernels', () => {
    expect(backend.info().simd).toBe('sse4.2');
  });
  dtypeSuite({ device: 'cpu' });
  screenSuite();
});
