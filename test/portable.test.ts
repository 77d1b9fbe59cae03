/**
 * The addon must run on any x86-64 CPU with SSE4.2: on an emulated Nehalem (no AVX, no FMA) it
 * loads, dispatches to the baseline kernels and computes the same results. Needs qemu-user
 * (`apt-get install qemu-user`; .ci/run installs it); skipped where it is missing.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { backend } from '../lib/index.js';
import { cpuProblem, elfProblem, packageRoot } from '../lib/native/index.js';
import { escapeRe } from './helpers/child.js';

const qemu = spawnSync('qemu-x86_64', ['--version']).status === 0;
const fixture = path.join(packageRoot, 'test', 'fixtures', 'portable-check.mjs');

interface Result {
  simd: string;
  blas: string;
  maxRelErr: number;
  f16: number[];
  bf16: number[];
  randn: number[];
  losses: number[];
  codes: number;
}

function run(env: NodeJS.ProcessEnv, emulate: boolean): Result {
  const cmd = emulate ? 'qemu-x86_64' : process.execPath;
  const args = emulate ? ['-cpu', 'Nehalem', process.execPath, fixture, packageRoot] : [fixture, packageRoot];
  const out = execFileSync(cmd, args, { env: { ...process.env, ...env }, encoding: 'utf8', timeout: 240_000 });
  return JSON.parse(out.trim().split('\n').pop()!);
}

describe.runIf(qemu)('portable binary (emulated SSE4.2-only CPU)', () => {
  for (const blas of ['builtin', 'default'] as const) {
    it(`runs the baseline kernels with ${blas} GEMM and matches the native run`, () => {
      const env = blas === 'builtin' ? { SAEKIT_BLAS: 'builtin' } : {};
      const emulated = run(env, true);
      const here = run(env, false);
      expect(emulated.simd).toBe('sse4.2');
      if (blas === 'builtin' || !backend.info().blas.linked) expect(emulated.blas).toBe('builtin');
      // float32 GEMM error bound relative to sum |a b| (K = 33): K * 2^-24 is ~2e-6.
      expect(emulated.maxRelErr).toBeLessThan(33 * 2 ** -24);
      expect(emulated.f16).toEqual(here.f16);
      expect(emulated.bf16).toEqual(here.bf16);
      expect(emulated.f16.slice(0, 3)).toEqual([0x3e00, 0x7c00, 0x0002]);
      // Philox bits are identical; Box-Muller goes through libm in float64 on both: equal.
      expect(emulated.randn).toEqual(here.randn);
      // The SAE step on the baseline kernels (no FMA) agrees with the native run to rounding.
      emulated.losses.forEach((l, i) => expect(Math.abs(l - here.losses[i]!) / here.losses[i]!).toBeLessThan(1e-4));
      expect(emulated.losses[2]!).toBeLessThan(emulated.losses[0]!);
      expect(emulated.codes).toBe(37 * 3);
    });
  }
});

describe('a CPU without SSE4.2 or POPCNT is refused before the addon loads (it would die of SIGILL)', () => {
  // Flags as Linux prints them: a QEMU qemu64 guest, and one with everything the addon needs.
  const qemu64 = 'fpu de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx lm rep_good nopl xtopology cpuid tsc_known_freq pni cx16 x2apic hypervisor lahf_lm cmp_legacy 3dnowprefetch vmmcall';
  const entry = (flags: string) => `processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: QEMU Virtual CPU version 2.5+\nflags\t\t: ${flags}\nbugs\t\t:\n\nprocessor\t: 1\nflags\t\t: ${flags} sse4_2 popcnt\n`;

  it('names what is missing, from the first processor', () => {
    expect(cpuProblem(entry(qemu64))).toMatch(/^this CPU lacks sse4_2 and popcnt \(per \/proc\/cpuinfo\); saekit needs an x86-64 CPU with SSE4.2 and POPCNT.*-cpu host/);
    expect(cpuProblem(entry(`${qemu64} popcnt`))).toMatch(/^this CPU lacks sse4_2 \(/);
    expect(cpuProblem(entry(`${qemu64} sse4_1 sse4_2`))).toMatch(/^this CPU lacks popcnt \(/);
    // A flag's name inside another one does not count (sse4_2 is not in 'sse4_2x').
    expect(cpuProblem(entry(`${qemu64} sse4_2x popcntx`))).toMatch(/lacks sse4_2 and popcnt/);
  });

  it('accepts a CPU with both, and says nothing without a flags line', () => {
    expect(cpuProblem(entry(`${qemu64} sse4_1 sse4_2 popcnt avx2`))).toBeUndefined();
    expect(cpuProblem('processor\t: 0\nmodel name\t: ?\n')).toBeUndefined();
    expect(cpuProblem('')).toBeUndefined();
  });

  it.runIf(process.platform === 'linux' && process.arch === 'x64')('this machine passes (the suite runs here)', async () => {
    const fs = await import('node:fs');
    expect(cpuProblem(fs.readFileSync('/proc/cpuinfo', 'latin1'))).toBeUndefined();
  });
});

describe('a shared library cut short is refused before it is loaded (the loader would die of SIGBUS)', () => {
  const addon = path.join(packageRoot, 'build', 'Release', 'saekit.node');

  it.runIf(fs.existsSync(addon))('the built addon passes; copies cut at random points name the file and both sizes', () => {
    expect(elfProblem(addon)).toBeUndefined();
    const whole = fs.readFileSync(addon);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'saekit-elf-'));
    try {
      // (Cuts within the loadable segments: the symbol tables and section headers at the end are not loaded.)
      const cuts = [64 + Math.floor(Math.random() * 1000), Math.floor(whole.length * (0.1 + 0.5 * Math.random()))];
      for (const n of cuts) {
        const f = path.join(dir, `cut-${n}.node`);
        fs.writeFileSync(f, whole.subarray(0, n));
        expect(elfProblem(f), `cut at ${n} of ${whole.length}`).toMatch(new RegExp(`^${escapeRe(f)} is damaged: truncated \\(${n} bytes, its (program headers end at|segments need) \\d+\\)$`));
      }
      // Cut inside the program header table (it starts at 64 in any linker's output).
      fs.writeFileSync(path.join(dir, 'table.node'), whole.subarray(0, 100));
      expect(elfProblem(path.join(dir, 'table.node'))).toMatch(/is damaged: truncated \(100 bytes, its program headers end at \d+\)$/);
      // Cut inside the header itself, and not ELF at all: the header is short, or the loader explains.
      fs.writeFileSync(path.join(dir, 'head.node'), whole.subarray(0, 40));
      expect(elfProblem(path.join(dir, 'head.node'))).toMatch(/is damaged: truncated \(40 bytes, shorter than an ELF header\)$/);
      fs.writeFileSync(path.join(dir, 'text.node'), 'not a shared library');
      expect(elfProblem(path.join(dir, 'text.node'))).toBeUndefined();
      expect(elfProblem(path.join(dir, 'missing.node'))).toBeUndefined();
      // The same file grown by trailing bytes is fine.
      fs.writeFileSync(path.join(dir, 'long.node'), Buffer.concat([whole, Buffer.alloc(100)]));
      expect(elfProblem(path.join(dir, 'long.node'))).toBeUndefined();
      // At the exact end of the loadable segments (max p_offset + p_filesz of PT_LOAD): whole is fine, one byte short is not.
      const phoff = Number(whole.readBigUInt64LE(32));
      let need = 0;
      for (let i = 0; i < whole.readUInt16LE(56); i++) {
        const at = phoff + i * 56;
        if (whole.readUInt32LE(at) === 1) need = Math.max(need, Number(whole.readBigUInt64LE(at + 8) + whole.readBigUInt64LE(at + 32)));
      }
      fs.writeFileSync(path.join(dir, 'exact.node'), whole.subarray(0, need));
      expect(elfProblem(path.join(dir, 'exact.node'))).toBeUndefined();
      fs.writeFileSync(path.join(dir, 'short.node'), whole.subarray(0, need - 1));
      expect(elfProblem(path.join(dir, 'short.node'))).toBe(`${path.join(dir, 'short.node')} is damaged: truncated (${need - 1} bytes, its segments need ${need})`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
