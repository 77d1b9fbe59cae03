/**
 * Compat generators: the synthetic data of two published SAE studies, quirks included
 * (docs/references.md §4.3, §4.4 and §4.6). saekit's principled generator is
 * synthetic.superposition (synthetic.ts, §4.5 semantics); these reproduce what the original code
 * did, so that its results can be compared like with like, and label their results as compat.
 *
 * ## synthetic.sharkey (§4.3: Sharkey, Braun and Millidge 2022; HoagyC/sparse_coding)
 * Features: numFeatures standard-normal vectors in R^dIn normalised to unit length.
 * - 'uncorrelated': feature i fires with p_i = decay^i * numActive / numFeatures, independently
 *   per row, with no renormalisation: at the defaults (512 features, numActive 5, decay 0.99) a
 *   row has 5/512 * sum_i 0.99^i = 0.9709 active features on average, not 5.
 * - 'correlated': R = (U + U^T) / 2 with U ~ U[0, 1) [numFeatures, numFeatures]; when its least
 *   eigenvalue l is negative, R - 1.001 l I. Each generation batch of `batchSize` rows draws ONE
 *   z ~ MVN(0, R) and uses p_i = Phi(z_i) decay^i, rescaled so that mean_i p_i = numActive /
 *   numFeatures, for every row of the batch: within a batch features fire independently, and
 *   the correlation acts across batches only. A row where nothing fired gets one feature, drawn
 *   uniformly, with code 1.
 * Codes are U(0, 1) where a feature fires; with `featureStrengths` (sc_datasets/random_dataset.py)
 * each is multiplied by a second U(0, 1) (`codes()` returns the product, which is what is summed).
 * Probabilities above 1 fire always (as `rand <= p` does).
 *
 * ## synthetic.mfr (§4.4: mutual feature regularisation, utils/data_utils.py)
 * Features: randn(dIn, numFeatures), not normalised, rounded to float16 (dtype 'float16', the
 * default: the original stores them in fp16) or to float32. The features are cut into `groups`
 * groups of floor(numFeatures / groups) consecutive features; the tail (numFeatures mod groups
 * features: 504-511 at the defaults) is never used. Each generation batch draws, ONCE per group,
 * an active set of activePerPoint features by weighted sampling without replacement with weights
 * decay^j (j: the rank within the group); each row picks a group uniformly and gets U(0, 1)
 * coefficients on that group's active set of its batch, so all the rows of a batch that pick a
 * group share its support. x = coeffs @ features^T; with dtype 'float16' the coefficients are
 * torch.rand's float16 uniforms, k / 2048 for k in [0, 2047] (0 with probability 1/2048, never
 * 1), and the rows float16 values too (each row summed in float64 and rounded once to float16).
 * A coefficient of 0 adds nothing to its row and is not listed in codes() (whose values are all
 * > 0), so a row has at most, not always, activePerPoint codes.
 *
 * ## Stream layout (deterministic from the seed)
 * Each random quantity comes from synthetic.ts's xoshiro128** generator seeded from the Philox
 * block (counter = (index mod 2^32, index div 2^32, purpose, tag), key = seed), with tag
 * 0x5348524b ('SHRK') for sharkey and 0x4d465247 ('MFRG') for mfr. Purposes: 1 = feature
 * `index` (dIn normals: sharkey normalises them, mfr rounds them), 2 = row `index` of U (sharkey
 * correlated: numFeatures uniforms w * 2^-32), 3 = data row `index`, 6 = generation batch
 * `index` (sharkey correlated: the numFeatures normals e of z = L e, L the Cholesky factor of R;
 * mfr: per group in order, its groupSize keys). Row r belongs to generation batch
 * floor(r / batchSize), so it is a pure function of (options, seed, r), whatever batches
 * source.batches() cuts the rows into.
 *
 * Within a sharkey row: the firing tests (in decreasing order of p, ties by index: geometric
 * skipping with thinning as in synthetic.ts, which is exactly independent Bernoulli(p_i) firing);
 * in correlated mode, if nothing fired, one word w for the feature floor(w * 2^-32 *
 * numFeatures); then per fired feature in increasing index its code (w + 0.5) * 2^-32 rounded to
 * float32 (1 for that fallback feature) and, with featureStrengths, its strength likewise, the
 * product rounded to float32. Within an mfr row: one word w for the group floor(w * 2^-32 *
 * groups), then activePerPoint coefficients in increasing feature index: (w >>> 21) / 2048
 * (float16, exact) or (w + 0.5) * 2^-32 rounded to float32 (float32). An mfr batch's keys are log(-log(1 - u)) - j log(decay), u a 53-bit
 * uniform: the activePerPoint smallest are an exact weighted sample without replacement
 * (exponential keys, Efraimidis and Spirakis 2006), the same law as torch.multinomial's
 * successive draws.
 *
 * Normals are synthetic.ts's ziggurat; Phi its float64 CDF. Each coordinate of a row is summed
 * in float64 over the row's codes in increasing feature index and rounded once (to float32, or
 * float16 for mfr's default): `codes()` returns exactly the values summed.
 */
