import { describe, expect, it } from 'vitest';

import { backend, metrics } from '../lib/index.js';
import { powerLawFit, spectrumWith } from '../lib/eval/spectrum.js';
import type { NativeEigenSolver } from '../lib/native/index.js';
import { lcg } from './helpers/reference.js';
import { spectrumSuite } from './helpers/spectrum-suite.js';
import { watchGaps } from './helpers/event-loop.js';

// The built-in solver always; LAPACK's dsyevd where the addon links it (an OpenBLAS build).
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

  it.runIf(!lapack)("'lapack' is a named ERR_SAEKIT_DEVICE where dsyevd is not linked", async () => {
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

  it('rejects a maxRank that is not an integer in [0, eigenvalues.length], and a bad floor', () => {
    const ev = Float64Array.from({ length: 200 }, (_, i) => (i + 1) ** -0.5);
    for (const bad of [Number.NaN, 100.5, -1, 201, Infinity, '50']) {
      expect(() => powerLawFit(ev, bad as number)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/^Expected integer between 0 and 200 for maxRank but received/) }));
    }
    for (const bad of [Number.NaN, -1, Infinity]) {
      expect(() => powerLawFit(ev, 200, bad)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/for floor but received/) }));
    }
    expect(() => powerLawFit([1, 2] as unknown as Float64Array)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/Float64Array for eigenvalues/) }));
  });
});
