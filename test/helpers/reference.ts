/** Independent float64 references used by the tests. */

/** Deterministic test data (a small LCG, independent of saekit's Philox). */
export function lcg(seed: number): () => number {
  let s = (seed >>> 0) || 1;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
}

export function randomMatrix(rows: number, cols: number, next: () => number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < out.length; i++) out[i] = next() * 2 - 1;
  return out;
}

/**
 * Naive float64 C = op(A) op(B) and the bound on float32 rounding error for each entry:
 * |fl(sum) - sum| <= gamma_K * sum |a_ik b_kj| with gamma_K = K u / (1 - K u), u = 2^-24, for any
 * summation order (Higham, Accuracy and Stability of Numerical Algorithms, eq. 3.5). The inputs
 * are exact float32, so this is the whole error budget of a correct float32 GEMM.
 */
export function referenceMatmul(
  A: Float32Array,
  B: Float32Array,
  M: number,
  N: number,
  K: number,
  transA: boolean,
  transB: boolean,
): { C: Float64Array; bound: Float64Array } {
  const C = new Float64Array(M * N);
  const bound = new Float64Array(M * N);
  const u = 2 ** -24;
  const gamma = (K * u) / (1 - K * u);
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let s = 0;
      let abs = 0;
      for (let k = 0; k < K; k++) {
        const a = transA ? A[k * M + i]! : A[i * K + k]!;
        const b = transB ? B[j * K + k]! : B[k * N + j]!;
        s += a * b;
        abs += Math.abs(a * b);
      }
      C[i * N + j] = s;
      // + one rounding of the result to float32
      bound[i * N + j] = gamma * abs + u * Math.abs(s) + 1e-30;
    }
  }
  return { C, bound };
}
