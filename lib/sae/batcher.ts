/**
 * EncodeBatcher: encodes many small requests as few batches, for services that encode a few rows
 * per request. One encode reads the whole encoder whatever the number of rows (at dIn 768 x 24,576
 * latents on two cores: 11 ms for 1 row, 16 ms for 16), so requests that arrive while an encode
 * runs wait for it and then go together, as one batch of up to `maxRows` rows; a request that
 * finds the batcher idle starts at once (no added latency): it is sae.encode's own call, which
 * reads x before encode() returns, so it costs the event loop what sae.encode does. A request that
 * waits holds a copy of its rows (the caller may reuse x at once). x is what sae.encode takes: a
 * Float32Array, or a float32 Tensor [rows, dIn] on any device (a waiting one is downloaded, as
 * batches are built on the host).
 *
 * A request's codes are those of its rows in a larger batch: the same rule, but with OpenBLAS the
 * encoder GEMM may sum in another order for another number of rows, so values can differ at
 * float32 rounding level from `sae.encode` on the rows alone (and a near-tie in the TopK could then
 * select differently). With `batchInvariant: true` (CPU SAEs) every request gets exactly the bits
 * of encoding its rows alone, whatever else shared its batch. JumpReLU codes are trimmed to the
 * request's own largest number of active latents, as encoding its rows alone pads them (the batch
 * itself is padded to its largest: one row that activates thousands of latents makes its whole
 * batch that wide for the time of the encode).
 *
 * One request's bad rows never fail another request: each is rejected alone, with the error
 * `sae.encode` gives for its rows alone (its message, and err.row counted in its own rows where
 * sae.encode sets it).
 * - Finite values that overflow the encoder (inputs near the float32 limit): the rest of the batch
 *   keeps its codes from the same encode, and the request is encoded again alone (any number of
 *   such requests cost the others nothing).
 * - A NaN or an infinity: the native encode checks every value (off the JS thread); when a batch
 *   fails on one, the requests holding one are found (only then, on the JS thread) and encoded
 *   alone, and the others are encoded again as one batch.
 * - Any other error about particular rows (ERR_SAEKIT_SHAPE: a JumpReLU row with more than 8192
 *   active latents on a CUDA device), or memory the batch cannot have (ERR_SAEKIT_MEMORY: its
 *   rows, or the codes of a JumpReLU batch padded to one row's thousands of active latents): the
 *   batch is halved and each half encoded again, down to single requests, which are encoded
 *   alone; c such requests in a batch of n cost about 2 c log2(n) more encodes.
 * Another error about the whole batch (a disposed SAE, a device failure) rejects its requests;
 * later requests still run. Once the SAE is disposed, every request still waiting rejects at once
 * with ERR_SAEKIT_DISPOSED. A waiting Tensor request joins the queue once downloaded, behind the
 * requests that arrived meanwhile.
 *
 * Back-pressure and cancellation: `pendingRows` is the number of rows waiting for a batch, and
 * with `maxPendingRows` a request that would take it past that limit is refused at once
 * (ERR_SAEKIT_MEMORY) instead of queueing without bound. `encode(x, { signal })` withdraws a
 * request: aborted while it waits, it leaves the queue; aborted while its batch runs, it rejects
 * at once and the rest of the batch is unaffected. Either way it rejects with `signal.reason`.
 *
 * A request is encoded with the weights the SAE has when its batch starts, not when encode() was
 * called: a setWeights() called while requests wait applies to them too (sae.encode() itself is
 * queued in call order, before the setWeights). To switch weights at a known point, await the
 * requests that must see the old ones first.
 */
import { argError, arrayTypeError, atSite, SaekitError } from '../errors.js';
import { Tensor } from '../tensor/index.js';
import { checkInt, checkOptions, checkSignal, optionNames } from '../validate.js';
import { batchInvariantOption, encodeKeepingOverflow, type Rows, SparseAutoencoder, type SparseCodes } from './index.js';

/** Options of EncodeBatcher. */
export interface EncodeBatcherOptions {
  /** Most rows in one batch (a single larger request still goes alone). Default 4096. */
  maxRows?: number;
  /**
   * Encode with `batchInvariant` (EncodeOptions): each request's codes are the bits of encoding
   * its rows alone, however requests were batched. CPU SAEs only. Default false.
   */
  batchInvariant?: boolean;
  /**
   * Most rows waiting for a batch (`pendingRows`): a request that has to wait and would take them
   * past this is rejected at once with ERR_SAEKIT_MEMORY naming this option, so that a burst
   * larger than the SAE can encode is refused instead of queueing (and holding memory) without
   * bound. A request that finds the batcher idle starts at once and is never refused. An integer
   * >= 1, or Infinity. Default Infinity (unlimited).
   * @example new EncodeBatcher(sae, { maxPendingRows: 65536 }) // about 200 MB of rows at dIn 768
   */
  maxPendingRows?: number;
}

