import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { backend, io, metrics, openActivations, SparseAutoencoder } from '../lib/index.js';
import { lcg } from './helpers/reference.js';
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

  it('train on a small .npy writes an SAE that SparseAutoencoder.load reads back', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-'));
    const next = lcg(5);
    const [rows, dIn] = [3000, 19];
    await io.writeNpy(path.join(dir, 'acts.npy'), { dtype: 'float32', shape: [rows, dIn], data: Float32Array.from({ length: rows * dIn }, () => next() - 0.5) });
    const out = path.join(dir, 'run');
    const r = run(['train', path.join(dir, 'acts.npy'), '--latents', '57', '--k', '3', '--out', out, '--batch', '256', '--epochs', '2', '--warmup', '5', '--json', '--log', path.join(dir, 'log.jsonl')]);
    expect(r.status, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout);
    expect(summary).toMatchObject({ status: 'completed', steps: 22, tokens: 22 * 256 });
    expect(summary.fvu).toBeLessThan(1);
    using sae = await SparseAutoencoder.load(out);
    expect([sae.dIn, sae.numLatents, sae.k]).toEqual([dIn, 57, 3]);
    expect(readFileSync(path.join(dir, 'log.jsonl'), 'utf8').trim().split('\n')).toHaveLength(22);
    // eval --json reports what metrics.evaluate reports, with SAEBench-style snake_case names.
    const ev = run(['eval', out, path.join(dir, 'acts.npy'), '--max-tokens', '2000', '--json', '--compat']);
    expect(ev.status, ev.stderr).toBe(0);
    const got = JSON.parse(ev.stdout);
    const want = await metrics.evaluate(sae, await openActivations(path.join(dir, 'acts.npy')), { maxTokens: 2000, compat: true });
    for (const key of ['tokens', 'mse', 'fvu', 'explained_variance', 'l0', 'l1', 'dead_fraction', 'cossim', 'mean_max_cos_dec']) {
      expect(got[key], key).toBeCloseTo((want as unknown as Record<string, number>)[key]!, 6);
    }
    expect(got.compat.explained_variance_legacy).toBeCloseTo(want.compat!.explained_variance_legacy, 6);
    const bad = run(['train', path.join(dir, 'acts.npy'), '--k', '3', '--out', out]);
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toMatch(/exactly one of --latents N and --expansion E/);
    const bad2 = run(['train', path.join(dir, 'acts.npy'), '--latents', 'x', '--out', out]);
    expect(bad2.stderr).toMatch(/Expected an integer between 1 and \d+ for --latents but received 'x'/);
  });

  it('Ctrl-C stops after the current step, saves a loadable SAE and a checkpoint; --resume finishes the run', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-'));
    const next = lcg(6);
    const [rows, dIn] = [20000, 64];
    await io.writeNpy(path.join(dir, 'acts.npy'), { dtype: 'float32', shape: [rows, dIn], data: Float32Array.from({ length: rows * dIn }, () => next() - 0.5) });
    const out = path.join(dir, 'run');
    const args = ['--import', 'tsx', cli, 'train', path.join(dir, 'acts.npy'), '--latents', '2048', '--k', '16', '--out', out, '--batch', '256', '--epochs', '20', '--json'];
    const child = spawn(process.execPath, args, { cwd: packageRoot, env: { ...process.env, SAEKIT_NUM_THREADS: '1' } });
    let stderr = '';
    let stdout = '';
    let sent = false;
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (stderr.includes('training a TopK SAE') && !sent) {
        sent = true;
        setTimeout(() => child.kill('SIGINT'), 400);
      }
    });
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    expect(code, stderr).toBe(130);
    expect(stderr).toMatch(/stopping after the current step/);
    const summary = JSON.parse(stdout);
    expect(summary.status).toBe('aborted');
    expect(summary.steps).toBeLessThan(1560);
    using sae = await SparseAutoencoder.load(out);
    expect(sae.numLatents).toBe(2048);
    const ck = JSON.parse(readFileSync(path.join(out, 'checkpoint', 'checkpoint.json'), 'utf8'));
    expect(ck.step).toBe(summary.steps);
    const resumed = run(['train', path.join(dir, 'acts.npy'), '--latents', '2048', '--k', '16', '--out', out, '--batch', '256', '--epochs', '20', '--json', '--resume']);
    expect(resumed.status, resumed.stderr).toBe(0);
    expect(JSON.parse(resumed.stdout)).toMatchObject({ status: 'completed', steps: 1560 });
  }, 120_000);

  it('demo recovers the planted features (MMCS truth-to-learned >= 0.9) within the time budget', () => {
    const t0 = performance.now();
    const r = run(['demo', '--json']);
    expect(r.status, r.stderr).toBe(0);
    const res = JSON.parse(r.stdout);
    expect(res.mmcsTruthToLearned).toBeGreaterThanOrEqual(0.9);
    expect(res.mcc).toBeGreaterThan(0.9);
    expect(res.deadFraction).toBeLessThan(0.5);
    expect((performance.now() - t0) / 1e3).toBeLessThan(60);
  }, 90_000);

  it('compare finds a permuted copy (correlation 1, all pairs kept) and match-layers recovers the permutation', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-'));
    const next = lcg(8);
    const [dIn, L, k, rows] = [6, 20, 3, 2000];
    await io.writeNpy(path.join(dir, 'acts.npy'), { dtype: 'float32', shape: [rows, dIn], data: Float32Array.from({ length: rows * dIn }, () => next() - 0.5) });
    using a = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 3 });
    const w = await a.weights();
    const perm = Array.from({ length: L }, (_, i) => i).sort(() => next() - 0.5); // B's latent j is A's perm[j]
    using b = SparseAutoencoder.fromWeights(
      {
        W_enc: Float32Array.from({ length: dIn * L }, (_, q) => w.W_enc[Math.floor(q / L) * L + perm[q % L]!]!),
        b_enc: Float32Array.from({ length: L }, (_, j) => w.b_enc[perm[j]!]!),
        W_dec: Float32Array.from({ length: L * dIn }, (_, q) => w.W_dec[perm[Math.floor(q / dIn)]! * dIn + (q % dIn)]!),
        b_dec: w.b_dec,
      },
      { k },
    );
    await a.save(path.join(dir, 'a'));
    await b.save(path.join(dir, 'b'));
    const r = run(['compare', path.join(dir, 'a'), path.join(dir, 'b'), '--data', path.join(dir, 'acts.npy'), '--json', '--runs', '5', '--out', path.join(dir, 'pairs.json')]);
    expect(r.status, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout);
    const fired = JSON.parse(readFileSync(path.join(dir, 'pairs.json'), 'utf8')).pairs as { a: number; b: number; score: number }[];
    expect(s.mean_pair_correlation).toBeGreaterThan(0.999);
    for (const p of fired) expect(p.a).toBe(perm[p.b]);
    expect(s.pairs_kept).toBeGreaterThan(L / 2);
    expect(s.rsa.score).toBeGreaterThan(0.999);
    // With a matrix over --max-bytes, argmax and mutual work from top matches: the same pairs.
    for (const method of ['argmax', 'mutual']) {
      const t = run(['compare', path.join(dir, 'a'), path.join(dir, 'b'), '--data', path.join(dir, 'acts.npy'), '--json', '--runs', '2', '--method', method, '--max-bytes', '64', '--out', path.join(dir, `top-${method}.json`)]);
      expect(t.status, t.stderr).toBe(0);
      expect(t.stderr).toMatch(/top \d+ matches per feature/);
      const tp = JSON.parse(readFileSync(path.join(dir, `top-${method}.json`), 'utf8')).pairs as { a: number; b: number }[];
      expect(tp.length).toBeGreaterThan(L / 2);
      for (const p of tp) expect(p.a).toBe(perm[p.b]);
    }
    const h = run(['compare', path.join(dir, 'a'), path.join(dir, 'b'), '--data', path.join(dir, 'acts.npy'), '--max-bytes', '64']);
    expect(h.status).not.toBe(0);
    expect(h.stderr).toMatch(/ERR_SAEKIT_MEMORY|maxBytes|max-bytes/);
    const m = run(['match-layers', path.join(dir, 'a'), path.join(dir, 'b'), '--out', path.join(dir, 'perm.json')]);
    expect(m.status, m.stderr).toBe(0);
    const steps = JSON.parse(readFileSync(path.join(dir, 'perm.json'), 'utf8'));
    // For each latent of A, its match in B: B's j holds A's perm[j].
    steps[0].permutation.forEach((j: number, i: number) => expect(perm[j]).toBe(i));
    expect(steps[0].mean_mse).toBeLessThan(1e-10);
  }, 60_000);
});
