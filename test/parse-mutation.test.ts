/**
 * Parsers and small pure pieces pinned against independent references (mutation round 9):
 * the data pipeline's PRNG word for word against a BigInt splitmix64 / xoshiro128** anchored by
 * published known answers, the .npy dict-literal parser against randomly formatted literals of
 * known content, the JSON duplicate-key scan and the JSON shape limits against counts taken from
 * JSON.parse's result, the save options' metadata check, and glob expansion's hidden-entry rules,
 * absolute results and name order.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { expandGlob } from '../lib/data/glob.js';
import { Rng } from '../lib/data/prng.js';
import { SaekitError } from '../lib/errors.js';
import { scanJsonKeys } from '../lib/io/json-keys.js';
import { jsonLimitExceeded } from '../lib/io/json-limits.js';
import { parsePyDict, PyLiteralError, type PyValue } from '../lib/io/py-literal.js';
import { checkWriteSaeOptions } from '../lib/io/sae-options.js';
import { freshSeed, rng } from './helpers/io-helpers.js';

// ---------------------------------------------------------------------------------------------
// PRNG reference: splitmix64 and xoshiro128** on BigInt words, written from the published C code.

const M64 = (1n << 64n) - 1n;
const M32 = 0xffffffffn;
const GOLDEN = 0x9e3779b97f4a7c15n;

/** splitmix64's next(): the new state and the output. */
function refSplitmix(state: bigint): [bigint, bigint] {
  const s = (state + GOLDEN) & M64;
  let z = s;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
  return [s, z ^ (z >> 31n)];
}

const rotl32 = (x: bigint, k: number): bigint => ((x << BigInt(k)) | (x >> BigInt(32 - k))) & M32;

/** xoshiro128** 1.1 on the state s[0..3]. */
class RefXoshiro {
  constructor(readonly s: bigint[]) {}
  next(): number {
    const s = this.s;
    const result = (rotl32((s[1]! * 5n) & M32, 7) * 9n) & M32;
    const t = (s[1]! << 9n) & M32;
    s[2]! ^= s[0]!;
    s[3]! ^= s[1]!;
    s[1]! ^= s[2]!;
    s[0]! ^= s[3]!;
    s[2]! ^= t;
    s[3] = rotl32(s[3]!, 11);
    return Number(result);
  }
  /** Uniform in [0, n): bitmask rejection with the fewest bits that hold n - 1; n = 1 draws nothing. */
  below(n: number): number {
    if (n <= 1) return 0;
    const bits = (n - 1).toString(2).length;
    const mask = 2 ** bits - 1;
    for (;;) {
      const r = this.next() % (mask + 1); // the low `bits` bits
      if (r < n) return r;
    }
  }
  shuffle(a: number[]): void {
    for (let i = 0; i < a.length - 1; i++) {
      const j = i + this.below(a.length - i);
      [a[i], a[j]] = [a[j]!, a[i]!];
    }
  }
}

/**
 * The state of the stream (seed, ...tags) as prng.ts documents it: splitmix64 of the seed, each
 * tag (times the golden ratio) xored into state ^ output and mixed again, then two more outputs
 * whose low and high halves are the four words.
 */
function refStream(seed: bigint, tags: number[]): RefXoshiro {
  let [s, z] = refSplitmix(seed);
  for (const t of tags) [s, z] = refSplitmix((s ^ z ^ (BigInt(t) * GOLDEN)) & M64);
  const [s2, z2] = refSplitmix(s ^ z);
  const [, z3] = refSplitmix(s2);
  return new RefXoshiro([z2 & M32, z2 >> 32n, z3 & M32, z3 >> 32n]);
}

/** A uniform 64-bit seed from the test's own generator. */
function seed64(r: () => number): bigint {
  return (BigInt(Math.floor(r() * 2 ** 32)) << 32n) | BigInt(Math.floor(r() * 2 ** 32));
}

