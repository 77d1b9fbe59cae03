/**
 * Offline SAE evaluation over an activation source: reconstruction, sparsity, density and
 * dictionary geometry, with the SAELens 6.4x / SAEBench field names (reference: docs/references.md §5.1,
 * §5.2; sae-libraries.md §3.4, §5.2).
 *
 * The source is read once, in file order, up to `maxTokens` rows (the last batch is cut). Every
 * statistic is a float64 sum over tokens accumulated row by row in token order, so for the same
 * reconstructions the results do not depend on the batch size, except fvu's denominator (merged
 * per batch: equal to float64 rounding) and the labelled per-batch variants. The reconstructions
 * themselves can change in the last bit with the batch size under OpenBLAS, which picks kernels
 * by shape (SAEKIT_BLAS=builtin makes the encoding batch-invariant). The next batch is read, and the next forward pass queued, while the previous batch's
 * statistics are summed.
 *
 * Definitions (x a token's activation, x_hat its reconstruction, f its codes, N tokens):
 * - `mse = (1/N) sum_t ||x - x_hat||^2` (SAELens 6.4x `mse`).
 * - `fvu = sum_t ||x - x_hat||^2 / sum_t ||x - mean_t x||^2` with the mean over all N tokens;
 *   `explained_variance = 1 - fvu` (SAELens 6.4x ExplainedVarianceCalculator, our convention of
 *   docs/references.md §5.1). The denominator is summed per dimension with Chan et al.'s pairwise merge
 *   of per-batch (mean, centred sum of squares) in float64, so a large mean does not cancel.
 * - `cossim = (1/N) sum_t <x, x_hat> / (||x|| ||x_hat||)` (0 where either norm is 0);
 *   `l2_ratio = (1/N) sum_t ||x_hat|| / max'(||x||)`, where a row with `||x|| < 1e-4` (a zeroed
 *   padding row) is divided by 1 instead, as SAELens's evals do (`l2_norm_in_for_div`);
 *   `relative_reconstruction_bias = sum_t ||x_hat||^2 / sum_t <x, x_hat>` (Gated SAE eq. 10).
 * - `l0 = (1/N) sum_t #{i : f_i != 0}`, `l1 = (1/N) sum_t sum_i |f_i|` (SAELens 6.4x).
 * - `feature_density[i]` = fraction of tokens with `f_i != 0` (codes are >= 0, so this is SAEBench's
 *   `> 0`); `dead_fraction` = fraction of latents with density 0 (1 - SAEBench `frac_alive`);
 *   `dense_fraction_1pct` / `dense_fraction_10pct` = fraction with density > 0.01 / > 0.1
 *   (SAEBench `freq_over_1_percent` / `freq_over_10_percent`).
 * - `log10_density_histogram`: counts of log10(density) over the latents that fired, in
 *   `histogramBins` (default 50) equal bins spanning [lo, 0] with `lo = -max(1, ceil(log10 N))`
 *   (the smallest possible nonzero density is 1/N >= 10^lo); bins are [e_b, e_{b+1}) except the
 *   last, which also holds 0 (density 1). `edges` has bins + 1 entries.
 * - Geometry (`geometry`, default true): per latent, the maximum cosine to any other latent of its
 *   encoder vector (column of W_enc) and its decoder vector (row of W_dec), by maxCosine() in
 *   float32 GEMM chunks (error <= (dIn + 2) 2^-24 per cosine, see geometry.ts), and their means
 *   (SAEBench `max_*_cosine_sim`, `average_max_*_cosine_sim`).
 * - `compat` (opt-in), labelled variants that differ from the above on purpose:
 *   - `explained_variance_legacy`: SAELens `explained_variance_legacy`, the mean over tokens of
 *     `1 - ||x - x_hat||^2 / ||x - mean_batch x||^2`, with the mean over the token's own batch of
 *     `batchSize` rows (the cut last batch uses its own rows; a cut batch of one row, which has
 *     no spread about its own mean, is left out, as SAELens only sees whole batches). It depends
 *     on the batch size by definition. SAEBench's paper numbers used it.
 *   - `explained_variance_saebench`: SAEBench core (v0.6.0) and SAELens <= 6.18,
 *     `1 - mean_t ||x - x_hat||^2 / (mean_t ||x||^2 - (mean_{t,d} x_d^2)^2)`: the subtracted term is
 *     the square of the mean squared entry, not ||E x||^2 (SAELens issue #659). Upstream averages
 *     the per-batch means of x^2; here it is the mean over all tokens, the same when batches are equal.
 *   - `fvu_sparsify`: sparsify's training loss, the mean over batches of the batch's
 *     `sum ||x - x_hat||^2 / sum ||x - mean_batch x||^2`.
 *   - `frac_variance_explained_dictionary_learning`: dictionary_learning's `evaluation.py`, the
 *     mean over batches of `1 - sum_d Var_batch(x_d - x_hat_d) / sum_d Var_batch(x_d)`: the
 *     residual is centred, so a constant offset in x_hat is not penalised.
 *   - `l2_loss_dictionary_learning`: dictionary_learning's `l2_loss`, the mean over tokens of
 *     `||x - x_hat||` (not squared).
 *   The per-batch variants use batches of `batchSize` rows (the cut last batch its own rows, each
 *   batch counting once; a batch of one row, without spread, is left out) and so depend on the
 *   batch size by definition. As upstream, they divide by the batch's spread without a guard:
 *   a batch of several identical rows (no spread) makes `explained_variance_legacy` -Infinity
 *   and `fvu_sparsify` Infinity (both NaN when the reconstruction is exact), and
 *   `frac_variance_explained_dictionary_learning` NaN: its residual is centred, and identical
 *   rows' residuals have no spread either (0/0; -Infinity should their reconstructions differ in
 *   the last bit). `fvu` and `explained_variance` are NaN only for data with no spread at all.
 *   Likewise `relative_reconstruction_bias` is Infinity when sum_t <x, x_hat> is 0 and some x_hat
 *   is not 0, and NaN when x_hat is 0 on every token (0/0).
 *   - `mse_saebench` is not reported: upstream divides each token's squared error by the token
 *     count of its model batch (prompts x context), which has no counterpart here; it equals
 *     `mse / tokensPerBatch`.
 */
