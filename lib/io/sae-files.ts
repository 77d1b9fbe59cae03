/**
 * SAE files of the Python ecosystem, as typed arrays and plain configs (no model code here:
 * `SparseAutoencoder.load` / `save` in lib/sae call into this module).
 *
 * | format       | files                                   | tensors (-> SAELens orientation)                          |
 * |--------------|-----------------------------------------|-----------------------------------------------------------|
 * | SAELens      | cfg.json + sae_weights.safetensors      | W_enc [d, F], b_enc [F], W_dec [F, d], b_dec [d], threshold [F] (jumprelu) |
 * | sparsify     | cfg.json + sae.safetensors              | encoder.weight [F, d] (= W_enc^T), encoder.bias, W_dec [F, d], b_dec |
 * | Gemma Scope  | params.npz                              | W_enc [d, F], W_dec [F, d], b_enc, b_dec, threshold; JumpReLU, no b_dec subtraction |
 *
 * A file holding any other tensor (a skip connection's W_skip, a training-state tensor) is
 * refused naming it, as SAELens's and sparsify's own strict loaders refuse it, rather than loaded
 * without it. Missing sparsify cfg fields take SparseCoderConfig's defaults, a SAELens TopK
 * config without k SAELens's (100); an integer field (d_in, k, ...) that is null is refused, not
 * taken as missing.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import path from 'node:path';

import { argError, arrayTypeError, SaekitError } from '../errors.js';
import { native, packageRoot } from '../native/index.js';
import { due, forBlocks, pause, runAll, runSliced } from '../slices.js';
import { checkBool, checkInt, checkKept, checkOneOf, checkOptions, optionNames } from '../validate.js';
import { checkFolderPath, checkPath, fsError, type IoTensor, listForMessage, previewValue, statOrMissing, transposeSteps } from './common.js';
import { parsePythonJson } from './json-keys.js';
import { jsonLimitExceeded, type JsonLimits } from './json-limits.js';
import { readNpzChecked } from './npz.js';
import { checkJsonObject, checkWriteSaeOptions, type WriteSaeOptions } from './sae-options.js';
import { readSafetensors, writeSafetensors } from './safetensors.js';
import { keepMode, makeDirs, readBoundedFile, syncFolder, writeFileAtomic } from './source.js';

/**
 * The SAE files readSaeFiles knows: the config and each layout's weights. It looks for them in an
 * SAE's folder, also when given one of them (SAELens or sparsify weights are read with the
 * cfg.json beside them).
 */
export const SAE_FILE_NAMES = ['cfg.json', 'sae_weights.safetensors', 'sae.safetensors', 'params.npz'] as const;

/** The SAE file layouts readSaeFiles reads (writeSaeFiles writes the first two). */
export type SaeFileFormat = 'saelens' | 'sparsify' | 'gemma-scope';

/** What a file says about the model, normalised. */
export interface SaeFileConfig {
  format: SaeFileFormat;
  architecture: 'topk' | 'jumprelu';
  dIn: number;
  numLatents: number;
  /** TopK only. */
  k?: number;
  applyBDecToInput: boolean;
  /** The dtype the weights were stored in. */
  dtype: string;
  /** The cfg.json as read (empty for Gemma Scope). */
  raw: Record<string, unknown>;
  /**
   * What the file says about where the SAE came from (SAELens: cfg.json's `metadata`, such as
   * `model_name`, `hook_name`, `neuronpedia_id`, or those fields of a pre-6.0 flat config;
   * empty for sparsify and Gemma Scope), without the fields a save writes itself
   * (`sae_lens_version`, `saekit_version`, the save id). A SAELens save carries it.
   */
  metadata: Record<string, unknown>;
  /** SAELens 6's `reshape_activations` ('none' or 'hook_z': the hook's heads are flattened into dIn); a SAELens save carries it. */
  reshapeActivations?: 'none' | 'hook_z';
}

/** Weights in the SAELens orientation, float32. */
export interface SaeFileWeights {
  W_enc: Float32Array;
  b_enc: Float32Array;
  W_dec: Float32Array;
  b_dec: Float32Array;
  threshold?: Float32Array;
}

/** What readSaeFiles returns: the normalised config and the float32 weights. */
export interface SaeFiles {
  config: SaeFileConfig;
  weights: SaeFileWeights;
  /** The files read. */
  files: string[];
}

function formatError(file: string, reason: string): SaekitError {
  return new SaekitError('ERR_SAEKIT_FORMAT', `${file}: ${reason}`);
}

/** Why the file refuses to be read as data: a FIFO would block the read forever, a device (/dev/zero) never ends. */
const NOT_REGULAR = 'not a regular file (a folder, FIFO or device)';

/** Whether `p` is a regular file (following links); false when it does not exist; a format error when it exists as something else. */
async function isFile(p: string): Promise<boolean> {
  const st = await statOrMissing(p);
  if (!st) return false;
  if (!st.isFile()) throw formatError(p, NOT_REGULAR);
  return true;
}

/** Finds the format of a folder or file. */
async function detect(pathOrDir: string): Promise<{ format: SaeFileFormat; dir: string; weights: string }> {
  const st = await statOrMissing(pathOrDir);
  if (!st) throw new SaekitError('ERR_SAEKIT_ARG', `Expected an SAE folder or file for pathOrDir but ${pathOrDir} does not exist`);
  if (!st.isFile() && !st.isDirectory()) throw formatError(pathOrDir, `${NOT_REGULAR}, nor an SAE folder`);
  if (st.isFile()) {
    const dir = path.dirname(pathOrDir);
    const base = path.basename(pathOrDir);
    if (base.endsWith('.npz')) return { format: 'gemma-scope', dir, weights: pathOrDir };
    if (base === 'sae_weights.safetensors') return { format: 'saelens', dir, weights: pathOrDir };
    if (base === 'sae.safetensors') return { format: 'sparsify', dir, weights: pathOrDir };
    if (base === 'cfg.json') return detect(dir);
    throw formatError(pathOrDir, 'not a known SAE file (expected params.npz, sae_weights.safetensors, sae.safetensors or cfg.json)');
  }
  const j = (f: string) => path.join(pathOrDir, f);
  const saelens = await isFile(j('sae_weights.safetensors'));
  const sparsify = await isFile(j('sae.safetensors'));
  if (saelens && sparsify) {
    // Both layouts' weights (another tool saved into the folder): cfg.json says which is current.
    const cfg = await readCfg(j('cfg.json'));
    const isSparsify = cfg.num_latents !== undefined || cfg.expansion_factor !== undefined;
    return isSparsify ? { format: 'sparsify', dir: pathOrDir, weights: j('sae.safetensors') } : { format: 'saelens', dir: pathOrDir, weights: j('sae_weights.safetensors') };
  }
  if (saelens) return { format: 'saelens', dir: pathOrDir, weights: j('sae_weights.safetensors') };
  if (sparsify) return { format: 'sparsify', dir: pathOrDir, weights: j('sae.safetensors') };
  if (await isFile(j('params.npz'))) return { format: 'gemma-scope', dir: pathOrDir, weights: j('params.npz') };
  // A sparsify run folder holds one SAE per hookpoint, a Gemma Scope width folder one per L0,
  // each in its own subfolder.
  const inner = await subfoldersWithSaes(pathOrDir);
  if (inner.length > 0) {
    const kind = inner.every((s) => s.file === 'sae.safetensors') ? 'a sparsify run' : inner.every((s) => s.file === 'params.npz') ? 'Gemma Scope' : 'SAE folders';
    const names = inner.map((s) => s.name);
    throw formatError(pathOrDir, `holds one SAE per subfolder (${kind}: ${listForMessage(names)}); load one of them, e.g. ${path.join(pathOrDir, names[0]!)}`);
  }
  throw formatError(pathOrDir, 'no SAE files found (expected sae_weights.safetensors + cfg.json (SAELens), sae.safetensors + cfg.json (sparsify) or params.npz (Gemma Scope))');
}

