/**
 * Tensor ops. Each validates on the calling thread, runs on the backend's threads and resolves
 * to a new tensor.
 */
import { argError, callNative, SaekitError, settleNative } from '../errors.js';
import { native } from '../native/index.js';
import { checkBool, checkOptions, optionNames } from '../validate.js';
import { handleOf, type Tensor, wrapHandle } from './index.js';

/** Option names (checkOptions refuses others: a misspelling is an error, not ignored). */
const MATMUL_OPTIONS = optionNames<MatmulOptions>({ transA: true, transB: true, out: true });

/** Options of matmul(). */
export interface MatmulOptions {
  /** Use a's transpose: a is [K, M] instead of [M, K]. Default false. */
  transA?: boolean;
  /** Use b's transpose: b is [N, K] instead of [K, N]. Default false. */
  transB?: boolean;
  /**
   * Write the product into this float32 [M, N] tensor (not a or b, on their device) and resolve
   * to it, instead of allocating a new one: saves the allocation in loops.
   */
  out?: Tensor<'float32'>;
}

/**
 * Matrix product C = op(a) op(b) of 2-D float32 tensors on one device, through that device's
 * GEMM (OpenBLAS sgemm on the CPU when linked, cuBLAS sgemm on CUDA); the result is on the same
 * device. op(a) is [M, K], op(b) is [K, N], the result is [M, N].
 * @example const c = await ops.matmul(x, w, { transB: true }); // x [N, D] times w [M, D]^T
 */
export async function matmul(a: Tensor<'float32'>, b: Tensor<'float32'>, options?: MatmulOptions): Promise<Tensor<'float32'>> {
  const site = new Error();
  const opts = checkOptions('options', options, MATMUL_OPTIONS);
  const transA = opts.transA === undefined ? false : checkBool('options.transA', opts.transA);
  const transB = opts.transB === undefined ? false : checkBool('options.transB', opts.transB);
  const ha = handleOf(a, 'a');
  const hb = handleOf(b, 'b');
  for (const [name, t] of [['a', a], ['b', b]] as const) {
    if (t.dtype !== 'float32') throw argError(`${name}.dtype`, "'float32'", t.dtype, 'ERR_SAEKIT_DTYPE');
    if (t.shape.length !== 2) {
      throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected a 2-D tensor for ${name} but received shape [${t.shape.join(', ')}]`);
    }
  }
  if (a.device !== b.device) {
    throw new SaekitError('ERR_SAEKIT_DEVICE', `matmul: Expected a and b on one device but a is on ${a.device} and b is on ${b.device}`);
  }
  const [m, ka] = transA ? [a.shape[1]!, a.shape[0]!] : [a.shape[0]!, a.shape[1]!];
  const [kb, n] = transB ? [b.shape[1]!, b.shape[0]!] : [b.shape[0]!, b.shape[1]!];
  if (ka !== kb) {
    throw new SaekitError(
      'ERR_SAEKIT_SHAPE',
      `matmul: inner dimensions differ: op(a) is [${m}, ${ka}] and op(b) is [${kb}, ${n}] ` +
        `(a [${a.shape.join(', ')}]${transA ? ' transposed' : ''}, b [${b.shape.join(', ')}]${transB ? ' transposed' : ''})`,
    );
  }
  if (opts.out !== undefined) {
    const out = opts.out;
    const ho = handleOf(out, 'options.out');
    if (out.dtype !== 'float32' || out.shape.length !== 2 || out.shape[0] !== m || out.shape[1] !== n) {
      throw new SaekitError(
        out.dtype !== 'float32' ? 'ERR_SAEKIT_DTYPE' : 'ERR_SAEKIT_SHAPE',
        `Expected a float32 tensor of shape [${m}, ${n}] for options.out but received ${out.dtype} [${out.shape.join(', ')}]`,
      );
    }
    if (out === a || out === b) throw argError('options.out', 'a tensor other than a and b', out);
    if (out.device !== a.device) {
      throw new SaekitError('ERR_SAEKIT_DEVICE', `matmul: Expected options.out on ${a.device} (as a and b) but it is on ${out.device}`);
    }
    await settleNative(callNative(() => native().matmul(ha, hb, transA, transB, ho)), site);
    return out as Tensor<'float32'>;
  }
  const result = await settleNative(callNative(() => native().matmul(ha, hb, transA, transB)), site);
  return wrapHandle<'float32'>(result);
}
