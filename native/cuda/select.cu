// Per-row TopK selection without a full sort, one block per row. Keys are the float bits of the
// active values (activations are > +0, so the bits order like the values; inactive -> 0).
//
// Fast path (one read of the row and a partial second one; no per-key work beyond one
// shared-memory add):
//   pass 1: the number of active keys, and a 2048-bin histogram of the active keys' bits 20..30
//           (exponent and 3 mantissa bits: bins 1/8 octave wide). A block scan from the top bin
//           finds the bin holding the k-th largest key.
//   pass 2: only threads that saw a key in that bin or above read their part of the row again;
//           every key in that bin or above goes to a shared list as a composite 64-bit key
//           (value bits << 32 | ~index: unique, so "value descending, index ascending" is a plain
//           descending order); a bitonic sort of the list (typically ~2k entries or fewer) gives
//           the k winners in the CPU's order.
//   Fewer than k active keys: all of them, then the lowest-index inactive latents (value 0, found
//   by an ordered block scan), as on the CPU.
// Fallback (the k-th bin overflows the list: massive ties or a very flat row): an exact radix
// select over all keys, 8 bits at a time from the top, then the same composite sort of the k.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common.cuh"
#include "kernels.h"

namespace sk::cuda {

namespace {

constexpr int kSelThreads = 512;
constexpr int kBins = 2048;  // first digit of an active key: bits 20..30 (its sign bit is 0)
constexpr int kBinShift = 20;
static_assert(kBins == 4 * kSelThreads, "the bin scan gives each thread 4 bins");

// A row of pre-activations: float32, or bfloat16 bits (T = uint16_t: the bf16 encoder GEMM's
// own output type, half the bytes to read).
template <typename T>
struct RowView {
  const T* row;
  const float* bias;
  const float* thr;
  const int32_t* cand;
};

__device__ __forceinline__ float pre_value(float p) { return p; }
__device__ __forceinline__ float pre_value(uint16_t p) { return __uint_as_float(uint32_t(p) << 16); }

template <typename T>
__device__ __forceinline__ int32_t latent_of(const RowView<T>& v, int64_t j) { return v.cand ? v.cand[j] : int32_t(j); }

__device__ __forceinline__ uint32_t key_of(float pre, float bias, const float* thr, int64_t l) {
  const float z = pre + bias;
  const bool on = thr ? (z > thr[l] && z > 0.0f) : (z > 0.0f);
  // +0 for off and -0; a NaN (inf - inf: finite inputs whose products overflow) is +Infinity's key,
  // as on the CPU (relu_code), so it is kept and the encode's check of its codes refuses the row.
  return on ? __float_as_uint(z) : z != z ? 0x7f800000u : 0u;
}

template <typename T>
__device__ __forceinline__ uint32_t compute_key(const RowView<T>& v, int64_t j) {
  const int32_t l = latent_of(v, j);
  return key_of(pre_value(v.row[l]), v.bias[l], v.thr, l);
}

// Four consecutive pre-activations from one 16-byte (float) or 8-byte (bf16) load.
__device__ __forceinline__ float4 load4(const float* row, int64_t q) { return reinterpret_cast<const float4*>(row)[q]; }
__device__ __forceinline__ float4 load4(const uint16_t* row, int64_t q) {
  const uint2 u = reinterpret_cast<const uint2*>(row)[q];
  return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                     __uint_as_float(u.y & 0xffff0000u));
}

__device__ __forceinline__ unsigned long long composite(uint32_t key, int32_t latent) {
  return (static_cast<unsigned long long>(key) << 32) | (0xffffffffu - uint32_t(latent));
}

// Calls f(key, j) for every candidate j of the row this thread owns (j = tid + t * nthreads,
// or groups of 4 with one load when vec4: no candidate list, rows aligned to 4 elements).
template <bool kBatch4, typename T, class F>
__device__ __forceinline__ void for_each_key_of(const RowView<T>& v, int64_t C, int vec4, int tid, int nthreads, F f) {
  int64_t j0 = 0;
  if (vec4) {
    const float4* bias4 = reinterpret_cast<const float4*>(v.bias);
    const int64_t C4 = C >> 2;
    auto four = [&](const float4& z, const float4& b, int64_t q) {
      const int64_t j = q << 2;
      f(key_of(z.x, b.x, v.thr, j), j);
      f(key_of(z.y, b.y, v.thr, j + 1), j + 1);
      f(key_of(z.z, b.z, v.thr, j + 2), j + 2);
      f(key_of(z.w, b.w, v.thr, j + 3), j + 3);
    };
    // kBatch4 (the warp kernel): four groups' loads issued before any is used, more of the row
    // in flight per thread (the order of the calls does not matter to the callers: counts,
    // maxima, a list sorted after). Not for the block kernel: 82 registers instead of 39.
    int64_t q = tid;
    for (; kBatch4 && q + 3 * int64_t(nthreads) < C4; q += 4 * int64_t(nthreads)) {
      float4 z[4], b[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        z[u] = load4(v.row, q + u * int64_t(nthreads));
        b[u] = bias4[q + u * int64_t(nthreads)];
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) four(z[u], b[u], q + u * int64_t(nthreads));
    }
    for (; q < C4; q += nthreads) four(load4(v.row, q), bias4[q], q);
    j0 = C4 << 2;
  }
  for (int64_t j = j0 + tid; j < C; j += nthreads) f(compute_key(v, j), j);
}
// The same over the block's threads.
template <typename T, class F>
__device__ __forceinline__ void for_each_key(const RowView<T>& v, int64_t C, int vec4, F f) {
  for_each_key_of<false>(v, C, vec4, int(threadIdx.x), int(blockDim.x), f);
}

struct SelShared {
  unsigned hist[kBins];
  unsigned warp_tot[32];
  int s_total, s_pos, s_n, s_gt, s_ties, s_bin, s_c;
  unsigned s_digit, s_above;
};

// Inclusive scan of v over the block's threads in thread order. Synchronises.
__device__ __forceinline__ unsigned block_incl_scan(unsigned v, SelShared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned y = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += y;
  }
  if (lane == 31) sh.warp_tot[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const unsigned w = lane < nw ? sh.warp_tot[lane] : 0u;
    unsigned x = w;
    for (int o = 1; o < 32; o <<= 1) {
      const unsigned y = __shfl_up_sync(0xffffffffu, x, o);
      if (lane >= o) x += y;
    }
    if (lane < nw) sh.warp_tot[lane] = x - w;  // exclusive warp offsets
  }
  __syncthreads();
  v += sh.warp_tot[warp];
  __syncthreads();  // warp_tot is reused by the next call
  return v;
}

