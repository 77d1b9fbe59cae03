/**
 * Synthetic superposition data with known ground truth (docs/references.md §4.2–§4.5).
 *
 * Each row independently fires feature i with probability p_i (optionally with correlated firing
 * through a per-row Gaussian copula, §4.5), draws a magnitude c_i for every fired feature, and is
 * x = sum_i c_i f_i over the fired features, where the f_i are random unit vectors in R^dIn
 * (numFeatures may exceed dIn: that is the superposition).
 *
 * ## Stream layout (deterministic from the seed, independent of batch size)
 * Every random quantity comes from a small xoshiro128** generator whose 128-bit state is one
 * Philox 4x32-10 block (docs/random.md) keyed by the seed:
 * ```
 * state(purpose, index) = philox4x32_10(counter = (index mod 2^32, index div 2^32, purpose, 0x53594e54), key = seed)
 * ```
 * i.e. the Philox block `index` of `(seed, stream = 0x53594e54 * 2^32 + purpose)`. Purposes:
 * 1 = feature vector `index`, 2 = copula factor loadings of feature `index`, 3 = data row `index`,
 * 4 = shuffle of epoch `index` (under the batches() seed), 5 = normalSamples (tests), 6 = the
 * 'random' firing probabilities (index 0: p_i = minP + (maxP - minP) w_i 2^-32, w_i the i-th
 * word). So row r is a pure function of (options, seed, r).
 *
 * Within a row the draws are, in order: the firing decisions (uncorrelated: the runs below over
 * the features in decreasing order of p_i, ties by index, which is increasing index for the
 * non-increasing kinds zipf, linear, uniform and expected-active; copula: the factor normals g, then per feature its own normal e_i, or all
 * of e for an explicit Sigma); then one magnitude per fired feature, in increasing index (a
 * relu-normal magnitude of 0 leaves its feature inactive, not in the codes); with a hierarchy,
 * then one word per exclusive node where two or more of its children are active (nodes in
 * pre-order, the kept child floor(w * 2^-32 * m)-th of the m active in listed order).
 * Uniforms are `w * 2^-32` (firing tests), `(w + 0.5) * 2^-32` rounded to float32, i.e. U(0, 1]
 * (magnitudes), or 53-bit `((w1 >>> 5) * 2^26 + (w2 >>> 6)) * 2^-53` (geometric skips); normals
 * use a 128-layer ziggurat (Marsaglia and Tsang 2000): layer `w & 127`, abscissa
 * `((w >> 7) + 0.5) * 2^-24 * x[layer]` from the same word, wedge and tail tests drawing further
 * `(w + 0.5) * 2^-32` uniforms. Each coordinate of a row is accumulated in float64 over the fired
 * features in increasing index, from the float32 features and float32-rounded magnitudes, and
 * rounded once to float32: `codes()` returns exactly those magnitudes, so the rows can be
 * recomputed bit for bit.
 *
 * Uncorrelated firing is sampled in O(active + log-range) per row: features, in decreasing order
 * of p_i, are grouped into runs whose probabilities lie within a factor 2 of the run's first
 * (largest) value; within a run
 * candidate positions are drawn by geometric skipping at the run's largest probability and each
 * candidate is kept with probability p_i / p_max (thinning), which is exactly independent
 * Bernoulli(p_i) firing. Probabilities above 1/4 are tested directly.
 *
 * With `shuffle`, epoch e serves the rows in a permutation of [0, numRows) drawn from the
 * xoshiro128** generator whose state is state(4, e) under the batches() seed. Up to 2^16 rows it
 * is a Fisher-Yates shuffle (exactly uniform): for i = numRows - 1 down to 1, swap entries i and
 * j, j uniform in [0, i] by Lemire's multiply-shift with rejection (j = floor(w (i + 1) 2^-32),
 * w redrawn while (w (i + 1)) mod 2^32 < 2^32 mod (i + 1)); position t serves row table[t].
 * Above 2^16 rows (no table) it is a 6-round balanced Feistel network on
 * 2 * ceil(log2(numRows) / 2) bits with cycle walking, its round keys the generator's first six
 * outputs. (Before, the Feistel network served every size; for a few rows it is far from
 * uniform, so the order of small shuffled sources changed.) Every row is served once per epoch,
 * in an order that does not depend on batchSize.
 *
 * Hierarchies (options.hierarchy, SAELens's HierarchyNode semantics) switch active features
 * (fired, with a magnitude > 0) off top-down: a feature whose parent node is inactive, and all
 * but one of an exclusive node's active children. `probabilities` stay the per-feature p_i
 * before that.
 *
 * The quirky compat generators of §4.3 (Sharkey et al.: p_i without renormalisation, one
 * correlation draw per generation batch) and §4.4 (MFR: one support per group per generation
 * batch) are synthetic-compat.ts (synthetic.sharkey, synthetic.mfr); they share this module's
 * generator (Rng, under their own stream tags), row-range checks, codes and source.
 */
import { argError, SaekitError } from '../errors.js';
import { due, pause } from '../slices.js';
import { checkBool, checkInt, checkOneOf, checkOptions, checkSeed, optionNames } from '../validate.js';
import { resolveBatchOptions } from './options.js';
import type { Batch, BatchOptions, OwnedActivationSource } from './types.js';

/** Option names (checkOptions refuses others: a misspelling is an error, not ignored). */
const SUPERPOSITION_OPTIONS = optionNames<SuperpositionOptions>({ dIn: true, numFeatures: true, firing: true, magnitude: true, correlation: true, hierarchy: true, numRows: true, seed: true });
const HIERARCHY_NODE_OPTIONS = optionNames<HierarchyNode>({ feature: true, children: true, exclusiveChildren: true });

// ---------------------------------------------------------------------------------------------
// Options and results.

/**
 * Firing probabilities p_i, one per feature (SAELens' firing_probabilities.py, §4.5):
 * - 'zipf' (default scale 'rescale', SAELens' zipfian): the ranks' weights (i + 1)^-exponent
 *   rescaled linearly onto [minP, maxP]: p_i = minP + (maxP - minP) * ((i + 1)^-e - n^-e) / (1 - n^-e),
 *   so feature 0 has maxP and feature n - 1 minP (one feature: maxP). Defaults as SAELens:
 *   exponent 1, maxP 0.3, minP 0.01 (min(0.01, maxP) when only maxP is given); exponent > 0.
 *   scale 'clip' (compat: saekit 0.x's zipf, to reproduce earlier results): p_i =
 *   max(minP, maxP * (i + 1)^-exponent), minP default 0, exponent >= 0.
 * - 'linear' (SAELens' linear): maxP down to minP in equal steps (the law of
 *   torch.linspace(maxP, minP, n), in float64); defaults 0.3 and 0.01.
 * Unlike SAELens, which raises on them, minP = 0 and minP = maxP (a constant) are accepted.
 * - 'random' (SAELens' random): p_i = minP + (maxP - minP) * u_i, u_i uniform in [0, 1) drawn
 *   from the seed (stream purpose 6); defaults 0.5 and 0.01.
 * - 'uniform': p_i = p (SAELens' constant); 'expected-active': p_i = n / numFeatures (n features
 *   fire per row on average); 'probabilities': p_i = p[i] as given (length numFeatures, each in [0, 1]).
 */
export type Firing =
  | { kind: 'zipf'; exponent?: number; maxP?: number; minP?: number; scale?: 'rescale' | 'clip' }
  | { kind: 'linear'; maxP?: number; minP?: number }
  | { kind: 'random'; maxP?: number; minP?: number }
  | { kind: 'uniform'; p: number }
  | { kind: 'expected-active'; n: number }
  | { kind: 'probabilities'; p: ArrayLike<number> };

/** Magnitude of a fired feature: U(0, 1] (Toy Models, §4.2) or ReLU(mean + std * N(0, 1)) (SAELens, §4.5). */
export type Magnitude = { kind: 'uniform' } | { kind: 'relu-normal'; mean: number; std: number };

