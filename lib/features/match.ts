/**
 * Matching features across SAEs and layers (docs/references.md).
 *
 * - match(): pairs features of A (rows) with features of B (columns) of a correlation or
 *   similarity matrix: 'argmax' (every B feature to its best A feature, docs/references.md §1.4 step 1;
 *   Convergent Learning's semi-matching, §2), 'mutual' (mutual nearest neighbours, relaxed to
 *   top-n "best buddies" as in Rosetta Neurons, §2) or 'hungarian' (exact one-to-one assignment
 *   maximising the total score, §2 bipartite matching, solved natively off the JS thread), then
 *   (for 'argmax', optionally the "1-1" filter of §1.4 step 3: oneToOne) the low-score filter of
 *   §1.4 step 4, which keeps a pair when its score is >= `threshold` (univ_feat_geom keeps
 *   `max_corr > 0.1`, strictly: `strictThreshold`; the two differ only for a score exactly equal
 *   to the threshold). It also takes a correlation() result: the full matrix,
 *   or top matches, from which 'argmax' and 'mutual' (top <= the kept matches, or any top when
 *   the lists hold every A feature; both directions
 *   for 'mutual') are exact; 'hungarian' needs the full matrix.
 * - saeMatch(): SAE Match (§3), data-free: exact linear assignment minimising the MSE between
 *   (folded) decoder rows, optionally with encoder columns. The n x n cost comes from one float32
 *   GEMM (||a||^2 + ||b||^2 - 2 a.b), so the assignment is exact for that cost: two candidates
 *   whose MSEs differ by less than about 1e-7 of ||a||^2 (near-duplicate latents) may be matched
 *   either way. The reported MSEs of the matched pairs are recomputed exactly in float64.
 * - composeMatches(): chains matches across layers, P_{t→t+2} = P_{t+1→t+2} ∘ P_{t→t+1} (§3).
 */
import { totalmem } from 'node:os';

import { argError, arrayTypeError, SaekitError } from '../errors.js';
import { solveChunked } from '../eval/assignment.js';
import { due, pause, runAll, runSliced, yieldToEventLoop } from '../slices.js';
import { SparseAutoencoder, type SaeWeights } from '../sae/index.js';
import { tensor } from '../tensor/index.js';
import { matmul } from '../tensor/ops.js';
import type { CorrelationResult, CorrelationTopMatches } from './correlation.js';
import { checkBool, checkInt, checkKept, checkOneOf, checkOptions, checkSignal, optionNames } from '../validate.js';

/** How match() pairs features (see the module comment). */
export type MatchMethod = 'argmax' | 'mutual' | 'hungarian';

/** Options of match(). */
export interface MatchOptions {
  /** Number of features of A (rows of corr); taken from a correlation() result when given one. */
  nA?: number;
  /** Number of features of B (columns of corr); taken from a correlation() result when given one. */
  nB?: number;
  /** Default 'hungarian'. */
  method?: MatchMethod;
  /** Drop pairs whose score is < threshold (kept when score >= threshold). Default: keep all. */
  threshold?: number;
  /**
   * Keep a pair only when its score is > threshold, as univ_feat_geom compares (`max_corr > 0.1`);
   * the two differ only for a score exactly equal to the threshold. Default false (>=).
   */
  strictThreshold?: boolean;
  /**
   * For 'mutual': Rosetta Neurons' best buddies. Each A feature a is paired with its best B
   * feature b, and the pair counts when a is also among b's top-n A features (ranked by score
   * descending, ties to the lowest index): at most one pair per A feature. Default 1 (strict
   * mutual nearest neighbours).
   */
  top?: number;
  /**
   * For 'argmax': univ_feat_geom's "1-1" filter (docs/references.md §1.4 step 3, its `oneToOne_bool`).
   * Where several B features share their best A feature, only the pair with the lowest B index is
   * kept, whatever its score (that repository keeps the first pair in B order, not the best one);
   * applied before `threshold`, as there, so an A feature whose first pair scores under the
   * threshold keeps none. A reproduction aid: 'hungarian' is the exact one-to-one matching.
   * Default false.
   */
  oneToOne?: boolean;
}

/** A matched pair: feature a of A, feature b of B and their score (corr[a, b]). */
export interface MatchPair {
  /** Feature of A (row of corr). */
  a: number;
  /** Feature of B (column of corr). */
  b: number;
  /** corr[a, b]. */
  score: number;
}

