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
        // Through sae.encode go the first request (it found the batcher idle: encoded alone, at
        // once) and the overflowing one again; the batch of the other three goes to the addon directly.
        expect(spy).toHaveBeenCalledTimes(2);
        expect(spy.mock.calls[0]![0]).toBe(xs[0]);
        const [arg, options] = spy.mock.calls[1]!;
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

/** performance.now returning `clock.t` (ms), which the test moves; restored after each test. */
const clock = { t: 0 };
function mockClock(start: number): void {
  clock.t = start;
  vi.spyOn(performance, 'now').mockImplementation(() => clock.t);
}
afterEach(() => {
  vi.restoreAllMocks();
});

/** Counts turns of the event loop: a setImmediate that schedules itself again (one count per check phase). */
function turnCounter(): { readonly turns: number; stop(): void } {
  let turns = 0;
  let h = setImmediate(function tick() {
    turns++;
    h = setImmediate(tick);
  });
  return {
    get turns() {
      return turns;
    },
    stop: () => clearImmediate(h),
  };
}

describe('slices (mutation round 9): slice boundaries with a mocked clock', () => {
  it('due() reads the clock once per CHECK_UNITS units counted, and is true only once more than 20 ms passed since the last pause()', async () => {
    const { due, pause, CHECK_UNITS } = await import('../lib/slices.js');
    mockClock(10_000);
    const reads = () => vi.mocked(performance.now).mock.calls.length;
    await pause(); // a new slice starting at 10,000
    due(CHECK_UNITS); // counts nothing left over from before: the next look comes after CHECK_UNITS more
    const r0 = reads();
    expect(due(CHECK_UNITS - 1)).toBe(false);
    expect(reads(), 'no look at the clock before CHECK_UNITS units').toBe(r0);
    expect(due(1)).toBe(false);
    expect(reads()).toBe(r0 + 1);
    expect(due(CHECK_UNITS - 1)).toBe(false);
    expect(reads(), 'the count starts again after a look').toBe(r0 + 1);
    // The boundary: 20 ms is still the slice; just past it is due.
    for (const [dt, want] of [[5, false], [20, false], [20.5, true], [250, true]] as const) {
      clock.t = 10_000 + dt;
      expect(due(CHECK_UNITS), `${dt} ms into the slice`).toBe(want);
    }
    // A pause starts a new slice at the clock's time then.
    clock.t = 20_000;
    await pause();
    expect(due(CHECK_UNITS)).toBe(false);
    clock.t = 20_015;
    expect(due(2 * CHECK_UNITS)).toBe(false);
    clock.t = 20_021;
    expect(due(CHECK_UNITS)).toBe(true);
  });

  it('pause(signal) rejects with the reason of an abort made before or during its turn of the event loop, and resolves without one', async () => {
    const { pause } = await import('../lib/slices.js');
    await expect(pause(new AbortController().signal)).resolves.toBeUndefined();
    const before = new AbortController();
    const r1 = new Error('before');
    before.abort(r1);
    await expect(pause(before.signal)).rejects.toBe(r1);
    const during = new AbortController();
    const r2 = new Error('during');
    const p = pause(during.signal);
    during.abort(r2); // the turn has not come yet
    await expect(p).rejects.toBe(r2);
  });

  it('forBlocks counts `units` per element: with the slice over at every look, a turn of the event loop comes after every block at 2 units, every second block at 1', async () => {
    const { due, forBlocks, CHECK_UNITS } = await import('../lib/slices.js');
    mockClock(50_000);
    for (const [units, want] of [[2, [true, true, true]], [1, [false, true, false]], [4, [true, true, true]]] as const) {
      due(CHECK_UNITS); // nothing left over from before
      const counter = turnCounter();
      const seen: number[] = [];
      const n = 3 * 65536 + 1 + Math.floor(Math.random() * 65535); // four blocks, the last partial
      await forBlocks(n, () => {
        seen.push(counter.turns);
        clock.t += 30; // each block takes longer than a slice
      }, units);
      counter.stop();
      expect(seen.slice(1).map((c, i) => c > seen[i]!), `units ${units}`).toEqual(want);
    }
  });

  it('runSliced counts the units each step yields (a turn after every step of CHECK_UNITS units when each outlasts a slice) and returns what runAll returns', async () => {
    const { due, runAll, runSliced, CHECK_UNITS } = await import('../lib/slices.js');
    mockClock(90_000);
    const seed = (Date.now() >>> 4) % 100_000;
    function* work(values: number[], onStep: () => void): Generator<number, number> {
      let s = 0;
      for (const v of values) {
        s = s * 31 + v;
        onStep();
        yield CHECK_UNITS;
      }
      return s;
    }
    const next = lcg(seed);
    const values = Array.from({ length: 6 }, () => Math.floor(next() * 1000));
    due(CHECK_UNITS);
    const counter = turnCounter();
    const seen: number[] = [];
    const got = await runSliced(work(values, () => {
      seen.push(counter.turns);
      clock.t += 25;
    }));
    counter.stop();
    expect(seen.slice(1).map((c, i) => c > seen[i]!), `seed ${seed}`).toEqual([true, true, true, true, true]);
    expect(got).toBe(runAll(work(values, () => undefined)));
    expect(got).toBe(values.reduce((s, v) => s * 31 + v, 0));
  });
});