import { argError, atTokens, SaekitError } from '../errors.js';
import { BATCH_ARRAYS, RELEASE_BATCH, type ReleasableBatch } from '../data/engine.js';
import { batchRows } from '../data/options.js';
import type { ActivationSource, Batch } from '../data/types.js';
import type { SparseAutoencoder, SparseCodes } from '../sae/index.js';
import { checkBool, checkInt, checkOptions, checkSignal, optionNames } from '../validate.js';
import { transposeSteps } from '../io/common.js';
import { due, pause, runSliced } from '../slices.js';
import { maxCosine } from './geometry.js';

export { maxCosine } from './geometry.js';
export type { MaxCosineOptions } from './geometry.js';

/** Options of evaluate(): how many tokens, the batch size, and which optional parts to compute. */
export interface EvaluateOptions {
  /** Tokens (rows) to read at most; Infinity reads the whole source. Default 1,000,000. */
  maxTokens?: number;
  /** Rows per forward pass. Default 4096 (fewer for rows wider than 65536 values: a batch is at most 2^28 values). */
  batchSize?: number;
  /** Also report the labelled legacy / SAEBench variants (`compat`). Default false. */
  compat?: boolean;
  /** Compute the encoder and decoder max-cosine geometry. Default true. */
  geometry?: boolean;
  /**
   * Bins of log10_density_histogram: equal bins over [-max(1, ceil(log10 tokens)), 0], each
   * [lo, hi) except the last, which includes 0. Default 50.
   */
  histogramBins?: number;
  /** Called after each batch is accumulated, with the tokens evaluated so far (for progress output). */
  onProgress?: (tokens: number) => void;
  /**
   * Stops the evaluation: between batches and between the geometry's blocks (which run after the
   * last batch: minutes at 65536 latents). The Promise then rejects with `signal.reason` (an
   * AbortError by default), as Node's own APIs do, and the source's pass is ended.
   */
  signal?: AbortSignal;
}

/** The labelled legacy / SAEBench variants evaluate() adds with `compat: true` (see the module comment). */
export interface EvaluateCompat {
  /** SAELens legacy: mean over tokens of 1 - ||x - x_hat||^2 / ||x - mean_batch x||^2 (per batchSize batch). */
  explained_variance_legacy: number;
  /** SAEBench core v0.6.0 / SAELens <= 6.18: 1 - E||x - x_hat||^2 / (E||x||^2 - (E_{t,d} x^2)^2). */
  explained_variance_saebench: number;
  /** sparsify's loss: mean over batches of sum ||x - x_hat||^2 / sum ||x - mean_batch x||^2. */
  fvu_sparsify: number;
  /** dictionary_learning: mean over batches of 1 - sum_d Var(x_d - x_hat_d) / sum_d Var(x_d) (centred residual). */
  frac_variance_explained_dictionary_learning: number;
  /** dictionary_learning: mean over tokens of ||x - x_hat|| (not squared). */
  l2_loss_dictionary_learning: number;
  /** Not reported (see the module header); kept for the type's shape. */
  mse_saebench?: number;
}

