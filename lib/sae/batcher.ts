/**
 * EncodeBatcher: encodes many small requests as few batches, for services that encode a few rows
 * per request. One encode reads the whole encoder whatever the number of rows (at dIn 768 x 24,576
 * latents on two cores: 11 ms for 1 row, 16 ms for 16), so requests that arrive while an encode
 * runs wait for it and then go together, as one batch of up to `maxRows` rows; a request that
 * finds the batcher idle starts at once (no added latency).
 *
 * A request's codes are those of its rows in a larger batch: the same rule, but with OpenBLAS the
 * encoder GEMM may sum in another order for another number of rows, so values can differ at
 * float32 rounding level from `sae.encode` on the rows alone (and a near-tie in the TopK could then
 * select differently). With `batchInvariant: true` (CPU SAEs) every request gets exactly the bits
 * of encoding its rows alone, whatever else shared its batch. JumpReLU codes are trimmed to the
 * request's own largest number of active latents, as encoding its rows alone pads them (the batch
 * itself is padded to its largest: one row that activates thousands of latents makes its whole
 * batch that wide for the time of the encode). A request with a NaN or infinite value is rejected
 * on its own, before it joins a batch. One whose finite values overflow the encoder (inputs near
 * the float32 limit) is rejected on its own too: the rest of its batch keeps its codes from the
 * same encode, and the request is encoded again alone, so its error names its own row (any number
 * of such requests cost the others nothing). A batch whose rows cannot be
 * allocated rejects its requests with ERR_SAEKIT_MEMORY; later requests still run.
 *
 * A request is encoded with the weights the SAE has when its batch starts, not when encode() was
 * called: a setWeights() called while requests wait applies to them too (sae.encode() itself is
 * queued in call order, before the setWeights). To switch weights at a known point, await the
 * requests that must see the old ones first.
 */
import { argError, arrayTypeError, atSite, fromNative, SaekitError } from '../errors.js';
import { checkInt, checkOptions, optionNames } from '../validate.js';
import { batchInvariantOption, encodeKeepingOverflow, type SparseAutoencoder, type SparseCodes } from './index.js';

/** Options of EncodeBatcher. */
export interface EncodeBatcherOptions {
  /** Most rows in one batch (a single larger request still goes alone). Default 4096. */
  maxRows?: number;
  /**
   * Encode with `batchInvariant` (EncodeOptions): each request's codes are the bits of encoding
   * its rows alone, however requests were batched. CPU SAEs only. Default false.
   */
  batchInvariant?: boolean;
}

const BATCHER_OPTIONS = optionNames<EncodeBatcherOptions>({ maxRows: true, batchInvariant: true });

interface Request {
  x: Float32Array;
  rows: number;
  resolve: (c: SparseCodes) => void;
  /** Rejects with the error's copy that carries encode()'s caller's stack (atSite), not the batch's. */
  reject: (e: unknown) => void;
}

/** Coalesces concurrent `encode` calls on one SAE into batches (see the module comment). */
export class EncodeBatcher {
  /** The SAE the batches are encoded with. */
  readonly sae: SparseAutoencoder;
  /** Most rows in one batch. */
  readonly maxRows: number;
  /** Whether batches are encoded batch-invariantly (EncodeBatcherOptions.batchInvariant). */
  readonly batchInvariant: boolean;
  #queue: Request[] = [];
  #running = false;
  #batches = 0;
  #disposed = false;

  constructor(sae: SparseAutoencoder, options?: EncodeBatcherOptions) {
    if (sae === null || typeof sae !== 'object' || typeof (sae as { encode?: unknown }).encode !== 'function') {
      throw argError('sae', 'a SparseAutoencoder', sae);
    }
    const o = checkOptions('options', options, BATCHER_OPTIONS);
    this.sae = sae;
    this.maxRows = o.maxRows === undefined ? 4096 : checkInt('options.maxRows', o.maxRows, 1, 1 << 24);
    this.batchInvariant = batchInvariantOption(o.batchInvariant, sae.device);
  }

  /** Batches encoded so far (for monitoring: requests / batches is the coalescing factor). */
  get batches(): number {
    return this.#batches;
  }

