/**
 * The shared argument checks (lib/validate.ts) and error helpers (lib/errors.ts) at their exact
 * bounds, with the exact text users see: "Expected <what> for <name> but received <value> (<type>)".
 */
import { describe, expect, it } from 'vitest';

import { callNative, describe as describeValue, fromNative, SaekitError, settleNative } from '../lib/errors.js';
import { features, metrics, SparseAutoencoder } from '../lib/index.js';
import { checkInt, checkKept, checkOneOf, checkOptions, checkSeed } from '../lib/validate.js';
import { lcg } from './helpers/reference.js';

/** [code, message] of what `f` throws. */
function thrown(f: () => unknown): [string, string] {
  try {
    f();
  } catch (e) {
    return [(e as SaekitError).code, (e as Error).message];
  }
  throw new Error('expected an error');
}

describe('checkInt', () => {
  it('takes min and max themselves and refuses one past either, fractions, NaN, infinities, numeric strings and bigints', () => {
    const next = lcg(0x1e7);
    for (let trial = 0; trial < 20; trial++) {
      const min = Math.floor(next() * 200) - 100;
      const max = min + Math.floor(next() * 50);
      expect(checkInt('opt.n', min, min, max)).toBe(min);
      expect(checkInt('opt.n', max, min, max)).toBe(max);
      for (const [bad, shown] of [
        [min - 1, `${min - 1} (number)`],
        [max + 1, `${max + 1} (number)`],
        [min + 0.5, `${min + 0.5} (number)`],
        [max - 2 ** -20, `${max - 2 ** -20} (number)`],
        [NaN, 'NaN (number)'],
        [Infinity, 'Infinity (number)'],
        [String(min), `'${min}' (string)`],
        [BigInt(max), `${max}n (bigint)`],
        [true, 'true (boolean)'],
      ] as const) {
        expect(thrown(() => checkInt('opt.n', bad, min, max)), String(bad)).toEqual(['ERR_SAEKIT_ARG', `Expected integer between ${min} and ${max} for opt.n but received ${shown}`]);
      }
    }
    // -0 is an integer: taken where 0 is, and shown as 0 where it is refused.
    expect(Object.is(checkInt('opt.n', -0, 0, 3), -0)).toBe(true);
    expect(thrown(() => checkInt('threads', -0, 1, 1024))).toEqual(['ERR_SAEKIT_ARG', 'Expected integer between 1 and 1024 for threads but received 0 (number)']);
    // Integers past 2^53 are integers: taken when the range allows them, refused by its bound otherwise.
    expect(checkInt('opt.n', 2 ** 60, 0, 2 ** 61)).toBe(2 ** 60);
    expect(thrown(() => checkInt('opt.n', 2 ** 53 + 2, 0, 2 ** 53))[1]).toBe(`Expected integer between 0 and ${2 ** 53} for opt.n but received ${2 ** 53 + 2} (number)`);
  });
});

describe('checkSeed', () => {
  it('takes 0 to 2^53 - 1 as numbers and 0n to 2^64 - 1 as bigints, as documented; refuses the rest naming the bound', () => {
    for (const [v, want] of [[0, 0n], [-0, 0n], [1, 1n], [2 ** 53 - 1, 2n ** 53n - 1n], [0n, 0n], [2n ** 53n, 2n ** 53n], [2n ** 64n - 1n, 2n ** 64n - 1n]] as const) {
      expect(checkSeed('options.seed', v), String(v)).toBe(want);
    }
    for (const [bad, shown] of [
      [-1, '-1 (number)'],
      [2 ** 53, `${2 ** 53} (number)`],
      [2 ** 64, `${2 ** 64} (number)`],
      [1.5, '1.5 (number)'],
      [NaN, 'NaN (number)'],
      ['7', "'7' (string)"],
      [-1n, '-1n (bigint)'],
      [2n ** 64n, '18446744073709551616n (bigint)'],
    ] as const) {
      expect(thrown(() => checkSeed('options.seed', bad)), String(bad)).toEqual(['ERR_SAEKIT_ARG', `Expected non-negative safe integer or bigint below 2^64 for options.seed but received ${shown}`]);
    }
  });
});

