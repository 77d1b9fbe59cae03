/**
 * MDL description length of an SAE's codes (Ayonrinde, Pearce and Sharkey, arXiv 2410.11179;
 * docs/references.md §5.3). Per token, the bits to say which latents are active plus their quantised
 * values, entropy-coded per latent:
 *
 *   DL = sum_i [ H_b(p_i) + p_i H(q_i | active) ]   bits per token
 *
 * with p_i the fraction of tokens on which latent i is active, and q_i its value quantised to
 * bins of one global width (the precision). The precision is found by bisection on log width: a
 * coarse width whose reconstruction MSE, decoding the quantised codes, stays within `mseBound`
 * (default max(1.01 x the unquantised MSE, 1e-7 x the mean ||x||^2)).
 * `compat` adds SAEBench's variant (per-latent bins on [0, max(100, max_i)], entropy over all
 * tokens with zeros in bin 0, validity sqrt(MSE)/dIn < 0.01), labelled. Its bits per token are
 * SAEBench's; its validity check is not quite: the MSE here decodes inactive latents as 0, while
 * SAEBench quantises the whole dense code matrix, so zeros decode to bin 0's midpoint (at least
 * 100 / (2 x bins) on every latent) and its MSE is larger, and SAEBench also re-applies TopK for k
 * in {16, 24, 32} and reports one result per (bins, k). `rmsePerDim` and `valid` can therefore
 * differ from SAEBench's.
 *
 * The paper form's precision comes from bisection, which assumes the MSE rises with the bin
 * width; it need not (on untrained SAEs widths several times coarser also met the bound), so the
 * width found is a coarse one within the bound, not always the coarsest. For the same reason,
 * when the finest width tried (vmax x 2^-30) misses the bound, the powers of two vmax x 2^-j
 * between are tried, and bisection starts from the coarsest of them that meets it; if none does,
 * the error gives the lowest MSE they reach.
 *
 * The JS work (the histograms, each width's quantised codes, the sums of squares) runs in slices
 * of about 20 ms between turns of the event loop (due(), pause()); every sum is taken in the same
 * order as in one piece. Each width's quantised codes are made one batch at a time, just before
 * that batch is decoded.
 */
import { batchRows } from '../data/options.js';
import type { ActivationSource } from '../data/types.js';
import { argError, atTokens, SaekitError } from '../errors.js';
import type { SparseAutoencoder, SparseCodes } from '../sae/index.js';
import { checkBool, checkInt, checkOptions, checkSignal, optionNames } from '../validate.js';
import { due, forBlocks, pause } from '../slices.js';

/** Option names (checkOptions refuses others: a misspelling is an error, not ignored). */
const DL_OPTIONS = optionNames<DescriptionLengthOptions>({ maxTokens: true, batchSize: true, mseBound: true, compat: true, signal: true });

/** Options of descriptionLength(). */
export interface DescriptionLengthOptions {
  /** Tokens to measure on (kept in memory with their codes). Default 65536. */
  maxTokens?: number;
  /** Rows per batch. Default 4096 (fewer for rows wider than 65536 values: a batch is at most 2^28 values). */
  batchSize?: number;
  /**
   * The distortion bound: MSE (mean over tokens of the squared error summed over dIn). Default:
   * 1% above the unquantised MSE, and at least 1e-7 x the mean ||x||^2 (the float32 round-off of
   * a lossless SAE, MSE 0, is met by no width).
   */
  mseBound?: number;
  /** Also compute SAEBench's variant (labelled). */
  compat?: boolean;
  /**
   * Stops the measurement: checked before any work, between the batches read, between the
   * batches decoded for each bin width tried (the search decodes every batch dozens of times)
   * and between slices of the code-length count. The Promise then rejects with `signal.reason`
   * (an AbortError by default), as Node's own APIs do, and the source's pass is ended.
   */
  signal?: AbortSignal;
}

