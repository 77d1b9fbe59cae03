/** `saekit compare` and `saekit match-layers`: thin calls into lib/features. */
import { constants } from 'node:fs';
import { access, realpath, stat } from 'node:fs/promises';
import path from 'node:path';

import type { DeviceOption } from '../backend/index.js';
import { openActivations } from '../data/index.js';
import { isRaw, resolveShardPaths } from '../data/shards.js';
import { argError, SaekitError } from '../errors.js';
import { Rng } from '../data/prng.js';
import { correlation, match, saeMatch } from '../features/index.js';
import { TWO_SOURCES_HINT } from '../features/correlation.js';
import { SAE_MATCH_BYTES_PER_PAIR } from '../features/match.js';
import { rsaPermutationTest, svccaPermutationTest } from '../features/similarity.js';
import { writeFileAtomic } from '../io/index.js';
import { SAE_FILE_NAMES } from '../io/sae-files.js';
import { SparseAutoencoder } from '../sae/index.js';
import { reportSkipped, TokenProgress } from './progress.js';

export interface CompareFlags {
  data: string;
  dataB?: string;
  kind: 'codes' | 'preacts';
  method: 'argmax' | 'mutual' | 'hungarian';
  threshold: number;
  top: number;
  /** --one-to-one (argmax only): univ_feat_geom's 1-1 filter. */
  oneToOne?: boolean;
  /** --compat univ-feat-geom: correlations scaled by (N - 1) / N as that repository computes them. */
  compat?: 'univ-feat-geom';
  maxTokens: number;
  maxBytes?: number;
  runs: number;
  maxPairs: number;
  /** --svcca-max-work: the most multiply-adds SVCCA with its shuffled baselines may take (default SVCCA_MAX_WORK). */
  svccaMaxWork?: number;
  json?: boolean;
  out?: string;
  overwrite?: boolean;
  onNonFinite: 'error' | 'skip';
  /** --tensor, --dtype and --d-in describe --data only. */
  tensor?: string;
  dtype?: 'float32' | 'float16' | 'bfloat16' | 'float64';
  dIn?: number;
  /** --tensor-b: the tensor to read from --data-b's .safetensors files (default: the only 2-D one). */
  tensorB?: string;
  device: string;
}

/**
 * An input that --out must never replace: an SAE argument, or a data argument with the files it
 * resolves to (folders and globs expanded as openActivations expands them).
 */
export type OutInput = { sae: string } | { flag: string; data: string; files: readonly string[] };

/**
 * The names `p` goes by: absolute as given, with its folder's links resolved, and with its own
 * link resolved (when it exists), so a file reached through a link is still the same file.
 */
export async function namesOf(p: string): Promise<string[]> {
  const abs = path.resolve(p);
  const dir = await realpath(path.dirname(abs)).catch(() => path.dirname(abs));
  return [...new Set([abs, path.join(dir, path.basename(abs)), await realpath(abs).catch(() => abs)])];
}

/**
 * The paths of `input` that --out must not be, each with how a message names it. An SAE folder
 * covers everything inside it; an SAE given as one of its files covers that file and the SAE
 * files beside it (the loader reads its cfg.json and weights from that folder).
 */
async function protectedPaths(input: OutInput): Promise<{ path: string; folder: boolean; what: string }[]> {
  if ('sae' in input) {
    const sae = input.sae;
    if ((await stat(sae).catch(() => undefined))?.isDirectory()) return [{ path: sae, folder: true, what: `'${sae}'` }];
    const beside = SAE_FILE_NAMES.map((name) => path.join(path.dirname(sae), name)).filter((p) => path.resolve(p) !== path.resolve(sae));
    return [{ path: sae, folder: false, what: `the SAE '${sae}'` }, ...beside.map((p) => ({ path: p, folder: false, what: `the ${path.basename(p)} of the SAE '${sae}'` }))];
  }
  const { flag, data } = input;
  return input.files.map((file) => ({ path: file, folder: false, what: file === path.resolve(data) ? `'${data}' (${flag})` : `'${file}', one of the files of ${flag} '${data}'` }));
}

