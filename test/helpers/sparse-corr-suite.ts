/**
 * The sparse-code correlation on a device (native/core/corr_device.h) against the CPU kernel
 * (native/cpu/sparse_corr.cpp), on fresh random codes of odd sizes with zeros, dead and constant
 * features and exact ties (B features that copy another's codes, so their r are bit-equal): the
 * full matrix, top lists and reverse lists must be identical, bit for bit (the device sums in the
 * CPU's order and rounds the same way). Run on the loopback (test/device-loopback.test.ts) and on
 * the CUDA plugin (test/cuda.test.ts, also on its CPU emulation in CI).
 */
import { expect, it } from 'vitest';

import { features, fromArray, SparseAutoencoder } from '../../lib/index.js';
import { native } from '../../lib/native/index.js';
import { lcg, randomMatrix } from './reference.js';

export interface SparseCodes {
  values: Float32Array;
  indices: Int32Array;
  k: number;
}

/**
 * Random codes [rows, k] over n latents: distinct indices per row, ~10% zero values, skewed
 * frequencies, latent n - 1 dead, latent n - 2 active on every token with the same value
 * (constant), and latent 1 a copy of latent 0 wherever 0 is active (ties).
 */
export function randomSparseCodes(rows: number, k: number, n: number, next: () => number): SparseCodes {
  const values = new Float32Array(rows * k);
  const indices = new Int32Array(rows * k);
  for (let t = 0; t < rows; t++) {
    const used = new Set<number>([n - 2]);
    indices[t * k] = n - 2;
    values[t * k] = 1.5;
    for (let p = 1; p < k; p++) {
      let j: number;
      do j = Math.floor((n - 3) * next() ** 2);
      while (used.has(j) || j === 1 || (j === 0 && p === k - 1));
      used.add(j);
      indices[t * k + p] = j;
      values[t * k + p] = next() < 0.1 ? 0 : Math.fround(0.1 + 3 * next());
      // The copy: latent 1 takes latent 0's value on the same token.
      if (j === 0) {
        p++;
        indices[t * k + p] = 1;
        values[t * k + p] = values[t * k + p - 1]!;
      }
    }
  }
  return { values, indices, k };
}

/** Runs the native sparse correlation of the codes (appended in batches of `batch` rows) on `device`. */
export async function runSparseCorr(ca: SparseCodes, cb: SparseCodes, rows: number, nA: number, nB: number, batch: number, full: boolean, top: number, reverse: boolean, device?: string, scale?: number) {
  const b = native();
  const store = b.sparseCorrCreate(nA, nB, 0, 0, 0);
  for (let t0 = 0; t0 < rows; t0 += batch) {
    const t1 = Math.min(rows, t0 + batch);
    b.sparseCorrAppend(store, ca.values.subarray(t0 * ca.k, t1 * ca.k), ca.indices.subarray(t0 * ca.k, t1 * ca.k), cb.values.subarray(t0 * cb.k, t1 * cb.k), cb.indices.subarray(t0 * cb.k, t1 * cb.k), t1 - t0);
  }
  return b.sparseCorrRun(store, full, top, reverse, device, scale);
}

/**
 * Registers the device-vs-CPU checks for `device` ('cuda:0'); `seed` varies the codes (a fresh
 * seed per run on a GPU: the result must be identical whatever the codes).
 */
