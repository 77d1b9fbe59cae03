/**
 * Byte sources (a file read with positioned reads, or bytes already in memory) and the atomic
 * writer. Internal to lib/io, except writeFileAtomic, which is public.
 */
import { randomBytes } from 'node:crypto';
import { constants, unlinkSync } from 'node:fs';
import { chmod, lstat, mkdir, open, readlink, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';

import { argError, SaekitError } from '../errors.js';
import { checkPath, checkPlanned, formatError, fsError, MAX_BUFFER_BYTES, planChunk } from './common.js';

/** Random access to a fixed-size run of bytes. */
export interface ByteSource {
  /** The name errors use: the file path, or a caller-chosen label for in-memory bytes. */
  readonly name: string;
  /** Total size in bytes. */
  readonly size: number;
  /**
   * Exactly `length` bytes from `offset`. The caller has already checked the range against
   * `size`; a file that shrank meanwhile is reported as truncated. `into` (at least `length`
   * bytes) receives the data when given; otherwise the result is a fresh, owned buffer.
   */
  read(offset: number, length: number, into?: Uint8Array): Promise<Uint8Array>;
  close(): Promise<void>;
}

/** Largest single fs read (the OS caps one read near 2 GiB). */
const READ_CHUNK = 1 << 30;

/**
 * Flags that open a file for reading without waiting: opening a FIFO for reading blocks until a
 * writer appears (forever, holding one of libuv's threads), and O_NONBLOCK makes it return at
 * once so the regular-file check below can refuse it. Regular files ignore O_NONBLOCK; Windows
 * has no FIFOs to open this way and no such flag.
 */
export const OPEN_READ_NOWAIT = constants.O_RDONLY | (constants.O_NONBLOCK ?? 0);

/**
 * The bytes of `file`, which must be a regular file of at most `limit` bytes; undefined when it
 * does not exist. Opened without waiting and checked on the open handle: a FIFO would block the
 * read forever, a link to /dev/zero would read until memory runs out. Any other failure is
 * ERR_SAEKIT_FORMAT `<file>: <reason>` (`tooLarge(size)` says why a larger file is refused).
 * For small files read whole (cfg.json, checkpoint.json).
 */
export async function readBoundedFile(file: string, limit: number, tooLarge: (size: number) => string): Promise<Uint8Array | undefined> {
  const bad = (reason: string) => new SaekitError('ERR_SAEKIT_FORMAT', `${file}: ${reason}`);
  let fh: FileHandle;
  try {
    fh = await open(file, OPEN_READ_NOWAIT);
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw bad(`cannot be read (${(err as Error).message})`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw bad('not a regular file (a folder, FIFO or device)');
    if (st.size > limit) throw bad(tooLarge(st.size));
    const out = new Uint8Array(st.size);
    for (let done = 0; done < out.length; ) {
      const { bytesRead } = await fh.read(out, done, out.length - done, done);
      if (bytesRead === 0) throw bad(`file ended at byte ${done} of ${out.length} (it was truncated while being read)`);
      done += bytesRead;
    }
    return out;
  } catch (err) {
    if (err instanceof SaekitError) throw err;
    throw bad(`cannot be read (${(err as Error).message})`);
  } finally {
    await fh.close().catch(() => undefined);
  }
}

/** Opens `path` for positioned reads. `what` names the format in errors ("safetensors file"). */
export async function openFileSource(path: string, what: string): Promise<ByteSource> {
  let fh: FileHandle;
  try {
    fh = await open(path, OPEN_READ_NOWAIT);
  } catch (err) {
    throw fsError('open', path, err);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new SaekitError('ERR_SAEKIT_ARG', `Expected a regular file for path but '${path}' is not one (a folder, FIFO or device)`);
    return fileSource(fh, path, st.size, what);
  } catch (err) {
    await fh.close().catch(() => undefined);
    throw fsError('read', path, err);
  }
}

function fileSource(fh: FileHandle, path: string, size: number, what: string): ByteSource {
  let closed = false;
  return {
    name: path,
    size,
    async read(offset, length, into) {
      if (closed) throw new SaekitError('ERR_SAEKIT_DISPOSED', `${path}: this reader was closed; reads after close() are not possible`);
      if (length > MAX_BUFFER_BYTES) throw formatError(what, path, `a read of ${length} bytes exceeds the 4 GiB buffer limit`);
      let out = into;
      if (out === undefined) {
        try {
          out = new Uint8Array(length);
        } catch (err) {
          if (!(err instanceof RangeError)) throw err;
          throw new SaekitError('ERR_SAEKIT_MEMORY', `Cannot hold ${length} bytes of ${path} in memory here: ${err.message}`);
        }
      }
      let done = 0;
      while (done < length) {
        const want = Math.min(READ_CHUNK, length - done);
        let got: number;
        try {
          ({ bytesRead: got } = await fh.read(out, done, want, offset + done));
        } catch (err) {
          throw fsError('read', path, err);
        }
        if (got === 0) throw formatError(what, path, `file ended at byte ${offset + done} (it was truncated while open)`);
        done += got;
      }
      return out.subarray(0, length);
    },
    async close() {
      if (closed) return;
      closed = true;
      await fh.close();
    },
  };
}

/** A ByteSource over bytes in memory (used by the in-memory parsers and the fuzz tests). */
export function memorySource(bytes: Uint8Array, name: string): ByteSource {
  return {
    name,
    size: bytes.length,
    read(offset, length, into) {
      const src = bytes.subarray(offset, offset + length);
      const out = into ?? new Uint8Array(length);
      out.set(src);
      return Promise.resolve(out.subarray(0, length));
    },
    close() {
      return Promise.resolve();
    },
  };
}

/** The longest prefix of `s` whose UTF-8 encoding has at most `maxBytes` bytes, whole characters only. @internal */
export function utf8Prefix(s: string, maxBytes: number): string {
  let bytes = 0;
  let end = 0;
  for (const ch of s) {
    const cp = ch.codePointAt(0)!;
    const n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    if (bytes + n > maxBytes) break;
    bytes += n;
    end += ch.length;
  }
  return s.slice(0, end);
}

/**
 * Writes `chunks` in order to `path` atomically: they go to a temporary file in the same folder,
 * which is flushed to disk (fsync) and then renamed over `path`. Readers see the old file or the
 * complete new one, never a partial write; on any failure the temporary file is removed. A chunk
 * registered by planChunk (a view on a caller's array) is checked against its planned length
 * before and after each piece is written: detached or resized meanwhile, the write fails
 * (ERR_SAEKIT_ARG naming the array) and `path` keeps its old content. A file replaced keeps its
 * permission bits (keepMode). A symbolic link at `path` is written through: the file it leads to
 * is replaced and the link stays (writeTarget).
 */
export async function writeChunksAtomic(path: string, chunks: readonly (Uint8Array | string)[]): Promise<void> {
  checkPath(path);
  const file = await writeTarget(path);
  // A name of at most 255 bytes (the usual limit) whatever the target's: its first 100 bytes of
  // UTF-8, cut at a character boundary (100 UTF-16 units of CJK were 300 bytes).
  const tmp = join(dirname(file), `.${utf8Prefix(basename(file), 100)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  let fh: FileHandle | undefined;
  try {
    pendingTemporary(tmp, true);
    fh = await open(tmp, 'wx');
    for (const chunk of chunks) await writeAll(fh, typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk);
    await fh.sync();
    await fh.close();
    fh = undefined;
    await keepMode(file, tmp);
    await rename(tmp, file);
  } catch (err) {
    if (fh) await fh.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw fsError('write', path, err);
  } finally {
    pendingTemporary(tmp, false);
  }
  await syncFolder(dirname(file));
}

/**
 * The file a write to `path` replaces: `path` itself, or where its symbolic links lead (a
 * dangling one: the file it names, which the write creates), as open() and numpy's save write
 * through a link; the temporary file goes beside it and is renamed over it, so the link stays a
 * link. At most 40 links are followed (the kernel's own limit), then `path` itself is replaced.
 */
async function writeTarget(path: string): Promise<string> {
  let p = resolve(path);
  for (let hops = 0; hops < 40; hops++) {
    const st = await lstat(p).catch(() => undefined);
    if (!st?.isSymbolicLink()) return p;
    const to = await readlink(p).catch(() => undefined);
    if (to === undefined) return p;
    p = resolve(dirname(p), to);
  }
  return resolve(path);
}

/** Temporary files of writes under way, removed if the process exits meanwhile (process.exit: a CLI's second Ctrl-C). */
const temporaries = new Set<string>();

/** Whether `tmp` is the temporary file of a writeFileAtomic / writeChunksAtomic of this process still under way. */
export function isPendingTemporary(tmp: string): boolean {
  return temporaries.has(tmp);
}
let exitHookInstalled = false;

function pendingTemporary(tmp: string, pending: boolean): void {
  if (!pending) {
    temporaries.delete(tmp);
    return;
  }
  temporaries.add(tmp);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const t of temporaries) {
      try {
        unlinkSync(t);
      } catch {
        // Not made yet, or already renamed.
      }
    }
  });
}

/**
 * Gives `staged` (a new file about to be renamed over `target`) the permission bits of `target`
 * when it exists: a replaced file made private (0600) stays private instead of taking the default
 * mode of a new file. Owner and group are not copied (only root could set them).
 */
export async function keepMode(target: string, staged: string): Promise<void> {
  const st = await stat(target).catch(() => null);
  if (st?.isFile()) await chmod(staged, st.mode & 0o7777);
}

/** Largest single fs write of a chunk: its planned length is checked between two (checkPlanned). */
const WRITE_PIECE = 1 << 26;

async function writeAll(fh: FileHandle, bytes: Uint8Array): Promise<void> {
  const length = checkPlanned(bytes);
  let done = 0;
  while (done < length) {
    const { bytesWritten } = await fh.write(bytes, done, Math.min(WRITE_PIECE, length - done));
    checkPlanned(bytes); // a caller's array detached or shrunk during the write: those bytes may be short
    done += bytesWritten;
  }
}

/** Best effort: flush the folder entry so the rename itself survives a crash (not possible on Windows). */
export async function syncFolder(folder: string): Promise<void> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(folder, 'r');
    await fh.sync();
  } catch {
    // Some platforms and file systems cannot fsync a folder; the data itself is already synced.
  } finally {
    await fh?.close().catch(() => undefined);
  }
}

/**
 * `mkdir -p` that always returns. Node's own (`mkdir(dir, { recursive: true })`) never settles
 * when a folder exists but refuses a child with ENOENT, as /proc does and as a dangling symlink
 * does: it goes back to create the parent, finds it there, and tries the child again, forever.
 * This finds the deepest folder that exists and creates the missing ones below it one at a time;
 * the first that cannot be created is the error (Node's, with its code and path).
 */
export async function makeDirs(dir: string): Promise<void> {
  const missing: string[] = [];
  for (let cur = resolve(dir); ; ) {
    const st = await stat(cur).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
      return undefined;
    });
    if (st) {
      // An existing file where the folder should be: mkdir reports it (EEXIST).
      if (missing.length === 0 && !st.isDirectory()) await mkdir(cur);
      break;
    }
    missing.push(cur);
    const up = dirname(cur);
    if (up === cur) break; // a missing root: mkdir below reports it
    cur = up;
  }
  for (const d of missing.reverse()) {
    try {
      await mkdir(d);
    } catch (err) {
      // Created meanwhile by someone else is fine; a dangling symlink (EEXIST, yet no folder) is not.
      if ((err as NodeJS.ErrnoException).code === 'EEXIST' && (await stat(d).then((st) => st.isDirectory(), () => false))) continue;
      throw err;
    }
  }
}

/**
 * Writes `data` to `path` atomically: a temporary file in the same folder, fsync, then rename
 * over `path`. A crash leaves either the old file or the complete new one; a failed write removes
 * the temporary file. Strings are written as UTF-8. `data` is read while the Promise is pending
 * (not copied): it must stay untouched until the Promise settles; detached or resized meanwhile,
 * the write fails with ERR_SAEKIT_ARG naming data and `path` keeps its old content. A process
 * that exits mid-write through process.exit() removes its temporary file; one killed (SIGKILL, a
 * signal without a handler, a crash) leaves it beside `path` (hidden: `.<name>.<pid>.<random>.tmp`),
 * which nothing reads or reuses: delete it at will (listing the folder on every write to find
 * such files would cost folders of many shards too much).
 */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  checkPath(path);
  if (typeof data !== 'string' && !(data instanceof Uint8Array)) throw argError('data', 'a Uint8Array or a string', data);
  await writeChunksAtomic(path, [typeof data === 'string' ? data : planChunk(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), 'data')]);
}
