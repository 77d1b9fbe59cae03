/** Checks that a call throws a SaekitError with the given code whose message names `name`. */
import { expect } from 'vitest';

import { SaekitError } from '../../lib/errors.js';

export function expectNamedError(fn: () => unknown, name: string, code = 'ERR_SAEKIT_ARG'): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err, `expected an error naming ${name}`).toBeInstanceOf(SaekitError);
  expect((err as SaekitError).code).toBe(code);
  expect((err as SaekitError).message).toContain(name);
}
