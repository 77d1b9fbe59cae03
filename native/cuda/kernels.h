// Launchers shared between the plugin's translation units and the benchmark.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace sk::cuda {

// Why CUDA cannot run here: driver, device, compute capability or the cuBLAS library; "" when it
// can (then *count_out, if given, receives the number of devices, usable or not, so that index N
// is the runtime's device N, i.e. cuda:N). plugin.cu.
std::string unavailable_reason(int* count_out);

// Why device `device` cannot run this build (index out of range, compute capability below 8.0),
// or "" when it can. plugin.cu.
std::string device_unusable(int device);

// Per-row selection of the k best activations, sorted by descending value, ties to the lower
// latent index (the CPU heap's order). The activation of candidate j of row r is
//   z = pre[r * ld + l] + bias[l],  l = cand ? cand[j] : j  (cand ascending, j < C)
//   a = z > 0 ? z : 0                                        (TopK: ReLU; NaN -> 0)
//   a = (z > thr[l] && z > 0) ? z : 0                       (JumpReLU, when thr is set)
// Output row r: out_v[r * k + j], out_i[r * k + j] for j < k. `positive` (optional) receives
// each row's number of candidates with a > 0. Requires 1 <= k <= C and k <= kMaxSelectK.
constexpr int64_t kMaxSelectK = 8192;
struct SelectArgs {
  const float* pre = nullptr;
  const uint16_t* pre16 = nullptr;  // bfloat16 pre-activations instead of pre (same ld)
  int64_t ld = 0;
  const float* bias = nullptr;
  const float* thr = nullptr;
  const int32_t* cand = nullptr;
  int64_t C = 0;
  int64_t k = 0;
  float* out_v = nullptr;
  int32_t* out_i = nullptr;
  int32_t* positive = nullptr;
  // rows int32 of device scratch: with it (and k <= 256), rows are selected a warp per row first
  // and only the rows that path cannot take go to the block-per-row kernel.
  int32_t* flags = nullptr;
};
void topk_select(const SelectArgs& a, int64_t rows, cudaStream_t s);

// Stable sort of (key, value) pairs by key over bits [0, end_bit) (CUB radix sort).
// With temp == nullptr, only sets *temp_bytes.
void sort_pairs_u32(void* temp, size_t* temp_bytes, const uint32_t* keys_in, uint32_t* keys_out,
                    const uint32_t* vals_in, uint32_t* vals_out, int64_t n, int end_bit, cudaStream_t s);

}  // namespace sk::cuda
