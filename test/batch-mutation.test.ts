/**
 * Mutation round 9 (batching, slices, CLI progress and stop): EncodeBatcher's copies, refusals and
 * dispose(); lib/slices.ts's slice boundaries with performance.now mocked (no timing); the CLI's
 * progress lines with a mocked clock; abortOnSignal / stoppable in process with process.exit
 * stubbed and the signals emitted on `process` (no real signal is sent).
 */
import { afterEach, describe, expect, it, vi } from 'vitest';

import { backend, EncodeBatcher, SparseAutoencoder, type SparseCodes } from '../lib/index.js';
import { lcg } from './helpers/reference.js';

const bits = (a: Float32Array): number[] => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));
const rowsOf = (n: number, dIn: number, next: () => number): Float32Array => Float32Array.from({ length: n * dIn }, () => 2 * next() - 1);
const codesOf = (c: SparseCodes) => ({ rows: c.rows, k: c.k, values: bits(c.values), indices: Array.from(c.indices) });

describe('EncodeBatcher (mutation round 9)', () => {
  const [dIn, L, k] = [11, 53, 4];

  it('a request is encoded with the values x had when encode() returned: the caller may overwrite x at once (the first request and waiting ones)', async () => {
    const seed = Date.now() % 100_000;
    const next = lcg(seed);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: seed + 1 });
    const b = new EncodeBatcher(sae, { batchInvariant: true });
    const sizes = [2, 3, 1, 5];
    const xs = sizes.map((n) => rowsOf(n, dIn, next));
    const originals = xs.map((x) => x.slice());
    const pending = xs.map((x) => {
      const p = b.encode(x);
      x.set(rowsOf(x.length / dIn, dIn, next)); // reused by the caller as soon as encode() returned
      return p;
    });
    const got = await Promise.all(pending);
    expect(b.batches).toBe(2);
    for (const [i, x] of originals.entries()) {
      expect(codesOf(got[i]!), `seed ${seed}, request ${i}`).toEqual(codesOf(await sae.encode(x, { batchInvariant: true })));
    }
  });

  it('a request whose length is not a whole number of rows is refused alone, before it joins a batch; the rest of the batch resolves', async () => {
    const seed = Date.now() % 100_000;
    const next = lcg(seed);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: seed + 2 });
    const b = new EncodeBatcher(sae, { batchInvariant: true });
    const odd = Float32Array.from({ length: 2 * dIn + 1 + Math.floor(next() * (dIn - 1)) }, () => next());
    const xs = [rowsOf(1, dIn, next), rowsOf(2, dIn, next), odd, rowsOf(3, dIn, next)];
    const got = await Promise.allSettled(xs.map((x) => b.encode(x)));
    expect(got[2], `seed ${seed}`).toMatchObject({
      status: 'rejected',
      reason: { code: 'ERR_SAEKIT_SHAPE', message: expect.stringMatching(`rows x dIn = ${dIn} values for x but received a Float32Array of length ${odd.length}`) },
    });
    for (const i of [0, 1, 3]) {
      expect(got[i]!.status, `seed ${seed}, request ${i}`).toBe('fulfilled');
      const g = (got[i] as PromiseFulfilledResult<SparseCodes>).value;
      expect(codesOf(g), `seed ${seed}, request ${i}`).toEqual(codesOf(await sae.encode(xs[i]!, { batchInvariant: true })));
    }
    expect(b.batches).toBe(2);
  });

  it('a request made after the SAE was disposed is refused naming the batcher\'s SAE, not queued', async () => {
    const next = lcg(17);
    const sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 3 });
    const b = new EncodeBatcher(sae);
    sae.dispose();
    await expect(b.encode(rowsOf(1, dIn, next))).rejects.toMatchObject({
      code: 'ERR_SAEKIT_DISPOSED',
      message: 'the SparseAutoencoder of this batcher was disposed',
    });
    expect(b.batches).toBe(0);
  });

  for (const batchInvariant of [true, false]) {
    it(`an overflowing request is encoded again alone with the batcher's options (batchInvariant ${batchInvariant}); the batch itself is one encode`, async () => {
      const seed = Date.now() % 100_000;
      const next = lcg(seed);
      using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: seed + 3 });
      const b = new EncodeBatcher(sae, { batchInvariant });
      const huge = rowsOf(2, dIn, next);
      huge.fill(3e38, dIn, 2 * dIn);
      const xs = [rowsOf(1, dIn, next), rowsOf(3, dIn, next), huge, rowsOf(2, dIn, next)];
      const spy = vi.spyOn(sae, 'encode');
      let got: PromiseSettledResult<SparseCodes>[];
      try {
        got = await Promise.allSettled(xs.map((x) => b.encode(x)));
        // Only the overflowing request goes through sae.encode (the batches go to the addon directly).
        expect(spy).toHaveBeenCalledTimes(1);
        const [arg, options] = spy.mock.calls[0]!;
        expect(Array.from(arg as Float32Array)).toEqual(Array.from(huge));
        if (batchInvariant) expect(options).toEqual({ batchInvariant: true });
        else expect(options?.batchInvariant ?? false).toBe(false);
      } finally {
        spy.mockRestore();
      }
      expect(got[2]).toMatchObject({ status: 'rejected', reason: { code: 'ERR_SAEKIT_NONFINITE', row: 1 } });
      expect(got.filter((g) => g.status === 'fulfilled').length).toBe(3);
      expect(b.batches).toBe(2);
    });
  }

  it('dispose() drops the waiting requests: they are rejected and never encoded (one batch, one job)', async () => {
    const next = lcg(23);
    using sae = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 4 });
    const b = new EncodeBatcher(sae);
    const before = backend.stats().submitted;
    const pending = [3, 1, 2, 4].map((n) => b.encode(rowsOf(n, dIn, next)).then(() => 'ok', (e: { code: string }) => e.code));
    b.dispose();
    expect(await Promise.all(pending)).toEqual(['ok', 'ERR_SAEKIT_DISPOSED', 'ERR_SAEKIT_DISPOSED', 'ERR_SAEKIT_DISPOSED']);
    // A turn later nothing else was started either.
    await new Promise((r) => setImmediate(r));
    expect(b.batches).toBe(1);
    expect(backend.stats().submitted - before).toBe(1);
  });
});
