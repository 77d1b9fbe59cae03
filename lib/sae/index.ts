/**
 * The TopK sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse autoencoders";
 * EleutherAI sparsify's default model), with every kernel native:
 *
 * ```
 * pre   = ReLU((x - b_dec) W_enc + b_enc)
 * codes = the k largest entries of pre per row (ties: lower latent index first)
 * x_hat = b_dec + sum_j codes.values[j] W_dec[codes.indices[j]]
 * ```
 *
 * Weights use the SAELens orientation at this boundary: `W_enc [dIn, numLatents]`,
 * `b_enc [numLatents]`, `W_dec [numLatents, dIn]`, `b_dec [dIn]`, row-major Float32Arrays.
 * Inside, each latent's encoder and decoder vectors are contiguous rows, so decoding and all
 * gradients touch only the selected latents.
 *
 * @example
 * ```ts
 * import { SparseAutoencoder } from 'saekit';
 * using sae = SparseAutoencoder.create({ dIn: 768, numLatents: 24576, k: 32, seed: 1 });
 * using opt = sae.adam({ lr: 2e-4 });
 * for (const batch of batches) {
 *   const { fvu, l0, numDead } = await opt.step(batch); // batch: Float32Array [4096 * 768]
 * }
 * const { codes, recon, fvu } = await sae.forward(x);
 * ```
 */
import { constants as bufferConstants } from 'node:buffer';

import { deviceName, resolveDevice, type DeviceOption, type ResolvedDevice } from '../backend/index.js';
import { argError, arrayTypeError, callNative, SaekitError, settleNative } from '../errors.js';
import { checkFolderPath } from '../io/common.js';
import { checkWriteSaeOptions, type WriteSaeOptions } from '../io/sae-options.js';
import { native, type NativeAdam, type NativePrefetched, type NativeSae, type NativeTensor } from '../native/index.js';
import { runSliced } from '../slices.js';
import { handleOf, Tensor } from '../tensor/index.js';
import { checkBool, checkInt, checkNumber, checkOneOf, checkOptions, checkSeed, optionNames, randomSeed } from '../validate.js';

/** Sparse codes: `k` (value, latent index) pairs per row, row-major, each row by descending value. */
export interface SparseCodes {
  rows: number;
  numLatents: number;
  k: number;
  /** [rows * k] code values (>= 0; 0 where fewer than k latents are positive). */
  values: Float32Array;
  /** [rows * k] latent indices in [0, numLatents). */
  indices: Int32Array;
}

/** SAE weights in the SAELens orientation (row-major). */
export interface SaeWeights {
  /** [dIn, numLatents] */
  W_enc: Float32Array;
  /** [numLatents] */
  b_enc: Float32Array;
  /** [numLatents, dIn] */
  W_dec: Float32Array;
  /** [dIn] */
  b_dec: Float32Array;
  /** [numLatents] JumpReLU thresholds (JumpReLU SAEs only). */
  threshold?: Float32Array;
}

/** Activation functions. */
export type Architecture = 'topk' | 'jumprelu';

/** Options of fromWeights() that both architectures take. */
export interface FromWeightsCommonOptions extends PlacementOptions {
  /** Whether the encoder sees `x - b_dec` (SAELens apply_b_dec_to_input). Default true (false for Gemma Scope). */
  applyBDecToInput?: boolean;
}

/**
 * Options of fromWeights(): a TopK SAE (the default architecture) needs `k`; a JumpReLU SAE
 * (`architecture: 'jumprelu'`) takes none.
 */
export type FromWeightsOptions = FromWeightsCommonOptions &
  (
    | {
        /** 'topk' (default). */
        architecture?: 'topk';
        /** Active latents per row, in 1..numLatents (at most 8192 on a CUDA device). Required. */
        k: number;
      }
    | {
        /**
         * 'jumprelu': `f = ReLU(z) 1[z > threshold]` with weights.threshold; a JumpReLU SAE
         * encodes and decodes (training it comes later).
         */
        architecture: 'jumprelu';
      }
  );

/**
 * Rows of activations: a Float32Array of rows * dIn values, or a float32 Tensor [rows, dIn] on
 * any device (steps and gradients read a tensor on the SAE's own device where it lies; otherwise
 * it is downloaded first).
 */
export type Rows = Float32Array | Tensor<'float32'>;

/** Where the parameters live and the ops run (see backend.use). */
export interface PlacementOptions {
  /** 'auto' (default: backend.use()'s default, initially 'auto'), 'cpu', 'cuda' or 'cuda:N'. */
  device?: DeviceOption;
  /**
   * Encoder GEMM precision on CUDA: 'bf16' (default; bf16 inputs, fp32 accumulation, fp32
   * master weights and Adam state), 'tf32' or 'fp32'. The CPU always computes in fp32.
   */
  precision?: 'fp32' | 'tf32' | 'bf16';
}

/** SparseAutoencoder.create options: the shape, the initial decoder's seed and the placement. */
export interface CreateOptions extends PlacementOptions {
  /** Input width (d_in), in 1..2^20. */
  dIn: number;
  /**
   * Number of latents (d_sae), in 1..2^24, with dIn x numLatents at most the longest typed array
   * (2^32 on Node 20), so that weights() and save() can return each matrix as one Float32Array.
   */
  numLatents: number;
  /** Active latents per row, in 1..numLatents (at most 8192 on a CUDA device). */
  k: number;
  /**
   * Philox seed of the initial decoder (stream 0; rows scaled to unit norm with a float64 norm
   * summed in order): the same seed gives the same weights on every machine and thread count.
   * Default: a fresh random seed.
   */
  seed?: number | bigint;
}

/**
 * Which AuxK loss (the libraries disagree). Both take, per row, the top kAux = min(dIn / 2,
 * numDead) dead latents by post-ReLU pre-activation and reconstruct the residual e = x - x_hat
 * (no gradient flows through e) from them:
 * - `'sparsify'` (default; EleutherAI sparsify's, and what issue 3 specified): the reconstruction
 *   includes b_dec (so b_dec gets an AuxK gradient), the squared error is divided by the batch's
 *   total variance of x (as the FVU) and scaled by min(numDead / (dIn / 2), 1).
 * - `'paper'`: Gao et al. 2024's form, as OpenAI's code and dictionary_learning compute it: the
 *   reconstruction has no b_dec, and the squared error is divided by the residual's own batch
 *   variance `sum ||e - mean(e)||^2`, with no scale (0 when the residual does not vary).
 * Either way saekit back-propagates the exact gradient of the loss, through the dead latents'
 * pre-activations into W_enc and b_enc too. sparsify's fused encoder backward uses only the
 * gradient of the top-k values, so there the AuxK loss trains the dead latents' decoder rows and
 * b_dec but never the encoder: same loss, different updates (about 4% apart in W_enc after 60
 * steps with many dead latents).
 */
export type AuxKVariant = 'sparsify' | 'paper';

