/**
 * topk-step: one full TopK SAE training step (encode, decode, sparse backward, fused Adam) against
 * its floor, one float32 GEMM of the encoder shape ([batch, dIn] x [dIn, numLatents]) through the
 * same GEMM, measured in the same run. Target: step / GEMM <= 1.3.
 * 'step RSS MiB' is the memory the SAE, its Adam state, the two batches and the steps take: the
 * peak RSS (the kernel's high-water mark, reset first) over the warm-up steps less the RSS before
 * the SAE was made; the floor's buffers (the GEMM's output alone is batch x numLatents floats) are
 * allocated once, for the largest shape, and first touched after it.
 */
import { readFileSync, writeFileSync } from 'node:fs';

import { backend, SparseAutoencoder } from '../lib/index.js';
import { native } from '../lib/native/index.js';
import { type Benchmark, lcgArray, median, type Row } from './harness.js';

interface Shape {
  dIn: number;
  numLatents: number;
  k: number;
  batch: number;
  /** deadThresholdTokens for the steps; default batch * 8 (no dead latents with this data). 0 forces AuxK on. */
  deadThreshold?: number;
  /** The AuxK loss (default 'sparsify'). */
  auxkVariant?: 'sparsify' | 'paper';
}

const SHAPES: Shape[] = [
  { dIn: 768, numLatents: 24576, k: 32, batch: 4096 },
  { dIn: 768, numLatents: 24576, k: 32, batch: 4096, deadThreshold: 0 },
  { dIn: 768, numLatents: 24576, k: 32, batch: 4096, deadThreshold: 0, auxkVariant: 'paper' },
  { dIn: 2048, numLatents: 65536, k: 64, batch: 2048 },
];
const FIRST_ONLY: Shape[] = [
  { dIn: 768, numLatents: 24576, k: 32, batch: 4096 },
];
const QUICK: Shape[] = [{ dIn: 256, numLatents: 4096, k: 32, batch: 1024 }];


/** Resets the kernel's peak RSS (VmHWM) to the current RSS (Linux 4.0+); false where it cannot. */
function resetPeakRss(): boolean {
  try {
    writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
}

/** The kernel's peak RSS (VmHWM) in MiB. */
function peakRssMiB(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}


export const topkStep: Benchmark = {
  name: 'topk-step',
  description: 'TopK SAE training step vs one encoder-shaped float32 GEMM through the same BLAS',
  async run(opts) {
    const info = backend.info();
    const rows: Row[] = [];
    const phases: Record<string, unknown>[] = [];
    const shapes = opts.quick ? QUICK : process.env.SAEKIT_BENCH_FIRST ? FIRST_ONLY : SHAPES;
    // The floor's buffers, once for the largest shape (a shape's are their leading parts): a
    // shape's own would still be resident, or be collected, while the next shape's steps run.
    const most = (f: (sh: Shape) => number) => Math.max(...shapes.map(f));
    const floorA = lcgArray(most((sh) => sh.batch * sh.dIn), 1);
    const floorB = lcgArray(most((sh) => sh.numLatents * sh.dIn), 2);
    const floorC = new Float32Array(most((sh) => sh.batch * sh.numLatents));
    for (const sh of shapes) {
      const { dIn, numLatents, k, batch } = sh;
      const impl = info.blas.name === 'builtin' ? 'builtin' : 'blas';
      // The floor: the encoder GEMM alone, same orientation as the step (W_enc rows per latent).
      const A = floorA.subarray(0, batch * dIn);
      const B = floorB.subarray(0, numLatents * dIn);
      const C = floorC.subarray(0, batch * numLatents);
      const rss0 = process.memoryUsage.rss() / 2 ** 20;
      const reset = resetPeakRss();
      using sae = SparseAutoencoder.create({ dIn, numLatents, k, seed: 1 });
      using opt = sae.adam();
      const xs = [lcgArray(batch * dIn, 3), lcgArray(batch * dIn, 4)];
      const per: { gemm: number; select: number; decode: number; backward: number; update: number }[] = [];
      let i = 0;
      // With this threshold (8 batches) and this data no latent goes dead within the steps timed
      // (the 'dead' column says 0), so these rows time no AuxK; the rows of a shape with
      // deadThreshold 0 force it on.
      const threshold = sh.deadThreshold ?? batch * 8;
      const oneGemm = () => native()._gemmDirect(impl, false, true, batch, numLatents, dIn, A, B, C);
      const oneStep = async () => {
        const r = await opt.step(xs[i++ % 2]!, { deadThresholdTokens: threshold, auxkVariant: sh.auxkVariant });
        per.push(r.seconds);
      };
      // Interleaved, so both see the same machine load (the machines are shared and noisy).
      const tg: number[] = [];
      const ts: number[] = [];
      // Warm-up: the steps first (their memory, without the floor's), then the GEMM.
      for (let w = 0; w < Math.max(1, opts.warmup); w++) await oneStep();
      const stepRssMiB = reset ? peakRssMiB() - rss0 : NaN;
      for (let w = 0; w < Math.max(1, opts.warmup); w++) oneGemm();
      per.length = 0;
      for (let r = 0; r < opts.repeats; r++) {
        let t0 = performance.now();
        oneGemm();
        tg.push((performance.now() - t0) / 1e3);
        t0 = performance.now();
        await oneStep();
        ts.push((performance.now() - t0) / 1e3);
      }
      const gemm = { median: median(tg), min: Math.min(...tg), max: Math.max(...tg) };
      const step = { median: median(ts), min: Math.min(...ts), max: Math.max(...ts) };
      const ratios = ts.map((t, r) => t / tg[r]!);
      const last = await opt.step(xs[0]!, { deadThresholdTokens: threshold, auxkVariant: sh.auxkVariant });
      const paramMiB = (3 * (2 * numLatents * dIn + numLatents + dIn) * 4) / 2 ** 20;
      const sel = median(per.map((p) => p.select));
      const bwd = median(per.map((p) => p.backward + p.update));
      rows.push({
        shape: `d${dIn} M${numLatents} k${k} N${batch}${sh.deadThreshold === 0 ? ` +AuxK${sh.auxkVariant === 'paper' ? ' (paper)' : ''}` : ''}`,
        'step ms': step.median * 1e3,
        'tok/s': batch / step.median,
        'gemm ms': gemm.median * 1e3,
        'step/gemm': step.median / gemm.median,
        'ratio (paired)': median(ratios),
        'topk ms': sel * 1e3,
        'sparse bwd ms': bwd * 1e3,
        'step RSS MiB': Number.isFinite(stepRssMiB) ? stepRssMiB : '-',
        'params+adam MiB': paramMiB,
        dead: last.numDead,
      });
      phases.push({ shape: sh, medianSeconds: Object.fromEntries(['gemm', 'select', 'decode', 'backward', 'update'].map((key) => [key, median(per.map((p) => p[key as keyof typeof p]))])), step, gemm });
    }
    return {
      rows,
      meta: {
        threads: info.threads,
        simd: info.simd,
        blas: info.blas,
        openblasCoretypeEnv: process.env.OPENBLAS_CORETYPE ?? null,
        phases,
        processPeakRssMiB: process.resourceUsage().maxRSS / 1024,
        note: 'step/gemm: the step time over one float32 GEMM of the encoder shape through the same GEMM, same run; step RSS: peak RSS over the warm-up steps less the RSS before the SAE was made (the floor buffers not included)',
      },
    };
  },
};