// Exclusive rank of `pred` among the block's threads (in thread order); *total receives the
// block's count. Synchronises.
__device__ __forceinline__ int block_rank(bool pred, SelShared& sh, int* total) {
  const unsigned incl = block_incl_scan(pred ? 1u : 0u, sh);
  if (threadIdx.x == blockDim.x - 1) sh.s_total = int(incl);
  __syncthreads();
  *total = sh.s_total;
  __syncthreads();
  return int(incl) - (pred ? 1 : 0);
}

// Descending bitonic sort of buf[0, Q) (Q a power of two) by the threads tid, tid + nthreads, ...
// of a group that sync() synchronises: the block (bitonic_desc), or one warp.
template <class Sync>
__device__ __forceinline__ void bitonic_desc_by(unsigned long long* buf, int Q, int tid, int nthreads, Sync sync) {
  for (int size = 2; size <= Q; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = tid; i < Q; i += nthreads) {
        const int p = i ^ stride;
        if (p > i) {
          const unsigned long long x = buf[i], y = buf[p];
          const bool desc = (i & size) == 0;
          if (desc ? (x < y) : (x > y)) {
            buf[i] = y;
            buf[p] = x;
          }
        }
      }
      sync();
    }
  }
}
__device__ __forceinline__ void bitonic_desc(unsigned long long* buf, int Q) {
  bitonic_desc_by(buf, Q, int(threadIdx.x), int(blockDim.x), [] { __syncthreads(); });
}

