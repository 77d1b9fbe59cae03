/**
 * k-sparse probing (docs/references.md §5.5, SAEBench variant of Gurnee et al. 2023).
 *
 * Definitions:
 * - Split: the n examples are shuffled with a seeded Fisher-Yates shuffle (mulberry32 generator)
 *   and the first round(n * testFraction) become the test split (default testFraction 0.2). The
 *   generator's 32-bit state is the seed's low 32 bits XOR murmur3's fmix32 of its high 32 bits
 *   (a bijection with fmix32(0) = 0, so a seed below 2^32 is the state itself). Seeds that differ
 *   in one word only give different states; a 32-bit state cannot tell all 2^64 seeds apart.
 * - Ranking: latents are ranked by |mean_pos - mean_neg| on the train split only (ties: lower
 *   index first); the probe for k uses the top k.
 * - Probe: the k features are standardised with train mean and population std (a constant feature
 *   is only centred), then an L2-regularised logistic regression with intercept is fitted in
 *   float64 by damped Newton's method, minimising sklearn's objective
 *     sum_i log(1 + exp(-y_i (w.x_i + b))) + ||w||^2 / (2C),  C = 1 (the intercept is not penalised),
 *   which equals the mean log-loss plus (lambda / 2)||w||^2 with lambda = 1 / (C n_train).
 *   SAEBench fits sklearn's LogisticRegression(C = 1) on unstandardised activations; standardising
 *   changes what C = 1 means: on features of scale ~0.1 or more scores agree within about 0.01,
 *   but on small ones (std 0.01) the penalty swamps SAEBench's fit (accuracy 0.54 where the
 *   standardised probe reaches 0.69). `standardize: false` fits the raw activations as SAEBench
 *   does (its compat mode).
 * - Prediction: positive iff w.x + b > 0. Accuracy and F1 (positive class = label 1,
 *   F1 = 2TP / (2TP + FP + FN), 0 when that is 0/0) on the test split.
 */
import { argError, arrayTypeError, SaekitError } from '../errors.js';
import { runAll, runSliced } from '../slices.js';
import { checkBool, checkInt, checkOptions, checkSeed, checkSignal, optionNames } from '../validate.js';

/** Option names (checkOptions refuses others: a misspelling is an error, not ignored). */
const PROBE_OPTIONS = optionNames<SparseProbeOptions>({ m: true, k: true, testFraction: true, seed: true, C: true, standardize: true });

/** Options of sparseProbe(). */
export interface SparseProbeOptions {
  /** Number of latents (columns of features). */
  m: number;
  /** Probe sizes. Default [1, 2, 5]; each is clipped to m. */
  k?: number[];
  /** Fraction of examples in the test split. Default 0.2. */
  testFraction?: number;
  /** Shuffle seed: a non-negative safe integer or a bigint below 2^64, all 64 bits used (see the module comment). Default 0. */
  seed?: number | bigint;
  /** Inverse L2 strength as in sklearn. Default 1. */
  C?: number;
  /** Standardise the selected features before fitting (default true); false: raw activations, as SAEBench. */
  standardize?: boolean;
}

/** One probe of sparseProbe(): its size, latents, test scores and fitted weights. */
export interface SparseProbeResult {
  /** Latents in the probe. */
  k: number;
  /** The k latents used, best-ranked first. */
  latents: number[];
  /** Test-split accuracy. */
  accuracy: number;
  /** Test-split F1 of the positive class (label 1). */
  f1: number;
  /** Fitted weights on the standardised (or, with standardize false, raw) features, same order as latents, and the intercept. */
  weights: number[];
  /** The fitted intercept. */
  intercept: number;
}

/** An L2-regularised logistic regression fitted by fitLogistic(). */
export interface LogisticFit {
  /** Weights (length p). */
  w: Float64Array;
  /** Intercept. */
  b: number;
  /** Newton iterations used. */
  iterations: number;
}

/**
 * mulberry32's state for a seed below 2^64: the low word XOR fmix32(high word) (murmur3's
 * finaliser, a bijection with fmix32(0) = 0, so seeds below 2^32 keep the state they always had).
 */
function seedState(seed: bigint): number {
  let h = Number(seed >> 32n);
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  h ^= h >>> 16;
  return (Number(seed & 0xffffffffn) ^ h) >>> 0;
}

