// The device-resident TopK / JumpReLU SAE (native/core/sae_device.h) on CUDA. Semantics follow
// the CPU reference native/cpu/sae_topk.cpp step by step; the comments name the CPU phase each
// kernel implements. Shape letters: N rows, D = dIn, M = numLatents, K = k, Ka = AuxK's k.
//
// One step, all on the SAE's stream (x arrives on a copy stream through pinned staging):
//   check x finite -> mean and total variance (float64) -> per row tile: x - b_dec (+ bf16 copy),
//   encoder GEMM (cuBLAS), TopK selection (+ AuxK over the dead latents) -> per row: decode,
//   residuals, losses' row sums, d loss / d pre of every pair -> loss (float64) -> stable radix
//   sort of the pairs by latent -> per latent: db_enc, overflow bounds -> db_dec -> decide
//   (reject, or go) -> per latent: gradient rows, projection, Adam, renormalisation (gated on
//   the decision, so a rejected step leaves every parameter as it was).
// Every reduction has a fixed order for a given shape: results are bit-identical run to run.
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "common.cuh"
#include "core/half.h"
#include "core/sae_device.h"
#include "cublas_dl.h"
#include "kernels.h"

#define SK_EXPORT extern "C" __attribute__((visibility("default")))

using namespace sk;
using namespace sk::cuda;

namespace {

constexpr int64_t kChunk = 256;           // fixed row / latent blocks of the column sums
constexpr double kGradLimit = 1e18;       // the CPU's overflow guard
constexpr size_t kStageBytes = size_t(8) << 20;

// Device-side step scalars.
struct Scalars {
  double tv, sse, asse, fvu, auxk, loss;
  float maxE, maxR, maxX, gscale, hscale, pad;
  unsigned long long positive;  // main codes > 0 in the batch
};
// Device-side status words: [0] decision, [1] first non-finite row of x, [2] first latent whose
// gradient overflowed, [3] first b_dec column that overflowed, [4] zero variance (1) or a total
// variance past float32 gradients' reach (2), [5] loss non-finite. Index 1-3 start at INT_MAX.
enum : int { kGo = 0, kBadX = 1, kZeroVar = 2, kBadLoss = 3, kBadGrad = 4, kHugeVar = 5 };
constexpr int kStatWords = 6;

struct Entry {
  int32_t row_aux;  // row | (1 << 31) for an AuxK pair
  float coef;       // act * (aux ? hscale : gscale): the weight of the residual row in dW_dec
  float dpre;       // d loss / d pre (0 when act == 0)
};

struct AdamArgs {
  float b1, b2, lr_t, inv_sqrt_bc2, eps;
};

// AuxK computed as dense GEMMs over the dead latents (aux_dense_forward / aux_dense_backward):
// the per-latent kernels add these rows to the gradients they form from the main pairs. A
// default-constructed one (dpos null) means AuxK pairs are in the per-latent lists instead.
struct AuxDense {
  const int32_t* dpos = nullptr;  // [M]: a latent's position in the dead list, or -1
  const float* GA = nullptr;      // [2, nd, D]: AuxK gradient rows, decoder (coef R) then encoder (dpre xc)
  const double* db = nullptr;     // [nd]: AuxK part of db_enc (sum of the pairs' dpre)
  const float* amax = nullptr;    // [nd, 2]: max |GA row|, decoder and encoder (NaN: infinity)
  int64_t nd = 0;
  __device__ __forceinline__ int64_t pos(int64_t l) const { return dpos ? int64_t(dpos[l]) : -1; }
};

// The grid of colsum_partial_kernel over `cols` columns and `chunks` row chunks: gridDim.y is at
// most 65535 (ceil(N / 256) passes it from N = 16.8M rows), so the chunks beyond it are taken by
// the same blocks in turn; the partials are the same. SAEKIT_CUDA_GRID_Y (tests) lowers the cap.
dim3 colsum_grid(int64_t cols, int64_t chunks) {
  int64_t cap = 65535;
  if (const char* e = std::getenv("SAEKIT_CUDA_GRID_Y")) {
    const long long v = std::atoll(e);
    if (v >= 1 && v < cap) cap = v;
  }
  return dim3(unsigned((cols + 127) / 128), unsigned(std::max<int64_t>(1, std::min(chunks, cap))));
}

int64_t env_bytes(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  if (!v) return fallback;
  char* end = nullptr;
  long long n = std::strtoll(v, &end, 10);
  return (end != v && *end == '\0' && n >= 4096) ? int64_t(n) : fallback;
}

// ---- kernels ------------------------------------------------------------------------------

__global__ void init_status_kernel(int* stat, unsigned long long* positive) {
  stat[0] = kGo;
  stat[1] = stat[2] = stat[3] = INT_MAX;
  stat[4] = stat[5] = 0;
  if (positive) *positive = 0ull;
}

// CPU: check_finite_rows. Records the first row of x holding a NaN or infinity.
__global__ void check_x_kernel(const float* x, int64_t n, int64_t D, int* stat) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    if (!isfinite(x[i])) atomicMin(&stat[1], int(i / D));
}

// xc = x - b_dec (when apply_b_dec), and its bf16 copy when xbf is set.
__global__ void prep_x_kernel(const float* x, const float* b_dec, int apply, int64_t n, int64_t D, float* xc,
                              uint16_t* xbf) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float v = x[i] - (apply ? b_dec[i % D] : 0.0f);
    xc[i] = v;
    if (xbf) xbf[i] = f32_to_bf16(v);
  }
}

__global__ void to_bf16_kernel(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = f32_to_bf16(src[i]);
}

__global__ void add_bias_kernel(float* out, const float* b, int64_t n, int64_t M) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] += b[i % M];
}

// out = float(pre16) + b: the bf16 GEMM's pre-activations as the selection sees them.
__global__ void bf16_bias_kernel(const uint16_t* pre16, const float* b, int64_t n, int64_t M, float* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __uint_as_float(uint32_t(pre16[i]) << 16) + b[i % M];
}

// partial[c * D + d] = sum over rows r of chunk c (kChunk rows) of w(r) * A[r * D + d], in
// float64, rows in order; w(r) = rw[r] or 1. Chunks c = blockIdx.y, + gridDim.y, ... (gridDim.y
// is at most 65535: colsum_grid).
__global__ void colsum_partial_kernel(const float* A, int64_t rows, int64_t D, const float* rw, double* partial) {
  const int64_t d = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (d >= D) return;
  const int64_t chunks = (rows + kChunk - 1) / kChunk;
  for (int64_t c = blockIdx.y; c < chunks; c += gridDim.y) {
    const int64_t r1 = min(rows, (c + 1) * kChunk);
    double s = 0;
    for (int64_t r = c * kChunk; r < r1; ++r) {
      double a = A[r * D + d];
      if (!rw) {
        s += a;
      } else if (rw[r] != 0.0f) {
        s += double(rw[r]) * a;  // a zero weight adds nothing, as on the CPU (0 * inf is NaN)
      }
    }
    partial[c * D + d] = s;
  }
}

// CPU: the mean of x over the batch (column_sums with scale 1/N).
__global__ void mean_kernel(const double* partial, int64_t chunks, int64_t D, double scale, double* mean) {
  const int64_t d = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (d >= D) return;
  double s = 0;
  for (int64_t c = 0; c < chunks; ++c) s += scale * partial[c * D + d];
  mean[d] = s;
}

// Per row: sum_d (x - mean)^2 in float64.
__global__ void row_tv_kernel(const float* x, const double* mean, int64_t D, double* out) {
  __shared__ double scr[32];
  const int64_t n = blockIdx.x;
  double s = 0;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    double c = double(x[n * D + d]) - mean[d];
    s += c * c;
  }
  s = block_sum(s, scr);
  if (threadIdx.x == 0) out[n] = s;
}

// Total variance and the loss scales (CPU: tv, gscale, hscale). The paper's AuxK divides by the
// residual's variance, known after the decode: hscale is 1 until loss_kernel sets it (the decode
// leaves the AuxK codes' d loss / d pre as plain dot products; scale_by_hscale_kernel finishes them).
__global__ void tv_kernel(const double* row_tv, int64_t N, double alpha, double aux_scale, int paper, Scalars* sc,
                          int* stat) {
  __shared__ double scr[32];
  double s = 0;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) s += row_tv[n];
  s = block_sum(s, scr);
  if (threadIdx.x == 0) {
    sc->tv = s;
    sc->gscale = float(-2.0 / s);
    sc->hscale = paper ? 1.0f : float(2.0 * alpha * aux_scale / s);
    // stat[4]: 1 = zero variance; 2 = a variance past float32 gradients' reach (CPU: 2 / tv below
    // FLT_MIN makes the scale -2 / tv subnormal and then 0, and every gradient would shrink silently).
    if (!(s > 0)) stat[4] = 1;
    else if (!(2.0 / s >= double(FLT_MIN))) stat[4] = 2;
  }
}

// acc += c * x, lane by lane.
__device__ __forceinline__ void fma4(float4& acc, float c, const float4& x) {
  acc.x += c * x.x;
  acc.y += c * x.y;
  acc.z += c * x.z;
  acc.w += c * x.w;
}

// The decode works on columns of V = float or float4 (dIn % 4 == 0): these helpers apply an
// operation lane by lane, in lane order, so both widths sum each column in the same order.
__device__ __forceinline__ void fmav(float& acc, float c, float x) { acc += c * x; }
__device__ __forceinline__ void fmav(float4& acc, float c, const float4& x) { fma4(acc, c, x); }
__device__ __forceinline__ void dotv(float& s, float r, float q) { s += r * q; }
__device__ __forceinline__ void dotv(float& s, const float4& r, const float4& q) {
  s += r.x * q.x;
  s += r.y * q.y;
  s += r.z * q.z;
  s += r.w * q.w;
}
__device__ __forceinline__ float subv(float a, float b) { return a - b; }
__device__ __forceinline__ float4 subv(const float4& a, const float4& b) {
  return make_float4(a.x - b.x, a.y - b.y, a.z - b.z, a.w - b.w);
}
__device__ __forceinline__ void add_sq(double& s, float v) { s += double(v) * v; }
__device__ __forceinline__ void add_sq(double& s, const float4& v) {
  s += double(v.x) * v.x;
  s += double(v.y) * v.y;
  s += double(v.z) * v.z;
  s += double(v.w) * v.w;
}
__device__ __forceinline__ float absmax(float m, float v) { return fmaxf(m, fabsf(v)); }
__device__ __forceinline__ float absmax(float m, const float4& v) {
  return fmaxf(m, fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w))));
}
// Column c of b_dec, read as floats (its offset in the slab need not be 16-byte aligned).
template <typename V>
__device__ __forceinline__ V bias_col(const float* b, int64_t c);
template <>
__device__ __forceinline__ float bias_col<float>(const float* b, int64_t c) { return b[c]; }
template <>
__device__ __forceinline__ float4 bias_col<float4>(const float* b, int64_t c) {
  return make_float4(b[4 * c], b[4 * c + 1], b[4 * c + 2], b[4 * c + 3]);
}

template <typename V>
__device__ __forceinline__ V zerov();
template <>
__device__ __forceinline__ float zerov<float>() { return 0.0f; }
template <>
__device__ __forceinline__ float4 zerov<float4>() { return make_float4(0.0f, 0.0f, 0.0f, 0.0f); }

// acc + sum_j vals[j] W[idx[j]] for column c (codes equal to 0 skipped), the codes taken 4 at a
// time with their 4 row loads issued before the sums, so a thread keeps 4 independent gathers in
// flight (the order of the sums is unchanged). W has DV columns of V per row.
template <typename V>
__device__ __forceinline__ V decode_col(const float* vals, const int32_t* idx, int64_t K, const V* W, int64_t DV,
                                        int64_t c, V acc) {
  int64_t j = 0;
  for (; j + 4 <= K; j += 4) {
    float v[4];
    V w[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      v[u] = vals[j + u];
      w[u] = W[int64_t(idx[j + u]) * DV + c];
    }
#pragma unroll
    for (int u = 0; u < 4; ++u)
      if (v[u] != 0.0f) fmav(acc, v[u], w[u]);
  }
  for (; j < K; ++j) {
    const float v = vals[j];
    if (v != 0.0f) fmav(acc, v, W[int64_t(idx[j]) * DV + c]);
  }
  return acc;
}

// d loss / d pre of one row's codes (v, idx: K of them): scale * <resid, W_dec[idx]> where the
// code is positive, else 0; a warp per code.
template <typename V>
__device__ void code_grads(const float* v, const int32_t* idx, int64_t K, const V* resid, const V* W, int64_t DV,
                           float scale, float* out, int warp, int nw, int lane) {
  for (int64_t j = warp; j < K; j += nw) {
    if (!(v[j] > 0.0f)) {
      if (lane == 0) out[j] = 0.0f;
      continue;
    }
    const V* w = W + int64_t(idx[j]) * DV;
    float dot = 0.0f;
#pragma unroll 4
    for (int64_t c = lane; c < DV; c += 32) dotv(dot, resid[c], w[c]);
    dot = warp_sum(dot);
    if (lane == 0) out[j] = scale * dot;
  }
}

