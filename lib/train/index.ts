/**
 * The Trainer: trains a TopK SAE on an activation source (reference sae-libraries.md §0.3, §1.2).
 * Where the libraries differ, what it does and whose choice that is:
 * - Adam with lr 2e-4 / sqrt(numLatents / 2^14) (sparsify, dictionary_learning), no gradient
 *   clipping (sparsify; dictionary_learning and SAELens clip the norm to 1).
 * - Schedule: linear warmup (1000 steps, at most a tenth of the run's steps rounded up), constant, then linear decay to
 *   0 over the last 20% (`decay: 'linear'`, `decayFraction`; like dictionary_learning's
 *   `decay_start`, which is off by default there). sparsify's schedule, a linear decay over all
 *   the steps after warmup, is `decay: 'linear-after-warmup'`.
 * - AuxK as in sparsify by default (native/cpu/sae_topk.cpp): the dead latents' reconstruction
 *   includes b_dec and the loss is normalised by the batch's total variance; Gao et al. / OpenAI
 *   and dictionary_learning reconstruct the residual without b_dec and normalise by its own
 *   variance, which `auxkVariant: 'paper'` gives (see AuxKVariant). alpha 1/32 (theirs;
 *   sparsify's default is 0), over latents dead for 10M tokens. The AuxK gradient reaches the
 *   encoder too (the exact gradient; sparsify's fused encoder backward drops it, see AuxKVariant). A latent counts as fired when its activation is positive (sparsify and dictionary_learning count any
 *   top-k index, which differs only in rows with fewer than k positive pre-activations).
 * - b_dec at the geometric median of the first batch.
 * - normalize 'expected-norm': the inputs are scaled by s = sqrt(dIn) / E||x|| (SAELens's
 *   estimate; any finite s: rows of norm 1e-30 train as rows of norm 1 would) and s is folded
 *   into the biases when training ends (dictionary_learning's scale_biases): the saved SAE on
 *   raw activations reconstructs what the trained one did on scaled ones (times 1/s), with the
 *   same latents selected and unit decoder rows, and its activations are the trained ones
 *   divided by s. (SAELens's fold keeps the activations and leaves decoder rows of norm 1/s.)
 *
 * @example
 * ```ts
 * const source = await openActivations('acts/train/*.npy');
 * using sae = SparseAutoencoder.create({ dIn: source.dIn, numLatents: 24576, k: 32, seed: 1 });
 * const trainer = new Trainer(sae, { totalTokens: 100_000_000 });
 * const result = await trainer.fit(source, { checkpointDir: 'runs/l8/ckpt', saveDir: 'runs/l8', logFile: 'runs/l8/log.jsonl' });
 * ```
 */
import { createHash, randomBytes } from 'node:crypto';
import { type FileHandle, open, readdir, rm } from 'node:fs/promises';
import path from 'node:path';

import { deviceName, resolveDevice, type DeviceOption } from '../backend/index.js';
import { BATCH_ARRAYS, RELEASE_BATCH, type BatchArrays, type ReleasableBatch } from '../data/engine.js';
import type { ActivationSource, Batch } from '../data/index.js';
import { argError, arrayTypeError, SaekitError } from '../errors.js';
import { isPendingTemporary, makeDirs, OPEN_READ_NOWAIT, readBoundedFile, syncFolder } from '../io/source.js';
import { AUXK_VARIANTS, MAX_BETA1, MAX_BETA2, MAX_DEAD_THRESHOLD, type AdamOptimizer, type AuxKVariant, type PrefetchedBatch, type SparseAutoencoder, type StepStats } from '../sae/index.js';
import { runAll, runSliced } from '../slices.js';
import { checkBool, checkInt, checkNumber, checkOneOf, checkOptions, optionNames } from '../validate.js';

import { lockFolder, type FolderLock } from './lock.js';

/** The decay schedules and b_dec initialisations (the CLI checks against the same lists). */
export const DECAYS = ['linear', 'linear-after-warmup', 'none'] as const;
export const B_DEC_INITS = ['geometric-median', 'mean', 'zeros'] as const;

/** Trainer options; every field has a default. */
export interface TrainerOptions {
  /**
   * Where training runs; must match the SAE's device (create or load the SAE with the same
   * `device`: parameters, Adam state and batches then live there). Default: the SAE's device.
   */
  device?: DeviceOption;
  /** Rows (tokens) per step. Default 4096. */
  batchSize?: number;
  /**
   * Train on this many tokens (rounded up to whole batches). One of totalTokens / epochs. A finite
   * source is passed over as often as that takes, also when rows skipped as non-finite
   * (onNonFinite: 'skip') make its passes shorter than numRows says.
   */
  totalTokens?: number;
  /**
   * Or: passes over a finite source. Default 1 when totalTokens is not set. The schedule is
   * planned for epochs x floor(numRows / batchSize) steps: rows skipped as non-finite
   * (onNonFinite: 'skip') shorten the passes, so the run ends that many batches early and the
   * decay stops short of 0 by their share.
   */
  epochs?: number;
  /** Learning rate; 'auto' (default) = 2e-4 / sqrt(numLatents / 2^14). */
  lr?: number | 'auto';
  /** Default 0.9. */
  beta1?: number;
  /** Default 0.999. */
  beta2?: number;
  /** Default 1e-8. */
  eps?: number;
  /**
   * Linear warmup from 0 over this many steps, capped at a tenth of the run's steps rounded up
   * (ceil(steps / 10): 1 step of a 1- to 10-step run, 2 of 11-20). Step 0 has lr 0, as in
   * transformers' get_linear_schedule_with_warmup; warmupSteps 0 starts at the full rate. Default 1000.
   */
  warmupSteps?: number;
  /**
   * 'linear' (default): to 0 over the last `decayFraction` of the steps; 'linear-after-warmup':
   * to 0 over all the steps after warmup (sparsify's, as transformers'
   * get_linear_schedule_with_warmup); 'none': constant after warmup.
   */
  decay?: 'linear' | 'linear-after-warmup' | 'none';
  /** Fraction of steps the linear decay spans (decay 'linear'). Default 0.2. */
  decayFraction?: number;
  /** AuxK weight. Default 1/32; 0 turns AuxK off. */
  auxkAlpha?: number;
  /** Which AuxK loss: 'sparsify' (default) or 'paper' (Gao et al.'s; see AuxKVariant). */
  auxkVariant?: AuxKVariant;
  /** A latent is dead after this many tokens without firing. Default 10,000,000. */
  deadThresholdTokens?: number;
  /** b_dec at the start: 'geometric-median' (default) of the first batch, 'mean' or 'zeros'. */
  bDecInit?: 'geometric-median' | 'mean' | 'zeros';
  /**
   * 'none' (default) or 'expected-norm': inputs scaled by s so that E||x|| = sqrt(dIn), estimated
   * on the first `normalizeBatches` batches; folded into the biases when training ends (see the
   * module comment: the saved SAE works on raw activations, its activations are the trained
   * ones divided by s).
   */
  normalize?: 'none' | 'expected-norm';
  /**
   * Batches used to estimate the normalisation scale. Default 4, or as many as fit in 2 GiB (at
   * least 1) when 4 do not. They are held (float32 copies) until they are trained on, the first
   * steps of the run, so normalizeBatches x batchSize x dIn x 4 bytes may be at most 2 GiB when
   * normalizeBatches > 1 (SAELens' 1000 batches of 4096 rows at dIn 768 would be 12.6 GB).
   */
  normalizeBatches?: number;
  /** Shuffle the source. Default true. */
  shuffle?: boolean;
  /** Seed of the data order. Default 0. */
  seed?: number;
}

/** One step's statistics. */
export interface StepLog {
  step: number;
  tokens: number;
  loss: number;
  fvu: number;
  l0: number;
  /** Dead latents at this step (counted before it); AuxK uses them unless auxkAlpha is 0. */
  numDead: number;
  deadFraction: number;
  /** The AuxK term before its auxkAlpha weight (0 with auxkAlpha 0, no dead latent, or dIn < 2). */
  auxkLoss: number;
  lr: number;
  tokensPerSec: number;
}

