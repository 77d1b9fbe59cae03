/**
 * The CUDA plugin loader (native/core/plugin.cpp, native/napi/device.cpp) without a GPU: stand-in
 * plugins (test/fixtures/fake-cuda-plugin.c, compiled here with the system C compiler, one
 * variant per refusal) export the plugin's C ABI with a wrong version, a missing symbol, a score
 * of 0 with a reason, a failing device count or backend init, and so on. Each refusal must be
 * reported as the reason (and the attempt's outcome) in the loader's own words, or in the
 * plugin's. Child processes: the addon resolves a plugin list once per process, and the first
 * plugin that works serves the process from then on. Skipped without `cc`.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { cudaPluginCandidates, packageRoot } from '../lib/native/index.js';

const haveCc = spawnSync('cc', ['--version']).status === 0;
const source = path.join(packageRoot, 'test', 'fixtures', 'fake-cuda-plugin.c');
const REBUILD = "rebuild it with `npm run build:cuda` in saekit's folder";
const NOT_BUILT = "the CUDA plugin is not built (run `npm run build:cuda` in saekit's folder, e.g. node_modules/saekit, on a machine with nvcc)";

// Variant name -> -D flags (see the fixture's header).
const VARIANTS: Record<string, string[]> = {
  noVersion: ['-DNO_VERSION'],
  noScore: ['-DNO_SCORE'],
  version1: ['-DPLUGIN_VERSION=1'], // an older plugin (before sk_status.row)
  version0: ['-DPLUGIN_VERSION=0'],
  score0: ['-DSCORE=0', '-DREASON="fake: the NVIDIA driver (libcuda.so.1) is not installed"'],
  scoreNeg: ['-DSCORE=-1', '-DREASON="fake: negative score"'],
  score0Silent: ['-DSCORE=0'],
  longReason: ['-DSCORE=0', '-DLONG_REASON=3001'],
  good: ['-DINIT=2'],
  noSae: ['-DNO_SAE', '-DINIT=2'],
  saeOld: ['-DSAE_VERSION=3', '-DINIT=2'],
  countFail: ['-DCOUNT_FAIL', '-DINIT=2'],
  noDevices: ['-DDEVICES=0', '-DINIT=2'],
  nameFail: ['-DDEVICES=3', '-DNAME_FAIL=1', '-DINIT=2'],
  initFails: ['-DDEVICES=2', '-DINIT=1'],
  initTable77: ['-DDEVICES=2', '-DINIT=2'],
  initNoTable: ['-DINIT=3'],
  initNone: ['-DINIT=0'],
  initOld: ['-DDEVICES=2', '-DINIT=4'],
};

let dir = '';
const lib: Record<string, string> = {};

beforeAll(() => {
  if (!haveCc) return;
  dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-fake-plugin-'));
  for (const [name, flags] of Object.entries(VARIANTS)) {
    const out = path.join(dir, `${name}.so`);
    const r = spawnSync('cc', ['-shared', '-fPIC', '-O0', ...flags, '-o', out, source], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`cc failed for ${name}: ${r.stderr}`);
    lib[name] = out;
  }
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/**
 * Runs `body` (CommonJS; `b` is the addon) in a fresh Node process without the variables that
 * switch CUDA off or to the loopback, and returns the JSON it prints last.
 */
function child(body: string, env: Record<string, string> = {}): unknown {
  const script = `const b = require(${JSON.stringify(path.join(packageRoot, 'node_modules', 'node-gyp-build'))})(${JSON.stringify(packageRoot)});
const refusal = (f) => { try { f(); return 'no error'; } catch (e) { return [e.code, e.message]; } };
${body}`;
  const file = path.join(dir, `child-${process.pid}-${Math.random().toString(36).slice(2)}.cjs`);
  writeFileSync(file, script);
  const base = { ...process.env };
  for (const k of ['SAEKIT_CUDA', 'SAEKIT_DEVICE_LOOPBACK', 'SAEKIT_DEVICE_LOOPBACK_DEVICES', 'SAEKIT_CUDA_PLUGIN']) delete base[k];
  const r = spawnSync(process.execPath, [file], { encoding: 'utf8', timeout: 60_000, env: { ...base, ...env } });
  rmSync(file, { force: true });
  expect({ status: r.status, signal: r.signal }, r.stderr).toEqual({ status: 0, signal: null });
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}

