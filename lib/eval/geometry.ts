/**
 * Dictionary geometry: for every row of a matrix, the largest cosine similarity to any other row
 * (SAEBench core's `max_encoder_cosine_sim` / `max_decoder_cosine_sim` per latent; reference
 * sae-libraries.md §5.2), without ever holding the n x n cosine matrix.
 *
 * Method: rows are normalised in float64 (a zero row stays zero, so its cosine with everything
 * is 0) and rounded to float32, then copied into native memory as blocks of consecutive rows of
 * at most 2^20 values (4 MiB) and `chunk` rows each, one block per slice: a single copy of the
 * whole matrix held the JS thread for its whole length (0.25-0.3 s at 64 MiB on a VM whose page
 * faults cost ~18 us). For every pair of blocks i <= j, `ops.matmul(block i, block j,
 * { transB: true })` (the backend's float32 GEMM, off the JS thread) gives their rows' cosines;
 * block i's rows keep their row maxima and, for i < j, block j's rows their column maxima (the
 * cosine matrix is symmetric, so each pair is computed once; the diagonal is skipped). The next
 * pair's GEMM runs while the current one is scanned. The JS work (the finite check, the
 * normalisation, the copies, the scans) runs in slices of about 20 ms between turns of the event
 * loop (due(), pause()).
 *
 * Accuracy: each unit row is rounded to float32 (relative error <= u = 2^-24 per entry) and the
 * dot product of length d is a float32 sum, so |computed - exact cosine| <= (d + 2) u / (1 - (d + 2) u)
 * (Higham eq. 3.5 on vectors of norm 1), about 4.6e-5 at d = 768. Results are clamped to [-1, 1]:
 * a duplicated row gives 1 up to that bound.
 */
import { argError, arrayTypeError, SaekitError } from '../errors.js';
import { tensor, type Tensor } from '../tensor/index.js';
import { matmul } from '../tensor/ops.js';
import { checkInt, checkKept, checkOptions, checkSignal, optionNames } from '../validate.js';
import { due, pause } from '../slices.js';

/** Option names (checkOptions refuses others: a misspelling is an error, not ignored). */
const MAX_COSINE_OPTIONS = optionNames<MaxCosineOptions>({ chunk: true, signal: true });

/** Options of maxCosine(). */
export interface MaxCosineOptions {
  /**
   * Rows per block (at most; also at most max(1, floor(2^20 / d)), so a block's copy into native
   * memory is at most 4 MiB). Default: 2048. A GEMM multiplies two blocks, so one cosine block
   * holds at most chunk^2 floats (16 MiB) and two are alive at a time.
   */
  chunk?: number;
  /** Stops between blocks of rows (and within a block's scan); the Promise rejects with `signal.reason`. */
  signal?: AbortSignal;
}

/** Entries the finite check reads between two calls of due(). */
const BLOCK = 1 << 16;

/** Most values of one block of unit rows (one copy into native memory per slice). */
const COPY_VALUES = 1 << 20;

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
  if (!(rows instanceof Float32Array)) throw arrayTypeError('rows', 'a Float32Array', rows);
  checkInt('n', n, 1, 1 << 26);
  checkInt('d', d, 1, 1 << 24);
  if (rows.length !== n * d) {
    throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected rows of length n * d = ${n * d} but received length ${rows.length}`);
  }
  const o = checkOptions('options', options, MAX_COSINE_OPTIONS);
  const chunk =
    o.chunk === undefined ? 2048 : checkInt('options.chunk', o.chunk, 1, 1 << 26);
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
  const per = Math.max(1, Math.min(chunk, Math.floor(COPY_VALUES / d)));
  const starts: number[] = [];
  for (let s = 0; s < n; s += per) starts.push(s);
  const end = (b: number): number => Math.min(starts[b]! + per, n);
  const blocks: Tensor<'float32'>[] = [];
  /** The pair of blocks after (i, j) in the order of the GEMMs: (0, 0), (0, 1), ..., (1, 1), ... */
  const after = ([i, j]: [number, number]): [number, number] | null =>
    j + 1 < starts.length ? [i, j + 1] : i + 1 < starts.length ? [i + 1, i + 1] : null;
  /** Starts the cosines of block i's rows against block j's; resolves to their values. */
  const cosines = async (i: number, j: number): Promise<Float32Array> => {
    using c: Tensor = await matmul(blocks[i]!, blocks[j]!, { transB: true });
    return (await c.toArray()) as Float32Array;
  };
  let pending: Promise<Float32Array> | null = null;
  try {
    for (let b = 0; b < starts.length; b++) {
      blocks.push(tensor(unit.subarray(starts[b]! * d, end(b) * d), [end(b) - starts[b]!, d], { device: 'cpu' }));
      if (due((end(b) - starts[b]!) * d)) await pause(signal); // a copy of up to 4 MiB per slice
    }
    pending = cosines(0, 0);
    for (let pair: [number, number] | null = [0, 0]; pair; pair = after(pair)) {
      const [i, j] = pair;
      const cur: Promise<Float32Array> = pending!;
      // Queue the next pair before scanning this one, so the GEMM overlaps the scan.
      const next = after(pair);
      pending = next ? cosines(...next) : null;
      const c = await cur;
      signal?.throwIfAborted();
      const [si, sj] = [starts[i]!, starts[j]!];
      const w = end(j) - sj;
      for (let r = 0; r < end(i) - si; r++) {
        const off = r * w;
        let m = result[si + r]!;
        if (i === j) {
          for (let t = 0; t < r; t++) if (c[off + t]! > m) m = c[off + t]!;
          for (let t = r + 1; t < w; t++) if (c[off + t]! > m) m = c[off + t]!;
        } else {
          // Row r of block i against every row of block j, and the reverse (the same cosines).
          for (let t = 0; t < w; t++) {
            const v = c[off + t]!;
            if (v > m) m = v;
            if (v > result[sj + t]!) result[sj + t] = v;
          }
        }
        result[si + r] = m;
        if (due(w)) await pause(signal);
      }
    }
  } catch (err) {
    // A queued GEMM still reads its blocks: let it settle before they are disposed.
    await pending?.catch(() => {});
    throw err;
  } finally {
    for (const t of blocks) t.dispose();
  }
  for (let i = 0; i < n; i++) result[i] = Math.min(1, Math.max(-1, result[i]!));
  return result;
}

