/**
 * A naive float64 reference for the TopK sparse autoencoder (SAELens orientation), together with
 * bounds on the rounding error a correct float32 implementation may show against it.
 *
 * Model, per row x of length dIn:
 *   pre   = (x - b_dec) W_enc + b_enc                      W_enc [dIn, L], b_enc [L]
 *   act   = ReLU(pre); keep the k largest (ties: lower latent index first)
 *   x_hat = b_dec + sum_j act_j W_dec[j]                   W_dec [L, dIn], b_dec [dIn]
 *   fvu   = sum ||x - x_hat||^2 / SST,  SST = sum ||x - mean_batch(x)||^2
 *   auxk  = scale * sum ||e_hat - e||^2 / SST              (sparsify's AuxK, e = x - x_hat detached)
 *     or    sum ||e_hat' - e||^2 / sum ||e - mean_batch(e)||^2   (variant 'paper': e_hat' = e_hat - b_dec)
 *   loss  = fvu + alpha * auxk
 *
 * Error bounds. For a fixed TopK/ReLU selection, every quantity here (pre-activations,
 * reconstructions, residuals, gradients) is a polynomial in the inputs built from + and x, times
 * 1/SST. Evaluated in float32 in any order, such a program returns the exact value of the same
 * program in which every expanded product term carries a relative perturbation of at most
 * gamma_D = D u / (1 - D u), u = 2^-24, D the number of roundings on the term's longest path
 * (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., sections 3.1-3.5). Hence
 *   |fl(y) - y| <= gamma_D * |y|_abs,
 * where |y|_abs is the same program run on |inputs| with every subtraction turned into an addition.
 * The reference computes |y|_abs by running itself in `abs` mode under the real selection.
 * The common factor 1/SST is a computed sum of N = rows*dIn squares; its relative error
 * (at most gamma_{N+rows+O(1)}) scales a whole gradient, so it is bounded separately on |y|.
 */

export const U = 2 ** -24;

export function gamma(n: number): number {
  const nu = n * U;
  return nu / (1 - nu);
}

export const WEIGHT_NAMES = ['W_enc', 'b_enc', 'W_dec', 'b_dec'] as const;
export type WeightName = (typeof WEIGHT_NAMES)[number];

export interface SaeArrays {
  W_enc: ArrayLike<number>;
  b_enc: ArrayLike<number>;
  W_dec: ArrayLike<number>;
  b_dec: ArrayLike<number>;
}
export type RefWeights = Record<WeightName, Float64Array>;

export interface Dims {
  dIn: number;
  numLatents: number;
  k: number;
}

export function toF64(w: SaeArrays): RefWeights {
  return {
    W_enc: Float64Array.from(w.W_enc),
    b_enc: Float64Array.from(w.b_enc),
    W_dec: Float64Array.from(w.W_dec),
    b_dec: Float64Array.from(w.b_dec),
  };
}

export function toF32(w: SaeArrays): Record<WeightName, Float32Array> {
  return {
    W_enc: Float32Array.from(w.W_enc),
    b_enc: Float32Array.from(w.b_enc),
    W_dec: Float32Array.from(w.W_dec),
    b_dec: Float32Array.from(w.b_dec),
  };
}

export function mapWeights(w: SaeArrays, f: (v: number, name: WeightName, i: number) => number): RefWeights {
  const out = {} as RefWeights;
  for (const name of WEIGHT_NAMES) out[name] = Float64Array.from(w[name], (v, i) => f(v, name, i));
  return out;
}

export function zeroWeights(dIn: number, L: number): RefWeights {
  return {
    W_enc: new Float64Array(dIn * L),
    b_enc: new Float64Array(L),
    W_dec: new Float64Array(L * dIn),
    b_dec: new Float64Array(dIn),
  };
}

