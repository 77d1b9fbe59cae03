#include "sae_topk.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>

#include "../core/cpu_features.h"
#include "../core/error.h"
#include "convert.h"
#include "cpu_backend.h"
#include "sae_kernels.h"

namespace sk::cpu {

const SaeKernels& sae_kernels() {
  return pick_kernels(sae_kernels_sse42, sae_kernels_avx2, sae_kernels_avx512);
}

namespace {

using Clock = std::chrono::steady_clock;
double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// The end of a gradient-overflow error. The FVU divides by the batch's total variance tv, so the
// gradients (b_dec's and b_enc's most) grow as 1 / the inputs' scale: inputs of tiny scale are
// the likely cause. A learning rate only enters a step, through weights that earlier steps grew.
std::string overflow_advice(double tv, int64_t N, int64_t D, bool step) {
  return fmt("; the parameters were left unchanged. The gradients grow as 1 / the scale of the inputs (the FVU divides ",
             "by their variance), and this batch's RMS about its mean is ", std::sqrt(tv / double(N * D)),
             ": if that is tiny, normalize the inputs (the Trainer's normalize: 'expected-norm') or rescale them; ",
             "otherwise check the weights", step ? " (a lower learning rate keeps steps from growing them)" : "");
}

// The encoder tile bounds (see encoder_tiling()).
int64_t env_int(const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  const char* v = std::getenv(name);
  if (!v) return fallback;
  char* end = nullptr;
  long long n = std::strtoll(v, &end, 10);
  // Digits only, as the JS check that warns about ignored values ("+1" or " 7" are ignored).
  return (v[0] >= '0' && v[0] <= '9' && *end == '\0' && n >= lo && n <= hi) ? int64_t(n) : fallback;
}
// Fixed block sizes for reductions: results do not depend on the thread count.
constexpr int64_t kRowBlock = 256;
constexpr int64_t kLatentBlock = 256;


// Sorts a row's kept pairs by descending value (ties: lower index first).
void sort_desc(float* v, int32_t* i, int64_t K) {
  std::vector<std::pair<float, int32_t>> tmp(static_cast<size_t>(K));
  for (int64_t j = 0; j < K; ++j) tmp[size_t(j)] = {v[j], i[j]};
  std::sort(tmp.begin(), tmp.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  for (int64_t j = 0; j < K; ++j) {
    v[j] = tmp[size_t(j)].first;
    i[j] = tmp[size_t(j)].second;
  }
}

// Offers (ReLU(pre[l] + bias[l]), base + l), l in [0, count), to a heap that is still filling:
// the first K offers of a row all enter it, and a row in random order then replaces its worst
// pair about K ln(count / K) times (each a sift through the heap), which cost more than the scan
// itself. So the largest value of each block of 16 comes first (one vector pass): with t the K-th
// largest of those maxima, at least K values of the row are >= t, so none below t is among the
// K best of the heap and this row, and only the values >= t of the blocks whose maximum reaches t
// are offered, in index order. The heap ends with the same pairs as topk_scan leaves (main codes
// are sorted afterwards, so their order in the heap does not matter). `maxima` is scratch.
void offer_topk(const SaeKernels& kern, TopKHeap* h, const float* pre, const float* bias, int64_t count, int32_t base,
                std::vector<float>& maxima, std::vector<float>& sel) {
  const int64_t K = h->cap, blocks = count / 16;
  if (h->size >= K || blocks < 2 * K) return kern.topk_scan(h, pre, bias, count, base);
  maxima.resize(size_t(blocks));
  kern.relu_block_max(pre, bias, blocks, maxima.data());
  sel.assign(maxima.begin(), maxima.end());
  std::nth_element(sel.begin(), sel.begin() + (K - 1), sel.end(), std::greater<float>());
  const float t = sel[size_t(K - 1)];
  // relu_code (a NaN offered as +Infinity) costs a third of the selection here (its extra
  // compares in this loop: measured 2026-12-03, 3.5 -> 4.9 ms a 1024 x 4096 batch), so only a block
  // whose maximum is +Infinity (relu_block_max's value for a NaN, or an infinite pre-activation:
  // either refuses the row) takes it; the others take the plain ReLU.
  auto offer = [&](int64_t l0, int64_t l1) {
    for (int64_t l = l0; l < l1; ++l) {
      float a = pre[l] + bias[l];
      a = a > 0.0f ? a : 0.0f;
      if (a >= t) topk_push(h, a, base + int32_t(l));
    }
  };
  auto offer_code = [&](int64_t l0, int64_t l1) {
    for (int64_t l = l0; l < l1; ++l) {
      const float a = relu_code(pre[l] + bias[l]);
      if (a >= t) topk_push(h, a, base + int32_t(l));
    }
  };
  for (int64_t b = 0; b < blocks; ++b) {
    const float m = maxima[size_t(b)];
    // A full heap keeps only values above its worst (equal ones have larger indices).
    if (m < t || (h->size == K && !(m > h->v[0]))) continue;
    if (m == std::numeric_limits<float>::infinity()) offer_code(16 * b, 16 * b + 16);
    else offer(16 * b, 16 * b + 16);
  }
  offer_code(16 * blocks, count);
}

// Column sums of rows [0, N) of A [N, D] scaled by `scale`, accumulated in float64 over fixed
// row blocks and merged in block order; out[D] += result.
void column_sums(const float* A, int64_t N, int64_t D, double scale, std::vector<double>& out, ThreadPool& pool) {
  int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
  std::vector<double> partial(size_t(blocks * D), 0.0);
  pool.parallel_for(blocks, 1, [&](int64_t b0, int64_t b1, int) {
    for (int64_t b = b0; b < b1; ++b) {
      double* acc = &partial[size_t(b * D)];
      for (int64_t n = b * kRowBlock; n < std::min(N, (b + 1) * kRowBlock); ++n)
        for (int64_t d = 0; d < D; ++d) acc[d] += A[n * D + d];
    }
  });
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t d = 0; d < D; ++d) out[size_t(d)] += scale * partial[size_t(b * D + d)];
}

// sum over rows of a per-row float64 value, in fixed row blocks.
template <typename F>
double row_sum(int64_t N, ThreadPool& pool, F per_row) {
  int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
  std::vector<double> partial(size_t(blocks), 0.0);
  pool.parallel_for(blocks, 1, [&](int64_t b0, int64_t b1, int) {
    for (int64_t b = b0; b < b1; ++b) {
      double s = 0;
      for (int64_t n = b * kRowBlock; n < std::min(N, (b + 1) * kRowBlock); ++n) s += per_row(n);
      partial[size_t(b)] = s;
    }
  });
  double s = 0;
  for (double v : partial) s += v;
  return s;
}

}  // namespace

EncoderTiling encoder_tiling() {
  static const EncoderTiling t = {env_int("SAEKIT_TILE_BYTES", int64_t(64) << 20, 1024, int64_t(1) << 36),
                                  env_int("SAEKIT_TILE_ROWS", 4096, 1, int64_t(1) << 30)};
  return t;
}

SaeView sae_view(float* slab, int64_t D, int64_t M) {
  SaeView p;
  p.D = D;
  p.M = M;
  p.W_encT = slab;
  p.W_dec = slab + M * D;
  p.b_enc = slab + 2 * M * D;
  p.b_dec = slab + 2 * M * D + M;
  return p;
}

// Both scans use the vectorised any_non_finite_f32 (convert.h) and look for the position only when
// it finds one (a serial `acc += x * 0` chain was latency-bound: ~4 cycles a value on every batch).
void check_finite_rows(const float* x, int64_t N, int64_t D, const char* name) {
  if (N * D == 0 || !convert_kernels().any_non_finite_f32(x, N * D)) return;
  int64_t q = 0;
  while (q < N * D && std::isfinite(x[q])) ++q;
  const int64_t n = q / D, d = q % D;
  throw Error(ErrorCode::NonFinite, fmt("Expected finite values in ", name, " but row ", n, " has ", js_nonfinite(x[q]),
                                        " at column ", d), n);
}

void check_finite(const float* x, int64_t n, const char* name) {
  if (n == 0 || !convert_kernels().any_non_finite_f32(x, n)) return;
  int64_t i = 0;
  while (i < n && std::isfinite(x[i])) ++i;
  throw Error(ErrorCode::NonFinite, fmt("Expected finite values in ", name, " but ", name, "[", i, "] is ", js_nonfinite(x[i])));
}

void sae_encode(const SaeView& p, const float* x, int64_t N, int64_t K, const std::vector<int32_t>& dead,
                int64_t Kaux, Codes* main, Codes* aux, float* xc_out, ThreadPool& pool, PhaseTimes* times) {
  const int64_t D = p.D, M = p.M;
  const SaeKernels& kern = sae_kernels();
  main->N = N;
  main->K = K;
  main->v.assign(size_t(N * K), 0.0f);
  main->i.assign(size_t(N * K), 0);
  const bool with_aux = aux != nullptr && Kaux > 0 && !dead.empty();
  if (aux) {
    aux->N = N;
    aux->K = with_aux ? Kaux : 0;
    aux->v.assign(size_t(N * aux->K), 0.0f);
    aux->i.assign(size_t(N * aux->K), 0);
  }
  // Tiles: blocks of up to kRowTile rows, and within them blocks of latents so that one tile of
  // pre-activations stays under kTileBytes. Tiling by latents (not rows) means W_enc is packed
  // by the GEMM once per row block, as in one big GEMM; each row's TopK heap carries over from
  // one latent block to the next (latents arrive in increasing index order).
  const EncoderTiling tiling = encoder_tiling();
  const int64_t R = std::min<int64_t>(N, tiling.rows);
  int64_t C = std::max<int64_t>(1, tiling.bytes / (R * int64_t(sizeof(float))));
  C = C >= M ? M : std::max<int64_t>(16, C / 16 * 16);
  std::vector<float> own_xc;
  if (!xc_out) own_xc.resize(size_t(R * D));
  // Kept between calls (at most kTileBytes): a fresh allocation per step would be page-faulted
  // in again every time.
  static thread_local std::vector<float> pre_ws;
  if (pre_ws.size() < size_t(R * C)) pre_ws.resize(size_t(R * C));
  float* pre = pre_ws.data();
  std::vector<int64_t> hsize(static_cast<size_t>(R)), asize(static_cast<size_t>(R));
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    float* xt = xc_out ? xc_out + r0 * D : own_xc.data();
    pool.parallel_for(rows, 64, [&](int64_t a, int64_t b, int) {
      for (int64_t n = a; n < b; ++n)
        for (int64_t d = 0; d < D; ++d) xt[n * D + d] = x[(r0 + n) * D + d] - (p.apply_b_dec ? p.b_dec[d] : 0.0f);
    });
    std::fill(hsize.begin(), hsize.end(), 0);
    std::fill(asize.begin(), asize.end(), 0);
    size_t dead_pos = 0;  // first dead latent not yet offered
    for (int64_t c0 = 0; c0 < M; c0 += C) {
      const int64_t cols = std::min(C, M - c0);
      Clock::time_point t0 = Clock::now();
      gemm_f32(false, true, rows, cols, D, 1.0f, xt, D, p.W_encT + c0 * D, D, 0.0f, pre, cols);
      Clock::time_point t1 = Clock::now();
      size_t dead_end = dead_pos;
      while (dead_end < dead.size() && dead[dead_end] < c0 + cols) ++dead_end;
      // Bias + ReLU + TopK while the tile is still in cache; only (value, index) pairs survive.
      pool.parallel_for(rows, 4, [&](int64_t a, int64_t b, int) {
        std::vector<float> maxima, sel;
        for (int64_t n = a; n < b; ++n) {
          const float* row = pre + n * cols;
          const int64_t g = r0 + n;
          TopKHeap h{&main->v[size_t(g * K)], &main->i[size_t(g * K)], hsize[size_t(n)], K};
          offer_topk(kern, &h, row, p.b_enc + c0, cols, int32_t(c0), maxima, sel);
          hsize[size_t(n)] = h.size;
          if (with_aux && dead_end > dead_pos) {
            TopKHeap ha{&aux->v[size_t(g * Kaux)], &aux->i[size_t(g * Kaux)], asize[size_t(n)], Kaux};
            for (size_t q = dead_pos; q < dead_end; ++q) {
              int32_t l = dead[q];
              float act = row[l - c0] + p.b_enc[l];
              topk_push(&ha, relu_code(act), l);
            }
            asize[size_t(n)] = ha.size;
          }
        }
      });
      dead_pos = dead_end;
      if (times) {
        times->gemm += seconds(t0, t1);
        times->select += seconds(t1, Clock::now());
      }
    }
    pool.parallel_for(rows, 16, [&](int64_t a, int64_t b, int) {
      for (int64_t n = a; n < b; ++n) sort_desc(&main->v[size_t((r0 + n) * K)], &main->i[size_t((r0 + n) * K)], K);
    });
  }
}

