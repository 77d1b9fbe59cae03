// Pearson correlation between the sparse codes of two SAEs on a CUDA device: the table of
// core/corr_device.h, exported as sk_corr_api(2). Same semantics and the same bits as the CPU
// kernel (native/cpu/sparse_corr.cpp); see docs/architecture.md for the plan.
//
// One run, on its own stream:
//   1. Upload the codes (CSR by token). A's entries are regrouped per latent into posting lists
//      (token, value) in token order: a stable radix sort (CUB) of (latent, entry position) pairs,
//      whose positions are already in token order; list starts by binary search.
//   2. A's latents in chunks of C rows (C from the free device memory): one warp per row i sums
//      row i of the cross-moment S_ij = sum_t x_ti y_tj into a float64 row of a [C, nB] scratch,
//      walking i's postings in token order; a token's B entries go to distinct lanes (its latents
//      are distinct, so no two lanes touch the same j: no atomics) and a __syncwarp separates
//      consecutive tokens, so every S_ij is summed in the CPU's order, with the CPU's roundings
//      (explicit _rn intrinsics: no FMA contraction). Heavy rows (latents that fire on many
//      tokens, which one warp would walk for longer than the rest of the chunk takes) are split
//      by columns instead: one warp per 512-column tile, summing in shared memory, each walking
//      all the row's postings (a column still has one owner, so the order is the same).
//   3. r of the chunk (float32, the CPU's formula), which resets the scratch; full mode downloads
//      it into the caller's matrix. Top mode: one thread per B feature merges the chunk's rows,
//      in increasing i, into its best-first list ([k, nB] on the device); reverse mode: one warp
//      per row keeps a best-first list per lane, then lane 0 merges the 32 lists.
// Every reduction has a fixed order and every list the total order (r descending, index
// ascending), so results are deterministic and equal to the CPU's.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <vector>

#include "common.cuh"
#include "core/corr_device.h"
#include "kernels.h"

#define SK_EXPORT extern "C" __attribute__((visibility("default")))

namespace sk::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;  // rows per block in the accumulation and reverse kernels
constexpr int32_t kNoIndex = std::numeric_limits<int32_t>::max();

// ---- device buffers ---------------------------------------------------------------------------

// One cudaMalloc'd array, freed with the owner (also when a later step throws).
template <typename T>
struct DevArray {
  T* p = nullptr;
  DevArray() = default;
  explicit DevArray(int64_t n) {
    SK_CUDA(cudaMalloc(reinterpret_cast<void**>(&p), size_t(std::max<int64_t>(n, 1)) * sizeof(T)));
  }
  DevArray(const DevArray&) = delete;
  DevArray& operator=(const DevArray&) = delete;
  DevArray& operator=(DevArray&& o) noexcept {
    std::swap(p, o.p);
    return *this;
  }
  ~DevArray() {
    if (p) cudaFree(p);
  }
  void reset() {
    if (p) cudaFree(p);
    p = nullptr;
  }
};

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { SK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  ~Stream() {
    if (s) cudaStreamDestroy(s);
  }
};

template <typename T>
void upload(T* dst, const T* src, int64_t n, cudaStream_t s) {
  if (n > 0) SK_CUDA(cudaMemcpyAsync(dst, src, size_t(n) * sizeof(T), cudaMemcpyHostToDevice, s));
}
template <typename T>
void download(T* dst, const T* src, int64_t n, cudaStream_t s) {
  if (n > 0) SK_CUDA(cudaMemcpyAsync(dst, src, size_t(n) * sizeof(T), cudaMemcpyDeviceToHost, s));
}

// ---- kernels ----------------------------------------------------------------------------------

// Better = larger r, then lower index (the CPU's total order).
__device__ __forceinline__ bool better(float r, int32_t i, float r2, int32_t i2) {
  return r > r2 || (r == r2 && i < i2);
}

// Inserts (r, i) into a best-first list of k whose element q is at v[q * stride] (the last is the worst).
__device__ __forceinline__ void list_insert(float* v, int32_t* x, int64_t k, int64_t stride, float r, int32_t i) {
  int64_t p = k - 1;
  while (p > 0 && better(r, i, v[(p - 1) * stride], x[(p - 1) * stride])) {
    v[p * stride] = v[(p - 1) * stride];
    x[p * stride] = x[(p - 1) * stride];
    --p;
  }
  v[p * stride] = r;
  x[p * stride] = i;
}

