/**
 * Chunk co-occurrence of latents and the phi coefficient (docs/references.md §5.7,
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
 * Storage: the pair counts C_ij (i < j) are a packed strict upper triangle, a Uint32Array of
 * n(n - 1)/2 entries for n = numLatents (16,384 latents, the reference's Gemma Scope 16k: 512 MiB;
 * the pages are committed as pairs are first counted). numLatents above COOCCURRENCE_MAX_LATENTS
 * (32,768: 2 GiB) is refused by the constructor (ERR_SAEKIT_MEMORY), before any data is read.
 *
 * At most 2^32 - 1 chunks are counted (the counts are 32-bit): add() checks it before counting.
 *
 * Cost: closing a chunk with a active latents sorts them and adds 1 to a(a - 1)/2 counts: at the
 * reference scale (L0 ~50, 256-token chunks, ~1,430 active latents per chunk) about 1M increments,
 * ~10 ms (measured 50-110 chunks/s on a loaded 2-core machine). add() closes a chunk in one call (a
 * huge chunkTokens with all 16k latents active: 134M increments, ~1 s); cooccurrence() pauses
 * inside a long close too, so its slices stay near 10 ms. result() visits
 * every pair of latents active so far (up to n(n - 1)/2: ~0.8 s of CPU at 16k latents), so it
 * returns a Promise and scans in slices, yielding to the event loop every ~10 ms; no add() may
 * run until it settles (add() refuses). cooccurrence() feeds add() about one chunk at a time and
 * scans the same way.
 */
import { argError, arrayTypeError, atTokens, SaekitError } from '../errors.js';
import { checkBool, checkInt, checkKept, checkOptions, optionNames } from '../validate.js';
import { batchRows } from '../data/options.js';
import type { ActivationSource } from '../data/types.js';
import type { SparseAutoencoder } from '../sae/index.js';
import { yieldToEventLoop } from '../slices.js';

/**
 * Checks a batch of codes (shape, indices in range, finite values) before anything is counted;
 * errors name `${name}.field[i]`.
 */
function checkCodes(codes: CooccurrenceCodes, numLatents: number, name: string): { rows: number; k: number; values: Float32Array; indices: Int32Array } {
  const c = checkCodesShape(codes, numLatents, name);
  checkEntries(c.values, c.indices, 0, c.indices.length, numLatents, name);
  return c;
}

/** checkCodes without the entries: the fields, their types and lengths. */
function checkCodesShape(codes: CooccurrenceCodes, numLatents: number, name: string): { rows: number; k: number; values: Float32Array; indices: Int32Array } {
  if (codes === null || typeof codes !== 'object') throw argError(name, 'an object { rows, k, values, indices }', codes);
  const rows = checkInt(`${name}.rows`, codes.rows, 0, 2 ** 31);
  const k = checkInt(`${name}.k`, codes.k, 0, numLatents);
  if (!(codes.values instanceof Float32Array)) throw arrayTypeError(`${name}.values`, 'a Float32Array', codes.values);
  if (!(codes.indices instanceof Int32Array)) throw arrayTypeError(`${name}.indices`, 'an Int32Array', codes.indices);
  if (codes.values.length !== rows * k || codes.indices.length !== rows * k) {
    throw new SaekitError(
      'ERR_SAEKIT_SHAPE',
      `Expected ${name}.values and ${name}.indices of length rows * k = ${rows * k} but received ${codes.values.length} and ${codes.indices.length}`,
    );
  }
  return { rows, k, values: codes.values, indices: codes.indices };
}

/** checkCodes's check of entries [from, to): indices in [0, numLatents), finite values. */
function checkEntries(values: Float32Array, indices: Int32Array, from: number, to: number, numLatents: number, name: string): void {
  for (let i = from; i < to; i++) {
    const idx = indices[i]!;
    if (idx < 0 || idx >= numLatents) throw argError(`${name}.indices[${i}]`, `integer between 0 and ${numLatents - 1}`, idx);
    // A NaN would read as inactive (NaN > t is false); every other metric refuses it.
    if (!Number.isFinite(values[i])) throw new SaekitError('ERR_SAEKIT_NONFINITE', `${name}.values[${i}] is ${values[i]}: expected finite values`);
  }
}

