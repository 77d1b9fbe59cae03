// The TopK sparse autoencoder on the CPU (Gao et al. 2024; EleutherAI sparsify's model):
//
//   pre   = (x - b_dec) W_enc + b_enc                    [N, M]   (only ever one row tile of it)
//   codes = top-K of ReLU(pre) per row (ties: lower latent index first)
//   x_hat = b_dec + sum_j codes.v[j] W_dec[codes.i[j]]
//   fvu   = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2
//   auxk  = scale * sum ||e_hat - e||^2 / (same total variance)      (sparsify's AuxK, the default)
//   or      sum ||e_hat' - e||^2 / sum ||e - mean(e)||^2              (Gao et al.'s: AuxKVariant::Paper)
//   with e = x - x_hat (no gradient through it), e_hat = b_dec + e_hat', e_hat' = sum over the
//   top-Kaux dead latents' codes a W_dec[aux], Kaux = min(D / 2, dead), scale = min(dead / (D/2), 1)
//
// Shape letters: N rows (tokens), D = dIn, M = numLatents, K = k. Internally every latent's
// encoder and decoder vectors are contiguous rows ([M, D] each); the SAELens orientation
// (W_enc [D, M]) exists only at the API boundary. Only the encoder GEMM is dense: decoding,
// every gradient and the AuxK terms touch the selected latents only, O(N K D).
#pragma once
#include "../core/zeroed_vector.h"
#include <cstdint>
#include <vector>

#include "../core/thread_pool.h"