/** What match() returns: the kept pairs, each B feature's match and the mean score. */
export interface MatchResult {
  /** Kept pairs, ordered by a, then b. */
  pairs: MatchPair[];
  /**
   * [nB] the matched A feature of each B feature, -1 if unmatched. Where a B feature is in
   * several kept pairs ('mutual' with top > 1), its highest-scoring one (ties to the lowest a).
   */
  bToA: Int32Array;
  /** Mean score of the kept pairs; NaN when none is kept. */
  meanScore: number;
}

const MAX_DIM = 2 ** 31 - 1;

const MATCH_OPTIONS = optionNames<MatchOptions>({ nA: true, nB: true, method: true, threshold: true, strictThreshold: true, top: true, oneToOne: true });
const SAE_MATCH_OPTIONS = optionNames<SaeMatchOptions>({ fold: true, encoder: true, maxBytes: true, signal: true });

/**
 * Pairs features of A (rows of `corr`, [nA, nB] row-major) with features of B (columns), or
 * of a correlation() result (see the module comment). A plain matrix needs options.nA and
 * options.nB; a correlation() result carries them. The matrix is read until the Promise settles:
 * detached or resized before then, the call rejects with ERR_SAEKIT_ARG naming it. 'hungarian'
 * copies the matrix to the native solver as float64: nA x nB x 8 bytes more (twice a float32
 * matrix; 512 MiB at 8192 x 8192), held until the assignment is found.
 */
export function match(result: CorrelationResult, options?: MatchOptions): Promise<MatchResult>;
export function match(corr: Float32Array | Float64Array, options: MatchOptions & { nA: number; nB: number }): Promise<MatchResult>;
export async function match(corr: Float32Array | Float64Array | CorrelationResult, options?: MatchOptions): Promise<MatchResult> {
  const site = new Error();
  const isResult = corr !== null && typeof corr === 'object' && 'mode' in corr && (corr.mode === 'full' || corr.mode === 'top');
  if (!isResult && !(corr instanceof Float32Array) && !(corr instanceof Float64Array)) {
    throw arrayTypeError('corr', 'a Float32Array, a Float64Array or a correlation() result', corr);
  }
  if (options === undefined && !isResult) throw argError('options', 'an options object with nA and nB', options);
  const o = checkOptions('options', options, MATCH_OPTIONS);
  const res = isResult ? (corr as CorrelationResult) : undefined;
  const nA = res ? res.nA : checkInt('options.nA', o.nA, 0, MAX_DIM);
  const nB = res ? res.nB : checkInt('options.nB', o.nB, 0, MAX_DIM);
  if (res && o.nA !== undefined && o.nA !== nA) throw argError('options.nA', `undefined or the result's nA = ${nA}`, o.nA, 'ERR_SAEKIT_SHAPE');
  if (res && o.nB !== undefined && o.nB !== nB) throw argError('options.nB', `undefined or the result's nB = ${nB}`, o.nB, 'ERR_SAEKIT_SHAPE');
  const method = o.method === undefined ? 'hungarian' : checkOneOf('options.method', o.method, ['argmax', 'mutual', 'hungarian'] as const);
  let threshold = -Infinity;
  if (o.threshold !== undefined) {
    if (typeof o.threshold !== 'number' || Number.isNaN(o.threshold)) throw argError('options.threshold', 'a number', o.threshold);
    threshold = o.threshold;
  }
  const strict = o.strictThreshold === undefined ? false : checkBool('options.strictThreshold', o.strictThreshold);
  const top = o.top === undefined ? 1 : checkInt('options.top', o.top, 1, MAX_DIM);
  if (o.top !== undefined && method !== 'mutual') throw argError('options.top', "undefined unless method is 'mutual'", o.top);
  const oneToOne = o.oneToOne === undefined ? false : checkBool('options.oneToOne', o.oneToOne);
  if (oneToOne && method !== 'argmax') throw argError('options.oneToOne', "false or undefined unless method is 'argmax' ('hungarian' is one-to-one already)", o.oneToOne);

  let raw: MatchPair[];
  if (res?.mode === 'top') {
    raw = topListPairs(res, method, top);
  } else {
    const m = res ? res.r : (corr as Float32Array | Float64Array);
    // A correlation() result's matrix is its r (errors name corr.r, not corr).
    const name = res ? 'corr.r' : 'corr';
    if (m.length !== nA * nB) throw argError(name, `an array of length nA * nB = ${nA * nB}`, m, 'ERR_SAEKIT_SHAPE');
    // Each method reads the matrix row by row in chunks, checking every value, and gives the
    // event loop back between chunks ('hungarian': the addon checks them as it copies them).
    // After each pause the matrix must still hold its values (checkKept).
    if (method === 'argmax') raw = await argmaxPairs(m, nA, nB, name);
    else if (method === 'mutual') raw = await mutualPairs(m, nA, nB, top, name);
    else raw = await hungarianPairs(m, nA, nB, site, name);
  }

  if (oneToOne) raw = firstPerA(raw, nA);
  const pairs = raw.filter((p) => (strict ? p.score > threshold : p.score >= threshold)).sort((x, y) => x.a - y.a || x.b - y.b);
  const bToA = new Int32Array(nB).fill(-1);
  const best = new Float64Array(nB).fill(-Infinity);
  let sum = 0;
  for (const p of pairs) {
    sum += p.score;
    // Pairs come by increasing a, so strict > keeps the lowest a on ties.
    if (p.score > best[p.b]!) {
      best[p.b] = p.score;
      bToA[p.b] = p.a;
    }
  }
  return { pairs, bToA, meanScore: pairs.length > 0 ? sum / pairs.length : NaN };
}