/** The AuxK term of sae.gradients(): which latents are dead, its weight and its form. */
export interface AuxKOptions {
  /** [numLatents] 1 where a latent counts as dead. */
  deadMask: Uint8Array;
  /** Weight of the AuxK term in the loss. Default 1/32. 0 turns AuxK off (auxkLoss is then 0). */
  alpha?: number;
  /** Which AuxK loss. Default 'sparsify'. */
  variant?: AuxKVariant;
}

/** sae.encode() options. */
export interface EncodeOptions {
  /**
   * Give every row exactly the codes it gets when encoded alone, whatever the rows it is encoded
   * with and the thread count (CPU SAEs only). The encoder product then runs on saekit's built-in
   * GEMM, which computes each entry the same way for any shape; OpenBLAS's Haswell / Zen kernels
   * change the last bits with the number of rows (and a near-tie in the TopK can then select
   * another latent). On a 2-core AMD EPYC (AVX2) it encodes as fast as OpenBLAS (bench gemm:
   * builtin/blas 0.85-1.06). Default false.
   */
  batchInvariant?: boolean;
}

/**
 * options.batchInvariant (EncodeOptions, EncodeBatcherOptions) checked: a boolean, default false,
 * and true only for an SAE on the CPU.
 * @internal
 */
export function batchInvariantOption(value: unknown, device: string): boolean {
  const invariant = value === undefined ? false : checkBool('options.batchInvariant', value);
  if (invariant && device !== 'cpu') {
    throw new SaekitError('ERR_SAEKIT_ARG', `Expected options.batchInvariant to be false for an SAE on ${device} (batch-invariant encodes run on the CPU) but received true`);
  }
  return invariant;
}

/** sae.gradients() options. */
export interface GradientOptions {
  /** Add the AuxK loss over the given dead latents. */
  auxk?: AuxKOptions;
}

/** The loss terms and exact gradients of `loss = fvu + alpha * auxk`. */
export interface Gradients {
  loss: number;
  fvu: number;
  /**
   * The AuxK term before its alpha weight. 0 where the term is not computed: without
   * options.auxk, with alpha 0, with no dead latent in the mask, or with dIn < 2 (kAux = dIn / 2
   * is 0).
   */
  auxkLoss: number;
  grads: SaeWeights;
}

/** sae.adam() options: Adam's hyper-parameters (PyTorch's names and defaults). */
export interface AdamOptions {
  /** Learning rate. Default 2e-4 / sqrt(numLatents / 2^14) (sparsify's and dictionary_learning's scaling). */
  lr?: number;
  /** Default 0.9; at most 0.99999 (the moments are float32: 1 - beta1 must stay exact enough). */
  beta1?: number;
  /** Default 0.999; at most 0.9999999 (in float32 a larger beta2 rounds to 1 and v never grows). */
  beta2?: number;
  /** Default 1e-8. */
  eps?: number;
}

/** AdamOptimizer.step options, per step. */
export interface StepOptions {
  /** Learning rate for this step (for schedules). Default: the optimizer's. */
  lr?: number;
  /** Weight of the AuxK loss. Default 1/32. 0 turns AuxK off. */
  auxkAlpha?: number;
  /** Which AuxK loss (see AuxKVariant). Default 'sparsify'. */
  auxkVariant?: AuxKVariant;
  /** A latent is dead when more than this many tokens passed since it last fired. Default 10,000,000. */
  deadThresholdTokens?: number;
}

/** The optimizers each SAE made (weakly: an optimizer nobody holds is collected as usual). */
const optimizers = new WeakMap<SparseAutoencoder, Set<WeakRef<AdamOptimizer>>>();

const PLACEMENT_OPTIONS = optionNames<PlacementOptions>({ device: true, precision: true });
const CREATE_OPTIONS = optionNames<CreateOptions>({ dIn: true, numLatents: true, k: true, seed: true, device: true, precision: true });
/** Every option of fromWeights(), as its checks read them. */
type AnyFromWeightsOptions = FromWeightsCommonOptions & { k?: number; architecture?: Architecture };
const FROM_WEIGHTS_OPTIONS = optionNames<AnyFromWeightsOptions>({ k: true, architecture: true, applyBDecToInput: true, device: true, precision: true });
const ADAM_OPTIONS = optionNames<AdamOptions>({ lr: true, beta1: true, beta2: true, eps: true });
const STEP_OPTIONS = optionNames<StepOptions>({ lr: true, auxkAlpha: true, auxkVariant: true, deadThresholdTokens: true });
const ENCODE_OPTIONS = optionNames<EncodeOptions>({ batchInvariant: true });
const ADAM_STATE_KEYS = optionNames<AdamState>({ m: true, v: true, t: true });
const GRADIENT_OPTIONS = optionNames<GradientOptions>({ auxk: true });
const AUXK_OPTIONS = optionNames<AuxKOptions>({ deadMask: true, alpha: true, variant: true });
/** The AuxKVariant names (the Trainer and the CLI check against the same list). */
export const AUXK_VARIANTS = ['sparsify', 'paper'] as const;
const PREFETCH_OPTIONS = optionNames<PrefetchOptions>({ scale: true });

/** AdamOptimizer.prefetch options. */
export interface PrefetchOptions {
  /**
   * Multiplies every value while it is copied: any finite number > 0 (the product is taken in
   * float64; one past float32's range is stored as +-Infinity, which step() refuses with
   * ERR_SAEKIT_NONFINITE). Default 1.
   */
  scale?: number;
}

/** What one optimizer step reports. Nothing else leaves native memory. */
export interface StepStats {
  loss: number;
  fvu: number;
  /**
   * The AuxK term before its auxkAlpha weight. 0 where the term is not computed: auxkAlpha 0,
   * no dead latent, or dIn < 2 (kAux = dIn / 2 is 0).
   */
  auxkLoss: number;
  /** Mean number of positive codes per row. */
  l0: number;
  /** Dead latents at this step (counted before it); AuxK uses them unless auxkAlpha is 0. */
  numDead: number;
  /** Seconds spent in each phase of the step, measured natively (for profiling). */
  seconds: {
    /** The encoder GEMM. */
    gemm: number;
    /** Bias + ReLU + TopK (and AuxK) selection. */
    select: number;
    /** Sparse decode, residuals and losses. */
    decode: number;
    /** Sparse gradients: code gradients, grouping by latent, bias gradients. */
    backward: number;
    /** Per-latent gradient rows fused with Adam, projection and renormalisation. */
    update: number;
  };
}

/** Adam's state: first and second moments (internal slab layout) and steps taken. */
export interface AdamState {
  m: Float32Array;
  v: Float32Array;
  t: number;
}

/** Adam's moments in pieces (Trainer checkpoints of SAEs whose slab is longer than a typed array). */
export interface AdamStatePieces {
  m: Float32Array[];
  v: Float32Array[];
  t: number;
}

/** The longest typed array this runtime makes (2^32 elements on Node 20). */
const MAX_TYPED_LENGTH = bufferConstants.MAX_LENGTH;

/** A negative second moment makes the next step's sqrt(v) NaN in every parameter. */
function checkSecondMoments(pieces: Float32Array[]): void {
  let at = 0;
  for (const v of pieces) {
    for (let i = 0; i < v.length; i++) {
      if (!(v[i]! >= 0)) throw argError(`state.v[${at + i}]`, "a non-negative second moment (Adam's v)", v[i]);
    }
    at += v.length;
  }
}