import { argError, SaekitError } from '../errors.js';
import { checkBool, checkInt, checkOneOf, checkOptions, checkSeed, optionNames } from '../validate.js';
import {
  accumulateRow,
  allocate,
  choleskyLower,
  collectCodes,
  copyOf,
  lowerTimes,
  makeFeatures,
  normalCdf,
  put,
  rangeChecker,
  Rng,
  superposition,
  syntheticSource,
  type SparseCodes,
} from './synthetic.js';
import type { OwnedActivationSource } from './types.js';

const SHARKEY_OPTIONS = optionNames<SharkeyOptions>({ mode: true, dIn: true, numFeatures: true, numActive: true, decay: true, batchSize: true, featureStrengths: true, numRows: true, seed: true });
const MFR_OPTIONS = optionNames<MfrOptions>({ dIn: true, numFeatures: true, groups: true, activePerPoint: true, decay: true, batchSize: true, dtype: true, numRows: true, seed: true });

// ---------------------------------------------------------------------------------------------
// Options and results.

/** Options of synthetic.sharkey() (docs/references.md §4.3); every one has the reference's default. */
export interface SharkeyOptions {
  /** 'uncorrelated' (replicate_toy_models.py) or 'correlated' (one MVN draw per generation batch). Default 'uncorrelated'. */
  mode?: 'uncorrelated' | 'correlated';
  /** Dimension of the rows (activation_dim). Default 256. */
  dIn?: number;
  /** Number of ground-truth features (n_ground_truth_components). Default 512; at most 4096 in correlated mode (R is dense). */
  numFeatures?: number;
  /** feature_num_nonzero: p_i = decay^i * numActive / numFeatures (not renormalised). A number in [0, numFeatures]. Default 5. */
  numActive?: number;
  /** feature_prob_decay, in (0, 1]. Default 0.99. */
  decay?: number;
  /** Rows per generation batch (batch_size): correlated mode draws one z per batch. Default 4096. */
  batchSize?: number;
  /** Multiply each code by a second U(0, 1), as sc_datasets/random_dataset.py does ("feature_strengths"). Default false. */
  featureStrengths?: boolean;
  /** Rows per epoch; the source is finite. Default 65536, at most 2^48. */
  numRows?: number;
  /** Default 0. */
  seed?: number | bigint;
}

/** Options of synthetic.mfr() (docs/references.md §4.4); every one has the reference's default. */
export interface MfrOptions {
  /** Dimension of the rows (num_features). Default 256. */
  dIn?: number;
  /** Number of ground-truth features (num_ground_features). Default 512. */
  numFeatures?: number;
  /** num_feature_groups: groups of floor(numFeatures / groups) features; the rest are never used. Default 12. */
  groups?: number;
  /** num_active_features_per_point, at most the group size. Default 32. */
  activePerPoint?: number;
  /** decay_rate, in (0, 1]: feature j of a group is drawn with weight decay^j. Default 0.99. */
  decay?: number;
  /**
   * Rows per generation batch (data_batch_size): each group's support is drawn once per batch.
   * Default 1,000,000, so the default numRows are one batch, as the original's default dataset.
   */
  batchSize?: number;
  /**
   * 'float16' (default, as the original stores them): features, coefficients and rows are
   * float16 values (held in float32 arrays), the coefficients torch.rand's half-precision
   * k / 2048, k in [0, 2047]; 'float32': U(0, 1] coefficients, everything rounded to float32 only.
   */
  dtype?: 'float16' | 'float32';
  /** Rows per epoch; the source is finite. Default 65536, at most 2^48 (the original's total_data_points default is 1000). */
  numRows?: number;
  /** Default 0. */
  seed?: number | bigint;
}

/** What a compat generator returns: superposition()'s result where it makes sense, labelled compat. */
export interface CompatData {
  /** Which study's generator made the data. */
  compat: 'sharkey' | 'mfr';
  /** The rows as an ActivationSource (numRows rows per epoch). */
  source: OwnedActivationSource;
  /** Ground-truth features [numFeatures, dIn] (a copy: changing it changes no row). */
  features: Float32Array;
  /**
   * Firing probability of each feature [numFeatures] when it is the same in every generation
   * batch (sharkey 'uncorrelated'); undefined where it changes per batch (see batchProbabilities).
   */
  probabilities: Float64Array | undefined;
  /** Rows per generation batch (the batchSize option). */
  batchSize: number;
  /** Number of generation batches, ceil(numRows / batchSize). */
  numBatches: number;
  /**
   * The firing probability of each feature [numFeatures] in the rows of generation batch `batch`
   * (sharkey: p_i before the all-zero-row fix; mfr: 1 / groups on each group's support, times
   * 2047 / 2048 with float16, whose coefficient is 0, so not a code, 1 time in 2048; else 0).
   */
  batchProbabilities(batch: number): Float64Array;
  /** Rows [start, start + count) in generation order, [count, dIn] (random access). */
  rows(start: number, count: number): Float32Array;
  /** Ground-truth codes of rows [start, start + count), the values summed into the rows. */
  codes(start: number, count: number): SparseCodes;
  /** Sharkey correlated mode's R (after the eigenvalue shift) [numFeatures, numFeatures], a fresh copy; otherwise undefined. */
  correlationMatrix(): Float64Array | undefined;
}