/** Trainer.fit options: stopping, progress, logs, checkpoints and where the SAE is saved. */
export interface FitOptions {
  /** Stop after the current step; a checkpoint and the SAE are written (if configured). */
  signal?: AbortSignal;
  /** Called after every step (awaited). */
  onStep?: (log: StepLog) => void | Promise<void>;
  /**
   * Append every step as one JSON line to this file. A resumed run first drops the lines of steps
   * past its checkpoint (trained again; e.g. written before a crash) and a torn last line, so
   * each step appears once; `resume` with no checkpoint yet (a run killed before its first)
   * starts over from step 0 and so empties the log first. The lines are flushed to disk before
   * each checkpoint is written (with the folder's entry of a log file the run creates), so a
   * power loss cannot leave a checkpoint past its logged steps; a pipe or a character device,
   * which cannot be flushed, is written to as it is. A line that cannot be written or flushed
   * fails the run, and its failed run then writes no checkpoint.
   */
  logFile?: string;
  /**
   * Folder for checkpoints (written atomically). One run at a time per folder: a run holds a lock
   * on `checkpoint.lock` there while it trains (released when the process ends, however it ends),
   * and a second run, in this process or another, is refused with ERR_SAEKIT_ARG naming the holder.
   */
  checkpointDir?: string;
  /** Steps between checkpoints. Default 1000 (only with checkpointDir). */
  checkpointEvery?: number;
  /**
   * Resume from the checkpoint in checkpointDir if there is one (FitResult.resumedFrom says
   * whether one was found). The data order must be the checkpoint's: batchSize, seed, shuffle and
   * normalize have to match the options it was trained with (ERR_SAEKIT_ARG otherwise); lr,
   * totalTokens / epochs and the rest may change. Default false.
   */
  resume?: boolean;
  /**
   * Save the trained SAE here (SAELens layout) when training completes or is aborted. A folder
   * that save() would refuse (another library's SAE of the other layout) is refused before training.
   */
  saveDir?: string;
  /** Save options for saveDir. */
  saveFormat?: 'saelens' | 'sparsify';
}

/** What Trainer.fit did: how it ended, how far it got, the last step's statistics, what it saved. */
export interface FitResult {
  /**
   * 'completed' (with epochs: every pass served, even when rows skipped as non-finite made them
   * shorter than numRows planned for); 'aborted' by the signal; or 'exhausted': the source ended
   * before totalTokens (a stream shorter than it). An abort during a new run's first reads
   * (before any step) writes no checkpoint and no SAE (`saved` is empty).
   */
  status: 'completed' | 'aborted' | 'exhausted';
  steps: number;
  tokens: number;
  /** The last step's statistics. */
  last: StepLog | undefined;
  /** The input scale folded into the weights (1 without normalisation). */
  scale: number;
  /** Wall-clock seconds of this fit call. */
  seconds: number;
  /** Files written by saveDir. */
  saved: string[];
  /** Where this call resumed from (options.resume with a checkpoint in checkpointDir); undefined for a new run. */
  resumedFrom?: { step: number; tokens: number };
}

const DEFAULTS = {
  batchSize: 4096,
  beta1: 0.9,
  beta2: 0.999,
  eps: 1e-8,
  warmupSteps: 1000,
  decay: 'linear' as const,
  decayFraction: 0.2,
  auxkAlpha: 1 / 32,
  auxkVariant: 'sparsify' as const,
  deadThresholdTokens: 10_000_000,
  bDecInit: 'geometric-median' as const,
  normalize: 'none' as const,
  normalizeBatches: 4,
  shuffle: true,
  seed: 0,
};

/** A Trainer's options with every default filled in (Trainer.options). */
export type ResolvedTrainerOptions = Required<Omit<TrainerOptions, 'totalTokens' | 'epochs' | 'lr' | 'device'>> & {
  totalTokens: number | undefined;
  epochs: number | undefined;
  /** The learning rate ('auto' resolved). */
  lr: number;
};

const CHECKPOINT_VERSION = 1;
/** Error codes of a step refused before it changed anything (its checks run first). */
const REFUSED_BEFORE_UPDATE = new Set(['ERR_SAEKIT_NONFINITE', 'ERR_SAEKIT_ARG', 'ERR_SAEKIT_SHAPE', 'ERR_SAEKIT_DTYPE', 'ERR_SAEKIT_DISPOSED']);

const ABORTED: unique symbol = Symbol('aborted');

