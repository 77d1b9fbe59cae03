/**
 * Decoder spectrum and its power law (reference/methods.md §5.7, "Eigenvalue power law", after Li
 * et al., "The Geometry of Concepts").
 *
 * Definitions:
 * - The covariance is that of the decoder rows taken as n observations of a d-dimensional vector:
 *   each of the d columns of W_dec is centred on its mean over the n rows, and
 *   `C = Wc^T Wc / (n - 1)` (d x d), i.e. `np.cov(W_dec, rowvar=False)`. The reference notebook
 *   writes `np.cov(W_dec)`; with W_dec stored [n, d] that would be the n x n covariance of the
 *   latents, whose non-zero eigenvalues are those of a d x d matrix built from row-centred data.
 *   We use the column-centred d x d form (the covariance of the point cloud of decoder vectors),
 *   which is what the paper describes.
 * - Eigenvalues are sorted descending.
 * - The fit is the ordinary least-squares line of log(eigenvalue) against log(rank) over the
 *   1-based ranks 11..150 (the notebook's sorted indices [10:150]); alpha = -slope (the base of the
 *   logarithm does not matter). The range is clipped to the ranks available (at most n - 1: the
 *   covariance of n centred rows has rank n - 1 or less) and to the leading run of eigenvalues
 *   above the float32 GEMM's noise, d 2^-24 times the largest (below that a rank-deficient
 *   covariance shows rounding noise, not spectrum); with fewer than 2 ranks left alpha is NaN and
 *   fitRanks is [0, 0].
 *
 * Numerics: column means are computed in float64; the centred rows are formed in float32 in blocks
 * of rows, each block's Gram matrix comes from the backend's float32 GEMM (`ops.matmul` with
 * transA) and is accumulated in float64. The symmetric eigenproblem is solved in float64 by
 * Householder tridiagonalisation followed by the implicit QL method with Wilkinson-type shifts;
 * cost is about (8/3) d^3 flops in JS (seconds for d = 1000, a minute or two for d = 4096).
 */
import { argError, SaekitError } from '../errors.js';
import { tensor } from '../tensor/index.js';
import { matmul } from '../tensor/ops.js';
import { checkInt } from '../validate.js';

/** Result of spectrum(). */
export interface SpectrumResult {
  /** Eigenvalues of the d x d decoder covariance, sorted descending. */
  eigenvalues: Float64Array;
  /** Power-law exponent: -slope of log(eigenvalue) vs log(rank) over fitRanks. NaN if unfit. */
  alpha: number;
  /** Inclusive 1-based rank range of the fit, [11, min(150, available)]; [0, 0] if unfit. */
  fitRanks: [number, number];
}

/** First and last (1-based, inclusive) ranks of the power-law fit, as in the reference. */
export const SPECTRUM_FIT_RANKS: readonly [number, number] = [11, 150];

const ROW_BLOCK = 8192;

/**
 * Eigenvalues of the covariance of the decoder rows and the fitted power-law exponent.
 * @param W_dec decoder weights, row-major [n, d] (one row per latent); read in blocks while the
 *   Promise is pending, so keep it unchanged until it settles (a detached or resized array is
 *   an ERR_SAEKIT_ARG).
 */