/** What synthetic.sharkey() returns. */
export interface SharkeyData extends CompatData {
  compat: 'sharkey';
  /** The firing mode. */
  mode: 'uncorrelated' | 'correlated';
}

/** What synthetic.mfr() returns. */
export interface MfrData extends CompatData {
  compat: 'mfr';
  /** floor(numFeatures / groups): group g is features [g * groupSize, (g + 1) * groupSize). */
  groupSize: number;
  /**
   * The active set of every group in generation batch `batch`, [groups, activePerPoint]
   * (increasing within a group): each row of the batch that picks group g has coefficients on
   * exactly these features (codes() lists those that are not 0: with float16 a coefficient is 0
   * with probability 1/2048).
   */
  supports(batch: number): Int32Array;
}

// ---------------------------------------------------------------------------------------------
// Constants and small helpers.

const SHARKEY_TAG = 0x5348524b; // 'SHRK'
const MFR_TAG = 0x4d465247; // 'MFRG'
const PURPOSE_FEATURES = 1;
const PURPOSE_CORRELATION = 2;
const PURPOSE_ROWS = 3;
const PURPOSE_BATCH = 6;
const TWO32 = 4294967296;
const MAX_ROWS = 2 ** 48;
const MAX_ELEMENTS = 2 ** 31 - 1;
/** Most features of sharkey's correlated mode: R, U and L are dense (3 x 128 MiB at 4096) and its setup O(n^3). */
const MAX_CORRELATED_FEATURES = 4096;
/** Probabilities at or above this are tested directly, not by geometric skipping. */
const DIRECT_P = 0.25;
/** Bytes of per-batch state a generator caches (firing plans or supports of recent batches)... */
const CACHE_BYTES = 64 * 2 ** 20;
/** ...in at most this many batches, each counted with 1 KiB for its objects. */
const CACHE_BATCHES = 4096;
const CACHE_OVERHEAD = 1024;

/** How many batches of `bytes` each the cache keeps (at least 2: only for sharkey's plans, n * 32 <= 128 KiB bytes). */
function cacheCapacity(bytes: number): number {
  return Math.max(2, Math.min(CACHE_BATCHES, Math.floor(CACHE_BYTES / (bytes + CACHE_OVERHEAD))));
}

/**
 * How mfr caches its batches within CACHE_BYTES: each batch's supports (groups x k int32) and,
 * when two or more batches with it fit the budget, its supports' features packed as float64
 * [groups, dIn, k] (`packed`); otherwise rows are summed from the float32 features directly
 * (the same sums in the same order, so the same bits). `bytes` is what one cached batch holds,
 * `capacity` how many are kept: capacity * bytes stays within the budget, but for one batch of
 * supports over 32 MiB (more than 8M features in use), which is kept alone. @internal
 */
export function mfrCachePlan(groups: number, k: number, dIn: number): { packed: boolean; bytes: number; capacity: number } {
  const supBytes = groups * k * 4 + CACHE_OVERHEAD;
  const packedBytes = supBytes + groups * dIn * k * 8;
  const fit = (bytes: number) => Math.min(CACHE_BATCHES, Math.floor(CACHE_BYTES / bytes));
  if (fit(packedBytes) >= 2) return { packed: true, bytes: packedBytes, capacity: fit(packedBytes) };
  return { packed: false, bytes: supBytes, capacity: Math.max(1, fit(supBytes)) };
}

function checkReal(name: string, value: unknown, min: number, max: number, openMin = false): number {
  const ok = typeof value === 'number' && Number.isFinite(value) && (openMin ? value > min : value >= min) && value <= max;
  if (!ok) throw argError(name, `finite number ${openMin ? '>' : '>='} ${min} and <= ${max}`, value);
  return value;
}

/** The index of the high 32-bit word of a float64 in a Uint32Array view (platform byte order). */
const HI = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1 ? 1 : 0;
const F64 = new Float64Array(1);
const U32 = new Uint32Array(F64.buffer);
/** 2^(e + 42) for e = -14 .. 15 (index e + 14): adding and subtracting it rounds to float16's quantum 2^(e - 10). */
const F16_MAGIC = Float64Array.from({ length: 30 }, (_, i) => 2 ** (i - 14 + 42));

/**
 * x rounded to the nearest float16 value (ties to even, subnormals included, +-Infinity past
 * 65504), as a number. One rounding from float64: a + 2^(e + 42) has float64 quantum 2^(e - 10),
 * float16's for |x| in [2^e, 2^(e+1)) (e >= -14; the subnormals share e = -14's). @internal
 */
export function roundFloat16(x: number): number {
  const a = Math.abs(x);
  if (!(a < 65520)) return a !== a ? NaN : x > 0 ? Infinity : -Infinity;
  F64[0] = a;
  let e = (U32[HI]! >>> 20) - 1023;
  if (e < -14) e = -14;
  const m = F16_MAGIC[e + 14]!;
  const r = a + m - m;
  return x < 0 ? -r : r;
}

/**
 * Writes sum_t vals[t] * P[at + c * k + t] (float64, increasing t) for c < dIn into
 * out[offset + c] (rounded by `round` when given, e.g. to float16): a row from its support's
 * features packed coordinate-major (the same sums, terms and order as accumulateRow).
 */
