import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';

import { describe, expect, it } from 'vitest';

import { ops, tensor } from '../lib/index.js';
import { packageRoot } from '../lib/native/index.js';
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
});
