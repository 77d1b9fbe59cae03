/**
 * Errors thrown by saekit. Every error has a stable `code`, and every message names the
 * argument, what was expected and what was received:
 * "Expected integer between 1 and 1024 for threads but received 0 (number)".
 */

/** Error codes: stable across versions, safe to switch on. */
export type SaekitErrorCode =
  | 'ERR_SAEKIT_ARG'
  | 'ERR_SAEKIT_SHAPE'
  | 'ERR_SAEKIT_DTYPE'
  | 'ERR_SAEKIT_DISPOSED'
  | 'ERR_SAEKIT_DEVICE'
  | 'ERR_SAEKIT_FORMAT'
  | 'ERR_SAEKIT_MEMORY'
  | 'ERR_SAEKIT_NONFINITE'
  | 'ERR_SAEKIT_NATIVE'
  | 'ERR_SAEKIT_INTERNAL';

/** The one error class saekit throws; inspect `code` to tell failures apart. */
export class SaekitError extends Error {
  /** What kind of failure this is (stable across versions). */
  readonly code: SaekitErrorCode;
  /**
   * Set on errors about one row of an input (a NaN or infinity in a row of x, an encode whose
   * pre-activations overflow float32): its index, counted from 0. Absent on other errors.
   */
  declare readonly row?: number;
  constructor(code: SaekitErrorCode, message: string) {
    super(message);
    this.name = 'SaekitError';
    this.code = code;
  }
}

/** A short, readable description of any value for error messages: "0 (number)", "an object". */
export function describe(value: unknown): string {
  if (value === undefined) return 'undefined';
  if (value === null) return 'null';
  switch (typeof value) {
    case 'number':
      return `${String(value)} (number)`;
    case 'bigint':
      return `${String(value)}n (bigint)`;
    case 'boolean':
      return `${String(value)} (boolean)`;
    case 'string':
      return `'${value.length > 40 ? `${value.slice(0, 40)}...` : value}' (string)`;
    case 'symbol':
      return 'a symbol';
    case 'function':
      return 'a function';
    default:
      break;
  }
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  if (ArrayBuffer.isView(value)) {
    const name = value.constructor?.name ?? 'TypedArray';
    return 'length' in value ? `${article(name)} ${name} of length ${(value as { length: number }).length}` : `${article(name)} ${name}`;
  }
  const name = (value as object).constructor?.name;
  return name && name !== 'Object' ? `${article(name)} ${name}` : 'an object';
}

/** 'an' before a class name read with a vowel sound (Int32Array, AbortSignal, Error), 'a' otherwise (Uint8Array, Float32Array). */
function article(name: string): string {
  return /^[AEIO]/.test(name) ? 'an' : 'a';
}

/** The standard argument error: "Expected <expected> for <name> but received <actual>". */
export function argError(
  name: string,
  expected: string,
  actual: unknown,
  code: SaekitErrorCode = 'ERR_SAEKIT_ARG',
): SaekitError {
  return new SaekitError(code, `Expected ${expected} for ${name} but received ${describe(actual)}`);
}

/**
 * argError for an argument that must be a typed array of one element type: ERR_SAEKIT_DTYPE when it
 * is a typed array of another type (a Float64Array where a Float32Array is taken), ERR_SAEKIT_ARG
 * when it is not a typed array at all (undefined, a plain array, an object).
 */
export function arrayTypeError(name: string, expected: string, actual: unknown): SaekitError {
  const typed = ArrayBuffer.isView(actual) && !(actual instanceof DataView);
  return argError(name, expected, actual, typed ? 'ERR_SAEKIT_DTYPE' : 'ERR_SAEKIT_ARG');
}

/**
 * Converts an error thrown by the addon into a SaekitError. `site` is an Error created before
 * the native call, so an asynchronous failure points at the caller's line, not at the queue.
 */
export function fromNative(err: unknown, site?: Error): SaekitError {
  if (err instanceof SaekitError) return err;
  const e = err as { code?: unknown; message?: unknown };
  const code =
    typeof e?.code === 'string' && e.code.startsWith('ERR_SAEKIT_') ? (e.code as SaekitErrorCode) : 'ERR_SAEKIT_NATIVE';
  const out = new SaekitError(code, typeof e?.message === 'string' ? e.message : String(err));
  const row = (err as { row?: unknown } | null)?.row;
  if (typeof row === 'number') (out as { row?: number }).row = row;
  if (site?.stack) out.stack = `SaekitError: ${out.message}\n${site.stack.split('\n').slice(1).join('\n')}`;
  return out;
}

/**
 * A copy of `err` (code, message, row) whose stack is `site`'s: for an error made away from the
 * call it fails (one error shared by several queued requests, each of which should point at its
 * own caller). Other values pass as they are. @internal
 */
export function atSite(err: unknown, site: Error): unknown {
  if (!(err instanceof SaekitError)) return err;
  return fromNative({ code: err.code, message: err.message, row: err.row }, site);
}

/**
 * `encoding` (an encode or forward of a batch x that saekit made from the caller's input),
 * with an error about one row r of x (err.row r: pre-activations that overflow, a NaN)
 * renamed to the token it came from: err.row becomes `token(r)` and the message names it as
 * `token T of <source>`. Other errors pass as they are. @internal
 */
export function atTokens<T>(encoding: Promise<T>, token: (row: number) => number, source: string): Promise<T> {
  return encoding.catch((err: unknown) => {
    const row = err instanceof SaekitError ? err.row : undefined;
    if (row !== undefined) {
      const e = err as SaekitError & { row?: number };
      e.row = token(row);
      // "row r of x gives Infinity ..." (overflow) and "in x but row r has NaN ..." (a bad value).
      e.message = e.message.replace(`row ${row} of x`, `token ${e.row} of ${source}`).replace(`in x but row ${row} has`, `in ${source} but token ${e.row} has`);
    }
    throw err;
  });
}

/** Awaits a native Promise, rethrowing failures as SaekitError with the caller's stack. */
export async function settleNative<T>(promise: Promise<T>, site: Error): Promise<T> {
  try {
    return await promise;
  } catch (err) {
    throw fromNative(err, site);
  }
}

/** Runs a synchronous native call, rethrowing failures as SaekitError. */
export function callNative<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw fromNative(err);
  }
}
