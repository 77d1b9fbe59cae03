/**
 * The `backend` namespace of the public API (lib/index.ts exports this module, not ./index.ts,
 * whose device helpers take the name of the argument they check and are internal).
 */
import { deviceName, resolveDevice as resolveNamed, type DeviceOption, type ResolvedDevice } from './index.js';

export { info, setThreads, stats, use, deviceName } from './index.js';
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