/** `p`, or ABORTED as soon as `signal` aborts: a batch that does not come must not hold up an abort. */
function unlessAborted<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T | typeof ABORTED> {
  if (!signal) return p;
  if (signal.aborted) return Promise.resolve(ABORTED);
  return new Promise((resolve, reject) => {
    const onAbort = () => resolve(ABORTED);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

/** SAEs a fit() is running on (two at once would interleave their steps on one set of weights). */
const training = new WeakSet<SparseAutoencoder>();

const TRAINER_OPTIONS = optionNames<TrainerOptions>({
  device: true, batchSize: true, totalTokens: true, epochs: true, lr: true, beta1: true, beta2: true, eps: true, warmupSteps: true, decay: true,
  decayFraction: true, auxkAlpha: true, auxkVariant: true, deadThresholdTokens: true, bDecInit: true, normalize: true, normalizeBatches: true, shuffle: true, seed: true,
});
const FIT_OPTIONS = optionNames<FitOptions>({
  signal: true, onStep: true, logFile: true, checkpointDir: true, checkpointEvery: true, resume: true, saveDir: true, saveFormat: true,
});

/**
 * Cuts a training log (JSON lines starting {"step":N, as run() writes them) after its last line of
 * a step <= `step`: lines of later steps, and a torn last line, are dropped. Reads backwards from
 * the end in 64 KiB pieces, so only the dropped tail is read. A missing file is left missing.
 * @internal Exported for tests.
 */
export async function _trimLogPast(file: string, step: number): Promise<void> {
  let fh: FileHandle;
  try {
    fh = await open(file, 'r+');
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return;
    throw pathError('options.logFile', file, 'a file that can be appended to', err);
  }
  try {
    const size = (await fh.stat()).size;
    let pos = size; // `tail` holds the file's bytes [pos, size)
    let tail = Buffer.alloc(0);
    const readMore = async (): Promise<void> => {
      const n = Math.min(1 << 16, pos);
      pos -= n;
      const piece = Buffer.alloc(n);
      await fh.read(piece, 0, n, pos);
      tail = Buffer.concat([piece, tail]);
    };
    if (size > 0) await readMore();
    let cut = size; // the log keeps [0, cut)
    while (cut > 0) {
      // The last line of [0, cut): [start, contentEnd), with its newline unless it is torn.
      const terminated = tail[cut - 1 - pos] === 0x0a;
      const contentEnd = terminated ? cut - 1 : cut;
      let start = 0;
      for (;;) {
        const i = contentEnd - 1 - pos >= 0 ? tail.lastIndexOf(0x0a, contentEnd - 1 - pos) : -1;
        if (i >= 0) {
          start = pos + i + 1;
          break;
        }
        if (pos === 0) break;
        await readMore();
      }
      const m = /^\{"step":(\d+),/.exec(tail.subarray(start - pos, contentEnd - pos).toString('utf8'));
      if (terminated && m && Number(m[1]) <= step) break;
      cut = start;
    }
    if (cut < size) await fh.truncate(cut);
  } finally {
    await fh.close();
  }
}

/**
 * The learning rate at `step` (0-based) of `total`: linear warmup from 0 (step 0) to base over
 * `warmup` steps (base × step / warmup, as dictionary_learning and transformers'
 * get_linear_schedule_with_warmup, which sparsify uses), then constant, then (decay 'linear') linearly to 0 over the last
 * `fraction * total` steps, or (decay 'linear-after-warmup') base (total - step) / (total - warmup)
 * from the end of warmup on.
 */
export function learningRate(step: number, total: number, base: number, warmup: number, decay: 'linear' | 'linear-after-warmup' | 'none', fraction: number): number {
  checkInt('step', step, 0, Number.MAX_SAFE_INTEGER);
  checkInt('total', total, 1, Number.MAX_SAFE_INTEGER);
  checkNumber('base', base, 0, Infinity);
  checkInt('warmup', warmup, 0, Number.MAX_SAFE_INTEGER);
  checkOneOf('decay', decay, DECAYS);
  checkNumber('fraction', fraction, 0, 1);
  let f = warmup > 0 ? Math.min(1, step / warmup) : 1;
  if (decay === 'linear-after-warmup') {
    if (step >= warmup) f = Math.max(0, (total - step) / Math.max(1, total - warmup));
  } else if (decay === 'linear') {
    const span = Math.max(1, Math.round(fraction * total));
    const start = total - span;
    if (step >= start) f *= Math.max(0, (total - step) / span);
  }
  return base * f;
}

/**
 * The geometric median of rows x [n, d] (the point minimising the sum of Euclidean distances),
 * in float64: Weiszfeld's iterations from the mean, with Vardi and Zhang's step where the
 * estimate sits on data rows (plain Weiszfeld stalls at such a row even where it is not the
 * median, e.g. when the mean is one of the rows). `maxIter` (default 200) bounds the iterations;
 * they stop once a step moves less than `tol` (default 1e-7) times the rows' mean distance to
 * their mean. Then the row nearest the estimate is returned instead when it is the median (by
 * Vardi and Zhang's optimality test): the iterations only creep towards such a row.
 */
export function geometricMedian(x: Float32Array, d: number, options: { maxIter?: number; tol?: number } = {}): Float64Array {
  if (!(x instanceof Float32Array)) throw arrayTypeError('x', 'a Float32Array of rows [n, d]', x);
  checkInt('d', d, 1, Number.MAX_SAFE_INTEGER);
  if (x.length === 0 || x.length % d !== 0) {
    throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected x to hold n >= 1 rows of d = ${d} values but its length ${x.length} is ${x.length === 0 ? 'zero' : `not a multiple of ${d}`}`);
  }
  const o = checkOptions('options', options, ['maxIter', 'tol']);
  const maxIter = o.maxIter === undefined ? GM_MAX_ITER : checkInt('options.maxIter', o.maxIter, 1, 1 << 30);
  const relTol = o.tol === undefined ? GM_TOL : checkNumber('options.tol', o.tol, 0, 1);
  return runAll(geometricMedianWork(x, d, maxIter, relTol));
}

/** geometricMedian's defaults (the Trainer's bDecInit uses them). */
const GM_MAX_ITER = 200;
const GM_TOL = 1e-7;

/** Rows of the Trainer's startup loops between two yields of their units (see slices.ts). */
const ROWS_PER_YIELD = 64;

/**
 * geometricMedian's work, for valid arguments, as a generator that yields its units of work
 * every ROWS_PER_YIELD rows (runAll: at once; runSliced: between turns of the event loop, as the
 * Trainer runs it: 200 passes over a 4096 x 2048 batch held the loop ~0.3 s).
 */
function* geometricMedianWork(x: Float32Array, d: number, maxIter: number, relTol: number): Generator<number, Float64Array> {
  const n = x.length / d;
  const y = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) y[j]! += x[i * d + j]! / n;
    if (i % ROWS_PER_YIELD === ROWS_PER_YIELD - 1) yield ROWS_PER_YIELD * d;
  }
  let scale = 0;
  for (let i = 0; i < n; i++) {
    if (i % ROWS_PER_YIELD === ROWS_PER_YIELD - 1) yield ROWS_PER_YIELD * d;
    let s = 0;
    for (let j = 0; j < d; j++) s += (x[i * d + j]! - y[j]!) ** 2;
    scale += Math.sqrt(s) / n;
  }
  if (!Number.isFinite(scale)) throw new SaekitError('ERR_SAEKIT_NONFINITE', 'Expected finite values in x for the geometric median');
  if (scale === 0) return y; // every row is the same point
  const tol = relTol * scale;
  const same = 1e-12 * scale; // rows nearer than this are at the estimate
  const num = new Float64Array(d);
  const pull = new Float64Array(d);
  for (let it = 0; it < maxIter; it++) {
    num.fill(0);
    pull.fill(0);
    let den = 0;
    let at = 0; // rows at the estimate
    for (let i = 0; i < n; i++) {
      if (i % ROWS_PER_YIELD === ROWS_PER_YIELD - 1) yield ROWS_PER_YIELD * d;
      let s = 0;
      for (let j = 0; j < d; j++) s += (x[i * d + j]! - y[j]!) ** 2;
      const dist = Math.sqrt(s);
      if (dist <= same) {
        at++;
        continue;
      }
      const w = 1 / dist;
      den += w;
      for (let j = 0; j < d; j++) {
        num[j]! += w * x[i * d + j]!;
        pull[j]! += w * (x[i * d + j]! - y[j]!);
      }
    }
    if (den === 0) break; // all rows at the estimate
    // Vardi-Zhang: with `at` rows at y, the step to the Weiszfeld point T is shortened by
    // gamma = min(1, at / |sum of unit vectors to the other rows|); y is optimal when that
    // norm is at most `at` (gamma 1: no move).
    let r = 0;
    for (let j = 0; j < d; j++) r += pull[j]! ** 2;
    r = Math.sqrt(r);
    const gamma = at === 0 ? 0 : r === 0 ? 1 : Math.min(1, at / r);
    let move = 0;
    for (let j = 0; j < d; j++) {
      const next = (1 - gamma) * (num[j]! / den) + gamma * y[j]!;
      move += (next - y[j]!) ** 2;
      y[j] = next;
    }
    if (Math.sqrt(move) <= tol) break;
  }
  // Weiszfeld's steps creep (sublinearly) towards a median that is a data row, so the row nearest
  // the estimate is tested directly by Vardi-Zhang's condition: it is the median when the unit
  // vectors from it to the other rows sum to a norm of at most the number of rows at it.
  let near = 0;
  let nearDist = Infinity;
  for (let i = 0; i < n; i++) {
    if (i % ROWS_PER_YIELD === ROWS_PER_YIELD - 1) yield ROWS_PER_YIELD * d;
    let s = 0;
    for (let j = 0; j < d; j++) s += (x[i * d + j]! - y[j]!) ** 2;
    if (s < nearDist) [near, nearDist] = [i, s];
  }
  pull.fill(0);
  let at = 0;
  for (let i = 0; i < n; i++) {
    if (i % ROWS_PER_YIELD === ROWS_PER_YIELD - 1) yield ROWS_PER_YIELD * d;
    let s = 0;
    for (let j = 0; j < d; j++) s += (x[i * d + j]! - x[near * d + j]!) ** 2;
    const dist = Math.sqrt(s);
    if (dist <= same) {
      at++;
      continue;
    }
    for (let j = 0; j < d; j++) pull[j]! += (x[i * d + j]! - x[near * d + j]!) / dist;
  }
  let r = 0;
  for (let j = 0; j < d; j++) r += pull[j]! ** 2;
  if (Math.sqrt(r) <= at) for (let j = 0; j < d; j++) y[j] = x[near * d + j]!;
  return y;
}

/** The most bytes normalize: 'expected-norm' holds for its estimate (options.normalizeBatches). */
const NORMALIZE_HOLD_BYTES = 2 ** 31;

/** Trains one SparseAutoencoder; see the module comment for the defaults. */
export class Trainer {
  readonly sae: SparseAutoencoder;
  readonly options: Readonly<ResolvedTrainerOptions>;
  private opt: AdamOptimizer | undefined;
  /** options.bDecInit was given (applied even to an SAE whose b_dec is not zero). */
  private readonly bDecInitGiven: boolean;
  /** A fit() has run (not `opt !== undefined`: dispose() clears opt, and b_dec stays trained). */
  private fitted = false;

  constructor(sae: SparseAutoencoder, options?: TrainerOptions) {
    if (sae === null || typeof sae !== 'object' || typeof (sae as SparseAutoencoder).adam !== 'function') throw argError('sae', 'a SparseAutoencoder', sae);
    if (sae.disposed) throw new SaekitError('ERR_SAEKIT_DISPOSED', 'Expected a live SparseAutoencoder for sae but it was disposed');
    this.sae = sae;
    const o = checkOptions('options', options, TRAINER_OPTIONS);
    if (o.device !== undefined) {
      // The optimizer state lives beside the parameters: the SAE decides where training runs.
      const want = deviceName(resolveDevice('options.device', o.device));
      if (want !== sae.device) {
        throw new SaekitError(
          'ERR_SAEKIT_DEVICE',
          `Expected options.device to match the SAE's device '${sae.device}' but received '${String(o.device)}' (create or load the SAE with device: '${want}')`,
        );
      }
    }
    if (o.lr !== undefined && o.lr !== 'auto' && !(typeof o.lr === 'number' && o.lr >= 0 && o.lr <= 10)) {
      throw argError('options.lr', "'auto' or a finite number >= 0 and <= 10", o.lr);
    }
    const batchSize = o.batchSize === undefined ? DEFAULTS.batchSize : checkInt('options.batchSize', o.batchSize, 2, 1 << 24);
    const r: ResolvedTrainerOptions = {
      batchSize,
      totalTokens: o.totalTokens === undefined ? undefined : checkInt('options.totalTokens', o.totalTokens, 1, Number.MAX_SAFE_INTEGER),
      epochs: o.epochs === undefined ? undefined : checkInt('options.epochs', o.epochs, 1, 1 << 30),
      lr: o.lr === undefined || o.lr === 'auto' ? 2e-4 / Math.sqrt(sae.numLatents / 2 ** 14) : o.lr,
      beta1: o.beta1 === undefined ? DEFAULTS.beta1 : checkNumber('options.beta1', o.beta1, 0, MAX_BETA1),
      beta2: o.beta2 === undefined ? DEFAULTS.beta2 : checkNumber('options.beta2', o.beta2, 0, MAX_BETA2),
      eps: o.eps === undefined ? DEFAULTS.eps : checkNumber('options.eps', o.eps, 1e-30, 1),
      warmupSteps: o.warmupSteps === undefined ? DEFAULTS.warmupSteps : checkInt('options.warmupSteps', o.warmupSteps, 0, 1 << 30),
      decay: o.decay === undefined ? DEFAULTS.decay : checkOneOf('options.decay', o.decay, DECAYS),
      decayFraction: o.decayFraction === undefined ? DEFAULTS.decayFraction : checkNumber('options.decayFraction', o.decayFraction, 0, 1),
      auxkAlpha: o.auxkAlpha === undefined ? DEFAULTS.auxkAlpha : checkNumber('options.auxkAlpha', o.auxkAlpha, 0, 1e6),
      auxkVariant: o.auxkVariant === undefined ? DEFAULTS.auxkVariant : checkOneOf('options.auxkVariant', o.auxkVariant, AUXK_VARIANTS),
      deadThresholdTokens:
        o.deadThresholdTokens === undefined ? DEFAULTS.deadThresholdTokens : checkNumber('options.deadThresholdTokens', o.deadThresholdTokens, 0, MAX_DEAD_THRESHOLD),
      bDecInit: o.bDecInit === undefined ? DEFAULTS.bDecInit : checkOneOf('options.bDecInit', o.bDecInit, B_DEC_INITS),
      normalize: o.normalize === undefined ? DEFAULTS.normalize : checkOneOf('options.normalize', o.normalize, ['none', 'expected-norm'] as const),
      // The default fits the 2 GiB hold below (the error is for a count the caller chose: the CLI
      // has no flag for it, and 4 batches of 65536 rows at dIn 4096 are 4 GiB).
      normalizeBatches:
        o.normalizeBatches === undefined
          ? Math.min(DEFAULTS.normalizeBatches, Math.max(1, Math.floor(NORMALIZE_HOLD_BYTES / (batchSize * sae.dIn * 4))))
          : checkInt('options.normalizeBatches', o.normalizeBatches, 1, 1 << 20),
      shuffle: o.shuffle === undefined ? DEFAULTS.shuffle : checkBool('options.shuffle', o.shuffle),
      seed: o.seed === undefined ? DEFAULTS.seed : checkInt('options.seed', o.seed, 0, Number.MAX_SAFE_INTEGER),
    };
    if (r.normalize === 'expected-norm' && r.normalizeBatches > 1 && r.normalizeBatches * r.batchSize * sae.dIn * 4 > NORMALIZE_HOLD_BYTES) {
      const most = Math.max(1, Math.floor(NORMALIZE_HOLD_BYTES / (r.batchSize * sae.dIn * 4)));
      throw new SaekitError(
        'ERR_SAEKIT_ARG',
        `Expected options.normalizeBatches of at most ${most} at batchSize ${r.batchSize} and dIn ${sae.dIn} (the estimate holds its batches until they are trained on, at most 2 GiB) but received ${r.normalizeBatches}`,
      );
    }
    if (r.totalTokens !== undefined && r.epochs !== undefined) {
      throw new SaekitError('ERR_SAEKIT_ARG', 'Expected one of options.totalTokens and options.epochs but received both');
    }
    this.options = Object.freeze(r);
    this.bDecInitGiven = o.bDecInit !== undefined;
  }

  /**
   * Steps the run takes on `source`. ERR_SAEKIT_ARG for a finite source shorter than one batch
   * (it has no whole batch), and with epochs for a source of unknown length.
   */
  totalSteps(source: ActivationSource): number {
    if (source === null || typeof source !== 'object' || typeof (source as ActivationSource).batches !== 'function') {
      throw argError('source', 'an ActivationSource', source);
    }
    const { batchSize, totalTokens, epochs } = this.options;
    // A finite source shorter than one batch yields no whole batch: refused here, with totalTokens
    // too (a run would otherwise read the empty passes planned for totalTokens before failing).
    if (source.numRows !== undefined && source.numRows < batchSize) {
      throw new SaekitError('ERR_SAEKIT_ARG', `Expected a source with at least batchSize = ${batchSize} rows but it has ${source.numRows}; lower options.batchSize`);
    }
    if (totalTokens !== undefined) return Math.ceil(totalTokens / batchSize);
    if (source.numRows === undefined) {
      throw new SaekitError('ERR_SAEKIT_ARG', 'Expected options.totalTokens for a source of unknown length (set totalTokens, or use a finite source with epochs)');
    }
    return (epochs ?? 1) * Math.floor(source.numRows / batchSize);
  }

  /**
   * Trains; resolves when done, aborted or out of data. Never leaves trained work unsaved when
   * saveDir/checkpointDir are set: when the run fails (the source, onStep, a step), the steps
   * trained so far are checkpointed first (checkpointDir), the SAE is left working on raw
   * activations (the normalisation scale folded in) and the error is rethrown; a new run refused
   * at its first step leaves the SAE exactly as it was (b_dec's init undone). One fit() at a
   * time per SAE and per checkpointDir (ERR_SAEKIT_ARG otherwise: two runs would interleave
   * their steps, or remove each other's checkpoint files). A signal already aborted returns at
   * once, reading and changing nothing.
   *
   * A second fit() on the same Trainer continues training the SAE: Adam's moments and b_dec carry
   * over, and the learning-rate schedule (warmup included) runs again over the new run's steps.
   * b_dec is initialised (bDecInit) while it is all zeros (a new SAE), and on a Trainer's first
   * fit() when bDecInit was given; otherwise a loaded or already trained SAE keeps its b_dec.
   */
  async fit(source: ActivationSource, options?: FitOptions): Promise<FitResult> {
    const t0 = performance.now();
    const fo = checkOptions('options', options, FIT_OPTIONS);
    if (source === null || typeof source !== 'object' || typeof (source as ActivationSource).batches !== 'function') {
      throw argError('source', 'an ActivationSource', source);
    }
    if (source.dIn !== this.sae.dIn) {
      throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected a source with dIn = ${this.sae.dIn} (the SAE's) but it has dIn = ${source.dIn}`);
    }
    if (training.has(this.sae)) {
      throw new SaekitError('ERR_SAEKIT_ARG', 'Expected one fit() at a time per SparseAutoencoder but this one is already being trained (await the running fit() first)');
    }
    if (fo.signal !== undefined && (fo.signal === null || typeof fo.signal !== 'object' || typeof fo.signal.addEventListener !== 'function')) {
      throw argError('options.signal', 'an AbortSignal', fo.signal);
    }
    if (fo.onStep !== undefined && typeof fo.onStep !== 'function') throw argError('options.onStep', 'a function', fo.onStep);
    if (fo.logFile !== undefined && (typeof fo.logFile !== 'string' || fo.logFile === '')) throw argError('options.logFile', 'a file path', fo.logFile);
    if (fo.checkpointDir !== undefined && (typeof fo.checkpointDir !== 'string' || fo.checkpointDir === '')) throw argError('options.checkpointDir', 'a folder path', fo.checkpointDir);
    if (fo.saveDir !== undefined && (typeof fo.saveDir !== 'string' || fo.saveDir === '')) throw argError('options.saveDir', 'a folder path', fo.saveDir);
    if (fo.resume !== undefined) checkBool('options.resume', fo.resume);
    if (fo.resume && fo.checkpointDir === undefined) throw argError('options.checkpointDir', 'the folder to resume from (options.resume is true)', fo.checkpointDir);
    if (fo.checkpointEvery !== undefined) checkInt('options.checkpointEvery', fo.checkpointEvery, 1, 1 << 30);
    if (fo.saveFormat !== undefined) {
      checkOneOf('options.saveFormat', fo.saveFormat, ['saelens', 'sparsify'] as const);
      if (fo.saveFormat === 'sparsify' && (this.sae.architecture !== 'topk' || !this.sae.applyBDecToInput)) {
        throw new SaekitError(
          'ERR_SAEKIT_ARG',
          `Expected options.saveFormat 'saelens' for this SAE (${this.sae.architecture}, applyBDecToInput ${String(this.sae.applyBDecToInput)}): sparsify files hold TopK SAEs that subtract b_dec`,
        );
      }
    }
    if (fo.signal?.aborted) return { status: 'aborted', steps: 0, tokens: 0, last: undefined, scale: 1, seconds: (performance.now() - t0) / 1e3, saved: [] };
    training.add(this.sae);
    let lock: FolderLock | undefined;
    try {
      if (fo.checkpointDir !== undefined) {
        // Made here (run() makes the other folders) so that the lock is held before anything is read or written.
        await makeDir('options.checkpointDir', fo.checkpointDir);
        lock = await lockFolder('options.checkpointDir', fo.checkpointDir);
      }
      return await this.run(source, fo, t0);
    } finally {
      training.delete(this.sae);
      await lock?.release();
    }
  }

  /**
   * Frees the optimizer state (Adam's moments: twice the parameters). Idempotent; the SAE stays
   * usable. A fit() running meanwhile rejects with ERR_SAEKIT_DISPOSED at its next step or checkpoint.
   */
  dispose(): void {
    this.opt?.dispose();
    this.opt = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  private async run(source: ActivationSource, fo: Partial<FitOptions>, t0: number): Promise<FitResult> {
    const every = fo.checkpointEvery === undefined ? 1000 : checkInt('options.checkpointEvery', fo.checkpointEvery, 1, 1 << 30);
    // Output folders are made (and a bad path reported) before any training, not at the end
    // (checkpointDir already, by fit(), to hold its lock).
    if (fo.saveDir !== undefined) {
      await makeDir('options.saveDir', fo.saveDir);
      // A folder the final save would refuse (another library's SAE of the other layout) is refused now.
      const { checkNoForeignPair } = await import('../io/sae-files.js');
      await checkNoForeignPair(fo.saveDir, fo.saveFormat ?? 'saelens');
    }
    if (fo.logFile !== undefined) await makeDir('options.logFile', path.dirname(fo.logFile), fo.logFile);
    const o = this.options;
    const total = this.totalSteps(source);
    const warmup = Math.min(o.warmupSteps, Math.ceil(total / 10));
    // A Trainer's later fit() continues training (its Adam state, unless dispose() freed it, and
    // its b_dec carry over). Only a fit() that changed something counts (a step taken, or a
    // checkpoint restored): after one refused before any update, the next is still the first.
    const continuing = this.fitted;
    this.opt ??= this.sae.adam({ lr: o.lr, beta1: o.beta1, beta2: o.beta2, eps: o.eps });
    const opt = this.opt;

    let step = 0;
    let tokens = 0;
    let scale = 1;
    let initialised = false;
    let resumedFrom: FitResult['resumedFrom'];
    if (fo.resume && fo.checkpointDir) {
      const ck = await readCheckpoint(fo.checkpointDir);
      if (ck) {
        checkResumable(ck, o, fo.checkpointDir, source.numRows);
        await this.restore(opt, ck, fo.checkpointDir);
        this.fitted = true;
        resumedFrom = { step: ck.step, tokens: ck.tokens };
        step = ck.step;
        tokens = ck.tokens;
        scale = ck.scale;
        initialised = true;
      }
    }

    // Enough epochs for the run; the iterator is the same sequence on every resume (same seed),
    // so skipping `step` batches puts the data back where the checkpoint left it.
    // Passes serve whole batches only (dropLast): floor(numRows / batchSize) steps each.
    const epochs =
      o.totalTokens !== undefined && source.numRows !== undefined ? Math.ceil(total / Math.max(1, Math.floor(source.numRows / o.batchSize))) + 1 : o.epochs ?? 1;
    // Recycled batch arrays. On the CPU each batch is copied by opt.prefetch() (synchronously)
    // before the next one is asked for. On a device that prefetches, the arrays are page-locked
    // memory (BATCH_ARRAYS) that the upload reads where it lies: each batch is borrowed by its
    // prefetch and handed back (release) once its step has settled, so no copy is made on the JS
    // thread. Batches held longer (the first ones, below) are copied.
    const arrays: BatchArrays = { alloc: (n) => opt._pinnedArray(n) };
    const batchOptions = { batchSize: o.batchSize, shuffle: o.shuffle, seed: o.seed, epochs, dropLast: true, recycle: true, ...(opt._canPin() && process.env.SAEKIT_TRAINER_PINNED !== '0' ? { [BATCH_ARRAYS]: arrays } : {}) };
    let it = source.batches(batchOptions)[Symbol.asyncIterator]();
    // totalTokens on a finite source: the passes planned above come short when rows are skipped
    // as non-finite (onNonFinite: 'skip'), so they are planned again (the same sequence, so a
    // resume that skips `step` batches still lands where its checkpoint left off) as long as the
    // last plan served a batch. A plan that served none (every row skipped) ends the run.
    const replan = o.totalTokens !== undefined && source.numRows !== undefined;
    let served = 0;
    const release = (b: Batch): void => (b as ReleasableBatch)[RELEASE_BATCH]?.();
    const pending: Batch[] = [];
    const nextBatch = async (): Promise<Batch | undefined> => {
      if (pending.length) return pending.shift();
      for (;;) {
        const r = await it.next();
        if (r.done) {
          if (!replan || served === 0) return undefined;
          served = 0;
          it = source.batches(batchOptions)[Symbol.asyncIterator]();
          continue;
        }
        if (r.value.rows >= 2) {
          served++;
          return r.value;
        }
        release(r.value);
      }
    };
    let last: StepLog | undefined;
    let status: FitResult['status'] = 'completed';
    let failure: { error: unknown } | undefined;
    let stepIntact = true;
    let saved: string[] = [];
    // The next batch, prefetched while a step runs (released in the finally block below if no
    // step takes it: after the last step, an abort or a failed step).
    let log: FileHandle | undefined;
    // The log's lines reach the disk (fdatasync) before a checkpoint commits their steps: after a
    // power loss, a resume (which skips the steps up to its checkpoint) finds each of them logged.
    // Lines past the last checkpoint may be lost; a resume trains and logs those steps again. A
    // log that cannot be synced (a pipe, a character device: EINVAL) has nothing to flush.
    /** Set when a line could not be written or flushed: no checkpoint may commit its step (not even a failed run's). */
    let logLost = false;
    const logFailed = (err: unknown): never => {
      logLost = true;
      throw pathError('options.logFile', fo.logFile!, 'a file that can be appended to', err);
    };
    /** The log file was created by this run: its folder's entry is synced with its first flush. */
    let logCreated = false;
    const syncLog = async (): Promise<void> => {
      await log?.datasync().catch((err: unknown) => {
        if (!UNSYNCABLE.has((err as { code?: unknown }).code)) logFailed(err);
      });
      if (logCreated) {
        // Best effort, as for checkpoints: a new file's lines are of no use if its name is lost.
        logCreated = false;
        await syncFolder(path.dirname(path.resolve(fo.logFile!)));
      }
    };
    /** Set while a step runs: a step that failed other than as non-finite may have left the parameters half updated. */
    let inStep = false;
    let batchPromise: Promise<{ rows: number; x: PrefetchedBatch; done: () => void } | undefined> = Promise.resolve(undefined);
    // The first reads (skipping to a checkpoint, filling a shuffle buffer) can wait long on a slow
    // or stalled source: an abort ends them too.
    const STOPPED = new Error('aborted while reading');
    /** Whether this run got past its first reads (a resumed run: past skipping to its checkpoint). */
    let started = false;
    /** The biases before this run set the scale and b_dec's init: put back if it fails before its first step. */
    let biases0: { b_enc: Float32Array; b_dec: Float32Array } | undefined;
    /** Puts biases0 back exactly (folding the scale back would round them). */
    const restoreBiases = (): void => {
      try {
        this.sae.setWeights(biases0!);
      } catch {
        // The SAE was disposed meanwhile: what ended the run is what to report.
      }
    };
    const nextOrStop = async (): Promise<Batch | undefined> => {
      const b = await unlessAborted(nextBatch(), fo.signal);
      if (b === ABORTED) throw STOPPED;
      return b;
    };
    try {
      // A checkpoint at or past the end of this run (a lower totalTokens) has nothing left to train:
      // re-reading the data up to it would only cost time (without end, planned pass after pass).
      for (let s = 0; s < (step < total ? step : 0); s++) {
        const b = await nextOrStop();
        if (!b) break;
        release(b);
      }

      if (!initialised) {
        // Read the first batches ahead: they set the scale and b_dec, then are trained on.
        const first: Batch[] = [];
        const want = o.normalize === 'expected-norm' ? o.normalizeBatches : 1;
        for (let i = 0; i < want; i++) {
          const b = await nextOrStop();
          if (!b) break;
          first.push({ rows: b.rows, dIn: b.dIn, data: b.data.slice() });
          release(b);
        }
        if (first.length === 0) {
          // Batches are whole (dropLast): a source shorter than one batch yields none.
          const short = source.numRows !== undefined && source.numRows < o.batchSize;
          throw new SaekitError(
            'ERR_SAEKIT_ARG',
            short
              ? `Expected a source with at least batchSize = ${o.batchSize} rows but it has ${source.numRows}; lower options.batchSize`
              : 'Expected the source to produce a whole batch (of at least 2 rows) but it produced none',
          );
        }
        // O(rows x dIn) work on the JS thread, in slices between turns of the event loop (the
        // geometric median's 200 passes over a batch held it for a third of a second at dIn 2048).
        const sliced = <T>(work: Generator<number, T>): Promise<T> =>
          runSliced(work, fo.signal).catch((err: unknown) => {
            throw fo.signal?.aborted ? STOPPED : err;
          });
        const s = o.normalize === 'expected-norm' ? await sliced(normScaleWork(first, this.sae.dIn)) : 1;
        await this.sae._checkTrainable(); // before any weight changes (b_dec's init, the scale)
        const w0 = await this.sae.weights();
        biases0 = { b_enc: w0.b_enc, b_dec: w0.b_dec };
        if (s !== 1) {
          // Training runs on s·x: the same model there has its biases times s (the inverse of the
          // fold at the end; a no-op for a new SAE's zero biases).
          this.sae.setWeights({ b_enc: w0.b_enc.map((v) => v * s), b_dec: w0.b_dec.map((v) => v * s) });
        }
        // Only now is there a scale to fold back (a run refused before this leaves the biases alone).
        scale = s;
        const x0 = await sliced(scaledWork(first[0]!.data, scale));
        // b_dec still all zero (a new SAE, or a run stopped before its first batch), or bDecInit
        // given for this Trainer's first run (explicit 'zeros' clears it); a trained b_dec is kept.
        if (w0.b_dec.every((v) => v === 0) || (this.bDecInitGiven && !continuing)) {
          const b =
            o.bDecInit === 'zeros'
              ? new Float32Array(this.sae.dIn)
              : await sliced(o.bDecInit === 'mean' ? columnMeanWork(x0, this.sae.dIn) : geometricMedianWork(x0, this.sae.dIn, GM_MAX_ITER, GM_TOL));
          this.sae.setWeights({ b_dec: Float32Array.from(b) });
        }
        pending.push(...first);
      }
      started = true;

      // A resumed run trains the steps after its checkpoint again: their lines (written before a
      // crash, or a torn last line) leave the log first, so each step is logged once. With no
      // checkpoint yet (a run killed before its first), the run starts over from step 0.
      if (fo.logFile && fo.resume) await _trimLogPast(fo.logFile, resumedFrom?.step ?? 0);
      if (fo.logFile) {
        try {
          // 'ax' first, to know whether this run creates the file (its folder entry then needs a sync too).
          try {
            log = await open(fo.logFile, 'ax');
            logCreated = true;
          } catch (err) {
            if ((err as { code?: unknown }).code !== 'EEXIST') throw err;
            log = await open(fo.logFile, 'a');
          }
        } catch (err) {
          throw pathError('options.logFile', fo.logFile, 'a file that can be appended to', err);
        }
      }
      // Each batch is prefetched as soon as it arrives, while the previous step runs: on a GPU
      // it is already on its way to the device when its step starts. A copied batch's array is
      // free again at once (the copy applies the input scale); a borrowed one (page-locked, scale
      // 1) is released after its step.
      const nextPrefetched = async (): Promise<{ rows: number; x: PrefetchedBatch; done: () => void } | undefined> => {
        const b = await nextBatch();
        if (!b) return undefined;
        if (scale === 1 && (b as ReleasableBatch)[RELEASE_BATCH]) return { rows: b.rows, x: opt._prefetchBorrowed(b.data), done: () => release(b) };
        const x = opt.prefetch(b.data, { scale });
        release(b);
        return { rows: b.rows, x, done: () => undefined };
      };
      batchPromise = step < total ? nextPrefetched() : Promise.resolve(undefined);
      batchPromise.catch(() => undefined); // awaited below; a read that fails while a step runs is not an unhandled rejection
      while (step < total) {
        if (fo.signal?.aborted) {
          status = 'aborted';
          break;
        }
        const batch = await unlessAborted(batchPromise, fo.signal);
        if (batch === ABORTED) {
          status = 'aborted';
          break;
        }
        if (!batch) {
          // With epochs, the passes ending is the run's end: rows skipped as non-finite
          // (onNonFinite: 'skip') leave fewer whole batches than numRows planned for.
          status = o.epochs !== undefined ? 'completed' : 'exhausted';
          break;
        }
        const lr = learningRate(step, total, o.lr, warmup, o.decay, o.decayFraction);
        const ts = performance.now();
        inStep = true;
        this.fitted = true;
        const stepping = opt.step(batch.x, { lr, auxkAlpha: o.auxkAlpha, auxkVariant: o.auxkVariant, deadThresholdTokens: o.deadThresholdTokens });
        // Fetch and prefetch the next batch while this step runs natively.
        batchPromise = step + 1 < total ? nextPrefetched() : Promise.resolve(undefined);
        batchPromise.catch(() => undefined);
        const st: StepStats = await stepping.finally(batch.done);
        inStep = false;
        const dt = (performance.now() - ts) / 1e3;
        step += 1;
        tokens += batch.rows;
        last = {
          step,
          tokens,
          loss: st.loss,
          fvu: st.fvu,
          l0: st.l0,
          numDead: st.numDead,
          deadFraction: st.numDead / this.sae.numLatents,
          auxkLoss: st.auxkLoss,
          lr,
          tokensPerSec: batch.rows / Math.max(dt, 1e-9),
        };
        if (log) {
          // A failed append (disk full, a quota) is reported against the option, as opening it is.
          await log.write(`${JSON.stringify(last)}\n`).catch(logFailed);
        }
        if (fo.onStep) await fo.onStep(last);
        if (fo.checkpointDir && step % every === 0 && step < total) {
          await syncLog();
          await this.checkpoint(opt, fo.checkpointDir, step, tokens, scale, total, source.numRows);
        }
      }
      if (fo.checkpointDir) {
        await syncLog();
        await this.checkpoint(opt, fo.checkpointDir, step, tokens, scale, total, source.numRows);
      }
    } catch (err) {
      if (err !== STOPPED) {
        failure = { error: err };
        // A step refused by its checks leaves the parameters as they were (AdamOptimizer.step:
        // non-finite values, bad arguments or shapes, a disposed object); other failures (memory,
        // the device, a bug) may have stopped it halfway.
        stepIntact = !inStep || (err instanceof SaekitError && REFUSED_BEFORE_UPDATE.has(err.code));
      } else {
        status = 'aborted';
        if (!started && biases0) {
          // Stopped while it set the scale and b_dec's init (sliced work): the biases as they were.
          restoreBiases();
          scale = 1;
        }
      }
    } finally {
      // The pass stops first, so a batch still being read (a source that stalls) settles at once.
      const stopping = it.return?.();
      // Disposing a batch a step already took is a no-op, and done() is idempotent.
      const unused = await batchPromise.catch(() => undefined);
      unused?.x.dispose();
      unused?.done();
      // On disk before the checkpoint a failure writes below (if it cannot be, that checkpoint is not written).
      await syncLog().catch(() => undefined);
      await log?.close();
      await stopping;
    }
    if (failure) {
      // Keep the work: checkpoint the steps trained since the last checkpoint (unless a step
      // failed midway, or a log line was not written or flushed: a resume would skip its step
      // unlogged), leave the SAE on raw activations, then report the failure.
      if (stepIntact && !logLost && fo.checkpointDir && step > (resumedFrom?.step ?? 0)) {
        await this.checkpoint(opt, fo.checkpointDir, step, tokens, scale, total, source.numRows).catch(() => undefined);
      }
      // A new run refused at its first step (checked before any update) leaves the SAE exactly as
      // it was: the scale and b_dec's init are undone, not folded.
      if (biases0 && step === 0 && stepIntact) {
        this.fitted = continuing;
        restoreBiases();
      } else if (scale !== 1 && stepIntact) await this.foldScale(scale).catch(() => undefined);
      throw failure.error;
    }
    await this.foldScale(scale);
    // A new run stopped during its first reads has trained nothing and has no checkpoint (one
    // written before b_dec's init and the input scale would resume without them): nothing is
    // written, so a later run in the same folders starts afresh.
    const nothingToSave = status === 'aborted' && !started && !resumedFrom;
    if (fo.saveDir && !nothingToSave) saved = await this.sae.save(fo.saveDir, { format: fo.saveFormat ?? 'saelens' });
    return { status, steps: step, tokens, last, scale, seconds: (performance.now() - t0) / 1e3, saved, ...(resumedFrom ? { resumedFrom } : {}) };
  }

  /**
   * The SAE now works on raw activations: the input scale s is folded into the biases (TopK
   * commutes with a positive scale, so W_enc and the unit decoder rows stay as they are).
   */
  private async foldScale(scale: number): Promise<void> {
    if (scale === 1) return;
    const w = await this.sae.weights();
    this.sae.setWeights({ b_enc: w.b_enc.map((v) => v / scale), b_dec: w.b_dec.map((v) => v / scale) });
  }

  /** `opt` is the run's optimizer (not this.opt, which dispose() clears: it then rejects with ERR_SAEKIT_DISPOSED). */
  private async checkpoint(opt: AdamOptimizer, dir: string, step: number, tokens: number, scale: number, total: number, sourceRows: number | undefined): Promise<void> {
    const { writeSafetensors, writeFileAtomic } = await import('../io/index.js');
    await makeDirs(dir);
    const [w, adam, since] = await Promise.all([this.sae.weights(), opt.statePieces(CHECKPOINT_LIMITS.pieceFloats), this.sae.tokensSinceFired()]);
    // A name of its own for each write (the step and 48 random bits): checkpoint.json, renamed into
    // place last, is the only commit point. Under a fixed per-step name, a run writing into a folder
    // that holds another run's checkpoint at the same step replaced that state first, so a kill
    // before checkpoint.json was written left the old checkpoint.json naming the new weights.
    const stateFile = `state-${step}-${randomBytes(6).toString('hex')}.safetensors`;
    const { dIn, numLatents, k, applyBDecToInput } = this.sae;
    await writeSafetensors(path.join(dir, stateFile), {
      W_enc: f32(w.W_enc, [dIn, numLatents]),
      b_enc: f32(w.b_enc, [numLatents]),
      W_dec: f32(w.W_dec, [numLatents, dIn]),
      b_dec: f32(w.b_dec, [dIn]),
      ...momentTensors('adam.m', adam.m),
      ...momentTensors('adam.v', adam.v),
      tokens_since_fired: { dtype: 'float64', shape: [numLatents], data: since },
    });
    // The state file's digest, read back from the page cache: a resume refuses a file damaged since
    // (a flipped bit in a weight is otherwise a valid float, resumed as another run).
    const stateSha256 = await fileSha256(path.join(dir, stateFile));
    const meta: Checkpoint = {
      version: CHECKPOINT_VERSION,
      step,
      tokens,
      scale,
      total,
      adamSteps: adam.t,
      stateFile,
      stateSha256,
      sae: { dIn, numLatents, k, applyBDecToInput },
      options: this.options,
      ...(sourceRows !== undefined ? { sourceRows } : {}),
    };
    await writeFileAtomic(path.join(dir, 'checkpoint.json'), `${JSON.stringify(meta, null, 2)}\n`);
    // Older states are no longer referenced; temporary files of writes that a killed process never
    // finished (writeFileAtomic's .<name>.<pid>.<hex>.tmp) are removed too, whatever their process
    // id (a killed run's may be this one's: containers restart with the same ids), unless this
    // process is still writing them; the folder lock keeps other runs out.
    for (const f of await readdir(dir)) {
      const stale = /^\.(?:state-\d+(?:-[0-9a-f]{12})?\.safetensors|checkpoint\.json)\.\d+\.[0-9a-f]+\.tmp$/.test(f);
      if ((STATE_FILE.test(f) && f !== stateFile) || (stale && !isPendingTemporary(path.join(dir, f)))) await rm(path.join(dir, f), { force: true });
    }
  }

  private async restore(opt: AdamOptimizer, ck: Checkpoint, dir: string): Promise<void> {
    const { dIn, numLatents, k } = this.sae;
    if (ck.sae.dIn !== dIn || ck.sae.numLatents !== numLatents || ck.sae.k !== k) {
      throw new SaekitError(
        'ERR_SAEKIT_FORMAT',
        `${path.join(dir, 'checkpoint.json')}: the checkpoint is for an SAE with dIn ${ck.sae.dIn}, numLatents ${ck.sae.numLatents}, k ${ck.sae.k}; this one has ${dIn}, ${numLatents}, ${k}`,
      );
    }
    // The encoder's input depends on it (x - b_dec or x): the weights mean something else without it.
    const bDec = this.sae.applyBDecToInput;
    if (ck.sae.applyBDecToInput !== undefined && ck.sae.applyBDecToInput !== bDec) {
      throw new SaekitError(
        'ERR_SAEKIT_FORMAT',
        `${path.join(dir, 'checkpoint.json')}: the checkpoint is for an SAE with applyBDecToInput ${ck.sae.applyBDecToInput}; this one has ${bDec}`,
      );
    }
    const { readSafetensors } = await import('../io/index.js');
    const file = path.join(dir, ck.stateFile);
    if (ck.stateSha256 !== undefined) {
      const digest = await fileSha256(file).catch((err: unknown) => {
        throw new SaekitError('ERR_SAEKIT_FORMAT', `${file}: cannot be read (${(err as Error).message})`);
      });
      if (digest !== ck.stateSha256) {
        throw new SaekitError('ERR_SAEKIT_FORMAT', `${file}: its SHA-256 is not the one checkpoint.json recorded (the file was damaged or replaced since: fix it, or start over with a fit() without options.resume)`);
      }
    }
    const r = await readSafetensors(file);
    // Every tensor is read and its dtype and shape checked before anything is set; a value the
    // setters refuse (NaN, a negative second moment) is then a FORMAT error naming the file, and
    // the SAE gets its weights back.
    const bad = (why: string) => new SaekitError('ERR_SAEKIT_FORMAT', `${file}: ${why} (a damaged checkpoint: fix it, or start over with a fit() without options.resume)`);
    try {
      const get = async (name: string, dtype: 'float32' | 'float64', shape?: number[]) => {
        const info = r.get(name);
        if (!info) throw bad(`holds no tensor ${name}`);
        if (info.dtype !== dtype) throw bad(`tensor ${name} is ${info.dtype}, not ${dtype}`);
        if (shape && (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i]))) {
          throw bad(`tensor ${name} has shape [${info.shape.join(', ')}], not [${shape.join(', ')}]`);
        }
        return (await r.read(name)).data;
      };
      const weights = {
        W_enc: (await get('W_enc', 'float32', [dIn, numLatents])) as Float32Array,
        b_enc: (await get('b_enc', 'float32', [numLatents])) as Float32Array,
        W_dec: (await get('W_dec', 'float32', [numLatents, dIn])) as Float32Array,
        b_dec: (await get('b_dec', 'float32', [dIn])) as Float32Array,
      };
      const moment = async (name: string): Promise<Float32Array[]> => {
        if (r.get(name)) return [(await get(name, 'float32')) as Float32Array];
        const pieces: Float32Array[] = [];
        for (let i = 0; r.get(`${name}.${i}`); i++) pieces.push((await get(`${name}.${i}`, 'float32')) as Float32Array);
        return pieces;
      };
      const state = { m: await moment('adam.m'), v: await moment('adam.v'), t: ck.adamSteps };
      const since = (await get('tokens_since_fired', 'float64', [numLatents])) as Float64Array;
      // All or nothing: the counters are checked in full before they change anything, the
      // optimizer's state too (so it goes last: a refused checkpoint leaves the Trainer's Adam
      // state as it was, not the checkpoint's); what did change is put back.
      const before = await this.sae.weights();
      const sinceBefore = await this.sae.tokensSinceFired();
      try {
        this.sae.setTokensSinceFired(since);
        this.sae.setWeights(weights);
        opt.setStatePieces(state);
      } catch (err) {
        this.sae.setWeights(before);
        this.sae.setTokensSinceFired(sinceBefore);
        if (err instanceof SaekitError) throw bad(err.message);
        throw err;
      }
    } catch (err) {
      // The reader's own errors name the file already.
      if (err instanceof SaekitError && err.code !== 'ERR_SAEKIT_FORMAT' && !err.message.includes(file)) throw bad(err.message);
      throw err;
    } finally {
      await r.close();
    }
  }
}

/**
 * @internal Adam's moments are checkpointed as one tensor each ('adam.m', 'adam.v') up to
 * `pieceFloats` floats, else as pieces 'adam.m.0', 'adam.m.1', ... of that many: the slab of an
 * SAE of dIn 4096 and 2^19 latents is longer than a typed array (2^32 elements on Node 20).
 */
export const CHECKPOINT_LIMITS = { pieceFloats: 2 ** 28 };

/** A float32 tensor of a checkpoint's state file. */
function f32(data: Float32Array, shape: number[] = [data.length]): { dtype: 'float32'; shape: number[]; data: Float32Array } {
  return { dtype: 'float32', shape, data };
}

function momentTensors(name: string, pieces: Float32Array[]): Record<string, ReturnType<typeof f32>> {
  if (pieces.length === 1) return { [name]: f32(pieces[0]!) };
  return Object.fromEntries(pieces.map((p, i) => [`${name}.${i}`, f32(p)]));
}

interface Checkpoint {
  version: number;
  step: number;
  tokens: number;
  scale: number;
  total: number;
  adamSteps: number;
  stateFile: string;
  /** SHA-256 of the state file, hex (absent in checkpoints written before 2026-12-03). */
  stateSha256?: string;
  /** applyBDecToInput: absent in checkpoints written before 2026-12-02 (all SAEs the CLI trains have it true). */
  sae: { dIn: number; numLatents: number; k: number; applyBDecToInput?: boolean };
  options: ResolvedTrainerOptions;
  /** Rows of the source trained on, when it had a known length (absent in older checkpoints). */
  sourceRows?: number;
}

/** A checkpoint's state file: state-<step>-<12 hex digits>.safetensors (state-<step>.safetensors before 2026-11-30). */
const STATE_FILE = /^state-\d+(?:-[0-9a-f]{12})?\.safetensors$/;

/** The options that fix the data order and the input scale: a resume must keep them. */
const RESUME_FIXED = ['batchSize', 'seed', 'shuffle', 'normalize'] as const;

function checkResumable(ck: Checkpoint, o: Readonly<ResolvedTrainerOptions>, dir: string, sourceRows: number | undefined): void {
  if (ck.sourceRows !== undefined && sourceRows !== undefined && ck.sourceRows !== sourceRows) {
    throw new SaekitError(
      'ERR_SAEKIT_ARG',
      `Expected a source of ${ck.sourceRows} rows to resume the checkpoint in ${dir} (the run was trained on it; the data order depends on it) but this one has ${sourceRows}`,
    );
  }
  for (const key of RESUME_FIXED) {
    const was = ck.options?.[key];
    if (was !== undefined && was !== o[key]) {
      throw new SaekitError(
        'ERR_SAEKIT_ARG',
        `Expected options.${key} = ${JSON.stringify(was)} to resume the checkpoint in ${dir} (the run was trained with it; ` +
          `the data order and the step count depend on it) but received ${JSON.stringify(o[key])}; resume with the same value or start a new run`,
      );
    }
  }
}

/** fdatasync's errors for a file that cannot be synced (a pipe, a socket, a character device; a file system without it): nothing to flush. */
const UNSYNCABLE = new Set<unknown>(['EINVAL', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS']);

/** An output path that could not be made or opened, as ERR_SAEKIT_ARG naming the option and the system's reason. */
function pathError(name: string, p: string, expected: string, err: unknown): SaekitError {
  const why = err instanceof Error ? err.message : String(err);
  return new SaekitError('ERR_SAEKIT_ARG', `Expected ${name} to be ${expected} but '${p}' is not usable: ${why}`);
}

/** mkdir -p, with the failure reported against the option that named the path. */
async function makeDir(name: string, dir: string, shown = dir): Promise<void> {
  if (typeof shown !== 'string' || shown.length === 0) throw argError(name, 'a non-empty path', shown);
  try {
    await makeDirs(dir);
  } catch (err) {
    throw pathError(name, shown, name === 'options.logFile' ? 'a file in a folder that can be created' : 'a folder that can be created', err);
  }
}

/** The most bytes a checkpoint.json may have (it holds a few numbers and the options). */
const MAX_CHECKPOINT_JSON = 1 << 20;

/**
 * The checkpoint in `dir`, undefined when there is none (no checkpoint.json). Read as hostile
 * input: a regular file of at most 1 MiB (a FIFO would block the read, a device never end), every
 * field checked (a wrong one would resume a different run, or fail only after training), and any
 * other failure to read it is ERR_SAEKIT_FORMAT naming the file, never taken for "no checkpoint"
 * (a new run would then replace it).
 */
export async function readCheckpoint(dir: string): Promise<Checkpoint | undefined> {
  const file = path.join(dir, 'checkpoint.json');
  const bad = (why: string) => new SaekitError('ERR_SAEKIT_FORMAT', `${file}: ${why}`);
  const bytes = await readBoundedFile(file, MAX_CHECKPOINT_JSON, (size) => `${size} bytes, over the ${MAX_CHECKPOINT_JSON} a checkpoint.json may have`);
  if (!bytes) return undefined;
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch (err) {
    throw bad(`cannot be read (${(err as Error).message})`);
  }
  let ck: Checkpoint;
  try {
    ck = JSON.parse(text) as Checkpoint;
  } catch (err) {
    throw bad(`invalid JSON (${(err as Error).message})`);
  }
  if (ck === null || typeof ck !== 'object' || ck.version !== CHECKPOINT_VERSION || typeof ck.stateFile !== 'string' || !STATE_FILE.test(ck.stateFile)) {
    throw bad(`not a saekit checkpoint of version ${CHECKPOINT_VERSION}`);
  }
  const count = (key: string, v: unknown, min = 0) => {
    if (!Number.isSafeInteger(v) || (v as number) < min) throw bad(`field ${key} must be an integer of at least ${min} but is ${JSON.stringify(v) ?? 'missing'}`);
    return v as number;
  };
  count('step', ck.step);
  count('tokens', ck.tokens);
  count('total', ck.total);
  count('adamSteps', ck.adamSteps);
  if (ck.sourceRows !== undefined) count('sourceRows', ck.sourceRows);
  if (ck.stateSha256 !== undefined && (typeof ck.stateSha256 !== 'string' || !/^[0-9a-f]{64}$/.test(ck.stateSha256))) {
    throw bad(`field stateSha256 must be 64 hex digits but is ${JSON.stringify(ck.stateSha256)}`);
  }
  if (typeof ck.scale !== 'number' || !Number.isFinite(ck.scale) || ck.scale <= 0) throw bad(`field scale must be a finite number above 0 but is ${JSON.stringify(ck.scale) ?? 'missing'}`);
  const sae: unknown = ck.sae;
  if (sae === null || typeof sae !== 'object') throw bad(`field sae must be an object (dIn, numLatents, k) but is ${JSON.stringify(sae) ?? 'missing'}`);
  count('sae.dIn', ck.sae.dIn, 1);
  count('sae.numLatents', ck.sae.numLatents, 1);
  count('sae.k', ck.sae.k);
  if (ck.sae.applyBDecToInput !== undefined && typeof ck.sae.applyBDecToInput !== 'boolean') throw bad(`field sae.applyBDecToInput must be true or false but is ${JSON.stringify(ck.sae.applyBDecToInput)}`);
  const options: unknown = ck.options;
  if (options === null || typeof options !== 'object' || Array.isArray(options)) throw bad(`field options must be an object (the run's options) but is ${JSON.stringify(options) ?? 'missing'}`);
  // Every step trains one whole batch (passes drop the short last one).
  const batch = count('options.batchSize', ck.options.batchSize, 1);
  if (ck.tokens !== ck.step * batch) throw bad(`field tokens is ${ck.tokens} but ${ck.step} steps of batches of ${batch} rows are ${ck.step * batch} tokens`);
  if (ck.adamSteps < ck.step) throw bad(`field adamSteps is ${ck.adamSteps}, fewer than the ${ck.step} steps trained`);
  return ck;
}

/** SHA-256 of a file, hex, read in 16 MiB pieces (between them the event loop runs). */
async function fileSha256(file: string): Promise<string> {
  const hash = createHash('sha256');
  const fh = await open(file, OPEN_READ_NOWAIT);
  try {
    const buf = new Uint8Array(16 << 20);
    for (let at = 0; ; ) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, at);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      at += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return hash.digest('hex');
}

function* scaledWork(x: Float32Array, s: number): Generator<number, Float32Array> {
  if (s === 1) return x;
  const out = new Float32Array(x.length);
  for (let i0 = 0; i0 < x.length; i0 += 1 << 16) {
    const i1 = Math.min(x.length, i0 + (1 << 16));
    for (let i = i0; i < i1; i++) out[i] = x[i]! * s;
    yield i1 - i0;
  }
  return out;
}

/** s such that the mean row norm of s x is sqrt(d). */
function* normScaleWork(batches: Batch[], d: number): Generator<number, number> {
  let sum = 0;
  let n = 0;
  for (const b of batches) {
    for (let r = 0; r < b.rows; r++) {
      let s = 0;
      for (let j = 0; j < d; j++) s += b.data[r * d + j]! ** 2;
      sum += Math.sqrt(s);
      n += 1;
      if (r % ROWS_PER_YIELD === ROWS_PER_YIELD - 1) yield ROWS_PER_YIELD * d;
    }
  }
  const mean = sum / n;
  if (!(mean > 0)) throw new SaekitError('ERR_SAEKIT_ARG', "normalize: 'expected-norm' needs inputs with nonzero norm");
  return Math.sqrt(d) / mean;
}

function* columnMeanWork(x: Float32Array, d: number): Generator<number, Float64Array> {
  const n = x.length / d;
  const m = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) m[j]! += x[i * d + j]! / n;
    if (i % ROWS_PER_YIELD === ROWS_PER_YIELD - 1) yield ROWS_PER_YIELD * d;
  }
  return m;
}