/**
 * Correlated firing through a per-row Gaussian copula: z ~ N(0, Sigma), feature i fires when
 * z_i < Phi^-1(p_i), so every marginal stays p_i. A Float64Array is Sigma itself ([numFeatures,
 * numFeatures], symmetric, unit diagonal, positive definite). 'random' builds
 * Sigma = strength * U U^T off the diagonal (1 on it) from unit factor loadings U [numFeatures,
 * factors] drawn from the seed: z_i = sqrt(strength) u_i . g + sqrt(1 - strength) e_i. U is held
 * whole (numFeatures x factors float64 values, at most 2^28: 2 GiB; more is ERR_SAEKIT_MEMORY).
 */
export type Correlation = 'none' | 'random' | Float64Array | { kind: 'random'; strength?: number; factors?: number };

/**
 * A node of a feature hierarchy (SAELens's HierarchyNode semantics, after Nabeshima's Matryoshka
 * toy model): a feature that fired is switched off in a row where its parent node is inactive,
 * and under `exclusiveChildren` at most one child stays on (one of those that fired, chosen
 * uniformly). A feature is active when it fired with a magnitude > 0 (as SAELens tests
 * activations > 0). A node is active when its feature is active and survived, or, without
 * `feature` (an organising node), when its parent is active (a root: always). Applied top-down,
 * so with independent firing and no exclusive siblings a child's effective rate is its own
 * active probability times its parent's effective rate (correlated firing changes that).
 */
export interface HierarchyNode {
  /** The feature this node stands for (an index below numFeatures); omitted: an organising node. */
  feature?: number;
  /** Nodes that depend on this one. */
  children?: HierarchyNode[];
  /** At most one child with a feature fires per row. Needs at least 2 children. Default false. */
  exclusiveChildren?: boolean;
}

/** Options of synthetic.superposition(): sizes, firing, magnitudes, correlation, hierarchy, rows and seed. */
export interface SuperpositionOptions {
  /** Dimension of the rows. */
  dIn: number;
  /** Number of ground-truth features (may exceed dIn). */
  numFeatures: number;
  /** How often each feature fires (see Firing). */
  firing: Firing;
  /** Default { kind: 'uniform' }, i.e. U(0, 1] (float32 rounding reaches 1). */
  magnitude?: Magnitude;
  /** Default 'none' (independent firing). 'random' means { kind: 'random', strength: 0.5, factors: min(8, numFeatures) }. */
  correlation?: Correlation;
  /**
   * Trees of dependent features (see HierarchyNode), applied to each row's active features
   * (fired, with a magnitude > 0) after its magnitudes are drawn: a parent that fired with a
   * relu-normal magnitude of 0 counts as off. Each feature may appear in at most one node. A row visits
   * every node (O(nodes) per row on top of its sampling). Default none.
   */
  hierarchy?: HierarchyNode[];
  /** Rows per epoch; the source is finite. Default 65536, at most 2^48. */
  numRows?: number;
  /** Default 0. */
  seed?: number | bigint;
}

/** Ground-truth codes of a range of rows, CSR: row t has indices[indptr[t] .. indptr[t+1]). */
export interface SparseCodes {
  /** [count + 1] row offsets into indices and values. */
  indptr: Int32Array;
  /** Fired features, increasing within a row. */
  indices: Int32Array;
  /** Their magnitudes exactly as summed (float32), all > 0 (a relu-normal magnitude of 0 is not active, not listed). */
  values: Float32Array;
}

/** What synthetic.superposition() returns: the rows as a source, and the ground truth behind them. */
export interface SuperpositionData {
  /** The rows as an ActivationSource (numRows rows per epoch). */
  source: OwnedActivationSource;
  /** Ground-truth features [numFeatures, dIn], unit rows (a copy: changing it changes no row). */
  features: Float32Array;
  /** Firing probability of each feature [numFeatures], before any hierarchy switches features off. */
  probabilities: Float64Array;
  /** Rows [start, start + count) in generation order, [count, dIn] (random access). */
  rows(start: number, count: number): Float32Array;
  /** Ground-truth codes of rows [start, start + count). */
  codes(start: number, count: number): SparseCodes;
  /**
   * The copula's Sigma [numFeatures, numFeatures] (a fresh copy), or undefined without correlation.
   * numFeatures^2 float64 values: above 16,384 features (2 GiB) it throws ERR_SAEKIT_MEMORY.
   */
  correlationMatrix(): Float64Array | undefined;
}

// ---------------------------------------------------------------------------------------------
// Random numbers.

const STREAM_TAG = 0x53594e54; // 'SYNT'
const PURPOSE_FEATURES = 1;
const PURPOSE_FACTORS = 2;
const PURPOSE_ROWS = 3;
const PURPOSE_SHUFFLE = 4;
const PURPOSE_FIRING = 6;
const TWO32 = 4294967296;

/** High 32 bits of the 64-bit product of two uint32 values, exact in float64 arithmetic. */
function mulhi(a: number, b: number): number {
  const t1 = (a & 0xffff) * b; // < 2^48
  const t2 = (a >>> 16) * b + Math.floor(t1 / 65536); // < 2^48 + 2^32
  return Math.floor(t2 / 65536) >>> 0;
}

