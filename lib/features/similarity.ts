/**
 * Similarity of two representations of the same n observations (for example matched decoder rows
 * of two SAEs, or activations on the same tokens): SVCCA, PWCCA, RSA, linear CKA and a row-shuffle
 * permutation test (docs/references.md §1.4-§1.6, §1.8, §9).
 *
 * Matrices are row-major [n, d]: row i of A and row i of B describe the same observation. A and B
 * may have different widths dA and dB. All arithmetic is float64.
 *
 * Definitions:
 * - svcca (§1.5): each side is centred per dimension (column) over the n observations and
 *   decomposed by SVD, Xc = U S V^T (singular values of the centred data itself, not divided by
 *   n - 1). The leading k directions are kept: with `keep` in (0, 1), the smallest k whose
 *   cumulative share of sum(s^2) reaches `keep` (default 0.99, the SVCCA paper's 99%); with an
 *   integer `keep` >= 1, that many. Directions with s <= 1e-10 * s_max are never kept (the analogue
 *   of google/svcca's `remove_small`: they carry no variance and cannot be whitened). CCA between
 *   the reduced spaces: the reduced data U_k S_k has diagonal covariance, so its whitened form is
 *   U_k itself, and the canonical correlations are the singular values of U_kA^T U_kB (the
 *   whitened cross-covariance), clamped to [0, 1]. There are min(kA, kB) of them, sorted
 *   descending; score = their mean (the univ_feat_geom / resi `mean(cca_coef1)` over all of them).
 *   As in google/svcca (§9) n must exceed both dA and dB ("neurons < datapoints").
 * - svcca with `compat: 'univ-feat-geom'` reproduces that repository's k selection (§1.5, "Bug"):
 *   k = 1 + the first index where the normalised cumulative variance is >= keep * sum(s^2)
 *   (unnormalised), and k = 1 when no index qualifies, which is the case whenever
 *   sum(s^2) > 1 / keep. Its scores are labelled by `mode: 'univ-feat-geom'` in the result.
 * - pwcca (§1.5, "PWCCA"; Morcos, Raghu and Bengio 2018): CCA as in svcca, but by default on every
 *   direction (no SVD truncation: plain CCA of the data, as in the paper and google/svcca's
 *   compute_pwcca; `keep` truncates each side first as svcca does). With M = Qa^T Qb = V S U^T,
 *   column i of V gives A's unit canonical variate h_i = Qa v_i, partner of rho_i = s_i, for the
 *   c = min(kA, kB) pairs. alpha_i = sum_j |<h_i, xc_j>| over A's centred columns xc_j (projected
 *   onto the kept directions when `keep` truncates: the neurons of A's rank-kA approximation);
 *   score = sum_i alpha_i rho_i / sum_i alpha_i, a weighted mean of the rho_i, so between the
 *   smallest and the largest of them. The weights come from A (the paper's L1; Kornblith et al.
 *   2019, eq. 9, with x_j the columns of X): pass the side to weight first. Where canonical
 *   correlations tie exactly (e.g. several equal to 1), the canonical variates within the tie are
 *   any orthonormal basis of its subspace and their alphas (an L1 norm, not rotation invariant)
 *   depend on the basis Jacobi lands on; rho being equal within a tie, the score changes only
 *   through how the tie's total weight compares with the others'.
 *   No compat mode: google/svcca's compute_pwcca (copied by univ_feat_geom) is not reproduced,
 *   because what it computes cannot be pinned down. It chooses the side with fewer neurons; its
 *   directions are u_i^T (X - mean) + mean_i (rows of the un-whitened centred data rotated by the
 *   whitened problem's singular vectors u_i, then neuron i's mean added to direction i), made
 *   orthonormal by QR in order, and projected on the raw (uncentred) neurons. On uncentred data
 *   that result changes with the sign LAPACK gives each singular vector (its steps re-run in NumPy
 *   on random data: 0.546 against 0.539 with one sign flipped). Its `else` branch (dA > dB)
 *   indexes acts1 with B's mask and subtracts B's means (the oddity of §1.5): with current NumPy a
 *   mask of the wrong length is an IndexError, so that branch computes nothing (NumPy before 1.13
 *   probably read A's first dB rows there, through its deprecated handling of a short mask; not
 *   verified).
 * - rsa (§1.6): the n x n dissimilarity matrix of each side; inner 'correlation' (default):
 *   1 - Pearson r between rows (each row centred over its d entries, then 1 - cosine); 'cosine':
 *   1 - cosine of the raw rows; 'euclidean': Euclidean distance between rows. A row with zero norm
 *   (after centring, for 'correlation') has similarity 0 to every row, i.e. dissimilarity 1 (the
 *   dead-column convention of §9). 'correlation' and 'cosine' dissimilarities are rounded to
 *   multiples of 2^-40, so that values equal in exact arithmetic (the 0 or 2 of 2-wide rows,
 *   parallel rows) tie instead of ranking by rounding noise (scipy's pdist splits them). The strict
 *   upper triangles (n(n-1)/2 entries, diagonal excluded) are compared by Spearman rank correlation
 *   with average ranks for ties (default, scipy.stats.spearmanr) or by Pearson r. If either
 *   triangle is constant the score is NaN.
 * - cka: linear CKA of the column-centred matrices, ||Bc^T Ac||_F^2 / (||Ac^T Ac||_F ||Bc^T Bc||_F)
 *   (computed through n x n Gram matrices when n is smaller than the widths). NaN if either side
 *   is constant.
 * - permutationTest (§1.4 `shuffle_rand`): score(A, B) and `runs` scores with the rows of B
 *   permuted (Fisher-Yates, saekit's seeded xoshiro128** stream), pValue =
 *   (1 + #{shuffled >= score}) / (1 + runs) (the add-one form; the reference code's
 *   mean(shuffled >= score) can be 0).
 *
 * Cost: the SVD is a one-sided (Hestenes) Jacobi SVD, O(sweeps * n * d^2) in JS; fine for d up to a
 * few hundred and n of a few thousand. RSA holds two n(n-1)/2 float64 triangles (§9), ranked by a
 * radix sort; an n whose triangles cannot be allocated is ERR_SAEKIT_MEMORY (subsample the rows,
 * as `saekit compare --max-pairs` does). At a few thousand rows these functions take seconds, so
 * they return Promises: the work runs on the JS thread in slices of about 20 ms (due() and pause() of slices.ts),
 * between which the event loop runs (timers, I/O, other requests). The slices change no
 * arithmetic: every sum is taken in the same order as in one piece. Bad arguments reject the
 * Promise (with the same SaekitError as before). options.signal stops the work at its next slice
 * (and before each permutation run), rejecting with signal.reason; a call made inside another
 * (a similarity function awaited by permutationTest's score) sees the outer call's signal too. A and B are read (copied, for svcca, pwcca, rsa and cka)
 * during the first slices and, by permutationTest, in every run: leave them unchanged until the
 * Promise settles (a buffer detached meanwhile is an ERR_SAEKIT_ARG).
 * rsaPermutationTest and svccaPermutationTest (internal, used by `saekit compare`) and
 * pwccaPermutationTest give permutationTest's results with each side's triangle, ranks or SVD
 * computed once.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import os from 'node:os';

import { Rng } from '../data/prng.js';
import { CHECK_UNITS, due, pause } from '../slices.js';
import { argError, arrayTypeError, SaekitError } from '../errors.js';
import { checkInt, checkKept, checkOneOf, checkOptions, checkSeed, checkSignal, optionNames } from '../validate.js';

/** Option names (checkOptions refuses others: a misspelling is an error, not ignored). */
const SVCCA_OPTIONS = optionNames<SvccaOptions>({ n: true, dA: true, dB: true, keep: true, compat: true, signal: true });
const RSA_OPTIONS = optionNames<RsaOptions>({ n: true, dA: true, dB: true, inner: true, outer: true, signal: true });
const PWCCA_OPTIONS = optionNames<PwccaOptions>({ n: true, dA: true, dB: true, keep: true, signal: true });
const CKA_OPTIONS = optionNames<CkaOptions>({ n: true, dA: true, dB: true, signal: true });
const PERMUTATION_OPTIONS = optionNames<PermutationOptions>({ n: true, dB: true, runs: true, seed: true, signal: true });

