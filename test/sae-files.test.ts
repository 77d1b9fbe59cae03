/**
 * SAE files: SAELens, sparsify and Gemma Scope layouts, byte-level fields and round trips.
 * References: a JS float64 encoder for JumpReLU and SAELens's rescaled TopK.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, constants, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { describe, expect, it } from 'vitest';

import { SaekitError, SparseAutoencoder, tensor } from '../lib/index.js';
import { foldDecoderNorms, readSaeFiles, readSafetensors, writeNpz, writeSaeFiles, writeSafetensors, type IoTensor } from '../lib/io/index.js';
import { checkDecoderNormFold, foldDecoderNormsSteps } from '../lib/io/sae-files.js';
import { runAll } from '../lib/slices.js';
import { gapBound, watchCall } from './helpers/event-loop.js';
import { f16ToNumber, randomHalfBits } from './helpers/data-fixtures.js';
import { freshSeed } from './helpers/io-helpers.js';
import { lcg } from './helpers/reference.js';

function tmp(): string {
  return mkdtempSync(path.join(os.tmpdir(), 'saekit-files-'));
}

interface W {
  W_enc: Float32Array;
  b_enc: Float32Array;
  W_dec: Float32Array;
  b_dec: Float32Array;
  threshold?: Float32Array;
}

/** Random weights with unit decoder rows (or rows of norm `norm(i)`). */
function randomWeights(dIn: number, L: number, seed: number, norm: (i: number) => number = () => 1): W {
  const next = lcg(seed);
  const g = () => next() * 2 - 1;
  const W_dec = new Float32Array(L * dIn).map(g);
  for (let i = 0; i < L; i++) {
    let s = 0;
    for (let d = 0; d < dIn; d++) s += W_dec[i * dIn + d]! ** 2;
    const f = norm(i) / Math.sqrt(s);
    for (let d = 0; d < dIn; d++) W_dec[i * dIn + d] = W_dec[i * dIn + d]! * f;
  }
  return {
    W_enc: new Float32Array(dIn * L).map(g),
    b_enc: new Float32Array(L).map(() => g() * 0.1),
    W_dec,
    b_dec: new Float32Array(dIn).map(() => g() * 0.1),
  };
}

/** A Gemma Scope params.npz in `dir` from weights (threshold default 0.1), plus `extra` arrays. */
async function writeGemmaScope(dir: string, w: W, dIn: number, L: number, extra: Record<string, IoTensor> = {}, compress = false): Promise<void> {
  await writeNpz(
    path.join(dir, 'params.npz'),
    {
      W_enc: { dtype: 'float32', shape: [dIn, L], data: w.W_enc },
      W_dec: { dtype: 'float32', shape: [L, dIn], data: w.W_dec },
      b_enc: { dtype: 'float32', shape: [L], data: w.b_enc },
      b_dec: { dtype: 'float32', shape: [dIn], data: w.b_dec },
      threshold: { dtype: 'float32', shape: [L], data: w.threshold ?? new Float32Array(L).fill(0.1) },
      ...extra,
    },
    { compress },
  );
}

function rows(n: number, dIn: number, seed: number): Float32Array {
  const next = lcg(seed);
  return new Float32Array(n * dIn).map(() => next() * 2 - 1);
}

/** Per row: sorted (value, index) of the active latents, float64. */
function refJumpRelu(w: W, x: Float32Array, dIn: number, L: number, applyBDec: boolean): [number, number][][] {
  const out: [number, number][][] = [];
  for (let n = 0; n < x.length / dIn; n++) {
    const act: [number, number][] = [];
    for (let l = 0; l < L; l++) {
      let z = w.b_enc[l]!;
      for (let d = 0; d < dIn; d++) z += (x[n * dIn + d]! - (applyBDec ? w.b_dec[d]! : 0)) * w.W_enc[d * L + l]!;
      if (z > w.threshold![l]! && z > 0) act.push([z, l]);
    }
    act.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    out.push(act);
  }
  return out;
}

describe('SAE files: SAELens and sparsify round trips', () => {
  const dIn = 33;
  const L = 45;
  const k = 5;

  it('SAELens: save then load gives identical weights and encodings; fields and orientations as SAELens expects', async () => {
    const seed = Date.now() >>> 0;
    using sae = SparseAutoencoder.fromWeights(randomWeights(dIn, L, seed), { k });
    const dir = tmp();
    const files = await sae.save(dir, { metadata: { hook_name: 'blocks.3.hook_resid_post' } });
    expect(files.map((f) => path.basename(f)).sort()).toEqual(['cfg.json', 'sae_weights.safetensors']);
    expect(readdirSync(dir).sort()).toEqual(['cfg.json', 'sae_weights.safetensors']); // no temporary files left
    const cfg = JSON.parse(readFileSync(path.join(dir, 'cfg.json'), 'utf8'));
    expect(cfg).toMatchObject({ architecture: 'topk', d_in: dIn, d_sae: L, k, dtype: 'float32', apply_b_dec_to_input: true, normalize_activations: 'none' });
    expect(cfg.metadata.hook_name).toBe('blocks.3.hook_resid_post');
    const st = await readSafetensors(path.join(dir, 'sae_weights.safetensors'));
    expect(Object.fromEntries(st.tensors.map((t) => [t.name, [t.dtype, t.shape]]))).toEqual({
      W_enc: ['float32', [dIn, L]],
      b_enc: ['float32', [L]],
      W_dec: ['float32', [L, dIn]],
      b_dec: ['float32', [dIn]],
    });
    await st.close();
    using back = await SparseAutoencoder.load(dir);
    expect([back.dIn, back.numLatents, back.k, back.architecture]).toEqual([dIn, L, k, 'topk']);
    const [w0, w1] = [await sae.weights(), await back.weights()];
    for (const n of ['W_enc', 'b_enc', 'W_dec', 'b_dec'] as const) expect(Buffer.from(w1[n].buffer).equals(Buffer.from(w0[n].buffer)), n).toBe(true);
    const x = rows(17, dIn, seed + 1);
    const [c0, c1] = [await sae.encode(x), await back.encode(x)];
    expect(Array.from(c1.indices)).toEqual(Array.from(c0.indices));
    expect(Array.from(c1.values)).toEqual(Array.from(c0.values));
  });

  it('sparsify: encoder.weight is [F, d]; a SAELens file and a sparsify file of the same weights load to the same model', async () => {
    const seed = (Date.now() >>> 0) + 7;
    using sae = SparseAutoencoder.fromWeights(randomWeights(dIn, L, seed), { k });
    const a = tmp();
    const b = tmp();
    await sae.save(a, { format: 'saelens' });
    await sae.save(b, { format: 'sparsify' });
    const cfg = JSON.parse(readFileSync(path.join(b, 'cfg.json'), 'utf8'));
    // expansion_factor: the least whose d_in multiple holds every latent (sparsify reads num_latents first).
    expect(cfg).toMatchObject({ activation: 'topk', num_latents: L, expansion_factor: Math.ceil(L / dIn), k, d_in: dIn, normalize_decoder: true, transcode: false, skip_connection: false });
    expect(Math.ceil(L / dIn)).toBe(2);
    const st = await readSafetensors(path.join(b, 'sae.safetensors'));
    const enc = await st.read('encoder.weight');
    expect(enc.shape).toEqual([L, dIn]);
    const w = await sae.weights();
    // encoder.weight[l, d] == W_enc[d, l]
    expect((enc.data as Float32Array)[3 * dIn + 5]).toBe(w.W_enc[5 * L + 3]);
    await st.close();
    using fromA = await SparseAutoencoder.load(a);
    using fromB = await SparseAutoencoder.load(path.join(b, 'sae.safetensors'));
    const [wa, wb] = [await fromA.weights(), await fromB.weights()];
    for (const n of ['W_enc', 'b_enc', 'W_dec', 'b_dec'] as const) expect(Array.from(wb[n]), n).toEqual(Array.from(wa[n]));
    const x = rows(9, dIn, seed);
    expect(Array.from((await fromB.encode(x)).indices)).toEqual(Array.from((await fromA.encode(x)).indices));
  });

  it('bfloat16 files store the weights rounded to nearest even, and load back as those values', async () => {
    using sae = SparseAutoencoder.fromWeights(randomWeights(dIn, L, 99), { k });
    const dir = tmp();
    await sae.save(dir, { dtype: 'bfloat16' });
    expect(JSON.parse(readFileSync(path.join(dir, 'cfg.json'), 'utf8')).dtype).toBe('bfloat16');
    using back = await SparseAutoencoder.load(dir);
    const w = await sae.weights();
    const wb = await back.weights();
    for (const n of ['W_enc', 'b_enc', 'W_dec', 'b_dec'] as const) {
      using t = tensor(w[n]);
      using h = await t.to('bfloat16');
      using r = await h.to('float32');
      expect(Array.from(wb[n]), n).toEqual(Array.from(await r.toArray()));
    }
  });

  it('a bfloat16 save refuses a finite weight that rounds to infinity there, naming it, and writes nothing (load() refused the file it wrote)', async () => {
    const w = randomWeights(dIn, L, 98);
    for (const [v, format] of [[3.4e38, 'saelens'], [-3.4e38, 'sparsify']] as const) {
      const b_dec = w.b_dec.slice();
      b_dec[5] = v;
      using sae = SparseAutoencoder.fromWeights({ ...w, b_dec }, { k });
      const dir = tmp();
      const err = await sae.save(dir, { format, dtype: 'bfloat16' }).catch((e: unknown) => e);
      expect(err, format).toMatchObject({
        code: 'ERR_SAEKIT_NONFINITE',
        message: `Expected weights within bfloat16's range for dtype 'bfloat16' but b_dec[5] = ${Math.fround(v)} rounds to ${v > 0 ? '' : '-'}Infinity there (the largest finite bfloat16 is 3.3895e38); save as 'float32'; nothing was written`,
      });
      expect(readdirSync(dir), format).toEqual([]);
      // float32 keeps it; a value under the rounding midpoint saves as the largest finite bfloat16.
      await sae.save(dir, { format });
      b_dec[5] = Math.sign(v) * 3.39e38;
      sae.setWeights({ b_dec });
      await sae.save(dir, { format, dtype: 'bfloat16' });
      using back = await SparseAutoencoder.load(dir);
      expect((await back.weights()).b_dec[5], format).toBe(Math.sign(v) * 3.3895313892515355e38);
    }
  });

  it('save() writes the weights of the call, in queue order: a setWeights() or dispose() called after it changes nothing saved', async () => {
    const w = randomWeights(dIn, L, 31);
    const sae = SparseAutoencoder.fromWeights(w, { k });
    const [a, b] = [tmp(), tmp()];
    const first = sae.save(a);
    sae.setWeights({ b_dec: new Float32Array(dIn).fill(7) });
    const second = sae.save(b);
    sae.dispose();
    await first;
    await second;
    using backA = await SparseAutoencoder.load(a);
    using backB = await SparseAutoencoder.load(b);
    expect(Array.from((await backA.weights()).b_dec)).toEqual(Array.from(w.b_dec));
    expect(Array.from((await backB.weights()).b_dec)).toEqual(new Array(dIn).fill(7));
  });
});

