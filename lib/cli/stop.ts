/** SIGINT (Ctrl-C) and SIGTERM as an AbortSignal for the CLI's commands (train, demo, eval, compare, match-layers). */

/** The signals that stop a run, and their exit codes (128 + the signal's number). */
export const STOP_SIGNALS = { SIGINT: 130, SIGTERM: 143 } as const;

/**
 * Ctrl-C (SIGINT) or SIGTERM (job schedulers, `timeout`, `docker stop`) aborts the returned
 * signal, saying on stderr that the command is stopping `when` ('after the current step' for
 * train); a second signal of either kind exits at once. `exitCode` is 128 + the number of the
 * first signal (130 or 143), undefined before one came. dispose() removes the handlers.
 */
export function abortOnSignal(when?: string): { signal: AbortSignal; readonly exitCode: number | undefined; dispose(): void } {
  const ctrl = new AbortController();
  let exitCode: number | undefined;
  const stopping = when ? `stopping ${when}` : 'stopping';
  const handlers = Object.entries(STOP_SIGNALS).map(([name, code]) => {
    const onSig = () => {
      if (ctrl.signal.aborted) process.exit(code);
      exitCode = code;
      process.stderr.write(
        name === 'SIGINT'
          ? `\nsaekit: ${stopping} (Ctrl-C again to quit now)...\n`
          : `\nsaekit: ${name} received: ${stopping} (a second ${name} or Ctrl-C quits now)...\n`,
      );
      ctrl.abort();
    };
    process.on(name, onSig);
    return [name, onSig] as const;
  });
  return {
    signal: ctrl.signal,
    get exitCode() {
      return exitCode;
    },
    dispose: () => {
      for (const [name, onSig] of handlers) process.off(name, onSig);
    },
  };
}

/**
 * Runs a command that takes an AbortSignal (eval, compare, match-layers) with abortOnSignal():
 * when SIGINT or SIGTERM stopped it (the work rejected with the signal's reason), it says so in
 * one line on stderr and sets the exit code to 130 or 143, instead of failing with a stack trace.
 */
export async function stoppable(work: (signal: AbortSignal) => Promise<void>): Promise<void> {
  const sig = abortOnSignal();
  try {
    await work(sig.signal);
    // The signal came during the last step (writing --out, printing): the results stand.
    if (sig.signal.aborted) {
      process.stderr.write('saekit: stopped after the results were written\n');
      process.exitCode = sig.exitCode ?? STOP_SIGNALS.SIGINT;
    }
  } catch (err) {
    if (sig.signal.aborted && err === sig.signal.reason) {
      process.stderr.write('saekit: stopped; no results were written\n');
      process.exitCode = sig.exitCode ?? STOP_SIGNALS.SIGINT;
      return;
    }
    throw err;
  } finally {
    sig.dispose();
  }
}
