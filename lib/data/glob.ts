/**
 * A minimal glob for shard lists (Node 20 has no fs.glob). Patterns use `/` between segments;
 * in a segment `*` matches any run of characters and `?` one character, neither matching `/`
 * nor a leading `.` (hidden files need an explicit `.`); a whole segment `**` matches zero or
 * more directories (not hidden ones, and symbolic links to directories are not followed by
 * `**`, which could loop; the other segments follow them, as `ls` does). Everything else is
 * literal. Matches are regular files (or links to them), sorted by path.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';

/** Whether `p` contains glob syntax. */
export function isGlob(p: string): boolean {
  return /[*?]/.test(p);
}

/**
 * Whether `name` matches the glob segment `seg` (`*` any run of characters, `?` one character,
 * everything else literal). Iterative, with at most one pending `*` to resume from: time is at
 * most (name length) x (segment length), whatever the input. (A regular expression of `[^/]*`
 * runs backtracks exponentially in the number of `*` on a long name that almost matches: a
 * pattern of five `*` took 50 s against one 240-character file name.)
 */
export function matchSegment(seg: string, name: string): boolean {
  const p = [...seg];
  const n = [...name];
  let i = 0; // in p
  let j = 0; // in n
  let star = -1; // the last `*` seen in p
  let resume = 0; // where in n that `*` match would grow next
  while (j < n.length) {
    if (i < p.length && p[i] === '*') {
      star = i++;
      resume = j;
    } else if (i < p.length && (p[i] === '?' || p[i] === n[j])) {
      i++;
      j++;
    } else if (star >= 0) {
      i = star + 1;
      j = ++resume;
    } else {
      return false;
    }
  }
  while (i < p.length && p[i] === '*') i++;
  return i === p.length;
}

async function statOrNull(p: string): Promise<import('node:fs').Stats | null> {
  try {
    return await fs.stat(p);
  } catch {
    return null;
  }
}

/** The files matching `pattern` (relative patterns resolve against the working directory), sorted. */
export async function expandGlob(pattern: string): Promise<string[]> {
  const abs = path.isAbsolute(pattern);
  const segs = pattern.split('/').filter((s, i) => s !== '' && !(s === '.' && i > 0));
  let base = abs ? '/' : '.';
  let i = 0;
  while (i < segs.length - 1 && !isGlob(segs[i]!)) base = path.join(base, segs[i++]!);
  const out = new Set<string>();
  await walk(base, segs, i, out);
  return [...out].map((p) => path.resolve(p)).sort(compareNames);
}

async function walk(dir: string, segs: string[], i: number, out: Set<string>): Promise<void> {
  const seg = segs[i]!;
  const last = i === segs.length - 1;
  if (seg === '**') {
    if (last) {
      // A trailing ** matches every file below dir.
      await walkAll(dir, out);
      return;
    }
    await walk(dir, segs, i + 1, out);
    for (const e of await readDir(dir)) {
      if (e.isDirectory() && !e.name.startsWith('.')) await walk(path.join(dir, e.name), segs, i, out);
    }
    return;
  }
  if (!isGlob(seg)) {
    const p = path.join(dir, seg);
    const st = await statOrNull(p);
    if (!st) return;
    if (last) {
      if (st.isFile()) out.add(p);
    } else if (st.isDirectory()) {
      await walk(p, segs, i + 1, out);
    }
    return;
  }
  const hiddenOk = seg.startsWith('.');
  for (const e of await readDir(dir)) {
    if (!matchSegment(seg, e.name) || (e.name.startsWith('.') && !hiddenOk)) continue;
    const p = path.join(dir, e.name);
    let isFile = e.isFile();
    let isDir = e.isDirectory();
    if (e.isSymbolicLink()) {
      // Followed, as a literal segment's are: a segment of fixed depth cannot loop (only ** recurses).
      const st = await statOrNull(p);
      isFile = st?.isFile() ?? false;
      isDir = st?.isDirectory() ?? false;
    }
    if (last) {
      if (isFile) out.add(p);
    } else if (isDir) {
      await walk(p, segs, i + 1, out);
    }
  }
}

async function walkAll(dir: string, out: Set<string>): Promise<void> {
  for (const e of await readDir(dir)) {
    if (e.name.startsWith('.')) continue;
    const p = path.join(dir, e.name);
    if (e.isDirectory()) await walkAll(p, out);
    else if (e.isFile() || (e.isSymbolicLink() && (await statOrNull(p))?.isFile())) out.add(p);
  }
}

async function readDir(dir: string): Promise<import('node:fs').Dirent[]> {
  try {
    return await fs.readdir(dir, { withFileTypes: true });
  } catch {
    return [];
  }
}

/**
 * Name order: the full paths' UTF-8 bytes compared (as `ls` in the C locale sorts them), which is
 * code point order. JavaScript's `<` compares UTF-16 code units, which puts a character past U+FFFF
 * (a surrogate pair, 0xD800...) before one in U+E000-U+FFFF ('～'); at the first differing unit
 * the code points are compared instead (a shared high surrogate leaves low surrogates, whose
 * order is the code points').
 */
export function compareNames(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a.charCodeAt(i) === b.charCodeAt(i)) i++;
  if (i === n) return a.length < b.length ? -1 : a.length > b.length ? 1 : 0;
  return a.codePointAt(i)! < b.codePointAt(i)! ? -1 : 1;
}