/** What descriptionLength() returns: bits per token, their parts, the quantisation and its MSE. */
export interface DescriptionLengthResult {
  /** Tokens measured. */
  tokens: number;
  /** Description length in bits per token (paper form). */
  bitsPerToken: number;
  /** Its first part: which latents are active (bits per token). */
  bernoulliBits: number;
  /** Its second part: their quantised values (bits per token). */
  valueBits: number;
  /** The chosen quantisation bin width. */
  precision: number;
  /** MSE with unquantised codes. */
  mseUnquantized: number;
  /** MSE with the quantised codes (at most mseBound). */
  mse: number;
  /** The distortion bound used. */
  mseBound: number;
  /** SAEBench's variant for num_bins 4, 6, 8, 12, 16, 32. */
  compat?: { numBins: number; bitsPerToken: number; rmsePerDim: number; valid: boolean }[];
}

function h2(p: number): number {
  return p <= 0 || p >= 1 ? 0 : -(p * Math.log2(p) + (1 - p) * Math.log2(1 - p));
}

/** Entropy in bits of a histogram given as counts summing to `total`. */
function histEntropy(counts: Iterable<number>, total: number): number {
  let h = 0;
  for (const c of counts) if (c > 0 && c < total) h -= (c / total) * Math.log2(c / total);
  return h;
}

/**
 * The paper-form DL of codes quantised with bin width `delta` > 0 (bins [b delta, (b+1) delta) of
 * the active, i.e. positive, values), and its two parts. Exposed for tests.
 *
 * Each latent's bins are gathered in token order (a counting sort by latent) and counted in an
 * open-addressing table; a latent's entropy sums its bins in the order they first occur, the
 * order in which a Map of the bins would list them.
 * @internal
 */
export async function codeLength(codes: SparseCodes[], numLatents: number, delta: number, signal?: AbortSignal): Promise<{ bits: number; bernoulli: number; value: number }> {
  let tokens = 0;
  const active = new Float64Array(numLatents);
  for (const c of codes) {
    tokens += c.rows;
    const { values, indices } = c;
    await forBlocks(values.length, (q0, q1) => {
      for (let q = q0; q < q1; q++) if (values[q]! > 0) active[indices[q]!]! += 1;
    });
  }
  // Latent l's bins go to bins[start_l ..], in token order.
  const at = new Float64Array(numLatents);
  let total = 0;
  let most = 0;
  for (let l = 0; l < numLatents; l++) {
    at[l] = total;
    total += active[l]!;
    if (active[l]! > most) most = active[l]!;
  }
  const bins = new Float64Array(total);
  for (const c of codes) {
    const { values, indices } = c;
    await forBlocks(
      values.length,
      (q0, q1) => {
        for (let q = q0; q < q1; q++) {
          const v = values[q]!;
          if (v > 0) bins[at[indices[q]!]!++] = Math.floor(v / delta);
        }
      },
      4, // scattered writes
    );
  }
  // One table for every latent: slot i belongs to latent l while tag[i] is l + 1.
  let tableBits = 1;
  while (1 << tableBits < 2 * most) tableBits++;
  const keys = new Float64Array(1 << tableBits);
  const counts = new Float64Array(1 << tableBits);
  const tag = new Int32Array(1 << tableBits);
  const order = new Int32Array(most);
  let bernoulli = 0;
  let value = 0;
  let start = 0;
  for (let l = 0; l < numLatents; l++) {
    const n = active[l]!;
    if (n === 0) continue;
    let lb = 1; // latent l's table: the first 2^lb >= 2n slots
    while (1 << lb < 2 * n) lb++;
    const mask = (1 << lb) - 1;
    const shift = 32 - lb;
    let distinct = 0;
    for (let q = start; q < start + n; q++) {
      const key = bins[q]!;
      let i = (key < 2 ** 31 ? Math.imul(key, 0x9e3779b1) : hashDouble(key)) >>> shift;
      while (tag[i] === l + 1 && keys[i] !== key) i = (i + 1) & mask;
      if (tag[i] === l + 1) counts[i]! += 1;
      else {
        tag[i] = l + 1;
        keys[i] = key;
        counts[i] = 1;
        order[distinct++] = i;
      }
    }
    start += n;
    const p = n / tokens;
    bernoulli += h2(p);
    let h = 0;
    for (let j = 0; j < distinct; j++) {
      const c = counts[order[j]!]!;
      if (c > 0 && c < n) h -= (c / n) * Math.log2(c / n);
    }
    value += p * h;
    if (due(4 * n)) await pause(signal);
  }
  return { bits: bernoulli + value, bernoulli, value };
}

