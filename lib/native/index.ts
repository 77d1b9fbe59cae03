/**
 * Loads the saekit addon (saekit.node) and declares its surface. Nothing else in lib/ touches
 * the addon directly. The CPU backend is always inside the addon; the CUDA backend is a plugin
 * that the addon loads only when asked (see docs/architecture.md).
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMainThread } from 'node:worker_threads';

import { SaekitError } from '../errors.js';

/** Raw element types as the addon spells them. */
export type NativeDType = 'float32' | 'bfloat16' | 'float16' | 'int32';

/** The addon's tensor handle (native/napi/tensor_wrap.h). */
export interface NativeTensor {
  readonly dtype: NativeDType;
  readonly shape: number[];
  readonly device: string;
  readonly nbytes: number;
  readonly disposed: boolean;
  dispose(): void;
  toArray(): Promise<Float32Array | Uint16Array | Int32Array>;
  to(dtype: NativeDType): Promise<NativeTensor>;
  /** A copy on device 'cpu' or 'cuda:N' (same dtype). */
  toDevice(device: string): Promise<NativeTensor>;
}

export interface NativeInfo {
  backend: 'cpu';
  threads: number;
  hardwareThreads: number;
  simd: 'scalar' | 'sse4.2' | 'avx2' | 'avx512';
  cpuFeatures: string[];
  blas: { name: string; version: string; coretype?: string; config?: string; linked: boolean; reason?: string; eigen: 'lapack' | 'builtin' };
  cuda: { available: boolean; reason: string; devices: string[]; loopback: boolean; attempts: { path: string; outcome: string }[] };
  napiVersion: number;
  encoderTile: { bytes: number; rows: number };
}

/** The addon's SAE handle (native/napi/sae_wrap.cpp). Weights use the SAELens orientation. */
export interface NativeSaeWeights {
  W_enc: Float32Array;
  b_enc: Float32Array;
  W_dec: Float32Array;
  b_dec: Float32Array;
  threshold?: Float32Array;
}
export interface NativeSae {
  readonly disposed: boolean;
  dispose(): void;
  weights(): Promise<NativeSaeWeights>;
  encode(x: Float32Array | NativeTensor, batchInvariant?: boolean, keepOverflow?: boolean): Promise<{ values: Float32Array; indices: Int32Array; k: number }>;
  decode(values: Float32Array, indices: Int32Array, rows: number): Promise<Float32Array>;
  forward(x: Float32Array | NativeTensor): Promise<{ values: Float32Array; indices: Int32Array; k: number; recon: Float32Array; fvu: number }>;
  preActivations(x: Float32Array | NativeTensor): Promise<Float32Array>;
  gradients(
    x: Float32Array | NativeTensor,
    deadMask: Uint8Array | null,
    alpha: number,
    variant?: 'sparsify' | 'paper',
  ): Promise<NativeSaeWeights & { loss: number; fvu: number; auxkLoss: number }>;
  sinceFired(): Promise<Float64Array>;
  setWeight(name: 'W_enc' | 'b_enc' | 'W_dec' | 'b_dec', values: Float32Array): void;
  setSinceFired(counts: Float64Array): void;
  /** Rejects, in queue order, as a training step would on decoder rows off unit norm. */
  checkUnitRows(): Promise<void>;
  normalizeDecoder(): Promise<number>;
  adam(lr: number, beta1: number, beta2: number, eps: number): NativeAdam;
  /** Moves the parameters to device `index` of the table backend.info() resolved (queued). */
  toDevice(index: number, precision: 'fp32' | 'tf32' | 'bf16'): Promise<void>;
}
/** A batch copied out of JS by NativeAdam.prefetch (opaque). */
export type NativePrefetched = { readonly __saekitPrefetched: unique symbol };