/** univ_feat_geom's 1-1 filter: of the pairs (in B order) that share an A feature, the first. */
function firstPerA(pairs: MatchPair[], nA: number): MatchPair[] {
  const seen = new Uint8Array(nA);
  return pairs.filter((p) => {
    if (seen[p.a]) return false;
    seen[p.a] = 1;
    return true;
  });
}

/** 'argmax' and 'mutual' from top lists (exactly what the full matrix would give). */
function topListPairs(res: CorrelationTopMatches, method: MatchMethod, top: number): MatchPair[] {
  if (method === 'hungarian') {
    throw new SaekitError(
      'ERR_SAEKIT_ARG',
      "Expected method 'argmax' or 'mutual' for a correlation result with top matches only; 'hungarian' needs the full matrix (correlation output 'full', a larger maxBytes)",
    );
  }
  const { nA, nB } = res;
  const pairs: MatchPair[] = [];
  if (nA === 0 || nB === 0) return pairs;
  const t = res.top;
  if (method === 'argmax') {
    for (let b = 0; b < nB; b++) pairs.push({ a: t.indices[b * t.k]!, b, score: t.r[b * t.k]! });
    return pairs;
  }
  const rev = res.reverse;
  if (!rev) throw argError('corr.reverse', "the A -> B top lists for method 'mutual' (correlation option reverse: true)", rev);
  // Lists that hold every A feature (k = nA) are complete: any larger top is all of them.
  if (top > t.k && t.k < nA) throw argError('options.top', `at most the matches kept per feature (${t.k})`, top);
  const n = Math.min(top, t.k);
  for (let a = 0; a < nA; a++) {
    const b = rev.indices[a * rev.k]!; // a's best B feature
    let found = false;
    for (let p = 0; p < n; p++) if (t.indices[b * t.k + p] === a) found = true;
    if (found) pairs.push({ a, b, score: rev.r[a * rev.k]! });
  }
  return pairs;
}

/** Values of the matrix read per turn of the event loop (a few milliseconds of JS). */
const CHUNK_VALUES = 1 << 19;

/**
 * Calls `row(a, base)` for every row a of an [nA, nB] matrix after checking the row's values are
 * finite (the first non-finite value in row-major order is the one reported), yielding to the
 * event loop every CHUNK_VALUES values; after each pause `corr` (called `name`) must still hold
 * its nA x nB values (checkKept).
 */
async function scanRows(corr: Float32Array | Float64Array, nA: number, nB: number, name: string, row: (a: number, base: number) => void): Promise<void> {
  const step = Math.max(1, Math.floor(CHUNK_VALUES / Math.max(nB, 1)));
  for (let a0 = 0; a0 < nA; a0 += step) {
    const a1 = Math.min(nA, a0 + step);
    for (let a = a0; a < a1; a++) {
      const base = a * nB;
      for (let b = 0; b < nB; b++) {
        const v = corr[base + b]!;
        if (v - v !== 0) throw argError(`${name}[${base + b}]`, 'finite number', v, 'ERR_SAEKIT_NONFINITE');
      }
      row(a, base);
    }
    if (a1 < nA) {
      await yieldToEventLoop();
      checkKept(name, corr, nA * nB);
    }
  }
}