function packedRow(P: Float64Array, at: number, k: number, dIn: number, vals: Float32Array, out: Float32Array, offset: number, round: ((x: number) => number) | null): void {
  let c = 0;
  for (; c + 3 < dIn; c += 4) {
    const b0 = at + c * k;
    const b1 = b0 + k;
    const b2 = b1 + k;
    const b3 = b2 + k;
    let s0 = 0;
    let s1 = 0;
    let s2 = 0;
    let s3 = 0;
    for (let t = 0; t < k; t++) {
      const v = vals[t]!;
      s0 += v * P[b0 + t]!;
      s1 += v * P[b1 + t]!;
      s2 += v * P[b2 + t]!;
      s3 += v * P[b3 + t]!;
    }
    put(out, offset + c, s0, round);
    put(out, offset + c + 1, s1, round);
    put(out, offset + c + 2, s2, round);
    put(out, offset + c + 3, s3, round);
  }
  for (; c < dIn; c++) {
    const b = at + c * k;
    let s = 0;
    for (let t = 0; t < k; t++) s += vals[t]! * P[b + t]!;
    put(out, offset + c, s, round);
  }
}

/** Per-batch state of the batches seen last (insertion order: the oldest goes first). */
class BatchCache<T> {
  private readonly map = new Map<number, T>();
  constructor(
    private readonly capacity: number,
    private readonly make: (batch: number) => T,
  ) {}

  get(batch: number): T {
    let v = this.map.get(batch);
    if (v === undefined) {
      v = this.make(batch);
      if (this.map.size >= this.capacity) this.map.delete(this.map.keys().next().value!);
      this.map.set(batch, v);
    }
    return v;
  }
}

function checkBatch(batch: unknown, numBatches: number): number {
  return checkInt('batch', batch, 0, numBatches - 1);
}

// ---------------------------------------------------------------------------------------------
// Sharkey et al.: independent firing at given probabilities.

/**
 * Independent Bernoulli(p_i) firing, sampled in O(fired + runs) per row: positions in decreasing
 * order of p are cut into runs within a factor 2 of their first value (all of the rest once
 * that is below 1 / (64 n): at most 1/64 wasted candidates per row), sampled by geometric
 * skipping at the run's first p with thinning; p above 1/4 is tested directly, p >= 1 always fires.
 */
class FiringPlan {
  /** Position -> feature, in decreasing p (ties by feature). */
  private readonly order: Int32Array;
  /** p at each position. */
  private readonly q: Float64Array;
  private readonly accept: Float64Array;
  private readonly runStart: number[] = [];
  private readonly runEnd: number[] = [];
  /** log(1 - pmax) of a skipping run; 0: test directly; -Infinity: always fires. */
  private readonly runLogQ: number[] = [];
  private readonly sorted: boolean;

  constructor(readonly p: Float64Array) {
    const n = p.length;
    let monotone = true;
    for (let i = 1; i < n && monotone; i++) if (p[i]! > p[i - 1]!) monotone = false;
    this.sorted = monotone;
    this.order = new Int32Array(n);
    for (let i = 0; i < n; i++) this.order[i] = i;
    if (!monotone) this.order.sort((a, b) => p[b]! - p[a]! || a - b);
    this.q = new Float64Array(n);
    for (let t = 0; t < n; t++) this.q[t] = p[this.order[t]!]!;
    this.accept = new Float64Array(n);
    const q = this.q;
    const tailCut = 1 / (64 * n);
    let i = 0;
    while (i < n && q[i]! > 0) {
      const qi = q[i]!;
      let j = i + 1;
      if (qi >= 1) {
        while (j < n && q[j]! >= 1) j++;
        this.addRun(i, j, -Infinity);
      } else if (qi > DIRECT_P) {
        while (j < n && q[j]! > DIRECT_P) j++;
        this.addRun(i, j, 0);
      } else {
        const tail = qi < tailCut;
        while (j < n && q[j]! > 0 && (tail || q[j]! > qi / 2)) j++;
        for (let t = i; t < j; t++) this.accept[t] = q[t]! / qi;
        this.addRun(i, j, Math.log1p(-qi));
      }
      i = j;
    }
  }

  private addRun(start: number, end: number, logQ: number): void {
    this.runStart.push(start);
    this.runEnd.push(end);
    this.runLogQ.push(logQ);
  }

  /** Draws one row's fired features into active (increasing); returns their number. */
  sample(rng: Rng, active: Int32Array): number {
    const { order, q, accept, runStart, runEnd, runLogQ } = this;
    let count = 0;
    for (let r = 0; r < runStart.length; r++) {
      const start = runStart[r]!;
      const end = runEnd[r]!;
      const logQ = runLogQ[r]!;
      if (logQ === -Infinity) {
        for (let t = start; t < end; t++) active[count++] = order[t]!;
      } else if (logQ === 0) {
        for (let t = start; t < end; t++) if (rng.next() / TWO32 < q[t]!) active[count++] = order[t]!;
      } else {
        let pos = start - 1;
        for (;;) {
          const u = 1 - rng.uniform53(); // (0, 1]
          pos += 1 + Math.floor(Math.log(u) / logQ);
          if (pos >= end) break;
          const a = accept[pos]!;
          if (a >= 1 || rng.next() / TWO32 < a) active[count++] = order[pos]!;
        }
      }
    }
    if (!this.sorted) {
      for (let t = 1; t < count; t++) {
        const v = active[t]!;
        let s = t - 1;
        while (s >= 0 && active[s]! > v) {
          active[s + 1] = active[s]!;
          s--;
        }
        active[s + 1] = v;
      }
    }
    return count;
  }
}

