/**
 * The compute backend: which one runs, with what, and how many threads.
 *
 * @example
 * ```ts
 * import { backend } from 'saekit';
 * const info = backend.info();
 * console.log(info.backend, info.simd, info.blas.name, info.cuda.reason);
 * backend.setThreads(4);
 * ```
 */
import { callNative } from '../errors.js';
import { cudaPluginCandidates, native } from '../native/index.js';
import { checkInt } from '../validate.js';

/** What backend.info() reports. */
export interface BackendInfo {
  /** The backend that runs ops. */
  backend: 'cpu';
  /** Threads each op may use (SAEKIT_NUM_THREADS, setThreads(), or the hardware thread count). */
  threads: number;
  /** Hardware threads of this machine. */
  hardwareThreads: number;
  /** The widest vector ISA the kernels use on this CPU (lowered by SAEKIT_SIMD=avx2|sse42). */
  simd: 'scalar' | 'sse4.2' | 'avx2' | 'avx512';
  /** The CPU features detected at run time. */
  cpuFeatures: string[];
  /** The dense GEMM: OpenBLAS when linked (and not overridden by SAEKIT_BLAS=builtin), else built-in. */
  blas: {
    /** 'openblas', 'cblas' (another CBLAS) or 'builtin'. */
    name: string;
    /** Library version, or for the built-in GEMM the micro-kernel ISA. */
    version: string;
    /** OpenBLAS's kernel family for this CPU (e.g. 'Haswell', 'SkylakeX'). */
    coretype?: string;
    /** OpenBLAS's configuration string. */
    config?: string;
    /** Whether a CBLAS library was linked at build time. */
    linked: boolean;
    /** Why the built-in GEMM runs, when it does. */
    reason?: string;
  };
  /** The CUDA backend: whether it can be used and, if not, which piece is missing. */
  cuda: { available: boolean; reason: string; attempts: { path: string; outcome: string }[] };
  /** The Node-API version the addon was built for. */
  napiVersion: number;
  /**
   * The SAE encoder's tile: at most `rows` rows and `bytes` bytes of pre-activations at a time
   * (SAEKIT_TILE_ROWS, SAEKIT_TILE_BYTES; defaults 4096 and 64 MiB).
   */
  encoderTile: { bytes: number; rows: number };
}

/** Reports the backend, SIMD level, BLAS and CUDA status. Cheap; safe to call often. */
export function info(): BackendInfo {
  return callNative(() => native().info(cudaPluginCandidates()));
}

/**
 * Sets the number of threads each op may use, from the next queued op on (ops already running
 * finish with the old count). Also sets OpenBLAS's thread count. Returns the previous value.
 * @param threads integer between 1 and 1024
 */
export function setThreads(threads: number): number {
  checkInt('threads', threads, 1, 1024);
  return callNative(() => native().setThreads(threads));
}

/** Queue counters: ops submitted and completed by the backend executor (all threads), and ops in flight from this thread. */
export function stats(): { submitted: number; completed: number; pendingInThisThread: number } {
  return callNative(() => native().stats());
}
