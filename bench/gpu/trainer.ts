/**
 * Training steps through saekit's own API on a GPU: what a Node training loop gets, against what
 * the plugin's step alone gives (saekit_cuda_bench). Per shape, medians over the timed steps:
 *   - prefetched: the Trainer's loop. Batch n + 1 is handed to opt.prefetch() (copied out of JS
 *     into page-locked memory on the JS thread, its upload started) while step n runs;
 *   - plain: opt.step(batch) on each Float32Array (copied and uploaded inside the step);
 *   - the JS thread's time in prefetch() per batch, which bounds the prefetched loop when it
 *     exceeds the device step.
 * Batches are distinct random arrays, cycled. Prints "TRAINER key=value ..." per shape.
 * bench/gpu/pack.sh bundles it; bench/gpu/run.sh runs it after the parity suite.
 *   SAEKIT_CUDA_PLUGIN=... node trainer.mjs [--tiny]
 *   SAEKIT_DEVICE_LOOPBACK=1 npx tsx bench/gpu/trainer.ts --tiny   (checks this script without a GPU)
 */
import { backend, SparseAutoencoder } from '../../lib/index.js';
import { lcgArray } from '../harness.js';

interface Shape {
  dIn: number;
  numLatents: number;
  k: number;
  batch: number;
  steps: number;
}

const tiny = process.argv.includes('--tiny');
const SHAPES: Shape[] = tiny
  ? [{ dIn: 64, numLatents: 256, k: 8, batch: 128, steps: 3 }]
  : [
      { dIn: 768, numLatents: 24576, k: 32, batch: 8192, steps: 40 },
      { dIn: 4096, numLatents: 65536, k: 64, batch: 8192, steps: 12 },
    ];

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;

async function runShape(sh: Shape): Promise<void> {
  const { dIn, numLatents, k, batch, steps } = sh;
  const batches = [0, 1, 2].map((i) => lcgArray(batch * dIn, 101 + i));
  using sae = SparseAutoencoder.create({ dIn, numLatents, k, device: 'cuda', precision: 'bf16', seed: 1 });
  const opt = sae.adam({ lr: 1e-4 });
  try {
    const warm = 3;
    // Prefetched: the Trainer's loop.
    const wall: number[] = [];
    const copy: number[] = [];
    let t = process.hrtime.bigint();
    let next = opt.prefetch(batches[0]!);
    for (let i = 0; i < warm + steps; i++) {
      const cur = next;
      const step = opt.step(cur);
      const c0 = process.hrtime.bigint();
      next = opt.prefetch(batches[(i + 1) % batches.length]!);
      const c = ms(c0);
      await step;
      const w = ms(t);
      t = process.hrtime.bigint();
      if (i >= warm) {
        wall.push(w);
        copy.push(c);
      }
    }
    next.dispose();
    // Plain arrays.
    const plain: number[] = [];
    for (let i = 0; i < warm + Math.ceil(steps / 2); i++) {
      const t0 = process.hrtime.bigint();
      await opt.step(batches[i % batches.length]!);
      if (i >= warm) plain.push(ms(t0));
    }
    const wp = median(wall);
    const wa = median(plain);
    console.log(
      `TRAINER impl=saekit-api dIn=${dIn} numLatents=${numLatents} k=${k} batch=${batch} precision=bf16 ` +
        `step_prefetched_ms=${wp.toFixed(3)} tokens_per_s_prefetched=${Math.round((batch * 1000) / wp)} ` +
        `prefetch_js_ms=${median(copy).toFixed(3)} step_plain_ms=${wa.toFixed(3)} tokens_per_s_plain=${Math.round((batch * 1000) / wa)} ` +
        `batch_MiB=${((batch * dIn * 4) / 2 ** 20).toFixed(0)}`,
    );
  } finally {
    opt.dispose();
  }
}

const { cuda } = backend.info();
if (!cuda.available) {
  console.log(`FAIL no usable CUDA device: ${cuda.reason}`);
  process.exitCode = 1;
} else {
  console.log(`devices: ${cuda.devices.join('; ')}${cuda.loopback ? ' (loopback)' : ''}`);
  for (const sh of SHAPES) await runShape(sh);
}