/** Philox 4x32-10 (docs/random.md); writes the four output words into `out`. @internal */
export function philox4x32(c0: number, c1: number, c2: number, c3: number, k0: number, k1: number, out: Uint32Array): void {
  const M0 = 0xd2511f53;
  const M1 = 0xcd9e8d57;
  c0 >>>= 0;
  c1 >>>= 0;
  c2 >>>= 0;
  c3 >>>= 0;
  k0 >>>= 0;
  k1 >>>= 0;
  for (let round = 0; round < 10; round++) {
    const hi0 = mulhi(M0, c0);
    const lo0 = Math.imul(M0, c0) >>> 0;
    const hi1 = mulhi(M1, c2);
    const lo1 = Math.imul(M1, c2) >>> 0;
    c0 = (hi1 ^ c1 ^ k0) >>> 0;
    c1 = lo1;
    c2 = (hi0 ^ c3 ^ k1) >>> 0;
    c3 = lo0;
    k0 = (k0 + 0x9e3779b9) >>> 0;
    k1 = (k1 + 0xbb67ae85) >>> 0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

/**
 * xoshiro128** seeded from one Philox block, with uniform and normal helpers. `tag` is the
 * counter's fourth word: 'SYNT' here, the compat generators' own tags in synthetic-compat.ts. @internal
 */
export class Rng {
  /** xoshiro128** state s0..s3 (an Int32Array keeps the words unboxed). */
  private readonly s = new Int32Array(4);
  private readonly block = new Uint32Array(4);
  private readonly k0: number;
  private readonly k1: number;

  constructor(
    seed: bigint,
    private readonly tag: number = STREAM_TAG,
  ) {
    this.k0 = Number(seed & 0xffffffffn);
    this.k1 = Number((seed >> 32n) & 0xffffffffn);
  }

  /** Resets the state to the block (purpose, index) of the stream layout. */
  reseed(purpose: number, index: number): void {
    const lo = index % TWO32;
    const hi = Math.floor(index / TWO32);
    philox4x32(lo, hi, purpose, this.tag, this.k0, this.k1, this.block);
    const s = this.s;
    for (let i = 0; i < 4; i++) s[i] = this.block[i]!;
    if ((s[0]! | s[1]! | s[2]! | s[3]!) === 0) s[3] = 1; // probability 2^-128
  }

  /** Next uint32. */
  next(): number {
    const s = this.s;
    const s0 = s[0]!;
    const s1 = s[1]!;
    const s2 = s[2]! ^ s0;
    const s3 = s[3]! ^ s1;
    const r = Math.imul(rotl(Math.imul(s1, 5), 7), 9);
    s[0] = s0 ^ s3;
    s[1] = s1 ^ s2;
    s[2] = s2 ^ (s1 << 9);
    s[3] = rotl(s3, 11);
    return r >>> 0;
  }

  /** [0, 1), 53-bit. */
  uniform53(): number {
    const a = this.next() >>> 5;
    const b = this.next() >>> 6;
    return (a * 67108864 + b) / 9007199254740992;
  }

  /** (0, 1), 32-bit, never 0. */
  uniformOpen(): number {
    return (this.next() + 0.5) / TWO32;
  }

  /** Standard normal by the ziggurat method (see ZIG_* below). */
  normal(): number {
    const X = ZIG_X;
    for (;;) {
      const w = this.next();
      const i = w & (ZIG_N - 1);
      const u = ((w >> 7) + 0.5) / 16777216; // (-1, 1), symmetric, 25 bits
      const x = u * X[i]!;
      if (Math.abs(x) < X[i + 1]!) return x;
      if (i === 0) {
        // The tail beyond r (Marsaglia 1964).
        for (;;) {
          const a = -Math.log(this.uniformOpen()) / ZIG_R;
          const b = -Math.log(this.uniformOpen());
          if (b + b >= a * a) return u < 0 ? -(ZIG_R + a) : ZIG_R + a;
        }
      }
      const y = ZIG_F[i]! + this.uniformOpen() * (ZIG_F[i + 1]! - ZIG_F[i]!);
      if (y < Math.exp(-0.5 * x * x)) return x;
    }
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

// ---------------------------------------------------------------------------------------------
// The standard normal CDF and quantile (float64, ~1e-15 relative).

/** erfc(x) for x >= 0: positive-term series of erf below 2, Lentz continued fraction above. */
function erfcNonNeg(x: number): number {
  if (x < 2) {
    // erf(x) = 2/sqrt(pi) exp(-x^2) sum_n 2^n x^(2n+1) / (1*3*...*(2n+1)): no cancellation.
    const x2 = x * x;
    let term = x;
    let sum = x;
    for (let n = 1; n < 200; n++) {
      term *= (2 * x2) / (2 * n + 1);
      sum += term;
      if (term < sum * 1e-17) break;
    }
    return 1 - (2 / Math.sqrt(Math.PI)) * Math.exp(-x2) * sum;
  }
  if (x > 27) return 0;
  // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))), modified Lentz.
  const tiny = 1e-300;
  let f = x;
  let C = x;
  let D = 0;
  for (let k = 1; k < 500; k++) {
    const a = k / 2;
    D = x + a * D;
    if (D === 0) D = tiny;
    C = x + a / C;
    if (C === 0) C = tiny;
    D = 1 / D;
    const delta = C * D;
    f *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  return Math.exp(-x * x) / Math.sqrt(Math.PI) / f;
}

/** Phi(z), the standard normal CDF. @internal */
export function normalCdf(z: number): number {
  if (Number.isNaN(z)) return NaN;
  return z < 0 ? 0.5 * erfcNonNeg(-z / Math.SQRT2) : 1 - 0.5 * erfcNonNeg(z / Math.SQRT2);
}

/** Phi^-1(p); -Infinity at 0 and +Infinity at 1. @internal */
export function normalQuantile(p: number): number {
  if (!(p >= 0 && p <= 1)) return NaN;
  if (p === 0) return -Infinity;
  if (p === 1) return Infinity;
  if (p === 0.5) return 0;
  if (p > 0.5) return -normalQuantile(1 - p);
  // Abramowitz & Stegun 26.2.23 start (|error| < 4.5e-4), then Halley steps on Phi(z) = p.
  const t = Math.sqrt(-2 * Math.log(p));
  let z = -(t - (2.515517 + 0.802853 * t + 0.010328 * t * t) / (1 + 1.432788 * t + 0.189269 * t * t + 0.001308 * t * t * t));
  for (let it = 0; it < 20; it++) {
    const pdf = Math.exp(-0.5 * z * z) / Math.sqrt(2 * Math.PI);
    if (pdf === 0) break;
    const step = (normalCdf(z) - p) / pdf;
    const next = z - step / (1 + 0.5 * z * step);
    const done = Math.abs(next - z) <= 1e-15 * Math.max(1, Math.abs(z));
    z = next;
    if (done) break;
  }
  return z;
}

// ---------------------------------------------------------------------------------------------
// Ziggurat tables for the standard normal: N layers of equal area v under f(x) = exp(-x^2/2),
// x[0] = v / f(r) (the base strip plus the tail as one box), x[1] = r > x[2] > ... > x[N] = 0,
// with x[i+1] = f^-1(f(x[i]) + v / x[i]). r is solved here so that the top layer closes at f = 1.

const ZIG_N = 128;

function zigTail(r: number): number {
  return Math.sqrt(Math.PI / 2) * erfcNonNeg(r / Math.SQRT2);
}

/** f(x[N-1]) + v / x[N-1] - 1 for a trial r (decreasing in r); +1 if the stack overshoots early. */
function zigResidual(r: number, X?: Float64Array): number {
  const f = (x: number) => Math.exp(-0.5 * x * x);
  const v = r * f(r) + zigTail(r);
  if (X) {
    X[0] = v / f(r);
    X[1] = r;
  }
  let x = r;
  for (let i = 1; i < ZIG_N - 1; i++) {
    const y = f(x) + v / x;
    if (y >= 1) return 1;
    x = Math.sqrt(-2 * Math.log(y));
    if (X) X[i + 1] = x;
  }
  return f(x) + v / x - 1;
}

const { ZIG_R, ZIG_X, ZIG_F } = (() => {
  let lo = 2.5;
  let hi = 4.5;
  for (let it = 0; it < 200 && hi - lo > 1e-15; it++) {
    const mid = 0.5 * (lo + hi);
    if (zigResidual(mid) > 0) lo = mid;
    else hi = mid;
  }
  const X = new Float64Array(ZIG_N + 1);
  zigResidual(hi, X);
  X[ZIG_N] = 0;
  const F = new Float64Array(ZIG_N + 1);
  for (let i = 1; i <= ZIG_N; i++) F[i] = Math.exp(-0.5 * X[i]! * X[i]!);
  return { ZIG_R: hi, ZIG_X: X, ZIG_F: F };
})();

/**
 * `count` standard normals from the generator's sampler (stream purpose 5, one Philox-seeded
 * block of 2^16 values per index). For tests of the sampler itself. @internal
 */
export function normalSamples(seed: number | bigint, count: number): Float64Array {
  const rng = new Rng(checkSeed('seed', seed));
  const out = new Float64Array(checkInt('count', count, 0, 2 ** 31 - 1));
  for (let i = 0; i < count; i++) {
    if ((i & 0xffff) === 0) rng.reseed(5, i / 65536);
    out[i] = rng.normal();
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Validation helpers.

function checkNumber(name: string, value: unknown, min: number, max: number, openMin = false): number {
  const ok = typeof value === 'number' && Number.isFinite(value) && (openMin ? value > min : value >= min) && value <= max;
  if (!ok) throw argError(name, `finite number ${openMin ? '>' : '>='} ${min} and <= ${max}`, value);
  return value;
}

function checkObject(name: string, value: unknown): Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value) || ArrayBuffer.isView(value)) {
    throw argError(name, 'an options object', value);
  }
  return value as Record<string, unknown>;
}

function firingProbabilities(firing: unknown, n: number, seed: bigint): Float64Array {
  const f = checkObject('options.firing', firing);
  const kinds = ['zipf', 'linear', 'random', 'uniform', 'expected-active', 'probabilities'] as const;
  const kind = checkOneOf('options.firing.kind', f.kind, kinds);
  // Keys the kind does not take are errors (checkOptions): a misspelling is not ignored.
  const keys: Record<(typeof kinds)[number], string[]> = {
    zipf: ['kind', 'exponent', 'maxP', 'minP', 'scale'],
    linear: ['kind', 'maxP', 'minP'],
    random: ['kind', 'maxP', 'minP'],
    uniform: ['kind', 'p'],
    'expected-active': ['kind', 'n'],
    probabilities: ['kind', 'p'],
  };
  checkOptions('options.firing', f, keys[kind]);
  const p = new Float64Array(n);
  /** maxP in (0, 1] and minP in [0, maxP], with SAELens' defaults (clip's minP: 0). */
  const range = (maxDefault: number, minDefault: number): [number, number] => {
    const maxP = f.maxP === undefined ? maxDefault : checkNumber('options.firing.maxP', f.maxP, 0, 1, true);
    const minP = f.minP === undefined ? Math.min(minDefault, maxP) : checkNumber('options.firing.minP', f.minP, 0, maxP);
    return [maxP, minP];
  };
  if (kind === 'zipf') {
    const scale = f.scale === undefined ? 'rescale' : checkOneOf('options.firing.scale', f.scale, ['rescale', 'clip'] as const);
    if (scale === 'clip') {
      const exponent = f.exponent === undefined ? 1 : checkNumber('options.firing.exponent', f.exponent, 0, 1e6);
      const [maxP, minP] = range(0.3, 0);
      for (let i = 0; i < n; i++) p[i] = Math.max(minP, maxP * Math.pow(i + 1, -exponent));
    } else {
      const e = f.exponent === undefined ? 1 : checkNumber('options.firing.exponent', f.exponent, 0, 1e6, true);
      const [maxP, minP] = range(0.3, 0.01);
      zipfRescaled(p, e, maxP, minP);
    }
  } else if (kind === 'linear') {
    const [maxP, minP] = range(0.3, 0.01);
    // torch.linspace(maxP, minP, n)'s formula: entries below floor(n / 2) stepped from maxP, the
    // rest back from minP (in float64: the same law as SAELens's float32 values, not their bits).
    if (n === 1) p[0] = maxP;
    else {
      const step = (minP - maxP) / (n - 1);
      const mid = Math.floor(n / 2);
      for (let i = 0; i < n; i++) p[i] = i < mid ? maxP + i * step : minP - (n - 1 - i) * step;
    }
  } else if (kind === 'random') {
    const [maxP, minP] = range(0.5, 0.01);
    const rng = new Rng(seed);
    rng.reseed(PURPOSE_FIRING, 0);
    for (let i = 0; i < n; i++) p[i] = minP + (maxP - minP) * (rng.next() / TWO32);
  } else if (kind === 'uniform') {
    p.fill(checkNumber('options.firing.p', f.p, 0, 1));
  } else if (kind === 'expected-active') {
    p.fill(checkNumber('options.firing.n', f.n, 0, n) / n);
  } else {
    const given = f.p as ArrayLike<number> | undefined;
    if (given === null || typeof given !== 'object' || typeof given.length !== 'number') {
      throw argError('options.firing.p', `an array of ${n} probabilities (numFeatures)`, given);
    }
    if (given.length !== n) throw argError('options.firing.p', `an array of length numFeatures = ${n}`, given);
    for (let i = 0; i < n; i++) p[i] = checkNumber(`options.firing.p[${i}]`, given[i], 0, 1);
  }
  return p;
}

/**
 * p_i = minP + (maxP - minP) t_i with t_i = ((i + 1)^-e - n^-e) / (1 - n^-e) (SAELens' min-max
 * rescaling of the Zipf weights, so t_0 = 1 and t_(n-1) = 0), in float64. Below e ln n = 1 the
 * difference is taken with expm1 (t_i = n^-e expm1(e ln(n / (i + 1))) / -expm1(-e ln n)), which
 * keeps it exact for tiny exponents (t_i -> ln(n / (i + 1)) / ln n). @internal
 */
export function zipfRescaled(p: Float64Array, e: number, maxP: number, minP: number): void {
  const n = p.length;
  if (n === 1) {
    p[0] = maxP;
    return;
  }
  const lnN = Math.log(n);
  const small = e * lnN < 1;
  // Below 2^-900 the limit itself (its error is O(e ln n), under 1e-270): near the subnormals
  // the expm1 quotient loses digits (0.11 off at e = 5e-324).
  const limit = e * lnN < 2 ** -900;
  const nPow = Math.exp(-e * lnN);
  const den = small ? -Math.expm1(-e * lnN) : 1 - nPow;
  for (let i = 0; i < n; i++) {
    const t = limit
      ? Math.log(n / (i + 1)) / lnN
      : small
        ? (nPow * Math.expm1(e * Math.log(n / (i + 1)))) / den
        : (Math.pow(i + 1, -e) - nPow) / den;
    p[i] = minP + (maxP - minP) * Math.min(1, Math.max(0, t));
  }
  p[0] = maxP;
  p[n - 1] = minP;
}

type MagnitudePlan = { relu: false } | { relu: true; mean: number; std: number };

function magnitudePlan(magnitude: unknown): MagnitudePlan {
  if (magnitude === undefined) return { relu: false };
  const m = checkObject('options.magnitude', magnitude);
  const kind = checkOneOf('options.magnitude.kind', m.kind, ['uniform', 'relu-normal'] as const);
  checkOptions('options.magnitude', m, kind === 'uniform' ? ['kind'] : ['kind', 'mean', 'std']);
  if (kind === 'uniform') return { relu: false };
  // Bounded so that magnitudes and rows stay finite in float32.
  const mean = checkNumber('options.magnitude.mean', m.mean, -1e30, 1e30);
  const std = checkNumber('options.magnitude.std', m.std, 0, 1e30);
  return { relu: true, mean, std };
}

type CopulaPlan =
  | { kind: 'none' }
  | { kind: 'cholesky'; L: Float64Array; sigma: Float64Array }
  | { kind: 'factors'; U: Float64Array; k: number; strength: number };

const SIGMA_TOL = 1e-9;

function copulaPlan(correlation: unknown, n: number, seed: bigint): CopulaPlan {
  if (correlation === undefined || correlation === 'none') return { kind: 'none' };
  if (correlation instanceof Float64Array) return choleskyPlan(correlation, n);
  let strength = 0.5;
  let k = Math.min(8, n);
  if (correlation !== 'random') {
    const expected = "'none', 'random', a Float64Array correlation matrix or { kind: 'random', strength?, factors? }";
    if (correlation === null || typeof correlation !== 'object' || Array.isArray(correlation) || ArrayBuffer.isView(correlation)) {
      throw argError('options.correlation', expected, correlation);
    }
    const c = correlation as Record<string, unknown>;
    if (c.kind !== 'random') throw argError('options.correlation', expected, correlation);
    checkOptions('options.correlation', c, ['kind', 'strength', 'factors']);
    if (c.strength !== undefined) strength = checkNumber('options.correlation.strength', c.strength, 0, 1);
    if (c.factors !== undefined) k = checkInt('options.correlation.factors', c.factors, 1, n);
  }
  // The loadings are n x k float64 values, read whole for every row: bounded as
  // correlationMatrix()'s n x n matrix is (2 GiB), before anything is allocated.
  const maxLoadings = MAX_CORRELATION_MATRIX_FEATURES * MAX_CORRELATION_MATRIX_FEATURES;
  if (n * k > maxLoadings) {
    throw new SaekitError(
      'ERR_SAEKIT_MEMORY',
      `Expected options.correlation.factors of at most ${Math.floor(maxLoadings / n)} with ${n} features but received ${k}: ` +
        `the loadings would be a ${n} x ${k} float64 matrix (${((n * k * 8) / 2 ** 30).toFixed(1)} GiB; the limit is 2 GiB)`,
    );
  }
  // Unit loadings u_i in R^k, scaled by sqrt(strength).
  const U = new Float64Array(n * k);
  const rng = new Rng(seed);
  const scale = Math.sqrt(strength);
  for (let i = 0; i < n; i++) {
    rng.reseed(PURPOSE_FACTORS, i);
    let norm2 = 0;
    do {
      norm2 = 0;
      for (let a = 0; a < k; a++) {
        const g = rng.normal();
        U[i * k + a] = g;
        norm2 += g * g;
      }
    } while (norm2 === 0);
    const s = scale / Math.sqrt(norm2);
    for (let a = 0; a < k; a++) U[i * k + a]! *= s;
  }
  return { kind: 'factors', U, k, strength };
}

function choleskyPlan(sigma: Float64Array, n: number): CopulaPlan {
  const name = 'options.correlation';
  if (sigma.length !== n * n) throw argError(name, `a Float64Array of length numFeatures^2 = ${n * n}`, sigma);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const v = sigma[i * n + j]!;
      if (!Number.isFinite(v)) throw argError(`${name}[${i * n + j}]`, 'finite number', v);
      if (i === j && Math.abs(v - 1) > SIGMA_TOL) throw argError(`${name}[${i * n + j}] (diagonal)`, '1 (unit diagonal)', v);
      if (j > i && Math.abs(v - sigma[j * n + i]!) > SIGMA_TOL) {
        throw new SaekitError(
          'ERR_SAEKIT_ARG',
          `Expected a symmetric matrix for ${name} but entry (${i}, ${j}) is ${v} and (${j}, ${i}) is ${sigma[j * n + i]}`,
        );
      }
    }
  }
  const L = choleskyLower(sigma, n);
  if (!(L instanceof Float64Array)) {
    throw new SaekitError('ERR_SAEKIT_ARG', `Expected a positive definite matrix for ${name} but its Cholesky factorisation fails at row ${L.row} (pivot ${L.pivot})`);
  }
  return { kind: 'cholesky', L, sigma: Float64Array.from(sigma) };
}

/**
 * The lower Cholesky factor L [n, n] of the symmetric part of S (S = L L^T, float64, each entry's
 * terms in increasing k), or the row whose pivot is not above 1e-12 (S not positive definite). @internal
 */
export function choleskyLower(S: Float64Array, n: number): Float64Array | { row: number; pivot: number } {
  const L = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = 0.5 * (S[i * n + j]! + S[j * n + i]!);
      for (let k = 0; k < j; k++) s -= L[i * n + k]! * L[j * n + k]!;
      if (i === j) {
        if (!(s > 1e-12)) return { row: i, pivot: s };
        L[i * n + i] = Math.sqrt(s);
      } else {
        L[i * n + j] = s / L[j * n + j]!;
      }
    }
  }
  return L;
}

