// Built-in GEMM micro-kernel for the SSE4.2 baseline (no FMA: multiply then add).
#include <immintrin.h>

#include <cstdint>

#include "gemm_kernel.h"

namespace sk::cpu::gemm_detail {
namespace {

struct Isa {
  using V = __m128;
  static constexpr int W = 4;
  static V zero() { return _mm_setzero_ps(); }
  static V set1(float x) { return _mm_set1_ps(x); }
  static V load(const float* p) { return _mm_load_ps(p); }
  static V loadu(const float* p) { return _mm_loadu_ps(p); }
  static void storeu(float* p, V x) { _mm_storeu_ps(p, x); }
  static V mul(V a, V b) { return _mm_mul_ps(a, b); }
  static V madd(V a, V b, V c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
  static float madd1(float a, float b, float c) { return a * b + c; }
};

// 6 x 8: 12 accumulators + 2 B vectors + a broadcast + a product temporary = the 16 XMM registers.
constexpr int MR = 6, NV = 2;

#include "gemm_kernel.inc"

constexpr KernelInfo kInfo = {"sse4.2", MR, NR, 120, 256, 2048, &macro_kernel};

}  // namespace

const KernelInfo* gemm_kernel_sse42() { return &kInfo; }

}  // namespace sk::cpu::gemm_detail
