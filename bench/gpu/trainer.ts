/**
 * Training steps through saekit's own API on a GPU: what a Node training loop gets, against what
 * the plugin's step alone gives (saekit_cuda_bench). Per shape, medians over the timed steps:
 *   - prefetched: the Trainer's old loop. Batch n + 1 is handed to opt.prefetch() (copied out of
 *     JS into page-locked memory on the JS thread, its upload started) while step n runs; with
 *     the JS thread's time in prefetch() per batch, which bounds the loop when it exceeds the
 *     device step;
 *   - borrowed: the same loop on page-locked batch arrays (opt._pinnedArray, what the Trainer's
 *     data pipeline fills on a device), uploaded where they lie: no copy on the JS thread;
 *   - plain: opt.step(batch) on each Float32Array (copied and uploaded inside the step);
 *   - Trainer.fit on a shuffled .npy file of 12 batches (written to the temp folder, so in the
 *     page cache): the steady-state step interval with the batches read into page-locked
 *     arrays, and with SAEKIT_TRAINER_PINNED=0 (copied by prefetch, as before).
 * Batches are distinct random arrays, cycled. Prints "TRAINER key=value ..." per shape.
 * bench/gpu/pack.sh bundles it; bench/gpu/run.sh runs it after the PyTorch comparison.
 *   SAEKIT_CUDA_PLUGIN=... node trainer.mjs [--tiny]
 *   SAEKIT_DEVICE_LOOPBACK=1 npx tsx bench/gpu/trainer.ts --tiny   (checks this script without a GPU)
 */
import { open, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { backend, openActivations, SparseAutoencoder, Trainer, type PrefetchedBatch } from '../../lib/index.js';
import { npyHeader } from '../../test/helpers/data-fixtures.js';
import { lcgArray, median } from '../harness.js';

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


const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;

async function runShape(sh: Shape): Promise<void> {
  const { dIn, numLatents, k, batch, steps } = sh;
  const batches = [0, 1, 2].map((i) => lcgArray(batch * dIn, 101 + i));
  using sae = SparseAutoencoder.create({ dIn, numLatents, k, device: 'cuda', precision: 'bf16', seed: 1 });
  const opt = sae.adam({ lr: 1e-4 });
  try {
    const warm = 3;
    // The Trainer's loop: batch n + 1 prefetched (by `prefetch`) while step n runs. Per step:
    // the wall time and the JS thread's time in prefetch, after `warm` steps.
    const loop = async (prefetch: (i: number) => PrefetchedBatch): Promise<{ wall: number[]; js: number[] }> => {
      const wall: number[] = [];
      const js: number[] = [];
      let t = process.hrtime.bigint();
      let next = prefetch(0);
      for (let i = 0; i < warm + steps; i++) {
        const step = opt.step(next);
        const c0 = process.hrtime.bigint();
        next = prefetch(i + 1);
        const c = ms(c0);
        await step;
        const w = ms(t);
        t = process.hrtime.bigint();
        if (i >= warm) {
          wall.push(w);
          js.push(c);
        }
      }
      next.dispose();
      return { wall, js };
    };
    const copied = await loop((i) => opt.prefetch(batches[i % batches.length]!));
    // Plain arrays.
    const plain: number[] = [];
    for (let i = 0; i < warm + Math.ceil(steps / 2); i++) {
      const t0 = process.hrtime.bigint();
      await opt.step(batches[i % batches.length]!);
      if (i >= warm) plain.push(ms(t0));
    }
    // Borrowed: three page-locked arrays holding the batches, prefetched without a copy.
    const pinned = batches.map((b) => {
      const a = opt._pinnedArray(b.length);
      a?.set(b);
      return a;
    });
    const borrowed = pinned.every((a) => a !== undefined) ? await loop((i) => opt._prefetchBorrowed(pinned[i % pinned.length]!)) : { wall: [NaN], js: [NaN] };
    const fitPinned = await fitRate(sh, batches[0]!, '1');
    const fitCopied = await fitRate(sh, batches[0]!, '0');
    const wp = median(copied.wall);
    const wa = median(plain);
    const wb = median(borrowed.wall);
    console.log(
      `TRAINER impl=saekit-api dIn=${dIn} numLatents=${numLatents} k=${k} batch=${batch} precision=bf16 ` +
        `step_prefetched_ms=${wp.toFixed(3)} tokens_per_s_prefetched=${Math.round((batch * 1000) / wp)} ` +
        `prefetch_js_ms=${median(copied.js).toFixed(3)} step_plain_ms=${wa.toFixed(3)} tokens_per_s_plain=${Math.round((batch * 1000) / wa)} ` +
        `batch_MiB=${((batch * dIn * 4) / 2 ** 20).toFixed(0)} step_borrowed_ms=${wb.toFixed(3)} ` +
        `tokens_per_s_borrowed=${Math.round((batch * 1000) / wb)} prefetch_borrowed_js_ms=${median(borrowed.js).toFixed(3)} ` +
        `fit_step_ms=${fitPinned.toFixed(3)} fit_tokens_per_s=${Math.round((batch * 1000) / fitPinned)} ` +
        `fit_copied_step_ms=${fitCopied.toFixed(3)} fit_copied_tokens_per_s=${Math.round((batch * 1000) / fitCopied)}`,
    );
  } finally {
    opt.dispose();
  }
}

/**
 * Trainer.fit over a shuffled .npy file of 12 batches (`rows` repeated), with
 * SAEKIT_TRAINER_PINNED set to `pinned`: the median interval between steps after the first four,
 * in ms.
 */
async function fitRate(sh: Shape, rows: Float32Array, pinned: '0' | '1'): Promise<number> {
  const { dIn, numLatents, k, batch } = sh;
  const nb = 12;
  const file = path.join(os.tmpdir(), `saekit-trainer-bench-${process.pid}-${dIn}.npy`);
  const fh = await open(file, 'w');
  try {
    await fh.write(npyHeader('float32', [nb * batch, dIn]));
    const bytes = new Uint8Array(rows.buffer, rows.byteOffset, rows.byteLength);
    for (let i = 0; i < nb; i++) await fh.write(bytes);
  } finally {
    await fh.close();
  }
  const before = process.env.SAEKIT_TRAINER_PINNED;
  process.env.SAEKIT_TRAINER_PINNED = pinned;
  try {
    using sae = SparseAutoencoder.create({ dIn, numLatents, k, device: 'cuda', precision: 'bf16', seed: 1 });
    const trainer = new Trainer(sae, { batchSize: batch, epochs: 1, shuffle: true, bDecInit: 'zeros', lr: 1e-4, device: 'cuda' });
    const src = await openActivations(file);
    const times: number[] = [];
    try {
      await trainer.fit(src, { onStep: () => void times.push(performance.now()) });
    } finally {
      await src.close();
    }
    const gaps = times.slice(4).map((x, i) => x - times[i + 3]!);
    return gaps.length ? median(gaps) : NaN;
  } finally {
    if (before === undefined) delete process.env.SAEKIT_TRAINER_PINNED;
    else process.env.SAEKIT_TRAINER_PINNED = before;
    await rm(file, { force: true });
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