const DEFAULT_AUXK_ALPHA = 1 / 32;
const DEFAULT_DEAD_THRESHOLD = 10_000_000;
/** The weights setWeights() takes (a JumpReLU SAE's threshold is fixed: load or fromWeights set it). */
const SET_WEIGHT_NAMES = ['W_enc', 'b_enc', 'W_dec', 'b_dec'] as const;
/** The addon's limits (native/napi/sae_wrap.cpp), checked here so the error names the option. */
const MAX_LR = 1e6;
/** The largest Adam betas accepted (float32 rounds larger ones towards 1, where bias correction divides by 0). */
export const MAX_BETA1 = 0.99999;
export const MAX_BETA2 = 0.9999999;
const MAX_AUXK_ALPHA = 1e6;
/** @internal (the Trainer checks its option against it too) */
export const MAX_DEAD_THRESHOLD = 9e15;

const handles = new WeakMap<SparseAutoencoder, NativeSae>();
/**
 * Settles once the parameters are set and on their device: rejects if moving them failed, or if
 * fromWeights' Tensor weights (read in queue order) hold NaN or infinity.
 */
const placements = new WeakMap<SparseAutoencoder, Promise<void>>();

/** Resolves the device options of a constructor; errors name the option. */
function placementOf(o: PlacementOptions): { device: ResolvedDevice; precision: 'fp32' | 'tf32' | 'bf16' } {
  const device = resolveDevice('options.device', o.device);
  const precision = o.precision === undefined ? 'bf16' : checkOneOf('options.precision', o.precision, ['fp32', 'tf32', 'bf16'] as const);
  return { device, precision };
}

/** The most codes per row a CUDA device selects (`kMaxSelectK` in native/cuda/kernels.h). */
const CUDA_MAX_K = 8192;

/** Checks a TopK k against its device: CUDA keeps at most 8192 codes per row, the CPU any k <= numLatents. */
function checkDeviceK(k: number, placement: { device: ResolvedDevice }): void {
  if (placement.device.kind === 'cuda' && k > CUDA_MAX_K) {
    throw argError('options.k', `an integer in [1, ${CUDA_MAX_K}] on a CUDA device (its selection keeps at most ${CUDA_MAX_K} codes per row)`, k);
  }
}

/** `p` once the SAE's parameters are placed: a failed move to the device (or read of fromWeights' tensors) rejects every op. */
function afterPlacement<T>(sae: SparseAutoencoder, p: Promise<T>): Promise<T> {
  const placed = placements.get(sae);
  return placed ? Promise.all([placed, p]).then(([, r]) => r) : p;
}

/** Checks a batch argument and returns what the addon takes. */
function rowsArg(dIn: number, x: unknown): Float32Array | NativeTensor {
  if (x instanceof Float32Array) {
    if (x.length === 0 || x.length % dIn !== 0) {
      throw new SaekitError(
        'ERR_SAEKIT_SHAPE',
        `Expected a Float32Array whose length is a positive multiple of dIn = ${dIn} for x but received length ${x.length}`,
      );
    }
    return x;
  }
  if (x instanceof Tensor) return handleOf(x, 'x');
  throw arrayTypeError('x', `a Float32Array (rows * ${dIn}) or a float32 Tensor [rows, ${dIn}]`, x);
}

/** The SAE's native handle; ERR_SAEKIT_DISPOSED once it was disposed. */
function liveHandle(sae: SparseAutoencoder): NativeSae {
  const h = handles.get(sae)!;
  if (h.disposed) throw new SaekitError('ERR_SAEKIT_DISPOSED', 'this SparseAutoencoder was disposed; it cannot be used any more');
  return h;
}

/**
 * @internal sae.encode(x) for EncodeBatcher, whose batches hold the rows of many requests: a row
 * whose pre-activations overflow float32 keeps its non-finite codes instead of failing the whole
 * encode, so the batcher rejects that request alone and resolves the others from the same encode.
 */
export async function encodeKeepingOverflow(sae: SparseAutoencoder, x: Float32Array, batchInvariant: boolean): Promise<SparseCodes> {
  const site = new Error();
  const h = liveHandle(sae);
  const r = await settleNative(afterPlacement(sae, callNative(() => h.encode(rowsArg(sae.dIn, x), batchInvariant, true))), site);
  return { rows: r.values.length / r.k, numLatents: sae.numLatents, k: r.k, values: r.values, indices: r.indices };
}

/** What load() read about a loaded SAE's origin (SparseAutoencoder.metadata), carried into save(). */
const origins = new WeakMap<SparseAutoencoder, { metadata: Readonly<Record<string, unknown>>; reshapeActivations?: 'none' | 'hook_z' }>();

const EMPTY_METADATA: Readonly<Record<string, unknown>> = Object.freeze({});

/** `v` with every object and array inside it frozen (a JSON value). */
function deepFreeze<T>(v: T): T {
  if (v !== null && typeof v === 'object') {
    for (const x of Object.values(v)) deepFreeze(x);
    Object.freeze(v);
  }
  return v;
}

/** A TopK sparse autoencoder whose parameters live in native memory. Free it with dispose() or `using`. */
export class SparseAutoencoder {
  /** Input width. */
  readonly dIn: number;
  /** Number of latents. */
  readonly numLatents: number;
  /** Active latents per row (TopK); 0 for JumpReLU, whose rows have varying counts. */
  readonly k: number;
  /** The activation function. */
  readonly architecture: Architecture;
  /** Whether the encoder sees `x - b_dec`. */
  readonly applyBDecToInput: boolean;
  /** Where the parameters live and the ops run: 'cpu' or 'cuda:N'. */
  readonly device: 'cpu' | `cuda:${number}`;

  private constructor(
    handle: NativeSae,
    dIn: number,
    numLatents: number,
    k: number,
    architecture: Architecture = 'topk',
    applyBDecToInput = true,
    placement: { device: ResolvedDevice; precision: 'fp32' | 'tf32' | 'bf16' } = { device: { kind: 'cpu' }, precision: 'bf16' },
    read?: Promise<void>,
  ) {
    handles.set(this, handle);
    this.device = deviceName(placement.device);
    let ready = read;
    if (placement.device.kind === 'cuda') {
      const index = placement.device.index;
      const placed = callNative(() => handle.toDevice(index, placement.precision));
      ready = read ? Promise.all([read, placed]).then(() => undefined) : placed;
    }
    if (ready) {
      ready.catch(() => undefined); // observed by every op through afterPlacement()
      placements.set(this, ready);
    }
    this.dIn = dIn;
    this.numLatents = numLatents;
    this.k = k;
    this.architecture = architecture;
    this.applyBDecToInput = applyBDecToInput;
  }

