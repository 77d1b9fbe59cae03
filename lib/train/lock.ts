/**
 * One training run at a time per checkpoint folder.
 *
 * Two runs writing checkpoints into one folder destroy each other's work: each removes the state
 * files it does not name, so one run's checkpoint.json can end up naming a state file the other
 * just deleted, and a resume then fails. A run therefore holds an exclusive advisory lock (flock)
 * on `<folder>/checkpoint.lock` while it trains. The system drops the lock when the holding process
 * ends however it ends (a crash, SIGKILL, a preempted machine), so a dead run never leaves a stale
 * lock behind, and a reused process id cannot fake one. The file holds the holder's pid, host and
 * start time for the refusal message; it is removed when the run ends.
 *
 * flock locks belong to an open file description, so a second fit() in the same process (another
 * SAE, another Trainer) is refused as another process's would be. Where the file system has no
 * such locks (some network mounts) the run goes on unlocked, with a warning (code SAEKIT_LOCK).
 */
import { constants } from 'node:fs';
import { open, readFile, stat, unlink, type FileHandle } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';

import { SaekitError } from '../errors.js';
import { native } from '../native/index.js';

/** The lock file's name inside a checkpoint folder. */
export const LOCK_FILE = 'checkpoint.lock';

/** A held folder lock. */
export interface FolderLock {
  /** Removes the lock file and lets the lock go. Idempotent. */
  release(): Promise<void>;
}

/** What a lock file says about its holder (written by the holder; only used in messages). */
interface Holder {
  pid?: unknown;
  host?: unknown;
  started?: unknown;
}

/**
 * Locks `dir` (which must exist) for one run, or throws ERR_SAEKIT_ARG naming `name` (the option
 * or flag that gave the folder) and the holder when another run holds it.
 */
export async function lockFolder(name: string, dir: string): Promise<FolderLock> {
  const file = path.join(dir, LOCK_FILE);
  // A run ending between our open and our lock removes the file we opened: lock the one there now.
  for (let attempt = 0; ; attempt++) {
    let h: FileHandle;
    try {
      h = await open(file, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW | (constants.O_NONBLOCK ?? 0), 0o644);
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      throw new SaekitError('ERR_SAEKIT_ARG', `Expected ${name} to be a folder where saekit can create its lock file but ${file} cannot be opened: ${why}`);
    }
    // A FIFO or device there (not made by saekit) cannot hold the holder's note: refused by name.
    if (!(await h.stat().catch(() => undefined))?.isFile()) {
      await h.close().catch(() => undefined);
      throw new SaekitError('ERR_SAEKIT_ARG', `Expected ${name} to be a folder where saekit can keep its lock file but ${file} is not a regular file (a FIFO or device); remove it`);
    }
    let held = false;
    try {
      const got = native().lockFile(h.fd);
      if (got === 'busy') throw busy(name, dir, file, await readFile(file, 'utf8').catch(() => ''));
      const [mine, now] = await Promise.all([h.stat(), stat(file).catch(() => undefined)]);
      if (now === undefined || now.ino !== mine.ino || now.dev !== mine.dev) {
        if (attempt < 16) continue;
        throw new SaekitError('ERR_SAEKIT_ARG', `Expected ${name} to be a folder no other run is writing to but ${file} keeps being replaced by another process`);
      }
      if (got === 'unsupported') {
        process.emitWarning(`${file}: this file system has no file locks; nothing stops two runs from writing checkpoints into ${dir} at once`, { code: 'SAEKIT_LOCK' });
      }
      const text = `${JSON.stringify({ pid: process.pid, host: hostname(), started: new Date().toISOString() })}\n`;
      await h.truncate(0);
      await h.write(text, 0, 'utf8');
      held = true;
      let released = false;
      return {
        release: async () => {
          if (released) return;
          released = true;
          // Removed while still locked: a run waiting on this file finds it gone and makes a new one.
          try {
            await unlink(file).catch(() => undefined);
          } finally {
            await h.close();
          }
        },
      };
    } finally {
      if (!held) await h.close();
    }
  }
}

function busy(name: string, dir: string, file: string, text: string): SaekitError {
  let holder: Holder = {};
  try {
    const parsed: unknown = JSON.parse(text);
    if (parsed !== null && typeof parsed === 'object') holder = parsed as Holder;
  } catch {
    // Written by a run that has not finished writing it, or not by saekit: say less.
  }
  const who =
    typeof holder.pid === 'number' && typeof holder.host === 'string'
      ? `process ${holder.pid} on ${holder.host}${typeof holder.started === 'string' ? `, started ${holder.started}` : ''}${holder.pid === process.pid && holder.host === hostname() ? ': this process' : ''}`
      : 'another process';
  return new SaekitError(
    'ERR_SAEKIT_ARG',
    `Expected ${name} to be a folder no other run is writing checkpoints to but ${dir} is in use: ${file} is locked by ${who}; wait for that run to end, stop it, or choose another folder`,
  );
}
