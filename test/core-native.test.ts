/**
 * Backend-neutral native core: the thread pool's worker count (native/core/thread_pool.cpp), CPU
 * feature detection and SAEKIT_SIMD (native/core/cpu_features.cpp), and the tensor element limit
 * (native/core/tensor.cpp). Child processes load the addon directly, so each reads its
 * environment afresh and counts only its own threads.
 */
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { native, packageRoot } from '../lib/native/index.js';

const gypBuild = JSON.stringify(path.join(packageRoot, 'node_modules', 'node-gyp-build'));
const root = JSON.stringify(packageRoot);

/** Runs `body` (CommonJS; `b` is the addon) in a fresh Node process with `env` changed; the JSON it prints last. */
function child(body: string, env: Record<string, string | undefined> = {}, prefix: string[] = []): unknown {
  const script = `const b = require(${gypBuild})(${root});\n${body}`;
  const full = { ...process.env };
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined) delete full[k];
    else full[k] = v;
  }
  const cmd = prefix.length > 0 ? prefix[0]! : process.execPath;
  const args = [...prefix.slice(1), ...(prefix.length > 0 ? [process.execPath] : []), '-e', script];
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 60_000, env: full });
  expect({ status: r.status, signal: r.signal }, r.stderr).toEqual({ status: 0, signal: null });
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}

const cpuinfo = existsSync('/proc/cpuinfo') ? readFileSync('/proc/cpuinfo', 'latin1') : '';
const flags = new Set((/^flags\s*:(.*)$/m.exec(cpuinfo)?.[1] ?? '').trim().split(/\s+/));
const x86 = process.arch === 'x64' && flags.size > 1;

// The features info() lists, and their /proc/cpuinfo names.
const FEATURES: [string, string][] = [
  ['sse4.2', 'sse4_2'],
  ['avx', 'avx'],
  ['avx2', 'avx2'],
  ['fma', 'fma'],
  ['avx512f', 'avx512f'],
  ['avx512bw', 'avx512bw'],
  ['avx512vl', 'avx512vl'],
  ['avx512dq', 'avx512dq'],
];
const LEVELS = ['scalar', 'sse4.2', 'avx2', 'avx512'];

/** The widest level a CPU with these /proc/cpuinfo flags runs (all of AVX-512 F/BW/VL/DQ for avx512; AVX2 with FMA for avx2). */
function naturalLevel(has: (f: string) => boolean): string {
  if (has('avx2') && has('fma')) return ['avx512f', 'avx512bw', 'avx512vl', 'avx512dq'].every(has) ? 'avx512' : 'avx2';
  return has('sse4_2') ? 'sse4.2' : 'scalar';
}

describe.runIf(x86)('CPU features and SAEKIT_SIMD', () => {
  it('info().cpuFeatures lists exactly the features /proc/cpuinfo shows, in order, and simd is the widest level they allow', () => {
    const info = child('console.log(JSON.stringify(b.info([])));', { SAEKIT_SIMD: undefined }) as { cpuFeatures: string[]; simd: string };
    expect(info.cpuFeatures).toEqual(FEATURES.filter(([, flag]) => flags.has(flag)).map(([name]) => name));
    expect(info.simd).toBe(naturalLevel((f) => flags.has(f)));
  });

  it('SAEKIT_SIMD=scalar|sse42|avx2|avx512 lowers the level to at most that, never raises it; another value is ignored', async () => {
    const natural = LEVELS.indexOf(naturalLevel((f) => flags.has(f)));
    const cases: [string, number][] = [
      ['scalar', 0],
      ['sse42', 1],
      ['avx2', 2],
      ['avx512', 3],
      ['sse4.2', 3], // info()'s spelling is not a value of the variable
    ];
    // One process per value, all at once.
    const got = await Promise.all(
      cases.map(
        ([v]) =>
          new Promise<string>((resolve, reject) => {
            execFile(process.execPath, ['-e', `console.log(require(${gypBuild})(${root}).info([]).simd)`], { env: { ...process.env, SAEKIT_SIMD: v }, encoding: 'utf8', timeout: 60_000 }, (err, out) =>
              err ? reject(err) : resolve(out.trim()),
            );
          }),
      ),
    );
    expect(got).toEqual(cases.map(([, cap]) => LEVELS[Math.min(cap, natural)]));
  });

  // An emulated Haswell (AVX2 and FMA, no AVX-512): the variable cannot raise the level past the CPU.
  const qemu = spawnSync('qemu-x86_64', ['-cpu', 'help'], { encoding: 'utf8' });
  // (`-cpu help` exits with status 1 after listing the models.) Not under AddressSanitizer
  // (native/tools/sanitize.sh preloads it): the guest's shadow-memory reservation drives
  // qemu-user's resident size past 20 GB until the OOM killer ends it.
  const asan = /asan/.test(process.env.LD_PRELOAD ?? '');
  it.runIf(!asan && qemu.error === undefined && /\bHaswell\b/.test(`${qemu.stdout}${qemu.stderr}`))("under qemu -cpu Haswell, SAEKIT_SIMD=avx512 stays at 'avx2' and no AVX-512 feature is listed; without FMA, or on Sandy Bridge (AVX only), it is 'sse4.2'", () => {
    const info = child('console.log(JSON.stringify(b.info([])));', { SAEKIT_SIMD: 'avx512' }, ['qemu-x86_64', '-cpu', 'Haswell']) as { cpuFeatures: string[]; simd: string };
    expect(info.cpuFeatures).toEqual(['sse4.2', 'avx', 'avx2', 'fma']);
    expect(info.simd).toBe('avx2');
    // Without FMA, AVX2 alone is not the avx2 level (its kernels use FMA): SSE4.2.
    const noFma = child('console.log(JSON.stringify(b.info([])));', { SAEKIT_SIMD: undefined }, ['qemu-x86_64', '-cpu', 'Haswell,-fma']) as { cpuFeatures: string[]; simd: string };
    expect(noFma.cpuFeatures).toEqual(['sse4.2', 'avx', 'avx2']);
    expect(noFma.simd).toBe('sse4.2');
    // Sandy Bridge: AVX without AVX2 (each feature is its own CPUID bit, not implied by another).
    const snb = child('console.log(JSON.stringify(b.info([])));', { SAEKIT_SIMD: undefined }, ['qemu-x86_64', '-cpu', 'SandyBridge']) as { cpuFeatures: string[]; simd: string };
    expect(snb).toEqual({ ...snb, cpuFeatures: ['sse4.2', 'avx'], simd: 'sse4.2' });
  }, 90_000);
});

