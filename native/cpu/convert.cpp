#include "convert.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "../core/cpu_features.h"
#include "../core/error.h"
#include "../core/half.h"

namespace sk::cpu {

const ConvertKernels& convert_kernels() {
  return pick_kernels(convert_kernels_sse42, convert_kernels_avx2, convert_kernels_avx512);
}

namespace {

const ConvertKernels& kernels() { return convert_kernels(); }

int32_t f32_to_i32(float f) {
  if (std::isnan(f)) return 0;
  if (f >= 2147483648.0f) return std::numeric_limits<int32_t>::max();
  if (f <= -2147483648.0f) return std::numeric_limits<int32_t>::min();
  return int32_t(f);  // truncates toward zero
}

float to_f32(DType t, const void* src, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(src)[i];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(src)[i]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(src)[i]);
    case DType::I32: return float(static_cast<const int32_t*>(src)[i]);
  }
  return 0.0f;
}

// int32 -> float32 rounded to odd (truncated toward zero, lowest bit set when inexact): a second
// rounding of that value to a 16-bit type is then the correct single rounding of the integer
// (round-to-nearest of the float32 first would round twice: 2^25 + 2^17 + 1 became 2^25 in bf16).
float i32_to_f32_odd(int32_t v) {
  const double d = double(v);  // exact
  float f = float(d);
  if (double(f) == d) return f;
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::fabs(double(f)) > std::fabs(d)) --u;  // rounded away from zero: step back toward it
  u |= 1;
  std::memcpy(&f, &u, 4);
  return f;
}

// Converts [begin, end) of one chunk. Float paths use the vector kernels; paths through int32
// and 16-bit <-> 16-bit go element by element through float32 (exact for f16/bf16 inputs, and
// rounded to odd for int32 inputs going to 16 bits, so the narrowing rounds once).
void convert_range(void* dst, DType dt, const void* src, DType st, int64_t begin, int64_t end) {
  const ConvertKernels& k = kernels();
  int64_t n = end - begin;
  auto* d16 = static_cast<uint16_t*>(dst) + begin;
  auto* d32 = static_cast<float*>(dst) + begin;
  const auto* s16 = static_cast<const uint16_t*>(src) + begin;
  const auto* s32 = static_cast<const float*>(src) + begin;
  if (dt == st) {
    std::memcpy(static_cast<char*>(dst) + begin * dtype_size(dt), static_cast<const char*>(src) + begin * dtype_size(st),
                size_t(n) * dtype_size(dt));
  } else if (st == DType::F32 && dt == DType::BF16) {
    k.f32_to_bf16(d16, s32, n);
  } else if (st == DType::F32 && dt == DType::F16) {
    k.f32_to_f16(d16, s32, n);
  } else if (st == DType::BF16 && dt == DType::F32) {
    k.bf16_to_f32(d32, s16, n);
  } else if (st == DType::F16 && dt == DType::F32) {
    k.f16_to_f32(d32, s16, n);
  } else {
    const bool odd = st == DType::I32 && (dt == DType::BF16 || dt == DType::F16);
    for (int64_t i = begin; i < end; ++i) {
      float f = odd ? i32_to_f32_odd(static_cast<const int32_t*>(src)[i]) : to_f32(st, src, i);
      switch (dt) {
        case DType::F32: static_cast<float*>(dst)[i] = f; break;
        case DType::BF16: static_cast<uint16_t*>(dst)[i] = f32_to_bf16(f); break;
        case DType::F16: static_cast<uint16_t*>(dst)[i] = f32_to_f16(f); break;
        case DType::I32:
          // int32 -> int32 was a memcpy above; float sources truncate.
          static_cast<int32_t*>(dst)[i] = f32_to_i32(f);
          break;
      }
    }
  }
}

}  // namespace

void convert(void* dst, DType dst_type, const void* src, DType src_type, int64_t n, ThreadPool* pool) {
  SK_CHECK(n >= 0, ErrorCode::Arg, "convert: Expected n >= 0 but received ", n);
  // Nothing to do; the pointers of an empty (or detached) typed array may be null, which memcpy
  // must not be given even for 0 bytes.
  if (n == 0) return;
  // int32 -> float32 loses precision above 2^24; that is the documented, expected behaviour.
  const int64_t grain = 1 << 16;
  if (pool == nullptr || n < 2 * grain) {
    convert_range(dst, dst_type, src, src_type, 0, n);
    return;
  }
  pool->parallel_for(n, grain, [&](int64_t b, int64_t e, int) { convert_range(dst, dst_type, src, src_type, b, e); });
}

}  // namespace sk::cpu