/** batcher.encode() options. */
export interface BatcherEncodeOptions {
  /**
   * Withdraws the request when aborted: while it waits it leaves the queue; while its batch is
   * encoded it rejects at once and the other requests of the batch are not affected. Either way
   * the Promise rejects with `signal.reason`, as Node's own APIs do (also when already aborted).
   */
  signal?: AbortSignal;
}

const BATCHER_OPTIONS = optionNames<EncodeBatcherOptions>({ maxRows: true, batchInvariant: true, maxPendingRows: true });
const ENCODE_OPTIONS = optionNames<BatcherEncodeOptions>({ signal: true });

/** What a settled request keeps of its rows: nothing. */
const NO_ROWS = new Float32Array(0);

interface Request {
  /**
   * The request's rows: its own copy (a Tensor's download) while it waits, the caller's own x
   * (array or Tensor) when it starts at once, alone (the addon reads it before encode() returns);
   * NO_ROWS once encoded alone or settled, and while a Tensor downloads.
   */
  x: Float32Array | Tensor<'float32'>;
  rows: number;
  /** 'waiting': queued, or a Tensor still downloading (counted in pendingRows); 'taken': in a batch; 'done': settled. */
  state: 'waiting' | 'taken' | 'done';
  signal: AbortSignal | undefined;
  resolve: (c: SparseCodes) => void;
  /** Rejects with the error's copy that carries encode()'s caller's stack (atSiteLazily), not the batch's. */
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
  /** Most rows waiting for a batch (EncodeBatcherOptions.maxPendingRows); Infinity when unlimited. */
  readonly maxPendingRows: number;
  /** Requests in arrival order; a settled one (aborted) stays until a batch is taken past it. */
  #queue: Request[] = [];
  #pendingRows = 0;
  #running = false;
  #batches = 0;
  #disposed = false;
  /** Requests whose Tensor is being downloaded (not yet queued): dispose() rejects them too. */
  #downloading = new Set<Request>();
  /** The requests waiting on each signal, and the one abort listener added to it. */
  #watched = new Map<AbortSignal, { requests: Set<Request>; listener: () => void }>();

  constructor(sae: SparseAutoencoder, options?: EncodeBatcherOptions) {
    // A SparseAutoencoder itself: batches go to its native handle, not through its encode().
    if (!(sae instanceof SparseAutoencoder)) {
      throw argError('sae', 'a SparseAutoencoder', sae);
    }
    const o = checkOptions('options', options, BATCHER_OPTIONS);
    this.sae = sae;
    this.maxRows = o.maxRows === undefined ? 4096 : checkInt('options.maxRows', o.maxRows, 1, 1 << 24);
    this.batchInvariant = batchInvariantOption(o.batchInvariant, sae.device);
    this.maxPendingRows =
      o.maxPendingRows === undefined || o.maxPendingRows === Infinity
        ? Infinity
        : checkInt('options.maxPendingRows', o.maxPendingRows, 1, Number.MAX_SAFE_INTEGER);
  }

  /**
   * Successful encodes so far (for monitoring: requests / batches is the coalescing factor). A
   * request encoded alone counts as one when it succeeds, and so does each smaller batch that a
   * batch failed on particular rows is encoded again as.
   */
  get batches(): number {
    return this.#batches;
  }

  /**
   * Rows of the requests waiting for a batch: queued, or (a Tensor) still being downloaded. A
   * request's rows leave it when its batch starts or when it is aborted. Read-only.
   */
  get pendingRows(): number {
    return this.#pendingRows;
  }