// CPU: the fused decode pass of sae_step, one block per row. E = x - x_hat; with AuxK,
// R = e_hat - e where e_hat = b_aux + sum a W_dec[aux] (b_aux: b_dec, or null for the paper's
// AuxK: no bias); d loss / d pre of each pair (0 when the
// code is 0); the row's squared norms (float64) and the maxima of |E|, |R|, |xc|. V = float4
// when dIn % 4 == 0 (16-byte gathers; this matters most for AuxK's dIn / 2 codes a row).
template <typename V>
__global__ void residual_kernel(const float* x, const float* xc, const float* W_dec, const float* b_dec, int64_t D,
                                const float* mv, const int32_t* mi, int64_t K, const float* av, const int32_t* ai,
                                int64_t Ka, const float* b_aux, const Scalars* sc, float* E, float* R, float* dpm, float* dpa,
                                double* rowd, float* rowf, int64_t N) {
  extern __shared__ float sh[];
  constexpr int64_t kW = int64_t(sizeof(V) / sizeof(float));
  const int64_t n = blockIdx.x, DV = D / kW;
  V* se = reinterpret_cast<V*>(sh);
  V* sr = reinterpret_cast<V*>(sh + D);
  __shared__ double dscr[32];
  __shared__ float fscr[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const V* W = reinterpret_cast<const V*>(W_dec);
  const V* xv = reinterpret_cast<const V*>(x + n * D);
  const V* xcv = reinterpret_cast<const V*>(xc + n * D);
  double sse = 0;
  float mE = 0.0f, mX = 0.0f;
  for (int64_t c = threadIdx.x; c < DV; c += blockDim.x) {
    const V acc = decode_col(mv + n * K, mi + n * K, K, W, DV, c, bias_col<V>(b_dec, c));
    const V e = subv(xv[c], acc);
    se[c] = e;
    reinterpret_cast<V*>(E + n * D)[c] = e;
    add_sq(sse, e);
    mE = absmax(mE, e);
    mX = absmax(mX, xcv[c]);
  }
  sse = block_sum(sse, dscr);  // synchronises: se is complete
  mE = block_max(mE, fscr);
  mX = block_max(mX, fscr);
  const float gscale = sc->gscale, hscale = sc->hscale;
  code_grads(mv + n * K, mi + n * K, K, se, W, DV, gscale, dpm + n * K, warp, nw, lane);
  double asse = 0;
  float mR = 0.0f;
  if (Ka > 0) {
    for (int64_t c = threadIdx.x; c < DV; c += blockDim.x) {
      const V acc = decode_col(av + n * Ka, ai + n * Ka, Ka, W, DV, c, b_aux ? bias_col<V>(b_aux, c) : zerov<V>());
      const V r = subv(acc, se[c]);
      sr[c] = r;
      reinterpret_cast<V*>(R + n * D)[c] = r;
      add_sq(asse, r);
      mR = absmax(mR, r);
    }
    asse = block_sum(asse, dscr);
    mR = block_max(mR, fscr);
    code_grads(av + n * Ka, ai + n * Ka, Ka, sr, W, DV, hscale, dpa + n * Ka, warp, nw, lane);
  }
  if (threadIdx.x == 0) {
    rowd[n] = sse;
    rowd[N + n] = asse;
    rowf[n] = mE;
    rowf[N + n] = mR;
    rowf[2 * N + n] = mX;
  }
}

__device__ __forceinline__ float addv(float a, float b) { return a + b; }
__device__ __forceinline__ float4 addv(const float4& a, const float4& b) {
  return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

// Most codes a warp of residual_fused_kernel holds (registers per lane: one V per code).
constexpr int kFusedCodes = 8;

// Warps and codes per warp of residual_fused_kernel for K codes a row (K <= 32 * kFusedCodes).
inline void fused_shape(int64_t K, int* nw, int* cpw) {
  *nw = int(std::min<int64_t>(32, std::max<int64_t>(1, (K + kFusedCodes - 1) / kFusedCodes)));
  *cpw = int((K + *nw - 1) / *nw);
}

// residual_kernel without per-pair AuxK codes (Ka == 0: no AuxK, or AuxK as dense GEMMs), reading
// each selected decoder row once instead of twice. A block per row; warp w holds the row's codes
// [w cpw, (w + 1) cpw). Per group of 32 columns (of V), lane l loads its codes' entries of column
// 32 g + l into registers and sums them; the warps' partial sums meet in shared memory (double
// buffered: one barrier per group); every warp forms the same E column from them (b_dec + the
// partials in warp order), and each lane adds its codes' products with E to running dot
// products, summed over the warp at the end: d loss / d pre = gscale <E, W_dec[idx]>. Same
// outputs as residual_kernel (rowd / rowf's AuxK entries 0), sums in another order.
// The body of the two kernels below.
template <typename V>
__device__ __forceinline__ void residual_fused_body(const float* x, const float* xc, const float* W_dec,
                                                    const float* b_dec, int64_t D, const float* mv, const int32_t* mi,
                                                    int64_t K, int cpw, const Scalars* sc, float* E, float* dpm,
                                                    double* rowd, float* rowf, int64_t N) {
  extern __shared__ float sh[];
  constexpr int64_t kW = int64_t(sizeof(V) / sizeof(float));
  const int64_t n = blockIdx.x, DV = D / kW;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  V* part = reinterpret_cast<V*>(sh);  // [2][nw][32]
  const V* W = reinterpret_cast<const V*>(W_dec);
  const V* xv = reinterpret_cast<const V*>(x + n * D);
  const V* xcv = reinterpret_cast<const V*>(xc + n * D);
  V* ev = reinterpret_cast<V*>(E + n * D);
  const int64_t j0 = int64_t(warp) * cpw;
  const int64_t left = K - j0;
  const int nc = left <= 0 ? 0 : left < cpw ? int(left) : cpw;
  float v[kFusedCodes], dot[kFusedCodes];
  int64_t row[kFusedCodes];
#pragma unroll
  for (int u = 0; u < kFusedCodes; ++u) {
    v[u] = u < nc ? mv[n * K + j0 + u] : 0.0f;
    row[u] = u < nc ? int64_t(mi[n * K + j0 + u]) * DV : 0;
    dot[u] = 0.0f;
  }
  double sse = 0;
  float mE = 0.0f, mX = 0.0f;
  const int64_t groups = (DV + 31) / 32;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t c = g * 32 + lane;
    const bool valid = c < DV;
    V w[kFusedCodes];
#pragma unroll
    for (int u = 0; u < kFusedCodes; ++u) w[u] = (u < nc && valid) ? W[row[u] + c] : zerov<V>();
    V p = zerov<V>();
#pragma unroll
    for (int u = 0; u < kFusedCodes; ++u)
      if (u < nc && v[u] != 0.0f) fmav(p, v[u], w[u]);
    V* buf = part + (g & 1) * int64_t(nw) * 32;
    buf[warp * 32 + lane] = p;
    __syncthreads();
    if (valid) {
      V acc = bias_col<V>(b_dec, c);
      for (int q = 0; q < nw; ++q) acc = addv(acc, buf[q * 32 + lane]);
      const V e = subv(xv[c], acc);
      if (warp == 0) {
        ev[c] = e;
        add_sq(sse, e);
        mE = absmax(mE, e);
        mX = absmax(mX, xcv[c]);
      }
#pragma unroll
      for (int u = 0; u < kFusedCodes; ++u)
        if (u < nc) dotv(dot[u], e, w[u]);
    }
  }
  const float gscale = sc->gscale;
#pragma unroll
  for (int u = 0; u < kFusedCodes; ++u) {
    if (u >= nc) break;  // uniform across the warp
    const float d = warp_sum(dot[u]);
    if (lane == 0) dpm[n * K + j0 + u] = v[u] > 0.0f ? gscale * d : 0.0f;
  }
  if (warp == 0) {
    sse = warp_sum(sse);
    mE = warp_max(mE);
    mX = warp_max(mX);
    if (lane == 0) {
      rowd[n] = sse;
      rowd[N + n] = 0.0;
      rowf[n] = mE;
      rowf[N + n] = 0.0f;
      rowf[2 * N + n] = mX;
    }
  }
}
// A block has 65536 registers. Unbounded, the kernel takes 102 a thread with float4 columns (72
// with float; sm_90), so no block of more than 19 warps (28) can launch: at k >= 153 (225) the
// launch failed with cudaErrorLaunchOutOfResources. Blocks of more than 16 warps (k > 128) take
// residual_fused_wide_kernel, bounded to 1024 threads (64 registers, a few spilled); the same
// sums in the same order.
template <typename V>
__global__ void residual_fused_kernel(const float* x, const float* xc, const float* W_dec, const float* b_dec,
                                      int64_t D, const float* mv, const int32_t* mi, int64_t K, int cpw,
                                      const Scalars* sc, float* E, float* dpm, double* rowd, float* rowf, int64_t N) {
  residual_fused_body<V>(x, xc, W_dec, b_dec, D, mv, mi, K, cpw, sc, E, dpm, rowd, rowf, N);
}
template <typename V>
__global__ void __launch_bounds__(1024)
    residual_fused_wide_kernel(const float* x, const float* xc, const float* W_dec, const float* b_dec, int64_t D,
                               const float* mv, const int32_t* mi, int64_t K, int cpw, const Scalars* sc, float* E,
                               float* dpm, double* rowd, float* rowf, int64_t N) {
  residual_fused_body<V>(x, xc, W_dec, b_dec, D, mv, mi, K, cpw, sc, E, dpm, rowd, rowf, N);
}

// The losses (CPU: st.fvu, st.auxk, st.loss) and the finite check before any update. The paper's
// AuxK (paper = 1) divides by rv = the sum of rowd[2N, 3N) (each row's ||e - mean e||^2) and sets
// hscale from it; a residual that does not vary gives no AuxK term (hscale 0).
__global__ void loss_kernel(const double* rowd, const float* rowf, int64_t N, int use_aux, double alpha,
                            double aux_scale, int paper, Scalars* sc, int* stat) {
  __shared__ double dscr[32];
  __shared__ float fscr[32];
  double s = 0, a = 0, rv = 0;
  float mE = 0, mR = 0, mX = 0;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
    s += rowd[n];
    a += rowd[N + n];
    if (paper) rv += rowd[2 * N + n];
    // fmaxf drops NaN; an infinite or NaN residual also makes the sums non-finite.
    mE = fmaxf(mE, rowf[n]);
    mR = fmaxf(mR, rowf[N + n]);
    mX = fmaxf(mX, rowf[2 * N + n]);
  }
  s = block_sum(s, dscr);
  a = block_sum(a, dscr);
  if (paper) rv = block_sum(rv, dscr);
  mE = block_max(mE, fscr);
  mR = block_max(mR, fscr);
  mX = block_max(mX, fscr);
  if (threadIdx.x == 0) {
    const double tv = sc->tv;
    sc->sse = s;
    sc->asse = a;
    sc->fvu = s / tv;
    sc->auxk = use_aux ? aux_scale * a / tv : 0.0;
    if (use_aux && paper) {
      const bool ok = rv > 0 && isfinite(rv);
      sc->auxk = ok ? a / rv : 0.0;
      sc->hscale = ok ? float(2.0 * alpha / rv) : 0.0f;
    }
    sc->loss = sc->fvu + alpha * sc->auxk;
    sc->maxE = mE;
    sc->maxR = mR;
    sc->maxX = mX;
    if (!(isfinite(sc->loss) && isfinite(mE) && isfinite(mR) && isfinite(mX))) stat[5] = 1;
  }
}

// The paper's AuxK: the codes' d loss / d pre, left as dot products by the decode, times hscale.
__global__ void scale_by_hscale_kernel(float* dpa, int64_t n, const Scalars* sc) {
  const float h = sc->hscale;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dpa[i] = h * dpa[i];
}

// Sort keys (the latent) and values (the pair id: main pairs n*K+j first, then AuxK pairs), so
// that a stable sort by latent gives the CPU's order: per latent, main pairs by row, then AuxK
// pairs by row.
__global__ void pair_keys_kernel(const int32_t* mi, int64_t NK, const int32_t* ai, int64_t NKa, uint32_t* keys,
                                 uint32_t* vals) {
  const int64_t L = NK + NKa;
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < L; q += int64_t(gridDim.x) * blockDim.x) {
    keys[q] = uint32_t(q < NK ? mi[q] : ai[q - NK]);
    vals[q] = uint32_t(q);
  }
}

// offs[l] = first position of latent l in the sorted keys (lower bound); offs[M] = L.
__global__ void offsets_kernel(const uint32_t* skeys, int64_t L, int64_t M, int32_t* offs) {
  for (int64_t l = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; l <= M; l += int64_t(gridDim.x) * blockDim.x) {
    int64_t lo = 0, hi = L;
    while (lo < hi) {
      int64_t mid = (lo + hi) >> 1;
      if (int64_t(skeys[mid]) < l) lo = mid + 1;
      else hi = mid;
    }
    offs[l] = int32_t(lo);
  }
}

__global__ void entries_kernel(const uint32_t* svals, int64_t L, int64_t NK, int64_t K, int64_t Ka, const float* mv,
                               const float* dpm, const float* av, const float* dpa, const Scalars* sc, Entry* ent) {
  const float gscale = sc->gscale, hscale = sc->hscale;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < L; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t id = svals[p];
    Entry e;
    if (id < NK) {
      e.row_aux = int32_t(id / K);
      e.coef = mv[id] * gscale;
      e.dpre = dpm[id];
    } else {
      const int64_t q = id - NK;
      e.row_aux = int32_t(q / Ka) | int32_t(0x80000000u);
      e.coef = av[q] * hscale;
      e.dpre = dpa[q];
    }
    ent[p] = e;
  }
}

// Fired mask and the number of positive codes (l0 = count / N).
__global__ void fired_kernel(const float* mv, const int32_t* mi, int64_t NK, uint8_t* fired,
                             unsigned long long* positive) {
  __shared__ unsigned long long scr[32];
  unsigned long long c = 0;
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < NK; q += int64_t(gridDim.x) * blockDim.x)
    if (mv[q] > 0.0f) {
      fired[mi[q]] = 1;
      ++c;
    }
  c = block_sum(c, scr);
  if (threadIdx.x == 0 && c) atomicAdd(positive, c);  // integer: order does not matter
}

// CPU: db_enc per latent and the overflow bounds, one warp per latent.
__global__ void latent_reduce_kernel(const int32_t* offs, const Entry* ent, int64_t M, const Scalars* sc,
                                     AuxDense ax, float* gbenc, uint8_t* suspect, int* stat) {
  const int lane = threadIdx.x & 31;
  const int64_t l = blockIdx.x * int64_t(blockDim.x >> 5) + (threadIdx.x >> 5);
  if (l >= M) return;  // whole warps leave together
  const double mE = sc->maxE, mR = sc->maxR, mX = sc->maxX;
  double s = 0, bdec = 0, benc = 0;
  for (int64_t q = offs[l] + lane; q < offs[l + 1]; q += 32) {
    const Entry e = ent[q];
    s += e.dpre;
    bdec += fabs(double(e.coef)) * (e.row_aux < 0 ? mR : mE);
    benc += fabs(double(e.dpre)) * mX;
  }
  s = warp_sum(s);
  bdec = warp_sum(bdec);
  benc = warp_sum(benc);
  if (lane == 0) {
    const int64_t dp = ax.pos(l);
    if (dp >= 0) {  // dense AuxK: its db part, and its rows' exact maxima added to the bounds
      s += ax.db[dp];
      bdec += double(ax.amax[2 * dp]);
      benc += double(ax.amax[2 * dp + 1]);
    }
    if (!(isfinite(s) && fabs(s) < kGradLimit)) atomicMin(&stat[2], int(l));
    gbenc[l] = float(s);
    suspect[l] = !(bdec < kGradLimit && benc < kGradLimit);
  }
}

