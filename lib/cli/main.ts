#!/usr/bin/env node
/**
 * The `saekit` command. Every subcommand is a thin call into the library; results go to stdout
 * (JSON with --json), logs and progress to stderr.
 */
import { readFileSync } from 'node:fs';
import { readFile, rename, rm, rmdir, stat } from 'node:fs/promises';
import path from 'node:path';

import { Command, Option } from 'commander';

import { openActivations } from '../data/index.js';
import { resolveShardPaths } from '../data/shards.js';
import { superposition } from '../data/synthetic.js';
import { argError } from '../errors.js';
import { evaluate } from '../eval/evaluate.js';
import { mcc, mmcs } from '../eval/recovery.js';
import { backend, type DeviceOption, SaekitError, SparseAutoencoder } from '../index.js';
import { SAE_FILE_NAMES } from '../io/sae-files.js';
import { packageRoot } from '../native/index.js';
import { AUXK_VARIANTS } from '../sae/index.js';
import { B_DEC_INITS, DECAYS, type FitResult, readCheckpoint, Trainer, type TrainerOptions } from '../train/index.js';
import { lockFolder } from '../train/lock.js';
import { compare, type CompareFlags, DEFAULT_MAX_PAIRS, checkNotInput, matchLayers, type MatchLayersFlags, namesOf, type OutInput, SVCCA_MAX_WORK } from './compare.js';
import { Progress, reportSkipped, TokenProgress } from './progress.js';
import { abortOnSignal, STOP_SIGNALS, stoppable } from './stop.js';

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

const DECIMAL = /^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i;

function num(name: string, min: number, max: number, integer = true, exclusiveMin = false): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    // Decimal notation only (Number() also takes '0x40', ' 64' and '0b1').
    if (!DECIMAL.test(v) || !Number.isFinite(n) || n < min || n > max || (exclusiveMin && n === min) || (integer && !Number.isInteger(n))) {
      const range = exclusiveMin ? `> ${min} and <= ${max}` : `between ${min} and ${max}`;
      throw new SaekitError('ERR_SAEKIT_ARG', `Expected ${integer ? 'an integer' : 'a number'} ${range} for --${name} but received '${v}'`);
    }
    return n;
  };
}

/** A choice flag's parser: the value if it is one of `choices`, else a one-line error. */
function oneOf<T extends string>(name: string, choices: readonly T[]): (v: string) => T {
  return (v: string) => {
    if (!(choices as readonly string[]).includes(v)) throw new SaekitError('ERR_SAEKIT_ARG', `Expected one of: ${choices.join(', ')} for --${name} but received '${v}'`);
    return v as T;
  };
}

/** A value that reads as a number (--threshold -0.5), not as a flag. */
const NUMBER_LIKE = /^-(?:\d|\.\d|Infinity$)/;

/**
 * Checks `cmd`'s flags in `argv` (the raw command line) before it runs: a flag that takes a
 * value and is followed by another flag (`--out --json` would write a file named --json) or is
 * given twice (commander keeps the last silently) is refused, naming it. A value may start with
 * '-' as `--flag=value`, or when it reads as a number.
 */
function checkFlags(cmd: Command, argv: readonly string[]): void {
  const at = argv.indexOf(cmd.name());
  if (at < 0) return;
  const seen = new Map<string, string[]>();
  for (let i = at + 1; i < argv.length; i++) {
    const token = argv[i]!;
    if (token === '--') break;
    if (!token.startsWith('--')) continue;
    const eq = token.indexOf('=');
    const flag = eq < 0 ? token : token.slice(0, eq);
    const option = cmd.options.find((o) => o.long === flag);
    if (!option || !(option.required || option.optional)) continue;
    let value: string | undefined;
    if (eq >= 0) value = token.slice(eq + 1);
    else {
      value = argv[i + 1];
      if (value !== undefined && value.startsWith('-') && !NUMBER_LIKE.test(value)) {
        throw new SaekitError('ERR_SAEKIT_ARG', `Expected a value after ${flag} but received the flag '${value}' (for a value that starts with '-', write ${flag}=VALUE)`);
      }
      i++;
    }
    const values = [...(seen.get(flag) ?? []), value ?? ''];
    seen.set(flag, values);
    if (values.length > 1) {
      throw new SaekitError('ERR_SAEKIT_ARG', `Expected ${flag} at most once but received it ${values.length} times (${values.map((v) => `'${v}'`).join(', ')})`);
    }
  }
}

/**
 * Options a command cannot run without. commander checks its requiredOption before unknown
 * options, so `saekit train --ouy x` said "required option '--out <dir>' not specified" instead
 * of naming the misspelt flag: these are checked in the preAction hook, after commander has
 * refused unknown options, with commander's own words.
 */
const REQUIRED = new WeakSet<Option>();

/** A required option (see REQUIRED), for addOption. */
function requiredOption(flags: string, description: string): Option {
  const o = new Option(flags, description);
  REQUIRED.add(o);
  return o;
}

/** Fails the command (as commander does) when a REQUIRED option of it was not given. */
function checkRequired(cmd: Command): void {
  for (const o of cmd.options) {
    if (REQUIRED.has(o) && cmd.getOptionValue(o.attributeName()) === undefined) {
      cmd.error(`error: required option '${o.flags}' not specified`, { code: 'commander.missingMandatoryOptionValue' });
    }
  }
}

const NON_FINITE_HELP = "rows holding NaN or Inf: 'error' (stop, naming the file and row) or 'skip' them";

const DEVICE_HELP = "where the SAE runs: 'auto' (CUDA when usable), 'cpu', 'cuda' or 'cuda:N'";

/**
 * Library option names in error messages, as the CLI flags that set them (the library names
 * `options.batchSize`; a CLI user typed --batch).
 */
