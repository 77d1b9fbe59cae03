import { describe, expect, it } from 'vitest';

import { linearAssignment, linearAssignmentAsync, type AssignmentResult } from '../lib/eval/assignment.js';
import { bruteForceAssignment } from './helpers/eval-reference.js';
import { lcg } from './helpers/reference.js';
import { native } from '../lib/native/index.js';

/** A valid one-to-one assignment of every row of the smaller side, total consistent with it. */
function checkMatching(r: AssignmentResult, cost: Float64Array, rows: number, cols: number): void {
  expect(r.rowToCol.length).toBe(rows);
  expect(r.colToRow.length).toBe(cols);
  let assigned = 0;
  let total = 0;
  for (let i = 0; i < rows; i++) {
    const j = r.rowToCol[i]!;
    if (j < 0) continue;
    expect(r.colToRow[j]).toBe(i);
    total += cost[i * cols + j]!;
    assigned++;
  }
  expect(assigned).toBe(Math.min(rows, cols));
  expect(new Set(Array.from(r.rowToCol).filter((j) => j >= 0)).size).toBe(assigned);
  expect(r.total).toBeCloseTo(total, 9);
}

const close = (a: number, b: number) => Math.abs(a - b) <= 1e-9 * (1 + Math.abs(b));

describe('linearAssignmentAsync (native)', () => {
  it('equals brute force for every shape up to 8 x 8 (min and max, continuous and tied integer costs)', async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    for (let rows = 1; rows <= 8; rows++) {
      for (let cols = 1; cols <= 8; cols++) {
        if (rows * cols > 42 && rows !== cols) continue; // keep enumeration small
        for (let rep = 0; rep < 2; rep++) {
          const cost = Float64Array.from({ length: rows * cols }, () => (rep === 1 ? Math.floor(next() * 3) : 20 * next() - 10));
          for (const maximize of [false, true]) {
            const r = await linearAssignmentAsync(cost, rows, cols, { maximize });
            checkMatching(r, cost, rows, cols);
            const want = bruteForceAssignment(cost, rows, cols, maximize);
            expect(close(r.total, want), `seed ${seed} ${rows}x${cols} max=${maximize} rep=${rep}: ${r.total} vs ${want}`).toBe(true);
          }
        }
      }
    }
  });

  it('equals the JS solver on random 300 x 300, 200 x 350, 350 x 200 and odd sizes (min, max, ties)', async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const shapes: [number, number][] = [[300, 300], [200, 350], [350, 200], [1, 1], [1, 9], [9, 1], [17, 17], [63, 64], [101, 37], [129, 129]];
    for (const [rows, cols] of shapes) {
      for (const kind of ['float', 'ties', 'negative'] as const) {
        const cost = Float64Array.from({ length: rows * cols }, () => (kind === 'ties' ? Math.floor(next() * 5) : kind === 'negative' ? -1e3 * next() : next()));
        for (const maximize of [false, true]) {
          const js = linearAssignment(cost, rows, cols, { maximize });
          const nat = await linearAssignmentAsync(cost, rows, cols, { maximize });
          checkMatching(nat, cost, rows, cols);
          expect(close(nat.total, js.total), `seed ${seed} ${rows}x${cols} ${kind} max=${maximize}: ${nat.total} vs ${js.total}`).toBe(true);
        }
      }
    }
  });

  it('equals the JS solver on a 1024 x 1024 dense random instance (the JV initialisation path)', async () => {
    const next = lcg(99);
    const n = 1024;
    const cost = Float64Array.from({ length: n * n }, () => next());
    const js = linearAssignment(cost, n, n);
    const nat = await linearAssignmentAsync(cost, n, n);
    checkMatching(nat, cost, n, n);
    expect(close(nat.total, js.total)).toBe(true);
  });

  it('fed in chunks: equals the JS solver across chunk boundaries (both orientations) and names bad values as the JS solver does', async () => {
    const next = lcg(1234);
    // 1201 x 467 and 467 x 1201: 560k values, more than one 512k-value chunk, odd sizes.
    for (const [rows, cols] of [[1201, 467], [467, 1201]] as const) {
      const cost = Float64Array.from({ length: rows * cols }, () => Math.round(next() * 1000) / 100);
      for (const maximize of [false, true]) {
        const js = linearAssignment(cost, rows, cols, { maximize });
        const nat = await linearAssignmentAsync(cost, rows, cols, { maximize });
        checkMatching(nat, cost, rows, cols);
        expect(close(nat.total, js.total)).toBe(true);
      }
    }
    // Checked natively as the rows are copied: the same messages as the synchronous solver's.
    const rows = 1201;
    const cols = 467;
    for (const [at, v, code] of [[rows * cols - 3, -Infinity, 'ERR_SAEKIT_NONFINITE'], [cols * 1150 + 1, NaN, 'ERR_SAEKIT_NONFINITE'], [5, 1e301, 'ERR_SAEKIT_ARG']] as const) {
      const cost = new Float64Array(rows * cols);
      cost[at] = v;
      let want = '';
      try {
        linearAssignment(cost, rows, cols);
      } catch (e) {
        want = (e as Error).message;
      }
      expect(want).toMatch(new RegExp(`cost\\[${at}\\]`));
      await expect(linearAssignmentAsync(cost, rows, cols)).rejects.toMatchObject({ code, message: want });
    }
  });

  it('handles empty sides and rejects bad input like the JS solver', async () => {
    const e = await linearAssignmentAsync(new Float64Array(0), 0, 3);
    expect(Array.from(e.colToRow)).toEqual([-1, -1, -1]);
    expect(e.total).toBe(0);
    await expect(linearAssignmentAsync(new Float64Array(5), 2, 3)).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE', message: expect.stringMatching(/cost/) });
    await expect(linearAssignmentAsync(Float64Array.of(0, 1, Infinity, 0, 0, 0), 2, 3)).rejects.toMatchObject({ code: 'ERR_SAEKIT_NONFINITE', message: expect.stringMatching(/cost\[2\]/) });
    await expect(linearAssignmentAsync(new Float64Array(6), 2, 3, { maximize: 'no' as unknown as boolean })).rejects.toMatchObject({ message: expect.stringMatching(/options\.maximize/) });
  });
});

