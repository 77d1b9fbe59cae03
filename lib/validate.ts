/** Argument checks shared by the public API. Each throws the standard SaekitError on failure. */
import { argError, SaekitError, type SaekitErrorCode } from './errors.js';

/** Returns `value` if it is an integer in [min, max]; otherwise throws. */
export function checkInt(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw argError(name, `integer between ${min} and ${max}`, value);
  }
  return value;
}

export function checkBool(name: string, value: unknown): boolean {
  if (typeof value !== 'boolean') throw argError(name, 'boolean', value);
  return value;
}

/** Returns `value` if it is one of `choices`; otherwise throws listing them. */
export function checkOneOf<T extends string>(
  name: string,
  value: unknown,
  choices: readonly T[],
  code: SaekitErrorCode = 'ERR_SAEKIT_ARG',
): T {
  if (typeof value !== 'string' || !(choices as readonly string[]).includes(value)) {
    throw argError(name, `one of: ${choices.join(', ')}`, value, code);
  }
  return value as T;
}

/**
 * options.signal of a long-running Promise API: undefined, or an AbortSignal (anything else throws
 * naming `name`). The caller calls signal?.throwIfAborted() before any work and between its
 * batches or blocks, so the Promise rejects with signal.reason, as Node's own APIs do.
 */
export function checkSignal(name: string, value: unknown): AbortSignal | undefined {
  if (value !== undefined && !(value instanceof AbortSignal)) throw argError(name, 'an AbortSignal', value);
  return value;
}

/**
 * The option names of T, from an object literal that must list each of them (the parameter's
 * type rejects a missing or an unknown name at compile time), for checkOptions.
 */
export function optionNames<T extends object>(names: { [K in keyof Required<T>]: true }): readonly string[] {
  return Object.freeze(Object.keys(names));
}

/**
 * An options argument: undefined becomes {}, anything but an object (an array or a typed array:
 * an argument in the wrong place) throws. With `names`,
 * an option not among them (a misspelling: `batchsize`) throws naming the closest one, instead
 * of being ignored. Symbol keys (internal options) are not checked.
 */
export function checkOptions<T extends object>(name: string, value: T | undefined, names?: readonly string[]): Partial<T> {
  if (value === undefined) return {};
  if (value === null || typeof value !== 'object' || Array.isArray(value) || ArrayBuffer.isView(value)) throw argError(name, 'an options object', value);
  if (names) {
    for (const key of Object.keys(value)) {
      if (names.includes(key)) continue;
      const near = closest(key, names);
      throw new SaekitError(
        'ERR_SAEKIT_ARG',
        `Unknown option ${name}.${key}${near ? ` (did you mean ${name}.${near}?)` : ''}; the options are: ${names.join(', ')}`,
      );
    }
  }
  return value;
}

/** The name among `names` nearest to `key` (same letters ignoring case, or at most 2 edits away), if any. */
function closest(key: string, names: readonly string[]): string | undefined {
  const lower = key.toLowerCase();
  let best: string | undefined;
  let bestD = 3;
  for (const n of names) {
    if (n.toLowerCase() === lower) return n;
    const d = editDistance(lower, n.toLowerCase(), bestD);
    if (d < bestD) {
      bestD = d;
      best = n;
    }
  }
  if (best !== undefined || lower.length < 4) return best;
  // A name cut short or run on (deadThreshold: deadThresholdTokens), when only one fits.
  const fits = names.filter((n) => n.toLowerCase().startsWith(lower) || lower.startsWith(n.toLowerCase()));
  return fits.length === 1 ? fits[0] : undefined;
}

/** Levenshtein distance, or `cap` once it is at least `cap`. */
function editDistance(a: string, b: string, cap: number): number {
  if (Math.abs(a.length - b.length) >= cap) return cap;
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    let rowMin = i;
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      rowMin = Math.min(rowMin, cur[j]!);
    }
    if (rowMin >= cap) return cap;
    prev = cur;
  }
  return Math.min(prev[b.length]!, cap);
}

/**
 * After a pause (an await) in a call that reads the caller's typed array: `array` must still hold
 * the `length` elements it had when the call started; a detached ArrayBuffer (transferred to a
 * worker, structuredClone with transfer) or a resized one is ERR_SAEKIT_ARG naming it. `unit`
 * names the elements ('values', 'bytes').
 */
export function checkKept(name: string, array: { length: number }, length: number, unit = 'values'): void {
  if (array.length !== length) {
    throw new SaekitError(
      'ERR_SAEKIT_ARG',
      `Expected ${name} to keep its ${length} ${unit} until the call settles but it now has ${array.length} (was its ArrayBuffer detached or resized?)`,
    );
  }
}

/** A seed: a non-negative safe integer or a bigint below 2^64. */
export function checkSeed(name: string, value: unknown): bigint {
  if (typeof value === 'bigint' && value >= 0n && value < 1n << 64n) return value;
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) return BigInt(value);
  throw argError(name, 'non-negative safe integer or bigint below 2^64', value);
}

/** The largest dimension a shape may have (the addon's limit; element counts stop at 2^60). */
const MAX_DIM = 2 ** 50;

/** A shape: at most 8 non-negative integer dimensions, each at most 2^50. Returns a frozen copy. */
export function checkShape(name: string, value: unknown): readonly number[] {
  if (!Array.isArray(value)) throw argError(name, 'an array of non-negative integers', value, 'ERR_SAEKIT_SHAPE');
  if (value.length > 8) throw argError(name, 'at most 8 dimensions', value, 'ERR_SAEKIT_SHAPE');
  for (let i = 0; i < value.length; i++) {
    const d: unknown = value[i]; // an index loop: a hole in a sparse array is checked too, as undefined
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) {
      throw argError(`${name}[${i}]`, 'non-negative integer', d, 'ERR_SAEKIT_SHAPE');
    }
    if (d > MAX_DIM) throw argError(`${name}[${i}]`, 'non-negative integer at most 2^50', d, 'ERR_SAEKIT_SHAPE');
  }
  return Object.freeze(Array.from(value as number[]));
}

/**
 * Returns `value` if it is a finite number in [min, max] (or (min, max] with exclusiveMin);
 * otherwise throws naming the range.
 */
export function checkNumber(name: string, value: unknown, min: number, max: number, exclusiveMin = false): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max || (exclusiveMin && value === min)) {
    throw argError(name, `finite number ${exclusiveMin ? '>' : '>='} ${min}${max < Infinity ? ` and <= ${max}` : ''}`, value);
  }
  return value;
}

/** A fresh random 64-bit seed (for callers that did not give one). */
export function randomSeed(): bigint {
  const w = crypto.getRandomValues(new Uint32Array(2));
  return (BigInt(w[0]!) << 32n) | BigInt(w[1]!);
}

export function shapeSize(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}