const FLAG_OF: Record<string, string> = {
  'options.batchSize': '--batch',
  'options.totalTokens': '--tokens',
  'options.epochs': '--epochs',
  'options.lr': '--lr',
  'options.warmupSteps': '--warmup',
  'options.auxkAlpha': '--auxk-alpha',
  'options.auxkVariant': '--auxk-variant',
  'options.deadThresholdTokens': '--dead-threshold',
  'options.decay': '--decay',
  'options.bDecInit': '--b-dec-init',
  'options.precision': '--precision',
  'options.normalize': '--normalize',
  'options.seed': '--seed',
  'options.k': '--k',
  'options.numLatents': '--latents',
  'options.dIn': '--d-in',
  'options.dtype': '--dtype',
  'options.tensor': '--tensor',
  'options.device': '--device',
  'options.maxTokens': '--max-tokens',
  'options.maxBytes': '--max-bytes',
  'options.threshold': '--threshold',
  'options.top': '--top',
  'options.oneToOne': '--one-to-one',
  'options.compat': '--compat',
  'options.checkpointEvery': '--checkpoint-every',
  'options.saveDir': '--out',
  'options.checkpointDir': '--out',
  'options.logFile': '--log',
  'options.onNonFinite': '--on-non-finite',
  pathOrPaths: '<data>',
};

/** A library error message in the CLI's terms. */
export function cliMessage(message: string): string {
  return message
    .replace(/\b(options\.[A-Za-z]+|pathOrPaths)\b/g, (m) => FLAG_OF[m] ?? m)
    .replace(/^Expected an SAE folder or file for pathOrDir but/, 'Expected an SAE folder or file for <sae> but')
    .replace(/pass onNonFinite: 'skip'/g, 'pass --on-non-finite skip')
    .replace(/start over with a fit\(\) without options\.resume/g, 'start over with --overwrite');
}

/** Help of the commands that stop through stoppable(). */
const STOP_HELP = '  (Ctrl-C or SIGTERM stops at the next batch or block, writing nothing and exiting 130 or 143; a second signal quits at once.)\n';

/** The most latents an SAE can have (SparseAutoencoder.create's limit for numLatents). */
const MAX_LATENTS = 1 << 24;

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
  auxkVariant: (typeof AUXK_VARIANTS)[number];
  deadThreshold: number;
  decay: (typeof DECAYS)[number];
  bDecInit: (typeof B_DEC_INITS)[number];
  precision: 'bf16' | 'tf32' | 'fp32';
  normalize: 'none' | 'expected-norm';
  format: 'saelens' | 'sparsify';
  seed: number;
  resume?: boolean;
  overwrite?: boolean;
  log?: string;
  device: string;
  onNonFinite: 'error' | 'skip';
  tensor?: string;
  dtype?: 'float32' | 'float16' | 'bfloat16' | 'float64';
  dIn?: number;
  checkpointEvery: number;
  json?: boolean;
}

/** An earlier run's checkpoint, as priorRun found it. */
interface PriorCheckpoint {
  step: number;
  tokens: number;
  /** The SAE it trained (absent when damaged). */
  sae?: { dIn: number; numLatents: number; k: number };
  /** Why it cannot be resumed. */
  damaged?: SaekitError;
}

/**
 * What `out` holds from an earlier run: its checkpoint (step and tokens; `damaged`, the reason,
 * when checkpoint.json is there but cannot be resumed) and SAE files.
 */
async function priorRun(out: string): Promise<{ checkpoint?: PriorCheckpoint; saeFiles: string[] }> {
  const exists = async (p: string) => (await stat(p).catch(() => undefined)) !== undefined;
  let checkpoint: PriorCheckpoint | undefined;
  try {
    // Read as the Trainer reads it (a FIFO or a huge file there is refused, not read).
    const ck = await readCheckpoint(path.join(out, 'checkpoint'));
    if (ck) checkpoint = { step: ck.step, tokens: ck.tokens, sae: ck.sae };
  } catch (err) {
    if (!(err instanceof SaekitError)) throw err;
    checkpoint = { step: 0, tokens: 0, damaged: err };
  }
  const saeFiles: string[] = [];
  for (const f of SAE_FILE_NAMES) if (await exists(path.join(out, f))) saeFiles.push(f);
  return { checkpoint, saeFiles };
}

/**
 * Checks --out and --log against an earlier run before any work: a new run never replaces a
 * checkpoint, an SAE or a log without --overwrite, and --resume says what it found.
 * Returns whether a checkpoint will be resumed.
 */
async function prepareOutputs(f: TrainFlags, sae: { dIn: number; numLatents: number }): Promise<{ resuming: boolean; replaced: string[] }> {
  if (f.resume && f.overwrite) throw new SaekitError('ERR_SAEKIT_ARG', 'Expected at most one of --resume and --overwrite but received both');
  const prior = await priorRun(f.out);
  if (f.resume && prior.checkpoint?.damaged) throw prior.checkpoint.damaged;
  const resuming = Boolean(f.resume && prior.checkpoint);
  if (resuming && prior.checkpoint!.sae) checkResumedSae(f, sae, prior.checkpoint!.sae, path.join(f.out, 'checkpoint'));
  if (!f.overwrite) {
    if (prior.checkpoint?.damaged && !f.resume) {
      // Not "a run at step 0" to --resume: resuming it fails on the same damage.
      throw new SaekitError(
        'ERR_SAEKIT_ARG',
        `--out ${f.out} holds a checkpoint that cannot be resumed (${prior.checkpoint.damaged.message}); pass --overwrite to start over (the old one is kept aside until the new run ends), or choose another --out`,
      );
    }
    if (prior.checkpoint && !f.resume) {
      throw new SaekitError(
        'ERR_SAEKIT_ARG',
        `--out ${f.out} already holds a training run (checkpoint at step ${prior.checkpoint.step}); pass --resume to continue it, --overwrite to start over, or choose another --out`,
      );
    }
    if (!prior.checkpoint && prior.saeFiles.length > 0) {
      throw new SaekitError('ERR_SAEKIT_ARG', `--out ${f.out} already holds an SAE (${prior.saeFiles.join(', ')}); pass --overwrite to replace it, or choose another --out`);
    }
    // With --resume and no checkpoint yet (a run stopped before its first), the log is that run's: the new run starts it over.
    if (f.log && !f.resume && ((await stat(f.log).catch(() => undefined))?.size ?? 0) > 0 && !(await isFolder(f.log))) {
      throw new SaekitError('ERR_SAEKIT_ARG', `--log ${f.log} already exists; pass --overwrite to replace it (a resumed run appends to its log, after dropping the lines of steps past its checkpoint), or choose another --log`);
    }
  }
  // --log names a file: a folder there is refused, never moved aside and deleted.
  if (f.log && (await isFolder(f.log))) throw new SaekitError('ERR_SAEKIT_ARG', `Expected --log to be a file but '${f.log}' is a folder`);
  const replaced = f.overwrite ? await moveAside([prior.checkpoint ? path.join(f.out, 'checkpoint') : undefined, f.log]) : [];
  if (f.resume && !prior.checkpoint) process.stderr.write(`saekit: no checkpoint in ${path.join(f.out, 'checkpoint')}: starting a new run${f.log ? ` (--log ${f.log} starts over)` : ''}\n`);
  if (resuming) {
    const ck = prior.checkpoint!;
    process.stderr.write(
      `saekit: resuming from step ${ck.step} (${ck.tokens.toLocaleString('en-US')} tokens) in ${path.join(f.out, 'checkpoint')}; ` +
        `re-reading the data up to there first\n`,
    );
  }
  return { resuming, replaced };
}