// Column d of a latent's gradient rows (decoder a, encoder b) from its pairs [q0, q1) in order,
// then its dense AuxK rows (dense position dp, or -1) (CPU: the axpy loop of the per-latent pass).
__device__ __forceinline__ void latent_grad_col(int64_t d, int64_t D, int64_t q0, int64_t q1, int64_t dp,
                                                const Entry* ent, const float* E, const float* R, const float* xc,
                                                const AuxDense& ax, float& a, float& b) {
  a = 0.0f;
  b = 0.0f;
  for (int64_t q = q0; q < q1; ++q) {
    const Entry e = ent[q];
    const int64_t row = e.row_aux & 0x7fffffff;
    if (e.coef != 0.0f) a += e.coef * (e.row_aux < 0 ? R : E)[row * D + d];
    if (e.dpre != 0.0f) b += e.dpre * xc[row * D + d];
  }
  if (dp >= 0) {
    a += ax.GA[dp * D + d];
    b += ax.GA[(ax.nd + dp) * D + d];
  }
}

// The gradient rows of latent l into gd, ge (shared, D each; column d by the thread d mod
// blockDim.x). Returns whether the latent has pairs.
__device__ bool latent_grad_rows(int64_t l, int64_t D, const int32_t* offs, const Entry* ent, const float* E,
                                 const float* R, const float* xc, const AuxDense& ax, float* gd, float* ge) {
  const int64_t q0 = offs[l], q1 = offs[l + 1], dp = ax.pos(l);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float a, b;
    latent_grad_col(d, D, q0, q1, dp, ent, E, R, xc, ax, a, b);
    gd[d] = a;
    ge[d] = b;
  }
  return q1 > q0 || dp >= 0;
}

// CPU: the explicit check of rows whose bound is too large, column by column in registers (no
// shared memory: a block of 2 dIn floats would cap dIn at 12672 on sm_86 / sm_89).
__global__ void suspect_check_kernel(int64_t D, const int32_t* offs, const Entry* ent, const float* E, const float* R,
                                     const float* xc, AuxDense ax, const uint8_t* suspect, int* stat) {
  const int64_t l = blockIdx.x;
  if (!suspect[l]) return;
  const int64_t q0 = offs[l], q1 = offs[l + 1], dp = ax.pos(l);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float a, b;
    latent_grad_col(d, D, q0, q1, dp, ent, E, R, xc, ax, a, b);
    if (!(fabsf(a) < float(kGradLimit) && fabsf(b) < float(kGradLimit))) atomicMin(&stat[2], int(l));
  }
}

// db_dec = gscale sum E + hscale sum R - [apply_b_dec] sum_l db_enc[l] W_encT[l] (CPU order:
// block by block), then its overflow check.
__global__ void gbdec_kernel(const double* pE, int64_t cE, const double* pR, int64_t cR, const double* pW, int64_t cW,
                             int64_t D, const Scalars* sc, float* gbf, int* stat) {
  const int64_t d = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (d >= D) return;
  const double gs = sc->gscale, hs = sc->hscale;
  double g = 0;
  for (int64_t c = 0; c < cE; ++c) g += gs * pE[c * D + d];
  for (int64_t c = 0; c < cR; ++c) g += hs * pR[c * D + d];
  for (int64_t c = 0; c < cW; ++c) g -= pW[c * D + d];
  if (!(fabs(g) < kGradLimit)) atomicMin(&stat[3], int(d));
  gbf[d] = float(g);
}

__global__ void decide_kernel(int* stat) {
  int c = kGo;
  if (stat[1] != INT_MAX) c = kBadX;
  else if (stat[4] == 1) c = kZeroVar;
  else if (stat[4]) c = kHugeVar;
  else if (stat[5]) c = kBadLoss;
  else if (stat[2] != INT_MAX || stat[3] != INT_MAX) c = kBadGrad;
  stat[0] = c;
}

__device__ __forceinline__ void adam1(float* p, float* m, float* v, float g, const AdamArgs& a) {
  const float c1 = 1.0f - a.b1, c2 = 1.0f - a.b2;
  float mi = a.b1 * *m + c1 * g;
  float vi = a.b2 * *v + c2 * g * g;
  *m = mi;
  *v = vi;
  *p -= a.lr_t * mi / (sqrtf(vi) * a.inv_sqrt_bc2 + a.eps);
}

// adam1 on each lane of a float4 column (the same order as four adam1 calls).
__device__ __forceinline__ void adam4(float4& p, float4& m, float4& v, const float4& g, const AdamArgs& a) {
  adam1(&p.x, &m.x, &v.x, g.x, a);
  adam1(&p.y, &m.y, &v.y, g.y, a);
  adam1(&p.z, &m.z, &v.z, g.z, a);
  adam1(&p.w, &m.w, &v.w, g.w, a);
}

// CPU: the per-latent pass. mode 0 writes the dense gradient rows (grads slab layout); mode 1
// projects the decoder gradient off the decoder row, runs Adam on both rows and b_enc[l], and
// renormalises the decoder row; it does nothing unless the step was accepted.
__global__ void latent_update_kernel(int mode, int64_t D, int64_t M, const int32_t* offs, const Entry* ent,
                                     const float* E, const float* R, const float* xc, AuxDense ax, float* slab,
                                     float* mslab, float* vslab, const float* gbenc, float* grads, AdamArgs ad,
                                     const int* stat) {
  extern __shared__ float sh[];
  __shared__ float scr[32];
  const int64_t l = blockIdx.x;
  if (mode == 1 && stat[0] != kGo) return;
  float* gd = sh;
  float* ge = sh + D;
  const bool has = latent_grad_rows(l, D, offs, ent, E, R, xc, ax, gd, ge);
  if (mode == 0) {
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      grads[l * D + d] = ge[d];
      grads[M * D + l * D + d] = gd[d];
    }
    return;
  }
  float* wenc = slab + l * D;
  float* wdec = slab + M * D + l * D;
  if (has) {
    float par = 0.0f;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) par += gd[d] * wdec[d];
    par = block_sum(par, scr);
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) gd[d] += -par * wdec[d];
  }
  float nrm2 = 0.0f;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    adam1(wdec + d, mslab + M * D + l * D + d, vslab + M * D + l * D + d, gd[d], ad);
    adam1(wenc + d, mslab + l * D + d, vslab + l * D + d, ge[d], ad);
    nrm2 += wdec[d] * wdec[d];
  }
  if (threadIdx.x == 0) adam1(slab + 2 * M * D + l, mslab + 2 * M * D + l, vslab + 2 * M * D + l, gbenc[l], ad);
  nrm2 = block_sum(nrm2, scr);
  const double nrm = sqrt(double(nrm2));
  if (nrm > 0) {
    const float inv = float(1.0 / nrm);
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) wdec[d] *= inv;
  }
}

// The same pass with D % 4 == 0: float4 columns, and the pairs taken 4 at a time with all 8
// row loads issued before the sums (the per-column order of the sums is unchanged), so each
// thread keeps 8 independent 16-byte loads in flight instead of 2 dependent 4-byte ones. The
// updated decoder row waits in shared memory for its norm, so it is written once.
template <int n>
__device__ __forceinline__ void latent_pairs4(const Entry* e, int64_t c, int64_t D, const float* E, const float* R,
                                              const float* xc, float4& a, float4& b) {
  float4 ev[n], xv[n];
#pragma unroll
  for (int u = 0; u < n; ++u) {
    const int64_t row = e[u].row_aux & 0x7fffffff;
    ev[u] = reinterpret_cast<const float4*>((e[u].row_aux < 0 ? R : E) + row * D)[c];
    xv[u] = reinterpret_cast<const float4*>(xc + row * D)[c];
  }
#pragma unroll
  for (int u = 0; u < n; ++u) {
    if (e[u].coef != 0.0f) fma4(a, e[u].coef, ev[u]);
    if (e[u].dpre != 0.0f) fma4(b, e[u].dpre, xv[u]);
  }
}
// The update for D % 4 == 0 in two passes, so that the gathered rows come from L2, not memory.
// Pass 1: a block per (latent l, slice s of kSlice4 float4 columns), blockIdx.x = l fastest, so
// the blocks in flight share one slice of E, R and xc (N x 256 floats each: it stays in L2).
// It forms both gradient pieces from the latent's pairs, runs Adam on the encoder piece, and
// (mode 1) keeps the decoder piece in G with its dot product with the decoder row in
// parts[l * S + s]; mode 0 writes the raw gradients instead. Pass 2 (latent_dec_kernel) then
// projects, updates and renormalises each decoder row.
constexpr int kSlice4 = 64;
__global__ void __launch_bounds__(kSlice4) latent_slice_kernel(int mode, int64_t D, int64_t M, const int32_t* offs,
                                                               const Entry* ent, const float* E, const float* R,
                                                               const float* xc, AuxDense ax, float* slab, float* mslab,
                                                               float* vslab, const float* gbenc, float* grads,
                                                               float* G, float* parts, AdamArgs ad, const int* stat) {
  __shared__ float scr[32];
  if (mode == 1 && stat[0] != kGo) return;
  const int64_t l = blockIdx.x, s = blockIdx.y, S = gridDim.y, D4 = D >> 2;
  const int64_t c = s * kSlice4 + threadIdx.x;
  const bool in = c < D4;
  const int64_t q0 = offs[l], q1 = offs[l + 1];
  float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f), b = a;
  if (in) {
    int64_t q = q0;
    for (; q + 4 <= q1; q += 4) {
      Entry e[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) e[u] = ent[q + u];
      latent_pairs4<4>(e, c, D, E, R, xc, a, b);
    }
    for (; q < q1; ++q) latent_pairs4<1>(ent + q, c, D, E, R, xc, a, b);
    const int64_t dp = ax.pos(l);
    if (dp >= 0) {  // dense AuxK rows, after the main pairs (the CPU's order: main, then AuxK)
      const float4 gd = reinterpret_cast<const float4*>(ax.GA)[dp * D4 + c];
      const float4 ge = reinterpret_cast<const float4*>(ax.GA)[(ax.nd + dp) * D4 + c];
      a = make_float4(a.x + gd.x, a.y + gd.y, a.z + gd.z, a.w + gd.w);
      b = make_float4(b.x + ge.x, b.y + ge.y, b.z + ge.z, b.w + ge.w);
    }
  }
  if (mode == 0) {
    if (in) {
      reinterpret_cast<float4*>(grads)[l * D4 + c] = b;
      reinterpret_cast<float4*>(grads + M * D)[l * D4 + c] = a;
    }
    return;
  }
  float par = 0.0f;
  if (in) {
    const float4 w = reinterpret_cast<const float4*>(slab + M * D)[l * D4 + c];
    par += a.x * w.x;
    par += a.y * w.y;
    par += a.z * w.z;
    par += a.w * w.w;
    reinterpret_cast<float4*>(G)[l * D4 + c] = a;
    float4* wenc = reinterpret_cast<float4*>(slab) + l * D4 + c;
    float4* menc = reinterpret_cast<float4*>(mslab) + l * D4 + c;
    float4* venc = reinterpret_cast<float4*>(vslab) + l * D4 + c;
    float4 p = *wenc, me = *menc, ve = *venc;
    adam4(p, me, ve, b, ad);
    *wenc = p;
    *menc = me;
    *venc = ve;
  }
  par = block_sum(par, scr);
  if (threadIdx.x == 0) {
    parts[l * S + s] = par;
    if (s == 0) adam1(slab + 2 * M * D + l, mslab + 2 * M * D + l, vslab + 2 * M * D + l, gbenc[l], ad);
  }
}

// Pass 2: per decoder row, the gradient G less its component along the row (the sum of the
// slices' dot products, in slice order), Adam, and the renormalisation; the updated row waits in
// shared memory for its norm, so it is written once.
__global__ void latent_dec_kernel(int64_t D, int64_t M, int64_t S, const int32_t* offs, AuxDense ax, const float* G,
                                  const float* parts, float* slab, float* mslab, float* vslab, AdamArgs ad,
                                  const int* stat) {
  extern __shared__ float sh[];
  __shared__ float scr[32];
  if (stat[0] != kGo) return;
  const int64_t l = blockIdx.x, D4 = D >> 2;
  float4* row = reinterpret_cast<float4*>(sh);
  const bool has = offs[l + 1] > offs[l] || ax.pos(l) >= 0;
  float par = 0.0f;
  if (has)
    for (int64_t s = 0; s < S; ++s) par += parts[l * S + s];
  const float4* g4 = reinterpret_cast<const float4*>(G) + l * D4;
  float4* wdec = reinterpret_cast<float4*>(slab + M * D) + l * D4;
  float4* mdec = reinterpret_cast<float4*>(mslab + M * D) + l * D4;
  float4* vdec = reinterpret_cast<float4*>(vslab + M * D) + l * D4;
  float nrm2 = 0.0f;
  for (int64_t c = threadIdx.x; c < D4; c += blockDim.x) {
    float4 g = g4[c], w = wdec[c], m = mdec[c], v = vdec[c];
    if (has) fma4(g, -par, w);
    adam4(w, m, v, g, ad);
    mdec[c] = m;
    vdec[c] = v;
    row[c] = w;
    nrm2 += w.x * w.x;
    nrm2 += w.y * w.y;
    nrm2 += w.z * w.z;
    nrm2 += w.w * w.w;
  }
  nrm2 = block_sum(nrm2, scr);  // synchronises: the updated row is complete
  const double nrm = sqrt(double(nrm2));
  const float inv = nrm > 0 ? float(1.0 / nrm) : 1.0f;
  for (int64_t c = threadIdx.x; c < D4; c += blockDim.x) {
    float4 w = row[c];
    if (nrm > 0) {
      w.x *= inv;
      w.y *= inv;
      w.z *= inv;
      w.w *= inv;
    }
    wdec[c] = w;
  }
}