/** The subfolders of `dir` (at most the first 1000 entries looked at) that hold SAE weights, by name, each with the weights file found. */
async function subfoldersWithSaes(dir: string): Promise<{ name: string; file: string }[]> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  const out: { name: string; file: string }[] = [];
  for (const e of entries.slice(0, 1000)) {
    if (!e.isDirectory()) continue;
    for (const f of ['sae.safetensors', 'sae_weights.safetensors', 'params.npz']) {
      if ((await stat(path.join(dir, e.name, f)).catch(() => undefined))?.isFile()) {
        out.push({ name: e.name, file: f });
        break;
      }
    }
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** A cfg.json is a few kilobytes; a larger file is not one. */
const MAX_CFG_BYTES = 16 << 20;

/**
 * Bounds on cfg.json's JSON checked before parsing (see json-limits.ts): configs nest a few
 * levels and hold a few hundred values (a million leaves room for a per-latent list), while
 * 16 MiB of `{},` (5.6 million objects) or `[[[` would cost hundreds of MB in JSON.parse. The
 * depth is the safetensors reader's.
 */
const CFG_LIMITS: Readonly<JsonLimits> = { maxDepth: 128, maxValues: 1_000_000 };

/** The bytes of `file`, a regular file of at most `limit` bytes (readBoundedFile); `missing` says why its absence is an error. */
async function readRegularFile(file: string, limit: number, missing: string): Promise<Uint8Array> {
  const bytes = await readBoundedFile(file, limit, (size) => `${path.basename(file)} is ${size} bytes (over ${limit >> 20} MiB)`);
  if (!bytes) throw formatError(file, missing);
  return bytes;
}

async function readCfg(file: string): Promise<Record<string, unknown>> {
  return readJsonObject(file, 'missing cfg.json next to the weights');
}

/** A JSON object file of at most MAX_CFG_BYTES (cfg.json, activation_scaler.json), read as Python's json.load reads it. */
async function readJsonObject(file: string, missing: string): Promise<Record<string, unknown>> {
  const name = path.basename(file);
  const bytes = await readRegularFile(file, MAX_CFG_BYTES, missing);
  let text: string;
  try {
    // Fatal: the default decoder would turn bad bytes into U+FFFD and read a different config.
    // A byte-order mark is kept, so JSON.parse rejects it as Python's json.load does.
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw formatError(file, `${name} is not valid UTF-8`);
  }
  const excess = jsonLimitExceeded(bytes, CFG_LIMITS);
  if (excess !== undefined) throw formatError(file, `${name} ${excess}`);
  let cfg: unknown;
  try {
    // Python's json.dump writes NaN and Infinity for such floats (allow_nan=True), and json.load reads them.
    cfg = parsePythonJson(text);
  } catch (err) {
    throw formatError(file, `invalid JSON (${(err as Error).message})`);
  }
  if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg)) throw formatError(file, `${name} is not a JSON object`);
  return cfg as Record<string, unknown>;
}

/** The value at a dotted key ("activation_fn_kwargs.k"), or undefined. */
function fieldAt(cfg: Record<string, unknown>, key: string): unknown {
  let v: unknown = cfg;
  for (const part of key.split('.')) {
    v = v !== null && typeof v === 'object' && !Array.isArray(v) && Object.hasOwn(v, part) ? (v as Record<string, unknown>)[part] : undefined;
  }
  return v;
}

function intField(cfg: Record<string, unknown>, file: string, ...keys: string[]): number {
  const v = optionalIntField(cfg, file, ...keys);
  if (v === undefined) throw formatError(file, `missing field ${keys.join(' (or ')}${keys.length > 1 ? ')' : ''}`);
  return v;
}

/**
 * intField, or undefined when none of the keys is present. Only an absent key is missing: null
 * (Python's None) is refused like any other non-integer, rather than taking the default.
 */
function optionalIntField(cfg: Record<string, unknown>, file: string, ...keys: string[]): number | undefined {
  for (const key of keys) {
    const v = fieldAt(cfg, key);
    if (v === undefined) continue;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > 1 << 30) {
      throw formatError(file, `field ${key} must be a non-negative integer below 2^30 but is ${previewValue(v)}`);
    }
    return v;
  }
  return undefined;
}

/**
 * A boolean field: true or false, `fallback` when absent. null (Python's None) is read as false
 * where false is also the default (None is falsy where the Python code tests the field), and
 * refused where the default is true, since there it would mean the opposite of the absent field.
 * Anything else is an error: "false" is a non-empty string (truthy in JavaScript and Python),
 * and 1 or "true" would be silently ignored by a test for === true.
 */
function boolField(cfg: Record<string, unknown>, file: string, key: string, fallback: boolean): boolean {
  const v = fieldAt(cfg, key);
  if (v === undefined) return fallback;
  if (v === null && !fallback) return false;
  if (typeof v !== 'boolean') throw formatError(file, `field ${key} must be true or false but is ${previewValue(v)}`);
  return v;
}

/** A config string for a message: quoted and cut like previewValue, other values described. */
function shownValue(v: unknown): string {
  return typeof v === 'string' ? `'${v.length > 40 ? `${v.slice(0, 40)}...` : v}'` : `(${previewValue(v)})`;
}

/**
 * Sizes the model can be built with, checked here so that the error names the file (the
 * model's own checks cannot): at least one input dimension and one latent, and
 * SparseAutoencoder's limits of 2^20 inputs, 2^24 latents and 2^34 weights per matrix.
 */
function checkDims(file: string, dIn: number, numLatents: number, names: [string, string]): void {
  const dims = `${names[0]} = ${dIn} and ${names[1]} = ${numLatents}`;
  if (dIn < 1 || numLatents < 1) throw formatError(file, `${dims}, but an SAE needs at least one input dimension and one latent`);
  if (dIn > 2 ** 20 || numLatents > 2 ** 24 || dIn * numLatents > 2 ** 34) {
    throw formatError(file, `${dims} exceed the supported sizes (d_in up to 2^20, latents up to 2^24, d_in × latents up to 2^34)`);
  }
}

/**
 * Any float tensor as float32 (float64 rounded to nearest, bf16/f16 through the addon's exact
 * conversion, a piece at a time in slices between turns of the event loop), checked to be
 * finite here, where the file can be named (the model would refuse it too, without the file).
 */
async function toF32(t: IoTensor, file: string, name: string): Promise<Float32Array> {
  let out: Float32Array;
  switch (t.dtype) {
    case 'float32':
      out = t.data as Float32Array;
      break;
    case 'float64':
    case 'bfloat16':
    case 'float16': {
      const wide = new Float32Array(t.data.length);
      const dtype = t.dtype;
      await forBlocks(wide.length, (at, end) => {
        // set() rounds each float64 to float32 as Float32Array.from does.
        if (dtype === 'float64') wide.set((t.data as Float64Array).subarray(at, end), at);
        else native().convertInto((t.data as Uint16Array).subarray(at, end), dtype, wide.subarray(at, end), 'float32');
      });
      out = wide;
      break;
    }
    default:
      throw formatError(file, `tensor ${name} has dtype ${t.dtype}; expected a float dtype`);
  }
  await checkFinite(out, t.shape, file, name);
  return out;
}

/** Floats per anyNonFinite call in firstNonFinite. */
const SCAN_PIECE = 1 << 20;

/** The first NaN or infinity of `a` (of `shape`): its value and where, by row and column when 2-D; null when none. */
async function firstNonFinite(a: Float32Array, shape: readonly number[]): Promise<{ value: string; where: string } | null> {
  // Scanned in pieces between which the event loop may run: a few ms per 64 MiB in cache, but the
  // first touch of pages a read just filled cost ~6 us a page on a VM host (~100 ms for 64 MiB).
  let any = false;
  for (let at = 0; at < a.length && !any; at += SCAN_PIECE) {
    const end = Math.min(a.length, at + SCAN_PIECE);
    any = native().anyNonFinite(a, at, end);
    if (due(4 * (end - at))) await pause();
  }
  if (!any) return null;
  const i = a.findIndex((v) => !Number.isFinite(v));
  const cols = shape.length === 2 ? shape[1]! : 0;
  return { value: Number.isNaN(a[i]) ? 'NaN' : String(a[i]), where: cols > 0 ? `row ${Math.floor(i / cols)}, column ${i % cols}` : `element ${i}` };
}

/**
 * After folding a file's scales into the weights: finite weights can overflow float32 when
 * multiplied (ERR_SAEKIT_NONFINITE naming the file, the fold and where, rather than a later
 * error from the model that names no file).
 */
