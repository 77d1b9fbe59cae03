/**
 * A strict parser for the one Python literal an .npy header holds, e.g.
 * `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`. It accepts exactly the grammar
 * numpy writes (plus harmless variations: either quote style, any whitespace, optional trailing
 * commas, Python 2 `L` integer suffixes) and never evaluates anything. Internal to lib/io.
 *
 *   dict  := '{' [ key ':' value { ',' key ':' value } [ ',' ] ] '}'
 *   key   := string
 *   value := string | 'True' | 'False' | int | tuple
 *   tuple := '(' ')' | '(' int ',' ')' | '(' int { ',' int } [ ',' ] ')'   -- one element needs the comma
 */

/** A parsed value: strings, booleans, non-negative integers, tuples of them. */
export type PyValue = string | boolean | number | PyValue[];

/** Thrown with a reason; the caller turns it into a format error naming the file. */
export class PyLiteralError extends Error {}

/** Integers longer than this cannot be exact; parsing stops there (no unbounded work). */
const MAX_DIGITS = 16;

class Cursor {
  i = 0;
  constructor(readonly text: string) {}

  skipSpace(): void {
    // Python's tokenizer (and so np.load's literal_eval) also takes a form feed as whitespace.
    while (this.i < this.text.length && ' \t\r\n\f'.includes(this.text[this.i]!)) this.i++;
  }
  peek(): string {
    this.skipSpace();
    return this.text[this.i] ?? '';
  }
  expect(ch: string): void {
    if (this.peek() !== ch) throw new PyLiteralError(`expected '${ch}' at character ${this.i} but found ${this.found()}`);
    this.i++;
  }
  found(): string {
    if (this.i >= this.text.length) return 'the end of the header';
    const ch = this.text[this.i]!;
    // A control character is shown escaped (a NUL or form feed printed raw garbles the message):
    // JSON's escapes below 0x20; \uXXXX for DEL, the C1 controls (a latin1 header can hold them)
    // and an invisible U+FEFF, which JSON.stringify leaves raw.
    if (/[\x00-\x1f]/.test(ch)) return JSON.stringify(ch);
    return /[\x7f-\x9f\ufeff]/.test(ch) ? `"\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}"` : `'${ch}'`;
  }
}

/**
 * Parses `text` as a dict literal with string keys. Duplicate keys are an error (Python would
 * silently keep the last one). Returns a Map in source order.
 */
export function parsePyDict(text: string): Map<string, PyValue> {
  const c = new Cursor(text);
  const out = new Map<string, PyValue>();
  c.expect('{');
  while (c.peek() !== '}') {
    const key = parseString(c);
    if (out.has(key)) throw new PyLiteralError(`duplicate key '${key}'`);
    c.expect(':');
    out.set(key, parseValue(c));
    if (c.peek() === ',') c.i++;
    else if (c.peek() !== '}') throw new PyLiteralError(`expected ',' or '}' at character ${c.i} but found ${c.found()}`);
  }
  c.i++;
  c.skipSpace();
  if (c.i !== text.length) throw new PyLiteralError(`unexpected ${c.found()} after the closing '}'`);
  return out;
}

function parseValue(c: Cursor): PyValue {
  const ch = c.peek();
  if (ch === "'" || ch === '"') return parseString(c);
  if (ch === '(') return parseTuple(c);
  if (ch === '[') throw new PyLiteralError(`lists are not supported (structured dtypes cannot be read) at character ${c.i}`);
  if (ch === '-') throw new PyLiteralError(`negative number at character ${c.i}`);
  if (ch >= '0' && ch <= '9') return parseInt(c);
  if (c.text.startsWith('True', c.i)) return word(c, 'True', true);
  if (c.text.startsWith('False', c.i)) return word(c, 'False', false);
  throw new PyLiteralError(`unexpected ${c.found()} at character ${c.i} where a value should be`);
}

function word(c: Cursor, w: string, value: boolean): boolean {
  c.i += w.length;
  if (/[A-Za-z0-9_]/.test(c.text[c.i] ?? '')) throw new PyLiteralError(`unknown name at character ${c.i - w.length}`);
  return value;
}

/** A quoted string without escapes (numpy never writes any); either quote style. */
function parseString(c: Cursor): string {
  const q = c.peek();
  if (q !== "'" && q !== '"') throw new PyLiteralError(`expected a quoted string at character ${c.i} but found ${c.found()}`);
  const end = c.text.indexOf(q, c.i + 1);
  if (end < 0) throw new PyLiteralError(`unterminated string at character ${c.i}`);
  const s = c.text.slice(c.i + 1, end);
  if (s.includes('\\') || s.includes('\n')) throw new PyLiteralError(`unsupported escape or line break in string at character ${c.i}`);
  c.i = end + 1;
  return s;
}

/** A non-negative decimal integer (optional Python 2 `L`), at most MAX_DIGITS digits. */
function parseInt(c: Cursor): number {
  const start = c.i;
  while (c.i < c.text.length && c.text[c.i]! >= '0' && c.text[c.i]! <= '9') {
    if (c.i - start >= MAX_DIGITS) throw new PyLiteralError(`integer at character ${start} is too large`);
    c.i++;
  }
  const digits = c.text.slice(start, c.i);
  if (digits.length > 1 && digits[0] === '0') throw new PyLiteralError(`integer with a leading zero at character ${start}`);
  if (c.text[c.i] === 'L') c.i++;
  const n = Number(digits);
  if (!Number.isSafeInteger(n)) throw new PyLiteralError(`integer at character ${start} is too large`);
  return n;
}

function parseTuple(c: Cursor): number[] {
  c.expect('(');
  const items: number[] = [];
  let trailingComma = false;
  while (c.peek() !== ')') {
    const ch = c.peek();
    if (!(ch >= '0' && ch <= '9')) throw new PyLiteralError(`expected a non-negative integer at character ${c.i} but found ${c.found()}`);
    items.push(parseInt(c));
    trailingComma = c.peek() === ',';
    if (trailingComma) c.i++;
    else if (c.peek() !== ')') throw new PyLiteralError(`expected ',' or ')' at character ${c.i} but found ${c.found()}`);
  }
  c.i++;
  if (items.length === 1 && !trailingComma) throw new PyLiteralError('a one-element tuple needs a trailing comma: (n,)');
  return items;
}