__global__ void bdec_adam_kernel(int64_t D, int64_t M, float* slab, float* mslab, float* vslab, const float* gbf,
                                 AdamArgs ad, const int* stat) {
  if (stat[0] != kGo) return;
  const int64_t o = 2 * M * D + M;
  for (int64_t d = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; d < D; d += int64_t(gridDim.x) * blockDim.x)
    adam1(slab + o + d, mslab + o + d, vslab + o + d, gbf[d], ad);
}

// ---- AuxK as dense GEMMs over the dead latents (aux_dense_forward / _backward). With dIn / 2
// codes a row, the pair formulation gathers N x dIn / 2 decoder rows several times (decode,
// code gradients, gradient rows); as GEMMs over [N, dead] code matrices, mostly zeros, the same
// sums run on tensor cores. The dead latents are taken in column chunks of C (bounded scratch).

// dpos[dead[q]] = q (dpos preset to -1).
__global__ void dead_pos_kernel(const int32_t* dead, int64_t nd, int32_t* dpos) {
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < nd; q += int64_t(gridDim.x) * blockDim.x)
    dpos[dead[q]] = int32_t(q);
}

// Wd[j, :] = W_dec[dead[j], :] for j < C.
__global__ void gather_rows_kernel(const float* W_dec, const int32_t* dead, int64_t C, int64_t D, float* Wd) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < C * D; i += int64_t(gridDim.x) * blockDim.x)
    Wd[i] = W_dec[int64_t(dead[i / D]) * D + i % D];
}

// The AuxK codes whose dead position falls in [c0, c0 + C), into the chunk's dense matrices
// (row-major [N, C], preset to 0; a row's AuxK latents are distinct, so no two pairs collide).
// Without Gc: A = the codes. With Gc = (R W_chunk^T) [N, C]: A = code x hscale (the weight of
// the row of R in dW_dec) and DP = d loss / d pre (hscale <R_n, W_dec[l]> where the code is
// positive, else 0; the CPU's code gradient).
__global__ void aux_scatter_kernel(const float* av, const int32_t* ai, const int32_t* dpos, int64_t NKa, int64_t Ka,
                                   int64_t c0, int64_t C, const Scalars* sc, const float* Gc, float* A, float* DP) {
  const float hs = sc->hscale;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < NKa; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = int64_t(dpos[ai[p]]) - c0;
    if (j < 0 || j >= C) continue;
    const int64_t at = (p / Ka) * C + j;
    const float v = av[p];
    if (!Gc) {
      A[at] = v;
      continue;
    }
    A[at] = v * hs;
    DP[at] = v > 0.0f ? hs * Gc[at] : 0.0f;
  }
}

// Per row: R = e_hat - E where e_hat = b_dec + (the codes' GEMM, in R on entry), b_dec null for
// the paper's AuxK; the row's squared norm (float64) and max |R| (CPU: the AuxK half of the fused
// decode pass).
__global__ void aux_resid_kernel(const float* E, const float* b_dec, int64_t D, float* R, double* rowd, float* rowf,
                                 int64_t N) {
  __shared__ double dscr[32];
  __shared__ float fscr[32];
  const int64_t n = blockIdx.x;
  double asse = 0;
  float mR = 0.0f;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const float r = (b_dec ? R[n * D + d] + b_dec[d] : R[n * D + d]) - E[n * D + d];
    R[n * D + d] = r;
    add_sq(asse, r);
    mR = absmax(mR, r);
  }
  asse = block_sum(asse, dscr);
  mR = block_max(mR, fscr);
  if (threadIdx.x == 0) {
    rowd[N + n] = asse;
    rowf[N + n] = mR;
  }
}

// amax[q] = (max |GA_dec row q|, max |GA_enc row q|), a non-finite element counting as infinite
// (so the bound fails and the explicit check sees it).
__global__ void aux_rowmax_kernel(const float* GA, int64_t nd, int64_t D, float* amax) {
  __shared__ float fscr[32];
  const int64_t q = blockIdx.x;
  for (int h = 0; h < 2; ++h) {
    const float* row = GA + (h * nd + q) * D;
    float m = 0.0f;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      const float a = fabsf(row[d]);
      m = isfinite(a) ? fmaxf(m, a) : INFINITY;
    }
    m = block_max(m, fscr);
    if (threadIdx.x == 0) amax[2 * q + h] = m;
  }
}

// out [N, D] = (with_bias ? b_dec : 0) + sum_j v W_dec[i] (codes with v == 0 skipped).
__global__ void decode_kernel(const float* W_dec, const float* b_dec, int64_t D, const float* v, const int32_t* idx,
                              int64_t K, int with_bias, float* out) {
  const int64_t n = blockIdx.x;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = with_bias ? b_dec[d] : 0.0f;
    for (int64_t j = 0; j < K; ++j) {
      float c = v[n * K + j];
      if (c != 0.0f) acc += c * W_dec[int64_t(idx[n * K + j]) * D + d];
    }
    out[n * D + d] = acc;
  }
}

// The shared memory a kernel's launch asks for (allow_dynamic_smem: the opt-in above 48 KiB less
// the kernel's static arrays).
template <typename F>
void allow_smem(F* kernel, size_t bytes, int device) {
  allow_dynamic_smem(kernel, bytes, device, "dIn is too large for the CUDA SAE kernels");
}

}  // namespace

// ---- the SAE object -------------------------------------------------------------------------

struct sk_sae_dev {
  int device = 0;
  int64_t D = 0, M = 0;
  bool apply_b_dec = true;
  cudaStream_t s = nullptr, copy = nullptr;
  cublasHandle_t blas = nullptr;
  const Cublas* lib = nullptr;
  float* params = nullptr;  // slab [W_encT | W_dec | b_enc | b_dec]
  float* m = nullptr;       // Adam moments, same layout
  float* v = nullptr;
  float* thr = nullptr;     // [M] JumpReLU thresholds, or null
  int64_t t = 0;
  DevBuf wbf;               // bf16 copy of W_encT (valid when wbf_fresh)
  bool wbf_fresh = false;
  void* pin[2] = {nullptr, nullptr};
  cudaEvent_t pin_ev[2] = {nullptr, nullptr};
  cudaEvent_t up_done = nullptr;
  std::vector<cudaEvent_t> timers;
  // Prefetched batches (sk_sae_i::prefetch): up to two, each with its own device buffer, copied
  // on stream `pf` (so a step's own uploads never queue behind them). Guarded by pf_mu: prefetch
  // may run on another thread while a step runs.
  struct Prefetch {
    const float* host = nullptr;  // null: empty
    int64_t N = 0;
    uint64_t age = 0;
    DevBuf buf;
    cudaEvent_t done = nullptr;
  };
  std::mutex pf_mu;
  cudaStream_t pf = nullptr;
  Prefetch pfs[2];
  uint64_t pf_clock = 0;
  // Prefetch buffers outgrown by a larger batch. prefetch runs on the JS thread, where cudaFree
  // would wait for the whole device (the step in flight): they are freed at the next step, on
  // the executor's thread, or when the SAE is destroyed.
  std::vector<void*> pf_retired;
  // workspace (grown as needed, kept between calls)
  DevBuf x, xc, xbf, pre, mv, mi, av, ai, dpm, dpa, E, R, rowd, rowf, keys, vals, skeys, svals, offs, ent, suspect,
      gbenc, pE, pR, pW, pX, mean, gbf, fired, scal, stat, cubtmp, dead, grads, pos, out, gdec, parts, selflags;
  DevBuf ad_pos, ad_A, ad_DP, ad_G, ad_W, ad_GA, ad_db, ad_max, ad_part;  // dense AuxK

  int64_t slab() const { return 2 * M * D + M + D; }
};

namespace {

void use(sk_sae_dev* S) { SK_CUDA(cudaSetDevice(S->device)); }

// What p points to: page-locked host memory (cudaHostAlloc / host_alloc / registered), device
// memory (*device = its device), or neither (pageable host memory).
cudaMemoryType memory_type(const void* p, int* device = nullptr) {
  cudaPointerAttributes at;
  if (cudaPointerGetAttributes(&at, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return cudaMemoryTypeUnregistered;
  }
  if (device) *device = at.device;
  return at.type;
}
bool is_pinned(const void* p) { return memory_type(p) == cudaMemoryTypeHost; }

// Host -> device: page-locked sources by one DMA; others through the pinned buffers, overlapping
// the host copy of one chunk with the transfer of the previous one. The SAE's stream waits for
// the copy (callers synchronise that stream before returning, so `src` may be reused after).
// SAEKIT_CUDA_STAGING=0 hands pageable sources to the driver instead (its own staging; the
// benchmark compares both).
void upload(sk_sae_dev* S, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  int dev = -1;
  const cudaMemoryType type = memory_type(src, &dev);
  if (type == cudaMemoryTypeDevice) {  // a device tensor's storage: copied on the device, in stream order
    SK_CHECK(dev == S->device, ErrorCode::Device, "the input is in the memory of cuda:", dev, " but the SAE is on cuda:",
             S->device);
    SK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, S->s));
    return;
  }
  const char* staging = std::getenv("SAEKIT_CUDA_STAGING");  // read per call: the bench toggles it
  if (type == cudaMemoryTypeHost || (staging && staging[0] == '0')) {
    SK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, S->copy));
    SK_CUDA(cudaEventRecord(S->up_done, S->copy));
    SK_CUDA(cudaStreamWaitEvent(S->s, S->up_done, 0));
    return;
  }
  size_t off = 0;
  int b = 0;
  while (off < bytes) {
    const size_t n = std::min(kStageBytes, bytes - off);
    SK_CUDA(cudaEventSynchronize(S->pin_ev[b]));
    std::memcpy(S->pin[b], static_cast<const char*>(src) + off, n);
    SK_CUDA(cudaMemcpyAsync(static_cast<char*>(dst) + off, S->pin[b], n, cudaMemcpyHostToDevice, S->copy));
    SK_CUDA(cudaEventRecord(S->pin_ev[b], S->copy));
    off += n;
    b ^= 1;
  }
  SK_CUDA(cudaEventRecord(S->up_done, S->copy));
  SK_CUDA(cudaStreamWaitEvent(S->s, S->up_done, 0));
}

// Device -> host after the work queued on the SAE's stream, double-buffered the same way.
void download(sk_sae_dev* S, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  if (is_pinned(dst)) {
    SK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, S->s));
    SK_CUDA(cudaStreamSynchronize(S->s));
    return;
  }
  size_t off = 0, prev_off = 0, prev_n = 0;
  int b = 0, prev_b = -1;
  while (off < bytes) {
    const size_t n = std::min(kStageBytes, bytes - off);
    SK_CUDA(cudaEventSynchronize(S->pin_ev[b]));  // an upload may still read this buffer
    SK_CUDA(cudaMemcpyAsync(S->pin[b], static_cast<const char*>(src) + off, n, cudaMemcpyDeviceToHost, S->s));
    SK_CUDA(cudaEventRecord(S->pin_ev[b], S->s));
    if (prev_b >= 0) {
      SK_CUDA(cudaEventSynchronize(S->pin_ev[prev_b]));
      std::memcpy(static_cast<char*>(dst) + prev_off, S->pin[prev_b], prev_n);
    }
    prev_off = off;
    prev_n = n;
    prev_b = b;
    off += n;
    b ^= 1;
  }
  SK_CUDA(cudaEventSynchronize(S->pin_ev[prev_b]));
  std::memcpy(static_cast<char*>(dst) + prev_off, S->pin[prev_b], prev_n);
}

void sync(sk_sae_dev* S, const char* what) {
  check(cudaGetLastError(), what);
  check(cudaStreamSynchronize(S->s), what);
}

// The prefetched copy of (host_x, N), if there is one: it becomes S->x (the entry keeps the old
// x buffer, free since the previous step has completed) and the SAE's stream waits for its copy.
float* take_prefetched(sk_sae_dev* S, const float* host_x, int64_t N) {
  // The outgrown buffers are freed outside pf_mu: cudaFree waits for the whole device, and a
  // prefetch on the JS thread would wait for it on the lock. Each is taken off the list before it
  // is freed; after a failed cudaFree the ones not tried yet go back (freed later, never twice).
  std::vector<void*> retired;
  {
    std::lock_guard<std::mutex> lock(S->pf_mu);
    retired.swap(S->pf_retired);
  }
  for (size_t i = 0; i < retired.size(); ++i) {
    const cudaError_t e = cudaFree(retired[i]);  // (their copies, if any, end first: cudaFree waits)
    if (e != cudaSuccess) {
      std::lock_guard<std::mutex> lock(S->pf_mu);
      S->pf_retired.insert(S->pf_retired.end(), retired.begin() + std::ptrdiff_t(i) + 1, retired.end());
      SK_CUDA(e);
    }
  }
  std::lock_guard<std::mutex> lock(S->pf_mu);
  for (auto& p : S->pfs)
    if (p.host == host_x && p.N == N && host_x != nullptr) {
      std::swap(S->x.p, p.buf.p);
      std::swap(S->x.cap, p.buf.cap);
      p.host = nullptr;
      SK_CUDA(cudaStreamWaitEvent(S->s, p.done, 0));
      return static_cast<float*>(S->x.p);
    }
  return nullptr;
}

void check_precision(int p) {
  SK_CHECK(p == SK_PREC_F32 || p == SK_PREC_TF32 || p == SK_PREC_BF16, ErrorCode::Arg,
           "Expected precision 0 (float32), 1 (tf32) or 2 (bf16) but received ", p);
}

// Whether the bf16 encoder GEMM writes bf16 pre-activations (as sparsify's autocast does): half
// the bytes for the GEMM to write and the selection to read; each pre-activation is rounded to
// bf16 (relative 2^-9) before b_enc is added. SAEKIT_CUDA_PRE16=0 keeps float32 output (read per
// call: the benchmark compares both).
bool pre16(int prec) {
  if (prec != SK_PREC_BF16) return false;
  const char* e = std::getenv("SAEKIT_CUDA_PRE16");
  return !(e && e[0] == '0');
}

