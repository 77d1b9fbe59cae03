/** Sources under misuse: input arrays detached while a pass reads them. */
import { describe, expect, it } from 'vitest';

import { fromArray } from '../lib/data/index.js';
import { lcg } from './helpers/reference.js';

describe('fromArray', () => {
  for (const shuffle of [false, true]) {
    it(`data detached mid-pass (shuffle ${shuffle}): ERR_SAEKIT_ARG naming the change, on this pass and later ones`, async () => {
      const next = lcg(31);
      const [rows, dIn] = [1000, 7];
      const data = Float32Array.from({ length: rows * dIn }, () => next() - 0.5);
      const src = fromArray(data, dIn);
      const pass = async (detachAfter: number) => {
        let i = 0;
        for await (const b of src.batches({ batchSize: 64, shuffle, bufferBytes: 64 * dIn * 4 * 3 })) {
          expect(b.data.length).toBe(b.rows * dIn);
          if (++i === detachAfter) structuredClone(data.buffer, { transfer: [data.buffer] });
        }
      };
      await expect(pass(2)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/keep its 7000 values .* now has 0 \(its ArrayBuffer was detached/) });
      await expect(pass(0)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG' });
    });
  }
});
