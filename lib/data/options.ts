/** Validation of BatchOptions and the sizes derived from them. */
import { argError } from '../errors.js';
import { checkBool, checkInt, checkOneOf, checkOptions, checkSeed, optionNames } from '../validate.js';
import type { BatchOptions } from './types.js';

export type NonFinitePolicy = 'error' | 'skip';
export const NON_FINITE: readonly NonFinitePolicy[] = ['error', 'skip'];

export const DEFAULT_BATCH_SIZE = 4096;
export const DEFAULT_BUFFER_BYTES = 256 * 1024 * 1024;
/** Largest single read (and shuffle chunk) by default. */
export const MAX_CHUNK_BYTES = 4 * 1024 * 1024;
/** Largest batch: 2^30 bytes of float32 (one typed array). */
const MAX_BATCH_ELEMENTS = 2 ** 28;

export interface ResolvedBatchOptions {
  batchSize: number;
  shuffle: boolean;
  seed: bigint;
  epochs: number;
  dropLast: boolean;
  bufferBytes: number;
  onNonFinite: NonFinitePolicy;
  /** Rows per shuffle chunk. */
  chunkRows: number;
  /** Rows the mixing buffer may hold (at least 3). */
  bufferRows: number;
  recycle: boolean;
}

const BATCH_OPTIONS = optionNames<BatchOptions>({
  batchSize: true, shuffle: true, seed: true, epochs: true, dropLast: true, bufferBytes: true, onNonFinite: true, chunkRows: true, recycle: true,
});

/**
 * A batch size for rows of width `dIn`, checked under the caller's `name`: `value` (at most
 * `maxRows`), or by default 4096 rows, fewer for rows wider than 2^16 values (a batch is at most
 * 2^28 values; dIn is at most 2^24). For the callers that read a source in batches of their own
 * (evaluate, cooccurrence, ...) too, so that their default fits any width and a value too large is
 * named as their argument.
 */
export function batchRows(name: string, value: unknown, dIn: number, maxRows = MAX_BATCH_ELEMENTS): number {
  const batchSize = value === undefined ? Math.min(DEFAULT_BATCH_SIZE, Math.floor(MAX_BATCH_ELEMENTS / dIn)) : checkInt(name, value, 1, maxRows);
  if (batchSize * dIn > MAX_BATCH_ELEMENTS) {
    throw argError(name, `integer between 1 and ${Math.floor(MAX_BATCH_ELEMENTS / dIn)} (batches are at most 2^28 values; dIn = ${dIn})`, batchSize);
  }
  return batchSize;
}

/** Checks `options` for a source of width `dIn`; throws the standard SaekitError naming the field. */
export function resolveBatchOptions(options: BatchOptions | undefined, dIn: number, sourceDefault: NonFinitePolicy): ResolvedBatchOptions {
  const o = checkOptions('options', options, BATCH_OPTIONS);
  const batchSize = batchRows('options.batchSize', o.batchSize, dIn);
  const shuffle = o.shuffle === undefined ? false : checkBool('options.shuffle', o.shuffle);
  const seed = o.seed === undefined ? 0n : checkSeed('options.seed', o.seed);
  const epochs = o.epochs === undefined ? 1 : checkInt('options.epochs', o.epochs, 1, Number.MAX_SAFE_INTEGER);
  const dropLast = o.dropLast === undefined ? false : checkBool('options.dropLast', o.dropLast);
  const rowBytes = dIn * 4;
  const bufferBytes = o.bufferBytes === undefined ? DEFAULT_BUFFER_BYTES : checkInt('options.bufferBytes', o.bufferBytes, 1, Number.MAX_SAFE_INTEGER);
  const bufferRows = Math.floor(bufferBytes / rowBytes);
  if (bufferRows < 3) {
    throw argError('options.bufferBytes', `integer >= ${3 * rowBytes} (three rows of ${dIn} float32 values)`, bufferBytes);
  }
  // The mixing buffer is one Float32Array (3 windows).
  const maxBufferRows = Math.floor((2 ** 32 - 1) / dIn);
  if (bufferRows > maxBufferRows) {
    throw argError('options.bufferBytes', `integer between ${3 * rowBytes} and ${Math.max(3, maxBufferRows) * rowBytes} (2^32 float32 values)`, bufferBytes);
  }
  const onNonFinite = o.onNonFinite === undefined ? sourceDefault : checkOneOf('options.onNonFinite', o.onNonFinite, NON_FINITE);
  let chunkRows: number;
  if (o.chunkRows === undefined) {
    const chunkBytes = Math.min(MAX_CHUNK_BYTES, Math.max(Math.floor(bufferBytes / 16), 64 * 1024), Math.floor(bufferBytes / 2));
    chunkRows = Math.max(1, Math.floor(chunkBytes / rowBytes));
  } else {
    chunkRows = checkInt('options.chunkRows', o.chunkRows, 1, MAX_BATCH_ELEMENTS);
    if (chunkRows * dIn > MAX_BATCH_ELEMENTS) {
      throw argError('options.chunkRows', `integer between 1 and ${Math.floor(MAX_BATCH_ELEMENTS / dIn)} (dIn = ${dIn})`, chunkRows);
    }
  }
  const recycle = o.recycle === undefined ? false : checkBool('options.recycle', o.recycle);
  return { batchSize, shuffle, seed, epochs, dropLast, bufferBytes, onNonFinite, chunkRows, bufferRows, recycle };
}
