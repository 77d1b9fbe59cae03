/**
 * correlate: throughput of the native sparse code correlation (features.correlation, kind
 * 'codes') for two TopK SAEs (numLatents 24576, k 32, dIn 768) over 10^6 tokens, codes given
 * (encoding not counted), against the dense GEMM formulation of the same cross-moment; and the
 * exact linear assignment (native) for n = 2048, 4096, 8192 on random dense costs.
 *
 * Encoding 10^6 tokens with two 768 x 24576 encoders would take far longer than the correlation
 * itself on a small CPU, so the codes of a pool of distinct synthetic tokens are encoded once and
 * the 10^6-token stream draws its rows from the pool (seeded, with replacement). The kernel's work
 * (postings x kB scatter-adds, and the nA x nB finish) is the same as for distinct tokens; only the
 * correlations themselves are not those of real data.
 *
 * The dense formulation, D_A^T D_B over dense [T, 24576] code matrices (one float32 GEMM), is
 * timed on a slice of tokens and a column block of B and scaled linearly to the full size.
 */
import os from 'node:os';

import { linearAssignment, linearAssignmentAsync } from '../lib/eval/assignment.js';
import { SparseAutoencoder, tensor } from '../lib/index.js';
import { native } from '../lib/native/index.js';
import { matmul } from '../lib/tensor/ops.js';
import { type Benchmark, lcgArray, type Row } from './harness.js';

function lcg(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
}

