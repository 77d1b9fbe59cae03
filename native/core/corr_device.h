// The device sparse-code correlation interface: Pearson r between the sparse codes of two SAEs
// over aligned tokens, run on an accelerator (the CUDA plugin fills it in native/cuda/corr.cu;
// the loopback device in native/cpu/corr_loopback.cpp, with the CPU kernel). A third C table,
// beside sk_backend_i and sk_sae_i, because a correlation run is one fused operation.
//
// The plugin exports `const sk_corr_i* sk_corr_api(int api_version)`; it returns null when it
// does not speak that version. Every slot returns 0 on success, or non-zero with `st` filled
// (codes as in backend.h). Every pointer is host memory owned by the caller.
//
// Semantics are exactly those of native/cpu/sparse_corr.h (the reference), and the CUDA plugin
// reproduces its bits: r_ij = (S_ij - n mean_i mean_j) / (sd_i sd_j) from float64 raw sums, S_ij
// summed in token order, times opts.scale (1, or a compat factor), clamped to [-1, 1] and rounded
// once to float32 (-0 becomes +0), so top lists rank the values they hold; a
// constant feature (sk_corr_moments below) gets r = 0 against everything; top lists are best
// first under (r descending, index ascending).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "backend.h"

extern "C" {

#define SK_CORR_API_VERSION 2  // 2: sk_corr_opts.scale

// The codes of both sides as CSR by token (token t's nonzeros of A are [ptr_a[t], ptr_a[t + 1])),
// exactly as native/cpu/sparse_corr.h's store holds them: values nonzero and finite, indices in
// range and distinct within a token. Per-feature float64 sums in token order.
typedef struct sk_corr_codes {
  int64_t nA, nB;    // features per side
  int64_t tokens;    // >= 2
  const int64_t* ptr_a;  // [tokens + 1], ptr_a[0] = 0
  const int32_t* idx_a;  // [ptr_a[tokens]]
  const float* val_a;
  const int64_t* ptr_b;  // [tokens + 1]
  const int32_t* idx_b;  // [ptr_b[tokens]]
  const float* val_b;
  const double* sum_a;    // [nA] sum_t x_ti
  const double* sumsq_a;  // [nA] sum_t x_ti^2
  const double* sum_b;    // [nB]
  const double* sumsq_b;  // [nB]
} sk_corr_codes;

typedef struct sk_corr_opts {
  int full;         // 1: write the full [nA, nB] float32 r
  int64_t top;      // else (>= 1): for every B feature its best min(top, nA) A features
  int reverse;      // and (top mode) for every A feature its best min(top, nB) B features
  // Every r times this (in float64, before the clamp and the float32 rounding): 1, or the
  // univ-feat-geom compat factor (n - 1) / n. C++ callers' sk_corr_opts{} start at 1.
#ifdef __cplusplus
  double scale = 1.0;
#else
  double scale;
#endif
} sk_corr_opts;

// Caller-owned outputs, sized by the caller from the options (k_top = min(top, nA), k_rev =
// min(top, nB) when reverse, else 0; both 0 in full mode).
typedef struct sk_corr_out {
  uint8_t* constant_a;  // [nA]: 1 where the feature is constant (its r is 0)
  uint8_t* constant_b;  // [nB]
  float* r;             // [nA, nB] when full
  int32_t* top_index;   // [nB, k_top], best first, ties to the lower index
  float* top_r;
  int32_t* rev_index;   // [nA, k_rev] when reverse
  float* rev_r;
} sk_corr_out;

typedef struct sk_corr_i {
  int api_version;  // SK_CORR_API_VERSION
  // Runs the whole correlation on `device`; returns when the outputs are written. Fails with
  // ERR_SAEKIT_DEVICE (or ERR_SAEKIT_MEMORY) naming what does not fit.
  int (*run)(sk_status* st, int device, const sk_corr_codes* codes, const sk_corr_opts* opts, sk_corr_out* out);
} sk_corr_i;

}  // extern "C"

#ifdef __cplusplus
// mean, 1/sd (0 for a constant feature) and the constant flag of one feature from its float64
// raw sums over n tokens: constant when the variance is at most max(1e-12, 4 n eps) of the raw
// second moment (or not positive). 4 n eps bounds the rounding error of float64 sums over n
// tokens relative to the second moment: a value repeated on every one of 10^6 tokens leaves a
// variance of about 1.6e-11 of it, noise that 1e-12 alone took for spread. Shared by the CPU
// kernel and the devices' host code so every path computes the same bits (plain double
// arithmetic; these files are compiled without FMA contraction).
inline void sk_corr_moments(double s, double ss, double n, double* mean, double* inv, uint8_t* constant) {
  const double m = s / n;
  const double var = ss - n * m * m;
  const double tol = 4.0 * n * 2.220446049250313e-16;
  const bool c = !(var > (tol > 1e-12 ? tol : 1e-12) * ss) || !(var > 0);
  *mean = m;
  *constant = c ? 1 : 0;
  *inv = c ? 0.0 : 1.0 / std::sqrt(var);
}
#endif
