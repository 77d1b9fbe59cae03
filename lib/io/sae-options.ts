/**
 * The options of saving an SAE (SparseAutoencoder.save and io.writeSaeFiles) and their one check:
 * a module of its own, so sae/ checks them before it loads the file formats.
 */
import { argError } from '../errors.js';
import { checkOneOf, checkOptions, optionNames } from '../validate.js';

/** Options of writeSaeFiles: the layout, the stored dtype and extra metadata. */
export interface WriteSaeOptions {
  /** 'saelens' (default: SAELens, SAEBench and Neuronpedia load it) or 'sparsify'. */
  format?: 'saelens' | 'sparsify';
  /** Stored dtype. Default 'float32'. */
  dtype?: 'float32' | 'bfloat16';
  /** Extra fields for cfg.json's `metadata` (SAELens) or top level (sparsify); JSON values. */
  metadata?: Record<string, unknown>;
}

const WRITE_SAE_OPTIONS = optionNames<WriteSaeOptions>({ format: true, dtype: true, metadata: true });

/**
 * The options of a save, checked before anything is read or written: a misspelt name, a format or
 * dtype not listed, or metadata that is not an object of JSON values is refused.
 */
export function checkWriteSaeOptions(options: WriteSaeOptions | undefined): WriteSaeOptions {
  const o = checkOptions('options', options, WRITE_SAE_OPTIONS);
  if (o.format !== undefined) checkOneOf('options.format', o.format, ['saelens', 'sparsify'] as const);
  if (o.dtype !== undefined) checkOneOf('options.dtype', o.dtype, ['float32', 'bfloat16'] as const, 'ERR_SAEKIT_DTYPE');
  if (o.metadata !== undefined) checkJsonObject('options.metadata', o.metadata);
  return o;
}

/** Refuses a value that is not an object of JSON values (metadata for a cfg.json). */
export function checkJsonObject(name: string, m: unknown): void {
  if (m === null || typeof m !== 'object' || Array.isArray(m) || ArrayBuffer.isView(m)) throw argError(name, 'an object of JSON values', m);
  try {
    JSON.stringify(m);
  } catch (err) {
    throw argError(name, `an object of JSON values (${(err as Error).message})`, m);
  }
}