/** A 32-bit hash of a bin index of 2^31 or more (or Infinity), from both words of its float64. */
const f64 = new Float64Array(1);
const u32 = new Uint32Array(f64.buffer);
function hashDouble(key: number): number {
  f64[0] = key;
  return Math.imul(u32[0]! ^ Math.imul(u32[1]!, 0x85ebca6b), 0x9e3779b1);
}

/** `c` with each positive value moved to the middle of its bin of width `delta` (others 0). */
async function quantised(c: SparseCodes, delta: number): Promise<SparseCodes> {
  const src = c.values;
  const values = new Float32Array(src.length);
  await forBlocks(src.length, (q0, q1) => {
    for (let q = q0; q < q1; q++) {
      const v = src[q]!;
      values[q] = v > 0 ? (Math.floor(v / delta) + 0.5) * delta : 0;
    }
  });
  return { ...c, values };
}

/** The MSE of decoding `codes` (each batch passed through `quantise` first, one at a time). */
async function mseOf(
  sae: SparseAutoencoder,
  xs: Float32Array[],
  codes: SparseCodes[],
  signal: AbortSignal | undefined,
  quantise?: (c: SparseCodes) => Promise<SparseCodes>,
): Promise<number> {
  let sse = 0;
  let tokens = 0;
  for (let b = 0; b < xs.length; b++) {
    signal?.throwIfAborted();
    const recon = await sae.decode(quantise ? await quantise(codes[b]!) : codes[b]!);
    const x = xs[b]!;
    await forBlocks(x.length, (i0, i1) => {
      let s = sse; // the same sum, term by term, in a local
      for (let i = i0; i < i1; i++) s += (x[i]! - recon[i]!) ** 2;
      sse = s;
    });
    tokens += codes[b]!.rows;
  }
  return sse / tokens;
}

