#pragma once
#include <cstdint>
#include "../core/thread_pool.h"
namespace sk::cpu {
// Row-major C[M,N] = alpha * op(A) * op(B) + beta * C.
// op(A) is [M,K]: A is stored [M,K] with leading dimension lda >= K when !transA, or [K,M] with lda >= M when transA.
// op(B) is [K,N]: B is stored [K,N] with ldb >= N when !transB, or [N,K] with ldb >= K when transB.
// ldc >= N. When beta == 0, C is not read (it may hold NaN/garbage). M, N or K may be 0 (K == 0: C = beta*C).
// Uses up to pool.size() threads via pool.run()/parallel_for(); deterministic for a given thread count.
void gemm_builtin_f32(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                      const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                      float* C, int64_t ldc, sk::ThreadPool& pool);
// Which micro-kernel the dispatcher picked on this CPU: "avx512", "avx2" or "sse4.2".
const char* gemm_builtin_kernel_name();
}
