/**
 * The CUDA-vs-CPU parity suite of test/cuda.test.ts, runnable where there is no node_modules
 * (the GPU machine): bench/gpu/pack.sh bundles this file and saekit into one .mjs and carries
 * it with a Node binary and the addon. A small stand-in for vitest's `it` / `expect` (only what
 * test/helpers/device-suite.ts uses) runs the tests in order and prints one line each.
 *
 *   node parity.mjs            (exit code 1 if a test failed or no CUDA device is usable)
 *   SAEKIT_DEVICE_LOOPBACK=1 node parity.mjs --loopback     (checks the runner without a GPU)
 */
import { backend } from '../../lib/index.js';
import { deviceParitySuite, type SuiteApi } from '../../test/helpers/device-suite.js';

type Matcher = { __matcher: (v: unknown) => boolean; text: string };

function isMatcher(v: unknown): v is Matcher {
  return typeof v === 'object' && v !== null && '__matcher' in v;
}

function sameValue(a: unknown, b: unknown): boolean {
  if (isMatcher(b)) return b.__matcher(a);
  if (Object.is(a, b)) return true;
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => sameValue(x, b[i]));
  if (typeof a === 'object' && a !== null && typeof b === 'object' && b !== null) {
    const kb = Object.keys(b);
    return kb.length === Object.keys(a).length && kb.every((k) => sameValue((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
  }
  return false;
}

function contains(a: unknown, partial: Record<string, unknown>): boolean {
  return typeof a === 'object' && a !== null && Object.entries(partial).every(([k, v]) => sameValue((a as Record<string, unknown>)[k], v));
}

class Failure extends Error {}

function show(v: unknown): string {
  if (isMatcher(v)) return v.text;
  try {
    return typeof v === 'string' ? JSON.stringify(v) : String(JSON.stringify(v) ?? v).slice(0, 200);
  } catch {
    return String(v);
  }
}

function expectImpl(actual: unknown, message?: string) {
  const fail = (what: string) => {
    throw new Failure(`${message ? `${message}: ` : ''}expected ${show(actual)} ${what}`);
  };
  return {
    toBe: (want: unknown) => (Object.is(actual, want) ? undefined : fail(`to be ${show(want)}`)),
    toEqual: (want: unknown) => (sameValue(actual, want) ? undefined : fail(`to equal ${show(want)}`)),
    toBeLessThanOrEqual: (want: number) => ((actual as number) <= want ? undefined : fail(`to be <= ${want}`)),
    toMatch: (re: RegExp) => (re.test(String(actual)) ? undefined : fail(`to match ${re}`)),
    toThrow: (want?: unknown) => {
      try {
        (actual as () => unknown)();
      } catch (e) {
        if (want === undefined || sameValue(e, want) || (want instanceof RegExp && want.test(String((e as Error).message)))) return;
        fail(`to throw ${show(want)} but it threw ${String(e)}`);
      }
      fail('to throw');
    },
    rejects: {
      toMatchObject: async (partial: Record<string, unknown>) => {
        try {
          await (actual as Promise<unknown>);
        } catch (e) {
          if (contains(e, partial)) return;
          fail(`to reject with ${show(partial)} but it rejected with ${String(e)}`);
        }
        fail('to reject');
      },
    },
  };
}

const expect = Object.assign(expectImpl, {
  objectContaining: (partial: Record<string, unknown>): Matcher => ({ __matcher: (v) => contains(v, partial), text: `objectContaining ${show(partial)}` }),
  stringMatching: (re: RegExp): Matcher => ({ __matcher: (v) => typeof v === 'string' && re.test(v), text: `stringMatching ${re}` }),
});

const tests: { name: string; fn: () => Promise<void> | void }[] = [];
const api = { it: (name: string, fn: () => Promise<void> | void) => tests.push({ name, fn }), expect } as unknown as SuiteApi;

async function main(): Promise<void> {
  const { cuda } = backend.info();
  // SAEKIT_DEVICE_LOOPBACK=1 with --loopback checks this runner itself on a machine without a GPU.
  if (!cuda.available || (cuda.loopback && !process.argv.includes('--loopback'))) {
    console.log(`FAIL no usable CUDA device: ${cuda.reason || 'loopback only'}`);
    for (const a of cuda.attempts) console.log(`  ${a.path}: ${a.outcome}`);
    process.exitCode = 1;
    return;
  }
  console.log(`devices: ${cuda.devices.join('; ')}`);
  const groups: [string, 'fp32' | 'bf16', { rel: number; indexMismatch: number }][] = [
    ['fp32', 'fp32', { rel: 1e-4, indexMismatch: 0.002 }],
    ['bf16', 'bf16', { rel: 2e-2, indexMismatch: 0.05 }],
  ];
  let failed = 0;
  for (const [label, precision, tol] of groups) {
    tests.length = 0;
    deviceParitySuite(api, 'cuda', precision, tol);
    for (const t of tests) {
      const t0 = performance.now();
      try {
        await t.fn();
        console.log(`PASS [${label}] ${t.name} (${((performance.now() - t0) / 1e3).toFixed(2)} s)`);
      } catch (e) {
        failed++;
        console.log(`FAIL [${label}] ${t.name}: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
  }
  console.log(failed === 0 ? 'parity: all passed' : `parity: ${failed} failed`);
  if (failed) process.exitCode = 1;
}

await main();