/** The MDL description length of `sae`'s codes on `source` (see the module comment). */
export async function descriptionLength(sae: SparseAutoencoder, source: ActivationSource, options?: DescriptionLengthOptions): Promise<DescriptionLengthResult> {
  if (sae === null || typeof sae !== 'object' || typeof (sae as { encode?: unknown }).encode !== 'function') throw argError('sae', 'a SparseAutoencoder', sae);
  if (source === null || typeof source !== 'object' || typeof (source as { batches?: unknown }).batches !== 'function') throw argError('source', 'an ActivationSource', source);
  const o = checkOptions('options', options, DL_OPTIONS);
  const compat = o.compat === undefined ? false : checkBool('options.compat', o.compat);
  const maxTokens = o.maxTokens === undefined ? 65536 : checkInt('options.maxTokens', o.maxTokens, 2, 1 << 26);
  const batchSize = batchRows('options.batchSize', o.batchSize, sae.dIn, 1 << 24);
  if (o.mseBound !== undefined && !(typeof o.mseBound === 'number' && o.mseBound > 0 && Number.isFinite(o.mseBound))) {
    throw argError('options.mseBound', 'a positive finite number', o.mseBound);
  }
  const signal = checkSignal('options.signal', o.signal);
  signal?.throwIfAborted();
  if (source.dIn !== sae.dIn) throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected a source with dIn = ${sae.dIn} but it has ${source.dIn}`);
  const xs: Float32Array[] = [];
  const codes: SparseCodes[] = [];
  let tokens = 0;
  for await (const b of source.batches({ batchSize, shuffle: false })) {
    // Leaving the loop by a throw ends the source's pass (for await calls its return()).
    signal?.throwIfAborted();
    if (b.dIn !== sae.dIn) throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected batches of dIn = ${sae.dIn} but the source yielded dIn = ${b.dIn}`);
    if (b.rows === 0) continue; // a custom source may yield an empty batch
    const rows = Math.min(b.rows, maxTokens - tokens);
    const x = rows === b.rows ? b.data : b.data.slice(0, rows * b.dIn);
    xs.push(x);
    const first = tokens;
    codes.push(await atTokens(sae.encode(x), (r) => first + r, 'the source'));
    tokens += rows;
    if (tokens >= maxTokens) break;
  }
  if (tokens === 0) throw new SaekitError('ERR_SAEKIT_ARG', 'the source produced no rows');
  let vmax = 0;
  for (const { values } of codes) {
    await forBlocks(values.length, (q0, q1) => {
      for (let q = q0; q < q1; q++) if (values[q]! > vmax) vmax = values[q]!;
    });
  }
  const mse0 = await mseOf(sae, xs, codes, signal);
  let sumSq = 0;
  for (const x of xs) {
    await forBlocks(x.length, (i0, i1) => {
      let s = sumSq;
      for (let i = i0; i < i1; i++) s += x[i]! * x[i]!;
      sumSq = s;
    });
  }
  // The default bound: 1% above the unquantised MSE, and at least 1e-7 of the mean ||x||^2. A
  // lossless SAE (mse0 0) needs the floor: no width meets 1.01 x 0, as the quantised values and
  // the decode are rounded to float32 (each entry of x_hat off by up to about (k + 1) 2^-24 of
  // the terms summed: an MSE up to about (k 2^-24)^2 mean ||x||^2, 2e-10 of it at k = 256).
  // 1e-7 mean ||x||^2, an RMS error of 3e-4 ||x||, is far above that round-off, and at most 1%
  // of the MSE of an SAE with FVU >= 1e-3 on data whose mean ||x||^2 is <= 100 x its variance.
  const bound = o.mseBound ?? Math.max(mse0 * 1.01, 1e-7 * (sumSq / tokens));
  const boundName = o.mseBound === undefined ? `The default mseBound, max(1.01 x the unquantised MSE, 1e-7 x the mean ||x||^2) = ${bound},` : `options.mseBound = ${bound}`;
  let delta = vmax > 0 ? vmax : 1;
  let mse = vmax > 0 ? await mseOf(sae, xs, codes, signal, (c) => quantised(c, delta)) : mse0;
  if (vmax === 0 && mse0 > bound) {
    // No code is nonzero: no quantisation changes anything, so the bound cannot be met.
    throw new SaekitError('ERR_SAEKIT_ARG', `${boundName} is below what any quantisation reaches (${mse0}: every code is zero); the unquantised MSE is ${mse0}`);
  }
  if (vmax > 0 && mse > bound) {
    // Bisection on log width between a width that meets the bound and one that does not.
    // The finest width is vmax x 2^-30 exactly, as documented (exp(log(vmax) - 30 ln 2) is not:
    // it is a few ulps off, e.g. 2^-30 (1 + 9e-16) for vmax = 1).
    let best = vmax * 2 ** -30;
    let lo = Math.log(best);
    let hi = Math.log(vmax);
    let bestMse = await mseOf(sae, xs, codes, signal, (c) => quantised(c, best));
    if (bestMse > bound) {
      // The MSE need not rise with the width (a coarser bin's midpoint can land nearer x than
      // the value itself), so before giving up try the powers of two between, coarsest first.
      let minMse = Math.min(mse, bestMse);
      let minWidth = mse <= bestMse ? vmax : best;
      for (let j = 1; j < 30 && bestMse > bound; j++) {
        const w = vmax * 2 ** -j;
        const m = await mseOf(sae, xs, codes, signal, (c) => quantised(c, w));
        if (m < minMse) [minMse, minWidth] = [m, w];
        if (m <= bound) [best, bestMse, lo, hi] = [w, m, Math.log(w), Math.log(2 * w)];
      }
      if (bestMse > bound) {
        throw new SaekitError(
          'ERR_SAEKIT_ARG',
          `${boundName} is not met by any bin width tried (vmax x 2^-j for j = 0..30, vmax = ${vmax}): the lowest MSE among them is ${minMse}, at width ${minWidth}; the unquantised MSE is ${mse0}`,
        );
      }
    }
    for (let it = 0; it < 24; it++) {
      const mid = (lo + hi) / 2;
      const width = Math.exp(mid);
      const m = await mseOf(sae, xs, codes, signal, (c) => quantised(c, width));
      if (m <= bound) {
        lo = mid;
        best = Math.exp(mid);
        bestMse = m;
      } else hi = mid;
    }
    delta = best;
    mse = bestMse;
  }
  const dl = await codeLength(codes, sae.numLatents, delta, signal);
  const result: DescriptionLengthResult = {
    tokens,
    bitsPerToken: dl.bits,
    bernoulliBits: dl.bernoulli,
    valueBits: dl.value,
    precision: delta,
    mseUnquantized: mse0,
    mse,
    mseBound: bound,
  };
  if (compat) result.compat = await saebenchCompat(sae, xs, codes, tokens, signal);
  return result;
}