async function checkFolded(w: SaeFileWeights, dIn: number, numLatents: number, file: string, how: string): Promise<void> {
  const parts: [Float32Array | undefined, string, number[]][] = [
    [w.W_enc, 'W_enc', [dIn, numLatents]],
    [w.b_enc, 'b_enc', [numLatents]],
    [w.W_dec, 'W_dec', [numLatents, dIn]],
    [w.threshold, 'threshold', [numLatents]],
  ];
  for (const [a, name, shape] of parts) {
    const bad = a && (await firstNonFinite(a, shape));
    if (bad) throw new SaekitError('ERR_SAEKIT_NONFINITE', `${file}: tensor ${name} overflows float32 at ${bad.where} when ${how}`);
  }
}

/** Throws ERR_SAEKIT_NONFINITE (the model's code for such weights) naming the file and the first NaN or infinity. */
async function checkFinite(a: Float32Array, shape: readonly number[], file: string, name: string): Promise<void> {
  const bad = await firstNonFinite(a, shape);
  if (bad) throw new SaekitError('ERR_SAEKIT_NONFINITE', `${file}: tensor ${name} has ${bad.value} at ${bad.where} (weights must be finite)`);
}

function checkShape(file: string, name: string, t: { shape: readonly number[] }, want: number[]): void {
  if (t.shape.length !== want.length || t.shape.some((d, i) => d !== want[i])) {
    throw formatError(file, `tensor ${name} has shape [${listForMessage(t.shape)}] but the config says [${want.join(', ')}]`);
  }
}


/** The float64 norm of row `i` of W_dec ([numLatents, dIn]). */
function rowNorm(W_dec: Float32Array, i: number, dIn: number): number {
  let s = 0;
  for (let d = 0; d < dIn; d++) s += W_dec[i * dIn + d]! ** 2;
  return Math.sqrt(s);
}

/**
 * Each latent's decoder-row norm (float64) and what folding does with it: 1 for a row left as it
 * is (zero, or unit to 1e-7), else the norm. Row-major over W_dec, yielding per row. @internal
 */
function* foldFactors(W_dec: Float32Array, dIn: number, numLatents: number): Generator<number, { norm: Float64Array; factor: Float64Array }> {
  const norm = new Float64Array(numLatents);
  const factor = new Float64Array(numLatents);
  for (let i = 0; i < numLatents; i++) {
    const n = rowNorm(W_dec, i, dIn);
    norm[i] = n;
    factor[i] = !(n > 0) || Math.abs(n - 1) < 1e-7 ? 1 : n;
    yield dIn;
  }
  return { norm, factor };
}

/**
 * Refuses weights that foldDecoderNorms would take past the float32 range (ERR_SAEKIT_NONFINITE
 * naming the latent, its decoder norm and the tensor, as normalizeDecoder() does), before
 * anything is changed: save() folds a JumpReLU SAE's norms and would otherwise write infinities
 * that load() refuses. The first such latent is named, and its first overflowing tensor (b_enc,
 * threshold, then W_enc by row).
 */
export function checkDecoderNormFold(w: SaeFileWeights, dIn: number, numLatents: number): void {
  runAll(checkDecoderNormFoldSteps(w, dIn, numLatents));
}

/** checkDecoderNormFold as work for runAll / runSliced: W_enc is scanned by rows (contiguous), not by latents. @internal */
export function* checkDecoderNormFoldSteps(w: SaeFileWeights, dIn: number, numLatents: number): Generator<number, void> {
  yield* checkFoldOverflowSteps(w, dIn, numLatents, yield* foldFactors(w.W_dec, dIn, numLatents));
}

/** checkDecoderNormFoldSteps with the decoder norms and factors already computed. */
function* checkFoldOverflowSteps(w: SaeFileWeights, dIn: number, numLatents: number, { norm, factor }: { norm: Float64Array; factor: Float64Array }): Generator<number, void> {
  const badRow = new Int32Array(numLatents).fill(-1); // each latent's first W_enc row that overflows
  for (let d = 0; d < dIn; d++) {
    const o = d * numLatents;
    for (let i = 0; i < numLatents; i++) {
      if (badRow[i]! < 0 && !Number.isFinite(Math.fround(w.W_enc[o + i]! * factor[i]!))) badRow[i] = d;
    }
    yield numLatents;
  }
  for (let i = 0; i < numLatents; i++) {
    if (factor[i] === 1) continue;
    let bad = Number.isFinite(Math.fround(w.b_enc[i]! * factor[i]!)) ? '' : 'b_enc';
    if (w.threshold && !Number.isFinite(Math.fround(w.threshold[i]! * factor[i]!))) bad ||= 'threshold';
    if (!bad && badRow[i]! >= 0) bad = `W_enc (row ${badRow[i]})`;
    if (bad) {
      throw new SaekitError(
        'ERR_SAEKIT_NONFINITE',
        `Expected weights that stay finite when latent ${i} is rescaled by its decoder norm ${norm[i]} (save() writes unit decoder rows) but its ${bad} overflows float32; nothing was written`,
      );
    }
  }
}

/**
 * Scales each latent so its decoder row has unit norm, keeping the model's function where the
 * activation is equivariant to z_i -> z_i n_i (JumpReLU with threshold_i n_i; SAELens TopK with
 * rescale_acts_by_decoder_norm): W_enc[:, i] and b_enc[i] (and threshold[i]) times n_i, W_dec[i] / n_i.
 * Zero rows are left as they are, or with `silenceZeroRows` get a zero encoder column and bias:
 * a model that multiplies pre-activations by the norms (SAELens's rescale) never fires them.
 * Returns the rows rescaled and the first zero row (-1: none).
 */
export function foldDecoderNorms(w: SaeFileWeights, dIn: number, numLatents: number, silenceZeroRows = false): { rescaled: number; zeroRow: number } {
  return runAll(foldDecoderNormsSteps(w, dIn, numLatents, silenceZeroRows));
}

/**
 * foldDecoderNorms as work for runAll / runSliced (the loaders and save() run it in slices
 * between turns of the event loop). Every value is computed as one latent at a time would (x * n
 * or x / n with n the float64 norm, rounded once to float32); W_enc is walked by rows. With
 * `refuseOverflow`, first makes checkDecoderNormFold's check from the same norms (save() of a
 * JumpReLU SAE: one pass over W_dec for both). @internal
 */
export function* foldDecoderNormsSteps(w: SaeFileWeights, dIn: number, numLatents: number, silenceZeroRows = false, refuseOverflow = false): Generator<number, { rescaled: number; zeroRow: number }> {
  checkInt('dIn', dIn, 1, 2 ** 31 - 1);
  checkInt('numLatents', numLatents, 1, 2 ** 31 - 1);
  checkBool('silenceZeroRows', silenceZeroRows);
  if (w === null || typeof w !== 'object') throw argError('w', 'an object with W_enc, b_enc, W_dec (and threshold)', w);
  const lengths = { W_enc: dIn * numLatents, b_enc: numLatents, W_dec: numLatents * dIn, threshold: numLatents };
  for (const name of ['W_enc', 'b_enc', 'W_dec', 'threshold'] as const) {
    const a: unknown = w[name];
    if (name === 'threshold' && a === undefined) continue;
    if (!(a instanceof Float32Array) || a.length !== lengths[name]) {
      throw argError(`w.${name}`, `a Float32Array of length ${lengths[name]} (dIn = ${dIn}, numLatents = ${numLatents})`, a, a instanceof Float32Array ? 'ERR_SAEKIT_SHAPE' : 'ERR_SAEKIT_ARG');
    }
  }
  const factors = yield* foldFactors(w.W_dec, dIn, numLatents);
  if (refuseOverflow) yield* checkFoldOverflowSteps(w, dIn, numLatents, factors);
  const { norm, factor } = factors;
  let rescaled = 0;
  let zeroRow = -1;
  const zeros: number[] = [];
  for (let i = 0; i < numLatents; i++) {
    if (!(norm[i]! > 0)) {
      if (zeroRow < 0) zeroRow = i;
      if (silenceZeroRows) zeros.push(i);
      continue;
    }
    if (factor[i] === 1) continue;
    rescaled++;
    const n = factor[i]!;
    for (let d = 0; d < dIn; d++) w.W_dec[i * dIn + d] = w.W_dec[i * dIn + d]! / n;
    w.b_enc[i] = w.b_enc[i]! * n;
    if (w.threshold) w.threshold[i] = w.threshold[i]! * n;
    yield dIn;
  }
  if (rescaled > 0 || zeros.length > 0) {
    for (let d = 0; d < dIn; d++) {
      const o = d * numLatents;
      // A factor of 1 leaves a value exactly as it was (NaN payloads aside, which weights never hold).
      if (rescaled > 0) for (let i = 0; i < numLatents; i++) w.W_enc[o + i] = w.W_enc[o + i]! * factor[i]!;
      for (const i of zeros) w.W_enc[o + i] = 0;
      yield numLatents;
    }
  }
  for (const i of zeros) w.b_enc[i] = 0;
  return { rescaled, zeroRow };
}

