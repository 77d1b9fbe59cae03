/**
 * Typed tensors. A Tensor's values live in native memory owned by a backend; JS holds a handle.
 * Creating a tensor copies its input; reading it (`toArray`) copies out. Anything that can take
 * more than a moment runs on the backend's own threads and returns a Promise.
 *
 * bfloat16 and float16 values cross into JS as raw bit patterns in a Uint16Array (Node 20 has no
 * Float16Array); `await t.to('float32')` converts natively.
 *
 * Devices: every creating function takes `device` ('auto' | 'cpu' | 'cuda' | 'cuda:N'; default
 * from backend.use(), initially 'auto': CUDA when usable, else the CPU). `t.to(dtype)` and
 * ops keep the device; `await t.toDevice('cpu')` copies to another device (any cuda:N listed by
 * backend.info().cuda.devices); `toArray()` downloads.
 * An op on tensors of two devices throws ERR_SAEKIT_DEVICE naming both.
 *
 * @example
 * ```ts
 * import { tensor, randn, ops } from 'saekit';
 * using a = randn([256, 512], { seed: 1 });
 * using b = tensor(new Float32Array(512 * 64).fill(0.5), [512, 64]);
 * using c = await ops.matmul(a, b);
 * const values = await c.toArray(); // Float32Array(256 * 64)
 * ```
 */
import { deviceName, resolveDevice, type DeviceOption } from '../backend/index.js';
import { argError, arrayTypeError, callNative, SaekitError, settleNative } from '../errors.js';
import { native, type NativeTensor } from '../native/index.js';
import { checkOneOf, checkOptions, checkSeed, checkShape, optionNames, randomSeed, shapeSize } from '../validate.js';

/** Option names (checkOptions refuses others: a misspelling is an error, not ignored). */
const TENSOR_OPTIONS = optionNames<TensorOptions<'float32'>>({ dtype: true, device: true });
const ZEROS_OPTIONS = optionNames<ZerosOptions<'float32'>>({ dtype: true, device: true });
const RANDOM_OPTIONS = optionNames<RandomOptions<'float32'>>({ seed: true, stream: true, dtype: true, device: true });

/** Element types. */
export type DType = 'float32' | 'bfloat16' | 'float16' | 'int32';
/** Every DType, in a fixed order. */
export const DTYPES: readonly DType[] = Object.freeze(['float32', 'bfloat16', 'float16', 'int32']);

/** The TypedArray that holds a dtype's values (raw bits for the 16-bit floats). */
export type ArrayFor<D extends DType> = D extends 'float32' ? Float32Array : D extends 'int32' ? Int32Array : Uint16Array;

/** Where a tensor's values live. */
export type Device = 'cpu' | `cuda:${number}`;

const handles = new WeakMap<Tensor, NativeTensor>();

/** A dense, row-major tensor in native memory. Free it with `dispose()` or `using`. */
export class Tensor<D extends DType = DType> {
  /**
   * Not for users: tensor(), zeros(), randn() and rand() make tensors. Private, so that
   * `new Tensor()` is a compile error for consumers (the declaration keeps `private constructor()`).
   */
  private constructor(handle: NativeTensor, secret: symbol) {
    if (secret !== INTERNAL) throw new SaekitError('ERR_SAEKIT_ARG', 'Tensor cannot be constructed directly; use tensor(), zeros(), randn() or rand()');
    handles.set(this, handle);
    this.dtype = handle.dtype as D;
    this.shape = Object.freeze(handle.shape.slice());
    this.device = handle.device as Device;
  }

  /** The element type. */
  readonly dtype: D;
  /** The dimensions, outermost first. */
  readonly shape: readonly number[];
  /** Where the values live. */
  readonly device: Device;

  /** Number of elements. */
  get size(): number {
    return shapeSize(this.shape);
  }
  /** Number of dimensions. */
  get ndim(): number {
    return this.shape.length;
  }
  /** Whether dispose() was called. */
  get disposed(): boolean {
    return handleOf(this, 'tensor', true).disposed;
  }

  /** A fresh TypedArray with a copy of the values (bfloat16/float16 as raw Uint16Array bits), downloaded from the tensor's device. */
  async toArray(): Promise<ArrayFor<D>> {
    const site = new Error();
    const h = handleOf(this, 'tensor');
    return (await settleNative(callNative(() => h.toArray()), site)) as ArrayFor<D>;
  }

