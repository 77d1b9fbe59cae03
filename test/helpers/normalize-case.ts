/**
 * SparseAutoencoder.normalizeDecoder on `device`: the exact float64 rule (norm and products in
 * float64, rounded once), queue order against steps called while it runs, and all-or-nothing
 * refusals. Used by the CPU tests and the device suites (loopback, CUDA).
 */
import type { expect as vitestExpect } from 'vitest';

import type { DeviceOption } from '../../lib/backend/index.js';
import { SparseAutoencoder, type SaeWeights } from '../../lib/index.js';
import { lcg } from './reference.js';

/** W with rows of W_dec scaled by random factors (about half the rows), the rest untouched. */
function offUnitWeights(w: SaeWeights, dIn: number, rnd: () => number): SaeWeights {
  const W_dec = Float32Array.from(w.W_dec);
  const L = W_dec.length / dIn;
  for (let i = 0; i < L; i++) {
    if (rnd() < 0.5) continue;
    const s = 0.3 + rnd() * 2.7;
    for (let d = 0; d < dIn; d++) W_dec[i * dIn + d]! *= s;
  }
  const b_enc = Float32Array.from(w.b_enc, () => rnd() - 0.5);
  return { ...w, W_dec, b_enc };
}

/** The rule in float64, rounded once to float32 (rows with |n - 1| < 1e-7 stay as they are). */
function reference(w: SaeWeights, dIn: number, L: number): { W_enc: Float32Array; b_enc: Float32Array; W_dec: Float32Array; rescaled: number } {
  const W_enc = Float32Array.from(w.W_enc);
  const b_enc = Float32Array.from(w.b_enc);
  const W_dec = Float32Array.from(w.W_dec);
  let rescaled = 0;
  for (let i = 0; i < L; i++) {
    let s = 0;
    for (let d = 0; d < dIn; d++) s += w.W_dec[i * dIn + d]! * w.W_dec[i * dIn + d]!;
    const n = Math.sqrt(s);
    if (Math.abs(n - 1) < 1e-7) continue;
    rescaled++;
    for (let d = 0; d < dIn; d++) {
      W_dec[i * dIn + d] = w.W_dec[i * dIn + d]! / n;
      W_enc[d * L + i] = w.W_enc[d * L + i]! * n;
    }
    b_enc[i] = w.b_enc[i]! * n;
  }
  return { W_enc, b_enc, W_dec, rescaled };
}

function same(expect: typeof vitestExpect, a: Float32Array, b: Float32Array, what: string): void {
  const bad = a.findIndex((v, i) => !Object.is(v, b[i]));
  expect(bad, `${what}: first differing element`).toBe(-1);
}

export async function normalizeDecoderCase(expect: typeof vitestExpect, device: DeviceOption): Promise<void> {
  const seed = (Date.now() ^ 0x2b7e1516) >>> 0;
  const rnd = lcg(seed);
  const [dIn, L, k, rows] = [13 + Math.floor(rnd() * 20), 37 + Math.floor(rnd() * 40), 3, 23];
  using base = SparseAutoencoder.create({ dIn, numLatents: L, k, seed: seed & 0x7fffffff, device: 'cpu' });
  const w = offUnitWeights(await base.weights(), dIn, rnd);
  const want = reference(w, dIn, L);
  expect(want.rescaled, `seed ${seed}`).toBeGreaterThan(5);
  const xs = Array.from({ length: 3 }, () => Float32Array.from({ length: rows * dIn }, () => rnd() * 2 - 1));

  // Awaited alone: the float64 rule's bits.
  using a = SparseAutoencoder.fromWeights(w, { k, device });
  expect(await a.normalizeDecoder()).toBe(want.rescaled);
  const got = await a.weights();
  same(expect, got.W_dec, want.W_dec, `W_dec (seed ${seed})`);
  same(expect, got.W_enc, want.W_enc, `W_enc (seed ${seed})`);
  same(expect, got.b_enc, want.b_enc, `b_enc (seed ${seed})`);
  same(expect, got.b_dec, w.b_dec, `b_dec (seed ${seed})`);
  const optA = a.adam({ lr: 1e-2 });
  for (const x of xs) await optA.step(x);
  const sequential = await a.weights();

  // Steps called while it runs come after it in queue order and are kept (not overwritten by a
  // snapshot taken before them).
  using b = SparseAutoencoder.fromWeights(w, { k, device });
  const optB = b.adam({ lr: 1e-2 });
  const pending = [b.normalizeDecoder(), ...xs.map((x) => optB.step(x))];
  await Promise.all(pending);
  const concurrent = await b.weights();
  for (const name of ['W_enc', 'b_enc', 'W_dec', 'b_dec'] as const) same(expect, concurrent[name], sequential[name], `${name} after steps queued behind normalizeDecoder (seed ${seed})`);
  expect(sequential.W_enc.some((v, i) => v !== want.W_enc[i])).toBe(true); // the steps changed something

  // All or nothing: an encoder weight that would overflow float32 when its latent is rescaled.
  const rowOff = want.W_dec.findIndex((v, j) => v !== w.W_dec[j]);
  const latent = Math.floor(rowOff / dIn);
  const huge = Float32Array.from(w.W_enc);
  huge[(dIn - 1) * L + latent] = 3e38;
  const W_dec = Float32Array.from(w.W_dec);
  for (let d = 0; d < dIn; d++) W_dec[latent * dIn + d] = d === 0 ? 2 : 0; // norm 2
  using c = SparseAutoencoder.fromWeights({ ...w, W_enc: huge, W_dec }, { k, device });
  await expect(c.normalizeDecoder()).rejects.toMatchObject({ code: 'ERR_SAEKIT_NONFINITE', message: expect.stringMatching(new RegExp(`latent ${latent} .*nothing was changed`)) });
  const after = await c.weights();
  same(expect, after.W_enc, huge, 'W_enc after a refused normalizeDecoder');
  same(expect, after.W_dec, W_dec, 'W_dec after a refused normalizeDecoder');
}
