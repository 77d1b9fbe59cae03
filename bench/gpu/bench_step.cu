// Training-step throughput of the CUDA SAE (sk_sae_api, bf16 encoder GEMM) with its floor:
//   floor = one cuBLAS bf16 GEMM of the encoder shape [batch, dIn] x [dIn, numLatents]
//         + Adam's parameter traffic over the measured device bandwidth.
// Adam's traffic: the fused update reads p, m, v and writes them back for both weight matrices
// (6 slabs of 4 B * 2 * numLatents * dIn), and the step also reads W_enc once for the encoder-input
// part of db_dec and once to refresh its bf16 copy (0.5 + 0.5 slab, + 0.25 slab written):
// ~7 slabs moved. Bandwidth = 2 * bytes / time of one large cudaMemcpy device-to-device.
// Also times the TopK selection alone on the GEMM's output, and the sparse-code correlation
// (sk_corr_api: uploads, regrouping, sums, r and the lists; host codes given, as the addon gives
// them) on random skewed codes.
//
//   saekit_cuda_bench [--quick] [--tiny]   prints "BENCH key=value ..." lines, one per shape, and
//                                          "CORR key=value ..." lines for the correlation
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/corr_device.h"
#include "core/sae_device.h"
#include "cuda/common.cuh"
#include "cuda/cublas_dl.h"
#include "cuda/kernels.h"

extern "C" const sk_sae_i* sk_sae_api(int api_version);
extern "C" const sk_corr_i* sk_corr_api(int api_version);

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0.0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);  // even: the mean of the middle two
}

// xorshift: fast host data (the values only need to be realistic in scale).
struct Rng {
  uint64_t s;
  float next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return float(int64_t(s >> 40) - (int64_t(1) << 23)) / float(1 << 23);  // [-1, 1)
  }
};

void ck(int rc, const sk_status& st, const char* what) {
  if (rc) {
    std::fprintf(stderr, "%s failed: %s\n", what, st.message);
    std::exit(1);
  }
}