describe('SAE files: JumpReLU (Gemma Scope, SAELens)', () => {
  const dIn = 29;
  const L = 61;

  it('Gemma Scope params.npz loads as JumpReLU without b_dec subtraction and encodes/decodes like the reference', async () => {
    const seed = Date.now() >>> 0;
    const w = randomWeights(dIn, L, seed);
    w.threshold = new Float32Array(L).map((_, i) => 0.2 + 0.01 * (i % 7));
    const dir = tmp();
    await writeGemmaScope(dir, w, dIn, L, {}, true);
    using sae = await SparseAutoencoder.load(dir);
    expect([sae.architecture, sae.applyBDecToInput, sae.dIn, sae.numLatents, sae.k]).toEqual(['jumprelu', false, dIn, L, 0]);
    const x = rows(23, dIn, seed + 1);
    const ref = refJumpRelu(w, x, dIn, L, false);
    const codes = await sae.encode(x);
    expect(codes.k).toBe(Math.max(1, ...ref.map((r) => r.length)));
    for (let n = 0; n < ref.length; n++) {
      const want = ref[n]!;
      for (let j = 0; j < codes.k; j++) {
        const v = codes.values[n * codes.k + j]!;
        if (j < want.length) {
          expect(codes.indices[n * codes.k + j], `row ${n} slot ${j}`).toBe(want[j]![1]);
          expect(Math.abs(v - want[j]![0])).toBeLessThan(1e-5 * (1 + Math.abs(want[j]![0])));
        } else {
          expect(v, `row ${n} padding`).toBe(0);
        }
      }
    }
    // decode = b_dec + sum f W_dec
    const recon = await sae.decode(codes);
    for (let n = 0; n < ref.length; n++) {
      for (let d = 0; d < dIn; d++) {
        let want = w.b_dec[d]!;
        for (const [v, l] of ref[n]!) want += v * w.W_dec[l * dIn + d]!;
        expect(Math.abs(recon[n * dIn + d]! - want)).toBeLessThan(1e-4);
      }
    }
    await expect(sae.gradients(x)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG' });
    expect(() => sae.adam()).toThrow(/JumpReLU/);
  });

  it('a JumpReLU latent fires only strictly above its threshold: a pre-activation equal to it gives no code', async () => {
    // Exact pre-activations: x is the unit basis and b_enc is 0, so z[r, l] = W_enc[r, l]. Each is
    // the latent's threshold, one float32 ulp either side of it, 0 or negative, at random.
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const [d, F] = [7, 37];
    const w = randomWeights(d, F, seed);
    w.b_enc.fill(0);
    w.threshold = Float32Array.from({ length: F }, () => (1 + Math.floor(next() * 63)) / 64);
    const bits = new Float32Array(1);
    const u32 = new Uint32Array(bits.buffer);
    const step = (t: number, by: number) => {
      bits[0] = t;
      u32[0] += by;
      return bits[0]!;
    };
    for (let r = 0; r < d; r++) {
      for (let l = 0; l < F; l++) {
        const t = w.threshold[l]!;
        const pick = Math.floor(next() * 5);
        w.W_enc[r * F + l] = pick === 0 ? t : pick === 1 ? step(t, 1) : pick === 2 ? step(t, -1) : pick === 3 ? 0 : -t;
      }
    }
    const x = new Float32Array(d * d);
    for (let r = 0; r < d; r++) x[r * d + r] = 1;
    using sae = SparseAutoencoder.fromWeights(w, { architecture: 'jumprelu', applyBDecToInput: false });
    const ref = refJumpRelu(w, x, d, F, false);
    const codes = await sae.encode(x);
    expect(codes.k, `seed ${seed}`).toBe(Math.max(1, ...ref.map((a) => a.length)));
    for (let r = 0; r < d; r++) {
      const got = Array.from(codes.indices.subarray(r * codes.k, r * codes.k + ref[r]!.length));
      expect(got, `seed ${seed}, row ${r}`).toEqual(ref[r]!.map((a) => a[1]));
      expect(Array.from(codes.values.subarray(r * codes.k, r * codes.k + ref[r]!.length)), `seed ${seed}, row ${r}`).toEqual(ref[r]!.map((a) => a[0]));
      for (let j = ref[r]!.length; j < codes.k; j++) expect(codes.values[r * codes.k + j], `seed ${seed}, row ${r} padding`).toBe(0);
    }
  });

  it('a JumpReLU SAE with non-unit decoder rows saves with unit rows and the same function (SAELens layout)', async () => {
    const w = randomWeights(dIn, L, 5, (i) => 0.5 + (i % 5) * 0.3);
    w.threshold = new Float32Array(L).fill(0.15);
    using sae = SparseAutoencoder.fromWeights(w, { architecture: 'jumprelu', applyBDecToInput: true });
    const dir = tmp();
    await sae.save(dir);
    expect(JSON.parse(readFileSync(path.join(dir, 'cfg.json'), 'utf8'))).toMatchObject({ architecture: 'jumprelu', apply_b_dec_to_input: true });
    using back = await SparseAutoencoder.load(dir);
    const wb = await back.weights();
    for (let i = 0; i < L; i++) {
      let s = 0;
      for (let d = 0; d < dIn; d++) s += wb.W_dec[i * dIn + d]! ** 2;
      expect(Math.abs(Math.sqrt(s) - 1)).toBeLessThan(1e-5);
    }
    const x = rows(31, dIn, 6);
    const [c0, c1] = [await sae.encode(x), await back.encode(x)];
    const active = (c: typeof c0) => Array.from({ length: c.rows }, (_, n) => Array.from(c.indices.slice(n * c.k, (n + 1) * c.k)).filter((_, j) => c.values[n * c.k + j]! > 0).sort((a, b) => a - b));
    expect(active(c1)).toEqual(active(c0));
    const [r0, r1] = [await sae.decode(c0), await back.decode(c1)];
    for (let q = 0; q < r0.length; q++) expect(Math.abs(r1[q]! - r0[q]!)).toBeLessThan(1e-4);
  });

  it('a JumpReLU SAE whose decoder rows are within 1% of unit norm saves with unit rows too (float32 rounding of a unit row is the only slack)', async () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const F = 5 + Math.floor(next() * 20);
    // Norms 1 +- up to 0.5%, some exactly 1.
    const norms = Array.from({ length: F }, () => (next() < 0.2 ? 1 : 1 + (next() - 0.5) * 0.01));
    const w = randomWeights(dIn, F, seed, (i) => norms[i]!);
    w.threshold = Float32Array.from({ length: F }, () => 0.05 + next() * 0.2);
    using sae = SparseAutoencoder.fromWeights(w, { architecture: 'jumprelu', applyBDecToInput: true });
    const dir = tmp();
    await sae.save(dir);
    using back = await SparseAutoencoder.load(dir);
    const wb = await back.weights();
    for (let i = 0; i < F; i++) {
      let s = 0;
      for (let d = 0; d < dIn; d++) s += wb.W_dec[i * dIn + d]! ** 2;
      // A float32 unit row: each entry off by 2^-24 relative, the norm by about that much.
      expect(Math.abs(Math.sqrt(s) - 1), `seed ${seed}: row ${i} of norm ${norms[i]}`).toBeLessThan(1e-6);
      // The threshold scales with the row's norm (as the encoder column and bias do).
      expect(Math.abs(wb.threshold![i]! - w.threshold[i]! * Math.sqrt(w.W_dec.slice(i * dIn, (i + 1) * dIn).reduce((a, v) => a + v * v, 0))), `seed ${seed}: threshold ${i}`).toBeLessThan(1e-6);
    }
  });

  it('save() writes apply_b_dec_to_input as the SAE has it (false too), and load() reads the same encoder back', async () => {
    const seed = Date.now() >>> 0;
    for (const [architecture, applyBDecToInput] of [['topk', false], ['jumprelu', false], ['topk', true]] as const) {
      const F = 7 + (seed % 9);
      const w = randomWeights(dIn, F, seed);
      if (architecture === 'jumprelu') w.threshold = new Float32Array(F).fill(0.1);
      using sae = SparseAutoencoder.fromWeights(w, architecture === 'topk' ? { k: 3, applyBDecToInput } : { architecture, applyBDecToInput });
      const dir = tmp();
      await sae.save(dir);
      expect(JSON.parse(readFileSync(path.join(dir, 'cfg.json'), 'utf8')).apply_b_dec_to_input, `${architecture} ${applyBDecToInput}`).toBe(applyBDecToInput);
      using back = await SparseAutoencoder.load(dir);
      expect(back.applyBDecToInput).toBe(applyBDecToInput);
      const x = rows(13, dIn, seed);
      const [p0, p1] = [await sae.preActivations(x), await back.preActivations(x)];
      for (let q = 0; q < p0.length; q++) expect(Math.abs(p1[q]! - p0[q]!), `${architecture} ${applyBDecToInput}: pre-activation ${q}`).toBeLessThan(1e-4);
    }
  });

  it('save() refuses a JumpReLU SAE whose rescaled encoder would overflow float32, writing nothing; a large finite rescale saves exactly', async () => {
    const [dI, F] = [6, 10];
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    const j = Math.floor(next() * F);
    const d = Math.floor(next() * dI);
    // Latent j's decoder row has norm ~1e19: its W_enc column, b_enc and threshold are multiplied by it.
    const make = (edit: (w: W) => void): W => {
      const w = randomWeights(dI, F, seed, (i) => (i === j ? 1e19 : 1));
      w.threshold = new Float32Array(F).fill(0.2);
      edit(w);
      return w;
    };
    const norm = (w: W) => Math.sqrt(Array.from(w.W_dec.subarray(j * dI, (j + 1) * dI)).reduce((a, v) => a + v * v, 0));
    for (const [what, edit] of [
      [`W_enc \\(row ${d}\\)`, (w: W) => (w.W_enc[d * F + j] = 1e20)],
      ['b_enc', (w: W) => (w.b_enc[j] = -1e20)],
      ['threshold', (w: W) => (w.threshold![j] = 1e20)],
    ] as const) {
      const w = make(edit);
      using sae = SparseAutoencoder.fromWeights(w, { architecture: 'jumprelu' });
      const dir = path.join(tmp(), 'sae');
      const err = await sae.save(dir).catch((e: unknown) => e);
      expect(err, `seed ${seed}: ${what}`).toBeInstanceOf(SaekitError);
      expect((err as SaekitError).code).toBe('ERR_SAEKIT_NONFINITE');
      expect((err as SaekitError).message).toMatch(new RegExp(`latent ${j} is rescaled by its decoder norm .* but its ${what} overflows float32; nothing was written`));
      expect(existsSync(dir)).toBe(false);
    }
    // 1e18 x 1e19 is finite in float32: saved as the float64 product rounded once, and loaded back.
    const w = make((w) => (w.W_enc[d * F + j] = 1e18));
    using sae = SparseAutoencoder.fromWeights(w, { architecture: 'jumprelu' });
    const dir = tmp();
    await sae.save(dir);
    using back = await SparseAutoencoder.load(dir);
    const wb = await back.weights();
    expect(wb.W_enc[d * F + j], `seed ${seed}`).toBe(Math.fround(w.W_enc[d * F + j]! * norm(w)));
    expect(wb.threshold![j]).toBe(Math.fround(w.threshold![j]! * norm(w)));
  });

  it('SAELens TopK with rescale_acts_by_decoder_norm is folded at load into the same function, zero decoder rows included', async () => {
    const [dI, F, k] = [13, 37, 4];
    const w = randomWeights(dI, F, 11, (i) => 0.3 + (i % 4) * 0.4);
    // Two latents with zero decoder rows and encoders that would win every row unscaled: SAELens
    // multiplies their pre-activations by 0, so they never fire.
    const zero = [Math.floor(Math.random() * 18), 18 + Math.floor(Math.random() * 19)];
    for (const i of zero) {
      w.W_dec.fill(0, i * dI, (i + 1) * dI);
      for (let d = 0; d < dI; d++) w.W_enc[d * F + i] = 50;
      w.b_enc[i] = 100;
    }
    const dir = tmp();
    await writeSafetensors(path.join(dir, 'sae_weights.safetensors'), {
      W_enc: { dtype: 'float32', shape: [dI, F], data: w.W_enc },
      b_enc: { dtype: 'float32', shape: [F], data: w.b_enc },
      W_dec: { dtype: 'float32', shape: [F, dI], data: w.W_dec },
      b_dec: { dtype: 'float32', shape: [dI], data: w.b_dec },
    });
    writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ architecture: 'topk', d_in: dI, d_sae: F, k, apply_b_dec_to_input: true, rescale_acts_by_decoder_norm: true, dtype: 'float32' }));
    using sae = await SparseAutoencoder.load(dir);
    const x = rows(19, dI, 12);
    const { recon, codes } = await sae.forward(x);
    for (let q = 0; q < codes.indices.length; q++) if (zero.includes(codes.indices[q]!)) expect(codes.values[q], `latent ${codes.indices[q]} (zero decoder row)`).toBe(0);
    // SAELens: z = (x - b_dec) W_enc + b_enc; z *= ||W_dec,i||; f = ReLU(topk(z)); x_hat = (f / n) W_dec + b_dec.
    const n = Array.from({ length: F }, (_, i) => Math.hypot(...Array.from(w.W_dec.slice(i * dI, (i + 1) * dI))));
    for (let r = 0; r < 19; r++) {
      const z = Array.from({ length: F }, (_, l) => {
        let s = w.b_enc[l]!;
        for (let d = 0; d < dI; d++) s += (x[r * dI + d]! - w.b_dec[d]!) * w.W_enc[d * F + l]!;
        return [s * n[l]!, l] as [number, number];
      }).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
      for (let d = 0; d < dI; d++) {
        let want = w.b_dec[d]!;
        for (const [v, l] of z.slice(0, k)) if (v > 0) want += (v / n[l]!) * w.W_dec[l * dI + d]!;
        expect(Math.abs(recon[r * dI + d]! - want)).toBeLessThan(1e-4);
      }
    }
  });
});

describe('SAE files: bad input', () => {
  async function expectFormat(p: string, re: RegExp): Promise<void> {
    const err = await SparseAutoencoder.load(p).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SaekitError);
    expect((err as SaekitError).code).toBe('ERR_SAEKIT_FORMAT');
    expect((err as SaekitError).message).toMatch(re);
  }

  it('names the file and the reason', async () => {
    using sae = SparseAutoencoder.fromWeights(randomWeights(7, 11, 1), { k: 2 });
    const dir = tmp();
    await sae.save(dir);
    const cfgPath = path.join(dir, 'cfg.json');
    const cfg = JSON.parse(readFileSync(cfgPath, 'utf8'));
    writeFileSync(cfgPath, JSON.stringify({ ...cfg, d_sae: undefined }));
    await expectFormat(dir, /cfg\.json: missing field d_sae/);
    writeFileSync(cfgPath, JSON.stringify({ ...cfg, d_sae: 12 }));
    await expectFormat(dir, /sae_weights\.safetensors: tensor W_enc has shape \[7, 11\] but the config says \[7, 12\]/);
    writeFileSync(cfgPath, JSON.stringify({ ...cfg, architecture: 'gated' }));
    await expectFormat(dir, /architecture 'gated' is not supported/);
    writeFileSync(cfgPath, '{"d_in": 7,');
    await expectFormat(dir, /cfg\.json: invalid JSON/);
    writeFileSync(cfgPath, JSON.stringify({ ...cfg, k: 0 }));
    await expectFormat(dir, /k = 0 is outside/);
    await expectFormat(tmp(), /no SAE files found/);
    const err = await SparseAutoencoder.load(path.join(dir, 'nope')).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_SAEKIT_ARG', message: `Expected an SAE folder or file for pathOrDir but ${path.join(dir, 'nope')} does not exist` });
  });

  it('refuses to save a JumpReLU SAE as sparsify, and checks options', async () => {
    const w = randomWeights(7, 11, 2);
    w.threshold = new Float32Array(11).fill(0.1);
    using sae = SparseAutoencoder.fromWeights(w, { architecture: 'jumprelu' });
    await expect(sae.save(tmp(), { format: 'sparsify' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG' });
    await expect(sae.save(tmp(), { format: 'torch' as 'saelens' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG' });
    await expect(sae.save(tmp(), { dtype: 'float16' as 'float32' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_DTYPE' });
    expect(() => SparseAutoencoder.fromWeights({ ...w, threshold: undefined }, { architecture: 'jumprelu' })).toThrow(/threshold/);
    // The other architecture's parameter is refused, not dropped: a k for a JumpReLU SAE, a
    // threshold for a TopK one (which would otherwise encode without it).
    expect(() => SparseAutoencoder.fromWeights(w, { architecture: 'jumprelu', k: 2 } as never)).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/^Expected no k for a JumpReLU SAE .* for options\.k but received 2 \(number\)$/) }),
    );
    expect(() => SparseAutoencoder.fromWeights(w, { k: 2 })).toThrow(
      expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/^Expected no threshold for a TopK SAE .* for threshold but received a Float32Array of length 11$/) }),
    );
    using topk = SparseAutoencoder.fromWeights({ ...w, threshold: undefined }, { k: 2 });
    expect([topk.architecture, topk.k]).toEqual(['topk', 2]);
  });

  it('io.writeSaeFiles checks its config, weights and options as save() does, writing nothing it could not load back', async () => {
    // dtype 'float16' wrote bfloat16 bits labelled F16 (loaded back as other weights), a misspelt
    // format wrote SAELens, and k '2', architecture 'TopK' or applyBDecToInput 'no' wrote a
    // cfg.json that load() refuses.
    const w = randomWeights(4, 8, 3);
    const cfg = { architecture: 'topk' as const, dIn: 4, numLatents: 8, k: 2, applyBDecToInput: true };
    const bad: [string, () => Promise<unknown>, string, RegExp][] = [
      ['dtype float16', () => writeSaeFiles(tmp(), cfg, w, { dtype: 'float16' as 'float32' }), 'ERR_SAEKIT_DTYPE', /options\.dtype/],
      ['format typo', () => writeSaeFiles(tmp(), cfg, w, { format: 'sparsfy' as 'sparsify' }), 'ERR_SAEKIT_ARG', /options\.format/],
      ['option typo', () => writeSaeFiles(tmp(), cfg, w, { fromat: 'sparsify' } as never), 'ERR_SAEKIT_ARG', /options\.fromat \(did you mean options\.format\?\)/],
      ['metadata string', () => writeSaeFiles(tmp(), cfg, w, { metadata: 'ab' as never }), 'ERR_SAEKIT_ARG', /options\.metadata/],
      ['options null', () => writeSaeFiles(tmp(), cfg, w, null as never), 'ERR_SAEKIT_ARG', /for options but received null/],
      ['k string', () => writeSaeFiles(tmp(), { ...cfg, k: '2' as never }, w), 'ERR_SAEKIT_ARG', /config\.k/],
      ['k missing', () => writeSaeFiles(tmp(), { ...cfg, k: undefined }, w), 'ERR_SAEKIT_ARG', /config\.k/],
      ['k too large', () => writeSaeFiles(tmp(), { ...cfg, k: 9 }, w), 'ERR_SAEKIT_ARG', /integer between 1 and 8 for config\.k/],
      ['architecture', () => writeSaeFiles(tmp(), { ...cfg, architecture: 'TopK' as 'topk' }, w), 'ERR_SAEKIT_ARG', /config\.architecture/],
      ['applyBDecToInput', () => writeSaeFiles(tmp(), { ...cfg, applyBDecToInput: 'no' as never }, w), 'ERR_SAEKIT_ARG', /config\.applyBDecToInput/],
      ['config undefined', () => writeSaeFiles(tmp(), undefined as never, w), 'ERR_SAEKIT_ARG', /for config but received undefined/],
      ['weights null', () => writeSaeFiles(tmp(), cfg, null as never), 'ERR_SAEKIT_ARG', /for weights but received null/],
      ['W_dec length', () => writeSaeFiles(tmp(), cfg, { ...w, W_dec: new Float32Array(31) }), 'ERR_SAEKIT_SHAPE', /weights\.W_dec/],
      ['threshold', () => writeSaeFiles(tmp(), { ...cfg, architecture: 'jumprelu' }, w), 'ERR_SAEKIT_ARG', /weights\.threshold/],
      ['dir', () => writeSaeFiles(Symbol('d') as never, cfg, w), 'ERR_SAEKIT_ARG', /for dir but received a symbol/],
    ];
    for (const [label, call, code, re] of bad) {
      const err = await call().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err, label).toBeInstanceOf(SaekitError);
      expect(err, label).toMatchObject({ code, message: expect.stringMatching(re) });
    }
    const dir = tmp();
    await writeSaeFiles(dir, cfg, w, { dtype: 'bfloat16', format: 'sparsify' });
    expect((await readSaeFiles(dir)).config).toMatchObject({ format: 'sparsify', dtype: 'bfloat16', k: 2 });
  });

  it('io.readSaeFiles refuses a path that is not a string (a symbol or a detached typed array was a raw TypeError)', async () => {
    const detached = new Uint8Array(4);
    structuredClone(detached.buffer, { transfer: [detached.buffer] });
    for (const bad of [Symbol('p'), detached, undefined, '']) {
      await expect(readSaeFiles(bad as never)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/Expected a non-empty file path string for pathOrDir /) });
    }
  });

  it('io.foldDecoderNorms checks its sizes and weights: swapped dIn and numLatents, a string or Infinity are refused, not folded wrongly or looped on forever', () => {
    const w = randomWeights(4, 8, 5, () => 3);
    const copy = () => ({ ...w, W_enc: w.W_enc.slice(), b_enc: w.b_enc.slice(), W_dec: w.W_dec.slice() });
    // Swapped: W_enc and W_dec hold the same 32 values, so the old code folded [8, 4] rows of a [4, 8] decoder.
    expect(() => foldDecoderNorms(copy(), 8, 4)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_SHAPE', message: expect.stringMatching(/for w\.b_enc but received a Float32Array of length 8/) }));
    expect(() => foldDecoderNorms(copy(), '4' as never, 8)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/for dIn but received '4' \(string\)/) }));
    expect(() => foldDecoderNorms(copy(), Infinity, 8)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/for dIn/) }));
    expect(() => foldDecoderNorms(undefined as never, 4, 8)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/for w but received undefined/) }));
    expect(() => foldDecoderNorms({ ...copy(), threshold: [1] as never }, 4, 8)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/w\.threshold/) }));
    expect(() => foldDecoderNorms(copy(), 4, 8, 1 as never)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/silenceZeroRows/) }));
    const ok = copy();
    expect(foldDecoderNorms(ok, 4, 8)).toEqual({ rescaled: 8, zeroRow: -1 });
    for (let i = 0; i < 8; i++) expect(Math.hypot(...ok.W_dec.subarray(i * 4, i * 4 + 4))).toBeCloseTo(1, 6);
  });
});