describe('Rng (xoshiro128** seeded through splitmix64)', () => {
  it('the references reproduce published known answers, and so does Rng.nextU32 from the same state', () => {
    // splitmix64 from seed 1234567 (Rosetta Code, "Pseudo-random numbers/Splitmix64").
    let s = 1234567n;
    const out: bigint[] = [];
    for (let i = 0; i < 5; i++) {
      let z: bigint;
      [s, z] = refSplitmix(s);
      out.push(z);
    }
    expect(out).toEqual([6457827717110365317n, 3203168211198807973n, 9817491932198370423n, 4593380528125082431n, 16408922859458223821n]);
    // xoshiro128** from two states whose outputs the reference C code gives: {0, 1, 2, 3}, and the
    // 32-byte seed of the xoshiro-6502 test data read as little-endian words.
    const kat: [bigint[], number[]][] = [
      [[0n, 1n, 2n, 3n], [5760, 17280, 2966400, 32451840, 2604340873, 3891234569]],
      [[0x964d4a0cn, 0xd40ab895n, 0xad7fdecbn, 0x3006f0f0n], [0xf1391922, 0x6fe53806, 0xa5be2840, 0xf510ee70]],
    ];
    for (const [state, want] of kat) {
      const ref = new RefXoshiro([...state]);
      expect(want.map(() => ref.next())).toEqual(want);
      const r = new Rng(0n) as unknown as { a: number; b: number; c: number; d: number; nextU32(): number };
      [r.a, r.b, r.c, r.d] = state.map(Number) as [number, number, number, number];
      expect(want.map(() => r.nextU32())).toEqual(want);
    }
  });

  it('Rng(seed, ...tags) is the documented stream word for word: edge and fresh seeds, zero to three tags up to 2^53 - 1', () => {
    const base = freshSeed(91);
    const r = rng(base);
    const seeds = [0n, 1n, 2n ** 63n, M64, ...Array.from({ length: 12 }, () => seed64(r))];
    for (const seed of seeds) {
      for (let nt = 0; nt <= 3; nt++) {
        const tags = Array.from({ length: nt }, (_, k) => (k === 0 && nt === 3 ? Number.MAX_SAFE_INTEGER : Math.floor(r() * 2 ** (1 + r() * 52))));
        const got = new Rng(seed, ...tags);
        const want = refStream(seed, tags);
        const g = Array.from({ length: 40 }, () => got.nextU32());
        expect(g, `seed ${base}: Rng(${seed}n, ${tags.join(', ')})`).toEqual(g.map(() => want.next()));
      }
    }
    // Tags are ordered: (1, 2) and (2, 1) are different streams, and no tag differs from tag 0.
    expect(new Rng(7n, 1, 2).nextU32()).toBe(refStream(7n, [1, 2]).next());
    expect(new Rng(7n, 0).nextU32()).not.toBe(new Rng(7n).nextU32());
  });

  it('below(n) and shuffle draw what the reference draws, including 1 (no draw) and n above 2^31 (every bit used)', () => {
    const base = freshSeed(92);
    const r = rng(base);
    const seed = seed64(r);
    const got = new Rng(seed, 3);
    const want = refStream(seed, [3]);
    const ns = [1, 2, 3, 7, 1000, 2 ** 31 - 1, 2 ** 31, 2 ** 31 + 1, 3_000_000_000, 2 ** 32 - 1, 2 ** 32];
    for (let k = 0; k < 40; k++) ns.push(1 + Math.floor(r() * 2 ** 32));
    let high = 0;
    for (const n of ns) {
      for (let t = 0; t < 20; t++) {
        const g = got.below(n);
        expect(g, `seed ${base}: below(${n})`).toBe(want.below(n));
        if (g >= 2 ** 31) high++;
      }
    }
    expect(high, 'values of 2^31 and above occur').toBeGreaterThan(20);
    for (const n of [2, 3, 10, 257]) {
      const a = new Uint32Array(n).map((_, i) => i);
      const b = Array.from(a);
      got.shuffle(a);
      want.shuffle(b);
      expect(Array.from(a), `seed ${base}: shuffle of ${n}`).toEqual(b);
    }
    // The stream is still in step after all of that.
    expect(got.nextU32()).toBe(want.next());
  });
});

