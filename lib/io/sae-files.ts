/**
 * SAE files of the Python ecosystem, as typed arrays and plain configs (no model code here:
 * `SparseAutoencoder.load` / `save` in lib/sae call into this module).
 *
 * | format       | files                                   | tensors (-> SAELens orientation)                          |
 * |--------------|-----------------------------------------|-----------------------------------------------------------|
 * | SAELens      | cfg.json + sae_weights.safetensors      | W_enc [d, F], b_enc [F], W_dec [F, d], b_dec [d], threshold [F] (jumprelu) |
 * | sparsify     | cfg.json + sae.safetensors              | encoder.weight [F, d] (= W_enc^T), encoder.bias, W_dec [F, d], b_dec |
 * | Gemma Scope  | params.npz                              | W_enc [d, F], W_dec [F, d], b_enc, b_dec, threshold; JumpReLU, no b_dec subtraction |
 */
import { readFileSync } from 'node:fs';
import { mkdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';

import { SaekitError } from '../errors.js';
import { native, packageRoot } from '../native/index.js';
import { type IoTensor, transpose } from './common.js';
import { readNpz } from './npz.js';
import { readSafetensors, writeSafetensors } from './safetensors.js';
import { writeFileAtomic } from './source.js';

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
}

/** Weights in the SAELens orientation, float32. */
export interface SaeFileWeights {
  W_enc: Float32Array;
  b_enc: Float32Array;
  W_dec: Float32Array;
  b_dec: Float32Array;
  threshold?: Float32Array;
}

export interface SaeFiles {
  config: SaeFileConfig;
  weights: SaeFileWeights;
  /** The files read. */
  files: string[];
}

function formatError(file: string, reason: string): SaekitError {
  return new SaekitError('ERR_SAEKIT_FORMAT', `${file}: ${reason}`);
}

async function isFile(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isFile();
  } catch {
    return false;
  }
}

/** Finds the format of a folder or file. */
async function detect(pathOrDir: string): Promise<{ format: SaeFileFormat; dir: string; weights: string }> {
  let st;
  try {
    st = await stat(pathOrDir);
  } catch {
    throw new SaekitError('ERR_SAEKIT_ARG', `Expected an SAE folder or file for path but ${pathOrDir} does not exist`);
  }
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
  if (await isFile(j('sae_weights.safetensors'))) return { format: 'saelens', dir: pathOrDir, weights: j('sae_weights.safetensors') };
  if (await isFile(j('sae.safetensors'))) return { format: 'sparsify', dir: pathOrDir, weights: j('sae.safetensors') };
  if (await isFile(j('params.npz'))) return { format: 'gemma-scope', dir: pathOrDir, weights: j('params.npz') };
  throw formatError(pathOrDir, 'no SAE files found (expected sae_weights.safetensors + cfg.json (SAELens), sae.safetensors + cfg.json (sparsify) or params.npz (Gemma Scope))');
}

async function readCfg(file: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    const st = await stat(file);
    if (st.size > 16 << 20) throw formatError(file, `cfg.json is ${st.size} bytes (over 16 MiB)`);
    text = await readFile(file, 'utf8');
  } catch (err) {
    if (err instanceof SaekitError) throw err;
    throw formatError(file, 'missing cfg.json next to the weights');
  }
  let cfg: unknown;
  try {
    cfg = JSON.parse(text);
  } catch (err) {
    throw formatError(file, `invalid JSON (${(err as Error).message})`);
  }
  if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg)) throw formatError(file, 'cfg.json is not a JSON object');
  return cfg as Record<string, unknown>;
}

function intField(cfg: Record<string, unknown>, file: string, ...keys: string[]): number {
  for (const key of keys) {
    let v: unknown = cfg;
    for (const part of key.split('.')) v = v !== null && typeof v === 'object' ? (v as Record<string, unknown>)[part] : undefined;
    if (v === undefined || v === null) continue;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > 1 << 30) {
      throw formatError(file, `field ${key} must be a non-negative integer below 2^30 but is ${JSON.stringify(v)}`);
    }
    return v;
  }
  throw formatError(file, `missing field ${keys.join(' (or ')}${keys.length > 1 ? ')' : ''}`);
}

/** Any float tensor as float32 (bf16/f16 through the addon's exact conversion). */
function toF32(t: IoTensor, file: string, name: string): Float32Array {
  switch (t.dtype) {
    case 'float32':
      return t.data as Float32Array;
    case 'float64':
      return Float32Array.from(t.data as Float64Array);
    case 'bfloat16':
    case 'float16': {
      const out = new Float32Array(t.data.length);
      native().convertInto(t.data as Uint16Array, t.dtype, out, 'float32');
      return out;
    }
    default:
      throw formatError(file, `tensor ${name} has dtype ${t.dtype}; expected a float dtype`);
  }
}

