/**
 * NumPy's .npz format: a zip archive of .npy files, one per array, named `<key>.npy`
 * (np.savez stores them, np.savez_compressed deflates them; both write ZIP64 local headers).
 *
 * @example
 * ```ts
 * import { io } from 'saekit';
 * await io.writeNpz('params.npz', { W_enc: { dtype: 'float32', shape: [2, 3], data: new Float32Array(6) } }, { compress: true });
 * const { W_enc } = await io.readNpz('params.npz');
 * ```
 */
import { argError } from '../errors.js';
import { checkOptions } from '../validate.js';
import { checkPath, checkWellFormed, defineOwn, formatError, hasOwn, type IoTensor } from './common.js';
import { encodeNpyParts, parseNpy } from './npy.js';
import { memorySource, openFileSource, writeChunksAtomic, type ByteSource } from './source.js';
import { encodeZipParts, quoteName, readZipDirectory, readZipEntry, type ZipWriteOptions } from './zip.js';

const WHAT = 'npz file';

/** Reads every array of an archive source. */
async function readArchive(src: ByteSource): Promise<Record<string, IoTensor>> {
  const { entries, cdOffset } = await readZipDirectory(src, WHAT);
  const out: Record<string, IoTensor> = {};
  for (const e of entries) {
    if (e.name.endsWith('/') && e.uncompressedSize === 0) continue; // a folder entry
    if (!e.name.endsWith('.npy')) throw formatError(WHAT, src.name, `entry ${quoteName(e.name)} is not an .npy array`);
    const key = e.name.slice(0, -4);
    if (hasOwn(out, key)) throw formatError(WHAT, src.name, `duplicate entry ${quoteName(e.name)}`);
    const bytes = await readZipEntry(src, e, cdOffset, WHAT);
    defineOwn(out, key, parseNpy(bytes, `${src.name}:${e.name}`));
  }
  return out;
}

/**
 * Reads every array of the .npz file at `path`, keyed by entry name without the `.npy` suffix.
 * Entries may be stored or deflated; sizes, offsets (ZIP64 included) and CRC-32s are checked.
 *
 * @throws SaekitError ERR_SAEKIT_FORMAT naming the file (and entry) and the reason: not a zip
 *   archive, multi-disk or encrypted entries, compression other than stored/deflate, sizes or
 *   offsets out of bounds, a central directory whose records do not exactly fill it, entries
 *   that overlap or whose local header names another file, corrupt deflate data, a CRC
 *   mismatch, a duplicate or non-.npy entry, or an entry that is not a valid .npy file.
 *   ERR_SAEKIT_ARG when the file cannot be opened.
 */
export async function readNpz(path: string): Promise<Record<string, IoTensor>> {
  checkPath(path);
  const src = await openFileSource(path, WHAT);
  try {
    return await readArchive(src);
  } finally {
    await src.close().catch(() => undefined);
  }
}

/**
 * Reads every array of an in-memory .npz archive.
 * @internal For tests and fuzzing.
 */
export function decodeNpz(bytes: Uint8Array, name: string): Promise<Record<string, IoTensor>> {
  return readArchive(memorySource(bytes, name));
}

/** @internal The chunks of an .npz archive; `zip64: 'always'` exercises the ZIP64 records. */
export async function encodeNpzParts(arrays: Record<string, IoTensor>, options?: ZipWriteOptions): Promise<Uint8Array[]> {
  if (arrays === null || typeof arrays !== 'object' || Array.isArray(arrays)) throw argError('arrays', 'an object of named tensors', arrays);
  const files = Object.keys(arrays).map((key) => {
    checkWellFormed('arrays (a name)', key);
    return { name: `${key}.npy`, chunks: encodeNpyParts(arrays[key]!, `arrays[${JSON.stringify(key)}]`) };
  });
  return encodeZipParts(files, options);
}

/**
 * Writes `arrays` (name → tensor) to `path` as an .npz archive that np.load reads, atomically
 * (see writeFileAtomic). Each array becomes the entry `<name>.npy`.
 *
 * @param options.compress Deflate the entries like np.savez_compressed (default false, like np.savez).
 * @throws SaekitError ERR_SAEKIT_ARG / _DTYPE / _SHAPE for an invalid tensor or options;
 *   ERR_SAEKIT_ARG when the file cannot be written.
 */
export async function writeNpz(path: string, arrays: Record<string, IoTensor>, options?: { compress?: boolean }): Promise<void> {
  checkPath(path);
  const { compress = false } = checkOptions('options', options, ['compress']);
  if (typeof compress !== 'boolean') throw argError('options.compress', 'boolean', compress);
  await writeChunksAtomic(path, await encodeNpzParts(arrays, { compress }));
}
