/**
 * Large float32 buffers released by finished passes (mixing buffers, recycled batch arrays),
 * kept through WeakRefs so a later pass can reuse them until the garbage collector takes them.
 * Fresh memory is expensive to hand out (every page is faulted in on first touch, which on some
 * VMs costs more than reading the data), and a training script typically runs pass after pass.
 */

const MAX_PER_SIZE = 16;
const spare = new Map<number, WeakRef<Float32Array>[]>();

/** A released array of exactly n elements (contents arbitrary), if one is still alive. */
export function takeSpare(n: number): Float32Array | undefined {
  const list = spare.get(n);
  while (list && list.length) {
    const a = list.pop()!.deref();
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
  list.push(new WeakRef(a));
}
