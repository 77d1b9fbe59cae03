/**
 * The documents against the code: what the README and docs/architecture.md name must exist, and
 * what the code offers (error codes, environment variables) must be named there.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { packageRoot } from '../lib/native/index.js';

const read = (p: string) => readFileSync(path.join(packageRoot, p), 'utf8');

describe('README', () => {
  it('names every error code SaekitError can carry', () => {
    const codes = [...read('lib/errors.ts').matchAll(/\|\s*'(ERR_SAEKIT_[A-Z_]+)'/g)].map((m) => m[1]!);
    expect(codes.length).toBeGreaterThan(5);
    const readme = read('README.md');
    expect(codes.filter((c) => !readme.includes(`\`${c}\``))).toEqual([]);
  });
});
