/**
 * Large float32 buffers released by finished passes (mixing buffers, recycled batch arrays),
 * kept through WeakRefs so a later pass can reuse them until the garbage collector takes them.
 * Fresh memory is expensive to hand out (every page is faulted in on first touch, which on some
 * VMs costs more than reading the data), and a training script typically runs pass after pass.
 *
 * A spare that is not taken soon gives its pages back to the system at once (discardHost), rather
 * than holding them until a full collection, which an idle process may not run for a long time:
 * when a pass that began after its release ends without having taken it (that pass had no use
 * for it; passes running side by side take what they need as they start), or after IDLE_MS. It
 * stays reusable (a pass that takes it faults its pages in again, as with new memory). Only
 * allocHost's buffers (the large ones) can be discarded; small spares just wait for the collector.
 */
import { native } from '../native/index.js';

const MAX_PER_SIZE = 16;
/** How long a spare keeps its pages while no pass takes it. */
const IDLE_MS = 1000;

interface Spare {
  ref: WeakRef<Float32Array>;
  /** `passes` when it was released: passes numbered higher began after. */
  pass: number;
  /** performance.now() when it was released. */
  at: number;
  /** Its pages were given back (or it cannot give them back). */
  discarded: boolean;
}

const spare = new Map<number, Spare[]>();
/** Passes begun in this process (beginPass). */
let passes = 0;
let timer: ReturnType<typeof setTimeout> | undefined;

/** A released array of exactly n elements (contents arbitrary), if one is still alive. */
export function takeSpare(n: number): Float32Array | undefined {
  const list = spare.get(n);
  while (list && list.length) {
    const a = list.pop()!.ref.deref();
    if (a && a.buffer.byteLength === n * 4) return a;
  }
  return undefined;
}

/** Offers an array the caller will never touch again for reuse. */
export function releaseSpare(a: Float32Array): void {
  if (a.byteOffset !== 0 || a.buffer.byteLength !== a.length * 4 || a.length === 0) return;
  let list = spare.get(a.length);
  if (!list) spare.set(a.length, (list = []));
  if (list.length >= MAX_PER_SIZE) list.shift();
  list.push({ ref: new WeakRef(a), pass: passes, at: performance.now(), discarded: false });
  arm();
}

/** A batches() pass begins; returns its number, for endPass. */
export function beginPass(): number {
  return ++passes;
}

/**
 * The pass numbered `pass` has ended (its own memory already released): spares released before
 * it began that it did not take give their pages back.
 */
export function endPass(pass: number): void {
  sweep(performance.now(), pass);
}

/**
 * Discards the spares due (released before pass `endedPass` began, or idle IDLE_MS by `now`) and
 * forgets collected ones. True when some spare still holds its pages.
 */
function sweep(now: number, endedPass = 0): boolean {
  let holding = false;
  for (const [n, list] of spare) {
    for (let i = list.length - 1; i >= 0; i--) {
      const s = list[i]!;
      const a = s.ref.deref();
      if (!a) list.splice(i, 1);
      else if (!s.discarded) {
        if (s.pass < endedPass || now - s.at >= IDLE_MS) {
          native().discardHost(a.buffer as ArrayBuffer);
          s.discarded = true;
        } else holding = true;
      }
    }
    if (list.length === 0) spare.delete(n);
  }
  return holding;
}

/** Sweeps every IDLE_MS while some spare holds its pages; never keeps the process alive. */
function arm(): void {
  if (timer) return;
  timer = setTimeout(() => {
    timer = undefined;
    if (sweep(performance.now())) arm();
  }, IDLE_MS);
  timer.unref?.();
}

/** Test hook: sweeps as if `ms` more had passed. */
export function _sweepSparesAfter(ms: number): void {
  sweep(performance.now() + ms);
}
