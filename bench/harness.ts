/**
 * A small benchmark harness: time a function over repeats, report the median and spread, print a
 * table and save JSON under bench/results/. Benchmarks compare against a floor or a peer measured
 * in the same run (the machines are shared and noisy: quote ratios, never lone absolute times).
 */
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface Timing {
  /** Median seconds per call. */
  median: number;
  /** Fastest and slowest seconds per call. */
  min: number;
  max: number;
  /** (max - min) / median, a crude spread. */
  spread: number;
  repeats: number;
}

export interface BenchOptions {
  repeats: number;
  warmup: number;
  quick: boolean;
}

export type Row = Record<string, string | number>;

export interface Benchmark {
  name: string;
  description: string;
  run(opts: BenchOptions): Promise<{ rows: Row[]; meta?: Record<string, unknown> }>;
}

/** Deterministic test data in [-0.5, 0.5) from a small LCG (independent of saekit's Philox). */
export function lcgArray(n: number, seed: number): Float32Array {
  const x = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    x[i] = s / 4294967296 - 0.5;
  }
  return x;
}

/** Times `fn` `repeats` times after `warmup` untimed calls. */
export async function time(fn: () => unknown, opts: { repeats: number; warmup: number }): Promise<Timing> {
  for (let i = 0; i < opts.warmup; i++) await fn();
  const t: number[] = [];
  for (let i = 0; i < opts.repeats; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    t.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  t.sort((a, b) => a - b);
  const m = median(t);
  return { median: m, min: t[0]!, max: t[t.length - 1]!, spread: (t[t.length - 1]! - t[0]!) / m, repeats: t.length };
}

/**
 * Times several functions in alternation: `warmup` untimed rounds, then `repeats` rounds that
 * call each once, the order rotating from round to round, so drift of a shared machine (another
 * job starting, the clock throttling) falls on all of them alike. Returns each one's Timing and
 * its seconds per round, for ratios taken round by round (`roundRatio`).
 */
export async function timeInterleaved<K extends string>(
  fns: Record<K, () => unknown>,
  opts: { repeats: number; warmup: number },
): Promise<Record<K, Timing & { rounds: number[] }>> {
  const names = Object.keys(fns) as K[];
  const rounds = Object.fromEntries(names.map((n) => [n, [] as number[]])) as Record<K, number[]>;
  for (let r = 0; r < opts.warmup + opts.repeats; r++) {
    for (let j = 0; j < names.length; j++) {
      const name = names[(r + j) % names.length]!;
      const t0 = process.hrtime.bigint();
      await fns[name]();
      if (r >= opts.warmup) rounds[name].push(Number(process.hrtime.bigint() - t0) / 1e9);
    }
  }
  return Object.fromEntries(
    names.map((n) => {
      const t = rounds[n];
      const m = median(t);
      const sorted = [...t].sort((a, b) => a - b);
      return [n, { median: m, min: sorted[0]!, max: sorted[sorted.length - 1]!, spread: (sorted[sorted.length - 1]! - sorted[0]!) / m, repeats: t.length, rounds: t }];
    }),
  ) as Record<K, Timing & { rounds: number[] }>;
}

/** The median over rounds of a.rounds[i] / b.rounds[i] (timeInterleaved's timings of one run). */
export function roundRatio(a: { rounds: number[] }, b: { rounds: number[] }): number {
  if (a.rounds.length !== b.rounds.length || a.rounds.length === 0) throw new Error(`roundRatio: ${a.rounds.length} and ${b.rounds.length} rounds`);
  return median(a.rounds.map((t, i) => t / b.rounds[i]!));
}

/** The median of `xs` (the mean of the middle two for an even count); `xs` is not reordered. */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function formatTable(rows: Row[]): string {
  if (rows.length === 0) return '(no rows)\n';
  const cols = Object.keys(rows[0]!);
  const cell = (v: string | number | undefined) =>
    typeof v === 'number' ? (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2)) : (v ?? '');
  const widths = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padStart(widths[i]!)).join('  ');
  return [line(cols), line(widths.map((w) => '-'.repeat(w))), ...rows.map((r) => line(cols.map((c) => cell(r[c]))))].join('\n') + '\n';
}

/** Writes bench/results/<name>-<time>.json atomically (temporary file, then rename). */
export function saveResults(name: string, data: unknown): string {
  const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), 'results');
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${name}-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, `${JSON.stringify(data, null, 2)}\n`);
  renameSync(tmp, file);
  return file;
}

export function machine(): Record<string, unknown> {
  return { cpus: os.cpus()[0]?.model, cores: os.cpus().length, node: process.version, platform: `${process.platform}-${process.arch}` };
}
