import { describe, expect, it } from 'vitest';

import { backend, randn, SaekitError, Tensor, tensor, zeros } from '../lib/index.js';
import { tensorSuite } from './helpers/tensor-suite.js';

describe('Tensor', () => {
  tensorSuite('cpu');

  it("the default device is backend.use()'s: 'auto' picks the CPU without a usable GPU", () => {
    using t = tensor([1, 2]);
    expect(t.device).toBe(backend.info().cuda.available && !backend.info().cuda.loopback ? 'cuda:0' : 'cpu');
    const prev = backend.use('cpu');
    try {
      using z = zeros([2]);
      using r = randn([2], { seed: 1 });
      expect([z.device, r.device]).toEqual(['cpu', 'cpu']);
    } finally {
      backend.use(prev);
    }
  });

  it('errors name the argument, the expectation and the value', () => {
    const cases: [() => unknown, string, RegExp][] = [
      [() => tensor(Float32Array.of(1, 2, 3), [2, 2]), 'ERR_SAEKIT_SHAPE', /Expected data of length 4 for shape \[2, 2\] but received length 3/],
      [() => tensor(Uint16Array.of(1)), 'ERR_SAEKIT_DTYPE', /for options.dtype but received undefined/],
      [() => tensor([[1, 2], [3]]), 'ERR_SAEKIT_SHAPE', /ragged/],
      [() => tensor([1, 'a' as unknown as number]), 'ERR_SAEKIT_ARG', /Expected a number for data\[1\] but received 'a' \(string\)/],
      [() => zeros([2, -1]), 'ERR_SAEKIT_SHAPE', /Expected non-negative integer for shape\[1\] but received -1 \(number\)/],
      [() => zeros([2], { dtype: 'float64' as 'float32' }), 'ERR_SAEKIT_DTYPE', /one of: float32, bfloat16, float16, int32 for options.dtype/],
      [() => randn([2], { seed: -1 }), 'ERR_SAEKIT_ARG', /for options.seed but received -1 \(number\)/],
      [() => randn([2], { dtype: 'int32' as 'float32' }), 'ERR_SAEKIT_DTYPE', /one of: float32, bfloat16, float16 for options.dtype/],
      // @ts-expect-error the constructor is private: `new Tensor()` does not compile for consumers either
      [() => new Tensor({} as never, Symbol('x')), 'ERR_SAEKIT_ARG', /cannot be constructed directly/],
      [() => tensor([1], undefined, { device: 'gpu' as 'cpu' }), 'ERR_SAEKIT_ARG', /one of 'auto', 'cpu', 'cuda', 'cuda:N' for options\.device but received 'gpu'/],
      [() => zeros([1], { device: 'cuda:-1' as 'cpu' }), 'ERR_SAEKIT_ARG', /options\.device/],
      [() => randn([1], { device: 0 as unknown as 'cpu' }), 'ERR_SAEKIT_ARG', /options\.device/],
    ];
    for (const [fn, code, msg] of cases) {
      let caught: unknown;
      try {
        fn();
      } catch (e) {
        caught = e;
      }
      expect(caught, String(msg)).toBeInstanceOf(SaekitError);
      expect((caught as SaekitError).code).toBe(code);
      expect((caught as SaekitError).message).toMatch(msg);
    }
  });

  it('an async failure carries the caller stack', async () => {
    const t = randn([2], { seed: 1, device: 'cpu' });
    t.dispose();
    const err = await t.toArray().catch((e: Error) => e);
    expect(err).toBeInstanceOf(SaekitError);
    expect((err as Error).stack).toMatch(/tensor\.test\.ts/);
  });
});

describe('tensor options are checked by name', () => {
  it('misspelt options of tensor, zeros and randn are errors naming the nearest option', () => {
    expect(() => tensor(new Float32Array(4), [2, 2], { dtpye: 'float32' } as never)).toThrow(/Unknown option options\.dtpye \(did you mean options\.dtype\?\)/);
    expect(() => zeros([2], { devce: 'cpu' } as never)).toThrow(/did you mean options\.device/);
    expect(() => randn([2], { sed: 1 } as never)).toThrow(/did you mean options\.seed/);
  });
});
