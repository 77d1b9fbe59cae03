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