// ---------------------------------------------------------------------------------------------
// The row sampler.

const DIRECT_P = 0.25;

interface Run {
  start: number;
  end: number;
  /** 0: test each feature directly; otherwise log(1 - pmax) for geometric skipping. */
  logQ: number;
  pmax: number;
}

/**
 * A hierarchy flattened in pre-order (every parent before its children): per node its feature (-1:
 * organising), its parent node (-1: a root) and, for exclusive nodes, the range of its children's
 * features in `exFeatures`.
 */
interface HierarchyPlan {
  feature: Int32Array;
  parent: Int32Array;
  exStart: Int32Array;
  exEnd: Int32Array;
  exFeatures: Int32Array;
}

/** Most nodes a hierarchy may have. */
const MAX_HIERARCHY_NODES = 1 << 22;
/** Most features correlationMatrix() builds its dense matrix for (2 GiB of float64). */
const MAX_CORRELATION_MATRIX_FEATURES = 16384;

function hierarchyPlan(hierarchy: unknown, n: number): HierarchyPlan | undefined {
  if (hierarchy === undefined) return undefined;
  if (!Array.isArray(hierarchy)) throw argError('options.hierarchy', 'an array of HierarchyNode trees', hierarchy);
  const feature: number[] = [];
  const parent: number[] = [];
  const exStart: number[] = [];
  const exEnd: number[] = [];
  const exFeatures: number[] = [];
  const owner = new Map<number, string>(); // feature -> the node that holds it
  const seen = new Set<object>();
  // Iterative pre-order (a deep tree cannot overflow the stack).
  const stack: { node: unknown; parent: number; name: string }[] = [];
  // An array's length is checked before its slots are visited: a sparse array of 2^32 - 1 slots
  // costs nothing to make but would be walked slot by slot.
  const room = (name: string, a: unknown[]) => {
    if (a.length > MAX_HIERARCHY_NODES - feature.length - stack.length) {
      throw new SaekitError('ERR_SAEKIT_ARG', `Expected ${name} to keep the hierarchy within ${MAX_HIERARCHY_NODES} nodes but it has ${a.length} entries`);
    }
  };
  room('options.hierarchy', hierarchy);
  for (let i = hierarchy.length - 1; i >= 0; i--) stack.push({ node: hierarchy[i], parent: -1, name: `options.hierarchy[${i}]` });
  while (stack.length > 0) {
    const { node, parent: par, name } = stack.pop()!;
    if (node === null || typeof node !== 'object' || Array.isArray(node)) throw argError(name, 'a HierarchyNode object', node);
    if (seen.has(node)) throw argError(name, 'a node that appears once in the hierarchy (no shared nodes or loops)', node);
    seen.add(node);
    if (feature.length >= MAX_HIERARCHY_NODES) throw argError('options.hierarchy', `at most ${MAX_HIERARCHY_NODES} nodes`, hierarchy);
    const o = checkOptions<HierarchyNode>(name, node as HierarchyNode, HIERARCHY_NODE_OPTIONS);
    let f = -1;
    if (o.feature !== undefined) {
      f = checkInt(`${name}.feature`, o.feature, 0, n - 1);
      const other = owner.get(f);
      if (other !== undefined) throw argError(`${name}.feature`, `a feature in no other node (${other} holds ${f})`, f);
      owner.set(f, name);
    }
    const children = o.children === undefined ? [] : o.children;
    if (!Array.isArray(children)) throw argError(`${name}.children`, 'an array of HierarchyNode objects', children);
    room(`${name}.children`, children);
    const exclusive = o.exclusiveChildren === undefined ? false : checkBool(`${name}.exclusiveChildren`, o.exclusiveChildren);
    if (exclusive && children.length < 2) throw argError(`${name}.exclusiveChildren`, 'false for a node with fewer than 2 children', true);
    const id = feature.length;
    feature.push(f);
    parent.push(par);
    exStart.push(exFeatures.length);
    if (exclusive) {
      for (const [j, c] of children.entries()) {
        const cf = c !== null && typeof c === 'object' ? (c as { feature?: unknown }).feature : undefined;
        // Checked when the child is visited; organising children take no part in the choice.
        if (cf !== undefined) exFeatures.push(checkInt(`${name}.children[${j}].feature`, cf, 0, n - 1));
      }
    }
    exEnd.push(exFeatures.length);
    for (let j = children.length - 1; j >= 0; j--) stack.push({ node: children[j], parent: id, name: `${name}.children[${j}]` });
  }
  if (feature.length === 0) return undefined;
  return {
    feature: Int32Array.from(feature),
    parent: Int32Array.from(parent),
    exStart: Int32Array.from(exStart),
    exEnd: Int32Array.from(exEnd),
    exFeatures: Int32Array.from(exFeatures),
  };
}