interface Cuda {
  available: boolean;
  reason: string;
  devices: string[];
  attempts: { path: string; outcome: string }[];
}

/** info().cuda for each candidate list, in one process (each list is resolved on its own). */
function infos(lists: string[][], env: Record<string, string> = {}): Cuda[] {
  return child(`console.log(JSON.stringify(${JSON.stringify(lists)}.map((l) => b.info(l).cuda)));`, env) as Cuda[];
}

describe.runIf(haveCc)('CUDA plugin loader: every refusal says why (stand-in plugins)', () => {
  it('a plugin missing either entry point, or of another API version, is refused in the loader\'s words; a refused plugin is never "loaded"', () => {
    const missing = 'missing symbol sk_plugin_api_version or sk_backend_score (not a saekit plugin?)';
    const [noVersion, noScore, v1, v0] = infos([[lib.noVersion!], [lib.noScore!], [lib.version1!], [lib.version0!]]);
    for (const [c, file] of [[noVersion, lib.noVersion], [noScore, lib.noScore]] as const) {
      expect(c).toEqual({ available: false, reason: missing, loopback: false, devices: [], attempts: [{ path: file, outcome: missing }] });
    }
    for (const [c, file, v] of [[v1, lib.version1, 1], [v0, lib.version0, 0]] as const) {
      const why = `incompatible API version (plugin: ${v}, saekit: 2); ${REBUILD}`;
      expect(c).toEqual({ available: false, reason: why, loopback: false, devices: [], attempts: [{ path: file, outcome: why }] });
    }
  });

  it("a score of 0 or below is the plugin's own reason, whole past 4 KiB (two-byte characters), or a stock one when it gives none", () => {
    const [s0, neg, silent, long] = infos([[lib.score0!], [lib.scoreNeg!], [lib.score0Silent!], [lib.longReason!]]);
    expect(s0!.available).toBe(false);
    expect(s0!.reason).toBe('fake: the NVIDIA driver (libcuda.so.1) is not installed');
    expect(s0!.attempts).toEqual([{ path: lib.score0, outcome: s0!.reason }]);
    expect(neg!.available).toBe(false);
    expect(neg!.reason).toBe('fake: negative score');
    expect(silent!.reason).toBe('the plugin reports it cannot run here');
    // 3001 two-byte characters (6002 bytes, past the first 4096-byte buffer, which cuts one in two).
    expect(long!.reason).toBe(`${'é'.repeat(3001)}|end`);
  });

  it('the reason is the last candidate that got past "not found"; with none, "not built"; every attempt is listed in order', () => {
    const gone = path.join(dir, 'no-such-plugin.so');
    const gone2 = path.join(dir, 'nor-this.so');
    const [ab, ba, none] = infos([
      [lib.version1!, gone, lib.score0!, gone2],
      [gone, lib.score0!, lib.version1!, gone2],
      [gone, gone2],
    ]);
    const v1 = `incompatible API version (plugin: 1, saekit: 2); ${REBUILD}`;
    const s0 = 'fake: the NVIDIA driver (libcuda.so.1) is not installed';
    expect(ab!.reason).toBe(s0);
    expect(ab!.attempts).toEqual([
      { path: lib.version1, outcome: v1 },
      { path: gone, outcome: 'not found' },
      { path: lib.score0, outcome: s0 },
      { path: gone2, outcome: 'not found' },
    ]);
    expect(ba!.reason).toBe(v1);
    expect(none!.reason).toBe(NOT_BUILT);
    expect(none!.attempts).toEqual([{ path: gone, outcome: 'not found' }, { path: gone2, outcome: 'not found' }]);
  });

  it('the first plugin that scores above 0 is loaded and the rest are not tried; SAEKIT_CUDA=0 (only "0") tries none', () => {
    const out = child(`const lists = ${JSON.stringify([[lib.score0, lib.good, lib.version1], [lib.good]])};
process.env.SAEKIT_CUDA = '0';
const off = b.info(lists[1]).cuda;
process.env.SAEKIT_CUDA = '1';
const on = b.info(lists[0]).cuda;
console.log(JSON.stringify({ off, on }));`) as { off: Cuda; on: Cuda };
    expect(out.off).toEqual({ available: false, reason: 'disabled by SAEKIT_CUDA=0', loopback: false, devices: [], attempts: [] });
    expect(out.on).toEqual({
      available: true,
      reason: '',
      loopback: false,
      devices: ['fake device 0'],
      attempts: [
        { path: lib.score0, outcome: 'fake: the NVIDIA driver (libcuda.so.1) is not installed' },
        { path: lib.good, outcome: 'loaded' },
      ],
    });
  });

  it("a loaded plugin without usable SAE kernels or devices is unavailable, naming the piece; a device without a name is 'device N'", () => {
    const [noSae, saeOld, countFail, noDevices, nameFail] = infos([[lib.noSae!], [lib.saeOld!], [lib.countFail!], [lib.noDevices!], [lib.nameFail!]]);
    expect(noSae!.attempts).toEqual([{ path: lib.noSae, outcome: 'loaded' }]);
    expect(noSae).toMatchObject({ available: false, devices: [], reason: `the CUDA plugin has no SAE kernels (missing sk_sae_api); ${REBUILD}` });
    expect(saeOld).toMatchObject({ available: false, devices: [], reason: `the CUDA plugin speaks another SAE API version (saekit: 4); ${REBUILD}` });
    expect(countFail).toMatchObject({ available: false, devices: [], reason: 'fake: the driver refused to count devices' });
    expect(noDevices).toMatchObject({ available: false, devices: [], reason: 'no CUDA device found' });
    expect(nameFail).toMatchObject({ available: true, reason: '', devices: ['fake device 0', 'device 1', 'fake device 2'] });
  });
});

