/**
 * Finding and describing activation files ("shards"): expanding folders, globs and lists into
 * files in name order, and reading each file's header into where its rows lie on disk.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';

import { argError, SaekitError } from '../errors.js';
import { statOrMissing } from '../io/common.js';
import { readNpyHeader, readSafetensors } from '../io/index.js';
import { DISK_DTYPES, ITEM_BYTES, type DiskDType } from './convert.js';
import { compareNames, expandGlob, isGlob } from './glob.js';
import { fileIdentity, type FileIdentity } from './files.js';

/** One file's rows: rows × dIn elements of `dtype` at `dataOffset`. */
export interface Shard {
  path: string;
  /** How messages name the file: its path, with the tensor for safetensors. */
  label: string;
  dtype: DiskDType;
  rows: number;
  dIn: number;
  /** Absolute byte offset of row 0. */
  dataOffset: number;
  /**
   * Column-major (NumPy fortran_order) data read as [rows, dIn]: column c of every row lies
   * contiguously at dataOffset + c × rows × item. Only set when rows > 1 and dIn > 1 (otherwise
   * both orders are the same bytes), and only for shapes with at most one leading dimension
   * above 1 (others are refused: see fortranLayout).
   */
  fortran: boolean;
  bigEndian: boolean;
  /** The file as it was before its header was read: reads check each new handle against it. */
  identity?: FileIdentity;
}

export interface ShardOptions {
  tensor?: string;
  dtype?: DiskDType;
  dIn?: number;
}

const RAW_EXTENSIONS: Readonly<Record<string, DiskDType | undefined>> = {
  '.bin': undefined,
  '.raw': undefined,
  '.dat': undefined,
  '.f32': 'float32',
  '.f16': 'float16',
  '.bf16': 'bfloat16',
  '.f64': 'float64',
};
const SUPPORTED = ['.npy', '.safetensors', ...Object.keys(RAW_EXTENSIONS)];

function extOf(p: string): string {
  return path.extname(p).toLowerCase();
}

/** Whether `p` has a raw-file extension (.bin .raw .dat .f32 .f16 .bf16 .f64): rows without a header. */
export function isRaw(p: string): boolean {
  return Object.hasOwn(RAW_EXTENSIONS, extOf(p));
}

/**
 * Expands `input` (a file, folder, glob or list of them) into the files to read, sorted by
 * path. Folders and globs keep only supported extensions (raw ones only when `dIn` is given,
 * since a .bin can be anything); a file named explicitly must have a supported extension.
 */