/**
 * --resume trains the checkpoint's SAE: the flags that size it (--latents or --expansion, --k)
 * and the data's row width must be its own. Named here as the flags they are (the Trainer's own
 * check names the SAE's fields, as a damaged checkpoint would).
 */
function checkResumedSae(f: TrainFlags, sae: { dIn: number; numLatents: number }, was: { dIn: number; numLatents: number; k: number }, dir: string): void {
  const wrong: string[] = [];
  if (sae.numLatents !== was.numLatents) {
    wrong.push(f.latents !== undefined ? `--latents ${f.latents}` : `--expansion ${f.expansion} (${sae.numLatents} latents)`);
  }
  if (f.k !== was.k) wrong.push(`--k ${f.k}`);
  if (sae.dIn !== was.dIn) wrong.push(`data of dIn ${sae.dIn}`);
  if (wrong.length === 0) return;
  throw new SaekitError(
    'ERR_SAEKIT_ARG',
    `Expected --latents ${was.numLatents} and --k ${was.k} on data of dIn ${was.dIn} to resume the checkpoint in ${dir} (the SAE it trained) but received ${wrong.join(', ')}; ` +
      'resume with the same SAE, pass --overwrite to start over, or choose another --out',
  );
}

/**
 * The activation files `paths` resolve to (globs and folders expanded as openActivations expands
 * them), as inputs that --log (a run appends to its log, and --overwrite moves it aside first) and
 * the files the run writes in --out must not be (checkNotInput compares by real path).
 */
async function dataInputs(paths: string[], dIn: number | undefined): Promise<OutInput[]> {
  const inputs: OutInput[] = [];
  for (const data of paths) inputs.push({ flag: '<data>', data, files: await resolveShardPaths(data, { dIn }) });
  return inputs;
}

/**
 * Checks that the files the run writes in --out (the SAE's files, and the checkpoint folder, which
 * --overwrite moves aside and each checkpoint writes into) are none of the activation files: with
 * --overwrite an input named sae_weights.safetensors in --out was replaced by the SAE, exit 0.
 */
async function checkOutNotInput(out: string, inputs: readonly OutInput[]): Promise<void> {
  for (const name of SAE_FILE_NAMES) await checkNotInput('--out', path.join(out, name), inputs);
  const ck = path.join(out, 'checkpoint');
  const ckNames = await namesOf(ck);
  for (const input of inputs) {
    if ('sae' in input) continue;
    for (const file of input.files) {
      for (const n of await namesOf(file)) {
        if (ckNames.some((c) => n === c || n.startsWith(c + path.sep))) {
          throw new SaekitError('ERR_SAEKIT_ARG', `Expected --out not to hold an input in its checkpoint folder but '${file}' (<data>) is in ${ck} (the run moves it aside or writes into it)`);
        }
      }
    }
  }
}

/**
 * Checks that --log is none of the files the run itself replaces (compared as checkNotInput
 * compares): the checkpoint folder's files, which each checkpoint renames over, and the SAE files
 * the run saves in --out. A log there was silently replaced by them at the end, exit status 0.
 */
async function checkLogNotOutput(log: string, out: string): Promise<void> {
  const logNames = await namesOf(log);
  for (const o of await namesOf(out)) {
    const ck = path.join(o, 'checkpoint');
    for (const l of logNames) {
      if (l === ck || l.startsWith(ck + path.sep)) {
        throw new SaekitError('ERR_SAEKIT_ARG', `Expected --log outside the run's checkpoint folder but '${log}' is in ${path.join(out, 'checkpoint')} (each checkpoint replaces the files there)`);
      }
      const name = path.basename(l);
      if (path.dirname(l) === o && (SAE_FILE_NAMES as readonly string[]).includes(name)) {
        throw new SaekitError('ERR_SAEKIT_ARG', `Expected --log not to be a file the run saves but '${log}' is the SAE's ${name} in --out ${out}`);
      }
    }
  }
}

/**
 * --overwrite: the earlier run's checkpoint and log (those of `paths` that exist) are moved aside
 * (name.replaced), not deleted, until the new run has ended; a run that fails first leaves them
 * there to be restored (see keptAside). Returns the names they were moved to.
 */
