/**
 * The addon must run on any x86-64 CPU with SSE4.2: on an emulated Nehalem (no AVX, no FMA) it
 * loads, dispatches to the baseline kernels and computes the same results. Needs qemu-user
 * (`apt-get install qemu-user`; .ci/run installs it); skipped where it is missing.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { backend } from '../lib/index.js';
import { cpuProblem, elfProblem, packageRoot } from '../lib/native/index.js';
import { escapeRe } from './helpers/child.js';

// Not under AddressSanitizer (native/tools/sanitize.sh preloads it): the guest's shadow-memory
// reservation drives qemu-user's resident size past 20 GB until the OOM killer ends it.
const qemu = spawnSync('qemu-x86_64', ['--version']).status === 0 && !/asan/.test(process.env.LD_PRELOAD ?? '');
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
  const full: NodeJS.ProcessEnv = { ...process.env, ...env };
  // A core type forced for this machine's OpenBLAS (OPENBLAS_CORETYPE=Haswell where 0.3.21 does
  // not know the host's Zen 5) would run AVX2 kernels on the emulated Nehalem: let it detect.
  if (emulate) delete full.OPENBLAS_CORETYPE;
  const out = execFileSync(cmd, args, { env: full, encoding: 'utf8', timeout: 240_000 });
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

describe('elfProblem on crafted headers (each field it reads, at its bounds)', () => {
  /** An ELF header (64 bytes, or 52 for class 1) and program header table as the ELF spec lays them out, little-endian unless data is 2. */
  function elf(o: { cls?: number; data?: number; phoff?: number; phentsize?: number; phnum?: number; phdrs?: { type: number; offset: number; filesz: number; memsz?: number }[]; size?: number }): Buffer {
    const { cls = 2, data = 1, phoff = 64, phentsize = 56 } = o;
    const phdrs = o.phdrs ?? [];
    const phnum = o.phnum ?? phdrs.length;
    const len = o.size ?? Math.max(64, phoff + phdrs.length * 56);
    const b = Buffer.alloc(Math.max(len, 64 + phdrs.length * 56 + phoff));
    b.writeUInt32BE(0x7f454c46, 0);
    b[4] = cls;
    b[5] = data;
    b[6] = 1;
    const le = data !== 2;
    const u16 = (v: number, at: number) => (le ? b.writeUInt16LE(v, at) : b.writeUInt16BE(v, at));
    const u64 = (v: number, at: number) => (le ? b.writeBigUInt64LE(BigInt(v), at) : b.writeBigUInt64BE(BigInt(v), at));
    u16(3, 16); // ET_DYN
    u16(62, 18); // EM_X86_64
    u64(phoff, 32);
    u16(64, 52); // e_ehsize
    u16(phentsize, 54);
    u16(phnum, 56);
    u16(64, 58); // e_shentsize
    phdrs.forEach((p, i) => {
      const at = phoff + i * 56;
      le ? b.writeUInt32LE(p.type, at) : b.writeUInt32BE(p.type, at);
      u64(p.offset, at + 8);
      u64(p.filesz, at + 32);
      u64(p.memsz ?? p.filesz, at + 40);
    });
    return b.subarray(0, len);
  }
  let dir = '';
  const check = (name: string, bytes: Buffer) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, bytes);
    return elfProblem(f)?.replace(`${f} is damaged: `, '');
  };
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'saekit-elf-crafted-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('a well-formed file passes; its loadable segments bound the size (p_offset + p_filesz, not p_memsz: .bss is not in the file)', () => {
    const phdrs = [
      { type: 6, offset: 64, filesz: 3 * 56 }, // PT_PHDR
      { type: 1, offset: 0, filesz: 4000 },
      { type: 1, offset: 4000, filesz: 1000, memsz: 90_000 }, // .data + .bss
    ];
    expect(check('ok.so', elf({ phdrs, size: 5000 }))).toBeUndefined();
    expect(check('short.so', elf({ phdrs, size: 4999 }))).toBe('truncated (4999 bytes, its segments need 5000)');
    // Segments other than PT_LOAD are not mapped from the file: a PT_NULL entry's fields mean nothing.
    expect(check('null.so', elf({ phdrs: [...phdrs, { type: 0, offset: 2 ** 40, filesz: 2 ** 40 }], size: 5000 }))).toBeUndefined();
    expect(check('note.so', elf({ phdrs: [...phdrs, { type: 4, offset: 6000, filesz: 100 }], size: 5000 }))).toBeUndefined();
  });

  it('the header is 64 bytes: one byte short is truncated, 64 goes on to the program headers', () => {
    const whole = elf({ phdrs: [{ type: 1, offset: 0, filesz: 300 }], size: 300 });
    expect(check('h63.so', whole.subarray(0, 63))).toBe('truncated (63 bytes, shorter than an ELF header)');
    expect(check('h64.so', whole.subarray(0, 64))).toBe('truncated (64 bytes, its program headers end at 120)');
  });

  it('the program header table: cut one byte short of its end is named so; cut at its end, the segments are', () => {
    const whole = elf({ phoff: 200, phdrs: [{ type: 1, offset: 0, filesz: 1000 }, { type: 1, offset: 1000, filesz: 24 }], size: 1024 });
    expect(check('whole.so', whole)).toBeUndefined();
    expect(check('t311.so', whole.subarray(0, 311))).toBe('truncated (311 bytes, its program headers end at 312)');
    expect(check('t312.so', whole.subarray(0, 312))).toBe('truncated (312 bytes, its segments need 1024)');
  });

  it('entries of another size than Elf64_Phdr (56 bytes) are damage; a file without program headers (an object file, e_phentsize 0) is left to the loader', () => {
    expect(check('ent32.so', elf({ phentsize: 32, phdrs: [{ type: 1, offset: 0, filesz: 100 }], size: 200 }))).toBe('program header entries of 32 bytes (expected 56)');
    expect(check('rel.o', elf({ phentsize: 0, phnum: 0, size: 64 }))).toBeUndefined();
  });

  it('not little-endian ELF64 (ELFCLASS32, or big-endian) is left to the loader, whatever follows', () => {
    // A whole 32-bit header is 52 bytes: no "shorter than an ELF header" for it.
    expect(check('elf32.so', elf({ cls: 1, size: 52 }))).toBeUndefined();
    expect(check('elf32-long.so', elf({ cls: 1, phdrs: [{ type: 1, offset: 0, filesz: 9000 }], size: 200 }))).toBeUndefined();
    expect(check('be.so', elf({ data: 2, phdrs: [{ type: 1, offset: 0, filesz: 9000 }], size: 200 }))).toBeUndefined();
    // The same layout little-endian is damaged: the two checks above are what let those through.
    expect(check('le.so', elf({ phdrs: [{ type: 1, offset: 0, filesz: 9000 }], size: 200 }))).toBe('truncated (200 bytes, its segments need 9000)');
  });
});