/** SAEBench's calculate_dl (docs/references.md §5.3), labelled compat. */
async function saebenchCompat(sae: SparseAutoencoder, xs: Float32Array[], codes: SparseCodes[], tokens: number, signal: AbortSignal | undefined) {
  const M = sae.numLatents;
  const maxv = new Float64Array(M).fill(100); // SAEBench initialises the running max at 100
  const active = new Float64Array(M);
  for (const c of codes) {
    await forBlocks(c.values.length, (q0, q1) => {
      for (let q = q0; q < q1; q++) {
        const v = c.values[q]!;
        if (!(v > 0)) continue;
        const l = c.indices[q]!;
        active[l]! += 1;
        if (v > maxv[l]!) maxv[l] = v;
      }
    });
  }
  const out: { numBins: number; bitsPerToken: number; rmsePerDim: number; valid: boolean }[] = [];
  for (const numBins of [4, 6, 8, 12, 16, 32]) {
    const hist = new Float64Array(M * numBins);
    for (const c of codes) {
      await forBlocks(c.values.length, (q0, q1) => {
        for (let q = q0; q < q1; q++) {
          const v = c.values[q]!;
          if (!(v > 0)) continue;
          const l = c.indices[q]!;
          hist[l * numBins + Math.min(numBins - 1, Math.floor((v / maxv[l]!) * numBins))]! += 1;
        }
      });
    }
    let bits = 0;
    for (let l = 0; l < M; l++) {
      const p = active[l]! / tokens;
      // The histogram over all tokens: the zeros land in bin 0.
      hist[l * numBins]! += tokens - active[l]!;
      bits += h2(p) + p * histEntropy(hist.subarray(l * numBins, (l + 1) * numBins), tokens);
      if (due(4 * numBins)) await pause(signal);
    }
    const quantise = async (c: SparseCodes): Promise<SparseCodes> => {
      const values = new Float32Array(c.values.length);
      await forBlocks(values.length, (q0, q1) => {
        for (let q = q0; q < q1; q++) {
          const v = c.values[q]!;
          if (!(v > 0)) continue;
          const l = c.indices[q]!;
          const w = maxv[l]! / numBins;
          values[q] = (Math.min(numBins - 1, Math.floor(v / w)) + 0.5) * w;
        }
      });
      return { ...c, values };
    };
    const mse = (await mseOf(sae, xs, codes, signal, quantise)) / sae.dIn; // per element
    const rmsePerDim = Math.sqrt(mse) / sae.dIn;
    out.push({ numBins, bitsPerToken: bits, rmsePerDim, valid: rmsePerDim < 0.01 });
  }
  return out;
}
