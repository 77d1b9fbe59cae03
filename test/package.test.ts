/**
 * The package as a consumer gets it: the published files, the declarations (.d.ts) a TypeScript
 * user compiles against, and the README's TypeScript examples compiled against them. The
 * declarations are emitted here from lib/ with tsconfig.build.json's options (so they match what
 * `npm run build:ts` puts in dist/ even when dist/ is stale), then used from a throwaway consumer
 * project that imports 'saekit' through the package's `exports`.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { packageRoot } from '../lib/native/index.js';

const pkg = JSON.parse(readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { main: string; types: string; bin: Record<string, string> };

/**
 * Known gaps (none now). Each entry must still be a gap: the test says when one is fixed, so it
 * leaves the list.
 */
const KNOWN_UNDOCUMENTED: string[] = [];
/** Exported signatures that use a type a consumer cannot name. */
const KNOWN_UNNAMEABLE: string[] = [];
/** Classes whose constructor is @internal (stripped from the .d.ts): `new X()` compiles for a consumer. */
const KNOWN_IMPLICIT_CONSTRUCTOR: string[] = [];

let dir: string;
let consumer: string;
let distDir: string;
/** One strict consumer program: the README's examples, `using` on every disposable export, and `new Tensor()`. */
let program: ts.Program;
let diagnostics: string[];

