/**
 * Ground-truth recovery metrics (docs/references.md §4.1): MMCS and MCC between learned decoder
 * rows and ground-truth feature directions.
 *
 * Cosines are computed in float64 from the float32 inputs as cos(a, b) = a.b / sqrt(|a|^2 |b|^2),
 * each sum accumulated in index order (so a row and its power-of-two rescaled copy give exactly
 * +-1), clamped to [-1, 1]; a zero row has cosine 0 with everything. The cosine matrix is
 * computed in tiles: MMCS keeps only one running maximum per row, never the full matrix. Both
 * functions are asynchronous: the tiles are computed on the JS thread in slices of about 20 ms
 * (the event loop runs between them), and MCC's exact matching runs in the native solver off
 * the JS thread (linearAssignmentAsync). Cost: nLearned x nTruth x d multiply-adds (about 1 s per
 * 10^9 here) plus, for MCC, the matching (a few seconds at 8192 x 8192) and an
 * nLearned x nTruth float64 cost matrix.
 */
import { argError, arrayTypeError, SaekitError } from '../errors.js';
import { checkInt, checkKept, checkOneOf, checkOptions, optionNames } from '../validate.js';
import { native } from '../native/index.js';
import { linearAssignmentAsync } from './assignment.js';
import { yieldToEventLoop } from '../slices.js';

/** Option names (checkOptions refuses others: a misspelling is an error, not ignored). */
const MMCS_OPTIONS = optionNames<MmcsOptions>({ d: true, direction: true, similarity: true });
const MCC_OPTIONS = optionNames<MccOptions>({ d: true, similarity: true });

/** Which similarity the maximum or the matching uses: signed cosine or its absolute value. */
export type Similarity = 'cos' | 'abs-cos';

/** Options of mmcs(). */
export interface MmcsOptions {
  /** Row length of both matrices. */
  d: number;
  /**
   * 'truth-to-learned' (default): mean over ground-truth rows of the best learned row (Sharkey et
   * al.'s `mean_max_cosine_similarity`); 'learned-to-truth': mean over learned rows of the best
   * ground-truth row (`mmcs_to_fixed`). They differ when the sets differ in size: report which.
   */
  direction?: 'truth-to-learned' | 'learned-to-truth';
  /**
   * Default 'cos', the signed cosine as in the reference code (§4.1): a decoder row pointing
   * opposite to a feature does not recover it (SAE codes are non-negative). 'abs-cos' is the
   * sign-blind variant used by MCC implementations.
   */
  similarity?: Similarity;
}

/** What mmcs() returns: the mean best similarity, and each row's best similarity and match. */
export interface MmcsResult {
  /** Mean over the source rows of their best similarity. */
  mean: number;
  /** Best similarity of each source row. */
  perRow: Float64Array;
  /** Index of the best row in the other set for each source row (first of ties). */
  best: Int32Array;
}

/** Options of mcc(). */
export interface MccOptions {
  /** Row length of both matrices. */
  d: number;
  /**
   * Default 'abs-cos': the Hungarian matching on 1 - |cos| and the mean matched |cos| of SAELens'
   * `mean_correlation_coefficient` (§4.1, after O'Neill et al.). 'cos' is the signed variant of
   * the MFR repository's Hungarian `calculate_MMCS` (matching on 1 - cos, mean matched cos).
   */
  similarity?: Similarity;
}

/** What mcc() returns: the mean matched similarity and the one-to-one matching. */
export interface MccResult {
  /** Mean similarity over the min(nLearned, nTruth) matched pairs. */
  mean: number;
  /** For each ground-truth row the matched learned row, -1 if unmatched (nTruth > nLearned). */
  pairs: Int32Array;
  /** Signed cosine of each ground-truth row with its match, NaN if unmatched. */
  cos: Float64Array;
}

/**
 * Mean max cosine similarity between learned rows [nLearned, d] and ground-truth rows [nTruth, d].
 * Both are read until the Promise settles: one detached or resized before then makes the call
 * reject with ERR_SAEKIT_ARG naming it.
 */
