/** The three kinds of ActivationSource: files, an in-memory array, an async iterable. */
import { argError, arrayTypeError, SaekitError } from '../errors.js';
import { CHECK_UNITS, due, pause } from '../slices.js';
import { checkInt, checkOneOf, checkOptions, optionNames } from '../validate.js';
import { DISK_DTYPES, type SkipCounter } from './convert.js';
import { BATCH_ARRAYS, BatchPool, MixingMemory, mixingHalf, RELEASE_BATCH, sequentialEpoch, shuffleEpoch, type BatchArrays, type MixingDType } from './engine.js';
import { HandleCache } from './files.js';
import { beginPass, endPass } from './memory.js';
import { NON_FINITE, resolveBatchOptions, type NonFinitePolicy, type ResolvedBatchOptions } from './options.js';
import { ArrayRowStream, ChunkPlan, FileRowStream, IterableRowStream, type RowStream } from './rows.js';
import { Rng } from './prng.js';
import { Pump, StopSignal, type Emit } from './pump.js';
import { openShards, resolveShardPaths, type Shard } from './shards.js';
import type { Batch, BatchOptions, OpenOptions, OwnedActivationSource } from './types.js';

/** PRNG stream tags: (seed, epoch, tag). */
const CHUNK_ORDER = 1;
const BUFFER_DRAW = 2;
/** Positioned reads (of at most 4 MiB) in flight per pass: with the gather jobs, enough to keep the I/O threads (one per core) of a 2-core machine busy. */
const READS_IN_FLIGHT = 3;

/** Ready batches a pump keeps ahead of its consumer: 1 (plus the one being read), more for small batches. */
function pumpCapacity(o: ResolvedBatchOptions, dIn: number): number {
  return Math.max(1, Math.min(64, Math.ceil((4 * 1024 * 1024) / (o.batchSize * dIn * 4))));
}

function disposed(): SaekitError {
  return new SaekitError('ERR_SAEKIT_DISPOSED', 'Expected an open activation source but it has been closed');
}

/**
 * A pass as its source tracks it: weakly, so that one its consumer dropped unfinished (next()
 * called by hand, then neither the end nor return()) is collected with the batches it read ahead.
 */
interface PassRef {
  readonly pump: WeakRef<Pump>;
}

/**
 * What stopping a pass reaches: the epoch's stream (aborted, for one stalled on its input) and
 * the flag run() checks before it opens the next epoch's stream (a stop that comes between two
 * epochs finds only the ended stream to abort).
 */
interface PassState {
  stream?: RowStream;
  stopping?: boolean;
}

/**
 * A pass's end as its bookkeeping sees it (done once: by the producer's end, a stop, or the pass's
 * collection). It reaches the pass's pool only weakly: the pool holds BATCH_ARRAYS's `alloc`,
 * which may close over the consumer's iterator (the Trainer's does), that is, over the pass.
 */
interface PassEnd {
  readonly ref: PassRef;
  readonly passNo: number;
  readonly pool: WeakRef<BatchPool>;
  ended: boolean;
}

/**
 * Ends the bookkeeping of passes collected unfinished (see PassRef). A held value must not reach
 * its pass (or the pass is never collected): it is made by BaseSource.onDropped, outside the
 * scope of batches()'s closures, and holds only the source and a PassEnd.
 */
const droppedPasses = new FinalizationRegistry<() => void>((cleanup) => cleanup());

abstract class BaseSource implements OwnedActivationSource {
  protected readonly counter: SkipCounter = { skippedRows: 0 };
  /** Passes whose consumer has not finished with them (close() stops these). */
  private readonly active = new Set<PassRef>();
  /** Passes whose producer is running (files stay open while there are any). */
  private readonly producing = new Set<PassRef>();
  private closing: Promise<void> | null = null;
  private closed = false;

  constructor(
    readonly dIn: number,
    readonly numRows: number | undefined,
    protected readonly policy: NonFinitePolicy,
  ) {}

  get skippedRows(): number {
    return this.counter.skippedRows;
  }