  /**
   * Sparse codes of each row of x, encoded with whatever else is waiting. x is what sae.encode
   * takes: a Float32Array of rows x dIn values, or a float32 Tensor [rows, dIn] on any device;
   * the caller may reuse or dispose it as soon as this returns. A request that finds the batcher
   * idle is encoded at once by sae.encode (a Tensor read where it lies); one that waits holds a
   * copy (a Tensor is downloaded to the host, where batches are built).
   * Rejects with sae.encode's errors for x, with ERR_SAEKIT_MEMORY when it would wait past
   * options.maxPendingRows, with ERR_SAEKIT_DISPOSED once the batcher or the SAE is disposed, and
   * with options.signal's reason when that aborts first.
   * @example const codes = await batcher.encode(x, { signal: AbortSignal.timeout(500) });
   */
  encode(x: Rows, options?: BatcherEncodeOptions): Promise<SparseCodes> {
    const site = new Error();
    let signal: AbortSignal | undefined;
    let rows: number;
    try {
      signal = checkSignal('options.signal', checkOptions('options', options, ENCODE_OPTIONS).signal);
      if (this.#disposed) throw new SaekitError('ERR_SAEKIT_DISPOSED', 'this EncodeBatcher was disposed');
      if (this.sae.disposed) throw new SaekitError('ERR_SAEKIT_DISPOSED', 'the SparseAutoencoder of this batcher was disposed');
      rows = this.#rowsOf(x);
      signal?.throwIfAborted();
    } catch (err) {
      return Promise.reject(err);
    }
    // A request that finds the batcher idle starts now: it never waits, so it is never refused.
    const now = !this.#running;
    if (!now && this.#pendingRows + rows > this.maxPendingRows) {
      return Promise.reject(
        new SaekitError(
          'ERR_SAEKIT_MEMORY',
          `Expected at most options.maxPendingRows = ${this.maxPendingRows} rows waiting in this EncodeBatcher but this request (${rows} rows) would make ${this.#pendingRows + rows}; retry later, or raise options.maxPendingRows`,
        ),
      );
    }
    return new Promise<SparseCodes>((resolve, reject) => {
      const r: Request = {
        x: NO_ROWS,
        rows,
        state: 'waiting',
        signal,
        resolve: (c) => {
          if (this.#settle(r)) resolve(c);
        },
        reject: (e) => {
          if (this.#settle(r)) reject(atSiteLazily(e, site));
        },
      };
      this.#pendingRows += rows;
      if (signal) this.#watch(r, signal);
      if (now || x instanceof Float32Array) {
        // Starting now, it is encoded alone by sae.encode, which reads x (a Tensor where it lies)
        // before encode() returns. One that waits holds a copy: the caller may reuse x at once.
        r.x = now ? x : (x as Float32Array).slice();
        this.#enqueue(r);
      } else {
        // Queued once downloaded (behind requests that arrived meanwhile).
        this.#downloading.add(r);
        (x as Tensor<'float32'>).toArray().then(
          (a) => {
            this.#downloading.delete(r);
            if (r.state !== 'waiting') return; // aborted, or the batcher disposed, while downloading
            r.x = a;
            this.#enqueue(r);
          },
          (err: unknown) => {
            this.#downloading.delete(r);
            r.reject(err);
          },
        );
      }
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
    for (const r of this.#downloading) r.reject(err);
    this.#downloading.clear();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** Whether dispose() was called. */
  get disposed(): boolean {
    return this.#disposed;
  }

  /** The number of rows of x, checked as sae.encode checks them (its codes and words). */
  #rowsOf(x: unknown): number {
    const dIn = this.sae.dIn;
    if (x instanceof Float32Array) {
      if (x.length === 0 || x.length % dIn !== 0) {
        throw argError('x', `a non-empty Float32Array of rows x dIn = ${dIn} values`, x, 'ERR_SAEKIT_SHAPE');
      }
      return x.length / dIn;
    }
    if (x instanceof Tensor) {
      if (x.disposed) throw new SaekitError('ERR_SAEKIT_DISPOSED', 'x is a disposed Tensor; it cannot be used any more');
      if (x.dtype !== 'float32') throw new SaekitError('ERR_SAEKIT_DTYPE', `Expected a float32 tensor for x but received ${x.dtype}`);
      if (x.shape.length !== 2 || x.shape[1] !== dIn || x.shape[0]! < 1) {
        throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected a tensor of shape [rows >= 1, ${dIn}] for x but received shape [${x.shape.join(', ')}]`);
      }
      return x.shape[0]!;
    }
    throw arrayTypeError('x', `a Float32Array of rows x dIn = ${dIn} values or a float32 Tensor [rows, ${dIn}]`, x);
  }

  #enqueue(r: Request): void {
    this.#queue.push(r);
    if (!this.#running) void this.#run();
  }

  /** Marks r settled (false if it already was): its rows leave pendingRows and its signal forgets it. */
  #settle(r: Request): boolean {
    if (r.state === 'done') return false;
    if (r.state === 'waiting') this.#pendingRows -= r.rows;
    r.state = 'done';
    r.x = NO_ROWS;
    if (r.signal) {
      const w = this.#watched.get(r.signal);
      if (w) {
        w.requests.delete(r);
        if (w.requests.size === 0) {
          r.signal.removeEventListener('abort', w.listener);
          this.#watched.delete(r.signal);
        }
      }
    }
    return true;
  }

  /** One abort listener per signal, however many requests share it (Node warns past 10 listeners). */
  #watch(r: Request, signal: AbortSignal): void {
    let w = this.#watched.get(signal);
    if (!w) {
      const requests = new Set<Request>();
      const listener = (): void => {
        this.#watched.delete(signal);
        for (const q of requests) q.reject(signal.reason);
      };
      w = { requests, listener };
      this.#watched.set(signal, w);
      signal.addEventListener('abort', listener, { once: true });
    }
    w.requests.add(r);
  }

  async #run(): Promise<void> {
    this.#running = true;
    try {
      const q = this.#queue;
      while (q.length > 0) {
        if (this.sae.disposed) {
          // Checked once per batch: every waiting request fails now, without a batch built for each.
          const err = new SaekitError('ERR_SAEKIT_DISPOSED', 'the SparseAutoencoder of this batcher was disposed before the request was encoded');
          for (const r of q.splice(0)) r.reject(err);
          break;
        }
        // One splice per batch: shift() per request copies a long queue each time in V8 (100k
        // queued one-row requests took 4.8 s of JS, blocking the event loop for 0.4 s a batch).
        // Settled (aborted) requests are passed over.
        let n = 0;
        let rows = 0;
        for (; n < q.length; n++) {
          const r = q[n]!;
          if (r.state !== 'waiting') continue;
          if (rows > 0 && rows + r.rows > this.maxRows) break;
          rows += r.rows;
        }
        const take = q.splice(0, n).filter((r) => r.state === 'waiting');
        for (const r of take) r.state = 'taken';
        this.#pendingRows -= rows;
        if (take.length > 0) await this.#encodeBatch(take, rows);
      }
    } finally {
      this.#running = false;
    }
  }

  /** Encodes the requests `take` (rows in all) as one batch and settles each of them; never rejects. */
  async #encodeBatch(take: Request[], rows: number): Promise<void> {
    // One request: sae.encode's codes or error, exactly (an overflow costs no second encode).
    if (take.length === 1) return this.#alone(take[0]!);
    try {
      let codes: SparseCodes;
      try {
        const x = gather(take, rows, this.sae.dIn);
        // Rows whose pre-activations overflow float32 (finite inputs near its limit) keep their
        // infinite codes here instead of failing the batch: one encode serves every other request.
        codes = await encodeKeepingOverflow(this.sae, x, this.batchInvariant);
      } catch (err) {
        if (aboutRows(err) || (err instanceof SaekitError && err.code === 'ERR_SAEKIT_MEMORY')) return await this.#split(take, err);
        throw err;
      }
      this.#batches++;
      const { k, values, indices, numLatents } = codes;
      const jump = this.sae.architecture === 'jumprelu';
      const alone: Promise<void>[] = [];
      let row = 0;
      for (const r of take) {
        const first = row;
        row += r.rows;
        if (r.state === 'done') continue; // aborted while the batch ran
        if (overflows(values, first * k, row * k)) {
          // Encoded again on its own, so it rejects with the error sae.encode gives its rows alone
          // (naming its own row, not the batch's).
          alone.push(this.#alone(r));
          continue;
        }
        let kr = k;
        if (jump) {
          // The request's own padding: its largest number of active (positive) latents, at least 1.
          kr = 1;
          for (let n = first; n < row; n++) {
            let c = 0;
            while (c < k && values[n * k + c]! > 0) c++;
            kr = Math.max(kr, c);
          }
        }
        const v = new Float32Array(r.rows * kr);
        const ix = new Int32Array(r.rows * kr);
        for (let n = 0; n < r.rows; n++) {
          v.set(values.subarray((first + n) * k, (first + n) * k + kr), n * kr);
          ix.set(indices.subarray((first + n) * k, (first + n) * k + kr), n * kr);
        }
        r.resolve({ rows: r.rows, numLatents, k: kr, values: v, indices: ix });
      }
      await Promise.all(alone);
    } catch (err) {
      // Every taken request settles (one already resolved keeps its codes).
      for (const r of take) r.reject(err);
    }
  }

  /**
   * After the encode of several requests failed on particular rows (`err`): the requests holding
   * a NaN or an infinity (when that is the error) are encoded alone and the others again as one
   * batch; for any other such error, each half of the batch is encoded again (a single request:
   * alone), so only the requests at fault reject, with sae.encode's own error.
   */
  async #split(take: Request[], err: SaekitError): Promise<void> {
    const live = take.filter((r) => r.state !== 'done');
    const bad = err.code === 'ERR_SAEKIT_NONFINITE' ? new Set(live.filter((r) => !allFinite(r.x as Float32Array))) : new Set<Request>();
    const parts: Request[][] = [];
    if (bad.size > 0) {
      // The good requests' batch first: the requests at fault queue behind it.
      const good = live.filter((r) => !bad.has(r));
      if (good.length > 0) parts.push(good);
      parts.push(...[...bad].map((r) => [r]));
    } else if (live.length > 0) {
      const h = Math.ceil(live.length / 2);
      parts.push(live.slice(0, h));
      if (h < live.length) parts.push(live.slice(h));
    }
    await Promise.all(parts.map((p) => (p.length === 1 ? this.#alone(p[0]!) : this.#encodeBatch(p, p.reduce((s, r) => s + r.rows, 0)))));
  }

  /** r encoded on its own with sae.encode, which settles it with its codes or its own error. */
  #alone(r: Request): Promise<void> {
    if (r.state === 'done') return Promise.resolve();
    const x = r.x;
    r.x = NO_ROWS; // the addon has read (copied) x once sae.encode returns
    let encoding: Promise<SparseCodes>;
    try {
      encoding = this.sae.encode(x, this.batchInvariant ? { batchInvariant: true } : undefined);
    } catch (err) {
      r.reject(err); // (sae.encode rejects; a throw must still settle the request)
      return Promise.resolve();
    }
    return encoding.then((c) => {
      this.#batches++;
      r.resolve(c);
    }, r.reject);
  }
}

/** The rows of `take` (rows in all) as one batch; ERR_SAEKIT_MEMORY when it cannot be allocated. */
function gather(take: Request[], rows: number, dIn: number): Float32Array {
  let x: Float32Array;
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
    x.set(r.x as Float32Array, at); // a request in a batch of several always holds an array
    at += r.rows * dIn;
  }
  return x;
}

/**
 * Whether an encode's error is about particular rows of x, so that other requests of the batch
 * would encode: a NaN or an infinity in x (ERR_SAEKIT_NONFINITE; an overflow is kept, not
 * thrown, by encodeKeepingOverflow) or a row that does not fit (ERR_SAEKIT_SHAPE: a JumpReLU row
 * wider than a CUDA device keeps). ERR_SAEKIT_MEMORY splits a batch too (#encodeBatch): one JumpReLU
 * row that activates very many latents pads the whole batch to its width. Others (a disposed SAE,
 * a device failure) are the batch's.
 */
function aboutRows(err: unknown): err is SaekitError {
  return err instanceof SaekitError && (err.code === 'ERR_SAEKIT_NONFINITE' || err.code === 'ERR_SAEKIT_SHAPE');
}

/** Whether every value of x is finite (only after a batch failed on a non-finite value). */
function allFinite(x: Float32Array): boolean {
  for (let i = 0; i < x.length; i++) if (!Number.isFinite(x[i]!)) return false;
  return true;
}

/**
 * atSite(err, site) with the stack formatted only when it is read: one error shared by the 40k
 * requests still waiting when the SAE is disposed took 2 s to reject them, ~50 us a request
 * formatting a stack that callers mostly never read (Node's own errors defer it the same way).
 */
function atSiteLazily(err: unknown, site: Error): unknown {
  if (!(err instanceof SaekitError)) return err;
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0; // the stack is site's: capture none here
  let out: SaekitError;
  try {
    out = new SaekitError(err.code, err.message);
  } finally {
    Error.stackTraceLimit = limit;
  }
  if (err.row !== undefined) (out as { row?: number }).row = err.row;
  let stack: string | undefined;
  Object.defineProperty(out, 'stack', {
    configurable: true,
    enumerable: false,
    get: () => (stack ??= (atSite(err, site) as Error).stack),
    set: (v: string) => {
      stack = v;
    },
  });
  return out;
}

/** Whether values[from, to) holds a non-finite code (a row whose pre-activations overflow float32). */
function overflows(values: Float32Array, from: number, to: number): boolean {
  for (let j = from; j < to; j++) if (!Number.isFinite(values[j]!)) return true;
  return false;
}
