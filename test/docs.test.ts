/**
 * The documents against the code: what the README and docs/architecture.md name must exist, and
 * what the code offers (error codes, environment variables) must be named there.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { packageRoot } from '../lib/native/index.js';

const read = (p: string) => readFileSync(path.join(packageRoot, p), 'utf8');

describe('README', () => {
  it('names every error code SaekitError can carry', () => {
    const codes = [...read('lib/errors.ts').matchAll(/\|\s*'(ERR_SAEKIT_[A-Z_]+)'/g)].map((m) => m[1]!);
    expect(codes.length).toBeGreaterThan(5);
    const readme = read('README.md');
    expect(codes.filter((c) => !readme.includes(`\`${c}\``))).toEqual([]);
  });
});

describe('environment variables', () => {
  it("the README's table names every SAEKIT_ variable the code reads", () => {
    const names = new Set<string>();
    const walk = (dir: string) => {
      for (const e of readdirSync(path.join(packageRoot, dir), { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) walk(p);
        else if (/\.(ts|cpp|cu|h|cuh)$/.test(e.name)) {
          const src = read(p);
          for (const m of src.matchAll(/getenv\("(SAEKIT_[A-Z0-9_]+)"\)|process\.env\.(SAEKIT_[A-Z0-9_]+)/g)) names.add(m[1] ?? m[2]!);
        }
      }
    };
    for (const dir of ['lib', 'native/core', 'native/cpu', 'native/napi', 'native/cuda']) walk(dir);
    expect(names.size).toBeGreaterThan(10);
    const table = read('README.md').split('## Environment variables')[1]!.split('\n## ')[0]!;
    expect([...names].filter((n) => !table.includes(`| \`${n}`) && !table.includes(`, \`${n}`)).sort()).toEqual([]);
  });

  it('each checked variable at an end of its range (or on its list) is taken without a warning; one past that end, or off its list, is warned and named', () => {
    // Loads the addon from lib/ in a fresh process (the check runs once, when it loads) and prints the warnings.
    const warnings = (env: Record<string, string>) => {
      const script = `import { backend } from ${JSON.stringify(path.join(packageRoot, 'lib', 'index.ts'))};\nbackend.info();\n`;
      const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: packageRoot, encoding: 'utf8', env: { ...process.env, ...env } });
      expect(r.status, r.stderr).toBe(0);
      return [...r.stderr.matchAll(/\[SAEKIT_ENV\] Warning: (SAEKIT_[A-Z_]+)='/g)].map((m) => m[1]).sort();
    };
    // A lower or an upper end of each range (cli.test.ts checks SAEKIT_NUM_THREADS=1024 and 1025 through dist/); an empty value is unset.
    expect(warnings({ SAEKIT_NUM_THREADS: '1', SAEKIT_SIMD: '', SAEKIT_BLAS: 'builtin', SAEKIT_CUDA: '1', SAEKIT_TILE_BYTES: '1024', SAEKIT_TILE_ROWS: String(2 ** 30), SAEKIT_IO_THREADS: '64' })).toEqual([]);
    const past = { SAEKIT_NUM_THREADS: '0', SAEKIT_SIMD: 'sse4.2', SAEKIT_BLAS: 'mkl', SAEKIT_CUDA: '2', SAEKIT_TILE_BYTES: '1023', SAEKIT_TILE_ROWS: String(2 ** 30 + 1), SAEKIT_IO_THREADS: '65' };
    expect(warnings(past)).toEqual(Object.keys(past).sort());
  });

  it('SAEKIT_IO_THREADS: a value the warning calls ignored is ignored natively too (atoi took "3x" as 3)', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-io-threads-'));
    try {
      const file = path.join(dir, 'a.npy');
      // Reads one batch (starting the I/O threads), then prints the process's thread count.
      const script =
        `import { io, openActivations } from ${JSON.stringify(path.join(packageRoot, 'lib', 'index.ts'))};\n` +
        `import { readFileSync } from 'node:fs';\n` +
        `await io.writeNpy(${JSON.stringify(file)}, { dtype: 'float32', shape: [64, 4], data: new Float32Array(256) });\n` +
        `const s = await openActivations(${JSON.stringify(file)});\n` +
        `for await (const b of s.batches({ batchSize: 8 })) break;\n` +
        `await s.close();\n` +
        `console.log(/^Threads:\\s+(\\d+)/m.exec(readFileSync('/proc/self/status', 'utf8'))[1]);\n`;
      const threads = (v: string) => {
        const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
          cwd: packageRoot,
          encoding: 'utf8',
          env: { ...process.env, SAEKIT_IO_THREADS: v },
        });
        expect(r.status, r.stderr).toBe(0);
        return { threads: Number(r.stdout.trim()), stderr: r.stderr };
      };
      const three = threads('3');
      const four = threads('4');
      expect(four.threads - three.threads).toBe(1);
      expect(three.stderr).not.toMatch(/SAEKIT_ENV/);
      // 3x: ignored (with a warning), so the default count, not 3: the same as another invalid value.
      const bad = threads('3x');
      expect(bad.stderr).toMatch(/SAEKIT_IO_THREADS='3x' is ignored: expected an integer between 1 and 64/);
      expect(bad.threads).toBe(threads('0').threads);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('SAEKIT_NUM_THREADS: a value the warning calls ignored ("+N") is ignored natively too (strtol took "+3" as 3)', () => {
    const script = `import { backend } from ${JSON.stringify(path.join(packageRoot, 'lib', 'index.ts'))};\nconst i = backend.info();\nconsole.log(JSON.stringify([i.threads, i.hardwareThreads]));\n`;
    const run = (v: string) => {
      const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: packageRoot, encoding: 'utf8', env: { ...process.env, SAEKIT_NUM_THREADS: v } });
      expect(r.status, r.stderr).toBe(0);
      const [threads, hardware] = JSON.parse(r.stdout.trim()) as [number, number];
      return { threads, hardware, stderr: r.stderr };
    };
    const taken = run('3');
    expect(taken.threads).toBe(3);
    expect(taken.stderr).not.toMatch(/SAEKIT_ENV/);
    const n = taken.hardware === 5 ? 6 : 5; // a count other than the default
    const plus = run(`+${n}`);
    expect(plus.stderr).toMatch(new RegExp(`SAEKIT_NUM_THREADS='\\+${n}' is ignored`));
    expect(plus.threads).toBe(plus.hardware);
  });
});

describe('docs/architecture.md', () => {
  it("lib/ keeps the import order it states: every module listed, every import (dynamic ones too) to a lower level", () => {
    const doc = read('docs/architecture.md');
    const rule = /Import order in `lib\/`[\s\S]*?`([^`]+)`/.exec(doc)![1]!;
    const level = new Map<string, number>();
    rule.split('<-').forEach((group, i) => {
      for (const m of group.split(',')) level.set(m.trim(), i);
    });
    const moduleOf = (file: string) => path.relative(path.join(packageRoot, 'lib'), file).split(path.sep)[0]!.replace(/\.(ts|js)$/, '');
    const wrong: string[] = [];
    const walk = (dir: string) => {
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) walk(p);
        else if (e.name.endsWith('.ts')) {
          const from = moduleOf(p);
          if (!level.has(from)) wrong.push(`${from} is not in the rule`);
          for (const m of readFileSync(p, 'utf8').matchAll(/\bfrom\s+'(\.[^']+)'|import\(\s*'(\.[^']+)'\s*\)/g)) {
            const to = moduleOf(path.resolve(path.dirname(p), m[1] ?? m[2]!));
            // sae/ reaches io/sae-files through a dynamic import: io is below sae, so that is allowed too.
            if (to !== from && !((level.get(to) ?? Infinity) < (level.get(from) ?? -Infinity))) wrong.push(`${path.relative(packageRoot, p)} imports ${to}`);
          }
        }
      }
    };
    walk(path.join(packageRoot, 'lib'));
    expect([...new Set(wrong)]).toEqual([]);
  });

});

describe('docs/references.md', () => {
  it('has a section for every "docs/references.md §N" the README and the sources cite (the package ships it in docs/)', () => {
    const refs = readFileSync(path.join(packageRoot, 'docs', 'references.md'), 'utf8');
    const sections = new Set([...refs.matchAll(/^#{2,3} (\d+(?:\.\d+)?)\.? /gm)].map((m) => m[1]!));
    const cited = new Map<string, string>();
    const walk = (dir: string): string[] => readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(path.join(dir, e.name)) : e.name.endsWith('.ts') ? [path.join(dir, e.name)] : []));
    for (const file of [path.join(packageRoot, 'README.md'), ...walk(path.join(packageRoot, 'lib'))]) {
      const text = readFileSync(file, 'utf8');
      expect(text, file).not.toMatch(/\bmethods\.md\b/);
      // "docs/references.md §1.4-§1.6, §9": each § after the name, up to the end of the clause.
      for (const m of text.matchAll(/docs\/references\.md((?:[ ,;-]*(?:and )?§\d+(?:\.\d+)?)+)/g)) {
        for (const s of m[1]!.matchAll(/§(\d+(?:\.\d+)?)/g)) cited.set(s[1]!, path.relative(packageRoot, file));
      }
    }
    expect(cited.size).toBeGreaterThan(10);
    for (const [s, file] of cited) expect(sections.has(s), `§${s} cited in ${file}`).toBe(true);
  });
});