/**
 * Refuses a file holding tensors (arrays) other than `known`: a tensor saekit would ignore, such
 * as a skip connection's W_skip, changes what the model computes. SAELens's and sparsify's own
 * loaders are strict in the same way (load_state_dict / load_model with strict=True).
 */
function checkNoExtraTensors(file: string, present: string[], known: string[]): void {
  const extra = present.filter((n) => !known.includes(n));
  if (extra.length === 0) return;
  const skip = extra.some((n) => /skip/i.test(n));
  throw formatError(
    file,
    `holds ${extra.length === 1 ? 'a tensor' : 'tensors'} saekit does not know (${listForMessage(extra)})` +
      (skip ? ': skip connections are not supported yet' : `; expected only ${listForMessage(known)}`),
  );
}

/**
 * The tensors named in `shapes` (and those of `optional` the file has); any other tensor is
 * refused. Everything is checked from the header before any tensor is read: names, float dtypes,
 * `checkMetadata` on the file's __metadata__, then each tensor's shape against the config's, so
 * a cfg.json beside a larger SAE's weights is refused without reading them.
 */
async function readTensors(
  file: string,
  shapes: Record<string, number[]>,
  optional: Record<string, number[]>,
  checkMetadata: (metadata: Record<string, string>) => void,
): Promise<Record<string, IoTensor>> {
  const names = Object.keys(shapes);
  const all = { ...shapes, ...optional };
  const r = await readSafetensors(file);
  try {
    checkNoExtraTensors(
      file,
      r.tensors.map((t) => t.name),
      Object.keys(all),
    );
    for (const n of names) if (!r.get(n)) throw formatError(file, `missing tensor ${n} (has: ${listForMessage(r.tensors.map((t) => t.name)) || 'none'})`);
    // Weights are floats: any other stored dtype (I8, BOOL, F8_E4M3, ...) is refused before reading.
    for (const n of Object.keys(all)) {
      const dtype = r.get(n)?.code;
      if (dtype !== undefined && !SAFETENSORS_FLOATS.has(dtype)) throw formatError(file, `tensor ${n} has dtype ${dtype}; expected a float dtype (F32, F16, BF16, F64)`);
    }
    checkMetadata(r.metadata);
    for (const [n, shape] of Object.entries(all)) {
      const e = r.get(n);
      if (e) checkShape(file, n, e, shape);
    }
    const out: Record<string, IoTensor> = {};
    for (const n of Object.keys(all)) if (r.get(n)) out[n] = await r.read(n);
    return out;
  } finally {
    await r.close();
  }
}

/** The key both files of one save carry (cfg.json and the weights' __metadata__), so a torn pair is noticed. */
const SAVE_ID = 'saekit_save_id';

/** Refuses a cfg.json and weights file written by two different saves (a save cut short between its two renames). */
function checkSameSave(cfgFile: string, cfgId: unknown, weightsFile: string, metadata: Record<string, string>): void {
  const wId = metadata[SAVE_ID];
  // Weights from a saekit save name their save; a cfg.json without that id (another library's,
  // left by a save over its folder that stopped between the renames) does not belong to them.
  if (wId !== undefined && cfgId !== wId) {
    const ids = typeof cfgId === 'string' ? `save ids ${cfgId} and ${wId}` : `cfg.json has no save id, the weights have ${wId}`;
    throw formatError(cfgFile, `belongs to another save than ${path.basename(weightsFile)} (${ids}: a save was interrupted; save the SAE again)`);
  }
}

/**
 * The metadata fields of SAELens's config (sae-libraries.md §3.5): in cfg.json's `metadata` from
 * 6.0 on, at the top level of older flat configs.
 */
const SAELENS_DESCRIPTIVE_FIELDS = [
  'sae_lens_training_version',
  'model_name',
  'model_class_name',
  'hook_name',
  'hook_head_index',
  'context_size',
  'prepend_bos',
  'seqpos_slice',
  'model_from_pretrained_kwargs',
  'dataset_path',
  'exclude_special_tokens',
  'sequence_separator_token',
  'disable_concat_sequences',
  'neuronpedia_id',
];

/**
 * A SAELens cfg.json's metadata without the fields a save writes (SaeFileConfig.metadata): the
 * `metadata` object of a 6.x config, or the metadata fields at the top level of a flat pre-6.0
 * one (whose `hook_point` is 6.x's `hook_name`). Copied as data properties (a key such as
 * "__proto__" stays a plain key).
 */
function saelensMetadata(cfg: Record<string, unknown>): Record<string, unknown> {
  const m = fieldAt(cfg, 'metadata');
  if (m !== null && typeof m === 'object' && !Array.isArray(m)) {
    return Object.fromEntries(Object.entries(m as Record<string, unknown>).filter(([key]) => !SAELENS_METADATA_FIELDS.includes(key)));
  }
  const flat: [string, unknown][] = SAELENS_DESCRIPTIVE_FIELDS.filter((key) => Object.hasOwn(cfg, key)).map((key) => [key, cfg[key]]);
  if (!Object.hasOwn(cfg, 'hook_name') && Object.hasOwn(cfg, 'hook_point')) flat.push(['hook_name', cfg.hook_point]);
  return Object.fromEntries(flat);
}

/**
 * The input scale of a SAELens checkpoint trained with normalize_activations
 * 'expected_average_only_in': `scaling_factor` of activation_scaler.json beside its cfg.json.
 */
async function readActivationScaler(dir: string, cfgFile: string): Promise<number> {
  const file = path.join(dir, 'activation_scaler.json');
  const scaler = await readJsonObject(
    file,
    `missing activation_scaler.json: ${path.basename(cfgFile)} says normalize_activations 'expected_average_only_in', which scales inputs by a factor estimated when training, and SAELens keeps that factor in activation_scaler.json beside a checkpoint's cfg.json (a final save has it folded into the weights)`,
  );
  const s = scaler.scaling_factor;
  if (typeof s !== 'number' || !Number.isFinite(s) || s <= 0) throw formatError(file, `scaling_factor must be a finite number above 0 but is ${previewValue(s)}`);
  return s;
}

/**
 * SAELens's fold_activation_norm_scaling_factor: a model trained on inputs x s, whose outputs are
 * divided by s, is the model with W_enc s, W_dec / s and b_dec / s on raw inputs (b_enc and the
 * threshold unchanged: the pre-activations are the same). In float64, rounded once.
 */
async function foldInputScale(w: SaeFileWeights, s: number): Promise<void> {
  const BLOCK = 1 << 16;
  // Division, not a product with 1 / s: x / s rounds once, x * (1 / s) twice.
  for (const [a, multiply] of [[w.W_enc, true], [w.W_dec, false], [w.b_dec, false]] as const) {
    for (let at = 0; at < a.length; at += BLOCK) {
      const end = Math.min(a.length, at + BLOCK);
      if (multiply) for (let i = at; i < end; i++) a[i] = a[i]! * s;
      else for (let i = at; i < end; i++) a[i] = a[i]! / s;
      if (due(end - at)) await pause();
    }
  }
}

/** cfg.json's reshape_activations: 'none', 'hook_z' (the heads of attn.hook_z flattened, as dIn says), or absent (null too). */
function reshapeField(cfg: Record<string, unknown>, cfgFile: string): 'none' | 'hook_z' | undefined {
  const v = fieldAt(cfg, 'reshape_activations');
  if (v === undefined || v === null) return undefined;
  if (v !== 'none' && v !== 'hook_z') throw formatError(cfgFile, `reshape_activations ${shownValue(v)} is not one saekit knows ('none' or 'hook_z')`);
  return v;
}