export function sparseCorrDeviceSuite(device: 'cuda:0', seed = 11): void {
  const shapes = [
    { rows: 301, nA: 53, nB: 37, kA: 7, kB: 5, seed },
    { rows: 97, nA: 19, nB: 71, kA: 3, kB: 40, seed: seed + 1 },
  ];
  for (const s of shapes) {
    it(`${s.rows} tokens, ${s.nA} x ${s.nB} features (k ${s.kA}, ${s.kB}; seed ${s.seed}): full, top and reverse equal the CPU bit for bit`, async () => {
      const next = lcg(s.seed);
      const ca = randomSparseCodes(s.rows, s.kA, s.nA, next);
      const cb = randomSparseCodes(s.rows, s.kB, s.nB, next);
      // Sanity of the fixture: exact ties exist (B latents 0 and 1 correlate equally with A).
      const cpuFull = await runSparseCorr(ca, cb, s.rows, s.nA, s.nB, 64, true, 0, false);
      expect(cpuFull.constantA[s.nA - 1]).toBe(1);
      expect(cpuFull.constantA[s.nA - 2]).toBe(1);
      for (let i = 0; i < s.nA; i++) expect(cpuFull.r![i * s.nB + 1]).toBe(cpuFull.r![i * s.nB]);
      expect(cpuFull.r![2]).not.toBe(0);
      const devFull = await runSparseCorr(ca, cb, s.rows, s.nA, s.nB, 64, true, 0, false, device);
      expect(devFull).toEqual(cpuFull);
      for (const [top, reverse] of [[1, false], [3, true], [s.nA + s.nB, true]] as const) {
        const cpu = await runSparseCorr(ca, cb, s.rows, s.nA, s.nB, 50, false, top, reverse);
        const dev = await runSparseCorr(ca, cb, s.rows, s.nA, s.nB, 50, false, top, reverse, device);
        expect(dev).toEqual(cpu);
      }
      // The compat scale ((n - 1) / n for univ-feat-geom) is applied before the rounding, as on the CPU.
      const scale = (s.rows - 1) / s.rows;
      const cpuScaled = await runSparseCorr(ca, cb, s.rows, s.nA, s.nB, 64, true, 0, false, undefined, scale);
      expect(cpuScaled.r).not.toEqual(cpuFull.r);
      expect(await runSparseCorr(ca, cb, s.rows, s.nA, s.nB, 64, true, 0, false, device, scale)).toEqual(cpuScaled);
      const cpuTop = await runSparseCorr(ca, cb, s.rows, s.nA, s.nB, 50, false, 3, true, undefined, scale);
      expect(await runSparseCorr(ca, cb, s.rows, s.nA, s.nB, 50, false, 3, true, device, scale)).toEqual(cpuTop);
      // The CUDA plugin's other layouts (chunks of 5 rows; rows over 10 postings split into
      // 7-column tiles) give the same bits; the loopback ignores these variables.
      const vars = { SAEKIT_CUDA_CORR_ROWS: '5', SAEKIT_CUDA_CORR_HEAVY: '10', SAEKIT_CUDA_CORR_TILE: '7' };
      Object.assign(process.env, vars);
      try {
        expect(await runSparseCorr(ca, cb, s.rows, s.nA, s.nB, 64, true, 0, false, device)).toEqual(cpuFull);
        const cpu = await runSparseCorr(ca, cb, s.rows, s.nA, s.nB, 50, false, 3, true);
        expect(await runSparseCorr(ca, cb, s.rows, s.nA, s.nB, 50, false, 3, true, device)).toEqual(cpu);
      } finally {
        for (const k of Object.keys(vars)) delete process.env[k];
      }
    });
  }

  // The SAEs encode on the CPU (on the emulated plugin, "auto" would pick its slow CUDA encoder).
  it("features.correlation of an SAE's codes with options.device equals the CPU's result", async () => {
    const dIn = 11;
    const src = fromArray(randomMatrix(333, dIn, lcg(seed + 2)), dIn);
    using sa = SparseAutoencoder.create({ dIn, numLatents: 41, k: 6, seed: seed + 3, device: 'cpu' });
    using sb = SparseAutoencoder.create({ dIn, numLatents: 23, k: 4, seed: seed + 4, device: 'cpu' });
    for (const opts of [{ batchSize: 100 }, { batchSize: 64, output: 'top' as const, top: 4, reverse: true }, { batchSize: 64, output: 'top' as const, top: 3, compat: 'univ-feat-geom' as const }]) {
      const cpu = await features.correlation({ sae: sa, source: src }, { sae: sb }, opts);
      const dev = await features.correlation({ sae: sa, source: src }, { sae: sb }, { ...opts, device });
      expect(dev).toEqual(cpu);
    }
  });
}
