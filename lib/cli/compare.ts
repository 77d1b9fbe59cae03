/** `saekit compare` and `saekit match-layers`: thin calls into lib/features. */
import { writeFileSync } from 'node:fs';

import { openActivations } from '../data/index.js';
import { SaekitError } from '../errors.js';
import { correlation, match, permutationTest, rsa, saeMatch, svcca } from '../features/index.js';
import { SparseAutoencoder } from '../sae/index.js';

export interface CompareFlags {
  data: string;
  dataB?: string;
  kind: 'codes' | 'preacts';
  method: 'argmax' | 'mutual' | 'hungarian';
  threshold: number;
  top: number;
  maxTokens: number;
  maxBytes?: number;
  runs: number;
  json?: boolean;
  out?: string;
}

function rowsOf(W: Float32Array, d: number, idx: number[]): Float64Array {
  const out = new Float64Array(idx.length * d);
  idx.forEach((r, i) => {
    for (let j = 0; j < d; j++) out[i * d + j] = W[r * d + j]!;
  });
  return out;
}

export async function compare(pathA: string, pathB: string, f: CompareFlags): Promise<void> {
  using a = await SparseAutoencoder.load(pathA);
  using b = await SparseAutoencoder.load(pathB);
  const srcA = await openActivations(f.data);
  const srcB = f.dataB ? await openActivations(f.dataB) : undefined;
  try {
    process.stderr.write(`correlating ${a.numLatents} x ${b.numLatents} features (${f.kind}) over up to ${f.maxTokens.toLocaleString('en-US')} tokens\n`);
    // The full matrix when it fits in the default 1 GiB, else top matches (enough for 'argmax'
    // and 'mutual'); 'hungarian' needs the matrix, so it asks for it and fails before reading data.
    const c = await correlation({ sae: a, source: srcA }, { sae: b, ...(srcB ? { source: srcB } : {}) }, {
      kind: f.kind,
      output: f.method === 'hungarian' ? 'full' : 'auto',
      maxTokens: f.maxTokens,
      ...(f.maxBytes !== undefined ? { maxBytes: f.maxBytes } : {}),
      top: Math.max(5, f.top),
      reverse: f.method === 'mutual',
    });
    process.stderr.write(`correlation: ${c.mode === 'full' ? 'full matrix' : `top ${c.top.k} matches per feature`} over ${c.tokens.toLocaleString('en-US')} tokens\n`);
    // For every feature of B, its best correlation in A.
    let meanMax = 0;
    for (let j = 0; j < c.nB; j++) {
      let best = -1;
      if (c.mode === 'top') best = c.top.r[j * c.top.k]!;
      else for (let i = 0; i < c.nA; i++) best = Math.max(best, c.r[i * c.nB + j]!);
      meanMax += best / c.nB;
    }
    const m = await match(c, { method: f.method, threshold: f.threshold, ...(f.method === 'mutual' ? { top: f.top } : {}) });
    const [wa, wb] = [await a.weights(), await b.weights()];
    const pa = rowsOf(wa.W_dec, a.dIn, m.pairs.map((p) => p.a));
    const pb = rowsOf(wb.W_dec, b.dIn, m.pairs.map((p) => p.b));
    const n = m.pairs.length;
    const summary: Record<string, unknown> = {
      tokens: c.tokens,
      mean_max_correlation: meanMax,
      method: f.method,
      threshold: f.threshold,
      pairs_kept: n,
      mean_pair_correlation: m.meanScore,
    };
    if (n > Math.max(a.dIn, b.dIn)) {
      const sv = (A: Float64Array, B: Float64Array) => svcca(A, B, { n, dA: a.dIn, dB: b.dIn }).score;
      const t = permutationTest(sv, pa, pb, { n, dB: b.dIn, runs: f.runs, seed: 0 });
      summary.svcca = { score: t.score, shuffled_mean: mean(t.shuffled), p_value: t.pValue };
    } else {
      summary.svcca = { skipped: `needs more matched pairs (${n}) than dimensions (${Math.max(a.dIn, b.dIn)})` };
    }
    if (n >= 3) {
      const rs = (A: Float64Array, B: Float64Array) => rsa(A, B, { n, dA: a.dIn, dB: b.dIn }).score;
      const t = permutationTest(rs, pa, pb, { n, dB: b.dIn, runs: f.runs, seed: 0 });
      summary.rsa = { score: t.score, shuffled_mean: mean(t.shuffled), p_value: t.pValue };
    }
    if (f.out) writeFileSync(f.out, `${JSON.stringify({ ...summary, pairs: m.pairs }, null, 2)}\n`);
    if (f.json) {
      process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
      return;
    }
    const fmt = (v: unknown): string =>
      typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toPrecision(5)) : v && typeof v === 'object' ? Object.entries(v).map(([k, x]) => `${k} ${fmt(x)}`).join(', ') : String(v);
    const width = Math.max(...Object.keys(summary).map((k) => k.length));
    for (const [k, v] of Object.entries(summary)) process.stdout.write(`${k.padEnd(width)}  ${fmt(v)}\n`);
  } finally {
    await srcA.close();
    await srcB?.close();
  }
}

function mean(x: Float64Array): number {
  let s = 0;
  for (const v of x) s += v;
  return x.length ? s / x.length : Number.NaN;
}

export async function matchLayers(paths: string[], f: { json?: boolean; out?: string; encoder?: boolean }): Promise<void> {
  if (paths.length < 2) throw new SaekitError('ERR_SAEKIT_ARG', `Expected at least 2 SAEs for match-layers but received ${paths.length}`);
  const saes = await Promise.all(paths.map((p) => SparseAutoencoder.load(p)));
  try {
    const steps: { from: string; to: string; mean_mse: number; permutation: number[] }[] = [];
    for (let i = 0; i + 1 < saes.length; i++) {
      const r = await saeMatch(saes[i]!, saes[i + 1]!, { fold: true, encoder: Boolean(f.encoder) });
      steps.push({ from: paths[i]!, to: paths[i + 1]!, mean_mse: r.meanMse, permutation: Array.from(r.permutation) });
    }
    if (f.out) writeFileSync(f.out, `${JSON.stringify(steps, null, 2)}\n`);
    if (f.json) process.stdout.write(`${JSON.stringify(steps.map(({ permutation, ...s }) => ({ ...s, matched: permutation.length })), null, 2)}\n`);
    else for (const s of steps) process.stdout.write(`${s.from} -> ${s.to}: mean MSE of matched (folded) parameters ${s.mean_mse.toPrecision(5)}\n`);
  } finally {
    for (const s of saes) s.dispose();
  }
}