describe('CLI progress lines (mutation round 9): mocked clock', () => {
  const step = (tokens: number) => ({ step: tokens / 500, tokens, loss: 1, fvu: 0.123456, l0: 8.46, numDead: 3, deadFraction: 0.025, auxkLoss: 0, lr: 1e-3, tokensPerSec: 7 });
  const streamOf = (isTTY: boolean) => {
    const writes: string[] = [];
    return { writes, stream: { isTTY, write: (s: string) => (writes.push(s), true) } as unknown as NodeJS.WriteStream };
  };

  it('the rate counts from the first step seen (a resumed run), the ETA from it, and the TTY line is exact', async () => {
    const { Progress } = await import('../lib/cli/progress.js');
    mockClock(3_000);
    const { writes, stream } = streamOf(true);
    const p = new Progress(75_000, stream, 200);
    p.update(step(5_000)); // a resumed run's first step: no elapsed time yet, the step's own rate
    expect(writes.at(-1)).toBe(`\r[##......................]   6.7%  5.0k/75.0k tok  7 tok/s  ETA 2:46:40  fvu 0.1235  L0 8.5  dead 2.5%\u001b[K`);
    clock.t += 10_000;
    p.update(step(15_000)); // 10,000 tokens in 10 s
    expect(writes.at(-1)).toBe(`\r[#####...................]  20.0%  15.0k/75.0k tok  1.0k tok/s  ETA 1:00  fvu 0.1235  L0 8.5  dead 2.5%\u001b[K`);
    clock.t += 20_000;
    p.update(step(45_000)); // 40,000 in 30 s
    expect(writes.at(-1)).toContain(`  45.0k/75.0k tok  1.3k tok/s  ETA 0:22  `);
    expect(writes).toHaveLength(3);
    p.done();
    expect(writes.at(-1)).toBe('\n');
  });

  it('throttles to the interval (200 ms on a TTY, 10 s on a pipe by default); a pipe writes whole lines and done() adds nothing there', async () => {
    const { Progress } = await import('../lib/cli/progress.js');
    for (const isTTY of [true, false]) {
      mockClock(50_000 + Math.floor(Math.random() * 1e6)); // past the first interval since the process started
      const { writes, stream } = streamOf(isTTY);
      const p = new Progress(1e6, stream);
      const interval = isTTY ? 200 : 10_000;
      p.update(step(1000));
      expect(writes, `isTTY ${isTTY}`).toHaveLength(1);
      clock.t += interval - 1;
      p.update(step(2000));
      expect(writes, `isTTY ${isTTY}`).toHaveLength(1);
      clock.t += 1;
      p.update(step(3000));
      expect(writes, `isTTY ${isTTY}`).toHaveLength(2);
      if (!isTTY) expect(writes[1]).toMatch(/^step 6 {2}0\.3% {2}3\.0k\/1\.00M tok .*dead 2\.5%\n$/);
      p.done();
      // On a TTY the last step was drawn: done() ends the line only; on a pipe it writes nothing.
      expect(writes.slice(2)).toEqual(isTTY ? ['\n'] : []);
      vi.restoreAllMocks();
    }
  });

  it('TokenProgress: counts at the unit boundaries, its rate and ETA from its start, and done() ends a TTY line only once and only after one was drawn', async () => {
    const { TokenProgress } = await import('../lib/cli/progress.js');
    mockClock(1_000);
    const { writes, stream } = streamOf(false);
    const p = new TokenProgress('reading', undefined, stream, 0);
    const cases: [number, string][] = [[999, '999'], [1000, '1.0k'], [999_949, '999.9k'], [1e6, '1.00M'], [1e9, '1.00G'], [2_345_678_901, '2.35G']];
    for (const [n, want] of cases) {
      clock.t += 1000;
      p.update(n);
      expect(writes.at(-1), String(n)).toMatch(new RegExp(`^reading: ${want.replace('.', '\\.')} tok  `));
    }
    // Rate over the time since the constructor: 20,000 tokens 4 s after it, 30,000 to go.
    mockClock(50_000);
    const tty = streamOf(true);
    const q = new TokenProgress('correlating', 50_000, tty.stream, 0);
    q.done();
    expect(tty.writes, 'nothing drawn: done() ends no line').toEqual([]);
    clock.t += 4_000;
    q.update(20_000);
    expect(tty.writes).toEqual(['\rcorrelating: 20.0k/50.0k tok  5.0k tok/s  ETA 0:06\u001b[K']);
    q.done();
    q.done();
    expect(tty.writes.slice(1)).toEqual(['\n']);
  });
});

