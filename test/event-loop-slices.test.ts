/**
 * svcca, rsa, cka, the permutation tests and CooccurrenceAccumulator.result() run on the JS thread
 * in slices that give the event loop a turn about every 10-20 ms: a 1 ms interval keeps firing
 * through calls that held the thread for 0.4-1 s each when they were synchronous, and the results
 * are the synchronous implementation's bits (test/fixtures/sync-golden.json, made from commit
 * da8bb2f by test/fixtures/generate-sync-golden.ts; its seven rsa entries with the 'correlation' or
 * 'cosine' inner measure were written again when those dissimilarities began to be rounded to
 * multiples of 2^-40 for ties, every other entry unchanged: see the generator).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { CooccurrenceAccumulator } from '../lib/eval/cooccurrence.js';
import { cka, permutationTest, rsa, svcca } from '../lib/features/similarity.js';
import { watchCall, watchGaps } from './helpers/event-loop.js';
import { lcg } from './helpers/reference.js';
import { largeCases, smallCases, type Digest } from './helpers/sync-golden.js';

const golden = JSON.parse(readFileSync(path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures', 'sync-golden.json'), 'utf8')) as Record<string, Digest>;

describe('the sliced functions give the synchronous bits', () => {
  it('on seeded inputs of odd sizes, every option (svcca, rsa, cka, the permutation tests, averageRanks, result())', async () => {
    expect(smallCases.length).toBeGreaterThan(20);
    for (const c of smallCases) {
      expect(golden[c.name], c.name).toBeDefined();
      expect(await c.prepare()(), c.name).toEqual(golden[c.name]);
    }
  });
});

describe('the event loop runs during', () => {
  // The synchronous code's time on the loaded 2-core development machine is in each case's
  // syncMs (one stall that long); sliced, the longest gap there was 21-44 ms in 8 runs of each.
  // The bound, 150 ms (a third of the call on a faster machine, at least 60 ms), leaves a loaded
  // machine's scheduler ~100 ms on top of a slice, far below the calls' length.
  for (const [key, c] of Object.entries(largeCases)) {
    it(`${c.name} (synchronous: one ~${c.syncMs} ms stall)`, async () => {
      const call = c.prepare();
      // Up to three runs while the longest gap is over the bound (a loaded machine's scheduler;
      // a synchronous stall exceeds it on every run).
      const bound = (elapsed: number) => Math.min(150, Math.max(60, elapsed / 3));
      const { value: digest, elapsed, longest, firings } = await watchCall(call, { bound });
      expect(digest, 'the synchronous bits').toEqual(golden[c.name]);
      expect(longest, `${key}: longest gap of a ${elapsed.toFixed(0)} ms call`).toBeLessThan(bound(elapsed));
      expect(firings, `${key}: ${elapsed.toFixed(0)} ms`).toBeGreaterThan(elapsed / 50);
    }, 20_000);
  }
});

describe('while a call is in progress', () => {
  it('CooccurrenceAccumulator.add() is refused until result() settles, and changes nothing', async () => {
    const next = lcg(61);
    const codes = { rows: 300, k: 4, values: Float32Array.from({ length: 1200 }, () => next()), indices: Int32Array.from({ length: 1200 }, () => Math.floor(next() * 500)) };
    const acc = new CooccurrenceAccumulator(500, { chunkTokens: 16 });
    acc.add(codes);
    const pending = acc.result({ top: 50 });
    expect(() => acc.add(codes)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/no add\(\) while a result\(\) .* is in progress/) }));
    const first = await pending;
    expect(await acc.result({ top: 50 })).toEqual(first);
    acc.add(codes); // accepted once it settled
    expect((await acc.result()).chunks).toBe(Math.ceil(600 / 16));
  });

  it('permutationTest: an A detached while a run is scored is a named error, not a p-value from NaN runs', async () => {
    const next = lcg(63);
    const [n, dA, dB] = [50, 3, 2];
    const A = Float64Array.from({ length: n * dA }, () => next());
    const B = Float64Array.from({ length: n * dB }, () => next());
    let calls = 0;
    const score = async (a: Float64Array, b: Float64Array): Promise<number> => {
      if (++calls === 4) structuredClone(A.buffer, { transfer: [A.buffer] }); // during the third run
      await new Promise((r) => setImmediate(r));
      let s = 0;
      for (let i = 0; i < n; i++) s += a[i * dA]! * b[i * dB]!;
      return s;
    };
    await expect(permutationTest(score, A, B, { n, dB, runs: 20 })).rejects.toMatchObject({
      code: 'ERR_SAEKIT_ARG',
      message: expect.stringMatching(/Expected A to keep its 150 values until the call settles but it now has 0/),
    });
  });

  it('permutationTest: an A detached while the last run is scored is a named error, not a result from that run', async () => {
    const next = lcg(65);
    const [n, dA, dB, runs] = [31, 3, 2, 4];
    const A = Float64Array.from({ length: n * dA }, () => next());
    const B = Float64Array.from({ length: n * dB }, () => next());
    let calls = 0;
    const score = async (a: Float64Array, b: Float64Array): Promise<number> => {
      if (++calls === runs + 1) structuredClone(A.buffer, { transfer: [A.buffer] }); // the last run: no run follows to look
      await new Promise((r) => setImmediate(r));
      let s = 0;
      for (let i = 0; i < a.length / dA; i++) s += a[i * dA]! * b[i * dB]!;
      return s;
    };
    await expect(permutationTest(score, A, B, { n, dB, runs })).rejects.toMatchObject({
      code: 'ERR_SAEKIT_ARG',
      message: expect.stringMatching(/Expected A to keep its 93 values until the call settles but it now has 0/),
    });
    expect(calls).toBe(runs + 1);
  });

  // A, then B, detached while A is still being copied (a stale slice clock makes the first look
  // at it pause there): B's after both shapes were checked and before B is read (not a shape
  // error), A's during its own copy (not zeros, nor a bare TypeError from subarray).
  for (const [side, seed] of [['B', 64], ['A', 66]] as const) {
    it(`svcca, rsa and cka: ${side} detached while A is still being copied is the named ERR_SAEKIT_ARG`, async () => {
      const next = lcg(seed);
      const [n, d] = [1500, 200]; // A: 300,000 values, several blocks of 2^16 and more than one look at the clock (2^17 units)
      const calls = {
        cka: (A: Float64Array, B: Float64Array) => cka(A, B, { n, dA: d, dB: d }),
        rsa: (A: Float64Array, B: Float64Array) => rsa(A, B, { n, dA: d, dB: d }),
        svcca: (A: Float64Array, B: Float64Array) => svcca(A, B, { n, dA: d, dB: d }),
      };
      for (const [name, f] of Object.entries(calls)) {
        const A = Float64Array.from({ length: n * d }, () => next());
        const B = Float64Array.from({ length: n * d }, () => next());
        await new Promise((r) => setTimeout(r, 30)); // a stale slice clock: the first look at it pauses, inside A's copy
        // Queued before the call's first pause, so it runs before the call resumes.
        const gone = side === 'A' ? A : B;
        setImmediate(() => structuredClone(gone.buffer, { transfer: [gone.buffer] }));
        await expect(f(A, B), name).rejects.toMatchObject({
          code: 'ERR_SAEKIT_ARG',
          message: expect.stringMatching(new RegExp(`Expected ${side} to keep its 300000 values until the call settles but it now has 0`)),
        });
      }
    });
  }

  it('permutationTest: a B detached between runs is a named error, not zeros', async () => {
    const next = lcg(62);
    const [n, dB] = [50, 3];
    const A = Float64Array.from({ length: n * 2 }, () => next());
    const B = Float64Array.from({ length: n * dB }, () => next());
    let calls = 0;
    const score = async (a: Float64Array, b: Float64Array): Promise<number> => {
      await new Promise((r) => setImmediate(r));
      if (++calls === 3) structuredClone(B.buffer, { transfer: [B.buffer] });
      return a[0]! * b[0]!;
    };
    await expect(permutationTest(score, A, B, { n, dB, runs: 10 })).rejects.toMatchObject({
      code: 'ERR_SAEKIT_ARG',
      message: expect.stringMatching(/Expected B to keep its 150 values until the call settles but it now has 0/),
    });
  });
});
