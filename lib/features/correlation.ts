/**
 * Streaming Pearson correlation between the features of two SAEs (or any two aligned activation
 * streams) over tokens (docs/references.md §1.2-§1.3, §9):
 *
 * - kind 'codes': the SAEs' sparse codes, correlated natively (native/cpu/sparse_corr.cpp, or with
 *   `device` on CUDA: native/cuda/corr.cu, the same bits). The
 *   nonzero codes of both sides are collected in native memory, about
 *   tokens x (nonzeros per token of A + of B) x 8 bytes (float32 value + int32 index; 0.5 GB
 *   for 10^6 tokens at k = 32 + 32), plus 16 bytes per token; `maxTokens` bounds it (and, when
 *   given, pre-allocates it). Regrouping them (below) holds a second copy of one side at a time,
 *   so the peak is about tokens x (nzA + nzB + max(nzA, nzB)) x 8 bytes plus 16 per token (0.8
 *   GB for 10^6 tokens at k = 32 + 32; measured on the CPU: 790 bytes per token at 32 + 32).
 *   A's codes are then regrouped per latent (posting lists), and each
 *   row of the cross-moment is accumulated in float64 from the postings times B's codes of the
 *   same tokens (a row-streaming sparse product, O(tokens kA kB) plus O(nA nB) to finish), never
 *   holding nA x nB sums. The moments are raw float64 sums: exact enough for codes, which are
 *   non-negative and mostly zero; a latent that fires on (nearly) every token with a large mean
 *   and a tiny spread loses digits to cancellation (mean 50, std 0.01, 10^6 tokens: r off by
 *   about 4e-6), and one whose variance is at most max(1e-12, 4 T eps) of its second moment over
 *   T tokens (the sums' own rounding error; 9e-10 at 10^6 tokens) is taken as constant (a
 *   coefficient of variation under about 1e-6 to 3e-5). Kind 'preacts' centres per batch and has
 *   neither limit.
 * - kind 'preacts' / 'dense': dense features (the SAEs' pre-activations, see preActivations(),
 *   or raw activations such as neurons). Each batch's centred co-moment (x - mean_b)^T (y -
 *   mean_b) is one float32 GEMM, each column's centred values scaled by a power of two that puts
 *   the largest near 1 and divided back out exactly in float64, so r does not depend on the
 *   values' magnitude (any finite float32; unscaled, products of values over ~1.8e19 would
 *   overflow float32 and of values under ~1e-22 go subnormal or to zero); a non-finite value (a
 *   pre-activation past float32's range) throws ERR_SAEKIT_NONFINITE. Batches merge with Chan's
 *   formula in float64, so a column with mean 50 and std 0.01 over a million rows still gives r
 *   to 1e-4. These kinds hold 16 bytes per entry of the nA x nB matrix: the float64 co-moments
 *   (8), each batch's float32 product in its tensor and in the copy read back (4 + 4), and in
 *   full mode the float32 result (4), made after the last batch in the product's place. When nA x nB x 16 bytes are over `maxBytes`,
 *   B's features are taken in column blocks of nA x w x 16 bytes within maxBytes, one pass over
 *   the data per block (sources are re-iterable), keeping only top matches; a maxBytes under one
 *   column (nA x 16 bytes) is ERR_SAEKIT_MEMORY. Each batch's GEMM runs on tiles of 256 columns
 *   of B (GEMM_TILE) and the blocks hold whole tiles where one fits, so r is the same bits for
 *   the full matrix and for top lists at any maxBytes that holds a tile (nA x 4096 bytes); below
 *   that a block's own GEMM may round an entry differently in its last bit. The JS work (means,
 *   centring, the merges, r and the top lists) runs in ~20 ms slices between turns of the event
 *   loop.
 *
 * Output (`output`): the full float32 matrix r when it fits in `maxBytes` (kind 'codes': nA x nB
 * x 4 bytes; the dense kinds: nA x nB x 16, see above) ('auto', the default, or 'full', which
 * otherwise throws ERR_SAEKIT_MEMORY); otherwise (or with 'top') only the top matches: for every
 * B feature its `top` best A features by r (and with `reverse` for every A feature its best B
 * features), best first, ties to the lower index.
 *
 * A feature constant over the sample gets r = 0 and is flagged in the masks (for codes: variance
 * <= max(1e-12, 4 T eps) of the raw second moment over T tokens). Kind 'codes' gives identical bits for any batch size and
 * thread count for the same codes (under OpenBLAS an SAE's codes can change in the last bit with
 * the rows encoded together: SAEKIT_BLAS=builtin makes the encoding batch-invariant); the dense kinds agree across batch sizes to float32 rounding of the co-moment
 * sums (each batch's GEMM sums in its own order): a few ulp for large |r|, and about n · 2^-24
 * in absolute terms (2e-7 at 4000 rows), so a small r can differ in its leading digits.
 */
import { constants } from 'node:buffer';

import type { ActivationSource } from '../data/types.js';
import { argError, atTokens, callNative, SaekitError, settleNative } from '../errors.js';
import { native, type NativeSparseCorrResult } from '../native/index.js';
import type { SparseAutoencoder } from '../sae/index.js';
import { deviceName, resolveDevice, type DeviceOption } from '../backend/index.js';
import { tensor, type Device } from '../tensor/index.js';
import { matmul } from '../tensor/ops.js';
import { due, forBlocks, pause } from '../slices.js';
import { checkBool, checkInt, checkOneOf, checkOptions, checkSignal, optionNames } from '../validate.js';