/** Every B feature's best A feature (ties to the lowest a): one pass over the rows keeping each column's best. */
async function argmaxPairs(corr: Float32Array | Float64Array, nA: number, nB: number, name: string): Promise<MatchPair[]> {
  const bestA = new Int32Array(nB);
  const bestS = new Float64Array(nB).fill(-Infinity);
  await scanRows(corr, nA, nB, name, (a, base) => {
    for (let b = 0; b < nB; b++) {
      const s = corr[base + b]!;
      // Strict >: rows come by increasing a, so the lowest a keeps a tie.
      if (s > bestS[b]!) {
        bestS[b] = s;
        bestA[b] = a;
      }
    }
  });
  const pairs: MatchPair[] = [];
  if (nA === 0) return pairs;
  for (let b = 0; b < nB; b++) pairs.push({ a: bestA[b]!, b, score: corr[bestA[b]! * nB + b]! });
  return pairs;
}

/**
 * Rosetta Neurons' best buddies in one pass over the rows: each row's best column (ties to the
 * lowest b), and each column's top rows by value descending then index ascending, kept as a
 * sorted list per column (none when top >= nA: then every row is in every list).
 */
async function mutualPairs(corr: Float32Array | Float64Array, nA: number, nB: number, top: number, name: string): Promise<MatchPair[]> {
  const pairs: MatchPair[] = [];
  if (nA === 0 || nB === 0) return pairs;
  // top >= nA: every A feature is in every column's top list (no lists needed).
  const t = top >= nA ? 0 : top;
  const colVal = new Float64Array(nB * t).fill(-Infinity);
  const colIdx = new Int32Array(nB * t).fill(-1);
  const rowBest = new Int32Array(nA);
  await scanRows(corr, nA, nB, name, (a, base) => {
    let bestB = 0;
    let bestS = corr[base]!;
    for (let b = 0; b < nB; b++) {
      const v = corr[base + b]!;
      if (v > bestS) {
        bestS = v;
        bestB = b;
      }
      const c0 = b * t;
      if (t === 0 || !(v > colVal[c0 + t - 1]!)) continue;
      // Shift strictly smaller values down; equal values keep their place (lower a first).
      let p = c0 + t - 1;
      while (p > c0 && colVal[p - 1]! < v) {
        colVal[p] = colVal[p - 1]!;
        colIdx[p] = colIdx[p - 1]!;
        p--;
      }
      colVal[p] = v;
      colIdx[p] = a;
    }
    rowBest[a] = bestB;
  });
  for (let a = 0; a < nA; a++) {
    // a's top-1 partner must have a among its own top-n.
    const b = rowBest[a]!;
    let found = t === 0;
    for (let p = b * t; p < b * t + t; p++) if (colIdx[p] === a) found = true;
    if (found) pairs.push({ a, b, score: corr[a * nB + b]! });
  }
  return pairs;
}

async function hungarianPairs(corr: Float32Array | Float64Array, nA: number, nB: number, site: Error, name: string): Promise<MatchPair[]> {
  // The addon copies the rows (float32 or float64) to its float64 work matrix and checks them.
  const rowsOf = (row0: number, count: number): Float32Array | Float64Array => {
    checkKept(name, corr, nA * nB);
    return corr.subarray(row0 * nB, (row0 + count) * nB);
  };
  const rowToCol = await solveChunked(nA, nB, true, rowsOf, name, site);
  checkKept(name, corr, nA * nB); // the scores below read it again
  const pairs: MatchPair[] = [];
  for (let a = 0; a < nA; a++) {
    const b = rowToCol[a]!;
    if (b >= 0) pairs.push({ a, b, score: corr[a * nB + b]! });
  }
  return pairs;
}

