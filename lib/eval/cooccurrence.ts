/**
 * Chunk co-occurrence of latents and the phi coefficient (reference/methods.md §5.7,
 * "Co-occurrence" and "Affinities", after Li et al., "The Geometry of Concepts").
 *
 * Definitions:
 * - Tokens (rows of the sparse codes, in the order given, across add() calls) are grouped into
 *   consecutive, non-overlapping chunks of `chunkTokens` tokens (default 256, as in the reference).
 * - A latent is active in a chunk if any of the chunk's tokens has a value > `threshold` for it.
 *   The default threshold is 0; the reference uses > 1 (pass `threshold: 1` to match it).
 * - A trailing partial chunk counts as a chunk by default; the reference drops it
 *   (`dropPartial: true` matches the reference).
 * - With T chunks, C_ij the number of chunks where both i and j are active and C_ii the number of
 *   chunks where i is active, the 2x2 table is n11 = C_ij, n10 = C_ii - C_ij, n01 = C_jj - C_ij,
 *   n00 = T - C_ii - C_jj + C_ij, and
 *   phi = (n11 n00 - n10 n01) / sqrt(C_ii (T - C_ii) C_jj (T - C_jj)), with NaN/inf set to 0.
 *   The numerator is computed as T C_ij - C_ii C_jj (the same integer, exact below 2^53).
 * - `top` lists the pairs i < j with C_ij >= 1 (pairs that never co-occur are not enumerated),
 *   ordered by phi descending, then count descending, then (i, j) ascending.
 *
 * Storage: pair counts are a dense upper-triangle Int32Array when numLatents <= 4096 (at most 64
 * MiB), a Map keyed by i * numLatents + j otherwise (only pairs that occurred).
 */
import { argError, SaekitError } from '../errors.js';
import { checkBool, checkInt, checkOptions, optionNames } from '../validate.js';
import type { ActivationSource } from '../data/types.js';
import type { SparseAutoencoder } from '../sae/index.js';

/** Option names (checkOptions refuses others: a misspelling is an error, not ignored). */
const COOC_OPTIONS = optionNames<CooccurrenceOptions>({ chunkTokens: true, threshold: true, dropPartial: true });
const COOC_RESULT_OPTIONS = optionNames<CooccurrenceResultOptions>({ top: true, dense: true });

/** Largest numLatents for dense pair counts and for the dense phi matrix. */
export const COOCCURRENCE_DENSE_MAX = 4096;

/** Options of the accumulation: chunk length, activity threshold, partial last chunk. */
export interface CooccurrenceOptions {
  /** Tokens per chunk. Default 256. */
  chunkTokens?: number;
  /** A latent is active in a chunk if some token's value is > threshold. Default 0 (reference: 1). */
  threshold?: number;
  /** Drop a trailing partial chunk from result(), as the reference does. Default false. */
  dropPartial?: boolean;
}

/**
 * One batch of top-k style sparse codes: token r has values/indices [r * k, (r + 1) * k). An
 * SAE's codes (SparseCodes, from sae.encode or sae.forward) are one.
 */
export interface CooccurrenceCodes {
  /** Tokens in the batch. */
  rows: number;
  /** Codes per token. */
  k: number;
  /** [rows * k] code values; a latent counts as active where its value is > threshold. */
  values: Float32Array;
  /** [rows * k] latent indices. */
  indices: Int32Array;
}

/** A pair of latents that co-occurred, i < j. */
export interface CooccurrencePair {
  /** The first latent. */
  i: number;
  /** The second latent. */
  j: number;
  /** Chunks in which both were active (C_ij). */
  count: number;
  /** Their phi coefficient over chunks. */
  phi: number;
}

/** The co-occurrence statistics: chunk counts and the top pairs by phi. */
export interface CooccurrenceResult {
  /** Number of chunks T. */
  chunks: number;
  /** Chunks in which each latent is active (C_ii). */
  active: Float64Array;
  /** The top pairs by phi. */
  top: CooccurrencePair[];
  /** Dense numLatents x numLatents phi matrix (row-major, diagonal included), when requested. */
  phi?: Float64Array;
}