class Sampler {
  readonly n: number;
  readonly dIn: number;
  private readonly rng: Rng;
  private readonly runs: Run[] = [];
  /** Position -> feature when p is not non-increasing (buildRuns), else null: position = feature. */
  private order: Int32Array | null = null;
  /** p at each position. */
  private q: Float64Array;
  private readonly accept: Float64Array;
  private readonly thresholds: Float64Array;
  private readonly z: Float64Array;
  private readonly e: Float64Array;
  private readonly g: Float64Array;
  readonly active: Int32Array;
  readonly values: Float32Array;
  private readonly bases: Int32Array;
  /** Hierarchy scratch: fired flags per feature, active flags per node, an exclusive node's fired children. */
  private readonly on: Uint8Array;
  private readonly nodeOn: Uint8Array;
  private readonly pick: Int32Array;

  constructor(
    readonly features: Float32Array,
    readonly p: Float64Array,
    private readonly magnitude: MagnitudePlan,
    private readonly copula: CopulaPlan,
    seed: bigint,
    dIn: number,
    private readonly hierarchy?: HierarchyPlan,
  ) {
    this.n = p.length;
    this.on = new Uint8Array(hierarchy ? this.n : 0);
    this.nodeOn = new Uint8Array(hierarchy ? hierarchy.feature.length : 0);
    this.pick = new Int32Array(hierarchy ? this.n : 0);
    this.dIn = dIn;
    this.rng = new Rng(seed);
    this.active = new Int32Array(this.n);
    this.values = new Float32Array(this.n);
    this.bases = new Int32Array(this.n);
    this.accept = new Float64Array(this.n);
    this.thresholds = new Float64Array(copula.kind === 'none' ? 0 : this.n);
    this.z = new Float64Array(copula.kind === 'none' ? 0 : this.n);
    this.e = new Float64Array(copula.kind === 'none' ? 0 : this.n);
    this.g = new Float64Array(copula.kind === 'factors' ? copula.k : 0);
    this.q = p;
    if (copula.kind === 'none') this.buildRuns();
    else for (let i = 0; i < this.n; i++) this.thresholds[i] = normalQuantile(p[i]!);
  }