// Whether the step's decode pass reads each selected decoder row once (residual_fused_kernel)
// rather than twice (residual_kernel): for at most 32 * kFusedCodes codes a row and no per-pair
// AuxK codes. SAEKIT_CUDA_DECODE=plain keeps residual_kernel (read per call: the benchmark
// compares both).
bool fused_decode(int64_t K) {
  if (K > 32 * kFusedCodes) return false;
  const char* e = std::getenv("SAEKIT_CUDA_DECODE");
  return !(e && std::strcmp(e, "plain") == 0);
}

// Rows per encoder tile: the pre-activation tile (`elem` bytes each) stays under
// SAEKIT_CUDA_TILE_BYTES (512 MiB; at least 4096, so tests can force many tiles).
int64_t tile_rows(const sk_sae_dev* S, int64_t N, int64_t elem) {
  static const int64_t budget = env_bytes("SAEKIT_CUDA_TILE_BYTES", int64_t(512) << 20);
  int64_t R = budget / (S->M * elem);
  R = std::max<int64_t>(1, std::min<int64_t>(R, N));
  return std::min<int64_t>(R, INT32_MAX);
}

// pre[rows, M] = xc[rows, D] W_encT^T: column-major pre^T[M, rows] = W^T (op T on W [D x M]
// column-major) times xc^T ([D x rows] column-major). bf16 precision writes bf16 when out16.
void encoder_gemm(sk_sae_dev* S, int prec, const float* xc, const uint16_t* xbf, int64_t rows, void* pre,
                  bool out16) {
  const int64_t D = S->D, M = S->M;
  const float one = 1.0f, zero = 0.0f;
  cublasStatus_t st;
  if (prec == SK_PREC_F32) {
    st = S->lib->sgemm(S->blas, kOpT, kOpN, int(M), int(rows), int(D), &one, S->params, int(D), xc, int(D), &zero,
                       static_cast<float*>(pre), int(M));
  } else if (prec == SK_PREC_TF32) {
    st = S->lib->gemm_ex(S->blas, kOpT, kOpN, int(M), int(rows), int(D), &one, S->params, kR32F, int(D), xc, kR32F,
                         int(D), &zero, pre, kR32F, int(M), kCompute32FFastTF32, kGemmDefault);
  } else {
    st = S->lib->gemm_ex(S->blas, kOpT, kOpN, int(M), int(rows), int(D), &one, S->wbf.p, kR16BF, int(D), xbf, kR16BF,
                         int(D), &zero, pre, out16 ? kR16BF : kR32F, int(M), kCompute32F, kGemmDefault);
  }
  SK_CHECK(st == 0, ErrorCode::Device, "the encoder GEMM (cuBLAS) failed: ", cublas_status_name(st), " (rows ", rows,
           ", dIn ", D, ", numLatents ", M, ", precision ", prec, ")");
}

cudaEvent_t timer(sk_sae_dev* S, size_t i) {
  while (S->timers.size() <= i) {
    cudaEvent_t e;
    SK_CUDA(cudaEventCreate(&e));
    S->timers.push_back(e);
  }
  return S->timers[i];
}
double elapsed(sk_sae_dev* S, size_t a, size_t b) {
  float ms = 0;
  if (cudaEventElapsedTime(&ms, S->timers[a], S->timers[b]) != cudaSuccess) return 0;
  return double(ms) * 1e-3;
}

// x (already on the device in S->x) -> xc (+ bf16), then per row tile: GEMM and selection.
// Main codes [N, K] into mv/mi; with Ka > 0 the AuxK codes over `dead` into av/ai; `positive`
// (JumpReLU check) receives each row's number of active latents. With `times`, events
// 2 + 3t .. 4 + 3t bracket tile t's GEMM and selection.
// The encoder's inputs for N rows of x (already in S->x): xc = x - b_dec (and its bf16 copy, with
// W_enc's refreshed when stale), and the pre-activation tile buffer (R rows; bf16 when out16).
// forward() and preacts share it, so preacts returns exactly what the selection sees.
struct EncodeSetup {
  const float* xc;
  const uint16_t* xbf;
  bool out16;
  int64_t R;
  void* pre;
};
EncodeSetup prepare_encode(sk_sae_dev* S, int64_t N, int prec) {
  const int64_t D = S->D, M = S->M;
  float* xc = S->xc.as<float>(N * D);
  uint16_t* xbf = prec == SK_PREC_BF16 ? S->xbf.as<uint16_t>(N * D) : nullptr;
  if (prec == SK_PREC_BF16 && !S->wbf_fresh) {
    to_bf16_kernel<<<grid_for(M * D, 256), 256, 0, S->s>>>(S->params, S->wbf.as<uint16_t>(M * D), M * D);
    SK_LAUNCHED("to_bf16_kernel");
    S->wbf_fresh = true;
  }
  prep_x_kernel<<<grid_for(N * D, 256), 256, 0, S->s>>>(S->x.as<float>(N * D), S->params + 2 * M * D + M,
                                                        S->apply_b_dec ? 1 : 0, N * D, D, xc, xbf);
  SK_LAUNCHED("prep_x_kernel");
  const bool out16 = pre16(prec);
  const int64_t R = tile_rows(S, N, out16 ? 2 : 4);
  return EncodeSetup{xc, xbf, out16, R, S->pre.ensure(size_t(R * M) * (out16 ? 2 : 4))};
}

void forward(sk_sae_dev* S, int64_t N, int prec, int64_t K, const float* thr, float* mv, int32_t* mi, int64_t Ka,
             const int32_t* dead, int64_t num_dead, float* av, int32_t* ai, int32_t* positive, int64_t* tiles_out,
             bool times) {
  const int64_t D = S->D, M = S->M;
  const EncodeSetup e = prepare_encode(S, N, prec);
  const int64_t R = e.R;
  const float* pre32 = e.out16 ? nullptr : static_cast<const float*>(e.pre);
  const uint16_t* pre_b16 = e.out16 ? static_cast<const uint16_t*>(e.pre) : nullptr;
  const float* b_enc = S->params + 2 * M * D;
  int64_t t = 0;
  for (int64_t r0 = 0; r0 < N; r0 += R, ++t) {
    const int64_t rows = std::min(R, N - r0);
    if (times) SK_CUDA(cudaEventRecord(timer(S, size_t(2 + 3 * t)), S->s));
    encoder_gemm(S, prec, e.xc + r0 * D, e.xbf ? e.xbf + r0 * D : nullptr, rows, e.pre, e.out16);
    if (times) SK_CUDA(cudaEventRecord(timer(S, size_t(3 + 3 * t)), S->s));
    SelectArgs a;
    a.pre = pre32;
    a.pre16 = pre_b16;
    a.ld = M;
    a.bias = b_enc;
    a.thr = thr;
    a.C = M;
    a.k = K;
    a.out_v = mv + r0 * K;
    a.out_i = mi + r0 * K;
    a.positive = positive ? positive + r0 : nullptr;
    a.flags = S->selflags.as<int32_t>(rows);
    topk_select(a, rows, S->s);
    if (Ka > 0) {
      SelectArgs b;
      b.pre = pre32;
      b.pre16 = pre_b16;
      b.ld = M;
      b.bias = b_enc;
      b.cand = dead;
      b.C = num_dead;
      b.k = Ka;
      b.out_v = av + r0 * Ka;
      b.out_i = ai + r0 * Ka;
      b.flags = a.flags;
      topk_select(b, rows, S->s);
    }
    if (times) SK_CUDA(cudaEventRecord(timer(S, size_t(4 + 3 * t)), S->s));
  }
  *tiles_out = t;
}

// ---- AuxK as dense GEMMs ----------------------------------------------------------------------

// Whether AuxK runs as dense GEMMs over the dead latents (aux_dense_*) rather than per pair.
// SAEKIT_CUDA_AUXK=dense or =sparse forces one (tests, benchmarks). Otherwise dense when rows keep
// at least 64 AuxK codes (dIn >= 128) and there are at most 256 dead latents per code a row keeps
// (64 in float32, which has no tensor cores: the GEMMs' work grows with the dead latents, the
// pairs' with the codes), with the gradient rows (2 x dead x dIn floats) within
// SAEKIT_CUDA_AUXK_BYTES (default 4 GiB) and a quarter of the free device memory, counting as
// free what the dense path's own buffers already hold (`held`): otherwise a step that went dense
// lowered the free memory the next identical step saw, which could then take the per-pair path
// and sum in another order.
bool aux_dense_wanted(int64_t D, int64_t Ka, int64_t nd, int prec, size_t held) {
  const char* e = std::getenv("SAEKIT_CUDA_AUXK");
  if (e && std::strcmp(e, "dense") == 0) return true;
  if (e && std::strcmp(e, "sparse") == 0) return false;
  if (Ka < 64 || nd > (prec == SK_PREC_F32 ? 64 : 256) * Ka) return false;
  static const int64_t budget = env_bytes("SAEKIT_CUDA_AUXK_BYTES", int64_t(4) << 30);
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  const int64_t need = 2 * nd * D * int64_t(sizeof(float));
  return need <= budget && need <= int64_t((free_b + held) / 4);
}

// Dead latents per column chunk: the chunk's three [N, C] scratch matrices stay within 256 MiB
// each (SAEKIT_CUDA_AUXK_CHUNK sets it, tests).
int64_t aux_chunk(int64_t N, int64_t nd) {
  const char* e = std::getenv("SAEKIT_CUDA_AUXK_CHUNK");
  int64_t C = e ? std::atoll(e) : 0;
  if (C < 1) C = std::max<int64_t>(1, (int64_t(64) << 20) / N);
  return std::min(C, nd);
}

// C = op(A) op(B) (+ C when accumulating), column-major float32: exact (prec F32) or on TF32
// tensor cores (tf32 and bf16 precision: AuxK trains dead latents back to life, a 1e-3 relative
// error in its gradients is far below the noise of the batch).
void gemm_f32(sk_sae_dev* S, int prec, int ta, int tb, int64_t m, int64_t n, int64_t k, const float* A, int64_t lda,
              const float* B, int64_t ldb, bool accumulate, float* C, int64_t ldc, const char* what) {
  const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  cublasStatus_t st =
      prec == SK_PREC_F32
          ? S->lib->sgemm(S->blas, ta, tb, int(m), int(n), int(k), &one, A, int(lda), B, int(ldb), &beta, C, int(ldc))
          : S->lib->gemm_ex(S->blas, ta, tb, int(m), int(n), int(k), &one, A, kR32F, int(lda), B, kR32F, int(ldb),
                            &beta, C, kR32F, int(ldc), kCompute32FFastTF32, kGemmDefault);
  SK_CHECK(st == 0, ErrorCode::Device, "the AuxK ", what, " GEMM (cuBLAS) failed: ", cublas_status_name(st), " (", m,
           " x ", n, " x ", k, ")");
}

// Dense AuxK, part 1 (before the loss): e_hat = b_dec + A W_dead for the AuxK codes A [N, dead],
// chunk by chunk, then R = e_hat - E with its row sums (rowd / rowf's AuxK halves).
void aux_dense_forward(sk_sae_dev* S, int64_t N, int64_t Ka, const int32_t* dead, int64_t nd, int prec,
                       const float* av, const int32_t* ai, const Scalars* sc, const float* E, float* R, double* rowd,
                       float* rowf, bool paper) {
  const int64_t D = S->D, M = S->M, C = aux_chunk(N, nd);
  cudaStream_t s = S->s;
  int32_t* dpos = S->ad_pos.as<int32_t>(M);
  SK_CUDA(cudaMemsetAsync(dpos, 0xff, size_t(M) * sizeof(int32_t), s));
  dead_pos_kernel<<<grid_for(nd, 256), 256, 0, s>>>(dead, nd, dpos);
  SK_LAUNCHED("dead_pos_kernel");
  float* A = S->ad_A.as<float>(N * C);
  float* Wd = S->ad_W.as<float>(C * D);
  const float* W_dec = S->params + M * D;
  for (int64_t c0 = 0; c0 < nd; c0 += C) {
    const int64_t Cn = std::min(C, nd - c0);
    SK_CUDA(cudaMemsetAsync(A, 0, size_t(N * Cn) * sizeof(float), s));
    aux_scatter_kernel<<<grid_for(N * Ka, 256), 256, 0, s>>>(av, ai, dpos, N * Ka, Ka, c0, Cn, sc, nullptr, A,
                                                              nullptr);
    SK_LAUNCHED("aux_scatter_kernel");
    gather_rows_kernel<<<grid_for(Cn * D, 256), 256, 0, s>>>(W_dec, dead + c0, Cn, D, Wd);
    SK_LAUNCHED("gather_rows_kernel");
    // e_hat^T [D, N] (+)= Wd^T [D, Cn] A^T [Cn, N] (column-major views of the row-major arrays).
    gemm_f32(S, prec, kOpN, kOpN, D, N, Cn, Wd, D, A, Cn, c0 > 0, R, D, "decode");
  }
  aux_resid_kernel<<<unsigned(N), 256, 0, s>>>(E, paper ? nullptr : S->params + 2 * M * D + M, D, R, rowd, rowf, N);
  SK_LAUNCHED("aux_resid_kernel");
}

