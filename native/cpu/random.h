// Philox-based random fills on the CPU (layout: core/philox.h).
#pragma once
#include <cstdint>

#include "../core/dtype.h"
#include "../core/thread_pool.h"

namespace sk::cpu {

void fill_uniform(void* dst, DType type, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset,
                  ThreadPool* pool);
void fill_normal(void* dst, DType type, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset,
                 ThreadPool* pool);

}  // namespace sk::cpu