async function readSaelens(dir: string, weightsFile: string): Promise<SaeFiles> {
  const cfgFile = path.join(dir, 'cfg.json');
  const cfg = await readCfg(cfgFile);
  const dIn = intField(cfg, cfgFile, 'd_in');
  const numLatents = intField(cfg, cfgFile, 'd_sae');
  checkDims(cfgFile, dIn, numLatents, ['d_in', 'd_sae']);
  // v6 configs name the architecture. Pre-6.0 flat configs name the activation function, and a
  // TopK one may say architecture 'standard' (SAELens's handle_pre_6_0_config makes it topk).
  const act: unknown = cfg.activation_fn_str ?? cfg.activation_fn;
  const declared: unknown = cfg.architecture ?? undefined;
  const arch: unknown = (declared === undefined || declared === null || declared === 'standard') && act === 'topk' ? 'topk' : (declared ?? act ?? 'standard');
  if (arch !== 'topk' && arch !== 'jumprelu') {
    const what = declared === undefined || declared === null ? `activation_fn_str ${shownValue(act)} (a standard ReLU SAE)` : `architecture ${shownValue(arch)}`;
    throw formatError(cfgFile, `${what} is not supported yet (supported: topk, jumprelu)`);
  }
  // Old configs store a boolean (SAELens maps false to 'none' and true to 'expected_average_only_in').
  const rawNorm = cfg.normalize_activations ?? 'none';
  const norm = rawNorm === false ? 'none' : rawNorm === true ? 'expected_average_only_in' : rawNorm;
  // A checkpoint of a run with expected_average_only_in keeps the factor in activation_scaler.json
  // (SAELens folds it into the weights only in the final save); read below.
  if (norm !== 'none' && norm !== null && norm !== 'expected_average_only_in') {
    const why = norm === 'layer_norm' || norm === 'constant_norm_rescale' ? 'normalises every token at run time, which saekit does not implement' : 'is not a normalisation saekit knows';
    throw formatError(cfgFile, `normalize_activations ${shownValue(norm)} ${why}`);
  }
  const inputScale = norm === 'expected_average_only_in' ? await readActivationScaler(dir, cfgFile) : undefined;
  const applyBDec = boolField(cfg, cfgFile, 'apply_b_dec_to_input', true);
  const rescale = arch === 'topk' && boolField(cfg, cfgFile, 'rescale_acts_by_decoder_norm', false);
  const shapes: Record<string, number[]> = { W_enc: [dIn, numLatents], b_enc: [numLatents], W_dec: [numLatents, dIn], b_dec: [dIn], ...(arch === 'jumprelu' ? { threshold: [numLatents] } : {}) };
  const t = await readTensors(weightsFile, shapes, { scaling_factor: [numLatents], finetuning_scaling_factor: [numLatents] }, (metadata) =>
    checkSameSave(cfgFile, fieldAt(cfg, `metadata.${SAVE_ID}`), weightsFile, metadata),
  );
  const weights: SaeFileWeights = {
    W_enc: await toF32(t.W_enc!, weightsFile, 'W_enc'),
    b_enc: await toF32(t.b_enc!, weightsFile, 'b_enc'),
    W_dec: await toF32(t.W_dec!, weightsFile, 'W_dec'),
    b_dec: await toF32(t.b_dec!, weightsFile, 'b_dec'),
    ...(arch === 'jumprelu' ? { threshold: await toF32(t.threshold!, weightsFile, 'threshold') } : {}),
  };
  let k: number | undefined;
  if (arch === 'topk') {
    // SAELens's TopK config defaults k to 100.
    k = optionalIntField(cfg, cfgFile, 'k', 'activation_fn_kwargs.k') ?? 100;
    if (k < 1 || k > numLatents) throw formatError(cfgFile, `k = ${k} is outside 1..d_sae = ${numLatents}`);
    // Trained with the norms outside: z <- z * ||W_dec,i||, decode with f / ||W_dec,i||. Folding
    // the norms into the encoder gives the same function with unit decoder rows (a zero row's
    // pre-activation is then 0: its encoder is zeroed too).
    if (rescale) {
      await runSliced(foldDecoderNormsSteps(weights, dIn, numLatents, true));
      await checkFolded(weights, dIn, numLatents, weightsFile, 'rescaled by the decoder norms (cfg.json: rescale_acts_by_decoder_norm)');
    }
  }
  if (t.scaling_factor && t.finetuning_scaling_factor) {
    // SAELens's loader drops an all-ones scaling_factor and then fails on the other tensor's name.
    throw formatError(weightsFile, 'holds both scaling_factor and finetuning_scaling_factor (one finetuning scale is expected)');
  }
  const scaleName = t.scaling_factor ? 'scaling_factor' : 'finetuning_scaling_factor';
  if (await foldFinetuningScale(cfg, cfgFile, t.scaling_factor ?? t.finetuning_scaling_factor, scaleName, weightsFile, weights, dIn, numLatents)) {
    await checkFolded(weights, dIn, numLatents, weightsFile, `scaled by ${scaleName} (cfg.json: finetuning_scaling_factor)`);
  }
  if (inputScale !== undefined) {
    await foldInputScale(weights, inputScale);
    await checkFolded(weights, dIn, numLatents, weightsFile, `scaled by activation_scaler.json's scaling_factor ${inputScale}`);
  }
  const reshapeActivations = reshapeField(cfg, cfgFile);
  return {
    config: {
      format: 'saelens',
      architecture: arch,
      dIn,
      numLatents,
      k,
      applyBDecToInput: applyBDec,
      dtype: t.W_dec!.dtype,
      raw: cfg,
      metadata: saelensMetadata(cfg),
      ...(reshapeActivations !== undefined ? { reshapeActivations } : {}),
    },
    weights,
    files: [cfgFile, weightsFile],
  };
}

async function readSparsify(dir: string, weightsFile: string): Promise<SaeFiles> {
  const cfgFile = path.join(dir, 'cfg.json');
  const cfg = await readCfg(cfgFile);
  const dIn = intField(cfg, cfgFile, 'd_in');
  // sparsify fills missing fields from SparseCoderConfig's defaults (num_latents 0, meaning
  // d_in × expansion_factor; expansion_factor 32; k 32).
  let numLatents = optionalIntField(cfg, cfgFile, 'num_latents') ?? 0;
  if (numLatents === 0) numLatents = dIn * (optionalIntField(cfg, cfgFile, 'expansion_factor') ?? 32);
  checkDims(cfgFile, dIn, numLatents, ['d_in', 'num_latents (or d_in × expansion_factor)']);
  const k = optionalIntField(cfg, cfgFile, 'k') ?? 32;
  const activation = cfg.activation ?? 'topk';
  if (activation !== 'topk') throw formatError(cfgFile, `activation ${shownValue(activation)} is not supported (supported: topk)`);
  if (boolField(cfg, cfgFile, 'transcode', false)) throw formatError(cfgFile, 'transcoders are not supported yet');
  if (boolField(cfg, cfgFile, 'skip_connection', false)) throw formatError(cfgFile, 'skip connections (W_skip) are not supported yet');
  // EleutherAI/sae's signed TopK keeps the k largest |z| with their signs (no ReLU).
  if (boolField(cfg, cfgFile, 'signed', false)) throw formatError(cfgFile, 'signed TopK (signed: true) is not supported yet');
  // Subtracts a frozen n-gram mean (not in sae.safetensors) from the encoder's input and target.
  if (boolField(cfg, cfgFile, 'gram_lookup', false)) throw formatError(cfgFile, 'n-gram lookup (gram_lookup: true) is not supported: its table is not in sae.safetensors');
  if (k < 1 || k > numLatents) throw formatError(cfgFile, `k = ${k} is outside 1..num_latents = ${numLatents}`);
  const t = await readTensors(weightsFile, { 'encoder.weight': [numLatents, dIn], 'encoder.bias': [numLatents], W_dec: [numLatents, dIn], b_dec: [dIn] }, {}, (metadata) =>
    checkSameSave(cfgFile, cfg[SAVE_ID], weightsFile, metadata),
  );
  return {
    config: { format: 'sparsify', architecture: 'topk', dIn, numLatents, k, applyBDecToInput: true, dtype: t.W_dec!.dtype, raw: cfg, metadata: {} },
    weights: {
      W_enc: await runSliced(transposeSteps(await toF32(t['encoder.weight']!, weightsFile, 'encoder.weight'), numLatents, dIn)),
      b_enc: await toF32(t['encoder.bias']!, weightsFile, 'encoder.bias'),
      W_dec: await toF32(t.W_dec!, weightsFile, 'W_dec'),
      b_dec: await toF32(t.b_dec!, weightsFile, 'b_dec'),
    },
    files: [cfgFile, weightsFile],
  };
}

