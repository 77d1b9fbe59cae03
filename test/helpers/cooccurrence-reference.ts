/** Shared pieces of the co-occurrence references (test/cooccurrence.test.ts, test/eval-extra.test.ts). */

/** Codes as the accumulator takes them: k (value, index) pairs per row. */
export interface RefCodes {
  rows: number;
  k: number;
  values: Float32Array;
  indices: Int32Array;
}

/** Rows [from, to) of c. */
export function sliceCodes<C extends RefCodes>(c: C, from: number, to: number): C {
  return { ...c, rows: to - from, values: c.values.slice(from * c.k, to * c.k), indices: c.indices.slice(from * c.k, to * c.k) };
}

/**
 * The set of latents active (value > threshold) in each chunk of chunkTokens consecutive rows,
 * the last, partial chunk dropped when dropPartial.
 */
export function activeSets(c: RefCodes, chunkTokens: number, threshold: number, dropPartial: boolean): Set<number>[] {
  const chunks: Set<number>[] = [];
  for (let r = 0; r < c.rows; r++) {
    const ch = Math.floor(r / chunkTokens);
    chunks[ch] ??= new Set();
    for (let q = 0; q < c.k; q++) if (c.values[r * c.k + q]! > threshold) chunks[ch].add(c.indices[r * c.k + q]!);
  }
  if (dropPartial && c.rows % chunkTokens !== 0) chunks.pop();
  return chunks;
}