/** A row-major [n, d] matrix (n observations of width d), float32 or float64. */
export type Matrix = Float32Array | Float64Array;

/** Options of svcca(): the shapes, the variance kept, the compat mode. */
export interface SvccaOptions {
  /** Observations (rows of A and B); must exceed dA and dB. */
  n: number;
  /** Width of A. */
  dA: number;
  /** Width of B. */
  dB: number;
  /** Share of variance kept in (0, 1) (default 0.99), or an integer >= 1: that many directions. */
  keep?: number;
  /** Reproduce univ_feat_geom's k selection (docs/references.md §1.5); labelled in the result. */
  compat?: 'univ-feat-geom';
  /**
   * Stops the work at its next turn of the event loop (about every 20 ms), rejecting with
   * `signal.reason` (an AbortError by default); one already aborted rejects before any work.
   */
  signal?: AbortSignal;
}

/** What svcca() returns: the mean canonical correlation, the correlations and the directions kept. */
export interface SvccaResult {
  /** Mean canonical correlation. */
  score: number;
  /** Canonical correlations, min(keptA, keptB) of them, descending, in [0, 1]. */
  correlations: Float64Array;
  /** Directions kept on A's side. */
  keptA: number;
  /** Directions kept on B's side. */
  keptB: number;
  /** 'svcca' for the correct method, 'univ-feat-geom' for the compat mode. */
  mode: 'svcca' | 'univ-feat-geom';
}

/** Options of pwcca(): the shapes and, optionally, an SVD truncation of each side first. */
export interface PwccaOptions {
  /** Observations (rows of A and B); must exceed dA and dB. */
  n: number;
  /** Width of A (the side whose neurons weight the correlations). */
  dA: number;
  /** Width of B. */
  dB: number;
  /**
   * Default: every direction (plain CCA on the data, as in the PWCCA paper). A share in (0, 1) or
   * an integer >= 1 first keeps each side's leading SVD directions, as svcca's `keep` does.
   */
  keep?: number;
  /**
   * Stops the work at its next turn of the event loop (about every 20 ms), rejecting with
   * `signal.reason` (an AbortError by default); one already aborted rejects before any work.
   */
  signal?: AbortSignal;
}

/** What pwcca() returns: the projection-weighted mean, the correlations and their weights. */
export interface PwccaResult {
  /** Projection-weighted mean canonical correlation, sum_i alpha_i rho_i / sum_i alpha_i. */
  score: number;
  /** Canonical correlations rho_i, min(keptA, keptB) of them, descending, in [0, 1]. */
  correlations: Float64Array;
  /** The normalised weights alpha_i / sum alpha (they sum to 1), in the order of `correlations`. */
  weights: Float64Array;
  /** The unweighted mean of `correlations` (svcca's score for the same directions). */
  meanCorrelation: number;
  /** Directions kept on A's side. */
  keptA: number;
  /** Directions kept on B's side. */
  keptB: number;
}

/** Options of rsa(): the shapes and the two measures. */
export interface RsaOptions {
  /** Observations (rows of A and B). */
  n: number;
  /** Width of A. */
  dA: number;
  /** Width of B. */
  dB: number;
  /** Dissimilarity between rows: 'correlation' (default, 1 - Pearson r), 'cosine' (1 - cosine) or 'euclidean'. */
  inner?: 'correlation' | 'cosine' | 'euclidean';
  /** Comparison of the two dissimilarity triangles: 'spearman' (default) or 'pearson'. */
  outer?: 'spearman' | 'pearson';
  /**
   * Stops the work at its next turn of the event loop (about every 20 ms), rejecting with
   * `signal.reason` (an AbortError by default); one already aborted rejects before any work.
   */
  signal?: AbortSignal;
}

/** Options of cka(): the shapes. */
export interface CkaOptions {
  /** Observations (rows of A and B). */
  n: number;
  /** Width of A. */
  dA: number;
  /** Width of B. */
  dB: number;
  /**
   * Stops the work at its next turn of the event loop (about every 20 ms), rejecting with
   * `signal.reason` (an AbortError by default); one already aborted rejects before any work.
   */
  signal?: AbortSignal;
}

/** Options of permutationTest(). */
export interface PermutationOptions {
  /** Observations (rows of A and B). */
  n: number;
  /** Width of B (the side whose rows are permuted). */
  dB: number;
  /** Shuffled runs. Default 100. */
  runs?: number;
  /** Seed of the row permutations. Default 0. */
  seed?: number | bigint;
  /**
   * Stops the work at its next turn of the event loop (about every 20 ms), rejecting with
   * `signal.reason` (an AbortError by default); one already aborted rejects before any work.
   */
  signal?: AbortSignal;
}

/** What permutationTest() returns. */
export interface PermutationResult {
  /** score(A, B) on the rows as given. */
  score: number;
  /** The score of each run with B's rows permuted (empty when score is NaN). */
  shuffled: Float64Array;
  /** (1 + #{shuffled >= score}) / (1 + runs); NaN when score is NaN. */
  pValue: number;
}

/** Relative singular-value cut below which a direction is treated as zero. */
const SMALL = 1e-10;

// ---------------------------------------------------------------------------------------------
// Slices: the work gives the event loop a turn about every 20 ms (due(), pause())

/**
 * The options.signal of the public call running (AsyncLocalStorage: concurrent calls each see
 * their own). A call made inside another (svcca awaited by permutationTest's score) sees both.
 */
const abortScope = new AsyncLocalStorage<AbortSignal>();

/** pause(), then a rejection with signal.reason if the running call's signal has aborted. */
function turn(): Promise<void> {
  return pause(abortScope.getStore());
}

/**
 * Runs a public function's work with its options.signal in scope: an abort is seen at the next
 * turn() (or between permutation runs); a signal already aborted rejects before any work. A bad
 * signal is an ERR_SAEKIT_ARG naming options.signal.
 */
async function scoped<T>(options: unknown, work: () => Promise<T>): Promise<T> {
  const given = options !== null && typeof options === 'object' ? checkSignal('options.signal', (options as { signal?: unknown }).signal) : undefined;
  const outer = abortScope.getStore();
  const signal = given && outer ? AbortSignal.any([outer, given]) : (given ?? outer);
  if (signal === undefined) return work();
  signal.throwIfAborted();
  return abortScope.run(signal, work);
}

/** Entries a blocked loop handles between two calls of due(). */
const BLOCK = 1 << 16;

/**
 * Entries between two calls of due() in a loop that reads or writes at scattered places (the
 * radix sort's scatter, the ranks' placement, a column of an n x n matrix): each access can miss
 * the cache or touch a page for the first time (~1 us), and counts MISS units.
 */
const SCATTER_BLOCK = 1 << 12;
const MISS = 32;

// ---------------------------------------------------------------------------------------------
// Validation

/**
 * X's type and length, checked when the call starts (before its first slice: both inputs are
 * checked before either is copied, so a buffer detached later is ERR_SAEKIT_ARG, not a shape error).
 */