/** A 32-bit seeded PRNG in [0, 1). */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Fits sum_i log(1 + exp(-y_i (w.x_i + b))) + ||w||^2 / (2C) (y in {0, 1} mapped to -1/+1) by
 * Newton's method with backtracking, in float64. X is row-major [n, p].
 */
export function fitLogistic(X: Float64Array, y: Uint8Array, n: number, p: number, C = 1): LogisticFit {
  checkInt('n', n, 1, 2 ** 31 - 1);
  checkInt('p', p, 0, 2 ** 31 - 1);
  if (!(X instanceof Float64Array)) throw arrayTypeError('X', 'a Float64Array', X);
  if (!(y instanceof Uint8Array)) throw arrayTypeError('y', 'a Uint8Array of 0/1 labels', y);
  if (X.length !== n * p || y.length !== n) throw new SaekitError('ERR_SAEKIT_SHAPE', `fitLogistic: expected X of length ${n * p} and y of length ${n}`);
  for (let i = 0; i < n; i++) if (y[i]! > 1) throw argError(`y[${i}]`, '0 or 1', y[i]);
  for (let i = 0; i < X.length; i++) if (!Number.isFinite(X[i])) throw new SaekitError('ERR_SAEKIT_NONFINITE', `X[${i}] is ${X[i]}: expected finite values`);
  if (typeof C !== 'number' || !(C > 0) || !Number.isFinite(C)) throw argError('C', 'a positive finite number', C);
  const q = p + 1; // parameters: w[0..p-1], b
  const theta = new Float64Array(q);
  const lam = 1 / C;
  const objective = (t: Float64Array): number => {
    let s = 0;
    for (let i = 0; i < n; i++) {
      let z = t[p];
      for (let j = 0; j < p; j++) z += X[i * p + j] * t[j];
      const m = y[i] ? z : -z; // margin
      s += m > 0 ? Math.log1p(Math.exp(-m)) : -m + Math.log1p(Math.exp(m));
    }
    for (let j = 0; j < p; j++) s += 0.5 * lam * t[j] * t[j];
    return s;
  };
  const grad = new Float64Array(q);
  // Per parameter, sum_i |r_i x_ia| (+ lam |theta_a|): the scale of the gradient's terms, so the
  // stopping test is relative (raw activations of scale 50 left an absolute test 200 iterations
  // of rounding noise).
  const gscale = new Float64Array(q);
  const H = new Float64Array(q * q);
  const xi = new Float64Array(q);
  let f = objective(theta);
  let iterations = 0;
  for (; iterations < 200; iterations++) {
    grad.fill(0);
    gscale.fill(0);
    H.fill(0);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < p; j++) xi[j] = X[i * p + j];
      xi[p] = 1;
      let z = 0;
      for (let j = 0; j < q; j++) z += xi[j] * theta[j];
      const prob = 1 / (1 + Math.exp(-z));
      const r = prob - (y[i] ? 1 : 0);
      const wgt = prob * (1 - prob);
      for (let a = 0; a < q; a++) {
        grad[a] += r * xi[a];
        gscale[a] += Math.abs(r * xi[a]);
        const wa = wgt * xi[a];
        for (let c = 0; c <= a; c++) H[a * q + c] += wa * xi[c];
      }
    }
    for (let j = 0; j < p; j++) {
      grad[j] += lam * theta[j];
      gscale[j] += Math.abs(lam * theta[j]);
      H[j * q + j] += lam;
    }
    // Converged when every gradient component is within 1e-10 of its terms' scale (float64
    // rounding of the sum is about n 2^-53 of it) or absolutely tiny.
    let small = true;
    for (let a = 0; a < q; a++) if (!(Math.abs(grad[a]) <= Math.max(1e-10 * gscale[a], 1e-10 * Math.max(1, n) * 1e-6))) small = false;
    if (small) break;
    for (let a = 0; a < q; a++) H[a * q + a] += 1e-12 * Math.max(1, n); // keeps the separable intercept direction solvable
    const step = choleskySolve(H, grad, q);
    // Backtracking line search on the objective.
    let t = 1;
    const trial = new Float64Array(q);
    let fNew = f;
    let decrease = 0;
    for (let a = 0; a < q; a++) decrease += grad[a] * step[a];
    for (let ls = 0; ls < 60; ls++) {
      for (let a = 0; a < q; a++) trial[a] = theta[a] - t * step[a];
      fNew = objective(trial);
      if (fNew <= f - 1e-4 * t * decrease) break;
      t *= 0.5;
    }
    if (!(fNew <= f)) break;
    theta.set(trial);
    // No progress beyond rounding: the objective is strongly convex (lam > 0), so this is the
    // minimum whatever step length the line search took.
    const converged = f - fNew <= 1e-15 * Math.max(1, Math.abs(f));
    f = fNew;
    if (converged) {
      iterations++;
      break;
    }
  }
  return { w: theta.slice(0, p), b: theta[p], iterations };
}

