/** Running a script in a fresh Node process against the built package (dist/), and regex escaping. */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

import { packageRoot } from '../../lib/native/index.js';

const dist = path.join(packageRoot, 'dist', 'index.js');

/** Whether dist/ is built (npm install builds it; CI always has it). */
export const haveDist = existsSync(dist);

/** An import specifier for dist/index.js, for a child's script. */
export const distUrl = JSON.stringify(pathToFileURL(dist).href);

/**
 * Runs `script` (an ES module) in a new Node process with `flags` (e.g. --expose-gc) and returns
 * its last line of output: for measurements that no other test's memory may disturb.
 */
export function runInChild(script: string, flags: readonly string[] = []): string {
  const out = execFileSync(process.execPath, [...flags, '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
  return out.trim().split('\n').pop()!;
}

/** `s` with the characters a RegExp gives meaning escaped. */
export const escapeRe = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
