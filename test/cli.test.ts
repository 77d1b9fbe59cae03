import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

import { describe, expect, it, vi } from 'vitest';

import { checkOutFile, compare, DEFAULT_MAX_PAIRS, matchLayers, type CompareFlags, type OutInput } from '../lib/cli/compare.js';
import { backend, features, fromArray, io, metrics, openActivations, SparseAutoencoder } from '../lib/index.js';
import { canFlock, holdFlock } from './helpers/flock.js';
import { lcg } from './helpers/reference.js';
import { packageRoot } from '../lib/native/index.js';

const cli = path.join(packageRoot, 'lib', 'cli', 'main.ts');

/** Writes `file`: a float32 .npy of [rows, dIn] uniform in [-0.5, 0.5) drawn from lcg(seed); returns its path. */
async function randomActs(file: string, rows: number, dIn: number, seed: number): Promise<string> {
  const rnd = lcg(seed);
  await io.writeNpy(file, { dtype: 'float32', shape: [rows, dIn], data: Float32Array.from({ length: rows * dIn }, () => rnd() - 0.5) });
  return file;
}

function run(args: string[], env: NodeJS.ProcessEnv = {}, timeout?: number): { stdout: string; stderr: string; status: number | null } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', cli, ...args], {
    cwd: packageRoot,
    encoding: 'utf8',
    env: { ...process.env, ...env },
    ...(timeout ? { timeout } : {}),
  });
  return { stdout: r.stdout, stderr: r.stderr, status: r.status };
}

/**
 * Runs the CLI with `args` (one thread), sends `signal` (SIGINT: Ctrl-C) `delayMs` after its
 * stderr says `ready` (that it is training), and resolves to its exit code and output.
 */