/** Option names (checkOptions refuses others: a misspelling is an error, not ignored). */
const COOC_OPTIONS = optionNames<CooccurrenceOptions>({ chunkTokens: true, threshold: true, dropPartial: true });
const COOC_RESULT_OPTIONS = optionNames<CooccurrenceResultOptions>({ top: true, dense: true });
const CODES_INPUT_KEYS: readonly string[] = ['numLatents', 'codes'];
const SAE_INPUT_KEYS: readonly string[] = ['sae', 'source', 'maxTokens', 'batchSize'];

/** Largest numLatents for the dense phi matrix (result option `dense`: numLatents² float64). */
export const COOCCURRENCE_DENSE_MAX = 4096;

/** Largest numLatents of an accumulator: its pair counts take 2 n(n - 1) bytes (2 GiB here). */
export const COOCCURRENCE_MAX_LATENTS = 32768;

/** Most chunks an accumulator counts (its pair counts are 32-bit). */
const MAX_CHUNKS = 2 ** 32 - 1;

/** Options of the accumulation: chunk length, activity threshold, partial last chunk. */
export interface CooccurrenceOptions {
  /** Tokens per chunk. Default 256. */
  chunkTokens?: number;
  /** A latent is active in a chunk if some token's value is > threshold (>= 0). Default 0 (reference: 1). */
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

/**
 * phi of two latents from chunk counts: T chunks, cij chunks where both are active, cii and cjj
 * chunks where each is. The counts must make a 2x2 table: integers with 0 <= cii, cjj <= T and
 * max(0, cii + cjj - T) <= cij <= min(cii, cjj); others throw ERR_SAEKIT_ARG naming the argument.
 * A non-finite phi (a latent never or always active) is 0.
 * @example phiCoefficient(4, 2, 2, 2) // 1: both active in the same 2 of 4 chunks
 */
export function phiCoefficient(T: number, cij: number, cii: number, cjj: number): number {
  checkInt('T', T, 0, Number.MAX_SAFE_INTEGER);
  if (typeof cii !== 'number' || !Number.isInteger(cii) || cii < 0 || cii > T) throw argError('cii', `integer between 0 and T = ${T}`, cii);
  if (typeof cjj !== 'number' || !Number.isInteger(cjj) || cjj < 0 || cjj > T) throw argError('cjj', `integer between 0 and T = ${T}`, cjj);
  const lo = Math.max(0, cii + cjj - T);
  const hi = Math.min(cii, cjj);
  if (typeof cij !== 'number' || !Number.isInteger(cij) || cij < lo || cij > hi) {
    throw argError('cij', `integer between max(0, cii + cjj - T) = ${lo} and min(cii, cjj) = ${hi}`, cij);
  }
  return phi(T, cij, cii, cjj);
}

/** phi from counts already known to be a 2x2 table; NaN/inf become 0. */
function phi(T: number, cij: number, cii: number, cjj: number): number {
  const v = (T * cij - cii * cjj) / Math.sqrt(cii * (T - cii) * cjj * (T - cjj));
  return Number.isFinite(v) ? v : 0;
}

/** Index of pair (i, j), i < j, in the packed strict upper triangle is rowBase(i, n) + j. */
function rowBase(i: number, n: number): number {
  // Row i starts at i n - i (i + 1)/2 and holds j = i + 1 .. n - 1; i (i + 3) is even. Below
  // 2^31 for numLatents <= COOCCURRENCE_MAX_LATENTS, so `| 0` keeps it a small integer for V8.
  return (i * n - (i * (i + 3)) / 2 - 1) | 0;
}

/** result() options, checked. */
interface ResultOptions {
  top: number;
  dense: boolean;
}

function checkResultOptions(options: CooccurrenceResultOptions | undefined, numLatents: number): ResultOptions {
  const opts = checkOptions('options', options, COOC_RESULT_OPTIONS);
  const top = opts.top === undefined ? 100 : checkInt('options.top', opts.top, 0, 2 ** 31);
  const dense = opts.dense === undefined ? false : checkBool('options.dense', opts.dense);
  if (dense && numLatents > COOCCURRENCE_DENSE_MAX) throw argError('options.dense', `false when numLatents > ${COOCCURRENCE_DENSE_MAX}`, dense);
  return { top, dense };
}

/**
 * Pairs visited by result() between two yields of its scan (about a millisecond; more where many
 * enter the top list, or the dense matrix's columns are first written).
 */
const SCAN_SLICE = 1 << 16;

/** Top pairs taken out of the heap, in order, between two yields of the scan. */
const DRAIN_SLICE = 1 << 12;

/** The result scan of an accumulator (set in its static block; used by cooccurrence()). */
let scanOf: (acc: CooccurrenceAccumulator, o: ResultOptions) => Generator<void, CooccurrenceResult, void>;
/**
 * add() as steps (set in the static block; used by cooccurrence()): the same checks first, then
 * the counting, pausing about every PAIR_SLICE count increments of a chunk's close.
 */
let addStepsOf: (acc: CooccurrenceAccumulator, codes: CooccurrenceCodes) => Generator<void, void, void>;

/** Count increments of a chunk's close between two pauses of addStepsOf (a few milliseconds). */
const PAIR_SLICE = 1 << 20;

/**
 * Streams sparse codes and accumulates per-chunk co-occurrence counts (see the module comment for
 * the definitions, the storage and the cost of each call).
 *
 * If an add() fails after it started counting (its checks all run first, so only an exotic failure
 * such as a throwing typed-array proxy can), the counts are incomplete: the accumulator is then
 * marked broken and every later add() throws, and result() rejects, with ERR_SAEKIT_ARG saying why.
 * @example
 * const acc = new CooccurrenceAccumulator(sae.numLatents, { threshold: 1, dropPartial: true });
 * acc.add(await sae.encode(batch));
 * const { top } = await acc.result({ top: 50 });
 */
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
  /** C_ij for i < j, packed strict upper triangle (rowBase). */
  #counts: Uint32Array;
  /** Latents active in the current (open) chunk: #pending[0 .. #pendingCount), and a mark per latent. */
  #pending: Int32Array;
  #pendingCount = 0;
  #mark: Uint8Array;
  #tokensInChunk = 0;
  /** Why the accumulator can no longer be used, once an add() failed midway. */
  #broken: string | undefined;
  /** result() calls in progress: their scans read the counts between turns of the event loop. */
  #scans = 0;

