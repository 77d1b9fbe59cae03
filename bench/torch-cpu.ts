/**
 * torch-cpu: saekit's TopK SAE training step on the CPU against the PyTorch reference step
 * (bench/gpu/torch_step.py: sparsify's algorithm, its sparse encoder backward by index_add and
 * its embedding-bag decoder, torch Adam, decoder projection and renorm) on the same CPU, with the
 * same number of threads and the same shapes, in one run. Both variants of the reference are timed:
 * 'torch' (sparsify's sparse encoder backward) and 'torch-dense' (autograd's dense one, which a
 * CPU may run faster); "saekit / best torch" compares with the faster. saekit's steps are timed
 * before and after the Python process (its median over both, so that drift of a shared machine
 * during the minutes the reference takes falls on both sides). float32 throughout: autocast to
 * bf16 is the reference's CUDA-only setting, and saekit's CPU step is float32.
 * Beside each step: its side's encoder-shaped GEMM alone ('gemm ms': saekit's GEMM, torch's
 * torch.mm, each [batch, dIn] x [dIn, numLatents] into a preallocated output without a bias; F.linear
 * as the step calls it is in the results file as linear_ms) and the TopK selection ('topk ms':
 * saekit's select phase inside the step, bias + ReLU + TopK of every row; torch.topk alone on the
 * same matrix: the ReLU'd pre-activations of saekit's first step, written to a temporary file).
 * The interpreter: SAEKIT_PYTHON, else the first of python3 and /usr/bin/python3 that imports
 * torch (Debian: apt-get install python3-torch); without one the benchmark says so and exits 0.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { backend, SparseAutoencoder } from '../lib/index.js';
import { native } from '../lib/native/index.js';
import { type Benchmark, lcgArray, median, type Row } from './harness.js';

interface Shape {
  dIn: number;
  numLatents: number;
  k: number;
  batch: number;
}

const SHAPES: Shape[] = [
  { dIn: 512, numLatents: 8192, k: 32, batch: 2048 },
  { dIn: 768, numLatents: 24576, k: 32, batch: 4096 },
];
const QUICK: Shape[] = [{ dIn: 256, numLatents: 4096, k: 32, batch: 1024 }];

const SCRIPT = path.join(path.dirname(fileURLToPath(import.meta.url)), 'gpu', 'torch_step.py');

/** The interpreter to run the reference with and why, or the reason there is none. */
export function findTorchPython(env: NodeJS.ProcessEnv = process.env): { python?: string; reason: string } {
  const candidates = env.SAEKIT_PYTHON ? [env.SAEKIT_PYTHON] : ['python3', '/usr/bin/python3'];
  const tried: string[] = [];
  for (const p of candidates) {
    const r = spawnSync(p, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8', timeout: 120_000 });
    if (r.status === 0) return { python: p, reason: `${p} (torch ${r.stdout.trim()})` };
    tried.push(`${p}: ${r.error ? r.error.message : (r.stderr.trim().split('\n').pop() ?? `exit ${r.status}`)}`);
  }
  return { reason: `no python with torch (${tried.join('; ')}); set SAEKIT_PYTHON, or apt-get install python3-torch` };
}

/** Parses the reference's `BENCH key=value ...` lines. */
export function parseBenchLines(text: string): Record<string, string>[] {
  return text
    .split('\n')
    .filter((l) => l.startsWith('BENCH '))
    .map((l) => Object.fromEntries(l.slice(6).trim().split(/\s+/).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)])));
}

/**
 * The OPENBLAS_CORETYPE the reference runs with: where saekit found OpenBLAS on its SSE-only
 * kernels on an AVX2 / AVX-512 CPU (a CPU model OpenBLAS does not know, as on VMs that hide it),
 * torch's GEMM (Debian's torch calls OpenBLAS) would run on them too, 3-4x slower than the CPU
 * allows: the core that matches the CPU's SIMD level. A user's own OPENBLAS_CORETYPE is kept.
 */