async function interrupted(
  args: string[],
  delayMs: number,
  signal: NodeJS.Signals = 'SIGINT',
  ready = 'training a TopK SAE',
  preload: string[] = [],
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const imports = preload.flatMap((p) => ['--import', p]);
  const child = spawn(process.execPath, ['--import', 'tsx', ...imports, cli, ...args], { cwd: packageRoot, env: { ...process.env, SAEKIT_NUM_THREADS: '1' } });
  let stderr = '';
  let stdout = '';
  let sent = false;
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
    if (stderr.includes(ready) && !sent) {
      sent = true;
      setTimeout(() => child.kill(signal), delayMs);
    }
  });
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  return { code, stdout, stderr };
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
    // A value the native side would ignore is reported, not silently dropped.
    const typo = run(['info'], { SAEKIT_SIMD: 'avx3', SAEKIT_NUM_THREADS: 'two' });
    expect(typo.status, typo.stderr).toBe(0);
    expect(typo.stderr).toMatch(/\[SAEKIT_ENV\] Warning: SAEKIT_NUM_THREADS='two' is ignored: expected an integer between 1 and 1024/);
    expect(typo.stderr).toMatch(/SAEKIT_SIMD='avx3' is ignored: expected one of scalar, sse42, avx2, avx512/);
    // What the warning calls ignored is ignored natively too (strtol took "+1" as 1).
    const plus = run(['info'], { SAEKIT_NUM_THREADS: '+1' });
    expect(plus.stderr).toMatch(/SAEKIT_NUM_THREADS='\+1' is ignored/);
    const [, used, hw] = /^threads\s+(\d+) of (\d+)/m.exec(plus.stdout)!;
    expect(used).toBe(hw);
    // The range's ends agree on both sides: 1024 is taken without a warning, 1025 warned and ignored.
    const top = run(['info'], { SAEKIT_NUM_THREADS: '1024' });
    expect(top.stderr).not.toMatch(/SAEKIT_ENV/);
    expect(top.stdout).toMatch(/^threads\s+1024 of \d+/m);
    const over = run(['info'], { SAEKIT_NUM_THREADS: '1025' });
    expect(over.stderr).toMatch(/SAEKIT_NUM_THREADS='1025' is ignored: expected an integer between 1 and 1024/);
    const [, usedOver, hwOver] = /^threads\s+(\d+) of (\d+)/m.exec(over.stdout)!;
    expect(usedOver).toBe(hwOver);
  });

  it("train --help: the flags that set Trainer options default to the Trainer's documented defaults", () => {
    const r = run(['train', '--help']);
    expect(r.status).toBe(0);
    const help = r.stdout.replace(/\s+/g, ' ');
    const defaultOf = (flag: string): string | undefined => {
      const at = help.indexOf(` ${flag} `);
      const rest = help.slice(at + flag.length + 1);
      return rest.slice(0, rest.search(/ --[a-z]|$/)).match(/\(default: ([^)]+)\)/)?.[1];
    };
    // TrainerOptions: batchSize 4096, warmupSteps 1000, auxkAlpha 1/32, deadThresholdTokens 10,000,000,
    // checkpointEvery 1000 (each "Default ..." in its doc comment).
    expect(defaultOf('--batch')).toBe('4096');
    expect(defaultOf('--warmup')).toBe('1000');
    expect(Number(defaultOf('--auxk-alpha'))).toBe(1 / 32);
    expect(defaultOf('--dead-threshold')).toBe('10000000');
    expect(defaultOf('--checkpoint-every')).toBe('1000');
  });

  it('an unknown command fails with help on stderr', () => {
    const r = run(['frobnicate']);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/unknown command/);
  });

  it('compare --help: hungarian\'s matrix limit is --max-bytes, not a fixed 1 GiB', () => {
    const r = run(['compare', '--help']);
    expect(r.status, r.stderr).toBe(0);
    const help = r.stdout.replace(/\s+/g, ' ');
    expect(help).toMatch(/--method <m> argmax, mutual or hungarian \(hungarian needs the full correlation matrix within --max-bytes, see there;/);
    expect(help).not.toMatch(/at most 1 GiB/);
    expect(help).toMatch(/--max-bytes <n> largest full correlation matrix \(nA x nB x 4 bytes, with --kind preacts nA x nB x 16, default 1 GiB\)/);
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
    const bad3 = run(['train', path.join(dir, 'acts.npy'), '--latents', '57', '--auxk-variant', 'openai', '--out', out]);
    expect(bad3.stderr).toMatch(/Expected one of: sparsify, paper for --auxk-variant but received 'openai'/);
  });

  it('Ctrl-C stops after the current step, saves a loadable SAE and a checkpoint; --resume finishes the run', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-'));
    const next = lcg(6);
    const [rows, dIn] = [20000, 64];
    await io.writeNpy(path.join(dir, 'acts.npy'), { dtype: 'float32', shape: [rows, dIn], data: Float32Array.from({ length: rows * dIn }, () => next() - 0.5) });
    const out = path.join(dir, 'run');
    const { code, stdout, stderr } = await interrupted(['train', path.join(dir, 'acts.npy'), '--latents', '2048', '--k', '16', '--out', out, '--batch', '256', '--epochs', '20', '--json'], 400);
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
    const rs = JSON.parse(resumed.stdout);
    expect(rs).toMatchObject({ status: 'completed', steps: 1560 });
    // Throughput counts this run's tokens, not the checkpoint's too.
    expect(rs.tokensTrained).toBe(rs.tokens - ck.tokens);
    expect(rs.tokensPerSec).toBeCloseTo(rs.tokensTrained / rs.seconds, 6);
  }, 120_000);

  it('SIGTERM (job schedulers, timeout, docker stop) stops train like Ctrl-C: checkpoint and SAE saved, exit 143; demo exits 143', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-'));
    const next = lcg(7);
    const [rows, dIn] = [20000, 64];
    await io.writeNpy(path.join(dir, 'acts.npy'), { dtype: 'float32', shape: [rows, dIn], data: Float32Array.from({ length: rows * dIn }, () => next() - 0.5) });
    const out = path.join(dir, 'run');
    // --checkpoint-every above the run's steps: only the stop writes a checkpoint.
    const { code, stdout, stderr } = await interrupted(['train', path.join(dir, 'acts.npy'), '--latents', '2048', '--k', '16', '--out', out, '--batch', '256', '--epochs', '20', '--checkpoint-every', '100000'], 400, 'SIGTERM');
    expect(code, stderr).toBe(143);
    expect(stderr).toMatch(/SIGTERM received: stopping after the current step/);
    expect(stdout).toMatch(/^stopped early; checkpoint and SAE saved \(resume with --resume\): \d+ steps?, /);
    const steps = Number(/: (\d+) steps?,/.exec(stdout)![1]);
    expect(steps).toBeGreaterThan(0);
    expect(steps).toBeLessThan(1560);
    for (const file of ['cfg.json', 'sae_weights.safetensors']) expect(existsSync(path.join(out, file)), file).toBe(true);
    using sae = await SparseAutoencoder.load(out);
    expect([sae.dIn, sae.numLatents, sae.k]).toEqual([dIn, 2048, 16]);
    expect(JSON.parse(readFileSync(path.join(out, 'checkpoint', 'checkpoint.json'), 'utf8')).step).toBe(steps);
    const demo = await interrupted(['demo', '--json'], 1500, 'SIGTERM');
    expect(demo.code, demo.stderr).toBe(143);
    expect(demo.stderr).toMatch(/interrupted after [\d,]+ of 2,097,152 tokens/);
  }, 120_000);

  it('Ctrl-C during demo exits 130 and says the numbers are of a partly trained SAE', async () => {
    const { code, stderr } = await interrupted(['demo', '--json'], 1500);
    expect(code, stderr).toBe(130);
    expect(stderr).toMatch(/interrupted after [\d,]+ of 2,097,152 tokens/);
  }, 60_000);

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
    expect(s.similarity_pairs).toEqual({ used: s.pairs_kept, of: s.pairs_kept });
    // --max-pairs: SVCCA and RSA on a random subsample of the kept pairs, reported.
    const sub = run(['compare', path.join(dir, 'a'), path.join(dir, 'b'), '--data', path.join(dir, 'acts.npy'), '--json', '--runs', '3', '--max-pairs', '9']);
    expect(sub.status, sub.stderr).toBe(0);
    const ss = JSON.parse(sub.stdout);
    expect(ss.pairs_kept).toBe(s.pairs_kept);
    expect(ss.similarity_pairs).toMatchObject({ used: 9, of: s.pairs_kept });
    expect(ss.rsa.score).toBeGreaterThan(0.999);
    expect(ss.svcca.score).toBeGreaterThan(0.999);
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
    // The assignment reports no progress and holds ~12 bytes per pair: it says what runs (minutes and 12 GiB at 32k latents).
    expect(m.stderr).toMatch(new RegExp(`matching .*a -> .*b: ${L} x ${L} assignment \\(about ${(Math.max(0.1, (12 * L * L) / 2 ** 20)).toFixed(1).replace('.', '\\.')} MiB of memory\\)`));
    // --max-bytes below the assignment's ~12 bytes a pair: refused at once, naming the flag.
    const small = run(['match-layers', path.join(dir, 'a'), path.join(dir, 'b'), '--max-bytes', String(12 * L * L - 1)]);
    expect(small.status).not.toBe(0);
    expect(small.stderr).toMatch(new RegExp(`${L} x ${L} assignment of saeMatch needs about ${12 * L * L} bytes .* over --max-bytes = ${12 * L * L - 1} \\[ERR_SAEKIT_MEMORY\\]`));
    const steps = JSON.parse(readFileSync(path.join(dir, 'perm.json'), 'utf8'));
    // For each latent of A, its match in B: B's j holds A's perm[j].
    steps[0].permutation.forEach((j: number, i: number) => expect(perm[j]).toBe(i));
    expect(steps[0].mean_mse).toBeLessThan(1e-10);
  }, 60_000);

  it("compare --one-to-one keeps one pair per A feature (the lowest-numbered B feature), --compat univ-feat-geom scales r by (N - 1) / N", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-'));
    const next = lcg(30);
    const [dIn, L, k, rows] = [6, 16, 4, 1500];
    await io.writeNpy(path.join(dir, 'acts.npy'), { dtype: 'float32', shape: [rows, dIn], data: Float32Array.from({ length: rows * dIn }, () => next() - 0.5) });
    using a = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 5 });
    const w = await a.weights();
    // B's latent j copies A's latent src[j]: A's latents 0..7 each twice, in a shuffled order.
    const src = Array.from({ length: L }, (_, j) => j % (L / 2)).sort(() => next() - 0.5);
    using b = SparseAutoencoder.fromWeights(
      {
        W_enc: Float32Array.from({ length: dIn * L }, (_, q) => w.W_enc[Math.floor(q / L) * L + src[q % L]!]!),
        b_enc: Float32Array.from({ length: L }, (_, j) => w.b_enc[src[j]!]!),
        W_dec: Float32Array.from({ length: L * dIn }, (_, q) => w.W_dec[src[Math.floor(q / dIn)]! * dIn + (q % dIn)]!),
        b_dec: w.b_dec,
      },
      { k: 2 * k },
    );
    await a.save(path.join(dir, 'a'));
    await b.save(path.join(dir, 'b'));
    // --method argmax unless the call gives its own (a flag may be given once).
    const compare = (...args: string[]) =>
      run(['compare', path.join(dir, 'a'), path.join(dir, 'b'), '--data', path.join(dir, 'acts.npy'), '--runs', '2', ...(args.includes('--method') ? [] : ['--method', 'argmax']), '--threshold', '0.9', ...args]);
    const plain = compare('--out', path.join(dir, 'plain.json'));
    expect(plain.status, plain.stderr).toBe(0);
    const all = JSON.parse(readFileSync(path.join(dir, 'plain.json'), 'utf8')) as { pairs: { a: number; b: number; score: number }[]; mean_max_correlation: number };
    const one = compare('--one-to-one', '--out', path.join(dir, 'one.json'));
    expect(one.status, one.stderr).toBe(0);
    const kept = JSON.parse(readFileSync(path.join(dir, 'one.json'), 'utf8')) as { pairs: { a: number; b: number }[]; one_to_one: boolean };
    expect(kept.one_to_one).toBe(true);
    // Without the filter both copies of a firing latent pair with it; with it, only the lower B index.
    const want = all.pairs.filter((p) => src.indexOf(p.a) === p.b);
    expect(all.pairs.length).toBeGreaterThan(want.length);
    for (const p of all.pairs) expect(src[p.b]).toBe(p.a);
    expect(kept.pairs.map((p) => [p.a, p.b])).toEqual(want.map((p) => [p.a, p.b]));
    // --compat: every correlation times (N - 1) / N, labelled.
    const c = compare('--compat', 'univ-feat-geom', '--json');
    expect(c.status, c.stderr).toBe(0);
    const cj = JSON.parse(c.stdout);
    expect(cj.compat).toBe('univ-feat-geom');
    expect(cj.mean_max_correlation).toBeCloseTo((all.mean_max_correlation * (rows - 1)) / rows, 6);
    expect(cj.mean_max_correlation).toBeLessThan(all.mean_max_correlation);
    const bad = compare('--method', 'hungarian', '--one-to-one');
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toMatch(/Expected --one-to-one only with --method argmax but the method is hungarian/);
  }, 60_000);

  it('compare: mean_max_correlation averages each B feature\'s best r over B\'s features (nA != nB), and --max-pairs 3 still runs RSA (fresh random SAEs)', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-'));
    const seed = (Date.now() ^ 0x71374491) >>> 0;
    const next = lcg(seed);
    const dIn = 5;
    const nA = 9 + 2 * Math.floor(next() * 4);
    const nB = nA + 4 + 2 * Math.floor(next() * 4);
    const rows = 301 + 2 * Math.floor(next() * 200);
    const data = Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
    await io.writeNpy(path.join(dir, 'acts.npy'), { dtype: 'float32', shape: [rows, dIn], data });
    using a = SparseAutoencoder.create({ dIn, numLatents: nA, k: 3, seed: 1 + Math.floor(next() * 1000) });
    using b = SparseAutoencoder.create({ dIn, numLatents: nB, k: 3, seed: 1001 + Math.floor(next() * 1000) });
    await a.save(path.join(dir, 'a'));
    await b.save(path.join(dir, 'b'));
    const r = run(['compare', path.join(dir, 'a'), path.join(dir, 'b'), '--data', path.join(dir, 'acts.npy'), '--json', '--runs', '2', '--method', 'argmax', '--threshold', '-1', '--max-pairs', '3', '--device', 'cpu']);
    expect(r.status, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout);
    // The reference: the full r matrix, each column's (B feature's) largest r, averaged over nB.
    const c = await features.correlation({ source: fromArray(data, dIn), sae: a }, { sae: b }, { output: 'full' });
    if (c.mode !== 'full') throw new Error('expected the full matrix');
    let want = 0;
    for (let j = 0; j < nB; j++) {
      let best = -Infinity;
      for (let i = 0; i < nA; i++) best = Math.max(best, c.r[i * nB + j]!);
      want += best;
    }
    want /= nB;
    const ctx = `seed ${seed}: nA ${nA}, nB ${nB}, ${rows} rows`;
    expect(Math.abs(s.mean_max_correlation - want), ctx).toBeLessThan(1e-9);
    // Every B feature keeps its argmax pair (threshold -1): 3 of them go to SVCCA and RSA.
    expect(s.similarity_pairs, ctx).toMatchObject({ used: 3, of: nB });
    expect(s.svcca.skipped, ctx).toMatch(/needs more pairs \(3 of the/);
    expect(Number.isFinite(s.rsa.score), `${ctx}: ${JSON.stringify(s.rsa)}`).toBe(true);
    expect([1 / 3, 2 / 3, 1]).toContain(s.rsa.p_value);
    // Top mode (the matrix over --max-bytes): the same mean from each B feature's best match; and
    // as many pairs as dimensions (--max-pairs dIn) skips SVCCA (it needs more) and runs RSA.
    const t = run(['compare', path.join(dir, 'a'), path.join(dir, 'b'), '--data', path.join(dir, 'acts.npy'), '--json', '--runs', '2', '--method', 'argmax', '--threshold', '-1', '--max-bytes', '64', '--max-pairs', String(dIn), '--device', 'cpu']);
    expect(t.status, t.stderr).toBe(0);
    expect(t.stderr).toMatch(/top \d+ matches per feature/);
    const ts = JSON.parse(t.stdout);
    expect(Math.abs(ts.mean_max_correlation - want), ctx).toBeLessThan(1e-6);
    expect(ts.similarity_pairs, ctx).toMatchObject({ used: dIn, of: nB });
    expect(ts.svcca.skipped, ctx).toMatch(new RegExp(`needs more pairs \\(${dIn} of the ${nB} kept, by --max-pairs\\) than dimensions \\(${dIn}\\)`));
    expect(Number.isFinite(ts.rsa.score), ctx).toBe(true);
  }, 60_000);

  /** A folder with an SAE (dIn 6, 12 latents) and `rows` random rows as acts.bin (raw float32) and acts.npy. */
  async function compareFixture(seed: number, rows: number) {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-'));
    const next = lcg(seed);
    const dIn = 6;
    const data = Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
    using sae = SparseAutoencoder.create({ dIn, numLatents: 12, k: 3, seed: 4 });
    const s = path.join(dir, 'sae');
    await sae.save(s);
    const f = (name: string) => path.join(dir, name);
    writeFileSync(f('acts.bin'), data);
    await io.writeNpy(f('acts.npy'), { dtype: 'float32', shape: [rows, dIn], data });
    return { dir, data, s, f, dIn };
  }

  it('compare: --tensor, --dtype and --d-in describe --data only; --data-b describes itself (--tensor-b names its tensor)', async () => {
    const rows = 400;
    const { data, s, f, dIn } = await compareFixture(21, rows);
    // The same rows in six files: raw float32 and .npy (the fixture's), a float64 .npy (exact), a
    // 3-D .npy, and two .safetensors with two 2-D tensors each, named differently.
    await io.writeNpy(f('acts64.npy'), { dtype: 'float64', shape: [rows, dIn], data: Float64Array.from(data) });
    await io.writeNpy(f('acts3d.npy'), { dtype: 'float32', shape: [4, rows / 4, dIn], data });
    const other = { dtype: 'float32' as const, shape: [2, 2], data: new Float32Array(4) };
    await io.writeSafetensors(f('a.safetensors'), { acts: { dtype: 'float32', shape: [rows, dIn], data }, other });
    await io.writeSafetensors(f('b.safetensors'), { resid: { dtype: 'float32', shape: [rows, dIn], data }, other });
    const compare = (...args: string[]) => run(['compare', s, s, '--json', '--runs', '2', ...args]);
    const want = compare('--data', f('acts.npy'));
    expect(want.status, want.stderr).toBe(0);
    const summary = (r: { stdout: string }) => {
      const { tokens, mean_max_correlation: mmc, pairs_kept: kept } = JSON.parse(r.stdout);
      return { tokens, mmc, kept };
    };
    for (const args of [
      ['--data', f('acts.bin'), '--dtype', 'float32', '--d-in', String(dIn), '--data-b', f('acts64.npy')],
      ['--data', f('a.safetensors'), '--tensor', 'acts', '--data-b', f('acts3d.npy')],
      ['--data', f('a.safetensors'), '--tensor', 'acts', '--data-b', f('b.safetensors'), '--tensor-b', 'resid'],
      ['--data', f('acts.npy'), '--data-b', f('b.safetensors'), '--tensor-b', 'resid'],
    ]) {
      const r = compare(...args);
      expect(r.status, `${args.join(' ')}: ${r.stderr}`).toBe(0);
      expect(summary(r), args.join(' ')).toEqual(summary(want));
      // The JSON records how each side was read (another tensor of the same file is other data).
      const flag = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
      const j = JSON.parse(r.stdout) as Record<string, unknown>;
      expect([j.tensor, j.tensor_b, j.dtype, j.d_in], args.join(' ')).toEqual([flag('--tensor'), flag('--tensor-b'), flag('--dtype'), flag('--d-in') === undefined ? undefined : Number(flag('--d-in'))]);
    }
    const wantJson = JSON.parse(want.stdout) as Record<string, unknown>;
    expect(['tensor', 'tensor_b', 'dtype', 'd_in', 'on_non_finite', 'max_bytes'].filter((k) => k in wantJson)).toEqual([]);
    const capped = JSON.parse(compare('--data', f('acts.npy'), '--max-bytes', String(1 << 20), '--on-non-finite', 'skip').stdout) as Record<string, unknown>;
    expect([capped.max_bytes, capped.on_non_finite]).toEqual([1 << 20, 'skip']);
    // Errors from --data-b name --data-b's flags.
    const errors: [string[], RegExp][] = [
      [['--data', f('a.safetensors'), '--tensor', 'acts', '--data-b', f('b.safetensors')], /Expected --tensor-b for .*b\.safetensors, which has 2 2-D tensors/],
      [['--data', f('acts.npy'), '--data-b', f('b.safetensors'), '--tensor-b', 'acts'], /Expected --tensor-b to name a tensor of .*b\.safetensors but it has no 'acts'/],
      [['--data', f('acts.npy'), '--data-b', f('acts64.npy'), '--tensor-b', 'resid'], /Expected --tensor-b only with \.safetensors files/],
      [['--data', f('acts.npy'), '--tensor-b', 'resid'], /Expected --tensor-b only with --data-b/],
      [['--data', f('nope.npy')], /for --data but '.*nope\.npy' does not exist/],
    ];
    for (const [args, re] of errors) {
      const r = compare(...args);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stderr, args.join(' ')).toMatch(re);
      expect(r.stderr, args.join(' ')).toMatch(/\[ERR_SAEKIT_ARG\]\n$/);
    }
    // A NaN row in --data-b: skipping is not offered (compare refuses it with --data-b).
    const bad = Float32Array.from(data);
    bad[37 * dIn + 1] = Number.NaN;
    await io.writeNpy(f('bad.npy'), { dtype: 'float32', shape: [rows, dIn], data: bad });
    const nan = compare('--data', f('acts.npy'), '--data-b', f('bad.npy'));
    expect(nan.status).toBe(1);
    expect(nan.stderr).toMatch(/row 37 of .*bad\.npy has NaN.*with --data-b rows cannot be skipped.*clean the files first\) \[ERR_SAEKIT_NONFINITE\]/);
    expect(nan.stderr).not.toMatch(/--on-non-finite skip/);
  }, 120_000);

  it('compare: a raw --data-b is refused naming --data-b (raw files need --dtype and --d-in, which describe --data only)', async () => {
    const { dir, data, s, f, dIn } = await compareFixture(22, 100);
    mkdirSync(f('raw'));
    writeFileSync(path.join(dir, 'raw', 'x.bin'), data);
    const raw = ['--dtype', 'float32', '--d-in', String(dIn)];
    for (const [args, re] of [
      // A raw file, although --dtype and --d-in were given (they describe --data).
      [['--data', f('acts.bin'), '--data-b', f('acts.bin'), ...raw], /Expected a self-describing file for --data-b \(\.npy or \.safetensors, .*raw files are only for --data, with --dtype and --d-in\) but received the raw file '.*acts\.bin'/],
      [['--data', f('acts.npy'), '--data-b', f('acts.bin')], /Expected a self-describing file for --data-b .* but received the raw file '.*acts\.bin'/],
      // Folders and globs of --data-b skip raw files, and say why they found none.
      [['--data', f('acts.npy'), '--data-b', path.join(dir, '*.bin'), ...raw], /Expected the glob pattern --data-b = '.*\*\.bin' to match activation files but it matches none \(\.npy or \.safetensors; raw files are only for --data\)/],
      [['--data', f('acts.npy'), '--data-b', f('raw'), ...raw], /Expected a folder holding activation files for --data-b but '.*raw' has none \(looked for \.npy and \.safetensors; raw files are only for --data\)/],
    ] as const) {
      const r = run(['compare', s, s, ...args]);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stderr, args.join(' ')).toMatch(re);
      expect(r.stderr, args.join(' ')).toMatch(/\[ERR_SAEKIT_ARG\]\n$/);
    }
  }, 60_000);

  it('match-layers: a JumpReLU SAE with a threshold of 0 fails naming its file and --no-fold; with --no-fold it matches', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-'));
    const next = lcg(16);
    const [n, d] = [9, 5];
    const mk = (zeroAt: number) =>
      SparseAutoencoder.fromWeights(
        {
          W_enc: Float32Array.from({ length: n * d }, () => next() - 0.5),
          b_enc: new Float32Array(n),
          W_dec: Float32Array.from({ length: n * d }, () => next() - 0.5),
          b_dec: new Float32Array(d),
          threshold: Float32Array.from({ length: n }, (_, i) => (i === zeroAt ? 0 : 0.5)),
        },
        { architecture: 'jumprelu' },
      );
    using l0 = mk(-1);
    using l1 = mk(3);
    await l0.save(path.join(dir, 'l0'));
    await l1.save(path.join(dir, 'l1'));
    const bad = run(['match-layers', path.join(dir, 'l0'), path.join(dir, 'l1')]);
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toContain(`for threshold[3] of ${path.join(dir, 'l1')} but received 0 (number); pass --no-fold`);
    const ok = run(['match-layers', path.join(dir, 'l0'), path.join(dir, 'l1'), '--no-fold', '--json']);
    expect(ok.status, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout)[0].matched).toBe(n);
    // A finite encoder weight over a tiny threshold folds past float32's range: with --encoder the
    // error names the file and --no-fold (it named saeB and blamed the stored weights).
    const w2 = await l0.weights();
    const th = Float32Array.from({ length: n }, (_, i) => (i === 2 ? 1e-30 : 0.5));
    const W_enc = w2.W_enc.slice();
    W_enc[1 * n + 2] = 1e10;
    using l2 = SparseAutoencoder.fromWeights({ W_enc, b_enc: w2.b_enc, W_dec: w2.W_dec, b_dec: w2.b_dec, threshold: th }, { architecture: 'jumprelu' });
    await l2.save(path.join(dir, 'l2'));
    const over = run(['match-layers', path.join(dir, 'l0'), path.join(dir, 'l2'), '--encoder']);
    expect(over.status).toBe(1);
    expect(over.stderr).toMatch(new RegExp(`Expected folded weights within float32's range but ${path.join(dir, 'l2').replace(/[.\\/]/g, '\\$&')}'s latent 2 folds W_enc\\[1\\]\\[2\\] / threshold\\[2\\] = .* to (-)?Infinity .*; pass --no-fold to match without folding \\[ERR_SAEKIT_NONFINITE\\]`));
    expect(run(['match-layers', path.join(dir, 'l0'), path.join(dir, 'l2'), '--encoder', '--no-fold']).status).toBe(0);
  }, 60_000);

  it('checks outputs, resume options and inputs before any work, with one-line errors in terms of flags', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-'));
    const next = lcg(9);
    const [rows, dIn] = [1200, 8];
    const data = Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
    data[37 * dIn + 2] = Number.NaN; // one bad row
    const acts = path.join(dir, 'acts.npy');
    await io.writeNpy(acts, { dtype: 'float32', shape: [rows, dIn], data });
    const base = ['train', acts, '--latents', '16', '--k', '2', '--batch', '128', '--warmup', '2', '--json'];
    const oneLine = (r: { stderr: string }) => {
      expect(r.stderr).not.toMatch(/^\s+at /m); // no stack trace
      expect(r.stderr).not.toMatch(/Usage:/); // no help dump
    };
    // A NaN row stops the run and points at the CLI flag; --on-non-finite skip trains and says so.
    const nan = run([...base, '--out', path.join(dir, 'r0')]);
    expect(nan.status).toBe(1);
    expect(nan.stderr).toMatch(/row 37 .*NaN.*--on-non-finite skip/);
    oneLine(nan);
    // It wrote nothing, so it leaves no empty --out folder behind.
    expect(existsSync(path.join(dir, 'r0'))).toBe(false);
    // The README's form: --log inside an --out that does not exist yet.
    const out = path.join(dir, 'runs', 'l8');
    const ok = run([...base, '--out', out, '--log', path.join(out, 'log.jsonl'), '--on-non-finite', 'skip']);
    expect(ok.status, ok.stderr).toBe(0);
    expect(ok.stderr).toMatch(/skipped 1 row holding NaN or Inf/);
    expect(JSON.parse(ok.stdout)).toMatchObject({ status: 'completed', steps: 9 });
    // The training flags reach the Trainer (its checkpoint records the options it resolved).
    const tuned = path.join(dir, 'tuned');
    const tr = run([...base, '--out', tuned, '--on-non-finite', 'skip', '--dead-threshold', '256', '--decay', 'none', '--b-dec-init', 'mean', '--auxk-variant', 'paper', '--auxk-alpha', '0.5', '--precision', 'fp32']);
    expect(tr.status, tr.stderr).toBe(0);
    expect(JSON.parse(readFileSync(path.join(tuned, 'checkpoint', 'checkpoint.json'), 'utf8')).options).toMatchObject({
      deadThresholdTokens: 256, decay: 'none', bDecInit: 'mean', auxkVariant: 'paper', auxkAlpha: 0.5, batchSize: 128, warmupSteps: 2,
    });
    expect(run([...base, '--out', tuned, '--precision', 'fp16']).stderr).toMatch(/Expected one of: bf16, tf32, fp32 for --precision but received 'fp16'/);
    // A second run into the same --out refuses (checkpoint), names the way out, and leaves it alone.
    const again = run([...base, '--out', out, '--on-non-finite', 'skip']);
    expect(again.status).toBe(1);
    expect(again.stderr).toMatch(/already holds a training run \(checkpoint at step 9\); pass --resume .* --overwrite/);
    oneLine(again);
    // A resume with another batch size is refused in terms of the flag.
    const rb = run([...base.map((a) => (a === '128' ? '64' : a)), '--out', out, '--on-non-finite', 'skip', '--resume', '--epochs', '2']);
    expect(rb.status).toBe(1);
    expect(rb.stderr).toMatch(/Expected --batch = 128 to resume the checkpoint/);
    // The same options resume (and say so); --overwrite starts over.
    const re = run([...base, '--out', out, '--on-non-finite', 'skip', '--resume', '--epochs', '2', '--log', path.join(out, 'log.jsonl')]);
    expect(re.status, re.stderr).toBe(0);
    expect(re.stderr).toMatch(/resuming from step 9/);
    expect(JSON.parse(re.stdout)).toMatchObject({ status: 'completed', steps: 18 });
    expect(readFileSync(path.join(out, 'log.jsonl'), 'utf8').trim().split('\n')).toHaveLength(18);
    const ow = run([...base, '--out', out, '--on-non-finite', 'skip', '--overwrite', '--log', path.join(out, 'log.jsonl')]);
    expect(ow.status, ow.stderr).toBe(0);
    expect(JSON.parse(ow.stdout)).toMatchObject({ steps: 9 });
    expect(readFileSync(path.join(out, 'log.jsonl'), 'utf8').trim().split('\n')).toHaveLength(9);
    // An --out below a file fails at once, before training.
    const t0 = performance.now();
    const bad = run([...base, '--out', path.join(acts, 'sub'), '--on-non-finite', 'skip']);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/Expected --out to be a folder that can be created/);
    expect(bad.stderr).not.toMatch(/"step"/);
    oneLine(bad);
    expect(performance.now() - t0).toBeLessThan(30_000);
    // Under /proc, where Node's recursive mkdir never returned (the run hung at 100% CPU).
    if (process.platform === 'linux' && existsSync('/proc/self')) {
      const pr = run([...base, '--out', `/proc/saekit-cli-${process.pid}/out`, '--on-non-finite', 'skip'], {}, 60_000);
      expect(pr.status, pr.stderr).toBe(1);
      expect(pr.stderr).toMatch(/Expected --out to be a folder that can be created but '\/proc\/.*ENOENT/);
    }
    // eval: activations of another width name both paths; a missing SAE is named by its CLI argument.
    const wide = path.join(dir, 'wide.npy');
    await io.writeNpy(wide, { dtype: 'float32', shape: [10, dIn + 1], data: new Float32Array(10 * (dIn + 1)) });
    const e2 = run(['eval', out, wide]);
    expect(e2.stderr).toMatch(new RegExp(`Expected activations of dIn ${dIn} \\(the SAE's, .*\\) but .*wide\\.npy hold rows of dIn ${dIn + 1}`));
    const e3 = run(['eval', path.join(dir, 'nope'), acts]);
    expect(e3.stderr).toMatch(/Expected an SAE folder or file for <sae> but .*nope does not exist/);
    // --device on eval and compare: an explicit device that cannot run is a one-line device error;
    // 'cpu' runs.
    if (!backend.info().cuda.available) {
      for (const args of [['eval', out, acts, '--device', 'cuda'], ['compare', out, out, '--data', acts, '--device', 'cuda:0']]) {
        const r = run(args);
        expect(r.status, args.join(' ')).toBe(1);
        expect(r.stderr, args.join(' ')).toMatch(/CUDA/);
        oneLine(r);
      }
    }
    const ec = run(['eval', out, acts, '--device', 'cpu', '--on-non-finite', 'skip', '--max-tokens', '500', '--json']);
    expect(ec.status, ec.stderr).toBe(0);
    expect(JSON.parse(ec.stdout).tokens).toBe(500);
    // Flag conflicts.
    expect(run([...base, '--out', path.join(dir, 'r1'), '--tokens', '500', '--epochs', '2']).stderr).toMatch(/at most one of --tokens N and --epochs E/);
    expect(run([...base, '--out', path.join(dir, 'r1'), '--lr', '0']).stderr).toMatch(/Expected a number > 0 and <= 10 for --lr but received '0'/);
    // compare: an --out in a missing folder, and --data-b with other tokens, fail before any work.
    const c1 = run(['compare', out, out, '--data', acts, '--out', path.join(dir, 'missing', 'x.json')]);
    expect(c1.status).toBe(1);
    expect(c1.stderr).toMatch(/Expected --out to be a file in an existing folder/);
    const acts2 = path.join(dir, 'acts2.npy');
    await io.writeNpy(acts2, { dtype: 'float32', shape: [rows - 1, dIn], data: data.slice(dIn) });
    const c2 = run(['compare', out, out, '--data', acts, '--data-b', acts2]);
    expect(c2.status).toBe(1);
    expect(c2.stderr).toMatch(new RegExp(`acts\\.npy has ${rows} rows and .*acts2\\.npy has ${rows - 1}`));
    oneLine(c2);
    // Skipping rows on two sources would misalign them token by token: refused.
    const c3 = run(['compare', out, out, '--data', acts, '--data-b', acts, '--on-non-finite', 'skip']);
    expect(c3.status).toBe(1);
    expect(c3.stderr).toMatch(/Expected --on-non-finite error with --data-b/);
    // A failed --overwrite run keeps the run it was replacing (moved aside, not deleted).
    const failed = run([...base, '--out', out, '--overwrite', '--log', path.join(out, 'log.jsonl')]); // the NaN row stops it
    expect(failed.status).toBe(1);
    expect(failed.stderr).toMatch(/the run being replaced is kept in .*checkpoint\.replaced, .*log\.jsonl\.replaced/);
    expect(JSON.parse(readFileSync(path.join(out, 'checkpoint.replaced', 'checkpoint.json'), 'utf8')).step).toBe(9);
    // demo does not replace an SAE in --out without --overwrite.
    const d = run(['demo', '--out', out]);
    expect(d.status).toBe(1);
    expect(d.stderr).toMatch(/already holds .*pass --overwrite/);
    // --log names a file: a folder there is refused, never moved aside and deleted (--overwrite did that).
    const precious = path.join(dir, 'precious');
    mkdirSync(precious);
    writeFileSync(path.join(precious, 'a.txt'), 'data');
    const lf = run([...base, '--out', path.join(dir, 'r2'), '--on-non-finite', 'skip', '--overwrite', '--log', precious]);
    expect(lf.status).toBe(1);
    expect(lf.stderr).toMatch(/Expected --log to be a file but '.*precious' is a folder/);
    expect(readFileSync(path.join(precious, 'a.txt'), 'utf8')).toBe('data');
    // compare / match-layers --out: never an input (or inside an input SAE's folder), an existing file only with --overwrite.
    const pairs = path.join(dir, 'pairs.json');
    writeFileSync(pairs, 'keep');
    for (const [args, re] of [
      [['compare', out, out, '--data', acts, '--on-non-finite', 'skip', '--out', acts], /not to overwrite an input but '.*acts\.npy' is '/],
      [['compare', out, out, '--data', acts, '--on-non-finite', 'skip', '--out', path.join(out, 'cfg.json')], /not to overwrite an input but '.*cfg\.json' is inside '/],
      [['compare', out, out, '--data', acts, '--on-non-finite', 'skip', '--out', pairs], /--out .*pairs\.json already exists; pass --overwrite/],
      [['match-layers', out, out, '--out', pairs], /already exists; pass --overwrite/],
    ] as const) {
      const r = run([...args]);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stderr).toMatch(re);
      oneLine(r);
    }
    expect(readFileSync(pairs, 'utf8')).toBe('keep');
    expect(run(['match-layers', out, out, '--out', pairs, '--overwrite']).status).toBe(0);
    expect(JSON.parse(readFileSync(pairs, 'utf8'))).toHaveLength(1);
    // Numbers in decimal notation only, and --expansion errors name --expansion.
    expect(run([...base.filter((_, i) => i !== 2 && i !== 3), '--latents', '0x10', '--out', path.join(dir, 'r3')]).stderr).toMatch(/for --latents but received '0x10'/);
    const ex = run(['train', acts, '--expansion', '0.01', '--k', '2', '--out', path.join(dir, 'r4')]);
    expect(ex.stderr).toMatch(/Expected --expansion of at least 0\.0625 .* but received 0\.01/);
  }, 120_000);

  it('compare and match-layers --out --overwrite never replace an input: a file a --data glob or folder expands to, or a file beside an SAE named by one of its files', async () => {
    const { dir, s, f } = await compareFixture(23, 100);
    mkdirSync(f('g'));
    for (const name of ['v1.npy', 'v2.npy']) copyFileSync(f('acts.npy'), path.join(dir, 'g', name));
    symlinkSync(f('g'), f('link'));
    const weights = path.join(s, 'sae_weights.safetensors');
    const kept = (p: string) => readFileSync(p).toString('base64');
    const before = new Map([path.join(dir, 'g', 'v2.npy'), path.join(s, 'cfg.json'), weights].map((p) => [p, kept(p)]));
    for (const [args, re] of [
      [['compare', s, s, '--data', path.join(dir, 'g', '*.npy'), '--out', path.join(dir, 'g', 'v2.npy')], /is '.*v2\.npy', one of the files of --data '.*\*\.npy'/],
      [['compare', s, s, '--data', f('acts.npy'), '--data-b', f('g'), '--out', path.join(dir, 'g', 'v2.npy')], /is '.*v2\.npy', one of the files of --data-b '.*g'/],
      // The same file by another name: through a link to its folder.
      [['compare', s, s, '--data', path.join(dir, 'g', 'v2.npy'), '--out', path.join(dir, 'link', 'v2.npy')], /is '.*g.v2\.npy' \(--data\)/],
      [['compare', weights, weights, '--data', f('acts.npy'), '--out', path.join(s, 'cfg.json')], /is the cfg\.json of the SAE '.*sae_weights\.safetensors'/],
      [['compare', path.join(s, 'cfg.json'), path.join(s, 'cfg.json'), '--data', f('acts.npy'), '--out', weights], /is the sae_weights\.safetensors of the SAE '.*cfg\.json'/],
      [['match-layers', weights, weights, '--out', path.join(s, 'cfg.json')], /is the cfg\.json of the SAE '.*sae_weights\.safetensors'/],
    ] as const) {
      const r = run([...args, '--overwrite']);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stderr, args.join(' ')).toMatch(/Expected --out not to overwrite an input but /);
      expect(r.stderr, args.join(' ')).toMatch(re);
      expect(r.stderr, args.join(' ')).not.toMatch(/correlating/);
    }
    for (const [p, bytes] of before) expect(kept(p), p).toBe(bytes);
  }, 120_000);

  it('train: an --expansion giving too many latents for the data\'s dIn is refused naming --expansion and its maximum', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-'));
    const acts = path.join(dir, 'wide.npy');
    await io.writeNpy(acts, { dtype: 'float32', shape: [8, 512], data: new Float32Array(8 * 512) });
    const r = run(['train', acts, '--expansion', '65536', '--batch', '4', '--out', path.join(dir, 'run')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/Expected --expansion of at most 32768 \(dIn 512 x --expansion, rounded, is the number of latents, at most 16777216\) but received 65536 \[ERR_SAEKIT_ARG\]/);
    expect(r.stderr).not.toMatch(/--latents/);
  }, 60_000);

  it('an empty --out is refused up front by compare, match-layers and demo (it was ignored: nothing was saved)', async () => {
    const { s, f } = await compareFixture(24, 100);
    for (const [args, re] of [
      [['compare', s, s, '--data', f('acts.npy'), '--runs', '2'], /Expected a file path for --out but received '' \(string\) \[ERR_SAEKIT_ARG\]/],
      [['match-layers', s, s], /Expected a file path for --out but received '' \(string\) \[ERR_SAEKIT_ARG\]/],
      [['demo'], /Expected a folder path for --out but received '' \(string\) \[ERR_SAEKIT_ARG\]/],
    ] as const) {
      const r = run([...args, '--out', ''], {}, 20_000);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stderr, args.join(' ')).toMatch(re);
      expect(r.stderr, args.join(' ')).not.toMatch(/correlating|training/);
    }
  }, 90_000);

  it('compare and match-layers refuse an --out that ends in a path separator or is a folder before any work', async () => {
    const { dir, s, f } = await compareFixture(25, 100);
    for (const [args, re] of [
      [['compare', s, s, '--data', f('acts.npy'), '--runs', '2', '--out', `${f('new')}/`], /Expected --out to be a file but '.*new\/' ends in a path separator/],
      [['match-layers', s, s, '--out', `${f('new')}/`], /Expected --out to be a file but '.*new\/' ends in a path separator/],
      [['compare', s, s, '--data', f('acts.npy'), '--runs', '2', '--out', dir], /Expected --out to be a file but '.*' is a folder/],
    ] as const) {
      const r = run([...args]);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stderr, args.join(' ')).toMatch(re);
      expect(r.stderr, args.join(' ')).not.toMatch(/correlating/);
    }
    expect(existsSync(f('new'))).toBe(false);
  }, 60_000);

  it('train refuses a --log that is one of its data files before moving anything aside (--overwrite had moved the input to .replaced)', async () => {
    const { dir, f } = await compareFixture(26, 100);
    const before = readFileSync(f('acts.npy')).toString('base64');
    const base = ['--latents', '8', '--k', '2', '--batch', '10', '--out', f('run'), '--overwrite'];
    mkdirSync(f('more'));
    copyFileSync(f('acts.npy'), path.join(f('more'), 'b.npy'));
    for (const [data, log, re] of [
      [[f('acts.npy')], f('acts.npy'), /Expected --log not to overwrite an input but '.*acts\.npy' is '.*acts\.npy' \(<data>\)/],
      [[path.join(dir, '*.npy')], f('acts.npy'), /Expected --log not to overwrite an input but '.*acts\.npy' is '.*acts\.npy', one of the files of <data> '.*\*\.npy'/],
      // Several data arguments: the one the file came from is named.
      [[f('acts.npy'), f('more')], path.join(f('more'), 'b.npy'), /Expected --log not to overwrite an input but '.*b\.npy' is '.*b\.npy', one of the files of <data> '.*more'/],
    ] as const) {
      const r = run(['train', ...data, ...base, '--log', log]);
      expect(r.status, data.join(' ')).toBe(1);
      expect(r.stderr, data.join(' ')).toMatch(re);
      expect(r.stderr, data.join(' ')).toMatch(/\[ERR_SAEKIT_ARG\]\n$/);
      expect(existsSync(`${log}.replaced`), data.join(' ')).toBe(false);
      expect(readFileSync(log).toString('base64'), data.join(' ')).toBe(before);
    }
  }, 60_000);

  it('train refuses an --out whose SAE files or checkpoint folder are its data (with --overwrite the SAE replaced an input named sae_weights.safetensors, exit 0), and names a damaged checkpoint instead of a run at step 0 to --resume', async () => {
    const { f } = await compareFixture(27, 100);
    const out = f('run');
    mkdirSync(path.join(out, 'checkpoint'), { recursive: true });
    const base = ['--latents', '8', '--k', '2', '--batch', '10', '--tokens', '20', '--out', out, '--overwrite'];
    for (const [name, re] of [
      ['sae_weights.safetensors', /Expected --out not to overwrite an input but '.*run\/sae_weights\.safetensors' is '.*sae_weights\.safetensors' \(<data>\)/],
      ['sae.safetensors', /Expected --out not to overwrite an input but '.*run\/sae\.safetensors' is /],
      [path.join('checkpoint', 'acts.npy'), /Expected --out not to hold an input in its checkpoint folder but '.*checkpoint\/acts\.npy' \(<data>\) is in .*run\/checkpoint/],
    ] as const) {
      const input = path.join(out, name);
      if (name.endsWith('.npy')) copyFileSync(f('acts.npy'), input);
      else {
        const { data } = await io.readNpy(f('acts.npy'));
        await io.writeSafetensors(input, { acts: { dtype: 'float32', shape: [100, data.length / 100], data: data as Float32Array } });
      }
      const bytes = readFileSync(input);
      const r = run(['train', input, ...base]);
      expect(r.status, name).toBe(1);
      expect(r.stderr, name).toMatch(re);
      expect(readFileSync(input).equals(bytes), `${name} kept`).toBe(true);
      rmSync(input);
    }
    // A checkpoint.json that cannot be resumed: named, with --overwrite as the way out (not --resume).
    writeFileSync(path.join(out, 'checkpoint', 'checkpoint.json'), JSON.stringify({ version: 1, step: 'x' }));
    const r = run(['train', f('acts.npy'), '--latents', '8', '--k', '2', '--batch', '10', '--tokens', '20', '--out', out]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/--out .*run holds a checkpoint that cannot be resumed \(.*checkpoint\.json: .*\); pass --overwrite to start over/);
    expect(r.stderr).not.toMatch(/--resume/);
  }, 60_000);

  it('train --resume names the flags that size another SAE than the checkpoint\'s, and a damaged state file points to --overwrite', async () => {
    // They were ERR_SAEKIT_FORMAT naming the SAE's fields (numLatents, k), never the flags.
    const { f } = await compareFixture(31, 100);
    const out = f('run');
    const base = ['train', f('acts.npy'), '--batch', '10', '--tokens', '40', '--checkpoint-every', '2', '--out', out];
    const first = run([...base, '--latents', '8', '--k', '2']);
    expect(first.status, first.stderr).toBe(0);
    const ck = path.join(out, 'checkpoint');
    const was = readdirSync(ck).sort();
    for (const [flags, named] of [
      [['--latents', '9', '--k', '2'], 'received --latents 9;'],
      [['--expansion', '2', '--k', '2'], 'received --expansion 2 (12 latents);'],
      [['--latents', '8', '--k', '3'], 'received --k 3;'],
      [['--latents', '16', '--k', '1'], 'received --latents 16, --k 1;'],
    ] as const) {
      const r = run([...base, ...flags, '--resume']);
      expect(r.status, flags.join(' ')).toBe(1);
      expect(r.stderr).toContain(`Expected --latents 8 and --k 2 on data of dIn 6 to resume the checkpoint in ${ck} (the SAE it trained) but ${named} resume with the same SAE, pass --overwrite to start over`);
      expect(r.stderr).toMatch(/\[ERR_SAEKIT_ARG\]\n$/);
    }
    expect(readdirSync(ck).sort(), 'the checkpoint is untouched').toEqual(was);
    // The same SAE resumes (nothing left to train at 40 tokens).
    const same = run([...base, '--latents', '8', '--k', '2', '--resume']);
    expect(same.status, same.stderr).toBe(0);
    // A state file damaged since: the library's "fit() without options.resume" is --overwrite here.
    const state = readdirSync(ck).find((n) => n.startsWith('state-'))!;
    const bytes = readFileSync(path.join(ck, state));
    bytes[bytes.length - 1]! ^= 1;
    writeFileSync(path.join(ck, state), bytes);
    const damaged = run([...base, '--latents', '8', '--k', '2', '--resume']);
    expect(damaged.status).toBe(1);
    expect(damaged.stderr).toMatch(/its SHA-256 is not the one checkpoint\.json recorded \(the file was damaged or replaced since: fix it, or start over with --overwrite\)/);
  }, 60_000);

  it('train refuses a --log the run itself replaces: a file of its checkpoint folder or an SAE file it saves in --out', async () => {
    // The run appended its steps there, then the checkpoint's rename or the save replaced the
    // file: the log was gone, exit 0, no warning.
    const { dir, f } = await compareFixture(28, 100);
    const out = f('run');
    const base = ['train', f('acts.npy'), '--latents', '8', '--k', '2', '--batch', '10', '--out', out];
    mkdirSync(out);
    mkdirSync(f('link-parent'));
    symlinkSync(out, path.join(f('link-parent'), 'to-run')); // the same folder by another name
    for (const [log, re] of [
      [path.join(out, 'checkpoint', 'checkpoint.json'), /Expected --log outside the run's checkpoint folder but '.*checkpoint\.json' is in .*run\/checkpoint \(each checkpoint replaces the files there\)/],
      [path.join(out, 'checkpoint'), /Expected --log outside the run's checkpoint folder/],
      [path.join(out, 'checkpoint', 'deeper', 'log'), /Expected --log outside the run's checkpoint folder/],
      [path.join(out, 'cfg.json'), /Expected --log not to be a file the run saves but '.*cfg\.json' is the SAE's cfg\.json in --out .*run/],
      [path.join(out, 'sae_weights.safetensors'), /is the SAE's sae_weights\.safetensors in --out/],
      [path.join(f('link-parent'), 'to-run', 'sae.safetensors'), /is the SAE's sae\.safetensors in --out/],
      [path.join(dir, '.', 'run', 'cfg.json'), /is the SAE's cfg\.json in --out/],
    ] as const) {
      const r = run([...base, '--log', log]);
      expect(r.status, log).toBe(1);
      expect(r.stderr, log).toMatch(re);
      expect(r.stderr, log).toMatch(/\[ERR_SAEKIT_ARG\]\n$/);
    }
    expect(readdirSync(out), 'nothing was made').toEqual([]);
    // A log beside them is fine.
    const ok = run([...base, '--log', path.join(out, 'log.jsonl'), '--json']);
    expect(ok.status, ok.stderr).toBe(0);
    expect(readFileSync(path.join(out, 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).step)).toEqual(Array.from({ length: 10 }, (_, i) => i + 1));
  }, 60_000);

  it('train --overwrite stopped before its first step puts the earlier run back: checkpoint and log beside its SAE, as they were', async () => {
    // They were moved aside and then deleted as if replaced, leaving the old SAE that only
    // --overwrite could pass, while the CLI said "run again to start afresh".
    const { f } = await compareFixture(29, 200);
    const out = f('run');
    const log = f('log.jsonl');
    const args = ['train', f('acts.npy'), '--latents', '8', '--k', '2', '--batch', '50', '--out', out, '--log', log];
    const first = run(args);
    expect(first.status, first.stderr).toBe(0);
    const files = [path.join(out, 'checkpoint', 'checkpoint.json'), log, path.join(out, 'cfg.json'), path.join(out, 'sae_weights.safetensors')];
    const before = files.map((p) => readFileSync(p).toString('base64'));
    const stall = pathToFileURL(path.join(packageRoot, 'test', 'fixtures', 'stall-first-batch.ts')).href;
    const r = await interrupted([...args, '--overwrite'], 100, 'SIGINT', 'stalling the first batch', [stall]);
    expect(r.code, r.stderr).toBe(130);
    expect(r.stdout).toMatch(/^stopped before the first step; nothing saved, and the earlier run it was replacing is back as it was: 0 steps/);
    expect(files.map((p) => readFileSync(p).toString('base64'))).toEqual(before);
    expect(readdirSync(f('.')).filter((n) => n.endsWith('.replaced'))).toEqual([]);
    expect(readdirSync(out).filter((n) => n.endsWith('.replaced'))).toEqual([]);
    // And the earlier run resumes from its checkpoint as before (nothing left to train: 4 steps done).
    const again = run([...args, '--resume', '--json']);
    expect(again.status, again.stderr).toBe(0);
    expect(again.stderr).toMatch(/resuming from step 4/);
  }, 60_000);

  it('demo --overwrite over a train run moves its checkpoint aside as train --overwrite does, so a later train --resume cannot continue the old run', async () => {
    const { f } = await compareFixture(27, 200);
    const out = f('run');
    const train = ['train', f('acts.npy'), '--latents', '8', '--k', '2', '--batch', '50', '--warmup', '1', '--out', out, '--json'];
    const t = run(train);
    expect(t.status, t.stderr).toBe(0);
    expect(existsSync(path.join(out, 'checkpoint', 'checkpoint.json'))).toBe(true);
    // Stopped early: the checkpoint was moved aside before training and dropped once the demo ended.
    const d = await interrupted(['demo', '--out', out, '--overwrite', '--json'], 1500);
    expect(d.code, d.stderr).toBe(130);
    expect(existsSync(path.join(out, 'checkpoint'))).toBe(false);
    expect(existsSync(path.join(out, 'checkpoint.replaced'))).toBe(false);
    const r = run([...train, '--resume']);
    expect(r.stderr).not.toMatch(/resuming from step/);
  }, 90_000);
  it.runIf(canFlock)('train --overwrite and --resume refuse an --out whose checkpoint folder another run is writing to, and move nothing aside', async () => {
    const { f } = await compareFixture(28, 200);
    const out = f('run');
    const train = ['train', f('acts.npy'), '--latents', '8', '--k', '2', '--batch', '50', '--warmup', '1', '--out', out, '--json'];
    expect(run(train).status).toBe(0);
    const ck = path.join(out, 'checkpoint');
    const before = readFileSync(path.join(ck, 'checkpoint.json'), 'utf8');
    const other = await holdFlock(path.join(ck, 'checkpoint.lock'), 'node-7', '2026-02-03T04:05:06.000Z');
    try {
      for (const flag of ['--overwrite', '--resume']) {
        const r = run([...train, flag]);
        expect(r.status, flag).toBe(1);
        expect(r.stderr, flag).toContain(`Expected --out to be a folder no other run is writing checkpoints to but ${ck} is in use: ${path.join(ck, 'checkpoint.lock')} is locked by process ${other.pid} on node-7, started 2026-02-03T04:05:06.000Z`);
        expect(existsSync(`${ck}.replaced`), flag).toBe(false);
        expect(readFileSync(path.join(ck, 'checkpoint.json'), 'utf8'), flag).toBe(before);
      }
    } finally {
      await other.kill();
    }
    const ow = run([...train, '--overwrite']);
    expect(ow.status, ow.stderr).toBe(0);
    expect(existsSync(path.join(ck, 'checkpoint.lock'))).toBe(false);
  }, 60_000);
  it('eval says when the token pass is done and the max-cosine geometry runs (minutes at 65536 latents, with no progress of its own); --no-geometry does not', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-geom-'));
    const [dIn, rows] = [8, 300];
    const sae = SparseAutoencoder.create({ dIn, numLatents: 64, k: 4, seed: 1 });
    await sae.save(path.join(dir, 'sae'));
    sae.dispose();
    const acts = await randomActs(path.join(dir, 'acts.npy'), rows, dIn, 5);
    for (const maxTokens of ['1000', '200']) {
      const r = run(['eval', path.join(dir, 'sae'), acts, '--max-tokens', maxTokens, '--batch', '64']);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stderr).toMatch(/computing the max-cosine geometry of the 64 encoder and decoder rows \(--no-geometry skips it\)/);
    }
    const n = run(['eval', path.join(dir, 'sae'), acts, '--no-geometry']);
    expect(n.status, n.stderr).toBe(0);
    expect(n.stderr).not.toMatch(/geometry/);
  });
});

describe('saekit eval and train: flags, defaults and output (mutation round)', () => {
  it('eval --help defaults are the ones evaluate() documents; bad --max-tokens and --batch values, unknown flags and missing values exit 1 before any work', () => {
    const help = run(['eval', '--help']);
    expect(help.status, help.stderr).toBe(0);
    const h = help.stdout.replace(/\s+/g, ' ');
    // EvaluateOptions: maxTokens default 1,000,000, batchSize default 4096 (fewer for wide rows: evaluate()'s own default).
    expect(h).toMatch(/--max-tokens <n> tokens to evaluate on \(at least 2: FVU needs a variance\) \(default: 1000000\)/);
    expect(h).toMatch(/--batch <n> rows per batch \(default 4096, fewer for rows wider than 65536 values\)/);
    const fake = ['eval', path.join(os.tmpdir(), 'no-such-sae'), path.join(os.tmpdir(), 'no-such-acts.npy')];
    for (const [flag, value, re] of [
      ['--max-tokens', '1', /Expected an integer between 2 and 9007199254740991 for --max-tokens but received '1'/],
      ['--max-tokens', '2.5', /Expected an integer between 2 and \d+ for --max-tokens but received '2\.5'/],
      ['--max-tokens', '9007199254740992', /for --max-tokens but received '9007199254740992'/],
      ['--batch', '0', /Expected an integer between 1 and 16777216 for --batch but received '0'/],
      ['--batch', '16777217', /for --batch but received '16777217'/],
    ] as const) {
      const r = run([...fake, flag, value]);
      expect(r.status, `${flag} ${value}`).toBe(1);
      expect(r.stderr, `${flag} ${value}`).toMatch(re);
      expect(r.stderr).not.toMatch(/does not exist/); // refused while parsing, before the SAE is opened
    }
    const unknown = run([...fake, '--max-token', '5']);
    expect(unknown.status).toBe(1);
    expect(unknown.stderr).toMatch(/unknown option '--max-token'/);
    const missing = run([...fake, '--max-tokens']);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/option '--max-tokens <n>' argument missing/);
  });

  it('a misspelt flag is named (with a suggestion) before a required option is missed; the required option is still required', () => {
    for (const [args, re] of [
      [['train', 'x.npy', '--ouy', 'o'], /unknown option '--ouy'\n\(Did you mean --out\?\)/],
      [['train', 'x.npy', '--bogus', '1'], /unknown option '--bogus'/],
      [['compare', 'a', 'b', '--dat', 'x.npy'], /unknown option '--dat'\n\(Did you mean --data\?\)/],
      [['train', 'x.npy'], /^error: required option '--out <dir>' not specified\n\(run with --help for usage\)/],
      [['compare', 'a', 'b'], /^error: required option '--data <src>' not specified/],
    ] as const) {
      const r = run([...args]);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stderr, args.join(' ')).toMatch(re);
    }
  });

  it('eval on fewer than 2 rows (one row, or one left once non-finite rows are skipped) exits 1 naming the files, not 0 with NaN metrics', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-evalrows-'));
    const dIn = 5;
    const sae = SparseAutoencoder.create({ dIn, numLatents: 10, k: 2, seed: 6 });
    await sae.save(path.join(dir, 'sae'));
    sae.dispose();
    const one = await randomActs(path.join(dir, 'one.npy'), 1, dIn, 12);
    const r = run(['eval', path.join(dir, 'sae'), one, '--json', '--no-geometry']);
    expect(r.status, r.stderr).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/Expected at least 2 rows to evaluate on \(FVU needs a variance\) but .*one\.npy gives 1 row \[ERR_SAEKIT_ARG\]/);
    const rows = Float32Array.from({ length: 3 * dIn }, (_, i) => i - 7);
    rows[2] = NaN;
    rows[dIn + 4] = Infinity;
    const nan = path.join(dir, 'nan.npy');
    await io.writeNpy(nan, { dtype: 'float32', shape: [3, dIn], data: rows });
    const s = run(['eval', path.join(dir, 'sae'), nan, '--no-geometry', '--on-non-finite', 'skip']);
    expect(s.status, s.stderr).toBe(1);
    expect(s.stderr).toMatch(/but .*nan\.npy gives 1 row once the non-finite rows are skipped \[ERR_SAEKIT_ARG\]/);
    // Two rows are enough.
    const two = await randomActs(path.join(dir, 'two.npy'), 2, dIn, 13);
    const t = run(['eval', path.join(dir, 'sae'), two, '--json', '--no-geometry']);
    expect(t.status, t.stderr).toBe(0);
    expect(Number.isFinite(JSON.parse(t.stdout).fvu)).toBe(true);
    // Three identical rows: no variance either (it printed fvu null and exited 0).
    const same = path.join(dir, 'same.npy');
    await io.writeNpy(same, { dtype: 'float32', shape: [3, dIn], data: Float32Array.from({ length: 3 * dIn }, (_, i) => (i % dIn) * 0.5 - 1) });
    const u = run(['eval', path.join(dir, 'sae'), same, '--json', '--no-geometry']);
    expect(u.status, u.stderr).toBe(1);
    expect(u.stdout).toBe('');
    expect(u.stderr).toMatch(/Expected rows with some spread to evaluate on \(FVU divides by their variance\) but the 3 rows read from .*same\.npy are all the same \[ERR_SAEKIT_ARG\]/);
    rmSync(dir, { recursive: true, force: true });
  });

  it('eval --json: the largest --max-tokens is taken, 4.0e1 reads as 40, --no-geometry leaves out the geometry fields, the histogram is printed; the text output prints the same numbers', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-evalflags-'));
    const [dIn, rows] = [6, 50];
    const sae = SparseAutoencoder.create({ dIn, numLatents: 12, k: 2, seed: 4 });
    await sae.save(path.join(dir, 'sae'));
    sae.dispose();
    const acts = await randomActs(path.join(dir, 'acts.npy'), rows, dIn, 11);
    const g = run(['eval', path.join(dir, 'sae'), acts, '--json', '--max-tokens', '9007199254740991']);
    expect(g.status, g.stderr).toBe(0);
    const withGeo = JSON.parse(g.stdout);
    expect(withGeo.tokens).toBe(rows);
    expect(typeof withGeo.mean_max_cos_dec).toBe('number');
    expect(withGeo.log10_density_histogram.counts).toHaveLength(50);
    // Numbers in exponent notation are decimal notation too: 4.0e1 is 40.
    const n = run(['eval', path.join(dir, 'sae'), acts, '--json', '--no-geometry', '--max-tokens', '4.0e1']);
    expect(n.status, n.stderr).toBe(0);
    const noGeo = JSON.parse(n.stdout);
    expect(noGeo.tokens).toBe(40);
    expect(noGeo).not.toHaveProperty('mean_max_cos_dec');
    expect(noGeo).not.toHaveProperty('mean_max_cos_enc');
    expect(noGeo).not.toHaveProperty('max_cos_dec');
    // Without --json: one 'name  value' line per scalar, integers as they are, others to 6 digits.
    const text = run(['eval', path.join(dir, 'sae'), acts, '--no-geometry', '--max-tokens', '40']);
    expect(text.status, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/^tokens\s+40$/m);
    expect(text.stdout).toMatch(new RegExp(`^fvu\\s+${noGeo.fvu.toPrecision(6).replace('.', '\\.')}$`, 'm'));
    expect(text.stdout).toMatch(new RegExp(`^l0\\s+${Number.isInteger(noGeo.l0) ? String(noGeo.l0) : noGeo.l0.toPrecision(6).replace('.', '\\.')}$`, 'm'));
    // The per-latent arrays only with --per-latent: plain arrays equal to evaluate()'s.
    expect(withGeo).not.toHaveProperty('feature_density');
    expect(withGeo).not.toHaveProperty('max_cos_enc');
    const p = run(['eval', path.join(dir, 'sae'), acts, '--json', '--per-latent']);
    expect(p.status, p.stderr).toBe(0);
    const per = JSON.parse(p.stdout);
    using loaded = await SparseAutoencoder.load(path.join(dir, 'sae'));
    const api = await metrics.evaluate(loaded, await openActivations(acts));
    expect(per.feature_density).toEqual(Array.from(api.feature_density));
    expect(per.max_cos_enc).toEqual(Array.from(api.max_cos_enc!));
    expect(per.max_cos_dec).toEqual(Array.from(api.max_cos_dec!));
    expect(per.feature_density).toHaveLength(12);
    expect(per.fvu).toBe(withGeo.fvu);
    const pn = JSON.parse(run(['eval', path.join(dir, 'sae'), acts, '--json', '--per-latent', '--no-geometry']).stdout);
    expect(pn.feature_density).toEqual(per.feature_density);
    expect(pn).not.toHaveProperty('max_cos_enc');
    expect(pn).not.toHaveProperty('max_cos_dec');
    const bare = run(['eval', path.join(dir, 'sae'), acts, '--per-latent']);
    expect(bare.status).toBe(1);
    expect(bare.stderr).toMatch(/Expected --json with --per-latent \(the per-latent arrays are printed in the JSON only\) \[ERR_SAEKIT_ARG\]/);
  });

  it('train --expansion rounds dIn x E to the nearest integer, and --k defaults to the 32 its help prints; --resume with --overwrite is refused', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-expansion-'));
    const [rows, dIn] = [256, 19];
    const acts = await randomActs(path.join(dir, 'acts.npy'), rows, dIn, 13);
    const help = run(['train', '--help']).stdout.replace(/\s+/g, ' ');
    expect(help).toMatch(/--k <k> active latents per row \(default: 32\)/);
    const out = path.join(dir, 'run');
    // 19 x 2.5 = 47.5 latents: rounded to 48 (not truncated to 47).
    const r = run(['train', acts, '--expansion', '2.5', '--out', out, '--batch', '128', '--tokens', '128', '--warmup', '0', '--json']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/dIn 19, 48 latents, k 32,/);
    using sae = await SparseAutoencoder.load(out);
    expect([sae.numLatents, sae.k]).toEqual([48, 32]);
    // --resume and --overwrite together are refused before anything is moved aside.
    const both = run(['train', acts, '--expansion', '2.5', '--out', out, '--batch', '128', '--tokens', '128', '--resume', '--overwrite']);
    expect(both.status).toBe(1);
    expect(both.stderr).toMatch(/Expected at most one of --resume and --overwrite but received both/);
    expect(existsSync(path.join(out, 'checkpoint', 'checkpoint.json'))).toBe(true);
    expect(existsSync(path.join(out, 'checkpoint.replaced'))).toBe(false);
  });
});