/** Options of correlation(). */
export interface CorrelationOptions {
  /**
   * 'codes' (default), 'preacts' (sae.preActivations(): `(x - b_dec) W_enc + b_enc`, or `x W_enc +
   * b_enc` when the SAE's applyBDecToInput is false) or 'dense' (the rows themselves).
   */
  kind?: 'codes' | 'preacts' | 'dense';
  /** Tokens to read (masked-out ones count). Default: all. For 'codes' it also bounds the memory the codes take (see the module comment). */
  maxTokens?: number;
  /** Rows per batch. Default 4096. */
  batchSize?: number;
  /** Per token (global index): false excludes it from both sides (padding, BOS). */
  mask?: (token: number) => boolean;
  /**
   * Memory for the nA x nB matrix. Kind 'codes': the largest full float32 result (nA x nB x 4
   * bytes), and the native run's work arrays: each CPU thread holds nB x (16 + 8 top) bytes in
   * top mode (nB x 8 for the full matrix), and fewer threads run where they would pass maxBytes
   * (at least one; the result is the same bits). Kinds 'preacts' / 'dense': what they hold per entry, 16 bytes (float64 co-moments,
   * each batch's float32 product and its copy, the float32 result), for the full matrix or for
   * each column block of top mode; the batches are not counted. Default 1 GiB. (Dense kinds:
   * r is the same bits for every maxBytes of at least nA x 4096 bytes, one 256-column GEMM tile.)
   */
  maxBytes?: number;
  /**
   * 'auto' (default): the full matrix if it fits in maxBytes, else top matches; 'full': the full
   * matrix or ERR_SAEKIT_MEMORY; 'top': top matches only.
   */
  output?: 'auto' | 'full' | 'top';
  /** Matches kept per feature in top mode. Default 5. */
  top?: number;
  /** In top mode, also every A feature's best B features. Default false. */
  reverse?: boolean;
  /**
   * Where the work runs: 'cpu' (default) or a CUDA device ('cuda', 'cuda:N'). Kind 'codes': the
   * whole sparse correlation (native/cuda/corr.cu; the codes are still collected on the host,
   * and the result is bit-identical to the CPU kernel's). Kinds 'preacts' / 'dense': the
   * per-batch co-moment GEMM.
   */
  device?: DeviceOption;
  /**
   * Called after each batch with the tokens read so far, over every pass (a dense correlation
   * wider than maxBytes reads the sources once per column block), and the passes it will make.
   */
  onProgress?: (tokensRead: number, passes: number) => void;
  /**
   * Stops the correlation: checked before any work, between batches and, for the dense kinds,
   * between column blocks (top mode) and within the work on a block's r after its pass. The
   * Promise then rejects with `signal.reason` (an AbortError by default), as Node's own APIs do,
   * and the sources' pass is ended. Kind 'codes' runs its correlation natively after the last
   * batch, and that run cannot be interrupted: an abort during it does not stop it, and its
   * result is returned.
   */
  signal?: AbortSignal;
  /**
   * 'univ-feat-geom': reproduce that repository's correlation (docs/references.md §1.2, §1.8, §9), which
   * z-scores each column with torch's unbiased std but divides the product by N, so it returns
   * r (N - 1) / N for N tokens (masked-out ones excluded) instead of Pearson r: every r (the full
   * matrix and the top lists) is multiplied by that factor, the order of matches is unchanged, and
   * the result says `compat: 'univ-feat-geom'`. Its `+ 1e-8` on the std is left out (a relative
   * change of about 1e-8 / std, 1e-5 for a latent of std 1e-3). Default: Pearson r.
   */
  compat?: 'univ-feat-geom';
}

const CORRELATION_OPTIONS = optionNames<CorrelationOptions>({
  kind: true, maxTokens: true, batchSize: true, mask: true, maxBytes: true, output: true, top: true, reverse: true, device: true, onProgress: true, signal: true, compat: true,
});

/**
 * Bytes a dense correlation ('preacts', 'dense') holds per entry of the matrix, or of a column
 * block: the float64 co-moments (8) and each batch's float32 product, in its tensor and in the
 * copy read back (4 + 4); in full mode the float32 result (4) is made after the last batch, when
 * no batch's product is referenced any more. The batches themselves are not counted.
 */
const DENSE_ENTRY_BYTES = 16;

/**
 * Columns of B per GEMM (dense kinds). A float32 GEMM's rounding of an entry can depend on the
 * product's width (OpenBLAS and cuBLAS block and split their sums by it): with one GEMM per
 * column block, r changed in the last bit with maxBytes (and argmax or mutual could pick another
 * of two near-tied features than the full matrix does). Every entry is computed by the GEMM of its
 * own tile, columns [256 t, 256 (t + 1)) of B, whatever the block: r is the same bits for any
 * maxBytes that holds a tile (nA x 256 x 16 bytes), full matrix or top lists.
 */
const GEMM_TILE = 256;

/** The longest typed array this runtime makes (2^32 elements on Node 20). */
const MAX_TYPED_LENGTH = constants.MAX_LENGTH;