describe('SAE files: folding decoder norms (row-major, in slices)', () => {
  /** The fold one latent at a time (x * n, x / n with n the float64 norm, rounded to float32 once). */
  function naiveFold(w: W & { threshold?: Float32Array }, dIn: number, L: number, silence: boolean): { rescaled: number; zeroRow: number } {
    let rescaled = 0;
    let zeroRow = -1;
    for (let i = 0; i < L; i++) {
      let s = 0;
      for (let d = 0; d < dIn; d++) s += w.W_dec[i * dIn + d]! ** 2;
      const n = Math.sqrt(s);
      if (!(n > 0)) {
        if (zeroRow < 0) zeroRow = i;
        if (silence) {
          for (let d = 0; d < dIn; d++) w.W_enc[d * L + i] = 0;
          w.b_enc[i] = 0;
        }
        continue;
      }
      if (Math.abs(n - 1) < 1e-7) continue;
      rescaled++;
      for (let d = 0; d < dIn; d++) {
        w.W_dec[i * dIn + d] = w.W_dec[i * dIn + d]! / n;
        w.W_enc[d * L + i] = w.W_enc[d * L + i]! * n;
      }
      w.b_enc[i] = w.b_enc[i]! * n;
      if (w.threshold) w.threshold[i] = w.threshold[i]! * n;
    }
    return { rescaled, zeroRow };
  }
  const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

  it('equals the per-latent fold bit for bit: zero, unit and scaled rows, with and without threshold and silencing (fresh data, odd sizes)', () => {
    const seed = Date.now() >>> 0;
    const next = lcg(seed);
    for (let trial = 0; trial < 40; trial++) {
      const dIn = 1 + Math.floor(next() * 13);
      const L = 1 + Math.floor(next() * 37);
      const kind = Array.from({ length: L }, () => Math.floor(next() * 4)); // 0 zero, 1 unit, 2-3 scaled
      const base = randomWeights(dIn, L, seed + trial, (i) => (kind[i] === 1 ? 1 : 0.01 + 30 * next()));
      for (let i = 0; i < L; i++) if (kind[i] === 0) base.W_dec.fill(0, i * dIn, (i + 1) * dIn);
      const threshold = next() < 0.5 ? Float32Array.from({ length: L }, () => next()) : undefined;
      const silence = next() < 0.5;
      const copy = () => ({ W_enc: base.W_enc.slice(), b_enc: base.b_enc.slice(), W_dec: base.W_dec.slice(), b_dec: base.b_dec.slice(), ...(threshold ? { threshold: threshold.slice() } : {}) });
      const [a, b] = [copy(), copy()];
      const want = naiveFold(a, dIn, L, silence);
      expect(foldDecoderNorms(b, dIn, L, silence), `seed ${seed} trial ${trial}`).toEqual(want);
      for (const key of ['W_enc', 'b_enc', 'W_dec', ...(threshold ? ['threshold' as const] : [])] as const) {
        expect(bits(b[key]!).equals(bits(a[key]!)), `seed ${seed} trial ${trial}: ${key}`).toBe(true);
      }
    }
  });

  it('checkDecoderNormFold names the first latent that would overflow, and its first tensor (b_enc, threshold, then W_enc by row)', () => {
    const [dIn, L] = [5, 9];
    const w = { ...randomWeights(dIn, L, 3, (i) => (i === 2 || i === 6 ? 1e30 : 1)), threshold: new Float32Array(L).fill(0.5) };
    // Latent 6 overflows in W_enc row 1; latent 2 in W_enc rows 4 and 3: latent 2, row 3 is named.
    w.W_enc[1 * L + 6] = 1e20;
    w.W_enc[4 * L + 2] = 1e20;
    w.W_enc[3 * L + 2] = -1e20;
    expect(() => checkDecoderNormFold(w, dIn, L)).toThrow(expect.objectContaining({ code: 'ERR_SAEKIT_NONFINITE', message: expect.stringMatching(/latent 2 is rescaled by its decoder norm [\d.e+]+ .* its W_enc \(row 3\) overflows/) }));
    w.threshold[2] = 1e20;
    expect(() => checkDecoderNormFold(w, dIn, L)).toThrow(/latent 2 .* its threshold overflows/);
    w.b_enc[2] = 1e20;
    expect(() => checkDecoderNormFold(w, dIn, L)).toThrow(/latent 2 .* its b_enc overflows/);
    w.W_dec.fill(0, 2 * dIn, 3 * dIn); // a zero row is not folded: latent 6 is next
    expect(() => checkDecoderNormFold(w, dIn, L)).toThrow(/latent 6 .* its W_enc \(row 1\) overflows/);
    // save()'s fold makes the same check from its own norms, before it changes anything.
    const before = structuredClone(w);
    expect(() => runAll(foldDecoderNormsSteps(w, dIn, L, false, true))).toThrow(/latent 6 .* its W_enc \(row 1\) overflows/);
    expect(w).toEqual(before);
    w.W_enc[1 * L + 6] = 1;
    expect(runAll(foldDecoderNormsSteps(w, dIn, L, false, true)).rescaled).toBeGreaterThan(0);
  });

  it('a SAELens TopK file with rescale_acts_by_decoder_norm loads, and a sparsify bfloat16 save runs, with the event loop turning', async () => {
    const seed = Date.now() >>> 0;
    const [dIn, L] = [1024, 16384];
    const w = randomWeights(dIn, L, seed, (i) => 0.5 + (i % 7));
    const dir = tmp();
    await writeSaeFiles(dir, { architecture: 'topk', dIn, numLatents: L, k: 32, applyBDecToInput: true }, w);
    const cfgPath = path.join(dir, 'cfg.json');
    writeFileSync(cfgPath, JSON.stringify({ ...JSON.parse(readFileSync(cfgPath, 'utf8')), rescale_acts_by_decoder_norm: true }));
    const read = await watchCall(() => readSaeFiles(dir));
    expect(read.longest, `seed ${seed}: longest gap of a ${read.elapsed.toFixed(0)} ms read`).toBeLessThan(gapBound(read.elapsed));
    const want = { W_enc: w.W_enc.slice(), b_enc: w.b_enc.slice(), W_dec: w.W_dec.slice(), b_dec: w.b_dec };
    naiveFold(want, dIn, L, true);
    for (const key of ['W_enc', 'b_enc', 'W_dec'] as const) expect(bits(read.value.weights[key]).equals(bits(want[key])), `seed ${seed}: ${key}`).toBe(true);
    const out = tmp();
    const saved = await watchCall(() => writeSaeFiles(out, { architecture: 'topk', dIn, numLatents: L, k: 32, applyBDecToInput: true }, w, { format: 'sparsify', dtype: 'bfloat16' }));
    expect(saved.longest, `seed ${seed}: longest gap of a ${saved.elapsed.toFixed(0)} ms save`).toBeLessThan(gapBound(saved.elapsed));
    const st = await readSafetensors(path.join(out, 'sae.safetensors'));
    const enc = (await st.read('encoder.weight')).data as Uint16Array;
    await st.close();
    // encoder.weight [L, dIn] holds W_enc [dIn, L] transposed, each value rounded to bfloat16 (nearest even).
    const toBf16 = (x: number) => {
      const u = new Uint32Array(new Float32Array([x]).buffer)[0]!;
      return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
    };
    let bad = -1;
    for (let i = 0; i < L && bad < 0; i += 7) for (let d = 0; d < dIn; d++) if (enc[i * dIn + d] !== toBf16(w.W_enc[d * L + i]!)) bad = i * dIn + d;
    expect(bad, `seed ${seed}`).toBe(-1);
  }, 120_000);
});