describe('saekit eval, compare and match-layers stop on SIGINT / SIGTERM', () => {
  /** An SAE saved in a fresh folder. */
  async function savedSae(dir: string, name: string, dIn: number, numLatents: number, seed: number): Promise<string> {
    using sae = SparseAutoencoder.create({ dIn, numLatents, k: 4, seed });
    await sae.save(path.join(dir, name));
    return path.join(dir, name);
  }
  const acts = (dir: string, rows: number, dIn: number): Promise<string> => randomActs(path.join(dir, `acts${dIn}.npy`), rows, dIn, rows + dIn);
  const stopped = /saekit: stopping \(Ctrl-C again to quit now\)\.\.\.\nsaekit: stopped; no results were written\n$/;

  it('eval: Ctrl-C during the max-cosine geometry (seconds at 16384 latents) exits 130 at once with a message', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-stop-'));
    const sae = await savedSae(dir, 'sae', 32, 16384, 1);
    const data = await acts(dir, 300, 32);
    const t0 = performance.now();
    const { code, stdout, stderr } = await interrupted(['eval', sae, data, '--json'], 300, 'SIGINT', 'computing the max-cosine geometry');
    expect(code, stderr).toBe(130);
    expect(stderr).toMatch(stopped);
    expect(stdout).toBe('');
    expect(performance.now() - t0).toBeLessThan(60_000);
  }, 90_000);

  it('compare: Ctrl-C while correlating exits 130 with a message and writes no --out; SIGTERM exits 143', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-stop-'));
    const sae = await savedSae(dir, 'sae', 16, 256, 3);
    const data = await acts(dir, 20000, 16);
    const out = path.join(dir, 'pairs.json');
    // --kind preacts over --max-bytes: 32 passes over the data, seconds in all.
    const args = ['compare', sae, sae, '--data', data, '--kind', 'preacts', '--method', 'argmax', '--max-bytes', '32768', '--runs', '2', '--out', out];
    const r = await interrupted(args, 300, 'SIGINT', 'correlating');
    expect(r.code, r.stderr).toBe(130);
    expect(r.stderr).toMatch(stopped);
    expect(r.stderr).not.toMatch(/^correlation: /m);
    expect(r.stdout).toBe('');
    expect(existsSync(out)).toBe(false);
    const t = await interrupted(args, 300, 'SIGTERM', 'correlating');
    expect(t.code, t.stderr).toBe(143);
    expect(t.stderr).toMatch(/saekit: SIGTERM received: stopping \(a second SIGTERM or Ctrl-C quits now\)\.\.\.\nsaekit: stopped; no results were written\n$/);
    expect(existsSync(out)).toBe(false);
  }, 120_000);

  it('match-layers: Ctrl-C during a step exits 130 with a message (once the solver returns) and starts no other step', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-stop-'));
    const saes = [await savedSae(dir, 'l0', 16, 4096, 1), await savedSae(dir, 'l1', 16, 4096, 2), await savedSae(dir, 'l2', 16, 4096, 3)];
    const out = path.join(dir, 'perms.json');
    const { code, stdout, stderr } = await interrupted(['match-layers', ...saes, '--out', out], 300, 'SIGINT', 'matching');
    expect(code, stderr).toBe(130);
    expect(stderr).toMatch(stopped);
    expect(stderr.match(/^matching /gm)).toHaveLength(1);
    expect(stdout).toBe('');
    expect(existsSync(out)).toBe(false);
  }, 90_000);
});