/** One side of correlation(): an SAE (except for kind 'dense') and the rows it reads. */
export interface CorrelationSide {
  /** The SAE whose features are correlated; omit for kind 'dense'. */
  sae?: SparseAutoencoder;
  /**
   * The rows; the two sides' rows must be aligned token by token. Omit b.source to share a's
   * (its rows may then be skipped as non-finite, for both sides at once). With two sources no row
   * is skipped: a non-finite row is ERR_SAEKIT_NONFINITE naming its file and row, whatever the
   * sources' onNonFinite.
   */
  source?: ActivationSource;
}

/** Best matches per feature, best first (r descending, ties to the lower index). */
export interface CorrelationTop {
  /** Matches per feature: min(options.top, features on the other side). */
  k: number;
  /** [features, k] row-major: indices of the other side's features. */
  indices: Int32Array;
  /** [features, k] their Pearson r. */
  r: Float32Array;
}

/** What both forms of a correlation() result hold besides r. */
export interface CorrelationCommon {
  /** Features of A. */
  nA: number;
  /** Features of B. */
  nB: number;
  /** Tokens used (masked-out ones excluded). */
  tokens: number;
  /** [nA] 1 where the feature of A was constant over the sample (its r is 0). */
  constantA: Uint8Array;
  /** [nB] 1 where the feature of B was constant over the sample (its r is 0). */
  constantB: Uint8Array;
  /** [nA] tokens on which each feature of A was nonzero (every kind: a negative pre-activation or dense value counts). */
  activeA: Float64Array;
  /** [nB] the same for B. */
  activeB: Float64Array;
  /** 'univ-feat-geom' when options.compat asked for that repository's r (N - 1) / N; absent for Pearson r. */
  compat?: 'univ-feat-geom';
}

/** The full matrix. */
export interface CorrelationMatrix extends CorrelationCommon {
  /** 'full': r holds the whole matrix. */
  mode: 'full';
  /** [nA, nB] row-major Pearson r. */
  r: Float32Array;
  /** Absent in full mode. */
  top?: undefined;
  /** Absent in full mode. */
  reverse?: undefined;
}

/** Top matches only (the matrix was over maxBytes, or output 'top'). */
export interface CorrelationTopMatches extends CorrelationCommon {
  /** 'top': only the best matches are kept. */
  mode: 'top';
  /** Absent in top mode. */
  r?: undefined;
  /** For every B feature ([nB, k]) its best A features. */
  top: CorrelationTop;
  /** With options.reverse: for every A feature ([nA, k]) its best B features. */
  reverse?: CorrelationTop;
}

/** What correlation() returns: the full matrix or the top matches (tell them apart by `mode`). */
export type CorrelationResult = CorrelationMatrix | CorrelationTopMatches;

function width(side: CorrelationSide, name: 'a' | 'b', kind: string, dIn: number): number {
  if (kind === 'dense') return dIn;
  const sae = side.sae as Partial<SparseAutoencoder> | undefined;
  if (sae === null || typeof sae !== 'object' || typeof sae.encode !== 'function' || !Number.isInteger(sae.numLatents)) {
    throw argError(`${name}.sae`, `a SparseAutoencoder for kind '${kind}'`, sae);
  }
  return sae.numLatents!;
}

/** Checks a side's source: an ActivationSource (batches() and an integer dIn). */
function checkSource(name: string, s: unknown): ActivationSource {
  const src = s as Partial<ActivationSource> | null | undefined;
  if (src === null || typeof src !== 'object' || typeof src.batches !== 'function' || !Number.isInteger(src.dIn) || src.dIn! < 1) {
    throw argError(name, 'an ActivationSource', s);
  }
  return src as ActivationSource;
}

/**
 * Batches of the two sources side by side, up to `limit` rows: they must agree on the row count
 * of each batch within the limit (sources longer than the limit may differ beyond it).
 */
async function* aligned(a: ActivationSource, b: ActivationSource | undefined, batchSize: number, limit: number) {
  // Recycled batch arrays: the caller is done with a pair before it asks for the next one. Two
  // sources never skip rows (each would drop its own, and every later token would be paired with
  // the wrong one): a non-finite row is an error naming its file and row, whatever their default.
  const options = { batchSize, shuffle: false, recycle: true, ...(b ? { onNonFinite: 'error' as const } : {}) };
  const ia = a.batches(options)[Symbol.asyncIterator]();
  const ib = b ? b.batches(options)[Symbol.asyncIterator]() : undefined;
  const unequal = (rowsA: number, rowsB: number) =>
    new SaekitError(
      'ERR_SAEKIT_SHAPE',
      `Expected the two sources to have the same number of rows (aligned token by token) but a gave ${rowsA} and b gave ${rowsB} before one ended` +
        (a.numRows !== undefined && b?.numRows !== undefined ? ` (a has ${a.numRows} rows, b has ${b.numRows})` : ''),
    );
  let rows = 0;
  try {
    while (rows < limit) {
      const [ra, rb] = await Promise.all([ia.next(), ib?.next()]).catch((e: unknown) => {
        if (b && e instanceof SaekitError && e.message.includes(SKIP_HINT)) e.message = e.message.replace(SKIP_HINT, TWO_SOURCES_HINT);
        throw e;
      });
      if (ra.done || (rb && rb.done)) {
        if (rb && ra.done !== rb.done) throw unequal(rows + (ra.done ? 0 : ra.value.rows), rows + (rb.done ? 0 : rb.value.rows));
        return;
      }
      const left = limit - rows;
      if (rb && Math.min(rb.value.rows, left) !== Math.min(ra.value.rows, left)) throw unequal(rows + ra.value.rows, rows + rb.value.rows);
      rows += Math.min(ra.value.rows, left);
      yield [ra.value, rb ? rb.value : ra.value] as const;
    }
  } finally {
    await ia.return?.();
    await ib?.return?.();
  }
}

