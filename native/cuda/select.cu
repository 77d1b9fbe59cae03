// Per-row TopK selection without a full sort: one block per row finds the k-th largest
// activation by a radix select on its float bits (activations are >= +0, so the bits order like
// the values), then gathers the winners and bitonic-sorts only those k in shared memory.
//
//   pass 1-4: 256-bin histograms of one byte of the key among candidates whose higher bytes equal
//             the prefix found so far; the bin holding the k-th largest extends the prefix.
//             After four passes the prefix is the exact threshold T and `need` says how many keys
//             equal to T belong to the top k (those with the lowest indices, the CPU's tie rule).
//   gather:   keys > T go to slots by a shared counter (their order is fixed by the final sort);
//             keys == T are ranked in index order by a block scan, tile by tile, until `need`
//             are taken.
//   sort:     composite 64-bit keys (value bits << 32 | ~index) are unique, so a descending
//             bitonic sort yields "value descending, index ascending" deterministically.
#include <algorithm>
#include <cstdlib>

#include "common.cuh"
#include "kernels.h"

namespace sk::cuda {

namespace {

constexpr int kSelThreads = 512;

struct RowView {
  const float* row;
  const float* bias;
  const float* thr;
  const int32_t* cand;
};

__device__ __forceinline__ int32_t latent_of(const RowView& v, int64_t j) { return v.cand ? v.cand[j] : int32_t(j); }

__device__ __forceinline__ uint32_t compute_key(const RowView& v, int64_t j) {
  const int32_t l = latent_of(v, j);
  float z = v.row[l] + v.bias[l];
  bool on = v.thr ? (z > v.thr[l] && z > 0.0f) : (z > 0.0f);
  return on ? __float_as_uint(z) : 0u;  // +0 for off, NaN and -0
}

// Exclusive rank of `pred` among the block's threads (in thread order); *total receives the
// block's count. `warp_tot` (32 ints) and `s_total` are shared scratch. Synchronises.
__device__ __forceinline__ int block_rank(bool pred, int* warp_tot, int* s_total, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  unsigned b = __ballot_sync(0xffffffffu, pred);
  int r = __popc(b & ((1u << lane) - 1u));
  if (lane == 0) warp_tot[warp] = __popc(b);
  __syncthreads();
  if (threadIdx.x == 0) {
    int acc = 0;
    for (int w = 0; w < nw; ++w) {
      int t = warp_tot[w];
      warp_tot[w] = acc;
      acc += t;
    }
    *s_total = acc;
  }
  __syncthreads();
  int rank = warp_tot[warp] + r;
  *total = *s_total;
  __syncthreads();  // warp_tot and s_total are reused by the next call
  return rank;
}

// cached: the row's C keys also live in shared memory (after the P composite keys), so only the
// first pass reads the pre-activations from global memory.
__global__ void __launch_bounds__(kSelThreads) topk_select_kernel(SelectArgs a, int P, int cached) {
  extern __shared__ unsigned long long sel[];  // P composite keys, then (cached) C keys
  uint32_t* keys = reinterpret_cast<uint32_t*>(sel + P);
  __shared__ unsigned int hist[256];
  __shared__ int warp_tot[32];
  __shared__ int s_total;
  __shared__ unsigned int s_digit, s_above;
  __shared__ int s_gt, s_ties, s_pos;

  const int64_t r = blockIdx.x;
  const RowView v{a.pre + r * a.ld, a.bias, a.thr, a.cand};
  const int64_t C = a.C;
  const int tid = threadIdx.x;

  uint32_t prefix = 0, mask = 0;
  uint32_t kleft = uint32_t(a.k);
  if (tid == 0) s_pos = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    int pos = 0;
    for (int64_t j = tid; j < C; j += blockDim.x) {
      uint32_t key;
      if (shift == 24) {
        key = compute_key(v, j);
        if (cached) keys[j] = key;
        pos += key != 0u;
      } else {
        key = cached ? keys[j] : compute_key(v, j);
      }
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    if (shift == 24 && a.positive) atomicAdd(&s_pos, pos);
    __syncthreads();
    if (tid < 32) {
      // Lane L covers bins 255 - 8L down to 248 - 8L (descending values).
      unsigned c[8], sum = 0;
      for (int t = 0; t < 8; ++t) {
        c[t] = hist[255 - 8 * tid - t];
        sum += c[t];
      }
      unsigned incl = sum;
      for (int o = 1; o < 32; o <<= 1) {
        unsigned y = __shfl_up_sync(0xffffffffu, incl, o);
        if (tid >= o) incl += y;
      }
      unsigned excl = incl - sum;
      if (excl < kleft && kleft <= incl) {
        unsigned cum = excl;
        for (int t = 0; t < 8; ++t) {
          if (cum + c[t] >= kleft) {
            s_digit = unsigned(255 - 8 * tid - t);
            s_above = cum;
            break;
          }
          cum += c[t];
        }
      }
    }
    __syncthreads();
    prefix |= s_digit << shift;
    mask |= 255u << shift;
    kleft -= s_above;
    __syncthreads();  // s_digit / hist are rewritten by the next pass
  }
  const uint32_t T = prefix;
  const int need = int(kleft);          // keys equal to T to keep (>= 1)
  const int G = int(a.k) - need;        // keys above T (all kept)
  if (tid == 0) {
    s_gt = 0;
    s_ties = 0;
    if (a.positive) a.positive[r] = s_pos;
  }
  __syncthreads();
  for (int64_t base = 0; base < C; base += blockDim.x) {
    const int64_t j = base + tid;
    uint32_t key = 0, l = 0;
    if (j < C) {
      key = cached ? keys[j] : compute_key(v, j);
      if (key >= T) l = uint32_t(latent_of(v, j));
    }
    const unsigned long long comp = (static_cast<unsigned long long>(key) << 32) | (0xffffffffu - l);
    if (j < C && key > T) sel[atomicAdd(&s_gt, 1)] = comp;
    const int ties_before = s_ties;  // read before any thread of this tile updates it
    const bool eq = j < C && key == T && ties_before < need;
    if (__syncthreads_or(eq)) {
      int total;
      int rank = block_rank(eq, warp_tot, &s_total, &total);
      if (eq && ties_before + rank < need) sel[G + ties_before + rank] = comp;
      if (tid == 0) s_ties = ties_before + total;
    }
    __syncthreads();
    if (s_ties >= need && s_gt >= G) break;  // uniform: shared values after a barrier
    __syncthreads();
  }
  for (int i = int(a.k) + tid; i < P; i += blockDim.x) sel[i] = 0ull;  // pads sort last
  __syncthreads();
  for (int size = 2; size <= P; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = tid; i < P; i += blockDim.x) {
        int p = i ^ stride;
        if (p > i) {
          unsigned long long x = sel[i], y = sel[p];
          bool desc = (i & size) == 0;
          if (desc ? (x < y) : (x > y)) {
            sel[i] = y;
            sel[p] = x;
          }
        }
      }
      __syncthreads();
    }
  }
  for (int i = tid; i < int(a.k); i += blockDim.x) {
    unsigned long long c = sel[i];
    a.out_v[r * a.k + i] = __uint_as_float(uint32_t(c >> 32));
    a.out_i[r * a.k + i] = int32_t(0xffffffffu - uint32_t(c));
  }
}

}  // namespace

