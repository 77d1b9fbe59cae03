#!/usr/bin/env node
/**
 * The `saekit` command. Every subcommand is a thin call into the library; results go to stdout
 * (JSON with --json), logs and progress to stderr.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';

import { Command } from 'commander';

import { openActivations } from '../data/index.js';
import { superposition } from '../data/synthetic.js';
import { evaluate } from '../eval/evaluate.js';
import { mcc, mmcs } from '../eval/recovery.js';
import { backend, type DeviceOption, SaekitError, SparseAutoencoder } from '../index.js';
import { packageRoot } from '../native/index.js';
import { type FitResult, Trainer, type TrainerOptions } from '../train/index.js';
import { compare, type CompareFlags, matchLayers } from './compare.js';
import { Progress } from './progress.js';

function version(): string {
  const pkg = JSON.parse(readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { version: string };
  return pkg.version;
}

function printInfo(json: boolean): void {
  const info = backend.info();
  if (json) {
    process.stdout.write(`${JSON.stringify({ saekit: version(), node: process.version, ...info }, null, 2)}\n`);
    return;
  }
  const blas = info.blas;
  const rows: [string, string][] = [
    ['saekit', `${version()} (Node ${process.version}, N-API ${info.napiVersion})`],
    ['backend', info.backend],
    ['threads', `${info.threads} of ${info.hardwareThreads} hardware threads`],
    ['simd', `${info.simd} (cpu: ${info.cpuFeatures.join(' ')})`],
    ['blas', `${blas.name} ${blas.version}${blas.coretype ? ` (core ${blas.coretype})` : ''}${blas.reason ? ` - ${blas.reason}` : ''}`],
    [
      'cuda',
      info.cuda.available
        ? `${info.cuda.devices.map((d, i) => `cuda:${i} ${d}`).join('; ')}${info.cuda.loopback ? ' (loopback: SAEKIT_DEVICE_LOOPBACK=1)' : ''}`
        : `not available: ${info.cuda.reason}`,
    ],
  ];
  const width = Math.max(...rows.map(([k]) => k.length));
  for (const [k, v] of rows) process.stdout.write(`${k.padEnd(width)}  ${v}\n`);
}

function num(name: string, min: number, max: number, integer = true): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
      throw new SaekitError('ERR_SAEKIT_ARG', `Expected ${integer ? 'an integer' : 'a number'} between ${min} and ${max} for --${name} but received '${v}'`);
    }
    return n;
  };
}

/** Ctrl-C stops after the current step (checkpoint + SAE written); a second one exits at once. */
function abortOnSigint(): { signal: AbortSignal; dispose(): void } {
  const ctrl = new AbortController();
  const onSig = () => {
    if (ctrl.signal.aborted) process.exit(130);
    process.stderr.write('\nsaekit: stopping after the current step (Ctrl-C again to quit now)...\n');
    ctrl.abort();
  };
  process.on('SIGINT', onSig);
  return { signal: ctrl.signal, dispose: () => process.off('SIGINT', onSig) };
}

interface TrainFlags {
  latents?: number;
  expansion?: number;
  k: number;
  out: string;
  batch: number;
  tokens?: number;
  epochs?: number;
  lr?: number;
  warmup: number;
  auxkAlpha: number;
  normalize: 'none' | 'expected-norm';
  format: 'saelens' | 'sparsify';
  seed: number;
  resume?: boolean;
  log?: string;
  device: string;
  tensor?: string;
  dtype?: 'float32' | 'float16' | 'bfloat16' | 'float64';
  dIn?: number;
  checkpointEvery: number;
  json?: boolean;
}