/** The data sources' hint in a non-finite row's error. */
const SKIP_HINT = "(pass onNonFinite: 'skip' to drop such rows)";

/** What replaces it when a and b have their own sources. @internal (the CLI names its flag instead) */
export const TWO_SOURCES_HINT = '(rows are not skipped when a and b have their own sources, which must stay aligned token by token: clean the data first)';

/** Keeps the rows the mask admits; returns the kept row indices (or all). */
function keptRows(rows: number, start: number, mask: CorrelationOptions['mask']): number[] | undefined {
  if (!mask) return undefined;
  const keep: number[] = [];
  for (let r = 0; r < rows; r++) if (mask(start + r)) keep.push(r);
  return keep.length === rows ? undefined : keep;
}

function selectRows(x: Float32Array, d: number, keep: number[]): Float32Array {
  const out = new Float32Array(keep.length * d);
  keep.forEach((r, i) => out.set(x.subarray(r * d, (r + 1) * d), i * d));
  return out;
}

/** Better = larger r, then lower index. Inserts (r, i) into a best-first list of k. */
function topInsert(v: Float32Array, x: Int32Array, base: number, k: number, r: number, i: number): void {
  let p = k - 1;
  while (p > 0 && (r > v[base + p - 1]! || (r === v[base + p - 1]! && i < x[base + p - 1]!))) {
    v[base + p] = v[base + p - 1]!;
    x[base + p] = x[base + p - 1]!;
    p--;
  }
  v[base + p] = r;
  x[base + p] = i;
}

/**
 * Top lists of placeholders (index 2^31 - 1, r -Infinity) that every r displaces: the dense kinds'
 * r are finite (in [-1, 1]; a non-finite input throws), so every list of k <= the other side's
 * features is filled.
 */
function emptyTop(rows: number, k: number): CorrelationTop {
  return { k, indices: new Int32Array(rows * k).fill(2 ** 31 - 1), r: new Float32Array(rows * k).fill(-Infinity) };
}

interface Pass {
  n: number;
  seen: number;
}

/** One pass over the aligned, masked rows: calls `each` with both sides' rows. */
async function forEachBatch(
  a: ActivationSource,
  b: ActivationSource | undefined,
  batchSize: number,
  maxTokens: number,
  mask: CorrelationOptions['mask'],
  each: (xa: Float32Array, xb: Float32Array, rows: number, token: (row: number) => number) => Promise<void>,
  report: ((seen: number) => void) | undefined,
  signal: AbortSignal | undefined,
): Promise<Pass> {
  const dA = a.dIn;
  const dB = (b ?? a).dIn;
  let n = 0;
  let seen = 0;
  for await (const [ba, bb] of aligned(a, b, batchSize, maxTokens)) {
    // Leaving the loop by a throw ends the sources' pass (aligned()'s finally returns both iterators).
    signal?.throwIfAborted();
    if (seen >= maxTokens) break;
    let rows = Math.min(ba.rows, maxTokens - seen);
    let xa = rows === ba.rows ? ba.data : ba.data.subarray(0, rows * dA);
    let xb = rows === bb.rows ? bb.data : bb.data.subarray(0, rows * dB);
    const keep = keptRows(rows, seen, mask);
    const start = seen;
    seen += rows;
    if (keep) {
      xa = selectRows(xa, dA, keep);
      xb = selectRows(xb, dB, keep);
      rows = keep.length;
    }
    if (rows !== 0) {
      // A row of the batch (xa, xb) as the token it is: its index in the sources' order, as the mask counts.
      await each(xa, xb, rows, (r) => start + (keep ? keep[r]! : r));
      n += rows;
    }
    report?.(seen);
  }
  return { n, seen };
}

