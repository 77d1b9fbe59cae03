import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';

import { describe, expect, it } from 'vitest';

import { ops, tensor } from '../lib/index.js';
import { packageRoot } from '../lib/native/index.js';
import { haveDist } from './helpers/child.js';
import { lcg, randomMatrix } from './helpers/reference.js';

const fixture = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures', 'worker-matmul.mjs');

function runWorker(data: object): Promise<{ last: Float32Array; count: number }> {
  return new Promise((resolve, reject) => {
    const w = new Worker(fixture, { workerData: data });
    w.once('message', resolve);
    w.once('error', reject);
    w.once('exit', (code) => {
      if (code !== 0) reject(new Error(`worker exited with ${code}`));
    });
  });
}

describe('worker_threads', () => {
  it('the addon loads and works in two workers at once, alongside the main thread', async () => {
    const [M, N, K] = [63, 47, 129];
    const next = lcg(11);
    const A = randomMatrix(M, K, next);
    const B = randomMatrix(K, N, next);
    const data = { root: packageRoot, M, N, K, A, B, reps: 20 };
    const main = (async () => {
      using c = await ops.matmul(tensor(A, [M, K]), tensor(B, [K, N]));
      return c.toArray();
    })();
    const [r1, r2, mine] = await Promise.all([runWorker(data), runWorker(data), main]);
    expect(r1.count).toBe(20);
    expect(r2.count).toBe(20);
    // Same inputs, same thread count, same kernel: bitwise-identical results everywhere.
    expect(Array.from(r1.last)).toEqual(Array.from(mine));
    expect(Array.from(r2.last)).toEqual(Array.from(mine));
  });

  it('a worker that exits with ops still queued does not disturb the main thread', async () => {
    const [M, N, K] = [256, 256, 256];
    const next = lcg(12);
    const data = { root: packageRoot, M, N, K, A: randomMatrix(M, K, next), B: randomMatrix(K, N, next), reps: 1 };
    const w = new Worker(
      `const { createRequire } = require('node:module');
       const { workerData } = require('node:worker_threads');
       const b = require(workerData.root + '/node_modules/node-gyp-build')(workerData.root);
       const a = b.fromArray(workerData.A, [workerData.M, workerData.K], 'float32', 'float32');
       for (let i = 0; i < 10; i++) b.matmul(a, a, false, true);
       process.exit(0);`,
      { eval: true, workerData: data },
    );
    await new Promise((resolve) => w.once('exit', resolve));
    using x = tensor(Float32Array.from([1, 2, 3, 4]), [2, 2]);
    using y = await ops.matmul(x, x);
    expect(Array.from(await y.toArray())).toEqual([7, 10, 15, 22]);
  });

  it('workers terminated with thousands of ops in flight end cleanly (the dispatcher is not released after Node freed it)', () => {
    // Each worker queues 20,000 small products and is terminated while they run: its env is torn
    // down with jobs in flight. Node frees the env's threadsafe function in its cleanup, and the
    // addon used to release it afterwards (the process aborted in uv_mutex_lock). In a child
    // process, so that an abort fails this test instead of the test runner.
    const script = `
      const { Worker } = require('node:worker_threads');
      let left = 8;
      function one() {
        const w = new Worker(\`
          const { workerData, parentPort } = require('node:worker_threads');
          const b = require(workerData + '/node_modules/node-gyp-build')(workerData);
          const a = b.fromArray(new Float32Array(64).fill(1), [8, 8], 'float32', 'float32');
          for (let i = 0; i < 20000; i++) b.matmul(a, a, false, false);
          parentPort.postMessage('queued');\`, { eval: true, workerData: process.argv[1] });
        w.once('message', () => setTimeout(() => w.terminate(), 5));
        w.once('exit', () => { if (--left > 0) one(); else console.log('done'); });
      }
      one();`;
    const r = spawnSync(process.execPath, ['-e', script, packageRoot], { encoding: 'utf8', timeout: 120_000 });
    expect({ status: r.status, signal: r.signal, out: r.stdout.trim() }).toEqual({ status: 0, signal: null, out: 'done' });
  });
});