function checkShape(file: string, name: string, t: IoTensor, want: number[]): void {
  if (t.shape.length !== want.length || t.shape.some((d, i) => d !== want[i])) {
    throw formatError(file, `tensor ${name} has shape [${t.shape.join(', ')}] but the config says [${want.join(', ')}]`);
  }
}


/**
 * Scales each latent so its decoder row has unit norm, keeping the model's function where the
 * activation is equivariant to z_i -> z_i n_i (JumpReLU with threshold_i n_i; SAELens TopK with
 * rescale_acts_by_decoder_norm): W_enc[:, i] and b_enc[i] (and threshold[i]) times n_i, W_dec[i] / n_i.
 */
export function foldDecoderNorms(w: SaeFileWeights, dIn: number, numLatents: number): void {
  for (let i = 0; i < numLatents; i++) {
    let s = 0;
    for (let d = 0; d < dIn; d++) s += w.W_dec[i * dIn + d]! ** 2;
    const n = Math.sqrt(s);
    if (!(n > 0) || Math.abs(n - 1) < 1e-7) continue;
    for (let d = 0; d < dIn; d++) {
      w.W_dec[i * dIn + d] = w.W_dec[i * dIn + d]! / n;
      w.W_enc[d * numLatents + i] = w.W_enc[d * numLatents + i]! * n;
    }
    w.b_enc[i] = w.b_enc[i]! * n;
    if (w.threshold) w.threshold[i] = w.threshold[i]! * n;
  }
}

async function readTensors(file: string, names: string[]): Promise<Record<string, IoTensor>> {
  const r = await readSafetensors(file);
  try {
    const out: Record<string, IoTensor> = {};
    for (const n of names) {
      if (!r.get(n)) throw formatError(file, `missing tensor ${n} (has: ${r.tensors.map((t) => t.name).join(', ')})`);
      out[n] = await r.read(n);
    }
    return out;
  } finally {
    await r.close();
  }
}

async function readSaelens(dir: string, weightsFile: string): Promise<SaeFiles> {
  const cfgFile = path.join(dir, 'cfg.json');
  const cfg = await readCfg(cfgFile);
  const dIn = intField(cfg, cfgFile, 'd_in');
  const numLatents = intField(cfg, cfgFile, 'd_sae');
  // v6 configs name the architecture; pre-6.0 flat configs name the activation function.
  const arch = String(cfg.architecture ?? cfg.activation_fn_str ?? (cfg.activation_fn as string | undefined) ?? 'standard');
  if (arch !== 'topk' && arch !== 'jumprelu') {
    throw formatError(cfgFile, `architecture '${arch}' is not supported yet (supported: topk, jumprelu)`);
  }
  const norm = cfg.normalize_activations ?? 'none';
  if (norm !== 'none' && norm !== null) {
    throw formatError(cfgFile, `normalize_activations '${String(norm)}' needs a run-time scaling factor and is not supported; fold it into the weights first`);
  }
  const names = ['W_enc', 'b_enc', 'W_dec', 'b_dec', ...(arch === 'jumprelu' ? ['threshold'] : [])];
  const t = await readTensors(weightsFile, names);
  checkShape(weightsFile, 'W_enc', t.W_enc!, [dIn, numLatents]);
  checkShape(weightsFile, 'b_enc', t.b_enc!, [numLatents]);
  checkShape(weightsFile, 'W_dec', t.W_dec!, [numLatents, dIn]);
  checkShape(weightsFile, 'b_dec', t.b_dec!, [dIn]);
  if (arch === 'jumprelu') checkShape(weightsFile, 'threshold', t.threshold!, [numLatents]);
  const weights: SaeFileWeights = {
    W_enc: toF32(t.W_enc!, weightsFile, 'W_enc'),
    b_enc: toF32(t.b_enc!, weightsFile, 'b_enc'),
    W_dec: toF32(t.W_dec!, weightsFile, 'W_dec'),
    b_dec: toF32(t.b_dec!, weightsFile, 'b_dec'),
    ...(arch === 'jumprelu' ? { threshold: toF32(t.threshold!, weightsFile, 'threshold') } : {}),
  };
  let k: number | undefined;
  if (arch === 'topk') {
    k = intField(cfg, cfgFile, 'k', 'activation_fn_kwargs.k');
    if (k < 1 || k > numLatents) throw formatError(cfgFile, `k = ${k} is outside 1..d_sae = ${numLatents}`);
    // Trained with the norms outside: z <- z * ||W_dec,i||, decode with f / ||W_dec,i||. Folding
    // the norms into the encoder gives the same function with unit decoder rows.
    if (cfg.rescale_acts_by_decoder_norm === true) foldDecoderNorms(weights, dIn, numLatents);
  }
  const applyBDec = cfg.apply_b_dec_to_input === undefined ? true : Boolean(cfg.apply_b_dec_to_input);
  return {
    config: { format: 'saelens', architecture: arch, dIn, numLatents, k, applyBDecToInput: applyBDec, dtype: t.W_dec!.dtype, raw: cfg },
    weights,
    files: [cfgFile, weightsFile],
  };
}