/**
 * What evaluate() returns, with SAELens / SAEBench field names; every statistic is defined in the
 * module comment (N tokens, x a token's activation, x_hat its reconstruction, f its codes).
 */
export interface EvaluateResult {
  /** Tokens evaluated. */
  tokens: number;
  /** Mean over tokens of ||x - x_hat||^2. */
  mse: number;
  /**
   * Fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean x||^2 (mean over all
   * tokens). NaN when the inputs have no spread (constant rows, one token).
   */
  fvu: number;
  /** 1 - fvu. */
  explained_variance: number;
  /** Mean over tokens of cos(x, x_hat) (0 where either norm is 0). */
  cossim: number;
  /** Mean over tokens of ||x_hat|| / ||x|| (rows with ||x|| < 1e-4 divided by 1, as SAELens). */
  l2_ratio: number;
  /** sum ||x_hat||^2 / sum <x, x_hat> (Gated SAE eq. 10). */
  relative_reconstruction_bias: number;
  /** Mean number of nonzero codes per token. */
  l0: number;
  /** Mean sum of |codes| per token. */
  l1: number;
  /** [numLatents] fraction of tokens where each latent is nonzero. */
  feature_density: Float64Array;
  /** Fraction of latents that never fired (1 - SAEBench frac_alive). */
  dead_fraction: number;
  /** Fraction of latents with density > 0.01. */
  dense_fraction_1pct: number;
  /** Fraction of latents with density > 0.1. */
  dense_fraction_10pct: number;
  /** Counts of log10(density) of the latents that fired, in histogramBins equal bins; `edges` has bins + 1 entries. */
  log10_density_histogram: { edges: number[]; counts: number[] };
  /** [numLatents] each encoder vector's maximum cosine to any other (with `geometry`, the default). */
  max_cos_enc?: Float64Array;
  /** [numLatents] each decoder row's maximum cosine to any other (with `geometry`). */
  max_cos_dec?: Float64Array;
  /** Mean of max_cos_enc. */
  mean_max_cos_enc?: number;
  /** Mean of max_cos_dec. */
  mean_max_cos_dec?: number;
  /** The labelled variants, with `compat: true`. */
  compat?: EvaluateCompat;
}

const DEFAULT_MAX_TOKENS = 1_000_000;
const DEFAULT_BINS = 50;
const EVALUATE_OPTIONS = optionNames<EvaluateOptions>({ maxTokens: true, batchSize: true, compat: true, geometry: true, histogramBins: true, onProgress: true, signal: true });
/** Rows of x with a smaller norm are divided by 1 in l2_ratio (SAELens's evals). */
const L2_RATIO_MIN_NORM = 1e-4;

/** Float64 running sums over tokens. */
class Accumulator {
  tokens = 0;
  sse = 0;
  cos = 0;
  l2ratio = 0;
  xhat2 = 0;
  dot = 0;
  x2 = 0;
  l0 = 0;
  l1 = 0;
  legacy = 0;
  /** Tokens in the legacy average (batches of at least two rows). */
  legacyTokens = 0;
  /** Sums over batches of at least two rows (compat): sparsify's FVU, dictionary_learning's FVE. */
  fvuSparsify = 0;
  fveDictionary = 0;
  compatBatches = 0;
  /** Sum over tokens of ||x - x_hat|| (compat). */
  l2 = 0;
  /** Per dimension: running mean and centred sum of squares (Chan et al. merge). */
  readonly mean: Float64Array;
  readonly m2: Float64Array;
  readonly fired: Float64Array;
  private readonly bMean: Float64Array;
  private readonly bM2: Float64Array;
  /** Per dimension: the batch mean of the residual x - x_hat (compat). */
  private readonly eMean: Float64Array;

  constructor(
    readonly dIn: number,
    numLatents: number,
    readonly compat: boolean,
  ) {
    this.mean = new Float64Array(dIn);
    this.m2 = new Float64Array(dIn);
    this.fired = new Float64Array(numLatents);
    this.bMean = new Float64Array(dIn);
    this.bM2 = new Float64Array(dIn);
    this.eMean = new Float64Array(compat ? dIn : 0);
  }