describe('I/O threads (file reads and row gathers)', () => {
  it('workers terminated with reads into their own arrays in flight end cleanly (teardown waits for running reads)', () => {
    // Each worker queues 400 reads of 4 MiB (and row gathers) into its own arrays and is
    // terminated while they run: its arrays are freed at teardown, which must wait for the reads
    // that write into them. In a child process, so that a crash fails this test.
    const script = `
      const fs = require('node:fs'), os = require('node:os'), path = require('node:path');
      const { Worker } = require('node:worker_threads');
      const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'saekit-io-')), 'x.bin');
      fs.writeFileSync(file, Buffer.alloc(4 << 20, 1));
      let left = 6;
      function one() {
        const w = new Worker(\`
          const { workerData, parentPort } = require('node:worker_threads');
          const fs = require('node:fs');
          const b = require(workerData.root + '/node_modules/node-gyp-build')(workerData.root);
          const fd = fs.openSync(workerData.file, 'r');
          const dst = new Float32Array(1 << 20);
          const slots = Uint32Array.from({ length: 1024 }, (_, i) => (i * 7) % 1024);
          for (let i = 0; i < 400; i++) {
            b.readRows(fd, 0, 1 << 20, 'float32', dst, 0);
            b.gatherRows(dst, slots, 0, 1024, new Float32Array(1 << 20), 0, 1024);
          }
          parentPort.postMessage('queued');\`, { eval: true, workerData: { root: process.argv[1], file } });
        w.once('message', () => setTimeout(() => w.terminate(), 3));
        w.once('exit', () => { if (--left > 0) one(); else console.log('done'); });
      }
      one();`;
    const r = spawnSync(process.execPath, ['-e', script, packageRoot], { encoding: 'utf8', timeout: 120_000 });
    expect({ status: r.status, signal: r.signal, out: r.stdout.trim(), err: r.stderr.trim().slice(0, 300) }).toEqual({ status: 0, signal: null, out: 'done', err: '' });
  });

  it.each([
    { offset: 0, workers: 8 },
    { offset: 4096, workers: 6 },
  ])('workers terminated while reads fill their external (allocHost) arrays end cleanly: the arrays outlive the reads (views $offset bytes into their buffers)', ({ offset, workers }) => {
    // As above, into arrays from allocHost (2 MiB and up: native memory behind an external
    // ArrayBuffer, as the mixing buffer and recycled batches are). Node frees such memory in a
    // cleanup hook of the worker's env, before the env's own teardown waits for its reads: the
    // reads wrote into freed memory (SIGSEGV in 3 of 3 runs of a 20-worker repro). A read holds
    // its destination's memory by the ArrayBuffer's start (what the buffer's finalizer is given),
    // so a view 4 KiB in must be traced back to its buffer: keyed by the view's own address, the
    // finalizer found no read in flight and freed the memory under it.
    const script = `
      const fs = require('node:fs'), os = require('node:os'), path = require('node:path');
      const { Worker } = require('node:worker_threads');
      require(process.argv[1] + '/node_modules/node-gyp-build')(process.argv[1]); // the main thread holds the addon
      const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'saekit-io-')), 'x.bin');
      fs.writeFileSync(file, Buffer.alloc(8 << 20, 1));
      let left = ${workers};
      function one() {
        const w = new Worker(\`
          const { workerData, parentPort } = require('node:worker_threads');
          const fs = require('node:fs');
          const b = require(workerData.root + '/node_modules/node-gyp-build')(workerData.root);
          const fd = fs.openSync(workerData.file, 'r');
          const slots = Uint32Array.from({ length: 2048 }, (_, i) => (i * 7) % 2048);
          const view = () => new Float32Array(b.allocHost((8 << 20) + ${offset}), ${offset}, 2 << 20);
          for (let i = 0; i < 200; i++) {
            const dst = view();
            b.readRows(fd, 0, 2 << 20, 'float32', dst, 0);
            b.readRowsToSlots(fd, 0, 2048, 1024, 'float32', view(), slots, 0);
            b.gatherRows(dst, slots, 0, 2048, view(), 0, 1024);
          }
          parentPort.postMessage('queued');\`, { eval: true, workerData: { root: process.argv[1], file } });
        w.once('message', () => setTimeout(() => w.terminate(), left % 4));
        w.once('exit', () => { if (--left > 0) one(); else console.log('done'); });
      }
      one();`;
    const r = spawnSync(process.execPath, ['-e', script, packageRoot], { encoding: 'utf8', timeout: 120_000 });
    expect({ status: r.status, signal: r.signal, out: r.stdout.trim(), err: r.stderr.trim().slice(0, 300) }).toEqual({ status: 0, signal: null, out: 'done', err: '' });
  });

  it.runIf(process.platform === 'linux' && haveDist)('the addon stays loaded after the only worker that used it (for reads alone) ends: its I/O threads live on', () => {
    // Node unloads an addon when the last env that loaded it ends. The I/O threads outlive every
    // env, so unloading it unmapped their code (SIGSEGV in 4 of 10 runs of 30 such workers): the
    // addon pins itself when it loads, not only when the op executor starts.
    const script = `
      const fs = require('node:fs'), os = require('node:os'), path = require('node:path');
      const { Worker } = require('node:worker_threads');
      const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'saekit-io-')), 'x.bin');
      const w = new Worker(\`
        const { workerData } = require('node:worker_threads');
        import(workerData.root + '/dist/index.js').then(async (sk) => {
          const npy = workerData.file + '.npy';
          await sk.io.writeNpy(npy, { dtype: 'float32', shape: [256, 64], data: new Float32Array(256 * 64) });
          const src = await sk.openActivations(npy);
          for await (const b of src.batches({ batchSize: 64 })) {} // in order: no op of the executor's
          await src.close();
        });\`,
        { eval: true, workerData: { root: process.argv[1], file } });
      w.once('exit', (code) => {
        const maps = fs.readFileSync('/proc/self/maps', 'utf8');
        console.log(code, maps.includes('saekit.node') ? 'mapped' : 'unmapped');
      });`;
    const r = spawnSync(process.execPath, ['-e', script, packageRoot], { encoding: 'utf8', timeout: 60_000 });
    expect({ status: r.status, signal: r.signal, out: r.stdout.trim(), err: r.stderr.trim().slice(0, 300) }).toEqual({ status: 0, signal: null, out: '0 mapped', err: '' });
  });

  it('a shuffled pass over a file gives the same rows with SAEKIT_IO_THREADS 1, 3 and the default', () => {
    // The sum of every row times its position in the pass: any lost, repeated or misplaced row changes it.
    const script = `
      const fs = require('node:fs'), os = require('node:os'), path = require('node:path');
      (async () => {
        const { openActivations, io } = await import(process.argv[1] + '/dist/index.js');
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'saekit-io-'));
        const rows = 5003, d = 37;
        const data = Float32Array.from({ length: rows * d }, (_, i) => ((i * 2654435761) % 1000) / 1000 - 0.5);
        await io.writeNpy(path.join(dir, 'x.npy'), { dtype: 'float32', shape: [rows, d], data });
        const src = await openActivations(path.join(dir, 'x.npy'));
        let sum = 0, k = 0;
        for await (const b of src.batches({ batchSize: 97, shuffle: true, seed: 5, bufferBytes: 1 << 18 })) {
          for (let r = 0; r < b.rows; r++, k++) for (let c = 0; c < d; c++) sum += b.data[r * d + c] * ((k % 13) + 1) * (c + 1);
        }
        await src.close();
        console.log(k + ' ' + sum.toFixed(6));
      })();`;
    const run = (threads?: string) => {
      const env = { ...process.env };
      if (threads) env.SAEKIT_IO_THREADS = threads;
      else delete env.SAEKIT_IO_THREADS;
      const r = spawnSync(process.execPath, ['-e', script, packageRoot], { encoding: 'utf8', timeout: 120_000, env });
      expect(r.status, r.stderr).toBe(0);
      return r.stdout.trim();
    };
    const base = run();
    expect(base).toMatch(/^5003 -?\d+\.\d{6}$/);
    expect(run('1')).toBe(base);
    expect(run('3')).toBe(base);
  });
});