function checkShape(name: string, X: unknown, n: number, d: number): asserts X is Float32Array | Float64Array {
  if (!(X instanceof Float32Array || X instanceof Float64Array)) throw arrayTypeError(name, 'a Float32Array or Float64Array', X);
  if (X.length !== n * d) {
    throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected ${name} of length n * d = ${n * d} for [${n}, ${d}] but received length ${X.length}`);
  }
}

/** Largest |value| left as it is by copyMatrix; beyond (or below 2^-100) a side is rescaled. */
const SAFE_MAGNITUDE = 2 ** 100;

/**
 * A float64 copy of X (checked by checkShape), screened for non-finite values, in slices. SVCCA,
 * RSA and CKA are invariant to scaling one side, and their squares and fourth powers overflow
 * (or vanish) for float64 values beyond about 1e77: a side whose largest |value| lies outside
 * [2^-100, 2^100] is multiplied by a power of 2 (exactly) that brings it into [1, 2).
 */
async function copyMatrix(name: string, X: Float32Array | Float64Array, m: number): Promise<Float64Array> {
  checkKept(name, X, m);
  const out = new Float64Array(m);
  let max = 0;
  for (let a = 0; a < m; a += BLOCK) {
    const b = Math.min(m, a + BLOCK);
    out.set(X.subarray(a, b), a);
    for (let i = a; i < b; i++) {
      const v = out[i];
      if (!Number.isFinite(v)) throw new SaekitError('ERR_SAEKIT_NONFINITE', `${name}[${i}] is ${v}: expected finite values`);
      if (Math.abs(v) > max) max = Math.abs(v);
    }
    if (due(b - a)) {
      await turn();
      checkKept(name, X, m);
    }
  }
  await scaleIntoRange([out], max);
  return out;
}

/**
 * Multiplies every value of `parts` by the power of 2 (exactly) that brings `max`, their largest
 * |value|, into [1, 2), when it lies outside [2^-100, 2^100]; nothing otherwise (nor when max is 0).
 */
async function scaleIntoRange(parts: Float64Array[], max: number): Promise<void> {
  if (!(max > SAFE_MAGNITUDE || (max > 0 && max < 1 / SAFE_MAGNITUDE))) return;
  // In steps of at most 2^1000: 2^-e itself need not be a float64 (e down to -1074).
  for (let e = Math.floor(Math.log2(max)); e !== 0; ) {
    const step = Math.max(-1000, Math.min(1000, e));
    const f = 2 ** -step;
    for (const part of parts) {
      for (let i = 0; i < part.length; i++) part[i] *= f;
      if (due(part.length)) await turn();
    }
    e -= step;
  }
}

function checkDims(opts: { n?: unknown; dA?: unknown; dB?: unknown }, minN: number): { n: number; dA: number; dB: number } {
  const n = checkInt('options.n', opts.n, minN, 2 ** 31);
  const dA = checkInt('options.dA', opts.dA, 1, 2 ** 31);
  const dB = checkInt('options.dB', opts.dB, 1, 2 ** 31);
  return { n, dA, dB };
}

// ---------------------------------------------------------------------------------------------
// Linear algebra helpers

/**
 * Columns of a row-major [n, d] matrix, each centred on its mean, as d arrays of length n. A
 * constant column centres to exactly zero (subtracting a rounded mean such as 0.1 x 7 / 7 leaves
 * a residue of ~1e-17 along (1, ..., 1), which made two constant sides look perfectly similar).
 * The centred side is then brought into range as copyMatrix brings the raw one (scaleIntoRange):
 * what is left after centring can be far smaller than the raw values (a constant column of 1 beside
 * columns varying at 1e-100), and CKA's fourth powers and SVCCA's squared norms of it vanished
 * (CKA NaN from 1e-100 down, SVCCA NaN from 1e-170; digits lost before that).
 */
async function centredColumns(X: Float64Array, n: number, d: number): Promise<Float64Array[]> {
  const cols: Float64Array[] = [];
  let max = 0;
  for (let c = 0; c < d; c++) {
    const col = new Float64Array(n);
    let mean = 0;
    let constant = true;
    for (let r = 0; r < n; r++) {
      mean += X[r * d + c];
      constant &&= X[r * d + c] === X[c];
    }
    mean /= n;
    if (!constant) {
      for (let r = 0; r < n; r++) {
        const v = X[r * d + c] - mean;
        col[r] = v;
        if (Math.abs(v) > max) max = Math.abs(v);
      }
    }
    cols.push(col);
    if (due(2 * n)) await turn();
  }
  await scaleIntoRange(cols, max);
  return cols;
}

function dot(a: Float64Array, b: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/** dot(a, b) in slices: the same sum, in the same order. */
async function dotInSlices(a: Float64Array, b: Float64Array): Promise<number> {
  let s = 0;
  for (let i0 = 0; i0 < a.length; i0 += BLOCK) {
    const i1 = Math.min(a.length, i0 + BLOCK);
    for (let i = i0; i < i1; i++) s += a[i] * b[i];
    if (due(i1 - i0)) await turn();
  }
  return s;
}

/**
 * One-sided (Hestenes) Jacobi: rotates the columns in place until they are mutually orthogonal,
 * so that G V = U S. Returns the column indices sorted by norm (the singular values), descending,
 * with the norms. The columns afterwards are u_i s_i. With `v` (as many columns as G, each of that
 * length, normally the identity's), each rotation is applied to v's columns too, so that v ends
 * as V of G = U S V^T (column i of V goes with column i of G; none is dropped, zero columns too).
 */
async function hestenes(cols: Float64Array[], v?: Float64Array[]): Promise<{ order: number[]; sigma: Float64Array }> {
  const p = cols.length;
  const len = p > 0 ? cols[0].length : 0;
  const norms2: number[] = [];
  for (const c of cols) {
    norms2.push(dot(c, c));
    if (due(len)) await turn();
  }
  for (let sweep = 0; sweep < 60; sweep++) {
    let rotated = false;
    for (let i = 0; i < p - 1; i++) {
      for (let j = i + 1; j < p; j++) {
        // Every pair costs at least one dot product of length len (a rotation about four).
        if (due(len)) await turn();
        const gi = cols[i];
        const gj = cols[j];
        const alpha = norms2[i];
        const beta = norms2[j];
        if (alpha === 0 || beta === 0) continue;
        const gamma = dot(gi, gj);
        if (Math.abs(gamma) <= 1e-15 * Math.sqrt(alpha * beta)) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = (zeta >= 0 ? 1 : -1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = c * t;
        for (let k = 0; k < gi.length; k++) {
          const a = gi[k];
          const b = gj[k];
          gi[k] = c * a - s * b;
          gj[k] = s * a + c * b;
        }
        if (v !== undefined) {
          const vi = v[i];
          const vj = v[j];
          for (let k = 0; k < vi.length; k++) {
            const a = vi[k];
            const b = vj[k];
            vi[k] = c * a - s * b;
            vj[k] = s * a + c * b;
          }
        }
        norms2[i] = dot(gi, gi);
        norms2[j] = dot(gj, gj);
      }
    }
    if (!rotated) break;
  }
  const sigma = Float64Array.from(norms2, (v) => Math.sqrt(v));
  const order = Array.from({ length: p }, (_, i) => i).sort((x, y) => sigma[y] - sigma[x] || x - y);
  return { order, sigma: Float64Array.from(order, (i) => sigma[i]) };
}

// ---------------------------------------------------------------------------------------------
// SVCCA

function chooseK(sigma: Float64Array, keep: number, compat: boolean): number {
  const d = sigma.length;
  const smax = sigma[0] ?? 0;
  let rank = 0;
  while (rank < d && sigma[rank] > SMALL * smax) rank++;
  if (rank === 0) return 0;
  let total = 0;
  for (let i = 0; i < d; i++) total += sigma[i] * sigma[i];
  let k: number;
  if (compat) {
    // univ_feat_geom: argmax(cumsum(s^2 / total) >= keep * total) + 1, argmax of all-False = 0.
    k = 1;
    let cum = 0;
    for (let i = 0; i < d; i++) {
      cum += (sigma[i] * sigma[i]) / total;
      if (cum >= keep * total) {
        k = i + 1;
        break;
      }
    }
  } else if (keep >= 1) {
    k = keep;
  } else {
    k = d;
    let cum = 0;
    for (let i = 0; i < d; i++) {
      cum += sigma[i] * sigma[i];
      // A relative slack of 1e-12 so that an exact share (e.g. keep = 0.5 of two equal values)
      // is not missed through rounding.
      if (cum >= keep * total * (1 - 1e-12)) {
        k = i + 1;
        break;
      }
    }
  }
  return Math.min(k, rank);
}

/** Orthonormal basis (n-vectors) of the k leading principal directions' scores of X. */
async function reducedBasis(X: Float64Array, n: number, d: number, keep: number, compat: boolean): Promise<Float64Array[]> {
  return basisOfCentred(await centredColumns(X, n, d), n, keep, compat);
}

/** reducedBasis from the centred columns (which it rotates in place). */
async function basisOfCentred(cols: Float64Array[], n: number, keep: number, compat: boolean): Promise<Float64Array[]> {
  const { order, sigma } = await hestenes(cols);
  const k = chooseK(sigma, keep, compat);
  const basis: Float64Array[] = [];
  for (let i = 0; i < k; i++) {
    const col = cols[order[i]];
    const inv = 1 / sigma[i];
    basis.push(Float64Array.from(col, (v) => v * inv));
    if (due(n)) await turn();
  }
  return basis;
}

/** svcca's checks; returns the sizes, keep, compat and float64 copies of A and B. */
async function checkSvcca(A: Matrix, B: Matrix, options: SvccaOptions) {
  const opts = checkOptions('options', options, SVCCA_OPTIONS);
  const { n, dA, dB } = checkDims(opts, 2);
  if (n <= dA || n <= dB) {
    throw new SaekitError(
      'ERR_SAEKIT_SHAPE',
      `Expected options.n greater than options.dA and options.dB for SVCCA (more observations than dimensions) but received n = ${n}, dA = ${dA}, dB = ${dB}`,
    );
  }
  let keep = 0.99;
  if (opts.keep !== undefined) {
    keep = opts.keep;
    const ok = typeof keep === 'number' && ((keep > 0 && keep < 1) || (Number.isInteger(keep) && keep >= 1 && keep <= Math.max(dA, dB)));
    if (!ok) throw argError('options.keep', `a share in (0, 1) or an integer between 1 and ${Math.max(dA, dB)}`, keep);
  }
  let compat = false;
  if (opts.compat !== undefined) compat = checkOneOf('options.compat', opts.compat, ['univ-feat-geom'] as const) === 'univ-feat-geom';
  if (compat && keep >= 1) throw argError('options.keep', "a share in (0, 1) with compat 'univ-feat-geom'", keep);
  checkShape('A', A, n, dA);
  checkShape('B', B, n, dB);
  const a = await copyMatrix('A', A, n * dA);
  const b = await copyMatrix('B', B, n * dB);
  return { n, dA, dB, keep, compat, a, b };
}

/**
 * SVCCA (docs/references.md §1.5): SVD of each column-centred side to the directions holding `keep` of the
 * variance, then CCA between the reduced spaces. See the module comment for the exact definition.
 * Runs in slices of about 20 ms between which the event loop runs (seconds in all at a few
 * thousand rows and a few hundred dims); bad arguments reject the Promise.
 * @example const { score, keptA, keptB } = await svcca(A, B, { n: 5000, dA: 256, dB: 256 });
 */
export async function svcca(A: Matrix, B: Matrix, options: SvccaOptions): Promise<SvccaResult> {
  return scoped(options, async () => {
    const { n, dA, dB, keep, compat, a, b } = await checkSvcca(A, B, options);
    const qa = await reducedBasis(a, n, dA, keep, compat);
    const qb = await reducedBasis(b, n, dB, keep, compat);
    return ccaOfBases(qa, qb, compat ? 'univ-feat-geom' : 'svcca');
  });
}

/** The canonical correlations between two orthonormal bases (n-vectors): see svcca. */
async function ccaOfBases(qa: Float64Array[], qb: Float64Array[], mode: SvccaResult['mode']): Promise<SvccaResult> {
  const keptA = qa.length;
  const keptB = qb.length;
  if (keptA === 0 || keptB === 0) return { score: NaN, correlations: new Float64Array(0), keptA, keptB, mode };

  // Whitened cross-covariance M = Qa^T Qb (keptA x keptB); its singular values are the canonical
  // correlations. One-sided Jacobi on the columns of M (or of M^T, whichever has fewer columns).
  const [rowsQ, colsQ] = keptA >= keptB ? [qa, qb] : [qb, qa];
  const m: Float64Array[] = [];
  for (const cq of colsQ) {
    const col = new Float64Array(rowsQ.length);
    for (let r = 0; r < rowsQ.length; r++) {
      col[r] = dot(rowsQ[r], cq);
      if (due(cq.length)) await turn();
    }
    m.push(col);
  }
  const { sigma } = await hestenes(m);
  const correlations = Float64Array.from(sigma, (s) => Math.min(1, Math.max(0, s)));
  let sum = 0;
  for (const c of correlations) sum += c;
  return { score: sum / correlations.length, correlations, keptA, keptB, mode };
}

/** The checks of permutationTest's options; returns runs and seed. */
function checkRuns(opts: { runs?: unknown; seed?: unknown }): { runs: number; seed: bigint } {
  const runs = opts.runs === undefined ? 100 : checkInt('options.runs', opts.runs, 1, 1e7);
  const seed = opts.seed === undefined ? 0n : checkSeed('options.seed', opts.seed as number | bigint);
  return { runs, seed };
}

/**
 * The row permutations permutationTest draws for `seed`: calls and awaits `each(perm, r)` for run
 * r with perm[i] = the row of B that becomes row i (the same stream, so the same permutations).
 */
async function forEachPermutation(n: number, runs: number, seed: bigint, each: (perm: Uint32Array, r: number) => Promise<void>): Promise<void> {
  const rng = new Rng(seed, 0x5e1f); // a stream of its own, named by the seed
  const perm = new Uint32Array(n);
  for (let r = 0; r < runs; r++) {
    abortScope.getStore()?.throwIfAborted(); // a run's length is the score's: look before each
    for (let i = 0; i < n; i++) perm[i] = i;
    rng.shuffle(perm);
    if (due(4 * n)) await turn();
    await each(perm, r);
  }
}

function permutationResult(observed: number, shuffled: Float64Array): PermutationResult {
  let ge = 0;
  for (const s of shuffled) if (s >= observed) ge++;
  return { score: observed, shuffled, pValue: (1 + ge) / (1 + shuffled.length) };
}

/**
 * permutationTest(svcca) without redoing the SVDs: permuting B's rows permutes the rows of its
 * centred data and so of its reduced basis (the SVD of P X is P U S V^T), so each run is only the
 * CCA of Qa and P Qb. Equal to permutationTest((A, B) => svcca(A, B, options).score, ...) with the
 * same runs and seed up to rounding (the SVD of the permuted data sums in another order).
 * @internal
 */
export async function svccaPermutationTest(
  A: Matrix,
  B: Matrix,
  options: SvccaOptions & { runs?: number; seed?: number | bigint },
): Promise<PermutationResult & { keptA: number; keptB: number }> {
  return scoped(options, async () => {
    const { runs, seed, ...rest } = options;
    const { runs: R, seed: sd } = checkRuns({ runs, seed });
    const { n, dA, dB, keep, compat, a, b } = await checkSvcca(A, B, rest);
    const qa = await reducedBasis(a, n, dA, keep, compat);
    const qb = await reducedBasis(b, n, dB, keep, compat);
    const mode = compat ? 'univ-feat-geom' : 'svcca';
    return permutedBases(n, qa, qb, R, sd, async (q) => (await ccaOfBases(qa, q, mode)).score);
  });
}

/**
 * The permutation test on orthonormal bases: `score(qb)` observed, then `score` of qb with its
 * rows permuted (permuting B's rows permutes its basis's rows; A's side is unchanged), `runs`
 * times with forEachPermutation's seeded permutations.
 */
async function permutedBases(
  n: number,
  qa: Float64Array[],
  qb: Float64Array[],
  runs: number,
  seed: bigint,
  score: (qb: Float64Array[]) => Promise<number>,
): Promise<PermutationResult & { keptA: number; keptB: number }> {
  const observed = await score(qb);
  const kept = { keptA: qa.length, keptB: qb.length };
  if (Number.isNaN(observed)) return { score: observed, shuffled: new Float64Array(0), pValue: Number.NaN, ...kept };
  const shuffled = new Float64Array(runs);
  const qp = qb.map(() => new Float64Array(n));
  await forEachPermutation(n, runs, seed, async (perm, r) => {
    for (let k = 0; k < qb.length; k++) {
      const src = qb[k]!;
      const dst = qp[k]!;
      for (let i = 0; i < n; i++) dst[i] = src[perm[i]!]!;
      if (due(n)) await turn();
    }
    shuffled[r] = await score(qp);
  });
  return { ...permutationResult(observed, shuffled), ...kept };
}

// ---------------------------------------------------------------------------------------------
// PWCCA

/** pwcca's checks; returns the sizes, each side's keep and float64 copies of A and B. */
async function checkPwcca(A: Matrix, B: Matrix, options: PwccaOptions) {
  const opts = checkOptions('options', options, PWCCA_OPTIONS);
  const { n, dA, dB } = checkDims(opts, 2);
  if (n <= dA || n <= dB) {
    throw new SaekitError(
      'ERR_SAEKIT_SHAPE',
      `Expected options.n greater than options.dA and options.dB for PWCCA (more observations than dimensions) but received n = ${n}, dA = ${dA}, dB = ${dB}`,
    );
  }
  let keepA = dA;
  let keepB = dB;
  if (opts.keep !== undefined) {
    const keep = opts.keep;
    const ok = typeof keep === 'number' && ((keep > 0 && keep < 1) || (Number.isInteger(keep) && keep >= 1 && keep <= Math.max(dA, dB)));
    if (!ok) throw argError('options.keep', `a share in (0, 1) or an integer between 1 and ${Math.max(dA, dB)}`, keep);
    keepA = keep;
    keepB = keep;
  }
  checkShape('A', A, n, dA);
  checkShape('B', B, n, dB);
  const a = await copyMatrix('A', A, n * dA);
  const b = await copyMatrix('B', B, n * dB);
  return { n, dA, dB, keepA, keepB, a, b };
}

/**
 * What pwcca needs of each side: the orthonormal bases qa, qb (n-vectors) of the kept directions,
 * and proj[r][j] = <xc_j, qa[r]>, the centred neuron j of A against A's basis vector r (so that
 * <h, xc_j> = sum_r proj[r][j] c_r for h = sum_r c_r qa[r]).
 */
async function pwccaSides(A: Matrix, B: Matrix, options: PwccaOptions): Promise<{ n: number; qa: Float64Array[]; qb: Float64Array[]; proj: Float64Array[] }> {
  const { n, dA, dB, keepA, keepB, a, b } = await checkPwcca(A, B, options);
  const colsA = await centredColumns(a, n, dA);
  const xc = colsA.map((c) => c.slice()); // basisOfCentred rotates colsA in place
  const qa = await basisOfCentred(colsA, n, keepA, false);
  const proj: Float64Array[] = [];
  for (const q of qa) {
    const row = new Float64Array(dA);
    for (let j = 0; j < dA; j++) {
      row[j] = dot(xc[j], q);
      if (due(n)) await turn();
    }
    proj.push(row);
  }
  const qb = await reducedBasis(b, n, dB, keepB, false);
  return { n, qa, qb, proj };
}

/**
 * PWCCA from the two bases: M = Qa^T Qb (keptA x keptB) = V S U^T by one-sided Jacobi on the
 * columns of M^T with V accumulated; column i of V is A's canonical direction a_i (in qa's
 * coordinates), h_i = Qa a_i its unit canonical variate, s_i = rho_i. alpha_i = sum_j |<h_i, xc_j>|
 * over A's centred neurons, for the first min(keptA, keptB) pairs.
 */
async function weightedCca(qa: Float64Array[], qb: Float64Array[], proj: Float64Array[]): Promise<PwccaResult> {
  const keptA = qa.length;
  const keptB = qb.length;
  const c = Math.min(keptA, keptB);
  const empty = new Float64Array(0);
  if (c === 0) return { score: NaN, correlations: empty, weights: empty, meanCorrelation: NaN, keptA, keptB };
  const g: Float64Array[] = [];
  for (const q of qa) {
    const row = new Float64Array(keptB);
    for (let s = 0; s < keptB; s++) {
      row[s] = dot(q, qb[s]);
      if (due(q.length)) await turn();
    }
    g.push(row);
  }
  const v = qa.map((_, i) => {
    const col = new Float64Array(keptA);
    col[i] = 1;
    return col;
  });
  const { order, sigma } = await hestenes(g, v);
  const correlations = new Float64Array(c);
  const alpha = new Float64Array(c);
  const dA = proj[0].length;
  const h = new Float64Array(dA);
  for (let i = 0; i < c; i++) {
    correlations[i] = Math.min(1, Math.max(0, sigma[i]));
    const ai = v[order[i]];
    h.fill(0);
    for (let r = 0; r < keptA; r++) {
      const w = ai[r];
      const pr = proj[r];
      for (let j = 0; j < dA; j++) h[j] += w * pr[j];
      if (due(dA)) await turn();
    }
    let s = 0;
    for (let j = 0; j < dA; j++) s += Math.abs(h[j]);
    alpha[i] = s;
  }
  let total = 0;
  let weighted = 0;
  let plain = 0;
  for (let i = 0; i < c; i++) {
    total += alpha[i];
    weighted += alpha[i] * correlations[i];
    plain += correlations[i];
  }
  const weights = Float64Array.from(alpha, (x) => x / total);
  return { score: total > 0 ? weighted / total : NaN, correlations, weights, meanCorrelation: plain / c, keptA, keptB };
}

/**
 * PWCCA, projection-weighted CCA (Morcos, Raghu and Bengio 2018): the canonical correlations rho_i
 * of A and B averaged with weights alpha_i = sum_j |<h_i, x_j>|, where h_i is A's i-th canonical
 * variate (unit norm) and x_j A's j-th neuron (column), both centred: A is the side whose
 * representation is weighted (the paper's L1; Kornblith et al. 2019, eq. 9: x_j the columns of X).
 * Swap the arguments to weight by B. Not symmetric, and, unlike SVCCA, not invariant to rotating
 * A's neurons (an L1 norm over them); invariant to an orthogonal transform of B (to any invertible
 * one when every direction is kept), to permuting or negating A's neurons, to scaling either side
 * and to adding a constant per column. See the module
 * comment for the exact definition and why google/svcca's compute_pwcca is not reproduced.
 * Runs in slices of about 20 ms between which the event loop runs; bad arguments reject the Promise.
 * @example const { score, weights, meanCorrelation } = await pwcca(A, B, { n: 5000, dA: 256, dB: 256 });
 */
export async function pwcca(A: Matrix, B: Matrix, options: PwccaOptions): Promise<PwccaResult> {
  return scoped(options, async () => {
    const { qa, qb, proj } = await pwccaSides(A, B, options);
    return weightedCca(qa, qb, proj);
  });
}

/**
 * permutationTest(pwcca) with each side's SVD done once: permuting B's rows permutes the rows of
 * its basis, and A (its basis and its neurons' projections, hence the weights' inputs) is unchanged,
 * so each run is only the CCA of Qa and P Qb and its weights. Equal to
 * permutationTest((A, B) => pwcca(A, B, options).score, ...) with the same runs and seed up to
 * rounding. @internal
 */
export async function pwccaPermutationTest(
  A: Matrix,
  B: Matrix,
  options: PwccaOptions & { runs?: number; seed?: number | bigint },
): Promise<PermutationResult & { keptA: number; keptB: number }> {
  return scoped(options, async () => {
    const { runs, seed, ...rest } = options;
    const { runs: R, seed: sd } = checkRuns({ runs, seed });
    const { n, qa, qb, proj } = await pwccaSides(A, B, rest);
    return permutedBases(n, qa, qb, R, sd, async (q) => (await weightedCca(qa, q, proj)).score);
  });
}

// ---------------------------------------------------------------------------------------------
// RSA

/** Above this many rows RSA's triangles do not fit typical memory (docs/references.md §9: subsample). */
const RSA_ADVISED_N = 20000;

/** A Float64Array for the n(n-1)/2 entries of a triangle, or ERR_SAEKIT_MEMORY naming n. */
/** RSA's peak memory per pair: two float64 triangles and the ranking's 32 bytes per entry. */
const RSA_BYTES_PER_PAIR = 48;

function allocTriangle(n: number): Float64Array {
  const m = (n * (n - 1)) / 2;
  // The OS lends large arrays lazily: a triangle it grants can still exhaust memory as it fills.
  // RSA's peak is about 48 bytes per pair (two float64 triangles, the ranking's buffers), so
  // refuse up front what would pass half of this machine's memory.
  if (m * RSA_BYTES_PER_PAIR > os.totalmem() / 2) {
    throw new SaekitError(
      'ERR_SAEKIT_MEMORY',
      `Expected options.n small enough for RSA's n(n-1)/2 = ${m} dissimilarities (about ${((m * RSA_BYTES_PER_PAIR) / 2 ** 30).toFixed(1)} GiB at its peak, more than half of this machine's ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB) but received n = ${n}; compare a random subsample of at most about ${RSA_ADVISED_N} rows (docs/references.md §9)`,
    );
  }
  try {
    return new Float64Array(m);
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
    throw new SaekitError(
      'ERR_SAEKIT_MEMORY',
      `Expected options.n small enough for RSA's n(n-1)/2 = ${m} float64 dissimilarities (${(m * 8 / 2 ** 30).toFixed(1)} GiB per side) but received n = ${n}, which cannot be allocated; compare a random subsample of at most about ${RSA_ADVISED_N} rows (docs/references.md §9)`,
    );
  }
}