describe('SAE files: hostile input', () => {
  const f32 = (shape: number[], fill: (i: number) => number = (i) => ((i * 7) % 11) / 11 - 0.5): IoTensor => {
    const n = shape.reduce((a, b) => a * b, 1);
    return { dtype: 'float32', shape, data: Float32Array.from({ length: n }, (_, i) => fill(i)) };
  };

  /** A SAELens folder with d_in × d_sae weights (any size, zero included); `cfg` is merged into a valid cfg.json, or replaces it as raw text or bytes. */
  async function saelens(dIn: number, L: number, cfg: Record<string, unknown> | string | Uint8Array = {}, edit?: (t: Record<string, IoTensor>) => void): Promise<string> {
    const dir = tmp();
    // JumpReLU files (and configs this fixture cannot read) have a threshold; TopK files do not.
    const jump = typeof cfg === 'string' || cfg instanceof Uint8Array || cfg.architecture === 'jumprelu' || cfg.activation_fn_str === 'jumprelu';
    const t: Record<string, IoTensor> = { W_enc: f32([dIn, L]), b_enc: f32([L]), W_dec: f32([L, dIn]), b_dec: f32([dIn]), ...(jump ? { threshold: f32([L], () => 0.01) } : {}) };
    edit?.(t);
    await writeSafetensors(path.join(dir, 'sae_weights.safetensors'), t);
    const text = typeof cfg === 'string' || cfg instanceof Uint8Array ? cfg : JSON.stringify({ architecture: 'topk', d_in: dIn, d_sae: L, k: 1, apply_b_dec_to_input: true, normalize_activations: 'none', ...cfg });
    writeFileSync(path.join(dir, 'cfg.json'), text);
    return dir;
  }

  async function sparsify(dIn: number, L: number, cfg: Record<string, unknown> = {}): Promise<string> {
    const dir = tmp();
    await writeSafetensors(path.join(dir, 'sae.safetensors'), { 'encoder.weight': f32([L, dIn]), 'encoder.bias': f32([L]), W_dec: f32([L, dIn]), b_dec: f32([dIn]) });
    writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ d_in: dIn, num_latents: L, k: 1, activation: 'topk', ...cfg }));
    return dir;
  }

  async function gemma(dIn: number, L: number, edit?: (t: Record<string, IoTensor>) => void): Promise<string> {
    const dir = tmp();
    const t: Record<string, IoTensor> = { W_enc: f32([dIn, L]), W_dec: f32([L, dIn]), b_enc: f32([L]), b_dec: f32([dIn]), threshold: f32([L], () => 0.01) };
    edit?.(t);
    await writeNpz(path.join(dir, 'params.npz'), t);
    return dir;
  }

  /** The load's error: a SaekitError of `code` whose message names `file` (a path) and matches `re`. */
  async function expectLoadError(dir: string, file: string, re: RegExp, code = 'ERR_SAEKIT_FORMAT'): Promise<SaekitError> {
    const err = await SparseAutoencoder.load(dir).catch((e: unknown) => e);
    expect(err, String(err)).toBeInstanceOf(SaekitError);
    const e = err as SaekitError;
    expect(e.code, e.message.slice(0, 300)).toBe(code);
    expect(e.message.startsWith(`${path.join(dir, file)}: `), e.message.slice(0, 300)).toBe(true);
    expect(e.message).toMatch(re);
    expect(e.message.length, 'messages stay short').toBeLessThan(400);
    return e;
  }

  const deepArray = (n: number) => '['.repeat(n) + ']'.repeat(n);

  it('cfg.json values of any shape or size give short FORMAT errors (deep nesting, long strings, wrong types)', async () => {
    // JSON.parse accepts 100,000 levels; String() and JSON.stringify of the value overflow the stack.
    for (const field of ['architecture', 'normalize_activations', 'd_in', 'k']) {
      const dir = await saelens(3, 4, `{"architecture":"topk","d_in":3,"d_sae":4,"k":1,"${field}":${deepArray(100_000)}}`);
      await expectLoadError(dir, 'cfg.json', /cfg\.json nests objects and arrays more than 128 levels deep/);
    }
    await expectLoadError(await saelens(3, 4, { architecture: [[['topk']]] }), 'cfg.json', /architecture \(an array of 1 item\) is not supported/);
    await expectLoadError(await saelens(3, 4, { normalize_activations: { scale: 2 } }), 'cfg.json', /normalize_activations \(an object\) is not a normalisation saekit knows/);
    await expectLoadError(await saelens(3, 4, { d_in: [[3]] }), 'cfg.json', /field d_in must be a non-negative integer below 2\^30 but is an array of 1 item$/);
    await expectLoadError(await saelens(3, 4, { d_in: 'x'.repeat(15_000_000) }), 'cfg.json', /field d_in .* but is "x{40}"\.\.\.$/);
    await expectLoadError(await saelens(3, 4, { architecture: 'y'.repeat(1_000_000) }), 'cfg.json', /architecture 'y{40}\.\.\.' is not supported/);
    await expectLoadError(await sparsify(3, 4, { activation: [[['topk']]] }), 'cfg.json', /activation \(an array of 1 item\) is not supported/);
    await expectLoadError(await saelens(3, 4, `{"d_in":3,"d_sae":4,"k":1,"x":[${'{},'.repeat(1_000_000)}{}]}`), 'cfg.json', /cfg\.json holds more than 1000000 values/);
  });

  it('cfg.json must be valid UTF-8 (bad bytes were read as U+FFFD)', async () => {
    const bytes = Buffer.concat([Buffer.from('{"architecture":"topk","d_in":3,"d_sae":4,"k":1,"model_name":"'), Buffer.from([0xff, 0xfe]), Buffer.from('"}')]);
    await expectLoadError(await saelens(3, 4, bytes), 'cfg.json', /cfg\.json is not valid UTF-8/);
  });

  it('boolean fields must be true or false: "false" is not false, and 1 or "true" is not ignored', async () => {
    for (const [field, value] of [
      ['apply_b_dec_to_input', 'false'],
      ['apply_b_dec_to_input', 0],
      ['apply_b_dec_to_input', null], // None: the opposite of the default True
      ['rescale_acts_by_decoder_norm', 'true'],
      ['rescale_acts_by_decoder_norm', 1],
    ] as const) {
      await expectLoadError(await saelens(3, 4, { [field]: value }), 'cfg.json', new RegExp(`field ${field} must be true or false but is ${value === 'false' || value === 'true' ? `"${value}"` : String(value)}`));
    }
    await expectLoadError(await sparsify(3, 4, { transcode: 'true' }), 'cfg.json', /field transcode must be true or false but is "true"/);
    await expectLoadError(await sparsify(3, 4, { skip_connection: 1 }), 'cfg.json', /field skip_connection must be true or false but is 1/);
    await expectLoadError(await sparsify(3, 4, { transcode: true }), 'cfg.json', /transcoders are not supported/);
    // Real booleans, absent fields and None where the default is false still load.
    for (const [cfg, applyBDec] of [
      [{ apply_b_dec_to_input: false, rescale_acts_by_decoder_norm: null }, false],
      [{ apply_b_dec_to_input: undefined, rescale_acts_by_decoder_norm: true }, true],
    ] as const) {
      using sae = await SparseAutoencoder.load(await saelens(3, 4, cfg));
      expect(sae.applyBDecToInput).toBe(applyBDec);
    }
    using sp = await SparseAutoencoder.load(await sparsify(3, 4, { transcode: null, skip_connection: false }));
    expect(sp.numLatents).toBe(4);
  });

  it('zero sizes are FORMAT errors naming cfg.json (SAELens, sparsify) or params.npz (Gemma Scope)', async () => {
    await expectLoadError(await saelens(0, 4), 'cfg.json', /d_in = 0 and d_sae = 4, but an SAE needs at least one input dimension and one latent/);
    await expectLoadError(await saelens(3, 0, { architecture: 'jumprelu' }), 'cfg.json', /d_in = 3 and d_sae = 0/);
    await expectLoadError(await sparsify(0, 4), 'cfg.json', /d_in = 0 and num_latents/);
    await expectLoadError(await sparsify(3, 0, { expansion_factor: 0 }), 'cfg.json', /num_latents \(or d_in × expansion_factor\) = 0/);
    await expectLoadError(await gemma(0, 4), 'params.npz', /d_in \(W_enc rows\) = 0 and d_sae \(W_enc columns\) = 4/);
    await expectLoadError(await gemma(3, 0), 'params.npz', /d_sae \(W_enc columns\) = 0/);
    await expectLoadError(await saelens(2 ** 20 + 1, 1, { k: 1 }, (t) => {
      for (const n of Object.keys(t)) delete t[n];
      Object.assign(t, { W_enc: f32([2 ** 20 + 1, 1], () => 0), b_enc: f32([1]), W_dec: f32([1, 2 ** 20 + 1], () => 0), b_dec: f32([2 ** 20 + 1], () => 0) });
    }), 'cfg.json', /d_in = 1048577 and d_sae = 1 exceed the supported sizes/);
  });

  it('null is not an absent field: k null, d_in null are FORMAT errors naming the field and null, not the defaults (100, 32) or "missing"', async () => {
    // Without the null check, d_sae 256 loaded with SAELens's default k 100 and sparsify's with 32.
    const nullField = (field: string) => new RegExp(`field ${field.replace('.', '\\.')} must be a non-negative integer below 2\\^30 but is null$`);
    for (const [cfg, field] of [
      [{ k: null }, 'k'],
      [{ k: undefined, activation_fn_kwargs: { k: null } }, 'activation_fn_kwargs.k'], // pre-6.0
      [{ d_in: null }, 'd_in'], // was "missing field d_in"
      [{ d_sae: null }, 'd_sae'],
    ] as const) {
      await expectLoadError(await saelens(3, 256, cfg), 'cfg.json', nullField(field));
    }
    for (const field of ['k', 'd_in', 'num_latents', 'expansion_factor']) {
      await expectLoadError(await sparsify(3, 64, { num_latents: field === 'expansion_factor' ? 0 : 64, [field]: null }), 'cfg.json', nullField(field));
    }
    // Absent fields still take the defaults.
    using sl = await SparseAutoencoder.load(await saelens(3, 256, { k: undefined }));
    using sp = await SparseAutoencoder.load(await sparsify(3, 64, { k: undefined }));
    expect([sl.k, sp.k]).toEqual([100, 32]);
  });

  it('shapes in the weights header that disagree with cfg.json are refused before any tensor is read', async () => {
    // A 256 MiB tensor declared in the header, the file extended sparsely to hold it: read, it
    // would take 256 MiB of memory before the shape check refused it.
    const big = 2 ** 26;
    const writeDeclared = (file: string, tensors: [string, number[]][]): void => {
      const header: Record<string, unknown> = {};
      let at = 0;
      for (const [name, shape] of tensors) {
        const bytes = 4 * shape.reduce((a, b) => a * b, 1);
        header[name] = { dtype: 'F32', shape, data_offsets: [at, at + bytes] };
        at += bytes;
      }
      const json = JSON.stringify(header).padEnd(Math.ceil(JSON.stringify(header).length / 8) * 8, ' ');
      const head = Buffer.alloc(8);
      head.writeBigUInt64LE(BigInt(json.length));
      writeFileSync(file, Buffer.concat([head, Buffer.from(json)]));
      truncateSync(file, 8 + json.length + at); // zeros, a hole on disk
    };
    const peakDuring = async (run: () => Promise<unknown>): Promise<number> => {
      const base = process.memoryUsage().arrayBuffers;
      let peak = base;
      const sample = () => (peak = Math.max(peak, process.memoryUsage().arrayBuffers));
      const timer = setInterval(sample, 1);
      try {
        await run();
      } finally {
        clearInterval(timer);
        sample();
      }
      return peak - base;
    };
    const [dIn, L] = [3, 4];
    const sl = tmp();
    writeDeclared(path.join(sl, 'sae_weights.safetensors'), [['W_enc', [dIn, L]], ['W_dec', [L, dIn]], ['b_dec', [dIn]], ['b_enc', [big]]]);
    writeFileSync(path.join(sl, 'cfg.json'), JSON.stringify({ architecture: 'topk', d_in: dIn, d_sae: L, k: 1 }));
    const sp = tmp();
    writeDeclared(path.join(sp, 'sae.safetensors'), [['encoder.weight', [L, dIn]], ['W_dec', [L, dIn]], ['b_dec', [dIn]], ['encoder.bias', [big]]]);
    writeFileSync(path.join(sp, 'cfg.json'), JSON.stringify({ d_in: dIn, num_latents: L, k: 1 }));
    for (const [dir, file, name] of [[sl, 'sae_weights.safetensors', 'b_enc'], [sp, 'sae.safetensors', 'encoder.bias']] as const) {
      const grew = await peakDuring(() => expectLoadError(dir, file, new RegExp(`tensor ${name.replace('.', '\\.')} has shape \\[${big}\\] but the config says \\[${L}\\]`)));
      expect(grew, `${file}: array buffer bytes allocated during the load`).toBeLessThan(16 << 20);
    }
  });

  it('Gemma Scope: names, spellings, dtypes and shapes come from the archive before any array is inflated', async () => {
    await expectLoadError(await gemma(3, 4, (t) => (t.w_enc = f32([3, 4], () => 5))), 'params.npz', /holds both "W_enc", "w_enc": one array, two spellings/);
    await expectLoadError(await gemma(3, 4, (t) => (t.w_dec = t.W_dec!)), 'params.npz', /holds both "W_dec", "w_dec"/);
    await expectLoadError(await gemma(3, 4, (t) => (t.W_enc = { dtype: 'int32', shape: [3, 4], data: new Int32Array(12) })), 'params.npz', /tensor W_enc has dtype int32; expected a float dtype/);
    const junk = await expectLoadError(await gemma(3, 4, (t) => (t.junk = f32([2]))), 'params.npz', /holds a tensor saekit does not know \("junk"\); expected only/);
    // Each allowed name once (the w_ spelling only for the matrices).
    expect(junk.message.match(/expected only (.*)$/)![1]).toBe('"W_enc", "w_enc", "W_dec", "w_dec", "b_enc", "b_dec", "threshold"');
    await expectLoadError(await gemma(3, 4, (t) => (t.b_dec = f32([4]))), 'params.npz', /tensor b_dec has shape \[4\] but the config says \[3\]/);
    await expectLoadError(await gemma(3, 4, (t) => (t.threshold = f32([5], () => 0.01))), 'params.npz', /tensor threshold has shape \[5\] but the config says \[4\]/);
    // The lower-case spelling alone loads as the upper-case one.
    const lower = await gemma(3, 4, (t) => {
      t.w_enc = t.W_enc!;
      delete t.W_enc;
    });
    using sae = await SparseAutoencoder.load(lower);
    expect(Array.from((await sae.weights()).W_enc)).toEqual(Array.from(f32([3, 4]).data as Float32Array));
  });

  it('SAELens: weights stored in a non-float dtype (I8, BOOL, F8) are FORMAT errors; scales that overflow float32 when folded name the file', async () => {
    // I8 / BOOL / F8_E4M3 tensors, written as U8 and renamed in the header (same length or padded).
    for (const code of ['I8', 'BOOL', 'F8_E4M3']) {
      const dir = await saelens(3, 4, {}, (t) => (t.W_enc = { dtype: 'uint8', shape: [3, 4], data: new Uint8Array(12) }));
      const file = path.join(dir, 'sae_weights.safetensors');
      const bytes = readFileSync(file);
      const n = Number(bytes.readBigUInt64LE(0));
      const header = bytes.subarray(8, 8 + n).toString('utf8').replace('"U8"', JSON.stringify(code));
      const padded = header.padEnd(Math.ceil(header.length / 8) * 8, ' ');
      const head = Buffer.alloc(8);
      head.writeBigUInt64LE(BigInt(padded.length));
      writeFileSync(file, Buffer.concat([head, Buffer.from(padded), bytes.subarray(8 + n)]));
      if (code !== 'F8_E4M3') await expectLoadError(dir, 'sae_weights.safetensors', new RegExp(`tensor W_enc has dtype ${code}; expected a float dtype`));
      else await expect(SparseAutoencoder.load(dir)).rejects.toMatchObject({ code: 'ERR_SAEKIT_FORMAT', message: expect.stringMatching(/tensor W_enc has dtype F8_E4M3; expected a float dtype/) });
    }
    // Finite weights, folded: W_dec rows of norm 3e38 x sqrt(3) rescale W_enc = 1 past float32's range.
    const big = await saelens(3, 4, { rescale_acts_by_decoder_norm: true }, (t) => {
      t.W_dec = f32([4, 3], () => 3e38);
      t.W_enc = f32([3, 4], () => 1);
    });
    await expectLoadError(big, 'sae_weights.safetensors', /tensor W_enc overflows float32 at row 0, column 0 when rescaled by the decoder norms \(cfg\.json: rescale_acts_by_decoder_norm\)/, 'ERR_SAEKIT_NONFINITE');
    const scaled = await saelens(3, 4, { finetuning_scaling_factor: true }, (t) => {
      t.W_dec = f32([4, 3], () => 2);
      t.scaling_factor = f32([4], () => 3e38);
    });
    await expectLoadError(scaled, 'sae_weights.safetensors', /tensor W_dec overflows float32 at row 0, column 0 when scaled by scaling_factor/, 'ERR_SAEKIT_NONFINITE');
  });

  it('a loop of symbolic links is named as such, not as a missing file', async () => {
    const dir = await saelens(3, 4);
    const weights = path.join(dir, 'sae_weights.safetensors');
    rmSync(weights);
    symlinkSync(path.join(dir, 'loop-b'), path.join(dir, 'loop-a'));
    symlinkSync(path.join(dir, 'loop-a'), path.join(dir, 'loop-b'));
    symlinkSync(path.join(dir, 'loop-a'), weights);
    for (const p of [dir, weights]) {
      await expect(SparseAutoencoder.load(p)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/sae_weights\.safetensors'?: .*ELOOP/) });
    }
  });

  it('non-finite weights: ERR_SAEKIT_NONFINITE naming the file, the tensor and where', async () => {
    await expectLoadError(await saelens(3, 4, {}, (t) => ((t.W_enc!.data as Float32Array)[6] = NaN)), 'sae_weights.safetensors', /tensor W_enc has NaN at row 1, column 2 \(weights must be finite\)/, 'ERR_SAEKIT_NONFINITE');
    await expectLoadError(await saelens(3, 4, {}, (t) => ((t.b_dec!.data as Float32Array)[2] = -Infinity)), 'sae_weights.safetensors', /tensor b_dec has -Infinity at element 2/, 'ERR_SAEKIT_NONFINITE');
    await expectLoadError(await gemma(3, 4, (t) => ((t.threshold!.data as Float32Array)[3] = Infinity)), 'params.npz', /tensor threshold has Infinity at element 3/, 'ERR_SAEKIT_NONFINITE');
    const bf16 = await saelens(3, 4, {}, (t) => (t.W_dec = { dtype: 'bfloat16', shape: [4, 3], data: new Uint16Array(12).fill(0x3f80).fill(0x7fc0, 5, 6) }));
    await expectLoadError(bf16, 'sae_weights.safetensors', /tensor W_dec has NaN at row 1, column 2/, 'ERR_SAEKIT_NONFINITE');
  });

  it('cfg.json and weights that are not regular files (a folder, /dev/zero, a FIFO) are refused at once, naming them', async () => {
    const dir = await saelens(3, 4);
    const cfg = path.join(dir, 'cfg.json');
    rmSync(cfg);
    mkdirSync(cfg);
    await expectLoadError(dir, 'cfg.json', /not a regular file/);
    if (process.platform === 'win32') return;
    rmSync(cfg, { recursive: true });
    symlinkSync('/dev/zero', cfg); // used to read ~600 MB, then say "missing cfg.json"
    const t0 = performance.now();
    await expectLoadError(dir, 'cfg.json', /not a regular file/);
    expect(performance.now() - t0).toBeLessThan(1000);
    rmSync(cfg);
    execFileSync('mkfifo', [cfg]); // used to block the load forever
    const settled = Promise.allSettled([expectLoadError(dir, 'cfg.json', /not a regular file/)]).then(([r]) => r!);
    const first = await Promise.race([settled, sleep(3000).then(() => 'hung' as const)]);
    if (first === 'hung') closeSync(openSync(cfg, constants.O_WRONLY | constants.O_NONBLOCK)); // release the blocked open
    expect(first, 'the load waited for a writer on the FIFO').not.toBe('hung');
    const result = await settled;
    if (result.status === 'rejected') throw result.reason;
    // A weights file that is a FIFO is named, not passed over as missing.
    const dir2 = await saelens(3, 4);
    rmSync(path.join(dir2, 'sae_weights.safetensors'));
    execFileSync('mkfifo', [path.join(dir2, 'sae_weights.safetensors')]);
    await expectLoadError(dir2, 'sae_weights.safetensors', /not a regular file/);
  }, 15_000);

  it('sizes at their limits: 2^24 latents and 2^34 weights pass the size check (the tensors are compared next), one more does not', async () => {
    // The check runs before any tensor is read, so the tiny weights file does not matter on either side.
    const past = /exceed the supported sizes/;
    await expectLoadError(await saelens(3, 4, { d_in: 2 ** 20, d_sae: 2 ** 14, k: 1 }), 'sae_weights.safetensors', /tensor W_enc has shape \[3, 4\] but the config says \[1048576, 16384\]/);
    await expectLoadError(await saelens(3, 4, { d_in: 2 ** 20, d_sae: 2 ** 14 + 1, k: 1 }), 'cfg.json', past);
    await expectLoadError(await saelens(3, 4, { d_in: 1, d_sae: 2 ** 24, k: 1 }), 'sae_weights.safetensors', /tensor W_enc has shape \[3, 4\] but the config says \[1, 16777216\]/);
    await expectLoadError(await saelens(3, 4, { d_in: 1, d_sae: 2 ** 24 + 1, k: 1 }), 'cfg.json', /d_in = 1 and d_sae = 16777217 exceed the supported sizes/);
  });

  it('integer fields must be integers: 2.5 is refused, not passed on to the model', async () => {
    for (const [field, value] of [['k', 1.5], ['d_in', 3.5], ['d_sae', 4.000001]] as const) {
      await expectLoadError(await saelens(3, 4, { [field]: value }), 'cfg.json', new RegExp(`field ${field} must be a non-negative integer below 2\\^30 but is ${String(value).replace('.', '\\.')}$`));
    }
    await expectLoadError(await sparsify(3, 4, { k: 2.5 }), 'cfg.json', /field k must be a non-negative integer below 2\^30 but is 2\.5$/);
  });

  it('a tensor of fewer dimensions than the config says is refused, even when its leading sizes agree', async () => {
    // [4] for W_dec [4, 3], a scalar for b_dec [3]: each matches the config's first sizes.
    await expectLoadError(await saelens(3, 4, {}, (t) => (t.W_dec = f32([4]))), 'sae_weights.safetensors', /tensor W_dec has shape \[4\] but the config says \[4, 3\]/);
    await expectLoadError(await saelens(3, 4, {}, (t) => (t.b_dec = f32([]))), 'sae_weights.safetensors', /tensor b_dec has shape \[\] but the config says \[3\]/);
    await expectLoadError(await gemma(3, 4, (t) => (t.W_dec = f32([4]))), 'params.npz', /tensor W_dec has shape \[4\] but the config says \[4, 3\]/);
  });

  it('a cfg.json of exactly 16 MiB is read; one byte more is refused, naming its size', async () => {
    // (The fixture writes a threshold for a config given as text: a JumpReLU one.)
    const text = JSON.stringify({ architecture: 'jumprelu', d_in: 3, d_sae: 4 });
    const full = text + ' '.repeat(16 * 2 ** 20 - text.length);
    using sae = await SparseAutoencoder.load(await saelens(3, 4, full));
    expect([sae.dIn, sae.numLatents, sae.architecture]).toEqual([3, 4, 'jumprelu']);
    await expectLoadError(await saelens(3, 4, `${full} `), 'cfg.json', /cfg\.json is 16777217 bytes \(over 16 MiB\)/);
  });

  it('float16 and float64 weights are widened to float32 exactly as the IEEE definitions say', async () => {
    const [dIn, L] = [5, 7];
    for (const dtype of ['float16', 'float64'] as const) {
      const seed = (Date.now() >>> 0) + (dtype === 'float16' ? 0 : 1);
      const next = lcg(seed);
      const want: Record<string, Float32Array> = {};
      const dir = await saelens(dIn, L, {}, (t) => {
        for (const [name, shape] of [['W_enc', [dIn, L]], ['b_enc', [L]], ['W_dec', [L, dIn]], ['b_dec', [dIn]]] as const) {
          const n = shape.reduce((a, b) => a * b, 1);
          if (dtype === 'float16') {
            const bits = randomHalfBits(n, 'float16', seed + n);
            t[name] = { dtype, shape: [...shape], data: bits };
            want[name] = Float32Array.from(bits, f16ToNumber); // every float16 is a float32
          } else {
            const data = Float64Array.from({ length: n }, () => (next() * 2 - 1) * 10 ** Math.floor(next() * 8 - 4));
            t[name] = { dtype, shape: [...shape], data };
            want[name] = Float32Array.from(data, (v) => Math.fround(v));
          }
        }
      });
      const got = await readSaeFiles(dir);
      expect(got.config.dtype).toBe(dtype);
      for (const name of ['W_enc', 'b_enc', 'W_dec', 'b_dec'] as const) expect(Array.from(got.weights[name]), `seed ${seed}: ${dtype} ${name}`).toEqual(Array.from(want[name]!));
    }
  });

  it("pre-6.0 SAELens configs that name the activation 'activation_fn' (SAEConfig.from_dict renames it to activation_fn_str) load as TopK", async () => {
    for (const architecture of ['standard', undefined]) {
      const got = await readSaeFiles(await saelens(3, 4, { architecture, activation_fn: 'topk', activation_fn_kwargs: { k: 2 }, k: undefined }));
      expect(got.config, String(architecture)).toMatchObject({ architecture: 'topk', k: 2 });
    }
    await expectLoadError(await saelens(3, 4, { architecture: undefined, activation_fn: 'relu' }), 'cfg.json', /activation_fn_str 'relu' \(a standard ReLU SAE\) is not supported yet/);
  });

  it('k may be every latent (k = d_sae, k = num_latents), not one more', async () => {
    using sl = await SparseAutoencoder.load(await saelens(3, 4, { k: 4 }));
    using sp = await SparseAutoencoder.load(await sparsify(3, 4, { k: 4 }));
    expect([sl.k, sp.k]).toEqual([4, 4]);
    await expectLoadError(await saelens(3, 4, { k: 5 }), 'cfg.json', /k = 5 is outside 1\.\.d_sae = 4/);
    await expectLoadError(await sparsify(3, 4, { k: 5 }), 'cfg.json', /k = 5 is outside 1\.\.num_latents = 4/);
  });
});