  /**
   * Runs over the probabilities in decreasing order (see the module comment): the features
   * themselves when p is non-increasing (every kind but 'random' and 'probabilities'), else
   * `order`, the features sorted by decreasing p_i (ties by index).
   */
  private buildRuns(): void {
    const n = this.n;
    let monotone = true;
    for (let i = 1; i < n && monotone; i++) if (this.p[i]! > this.p[i - 1]!) monotone = false;
    let p = this.p;
    if (!monotone) {
      const order = new Int32Array(n);
      for (let i = 0; i < n; i++) order[i] = i;
      order.sort((a, b) => this.p[b]! - this.p[a]! || a - b);
      this.order = order;
      p = new Float64Array(n);
      for (let t = 0; t < n; t++) p[t] = this.p[order[t]!]!;
    }
    this.q = p;
    let i = 0;
    while (i < n) {
      const pmax = p[i]!;
      if (pmax <= 0) break; // the rest are 0 too
      let j = i + 1;
      if (pmax > DIRECT_P) {
        while (j < n && p[j]! > DIRECT_P) j++;
        this.runs.push({ start: i, end: j, logQ: 0, pmax });
      } else {
        while (j < n && p[j]! > pmax / 2) j++;
        for (let t = i; t < j; t++) this.accept[t] = p[t]! / pmax;
        this.runs.push({ start: i, end: j, logQ: Math.log1p(-pmax), pmax });
      }
      i = j;
    }
  }

  /** Samples row r: fills active/values, returns the number of fired features. */
  sample(r: number): number {
    const rng = this.rng;
    rng.reseed(PURPOSE_ROWS, r);
    let count = 0;
    const active = this.active;
    if (this.copula.kind === 'none') {
      const q = this.q;
      for (const run of this.runs) {
        if (run.logQ === 0) {
          for (let t = run.start; t < run.end; t++) if (rng.next() / TWO32 < q[t]!) active[count++] = t;
        } else {
          const accept = this.accept;
          let pos = run.start - 1;
          for (;;) {
            const u = 1 - rng.uniform53(); // (0, 1]
            pos += 1 + Math.floor(Math.log(u) / run.logQ);
            if (pos >= run.end) break;
            const a = accept[pos]!;
            if (a >= 1 || rng.next() / TWO32 < a) active[count++] = pos;
          }
        }
      }
      const order = this.order;
      if (order) {
        for (let t = 0; t < count; t++) active[t] = order[active[t]!]!;
        active.subarray(0, count).sort();
      }
    } else {
      const n = this.n;
      const z = this.z;
      const e = this.e;
      if (this.copula.kind === 'cholesky') {
        const L = this.copula.L;
        for (let i = 0; i < n; i++) e[i] = rng.normal();
        lowerTimes(L, e, z, n);
      } else {
        const { U, k, strength } = this.copula;
        const g = this.g;
        for (let a = 0; a < k; a++) g[a] = rng.normal();
        const idio = Math.sqrt(1 - strength);
        for (let i = 0; i < n; i++) {
          let s = 0;
          const row = i * k;
          for (let a = 0; a < k; a++) s += U[row + a]! * g[a]!;
          z[i] = s + idio * rng.normal();
        }
      }
      const th = this.thresholds;
      for (let i = 0; i < n; i++) if (z[i]! < th[i]!) active[count++] = i;
    }
    // Magnitudes, in increasing feature index. A ReLU'd magnitude of 0 leaves the feature
    // inactive (SAELens: active means an activation > 0): it is dropped from the row's codes.
    const values = this.values;
    const mag = this.magnitude;
    if (mag.relu) {
      let kept = 0;
      for (let t = 0; t < count; t++) {
        const v = Math.fround(Math.max(0, mag.mean + mag.std * rng.normal())); // tested as stored: below float32's least subnormal is 0
        if (v > 0) {
          active[kept] = active[t]!;
          values[kept++] = v;
        }
      }
      count = kept;
    } else {
      for (let t = 0; t < count; t++) values[t] = (rng.next() + 0.5) / TWO32;
    }
    if (this.hierarchy) count = this.applyHierarchy(count);
    return count;
  }

  /**
   * Switches off the active features (active[0..count), increasing, with their values) that the
   * hierarchy does not allow, in pre-order; each exclusive node with two or more fired children keeps one, drawn as
   * floor(u * m) from the row's stream (u = next() / 2^32, m = the number of fired children, in
   * the order the children are listed). Returns the new count; active stays increasing.
   */
  private applyHierarchy(count: number): number {
    const h = this.hierarchy!;
    const on = this.on;
    const nodeOn = this.nodeOn;
    const active = this.active;
    for (let t = 0; t < count; t++) on[active[t]!] = 1;
    const nodes = h.feature.length;
    for (let v = 0; v < nodes; v++) {
      const f = h.feature[v]!;
      const par = h.parent[v]!;
      const parentOn = par < 0 || nodeOn[par] === 1;
      if (f >= 0 && !parentOn) on[f] = 0;
      const isOn = f >= 0 ? on[f] === 1 : parentOn;
      nodeOn[v] = isOn ? 1 : 0;
      if (isOn && h.exEnd[v]! - h.exStart[v]! >= 2) {
        let m = 0;
        for (let q = h.exStart[v]!; q < h.exEnd[v]!; q++) if (on[h.exFeatures[q]!] === 1) this.pick[m++] = h.exFeatures[q]!;
        if (m >= 2) {
          const keep = Math.floor((this.rng.next() / TWO32) * m);
          for (let j = 0; j < m; j++) if (j !== keep) on[this.pick[j]!] = 0;
        }
      }
    }
    let kept = 0;
    const values = this.values;
    for (let t = 0; t < count; t++) {
      const f = active[t]!;
      if (on[f] === 1) {
        active[kept] = f;
        values[kept++] = values[t]!;
      }
      on[f] = 0;
    }
    return kept;
  }

  /** Writes row r into out[offset .. offset + dIn). */
  row(r: number, out: Float32Array, offset: number): void {
    const count = this.sample(r);
    accumulateRow(this.features, this.dIn, this.active, this.values, count, this.bases, out, offset, null);
  }
}

/** out[i] = s, rounded by `round` first when given (the float32 store rounds in any case). @internal */
export function put(out: Float32Array, i: number, s: number, round: ((x: number) => number) | null): void {
  out[i] = round ? round(s) : s;
}

/**
 * Writes sum_t vals[t] * F[active[t] * dIn ..] (float64, terms in the order given) into
 * out[offset .. offset + dIn), four coordinates at a time, each rounded by `round` (e.g. to
 * float16) when given; `bases` is scratch of at least `count` entries. @internal
 */
export function accumulateRow(
  F: Float32Array,
  dIn: number,
  active: Int32Array,
  vals: Float32Array,
  count: number,
  bases: Int32Array,
  out: Float32Array,
  offset: number,
  round: ((x: number) => number) | null,
): void {
  for (let t = 0; t < count; t++) bases[t] = active[t]! * dIn;
  let k = 0;
  for (; k + 3 < dIn; k += 4) {
    let s0 = 0;
    let s1 = 0;
    let s2 = 0;
    let s3 = 0;
    for (let t = 0; t < count; t++) {
      const c = vals[t]!;
      const b = bases[t]! + k;
      s0 += c * F[b]!;
      s1 += c * F[b + 1]!;
      s2 += c * F[b + 2]!;
      s3 += c * F[b + 3]!;
    }
    put(out, offset + k, s0, round);
    put(out, offset + k + 1, s1, round);
    put(out, offset + k + 2, s2, round);
    put(out, offset + k + 3, s3, round);
  }
  for (; k < dIn; k++) {
    let s = 0;
    for (let t = 0; t < count; t++) s += vals[t]! * F[bases[t]! + k]!;
    put(out, offset + k, s, round);
  }
}

