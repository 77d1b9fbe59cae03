/**
 * Naive float64 references for lib/eval/evaluate.ts and lib/eval/geometry.ts: every metric straight
 * from its definition over the whole sample (two-pass global mean, no streaming), and an O(n^2)
 * max-cosine.
 */
import type { SparseCodes } from '../../lib/index.js';

export interface RefMetrics {
  tokens: number;
  mse: number;
  fvu: number;
  explained_variance: number;
  cossim: number;
  l2_ratio: number;
  relative_reconstruction_bias: number;
  l0: number;
  l1: number;
  feature_density: Float64Array;
  dead_fraction: number;
  dense_fraction_1pct: number;
  dense_fraction_10pct: number;
  explained_variance_legacy: number;
  explained_variance_saebench: number;
  fvu_sparsify: number;
  frac_variance_explained_dictionary_learning: number;
  l2_loss_dictionary_learning: number;
}

/**
 * Metrics of x [N, dIn] against recon [N, dIn] and codes, where `batchRows` lists the rows of each
 * consecutive batch (only the legacy variant uses it).
 */
export function refMetrics(
  x: Float32Array,
  recon: Float32Array,
  codes: SparseCodes,
  N: number,
  dIn: number,
  L: number,
  batchRows: number[],
): RefMetrics {
  const mean = new Float64Array(dIn);
  for (let t = 0; t < N; t++) for (let d = 0; d < dIn; d++) mean[d]! += x[t * dIn + d]!;
  for (let d = 0; d < dIn; d++) mean[d]! /= N;
  let sse = 0;
  let sst = 0;
  let cos = 0;
  let ratio = 0;
  let h2 = 0;
  let dot = 0;
  let x2 = 0;
  for (let t = 0; t < N; t++) {
    let e2 = 0;
    let a2 = 0;
    let b2 = 0;
    let ab = 0;
    for (let d = 0; d < dIn; d++) {
      const a = x[t * dIn + d]!;
      const b = recon[t * dIn + d]!;
      e2 += (a - b) ** 2;
      sst += (a - mean[d]!) ** 2;
      a2 += a * a;
      b2 += b * b;
      ab += a * b;
    }
    sse += e2;
    cos += a2 > 0 && b2 > 0 ? ab / (Math.sqrt(a2) * Math.sqrt(b2)) : 0;
    ratio += Math.sqrt(b2) / (Math.sqrt(a2) < 1e-4 ? 1 : Math.sqrt(a2)); // SAELens: tiny norms divide by 1
    h2 += b2;
    dot += ab;
    x2 += a2;
  }
  // Legacy: per-batch means. sparsify's FVU and dictionary_learning's FVE: per-batch ratios,
  // averaged over batches; the variances as torch.var (n - 1), as upstream computes them.
  let legacy = 0;
  let fvuSparsify = 0;
  let fveDictionary = 0;
  let l2 = 0;
  let start = 0;
  const variance = (v: Float64Array) => {
    let m = 0;
    for (const a of v) m += a / v.length;
    let s = 0;
    for (const a of v) s += (a - m) ** 2;
    return s / (v.length - 1);
  };
  for (const rows of batchRows) {
    let num = 0;
    let den = 0;
    let varE = 0;
    let varX = 0;
    for (let d = 0; d < dIn; d++) {
      const xd = new Float64Array(rows);
      const ed = new Float64Array(rows);
      for (let t = 0; t < rows; t++) {
        xd[t] = x[(start + t) * dIn + d]!;
        ed[t] = x[(start + t) * dIn + d]! - recon[(start + t) * dIn + d]!;
        num += ed[t]! ** 2;
      }
      varE += variance(ed);
      varX += variance(xd);
      den += variance(xd) * (rows - 1);
    }
    fvuSparsify += num / den;
    fveDictionary += 1 - varE / varX;
    const m = new Float64Array(dIn);
    for (let t = start; t < start + rows; t++) for (let d = 0; d < dIn; d++) m[d]! += x[t * dIn + d]! / rows;
    for (let t = start; t < start + rows; t++) {
      let e2 = 0;
      let c2 = 0;
      for (let d = 0; d < dIn; d++) {
        e2 += (x[t * dIn + d]! - recon[t * dIn + d]!) ** 2;
        c2 += (x[t * dIn + d]! - m[d]!) ** 2;
      }
      legacy += 1 - e2 / c2;
      l2 += Math.sqrt(e2);
    }
    start += rows;
  }
  let meanSq = 0;
  for (let i = 0; i < N * dIn; i++) meanSq += x[i]! ** 2;
  meanSq /= N * dIn;
  const fired = new Float64Array(L);
  let l0 = 0;
  let l1 = 0;
  for (let t = 0; t < N; t++) {
    for (let j = 0; j < codes.k; j++) {
      const v = codes.values[t * codes.k + j]!;
      if (v !== 0) {
        l0++;
        l1 += Math.abs(v);
        fired[codes.indices[t * codes.k + j]!]!++;
      }
    }
  }
  const density = fired.map((c) => c / N);
  const frac = (f: (p: number) => boolean) => density.filter(f).length / L;
  return {
    tokens: N,
    mse: sse / N,
    fvu: sse / sst,
    explained_variance: 1 - sse / sst,
    cossim: cos / N,
    l2_ratio: ratio / N,
    relative_reconstruction_bias: h2 / dot,
    l0: l0 / N,
    l1: l1 / N,
    feature_density: density,
    dead_fraction: frac((p) => p === 0),
    dense_fraction_1pct: frac((p) => p > 0.01),
    dense_fraction_10pct: frac((p) => p > 0.1),
    explained_variance_legacy: legacy / N,
    explained_variance_saebench: 1 - sse / N / (x2 / N - meanSq * meanSq),
    fvu_sparsify: fvuSparsify / batchRows.length,
    frac_variance_explained_dictionary_learning: fveDictionary / batchRows.length,
    l2_loss_dictionary_learning: l2 / N,
  };
}

