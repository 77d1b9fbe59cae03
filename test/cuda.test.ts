/**
 * CUDA plugin loading. On a machine without a GPU (CI) the plugin, when built, must load and
 * report a clean reason; GPU tests live with the CUDA backend and skip without a device.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { backend } from '../lib/index.js';
import { packageRoot } from '../lib/native/index.js';

const plugin = path.join(packageRoot, 'build-cuda', 'libsaekit_cuda.so');

describe('CUDA backend detection', () => {
  it('the CPU backend always loads, and info() says why CUDA is not used', () => {
    const { cuda } = backend.info();
    expect(cuda.available).toBe(false);
    expect(cuda.reason.length).toBeGreaterThan(10);
    expect(cuda.attempts.map((a) => a.path)).toContain(plugin);
  });

  it.runIf(existsSync(plugin))('a built plugin is loaded and scored; without a GPU it names the missing piece', () => {
    const { cuda } = backend.info();
    const attempt = cuda.attempts.find((a) => a.path === plugin);
    expect(attempt).toBeDefined();
    expect(attempt!.outcome).not.toBe('not found');
    expect(attempt!.outcome).not.toMatch(/dlopen failed|missing symbol|incompatible/);
    expect(cuda.reason).toMatch(/driver|no CUDA device|CUDA kernels are not/);
  });
});