async function train(paths: string[], f: TrainFlags): Promise<void> {
  if ((f.latents === undefined) === (f.expansion === undefined)) {
    throw new SaekitError('ERR_SAEKIT_ARG', 'Expected exactly one of --latents N and --expansion E');
  }
  const source = await openActivations(paths.length === 1 ? paths[0]! : paths, { tensor: f.tensor, dtype: f.dtype, dIn: f.dIn });
  try {
    const numLatents = f.latents ?? Math.round(f.expansion! * source.dIn);
    using sae = SparseAutoencoder.create({ dIn: source.dIn, numLatents, k: f.k, seed: f.seed, device: f.device as DeviceOption });
    const opts: TrainerOptions = {
      batchSize: f.batch,
      ...(f.tokens !== undefined ? { totalTokens: f.tokens } : { epochs: f.epochs ?? 1 }),
      lr: f.lr ?? 'auto',
      warmupSteps: f.warmup,
      auxkAlpha: f.auxkAlpha,
      normalize: f.normalize,
      seed: f.seed,
    };
    const trainer = new Trainer(sae, opts);
    const total = trainer.totalSteps(source) * f.batch;
    process.stderr.write(
      `training a TopK SAE: dIn ${source.dIn}, ${numLatents} latents, k ${f.k}, ${total.toLocaleString('en-US')} tokens in batches of ${f.batch}` +
        ` (${source.numRows?.toLocaleString('en-US') ?? 'unknown'} rows in the data) -> ${f.out}\n`,
    );
    const progress = new Progress(total);
    const sig = abortOnSigint();
    let result: FitResult;
    try {
      result = await trainer.fit(source, {
        signal: sig.signal,
        onStep: (s) => progress.update(s),
        logFile: f.log,
        checkpointDir: path.join(f.out, 'checkpoint'),
        checkpointEvery: f.checkpointEvery,
        resume: Boolean(f.resume),
        saveDir: f.out,
        saveFormat: f.format,
      });
    } finally {
      sig.dispose();
      progress.done();
    }
    const summary = {
      status: result.status,
      out: f.out,
      files: result.saved,
      steps: result.steps,
      tokens: result.tokens,
      seconds: result.seconds,
      tokensPerSec: result.tokens / Math.max(result.seconds, 1e-9),
      ...(result.last ? { fvu: result.last.fvu, l0: result.last.l0, deadFraction: result.last.deadFraction, loss: result.last.loss } : {}),
      scale: result.scale,
    };
    if (f.json) process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
    else {
      process.stdout.write(
        `${result.status === 'aborted' ? 'stopped early; checkpoint and SAE saved (resume with --resume)' : 'done'}: ${result.steps} steps, ` +
          `${result.tokens.toLocaleString('en-US')} tokens in ${result.seconds.toFixed(1)} s` +
          (result.last ? `, fvu ${result.last.fvu.toFixed(4)}, L0 ${result.last.l0.toFixed(1)}, dead ${(100 * result.last.deadFraction).toFixed(2)}%` : '') +
          `\nsaved ${result.saved.join(', ')}\n`,
      );
    }
    if (result.status === 'aborted') process.exitCode = 130;
  } finally {
    await source.close();
  }
}

interface DemoFlags {
  out?: string;
  seed: number;
  json?: boolean;
}

