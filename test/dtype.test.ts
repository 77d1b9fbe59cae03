import { describe } from 'vitest';

import { dtypeSuite } from './helpers/dtype-suite.js';

describe('dtype conversion (widest SIMD kernels on this CPU)', () => {
  dtypeSuite({ device: 'cpu' });
});
