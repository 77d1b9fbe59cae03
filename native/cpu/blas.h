// The CBLAS GEMM path. OpenBLAS is linked when the build found it (SAEKIT_HAVE_CBLAS); without
// it, or with SAEKIT_BLAS=builtin in the environment, the built-in GEMM runs instead.
#pragma once
#include <cstdint>
#include <string>

namespace sk::cpu {

struct BlasInfo {
  bool linked = false;     // a CBLAS library was linked at build time
  bool active = false;     // it is used (linked and not overridden by SAEKIT_BLAS=builtin)
  std::string name;        // "openblas", "cblas" or "builtin"
  std::string version;     // e.g. "0.3.21" (or the built-in kernel's ISA)
  std::string coretype;    // OpenBLAS's core name (e.g. "Zen"), empty if unknown
  std::string config;      // OpenBLAS's full configuration string, empty if unknown
  std::string reason;      // why the built-in one runs, when it does
};

const BlasInfo& blas_info();
void blas_set_threads(int threads);

// Row-major cblas_sgemm. Only call when blas_info().linked.
void blas_sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

}  // namespace sk::cpu