/**
 * Throws when `target` (the file `flag` names, to be written) is one of the inputs' files or
 * lies inside an input folder, compared by real path (see OutInput and protectedPaths).
 */
export async function checkNotInput(flag: string, target: string, inputs: readonly OutInput[]): Promise<void> {
  const targetNames = await namesOf(target);
  for (const input of inputs) {
    for (const p of await protectedPaths(input)) {
      for (const name of await namesOf(p.path)) {
        const same = targetNames.includes(name);
        if (same || (p.folder && targetNames.some((o) => o.startsWith(name + path.sep)))) {
          throw new SaekitError('ERR_SAEKIT_ARG', `Expected ${flag} not to overwrite an input but '${target}' is ${same ? '' : 'inside '}${p.what}`);
        }
      }
    }
  }
}

/**
 * Checks before any work that an --out file can be written: its folder exists and is writable,
 * it is not a folder (nor named as one, ending in a separator), not one of the inputs' files (compared by real path: see OutInput and
 * protectedPaths), and it does not exist yet unless --overwrite was given.
 */
export async function checkOutFile(out: string | undefined, overwrite: boolean | undefined, inputs: readonly OutInput[]): Promise<void> {
  if (out === undefined) return;
  if (out === '') throw argError('--out', 'a file path', out);
  // path.resolve drops the separator, and the write would fail only at its rename, after the work.
  if (out.endsWith('/') || out.endsWith(path.sep)) throw new SaekitError('ERR_SAEKIT_ARG', `Expected --out to be a file but '${out}' ends in a path separator (a folder's name)`);
  const abs = path.resolve(out);
  const dir = await stat(path.dirname(abs)).catch(() => undefined);
  if (!dir?.isDirectory()) throw new SaekitError('ERR_SAEKIT_ARG', `Expected --out to be a file in an existing folder but '${path.dirname(out)}' is not a folder`);
  await access(path.dirname(abs), constants.W_OK).catch(() => {
    throw new SaekitError('ERR_SAEKIT_ARG', `Expected --out to be a file in a folder that can be written to but '${path.dirname(out)}' cannot`);
  });
  const st = await stat(out).catch(() => undefined);
  if (st?.isDirectory()) throw new SaekitError('ERR_SAEKIT_ARG', `Expected --out to be a file but '${out}' is a folder`);
  await checkNotInput('--out', out, inputs);
  if (st && !overwrite) throw new SaekitError('ERR_SAEKIT_ARG', `--out ${out} already exists; pass --overwrite to replace it, or choose another --out`);
}

/**
 * Checks before any work that --data-b can be read without --dtype and --d-in (which describe
 * --data only): a raw file has no header to give its element type and row width.
 */
async function checkDataB(dataB: string): Promise<void> {
  if (isRaw(dataB) && (await stat(dataB).catch(() => undefined))?.isFile()) {
    throw new SaekitError(
      'ERR_SAEKIT_ARG',
      `Expected a self-describing file for --data-b (.npy or .safetensors, or a folder or glob pattern of them; raw files are only for --data, with --dtype and --d-in) but received the raw file '${dataB}'`,
    );
  }
}

/**
 * An error from opening --data or --data-b in that side's flags: the library names its
 * arguments pathOrPaths and options.tensor, which main.ts's cliMessage would turn into <data> and
 * --tensor (train's and eval's flags); --data-b is read with --tensor-b and without --d-in (raw files are refused).
 */
function inFlagsOf(side: 'A' | 'B'): (e: unknown) => never {
  return (e: unknown) => {
    if (!(e instanceof SaekitError)) throw e;
    let named = e.message.replace(/\bpathOrPaths\b/g, side === 'A' ? '--data' : '--data-b');
    if (side === 'B') named = named.replace(/\boptions\.tensor\b/g, '--tensor-b').replace(/raw files need options\.dIn/g, 'raw files are only for --data');
    throw named === e.message ? e : new SaekitError(e.code, named);
  };
}

