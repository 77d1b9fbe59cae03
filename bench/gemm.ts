/**
 * gemm: saekit's ops.matmul (async: validate, queue, allocate the result, run, settle) against
 * the same BLAS called directly and synchronously on the same buffers, same shapes, same run.
 * `out=` is ops.matmul writing into an existing tensor (no allocation and page faults).
 * Also the built-in GEMM against the BLAS, the floor it falls back from. The variants alternate
 * round by round, and each ratio is the median of its per-round ratios.
 */
import { backend, ops, tensor } from '../lib/index.js';
import { native } from '../lib/native/index.js';
import { type Benchmark, lcgArray, roundRatio, type Row, timeInterleaved } from './harness.js';

const SHAPES: [number, number, number][] = [
  [512, 512, 512],
  [1024, 1024, 1024],
  [2048, 2048, 2048],
  // An SAE encoder tile: 4096 tokens x d_in 768 times W_enc [768, 8192]
  [4096, 8192, 768],
];


export const gemm: Benchmark = {
  name: 'gemm',
  description: 'ops.matmul vs the BLAS called directly (and the built-in GEMM vs the BLAS)',
  async run(opts) {
    const info = backend.info();
    const rows: Row[] = [];
    const shapes = opts.quick ? SHAPES.slice(0, 2) : SHAPES;
    for (const [M, N, K] of shapes) {
      const flops = 2 * M * N * K;
      const A = lcgArray(M * K, 1);
      const B = lcgArray(K * N, 2);
      const C = new Float32Array(M * N);
      const reps = { repeats: opts.repeats, warmup: opts.warmup };
      using a = tensor(A, [M, K]);
      using b = tensor(B, [K, N]);
      using out = tensor(new Float32Array(M * N), [M, N]);
      // All variants alternate round by round; each ratio is the median of its per-round ratios.
      const t = await timeInterleaved(
        {
          matmul: async () => (await ops.matmul(a, b)).dispose(),
          out: () => ops.matmul(a, b, { out }),
          builtin: () => native()._gemmDirect('builtin', false, false, M, N, K, A, B, C),
          ...(info.blas.linked ? { blas: () => native()._gemmDirect('blas', false, false, M, N, K, A, B, C) } : {}),
        } as Record<'matmul' | 'out' | 'builtin' | 'blas', () => unknown>,
        reps,
      );
      const row: Row = { shape: `${M}x${N}x${K}` };
      if (info.blas.linked) {
        row['blas GF/s'] = flops / t.blas.median / 1e9;
        row['matmul GF/s'] = flops / t.matmul.median / 1e9;
        row['matmul/blas'] = roundRatio(t.blas, t.matmul);
        row['out=/blas'] = roundRatio(t.blas, t.out);
        row['builtin GF/s'] = flops / t.builtin.median / 1e9;
        row['builtin/blas'] = roundRatio(t.blas, t.builtin);
        row['spread %'] = 100 * Math.max(t.matmul.spread, t.blas.spread, t.builtin.spread);
      } else {
        row['builtin GF/s'] = flops / t.builtin.median / 1e9;
        row['matmul GF/s'] = flops / t.matmul.median / 1e9;
        row['matmul/builtin'] = roundRatio(t.builtin, t.matmul);
        row['out=/builtin'] = roundRatio(t.builtin, t.out);
        row['spread %'] = 100 * Math.max(t.matmul.spread, t.builtin.spread);
      }
      rows.push(row);
    }
    return {
      rows,
      meta: { threads: info.threads, simd: info.simd, blas: info.blas, note: 'ratios > 1 mean faster than the reference' },
    };
  },
};