/** Total variance of a batch: sum over rows of ||x - mean_batch(x)||^2. */
export function refSST(x: ArrayLike<number>, rows: number, dIn: number): number {
  let sst = 0;
  for (let i = 0; i < dIn; i++) {
    let mean = 0;
    for (let r = 0; r < rows; r++) mean += x[r * dIn + i]!;
    mean /= rows;
    for (let r = 0; r < rows; r++) sst += (x[r * dIn + i]! - mean) ** 2;
  }
  return sst;
}

/**
 * Dense pre-activations [rows, L]. In abs mode the inputs must already be absolute values and the
 * subtraction x - b_dec becomes an addition, giving |pre|_abs.
 */
export function refPre(w: SaeArrays, x: ArrayLike<number>, rows: number, dIn: number, L: number, abs = false): Float64Array {
  const pre = new Float64Array(rows * L);
  const d = new Float64Array(dIn);
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < dIn; i++) d[i] = abs ? x[r * dIn + i]! + w.b_dec[i]! : x[r * dIn + i]! - w.b_dec[i]!;
    for (let j = 0; j < L; j++) {
      let s = w.b_enc[j]!;
      for (let i = 0; i < dIn; i++) s += d[i]! * w.W_enc[i * L + j]!;
      pre[r * L + j] = s;
    }
  }
  return pre;
}

/**
 * Bound on |fl32(pre) - pre| for each entry: the subtraction, a dIn-term inner product and the bias
 * add are at most dIn + 2 roundings per term (+2 spare for an implementation that forms x W_enc and
 * b_dec W_enc separately), plus the final rounding to float32.
 */
export function preErrors(w: SaeArrays, x: ArrayLike<number>, rows: number, dIn: number, L: number, pre: Float64Array): Float64Array {
  const absW = mapWeights(w, Math.abs);
  const absX = Float64Array.from(x, Math.abs);
  const preAbs = refPre(absW, absX, rows, dIn, L, true);
  const g = gamma(dIn + 4);
  return preAbs.map((a, i) => g * a + U * Math.abs(pre[i]!));
}

const relu = (v: number): number => (v > 0 ? v : 0);

/** Sparse codes in float64: per row k (index, value) pairs, value = ReLU(pre) at that index. */
export interface RefCodes {
  k: number;
  idx: Int32Array;
  val: Float64Array;
}

/** All candidate latents of one row in TopK order: descending ReLU(pre), ties by lower index. */
export function rowOrder(pre: Float64Array, r: number, L: number, cand?: Uint8Array): number[] {
  const ids: number[] = [];
  for (let j = 0; j < L; j++) if (!cand || cand[j]) ids.push(j);
  ids.sort((a, b) => relu(pre[r * L + b]!) - relu(pre[r * L + a]!) || a - b);
  return ids;
}

export function refTopk(pre: Float64Array, rows: number, L: number, k: number, cand?: Uint8Array): RefCodes {
  const idx = new Int32Array(rows * k);
  const val = new Float64Array(rows * k);
  for (let r = 0; r < rows; r++) {
    const order = rowOrder(pre, r, L, cand);
    for (let p = 0; p < k; p++) {
      idx[r * k + p] = order[p]!;
      val[r * k + p] = relu(pre[r * L + order[p]!]!);
    }
  }
  return { k, idx, val };
}

export interface RefSelection {
  main: RefCodes;
  /** AuxK selection among dead latents; null when no latent is dead. */
  aux: RefCodes | null;
  numDead: number;
  kAux: number;
  scale: number;
}

export function refSelect(pre: Float64Array, rows: number, dims: Dims, deadMask?: Uint8Array): RefSelection {
  const { dIn, numLatents: L, k } = dims;
  const main = refTopk(pre, rows, L, k);
  let numDead = 0;
  if (deadMask) for (let j = 0; j < L; j++) numDead += deadMask[j] ? 1 : 0;
  const kAuxBase = Math.floor(dIn / 2);
  if (numDead === 0 || kAuxBase === 0) return { main, aux: null, numDead, kAux: 0, scale: 0 };
  const kAux = Math.min(kAuxBase, numDead);
  const scale = Math.min(numDead / kAuxBase, 1);
  return { main, aux: refTopk(pre, rows, L, kAux, deadMask), numDead, kAux, scale };
}

