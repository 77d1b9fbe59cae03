/** Open file handles shared by a source's reads (at most a few dozen open at once) and positioned reads. */
import { promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';

import { SaekitError } from '../errors.js';
import { OPEN_READ_NOWAIT } from '../io/source.js';
import { native } from '../native/index.js';

/**
 * What identifies a file's contents when a source opened it: a file replaced (another inode) or
 * rewritten (size, modification time) since is not read with the header read then.
 */
export interface FileIdentity {
  dev: number;
  ino: number;
  size: number;
  mtimeMs: number;
}

/** The identity of the file at `path` now. */
export async function fileIdentity(path: string): Promise<FileIdentity> {
  const st = await fs.stat(path);
  return { dev: st.dev, ino: st.ino, size: st.size, mtimeMs: st.mtimeMs };
}

interface Entry {
  handle: Promise<FileHandle>;
  /** Reads under way on the handle (use() calls not finished). */
  refs: number;
  used: number;
  /** Set by closeAll() while reads were under way: the last one closes the handle, then calls it. */
  closeWhenIdle?: () => void;
}

export class HandleCache {
  private readonly open = new Map<string, Entry>();
  private tick = 0;
  private closing: Promise<void> = Promise.resolve();

  constructor(private readonly max = 32) {}

  /**
   * Runs `fn` with an open handle on `file.path`; the handle stays cached for later reads. A new
   * handle (the first read of a pass, or after eviction) is checked against `file.identity`.
   */
  async use<T>(file: { path: string; label: string; identity?: FileIdentity }, fn: (fh: FileHandle) => Promise<T>): Promise<T> {
    const { path } = file;
    let e = this.open.get(path);
    if (!e) {
      const handle = openChecked(file).catch((err: unknown) => {
        this.open.delete(path);
        throw err;
      });
      e = { handle, refs: 0, used: 0 };
      this.open.set(path, e);
    }
    e.refs++;
    e.used = ++this.tick;
    const entry = e;
    try {
      return await fn(await e.handle);
    } finally {
      entry.refs--;
      if (entry.refs === 0 && entry.closeWhenIdle) {
        const settle = entry.closeWhenIdle;
        entry.closeWhenIdle = undefined;
        // Not through closeLater: the closeAll() that asked for this close waits on `settle`.
        void entry.handle
          .then((fh) => fh.close())
          .catch(() => undefined)
          .then(settle);
      } else this.evict();
    }
  }

  private evict(): void {
    while (this.open.size > this.max) {
      let oldest: [string, Entry] | undefined;
      for (const kv of this.open) if (kv[1].refs === 0 && (!oldest || kv[1].used < oldest[1].used)) oldest = kv;
      if (!oldest) return;
      this.open.delete(oldest[0]);
      this.closeLater([oldest[1]]);
    }
  }

  /** Closes the entries' handles; closeAll() waits for them too. */
  private closeLater(entries: Entry[]): Promise<void> {
    const done = Promise.all(entries.map((e) => e.handle.then((fh) => fh.close()).catch(() => undefined)));
    this.closing = Promise.all([this.closing, done]).then(() => undefined);
    return this.closing;
  }

  /**
   * Closes every handle: at once where no read is under way, else when its last read ends (a
   * pass dropped and collected while its reads ran: closing under them would fail those reads
   * with EBADF, or let a read land on another file given the same descriptor). Settles once every
   * handle this cache closed, by this call or an earlier one still under way (an eviction, another
   * closeAll), is closed: a second caller does not return while the first is still closing.
   */
  async closeAll(): Promise<void> {
    const entries = [...this.open.values()];
    this.open.clear();
    const busy = entries.filter((e) => e.refs > 0);
    const idle = this.closeLater(entries.filter((e) => e.refs === 0));
    const drained = busy.map((e) => new Promise<void>((resolve) => (e.closeWhenIdle = resolve)));
    this.closing = Promise.all([idle, ...drained]).then(() => undefined);
    await this.closing;
  }
}

/** Opens a shard's file and checks it is still the file its header was read from. */
async function openChecked(file: { path: string; label: string; identity?: FileIdentity }): Promise<FileHandle> {
  let fh: FileHandle;
  try {
    fh = await fs.open(file.path, OPEN_READ_NOWAIT);
  } catch (err) {
    throw new SaekitError('ERR_SAEKIT_ARG', `Could not open ${file.path}: ${err instanceof Error ? err.message : String(err)}`);
  }
  try {
    const st = await fh.stat();
    const was = file.identity;
    if (!st.isFile()) throw new SaekitError('ERR_SAEKIT_FORMAT', `${file.label} is no longer a regular file (it was replaced since the source was opened)`);
    if (was && (st.dev !== was.dev || st.ino !== was.ino || st.size !== was.size || st.mtimeMs !== was.mtimeMs)) {
      const what = st.dev !== was.dev || st.ino !== was.ino ? 'was replaced' : st.size !== was.size ? `changed size (${was.size} to ${st.size} bytes)` : 'was modified';
      throw new SaekitError('ERR_SAEKIT_FORMAT', `${file.label} ${what} since the source was opened: its header no longer describes it (open the source again)`);
    }
    return fh;
  } catch (err) {
    await fh.close().catch(() => undefined);
    throw err;
  }
}

/** Reads exactly into.length bytes at `position`, looping over short reads. */
export async function readFully(fh: FileHandle, into: Uint8Array, position: number, label: string): Promise<void> {
  let done = 0;
  while (done < into.length) {
    let n: number;
    try {
      ({ bytesRead: n } = await fh.read(into, done, into.length - done, position + done));
    } catch (err) {
      throw new SaekitError('ERR_SAEKIT_ARG', `Could not read ${label}: ${err instanceof Error ? err.message : String(err)}`);
    }
    if (n === 0) {
      throw new SaekitError('ERR_SAEKIT_FORMAT', `Expected ${into.length} bytes at offset ${position} of ${label} but the file ends first (was it truncated?)`);
    }
    done += n;
  }
}

/**
 * Reads `rows` rows of the shard's dtype at byte `position` of `fd` as float32 on saekit's I/O thread
 * pool (read, conversion and non-finite screen in one native job), into dst from element `to`
 * on, or (to = { slots, first }) row r into dst[slots[first + r] × dIn, +dIn). Resolves to true
 * when some value is non-finite.
 */
export async function nativeRead(
  fd: number,
  position: number,
  rows: number,
  dIn: number,
  shard: { dtype: 'float32' | 'float16' | 'bfloat16' | 'float64'; label: string },
  dst: Float32Array | Uint16Array,
  to: number | { slots: Uint32Array; first: number },
): Promise<boolean> {
  try {
    return await (typeof to === 'number'
      ? native().readRows(fd, position, rows * dIn, shard.dtype, dst as Float32Array, to)
      : native().readRowsToSlots(fd, position, rows, dIn, shard.dtype, dst, to.slots, to.first));
  } catch (err) {
    const e = err as { code?: string; message?: string };
    if (e.code === 'ERR_SAEKIT_FORMAT') {
      throw new SaekitError('ERR_SAEKIT_FORMAT', `Expected ${rows} rows at offset ${position} of ${shard.label} but the file ends first (was it truncated?)`);
    }
    throw new SaekitError('ERR_SAEKIT_ARG', `Could not read ${shard.label}: ${e.message ?? String(err)}`);
  }
}