  /** Sparse codes of each row of x (rows x dIn float32 values), encoded with whatever else is waiting. */
  encode(x: Float32Array): Promise<SparseCodes> {
    const dIn = this.sae.dIn;
    if (this.#disposed) return Promise.reject(new SaekitError('ERR_SAEKIT_DISPOSED', 'this EncodeBatcher was disposed'));
    if (this.sae.disposed) return Promise.reject(new SaekitError('ERR_SAEKIT_DISPOSED', 'the SparseAutoencoder of this batcher was disposed'));
    // The codes sae.encode gives: not a Float32Array ARG, a wrong length SHAPE.
    if (!(x instanceof Float32Array)) return Promise.reject(arrayTypeError('x', `a Float32Array of rows x dIn = ${dIn} values`, x));
    if (x.length === 0 || x.length % dIn !== 0) {
      return Promise.reject(argError('x', `a non-empty Float32Array of rows x dIn = ${dIn} values`, x, 'ERR_SAEKIT_SHAPE'));
    }
    for (let i = 0; i < x.length; i++) {
      if (!Number.isFinite(x[i]!)) {
        // sae.encode's words, and its err.row.
        const row = Math.floor(i / dIn);
        return Promise.reject(fromNative({ code: 'ERR_SAEKIT_NONFINITE', message: `Expected finite values in x but row ${row} has ${x[i]} at column ${i % dIn}`, row }));
      }
    }
    const site = new Error();
    return new Promise<SparseCodes>((resolve, reject) => {
      // A copy: the caller may reuse x as soon as this returns, and the batch is built later.
      this.#queue.push({ x: x.slice(), rows: x.length / dIn, resolve, reject: (e) => reject(atSite(e, site)) });
      if (!this.#running) void this.#run();
    });
  }

  /**
   * Stops the batcher: requests still waiting reject with ERR_SAEKIT_DISPOSED, and so does every
   * later encode(); a batch already being encoded finishes and resolves its requests. The SAE is
   * not disposed (it belongs to the caller). Idempotent; also `using batcher = new EncodeBatcher(...)`.
   */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    const err = new SaekitError('ERR_SAEKIT_DISPOSED', 'this EncodeBatcher was disposed before the request was encoded');
    for (const r of this.#queue.splice(0)) r.reject(err);
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** Whether dispose() was called. */
  get disposed(): boolean {
    return this.#disposed;
  }

  async #run(): Promise<void> {
    this.#running = true;
    try {
      const q = this.#queue;
      while (q.length > 0) {
        // One splice per batch: shift() per request copies a long queue each time in V8 (100k
        // queued one-row requests took 4.8 s of JS, blocking the event loop for 0.4 s a batch).
        let n = 1;
        let rows = q[0]!.rows;
        while (n < q.length && rows + q[n]!.rows <= this.maxRows) rows += q[n++]!.rows;
        await this.#encodeBatch(q.splice(0, n), rows);
      }
    } finally {
      this.#running = false;
    }
  }

  /** Encodes the requests `take` (rows in all) as one batch and settles each of them; never rejects. */
  async #encodeBatch(take: Request[], rows: number): Promise<void> {
    try {
      const dIn = this.sae.dIn;
      let x: Float32Array;
      if (take.length === 1) x = take[0]!.x;
      else {
        try {
          x = new Float32Array(rows * dIn);
        } catch (err) {
          if (!(err instanceof RangeError)) throw err;
          throw new SaekitError(
            'ERR_SAEKIT_MEMORY',
            `Expected memory for a batch of ${take.length} requests, ${rows} rows x dIn = ${dIn} float32 values (${rows * dIn * 4} bytes), but it cannot be allocated (${err.message}); lower options.maxRows`,
          );
        }
        let at = 0;
        for (const r of take) {
          x.set(r.x, at);
          at += r.x.length;
        }
      }
      // Rows whose pre-activations overflow float32 (finite inputs near its limit) keep their
      // infinite codes here instead of failing the batch: one encode serves every other request.
      const codes = await encodeKeepingOverflow(this.sae, x, this.batchInvariant);
      this.#batches++;
      const { k, values, indices, numLatents } = codes;
      const jump = this.sae.architecture === 'jumprelu';
      const alone: Promise<void>[] = [];
      let row = 0;
      for (const r of take) {
        if (overflows(values, row * k, (row + r.rows) * k)) {
          // Encoded again on its own, so it rejects with the error sae.encode gives its rows alone
          // (naming its own row, not the batch's).
          alone.push(this.sae.encode(r.x, this.batchInvariant ? { batchInvariant: true } : undefined).then(r.resolve, r.reject));
          row += r.rows;
          continue;
        }
        let kr = k;
        if (jump) {
          // The request's own padding: its largest number of active (positive) latents, at least 1.
          kr = 1;
          for (let n = row; n < row + r.rows; n++) {
            let c = 0;
            while (c < k && values[n * k + c]! > 0) c++;
            kr = Math.max(kr, c);
          }
        }
        const v = new Float32Array(r.rows * kr);
        const ix = new Int32Array(r.rows * kr);
        for (let n = 0; n < r.rows; n++) {
          v.set(values.subarray((row + n) * k, (row + n) * k + kr), n * kr);
          ix.set(indices.subarray((row + n) * k, (row + n) * k + kr), n * kr);
        }
        r.resolve({ rows: r.rows, numLatents, k: kr, values: v, indices: ix });
        row += r.rows;
      }
      await Promise.all(alone);
    } catch (err) {
      // Every taken request settles (one already resolved keeps its codes).
      for (const r of take) r.reject(err);
    }
  }
}

/** Whether values[from, to) holds a non-finite code (a row whose pre-activations overflow float32). */
function overflows(values: Float32Array, from: number, to: number): boolean {
  for (let j = from; j < to; j++) if (!Number.isFinite(values[j]!)) return true;
  return false;
}
