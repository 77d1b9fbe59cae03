/**
 * Activation data sources: rows of activations from .npy, .safetensors and raw files (single
 * files, folders, globs, lists of shards), from a Float32Array or from an async iterable, served
 * as float32 batches in file order or shuffled.
 *
 * ## Reading
 * Only headers are read when a source is opened. A pass reads with positioned reads of at most
 * 4 MiB (several in flight on saekit's I/O threads, one per core), never the whole file: float32 rows in C order
 * are read straight into the batch (or mixing-buffer window) they end up in; float16/bfloat16
 * (converted by the addon), float64 (rounded to nearest), big-endian and 2-D Fortran-order data
 * go through a small staging buffer. Every row is screened for NaN/±Infinity as it arrives
 * (onNonFinite: 'error' names the file and the row within it; 'skip' drops and counts it).
 * Batches are fresh arrays; a pass keeps the next batch in preparation (and one ready) while the
 * consumer holds the current one. Files are open only while a pass runs.
 *
 * ## Shuffling (shuffle: true)
 * 1. Chunk order: each shard (in name order) is cut into chunks of `chunkRows` consecutive rows
 *    (the last chunk of a shard may be shorter; chunks never span shards). Epoch e reads the
 *    chunks in the order of a Fisher-Yates permutation drawn from Rng(seed, e, 1).
 * 2. Mixing buffer (SAELens's mixing buffer): bufferBytes holds three windows of `half` rows
 *    (half = floor(bufferBytes / (4 dIn) / 3), or ceil(numRows / 2) when the source fits in two
 *    windows). The first 2 × half rows of the chunk stream fill two windows. Each round draws a
 *    uniformly random half of the resident rows, in random order (partial Fisher-Yates with
 *    Rng(seed, e, 2)), and serves them as batches; meanwhile the next `half` rows of the stream
 *    are read into the free slots (the third window's at first). The kept rows and the new ones
 *    form the next round's buffer; rows never move: the resident rows are a list of slots, and the
 *    slots just served are the ones the next read fills. When the stream ends, all
 *    remaining rows are served in random order. The draw depends only on the list of resident
 *    rows, never on read timing: the same seed, files and (bufferBytes, chunkRows) give the
 *    same rows in the same order, whatever batchSize cuts them into.
 * 3. Without shuffle, rows come in file order.
 * Memory: the mixing buffer (bufferBytes, touched as rows arrive), a few 4 MiB reads, and the
 * batches queued ahead of the consumer: one (plus the one being filled), or up to 64 small ones
 * holding about 4 MiB in all.
 */
export { openActivations, fromArray, fromAsyncIterable } from './sources.js';
export type { ActivationSource, OwnedActivationSource, Batch, BatchOptions, OpenOptions } from './types.js';
export { superposition } from './synthetic.js';
export { synthetic, sharkey, mfr } from './synthetic-compat.js';
export type { SuperpositionOptions, SuperpositionData, SparseCodes as SyntheticCodes, Firing, Magnitude, Correlation, HierarchyNode } from './synthetic.js';
export type { SharkeyOptions, SharkeyData, MfrOptions, MfrData, CompatData } from './synthetic-compat.js';
