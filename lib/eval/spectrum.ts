/**
 * Decoder spectrum and its power law (docs/references.md §5.7, "Eigenvalue power law", after Li
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
 * Numerics and where it runs: spectrum() copies W_dec into native memory 2 MiB-element pieces at a
 * time, yielding to the event loop between pieces (about 2 ms each), then runs one queued native
 * job (native/cpu/spectrum.cpp) on the executor thread, which fans out over the CPU threads: the
 * non-finite screen; column means in float64; the centred rows formed in float32 in blocks of 8192
 * rows, each block's Gram matrix (lower triangle, column tiles of 512) from the backend's float32
 * GEMM (OpenBLAS or the built-in one) and summed in float64; then the eigenvalues in float64. The
 * eigensolver is LAPACK's dsyevd (eigenvalues only: Householder tridiagonalisation, then the
 * Pal-Walker-Kahan QL/QR) from the linked OpenBLAS when it exports it, else (no OpenBLAS, or
 * SAEKIT_BLAS=builtin; backend.info().blas.eigen says which) a built-in blocked Householder
 * tridiagonalisation (panels of 32 reflectors) and the implicit QL method. Costs: the GEMMs about
 * n d^2 flops, the solver (4/3) d^3 flops, of which half are matrix-vector products that read the
 * d x d float64 matrix once per reflector (memory-bound). Memory: 4 n d bytes for the copy of
 * W_dec, 4 d (d + 8192) for the GEMM's blocks, 8 d^2 for the covariance. Measured on a 2-core
 * VM with n = 16384: d = 1024 about 2-4 s, d = 2304 12-16 s, d = 4096 43 s with OpenBLAS (of which
 * dsyevd 15-25 s) and 59 s built-in; the JS solver this replaced blocked the event loop for all of
 * it (d = 1024: 7.8 s). The JS thread only copies the pieces; the longest event-loop gaps seen
 * were 30-65 ms up to d = 2304 and up to 0.4 s at d = 4096, where both cores are busy.
 */
import { argError, arrayTypeError, fromNative, SaekitError, settleNative } from '../errors.js';
import { native, type NativeEigenSolver, type NativeSpectrumStage } from '../native/index.js';
import { checkInt, checkKept, checkNumber } from '../validate.js';
import { yieldToEventLoop } from '../slices.js';

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

/** Values copied into native memory per turn of the event loop (8 MiB of float32: ~2 ms). */
const STAGE_PIECE = 1 << 21;

/**
 * Eigenvalues of the covariance of the decoder rows and the fitted power-law exponent, computed
 * off the JS thread (see the module comment for the numerics and costs).
 * @param W_dec decoder weights, row-major [n, d] (one row per latent), finite. Copied in pieces
 *   while the Promise is pending, between turns of the event loop, so keep it unchanged until it
 *   settles (a detached or resized array is an ERR_SAEKIT_ARG).
 * @param n rows of W_dec (latents), at least 2.
 * @param d columns of W_dec (input dimension), 1..65536.
 */
export async function spectrum(W_dec: Float32Array, n: number, d: number): Promise<SpectrumResult> {
  return spectrumWith(W_dec, n, d, 'auto');
}

/**
 * spectrum() with the eigensolver chosen ('lapack' rejects with ERR_SAEKIT_DEVICE where dsyevd is
 * not linked). Internal: tests run both solvers in one process.
 * @internal
 */
