/**
 * SAE files: SAELens, sparsify and Gemma Scope layouts, byte-level fields and round trips.
 * References: a JS float64 encoder for JumpReLU and SAELens's rescaled TopK.
 */
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { SaekitError, SparseAutoencoder, tensor } from '../lib/index.js';
import { readSafetensors, writeNpz, writeSafetensors } from '../lib/io/index.js';
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
    expect(cfg).toMatchObject({ activation: 'topk', num_latents: L, k, d_in: dIn, normalize_decoder: true, transcode: false, skip_connection: false });
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
});

describe('SAE files: JumpReLU (Gemma Scope, SAELens)', () => {
  const dIn = 29;
  const L = 61;

  it('Gemma Scope params.npz loads as JumpReLU without b_dec subtraction and encodes/decodes like the reference', async () => {
    const seed = Date.now() >>> 0;
    const w = randomWeights(dIn, L, seed);
    w.threshold = new Float32Array(L).map((_, i) => 0.2 + 0.01 * (i % 7));
    const dir = tmp();
    await writeNpz(path.join(dir, 'params.npz'), {
      W_enc: { dtype: 'float32', shape: [dIn, L], data: w.W_enc },
      W_dec: { dtype: 'float32', shape: [L, dIn], data: w.W_dec },
      b_enc: { dtype: 'float32', shape: [L], data: w.b_enc },
      b_dec: { dtype: 'float32', shape: [dIn], data: w.b_dec },
      threshold: { dtype: 'float32', shape: [L], data: w.threshold },
    }, { compress: true });
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

  it('SAELens TopK with rescale_acts_by_decoder_norm is folded at load into the same function', async () => {
    const [dI, F, k] = [13, 37, 4];
    const w = randomWeights(dI, F, 11, (i) => 0.3 + (i % 4) * 0.4);
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
    const { recon } = await sae.forward(x);
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
    expect((err as SaekitError).code).toBe('ERR_SAEKIT_ARG');
  });

  it('refuses to save a JumpReLU SAE as sparsify, and checks options', async () => {
    const w = randomWeights(7, 11, 2);
    w.threshold = new Float32Array(11).fill(0.1);
    using sae = SparseAutoencoder.fromWeights(w, { architecture: 'jumprelu' });
    await expect(sae.save(tmp(), { format: 'sparsify' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG' });
    await expect(sae.save(tmp(), { format: 'torch' as 'saelens' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_ARG' });
    await expect(sae.save(tmp(), { dtype: 'float16' as 'float32' })).rejects.toMatchObject({ code: 'ERR_SAEKIT_DTYPE' });
    expect(() => SparseAutoencoder.fromWeights({ ...w, threshold: undefined }, { architecture: 'jumprelu' })).toThrow(/threshold/);
  });
});
