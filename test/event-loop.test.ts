import { describe, expect, it } from 'vitest';

import { backend, ops, randn } from '../lib/index.js';

describe('work runs off the JS thread', () => {
  it('a 1 ms interval keeps firing while a 2048^3 matmul runs (largest gap < 50 ms)', async () => {
    using a = randn([2048, 2048], { seed: 1 });
    using b = randn([2048, 2048], { seed: 2 });
    await a.toArray(); // make sure the fills are done before timing
    const gaps: number[] = [];
    let last = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      gaps.push(now - last);
      last = now;
    }, 1);
    const t0 = performance.now();
    const before = backend.stats().completed;
    // A few products back to back, so the measurement covers real work even on a fast machine.
    for (let i = 0; i < 3; i++) {
      using c = await ops.matmul(a, b);
      expect(c.shape).toEqual([2048, 2048]);
    }
    const elapsed = performance.now() - t0;
    clearInterval(timer);
    expect(backend.stats().completed).toBeGreaterThan(before);
    // The interval must have fired throughout (at most one tick per 1 ms, at least one per 50 ms).
    expect(gaps.length).toBeGreaterThan(elapsed / 50);
    expect(Math.max(...gaps)).toBeLessThan(50);
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
