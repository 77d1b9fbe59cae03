import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { packageRoot } from '../lib/native/index.js';

const runTs = path.join(packageRoot, 'bench', 'run.ts');

/** `npm run bench -- ...args` without npm: exit status and output. */
function bench(args: string[]): { stdout: string; stderr: string; status: number | null } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', runTs, ...args], { cwd: packageRoot, encoding: 'utf8', timeout: 60_000 });
  return { stdout: r.stdout, stderr: r.stderr, status: r.status };
}

describe('npm run bench: bad names and flags fail with a message and the usage, exit status 2', () => {
  it('an unknown benchmark', () => {
    const r = bench(['nosuch']);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("unknown benchmark 'nosuch'");
  });

  it.each([
    [['gemm', '--bogus'], "Unknown option '--bogus'"],
    [['gemm', '--repeats'], "'--repeats <value>' argument missing"],
    [['gemm', '--warmup', '-1'], "'--warmup' argument is ambiguous"],
    [['gemm', 'read', '--quick'], 'one benchmark a run, but received 2: gemm read'],
    [['gemm', '--repeats', 'x'], "received --repeats 'x'"],
  ])('%j', (args, message) => {
    const r = bench(args);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain(message);
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
    expect(r.stdout).toBe(''); // nothing was run
  });
});

/** A python3 that imports torch (CI installs Debian's python3-torch), or undefined. */
function pythonWithTorch(): string | undefined {
  for (const p of ['python3', '/usr/bin/python3']) {
    if (spawnSync(p, ['-c', 'import torch'], { encoding: 'utf8', timeout: 60_000 }).status === 0) return p;
  }
  return undefined;
}
const python = pythonWithTorch();

describe('bench/gpu/torch_step.py (the PyTorch reference step)', () => {
  it.skipIf(!python)('--check: its backward passes match autograd, and its decoder backward materialises no [rows, k, dIn] (sparsify\'s does not)', () => {
    const r = spawnSync(python!, [path.join(packageRoot, 'bench', 'gpu', 'torch_step.py'), '--check'], { cwd: packageRoot, encoding: 'utf8', timeout: 120_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('the decoder backward materialises no [rows, k, dIn]');
  }, 150_000);
});

describe('npm run bench -- topk-step', () => {
  it("'step RSS MiB' is the SAE's, its Adam state's and the steps' memory, not the process's peak with the floor GEMM's buffers", () => {
    const r = bench(['topk-step', '--quick', '--repeats', '1', '--warmup', '1']);
    expect(r.status, r.stderr).toBe(0);
    const file = /saved (.*\.json)/.exec(r.stderr)![1]!;
    const rows = (JSON.parse(readFileSync(file, 'utf8')) as { rows: Record<string, number>[] }).rows;
    rmSync(file);
    const { 'step RSS MiB': step, 'params+adam MiB': params } = rows[0]!;
    // d256 M4096 k32 N1024: parameters and Adam 24 MiB; the process itself holds well over 100.
    expect(step).toBeGreaterThan(0.9 * params!);
    expect(step).toBeLessThan(params! + 48);
  }, 120_000);
});