export async function spectrum(W_dec: Float32Array, n: number, d: number): Promise<SpectrumResult> {
  if (!(W_dec instanceof Float32Array)) throw argError('W_dec', 'a Float32Array', W_dec);
  checkInt('n', n, 2, 2 ** 31);
  checkInt('d', d, 1, 65536);
  if (W_dec.length !== n * d) {
    throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected W_dec of length n * d = ${n * d} for [${n}, ${d}] but received length ${W_dec.length}`);
  }
  for (let i = 0; i < W_dec.length; i++) {
    if (!Number.isFinite(W_dec[i])) throw new SaekitError('ERR_SAEKIT_NONFINITE', `W_dec[${i}] is ${W_dec[i]}: expected finite values`);
  }
  const cov = await decoderCovariance(W_dec, n, d);
  const eigenvalues = symmetricEigenvalues(cov, d);
  const fit = powerLawFit(eigenvalues, Math.min(d, n - 1), (eigenvalues[0]! > 0 ? eigenvalues[0]! : 0) * d * 2 ** -24);
  return { eigenvalues, alpha: fit.alpha, fitRanks: fit.fitRanks };
}

/** Column-centred covariance C = Wc^T Wc / (n - 1), d x d row-major float64. */
async function decoderCovariance(W: Float32Array, n: number, d: number): Promise<Float64Array> {
  const mean = new Float64Array(d);
  for (let r = 0; r < n; r++) {
    const o = r * d;
    for (let c = 0; c < d; c++) mean[c] += W[o + c];
  }
  for (let c = 0; c < d; c++) mean[c] /= n;
  const cov = new Float64Array(d * d);
  for (let r0 = 0; r0 < n; r0 += ROW_BLOCK) {
    const rows = Math.min(ROW_BLOCK, n - r0);
    const block = new Float32Array(rows * d);
    for (let r = 0; r < rows; r++) {
      const o = (r0 + r) * d;
      for (let c = 0; c < d; c++) block[r * d + c] = W[o + c] - mean[c];
    }
    using t = tensor(block, [rows, d], { device: 'cpu' });
    using g = await matmul(t, t, { transA: true });
    const part = await g.toArray();
    if (W.length !== n * d) {
      throw new SaekitError('ERR_SAEKIT_ARG', `Expected W_dec to keep its ${n * d} values until spectrum() settles but it now has ${W.length} (was its ArrayBuffer detached or resized?)`);
    }
    for (let i = 0; i < cov.length; i++) cov[i] += part[i];
  }
  const inv = 1 / (n - 1);
  // Symmetrise (GEMM results need not be exactly symmetric) and scale.
  for (let i = 0; i < d; i++) {
    cov[i * d + i] *= inv;
    for (let j = 0; j < i; j++) {
      const v = 0.5 * (cov[i * d + j] + cov[j * d + i]) * inv;
      cov[i * d + j] = v;
      cov[j * d + i] = v;
    }
  }
  return cov;
}

/**
 * Eigenvalues of a real symmetric d x d matrix (row-major; only symmetry is assumed, the input is
 * not modified), sorted descending. Householder tridiagonalisation + implicit QL, float64.
 */
export function symmetricEigenvalues(matrix: Float64Array | Float32Array, d: number): Float64Array {
  checkInt('d', d, 1, 65536);
  if (!(matrix instanceof Float64Array || matrix instanceof Float32Array)) throw argError('matrix', 'a Float64Array or Float32Array', matrix);
  if (matrix.length !== d * d) {
    throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected matrix of length d * d = ${d * d} but received length ${matrix.length}`);
  }
  const a = Float64Array.from(matrix);
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) throw new SaekitError('ERR_SAEKIT_NONFINITE', `matrix[${i}] is ${a[i]}: expected finite values`);
  }
  // Use the symmetric part, so tiny asymmetries do not matter.
  for (let i = 0; i < d; i++) {
    for (let j = 0; j < i; j++) {
      const v = 0.5 * (a[i * d + j] + a[j * d + i]);
      a[i * d + j] = v;
      a[j * d + i] = v;
    }
  }
  const diag = new Float64Array(d);
  const off = new Float64Array(d);
  tridiagonalise(a, d, diag, off);
  tridiagonalQL(diag, off, d);
  diag.sort();
  diag.reverse();
  return diag;
}

/**
 * Householder reduction of the full symmetric matrix `a` (kept fully symmetric throughout, so every
 * inner product runs along a row) to tridiagonal form: diag[i] and off[i] = T[i][i-1] (off[0] = 0).
 */