/**
 * --data and --data-b with the files they resolve to (as openActivations resolves them, errors
 * named by flag), for checkOutFile; none without --out, which is all they are for.
 */
async function dataInputs(f: CompareFlags): Promise<OutInput[]> {
  if (f.out === undefined || f.out === '') return [];
  const inputs: OutInput[] = [{ flag: '--data', data: f.data, files: await resolveShardPaths(f.data, { dIn: f.dIn }).catch(inFlagsOf('A')) }];
  if (f.dataB !== undefined) inputs.push({ flag: '--data-b', data: f.dataB, files: await resolveShardPaths(f.dataB, {}).catch(inFlagsOf('B')) });
  return inputs;
}

/**
 * Default --max-pairs: SVCCA and RSA use a random subsample of at most this many matched pairs.
 * docs/references.md §9 puts the limit for RSA's O(n^2) triangles near 20k pairs; in JS (float64 triangles,
 * a radix sort for the ranks) 20k pairs means ~200M dissimilarities per side, several GiB and
 * minutes, so the default is lower; --max-pairs raises it.
 */
export const DEFAULT_MAX_PAIRS = 5000;

/**
 * Largest estimated SVCCA work (multiply-adds: the one-sided Jacobi SVDs, about 15 n (dA^2 + dB^2)
 * for their sweeps, each a dot product, a rotation and two norms per column pair, plus each
 * shuffled run's CCA, n dA dB + dA dB min(dA, dB)) that compare runs: about half a minute of JS
 * (measured: n 2000, d 128 took 21 s). Above it SVCCA is skipped with a message (fewer pairs do
 * not shrink the d^2 factor).
 */
export const SVCCA_MAX_WORK = 2e9;
const SVD_SWEEP_FACTOR = 15;

/** `k` of `n` indices drawn at random (seeded), ascending; all of them when n <= k. */
function subsample(n: number, k: number, seed: bigint): number[] {
  if (n <= k) return Array.from({ length: n }, (_, i) => i);
  const perm = new Uint32Array(n);
  for (let i = 0; i < n; i++) perm[i] = i;
  new Rng(seed, 0x5a3b).shuffle(perm);
  return Array.from(perm.subarray(0, k)).sort((x, y) => x - y);
}

function rowsOf(W: Float32Array, d: number, idx: number[]): Float64Array {
  const out = new Float64Array(idx.length * d);
  idx.forEach((r, i) => {
    for (let j = 0; j < d; j++) out[i * d + j] = W[r * d + j]!;
  });
  return out;
}