async function moveAside(paths: readonly (string | undefined)[]): Promise<string[]> {
  // A checkpoint folder a run is still writing to is refused first: moving it aside would not
  // stop that run, which would go on writing beside the new one.
  for (const p of paths) if (p !== undefined && path.basename(p) === 'checkpoint' && (await isFolder(p))) await (await lockFolder('--out', p)).release();
  const replaced: string[] = [];
  for (const p of paths) {
    if (p === undefined || !(await stat(p).catch(() => undefined))) continue;
    await rm(`${p}.replaced`, { recursive: true, force: true });
    await rename(p, `${p}.replaced`);
    replaced.push(`${p}.replaced`);
  }
  return replaced;
}

/**
 * After a run that ended (not failed): what moveAside moved is dropped, or put back (each
 * `name.replaced` to `name`, whatever the new run made there first: an empty log, its checkpoint
 * folder's lock) when the run trained no step and saved nothing (stopped while its first batch
 * was read), so the earlier run stands as it was. Returns whether it was put back.
 */
async function settleAside(replaced: readonly string[], result: FitResult): Promise<boolean> {
  const restore = replaced.length > 0 && result.steps === 0 && result.saved.length === 0;
  for (const p of replaced) {
    if (!restore) {
      await rm(p, { recursive: true, force: true });
      continue;
    }
    const name = p.slice(0, -'.replaced'.length);
    await rm(name, { recursive: true, force: true });
    await rename(p, name);
  }
  return restore;
}

/** Says where moveAside put the run being replaced, when the new run failed (stderr). */
function keptAside(replaced: readonly string[]): void {
  if (replaced.length) process.stderr.write(`saekit: the run being replaced is kept in ${replaced.join(', ')}\n`);
}

/** Whether `p` is a folder (false when it does not exist). */
async function isFolder(p: string): Promise<boolean> {
  return (await stat(p).catch(() => undefined))?.isDirectory() ?? false;
}

async function train(paths: string[], f: TrainFlags): Promise<void> {
  if ((f.latents === undefined) === (f.expansion === undefined)) {
    throw new SaekitError('ERR_SAEKIT_ARG', 'Expected exactly one of --latents N and --expansion E');
  }
  if (f.tokens !== undefined && f.epochs !== undefined) {
    throw new SaekitError('ERR_SAEKIT_ARG', 'Expected at most one of --tokens N and --epochs E but received both');
  }
  const source = await openActivations(paths.length === 1 ? paths[0]! : paths, { tensor: f.tensor, dtype: f.dtype, dIn: f.dIn, onNonFinite: f.onNonFinite });
  try {
    const inputs = await dataInputs(paths, f.dIn);
    if (f.log !== undefined) {
      await checkNotInput('--log', f.log, inputs);
      await checkLogNotOutput(f.log, f.out);
    }
    await checkOutNotInput(f.out, inputs);
    const numLatents = f.latents ?? Math.round(f.expansion! * source.dIn);
    if (f.latents === undefined && !(numLatents >= 1)) {
      throw new SaekitError('ERR_SAEKIT_ARG', `Expected --expansion of at least ${(0.5 / source.dIn).toPrecision(3)} (dIn ${source.dIn} x --expansion, rounded, is the number of latents) but received ${f.expansion}`);
    }
    if (f.latents === undefined && numLatents > MAX_LATENTS) {
      // Rounded down to 3 decimals, so the maximum shown is allowed.
      const most = Math.floor((MAX_LATENTS / source.dIn) * 1000) / 1000;
      throw new SaekitError('ERR_SAEKIT_ARG', `Expected --expansion of at most ${most} (dIn ${source.dIn} x --expansion, rounded, is the number of latents, at most ${MAX_LATENTS}) but received ${f.expansion}`);
    }
    using sae = SparseAutoencoder.create({ dIn: source.dIn, numLatents, k: f.k, seed: f.seed, device: f.device as DeviceOption, precision: f.precision });
    const opts: TrainerOptions = {
      batchSize: f.batch,
      ...(f.tokens !== undefined ? { totalTokens: f.tokens } : { epochs: f.epochs ?? 1 }),
      lr: f.lr ?? 'auto',
      warmupSteps: f.warmup,
      auxkAlpha: f.auxkAlpha,
      auxkVariant: f.auxkVariant,
      deadThresholdTokens: f.deadThreshold,
      decay: f.decay,
      bDecInit: f.bDecInit,
      normalize: f.normalize,
      seed: f.seed,
    };
    const trainer = new Trainer(sae, opts);
    const total = trainer.totalSteps(source) * f.batch;
    const outExisted = (await stat(f.out).catch(() => undefined)) !== undefined;
    const { replaced } = await prepareOutputs(f, { dIn: source.dIn, numLatents });
    process.stderr.write(
      `training a TopK SAE: dIn ${source.dIn}, ${numLatents} latents, k ${f.k}, ${total.toLocaleString('en-US')} tokens in batches of ${f.batch}` +
        ` (${source.numRows?.toLocaleString('en-US') ?? 'unknown'} rows in the data) -> ${f.out}\n`,
    );
    const progress = new Progress(total);
    const sig = abortOnSignal('after the current step');
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
    } catch (err) {
      keptAside(replaced);
      // A run that failed before writing anything leaves no empty folders behind (rmdir removes
      // only empty ones: a checkpoint, a log or a saved SAE keeps its folder).
      if (!outExisted) for (const d of [path.join(f.out, 'checkpoint'), f.out]) await rmdir(d).catch(() => undefined);
      throw err;
    } finally {
      sig.dispose();
      progress.done();
    }
    // Stopped before its first step, the new run replaced nothing: the earlier run's checkpoint
    // and log go back beside its SAE (deleting them left an SAE that only --overwrite could pass).
    const restored = await settleAside(replaced, result);
    if (result.resumedFrom && result.resumedFrom.step * f.batch >= total) {
      process.stderr.write(`saekit: the checkpoint was already at step ${result.resumedFrom.step}, at or past this run's ${total / f.batch} steps: nothing was trained (raise --tokens or --epochs to train longer)\n`);
    }
    const trained = result.tokens - (result.resumedFrom?.tokens ?? 0);
    const summary = {
      status: result.status,
      out: f.out,
      files: result.saved,
      steps: result.steps,
      tokens: result.tokens,
      // This run's tokens (a resumed run's total includes the checkpoint's).
      tokensTrained: trained,
      seconds: result.seconds,
      tokensPerSec: trained / Math.max(result.seconds, 1e-9),
      ...(result.last ? { fvu: result.last.fvu, l0: result.last.l0, deadFraction: result.last.deadFraction, loss: result.last.loss } : {}),
      scale: result.scale,
    };
    if (f.json) process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
    else {
      process.stdout.write(
        `${
          result.status === 'aborted'
            ? result.saved.length > 0
              ? 'stopped early; checkpoint and SAE saved (resume with --resume)'
              : restored
                ? 'stopped before the first step; nothing saved, and the earlier run it was replacing is back as it was'
                : 'stopped before the first step; nothing saved (run again to start afresh)'
            : result.status === 'exhausted'
              ? 'the data ended before --tokens'
              : 'done'
        }: ${result.steps} step${result.steps === 1 ? '' : 's'}, ` +
          `${result.tokens.toLocaleString('en-US')} tokens` +
          (result.resumedFrom ? ` (${trained.toLocaleString('en-US')} in this run)` : '') +
          ` in ${result.seconds.toFixed(1)} s` +
          (result.last ? `, fvu ${result.last.fvu.toFixed(4)}, L0 ${result.last.l0.toFixed(1)}, dead ${(100 * result.last.deadFraction).toFixed(2)}%` : '') +
          (result.saved.length > 0 ? `\nsaved ${result.saved.join(', ')}` : '') +
          '\n',
      );
    }
    reportSkipped(source);
    if (result.status === 'aborted') process.exitCode = sig.exitCode ?? STOP_SIGNALS.SIGINT;
  } finally {
    await source.close();
  }
}