/** Options of saeMatch(). */
export interface SaeMatchOptions {
  /**
   * Fold JumpReLU thresholds into the weights before matching (docs/references.md §3): encoder columns
   * and b_enc divided by θ_i, decoder rows multiplied by θ_i. A no-op for SAEs without
   * thresholds (TopK). Default true. An SAE with a threshold that is 0 (or not finite) cannot be
   * folded: saeMatch then fails naming saeA or saeB and the latent; pass false to match the
   * unfolded weights.
   */
  fold?: boolean;
  /** Also match on encoder columns W_enc[:, i] (concatenated to the decoder rows). Default false. */
  encoder?: boolean;
  /**
   * The most memory the n x n assignment may take, about 12 bytes per pair of latents (see
   * saeMatch); beyond it saeMatch fails at once with ERR_SAEKIT_MEMORY instead of exhausting the
   * machine. Default half the machine's memory (os.totalmem() / 2).
   */
  maxBytes?: number;
  /**
   * Stops saeMatch between its stages and between the slices of its JS work (folding, the
   * parameter vectors, the n x n cost handed to the solver a chunk at a time, the matched pairs'
   * MSE); the Promise then rejects with `signal.reason` (an AbortError by default), as Node's own
   * APIs do. The GEMM and the native assignment solver cannot be interrupted (the solver takes
   * minutes at 32k latents): an abort while they run is seen when they return.
   */
  signal?: AbortSignal;
}

/**
 * Peak bytes per pair of latents in saeMatch: the GEMM's float32 n x n result and its copy, then
 * that copy and the solver's float64 cost. @internal (match-layers states the memory with it)
 */
export const SAE_MATCH_BYTES_PER_PAIR = 12;

/** What saeMatch() returns: the permutation from A's latents to B's and the per-pair MSE. */
export interface SaeMatchResult {
  /** [numLatents] for each latent of A, the matched latent of B. */
  permutation: Int32Array;
  /**
   * [numLatents] per-pair MSE ‖a_i − b_π(i)‖² / w over the (folded) parameters used, w their
   * width: d for the decoder rows alone, 2d with `encoder: true` (decoder row and encoder column).
   */
  mse: Float64Array;
  /** Mean of mse. */
  meanMse: number;
}

/**
 * The folded weights of an SAE (docs/references.md §3): with thresholds θ (JumpReLU), `W_enc[:, i] / θ_i`,
 * `b_enc[i] / θ_i`, `θ_i W_dec[i, :]` and threshold 1, which leaves the SAE function unchanged
 * (f̃_i = f_i / θ_i). Weights without thresholds are returned as copies. θ_i must be finite and
 * > 0: a latent with θ_i = 0 (a plain ReLU) has no folded form (no scale gives it threshold 1),
 * and folding refuses it rather than leave it on another scale than the others. A finite weight
 * whose folded value passes float32's range (W_enc over a tiny θ_i) is ERR_SAEKIT_NONFINITE
 * naming the latent.
 */
export function foldWeights(weights: SaeWeights): SaeWeights {
  return runAll(foldNamed(weights, 'weights'));
}

/**
 * foldWeights, with errors naming the weights `name` (saeMatch: 'saeA' or 'saeB'), as work for
 * runAll / runSliced (similarity.ts): yields after every row of each matrix.
 */
