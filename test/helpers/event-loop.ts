import { vi } from 'vitest';

import { pause } from '../../lib/slices.js';

/**
 * Watches the event loop: a 1 ms interval records the time between its firings, so a test can
 * check that native or sliced work left the JS thread free (no gap near the work's length).
 */
export function watchGaps(): { stop(): number[] } {
  const gaps: number[] = [];
  let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    gaps.push(now - last);
    last = now;
  }, 1);
  return {
    stop() {
      clearInterval(timer);
      return gaps;
    },
  };
}

/**
 * Runs `call` under watchGaps (after a 5 ms pause that lets the preparation's garbage go):
 * its value, how long it took, the longest gap between firings and their number. Runs it again,
 * up to `tries` times in all, while the longest gap is over `bound` (default gapBound): on a loaded machine one run
 * can be descheduled for longer than a slice, while work that holds the JS thread (the fault these
 * tests catch) exceeds the bound on every run.
 */
export async function watchCall<T>(
  call: () => Promise<T>,
  { tries = 3, bound = gapBound }: { tries?: number; bound?: (elapsed: number) => number } = {},
): Promise<{ value: T; elapsed: number; longest: number; firings: number }> {
  for (let t = 1; ; t++) {
    await new Promise((r) => setTimeout(r, 5));
    const watch = watchGaps();
    const t0 = performance.now();
    const value = await call();
    const elapsed = performance.now() - t0;
    await new Promise((r) => setTimeout(r, 5));
    const gaps = watch.stop();
    const run = { value, elapsed, longest: Math.max(...gaps), firings: gaps.length };
    if (run.longest < bound(elapsed) || t >= tries) return run;
  }
}

/**
 * The bound on the longest gap of a sliced call: 150 ms (a slice is ~20 ms; the rest is a loaded
 * machine's scheduler), or a sixth of the call when that is longer (with several runnable threads
 * per core every slice stretches with the call).
 */
export function gapBound(elapsed: number): number {
  return Math.max(150, elapsed / 6);
}

/**
 * Runs `body` with performance.now() moving 50 ms per call, so every look at the clock finds the
 * slice spent and sliced work turns the event loop at each of them (as on a slow machine): an abort
 * queued with setImmediate before the call is then seen at the work's first turn, deterministically.
 * `onLook`, when given, runs at each look (before it returns). Afterwards the slice's start, read
 * from the mocked clock (ahead of the real one), is reset.
 */
export async function everyLookATurn<T>(body: () => Promise<T>, onLook?: () => void): Promise<T> {
  let t = performance.now();
  const spy = vi.spyOn(performance, 'now').mockImplementation(() => {
    onLook?.();
    return (t += 50);
  });
  try {
    return await body();
  } finally {
    spy.mockRestore();
    await pause();
  }
}