/** Per row, the max float64 cosine to any other row (zero rows: 0; n = 1: NaN). */
export function refMaxCosine(rows: Float32Array, n: number, d: number): Float64Array {
  const norms = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let j = 0; j < d; j++) s += rows[i * d + j]! ** 2;
    norms[i] = Math.sqrt(s);
  }
  const out = new Float64Array(n).fill(n === 1 ? NaN : -Infinity);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < n; k++) {
      if (k === i) continue;
      let c = 0;
      if (norms[i]! > 0 && norms[k]! > 0) {
        let s = 0;
        for (let j = 0; j < d; j++) s += rows[i * d + j]! * rows[k * d + j]!;
        c = s / (norms[i]! * norms[k]!);
      }
      if (c > out[i]!) out[i] = c;
    }
  }
  return out;
}

/** Bound on |float32 GEMM cosine of float32-rounded unit rows - exact cosine|: gamma_{d+2} plus rounding of the inputs. */
export function cosineTolerance(d: number): number {
  const u = 2 ** -24;
  const g = ((d + 4) * u) / (1 - (d + 4) * u);
  return g;
}

/**
 * Best total (min, or max with `maximize`) over all one-to-one matchings that assign every row of
 * the smaller side of cost [rows, cols], by enumerating them (small sizes only).
 */
export function bruteForceAssignment(cost: Float64Array, rows: number, cols: number, maximize: boolean): number {
  const sign = maximize ? -1 : 1;
  const n = Math.min(rows, cols);
  const m = Math.max(rows, cols);
  const at = (i: number, j: number) => sign * (rows <= cols ? cost[i * cols + j]! : cost[j * cols + i]!);
  let best = Infinity;
  const used = new Uint8Array(m);
  const rec = (i: number, acc: number): void => {
    if (i === n) {
      best = Math.min(best, acc);
      return;
    }
    for (let j = 0; j < m; j++) {
      if (used[j]) continue;
      used[j] = 1;
      rec(i + 1, acc + at(i, j));
      used[j] = 0;
    }
  };
  rec(0, 0);
  return sign * best;
}