/**
 * The least eigenvalue of the symmetric matrix S [n, n]: Householder reduction to tridiagonal
 * form (float64, O(n^3)), then bisection on the Sturm sequence count. @internal
 */
export function minEigenvalue(S: Float64Array, n: number): number {
  const A = Float64Array.from(S);
  const d = new Float64Array(n);
  const e = new Float64Array(Math.max(0, n - 1));
  const v = new Float64Array(n);
  const w = new Float64Array(n);
  for (let k = 0; k + 2 < n; k++) {
    d[k] = A[k * n + k]!;
    let norm2 = 0;
    for (let i = k + 1; i < n; i++) norm2 += A[i * n + k]! * A[i * n + k]!;
    if (norm2 === 0) continue; // already tridiagonal in this column: e[k] = 0
    const x0 = A[(k + 1) * n + k]!;
    const alpha = x0 > 0 ? -Math.sqrt(norm2) : Math.sqrt(norm2);
    e[k] = alpha;
    // v = (x - alpha e1) / |x - alpha e1|; H = I - 2 v v^T maps x to alpha e1.
    let vn2 = 0;
    for (let i = k + 1; i < n; i++) {
      v[i] = A[i * n + k]!;
      if (i === k + 1) v[i]! -= alpha;
      vn2 += v[i]! * v[i]!;
    }
    const inv = 1 / Math.sqrt(vn2);
    for (let i = k + 1; i < n; i++) v[i]! *= inv;
    // H A22 H = A22 - 2 v w^T - 2 w v^T with p = A22 v, w = p - (v . p) v.
    let K = 0;
    for (let i = k + 1; i < n; i++) {
      let s = 0;
      const row = i * n;
      for (let j = k + 1; j < n; j++) s += A[row + j]! * v[j]!;
      w[i] = s;
      K += v[i]! * s;
    }
    for (let i = k + 1; i < n; i++) w[i]! -= K * v[i]!;
    for (let i = k + 1; i < n; i++) {
      const vi2 = 2 * v[i]!;
      const wi2 = 2 * w[i]!;
      const row = i * n;
      for (let j = k + 1; j < n; j++) A[row + j]! -= vi2 * w[j]! + wi2 * v[j]!;
    }
  }
  if (n >= 2) {
    d[n - 2] = A[(n - 2) * n + n - 2]!;
    e[n - 2] = A[(n - 1) * n + n - 2]!;
  }
  d[n - 1] = A[(n - 1) * n + n - 1]!;
  // Gershgorin bounds, then bisection for the least x with at least one eigenvalue below it.
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < n; i++) {
    const r = (i > 0 ? Math.abs(e[i - 1]!) : 0) + (i < n - 1 ? Math.abs(e[i]!) : 0);
    lo = Math.min(lo, d[i]! - r);
    hi = Math.max(hi, d[i]! + r);
  }
  const below = (x: number): number => {
    let count = 0;
    let q = d[0]! - x;
    if (q < 0) count++;
    for (let i = 1; i < n; i++) {
      if (q === 0) q = Number.MIN_VALUE * 2 ** 60;
      q = d[i]! - x - (e[i - 1]! * e[i - 1]!) / q;
      if (q < 0) count++;
    }
    return count;
  };
  for (let it = 0; it < 2100; it++) {
    const mid = 0.5 * (lo + hi);
    if (mid <= lo || mid >= hi) break;
    if (below(mid) >= 1) hi = mid;
    else lo = mid;
  }
  return 0.5 * (lo + hi);
}

/** The result's rows() and codes() over a generator's row(r) and sample(r) (its codes into active/values). */
function rowsAndCodes(
  dIn: number,
  checkRange: (start: unknown, count: unknown) => [number, number],
  row: (r: number, out: Float32Array, offset: number) => void,
  sample: (r: number) => number,
  active: Int32Array,
  values: Float32Array,
): Pick<CompatData, 'rows' | 'codes'> {
  return {
    rows(start: number, count: number): Float32Array {
      const [s, c] = checkRange(start, count);
      const out = allocate(Float32Array, c * dIn, `rows(${s}, ${c}) of ${dIn} dimensions`, 'count');
      for (let t = 0; t < c; t++) row(s + t, out, t * dIn);
      return out;
    },
    codes(start: number, count: number): SparseCodes {
      const [s, c] = checkRange(start, count);
      return collectCodes(s, c, count, sample, active, values);
    },
  };
}