void pad_unused_indices(int32_t* idx, int64_t count, int64_t K) {
  std::vector<int32_t> used(idx, idx + count);
  std::sort(used.begin(), used.end());
  int32_t next = 0;
  size_t u = 0;
  for (int64_t j = count; j < K; ++j) {
    while (u < used.size() && used[u] == next) {
      ++u;
      ++next;
    }
    idx[j] = next++;
  }
}

void sae_encode_jumprelu(const SaeView& p, const float* x, int64_t N, Codes* out, ThreadPool& pool) {
  const int64_t D = p.D, M = p.M;
  SK_CHECK(p.threshold != nullptr, ErrorCode::Internal, "JumpReLU encode without thresholds");
  const EncoderTiling tiling = encoder_tiling();
  const int64_t R = std::min<int64_t>(N, tiling.rows);
  int64_t C = std::max<int64_t>(1, tiling.bytes / (R * int64_t(sizeof(float))));
  C = C >= M ? M : std::max<int64_t>(16, C / 16 * 16);
  std::vector<float> xt(size_t(R * D)), pre(size_t(R * C));
  std::vector<std::vector<std::pair<float, int32_t>>> active(static_cast<size_t>(N));
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    pool.parallel_for(rows, 64, [&](int64_t a, int64_t b, int) {
      for (int64_t n = a; n < b; ++n)
        for (int64_t d = 0; d < D; ++d)
          xt[size_t(n * D + d)] = x[(r0 + n) * D + d] - (p.apply_b_dec ? p.b_dec[d] : 0.0f);
    });
    for (int64_t c0 = 0; c0 < M; c0 += C) {
      const int64_t cols = std::min(C, M - c0);
      gemm_f32(false, true, rows, cols, D, 1.0f, xt.data(), D, p.W_encT + c0 * D, D, 0.0f, pre.data(), cols);
      pool.parallel_for(rows, 16, [&](int64_t a, int64_t b, int) {
        for (int64_t n = a; n < b; ++n) {
          auto& act = active[size_t(r0 + n)];
          const float* row = pre.data() + n * cols;
          for (int64_t l = 0; l < cols; ++l) {
            float z = row[l] + p.b_enc[c0 + l];
            // A NaN (inf - inf) is kept as +Infinity (relu_code; NaN would break the sort below),
            // a code the encode's check refuses, naming the row.
            if (z > p.threshold[c0 + l] && z > 0.0f) act.push_back({z, int32_t(c0 + l)});
            else if (z != z) act.push_back({relu_code(z), int32_t(c0 + l)});
          }
        }
      });
    }
  }
  int64_t K = 1;
  for (const auto& a : active) K = std::max<int64_t>(K, int64_t(a.size()));
  out->N = N;
  out->K = K;
  out->v.assign(size_t(N * K), 0.0f);
  out->i.assign(size_t(N * K), 0);
  pool.parallel_for(N, 16, [&](int64_t a, int64_t b, int) {
    for (int64_t n = a; n < b; ++n) {
      auto& act = active[size_t(n)];
      std::sort(act.begin(), act.end(), [](const auto& u, const auto& v) {
        return u.first > v.first || (u.first == v.first && u.second < v.second);
      });
      int64_t j = 0;
      for (; j < int64_t(act.size()); ++j) {
        out->v[size_t(n * K + j)] = act[size_t(j)].first;
        out->i[size_t(n * K + j)] = act[size_t(j)].second;
      }
      pad_unused_indices(out->i.data() + n * K, j, K);
    }
  });
}