__global__ void fill_lists(float* v, int32_t* x, int64_t n) {
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < n; q += int64_t(gridDim.x) * blockDim.x) {
    v[q] = -INFINITY;
    x[q] = kNoIndex;
  }
}

__global__ void zero_f64(double* a, int64_t n) {
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < n; q += int64_t(gridDim.x) * blockDim.x) a[q] = 0.0;
}

// Every entry of A: its token (tok) and its own position (pos), the sort's payload.
__global__ void entry_tokens(const int64_t* ptr, int64_t T, uint32_t* tok, uint32_t* pos) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < T; t += int64_t(gridDim.x) * blockDim.x)
    for (int64_t p = ptr[t]; p < ptr[t + 1]; ++p) {
      tok[p] = uint32_t(t);
      pos[p] = uint32_t(p);
    }
}

// Posting q of the latent-sorted order: the token and value of the entry it came from.
__global__ void gather_postings(const uint32_t* sorted_pos, const uint32_t* tok, const float* val, int64_t E,
                                int32_t* post_tok, float* post_val) {
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < E; q += int64_t(gridDim.x) * blockDim.x) {
    const uint32_t p = sorted_pos[q];
    post_tok[q] = int32_t(tok[p]);
    post_val[q] = val[p];
  }
}

// start[i] = the first sorted position whose latent is >= i, for i in [0, nA].
__global__ void list_starts(const uint32_t* keys, int64_t E, int64_t nA, int64_t* start) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i <= nA; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t lo = 0, hi = E;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (int64_t(keys[mid]) < i) lo = mid + 1;
      else hi = mid;
    }
    start[i] = lo;
  }
}

// One warp adds row i's products x_ti * y_tj for the columns j in [j0, j1) into a[j - j0],
// walking i's postings [q0, q1) in token order. The warp takes 32 postings at a time: each lane
// loads one (token, value, B's row bounds), then every lane stages entry `lane` of each of the 32
// tokens' B rows in shared memory (wj, wv: 32 x 32; all those loads in flight together, and only
// the lane that stages an entry reads it back), and then the tokens are added in order, one B
// entry per lane (entries past the 32nd of a token come straight from global memory), with a
// __syncwarp between tokens: a token's latents are distinct, so no two lanes add to one j at once,
// and every sum runs in token order (the CPU's), with the CPU's roundings (no FMA contraction).
constexpr int kStage = 32;  // postings staged per batch (= lanes)
__device__ __forceinline__ void add_postings(int64_t q0, int64_t q1, const int32_t* post_tok, const float* post_val,
                                             const int64_t* ptr_b, const int32_t* idx_b, const float* val_b,
                                             int32_t* wj, float* wv, double* a, int64_t j0, int64_t j1) {
  const int lane = int(threadIdx.x & 31);
  for (int64_t qb = q0; qb < q1; qb += kStage) {
    const int64_t q = qb + lane;
    const int nq = int(min(int64_t(kStage), q1 - qb));
    double u = 0.0;
    int64_t b0 = 0, b1 = 0;
    if (q < q1) {
      const int32_t t = post_tok[q];
      u = double(post_val[q]);
      b0 = ptr_b[t];
      b1 = ptr_b[t + 1];
    }
    for (int s = 0; s < nq; ++s) {
      const int64_t p = __shfl_sync(0xffffffffu, b0, s) + lane;
      if (p < __shfl_sync(0xffffffffu, b1, s)) {
        wj[s * 32 + lane] = idx_b[p];
        wv[s * 32 + lane] = val_b[p];
      }
    }
    for (int s = 0; s < nq; ++s) {
      const double us = __shfl_sync(0xffffffffu, u, s);
      const int64_t e0 = __shfl_sync(0xffffffffu, b0, s), e1 = __shfl_sync(0xffffffffu, b1, s);
      if (e0 + lane < e1) {
        const int64_t j = wj[s * 32 + lane];
        if (j >= j0 && j < j1) a[j - j0] = __dadd_rn(a[j - j0], __dmul_rn(us, double(wv[s * 32 + lane])));
      }
      for (int64_t p = e0 + 32 + lane; p < e1; p += 32) {
        const int64_t j = idx_b[p];
        if (j >= j0 && j < j1) a[j - j0] = __dadd_rn(a[j - j0], __dmul_rn(us, double(val_b[p])));
      }
      __syncwarp();  // the next token may add to the same j from another lane
    }
  }
}