const SAFETENSORS_FLOATS = new Set(['F32', 'F16', 'BF16', 'F64']);

/** Gemma Scope's arrays; SAELens also accepts a lower-case w_ for the two matrices. */
const GEMMA_ARRAYS = ['W_enc', 'W_dec', 'b_enc', 'b_dec', 'threshold'] as const;
const GEMMA_FLOAT = new Set(['float32', 'float64', 'float16', 'bfloat16']);

async function readGemmaScope(file: string): Promise<SaeFiles> {
  // The stored name of each array (W_enc or w_enc, ...), settled from the archive's headers.
  const stored = new Map<string, string>();
  let dIn = 0;
  let numLatents = 0;
  // Names, dtypes and shapes are checked from the .npy headers, before any array is inflated:
  // a small archive cannot make the loader allocate arrays it would refuse.
  const arrays = await readNpzChecked(file, (headers) => {
    const names = [...headers.keys()];
    if (headers.has('scaling_factor')) throw formatError(file, 'has a scaling_factor array, which Gemma Scope files do not have (its meaning here is unknown; SAELens refuses it too)');
    const spellings = (n: string) => (n.startsWith('W_') ? [n, n.replace(/^W_/, 'w_')] : [n]);
    checkNoExtraTensors(file, names, GEMMA_ARRAYS.flatMap(spellings));
    for (const n of GEMMA_ARRAYS) {
      const present = spellings(n).filter((m) => headers.has(m));
      if (present.length === 0) throw formatError(file, `missing array ${n} (has: ${listForMessage(names) || 'none'})`);
      if (present.length > 1) throw formatError(file, `holds both ${listForMessage(present)}: one array, two spellings (which one is meant is unclear)`);
      const h = headers.get(present[0]!)!;
      if (!GEMMA_FLOAT.has(h.dtype)) throw formatError(file, `tensor ${n} has dtype ${h.dtype}; expected a float dtype`);
      stored.set(n, present[0]!);
    }
    const enc = headers.get(stored.get('W_enc')!)!;
    if (enc.shape.length !== 2) throw formatError(file, `W_enc must be 2-D but has shape [${listForMessage(enc.shape)}]`);
    [dIn, numLatents] = enc.shape as [number, number];
    checkDims(file, dIn, numLatents, ['d_in (W_enc rows)', 'd_sae (W_enc columns)']);
    const want: Record<string, number[]> = { W_dec: [numLatents, dIn], b_enc: [numLatents], b_dec: [dIn], threshold: [numLatents] };
    for (const [n, shape] of Object.entries(want)) checkShape(file, n, headers.get(stored.get(n)!)!, shape);
  });
  const get = (name: (typeof GEMMA_ARRAYS)[number]): IoTensor => arrays[stored.get(name)!]!;
  const W_enc = get('W_enc');
  return {
    config: { format: 'gemma-scope', architecture: 'jumprelu', dIn, numLatents, applyBDecToInput: false, dtype: W_enc.dtype, raw: {}, metadata: {} },
    weights: {
      W_enc: await toF32(W_enc, file, 'W_enc'),
      b_enc: await toF32(get('b_enc'), file, 'b_enc'),
      W_dec: await toF32(get('W_dec'), file, 'W_dec'),
      b_dec: await toF32(get('b_dec'), file, 'b_dec'),
      threshold: await toF32(get('threshold'), file, 'threshold'),
    },
    files: [file],
  };
}

/**
 * SAELens (pre-6.0) finetuning scale: decoding multiplies latent i's activation by s_i before
 * W_dec, the same as W_dec row i times s_i, which is how it is loaded. A scale of all ones (for
 * the tensor `scaling_factor`, within torch.allclose of ones, as SAELens's loader tests it) is
 * dropped; any other needs cfg.json's finetuning_scaling_factor to be true (SAELens asserts so).
 * Returns whether W_dec was scaled.
 */
async function foldFinetuningScale(
  cfg: Record<string, unknown>,
  cfgFile: string,
  scale: IoTensor | undefined,
  scaleName: string,
  weightsFile: string,
  weights: SaeFileWeights,
  dIn: number,
  numLatents: number,
): Promise<boolean> {
  if (!scale) return false;
  const s = await toF32(scale, weightsFile, scaleName);
  // SAELens drops a `scaling_factor` within torch.allclose of ones (|s - 1| <= 1e-8 + 1e-5 |1|),
  // whatever cfg.json says; a `finetuning_scaling_factor` is applied as it is.
  const ones = scaleName === 'scaling_factor' ? (v: number) => Math.abs(v - 1) <= 1e-8 + 1e-5 : (v: number) => v === 1;
  if (s.every(ones)) return false;
  if (!boolField(cfg, cfgFile, 'finetuning_scaling_factor', false)) {
    throw formatError(cfgFile, `${path.basename(weightsFile)} has a ${scaleName} that is not all ones but finetuning_scaling_factor is not true`);
  }
  for (let i = 0; i < numLatents; i++) {
    for (let d = 0; d < dIn; d++) weights.W_dec[i * dIn + d] = weights.W_dec[i * dIn + d]! * s[i]!;
    if (due(dIn)) await pause();
  }
  return true;
}

export type { WriteSaeOptions } from './sae-options.js';

/** Reads an SAE saved by SAELens, sparsify or Gemma Scope (a folder, or one of its files). */
export async function readSaeFiles(pathOrDir: string): Promise<SaeFiles> {
  checkPath(pathOrDir, 'pathOrDir');
  const { format, dir, weights } = await detect(pathOrDir);
  if (format === 'saelens') return readSaelens(dir, weights);
  if (format === 'sparsify') return readSparsify(dir, weights);
  return readGemmaScope(weights);
}

/**
 * A weight as stored under `name`: float32 as is, or narrowed to bfloat16 in blocks between turns
 * of the event loop (forBlocks). A finite value past bfloat16's range (|v| >= 3.3961e38 rounds to
 * infinity, as torch rounds it) is refused: load() would refuse the file.
 */
async function stored(data: Float32Array, shape: number[], dtype: 'float32' | 'bfloat16', name: string): Promise<IoTensor> {
  if (dtype === 'float32') return { dtype, shape, data };
  const n = data.length;
  const out = new Uint16Array(n);
  let bad = -1;
  // A weight detached meanwhile is left to writeSaeFiles's kept() check, which names it.
  await forBlocks(
    n,
    (i0, i1) => {
      if (data.length !== n || bad >= 0) return;
      native().convertInto(data.subarray(i0, i1), 'float32', out.subarray(i0, i1), 'bfloat16');
      for (let i = i0; i < i1; i++) {
        if ((out[i]! & 0x7f80) === 0x7f80 && Number.isFinite(data[i]!)) {
          bad = i;
          break;
        }
      }
    },
    5,
  );
  if (bad >= 0) {
    const at = shape.length === 2 ? `[${Math.floor(bad / shape[1]!)}][${bad % shape[1]!}]` : `[${bad}]`;
    throw new SaekitError(
      'ERR_SAEKIT_NONFINITE',
      `Expected weights within bfloat16's range for dtype 'bfloat16' but ${name}${at} = ${data[bad]} rounds to ${data[bad]! > 0 ? '' : '-'}Infinity there (the largest finite bfloat16 is 3.3895e38); save as 'float32'; nothing was written`,
    );
  }
  return { dtype, shape, data: out };
}