/** Options of result() (and cooccurrence()): how many top pairs, and whether to add the dense phi matrix. */
export interface CooccurrenceResultOptions {
  /** Number of pairs in `top`. Default 100. */
  top?: number;
  /** Also return the dense phi matrix (numLatents <= 4096 only). Default false. */
  dense?: boolean;
}

/** phi from chunk counts; non-finite results (a latent never or always active) are 0. */
export function phiCoefficient(T: number, cij: number, cii: number, cjj: number): number {
  const num = T * cij - cii * cjj;
  const den = Math.sqrt(cii * (T - cii) * cjj * (T - cjj));
  const v = num / den;
  return Number.isFinite(v) ? v : 0;
}

/** Streams sparse codes and accumulates per-chunk co-occurrence counts. */
export class CooccurrenceAccumulator {
  /** Latents of the codes (indices in [0, numLatents)). */
  readonly numLatents: number;
  /** Tokens per chunk. */
  readonly chunkTokens: number;
  /** A latent is active in a chunk if some token's value is > threshold. */
  readonly threshold: number;
  /** Whether result() drops a trailing partial chunk. */
  readonly dropPartial: boolean;
  #chunks = 0;
  #active: Float64Array;
  #dense: Int32Array | undefined;
  #sparse: Map<number, number> | undefined;
  /** Latents active in the current (open) chunk, and a mark per latent. */
  #pending: number[] = [];
  #mark: Uint8Array;
  #tokensInChunk = 0;

  constructor(numLatents: number, options?: CooccurrenceOptions) {
    checkInt('numLatents', numLatents, 1, 2 ** 26);
    const opts = checkOptions('options', options, COOC_OPTIONS);
    this.numLatents = numLatents;
    this.chunkTokens = opts.chunkTokens === undefined ? 256 : checkInt('options.chunkTokens', opts.chunkTokens, 1, 2 ** 31);
    if (opts.threshold !== undefined && (typeof opts.threshold !== 'number' || !Number.isFinite(opts.threshold))) {
      throw argError('options.threshold', 'a finite number', opts.threshold);
    }
    this.threshold = opts.threshold ?? 0;
    this.dropPartial = opts.dropPartial === undefined ? false : checkBool('options.dropPartial', opts.dropPartial);
    this.#active = new Float64Array(numLatents);
    this.#mark = new Uint8Array(numLatents);
    if (numLatents <= COOCCURRENCE_DENSE_MAX) this.#dense = new Int32Array(numLatents * numLatents);
    else this.#sparse = new Map();
  }