// Dense AuxK, part 2: per chunk, Gc = R W_chunk^T, the codes' gradients DP and weights A, then
// the gradient rows GA_dec = A^T R and GA_enc = DP^T xc and db = the column sums of DP
// (float64); then each row's max |.| for the overflow bound.
AuxDense aux_dense_backward(sk_sae_dev* S, int64_t N, int64_t Ka, const int32_t* dead, int64_t nd, int prec,
                            const float* av, const int32_t* ai, const Scalars* sc, const float* R, const float* xc) {
  const int64_t D = S->D, M = S->M, C = aux_chunk(N, nd), cN = (N + kChunk - 1) / kChunk;
  cudaStream_t s = S->s;
  const int32_t* dpos = S->ad_pos.as<int32_t>(M);
  float* A = S->ad_A.as<float>(N * C);
  float* DP = S->ad_DP.as<float>(N * C);
  float* Gc = S->ad_G.as<float>(N * C);
  float* Wd = S->ad_W.as<float>(C * D);
  double* part = S->ad_part.as<double>(cN * C);
  float* GA = S->ad_GA.as<float>(2 * nd * D);
  double* db = S->ad_db.as<double>(nd);
  float* amax = S->ad_max.as<float>(2 * nd);
  const float* W_dec = S->params + M * D;
  for (int64_t c0 = 0; c0 < nd; c0 += C) {
    const int64_t Cn = std::min(C, nd - c0);
    if (nd > C) {  // one chunk: Wd still holds it from the forward part
      gather_rows_kernel<<<grid_for(Cn * D, 256), 256, 0, s>>>(W_dec, dead + c0, Cn, D, Wd);
      SK_LAUNCHED("gather_rows_kernel");
    }
    // Gc^T [Cn, N] = Wd [Cn, D] R^T [D, N].
    gemm_f32(S, prec, kOpT, kOpN, Cn, N, D, Wd, D, R, D, false, Gc, Cn, "code gradient");
    SK_CUDA(cudaMemsetAsync(A, 0, size_t(N * Cn) * sizeof(float), s));
    SK_CUDA(cudaMemsetAsync(DP, 0, size_t(N * Cn) * sizeof(float), s));
    aux_scatter_kernel<<<grid_for(N * Ka, 256), 256, 0, s>>>(av, ai, dpos, N * Ka, Ka, c0, Cn, sc, Gc, A, DP);
    SK_LAUNCHED("aux_scatter_kernel");
    // GA_dec^T [D, Cn] = R^T [D, N] A [N, Cn]; GA_enc^T likewise with xc and DP.
    gemm_f32(S, prec, kOpN, kOpT, D, Cn, N, R, D, A, Cn, false, GA + c0 * D, D, "decoder gradient");
    gemm_f32(S, prec, kOpN, kOpT, D, Cn, N, xc, D, DP, Cn, false, GA + (nd + c0) * D, D, "encoder gradient");
    colsum_partial_kernel<<<colsum_grid(Cn, cN), 128, 0, s>>>(DP, N, Cn, nullptr, part);
    SK_LAUNCHED("colsum_partial_kernel");
    mean_kernel<<<grid_for(Cn, 128), 128, 0, s>>>(part, cN, Cn, 1.0, db + c0);
    SK_LAUNCHED("mean_kernel (AuxK db_enc)");
  }
  aux_rowmax_kernel<<<unsigned(nd), 256, 0, s>>>(GA, nd, D, amax);
  SK_LAUNCHED("aux_rowmax_kernel");
  return AuxDense{dpos, GA, db, amax, nd};
}

static_assert(kMaxSelectK == SK_SAE_MAX_CODES, "core/sae_device.h documents the selection's limit");

void check_k(const sk_sae_dev* S, int64_t k, const char* what) {
  const int64_t hi = std::min<int64_t>(S->M, kMaxSelectK);
  SK_CHECK(k >= 1 && k <= hi, ErrorCode::Arg, "Expected ", what, " in [1, ", hi, "] but received ", k,
           S->M > kMaxSelectK ? " (the CUDA selection keeps at most 8192 codes per row)" : "");
}

// ---- slots --------------------------------------------------------------------------------

int sae_device_count(sk_status* st, int* count) {
  SK_CUDA_SLOT(st, {
    *count = 0;
    std::string why = unavailable_reason(count);
    (void)why;  // count stays 0 when CUDA cannot run; the reason is sk_backend_score's to give
  });
}

int sae_device_name(sk_status* st, int device, char* out, size_t len) {
  SK_CUDA_SLOT(st, {
    cudaDeviceProp p;
    SK_CUDA(cudaGetDeviceProperties(&p, device));
    std::snprintf(out, len, "%s, %.0f GiB, sm_%d%d%s", p.name, double(p.totalGlobalMem) / double(1ull << 30), p.major,
                  p.minor, device_unusable(device).empty() ? "" : " (unusable: this build needs sm_80 or newer)");
  });
}

void destroy_sae(sk_sae_dev* S) {
  if (!S) return;
  cudaSetDevice(S->device);
  if (S->s) cudaStreamSynchronize(S->s);
  if (S->copy) cudaStreamSynchronize(S->copy);
  if (S->pf) cudaStreamSynchronize(S->pf);
  for (auto& p : S->pfs) {
    p.buf.release();
    if (p.done) cudaEventDestroy(p.done);
  }
  for (void* p : S->pf_retired) cudaFree(p);
  DevBuf* bufs[] = {&S->wbf, &S->x, &S->xc, &S->xbf, &S->pre, &S->mv, &S->mi, &S->av, &S->ai, &S->dpm, &S->dpa,
                    &S->E, &S->R, &S->rowd, &S->rowf, &S->keys, &S->vals, &S->skeys, &S->svals, &S->offs, &S->ent,
                    &S->suspect, &S->gbenc, &S->pE, &S->pR, &S->pW, &S->pX, &S->mean, &S->gbf, &S->fired, &S->scal,
                    &S->stat, &S->cubtmp, &S->dead, &S->grads, &S->pos, &S->out, &S->gdec, &S->parts, &S->selflags,
                    &S->ad_pos, &S->ad_A, &S->ad_DP, &S->ad_G, &S->ad_W, &S->ad_GA, &S->ad_db, &S->ad_max,
                    &S->ad_part};
  for (DevBuf* b : bufs) b->release();
  cudaFree(S->params);
  cudaFree(S->m);
  cudaFree(S->v);
  cudaFree(S->thr);
  for (int i = 0; i < 2; ++i) {
    if (S->pin[i]) cudaFreeHost(S->pin[i]);
    if (S->pin_ev[i]) cudaEventDestroy(S->pin_ev[i]);
  }
  if (S->up_done) cudaEventDestroy(S->up_done);
  for (cudaEvent_t e : S->timers) cudaEventDestroy(e);
  if (S->blas && S->lib) S->lib->destroy(S->blas);
  if (S->s) cudaStreamDestroy(S->s);
  if (S->copy) cudaStreamDestroy(S->copy);
  if (S->pf) cudaStreamDestroy(S->pf);
  delete S;
}

int sae_create(sk_status* st, sk_sae_dev** out, int device, int64_t D, int64_t M, int apply_b_dec,
               const float* host_slab, const float* host_threshold) {
  SK_CUDA_SLOT(st, {
    sk_sae_dev* S = nullptr;
    *out = nullptr;
    SK_CHECK(D >= 1 && M >= 1, ErrorCode::Shape, "Expected dIn >= 1 and numLatents >= 1 but received ", D, " and ", M);
    SK_CHECK(D <= INT32_MAX && M <= INT32_MAX && 2 * M * D <= (int64_t(1) << 40), ErrorCode::Shape,
             "the SAE is too large for the CUDA backend (dIn ", D, ", numLatents ", M, ")");
    SK_CHECK(host_slab != nullptr, ErrorCode::Arg, "Expected the parameter slab");
    std::string why = unavailable_reason(nullptr);
    SK_CHECK(why.empty(), ErrorCode::Device, "CUDA is not available: ", why);
    why = device_unusable(device);  // index in range, compute capability 8.0 or newer
    SK_CHECK(why.empty(), ErrorCode::Device, why);
    S = new sk_sae_dev();
    try {
    S->device = device;
    S->D = D;
    S->M = M;
    S->apply_b_dec = apply_b_dec != 0;
    S->lib = cublas(nullptr);
    use(S);
    SK_CUDA(cudaStreamCreateWithFlags(&S->s, cudaStreamNonBlocking));
    SK_CUDA(cudaStreamCreateWithFlags(&S->copy, cudaStreamNonBlocking));
    SK_CUDA(cudaStreamCreateWithFlags(&S->pf, cudaStreamNonBlocking));
    for (auto& p : S->pfs) SK_CUDA(cudaEventCreateWithFlags(&p.done, cudaEventDisableTiming));
    cublasStatus_t cs = S->lib->create(&S->blas);
    if (cs != 0) S->blas = nullptr;  // destroy_sae must not destroy what cuBLAS may have left there
    SK_CHECK(cs == 0, ErrorCode::Device, "cublasCreate failed: ", cublas_status_name(cs));
    cs = S->lib->set_stream(S->blas, S->s);
    SK_CHECK(cs == 0, ErrorCode::Device, "cublasSetStream failed: ", cublas_status_name(cs));
    for (int i = 0; i < 2; ++i) {
      SK_CUDA(cudaHostAlloc(&S->pin[i], kStageBytes, cudaHostAllocDefault));
      SK_CUDA(cudaEventCreateWithFlags(&S->pin_ev[i], cudaEventDisableTiming));
    }
    SK_CUDA(cudaEventCreateWithFlags(&S->up_done, cudaEventDisableTiming));
    const size_t bytes = size_t(S->slab()) * sizeof(float);
    SK_CUDA(cudaMalloc(&S->params, bytes));
    SK_CUDA(cudaMalloc(&S->m, bytes));
    SK_CUDA(cudaMalloc(&S->v, bytes));
    SK_CUDA(cudaMemsetAsync(S->m, 0, bytes, S->s));
    SK_CUDA(cudaMemsetAsync(S->v, 0, bytes, S->s));
    upload(S, S->params, host_slab, bytes);
    if (host_threshold) {
      SK_CUDA(cudaMalloc(&S->thr, size_t(M) * sizeof(float)));
      upload(S, S->thr, host_threshold, size_t(M) * sizeof(float));
    }
    sync(S, "create");
    } catch (...) {
      destroy_sae(S);
      throw;
    }
    *out = S;
  });
}

int sae_get_params(sk_status* st, sk_sae_dev* S, float* host_slab) {
  SK_CUDA_SLOT(st, {
    use(S);
    download(S, host_slab, S->params, size_t(S->slab()) * sizeof(float));
  });
}

int sae_set_params(sk_status* st, sk_sae_dev* S, const float* host_slab) {
  SK_CUDA_SLOT(st, {
    use(S);
    S->wbf_fresh = false;
    upload(S, S->params, host_slab, size_t(S->slab()) * sizeof(float));
    sync(S, "set_params");
  });
}

int sae_get_adam(sk_status* st, sk_sae_dev* S, float* host_m, float* host_v, int64_t* t) {
  SK_CUDA_SLOT(st, {
    use(S);
    download(S, host_m, S->m, size_t(S->slab()) * sizeof(float));
    download(S, host_v, S->v, size_t(S->slab()) * sizeof(float));
    *t = S->t;
  });
}

int sae_set_adam(sk_status* st, sk_sae_dev* S, const float* host_m, const float* host_v, int64_t t) {
  SK_CUDA_SLOT(st, {
    SK_CHECK(t >= 0, ErrorCode::Arg, "Expected Adam's step count t >= 0 but received ", t);
    SK_CHECK((host_m == nullptr) == (host_v == nullptr), ErrorCode::Arg, "set_adam: Expected both moments or neither");
    use(S);
    const size_t bytes = size_t(S->slab()) * sizeof(float);
    if (host_m == nullptr) {  // zeros, set on the device (a new optimizer: no host copy to send)
      SK_CUDA(cudaMemsetAsync(S->m, 0, bytes, S->s));
      SK_CUDA(cudaMemsetAsync(S->v, 0, bytes, S->s));
    } else {
      upload(S, S->m, host_m, bytes);
      upload(S, S->v, host_v, bytes);
    }
    sync(S, "set_adam");
    S->t = t;
  });
}

int sae_encode(sk_status* st, sk_sae_dev* S, const float* host_x, int64_t N, int64_t k, int precision,
               float* host_vals, int32_t* host_idx) {
  SK_CUDA_SLOT(st, {
    SK_CHECK(N >= 0, ErrorCode::Shape, "Expected N >= 0 rows but received ", N);
    check_precision(precision);
    check_k(S, k, "k");
    if (N == 0) return 0;
    use(S);
    const int64_t D = S->D;
    upload(S, S->x.as<float>(N * D), host_x, size_t(N * D) * sizeof(float));
    float* mv = S->mv.as<float>(N * k);
    int32_t* mi = S->mi.as<int32_t>(N * k);
    int32_t* pos = S->thr ? S->pos.as<int32_t>(N) : nullptr;
    int64_t tiles = 0;
    forward(S, N, precision, k, S->thr, mv, mi, 0, nullptr, 0, nullptr, nullptr, pos, &tiles, false);
    if (pos) {
      std::vector<int32_t> counts(static_cast<size_t>(N));
      download(S, counts.data(), pos, size_t(N) * sizeof(int32_t));
      int64_t worst = 0, row = 0;
      for (int64_t n = 0; n < N; ++n)
        if (counts[size_t(n)] > worst) {
          worst = counts[size_t(n)];
          row = n;
        }
      const int64_t hi = std::min<int64_t>(S->M, kMaxSelectK);
      // Errors about one row of x: JS sees its index as the error's `row`.
      if (worst > k && k >= hi)
        throw Error(ErrorCode::Shape,
                    fmt("Expected at most ", hi, " active latents per row for a JumpReLU encode on cuda:", S->device,
                        " (the most codes per row the CUDA selection keeps) but row ", row, " of x has ", worst,
                        "; encode it with the SAE on the CPU"),
                    row);
      if (worst > k)
        throw Error(ErrorCode::Shape,
                    fmt("JumpReLU encode: row ", row, " has ", worst, " active latents but only k = ", k,
                        " codes per row were requested; call again with k >= ", worst),
                    row);
    }
    download(S, host_vals, mv, size_t(N * k) * sizeof(float));
    download(S, host_idx, mi, size_t(N * k) * sizeof(int32_t));
  });
}