  /** An addStepsOf() in progress (its counting is suspended between turns of the event loop). */
  #adding = false;

  static {
    scanOf = (acc, o) => acc.#scan(o);
    addStepsOf = (acc, codes) => acc.#addSteps(codes);
  }

  /**
   * Allocates the pair counts: 2 n(n - 1) bytes for n = numLatents (512 MiB at 16,384).
   * numLatents above COOCCURRENCE_MAX_LATENTS throws ERR_SAEKIT_MEMORY.
   */
  constructor(numLatents: number, options?: CooccurrenceOptions) {
    checkInt('numLatents', numLatents, 1, Number.MAX_SAFE_INTEGER);
    const opts = checkOptions('options', options, COOC_OPTIONS);
    this.numLatents = numLatents;
    this.chunkTokens = opts.chunkTokens === undefined ? 256 : checkInt('options.chunkTokens', opts.chunkTokens, 1, 2 ** 31);
    // Below 0 a latent missing from a row's codes (value 0) would count as active: sparse codes
    // cannot say that, so the answer would depend on k.
    if (opts.threshold !== undefined && (typeof opts.threshold !== 'number' || !Number.isFinite(opts.threshold) || opts.threshold < 0)) {
      throw argError('options.threshold', 'a finite number >= 0', opts.threshold);
    }
    this.threshold = opts.threshold ?? 0;
    this.dropPartial = opts.dropPartial === undefined ? false : checkBool('options.dropPartial', opts.dropPartial);
    const pairs = (numLatents * (numLatents - 1)) / 2;
    const bytes = `${(pairs * 4 / 2 ** 20).toFixed(0)} MiB`;
    if (numLatents > COOCCURRENCE_MAX_LATENTS) {
      throw new SaekitError(
        'ERR_SAEKIT_MEMORY',
        `CooccurrenceAccumulator: numLatents = ${numLatents} needs ${bytes} of pair counts (n(n - 1)/2 32-bit counts); ` +
          `the limit is numLatents <= ${COOCCURRENCE_MAX_LATENTS} (2 GiB)`,
      );
    }
    try {
      this.#counts = new Uint32Array(pairs);
    } catch (e) {
      if (!(e instanceof RangeError)) throw e;
      throw new SaekitError('ERR_SAEKIT_MEMORY', `CooccurrenceAccumulator: could not allocate ${bytes} of pair counts for numLatents = ${numLatents} (${e.message})`);
    }
    this.#active = new Float64Array(numLatents);
    this.#pending = new Int32Array(numLatents);
    this.#mark = new Uint8Array(numLatents);
  }