describe('SAE files: what the other libraries write and read', () => {
  const [dIn, L, k] = [11, 29, 3];
  const put = async (dir: string, w: W, extra: Record<string, IoTensor> = {}) =>
    writeSafetensors(path.join(dir, 'sae_weights.safetensors'), {
      W_enc: { dtype: 'float32', shape: [dIn, L], data: w.W_enc },
      b_enc: { dtype: 'float32', shape: [L], data: w.b_enc },
      W_dec: { dtype: 'float32', shape: [L, dIn], data: w.W_dec },
      b_dec: { dtype: 'float32', shape: [dIn], data: w.b_dec },
      ...extra,
    });

  it("cfg.json as Python's json.dump writes float('nan') and the infinities (NaN, Infinity, -Infinity) loads; such a value in a field saekit reads is named", async () => {
    using sae = SparseAutoencoder.fromWeights(randomWeights(dIn, L, 31), { k });
    for (const format of ['saelens', 'sparsify'] as const) {
      const dir = tmp();
      await sae.save(dir, { format });
      const cfgPath = path.join(dir, 'cfg.json');
      const cfg = readFileSync(cfgPath, 'utf8');
      // Inserted as json.dumps writes them (separators ', ' and ': '), strings that spell them stay strings.
      const extra = '"l0": NaN, "ce": [Infinity, -Infinity, 1.5], "note": "NaN Infinity -Infinity", ';
      writeFileSync(cfgPath, format === 'saelens' ? cfg.replace('"metadata": {', `"metadata": {${extra}`) : cfg.replace('{', `{${extra}`));
      using back = await SparseAutoencoder.load(dir);
      expect(back.k).toBe(k);
      const raw = (await readSaeFiles(dir)).config.raw;
      const where = (format === 'saelens' ? raw.metadata : raw) as Record<string, unknown>;
      expect(where.l0).toBeNaN();
      expect(where.ce).toEqual([Infinity, -Infinity, 1.5]);
      expect(where.note).toBe('NaN Infinity -Infinity');
      // In a field saekit reads, the value is refused by that field's check.
      writeFileSync(cfgPath, cfg.replace(/"k": \d+/, '"k": NaN'));
      await expect(SparseAutoencoder.load(dir)).rejects.toMatchObject({ code: 'ERR_SAEKIT_FORMAT', message: expect.stringMatching(/cfg\.json: .*\bk\b.*NaN/) });
      // Other non-JSON stays invalid JSON (with JSON.parse's message for the file as written).
      writeFileSync(cfgPath, cfg.replace(/"k": \d+/, '"k": nan'));
      await expect(SparseAutoencoder.load(dir)).rejects.toMatchObject({ code: 'ERR_SAEKIT_FORMAT', message: expect.stringMatching(/cfg\.json: invalid JSON/) });
      writeFileSync(cfgPath, cfg.replace(/"k": \d+/, '"k": NaNa'));
      await expect(SparseAutoencoder.load(dir)).rejects.toMatchObject({ code: 'ERR_SAEKIT_FORMAT', message: expect.stringMatching(/cfg\.json: invalid JSON/) });
    }
  });

  it('SAELens files say sae_lens_version 6 in metadata (so SAELens keeps the metadata), and both files carry one save id', async () => {
    using sae = SparseAutoencoder.fromWeights(randomWeights(dIn, L, 3), { k });
    const dir = tmp();
    await sae.save(dir, { metadata: { hook_name: 'blocks.2.hook_resid_post', model_name: 'gpt2' } });
    const cfg = JSON.parse(readFileSync(path.join(dir, 'cfg.json'), 'utf8'));
    expect(cfg.metadata).toMatchObject({ sae_lens_version: '6.0.0', hook_name: 'blocks.2.hook_resid_post', model_name: 'gpt2' });
    const st = await readSafetensors(path.join(dir, 'sae_weights.safetensors'));
    expect(st.metadata.saekit_save_id).toMatch(/^[0-9a-f]{16}$/);
    expect(st.metadata.saekit_save_id).toBe(cfg.metadata.saekit_save_id);
    await st.close();
    // A torn pair (the weights of another save beside this cfg.json) is refused, not loaded.
    using other = SparseAutoencoder.fromWeights(randomWeights(dIn, L, 4), { k: 7 });
    const dir2 = tmp();
    await other.save(dir2);
    writeFileSync(path.join(dir, 'sae_weights.safetensors'), readFileSync(path.join(dir2, 'sae_weights.safetensors')));
    await expect(SparseAutoencoder.load(dir)).rejects.toMatchObject({ code: 'ERR_SAEKIT_FORMAT', message: expect.stringMatching(/belongs to another save than sae_weights\.safetensors/) });
  });

  it('pre-6.0 SAELens configs: architecture standard with activation_fn_str topk is TopK; normalize_activations false is none', async () => {
    const w = randomWeights(dIn, L, 5);
    const dir = tmp();
    await put(dir, w);
    writeFileSync(
      path.join(dir, 'cfg.json'),
      JSON.stringify({ architecture: 'standard', activation_fn_str: 'topk', activation_fn_kwargs: { k }, d_in: dIn, d_sae: L, normalize_activations: false, hook_point: 'blocks.0.hook_resid_pre' }),
    );
    using sae = await SparseAutoencoder.load(dir);
    expect([sae.architecture, sae.k]).toEqual(['topk', k]);
    using ref = SparseAutoencoder.fromWeights(w, { k });
    const x = rows(13, dIn, 6);
    expect(Array.from((await sae.encode(x)).indices)).toEqual(Array.from((await ref.encode(x)).indices));
    // A ReLU SAE is named as such; normalize_activations true needs the factor the file lacks.
    writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ activation_fn_str: 'relu', d_in: dIn, d_sae: L }));
    await expect(SparseAutoencoder.load(dir)).rejects.toThrow(/activation_fn_str 'relu' \(a standard ReLU SAE\) is not supported yet/);
    writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ architecture: 'topk', k, d_in: dIn, d_sae: L, normalize_activations: true }));
    await expect(SparseAutoencoder.load(dir)).rejects.toThrow(/normalize_activations 'expected_average_only_in', which scales inputs by a factor estimated when training, and SAELens keeps that factor in activation_scaler.json/);
    writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ architecture: 'topk', k, d_in: dIn, d_sae: L, normalize_activations: 'layer_norm' }));
    await expect(SparseAutoencoder.load(dir)).rejects.toThrow(/normalises every token at run time/);
  });

  it('a finetuning scaling_factor multiplies each latent before decoding (folded into W_dec rows); one without the cfg flag is refused', async () => {
    const w = randomWeights(dIn, L, 7);
    const s = Float32Array.from({ length: L }, (_, i) => 0.5 + (i % 5) * 0.25);
    const dir = tmp();
    await put(dir, w, { scaling_factor: { dtype: 'float32', shape: [L], data: s } });
    writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ architecture: 'topk', k, d_in: dIn, d_sae: L, finetuning_scaling_factor: true }));
    using sae = await SparseAutoencoder.load(dir);
    const x = rows(9, dIn, 8);
    const { codes, recon } = await sae.forward(x);
    for (let r = 0; r < 9; r++) {
      for (let d = 0; d < dIn; d++) {
        let want = w.b_dec[d]!;
        for (let j = 0; j < k; j++) {
          const l = codes.indices[r * k + j]!;
          want += codes.values[r * k + j]! * s[l]! * w.W_dec[l * dIn + d]!;
        }
        expect(Math.abs(recon[r * dIn + d]! - want)).toBeLessThan(1e-5);
      }
    }
    writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ architecture: 'topk', k, d_in: dIn, d_sae: L }));
    await expect(SparseAutoencoder.load(dir)).rejects.toThrow(/has a scaling_factor that is not all ones but finetuning_scaling_factor is not true/);
  });

  it("a loaded SAELens SAE keeps its metadata and reshape_activations through save (options.metadata adds and overrides); a pre-6.0 config's hook_point is its hook_name", async () => {
    const seed = freshSeed(41);
    const w = randomWeights(dIn, L, seed);
    const dir = tmp();
    await put(dir, w);
    const metadata = { sae_lens_version: '6.5.1', sae_lens_training_version: '6.5.1', model_name: 'gpt2', hook_name: 'blocks.3.attn.hook_z', hook_head_index: null, context_size: 128, neuronpedia_id: 'gpt2/3-att-kk', saekit_version: '0.0.1', l0: 12.5, nested: { a: [1, 2] }, ['__proto__']: 'kept as a key' };
    writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ architecture: 'topk', k, d_in: dIn, d_sae: L, reshape_activations: 'hook_z', metadata }).replace('"__proto__"', '"__proto__"'));
    // JSON.stringify drops a literal's __proto__; write the key into the file as JSON does.
    const cfgText = readFileSync(path.join(dir, 'cfg.json'), 'utf8').replace('"l0":12.5', '"l0":12.5,"__proto__":"kept as a key"');
    writeFileSync(path.join(dir, 'cfg.json'), cfgText);
    using sae = await SparseAutoencoder.load(dir);
    const { sae_lens_version: _v, saekit_version: _s, ...carried } = metadata;
    expect({ ...sae.metadata }).toEqual({ ...carried, nested: { a: [1, 2] } });
    expect(Object.hasOwn(sae.metadata, '__proto__')).toBe(true);
    expect(Object.isFrozen(sae.metadata) && Object.isFrozen(sae.metadata.nested) && Object.isFrozen((sae.metadata.nested as { a: number[] }).a)).toBe(true);
    // Trained further or not, a save writes it back, beside SAELens's own fields.
    const out = tmp();
    await sae.save(out, { metadata: { l0: 7, note: 'finetuned' } });
    const cfg = JSON.parse(readFileSync(path.join(out, 'cfg.json'), 'utf8'));
    expect(cfg.reshape_activations).toBe('hook_z');
    expect(cfg.metadata).toMatchObject({ sae_lens_version: '6.0.0', model_name: 'gpt2', hook_name: 'blocks.3.attn.hook_z', hook_head_index: null, neuronpedia_id: 'gpt2/3-att-kk', nested: { a: [1, 2] }, l0: 7, note: 'finetuned' });
    expect(cfg.metadata.saekit_version).not.toBe('0.0.1');
    expect(Object.hasOwn(cfg.metadata, '__proto__')).toBe(true);
    using again = await SparseAutoencoder.load(out);
    expect(again.metadata).toMatchObject({ hook_name: 'blocks.3.attn.hook_z', l0: 7, note: 'finetuned' });
    // The sparsify layout has no place for it; a new SAE has none.
    const sp = tmp();
    await sae.save(sp, { format: 'sparsify' });
    expect(JSON.parse(readFileSync(path.join(sp, 'cfg.json'), 'utf8')).hook_name).toBeUndefined();
    using fresh = SparseAutoencoder.create({ dIn, numLatents: L, k, seed });
    expect(fresh.metadata).toEqual({});
    const plain = tmp();
    await fresh.save(plain);
    expect(JSON.parse(readFileSync(path.join(plain, 'cfg.json'), 'utf8')).reshape_activations).toBe('none');
    // Pre-6.0 flat configs keep their metadata fields at the top level, with hook_point for hook_name.
    writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ architecture: 'standard', activation_fn_str: 'topk', activation_fn_kwargs: { k }, d_in: dIn, d_sae: L, hook_point: 'blocks.0.hook_resid_pre', model_name: 'pythia-70m', context_size: 64, lr: 4e-4 }));
    using flat = await SparseAutoencoder.load(dir);
    expect({ ...flat.metadata }).toEqual({ model_name: 'pythia-70m', context_size: 64, hook_name: 'blocks.0.hook_resid_pre' });
    // A reshape saekit does not know is refused; writeSaeFiles checks what it is given.
    writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ architecture: 'topk', k, d_in: dIn, d_sae: L, reshape_activations: 'hook_q' }));
    await expect(SparseAutoencoder.load(dir)).rejects.toMatchObject({ code: 'ERR_SAEKIT_FORMAT', message: expect.stringMatching(/cfg\.json: reshape_activations 'hook_q' is not one saekit knows/) });
    const cfgW = { architecture: 'topk' as const, dIn, numLatents: L, k, applyBDecToInput: true };
    await expect(writeSaeFiles(tmp(), { ...cfgW, reshapeActivations: 'hook_q' as 'none' }, w)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/config\.reshapeActivations/) });
    await expect(writeSaeFiles(tmp(), { ...cfgW, metadata: [] as unknown as Record<string, unknown> }, w)).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/config\.metadata/) });
  });

  it("a SAELens checkpoint trained with expected_average_only_in has activation_scaler.json's factor folded in (W_enc s, W_dec / s, b_dec / s), as SAELens's final save does", async () => {
    const seed = freshSeed(42);
    const next = lcg(seed);
    const n = 17;
    for (const [arch, applyBDec] of [['topk', true], ['topk', false], ['jumprelu', true]] as const) {
      const w = randomWeights(dIn, L, seed + 1, (i) => 0.5 + (i % 4) * 0.5);
      const s = 0.25 + 4 * next();
      const dir = tmp();
      const threshold = Float32Array.from({ length: L }, () => next() * 0.2);
      await put(dir, w, arch === 'jumprelu' ? { threshold: { dtype: 'float32', shape: [L], data: threshold } } : {});
      writeFileSync(
        path.join(dir, 'cfg.json'),
        JSON.stringify({ architecture: arch, ...(arch === 'topk' ? { k } : {}), d_in: dIn, d_sae: L, apply_b_dec_to_input: applyBDec, normalize_activations: 'expected_average_only_in' }),
      );
      writeFileSync(path.join(dir, 'activation_scaler.json'), JSON.stringify({ scaling_factor: s }));
      using sae = await SparseAutoencoder.load(dir);
      const x = rows(n, dIn, seed + 2);
      const { codes, recon } = await sae.forward(x);
      // Reference, float64: the trained model on x s, its output divided by s.
      for (let r = 0; r < n; r++) {
        const pre: [number, number][] = [];
        for (let l = 0; l < L; l++) {
          let z = w.b_enc[l]!;
          for (let d = 0; d < dIn; d++) z += (x[r * dIn + d]! * s - (applyBDec ? w.b_dec[d]! : 0)) * w.W_enc[d * L + l]!;
          pre.push([z, l]);
        }
        pre.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
        const active = arch === 'topk' ? pre.slice(0, k).filter(([z]) => z > 0) : pre.filter(([z, l]) => z > threshold[l]! && z > 0);
        const got = new Map<number, number>();
        for (let j = 0; j < codes.k; j++) if (codes.values[r * codes.k + j]! > 0) got.set(codes.indices[r * codes.k + j]!, codes.values[r * codes.k + j]!);
        expect([...got.keys()].sort((a, b) => a - b), `${arch} ${applyBDec} row ${r} seed ${seed}`).toEqual(active.map(([, l]) => l).sort((a, b) => a - b));
        for (const [z, l] of active) expect(Math.abs(got.get(l)! - z), `${arch} row ${r} latent ${l} seed ${seed}`).toBeLessThan(1e-4 * (1 + Math.abs(z)));
        for (let d = 0; d < dIn; d++) {
          let want = w.b_dec[d]!;
          for (const [l, v] of got) want += v * w.W_dec[l * dIn + d]!;
          want /= s;
          expect(Math.abs(recon[r * dIn + d]! - want), `${arch} ${applyBDec} row ${r} dim ${d} seed ${seed}`).toBeLessThan(1e-4 * (1 + Math.abs(want)));
        }
      }
    }
    // The factor must be there, and be a positive finite number.
    const dir = tmp();
    await put(dir, randomWeights(dIn, L, seed));
    writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ architecture: 'topk', k, d_in: dIn, d_sae: L, normalize_activations: 'expected_average_only_in' }));
    await expect(SparseAutoencoder.load(dir)).rejects.toMatchObject({ code: 'ERR_SAEKIT_FORMAT', message: expect.stringMatching(/activation_scaler\.json: missing activation_scaler\.json/) });
    for (const bad of ['0', '-2', '"2"', 'null', 'NaN', 'Infinity']) {
      writeFileSync(path.join(dir, 'activation_scaler.json'), `{"scaling_factor": ${bad}}`);
      await expect(SparseAutoencoder.load(dir), bad).rejects.toMatchObject({ code: 'ERR_SAEKIT_FORMAT', message: expect.stringMatching(/activation_scaler\.json: scaling_factor must be a finite number above 0/) });
    }
    writeFileSync(path.join(dir, 'activation_scaler.json'), '[1]');
    await expect(SparseAutoencoder.load(dir)).rejects.toMatchObject({ code: 'ERR_SAEKIT_FORMAT', message: expect.stringMatching(/activation_scaler\.json: activation_scaler\.json is not a JSON object/) });
    // A factor so large the fold overflows float32 is refused naming it.
    writeFileSync(path.join(dir, 'activation_scaler.json'), '{"scaling_factor": 1e39}');
    await expect(SparseAutoencoder.load(dir)).rejects.toMatchObject({ code: 'ERR_SAEKIT_NONFINITE', message: expect.stringMatching(/overflows float32 .* activation_scaler\.json's scaling_factor/) });
  });

  it('finetuning scale: a file with both scaling_factor and finetuning_scaling_factor is refused; errors name the tensor the file holds', async () => {
    const w = randomWeights(dIn, L, 11);
    const ones = { dtype: 'float32' as const, shape: [L], data: new Float32Array(L).fill(1) };
    const threes = { dtype: 'float32' as const, shape: [L], data: new Float32Array(L).fill(3) };
    const dir = tmp();
    await put(dir, w, { scaling_factor: ones, finetuning_scaling_factor: threes });
    writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ architecture: 'topk', k, d_in: dIn, d_sae: L, finetuning_scaling_factor: true }));
    await expect(SparseAutoencoder.load(dir)).rejects.toMatchObject({ code: 'ERR_SAEKIT_FORMAT', message: expect.stringMatching(/sae_weights\.safetensors: holds both scaling_factor and finetuning_scaling_factor/) });
    const dir2 = tmp();
    await put(dir2, w, { finetuning_scaling_factor: threes });
    writeFileSync(path.join(dir2, 'cfg.json'), JSON.stringify({ architecture: 'topk', k, d_in: dIn, d_sae: L }));
    await expect(SparseAutoencoder.load(dir2)).rejects.toThrow(/has a finetuning_scaling_factor that is not all ones but finetuning_scaling_factor is not true/);
    const nan = Float32Array.from(threes.data);
    nan[4] = NaN;
    await put(dir2, w, { finetuning_scaling_factor: { ...threes, data: nan } });
    writeFileSync(path.join(dir2, 'cfg.json'), JSON.stringify({ architecture: 'topk', k, d_in: dIn, d_sae: L, finetuning_scaling_factor: true }));
    await expect(SparseAutoencoder.load(dir2)).rejects.toThrow(/tensor finetuning_scaling_factor has NaN/);
  });

  it('sparsify: metadata cannot overwrite cfg fields; normalize_decoder says whether rows are unit; saving one layout over the other leaves one', async () => {
    using unit = SparseAutoencoder.fromWeights(randomWeights(dIn, L, 9), { k });
    const dir = tmp();
    await expect(unit.save(dir, { format: 'sparsify', metadata: { k: 999 } })).rejects.toThrow(/options\.metadata not to set the sparsify cfg field 'k'/);
    await unit.save(dir, { format: 'saelens' });
    await unit.save(dir, { format: 'sparsify', metadata: { note: 'x' } });
    expect(readdirSync(dir).sort()).toEqual(['cfg.json', 'sae.safetensors']);
    expect(JSON.parse(readFileSync(path.join(dir, 'cfg.json'), 'utf8'))).toMatchObject({ normalize_decoder: true, k, note: 'x' });
    using back = await SparseAutoencoder.load(dir);
    expect(back.k).toBe(k);
    using wide = SparseAutoencoder.fromWeights(randomWeights(dIn, L, 9, (i) => 1 + i / L), { k });
    await wide.save(dir, { format: 'sparsify' });
    expect(JSON.parse(readFileSync(path.join(dir, 'cfg.json'), 'utf8')).normalize_decoder).toBe(false);
    // Another tool's weights of the other layout beside ours: cfg.json decides.
    await writeSafetensors(path.join(dir, 'sae_weights.safetensors'), { x: { dtype: 'float32', shape: [1], data: new Float32Array(1) } });
    using again = await SparseAutoencoder.load(dir);
    expect(again.numLatents).toBe(L);
  });

  it('a sparsify run folder (one SAE per hookpoint) names its subfolders; Gemma Scope with a scaling_factor is refused', async () => {
    using sae = SparseAutoencoder.fromWeights(randomWeights(dIn, L, 10), { k });
    const run = tmp();
    await sae.save(path.join(run, 'layers.3'), { format: 'sparsify' });
    await sae.save(path.join(run, 'layers.10'), { format: 'sparsify' });
    await expect(SparseAutoencoder.load(run)).rejects.toThrow(/holds one SAE per subfolder \(a sparsify run: "layers\.10", "layers\.3"\); load one of them/);
    const g = tmp();
    const w = randomWeights(dIn, L, 11);
    await writeGemmaScope(g, w, dIn, L, { scaling_factor: { dtype: 'float32', shape: [L], data: new Float32Array(L).fill(2) } });
    await expect(SparseAutoencoder.load(g)).rejects.toThrow(/has a scaling_factor array/);
  });

  it('tensors saekit would ignore (skip connections, anything unknown) and signed TopK are refused, not dropped', async () => {
    const w = randomWeights(dIn, L, 12);
    const f32 = (shape: number[]): IoTensor => ({ dtype: 'float32', shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(0.25) });
    // SAELens: a skip transcoder's W_skip, and an unknown tensor, each named.
    const sl = tmp();
    writeFileSync(path.join(sl, 'cfg.json'), JSON.stringify({ architecture: 'topk', k, d_in: dIn, d_sae: L }));
    await put(sl, w, { W_skip: f32([dIn, dIn]) });
    await expect(SparseAutoencoder.load(sl)).rejects.toMatchObject({ code: 'ERR_SAEKIT_FORMAT', message: expect.stringMatching(/sae_weights\.safetensors: holds a tensor saekit does not know \("W_skip"\): skip connections are not supported yet/) });
    await put(sl, w, { log_threshold: f32([L]) });
    await expect(SparseAutoencoder.load(sl)).rejects.toThrow(/does not know \("log_threshold"\); expected only "W_enc", "b_enc", "W_dec", "b_dec"/);
    await put(sl, w);
    using ok = await SparseAutoencoder.load(sl);
    expect(ok.k).toBe(k);
    // sparsify: W_skip (sparsify's own strict loader refuses it too without skip_connection).
    using sae = SparseAutoencoder.fromWeights(w, { k });
    const sp = tmp();
    await sae.save(sp, { format: 'sparsify' });
    const st = await readSafetensors(path.join(sp, 'sae.safetensors'));
    const t: Record<string, IoTensor> = {};
    for (const { name } of st.tensors) t[name] = await st.read(name);
    await st.close();
    await writeSafetensors(path.join(sp, 'sae.safetensors'), { ...t, W_skip: f32([dIn, dIn]) });
    const cfg = JSON.parse(readFileSync(path.join(sp, 'cfg.json'), 'utf8'));
    delete cfg.saekit_save_id;
    writeFileSync(path.join(sp, 'cfg.json'), JSON.stringify(cfg));
    await expect(SparseAutoencoder.load(sp)).rejects.toThrow(/sae\.safetensors: holds a tensor saekit does not know \("W_skip"\): skip connections/);
    // EleutherAI/sae's signed TopK (top |z| with signs) is another function.
    await writeSafetensors(path.join(sp, 'sae.safetensors'), t);
    writeFileSync(path.join(sp, 'cfg.json'), JSON.stringify({ ...cfg, signed: true }));
    await expect(SparseAutoencoder.load(sp)).rejects.toThrow(/cfg\.json: signed TopK \(signed: true\) is not supported yet/);
    // sparsify's n-gram lookup subtracts a table sae.safetensors does not hold.
    writeFileSync(path.join(sp, 'cfg.json'), JSON.stringify({ ...cfg, gram_lookup: true }));
    await expect(SparseAutoencoder.load(sp)).rejects.toThrow(/cfg\.json: n-gram lookup \(gram_lookup: true\) is not supported/);
    writeFileSync(path.join(sp, 'cfg.json'), JSON.stringify({ ...cfg, signed: false }));
    using unsigned = await SparseAutoencoder.load(sp);
    expect(unsigned.numLatents).toBe(L);
    // Gemma Scope 2 transcoders' affine skip connection.
    const g = tmp();
    await writeGemmaScope(g, w, dIn, L, { affine_skip_connection: f32([dIn, dIn]) });
    await expect(SparseAutoencoder.load(g)).rejects.toThrow(/params\.npz: holds a tensor saekit does not know \("affine_skip_connection"\): skip connections/);
  });

  it("missing sparsify fields take SparseCoderConfig's defaults (num_latents 0 = d_in x expansion_factor, 32, k 32); SAELens TopK's k defaults to 100", async () => {
    const d = 3;
    const sparsifyDir = async (F: number, cfg: Record<string, unknown>): Promise<string> => {
      const dir = tmp();
      const wf = randomWeights(d, F, 13);
      await writeSafetensors(path.join(dir, 'sae.safetensors'), {
        'encoder.weight': { dtype: 'float32', shape: [F, d], data: new Float32Array(F * d).fill(0.5) },
        'encoder.bias': { dtype: 'float32', shape: [F], data: wf.b_enc },
        W_dec: { dtype: 'float32', shape: [F, d], data: wf.W_dec },
        b_dec: { dtype: 'float32', shape: [d], data: wf.b_dec },
      });
      writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ d_in: d, ...cfg }));
      return dir;
    };
    for (const [F, cfg, wantK] of [
      [12, { expansion_factor: 4, k: 2 }, 2],
      [96, { num_latents: 0, k: 5 }, 5],
      [40, { num_latents: 40 }, 32],
      [96, {}, 32],
    ] as const) {
      using sae = await SparseAutoencoder.load(await sparsifyDir(F, cfg));
      expect([sae.numLatents, sae.k]).toEqual([F, wantK]);
    }
    await expect(SparseAutoencoder.load(await sparsifyDir(12, { num_latents: 12, k: 40 }))).rejects.toThrow(/k = 40 is outside 1\.\.num_latents = 12/);
    const sl = tmp();
    await put(sl, randomWeights(dIn, L, 14));
    writeFileSync(path.join(sl, 'cfg.json'), JSON.stringify({ architecture: 'topk', d_in: dIn, d_sae: L }));
    await expect(SparseAutoencoder.load(sl)).rejects.toThrow(/k = 100 is outside 1\.\.d_sae = 29/);
  });

  it('saekit weights beside a cfg.json without a save id (another library\'s, left by an interrupted save) are refused; metadata cannot set sae_lens_version', async () => {
    using sae = SparseAutoencoder.fromWeights(randomWeights(dIn, L, 15), { k });
    const dir = tmp();
    await sae.save(dir);
    writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ architecture: 'topk', k: 1, d_in: dIn, d_sae: L, apply_b_dec_to_input: false }));
    await expect(SparseAutoencoder.load(dir)).rejects.toThrow(/cfg\.json: belongs to another save than sae_weights\.safetensors \(cfg\.json has no save id, the weights have [0-9a-f]{16}/);
    for (const key of ['sae_lens_version', 'saekit_version', 'saekit_save_id']) {
      await expect(sae.save(tmp(), { metadata: { [key]: '5.9.0' } })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(new RegExp(`options\\.metadata not to set the SAELens metadata field '${key}'`)) });
    }
  });

  it('the scale under its newer name finetuning_scaling_factor is folded into W_dec rows too; a scale of all ones needs no cfg flag', async () => {
    const w = randomWeights(dIn, L, 17);
    const s = Float32Array.from({ length: L }, (_, i) => 0.25 + (i % 7) * 0.5);
    const dir = tmp();
    await put(dir, w, { finetuning_scaling_factor: { dtype: 'float32', shape: [L], data: s } });
    writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ architecture: 'topk', k, d_in: dIn, d_sae: L, finetuning_scaling_factor: true }));
    const got = await readSaeFiles(dir);
    // Row i of W_dec times s_i (one float32 product each).
    const want = w.W_dec.map((v, q) => Math.fround(v * s[Math.floor(q / dIn)]!));
    expect(Array.from(got.weights.W_dec)).toEqual(Array.from(want));
    expect(Array.from(got.weights.W_enc)).toEqual(Array.from(w.W_enc));
    // All ones (what SAELens initialises it to): nothing to fold, with or without the flag.
    for (const name of ['scaling_factor', 'finetuning_scaling_factor']) {
      await put(dir, w, { [name]: { dtype: 'float32', shape: [L], data: new Float32Array(L).fill(1) } });
      writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ architecture: 'topk', k, d_in: dIn, d_sae: L }));
      expect(Array.from((await readSaeFiles(dir)).weights.W_dec), name).toEqual(Array.from(w.W_dec));
    }
    // SAELens drops a scaling_factor within torch.allclose of ones (|s - 1| <= 1e-8 + 1e-5), flag
    // or no flag (saekit scaled W_dec by it, or refused the folder without the flag); a
    // finetuning_scaling_factor is applied as it is.
    const near = Float32Array.from({ length: L }, (_, i) => [1 + 4e-6, 1 - 9e-6, 1, 1 + 1e-5 - 1e-7][i % 4]!);
    for (const flag of [true, false, undefined]) {
      await put(dir, w, { scaling_factor: { dtype: 'float32', shape: [L], data: near } });
      writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ architecture: 'topk', k, d_in: dIn, d_sae: L, ...(flag === undefined ? {} : { finetuning_scaling_factor: flag }) }));
      expect(Array.from((await readSaeFiles(dir)).weights.W_dec), `flag ${flag}`).toEqual(Array.from(w.W_dec));
    }
    await put(dir, w, { finetuning_scaling_factor: { dtype: 'float32', shape: [L], data: near } });
    writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ architecture: 'topk', k, d_in: dIn, d_sae: L, finetuning_scaling_factor: true }));
    expect(Array.from((await readSaeFiles(dir)).weights.W_dec)).toEqual(Array.from(w.W_dec.map((v, q) => Math.fround(v * near[Math.floor(q / dIn)]!))));
    // Just outside allclose: a scale, which needs the flag.
    const out = near.map((v, i) => (i === 3 ? 1 + 2e-5 : v));
    await put(dir, w, { scaling_factor: { dtype: 'float32', shape: [L], data: out } });
    writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ architecture: 'topk', k, d_in: dIn, d_sae: L }));
    await expect(readSaeFiles(dir)).rejects.toThrow(/has a scaling_factor that is not all ones but finetuning_scaling_factor is not true/);
  });

  it("options.metadata may set none of the fields saekit writes itself: every key of a sparsify cfg.json, every key of a SAELens cfg.json's metadata", async () => {
    using sae = SparseAutoencoder.fromWeights(randomWeights(dIn, L, 18), { k });
    const sp = tmp();
    await sae.save(sp, { format: 'sparsify' });
    const spKeys = Object.keys(JSON.parse(readFileSync(path.join(sp, 'cfg.json'), 'utf8')));
    expect(spKeys).toEqual(expect.arrayContaining(['d_in', 'num_latents', 'k', 'activation']));
    const sl = tmp();
    await sae.save(sl);
    const slKeys = Object.keys(JSON.parse(readFileSync(path.join(sl, 'cfg.json'), 'utf8')).metadata);
    expect(slKeys).toEqual(expect.arrayContaining(['sae_lens_version', 'saekit_save_id']));
    for (const [format, keys, what] of [['sparsify', spKeys, 'the sparsify cfg field'], ['saelens', slKeys, 'the SAELens metadata field']] as const) {
      for (const key of keys) {
        const dir = tmp();
        const err = await sae.save(dir, { format, metadata: { [key]: 5 } }).catch((e: unknown) => e);
        expect(err, `${format} ${key}`).toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringContaining(`not to set ${what} '${key}'`) });
        expect(readdirSync(dir), `${format} ${key}`).toEqual([]);
      }
    }
    // Nor one saekit does not write but its reader acts on: a sparsify folder saved with signed: true
    // was written, then refused by load() ("signed TopK is not supported yet").
    for (const signed of [true, false]) {
      const dir = tmp();
      await expect(sae.save(dir, { format: 'sparsify', metadata: { signed } })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(/not to set the sparsify cfg field 'signed' \(it changes what the weights mean/) });
      expect(readdirSync(dir)).toEqual([]);
    }
  });
});

