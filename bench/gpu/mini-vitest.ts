/**
 * Just enough of vitest's API (describe/it with runIf/skipIf/skip, expect with the matchers our
 * GPU tests use) to run test/cuda.test.ts where there is no node_modules: bench/gpu/pack.sh
 * bundles that file with esbuild, aliasing 'vitest' to this module. Tests run in registration
 * order, one line each; run() resolves to the number of failures.
 */
type Fn = () => unknown;
interface Test {
  name: string;
  fn: Fn | null; // null: skipped
}

const tests: Test[] = [];
const prefix: string[] = [];

function register(name: string, fn: Fn | null): void {
  tests.push({ name: [...prefix, name].join(' > '), fn });
}

type ItFn = ((name: string, fn: Fn, timeout?: number) => void) & {
  runIf: (cond: unknown) => (name: string, fn: Fn, timeout?: number) => void;
  skipIf: (cond: unknown) => (name: string, fn: Fn, timeout?: number) => void;
  skip: (name: string, fn?: Fn) => void;
};
type DescribeFn = ((name: string, fn: () => void) => void) & {
  runIf: (cond: unknown) => (name: string, fn: () => void) => void;
  skipIf: (cond: unknown) => (name: string, fn: () => void) => void;
};

let skipping = 0;

export const it: ItFn = Object.assign((name: string, fn: Fn) => register(name, skipping ? null : fn), {
  runIf: (cond: unknown) => (name: string, fn: Fn) => register(name, cond && !skipping ? fn : null),
  skipIf: (cond: unknown) => (name: string, fn: Fn) => register(name, !cond && !skipping ? fn : null),
  skip: (name: string) => register(name, null),
});
export const test = it;

function group(name: string, fn: () => void, run: boolean): void {
  prefix.push(name);
  if (!run) skipping++;
  try {
    fn();
  } finally {
    if (!run) skipping--;
    prefix.pop();
  }
}

export const describe: DescribeFn = Object.assign((name: string, fn: () => void) => group(name, fn, true), {
  runIf: (cond: unknown) => (name: string, fn: () => void) => group(name, fn, Boolean(cond)),
  skipIf: (cond: unknown) => (name: string, fn: () => void) => group(name, fn, !cond),
});

// ---- expect ----------------------------------------------------------------------------------

interface Matcher {
  __matcher: (v: unknown) => boolean;
  text: string;
}
const isMatcher = (v: unknown): v is Matcher => typeof v === 'object' && v !== null && '__matcher' in v;

function show(v: unknown): string {
  if (isMatcher(v)) return v.text;
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'bigint') return `${v}n`;
  if (ArrayBuffer.isView(v)) return `${v.constructor.name}(${(v as unknown as ArrayLike<unknown>).length})`;
  try {
    return String(JSON.stringify(v) ?? v).slice(0, 200);
  } catch {
    return String(v);
  }
}