/**
 * Whether a float32 implementation can legitimately choose differently from the reference in each
 * row. Each latent's ReLU value lies in [lo, hi] = ReLU(pre -+ err). Latent a is certainly ordered
 * before b if lo_a > hi_b, or lo_a >= hi_b and a < b (an exact tie goes to the lower index).
 *  - 'order': the top-k indices and their order are determined (checked pairwise against every later
 *    latent in reference order).
 *  - 'set': the selected set is determined where it matters for the loss, and no selected latent has
 *    an uncertain ReLU mask (pre within err of 0).
 */
export function ambiguousRows(
  pre: Float64Array,
  err: Float64Array,
  rows: number,
  L: number,
  k: number,
  mode: 'order' | 'set',
  cand?: Uint8Array,
): Uint8Array {
  const out = new Uint8Array(rows);
  for (let r = 0; r < rows; r++) {
    const order = rowOrder(pre, r, L, cand);
    const lo = (j: number): number => relu(pre[r * L + j]! - err[r * L + j]!);
    const hi = (j: number): number => relu(pre[r * L + j]! + err[r * L + j]!);
    const certain = (a: number, b: number): boolean => lo(a) > hi(b) || (lo(a) >= hi(b) && a < b);
    let amb = false;
    for (let p = 0; p < Math.min(k, order.length) && !amb; p++) {
      const a = order[p]!;
      if (mode === 'set' && lo(a) === 0 && hi(a) > 0) amb = true;
      for (let q = mode === 'order' ? p + 1 : k; q < order.length && !amb; q++) if (!certain(a, order[q]!)) amb = true;
    }
    out[r] = amb ? 1 : 0;
  }
  return out;
}

/** Decode [rows, k] codes: b_dec + sum_p val_p W_dec[idx_p]; with |.|_abs and a rounding bound. */
export function refDecode(
  w: SaeArrays,
  codes: { idx: ArrayLike<number>; val: ArrayLike<number>; k: number },
  rows: number,
  dIn: number,
): { xhat: Float64Array; bound: Float64Array } {
  const { k } = codes;
  const xhat = new Float64Array(rows * dIn);
  const bound = new Float64Array(rows * dIn);
  const g = gamma(k + 2);
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < dIn; i++) {
      let s = w.b_dec[i]!;
      let a = Math.abs(s);
      for (let p = 0; p < k; p++) {
        const t = codes.val[r * k + p]! * w.W_dec[codes.idx[r * k + p]! * dIn + i]!;
        s += t;
        a += Math.abs(t);
      }
      xhat[r * dIn + i] = s;
      bound[r * dIn + i] = g * a + 1e-300;
    }
  }
  return { xhat, bound };
}

export interface RefPass {
  loss: number;
  fvu: number;
  auxk: number;
  sse: number;
  auxSse: number;
  /** x_hat - x per entry. */
  res: Float64Array;
  /** e_hat - e per entry (zeros without AuxK). */
  diff: Float64Array;
  /** Variant 'paper': the AuxK normaliser sum ||e - mean(e)||^2 (else 0). */
  rv: number;
  grads: RefWeights;
}

export type RefAuxKVariant = 'sparsify' | 'paper';

/** sum over rows of ||e_r - mean_rows(e)||^2 for e [rows, dIn]. */
export function refCentredSS(e: ArrayLike<number>, rows: number, dIn: number): number {
  const mean = new Float64Array(dIn);
  for (let r = 0; r < rows; r++) for (let i = 0; i < dIn; i++) mean[i] += e[r * dIn + i]! / rows;
  let s = 0;
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < dIn; i++) {
      const c = e[r * dIn + i]! - mean[i]!;
      s += c * c;
    }
  return s;
}