describe.runIf(existsSync('/proc/self/task'))('thread pool', () => {
  it('setThreads(n) runs the next op on n - 1 workers beside the executor: the old pool\'s workers all end, n - 1 new ones start', () => {
    // OpenBLAS (when linked) also grows its own threads on a larger count, never shrinking: a
    // warm-up at the largest count first, then only counts up to it are measured.
    const out = child(`const fs = require('node:fs');
const tids = () => new Set(fs.readdirSync('/proc/self/task'));
// A joined thread leaves /proc a moment after join returns: read until two reads agree.
async function settled() {
  let prev = tids();
  for (let i = 0; i < 200; i++) {
    await new Promise((r) => setTimeout(r, 2));
    const now = tids();
    if (now.size === prev.size && [...now].every((t) => prev.has(t))) return now;
    prev = now;
  }
  return prev;
}
const op = async () => { await b.zeros([256], 'float32').toArray(); };
(async () => {
  b.setThreads(9); await op(); b.setThreads(1); await op();
  const steps = [];
  let before = await settled();
  for (const n of [6, 2, 9, 3, 1, 4]) {
    const prev = b.setThreads(n);
    await op();
    const after = await settled();
    steps.push({ n, prev, threads: b.info([]).threads, started: [...after].filter((t) => !before.has(t)).length, ended: [...before].filter((t) => !after.has(t)).length });
    before = after;
  }
  console.log(JSON.stringify(steps));
})();`) as { n: number; prev: number; threads: number; started: number; ended: number }[];
    let prev = 1;
    for (const s of out) {
      expect(s, `setThreads(${s.n}) after ${prev}`).toEqual({ n: s.n, prev, threads: s.n, started: s.n - 1, ended: prev - 1 });
      prev = s.n;
    }
  });
});

describe('thread pool errors', () => {
  it("an exception thrown in a task, on a worker or the caller's thread, reaches JS as a coded error once no task is running, and the pool runs clean work next", () => {
    const b = native();
    for (const threads of [1, 2, 5]) {
      for (const [kind, code, message] of [
        ['memory', 'ERR_SAEKIT_MEMORY', /^out of memory$/],
        ['format', 'ERR_SAEKIT_FORMAT', /^task \d+ failed$/],
        ['other', 'ERR_SAEKIT_INTERNAL', /^task \d+ failed$/],
      ] as const) {
        // Every task throws, and each takes ~0.2 ms, so with more than one thread the workers
        // claim some of the 40 and throw too.
        const out: { ran?: number; again?: number } = {};
        expect(() => b._poolFault(threads, 40, kind, out), `${threads} threads, ${kind}`).toThrow(expect.objectContaining({ code, message: expect.stringMatching(message) }));
        // One thread runs the tasks inline and stops at the first throw; a pool returns only
        // once every task has finished (they use the caller's stack), so all 40 ran.
        expect(out, `${threads} threads, ${kind}`).toEqual({ ran: threads === 1 ? 1 : 40, again: 40 });
      }
    }
  });
});

