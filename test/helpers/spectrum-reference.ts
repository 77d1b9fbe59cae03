/** Independent float64 references for the decoder spectrum and the symmetric eigensolvers. */

export function gaussian(next: () => number): () => number {
  return () => Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next());
}

export function randomSymmetric(d: number, next: () => number): Float64Array {
  const a = new Float64Array(d * d);
  for (let i = 0; i < d; i++) {
    for (let j = 0; j <= i; j++) {
      const v = next() * 2 - 1;
      a[i * d + j] = v;
      a[j * d + i] = v;
    }
  }
  return a;
}

/**
 * Cyclic Jacobi rotations: an independent eigenvalue reference (slow, fine for d up to a few
 * hundred), sorted descending. Sweeps until the off-diagonal mass is below 1e-30 of the total.
 */
export function jacobiEigenvalues(m: Float64Array, d: number): number[] {
  const a = Float64Array.from(m);
  let total = 0;
  for (const v of a) total += v * v;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) if (i !== j) off += a[i * d + j] ** 2;
    if (off <= 1e-30 * total) break;
    for (let p = 0; p < d; p++) {
      for (let q = p + 1; q < d; q++) {
        const apq = a[p * d + q];
        if (apq === 0) continue;
        const theta = (a[q * d + q] - a[p * d + p]) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < d; k++) {
          const akp = a[k * d + p];
          const akq = a[k * d + q];
          a[k * d + p] = c * akp - s * akq;
          a[k * d + q] = s * akp + c * akq;
        }
        for (let k = 0; k < d; k++) {
          const apk = a[p * d + k];
          const aqk = a[q * d + k];
          a[p * d + k] = c * apk - s * aqk;
          a[q * d + k] = s * apk + c * aqk;
        }
      }
    }
  }
  return Array.from({ length: d }, (_, i) => a[i * d + i]).sort((x, y) => y - x);
}

/** Solves M x = b by Gaussian elimination with partial pivoting (M is copied). */
export function solve(m: Float64Array, b: Float64Array, d: number): Float64Array {
  const a = Float64Array.from(m);
  const x = Float64Array.from(b);
  for (let c = 0; c < d; c++) {
    let piv = c;
    for (let r = c + 1; r < d; r++) if (Math.abs(a[r * d + c]) > Math.abs(a[piv * d + c])) piv = r;
    if (piv !== c) {
      for (let k = 0; k < d; k++) [a[c * d + k], a[piv * d + k]] = [a[piv * d + k], a[c * d + k]];
      [x[c], x[piv]] = [x[piv], x[c]];
    }
    for (let r = c + 1; r < d; r++) {
      const f = a[r * d + c] / a[c * d + c];
      for (let k = c; k < d; k++) a[r * d + k] -= f * a[c * d + k];
      x[r] -= f * x[c];
    }
  }
  for (let r = d - 1; r >= 0; r--) {
    let s = x[r];
    for (let k = r + 1; k < d; k++) s -= a[r * d + k] * x[k];
    x[r] = s / a[r * d + r];
  }
  return x;
}

/** Random orthogonal d x d matrix (rows orthonormal), by Gram-Schmidt twice in float64. */
export function randomOrthogonal(d: number, next: () => number): Float64Array {
  const g = gaussian(next);
  const q = Float64Array.from({ length: d * d }, () => g());
  for (let i = 0; i < d; i++) {
    for (let pass = 0; pass < 2; pass++) {
      for (let j = 0; j < i; j++) {
        let dot = 0;
        for (let k = 0; k < d; k++) dot += q[i * d + k] * q[j * d + k];
        for (let k = 0; k < d; k++) q[i * d + k] -= dot * q[j * d + k];
      }
    }
    let norm = 0;
    for (let k = 0; k < d; k++) norm += q[i * d + k] ** 2;
    norm = Math.sqrt(norm);
    for (let k = 0; k < d; k++) q[i * d + k] /= norm;
  }
  return q;
}

/** Q^T diag(lambda) Q for the rows q_r of Q: sum_r lambda_r q_r q_r^T. */
export function withEigenvalues(lambda: readonly number[], q: Float64Array): Float64Array {
  const d = lambda.length;
  const a = new Float64Array(d * d);
  for (let r = 0; r < d; r++) {
    const l = lambda[r];
    for (let i = 0; i < d; i++) {
      const li = l * q[r * d + i];
      for (let j = 0; j < d; j++) a[i * d + j] += li * q[r * d + j];
    }
  }
  return a;
}

/** np.cov(w, rowvar=False) in float64 for w [n, d]. */
export function naiveCovariance(w: Float32Array, n: number, d: number): Float64Array {
  const mean = new Float64Array(d);
  for (let r = 0; r < n; r++) for (let c = 0; c < d; c++) mean[c] += w[r * d + c] / n;
  const cov = new Float64Array(d * d);
  for (let r = 0; r < n; r++) {
    for (let i = 0; i < d; i++) {
      const vi = w[r * d + i] - mean[i];
      for (let j = 0; j < d; j++) cov[i * d + j] += (vi * (w[r * d + j] - mean[j])) / (n - 1);
    }
  }
  return cov;
}