int sae_decode(sk_status* st, sk_sae_dev* S, const float* host_vals, const int32_t* host_idx, int64_t N, int64_t k,
               int with_bias, float* host_out) {
  SK_CUDA_SLOT(st, {
    SK_CHECK(N >= 0 && k >= 0, ErrorCode::Shape, "Expected N >= 0 and k >= 0 but received ", N, " and ", k);
    if (N == 0) return 0;
    SK_CHECK(N <= INT32_MAX, ErrorCode::Shape, "too many rows for one decode: ", N);
    use(S);
    const int64_t D = S->D, M = S->M;
    float* v = S->mv.as<float>(std::max<int64_t>(1, N * k));
    int32_t* idx = S->mi.as<int32_t>(std::max<int64_t>(1, N * k));
    upload(S, v, host_vals, size_t(N * k) * sizeof(float));
    upload(S, idx, host_idx, size_t(N * k) * sizeof(int32_t));
    float* out = S->out.as<float>(N * D);
    decode_kernel<<<unsigned(N), D >= 512 ? 256 : 128, 0, S->s>>>(S->params + M * D, S->params + 2 * M * D + M, D, v,
                                                                   idx, k, with_bias, out);
    SK_LAUNCHED("decode_kernel");
    download(S, host_out, out, size_t(N * D) * sizeof(float));
  });
}

int sae_preacts(sk_status* st, sk_sae_dev* S, const float* host_x, int64_t N, int precision, float* host_out) {
  SK_CUDA_SLOT(st, {
    SK_CHECK(N >= 0, ErrorCode::Shape, "Expected N >= 0 rows but received ", N);
    check_precision(precision);
    if (N == 0) return 0;
    use(S);
    const int64_t D = S->D, M = S->M;
    upload(S, S->x.as<float>(N * D), host_x, size_t(N * D) * sizeof(float));
    const EncodeSetup e = prepare_encode(S, N, precision);
    const int64_t R = e.R;
    float* out = e.out16 ? S->out.as<float>(R * M) : static_cast<float*>(e.pre);
    for (int64_t r0 = 0; r0 < N; r0 += R) {
      const int64_t rows = std::min(R, N - r0);
      encoder_gemm(S, precision, e.xc + r0 * D, e.xbf ? e.xbf + r0 * D : nullptr, rows, e.pre, e.out16);
      if (e.out16)
        bf16_bias_kernel<<<grid_for(rows * M, 256), 256, 0, S->s>>>(static_cast<const uint16_t*>(e.pre),
                                                                     S->params + 2 * M * D, rows * M, M, out);
      else
        add_bias_kernel<<<grid_for(rows * M, 256), 256, 0, S->s>>>(out, S->params + 2 * M * D, rows * M, M);
      SK_LAUNCHED("add_bias_kernel");
      download(S, host_out + r0 * M, out, size_t(rows * M) * sizeof(float));
    }
  });
}

int sae_step(sk_status* st, sk_sae_dev* S, const float* host_x, int64_t N, const sk_sae_step_opts* o,
             sk_sae_step_stats* stats) {
  SK_CUDA_SLOT(st, {
    SK_CHECK(S->thr == nullptr, ErrorCode::Arg, "training (step) is not supported for a JumpReLU SAE yet (it encodes "
             "and decodes; training it comes later)");
    SK_CHECK(o != nullptr && stats != nullptr, ErrorCode::Arg, "step: Expected options and a stats record");
    SK_CHECK(N >= 1, ErrorCode::Shape, "Expected at least 1 row for x but received ", N);
    SK_CHECK(N <= INT32_MAX, ErrorCode::Shape, "too many rows for one step: ", N);
    check_precision(o->precision);
    check_k(S, o->k, "k");
    SK_CHECK(o->num_dead >= 0 && (o->num_dead == 0 || o->host_dead != nullptr), ErrorCode::Arg,
             "step: Expected a dead-latent list of ", o->num_dead, " entries");
    SK_CHECK(!o->want_grads || o->host_grads != nullptr, ErrorCode::Arg, "step: want_grads without a gradient buffer");
    SK_CHECK(std::isfinite(o->auxk_alpha) && o->auxk_alpha >= 0.0f, ErrorCode::Arg,
             "Expected a finite auxk_alpha >= 0 but received ", o->auxk_alpha);
    if (!o->want_grads)
      SK_CHECK(std::isfinite(o->lr) && o->lr >= 0.0f && o->beta1 >= 0.0f && o->beta1 < 1.0f && o->beta2 >= 0.0f &&
                   o->beta2 < 1.0f && std::isfinite(o->eps) && o->eps >= 0.0f,
               ErrorCode::Arg, "Expected Adam's lr >= 0, beta1 and beta2 in [0, 1) and eps >= 0 (all finite) but "
               "received lr ", o->lr, ", beta1 ", o->beta1, ", beta2 ", o->beta2, ", eps ", o->eps);
    const int64_t D = S->D, M = S->M, K = o->k, N64 = N;
    for (int64_t q = 0; q < o->num_dead; ++q) {
      const int32_t l = o->host_dead[q];
      SK_CHECK(l >= 0 && l < M && (q == 0 || l > o->host_dead[q - 1]), ErrorCode::Arg,
               "Expected dead latents sorted ascending in [0, ", M, ") but entry ", q, " is ", l);
    }
    SK_CHECK(o->auxk_variant == 0 || o->auxk_variant == 1, ErrorCode::Arg, "Expected auxk_variant 0 (sparsify) or 1 "
             "(paper) but received ", o->auxk_variant);
    // AuxK sizes: k_aux = D/2, k_aux = min(k_aux, dead); sparsify's scale = min(dead / k_aux, 1),
    // the paper's none (cpu::AuxKVariant).
    const int64_t kaux_base = D / 2;
    const bool use_aux = o->num_dead > 0 && kaux_base > 0 && o->auxk_alpha != 0.0f;
    const bool paper = use_aux && o->auxk_variant == 1;
    const int64_t Ka = use_aux ? std::min<int64_t>(kaux_base, o->num_dead) : 0;
    const double aux_scale = !use_aux ? 0.0 : paper ? 1.0 : std::min(double(o->num_dead) / double(kaux_base), 1.0);
    SK_CHECK(Ka <= kMaxSelectK, ErrorCode::Arg, "AuxK would keep ", Ka, " codes per row; the CUDA selection keeps at "
             "most 8192 (dIn <= 16384)");
    use(S);  // aux_dense_wanted asks this device for its free memory
    const size_t aux_held = S->ad_pos.cap + S->ad_A.cap + S->ad_DP.cap + S->ad_G.cap + S->ad_W.cap + S->ad_GA.cap +
                            S->ad_db.cap + S->ad_max.cap + S->ad_part.cap;
    const bool dense_aux = Ka > 0 && aux_dense_wanted(D, Ka, o->num_dead, o->precision, aux_held);
    const int64_t NK = N64 * K, NKa = N64 * Ka, L = NK + (dense_aux ? 0 : NKa);  // dense: AuxK not in the pairs
    SK_CHECK(L <= INT32_MAX, ErrorCode::Shape, "too many (row, latent) pairs in one step: ", L);
    cudaStream_t s = S->s;
    // float4 kernels when rows are 16-byte multiples (SAEKIT_CUDA_VEC=0: the scalar ones, tests).
    static const bool vec_ok = [] {
      const char* e = std::getenv("SAEKIT_CUDA_VEC");
      return !(e && e[0] == '0');
    }();
    const bool vec4 = vec_ok && D % 4 == 0;
    const int threads4 = int(std::min<int64_t>(256, ((D / 4 + 31) / 32) * 32));

    // ---- inputs and status
    float* x = take_prefetched(S, host_x, N64);
    if (x == nullptr) {
      x = S->x.as<float>(N64 * D);
      upload(S, x, host_x, size_t(N64 * D) * sizeof(float));
    }
    int32_t* dead = nullptr;
    if (Ka > 0) {
      dead = S->dead.as<int32_t>(o->num_dead);
      upload(S, dead, o->host_dead, size_t(o->num_dead) * sizeof(int32_t));
    }
    int* stat = S->stat.as<int>(kStatWords);
    Scalars* sc = S->scal.as<Scalars>(1);
    SK_CUDA(cudaEventRecord(timer(S, 0), s));
    init_status_kernel<<<1, 1, 0, s>>>(stat, &sc->positive);
    SK_LAUNCHED("init_status_kernel");
    check_x_kernel<<<grid_for(N64 * D, 256), 256, 0, s>>>(x, N64 * D, D, stat);
    SK_LAUNCHED("check_x_kernel");

    // ---- total variance (depends on x only) and the loss scales
    const int64_t cN = (N64 + kChunk - 1) / kChunk;
    const dim3 gcol = colsum_grid(D, cN);
    double* pX = S->pX.as<double>(cN * D);
    double* mean = S->mean.as<double>(D);
    double* rowd = S->rowd.as<double>(3 * N64);  // sse | asse | tv per row
    float* rowf = S->rowf.as<float>(3 * N64);
    colsum_partial_kernel<<<gcol, 128, 0, s>>>(x, N64, D, nullptr, pX);
    SK_LAUNCHED("colsum_partial_kernel");
    mean_kernel<<<grid_for(D, 128), 128, 0, s>>>(pX, cN, D, 1.0 / double(N64), mean);
    SK_LAUNCHED("mean_kernel");
    row_tv_kernel<<<unsigned(N64), 256, 0, s>>>(x, mean, D, rowd + 2 * N64);
    SK_LAUNCHED("row_tv_kernel");
    tv_kernel<<<1, 1024, 0, s>>>(rowd + 2 * N64, N64, double(o->auxk_alpha), aux_scale, paper ? 1 : 0, sc, stat);
    SK_LAUNCHED("tv_kernel");
    SK_CUDA(cudaEventRecord(timer(S, 1), s));

    // ---- encode: GEMM + selection per row tile
    float* mv = S->mv.as<float>(NK);
    int32_t* mi = S->mi.as<int32_t>(NK);
    float* av = Ka ? S->av.as<float>(NKa) : nullptr;
    int32_t* ai = Ka ? S->ai.as<int32_t>(NKa) : nullptr;
    int64_t tiles = 0;
    forward(S, N64, o->precision, K, nullptr, mv, mi, Ka, dead, o->num_dead, av, ai, nullptr, &tiles, true);
    const size_t ev_fwd = size_t(2 + 3 * tiles);
    SK_CUDA(cudaEventRecord(timer(S, ev_fwd), s));

    // ---- decode, residuals, d loss / d pre, losses
    const float* xc = S->xc.as<float>(N64 * D);
    const float* W_encT = S->params;
    const float* W_dec = S->params + M * D;
    const float* b_dec = S->params + 2 * M * D + M;
    float* E = S->E.as<float>(N64 * D);
    float* R = Ka ? S->R.as<float>(N64 * D) : nullptr;
    float* dpm = S->dpm.as<float>(NK);
    const int64_t Kp = dense_aux ? 0 : Ka;  // AuxK codes decoded per pair
    float* dpa = Kp ? S->dpa.as<float>(NKa) : nullptr;
    if (Kp == 0 && fused_decode(K)) {
      int nw = 1, cpw = 1;
      fused_shape(K, &nw, &cpw);
      const size_t smem = size_t(2 * nw * 32) * (vec4 ? sizeof(float4) : sizeof(float));
      // More than 16 warps, or more than the unbounded kernel's registers allow on this device
      // (none today: 102 registers leave room for 19 warps): the kernel bounded to 1024 threads.
      auto* kernel = vec4 ? residual_fused_kernel<float4> : residual_fused_kernel<float>;
      if (nw > 16 || 32 * nw > func_max_threads(kernel, S->device))
        kernel = vec4 ? residual_fused_wide_kernel<float4> : residual_fused_wide_kernel<float>;
      allow_smem(kernel, smem, S->device);
      kernel<<<unsigned(N64), unsigned(32 * nw), smem, s>>>(x, xc, W_dec, b_dec, D, mv, mi, K, cpw, sc, E, dpm, rowd,
                                                           rowf, N64);
      SK_LAUNCHED("residual_fused_kernel");
    } else {
      const size_t smem = size_t(Kp ? 2 : 1) * size_t(D) * sizeof(float);
      auto* kernel = vec4 ? residual_kernel<float4> : residual_kernel<float>;
      allow_smem(kernel, smem, S->device);
      kernel<<<unsigned(N64), 256, smem, s>>>(x, xc, W_dec, b_dec, D, mv, mi, K, av, ai, Kp, paper ? nullptr : b_dec, sc,
                                              E, R, dpm, dpa, rowd, rowf, N64);
      SK_LAUNCHED("residual_kernel");
    }
    if (dense_aux) aux_dense_forward(S, N64, Ka, dead, o->num_dead, o->precision, av, ai, sc, E, R, rowd, rowf, paper);
    // Column sums of E (float64, fixed order): db_dec's, and the paper's AuxK normaliser
    // rv = sum ||e - mean e||^2 per row into rowd[2N, 3N) (x's tv there is already summed).
    double* pE = S->pE.as<double>(cN * D);
    colsum_partial_kernel<<<gcol, 128, 0, s>>>(E, N64, D, nullptr, pE);
    SK_LAUNCHED("colsum_partial_kernel");
    if (paper) {
      mean_kernel<<<grid_for(D, 128), 128, 0, s>>>(pE, cN, D, 1.0 / double(N64), mean);
      SK_LAUNCHED("mean_kernel");
      row_tv_kernel<<<unsigned(N64), 256, 0, s>>>(E, mean, D, rowd + 2 * N64);
      SK_LAUNCHED("row_tv_kernel");
    }
    loss_kernel<<<1, 1024, 0, s>>>(rowd, rowf, N64, use_aux ? 1 : 0, double(o->auxk_alpha), aux_scale, paper ? 1 : 0, sc,
                                   stat);
    SK_LAUNCHED("loss_kernel");
    if (paper && Kp) {
      scale_by_hscale_kernel<<<grid_for(NKa, 256), 256, 0, s>>>(dpa, NKa, sc);
      SK_LAUNCHED("scale_by_hscale_kernel");
    }
    SK_CUDA(cudaEventRecord(timer(S, ev_fwd + 1), s));
    AuxDense ax;
    if (dense_aux) ax = aux_dense_backward(S, N64, Ka, dead, o->num_dead, o->precision, av, ai, sc, R, xc);

    // ---- group the pairs by latent (stable radix sort: per latent, main pairs by row, then AuxK)
    uint32_t* keys = S->keys.as<uint32_t>(L);
    uint32_t* vals = S->vals.as<uint32_t>(L);
    uint32_t* skeys = S->skeys.as<uint32_t>(L);
    uint32_t* svals = S->svals.as<uint32_t>(L);
    pair_keys_kernel<<<grid_for(L, 256), 256, 0, s>>>(mi, NK, ai, L - NK, keys, vals);
    SK_LAUNCHED("pair_keys_kernel");
    int end_bit = 1;
    while ((int64_t(1) << end_bit) < M) ++end_bit;
    size_t tmp_bytes = 0;
    sort_pairs_u32(nullptr, &tmp_bytes, keys, skeys, vals, svals, L, end_bit, s);
    sort_pairs_u32(S->cubtmp.ensure(tmp_bytes), &tmp_bytes, keys, skeys, vals, svals, L, end_bit, s);
    int32_t* offs = S->offs.as<int32_t>(M + 1);
    offsets_kernel<<<grid_for(M + 1, 256), 256, 0, s>>>(skeys, L, M, offs);
    SK_LAUNCHED("offsets_kernel");
    Entry* ent = S->ent.as<Entry>(L);
    entries_kernel<<<grid_for(L, 256), 256, 0, s>>>(svals, L, NK, K, std::max<int64_t>(Ka, 1), mv, dpm, av, dpa, sc,
                                                     ent);
    SK_LAUNCHED("entries_kernel");
    uint8_t* fired = S->fired.as<uint8_t>(M);
    SK_CUDA(cudaMemsetAsync(fired, 0, size_t(M), s));
    fired_kernel<<<grid_for(NK, 256, 1024), 256, 0, s>>>(mv, mi, NK, fired, &sc->positive);
    SK_LAUNCHED("fired_kernel");

    // ---- db_enc, overflow bounds, db_dec, decision
    float* gbenc = S->gbenc.as<float>(M);
    uint8_t* suspect = S->suspect.as<uint8_t>(M);
    latent_reduce_kernel<<<unsigned((M + 7) / 8), 256, 0, s>>>(offs, ent, M, sc, ax, gbenc, suspect, stat);
    SK_LAUNCHED("latent_reduce_kernel");
    const int threads_l = D >= 1024 ? 256 : 128;
    const size_t smem_l = 2 * size_t(D) * sizeof(float);  // latent_update_kernel's gradient rows
    suspect_check_kernel<<<unsigned(M), threads_l, 0, s>>>(D, offs, ent, E, R, xc, ax, suspect, stat);
    SK_LAUNCHED("suspect_check_kernel");
    const int64_t cM = (M + kChunk - 1) / kChunk;
    // The paper's e_hat has no b_dec: R gives b_dec no gradient.
    double* pR = Ka && !paper ? S->pR.as<double>(cN * D) : nullptr;
    double* pW = S->apply_b_dec ? S->pW.as<double>(cM * D) : nullptr;
    if (pR) colsum_partial_kernel<<<gcol, 128, 0, s>>>(R, N64, D, nullptr, pR);
    SK_LAUNCHED("colsum_partial_kernel");
    if (pW) {
      colsum_partial_kernel<<<colsum_grid(D, cM), 128, 0, s>>>(W_encT, M, D, gbenc, pW);
      SK_LAUNCHED("colsum_partial_kernel");
    }
    float* gbf = S->gbf.as<float>(D);
    gbdec_kernel<<<grid_for(D, 128), 128, 0, s>>>(pE, cN, pR, pR ? cN : 0, pW, pW ? cM : 0, D, sc, gbf, stat);
    SK_LAUNCHED("gbdec_kernel");
    decide_kernel<<<1, 1, 0, s>>>(stat);
    SK_LAUNCHED("decide_kernel");
    SK_CUDA(cudaEventRecord(timer(S, ev_fwd + 2), s));

    // ---- gradients out, or the fused update (gated on the decision)
    AdamArgs ad{};
    const int64_t t_next = S->t + 1;
    float* grads = nullptr;
    if (!vec4) allow_smem(latent_update_kernel, smem_l, S->device);
    const dim3 slices(unsigned(M), unsigned((D / 4 + kSlice4 - 1) / kSlice4));
    if (o->want_grads) {
      grads = S->grads.as<float>(S->slab());
      if (vec4)
        latent_slice_kernel<<<slices, kSlice4, 0, s>>>(0, D, M, offs, ent, E, R, xc, ax, S->params, S->m, S->v, gbenc,
                                                       grads, nullptr, nullptr, ad, stat);
      else
        latent_update_kernel<<<unsigned(M), threads_l, smem_l, s>>>(0, D, M, offs, ent, E, R, xc, ax, S->params, S->m,
                                                                    S->v, gbenc, grads, ad, stat);
      SK_LAUNCHED("latent_update_kernel (gradients)");
      SK_CUDA(cudaMemcpyAsync(grads + 2 * M * D, gbenc, size_t(M) * sizeof(float), cudaMemcpyDeviceToDevice, s));
      SK_CUDA(cudaMemcpyAsync(grads + 2 * M * D + M, gbf, size_t(D) * sizeof(float), cudaMemcpyDeviceToDevice, s));
    } else {
      const double b1t = std::pow(double(o->beta1), double(t_next));  // float64, as the CPU backend
      const double b2t = std::pow(double(o->beta2), double(t_next));
      ad.b1 = o->beta1;
      ad.b2 = o->beta2;
      ad.eps = o->eps;
      ad.lr_t = float(double(o->lr) / (1.0 - b1t));
      ad.inv_sqrt_bc2 = float(1.0 / std::sqrt(1.0 - b2t));
      if (vec4) {
        float* G = S->gdec.as<float>(M * D);
        float* parts = S->parts.as<float>(M * int64_t(slices.y));
        // Checked before the first update is queued: a dIn the decoder pass cannot take must fail
        // the step with every parameter as it was, not after the encoder's update.
        const size_t smem_d = size_t(D) * sizeof(float);
        allow_smem(latent_dec_kernel, smem_d, S->device);
        latent_slice_kernel<<<slices, kSlice4, 0, s>>>(1, D, M, offs, ent, E, R, xc, ax, S->params, S->m, S->v, gbenc,
                                                       nullptr, G, parts, ad, stat);
        SK_LAUNCHED("latent_slice_kernel");
        latent_dec_kernel<<<unsigned(M), threads4, smem_d, s>>>(D, M, int64_t(slices.y), offs, ax, G, parts,
                                                               S->params, S->m, S->v, ad, stat);
        SK_LAUNCHED("latent_dec_kernel");
      } else
        latent_update_kernel<<<unsigned(M), threads_l, smem_l, s>>>(1, D, M, offs, ent, E, R, xc, ax, S->params, S->m,
                                                                    S->v, gbenc, nullptr, ad, stat);
      SK_LAUNCHED("latent_update_kernel (Adam)");
      bdec_adam_kernel<<<grid_for(D, 256), 256, 0, s>>>(D, M, S->params, S->m, S->v, gbf, ad, stat);
      SK_LAUNCHED("bdec_adam_kernel");
    }
    SK_CUDA(cudaEventRecord(timer(S, ev_fwd + 3), s));

    // ---- results
    Scalars h{};
    int hs[kStatWords];
    download(S, &h, sc, sizeof(Scalars));
    download(S, hs, stat, sizeof(hs));
    sync(S, "step");
    if (hs[0] == kBadX) {
      const int64_t n = hs[1];
      std::vector<float> row(static_cast<size_t>(D));  // x may be device memory: read the row through a copy
      SK_CUDA(cudaMemcpy(row.data(), host_x + n * D, size_t(D) * sizeof(float), cudaMemcpyDefault));
      const float* r = row.data();
      int64_t d = 0;
      while (d < D && std::isfinite(r[d])) ++d;
      throw Error(ErrorCode::NonFinite, fmt("Expected finite values in x but row ", n, " has ", (d < D ? js_nonfinite(r[d]) : "a non-finite value"),
                                            " at column ", d), n);
    }
    SK_CHECK(hs[0] != kZeroVar, ErrorCode::Arg, "Expected a batch x with nonzero variance (at least two different "
             "rows) but all ", N64, " rows are identical: the FVU is undefined");
    SK_CHECK(hs[0] != kHugeVar, ErrorCode::Arg, "Expected a batch x whose total variance float32 gradients can "
             "scale (at most 1.7e38) but it is ", h.tv, ": scale the inputs down (the Trainer's normalize: "
             "'expected-norm' does)");
    SK_CHECK(hs[0] != kBadLoss, ErrorCode::NonFinite, "the loss became non-finite (fvu ", h.fvu, ", auxk ", h.auxk,
             "); the parameters were left unchanged. Check the inputs and weights (in training, also the learning rate)");
    if (hs[0] == kBadGrad) {
      if (hs[2] != INT_MAX)
        throw Error(ErrorCode::NonFinite, fmt("the gradient of latent ", hs[2], " overflowed; the parameters were "
                                              "left unchanged. The gradients grow as 1 / the scale of the inputs (the "
                                              "FVU divides by their variance): if the inputs are tiny, normalize them "
                                              "(the Trainer's normalize: 'expected-norm') or rescale them; otherwise "
                                              "check the weights (in training, also the learning rate)"));
      throw Error(ErrorCode::NonFinite, fmt("the gradient of b_dec[", hs[3], "] overflowed; the parameters were left "
                                            "unchanged. The gradients grow as 1 / the scale of the inputs (the FVU "
                                            "divides by their variance): if the inputs are tiny, normalize them (the "
                                            "Trainer's normalize: 'expected-norm') or rescale them; otherwise check "
                                            "the weights (in training, also the learning rate)"));
    }
    SK_CHECK(hs[0] == kGo, ErrorCode::Internal, "step: unknown device status ", hs[0]);
    if (o->want_grads) {
      download(S, o->host_grads, grads, size_t(S->slab()) * sizeof(float));
    } else {
      S->t = t_next;
      S->wbf_fresh = false;
    }
    if (stats->host_fired) download(S, stats->host_fired, fired, size_t(M));
    stats->loss = h.loss;
    stats->fvu = h.fvu;
    stats->auxk = h.auxk;
    stats->l0 = double(h.positive) / double(N64);
    stats->num_dead = o->num_dead;
    double gemm = 0, select = 0;
    for (int64_t t = 0; t < tiles; ++t) {
      gemm += elapsed(S, size_t(2 + 3 * t), size_t(3 + 3 * t));
      select += elapsed(S, size_t(3 + 3 * t), size_t(4 + 3 * t));
    }
    stats->seconds[0] = gemm;
    stats->seconds[1] = select;
    stats->seconds[2] = elapsed(S, 0, 1) + elapsed(S, ev_fwd, ev_fwd + 1);
    stats->seconds[3] = elapsed(S, ev_fwd + 1, ev_fwd + 2);
    stats->seconds[4] = elapsed(S, ev_fwd + 2, ev_fwd + 3);
  });
}