/**
 * For Euclidean distances, which depend only on the differences between rows: when every column's
 * range (max - min over the rows) is below 2^-100 while the values themselves need not be (rows
 * that differ by 1e-170 beside a shared column of 1; copyMatrix scales by the largest value), each
 * column is shifted by its minimum and the side scaled by a power of 2 into range (scaleIntoRange),
 * so that the squared differences do not vanish (distances 0, then NaN or lost digits). Rows of
 * larger ranges are left as they are.
 */
async function shiftIntoRange(rows: Float64Array, n: number, d: number): Promise<void> {
  const lo = new Float64Array(d).fill(Infinity);
  const hi = new Float64Array(d).fill(-Infinity);
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < d; c++) {
      const v = rows[r * d + c];
      if (v < lo[c]) lo[c] = v;
      if (v > hi[c]) hi[c] = v;
    }
    if (due(d)) await turn();
  }
  let range = 0;
  for (let c = 0; c < d; c++) range = Math.max(range, hi[c] - lo[c]);
  if (!(range > 0 && range < 1 / SAFE_MAGNITUDE)) return;
  let max = 0;
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < d; c++) {
      const v = rows[r * d + c] - lo[c];
      rows[r * d + c] = v;
      if (v > max) max = v;
    }
    if (due(d)) await turn();
  }
  await scaleIntoRange([rows], max);
}