  add(x: Float32Array, rows: number, recon: Float32Array, codes: SparseCodes): void {
    const d = this.dIn;
    const bMean = this.bMean;
    const bM2 = this.bM2;
    // Batch mean and centred sum of squares per dimension (two passes, float64).
    bMean.fill(0);
    bM2.fill(0);
    for (let r = 0; r < rows; r++) {
      const o = r * d;
      for (let j = 0; j < d; j++) bMean[j]! += x[o + j]!;
    }
    for (let j = 0; j < d; j++) bMean[j]! /= rows;
    for (let r = 0; r < rows; r++) {
      const o = r * d;
      for (let j = 0; j < d; j++) {
        const c = x[o + j]! - bMean[j]!;
        bM2[j]! += c * c;
      }
    }
    // Chan merge into the running totals.
    const na = this.tokens;
    const n = na + rows;
    for (let j = 0; j < d; j++) {
      const delta = bMean[j]! - this.mean[j]!;
      this.mean[j]! += (delta * rows) / n;
      this.m2[j]! += bM2[j]! + ((delta * delta * na) / n) * rows;
    }
    // Per-token terms, summed in token order (independent of the batch split).
    let batchSse = 0;
    for (let r = 0; r < rows; r++) {
      const o = r * d;
      let sse = 0;
      let nx = 0;
      let nh = 0;
      let dot = 0;
      let cen = 0;
      for (let j = 0; j < d; j++) {
        const a = x[o + j]!;
        const b = recon[o + j]!;
        const e = a - b;
        sse += e * e;
        nx += a * a;
        nh += b * b;
        dot += a * b;
        if (this.compat) {
          const c = a - bMean[j]!;
          cen += c * c;
        }
      }
      this.sse += sse;
      this.x2 += nx;
      this.xhat2 += nh;
      this.dot += dot;
      // A zero vector has cosine 0 by convention; a NaN stays NaN (as in every other metric).
      this.cos += nx === 0 || nh === 0 ? 0 : dot / Math.sqrt(nx * nh);
      const norm = Math.sqrt(nx);
      this.l2ratio += Math.sqrt(nh) / (norm < L2_RATIO_MIN_NORM ? 1 : norm);
      // A one-row batch (a cut last batch) has no spread about its own mean: left out, as
      // SAELens only ever sees whole batches.
      if (this.compat) {
        this.l2 += Math.sqrt(sse);
        if (rows > 1) this.legacy += 1 - sse / cen;
      }
      batchSse += sse;
    }
    if (this.compat && rows > 1) {
      this.legacyTokens += rows;
      this.compatBatch(x, rows, recon, batchSse);
    }
    const { values, indices, k } = codes;
    const fired = this.fired;
    // Each row's L1 goes straight into the total, as every per-token sum does, so the total
    // does not depend on the batch split (a per-batch partial sum rounded differently). The L0
    // counts are integers: exact in any order.
    let l0 = 0;
    for (let r = 0; r < rows; r++) {
      let rl1 = 0;
      for (let p = r * k; p < (r + 1) * k; p++) {
        const v = values[p]!;
        if (v !== 0) {
          l0++;
          rl1 += Math.abs(v);
          fired[indices[p]!]!++;
        }
      }
      this.l1 += rl1;
    }
    this.l0 += l0;
    this.tokens = n;
  }

  /** The per-batch compat terms of a batch of at least two rows with squared error `sse`. */
  private compatBatch(x: Float32Array, rows: number, recon: Float32Array, sse: number): void {
    const d = this.dIn;
    let cen = 0;
    for (let j = 0; j < d; j++) cen += this.bM2[j]!;
    // The residual's centred sum of squares, in two passes (float64).
    const eMean = this.eMean;
    eMean.fill(0);
    for (let r = 0; r < rows; r++) {
      const o = r * d;
      for (let j = 0; j < d; j++) eMean[j]! += x[o + j]! - recon[o + j]!;
    }
    for (let j = 0; j < d; j++) eMean[j]! /= rows;
    let eCen = 0;
    for (let r = 0; r < rows; r++) {
      const o = r * d;
      for (let j = 0; j < d; j++) {
        const c = x[o + j]! - recon[o + j]! - eMean[j]!;
        eCen += c * c;
      }
    }
    this.fvuSparsify += sse / cen;
    this.fveDictionary += 1 - eCen / cen;
    this.compatBatches++;
  }
}

