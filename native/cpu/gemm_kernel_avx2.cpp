// Built-in GEMM micro-kernel for AVX2 + FMA.
#include <immintrin.h>

#include <cstdint>

#include "gemm_kernel.h"

namespace sk::cpu::gemm_detail {
namespace {

struct Isa {
  using V = __m256;
  static constexpr int W = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_load_ps(p); }
  static V loadu(const float* p) { return _mm256_loadu_ps(p); }
  static void storeu(float* p, V x) { _mm256_storeu_ps(p, x); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V madd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static float madd1(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
};

// 6 x 16: 12 accumulators + 2 B vectors + a broadcast of the 16 YMM registers.
constexpr int MR = 6, NV = 2;

#include "gemm_kernel.inc"

constexpr KernelInfo kInfo = {"avx2", MR, NR, 144, 256, 2048, &macro_kernel};

}  // namespace

const KernelInfo* gemm_kernel_avx2() { return &kInfo; }

}  // namespace sk::cpu::gemm_detail