/** Strict upper triangle (row-major order, i < j) of the n x n dissimilarity matrix of X's rows. */
async function rdmTriangle(X: Float64Array, n: number, d: number, inner: 'correlation' | 'cosine' | 'euclidean'): Promise<Float64Array> {
  const rows = new Float64Array(X.length);
  for (let a = 0; a < X.length; a += BLOCK) {
    const b = Math.min(X.length, a + BLOCK);
    rows.set(X.subarray(a, b), a);
    if (due(b - a)) await turn();
  }
  if (inner === 'euclidean') await shiftIntoRange(rows, n, d);
  if (inner === 'correlation') {
    for (let r = 0; r < n; r++) {
      // A constant row centres to exactly zero (dissimilarity 1 to every row, whatever the
      // constant), not to a rounding residue along (1, ..., 1).
      let mean = 0;
      let constant = true;
      for (let c = 0; c < d; c++) {
        mean += rows[r * d + c];
        constant &&= rows[r * d + c] === rows[r * d];
      }
      mean /= d;
      if (constant) rows.fill(0, r * d, (r + 1) * d);
      else for (let c = 0; c < d; c++) rows[r * d + c] -= mean;
      if (due(2 * d)) await turn();
    }
  }
  const norms = new Float64Array(n);
  for (let r = 0; r < n; r++) {
    // Cosine and correlation are scale-free: each row is first divided by its largest |value|,
    // so the norms of rows near 1e154 and beyond do not overflow (Inf / Inf gave NaN).
    if (inner !== 'euclidean') {
      let mx = 0;
      for (let c = 0; c < d; c++) mx = Math.max(mx, Math.abs(rows[r * d + c]));
      if (mx > 0 && (mx > 1e100 || mx < 1e-100)) for (let c = 0; c < d; c++) rows[r * d + c] /= mx;
    }
    let s = 0;
    for (let c = 0; c < d; c++) s += rows[r * d + c] ** 2;
    norms[r] = Math.sqrt(s);
    if (due(2 * d)) await turn();
  }
  const out = allocTriangle(n);
  let t = 0;
  // Row i's pairs in blocks of about 8192 multiply-adds between calls of due().
  const step = Math.max(1, Math.floor(8192 / d));
  for (let i = 0; i < n; i++) {
    const oi = i * d;
    for (let j0 = i + 1; j0 < n; j0 += step) {
      const j1 = Math.min(n, j0 + step);
      for (let j = j0; j < j1; j++) {
        const oj = j * d;
        if (inner === 'euclidean') {
          let s = 0;
          for (let c = 0; c < d; c++) s += (rows[oi + c] - rows[oj + c]) ** 2;
          out[t++] = Math.sqrt(s);
        } else {
          let s = 0;
          for (let c = 0; c < d; c++) s += rows[oi + c] * rows[oj + c];
          const denom = norms[i] * norms[j];
          out[t++] = denom > 0 ? snapToTieGrid(1 - s / denom) : 1;
        }
      }
      if (due((j1 - j0) * (d + 8))) await turn();
    }
  }
  return out;
}

