/**
 * The addon must run on any x86-64 CPU with SSE4.2: on an emulated Nehalem (no AVX, no FMA) it
 * loads, dispatches to the baseline kernels and computes the same results. Needs qemu-user
 * (`apt-get install qemu-user`; .ci/run installs it); skipped where it is missing.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { backend } from '../lib/index.js';
import { packageRoot } from '../lib/native/index.js';

const qemu = spawnSync('qemu-x86_64', ['--version']).status === 0;
const fixture = path.join(packageRoot, 'test', 'fixtures', 'portable-check.mjs');

interface Result {
  simd: string;
  blas: string;
  maxRelErr: number;
  f16: number[];
  bf16: number[];
  randn: number[];
  losses: number[];
  codes: number;
}

function run(env: NodeJS.ProcessEnv, emulate: boolean): Result {
  const cmd = emulate ? 'qemu-x86_64' : process.execPath;
  const args = emulate ? ['-cpu', 'Nehalem', process.execPath, fixture, packageRoot] : [fixture, packageRoot];
  const out = execFileSync(cmd, args, { env: { ...process.env, ...env }, encoding: 'utf8', timeout: 240_000 });
  return JSON.parse(out.trim().split('\n').pop()!);
}

describe.runIf(qemu)('portable binary (emulated SSE4.2-only CPU)', () => {
  for (const blas of ['builtin', 'default'] as const) {
    it(`runs the baseline kernels with ${blas} GEMM and matches the native run`, () => {
      const env = blas === 'builtin' ? { SAEKIT_BLAS: 'builtin' } : {};
      const emulated = run(env, true);
      const here = run(env, false);
      expect(emulated.simd).toBe('sse4.2');
      if (blas === 'builtin' || !backend.info().blas.linked) expect(emulated.blas).toBe('builtin');
      // float32 GEMM error bound relative to sum |a b| (K = 33): K * 2^-24 is ~2e-6.
      expect(emulated.maxRelErr).toBeLessThan(33 * 2 ** -24);
      expect(emulated.f16).toEqual(here.f16);
      expect(emulated.bf16).toEqual(here.bf16);
      expect(emulated.f16.slice(0, 3)).toEqual([0x3e00, 0x7c00, 0x0002]);
      // Philox bits are identical; Box-Muller goes through libm in float64 on both: equal.
      expect(emulated.randn).toEqual(here.randn);
      // The SAE step on the baseline kernels (no FMA) agrees with the native run to rounding.
      emulated.losses.forEach((l, i) => expect(Math.abs(l - here.losses[i]!) / here.losses[i]!).toBeLessThan(1e-4));
      expect(emulated.losses[2]!).toBeLessThan(emulated.losses[0]!);
      expect(emulated.codes).toBe(37 * 3);
    });
  }
});