describe('_gemmDirect (synchronous, on the calling JS thread)', () => {
  // Both in a child process: the bugs these guard against hung or crashed the process.
  function runChild(script: string, env: NodeJS.ProcessEnv = {}) {
    const r = spawnSync(process.execPath, ['-e', script, packageRoot], {
      encoding: 'utf8',
      timeout: 120_000,
      env: { ...process.env, ...env },
    });
    return { status: r.status, signal: r.signal, out: r.stdout.trim() };
  }

  it('three workers multiplying at once with the built-in GEMM each get exact products', () => {
    // Integer inputs: every product is exact in float32, so any mix-up between the threads shows.
    // The synchronous path's pool was one for the process: concurrent calls hung, crashed or mixed
    // up each other's tasks.
    const script = `
      const { Worker } = require('node:worker_threads');
      let n = 0, bad = 0;
      for (let w = 0; w < 3; w++)
        new Worker(\`
          const { workerData: [root, seed], parentPort } = require('node:worker_threads');
          const b = require(root + '/node_modules/node-gyp-build')(root);
          const M = 192, N = 192, K = 192;
          const A = new Float32Array(M * K), B = new Float32Array(K * N), C = new Float32Array(M * N);
          for (let i = 0; i < A.length; i++) A[i] = ((i * 7 + seed) % 13) - 6;
          for (let i = 0; i < B.length; i++) B[i] = ((i * 5 + seed) % 11) - 5;
          const R = new Float64Array(M * N);
          for (let i = 0; i < M; i++) for (let k = 0; k < K; k++) for (let j = 0; j < N; j++) R[i * N + j] += A[i * K + k] * B[k * N + j];
          let bad = 0;
          for (let r = 0; r < 60; r++) {
            C.fill(NaN);
            b._gemmDirect('builtin', false, false, M, N, K, A, B, C);
            if (C.some((c, i) => c !== R[i])) bad++;
          }
          parentPort.postMessage(bad);\`, { eval: true, workerData: [process.argv[1], w] })
          .on('message', (m) => { bad += m; if (++n === 3) console.log('wrong products: ' + bad); });`;
    expect(runChild(script, { SAEKIT_NUM_THREADS: '4' })).toEqual({ status: 0, signal: null, out: 'wrong products: 0' });
  });

  it('right after setThreads (while the executor replaces its pool) sizes its own pool safely', () => {
    // It read the size of the executor's pool, which setThreads replaces on the executor thread:
    // in between the pointer is null, and the JS thread crashed on it.
    const script = `
      const b = require(process.argv[1] + '/node_modules/node-gyp-build')(process.argv[1]);
      const A = Float32Array.from([1, 2, 3, 4]), C = new Float32Array(4);
      let bad = 0;
      for (let i = 0; i < 2000; i++) {
        b.setThreads(1 + (i % 4));
        b._gemmDirect('builtin', false, false, 2, 2, 2, A, A, C);
        if (C.join() !== '7,10,15,22') bad++;
      }
      console.log('wrong products: ' + bad);`;
    expect(runChild(script)).toEqual({ status: 0, signal: null, out: 'wrong products: 0' });
  });
});