/**
 * 1 - cosine lies in [0, 2]; values equal in exact arithmetic but reached along different rounding
 * paths (2-wide rows after centring are multiples of (1, -1), so their correlation dissimilarities
 * are 0 or 2; parallel rows of different lengths) come out a few ulps apart and would rank as
 * distinct. Rounded to multiples of 2^-40 (~9e-13) they tie as they should; distinct values move
 * by at most 2^-41. scipy's pdist does not round (it splits such ties).
 */
function snapToTieGrid(v: number): number {
  return Math.round(v * TIE_GRID) / TIE_GRID;
}
const TIE_GRID = 2 ** 40;

/**
 * Ranks 1..m with ties given their average rank (scipy.stats.rankdata 'average'). The order comes
 * from an LSD radix sort of the values' float64 bits (four 16-bit passes, skipping passes whose
 * digit is the same everywhere): sorting indices with a comparator took ~10x longer (24 s for
 * 8M entries). Keys: the bits with the sign bit flipped for positive values and every bit flipped
 * for negative ones, so that unsigned order is numeric order; -0 takes the key of 0, so the two
 * tie as they do for ===. Values are finite (checked by the callers). Runs in slices, like rsa.
 */
export async function averageRanks(x: Float64Array): Promise<Float64Array> {
  const m = x.length;
  const raw = new Uint32Array(x.buffer, x.byteOffset, 2 * m); // little-endian: lo, hi
  let lo = new Uint32Array(m);
  let hi = new Uint32Array(m);
  let idx = new Uint32Array(m);
  for (let i0 = 0; i0 < m; i0 += BLOCK) {
    const i1 = Math.min(m, i0 + BLOCK);
    for (let i = i0; i < i1; i++) {
      let l = raw[2 * i]!;
      let h = raw[2 * i + 1]!;
      if (h === 0x80000000 && l === 0) h = 0; // -0 -> 0
      if (h & 0x80000000) {
        h = ~h >>> 0;
        l = ~l >>> 0;
      } else h = (h | 0x80000000) >>> 0;
      lo[i] = l;
      hi[i] = h;
      idx[i] = i;
    }
    if (due(i1 - i0)) await turn();
  }
  let lo2 = new Uint32Array(m);
  let hi2 = new Uint32Array(m);
  let idx2 = new Uint32Array(m);
  const count = new Uint32Array(65536);
  for (let pass = 0; pass < 4; pass++) {
    const src = pass < 2 ? lo : hi;
    const shift = (pass & 1) * 16;
    count.fill(0);
    for (let i0 = 0; i0 < m; i0 += BLOCK) {
      const i1 = Math.min(m, i0 + BLOCK);
      for (let i = i0; i < i1; i++) count[(src[i]! >>> shift) & 0xffff]!++;
      if (due(i1 - i0)) await turn();
    }
    if (m === 0 || count[(src[0]! >>> shift) & 0xffff] === m) continue; // one digit everywhere
    let sum = 0;
    for (let d = 0; d < 65536; d++) {
      const c = count[d]!;
      count[d] = sum;
      sum += c;
    }
    for (let i0 = 0; i0 < m; i0 += SCATTER_BLOCK) {
      const i1 = Math.min(m, i0 + SCATTER_BLOCK);
      for (let i = i0; i < i1; i++) {
        const at = count[(src[i]! >>> shift) & 0xffff]!++;
        lo2[at] = lo[i]!;
        hi2[at] = hi[i]!;
        idx2[at] = idx[i]!;
      }
      if (due(MISS * (i1 - i0))) await turn();
    }
    [lo, lo2] = [lo2, lo];
    [hi, hi2] = [hi2, hi];
    [idx, idx2] = [idx2, idx];
  }
  // Ties [i, j) share the mean of ranks i+1 .. j, placed SCATTER_BLOCK sorted positions at a time.
  // A group can hold most of the entries (RSA's correlation dissimilarities of 2-wide rows are
  // all 0 or 2): one that runs past its block is found and placed in blocks of its own.
  const ranks = new Float64Array(m);
  let i = 0;
  while (i < m) {
    const from = i;
    const stop = Math.min(m, i + SCATTER_BLOCK);
    while (i < stop) {
      let j = i + 1;
      while (j < stop && lo[j] === lo[i] && hi[j] === hi[i]) j++;
      if (j === stop && stop < m && lo[stop] === lo[i] && hi[stop] === hi[i]) break;
      const r = (i + 1 + j) / 2;
      for (let k = i; k < j; k++) ranks[idx[k]!] = r;
      i = j;
    }
    if (i < stop) {
      let j = stop;
      while (j < m && lo[j] === lo[i] && hi[j] === hi[i]) {
        j++;
        if ((j & (BLOCK - 1)) === 0 && due(BLOCK)) await turn();
      }
      const r = (i + 1 + j) / 2;
      for (let k0 = i; k0 < j; k0 += SCATTER_BLOCK) {
        const k1 = Math.min(j, k0 + SCATTER_BLOCK);
        for (let k = k0; k < k1; k++) ranks[idx[k]!] = r;
        if (due(MISS * (k1 - k0))) await turn();
      }
      i = j;
    }
    if (due(MISS * (i - from))) await turn();
  }
  return ranks;
}