function histogram(density: Float64Array, tokens: number, bins: number): { edges: number[]; counts: number[] } {
  const lo = -Math.max(1, Math.ceil(Math.log10(tokens) - 1e-12));
  const width = -lo / bins;
  // lo (bins - b) / bins: one rounding of an exact integer ratio, so an edge such as -3.28 prints
  // as -3.28 in JSON (lo + b width printed -3.2800000000000002).
  const edges = Array.from({ length: bins + 1 }, (_, b) => (b === bins ? 0 : (lo * (bins - b)) / bins));
  const counts = new Array<number>(bins).fill(0);
  for (const p of density) {
    if (p <= 0) continue;
    const v = Math.log10(p);
    let b = Math.floor((v - lo) / width);
    if (b >= bins) b = bins - 1;
    if (b < 0) b = 0;
    // Floating-point guard: keep v inside [edges[b], edges[b+1]).
    while (b > 0 && v < edges[b]!) b--;
    while (b < bins - 1 && v >= edges[b + 1]!) b++;
    counts[b]!++;
  }
  return { edges, counts };
}

function mean(a: Float64Array): number {
  let s = 0;
  for (const v of a) s += v;
  return s / a.length;
}

/**
 * Evaluates `sae` on up to `maxTokens` rows of `source` (one pass, file order). See the module
 * header for every definition and its reference.
 * @example const r = await evaluate(sae, await openActivations('acts/*.safetensors'), { maxTokens: 2e6 });
 */