void sae_decode(const SaeView& p, const Codes& c, bool with_bias, float* out, ThreadPool& pool) {
  const int64_t D = p.D;
  const SaeKernels& kern = sae_kernels();
  pool.parallel_for(c.N, 16, [&](int64_t a, int64_t b, int) {
    for (int64_t n = a; n < b; ++n) {
      float* o = out + n * D;
      if (with_bias) std::memcpy(o, p.b_dec, size_t(D) * sizeof(float));
      else std::memset(o, 0, size_t(D) * sizeof(float));
      for (int64_t j = 0; j < c.K; ++j) {
        float v = c.v[size_t(n * c.K + j)];
        if (v != 0.0f) kern.axpy(o, v, p.W_dec + int64_t(c.i[size_t(n * c.K + j)]) * D, D);
      }
    }
  });
}

void sae_preacts(const SaeView& p, const float* x, int64_t N, float* out, ThreadPool& pool) {
  const int64_t D = p.D, M = p.M;
  std::vector<float> xc(size_t(N * D));
  pool.parallel_for(N, 64, [&](int64_t a, int64_t b, int) {
    for (int64_t n = a; n < b; ++n)
      for (int64_t d = 0; d < D; ++d) xc[size_t(n * D + d)] = x[n * D + d] - (p.apply_b_dec ? p.b_dec[d] : 0.0f);
  });
  gemm_f32(false, true, N, M, D, 1.0f, xc.data(), D, p.W_encT, D, 0.0f, out, M);
  pool.parallel_for(N, 16, [&](int64_t a, int64_t b, int) {
    for (int64_t n = a; n < b; ++n)
      for (int64_t l = 0; l < M; ++l) out[n * M + l] += p.b_enc[l];
  });
}