/** Declarations for the names README snippets leave to the reader, by a pattern of the snippet. */
const ELIDED: [RegExp, string][] = [
  [/for \(const batch of batches\)/, 'declare const batches: Float32Array[];\ndeclare const x: Float32Array;'],
  [/\.fit\(source\)/, "import type { ActivationSource } from 'saekit';\ndeclare const source: ActivationSource;"],
  [/await opt\.step\(b\.data\)/, "import type { AdamOptimizer } from 'saekit';\ndeclare const opt: AdamOptimizer;"],
  [/batcher\.encode\(x\b/, 'declare const x: Float32Array;'],
];

let readmeSnippets = 0;

beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'saekit-package-'));
  consumer = path.join(dir, 'consumer');
  const installed = path.join(consumer, 'node_modules', 'saekit');
  distDir = path.join(installed, 'dist');
  mkdirSync(distDir, { recursive: true });
  cpSync(path.join(packageRoot, 'package.json'), path.join(installed, 'package.json'));
  writeFileSync(path.join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));

  const config = ts.getParsedCommandLineOfConfigFile(path.join(packageRoot, 'tsconfig.build.json'), {}, {
    ...ts.sys,
    onUnRecoverableConfigFileDiagnostic: (d) => {
      throw new Error(ts.flattenDiagnosticMessageText(d.messageText, '\n'));
    },
  })!;
  const emitted = ts
    .createProgram(config.fileNames, { ...config.options, outDir: distDir, noEmit: false, emitDeclarationOnly: true, declarationMap: false, sourceMap: false })
    .emit();
  expect(emitted.emitSkipped).toBe(false);

  const readme = readFileSync(path.join(packageRoot, 'README.md'), 'utf8');
  const snippets = [...readme.matchAll(/^```ts\n([\s\S]*?)^```/gm)].map((m) => m[1]!);
  readmeSnippets = snippets.length;
  const files = snippets.map((code, i) => {
    const prelude = ELIDED.filter(([re]) => re.test(code)).map(([, decl]) => decl).join('\n');
    const file = path.join(consumer, `readme-${i + 1}.ts`);
    writeFileSync(file, `${prelude}\n${code}\nexport {};\n`);
    return file;
  });
  files.push(path.join(consumer, 'types.ts'));
  writeFileSync(files.at(-1)!, [
    "import { tensor, type Tensor } from 'saekit';",
    '// tensor() types its result with the dtype the runtime picks (no annotation to infer D from):',
    '// an Int32Array is int32 by default, other data float32, options.dtype wins.',
    'const i32 = tensor(new Int32Array([1, 2]));',
    'const i32Values: Int32Array = await i32.toArray();',
    'const f32 = tensor([[1, 2], [3, 4]]);',
    'const f32Values: Float32Array = await f32.toArray();',
    "const f64 = tensor(new Float64Array(2), [2], { device: 'cpu' });",
    'const f64Values: Float32Array = await f64.toArray();',
    "const bf = tensor(new Uint16Array(2), [2], { dtype: 'bfloat16' });",
    'const bfValues: Uint16Array = await bf.toArray();',
    "const asInt = tensor(new Float32Array([1, 2]), undefined, { dtype: 'int32' });",
    'const asIntValues: Int32Array = await asInt.toArray();',
    "declare const someOptions: { dtype?: 'float16' };",
    'const any16: Tensor = tensor(new Float32Array(2), [2], someOptions);',
    'void i32Values; void f32Values; void f64Values; void bfValues; void asIntValues; void any16;',
    '// Where the runtime takes float32 tensors only (ERR_SAEKIT_DTYPE otherwise), so do the types.',
    "import { ops, SparseAutoencoder } from 'saekit';",
    'const sae = SparseAutoencoder.create({ dIn: 2, numLatents: 4, k: 1 });',
    'await ops.matmul(f32, f32);',
    '// @ts-expect-error a bfloat16 tensor',
    'await ops.matmul(bf, f32);',
    '// @ts-expect-error an int32 out',
    'await ops.matmul(f32, f32, { out: i32 });',
    'await sae.encode(f32);',
    '// @ts-expect-error an int32 tensor of rows',
    'await sae.encode(i32);',
    '// @ts-expect-error a bfloat16 weight',
    "SparseAutoencoder.fromWeights({ W_enc: bf, b_enc: f32, W_dec: f32, b_dec: f32 }, { k: 1 });",
    'export {};',
  ].join('\n'));
  files.push(path.join(consumer, 'using.ts'), path.join(consumer, 'construct.ts'));
  writeFileSync(files.at(-2)!, [
    "import { randn, SparseAutoencoder, Trainer, fromArray, metrics, type SyntheticCodes, type features } from 'saekit';",
    'using t = randn([4, 8], { seed: 1 });',
    'using sae = SparseAutoencoder.create({ dIn: 8, numLatents: 16, k: 2 });',
    'using opt = sae.adam();',
    'using pb = opt.prefetch(await t.toArray());',
    'using trainer = new Trainer(sae, { batchSize: 4, totalTokens: 4 });',
    'await trainer.fit(fromArray(await t.toArray(), 8));',
    'const codes: metrics.CooccurrenceCodes = await sae.encode(t);',
    'const m: features.Matrix = new Float64Array(4);',
    'declare const s: SyntheticCodes;',
    'void codes; void m; void s; void pb;',
    'export {};',
  ].join('\n'));
  writeFileSync(files.at(-1)!, "import { Tensor } from 'saekit';\nnew Tensor();\nexport {};\n");
  program = ts.createProgram(files, {
    strict: true,
    // The strictest consumer settings: optional properties that are absent, not undefined, and
    // indexed reads that may be undefined, must both hold for the declarations and the examples.
    exactOptionalPropertyTypes: true,
    noUncheckedIndexedAccess: true,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
    lib: ['lib.es2022.d.ts', 'lib.esnext.disposable.d.ts'],
    types: ['node'],
    typeRoots: [path.join(packageRoot, 'node_modules', '@types')],
    skipLibCheck: false,
    noEmit: true,
  });
  diagnostics = ts.getPreEmitDiagnostics(program).map((d) => {
    const where = d.file ? `${path.relative(consumer, d.file.fileName)}:${d.file.getLineAndCharacterOfPosition(d.start ?? 0).line + 1}: ` : '';
    return where + ts.flattenDiagnosticMessageText(d.messageText, '\n');
  });
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('the package as a dependency', () => {
  it("every TypeScript example of the README compiles against the package's declarations (strict), and `using` works on its types", () => {
    expect(readmeSnippets).toBeGreaterThanOrEqual(5);
    expect(diagnostics.filter((d) => !d.startsWith('construct.ts:') && !d.startsWith('types.ts:'))).toEqual([]);
  });

  it("tensor()'s result type has the dtype the runtime gives it (an Int32Array makes an int32 tensor); float32-only parameters take Tensor<'float32'>", async () => {
    expect(diagnostics.filter((d) => d.startsWith('types.ts:'))).toEqual([]);
    const { tensor } = await import('../lib/index.js');
    using t = tensor(new Int32Array([1, 2]));
    expect(t.dtype).toBe('int32');
    expect(await t.toArray()).toBeInstanceOf(Int32Array);
  });

  it('new Tensor() does not compile for a consumer (tensors come from tensor(), zeros(), randn(), rand())', () => {
    expect(diagnostics.filter((d) => d.startsWith('construct.ts:'))).toEqual([expect.stringMatching(/^construct.ts:2: Constructor of class 'Tensor.*' is private/)]);
  });

  it('the public surface: every export documented, every type it uses nameable, no any', () => {
    const checker = program.getTypeChecker();
    const ours = (d: ts.Node): boolean => d.getSourceFile().fileName.startsWith(distDir);
    const resolve = (s: ts.Symbol): ts.Symbol => (s.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(s) : s);
    const reachable = new Set<ts.Node>();
    const exported: [string, ts.Symbol][] = [];
    const undocumented: string[] = [];
    const walk = (module: ts.Symbol, prefix: string): void => {
      for (const e of checker.getExportsOfModule(module)) {
        const s = resolve(e);
        const decls = s.declarations ?? [];
        for (const d of decls) reachable.add(d);
        if (decls.some((d) => ts.isSourceFile(d))) {
          walk(s, `${prefix}${e.name}.`);
          continue;
        }
        exported.push([prefix + e.name, s]);
        if (!ts.displayPartsToString(s.getDocumentationComment(checker)).trim()) undocumented.push(prefix + e.name);
      }
    };
    walk(checker.getSymbolAtLocation(program.getSourceFile(path.join(distDir, 'index.d.ts'))!)!, '');
    expect(exported.length).toBeGreaterThan(100);

    const unnameable = new Set<string>();
    const anys = new Set<string>();
    const implicitConstructor: string[] = [];
    const visit = (node: ts.Node, owner: string): void => {
      if (ts.isTypeReferenceNode(node) || ts.isExpressionWithTypeArguments(node)) {
        const id = ts.isTypeReferenceNode(node) ? node.typeName : node.expression;
        const sym = checker.getSymbolAtLocation(id);
        for (const d of sym ? resolve(sym).declarations ?? [] : []) {
          if (ours(d) && !reachable.has(d) && !ts.isTypeParameterDeclaration(d)) unnameable.add(`${owner}: ${resolve(sym!).name}`);
        }
      }
      if (node.kind === ts.SyntaxKind.AnyKeyword) anys.add(owner);
      ts.forEachChild(node, (c) => visit(c, owner));
    };
    for (const [name, s] of exported) {
      for (const d of s.declarations ?? []) {
        visit(d, name);
        if (ts.isClassDeclaration(d) && !d.members.some(ts.isConstructorDeclaration)) implicitConstructor.push(name);
      }
    }
    const gaps = (found: Iterable<string>, known: string[]) => ({
      unexpected: [...found].filter((x) => !known.includes(x)),
      fixed: known.filter((x) => ![...found].includes(x)),
    });
    // `fixed` lists entries of a KNOWN_ list that are no longer gaps: remove them from the list.
    expect(gaps(undocumented, KNOWN_UNDOCUMENTED)).toEqual({ unexpected: [], fixed: [] });
    expect(gaps(unnameable, KNOWN_UNNAMEABLE)).toEqual({ unexpected: [], fixed: [] });
    expect(gaps(implicitConstructor, KNOWN_IMPLICIT_CONSTRUCTOR)).toEqual({ unexpected: [], fixed: [] });
    expect([...anys]).toEqual([]);
  });

  it('lib has no top-level await (require(esm) on Node >= 20.19 refuses a module graph with one)', () => {
    const config = ts.getParsedCommandLineOfConfigFile(path.join(packageRoot, 'tsconfig.build.json'), {}, { ...ts.sys, onUnRecoverableConfigFileDiagnostic: () => {} })!;
    expect(config.fileNames.length).toBeGreaterThan(20);
    const found: string[] = [];
    for (const file of config.fileNames) {
      const sf = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.ES2022, true);
      const visit = (node: ts.Node): void => {
        if (ts.isFunctionLike(node) || ts.isClassStaticBlockDeclaration(node)) return;
        if (ts.isAwaitExpression(node) || (ts.isForOfStatement(node) && node.awaitModifier)) {
          found.push(`${path.relative(packageRoot, sf.fileName)}:${sf.getLineAndCharacterOfPosition(node.getStart()).line + 1}`);
        }
        ts.forEachChild(node, visit);
      };
      visit(sf);
    }
    expect(found).toEqual([]);
  });

  it('no npm script is an accidental pre/post hook of another (a "prebuild" ran prebuildify on every `npm run build`)', () => {
    const scripts = (pkg as unknown as { scripts: Record<string, string> }).scripts;
    const hooks = Object.keys(scripts).filter((n) => /^(pre|post)/.test(n) && n.replace(/^(pre|post)/, '') in scripts);
    expect(hooks).toEqual([]);
  });

  it("a copy whose install script never ran (npm 12 blocks it until the project approves saekit) fails at load naming `npm approve-scripts saekit` then `npm rebuild saekit`; a damaged binary does not get that advice", () => {
    // Checked by hand with npm 12.2.2: `npm install <saekit tarball>` ends with "install scripts
    // blocked", `npm rebuild saekit` is blocked too, and after `npm approve-scripts saekit` the
    // rebuild compiles the addon.
    const copy = path.join(dir, 'unbuilt');
    mkdirSync(copy);
    cpSync(path.join(packageRoot, 'lib'), path.join(copy, 'lib'), { recursive: true });
    cpSync(path.join(packageRoot, 'package.json'), path.join(copy, 'package.json'));
    symlinkSync(path.join(packageRoot, 'node_modules'), path.join(copy, 'node_modules'));
    writeFileSync(
      path.join(copy, 'child.mts'),
      "import { native } from './lib/native/index.js';\n" +
        'try { native(); console.log(JSON.stringify({ loaded: true })); } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }\n',
    );
    const env = { ...process.env };
    delete env.SAEKIT_PREBUILD;
    const load = () => {
      const r = spawnSync(process.execPath, ['--import', 'tsx', 'child.mts'], { cwd: copy, encoding: 'utf8', env });
      expect(r.status, r.stderr).toBe(0);
      return JSON.parse(r.stdout.trim().split('\n').pop()!) as { loaded?: true; code?: string; message?: string };
    };
    const unbuilt = load();
    expect(unbuilt.code).toBe('ERR_SAEKIT_NATIVE');
    expect(unbuilt.message).toMatch(/No native build was found/);
    expect(unbuilt.message).toMatch(/blocked[^\n]*run `npm approve-scripts saekit`[^\n]*then `npm rebuild saekit`/);
    // A binary that is there but truncated: its damage is the cause, and approving scripts is no fix.
    mkdirSync(path.join(copy, 'build', 'Release'), { recursive: true });
    writeFileSync(path.join(copy, 'build', 'Release', 'saekit.node'), readFileSync(path.join(packageRoot, 'build', 'Release', 'saekit.node')).subarray(0, 40));
    const damaged = load();
    expect(damaged.code).toBe('ERR_SAEKIT_NATIVE');
    expect(damaged.message).toMatch(/saekit\.node is damaged: truncated/);
    expect(damaged.message).not.toMatch(/approve-scripts/);
    expect(damaged.message).toMatch(/run `npm rebuild saekit`/);
  });

  it('npm pack publishes what an install needs and nothing of the repository besides', () => {
    const r = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: packageRoot, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const [info] = JSON.parse(r.stdout) as { size: number; unpackedSize: number; files: { path: string }[] }[];
    const files = info!.files.map((f) => f.path);
    const outside = files.filter((f) => !/^(dist|lib|native|prebuilds|docs)\//.test(f) && !['package.json', 'README.md', 'binding.gyp', 'CMakeLists.txt', 'LICENSE'].includes(f));
    expect(outside).toEqual([]);
    expect(files.filter((f) => /(^|\/)(test|fixtures|bench|build|build-cuda[^/]*|\.gpu|\.scratch)\//.test(f) || f.endsWith('.node'))).toEqual([]);
    // What node-gyp needs to build the addon from source, and the CUDA plugin's build.
    const sources = spawnSync(process.execPath, ['native/tools/sources.cjs', 'base'], { cwd: packageRoot, encoding: 'utf8' }).stdout.trim().split(/\s+/);
    for (const f of ['LICENSE', 'binding.gyp', 'CMakeLists.txt', 'native/tools/sources.cjs', 'native/tools/blas-config.cjs', ...sources]) expect(files, f).toContain(f);
    // Every source CMakeLists.txt needs unconditionally is published (the bench is optional).
    const cmake = readFileSync(path.join(packageRoot, 'CMakeLists.txt'), 'utf8').replace(/^if\(EXISTS[\s\S]*?^endif\(\)/gm, '');
    for (const [src] of cmake.matchAll(/\b[\w/]+\.(?:cu|cpp)\b/g)) expect(files, `CMakeLists.txt uses ${src}`).toContain(src);
    // The documents the README links to.
    for (const [, link] of readFileSync(path.join(packageRoot, 'README.md'), 'utf8').matchAll(/\]\((?!https?:|#)([^)]+)\)/g)) expect(files, `README links ${link}`).toContain(link);
    // dist/ (when built) holds the entry points package.json names.
    if (files.some((f) => f.startsWith('dist/'))) {
      for (const f of [pkg.main, pkg.types, ...Object.values(pkg.bin)]) expect(files).toContain(path.posix.normalize(f));
    }
    expect(info!.size).toBeLessThan(2 * 1024 * 1024);
  });
});