  /**
   * A new SAE: decoder rows are random unit vectors (Philox normal draws, normalised),
   * `W_enc = W_dec^T` and both biases zero.
   */
  static create(options: CreateOptions): SparseAutoencoder {
    const o = checkOptions('options', options, CREATE_OPTIONS);
    const dIn = checkInt('options.dIn', o.dIn, 1, 1 << 20);
    const numLatents = checkInt('options.numLatents', o.numLatents, 1, 1 << 24);
    // weights() and save() hand each matrix over as one Float32Array.
    if (dIn * numLatents > MAX_TYPED_LENGTH) {
      throw argError(
        'options.numLatents',
        `an integer of at most ${Math.floor(MAX_TYPED_LENGTH / dIn)} at dIn ${dIn} (dIn x numLatents at most ${MAX_TYPED_LENGTH}, the longest typed array this runtime makes, so that weights() and save() can return each matrix)`,
        numLatents,
      );
    }
    const k = checkInt('options.k', o.k, 1, numLatents);
    const seed = o.seed === undefined ? randomSeed() : checkSeed('options.seed', o.seed);
    const placement = placementOf(o);
    checkDeviceK(k, placement);
    const h = callNative(() => native().NativeSae.create(dIn, numLatents, k, seed));
    return new SparseAutoencoder(h, dIn, numLatents, k, 'topk', true, placement);
  }

