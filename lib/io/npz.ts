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
import { runSliced } from '../slices.js';
import { bytePieces, checkPath, checkWellFormed, defineOwn, formatError, pieceLimits, type IoArray, type IoTensor } from './common.js';
import { allocNpyArray, decodeArraySteps, encodeNpyParts, MAX_NPY_HEADER, parseNpyHeaderBytes, parseNpyOwned, type NpyHeader } from './npy.js';
import { memorySource, openFileSource, writeChunksAtomic, type ByteSource } from './source.js';
import {
  encodeZipParts,
  quoteName,
  readZipDirectory,
  readZipEntry,
  readZipEntryHead,
  readZipEntryInto,
  verifyZipEntry,
  type ZipEntry,
  type ZipWriteOptions,
} from './zip.js';

const WHAT = 'npz file';
/** The most bytes an .npy header can take: magic, version, a 4-byte length and MAX_NPY_HEADER. */
const NPY_HEADER_SPAN = 12 + MAX_NPY_HEADER;

/** An .npy header as read from an archive entry, before its data is inflated. */
export type NpzHeaders = ReadonlyMap<string, NpyHeader>;

/**
 * Reads every array of an archive source. Everything that can be checked without the data comes
 * first: the entry names (.npy, no duplicates), then every entry's .npy header (from its first
 * bytes only: a deflated entry is not inflated past them) against its declared size, then
 * `inspect` (a caller's own checks of names, dtypes and shapes, e.g. that the arrays of an SAE
 * agree). Only then is any entry read whole, so a small archive that declares huge or unwanted
 * arrays is refused before they are allocated. Each array is then decoded in the entry's own
 * buffer where it can be (parseNpyOwned: no copy; it may start at the header's length into its
 * ArrayBuffer), the CRC-32, swap and reorder in slices between turns of the event loop; an entry
 * over 4 GiB straight into its typed array, in pieces (readLargeArray).
 */
async function readArchive(src: ByteSource, inspect?: (headers: NpzHeaders) => void): Promise<Record<string, IoTensor>> {
  const { entries, cdOffset } = await readZipDirectory(src, WHAT);
  const arrays: { key: string; entry: (typeof entries)[number] }[] = [];
  const keys = new Set<string>();
  for (const e of entries) {
    if (e.name.endsWith('/') && e.uncompressedSize === 0) continue; // a folder entry
    if (!e.name.endsWith('.npy')) throw formatError(WHAT, src.name, `entry ${quoteName(e.name)} is not an .npy array`);
    const key = e.name.slice(0, -4);
    if (keys.has(key)) throw formatError(WHAT, src.name, `duplicate entry ${quoteName(e.name)}`);
    keys.add(key);
    arrays.push({ key, entry: e });
  }
  const headers = new Map<string, NpyHeader>();
  const heads = new Map<string, Uint8Array>();
  for (const { key, entry } of arrays) {
    const head = await readZipEntryHead(src, entry, cdOffset, WHAT, NPY_HEADER_SPAN);
    let h: NpyHeader;
    try {
      h = parseNpyHeaderBytes(head, entry.uncompressedSize, `${src.name}:${entry.name}`);
    } catch (err) {
      // A header that does not parse may be a damaged entry: name that (corrupt deflate data, a
      // wrong declared size, a CRC mismatch) when it is one, checked without keeping the bytes.
      await verifyZipEntry(src, entry, cdOffset, WHAT);
      throw err;
    }
    headers.set(key, h);
    // readLargeArray compares the header bytes it reads again with these.
    if (entry.uncompressedSize > pieceLimits.buffer) heads.set(key, head.slice(0, h.dataOffset));
  }
  inspect?.(headers);
  const out: Record<string, IoTensor> = {};
  for (const { key, entry } of arrays) {
    const label = `${src.name}:${entry.name}`;
    if (entry.uncompressedSize > pieceLimits.buffer) {
      defineOwn(out, key, await readLargeArray(src, entry, cdOffset, headers.get(key)!, heads.get(key)!, label));
      continue;
    }
    const bytes = await readZipEntry(src, entry, cdOffset, WHAT);
    defineOwn(out, key, await parseNpyOwned(bytes, label));
  }
  return out;
}