/**
 * Loss and its exact gradient for a fixed selection, by hand-written reverse mode. In abs mode
 * (inputs already absolute) every subtraction is an addition and the selected values are
 * |pre|_abs, which yields |y|_abs for every output. `fixedE` replaces the residual e = x - x_hat of
 * the AuxK term (finite differences of the detached objective hold it fixed).
 */
export function refPass(
  w: SaeArrays,
  x: ArrayLike<number>,
  rows: number,
  dims: Dims,
  sel: RefSelection,
  opts: { alpha: number; sst: number; abs?: boolean; fixedE?: Float64Array; variant?: RefAuxKVariant; rv?: number; auxOnly?: boolean },
): RefPass {
  const { dIn, numLatents: L, k } = dims;
  const abs = opts.abs ?? false;
  const sub = abs ? (a: number, b: number) => a + b : (a: number, b: number) => a - b;
  const { sst, alpha } = opts;
  const pre = refPre(w, x, rows, dIn, L, abs);
  const grads = zeroWeights(dIn, L);
  const res = new Float64Array(rows * dIn);
  const diff = new Float64Array(rows * dIn);
  const aux = sel.aux;
  const kAux = sel.kAux;
  const paper = opts.variant === 'paper';
  // The paper's normaliser: the detached residual's centred sum of squares (a constant).
  let rv = 0;
  if (aux && paper) {
    if (opts.rv !== undefined) rv = opts.rv;
    else if (opts.fixedE) rv = refCentredSS(opts.fixedE, rows, dIn);
    else rv = refCentredSS(refPass(w, x, rows, dims, { ...sel, aux: null, kAux: 0 }, { alpha: 0, sst }).res, rows, dIn);
  }
  const auxCoef = !aux ? 0 : paper ? (rv > 0 ? (alpha * 2) / rv : 0) : (alpha * sel.scale * 2) / sst;
  let sse = 0;
  let auxSse = 0;
  const d = new Float64Array(dIn);
  const xhat = new Float64Array(dIn);
  const g = new Float64Array(dIn); // dloss/dx_hat (fvu path)
  const h = new Float64Array(dIn); // dloss/de_hat (AuxK path)
  const dpre = new Float64Array(L);
  for (let r = 0; r < rows; r++) {
    const xr = r * dIn;
    for (let i = 0; i < dIn; i++) d[i] = sub(x[xr + i]!, w.b_dec[i]!);
    // value of selected entry p (0 where the real ReLU output is 0: no value, no gradient)
    const zval = (c: RefCodes, p: number): number => (c.val[r * c.k + p]! > 0 ? pre[r * L + c.idx[r * c.k + p]!]! : 0);
    // decode
    for (let i = 0; i < dIn; i++) xhat[i] = w.b_dec[i]!;
    for (let p = 0; p < k; p++) {
      const z = zval(sel.main, p);
      if (z === 0) continue;
      const j = sel.main.idx[r * k + p]!;
      for (let i = 0; i < dIn; i++) xhat[i] += z * w.W_dec[j * dIn + i]!;
    }
    for (let i = 0; i < dIn; i++) {
      const rr = sub(xhat[i]!, x[xr + i]!);
      res[xr + i] = rr;
      sse += rr * rr;
      g[i] = opts.auxOnly ? 0 : (2 * rr) / sst;
    }
    // AuxK: e_hat = b_dec + sum a_q W_dec[aidx_q] (paper: without b_dec), e = x - x_hat (detached)
    if (aux) {
      const ehat = new Float64Array(dIn);
      if (!paper) for (let i = 0; i < dIn; i++) ehat[i] = w.b_dec[i]!;
      for (let q = 0; q < kAux; q++) {
        const a = zval(aux, q);
        if (a === 0) continue;
        const j = aux.idx[r * kAux + q]!;
        for (let i = 0; i < dIn; i++) ehat[i] += a * w.W_dec[j * dIn + i]!;
      }
      for (let i = 0; i < dIn; i++) {
        const e = opts.fixedE ? opts.fixedE[xr + i]! : sub(x[xr + i]!, xhat[i]!);
        const df = sub(ehat[i]!, e);
        diff[xr + i] = df;
        auxSse += df * df;
        h[i] = auxCoef * df;
      }
    }
    // backward: decoder paths
    dpre.fill(0);
    for (let i = 0; i < dIn; i++) grads.b_dec[i] += g[i]! + (aux && !paper ? h[i]! : 0);
    const backDecode = (c: RefCodes, kk: number, up: Float64Array): void => {
      for (let p = 0; p < kk; p++) {
        const z = zval(c, p);
        if (z === 0) continue; // ReLU derivative 0 at 0
        const j = c.idx[r * kk + p]!;
        let dz = 0;
        for (let i = 0; i < dIn; i++) {
          grads.W_dec[j * dIn + i] += z * up[i]!;
          dz += up[i]! * w.W_dec[j * dIn + i]!;
        }
        dpre[j] += dz;
      }
    };
    backDecode(sel.main, k, g);
    if (aux) backDecode(aux, kAux, h);
    // encoder: pre = d W_enc + b_enc, d = x - b_dec
    for (let j = 0; j < L; j++) {
      const dp = dpre[j]!;
      if (dp === 0) continue;
      grads.b_enc[j] += dp;
      for (let i = 0; i < dIn; i++) grads.W_enc[i * L + j] += d[i]! * dp;
    }
    for (let i = 0; i < dIn; i++) {
      let s = 0;
      for (let j = 0; j < L; j++) s += w.W_enc[i * L + j]! * dpre[j]!;
      grads.b_dec[i] = sub(grads.b_dec[i]!, s);
    }
  }
  const fvu = sse / sst;
  const auxk = !aux ? 0 : paper ? (rv > 0 ? auxSse / rv : 0) : (sel.scale * auxSse) / sst;
  return { loss: fvu + alpha * auxk, fvu, auxk, sse, auxSse, res, diff, rv, grads };
}