async function readSparsify(dir: string, weightsFile: string): Promise<SaeFiles> {
  const cfgFile = path.join(dir, 'cfg.json');
  const cfg = await readCfg(cfgFile);
  const dIn = intField(cfg, cfgFile, 'd_in');
  let numLatents = intField(cfg, cfgFile, 'num_latents');
  if (numLatents === 0) numLatents = dIn * intField(cfg, cfgFile, 'expansion_factor');
  const k = intField(cfg, cfgFile, 'k');
  const activation = cfg.activation ?? 'topk';
  if (activation !== 'topk') throw formatError(cfgFile, `activation '${String(activation)}' is not supported (supported: topk)`);
  if (cfg.transcode === true) throw formatError(cfgFile, 'transcoders are not supported yet');
  if (cfg.skip_connection === true) throw formatError(cfgFile, 'skip connections (W_skip) are not supported yet');
  if (k < 1 || k > numLatents) throw formatError(cfgFile, `k = ${k} is outside 1..num_latents = ${numLatents}`);
  const t = await readTensors(weightsFile, ['encoder.weight', 'encoder.bias', 'W_dec', 'b_dec']);
  checkShape(weightsFile, 'encoder.weight', t['encoder.weight']!, [numLatents, dIn]);
  checkShape(weightsFile, 'encoder.bias', t['encoder.bias']!, [numLatents]);
  checkShape(weightsFile, 'W_dec', t.W_dec!, [numLatents, dIn]);
  checkShape(weightsFile, 'b_dec', t.b_dec!, [dIn]);
  return {
    config: { format: 'sparsify', architecture: 'topk', dIn, numLatents, k, applyBDecToInput: true, dtype: t.W_dec!.dtype, raw: cfg },
    weights: {
      W_enc: transpose(toF32(t['encoder.weight']!, weightsFile, 'encoder.weight'), numLatents, dIn),
      b_enc: toF32(t['encoder.bias']!, weightsFile, 'encoder.bias'),
      W_dec: toF32(t.W_dec!, weightsFile, 'W_dec'),
      b_dec: toF32(t.b_dec!, weightsFile, 'b_dec'),
    },
    files: [cfgFile, weightsFile],
  };
}

async function readGemmaScope(file: string): Promise<SaeFiles> {
  const arrays = await readNpz(file);
  // SAELens maps any lower-case w_ prefix to W_.
  const get = (name: string): IoTensor => {
    const hit = arrays[name] ?? arrays[name.replace(/^W_/, 'w_')];
    if (!hit) throw formatError(file, `missing array ${name} (has: ${Object.keys(arrays).join(', ')})`);
    return hit;
  };
  const W_enc = get('W_enc');
  if (W_enc.shape.length !== 2) throw formatError(file, `W_enc must be 2-D but has shape [${W_enc.shape.join(', ')}]`);
  const [dIn, numLatents] = W_enc.shape as [number, number];
  checkShape(file, 'W_dec', get('W_dec'), [numLatents, dIn]);
  checkShape(file, 'b_enc', get('b_enc'), [numLatents]);
  checkShape(file, 'b_dec', get('b_dec'), [dIn]);
  checkShape(file, 'threshold', get('threshold'), [numLatents]);
  return {
    config: { format: 'gemma-scope', architecture: 'jumprelu', dIn, numLatents, applyBDecToInput: false, dtype: W_enc.dtype, raw: {} },
    weights: {
      W_enc: toF32(W_enc, file, 'W_enc'),
      b_enc: toF32(get('b_enc'), file, 'b_enc'),
      W_dec: toF32(get('W_dec'), file, 'W_dec'),
      b_dec: toF32(get('b_dec'), file, 'b_dec'),
      threshold: toF32(get('threshold'), file, 'threshold'),
    },
    files: [file],
  };
}