// checkEncoder false: the folded W_enc and b_enc may overflow (saeMatch without encoder: true
// reads only the decoder rows).
function* foldNamed(weights: SaeWeights, name: string, checkEncoder = true): Generator<number, SaeWeights> {
  if (weights === null || typeof weights !== 'object') throw argError('weights', 'SAE weights', weights);
  const { W_enc, b_enc, W_dec, b_dec, threshold } = weights;
  for (const [key, w] of [['W_enc', W_enc], ['b_enc', b_enc], ['W_dec', W_dec], ['b_dec', b_dec]] as const) {
    if (!(w instanceof Float32Array)) throw arrayTypeError(`weights.${key}`, 'a Float32Array', w);
  }
  const n = b_enc.length;
  const d = b_dec.length;
  if (W_enc.length !== n * d) throw argError('weights.W_enc', `a Float32Array of length dIn * numLatents = ${n * d}`, W_enc, 'ERR_SAEKIT_SHAPE');
  if (W_dec.length !== n * d) throw argError('weights.W_dec', `a Float32Array of length numLatents * dIn = ${n * d}`, W_dec, 'ERR_SAEKIT_SHAPE');
  if (threshold === undefined) {
    // Copies of tens of MiB (into fresh pages) take tens of milliseconds each.
    const We = W_enc.slice();
    yield n * d;
    const Wd = W_dec.slice();
    yield n * d;
    return { W_enc: We, b_enc: b_enc.slice(), W_dec: Wd, b_dec: b_dec.slice() };
  }
  if (!(threshold instanceof Float32Array) || threshold.length !== n) {
    throw argError('weights.threshold', `a Float32Array of length numLatents = ${n}`, threshold, 'ERR_SAEKIT_SHAPE');
  }
  for (let i = 0; i < n; i++) {
    const t = threshold[i]!;
    if (!(t > 0) || !Number.isFinite(t)) {
      // θ_i = 0 (a plain ReLU latent) has no folded form: no scale makes its threshold 1.
      const e = argError(`${name}.threshold[${i}]`, 'a finite number > 0 (folding divides by it)', t);
      if (name === 'weights') throw e;
      throw new SaekitError(e.code, `${e.message}; pass fold: false to match without folding`);
    }
  }
  const We = new Float32Array(n * d);
  const Wd = new Float32Array(n * d);
  const be = new Float32Array(n);
  // A finite weight whose folded value passes float32's range (W_enc / a tiny threshold) is
  // refused here, naming the latent, rather than matched as an infinite parameter.
  const overflow = (i: number, what: string, v: number, folded: number) =>
    new SaekitError(
      'ERR_SAEKIT_NONFINITE',
      `Expected folded weights within float32's range but ${name === 'weights' ? "the weights'" : `${name}'s`} latent ${i} folds ${what} = ${v} to ${folded} (threshold[${i}] = ${threshold[i]})` +
        (name === 'weights' ? '' : '; pass fold: false to match without folding'),
    );
  for (let r = 0; r < d; r++) {
    for (let i = 0; i < n; i++) {
      We[r * n + i] = W_enc[r * n + i]! / threshold[i]!;
      const v = We[r * n + i]!; // as stored: a float64 quotient past 3.4e38 is Infinity in float32
      if (checkEncoder && v - v !== 0 && Number.isFinite(W_enc[r * n + i]!)) throw overflow(i, `W_enc[${r}][${i}] / threshold[${i}]`, W_enc[r * n + i]!, v);
    }
    yield n;
  }
  for (let i = 0; i < n; i++) {
    be[i] = b_enc[i]! / threshold[i]!;
    const b = be[i]!;
    if (checkEncoder && b - b !== 0 && Number.isFinite(b_enc[i]!)) throw overflow(i, `b_enc[${i}] / threshold[${i}]`, b_enc[i]!, b);
    for (let c = 0; c < d; c++) {
      Wd[i * d + c] = W_dec[i * d + c]! * threshold[i]!;
      const v = Wd[i * d + c]!;
      if (v - v !== 0 && Number.isFinite(W_dec[i * d + c]!)) throw overflow(i, `W_dec[${i}][${c}] * threshold[${i}]`, W_dec[i * d + c]!, v);
    }
    yield d;
  }
  return { W_enc: We, b_enc: be, W_dec: Wd, b_dec: b_dec.slice(), threshold: new Float32Array(n).fill(1) };
}

/**
 * Per-latent parameter vectors [numLatents, width] (decoder row, then encoder column), checked to
 * be finite (the error names the SAE `name` and the latent), with their squared norms (float64,
 * in column order). Work for runSliced (similarity.ts): yields after every latent.
 */
function* latentParams(w: SaeWeights, n: number, d: number, encoder: boolean, name: string): Generator<number, { p: Float64Array; norms: Float64Array }> {
  const width = encoder ? 2 * d : d;
  const out = new Float64Array(n * width);
  const norms = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < d; c++) out[i * width + c] = w.W_dec[i * d + c]!;
    if (encoder) for (let r = 0; r < d; r++) out[i * width + d + r] = w.W_enc[r * n + i]!;
    yield encoder ? 4 * width : width; // the encoder column's reads are strided
  }
  // Checked for every latent before any norm, so the first non-finite value in order is reported.
  for (let q0 = 0; q0 < out.length; q0 += width) {
    for (let q = q0; q < q0 + width; q++) {
      if (!Number.isFinite(out[q])) throw new SaekitError('ERR_SAEKIT_NONFINITE', `Expected finite SAE weights for saeMatch but ${name}'s latent ${Math.floor(q / width)} has ${out[q]}`);
    }
    yield width;
  }
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < width; c++) norms[i]! += out[i * width + c]! ** 2;
    yield width;
  }
  return { p: out, norms };
}

