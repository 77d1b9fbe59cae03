/** Open-descriptor counts for the tests that check a file is closed (Linux: /proc/self/fd). */
import { readdirSync, readlinkSync } from 'node:fs';

/** Descriptors of this process open on `file`. */
export function fdsOn(file: string): number {
  let n = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`) === file) n++;
    } catch {
      // closed meanwhile
    }
  }
  return n;
}
