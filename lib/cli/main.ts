#!/usr/bin/env node
/**
 * The `saekit` command. Every subcommand is a thin call into the library; results go to stdout
 * (JSON with --json), logs and progress to stderr.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';

import { Command } from 'commander';

import { backend, SaekitError } from '../index.js';
import { packageRoot } from '../native/index.js';

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
    ['cuda', info.cuda.available ? 'available' : `not available: ${info.cuda.reason}`],
  ];
  const width = Math.max(...rows.map(([k]) => k.length));
  for (const [k, v] of rows) process.stdout.write(`${k.padEnd(width)}  ${v}\n`);
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
    .action((opts: { json?: boolean }) => printInfo(Boolean(opts.json)));
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