describe('SAE files: format detection', () => {
  const [dIn, L, k] = [5, 15, 2];
  const same = (a: Float32Array, b: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

  it('any *.npz file is read as Gemma Scope, and a cfg.json path as its folder (SAELens and sparsify)', async () => {
    const w = { ...randomWeights(dIn, L, 21), threshold: new Float32Array(L).map((_, i) => 0.01 * (i + 1)) };
    const g = tmp();
    await writeGemmaScope(g, w, dIn, L);
    // Gemma Scope releases are also passed around as one file under another name.
    const named = path.join(g, 'layer_12_width_16k.npz');
    writeFileSync(named, readFileSync(path.join(g, 'params.npz')));
    rmSync(path.join(g, 'params.npz'));
    const gs = await readSaeFiles(named);
    expect(gs.config).toMatchObject({ format: 'gemma-scope', architecture: 'jumprelu', dIn, numLatents: L, applyBDecToInput: false });
    for (const n of ['W_enc', 'b_enc', 'W_dec', 'b_dec', 'threshold'] as const) expect(same(gs.weights[n]!, w[n]), n).toBe(true);
    for (const format of ['saelens', 'sparsify'] as const) {
      const dir = tmp();
      const v = randomWeights(dIn, L, format === 'saelens' ? 22 : 23);
      await writeSaeFiles(dir, { architecture: 'topk', dIn, numLatents: L, k, applyBDecToInput: true }, v, { format });
      const viaCfg = await readSaeFiles(path.join(dir, 'cfg.json'));
      expect(viaCfg.config).toMatchObject({ format, dIn, numLatents: L, k });
      expect(viaCfg.files).toEqual([path.join(dir, 'cfg.json'), path.join(dir, format === 'saelens' ? 'sae_weights.safetensors' : 'sae.safetensors')]);
      for (const n of ['W_enc', 'b_enc', 'W_dec', 'b_dec'] as const) expect(same(viaCfg.weights[n], v[n]), `${format} ${n}`).toBe(true);
    }
  });

  it('a folder with several layouts: SAELens or sparsify weights before params.npz; with both safetensors, cfg.json decides (num_latents or expansion_factor: sparsify)', async () => {
    const ours = randomWeights(dIn, L, 24);
    const theirs = { ...randomWeights(dIn, L, 25), threshold: new Float32Array(L).fill(0.1) };
    const cfg = { architecture: 'topk' as const, dIn, numLatents: L, k, applyBDecToInput: true };
    // params.npz beside a SAELens or sparsify save is not what the folder's cfg.json describes.
    for (const format of ['saelens', 'sparsify'] as const) {
      const dir = tmp();
      await writeSaeFiles(dir, cfg, ours, { format });
      await writeGemmaScope(dir, theirs, dIn, L);
      const got = await readSaeFiles(dir);
      expect(got.config.format).toBe(format);
      expect(same(got.weights.W_enc, ours.W_enc), format).toBe(true);
    }
    // Both safetensors files: a sparsify cfg.json that gives the size as expansion_factor alone
    // (num_latents absent, SparseCoderConfig's 0) still says sparsify.
    const dir = tmp();
    await writeSaeFiles(dir, cfg, ours, { format: 'sparsify' });
    await writeSafetensors(path.join(dir, 'sae_weights.safetensors'), { W_enc: { dtype: 'float32', shape: [dIn, L], data: theirs.W_enc } });
    const c = JSON.parse(readFileSync(path.join(dir, 'cfg.json'), 'utf8'));
    expect(c.expansion_factor).toBe(L / dIn);
    delete c.num_latents;
    writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify(c));
    const got = await readSaeFiles(dir);
    expect(got.config).toMatchObject({ format: 'sparsify', numLatents: L });
    expect(same(got.weights.W_enc, ours.W_enc)).toBe(true);
  });

  it('a folder of Gemma Scope subfolders (params.npz in each) names them as Gemma Scope, not as a sparsify run', async () => {
    const root = tmp();
    const w = { ...randomWeights(dIn, L, 26), threshold: new Float32Array(L).fill(0.1) };
    for (const sub of ['average_l0_82', 'average_l0_41']) {
      mkdirSync(path.join(root, sub));
      await writeGemmaScope(path.join(root, sub), w, dIn, L);
    }
    await expect(readSaeFiles(root)).rejects.toMatchObject({
      code: 'ERR_SAEKIT_FORMAT',
      message: expect.stringMatching(/holds one SAE per subfolder \(Gemma Scope: "average_l0_41", "average_l0_82"\); load one of them, e\.g\. .*average_l0_41$/),
    });
    // Subfolders of both kinds are named without either library.
    await writeSaeFiles(path.join(root, 'layers.3'), { architecture: 'topk', dIn, numLatents: L, k, applyBDecToInput: true }, randomWeights(dIn, L, 28), { format: 'sparsify' });
    await expect(readSaeFiles(root)).rejects.toThrow(/holds one SAE per subfolder \(SAE folders: "average_l0_41", "average_l0_82", "layers\.3"\)/);
  });
});