/** The main job on built-in data: plant features in superposition, train, check recovery. */
async function demo(f: DemoFlags): Promise<void> {
  const dIn = 64;
  const numFeatures = 256;
  const numLatents = 512;
  const k = 8;
  const seed = f.seed;
  const { source, features } = superposition({ dIn, numFeatures, firing: { kind: 'expected-active', n: 5 }, numRows: 1 << 16, seed });
  process.stderr.write(
    `saekit demo: ${numFeatures} ground-truth features in superposition in ${dIn} dimensions (about 5 active per row);\n` +
      `training a TopK SAE with ${numLatents} latents, k ${k}, on ${(1 << 21).toLocaleString('en-US')} synthetic rows\n`,
  );
  using sae = SparseAutoencoder.create({ dIn, numLatents, k, seed: seed + 1 });
  const trainer = new Trainer(sae, { batchSize: 1024, totalTokens: 1 << 21, lr: 2e-3, warmupSteps: 50, seed });
  const progress = new Progress(1 << 21);
  const sig = abortOnSigint();
  let result: FitResult;
  try {
    result = await trainer.fit(source, { signal: sig.signal, onStep: (s) => progress.update(s), ...(f.out ? { saveDir: f.out } : {}) });
  } finally {
    sig.dispose();
    progress.done();
  }
  const w = await sae.weights();
  const t2l = mmcs(w.W_dec, features, { d: dIn, direction: 'truth-to-learned' }).mean;
  const l2t = mmcs(w.W_dec, features, { d: dIn, direction: 'learned-to-truth' }).mean;
  const m = mcc(w.W_dec, features, { d: dIn }).mean;
  const rows: [string, string][] = [
    ['MMCS truth -> learned', t2l.toFixed(4)],
    ['MMCS learned -> truth', l2t.toFixed(4)],
    ['MCC (one-to-one)', m.toFixed(4)],
    ['FVU', result.last!.fvu.toFixed(4)],
    ['L0', result.last!.l0.toFixed(2)],
    ['dead latents', `${(100 * result.last!.deadFraction).toFixed(2)}%`],
    ['tokens', result.tokens.toLocaleString('en-US')],
    ['time', `${result.seconds.toFixed(1)} s (${Math.round(result.tokens / result.seconds).toLocaleString('en-US')} tok/s)`],
    ...(f.out ? ([['saved', result.saved.join(', ')]] as [string, string][]) : []),
  ];
  if (f.json) {
    process.stdout.write(`${JSON.stringify({ mmcsTruthToLearned: t2l, mmcsLearnedToTruth: l2t, mcc: m, fvu: result.last!.fvu, l0: result.last!.l0, deadFraction: result.last!.deadFraction, tokens: result.tokens, seconds: result.seconds, saved: result.saved }, null, 2)}\n`);
  } else {
    const width = Math.max(...rows.map(([a]) => a.length));
    for (const [a, b] of rows) process.stdout.write(`${a.padEnd(width)}  ${b}\n`);
  }
  await source.close();
}

interface EvalFlags {
  maxTokens: number;
  batch: number;
  json?: boolean;
  compat?: boolean;
  geometry: boolean;
  tensor?: string;
  dtype?: 'float32' | 'float16' | 'bfloat16' | 'float64';
  dIn?: number;
}