export interface RefEval {
  dims: Dims;
  rows: number;
  pre: Float64Array;
  preErr: Float64Array;
  sel: RefSelection;
  /** Rows where a float32 implementation may select differently in a way that changes the loss. */
  ambiguous: number;
  sst: number;
  pass: RefPass;
  /** Bounds on |float32 implementation - reference|. */
  bounds: { fvu: number; auxk: number; loss: number; grads: RefWeights };
  l0: number;
  fired: Uint8Array;
}

/** Everything the loss-level tests need: selection, loss, gradients, and their error bounds. */
export function refEvaluate(
  w: SaeArrays,
  x: ArrayLike<number>,
  rows: number,
  dims: Dims,
  opts: { deadMask?: Uint8Array; alpha?: number; variant?: RefAuxKVariant } = {},
): RefEval {
  const { dIn, numLatents: L, k } = dims;
  const alpha = opts.alpha ?? 1 / 32;
  const variant = opts.variant ?? 'sparsify';
  const pre = refPre(w, x, rows, dIn, L);
  const preErr = preErrors(w, x, rows, dIn, L, pre);
  const sel = refSelect(pre, rows, dims, opts.deadMask);
  const ambMain = ambiguousRows(pre, preErr, rows, L, k, 'set');
  const ambAux = sel.aux ? ambiguousRows(pre, preErr, rows, L, sel.kAux, 'set', opts.deadMask) : new Uint8Array(rows);
  let ambiguous = 0;
  for (let r = 0; r < rows; r++) ambiguous += ambMain[r] || ambAux[r] ? 1 : 0;
  const sst = refSST(x, rows, dIn);
  const pass = refPass(w, x, rows, dims, sel, { alpha, sst, variant });
  // abs mode runs with the real normaliser (a common factor, bounded separately below)
  const absPass = refPass(mapWeights(w, Math.abs), Float64Array.from(x, Math.abs), rows, dims, sel, { alpha, sst, abs: true, variant, rv: pass.rv });

  const N = rows * dIn;
  const kAux = sel.kAux;
  // SST: a sum of N squares of (x - mean), mean a sum of rows terms: relative error gamma_{N+rows+3};
  // doubled to also cover the one-pass form sum x^2 - rows mean^2 on these zero-mean-ish batches.
  const sstRel = 2 * gamma(N + rows + 10);
  // Longest rounding path of a gradient term: pre (dIn+2), decode (k+1), residual (1), scaling (3),
  // back through W_dec (dIn), products (2), sum over rows (rows), back through W_enc (L), merging
  // the fvu and AuxK paths (2): 2 dIn + max(k, kAux) + L + rows + 10. Doubled as a margin for
  // blocked or fused evaluation orders.
  const gGrad = gamma(2 * (2 * dIn + k + kAux + L + rows) + 40);
  // fvu = sum res^2 / SST: each residual is off by at most gamma_Dr |res|_abs (Dr = dIn + k + 6,
  // doubled), then N squares are summed.
  const gRes = gamma(2 * (dIn + k + 6));
  // Variant 'paper': the normaliser rv = sum (e - mean e)^2 of the float32 residuals. With each
  // residual off by at most eps_i = gamma_Dr |res|_abs and each column mean by the mean of those,
  // rv is off by at most sum 2 |c_i| eps'_i + eps'_i^2 (c = e - mean e), plus its own float64 sums.
  // The implementation's AuxK terms all carry the factor 2 alpha / rv, so rv's relative error
  // scales the AuxK path's exact gradient (computed alone: fvu path off) as a whole, just as
  // SST's scales the full gradient; the terms' own rounding is in gGrad |grad|_abs.
  let rvRel = 0;
  let auxGrads: RefWeights | undefined;
  if (sel.aux && variant === 'paper' && pass.rv > 0) {
    const meanErr = new Float64Array(dIn);
    for (let i = 0; i < N; i++) meanErr[i % dIn] += (gRes * absPass.res[i]!) / rows;
    const eMean = new Float64Array(dIn);
    for (let i = 0; i < N; i++) eMean[i % dIn] += -pass.res[i]! / rows;
    let err = gamma(N + rows + 10) * pass.rv;
    for (let i = 0; i < N; i++) {
      const c = -pass.res[i]! - eMean[i % dIn]!;
      const ep = gRes * absPass.res[i]! + meanErr[i % dIn]!;
      err += 2 * Math.abs(c) * ep + ep * ep;
    }
    rvRel = 2 * (err / pass.rv) + 8 * U;
    auxGrads = refPass(w, x, rows, dims, sel, { alpha, sst, variant, rv: pass.rv, auxOnly: true }).grads;
  }
  const grads = mapWeights(
    absPass.grads,
    (a, name, i) => gGrad * a + rvRel * (auxGrads ? Math.abs(auxGrads[name][i]!) : 0) + sstRel * Math.abs(pass.grads[name][i]!) + 1e-300,
  );
  let fvuErr = gamma(N + 2) * pass.sse;
  for (let i = 0; i < N; i++) {
    const e = gRes * absPass.res[i]!;
    fvuErr += 2 * Math.abs(pass.res[i]!) * e + e * e;
  }
  fvuErr = fvuErr / sst + sstRel * pass.fvu;
  let auxErr = 0;
  if (sel.aux) {
    const gDiff = gamma(2 * (dIn + k + kAux + 8));
    let s = gamma(N + 2) * pass.auxSse;
    for (let i = 0; i < N; i++) {
      const e = gDiff * absPass.diff[i]!;
      s += 2 * Math.abs(pass.diff[i]!) * e + e * e;
    }
    auxErr = variant === 'paper' ? (pass.rv > 0 ? s / pass.rv + (rvRel + 8 * U) * pass.auxk : 0) : (sel.scale * s) / sst + (sstRel + 8 * U) * pass.auxk;
  }
  const lossErr = fvuErr + alpha * auxErr + 4 * U * pass.loss;
  const fired = new Uint8Array(L);
  let nnz = 0;
  for (let p = 0; p < rows * k; p++) {
    if (sel.main.val[p]! > 0) {
      fired[sel.main.idx[p]!] = 1;
      nnz++;
    }
  }
  return {
    dims,
    rows,
    pre,
    preErr,
    sel,
    ambiguous,
    sst,
    pass,
    bounds: { fvu: fvuErr, auxk: auxErr, loss: lossErr, grads },
    l0: nnz / rows,
    fired,
  };
}

