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
import { argError, SaekitError } from '../errors.js';
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
    /**
     * The symmetric eigensolver of metrics.spectrum and metrics.symmetricEigenvalues: 'lapack'
     * (dsyevd from the linked library, when it exports it) or 'builtin' (also under
     * SAEKIT_BLAS=builtin).
     */
    eigen: 'lapack' | 'builtin';
  };
  /** The CUDA backend: whether it can be used and, if not, which piece is missing. */
  cuda: {
    /** The driver, the plugin (with its kernels), cuBLAS and a device are all present. */
    available: boolean;
    /** Why it is not available ('' when it is): the missing piece. */
    reason: string;
    /** Every device's name, index = the N of 'cuda:N' (each one usable for tensors and SAEs). */
    devices: string[];
    /**
     * SAEKIT_DEVICE_LOOPBACK=1: 'cuda' is the CPU kernels behind the device interface (tests; as
     * many devices as SAEKIT_DEVICE_LOOPBACK_DEVICES, default 1); 'auto' never picks it.
     */
    loopback: boolean;
    /** Every plugin path tried and its outcome. */
    attempts: { path: string; outcome: string }[];
  };
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
  const r = callNative(() => native().info(cudaPluginCandidates())) as BackendInfo;
  // A SAEKIT_CUDA_PLUGIN that names no file (nothing, or a folder) is the reason to report, not
  // "not built" (the addon only sees a list of paths, and falls back to the others).
  const first = r.cuda.attempts?.[0];
  if (!r.cuda.available && process.env.SAEKIT_CUDA_PLUGIN && first) {
    if (first.outcome === 'not found') {
      r.cuda.reason = `SAEKIT_CUDA_PLUGIN names ${first.path}, which does not exist; elsewhere: ${r.cuda.reason}`;
    } else if (first.outcome.startsWith(`${first.path} is not a file`)) {
      const elsewhere = r.cuda.reason === first.outcome ? '' : `; elsewhere: ${r.cuda.reason}`;
      r.cuda.reason = `SAEKIT_CUDA_PLUGIN names ${first.path}, which${first.outcome.slice(first.path.length)}: it must name the plugin file (libsaekit_cuda.so)${elsewhere}`;
    }
  }
  return r;
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

/**
 * Where an SAE's parameters live and its ops run: 'cpu', 'cuda' (device 0), 'cuda:N', or 'auto'
 * (CUDA when the driver, the plugin, cuBLAS and a device are all present: the first device this
 * build supports; else the CPU).
 */
export type DeviceOption = 'auto' | 'cpu' | 'cuda' | `cuda:${number}`;

/** A device resolved to what runs: the CPU or one CUDA device. */
export type ResolvedDevice = { kind: 'cpu' } | { kind: 'cuda'; index: number };

let defaultDevice: DeviceOption = 'auto';

// info().cuda per plugin candidate list: the addon resolves it once per list anyway, and
// resolveDevice runs on every tensor created, where a full info() would cost ~20 us.
let cudaMemo: { key: string; cuda: BackendInfo['cuda'] } | undefined;
function cudaStatus(): BackendInfo['cuda'] {
  const key = cudaPluginCandidates().join('\0');
  if (cudaMemo?.key !== key) cudaMemo = { key, cuda: info().cuda };
  return cudaMemo.cuda;
}

/**
 * What 'auto' resolves to: the first CUDA device the plugin does not list as unusable (older than
 * this build's sm_80), or the CPU when there is none or CUDA is the loopback. @internal
 */
export function autoDevice(cuda: Pick<BackendInfo['cuda'], 'available' | 'loopback' | 'devices'>): ResolvedDevice {
  if (!cuda.available || cuda.loopback) return { kind: 'cpu' };
  const index = cuda.devices.findIndex((name) => !name.includes('(unusable'));
  return index < 0 ? { kind: 'cpu' } : { kind: 'cuda', index };
}

/** Checks a device name and resolves it; an explicit CUDA device that cannot run throws ERR_SAEKIT_DEVICE naming the missing piece. */
export function resolveDevice(name: string, device: unknown): ResolvedDevice {
  const d = device === undefined ? defaultDevice : device;
  if (d === 'cpu') return { kind: 'cpu' };
  if (d === 'auto') return autoDevice(cudaStatus());
  if (typeof d !== 'string' || !/^cuda(?::(?:0|[1-9]\d*))?$/.test(d)) {
    // N is written as a device index is: 'cuda:01' is no name of cuda:1 (it was taken as one).
    const zeros = typeof d === 'string' && /^cuda:0\d+$/.test(d);
    throw argError(name, `one of 'auto', 'cpu', 'cuda', 'cuda:N'${zeros ? " (N a device index without leading zeros: 'cuda:0', 'cuda:1', ...)" : ''}`, d);
  }
  return cudaDevice(name, d, cudaStatus());
}

/**
 * An explicit 'cuda' or 'cuda:N' (already checked to have that form) on the devices `cuda`
 * lists: ERR_SAEKIT_DEVICE when CUDA is not available, N is past the last device (any number of
 * digits), or the device is one the plugin lists as unusable (older than this build's sm_80),
 * which 'auto' skips. @internal
 */
export function cudaDevice(name: string, d: string, cuda: Pick<BackendInfo['cuda'], 'available' | 'reason' | 'devices'>): ResolvedDevice {
  const shown = d.length > 40 ? `${d.slice(0, 40)}...` : d;
  if (!cuda.available) throw new SaekitError('ERR_SAEKIT_DEVICE', `Expected a usable CUDA device for ${name} = '${shown}' but ${cuda.reason}`);
  const digits = d.slice('cuda:'.length);
  // More digits than any device count: out of range, without trusting Number() with them.
  const index = d === 'cuda' ? 0 : digits.length > 9 ? Infinity : Number(digits);
  if (index >= cuda.devices.length) {
    throw new SaekitError('ERR_SAEKIT_DEVICE', `Expected ${name} between cuda:0 and cuda:${cuda.devices.length - 1} but received '${shown}'`);
  }
  const device = cuda.devices[index]!;
  if (device.includes('(unusable')) {
    const usable = cuda.devices.flatMap((n, i) => (n.includes('(unusable') ? [] : [`cuda:${i}`]));
    throw new SaekitError(
      'ERR_SAEKIT_DEVICE',
      `Expected a usable CUDA device for ${name} = '${shown}' but cuda:${index} is ${device}` +
        (usable.length > 0 ? `; usable: ${usable.join(', ')}` : ''),
    );
  }
  return { kind: 'cuda', index };
}

/** The name of a resolved device: 'cpu' or 'cuda:N'. */
export function deviceName(d: ResolvedDevice): 'cpu' | `cuda:${number}` {
  return d.kind === 'cpu' ? 'cpu' : `cuda:${d.index}`;
}

/**
 * Sets the default device of objects created without a `device` option (initially 'auto').
 * An explicit CUDA device is checked now (ERR_SAEKIT_DEVICE if it cannot run). Returns the previous default.
 */
export function use(device: DeviceOption): DeviceOption {
  // resolveDevice reads undefined as "the current default"; stored, it would break every later default.
  if (typeof device !== 'string') throw argError('device', "'auto', 'cpu', 'cuda' or 'cuda:N'", device);
  resolveDevice('device', device);
  const prev = defaultDevice;
  defaultDevice = device;
  return prev;
}