  batches(options?: BatchOptions): AsyncIterable<Batch> {
    if (this.closed) throw disposed();
    const o = resolveBatchOptions(options, this.dIn, this.policy);
    // The internal BATCH_ARRAYS option (engine.ts): the consumer hands recycled batches back itself.
    const arrays = o.recycle ? (options as { [BATCH_ARRAYS]?: BatchArrays } | undefined)?.[BATCH_ARRAYS] : undefined;
    return {
      [Symbol.asyncIterator]: () => {
        if (this.closed) throw disposed();
        const passNo = beginPass();
        const pool = new BatchPool(o.batchSize * this.dIn, o.recycle, arrays?.alloc?.bind(arrays));
        const releasable = (emit: Emit): Emit =>
          arrays
            ? (b) => {
                let given = false;
                const release = (): void => {
                  if (given) return;
                  given = true;
                  pool.give(b.data);
                };
                return emit(Object.assign(b, { [RELEASE_BATCH]: release }));
              }
            : emit;
        const current: PassState = {};
        const pump: Pump = new Pump(
          (emit) => this.run(o, pool, releasable(emit), current),
          pumpCapacity(o, this.dIn),
          () => this.passEnded(end),
          arrays ? () => undefined : (b) => pool.give(b.data),
          () => {
            current.stopping = true;
            current.stream?.abort?.();
          },
          () => this.producing.add(ref),
          () => this.active.delete(ref),
        );
        const ref: PassRef = { pump: new WeakRef(pump) };
        const end: PassEnd = { ref, passNo, pool: new WeakRef(pool), ended: false };
        this.active.add(ref);
        // Holds the source (not the pass) until the pass is collected.
        droppedPasses.register(pump, this.onDropped(end));
        return pump;
      },
    };
  }

  /** The cleanup of a pass collected unfinished: in its own scope, which holds nothing of the pass (see droppedPasses). */
  private onDropped(end: PassEnd): () => void {
    return () => {
      this.active.delete(end.ref);
      this.passEnded(end);
    };
  }

  /** The producer finished or was stopped, or the pass was collected unfinished: once. */
  private passEnded(end: PassEnd): void {
    if (end.ended) return;
    end.ended = true;
    // A pass collected unfinished may have taken its pool with it (and its arrays are collected too).
    end.pool.deref()?.close();
    endPass(end.passNo);
    // Files stay open only while a pass reads (a source left unclosed leaks nothing).
    if (this.producing.delete(end.ref) && this.producing.size === 0) void this.release().catch(() => undefined);
  }

  /** The rows of epoch `epoch`: in file order, or (shuffled) with the chunk order permuted by (seed, epoch). */
  protected abstract open(o: ResolvedBatchOptions, epoch: number, shuffled: boolean): RowStream;

  /** What the mixing buffer stores (the stream must accept it in fill()). */
  protected mixingDType(): MixingDType {
    return 'float32';
  }

  /** Called after each epoch's stream is closed. */
  protected afterEpoch(_epoch: number, _stream: RowStream): void {}

  private async run(o: ResolvedBatchOptions, pool: BatchPool, emit: Emit, current: PassState): Promise<void> {
    const pass = { dIn: this.dIn, batchSize: o.batchSize, dropLast: o.dropLast, pool };
    const mem = o.shuffle ? new MixingMemory(this.dIn, mixingHalf(o.bufferRows, this.numRows), this.mixingDType()) : null;
    let emitted = 0;
    const counted: Emit = (b) => {
      emitted++;
      return emit(b);
    };
    for (let e = 0; e < o.epochs; e++) {
      // An epoch of a finite source that gave no batch (every row skipped as non-finite, or fewer
      // left than a batch with dropLast) is followed by more of the same: each epoch holds the same
      // rows. Stop instead of reading them all (a Trainer plans about totalTokens / rows passes).
      if (e > 0 && emitted === 0 && this.numRows !== undefined) break;
      // Stopped between epochs (while the last stream closed): no next epoch, whose first read
      // could wait forever on a stalled iterable with no emit to notice the stop.
      if (current.stopping) throw new StopSignal();
      const stream = this.open(o, e, o.shuffle);
      current.stream = stream;
      try {
        // open() runs the iterable's [Symbol.asyncIterator](), which may have stopped the pass.
        if (current.stopping) throw new StopSignal();
        emitted = 0;
        if (mem) await shuffleEpoch(stream, pass, mem, new Rng(o.seed, e, BUFFER_DRAW), counted);
        else await sequentialEpoch(stream, pass, counted);
      } finally {
        await stream.close();
      }
      this.afterEpoch(e, stream);
      // An epoch that gave no batch reached no emit, the pass's only turn of the event loop: a
      // stream whose reads resolve at once would run epoch after epoch without one (close() and
      // timers waiting all the while). Each such epoch counts as a look at the clock.
      if (emitted === 0 && due(CHECK_UNITS)) await pause();
    }
    mem?.release();
  }

  /** Closes what the source holds open (its files); called when no pass is running. */
  protected async release(): Promise<void> {}