export async function spectrumWith(W_dec: Float32Array, n: number, d: number, solver: NativeEigenSolver): Promise<SpectrumResult> {
  const site = new Error();
  if (!(W_dec instanceof Float32Array)) throw arrayTypeError('W_dec', 'a Float32Array', W_dec);
  checkInt('n', n, 2, 2 ** 31);
  checkInt('d', d, 1, 65536);
  if (W_dec.length !== n * d) {
    throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected W_dec of length n * d = ${n * d} for [${n}, ${d}] but received length ${W_dec.length}`);
  }
  const stage = await staged(W_dec, 'float32', 'W_dec', site);
  const eigenvalues = await settle(() => native().decoderSpectrum(stage, n, d, solver), site);
  const fit = powerLawFit(eigenvalues, Math.min(d, n - 1), (eigenvalues[0]! > 0 ? eigenvalues[0]! : 0) * d * 2 ** -24);
  return { eigenvalues, alpha: fit.alpha, fitRanks: fit.fitRanks };
}

/**
 * Eigenvalues of a real symmetric d x d matrix, sorted descending, computed off the JS thread in
 * float64 by the solver spectrum() uses (LAPACK's dsyevd when linked, else the built-in one;
 * backend.info().blas.eigen). Only symmetry is assumed: the symmetric part (A + A^T) / 2 is used.
 * Cost: (4/3) d^3 flops and 8 d^2 bytes (a copy; the input is not modified).
 * @param matrix row-major [d, d], finite; copied in pieces while the Promise is pending (keep it
 *   unchanged until it settles).
 * @param d 1..65536.
 */
export async function symmetricEigenvalues(matrix: Float64Array | Float32Array, d: number): Promise<Float64Array> {
  return symmetricEigenvaluesWith(matrix, d, 'auto');
}

/** symmetricEigenvalues() with the eigensolver chosen (see spectrumWith). @internal */
export async function symmetricEigenvaluesWith(matrix: Float64Array | Float32Array, d: number, solver: NativeEigenSolver): Promise<Float64Array> {
  const site = new Error();
  checkInt('d', d, 1, 65536);
  if (!(matrix instanceof Float64Array || matrix instanceof Float32Array)) throw arrayTypeError('matrix', 'a Float64Array or Float32Array', matrix);
  if (matrix.length !== d * d) {
    throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected matrix of length d * d = ${d * d} but received length ${matrix.length}`);
  }
  const stage = await staged(matrix, 'float64', 'matrix', site);
  return settle(() => native().symmetricEigenvalues(stage, d, solver), site);
}

/**
 * Copies `src` into a new native stage STAGE_PIECE values at a time, yielding to the event loop
 * between pieces (the first piece is copied before the caller's first await). A Float32Array
 * bound for a float64 stage is widened piece by piece.
 */
async function staged(src: Float32Array | Float64Array, dtype: 'float32' | 'float64', name: string, site: Error): Promise<NativeSpectrumStage> {
  const total = src.length;
  const stage = callAt(() => native().spectrumStage(dtype, total), site);
  for (let at = 0; at < total; at += STAGE_PIECE) {
    if (at > 0) await yieldToEventLoop();
    checkKept(name, src, total);
    const end = Math.min(total, at + STAGE_PIECE);
    const piece = dtype === 'float64' && src instanceof Float32Array ? Float64Array.from(src.subarray(at, end)) : src.subarray(at, end);
    callAt(() => native().spectrumStageWrite(stage, piece, at), site);
  }
  return stage;
}

function callAt<T>(fn: () => T, site: Error): T {
  try {
    return fn();
  } catch (err) {
    throw fromNative(err, site);
  }
}

function settle<T>(fn: () => Promise<T>, site: Error): Promise<T> {
  return settleNative(callAt(fn, site), site);
}

/**
 * OLS of log(lambda_r) on log(r) over 1-based ranks 11..150, clipped to `maxRank` and to the
 * leading run of eigenvalues above `floor` (see the module comment).
 * @param eigenvalues sorted descending.
 * @param maxRank the last rank that may be fitted: an integer between 0 and eigenvalues.length.
 * @param floor eigenvalues at or below it end the range: a finite number >= 0.
 */
export function powerLawFit(eigenvalues: Float64Array, maxRank?: number, floor = 0): { alpha: number; fitRanks: [number, number] } {
  if (!(eigenvalues instanceof Float64Array)) throw arrayTypeError('eigenvalues', 'a Float64Array', eigenvalues);
  // Defaulted after the check: a default of eigenvalues.length would read it from a non-array first.
  maxRank = maxRank === undefined ? eigenvalues.length : checkInt('maxRank', maxRank, 0, eigenvalues.length);
  checkNumber('floor', floor, 0, Infinity);
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
