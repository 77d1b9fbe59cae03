/**
 * Duplicate-key detection for JSON text. JSON.parse silently keeps the last of two equal keys,
 * which would let one file mean two things to two readers, so the safetensors reader runs this
 * scan first. Internal to lib/io.
 */

/**
 * The first key that appears twice in one object of `text` (compared after unescaping), or
 * undefined when there is none. `text` must already be valid JSON (JSON.parse accepted it), so
 * this only tracks strings, nesting and which strings are keys. Linear time, no recursion.
 */
export function findDuplicateKey(text: string): string | undefined {
  // One entry per open container: the keys seen so far for an object, null for an array. An
  // object's keys are kept in an array while there are few (a tensor entry has three: no Set to
  // allocate per entry) and in a Set past SMALL_OBJECT_KEYS.
  const stack: (string[] | Set<string> | null)[] = [];
  let i = 0;
  while (i < text.length) {
    const c = text.charCodeAt(i);
    if (c === 0x7b /* { */) {
      stack.push([]);
      i++;
    } else if (c === 0x5b /* [ */) {
      stack.push(null);
      i++;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
      i++;
    } else if (c === 0x22 /* " */) {
      const end = stringEnd(text, i);
      const top = stack.length - 1;
      const keys = stack[top];
      if (keys && isKey(text, end)) {
        // Unescaped only when it has a backslash (JSON.parse of the literal); otherwise the text between the quotes is the key.
        const raw = text.slice(i + 1, end - 1);
        const key = raw.includes('\\') ? (JSON.parse(text.slice(i, end)) as string) : raw;
        if (Array.isArray(keys)) {
          if (keys.includes(key)) return key;
          keys.push(key);
          if (keys.length > SMALL_OBJECT_KEYS) stack[top] = new Set(keys);
        } else {
          if (keys.has(key)) return key;
          keys.add(key);
        }
      }
      i = end;
    } else {
      i++;
    }
  }
  return undefined;
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