int sae_prefetch(sk_status* st, sk_sae_dev* S, const float* host_x, int64_t N) {
  SK_CUDA_SLOT(st, {
    SK_CHECK(N >= 0, ErrorCode::Shape, "prefetch: expected N >= 0 rows but received ", N);
    if (N == 0) {  // withdraw any prefetch of host_x
      std::lock_guard<std::mutex> lock(S->pf_mu);
      for (auto& p : S->pfs)
        if (p.host == host_x) p.host = nullptr;
      return 0;
    }
    SK_CHECK(host_x != nullptr && is_pinned(host_x), ErrorCode::Arg,
             "prefetch: host_x must be page-locked memory from host_alloc");
    use(S);
    std::lock_guard<std::mutex> lock(S->pf_mu);
    // The empty entry, else the older one (its copy, if still running, precedes this one on `pf`).
    sk_sae_dev::Prefetch* e = S->pfs[0].host == nullptr ? &S->pfs[0]
                              : S->pfs[1].host == nullptr ? &S->pfs[1]
                              : S->pfs[0].age < S->pfs[1].age ? &S->pfs[0] : &S->pfs[1];
    e->host = nullptr;
    const size_t bytes = size_t(N * S->D) * sizeof(float);
    if (e->buf.p != nullptr && e->buf.cap < bytes) {  // outgrown: freed later, off this thread
      S->pf_retired.push_back(e->buf.p);
      e->buf.p = nullptr;
      e->buf.cap = 0;
    }
    void* dst = e->buf.ensure(bytes);  // (a cudaMalloc at most)
    SK_CUDA(cudaMemcpyAsync(dst, host_x, bytes, cudaMemcpyHostToDevice, S->pf));
    SK_CUDA(cudaEventRecord(e->done, S->pf));
    e->host = host_x;
    e->N = N;
    e->age = ++S->pf_clock;
  });
}

int sae_host_alloc(sk_status* st, void** out, size_t bytes) {
  SK_CUDA_SLOT(st, {
    *out = nullptr;
    SK_CUDA(cudaHostAlloc(out, bytes == 0 ? 1 : bytes, cudaHostAllocPortable));
  });
}

void sae_host_free(void* p) {
  if (p) cudaFreeHost(p);
}

const sk_sae_i kSaeApi = {
    /* .api_version  = */ SK_SAE_API_VERSION,
    /* .device_count = */ sae_device_count,
    /* .device_name  = */ sae_device_name,
    /* .create       = */ sae_create,
    /* .destroy      = */ destroy_sae,
    /* .get_params   = */ sae_get_params,
    /* .set_params   = */ sae_set_params,
    /* .get_adam     = */ sae_get_adam,
    /* .set_adam     = */ sae_set_adam,
    /* .encode       = */ sae_encode,
    /* .decode       = */ sae_decode,
    /* .preacts      = */ sae_preacts,
    /* .step         = */ sae_step,
    /* .host_alloc   = */ sae_host_alloc,
    /* .host_free    = */ sae_host_free,
    /* .prefetch     = */ sae_prefetch,
};

}  // namespace

// Version 3 is the same table: its callers never pass set_adam the null moments version 4 added.
SK_EXPORT const sk_sae_i* sk_sae_api(int api_version) {
  static const sk_sae_i v3 = [] {
    sk_sae_i t = kSaeApi;
    t.api_version = 3;
    return t;
  }();
  return api_version == SK_SAE_API_VERSION ? &kSaeApi : api_version == 3 ? &v3 : nullptr;
}
