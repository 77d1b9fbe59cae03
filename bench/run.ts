/**
 * Runs a named benchmark: `npm run bench -- <name> [--repeats N] [--warmup N] [--quick]`.
 * Prints a table (medians, ratios against the floor or peer measured in the same run) and writes
 * the full numbers to bench/results/<name>-<time>.json.
 */
import { parseArgs } from 'node:util';

import { backend } from '../lib/index.js';
import { correlate } from './correlate.js';
import { evalBench } from './eval.js';
import { gemm } from './gemm.js';
import { header } from './header.js';
import { type Benchmark, formatTable, machine, saveResults } from './harness.js';
import { topkStep } from './topk-step.js';
import { torchCpu } from './torch-cpu.js';
import { read } from './read.js';
import { train } from './train.js';

const BENCHMARKS: Benchmark[] = [gemm, topkStep, train, read, evalBench, correlate, header, torchCpu];

const USAGE = 'usage: npm run bench -- <name> [--repeats N] [--warmup N] [--quick]';

async function main(): Promise<void> {
  const list = () => BENCHMARKS.map((b) => `  ${b.name.padEnd(10)} ${b.description}`).join('\n');
  let parsed;
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        repeats: { type: 'string', default: '7' },
        warmup: { type: 'string', default: '2' },
        quick: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (err) {
    // An unknown flag or a flag without its value: the usage, not a stack trace.
    process.stderr.write(`${(err as Error).message}\n${USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  const { positionals, values } = parsed;
  const name = positionals[0];
  if (!name || values.help) {
    process.stdout.write(`${USAGE}\nbenchmarks:\n${list()}\n`);
    return;
  }
  if (positionals.length > 1) {
    process.stderr.write(`one benchmark a run, but received ${positionals.length}: ${positionals.join(' ')}\n${USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  const bench = BENCHMARKS.find((b) => b.name === name);
  if (!bench) {
    process.stderr.write(`unknown benchmark '${name}'; one of:\n${list()}\n`);
    process.exitCode = 2;
    return;
  }
  const repeats = Number(values.repeats);
  const warmup = Number(values.warmup);
  if (!Number.isInteger(repeats) || repeats < 1 || !Number.isInteger(warmup) || warmup < 0) {
    process.stderr.write(`--repeats must be an integer >= 1 and --warmup an integer >= 0, but received --repeats '${values.repeats}' --warmup '${values.warmup}'\n`);
    process.exitCode = 2;
    return;
  }
  const info = backend.info();
  process.stderr.write(`${bench.name}: ${bench.description}\nbackend ${info.backend}, ${info.threads} threads, simd ${info.simd}, blas ${info.blas.name} ${info.blas.version}; median of ${repeats}\n`);
  const { rows, meta } = await bench.run({ repeats, warmup, quick: Boolean(values.quick) });
  process.stdout.write(formatTable(rows));
  const file = saveResults(bench.name, { name: bench.name, date: new Date().toISOString(), machine: machine(), repeats, meta, rows });
  process.stderr.write(`saved ${file}\n`);
}

void main();