export async function resolveShardPaths(input: unknown, opts: ShardOptions): Promise<string[]> {
  let items: unknown[];
  if (typeof input === 'string') items = [input];
  else if (Array.isArray(input)) {
    if (input.length === 0) throw argError('pathOrPaths', 'a path, glob pattern or a non-empty array of them', input);
    items = input;
  } else throw argError('pathOrPaths', 'a path, glob pattern or array of them', input);
  const keep = (p: string) => {
    const e = extOf(p);
    return e === '.npy' || e === '.safetensors' || (opts.dIn !== undefined && isRaw(p));
  };
  const files: string[] = [];
  for (const [i, item] of items.entries()) {
    const name = Array.isArray(input) ? `pathOrPaths[${i}]` : 'pathOrPaths';
    if (typeof item !== 'string' || item.length === 0) throw argError(name, 'a non-empty path string', item);
    const st = await statOrMissing(item);
    if (st?.isDirectory()) {
      const entries = await fs.readdir(item, { withFileTypes: true });
      const found: string[] = [];
      for (const e of entries) {
        if (e.name.startsWith('.')) continue;
        const p = path.resolve(item, e.name);
        const isFile = e.isFile() || (e.isSymbolicLink() && (await fs.stat(p).catch(() => null))?.isFile());
        if (isFile && keep(p)) found.push(p);
      }
      if (found.length === 0) {
        throw new SaekitError(
          'ERR_SAEKIT_ARG',
          `Expected a folder holding activation files for ${name} but '${item}' has none ` +
            `(looked for .npy and .safetensors${opts.dIn !== undefined ? ` and raw ${Object.keys(RAW_EXTENSIONS).join(' ')}` : '; raw files need options.dIn'})`,
        );
      }
      files.push(...found);
    } else if (st?.isFile()) {
      if (!SUPPORTED.includes(extOf(item))) {
        throw new SaekitError(
          'ERR_SAEKIT_ARG',
          `Expected an activation file (${SUPPORTED.join(', ')}) for ${name} but '${item}' has ${extOf(item) ? `the unknown extension '${extOf(item)}'` : 'no extension'}` +
            (extOf(item) === '.npz' ? ' (.npz archives cannot be streamed: save each array with np.save as .npy)' : ''),
        );
      }
      files.push(path.resolve(item));
    } else if (st) {
      throw argError(name, 'a regular file, folder or glob pattern', item);
    } else if (isGlob(item)) {
      // In a shell a trailing '/' makes a pattern match folders only; expandGlob matches files.
      if (item.endsWith('/')) {
        throw new SaekitError('ERR_SAEKIT_ARG', `Expected a glob pattern of files for ${name} but '${item}' ends in '/', which matches folders only: name their files ('${item}*.npy') or pass the folders`);
      }
      const found = (await expandGlob(item)).filter(keep);
      if (found.length === 0) {
        throw new SaekitError(
          'ERR_SAEKIT_ARG',
          `Expected the glob pattern ${name} = '${item}' to match activation files but it matches none` +
            (opts.dIn === undefined ? ' (.npy or .safetensors; raw files need options.dIn)' : ''),
        );
      }
      files.push(...found);
    } else {
      throw new SaekitError('ERR_SAEKIT_ARG', `Expected an existing file, folder or glob pattern for ${name} but '${item}' does not exist`);
    }
  }
  files.sort(compareNames);
  for (let i = 1; i < files.length; i++) {
    if (files[i] === files[i - 1]) throw new SaekitError('ERR_SAEKIT_ARG', `Expected each file once in pathOrPaths but '${files[i]}' is listed twice`);
  }
  return files;
}

/**
 * The first 8 of `items` for a message, then how many there are: a file may hold a million
 * tensors, or a shape a million dimensions, and a message should stay a line.
 */
function shortList<T>(items: readonly T[], show: (x: T) => string): string {
  const shown = items.slice(0, 8).map(show).join(', ');
  return items.length > 8 ? `${shown}, ... (${items.length} in all)` : shown;
}

/** A tensor name from a file for a message, quoted and cut at 60 characters. */
function nameForMessage(name: string): string {
  return `'${name.length > 60 ? `${name.slice(0, 60)}...` : name}'`;
}

function shapeError(label: string, expected: string, shape: readonly number[]): SaekitError {
  return new SaekitError('ERR_SAEKIT_SHAPE', `Expected ${expected} in ${label} but its shape is [${shortList(shape, String)}]`);
}

function diskDType(dtype: string, label: string): DiskDType {
  if (!(DISK_DTYPES as readonly string[]).includes(dtype)) {
    throw new SaekitError('ERR_SAEKIT_DTYPE', `Expected activations of dtype ${DISK_DTYPES.join(', ')} in ${label} but it holds ${dtype}`);
  }
  return dtype as DiskDType;
}

/** The widest row a source streams (options.dIn's limit). */
const MAX_ROW_WIDTH = 1 << 24;

/** Rows and width of a shape [..., dIn] (leading dimensions flattened into rows). */
function rowsOf(shape: readonly number[], label: string): { rows: number; dIn: number } {
  if (shape.length < 2) throw shapeError(label, 'a 2-D array [rows, dIn]', shape);
  const dIn = shape[shape.length - 1]!;
  if (dIn < 1) throw shapeError(label, 'at least one value per row', shape);
  // The same limit as options.dIn, fromArray and fromAsyncIterable (an empty file may claim any width).
  if (dIn > MAX_ROW_WIDTH) throw shapeError(label, `rows of at most 2^24 = ${MAX_ROW_WIDTH} values`, shape);
  return { rows: shape.slice(0, -1).reduce((a, b) => a * b, 1), dIn };
}