export const correlate: Benchmark = {
  name: 'correlate',
  description: 'sparse code correlation tokens/s vs dense GEMM (24576 x 24576, k 32, 10^6 tokens); exact LAP 2048-8192',
  async run(opts) {
    const q = opts.quick;
    const [dIn, L, k, T, pool, batch] = q ? [128, 4096, 16, 50_000, 2048, 4096] : [768, 24576, 32, 1_000_000, 16384, 4096];
    const top = 5;
    const rows: Row[] = [];
    const b = native();

    // Codes of the pool (not timed).
    using A = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 11 });
    using B = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: 12 });
    const x = lcgArray(pool * dIn, 3);
    const t0 = performance.now();
    const ca = await A.encode(x);
    const cb = await B.encode(x);
    const encodeS = (performance.now() - t0) / 1e3;
    process.stderr.write(`encoded a pool of ${pool} tokens with both SAEs in ${encodeS.toFixed(1)} s (not counted)\n`);
    // The token stream: pool rows drawn with a seeded generator, gathered batch by batch.
    const next = lcg(5);
    const order = Int32Array.from({ length: T }, () => Math.floor(next() * pool));
    const gather = (c: typeof ca, t0_: number, t1: number) => {
      const v = new Float32Array((t1 - t0_) * k);
      const ix = new Int32Array((t1 - t0_) * k);
      for (let t = t0_; t < t1; t++) {
        const p = order[t]!;
        v.set(c.values.subarray(p * k, (p + 1) * k), (t - t0_) * k);
        ix.set(c.indices.subarray(p * k, (p + 1) * k), (t - t0_) * k);
      }
      return { v, ix };
    };
    const batches: { va: Float32Array; ia: Int32Array; vb: Float32Array; ib: Int32Array; rows: number }[] = [];
    for (let t = 0; t < T; t += batch) {
      const e = Math.min(T, t + batch);
      const ga = gather(ca, t, e);
      const gb = gather(cb, t, e);
      batches.push({ va: ga.v, ia: ga.ix, vb: gb.v, ib: gb.ix, rows: e - t });
    }

    const runSparse = async (reverse: boolean) => {
      const s0 = performance.now();
      const store = b.sparseCorrCreate(L, L, T, T * k, T * k);
      for (const bt of batches) b.sparseCorrAppend(store, bt.va, bt.ia, bt.vb, bt.ib, bt.rows);
      const s1 = performance.now();
      const res = await b.sparseCorrRun(store, false, top, reverse);
      const s2 = performance.now();
      if (res.tokens !== T) throw new Error('token count');
      return { append: (s1 - s0) / 1e3, run: (s2 - s1) / 1e3 };
    };
    // Median of a few runs each (3 at most at full size, after one warm-up: a run is seconds).
    const reps = q ? opts.repeats : Math.min(3, opts.repeats);
    const median = async (reverse: boolean) => {
      // One untimed run first at full size (page faults of fresh huge pages, pool start-up).
      for (let w = 0; w < (q ? opts.warmup : Math.min(1, opts.warmup)); w++) await runSparse(reverse);
      const all = [];
      for (let r = 0; r < reps; r++) all.push(await runSparse(reverse));
      all.sort((x, y) => x.append + x.run - (y.append + y.run));
      const m = all.length >> 1;
      // An even count: the mean of the middle two (the upper one alone overstated the time).
      return all.length % 2 ? all[m]! : { append: (all[m - 1]!.append + all[m]!.append) / 2, run: (all[m - 1]!.run + all[m]!.run) / 2 };
    };
    const sparse = await median(false);
    const sparseRev = await median(true);
    const sparseS = sparse.append + sparse.run;
    rows.push({ what: `sparse correlation, top ${top} per B feature`, seconds: sparseS, 'tokens/s': T / sparseS, note: `median of ${reps}: collect ${sparse.append.toFixed(2)} s + kernel ${sparse.run.toFixed(2)} s` });
    const revS = sparseRev.append + sparseRev.run;
    rows.push({ what: `  + reverse top ${top} per A feature`, seconds: revS, 'tokens/s': T / revS, note: `median of ${reps}: collect ${sparseRev.append.toFixed(2)} s + kernel ${sparseRev.run.toFixed(2)} s` });

    // Dense formulation: [Ts, L]^T x [Ts, Lb] float32 GEMM, scaled to T tokens and L columns.
    const [Ts, Lb] = q ? [512, 1024] : [512, 4096];
    const dense = (c: typeof ca, cols: number) => {
      const out = new Float32Array(Ts * cols);
      for (let t = 0; t < Ts; t++) {
        const p = order[t]!;
        for (let j = 0; j < k; j++) {
          const i = c.indices[p * k + j]!;
          if (i < cols) out[t * cols + i] = c.values[p * k + j]!;
        }
      }
      return out;
    };
    using da = tensor(dense(ca, L), [Ts, L]);
    using db = tensor(dense(cb, Lb), [Ts, Lb]);
    (await matmul(da, db, { transA: true })).dispose(); // warm-up
    const gt: number[] = [];
    for (let r = 0; r < 3; r++) {
      const g0 = performance.now();
      (await matmul(da, db, { transA: true })).dispose();
      gt.push((performance.now() - g0) / 1e3);
    }
    const gemmSlice = gt.sort((x, y) => x - y)[1]!;
    const gemmS = gemmSlice * (T / Ts) * (L / Lb);
    rows.push({ what: 'dense GEMM formulation (scaled)', seconds: gemmS, 'tokens/s': T / gemmS, note: `${Ts} tokens x ${Lb} B columns: ${gemmSlice.toFixed(3)} s (median of 3), x${((T / Ts) * (L / Lb)).toFixed(0)}` });
    rows.push({ what: 'ratio dense / sparse', seconds: gemmS / sparseS, 'tokens/s': '-', note: 'times faster than the dense GEMM' });

    // Exact linear assignment on random dense costs in [0, 1).
    const sizes = q ? [512, 1024] : [2048, 4096, 8192];
    const lap: Record<string, number> = {};
    for (const n of sizes) {
      const r = lcg(n);
      const cost = new Float64Array(n * n);
      for (let i = 0; i < cost.length; i++) cost[i] = r();
      const l0 = performance.now();
      const res = await linearAssignmentAsync(cost, n, n);
      const s = (performance.now() - l0) / 1e3;
      lap[`native_${n}`] = s;
      let note = `total ${res.total.toFixed(4)}`;
      if (n <= 2048) {
        const j0 = performance.now();
        const js = linearAssignment(cost, n, n);
        const js_s = (performance.now() - j0) / 1e3;
        lap[`js_${n}`] = js_s;
        note += `; JS solver ${js_s.toFixed(2)} s, same total: ${Math.abs(js.total - res.total) < 1e-9 * n}`;
      }
      rows.push({ what: `exact LAP ${n} x ${n} (native, one run)`, seconds: s, 'tokens/s': '-', note });
    }
    const load = os.loadavg();
    process.stderr.write(`load average at the end: ${load.map((v) => v.toFixed(2)).join(' ')} (a shared machine: other processes inflate these times)\n`);
    return { rows, meta: { loadAverage: load, dIn, numLatents: L, k, tokens: T, pool, batch, top, encodePoolSeconds: encodeS, sparse, sparseRev, gemmSlice, Ts, Lb, lap, threads: native().info([]).threads } };
  },
};