/** Pearson correlation between the features of two sides over aligned tokens (see the module comment). */
export async function correlation(a: CorrelationSide, b: CorrelationSide, options?: CorrelationOptions): Promise<CorrelationResult> {
  const site = new Error();
  const o = checkOptions('options', options, CORRELATION_OPTIONS);
  const kind = o.kind === undefined ? 'codes' : checkOneOf('options.kind', o.kind, ['codes', 'preacts', 'dense'] as const);
  const batchSize = o.batchSize === undefined ? 4096 : checkInt('options.batchSize', o.batchSize, 1, 1 << 24);
  const maxTokens = o.maxTokens === undefined ? Number.MAX_SAFE_INTEGER : checkInt('options.maxTokens', o.maxTokens, 1, Number.MAX_SAFE_INTEGER);
  const maxBytes = o.maxBytes === undefined ? 2 ** 30 : checkInt('options.maxBytes', o.maxBytes, 1, Number.MAX_SAFE_INTEGER);
  const output = o.output === undefined ? 'auto' : checkOneOf('options.output', o.output, ['auto', 'full', 'top'] as const);
  const top = o.top === undefined ? 5 : checkInt('options.top', o.top, 1, 2 ** 31 - 1);
  const reverse = o.reverse === undefined ? false : checkBool('options.reverse', o.reverse);
  if (o.mask !== undefined && typeof o.mask !== 'function') throw argError('options.mask', 'a function (token) => boolean', o.mask);
  if (o.onProgress !== undefined && typeof o.onProgress !== 'function') throw argError('options.onProgress', 'a function (tokensRead, passes) => void', o.onProgress);
  const onProgress = o.onProgress;
  const signal = checkSignal('options.signal', o.signal);
  const compat = o.compat === undefined ? undefined : checkOneOf('options.compat', o.compat, ['univ-feat-geom'] as const);
  if (a === null || typeof a !== 'object') throw argError('a', 'a side { source, sae? }', a);
  if (b !== undefined && (b === null || typeof b !== 'object')) throw argError('b', 'a side { source?, sae? }', b);
  const srcA = checkSource('a.source', a.source);
  const srcB = b?.source !== undefined && b.source !== srcA ? checkSource('b.source', b.source) : undefined;
  const dA = srcA.dIn;
  const dB = (srcB ?? srcA).dIn;
  const nA = width(a, 'a', kind, dA);
  const nB = width(b ?? {}, 'b', kind, dB);
  for (const [side, s, d] of [['a', a, dA], ['b', b, dB]] as const) {
    if (s?.sae && s.sae.dIn !== d) throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected ${side}.sae.dIn = ${d} (its source's) but it is ${s.sae.dIn}`);
  }
  const entryBytes = kind === 'codes' ? 4 : DENSE_ENTRY_BYTES;
  const fits = nA * nB * entryBytes <= maxBytes;
  if (output === 'full' && !fits) {
    const what = kind === 'codes' ? '' : ` of kind '${kind}' (${DENSE_ENTRY_BYTES} per entry: float64 co-moments, each batch's float32 product and its copy, then the float32 result)`;
    throw new SaekitError('ERR_SAEKIT_MEMORY', `the ${nA} x ${nB} correlation matrix${what} needs ${nA * nB * entryBytes} bytes, over options.maxBytes = ${maxBytes}`);
  }
  const full = output === 'full' || (output === 'auto' && fits);
  if (!full && kind !== 'codes' && nA * DENSE_ENTRY_BYTES > maxBytes) {
    // Top lists take B in column blocks that fit in maxBytes; one column is the smallest block.
    throw new SaekitError(
      'ERR_SAEKIT_MEMORY',
      `the ${nA} x ${nB} correlation of kind '${kind}' reads B in column blocks within options.maxBytes, but one column alone needs nA x ${DENSE_ENTRY_BYTES} = ${nA * DENSE_ENTRY_BYTES} bytes, over options.maxBytes = ${maxBytes}`,
    );
  }
  if (!full) {
    // The top lists are typed arrays of nB x k (and nA x k with reverse) entries: past this
    // runtime's longest typed array (2^32 on Node 20) they could not be made (a bare RangeError).
    const most = Math.max(nB, reverse ? nA : 0);
    if (Math.min(top, nA) * nB > MAX_TYPED_LENGTH || (reverse && Math.min(top, nB) * nA > MAX_TYPED_LENGTH)) {
      throw argError('options.top', `an integer of at most ${Math.floor(MAX_TYPED_LENGTH / most)} (the top lists hold ${most} x top entries, and a typed array at most ${MAX_TYPED_LENGTH})`, top);
    }
  }
  const device = o.device === undefined ? 'cpu' : deviceName(resolveDevice('options.device', o.device));
  signal?.throwIfAborted();
  const result =
    kind === 'codes'
      ? await correlateCodes(a.sae!, b!.sae!, srcA, srcB, { batchSize, maxTokens, mask: o.mask, full, top, reverse, limited: o.maxTokens !== undefined, maxBytes, device, onProgress, signal, compat }, site)
      : await correlateDense(a, b ?? {}, srcA, srcB, kind, nA, nB, { batchSize, maxTokens, mask: o.mask, full, top, reverse, maxBytes, device, onProgress, signal, compat });
  if (compat !== undefined) result.compat = compat;
  return result;
}

/**
 * options.compat 'univ-feat-geom': every r times (N - 1) / N (univ_feat_geom's unbiased std with
 * a product divided by N). Applied where r is made, in float64 before its clamp and float32
 * rounding (the native run's scale, the dense loop's factor), so the top lists rank the values
 * they hold: scaled afterwards, r that were distinct float32 values (1 and 0.99999994) became one
 * (0.9f at N = 10) in the order of the unscaled ones, and a feature that then tied the last entry
 * of a list was missing from it, so match() from top lists and from the full matrix disagreed.
 */
function compatScale(compat: 'univ-feat-geom' | undefined, tokens: number): number {
  return compat === undefined ? 1 : (tokens - 1) / tokens;
}

/** The most tokens a kind 'codes' correlation holds (the native store's 32-bit token count). */
const MAX_CODES_TOKENS = 2 ** 31 - 1;

async function correlateCodes(
  saeA: SparseAutoencoder,
  saeB: SparseAutoencoder,
  srcA: ActivationSource,
  srcB: ActivationSource | undefined,
  o: { batchSize: number; maxTokens: number; mask: CorrelationOptions['mask']; full: boolean; top: number; reverse: boolean; limited: boolean; maxBytes: number; device: Device; onProgress: CorrelationOptions['onProgress']; signal: AbortSignal | undefined; compat: 'univ-feat-geom' | undefined },
  site: Error,
): Promise<CorrelationResult> {
  const nA = saeA.numLatents;
  const nB = saeB.numLatents;
  // The store counts tokens in 32 bits: a run it cannot hold is refused before hours of encoding
  // when the tokens are known (every row of a source of known length, up to maxTokens, without a
  // mask; a masked run learns its count only as it goes, and fails when it reaches the limit).
  const known = o.mask === undefined && srcA.numRows !== undefined ? Math.min(o.maxTokens, srcA.numRows) : undefined;
  if (known !== undefined && known > MAX_CODES_TOKENS) {
    throw argError('options.maxTokens', `at most ${MAX_CODES_TOKENS} for kind 'codes' (its store counts tokens in 32 bits; the source has ${srcA.numRows} rows)`, o.limited ? o.maxTokens : undefined);
  }
  // Pre-allocated for maxTokens, but never for more tokens than the source holds; for a source of
  // unknown length maxTokens is only a bound, so at most ~64 MiB of codes (the store grows past
  // it): 2^24 tokens of k = 1024 reserved 256 GiB for a 1000-token stream, and failed.
  const unknownCap = Math.max(1024, Math.floor(2 ** 23 / (saeA.k + saeB.k)));
  const reserve = o.limited ? Math.min(o.maxTokens, 2 ** 24, srcA.numRows ?? unknownCap) : 0;
  const store = callNative(() => native().sparseCorrCreate(nA, nB, reserve, reserve * saeA.k, reserve * saeB.k));
  let r: NativeSparseCorrResult;
  try {
    const pass = await forEachBatch(srcA, srcB, o.batchSize, o.maxTokens, o.mask, async (xa, xb, rows, token) => {
      // An encode that overflows names the batch's row of x: named here as the token it is.
      const [ca, cb] = await Promise.all([
        atTokens(saeA.encode(xa), token, srcB ? "a's source" : 'the source'),
        atTokens(saeB.encode(xb), token, srcB ? "b's source" : 'the source'),
      ]);
      callNative(() => native().sparseCorrAppend(store, ca.values, ca.indices, cb.values, cb.indices, rows));
    }, o.onProgress && ((seen) => o.onProgress!(seen, 1)), o.signal);
    // The native run below cannot be interrupted: the last look before it.
    o.signal?.throwIfAborted();
    if (pass.n < 2) throw new SaekitError('ERR_SAEKIT_ARG', `Expected at least 2 tokens for a correlation but received ${pass.n}`);
    const scale = o.compat === undefined ? undefined : compatScale(o.compat, pass.n);
    r = await settleNative(callNative(() => native().sparseCorrRun(store, o.full, o.full ? 0 : o.top, o.reverse, o.device, scale, o.maxBytes)), site);
  } finally {
    // The run consumed the store; after a failure its codes (GBs at 10^6 tokens) go now, not at some later GC.
    native().sparseCorrFree(store);
  }
  const common = { nA, nB, tokens: r.tokens, constantA: r.constantA, constantB: r.constantB, activeA: r.activeA, activeB: r.activeB };
  if (o.full) return { mode: 'full', r: r.r!, ...common };
  const out: CorrelationTopMatches = { mode: 'top', top: { k: r.kTop, indices: r.topIndex!, r: r.topR! }, ...common };
  if (o.reverse) out.reverse = { k: r.kRev, indices: r.revIndex!, r: r.revR! };
  return out;
}

async function correlateDense(
  a: CorrelationSide,
  b: CorrelationSide,
  srcA: ActivationSource,
  srcB: ActivationSource | undefined,
  kind: 'preacts' | 'dense',
  nA: number,
  nB: number,
  o: { batchSize: number; maxTokens: number; mask: CorrelationOptions['mask']; full: boolean; top: number; reverse: boolean; maxBytes: number; device: Device; onProgress: CorrelationOptions['onProgress']; signal: AbortSignal | undefined; compat: 'univ-feat-geom' | undefined },
): Promise<CorrelationResult> {
  // Column blocks of B whose co-moments and batch products (nA x w x DENSE_ENTRY_BYTES) fit in
  // maxBytes; one block (the whole matrix) for full output. Whole GEMM tiles where one fits (see
  // GEMM_TILE: then r does not depend on the block width).
  const fit = Math.max(1, Math.min(nB, Math.floor(o.maxBytes / (nA * DENSE_ENTRY_BYTES))));
  const w = o.full ? nB : fit >= GEMM_TILE && fit < nB ? fit - (fit % GEMM_TILE) : fit;
  const kTop = Math.min(o.top, nA);
  const kRev = Math.min(o.top, nB);
  const topB = o.full ? undefined : emptyTop(nB, kTop);
  const topA = o.full || !o.reverse ? undefined : emptyTop(nA, kRev);
  let r: Float32Array | undefined;
  const constantA = new Uint8Array(nA);
  const constantB = new Uint8Array(nB);
  const activeA = new Float64Array(nA);
  const activeB = new Float64Array(nB);
  let tokens = -1;
  const passes = Math.ceil(nB / w);
  let readBefore = 0; // tokens read by earlier passes (progress)
  // One co-moment array for every block: a block's own would live on beside the next one's (the
  // suspended function can keep a reference until it is overwritten).
  const mxyAll = new Float64Array(nA * w);
  for (let j0 = 0; j0 < nB; j0 += w) {
    o.signal?.throwIfAborted(); // between column blocks (passes)
    const j1 = Math.min(nB, j0 + w);
    const wb = j1 - j0;
    const mx = new Float64Array(nA);
    const my = new Float64Array(wb);
    const mxx = new Float64Array(nA);
    const myy = new Float64Array(wb);
    const mxy = mxyAll.subarray(0, nA * wb);
    if (j0 > 0) mxy.fill(0);
    const actA = new Float64Array(nA);
    const actB = new Float64Array(wb);
    let n = 0;
    const pass = await forEachBatch(srcA, srcB, o.batchSize, o.maxTokens, o.mask, async (xa, xb, rows, token) => {
      const fa = kind === 'dense' ? xa : await a.sae!.preActivations(xa);
      let fb = kind === 'dense' ? xb : await b.sae!.preActivations(xb);
      if (wb !== nB) {
        const cut = new Float32Array(rows * wb);
        for (let t = 0; t < rows; t++) {
          cut.set(fb.subarray(t * nB + j0, t * nB + j1), t * wb);
          if (due(wb)) await pause();
        }
        fb = cut;
      }
      await mergeDense(fa, fb, rows, nA, wb, n, mx, my, mxx, myy, mxy, actA, actB, o.device, { kind, j0, token });
      n += rows;
    }, o.onProgress && ((seen) => o.onProgress!(readBefore + seen, passes)), o.signal);
    o.signal?.throwIfAborted(); // after the last batch, before the block's r
    readBefore += pass.seen;
    if (pass.n < 2) throw new SaekitError('ERR_SAEKIT_ARG', `Expected at least 2 tokens for a correlation but received ${pass.n}`);
    if (tokens >= 0 && pass.n !== tokens) {
      throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected every pass over the sources to give the same tokens (${tokens}) but one gave ${pass.n}`);
    }
    tokens = pass.n;
    const sdA = new Float64Array(nA);
    const sdB = new Float64Array(wb);
    for (let i = 0; i < nA; i++) {
      sdA[i] = mxx[i]! > 0 ? Math.sqrt(mxx[i]!) : 0;
      constantA[i] = sdA[i]! > 0 ? 0 : 1;
      activeA[i] = actA[i]!;
    }
    for (let j = 0; j < wb; j++) {
      sdB[j] = myy[j]! > 0 ? Math.sqrt(myy[j]!) : 0;
      constantB[j0 + j] = sdB[j]! > 0 ? 0 : 1;
      activeB[j0 + j] = actB[j]!;
    }
    // r of the block as float32 (the values top matches rank), row by row: straight into the
    // result (made now, after the batch products), or into the top lists. A column's list takes
    // its rows in increasing order, as a row's list takes its columns.
    if (o.full) r = new Float32Array(nA * nB);
    const f = compatScale(o.compat, tokens); // 1 (exact) without compat
    for (let i = 0; i < nA; i++) {
      for (let j = 0; j < wb; j++) {
        const v = constantA[i] || constantB[j0 + j] ? 0 : Math.fround(Math.max(-1, Math.min(1, (mxy[i * wb + j]! / (sdA[i]! * sdB[j]!)) * f)));
        if (r) {
          r[i * nB + j0 + j] = v;
          continue;
        }
        const base = (j0 + j) * kTop;
        if (v > topB!.r[base + kTop - 1]!) topInsert(topB!.r, topB!.indices, base, kTop, v, i);
        if (topA && v > topA.r[i * kRev + kRev - 1]!) topInsert(topA.r, topA.indices, i * kRev, kRev, v, j0 + j);
      }
      if (due(wb)) await pause(o.signal);
    }
  }
  const common = { nA, nB, tokens, constantA, constantB, activeA, activeB };
  if (r) return { mode: 'full', r, ...common };
  const out: CorrelationTopMatches = { mode: 'top', top: topB!, ...common };
  if (topA) out.reverse = topA;
  return out;
}

/**
 * A power of two that puts `m` (a column's largest centred magnitude in the batch, > 0) in [0.5, 2]:
 * the float32 GEMM then neither overflows (products of values over ~1.8e19) nor flushes to zero
 * (products of values under ~1e-22), and dividing it back out in float64 is exact.
 */
function pow2Scale(m: number): number {
  return m > 0 ? 2 ** -Math.round(Math.log2(m)) : 1;
}

/**
 * Chan's merge of one batch into running means (sx, sy), centred moments (sxx, syy, sxy). Each
 * column's centred values are scaled by a power of two (pow2Scale) before the float32 GEMM and the
 * scales come back out exactly in float64, so r does not depend on the values' magnitude (any
 * finite float32). A non-finite feature (kind 'preacts': a pre-activation past float32's range)
 * throws ERR_SAEKIT_NONFINITE. The loops run row by row in slices between turns of the event
 * loop (slices.ts due / pause).
 */
async function mergeDense(
  fa: Float32Array,
  fb: Float32Array,
  rows: number,
  nA: number,
  nB: number,
  n0: number,
  mx: Float64Array,
  my: Float64Array,
  mxx: Float64Array,
  myy: Float64Array,
  mxy: Float64Array,
  activeA: Float64Array,
  activeB: Float64Array,
  device: Device,
  what: { kind: 'preacts' | 'dense'; j0: number; token: (row: number) => number },
): Promise<void> {
  const bmx = new Float64Array(nA);
  const bmy = new Float64Array(nB);
  // Each column's range in the batch (its largest centred magnitude sets its scale).
  const loA = new Float64Array(nA).fill(Infinity);
  const hiA = new Float64Array(nA).fill(-Infinity);
  const loB = new Float64Array(nB).fill(Infinity);
  const hiB = new Float64Array(nB).fill(-Infinity);
  for (let t = 0; t < rows; t++) {
    for (let i = 0; i < nA; i++) {
      const v = fa[t * nA + i]!;
      bmx[i]! += v;
      if (v < loA[i]!) loA[i] = v;
      if (v > hiA[i]!) hiA[i] = v;
    }
    for (let j = 0; j < nB; j++) {
      const v = fb[t * nB + j]!;
      bmy[j]! += v;
      if (v < loB[j]!) loB[j] = v;
      if (v > hiB[j]!) hiB[j] = v;
    }
    if (due(2 * (nA + nB))) await pause();
  }
  // A float64 sum of finite float32 values is finite: a non-finite one means a non-finite value.
  const nonFinite = (side: 'a' | 'b', f: Float32Array, n: number, c: number) => {
    let t = 0;
    while (t < rows - 1 && Number.isFinite(f[t * n + c])) t++;
    const values = what.kind === 'dense' ? 'values' : 'pre-activations';
    const err = new SaekitError('ERR_SAEKIT_NONFINITE', `Expected finite ${values} but feature ${side === 'a' ? c : what.j0 + c} of ${side} is ${f[t * n + c]} at token ${what.token(t)}`);
    (err as { row?: number }).row = what.token(t);
    return err;
  };
  for (let i = 0; i < nA; i++) if (!Number.isFinite(bmx[i])) throw nonFinite('a', fa, nA, i);
  for (let j = 0; j < nB; j++) if (!Number.isFinite(bmy[j])) throw nonFinite('b', fb, nB, j);
  for (let i = 0; i < nA; i++) bmx[i]! /= rows;
  for (let j = 0; j < nB; j++) bmy[j]! /= rows;
  const sa = new Float64Array(nA);
  const sb = new Float64Array(nB);
  for (let i = 0; i < nA; i++) sa[i] = pow2Scale(Math.max(hiA[i]! - bmx[i]!, bmx[i]! - loA[i]!));
  for (let j = 0; j < nB; j++) sb[j] = pow2Scale(Math.max(hiB[j]! - bmy[j]!, bmy[j]! - loB[j]!));
  // B's centred values tile by tile: tile c0 (columns [c0, c0 + tw)) is the contiguous
  // [rows, tw] block at rows x c0, the GEMM's operand as it is (see GEMM_TILE). Their sums of
  // squares are taken as they go, of the stored float32 values (squared in float64).
  const ca = new Float32Array(rows * nA);
  const cb = new Float32Array(rows * nB);
  const bxx = new Float64Array(nA);
  const byy = new Float64Array(nB);
  for (let t = 0; t < rows; t++) {
    for (let i = 0; i < nA; i++) {
      ca[t * nA + i] = (fa[t * nA + i]! - bmx[i]!) * sa[i]!;
      bxx[i]! += ca[t * nA + i]! ** 2;
      if (fa[t * nA + i] !== 0) activeA[i]! += 1;
    }
    for (let c0 = 0; c0 < nB; c0 += GEMM_TILE) {
      const c1 = Math.min(nB, c0 + GEMM_TILE);
      const at = rows * c0 + t * (c1 - c0) - c0; // cb[at + j] holds column j of row t
      for (let j = c0; j < c1; j++) {
        cb[at + j] = (fb[t * nB + j]! - bmy[j]!) * sb[j]!;
        byy[j]! += cb[at + j]! ** 2;
        if (fb[t * nB + j] !== 0) activeB[j]! += 1;
      }
    }
    if (due(3 * (nA + nB))) await pause();
  }
  for (let i = 0; i < nA; i++) bxx[i]! /= sa[i]! * sa[i]!;
  for (let j = 0; j < nB; j++) byy[j]! /= sb[j]! * sb[j]!;
  const n1 = n0 + rows;
  const w = (n0 * rows) / n1;
  // The batch's scaled centred co-moment: a float32 GEMM per tile, each merged at once (one tile's
  // product held at a time).
  using ta = tensor(ca, [rows, nA], { device });
  if (due(rows * nA)) await pause(); // a copy of tens of MiB (into fresh pages) takes tens of ms
  for (let c0 = 0; c0 < nB; c0 += GEMM_TILE) {
    const tw = Math.min(GEMM_TILE, nB - c0);
    using tb = tensor(cb.subarray(rows * c0, rows * (c0 + tw)), [rows, tw], { device });
    using cxy = await matmul(ta, tb, { transA: true });
    const part = await cxy.toArray();
    cxy.dispose(); // the product is held once (the copy) while it is merged
    for (let i = 0; i < nA; i++) {
      const dx = bmx[i]! - mx[i]!;
      const row = i * nB + c0;
      for (let j = 0; j < tw; j++) mxy[row + j]! += part[i * tw + j]! / (sa[i]! * sb[c0 + j]!) + w * dx * (bmy[c0 + j]! - my[c0 + j]!);
      if (due(tw)) await pause();
    }
  }
  for (let i = 0; i < nA; i++) {
    const dx = bmx[i]! - mx[i]!;
    mxx[i]! += bxx[i]! + w * dx * dx;
    mx[i]! += (dx * rows) / n1;
  }
  for (let j = 0; j < nB; j++) {
    const dy = bmy[j]! - my[j]!;
    myy[j]! += byy[j]! + w * dy * dy;
    my[j]! += (dy * rows) / n1;
  }
}
