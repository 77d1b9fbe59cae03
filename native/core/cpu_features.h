// What the running x86-64 CPU (and OS) supports, detected once at run time. The addon is built
// for a baseline x86-64 + SSE4.2 CPU; faster kernels are compiled separately for AVX2+FMA and
// AVX-512 and chosen from this at run time, so a binary built on one machine runs on another.
#pragma once

namespace sk {

enum class SimdLevel : int { Scalar = 0, SSE42 = 1, AVX2 = 2, AVX512 = 3 };

struct CpuFeatures {
  bool sse42 = false;
  bool avx = false;
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512dq = false;
};

const CpuFeatures& cpu_features();
// The best level this CPU supports, lowered by SAEKIT_SIMD=sse42|avx2|avx512|scalar if set.
SimdLevel simd_level();
const char* simd_level_name(SimdLevel level);

// The kernel table for this CPU among one table per ISA build (the getters only return a
// reference, so calling the AVX ones runs no AVX code). Chosen once per table type.
template <typename Table>
const Table& pick_kernels(const Table& (*sse42)(), const Table& (*avx2)(), const Table& (*avx512)()) {
  static const Table& t = simd_level() == SimdLevel::AVX512 ? avx512() : simd_level() == SimdLevel::AVX2 ? avx2() : sse42();
  return t;
}

}  // namespace sk