/** Pearson r of x and y (NaN when either is constant), in slices. */
async function pearson(x: Float64Array, y: Float64Array): Promise<number> {
  const m = x.length;
  let mx = 0;
  let my = 0;
  for (let i0 = 0; i0 < m; i0 += BLOCK) {
    const i1 = Math.min(m, i0 + BLOCK);
    for (let i = i0; i < i1; i++) {
      mx += x[i];
      my += y[i];
    }
    if (due(i1 - i0)) await turn();
  }
  mx /= m;
  my /= m;
  let sxy = 0;
  let sxx = 0;
  let syy = 0;
  for (let i0 = 0; i0 < m; i0 += BLOCK) {
    const i1 = Math.min(m, i0 + BLOCK);
    for (let i = i0; i < i1; i++) {
      const a = x[i] - mx;
      const b = y[i] - my;
      sxy += a * b;
      sxx += a * a;
      syy += b * b;
    }
    if (due(2 * (i1 - i0))) await turn();
  }
  if (sxx === 0 || syy === 0) return NaN;
  return Math.max(-1, Math.min(1, sxy / Math.sqrt(sxx * syy)));
}

/** rsa's checks and the two triangles, as ranks for 'spearman' (each side ranked once). */
async function rsaSides(A: Matrix, B: Matrix, options: RsaOptions): Promise<{ n: number; xa: Float64Array; xb: Float64Array }> {
  const opts = checkOptions('options', options, RSA_OPTIONS);
  const { n, dA, dB } = checkDims(opts, 3);
  const inner = opts.inner === undefined ? 'correlation' : checkOneOf('options.inner', opts.inner, ['correlation', 'cosine', 'euclidean'] as const);
  const outer = opts.outer === undefined ? 'spearman' : checkOneOf('options.outer', opts.outer, ['spearman', 'pearson'] as const);
  checkShape('A', A, n, dA);
  checkShape('B', B, n, dB);
  const a = await copyMatrix('A', A, n * dA);
  const b = await copyMatrix('B', B, n * dB);
  const ta = await rdmTriangle(a, n, dA, inner);
  const xa = outer === 'spearman' ? await averageRanks(ta) : ta;
  const tb = await rdmTriangle(b, n, dB, inner);
  const xb = outer === 'spearman' ? await averageRanks(tb) : tb;
  return { n, xa, xb };
}

/**
 * RSA (docs/references.md §1.6): rank (or Pearson) correlation of the strict upper triangles of the RDMs.
 * Runs in slices of about 20 ms between which the event loop runs (O(n^2 d): seconds at a few
 * thousand rows); bad arguments, or an n whose triangles cannot be allocated, reject the Promise.
 * @example const { score } = await rsa(A, B, { n: 2000, dA: 768, dB: 768 });
 */
export async function rsa(A: Matrix, B: Matrix, options: RsaOptions): Promise<{ score: number }> {
  return scoped(options, async () => {
    const { xa, xb } = await rsaSides(A, B, options);
    return { score: await pearson(xa, xb) };
  });
}

/**
 * permutationTest(rsa) with each side's triangle computed and ranked once: permuting B's rows
 * permutes the entries of its triangle (entry (i, j) becomes entry (p_i, p_j)), and ranks move
 * with the values, so each run gathers B's ranks (or values) in the permuted order and takes one
 * Pearson r. Bit-identical to permutationTest((A, B) => rsa(A, B, options).score, ...) with the
 * same runs and seed (same dissimilarities, same ranks, same summation order). @internal
 */