describe('CLI stop signals (mutation round 9): abortOnSignal and stoppable in process', () => {
  /** Runs fn and returns the SIGINT / SIGTERM listeners it added (called directly: no real signal, no other listener runs). */
  function added(fn: () => void): { SIGINT: () => void; SIGTERM: () => void } {
    const before = { SIGINT: new Set(process.listeners('SIGINT')), SIGTERM: new Set(process.listeners('SIGTERM')) };
    fn();
    const pick = (name: 'SIGINT' | 'SIGTERM') => {
      const mine = process.listeners(name).filter((l) => !before[name].has(l));
      expect(mine, name).toHaveLength(1);
      return mine[0] as () => void;
    };
    return { SIGINT: pick('SIGINT'), SIGTERM: pick('SIGTERM') };
  }
  class Exit extends Error {
    constructor(readonly code: number | undefined) {
      super(`process.exit(${code})`);
    }
  }
  /** process.exit throws Exit (so nothing runs after it, as in a real exit); stderr captured. */
  function stubbed(): { err: string[] } {
    vi.spyOn(process, 'exit').mockImplementation(((code?: number) => {
      throw new Exit(code);
    }) as never);
    const err: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => (err.push(String(s)), true));
    return { err };
  }
  const counts = () => [process.listenerCount('SIGINT'), process.listenerCount('SIGTERM')];

  for (const [first, second, code] of [['SIGINT', 'SIGTERM', 143], ['SIGTERM', 'SIGINT', 130], ['SIGINT', 'SIGINT', 130], ['SIGTERM', 'SIGTERM', 143]] as const) {
    it(`${first} aborts the signal and sets exitCode ${first === 'SIGINT' ? 130 : 143}; a second signal (${second}) exits at once with its own code ${code}; dispose() removes both handlers`, async () => {
      const { abortOnSignal } = await import('../lib/cli/stop.js');
      const { err } = stubbed();
      const n0 = counts();
      let sig!: ReturnType<typeof abortOnSignal>;
      const h = added(() => (sig = abortOnSignal('after the current step')));
      try {
        expect(sig.signal.aborted).toBe(false);
        expect(sig.exitCode).toBeUndefined();
        h[first]();
        expect(sig.signal.aborted).toBe(true);
        expect(sig.exitCode).toBe(first === 'SIGINT' ? 130 : 143);
        expect(process.exit).not.toHaveBeenCalled();
        expect(err).toEqual([
          first === 'SIGINT'
            ? '\nsaekit: stopping after the current step (Ctrl-C again to quit now)...\n'
            : '\nsaekit: SIGTERM received: stopping after the current step (a second SIGTERM or Ctrl-C quits now)...\n',
        ]);
        expect(() => h[second]()).toThrow(expect.objectContaining({ code }));
        expect(process.exit).toHaveBeenCalledTimes(1);
      } finally {
        sig.dispose();
      }
      expect(counts()).toEqual(n0);
    });
  }

  it('stoppable: work stopped by SIGTERM resolves with one line and process.exitCode 143; its handlers are gone after; other errors are thrown as they are', async () => {
    const { stoppable } = await import('../lib/cli/stop.js');
    const { err } = stubbed();
    const saved = process.exitCode;
    const n0 = counts();
    try {
      let h!: { SIGINT: () => void; SIGTERM: () => void };
      let p!: Promise<void>;
      let started!: () => void;
      const ready = new Promise<void>((r) => (started = r));
      h = added(() => {
        p = stoppable(async (signal) => {
          started();
          await new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason as Error)));
        });
      });
      await ready;
      h.SIGTERM();
      await expect(p).resolves.toBeUndefined();
      expect(process.exitCode).toBe(143);
      expect(err.at(-1)).toBe('saekit: stopped; no results were written\n');
      expect(counts()).toEqual(n0);
      process.exitCode = saved;
      // A SIGINT: 130.
      const h2 = added(() => {
        p = stoppable((signal) => new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason as Error))));
      });
      h2.SIGINT();
      await expect(p).resolves.toBeUndefined();
      expect(process.exitCode).toBe(130);
      process.exitCode = saved;
      // An error other than the abort's reason, even after an abort, is thrown, and sets no exit code.
      const other = new Error('disk full');
      const h3 = added(() => {
        p = stoppable((signal) => new Promise((_, reject) => signal.addEventListener('abort', () => reject(other))));
      });
      const lines = err.length;
      h3.SIGINT();
      await expect(p).rejects.toBe(other);
      expect(process.exitCode).toBe(saved);
      expect(err.slice(lines + 1)).toEqual([]); // only the 'stopping' line
      await expect(stoppable(() => Promise.reject(other))).rejects.toBe(other);
      expect(process.exitCode).toBe(saved);
      expect(counts()).toEqual(n0);
    } finally {
      process.exitCode = saved;
    }
  });
});