describe('progress line', () => {
  it('on a TTY the bar ends on the last step even when the throttle skipped its redraw', async () => {
    const { Progress } = await import('../lib/cli/progress.js');
    const writes: string[] = [];
    const tty = { isTTY: true, write: (s: string) => (writes.push(s), true) } as unknown as NodeJS.WriteStream;
    const p = new Progress(1000, tty, 60_000);
    const step = (tokens: number) => ({ step: tokens / 100, tokens, loss: 1, fvu: 0.5, l0: 8, numDead: 0, deadFraction: 0, auxkLoss: 0, lr: 1e-3, tokensPerSec: 1 });
    p.update(step(100));
    p.update(step(900));
    p.update(step(1000));
    expect(writes.join('')).not.toMatch(/100\.0%/);
    p.done();
    expect(writes.at(-2)).toMatch(/100\.0%/);
    expect(writes.at(-1)).toBe('\n');
  });

  it('the ETA reads h:mm:ss beyond an hour (minutes within the hour) and m:ss below, on fresh random durations', async () => {
    const { Progress } = await import('../lib/cli/progress.js');
    const seed = (Date.now() ^ 0x9b05688c) >>> 0;
    const next = lcg(seed);
    for (let trial = 0; trial < 20; trial++) {
      const writes: string[] = [];
      const pipe = { isTTY: false, write: (s: string) => (writes.push(s), true) } as unknown as NodeJS.WriteStream;
      // The first update has no elapsed time: its rate is the step's tokensPerSec (1), so the ETA
      // is the tokens left, a whole number of seconds.
      const eta = trial < 10 ? 3600 + Math.floor(next() * 400_000) : Math.floor(next() * 3600);
      const p = new Progress(eta, pipe, 0);
      p.update({ step: 0, tokens: 0, loss: 1, fvu: 0.5, l0: 8, numDead: 0, deadFraction: 0, auxkLoss: 0, lr: 1e-3, tokensPerSec: 1 });
      const [h, m, s] = [Math.floor(eta / 3600), Math.floor(eta / 60) % 60, eta % 60];
      const want = h > 0 ? `${h}:${String(m).padStart(2, '0')}:${String(s).padStart(2, '0')}` : `${m}:${String(s).padStart(2, '0')}`;
      expect(writes.at(-1), `seed ${seed}, eta ${eta} s`).toContain(`ETA ${want} `);
    }
  });

  it('on a TTY a step past the total draws a full bar at 100% (the last batch can overrun --tokens)', async () => {
    const { Progress } = await import('../lib/cli/progress.js');
    const writes: string[] = [];
    const tty = { isTTY: true, write: (s: string) => (writes.push(s), true) } as unknown as NodeJS.WriteStream;
    const total = 1000 + Math.floor(Math.random() * 1000);
    const p = new Progress(total, tty, 0);
    p.update({ step: 3, tokens: total + 1 + Math.floor(Math.random() * 100), loss: 1, fvu: 0.5, l0: 8, numDead: 0, deadFraction: 0, auxkLoss: 0, lr: 1e-3, tokensPerSec: 1 });
    expect(writes.at(-1)).toContain(`[${'#'.repeat(24)}] 100.0%`);
  });

  it('a job that reads its source several times (compare --kind preacts over --max-bytes) counts every pass in the total, so it ends at 100%', async () => {
    const { TokenProgress } = await import('../lib/cli/progress.js');
    const writes: string[] = [];
    const pipe = { isTTY: false, write: (s: string) => (writes.push(s), true) } as unknown as NodeJS.WriteStream;
    const p = new TokenProgress('correlating', 50_000, pipe, 0);
    // The 9th of 9 passes, nearly done: was "445.1k/50.0k tok".
    p.update(445_100, 9);
    expect(writes.at(-1)).toMatch(/^correlating: 445\.1k\/450\.0k tok .*ETA .* \(9 passes\)\n$/);
    p.update(20_000);
    expect(writes.at(-1)).toMatch(/^correlating: 20\.0k\/50\.0k tok .*ETA \d+:\d\d\n$/);
  });
});

