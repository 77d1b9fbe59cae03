// The device SAE interface: a TopK / JumpReLU SAE whose parameters, Adam state and batches live
// on an accelerator (the CUDA plugin fills it; see native/cuda/). A second C table beside
// sk_backend_i because an SAE step is one fused operation, not a sequence of backend ops.
//
// The plugin exports `const sk_sae_i* sk_sae_api(int api_version)`; it returns null when it
// does not speak that version. Every slot returns 0 on success, or non-zero with `st` filled
// (codes as in backend.h). Pointers named host_* are host memory owned by the caller; the
// plugin stages them through its own pinned buffers. host_x may also be device memory of the
// SAE's own device (a device tensor's storage, complete before the call): copied on the device.
//
// Semantics are exactly those of native/cpu/sae_topk.h (the reference): the parameter slab
// [W_encT (M x D) | W_dec (M x D) | b_enc (M) | b_dec (D)], codes sorted by descending value with
// ties to the lower latent index, fvu / AuxK (kAux = D/2; sparsify's form, scale min(dead/(D/2), 1),
// or Gao et al.'s: cpu::AuxKVariant),
// loss = fvu + auxk_alpha * auxk, the decoder-gradient projection, Adam (bias-corrected,
// PyTorch's formula), decoder rows renormalised, a non-finite loss rejected before any update.
#pragma once
#include <cstddef>
#include <cstdint>

#include "backend.h"

extern "C" {

#define SK_SAE_API_VERSION 4  // 2: prefetch; 3: auxk_variant; 4: set_adam(null, null) zeroes

// The most codes per row a device SAE keeps (the CUDA selection's limit): `encode` and `step`
// take k <= SK_SAE_MAX_CODES, and a JumpReLU encode refuses a row with more active latents than
// that (ERR_SAEKIT_SHAPE, naming the row) when k is already at the limit (or at M).
#define SK_SAE_MAX_CODES 8192

typedef struct sk_sae_dev sk_sae_dev;  // opaque: one SAE on one device

// Precision of the encoder GEMM (parameters and Adam state are always float32).
typedef enum sk_precision { SK_PREC_F32 = 0, SK_PREC_TF32 = 1, SK_PREC_BF16 = 2 } sk_precision;

typedef struct sk_sae_step_opts {
  int64_t k;                  // TopK
  float auxk_alpha;           // weight of the AuxK loss (0: no AuxK)
  const int32_t* host_dead;   // dead latents for AuxK (sorted ascending), may be null
  int64_t num_dead;
  int want_grads;             // 1: write dense gradients to host_grads, change nothing
  float* host_grads;          // [slab floats] when want_grads (internal layout)
  float lr, beta1, beta2, eps;  // Adam (used when !want_grads); the plugin keeps t, m, v
  int precision;              // sk_precision for the encoder GEMM
  int auxk_variant;           // 0: sparsify's AuxK, 1: Gao et al.'s (cpu::AuxKVariant)
} sk_sae_step_opts;

typedef struct sk_sae_step_stats {
  double loss, fvu, auxk, l0;
  int64_t num_dead;
  uint8_t* host_fired;  // [M], caller-owned: 1 where the latent had a positive code
  double seconds[5];    // gemm, select, decode, backward, update (device time, may be 0)
} sk_sae_step_stats;

typedef struct sk_sae_i {
  int api_version;  // SK_SAE_API_VERSION
  // Devices and their names ("NVIDIA H200, 139 GiB, sm_90").
  int (*device_count)(sk_status* st, int* count);
  int (*device_name)(sk_status* st, int device, char* out, size_t len);
  // A new SAE on `device` from a host slab; host_threshold [M] (JumpReLU) may be null.
  int (*create)(sk_status* st, sk_sae_dev** out, int device, int64_t D, int64_t M, int apply_b_dec,
                const float* host_slab, const float* host_threshold);
  void (*destroy)(sk_sae_dev* sae);
  int (*get_params)(sk_status* st, sk_sae_dev* sae, float* host_slab);
  int (*set_params)(sk_status* st, sk_sae_dev* sae, const float* host_slab);
  // Adam state (m, v: [slab floats]); t = steps taken. set_adam with host_m and host_v both null
  // sets the moments to zero on the device (a new optimizer sends no host copy).
  int (*get_adam)(sk_status* st, sk_sae_dev* sae, float* host_m, float* host_v, int64_t* t);
  int (*set_adam)(sk_status* st, sk_sae_dev* sae, const float* host_m, const float* host_v, int64_t t);
  // Codes of x [N, D]: TopK (k) or, with a threshold, JumpReLU padded to `k` per row.
  int (*encode)(sk_status* st, sk_sae_dev* sae, const float* host_x, int64_t N, int64_t k, int precision,
                float* host_vals, int32_t* host_idx);
  // out [N, D] = (with_bias ? b_dec : 0) + sum_j vals W_dec[idx]; indices are checked by the caller.
  int (*decode)(sk_status* st, sk_sae_dev* sae, const float* host_vals, const int32_t* host_idx, int64_t N,
                int64_t k, int with_bias, float* host_out);
  // out [N, M] = (x - b_dec) W_enc + b_enc.
  int (*preacts)(sk_status* st, sk_sae_dev* sae, const float* host_x, int64_t N, int precision, float* host_out);
  // One forward + backward (+ fused Adam unless want_grads).
  int (*step)(sk_status* st, sk_sae_dev* sae, const float* host_x, int64_t N, const sk_sae_step_opts* opts,
              sk_sae_step_stats* stats);
  // Page-locked host memory (added after version 1's first draft; null in plugins without it).
  // host_* arguments that point into such a block are copied by DMA directly, skipping the
  // plugin's staging copy: put training batches there for full speed.
  int (*host_alloc)(sk_status* st, void** out, size_t bytes);
  void (*host_free)(void* ptr);
  // Starts copying a later step's batch x [N, D] to the device and returns at once (version 2;
  // may be null): the transfer overlaps the step in flight. host_x
  // must be page-locked memory from host_alloc and must not change until that step. The next
  // `step` called with the same host_x and N uses the copy instead of uploading; the plugin keeps
  // the two latest prefetches. Safe to call from another thread while a step runs (not while
  // the SAE is created or destroyed). N = 0 withdraws any prefetch of host_x.
  int (*prefetch)(sk_status* st, sk_sae_dev* sae, const float* host_x, int64_t N);
} sk_sae_i;

}  // extern "C"
