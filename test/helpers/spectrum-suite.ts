/**
 * The eigensolver and decoder-spectrum test body, run once per solver: LAPACK's dsyevd and the
 * built-in solver in test/spectrum.test.ts, and under SAEKIT_BLAS=builtin (built-in GEMM and
 * solver through the public 'auto' path) in test/spectrum-builtin.test.ts. References are
 * independent float64 code (Jacobi rotations, a naive covariance) on fresh random inputs.
 */
import { describe, expect, it } from 'vitest';

import { powerLawFit, spectrumWith, symmetricEigenvaluesWith } from '../../lib/eval/spectrum.js';
import type { NativeEigenSolver } from '../../lib/native/index.js';
import { lcg } from './reference.js';
import { jacobiEigenvalues, naiveCovariance, randomOrthogonal, randomSymmetric, solve, withEigenvalues } from './spectrum-reference.js';

function freshSeed(salt: number): number {
  return (Date.now() ^ (salt * 7919)) >>> 0;
}

function maxAbs(v: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < v.length; i++) m = Math.max(m, Math.abs(v[i]!));
  return m;
}

export function spectrumSuite(solver: NativeEigenSolver): void {
  const eig = (a: Float64Array | Float32Array, d: number) => symmetricEigenvaluesWith(a, d, solver);

  describe(`symmetric eigenvalues (solver ${solver})`, () => {
    it('solves small and structured cases exactly', async () => {
      // [[2, 1], [1, 2]] has eigenvalues 3 and 1.
      expect(Array.from(await eig(Float64Array.of(2, 1, 1, 2), 2))).toEqual([expect.closeTo(3, 14), expect.closeTo(1, 14)]);
      expect(Array.from(await eig(Float64Array.of(-4), 1))).toEqual([-4]);
      const diag = new Float64Array(16);
      [3, -1, 3, 0].forEach((v, i) => (diag[i * 4 + i] = v));
      expect(Array.from(await eig(diag, 4))).toEqual([3, 3, 0, -1]);
      expect(Array.from(await eig(new Float64Array(9), 3))).toEqual([0, 0, 0]);
      // Only the symmetric part counts: [[1, 3], [1, 1]] -> [[1, 2], [2, 1]]: 3 and -1.
      expect(Array.from(await eig(Float32Array.of(1, 3, 1, 1), 2))).toEqual([expect.closeTo(3, 14), expect.closeTo(-1, 14)]);
    });

    for (const d of [1, 2, 7, 33, 130, 257]) {
      it(`matches a Jacobi reference to 1e-9 of the largest, d = ${d} (fresh random matrix)`, async () => {
        const seed = freshSeed(d);
        const a = randomSymmetric(d, lcg(seed));
        const ev = await eig(a, d);
        const ref = jacobiEigenvalues(a, d);
        const scale = maxAbs(ref);
        let worst = 0;
        for (let i = 0; i < d; i++) worst = Math.max(worst, Math.abs(ev[i] - ref[i]));
        expect(worst / scale, `seed ${seed}`).toBeLessThan(1e-9);
        for (let i = 1; i < d; i++) expect(ev[i]).toBeLessThanOrEqual(ev[i - 1]);
        // Trace and Frobenius norm are invariants: sums of d eigenvalues to ~d eps ||A||.
        let trace = 0;
        let frob = 0;
        for (let i = 0; i < d; i++) trace += a[i * d + i];
        for (const v of a) frob += v * v;
        expect(Math.abs(ev.reduce((s, v) => s + v, 0) - trace), `seed ${seed}`).toBeLessThan(1e-11 * d * Math.sqrt(frob));
        expect(Math.abs(ev.reduce((s, v) => s + v * v, 0) - frob), `seed ${seed}`).toBeLessThan(1e-11 * d * frob);
      });
    }

    it('each eigenvalue has an eigenvector: inverse iteration next to it gives ||A v - lambda v|| ~ 0', async () => {
      const d = 61;
      const seed = freshSeed(61);
      const a = randomSymmetric(d, lcg(seed));
      const ev = await eig(a, d);
      const scale = maxAbs(ev);
      for (let e = 0; e < d; e += 6) {
        const lambda = ev[e];
        const m = Float64Array.from(a);
        for (let i = 0; i < d; i++) m[i * d + i] -= lambda + 1e-9 * scale;
        let v: Float64Array = Float64Array.from({ length: d }, (_, i) => 1 + ((i * 7919) % 13) / 13);
        for (let it = 0; it < 3; it++) {
          v = solve(m, v, d);
          const nv = Math.sqrt(v.reduce((s, x) => s + x * x, 0));
          v = v.map((x) => x / nv);
        }
        let res = 0;
        for (let i = 0; i < d; i++) {
          let av = 0;
          for (let j = 0; j < d; j++) av += a[i * d + j] * v[j];
          res += (av - lambda * v[i]) ** 2;
        }
        expect(Math.sqrt(res), `seed ${seed}, eigenvalue ${e}`).toBeLessThan(1e-8 * scale);
      }
    });

    it('repeated eigenvalues and a rank-deficient matrix (clusters, exact zeros)', async () => {
      const seed = freshSeed(99);
      const next = lcg(seed);
      const d = 71;
      // 5 (x 12), 2 (x 30), -1.5 (x 9), 0 (x 20): Q^T diag Q for a random orthogonal Q.
      const lambda = [...Array(12).fill(5), ...Array(30).fill(2), ...Array(9).fill(-1.5), ...Array(20).fill(0)] as number[];
      const a = withEigenvalues(lambda, randomOrthogonal(d, next));
      const ev = await eig(a, d);
      const want = [...lambda].sort((x, y) => y - x);
      for (let i = 0; i < d; i++) expect(Math.abs(ev[i] - want[i]), `seed ${seed}, rank ${i + 1}`).toBeLessThan(1e-9 * 5);
      // B B^T for B [d, 5]: rank 5, the other d - 5 eigenvalues are 0 to rounding.
      const r = 5;
      const b = Float64Array.from({ length: d * r }, () => next() - 0.5);
      const g = new Float64Array(d * d);
      for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) for (let k = 0; k < r; k++) g[i * d + j] += b[i * r + k] * b[j * r + k];
      const gev = await eig(g, d);
      const ref = jacobiEigenvalues(g, d);
      for (let i = 0; i < d; i++) expect(Math.abs(gev[i] - ref[i]), `seed ${seed}`).toBeLessThan(1e-9 * ref[0]);
      for (let i = r; i < d; i++) expect(Math.abs(gev[i])).toBeLessThan(1e-12 * ref[0]);
    });

    it('takes no harm from a huge or tiny scale', async () => {
      const a = randomSymmetric(20, lcg(freshSeed(20)));
      const ev = await eig(a, 20);
      for (const s of [2 ** 600, 2 ** -600]) {
        const big = await eig(a.map((v) => v * s), 20);
        for (let i = 0; i < 20; i++) expect(Math.abs(big[i] / s - ev[i])).toBeLessThan(1e-12 * maxAbs(ev));
      }
    });

    it('a nearly repeated cluster is resolved, not deflated early: 1 + 2 e cos(k pi / (d + 1)) for tridiag(e, 1, e), e = 1e-12', async () => {
      // Off-diagonals far below the diagonal but far above its rounding: the QL deflation test is
      // |e| <= eps (|d_m| + |d_m+1|), so these must split the cluster (a looser test returned d ones).
      for (const d of [2, 5]) {
        const e = 1e-12;
        const a = new Float64Array(d * d);
        for (let i = 0; i < d; i++) {
          a[i * d + i] = 1;
          if (i > 0) a[i * d + i - 1] = a[(i - 1) * d + i] = e;
        }
        const ev = await eig(a, d);
        const want = Array.from({ length: d }, (_, k) => 1 + 2 * e * Math.cos(((k + 1) * Math.PI) / (d + 1)));
        for (let k = 0; k < d; k++) expect(Math.abs(ev[k] - want[k]), `d ${d}, rank ${k + 1}`).toBeLessThan(1e-14);
      }
    });

    it('diagonal matrices with repeated zeros (adjacent zero pivots and a zero off-diagonal: nothing to iterate), and rank one u u^T', async () => {
      for (const dg of [[0, 0, 1], [0, 0, 0, 2, 0], [-3, 0, 0, 0, 0, 0, 5]]) {
        const d = dg.length;
        const a = new Float64Array(d * d);
        dg.forEach((v, i) => (a[i * d + i] = v));
        expect(Array.from(await eig(a, d)), dg.join()).toEqual([...dg].sort((x, y) => y - x));
      }
      // u u^T: ||u||^2 once, then zeros to rounding (odd sizes).
      for (const d of [5, 9, 35]) {
        const next = lcg(d);
        const u = Float64Array.from({ length: d }, () => 2 * next() - 1);
        const a = new Float64Array(d * d);
        for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) a[i * d + j] = u[i]! * u[j]!;
        const norm2 = u.reduce((s, x) => s + x * x, 0);
        const ev = await eig(a, d);
        expect(Math.abs(ev[0] - norm2), `d ${d}`).toBeLessThan(1e-13 * norm2);
        for (let i = 1; i < d; i++) expect(Math.abs(ev[i]), `d ${d}, rank ${i + 1}`).toBeLessThan(1e-14 * norm2);
      }
    });

    it('a reflector whose pivot dwarfs the rest of its row (sigma below eps alpha^2) keeps full accuracy', async () => {
      // Row 2 is [t, 1, 3] with t^2 < eps: the Householder beta must take the sign opposite alpha
      // (alpha - beta would cancel to 0 otherwise). Odd sizes, against the Jacobi reference.
      for (const [d, t] of [[3, 1e-9], [5, 3e-9], [7, -2e-9]] as const) {
        const a = randomSymmetric(d, lcg(d * 31));
        a[(d - 1) * d + d - 2] = a[(d - 2) * d + d - 1] = 1;
        for (let k = 0; k < d - 2; k++) a[(d - 1) * d + k] = a[k * d + d - 1] = k === 0 ? t : 0;
        const ev = await eig(a, d);
        const ref = jacobiEigenvalues(a, d);
        for (let k = 0; k < d; k++) expect(Math.abs(ev[k] - ref[k]), `d ${d}, rank ${k + 1}`).toBeLessThan(1e-13);
      }
    });

    it('rejects bad input with named errors', async () => {
      await expect(eig(new Float64Array(5), 2)).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE', message: expect.stringMatching(/matrix of length d \* d = 4/) });
      await expect(eig(Float64Array.of(1, 2, Number.NaN, 4), 2)).rejects.toMatchObject({ code: 'ERR_SAEKIT_NONFINITE', message: 'matrix[2] is NaN: expected finite values' });
      await expect(eig(Float64Array.of(1, Infinity, 1, 1), 2)).rejects.toMatchObject({ code: 'ERR_SAEKIT_NONFINITE', message: 'matrix[1] is Infinity: expected finite values' });
      await expect(eig([1] as unknown as Float64Array, 1)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/for matrix/) });
      await expect(eig(new Float64Array(1), 0)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/integer between 1 and 65536 for d/) });
    });
  });

  describe(`spectrum (solver ${solver})`, () => {
    for (const [n, d] of [
      [300, 24],
      [2, 1],
      [5, 2],
      [129, 33],
      [1000, 130],
    ] as const) {
      it(`matches a naive float64 covariance and Jacobi eigenvalues, n = ${n}, d = ${d}`, async () => {
        const seed = freshSeed(n * 1000 + d);
        const next = lcg(seed);
        const w = Float32Array.from({ length: n * d }, (_, i) => next() * 2 - 1 + (i % d) * 0.3); // non-zero column means
        const { eigenvalues, alpha, fitRanks } = await spectrumWith(w, n, d, solver);
        const ref = jacobiEigenvalues(naiveCovariance(w, n, d), d);
        // float32 centred rows and float32 GEMM over n rows: relative error ~ 1e-6 of the largest.
        ref.forEach((v, i) => expect(Math.abs(eigenvalues[i] - v), `seed ${seed}`).toBeLessThan(1e-5 * ref[0]));
        const top = Math.min(150, d, n - 1);
        if (top >= 12) {
          expect(fitRanks).toEqual([11, top]);
          expect(Math.abs(alpha - powerLawFit(Float64Array.from(ref)).alpha), `seed ${seed}`).toBeLessThan(1e-3);
        } else {
          expect(fitRanks).toEqual([0, 0]);
          expect(alpha).toBeNaN();
        }
      });
    }

    it('recovers alpha of a synthetic decoder with covariance eigenvalues r^-alpha', async () => {
      const d = 200;
      const n = 2 * d;
      for (const [trueAlpha, seed] of [
        [0.7, 5],
        [0.3, 6],
      ] as const) {
        const next = lcg(seed);
        const q = randomOrthogonal(d, next);
        const offset = Float64Array.from({ length: d }, () => next() - 0.5);
        // Rows +-s sqrt(lambda_r) q_r (+ a common offset): the mean is the offset and the
        // covariance is exactly sum_r lambda_r q_r q_r^T when 2 s^2 = n - 1.
        const s = Math.sqrt((n - 1) / 2);
        const w = new Float32Array(n * d);
        for (let r = 0; r < d; r++) {
          const amp = s * Math.sqrt((r + 1) ** -trueAlpha);
          for (let c = 0; c < d; c++) {
            w[2 * r * d + c] = offset[c] + amp * q[r * d + c];
            w[(2 * r + 1) * d + c] = offset[c] - amp * q[r * d + c];
          }
        }
        const { eigenvalues, alpha, fitRanks } = await spectrumWith(w, n, d, solver);
        expect(fitRanks).toEqual([11, 150]);
        // float32 inputs (relative 6e-8 each) and GEMM: eigenvalues within ~1e-5 of lambda_1 = 1,
        // i.e. < 1e-3 relative at rank 150 (lambda = 150^-0.7 = 0.03); alpha then to ~1e-4.
        for (let r = 1; r <= 150; r++) expect(Math.abs(eigenvalues[r - 1] - r ** -trueAlpha)).toBeLessThan(2e-5);
        expect(Math.abs(alpha - trueAlpha)).toBeLessThan(5e-4);
      }
    });

    it('a rank-deficient covariance (n - 1 < d) is fitted over its real ranks, not float32 noise', async () => {
      // 97 latents in 211 dimensions: rank 96; float32 rounding leaves eigenvalues ~1e-7 beyond it.
      const [n, d] = [97, 211];
      const seed = freshSeed(97);
      const next = lcg(seed);
      const w = Float32Array.from({ length: n * d }, () => next() * 2 - 1);
      const { eigenvalues, alpha, fitRanks } = await spectrumWith(w, n, d, solver);
      expect(fitRanks).toEqual([11, 96]);
      const ref = jacobiEigenvalues(naiveCovariance(w, n, d), d);
      for (let i = 0; i < d; i++) expect(Math.abs(eigenvalues[i] - ref[i]), `seed ${seed}`).toBeLessThan(1e-5 * ref[0]);
      const want = powerLawFit(Float64Array.from(ref.slice(0, 96))).alpha;
      expect(Math.abs(alpha - want), `seed ${seed}`).toBeLessThan(1e-3);
      expect(eigenvalues[100]!).toBeLessThan(eigenvalues[0]! * d * 2 ** -24); // what the floor removes
    });

    it('the fit range ends at the first eigenvalue at or below d 2^-24 times the largest (exact diagonal covariances)', async () => {
      // Rows +-a_r e_r (pairs, so the column means are 0): the covariance is diagonal with entries
      // 2 a_r^2 / (n - 1), computed exactly up to float32 rounding of a_r and its square. Ranks
      // 1..12 follow r^-0.5; ranks 13..64 sit at 8 x 2^-24 (between 2^-24 and the floor d 2^-24 =
      // 2^-18: excluded) or at 2^-17 (above the floor: fitted up to d = 64).
      const d = 64;
      const n = 2 * d;
      for (const [tail, want] of [
        [2 ** -21, [11, 12]],
        [2 ** -17, [11, 64]],
      ] as const) {
        const lambda = Array.from({ length: d }, (_, r) => (r < 12 ? (r + 1) ** -0.5 : tail * (1 - r / 1024)));
        const w = new Float32Array(n * d);
        lambda.forEach((l, r) => {
          const a = Math.sqrt((l * (n - 1)) / 2);
          w[2 * r * d + r] = a;
          w[(2 * r + 1) * d + r] = -a;
        });
        const { eigenvalues, fitRanks } = await spectrumWith(w, n, d, solver);
        for (let r = 0; r < d; r++) expect(Math.abs(eigenvalues[r]! - lambda[r]!), `tail ${tail}, rank ${r + 1}`).toBeLessThan(1e-6 * lambda[r]!);
        expect(fitRanks, `tail ${tail}`).toEqual(want);
      }
    });

    it('validates its arguments', async () => {
      await expect(spectrumWith(new Float32Array(10), 3, 3, solver)).rejects.toMatchObject({ code: 'ERR_SAEKIT_SHAPE' });
      await expect(spectrumWith(new Float32Array(3), 1, 3, solver)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG' });
      await expect(spectrumWith([1, 2] as unknown as Float32Array, 1, 2, solver)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG' });
      const w = new Float32Array(12);
      w[7] = Number.NEGATIVE_INFINITY;
      await expect(spectrumWith(w, 4, 3, solver)).rejects.toMatchObject({ code: 'ERR_SAEKIT_NONFINITE', message: 'W_dec[7] is -Infinity: expected finite values' });
    });
  });
}