function equal(a: unknown, b: unknown): boolean {
  if (isMatcher(b)) return b.__matcher(a);
  if (Object.is(a, b)) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (ArrayBuffer.isView(a) || ArrayBuffer.isView(b)) {
    if (!ArrayBuffer.isView(a) || !ArrayBuffer.isView(b) || a.constructor !== b.constructor) return false;
    const x = a as unknown as ArrayLike<unknown>;
    const y = b as unknown as ArrayLike<unknown>;
    if (x.length !== y.length) return false;
    for (let i = 0; i < x.length; i++) if (!Object.is(x[i], y[i])) return false;
    return true;
  }
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a).filter((k) => (a as Record<string, unknown>)[k] !== undefined);
  const kb = Object.keys(b).filter((k) => (b as Record<string, unknown>)[k] !== undefined);
  return ka.length === kb.length && kb.every((k) => equal((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
}

function contains(a: unknown, partial: Record<string, unknown>): boolean {
  return typeof a === 'object' && a !== null && Object.entries(partial).every(([k, v]) => equal((a as Record<string, unknown>)[k], v));
}

class Failure extends Error {}

function matchers(actual: unknown, negate: boolean, message?: string) {
  const check = (ok: boolean, what: string) => {
    if (ok === negate) throw new Failure(`${message ? `${message}: ` : ''}expected ${show(actual)} ${negate ? 'not ' : ''}${what}`);
  };
  const thrown = (want?: unknown) => {
    try {
      (actual as () => unknown)();
    } catch (e) {
      const ok =
        want === undefined ||
        (want instanceof RegExp ? want.test(String((e as Error)?.message)) : typeof want === 'string' ? String((e as Error)?.message).includes(want) : equal(e, want));
      check(ok, `to throw ${show(want)} (threw ${String(e)})`);
      return;
    }
    check(false, 'to throw');
  };
  return {
    toBe: (want: unknown) => check(Object.is(actual, want), `to be ${show(want)}`),
    toEqual: (want: unknown) => check(equal(actual, want), `to equal ${show(want)}`),
    toStrictEqual: (want: unknown) => check(equal(actual, want), `to equal ${show(want)}`),
    toMatchObject: (want: Record<string, unknown>) => check(contains(actual, want), `to match ${show(want)}`),
    toBeLessThan: (n: number) => check((actual as number) < n, `to be < ${n}`),
    toBeLessThanOrEqual: (n: number) => check((actual as number) <= n, `to be <= ${n}`),
    toBeGreaterThan: (n: number) => check((actual as number) > n, `to be > ${n}`),
    toBeGreaterThanOrEqual: (n: number) => check((actual as number) >= n, `to be >= ${n}`),
    toMatch: (re: RegExp | string) => check(typeof re === 'string' ? String(actual).includes(re) : re.test(String(actual)), `to match ${String(re)}`),
    toContain: (v: unknown) => check((actual as { includes(x: unknown): boolean }).includes(v), `to contain ${show(v)}`),
    toBeInstanceOf: (c: new (...a: never[]) => unknown) => check(actual instanceof c, `to be an instance of ${c.name}`),
    toBeDefined: () => check(actual !== undefined, 'to be defined'),
    toBeUndefined: () => check(actual === undefined, 'to be undefined'),
    toBeTruthy: () => check(Boolean(actual), 'to be truthy'),
    toThrow: thrown,
  };
}

function expectImpl(actual: unknown, message?: string) {
  return {
    ...matchers(actual, false, message),
    not: matchers(actual, true, message),
    rejects: {
      toMatchObject: async (want: Record<string, unknown>) => {
        try {
          await (actual as Promise<unknown>);
        } catch (e) {
          if (!contains(e, want)) throw new Failure(`expected a rejection matching ${show(want)} but got ${String(e)}`);
          return;
        }
        throw new Failure('expected a rejection');
      },
      toThrow: async (want?: RegExp | string) => {
        try {
          await (actual as Promise<unknown>);
        } catch (e) {
          const m = String((e as Error)?.message);
          if (want !== undefined && !(typeof want === 'string' ? m.includes(want) : want.test(m))) throw new Failure(`expected a rejection ${String(want)} but got ${m}`);
          return;
        }
        throw new Failure('expected a rejection');
      },
    },
  };
}

export const expect = Object.assign(expectImpl, {
  objectContaining: (partial: Record<string, unknown>): Matcher => ({ __matcher: (v) => contains(v, partial), text: `objectContaining ${show(partial)}` }),
  stringContaining: (sub: string): Matcher => ({ __matcher: (v) => typeof v === 'string' && v.includes(sub), text: `stringContaining ${show(sub)}` }),
  stringMatching: (re: RegExp): Matcher => ({ __matcher: (v) => typeof v === 'string' && re.test(v), text: `stringMatching ${String(re)}` }),
});

/** Runs every registered test in order; prints PASS/FAIL/SKIP lines; resolves to the failures. */
export async function run(): Promise<number> {
  let failed = 0;
  let passed = 0;
  let skipped = 0;
  for (const t of tests) {
    if (!t.fn) {
      skipped++;
      continue;
    }
    const t0 = performance.now();
    try {
      await t.fn();
      passed++;
      console.log(`PASS ${t.name} (${((performance.now() - t0) / 1e3).toFixed(2)} s)`);
    } catch (e) {
      failed++;
      console.log(`FAIL ${t.name}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  console.log(`tests: ${passed} passed, ${failed} failed, ${skipped} skipped`);
  return failed;
}