describe.runIf(haveCc)("CUDA plugin loader: a device's backend table (stand-in plugins)", () => {
  /** The refusal of a zeros tensor on each of `devices`, after info() resolved `plugin` alone. */
  function zerosOn(plugin: string, devices: string[]): unknown[] {
    return child(`b.info([${JSON.stringify(plugin)}]);
console.log(JSON.stringify(${JSON.stringify(devices)}.map((d) => refusal(() => b.zeros([3], 'float32', d)))));`) as unknown[];
  }

  it("an init that fails gives the plugin's message for that device; an index past the devices is refused before the plugin is asked", () => {
    expect(zerosOn(lib.initFails!, ['cuda:1', 'cuda:0', 'cuda:2'])).toEqual([
      ['ERR_SAEKIT_DEVICE', 'no CUDA backend table for cuda:1: fake: cuda:1 has no memory left for its context'],
      ['ERR_SAEKIT_DEVICE', 'no CUDA backend table for cuda:0: fake: cuda:0 has no memory left for its context'],
      ['ERR_SAEKIT_DEVICE', 'Expected a device between cuda:0 and cuda:1 but received cuda:2'],
    ]);
  });

  it('a table of another API version, an init that returns no table, or no init at all is refused naming it', () => {
    expect(zerosOn(lib.initTable77!, ['cuda:1'])).toEqual([
      ['ERR_SAEKIT_DEVICE', `no CUDA backend table for cuda:1: the CUDA plugin's backend table has API version 77 (saekit: 2); ${REBUILD}`],
    ]);
    expect(zerosOn(lib.initNoTable!, ['cuda:0'])).toEqual([
      ['ERR_SAEKIT_DEVICE', "no CUDA backend table for cuda:0: the CUDA plugin's backend init returned no table"],
    ]);
    expect(zerosOn(lib.initNone!, ['cuda:0'])).toEqual([
      ['ERR_SAEKIT_DEVICE', `no CUDA backend table for cuda:0: the CUDA plugin has no backend table (missing sk_backend_init_device); ${REBUILD}`],
    ]);
  });

  it('a plugin with only the first ABI (sk_backend_init) serves cuda:0 through it and refuses cuda:1 (never handing it device 0\'s table)', () => {
    expect(zerosOn(lib.initOld!, ['cuda:1', 'cuda:0'])).toEqual([
      ['ERR_SAEKIT_DEVICE', `no CUDA backend table for cuda:1: the CUDA plugin serves tensors on cuda:0 only (it predates sk_backend_init_device); ${REBUILD}`],
      // Reached through sk_backend_init: its table (version 77 here) is checked like any other.
      ['ERR_SAEKIT_DEVICE', `no CUDA backend table for cuda:0: the CUDA plugin's backend table has API version 77 (saekit: 2); ${REBUILD}`],
    ]);
  });

  it("backend.info() and an explicit device follow SAEKIT_CUDA_PLUGIN when it changes (the device check does not keep an earlier plugin's status)", () => {
    const script = `const saekit = await import(${JSON.stringify(path.join(packageRoot, 'lib', 'index.ts'))});
const before = saekit.SparseAutoencoder.create({ dIn: 4, numLatents: 8, k: 2 }).device;
process.env.SAEKIT_CUDA_PLUGIN = ${JSON.stringify(lib.score0)};
let err;
try { saekit.SparseAutoencoder.create({ dIn: 4, numLatents: 8, k: 2, device: 'cuda' }); } catch (e) { err = [e.code, e.message]; }
const cuda = saekit.backend.info().cuda;
console.log(JSON.stringify({ before, err, first: cuda.attempts[0], reason: cuda.reason }));`;
    const file = path.join(dir, 'ts-child.mts');
    writeFileSync(file, script);
    const base = { ...process.env };
    for (const k of ['SAEKIT_CUDA', 'SAEKIT_DEVICE_LOOPBACK', 'SAEKIT_CUDA_PLUGIN']) delete base[k];
    const r = spawnSync(process.execPath, ['--import', 'tsx', file], { cwd: packageRoot, encoding: 'utf8', timeout: 60_000, env: base });
    expect({ status: r.status, signal: r.signal }, r.stderr).toEqual({ status: 0, signal: null });
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { before: string; err: [string, string]; first: { path: string; outcome: string }; reason: string };
    if (out.before !== 'cpu') return; // a real GPU serves 'auto' here: the stand-in cannot take its place
    // The stand-in is tried first (the device check did not keep the status of the list without it).
    expect(out.first).toEqual({ path: lib.score0, outcome: 'fake: the NVIDIA driver (libcuda.so.1) is not installed' });
    expect(out.err).toEqual(['ERR_SAEKIT_DEVICE', `Expected a usable CUDA device for options.device = 'cuda' but ${out.reason}`]);
    // The reason is the last real failure: the stand-in's, unless a plugin built here (CI builds the
    // real one wherever nvcc is) refused after it, with its own reason.
    const saved = process.env.SAEKIT_CUDA_PLUGIN;
    delete process.env.SAEKIT_CUDA_PLUGIN;
    const after = cudaPluginCandidates().some((p) => existsSync(p)); // the child's list after the stand-in
    if (saved !== undefined) process.env.SAEKIT_CUDA_PLUGIN = saved;
    if (!after) expect(out.reason).toBe('fake: the NVIDIA driver (libcuda.so.1) is not installed');
    else expect(out.reason).not.toBe('fake: the NVIDIA driver (libcuda.so.1) is not installed');
  }, 70_000);
});