// Row r's codes 0..m-1 from its sorted composites (value bits, ~index), by threads tid, tid +
// nthreads, ...
__device__ __forceinline__ void write_winners(const SelectArgs& a, int64_t r, const unsigned long long* sorted, int m,
                                              int tid, int nthreads) {
  for (int i = tid; i < m; i += nthreads) {
    const unsigned long long cv = sorted[i];
    a.out_v[r * a.k + i] = __uint_as_float(uint32_t(cv >> 32));
    a.out_i[r * a.k + i] = int32_t(0xffffffffu - uint32_t(cv));
  }
}

// The fallback: exact radix select over all C keys (zeros included), 8 bits at a time from the
// top; keys > T are kept, keys == T in index order until k are taken; then the composite sort.
// sel holds P >= k entries. Every thread of the block calls it.
template <typename Elem>
__device__ void select_radix(const SelectArgs& a, const RowView<Elem>& v, int64_t r, int P, unsigned long long* sel,
                             SelShared& sh) {
  const int64_t C = a.C;
  const int tid = threadIdx.x;
  uint32_t prefix = 0, mask = 0;
  uint32_t kleft = uint32_t(a.k);
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += blockDim.x) sh.hist[i] = 0;
    __syncthreads();
    for (int64_t j = tid; j < C; j += blockDim.x) {
      const uint32_t key = compute_key(v, j);
      if ((key & mask) == prefix) atomicAdd(&sh.hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (tid < 32) {
      // Lane L covers bins 255 - 8L down to 248 - 8L (descending values).
      unsigned c[8], sum = 0;
      for (int t = 0; t < 8; ++t) {
        c[t] = sh.hist[255 - 8 * tid - t];
        sum += c[t];
      }
      unsigned incl = sum;
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned y = __shfl_up_sync(0xffffffffu, incl, o);
        if (tid >= o) incl += y;
      }
      const unsigned excl = incl - sum;
      if (excl < kleft && kleft <= incl) {
        unsigned cum = excl;
        for (int t = 0; t < 8; ++t) {
          if (cum + c[t] >= kleft) {
            sh.s_digit = unsigned(255 - 8 * tid - t);
            sh.s_above = cum;
            break;
          }
          cum += c[t];
        }
      }
    }
    __syncthreads();
    prefix |= sh.s_digit << shift;
    mask |= 255u << shift;
    kleft -= sh.s_above;
    __syncthreads();  // s_digit / hist are rewritten by the next pass
  }
  const uint32_t T = prefix;
  const int need = int(kleft);    // keys equal to T to keep (>= 1)
  const int G = int(a.k) - need;  // keys above T (all kept)
  if (tid == 0) {
    sh.s_gt = 0;
    sh.s_ties = 0;
  }
  __syncthreads();
  for (int64_t base = 0; base < C; base += blockDim.x) {
    const int64_t j = base + tid;
    uint32_t key = 0;
    int32_t l = 0;
    if (j < C) {
      key = compute_key(v, j);
      l = latent_of(v, j);
    }
    if (j < C && key > T) sel[atomicAdd(&sh.s_gt, 1)] = composite(key, l);
    const int ties_before = sh.s_ties;  // read before any thread of this tile updates it
    const bool eq = j < C && key == T && ties_before < need;
    if (__syncthreads_or(eq)) {
      int total;
      const int rank = block_rank(eq, sh, &total);
      if (eq && ties_before + rank < need) sel[G + ties_before + rank] = composite(key, l);
      if (tid == 0) sh.s_ties = ties_before + total;
    }
    __syncthreads();
    if (sh.s_ties >= need && sh.s_gt >= G) break;  // uniform: shared values after a barrier
    __syncthreads();
  }
  for (int i = int(a.k) + tid; i < P; i += blockDim.x) sel[i] = 0ull;  // pads sort last
  __syncthreads();
  bitonic_desc(sel, P);
  write_winners(a, r, sel, int(a.k), tid, int(blockDim.x));
}

