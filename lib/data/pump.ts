/**
 * Runs a batch producer ahead of its consumer: the producer fills a small queue of ready batches
 * (reads and conversions overlap whatever the consumer does between next() calls) and waits when
 * the queue is full. Stopping (return() or the source's close()) makes the producer's next emit
 * throw StopSignal, so it unwinds through its finally blocks and waits for its reads.
 */
import { due, pause } from '../slices.js';
import type { Batch } from './types.js';

/** Thrown into a producer by emit() once the consumer has stopped. */
export class StopSignal extends Error {
  constructor() {
    super('iteration stopped');
  }
}

export type Emit = (batch: Batch) => Promise<void>;

export class Pump implements AsyncIterableIterator<Batch> {
  private readonly queue: Batch[] = [];
  private readonly consumers: (() => void)[] = [];
  private wakeProducer: (() => void) | null = null;
  private running: Promise<void> | null = null;
  private finished = false;
  private failure: { error: unknown } | null = null;
  private stopped = false;
  /** The consumer has seen the end (done, or the error), or called return(). */
  private over = false;
  /**
   * The batch the consumer holds (returned by the last next()), handed back on the next call;
   * dropped (not handed back: the consumer may still read it) by return() and stop(), so an
   * ended pass keeps no batch array alive.
   */
  private held: Batch | null = null;

  constructor(
    private readonly produce: (emit: Emit) => Promise<void>,
    private readonly capacity: number,
    /** The producer has finished (or was stopped before it started). */
    private readonly onDone: () => void,
    private readonly release: (batch: Batch) => void = () => undefined,
    /** Called when stopping begins, before waiting for the producer (it may unblock it). */
    private readonly onStop: () => void = () => undefined,
    /** The producer starts (the first next()). */
    private readonly onStart: () => void = () => undefined,
    /** The consumer is done with this pass: it saw the end or the error, or called return(). Called once. */
    private readonly onOver: () => void = () => undefined,
  ) {}

  private end(): void {
    if (this.over) return;
    this.over = true;
    this.onOver();
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  private start(): void {
    this.onStart();
    this.running = (async () => {
      try {
        await this.produce((b) => this.put(b));
      } catch (err) {
        if (!(err instanceof StopSignal) && !this.failure) this.failure = { error: err };
      } finally {
        this.finished = true;
        this.wake();
        this.onDone();
      }
    })();
  }

  private wake(): void {
    for (const w of this.consumers.splice(0)) w();
  }

  private async put(batch: Batch): Promise<void> {
    if (this.stopped) throw new StopSignal();
    this.queue.push(batch);
    this.wake();
    // A source that fills batches without the event loop (an array, a consumer that awaits
    // nothing else) would otherwise run a whole pass in microtasks, starving timers and I/O:
    // every ~20 ms of work, one turn of the loop.
    if (due(batch.rows * batch.dIn)) await pause();
    while (this.queue.length >= this.capacity && !this.stopped) await new Promise<void>((r) => (this.wakeProducer = r));
    if (this.stopped) throw new StopSignal();
  }

  async next(): Promise<IteratorResult<Batch, undefined>> {
    if (this.held) {
      this.release(this.held);
      this.held = null;
    }
    if (!this.running && !this.stopped) this.start();
    for (;;) {
      if (this.queue.length > 0) {
        const value = this.queue.shift()!;
        const w = this.wakeProducer;
        this.wakeProducer = null;
        w?.();
        this.held = value;
        return { value, done: false };
      }
      if (this.failure) {
        const { error } = this.failure;
        this.failure = { error: undefined };
        this.stopped = true;
        this.end();
        if (error !== undefined) throw error;
        return { value: undefined, done: true };
      }
      if (this.finished || this.stopped) {
        this.end();
        return { value: undefined, done: true };
      }
      await new Promise<void>((r) => this.consumers.push(r));
    }
  }

  async return(): Promise<IteratorResult<Batch, undefined>> {
    this.end();
    await this.stop();
    return { value: undefined, done: true };
  }

  /**
   * Stops the producer and waits until it has unwound. `reason` is thrown by the next next() if
   * the consumer has not seen the end yet, even when the producer had already finished and only
   * queued batches were left (they are dropped).
   */
  async stop(reason?: Error): Promise<void> {
    if (reason && !this.over && !this.failure) this.failure = { error: reason };
    this.stopped = true;
    this.queue.length = 0;
    this.held = null;
    this.onStop();
    const w = this.wakeProducer;
    this.wakeProducer = null;
    w?.();
    this.wake();
    if (this.running) await this.running;
    else if (!this.finished) {
      this.finished = true;
      this.onDone();
    }
  }
}
