#include "cpu_features.h"

#include <cstdlib>
#include <cstring>
#include <string>

namespace sk {

namespace {

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // __builtin_cpu_supports also checks that the OS saves the AVX / AVX-512 register state.
  f.sse42 = __builtin_cpu_supports("sse4.2");
  f.avx = __builtin_cpu_supports("avx");
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.f16c = f.avx;  // every AVX CPU in practice; only used as a hint
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
  f.avx512dq = __builtin_cpu_supports("avx512dq");
#endif
  return f;
}

SimdLevel detect_level() {
  const CpuFeatures& f = cpu_features();
  SimdLevel level = SimdLevel::Scalar;
  if (f.sse42) level = SimdLevel::SSE42;
  if (f.avx2 && f.fma) level = SimdLevel::AVX2;
  if (f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && level == SimdLevel::AVX2) level = SimdLevel::AVX512;
  if (const char* env = std::getenv("SAEKIT_SIMD")) {
    std::string want(env);
    SimdLevel cap = level;
    if (want == "scalar") cap = SimdLevel::Scalar;
    else if (want == "sse42") cap = SimdLevel::SSE42;
    else if (want == "avx2") cap = SimdLevel::AVX2;
    else if (want == "avx512") cap = SimdLevel::AVX512;
    if (int(cap) < int(level)) level = cap;  // the variable can only lower the level
  }
  return level;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

SimdLevel simd_level() {
  static const SimdLevel level = detect_level();
  return level;
}

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::Scalar: return "scalar";
    case SimdLevel::SSE42: return "sse4.2";
    case SimdLevel::AVX2: return "avx2";
    case SimdLevel::AVX512: return "avx512";
  }
  return "scalar";
}

}  // namespace sk
