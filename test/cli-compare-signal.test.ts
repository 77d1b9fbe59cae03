/**
 * `saekit compare`'s signal (Ctrl-C, SIGTERM) reaches its SVCCA and RSA permutation tests, which
 * can run for many seconds: they are wrapped here (vi.mock of the module, the real functions
 * called through) to see the options they receive.
 */
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { describe, expect, it, vi } from 'vitest';

import * as similarity from '../lib/features/similarity.js';
import { compare, DEFAULT_MAX_PAIRS, type CompareFlags } from '../lib/cli/compare.js';
import { io, SparseAutoencoder } from '../lib/index.js';
import { lcg } from './helpers/reference.js';

const seen: { fn: string; signal: AbortSignal | undefined }[] = [];
let onSvcca: (() => void) | undefined;

vi.mock('../lib/features/similarity.js', async (importOriginal) => {
  const real = await importOriginal<typeof similarity>();
  return {
    ...real,
    svccaPermutationTest: (A: similarity.Matrix, B: similarity.Matrix, o: Parameters<typeof real.svccaPermutationTest>[2]) => {
      seen.push({ fn: 'svcca', signal: o.signal });
      onSvcca?.();
      return real.svccaPermutationTest(A, B, o);
    },
    rsaPermutationTest: (A: similarity.Matrix, B: similarity.Matrix, o: Parameters<typeof real.rsaPermutationTest>[2]) => {
      seen.push({ fn: 'rsa', signal: o.signal });
      return real.rsaPermutationTest(A, B, o);
    },
  };
});

describe('saekit compare: the stop signal reaches the similarity stages', () => {
  it('svcca and rsa get the signal compare was given (none without one); an abort as svcca starts rejects with its reason and rsa never runs', async () => {
    const next = lcg(Date.now() >>> 0);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-cmp-signal-'));
    const [dIn, rows] = [5, 301];
    using sae = SparseAutoencoder.create({ dIn, numLatents: 23, k: 3, seed: 9 });
    const s = path.join(dir, 'sae');
    await sae.save(s);
    const data = path.join(dir, 'acts.npy');
    await io.writeNpy(data, { dtype: 'float32', shape: [rows, dIn], data: Float32Array.from({ length: rows * dIn }, () => next() - 0.5) });
    // Every pair kept (threshold -1): 23 matched pairs, more than dIn, so SVCCA runs.
    const flags: CompareFlags = { data, kind: 'codes', method: 'hungarian', threshold: -1, top: 1, maxTokens: 100_000, runs: 3, maxPairs: DEFAULT_MAX_PAIRS, onNonFinite: 'error', device: 'cpu', json: true };
    const quiet = [vi.spyOn(process.stdout, 'write').mockImplementation(() => true), vi.spyOn(process.stderr, 'write').mockImplementation(() => true)];
    try {
      await compare(s, s, flags);
      expect(seen).toEqual([{ fn: 'svcca', signal: undefined }, { fn: 'rsa', signal: undefined }]);
      seen.length = 0;
      const live = new AbortController();
      await compare(s, s, flags, live.signal);
      expect(seen).toEqual([{ fn: 'svcca', signal: live.signal }, { fn: 'rsa', signal: live.signal }]);
      seen.length = 0;
      const stop = new AbortController();
      const reason = new Error('SIGINT');
      onSvcca = () => stop.abort(reason);
      await expect(compare(s, s, flags, stop.signal)).rejects.toBe(reason);
      expect(seen.map((x) => x.fn)).toEqual(['svcca']);
    } finally {
      onSvcca = undefined;
      for (const q of quiet) q.mockRestore();
    }
  });
});
