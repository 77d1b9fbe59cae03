/**
 * Finding and describing activation files ("shards"): expanding folders, globs and lists into
 * files in name order, and reading each file's header into where its rows lie on disk.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';

import { argError, SaekitError } from '../errors.js';
import { readNpyHeader, readSafetensors } from '../io/index.js';
import { DISK_DTYPES, ITEM_BYTES, type DiskDType } from './convert.js';
import { compareNames, expandGlob, isGlob } from './glob.js';

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
  /** Column-major (NumPy fortran_order) 2-D data. */
  fortran: boolean;
  bigEndian: boolean;
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

function isRaw(p: string): boolean {
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
    const st = await fs.stat(item).catch(() => null);
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

function shapeError(label: string, expected: string, shape: readonly number[]): SaekitError {
  return new SaekitError('ERR_SAEKIT_SHAPE', `Expected ${expected} in ${label} but its shape is [${shape.join(', ')}]`);
}

function diskDType(dtype: string, label: string): DiskDType {
  if (!(DISK_DTYPES as readonly string[]).includes(dtype)) {
    throw new SaekitError('ERR_SAEKIT_DTYPE', `Expected activations of dtype ${DISK_DTYPES.join(', ')} in ${label} but it holds ${dtype}`);
  }
  return dtype as DiskDType;
}

/** Rows and width of a shape [..., dIn] (leading dimensions flattened into rows). */
function rowsOf(shape: readonly number[], label: string): { rows: number; dIn: number } {
  if (shape.length < 2) throw shapeError(label, 'a 2-D array [rows, dIn]', shape);
  const dIn = shape[shape.length - 1]!;
  if (dIn < 1) throw shapeError(label, 'at least one value per row', shape);
  return { rows: shape.slice(0, -1).reduce((a, b) => a * b, 1), dIn };
}

function checkDType(opts: ShardOptions, dtype: DiskDType, label: string): void {
  if (opts.dtype !== undefined && opts.dtype !== dtype) {
    throw new SaekitError('ERR_SAEKIT_DTYPE', `Expected options.dtype = '${opts.dtype}' to match ${label}, which holds ${dtype} (options.dtype is for raw files; leave it out)`);
  }
}

/** Reads the header of one file. */
export async function openShard(file: string, opts: ShardOptions): Promise<Shard> {
  const ext = extOf(file);
  if (ext === '.npy') {
    const h = await readNpyHeader(file);
    const dtype = diskDType(h.dtype, file);
    checkDType(opts, dtype, file);
    const { rows, dIn } = rowsOf(h.shape, file);
    if (h.fortranOrder && h.shape.length > 2 && rows > 1 && dIn > 1) {
      throw new SaekitError(
        'ERR_SAEKIT_FORMAT',
        `Expected C-order (or 2-D) data in ${file} but it is a ${h.shape.length}-D Fortran-order array; ` +
          're-save it with np.save(path, np.ascontiguousarray(a))',
      );
    }
    return { path: file, label: file, dtype, rows, dIn, dataOffset: h.dataOffset, fortran: h.fortranOrder && rows > 1 && dIn > 1, bigEndian: h.bigEndian };
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
            `Expected options.tensor to name a tensor of ${file} but it has no '${opts.tensor}' (it has: ${r.tensors.map((t) => `'${t.name}'`).join(', ') || 'no tensors'})`,
          );
        }
      } else {
        const candidates = r.tensors.filter((t) => t.shape.length === 2);
        if (candidates.length !== 1) {
          const list = r.tensors.map((t) => `'${t.name}' [${t.shape.join(', ')}] ${t.dtype}`).join(', ');
          throw new SaekitError(
            'ERR_SAEKIT_ARG',
            `Expected options.tensor for ${file}, which has ${candidates.length === 0 ? 'no 2-D tensor' : `${candidates.length} 2-D tensors`} (tensors: ${list || 'none'})`,
          );
        }
        entry = candidates[0]!;
      }
      const label = `tensor '${entry.name}' of ${file}`;
      const dtype = diskDType(entry.dtype, label);
      checkDType(opts, dtype, label);
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
  if (dtype === undefined) throw new SaekitError('ERR_SAEKIT_ARG', `Expected options.dtype for the raw file ${file} but received undefined`);
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
  let next = 0;
  const worker = async () => {
    while (next < files.length) {
      const i = next++;
      shards[i] = await openShard(files[i]!, opts);
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