/** What writeSaeFiles saves about the model. */
export interface WriteSaeConfig {
  architecture: 'topk' | 'jumprelu';
  dIn: number;
  numLatents: number;
  /** TopK only. */
  k?: number;
  applyBDecToInput: boolean;
  /** Metadata carried from the file the SAE was loaded from (SaeFileConfig.metadata): SAELens layout only; options.metadata adds to and overrides it. */
  metadata?: Record<string, unknown>;
  /** SAELens layout only (SaeFileConfig.reshapeActivations); default 'none'. */
  reshapeActivations?: 'none' | 'hook_z';
}
const WRITE_SAE_CONFIG = optionNames<WriteSaeConfig>({ architecture: true, dIn: true, numLatents: true, k: true, applyBDecToInput: true, metadata: true, reshapeActivations: true });

/** writeSaeFiles's config and weights, checked: what cfg.json says and each weight's length. */
function checkWriteSaeModel(config: WriteSaeConfig, weights: SaeFileWeights): void {
  if (config === undefined) throw argError('config', 'an object with architecture, dIn, numLatents, k and applyBDecToInput', config);
  const c = checkOptions('config', config, WRITE_SAE_CONFIG);
  const architecture = checkOneOf('config.architecture', c.architecture, ['topk', 'jumprelu'] as const);
  const dIn = checkInt('config.dIn', c.dIn, 1, 2 ** 31 - 1);
  const numLatents = checkInt('config.numLatents', c.numLatents, 1, 2 ** 31 - 1);
  if (architecture === 'topk') checkInt('config.k', c.k, 1, numLatents);
  checkBool('config.applyBDecToInput', c.applyBDecToInput);
  if (c.metadata !== undefined) checkJsonObject('config.metadata', c.metadata);
  if (c.reshapeActivations !== undefined) checkOneOf('config.reshapeActivations', c.reshapeActivations, ['none', 'hook_z'] as const);
  if (weights === null || typeof weights !== 'object') throw argError('weights', 'an object with W_enc, b_enc, W_dec, b_dec', weights);
  const lengths = { W_enc: dIn * numLatents, b_enc: numLatents, W_dec: numLatents * dIn, b_dec: dIn, threshold: numLatents };
  for (const name of ['W_enc', 'b_enc', 'W_dec', 'b_dec', ...(architecture === 'jumprelu' ? ['threshold' as const] : [])] as const) {
    const w: unknown = weights[name];
    const expected = `a Float32Array of length ${lengths[name]} (dIn = ${dIn}, numLatents = ${numLatents})`;
    if (!(w instanceof Float32Array)) throw arrayTypeError(`weights.${name}`, expected, w);
    if (w.length !== lengths[name]) throw argError(`weights.${name}`, expected, w, 'ERR_SAEKIT_SHAPE');
  }
}

/** Fields saekit writes into a sparsify cfg.json itself (options.metadata may not set them). */
const SPARSIFY_FIELDS = ['activation', 'expansion_factor', 'normalize_decoder', 'num_latents', 'k', 'multi_topk', 'skip_connection', 'transcode', 'd_in', SAVE_ID];

/**
 * The config schema SAELens files written here follow: SAELens reads metadata.sae_lens_version
 * to choose between its 6.x reader and the converter for older flat configs, which rebuilds
 * `metadata` from top-level keys and so would drop everything saekit puts there.
 */
const SAELENS_SCHEMA_VERSION = '6.0.0';
/** Fields of a SAELens cfg.json's metadata that saekit writes itself (options.metadata may not set them). */
const SAELENS_METADATA_FIELDS = ['sae_lens_version', 'saekit_version', SAVE_ID];

/** Whether every decoder row has unit norm (to float32 rounding). */
async function unitRows(W_dec: Float32Array, numLatents: number, dIn: number): Promise<boolean> {
  for (let i = 0; i < numLatents; i++) {
    let s = 0;
    for (let d = 0; d < dIn; d++) s += W_dec[i * dIn + d]! ** 2;
    if (Math.abs(Math.sqrt(s) - 1) > 1e-5) return false;
    if (due(dIn)) await pause();
  }
  return true;
}

/**
 * Writes an SAE in SAELens or sparsify layout into `dir` (created if needed). Both files are
 * written in full under temporary names first, then renamed into place one right after the
 * other, and carry the same save id (cfg.json and the weights' __metadata__): a save cut short
 * between the two renames is refused by the loader instead of pairing one save's weights with
 * another's config. The other layout's weights file, if an earlier saekit save left one, is
 * removed. A folder holding another library's SAE of the other layout (that layout's weights,
 * not written by saekit, with a cfg.json other than a saekit save's of this layout) is refused
 * before anything is written (ERR_SAEKIT_ARG): replacing its cfg.json would leave those weights
 * without a config. Staging files that a save killed part-way left in `dir` (saekit's own names,
 * of a process that no longer runs) are removed first. Returns the files written. The weights are
 * read while the Promise is pending, not copied: they must stay untouched until it settles; one
 * detached or resized meanwhile fails the save (ERR_SAEKIT_ARG naming it) and leaves the folder's
 * files as they were.
 */
export async function writeSaeFiles(
  dir: string,
  config: WriteSaeConfig,
  weights: SaeFileWeights,
  options: WriteSaeOptions = {},
): Promise<string[]> {
  checkFolderPath(dir);
  checkWriteSaeModel(config, weights);
  checkWriteSaeOptions(options);
  const format = options.format ?? 'saelens';
  const dtype = options.dtype ?? 'float32';
  const { dIn, numLatents } = config;
  // Each weight's length now: after the folder's checks (awaits), it must be the same.
  const lengths = Object.entries(weights ?? {}).map(([k, w]) => [`weights.${k}`, w, (w as { length?: unknown } | undefined)?.length] as const);
  await makeDirs(dir).catch((err: unknown) => {
    throw fsError('create the folder', dir, err);
  });
  const cfgFile = path.join(dir, 'cfg.json');
  await checkNoForeignPair(dir, format);
  await removeDeadStaging(dir);
  const kept = () => {
    for (const [name, w, length] of lengths) if (typeof length === 'number') checkKept(name, w as Float32Array, length);
  };
  kept();
  const saveId = randomBytes(8).toString('hex');
  const idMeta = { [SAVE_ID]: saveId };
  if (format === 'saelens') {
    for (const key of Object.keys(options.metadata ?? {})) {
      if (SAELENS_METADATA_FIELDS.includes(key)) {
        throw new SaekitError('ERR_SAEKIT_ARG', `Expected options.metadata not to set the SAELens metadata field '${key}' (saekit writes it)`);
      }
    }
  }
  if (format === 'sparsify') {
    for (const key of Object.keys(options.metadata ?? {})) {
      if (SPARSIFY_FIELDS.includes(key)) {
        throw new SaekitError('ERR_SAEKIT_ARG', `Expected options.metadata not to set the sparsify cfg field '${key}' (saekit writes it from the model)`);
      }
      // Not written (sparsify's default, false, is the model), but read: true would describe another model.
      if (key === 'signed') {
        throw new SaekitError('ERR_SAEKIT_ARG', "Expected options.metadata not to set the sparsify cfg field 'signed' (it changes what the weights mean: saekit's TopK keeps the k largest pre-activations, unsigned)");
      }
    }
    if (config.architecture !== 'topk') {
      throw new SaekitError('ERR_SAEKIT_ARG', `Expected a TopK SAE for format 'sparsify' but this one is ${config.architecture}; use format 'saelens'`);
    }
    if (!config.applyBDecToInput) {
      throw new SaekitError('ERR_SAEKIT_ARG', "sparsify always subtracts b_dec from the input; save this SAE with format 'saelens'");
    }
    const file = path.join(dir, 'sae.safetensors');
    const tensors = {
      'encoder.weight': await stored(await runSliced(transposeSteps(weights.W_enc, dIn, numLatents)), [numLatents, dIn], dtype, 'encoder.weight'),
      'encoder.bias': await stored(weights.b_enc, [numLatents], dtype, 'encoder.bias'),
      W_dec: await stored(weights.W_dec, [numLatents, dIn], dtype, 'W_dec'),
      b_dec: await stored(weights.b_dec, [dIn], dtype, 'b_dec'),
    };
    const cfg = {
      activation: 'topk',
      expansion_factor: Number.isInteger(numLatents / dIn) ? numLatents / dIn : Math.ceil(numLatents / dIn),
      // sparsify keeps decoder rows at unit norm when this is true; say so only where they are.
      normalize_decoder: await unitRows(weights.W_dec, numLatents, dIn),
      num_latents: numLatents,
      k: config.k,
      multi_topk: false,
      skip_connection: false,
      transcode: false,
      d_in: dIn,
      ...(options.metadata ?? {}),
      ...idMeta,
    };
    kept(); // the transpose and the narrowing ran in slices: a weight detached meanwhile left zeros or NaN in them
    await commitPair(dir, file, tensors, idMeta, cfgFile, cfg, path.join(dir, 'sae_weights.safetensors'));
    return [cfgFile, file];
  }
  const file = path.join(dir, 'sae_weights.safetensors');
  const tensors: Record<string, IoTensor> = {
    W_enc: await stored(weights.W_enc, [dIn, numLatents], dtype, 'W_enc'),
    b_enc: await stored(weights.b_enc, [numLatents], dtype, 'b_enc'),
    W_dec: await stored(weights.W_dec, [numLatents, dIn], dtype, 'W_dec'),
    b_dec: await stored(weights.b_dec, [dIn], dtype, 'b_dec'),
  };
  if (config.architecture === 'jumprelu') {
    if (!weights.threshold) throw new SaekitError('ERR_SAEKIT_ARG', 'Expected weights.threshold for a JumpReLU SAE');
    tensors.threshold = await stored(weights.threshold, [numLatents], dtype, 'threshold');
  }
  const cfg = {
    architecture: config.architecture,
    d_in: dIn,
    d_sae: numLatents,
    dtype,
    device: 'cpu',
    apply_b_dec_to_input: config.applyBDecToInput,
    normalize_activations: 'none',
    reshape_activations: config.reshapeActivations ?? 'none',
    ...(config.architecture === 'topk' ? { k: config.k, rescale_acts_by_decoder_norm: false } : {}),
    metadata: {
      sae_lens_version: SAELENS_SCHEMA_VERSION,
      saekit_version: saekitVersion(),
      ...Object.fromEntries(Object.entries(config.metadata ?? {}).filter(([key]) => !SAELENS_METADATA_FIELDS.includes(key))),
      ...(options.metadata ?? {}),
      ...idMeta,
    },
  };
  kept(); // bfloat16 narrowing ran in slices
  await commitPair(dir, file, tensors, idMeta, cfgFile, cfg, path.join(dir, 'sae.safetensors'));
  return [cfgFile, file];
}

