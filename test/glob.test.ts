import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { openActivations } from '../lib/data/index.js';
import { compareNames, expandGlob, matchSegment } from '../lib/data/glob.js';
import { freshSeed, rng } from './helpers/io-helpers.js';

/** The reference: the segment as an anchored regular expression over code points (fine on short names). */
function reference(seg: string, name: string): boolean {
  let re = '';
  for (const ch of seg) {
    if (ch === '*') re += '.*';
    else if (ch === '?') re += '.';
    else re += ch.replace(/[\\^$.|+()[\]{}]/g, '\\$&');
  }
  return new RegExp(`^${re}$`, 'su').test(name);
}

describe('name order', () => {
  it("is the UTF-8 byte order of `ls` in the C locale, astral characters included (random names against Buffer.compare)", () => {
    const seed = freshSeed(11);
    const r = rng(seed);
    // ASCII, U+E000-U+FFFF (after the surrogates in UTF-16, before them in UTF-8), astral ones.
    const chars = ['a', 'B', '1', '.', '\u00e9', '\uff5e', '\ue000', '\uffff', '\u{1F600}', '\u{10000}', '\u{1F601}'];
    const names = Array.from({ length: 400 }, () => Array.from({ length: 1 + Math.floor(r() * 4) }, () => chars[Math.floor(r() * chars.length)]!).join(''));
    const want = [...names].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
    expect([...names].sort(compareNames), `seed ${seed}`).toEqual(want);
    // The case it got wrong: '😀' (D83D DE00) sorted before '～' (FF5E).
    expect(['😀.npy', '～.npy', 'b.npy'].sort(compareNames)).toEqual(['b.npy', '～.npy', '😀.npy']);
    for (const [x, y] of [['a', 'a'], ['a', 'ab'], ['\u{1F600}', '\u{1F601}'], ['\u{10000}', '\uffff']] as const) {
      expect(Math.sign(compareNames(x, y)), `${x} vs ${y}`).toBe(Math.sign(Buffer.compare(Buffer.from(x), Buffer.from(y))));
    }
  });
});

describe('glob segment matching', () => {
  it('agrees with a regular-expression reference on random patterns and names', () => {
    const seed = freshSeed(7);
    const r = rng(seed);
    const pick = (chars: string[], len: number) => Array.from({ length: len }, () => chars[Math.floor(r() * chars.length)]!).join('');
    // Letters that collide often, regex metacharacters and an astral character (one `?` matches it).
    const nameChars = ['a', 'b', '.', '(', '\u{1F600}'];
    let matches = 0;
    for (let t = 0; t < 4000; t++) {
      const seg = pick([...nameChars, '*', '?'], Math.floor(r() * 7));
      const name = pick(nameChars, Math.floor(r() * 9));
      const want = reference(seg, name);
      if (matchSegment(seg, name) !== want) throw new Error(`seed ${seed}: ${JSON.stringify(seg)} vs ${JSON.stringify(name)}: expected ${want}`);
      if (want) matches++;
    }
    expect(matches).toBeGreaterThan(200); // the cases are not all misses
    expect(matchSegment('a?c', 'a\u{1F600}c')).toBe(true);
    expect(matchSegment('*', '')).toBe(true);
    expect(matchSegment('?', '')).toBe(false);
  });

  it('a long file name against many `*` takes time proportional to their product, not exponential', async () => {
    // A regular expression of `[^/]*` runs took 50 s on this (five `*`, a 240-character name
    // that almost matches), with the event loop blocked throughout.
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-glob-'));
    try {
      writeFileSync(path.join(dir, '_'.repeat(240)), '');
      const t0 = performance.now();
      expect(matchSegment('*_*_*_*_*.npy', '_'.repeat(240))).toBe(false);
      expect(matchSegment('*a*a*a*a*a*a*a*b', 'a'.repeat(2000))).toBe(false);
      expect(await expandGlob(`${dir}/*_*_*_*_*.npy`)).toEqual([]);
      await expect(openActivations(`${dir}/*_*_*_*_*.npy`)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG' });
      expect(performance.now() - t0).toBeLessThan(5000); // well under a millisecond each here; a hang is what fails
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a `*` segment follows symbolic links to directories, as a literal segment does; `**` does not', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-glob-'));
    try {
      mkdirSync(path.join(dir, 'real'));
      writeFileSync(path.join(dir, 'real', 'x.npy'), '');
      writeFileSync(path.join(dir, 'file.npy'), '');
      symlinkSync('real', path.join(dir, 'link')); // a directory
      symlinkSync('.', path.join(dir, 'loop')); // a cycle: ** must not follow it
      symlinkSync('missing', path.join(dir, 'dangling'));
      symlinkSync('file.npy', path.join(dir, 'filelink')); // a file, not a directory
      const at = (...p: string[]) => path.join(dir, ...p);
      // The reference: the literal paths (each followed by stat, as `ls` does).
      expect(await expandGlob(`${dir}/link/x.npy`)).toEqual([at('link', 'x.npy')]);
      expect(await expandGlob(`${dir}/*/x.npy`)).toEqual([at('link', 'x.npy'), at('real', 'x.npy')]);
      expect(await expandGlob(`${dir}/l?nk/*.npy`)).toEqual([at('link', 'x.npy')]);
      expect(await expandGlob(`${dir}/*/*/x.npy`)).toEqual([at('loop', 'link', 'x.npy'), at('loop', 'real', 'x.npy')]);
      expect(await expandGlob(`${dir}/**/x.npy`)).toEqual([at('real', 'x.npy')]);
      // A symbolic link to a file is a file, for `*` and for a final `**` alike (a dangling one is not).
      expect(await expandGlob(`${dir}/*`)).toEqual([at('file.npy'), at('filelink')]);
      expect(await expandGlob(`${dir}/**`)).toEqual([at('file.npy'), at('filelink'), at('real', 'x.npy')]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
