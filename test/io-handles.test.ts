/**
 * Every file handle the SAE file and .npz readers open is closed, on success and on every
 * refusal. node:fs/promises' open is wrapped to keep each FileHandle until its close(): the
 * count is exact (an unclosed handle is not left to garbage collection, which would close it at
 * a time no test controls).
 */
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { describe, expect, it, vi } from 'vitest';

import { readNpy, readNpyHeader, readNpz, readSaeFiles, readSafetensors, writeFileAtomic, writeNpy, writeNpz, writeSaeFiles, writeSafetensors, type IoTensor } from '../lib/io/index.js';
import { lcg } from './helpers/reference.js';

const live = vi.hoisted(() => new Set<object>());

vi.mock('node:fs/promises', async (importOriginal) => {
  const fsp = await importOriginal<typeof import('node:fs/promises')>();
  const open: typeof fsp.open = async (...args) => {
    const fh = await fsp.open(...args);
    live.add(fh);
    const close = fh.close.bind(fh);
    fh.close = () => {
      live.delete(fh);
      return close();
    };
    return fh;
  };
  return { ...fsp, open, default: { ...fsp, open } };
});

function tmp(): string {
  return mkdtempSync(path.join(os.tmpdir(), 'saekit-handles-'));
}

/** Runs `fn` and expects no handle left open after it, whether it resolves or rejects (`refused`: the message it must reject with). */
async function noHandleLeft(label: string, fn: () => Promise<unknown>, refused?: RegExp, code = 'ERR_SAEKIT_FORMAT'): Promise<void> {
  const before = live.size;
  const r = await fn().then(
    () => undefined,
    (e: unknown) => e,
  );
  if (refused) expect(r, label).toMatchObject({ code, message: expect.stringMatching(refused) });
  else expect(r, label).toBeUndefined();
  expect(live.size - before, `${label}: handles left open`).toBe(0);
}

