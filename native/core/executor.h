// The backend executor: one process-wide thread that runs queued ops in FIFO order. JS threads
// (the main thread and every worker_thread) only validate and enqueue; the executor runs each
// op, which may fan out over the backend's thread pool. FIFO order is what makes "create a
// tensor, then read it" correct without any other synchronisation.
#pragma once
#include <cstdint>
#include <functional>

namespace sk {

// Queues `task` to run on the executor thread. Tasks must not throw (wrap them).
void executor_submit(std::function<void()> task);
// Counters for diagnostics: tasks queued so far and tasks finished so far.
struct ExecutorStats {
  uint64_t submitted;
  uint64_t completed;
};
ExecutorStats executor_stats();
// The status the process is exiting with, as the runtime reported it (process 'exit' event): used
// if an op is still running at exit and the exit has to cut it short (see executor.cpp).
void executor_note_exit_code(int code);
// Keeps the addon loaded for the life of the process (RTLD_NODELETE; idempotent). Node dlcloses an
// addon when the last environment that loaded it ends (a worker, when the main thread never
// loaded saekit), which would unmap the code of threads that outlive every env: the executor,
// the I/O pool (napi/async.cpp) and the exit handler. Called when an env loads the addon.
void pin_library();

}  // namespace sk
