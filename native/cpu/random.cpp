#include "random.h"

#include <cmath>

#include "../core/error.h"
#include "../core/half.h"
#include "../core/philox.h"

namespace sk::cpu {

namespace {

// Uniform values stay below 1 in 16-bit types: those that round up to 1.0 (0x3f80 / 0x3c00) keep
// the largest value below it (1 - 2^-8 / 1 - 2^-11).
void store(void* dst, DType type, int64_t i, double v, bool uniform) {
  switch (type) {
    case DType::F32: static_cast<float*>(dst)[i] = float(v); break;
    case DType::BF16: {
      uint16_t b = f32_to_bf16(float(v));
      static_cast<uint16_t*>(dst)[i] = uniform && b == 0x3f80 ? 0x3f7f : b;
      break;
    }
    case DType::F16: {
      uint16_t h = f32_to_f16(float(v));
      static_cast<uint16_t*>(dst)[i] = uniform && h == 0x3c00 ? 0x3bff : h;
      break;
    }
    case DType::I32: throw Error(ErrorCode::DType, "random fills need a float dtype, not int32");
  }
}

// The four values of one Philox block. `normal` selects Box-Muller over the lane pairs.
void block_values(uint64_t seed, uint64_t stream, uint64_t block, bool normal, double out[4]) {
  Philox4x32 w = philox_block(seed, stream, block);
  if (!normal) {
    for (int l = 0; l < 4; ++l) out[l] = philox_uniform(w.v[l]);
    return;
  }
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  for (int p = 0; p < 2; ++p) {
    double r = std::sqrt(-2.0 * std::log(philox_uniform_open(w.v[2 * p])));
    double theta = kTwoPi * philox_uniform(w.v[2 * p + 1]);
    out[2 * p] = r * std::cos(theta);
    out[2 * p + 1] = r * std::sin(theta);
  }
}

// Element i of the output is element (offset + i) of the stream.
void fill(void* dst, DType type, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset, bool normal,
          ThreadPool* pool) {
  SK_CHECK(n >= 0, ErrorCode::Arg, "random fill: Expected n >= 0 but received ", n);
  SK_CHECK(type != DType::I32, ErrorCode::DType, "Expected a float dtype (float32, bfloat16 or float16) for a random "
           "fill but received int32");
  auto range = [&](int64_t begin, int64_t end, int) {
    double v[4];
    int64_t i = begin;
    while (i < end) {
      uint64_t pos = offset + uint64_t(i);
      uint64_t block = pos / 4;
      block_values(seed, stream, block, normal, v);
      for (uint64_t lane = pos % 4; lane < 4 && i < end; ++lane, ++i) store(dst, type, i, v[lane], !normal);
    }
  };
  const int64_t grain = 1 << 14;
  if (pool == nullptr || n < 2 * grain) range(0, n, 0);
  else pool->parallel_for(n, grain, range);
}

}  // namespace

void fill_uniform(void* dst, DType type, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset,
                  ThreadPool* pool) {
  fill(dst, type, n, seed, stream, offset, false, pool);
}

void fill_normal(void* dst, DType type, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset,
                 ThreadPool* pool) {
  fill(dst, type, n, seed, stream, offset, true, pool);
}

}  // namespace sk::cpu