export function referenceCoretype(info = backend.info(), env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (env.OPENBLAS_CORETYPE) return env.OPENBLAS_CORETYPE;
  if (!info.blas.reason?.startsWith('OpenBLAS chose its')) return undefined;
  return info.simd === 'avx512' ? 'SkylakeX' : info.simd === 'avx2' ? 'Haswell' : undefined;
}

/** Runs the reference, echoing its stderr, and returns its stdout; rejects on a failed exit. */
function runReference(python: string, args: string[], coretype: string | undefined): Promise<string> {
  return new Promise((resolve, reject) => {
    const env = coretype ? { ...process.env, OPENBLAS_CORETYPE: coretype } : process.env;
    const child = spawn(python, [SCRIPT, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => {
      out += s;
      // Progress: each timed variant prints a line when it is done (minutes in all at full size).
      for (const l of s.split('\n')) if (l.startsWith('BENCH ') || l.startsWith('torch ')) process.stderr.write(`  reference: ${l.slice(0, 160)}\n`);
    });
    child.stderr.setEncoding('utf8').on('data', (s: string) => {
      err += s;
    });
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolve(out);
      else reject(new Error(`${python} ${path.relative(process.cwd(), SCRIPT)} exited with ${code}:\n${err.slice(-2000)}`));
    });
  });
}

/**
 * `n` timed steps (seconds) after `warmup` untimed ones, on the CPU, each followed by one
 * encoder-shaped GEMM ([batch, dIn] x [dIn, numLatents], float32) through saekit's GEMM.
 */