export interface NativeAdam {
  readonly steps: number;
  /** borrow: x stays untouched until the step that uses it ends; an allocPinned array is then not copied. */
  prefetch(x: Float32Array, scale?: number, borrow?: boolean): NativePrefetched;
  dropPrefetched(batch: NativePrefetched): void;
  /** Page-locked memory that a borrowed prefetch uploads where it lies; undefined without a device that prefetches. */
  allocPinned(bytes: number): ArrayBuffer | undefined;
  prefetchCounts(): { copied: number; borrowed: number };
  canPin(): boolean;
  state(): Promise<{ m: Float32Array; v: Float32Array; t: number }>;
  /** The moments as ArrayBuffers (a slab may be longer than any typed array). */
  state(buffers: true): Promise<{ m: ArrayBuffer; v: ArrayBuffer; t: number }>;
  /** m and v: one Float32Array of the slab's length, or pieces whose lengths add up to it. */
  setState(m: Float32Array | Float32Array[], v: Float32Array | Float32Array[], t: number): void;
  readonly disposed: boolean;
  dispose(): void;
  step(
    x: Float32Array | NativeTensor | NativePrefetched,
    lr: number,
    auxkAlpha: number,
    deadThresholdTokens: number,
    auxkVariant?: 'sparsify' | 'paper',
  ): Promise<{
    loss: number;
    fvu: number;
    auxkLoss: number;
    l0: number;
    numDead: number;
    seconds: { gemm: number; select: number; decode: number; backward: number; update: number };
  }>;
}
export interface NativeSaeStatics {
  create(dIn: number, numLatents: number, k: number, seed: bigint): NativeSae;
  fromWeights(
    W_enc: Float32Array | NativeTensor,
    b_enc: Float32Array | NativeTensor,
    W_dec: Float32Array | NativeTensor,
    b_dec: Float32Array | NativeTensor,
    dIn: number,
    numLatents: number,
    k: number,
    architecture?: 'topk' | 'jumprelu',
    applyBDecToInput?: boolean,
    threshold?: Float32Array,
  ): {
    handle: NativeSae;
    /** Present when a weight is a Tensor: settles once the tensors are read (queued); rejects on NaN or infinity. */
    read?: Promise<void>;
  };
}

/** An opaque store of two sides' sparse codes (native/napi/features_wrap.cpp); one run each. */
export interface NativeSparseCorrStore {
  readonly __sparseCorrStore: unique symbol;
}
/** An opaque linear assignment being filled (native/napi/features_wrap.cpp); one run each. */
export interface NativeLap {
  readonly __lap: unique symbol;
}
/** Native memory staged for a spectrum job (native/napi/spectrum_wrap.cpp); one job takes it. */
export interface NativeSpectrumStage {
  readonly __spectrumStage: unique symbol;
}
/** The symmetric eigensolver: LAPACK's dsyevd when linked ('auto' unless SAEKIT_BLAS=builtin), or the built-in one. */
export type NativeEigenSolver = 'auto' | 'lapack' | 'builtin';
/** What sparseCorrRun resolves to (native/cpu/sparse_corr.h). */
export interface NativeSparseCorrResult {
  tokens: number;
  constantA: Uint8Array;
  constantB: Uint8Array;
  activeA: Float64Array;
  activeB: Float64Array;
  /** [nA, nB] when run with full = true. */
  r?: Float32Array;
  kTop: number;
  kRev: number;
  /** [nB, kTop] best A features of each B feature, best first (ties: lower index). */
  topIndex?: Int32Array;
  topR?: Float32Array;
  /** [nA, kRev] best B features of each A feature (reverse = true). */
  revIndex?: Int32Array;
  revR?: Float32Array;
}

