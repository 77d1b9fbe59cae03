/**
 * Checks of JSON text that JSON.parse does not make. It silently keeps the last of two equal
 * keys, which would let one file mean two things to two readers, and reads `2.0` as the integer
 * 2 where safetensors' reference reader refuses it, so the safetensors reader scans its header
 * once for both (scanJsonKeys). Also Python's json text (parsePythonJson). Internal to lib/io.
 */

/** What {@link scanJsonKeys} found: each field is the first such thing in the text, if any. */
export interface JsonKeyScan {
  /** The first key that appears twice in one object (compared after unescaping). */
  duplicateKey?: string;
  /**
   * The first number token that JSON.parse reads as a non-negative integer but that is written
   * with a fraction, an exponent or a minus sign (`2.0`, `8e0`, `-0`), inside an array that is
   * the value of one of the watched keys in an object nested two deep (a safetensors entry's
   * shape and data_offsets). JSON.parse reads `2.0` as 2; safetensors' reference reader
   * deserializes these fields as unsigned integers and refuses such tokens, so a file that one
   * reader refuses the other refuses too. Only looked for until a duplicate key is found.
   */
  nonIntegerToken?: string;
}

/**
 * One pass over JSON text for what JSON.parse does not report: a key that appears twice in one
 * object (JSON.parse silently keeps the last) and, for the keys in `integerKeys`, integers
 * written as non-integer tokens (see {@link JsonKeyScan}). `text` must already be valid JSON
 * (JSON.parse accepted it), so this only tracks strings, numbers, nesting and which strings are
 * keys. Stops at the first duplicate key. Linear time, no recursion.
 */
export function scanJsonKeys(text: string, integerKeys: readonly string[] = []): JsonKeyScan {
  // One entry per open container. An object's keys are kept in an array while there are few (a
  // tensor entry has three: no Set to allocate per entry) and in a Set past SMALL_OBJECT_KEYS,
  // with the last key read; an array has keys null and says whether its numbers are watched.
  const stack: { keys: string[] | Set<string> | null; key?: string; watched?: boolean }[] = [];
  let nonIntegerToken: string | undefined;
  let i = 0;
  while (i < text.length) {
    const c = text.charCodeAt(i);
    if (c === 0x7b /* { */) {
      stack.push({ keys: [] });
      i++;
    } else if (c === 0x5b /* [ */) {
      const parent = stack[stack.length - 1];
      const watched = stack.length === 2 && parent?.keys != null && parent.key !== undefined && integerKeys.includes(parent.key);
      stack.push({ keys: null, watched });
      i++;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
      i++;
    } else if (c === 0x22 /* " */) {
      const end = stringEnd(text, i);
      const top = stack[stack.length - 1];
      const keys = top?.keys;
      if (keys && isKey(text, end)) {
        const key = stringAt(text, i, end);
        if (Array.isArray(keys)) {
          if (keys.includes(key)) return { duplicateKey: key };
          keys.push(key);
          if (keys.length > SMALL_OBJECT_KEYS) top.keys = new Set(keys);
        } else {
          if (keys.has(key)) return { duplicateKey: key };
          keys.add(key);
        }
        top.key = key;
      }
      i = end;
    } else if (c === 0x2d /* - */ || (c >= 0x30 && c <= 0x39)) {
      let end = i + 1;
      while (end < text.length && isNumberChar(text.charCodeAt(end))) end++;
      // Only tokens JSON.parse turns into a value the entry's checks would accept (0, 2): `-2`
      // and `1.5` get their own message there.
      if (nonIntegerToken === undefined && stack[stack.length - 1]?.watched) {
        const token = text.slice(i, end);
        if (/[.eE-]/.test(token) && Number.isInteger(Number(token)) && Number(token) >= 0) nonIntegerToken = token;
      }
      i = end;
    } else {
      i++;
    }
  }
  return nonIntegerToken === undefined ? {} : { nonIntegerToken };
}

/** Whether `c` can continue a JSON number token: a digit, '.', 'e', 'E', '+' or '-'. */
function isNumberChar(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || c === 0x2e || c === 0x65 || c === 0x45 || c === 0x2b || c === 0x2d;
}

/** Keys of one object compared by a linear scan before they move to a Set. */
const SMALL_OBJECT_KEYS = 16;

/** Index just past the closing quote of the string that starts at `start`. */
function stringEnd(text: string, start: number): number {
  let i = start + 1;
  while (i < text.length) {
    const c = text.charCodeAt(i);
    if (c === 0x5c /* \ */) i += 2;
    else if (c === 0x22) return i + 1;
    else i++;
  }
  return text.length;
}

/**
 * The value of the string literal text[start, end): unescaped only when it has a backslash
 * (JSON.parse of the literal); otherwise the text between the quotes is the value.
 */
function stringAt(text: string, start: number, end: number): string {
  const raw = text.slice(start + 1, end - 1);
  return raw.includes('\\') ? (JSON.parse(text.slice(start, end)) as string) : raw;
}

/** Whether the next non-whitespace character after `i` is a colon (the string was a key). */
function isKey(text: string, i: number): boolean {
  while (i < text.length) {
    const c = text.charCodeAt(i);
    if (c === 0x3a /* : */) return true;
    if (c !== 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d) return false;
    i++;
  }
  return false;
}

/**
 * JSON.parse, also reading the three non-standard tokens Python's json module writes by default
 * (allow_nan=True) for float('nan') and the infinities: NaN, Infinity, -Infinity become those
 * numbers. Standard JSON parses exactly as JSON.parse; a text that is invalid either way throws
 * JSON.parse's error for the original text. Only outside strings and only as whole values.
 */
export function parsePythonJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    // Each token becomes a JSON string holding a NUL (written \u0000), turned back by the reviver; a
    // text that has such an escape of its own is not given this second reading.
    if (!/NaN|Infinity/.test(text) || /\\u0000/i.test(text)) throw err;
    let out = '';
    let last = 0;
    let found = false;
    for (let i = 0; i < text.length; ) {
      const c = text.charCodeAt(i);
      if (c === 0x22 /* " */) {
        i = stringEnd(text, i);
        continue;
      }
      const token = c === 0x4e /* N */ && text.startsWith('NaN', i) ? 'NaN' : c === 0x49 /* I */ && text.startsWith('Infinity', i) ? 'Infinity' : c === 0x2d && text.startsWith('-Infinity', i) ? '-Infinity' : '';
      if (token !== '' && !/[\w$]/.test(text[i - 1] ?? '') && !/[\w$]/.test(text[i + token.length] ?? '')) {
        out += `${text.slice(last, i)}"\\u0000${token}"`;
        i += token.length;
        last = i;
        found = true;
        continue;
      }
      i++;
    }
    if (!found) throw err;
    const special: Record<string, number> = { '\u0000NaN': NaN, '\u0000Infinity': Infinity, '\u0000-Infinity': -Infinity };
    try {
      return JSON.parse(out + text.slice(last), (_key, value: unknown) => (typeof value === 'string' && Object.hasOwn(special, value) ? special[value] : value));
    } catch {
      throw err;
    }
  }
}
