// The emulation's stand-in for sort.cu (CUB): a stable sort of (key, value) pairs by key.
#include <algorithm>
#include <numeric>
#include <vector>

#include "../common.cuh"
#include "../kernels.h"

namespace sk::cuda {

void sort_pairs_u32(void* temp, size_t* temp_bytes, const uint32_t* keys_in, uint32_t* keys_out,
                    const uint32_t* vals_in, uint32_t* vals_out, int64_t n, int end_bit, cudaStream_t stream) {
  if (!temp) {
    *temp_bytes = 16;
    return;
  }
  // Queued on the stream like a kernel (emu/cuda_runtime.h: deferred streams).
  ::emu::submit(stream, [=] {
    const uint32_t mask = end_bit >= 32 ? 0xffffffffu : ((1u << end_bit) - 1u);
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return (keys_in[a] & mask) < (keys_in[b] & mask); });
    std::vector<uint32_t> k(static_cast<size_t>(n)), v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      k[size_t(i)] = keys_in[order[size_t(i)]];
      v[size_t(i)] = vals_in[order[size_t(i)]];
    }
    std::copy(k.begin(), k.end(), keys_out);
    std::copy(v.begin(), v.end(), vals_out);
  });
}

}  // namespace sk::cuda