// Light rows: one warp per listed row c (chunk-local; latent i0 + c) sums its whole row into the
// zeroed float64 scratch acc[c, :] in global memory.
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    accumulate_rows(const int32_t* list, int64_t count, const int64_t* start, const int32_t* post_tok,
                    const float* post_val, const int64_t* ptr_b, const int32_t* idx_b, const float* val_b, int64_t i0,
                    int64_t nB, double* acc) {
  __shared__ int32_t stage_j[kWarpsPerBlock * kStage * 32];
  __shared__ float stage_v[kWarpsPerBlock * kStage * 32];
  const int warp = int(threadIdx.x >> 5);
  const int64_t w = int64_t(blockIdx.x) * kWarpsPerBlock + warp;
  if (w >= count) return;  // a whole warp leaves together
  const int64_t c = list[w];
  add_postings(start[i0 + c], start[i0 + c + 1], post_tok, post_val, ptr_b, idx_b, val_b,
               stage_j + warp * kStage * 32, stage_v + warp * kStage * 32, acc + c * nB, 0, nB);
}

// Heavy rows (many postings: one warp walking them would dominate the chunk): G warps per listed
// row, warp g owning the columns [g tile, (g + 1) tile) in a float64 shared-memory tile, each
// walking all the row's postings; a column has one owner, so the order per j is unchanged. The
// tile is then written to acc[c, :] whole.
constexpr int kTile = 512;  // the most columns a warp owns (4 KiB of float64)
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    accumulate_tiles(const int32_t* list, int64_t count, int64_t G, int64_t tile, const int64_t* start,
                     const int32_t* post_tok, const float* post_val, const int64_t* ptr_b, const int32_t* idx_b,
                     const float* val_b, int64_t i0, int64_t nB, double* acc) {
  __shared__ int32_t stage_j[kWarpsPerBlock * kStage * 32];
  __shared__ float stage_v[kWarpsPerBlock * kStage * 32];
  __shared__ double sums[kWarpsPerBlock * kTile];
  const int lane = int(threadIdx.x & 31), warp = int(threadIdx.x >> 5);
  const int64_t w = int64_t(blockIdx.x) * kWarpsPerBlock + warp;
  if (w >= count * G) return;
  const int64_t c = list[w / G], j0 = (w % G) * tile, j1 = min(nB, j0 + tile);
  double* a = sums + warp * kTile;
  for (int64_t j = lane; j < j1 - j0; j += 32) a[j] = 0.0;
  __syncwarp();
  add_postings(start[i0 + c], start[i0 + c + 1], post_tok, post_val, ptr_b, idx_b, val_b,
               stage_j + warp * kStage * 32, stage_v + warp * kStage * 32, a, j0, j1);
  for (int64_t j = j0 + lane; j < j1; j += 32) acc[c * nB + j] = a[j - j0];
}

// r of the chunk's rows from the sums (the CPU's expression and roundings); resets the sums.
__global__ void finish_rows(double* acc, int64_t rows, int64_t nB, int64_t i0, double n, const double* meanA,
                            const double* invA, const double* meanB, const double* invB, double scale, float* r) {
  const int64_t total = rows * nB;
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < total; q += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = q / nB, j = q - c * nB;
    const double mi = __dmul_rn(n, meanA[i0 + c]), si = invA[i0 + c];
    double v = __dmul_rn(__dmul_rn(__dmul_rn(__dsub_rn(acc[q], __dmul_rn(mi, meanB[j])), si), invB[j]), scale);
    acc[q] = 0.0;
    v = v < -1.0 ? -1.0 : v;
    v = v > 1.0 ? 1.0 : v;
    r[q] = float(__dadd_rn(v, 0.0));  // + 0.0 turns -0 into +0
  }
}