  /**
   * Adds a batch of tokens; chunks continue across calls. Every check runs before anything is
   * counted, so a refused batch leaves the accumulator as it was. Costs O(rows k) plus, for each
   * chunk it closes with a active latents, a(a - 1)/2 count increments (~1M, a few milliseconds,
   * at the reference scale); cooccurrence() feeds it chunk-sized slices to keep the event loop free.
   * Throws ERR_SAEKIT_ARG while a result() is in progress (await it first): its scan reads the counts.
   */
  add(codes: CooccurrenceCodes): void {
    const steps = this.#addSteps(codes);
    while (!steps.next().done);
  }

  /** add(), pausing (yield) about every PAIR_SLICE count increments of a chunk's close. */
  *#addSteps(codes: CooccurrenceCodes): Generator<void, void, void> {
    this.#checkUsable();
    if (this.#scans > 0) {
      throw new SaekitError('ERR_SAEKIT_ARG', 'Expected no add() while a result() of this CooccurrenceAccumulator is in progress but one is (await the running result() first)');
    }
    if (this.#adding) throw new Error('internal: CooccurrenceAccumulator.add() while a sliced add is in progress');
    const { rows, k, values, indices } = checkCodes(codes, this.numLatents, 'codes');
    const closes = Math.floor((this.#tokensInChunk + rows) / this.chunkTokens);
    if (this.#chunks + closes > MAX_CHUNKS) {
      throw new SaekitError('ERR_SAEKIT_MEMORY', `CooccurrenceAccumulator: more than ${MAX_CHUNKS} chunks (its counts are 32-bit); nothing of this batch was counted`);
    }
    this.#adding = true;
    try {
      yield* this.#count(rows, k, values, indices);
    } catch (e) {
      this.#broken = `an add() failed after counting part of its batch (${e instanceof Error ? e.message : String(e)})`;
      throw e;
    } finally {
      this.#adding = false;
    }
  }

  #checkUsable(): void {
    if (this.#broken !== undefined) {
      throw new SaekitError('ERR_SAEKIT_ARG', `This CooccurrenceAccumulator can no longer be used: ${this.#broken}, so its counts are incomplete; create a new one`);
    }
  }

  *#count(rows: number, k: number, values: Float32Array, indices: Int32Array): Generator<void, void, void> {
    const t = this.threshold;
    const mark = this.#mark;
    const pending = this.#pending;
    for (let r = 0; r < rows; r++) {
      const o = r * k;
      for (let q = 0; q < k; q++) {
        if (values[o + q] > t) {
          const idx = indices[o + q];
          if (mark[idx] === 0) {
            mark[idx] = 1;
            pending[this.#pendingCount++] = idx;
          }
        }
      }
      if (++this.#tokensInChunk === this.chunkTokens) yield* this.#closeChunk();
    }
  }

  /**
   * Counts the open chunk: C_ii for each active latent, C_ij for each pair of them. Cannot fail;
   * pauses about every PAIR_SLICE increments (the chunk stays open until the last one).
   */
  *#closeChunk(): Generator<void, void, void> {
    const a = this.#pendingCount;
    const list = this.#pending.subarray(0, a).sort();
    const n = this.numLatents;
    const c = this.#counts;
    const active = this.#active;
    const mark = this.#mark;
    let work = 0;
    for (let p = 0; p < a; p++) {
      const i = list[p];
      active[i] += 1;
      mark[i] = 0;
      const base = rowBase(i, n);
      for (let q = p + 1; q < a; q++) c[base + list[q]] += 1;
      work += a - p;
      if (work >= PAIR_SLICE) {
        work = 0;
        yield;
      }
    }
    this.#pendingCount = 0;
    this.#tokensInChunk = 0;
    this.#chunks += 1;
  }

  /**
   * Counts and phi so far. Does not close the open chunk: a later add() continues it. The open
   * partial chunk is included unless dropPartial (or it has no tokens). Visits every pair of
   * latents active so far (about 1 s at 16k latents) in slices of about 10 ms between which the
   * event loop runs; add() is refused until the Promise settles. Bad options (and a broken
   * accumulator) reject it.
   */
  async result(options?: CooccurrenceResultOptions): Promise<CooccurrenceResult> {
    this.#checkUsable();
    if (this.#adding) throw new Error('internal: CooccurrenceAccumulator.result() while a sliced add is in progress');
    const o = checkResultOptions(options, this.numLatents);
    this.#scans++;
    try {
      return await resultInSlices(this, o);
    } finally {
      this.#scans--;
    }
  }

  /** The result, yielding about every SCAN_SLICE pairs. No add() may run before it is done. */
  *#scan(o: ResultOptions): Generator<void, CooccurrenceResult, void> {
    this.#checkUsable();
    const n = this.numLatents;
    const withPending = this.#tokensInChunk > 0 && !this.dropPartial;
    const T = this.#chunks + (withPending ? 1 : 0);
    const active = Float64Array.from(this.#active);
    // mark[i] is 1 exactly for the latents of the open chunk (#pending).
    const mark = this.#mark;
    if (withPending) for (let p = 0; p < this.#pendingCount; p++) active[this.#pending[p]] += 1;
    const heap = new TopHeap(o.top);
    let phiMatrix: Float64Array | undefined;
    if (o.dense) {
      phiMatrix = new Float64Array(n * n);
      for (let i = 0; i < n; i++) phiMatrix[i * n + i] = phi(T, active[i], active[i], active[i]);
    }
    if (o.top > 0 || phiMatrix) {
      const state: ScanState = {
        counts: this.#counts,
        n,
        T,
        active,
        variance: active.map((x) => x * (T - x)),
        mark: withPending ? mark : undefined,
        heap,
        cut: -1,
        phiMatrix,
      };
      let work = 0;
      for (let i = 0; i < n; i++) {
        // A latent never active co-occurs with none (and its phi is 0).
        if (active[i] === 0) continue;
        scanRow(state, i);
        work += n - i;
        if (work >= SCAN_SLICE) {
          work = 0;
          yield;
        }
      }
    }
    const out: CooccurrenceResult = { chunks: T, active, top: yield* heap.drain() };
    if (phiMatrix) out.phi = phiMatrix;
    return out;
  }
}

/** What result()'s scan of the pair counts reads and updates, row by row. */
interface ScanState {
  counts: Uint32Array;
  n: number;
  T: number;
  /** C_ii, the open chunk included when it counts. */
  active: Float64Array;
  /** C_ii (T - C_ii): phi's denominator is sqrt(variance_i variance_j). */
  variance: Float64Array;
  /** 1 for the latents of the open chunk, when it counts (each of its pairs adds 1). */
  mark: Uint8Array | undefined;
  heap: TopHeap;
  /**
   * Once the heap is full with a worst phi w > 0, a pair can only enter with phi >= w, so with
   * num = T C_ij - C_ii C_jj > 0 and num^2 >= w^2 variance_i variance_j: that is tested first,
   * without a square root, against cut = w^2 (1 - 1e-9), a slack far above rounding (the exact
   * phi then decides). -1 while any pair may enter (the heap is not full, or w <= 0).
   */
  cut: number;
  phiMatrix: Float64Array | undefined;
}

/** Offers the pairs (i, j), j > i, to the heap (and fills the phi matrix row, if any). */
function scanRow(s: ScanState, i: number): void {
  const { counts: c, n, T, active, variance, mark, heap, phiMatrix } = s;
  // T read from a Float64Array is a float64 for V8: T * count is then a float multiply, not an
  // int32 one with an overflow check (which made the hot loop 2-3x slower).
  const Tf = Float64Array.of(T)[0];
  const base = rowBase(i, n);
  const ai = active[i];
  const vi = variance[i];
  const mi = mark === undefined ? 0 : mark[i];
  if (phiMatrix) {
    for (let j = i + 1; j < n; j++) {
      const count = mi === 0 ? c[base + j] : c[base + j] + mark![j];
      const v = phi(T, count, ai, active[j]);
      phiMatrix[i * n + j] = v;
      phiMatrix[j * n + i] = v;
      if (count > 0) heap.offer(i, j, count, v);
    }
    return;
  }
  let cut = s.cut;
  for (let j = i + 1; j < n; j++) {
    // The hot loop: one sequential read per pair; the open chunk's mark only when it counts.
    const count = mi === 0 ? c[base + j] : c[base + j] + mark![j];
    if (cut > 0) {
      // num |num| < cut var_i var_j covers num <= 0 (count = 0 included) in the same single,
      // rarely taken branch: a test per condition mispredicts on about half the pairs (4x slower).
      const num = Tf * count - ai * active[j];
      if (num * Math.abs(num) < cut * vi * variance[j]) continue;
    } else if (count === 0) continue;
    if (heap.offer(i, j, count, phi(T, count, ai, active[j]))) {
      const w = heap.worstPhi();
      cut = w > 0 ? w * w * (1 - 1e-9) : -1;
    }
  }
  s.cut = cut;
}

/** true if pair (phi, count, i, j) ranks before y: phi desc, count desc, i asc, j asc. */
function ranksBefore(phiX: number, countX: number, iX: number, jX: number, y: CooccurrencePair): boolean {
  if (phiX !== y.phi) return phiX > y.phi;
  if (countX !== y.count) return countX > y.count;
  if (iX !== y.i) return iX < y.i;
  return jX < y.j;
}

function before(x: CooccurrencePair, y: CooccurrencePair): boolean {
  return ranksBefore(x.phi, x.count, x.i, x.j, y);
}

/** Keeps the best `cap` pairs; the root is the worst kept. */
class TopHeap {
  readonly #cap: number;
  readonly #h: CooccurrencePair[] = [];
  constructor(cap: number) {
    this.#cap = cap;
  }
  /** The worst phi kept once `cap` pairs are kept, else -Infinity (any pair enters). */
  worstPhi(): number {
    return this.#h.length === this.#cap && this.#cap > 0 ? this.#h[0].phi : -Infinity;
  }
  /** Keeps the pair if it ranks among the best `cap` so far (allocating only then); true if kept. */
  offer(i: number, j: number, count: number, phi: number): boolean {
    const h = this.#h;
    if (h.length < this.#cap) {
      h.push({ i, j, count, phi });
      let c = h.length - 1;
      while (c > 0) {
        const par = (c - 1) >> 1;
        if (!before(h[par], h[c])) break;
        [h[par], h[c]] = [h[c], h[par]];
        c = par;
      }
      return true;
    }
    if (h.length > 0 && ranksBefore(phi, count, i, j, h[0])) {
      h[0] = { i, j, count, phi };
      this.#siftDown();
      return true;
    }
    return false;
  }
  /** Restores the heap order after the root was replaced. */
  #siftDown(): void {
    const h = this.#h;
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
  /**
   * The kept pairs, best first, emptying the heap: the worst is taken out first (pairs are
   * distinct, so the order is total and the same as a sort's). Yields every DRAIN_SLICE pairs: a
   * top list of millions is not sorted in one piece.
   */
  *drain(): Generator<void, CooccurrencePair[], void> {
    const h = this.#h;
    const out: CooccurrencePair[] = [];
    while (h.length > 0) {
      out.push(h[0]);
      const last = h.pop()!;
      if (h.length > 0) {
        h[0] = last;
        this.#siftDown();
      }
      if (out.length % DRAIN_SLICE === 0) yield;
    }
    return out.reverse();
  }
}

/** What cooccurrence() reads: sparse codes already computed, or an SAE and a source to encode. */
export type CooccurrenceInput =
  | { numLatents: number; codes: CooccurrenceCodes | CooccurrenceCodes[] }
  | { sae: SparseAutoencoder; source: ActivationSource; maxTokens?: number; batchSize?: number };

/** Milliseconds of work between two yields to the event loop in cooccurrence(). */
const YIELD_MS = 10;

/** Entries cooccurrence() checks between two looks at the clock. */
const CHECK_SLICE = 1 << 16;

/** Yields to the event loop once YIELD_MS have passed since clock.last (then the clock restarts). */
async function yieldIfDue(clock: { last: number }): Promise<void> {
  if (performance.now() - clock.last > YIELD_MS) {
    await yieldToEventLoop();
    clock.last = performance.now();
  }
}

/**
 * acc.add(codes) in slices of about one chunk, yielding to the event loop every YIELD_MS and
 * calling `kept()` (the caller's arrays still hold their values) before each slice and after each
 * pause. Codes that are not well-formed go to add() whole, which names the problem.
 */
async function addInSlices(acc: CooccurrenceAccumulator, codes: CooccurrenceCodes, clock: { last: number }, kept: () => void = () => undefined): Promise<void> {
  const step = Math.max(acc.chunkTokens, 64);
  const wellFormed =
    codes !== null &&
    typeof codes === 'object' &&
    codes.values instanceof Float32Array &&
    codes.indices instanceof Int32Array &&
    Number.isInteger(codes.rows) &&
    Number.isInteger(codes.k) &&
    codes.values.length === codes.rows * codes.k &&
    codes.indices.length === codes.rows * codes.k;
  if (!wellFormed || codes.rows <= step) {
    kept();
    await addSliced(acc, codes, clock, kept);
    return;
  }
  const { rows, k, values, indices } = codes;
  for (let r = 0; r < rows; r += step) {
    const to = Math.min(rows, r + step);
    kept();
    await addSliced(acc, { rows: to - r, k, values: values.subarray(r * k, to * k), indices: indices.subarray(r * k, to * k) }, clock, kept);
  }
}

/**
 * acc.add(codes), yielding to the event loop inside a long chunk close whenever YIELD_MS have
 * passed, and calling `kept()` after each yield.
 */
async function addSliced(acc: CooccurrenceAccumulator, codes: CooccurrenceCodes, clock: { last: number }, kept: () => void): Promise<void> {
  const steps = addStepsOf(acc, codes);
  while (!steps.next().done) {
    await yieldIfDue(clock);
    kept();
  }
  await yieldIfDue(clock);
}

/** acc's result, computed in slices that yield to the event loop (the caller keeps add() away). */
async function resultInSlices(acc: CooccurrenceAccumulator, o: ResultOptions): Promise<CooccurrenceResult> {
  const scan = scanOf(acc, o);
  let last = performance.now();
  for (;;) {
    const step = scan.next();
    if (step.done) return step.value;
    if (performance.now() - last > YIELD_MS) {
      await yieldToEventLoop();
      last = performance.now();
    }
  }
}

/**
 * Latent co-occurrence per chunk of consecutive tokens (default 256), with the phi coefficient of
 * the top pairs (or the dense matrix when numLatents <= 4096). Tokens are taken in source order;
 * chunks continue across batches. `input` is `{ numLatents, codes }` (one batch of codes or an
 * array of them) or `{ sae, source, maxTokens?, batchSize? }` (maxTokens: integer >= 1 or Infinity,
 * default the whole source; batchSize: rows per encode, default 4096, fewer for rows wider than
 * 65536 values). Every argument is checked
 * before any work; a misspelt key is an error. The checks of the codes, counting and the final
 * scan run in slices of about 10 ms between which the event loop runs, a long chunk close included
 * (the first chunk's close starts a slice of its own; see the module comment for the costs). The
 * codes' arrays are read until the Promise settles: one detached or resized before then makes the
 * call reject with ERR_SAEKIT_ARG naming it.
 * @example const { top } = await cooccurrence({ sae, source, maxTokens: 1e6 }, { chunkTokens: 256, top: 50 });
 */
export async function cooccurrence(input: CooccurrenceInput, options?: CooccurrenceOptions & CooccurrenceResultOptions): Promise<CooccurrenceResult> {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    throw argError('input', 'an object { numLatents, codes } or { sae, source, maxTokens?, batchSize? }', input);
  }
  const opts = checkOptions('options', options, [...COOC_OPTIONS, ...COOC_RESULT_OPTIONS]);
  const { top, dense, ...accOptions } = opts;
  const clock = { last: performance.now() };
  if ('codes' in input || 'numLatents' in input) {
    const inp = checkOptions('input', input as { numLatents: number; codes: CooccurrenceCodes | CooccurrenceCodes[] }, CODES_INPUT_KEYS);
    const numLatents = checkInt('input.numLatents', inp.numLatents, 1, Number.MAX_SAFE_INTEGER);
    const list = (Array.isArray(inp.codes) ? inp.codes : [inp.codes]) as CooccurrenceCodes[];
    // The batches' arrays and lengths once checked: after each pause, each must still hold them.
    const checked: [string, Float32Array | Int32Array, number][] = [];
    const kept = (): void => {
      for (const [name, a, length] of checked) checkKept(name, a, length);
    };
    // Every batch is checked whole before any is counted: errors name the batch and the index
    // in it (add() sees chunk-sized slices). The checks run in slices too.
    for (let q = 0; q < list.length; q++) {
      const name = Array.isArray(inp.codes) ? `input.codes[${q}]` : 'input.codes';
      const { values, indices } = checkCodesShape(list[q]!, numLatents, name);
      checked.push([`${name}.values`, values, values.length], [`${name}.indices`, indices, indices.length]);
      for (let i0 = 0; i0 < indices.length; i0 += CHECK_SLICE) {
        checkEntries(values, indices, i0, Math.min(indices.length, i0 + CHECK_SLICE), numLatents, name);
        await yieldIfDue(clock);
        kept();
      }
    }
    const ro = checkResultOptions({ top, dense }, numLatents);
    const acc = new CooccurrenceAccumulator(numLatents, accOptions);
    // The first chunk's close (its first touches of the counts' pages) starts a slice of its own.
    await yieldToEventLoop();
    clock.last = performance.now();
    for (const c of list) await addInSlices(acc, c, clock, kept);
    return resultInSlices(acc, ro);
  }
  const inp = checkOptions('input', input, SAE_INPUT_KEYS);
  const { sae, source } = inp;
  if (sae === null || typeof sae !== 'object' || typeof (sae as { encode?: unknown }).encode !== 'function') {
    throw argError('input.sae', 'a SparseAutoencoder (or use { numLatents, codes })', sae);
  }
  if (source === null || typeof source !== 'object' || typeof (source as { batches?: unknown }).batches !== 'function') {
    throw argError('input.source', 'an ActivationSource', source);
  }
  const maxTokens =
    inp.maxTokens === undefined || inp.maxTokens === Infinity ? Infinity : checkInt('input.maxTokens', inp.maxTokens, 1, Number.MAX_SAFE_INTEGER);
  if (source.dIn !== sae.dIn) {
    throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected input.source of dIn = ${sae.dIn} (the SAE's) but received dIn = ${String(source.dIn)}`);
  }
  const batchSize = batchRows('input.batchSize', inp.batchSize, sae.dIn, 1 << 24);
  const ro = checkResultOptions({ top, dense }, sae.numLatents);
  const accumulator = new CooccurrenceAccumulator(sae.numLatents, accOptions);
  let tokens = 0;
  // Recycled batch arrays: each batch is encoded (awaited) and counted before the next is asked for.
  for await (const b of source.batches({ batchSize, shuffle: false, recycle: true })) {
    if (tokens >= maxTokens) break;
    if (b.dIn !== sae.dIn) throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected batches of dIn = ${sae.dIn} from input.source but it yielded dIn = ${b.dIn}`);
    if (b.rows === 0) continue; // a custom source may yield an empty batch
    const rows = Math.min(b.rows, maxTokens - tokens);
    const first = tokens;
    const codes = await atTokens(sae.encode(rows === b.rows ? b.data : b.data.subarray(0, rows * b.dIn)), (r) => first + r, 'input.source');
    await addInSlices(accumulator, codes, clock);
    tokens += rows;
    if (tokens >= maxTokens) break;
  }
  return resultInSlices(accumulator, ro);
}
