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

describe('bench harness helpers', () => {
  it('timeInterleaved rotates the order round by round and roundRatio is the median of per-round ratios', async () => {
    const { roundRatio, timeInterleaved } = await import('../bench/harness.js');
    const calls: string[] = [];
    const t = await timeInterleaved({ a: () => calls.push('a'), b: () => calls.push('b'), c: () => calls.push('c') }, { repeats: 3, warmup: 1 });
    expect(calls.join('')).toBe('abcbcacababc');
    expect([t.a.rounds.length, t.b.repeats]).toEqual([3, 3]);
    expect(roundRatio({ rounds: [2, 9, 4] }, { rounds: [1, 3, 1] })).toBe(3);
    expect(() => roundRatio({ rounds: [1] }, { rounds: [1, 2] })).toThrow(/1 and 2 rounds/);
  });

  it("torch-cpu runs the reference with the OPENBLAS_CORETYPE of the CPU's SIMD level only where saekit found OpenBLAS on SSE kernels, keeping a user's", async () => {
    const { referenceCoretype } = await import('../bench/torch-cpu.js');
    const sse = 'OpenBLAS chose its Prescott (SSE) kernels on this avx512 CPU (a CPU model it does not know); ...';
    const info = (simd: string, reason: string) => ({ simd, blas: { reason } }) as unknown as Parameters<typeof referenceCoretype>[0];
    expect(referenceCoretype(info('avx512', sse), {})).toBe('SkylakeX');
    expect(referenceCoretype(info('avx2', sse), {})).toBe('Haswell');
    expect(referenceCoretype(info('sse42', sse), {})).toBeUndefined();
    expect(referenceCoretype(info('avx512', ''), {})).toBeUndefined();
    expect(referenceCoretype(info('avx512', sse), { OPENBLAS_CORETYPE: 'Zen' })).toBe('Zen');
  });
});

describe('npm run bench -- torch-cpu (saekit against the PyTorch reference step on the same CPU)', () => {
  it.skipIf(!python)('times saekit and both reference variants per shape, and its ratio is the reference time over saekit\'s', () => {
    const r = bench(['torch-cpu', '--quick', '--repeats', '2', '--warmup', '1']);
    expect(r.status, r.stderr).toBe(0);
    const file = /saved (.*\.json)/.exec(r.stderr)![1]!;
    const saved = JSON.parse(readFileSync(file, 'utf8')) as {
      rows: Record<string, number | string>[];
      meta: { threads: number; shapes: { saekitSeconds: number[]; torch: Record<string, string>[]; saekitOverBestTorch: number }[] };
    };
    rmSync(file);
    expect(saved.rows.map((row) => row.impl)).toEqual(['saekit', 'torch', 'torch-dense']);
    const [ours, sparse, dense] = saved.rows as Record<string, number>[];
    expect(ours!['time / saekit']).toBe(1);
    for (const ref of [sparse!, dense!]) expect(ref['time / saekit']).toBeCloseTo(ref['step ms']! / ours!['step ms']!, 6);
    // Each side's step over its own encoder-shaped GEMM, timed in the same run.
    for (const row of [ours!, sparse!, dense!]) {
      expect(row['gemm ms']).toBeGreaterThan(0);
      expect(row['step / gemm']).toBeCloseTo(row['step ms']! / row['gemm ms']!, 6);
    }
    const shape = saved.meta.shapes[0]!;
    // saekit's median over the steps timed before and after the reference ran (2 + 2).
    expect(shape.saekitSeconds).toHaveLength(4);
    const sorted = [...shape.saekitSeconds].sort((a, b) => a - b);
    expect(ours!['step ms']).toBeCloseTo(((sorted[1]! + sorted[2]!) / 2) * 1e3, 6);
    expect(shape.saekitOverBestTorch).toBeCloseTo(Math.min(sparse!['step ms']!, dense!['step ms']!) / ours!['step ms']!, 6);
    // The reference ran on the CPU with saekit's thread count, one line a variant.
    expect(shape.torch.map((l) => [l.impl, l.device, Number(l.threads)])).toEqual([
      ['torch', 'cpu', saved.meta.threads],
      ['torch-dense', 'cpu', saved.meta.threads],
    ]);
    // torch's TopK is timed on the matrix saekit's step selects from, its GEMM into a preallocated
    // output without a bias (as saekit's), with F.linear as the step calls it beside it.
    for (const [i, l] of shape.torch.entries()) {
      expect(Number(l.topk_same_ms)).toBeGreaterThan(0);
      expect(Number(l.linear_ms)).toBeGreaterThan(0);
      expect([saved.rows[i + 1]!['topk ms'], saved.rows[i + 1]!['gemm ms']]).toEqual([Number(l.topk_same_ms), Number(l.gemm_ms)]);
    }
  }, 180_000);

  it('without a python that imports torch it says why and exits 0, timing nothing', () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', runTs, 'torch-cpu', '--quick'], {
      cwd: packageRoot,
      encoding: 'utf8',
      timeout: 60_000,
      env: { ...process.env, SAEKIT_PYTHON: '/nonexistent/python3' },
    });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain('torch-cpu: skipped: no python with torch (/nonexistent/python3: ');
    expect(r.stdout).toMatch(/skipped/);
    const file = /saved (.*\.json)/.exec(r.stderr)![1]!;
    rmSync(file);
  });

  it.skipIf(!python)("the reference's --shapes refuses a malformed group, naming it", () => {
    const r = spawnSync(python!, [path.join(packageRoot, 'bench', 'gpu', 'torch_step.py'), '--cpu', '--shapes', '256,4096,32'], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("--shapes wants 'dIn,numLatents,k,batch' groups joined by ';', but received '256,4096,32'");
  });
});