/** The addon's exports (native/napi/addon.cpp, ops.cpp, sae_wrap.cpp, features_wrap.cpp). */
export interface NativeBinding {
  info(pluginCandidates: string[]): NativeInfo;
  setThreads(threads: number): number;
  stats(): { submitted: number; completed: number; pendingInThisThread: number };
  /** `device`: 'cpu' (the default) or 'cuda:N', resolved by lib/backend. */
  fromArray(data: Float32Array | Uint16Array | Int32Array, shape: readonly number[], raw: NativeDType, dtype: NativeDType, device?: string): NativeTensor;
  zeros(shape: readonly number[], dtype: NativeDType, device?: string): NativeTensor;
  random(shape: readonly number[], dtype: NativeDType, kind: 'uniform' | 'normal', seed: bigint, stream: bigint, device?: string): NativeTensor;
  matmul(a: NativeTensor, b: NativeTensor, transA: boolean, transB: boolean): Promise<NativeTensor>;
  matmul(a: NativeTensor, b: NativeTensor, transA: boolean, transB: boolean, out: NativeTensor): Promise<undefined>;
  NativeSae: NativeSaeStatics;
  /** True when a[start, end) holds a NaN or an infinity (synchronous, vectorised). */
  anyNonFinite(a: Float32Array, start: number, end: number): boolean;
  /**
   * dst[at + j d, +d) = src[slots[first + j] d, +d) for j < count, on saekit's I/O threads (a
   * Uint16Array src holds srcDtype bits and is converted); src rows and the dst range must stay
   * untouched until it settles, and neither buffer may be transferred meanwhile: a plain
   * ArrayBuffer transferred and then collected is freed under the job, which still writes into it
   * (only allocHost memory is kept until the job ends).
   */
  gatherRows(src: Float32Array | Uint16Array, slots: Uint32Array, first: number, count: number, dst: Float32Array, at: number, d: number, srcDtype?: 'bfloat16' | 'float16'): Promise<void>;
  /** Uninitialised native memory (2 MiB aligned, transparent huge pages when large). */
  allocHost(bytes: number): ArrayBuffer;
  /**
   * Gives the physical pages of a large allocHost buffer back to the system now; the buffer stays
   * valid (reads as zeros, faults pages in again when written). False, doing nothing, for other buffers.
   */
  discardHost(buffer: ArrayBuffer): boolean;
  /**
   * Marks the whole 2 MiB pages inside `buffer`'s memory for transparent huge pages (first writes
   * fault once per 2 MiB). False where nothing was marked.
   */
  adviseHugePages(buffer: ArrayBuffer): boolean;
  /**
   * Reads `count` little-endian elements of srcDtype at byte `position` of the open file `fd`
   * on saekit's I/O threads, converts them into dst[dstOffset, +count) and resolves to whether any
   * value is non-finite. Rejects (code ERR_SAEKIT_FORMAT, message 'truncated') if the file ends first.
   * dst must not be transferred until it settles (as for gatherRows).
   */
  readRows(fd: number, position: number, count: number, srcDtype: 'float32' | 'float16' | 'bfloat16' | 'float64', dst: Float32Array, dstOffset: number): Promise<boolean>;
  /**
   * As readRows for `rows` rows of dIn values, row r landing at dst[slots[slotFirst + r] * dIn, +dIn).
   * A Uint16Array dst receives the file's bfloat16/float16 bits unconverted (screened on their bits).
   */
  readRowsToSlots(
    fd: number,
    position: number,
    rows: number,
    dIn: number,
    srcDtype: 'float32' | 'float16' | 'bfloat16' | 'float64',
    dst: Float32Array | Uint16Array,
    slots: Uint32Array,
    slotFirst: number,
  ): Promise<boolean>;
  /**
   * Takes an exclusive advisory lock (flock) on the open file `fd` without waiting: 'busy' when
   * another open of the file holds it (this process's or another's), 'unsupported' where the file
   * system has none. Held until fd is closed; the system drops it when the process dies.
   */
  lockFile(fd: number): 'locked' | 'busy' | 'unsupported';
  /**
   * Synchronous conversion between typed arrays on the calling thread (float16/bfloat16 as raw
   * Uint16Array bits; float32 <-> bfloat16/float16 round to nearest even). Lengths must match.
   */
  convertInto(
    src: Float32Array | Uint16Array | Int32Array,
    srcDtype: NativeDType,
    dst: Float32Array | Uint16Array | Int32Array,
    dstDtype: NativeDType,
  ): void;
  /** A store for the codes of two SAEs over the same tokens; the reserve arguments pre-allocate (tokens, nonzeros per side). */
  sparseCorrCreate(nA: number, nB: number, reserveRows: number, reserveA: number, reserveB: number): NativeSparseCorrStore;
  /** Copies one batch of codes ([rows, kA] and [rows, kB], any k), dropping zeros; returns the tokens held. Synchronous. */
  sparseCorrAppend(store: NativeSparseCorrStore, valuesA: Float32Array, indicesA: Int32Array, valuesB: Float32Array, indicesB: Int32Array, rows: number): number;
  /** Pearson r from the store (full matrix, or top matches) on 'cpu' (default) or a CUDA device ('cuda:N'); consumes the store. */
  sparseCorrRun(store: NativeSparseCorrStore, full: boolean, top: number, reverse: boolean, device?: string, scale?: number, maxWorkBytes?: number): Promise<NativeSparseCorrResult>;
  /** Frees a store's codes now (a correlation that failed before its run); idempotent. */
  sparseCorrFree(store: NativeSparseCorrStore): void;
  /** Reserves an exact linear assignment over a [rows, cols] cost (float64 work matrix, native memory). */
  lapCreate(rows: number, cols: number, maximize: boolean): NativeLap;
  /**
   * Copies the next whole rows of the cost (from rowStart, which must be the rows held so far),
   * checking each value (finite, |v| <= 1e300; errors name `${name}[i]`); returns the rows held. Synchronous.
   */
  lapAppend(lap: NativeLap, values: Float32Array | Float64Array, rowStart: number, name: string): number;
  /** Solves off the JS thread once every row is in; resolves to rowToCol (-1 unassigned). Consumes the lap. */
  lapRun(lap: NativeLap): Promise<Int32Array>;
  /** Frees a lap's buffer now (a caller giving up before lapRun); idempotent. */
  lapFree(lap: NativeLap): void;
  /** Native memory for spectrum inputs, filled piece by piece with spectrumStageWrite (one job takes it). */
  spectrumStage(dtype: 'float32' | 'float64', length: number): NativeSpectrumStage;
  /** Copies src into stage[offset, offset + src.length) synchronously. */
  spectrumStageWrite(stage: NativeSpectrumStage, src: Float32Array | Float64Array, offset: number): void;
  /** Eigenvalues (descending) of the column-centred covariance of a float32 [n, d] stage; takes the stage. */
  decoderSpectrum(stage: NativeSpectrumStage, n: number, d: number, solver: NativeEigenSolver): Promise<Float64Array>;
  /** Eigenvalues (descending) of the symmetric part of a float64 [d, d] stage; takes the stage. */
  symmetricEigenvalues(stage: NativeSpectrumStage, d: number, solver: NativeEigenSolver): Promise<Float64Array>;
  /** The status the process exits with (from the 'exit' event), for the native exit drain. */
  _noteExitCode(code: number): void;
  _philox(counter: Uint32Array, key: Uint32Array): Uint32Array;
  _gemmDirect(
    impl: 'blas' | 'builtin',
    transA: boolean,
    transB: boolean,
    M: number,
    N: number,
    K: number,
    A: Float32Array,
    B: Float32Array,
    C: Float32Array,
    alpha?: number,
    beta?: number,
  ): void;
  /** Test hook: a pool of `threads` runs `tasks` tasks that all throw (kind 'memory', 'format' or other); sets out.ran and out.again, then rethrows. */
  _poolFault(threads: number, tasks: number, kind: string, out: { ran?: number; again?: number }): void;
}