/**
 * Whether Fortran-order data of `shape` can be streamed as [rows, dIn] column by column, and
 * how: 'same' when its bytes are already in C order, 'columns' when each column of the
 * flattened rows is contiguous. Fortran order puts element (i0, ..., ik) at
 * i0 + d0 (i1 + d1 (... + d(k-1) ik)); read as [rows, dIn] that is row + rows × column only
 * when at most one leading dimension is above 1 (its index then is the row index). With two or
 * more above 1 the rows come out permuted (a (2, 3, 1) array would stream as 0, 3, 1, 4, 2, 5),
 * so such arrays are refused (undefined), whatever dIn is. Empty arrays have no order.
 */
function fortranLayout(shape: readonly number[], rows: number, dIn: number): 'same' | 'columns' | undefined {
  if (rows === 0) return 'same';
  if (shape.slice(0, -1).filter((d) => d > 1).length > 1) return undefined;
  return rows > 1 && dIn > 1 ? 'columns' : 'same';
}

/** What the other inputs are, for the hints of options.dtype's messages. */
export interface ShardInputs {
  /** A raw file whose extension implies no dtype (.bin .raw .dat), if any: it needs options.dtype. */
  untypedRaw?: string;
  /** Whether some input is self-describing (.npy, .safetensors). */
  described: boolean;
}

/** The dtype extensions a raw file may have instead of options.dtype, for messages. */
const DTYPE_EXTENSIONS = Object.keys(RAW_EXTENSIONS).filter((e) => RAW_EXTENSIONS[e] !== undefined);

function checkDType(opts: ShardOptions, dtype: DiskDType, label: string, inputs: ShardInputs): void {
  if (opts.dtype !== undefined && opts.dtype !== dtype) {
    // With .bin/.raw/.dat files among the inputs, leaving options.dtype out is no way out.
    const hint =
      inputs.untypedRaw === undefined
        ? 'options.dtype is for raw files; leave it out'
        : `options.dtype applies to every file, so all must hold ${opts.dtype}: to mix dtypes, name the raw file ${inputs.untypedRaw} with a dtype ` +
          `extension (${DTYPE_EXTENSIONS.join(', ')}) and leave options.dtype out`;
    throw new SaekitError('ERR_SAEKIT_DTYPE', `Expected options.dtype = '${opts.dtype}' to match ${label}, which holds ${dtype} (${hint})`);
  }
}

