/**
 * Streaming Pearson correlation between the features of two SAEs (or any two aligned activation
 * streams) over tokens (methods.md §1.2-§1.3, §9):
 *
 * - kind 'codes': the SAEs' sparse codes. Cross-moments accumulate over co-active pairs only,
 *   O(tokens kA kB), in float64 raw sums (codes are non-negative and mostly zero, so the
 *   cancellation a raw-sum formula suffers for large means does not arise).
 * - kind 'preacts' / 'dense': dense features (pre-activations, or raw activations such as
 *   neurons). Each batch's centred co-moment (x - mean_b)^T (y - mean_b) is one float32 GEMM;
 *   batches merge with Chan's formula in float64, so a column with mean 50 and std 0.01 over a
 *   million rows still gives r to 1e-4.
 *
 * A feature constant over the sample gets r = 0 and is flagged in the masks.
 * (The native sparse kernel, top-matches in column blocks for matrices over `maxBytes`, and the
 * CLI come with the rest of the feature-comparison work.)
 */
import type { ActivationSource } from '../data/types.js';
import { argError, SaekitError } from '../errors.js';
import type { SparseAutoencoder, SparseCodes } from '../sae/index.js';
import { tensor } from '../tensor/index.js';
import { matmul } from '../tensor/ops.js';
import { checkInt, checkOneOf, checkOptions } from '../validate.js';

export interface CorrelationOptions {
  /** 'codes' (default), 'preacts' (pre-activations before the activation) or 'dense' (the rows themselves). */
  kind?: 'codes' | 'preacts' | 'dense';
  /** Tokens to use. Default: all. */
  maxTokens?: number;
  /** Rows per batch. Default 4096. */
  batchSize?: number;
  /** Per token (global index): false excludes it from both sides (padding, BOS). */
  mask?: (token: number) => boolean;
  /** Largest correlation matrix returned (float32 bytes). Default 1 GiB. */
  maxBytes?: number;
}

export interface CorrelationSide {
  /** The SAE whose features are correlated; omit for kind 'dense'. */
  sae?: SparseAutoencoder;
  /** The rows; the two sides' rows must be aligned token by token. Omit b.source to share a's. */
  source?: ActivationSource;
}

export interface CorrelationResult {
  /** [nA, nB] row-major Pearson r. */
  r: Float32Array;
  nA: number;
  nB: number;
  tokens: number;
  /** 1 where the feature was constant over the sample (its r is 0). */
  constantA: Uint8Array;
  constantB: Uint8Array;
  /** Tokens on which each feature was nonzero (codes) / counted (dense). */
  activeA: Float64Array;
  activeB: Float64Array;
}

function width(side: CorrelationSide, kind: string, dIn: number): number {
  if (kind === 'dense') return dIn;
  if (!side.sae) throw argError('sae', `a SparseAutoencoder for kind '${kind}'`, side.sae);
  return side.sae.numLatents;
}

async function* aligned(a: ActivationSource, b: ActivationSource | undefined, batchSize: number) {
  const ia = a.batches({ batchSize, shuffle: false })[Symbol.asyncIterator]();
  const ib = b ? b.batches({ batchSize, shuffle: false })[Symbol.asyncIterator]() : undefined;
  try {
    for (;;) {
      const [ra, rb] = await Promise.all([ia.next(), ib?.next()]);
      if (ra.done || (rb && rb.done)) {
        if (rb && ra.done !== rb.done) throw new SaekitError('ERR_SAEKIT_SHAPE', 'Expected the two sources to have the same number of rows (aligned token by token)');
        return;
      }
      if (rb && rb.value.rows !== ra.value.rows) throw new SaekitError('ERR_SAEKIT_SHAPE', 'Expected the two sources to have the same number of rows (aligned token by token)');
      yield [ra.value, rb ? rb.value : ra.value] as const;
    }
  } finally {
    await ia.return?.();
    await ib?.return?.();
  }
}

/** Keeps the rows the mask admits; returns the kept row indices (or all). */
function keptRows(rows: number, start: number, mask: CorrelationOptions['mask']): number[] | undefined {
  if (!mask) return undefined;
  const keep: number[] = [];
  for (let r = 0; r < rows; r++) if (mask(start + r)) keep.push(r);
  return keep.length === rows ? undefined : keep;
}

function selectRows(x: Float32Array, d: number, keep: number[]): Float32Array {
  const out = new Float32Array(keep.length * d);
  keep.forEach((r, i) => out.set(x.subarray(r * d, (r + 1) * d), i * d));
  return out;
}