interface DemoFlags {
  out?: string;
  overwrite?: boolean;
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
  if (f.out === '') throw argError('--out', 'a folder path', f.out);
  const prior = f.out !== undefined ? await priorRun(f.out) : undefined;
  if (prior && !f.overwrite && (prior.checkpoint || prior.saeFiles.length > 0)) {
    throw new SaekitError('ERR_SAEKIT_ARG', `--out ${f.out} already holds ${prior.checkpoint ? 'a training run' : `an SAE (${prior.saeFiles.join(', ')})`}; pass --overwrite to replace it, or choose another --out`);
  }
  const numRows = 1 << 16;
  const tokens = 1 << 21;
  const { source, features } = superposition({ dIn, numFeatures, firing: { kind: 'expected-active', n: 5 }, numRows, seed });
  process.stderr.write(
    `saekit demo: ${numFeatures} ground-truth features in superposition in ${dIn} dimensions (about 5 active per row);\n` +
      `training a TopK SAE with ${numLatents} latents, k ${k}, on ${tokens.toLocaleString('en-US')} tokens ` +
      `(${tokens / numRows} passes over ${numRows.toLocaleString('en-US')} synthetic rows)\n`,
  );
  using sae = SparseAutoencoder.create({ dIn, numLatents, k, seed: seed + 1 });
  const trainer = new Trainer(sae, { batchSize: 1024, totalTokens: tokens, lr: 2e-3, warmupSteps: 50, seed });
  // A train run's checkpoint in --out goes too, as with train --overwrite: a later train --resume
  // would continue that run beside the demo's SAE.
  const replaced = prior?.checkpoint && f.overwrite ? await moveAside([path.join(f.out!, 'checkpoint')]) : [];
  const progress = new Progress(tokens);
  const sig = abortOnSignal('after the current step');
  let result: FitResult;
  try {
    result = await trainer.fit(source, { signal: sig.signal, onStep: (s) => progress.update(s), ...(f.out !== undefined ? { saveDir: f.out } : {}) });
  } catch (err) {
    keptAside(replaced);
    throw err;
  } finally {
    sig.dispose();
    progress.done();
  }
  // As in train: stopped before its first step, the demo replaced nothing, so the checkpoint goes back.
  await settleAside(replaced, result);
  if (result.status === 'aborted') {
    process.exitCode = sig.exitCode ?? STOP_SIGNALS.SIGINT;
    process.stderr.write(`saekit demo: interrupted after ${result.tokens.toLocaleString('en-US')} of ${tokens.toLocaleString('en-US')} tokens; the numbers below are of the partly trained SAE\n`);
    if (!result.last) {
      await source.close();
      return;
    }
  }
  const w = await sae.weights();
  const t2l = (await mmcs(w.W_dec, features, { d: dIn, direction: 'truth-to-learned' })).mean;
  const l2t = (await mmcs(w.W_dec, features, { d: dIn, direction: 'learned-to-truth' })).mean;
  const m = (await mcc(w.W_dec, features, { d: dIn })).mean;
  const rows: [string, string][] = [
    ['MMCS truth -> learned', t2l.toFixed(4)],
    ['MMCS learned -> truth', l2t.toFixed(4)],
    ['MCC (one-to-one)', m.toFixed(4)],
    ['FVU', result.last!.fvu.toFixed(4)],
    ['L0', result.last!.l0.toFixed(2)],
    ['dead latents', `${(100 * result.last!.deadFraction).toFixed(2)}%`],
    ['tokens', result.tokens.toLocaleString('en-US')],
    ['time', `${result.seconds.toFixed(1)} s (${Math.round(result.tokens / result.seconds).toLocaleString('en-US')} tok/s)`],
    ...(f.out !== undefined ? ([['saved', result.saved.join(', ')]] as [string, string][]) : []),
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
  device: string;
  maxTokens: number;
  /** Undefined: evaluate()'s default (4096, fewer for rows wider than 65536 values). */
  batch?: number;
  json?: boolean;
  perLatent?: boolean;
  compat?: boolean;
  geometry: boolean;
  tensor?: string;
  dtype?: 'float32' | 'float16' | 'bfloat16' | 'float64';
  dIn?: number;
  onNonFinite: 'error' | 'skip';
}

async function evalCommand(saePath: string, paths: string[], f: EvalFlags, signal: AbortSignal): Promise<void> {
  using sae = await SparseAutoencoder.load(saePath, { device: f.device as DeviceOption });
  const source = await openActivations(paths.length === 1 ? paths[0]! : paths, { tensor: f.tensor, dtype: f.dtype, dIn: f.dIn, onNonFinite: f.onNonFinite });
  try {
    if (source.dIn !== sae.dIn) {
      throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected activations of dIn ${sae.dIn} (the SAE's, ${saePath}) but ${paths.join(', ')} hold rows of dIn ${source.dIn}`);
    }
    // FVU needs a variance: one token would print NaN metrics and exit 0 (as --max-tokens 1 is refused).
    const tooFew = (tokens: number, why: string) =>
      new SaekitError('ERR_SAEKIT_ARG', `Expected at least 2 rows to evaluate on (FVU needs a variance) but ${paths.join(', ')} ${tokens === 1 ? 'gives 1 row' : `give ${tokens} rows`}${why}`);
    if (source.numRows !== undefined && source.numRows < 2) throw tooFew(source.numRows, '');
    if (f.perLatent && !f.json) throw new SaekitError('ERR_SAEKIT_ARG', 'Expected --json with --per-latent (the per-latent arrays are printed in the JSON only)');
    process.stderr.write(`evaluating ${saePath} (${sae.architecture}, dIn ${sae.dIn}, ${sae.numLatents} latents) on up to ${f.maxTokens.toLocaleString('en-US')} tokens\n`);
    const total = Math.min(f.maxTokens, source.numRows ?? Infinity);
    const progress = new TokenProgress('evaluating', total);
    // The geometry runs after the last batch, O(latents^2 x dIn) with no progress of its own
    // (minutes at 65536 latents): say so, rather than leave a finished bar and silence.
    let geometrySaid = false;
    const onProgress = (t: number) => {
      progress.update(t);
      if (f.geometry && !geometrySaid && t >= total) {
        geometrySaid = true;
        progress.done();
        process.stderr.write(`computing the max-cosine geometry of the ${sae.numLatents} encoder and decoder rows (--no-geometry skips it)...\n`);
      }
    };
    let r;
    try {
      r = await evaluate(sae, source, { maxTokens: f.maxTokens, batchSize: f.batch, compat: Boolean(f.compat), geometry: f.geometry, onProgress, signal });
    } finally {
      progress.done();
    }
    reportSkipped(source);
    if (r.tokens < 2) throw tooFew(r.tokens, ' once the non-finite rows are skipped');
    // Rows without spread (all identical) leave FVU 0 / 0 too: NaN in the table, null in --json, exit 0.
    if (Number.isNaN(r.fvu)) {
      throw new SaekitError('ERR_SAEKIT_ARG', `Expected rows with some spread to evaluate on (FVU divides by their variance) but the ${r.tokens} rows read from ${paths.join(', ')} are all the same`);
    }
    const { feature_density: density, max_cos_enc: mce, max_cos_dec: mcd, log10_density_histogram: hist, ...scalars } = r;
    if (f.json) {
      // --per-latent: the arrays as plain JSON arrays (a typed array would print as an object).
      const perLatent = f.perLatent
        ? { feature_density: Array.from(density), ...(mce ? { max_cos_enc: Array.from(mce) } : {}), ...(mcd ? { max_cos_dec: Array.from(mcd) } : {}) }
        : {};
      process.stdout.write(`${JSON.stringify({ ...scalars, log10_density_histogram: hist, ...perLatent }, null, 2)}\n`);
      return;
    }
    const rows: [string, string][] = Object.entries(scalars)
      .filter(([, v]) => typeof v === 'number')
      .map(([k, v]) => [k, Number.isInteger(v) ? String(v) : (v as number).toPrecision(6)]);
    if (r.compat) for (const [k, v] of Object.entries(r.compat)) if (typeof v === 'number') rows.push([`${k} (compat)`, v.toPrecision(6)]);
    const width = Math.max(...rows.map(([a]) => a.length));
    for (const [a, b] of rows) process.stdout.write(`${a.padEnd(width)}  ${b}\n`);
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
    .showHelpAfterError('(run with --help for usage)')
    // commander keeps the command line it parsed as rawArgs (not in its typings).
    .hook('preAction', (_root, action) => {
      checkFlags(action, (program as unknown as { rawArgs: string[] }).rawArgs);
      checkRequired(action);
    });
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
    .option('--latents <n>', 'number of latents', num('latents', 1, MAX_LATENTS))
    .option('--expansion <e>', 'latents as a multiple of dIn', num('expansion', 0.01, 1 << 16, false))
    .option('--k <k>', 'active latents per row', num('k', 1, 1 << 16), 32)
    .addOption(requiredOption('--out <dir>', 'output folder (the SAE, plus checkpoint/); required'))
    .option('--batch <n>', 'rows per step', num('batch', 2, 1 << 24), 4096)
    .option('--tokens <n>', 'train on this many tokens', num('tokens', 1, Number.MAX_SAFE_INTEGER))
    .option('--epochs <n>', 'passes over the data (default 1 when --tokens is not given)', num('epochs', 1, 1 << 20))
    .option('--lr <lr>', "learning rate (default: 2e-4 / sqrt(latents / 2^14))", num('lr', 0, 10, false, true))
    .option('--warmup <steps>', 'linear warmup steps, at most 10% of the run', num('warmup', 0, 1 << 30), 1000)
    .option('--auxk-alpha <a>', 'AuxK loss weight (0 turns it off)', num('auxk-alpha', 0, 1e6, false), 1 / 32)
    .option('--auxk-variant <v>', "AuxK's form: 'sparsify' (the dead latents reconstruct the residual with b_dec, over the batch's variance) or 'paper' (Gao et al.'s: without b_dec, over the residual's variance)", oneOf('auxk-variant', AUXK_VARIANTS), 'sparsify')
    .option('--dead-threshold <tokens>', 'a latent is dead (AuxK revives it) after this many tokens without firing', num('dead-threshold', 0, Number.MAX_SAFE_INTEGER), 10_000_000)
    .option('--decay <d>', "learning-rate decay: 'linear' (to 0 over the last 20%), 'linear-after-warmup' (sparsify's) or 'none'", oneOf('decay', DECAYS), 'linear')
    .option('--b-dec-init <i>', "b_dec at the start: 'geometric-median' of the first batch, 'mean' or 'zeros'", oneOf('b-dec-init', B_DEC_INITS), 'geometric-median')
    .option('--precision <p>', "the encoder GEMM's precision on CUDA: 'bf16', 'tf32' or 'fp32' (the CPU always computes in fp32)", oneOf('precision', ['bf16', 'tf32', 'fp32'] as const), 'bf16')
    .option('--normalize <mode>', "'none' or 'expected-norm' (scale inputs to E||x|| = sqrt(dIn) while training; folded into the biases, so the saved SAE takes raw activations)", oneOf('normalize', ['none', 'expected-norm'] as const), 'none')
    .option('--format <f>', "'saelens' or 'sparsify'", oneOf('format', ['saelens', 'sparsify'] as const), 'saelens')
    .option('--seed <n>', 'seed of the initialisation and the data order', num('seed', 0, Number.MAX_SAFE_INTEGER), 0)
    .option('--resume', 'continue from <out>/checkpoint if present (same --batch, --seed and --normalize)')
    .option('--overwrite', 'replace an earlier run, SAE or log in <out> / --log (without it saekit refuses)')
    .option('--checkpoint-every <steps>', 'steps between checkpoints', num('checkpoint-every', 1, 1 << 30), 1000)
    .option('--log <file>', 'append every step as a JSON line (--resume first drops the lines of steps past the checkpoint)')
    .option('--device <d>', DEVICE_HELP, 'auto')
    .option('--tensor <name>', 'the tensor to read from .safetensors files (default: the only 2-D one, else the only one of more dimensions)')
    .option('--dtype <t>', 'element type of raw .bin files: float32, float16, bfloat16, float64')
    .option('--d-in <n>', 'row width of raw .bin files', num('d-in', 1, 1 << 24))
    .option('--on-non-finite <policy>', NON_FINITE_HELP, oneOf('on-non-finite', ['error', 'skip'] as const), 'error')
    .option('--json', 'print the final statistics as JSON on stdout')
    .addHelpText(
      'after',
      '\nExample:\n  saekit train acts/*.npy --latents 24576 --k 32 --out runs/l8 --tokens 100000000 --log runs/l8/log.jsonl\n' +
        '  (Ctrl-C or SIGTERM stops after the current step and saves, exiting 130 or 143; a second signal quits at once;\n' +
        '  run again with --resume to continue.)\n',
    )
    .action((paths: string[], f: TrainFlags) => train(paths, f));
  program
    .command('eval')
    .description('evaluate an SAE (SAELens, sparsify or Gemma Scope files) on activations: reconstruction, sparsity, geometry')
    .argument('<sae>', 'SAE folder or file')
    .argument('<data...>', 'activation files, folders or glob patterns')
    .option('--max-tokens <n>', 'tokens to evaluate on (at least 2: FVU needs a variance)', num('max-tokens', 2, Number.MAX_SAFE_INTEGER), 1_000_000)
    .option('--batch <n>', 'rows per batch (default 4096, fewer for rows wider than 65536 values)', num('batch', 1, 1 << 24))
    .option('--compat', 'also report the SAELens-legacy, SAEBench, sparsify and dictionary_learning variants (labelled)')
    .option('--no-geometry', 'skip the max-cosine geometry metrics')
    .option('--json', "print JSON: evaluate()'s scalar fields, compat and the density histogram (SAELens's names where it has the statistic; SAEBench's frac_alive is 1 - dead_fraction, its freq_over_1_percent / _10_percent are dense_fraction_1pct / _10pct); non-finite values are null")
    .option('--per-latent', 'with --json, also the per-latent arrays: feature_density and, unless --no-geometry, max_cos_enc and max_cos_dec (numLatents values each)')
    .option('--tensor <name>', 'the tensor to read from .safetensors files')
    .option('--dtype <t>', 'element type of raw .bin files')
    .option('--d-in <n>', 'row width of raw .bin files', num('d-in', 1, 1 << 24))
    .option('--on-non-finite <policy>', NON_FINITE_HELP, oneOf('on-non-finite', ['error', 'skip'] as const), 'error')
    .option('--device <d>', DEVICE_HELP, 'auto')
    .addHelpText('after', '\nExample:\n  saekit eval runs/l8 acts/val.npy --max-tokens 2000000 --json > eval.json\n' + STOP_HELP)
    .action((sae: string, paths: string[], f: EvalFlags) => stoppable((signal) => evalCommand(sae, paths, f, signal)));
  program
    .command('compare')
    .description('compare the features of two SAEs: correlation over tokens, matching, SVCCA and RSA of the matched decoder rows against shuffled baselines')
    .argument('<saeA>', 'first SAE folder or file')
    .argument('<saeB>', 'second SAE folder or file')
    .addOption(requiredOption('--data <src>', "activations for saeA (and saeB unless --data-b); required"))
    .option('--data-b <src>', "saeB's activations, aligned token by token with --data (another model on the same text): .npy or .safetensors files, a folder or a glob (raw files only for --data)")
    .option('--kind <k>', 'codes or preacts', oneOf('kind', ['codes', 'preacts'] as const), 'codes')
    .option('--method <m>', 'argmax, mutual or hungarian (hungarian needs the full correlation matrix within --max-bytes, see there; beyond it raise --max-bytes or use argmax or mutual, which work from top matches; the assignment holds another nA x nB x 8 bytes)', oneOf('method', ['argmax', 'mutual', 'hungarian'] as const), 'hungarian')
    .option('--threshold <r>', 'drop matched pairs with correlation below this (kept when r >= it; > under --compat)', num('threshold', -1, 1, false), 0.1)
    .option('--top <n>', 'for --method mutual: best buddies within the top n', num('top', 1, 1 << 20), 1)
    .option('--one-to-one', "for --method argmax: univ_feat_geom's 1-1 filter (of the B features sharing an A feature, only the lowest-numbered one keeps its pair; before --threshold)")
    .option('--compat <c>', "univ-feat-geom: correlations as that repository computes them, r (N - 1) / N, and pairs kept when r > --threshold, as it compares (labelled compat in the output)", oneOf('compat', ['univ-feat-geom'] as const))
    .option('--max-tokens <n>', 'tokens to correlate over', num('max-tokens', 2, Number.MAX_SAFE_INTEGER), 100_000)
    .option('--max-bytes <n>', 'largest full correlation matrix (nA x nB x 4 bytes, with --kind preacts nA x nB x 16, default 1 GiB); beyond it argmax and mutual use top matches per feature', num('max-bytes', 1, Number.MAX_SAFE_INTEGER))
    .option('--runs <n>', 'shuffled baselines for the p-values', num('runs', 1, 100000), 20)
    .option('--max-pairs <n>', `SVCCA and RSA use a random subsample of at most this many matched pairs (RSA is O(n^2) in time and memory; reported as similarity_pairs)`, num('max-pairs', 3, 30_000), DEFAULT_MAX_PAIRS)
    .option(
      '--svcca-max-work <n>',
      `the most multiply-adds SVCCA and its shuffled baselines may take (default ${SVCCA_MAX_WORK.toExponential(0)}, several seconds); SVCCA needs more pairs than dimensions, about 30 x dIn^3 multiply-adds at least, so above dIn ~400 it is skipped unless this is raised (the skip message says how far)`,
      num('svcca-max-work', 1, Number.MAX_SAFE_INTEGER, false),
    )
    .option('--on-non-finite <policy>', `${NON_FINITE_HELP} (skip only with one --data: two sources must stay aligned)`, oneOf('on-non-finite', ['error', 'skip'] as const), 'error')
    .option('--tensor <name>', 'the tensor to read from --data\'s .safetensors files (default: the only 2-D one, else the only one of more dimensions)')
    .option('--dtype <t>', 'element type of raw .bin files of --data')
    .option('--d-in <n>', 'row width of raw .bin files of --data (--data-b may differ: it must be self-describing, .npy or .safetensors)', num('d-in', 1, 1 << 24))
    .option('--tensor-b <name>', 'the tensor to read from --data-b\'s .safetensors files (default: the only 2-D one, else the only one of more dimensions)')
    .option('--json', 'print the summary as JSON')
    .option('--out <file>', 'also write the summary and every matched pair as JSON')
    .option('--overwrite', 'replace an existing --out file (never an input)')
    .option('--device <d>', `${DEVICE_HELP}; the correlation runs there too`, 'auto')
    .addHelpText('after', '\nExample:\n  saekit compare runs/seed1 runs/seed2 --data acts/val.npy --method hungarian --json\n' + STOP_HELP)
    .action((a: string, b: string, f: CompareFlags) => stoppable((signal) => compare(a, b, f, signal)));
  program
    .command('match-layers')
    .description('SAE Match: data-free matching of the latents of consecutive SAEs (e.g. adjacent layers)')
    .argument('<sae...>', 'SAE folders or files, in layer order')
    .option('--encoder', 'also match on the (folded) encoder parameters')
    .option('--no-fold', 'match the JumpReLU weights as they are, without folding the thresholds into them (needed when a threshold is 0)')
    .option('--max-bytes <n>', "the most memory each assignment may take, about 12 bytes per pair of latents (default half the machine's memory)", num('max-bytes', 1, Number.MAX_SAFE_INTEGER))
    .option('--json', 'print a JSON summary')
    .option('--out <file>', 'write every permutation as JSON')
    .option('--overwrite', 'replace an existing --out file (never an input)')
    .option('--device <d>', DEVICE_HELP, 'auto')
    .addHelpText('after', '\nExample:\n  saekit match-layers runs/l6 runs/l7 runs/l8 --out perms.json\n' + STOP_HELP + '  (The assignment solver itself cannot be interrupted: a first signal takes effect when it returns.)\n')
    .action((paths: string[], f: MatchLayersFlags) => stoppable((signal) => matchLayers(paths, f, signal)));
  program
    .command('demo')
    .description('train an SAE on built-in synthetic data with known features and report how well it recovers them')
    .option('--out <dir>', 'also save the trained SAE here (SAELens layout)')
    .option('--overwrite', 'replace an SAE or a training run already in --out (its checkpoint too, as train --overwrite does)')
    .option('--seed <n>', 'seed of the data and the initialisation', num('seed', 0, 2 ** 31), 0)
    .option('--json', 'print the results as JSON on stdout')
    .addHelpText('after', '\nExample:\n  saekit demo --out runs/demo\n  (Ctrl-C or SIGTERM stops training after the current step and reports on the SAE so far, exiting 130 or 143; a second signal quits at once.)\n')
    .action((f: DemoFlags) => demo(f));
  return program;
}

async function main(): Promise<void> {
  // A reader that stops early (`saekit eval ... | head`) is not an error.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw err;
  });
  try {
    await buildProgram().parseAsync(process.argv);
  } catch (err) {
    if (err instanceof SaekitError) {
      process.stderr.write(`saekit: ${cliMessage(err.message)} [${err.code}]\n`);
      process.exitCode = 1;
      return;
    }
    // A system error (a path that cannot be read or written): one line, not a stack trace.
    const code = (err as NodeJS.ErrnoException | undefined)?.code;
    if (err instanceof Error && typeof code === 'string' && /^E[A-Z]+$/.test(code)) {
      process.stderr.write(`saekit: ${err.message} [${code}]\n`);
      process.exitCode = 1;
      return;
    }
    throw err;
  }
}

void main();