function tridiagonalise(a: Float64Array, n: number, diag: Float64Array, off: Float64Array): void {
  const p = new Float64Array(n);
  for (let i = n - 1; i >= 1; i--) {
    const l = i - 1;
    const ri = i * n;
    if (l === 0) {
      off[i] = a[ri];
      continue;
    }
    let scale = 0;
    for (let k = 0; k <= l; k++) scale += Math.abs(a[ri + k]);
    if (scale === 0) {
      off[i] = a[ri + l];
      continue;
    }
    let h = 0;
    for (let k = 0; k <= l; k++) {
      a[ri + k] /= scale;
      h += a[ri + k] * a[ri + k];
    }
    const f0 = a[ri + l];
    const g0 = f0 >= 0 ? -Math.sqrt(h) : Math.sqrt(h);
    off[i] = scale * g0;
    h -= f0 * g0;
    a[ri + l] = f0 - g0; // u = the Householder vector in a[i][0..l]; H = I - u u^T / h
    // p = A u / h, and K = u.p / (2h); q = p - K u; A <- A - u q^T - q u^T.
    let f = 0;
    for (let j = 0; j <= l; j++) {
      const rj = j * n;
      let g = 0;
      for (let k = 0; k <= l; k++) g += a[rj + k] * a[ri + k];
      p[j] = g / h;
      f += p[j] * a[ri + j];
    }
    const hh = f / (h + h);
    for (let j = 0; j <= l; j++) p[j] -= hh * a[ri + j];
    for (let j = 0; j <= l; j++) {
      const rj = j * n;
      const uj = a[ri + j];
      const qj = p[j];
      for (let k = 0; k <= l; k++) a[rj + k] -= uj * p[k] + qj * a[ri + k];
    }
  }
  for (let i = 0; i < n; i++) diag[i] = a[i * n + i];
  off[0] = 0;
}

/** Implicit QL iteration on a symmetric tridiagonal matrix; eigenvalues overwrite diag. */
function tridiagonalQL(diag: Float64Array, off: Float64Array, n: number): void {
  const e = off;
  for (let i = 1; i < n; i++) e[i - 1] = e[i];
  e[n - 1] = 0;
  for (let l = 0; l < n; l++) {
    let iter = 0;
    for (;;) {
      let m = l;
      for (; m < n - 1; m++) {
        const dd = Math.abs(diag[m]) + Math.abs(diag[m + 1]);
        if (Math.abs(e[m]) <= Number.EPSILON * dd) break;
      }
      if (m === l) break;
      if (++iter > 100) throw new SaekitError('ERR_SAEKIT_INTERNAL', 'symmetricEigenvalues: QL iteration did not converge');
      let g = (diag[l + 1] - diag[l]) / (2 * e[l]);
      let r = Math.hypot(g, 1);
      g = diag[m] - diag[l] + e[l] / (g + (g >= 0 ? Math.abs(r) : -Math.abs(r)));
      let s = 1;
      let c = 1;
      let p = 0;
      let i = m - 1;
      let underflow = false;
      for (; i >= l; i--) {
        const f = s * e[i];
        const b = c * e[i];
        r = Math.hypot(f, g);
        e[i + 1] = r;
        if (r === 0) {
          diag[i + 1] -= p;
          e[m] = 0;
          underflow = true;
          break;
        }
        s = f / r;
        c = g / r;
        g = diag[i + 1] - p;
        r = (diag[i] - g) * s + 2 * c * b;
        p = s * r;
        diag[i + 1] = g + p;
        g = c * r - b;
      }
      if (underflow) continue;
      diag[l] -= p;
      e[l] = g;
      e[m] = 0;
    }
  }
}

/**
 * OLS of log(lambda_r) on log(r) over 1-based ranks 11..150, clipped to `maxRank` and to the
 * leading run of eigenvalues above `floor` (see the module comment).
 */
export function powerLawFit(eigenvalues: Float64Array, maxRank = eigenvalues.length, floor = 0): { alpha: number; fitRanks: [number, number] } {
  const [lo, hiMax] = SPECTRUM_FIT_RANKS;
  let hi = Math.min(hiMax, eigenvalues.length, maxRank);
  for (let r = lo; r <= hi; r++) {
    if (!(eigenvalues[r - 1] > floor)) {
      hi = r - 1;
      break;
    }
  }
  if (hi - lo + 1 < 2) return { alpha: Number.NaN, fitRanks: [0, 0] };
  const m = hi - lo + 1;
  let sx = 0;
  let sy = 0;
  for (let r = lo; r <= hi; r++) {
    sx += Math.log(r);
    sy += Math.log(eigenvalues[r - 1]);
  }
  const mx = sx / m;
  const my = sy / m;
  let sxx = 0;
  let sxy = 0;
  for (let r = lo; r <= hi; r++) {
    const x = Math.log(r) - mx;
    sxx += x * x;
    sxy += x * (Math.log(eigenvalues[r - 1]) - my);
  }
  return { alpha: -sxy / sxx, fitRanks: [lo, hi] };
}
