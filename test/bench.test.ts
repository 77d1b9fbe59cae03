import { spawnSync } from 'node:child_process';
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