/** Whether `file` is a safetensors file whose __metadata__ carries a saekit save id (false when it cannot be read as one). */
async function savedBySaekit(file: string): Promise<boolean> {
  const r = await readSafetensors(file).catch(() => undefined);
  const ours = r?.metadata[SAVE_ID] !== undefined;
  await r?.close();
  return ours;
}

/** Whether `p` is a regular file (following links); false when missing or unreadable. */
async function plainFile(p: string): Promise<boolean> {
  return stat(p).then(
    (s) => s.isFile(),
    () => false,
  );
}

/**
 * Refuses to save `format` into `dir` when it holds the other layout's weights, not written by
 * saekit, beside a cfg.json that may describe them (any but a saekit save's of `format`): the
 * save would replace that cfg.json and leave the weights without a config, loadable by nothing.
 * Trainer.fit() calls it for saveDir before training, so the refusal does not wait for the end.
 */
export async function checkNoForeignPair(dir: string, format: 'saelens' | 'sparsify'): Promise<void> {
  const other = format === 'saelens' ? 'sae.safetensors' : 'sae_weights.safetensors';
  const cfgFile = path.join(dir, 'cfg.json');
  if (!(await plainFile(path.join(dir, other))) || !(await plainFile(cfgFile))) return;
  if (await savedBySaekit(path.join(dir, other))) return;
  const cfg = await readCfg(cfgFile).catch(() => undefined);
  const cfgId = cfg && (format === 'saelens' ? fieldAt(cfg, `metadata.${SAVE_ID}`) : cfg[SAVE_ID]);
  if (typeof cfgId === 'string') return;
  throw new SaekitError(
    'ERR_SAEKIT_ARG',
    `Expected a folder for dir without another library's SAE but ${dir} holds ${other} (not written by saekit) with its cfg.json: ` +
      `saving the ${format} layout there would replace that cfg.json and leave ${other} without a config; save into another folder`,
  );
}

/** Staging names of commitPair (a weights file or cfg.json) and of writeChunksAtomic's temporary file for one: group 1 is the PID. */
const STAGING_NAMES = [
  /^\.(?:cfg\.json|sae_weights\.safetensors|sae\.safetensors)\.([1-9]\d{0,9})\.[0-9a-f]{16}\.staged$/,
  /^\.\.(?:cfg\.json|sae_weights\.safetensors|sae\.safetensors)\.([1-9]\d{0,9})\.[0-9a-f]{16}\.staged\.\1\.[0-9a-f]{12}\.tmp$/,
];

/** Whether no process has id `pid` (kill(pid, 0) fails with ESRCH); this process and any that cannot be told count as running. */
function processGone(pid: number): boolean {
  if (pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/**
 * Removes (best effort) the staging files a save killed part-way left in `dir`: full-size
 * weights that no later save would reuse. Only regular files named exactly as saekit's staging
 * files are, whose PID no longer runs; a save in progress (this process or another) keeps its own.
 */
async function removeDeadStaging(dir: string): Promise<void> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const e of entries) {
    if (!e.isFile()) continue;
    const pid = STAGING_NAMES.map((re) => re.exec(e.name)?.[1]).find((p) => p !== undefined);
    if (pid !== undefined && processGone(Number(pid))) await unlink(path.join(dir, e.name)).catch(() => undefined);
  }
}

/** The reason of a failed file operation without the paths Node puts in its message ("ENOSPC: no space left on device"). */
function failureReason(err: unknown): string {
  const cause = (err as { cause?: unknown }).cause ?? err;
  const e = cause as { message?: unknown; syscall?: unknown; code?: unknown };
  const message = typeof e?.message === 'string' ? e.message : String(cause);
  const at = typeof e?.syscall === 'string' && typeof e.code === 'string' ? message.indexOf(`, ${e.syscall}`) : -1;
  return at > 0 ? message.slice(0, at) : message;
}

/**
 * Writes the weights and cfg.json under temporary names, renames both into place back to back,
 * then removes `otherLayout` (the other format's weights file) if a saekit save wrote it. A
 * failure names the folder and the file being saved (not its temporary name), keeping the code.
 */
async function commitPair(
  dir: string,
  weightsFile: string,
  tensors: Record<string, IoTensor>,
  idMeta: Record<string, string>,
  cfgFile: string,
  cfg: unknown,
  otherLayout: string,
): Promise<void> {
  const tag = `${process.pid}.${idMeta[SAVE_ID]}.staged`;
  const stagedWeights = path.join(dir, `.${path.basename(weightsFile)}.${tag}`);
  const stagedCfg = path.join(dir, `.cfg.json.${tag}`);
  let saving = weightsFile;
  try {
    await writeSafetensors(stagedWeights, tensors, idMeta);
    saving = cfgFile;
    await writeFileAtomic(stagedCfg, `${JSON.stringify(cfg, null, 2)}\n`);
    saving = weightsFile;
    await keepMode(weightsFile, stagedWeights);
    await keepMode(cfgFile, stagedCfg);
    await rename(stagedWeights, weightsFile);
    saving = cfgFile;
    await rename(stagedCfg, cfgFile);
  } catch (err) {
    await Promise.all([unlink(stagedWeights).catch(() => undefined), unlink(stagedCfg).catch(() => undefined)]);
    const out = new SaekitError(err instanceof SaekitError ? err.code : 'ERR_SAEKIT_ARG', `Could not save ${path.basename(saving)} in ${dir}: ${failureReason(err)}`);
    (out as { cause?: unknown }).cause = err;
    throw out;
  }
  await syncFolder(dir);
  // A stale file of the other layout from an earlier saekit save would make the folder ambiguous.
  if ((await plainFile(otherLayout)) && (await savedBySaekit(otherLayout))) await rm(otherLayout, { force: true });
}

let version: string | undefined;
function saekitVersion(): string {
  if (version === undefined) {
    try {
      version = (JSON.parse(readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { version: string }).version;
    } catch {
      version = 'unknown';
    }
  }
  return version;
}