describe('compare and match-layers in process: flags, refusals, output and release (mutation round)', () => {
  /** compare()'s flags as main.ts defaults them, with 2 runs on the CPU. */
  const flagsOf = (over: Partial<CompareFlags> & { data: string }): CompareFlags => ({
    kind: 'codes', method: 'hungarian', threshold: 0.1, top: 1, maxTokens: 100_000, runs: 2, maxPairs: DEFAULT_MAX_PAIRS, onNonFinite: 'error', device: 'cpu', ...over,
  });
  /** Runs fn with process.stdout and stderr captured; returns what it wrote to stdout. */
  async function captured(fn: () => Promise<void>): Promise<string> {
    const out: string[] = [];
    const so = vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => (out.push(String(s)), true));
    const se = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      await fn();
    } finally {
      so.mockRestore();
      se.mockRestore();
    }
    return out.join('');
  }
  /** The paths this process holds open file descriptors on (Linux). */
  const openFiles = () => readdirSync('/proc/self/fd').map((d) => { try { return readlinkSync(`/proc/self/fd/${d}`); } catch { return ''; } });
  /** SparseAutoencoder.load, spied: the SAEs compare / matchLayers load, to see that they dispose them. */
  function loads() {
    const got: SparseAutoencoder[] = [];
    const load = SparseAutoencoder.load.bind(SparseAutoencoder);
    const spy = vi.spyOn(SparseAutoencoder, 'load').mockImplementation(async (...args) => {
      const s = await load(...args);
      got.push(s);
      return s;
    });
    return { got, restore: () => spy.mockRestore() };
  }

  it('--out: a name beside an SAE folder is taken; a new file through a link to the SAE folder and a link to an input are refused even with --overwrite; an existing file only with --overwrite', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-out-'));
    mkdirSync(path.join(dir, 'sae'));
    writeFileSync(path.join(dir, 'sae', 'cfg.json'), '{}');
    writeFileSync(path.join(dir, 'acts.npy'), 'x');
    const inputs: OutInput[] = [{ sae: path.join(dir, 'sae') }, { flag: '--data', data: path.join(dir, 'acts.npy'), files: [path.join(dir, 'acts.npy')] }];
    // Names that start with the SAE folder's name but are not inside it.
    for (const name of ['sae.json', 'sae-pairs.json', 'saeB']) await expect(checkOutFile(path.join(dir, name), false, inputs), name).resolves.toBeUndefined();
    await expect(checkOutFile(path.join(dir, 'sae', 'pairs.json'), true, inputs)).rejects.toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/not to overwrite an input but '.*pairs\.json' is inside '/) }),
    );
    // A new file through a link to the SAE folder is inside the SAE folder.
    symlinkSync(path.join(dir, 'sae'), path.join(dir, 'saelink'));
    await expect(checkOutFile(path.join(dir, 'saelink', 'new.json'), true, inputs)).rejects.toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/not to overwrite an input but '.*saelink.new\.json' is inside '/) }),
    );
    // A link to the data file is the data file.
    symlinkSync(path.join(dir, 'acts.npy'), path.join(dir, 'link.json'));
    await expect(checkOutFile(path.join(dir, 'link.json'), true, inputs)).rejects.toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/not to overwrite an input but '.*link\.json' is '.*acts\.npy' \(--data\)/) }),
    );
    writeFileSync(path.join(dir, 'old.json'), 'keep');
    await expect(checkOutFile(path.join(dir, 'old.json'), false, inputs)).rejects.toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: `--out ${path.join(dir, 'old.json')} already exists; pass --overwrite to replace it, or choose another --out` }),
    );
    await expect(checkOutFile(path.join(dir, 'old.json'), true, inputs)).resolves.toBeUndefined();
    expect(readFileSync(path.join(dir, 'old.json'), 'utf8')).toBe('keep');
  });

  it('compare refuses --top without --method mutual, and activations of another width naming SAE A; it disposes both SAEs', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-cmp-'));
    using sae = SparseAutoencoder.create({ dIn: 6, numLatents: 12, k: 3, seed: 4 });
    const s = path.join(dir, 'sae');
    await sae.save(s);
    await io.writeNpy(path.join(dir, 'wide.npy'), { dtype: 'float32', shape: [20, 7], data: new Float32Array(140) });
    for (const method of ['argmax', 'hungarian'] as const) {
      await expect(compare(s, s, flagsOf({ data: path.join(dir, 'wide.npy'), method, top: 2 }))).rejects.toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: `Expected --top only with --method mutual but the method is ${method}` }),
      );
    }
    const l = loads();
    try {
      await expect(compare(s, s, flagsOf({ data: path.join(dir, 'wide.npy') }))).rejects.toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_SHAPE', message: `Expected the activations for SAE A (${s}, dIn 6) to have dIn 6 but ${path.join(dir, 'wide.npy')} has dIn 7` }),
      );
    } finally {
      l.restore();
    }
    expect(l.got).toHaveLength(2);
    for (const x of l.got) expect(x.disposed).toBe(true);
  });

  it('compare: --data-b with more rows runs up to --max-tokens = the shorter length, not one more; hungarian runs at --max-bytes = nA nB 4, not one byte less (nA nB 16 with --kind preacts); the data files are closed after', async () => {
    const seed = (Date.now() ^ 0x5be0cd19) >>> 0;
    const next = lcg(seed);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-cmp-'));
    const dIn = 5;
    const nA = 7 + 2 * Math.floor(next() * 3);
    const nB = nA + 2 + 2 * Math.floor(next() * 3);
    const rows = 61 + 2 * Math.floor(next() * 40);
    const data = Float32Array.from({ length: (rows + 1) * dIn }, () => next() - 0.5);
    const [fa, fb] = [path.join(dir, 'a.npy'), path.join(dir, 'b.npy')];
    await io.writeNpy(fa, { dtype: 'float32', shape: [rows, dIn], data: data.subarray(0, rows * dIn) });
    await io.writeNpy(fb, { dtype: 'float32', shape: [rows + 1, dIn], data });
    using a = SparseAutoencoder.create({ dIn, numLatents: nA, k: 3, seed: 1 + Math.floor(next() * 1000) });
    using b = SparseAutoencoder.create({ dIn, numLatents: nB, k: 3, seed: 1001 + Math.floor(next() * 1000) });
    await a.save(path.join(dir, 'a'));
    await b.save(path.join(dir, 'b'));
    const ctx = `seed ${seed}: nA ${nA}, nB ${nB}, ${rows} rows`;
    const run1 = (over: Partial<CompareFlags>) => captured(() => compare(path.join(dir, 'a'), path.join(dir, 'b'), flagsOf({ data: fa, dataB: fb, threshold: -1, json: true, ...over })));
    const ok = JSON.parse(await run1({ maxTokens: rows, maxBytes: nA * nB * 4 }));
    expect(ok.tokens, ctx).toBe(rows);
    expect(ok.method, ctx).toBe('hungarian');
    expect(ok.pairs_kept, ctx).toBeGreaterThan(0);
    if (existsSync('/proc/self/fd')) expect(openFiles().filter((p) => p === fa || p === fb), ctx).toEqual([]);
    await expect(run1({ maxTokens: rows + 1 }), ctx).rejects.toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_SHAPE', message: `Expected --data and --data-b to hold the same tokens (aligned one by one) but ${fa} has ${rows} rows and ${fb} has ${rows + 1}` }),
    );
    await expect(run1({ maxTokens: rows, maxBytes: nA * nB * 4 - 1 }), ctx).rejects.toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_MEMORY', message: expect.stringMatching(new RegExp(`^--method hungarian needs the full ${nA} x ${nB} correlation matrix \\(${nA * nB * 4} bytes\\), over --max-bytes ${nA * nB * 4 - 1};`)) }),
    );
    // --kind preacts holds 16 bytes an entry: refused one byte below nA nB 16, by compare (naming the flag), before reading.
    await expect(run1({ maxTokens: rows, kind: 'preacts', maxBytes: nA * nB * 16 - 1 }), ctx).rejects.toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_MEMORY', message: expect.stringMatching(new RegExp(`^--method hungarian needs the full ${nA} x ${nB} correlation matrix \\(${nA * nB * 16} bytes with --kind preacts: 16 per entry\\), over --max-bytes ${nA * nB * 16 - 1};`)) }),
    );
  });

  it("compare: without --max-bytes hungarian's matrix limit is the documented 1 GiB (2^30 bytes), refused before reading data", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-cmp-'));
    // 16384 x 16385 float32 entries: just over 2^30 bytes. dIn 2 keeps the SAEs small.
    for (const [name, n] of [['a', 16384], ['b', 16385]] as const) {
      using s = SparseAutoencoder.create({ dIn: 2, numLatents: n, k: 1, seed: 7 });
      await s.save(path.join(dir, name));
    }
    await io.writeNpy(path.join(dir, 'acts.npy'), { dtype: 'float32', shape: [4, 2], data: new Float32Array(8) });
    await expect(compare(path.join(dir, 'a'), path.join(dir, 'b'), flagsOf({ data: path.join(dir, 'acts.npy') }))).rejects.toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_MEMORY', message: expect.stringMatching(new RegExp(`^--method hungarian needs the full 16384 x 16385 correlation matrix \\(${16384 * 16385 * 4} bytes\\), over --max-bytes ${2 ** 30};`)) }),
    );
  });

  it('compare: the text output prints the --json summary (numbers to 5 significant digits without trailing zeros, no kept pair as none); a B feature anti-correlated with every A feature has its best r, -1, in mean_max_correlation', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-cmp-'));
    const seed = (Date.now() ^ 0x6a09e667) >>> 0;
    const next = lcg(seed);
    const dIn = 4;
    const rows = 101 + 2 * Math.floor(next() * 50);
    const f = path.join(dir, 'acts.npy');
    await io.writeNpy(f, { dtype: 'float32', shape: [rows, dIn], data: Float32Array.from({ length: rows * dIn }, () => next() - 0.5) });
    // One latent each; B's encoder is A's negated, so their pre-activations have r = -1.
    const w = Float32Array.from({ length: dIn }, () => next() - 0.5);
    const weights = (sign: number) => ({ W_enc: w.map((x) => sign * x), b_enc: Float32Array.of(0.1 * sign), W_dec: Float32Array.from(w), b_dec: new Float32Array(dIn) });
    using a = SparseAutoencoder.fromWeights(weights(1), { k: 1 });
    using b = SparseAutoencoder.fromWeights(weights(-1), { k: 1 });
    await a.save(path.join(dir, 'a'));
    await b.save(path.join(dir, 'b'));
    const fmt = (v: unknown): string =>
      typeof v === 'number' ? String(Number(v.toPrecision(5))) : v === null ? 'none (no pair kept)' : typeof v === 'object' ? Object.entries(v as object).map(([k, x]) => `${k} ${fmt(x)}`).join(', ') : String(v);
    const check = async (pa: string, pb: string, over: Partial<CompareFlags>) => {
      const flags = flagsOf({ data: f, ...over });
      const summary = JSON.parse(await captured(() => compare(pa, pb, { ...flags, json: true }))) as Record<string, unknown>;
      const text = await captured(() => compare(pa, pb, flags));
      const width = Math.max(...Object.keys(summary).map((k) => k.length));
      expect(text, `seed ${seed}`).toBe(Object.entries(summary).map(([k, v]) => `${k.padEnd(width)}  ${fmt(v)}\n`).join(''));
      return { summary, text };
    };
    const neg = await check(path.join(dir, 'a'), path.join(dir, 'b'), { kind: 'preacts' });
    expect(Math.abs((neg.summary.mean_max_correlation as number) + 1), `seed ${seed}`).toBeLessThan(1e-5);
    expect(neg.summary.pairs_kept).toBe(0);
    expect(neg.text).toMatch(/^mean_pair_correlation +none \(no pair kept\)$/m);
    // Larger random SAEs: scores and p-values that are not integers.
    using c = SparseAutoencoder.create({ dIn, numLatents: 9, k: 2, seed: 1 + Math.floor(next() * 1000) });
    using d = SparseAutoencoder.create({ dIn, numLatents: 11, k: 2, seed: 1001 + Math.floor(next() * 1000) });
    await c.save(path.join(dir, 'c'));
    await d.save(path.join(dir, 'd'));
    const pos = await check(path.join(dir, 'c'), path.join(dir, 'd'), { method: 'argmax', threshold: -1, maxPairs: 7 });
    expect(pos.text).toMatch(/^rsa +score \S+, shuffled_mean \S+, p_value \S+$/m);
  });

  it("match-layers passes --encoder and --no-fold to saeMatch: its mean_mse is the library's for each combination", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-ml-'));
    const seed = (Date.now() ^ 0x3c6ef372) >>> 0;
    const next = lcg(seed);
    const [n, d] = [7 + 2 * Math.floor(next() * 4), 5];
    // Encoders independent of the decoders (create() ties them at init, which makes the encoder a no-op here).
    const mk = () =>
      SparseAutoencoder.fromWeights(
        { W_enc: Float32Array.from({ length: d * n }, () => next() - 0.5), b_enc: new Float32Array(n), W_dec: Float32Array.from({ length: n * d }, () => next() - 0.5), b_dec: new Float32Array(d) },
        { k: 2 },
      );
    using s0 = mk();
    using s1 = mk();
    await s0.save(path.join(dir, 'l0'));
    await s1.save(path.join(dir, 'l1'));
    const seen = new Set<number>();
    for (const encoder of [false, true]) {
      for (const fold of [true, false]) {
        const out = await captured(() => matchLayers([path.join(dir, 'l0'), path.join(dir, 'l1')], { device: 'cpu', json: true, encoder, fold }));
        const want = await features.saeMatch(s0, s1, { encoder, fold });
        const [step] = JSON.parse(out) as { mean_mse: number; matched: number }[];
        expect(step!.mean_mse, `seed ${seed}: encoder ${encoder}, fold ${fold}`).toBe(want.meanMse);
        expect(step!.matched).toBe(n);
        seen.add(want.meanMse);
      }
    }
    // The encoder's parameters change the cost: the flag is not a no-op on these SAEs.
    expect(seen.size, `seed ${seed}`).toBeGreaterThan(1);
  });

  it('match-layers refuses fewer than 2 SAEs and SAEs of other sizes naming both, and disposes every SAE it loaded', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-ml-'));
    const save = async (name: string, dIn: number, numLatents: number) => {
      using s = SparseAutoencoder.create({ dIn, numLatents, k: 2, seed: 3 });
      await s.save(path.join(dir, name));
      return path.join(dir, name);
    };
    const [p0, p1, p2] = [await save('l0', 5, 8), await save('l1', 5, 9), await save('l2', 6, 8)];
    await expect(matchLayers([p0], { device: 'cpu' })).rejects.toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: 'Expected at least 2 SAEs for match-layers but received 1' }),
    );
    for (const [other, dIn, n] of [[p1, 5, 9], [p2, 6, 8]] as const) {
      const l = loads();
      try {
        await expect(matchLayers([p0, p0, other], { device: 'cpu' })).rejects.toThrow(
          expect.objectContaining({ code: 'ERR_SAEKIT_SHAPE', message: `Expected SAEs of the same size for match-layers but ${p0} has dIn 5, 8 latents and ${other} has dIn ${dIn}, ${n} latents` }),
        );
      } finally {
        l.restore();
      }
      expect(l.got).toHaveLength(3);
      for (const x of l.got) expect(x.disposed).toBe(true);
    }
  });
  it('the summary (--json, --out) records what was compared and every option that changes the numbers; match-layers records --encoder and --no-fold per step', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-sum-'));
    const seed = (Date.now() ^ 0x1f83d9ab) >>> 0;
    const next = lcg(seed);
    const dIn = 5;
    const [nA, nB] = [7 + Math.floor(next() * 5), 6 + Math.floor(next() * 5)];
    const f = path.join(dir, 'acts.npy');
    await io.writeNpy(f, { dtype: 'float32', shape: [300, dIn], data: Float32Array.from({ length: 300 * dIn }, () => next() - 0.5) });
    for (const [name, n] of [['a', nA], ['b', nB]] as const) {
      using s = SparseAutoencoder.create({ dIn, numLatents: n, k: 2, seed: 1 + Math.floor(next() * 1e6) });
      await s.save(path.join(dir, name));
    }
    const [pa, pb] = [path.join(dir, 'a'), path.join(dir, 'b')];
    for (const over of [{ kind: 'preacts', method: 'mutual', top: 3, runs: 3 }, { kind: 'codes', method: 'argmax', runs: 2 }] as const) {
      const out = path.join(dir, `${over.kind}.json`);
      const summary = JSON.parse(await captured(() => compare(pa, pb, { ...flagsOf({ data: f, ...over }), json: true, out }))) as Record<string, unknown>;
      expect(summary, `seed ${seed}`).toMatchObject({ sae_a: pa, sae_b: pb, data: f, kind: over.kind, n_a: nA, n_b: nB, method: over.method, runs: over.runs });
      expect(summary.top).toBe(over.method === 'mutual' ? 3 : undefined);
      expect(summary.data_b).toBeUndefined();
      const { pairs, ...written } = JSON.parse(readFileSync(out, 'utf8')) as Record<string, unknown>;
      expect(written).toEqual(summary);
      expect(Array.isArray(pairs)).toBe(true);
    }
    for (const [encoder, fold] of [[true, false], [false, true]] as const) {
      const out = path.join(dir, `ml-${encoder}.json`);
      const steps = JSON.parse(await captured(() => matchLayers([pa, pa, pa], { device: 'cpu', json: true, out, encoder, fold }))) as Record<string, unknown>[];
      expect(steps.map((st) => [st.encoder, st.fold])).toEqual([[encoder, fold], [encoder, fold]]);
      const written = JSON.parse(readFileSync(out, 'utf8')) as Record<string, unknown>[];
      expect(written.map((st) => [st.encoder, st.fold, (st.permutation as number[]).length])).toEqual([[encoder, fold, nA], [encoder, fold, nA]]);
      // The text names what was matched; TopK SAEs have no thresholds to fold.
      const text = await captured(() => matchLayers([pa, pa], { device: 'cpu', encoder, fold }));
      expect(text).toBe(`${pa} -> ${pa}: mean MSE of matched ${encoder ? 'decoder and encoder' : 'decoder'} parameters 0.0000\n`);
    }
  });

  it('SVCCA skipped for its cost says how to run it: where even its cheapest run is over --svcca-max-work, the value that runs it, which then does', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-svcca-'));
    const seed = (Date.now() ^ 0x5be0cd19) >>> 0;
    const next = lcg(seed);
    const dIn = 6 + Math.floor(next() * 4);
    const n = 3 * dIn + Math.floor(next() * 5);
    const f = path.join(dir, 'acts.npy');
    await io.writeNpy(f, { dtype: 'float32', shape: [200, dIn], data: Float32Array.from({ length: 200 * dIn }, () => next() - 0.5) });
    for (const name of ['a', 'b']) {
      using s = SparseAutoencoder.create({ dIn, numLatents: n, k: 3, seed: 1 + Math.floor(next() * 1e6) });
      await s.save(path.join(dir, name));
    }
    const run = async (over: Partial<CompareFlags>) =>
      JSON.parse(await captured(() => compare(path.join(dir, 'a'), path.join(dir, 'b'), { ...flagsOf({ data: f, kind: 'preacts', threshold: -1, ...over }), json: true }))) as { svcca: { skipped?: string; score?: number }; similarity_pairs: { used: number } };
    // The work estimate (compare.ts): 15 n (dA^2 + dB^2) + runs (n dA dB + dA dB min(dA, dB)).
    const work = (pairs: number, runs: number) => 15 * pairs * 2 * dIn * dIn + runs * (pairs * dIn * dIn + dIn ** 3);
    const least = work(dIn + 1, 1);
    const low = await run({ svccaMaxWork: least - 1 });
    expect(low.similarity_pairs.used, `seed ${seed}`).toBe(n);
    const m = /^too slow at dIn (\d+) and (\d+): even its cheapest run \((\d+) pairs, more than the dimensions, with --runs 1\) takes about (\S+) multiply-adds \(limit \S+, --svcca-max-work\); pass --svcca-max-work (\S+) to run it on these (\d+) pairs with --runs 2$/.exec(low.svcca.skipped ?? '');
    expect(m, `seed ${seed}: ${low.svcca.skipped}`).not.toBeNull();
    expect([Number(m![1]), Number(m![2]), Number(m![3]), Number(m![6])]).toEqual([dIn, dIn, dIn + 1, n]);
    expect(Math.abs(Number(m![4]) - least)).toBeLessThanOrEqual(0.05 * least);
    const suggested = Number(m![5]);
    expect(suggested).toBeGreaterThanOrEqual(work(n, 2));
    expect((await run({ svccaMaxWork: suggested })).svcca.score, `seed ${seed}`).toEqual(expect.any(Number));
    // Between the two: fewer pairs or runs would do.
    const mid = await run({ svccaMaxWork: least + 1 });
    expect(mid.svcca.skipped).toMatch(/^too slow: about \S+ multiply-adds for \d+ pairs .*; lower --runs or --max-pairs, or raise --svcca-max-work$/);
  });

  it('a flag that takes a value followed by another flag, or given twice, is refused naming it; negative numbers and --flag=value pass', () => {
    const refused = (args: string[], message: string) => {
      const r = run(args);
      expect([r.status, r.stdout, r.stderr], args.join(' ')).toEqual([1, '', `saekit: ${message} [ERR_SAEKIT_ARG]\n`]);
    };
    refused(['compare', 'a', 'b', '--data', 'x.npy', '--out', '--json'], "Expected a value after --out but received the flag '--json' (for a value that starts with '-', write --out=VALUE)");
    refused(['match-layers', 'a', 'c', '--out', '--overwrite'], "Expected a value after --out but received the flag '--overwrite' (for a value that starts with '-', write --out=VALUE)");
    refused(['compare', 'a', 'b', '--data', 'x.npy', '--method', 'argmax', '--method=mutual'], "Expected --method at most once but received it 2 times ('argmax', 'mutual')");
    refused(['train', 'd.npy', '--out', 'o', '--latents', '8', '--out', 'p'], "Expected --out at most once but received it 2 times ('o', 'p')");
    // Past the check: the command runs and fails on the missing data, not on the flags; boolean flags may repeat.
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-flags-'));
    const r = run(['compare', path.join(dir, 'a'), path.join(dir, 'b'), '--data', path.join(dir, 'x.npy'), '--threshold', '-0.5', `--out=${path.join(dir, '-o.json')}`, '--json', '--json']);
    expect([r.status, r.stderr]).toEqual([1, `saekit: Expected an existing file, folder or glob pattern for --data but '${path.join(dir, 'x.npy')}' does not exist [ERR_SAEKIT_ARG]\n`]);
  });

  it('a signal that comes while the results are written ends the command with 130 / 143 and says the results were written', async () => {
    const { stoppable } = await import('../lib/cli/stop.js');
    const errs: string[] = [];
    const se = vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => (errs.push(String(s)), true));
    const before = process.exitCode;
    try {
      for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
        errs.length = 0;
        process.exitCode = undefined;
        await stoppable(async (signal) => {
          process.emit(sig);
          expect(signal.aborted).toBe(true);
        });
        expect(process.exitCode).toBe(code);
        expect(errs.at(-1)).toBe('saekit: stopped after the results were written\n');
      }
      // Without a signal nothing is said and the code stays.
      process.exitCode = undefined;
      errs.length = 0;
      await stoppable(async () => undefined);
      expect([process.exitCode, errs]).toEqual([undefined, []]);
    } finally {
      se.mockRestore();
      process.exitCode = before;
    }
  });

  it('process.exit() during writeFileAtomic (a second Ctrl-C) removes its temporary file', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-tmp-'));
    const script = path.join(dir, 'exit-mid-write.mts');
    const target = path.join(dir, 'out.json');
    writeFileSync(
      script,
      `import { readdirSync } from 'node:fs';\n` +
        `import { writeFileAtomic } from ${JSON.stringify(pathToFileURL(path.join(packageRoot, 'lib', 'io', 'source.ts')).href)};\n` +
        `void writeFileAtomic(${JSON.stringify(target)}, 'x'.repeat(400e6));\n` +
        `const t = setInterval(() => { if (readdirSync(${JSON.stringify(dir)}).some((n) => n.endsWith('.tmp'))) { clearInterval(t); process.exit(7); } }, 0);\n`,
    );
    const r = spawnSync(process.execPath, ['--import', 'tsx', script], { cwd: packageRoot, encoding: 'utf8', timeout: 60_000 });
    expect([r.status, r.stderr]).toEqual([7, '']);
    expect(readdirSync(dir).sort()).toEqual(['exit-mid-write.mts']);
  });

  it('match-layers states the memory of small assignments in MiB, large ones in GiB; the progress line ends on its last count', async () => {
    const { bytesShown } = await import('../lib/cli/compare.js');
    expect([bytesShown(12 * 2048 * 2048), bytesShown(12), bytesShown(2 ** 30 - 1), bytesShown(3 * 2 ** 30)]).toEqual(['48.0 MiB', '0.1 MiB', '1024.0 MiB', '3.0 GiB']);
    const { TokenProgress } = await import('../lib/cli/progress.js');
    const writes: string[] = [];
    const tty = { isTTY: true, write: (s: string) => (writes.push(s), true) } as unknown as NodeJS.WriteStream;
    const clock = { t: 1000 };
    const now = vi.spyOn(performance, 'now').mockImplementation(() => clock.t);
    try {
      const p = new TokenProgress('correlating', 60_000, tty, 200);
      clock.t += 250;
      p.update(1000); // drawn: 200 ms since the start
      clock.t += 50;
      p.update(57_300); // throttled
      p.update(60_000); // throttled
      expect(writes).toEqual([expect.stringMatching(/^\rcorrelating: 1\.0k\/60\.0k tok/)]);
      p.done();
      expect(writes.slice(1)).toEqual([expect.stringMatching(/^\rcorrelating: 60\.0k\/60\.0k tok/), '\n']);
      // Drawn last already: done() only ends the line.
      const q = new TokenProgress('correlating', 10, tty, 200);
      clock.t += 250;
      q.update(10);
      q.done();
      expect(writes.slice(3)).toEqual([expect.stringMatching(/^\rcorrelating: 10\/10 tok/), '\n']);
    } finally {
      now.mockRestore();
    }
  });
  it('train --resume with --log after a stop before the first checkpoint starts over (the log was refused); a damaged checkpoint is named by --resume and replaced by --overwrite', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cli-resume-'));
    const acts = await randomActs(path.join(dir, 'acts.npy'), 512, 8, (Date.now() ^ 0x27d4eb2f) >>> 0);
    const out = path.join(dir, 'run');
    const log = path.join(dir, 'log.jsonl');
    // What a run killed before its first checkpoint leaves: its log, an --out without a checkpoint.
    mkdirSync(out);
    writeFileSync(log, '{"step":1}\n{"step":2}\n');
    const args = ['train', acts, '--latents', '16', '--k', '2', '--out', out, '--batch', '64', '--epochs', '1', '--warmup', '1', '--log', log, '--device', 'cpu'];
    const r = run([...args, '--resume']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain(`saekit: no checkpoint in ${path.join(out, 'checkpoint')}: starting a new run (--log ${log} starts over)`);
    const steps = readFileSync(log, 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { step: number }).step);
    expect(steps).toEqual(Array.from({ length: 8 }, (_, i) => i + 1));
    // A checkpoint.json that cannot be resumed: --resume names it, --overwrite starts over.
    mkdirSync(path.join(out, 'checkpoint'), { recursive: true });
    writeFileSync(path.join(out, 'checkpoint', 'checkpoint.json'), '{"version": 1, "step": -3}');
    const bad = run([...args, '--resume']);
    expect([bad.status, bad.stderr]).toEqual([1, expect.stringMatching(/checkpoint\.json: (not a saekit checkpoint|field step must be)[^\n]*\[ERR_SAEKIT_FORMAT\]\n$/)]);
    const over = run([...args, '--overwrite']);
    expect(over.status, over.stderr).toBe(0);
  }, 60_000);
});