describe('a refused value frees the native cost at once', () => {
  it('lapAppend that refuses a value ends the lap (its buffer freed), and lapFree frees one given up on', async () => {
    const b = native() as unknown as Record<string, (...args: unknown[]) => unknown>;
    const lap = b.lapCreate!(2, 2, false);
    expect(() => b.lapAppend!(lap, Float64Array.from([1, NaN, 3, 4]), 0, 'c')).toThrow(/c\[1\]/);
    expect(() => b.lapRun!(lap)).toThrow(/has not run yet/);
    const lap2 = b.lapCreate!(2, 2, false);
    b.lapAppend!(lap2, Float64Array.from([1, 2]), 0, 'c');
    b.lapFree!(lap2);
    b.lapFree!(lap2); // idempotent
    expect(() => b.lapAppend!(lap2, Float64Array.from([3, 4]), 1, 'c')).toThrow(/has not run yet/);
    // Through the API: a NaN is named and the next call works.
    await expect(linearAssignmentAsync(Float64Array.from([1, NaN, 3, 4]), 2, 2)).rejects.toThrow(/cost\[1\]/);
    expect(Array.from((await linearAssignmentAsync(Float64Array.from([1, 2, 3, 0]), 2, 2)).rowToCol)).toEqual([0, 1]);
  });
});

describe('options are checked by name', () => {
  it("a misspelt option is an error naming the right one (maximise used to minimise silently)", async () => {
    const cost = Float64Array.from([1, 5, 5, 1]);
    expect(() => linearAssignment(cost, 2, 2, { maximise: true } as never)).toThrow(/Unknown option options\.maximise \(did you mean options\.maximize\?\)/);
    await expect(linearAssignmentAsync(cost, 2, 2, { maximise: true } as never)).rejects.toThrow(/did you mean options\.maximize/);
    expect(linearAssignment(cost, 2, 2, { maximize: true }).rowToCol).toEqual(Int32Array.from([1, 0]));
  });
});

describe('costs near the float64 maximum', () => {
  it('are refused by name before the solver runs (the native solver read and wrote index -1 on them and crashed)', async () => {
    // Found by fuzzing: reduced costs c - v overflowed to Infinity, so no column was chosen.
    const cost = Float64Array.from([1e308, -1.7e308, 8e307, 1, -1e308, 1.7e308, 1, -8e307, 1, 1, 1e308, -1e308, 1.7e308, 1, -1, 0]);
    for (const solve of [linearAssignmentAsync, async (...a: Parameters<typeof linearAssignment>) => linearAssignment(...a)]) {
      await expect(solve(cost, 4, 4)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/magnitude at most 1e300 for cost\[0\]/) });
    }
    // At the limit (magnitude exactly 1e300) they still solve optimally, in both solvers.
    const edge = Float64Array.from([1e300, -1e300, -1e300, 1e300]);
    for (const solve of [linearAssignmentAsync, async (...a: Parameters<typeof linearAssignment>) => linearAssignment(...a)]) {
      for (const maximize of [false, true]) {
        const r = await solve(edge, 2, 2, { maximize });
        expect(r.total).toBe(bruteForceAssignment(edge, 2, 2, maximize));
      }
    }
  });
});

describe('linearAssignmentAsync: cost detached while the call runs', () => {
  // The rows are copied across pauses and `total` reads cost after the native solve: detached,
  // the copy failed with a bare TypeError (subarray of a detached buffer) and the solve resolved
  // with total NaN (or 0).
  const [rows, cols] = [1200, 1000]; // 3 chunks of rows
  const randomCost = (next: () => number) => Float64Array.from({ length: rows * cols }, () => next());
  const expected = `Expected cost to keep its ${rows * cols} values until the call settles but it now has 0 (was its ArrayBuffer detached or resized?)`;

  it('detached between two chunks of rows: ERR_SAEKIT_ARG naming cost', async () => {
    const cost = randomCost(lcg(Date.now() >>> 0));
    const p = linearAssignmentAsync(cost, rows, cols);
    setImmediate(() => structuredClone(cost.buffer, { transfer: [cost.buffer] }));
    await expect(p).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expected });
  });

  it('detached while the native solver runs: ERR_SAEKIT_ARG naming cost, not a wrong total; untouched, the total is the cost of the matching', async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const addon = native() as unknown as { lapRun: (...a: unknown[]) => unknown };
    const lapRun = addon.lapRun;
    let onRun: () => void = () => undefined;
    addon.lapRun = (...a: unknown[]) => {
      const r = lapRun.apply(addon, a);
      onRun();
      return r;
    };
    try {
      const cost = randomCost(next);
      const untouched = await linearAssignmentAsync(cost, rows, cols);
      let want = 0;
      for (let i = 0; i < rows; i++) if (untouched.rowToCol[i]! >= 0) want += cost[i * cols + untouched.rowToCol[i]!]!;
      expect(untouched.total, `seed ${seed}`).toBe(want);
      onRun = () => structuredClone(cost.buffer, { transfer: [cost.buffer] });
      await expect(linearAssignmentAsync(cost, rows, cols)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expected });
    } finally {
      addon.lapRun = lapRun;
    }
  });
});
