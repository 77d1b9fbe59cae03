import { spawnSync } from 'node:child_process';

import { describe, expect, it } from 'vitest';

import { backend } from '../lib/index.js';
import { packageRoot } from '../lib/native/index.js';
import { matmulSuite } from './helpers/matmul-suite.js';

describe('ops.matmul (default GEMM path)', () => {
  it('reports the GEMM in use', () => {
    const { blas } = backend.info();
    expect(['openblas', 'cblas', 'builtin']).toContain(blas.name);
    if (process.env.SAEKIT_BLAS === 'builtin') expect(blas.name).toBe('builtin');
    if (process.env.SAEKIT_BLAS === 'openblas' && blas.linked) expect(blas.name).toBe('openblas');
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

describe('OpenBLAS on its SSE kernels (a CPU model it does not know)', () => {
  const info = (env: Record<string, string>) => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', "import('./lib/index.ts').then((m) => console.log(JSON.stringify({ blas: m.backend.info().blas, simd: m.backend.info().simd })))"], {
      cwd: packageRoot,
      encoding: 'utf8',
      env: Object.fromEntries(Object.entries({ ...process.env, ...env }).filter(([k]) => k !== 'SAEKIT_BLAS' || 'SAEKIT_BLAS' in env)),
    });
    expect(r.status, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as { blas: ReturnType<typeof backend.info>['blas']; simd: string };
  };
  const { blas } = backend.info();
  it.skipIf(!blas.linked || !blas.config?.includes('DYNAMIC_ARCH'))('gives way to the built-in GEMM on an AVX2 / AVX-512 CPU, saying why; SAEKIT_BLAS=openblas keeps it', () => {
    // OPENBLAS_CORETYPE makes a DYNAMIC_ARCH OpenBLAS take that core's kernels, whatever the CPU.
    const sse = info({ OPENBLAS_CORETYPE: 'Prescott' });
    if (sse.simd === 'avx2' || sse.simd === 'avx512') {
      expect(sse.blas).toMatchObject({ name: 'builtin', linked: true, reason: expect.stringMatching(/^OpenBLAS chose its Prescott \(SSE\) kernels on this avx(2|512) CPU .* set OPENBLAS_CORETYPE \(Haswell, SkylakeX, Zen\) and SAEKIT_BLAS=openblas$/) });
    } else {
      expect(sse.blas.name).toBe('openblas'); // the built-in GEMM would be no faster
    }
    expect(info({ OPENBLAS_CORETYPE: 'Prescott', SAEKIT_BLAS: 'openblas' }).blas).toMatchObject({ name: 'openblas', coretype: 'Prescott' });
    // On a core with AVX2 kernels OpenBLAS stays (where the CPU has AVX2).
    const haswell = info({ OPENBLAS_CORETYPE: 'Haswell' });
    if (haswell.blas.coretype === 'Haswell') expect(haswell.blas.name).toBe('openblas');
    expect(info({ OPENBLAS_CORETYPE: 'Prescott', SAEKIT_BLAS: 'builtin' }).blas).toMatchObject({ name: 'builtin', reason: 'SAEKIT_BLAS=builtin' });
  });
});