  /**
   * A new tensor with the same values on `device` ('cpu', 'cuda', 'cuda:N' or 'auto'): an
   * upload, a download or a copy, queued after every earlier op. Between two CUDA devices
   * (cuda:0 -> cuda:1) the plugin's peer copy moves them (directly where the GPUs allow P2P;
   * SAEKIT_DEVICE_PEER_COPY=0: through host memory). Always a new tensor.
   * @example using host = await t.toDevice('cpu');
   * @example using there = await t.toDevice('cuda:1');
   */
  async toDevice(device: DeviceOption): Promise<Tensor<D>> {
    const site = new Error();
    const to = deviceName(resolveDevice('device', device));
    const h = handleOf(this, 'tensor');
    const out = await settleNative(callNative(() => h.toDevice(to)), site);
    return new Tensor<D>(out, INTERNAL);
  }

  /**
   * A new tensor with the values converted to `dtype`, on the same device. To the tensor's own
   * dtype: an exact copy, bit for bit (a NaN keeps its payload, a signalling NaN stays
   * signalling). To another float type: round to nearest even, with infinities, NaNs (made
   * quiet) and subnormals kept, except that bfloat16 to float32 is exact, bfloat16 being a
   * float32's top half (a signalling NaN stays signalling, as PyTorch and ml_dtypes widen it).
   * To 'int32': truncated toward zero, saturated at int32's range, NaN to 0.
   */
  async to<T extends DType>(dtype: T): Promise<Tensor<T>> {
    const site = new Error();
    checkOneOf('dtype', dtype, DTYPES, 'ERR_SAEKIT_DTYPE');
    const h = handleOf(this, 'tensor');
    const out = await settleNative(callNative(() => h.to(dtype)), site);
    return new Tensor<T>(out, INTERNAL);
  }

  /** Frees the native memory now. Further use throws ERR_SAEKIT_DISPOSED. Idempotent. */
  dispose(): void {
    handles.get(this)?.dispose();
  }