/** Reads an SAE saved by SAELens, sparsify or Gemma Scope (a folder, or one of its files). */
export async function readSaeFiles(pathOrDir: string): Promise<SaeFiles> {
  const { format, dir, weights } = await detect(pathOrDir);
  if (format === 'saelens') return readSaelens(dir, weights);
  if (format === 'sparsify') return readSparsify(dir, weights);
  return readGemmaScope(weights);
}

export interface WriteSaeOptions {
  /** 'saelens' (default: SAELens, SAEBench and Neuronpedia load it) or 'sparsify'. */
  format?: 'saelens' | 'sparsify';
  /** Stored dtype. Default 'float32'. */
  dtype?: 'float32' | 'bfloat16';
  /** Extra fields for cfg.json's `metadata` (SAELens) or top level (sparsify); JSON values. */
  metadata?: Record<string, unknown>;
}

function stored(data: Float32Array, shape: number[], dtype: 'float32' | 'bfloat16'): IoTensor {
  if (dtype === 'float32') return { dtype, shape, data };
  const out = new Uint16Array(data.length);
  native().convertInto(data, 'float32', out, 'bfloat16');
  return { dtype, shape, data: out };
}

/**
 * Writes an SAE in SAELens or sparsify layout into `dir` (created if needed); every file is
 * written to a temporary name and renamed. Returns the files written.
 */
export async function writeSaeFiles(
  dir: string,
  config: { architecture: 'topk' | 'jumprelu'; dIn: number; numLatents: number; k?: number; applyBDecToInput: boolean },
  weights: SaeFileWeights,
  options: WriteSaeOptions = {},
): Promise<string[]> {
  const format = options.format ?? 'saelens';
  const dtype = options.dtype ?? 'float32';
  const { dIn, numLatents } = config;
  await mkdir(dir, { recursive: true });
  const cfgFile = path.join(dir, 'cfg.json');
  if (format === 'sparsify') {
    if (config.architecture !== 'topk') {
      throw new SaekitError('ERR_SAEKIT_ARG', `Expected a TopK SAE for format 'sparsify' but this one is ${config.architecture}; use format 'saelens'`);
    }
    if (!config.applyBDecToInput) {
      throw new SaekitError('ERR_SAEKIT_ARG', "sparsify always subtracts b_dec from the input; save this SAE with format 'saelens'");
    }
    const file = path.join(dir, 'sae.safetensors');
    await writeSafetensors(file, {
      'encoder.weight': stored(transpose(weights.W_enc, dIn, numLatents), [numLatents, dIn], dtype),
      'encoder.bias': stored(weights.b_enc, [numLatents], dtype),
      W_dec: stored(weights.W_dec, [numLatents, dIn], dtype),
      b_dec: stored(weights.b_dec, [dIn], dtype),
    });
    const cfg = {
      activation: 'topk',
      expansion_factor: Number.isInteger(numLatents / dIn) ? numLatents / dIn : Math.ceil(numLatents / dIn),
      normalize_decoder: true,
      num_latents: numLatents,
      k: config.k,
      multi_topk: false,
      skip_connection: false,
      transcode: false,
      d_in: dIn,
      ...(options.metadata ?? {}),
    };
    await writeFileAtomic(cfgFile, `${JSON.stringify(cfg, null, 2)}\n`);
    return [cfgFile, file];
  }
  const file = path.join(dir, 'sae_weights.safetensors');
  const tensors: Record<string, IoTensor> = {
    W_enc: stored(weights.W_enc, [dIn, numLatents], dtype),
    b_enc: stored(weights.b_enc, [numLatents], dtype),
    W_dec: stored(weights.W_dec, [numLatents, dIn], dtype),
    b_dec: stored(weights.b_dec, [dIn], dtype),
  };
  if (config.architecture === 'jumprelu') {
    if (!weights.threshold) throw new SaekitError('ERR_SAEKIT_ARG', 'Expected weights.threshold for a JumpReLU SAE');
    tensors.threshold = stored(weights.threshold, [numLatents], dtype);
  }
  await writeSafetensors(file, tensors);
  const cfg = {
    architecture: config.architecture,
    d_in: dIn,
    d_sae: numLatents,
    dtype,
    device: 'cpu',
    apply_b_dec_to_input: config.applyBDecToInput,
    normalize_activations: 'none',
    reshape_activations: 'none',
    ...(config.architecture === 'topk' ? { k: config.k, rescale_acts_by_decoder_norm: false } : {}),
    metadata: { saekit_version: saekitVersion(), ...(options.metadata ?? {}) },
  };
  await writeFileAtomic(cfgFile, `${JSON.stringify(cfg, null, 2)}\n`);
  return [cfgFile, file];
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
