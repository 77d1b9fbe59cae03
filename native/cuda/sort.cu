// The one CUB instantiation (kept in its own file: it is the slowest to compile).
#include <cub/device/device_radix_sort.cuh>

#include "common.cuh"
#include "kernels.h"

namespace sk::cuda {

void sort_pairs_u32(void* temp, size_t* temp_bytes, const uint32_t* keys_in, uint32_t* keys_out,
                    const uint32_t* vals_in, uint32_t* vals_out, int64_t n, int end_bit, cudaStream_t s) {
  SK_CHECK(n >= 0 && n <= INT32_MAX, ErrorCode::Shape, "Expected at most 2^31 - 1 (row, latent) pairs in a step but "
           "the batch has ", n, "; use a smaller batch");
  SK_CUDA(cub::DeviceRadixSort::SortPairs(temp, *temp_bytes, keys_in, keys_out, vals_in, vals_out, int(n), 0,
                                          end_bit, s));
}

}  // namespace sk::cuda