/** The package root: lib/native/ (sources) and dist/native/ (compiled) are both two levels down. */
export const packageRoot: string = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

let binding: NativeBinding | undefined;

/** The environment variables saekit reads, with the values each accepts (documented in the README). */
const ENV_VALUES: Record<string, { valid: (v: string) => boolean; expected: string }> = {
  SAEKIT_NUM_THREADS: { valid: (v) => /^\d+$/.test(v) && Number(v) >= 1 && Number(v) <= 1024, expected: 'an integer between 1 and 1024' },
  SAEKIT_SIMD: { valid: (v) => ['scalar', 'sse42', 'avx2', 'avx512'].includes(v), expected: 'one of scalar, sse42, avx2, avx512' },
  SAEKIT_BLAS: { valid: (v) => v === 'builtin' || v === 'openblas', expected: "'builtin', 'openblas' (or unset)" },
  SAEKIT_CUDA: { valid: (v) => v === '0' || v === '1', expected: "'0' (no CUDA) or '1'" },
  SAEKIT_TILE_BYTES: { valid: (v) => /^\d+$/.test(v) && Number(v) >= 1024 && Number(v) <= 2 ** 36, expected: 'an integer number of bytes between 1024 and 2^36' },
  SAEKIT_TILE_ROWS: { valid: (v) => /^\d+$/.test(v) && Number(v) >= 1 && Number(v) <= 2 ** 30, expected: 'an integer between 1 and 2^30' },
  SAEKIT_IO_THREADS: { valid: (v) => /^\d+$/.test(v) && Number(v) >= 1 && Number(v) <= 64, expected: 'an integer between 1 and 64' },
};