/**
 * Sharkey, Braun and Millidge's toy data (docs/references.md §4.3, HoagyC/sparse_coding), quirks
 * included: in 'uncorrelated' mode p_i = decay^i * numActive / numFeatures without
 * renormalisation (about 0.97 features per row at the defaults, not 5); in 'correlated' mode one
 * MVN(0, R) draw per generation batch sets the batch's firing probabilities, so features fire
 * independently within a batch and are correlated only across batches, and a row where nothing
 * fired gets one random feature with code 1. Rows are x = sum_i c_i f_i with unit features f_i.
 * The result is labelled `compat: 'sharkey'`; synthetic.superposition is the principled generator.
 *
 * Rows are generated on demand (source.batches() on the JS thread in ~20 ms slices);
 * sharkey() itself draws the features and, in correlated mode, builds R, its least eigenvalue
 * and its Cholesky factor: O(numFeatures^3) at once on the JS thread, not in slices, so the
 * event loop waits for it. Measured on one core: about 0.3 s at 512 features, 3 s at 1024 and
 * 20 to 60 s at 2048; expect several minutes towards the 4096 limit.
 *
 * @example
 * const data = synthetic.sharkey({ mode: 'uncorrelated', seed: 1 }); // 256 dims, 512 features
 * for await (const b of data.source.batches({ batchSize: 4096 })) { ... }
 * const { indptr } = data.codes(0, 65536); // all the rows (numRows defaults to 65536): indptr[65536] / 65536 is about 0.97
 */