/**
 * z = L e for lower-triangular L [n, n]; each z_i sums j = 0..i in order. Four rows at a time
 * share the loads of e and keep four independent accumulation chains. @internal
 */
export function lowerTimes(L: Float64Array, e: Float64Array, z: Float64Array, n: number): void {
  let i = 0;
  for (; i + 3 < n; i += 4) {
    const r0 = i * n;
    const r1 = r0 + n;
    const r2 = r1 + n;
    const r3 = r2 + n;
    let s0 = 0;
    let s1 = 0;
    let s2 = 0;
    let s3 = 0;
    for (let j = 0; j <= i; j++) {
      const ej = e[j]!;
      s0 += L[r0 + j]! * ej;
      s1 += L[r1 + j]! * ej;
      s2 += L[r2 + j]! * ej;
      s3 += L[r3 + j]! * ej;
    }
    const e1 = e[i + 1]!;
    const e2 = e[i + 2]!;
    const e3 = e[i + 3]!;
    s1 += L[r1 + i + 1]! * e1;
    s2 += L[r2 + i + 1]! * e1;
    s3 += L[r3 + i + 1]! * e1;
    s2 += L[r2 + i + 2]! * e2;
    s3 += L[r3 + i + 2]! * e2;
    s3 += L[r3 + i + 3]! * e3;
    z[i] = s0;
    z[i + 1] = s1;
    z[i + 2] = s2;
    z[i + 3] = s3;
  }
  for (; i < n; i++) {
    let s = 0;
    const row = i * n;
    for (let j = 0; j <= i; j++) s += L[row + j]! * e[j]!;
    z[i] = s;
  }
}

/**
 * Unit features [n, dIn]: feature i is dIn normals from `rng`'s block (PURPOSE_FEATURES, i),
 * normalised (drawn again if all are zero). The compat generators use it with their own
 * streams. @internal
 */
export function makeFeatures(n: number, dIn: number, rng: Rng): Float32Array {
  const F = allocate(Float32Array, n * dIn, `the ${n} x ${dIn} feature matrix`, 'options.numFeatures or options.dIn');
  const v = new Float64Array(dIn);
  for (let i = 0; i < n; i++) {
    rng.reseed(PURPOSE_FEATURES, i);
    let norm2 = 0;
    do {
      norm2 = 0;
      for (let k = 0; k < dIn; k++) {
        const g = rng.normal();
        v[k] = g;
        norm2 += g * g;
      }
    } while (norm2 === 0);
    const inv = 1 / Math.sqrt(norm2);
    for (let k = 0; k < dIn; k++) F[i * dIn + k] = v[k]! * inv;
  }
  return F;
}

// ---------------------------------------------------------------------------------------------
// Shuffle: a permutation of [0, numRows) per epoch (Fisher-Yates, or a balanced Feistel network
// with cycle walking for large numRows).

function mix32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

const FEISTEL_ROUNDS = 6;

/** Up to this many rows a shuffled epoch is a Fisher-Yates shuffle (exactly uniform), above it a keyed Feistel permutation. */
const SHUFFLE_TABLE_ROWS = 1 << 16;

/** A uniform integer in [0, bound) from `rng` (bound <= 2^32): Lemire's multiply-shift with rejection, exact. */
function uniformBelow(rng: Rng, bound: number): number {
  const reject = TWO32 % bound; // low words below this would over-represent some results
  for (;;) {
    const m = rng.next() * bound; // < 2^64, exact: bound <= 2^16 here keeps it below 2^48
    if (m % TWO32 >= reject) return Math.floor(m / TWO32);
  }
}

/**
 * The permutation of [0, n) that epoch `epoch` of a shuffled pass serves (module comment): for
 * n <= 2^16 a Fisher-Yates shuffle (exactly uniform over the n! orders), above that a keyed
 * Feistel permutation (held in no table). Both draw from the xoshiro128** generator at state(4,
 * epoch) under `seed`. @internal
 */
export function makePermutation(n: number, seed: bigint, epoch: number): (i: number) => number {
  const rng = new Rng(seed);
  rng.reseed(PURPOSE_SHUFFLE, epoch);
  if (n <= SHUFFLE_TABLE_ROWS) {
    const table = new Int32Array(n);
    for (let i = 0; i < n; i++) table[i] = i;
    for (let i = n - 1; i > 0; i--) {
      const j = uniformBelow(rng, i + 1);
      const t = table[i]!;
      table[i] = table[j]!;
      table[j] = t;
    }
    return (i: number): number => table[i]!;
  }
  let bits = 2;
  while (2 ** bits < n) bits++;
  const h = Math.ceil(bits / 2);
  const half = 2 ** h;
  const mask = half - 1;
  const keys = new Uint32Array(8);
  for (let r = 0; r < FEISTEL_ROUNDS; r++) keys[r] = rng.next();
  return (i: number): number => {
    let x = i;
    do {
      let L = Math.floor(x / half);
      let R = x % half;
      for (let r = 0; r < FEISTEL_ROUNDS; r++) {
        const next = (L ^ (mix32(R ^ keys[r]!) & mask)) >>> 0;
        L = R;
        R = next;
      }
      x = L * half + R;
    } while (x >= n);
    return x;
  };
}

// ---------------------------------------------------------------------------------------------
// Public entry point.

const MAX_ROWS = 2 ** 48;
/**
 * What one generated row counts for due() (slices.ts): enough that the clock is read
 * after every row (a row takes microseconds to milliseconds, with the correlation's sampling;
 * a look at the clock tens of nanoseconds), so a batch is generated in ~20 ms slices.
 */
const ROW_UNITS = 1 << 17;
const MAX_ELEMENTS = 2 ** 31 - 1;

/** Test hook: allocate() fails as V8 does when memory cannot be had where `fails(what, bytes)` says so. @internal */
export const allocationHook: { fails: ((what: string, bytes: number) => boolean) | null } = { fails: null };

type TypedArrayOf<A> = { new (length: number): A; readonly BYTES_PER_ELEMENT: number; readonly name: string };

/**
 * A zeroed typed array of `length` elements (sized by the caller's options), or, when the
 * memory cannot be had, ERR_SAEKIT_MEMORY naming `what` and its size and `lower`, the option to
 * lower, instead of V8's bare RangeError. @internal
 */
export function allocate<A>(Type: TypedArrayOf<A>, length: number, what: string, lower: string): A {
  const bytes = length * Type.BYTES_PER_ELEMENT;
  try {
    if (allocationHook.fails?.(what, bytes)) throw new RangeError('Array buffer allocation failed');
    return new Type(length);
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
    const size = bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(1)} GiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
    throw new SaekitError(
      'ERR_SAEKIT_MEMORY',
      `${what} needs ${length} ${Type.name.replace('Array', '').toLowerCase()} values (${size}), which cannot be allocated here (${e.message}); lower ${lower}`,
    );
  }
}

/** A copy of `a` in memory from allocate(). @internal */
export function copyOf(a: Float32Array, what: string, lower: string): Float32Array {
  const out = allocate(Float32Array, a.length, what, lower);
  out.set(a);
  return out;
}

/** A checker of (start, count) row ranges: start in [0, numRows], count within the rows left and 2^31 - 1 elements. @internal */
export function rangeChecker(dIn: number, numRows: number): (start: unknown, count: unknown) => [number, number] {
  const maxRange = Math.floor(MAX_ELEMENTS / dIn);
  return (start, count) => {
    const s = checkInt('start', start, 0, numRows);
    const c = checkInt('count', count, 0, Math.min(numRows - s, maxRange));
    return [s, c];
  };
}

/**
 * The CSR codes of rows [s, s + c): `sample(r)` fills `active` (increasing) and `values` with
 * row r's codes and returns their number. `count` is the caller's argument, named in the error
 * past 2^31 - 1 codes. @internal
 */