describe('checkOneOf and checkOptions', () => {
  it('checkOneOf is exact (case matters) and throws the code it is given, listing the choices', () => {
    const dtypes = ['float32', 'bfloat16'] as const;
    expect(checkOneOf('options.dtype', 'bfloat16', dtypes)).toBe('bfloat16');
    expect(thrown(() => checkOneOf('options.dtype', 'Float32', dtypes, 'ERR_SAEKIT_DTYPE'))).toEqual(['ERR_SAEKIT_DTYPE', "Expected one of: float32, bfloat16 for options.dtype but received 'Float32' (string)"]);
    expect(thrown(() => checkOneOf('options.dtype', undefined, dtypes))).toEqual(['ERR_SAEKIT_ARG', 'Expected one of: float32, bfloat16 for options.dtype but received undefined']);
  });

  it('checkOptions refuses arrays and typed arrays (an argument in the wrong place) and null, and takes undefined as {}', () => {
    expect(checkOptions('options', undefined)).toEqual({});
    const o = { batchSize: 3 };
    expect(checkOptions('options', o, ['batchSize'])).toBe(o);
    for (const [bad, shown] of [[[], 'an array of length 0'], [new Float32Array(3), 'a Float32Array of length 3'], [new DataView(new ArrayBuffer(8)), 'a DataView'], [null, 'null'], [5, '5 (number)']] as const) {
      expect(thrown(() => checkOptions('options', bad as never, ['batchSize'])), shown).toEqual(['ERR_SAEKIT_ARG', `Expected an options object for options but received ${shown}`]);
    }
  });

  it('a misspelt option is refused naming the closest name: same letters in another case, or up to 2 edits (substitutions count 1); 3 edits suggest nothing', () => {
    const names = ['batchSize', 'epochs', 'shuffle'];
    const list = '; the options are: batchSize, epochs, shuffle';
    for (const [key, near] of [
      ['batchsize', 'batchSize'], // case only: refused, not taken
      ['BATCHSIZE', 'batchSize'],
      ['batchSiz', 'batchSize'], // 1 deletion
      ['batcSiz', 'batchSize'], // 2 deletions
      ['bitchSixe', 'batchSize'], // 2 substitutions
      ['epoch', 'epochs'],
      ['shufle', 'shuffle'],
    ] as const) {
      expect(thrown(() => checkOptions('options', { [key]: 1 }, names)), key).toEqual(['ERR_SAEKIT_ARG', `Unknown option options.${key} (did you mean options.${near}?)${list}`]);
    }
    for (const key of ['bitchSixxe', 'epo', 'xyz']) {
      expect(thrown(() => checkOptions('options', { [key]: 1 }, names)), key).toEqual(['ERR_SAEKIT_ARG', `Unknown option options.${key}${list}`]);
    }
    // Symbol keys (internal options) are not checked.
    expect(checkOptions('options', { [Symbol('internal')]: 1 } as object, names)).toBeDefined();
    // A name cut short or run on, 3 or more edits away, when only one option fits (4 letters at least).
    const trainer = ['deadThresholdTokens', 'decay', 'lr', 'warmupSteps', 'normalizeBatches', 'normalize'];
    const tlist = `; the options are: ${trainer.join(', ')}`;
    for (const [key, near] of [['deadThreshold', 'deadThresholdTokens'], ['warmup', 'warmupSteps'], ['decaying', 'decay'], ['normalizeBatch', 'normalizeBatches'], ['lrate', 'lr']] as const) {
      expect(thrown(() => checkOptions('options', { [key]: 1 }, trainer)), key).toEqual(['ERR_SAEKIT_ARG', `Unknown option options.${key} (did you mean options.${near}?)${tlist}`]);
    }
    // Two fit ('norm' begins normalize and normalizeBatches; 'normalizeBatchesCount' runs on from both), too short, or none: nothing.
    for (const key of ['norm', 'normalizeBatchesCount', 'xyzw', 'learningRate']) {
      expect(thrown(() => checkOptions('options', { [key]: 1 }, trainer)), key).toEqual(['ERR_SAEKIT_ARG', `Unknown option options.${key}${tlist}`]);
    }
  });
});