/** Counts tokens since each latent last fired (selected by the main TopK with value > 0). */
export class RefDeadCounter {
  readonly tsf: Float64Array;
  constructor(L: number) {
    this.tsf = new Float64Array(L);
  }
  mask(threshold: number): Uint8Array {
    return Uint8Array.from(this.tsf, (t) => (t > threshold ? 1 : 0));
  }
  update(fired: Uint8Array, rows: number): void {
    for (let j = 0; j < this.tsf.length; j++) this.tsf[j] = fired[j] ? 0 : this.tsf[j]! + rows;
  }
}

export interface AdamHP {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
}

/**
 * Adam moments in float64, plus bounds on how far a float32 implementation's moments can be from
 * them when both see the same weights each step (the implementation's gradient is within the
 * gradient bound of the reference's).
 */
export class RefAdamState {
  t = 0;
  m: RefWeights;
  v: RefWeights;
  mErr: RefWeights;
  vErr: RefWeights;
  constructor(dIn: number, L: number) {
    this.m = zeroWeights(dIn, L);
    this.v = zeroWeights(dIn, L);
    this.mErr = zeroWeights(dIn, L);
    this.vErr = zeroWeights(dIn, L);
  }
}

/**
 * Relative budget on each Adam update lr * mhat / (sqrt(vhat) + eps) for the float32 constants:
 * 1 - 0.999f is 1.3e-5 off 0.001, which moves vhat by that much relative if an implementation mixes
 * float32 moments with float64 bias corrections (sqrt halves it); 1e-4 covers this and the dozen
 * roundings of the update itself. A wrong formula (missing bias correction, projection, eps
 * placement) is off by O(1) relative.
 */