/** Solves H x = g for a symmetric positive definite H given by its lower triangle. */
function choleskySolve(H: Float64Array, g: Float64Array, q: number): Float64Array {
  const L = new Float64Array(q * q);
  for (let i = 0; i < q; i++) {
    for (let j = 0; j <= i; j++) {
      let s = H[i * q + j];
      for (let k = 0; k < j; k++) s -= L[i * q + k] * L[j * q + k];
      if (i === j) {
        L[i * q + i] = Math.sqrt(Math.max(s, 1e-300));
      } else {
        L[i * q + j] = s / L[j * q + j];
      }
    }
  }
  const z = new Float64Array(q);
  for (let i = 0; i < q; i++) {
    let s = g[i];
    for (let k = 0; k < i; k++) s -= L[i * q + k] * z[k];
    z[i] = s / L[i * q + i];
  }
  const x = new Float64Array(q);
  for (let i = q - 1; i >= 0; i--) {
    let s = z[i];
    for (let k = i + 1; k < q; k++) s -= L[k * q + i] * x[k];
    x[i] = s / L[i * q + i];
  }
  return x;
}

/**
 * k-sparse probes on dense features [n, m]: rank latents by train |mean_pos - mean_neg|, fit an
 * L2 logistic regression on the top k, report test accuracy and F1 for each k. Synchronous: it
 * holds the JS thread for its O(n m) passes (about 2 s at n = 8192, m = 16384); sparseProbeAsync
 * gives the same result in slices between turns of the event loop.
 */
export function sparseProbe(features: Float32Array, labels: Uint8Array, options: SparseProbeOptions): { results: SparseProbeResult[] } {
  return runAll(probeSteps(features, labels, options));
}

/**
 * sparseProbe as a Promise: the same results, computed on the JS thread in slices of about 20 ms
 * between which the event loop runs (for a service, or features of many latents). Bad arguments
 * reject it; `signal` (an AbortSignal) stops it between slices, rejecting with its reason.
 */
export async function sparseProbeAsync(features: Float32Array, labels: Uint8Array, options: SparseProbeOptions & { signal?: AbortSignal }): Promise<{ results: SparseProbeResult[] }> {
  let signal: AbortSignal | undefined;
  let rest: SparseProbeOptions = options;
  if (options !== null && typeof options === 'object' && 'signal' in options) {
    let given: unknown;
    ({ signal: given, ...rest } = options);
    signal = checkSignal('options.signal', given);
  }
  return runSliced(probeSteps(features, labels, rest), signal);
}