// P: power of two >= k; cap: the shared list's entries (a power of two >= P).
// With `only`, rows whose entry is 0 are left alone (done by topk_warp_kernel).
template <typename T>
__global__ void __launch_bounds__(kSelThreads) topk_select_kernel(SelectArgs a, const T* pre, int P, int cap,
                                                                  int vec4, const int32_t* only) {
  extern __shared__ unsigned long long buf[];  // cap composite keys
  __shared__ SelShared sh;
  const int64_t r = blockIdx.x;
  if (only && only[r] == 0) return;  // uniform
  const RowView<T> v{pre + r * a.ld, a.bias, a.thr, a.cand};
  const int64_t C = a.C;
  const int k = int(a.k);
  const int tid = threadIdx.x;

  // ---- pass 1: active count and the first-digit histogram of the active keys
  for (int i = tid; i < kBins; i += blockDim.x) sh.hist[i] = 0;
  if (tid == 0) {
    sh.s_pos = 0;
    sh.s_n = 0;
  }
  __syncthreads();
  int pos = 0;
  uint32_t tmax = 0;  // this thread's largest key: pass 2 skips threads with nothing >= lo
  for_each_key(v, C, vec4, [&](uint32_t key, int64_t) {
    if (key) {
      ++pos;
      tmax = key > tmax ? key : tmax;
      atomicAdd(&sh.hist[key >> kBinShift], 1u);
    }
  });
  pos = warp_sum(pos);
  if ((tid & 31) == 0 && pos) atomicAdd(&sh.s_pos, pos);
  __syncthreads();
  const int npos = sh.s_pos;
  if (tid == 0 && a.positive) a.positive[r] = npos;

  // ---- the bin of the k-th largest active key (all active keys when there are fewer than k)
  uint32_t lo = 1;  // smallest key collected
  int n = npos;     // keys collected
  if (npos >= k) {
    unsigned c[4], sum = 0;
    for (int u = 0; u < 4; ++u) {
      c[u] = sh.hist[kBins - 1 - 4 * tid - u];
      sum += c[u];
    }
    const unsigned incl = block_incl_scan(sum, sh);
    const unsigned excl = incl - sum;
    if (excl < unsigned(k) && unsigned(k) <= incl) {
      unsigned cum = excl;
      for (int u = 0; u < 4; ++u) {
        if (cum + c[u] >= unsigned(k)) {
          sh.s_bin = kBins - 1 - 4 * tid - u;
          sh.s_c = int(cum + c[u]);
          break;
        }
        cum += c[u];
      }
    }
    __syncthreads();
    n = sh.s_c;
    if (n > cap) {  // uniform
      select_radix(a, v, r, P, buf, sh);
      return;
    }
    lo = uint32_t(sh.s_bin) << kBinShift;
    if (lo == 0) lo = 1;
  }

  // ---- pass 2: the keys >= lo into the list, then the composite sort
  if (tmax >= lo)  // most threads hold none of the few keys above lo and read nothing
    for_each_key(v, C, vec4, [&](uint32_t key, int64_t j) {
      if (key >= lo) buf[atomicAdd(&sh.s_n, 1)] = composite(key, latent_of(v, j));
    });
  __syncthreads();
  int Q = 1;
  while (Q < n) Q <<= 1;
  for (int i = n + tid; i < Q; i += blockDim.x) buf[i] = 0ull;
  __syncthreads();
  bitonic_desc(buf, Q);
  write_winners(a, r, buf, n < k ? n : k, tid, int(blockDim.x));
  if (npos >= k) return;

  // ---- fewer than k active: the lowest-index inactive latents fill the rest (value +0)
  const int need = k - npos;
  int filled = 0;
  for (int64_t base = 0; base < C && filled < need; base += blockDim.x) {
    const int64_t j = base + tid;
    const bool off = j < C && compute_key(v, j) == 0u;
    int total;
    const int rank = block_rank(off, sh, &total);
    if (off && filled + rank < need) {
      a.out_v[r * a.k + npos + filled + rank] = 0.0f;
      a.out_i[r * a.k + npos + filled + rank] = latent_of(v, j);
    }
    filled += total;
  }
}

