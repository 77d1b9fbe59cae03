import { describe, expect, it } from 'vitest';

import { backend, metrics } from '../lib/index.js';
import { powerLawFit, spectrumWith, symmetricEigenvaluesWith } from '../lib/eval/spectrum.js';
import { native } from '../lib/native/index.js';
import type { NativeEigenSolver } from '../lib/native/index.js';
import { lcg } from './helpers/reference.js';
import { spectrumSuite } from './helpers/spectrum-suite.js';
import { watchGaps } from './helpers/event-loop.js';

// The built-in solver always; LAPACK's dsyevd where 'auto' takes it (OpenBLAS linked and in use:
// .ci/run also runs this file with SAEKIT_BLAS=openblas, for a VM where OpenBLAS gives way).
// test/spectrum-builtin.test.ts runs the same suite under SAEKIT_BLAS=builtin.
const lapack = backend.info().blas.eigen === 'lapack';
spectrumSuite('builtin');
if (lapack) spectrumSuite('lapack');

describe('eigensolver selection', () => {
  it("'auto' runs dsyevd when OpenBLAS is linked and active, and agrees with the built-in solver", async () => {
    const { blas } = backend.info();
    expect(blas.eigen).toBe(blas.name === 'openblas' ? 'lapack' : blas.eigen);
    if (!blas.linked) expect(blas.eigen).toBe('builtin');
    const [n, d] = [600, 150];
    const next = lcg(Date.now() >>> 0);
    const w = Float32Array.from({ length: n * d }, () => next() - 0.5);
    const a = await metrics.spectrum(w, n, d);
    const b = await spectrumWith(w, n, d, 'builtin');
    for (let i = 0; i < d; i++) expect(Math.abs(a.eigenvalues[i] - b.eigenvalues[i])).toBeLessThan(1e-9 * a.eigenvalues[0]);
  });

  // Not linked: a build without OpenBLAS (an OpenBLAS that gave way to the built-in GEMM still has it).
  it.runIf(!backend.info().blas.linked)("'lapack' is a named ERR_SAEKIT_DEVICE where dsyevd is not linked", async () => {
    await expect(spectrumWith(new Float32Array(4), 2, 2, 'lapack')).rejects.toMatchObject({ code: 'ERR_SAEKIT_DEVICE', message: expect.stringMatching(/dsyevd is not linked/) });
  });
});

describe('spectrum runs off the JS thread', () => {
  const solvers: NativeEigenSolver[] = lapack ? ['builtin', 'lapack'] : ['builtin'];
  for (const solver of solvers) {
    it(`a 1 ms interval keeps firing during a d = 512 spectrum (solver ${solver})`, async () => {
      const [n, d] = [8192, 512];
      const next = lcg(7);
      const w = Float32Array.from({ length: n * d }, () => next() - 0.5);
      const watch = watchGaps();
      const t0 = performance.now();
      const res = await spectrumWith(w, n, d, solver);
      const elapsed = performance.now() - t0;
      await new Promise((r) => setTimeout(r, 5));
      const gaps = watch.stop();
      expect(res.eigenvalues.length).toBe(d);
      // The JS solver blocked ~0.9 s here. Allow a loaded 2-core machine's scheduler ~100 ms.
      expect(gaps.length).toBeGreaterThan(elapsed / 50);
      expect(Math.max(...gaps), `spectrum took ${elapsed.toFixed(0)} ms`).toBeLessThan(Math.max(100, elapsed / 2));
    });
  }

  it('W_dec detached while it is staged is a named error, not NaN eigenvalues', async () => {
    const [n, d] = [300_000, 8]; // more than one staged piece (2^21 values): the second is copied after an await
    const next = lcg(77);
    const w = Float32Array.from({ length: n * d }, () => next() - 0.5);
    const p = metrics.spectrum(w, n, d);
    structuredClone(w.buffer, { transfer: [w.buffer] });
    await expect(p).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/W_dec to keep its 2400000 values .* now has 0/) });
  });
});