export async function mmcs(learned: Float32Array, truth: Float32Array, options: MmcsOptions): Promise<MmcsResult> {
  const o = checkOptions('options', options, MMCS_OPTIONS);
  const d = checkInt('options.d', o.d, 1, 2 ** 31 - 1);
  const nL = checkRows('learned', learned, d);
  const nT = checkRows('truth', truth, d);
  const direction =
    o.direction === undefined ? 'truth-to-learned' : checkOneOf('options.direction', o.direction, ['truth-to-learned', 'learned-to-truth'] as const);
  const abs = (o.similarity === undefined ? 'cos' : checkOneOf('options.similarity', o.similarity, ['cos', 'abs-cos'] as const)) === 'abs-cos';
  const [S, nS, T, nTg] = direction === 'truth-to-learned' ? [truth, nT, learned, nL] : [learned, nL, truth, nT];
  const kept = keptCheck(learned, nL, truth, nT, d);
  const normS = await squaredNorms(S, nS, d, kept);
  const normT = await squaredNorms(T, nTg, d, kept);
  const perRow = new Float64Array(nS).fill(-Infinity);
  const best = new Int32Array(nS).fill(-1);
  await forEachTile(S, nS, T, nTg, d, kept, (i0, i1, j0, j1, tile) => {
    const w = j1 - j0;
    for (let i = i0; i < i1; i++) {
      const ni = normS[i]!;
      let bestV = perRow[i]!;
      let bestJ = best[i]!;
      const row = (i - i0) * w;
      for (let j = j0; j < j1; j++) {
        let s = cosine(tile[row + j - j0]!, ni, normT[j]!);
        if (abs) s = Math.abs(s);
        if (s > bestV) {
          bestV = s;
          bestJ = j;
        }
      }
      perRow[i] = bestV;
      best[i] = bestJ;
    }
  });
  let sum = 0;
  for (let i = 0; i < nS; i++) sum += perRow[i]!;
  return { mean: sum / nS, perRow, best };
}

/**
 * Mean correlation coefficient: an exact one-to-one matching of learned and ground-truth rows
 * maximising the total similarity (every row of the smaller set is matched), and the mean
 * similarity over the matched pairs (denominator min(nLearned, nTruth)). Both inputs are read
 * until the Promise settles: one detached or resized before then makes the call reject with
 * ERR_SAEKIT_ARG naming it.
 */
export async function mcc(learned: Float32Array, truth: Float32Array, options: MccOptions): Promise<MccResult> {
  const o = checkOptions('options', options, MCC_OPTIONS);
  const d = checkInt('options.d', o.d, 1, 2 ** 31 - 1);
  const nL = checkRows('learned', learned, d);
  const nT = checkRows('truth', truth, d);
  const abs = (o.similarity === undefined ? 'abs-cos' : checkOneOf('options.similarity', o.similarity, ['cos', 'abs-cos'] as const)) === 'abs-cos';
  // Rows of the cost matrix: the smaller set.
  const truthRows = nT <= nL;
  const [A, n, B, m] = truthRows ? [truth, nT, learned, nL] : [learned, nL, truth, nT];
  if (n * m > 2 ** 31 - 1) {
    throw new SaekitError('ERR_SAEKIT_MEMORY', `mcc needs a ${n} x ${m} cost matrix, more than 2^31 - 1 entries`);
  }
  const kept = keptCheck(learned, nL, truth, nT, d);
  const normA = await squaredNorms(A, n, d, kept);
  const normB = await squaredNorms(B, m, d, kept);
  let work: Float64Array;
  try {
    work = new Float64Array(n * m);
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
    throw new SaekitError('ERR_SAEKIT_MEMORY', `mcc needs a ${n} x ${m} float64 cost matrix (${((n * m * 8) / 2 ** 30).toFixed(1)} GiB), which cannot be allocated here (${e.message})`);
  }
  await forEachTile(A, n, B, m, d, kept, (i0, i1, j0, j1, tile) => {
    const w = j1 - j0;
    for (let i = i0; i < i1; i++) {
      const ni = normA[i]!;
      const row = (i - i0) * w;
      const out = i * m;
      for (let j = j0; j < j1; j++) {
        const c = cosine(tile[row + j - j0]!, ni, normB[j]!);
        work[out + j] = 1 - (abs ? Math.abs(c) : c); // >= 0
      }
    }
  });
  const col4row = (await linearAssignmentAsync(work, n, m)).rowToCol;
  kept(); // the matched cosines below read both inputs again
  const pairs = new Int32Array(nT).fill(-1);
  const cos = new Float64Array(nT).fill(NaN);
  const normL = truthRows ? normB : normA;
  const normT = truthRows ? normA : normB;
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const j = col4row[i]!;
    const [t, l] = truthRows ? [i, j] : [j, i];
    pairs[t] = l;
    const c = cosine(dot(truth, t, learned, l, d), normT[t]!, normL[l]!);
    cos[t] = c;
    sum += abs ? Math.abs(c) : c;
  }
  return { mean: sum / n, pairs, cos };
}

