/**
 * Dictionary geometry: for every row of a matrix, the largest cosine similarity to any other row
 * (SAEBench core's `max_encoder_cosine_sim` / `max_decoder_cosine_sim` per latent; reference
 * sae-libraries.md §5.2), without ever holding the n x n cosine matrix.
 *
 * Method: rows are normalised in float64 (a zero row stays zero, so its cosine with everything
 * is 0) and rounded to float32; then, chunk by chunk, `ops.matmul(chunk, all, { transB: true })`
 * (the backend's float32 GEMM, off the JS thread) gives the cosines of `chunk` rows against all
 * rows, of which each row keeps its maximum over the other rows (the diagonal is skipped).
 * The next chunk's GEMM runs while the current one is scanned. The JS work (the finite check, the
 * normalisation, the scans) runs in slices of about 20 ms between turns of the event loop (due(),
 * pause()).
 *
 * Accuracy: each unit row is rounded to float32 (relative error <= u = 2^-24 per entry) and the
 * dot product of length d is a float32 sum, so |computed - exact cosine| <= (d + 2) u / (1 - (d + 2) u)
 * (Higham eq. 3.5 on vectors of norm 1), about 4.6e-5 at d = 768. Results are clamped to [-1, 1]:
 * a duplicated row gives 1 up to that bound.
 */
import { argError, SaekitError } from '../errors.js';
import { tensor, type Tensor } from '../tensor/index.js';
import { matmul } from '../tensor/ops.js';
import { checkInt, checkKept, checkOptions, checkSignal, optionNames } from '../validate.js';
import { due, pause } from '../slices.js';

/** Option names (checkOptions refuses others: a misspelling is an error, not ignored). */
const MAX_COSINE_OPTIONS = optionNames<MaxCosineOptions>({ chunk: true, signal: true });

/** Options of maxCosine(). */
export interface MaxCosineOptions {
  /**
   * Rows per GEMM. Default: min(2048, max(1, floor(2^25 / n))), so one cosine block holds at most
   * 32 Mi floats (128 MiB) and two are alive at a time.
   */
  chunk?: number;
  /** Stops between blocks of rows (and within a block's scan); the Promise rejects with `signal.reason`. */
  signal?: AbortSignal;
}

/** Entries the finite check reads between two calls of due(). */
const BLOCK = 1 << 16;

/** Max-entry budget of one cosine block (float32 values). */
const BLOCK_VALUES = 1 << 25;

/**
 * Unit rows in float32: each row divided by its float64 norm (zero rows stay zero).
 * @internal
 */
export async function normaliseRows(rows: Float32Array, n: number, d: number): Promise<Float32Array> {
  const out = new Float32Array(n * d);
  for (let i = 0; i < n; i++) {
    if (due(3 * d)) await pause();
    const o = i * d;
    let s = 0;
    for (let j = 0; j < d; j++) {
      const v = rows[o + j]!;
      s += v * v;
    }
    if (s === 0) continue;
    const inv = 1 / Math.sqrt(s);
    for (let j = 0; j < d; j++) out[o + j] = rows[o + j]! * inv;
  }
  return out;
}

/**
 * For each of the n rows of `rows` ([n, d] row-major), the largest cosine similarity to any other
 * row, as a Float64Array of length n. A zero row has cosine 0 with every row. With n = 1 there is
 * no other row and the result is [NaN]. See the module header for the float32 error bound.
 * `rows` is read during the first slices: leave it unchanged until the Promise settles (a buffer
 * detached meanwhile is an ERR_SAEKIT_ARG).
 * @example const maxCos = await maxCosine(W_dec, numLatents, dIn); // decoder rows
 */
export async function maxCosine(rows: Float32Array, n: number, d: number, options?: MaxCosineOptions): Promise<Float64Array> {
  if (!(rows instanceof Float32Array)) throw argError('rows', 'a Float32Array', rows);
  checkInt('n', n, 1, 1 << 26);
  checkInt('d', d, 1, 1 << 24);
  if (rows.length !== n * d) {
    throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected rows of length n * d = ${n * d} but received length ${rows.length}`);
  }
  const o = checkOptions('options', options, MAX_COSINE_OPTIONS);
  const chunk =
    o.chunk === undefined ? Math.min(2048, Math.max(1, Math.floor(BLOCK_VALUES / n))) : checkInt('options.chunk', o.chunk, 1, 1 << 26);
  const signal = checkSignal('options.signal', o.signal);
  signal?.throwIfAborted();
  for (let i0 = 0; i0 < rows.length; i0 += BLOCK) {
    const i1 = Math.min(rows.length, i0 + BLOCK);
    for (let i = i0; i < i1; i++) {
      if (!Number.isFinite(rows[i]!)) {
        throw new SaekitError('ERR_SAEKIT_NONFINITE', `Expected finite values in rows but received ${rows[i]} at row ${Math.floor(i / d)}, column ${i % d}`);
      }
    }
    if (due(i1 - i0)) await pause();
  }
  const result = new Float64Array(n).fill(n === 1 ? NaN : -Infinity);
  if (n === 1) return result;
  const unit = await normaliseRows(rows, n, d);
  checkKept('rows', rows, n * d);
  using all = tensor(unit, [n, d], { device: 'cpu' });
  if (due(n * d)) await pause(); // the copy (tens of ms at tens of MiB) ends a slice

  /** Starts the cosines of rows [start, end) against all rows; resolves to their values. */
  const block = async (start: number, end: number): Promise<Float32Array> => {
    using a = tensor(unit.subarray(start * d, end * d), [end - start, d], { device: 'cpu' });
    using c: Tensor = await matmul(a, all, { transB: true });
    return (await c.toArray()) as Float32Array;
  };
  const starts: number[] = [];
  for (let s = 0; s < n; s += chunk) starts.push(s);
  let pending: Promise<Float32Array> | null = block(0, Math.min(chunk, n));
  for (let b = 0; b < starts.length; b++) {
    const start = starts[b]!;
    const end = Math.min(start + chunk, n);
    const cur: Promise<Float32Array> = pending!;
    // Queue the next block before scanning this one, so the GEMM overlaps the scan.
    pending = b + 1 < starts.length ? block(starts[b + 1]!, Math.min(starts[b + 1]! + chunk, n)) : null;
    let c: Float32Array;
    try {
      c = await cur;
      signal?.throwIfAborted();
      for (let i = start; i < end; i++) {
        const off = (i - start) * n;
        let m = -Infinity;
        for (let j = 0; j < i; j++) if (c[off + j]! > m) m = c[off + j]!;
        for (let j = i + 1; j < n; j++) if (c[off + j]! > m) m = c[off + j]!;
        result[i] = Math.min(1, Math.max(-1, m));
        if (due(n)) await pause(signal);
      }
    } catch (err) {
      // The next block's GEMM is queued: let it finish unobserved (its tensors are disposed by block()).
      pending?.catch(() => {});
      throw err;
    }
  }
  return result;
}