describe('checkKept', () => {
  it('refuses an array that now has fewer or more elements than it had (detached or resized), naming it and both counts', () => {
    expect(() => checkKept('x', new Float32Array(5), 5)).not.toThrow();
    // (a length-tracking view of a grown resizable ArrayBuffer has more)
    expect(thrown(() => checkKept('x', new Float32Array(7), 5))).toEqual(['ERR_SAEKIT_ARG', 'Expected x to keep its 5 values until the call settles but it now has 7 (was its ArrayBuffer detached or resized?)']);
    const b = new Uint8Array(6);
    structuredClone(b.buffer, { transfer: [b.buffer] });
    expect(thrown(() => checkKept('data', b, 6, 'bytes'))).toEqual(['ERR_SAEKIT_ARG', 'Expected data to keep its 6 bytes until the call settles but it now has 0 (was its ArrayBuffer detached or resized?)']);
  });
});

describe('errors', () => {
  it('describe() shows each kind of value with its type', () => {
    for (const [v, shown] of [
      [-0, '0 (number)'],
      [NaN, 'NaN (number)'],
      [12n, '12n (bigint)'],
      [false, 'false (boolean)'],
      [undefined, 'undefined'],
      [null, 'null'],
      [[1, 2], 'an array of length 2'],
      [new Float64Array(3), 'a Float64Array of length 3'],
      [new Uint16Array(new ArrayBuffer(16), 4, 2), 'a Uint16Array of length 2'],
      [new Int32Array(5), 'an Int32Array of length 5'],
      [new AbortController().signal, 'an AbortSignal'],
      [new Error('x'), 'an Error'],
      [{}, 'an object'],
      [Object.create(null), 'an object'],
      [new Map(), 'a Map'],
      [() => 1, 'a function'],
      [Symbol('s'), 'a symbol'],
    ] as const) {
      expect(describeValue(v), String(shown)).toBe(shown);
    }
  });

  it('a wrong typed array is ERR_SAEKIT_DTYPE and anything else ERR_SAEKIT_ARG, the same for every call that takes one', async () => {
    const sae = SparseAutoencoder.create({ dIn: 4, numLatents: 8, k: 2, seed: 3 });
    try {
      const calls: [string, (x: unknown) => unknown][] = [
        ['x', (x) => sae.encode(x as Float32Array)],
        ['corr', (x) => features.match(x as Float32Array, { nA: 2, nB: 2 })],
        ['perms[0]', (x) => features.composeMatches(x as Int32Array)],
        ['cost', (x) => metrics.linearAssignment(x as Float64Array, 2, 2)],
      ];
      for (const [name, call] of calls) {
        const wrongType = name === 'perms[0]' || name === 'cost' ? new Float32Array(4) : new Int32Array(4);
        for (const [value, code] of [
          [wrongType, 'ERR_SAEKIT_DTYPE'],
          [[0, 1, 2, 3], 'ERR_SAEKIT_ARG'],
          [undefined, 'ERR_SAEKIT_ARG'],
          [new DataView(new ArrayBuffer(16)), 'ERR_SAEKIT_ARG'],
        ] as const) {
          const err = await Promise.resolve().then(() => call(value)).then(() => null, (e: unknown) => e as SaekitError);
          expect(err, `${name} ${describeValue(value)}`).toBeInstanceOf(SaekitError);
          expect([err!.code, err!.message], `${name} ${describeValue(value)}`).toEqual([code, expect.stringContaining(`for ${name} but received ${describeValue(value)}`)]);
        }
      }
    } finally {
      sae.dispose();
    }
  });

  it("fromNative keeps a SaekitError as it is, keeps an addon error's ERR_SAEKIT_ code and row, and calls anything else ERR_SAEKIT_NATIVE", () => {
    const own = new SaekitError('ERR_SAEKIT_SHAPE', 'own');
    expect(fromNative(own)).toBe(own);
    const addon = Object.assign(new Error('Expected a finite value in row 4'), { code: 'ERR_SAEKIT_NONFINITE', row: 4 });
    const e = fromNative(addon);
    expect(e).toBeInstanceOf(SaekitError);
    expect([e.code, e.message, e.row]).toEqual(['ERR_SAEKIT_NONFINITE', 'Expected a finite value in row 4', 4]);
    const other = fromNative(Object.assign(new Error('boom'), { code: 'ENOENT' }));
    expect([other.code, other.message, 'row' in other]).toEqual(['ERR_SAEKIT_NATIVE', 'boom', false]);
    expect(fromNative('plain').message).toBe('plain');
  });

  it("settleNative and callNative turn an addon failure into a SaekitError (settleNative's with the caller's stack)", async () => {
    const addon = Object.assign(new Error('bad'), { code: 'ERR_SAEKIT_ARG' });
    const site = new Error();
    const stackLine = site.stack!.split('\n')[1]!;
    let caught: unknown;
    try {
      await settleNative(Promise.reject(addon), site);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(SaekitError);
    expect((caught as SaekitError).code).toBe('ERR_SAEKIT_ARG');
    expect((caught as SaekitError).stack!.split('\n')).toEqual(['SaekitError: bad', ...site.stack!.split('\n').slice(1)]);
    expect((caught as SaekitError).stack).toContain(stackLine);
    await expect(settleNative(Promise.resolve(3), site)).resolves.toBe(3);
    let sync: unknown;
    try {
      callNative(() => {
        throw addon;
      });
    } catch (err) {
      sync = err;
    }
    expect(sync).toBeInstanceOf(SaekitError);
    expect((sync as SaekitError).code).toBe('ERR_SAEKIT_ARG');
    expect(callNative(() => 5)).toBe(5);
  });
});

describe('device names', () => {
  it("'cuda:N' is written without leading zeros: 'cuda:01' (taken as cuda:1) and 'cuda:00000000001' (reported as out of range) are ERR_SAEKIT_ARG naming the argument and the form", async () => {
    const { resolveDevice, use } = await import('../lib/backend/index.js');
    const form = "one of 'auto', 'cpu', 'cuda', 'cuda:N' (N a device index without leading zeros: 'cuda:0', 'cuda:1', ...)";
    for (const d of ['cuda:01', 'cuda:00', 'cuda:007', 'cuda:00000000001', `cuda:0${'9'.repeat(30)}`]) {
      const shown = d.length > 40 ? `${d.slice(0, 40)}...` : d;
      expect(thrown(() => resolveDevice('options.device', d)), d).toEqual(['ERR_SAEKIT_ARG', `Expected ${form} for options.device but received '${shown}' (string)`]);
      expect(thrown(() => use(d as 'cpu')), d).toEqual(['ERR_SAEKIT_ARG', `Expected ${form} for device but received '${shown}' (string)`]);
    }
    // Other malformed names keep the plain form; well-formed ones pass the check (and are then
    // resolved: ERR_SAEKIT_DEVICE where CUDA or that device is missing).
    expect(thrown(() => resolveDevice('options.device', 'cuda:1x'))).toEqual(['ERR_SAEKIT_ARG', "Expected one of 'auto', 'cpu', 'cuda', 'cuda:N' for options.device but received 'cuda:1x' (string)"]);
    for (const d of ['cuda', 'cuda:0', 'cuda:1', 'cuda:10', 'cuda:907']) {
      let code = 'none';
      try {
        resolveDevice('options.device', d);
      } catch (e) {
        code = (e as SaekitError).code;
      }
      expect(code, d).not.toBe('ERR_SAEKIT_ARG');
    }
  });
});