describe('SAE files: saving into a folder that holds files', () => {
  const [dIn, L, k] = [7, 19, 3];
  const t32 = (shape: number[], data: Float32Array): IoTensor => ({ dtype: 'float32', shape, data });

  /** Another library's SAE in `dir` (no saekit save id): its weights and cfg.json. */
  async function foreign(dir: string, format: 'saelens' | 'sparsify', w: W): Promise<void> {
    if (format === 'saelens') {
      await writeSafetensors(path.join(dir, 'sae_weights.safetensors'), { W_enc: t32([dIn, L], w.W_enc), b_enc: t32([L], w.b_enc), W_dec: t32([L, dIn], w.W_dec), b_dec: t32([dIn], w.b_dec) });
      writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ architecture: 'topk', d_in: dIn, d_sae: L, k: 2, apply_b_dec_to_input: true }));
    } else {
      // encoder.weight is W_enc transposed ([L, dIn]).
      const enc = new Float32Array(L * dIn).map((_, q) => w.W_enc[(q % dIn) * L + Math.floor(q / dIn)]!);
      await writeSafetensors(path.join(dir, 'sae.safetensors'), { 'encoder.weight': t32([L, dIn], enc), 'encoder.bias': t32([L], w.b_enc), W_dec: t32([L, dIn], w.W_dec), b_dec: t32([dIn], w.b_dec) });
      writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ d_in: dIn, num_latents: L, k: 2, activation: 'topk' }));
    }
  }

  it("a folder holding another library's SAE of the other layout is refused, unchanged; saekit's own saves and same-layout folders are overwritten", async () => {
    const seed = Date.now() >>> 0;
    using sae = SparseAutoencoder.fromWeights(randomWeights(dIn, L, seed), { k });
    const theirs = randomWeights(dIn, L, seed + 1);
    for (const [layout, saveAs, file] of [['saelens', 'sparsify', 'sae_weights.safetensors'], ['sparsify', 'saelens', 'sae.safetensors']] as const) {
      const dir = tmp();
      await foreign(dir, layout, theirs);
      const before = Object.fromEntries(readdirSync(dir).map((f) => [f, readFileSync(path.join(dir, f)).toString('base64')]));
      const err = await sae.save(dir, { format: saveAs }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SaekitError);
      expect((err as SaekitError).code).toBe('ERR_SAEKIT_ARG');
      expect((err as SaekitError).message).toContain(`${dir} holds ${file} (not written by saekit) with its cfg.json`);
      expect((err as SaekitError).message).toMatch(/save into another folder$/);
      // Nothing written: the folder's files as they were, and the foreign SAE loads with its own weights.
      expect(Object.fromEntries(readdirSync(dir).map((f) => [f, readFileSync(path.join(dir, f)).toString('base64')]))).toEqual(before);
      using back = await SparseAutoencoder.load(dir);
      const wb = await back.weights();
      for (const n of ['W_enc', 'b_enc', 'W_dec', 'b_dec'] as const) expect(Array.from(wb[n]), `${layout} ${n}`).toEqual(Array.from(theirs[n]));
      // The same layout as the foreign SAE overwrites it, as before.
      await sae.save(dir, { format: layout });
      using ours = await SparseAutoencoder.load(dir);
      expect(Array.from((await ours.weights()).W_enc)).toEqual(Array.from((await sae.weights()).W_enc));
      // Over saekit's own save the other layout is written, and the earlier weights removed.
      await sae.save(dir, { format: saveAs });
      expect(readdirSync(dir).sort()).toEqual(['cfg.json', saveAs === 'saelens' ? 'sae_weights.safetensors' : 'sae.safetensors']);
    }
    // Foreign weights of the other layout beside saekit's own cfg.json of this layout: that cfg.json
    // does not describe them, so saving this layout again replaces nothing of theirs.
    const dir = tmp();
    await sae.save(dir, { format: 'sparsify' });
    await writeSafetensors(path.join(dir, 'sae_weights.safetensors'), { W_enc: t32([dIn, L], theirs.W_enc), b_enc: t32([L], theirs.b_enc), W_dec: t32([L, dIn], theirs.W_dec), b_dec: t32([dIn], theirs.b_dec) });
    await sae.save(dir, { format: 'sparsify' });
    expect(readdirSync(dir).sort()).toEqual(['cfg.json', 'sae.safetensors', 'sae_weights.safetensors']);
    // A saekit cfg.json of the other layout describes them: refused.
    writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify({ architecture: 'topk', d_in: dIn, d_sae: L, k, metadata: { saekit_save_id: '0123456789abcdef' } }));
    await expect(sae.save(dir, { format: 'sparsify' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringContaining('holds sae_weights.safetensors (not written by saekit)') });
  });

  it("staging files of a save killed part-way are removed by the next save: only saekit's names, only of processes that no longer run", async () => {
    const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
    expect(() => process.kill(dead, 0)).toThrow(expect.objectContaining({ code: 'ESRCH' }));
    const id = () => randomBytes(8).toString('hex');
    const tmpOf = (staged: string, pid: number) => `.${staged}.${pid}.${randomBytes(6).toString('hex')}.tmp`;
    const stagedName = (file: string, pid: number) => `.${file}.${pid}.${id()}.staged`;
    const leftovers = [
      stagedName('sae_weights.safetensors', dead),
      stagedName('sae.safetensors', dead),
      stagedName('cfg.json', dead),
      tmpOf(stagedName('sae_weights.safetensors', dead), dead),
      tmpOf(stagedName('cfg.json', dead), dead),
    ];
    const kept = [
      // A save in progress: this process's, and another running process's (the parent).
      stagedName('sae_weights.safetensors', process.pid),
      tmpOf(stagedName('sae.safetensors', process.pid), process.pid),
      stagedName('sae.safetensors', process.ppid),
      // Names that are not exactly saekit's.
      `.model.safetensors.${dead}.${id()}.staged`,
      `.sae_weights.safetensors.${dead}.${id()}.staged.bak`,
      `.sae_weights.safetensors.${dead}.${id().slice(1)}.staged`,
      `sae_weights.safetensors.${dead}.${id()}.staged`,
      `.sae.safetensors.${dead}.${randomBytes(6).toString('hex')}.tmp`,
      tmpOf(stagedName('sae_weights.safetensors', dead), dead + 1),
    ];
    const dir = tmp();
    for (const f of [...leftovers, ...kept]) writeFileSync(path.join(dir, f), 'x');
    mkdirSync(path.join(dir, stagedName('cfg.json', dead))); // a folder of that name is not a file saekit wrote
    const folder = readdirSync(dir).find((f) => !leftovers.includes(f) && !kept.includes(f))!;
    using sae = SparseAutoencoder.fromWeights(randomWeights(dIn, L, 3), { k });
    await sae.save(dir);
    expect(readdirSync(dir).sort()).toEqual(['cfg.json', 'sae_weights.safetensors', folder, ...kept].sort());
  });

  it('a failed save names the folder and the file being saved, not its temporary name, and leaves no temporary files', async () => {
    using sae = SparseAutoencoder.fromWeights(randomWeights(dIn, L, 4), { k });
    for (const [file, format] of [['sae_weights.safetensors', 'saelens'], ['cfg.json', 'sparsify']] as const) {
      // A folder where the file should go: renaming the staged file over it fails (EISDIR).
      const dir = tmp();
      mkdirSync(path.join(dir, file));
      const err = await sae.save(dir, { format }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SaekitError);
      expect((err as SaekitError).code).toBe('ERR_SAEKIT_ARG');
      expect((err as SaekitError).message).toMatch(new RegExp(`^Could not save ${file.replace('.', '\\.')} in ${dir}: E[A-Z]+: `));
      expect((err as SaekitError).message).not.toMatch(/staged|\.tmp/);
      expect(readdirSync(dir).filter((f) => f.startsWith('.'))).toEqual([]);
    }
    // A write that fails: the staged weights' temporary file has a path over Linux's 4095 bytes,
    // the final one does not.
    if (process.platform !== 'linux') return;
    let dir = tmp();
    while (4040 - dir.length - 1 > 255) dir = path.join(dir, 'd'.repeat(250));
    dir = path.join(dir, 'd'.repeat(4040 - dir.length - 1));
    const err = await sae.save(dir).catch((e: unknown) => e);
    expect((err as SaekitError).message).toBe(`Could not save sae_weights.safetensors in ${dir}: ENAMETOOLONG: name too long`);
    expect(readdirSync(dir)).toEqual([]);
  });
});

