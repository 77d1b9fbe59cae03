/**
 * Slicing long JS work between turns of the event loop (internal). A loop counts its work with
 * due(units) and awaits pause() when the current slice has run SLICE_MS; work written as a
 * generator that yields its units runs at once with runAll or in slices with runSliced, with the
 * same result. Used by eval/, features/, io/ and data/ (a module of its own, so none of them
 * imports another for it).
 */

/** Lets timers and I/O run between two chunks of synchronous work. @internal */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Milliseconds of work between two turns of the event loop. */
const SLICE_MS = 20;

/** Units of work (about one multiply-add each) between two looks at the clock: ~0.1 ms. @internal */
export const CHECK_UNITS = 1 << 17;

/**
 * When the current slice began: the last return from pause(). Shared by every call, so that work
 * nested in another (a score function awaited by permutationTest) counts from the same start.
 */
let sliceStart = performance.now();
/** Units counted by due() since it last read the clock. */
let unchecked = 0;

/**
 * Counts `units` of work just done; true once the slice has run SLICE_MS, and the caller then
 * awaits pause(). Reads the clock only every CHECK_UNITS units, so a hot loop can call it often.
 * @internal
 */
export function due(units: number): boolean {
  unchecked += units;
  if (unchecked < CHECK_UNITS) return false;
  unchecked = 0;
  return performance.now() - sliceStart > SLICE_MS;
}

/**
 * Lets timers and I/O run, then starts a new slice. With `signal`, an abort seen after the turn
 * throws signal.reason (the long-running APIs' options.signal). @internal
 */
export async function pause(signal?: AbortSignal): Promise<void> {
  await yieldToEventLoop();
  sliceStart = performance.now();
  signal?.throwIfAborted();
}

/** Elements forBlocks hands its body at a time. */
const BLOCK = 1 << 16;

/**
 * Runs `body(i0, i1)` over [0, n) in blocks of 2^16 elements in order, with a turn of the event
 * loop between blocks once the slice has run; each element counts `units` for due(). @internal
 */
export async function forBlocks(n: number, body: (i0: number, i1: number) => void, units = 1): Promise<void> {
  for (let i0 = 0; i0 < n; i0 += BLOCK) {
    const i1 = Math.min(n, i0 + BLOCK);
    body(i0, i1);
    if (due(units * (i1 - i0))) await pause();
  }
}

/**
 * Runs work written as a generator to its end at once. The generator yields the units of work
 * (as for due()) done since its last yield, at least every few milliseconds. @internal
 */
export function runAll<T>(work: Generator<number, T>): T {
  for (;;) {
    const r = work.next();
    if (r.done) return r.value;
  }
}

/**
 * Runs the same work in slices between turns of the event loop (due / pause), with the same
 * result as runAll. With `signal`, an abort seen after a pause throws signal.reason (the
 * generator is closed: its finally blocks run). @internal
 */
export async function runSliced<T>(work: Generator<number, T>, signal?: AbortSignal): Promise<T> {
  for (;;) {
    const r = work.next();
    if (r.done) return r.value;
    if (due(r.value)) {
      await pause();
      if (signal?.aborted) {
        work.return(undefined as T); // its finally blocks run
        signal.throwIfAborted();
      }
    }
  }
}