// ---------------------------------------------------------------------------------------------

function checkRows(name: string, x: unknown, d: number): number {
  if (!(x instanceof Float32Array)) throw arrayTypeError(name, 'a Float32Array', x);
  if (x.length === 0 || x.length % d !== 0) throw argError(name, `a Float32Array with a positive multiple of d = ${d} elements`, x, 'ERR_SAEKIT_SHAPE');
  // The addon's vectorised scan (a JS loop held the event loop ~100 ms at 16k x 2304); the
  // index is looked for only when there is one to name.
  if (native().anyNonFinite(x, 0, x.length)) {
    const i = x.findIndex((v) => !Number.isFinite(v));
    throw argError(`${name}[${i}]`, 'finite number', x[i], 'ERR_SAEKIT_NONFINITE');
  }
  return x.length / d;
}

/**
 * A check, for after each pause, that the caller's learned and truth still hold their nL x d and
 * nT x d values (checkKept: not detached or resized, which would make the reads undefined).
 */
function keptCheck(learned: Float32Array, nL: number, truth: Float32Array, nT: number, d: number): () => void {
  return () => {
    checkKept('learned', learned, nL * d);
    checkKept('truth', truth, nT * d);
  };
}

/** Each row's squared norm in float64, in slices that let the event loop run (SLICE_MS); `kept()` after each pause. */
async function squaredNorms(x: Float32Array, n: number, d: number, kept: () => void): Promise<Float64Array> {
  const out = new Float64Array(n);
  let since = performance.now();
  for (let i = 0; i < n; i++) {
    if ((i & 255) === 0 && performance.now() - since > SLICE_MS) {
      await yieldToEventLoop();
      kept();
      since = performance.now();
    }
    let s = 0;
    const base = i * d;
    for (let k = 0; k < d; k++) {
      const v = x[base + k]!;
      s += v * v;
    }
    out[i] = s;
  }
  return out;
}

function cosine(dotAB: number, nA: number, nB: number): number {
  if (nA === 0 || nB === 0) return 0;
  const c = dotAB / Math.sqrt(nA * nB);
  return c > 1 ? 1 : c < -1 ? -1 : c;
}

function dot(a: Float32Array, i: number, b: Float32Array, j: number, d: number): number {
  let s = 0;
  const ai = i * d;
  const bj = j * d;
  for (let k = 0; k < d; k++) s += a[ai + k]! * b[bj + k]!;
  return s;
}

type TileVisitor = (i0: number, i1: number, j0: number, j1: number, tile: Float64Array) => void;

/** Milliseconds of tiles computed between two turns of the event loop. */
const SLICE_MS = 20;

/**
 * Visits the dot-product matrix A B^T in tiles [i0, i1) x [j0, j1) (tile row-major, width
 * j1 - j0), letting the event loop run every SLICE_MS (the tiles and their order do not change)
 * and calling `kept()` after each pause.
 */