  /** Adds a batch of tokens; chunks continue across calls. */
  add(codes: CooccurrenceCodes): void {
    if (codes === null || typeof codes !== 'object') throw argError('codes', 'an object { rows, k, values, indices }', codes);
    const rows = checkInt('codes.rows', codes.rows, 0, 2 ** 31);
    const k = checkInt('codes.k', codes.k, 0, this.numLatents);
    if (!(codes.values instanceof Float32Array)) throw argError('codes.values', 'a Float32Array', codes.values);
    if (!(codes.indices instanceof Int32Array)) throw argError('codes.indices', 'an Int32Array', codes.indices);
    if (codes.values.length !== rows * k || codes.indices.length !== rows * k) {
      throw new SaekitError(
        'ERR_SAEKIT_SHAPE',
        `Expected codes.values and codes.indices of length rows * k = ${rows * k} but received ${codes.values.length} and ${codes.indices.length}`,
      );
    }
    const { values, indices } = codes;
    for (let i = 0; i < indices.length; i++) {
      const idx = indices[i];
      if (idx < 0 || idx >= this.numLatents) throw argError(`codes.indices[${i}]`, `integer between 0 and ${this.numLatents - 1}`, idx);
      // A NaN would read as inactive (NaN > t is false); every other metric refuses it.
      if (!Number.isFinite(values[i])) throw new SaekitError('ERR_SAEKIT_NONFINITE', `codes.values[${i}] is ${values[i]}: expected finite values`);
    }
    const t = this.threshold;
    for (let r = 0; r < rows; r++) {
      const o = r * k;
      for (let q = 0; q < k; q++) {
        if (values[o + q] > t) {
          const idx = indices[o + q];
          if (this.#mark[idx] === 0) {
            this.#mark[idx] = 1;
            this.#pending.push(idx);
          }
        }
      }
      if (++this.#tokensInChunk === this.chunkTokens) this.#closeChunk();
    }
  }

  #closeChunk(): void {
    const list = this.#pending.sort((x, y) => x - y);
    const n = this.numLatents;
    for (let a = 0; a < list.length; a++) {
      const i = list[a];
      this.#active[i] += 1;
      this.#mark[i] = 0;
      if (this.#dense) {
        const row = i * n;
        for (let b = a + 1; b < list.length; b++) this.#dense[row + list[b]] += 1;
      } else {
        const map = this.#sparse!;
        for (let b = a + 1; b < list.length; b++) {
          const key = i * n + list[b];
          map.set(key, (map.get(key) ?? 0) + 1);
        }
        if (map.size >= 16_000_000) {
          throw new SaekitError('ERR_SAEKIT_MEMORY', `CooccurrenceAccumulator: more than 16M distinct co-occurring pairs; raise the threshold or use fewer latents`);
        }
      }
    }
    this.#pending = [];
    this.#tokensInChunk = 0;
    this.#chunks += 1;
  }