/** Reads the header of one file (`inputs`: what the other files are, for messages). */
export async function openShard(file: string, opts: ShardOptions, inputs: ShardInputs = { described: false }): Promise<Shard> {
  const ext = extOf(file);
  if (ext === '.npy') {
    const h = await readNpyHeader(file);
    const dtype = diskDType(h.dtype, file);
    checkDType(opts, dtype, file, inputs);
    const { rows, dIn } = rowsOf(h.shape, file);
    const layout = h.fortranOrder ? fortranLayout(h.shape, rows, dIn) : 'same';
    if (layout === undefined) {
      throw new SaekitError(
        'ERR_SAEKIT_FORMAT',
        `Expected C-order (or 2-D) data in ${file} but it is a ${h.shape.length}-D Fortran-order array of shape [${shortList(h.shape, String)}]; ` +
          're-save it with np.save(path, np.ascontiguousarray(a))',
      );
    }
    return { path: file, label: file, dtype, rows, dIn, dataOffset: h.dataOffset, fortran: layout === 'columns', bigEndian: h.bigEndian };
  }
  if (ext === '.safetensors') {
    const r = await readSafetensors(file);
    try {
      let entry;
      if (opts.tensor !== undefined) {
        entry = r.get(opts.tensor);
        if (!entry) {
          throw new SaekitError(
            'ERR_SAEKIT_ARG',
            `Expected options.tensor to name a tensor of ${file} but it has no '${opts.tensor}' (it has: ${shortList(r.tensors, (t) => nameForMessage(t.name)) || 'no tensors'})`,
          );
        }
      } else {
        // The only 2-D tensor; where there is none, the only tensor of more dimensions (its leading
        // ones flattened into rows, as for .npy: activations saved as [batch, seq, dIn]).
        const twoD = r.tensors.filter((t) => t.shape.length === 2);
        const candidates = twoD.length > 0 ? twoD : r.tensors.filter((t) => t.shape.length > 2);
        if (candidates.length !== 1) {
          const list = shortList(r.tensors, (t) => `${nameForMessage(t.name)} [${shortList(t.shape, String)}] ${t.dtype ?? t.code}`);
          const has = twoD.length > 0 ? `${twoD.length} 2-D tensors` : candidates.length === 0 ? 'no tensor of 2 or more dimensions' : `no 2-D tensor and ${candidates.length} of more dimensions`;
          throw new SaekitError('ERR_SAEKIT_ARG', `Expected options.tensor for ${file}, which has ${has} (tensors: ${list || 'none'})`);
        }
        entry = candidates[0]!;
      }
      const label = `tensor ${nameForMessage(entry.name)} of ${file}`;
      const dtype = diskDType(entry.dtype ?? entry.code, label);
      checkDType(opts, dtype, label, inputs);
      const { rows, dIn } = rowsOf(entry.shape, label);
      return { path: file, label, dtype, rows, dIn, dataOffset: entry.offset, fortran: false, bigEndian: false };
    } finally {
      await r.close();
    }
  }
  // Raw little-endian rows.
  const implied = RAW_EXTENSIONS[ext];
  if (opts.dtype !== undefined && implied !== undefined && opts.dtype !== implied) {
    throw new SaekitError('ERR_SAEKIT_DTYPE', `Expected options.dtype = '${opts.dtype}' to match the extension of ${file} (${ext} holds ${implied})`);
  }
  const dtype = opts.dtype ?? implied;
  if (dtype === undefined) {
    const hint = inputs.described
      ? ` (options.dtype applies to every file, so the .npy and .safetensors files must hold it too; or name the raw file with a dtype extension: ${DTYPE_EXTENSIONS.join(', ')})`
      : ` (or name the file with a dtype extension: ${DTYPE_EXTENSIONS.join(', ')})`;
    throw new SaekitError('ERR_SAEKIT_ARG', `Expected options.dtype for the raw file ${file} but received undefined${hint}`);
  }
  if (opts.dIn === undefined) throw new SaekitError('ERR_SAEKIT_ARG', `Expected options.dIn for the raw file ${file} but received undefined`);
  const st = await fs.stat(file).catch((err: unknown) => {
    throw new SaekitError('ERR_SAEKIT_ARG', `Could not open ${file}: ${err instanceof Error ? err.message : String(err)}`);
  });
  const rowBytes = opts.dIn * ITEM_BYTES[dtype];
  if (st.size % rowBytes !== 0) {
    throw new SaekitError(
      'ERR_SAEKIT_SHAPE',
      `Expected the size of raw file ${file} to be a multiple of dIn × ${ITEM_BYTES[dtype]} = ${rowBytes} bytes (${dtype}) but it is ${st.size} bytes`,
    );
  }
  return { path: file, label: file, dtype, rows: st.size / rowBytes, dIn: opts.dIn, dataOffset: 0, fortran: false, bigEndian: false };
}

/** Opens every file's header (a few at a time) and checks they agree on dIn. */
export async function openShards(files: string[], opts: ShardOptions): Promise<Shard[]> {
  const shards: Shard[] = new Array(files.length);
  const inputs: ShardInputs = { untypedRaw: files.find((f) => isRaw(f) && RAW_EXTENSIONS[extOf(f)] === undefined), described: files.some((f) => !isRaw(f)) };
  let next = 0;
  const worker = async () => {
    while (next < files.length) {
      const i = next++;
      // Taken before the header is read, so a change after it is caught at the next open.
      const identity = await fileIdentity(files[i]!).catch(() => undefined);
      shards[i] = { ...(await openShard(files[i]!, opts, inputs)), ...(identity ? { identity } : {}) };
    }
  };
  await Promise.all(Array.from({ length: Math.min(8, files.length) }, worker));
  const dIn = opts.dIn ?? shards[0]!.dIn;
  for (const s of shards) {
    if (s.dIn !== dIn) {
      const why = opts.dIn !== undefined ? `options.dIn = ${dIn}` : `dIn = ${dIn} of ${shards[0]!.label}`;
      throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected rows of ${why} but ${s.label} has dIn = ${s.dIn}`);
    }
  }
  return shards;
}

