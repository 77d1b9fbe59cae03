/**
 * test/cuda.test.ts (the CUDA-vs-CPU tests: tensors, random fills, GEMM, conversions, the SAE
 * ops and Adam, the Trainer, correlation) runnable where there is no node_modules: the GPU
 * machine. bench/gpu/pack.sh bundles this file with esbuild, with 'vitest' aliased to
 * bench/gpu/mini-vitest.ts, and carries it with a Node binary and the addon; bench/gpu/run.sh
 * runs it. One line per test; the exit code is 1 if a test failed or no CUDA device is usable.
 *   SAEKIT_CUDA_PLUGIN=... node parity.mjs
 *   SAEKIT_DEVICE_LOOPBACK=1 node parity.mjs --loopback     (checks this runner without a GPU)
 */
import { run } from './mini-vitest.js';
import { backend } from '../../lib/index.js';
import '../../test/cuda.test.js';

const { cuda } = backend.info();
if (!cuda.available || (cuda.loopback && !process.argv.includes('--loopback'))) {
  console.log(`FAIL no usable CUDA device: ${cuda.reason || 'loopback only'}`);
  for (const a of cuda.attempts) console.log(`  ${a.path}: ${a.outcome}`);
  process.exitCode = 1;
} else {
  console.log(`devices: ${cuda.devices.join('; ')}`);
  if ((await run()) > 0) process.exitCode = 1;
}
