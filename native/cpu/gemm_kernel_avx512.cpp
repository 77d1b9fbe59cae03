// Built-in GEMM micro-kernel for AVX-512F.
#include <immintrin.h>

#include <cstdint>

#include "gemm_kernel.h"

namespace sk::cpu::gemm_detail {
namespace {

struct Isa {
  using V = __m512;
  static constexpr int W = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_load_ps(p); }
  static V loadu(const float* p) { return _mm512_loadu_ps(p); }
  static void storeu(float* p, V x) { _mm512_storeu_ps(p, x); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V madd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static float madd1(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
};

// 14 x 32: 28 accumulators + 2 B vectors of the 32 ZMM registers; the A values are broadcast
// straight from memory as FMA operands.
constexpr int MR = 14, NV = 2;

#include "gemm_kernel.inc"

constexpr KernelInfo kInfo = {"avx512", MR, NR, 168, 384, 2048, &macro_kernel};

}  // namespace

const KernelInfo* gemm_kernel_avx512() { return &kInfo; }

}  // namespace sk::cpu::gemm_detail
