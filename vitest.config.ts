import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // Native addons are only safe in forked workers (a crash must not take the runner down).
    pool: 'forks',
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Timing-sensitive tests (event-loop responsiveness) need the machine's cores to themselves.
    fileParallelism: false,
  },
});
