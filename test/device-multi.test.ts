/**
 * More than one device without a GPU: SAEKIT_DEVICE_LOOPBACK_DEVICES=2 gives the loopback two
 * devices, each with its own backend table whose allocations are tagged with the device (an op
 * dispatched to the wrong device's table fails with ERR_SAEKIT_DEVICE), so per-device dispatch,
 * moves between devices and the device checks are exercised in every `npm test`, with results
 * bit-identical to the CPU. test/cuda.test.ts runs the same suite on two CUDA devices.
 */
process.env.SAEKIT_DEVICE_LOOPBACK = '1'; // before the addon resolves its device table
process.env.SAEKIT_DEVICE_LOOPBACK_DEVICES = '2';

import { describe, expect, it } from 'vitest';

import { backend } from '../lib/index.js';
import { deviceParitySuite } from './helpers/device-suite.js';
import { dtypeSuite } from './helpers/dtype-suite.js';
import { matmulSuite } from './helpers/matmul-suite.js';
import { multiDeviceSuite } from './helpers/multi-device-suite.js';
import { randomSuite } from './helpers/random-suite.js';
import { tensorSuite } from './helpers/tensor-suite.js';

describe('two loopback devices', () => {
  it('info() lists both, named by index', () => {
    const { cuda } = backend.info();
    expect([cuda.available, cuda.loopback, cuda.reason]).toEqual([true, true, '']);
    expect(cuda.devices).toEqual([expect.stringMatching(/^loopback 0 /), expect.stringMatching(/^loopback 1 /)]);
  });

  multiDeviceSuite({ rel: 0 });
});

describe('tensors on cuda:1 (loopback) match the CPU bit for bit', () => {
  tensorSuite('cuda:1');
  randomSuite({ device: 'cuda:1', normalUlps: 0 });
  matmulSuite(5, { device: 'cuda:1' });
  dtypeSuite({ device: 'cuda:1' });
});

describe('an SAE on cuda:1 (loopback) matches the CPU bit for bit', () => {
  deviceParitySuite({ it, expect }, 'cuda:1', 'bf16', { rel: 0, indexMismatch: 0 });
});