// The fast path with a warp per row (kWarpRows rows per block, no block-wide barriers): more rows
// in flight per SM than topk_select_kernel's block per row, whose barriers (about 40 a row) and
// 4 blocks per SM left it far below the bandwidth of reading the row. Same rule and order: the
// 2048-bin histogram of the active keys (per-warp shared memory), the bin of the k-th largest,
// the keys from that bin up listed as composites and sorted by a warp bitonic sort. A row with
// fewer than k active keys, or more than kWarpList keys from that bin up, is flagged (flags[r] =
// 1) and left to topk_select_kernel. Requires k <= kWarpList.
constexpr int kWarpRows = 4;
constexpr int kWarpList = 256;
struct WarpShared {
  unsigned hist[kBins];
  unsigned long long list[kWarpList];
  int n;
};

template <typename T>
__global__ void __launch_bounds__(32 * kWarpRows) topk_warp_kernel(SelectArgs a, const T* pre, int64_t rows, int vec4,
                                                                   int32_t* flags) {
  __shared__ WarpShared ws[kWarpRows];
  const int lane = int(threadIdx.x & 31), w = int(threadIdx.x >> 5);
  const int64_t r = int64_t(blockIdx.x) * kWarpRows + w;
  if (r >= rows) return;  // the whole warp
  WarpShared& sh = ws[w];
  const RowView<T> v{pre + r * a.ld, a.bias, a.thr, a.cand};
  const int64_t C = a.C;
  const int k = int(a.k);
  constexpr unsigned kFull = 0xffffffffu;

  // ---- the active count and the histogram of the active keys' bits 20..30
  for (int i = lane; i < kBins; i += 32) sh.hist[i] = 0;
  if (lane == 0) sh.n = 0;
  __syncwarp();
  int pos = 0;
  for_each_key_of<true>(v, C, vec4, lane, 32, [&](uint32_t key, int64_t) {
    if (key) {
      ++pos;
      atomicAdd(&sh.hist[key >> kBinShift], 1u);
    }
  });
  __syncwarp();
  const int npos = __shfl_sync(kFull, warp_sum(pos), 0);
  if (lane == 0 && a.positive) a.positive[r] = npos;
  if (npos < k) {
    if (lane == 0) flags[r] = 1;
    return;
  }

  // ---- the bin of the k-th largest key: lane L sums bins kBins-1-64L down to kBins-64(L+1), in
  // an order rotated by L so that the 32 lanes read 32 different banks at each step
  constexpr int kPer = kBins / 32;
  unsigned sum = 0;
  for (int u = 0; u < kPer; ++u) sum += sh.hist[kBins - 1 - kPer * lane - ((u + lane) & (kPer - 1))];
  unsigned incl = sum;
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned y = __shfl_up_sync(kFull, incl, o);
    if (lane >= o) incl += y;
  }
  const unsigned excl = incl - sum;
  int bin = -1;
  unsigned cnt = 0;
  if (excl < unsigned(k) && unsigned(k) <= incl) {
    unsigned cum = excl;
    for (int u = 0; u < kPer; ++u) {
      const int b = kBins - 1 - kPer * lane - u;
      cum += sh.hist[b];
      if (cum >= unsigned(k)) {
        bin = b;
        cnt = cum;
        break;
      }
    }
  }
  const unsigned owner = __ballot_sync(kFull, bin >= 0);  // exactly one lane: npos >= k
  const int src = __ffs(int(owner)) - 1;
  bin = __shfl_sync(kFull, bin, src);
  cnt = __shfl_sync(kFull, cnt, src);
  if (cnt > unsigned(kWarpList)) {
    if (lane == 0) flags[r] = 1;
    return;
  }

  // ---- the keys from that bin up (cnt of them), then the composite sort
  uint32_t lo = uint32_t(bin) << kBinShift;
  if (lo == 0) lo = 1;
  for_each_key_of<true>(v, C, vec4, lane, 32, [&](uint32_t key, int64_t j) {
    if (key >= lo) sh.list[atomicAdd(&sh.n, 1)] = composite(key, latent_of(v, j));
  });
  int Q = 32;
  while (Q < int(cnt)) Q <<= 1;
  __syncwarp();
  for (int i = int(cnt) + lane; i < Q; i += 32) sh.list[i] = 0ull;
  __syncwarp();
  bitonic_desc_by(sh.list, Q, lane, 32, [] { __syncwarp(); });
  write_winners(a, r, sh.list, k, lane, 32);
}