describe('file handles of the SAE file and .npz readers', () => {
  const [dIn, L] = [3, 5];
  const next = lcg(41);
  const f32 = (shape: number[]): IoTensor => ({ dtype: 'float32', shape, data: Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => next() - 0.5) });
  const weights = () => ({ W_enc: f32([dIn, L]).data as Float32Array, b_enc: f32([L]).data as Float32Array, W_dec: f32([L, dIn]).data as Float32Array, b_dec: f32([dIn]).data as Float32Array });
  const cfg = { architecture: 'topk' as const, dIn, numLatents: L, k: 2, applyBDecToInput: true };

  it('readNpz closes the file when it reads it and when it refuses it (a CRC mismatch)', async () => {
    const dir = tmp();
    const file = path.join(dir, 'a.npz');
    await noHandleLeft('writeNpz', () => writeNpz(file, { a: { dtype: 'uint8', shape: [2], data: new Uint8Array([1, 2]) } }));
    await noHandleLeft('readNpz', () => readNpz(file));
    const bad = Buffer.from(readFileSync(file));
    bad[bad.length - 22 - 51 - 1]! ^= 1; // the last data byte of the one stored entry
    writeFileSync(file, bad);
    await noHandleLeft('readNpz, CRC mismatch', () => readNpz(file), /CRC-32 mismatch/);
  });

  it('readSaeFiles closes cfg.json and the weights when it loads them and at each refusal', async () => {
    for (const format of ['saelens', 'sparsify'] as const) {
      const dir = tmp();
      const weightsFile = path.join(dir, format === 'saelens' ? 'sae_weights.safetensors' : 'sae.safetensors');
      await noHandleLeft(`${format}: writeSaeFiles`, () => writeSaeFiles(dir, cfg, weights(), { format }));
      await noHandleLeft(`${format}: readSaeFiles`, () => readSaeFiles(dir));
      const good = readFileSync(path.join(dir, 'cfg.json'), 'utf8');
      // Refused while reading cfg.json, after reading it, and after opening the weights.
      writeFileSync(path.join(dir, 'cfg.json'), '{"d_in": 3,');
      await noHandleLeft(`${format}: invalid JSON`, () => readSaeFiles(dir), /invalid JSON/);
      writeFileSync(path.join(dir, 'cfg.json'), good.replace(/"k": 2/, '"k": 9'));
      await noHandleLeft(`${format}: k too large`, () => readSaeFiles(dir), /k = 9 is outside/);
      writeFileSync(path.join(dir, 'cfg.json'), good);
      await noHandleLeft(`${format}: an extra tensor`, () => writeSafetensors(weightsFile, { x: f32([1]) }));
      await noHandleLeft(`${format}: an unknown tensor`, () => readSaeFiles(dir), /does not know \("x"\)/);
    }
  });

  it('readSaeFiles closes params.npz when it loads it and when the archive or its arrays are refused', async () => {
    const dir = tmp();
    const file = path.join(dir, 'params.npz');
    const arrays = { ...weights(), threshold: new Float32Array(L).fill(0.1) };
    const npz = (extra: Record<string, IoTensor> = {}) =>
      writeNpz(file, {
        W_enc: { dtype: 'float32', shape: [dIn, L], data: arrays.W_enc },
        W_dec: { dtype: 'float32', shape: [L, dIn], data: arrays.W_dec },
        b_enc: { dtype: 'float32', shape: [L], data: arrays.b_enc },
        b_dec: { dtype: 'float32', shape: [dIn], data: arrays.b_dec },
        threshold: { dtype: 'float32', shape: [L], data: arrays.threshold },
        ...extra,
      });
    await noHandleLeft('writeNpz', () => npz());
    await noHandleLeft('readSaeFiles', () => readSaeFiles(dir));
    const bytes = readFileSync(file);
    writeFileSync(file, bytes.subarray(0, bytes.length - 30));
    await noHandleLeft('a truncated archive', () => readSaeFiles(dir), /no end-of-central-directory record/);
    await noHandleLeft('writeNpz, junk', () => npz({ junk: f32([2]) }));
    await noHandleLeft('an unknown array', () => readSaeFiles(dir), /does not know \("junk"\)/);
  });

  it('readNpy, readNpyHeader and readSafetensors close the file when they read it and when they refuse it; so does a folder given as a file', async () => {
    const dir = tmp();
    const npy = path.join(dir, 'a.npy');
    await noHandleLeft('writeNpy', () => writeNpy(npy, f32([2, 3])));
    await noHandleLeft('readNpy', () => readNpy(npy));
    await noHandleLeft('readNpyHeader', () => readNpyHeader(npy));
    const whole = readFileSync(npy);
    writeFileSync(npy, whole.subarray(0, whole.length - 4));
    await noHandleLeft('readNpy, truncated', () => readNpy(npy), /file truncated/);
    await noHandleLeft('readNpyHeader, truncated', () => readNpyHeader(npy), /file truncated/);
    const st = path.join(dir, 'a.safetensors');
    await noHandleLeft('writeSafetensors', () => writeSafetensors(st, { w: f32([2]) }));
    await noHandleLeft('readSafetensors', async () => (await readSafetensors(st)).close());
    writeFileSync(st, Buffer.concat([readFileSync(st), Buffer.from([0])]));
    await noHandleLeft('readSafetensors, trailing byte', () => readSafetensors(st), /tensors end at byte/);
    await noHandleLeft('readNpy of a folder', () => readNpy(dir), /regular file/, 'ERR_SAEKIT_ARG');
    await noHandleLeft('readSafetensors of a folder', () => readSafetensors(dir), /regular file/, 'ERR_SAEKIT_ARG');
  });

  it('writeFileAtomic closes and removes its temporary file when the data is detached before the first write', async () => {
    const dir = tmp();
    const file = path.join(dir, 'out.bin');
    writeFileSync(file, 'old');
    await noHandleLeft(
      'writeFileAtomic, detached',
      () => {
        const data = new Uint8Array(64).fill(7);
        const p = writeFileAtomic(file, data);
        // Detached synchronously, while the temporary file is being opened: the first write finds it gone.
        structuredClone(data.buffer, { transfer: [data.buffer] });
        return p;
      },
      /Expected data to keep its 64 bytes/,
      'ERR_SAEKIT_ARG',
    );
    expect(readdirSync(dir)).toEqual(['out.bin']);
    expect(readFileSync(file, 'utf8')).toBe('old');
  });
});