// One thread per B feature j: offers the chunk's rows (increasing i) to its list ([k, nB]).
__global__ void merge_columns(const float* r, int64_t rows, int64_t nB, int64_t i0, int64_t k, float* tv, int32_t* tx) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < nB; j += int64_t(gridDim.x) * blockDim.x) {
    float worst = tv[(k - 1) * nB + j];
    int32_t worst_i = tx[(k - 1) * nB + j];
    for (int64_t c = 0; c < rows; ++c) {
      const float f = r[c * nB + j];
      if (!better(f, int32_t(i0 + c), worst, worst_i)) continue;
      list_insert(tv + j, tx + j, k, nB, f, int32_t(i0 + c));
      worst = tv[(k - 1) * nB + j];
      worst_i = tx[(k - 1) * nB + j];
    }
  }
}

// One warp per row c: each lane keeps a best-first list of its columns (j = lane mod 32) in
// lv/lx [rows, 32, k]; lane 0 then merges the 32 lists into rv/rx [rows, k].
__global__ void reverse_rows(const float* r, int64_t rows, int64_t nB, int64_t k, float* lv, int32_t* lx, float* rv,
                             int32_t* rx) {
  const int lane = int(threadIdx.x & 31);
  const int64_t c = int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (c >= rows) return;
  float* v = lv + (c * 32 + lane) * k;
  int32_t* x = lx + (c * 32 + lane) * k;
  for (int64_t q = 0; q < k; ++q) {
    v[q] = -INFINITY;
    x[q] = kNoIndex;
  }
  float worst = -INFINITY;
  int32_t worst_i = kNoIndex;
  const float* row = r + c * nB;
  for (int64_t j = lane; j < nB; j += 32) {
    const float f = row[j];
    if (!better(f, int32_t(j), worst, worst_i)) continue;
    list_insert(v, x, k, 1, f, int32_t(j));
    worst = v[k - 1];
    worst_i = x[k - 1];
  }
  __syncwarp();
  if (lane != 0) return;
  float* ov = rv + c * k;
  int32_t* ox = rx + c * k;
  for (int64_t q = 0; q < k; ++q) {
    ov[q] = -INFINITY;
    ox[q] = kNoIndex;
  }
  const float* all_v = lv + c * 32 * k;
  const int32_t* all_x = lx + c * 32 * k;
  for (int64_t q = 0; q < 32 * k; ++q)
    if (better(all_v[q], all_x[q], ov[k - 1], ox[k - 1])) list_insert(ov, ox, k, 1, all_v[q], all_x[q]);
}

// ---- host orchestration ------------------------------------------------------------------------

void check_codes(const sk_corr_codes* c, const sk_corr_opts* o, int device) {
  SK_CHECK(c != nullptr && o != nullptr, ErrorCode::Arg, "sparse correlation: Expected codes and options but received null");
  int count = 0;
  SK_CUDA(cudaGetDeviceCount(&count));
  SK_CHECK(device >= 0 && device < count, ErrorCode::Device, "Expected a device between cuda:0 and cuda:", count - 1,
           " for the sparse correlation but received cuda:", device);
  SK_CHECK(c->nA >= 1 && c->nB >= 1 && c->nA < (int64_t(1) << 31) && c->nB < (int64_t(1) << 31), ErrorCode::Arg,
           "Expected nA and nB in [1, 2^31) but received nA = ", c->nA, ", nB = ", c->nB);
  SK_CHECK(c->tokens >= 2, ErrorCode::Arg, "Expected at least 2 tokens for a correlation but received ", c->tokens);
  SK_CHECK(c->tokens < (int64_t(1) << 31), ErrorCode::Arg, "Expected at most 2^31 - 1 tokens but received ", c->tokens);
  SK_CHECK(o->full || o->top >= 1, ErrorCode::Arg, "Expected top >= 1 outside full mode but received ", o->top);
  SK_CHECK(o->scale > 0.0 && o->scale <= 1.0, ErrorCode::Arg, "Expected a scale in (0, 1] but received ", o->scale);
  const int64_t EA = c->ptr_a[c->tokens];
  SK_CHECK(EA < (int64_t(1) << 31), ErrorCode::Shape, "the CUDA sparse correlation sorts at most 2^31 - 1 nonzero codes of "
           "A but received ", EA, "; use fewer tokens (options.maxTokens) or the CPU");
}