describe('SAE files: weights detached while they are saved', () => {
  // The weights are written across awaits (the folder's checks, then the staged weights file).
  // Detached meanwhile, a save wrote a truncated sae_weights.safetensors and replaced the good
  // one (SAELens), or wrote the transpose of an emptied W_enc as NaN (sparsify), and resolved.
  const [dIn, L, k] = [256, 4096, 16];
  const tick = () => new Promise<void>((r) => setImmediate(r));

  for (const format of ['saelens', 'sparsify'] as const) {
    for (const [weight, when] of [
      ['W_dec', 'at once'],
      ['W_enc', 'at once'],
      ['W_dec', 'once its staged weights file exists'],
    ] as const) {
      it(`${format}: ${weight} detached ${when}: ERR_SAEKIT_ARG naming it, and the folder keeps the earlier save`, async () => {
        const seed = Date.now() >>> 0;
        const dir = tmp();
        const cfg = { architecture: 'topk' as const, dIn, numLatents: L, k, applyBDecToInput: true };
        const w0 = randomWeights(dIn, L, seed);
        await writeSaeFiles(dir, cfg, w0, { format });
        const before = readdirSync(dir).sort();
        const w1 = randomWeights(dIn, L, seed + 1);
        const copy = { ...w1, [weight]: w1[weight].slice() };
        const p = writeSaeFiles(dir, cfg, w1, { format });
        let settled = false;
        void p.then(
          () => (settled = true),
          () => (settled = true),
        );
        if (when !== 'at once') while (!settled && !readdirSync(dir).some((f) => f.includes('.staged'))) await tick();
        structuredClone(w1[weight].buffer, { transfer: [w1[weight].buffer as ArrayBuffer] });
        const r = await Promise.allSettled([p]).then(([x]) => x!);
        const expected = r.status === 'rejected' ? w0 : copy; // resolved only when the weights were already written
        if (when === 'at once') expect(r.status, `seed ${seed}`).toBe('rejected');
        if (r.status === 'rejected') {
          expect(r.reason, `seed ${seed}`).toMatchObject({ code: 'ERR_SAEKIT_ARG', message: expect.stringMatching(new RegExp(`${weight}\\S* to keep its \\d+ (values|bytes) until the call settles but it now has 0 \\(was its ArrayBuffer detached or resized\\?\\)`)) });
        }
        expect(readdirSync(dir).sort(), 'no staging file left').toEqual(before);
        const back = await readSaeFiles(dir);
        for (const key of ['W_enc', 'b_enc', 'W_dec', 'b_dec'] as const) {
          expect(Buffer.from(back.weights[key].buffer, back.weights[key].byteOffset, back.weights[key].byteLength).equals(Buffer.from(expected[key].buffer)), `seed ${seed}: ${key}`).toBe(true);
        }
      }, 30_000);
    }
  }
});

describe('readSaeFiles shares the JS thread with the event loop', () => {
  // Synchronous, the bfloat16 -> float32 conversion of a 16384 x 2304 SAELens file held the JS
  // thread 235-270 ms on the loaded 2-core development machine, and the transpose of a 16384 x 768
  // sparsify encoder ~270 ms; converted and transposed in slices, the longest gaps there were
  // 50-100 ms.
  const seed = Date.now() >>> 0;
  const cases = { saelens: [2304, 16384], sparsify: [768, 16384] } as const;
  for (const [format, [dIn, L]] of Object.entries(cases) as [keyof typeof cases, readonly [number, number]][]) {
    it(`a ${L} x ${dIn} bfloat16 ${format} file: the stored bits widened exactly${format === 'sparsify' ? ', W_enc the transposed encoder.weight' : ''}`, async () => {
      const dir = tmp();
      const sae = SparseAutoencoder.create({ dIn, numLatents: L, k: 32, seed });
      await sae.save(dir, { format, dtype: 'bfloat16' });
      sae.dispose();
      const { value: files, elapsed, longest, firings } = await watchCall(() => readSaeFiles(dir));
      expect(longest, `seed ${seed}: longest gap of a ${elapsed.toFixed(0)} ms read`).toBeLessThan(gapBound(elapsed));
      expect(firings).toBeGreaterThan(elapsed / 50);
      // The reference: each stored bfloat16 is the top half of its float32.
      const st = await readSafetensors(path.join(dir, format === 'saelens' ? 'sae_weights.safetensors' : 'sae.safetensors'));
      const enc = (await st.read(format === 'saelens' ? 'W_enc' : 'encoder.weight')).data as Uint16Array;
      const dec = (await st.read('W_dec')).data as Uint16Array;
      await st.close();
      const bits = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);
      const W_enc = bits(files.weights.W_enc);
      const W_dec = bits(files.weights.W_dec);
      let bad = -1;
      for (let r = 0; r < dIn && bad < 0; r++) {
        for (let i = 0; i < L; i++) {
          const want = format === 'saelens' ? enc[r * L + i]! : enc[i * dIn + r]!; // sparsify stores [L, dIn]
          if (W_enc[r * L + i] !== ((want << 16) >>> 0)) bad = r * L + i;
        }
      }
      expect(bad, `seed ${seed}: W_enc`).toBe(-1);
      for (let q = 0; q < W_dec.length && bad < 0; q++) if (W_dec[q] !== ((dec[q]! << 16) >>> 0)) bad = q;
      expect(bad, `seed ${seed}: W_dec`).toBe(-1);
    }, 60_000);
  }
});