/**
 * Warns once (process warning SAEKIT_ENV) about a saekit environment variable whose value the
 * native side would ignore: a typo there otherwise changes nothing without a word.
 */
function checkEnvironment(): void {
  for (const [name, { valid, expected }] of Object.entries(ENV_VALUES)) {
    const v = process.env[name];
    if (v !== undefined && v !== '' && !valid(v)) {
      process.emitWarning(`${name}='${v.length > 40 ? `${v.slice(0, 40)}...` : v}' is ignored: expected ${expected}`, { code: 'SAEKIT_ENV' });
    }
  }
}

/**
 * Why this CPU cannot run the addon, from the text of /proc/cpuinfo, or undefined. The addon is
 * compiled for SSE4.2 and POPCNT (x86-64-v2): on a CPU without them loading it dies of SIGILL
 * before any of its code could explain, so this is checked first. Virtual machines with QEMU's
 * default CPU models (qemu64, kvm64) are the usual case.
 */
export function cpuProblem(cpuinfo: string): string | undefined {
  const line = /^flags\s*:(.*)$/m.exec(cpuinfo);
  if (!line) return undefined; // no flags line: nothing to go on
  const flags = new Set(line[1]!.trim().split(/\s+/));
  const missing = ['sse4_2', 'popcnt'].filter((f) => !flags.has(f));
  if (missing.length === 0) return undefined;
  return (
    `this CPU lacks ${missing.join(' and ')} (per /proc/cpuinfo); saekit needs an x86-64 CPU with SSE4.2 and POPCNT ` +
    '(x86-64-v2: Intel since Nehalem, AMD since Bulldozer). In a virtual machine, give it the host ' +
    "CPU's model (QEMU/libvirt: -cpu host or host-passthrough) instead of qemu64 or kvm64"
  );
}

