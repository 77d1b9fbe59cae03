import { execFileSync, spawnSync } from 'node:child_process';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { backend } from '../lib/index.js';
import { packageRoot } from '../lib/native/index.js';

const cli = path.join(packageRoot, 'lib', 'cli', 'main.ts');

function run(args: string[], env: NodeJS.ProcessEnv = {}): { stdout: string; stderr: string; status: number | null } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', cli, ...args], {
    cwd: packageRoot,
    encoding: 'utf8',
    env: { ...process.env, ...env },
  });
  return { stdout: r.stdout, stderr: r.stderr, status: r.status };
}

describe('saekit CLI', () => {
  it('info --json reports what backend.info() reports', () => {
    const r = run(['info', '--json']);
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as ReturnType<typeof backend.info> & { saekit: string };
    const mine = backend.info();
    expect(out.backend).toBe('cpu');
    expect(out.simd).toBe(mine.simd);
    expect(out.blas.name).toBe(mine.blas.name);
    expect(out.saekit).toMatch(/^\d+\.\d+\.\d+/);
    expect(typeof out.cuda.reason).toBe('string');
  });

  it('info prints the backend, SIMD level and BLAS for people', () => {
    const r = run(['info'], { SAEKIT_NUM_THREADS: '1', SAEKIT_BLAS: 'builtin' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^backend\s+cpu$/m);
    expect(r.stdout).toMatch(/^threads\s+1 of \d+/m);
    expect(r.stdout).toMatch(/^simd\s+(avx512|avx2|sse4\.2|scalar)/m);
    expect(r.stdout).toMatch(/^blas\s+builtin .* SAEKIT_BLAS=builtin/m);
    expect(r.stdout).toMatch(/^cuda\s+not available: /m);
  });

  it('an unknown command fails with help on stderr', () => {
    const r = run(['frobnicate']);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/unknown command/);
  });

  it('--version prints the package version', () => {
    const version = execFileSync(process.execPath, ['--import', 'tsx', cli, '--version'], { cwd: packageRoot, encoding: 'utf8' });
    expect(version.trim()).toMatch(/^\d+\.\d+\.\d+/);
  });
});