export function sharkey(options?: SharkeyOptions): SharkeyData {
  const o = checkOptions('options', options, SHARKEY_OPTIONS);
  const mode = o.mode === undefined ? 'uncorrelated' : checkOneOf('options.mode', o.mode, ['uncorrelated', 'correlated'] as const);
  const dIn = o.dIn === undefined ? 256 : checkInt('options.dIn', o.dIn, 1, 1 << 24);
  const maxN = mode === 'correlated' ? MAX_CORRELATED_FEATURES : 1 << 24;
  const n = o.numFeatures === undefined ? 512 : checkInt('options.numFeatures', o.numFeatures, 1, maxN);
  if (n * dIn > MAX_ELEMENTS) throw argError('options.numFeatures', `at most ${Math.floor(MAX_ELEMENTS / dIn)} features for dIn ${dIn}`, n);
  const numActive = o.numActive === undefined ? 5 : checkReal('options.numActive', o.numActive, 0, n);
  const decay = o.decay === undefined ? 0.99 : checkReal('options.decay', o.decay, 0, 1, true);
  const batchSize = o.batchSize === undefined ? 4096 : checkInt('options.batchSize', o.batchSize, 1, MAX_ROWS);
  const strengths = o.featureStrengths === undefined ? false : checkBool('options.featureStrengths', o.featureStrengths);
  const numRows = o.numRows === undefined ? 65536 : checkInt('options.numRows', o.numRows, 1, MAX_ROWS);
  const seed = o.seed === undefined ? 0n : checkSeed('options.seed', o.seed);
  const numBatches = Math.ceil(numRows / batchSize);

  const rng = new Rng(seed, SHARKEY_TAG);
  const features = makeFeatures(n, dIn, rng);
  const decayPow = new Float64Array(n);
  for (let i = 0; i < n; i++) decayPow[i] = Math.pow(decay, i);
  const frac = numActive / n;

  let R: Float64Array | undefined;
  let plans: BatchCache<FiringPlan>;
  if (mode === 'uncorrelated') {
    const p = new Float64Array(n);
    for (let i = 0; i < n; i++) p[i] = decayPow[i]! * frac;
    const plan = new FiringPlan(p);
    plans = new BatchCache(1, () => plan);
  } else {
    R = allocate(Float64Array, n * n, `the ${n} x ${n} correlation matrix`, 'options.numFeatures');
    const U = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      rng.reseed(PURPOSE_CORRELATION, i);
      for (let j = 0; j < n; j++) U[j] = rng.next() / TWO32;
      // R = (U + U^T) / 2: row i of U adds to R[i][j] and R[j][i].
      for (let j = 0; j < n; j++) {
        R[i * n + j]! += 0.5 * U[j]!;
        R[j * n + i]! += 0.5 * U[j]!;
      }
    }
    const lambda = minEigenvalue(R, n);
    if (lambda < 0) for (let i = 0; i < n; i++) R[i * n + i]! -= 1.001 * lambda;
    const L = choleskyLower(R, n);
    if (!(L instanceof Float64Array)) {
      // After the shift R's least eigenvalue is 0.001 |lambda|; only a rare R with lambda >= 0 and a
      // pivot under 1e-12 (nearly singular) lands here.
      throw new SaekitError('ERR_SAEKIT_ARG', `Expected options.seed to give a positive definite correlation matrix but its Cholesky pivot at row ${L.row} is ${L.pivot}; pass another seed`);
    }
    const batchRng = new Rng(seed, SHARKEY_TAG);
    const e = new Float64Array(n);
    const z = new Float64Array(n);
    plans = new BatchCache(cacheCapacity(n * 32), (b) => {
      batchRng.reseed(PURPOSE_BATCH, b);
      for (let i = 0; i < n; i++) e[i] = batchRng.normal();
      lowerTimes(L, e, z, n);
      const p = new Float64Array(n);
      let sum = 0;
      for (let i = 0; i < n; i++) {
        p[i] = normalCdf(z[i]!) * decayPow[i]!;
        sum += p[i]!;
      }
      // Rescaled to mean numActive / n. (A sum of 0 needs every z_i below -38: then uniform.)
      if (sum > 0) for (let i = 0; i < n; i++) p[i]! *= frac / (sum / n);
      else p.fill(frac);
      return new FiringPlan(p);
    });
  }

  const active = new Int32Array(n);
  const values = new Float32Array(n);
  const bases = new Int32Array(n);
  const correlated = mode === 'correlated';
  const sample = (r: number): number => {
    const plan = plans.get(Math.floor(r / batchSize));
    rng.reseed(PURPOSE_ROWS, r);
    let count = plan.sample(rng, active);
    let fallback = false;
    if (correlated && count === 0) {
      active[0] = Math.floor((rng.next() / TWO32) * n);
      count = 1;
      fallback = true;
    }
    for (let t = 0; t < count; t++) {
      let c = fallback ? 1 : Math.fround((rng.next() + 0.5) / TWO32);
      if (strengths) c = Math.fround(c * Math.fround((rng.next() + 0.5) / TWO32));
      values[t] = c;
    }
    return count;
  };
  const row = (r: number, out: Float32Array, offset: number): void => {
    const count = sample(r);
    accumulateRow(features, dIn, active, values, count, bases, out, offset, null);
  };
  const checkRange = rangeChecker(dIn, numRows);

  return {
    compat: 'sharkey',
    mode,
    source: syntheticSource(dIn, numRows, row),
    features: copyOf(features, `the copy of the ${n} x ${dIn} feature matrix`, 'options.numFeatures or options.dIn'),
    probabilities: correlated ? undefined : Float64Array.from(plans.get(0).p),
    batchSize,
    numBatches,
    batchProbabilities(batch: number): Float64Array {
      return Float64Array.from(plans.get(checkBatch(batch, numBatches)).p);
    },
    ...rowsAndCodes(dIn, checkRange, row, sample, active, values),
    correlationMatrix(): Float64Array | undefined {
      return R ? Float64Array.from(R) : undefined;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// MFR: grouped features with one support per group per generation batch.

/**
 * The synthetic data of the mutual-feature-regularisation study (docs/references.md §4.4,
 * utils/data_utils.py::generate_synthetic_data), quirks included: unnormalised randn features
 * (float16 by default), groups of floor(numFeatures / groups) features with the tail never
 * used, and each group's active set drawn ONCE per generation batch (weighted sampling without
 * replacement, weights decay^j), so every row of a batch that picks a group has the same
 * support and only its U(0, 1) coefficients differ (float16: k / 2048, as torch.rand in half
 * precision; a coefficient of 0 is not listed in codes()). The result is labelled `compat: 'mfr'`.
 *
 * Rows are generated on demand (source.batches() on the JS thread in ~20 ms slices); mfr()
 * itself draws the features (numFeatures x dIn normals) at once. Each generation batch's
 * supports are cached, with their features packed for speed when that fits 64 MiB
 * (mfrCachePlan).
 *
 * @example
 * const data = synthetic.mfr({ seed: 1 }); // 256 dims, 512 features, 12 groups of 42, 32 active
 * const support = data.supports(0); // [12, 32]: features 504-511 never appear
 * for await (const b of data.source.batches({ batchSize: 4096 })) { ... }
 */
export function mfr(options?: MfrOptions): MfrData {
  const o = checkOptions('options', options, MFR_OPTIONS);
  const dIn = o.dIn === undefined ? 256 : checkInt('options.dIn', o.dIn, 1, 1 << 24);
  const n = o.numFeatures === undefined ? 512 : checkInt('options.numFeatures', o.numFeatures, 1, 1 << 24);
  if (n * dIn > MAX_ELEMENTS) throw argError('options.numFeatures', `at most ${Math.floor(MAX_ELEMENTS / dIn)} features for dIn ${dIn}`, n);
  const groups = o.groups === undefined ? 12 : checkInt('options.groups', o.groups, 1, n);
  const groupSize = Math.floor(n / groups);
  let k = 32;
  if (o.activePerPoint !== undefined) {
    if (typeof o.activePerPoint !== 'number' || !Number.isInteger(o.activePerPoint) || o.activePerPoint < 0 || o.activePerPoint > groupSize) {
      throw argError('options.activePerPoint', `integer between 0 and ${groupSize} (the group size, floor(numFeatures / groups))`, o.activePerPoint);
    }
    k = o.activePerPoint;
  } else if (k > groupSize) {
    throw new SaekitError('ERR_SAEKIT_ARG', `Expected options.activePerPoint (default 32) to be at most the group size ${groupSize} (floor(${n} / ${groups})); pass a smaller activePerPoint`);
  }
  const decay = o.decay === undefined ? 0.99 : checkReal('options.decay', o.decay, 0, 1, true);
  const batchSize = o.batchSize === undefined ? 1_000_000 : checkInt('options.batchSize', o.batchSize, 1, MAX_ROWS);
  const half = (o.dtype === undefined ? 'float16' : checkOneOf('options.dtype', o.dtype, ['float16', 'float32'] as const)) === 'float16';
  const numRows = o.numRows === undefined ? 65536 : checkInt('options.numRows', o.numRows, 1, MAX_ROWS);
  const seed = o.seed === undefined ? 0n : checkSeed('options.seed', o.seed);
  const numBatches = Math.ceil(numRows / batchSize);

  const rng = new Rng(seed, MFR_TAG);
  const features = allocate(Float32Array, n * dIn, `the ${n} x ${dIn} feature matrix`, 'options.numFeatures or options.dIn');
  for (let j = 0; j < n; j++) {
    rng.reseed(PURPOSE_FEATURES, j);
    for (let c = 0; c < dIn; c++) {
      const g = rng.normal();
      features[j * dIn + c] = half ? roundFloat16(g) : g;
    }
  }

  // Supports of a batch: per group, the k smallest exponential keys (weighted sampling without replacement).
  const logDecay = Math.log(decay);
  const batchRng = new Rng(seed, MFR_TAG);
  const keys = new Float64Array(groupSize);
  const idx = new Int32Array(groupSize);
  // Per batch: the supports and, when they fit the cache budget, each group's support features
  // packed coordinate-major ([groups, dIn, k] float64), so a row's coordinate is a contiguous dot product.
  const plan = mfrCachePlan(groups, k, dIn);
  const supportCache = new BatchCache<{ sup: Int32Array; packed: Float64Array | null }>(plan.capacity, (b) => {
    batchRng.reseed(PURPOSE_BATCH, b);
    const sup = new Int32Array(groups * k);
    for (let g = 0; g < groups; g++) {
      for (let j = 0; j < groupSize; j++) {
        keys[j] = Math.log(-Math.log(1 - batchRng.uniform53())) - j * logDecay;
        idx[j] = j;
      }
      idx.sort((a, c) => keys[a]! - keys[c]! || a - c);
      const chosen = idx.slice(0, k).sort();
      for (let t = 0; t < k; t++) sup[g * k + t] = g * groupSize + chosen[t]!;
    }
    if (!plan.packed) return { sup, packed: null };
    const packed = new Float64Array(groups * dIn * k);
    for (let g = 0; g < groups; g++) {
      for (let t = 0; t < k; t++) {
        const base = sup[g * k + t]! * dIn;
        for (let c = 0; c < dIn; c++) packed[(g * dIn + c) * k + t] = features[base + c]!;
      }
    }
    return { sup, packed };
  });

  const active = new Int32Array(Math.max(1, k));
  const values = new Float32Array(Math.max(1, k));
  const bases = new Int32Array(Math.max(1, k));
  /**
   * Fills active and values with row r's k coefficients on its group's support (zeros
   * included, so that t indexes the packed support); returns the row's group.
   */
  const draw = (r: number, sup: Int32Array): number => {
    rng.reseed(PURPOSE_ROWS, r);
    const g = Math.floor((rng.next() / TWO32) * groups);
    for (let t = 0; t < k; t++) {
      active[t] = sup[g * k + t]!;
      // float16: torch.rand's half uniform, k / 2048 for k in [0, 2047] (0 with probability 1/2048).
      values[t] = half ? (rng.next() >>> 21) / 2048 : (rng.next() + 0.5) / TWO32;
    }
    return g;
  };
  /** Row r's codes: its coefficients but those that are 0 (which add nothing to the row). */
  const sample = (r: number): number => {
    draw(r, supportCache.get(Math.floor(r / batchSize)).sup);
    let count = 0;
    for (let t = 0; t < k; t++) {
      if (values[t] !== 0) {
        active[count] = active[t]!;
        values[count++] = values[t]!;
      }
    }
    return count;
  };
  const row = (r: number, out: Float32Array, offset: number): void => {
    const { sup, packed } = supportCache.get(Math.floor(r / batchSize));
    const g = draw(r, sup);
    const round = half ? roundFloat16 : null;
    if (packed) packedRow(packed, g * dIn * k, k, dIn, values, out, offset, round);
    else accumulateRow(features, dIn, active, values, k, bases, out, offset, round);
  };
  const checkRange = rangeChecker(dIn, numRows);

  return {
    compat: 'mfr',
    groupSize,
    source: syntheticSource(dIn, numRows, row),
    features: copyOf(features, `the copy of the ${n} x ${dIn} feature matrix`, 'options.numFeatures or options.dIn'),
    probabilities: undefined,
    batchSize,
    numBatches,
    batchProbabilities(batch: number): Float64Array {
      const { sup } = supportCache.get(checkBatch(batch, numBatches));
      const p = new Float64Array(n);
      for (const f of sup) p[f] = (half ? 2047 / 2048 : 1) / groups;
      return p;
    },
    supports(batch: number): Int32Array {
      return supportCache.get(checkBatch(batch, numBatches)).sup.slice();
    },
    ...rowsAndCodes(dIn, checkRange, row, sample, active, values),
    correlationMatrix(): undefined {
      return undefined;
    },
  };
}

/**
 * The synthetic data generators: `synthetic.superposition(...)` (principled, §4.5 semantics),
 * `synthetic.sharkey(...)` and `synthetic.mfr(...)` (the compat generators of §4.3 and §4.4).
 */
export const synthetic = { superposition, sharkey, mfr };