void topk_select(const SelectArgs& a, int64_t rows, cudaStream_t s) {
  if (rows <= 0) return;
  SK_CHECK(a.k >= 1 && a.k <= a.C && a.k <= kMaxSelectK, ErrorCode::Arg, "Expected k in [1, ",
           (a.C < kMaxSelectK ? a.C : kMaxSelectK), "] for the CUDA TopK selection but received ", a.k);
  SK_CHECK(rows <= INT32_MAX, ErrorCode::Shape, "too many rows for one selection launch: ", rows);
  int P = 1;
  while (P < a.k) P <<= 1;
  size_t smem = size_t(P) * sizeof(unsigned long long);
  // Cache the row's keys in shared memory when they fit beside the sort buffer (leaving room for
  // two blocks per SM), so the three later radix passes and the gather read no global memory.
  int device = 0, optin = 0, per_sm = 0;
  SK_CUDA(cudaGetDevice(&device));
  SK_CUDA(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  SK_CUDA(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
  const size_t statics = 4096;  // the kernel's static shared memory (~1.2 KiB) and per-block reserve, rounded up
  const size_t budget = std::min<size_t>(size_t(optin), size_t(per_sm) / 2) - statics;
  const size_t with_keys = smem + size_t(a.C) * sizeof(uint32_t);
  static const bool allow_cache = [] {  // SAEKIT_CUDA_SELECT_CACHE=0 forces the uncached path (tests)
    const char* e = std::getenv("SAEKIT_CUDA_SELECT_CACHE");
    return !(e && e[0] == '0');
  }();
  const int cached = allow_cache && with_keys <= budget ? 1 : 0;
  if (cached) smem = with_keys;
  if (smem > (48u << 10))  // above the default limit: opt in (per device; cheap to repeat)
    SK_CUDA(cudaFuncSetAttribute(topk_select_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  topk_select_kernel<<<unsigned(rows), kSelThreads, smem, s>>>(a, P, cached);
  SK_LAUNCHED("topk_select_kernel");
}

}  // namespace sk::cuda