// SAEKIT_CUDA_CORR_ROWS: at most this many A rows per chunk (tests use it to force many chunks).
int64_t chunk_rows_cap() {
  const char* e = std::getenv("SAEKIT_CUDA_CORR_ROWS");
  if (!e || !*e) return std::numeric_limits<int64_t>::max();
  const long long v = std::atoll(e);
  return v >= 1 ? int64_t(v) : 1;
}

// A row is heavy (accumulate_tiles) when it has more postings than this: 2048 and 4 times the
// mean, unless SAEKIT_CUDA_CORR_HEAVY sets it (tests: 0 makes every nonempty row heavy).
int64_t heavy_threshold(int64_t EA, int64_t nA) {
  const char* e = std::getenv("SAEKIT_CUDA_CORR_HEAVY");
  if (e && *e) return std::max<long long>(0, std::atoll(e));
  return std::max<int64_t>(2048, 4 * (EA / nA));
}

// Columns per warp in accumulate_tiles: kTile, or fewer with SAEKIT_CUDA_CORR_TILE (tests).
int64_t tile_width() {
  const char* e = std::getenv("SAEKIT_CUDA_CORR_TILE");
  const long long v = e && *e ? std::atoll(e) : kTile;
  return std::min<int64_t>(kTile, std::max<int64_t>(1, v));
}

constexpr double kMiB = 1024.0 * 1024.0;