namespace sk::cpu {

// A view of the parameters in one slab: [W_encT | W_dec | b_enc | b_dec].
struct SaeView {
  int64_t D = 0, M = 0;
  float* W_encT = nullptr;  // [M, D]: row l is column l of the SAELens W_enc
  float* W_dec = nullptr;   // [M, D]
  float* b_enc = nullptr;   // [M]
  float* b_dec = nullptr;   // [D]
  // Whether the encoder sees x - b_dec (SAELens apply_b_dec_to_input; sparsify: always; Gemma
  // Scope: never). When false, b_dec enters the output only.
  bool apply_b_dec = true;
  const float* threshold = nullptr;  // [M] JumpReLU thresholds (null for TopK)
};

// The encoder works on tiles of at most `rows` rows and `bytes` bytes of pre-activations (the
// extra memory of an encode does not grow with N * M). Defaults 4096 rows and 64 MiB; the
// environment variables SAEKIT_TILE_ROWS and SAEKIT_TILE_BYTES override them (read once).
struct EncoderTiling {
  int64_t bytes;
  int64_t rows;
};
EncoderTiling encoder_tiling();

inline int64_t sae_slab_floats(int64_t D, int64_t M) { return 2 * M * D + M + D; }
SaeView sae_view(float* slab, int64_t D, int64_t M);

// Seconds spent in each phase of a step (accumulated over row tiles).
struct PhaseTimes {
  double gemm = 0;      // encoder GEMM
  double select = 0;    // bias + ReLU + TopK (and AuxK) selection
  double decode = 0;    // sparse decode, residuals, losses
  double backward = 0;  // sparse gradients (dvalues, grouping by latent, bias gradients)
  double update = 0;    // per-latent gradient rows + fused Adam / dense gradient output
};

// Sparse codes, row-major [N, K].
struct Codes {
  int64_t N = 0, K = 0;
  std::vector<float> v;
  std::vector<int32_t> i;
};

// Throws ERR_SAEKIT_NONFINITE naming the first row of x [N, D] with a NaN or infinity.
// The error carries the row (sk::Error::row, JS err.row).
void check_finite_rows(const float* x, int64_t N, int64_t D, const char* name);
// Throws ERR_SAEKIT_NONFINITE naming the first element of the flat array x [n] ("name[i] is NaN").
void check_finite(const float* x, int64_t n, const char* name);

// Main codes (sorted by descending value) and, when `dead` is non-empty and Kaux > 0, the AuxK
// codes over the dead latents (unsorted). xc receives x - b_dec [N, D] when non-null.
void sae_encode(const SaeView& p, const float* x, int64_t N, int64_t K, const std::vector<int32_t>& dead,
                int64_t Kaux, Codes* main, Codes* aux, float* xc, ThreadPool& pool, PhaseTimes* times = nullptr);

// JumpReLU codes: f = ReLU(z) 1[z > threshold] with z = pre-activation; every row keeps all
// its active latents, by descending value; rows are padded with (0, lowest unused index) to the
// batch's largest count (at least 1). Uses p.threshold.
void sae_encode_jumprelu(const SaeView& p, const float* x, int64_t N, Codes* out, ThreadPool& pool);

// JumpReLU's row padding: idx[count, K) receives the lowest latent indices not among the active
// idx[0, count) (their values are 0). Shared by the CPU encode and the device path.
void pad_unused_indices(int32_t* idx, int64_t count, int64_t K);

// out [N, D] = (with_bias ? b_dec : 0) + sum_j v W_dec[i]. Indices must be valid (checked by caller).
void sae_decode(const SaeView& p, const Codes& c, bool with_bias, float* out, ThreadPool& pool);

// out [N, M] = (x - b_dec) W_enc + b_enc, before ReLU.
void sae_preacts(const SaeView& p, const float* x, int64_t N, float* out, ThreadPool& pool);

// Adam hyper-parameters and state for the fused update (moments mirror the parameter slab).
struct AdamState {
  float lr = 1e-4f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  int64_t t = 0;           // steps taken
  ZeroedFloats m, v;  // [sae_slab_floats]; made with zeroed_floats
};

// Which AuxK loss (the libraries disagree; sae-libraries.md "AuxK variants").
//   Sparsify: sparsify's (and issue 3's): the dead latents' reconstruction includes b_dec, it is
//     normalised by the batch's total variance of x and scaled by min(dead / Kaux_base, 1).
//   Paper: Gao et al. 2024 (OpenAI's code, dictionary_learning's): the dead latents reconstruct
//     the residual without b_dec (so b_dec gets no AuxK gradient), normalised by the residual's
//     own batch variance, not scaled; 0 when the residual does not vary over the batch.
enum class AuxKVariant : int { Sparsify = 0, Paper = 1 };

struct StepOptions {
  float auxk_alpha = 1.0f / 32.0f;
  AuxKVariant auxk_variant = AuxKVariant::Sparsify;
  const std::vector<int32_t>* dead = nullptr;  // dead latents (AuxK); null or empty: no AuxK
};

struct StepStats {
  double loss = 0, fvu = 0, auxk = 0;  // auxk before the alpha weight
  double l0 = 0;                        // mean number of nonzero codes per row
  int64_t num_dead = 0;
  std::vector<uint8_t> fired;           // [M]: 1 if the latent had a positive code in the batch
  PhaseTimes times;
};

// Dense gradients of loss = fvu + alpha auxk, in the internal layout (W_encT [M, D]).
struct SaeGrads {
  std::vector<float> W_encT, W_dec, b_enc, b_dec;
};

// One forward + backward on x [N, D]. With `grads`, writes the dense gradients and changes no
// parameter. With `adam`, applies the fused update instead: decoder-gradient projection, Adam
// on every parameter, decoder rows renormalised. A non-finite loss throws ERR_SAEKIT_NONFINITE
// before any parameter changes. Bit-identical for the same inputs and thread count.
StepStats sae_step(const SaeView& p, const float* x, int64_t N, int64_t K, const StepOptions& opt, SaeGrads* grads,
                   AdamState* adam, ThreadPool& pool);

// Rows of W_dec [M, D] scaled to unit L2 norm (rows of norm 0 are left as they are); the norm is
// a float64 sum in index order, so the result does not depend on the SIMD level or thread count.
void normalize_rows(float* W, int64_t M, int64_t D, ThreadPool& pool);

}  // namespace sk::cpu
