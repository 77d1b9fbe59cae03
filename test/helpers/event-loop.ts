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