export const ADAM_REL = 1e-4;

export interface RefStep {
  ev: RefEval;
  /** The expected weights after the step and per-entry tolerances (Infinity: ill-conditioned). */
  expected: RefWeights;
  tol: RefWeights;
  fragile: number;
}

/**
 * One reference optimizer step from the implementation's current weights `w`: gradient at w,
 * decoder-gradient projection, Adam with bias correction, decoder rows renormalised. Mutates
 * `state` (moments, t).
 */
export function refAdamStep(
  w: SaeArrays,
  x: ArrayLike<number>,
  rows: number,
  dims: Dims,
  state: RefAdamState,
  hp: AdamHP,
  opts: { alpha: number; deadMask?: Uint8Array; variant?: RefAuxKVariant },
): RefStep {
  const { dIn, numLatents: L } = dims;
  const ev = refEvaluate(w, x, rows, dims, { alpha: opts.alpha, deadMask: opts.deadMask, variant: opts.variant });
  const g = ev.pass.grads;
  const B = ev.bounds.grads;
  // projection g_j -= (g_j . w_j) w_j on decoder rows, with its error bound
  const gp = toF64(g);
  const Bp = toF64(B);
  for (let j = 0; j < L; j++) {
    let c = 0;
    let cAbs = 0;
    let cErr = 0;
    for (let i = 0; i < dIn; i++) {
      const wi = w.W_dec[j * dIn + i]!;
      c += g.W_dec[j * dIn + i]! * wi;
      cAbs += Math.abs(g.W_dec[j * dIn + i]! * wi);
      cErr += B.W_dec[j * dIn + i]! * Math.abs(wi);
    }
    cErr += gamma(dIn + 2) * cAbs;
    for (let i = 0; i < dIn; i++) {
      const at = j * dIn + i;
      const wi = w.W_dec[at]!;
      gp.W_dec[at] = g.W_dec[at]! - c * wi;
      Bp.W_dec[at] = B.W_dec[at]! + Math.abs(wi) * cErr + gamma(3) * (Math.abs(g.W_dec[at]!) + Math.abs(c * wi));
    }
  }
  state.t += 1;
  const { lr, beta1: b1, beta2: b2, eps } = hp;
  const c1 = 1 - b1 ** state.t;
  const c2 = 1 - b2 ** state.t;
  const expected = zeroWeights(dIn, L);
  const tol = zeroWeights(dIn, L);
  let fragile = 0;
  for (const name of WEIGHT_NAMES) {
    const m = state.m[name];
    const v = state.v[name];
    const mErr = state.mErr[name];
    const vErr = state.vErr[name];
    for (let i = 0; i < m.length; i++) {
      const gi = gp[name][i]!;
      const bi = Bp[name][i]!;
      mErr[i] = b1 * mErr[i]! + (1 - b1) * bi + 4 * U * (b1 * Math.abs(m[i]!) + (1 - b1) * Math.abs(gi));
      vErr[i] = b2 * vErr[i]! + (1 - b2) * (2 * Math.abs(gi) * bi + bi * bi) + 4 * U * (b2 * v[i]! + (1 - b2) * gi * gi);
      m[i] = b1 * m[i]! + (1 - b1) * gi;
      v[i] = b2 * v[i]! + (1 - b2) * gi * gi;
      const mhat = m[i]! / c1;
      const vhat = v[i]! / c2;
      const dm = mErr[i]! / c1 + 3 * U * Math.abs(mhat);
      const dv = vErr[i]! / c2 + 3 * U * vhat;
      const s = Math.sqrt(vhat);
      const ds = (vhat - dv > 0 ? dv / (s + Math.sqrt(vhat - dv)) : Math.sqrt(vhat + dv)) + U * s;
      const den = s + eps;
      const dden = ds + U * den;
      const step = (lr * mhat) / den;
      const p = w[name][i]! - step;
      expected[name][i] = p;
      if (dden >= den / 2) {
        tol[name][i] = Infinity;
        fragile++;
        continue;
      }
      const dr = (dm * den + Math.abs(mhat) * dden) / (den * (den - dden));
      tol[name][i] = lr * dr + Math.abs(step) * ADAM_REL + 2 * U * (Math.abs(p) + Math.abs(step));
    }
  }
  // renormalise decoder rows: q = p / ||p||
  for (let j = 0; j < L; j++) {
    const row = expected.W_dec.subarray(j * dIn, (j + 1) * dIn);
    const rt = tol.W_dec.subarray(j * dIn, (j + 1) * dIn);
    let n2 = 0;
    let e2 = 0;
    for (let i = 0; i < dIn; i++) {
      n2 += row[i]! ** 2;
      e2 += rt[i]! ** 2;
    }
    const nrm = Math.sqrt(n2);
    const enrm = Math.sqrt(e2);
    for (let i = 0; i < dIn; i++) row[i] = row[i]! / nrm;
    for (let i = 0; i < dIn; i++) {
      rt[i] = Number.isFinite(enrm) && enrm < nrm / 2 ? (rt[i]! + Math.abs(row[i]!) * enrm) / (nrm - enrm) + gamma(dIn + 4) * Math.abs(row[i]!) : Infinity;
    }
  }
  return { ev, expected, tol, fragile };
}

/** Largest |got - want| / tol over an array, with where it happened. */
export function worstRatio(got: ArrayLike<number>, want: ArrayLike<number>, tol: ArrayLike<number>): { ratio: number; at: number } {
  let ratio = 0;
  let at = -1;
  for (let i = 0; i < want.length; i++) {
    const t = tol[i]!;
    if (t === Infinity) continue;
    const q = Math.abs(got[i]! - want[i]!) / t;
    if (!(q <= ratio)) {
      ratio = q;
      at = i;
    }
  }
  return { ratio, at };
}
