/** Public types of the activation data sources. */

/** A batch of activation rows. */
export interface Batch {
  /** Number of rows. */
  rows: number;
  /** Values per row. */
  dIn: number;
  /**
   * rows × dIn float32 values, row-major: a fresh array the consumer may keep and modify, or,
   * with `batches({ recycle: true })`, an array that is reused once the consumer asks for a later batch.
   */
  data: Float32Array;
}

/** How `batches()` serves the rows. */
export interface BatchOptions {
  /**
   * Rows per batch (a batch holds at most 2^28 values). Default 4096, or floor(2^28 / dIn) for
   * rows wider than 65536 values.
   */
  batchSize?: number;
  /**
   * Serve rows in a seeded pseudo-random order: files' chunks (chunkRows) in a permuted order,
   * mixed in a SAELens-style buffer. Streams (fromAsyncIterable) have no chunks: their rows move
   * only within the buffer (about two thirds of bufferBytes). Default false: file order.
   */
  shuffle?: boolean;
  /** Shuffle seed: the same seed, inputs and options give the same batches. Default 0. */
  seed?: number | bigint;
  /**
   * Passes over the data; each epoch is shuffled differently (seed and epoch). Default 1. Over a
   * finite source an epoch that gives no batch (every row skipped as non-finite, or fewer rows
   * than a batch with dropLast) ends the iteration: the later epochs hold the same rows.
   */
  epochs?: number;
  /** Drop the short last batch of each epoch. Default false. */
  dropLast?: boolean;
  /**
   * Memory of the shuffle (mixing) buffer, in bytes of float32 rows. Default 256 MiB. Two thirds
   * hold the rows being mixed (SAELens's buffer); the last third is read into while serving.
   */
  bufferBytes?: number;
  /** What to do with a row holding NaN or ±Infinity. Default: the source's option, else 'error'. */
  onNonFinite?: 'error' | 'skip';
  /**
   * Rows per chunk: the unit whose order is permuted when shuffling; reads never span a chunk.
   * Default: 4 MiB of float32 rows (less for a bufferBytes under 64 MiB). Part of the seed's
   * contract: the same chunkRows and bufferBytes are needed to reproduce a shuffled sequence.
   */
  chunkRows?: number;
  /**
   * Reuse a small ring of batch arrays instead of allocating a new one per batch: faster (no
   * fresh memory to fault in and collect), but a batch's `data` is only valid until the
   * iterator's next() is called again; copy what you keep. That includes the last batch of a
   * `for await` loop that runs to its end: the loop's final next() hands it back (after a
   * `break` it stays valid). The consumer may still modify it. Default false.
   */
  recycle?: boolean;
}

/** A finite or streaming collection of activation rows of width dIn. */
export interface ActivationSource {
  /** Values per row. */
  readonly dIn: number;
  /** Rows in the source (files and arrays); undefined for streams. Rows skipped as non-finite still count. */
  readonly numRows: number | undefined;
  /**
   * Rows dropped by onNonFinite: 'skip' so far, over every batches() iteration and epoch; counted
   * when read, so rows read ahead of a consumer that then stopped count too.
   */
  readonly skippedRows?: number;
  /**
   * Iterates the rows as batches; every call starts a new, independent pass. A started pass
   * holds the batches it read ahead (and its files) until it ends, its iterator's return() is
   * called (for await does so on break, return and throw) or the source is closed. An iterator
   * advanced by hand and then dropped lets them go when it is collected; return() frees them now.
   */
  batches(options?: BatchOptions): AsyncIterable<Batch>;
  /** Stops iterations in progress, waits for their reads, and closes the files. */
  close(): Promise<void>;
}

/**
 * The sources saekit makes (openActivations, fromArray, fromAsyncIterable, synthetic data): an
 * ActivationSource that `await using` closes. (Functions that take a source accept any
 * ActivationSource, your own included.)
 */
export interface OwnedActivationSource extends ActivationSource, AsyncDisposable {
  /** close(), for `await using`. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** How `openActivations` reads its files. */
export interface OpenOptions {
  /**
   * The safetensors tensor to read. Default: the file's only 2-D tensor; in a file without one,
   * its only tensor of more dimensions (rows are its leading dimensions flattened, as for .npy).
   */
  tensor?: string;
  /** Element type of raw files (.bin, .raw, .dat; implied by .f32/.f16/.bf16/.f64). Must match self-describing files. */
  dtype?: 'float32' | 'float16' | 'bfloat16' | 'float64';
  /** Values per row: required for raw files, checked against the others. */
  dIn?: number;
  /** Default for batches(): 'error' (throw ERR_SAEKIT_NONFINITE) or 'skip' the row. Default 'error'. */
  onNonFinite?: 'error' | 'skip';
}
