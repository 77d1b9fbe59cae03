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
// Row-major C[M,N] = alpha op(A) op(B) + beta C through the CPU backend's GEMM (CBLAS or
// built-in); for CPU kernels that need a GEMM inside a larger op. Executor thread only.
void gemm_f32(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
              int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
// The GEMM the CPU backend runs: "openblas", "cblas" or "builtin" (blas.h says why).
const char* cpu_gemm_name();

// While one is alive (and `on`), gemm_f32 on this thread runs the built-in GEMM even where a
// CBLAS is linked. The built-in GEMM computes every entry of C the same way whatever M, N and the
// thread count (one FMA chain over K per entry; K is never split), so a row's result does not
// depend on the rows it is multiplied with. OpenBLAS's Haswell / Zen kernels do not keep that:
// their bits change with the shape and the thread count. Used by batch-invariant encodes.
class BuiltinGemmScope {
 public:
  explicit BuiltinGemmScope(bool on);
  ~BuiltinGemmScope();
  BuiltinGemmScope(const BuiltinGemmScope&) = delete;
  BuiltinGemmScope& operator=(const BuiltinGemmScope&) = delete;

 private:
  bool prev_;
};

}  // namespace sk::cpu