  /**
   * An SAE from weights in the SAELens orientation: Float32Arrays (copied) or float32 Tensors
   * (read in queue order). Lengths are checked against dIn = b_dec.length and
   * numLatents = b_enc.length, and a Tensor's shape too: W_enc [dIn, numLatents], W_dec
   * [numLatents, dIn] (ERR_SAEKIT_SHAPE otherwise, e.g. for PyTorch's [numLatents, dIn] W_enc);
   * errors name the weight (a bias when W_enc and W_dec agree with each
   * other and with the other bias). A TopK SAE (the default) needs options.k and no threshold;
   * a JumpReLU SAE (options.architecture 'jumprelu') needs weights.threshold and no k (either
   * given to the other architecture is refused, ERR_SAEKIT_ARG).
   * NaN or infinity is refused with ERR_SAEKIT_NONFINITE naming the weight and position: in a
   * Float32Array by this call; in a Tensor when it is read, after which every op of the SAE
   * rejects with that error.
   */
  static fromWeights(
    weights: { W_enc: Float32Array | Tensor<'float32'>; b_enc: Float32Array | Tensor<'float32'>; W_dec: Float32Array | Tensor<'float32'>; b_dec: Float32Array | Tensor<'float32'>; threshold?: Float32Array },
    options: FromWeightsOptions,
  ): SparseAutoencoder {
    if (weights === null || typeof weights !== 'object') throw argError('weights', 'an object with W_enc, b_enc, W_dec, b_dec', weights);
    const names = ['W_enc', 'b_enc', 'W_dec', 'b_dec'] as const;
    const args = names.map((n) => {
      const w: unknown = weights[n];
      if (w instanceof Float32Array) return w;
      if (w instanceof Tensor) return handleOf(w, n);
      throw arrayTypeError(n, 'a Float32Array or a float32 Tensor', w);
    }) as [Float32Array | NativeTensor, Float32Array | NativeTensor, Float32Array | NativeTensor, Float32Array | NativeTensor];
    const size = (w: Float32Array | Tensor) => (w instanceof Tensor ? w.size : w.length);
    const dIn = size(weights.b_dec);
    const numLatents = size(weights.b_enc);
    if (dIn < 1) throw argError('b_dec', 'a non-empty array of length dIn', weights.b_dec, 'ERR_SAEKIT_SHAPE');
    if (numLatents < 1) throw argError('b_enc', 'a non-empty array of length numLatents', weights.b_enc, 'ERR_SAEKIT_SHAPE');
    // The sizes an SAE may have (SparseAutoencoder.create's bounds), named by the weight that sets
    // them (the addon would name a dIn or numLatents the caller never passed).
    if (dIn > 2 ** 20) throw argError('b_dec', 'an array of length dIn <= 2^20', weights.b_dec, 'ERR_SAEKIT_SHAPE');
    if (numLatents > 2 ** 24) throw argError('b_enc', 'an array of length numLatents <= 2^24', weights.b_enc, 'ERR_SAEKIT_SHAPE');
    if (dIn * numLatents > 2 ** 34) {
      throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected an SAE of at most 2^34 weights per matrix but b_dec's length ${dIn} x b_enc's length ${numLatents} is ${dIn * numLatents}`);
    }
    // W_enc and W_dec agree but not with the biases: name the bias their size contradicts (the
    // addon, which takes dIn and numLatents from the biases, would name W_enc).
    const wSize = size(weights.W_enc);
    if (wSize === size(weights.W_dec) && wSize !== dIn * numLatents) {
      if (wSize % numLatents === 0) {
        throw new SaekitError(
          'ERR_SAEKIT_SHAPE',
          `Expected b_dec of length dIn = ${wSize / numLatents} (W_enc and W_dec hold ${wSize} values, numLatents = b_enc's length ${numLatents}) but received length ${dIn}`,
        );
      }
      if (wSize % dIn === 0) {
        throw new SaekitError(
          'ERR_SAEKIT_SHAPE',
          `Expected b_enc of length numLatents = ${wSize / dIn} (W_enc and W_dec hold ${wSize} values, dIn = b_dec's length ${dIn}) but received length ${numLatents}`,
        );
      }
    }
    // A Tensor carries its shape: a matrix in another orientation (PyTorch's nn.Linear holds W_enc
    // as [numLatents, dIn]) has the right count and would be read as a different model.
    for (const [n, want] of [['W_enc', [dIn, numLatents]], ['W_dec', [numLatents, dIn]]] as const) {
      const w = weights[n];
      if (w instanceof Tensor && (w.shape.length !== 2 || w.shape[0] !== want[0] || w.shape[1] !== want[1])) {
        const hint = w.shape.length === 2 && w.shape[0] === want[1] && w.shape[1] === want[0] ? ' (its transpose: W_enc is [dIn, numLatents] and W_dec [numLatents, dIn], as SAELens stores them)' : '';
        throw new SaekitError(
          'ERR_SAEKIT_SHAPE',
          `Expected a tensor of shape [${want.join(', ')}] for ${n} (dIn = b_dec's length ${dIn}, numLatents = b_enc's length ${numLatents}) but received shape [${w.shape.join(', ')}]${hint}`,
        );
      }
    }
    const o = checkOptions<AnyFromWeightsOptions>('options', options, FROM_WEIGHTS_OPTIONS);
    const architecture = o.architecture === undefined ? 'topk' : checkOneOf('options.architecture', o.architecture, ['topk', 'jumprelu'] as const);
    const applyBDec = o.applyBDecToInput === undefined ? true : checkBool('options.applyBDecToInput', o.applyBDecToInput);
    const placement = placementOf(o);
    if (architecture === 'jumprelu') {
      // A k or a threshold for the other architecture is a mix-up, not something to drop silently.
      if (o.k !== undefined) throw argError('options.k', "no k for a JumpReLU SAE (it keeps every latent above its threshold; leave k out)", o.k);
      const t: unknown = weights.threshold;
      if (!(t instanceof Float32Array) || t.length !== numLatents) {
        throw argError('threshold', `a Float32Array of length numLatents = ${numLatents} (JumpReLU)`, t, 'ERR_SAEKIT_SHAPE');
      }
      const h = callNative(() => native().NativeSae.fromWeights(...args, dIn, numLatents, 0, 'jumprelu', applyBDec, t));
      return new SparseAutoencoder(h.handle, dIn, numLatents, 0, 'jumprelu', applyBDec, placement, h.read);
    }
    if (weights.threshold !== undefined) {
      throw argError('threshold', "no threshold for a TopK SAE (pass options.architecture 'jumprelu' for a JumpReLU SAE, or leave the threshold out)", weights.threshold);
    }
    const k = checkInt('options.k', o.k, 1, numLatents);
    checkDeviceK(k, placement);
    const h = callNative(() => native().NativeSae.fromWeights(...args, dIn, numLatents, k, 'topk', applyBDec));
    return new SparseAutoencoder(h.handle, dIn, numLatents, k, 'topk', applyBDec, placement, h.read);
  }

  /**
   * Loads an SAE saved by SAELens (`cfg.json` + `sae_weights.safetensors`; topk, jumprelu),
   * sparsify (`cfg.json` + `sae.safetensors`) or Gemma Scope (`params.npz`, JumpReLU without
   * b_dec subtraction), from its folder or one of its files. The format is detected.
   * @example const sae = await SparseAutoencoder.load('gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82');
   */
  static async load(pathOrDir: string, options?: PlacementOptions): Promise<SparseAutoencoder> {
    if (typeof pathOrDir !== 'string' || pathOrDir.length === 0) throw argError('pathOrDir', 'a file or folder path', pathOrDir);
    const o = checkOptions('options', options, PLACEMENT_OPTIONS);
    // Loaded on first use: the file formats are not needed to train or encode.
    const { readSaeFiles } = await import('../io/sae-files.js');
    const { config, weights } = await readSaeFiles(pathOrDir);
    const common = { applyBDecToInput: config.applyBDecToInput, device: o.device, precision: o.precision };
    // readSaeFiles sets k for every TopK file.
    const sae = SparseAutoencoder.fromWeights(
      weights,
      config.architecture === 'jumprelu' ? { architecture: 'jumprelu', ...common } : { k: config.k as number, ...common },
    );
    origins.set(sae, { metadata: deepFreeze(structuredClone(config.metadata)), reshapeActivations: config.reshapeActivations });
    return sae;
  }

  /**
   * What the file it was loaded from says about where the SAE came from: a SAELens cfg.json's
   * `metadata` (`model_name`, `hook_name`, `neuronpedia_id`, ...) without the fields a save writes
   * itself (`sae_lens_version`, `saekit_version`). Empty for an SAE made by create() or
   * fromWeights(), or loaded from sparsify or Gemma Scope files. save() in the SAELens layout
   * writes it back (with SAELens's `reshape_activations`), so a loaded SAE, trained further or
   * not, keeps its hook; options.metadata adds to it and overrides its fields.
   */
  get metadata(): Readonly<Record<string, unknown>> {
    return origins.get(this)?.metadata ?? EMPTY_METADATA;
  }

  /**
   * Saves the SAE in SAELens layout (default; SAEBench and Neuronpedia load it) or sparsify
   * layout into `dir`, each file written atomically. Decoder rows are saved with unit norm: a
   * JumpReLU SAE with other norms is rescaled exactly (encoder, bias and threshold scaled by
   * the norms), and refused (ERR_SAEKIT_NONFINITE, nothing written) where a scaled weight would
   * overflow float32; a TopK SAE is saved as it is (its selection depends on the unscaled
   * activations). Saving over an earlier save replaces it (the other layout's weights, if a
   * saekit save wrote them, are removed); a folder holding another library's SAE of the other
   * layout (weights saekit did not write, beside a cfg.json that may describe them) is refused
   * (ERR_SAEKIT_ARG) before anything is written, since replacing its cfg.json would leave those
   * weights without a config. Staging files of a save that was killed part-way (saekit's names,
   * of a process no longer running) are removed. The weights saved are those of the call, in
   * queue order: ops called after save() (a step, setWeights(), dispose()) do not change them.
   * Returns the files written.
   */
  async save(dir: string, options?: WriteSaeOptions): Promise<string[]> {
    checkFolderPath(dir);
    const o = checkWriteSaeOptions(options);
    // The weights are read in queue order now, before the file formats load: a step, setWeights()
    // or dispose() called after save() does not change (or fail) what is saved.
    const weights = this.weights();
    weights.catch(() => undefined); // awaited below
    const { foldDecoderNormsSteps, writeSaeFiles } = await import('../io/sae-files.js');
    const w = await weights;
    if (this.architecture === 'jumprelu') {
      // Refused before anything changes if a fold would overflow float32; in slices between
      // turns of the event loop (w is this call's own copy).
      await runSliced(foldDecoderNormsSteps(w, this.dIn, this.numLatents, false, true));
    }
    const origin = origins.get(this);
    return writeSaeFiles(
      dir,
      {
        architecture: this.architecture,
        dIn: this.dIn,
        numLatents: this.numLatents,
        k: this.k || undefined,
        applyBDecToInput: this.applyBDecToInput,
        ...(origin ? { metadata: origin.metadata as Record<string, unknown>, reshapeActivations: origin.reshapeActivations } : {}),
      },
      w,
      o,
    );
  }

  private handle(): NativeSae {
    return liveHandle(this);
  }

  private rows(x: unknown): Float32Array | NativeTensor {
    return rowsArg(this.dIn, x);
  }

  /** Whether dispose() was called. */
  get disposed(): boolean {
    return handles.get(this)!.disposed;
  }

  /** Copies of the weights in the SAELens orientation. */
  async weights(): Promise<SaeWeights> {
    const site = new Error();
    return settleNative(afterPlacement(this, callNative(() => this.handle().weights())), site);
  }

  /** Sparse codes of each row of x. */
  async encode(x: Rows, options?: EncodeOptions): Promise<SparseCodes> {
    const site = new Error();
    const invariant = batchInvariantOption(checkOptions('options', options, ENCODE_OPTIONS).batchInvariant, this.device);
    const r = await settleNative(afterPlacement(this, callNative(() => this.handle().encode(this.rows(x), invariant))), site);
    return { rows: r.values.length / r.k, numLatents: this.numLatents, k: r.k, values: r.values, indices: r.indices };
  }

  /**
   * Reconstructions `b_dec + sum values W_dec[indices]` of codes (any k per row), [rows * dIn].
   * Each row has values.length / rows codes; when codes.k is given (encode() gives it),
   * values.length must be rows * k.
   */
  async decode(codes: SparseCodes): Promise<Float32Array> {
    const site = new Error();
    if (codes === null || typeof codes !== 'object') throw argError('codes', 'SparseCodes', codes);
    if (codes.numLatents !== undefined && codes.numLatents !== this.numLatents) {
      throw argError('codes.numLatents', `${this.numLatents}`, codes.numLatents, 'ERR_SAEKIT_SHAPE');
    }
    if (codes.k !== undefined) {
      // The addon takes values.length / rows codes a row: a k that disagrees would reshape them.
      const k = checkInt('codes.k', codes.k, 1, 2 ** 31 - 1);
      const { values, rows } = codes as { values: unknown; rows: unknown };
      if (values instanceof Float32Array && typeof rows === 'number' && values.length !== rows * k) {
        throw argError('codes.values', `length codes.rows * codes.k = ${rows} * ${k} = ${rows * k}`, values, 'ERR_SAEKIT_SHAPE');
      }
    }
    return settleNative(afterPlacement(this, callNative(() => this.handle().decode(codes.values, codes.indices, codes.rows))), site);
  }

  /** Codes, reconstruction and FVU of a batch (FVU is NaN when all rows are identical). */
  async forward(x: Rows): Promise<{ codes: SparseCodes; recon: Float32Array; fvu: number }> {
    const site = new Error();
    const r = await settleNative(afterPlacement(this, callNative(() => this.handle().forward(this.rows(x)))), site);
    const rows = r.values.length / r.k;
    return { codes: { rows, numLatents: this.numLatents, k: r.k, values: r.values, indices: r.indices }, recon: r.recon, fvu: r.fvu };
  }

  /**
   * Dense pre-activations, before the activation (TopK's ReLU, JumpReLU's threshold), [rows *
   * numLatents] (for analysis): `(x - b_dec) W_enc + b_enc`, or `x W_enc + b_enc` when
   * applyBDecToInput is false (Gemma Scope).
   */
  async preActivations(x: Rows): Promise<Float32Array> {
    const site = new Error();
    return settleNative(afterPlacement(this, callNative(() => this.handle().preActivations(this.rows(x)))), site);
  }

  /**
   * The loss `fvu + alpha * auxk` of a batch and its exact gradients in the SAELens orientation.
   * Changes nothing. `fvu = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2` over the batch.
   */
  async gradients(x: Rows, options?: GradientOptions): Promise<Gradients> {
    const site = new Error();
    const o = checkOptions('options', options, GRADIENT_OPTIONS);
    let mask: Uint8Array | null = null;
    let alpha = 0;
    let variant: AuxKVariant = 'sparsify';
    if (o.auxk !== undefined) {
      const a = checkOptions('options.auxk', o.auxk, AUXK_OPTIONS);
      if (!(a.deadMask instanceof Uint8Array) || a.deadMask.length !== this.numLatents) {
        throw argError('options.auxk.deadMask', `a Uint8Array of length numLatents = ${this.numLatents}`, a.deadMask, 'ERR_SAEKIT_SHAPE');
      }
      mask = a.deadMask;
      alpha = a.alpha === undefined ? DEFAULT_AUXK_ALPHA : checkNumber('options.auxk.alpha', a.alpha, 0, MAX_AUXK_ALPHA);
      if (a.variant !== undefined) variant = checkOneOf('options.auxk.variant', a.variant, AUXK_VARIANTS);
    }
    const r = await settleNative(afterPlacement(this, callNative(() => this.handle().gradients(this.rows(x), mask, alpha, variant))), site);
    return {
      loss: r.loss,
      fvu: r.fvu,
      auxkLoss: r.auxkLoss,
      grads: { W_enc: r.W_enc, b_enc: r.b_enc, W_dec: r.W_dec, b_dec: r.b_dec },
    };
  }

  /**
   * Replaces some weights (SAELens orientation; lengths must match). Applied in queue order:
   * ops queued before see the old weights, ops queued after see the new ones.
   */
  setWeights(weights: Partial<Omit<SaeWeights, 'threshold'>>): void {
    const o = checkOptions('weights', weights, SET_WEIGHT_NAMES);
    const lengths = { W_enc: this.dIn * this.numLatents, b_enc: this.numLatents, W_dec: this.numLatents * this.dIn, b_dec: this.dIn };
    const h = this.handle();
    // All or nothing: every weight is checked (length, finite values) before any is written.
    const given: ['W_enc' | 'b_enc' | 'W_dec' | 'b_dec', Float32Array][] = [];
    for (const name of SET_WEIGHT_NAMES) {
      const v: unknown = o[name];
      if (v === undefined) continue;
      if (!(v instanceof Float32Array) || v.length !== lengths[name]) {
        throw argError(name, `a Float32Array of length ${lengths[name]}`, v, 'ERR_SAEKIT_SHAPE');
      }
      if (native().anyNonFinite(v, 0, v.length)) {
        const i = v.findIndex((x) => !Number.isFinite(x));
        throw new SaekitError('ERR_SAEKIT_NONFINITE', `Expected finite values in ${name} but ${name}[${i}] is ${v[i]}`);
      }
      given.push([name, v]);
    }
    for (const [name, v] of given) callNative(() => h.setWeight(name, v));
  }

  /**
   * Rescales each latent so its decoder row has unit norm, folding the norm n_i into the encoder:
   * W_dec[i] / n_i, and W_enc[:, i] and b_enc[i] times n_i. Each selected latent adds the same
   * vector to the reconstruction as before, but TopK then ranks n_i z_i instead of z_i (as
   * SAELens's rescale_acts_by_decoder_norm does), so where norms differ the selection can change.
   * Training needs unit rows: a step refuses an SAE whose rows are off unit norm by more than
   * 1e-2 (a SAELens TopK file saved without rescaling, or weights given to fromWeights), since
   * keeping them at unit norm would change the model silently. Resolves to the number of rows
   * rescaled. Only for TopK SAEs: a JumpReLU SAE is not trainable yet, and save() already writes
   * it with unit rows. It runs in queue order like a step: ops called before it see the old
   * weights, ops called after it the new ones. Nothing changes (and it rejects) when a row of
   * W_dec is all zeros or a rescaled encoder weight would overflow float32.
   */
  async normalizeDecoder(): Promise<number> {
    if (this.architecture !== 'topk') {
      throw new SaekitError('ERR_SAEKIT_ARG', `Expected a TopK SAE for normalizeDecoder() but this one is ${this.architecture} (not trainable yet; save() writes it with unit decoder rows)`);
    }
    // One native job in queue order: steps or setWeights queued while it runs are not lost.
    const site = new Error();
    return settleNative(afterPlacement(this, callNative(() => this.handle().normalizeDecoder())), site);
  }

  /**
   * @internal Rejects, in queue order, as a training step would on decoder rows off unit norm
   * (the Trainer asks before it changes any weight).
   */
  _checkTrainable(): Promise<void> {
    const site = new Error();
    return settleNative(afterPlacement(this, callNative(() => this.handle().checkUnitRows())), site);
  }

  /** Restores the dead-latent counters (tokens since each latent fired), e.g. from a checkpoint. */
  setTokensSinceFired(counts: Float64Array): void {
    if (!(counts instanceof Float64Array) || counts.length !== this.numLatents) {
      throw argError('counts', `a Float64Array of length numLatents = ${this.numLatents}`, counts, 'ERR_SAEKIT_SHAPE');
    }
    for (let i = 0; i < counts.length; i++) {
      const c = counts[i]!;
      if (!(Number.isInteger(c) && c >= 0 && c < 9e15)) throw argError(`counts[${i}]`, 'a non-negative integer count of tokens', c);
    }
    const h = this.handle();
    callNative(() => h.setSinceFired(counts));
  }

  /** Tokens since each latent last had a positive code in an optimizer step. */
  async tokensSinceFired(): Promise<Float64Array> {
    const site = new Error();
    return settleNative(callNative(() => this.handle().sinceFired()), site);
  }

  /** [numLatents] 1 where more than `thresholdTokens` tokens passed since the latent last fired. */
  async deadMask(thresholdTokens: number = DEFAULT_DEAD_THRESHOLD): Promise<Uint8Array> {
    checkNumber('thresholdTokens', thresholdTokens, 0, Infinity);
    const since = await this.tokensSinceFired();
    return Uint8Array.from(since, (t) => (t > thresholdTokens ? 1 : 0));
  }

  /**
   * An Adam optimizer over this SAE's parameters; its state stays native. On the CPU every
   * optimizer has its own moments. On a CUDA device the SAE keeps one set (on the device): the
   * new optimizer takes it over, zeroed, and any older optimizer of this SAE is refused from then
   * on (ERR_SAEKIT_DISPOSED from step, state, setState and prefetch; its steps queued before this
   * call still run).
   */
  adam(options?: AdamOptions): AdamOptimizer {
    const o = checkOptions('options', options, ADAM_OPTIONS);
    const lr = o.lr === undefined ? 2e-4 / Math.sqrt(this.numLatents / 2 ** 14) : checkNumber('options.lr', o.lr, 0, MAX_LR);
    const beta1 = o.beta1 === undefined ? 0.9 : checkNumber('options.beta1', o.beta1, 0, MAX_BETA1);
    const beta2 = o.beta2 === undefined ? 0.999 : checkNumber('options.beta2', o.beta2, 0, MAX_BETA2);
    const eps = o.eps === undefined ? 1e-8 : checkNumber('options.eps', o.eps, 1e-30, 1e6);
    const h = callNative(() => this.handle().adam(lr, beta1, beta2, eps));
    const opt = new AdamConstructor(h, this, lr);
    let mine = optimizers.get(this);
    if (!mine) optimizers.set(this, (mine = new Set()));
    for (const r of mine) if (!r.deref()) mine.delete(r);
    mine.add(new WeakRef(opt));
    return opt;
  }

  /**
   * Frees the native parameters now, and the state of every optimizer adam() made for this SAE
   * (an optimizer holds the parameters too; it cannot be used afterwards). Idempotent.
   */
  dispose(): void {
    for (const r of optimizers.get(this) ?? []) r.deref()?.dispose();
    optimizers.delete(this);
    handles.get(this)?.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * A training batch copied out of JS ahead of its step by `AdamOptimizer.prefetch`: on a CUDA
 * device it is already on its way to the GPU (page-locked memory, its own copy stream), so the
 * transfer overlaps the step in flight. The step it is passed to uses it up; dispose() frees one
 * that will not be used.
 */
export class PrefetchedBatch {
  /** Rows in the batch. */
  readonly rows: number;
  #h: NativePrefetched | null;
  readonly #owner: NativeAdam;

  /** Not for users: opt.prefetch(x) makes batches. Private, so `new PrefetchedBatch()` does not compile. */
  private constructor(h: NativePrefetched, owner: NativeAdam, rows: number) {
    this.#h = h;
    this.#owner = owner;
    this.rows = rows;
  }

  /** Whether a step used it or it was disposed. */
  get disposed(): boolean {
    return this.#h === null;
  }

  /** @internal The handle, taken once (a batch is used by one step). */
  take(): NativePrefetched {
    const h = this.#h;
    if (h === null) throw new SaekitError('ERR_SAEKIT_DISPOSED', 'this prefetched batch was already used by a step or disposed');
    this.#h = null;
    return h;
  }

  /** @internal */
  get owner(): NativeAdam {
    return this.#owner;
  }

  /** Frees the batch's memory now (a no-op after a step used it). */
  dispose(): void {
    if (this.#h !== null) this.#owner.dropPrefetched(this.#h);
    this.#h = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * Adam over an SAE. One `step` = forward, backward, removal of each decoder-gradient component
 * parallel to its decoder row, Adam (bias-corrected) on every parameter, decoder rows
 * renormalised to unit length, dead-latent counters updated. Nothing but statistics is copied out.
 *
 * On a CUDA device the moments live on the device, one set per SAE: a later `sae.adam()` of the
 * same SAE takes them over (from zero), and this optimizer then throws (or rejects with)
 * ERR_SAEKIT_DISPOSED from `step`, `state`, `setState` and `prefetch`, saying it was replaced.
 * Save `state()` first to continue elsewhere: `newer.setState(saved)`. On the CPU optimizers are
 * independent.
 *
 * @example
 * ```ts
 * using opt = sae.adam({ lr: 1e-3 });
 * const { loss } = await opt.step(batch);
 * ```
 */
export class AdamOptimizer {
  /** The SAE this optimizer updates. */
  readonly sae: SparseAutoencoder;
  /** The default learning rate. */
  readonly lr: number;
  private readonly h: NativeAdam;

  /** Not for users: sae.adam() makes optimizers. Private, so `new AdamOptimizer()` does not compile. */
  private constructor(h: NativeAdam, sae: SparseAutoencoder, lr: number) {
    this.h = h;
    this.sae = sae;
    this.lr = lr;
  }

  /** Steps completed so far (a rejected step does not count). */
  get steps(): number {
    return this.h.steps;
  }

  /**
   * Copies a batch for a later step now, so `x` may be reused at once; on a CUDA device the
   * copy goes to page-locked memory and its upload starts on a separate stream, overlapping the
   * step in flight (call it for batch n + 1 while step n runs, then `step(prefetched)`). On the
   * CPU it is just the copy step() would make. `options.scale` multiplies every value while it
   * is copied (the copy holds `Math.fround(x[i] * scale)`, as a JS loop would store it), so an
   * input normalisation costs no extra pass; the Trainer uses it for `normalize`.
   */
  prefetch(x: Float32Array, options?: PrefetchOptions): PrefetchedBatch {
    if (this.h.disposed) throw new SaekitError('ERR_SAEKIT_DISPOSED', 'this optimizer was disposed; it cannot be used any more');
    if (!(x instanceof Float32Array)) throw arrayTypeError('x', `a Float32Array (rows * ${this.sae.dIn})`, x);
    const o = checkOptions('options', options, PREFETCH_OPTIONS);
    const scale = o.scale === undefined ? 1 : checkNumber('options.scale', o.scale, 0, Infinity, true);
    const rows = rowsArg(this.sae.dIn, x) as Float32Array;
    return new PrefetchedConstructor(callNative(() => this.h.prefetch(rows, scale)), this.h, rows.length / this.sae.dIn);
  }

  /**
   * @internal A Float32Array of n values in page-locked memory that `_prefetchBorrowed` uploads
   * without copying, or undefined when the SAE is not on (or headed for) a device that
   * prefetches. The Trainer's batch arrays on a GPU.
   */
  _pinnedArray(n: number): Float32Array | undefined {
    if (this.h.disposed) return undefined;
    const ab = callNative(() => this.h.allocPinned(n * 4));
    return ab && new Float32Array(ab, 0, n);
  }

  /**
   * @internal As prefetch(x), but x is borrowed, not copied, when it is a `_pinnedArray`: the
   * caller leaves x untouched until the step that uses this batch has settled (or the batch is
   * disposed). Other arrays are copied as by prefetch(x).
   */
  _prefetchBorrowed(x: Float32Array): PrefetchedBatch {
    if (this.h.disposed) throw new SaekitError('ERR_SAEKIT_DISPOSED', 'this optimizer was disposed; it cannot be used any more');
    const rows = rowsArg(this.sae.dIn, x) as Float32Array;
    return new PrefetchedConstructor(callNative(() => this.h.prefetch(rows, 1, true)), this.h, rows.length / this.sae.dIn);
  }

  /** @internal Whether `_pinnedArray` gives page-locked memory (a device that prefetches). */
  _canPin(): boolean {
    return !this.h.disposed && this.h.canPin();
  }

  /** @internal Prefetches so far that copied their rows, and borrowed ones (tests, benchmarks). */
  _prefetchCounts(): { copied: number; borrowed: number } {
    return this.h.prefetchCounts();
  }

  /**
   * One training step on a batch (rows, or a batch from `prefetch`, which this step uses up). If
   * the loss is not finite the step is rejected (ERR_SAEKIT_NONFINITE) and the parameters stay as
   * they were.
   */
  async step(x: Rows | PrefetchedBatch, options?: StepOptions): Promise<StepStats> {
    const site = new Error();
    const o = checkOptions('options', options, STEP_OPTIONS);
    const lr = o.lr === undefined ? this.lr : checkNumber('options.lr', o.lr, 0, MAX_LR);
    const alpha = o.auxkAlpha === undefined ? DEFAULT_AUXK_ALPHA : checkNumber('options.auxkAlpha', o.auxkAlpha, 0, MAX_AUXK_ALPHA);
    const threshold =
      o.deadThresholdTokens === undefined ? DEFAULT_DEAD_THRESHOLD : checkNumber('options.deadThresholdTokens', o.deadThresholdTokens, 0, MAX_DEAD_THRESHOLD);
    const variant = o.auxkVariant === undefined ? 'sparsify' : checkOneOf('options.auxkVariant', o.auxkVariant, AUXK_VARIANTS);
    // The SAE first: disposing it disposes its optimizers too, and it is what the user disposed.
    if (this.sae.disposed) throw new SaekitError('ERR_SAEKIT_DISPOSED', 'the SparseAutoencoder of this optimizer was disposed');
    if (this.h.disposed) throw new SaekitError('ERR_SAEKIT_DISPOSED', 'this optimizer was disposed; it cannot be used any more');
    if (x instanceof PrefetchedBatch && x.owner !== this.h) throw argError('x', 'a batch prefetched by this optimizer', x);
    const rows = x instanceof PrefetchedBatch ? x.take() : rowsArg(this.sae.dIn, x);
    return settleNative(afterPlacement(this.sae, callNative(() => this.h.step(rows, lr, alpha, threshold, variant))), site);
  }

  /**
   * The optimizer state for checkpoints: Adam's moments in saekit's internal parameter layout
   * (one slab: W_enc transposed [numLatents, dIn], W_dec, b_enc, b_dec) and the step count.
   */
  async state(): Promise<AdamState> {
    const site = new Error();
    if (this.h.disposed) throw new SaekitError('ERR_SAEKIT_DISPOSED', 'this optimizer was disposed; it cannot be used any more');
    const n = this.slabLength();
    if (n > MAX_TYPED_LENGTH) {
      throw new SaekitError(
        'ERR_SAEKIT_MEMORY',
        `Adam's moments of this SAE hold ${n} floats each, more than the longest typed array this runtime makes (${MAX_TYPED_LENGTH}); Trainer checkpoints store them in pieces`,
      );
    }
    return settleNative(afterPlacement(this.sae, callNative(() => this.h.state())), site);
  }

  /** @internal state() as pieces of at most `piece` floats (views of one buffer per moment), whatever the slab's length. */
  async statePieces(piece: number): Promise<AdamStatePieces> {
    const site = new Error();
    if (this.h.disposed) throw new SaekitError('ERR_SAEKIT_DISPOSED', 'this optimizer was disposed; it cannot be used any more');
    const r = await settleNative(afterPlacement(this.sae, callNative(() => this.h.state(true))), site);
    const views = (b: ArrayBuffer): Float32Array[] => {
      const n = b.byteLength / 4;
      const out: Float32Array[] = [];
      for (let at = 0; at < n; at += piece) out.push(new Float32Array(b, at * 4, Math.min(piece, n - at)));
      return out;
    };
    return { m: views(r.m), v: views(r.v), t: r.t };
  }

  /** Restores a state from state() (same SAE shape), in queue order. */
  setState(state: AdamState): void {
    const o = checkOptions('state', state, ADAM_STATE_KEYS);
    if (!(o.m instanceof Float32Array)) throw arrayTypeError('state.m', 'a Float32Array from state()', o.m);
    if (!(o.v instanceof Float32Array)) throw arrayTypeError('state.v', 'a Float32Array from state()', o.v);
    const t = checkInt('state.t', o.t, 0, 2 ** 50);
    checkSecondMoments([o.v]);
    callNative(() => this.h.setState(o.m!, o.v!, t));
  }

  /** @internal setState() from statePieces()'s pieces (their lengths add up to the slab's). */
  setStatePieces(state: AdamStatePieces): void {
    const ok = (p: unknown): p is Float32Array[] => Array.isArray(p) && p.every((a) => a instanceof Float32Array);
    if (!ok(state.m)) throw argError('state.m', 'an Array of Float32Array pieces', state.m);
    if (!ok(state.v)) throw argError('state.v', 'an Array of Float32Array pieces', state.v);
    const t = checkInt('state.t', state.t, 0, 2 ** 50);
    checkSecondMoments(state.v);
    callNative(() => this.h.setState(state.m, state.v, t));
  }

  /** Floats in each of Adam's moments (the parameter slab: 2 dIn numLatents + numLatents + dIn). */
  private slabLength(): number {
    const { dIn, numLatents } = this.sae;
    return 2 * dIn * numLatents + numLatents + dIn;
  }

  /** Frees the optimizer state now. Idempotent. */
  dispose(): void {
    this.h.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

// The private constructors, for this module's own use.
const PrefetchedConstructor = PrefetchedBatch as unknown as new (h: NativePrefetched, owner: NativeAdam, rows: number) => PrefetchedBatch;
const AdamConstructor = AdamOptimizer as unknown as new (h: NativeAdam, sae: SparseAutoencoder, lr: number) => AdamOptimizer;