/** sparseProbe's work, yielding the units done (for runAll / runSliced). */
function* probeSteps(features: Float32Array, labels: Uint8Array, options: SparseProbeOptions): Generator<number, { results: SparseProbeResult[] }> {
  if (!(features instanceof Float32Array)) throw arrayTypeError('features', 'a Float32Array', features);
  if (!(labels instanceof Uint8Array)) throw arrayTypeError('labels', 'a Uint8Array', labels);
  if (options === undefined) throw argError('options', 'an options object with m', options);
  const opts = checkOptions('options', options, PROBE_OPTIONS);
  const m = checkInt('options.m', opts.m, 1, 2 ** 31);
  const n = labels.length;
  if (features.length !== n * m) {
    throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected features of length labels.length * m = ${n * m} but received length ${features.length}`);
  }
  for (let i = 0; i < n; i++) if (labels[i] > 1) throw argError(`labels[${i}]`, '0 or 1', labels[i]);
  for (let i = 0; i < features.length; i++) {
    if (!Number.isFinite(features[i])) throw new SaekitError('ERR_SAEKIT_NONFINITE', `features[${i}] is ${features[i]}: expected finite values`);
    if ((i & 0xffff) === 0xffff) yield 0x10000;
  }
  let ks = [1, 2, 5];
  if (opts.k !== undefined) {
    if (!Array.isArray(opts.k) || opts.k.length === 0) throw argError('options.k', 'a non-empty array of positive integers', opts.k);
    ks = opts.k.map((k, i) => checkInt(`options.k[${i}]`, k, 1, 2 ** 31));
  }
  const testFraction = opts.testFraction === undefined ? 0.2 : opts.testFraction;
  if (typeof testFraction !== 'number' || !(testFraction > 0 && testFraction < 1)) {
    throw argError('options.testFraction', 'a number strictly between 0 and 1', opts.testFraction);
  }
  const seed = seedState(opts.seed === undefined ? 0n : checkSeed('options.seed', opts.seed));
  const C = opts.C === undefined ? 1 : opts.C;
  if (typeof C !== 'number' || !(C > 0) || !Number.isFinite(C)) throw argError('options.C', 'a positive finite number', opts.C);
  const standardize = opts.standardize === undefined ? true : checkBool('options.standardize', opts.standardize);

  // Seeded split.
  const order = Array.from({ length: n }, (_, i) => i);
  const rnd = mulberry32(seed);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  const nTest = Math.round(n * testFraction);
  const test = order.slice(0, nTest);
  const train = order.slice(nTest);
  if (nTest < 1 || train.length < 2) {
    throw argError('labels', `enough examples for a train and a test split at testFraction ${testFraction}`, labels);
  }
  let nPos = 0;
  for (const r of train) nPos += labels[r];
  const nNeg = train.length - nPos;
  if (nPos === 0 || nNeg === 0) throw argError('labels', 'both classes present in the train split', labels);

  // Rank by |mean_pos - mean_neg| on train.
  const sumPos = new Float64Array(m);
  const sumNeg = new Float64Array(m);
  for (const r of train) {
    const s = labels[r] ? sumPos : sumNeg;
    const o = r * m;
    for (let j = 0; j < m; j++) s[j] += features[o + j];
    yield m;
  }
  const score = new Float64Array(m);
  for (let j = 0; j < m; j++) score[j] = Math.abs(sumPos[j] / nPos - sumNeg[j] / nNeg);
  const kMax = Math.min(m, Math.max(...ks));
  const ranked = topIndices(score, kMax);

  const results: SparseProbeResult[] = [];
  for (const kReq of ks) {
    const k = Math.min(kReq, m);
    const latents = ranked.slice(0, k);
    const mean = new Float64Array(k);
    const sd = new Float64Array(k);
    for (const r of train) for (let j = 0; j < k; j++) mean[j] += features[r * m + latents[j]];
    for (let j = 0; j < k; j++) mean[j] /= train.length;
    for (const r of train) {
      for (let j = 0; j < k; j++) {
        const v = features[r * m + latents[j]] - mean[j];
        sd[j] += v * v;
      }
    }
    for (let j = 0; j < k; j++) {
      sd[j] = Math.sqrt(sd[j] / train.length);
      if (!(sd[j] > 0)) sd[j] = 1;
      if (!standardize) {
        mean[j] = 0;
        sd[j] = 1;
      }
    }
    const build = (rows: number[]): Float64Array => {
      const X = new Float64Array(rows.length * k);
      rows.forEach((r, i) => {
        for (let j = 0; j < k; j++) X[i * k + j] = (features[r * m + latents[j]] - mean[j]) / sd[j];
      });
      return X;
    };
    yield 2 * train.length * k;
    const yTrain = Uint8Array.from(train, (r) => labels[r]);
    const fit = fitLogistic(build(train), yTrain, train.length, k, C);
    yield train.length * (k + 1) * (k + 1);
    const Xt = build(test);
    let tp = 0;
    let fp = 0;
    let tn = 0;
    let fn = 0;
    test.forEach((r, i) => {
      let z = fit.b;
      for (let j = 0; j < k; j++) z += fit.w[j] * Xt[i * k + j];
      const pred = z > 0;
      if (labels[r]) pred ? tp++ : fn++;
      else pred ? fp++ : tn++;
    });
    const f1Den = 2 * tp + fp + fn;
    results.push({
      k,
      latents,
      accuracy: (tp + tn) / test.length,
      f1: f1Den === 0 ? 0 : (2 * tp) / f1Den,
      weights: Array.from(fit.w),
      intercept: fit.b,
    });
  }
  return { results };
}

/** Indices of the `count` largest scores, descending; ties by lower index. */
function topIndices(score: Float64Array, count: number): number[] {
  const idx = Array.from({ length: score.length }, (_, i) => i);
  idx.sort((a, b) => score[b] - score[a] || a - b);
  return idx.slice(0, count);
}