// Whether rows go through topk_warp_kernel first (SAEKIT_CUDA_SELECT=block: the block kernel
// alone; read per call, the benchmark compares both).
bool warp_select(const SelectArgs& a) {
  if (a.flags == nullptr || a.k > kWarpList) return false;
  const char* e = std::getenv("SAEKIT_CUDA_SELECT");
  return !(e && std::strcmp(e, "block") == 0);
}

// The selection of `rows` rows of T (float or bf16 bits) pre-activations: the warp kernel (when
// warp_select) and then the block kernel (smem bytes of list) for the rows it flagged, or the
// block kernel for every row.
template <typename T>
void launch_select(const SelectArgs& a, const T* pre, int64_t rows, int P, int cap, int vec4, size_t smem, int device,
                   cudaStream_t s) {
  const int32_t* only = nullptr;
  if (warp_select(a)) {
    SK_CUDA(cudaMemsetAsync(a.flags, 0, size_t(rows) * sizeof(int32_t), s));
    auto* warp_kernel = topk_warp_kernel<T>;
    warp_kernel<<<unsigned((rows + kWarpRows - 1) / kWarpRows), 32 * kWarpRows, 0, s>>>(a, pre, rows, vec4, a.flags);
    SK_LAUNCHED("topk_warp_kernel");
    only = a.flags;
  }
  auto* kernel = topk_select_kernel<T>;
  // Above 48 KiB with the static SelShared (~8.4 KiB): opt in (the limit only rises, so a
  // concurrent selection with a smaller list never lowers it under this one).
  allow_dynamic_smem(kernel, smem, device, "the CUDA TopK selection's list");
  kernel<<<unsigned(rows), kSelThreads, smem, s>>>(a, pre, P, cap, vec4, only);
}

bool aligned(const void* p, uintptr_t bytes) { return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0; }

}  // namespace

void topk_select(const SelectArgs& a, int64_t rows, cudaStream_t s) {
  if (rows <= 0) return;
  SK_CHECK(a.k >= 1 && a.k <= a.C && a.k <= kMaxSelectK, ErrorCode::Arg, "Expected k in [1, ",
           (a.C < kMaxSelectK ? a.C : kMaxSelectK), "] for the CUDA TopK selection but received ", a.k);
  SK_CHECK(rows <= INT32_MAX, ErrorCode::Shape, "too many rows for one selection launch: ", rows);
  int P = 1;
  while (P < a.k) P <<= 1;
  // The list: 4 P entries, at least 2048 (a few KiB), within the shared memory a block may take
  // beside the kernel's static part (~8.4 KiB). SAEKIT_CUDA_SELECT_CAP (tests) sets it lower,
  // down to P, to force the fallback.
  int device = 0;
  SK_CUDA(cudaGetDevice(&device));
  const int optin = smem_optin(device);
  const size_t budget = size_t(optin) - sizeof(SelShared) - 1024;
  int cap = std::max(4 * P, 2048);
  static const int cap_env = [] {
    const char* e = std::getenv("SAEKIT_CUDA_SELECT_CAP");
    return e ? std::atoi(e) : 0;
  }();
  if (cap_env > 0) cap = std::min(cap, cap_env);
  while (cap > P && size_t(cap) * sizeof(unsigned long long) > budget) cap >>= 1;
  int c2 = P;
  while (c2 * 2 <= cap) c2 <<= 1;
  cap = c2;  // a power of two in [P, requested]
  const size_t smem = size_t(cap) * sizeof(unsigned long long);
  const bool b16 = a.pre16 != nullptr;
  const void* pre = b16 ? static_cast<const void*>(a.pre16) : static_cast<const void*>(a.pre);
  const int vec4 = a.cand == nullptr && a.ld % 4 == 0 && aligned(pre, b16 ? 8 : 16) && aligned(a.bias, 16) ? 1 : 0;
  if (b16) launch_select(a, a.pre16, rows, P, cap, vec4, smem, device, s);
  else launch_select(a, a.pre, rows, P, cap, vec4, smem, device, s);
  SK_LAUNCHED("topk_select_kernel");
}

}  // namespace sk::cuda