// ---------------------------------------------------------------------------------------------
// The .npy header's dict literal.

/** The error parsePyDict throws on `text` (a PyLiteralError), as its message. */
function pyError(text: string): string {
  try {
    parsePyDict(text);
  } catch (e) {
    expect(e).toBeInstanceOf(PyLiteralError);
    return (e as Error).message;
  }
  throw new Error(`parsePyDict accepted ${JSON.stringify(text)}`);
}

describe('parsePyDict', () => {
  it('reads randomly formatted literals (quotes, whitespace, trailing commas, L suffixes, tuples) as the values written', () => {
    const base = freshSeed(93);
    const r = rng(base);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
    const ws = () => Array.from({ length: Math.floor(r() * 3) }, () => pick([' ', '\t', '\r', '\n'])).join('');
    const int = (): number => pick([0, 1, 9, 10, 4096, Number.MAX_SAFE_INTEGER, Math.floor(r() * 2 ** 53), Math.floor(r() * 1e6)]);
    const intText = (n: number) => `${n}${r() < 0.2 ? 'L' : ''}`;
    const strChars = ['a', 'Z', '<', '|', ' ', ':', ',', '{', '}', '(', ')', '#', '\u00e9', '\u{1F600}'];
    const str = (): [string, string] => {
      const s = Array.from({ length: Math.floor(r() * 6) }, () => pick(strChars)).join('');
      // Either quote style; the other quote may appear inside.
      return r() < 0.5 ? [`${s}"`, `'${s}"'`] : [`${s}'`, `"${s}'"`];
    };
    for (let trial = 0; trial < 500; trial++) {
      const want = new Map<string, PyValue>();
      const items: string[] = [];
      const n = Math.floor(r() * 5);
      for (let k = 0; k < n; k++) {
        let [key, keyText] = str();
        key += String(k); // distinct keys
        keyText = `${keyText[0]}${key}${keyText[0]}`;
        let value: PyValue;
        let text: string;
        const kind = Math.floor(r() * 5);
        if (kind === 0) [value, text] = str();
        else if (kind === 1) [value, text] = r() < 0.5 ? [true, 'True'] : [false, 'False'];
        else if (kind === 2) {
          value = int();
          text = intText(value);
        } else {
          const dims = Array.from({ length: Math.floor(r() * 4) }, int);
          const parts = dims.map((d) => `${ws()}${intText(d)}${ws()}`);
          const trailing = dims.length === 1 || (dims.length > 1 && r() < 0.5) ? ',' : '';
          [value, text] = [dims, `(${parts.join(',')}${trailing}${ws()})`];
        }
        want.set(key, value);
        items.push(`${ws()}${keyText}${ws()}:${ws()}${text}${ws()}`);
      }
      const text = `${ws()}{${items.join(',')}${n > 0 && r() < 0.5 ? `,${ws()}` : ''}${ws()}}${ws()}`;
      const got = parsePyDict(text);
      expect([...got.entries()], `seed ${base}: ${JSON.stringify(text)}`).toEqual([...want.entries()]);
    }
  });

  it('integers: exact up to 2^53 - 1, refused from 2^53 even with 16 digits; 0 and 0L, but no leading zeros or fractions', () => {
    expect(parsePyDict("{'s': (9007199254740991, 0L, 0)}").get('s')).toEqual([Number.MAX_SAFE_INTEGER, 0, 0]);
    expect(parsePyDict("{'n': 9007199254740991L}").get('n')).toBe(Number.MAX_SAFE_INTEGER);
    // 2^53 and 2^53 + 1 read as the same double: neither is exact, both are refused.
    for (const big of ['9007199254740992', '9007199254740993', '9999999999999999', '12345678901234567']) {
      expect(pyError(`{'s': (${big},)}`)).toBe('integer at character 7 is too large');
      expect(pyError(`{'n': ${big}}`)).toBe('integer at character 6 is too large');
    }
    expect(pyError("{'n': 00}")).toBe('integer with a leading zero at character 6');
    expect(pyError("{'n': 1.5}")).toBe("expected ',' or '}' at character 7 but found '.'");
    expect(pyError("{'n': 1e3}")).toBe("expected ',' or '}' at character 7 but found 'e'");
  });

  it('a form feed is whitespace (as in Python); a control character it stops at is shown escaped', () => {
    expect([...parsePyDict("{\f'shape':\f(2,\f3)\f}").entries()]).toEqual([['shape', [2, 3]]]);
    expect(pyError("{'n': 1\u0000}")).toBe('expected \',\' or \'}\' at character 7 but found "\\u0000"');
    expect(pyError("{'n': 1\u000b}")).toBe('expected \',\' or \'}\' at character 7 but found "\\u000b"');
    // JSON.stringify leaves DEL, the C1 controls (a latin1 header's bytes 0x80-0x9f) and U+FEFF raw.
    expect(pyError("{'n': 1\u007f}")).toBe('expected \',\' or \'}\' at character 7 but found "\\u007f"');
    expect(pyError("{'n': 1\u0085}")).toBe('expected \',\' or \'}\' at character 7 but found "\\u0085"');
    expect(pyError("\ufeff{'n': 1}")).toBe('expected \'{\' at character 0 but found "\\ufeff"');
  });

  it('names what it found and where: negative numbers, None, nested tuples, the end of the header', () => {
    expect(pyError("{'descr': -1}")).toBe('negative number at character 10');
    expect(pyError("{'shape': (1, -2)}")).toBe("expected a non-negative integer at character 14 but found '-'");
    expect(pyError("{'x': None}")).toBe("unexpected 'N' at character 6 where a value should be");
    expect(pyError("{'x': true}")).toBe("unexpected 't' at character 6 where a value should be");
    expect(pyError("{'x': Trueish}")).toBe('unknown name at character 6');
    expect(pyError("{'x': ((1,),)}")).toBe("expected a non-negative integer at character 7 but found '('");
    expect(pyError("{'x': (,)}")).toBe("expected a non-negative integer at character 7 but found ','");
    expect(pyError("{'x': (1,,)}")).toBe("expected a non-negative integer at character 9 but found ','");
    expect(pyError("{'x': (1)}")).toBe('a one-element tuple needs a trailing comma: (n,)');
    expect(pyError("{'x': ( 7 \n)}")).toBe('a one-element tuple needs a trailing comma: (n,)');
    expect(pyError("{'descr': '<f4'")).toBe("expected ',' or '}' at character 15 but found the end of the header");
    expect(pyError("{'descr': '<f4', ")).toBe('expected a quoted string at character 17 but found the end of the header');
    expect(pyError("{'x': (1,")).toBe("expected a non-negative integer at character 9 but found the end of the header");
    expect(pyError("{'x': ")).toMatch(/the end of the header at character 6 where a value should be$/);
    expect(pyError("{'x' 1}")).toBe("expected ':' at character 5 but found '1'");
    expect(pyError('{1: 2}')).toBe("expected a quoted string at character 1 but found '1'");
    expect(pyError('{,}')).toBe("expected a quoted string at character 1 but found ','");
    expect(pyError("{'a': 1, \"a\": 2}")).toBe("duplicate key 'a'");
    expect(pyError("{'a': 'b\\'c'}")).toBe('unsupported escape or line break in string at character 6');
    expect(pyError("{} {}")).toBe("unexpected '{' after the closing '}'");
    expect([...parsePyDict(' { } ').entries()]).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------
// JSON: duplicate keys and shape limits.

describe('scanJsonKeys: duplicate keys', () => {
  const findDuplicateKey = (text: string) => scanJsonKeys(text).duplicateKey;
  it('any JSON whitespace between a key and its colon still makes it a key (pretty-printed headers)', () => {
    for (const w of [' ', '\t', '\n', '\r', '\r\n', ' \n\t ']) {
      expect(findDuplicateKey(`{"a"${w}: 1,${w}"a"${w}:${w}2}`), JSON.stringify(w)).toBe('a');
      expect(findDuplicateKey(`{"a"${w}: "a",${w}"b"${w}:${w}["a"${w},${w}"a"]}`), JSON.stringify(w)).toBeUndefined();
    }
    const pretty = JSON.stringify({ x: { dtype: 'F32', shape: [1] }, y: 1 }, null, '\t').replace('"y"', '"dtype"').replace('"shape"', '"dtype"');
    expect(findDuplicateKey(pretty)).toBe('dtype');
  });

  it('escapes: a key ending in an escaped backslash, keys equal after unescaping (\\/, \\u00e9, surrogate pairs)', () => {
    expect(findDuplicateKey('{"a\\\\": 1, "b": "x\\\\", "a\\\\": 2}')).toBe('a\\');
    expect(findDuplicateKey('{"a\\\\": 1, "a": 2}')).toBeUndefined();
    expect(findDuplicateKey('{"p/q": 1, "p\\/q": 2}')).toBe('p/q');
    expect(findDuplicateKey('{"\u00e9": 1, "\\u00e9": 2}')).toBe('\u00e9');
    expect(findDuplicateKey('{"\u{1F600}": 1, "\\ud83d\\ude00": 2}')).toBe('\u{1F600}');
    expect(findDuplicateKey('{"k": "\\"}{\\"", "k\\"": 1, "k": 2}')).toBe('k');
  });
});

/** Writes `v` as JSON with random whitespace, number spellings and string escapes; returns the text and its value and depth counts. */
function randomJson(r: () => number, depthLeft: number): { text: string; values: number; depth: number } {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const ws = () => Array.from({ length: Math.floor(r() * 2) }, () => pick([' ', '\t', '\n', '\r'])).join('');
  const str = (): string =>
    `"${Array.from({ length: Math.floor(r() * 5) }, () => pick(['a', '[', '{', ']', '}', '\\"', '\\\\', '\\n', '\\u00e9', '\u00e9', '\u{1F600}', ',', ':', '0', '-', 'E'])).join('')}"`;
  const kind = depthLeft > 0 ? Math.floor(r() * 5) : Math.floor(r() * 3);
  if (kind === 0) return { text: str(), values: 1, depth: 0 };
  if (kind === 1) return { text: pick(['true', 'false', 'null']), values: 1, depth: 0 };
  if (kind === 2) return { text: pick(['0', '-0', '12', '-3.25', '1.5e+3', '2E-7', '1E5', '6.02e23', '-1.5e-7', '4E+2']), values: 1, depth: 0 };
  const n = Math.floor(r() * 4);
  let values = 1;
  let depth = 0;
  const parts: string[] = [];
  for (let k = 0; k < n; k++) {
    const v = randomJson(r, depthLeft - 1);
    values += v.values;
    depth = Math.max(depth, v.depth);
    if (kind === 3) parts.push(`${ws()}${v.text}${ws()}`);
    else {
      values++; // the key
      parts.push(`${ws()}"k${k}${pick(['', '\\"[', '{', '\\\\'])}"${ws()}:${ws()}${v.text}${ws()}`);
    }
  }
  return { text: kind === 3 ? `[${parts.join(',')}${ws()}]` : `{${parts.join(',')}${ws()}}`, values, depth: depth + 1 };
}

/** Values and depth counted on JSON.parse's result: the reference for the byte scan. */
function countParsed(v: unknown): { values: number; depth: number } {
  if (v === null || typeof v !== 'object') return { values: 1, depth: 0 };
  const children = Array.isArray(v) ? v : Object.values(v as object);
  let values = 1 + (Array.isArray(v) ? 0 : children.length);
  let depth = 0;
  for (const c of children) {
    const s = countParsed(c);
    values += s.values;
    depth = Math.max(depth, s.depth);
  }
  return { values, depth: depth + 1 };
}

describe('jsonLimitExceeded', () => {
  it('on random valid JSON, passes at exactly its value count and depth and refuses one below either (counts from JSON.parse)', () => {
    const base = freshSeed(94);
    const r = rng(base);
    for (let trial = 0; trial < 400; trial++) {
      const { text, values, depth } = randomJson(r, 1 + Math.floor(r() * 5));
      const parsed = countParsed(JSON.parse(text));
      expect(parsed, 'the generator counts as JSON.parse does').toEqual({ values, depth });
      const bytes = Buffer.from(text, 'utf8');
      const label = `seed ${base}: ${text}`;
      expect(jsonLimitExceeded(bytes, { maxDepth: depth, maxValues: values }), label).toBeUndefined();
      expect(jsonLimitExceeded(bytes, { maxDepth: depth, maxValues: values - 1 }), label).toBe(`holds more than ${values - 1} values (keys included)`);
      if (depth > 0) expect(jsonLimitExceeded(bytes, { maxDepth: depth - 1, maxValues: values }), label).toBe(`nests objects and arrays more than ${depth - 1} levels deep`);
    }
  });

  it('brackets after an escaped quote or inside an unterminated string are not nesting; every number spelling is one value', () => {
    const deep = '['.repeat(200);
    expect(jsonLimitExceeded(Buffer.from(`{"k": "\\"${deep}\\\\"}`), { maxDepth: 1, maxValues: 3 })).toBeUndefined();
    expect(jsonLimitExceeded(Buffer.from(`["${deep}`), { maxDepth: 1, maxValues: 2 })).toBeUndefined();
    expect(jsonLimitExceeded(Buffer.from(`"${deep}`), { maxDepth: 0, maxValues: 1 })).toBeUndefined();
    const nums = ['1e+5', '1E+5', '-1E-5', '2.5E10', '-0.0e-0', '1e5', 'true', 'null'];
    expect(jsonLimitExceeded(Buffer.from(`[${nums.join(',')}]`), { maxDepth: 1, maxValues: 1 + nums.length })).toBeUndefined();
    expect(jsonLimitExceeded(Buffer.from(`[${nums.join(',')}]`), { maxDepth: 1, maxValues: nums.length })).toBe(`holds more than ${nums.length} values (keys included)`);
  });
});

// ---------------------------------------------------------------------------------------------
// Save options.

describe('checkWriteSaeOptions', () => {
  it('metadata must be a plain object of JSON values: arrays, typed arrays, null and cycles are ERR_SAEKIT_ARG naming options.metadata', () => {
    const cyclic: Record<string, unknown> = { a: 1 };
    cyclic.self = cyclic;
    const cases: [unknown, RegExp][] = [
      [[1, 2], /^Expected an object of JSON values for options\.metadata but received an array/],
      [new Float32Array(2), /^Expected an object of JSON values for options\.metadata but received a Float32Array/],
      [new DataView(new ArrayBuffer(4)), /^Expected an object of JSON values for options\.metadata/],
      [null, /^Expected an object of JSON values for options\.metadata but received null$/],
      ['x', /^Expected an object of JSON values for options\.metadata but received 'x'/],
      [cyclic, /^Expected an object of JSON values \(.*circular.*\) for options\.metadata/is],
      [{ n: 10n }, /^Expected an object of JSON values \(.*BigInt.*\) for options\.metadata/is],
    ];
    for (const [metadata, re] of cases) {
      let err: unknown;
      try {
        checkWriteSaeOptions({ metadata: metadata as Record<string, unknown> });
      } catch (e) {
        err = e;
      }
      expect(err, String(metadata)).toBeInstanceOf(SaekitError);
      expect((err as SaekitError).code).toBe('ERR_SAEKIT_ARG');
      expect((err as SaekitError).message).toMatch(re);
    }
    const ok = { metadata: { a: [1, 'b', null, { c: true }] }, format: 'sparsify' as const, dtype: 'bfloat16' as const };
    expect(checkWriteSaeOptions(ok)).toEqual(ok);
    expect(checkWriteSaeOptions(undefined)).toEqual({});
  });
});

// ---------------------------------------------------------------------------------------------
// Glob expansion.

describe('expandGlob', () => {
  function tree(files: string[], dirs: string[] = []): string {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-parse-glob-'));
    for (const d of dirs) mkdirSync(path.join(dir, d), { recursive: true });
    for (const f of files) {
      mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
      writeFileSync(path.join(dir, f), '');
    }
    return dir;
  }

  it('`**` neither descends into hidden folders nor returns hidden files; an explicit leading `.` reaches them', async () => {
    const files = ['a.npy', '.h.npy', '.git/x.npy', 'sub/b.npy', 'sub/.cache/y.npy', 'sub/.z.npy', 'sub/deep/c.npy'];
    const dir = tree(files);
    try {
      const at = (...f: string[]) => f.map((x) => path.join(dir, x));
      expect(await expandGlob(`${dir}/**/*.npy`)).toEqual(at('a.npy', 'sub/b.npy', 'sub/deep/c.npy'));
      expect(await expandGlob(`${dir}/**`)).toEqual(at('a.npy', 'sub/b.npy', 'sub/deep/c.npy'));
      expect(await expandGlob(`${dir}/sub/**`)).toEqual(at('sub/b.npy', 'sub/deep/c.npy'));
      expect(await expandGlob(`${dir}/*/*.npy`)).toEqual(at('sub/b.npy'));
      expect(await expandGlob(`${dir}/.*/*.npy`)).toEqual(at('.git/x.npy'));
      expect(await expandGlob(`${dir}/**/.*.npy`)).toEqual(at('.h.npy', 'sub/.z.npy'));
      expect(await expandGlob(`${dir}/sub/.cache/*`)).toEqual(at('sub/.cache/y.npy'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('results are absolute paths for relative patterns too, in code-unit order of the full path (not per folder, not locale)', async () => {
    const files = ['B.npy', 'a.npy', 'a/x.npy', 'a-b/x.npy', 'a.b/x.npy', 'a/b/x.npy', '_.npy', 'a0.npy', '\u00e9.npy', 'Z/x.npy'];
    const dir = tree(files);
    try {
      const want = files.map((f) => path.join(dir, f)).sort(); // Array.prototype.sort compares UTF-16 code units
      expect(want.indexOf(path.join(dir, 'a-b/x.npy'))).toBeLessThan(want.indexOf(path.join(dir, 'a/x.npy')));
      expect(await expandGlob(`${dir}/**/*.npy`)).toEqual(want);
      expect(await expandGlob(`${dir}/**`)).toEqual(want);
      // The same pattern relative to the working directory (always possible on POSIX).
      const rel = path.relative(process.cwd(), dir).split(path.sep).join('/');
      if (!path.isAbsolute(rel)) {
        expect(await expandGlob(`${rel}/**/*.npy`)).toEqual(want);
        expect(await expandGlob(`./${rel}/./*.npy`)).toEqual(want.filter((p) => path.dirname(p) === dir));
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a literal last segment matches files only: a folder of that name is skipped', async () => {
    const dir = tree(['one/data', 'three/data/inner'], ['two/data']);
    try {
      expect(await expandGlob(`${dir}/*/data`)).toEqual([path.join(dir, 'one/data')]);
      expect(await expandGlob(`${dir}/**/data`)).toEqual([path.join(dir, 'one/data')]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
