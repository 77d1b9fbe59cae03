import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { backend, ops, randn } from '../lib/index.js';
import { packageRoot } from '../lib/native/index.js';
import { watchGaps } from './helpers/event-loop.js';

describe('work runs off the JS thread', () => {
  it('a 1 ms interval keeps firing while 3072^3 matmuls run (no gap near the length of one product)', async () => {
    using a = randn([3072, 3072], { seed: 1 });
    using b = randn([3072, 3072], { seed: 2 });
    await a.toArray(); // make sure the fills are done before timing
    const watch = watchGaps();
    const t0 = performance.now();
    const before = backend.stats().completed;
    // A few products back to back, so the measurement covers real work even on a fast machine.
    const products: number[] = [];
    for (let i = 0; i < 2; i++) {
      const ts = performance.now();
      using c = await ops.matmul(a, b);
      products.push(performance.now() - ts);
      expect(c.shape).toEqual([3072, 3072]);
    }
    const elapsed = performance.now() - t0;
    const gaps = watch.stop();
    expect(backend.stats().completed).toBeGreaterThan(before);
    // The interval must have fired throughout. A product run on the JS thread would leave one
    // gap at least as long as the product; the bound allows for the scheduler of a loaded 2-core
    // machine (where the product's threads and other processes delay the JS thread by up to
    // ~100 ms) while staying below half the fastest product.
    const bound = Math.max(50, Math.min(...products) / 2);
    expect(gaps.length).toBeGreaterThan(elapsed / 50);
    expect(Math.max(...gaps), `products ${products.map((t) => t.toFixed(0)).join(', ')} ms`).toBeLessThan(bound);
  });

  it('setThreads validates and takes effect for the next op', async () => {
    const before = backend.info().threads;
    const prev = backend.setThreads(1);
    expect(prev).toBe(before);
    expect(backend.info().threads).toBe(1);
    using a = randn([65, 67], { seed: 3 });
    using c = await ops.matmul(a, a, { transB: true });
    expect(c.shape).toEqual([65, 65]);
    backend.setThreads(before);
    expect(backend.info().threads).toBe(before);
    for (const bad of [0, -1, 1.5, NaN, '2', 2000]) {
      expect(() => backend.setThreads(bad as number)).toThrow(/Expected integer between 1 and 1024 for threads but received/);
    }
  });
});

describe('process exit while an op runs', () => {
  // OpenBLAS's destructor joins its worker threads: an exit during a GEMM used to hang forever.
  const child = (mode: string) => `
    import { SparseAutoencoder } from ${JSON.stringify(path.join(packageRoot, 'lib', 'index.ts'))};
    const sae = SparseAutoencoder.create({ dIn: 256, numLatents: 16384, k: 32, seed: 1 });
    const opt = sae.adam();
    const x = new Float32Array(2048 * 256).map(Math.random);
    await opt.step(x);
    const p = opt.step(x); void p;
    for (let i = 0; i < 4; i++) void opt.step(x); // queued behind it: never started
    if (${JSON.stringify(mode)} === 'exit') process.exit(3);
    else setTimeout(() => { throw new Error('uncaught during a step'); }, 1);
  `;
  // The main thread never uses saekit, a worker does (through the addon, as a worker cannot
  // load the TypeScript sources): the status is still the one exit() got.
  const workerChild = (mode: string) => `
    import { createRequire } from 'node:module';
    import { Worker, isMainThread, parentPort } from 'node:worker_threads';
    if (isMainThread) {
      const w = new Worker(new URL(import.meta.url));
      w.on('message', async () => {
        if (${JSON.stringify(mode)} === 'exit') process.exit(0);
        else await w.terminate(); // then main ends normally
      });
    } else {
      const b = createRequire(${JSON.stringify(path.join(packageRoot, 'package.json'))})('node-gyp-build')(${JSON.stringify(packageRoot)});
      const n = 4096; // a GEMM of seconds: it outlasts the exit's one-second grace
      const a = b.fromArray(new Float32Array(n * n).fill(1), [n, n], 'float32', 'float32');
      void b.matmul(a, a, false, false);
      parentPort.postMessage('started');
    }
  `;
  for (const mode of ['exit', 'terminate'] as const) {
    it(`a worker's op running at ${mode === 'exit' ? 'process.exit(0)' : 'a normal end after terminate()'} keeps status 0`, () => {
      const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-exit-'));
      const file = path.join(dir, 'child.mjs');
      writeFileSync(file, workerChild(mode));
      const r = spawnSync(process.execPath, [file], { cwd: packageRoot, encoding: 'utf8', timeout: 60_000 });
      expect(r.error, 'the child hung (killed after 60 s)').toBeUndefined();
      expect(r.status, r.stderr).toBe(0);
    }, 70_000);
  }
  for (const [mode, code] of [['exit', 3], ['throw', 1]] as const) {
    it(`${mode === 'exit' ? 'process.exit(3)' : 'an uncaught error'} during a training step ends the process with status ${code}`, () => {
      const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-exit-'));
      const file = path.join(dir, 'child.mts');
      writeFileSync(file, child(mode));
      const t0 = performance.now();
      const r = spawnSync(process.execPath, ['--import', 'tsx', file], { cwd: packageRoot, encoding: 'utf8', timeout: 30_000 });
      expect(r.error, 'the child hung (killed after 30 s)').toBeUndefined();
      expect(r.status, r.stderr).toBe(code);
      expect(performance.now() - t0).toBeLessThan(30_000);
    }, 40_000);
  }
});