async function saekitSteps(sh: Shape, n: number, warmup: number): Promise<{ step: number[]; gemm: number[]; select: number[] }> {
  using sae = SparseAutoencoder.create({ dIn: sh.dIn, numLatents: sh.numLatents, k: sh.k, device: 'cpu', seed: 1 });
  using opt = sae.adam();
  const xs = [lcgArray(sh.batch * sh.dIn, 11), lcgArray(sh.batch * sh.dIn, 12)];
  const w = lcgArray(sh.numLatents * sh.dIn, 13);
  const c = new Float32Array(sh.batch * sh.numLatents);
  const impl = backend.info().blas.name === 'builtin' ? 'builtin' : 'blas';
  const gemm = () => native()._gemmDirect(impl, false, true, sh.batch, sh.numLatents, sh.dIn, xs[0]!, w, c);
  for (let i = 0; i < Math.max(1, warmup); i++) {
    await opt.step(xs[i % 2]!);
    gemm();
  }
  const step: number[] = [];
  const g: number[] = [];
  const select: number[] = [];
  for (let i = 0; i < n; i++) {
    let t0 = process.hrtime.bigint();
    const stats = await opt.step(xs[i % 2]!);
    step.push(Number(process.hrtime.bigint() - t0) / 1e9);
    select.push(stats.seconds.select);
    t0 = process.hrtime.bigint();
    gemm();
    g.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return { step, gemm: g, select };
}


/**
 * Writes the ReLU'd pre-activations of saekit's first timed step (the same SAE and batch as
 * saekitSteps) as raw float32 [batch, numLatents] to `file`, for torch.topk to select from.
 */
async function writeSelectMatrix(sh: Shape, file: string): Promise<void> {
  using sae = SparseAutoencoder.create({ dIn: sh.dIn, numLatents: sh.numLatents, k: sh.k, device: 'cpu', seed: 1 });
  const pre = await sae.preActivations(lcgArray(sh.batch * sh.dIn, 11));
  for (let i = 0; i < pre.length; i++) if (!(pre[i]! > 0)) pre[i] = 0;
  writeFileSync(file, pre);
}

export const torchCpu: Benchmark = {
  name: 'torch-cpu',
  description: "saekit's CPU training step vs the PyTorch reference step (sparsify's algorithm) on the same CPU, tokens/s",
  async run(opts) {
    const { python, reason } = findTorchPython();
    if (!python) {
      process.stderr.write(`torch-cpu: skipped: ${reason}\n`);
      return { rows: [{ shape: '-', impl: 'skipped', note: reason }], meta: { skipped: reason } };
    }
    const threads = backend.info().threads;
    const shapes = opts.quick ? QUICK : SHAPES;
    // The reference at full size takes seconds a step on two cores: at most 5 timed steps a variant.
    const reps = Math.min(opts.repeats, opts.quick ? opts.repeats : 5);
    const coretype = referenceCoretype();
    process.stderr.write(`torch-cpu: reference ${reason}, ${threads} threads (saekit's), ${reps} timed steps a variant${coretype ? `, OPENBLAS_CORETYPE=${coretype}` : ''}\n`);
    const before = new Map<Shape, { step: number[]; gemm: number[]; select: number[] }>();
    for (const sh of shapes) before.set(sh, await saekitSteps(sh, opts.repeats, opts.warmup));
    const shapeArg = shapes.map((s) => `${s.dIn},${s.numLatents},${s.k},${s.batch}`).join(';');
    const tmp = mkdtempSync(path.join(os.tmpdir(), 'saekit-topk-'));
    let out: string;
    try {
      const matrices = shapes.map((_, i) => path.join(tmp, `pre-${i}.f32`));
      for (let i = 0; i < shapes.length; i++) await writeSelectMatrix(shapes[i]!, matrices[i]!);
      out = await runReference(python, ['--cpu', '--threads', String(threads), '--reps', String(reps), '--shapes', shapeArg, '--topk-matrices', matrices.join(';')], coretype);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
    const lines = parseBenchLines(out);
    const rows: Row[] = [];
    const perShape: Record<string, unknown>[] = [];
    for (const sh of shapes) {
      const after = await saekitSteps(sh, opts.repeats, opts.warmup);
      const times = [...before.get(sh)!.step, ...after.step];
      const gemms = [...before.get(sh)!.gemm, ...after.gemm];
      const ours = median(times);
      const ourGemm = median(gemms);
      const ourSelect = median([...before.get(sh)!.select, ...after.select]);
      const label = `${sh.dIn}x${sh.numLatents} k${sh.k} b${sh.batch}`;
      const ref = lines.filter((l) => Number(l.dIn) === sh.dIn && Number(l.numLatents) === sh.numLatents && Number(l.k) === sh.k && Number(l.batch) === sh.batch);
      const byImpl = Object.fromEntries(ref.map((l) => [l.impl!, { step: Number(l.step_ms), gemm: Number(l.gemm_ms), topk: Number(l.topk_same_ms ?? l.topk_f32_ms) }]));
      const variants = ['torch', 'torch-dense'];
      if (!variants.every((v) => byImpl[v]?.step! > 0 && byImpl[v]?.gemm! > 0)) throw new Error(`the reference printed no step or GEMM time for ${label}:\n${out}`);
      const best = Math.min(...variants.map((v) => byImpl[v]!.step));
      const spread = `${(((Math.max(...times) - Math.min(...times)) / ours) * 100).toFixed(0)}%`;
      rows.push({ shape: label, impl: 'saekit', 'step ms': ours * 1e3, 'tok/s': sh.batch / ours, 'time / saekit': 1, 'gemm ms': ourGemm * 1e3, 'step / gemm': ours / ourGemm, 'topk ms': ourSelect * 1e3, spread });
      for (const v of variants) {
        const { step, gemm, topk } = byImpl[v]!;
        rows.push({ shape: label, impl: v, 'step ms': step, 'tok/s': sh.batch / (step / 1e3), 'time / saekit': step / 1e3 / ours, 'gemm ms': gemm, 'step / gemm': step / gemm, 'topk ms': topk, spread: '-' });
      }
      process.stderr.write(`${label}: saekit / best torch = ${(best / 1e3 / ours).toFixed(2)}x tokens/s\n`);
      perShape.push({ ...sh, saekitSeconds: times, saekitGemmSeconds: gemms, torch: ref, saekitOverBestTorch: best / 1e3 / ours });
    }
    return { rows, meta: { python: reason, threads, reps, openblasCoretype: coretype ?? null, shapes: perShape } };
  },
};
