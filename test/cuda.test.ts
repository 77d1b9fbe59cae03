/**
 * The CUDA backend. Without a GPU (CI) the plugin, when built, must load and report a clean
 * reason, 'auto' must pick the CPU and an explicit 'cuda' must throw ERR_SAEKIT_DEVICE naming
 * the missing piece. With a GPU, the SAE ops on CUDA are compared with the CPU on fresh random
 * inputs (test/helpers/device-suite.ts): fp32 within 1e-4 relative (cuBLAS may sum in another
 * order; TopK indices equal except near-ties), bf16 within the loss tolerances of bf16 inputs
 * (8 mantissa bits: ~0.4% per product, losses within 2%).
 *
 * Tensors on CUDA run the tensor, random, GEMM and conversion suites (small shapes):
 * - conversions, zeros, uploads/downloads and uniform fills are exact, so bit for bit;
 * - normal fills are float64 Box-Muller rounded once to float32; CUDA's float64 log/sin/cos are
 *   within 2 float64 ulps of libm's, which can move a value across a float32 rounding boundary
 *   only rarely (~2^-28 per value), and then by 1 float32 ulp: allowed 1 ulp;
 * - GEMM (cuBLAS Sgemm, float32 in its default math mode) is held to the float32 forward error
 *   bound of any summation order, gamma_K sum |a b| + one rounding (test/helpers/reference.ts),
 *   i.e. ~K * 6e-8 relative to sum |a b|, tighter than a blanket 1e-5 * K; TF32 (which a user
 *   can force with NVIDIA_TF32_OVERRIDE=1) would not meet it, and must not be on for this test.
 *
 * With two or more devices, cuda:1 runs the same suites, and test/helpers/multi-device-suite.ts
 * moves tensors between cuda:0 and cuda:1, interleaves ops and SAEs on both, and checks that ops
 * mixing them are refused; with one device these blocks are skipped, saying so.
 *
 * CI runs this file once more against the CUDA plugin built on the CPU emulation of the CUDA
 * runtime (native/cuda/emu; SAEKIT_CUDA_PLUGIN and SAEKIT_CUBLAS point at it) with two emulated
 * devices (SAEKIT_EMU_DEVICES=2), so the kernels' logic and the whole device path (fp32 and
 * bf16 encoder GEMMs, the full parity suite on cuda:1 too) are checked on every run, without a GPU. The emulation fails any launch, copy or
 * GEMM that touches another device's memory or stream, so a missing cudaSetDevice shows up there.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { backend, features, fromArray, SparseAutoencoder, tensor } from '../lib/index.js';
import { packageRoot } from '../lib/native/index.js';
import { deviceParitySuite } from './helpers/device-suite.js';
import { multiDeviceSuite } from './helpers/multi-device-suite.js';
import { lcg } from './helpers/reference.js';
import { escapeRe } from './helpers/child.js';
import { dtypeSuite } from './helpers/dtype-suite.js';
import { matmulSuite } from './helpers/matmul-suite.js';
import { randomSuite } from './helpers/random-suite.js';
import { sparseCorrDeviceSuite } from './helpers/sparse-corr-suite.js';
import { tensorSuite } from './helpers/tensor-suite.js';

const plugin = path.join(packageRoot, 'build-cuda', 'libsaekit_cuda.so');
const gpu = backend.info().cuda.available && !backend.info().cuda.loopback;
const deviceCount = backend.info().cuda.devices.length;
// Two CUDA devices (two GPUs, or the emulated plugin with SAEKIT_EMU_DEVICES=2).
const multi = gpu && deviceCount >= 2;
// The plugin built on the CPU emulation (native/cuda/emu/build.sh), for the child processes below.
const emuPlugin = path.join(packageRoot, 'build-cuda-emu', 'libsaekit_cuda.so');
const emuCublas = path.join(packageRoot, 'build-cuda-emu', 'libfakecublas.so');

/**
 * Runs `body` (TypeScript, with saekit imported as `saekit`) in a child process with `env` added
 * (and Node `flags`), and parses the JSON it prints last: a fresh process resolves the plugin
 * anew, and a crash (a signal) fails the test instead of the suite.
 */