/** cpuProblem() for this machine (linux-x64 only); undefined where /proc/cpuinfo cannot be read. */
function thisCpuProblem(): string | undefined {
  if (process.platform !== 'linux' || process.arch !== 'x64') return undefined;
  let fd: number | undefined;
  try {
    fd = fs.openSync('/proc/cpuinfo', 'r');
    const buf = Buffer.alloc(1 << 16); // the first processor's entry is well within this
    const n = fs.readSync(fd, buf, 0, buf.length, null);
    return cpuProblem(buf.toString('latin1', 0, n));
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/**
 * Why the shared library `file` cannot be loaded safely, or undefined. A file cut short (a copy
 * or download that stopped) still passes dlopen's header checks, and the loader then maps
 * segments past its end: the first touch of one kills the process with SIGBUS. So the ELF64
 * program headers are read first (bounded reads) and every loadable segment must lie within the
 * file. Anything that is not a little-endian ELF64 file is left to the loader, which reports it.
 */
export function elfProblem(file: string): string | undefined {
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, 'r');
    const size = fs.fstatSync(fd).size;
    // Worded as core/elf_check.h words the plugin's and cuBLAS's damage.
    const damaged = (why: string) => `${file} is damaged: ${why}`;
    const h = Buffer.alloc(64);
    const got = fs.readSync(fd, h, 0, 64, 0);
    if (got < 4 || h.readUInt32BE(0) !== 0x7f454c46 || h[4] !== 2 || h[5] !== 1) return undefined; // not ELF64 LE: the loader explains
    if (got < 64) return damaged(`truncated (${size} bytes, shorter than an ELF header)`);
    const phoff = h.readBigUInt64LE(32);
    const phentsize = h.readUInt16LE(54);
    const phnum = h.readUInt16LE(56);
    if (phnum === 0) return undefined;
    if (phentsize !== 56) return damaged(`program header entries of ${phentsize} bytes (expected 56)`);
    const tableEnd = phoff + BigInt(phnum * 56);
    const headersCut = damaged(`truncated (${size} bytes, its program headers end at ${tableEnd})`);
    if (tableEnd > BigInt(size)) return headersCut;
    const table = Buffer.alloc(phnum * 56); // at most 65535 x 56 bytes
    if (fs.readSync(fd, table, 0, table.length, Number(phoff)) < table.length) return headersCut;
    let need = 0n;
    for (let i = 0; i < phnum; i++) {
      if (table.readUInt32LE(i * 56) !== 1) continue; // PT_LOAD only
      const end = table.readBigUInt64LE(i * 56 + 8) + table.readBigUInt64LE(i * 56 + 32); // p_offset + p_filesz
      if (end > need) need = end;
    }
    return need > BigInt(size) ? damaged(`truncated (${size} bytes, its segments need ${need})`) : undefined;
  } catch {
    return undefined; // unreadable: the loader reports it
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/** The loaded addon; loads it on first use and explains a failure. */
export function native(): NativeBinding {
  if (binding) return binding;
  const cpu = thisCpuProblem();
  if (cpu) throw new SaekitError('ERR_SAEKIT_NATIVE', `Could not load the saekit native addon: ${cpu}.`);
  const require = createRequire(import.meta.url);
  try {
    const load = require('node-gyp-build') as { path(dir: string): string };
    const file = load.path(packageRoot); // the prebuilt or built binary node-gyp-build would load
    const damaged = elfProblem(file);
    if (damaged) throw new Error(damaged);
    binding = require(file) as NativeBinding;
    // If an op is still running when the process exits, the native side may have to end the
    // exit early (see executor.cpp); it then uses this status.
    checkEnvironment();
    const b = binding;
    if (isMainThread) process.on('exit', (code) => b._noteExitCode(typeof code === 'number' ? code : Number(process.exitCode ?? 0)));
  } catch (err) {
    const cause = err instanceof Error ? err.message : String(err);
    // node-gyp-build found neither build/ nor a prebuild: the install script never built it, which
    // npm 12 and later do unless the project approved it (allowScripts in its package.json).
    const neverBuilt = /No native build was found/.test(cause);
    throw new SaekitError(
      'ERR_SAEKIT_NATIVE',
      `Could not load the saekit native addon (${cause}).\n` +
        'Possible fixes:\n' +
        (neverBuilt
          ? "- if npm said saekit's install scripts were blocked (npm 12 and later run a dependency's install script only when the project allows it): run `npm approve-scripts saekit`, which adds saekit to allowScripts in your package.json, then `npm rebuild saekit`;\n"
          : '') +
        '- run `npm rebuild saekit` to build it from source (needs python3, make and a C++17 compiler);\n' +
        `- check that Node.js is >= 20.9 (this is ${process.version}) and the platform is linux-x64;\n` +
        '- for faster matrix products install OpenBLAS first (Debian/Ubuntu: apt-get install libopenblas-dev pkg-config).',
    );
  }
  return binding;
}

/** Where the CUDA plugin may be, in the order the addon tries them. */
export function cudaPluginCandidates(): string[] {
  const out: string[] = [];
  if (process.env.SAEKIT_CUDA_PLUGIN) out.push(path.resolve(process.env.SAEKIT_CUDA_PLUGIN));
  out.push(path.join(packageRoot, 'build-cuda', 'libsaekit_cuda.so'));
  out.push(path.join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`, 'cuda', 'libsaekit_cuda.so'));
  return out;
}