export async function compare(pathA: string, pathB: string, f: CompareFlags, signal?: AbortSignal): Promise<void> {
  if (f.top !== 1 && f.method !== 'mutual') throw new SaekitError('ERR_SAEKIT_ARG', `Expected --top only with --method mutual but the method is ${f.method}`);
  if (f.oneToOne && f.method !== 'argmax') throw new SaekitError('ERR_SAEKIT_ARG', `Expected --one-to-one only with --method argmax but the method is ${f.method}`);
  // Each source would drop its own bad rows, and the two would stop lining up token by token.
  if (f.dataB !== undefined && f.onNonFinite === 'skip') {
    throw new SaekitError('ERR_SAEKIT_ARG', 'Expected --on-non-finite error with --data-b (skipping rows on either side would misalign the two sources token by token); clean the files first');
  }
  if (f.tensorB !== undefined && f.dataB === undefined) {
    throw new SaekitError('ERR_SAEKIT_ARG', `Expected --tensor-b only with --data-b (it names the tensor of --data-b's .safetensors files) but received --tensor-b '${f.tensorB}' without --data-b`);
  }
  if (f.dataB !== undefined) await checkDataB(f.dataB);
  await checkOutFile(f.out, f.overwrite, [{ sae: pathA }, { sae: pathB }, ...(await dataInputs(f))]);
  using a = await SparseAutoencoder.load(pathA, { device: f.device as DeviceOption });
  using b = await SparseAutoencoder.load(pathB, { device: f.device as DeviceOption });
  // --tensor, --dtype and --d-in describe --data; --data-b describes itself (--tensor-b picks its tensor).
  const srcA = await openActivations(f.data, { onNonFinite: f.onNonFinite, tensor: f.tensor, dtype: f.dtype, dIn: f.dIn }).catch(inFlagsOf('A'));
  let srcB;
  try {
    srcB = f.dataB ? await openActivations(f.dataB, { onNonFinite: f.onNonFinite, tensor: f.tensorB }).catch(inFlagsOf('B')) : undefined;
  } catch (err) {
    await srcA.close();
    throw err;
  }
  try {
    for (const [side, sae, src, file, p] of [['A', a, srcA, f.data, pathA], ['B', b, srcB ?? srcA, f.dataB ?? f.data, pathB]] as const) {
      if (sae.dIn !== src.dIn) {
        throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected the activations for SAE ${side} (${p}, dIn ${sae.dIn}) to have dIn ${sae.dIn} but ${file} has dIn ${src.dIn}`);
      }
    }
    if (srcB && srcA.numRows !== undefined && srcB.numRows !== undefined && srcA.numRows !== srcB.numRows && Math.min(srcA.numRows, srcB.numRows) < f.maxTokens) {
      throw new SaekitError(
        'ERR_SAEKIT_SHAPE',
        `Expected --data and --data-b to hold the same tokens (aligned one by one) but ${f.data} has ${srcA.numRows} rows and ${f.dataB} has ${srcB.numRows}`,
      );
    }
    // What the library's full mode holds: the float32 matrix (codes), 16 bytes per entry (preacts).
    const matrixBytes = a.numLatents * b.numLatents * (f.kind === 'preacts' ? 16 : 4);
    const maxBytes = f.maxBytes ?? 2 ** 30;
    if (f.method === 'hungarian' && matrixBytes > maxBytes) {
      throw new SaekitError(
        'ERR_SAEKIT_MEMORY',
        `--method hungarian needs the full ${a.numLatents} x ${b.numLatents} correlation matrix (${matrixBytes} bytes${f.kind === 'preacts' ? ' with --kind preacts: 16 per entry' : ''}), over --max-bytes ${maxBytes}; raise --max-bytes or use --method argmax or mutual (they work from top matches)`,
      );
    }
    process.stderr.write(`correlating ${a.numLatents} x ${b.numLatents} features (${f.kind}) over up to ${f.maxTokens.toLocaleString('en-US')} tokens\n`);
    const progress = new TokenProgress('correlating', Math.min(f.maxTokens, srcA.numRows ?? Infinity));
    // The full matrix when it fits in --max-bytes (default 1 GiB), else top matches (enough for 'argmax'
    // and 'mutual'); 'hungarian' needs the matrix, so it asks for it and fails before reading data.
    const c = await correlation({ sae: a, source: srcA }, { sae: b, ...(srcB ? { source: srcB } : {}) }, {
      kind: f.kind,
      output: f.method === 'hungarian' ? 'full' : 'auto',
      maxTokens: f.maxTokens,
      ...(f.maxBytes !== undefined ? { maxBytes: f.maxBytes } : {}),
      top: Math.max(5, f.top),
      reverse: f.method === 'mutual',
      ...(f.compat ? { compat: f.compat } : {}),
      // Where the SAEs are (--device auto: CUDA when usable); same result bits on either.
      device: a.device,
      onProgress: (t, passes) => progress.update(t, passes),
      ...(signal ? { signal } : {}),
    })
      .catch((e: unknown) => {
        // With --data-b, skipping is refused (the sources would stop lining up): the usual hint does not apply.
        if (srcB && e instanceof SaekitError && e.message.includes(TWO_SOURCES_HINT)) {
          throw new SaekitError(e.code, e.message.replace(TWO_SOURCES_HINT, '(with --data-b rows cannot be skipped, since the two sources must stay aligned token by token: clean the files first)'));
        }
        throw e;
      })
      .finally(() => progress.done());
    // match takes no signal: look after it (svcca's and rsa's permutation tests stop at their next slice).
    signal?.throwIfAborted();
    process.stderr.write(`correlation: ${c.mode === 'full' ? 'full matrix' : `top ${c.top.k} matches per feature`} over ${c.tokens.toLocaleString('en-US')} tokens\n`);
    // For every feature of B, its best correlation in A.
    let meanMax = 0;
    if (c.mode === 'top') {
      for (let j = 0; j < c.nB; j++) meanMax += c.top.r[j * c.top.k]! / c.nB;
    } else {
      // Row by row (the matrix is [nA, nB] row-major): each column's best in one pass.
      const best = new Float64Array(c.nB).fill(-1);
      for (let i = 0; i < c.nA; i++) {
        const row = c.r.subarray(i * c.nB, (i + 1) * c.nB);
        for (let j = 0; j < c.nB; j++) if (row[j]! > best[j]!) best[j] = row[j]!;
      }
      for (let j = 0; j < c.nB; j++) meanMax += best[j]! / c.nB;
    }
    // --compat univ-feat-geom keeps a pair when r > --threshold, as that repository compares.
    const m = await match(c, {
      method: f.method,
      threshold: f.threshold,
      ...(f.compat ? { strictThreshold: true } : {}),
      ...(f.method === 'mutual' ? { top: f.top } : {}),
      ...(f.oneToOne ? { oneToOne: true } : {}),
    });
    signal?.throwIfAborted();
    const [wa, wb] = [await a.weights(), await b.weights()];
    const kept = m.pairs.length;
    // SVCCA and RSA on a random subsample of at most --max-pairs pairs (docs/references.md §9).
    const used = subsample(kept, f.maxPairs, 0n).map((i) => m.pairs[i]!);
    const n = used.length;
    const pa = rowsOf(wa.W_dec, a.dIn, used.map((p) => p.a));
    const pb = rowsOf(wb.W_dec, b.dIn, used.map((p) => p.b));
    const summary: Record<string, unknown> = {
      // What was compared and how: everything that changes the numbers below.
      sae_a: pathA,
      sae_b: pathB,
      data: f.data,
      ...(f.dataB !== undefined ? { data_b: f.dataB } : {}),
      // How the data was read, where given: another tensor or row width is other data.
      ...(f.tensor !== undefined ? { tensor: f.tensor } : {}),
      ...(f.tensorB !== undefined ? { tensor_b: f.tensorB } : {}),
      ...(f.dtype !== undefined ? { dtype: f.dtype } : {}),
      ...(f.dIn !== undefined ? { d_in: f.dIn } : {}),
      ...(f.onNonFinite === 'skip' ? { on_non_finite: 'skip' } : {}),
      kind: f.kind,
      n_a: c.nA,
      n_b: c.nB,
      tokens: c.tokens,
      mean_max_correlation: meanMax,
      method: f.method,
      ...(f.method === 'mutual' ? { top: f.top } : {}),
      ...(f.oneToOne ? { one_to_one: true } : {}), // univ_feat_geom's 1-1 filter (--one-to-one)
      ...(f.compat ? { compat: f.compat } : {}),
      // Given: it sets full matrix or top lists (and, below one GEMM tile, the dense kinds' last bits).
      ...(f.maxBytes !== undefined ? { max_bytes: f.maxBytes } : {}),
      threshold: f.threshold,
      pairs_kept: kept,
      // No pair passed the threshold: no mean (JSON null), not NaN.
      mean_pair_correlation: kept > 0 ? m.meanScore : null,
      // The pairs SVCCA and RSA compare: all kept pairs, or a random subsample of --max-pairs.
      similarity_pairs: n < kept ? { used: n, of: kept, subsample: 'random (seed 0); raise --max-pairs for more' } : { used: n, of: kept },
      // Shuffled baselines behind each p-value (its resolution is 1 / (runs + 1)).
      runs: f.runs,
    };
    const [dA, dB] = [a.dIn, b.dIn];
    const maxWork = f.svccaMaxWork ?? SVCCA_MAX_WORK;
    const work = (pairs: number, runs: number) => SVD_SWEEP_FACTOR * pairs * (dA * dA + dB * dB) + runs * (pairs * dA * dB + dA * dB * Math.min(dA, dB));
    const svccaWork = work(n, f.runs);
    // SVCCA needs more pairs than dimensions: its cheapest run, with --runs 1.
    const leastWork = work(Math.max(dA, dB) + 1, 1);
    if (n <= Math.max(dA, dB)) {
      summary.svcca = {
        skipped:
          n < kept
            ? `needs more pairs (${n} of the ${kept} kept, by --max-pairs) than dimensions (${Math.max(dA, dB)}); raise --max-pairs`
            : `needs more matched pairs (${n}) than dimensions (${Math.max(dA, dB)})`,
      };
    } else if (svccaWork > maxWork) {
      const limit = `limit ${maxWork.toExponential(0)}, --svcca-max-work`;
      summary.svcca = {
        skipped:
          leastWork > maxWork
            ? `too slow at dIn ${dA} and ${dB}: even its cheapest run (${Math.max(dA, dB) + 1} pairs, more than the dimensions, with --runs 1) takes about ${leastWork.toExponential(1)} multiply-adds (${limit}); ` +
              `pass --svcca-max-work ${roundUp(svccaWork)} to run it on these ${n} pairs with --runs ${f.runs}`
            : `too slow: about ${svccaWork.toExponential(1)} multiply-adds for ${n} pairs of ${dA} and ${dB} dims with --runs ${f.runs} (${limit}); lower --runs or --max-pairs, or raise --svcca-max-work`,
      };
    } else {
      const t = await svccaPermutationTest(pa, pb, { n, dA, dB, runs: f.runs, seed: 0, ...(signal ? { signal } : {}) });
      summary.svcca = { score: t.score, shuffled_mean: mean(t.shuffled), p_value: t.pValue };
      signal?.throwIfAborted();
    }
    if (n >= 3) {
      const t = await rsaPermutationTest(pa, pb, { n, dA, dB, runs: f.runs, seed: 0, ...(signal ? { signal } : {}) });
      summary.rsa = { score: t.score, shuffled_mean: mean(t.shuffled), p_value: t.pValue };
      signal?.throwIfAborted();
    } else {
      summary.rsa = { skipped: `needs at least 3 matched pairs (${n})` };
    }
    reportSkipped(srcA);
    // A signal during the last step: nothing is written (stoppable reports it).
    signal?.throwIfAborted();
    if (f.out !== undefined) await writeFileAtomic(f.out, `${JSON.stringify({ ...summary, pairs: m.pairs }, null, 2)}\n`);
    if (f.json) {
      process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
      return;
    }
    const fmt = (v: unknown): string =>
      typeof v === 'number'
        ? String(Number(v.toPrecision(5)))
        : v === null ? 'none (no pair kept)' : v && typeof v === 'object' ? Object.entries(v).map(([k, x]) => `${k} ${fmt(x)}`).join(', ') : String(v);
    const width = Math.max(...Object.keys(summary).map((k) => k.length));
    for (const [k, v] of Object.entries(summary)) process.stdout.write(`${k.padEnd(width)}  ${fmt(v)}\n`);
  } finally {
    await srcA.close();
    await srcB?.close();
  }
}

export interface MatchLayersFlags {
  json?: boolean;
  out?: string;
  overwrite?: boolean;
  encoder?: boolean;
  /** false with --no-fold: match the unfolded JumpReLU weights. */
  fold?: boolean;
  device: string;
  /** --max-bytes: the most memory each assignment may take (saeMatch's options.maxBytes). */
  maxBytes?: number;
}

/** `x` rounded up to 2 significant digits (a limit that admits x). */
function roundUp(x: number): number {
  const unit = 10 ** (Math.floor(Math.log10(x)) - 1);
  return Number((Math.ceil(x / unit) * unit).toPrecision(2));
}

/** A byte count for a message: MiB below 1 GiB (a small assignment is not "0.0 GiB"), GiB above. */
export function bytesShown(bytes: number): string {
  return bytes < 2 ** 30 ? `${Math.max(0.1, bytes / 2 ** 20).toFixed(1)} MiB` : `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

function mean(x: Float64Array): number {
  let s = 0;
  for (const v of x) s += v;
  return x.length ? s / x.length : Number.NaN;
}

export async function matchLayers(paths: string[], f: MatchLayersFlags, signal?: AbortSignal): Promise<void> {
  if (paths.length < 2) throw new SaekitError('ERR_SAEKIT_ARG', `Expected at least 2 SAEs for match-layers but received ${paths.length}`);
  await checkOutFile(f.out, f.overwrite, paths.map((sae) => ({ sae })));
  const saes: SparseAutoencoder[] = [];
  try {
    for (const p of paths) saes.push(await SparseAutoencoder.load(p, { device: f.device as DeviceOption }));
    for (let i = 1; i < saes.length; i++) {
      if (saes[i]!.numLatents !== saes[0]!.numLatents || saes[i]!.dIn !== saes[0]!.dIn) {
        throw new SaekitError(
          'ERR_SAEKIT_SHAPE',
          `Expected SAEs of the same size for match-layers but ${paths[0]} has dIn ${saes[0]!.dIn}, ${saes[0]!.numLatents} latents and ${paths[i]} has dIn ${saes[i]!.dIn}, ${saes[i]!.numLatents} latents`,
        );
      }
    }
    const steps: { from: string; to: string; encoder: boolean; fold: boolean; mean_mse: number; permutation: number[] }[] = [];
    const n = saes[0]!.numLatents;
    for (let i = 0; i + 1 < saes.length; i++) {
      // The assignment holds about SAE_MATCH_BYTES_PER_PAIR bytes per pair of latents and reports no progress: say what runs.
      process.stderr.write(`matching ${paths[i]} -> ${paths[i + 1]}: ${n} x ${n} assignment (about ${bytesShown(SAE_MATCH_BYTES_PER_PAIR * n * n)} of memory)...\n`);
      const r = await saeMatch(saes[i]!, saes[i + 1]!, { fold: f.fold !== false, encoder: Boolean(f.encoder), ...(f.maxBytes !== undefined ? { maxBytes: f.maxBytes } : {}), ...(signal ? { signal } : {}) }).catch((e: unknown) => {
        // saeMatch names its arguments saeA and saeB; name the files instead.
        if (!(e instanceof SaekitError)) throw e;
        const named = e.message
          .replace(/for sae([AB])\.threshold\[(\d+)\]/, (_m, side: string, k: string) => `for threshold[${k}] of ${paths[side === 'A' ? i : i + 1]}`)
          .replace(/\bsae([AB])'s latent/, (_m, side: string) => `${paths[side === 'A' ? i : i + 1]}'s latent`)
          .replace('pass fold: false to match without folding', 'pass --no-fold to match without folding');
        throw named === e.message ? e : new SaekitError(e.code, named);
      });
      steps.push({ from: paths[i]!, to: paths[i + 1]!, encoder: Boolean(f.encoder), fold: f.fold !== false, mean_mse: r.meanMse, permutation: Array.from(r.permutation) });
    }
    signal?.throwIfAborted();
    if (f.out !== undefined) await writeFileAtomic(f.out, `${JSON.stringify(steps, null, 2)}\n`);
    if (f.json) {
      process.stdout.write(`${JSON.stringify(steps.map(({ permutation, ...s }) => ({ ...s, matched: permutation.length })), null, 2)}\n`);
      return;
    }
    // Folding concerns JumpReLU thresholds only; a TopK SAE has none.
    const jumprelu = saes.some((s) => s.architecture === 'jumprelu');
    const what = `${f.encoder ? 'decoder and encoder' : 'decoder'} parameters${jumprelu ? (f.fold === false ? ' (thresholds not folded)' : ' (thresholds folded in)') : ''}`;
    for (const s of steps) process.stdout.write(`${s.from} -> ${s.to}: mean MSE of matched ${what} ${s.mean_mse.toPrecision(5)}\n`);
  } finally {
    for (const s of saes) s.dispose();
  }
}