async function evalCommand(saePath: string, paths: string[], f: EvalFlags): Promise<void> {
  using sae = await SparseAutoencoder.load(saePath);
  const source = await openActivations(paths.length === 1 ? paths[0]! : paths, { tensor: f.tensor, dtype: f.dtype, dIn: f.dIn });
  try {
    process.stderr.write(`evaluating ${saePath} (${sae.architecture}, dIn ${sae.dIn}, ${sae.numLatents} latents) on up to ${f.maxTokens.toLocaleString('en-US')} tokens\n`);
    const r = await evaluate(sae, source, { maxTokens: f.maxTokens, batchSize: f.batch, compat: Boolean(f.compat), geometry: f.geometry });
    const { feature_density: density, max_cos_enc: mce, max_cos_dec: mcd, log10_density_histogram: hist, ...scalars } = r;
    if (f.json) {
      process.stdout.write(`${JSON.stringify({ ...scalars, log10_density_histogram: hist }, null, 2)}\n`);
      return;
    }
    const rows: [string, string][] = Object.entries(scalars)
      .filter(([, v]) => typeof v === 'number')
      .map(([k, v]) => [k, Number.isInteger(v) ? String(v) : (v as number).toPrecision(6)]);
    if (r.compat) for (const [k, v] of Object.entries(r.compat)) if (typeof v === 'number') rows.push([`${k} (compat)`, v.toPrecision(6)]);
    const width = Math.max(...rows.map(([a]) => a.length));
    for (const [a, b] of rows) process.stdout.write(`${a.padEnd(width)}  ${b}\n`);
    void density;
    void mce;
    void mcd;
  } finally {
    await source.close();
  }
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('saekit')
    .description('Train, evaluate and compare sparse autoencoders.')
    .version(version())
    .showHelpAfterError();
  program
    .command('info')
    .description('show the compute backend, SIMD level, BLAS library and CUDA status')
    .option('--json', 'print machine-readable JSON')
    .addHelpText('after', '\nExample:\n  saekit info --json | jq .blas\n')
    .action((opts: { json?: boolean }) => printInfo(Boolean(opts.json)));
  program
    .command('train')
    .description('train a TopK SAE on activations (.npy, .safetensors, raw shards, folders or globs) and save it')
    .argument('<data...>', 'activation files, folders or glob patterns (rows x dIn)')
    .option('--latents <n>', 'number of latents', num('latents', 1, 1 << 24))
    .option('--expansion <e>', 'latents as a multiple of dIn', num('expansion', 0.01, 1 << 16, false))
    .option('--k <k>', 'active latents per row', num('k', 1, 1 << 16), 32)
    .requiredOption('--out <dir>', 'output folder (the SAE, plus checkpoint/)')
    .option('--batch <n>', 'rows per step', num('batch', 2, 1 << 24), 4096)
    .option('--tokens <n>', 'train on this many tokens', num('tokens', 1, Number.MAX_SAFE_INTEGER))
    .option('--epochs <n>', 'passes over the data (default 1 when --tokens is not given)', num('epochs', 1, 1 << 20))
    .option('--lr <lr>', "learning rate (default: 2e-4 / sqrt(latents / 2^14))", num('lr', 0, 10, false))
    .option('--warmup <steps>', 'linear warmup steps', num('warmup', 0, 1 << 30), 1000)
    .option('--auxk-alpha <a>', 'AuxK loss weight (0 turns it off)', num('auxk-alpha', 0, 1e6, false), 1 / 32)
    .option('--normalize <mode>', "'none' or 'expected-norm' (scale inputs to E||x|| = sqrt(dIn); folded into the weights)", 'none')
    .option('--format <f>', "'saelens' (default) or 'sparsify'", 'saelens')
    .option('--seed <n>', 'seed of the initialisation and the data order', num('seed', 0, Number.MAX_SAFE_INTEGER), 0)
    .option('--resume', 'continue from <out>/checkpoint if present')
    .option('--checkpoint-every <steps>', 'steps between checkpoints', num('checkpoint-every', 1, 1 << 30), 1000)
    .option('--log <file>', 'append every step as a JSON line')
    .option('--device <d>', "'auto' (CUDA when usable), 'cpu', 'cuda' or 'cuda:N'", 'auto')
    .option('--tensor <name>', 'the tensor to read from .safetensors files (default: the only 2-D one)')
    .option('--dtype <t>', 'element type of raw .bin files: float32, float16, bfloat16, float64')
    .option('--d-in <n>', 'row width of raw .bin files', num('d-in', 1, 1 << 24))
    .option('--json', 'print the final statistics as JSON on stdout')
    .addHelpText(
      'after',
      '\nExample:\n  saekit train acts/*.npy --latents 24576 --k 32 --out runs/l8 --tokens 100000000 --log runs/l8/log.jsonl\n' +
        '  (Ctrl-C stops after the current step and saves; run again with --resume to continue.)\n',
    )
    .action(async (paths: string[], f: TrainFlags) => {
      if (f.normalize !== 'none' && f.normalize !== 'expected-norm') {
        throw new SaekitError('ERR_SAEKIT_ARG', `Expected one of: none, expected-norm for --normalize but received '${f.normalize}'`);
      }
      if (f.format !== 'saelens' && f.format !== 'sparsify') {
        throw new SaekitError('ERR_SAEKIT_ARG', `Expected one of: saelens, sparsify for --format but received '${f.format}'`);
      }
      await train(paths, f);
    });
  program
    .command('eval')
    .description('evaluate an SAE (SAELens, sparsify or Gemma Scope files) on activations: reconstruction, sparsity, geometry')
    .argument('<sae>', 'SAE folder or file')
    .argument('<data...>', 'activation files, folders or glob patterns')
    .option('--max-tokens <n>', 'tokens to evaluate on', num('max-tokens', 1, Number.MAX_SAFE_INTEGER), 1_000_000)
    .option('--batch <n>', 'rows per batch', num('batch', 1, 1 << 24), 4096)
    .option('--compat', 'also report the legacy SAELens / SAEBench variants (labelled)')
    .option('--no-geometry', 'skip the max-cosine geometry metrics')
    .option('--json', 'print JSON (snake_case fields as in SAEBench core output)')
    .option('--tensor <name>', 'the tensor to read from .safetensors files')
    .option('--dtype <t>', 'element type of raw .bin files')
    .option('--d-in <n>', 'row width of raw .bin files', num('d-in', 1, 1 << 24))
    .addHelpText('after', '\nExample:\n  saekit eval runs/l8 acts/val.npy --max-tokens 2000000 --json > eval.json\n')
    .action((sae: string, paths: string[], f: EvalFlags) => evalCommand(sae, paths, f));
  program
    .command('compare')
    .description('compare the features of two SAEs: correlation over tokens, matching, SVCCA and RSA of the matched decoder rows against shuffled baselines')
    .argument('<saeA>', 'first SAE folder or file')
    .argument('<saeB>', 'second SAE folder or file')
    .requiredOption('--data <src>', "activations for saeA (and saeB unless --data-b)")
    .option('--data-b <src>', "saeB's activations, aligned token by token with --data (another model on the same text)")
    .option('--kind <k>', 'codes or preacts', 'codes')
    .option('--method <m>', 'argmax, mutual or hungarian (hungarian needs the full correlation matrix, at most 1 GiB: nA x nB x 4 bytes; beyond it use argmax or mutual, which work from top matches)', 'hungarian')
    .option('--threshold <r>', 'drop matched pairs with correlation below this', num('threshold', -1, 1, false), 0.1)
    .option('--top <n>', 'for --method mutual: best buddies within the top n', num('top', 1, 1 << 20), 1)
    .option('--max-tokens <n>', 'tokens to correlate over', num('max-tokens', 2, Number.MAX_SAFE_INTEGER), 100_000)
    .option('--max-bytes <n>', 'largest full correlation matrix (nA x nB x 4 bytes, default 1 GiB); beyond it argmax and mutual use top matches per feature', num('max-bytes', 1, Number.MAX_SAFE_INTEGER))
    .option('--runs <n>', 'shuffled baselines for the p-values', num('runs', 1, 100000), 20)
    .option('--json', 'print the summary as JSON')
    .option('--out <file>', 'also write the summary and every matched pair as JSON')
    .addHelpText('after', '\nExample:\n  saekit compare runs/seed1 runs/seed2 --data acts/val.npy --method hungarian --json\n')
    .action((a: string, b: string, f: CompareFlags) => {
      if (f.kind !== 'codes' && f.kind !== 'preacts') throw new SaekitError('ERR_SAEKIT_ARG', `Expected one of: codes, preacts for --kind but received '${f.kind}'`);
      if (!['argmax', 'mutual', 'hungarian'].includes(f.method)) {
        throw new SaekitError('ERR_SAEKIT_ARG', `Expected one of: argmax, mutual, hungarian for --method but received '${f.method}'`);
      }
      return compare(a, b, f);
    });
  program
    .command('match-layers')
    .description('SAE Match: data-free matching of the latents of consecutive SAEs (e.g. adjacent layers)')
    .argument('<sae...>', 'SAE folders or files, in layer order')
    .option('--encoder', 'also match on the (folded) encoder parameters')
    .option('--json', 'print a JSON summary')
    .option('--out <file>', 'write every permutation as JSON')
    .addHelpText('after', '\nExample:\n  saekit match-layers runs/l6 runs/l7 runs/l8 --out perms.json\n')
    .action((paths: string[], f: { json?: boolean; out?: string; encoder?: boolean }) => matchLayers(paths, f));
  program
    .command('demo')
    .description('train an SAE on built-in synthetic data with known features and report how well it recovers them')
    .option('--out <dir>', 'also save the trained SAE here (SAELens layout)')
    .option('--seed <n>', 'seed of the data and the initialisation', num('seed', 0, 2 ** 31), 0)
    .option('--json', 'print the results as JSON on stdout')
    .addHelpText('after', '\nExample:\n  saekit demo --out runs/demo\n')
    .action((f: DemoFlags) => demo(f));
  return program;
}

async function main(): Promise<void> {
  try {
    await buildProgram().parseAsync(process.argv);
  } catch (err) {
    if (err instanceof SaekitError) {
      process.stderr.write(`saekit: ${err.message} [${err.code}]\n`);
      process.exitCode = 1;
      return;
    }
    throw err;
  }
}

void main();