void run_corr(int device, const sk_corr_codes* c, const sk_corr_opts* o, sk_corr_out* out) {
  check_codes(c, o, device);
  SK_CUDA(cudaSetDevice(device));
  const int64_t T = c->tokens, nA = c->nA, nB = c->nB;
  const int64_t EA = c->ptr_a[T], EB = c->ptr_b[T];
  const bool full = o->full != 0;
  const int64_t kTop = full ? 0 : std::min(o->top, nA);
  const int64_t kRev = full || !o->reverse ? 0 : std::min(o->top, nB);
  const double n = double(T);

  // Moments on the host, with the CPU's function (bit-identical).
  const size_t na = static_cast<size_t>(nA), nb = static_cast<size_t>(nB);
  std::vector<double> meanA(na), invA(na), meanB(nb), invB(nb);
  for (int64_t i = 0; i < nA; ++i)
    sk_corr_moments(c->sum_a[i], c->sumsq_a[i], n, &meanA[size_t(i)], &invA[size_t(i)], &out->constant_a[i]);
  for (int64_t j = 0; j < nB; ++j)
    sk_corr_moments(c->sum_b[j], c->sumsq_b[j], n, &meanB[size_t(j)], &invB[size_t(j)], &out->constant_b[j]);

  // Device memory: the regrouping's peak, what stays (postings, B's codes, moments, top lists),
  // and per chunk row the float64 sums, the float32 r and the reverse lists.
  size_t free_b = 0, total_b = 0;
  SK_CUDA(cudaMemGetInfo(&free_b, &total_b));
  // Regrouping: A's CSR, keys, tokens, positions and their sorted copies, CUB's double buffer and
  // the posting lists being written.
  const double regroup = 8.0 * double(T + 1) + 48.0 * double(EA) + 8.0 * double(nA + 1);
  const double kept = 8.0 * double(EA) + 8.0 * double(nA + 1) + 8.0 * double(T + 1) + 8.0 * double(EB) +
                      16.0 * double(nA + nB) + 8.0 * double(kTop) * double(nB);
  const double per_row = 12.0 * double(nB) + 8.0 * 33.0 * double(kRev) + 8.0;
  const double fixed = std::max(regroup, kept);
  const double margin = 64.0 * kMiB;  // CUB's temporary storage, the context's own allocations
  if (fixed + per_row + margin > double(free_b))
    throw Error(ErrorCode::Device,
                fmt("the sparse correlation on cuda:", device, " needs at least ", int64_t((fixed + per_row + margin) / kMiB),
                    " MiB of device memory (", T, " tokens, ", EA, " + ", EB, " nonzero codes, ", nA, " x ", nB,
                    " features) but ", int64_t(double(free_b) / kMiB), " MiB are free; use fewer tokens "
                    "(options.maxTokens) or the CPU"));
  // Chunk rows: half of what remains, at most 4 GiB of scratch.
  const double room = std::min((double(free_b) - fixed - margin) / 2.0, 4096.0 * kMiB);
  const int64_t C = std::max<int64_t>(1, std::min({nA, int64_t(room / per_row), chunk_rows_cap()}));

  Stream stream;
  const cudaStream_t s = stream.s;

  // 1. A's posting lists.
  DevArray<int32_t> post_tok(EA);
  DevArray<float> post_val(EA);
  DevArray<int64_t> start(nA + 1);
  {
    DevArray<int64_t> ptr_a(T + 1);
    DevArray<uint32_t> keys(EA), tok(EA), pos(EA), skeys(EA), spos(EA);
    DevArray<float> val(EA);
    upload(ptr_a.p, c->ptr_a, T + 1, s);
    upload(reinterpret_cast<int32_t*>(keys.p), c->idx_a, EA, s);
    upload(val.p, c->val_a, EA, s);
    if (EA > 0) {
      entry_tokens<<<grid_for(T, 256), 256, 0, s>>>(ptr_a.p, T, tok.p, pos.p);
      SK_LAUNCHED("entry_tokens");
      int end_bit = 1;
      while (end_bit < 31 && (int64_t(1) << end_bit) < nA) ++end_bit;
      size_t tmp_bytes = 0;
      sort_pairs_u32(nullptr, &tmp_bytes, keys.p, skeys.p, pos.p, spos.p, EA, end_bit, s);
      DevArray<unsigned char> tmp(static_cast<int64_t>(tmp_bytes));
      sort_pairs_u32(tmp.p, &tmp_bytes, keys.p, skeys.p, pos.p, spos.p, EA, end_bit, s);
      gather_postings<<<grid_for(EA, 256), 256, 0, s>>>(spos.p, tok.p, val.p, EA, post_tok.p, post_val.p);
      SK_LAUNCHED("gather_postings");
    }
    list_starts<<<grid_for(nA + 1, 256), 256, 0, s>>>(skeys.p, EA, nA, start.p);
    SK_LAUNCHED("list_starts");
    SK_CUDA(cudaStreamSynchronize(s));  // before the temporaries are freed
  }
  // Row lengths on the host, to split every chunk into light and heavy rows.
  std::vector<int64_t> hstart(static_cast<size_t>(nA + 1));
  download(hstart.data(), start.p, nA + 1, s);
  SK_CUDA(cudaStreamSynchronize(s));
  const int64_t heavy = heavy_threshold(EA, nA), tile = tile_width(), G = (nB + tile - 1) / tile;
  std::vector<int32_t> light_rows, heavy_rows;
  DevArray<int32_t> dlight(C), dheavy(C);

  // B's codes and the moments.
  DevArray<int64_t> ptr_b(T + 1);
  DevArray<int32_t> idx_b(EB);
  DevArray<float> val_b(EB);
  DevArray<double> dmeanA(nA), dinvA(nA), dmeanB(nB), dinvB(nB);
  upload(ptr_b.p, c->ptr_b, T + 1, s);
  upload(idx_b.p, c->idx_b, EB, s);
  upload(val_b.p, c->val_b, EB, s);
  upload(dmeanA.p, meanA.data(), nA, s);
  upload(dinvA.p, invA.data(), nA, s);
  upload(dmeanB.p, meanB.data(), nB, s);
  upload(dinvB.p, invB.data(), nB, s);

  // Scratch of a chunk and the lists.
  DevArray<double> acc(C * nB);
  DevArray<float> r(C * nB);
  DevArray<float> tv(kTop * nB), lv(C * 32 * kRev), rv(C * kRev);
  DevArray<int32_t> tx(kTop * nB), lx(C * 32 * kRev), rx(C * kRev);
  zero_f64<<<grid_for(C * nB, 256), 256, 0, s>>>(acc.p, C * nB);
  SK_LAUNCHED("zero_f64");
  if (kTop > 0) {
    fill_lists<<<grid_for(kTop * nB, 256), 256, 0, s>>>(tv.p, tx.p, kTop * nB);
    SK_LAUNCHED("fill_lists");
  }

  // 2-3. Chunks of A's rows.
  const int warp_threads = 32 * kWarpsPerBlock;
  for (int64_t i0 = 0; i0 < nA; i0 += C) {
    const int64_t rows = std::min(C, nA - i0);
    const unsigned row_blocks = unsigned((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
    light_rows.clear();
    heavy_rows.clear();
    for (int64_t c2 = 0; c2 < rows; ++c2) {
      const int64_t len = hstart[size_t(i0 + c2 + 1)] - hstart[size_t(i0 + c2)];
      if (len == 0) continue;  // its sums stay zero
      (len > heavy ? heavy_rows : light_rows).push_back(int32_t(c2));
    }
    const int64_t nl = int64_t(light_rows.size()), nh = int64_t(heavy_rows.size());
    if (nl > 0) {
      upload(dlight.p, light_rows.data(), nl, s);
      accumulate_rows<<<unsigned((nl + kWarpsPerBlock - 1) / kWarpsPerBlock), warp_threads, 0, s>>>(
          dlight.p, nl, start.p, post_tok.p, post_val.p, ptr_b.p, idx_b.p, val_b.p, i0, nB, acc.p);
      SK_LAUNCHED("accumulate_rows");
    }
    if (nh > 0) {
      upload(dheavy.p, heavy_rows.data(), nh, s);
      accumulate_tiles<<<unsigned((nh * G + kWarpsPerBlock - 1) / kWarpsPerBlock), warp_threads, 0, s>>>(
          dheavy.p, nh, G, tile, start.p, post_tok.p, post_val.p, ptr_b.p, idx_b.p, val_b.p, i0, nB, acc.p);
      SK_LAUNCHED("accumulate_tiles");
    }
    finish_rows<<<grid_for(rows * nB, 256), 256, 0, s>>>(acc.p, rows, nB, i0, n, dmeanA.p, dinvA.p, dmeanB.p, dinvB.p,
                                                         o->scale, r.p);
    SK_LAUNCHED("finish_rows");
    if (full) {
      download(out->r + i0 * nB, r.p, rows * nB, s);
      continue;
    }
    merge_columns<<<grid_for(nB, 128), 128, 0, s>>>(r.p, rows, nB, i0, kTop, tv.p, tx.p);
    SK_LAUNCHED("merge_columns");
    if (kRev > 0) {
      reverse_rows<<<row_blocks, warp_threads, 0, s>>>(r.p, rows, nB, kRev, lv.p, lx.p, rv.p, rx.p);
      SK_LAUNCHED("reverse_rows");
      download(out->rev_r + i0 * kRev, rv.p, rows * kRev, s);
      download(out->rev_index + i0 * kRev, rx.p, rows * kRev, s);
    }
  }
  if (kTop > 0) {
    // The lists are [kTop, nB] on the device; the caller's are [nB, kTop].
    std::vector<float> hv(static_cast<size_t>(kTop * nB));
    std::vector<int32_t> hx(static_cast<size_t>(kTop * nB));
    download(hv.data(), tv.p, kTop * nB, s);
    download(hx.data(), tx.p, kTop * nB, s);
    SK_CUDA(cudaStreamSynchronize(s));
    for (int64_t q = 0; q < kTop; ++q)
      for (int64_t j = 0; j < nB; ++j) {
        out->top_r[j * kTop + q] = hv[size_t(q * nB + j)];
        out->top_index[j * kTop + q] = hx[size_t(q * nB + j)];
      }
  }
  check(cudaGetLastError(), "sparse correlation");
  SK_CUDA(cudaStreamSynchronize(s));
}

int corr_run(sk_status* st, int device, const sk_corr_codes* codes, const sk_corr_opts* opts, sk_corr_out* out) {
  SK_CUDA_SLOT(st, run_corr(device, codes, opts, out));
}

const sk_corr_i kCudaCorr = {
    /* .api_version = */ SK_CORR_API_VERSION,
    /* .run         = */ corr_run,
};

}  // namespace
}  // namespace sk::cuda

// The sparse-code correlation table for `api_version`, or null for a version this build does not speak.
SK_EXPORT const sk_corr_i* sk_corr_api(int api_version) {
  return api_version == SK_CORR_API_VERSION ? &sk::cuda::kCudaCorr : nullptr;
}
