#include "blas.h"

#include <cstdlib>
#include <cstring>
#include <limits>

#include "../core/cpu_features.h"
#include "../core/error.h"
#include "gemm_builtin.h"

#ifdef SAEKIT_HAVE_CBLAS
#include <cblas.h>
// OpenBLAS extensions, looked up weakly so that any other CBLAS also links.
extern "C" {
char* openblas_get_config(void) __attribute__((weak));
char* openblas_get_corename(void) __attribute__((weak));
void openblas_set_num_threads(int) __attribute__((weak));
}
#endif

namespace sk::cpu {

namespace {

// OpenBLAS cores whose kernels use SSE only (no AVX): its DYNAMIC_ARCH fallbacks.
[[maybe_unused]] bool sse_only_core(const std::string& core) {
  static const char* const kCores[] = {"Katmai", "Coppermine", "Northwood", "Prescott", "Banias", "Atom", "Core2",
                                       "Penryn", "Dunnington", "Nehalem", "Opteron", "Opteron_SSE3", "Barcelona", "Bobcat"};
  for (const char* c : kCores)
    if (core == c) return true;
  return false;
}

BlasInfo detect() {
  BlasInfo info;
#ifdef SAEKIT_HAVE_CBLAS
  info.linked = true;
  info.name = "cblas";
  if (openblas_get_config) {
    info.name = "openblas";
    info.config = openblas_get_config();
    // "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Zen MAX_THREADS=64"
    const std::string& c = info.config;
    size_t sp = c.find(' ');
    if (sp != std::string::npos) info.version = c.substr(sp + 1, c.find(' ', sp + 1) - sp - 1);
  }
  if (openblas_get_corename) info.coretype = openblas_get_corename();
  info.active = true;
  const char* env = std::getenv("SAEKIT_BLAS");
  if (env && std::strcmp(env, "builtin") == 0) {
    info.active = false;
    info.reason = "SAEKIT_BLAS=builtin";
  } else if (!(env && std::strcmp(env, "openblas") == 0) && sse_only_core(info.coretype) && simd_level() >= SimdLevel::AVX2) {
    // OpenBLAS's DYNAMIC_ARCH picks its kernels from the CPU model: where a hypervisor hides the
    // model ("Intel Xeon Processor"), it falls back to SSE kernels (Prescott), about 3x slower
    // than the built-in AVX2 / AVX-512 GEMM on the same machine (measured 2026-12-03: 20-25 against
    // 68-71 GFLOP/s at 2048 x 768 x 4096). SAEKIT_BLAS=openblas (with OPENBLAS_CORETYPE=Haswell or
    // SkylakeX, which OpenBLAS then uses) keeps OpenBLAS.
    info.active = false;
    info.reason = "OpenBLAS chose its " + info.coretype + " (SSE) kernels on this " + simd_level_name(simd_level()) +
                  " CPU (a CPU model it does not know); the built-in GEMM is faster here. To use OpenBLAS, set "
                  "OPENBLAS_CORETYPE (Haswell, SkylakeX, Zen) and SAEKIT_BLAS=openblas";
  }
#else
  info.reason = "saekit was built without a CBLAS library (install libopenblas-dev and rebuild)";
#endif
  if (!info.active) {
    info.name = "builtin";
    info.version = gemm_builtin_kernel_name();
    info.coretype.clear();
  }
  return info;
}

}  // namespace

const BlasInfo& blas_info() {
  static const BlasInfo info = detect();
  return info;
}

void blas_set_threads(int threads) {
#ifdef SAEKIT_HAVE_CBLAS
  if (openblas_set_num_threads) openblas_set_num_threads(threads);
#else
  (void)threads;
#endif
}

void blas_sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
#ifdef SAEKIT_HAVE_CBLAS
  const int64_t lim = std::numeric_limits<int>::max();
  SK_CHECK(M <= lim && N <= lim && K <= lim && lda <= lim && ldb <= lim && ldc <= lim, ErrorCode::Shape,
           "matmul: dimensions above 2^31-1 are not supported by the CBLAS path (M=", M, ", N=", N, ", K=", K, ")");
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, int(M),
              int(N), int(K), alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
#else
  (void)trans_a; (void)trans_b; (void)M; (void)N; (void)K; (void)alpha; (void)A; (void)lda; (void)B; (void)ldb;
  (void)beta; (void)C; (void)ldc;
  throw Error(ErrorCode::Internal, "blas_sgemm called in a build without CBLAS");
#endif
}

}  // namespace sk::cpu