/** Pearson correlation between the features of two sides over aligned tokens (see the module comment). */
export async function correlation(a: CorrelationSide, b: CorrelationSide, options?: CorrelationOptions): Promise<CorrelationResult> {
  const o = checkOptions('options', options);
  const kind = o.kind === undefined ? 'codes' : checkOneOf('options.kind', o.kind, ['codes', 'preacts', 'dense'] as const);
  const batchSize = o.batchSize === undefined ? 4096 : checkInt('options.batchSize', o.batchSize, 1, 1 << 24);
  const maxTokens = o.maxTokens === undefined ? Number.MAX_SAFE_INTEGER : checkInt('options.maxTokens', o.maxTokens, 1, Number.MAX_SAFE_INTEGER);
  const maxBytes = o.maxBytes === undefined ? 2 ** 30 : checkInt('options.maxBytes', o.maxBytes, 1, Number.MAX_SAFE_INTEGER);
  if (!a?.source) throw argError('a.source', 'an ActivationSource', a?.source);
  const srcB = b?.source && b.source !== a.source ? b.source : undefined;
  const dA = a.source.dIn;
  const dB = (srcB ?? a.source).dIn;
  const nA = width(a, kind, dA);
  const nB = width(b ?? {}, kind, dB);
  for (const [side, s, d] of [['a', a, dA], ['b', b, dB]] as const) {
    if (s?.sae && s.sae.dIn !== d) throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected ${side}.sae.dIn = ${d} (its source's) but it is ${s.sae.dIn}`);
  }
  if (nA * nB * 4 > maxBytes) {
    throw new SaekitError('ERR_SAEKIT_MEMORY', `the ${nA} x ${nB} correlation matrix needs ${nA * nB * 4} bytes, over options.maxBytes = ${maxBytes}`);
  }
  const sx = new Float64Array(nA);
  const sy = new Float64Array(nB);
  const activeA = new Float64Array(nA);
  const activeB = new Float64Array(nB);
  // codes: raw sums; dense: Chan-merged means and centred moments.
  const sxx = new Float64Array(nA);
  const syy = new Float64Array(nB);
  const sxy = new Float64Array(nA * nB);
  let n = 0;
  let seen = 0;
  for await (const [ba, bb] of aligned(a.source, srcB, batchSize)) {
    if (seen >= maxTokens) break;
    let rows = Math.min(ba.rows, maxTokens - seen);
    let xa = rows === ba.rows ? ba.data : ba.data.subarray(0, rows * dA);
    let xb = rows === bb.rows ? bb.data : bb.data.subarray(0, rows * dB);
    const keep = keptRows(rows, seen, o.mask);
    seen += rows;
    if (keep) {
      xa = selectRows(xa, dA, keep);
      xb = selectRows(xb, dB, keep);
      rows = keep.length;
    }
    if (rows === 0) continue;
    if (kind === 'codes') {
      const [ca, cb] = await Promise.all([a.sae!.encode(xa), b!.sae!.encode(xb)]);
      accumulateCodes(ca, cb, nB, sx, sy, sxx, syy, sxy, activeA, activeB);
      n += rows;
      continue;
    }
    const fa = kind === 'dense' ? xa : await a.sae!.preActivations(xa);
    const fb = kind === 'dense' ? xb : await b!.sae!.preActivations(xb);
    await mergeDense(fa, fb, rows, nA, nB, n, sx, sy, sxx, syy, sxy, activeA, activeB);
    n += rows;
  }
  if (n < 2) throw new SaekitError('ERR_SAEKIT_ARG', `Expected at least 2 tokens for a correlation but received ${n}`);
  const r = new Float32Array(nA * nB);
  const constantA = new Uint8Array(nA);
  const constantB = new Uint8Array(nB);
  const sdA = new Float64Array(nA);
  const sdB = new Float64Array(nB);
  const meanA = new Float64Array(nA);
  const meanB = new Float64Array(nB);
  for (let i = 0; i < nA; i++) {
    meanA[i] = kind === 'codes' ? sx[i]! / n : sx[i]!;
    const v = kind === 'codes' ? sxx[i]! - n * meanA[i]! ** 2 : sxx[i]!;
    sdA[i] = v > 0 ? Math.sqrt(v) : 0;
    constantA[i] = sdA[i]! > 0 ? 0 : 1;
  }
  for (let j = 0; j < nB; j++) {
    meanB[j] = kind === 'codes' ? sy[j]! / n : sy[j]!;
    const v = kind === 'codes' ? syy[j]! - n * meanB[j]! ** 2 : syy[j]!;
    sdB[j] = v > 0 ? Math.sqrt(v) : 0;
    constantB[j] = sdB[j]! > 0 ? 0 : 1;
  }
  for (let i = 0; i < nA; i++) {
    if (constantA[i]) continue;
    for (let j = 0; j < nB; j++) {
      if (constantB[j]) continue;
      const cov = kind === 'codes' ? sxy[i * nB + j]! - n * meanA[i]! * meanB[j]! : sxy[i * nB + j]!;
      r[i * nB + j] = Math.max(-1, Math.min(1, cov / (sdA[i]! * sdB[j]!)));
    }
  }
  return { r, nA, nB, tokens: n, constantA, constantB, activeA, activeB };
}

function accumulateCodes(
  ca: SparseCodes,
  cb: SparseCodes,
  nB: number,
  sx: Float64Array,
  sy: Float64Array,
  sxx: Float64Array,
  syy: Float64Array,
  sxy: Float64Array,
  activeA: Float64Array,
  activeB: Float64Array,
): void {
  for (let t = 0; t < ca.rows; t++) {
    for (let p = t * cb.k; p < (t + 1) * cb.k; p++) {
      const v = cb.values[p]!;
      if (v === 0) continue;
      const j = cb.indices[p]!;
      sy[j]! += v;
      syy[j]! += v * v;
      activeB[j]! += 1;
    }
    for (let q = t * ca.k; q < (t + 1) * ca.k; q++) {
      const u = ca.values[q]!;
      if (u === 0) continue;
      const i = ca.indices[q]!;
      sx[i]! += u;
      sxx[i]! += u * u;
      activeA[i]! += 1;
      const row = i * nB;
      for (let p = t * cb.k; p < (t + 1) * cb.k; p++) {
        const v = cb.values[p]!;
        if (v !== 0) sxy[row + cb.indices[p]!]! += u * v;
      }
    }
  }
}

/** Chan's merge of one batch into running means (sx, sy), centred moments (sxx, syy, sxy). */
async function mergeDense(
  fa: Float32Array,
  fb: Float32Array,
  rows: number,
  nA: number,
  nB: number,
  n0: number,
  mx: Float64Array,
  my: Float64Array,
  mxx: Float64Array,
  myy: Float64Array,
  mxy: Float64Array,
  activeA: Float64Array,
  activeB: Float64Array,
): Promise<void> {
  const bmx = new Float64Array(nA);
  const bmy = new Float64Array(nB);
  for (let t = 0; t < rows; t++) {
    for (let i = 0; i < nA; i++) bmx[i]! += fa[t * nA + i]!;
    for (let j = 0; j < nB; j++) bmy[j]! += fb[t * nB + j]!;
  }
  for (let i = 0; i < nA; i++) bmx[i]! /= rows;
  for (let j = 0; j < nB; j++) bmy[j]! /= rows;
  const ca = new Float32Array(rows * nA);
  const cb = new Float32Array(rows * nB);
  for (let t = 0; t < rows; t++) {
    for (let i = 0; i < nA; i++) {
      const v = fa[t * nA + i]! - bmx[i]!;
      ca[t * nA + i] = v;
      if (fa[t * nA + i] !== 0) activeA[i]! += 1;
    }
    for (let j = 0; j < nB; j++) {
      cb[t * nB + j] = fb[t * nB + j]! - bmy[j]!;
      if (fb[t * nB + j] !== 0) activeB[j]! += 1;
    }
  }
  // The batch's centred co-moment: one float32 GEMM.
  using ta = tensor(ca, [rows, nA]);
  using tb = tensor(cb, [rows, nB]);
  using cxy = await matmul(ta, tb, { transA: true });
  const bxy = await cxy.toArray();
  const bxx = new Float64Array(nA);
  const byy = new Float64Array(nB);
  for (let t = 0; t < rows; t++) {
    for (let i = 0; i < nA; i++) bxx[i]! += ca[t * nA + i]! ** 2;
    for (let j = 0; j < nB; j++) byy[j]! += cb[t * nB + j]! ** 2;
  }
  const n1 = n0 + rows;
  const w = (n0 * rows) / n1;
  for (let i = 0; i < nA; i++) {
    const dx = bmx[i]! - mx[i]!;
    for (let j = 0; j < nB; j++) mxy[i * nB + j]! += bxy[i * nB + j]! + w * dx * (bmy[j]! - my[j]!);
  }
  for (let i = 0; i < nA; i++) {
    const dx = bmx[i]! - mx[i]!;
    mxx[i]! += bxx[i]! + w * dx * dx;
    mx[i]! += (dx * rows) / n1;
  }
  for (let j = 0; j < nB; j++) {
    const dy = bmy[j]! - my[j]!;
    myy[j]! += byy[j]! + w * dy * dy;
    my[j]! += (dy * rows) / n1;
  }
}
