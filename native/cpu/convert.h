// Element-type conversion on the CPU (float32 <-> bfloat16 <-> float16, int32), with kernels
// compiled for several ISAs and chosen once at run time.
#pragma once
#include <cstdint>

#include "../core/dtype.h"
#include "../core/thread_pool.h"

namespace sk::cpu {

// dst[n] = convert(src[n]); see backend.h (.convert) for the rounding rules.
void convert(void* dst, DType dst_type, const void* src, DType src_type, int64_t n, ThreadPool* pool);

// One ISA's kernels for the float paths; the same loops compiled with different flags.
struct ConvertKernels {
  void (*f32_to_bf16)(uint16_t* dst, const float* src, int64_t n);
  void (*f32_to_f16)(uint16_t* dst, const float* src, int64_t n);
  void (*bf16_to_f32)(float* dst, const uint16_t* src, int64_t n);
  void (*f16_to_f32)(float* dst, const uint16_t* src, int64_t n);
};
const ConvertKernels& convert_kernels_sse42();
const ConvertKernels& convert_kernels_avx2();
const ConvertKernels& convert_kernels_avx512();

}  // namespace sk::cpu