function inChild(
  body: string,
  env: Record<string, string>,
  flags: readonly string[] = [],
): { status: number | null; signal: string | null; out: Record<string, unknown>; stderr: string } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-child-'));
  try {
    const file = path.join(dir, 'child.mts');
    writeFileSync(file, `import * as saekit from ${JSON.stringify(path.join(packageRoot, 'lib', 'index.ts'))};\n${body}\n`);
    const r = spawnSync(process.execPath, [...flags, '--import', 'tsx', file], { cwd: packageRoot, encoding: 'utf8', timeout: 60_000, env: { ...process.env, ...env } });
    const last = r.stdout.trim().split('\n').pop() ?? '';
    return { status: r.status, signal: r.signal, out: last.startsWith('{') ? (JSON.parse(last) as Record<string, unknown>) : {}, stderr: r.stderr };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A copy of `file` cut to its first `bytes` bytes (an interrupted build or copy), in a fresh folder. */
function truncatedCopy(file: string, bytes: number, name: string): string {
  const out = path.join(mkdtempSync(path.join(os.tmpdir(), 'saekit-trunc-')), name);
  writeFileSync(out, readFileSync(file).subarray(0, bytes));
  return out;
}

// Prints what 'auto' resolves to and why CUDA is not available.
const AUTO_AND_REASON = `const sae = saekit.SparseAutoencoder.create({ dIn: 8, numLatents: 16, k: 2 });
const { cuda } = saekit.backend.info();
console.log(JSON.stringify({ device: sae.device, available: cuda.available, reason: cuda.reason, first: cuda.attempts[0] }));`;

describe('CUDA backend detection', () => {
  it('the CPU backend always loads, and info() says why CUDA is not used', () => {
    const { cuda } = backend.info();
    if (!process.env.SAEKIT_CUDA_PLUGIN) expect(cuda.attempts.map((a) => a.path)).toContain(plugin);
    expect(cuda.attempts.length).toBeGreaterThan(0);
    if (!cuda.available) {
      expect(cuda.reason.length).toBeGreaterThan(10);
      expect(cuda.devices).toEqual([]);
    } else {
      expect(cuda.reason).toBe('');
      expect(cuda.devices.length).toBeGreaterThan(0);
    }
  });

  it('a SAEKIT_CUDA_PLUGIN naming no file is the reason given (not "not built")', () => {
    const saved = process.env.SAEKIT_CUDA_PLUGIN;
    const missing = path.join(packageRoot, 'no-such-folder', `libsaekit_cuda_${process.pid}.so`);
    process.env.SAEKIT_CUDA_PLUGIN = missing;
    try {
      const { cuda } = backend.info();
      expect(cuda.attempts[0]).toEqual({ path: missing, outcome: 'not found' });
      if (!cuda.available) expect(cuda.reason).toMatch(new RegExp(`^SAEKIT_CUDA_PLUGIN names ${escapeRe(missing)}, which does not exist; elsewhere: .{10}`));
    } finally {
      if (saved === undefined) delete process.env.SAEKIT_CUDA_PLUGIN;
      else process.env.SAEKIT_CUDA_PLUGIN = saved;
    }
  });

  it('a SAEKIT_CUDA_PLUGIN naming a folder is reported as not a file (not "does not exist")', () => {
    const saved = process.env.SAEKIT_CUDA_PLUGIN;
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-plugin-dir-'));
    process.env.SAEKIT_CUDA_PLUGIN = dir;
    try {
      const { cuda } = backend.info();
      expect(cuda.attempts[0]).toEqual({ path: dir, outcome: `${dir} is not a file (a folder)` });
      const own = `SAEKIT_CUDA_PLUGIN names ${dir}, which is not a file (a folder): it must name the plugin file (libsaekit_cuda.so)`;
      // No other candidate got further (none built here): the folder is the whole reason, said once.
      if (!cuda.available) {
        if (cuda.attempts.slice(1).every((a) => a.outcome === 'not found')) expect(cuda.reason).toBe(own);
        else expect(cuda.reason).toMatch(new RegExp(`^${escapeRe(own)}; elsewhere: (?!${escapeRe(dir)})`));
      }
    } finally {
      if (saved === undefined) delete process.env.SAEKIT_CUDA_PLUGIN;
      else process.env.SAEKIT_CUDA_PLUGIN = saved;
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the plugin candidates, in the order the addon tries them: SAEKIT_CUDA_PLUGIN (made absolute), build-cuda/, then prebuilds/; unset, the reason does not name it', async () => {
    const { cudaPluginCandidates } = await import('../lib/native/index.js');
    const built = path.join(packageRoot, 'build-cuda', 'libsaekit_cuda.so');
    const prebuilt = path.join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`, 'cuda', 'libsaekit_cuda.so');
    const saved = process.env.SAEKIT_CUDA_PLUGIN;
    try {
      delete process.env.SAEKIT_CUDA_PLUGIN;
      expect(cudaPluginCandidates()).toEqual([built, prebuilt]);
      // Unset, the first candidate missing is not reported as the variable naming it.
      const { cuda } = backend.info();
      expect(cuda.attempts[0]!.path).toBe(built);
      if (!cuda.available) expect(cuda.reason).not.toMatch(/SAEKIT_CUDA_PLUGIN/);
      process.env.SAEKIT_CUDA_PLUGIN = path.join('some', 'relative', 'libsaekit_cuda.so');
      expect(cudaPluginCandidates()).toEqual([path.join(process.cwd(), 'some', 'relative', 'libsaekit_cuda.so'), built, prebuilt]);
    } finally {
      if (saved === undefined) delete process.env.SAEKIT_CUDA_PLUGIN;
      else process.env.SAEKIT_CUDA_PLUGIN = saved;
    }
  });

  it.runIf(existsSync(emuPlugin))("a plugin's reason longer than 4 KiB comes whole, never cut inside a UTF-8 character", () => {
    // SAEKIT_CUBLAS naming a missing file 4.4 KB long, in two-byte characters: the reason quotes it.
    const long = path.join(os.tmpdir(), ...Array.from({ length: 20 }, (_, i) => 'é'.repeat(100 + i)), 'libcublas.so.12');
    const r = inChild(AUTO_AND_REASON, { SAEKIT_CUDA_PLUGIN: emuPlugin, SAEKIT_CUBLAS: long });
    expect({ status: r.status, signal: r.signal }, r.stderr).toEqual({ status: 0, signal: null });
    // The emulated plugin's own outcome: where a real plugin is built too (CI), its reason is the last.
    const first = r.out.first as { path: string; outcome: string };
    expect(first.path).toBe(emuPlugin);
    const reason = first.outcome;
    expect(reason.length).toBeGreaterThan(long.length);
    expect(reason).toContain(`tried ${long} cannot be read: `);
    expect(reason).not.toContain('\uFFFD');
    expect(reason).toMatch(/, or set SAEKIT_CUBLAS to the library file$/);
  }, 70_000);

  it('a truncated plugin file is refused as damaged, before dlopen (which died of SIGBUS on it): auto is the CPU', () => {
    // Any shared library shows it; the addon is always there.
    const file = truncatedCopy(path.join(packageRoot, 'build', 'Release', 'saekit.node'), 20_000, 'libsaekit_cuda.so');
    try {
      const r = inChild(AUTO_AND_REASON, { SAEKIT_CUDA_PLUGIN: file });
      expect({ status: r.status, signal: r.signal }, r.stderr).toEqual({ status: 0, signal: null });
      expect(r.out.device).toBe('cpu');
      expect(r.out.available).toBe(false);
      // The first attempt's outcome: where a plugin is built (CI builds one), its reason follows.
      const first = r.out.first as { path: string; outcome: string };
      expect(first.path).toBe(file);
      expect(first.outcome).toMatch(new RegExp(`^${escapeRe(file)} is damaged: truncated \\(20000 bytes, its segments need \\d+\\); rebuild it`));
    } finally {
      rmSync(path.dirname(file), { recursive: true, force: true });
    }
  }, 70_000);

  it.runIf(existsSync(emuPlugin) && existsSync(emuCublas))('a truncated cuBLAS library named by SAEKIT_CUBLAS is refused as damaged (the CPU emulation of the plugin loads it)', () => {
    const file = truncatedCopy(emuCublas, 3000, 'libcublas.so.12');
    try {
      const r = inChild(AUTO_AND_REASON, { SAEKIT_CUDA_PLUGIN: emuPlugin, SAEKIT_CUBLAS: file });
      expect({ status: r.status, signal: r.signal }, r.stderr).toEqual({ status: 0, signal: null });
      expect(r.out.device).toBe('cpu');
      const first = r.out.first as { path: string; outcome: string };
      expect(first.path).toBe(emuPlugin);
      expect(first.outcome).toMatch(new RegExp(`cuBLAS library was not found \\(tried ${escapeRe(file)} is damaged: truncated \\(3000 bytes, its segments need \\d+\\); `));
    } finally {
      rmSync(path.dirname(file), { recursive: true, force: true });
    }
  }, 70_000);

  it.runIf(existsSync(plugin) && !gpu)('a built plugin is loaded and scored; without a GPU it names the missing piece', () => {
    const { cuda } = backend.info();
    const attempt = cuda.attempts.find((a) => a.path === plugin);
    expect(attempt).toBeDefined();
    expect(attempt!.outcome).not.toBe('not found');
    expect(attempt!.outcome).not.toMatch(/dlopen failed|missing symbol|incompatible/);
    expect(cuda.reason).toMatch(/driver|no CUDA device|cuBLAS|SAE kernels/);
  });

  it.runIf(!gpu)("without a GPU: 'auto' is the CPU and an explicit 'cuda' throws ERR_SAEKIT_DEVICE with the reason", () => {
    const { cuda } = backend.info();
    using sae = SparseAutoencoder.create({ dIn: 8, numLatents: 16, k: 2 });
    expect(sae.device).toBe('cpu');
    for (const device of ['cuda', 'cuda:0', 'cuda:3'] as const) {
      expect(() => SparseAutoencoder.create({ dIn: 8, numLatents: 16, k: 2, device })).toThrow(
        expect.objectContaining({ code: 'ERR_SAEKIT_DEVICE', message: expect.stringContaining(cuda.reason) }),
      );
    }
    expect(() => backend.use('cuda')).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_DEVICE' }));
    expect(backend.use('cpu')).toBe('auto');
    expect(backend.use('auto')).toBe('cpu');
  });
});

describe('prefetch on the CPU emulation of the plugin', () => {
  /** The child's start: a small fp32 SAE on the emulated device, its optimizer, and rows(n, seed). */
  const prefetchSetup = `import * as fs from 'node:fs';
      const dIn = 16;
      const sae = saekit.SparseAutoencoder.create({ dIn, numLatents: 32, k: 4, seed: 3, device: 'cuda', precision: 'fp32' });
      const opt = sae.adam();
      const rows = (n: number, seed: number) => Float32Array.from({ length: n * dIn }, (_, i) => Math.sin(i * 0.37 + seed));`;
  it.runIf(existsSync(emuPlugin) && existsSync(emuCublas))('a prefetch that outgrows its buffer frees nothing on the JS thread (cudaFree waits for the whole device); the step frees it, on the executor', () => {
    // A prefetch entry holds the step's previous input buffer after a step takes its batch: a
    // larger batch then outgrows it. The emulation logs every cudaFree with its thread id; Node's
    // main thread has the process id.
    const trace = path.join(mkdtempSync(path.join(os.tmpdir(), 'saekit-sync-')), 'trace.txt');
    const r = inChild(
      `${prefetchSetup}
      await opt.step(opt.prefetch(rows(8, 1)));
      await opt.step(opt.prefetch(rows(8, 2)));
      process.env.SAEKIT_EMU_SYNC_TRACE = ${JSON.stringify(trace)};
      const big = opt.prefetch(rows(64, 3));
      const during = fs.existsSync(${JSON.stringify(trace)}) ? fs.readFileSync(${JSON.stringify(trace)}, 'utf8') : '';
      const st = await opt.step(big);
      delete process.env.SAEKIT_EMU_SYNC_TRACE;
      const after = fs.readFileSync(${JSON.stringify(trace)}, 'utf8');
      console.log(JSON.stringify({ pid: process.pid, during, after, loss: st.loss }));`,
      { SAEKIT_CUDA_PLUGIN: emuPlugin, SAEKIT_CUBLAS: emuCublas },
    );
    expect(r.status, r.stderr).toBe(0);
    const { pid, during, after, loss } = r.out as { pid: number; during: string; after: string; loss: number };
    expect(Number.isFinite(loss)).toBe(true);
    expect(during, 'cudaFree calls during prefetch').toBe('');
    const frees = after.trim().split('\n').filter(Boolean).map((l) => l.split(' '));
    expect(frees.length, 'the outgrown buffer is freed by the step').toBeGreaterThan(0);
    for (const [call, tid] of frees) expect(`${call} on thread ${tid}`).not.toBe(`${call} on thread ${pid}`);
  }, 70_000);

  it.runIf(existsSync(emuPlugin) && existsSync(emuCublas))('a prefetch while the step frees an outgrown buffer does not wait for that cudaFree (the buffer is freed outside the prefetch lock)', () => {
    // EMU_FREE_DELAY_MS makes each cudaFree take 2 s, as one does on a GPU while the device's work
    // in flight ends. A first step of 64 rows sizes the step's workspace, so the step of `big`
    // frees nothing but the retired buffer; the next batch is prefetched while it does.
    const trace = path.join(mkdtempSync(path.join(os.tmpdir(), 'saekit-sync-')), 'trace.txt');
    const r = inChild(
      `${prefetchSetup}
      await opt.step(rows(64, 0));
      await opt.step(opt.prefetch(rows(8, 1)));
      await opt.step(opt.prefetch(rows(8, 2)));
      const big = opt.prefetch(rows(64, 3));
      process.env.SAEKIT_EMU_SYNC_TRACE = ${JSON.stringify(trace)};
      process.env.EMU_FREE_DELAY_MS = '2000';
      const stepping = opt.step(big);
      await new Promise((res) => setTimeout(res, 300));
      const t0 = performance.now();
      const next = opt.prefetch(rows(8, 4));
      const blocked = performance.now() - t0;
      const st = await stepping;
      delete process.env.EMU_FREE_DELAY_MS;
      delete process.env.SAEKIT_EMU_SYNC_TRACE;
      const st2 = await opt.step(next);
      const frees = fs.readFileSync(${JSON.stringify(trace)}, 'utf8').trim().split('\\n').length;
      console.log(JSON.stringify({ blocked, frees, losses: [st.loss, st2.loss] }));`,
      { SAEKIT_CUDA_PLUGIN: emuPlugin, SAEKIT_CUBLAS: emuCublas },
    );
    expect(r.status, r.stderr).toBe(0);
    const { blocked, frees, losses } = r.out as { blocked: number; frees: number; losses: number[] };
    expect(losses.every(Number.isFinite)).toBe(true);
    expect(frees, 'the step frees the retired buffer (and nothing else)').toBe(1);
    expect(blocked, 'ms the prefetch blocked the JS thread').toBeLessThan(1000);
  }, 70_000);
});

// Small shapes, so the CPU emulation of the plugin (CI) runs them in seconds.
describe.runIf(gpu)('tensors on CUDA', () => {
  tensorSuite('cuda');
  randomSuite({ device: 'cuda', normalUlps: 1 });
  matmulSuite(4, { device: 'cuda', maxWork: 200_000 });
  dtypeSuite({ device: 'cuda', randomInputs: 20_000 });
});

// The device table used to be whichever candidate list was resolved last: one backend.info() with
// another SAEKIT_CUDA_PLUGIN (a missing path; or a relative one after process.chdir) made every
// existing device tensor fail with "no CUDA device: the CUDA plugin is not built".
describe.runIf(gpu)('a later resolution of other plugin candidates', () => {
  it('leaves existing device tensors and SAEs on the plugin that made them', async () => {
    const next = lcg(Date.now() >>> 0);
    const x = Float32Array.from({ length: 7 * 5 }, () => next() * 2 - 1);
    const t = tensor(x, [7, 5], { device: 'cuda' });
    const sae = SparseAutoencoder.create({ dIn: 5, numLatents: 9, k: 2, seed: 3, device: 'cuda' });
    const before = await sae.encode(x);
    const was = process.env.SAEKIT_CUDA_PLUGIN;
    process.env.SAEKIT_CUDA_PLUGIN = path.join(os.tmpdir(), `no-such-plugin-${process.pid}.so`);
    try {
      backend.info(); // resolves the new candidate list
      expect(Array.from(await t.toArray())).toEqual(Array.from(x));
      const during = await sae.encode(x);
      expect(Array.from(during.indices)).toEqual(Array.from(before.indices));
      expect(Array.from(during.values)).toEqual(Array.from(before.values));
    } finally {
      if (was === undefined) delete process.env.SAEKIT_CUDA_PLUGIN;
      else process.env.SAEKIT_CUDA_PLUGIN = was;
    }
    backend.info();
    expect(Array.from(await t.toArray())).toEqual(Array.from(x));
    t.dispose();
    sae.dispose();
  });
});

describe.runIf(gpu)('CUDA matches the CPU (fp32 encoder GEMM)', () => {
  deviceParitySuite({ it, expect }, 'cuda', 'fp32', { rel: 1e-4, indexMismatch: 0.002 });
});

// SAEKIT_CUDA_PARITY=fp32 limits the run to fp32 (a quicker run; CI runs both on the CPU emulation).
describe.runIf(gpu && process.env.SAEKIT_CUDA_PARITY !== 'fp32')('CUDA matches the CPU (bf16 encoder GEMM)', () => {
  deviceParitySuite({ it, expect }, 'cuda', 'bf16', { rel: 2e-2, indexMismatch: 0.05 });
});

describe.runIf(gpu)('feature correlation with the co-moment GEMM on CUDA', () => {
  it("kind 'dense' matches the CPU within float32 GEMM rounding (centred inputs: |r| error < 1e-4)", async () => {
    const dIn = 24;
    const next = lcg(91);
    const x = Float32Array.from({ length: 600 * dIn }, () => next() - 0.5);
    const src = fromArray(x, dIn);
    const cpu = await features.correlation({ source: src }, { source: src }, { kind: 'dense', batchSize: 256 });
    const dev = await features.correlation({ source: src }, { source: src }, { kind: 'dense', batchSize: 256, device: 'cuda' });
    if (cpu.mode !== 'full' || dev.mode !== 'full') throw new Error('expected full matrices');
    let worst = 0;
    for (let i = 0; i < cpu.r.length; i++) worst = Math.max(worst, Math.abs(cpu.r[i]! - dev.r[i]!));
    expect(worst).toBeLessThan(1e-4);
  });
});

describe.runIf(gpu)('Trainer.fit on CUDA', () => {
  it('repeated fits leave no page-locked batch array behind (each fit kept its last one, with its optimizer)', () => {
    // The dropped-pass registry of the data pass reached the Trainer's BATCH_ARRAYS alloc, whose
    // scope holds the pass: 12.6 MiB of page-locked memory per fit at batch 4096 x dIn 768. Small
    // shapes: the CPU emulation of the plugin (CI) runs them in seconds.
    const r = inChild(
      `const s = { dIn: 64, numLatents: 8, k: 1, seed: 3 };
      const data = Float32Array.from({ length: 512 * s.dIn }, () => Math.random() - 0.5);
      let made = 0, collected = 0;
      const reg = new FinalizationRegistry(() => collected++);
      const proto = saekit.AdamOptimizer.prototype as unknown as { _pinnedArray(n: number): Float32Array | undefined };
      const orig = proto._pinnedArray;
      proto._pinnedArray = function (n) { const a = orig.call(this, n); if (a) { made++; reg.register(a.buffer, 0); } return a; };
      const sae = saekit.SparseAutoencoder.create({ ...s, device: 'cuda', precision: 'fp32' });
      const settle = async () => { for (let i = 0; i < 4; i++) { global.gc!(); await new Promise((r) => setTimeout(r, 30)); } };
      for (let i = 0; i < 3; i++) {
        const tr = new saekit.Trainer(sae, { batchSize: 256, epochs: 1, warmupSteps: 0, lr: 1e-4 });
        await tr.fit(saekit.fromArray(data, s.dIn));
        tr.dispose();
        await settle();
      }
      console.log(JSON.stringify({ made, collected }));`,
      {},
      ['--expose-gc'],
    );
    expect(r.status, r.stderr).toBe(0);
    expect(r.out.made, 'fits used page-locked batch arrays').toBeGreaterThan(0);
    expect(r.out.collected, 'page-locked arrays collected after the fits').toBe(r.out.made);
  }, 70_000);
});

describe.runIf(multi)('tensors on cuda:1', () => {
  tensorSuite('cuda:1');
  randomSuite({ device: 'cuda:1', normalUlps: 1 });
  matmulSuite(6, { device: 'cuda:1', maxWork: 20_000 });
});

describe.runIf(multi)('two CUDA devices at once (cuda:0 and cuda:1)', () => {
  multiDeviceSuite({ rel: 1e-4, precision: 'fp32' });
});

describe.runIf(multi)('CUDA on cuda:1 matches the CPU (fp32 encoder GEMM)', () => {
  deviceParitySuite({ it, expect }, 'cuda:1', 'fp32', { rel: 1e-4, indexMismatch: 0.002 });
});

describe.skipIf(multi)('multi-device CUDA tests', () => {
  const why = gpu ? `${deviceCount} CUDA device here; they need 2` : backend.info().cuda.reason || 'no GPU';
  it.skip(`skipped: ${why} (CI runs them on the CPU emulation with SAEKIT_EMU_DEVICES=2)`, () => undefined);
});

// Fresh codes every run (the seed is in the test names): CUDA must give the CPU's bits whatever they are.
describe.runIf(gpu)('sparse-code correlation on CUDA equals the CPU bit for bit', () => {
  sparseCorrDeviceSuite('cuda:0', 1 + (Date.now() % 100_000));
});

describe.skipIf(gpu)('CUDA parity tests', () => {
  it.skip(`skipped: ${backend.info().cuda.reason || 'no GPU'} (they run on a machine with a GPU: bench/gpu/run.sh)`, () => undefined);
});

describe.runIf(gpu)('CUDA refuses what it cannot compute, as the CPU does', () => {
  it('a batch whose total variance is past float32 gradients (2 / tv < FLT_MIN): gradients() and step() reject with the CPU\'s ERR_SAEKIT_ARG, weights and opt.steps unchanged', async () => {
    const seed = (Math.random() * 2 ** 31) >>> 0;
    const next = lcg(seed);
    const dIn = 16;
    const x = Float32Array.from({ length: 32 * dIn }, () => next() - 0.5);
    // Two entries at 3e38: tv is about 1.7e77 in float64, and -2 / tv is 0 in float32.
    x[7] = 3e38;
    x[8] = 3e38;
    const messages: string[] = [];
    for (const device of ['cpu', 'cuda'] as const) {
      const sae = SparseAutoencoder.create({ dIn, numLatents: 64, k: 4, seed: 3, device, precision: 'fp32' });
      const before = await sae.weights();
      await expect(sae.gradients(x), `${device}, seed ${seed}`).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG' });
      const opt = sae.adam();
      const err = await opt.step(x).then(
        () => null,
        (e: unknown) => e as { code: string; message: string },
      );
      expect(err?.code, `${device}, seed ${seed}`).toBe('ERR_SAEKIT_ARG');
      expect(err!.message).toMatch(/^Expected a batch x whose total variance float32 gradients can scale \(at most 1\.7e38\) but it is /);
      messages.push(err!.message.replace(/but it is \S+/, 'but it is TV'));
      expect(opt.steps).toBe(0);
      const after = await sae.weights();
      for (const name of ['W_enc', 'b_enc', 'W_dec', 'b_dec'] as const) expect(after[name], `${device} ${name}`).toEqual(before[name]);
      sae.dispose();
    }
    expect(messages[1]).toBe(messages[0]);
  });

  it('a NaN pre-activation (inf - inf from finite inputs) is refused on CUDA as on the CPU: ERR_SAEKIT_NONFINITE naming the row, TopK (both selection kernels) and JumpReLU', async () => {
    const [dIn, L, rows] = [5, 301, 6];
    const seed = (Math.random() * 2 ** 31) >>> 0;
    const next = lcg(seed);
    const bad = 1 + Math.floor(next() * (rows - 1));
    const W_enc = Float32Array.from({ length: dIn * L }, (_, i) => (i < 2 * L ? 0.1 + next() : next() - 0.5));
    const W_dec = Float32Array.from({ length: L * dIn }, () => next() - 0.5);
    const b_dec = Float32Array.from({ length: dIn }, (_, d) => (d === 0 ? -3e38 : d === 1 ? 3e38 : 0));
    const x = Float32Array.from({ length: rows * dIn }, (_, i) => (i % dIn === 0 ? -3e38 : i % dIn === 1 ? 3e38 : next() - 0.5));
    x[bad * dIn] = 3e38;
    x[bad * dIn + 1] = -3e38;
    for (const opts of [{ k: 2 }, { k: 64 }, { architecture: 'jumprelu' as const }]) {
      const errs: unknown[] = [];
      for (const device of ['cpu', 'cuda'] as const) {
        const w = { W_enc, b_enc: new Float32Array(L), W_dec, b_dec, ...('k' in opts ? {} : { threshold: new Float32Array(L).fill(0.01) }) };
        using sae = SparseAutoencoder.fromWeights(w, { ...opts, device, ...('k' in opts ? { precision: 'fp32' as const } : {}) });
        errs.push(await sae.encode(x).then(() => null, (e: unknown) => e));
      }
      for (const e of errs) expect(e, `${JSON.stringify(opts)}, seed ${seed}`).toMatchObject({ code: 'ERR_SAEKIT_NONFINITE', row: bad, message: expect.stringMatching(new RegExp(`row ${bad} of x gives Infinity`)) });
    }
  });

  it('a TopK k above 8192 (the CUDA selection\'s limit) is refused on a CUDA device by create and fromWeights, naming options.k; 8192 and the CPU are fine', () => {
    expect(() => SparseAutoencoder.create({ dIn: 4, numLatents: 9000, k: 8200, seed: 1, device: 'cuda' })).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/^Expected an integer in \[1, 8192\] on a CUDA device .* for options\.k but received 8200/) }),
    );
    const cpu = SparseAutoencoder.create({ dIn: 4, numLatents: 9000, k: 8200, seed: 1, device: 'cpu' });
    expect(cpu.k).toBe(8200);
    const w = { W_enc: new Float32Array(4 * 9000), b_enc: new Float32Array(9000), W_dec: new Float32Array(9000 * 4), b_dec: new Float32Array(4) };
    expect(() => SparseAutoencoder.fromWeights(w, { k: 8193, device: 'cuda' })).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/for options\.k but received 8193/) }));
    const ok = SparseAutoencoder.fromWeights(w, { k: 8192, device: 'cuda' });
    expect(ok.device).toBe('cuda:0');
    ok.dispose();
    cpu.dispose();
  });

  it('encodes at k 8192 (the most the TS check lets through) with the right codes', async () => {
    // Latents 0..8191 get a bias of 4 and the rest -4; inputs and W_enc are small, so the kept set
    // is exactly 0..8191 whatever the GEMM's precision, and each value is b_enc + x . W_enc[:, j].
    const M = 9000, d = 4, rows = 3, k = 8192;
    const next = lcg(Date.now() >>> 0);
    const W_enc = Float32Array.from({ length: d * M }, () => (next() * 2 - 1) * 0.1);
    const b_enc = Float32Array.from({ length: M }, (_, j) => (j < k ? 4 : -4));
    const W_dec = Float32Array.from({ length: M * d }, () => next() * 2 - 1);
    const x = Float32Array.from({ length: rows * d }, () => next() * 2 - 1);
    using sae = SparseAutoencoder.fromWeights({ W_enc, b_enc, W_dec, b_dec: new Float32Array(d) }, { k, device: 'cuda' });
    const c = await sae.encode(x);
    expect(c.k).toBe(k);
    for (let r = 0; r < rows; r++) {
      const got = new Map<number, number>();
      for (let i = 0; i < k; i++) got.set(c.indices[r * k + i]!, c.values[r * k + i]!);
      expect(got.size, `row ${r}`).toBe(k);
      for (let j = 0; j < k; j++) {
        let z = b_enc[j]!;
        for (let t = 0; t < d; t++) z += x[r * d + t]! * W_enc[t * M + j]!;
        expect(got.has(j), `row ${r} latent ${j}`).toBe(true);
        // bf16 inputs (2^-9 relative each) over 4 terms of at most 0.1: well under 0.01.
        if (!(Math.abs(got.get(j)! - z) < 0.01)) expect(got.get(j), `row ${r} latent ${j}`).toBe(z);
      }
    }
  });
});