  /** dispose(), for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /** `Tensor(dtype, [shape], device)`, plus `, disposed` once disposed. */
  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(', ')}], ${this.device}${this.disposed ? ', disposed' : ''})`;
  }
}

const INTERNAL = Symbol('saekit.internal');

/** @internal The native handle of a live tensor, or an error naming the argument. */
export function handleOf(t: unknown, name: string, allowDisposed = false): NativeTensor {
  const h = t instanceof Tensor ? handles.get(t) : undefined;
  if (!h) throw argError(name, 'a Tensor', t);
  if (!allowDisposed && h.disposed) {
    throw new SaekitError('ERR_SAEKIT_DISPOSED', `${name} is a disposed Tensor; it cannot be used any more`);
  }
  return h;
}

/** The constructor, which is private to keep it out of consumers' reach. */
const TensorConstructor = Tensor as unknown as new <D extends DType>(handle: NativeTensor, secret: symbol) => Tensor<D>;

/** @internal Wraps a native handle (for other lib/ modules). */
export function wrapHandle<D extends DType>(h: NativeTensor): Tensor<D> {
  return new TensorConstructor<D>(h, INTERNAL);
}

/** Nested arrays of numbers, e.g. [[1, 2], [3, 4]]. */
export type NestedNumbers = number | readonly NestedNumbers[];

/** Data tensor() accepts. */
export type TensorData = Float32Array | Float64Array | Uint16Array | Int32Array | readonly NestedNumbers[];

/** Options of tensor(): the dtype and the device. */
export interface TensorOptions<D extends DType = DType> {
  /**
   * The tensor's dtype. Default: 'int32' for an Int32Array, otherwise 'float32'. A Uint16Array
   * holds raw 16-bit floats and needs 'bfloat16' or 'float16'. For 'int32', float data (a
   * Float32Array, Float64Array or array) must hold integers in int32's range: anything else
   * throws ERR_SAEKIT_ARG naming the element. Float types round to nearest even.
   */
  dtype?: D;
  /** Where the values live: 'auto' | 'cpu' | 'cuda' | 'cuda:N'. Default: backend.use()'s (initially 'auto'). */
  device?: DeviceOption;
}

function inferShape(data: readonly NestedNumbers[]): number[] {
  const shape: number[] = [];
  let level: NestedNumbers = data;
  while (Array.isArray(level)) {
    // A tensor has at most 8 dimensions: deeper nesting (an array that holds itself never ends)
    // is refused here, before flatten() recurses into it.
    if (shape.length === 8) throw argError('data', 'arrays nested at most 8 deep (a tensor has at most 8 dimensions)', data, 'ERR_SAEKIT_SHAPE');
    shape.push(level.length);
    if (level.length === 0) break;
    level = (level as readonly NestedNumbers[])[0] as NestedNumbers;
  }
  return shape;
}

function flatten(data: readonly NestedNumbers[], shape: readonly number[], out: number[], depth = 0, path = 'data'): void {
  if (data.length !== shape[depth]) {
    throw argError(path, `an array of length ${shape[depth]} (arrays must not be ragged)`, data, 'ERR_SAEKIT_SHAPE');
  }
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (depth + 1 < shape.length) {
      if (!Array.isArray(v)) throw argError(`${path}[${i}]`, 'an array', v, 'ERR_SAEKIT_SHAPE');
      flatten(v as readonly NestedNumbers[], shape, out, depth + 1, `${path}[${i}]`);
    } else {
      // An array here is a ragged nesting (a shape problem, as a number where an array was due is).
      if (Array.isArray(v)) throw argError(`${path}[${i}]`, 'a number (arrays must not be ragged)', v, 'ERR_SAEKIT_SHAPE');
      if (typeof v !== 'number') throw argError(`${path}[${i}]`, 'a number', v);
      out.push(v);
    }
  }
}

/**
 * Makes a tensor from values. `shape` defaults to the array's nesting (or [length]). The dtype is
 * `options.dtype`, else 'int32' for an Int32Array and 'float32' for other data (a Uint16Array
 * needs options.dtype); the overloads type the result accordingly.
 * @example tensor([[1, 2], [3, 4]]) // float32 [2, 2]
 * @example tensor(new Int32Array([1, 2])) // int32 [2]
 * @example tensor(bits, [8, 16], { dtype: 'bfloat16' }) // bits: Uint16Array of bf16 patterns
 */
export function tensor<D extends DType>(data: TensorData, shape: readonly number[] | undefined, options: TensorOptions<D> & { dtype: D }): Tensor<D>;
export function tensor(data: Int32Array, shape?: readonly number[], options?: TensorOptions<'int32'>): Tensor<'int32'>;
export function tensor(data: Float32Array | Float64Array | readonly NestedNumbers[], shape?: readonly number[], options?: TensorOptions<'float32'>): Tensor<'float32'>;
export function tensor(data: TensorData, shape?: readonly number[], options?: TensorOptions): Tensor;
export function tensor(data: TensorData, shape?: readonly number[], options?: TensorOptions): Tensor {
  const opts = checkOptions('options', options, TENSOR_OPTIONS);
  let dtype: DType | undefined = opts.dtype === undefined ? undefined : checkOneOf('options.dtype', opts.dtype, DTYPES, 'ERR_SAEKIT_DTYPE');
  let raw: Float32Array | Uint16Array | Int32Array;
  let rawType: DType;
  let defaultShape: number[];
  if (data instanceof Float32Array) {
    if (dtype === 'int32') checkInt32s(data, (i) => `data[${i}]`);
    raw = data;
    rawType = 'float32';
    defaultShape = [data.length];
  } else if (data instanceof Int32Array) {
    raw = data;
    rawType = 'int32';
    dtype ??= 'int32';
    defaultShape = [data.length];
  } else if (data instanceof Uint16Array) {
    if (dtype !== 'bfloat16' && dtype !== 'float16') {
      throw argError('options.dtype', "'bfloat16' or 'float16' for a Uint16Array of raw 16-bit floats", dtype, 'ERR_SAEKIT_DTYPE');
    }
    raw = data;
    rawType = dtype;
    defaultShape = [data.length];
  } else if (data instanceof Float64Array || Array.isArray(data)) {
    // float64 values: exact integers for int32; for 16-bit types float32 rounded to odd, so the
    // addon's narrowing rounds each value once (rounding to float32 first would round twice).
    let flat: ArrayLike<number>;
    if (data instanceof Float64Array) {
      flat = data;
      defaultShape = [data.length];
    } else {
      defaultShape = inferShape(data);
      const list: number[] = [];
      flatten(data, defaultShape, list);
      flat = list;
    }
    if (dtype === 'int32') {
      checkInt32s(flat, data instanceof Float64Array ? (i) => `data[${i}]` : (i) => `data${nestedIndex(i, defaultShape)}`);
      raw = Int32Array.from(flat);
      rawType = 'int32';
    } else {
      raw = dtype === 'bfloat16' || dtype === 'float16' ? roundToOddF32(flat) : Float32Array.from(flat);
      rawType = 'float32';
    }
  } else {
    throw arrayTypeError('data', 'a Float32Array, Float64Array, Int32Array, Uint16Array or (nested) array of numbers', data);
  }
  dtype ??= 'float32';
  const device = deviceName(resolveDevice('options.device', opts.device));
  const s = shape === undefined ? Object.freeze(defaultShape) : checkShape('shape', shape);
  if (shapeSize(s) !== raw.length) {
    throw new SaekitError(
      'ERR_SAEKIT_SHAPE',
      `Expected data of length ${shapeSize(s)} for shape [${s.join(', ')}] but received length ${raw.length}`,
    );
  }
  return wrapHandle(callNative(() => native().fromArray(raw, s, rawType, dtype as DType, device)));
}

/** Throws ERR_SAEKIT_ARG naming the first element of `values` that is not an int32 integer. */
function checkInt32s(values: ArrayLike<number>, name: (i: number) => string): void {
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (!Number.isInteger(v) || v < -2147483648 || v > 2147483647) throw argError(name(i), 'an int32 integer', v);
  }
}

/** The nested index of flat element `i` of an array of `shape`: `[1][0]`. */
function nestedIndex(i: number, shape: readonly number[]): string {
  let s = '';
  for (let d = shape.length - 1; d >= 0; d--) {
    s = `[${i % shape[d]!}]` + s;
    i = Math.floor(i / shape[d]!);
  }
  return s;
}

/**
 * float64 values as float32 rounded to odd (toward zero, the lowest bit set when inexact): a
 * second rounding to bfloat16 or float16 (round to nearest even) is then the correct rounding of
 * the float64 value.
 */
function roundToOddF32(src: ArrayLike<number>): Float32Array {
  const out = new Float32Array(src.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) {
    const d = src[i]!;
    const f = Math.fround(d);
    out[i] = f;
    if (f !== d && Number.isFinite(d) && Number.isFinite(f)) {
      if (Math.abs(f) > Math.abs(d)) bits[i]! -= 1; // rounded away from zero: one step back
      bits[i]! |= 1;
    }
  }
  return out;
}

/** Options of zeros(). */
export interface ZerosOptions<D extends DType = DType> {
  /** Default 'float32'. */
  dtype?: D;
  /** Where the values live. Default: backend.use()'s (initially 'auto'). */
  device?: DeviceOption;
}

/** A tensor of zeros. */
export function zeros<D extends DType = 'float32'>(shape: readonly number[], options?: ZerosOptions<D>): Tensor<D> {
  const opts = checkOptions('options', options, ZEROS_OPTIONS);
  const s = checkShape('shape', shape);
  const dtype = opts.dtype === undefined ? 'float32' : checkOneOf('options.dtype', opts.dtype, DTYPES, 'ERR_SAEKIT_DTYPE');
  const device = deviceName(resolveDevice('options.device', opts.device));
  return wrapHandle<D>(callNative(() => native().zeros(s, dtype, device)));
}

/** Options of randn() and rand(). */
export interface RandomOptions<D extends 'float32' | 'bfloat16' | 'float16' = 'float32'> {
  /**
   * Philox key: a non-negative safe integer or bigint < 2^64. The same (seed, stream) always
   * gives the same values, on every backend. Default: a fresh random seed.
   */
  seed?: number | bigint;
  /** Independent sub-stream for the same seed (Philox counter high word). Default 0. */
  stream?: number | bigint;
  /** Default 'float32'. */
  dtype?: D;
  /** Where the values live; the values are the same on every device. Default: backend.use()'s (initially 'auto'). */
  device?: DeviceOption;
}

const FLOAT_DTYPES = ['float32', 'bfloat16', 'float16'] as const;

function randomTensor<D extends 'float32' | 'bfloat16' | 'float16'>(
  kind: 'uniform' | 'normal',
  shape: readonly number[],
  options: RandomOptions<D> | undefined,
): Tensor<D> {
  const opts = checkOptions('options', options, RANDOM_OPTIONS);
  const s = checkShape('shape', shape);
  const seed = opts.seed === undefined ? randomSeed() : checkSeed('options.seed', opts.seed);
  const stream = opts.stream === undefined ? 0n : checkSeed('options.stream', opts.stream);
  const dtype = opts.dtype === undefined ? 'float32' : checkOneOf('options.dtype', opts.dtype, FLOAT_DTYPES, 'ERR_SAEKIT_DTYPE');
  const device = deviceName(resolveDevice('options.device', opts.device));
  return wrapHandle<D>(callNative(() => native().random(s, dtype, kind, seed, stream, device)));
}

/**
 * Standard normal values from the Philox 4x32-10 stream (docs/random.md gives the exact layout,
 * so other implementations can reproduce them).
 */
export function randn<D extends 'float32' | 'bfloat16' | 'float16' = 'float32'>(shape: readonly number[], options?: RandomOptions<D>): Tensor<D> {
  return randomTensor('normal', shape, options);
}

/**
 * Uniform values in [0, 1) from the Philox 4x32-10 stream (24-bit resolution; in bfloat16 and
 * float16 the float32 values rounded, those that would round up to 1 kept just below it).
 */
export function rand<D extends 'float32' | 'bfloat16' | 'float16' = 'float32'>(shape: readonly number[], options?: RandomOptions<D>): Tensor<D> {
  return randomTensor('uniform', shape, options);
}