void normalize_rows(float* W, int64_t M, int64_t D, ThreadPool& pool) {
  // The squared norm in float64, summed in index order: the same bits on every SIMD level and
  // thread count, so create({ seed }) gives the same decoder on every machine (a float32 dot of
  // the ISA's own width changed about one value in eleven by an ulp between AVX2 and SSE4.2).
  pool.parallel_for(M, 64, [&](int64_t a, int64_t b, int) {
    for (int64_t l = a; l < b; ++l) {
      float* w = W + l * D;
      double sq = 0;
      for (int64_t d = 0; d < D; ++d) sq += double(w[d]) * double(w[d]);
      double nrm = std::sqrt(sq);
      if (nrm > 0) {
        float inv = float(1.0 / nrm);
        for (int64_t d = 0; d < D; ++d) w[d] *= inv;
      }
    }
  });
}

namespace {

// One selected (row, latent) pair as the backward pass sees it.
struct Entry {
  int32_t row;
  int32_t aux;  // 0: main code (gradient through E), 1: AuxK code (through R)
  float act;    // the code value
  float dpre;   // d loss / d pre for this pair (0 when act == 0: ReLU' = 0)
};

}  // namespace

StepStats sae_step(const SaeView& p, const float* x, int64_t N, int64_t K, const StepOptions& opt, SaeGrads* grads,
                   AdamState* adam, ThreadPool& pool) {
  const int64_t D = p.D, M = p.M;
  const SaeKernels& kern = sae_kernels();
  StepStats st;
  SK_CHECK(N >= 1, ErrorCode::Shape, "Expected at least 1 row for x but received 0");
  check_finite_rows(x, N, D, "x");

  // ---- AuxK sizes (sparsify: k_aux = d/2, scale = min(dead / k_aux, 1), k_aux = min(k_aux, dead))
  static const std::vector<int32_t> kNone;
  const std::vector<int32_t>& dead = opt.dead ? *opt.dead : kNone;
  st.num_dead = int64_t(dead.size());
  const int64_t kaux_base = D / 2;
  const bool use_aux = st.num_dead > 0 && kaux_base > 0 && opt.auxk_alpha != 0.0f;
  const int64_t Kaux = use_aux ? std::min<int64_t>(kaux_base, st.num_dead) : 0;
  // Gao et al.'s form: e_hat without b_dec, no scale, normalised by the residual's variance.
  const bool paper = opt.auxk_variant == AuxKVariant::Paper;
  const double aux_scale = !use_aux ? 0.0 : paper ? 1.0 : std::min(double(st.num_dead) / double(kaux_base), 1.0);

  // ---- forward: codes, then per row (fused, the row's decoder rows stay in cache) the
  // reconstruction, the residual e = x - x_hat, its squared norm and d loss / d pre of every
  // selected pair. The loss scales are known up front: the total variance depends on x only.
  std::vector<float> xc(size_t(N * D));
  Codes main, aux;
  sae_encode(p, x, N, K, dead, Kaux, &main, use_aux ? &aux : nullptr, xc.data(), pool, &st.times);
  Clock::time_point t_dec = Clock::now();
  std::vector<double> mean(size_t(D), 0.0);
  column_sums(x, N, D, 1.0 / double(N), mean, pool);
  const double tv = row_sum(N, pool, [&](int64_t n) {
    double s = 0;
    for (int64_t d = 0; d < D; ++d) {
      double c = double(x[n * D + d]) - mean[size_t(d)];
      s += c * c;
    }
    return s;
  });
  SK_CHECK(tv > 0, ErrorCode::Arg, "Expected a batch x with nonzero variance (at least two different rows) but all ",
           N, " rows are identical: the FVU is undefined");
  // dL/dx_hat = gscale * E; dL/de_hat = hscale * R with R = e_hat - e. The paper's hscale divides
  // by the residual's variance, known only after the pass below: the pass then leaves the AuxK
  // codes' d loss / d pre as plain dot products (scale 1), multiplied by hscale afterwards.
  // float32 gradients: past tv ~ 1.7e38 the scale -2 / tv is subnormal and then 0, and every
  // gradient would shrink silently while the (float64) loss stays right.
  SK_CHECK(2.0 / tv >= double(std::numeric_limits<float>::min()), ErrorCode::Arg,
           "Expected a batch x whose total variance float32 gradients can scale (at most 1.7e38) but it is ", tv,
           ": scale the inputs down (the Trainer's normalize: 'expected-norm' does)");
  const float gscale = float(-2.0 / tv);
  float hscale = paper ? 0.0f : float(2.0 * double(opt.auxk_alpha) * aux_scale / tv);
  const float hscale_pass = paper ? 1.0f : hscale;
  std::vector<float> E(size_t(N * D));
  std::vector<float> R(use_aux ? size_t(N * D) : 0);
  std::vector<float> dpre_main(size_t(N * K), 0.0f), dpre_aux(size_t(N * Kaux), 0.0f);
  const int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
  // Per row block: sse, aux sse, max |E|, max |R|, max |xc| (for the overflow guard below).
  std::vector<double> blk(size_t(blocks * 5), 0.0);
  pool.parallel_for(blocks, 1, [&](int64_t b0, int64_t b1, int) {
    for (int64_t b = b0; b < b1; ++b) {
      double sse = 0, asse = 0, mE = 0, mR = 0, mX = 0;
      for (int64_t n = b * kRowBlock; n < std::min(N, (b + 1) * kRowBlock); ++n) {
        float* e = E.data() + n * D;
        const float* xr = x + n * D;
        std::memcpy(e, p.b_dec, size_t(D) * sizeof(float));
        for (int64_t j = 0; j < K; ++j) {
          float v = main.v[size_t(n * K + j)];
          if (v != 0.0f) kern.axpy(e, v, p.W_dec + int64_t(main.i[size_t(n * K + j)]) * D, D);
        }
        for (int64_t d = 0; d < D; ++d) {
          e[d] = xr[d] - e[d];
          sse += double(e[d]) * e[d];
          mE = std::max(mE, double(std::fabs(e[d])));
          mX = std::max(mX, double(std::fabs(xc[size_t(n * D + d)])));
        }
        for (int64_t j = 0; j < K; ++j) {
          size_t q = size_t(n * K + j);
          if (main.v[q] > 0.0f) dpre_main[q] = gscale * kern.dot(e, p.W_dec + int64_t(main.i[q]) * D, D);
        }
        if (!use_aux) continue;
        float* r = R.data() + n * D;
        if (paper) std::fill(r, r + D, 0.0f);
        else std::memcpy(r, p.b_dec, size_t(D) * sizeof(float));
        for (int64_t j = 0; j < Kaux; ++j) {
          float a = aux.v[size_t(n * Kaux + j)];
          if (a != 0.0f) kern.axpy(r, a, p.W_dec + int64_t(aux.i[size_t(n * Kaux + j)]) * D, D);
        }
        for (int64_t d = 0; d < D; ++d) {
          r[d] -= e[d];
          asse += double(r[d]) * r[d];
          mR = std::max(mR, double(std::fabs(r[d])));
        }
        for (int64_t j = 0; j < Kaux; ++j) {
          size_t q = size_t(n * Kaux + j);
          if (aux.v[q] > 0.0f) dpre_aux[q] = hscale_pass * kern.dot(r, p.W_dec + int64_t(aux.i[q]) * D, D);
        }
      }
      double* o = &blk[size_t(b * 5)];
      o[0] = sse;
      o[1] = asse;
      o[2] = mE;
      o[3] = mR;
      o[4] = mX;
    }
  });
  double sse = 0, aux_sse = 0, maxE = 0, maxR = 0, maxX = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    sse += blk[size_t(b * 5)];
    aux_sse += blk[size_t(b * 5 + 1)];
    maxE = std::max(maxE, blk[size_t(b * 5 + 2)]);
    maxR = std::max(maxR, blk[size_t(b * 5 + 3)]);
    maxX = std::max(maxX, blk[size_t(b * 5 + 4)]);
  }
  st.fvu = sse / tv;
  st.auxk = use_aux ? aux_scale * aux_sse / tv : 0.0;
  if (use_aux && paper) {
    // The residual's batch variance sum ||e - mean(e)||^2 (float64, two passes, as tv).
    std::vector<double> emean(size_t(D), 0.0);
    column_sums(E.data(), N, D, 1.0 / double(N), emean, pool);
    const double rv = row_sum(N, pool, [&](int64_t n) {
      double s = 0;
      for (int64_t d = 0; d < D; ++d) {
        double c = double(E[size_t(n * D + d)]) - emean[size_t(d)];
        s += c * c;
      }
      return s;
    });
    // A residual that does not vary over the batch: no AuxK term (dictionary_learning's nan -> 0).
    const bool ok = rv > 0 && std::isfinite(rv);
    st.auxk = ok ? aux_sse / rv : 0.0;
    hscale = ok ? float(2.0 * double(opt.auxk_alpha) / rv) : 0.0f;
    for (float& g : dpre_aux) g *= hscale;
  }
  st.loss = st.fvu + double(opt.auxk_alpha) * st.auxk;
  SK_CHECK(std::isfinite(st.loss) && std::isfinite(maxE) && std::isfinite(maxR) && std::isfinite(maxX),
           ErrorCode::NonFinite, "the loss became non-finite (fvu ", st.fvu, ", auxk ", st.auxk,
           "); the parameters were left unchanged. ", adam ? "Lower the learning rate or check" : "Check",
           " the inputs and weights");
  Clock::time_point t_bwd = Clock::now();
  st.times.decode = seconds(t_dec, t_bwd);

  // ---- backward: group the pairs by latent (counting sort): per latent, main pairs by row,
  // then AuxK pairs by row.
  std::vector<int64_t> offs(size_t(M + 1), 0);
  for (int32_t l : main.i) ++offs[size_t(l) + 1];
  for (int32_t l : aux.i) ++offs[size_t(l) + 1];
  for (int64_t l = 0; l < M; ++l) offs[size_t(l + 1)] += offs[size_t(l)];
  std::vector<Entry> entries(size_t(offs[size_t(M)]));
  {
    std::vector<int64_t> cur(offs.begin(), offs.end() - 1);
    for (int64_t q = 0; q < N * K; ++q)
      entries[size_t(cur[size_t(main.i[size_t(q)])]++)] = {int32_t(q / K), 0, main.v[size_t(q)], dpre_main[size_t(q)]};
    for (int64_t q = 0; q < N * Kaux; ++q)
      entries[size_t(cur[size_t(aux.i[size_t(q)])]++)] = {int32_t(q / Kaux), 1, aux.v[size_t(q)], dpre_aux[size_t(q)]};
  }
  st.fired.assign(size_t(M), 0);
  int64_t nonzero = 0;
  for (int64_t q = 0; q < N * K; ++q)
    if (main.v[size_t(q)] > 0.0f) {
      ++nonzero;
      st.fired[size_t(main.i[size_t(q)])] = 1;
    }
  st.l0 = double(nonzero) / double(N);

  // db_enc per latent, and an overflow guard: a float32 gradient row is a sum of terms whose
  // magnitudes add up to at most `bound`, so rows with bound < kGradLimit cannot overflow (and
  // their squares, for Adam, stay finite). Rows above it are computed and checked explicitly.
  constexpr double kGradLimit = 1e18;
  std::vector<float> gb_enc(size_t(M), 0.0f);
  std::vector<int32_t> suspect;
  for (int64_t l = 0; l < M; ++l) {
    double s = 0, bdec = 0, benc = 0;
    for (int64_t q = offs[size_t(l)]; q < offs[size_t(l + 1)]; ++q) {
      const Entry& e = entries[size_t(q)];
      s += e.dpre;
      bdec += std::fabs(double(e.act) * (e.aux ? hscale : gscale)) * (e.aux ? maxR : maxE);
      benc += std::fabs(double(e.dpre)) * maxX;
    }
    SK_CHECK(std::isfinite(s) && std::fabs(s) < kGradLimit, ErrorCode::NonFinite, "the gradient of b_enc[", l,
             "] overflowed (", s, ")", overflow_advice(tv, N, D, adam != nullptr));
    gb_enc[size_t(l)] = float(s);
    if (!(bdec < kGradLimit && benc < kGradLimit)) suspect.push_back(int32_t(l));
  }
  // Rows whose bound is too large for that argument: compute them and check every element.
  for (int32_t l : suspect) {
    std::vector<float> gdec(static_cast<size_t>(D), 0.0f), genc(static_cast<size_t>(D), 0.0f);
    for (int64_t q = offs[size_t(l)]; q < offs[size_t(l + 1)]; ++q) {
      const Entry& e = entries[size_t(q)];
      const float* src = (e.aux ? R.data() : E.data()) + int64_t(e.row) * D;
      kern.axpy(gdec.data(), e.act * (e.aux ? hscale : gscale), src, D);
      kern.axpy(genc.data(), e.dpre, xc.data() + int64_t(e.row) * D, D);
    }
    for (int64_t d = 0; d < D; ++d)
      SK_CHECK(std::fabs(gdec[size_t(d)]) < kGradLimit && std::fabs(genc[size_t(d)]) < kGradLimit,
               ErrorCode::NonFinite, "the gradient of latent ", l, " overflowed (W_dec ", gdec[size_t(d)], ", W_enc ",
               genc[size_t(d)], " at column ", d, ")", overflow_advice(tv, N, D, adam != nullptr));
  }
  // db_dec = gscale sum E + hscale sum R - sum_l db_enc[l] W_encT[l] (b_dec enters x_hat, e_hat
  // and the encoder input), before any parameter changes.
  std::vector<double> gb_dec(size_t(D), 0.0);
  column_sums(E.data(), N, D, gscale, gb_dec, pool);
  if (use_aux && !paper) column_sums(R.data(), N, D, hscale, gb_dec, pool);  // the paper's e_hat has no b_dec
  {
    int64_t lblocks = (M + kLatentBlock - 1) / kLatentBlock;
    std::vector<double> partial(size_t(lblocks * D), 0.0);
    pool.parallel_for(lblocks, 1, [&](int64_t b0, int64_t b1, int) {
      for (int64_t b = b0; b < b1; ++b)
        for (int64_t l = b * kLatentBlock; l < std::min(M, (b + 1) * kLatentBlock); ++l) {
          float g = gb_enc[size_t(l)];
          if (g == 0.0f) continue;
          const float* w = p.W_encT + l * D;
          for (int64_t d = 0; d < D; ++d) partial[size_t(b * D + d)] += double(g) * w[d];
        }
    });
    if (p.apply_b_dec)
      for (int64_t b = 0; b < lblocks; ++b)
        for (int64_t d = 0; d < D; ++d) gb_dec[size_t(d)] -= partial[size_t(b * D + d)];
  }
  for (int64_t d = 0; d < D; ++d)
    SK_CHECK(std::fabs(gb_dec[size_t(d)]) < kGradLimit, ErrorCode::NonFinite, "the gradient of b_dec[", d,
             "] overflowed (", gb_dec[size_t(d)], ")", overflow_advice(tv, N, D, adam != nullptr));
  Clock::time_point t_upd = Clock::now();
  st.times.backward = seconds(t_bwd, t_upd);
  // Per-latent pass: the W_dec row and W_enc column gradients of latent l come from its pairs
  // only. With Adam, the update is fused here: project, step, renormalise.
  float lr_t = 0, inv_sqrt_bc2 = 1;
  float* m_enc = nullptr;
  float* v_enc = nullptr;
  float* m_dec = nullptr;
  float* v_dec = nullptr;
  float* m_benc = nullptr;
  float* v_benc = nullptr;
  if (adam) {
    adam->t += 1;
    // The bias corrections in float64 throughout: 1 - beta^t rounded through float32 lost up to
    // 1.5% of lr_t for beta1 near 1.
    const double b1t = std::pow(double(adam->beta1), double(adam->t));
    const double b2t = std::pow(double(adam->beta2), double(adam->t));
    lr_t = float(double(adam->lr) / (1.0 - b1t));
    inv_sqrt_bc2 = float(1.0 / std::sqrt(1.0 - b2t));
    m_enc = adam->m.data();
    v_enc = adam->v.data();
    m_dec = m_enc + M * D;
    v_dec = v_enc + M * D;
    m_benc = m_enc + 2 * M * D;
    v_benc = v_enc + 2 * M * D;
  }
  if (grads) {
    grads->W_encT.assign(size_t(M * D), 0.0f);
    grads->W_dec.assign(size_t(M * D), 0.0f);
    grads->b_enc = gb_enc;
    grads->b_dec.assign(size_t(D), 0.0f);
    for (int64_t d = 0; d < D; ++d) grads->b_dec[size_t(d)] = float(gb_dec[size_t(d)]);
  }
  pool.parallel_for(M, 64, [&](int64_t a, int64_t b, int) {
    std::vector<float> gdec(static_cast<size_t>(D)), genc(static_cast<size_t>(D));
    for (int64_t l = a; l < b; ++l) {
      const int64_t q0 = offs[size_t(l)], q1 = offs[size_t(l + 1)];
      float* wdec = p.W_dec + l * D;
      float* wenc = p.W_encT + l * D;
      bool has = q1 > q0;
      if (has) {
        std::fill(gdec.begin(), gdec.end(), 0.0f);
        std::fill(genc.begin(), genc.end(), 0.0f);
        for (int64_t q = q0; q < q1; ++q) {
          const Entry& e = entries[size_t(q)];
          const float* src = (e.aux ? R.data() : E.data()) + int64_t(e.row) * D;
          if (e.act != 0.0f) kern.axpy(gdec.data(), e.act * (e.aux ? hscale : gscale), src, D);
          if (e.dpre != 0.0f) kern.axpy(genc.data(), e.dpre, xc.data() + int64_t(e.row) * D, D);
        }
      }
      if (grads) {
        if (has) {
          std::memcpy(&grads->W_dec[size_t(l * D)], gdec.data(), size_t(D) * sizeof(float));
          std::memcpy(&grads->W_encT[size_t(l * D)], genc.data(), size_t(D) * sizeof(float));
        }
        continue;
      }
      // Adam, fused. The decoder gradient loses its component along the (unit) decoder row.
      if (has) {
        float par = kern.dot(gdec.data(), wdec, D);
        kern.axpy(gdec.data(), -par, wdec, D);
      }
      kern.adam(wdec, m_dec + l * D, v_dec + l * D, has ? gdec.data() : nullptr, D, adam->beta1, adam->beta2, lr_t,
                inv_sqrt_bc2, adam->eps);
      kern.adam(wenc, m_enc + l * D, v_enc + l * D, has ? genc.data() : nullptr, D, adam->beta1, adam->beta2, lr_t,
                inv_sqrt_bc2, adam->eps);
      float gb = gb_enc[size_t(l)];
      kern.adam(p.b_enc + l, m_benc + l, v_benc + l, &gb, 1, adam->beta1, adam->beta2, lr_t, inv_sqrt_bc2, adam->eps);
      double nrm = std::sqrt(double(kern.dot(wdec, wdec, D)));
      if (nrm > 0) {
        float inv = float(1.0 / nrm);
        for (int64_t d = 0; d < D; ++d) wdec[d] *= inv;
      }
    }
  });
  if (adam) {
    std::vector<float> g(static_cast<size_t>(D));
    for (int64_t d = 0; d < D; ++d) g[size_t(d)] = float(gb_dec[size_t(d)]);
    kern.adam(p.b_dec, m_enc + 2 * M * D + M, v_enc + 2 * M * D + M, g.data(), D, adam->beta1, adam->beta2, lr_t,
              inv_sqrt_bc2, adam->eps);
  }
  st.times.update = seconds(t_upd, Clock::now());
  return st;
}

}  // namespace sk::cpu
