/**
 * A structural pre-check of JSON text, run before JSON.parse. A length cap alone does not bound
 * what JSON.parse costs: 100 MB of `{},` builds 33 million objects (about 3 GB and 40 s) and 100
 * MB of `[[[[` nests 50 million arrays (5 GB), while 100 MB of `0,` still makes a 50-million
 * element array (1.3 GB). Counting nesting and values first, in one pass over the bytes that
 * allocates nothing, lets a reader refuse such text before parsing it. Internal to lib/io.
 */

/** Bounds on the shape of a JSON text. */
export interface JsonLimits {
  /** Deepest nesting of objects and arrays (the top-level value is depth 1). */
  maxDepth: number;
  /** Most values, keys included: every object, array, string and scalar token. */
  maxValues: number;
}

/**
 * Why the JSON text in `bytes` (UTF-8) exceeds `limits`, or undefined when it does not. One
 * linear pass that stops at the first excess; strings (escapes included) are skipped, so
 * brackets inside them do not count. The text need not be valid JSON: on invalid text the counts
 * are approximate but still bounded, and JSON.parse reports the syntax error afterwards. Bytes
 * are scanned, not characters: every structural character is ASCII, and no byte of a multi-byte
 * UTF-8 sequence is below 0x80.
 */
export function jsonLimitExceeded(bytes: Uint8Array, limits: JsonLimits): string | undefined {
  let depth = 0;
  let values = 0;
  let inScalar = false; // inside a number or literal (true, false, null): counted once
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes[i]!;
    if (c === 0x22 /* " */) {
      values++;
      inScalar = false;
      i = closingQuote(bytes, i);
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      values++;
      inScalar = false;
      if (++depth > limits.maxDepth) return `nests objects and arrays more than ${limits.maxDepth} levels deep`;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      depth--;
      inScalar = false;
    } else if (isScalarByte(c)) {
      if (!inScalar) values++;
      inScalar = true;
    } else {
      inScalar = false;
    }
    if (values > limits.maxValues) return `holds more than ${limits.maxValues} values (keys included)`;
  }
  return undefined;
}

/** Index of the quote that closes the string opening at `start` (or the last index when unterminated). */
function closingQuote(bytes: Uint8Array, start: number): number {
  for (let i = start + 1; i < bytes.length; i++) {
    const c = bytes[i]!;
    if (c === 0x5c /* \ */) i++;
    else if (c === 0x22) return i;
  }
  return bytes.length - 1;
}

/** Letters, digits, '+', '-' and '.': the bytes of numbers and of true, false and null. */
function isScalarByte(c: number): boolean {
  const lower = c | 0x20;
  return (c >= 0x30 && c <= 0x39) || (lower >= 0x61 && lower <= 0x7a) || c === 0x2b || c === 0x2d || c === 0x2e;
}
