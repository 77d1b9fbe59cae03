/**
 * Random matrices and transforms for the similarity tests (SVCCA, PWCCA, RSA, CKA): float64,
 * row-major; and the error code a call rejects with.
 */
import { expect } from 'vitest';

import { SaekitError } from '../../lib/errors.js';

/** rows x cols values uniform in [-1, 1). */
export function random(rows: number, cols: number, next: () => number): Float64Array {
  return Float64Array.from({ length: rows * cols }, () => next() * 2 - 1);
}

/** A random d x d orthogonal matrix (Gram-Schmidt on a random one), row-major. */
export function orthogonal(d: number, next: () => number): Float64Array {
  const q: number[][] = [];
  while (q.length < d) {
    const v = Array.from({ length: d }, () => next() * 2 - 1);
    for (const u of q) {
      const p = v.reduce((s, x, i) => s + x * u[i]!, 0);
      for (let i = 0; i < d; i++) v[i]! -= p * u[i]!;
    }
    const norm = Math.hypot(...v);
    if (norm < 1e-6) continue;
    q.push(v.map((x) => x / norm));
  }
  return Float64Array.from(q.flat());
}

/** scale * X [n, d] M [d, e] + offset * (column + 1). */
export function transform(X: Float64Array, n: number, d: number, M: Float64Array, e: number, scale = 1, offset = 0): Float64Array {
  const out = new Float64Array(n * e);
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < e; c++) {
      let s = 0;
      for (let k = 0; k < d; k++) s += X[r * d + k]! * M[k * e + c]!;
      out[r * e + c] = scale * s + offset * (c + 1);
    }
  }
  return out;
}

/** The code of the SaekitError a Promise rejects with (undefined if it resolves). */
export async function code(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(SaekitError);
    return (err as SaekitError).code;
  }
  return undefined;
}