/**
 * One array whose entry is over 4 GiB (no Uint8Array holds it, nor its data): the entry is read
 * (stored) or inflated (deflated) straight into the array's typed array in pieces of at most
 * 1 GiB, its .npy header skipped, with every check of readZipEntry (the CRC-32 over the whole
 * entry included); then swapped and reordered as readNpy does. The array is allocated only
 * after the entry's declared size has been checked against the file (stored data must fit in it,
 * deflated data within the deflate ratio bound). The header bytes read with the data must be
 * those `h` was parsed from (`head`): an entry that differs between the two reads is refused.
 */
async function readLargeArray(src: ByteSource, entry: ZipEntry, cdOffset: number, h: NpyHeader, head: Uint8Array, label: string): Promise<IoTensor> {
  let flat: IoArray | undefined;
  const prefix = await readZipEntryInto(src, entry, cdOffset, WHAT, h.dataOffset, () => {
    flat = allocNpyArray(h, label);
    return bytePieces(flat);
  });
  if (prefix.length !== head.length || prefix.some((b, i) => b !== head[i])) throw formatError(WHAT, src.name, `entry ${quoteName(entry.name)}: its .npy header changed while the archive was read`);
  return runSliced(decodeArraySteps(h, flat!, label));
}

/**
 * Reads the arrays of the .npz file at `path` after `inspect` has accepted their names, dtypes
 * and shapes (it throws to refuse), before any array's data is inflated.
 * @internal For loaders of known layouts (Gemma Scope's params.npz).
 */
export async function readNpzChecked(path: string, inspect: (headers: NpzHeaders) => void): Promise<Record<string, IoTensor>> {
  const src = await openFileSource(path, WHAT);
  try {
    return await readArchive(src, inspect);
  } finally {
    await src.close().catch(() => undefined);
  }
}

/**
 * Reads every array of the .npz file at `path`, keyed by entry name without the `.npy` suffix.
 * Entries may be stored or deflated, and over 4 GiB (read straight into their typed arrays in
 * pieces); sizes, offsets (ZIP64 included) and CRC-32s are checked. An array's data is the
 * entry's own buffer where it can be (no copy), so it may start at the .npy header's length into
 * its ArrayBuffer. The CRC-32s, byte swaps and Fortran-order reorders
 * run on the JS thread in slices between turns of the event loop.
 *
 * @throws SaekitError ERR_SAEKIT_FORMAT naming the file (and entry) and the reason: not a zip
 *   archive, multi-disk or encrypted entries, compression other than stored/deflate, sizes or
 *   offsets out of bounds, a central directory whose records do not exactly fill it, entries
 *   that overlap or whose local header names another file, corrupt deflate data, a CRC
 *   mismatch, a duplicate or non-.npy entry, or an entry that is not a valid .npy file.
 *   ERR_SAEKIT_ARG when the file cannot be opened. ERR_SAEKIT_MEMORY naming the entry when an
 *   array cannot be held here (see readNpy).
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

/** @internal readArchive itself, for tests (a source that counts what is read). */
export const _readNpzSource = readArchive;

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
    // Stored as <key>.npy, a zip entry name of at most 65535 UTF-8 bytes.
    if (Buffer.byteLength(key, 'utf8') > 65531) throw argError('arrays (a name)', 'a name of at most 65531 UTF-8 bytes (stored as <name>.npy, a zip entry name of at most 65535)', key);
    return { name: `${key}.npy`, chunks: encodeNpyParts(arrays[key]!, `arrays[${JSON.stringify(key)}]`) };
  });
  return encodeZipParts(files, options);
}

/**
 * Writes `arrays` (name → tensor) to `path` as an .npz archive that np.load reads, atomically
 * (see writeFileAtomic). Each array becomes the entry `<name>.npy`. The data arrays are read
 * while the Promise is pending (for the CRC-32, the deflater and the file), not copied: they must
 * stay untouched until the Promise settles (a value changed meanwhile can leave an entry whose
 * CRC-32 does not match its data).
 *
 * @param options.compress Deflate the entries like np.savez_compressed (default false, like np.savez).
 * @throws SaekitError ERR_SAEKIT_ARG / _DTYPE / _SHAPE for an invalid tensor or options;
 *   ERR_SAEKIT_ARG when the file cannot be written, or when a data array is detached or resized
 *   before the write ends (`path` keeps its old content).
 */
export async function writeNpz(path: string, arrays: Record<string, IoTensor>, options?: { compress?: boolean }): Promise<void> {
  checkPath(path);
  const { compress = false } = checkOptions('options', options, ['compress']);
  if (typeof compress !== 'boolean') throw argError('options.compress', 'boolean', compress);
  await writeChunksAtomic(path, await encodeNpzParts(arrays, { compress }));
}
