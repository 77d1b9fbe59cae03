// Exact scalar conversions between float32, bfloat16 and float16 (IEEE binary16).
// All narrowing conversions round to nearest, ties to even; NaN stays NaN (quiet, sign kept),
// infinities stay infinite, subnormals are produced and consumed exactly (no flush to zero).
// Header-only and branch-light so that loops over them auto-vectorise in each ISA build.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SK_HD __host__ __device__ __forceinline__
#else
#define SK_HD static inline  // internal linkage: ISA-specific builds never share a copy
#endif

namespace sk {

SK_HD uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
SK_HD float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// bfloat16 is the top half of a float32.
SK_HD float bf16_to_f32(uint16_t h) { return bits_f32(uint32_t(h) << 16); }

SK_HD uint16_t f32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x0040u);  // NaN: keep sign, force quiet
  uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);  // ties to even
  return uint16_t((x + rounding) >> 16);           // overflow carries into the exponent: rounds to inf
}

// float16 -> float32 is exact.
SK_HD float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1fu)  // inf, or NaN with its payload and the quiet bit set (as F16C and GPUs convert)
    return bits_f32(sign | 0x7f800000u | (man << 13) | (man != 0 ? 0x400000u : 0u));
  if (exp != 0) return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
  // zero or subnormal: man * 2^-24, exact in float32
  float mag = float(man) * 5.9604644775390625e-08f;
  return bits_f32(sign | f32_bits(mag));
}

SK_HD uint16_t f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));  // NaN, quiet
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf (and inf itself)
  if (ax >= 0x38800000u) {                                  // normal half range: >= 2^-14
    uint32_t rounding = 0xfffu + ((ax >> 13) & 1u);
    return uint16_t(sign | ((ax - 0x38000000u + rounding) >> 13));  // rebias 127 -> 15
  }
  if (ax < 0x33000000u) return uint16_t(sign);  // < 2^-25: rounds to zero (2^-25 itself ties to 0)
  // subnormal half: value = m * 2^-24 with m in [0, 1024]; shift the full significand.
  uint32_t e = ax >> 23;                // 102..112
  uint32_t m = (ax & 0x7fffffu) | 0x800000u;
  uint32_t shift = 126u - e;            // 14..24
  uint32_t q = m >> shift;
  uint32_t rem = m & ((1u << shift) - 1u);
  uint32_t half = 1u << (shift - 1u);
  q += (rem > half || (rem == half && (q & 1u))) ? 1u : 0u;
  return uint16_t(sign | q);            // q == 1024 lands exactly on the smallest normal
}

}  // namespace sk