describe('powerLawFit', () => {
  it('recovers an exact power law over ranks 11..150 and clips to the available ranks', () => {
    const ev = Float64Array.from({ length: 400 }, (_, i) => 3 * (i + 1) ** -0.45);
    // Ranks outside 11..150 must not matter: perturb them.
    ev[0] = 100;
    ev[300] = 1e-9;
    const fit = powerLawFit(ev);
    expect(fit.fitRanks).toEqual([11, 150]);
    expect(fit.alpha).toBeCloseTo(0.45, 12);
    const short = powerLawFit(ev.slice(0, 60));
    expect(short.fitRanks).toEqual([11, 60]);
    expect(short.alpha).toBeCloseTo(0.45, 12);
    expect(powerLawFit(ev, 100).fitRanks).toEqual([11, 100]);
    expect(powerLawFit(ev, 0).fitRanks).toEqual([0, 0]);
    // Zero eigenvalues end the range; fewer than 2 ranks gives NaN.
    const withZeros = ev.slice(0, 100);
    withZeros.fill(0, 40);
    expect(powerLawFit(withZeros).fitRanks).toEqual([11, 40]);
    expect(powerLawFit(ev.slice(0, 11)).alpha).toBeNaN();
    expect(powerLawFit(ev.slice(0, 11)).fitRanks).toEqual([0, 0]);
  });

  it('alpha is minus the least-squares slope of log eigenvalue on log rank over 11..maxRank, two ranks included (fresh random spectra)', () => {
    const seed = (Date.now() ^ 0x1b873593) >>> 0;
    const next = lcg(seed);
    for (let trial = 0; trial < 50; trial++) {
      const len = 12 + Math.floor(next() * 200);
      const ev = Float64Array.from({ length: len }, () => 1e-3 + next() * 10).sort().reverse();
      const maxRank = trial === 0 ? 12 : 12 + Math.floor(next() * (len - 11));
      const hi = Math.min(150, maxRank);
      // Closed-form slope: (m Sxy - Sx Sy) / (m Sxx - Sx^2) over the points (log r, log ev[r - 1]).
      let [m, sx, sy, sxx, sxy] = [0, 0, 0, 0, 0];
      for (let r = 11; r <= hi; r++) {
        const [x, y] = [Math.log(r), Math.log(ev[r - 1]!)];
        m++;
        sx += x;
        sy += y;
        sxx += x * x;
        sxy += x * y;
      }
      const want = -(m * sxy - sx * sy) / (m * sxx - sx * sx);
      const fit = powerLawFit(ev, maxRank);
      const ctx = `seed ${seed}, trial ${trial}: ${len} eigenvalues, maxRank ${maxRank}`;
      expect(fit.fitRanks, ctx).toEqual([11, hi]);
      expect(Math.abs(fit.alpha - want), ctx).toBeLessThanOrEqual(1e-9 * (1 + Math.abs(want)));
    }
  });

  it('rejects a maxRank that is not an integer in [0, eigenvalues.length], and a bad floor', () => {
    const ev = Float64Array.from({ length: 200 }, (_, i) => (i + 1) ** -0.5);
    for (const bad of [Number.NaN, 100.5, -1, 201, Infinity, '50']) {
      expect(() => powerLawFit(ev, bad as number)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/^Expected integer between 0 and 200 for maxRank but received/) }));
    }
    for (const bad of [Number.NaN, -1, Infinity]) {
      expect(() => powerLawFit(ev, 200, bad)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/for floor but received/) }));
    }
    expect(() => powerLawFit([1, 2] as unknown as Float64Array)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/Float64Array for eigenvalues/) }));
    // Missing or null: the error names eigenvalues (it was a TypeError reading undefined's length).
    for (const bad of [undefined, null]) {
      expect(() => powerLawFit(bad as unknown as Float64Array)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/Float64Array for eigenvalues/) }));
    }
  });
});

describe('extreme scales and partial stages', () => {
  const solvers: NativeEigenSolver[] = lapack ? ['builtin', 'lapack'] : ['builtin'];
  for (const solver of solvers) {
    it(`solver ${solver}: entries near DBL_MAX and subnormal ones, and W scaled by 2^e (eigenvalues by exactly 2^2e)`, async () => {
      // [[0, a], [a, 0]] has eigenvalues +-a; a + a overflowed while symmetrising (NaN from dsyevd).
      expect(Array.from(await symmetricEigenvaluesWith(Float64Array.from([0, 1e308, 1e308, 0]), 2, solver)).map((v) => v / 1e308)).toEqual([
        expect.closeTo(1, 12),
        expect.closeTo(-1, 12),
      ]);
      // A subnormal largest entry: the built-in solver's 2^-exponent scale overflowed to Infinity.
      const sub = await symmetricEigenvaluesWith(Float64Array.from([3e-310, 1e-310, 1e-310, 3e-310]), 2, solver);
      expect(Array.from(sub).map((v) => v / 1e-310)).toEqual([expect.closeTo(4, 9), expect.closeTo(2, 9)]);
      const [n, d] = [65, 17];
      const next = lcg(Date.now() >>> 0);
      const w = Float32Array.from({ length: n * d }, () => next() - 0.5);
      const base = (await spectrumWith(w, n, d, solver)).eigenvalues;
      // float32's Gram products overflowed past |W| ~ 1.8e19 and flushed to zero below ~1e-23.
      for (const e of [-90, -70, 64, 70]) {
        const got = (await spectrumWith(w.map((v) => v * 2 ** e), n, d, solver)).eigenvalues;
        for (let i = 0; i < d; i++) expect(got[i], `2^${e}, eigenvalue ${i}`).toBe(base[i]! * 2 ** (2 * e));
      }
    });
  }

  it('a stage not written in full, or written out of order, is refused (it would read uninitialised memory)', async () => {
    const b = native() as unknown as Record<string, (...args: unknown[]) => unknown>;
    const stage = b.spectrumStage!('float64', 4);
    expect(() => b.spectrumStageWrite!(stage, new Float64Array(2), 1)).toThrow(/offset/);
    b.spectrumStageWrite!(stage, Float64Array.from([1, 0]), 0);
    expect(() => b.symmetricEigenvalues!(stage, 2, 'auto')).toThrow(/fully written stage \(4 values\) but 2 were written/);
    b.spectrumStageWrite!(stage, Float64Array.from([0, 1]), 2);
    expect(Array.from((await b.symmetricEigenvalues!(stage, 2, 'auto')) as Float64Array)).toEqual([1, 1]);
  });
});