  close(): Promise<void> {
    // A second call (close() and then `await using`) waits for the first to finish.
    this.closing ??= (async () => {
      this.closed = true;
      // Passes still reading too: a pass whose consumer called return() has left `active` but may
      // not have unwound yet, and its reads use the files release() closes.
      const passes = [...new Set([...this.active, ...this.producing])].map((r) => r.pump.deref());
      await Promise.all(passes.map((p) => p?.stop(disposed())));
      await this.release();
    })();
    return this.closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** Shards read with positioned reads. */
class FileSource extends BaseSource {
  private readonly handles = new HandleCache();

  constructor(
    readonly shards: readonly Shard[],
    dIn: number,
    policy: NonFinitePolicy,
  ) {
    super(
      dIn,
      shards.reduce((a, s) => a + s.rows, 0),
      policy,
    );
  }

  /** 16-bit files that all share one dtype (and are read natively) are mixed as 16-bit rows. */
  protected override mixingDType(): MixingDType {
    const t = this.shards[0]!.dtype;
    const same = this.shards.every((s) => s.dtype === t && !s.fortran && !s.bigEndian);
    return same && (t === 'bfloat16' || t === 'float16') ? t : 'float32';
  }

  /** The files read, in order. */
  get files(): string[] {
    return this.shards.map((s) => s.path);
  }

  protected open(o: ResolvedBatchOptions, epoch: number, shuffled: boolean): RowStream {
    const plan = new ChunkPlan(
      this.shards.map((s) => s.rows),
      o.chunkRows,
    );
    const order = plan.order(shuffled ? new Rng(o.seed, epoch, CHUNK_ORDER) : null);
    const ctx = { shards: this.shards, dIn: this.dIn, handles: this.handles, policy: o.onNonFinite, counter: this.counter };
    return new FileRowStream(ctx, plan, order, READS_IN_FLIGHT);
  }

  protected override async release(): Promise<void> {
    await this.handles.closeAll();
  }
}

class ArraySource extends BaseSource {
  constructor(
    private readonly data: Float32Array,
    dIn: number,
  ) {
    super(dIn, data.length / dIn, 'error');
  }

  protected open(o: ResolvedBatchOptions, epoch: number, shuffled: boolean): RowStream {
    const plan = new ChunkPlan([this.numRows!], o.chunkRows);
    const order = plan.order(shuffled ? new Rng(o.seed, epoch, CHUNK_ORDER) : null);
    return new ArrayRowStream(this.data, this.dIn, plan, order, o.onNonFinite, this.counter, this.numRows! * this.dIn);
  }
}

class IterableSource extends BaseSource {
  private firstRows = 0;
  /** Iterators earlier passes took (a generator returns itself each time: it can serve one pass). */
  private readonly taken = new WeakSet<object>();
  /** Streams over such an iterator (an object that says it started over: checked in afterEpoch). */
  private readonly reusedStreams = new WeakSet<RowStream>();

  constructor(
    private readonly iterable: AsyncIterable<Float32Array | Batch>,
    dIn: number,
  ) {
    super(dIn, undefined, 'error');
  }

  protected open(o: ResolvedBatchOptions): RowStream {
    let it: AsyncIterator<Float32Array | Batch>;
    try {
      it = this.iterable[Symbol.asyncIterator]();
    } catch (err) {
      throw new SaekitError('ERR_SAEKIT_ARG', `Expected an async iterable but [Symbol.asyncIterator]() threw: ${err instanceof Error ? err.message : String(err)}`);
    }
    // The protocol (as for await checks it): an object with a next() method.
    if (it === null || (typeof it !== 'object' && typeof it !== 'function') || typeof (it as { next?: unknown }).next !== 'function') {
      throw argError("the result of the iterable's [Symbol.asyncIterator]()", 'an async iterator (an object with a next() method)', it);
    }
    // An iterator an earlier pass or epoch used: an async generator's is spent (it yields nothing
    // again); another object's may have started over (a class whose [Symbol.asyncIterator]()
    // resets it and returns `this`), which afterEpoch checks by the rows it yields.
    const reused = this.taken.has(it);
    if (reused && Object.prototype.toString.call(it) === '[object AsyncGenerator]') {
      throw new SaekitError(
        'ERR_SAEKIT_ARG',
        'Expected the iterable to start a new pass but it returned the iterator an earlier pass (or epoch) used: a generator can be iterated once ' +
          '(pass an object whose [Symbol.asyncIterator]() starts a new pass, or make a new source for each pass)',
      );
    }
    this.taken.add(it);
    const stream = new IterableRowStream(it, this.dIn, o.onNonFinite, this.counter);
    if (reused) this.reusedStreams.add(stream);
    return stream;
  }

  protected override afterEpoch(epoch: number, stream: RowStream): void {
    const seen = (stream as IterableRowStream).rowsSeen;
    // Nothing from an iterator that served rows before (an earlier epoch of this pass, or an
    // earlier pass's first epoch): it did not start over.
    if (seen === 0 && this.firstRows > 0 && (epoch > 0 || this.reusedStreams.has(stream))) {
      throw new SaekitError(
        'ERR_SAEKIT_ARG',
        `Expected the iterable to start over for ${epoch > 0 ? `epoch ${epoch}` : 'a new pass'} but it yielded nothing (a generator can be iterated once: ` +
          'pass an object whose [Symbol.asyncIterator]() starts a new pass, or use epochs: 1)',
      );
    }
    if (epoch === 0) this.firstRows = seen;
  }
}

/** Option names (checkOptions refuses others: a misspelling is an error, not ignored). */
const OPEN_OPTIONS = optionNames<OpenOptions>({ tensor: true, dtype: true, dIn: true, onNonFinite: true });

/**
 * Opens activation files for streaming: a .npy (2-D [rows, dIn], or N-D with leading dimensions
 * flattened; C or 2-D Fortran order), a .safetensors (options.tensor, or the only 2-D tensor, or where there is none the only
 * one of more dimensions, its leading ones flattened),
 * a raw file (.bin/.raw/.dat with options.dtype, or .f32/.f16/.bf16/.f64; options.dIn), a folder
 * of such files, a glob pattern of files (*, ?, **; not one ending in '/', which would match
 * folders), or an array of these. Files are read in path order and must agree on dIn; only
 * headers are read here.
 */
export async function openActivations(pathOrPaths: string | string[], options?: OpenOptions): Promise<OwnedActivationSource> {
  const o = checkOptions('options', options, OPEN_OPTIONS);
  if (o.tensor !== undefined && (typeof o.tensor !== 'string' || o.tensor.length === 0)) throw argError('options.tensor', 'a non-empty string', o.tensor);
  const dtype = o.dtype === undefined ? undefined : checkOneOf('options.dtype', o.dtype, DISK_DTYPES);
  const dIn = o.dIn === undefined ? undefined : checkInt('options.dIn', o.dIn, 1, 1 << 24);
  const policy = o.onNonFinite === undefined ? 'error' : checkOneOf('options.onNonFinite', o.onNonFinite, NON_FINITE);
  const shardOpts = { tensor: o.tensor, dtype, dIn };
  const files = await resolveShardPaths(pathOrPaths, shardOpts);
  if (o.tensor !== undefined && !files.some((f) => f.toLowerCase().endsWith('.safetensors'))) {
    throw new SaekitError(
      'ERR_SAEKIT_ARG',
      `Expected options.tensor only with .safetensors files (it names the tensor to read) but none of the ${files.length} file(s) is one (${files[0]}${files.length > 1 ? ', ...' : ''})`,
    );
  }
  const shards = await openShards(files, shardOpts);
  return new FileSource(shards, shards[0]!.dIn, policy);
}

/** A source over rows already in memory (data is read, never modified; batches are copies). */
export function fromArray(data: Float32Array, dIn: number): OwnedActivationSource {
  if (!(data instanceof Float32Array)) throw arrayTypeError('data', 'a Float32Array', data);
  checkInt('dIn', dIn, 1, 1 << 24);
  if (data.length % dIn !== 0) {
    throw new SaekitError('ERR_SAEKIT_SHAPE', `Expected data to hold whole rows of dIn = ${dIn} values but its length ${data.length} is not a multiple of ${dIn}`);
  }
  return new ArraySource(data, dIn);
}

/**
 * A source over a stream of Float32Array (whole rows) or Batch items, e.g. activations computed
 * on the fly. numRows is undefined. Each epoch calls [Symbol.asyncIterator]() again, which must
 * start over: return a new iterator, or reset the object and return it (an async generator, which
 * returns itself spent, serves one pass; a second is ERR_SAEKIT_ARG, as is an iterator that served
 * rows before and yields none). An item is requested only after the previous one has been copied,
 * so a producer may reuse its arrays.
 */
export function fromAsyncIterable(iterable: AsyncIterable<Float32Array | Batch>, dIn: number): OwnedActivationSource {
  if (iterable === null || typeof iterable !== 'object' || typeof (iterable as { [Symbol.asyncIterator]?: unknown })[Symbol.asyncIterator] !== 'function') {
    throw argError('iterable', 'an async iterable', iterable);
  }
  checkInt('dIn', dIn, 1, 1 << 24);
  return new IterableSource(iterable, dIn);
}