double device_bandwidth(size_t bytes) {
  void *a = nullptr, *b = nullptr;
  SK_CUDA(cudaMalloc(&a, bytes));
  SK_CUDA(cudaMalloc(&b, bytes));
  SK_CUDA(cudaMemset(a, 1, bytes));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<double> t;
  for (int r = 0; r < 6; ++r) {
    cudaEventRecord(e0);
    SK_CUDA(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    if (r > 0) t.push_back(ms * 1e-3);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * double(bytes) / median(t);
}

void run_shape(int64_t D, int64_t M, int64_t K, int64_t N, int reps, double bw) {
  const sk_sae_i* api = sk_sae_api(SK_SAE_API_VERSION);
  const int64_t slab = 2 * M * D + M + D;
  std::vector<float> host(static_cast<size_t>(slab));
  Rng rng{0x9e3779b97f4a7c15ULL ^ uint64_t(D * M)};
  const float we = 1.0f / std::sqrt(float(D)) * 1.7f;
  for (int64_t i = 0; i < 2 * M * D; ++i) host[size_t(i)] = rng.next() * we;
  for (int64_t i = 2 * M * D; i < slab; ++i) host[size_t(i)] = 0.01f * rng.next();
  std::vector<float> x(static_cast<size_t>(N * D));
  for (auto& v : x) v = rng.next() * 1.7f;
  sk_status st{};
  sk_sae_dev* sae = nullptr;
  ck(api->create(&st, &sae, 0, D, M, 1, host.data(), nullptr), st, "create");
  host.clear();
  host.shrink_to_fit();
  sk_sae_step_opts o{};
  o.k = K;
  o.auxk_alpha = 1.0f / 32.0f;
  o.lr = 1e-4f;
  o.beta1 = 0.9f;
  o.beta2 = 0.999f;
  o.eps = 1e-8f;
  o.precision = SK_PREC_BF16;
  std::vector<double> wall, ph[5];
  for (int r = 0; r < reps + 3; ++r) {
    sk_sae_step_stats s{};
    auto t0 = Clock::now();
    ck(api->step(&st, sae, x.data(), N, &o, &s), st, "step");
    double w = std::chrono::duration<double>(Clock::now() - t0).count();
    if (r < 3) continue;  // warm-up: workspace growth, cuBLAS heuristics
    wall.push_back(w);
    for (int p = 0; p < 5; ++p) ph[p].push_back(s.seconds[p]);
  }
  // The same with pageable batches handed to the driver's own staging (SAEKIT_CUDA_STAGING=0).
  std::vector<double> wall_direct;
  setenv("SAEKIT_CUDA_STAGING", "0", 1);
  for (int r = 0; r < reps + 1; ++r) {
    sk_sae_step_stats s{};
    auto t0 = Clock::now();
    ck(api->step(&st, sae, x.data(), N, &o, &s), st, "step (driver staging)");
    if (r > 0) wall_direct.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  unsetenv("SAEKIT_CUDA_STAGING");
  // The same with the batch in page-locked memory from host_alloc (one DMA, no staging copy).
  std::vector<double> wall_pinned;
  {
    void* px = nullptr;
    ck(api->host_alloc(&st, &px, x.size() * sizeof(float)), st, "host_alloc");
    std::memcpy(px, x.data(), x.size() * sizeof(float));
    for (int r = 0; r < reps + 1; ++r) {
      sk_sae_step_stats s{};
      auto t0 = Clock::now();
      ck(api->step(&st, sae, static_cast<const float*>(px), N, &o, &s), st, "step (pinned batch)");
      if (r > 0) wall_pinned.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    api->host_free(px);
  }
  // Steady state of a training loop: batch n + 1 prefetched (its upload on the prefetch stream)
  // before step n is called, alternating two page-locked buffers.
  std::vector<double> wall_overlap;
  if (api->prefetch) {
    void* pb[2] = {nullptr, nullptr};
    for (void*& p : pb) {
      ck(api->host_alloc(&st, &p, x.size() * sizeof(float)), st, "host_alloc");
      std::memcpy(p, x.data(), x.size() * sizeof(float));
    }
    ck(api->prefetch(&st, sae, static_cast<const float*>(pb[0]), N), st, "prefetch");
    for (int r = 0; r < reps + 1; ++r) {
      sk_sae_step_stats s{};
      auto t0 = Clock::now();
      ck(api->prefetch(&st, sae, static_cast<const float*>(pb[(r + 1) & 1]), N), st, "prefetch");
      ck(api->step(&st, sae, static_cast<const float*>(pb[r & 1]), N, &o, &s), st, "step (prefetched batch)");
      if (r > 0) wall_overlap.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    ck(api->prefetch(&st, sae, static_cast<const float*>(pb[(reps + 1) & 1]), 0), st, "prefetch (withdraw)");
    for (void* p : pb) api->host_free(p);
  }
  // The same steps with environment variable `name` set to `value`: device time per phase
  // (medians of reps steps after one warm-up).
  auto phases_with = [&](const char* name, const char* value, const char* what, std::vector<double>* ph_out) {
    setenv(name, value, 1);
    for (int r = 0; r < reps + 1; ++r) {
      sk_sae_step_stats s{};
      ck(api->step(&st, sae, x.data(), N, &o, &s), st, what);
      if (r > 0)
        for (int p = 0; p < 5; ++p) ph_out[p].push_back(s.seconds[p]);
    }
    unsetenv(name);
  };
  // float32 pre-activations out of the bf16 GEMM (the default writes bf16 ones), the decode pass
  // that gathers each decoder row twice (the default reads it once), and the selection a block
  // per row (the default takes rows a warp per row first).
  std::vector<double> ph32[5], phplain[5], phblock[5];
  phases_with("SAEKIT_CUDA_PRE16", "0", "step (float32 pre-activations)", ph32);
  phases_with("SAEKIT_CUDA_DECODE", "plain", "step (decode reading rows twice)", phplain);
  phases_with("SAEKIT_CUDA_SELECT", "block", "step (selection a block per row)", phblock);
  // With dead latents (AuxK over a quarter of them).
  std::vector<int32_t> dead;
  for (int64_t l = 0; l < M; l += 4) dead.push_back(int32_t(l));
  o.host_dead = dead.data();
  o.num_dead = int64_t(dead.size());
  std::vector<double> wall_aux;
  for (int r = 0; r < std::max(3, reps / 2) + 1; ++r) {
    sk_sae_step_stats s{};
    auto t0 = Clock::now();
    ck(api->step(&st, sae, x.data(), N, &o, &s), st, "step (AuxK)");
    if (r > 0) wall_aux.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  // The same with AuxK per pair (SAEKIT_CUDA_AUXK=sparse; the default picks the dense GEMMs here).
  std::vector<double> wall_aux_sparse;
  setenv("SAEKIT_CUDA_AUXK", "sparse", 1);
  for (int r = 0; r < std::min(3, reps); ++r) {  // the first is a warm-up
    sk_sae_step_stats s{};
    auto t0 = Clock::now();
    ck(api->step(&st, sae, x.data(), N, &o, &s), st, "step (AuxK per pair)");
    if (r > 0) wall_aux_sparse.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  unsetenv("SAEKIT_CUDA_AUXK");
  api->destroy(sae);

  // Floor: one bf16 GEMM of the encoder shape, then TopK alone on its output.
  std::string why;
  const sk::cuda::Cublas* lib = sk::cuda::cublas(&why);
  if (!lib) {
    std::fprintf(stderr, "%s\n", why.c_str());
    std::exit(1);
  }
  sk::cuda::cublasHandle_t h;
  lib->create(&h);
  void *A = nullptr, *B = nullptr, *C = nullptr, *bias = nullptr, *ov = nullptr, *oi = nullptr;
  SK_CUDA(cudaMalloc(&A, size_t(M * D) * 2));
  SK_CUDA(cudaMalloc(&B, size_t(N * D) * 2));
  SK_CUDA(cudaMalloc(&C, size_t(N * M) * 4));  // float32 output (or bf16 in its first half)
  void* C16 = nullptr;  // the float32 output rounded to bf16, for TopK alone on bf16 keys
  SK_CUDA(cudaMalloc(&C16, size_t(N * M) * 2));
  SK_CUDA(cudaMalloc(&bias, size_t(M) * 4));
  SK_CUDA(cudaMalloc(&ov, size_t(N * K) * 4));
  SK_CUDA(cudaMalloc(&oi, size_t(N * K) * 4));
  {
    // bf16 data: random bit patterns with a small exponent (0x3c00..0x3dff ~ 0.008..0.06, signs mixed).
    std::vector<uint16_t> a(size_t(std::max(M, N) * D));
    for (auto& v : a) v = uint16_t(0x3c00u | (uint32_t(rng.next() * 32767.0f + 32768.0f) & 0x81ffu));
    SK_CUDA(cudaMemcpy(A, a.data(), size_t(M * D) * 2, cudaMemcpyHostToDevice));
    // B of its own draws: copied from the start of the same array, row n of x equalled row n of
    // W, which planted an outlier C[n][n] = |W_n|^2 in every row TopK alone selects from.
    for (size_t i = 0; i < size_t(N * D); ++i) a[i] = uint16_t(0x3c00u | (uint32_t(rng.next() * 32767.0f + 32768.0f) & 0x81ffu));
    SK_CUDA(cudaMemcpy(B, a.data(), size_t(N * D) * 2, cudaMemcpyHostToDevice));
    SK_CUDA(cudaMemset(bias, 0, size_t(M) * 4));
  }
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  const float one = 1.0f, zero = 0.0f;
  // The floor's GEMM writes bf16 (the cheaper of the two outputs the step may use); the float32
  // output is timed beside it, and TopK alone on each.
  std::vector<double> tg, tg32, ts, ts32;
  for (int out16 = 1; out16 >= 0; --out16)
    for (int r = 0; r < reps + 2; ++r) {
      cudaEventRecord(e0);
      int s = lib->gemm_ex(h, sk::cuda::kOpT, sk::cuda::kOpN, int(M), int(N), int(D), &one, A, sk::cuda::kR16BF,
                           int(D), B, sk::cuda::kR16BF, int(D), &zero, C, out16 ? sk::cuda::kR16BF : sk::cuda::kR32F,
                           int(M), sk::cuda::kCompute32F, sk::cuda::kGemmDefault);
      cudaEventRecord(e1);
      cudaEventSynchronize(e1);
      if (s != 0) {
        std::fprintf(stderr, "floor GEMM failed: %s\n", sk::cuda::cublas_status_name(s));
        std::exit(1);
      }
      float ms = 0;
      cudaEventElapsedTime(&ms, e0, e1);
      if (r >= 2) (out16 ? tg : tg32).push_back(ms * 1e-3);
    }
  // C holds the float32 output now; C16 its bf16 rounding.
  std::vector<float> c32(size_t(N * M));
  SK_CUDA(cudaMemcpy(c32.data(), C, c32.size() * 4, cudaMemcpyDeviceToHost));
  {
    std::vector<uint16_t> c16(c32.size());
    for (size_t i = 0; i < c32.size(); ++i) {
      uint32_t u;
      std::memcpy(&u, &c32[i], 4);
      c16[i] = uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    SK_CUDA(cudaMemcpy(C16, c16.data(), c16.size() * 2, cudaMemcpyHostToDevice));
    // The bf16 matrix TopK alone selects from, raw [N, M], for the PyTorch reference to time
    // torch.topk on the same values (bench/gpu/run.sh sets SAEKIT_BENCH_SELECT_DIR; torch_step.py
    // --select-dir reads select-N-M.bf16). Written to a temporary name and renamed.
    if (const char* dir = std::getenv("SAEKIT_BENCH_SELECT_DIR"); dir != nullptr && *dir != '\0') {
      const std::string path = std::string(dir) + "/select-" + std::to_string(N) + "-" + std::to_string(M) + ".bf16";
      const std::string tmp = path + ".tmp";
      FILE* f = std::fopen(tmp.c_str(), "wb");
      bool ok = f != nullptr && std::fwrite(c16.data(), 2, c16.size(), f) == c16.size();
      if (f != nullptr) ok = std::fclose(f) == 0 && ok;
      if (ok) ok = std::rename(tmp.c_str(), path.c_str()) == 0;
      if (!ok) {
        std::fprintf(stderr, "could not write %s: torch.topk on the same matrix is skipped\n", path.c_str());
        std::remove(tmp.c_str());
      }
    }
  }
  // TopK alone: float32 keys, bf16 keys, then bf16 keys on the block-per-row kernel alone
  // (SAEKIT_CUDA_SELECT=block; the default takes rows a warp per row first).
  void* flags = nullptr;
  SK_CUDA(cudaMalloc(&flags, size_t(N) * 4));
  std::vector<double> ts_block;
  for (int r = 0; r < 3 * (reps + 2); ++r) {
    const bool b16 = r >= reps + 2;
    const bool block_only = r >= 2 * (reps + 2);
    if (block_only) setenv("SAEKIT_CUDA_SELECT", "block", 1);
    sk::cuda::SelectArgs a;
    a.flags = static_cast<int32_t*>(flags);
    a.pre = b16 ? nullptr : static_cast<const float*>(C);
    a.pre16 = b16 ? static_cast<const uint16_t*>(C16) : nullptr;
    a.ld = M;
    a.bias = static_cast<const float*>(bias);
    a.C = M;
    a.k = K;
    a.out_v = static_cast<float*>(ov);
    a.out_i = static_cast<int32_t*>(oi);
    cudaEventRecord(e0);
    sk::cuda::topk_select(a, N, nullptr);
    cudaEventRecord(e1);
    SK_CUDA(cudaEventSynchronize(e1));
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    if (r % (reps + 2) >= 2) (block_only ? ts_block : b16 ? ts : ts32).push_back(ms * 1e-3);
  }
  unsetenv("SAEKIT_CUDA_SELECT");
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(flags);
  lib->destroy(h);
  cudaFree(A);
  cudaFree(B);
  cudaFree(C);
  cudaFree(C16);
  cudaFree(bias);
  cudaFree(ov);
  cudaFree(oi);

  const double step = median(wall), gemm_floor = median(tg);
  const double adam_floor = 7.0 * double(2 * M * D) * 4.0 / bw;
  const double floor = gemm_floor + adam_floor;
  double dev = 0;
  for (int p = 0; p < 5; ++p) dev += median(ph[p]);
  double dev32 = 0, devplain = 0;
  for (int p = 0; p < 5; ++p) dev32 += median(ph32[p]);
  for (int p = 0; p < 5; ++p) devplain += median(phplain[p]);
  std::printf("BENCH impl=saekit-cuda dIn=%lld numLatents=%lld k=%lld batch=%lld precision=bf16 tokens_per_s=%.0f "
              "step_ms=%.3f step_driver_staging_ms=%.3f step_pinned_ms=%.3f tokens_per_s_pinned=%.0f step_prefetched_ms=%.3f "
              "tokens_per_s_prefetched=%.0f device_ms=%.3f gemm_ms=%.3f select_ms=%.3f decode_ms=%.3f backward_ms=%.3f update_ms=%.3f "
              "step_auxk_ms=%.3f step_auxk_pairs_ms=%.3f floor_ms=%.3f floor_gemm_ms=%.3f floor_adam_ms=%.3f topk_alone_ms=%.3f "
              "floor_tokens_per_s=%.0f bw_GBps=%.0f floor_gemm_f32out_ms=%.3f topk_alone_f32_ms=%.3f gemm_pre32_ms=%.3f "
              "select_pre32_ms=%.3f device_pre32_ms=%.3f decode_plain_ms=%.3f device_plain_ms=%.3f select_block_ms=%.3f "
              "topk_alone_block_ms=%.3f\n",
              (long long)D, (long long)M, (long long)K, (long long)N, double(N) / step, step * 1e3,
              median(wall_direct) * 1e3, median(wall_pinned) * 1e3, double(N) / median(wall_pinned),
              wall_overlap.empty() ? 0.0 : median(wall_overlap) * 1e3,
              wall_overlap.empty() ? 0.0 : double(N) / median(wall_overlap), dev * 1e3,
              median(ph[0]) * 1e3, median(ph[1]) * 1e3, median(ph[2]) * 1e3, median(ph[3]) * 1e3, median(ph[4]) * 1e3,
              median(wall_aux) * 1e3, median(wall_aux_sparse) * 1e3, floor * 1e3, gemm_floor * 1e3, adam_floor * 1e3, median(ts) * 1e3,
              double(N) / floor, bw * 1e-9, median(tg32) * 1e3, median(ts32) * 1e3, median(ph32[0]) * 1e3,
              median(ph32[1]) * 1e3, dev32 * 1e3, median(phplain[2]) * 1e3, devplain * 1e3, median(phblock[1]) * 1e3, median(ts_block) * 1e3);
  std::fflush(stdout);
}

// One side's random codes: k distinct latents per token (skewed: low indices fire more, as in
// trained SAEs), values in (0, 2], CSR by token, with the float64 sums in token order.
struct CorrCodes {
  std::vector<int64_t> ptr;
  std::vector<int32_t> idx;
  std::vector<float> val;
  std::vector<double> s, ss;
};
CorrCodes corr_codes(int64_t T, int64_t n, int64_t k, uint64_t seed) {
  CorrCodes c;
  c.ptr.resize(size_t(T + 1));
  c.idx.resize(size_t(T * k));
  c.val.resize(size_t(T * k));
  c.s.assign(size_t(n), 0.0);
  c.ss.assign(size_t(n), 0.0);
  Rng r{seed};
  std::vector<int64_t> stamp(size_t(n), -1);
  for (int64_t t = 0; t < T; ++t) {
    c.ptr[size_t(t)] = t * k;
    for (int64_t p = t * k; p < (t + 1) * k;) {
      const double u = 0.5 * (double(r.next()) + 1.0);
      const int64_t j = std::min<int64_t>(n - 1, int64_t(double(n) * u * u));
      if (stamp[size_t(j)] == t) continue;
      stamp[size_t(j)] = t;
      const float v = 1.0f + r.next();
      c.idx[size_t(p)] = int32_t(j);
      c.val[size_t(p)] = v;
      c.s[size_t(j)] += double(v);
      c.ss[size_t(j)] += double(v) * double(v);
      ++p;
    }
  }
  c.ptr[size_t(T)] = T * k;
  return c;
}

// Wall time of one sk_corr_api run (median of reps), full matrix or top + reverse lists; with
// heavy thresholds listed, once per threshold on the same codes (SAEKIT_CUDA_CORR_HEAVY; "" is
// the default rule), to tune which rows take the tiled path.
void run_corr(int64_t T, int64_t n, int64_t k, bool full, int64_t top, int reps, std::vector<std::string> heavy = {""}) {
  const sk_corr_i* api = sk_corr_api(SK_CORR_API_VERSION);
  CorrCodes A = corr_codes(T, n, k, 7), B = corr_codes(T, n, k, 8);
  sk_corr_codes c{n, n, T, A.ptr.data(), A.idx.data(), A.val.data(), B.ptr.data(), B.idx.data(), B.val.data(),
                  A.s.data(), A.ss.data(), B.s.data(), B.ss.data()};
  sk_corr_opts o{full ? 1 : 0, top, full ? 0 : 1};
  const int64_t kt = full ? 0 : std::min(top, n);
  std::vector<uint8_t> ca(static_cast<size_t>(n)), cb(static_cast<size_t>(n));
  std::vector<float> r(full ? static_cast<size_t>(n * n) : 0), tr(static_cast<size_t>(n * kt)), rr(static_cast<size_t>(n * kt));
  std::vector<int32_t> ti(static_cast<size_t>(n * kt)), ri(static_cast<size_t>(n * kt));
  sk_corr_out out{ca.data(), cb.data(), r.data(), ti.data(), tr.data(), ri.data(), rr.data()};
  for (const std::string& h : heavy) {
    if (h.empty()) unsetenv("SAEKIT_CUDA_CORR_HEAVY");
    else setenv("SAEKIT_CUDA_CORR_HEAVY", h.c_str(), 1);
    std::vector<double> wall;
    for (int rep = 0; rep < reps; ++rep) {
      sk_status st{};
      const auto t0 = Clock::now();
      ck(api->run(&st, 0, &c, &o, &out), st, "sparse correlation");
      wall.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    const double w = median(wall);
    std::printf("CORR impl=saekit-cuda tokens=%lld nA=%lld nB=%lld k=%lld mode=%s heavy=%s ms=%.1f tokens_per_s=%.0f "
                "products_per_s=%.3g\n",
                (long long)T, (long long)n, (long long)n, (long long)k, full ? "full" : "top5+reverse",
                h.empty() ? "default" : h.c_str(), w * 1e3, double(T) / w, double(T) * double(k) * double(k) / w);
    std::fflush(stdout);
  }
  unsetenv("SAEKIT_CUDA_CORR_HEAVY");
}

}  // namespace

int main(int argc, char** argv) {
  // --quick: 3 repeats; --tiny: one small shape (a smoke test, e.g. under the CPU emulation).
  // --shape 1|2: that training-step shape alone; --no-corr: skip the correlation (profiling runs).
  bool quick = false, tiny = false, corr = true;
  int only = 0;
  for (int i = 1; i < argc; ++i) {
    quick = quick || std::strcmp(argv[i], "--quick") == 0;
    tiny = tiny || std::strcmp(argv[i], "--tiny") == 0;
    corr = corr && std::strcmp(argv[i], "--no-corr") != 0;
    if (std::strcmp(argv[i], "--shape") == 0 && i + 1 < argc) only = std::atoi(argv[++i]);
  }
  std::string why = sk::cuda::unavailable_reason(nullptr);
  if (!why.empty()) {
    std::printf("SKIP: %s\n", why.c_str());
    return 0;
  }
  cudaDeviceProp p;
  SK_CUDA(cudaGetDeviceProperties(&p, 0));
  const double bw = device_bandwidth(tiny ? size_t(1) << 20 : size_t(1) << 30);
  std::printf("device: %s, sm_%d%d, %.0f GiB, measured D2D bandwidth %.0f GB/s\n", p.name, p.major, p.minor,
              double(p.totalGlobalMem) / double(1ull << 30), bw * 1e-9);
  const int reps = quick || tiny ? 3 : 10;
  if (tiny) {
    run_shape(64, 1000, 8, 256, reps, bw);
    run_corr(300, 50, 4, false, 5, 1);
    return 0;
  }
  if (only == 0 || only == 1) run_shape(768, 24576, 32, 8192, reps, bw);
  if (only == 0 || only == 2) run_shape(4096, 65536, 64, 8192, reps, bw);
  if (!corr) return 0;
  // The CPU benchmark's shape (bench/correlate.ts: 24576 x 24576, k 32, 10^6 tokens), then a full matrix.
  // Heavy rows: the default rule (more than max(2048, 4 x the mean) postings), a lower and a
  // higher threshold, and none heavy; the CORR lines say which is fastest on this card.
  run_corr(1000000, 24576, 32, false, 5, quick ? 1 : 2, {"", "512", "8192", "1000000000"});
  run_corr(262144, 16384, 32, true, 0, quick ? 1 : 2, {"", "1000000000"});
  return 0;
}