export async function rsaPermutationTest(A: Matrix, B: Matrix, options: RsaOptions & { runs?: number; seed?: number | bigint }): Promise<PermutationResult> {
  return scoped(options, async () => {
    const { runs, seed, ...rest } = options;
    const { runs: R, seed: sd } = checkRuns({ runs, seed });
    const { n, xa, xb } = await rsaSides(A, B, rest);
    const observed = await pearson(xa, xb);
    if (Number.isNaN(observed)) return { score: observed, shuffled: new Float64Array(0), pValue: Number.NaN };
    // B's triangle as a full symmetric [n, n] matrix, so that a run reads row p_i contiguously
    // (gathers from the triangle itself missed the cache on nearly every entry: ~4x slower).
    let full: Float64Array;
    try {
      full = new Float64Array(n * n);
    } catch (e) {
      if (!(e instanceof RangeError)) throw e;
      throw new SaekitError('ERR_SAEKIT_MEMORY', `Expected options.n small enough for an n x n float64 matrix but received n = ${n}; subsample the rows`);
    }
    let t = 0;
    for (let i = 0; i < n; i++) {
      // Column i is written a row apart: one page (a first touch, at first) per entry.
      for (let j0 = i + 1; j0 < n; j0 += SCATTER_BLOCK) {
        const j1 = Math.min(n, j0 + SCATTER_BLOCK);
        for (let j = j0; j < j1; j++) {
          full[i * n + j] = xb[t]!;
          full[j * n + i] = xb[t++]!;
        }
        if (due(MISS * (j1 - j0))) await turn();
      }
    }
    const g = xb; // B's own triangle is no longer needed: reused for the gathered runs
    const shuffled = new Float64Array(R);
    await forEachPermutation(n, R, sd, async (perm, r) => {
      let q = 0;
      for (let i = 0; i < n; i++) {
        const row = perm[i]! * n;
        for (let j = i + 1; j < n; j++) g[q++] = full[row + perm[j]!]!;
        if (due(2 * (n - i))) await turn();
      }
      shuffled[r] = await pearson(xa, g);
    });
    return permutationResult(observed, shuffled);
  });
}

// ---------------------------------------------------------------------------------------------
// CKA

/**
 * Linear CKA of the column-centred matrices (Kornblith et al. 2019). Runs in slices of about 20 ms
 * between which the event loop runs (O(n d^2), or O(n^2 d) when n is the smaller); bad arguments
 * reject the Promise.
 * @example const { score } = await cka(A, B, { n: 4096, dA: 512, dB: 512 });
 */
export async function cka(A: Matrix, B: Matrix, options: CkaOptions): Promise<{ score: number }> {
  return scoped(options, async () => {
    const opts = checkOptions('options', options, CKA_OPTIONS);
    const { n, dA, dB } = checkDims(opts, 2);
    checkShape('A', A, n, dA);
    checkShape('B', B, n, dB);
    const ca = await centredColumns(await copyMatrix('A', A, n * dA), n, dA);
    const cb = await centredColumns(await copyMatrix('B', B, n * dB), n, dB);
    let cross: number;
    let selfA: number;
    let selfB: number;
    if (n * n < dA * dB + (dA * dA + dB * dB) / 2) {
      // Through the n x n Gram matrices K = Ac Ac^T, L = Bc Bc^T: CKA = <K, L> / (||K|| ||L||).
      const gram = async (cols: Float64Array[]): Promise<Float64Array> => {
        const g = new Float64Array(n * n);
        for (const col of cols) {
          for (let i = 0; i < n; i++) {
            const v = col[i];
            if (v !== 0) for (let j = 0; j < n; j++) g[i * n + j] += v * col[j];
            if (due(n)) await turn();
          }
        }
        return g;
      };
      const K = await gram(ca);
      const L = await gram(cb);
      cross = await dotInSlices(K, L);
      selfA = await dotInSlices(K, K);
      selfB = await dotInSlices(L, L);
    } else {
      cross = 0;
      for (const x of ca) {
        for (const y of cb) {
          cross += dot(x, y) ** 2;
          if (due(n)) await turn();
        }
      }
      const frob2 = async (cols: Float64Array[]): Promise<number> => {
        let s = 0;
        for (let i = 0; i < cols.length; i++) {
          s += dot(cols[i], cols[i]) ** 2;
          for (let j = i + 1; j < cols.length; j++) {
            s += 2 * dot(cols[i], cols[j]) ** 2;
            if (due(n)) await turn();
          }
        }
        return s;
      };
      selfA = await frob2(ca);
      selfB = await frob2(cb);
    }
    if (selfA === 0 || selfB === 0) return { score: NaN };
    return { score: cross / Math.sqrt(selfA * selfB) };
  });
}

// ---------------------------------------------------------------------------------------------
// Permutation test

/**
 * Row-shuffle baseline (docs/references.md §1.4 `shuffle_rand`): `score(A, B)`, then `runs` scores with the
 * rows of B permuted by a seeded PRNG; pValue = (1 + #{shuffled >= score}) / (1 + runs). A NaN
 * score (undefined, e.g. RSA or CKA with a constant side) gives pValue NaN and no shuffled runs.
 * `score` may return a number or a Promise of one (svcca, rsa and cka return Promises); each is
 * awaited before the next run, and the event loop runs between runs (at least every ~20 ms) and
 * while a score's Promise is pending. A synchronous score holds the thread for its whole run.
 * A and B are passed to `score` as given; leave them unchanged until the Promise settles.
 * @example const t = await permutationTest(async (a, b) => (await cka(a, b, { n, dA, dB })).score, A, B, { n, dB, runs: 100 });
 */
export async function permutationTest(
  score: (A: Float64Array, B: Float64Array) => number | Promise<number>,
  A: Float64Array,
  B: Float64Array,
  options: PermutationOptions,
): Promise<PermutationResult> {
  return scoped(options, async () => {
    if (typeof score !== 'function') throw argError('score', 'a function', score);
    const opts = checkOptions('options', options, PERMUTATION_OPTIONS);
    const n = checkInt('options.n', opts.n, 1, 2 ** 31);
    const dB = checkInt('options.dB', opts.dB, 1, 2 ** 31);
    const runs = opts.runs === undefined ? 100 : checkInt('options.runs', opts.runs, 1, 1e7);
    const seed = opts.seed === undefined ? 0n : checkSeed('options.seed', opts.seed);
    if (!(A instanceof Float64Array)) throw arrayTypeError('A', 'a Float64Array', A);
    if (!(B instanceof Float64Array)) throw arrayTypeError('B', 'a Float64Array', B);
    if (A.length % n !== 0) throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected A of length a multiple of n = ${n} but received length ${A.length}`);
    if (B.length !== n * dB) {
      throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected B of length n * dB = ${n * dB} for [${n}, ${dB}] but received length ${B.length}`);
    }
    const call = async (b: Float64Array): Promise<number> => {
      const s = await score(A, b);
      if (typeof s !== 'number') throw argError('score(A, B)', 'a number', s);
      return s;
    };
    // A is handed to every run's score and B is read for each permutation: both must keep their
    // values while the event loop runs between (and during) the runs.
    const lengthA = A.length;
    const observed = await call(B);
    checkKept('A', A, lengthA);
    checkKept('B', B, n * dB);
    // An undefined score (a constant side: NaN) has no significance; without this it would count no
    // shuffle as scoring at least as high and come out as the smallest p-value.
    if (Number.isNaN(observed)) return { score: observed, shuffled: new Float64Array(0), pValue: Number.NaN };
    const rng = new Rng(seed, 0x5e1f); // a stream of its own, named by the seed
    const perm = new Uint32Array(n);
    const shuffled = new Float64Array(runs);
    let ge = 0;
    for (let r = 0; r < runs; r++) {
      // A run's length is the score's: look at the clock before each (CHECK_UNITS forces a look),
      // and at the signal (a synchronous score never lets a turn come).
      if (due(CHECK_UNITS)) await turn();
      abortScope.getStore()?.throwIfAborted();
      checkKept('A', A, lengthA);
      checkKept('B', B, n * dB);
      for (let i = 0; i < n; i++) perm[i] = i;
      rng.shuffle(perm);
      const shuffledB = new Float64Array(B.length);
      for (let i = 0; i < n; i++) {
        shuffledB.set(B.subarray(perm[i] * dB, perm[i] * dB + dB), i * dB);
        if (due(dB + 64)) {
          await turn();
          checkKept('B', B, n * dB);
        }
      }
      const s = await call(shuffledB);
      checkKept('A', A, lengthA); // detached during the score: its value is not the score of A
      shuffled[r] = s;
      if (s >= observed) ge++;
    }
    return { score: observed, shuffled, pValue: (1 + ge) / (1 + runs) };
  });
}