  /**
   * Counts and phi so far. Does not close the open chunk: a later add() continues it. The open
   * partial chunk is included unless dropPartial (or it has no tokens).
   */
  result(options?: CooccurrenceResultOptions): CooccurrenceResult {
    const opts = checkOptions('options', options, COOC_RESULT_OPTIONS);
    const topN = opts.top === undefined ? 100 : checkInt('options.top', opts.top, 0, 2 ** 31);
    const dense = opts.dense === undefined ? false : checkBool('options.dense', opts.dense);
    const n = this.numLatents;
    if (dense && n > COOCCURRENCE_DENSE_MAX) {
      throw argError('options.dense', `false when numLatents > ${COOCCURRENCE_DENSE_MAX}`, dense);
    }
    const withPending = this.#tokensInChunk > 0 && !this.dropPartial;
    const T = this.#chunks + (withPending ? 1 : 0);
    const active = Float64Array.from(this.#active);
    const pending = withPending ? [...this.#pending].sort((x, y) => x - y) : [];
    for (const i of pending) active[i] += 1;
    const mark = this.#mark;
    const extra = (i: number, j: number): number => (withPending && mark[i] === 1 && mark[j] === 1 ? 1 : 0);

    const heap = new TopHeap(topN);
    const consider = (i: number, j: number, count: number): void => {
      if (topN > 0) heap.push({ i, j, count, phi: phiCoefficient(T, count, active[i], active[j]) });
    };
    let phiMatrix: Float64Array | undefined;
    if (this.#dense) {
      const c = this.#dense;
      if (dense) phiMatrix = new Float64Array(n * n);
      for (let i = 0; i < n; i++) {
        const row = i * n;
        if (phiMatrix) phiMatrix[row + i] = phiCoefficient(T, active[i], active[i], active[i]);
        if (active[i] === 0) continue;
        for (let j = i + 1; j < n; j++) {
          const count = c[row + j] + extra(i, j);
          if (phiMatrix) {
            const v = phiCoefficient(T, count, active[i], active[j]);
            phiMatrix[row + j] = v;
            phiMatrix[j * n + i] = v;
          }
          if (count > 0) consider(i, j, count);
        }
      }
    } else {
      for (const [key, stored] of this.#sparse!) {
        const i = Math.floor(key / n);
        const j = key - i * n;
        consider(i, j, stored + extra(i, j));
      }
      // Pairs seen only in the open chunk.
      for (let a = 0; a < pending.length; a++) {
        for (let b = a + 1; b < pending.length; b++) {
          const i = pending[a];
          const j = pending[b];
          if (!this.#sparse!.has(i * n + j)) consider(i, j, 1);
        }
      }
    }
    const out: CooccurrenceResult = { chunks: T, active, top: heap.sorted() };
    if (phiMatrix) out.phi = phiMatrix;
    return out;
  }
}

/** true if x ranks before y: phi desc, count desc, i asc, j asc. */
function before(x: CooccurrencePair, y: CooccurrencePair): boolean {
  if (x.phi !== y.phi) return x.phi > y.phi;
  if (x.count !== y.count) return x.count > y.count;
  if (x.i !== y.i) return x.i < y.i;
  return x.j < y.j;
}

/** Keeps the best `cap` pairs; the root is the worst kept. */
class TopHeap {
  readonly #cap: number;
  readonly #h: CooccurrencePair[] = [];
  constructor(cap: number) {
    this.#cap = cap;
  }
  push(p: CooccurrencePair): void {
    const h = this.#h;
    if (h.length < this.#cap) {
      h.push(p);
      let c = h.length - 1;
      while (c > 0) {
        const par = (c - 1) >> 1;
        if (!before(h[par], h[c])) break;
        [h[par], h[c]] = [h[c], h[par]];
        c = par;
      }
    } else if (h.length > 0 && before(p, h[0])) {
      h[0] = p;
      let c = 0;
      for (;;) {
        const l = 2 * c + 1;
        const r = l + 1;
        let w = c;
        if (l < h.length && before(h[w], h[l])) w = l;
        if (r < h.length && before(h[w], h[r])) w = r;
        if (w === c) break;
        [h[w], h[c]] = [h[c], h[w]];
        c = w;
      }
    }
  }
  sorted(): CooccurrencePair[] {
    return [...this.#h].sort((x, y) => (before(x, y) ? -1 : before(y, x) ? 1 : 0));
  }
}

/** What cooccurrence() reads: sparse codes already computed, or an SAE and a source to encode. */
export type CooccurrenceInput =
  | { numLatents: number; codes: CooccurrenceCodes | CooccurrenceCodes[] }
  | { sae: SparseAutoencoder; source: ActivationSource; maxTokens?: number; batchSize?: number };

/**
 * Latent co-occurrence per chunk of consecutive tokens (default 256), accumulated sparsely, with
 * the phi coefficient of every pair that co-occurred (the top pairs, or the dense matrix when
 * small). Tokens are taken in source order; chunks continue across batches.
 * @example const { top } = await cooccurrence({ sae, source, maxTokens: 1e6 }, { chunkTokens: 256, top: 50 });
 */
export async function cooccurrence(input: CooccurrenceInput, options: CooccurrenceOptions & CooccurrenceResultOptions = {}): Promise<CooccurrenceResult> {
  if (input === null || typeof input !== 'object') throw argError('input', '{ numLatents, codes } or { sae, source }', input);
  const { top, dense, ...acc } = options;
  if ('codes' in input) {
    const acc2 = new CooccurrenceAccumulator(input.numLatents, acc);
    for (const c of Array.isArray(input.codes) ? input.codes : [input.codes]) acc2.add(c);
    return acc2.result({ top, dense });
  }
  const { sae, source } = input;
  const maxTokens = input.maxTokens ?? Number.MAX_SAFE_INTEGER;
  const accumulator = new CooccurrenceAccumulator(sae.numLatents, acc);
  let tokens = 0;
  // Recycled batch arrays: each batch is encoded (awaited) before the next is asked for.
  for await (const b of source.batches({ batchSize: input.batchSize ?? 4096, shuffle: false, recycle: true })) {
    if (tokens >= maxTokens) break;
    const rows = Math.min(b.rows, maxTokens - tokens);
    const codes = await sae.encode(rows === b.rows ? b.data : b.data.subarray(0, rows * b.dIn));
    accumulator.add(codes);
    tokens += rows;
  }
  return accumulator.result({ top, dense });
}