export function collectCodes(s: number, c: number, count: unknown, sample: (r: number) => number, active: Int32Array, values: Float32Array): SparseCodes {
  const what = `codes(${s}, ${c})`;
  const indptr = allocate(Int32Array, c + 1, what, 'count');
  let outIndices = allocate(Int32Array, Math.max(16, Math.min(MAX_ELEMENTS, c * 4)), what, 'count');
  let outValues = allocate(Float32Array, outIndices.length, what, 'count');
  let nnz = 0;
  for (let t = 0; t < c; t++) {
    const k = sample(s + t);
    if (nnz + k > MAX_ELEMENTS) throw argError('count', `a range with at most ${MAX_ELEMENTS} fired features`, count);
    if (nnz + k > outIndices.length) {
      const cap = Math.min(MAX_ELEMENTS, Math.max(nnz + k, outIndices.length * 2));
      const ni = allocate(Int32Array, cap, what, 'count');
      ni.set(outIndices.subarray(0, nnz));
      const nv = allocate(Float32Array, cap, what, 'count');
      nv.set(outValues.subarray(0, nnz));
      outIndices = ni;
      outValues = nv;
    }
    outIndices.set(active.subarray(0, k), nnz);
    outValues.set(values.subarray(0, k), nnz);
    nnz += k;
    indptr[t + 1] = nnz;
  }
  const indices = allocate(Int32Array, nnz, what, 'count');
  indices.set(outIndices.subarray(0, nnz));
  const vals = allocate(Float32Array, nnz, what, 'count');
  vals.set(outValues.subarray(0, nnz));
  return { indptr, indices, values: vals };
}

/**
 * The ActivationSource of a synthetic generator whose row r is `row(r, out, offset)` (a pure
 * function of r): batches in generation order, or with shuffle each epoch in the keyed
 * permutation of makePermutation, generated on the JS thread in ~20 ms slices. @internal
 */
export function syntheticSource(dIn: number, numRows: number, row: (r: number, out: Float32Array, offset: number) => void): OwnedActivationSource {
  let closed = false;
  const disposed = () => new SaekitError('ERR_SAEKIT_DISPOSED', 'Expected an open activation source but it has been closed');
  const source: OwnedActivationSource = {
    dIn,
    numRows,
    skippedRows: 0,
    /**
     * Batches in generation order, or with shuffle a seeded permutation of all rows per epoch
     * (rows are random access, so no mixing buffer is needed: bufferBytes and chunkRows are
     * accepted and ignored; rows are always finite, so onNonFinite has nothing to do).
     */
    batches(batchOptions?: BatchOptions): AsyncIterable<Batch> {
      if (closed) throw disposed();
      const { batchSize, shuffle, seed: shuffleSeed, epochs, dropLast } = resolveBatchOptions(batchOptions, dIn, 'error');
      return {
        async *[Symbol.asyncIterator]() {
          for (let epoch = 0; epoch < epochs; epoch++) {
            // Every epoch holds the same rows: one that gives no batch (fewer rows than a batch,
            // with dropLast) ends the iteration, as over any finite source (BatchOptions.epochs),
            // instead of running through up to 2^53 empty epochs without yielding the thread.
            if (dropLast && numRows < batchSize) return;
            const perm = shuffle ? makePermutation(numRows, shuffleSeed, epoch) : undefined;
            for (let start = 0; start < numRows; start += batchSize) {
              if (closed) throw disposed();
              const rows = Math.min(batchSize, numRows - start);
              if (dropLast && rows < batchSize) break;
              const data = allocate(Float32Array, rows * dIn, `a batch of ${rows} rows of ${dIn} dimensions`, 'batchSize');
              for (let t = 0; t < rows; t++) {
                row(perm ? perm(start + t) : start + t, data, t * dIn);
                if (due(ROW_UNITS)) {
                  await pause();
                  // close() stops a batch being generated too, not only the next one.
                  if (closed) throw disposed();
                }
              }
              yield { rows, dIn, data };
              // Let other work run between batches too.
              await new Promise<void>((resolve) => setImmediate(resolve));
            }
          }
        },
      };
    },
    async close(): Promise<void> {
      closed = true;
    },
    [Symbol.asyncDispose](): Promise<void> {
      return source.close();
    },
  };
  return source;
}

/**
 * A finite source of synthetic superposition rows with its ground truth (docs/references.md §4).
 * Rows are generated on demand, so numRows may be large; each epoch serves the same rows.
 * source.batches() generates each batch on the JS thread in ~20 ms slices between turns of the
 * event loop; superposition() itself draws the features (numFeatures × dIn normals) at once.
 *
 * @example
 * const { source, features } = superposition({ dIn: 64, numFeatures: 512, firing: { kind: 'expected-active', n: 5 }, seed: 1 });
 * for await (const b of source.batches({ batchSize: 1024 })) { ... }
 */
export function superposition(options: SuperpositionOptions): SuperpositionData {
  const o = checkOptions('options', options, SUPERPOSITION_OPTIONS);
  const dIn = checkInt('options.dIn', o.dIn, 1, 1 << 24);
  const n = checkInt('options.numFeatures', o.numFeatures, 1, 1 << 24);
  if (n * dIn > MAX_ELEMENTS) throw argError('options.numFeatures', `at most ${Math.floor(MAX_ELEMENTS / dIn)} features for dIn ${dIn}`, n);
  if (o.firing === undefined) throw argError('options.firing', 'an options object', undefined);
  const seed = o.seed === undefined ? 0n : checkSeed('options.seed', o.seed);
  const p = firingProbabilities(o.firing, n, seed);
  const magnitude = magnitudePlan(o.magnitude);
  const numRows = o.numRows === undefined ? 65536 : checkInt('options.numRows', o.numRows, 1, MAX_ROWS);
  const copula = copulaPlan(o.correlation, n, seed);
  const hierarchy = hierarchyPlan(o.hierarchy, n);
  const features = makeFeatures(n, dIn, new Rng(seed));
  const sampler = new Sampler(features, p, magnitude, copula, seed, dIn, hierarchy);
  const checkRange = rangeChecker(dIn, numRows);
  const source = syntheticSource(dIn, numRows, (r, out, offset) => sampler.row(r, out, offset));

  return {
    source,
    // The sampler keeps its own: a caller changing this array changes no row. (A typed array
    // cannot be made read-only, so one shared array would let a caller's write change rows.)
    features: copyOf(features, `the copy of the ${n} x ${dIn} feature matrix`, 'options.numFeatures or options.dIn'),
    probabilities: Float64Array.from(p),
    rows(start: number, count: number): Float32Array {
      const [s, c] = checkRange(start, count);
      const out = allocate(Float32Array, c * dIn, `rows(${s}, ${c}) of ${dIn} dimensions`, 'count');
      for (let t = 0; t < c; t++) sampler.row(s + t, out, t * dIn);
      return out;
    },
    codes(start: number, count: number): SparseCodes {
      const [s, c] = checkRange(start, count);
      return collectCodes(s, c, count, (r) => sampler.sample(r), sampler.active, sampler.values);
    },
    correlationMatrix(): Float64Array | undefined {
      if (copula.kind === 'none') return undefined;
      if (copula.kind === 'cholesky') return Float64Array.from(copula.sigma);
      const { U, k } = copula;
      if (n > MAX_CORRELATION_MATRIX_FEATURES) {
        throw new SaekitError(
          'ERR_SAEKIT_MEMORY',
          `correlationMatrix() of ${n} features would be a ${n} x ${n} float64 matrix (${((n * n * 8) / 2 ** 30).toFixed(1)} GiB); ` +
            `it is refused above ${MAX_CORRELATION_MATRIX_FEATURES} features (2 GiB): the data itself needs no such matrix`,
        );
      }
      const S = new Float64Array(n * n);
      for (let i = 0; i < n; i++) {
        S[i * n + i] = 1;
        for (let j = 0; j < i; j++) {
          let s = 0;
          for (let a = 0; a < k; a++) s += U[i * k + a]! * U[j * k + a]!;
          S[i * n + j] = s;
          S[j * n + i] = s;
        }
      }
      return S;
    },
  };
}

