/**
 * The `backend` namespace of the public API (lib/index.ts exports this module, not ./index.ts,
 * whose device helpers take the name of the argument they check and are internal).
 */
import { argError } from '../errors.js';
import { deviceName as nameOf, resolveDevice as resolveNamed, type DeviceOption, type ResolvedDevice } from './index.js';

export { info, setThreads, stats, use } from './index.js';
export type { BackendInfo, DeviceOption, ResolvedDevice } from './index.js';

/**
 * The device an object created with `device` would use: 'auto' (or no argument: the default
 * set by use()) resolved to the first usable CUDA device or the CPU. An explicit CUDA device that
 * cannot run throws ERR_SAEKIT_DEVICE naming the missing piece; anything but 'auto', 'cpu',
 * 'cuda' or 'cuda:N' is ERR_SAEKIT_ARG.
 * @example backend.resolveDevice('auto') // { kind: 'cpu' } on a machine without CUDA
 */
export function resolveDevice(device?: DeviceOption): ResolvedDevice {
  return resolveNamed('device', device);
}


/**
 * The name of a resolved device (resolveDevice's result): 'cpu' or 'cuda:N'.
 * @example backend.deviceName({ kind: 'cuda', index: 1 }) // 'cuda:1'
 */
export function deviceName(d: ResolvedDevice): 'cpu' | `cuda:${number}` {
  const o = d as { kind?: unknown; index?: unknown } | null;
  const ok =
    typeof o === 'object' && o !== null && (o.kind === 'cpu' || (o.kind === 'cuda' && typeof o.index === 'number' && Number.isInteger(o.index) && o.index >= 0 && o.index < 2 ** 31));
  if (!ok) throw argError('d', "a resolved device: { kind: 'cpu' } or { kind: 'cuda', index } with index a non-negative integer", d);
  return nameOf(d);
}