async function forEachTile(A: Float32Array, nA: number, B: Float32Array, nB: number, d: number, kept: () => void, visit: TileVisitor): Promise<void> {
  let since = performance.now();
  // A tile of B rows stays in cache (~128 KiB) while a block of A rows streams past it.
  const bt = Math.max(4, Math.min(nB, Math.floor(32768 / d)));
  const at = Math.min(nA, 64);
  const tile = new Float64Array(at * bt);
  for (let j0 = 0; j0 < nB; j0 += bt) {
    const j1 = Math.min(nB, j0 + bt);
    for (let i0 = 0; i0 < nA; i0 += at) {
      const i1 = Math.min(nA, i0 + at);
      dotTile(A, i0, i1, B, j0, j1, d, tile);
      visit(i0, i1, j0, j1, tile);
      if (performance.now() - since > SLICE_MS) {
        await yieldToEventLoop();
        kept();
        since = performance.now();
      }
    }
  }
}

/**
 * tile[(i - i0) * (j1 - j0) + (j - j0)] = A_i . B_j, each sum in index order (float32 products are
 * exact in float64). 4 x 2 register blocks: eight independent accumulation chains.
 */
function dotTile(A: Float32Array, i0: number, i1: number, B: Float32Array, j0: number, j1: number, d: number, tile: Float64Array): void {
  const w = j1 - j0;
  let i = i0;
  for (; i + 3 < i1; i += 4) {
    const a0 = i * d;
    const a1 = a0 + d;
    const a2 = a1 + d;
    const a3 = a2 + d;
    const r0 = (i - i0) * w - j0;
    let j = j0;
    for (; j + 1 < j1; j += 2) {
      const b0 = j * d;
      const b1 = b0 + d;
      let s00 = 0;
      let s01 = 0;
      let s10 = 0;
      let s11 = 0;
      let s20 = 0;
      let s21 = 0;
      let s30 = 0;
      let s31 = 0;
      for (let k = 0; k < d; k++) {
        const y0 = B[b0 + k]!;
        const y1 = B[b1 + k]!;
        let x = A[a0 + k]!;
        s00 += x * y0;
        s01 += x * y1;
        x = A[a1 + k]!;
        s10 += x * y0;
        s11 += x * y1;
        x = A[a2 + k]!;
        s20 += x * y0;
        s21 += x * y1;
        x = A[a3 + k]!;
        s30 += x * y0;
        s31 += x * y1;
      }
      const o = r0 + j;
      tile[o] = s00;
      tile[o + 1] = s01;
      tile[o + w] = s10;
      tile[o + w + 1] = s11;
      tile[o + 2 * w] = s20;
      tile[o + 2 * w + 1] = s21;
      tile[o + 3 * w] = s30;
      tile[o + 3 * w + 1] = s31;
    }
    if (j < j1) {
      const b0 = j * d;
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      for (let k = 0; k < d; k++) {
        const y = B[b0 + k]!;
        s0 += A[a0 + k]! * y;
        s1 += A[a1 + k]! * y;
        s2 += A[a2 + k]! * y;
        s3 += A[a3 + k]! * y;
      }
      const o = r0 + j;
      tile[o] = s0;
      tile[o + w] = s1;
      tile[o + 2 * w] = s2;
      tile[o + 3 * w] = s3;
    }
  }
  for (; i < i1; i++) {
    const a0 = i * d;
    const r0 = (i - i0) * w - j0;
    let j = j0;
    for (; j + 1 < j1; j += 2) {
      const b0 = j * d;
      const b1 = b0 + d;
      let s0 = 0;
      let s1 = 0;
      for (let k = 0; k < d; k++) {
        const x = A[a0 + k]!;
        s0 += x * B[b0 + k]!;
        s1 += x * B[b1 + k]!;
      }
      tile[r0 + j] = s0;
      tile[r0 + j + 1] = s1;
    }
    if (j < j1) tile[r0 + j] = dot(A, i, B, j, d);
  }
}