/** A float32 copy of `p` (rounded to nearest), a piece at a time: work for runSliced. */
function* toFloat32(p: Float64Array): Generator<number, Float32Array> {
  const out = new Float32Array(p.length);
  const piece = 1 << 16;
  for (let at = 0; at < p.length; at += piece) {
    const end = Math.min(p.length, at + piece);
    out.set(p.subarray(at, end), at);
    yield end - at;
  }
  return out;
}

/**
 * SAE Match (docs/references.md §3): the permutation π minimising Σ_i ‖a_i − b_π(i)‖² over (folded)
 * decoder rows (and, with `encoder`, encoder columns) of two SAEs with the same numLatents and
 * dIn, solved exactly as a linear assignment.
 *
 * Reproducibility: the cost comes from a float32 GEMM, and the BLAS (OpenBLAS) splits that GEMM
 * by thread count, which changes the dot products in their last bits. Where two assignments'
 * totals differ by less than that (near-duplicate latents), the permutation can differ between
 * thread counts (backend.setThreads, SAEKIT_NUM_THREADS; saekit sets OpenBLAS's own count, so
 * OPENBLAS_NUM_THREADS changes nothing) or BLAS builds; with the same thread
 * count and BLAS it is the same on every run. The reported mse is float64 and exact either way.
 * The GEMM and the solver run off the JS thread; the O(n d) steps run on it in ~20 ms slices
 * between turns of the event loop, and the O(n^2) cost is built and handed over in chunks, so the
 * event loop keeps turning at 16k latents.
 *
 * Memory and time grow with n^2: about 12 bytes per pair of latents at the peak (the GEMM's float32
 * n x n result and its copy, then that copy and the solver's float64 cost), so 3 GiB at 16k
 * latents, 12 GiB at 32k and 48 GiB at 65k; beyond options.maxBytes (default half the machine's
 * memory) it fails at once with ERR_SAEKIT_MEMORY. The solver reports no progress and cannot be stopped: 20 s for two unrelated SAEs of
 * 8192 latents on 2 cores, growing faster than n^2 (minutes at 32k). options.signal stops the
 * JS stages around it (see SaeMatchOptions.signal), and an abort during the solver once it returns.
 */
