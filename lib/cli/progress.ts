/** Progress output for long CLI jobs: a redrawn line on a TTY, periodic plain lines otherwise (stderr). */
import type { StepLog } from '../train/index.js';

function duration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '--:--';
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = Math.floor(s % 60);
  return h ? `${h}:${String(m).padStart(2, '0')}:${String(sec).padStart(2, '0')}` : `${m}:${String(sec).padStart(2, '0')}`;
}

function count(n: number): string {
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)}G` : n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : String(n);
}

export class Progress {
  private lastPrint = 0;
  /** The latest step, drawn by done() if the throttle skipped it. */
  private last: StepLog | undefined;
  private lastDrawn: StepLog | undefined;
  private first: { tokens: number; time: number } | undefined;
  constructor(
    private readonly totalTokens: number,
    private readonly stream: NodeJS.WriteStream = process.stderr,
    private readonly intervalMs = stream.isTTY ? 200 : 10_000,
  ) {}

  update(s: StepLog, force = false): void {
    const now = performance.now();
    // Rates count from the first step seen (a resumed run starts at its checkpoint's tokens).
    this.first ??= { tokens: s.tokens, time: now };
    this.last = s;
    if (!force && now - this.lastPrint < this.intervalMs) return;
    this.lastPrint = now;
    this.lastDrawn = s;
    const elapsed = (now - this.first.time) / 1e3;
    const rate = elapsed > 0 ? (s.tokens - this.first.tokens) / elapsed : s.tokensPerSec;
    const frac = Math.min(1, s.tokens / this.totalTokens);
    const eta = (this.totalTokens - s.tokens) / Math.max(rate, 1e-9);
    const stats = `${count(s.tokens)}/${count(this.totalTokens)} tok  ${count(rate)} tok/s  ETA ${duration(eta)}  fvu ${s.fvu.toFixed(4)}  L0 ${s.l0.toFixed(1)}  dead ${(100 * s.deadFraction).toFixed(1)}%`;
    if (this.stream.isTTY) {
      const width = 24;
      const filled = Math.round(frac * width);
      this.stream.write(`\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(100 * frac).toFixed(1).padStart(5)}%  ${stats}\u001b[K`);
    } else {
      this.stream.write(`step ${s.step}  ${(100 * frac).toFixed(1)}%  ${stats}\n`);
    }
  }

  done(): void {
    if (this.stream.isTTY) {
      // The bar ends on the last step (the throttle may have skipped its redraw).
      if (this.last && this.last !== this.lastDrawn) this.update(this.last, true);
      this.stream.write('\n');
    }
  }
}

/** Says how many rows --on-non-finite skip dropped, if any (stderr). */
export function reportSkipped(...sources: { skippedRows?: number }[]): void {
  const n = sources.reduce((a, s) => a + (s.skippedRows ?? 0), 0);
  if (n > 0) process.stderr.write(`saekit: skipped ${n.toLocaleString('en-US')} row${n === 1 ? '' : 's'} holding NaN or Inf (counted each time read: every epoch, and rows read ahead)\n`);
}

/** Progress of a pass over tokens without training statistics (eval, compare): the same line format. */
export class TokenProgress {
  /** Whether a line was drawn since the start or the last done(). */
  private drawn = false;
  /** The tokens and passes of the last update(), while the throttle kept it from being drawn. */
  private last: [number, number] | undefined;
  private readonly start = performance.now();
  /** When the line was last drawn: the first is drawn intervalMs after the start (a short job prints none). */
  private lastPrint = this.start;
  constructor(
    private readonly label: string,
    /** Tokens of one pass. */
    private readonly totalTokens: number | undefined,
    private readonly stream: NodeJS.WriteStream = process.stderr,
    private readonly intervalMs = stream.isTTY ? 200 : 10_000,
  ) {}

  /**
   * `tokens` read so far, over every pass when the job reads its source `passes` times (a dense
   * correlation wider than --max-bytes): the total is then totalTokens × passes.
   */
  update(tokens: number, passes = 1): void {
    const now = performance.now();
    if (now - this.lastPrint < this.intervalMs) {
      this.last = [tokens, passes];
      return;
    }
    this.last = undefined;
    this.print(now, tokens, passes);
  }

  private print(now: number, tokens: number, passes: number): void {
    this.lastPrint = now;
    this.drawn = true;
    const elapsed = (now - this.start) / 1e3;
    const rate = elapsed > 0 ? tokens / elapsed : 0;
    const total = this.totalTokens !== undefined && Number.isFinite(this.totalTokens) ? this.totalTokens * passes : undefined;
    const eta = total !== undefined ? `  ETA ${duration((total - tokens) / Math.max(rate, 1e-9))}` : '';
    const stats = `${this.label}: ${count(tokens)}${total !== undefined ? `/${count(total)}` : ''} tok  ${count(rate)} tok/s${eta}${passes > 1 ? `  (${passes} passes)` : ''}`;
    this.stream.write(this.stream.isTTY ? `\r${stats}\u001b[K` : `${stats}\n`);
  }

  /** Ends the progress line: on a terminal it is first redrawn with the last count if the throttle (one draw every 200 ms) skipped it. */
  done(): void {
    if (this.stream.isTTY && this.drawn) {
      if (this.last) this.print(performance.now(), ...this.last);
      this.stream.write('\n');
    }
    this.drawn = false; // a second done() (after a later message) ends no line
    this.last = undefined;
  }
}
