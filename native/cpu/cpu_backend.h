// The CPU backend: always present, fills the Backend table with the kernels of native/cpu.
#pragma once
#include "../core/backend.h"
#include "../core/thread_pool.h"

namespace sk::cpu {

// The process-wide CPU backend. Its thread count starts at SAEKIT_NUM_THREADS or the number of
// hardware threads. Only the backend executor thread may run ops on it.
sk_backend cpu_backend();
int cpu_threads();
// The pool to run ops on (never null).
ThreadPool& cpu_pool();
// The GEMM the CPU backend runs: "openblas", "cblas" or "builtin" (blas.h says why).
const char* cpu_gemm_name();

}  // namespace sk::cpu