export async function saeMatch(saeA: SparseAutoencoder, saeB: SparseAutoencoder, options?: SaeMatchOptions): Promise<SaeMatchResult> {
  if (!(saeA instanceof SparseAutoencoder)) throw argError('saeA', 'a SparseAutoencoder', saeA);
  if (!(saeB instanceof SparseAutoencoder)) throw argError('saeB', 'a SparseAutoencoder', saeB);
  if (saeA.numLatents !== saeB.numLatents) {
    throw argError('saeB.numLatents', `saeA.numLatents = ${saeA.numLatents}`, saeB.numLatents, 'ERR_SAEKIT_SHAPE');
  }
  if (saeA.dIn !== saeB.dIn) throw argError('saeB.dIn', `saeA.dIn = ${saeA.dIn}`, saeB.dIn, 'ERR_SAEKIT_SHAPE');
  const o = checkOptions('options', options, SAE_MATCH_OPTIONS);
  const fold = o.fold === undefined ? true : checkBool('options.fold', o.fold);
  const encoder = o.encoder === undefined ? false : checkBool('options.encoder', o.encoder);
  const maxBytes = o.maxBytes === undefined ? Math.floor(totalmem() / 2) : checkInt('options.maxBytes', o.maxBytes, 1, Number.MAX_SAFE_INTEGER);
  const signal = checkSignal('options.signal', o.signal);
  const n = saeA.numLatents;
  const d = saeA.dIn;
  const needs = SAE_MATCH_BYTES_PER_PAIR * n * n;
  if (needs > maxBytes) {
    throw new SaekitError(
      'ERR_SAEKIT_MEMORY',
      `the ${n} x ${n} assignment of saeMatch needs about ${needs} bytes (${(needs / 2 ** 30).toFixed(1)} GiB), over options.maxBytes = ${maxBytes}${o.maxBytes === undefined ? " (half this machine's memory)" : ''}`,
    );
  }
  signal?.throwIfAborted();
  const site = new Error();
  let [wA, wB] = await Promise.all([saeA.weights(), saeB.weights()]);
  signal?.throwIfAborted();
  // The steps below are O(n * d) each and run in ~20 ms slices between turns of the event loop
  // (similarity.ts runSliced); the n x n cost is built and handed to the solver a few million
  // entries at a time.
  if (fold) {
    // The folded encoder is checked only where it is matched (encoder: true).
    wA = await runSliced(foldNamed(wA, 'saeA', encoder), signal);
    signal?.throwIfAborted();
    wB = await runSliced(foldNamed(wB, 'saeB', encoder), signal);
    signal?.throwIfAborted();
  }
  const width = encoder ? 2 * d : d;
  // A's and B's finite checks in that order, as before: saeA's bad latent is named first.
  const { p: pA, norms: normA } = await runSliced(latentParams(wA, n, d, encoder, 'saeA'), signal);
  signal?.throwIfAborted();
  const { p: pB, norms: normB } = await runSliced(latentParams(wB, n, d, encoder, 'saeB'), signal);
  signal?.throwIfAborted();
  // cost_ij = (||a_i||^2 + ||b_j||^2 - 2 a_i.b_j) / width, the dot products as one GEMM.
  let dots: Float32Array;
  {
    using ta = tensor(await runSliced(toFloat32(pA), signal), [n, width], { device: 'cpu' });
    if (due(n * width)) await pause(); // a copy of tens of MiB (into fresh pages) takes tens of ms
    using tb = tensor(await runSliced(toFloat32(pB), signal), [n, width], { device: 'cpu' });
    signal?.throwIfAborted();
    using g = await matmul(ta, tb, { transB: true });
    // Disposed while the copy is queued: the copy job then holds the last reference, and the
    // n x n result (1 GiB at 16k latents) is freed off the JS thread.
    const copy = g.toArray();
    g.dispose();
    dots = (await copy) as Float32Array;
  }
  signal?.throwIfAborted();
  let buf = new Float64Array(0);
  const costRows = (row0: number, count: number): Float64Array => {
    // Between the chunks handed to the solver (solveChunked frees its buffer on a throw).
    signal?.throwIfAborted();
    if (buf.length < count * n) buf = new Float64Array(count * n);
    const out = buf.subarray(0, count * n);
    for (let r = 0; r < count; r++) {
      const i = row0 + r;
      const ni = normA[i]!;
      for (let j = 0; j < n; j++) out[r * n + j] = (ni + normB[j]! - 2 * dots[i * n + j]!) / width;
    }
    return out;
  };
  const rowToCol = await solveChunked(n, n, false, costRows, 'cost', site);
  signal?.throwIfAborted(); // an abort while the solver ran (it cannot be interrupted)
  // The matched pairs' MSE exactly (float64), not from the GEMM's float32 dot products.
  const mse = new Float64Array(n);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const j = rowToCol[i]!;
    let s2 = 0;
    for (let c = 0; c < width; c++) {
      const diff = pA[i * width + c]! - pB[j * width + c]!;
      s2 += diff * diff;
    }
    mse[i] = s2 / width;
    sum += mse[i]!;
    if (due(width)) await pause(signal);
  }
  return { permutation: rowToCol, mse, meanMse: sum / n };
}

/**
 * Chains matches A→B, B→C, … into A→last: out[i] = p_k[…p_2[p_1[i]]…], -1 wherever a link is
 * unmatched. Each entry of p_t must be -1 or an index into p_{t+1}.
 */
export function composeMatches(...perms: Int32Array[]): Int32Array {
  if (perms.length === 0) throw argError('perms', 'at least one Int32Array', perms);
  perms.forEach((p, t) => {
    if (!(p instanceof Int32Array)) throw arrayTypeError(`perms[${t}]`, 'an Int32Array', p);
  });
  const out = perms[0]!.slice();
  for (let t = 0; t < perms.length; t++) {
    const p = perms[t]!;
    const limit = t + 1 < perms.length ? perms[t + 1]!.length : MAX_DIM;
    for (let i = 0; i < p.length; i++) {
      const v = p[i]!;
      if (v < -1 || v >= limit) {
        throw argError(`perms[${t}][${i}]`, `-1 or an index below ${t + 1 < perms.length ? `perms[${t + 1}].length = ${limit}` : limit}`, v, 'ERR_SAEKIT_SHAPE');
      }
    }
    if (t > 0) for (let i = 0; i < out.length; i++) out[i] = out[i]! < 0 ? -1 : p[out[i]!]!;
  }
  return out;
}