describe('tensor element limit', () => {
  const b = native() as unknown as { zeros: (shape: number[], dtype: string) => { shape: number[]; dispose?: () => void } };
  const codeOf = (f: () => unknown): [string, string] | undefined => {
    try {
      (f() as { dispose?: () => void } | undefined)?.dispose?.();
      return undefined;
    } catch (e) {
      return [(e as { code: string }).code, (e as Error).message];
    }
  };

  it('2^60 - 1 elements (in either order of its factors 2^30 - 1 and 2^30 + 1) pass the shape check (the allocation then fails); 2^60 does not', () => {
    for (const shape of [[2 ** 30 - 1, 2 ** 30 + 1], [2 ** 30 + 1, 2 ** 30 - 1], [1, 2 ** 30 + 1, 1, 2 ** 30 - 1]]) {
      const r = codeOf(() => b.zeros(shape, 'float32'));
      expect(r, `shape ${shape}`).toEqual(['ERR_SAEKIT_MEMORY', `could not allocate ${4n * (2n ** 60n - 1n)} bytes of host memory`]);
    }
    for (const shape of [[2 ** 30, 2 ** 30], [2 ** 30 + 1, 2 ** 30], [2 ** 15, 2 ** 15, 2 ** 30]]) {
      expect(codeOf(() => b.zeros(shape, 'float32')), `shape ${shape}`).toEqual(['ERR_SAEKIT_SHAPE', `Expected fewer than 2^60 elements for shape but received shape [${shape.join(', ')}]`]);
    }
  });

  it('a 0 anywhere makes an empty tensor, however large the other dimensions (whose product is past 2^60)', () => {
    for (const shape of [[2 ** 50, 2 ** 50, 0], [0, 2 ** 50, 2 ** 50], [2 ** 50, 0, 2 ** 50]]) {
      expect(codeOf(() => b.zeros(shape, 'float32')), `shape ${shape}`).toBeUndefined();
    }
  });
});

describe('the native boundary against a hostile caller (napi audit)', () => {
  it("an accessor called on another class's instance is a TypeError, not a read of that instance's memory (nbytes crashed, shape hung, steps printed a heap address)", () => {
    const out = child(`
      const sae = b.NativeSae.create(4, 8, 2, 1n);
      const adam = sae.adam(1e-3, 0.9, 0.999, 1e-8);
      const t = b.zeros([2, 3], 'float32');
      const get = (obj, name) => Object.getOwnPropertyDescriptor(Object.getPrototypeOf(obj), name).get;
      const res = [];
      for (const [own, names] of [[t, ['dtype', 'shape', 'device', 'nbytes', 'disposed']], [sae, ['disposed']], [adam, ['steps', 'disposed']]]) {
        for (const name of names) {
          for (const recv of [sae, adam, t]) {
            if (recv === own) continue;
            try { get(own, name).call(recv); res.push(name + ': returned'); } catch (e) { res.push(name + ': ' + e.constructor.name + ' ' + e.message); }
          }
          res.push(name + ' own: ' + typeof get(own, name).call(own));
        }
      }
      console.log(JSON.stringify(res));`) as string[];
    const wrong = out.filter((s) => !s.includes(' own: '));
    expect(wrong.length).toBe(2 * 5 + 2 + 2 * 2);
    for (const s of wrong) expect(s).toMatch(/: TypeError Illegal invocation$/);
    // On their own class they still work.
    expect(out.filter((s) => s.includes(' own: '))).toEqual(['dtype own: string', 'shape own: object', 'device own: string', 'nbytes own: number', 'disposed own: boolean', 'disposed own: boolean', 'steps own: number', 'disposed own: boolean']);
  });

  it('setState with moment pieces whose getter returns a longer array on a second read copies what one read gave, never past the state (was a 16 MiB write into a 336-byte buffer)', () => {
    const out = child(`
      const D = 4, M = 8, n = 2 * D * M + M + D;
      let calls = 0;
      const parts = [null];
      Object.defineProperty(parts, 0, { get: () => (++calls <= 1 ? new Float32Array(n).fill(0.5) : new Float32Array(1 << 22).fill(1)) });
      const adam = b.NativeSae.create(D, M, 2, 1n).adam(1e-3, 0.9, 0.999, 1e-8);
      let msg = 'accepted';
      try { adam.setState(parts, new Float32Array(n), 1); } catch (e) { msg = e.code + ' ' + e.message; }
      console.log(JSON.stringify({ msg, calls }));`) as { msg: string; calls: number };
    // Each element is read once: the one read gave the right length, so the state is set.
    expect(out).toEqual({ msg: 'accepted', calls: 1 });
  });

  it('a failed job rejects its Promise even when a setter for `code` on Error.prototype throws (the Promise stayed pending)', () => {
    const out = child(`
      Object.defineProperty(Error.prototype, 'code', { configurable: true, set(v) { throw new Error('setter refused ' + v); } });
      const sae = b.NativeSae.create(4, 8, 2, 1n);
      const timer = setTimeout(() => { console.log(JSON.stringify('pending')); process.exit(0); }, 5000);
      sae.encode(new Float32Array([NaN, 0, 0, 0])).then(() => 'resolved', (e) => e.code + ' ' + e.message).then((r) => { clearTimeout(timer); console.log(JSON.stringify(r)); });`) as string;
    expect(out).toMatch(/^ERR_SAEKIT_NONFINITE Expected finite/);
  });
});
