#include "cpu_backend.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "../core/error.h"
#include "blas.h"
#include "convert.h"
#include "gemm_builtin.h"
#include "../core/aligned_memory.h"
#include "random.h"

namespace sk::cpu {

namespace {

struct CpuContext {
  std::unique_ptr<ThreadPool> pool;  // executor thread only (set_threads replaces it there)
  // pool's size, for JS threads (cpu_threads()): they must not read `pool` while the executor
  // replaces it (a setThreads followed by _gemmDirect crashed on the null pointer in between).
  std::atomic<int> threads{1};
};

int initial_threads() {
  if (const char* env = std::getenv("SAEKIT_NUM_THREADS")) {
    char* end = nullptr;
    long n = std::strtol(env, &end, 10);
    // Digits only, as the JS check that warns about ignored values ("+1" or " 7" are ignored).
    if (env[0] >= '0' && env[0] <= '9' && *end == '\0' && n >= 1 && n <= 1024) return int(n);
  }
  return hardware_threads();
}

CpuContext& context() {
  static CpuContext* ctx = [] {
    auto* c = new CpuContext();  // lives for the process: worker threads must outlive every env
    c->pool = std::make_unique<ThreadPool>(initial_threads());
    c->threads.store(c->pool->size());
    blas_set_threads(c->pool->size());
    return c;
  }();
  return *ctx;
}

const char* cpu_name(void*) { return "cpu"; }

int cpu_alloc(void*, sk_status* st, void** out, size_t bytes) {
  SK_SLOT(st, {
    size_t rounded = ((bytes == 0 ? 1 : bytes) + 63) / 64 * 64;
    *out = aligned_malloc(64, rounded);
    SK_CHECK(*out != nullptr, ErrorCode::Memory, "could not allocate ", bytes, " bytes of host memory");
  });
}

void cpu_free(void*, void* ptr) { aligned_free(ptr); }

int cpu_copy(void*, sk_status* st, void* dst, const void* src, size_t bytes) {
  SK_SLOT(st, std::memcpy(dst, src, bytes));
}

int cpu_set_threads(void*, sk_status* st, int threads) {
  SK_SLOT(st, {
    SK_CHECK(threads >= 1 && threads <= 1024, ErrorCode::Arg,
             "Expected integer between 1 and 1024 for threads but received ", threads);
    CpuContext& c = context();
    if (c.pool->size() != threads) {
      c.pool.reset();  // join the old workers before starting new ones
      c.pool = std::make_unique<ThreadPool>(threads);
      c.threads.store(threads);
    }
    blas_set_threads(threads);
  });
}

int cpu_convert(void*, sk_status* st, void* dst, sk_dtype dt, const void* src, sk_dtype stype, int64_t n) {
  SK_SLOT(st, convert(dst, DType(dt), src, DType(stype), n, context().pool.get()));
}

int cpu_fill_uniform(void*, sk_status* st, void* dst, sk_dtype t, int64_t n, uint64_t seed, uint64_t stream,
                     uint64_t offset) {
  SK_SLOT(st, fill_uniform(dst, DType(t), n, seed, stream, offset, context().pool.get()));
}

int cpu_fill_normal(void*, sk_status* st, void* dst, sk_dtype t, int64_t n, uint64_t seed, uint64_t stream,
                    uint64_t offset) {
  SK_SLOT(st, fill_normal(dst, DType(t), n, seed, stream, offset, context().pool.get()));
}

int cpu_gemm_f32(void*, sk_status* st, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  SK_SLOT(st, gemm_f32(ta != 0, tb != 0, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc));
}

const sk_backend_i kCpuBackend = {
    /* .api_version  = */ SK_BACKEND_API_VERSION,
    /* .name         = */ cpu_name,
    /* .alloc        = */ cpu_alloc,
    /* .free         = */ cpu_free,
    /* .upload       = */ cpu_copy,  // host memory: a copy
    /* .download     = */ cpu_copy,
    /* .set_threads  = */ cpu_set_threads,
    /* .convert      = */ cpu_convert,
    /* .fill_uniform = */ cpu_fill_uniform,
    /* .fill_normal  = */ cpu_fill_normal,
    /* .gemm_f32     = */ cpu_gemm_f32,
};

thread_local bool t_builtin_gemm = false;  // BuiltinGemmScope

}  // namespace

BuiltinGemmScope::BuiltinGemmScope(bool on) : prev_(t_builtin_gemm) { t_builtin_gemm = prev_ || on; }
BuiltinGemmScope::~BuiltinGemmScope() { t_builtin_gemm = prev_; }

void gemm_f32(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
              const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  SK_CHECK(M >= 0 && N >= 0 && K >= 0, ErrorCode::Shape, "gemm: Expected non-negative sizes but received M=", M,
           ", N=", N, ", K=", K);
  SK_CHECK(lda >= std::max<int64_t>(1, ta ? M : K) && ldb >= std::max<int64_t>(1, tb ? K : N) &&
               ldc >= std::max<int64_t>(1, N),
           ErrorCode::Shape, "gemm: leading dimensions too small (lda=", lda, ", ldb=", ldb, ", ldc=", ldc, ")");
  if (M == 0 || N == 0) return;
  if (K == 0) {  // an empty sum: C = beta * C (BLAS would reject lda = 0)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  if (blas_info().active && !t_builtin_gemm) blas_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else gemm_builtin_f32(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, *context().pool);
}

sk_backend cpu_backend() {
  context();
  return sk_backend{&kCpuBackend, nullptr};
}

int cpu_threads() { return context().threads.load(); }
ThreadPool& cpu_pool() { return *context().pool; }
const char* cpu_gemm_name() { return blas_info().name.c_str(); }

}  // namespace sk::cpu