export async function evaluate(sae: SparseAutoencoder, source: ActivationSource, options?: EvaluateOptions): Promise<EvaluateResult> {
  if (sae === null || typeof sae !== 'object' || typeof (sae as { forward?: unknown }).forward !== 'function') {
    throw argError('sae', 'a SparseAutoencoder', sae);
  }
  if (source === null || typeof source !== 'object' || typeof (source as { batches?: unknown }).batches !== 'function') {
    throw argError('source', 'an ActivationSource', source);
  }
  const o = checkOptions('options', options, EVALUATE_OPTIONS);
  const maxTokens =
    o.maxTokens === undefined ? DEFAULT_MAX_TOKENS : o.maxTokens === Infinity ? Infinity : checkInt('options.maxTokens', o.maxTokens, 1, Number.MAX_SAFE_INTEGER);
  const batchSize = batchRows('options.batchSize', o.batchSize, sae.dIn, 1 << 24);
  const compat = o.compat === undefined ? false : checkBool('options.compat', o.compat);
  const geometry = o.geometry === undefined ? true : checkBool('options.geometry', o.geometry);
  const bins = o.histogramBins === undefined ? DEFAULT_BINS : checkInt('options.histogramBins', o.histogramBins, 1, 100_000);
  if (o.onProgress !== undefined && typeof o.onProgress !== 'function') throw argError('options.onProgress', 'a function (tokens) => void', o.onProgress);
  const onProgress = o.onProgress;
  const signal = checkSignal('options.signal', o.signal);
  signal?.throwIfAborted();
  const dIn = sae.dIn;
  const L = sae.numLatents;
  if (source.dIn !== dIn) {
    throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected a source of dIn = ${dIn} (the SAE's) but received dIn = ${String(source.dIn)}`);
  }

  const acc = new Accumulator(dIn, L, compat);
  type Pass = { x: Float32Array; rows: number; fwd: Promise<{ codes: SparseCodes; recon: Float32Array }>; release: () => void };
  // Recycled batch arrays, each handed back (RELEASE_BATCH) once its pass is accumulated: the next
  // batch is read while the forward pass runs, so a batch outlives the next next(). A source that
  // does not hand batches out that way has its batches copied instead.
  const batchOptions = { batchSize, shuffle: false, epochs: 1, dropLast: false, recycle: true, [BATCH_ARRAYS]: {} };
  const it = source.batches(batchOptions)[Symbol.asyncIterator]();
  let nextBatch: Promise<IteratorResult<Batch>> | null = it.next();
  let prev: Pass | null = null;
  let read = 0;
  const finish = async (p: Pass) => {
    try {
      const r = await p.fwd;
      acc.add(p.x, p.rows, r.recon, r.codes);
      onProgress?.(acc.tokens);
    } finally {
      p.release();
    }
  };
  try {
    while (nextBatch !== null) {
      const res: IteratorResult<Batch> = await nextBatch;
      nextBatch = null;
      signal?.throwIfAborted();
      if (res.done) break;
      const batch = res.value;
      if (batch.dIn !== dIn) {
        throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected batches of dIn = ${dIn} but the source yielded dIn = ${batch.dIn}`);
      }
      const rows = Math.min(batch.rows, maxTokens - read);
      const release = (batch as ReleasableBatch)[RELEASE_BATCH];
      if (rows > 0) {
        const own = rows < batch.rows ? batch.data.subarray(0, rows * dIn) : batch.data;
        const x = release ? own : own.slice();
        // An encode that overflows names the batch's row of x: named here as the source's token.
        const first = read;
        const fwd = atTokens(sae.forward(x), (r) => first + r, 'the source');
        fwd.catch(() => {}); // awaited below; avoids an unhandled rejection if an earlier step throws
        read += rows;
        // Read ahead while the forward pass runs (a read that fails meanwhile is awaited below,
        // not an unhandled rejection).
        if (read < maxTokens) {
          nextBatch = it.next();
          nextBatch.catch(() => undefined);
        }
        const done = prev;
        prev = { x, rows, fwd, release: release ?? (() => undefined) };
        if (done !== null) await finish(done);
      } else if (batch.rows === 0) {
        // An empty batch (a custom source may yield one) is skipped, not the end of the data.
        release?.();
        nextBatch = it.next();
        nextBatch.catch(() => undefined);
      } else {
        release?.();
        break;
      }
    }
    if (prev !== null) {
      const p = prev;
      prev = null;
      await finish(p);
    }
    signal?.throwIfAborted();
  } finally {
    if (prev !== null) {
      await prev.fwd.catch(() => {});
      prev.release();
    }
    if (nextBatch !== null) await nextBatch.catch(() => {});
    await it.return?.();
  }
  const N = acc.tokens;
  if (N === 0) throw new SaekitError('ERR_SAEKIT_ARG', 'Expected a source with at least one row but it yielded none');

  let sst = 0;
  for (let j = 0; j < dIn; j++) sst += acc.m2[j]!;
  // Inputs without spread (constant rows, a single token) leave FVU undefined: NaN, not Infinity.
  const fvu = sst > 0 ? acc.sse / sst : NaN;
  const density = new Float64Array(L);
  let dead = 0;
  let over1 = 0;
  let over10 = 0;
  for (let i = 0; i < L; i++) {
    const p = acc.fired[i]! / N;
    density[i] = p;
    if (p === 0) dead++;
    if (p > 0.01) over1++;
    if (p > 0.1) over10++;
  }
  const result: EvaluateResult = {
    tokens: N,
    mse: acc.sse / N,
    fvu,
    explained_variance: 1 - fvu,
    cossim: acc.cos / N,
    l2_ratio: acc.l2ratio / N,
    relative_reconstruction_bias: acc.xhat2 / acc.dot,
    l0: acc.l0 / N,
    l1: acc.l1 / N,
    feature_density: density,
    dead_fraction: dead / L,
    dense_fraction_1pct: over1 / L,
    dense_fraction_10pct: over10 / L,
    log10_density_histogram: histogram(density, N, bins),
  };
  if (geometry) {
    const w = await sae.weights();
    const enc = await maxCosine(await runSliced(transposeSteps(w.W_enc, dIn, L)), L, dIn, signal ? { signal } : undefined);
    const dec = await maxCosine(w.W_dec, L, dIn, signal ? { signal } : undefined);
    result.max_cos_enc = enc;
    result.max_cos_dec = dec;
    result.mean_max_cos_enc = mean(enc);
    result.mean_max_cos_dec = mean(dec);
  }
  if (compat) {
    const meanX2 = acc.x2 / N / dIn; // mean over tokens and dimensions of x_d^2
    result.compat = {
      explained_variance_legacy: acc.legacyTokens > 0 ? acc.legacy / acc.legacyTokens : NaN,
      explained_variance_saebench: 1 - acc.sse / N / (acc.x2 / N - meanX2 * meanX2),
      fvu_sparsify: acc.compatBatches > 0 ? acc.fvuSparsify / acc.compatBatches : NaN,
      frac_variance_explained_dictionary_learning: acc.compatBatches > 0 ? acc.fveDictionary / acc.compatBatches : NaN,
      l2_loss_dictionary_learning: acc.l2 / N,
    };
  }
  return result;
}
