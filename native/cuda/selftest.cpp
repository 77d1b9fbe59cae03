// Self-test of the CUDA plugin: dlopens libsaekit_cuda.so (as the addon does) and checks every
// slot of the backend table and of the device SAE against float64 references written here, on
// fresh random inputs with odd sizes. Prints one PASS/FAIL line per check and exits non-zero on
// any failure; without a usable GPU it prints "SKIP: <reason>" and exits 0.
//
//   saekit_cuda_selftest [--quick] [path/to/libsaekit_cuda.so]
//   --quick: small shapes only (for compute-sanitizer).
//
// Selection oracle. A TopK code set is a discontinuous function of the pre-activations, so a
// float32 device and a float64 reference can legitimately disagree on near-ties. The tests
// therefore (1) check the device GEMM (preacts) against float64 with tolerances, and (2) check
// every selection exactly against the same rule (value desc, ties to the lower index) applied on
// the host to the device's own pre-activations, which are bit-identical to the ones the
// selection sees (same GEMM call, bias added in float32 the same way). Gradients and Adam are then
// compared with a float64 step that uses the device's code indices and float64 values.
#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/corr_device.h"
#include "core/half.h"
#include "core/philox.h"
#include "core/sae_device.h"

namespace {

int g_failures = 0;
bool g_quick = false;
// Appended to the names of the step tests while a variant is forced (the dense AuxK GEMMs).
std::string g_variant;
// The AuxK loss of the step tests: 0 sparsify's, 1 the paper's (sk_sae_step_opts::auxk_variant).
int g_auxk_variant = 0;

void report(bool ok, const std::string& name, const std::string& detail) {
  std::printf("%s: %s%s%s\n", ok ? "PASS" : "FAIL", name.c_str(), detail.empty() ? "" : " -- ", detail.c_str());
  std::fflush(stdout);
  if (!ok) ++g_failures;
}

std::string strf(const char* f, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof(buf), f, ap);
  va_end(ap);
  return buf;
}

void ok_or_throw(int rc, const sk_status& st, const char* what) {
  if (rc != 0) throw std::runtime_error(strf("%s failed (code %d): %s", what, st.code, st.message));
}
#define CALL(what, expr)   \
  do {                     \
    sk_status st{};        \
    int rc_ = (expr);      \
    ok_or_throw(rc_, st, what); \
  } while (0)

void run_test(const std::string& name, const std::function<void()>& body) {
  try {
    body();
  } catch (const std::exception& e) {
    report(false, name, std::string("exception: ") + e.what());
  }
}

struct Plugin {
  int (*api_version)(void) = nullptr;
  int (*score)(char*, size_t) = nullptr;
  int (*init)(sk_backend*, sk_status*) = nullptr;
  const sk_sae_i* (*sae_api)(int) = nullptr;
};

sk_backend g_be;
const sk_sae_i* g_sae = nullptr;
const sk_corr_i* g_corr = nullptr;

// ---- backend table ---------------------------------------------------------------------------

struct DevMem {
  void* p = nullptr;
  explicit DevMem(size_t bytes) { CALL("alloc", g_be.iface->alloc(g_be.ctx, &st, &p, bytes)); }
  ~DevMem() { g_be.iface->free(g_be.ctx, p); }
  DevMem(const DevMem&) = delete;
  DevMem& operator=(const DevMem&) = delete;
};
void up(void* d, const void* h, size_t b) { CALL("upload", g_be.iface->upload(g_be.ctx, &st, d, h, b)); }
void down(void* h, const void* d, size_t b) { CALL("download", g_be.iface->download(g_be.ctx, &st, h, d, b)); }

size_t esize(sk_dtype t) { return t == SK_F32 || t == SK_I32 ? 4 : 2; }
float host_to_f32(sk_dtype t, const void* p, size_t i) {
  switch (t) {
    case SK_F32: return static_cast<const float*>(p)[i];
    case SK_BF16: return sk::bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case SK_F16: return sk::f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return float(static_cast<const int32_t*>(p)[i]);
  }
}
void host_store(sk_dtype t, void* p, size_t i, float f) {
  switch (t) {
    case SK_F32: static_cast<float*>(p)[i] = f; break;
    case SK_BF16: static_cast<uint16_t*>(p)[i] = sk::f32_to_bf16(f); break;
    case SK_F16: static_cast<uint16_t*>(p)[i] = sk::f32_to_f16(f); break;
    default: {
      int32_t v;
      if (std::isnan(f)) v = 0;
      else if (f >= 2147483648.0f) v = std::numeric_limits<int32_t>::max();
      else if (f <= -2147483648.0f) v = std::numeric_limits<int32_t>::min();
      else v = int32_t(f);
      static_cast<int32_t*>(p)[i] = v;
    }
  }
}
const char* dname(sk_dtype t) {
  return t == SK_F32 ? "f32" : t == SK_BF16 ? "bf16" : t == SK_F16 ? "f16" : "i32";
}

void test_convert() {
  std::mt19937_64 rng(11);
  // Special values first, then random bit patterns and random magnitudes.
  std::vector<float> f = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65520.0f, 65519.99f, 1e-8f, 5.9604645e-08f, 2.9802322e-08f,
                          1.1754944e-38f, 1e-45f, 3.0e38f, -3.0e38f, 2147483648.0f, -2147483648.0f, 2147483520.0f,
                          std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
                          1.00390625f, 1.01171875f, 1.0009765625f, 0.33333334f, -7.5f, 123456.789f};
  std::uniform_int_distribution<uint32_t> bits;
  std::normal_distribution<double> nd(0.0, 1.0);
  for (int i = 0; i < 3000; ++i) {
    uint32_t u = bits(rng);
    float x;
    std::memcpy(&x, &u, 4);
    f.push_back(x);
  }
  for (int i = 0; i < 3000; ++i) f.push_back(float(nd(rng) * std::pow(10.0, double(int(rng() % 20) - 10))));
  const size_t n = f.size();
  const sk_dtype types[] = {SK_F32, SK_BF16, SK_F16, SK_I32};
  for (sk_dtype st_ : types) {
    // Source in its own dtype (built from f with the host's exact conversion).
    std::vector<uint8_t> src(n * esize(st_));
    for (size_t i = 0; i < n; ++i) host_store(st_, src.data(), i, f[i]);
    DevMem dsrc(src.size());
    up(dsrc.p, src.data(), src.size());
    for (sk_dtype dt : types) {
      std::vector<uint8_t> want(n * esize(dt)), got(n * esize(dt));
      for (size_t i = 0; i < n; ++i) host_store(dt, want.data(), i, host_to_f32(st_, src.data(), i));
      if (st_ == dt) want = src;
      DevMem ddst(got.size());
      CALL("convert", g_be.iface->convert(g_be.ctx, &st, ddst.p, dt, dsrc.p, st_, int64_t(n)));
      down(got.data(), ddst.p, got.size());
      size_t bad = 0, first = 0;
      for (size_t i = 0; i < n; ++i)
        if (std::memcmp(&want[i * esize(dt)], &got[i * esize(dt)], esize(dt)) != 0) {
          if (!bad) first = i;
          ++bad;
        }
      report(bad == 0, strf("convert %s -> %s (bitwise, %zu values)", dname(st_), dname(dt), n),
             bad ? strf("%zu differ, first at %zu (source %g)", bad, first, double(host_to_f32(st_, src.data(), first)))
                 : "");
    }
  }
}

// An integer rounded once to bfloat16 / float16 (nearest even), from exact double arithmetic.
uint16_t round_int_to_16(int64_t v, sk_dtype t) {
  const int mant = t == SK_BF16 ? 7 : 10;
  const double d = double(v);
  const int e = std::max(int(std::floor(std::log2(std::fabs(d)))), t == SK_BF16 ? -126 : -14);
  const double ulp = std::ldexp(1.0, e - mant);
  const double r = std::nearbyint(d / ulp) * ulp;  // default rounding: to nearest even
  if (t == SK_F16 && std::fabs(r) > 65504.0) return d > 0 ? 0x7c00 : 0xfc00;
  return t == SK_BF16 ? sk::f32_to_bf16(float(r)) : sk::f32_to_f16(float(r));  // exact: r fits
}

// int32 -> bfloat16 / float16 rounds the integer once (not to float32 first): integers that
// float32 cannot hold, where rounding twice gives another value.
void test_convert_int_once() {
  const std::vector<int32_t> v = {33685505, -33685505, 16777217, 2147483647, -2147483647 - 1, 257, -129, 65519, 65521, 3};
  DevMem dsrc(v.size() * 4);
  up(dsrc.p, v.data(), v.size() * 4);
  for (sk_dtype dt : {SK_BF16, SK_F16}) {
    DevMem ddst(v.size() * 2);
    CALL("convert", g_be.iface->convert(g_be.ctx, &st, ddst.p, dt, dsrc.p, SK_I32, int64_t(v.size())));
    std::vector<uint16_t> got(v.size());
    down(got.data(), ddst.p, got.size() * 2);
    size_t bad = 0;
    for (size_t i = 0; i < v.size(); ++i) bad += got[i] != round_int_to_16(v[i], dt);
    report(bad == 0, strf("convert i32 -> %s rounds once (%zu integers)", dname(dt), v.size()), strf("%zu differ", bad));
  }
}

void host_fill(std::vector<double>& out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset, bool normal) {
  out.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) {
    uint64_t pos = offset + uint64_t(i);
    sk::Philox4x32 w = sk::philox_block(seed, stream, pos / 4);
    int lane = int(pos % 4);
    if (!normal) {
      out[size_t(i)] = sk::philox_uniform(w.v[lane]);
    } else {
      constexpr double kTwoPi = 6.283185307179586476925286766559;
      int p = lane >> 1;
      double r = std::sqrt(-2.0 * std::log(sk::philox_uniform_open(w.v[2 * p])));
      double theta = kTwoPi * sk::philox_uniform(w.v[2 * p + 1]);
      out[size_t(i)] = (lane & 1) ? r * std::sin(theta) : r * std::cos(theta);
    }
  }
}

void test_fill() {
  const int64_t n = 4099;
  const uint64_t seed = 0x123456789abcdefULL, stream = 0x100000007ULL, offset = 3;
  for (int normal = 0; normal < 2; ++normal) {
    std::vector<double> ref;
    host_fill(ref, n, seed, stream, offset, normal != 0);
    for (sk_dtype t : {SK_F32, SK_BF16, SK_F16}) {
      DevMem d(size_t(n) * esize(t));
      if (normal) CALL("fill_normal", g_be.iface->fill_normal(g_be.ctx, &st, d.p, t, n, seed, stream, offset));
      else CALL("fill_uniform", g_be.iface->fill_uniform(g_be.ctx, &st, d.p, t, n, seed, stream, offset));
      std::vector<uint8_t> got(size_t(n) * esize(t)), want(size_t(n) * esize(t));
      down(got.data(), d.p, got.size());
      for (int64_t i = 0; i < n; ++i) host_store(t, want.data(), size_t(i), float(ref[size_t(i)]));
      // Uniform fills stay below 1 in 16 bits: values that round up to 1.0 keep the largest below it.
      if (!normal && t != SK_F32) {
        const uint16_t one = t == SK_BF16 ? 0x3f80 : 0x3c00;
        for (int64_t i = 0; i < n; ++i) {
          uint16_t y;
          std::memcpy(&y, &want[size_t(i) * 2], 2);
          if (y == one) {
            y = uint16_t(one - 1);
            std::memcpy(&want[size_t(i) * 2], &y, 2);
          }
        }
      }
      // Uniform: bit-identical. Normal: the device's float64 log/sin/cos may differ from the
      // host's by an ulp of float64, which can move the float rounding by one unit at most.
      int64_t bad = 0, off_by_one = 0;
      for (int64_t i = 0; i < n; ++i) {
        int64_t a, b;
        if (t == SK_F32) {
          int32_t x, y;
          std::memcpy(&x, &got[size_t(i) * 4], 4);
          std::memcpy(&y, &want[size_t(i) * 4], 4);
          a = x;
          b = y;
        } else {
          uint16_t x, y;
          std::memcpy(&x, &got[size_t(i) * 2], 2);
          std::memcpy(&y, &want[size_t(i) * 2], 2);
          a = int16_t(x);
          b = int16_t(y);
        }
        if (a == b) continue;
        if (normal && std::llabs(a - b) == 1) ++off_by_one;
        else ++bad;
      }
      report(bad == 0, strf("fill_%s %s (n %lld, offset %llu)", normal ? "normal" : "uniform", dname(t),
                            (long long)n, (unsigned long long)offset),
             strf("%lld wrong, %lld one-ulp roundings", (long long)bad, (long long)off_by_one));
    }
  }
}

void test_gemm() {
  std::mt19937_64 rng(12);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t M = 67, N = 33, K = 29;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
      const int64_t lda = ac + 3, ldb = bc + 1, ldc = N + 2;
      std::vector<float> A(size_t(ar * lda)), B(size_t(br * ldb)), C(size_t(M * ldc)), out(C.size());
      for (auto& v : A) v = nd(rng);
      for (auto& v : B) v = nd(rng);
      for (auto& v : C) v = nd(rng);
      const float alpha = 1.5f, beta = 0.5f;
      DevMem dA(A.size() * 4), dB(B.size() * 4), dC(C.size() * 4);
      up(dA.p, A.data(), A.size() * 4);
      up(dB.p, B.data(), B.size() * 4);
      up(dC.p, C.data(), C.size() * 4);
      CALL("gemm_f32", g_be.iface->gemm_f32(g_be.ctx, &st, ta, tb, M, N, K, alpha, static_cast<float*>(dA.p), lda,
                                            static_cast<float*>(dB.p), ldb, beta, static_cast<float*>(dC.p), ldc));
      down(out.data(), dC.p, out.size() * 4);
      double worst = 0;
      bool pad_ok = true;
      for (int64_t i = 0; i < M; ++i) {
        for (int64_t j = 0; j < N; ++j) {
          double s = 0, mag = 0;
          for (int64_t k = 0; k < K; ++k) {
            double a = ta ? A[size_t(k * lda + i)] : A[size_t(i * lda + k)];
            double b = tb ? B[size_t(j * ldb + k)] : B[size_t(k * ldb + j)];
            s += a * b;
            mag += std::fabs(a * b);
          }
          double ref = alpha * s + beta * C[size_t(i * ldc + j)];
          double err = std::fabs(out[size_t(i * ldc + j)] - ref) / (alpha * mag + std::fabs(beta * C[size_t(i * ldc + j)]) + 1e-30);
          worst = std::max(worst, err);
        }
        for (int64_t j = N; j < ldc; ++j) pad_ok = pad_ok && out[size_t(i * ldc + j)] == C[size_t(i * ldc + j)];
      }
      // float32: worst case (K + 2) * 2^-24 ~ 2e-6 of sum |a b| + |beta c|; 1e-5 leaves headroom.
      report(worst < 1e-5 && pad_ok, strf("gemm_f32 trans_a=%d trans_b=%d (M %lld N %lld K %lld, padded ld)", ta, tb,
                                          (long long)M, (long long)N, (long long)K),
             strf("max error / sum|ab| %.2e%s", worst, pad_ok ? "" : ", wrote outside C"));
    }
  // K = 0 (a matmul with an empty inner dimension): C = beta C, whatever C held before.
  for (const float beta : {0.0f, 0.5f}) {
    const int64_t M0 = 5, N0 = 7;
    std::vector<float> C(size_t(M0 * N0)), out(C.size());
    for (auto& v : C) v = nd(rng) + 3.0f;
    DevMem dA(4), dB(4), dC(C.size() * 4);
    up(dC.p, C.data(), C.size() * 4);
    CALL("gemm_f32", g_be.iface->gemm_f32(g_be.ctx, &st, 0, 0, M0, N0, 0, 1.5f, static_cast<float*>(dA.p), 1,
                                          static_cast<float*>(dB.p), N0, beta, static_cast<float*>(dC.p), N0));
    down(out.data(), dC.p, out.size() * 4);
    int64_t bad = 0;
    for (size_t i = 0; i < C.size(); ++i) bad += out[i] != beta * C[i];
    report(bad == 0, strf("gemm_f32 K=0 beta=%g: C = beta C", double(beta)),
           strf("%lld of %lld wrong", (long long)bad, (long long)C.size()));
  }
}

// ---- SAE helpers -------------------------------------------------------------------------------

struct Model {
  int64_t D = 0, M = 0;
  bool apply = true;
  std::vector<float> slab;  // [W_encT | W_dec | b_enc | b_dec]
  int64_t size() const { return 2 * M * D + M + D; }
};

Model random_model(int64_t D, int64_t M, bool apply, uint64_t seed) {
  Model m;
  m.D = D;
  m.M = M;
  m.apply = apply;
  m.slab.resize(size_t(m.size()));
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  float* We = m.slab.data();
  float* Wd = We + M * D;
  float* be = Wd + M * D;
  float* bd = be + M;
  for (int64_t i = 0; i < M * D; ++i) We[i] = float(nd(rng) / std::sqrt(double(D)));
  for (int64_t l = 0; l < M; ++l) {
    double s = 0;
    for (int64_t d = 0; d < D; ++d) {
      double v = nd(rng);
      Wd[l * D + d] = float(v);
      s += v * v;
    }
    for (int64_t d = 0; d < D; ++d) Wd[l * D + d] = float(Wd[l * D + d] / std::sqrt(s));
  }
  for (int64_t l = 0; l < M; ++l) be[l] = float(0.1 * nd(rng));
  for (int64_t d = 0; d < D; ++d) bd[d] = float(0.1 * nd(rng));
  return m;
}

std::vector<float> random_x(int64_t N, int64_t D, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<float> x(size_t(N * D));
  for (auto& v : x) v = float(nd(rng));
  return x;
}

struct Sae {
  sk_sae_dev* p = nullptr;
  Sae(const Model& m, const float* thr = nullptr) {
    CALL("create", g_sae->create(&st, &p, 0, m.D, m.M, m.apply ? 1 : 0, m.slab.data(), thr));
  }
  ~Sae() { g_sae->destroy(p); }
  Sae(const Sae&) = delete;
  Sae& operator=(const Sae&) = delete;
};

std::vector<float> dev_preacts(const Sae& s, const Model& m, const std::vector<float>& x, int64_t N, int prec) {
  std::vector<float> out(size_t(N * m.M));
  CALL("preacts", g_sae->preacts(&st, s.p, x.data(), N, prec, out.data()));
  return out;
}

// The CPU rule on float activations: a = on ? z : 0 (on: z > 0, and z > thr for JumpReLU);
// the k best by value, ties to the lower latent index, sorted. cand: ascending latents or null.
void host_select(const std::vector<float>& pre, int64_t N, int64_t M, int64_t k, const std::vector<int32_t>* cand,
                 const float* thr, std::vector<float>& v, std::vector<int32_t>& idx) {
  v.assign(size_t(N * k), 0.0f);
  idx.assign(size_t(N * k), 0);
  std::vector<std::pair<float, int32_t>> row;
  for (int64_t n = 0; n < N; ++n) {
    row.clear();
    const int64_t C = cand ? int64_t(cand->size()) : M;
    for (int64_t j = 0; j < C; ++j) {
      int32_t l = cand ? (*cand)[size_t(j)] : int32_t(j);
      float z = pre[size_t(n * M + l)];
      bool on = thr ? (z > thr[l] && z > 0.0f) : (z > 0.0f);
      row.push_back({on ? z : 0.0f, l});
    }
    std::partial_sort(row.begin(), row.begin() + k, row.end(), [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    for (int64_t j = 0; j < k; ++j) {
      v[size_t(n * k + j)] = row[size_t(j)].first;
      idx[size_t(n * k + j)] = row[size_t(j)].second;
    }
  }
}

// float64 pre-activation of (row n, latent l) and its error scale sum |xc w| + |b|.
double ref_pre(const Model& m, const std::vector<float>& x, int64_t n, int64_t l, double* scale) {
  const float* We = m.slab.data() + l * m.D;
  const float* bd = m.slab.data() + 2 * m.M * m.D + m.M;
  double s = 0, a = 0;
  for (int64_t d = 0; d < m.D; ++d) {
    double xc = double(x[size_t(n * m.D + d)]) - (m.apply ? double(bd[d]) : 0.0);
    s += xc * We[d];
    a += std::fabs(xc * We[d]);
  }
  double b = m.slab[size_t(2 * m.M * m.D + l)];
  if (scale) *scale = a + std::fabs(b);
  return s + b;
}

// Worst-case relative error of one dot product per precision (per element of sum |xc w|):
// float32 with D <= 768 accumulations: ~D * 2^-24 < 5e-5 (we use 1e-4); tf32 keeps 10 explicit
// mantissa bits of both operands (truncated: up to 2 * 2^-10 ~ 2e-3 per product; we use 4e-3);
// bf16 7 bits, rounded to nearest (2 * 2^-8 ~ 8e-3 per product, plus float32 accumulation).
double prec_tol(int prec) { return prec == SK_PREC_F32 ? 1e-4 : prec == SK_PREC_TF32 ? 4e-3 : 1.2e-2; }
const char* prec_name(int p) { return p == SK_PREC_F32 ? "f32" : p == SK_PREC_TF32 ? "tf32" : "bf16"; }

void check_preacts(const Sae& s, const Model& m, const std::vector<float>& x, int64_t N, int prec,
                   std::vector<float>* keep, int64_t sample_rows) {
  std::vector<float> pre = dev_preacts(s, m, x, N, prec);
  double worst = 0;
  const int64_t step = std::max<int64_t>(1, N / std::max<int64_t>(1, sample_rows));
  int64_t rows = 0;
  for (int64_t n = 0; n < N; n += step, ++rows)
    for (int64_t l = 0; l < m.M; ++l) {
      double sc;
      double r = ref_pre(m, x, n, l, &sc);
      worst = std::max(worst, std::fabs(pre[size_t(n * m.M + l)] - r) / (sc + 1e-30));
    }
  report(worst <= prec_tol(prec), strf("preacts %s (D %lld M %lld N %lld, %lld rows vs float64)%s", prec_name(prec),
                                       (long long)m.D, (long long)m.M, (long long)N, (long long)rows, g_variant.c_str()),
         strf("max error / sum|xc w| %.2e (tolerance %.1e)", worst, prec_tol(prec)));
  if (keep) *keep = std::move(pre);
}

void check_encode_exact(const Sae& s, const Model& m, const std::vector<float>& x, int64_t N, int64_t k, int prec,
                        const std::vector<float>& pre, const float* thr, const std::string& label) {
  std::vector<float> v(size_t(N * k)), want_v;
  std::vector<int32_t> i(size_t(N * k)), want_i;
  CALL("encode", g_sae->encode(&st, s.p, x.data(), N, k, prec, v.data(), i.data()));
  host_select(pre, N, m.M, k, nullptr, thr, want_v, want_i);
  int64_t bad_rows = 0, first = -1;
  for (int64_t n = 0; n < N; ++n) {
    bool ok = std::memcmp(&v[size_t(n * k)], &want_v[size_t(n * k)], size_t(k) * 4) == 0 &&
              std::memcmp(&i[size_t(n * k)], &want_i[size_t(n * k)], size_t(k) * 4) == 0;
    if (!ok && first < 0) first = n;
    bad_rows += !ok;
  }
  report(bad_rows == 0, strf("encode %s %s (D %lld M %lld k %lld N %lld): codes equal the host rule on the device's "
                             "pre-activations", label.c_str(), prec_name(prec), (long long)m.D, (long long)m.M,
                             (long long)k, (long long)N),
         bad_rows ? strf("%lld rows differ, first row %lld: got (%g, %d) want (%g, %d)", (long long)bad_rows,
                         (long long)first, double(v[size_t(first * k)]), i[size_t(first * k)],
                         double(want_v[size_t(first * k)]), want_i[size_t(first * k)])
                  : "");
}

// ---- the float64 reference step -----------------------------------------------------------------

struct Codes {
  int64_t K = 0;
  std::vector<int32_t> idx;   // [N, K]
  std::vector<uint8_t> on;    // the device's ReLU mask (its float pre > 0)
};

Codes codes_from(const std::vector<float>& pre, int64_t N, int64_t M, int64_t k, const std::vector<int32_t>* cand) {
  Codes c;
  c.K = k;
  std::vector<float> v;
  host_select(pre, N, M, k, cand, nullptr, v, c.idx);
  c.on.resize(v.size());
  for (size_t q = 0; q < v.size(); ++q) c.on[q] = v[q] > 0.0f;
  return c;
}

struct RefStep {
  double loss = 0, fvu = 0, auxk = 0, l0 = 0;
  std::vector<double> g;  // slab layout
  std::vector<uint8_t> fired;
  std::vector<uint8_t> has;  // latent has pairs
};

// g_auxk_variant 1 (the paper's AuxK): e_hat without b_dec, normalised by rv = sum ||e - mean e||^2,
// no scale (aux_scale ignored), no b_dec gradient from it.
RefStep ref_step(const std::vector<double>& P, int64_t D, int64_t M, bool apply, const std::vector<float>& x, int64_t N,
                 const Codes& main, const Codes& aux, double alpha, double aux_scale) {
  const bool paper = g_auxk_variant == 1 && aux.K > 0;
  const double* We = P.data();
  const double* Wd = We + M * D;
  const double* be = Wd + M * D;
  const double* bd = be + M;
  RefStep r;
  r.g.assign(size_t(2 * M * D + M + D), 0.0);
  r.fired.assign(size_t(M), 0);
  r.has.assign(size_t(M), 0);
  double* gWe = r.g.data();
  double* gWd = gWe + M * D;
  double* gbe = gWd + M * D;
  double* gbd = gbe + M;
  std::vector<double> mean(size_t(D), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) mean[size_t(d)] += x[size_t(n * D + d)] / double(N);
  double tv = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) {
      double c = x[size_t(n * D + d)] - mean[size_t(d)];
      tv += c * c;
    }
  std::vector<double> xc(static_cast<size_t>(D)), e(static_cast<size_t>(D)), rr(static_cast<size_t>(D));
  double sse = 0, asse = 0;
  int64_t positive = 0;
  auto act_of = [&](int64_t l, uint8_t on) {
    if (!on) return 0.0;
    double s = be[l];
    for (int64_t d = 0; d < D; ++d) s += xc[size_t(d)] * We[l * D + d];
    return s > 0 ? s : 0.0;
  };
  double rv = 0;  // the paper's normaliser: a first pass over the residuals
  if (paper) {
    std::vector<double> E(size_t(N * D)), em(size_t(D), 0.0);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t d = 0; d < D; ++d) xc[size_t(d)] = x[size_t(n * D + d)] - (apply ? bd[d] : 0.0);
      double* er = &E[size_t(n * D)];
      for (int64_t d = 0; d < D; ++d) er[d] = x[size_t(n * D + d)] - bd[d];
      for (int64_t j = 0; j < main.K; ++j) {
        const int64_t l = main.idx[size_t(n * main.K + j)];
        const double a = act_of(l, main.on[size_t(n * main.K + j)]);
        for (int64_t d = 0; d < D; ++d) er[d] -= a * Wd[l * D + d];
      }
      for (int64_t d = 0; d < D; ++d) em[size_t(d)] += er[d] / double(N);
    }
    for (int64_t i = 0; i < N * D; ++i) rv += (E[size_t(i)] - em[size_t(i % D)]) * (E[size_t(i)] - em[size_t(i % D)]);
  }
  const double gscale = -2.0 / tv;
  const double hscale = paper ? (rv > 0 ? 2.0 * alpha / rv : 0.0) : 2.0 * alpha * aux_scale / tv;
  std::vector<double> am(static_cast<size_t>(main.K)), aa(static_cast<size_t>(aux.K));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t d = 0; d < D; ++d) xc[size_t(d)] = x[size_t(n * D + d)] - (apply ? bd[d] : 0.0);
    for (int64_t d = 0; d < D; ++d) e[size_t(d)] = bd[d];
    for (int64_t j = 0; j < main.K; ++j) {
      const int64_t l = main.idx[size_t(n * main.K + j)];
      am[size_t(j)] = act_of(l, main.on[size_t(n * main.K + j)]);
      for (int64_t d = 0; d < D; ++d) e[size_t(d)] += am[size_t(j)] * Wd[l * D + d];
      if (am[size_t(j)] > 0) {
        ++positive;
        r.fired[size_t(l)] = 1;
      }
    }
    for (int64_t d = 0; d < D; ++d) {
      e[size_t(d)] = x[size_t(n * D + d)] - e[size_t(d)];
      sse += e[size_t(d)] * e[size_t(d)];
      gbd[d] += gscale * e[size_t(d)];
    }
    for (int64_t j = 0; j < main.K; ++j) {
      const int64_t l = main.idx[size_t(n * main.K + j)];
      r.has[size_t(l)] = 1;
      if (!(am[size_t(j)] > 0)) continue;
      double dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += e[size_t(d)] * Wd[l * D + d];
      const double dpre = gscale * dot;
      gbe[l] += dpre;
      for (int64_t d = 0; d < D; ++d) {
        gWd[l * D + d] += am[size_t(j)] * gscale * e[size_t(d)];
        gWe[l * D + d] += dpre * xc[size_t(d)];
      }
    }
    if (aux.K == 0) continue;
    for (int64_t d = 0; d < D; ++d) rr[size_t(d)] = paper ? 0.0 : bd[d];
    for (int64_t j = 0; j < aux.K; ++j) {
      const int64_t l = aux.idx[size_t(n * aux.K + j)];
      aa[size_t(j)] = act_of(l, aux.on[size_t(n * aux.K + j)]);
      for (int64_t d = 0; d < D; ++d) rr[size_t(d)] += aa[size_t(j)] * Wd[l * D + d];
    }
    for (int64_t d = 0; d < D; ++d) {
      rr[size_t(d)] -= e[size_t(d)];
      asse += rr[size_t(d)] * rr[size_t(d)];
      if (!paper) gbd[d] += hscale * rr[size_t(d)];
    }
    for (int64_t j = 0; j < aux.K; ++j) {
      const int64_t l = aux.idx[size_t(n * aux.K + j)];
      r.has[size_t(l)] = 1;
      if (!(aa[size_t(j)] > 0)) continue;
      double dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += rr[size_t(d)] * Wd[l * D + d];
      const double dpre = hscale * dot;
      gbe[l] += dpre;
      for (int64_t d = 0; d < D; ++d) {
        gWd[l * D + d] += aa[size_t(j)] * hscale * rr[size_t(d)];
        gWe[l * D + d] += dpre * xc[size_t(d)];
      }
    }
  }
  if (apply)
    for (int64_t l = 0; l < M; ++l)
      for (int64_t d = 0; d < D; ++d) gbd[d] -= gbe[l] * We[l * D + d];
  r.fvu = sse / tv;
  r.auxk = !aux.K ? 0.0 : paper ? (rv > 0 ? asse / rv : 0.0) : aux_scale * asse / tv;
  r.loss = r.fvu + alpha * r.auxk;
  r.l0 = double(positive) / double(N);
  return r;
}

// Projection, Adam (PyTorch's bias-corrected form) and renormalisation, in float64.
void ref_adam(std::vector<double>& P, std::vector<double>& m, std::vector<double>& v, RefStep& g, int64_t D, int64_t M,
              int64_t t, double lr, double b1, double b2, double eps) {
  double* Wd = P.data() + M * D;
  double* gWd = g.g.data() + M * D;
  for (int64_t l = 0; l < M; ++l) {
    double par = 0;
    for (int64_t d = 0; d < D; ++d) par += gWd[l * D + d] * Wd[l * D + d];
    for (int64_t d = 0; d < D; ++d) gWd[l * D + d] -= par * Wd[l * D + d];
  }
  const double bc1 = 1 - std::pow(b1, double(t)), bc2 = 1 - std::pow(b2, double(t));
  for (size_t i = 0; i < P.size(); ++i) {
    m[i] = b1 * m[i] + (1 - b1) * g.g[i];
    v[i] = b2 * v[i] + (1 - b2) * g.g[i] * g.g[i];
    P[i] -= lr / bc1 * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + eps);
  }
  for (int64_t l = 0; l < M; ++l) {
    double s = 0;
    for (int64_t d = 0; d < D; ++d) s += Wd[l * D + d] * Wd[l * D + d];
    s = std::sqrt(s);
    if (s > 0)
      for (int64_t d = 0; d < D; ++d) Wd[l * D + d] /= s;
  }
}

// ||a - b|| / ||b|| over [lo, hi).
double rel_norm(const std::vector<float>& a, const std::vector<double>& b, size_t lo, size_t hi) {
  double num = 0, den = 0;
  for (size_t i = lo; i < hi; ++i) {
    double d = double(a[i]) - b[i];
    num += d * d;
    den += b[i] * b[i];
  }
  return std::sqrt(num) / (std::sqrt(den) + 1e-300);
}

std::vector<int32_t> every(int64_t M, int64_t stride, int64_t start) {
  std::vector<int32_t> d;
  for (int64_t l = start; l < M; l += stride) d.push_back(int32_t(l));
  return d;
}

sk_sae_step_opts step_opts(int64_t k, const std::vector<int32_t>& dead, float alpha, int prec) {
  sk_sae_step_opts o{};
  o.k = k;
  o.auxk_alpha = alpha;
  o.host_dead = dead.empty() ? nullptr : dead.data();
  o.num_dead = int64_t(dead.size());
  o.precision = prec;
  o.auxk_variant = g_auxk_variant;
  o.lr = 1e-4f;
  o.beta1 = 0.9f;
  o.beta2 = 0.999f;
  o.eps = 1e-8f;
  return o;
}

// Pre-activations (sample_rows rows against float64) and codes (every row, exactly against the
// host rule on the device's pre-activations) of a random model, in float32 and bf16.
void test_encode_f32_bf16(const char* name, int64_t D, int64_t M, int64_t N, int64_t k, uint64_t seed,
                          int64_t sample_rows, const char* label) {
  run_test(name, [&] {
    Model m = random_model(D, M, true, seed);
    std::vector<float> x = random_x(N, D, seed + 1);
    Sae s(m);
    for (int prec : {SK_PREC_F32, SK_PREC_BF16}) {
      std::vector<float> pre;
      check_preacts(s, m, x, N, prec, &pre, sample_rows);
      check_encode_exact(s, m, x, N, k, prec, pre, nullptr, label);
    }
  });
}

// Runs fn with the environment variable `name` set to `value`, tagging the step tests' names.
template <typename F>
void with_env(const char* name, const char* value, const std::string& tag, F fn) {
  setenv(name, value, 1);
  const std::string before = g_variant;
  g_variant += " [" + tag + "]";
  fn();
  g_variant = before;
  unsetenv(name);
}

// Runs fn with AuxK forced onto its dense GEMMs in column chunks of `chunk` dead latents.
template <typename F>
void with_dense_aux(const char* chunk, F fn) {
  setenv("SAEKIT_CUDA_AUXK_CHUNK", chunk, 1);
  with_env("SAEKIT_CUDA_AUXK", "dense", strf("dense AuxK, chunks of %s", chunk), fn);
  unsetenv("SAEKIT_CUDA_AUXK_CHUNK");
}

// Runs fn with the paper's AuxK (g_auxk_variant 1) in the step tests.
template <typename F>
void with_paper_auxk(F fn) {
  const std::string before = g_variant;
  g_variant += " [paper AuxK]";
  g_auxk_variant = 1;
  fn();
  g_auxk_variant = 0;
  g_variant = before;
}

// Dense gradients (want_grads) against the float64 step on the device's codes.
void test_grads(int64_t D, int64_t M, int64_t k, int64_t N, bool apply, int64_t dead_stride, int prec, uint64_t seed) {
  const std::string name = strf("step want_grads %s (D %lld M %lld k %lld N %lld, apply_b_dec %d, dead %s)%s",
                                prec_name(prec), (long long)D, (long long)M, (long long)k, (long long)N, int(apply),
                                dead_stride ? strf("every %lld", (long long)dead_stride).c_str() : "none",
                                g_variant.c_str());
  run_test(name, [&] {
    Model m = random_model(D, M, apply, seed);
    std::vector<float> x = random_x(N, D, seed + 1);
    Sae s(m);
    std::vector<int32_t> dead = dead_stride ? every(M, dead_stride, 1) : std::vector<int32_t>();
    const float alpha = 1.0f / 32.0f;
    const int64_t kaux_base = D / 2;
    const bool use_aux = !dead.empty() && kaux_base > 0;
    const int64_t Ka = use_aux ? std::min<int64_t>(kaux_base, int64_t(dead.size())) : 0;
    const double aux_scale = use_aux ? std::min(double(dead.size()) / double(kaux_base), 1.0) : 0.0;
    std::vector<float> pre = dev_preacts(s, m, x, N, prec);
    Codes main = codes_from(pre, N, M, k, nullptr);
    Codes aux = Ka ? codes_from(pre, N, M, Ka, &dead) : Codes();
    std::vector<double> P(m.slab.begin(), m.slab.end());
    RefStep ref = ref_step(P, D, M, apply, x, N, main, aux, alpha, aux_scale);
    sk_sae_step_opts o = step_opts(k, dead, alpha, prec);
    std::vector<float> grads(size_t(m.size()));
    std::vector<uint8_t> fired(static_cast<size_t>(M));
    o.want_grads = 1;
    o.host_grads = grads.data();
    sk_sae_step_stats stats{};
    stats.host_fired = fired.data();
    CALL("step", g_sae->step(&st, s.p, x.data(), N, &o, &stats));
    std::vector<float> after(size_t(m.size()));
    CALL("get_params", g_sae->get_params(&st, s.p, after.data()));
    const bool unchanged = after == m.slab;
    // Tolerances (normwise, relative): float32 sums of at most N + K terms carry ~1e-6;
    // 1e-4 leaves headroom while any indexing error gives O(1). tf32/bf16: the codes' values
    // come from the reduced-precision GEMM (relative error up to ~1e-3 / ~1e-2 of sum|xc w|),
    // and every gradient is linear in them.
    const double tol = prec == SK_PREC_F32 ? 1e-4 : prec == SK_PREC_TF32 ? 1e-2 : 6e-2;
    const size_t MD = size_t(M * D);
    const double eWe = rel_norm(grads, ref.g, 0, MD), eWd = rel_norm(grads, ref.g, MD, 2 * MD),
                 ebe = rel_norm(grads, ref.g, 2 * MD, 2 * MD + size_t(M)),
                 ebd = rel_norm(grads, ref.g, 2 * MD + size_t(M), grads.size());
    const double lrel = std::fabs(stats.loss - ref.loss) / ref.loss, frel = std::fabs(stats.fvu - ref.fvu) / ref.fvu;
    const double arel = ref.auxk > 0 ? std::fabs(stats.auxk - ref.auxk) / ref.auxk : std::fabs(stats.auxk);
    const double vtol = prec == SK_PREC_F32 ? 1e-5 : tol;
    const bool fired_ok = fired == ref.fired;
    const bool ok = eWe <= tol && eWd <= tol && ebe <= tol && ebd <= tol && lrel <= vtol && frel <= vtol &&
                    arel <= vtol && std::fabs(stats.l0 - ref.l0) <= 2.0 / double(N) && fired_ok && unchanged &&
                    stats.num_dead == int64_t(dead.size());
    report(ok, name,
           strf("rel err W_enc %.1e W_dec %.1e b_enc %.1e b_dec %.1e (tol %.0e); loss %.1e fvu %.1e auxk %.1e; l0 %.3f "
                "vs %.3f; fired %s; params %s",
                eWe, eWd, ebe, ebd, tol, lrel, frel, arel, stats.l0, ref.l0, fired_ok ? "equal" : "DIFFER",
                unchanged ? "unchanged" : "CHANGED"));
  });
}

// Three Adam steps against the float64 step + Adam on the device's codes.
void test_adam(int64_t D, int64_t M, int64_t k, int64_t N, int64_t dead_stride, uint64_t seed) {
  const std::string name = strf("step Adam x3 f32 (D %lld M %lld k %lld N %lld, dead every %lld)%s", (long long)D,
                                (long long)M, (long long)k, (long long)N, (long long)dead_stride, g_variant.c_str());
  run_test(name, [&] {
    Model m = random_model(D, M, true, seed);
    Sae s(m);
    std::vector<int32_t> dead = every(M, dead_stride, 2);
    const float alpha = 1.0f / 32.0f;
    const int64_t kaux_base = D / 2;
    const int64_t Ka = std::min<int64_t>(kaux_base, int64_t(dead.size()));
    const double aux_scale = std::min(double(dead.size()) / double(kaux_base), 1.0);
    std::vector<double> P(m.slab.begin(), m.slab.end()), mm(P.size(), 0.0), vv(P.size(), 0.0);
    sk_sae_step_opts o = step_opts(k, dead, alpha, SK_PREC_F32);
    const int steps = 3;
    double worst_loss = 0;
    for (int t = 1; t <= steps; ++t) {
      std::vector<float> x = random_x(N, D, seed + 10 + uint64_t(t));
      std::vector<float> pre = dev_preacts(s, m, x, N, SK_PREC_F32);  // the device's current parameters
      Codes main = codes_from(pre, N, M, k, nullptr);
      Codes aux = codes_from(pre, N, M, Ka, &dead);
      RefStep ref = ref_step(P, D, M, true, x, N, main, aux, alpha, aux_scale);
      ref_adam(P, mm, vv, ref, D, M, t, o.lr, o.beta1, o.beta2, o.eps);
      sk_sae_step_stats stats{};
      CALL("step", g_sae->step(&st, s.p, x.data(), N, &o, &stats));
      worst_loss = std::max(worst_loss, std::fabs(stats.loss - ref.loss) / ref.loss);
    }
    std::vector<float> got(size_t(m.size())), gm(got.size()), gv(got.size());
    int64_t t = -1;
    CALL("get_params", g_sae->get_params(&st, s.p, got.data()));
    CALL("get_adam", g_sae->get_adam(&st, s.p, gm.data(), gv.data(), &t));
    // An element whose gradient is at rounding level can flip sign between float32 and float64;
    // Adam then moves it by ~2 lr the other way (the CPU suite sees ~1% such entries). We allow
    // up to 3% of entries beyond the tight tolerance, none beyond 3 lr per step.
    int64_t loose = 0;
    double worst = 0;
    const double lr = o.lr;
    for (size_t i = 0; i < got.size(); ++i) {
      const double err = std::fabs(double(got[i]) - P[i]);
      worst = std::max(worst, err);
      if (err > 1e-6 + 2e-6 * std::fabs(P[i])) ++loose;
    }
    const double frac = double(loose) / double(got.size());
    const double em = rel_norm(gm, mm, 0, gm.size()), ev = rel_norm(gv, vv, 0, gv.size());
    const bool ok = t == steps && frac <= 0.03 && worst <= 3 * lr * steps + 1e-6 && em <= 2e-2 && ev <= 2e-2 &&
                    worst_loss <= 1e-4;
    report(ok, name,
           strf("t %lld; %.2f%% entries beyond 1e-6 + 2e-6|p| (max %.1e, bound %.1e); m rel %.1e, v rel %.1e; loss rel "
                "%.1e",
                (long long)t, 100 * frac, worst, 3 * lr * steps + 1e-6, em, ev, worst_loss));
  });
}

// The column sums (x's mean, db_dec's sums of E, R and db_enc W_enc, dense AuxK's db_enc) run a
// block row per chunk of 256 rows or latents on gridDim.y, which stops at 65535 (N or M past
// 16.8M); beyond it the same blocks take the next chunks in turn. SAEKIT_CUDA_GRID_Y=1 lowers that
// cap to 1 with 2 row chunks (N > 256) and 2 latent chunks (M > 256): the gradients (b_dec's
// from all of these sums) and the losses equal those of one chunk a block, bit for bit.
void test_grid_y(int64_t D, int64_t M, int64_t k, int64_t N, int64_t dead_stride, uint64_t seed) {
  const std::string name = strf("step column sums past the gridDim.y cap (D %lld M %lld k %lld N %lld, dead every "
                                "%lld)%s", (long long)D, (long long)M, (long long)k, (long long)N,
                                (long long)dead_stride, g_variant.c_str());
  struct Out {
    std::vector<float> grads;
    double loss[3];
  };
  auto run = [&](const char* cap) {
    struct Env {  // unset again on every way out
      explicit Env(const char* v) {
        if (v) setenv("SAEKIT_CUDA_GRID_Y", v, 1);
      }
      ~Env() { unsetenv("SAEKIT_CUDA_GRID_Y"); }
    } env(cap);
    Model m = random_model(D, M, true, seed);
    std::vector<float> x = random_x(N, D, seed + 1);
    std::vector<int32_t> dead = every(M, dead_stride, 1);
    Sae s(m);
    Out out;
    out.grads.resize(size_t(m.size()));
    sk_sae_step_opts o = step_opts(k, dead, 1.0f / 32.0f, SK_PREC_F32);
    o.want_grads = 1;
    o.host_grads = out.grads.data();
    sk_sae_step_stats a{};
    CALL("step", g_sae->step(&st, s.p, x.data(), N, &o, &a));
    const double l[3] = {a.loss, a.fvu, a.auxk};
    std::memcpy(out.loss, l, sizeof(l));
    return out;
  };
  run_test(name, [&] {
    const Out base = run(nullptr);
    const Out o = run("1");
    const bool same = o.grads == base.grads && std::memcmp(o.loss, base.loss, sizeof(o.loss)) == 0;
    report(same, name, same ? "cap 1: same bits" : "cap 1: DIFFER");
  });
}

void test_decode(int64_t D, int64_t M, int64_t k, int64_t N, uint64_t seed) {
  run_test("decode", [&] {
    Model m = random_model(D, M, true, seed);
    Sae s(m);
    std::mt19937_64 rng(seed + 5);
    std::normal_distribution<double> nd(0.0, 1.0);
    std::vector<float> v(size_t(N * k));
    std::vector<int32_t> idx(size_t(N * k));
    std::vector<int32_t> perm(static_cast<size_t>(M));
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t l = 0; l < M; ++l) perm[size_t(l)] = int32_t(l);
      std::shuffle(perm.begin(), perm.end(), rng);
      for (int64_t j = 0; j < k; ++j) {
        idx[size_t(n * k + j)] = perm[size_t(j)];
        v[size_t(n * k + j)] = (rng() % 5 == 0) ? 0.0f : float(nd(rng));
      }
    }
    for (int bias = 0; bias < 2; ++bias) {
      std::vector<float> out(size_t(N * D));
      CALL("decode", g_sae->decode(&st, s.p, v.data(), idx.data(), N, k, bias, out.data()));
      const float* Wd = m.slab.data() + M * D;
      const float* bd = m.slab.data() + 2 * M * D + M;
      double worst = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t d = 0; d < D; ++d) {
          double r = bias ? bd[d] : 0.0, a = bias ? std::fabs(bd[d]) : 0.0;
          for (int64_t j = 0; j < k; ++j) {
            double t = double(v[size_t(n * k + j)]) * Wd[int64_t(idx[size_t(n * k + j)]) * D + d];
            r += t;
            a += std::fabs(t);
          }
          worst = std::max(worst, std::fabs(out[size_t(n * D + d)] - r) / (a + 1e-30));
        }
      report(worst < 1e-5, strf("decode with_bias=%d (D %lld M %lld k %lld N %lld)", bias, (long long)D, (long long)M,
                                (long long)k, (long long)N),
             strf("max error / sum|v w| %.1e", worst));
    }
  });
}

void test_nonfinite(int64_t D, int64_t M, int64_t k, int64_t N, uint64_t seed) {
  run_test("non-finite rejection", [&] {
    Model m = random_model(D, M, true, seed);
    std::vector<float> x = random_x(N, D, seed + 1);
    std::vector<int32_t> dead = every(M, 3, 0);
    sk_sae_step_opts o = step_opts(k, dead, 1.0f / 32.0f, SK_PREC_F32);
    const int want_code = 7 + 1;  // sk::ErrorCode::NonFinite + 1
    auto expect_reject = [&](Sae& s, const std::vector<float>& xin, const std::vector<float>& before,
                             const std::string& what) {
      sk_sae_step_stats stats{};
      sk_status st{};
      int rc = g_sae->step(&st, s.p, xin.data(), N, &o, &stats);
      std::vector<float> after(before.size()), am(before.size()), av(before.size());
      int64_t t = -1;
      CALL("get_params", g_sae->get_params(&st, s.p, after.data()));
      CALL("get_adam", g_sae->get_adam(&st, s.p, am.data(), av.data(), &t));
      bool zero_m = std::all_of(am.begin(), am.end(), [](float f) { return f == 0.0f; });
      bool ok = rc != 0 && st.code == want_code && std::memcmp(after.data(), before.data(), after.size() * 4) == 0 &&
                t == 0 && zero_m;
      report(ok, "non-finite rejection: " + what + g_variant,
             strf("rc %d code %d (want %d), params %s, t %lld: %s", rc, st.code, want_code,
                  std::memcmp(after.data(), before.data(), after.size() * 4) == 0 ? "unchanged" : "CHANGED",
                  (long long)t, st.message));
    };
    {
      Sae s(m);
      std::vector<float> xb = x;
      xb[size_t(5 * D + 3)] = std::numeric_limits<float>::quiet_NaN();
      expect_reject(s, xb, m.slab, "NaN in x row 5");
    }
    {
      Model bad = m;
      for (int64_t l = 0; l < M; ++l) bad.slab[size_t(2 * M * D + l)] = 3.0e38f;  // b_enc: pre-activations overflow
      for (int64_t l = 0; l < M; ++l) bad.slab[size_t(M * D + l * D)] = 3.0e38f;   // and W_dec
      Sae s(bad);
      expect_reject(s, x, bad.slab, "overflowing weights");
    }
    {
      // A step that works afterwards: the SAE is still usable.
      Sae s(m);
      sk_sae_step_stats stats{};
      CALL("step", g_sae->step(&st, s.p, x.data(), N, &o, &stats));
      report(std::isfinite(stats.loss) && stats.loss > 0, "step after setup: finite loss",
             strf("loss %.4f fvu %.4f auxk %.4f l0 %.2f", stats.loss, stats.fvu, stats.auxk, stats.l0));
    }
  });
}

// Prefetched batches (sk_sae_i::prefetch): Adam steps on batches uploaded ahead on the prefetch
// stream equal steps on the same batches uploaded at the step, bit for bit; two prefetches may
// be in flight; a withdrawn prefetch is not used by a later step on the same buffer.
void test_prefetch(int64_t D, int64_t M, int64_t k, int64_t N, uint64_t seed) {
  if (!g_sae->prefetch || !g_sae->host_alloc || !g_sae->host_free) {
    std::printf("SKIP prefetch: the plugin has no prefetch slot\n");
    return;
  }
  run_test("prefetch", [&] {
    Model m = random_model(D, M, true, seed);
    Sae a(m), b(m);
    sk_status st{};
    sk_sae_step_opts o = step_opts(k, {}, 0.0f, SK_PREC_F32);
    o.lr = 1e-3f;
    o.beta1 = 0.9f;
    o.beta2 = 0.999f;
    o.eps = 1e-8f;
    const size_t bytes = size_t(N * D) * sizeof(float);
    void* pb[2] = {nullptr, nullptr};
    for (void*& p : pb) CALL("host_alloc", g_sae->host_alloc(&st, &p, bytes));
    std::vector<std::vector<float>> xs;
    for (int r = 0; r < 5; ++r) xs.push_back(random_x(N, D, seed + 10 + uint64_t(r)));
    bool same = true;
    std::string why;
    auto both = [&](int r, const float* pa) {
      sk_sae_step_stats sa{}, sb{};
      CALL("step", g_sae->step(&st, a.p, pa, N, &o, &sa));
      CALL("step", g_sae->step(&st, b.p, xs[size_t(r)].data(), N, &o, &sb));
      if (sa.loss != sb.loss || sa.l0 != sb.l0) {
        same = false;
        why += strf("step %d: loss %.9g vs %.9g; ", r, sa.loss, sb.loss);
      }
    };
    // Steps 0-2: batch r + 1 prefetched before step r (two in flight), buffers alternating.
    std::memcpy(pb[0], xs[0].data(), bytes);
    CALL("prefetch", g_sae->prefetch(&st, a.p, static_cast<const float*>(pb[0]), N));
    for (int r = 0; r < 3; ++r) {
      std::memcpy(pb[(r + 1) & 1], xs[size_t(r + 1)].data(), bytes);
      CALL("prefetch", g_sae->prefetch(&st, a.p, static_cast<const float*>(pb[(r + 1) & 1]), N));
      both(r, static_cast<const float*>(pb[r & 1]));
    }
    // The prefetch of batch 3 (in pb[1]) is withdrawn; pb[1] then carries batch 4, unprefetched.
    CALL("withdraw", g_sae->prefetch(&st, a.p, static_cast<const float*>(pb[1]), 0));
    std::memcpy(pb[1], xs[4].data(), bytes);
    both(4, static_cast<const float*>(pb[1]));
    std::vector<float> pa(size_t(m.slab.size())), pbv(size_t(m.slab.size()));
    CALL("get_params", g_sae->get_params(&st, a.p, pa.data()));
    CALL("get_params", g_sae->get_params(&st, b.p, pbv.data()));
    report(same && pa == pbv, "steps on prefetched batches equal steps on uploaded ones (bit for bit)", why);
    int rc = g_sae->prefetch(&st, a.p, xs[0].data(), N);
    report(rc != 0 && st.code == 0 + 1, "prefetch of pageable memory is an Arg error", strf("rc %d code %d: %s", rc, st.code, st.message));
    for (void* p : pb) g_sae->host_free(p);
  });
}

void test_jumprelu(int64_t D, int64_t M, int64_t N, uint64_t seed) {
  run_test("jumprelu", [&] {
    Model m = random_model(D, M, true, seed);
    std::mt19937_64 rng(seed + 3);
    std::uniform_real_distribution<double> ud(-0.5, 2.0);
    std::vector<float> thr(static_cast<size_t>(M));
    for (auto& t : thr) t = float(ud(rng));
    std::vector<float> x = random_x(N, D, seed + 4);
    Sae s(m, thr.data());
    std::vector<float> pre = dev_preacts(s, m, x, N, SK_PREC_F32);
    int64_t most = 0;
    for (int64_t n = 0; n < N; ++n) {
      int64_t c = 0;
      for (int64_t l = 0; l < M; ++l) {
        float z = pre[size_t(n * M + l)];
        c += (z > thr[size_t(l)] && z > 0.0f);
      }
      most = std::max(most, c);
    }
    const int64_t k = std::max<int64_t>(most, 1) + 2;  // padded rows
    check_encode_exact(s, m, x, N, k, SK_PREC_F32, pre, thr.data(), "jumprelu");
    if (most >= 2) {
      std::vector<float> v(static_cast<size_t>(N));
      std::vector<int32_t> i(static_cast<size_t>(N));
      sk_status st{};
      int rc = g_sae->encode(&st, s.p, x.data(), N, 1, SK_PREC_F32, v.data(), i.data());
      report(rc != 0 && st.code == 1 + 1, "jumprelu encode with k below the active count is a Shape error",
             strf("rc %d code %d: %s", rc, st.code, st.message));
    }
    sk_sae_step_opts o = step_opts(4, {}, 0.0f, SK_PREC_F32);
    sk_sae_step_stats stats{};
    sk_status st{};
    int rc = g_sae->step(&st, s.p, x.data(), N, &o, &stats);
    report(rc != 0 && st.code == 0 + 1, "jumprelu step is an Arg error", strf("rc %d code %d: %s", rc, st.code, st.message));
  });
}

void test_params_roundtrip(int64_t D, int64_t M, uint64_t seed) {
  run_test("params/adam round trip", [&] {
    Model m = random_model(D, M, false, seed);
    Sae s(m);
    Model m2 = random_model(D, M, false, seed + 1);
    CALL("set_params", g_sae->set_params(&st, s.p, m2.slab.data()));
    std::vector<float> got(size_t(m.size())), gm(got.size()), gv(got.size());
    CALL("get_params", g_sae->get_params(&st, s.p, got.data()));
    std::vector<float> am = random_x(1, m.size(), seed + 2), av = random_x(1, m.size(), seed + 3);
    for (auto& f : av) f = f * f;
    CALL("set_adam", g_sae->set_adam(&st, s.p, am.data(), av.data(), 17));
    int64_t t = 0;
    CALL("get_adam", g_sae->get_adam(&st, s.p, gm.data(), gv.data(), &t));
    report(got == m2.slab && gm == am && gv == av && t == 17, "set/get params and Adam state (bitwise)", "");
    // Null moments (version 4): zeros, set on the device; one null alone is refused.
    CALL("set_adam zeros", g_sae->set_adam(&st, s.p, nullptr, nullptr, 0));
    CALL("get_adam", g_sae->get_adam(&st, s.p, gm.data(), gv.data(), &t));
    const bool zeros = std::all_of(gm.begin(), gm.end(), [](float f) { return f == 0.0f; }) &&
                       std::all_of(gv.begin(), gv.end(), [](float f) { return f == 0.0f; });
    report(zeros && t == 0, "set_adam(null, null, 0) zeroes the moments and t", strf("t %lld", (long long)t));
    sk_status st1{};
    const int rc = g_sae->set_adam(&st1, s.p, am.data(), nullptr, 3);
    report(rc != 0 && st1.code == 0 + 1, "set_adam with one null moment is an Arg error", strf("rc %d code %d: %s", rc, st1.code, st1.message));
  });
}

}  // namespace

// ---- sparse-code correlation (core/corr_device.h) ------------------------------------------------

// Codes of one side as CSR by token, with the store's float64 sums (in token order). Latent n - 1
// is dead, latent n - 2 constant (every token, value 1.25), latent 1 a copy of latent 0 (equal r:
// ties), the rest random with skewed frequencies.
struct CorrSide {
  int64_t n = 0;
  std::vector<int64_t> ptr{0};
  std::vector<int32_t> idx;
  std::vector<float> val;
  std::vector<double> s, ss;
};

CorrSide random_corr_side(int64_t T, int64_t n, int64_t k, std::mt19937_64& rng) {
  CorrSide c;
  c.n = n;
  c.s.assign(size_t(n), 0.0);
  c.ss.assign(size_t(n), 0.0);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<int32_t> used;
  for (int64_t t = 0; t < T; ++t) {
    used.assign(1, int32_t(n - 2));
    std::vector<std::pair<int32_t, float>> row{{int32_t(n - 2), 1.25f}};
    while (int64_t(row.size()) < k) {
      const int32_t j = int32_t(double(n - 3) * std::pow(u(rng), 2.0));
      if (j == 1 || std::find(used.begin(), used.end(), j) != used.end()) continue;
      used.push_back(j);
      const float v = float(0.1 + 3.0 * u(rng));
      row.push_back({j, v});
      if (j == 0) row.push_back({1, v});
    }
    // Codes come sorted by value in practice: any order within a token is allowed.
    std::shuffle(row.begin(), row.end(), rng);
    for (auto& e : row) {
      c.idx.push_back(e.first);
      c.val.push_back(e.second);
      c.s[size_t(e.first)] += double(e.second);
      c.ss[size_t(e.first)] += double(e.second) * double(e.second);
    }
    c.ptr.push_back(int64_t(c.idx.size()));
  }
  return c;
}

// Dense [T, n] float64 copy of a side.
std::vector<double> corr_dense(const CorrSide& c, int64_t T) {
  std::vector<double> d(size_t(T * c.n), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t p = c.ptr[size_t(t)]; p < c.ptr[size_t(t) + 1]; ++p) d[size_t(t * c.n + c.idx[size_t(p)])] = c.val[size_t(p)];
  return d;
}

struct CorrRun {
  std::vector<uint8_t> ca, cb;
  std::vector<float> r, top_r, rev_r;
  std::vector<int32_t> top_i, rev_i;
  int64_t kTop = 0, kRev = 0;
};

int corr_call(const CorrSide& A, const CorrSide& B, int64_t T, int full, int64_t top, int reverse, CorrRun& o,
              sk_status* st) {
  sk_corr_codes c{A.n, B.n, T, A.ptr.data(), A.idx.data(), A.val.data(), B.ptr.data(), B.idx.data(), B.val.data(),
                  A.s.data(), A.ss.data(), B.s.data(), B.ss.data()};
  sk_corr_opts opt{full, top, reverse};
  o.kTop = full ? 0 : std::min(top, A.n);
  o.kRev = full || !reverse ? 0 : std::min(top, B.n);
  o.ca.assign(size_t(A.n), 7);
  o.cb.assign(size_t(B.n), 7);
  o.r.assign(full ? size_t(A.n * B.n) : 0, NAN);
  o.top_r.assign(size_t(B.n * o.kTop), NAN);
  o.top_i.assign(size_t(B.n * o.kTop), -1);
  o.rev_r.assign(size_t(A.n * o.kRev), NAN);
  o.rev_i.assign(size_t(A.n * o.kRev), -1);
  sk_corr_out out{o.ca.data(), o.cb.data(), o.r.data(), o.top_i.data(), o.top_r.data(), o.rev_i.data(), o.rev_r.data()};
  return g_corr->run(st, 0, &c, &opt, &out);
}

// The best k of each of `rows` lists of `cols` values get(row, col), by r desc then index asc.
void corr_argsort(int64_t rows, int64_t cols, int64_t k, const std::function<float(int64_t, int64_t)>& get,
                  std::vector<float>& v, std::vector<int32_t>& x) {
  v.assign(size_t(rows * k), 0.0f);
  x.assign(size_t(rows * k), 0);
  std::vector<int32_t> order(static_cast<size_t>(cols));
  for (int64_t a = 0; a < rows; ++a) {
    for (int64_t b = 0; b < cols; ++b) order[size_t(b)] = int32_t(b);
    std::stable_sort(order.begin(), order.end(), [&](int32_t p, int32_t q) { return get(a, p) > get(a, q); });
    for (int64_t q = 0; q < k; ++q) {
      x[size_t(a * k + q)] = order[size_t(q)];
      v[size_t(a * k + q)] = get(a, order[size_t(q)]);
    }
  }
}

// Checks one shape: the full matrix bit for bit against the CPU kernel's formula (raw float64
// sums in token order, core/corr_device.h's moments) and within 2e-6 of a naive two-pass
// (centred) float64 Pearson; the top and reverse lists equal the argsort of that matrix; chunks
// of 7 rows (SAEKIT_CUDA_CORR_ROWS) give the same bits as one chunk. random_corr_side leaves a
// side's last feature never active and the one before it constant; mirror_b turns B's features
// around (feature j becomes nB - 1 - j), so that its busiest features end the columns (and the
// last column tile).
void test_corr(int64_t T, int64_t nA, int64_t nB, int64_t kA, int64_t kB, uint64_t seed, bool mirror_b = false) {
  const std::string name = strf("sparse correlation (T %lld, nA %lld, nB %lld, kA %lld, kB %lld%s)", (long long)T,
                                (long long)nA, (long long)nB, (long long)kA, (long long)kB,
                                mirror_b ? ", B's features mirrored" : "");
  run_test(name, [&] {
    std::mt19937_64 rng(seed);
    CorrSide A = random_corr_side(T, nA, kA, rng), B = random_corr_side(T, nB, kB, rng);
    if (mirror_b) {
      for (auto& j : B.idx) j = int32_t(nB - 1 - j);
      std::reverse(B.s.begin(), B.s.end());
      std::reverse(B.ss.begin(), B.ss.end());
    }
    const std::vector<double> xa = corr_dense(A, T), xb = corr_dense(B, T);
    const double n = double(T);
    // The CPU kernel's arithmetic.
    const size_t na = static_cast<size_t>(nA), nb = static_cast<size_t>(nB);
    std::vector<double> mA(na), iA(na), mB(nb), iB(nb);
    std::vector<uint8_t> cA(na), cB(nb);
    for (int64_t i = 0; i < nA; ++i) sk_corr_moments(A.s[size_t(i)], A.ss[size_t(i)], n, &mA[size_t(i)], &iA[size_t(i)], &cA[size_t(i)]);
    for (int64_t j = 0; j < nB; ++j) sk_corr_moments(B.s[size_t(j)], B.ss[size_t(j)], n, &mB[size_t(j)], &iB[size_t(j)], &cB[size_t(j)]);
    std::vector<float> want(na * nb);
    double worst_naive = 0;
    for (int64_t i = 0; i < nA; ++i)
      for (int64_t j = 0; j < nB; ++j) {
        double sxy = 0, cx = 0, cy = 0, cxy = 0, cxx = 0, cyy = 0;
        for (int64_t t = 0; t < T; ++t) sxy += xa[size_t(t * nA + i)] * xb[size_t(t * nB + j)];
        double v = (sxy - n * mA[size_t(i)] * mB[size_t(j)]) * iA[size_t(i)] * iB[size_t(j)];
        v = v < -1.0 ? -1.0 : v;
        v = v > 1.0 ? 1.0 : v;
        want[size_t(i * nB + j)] = float(v + 0.0);
        // Naive two-pass Pearson (constant features: 0).
        for (int64_t t = 0; t < T; ++t) cx += xa[size_t(t * nA + i)], cy += xb[size_t(t * nB + j)];
        cx /= n;
        cy /= n;
        for (int64_t t = 0; t < T; ++t) {
          const double dx = xa[size_t(t * nA + i)] - cx, dy = xb[size_t(t * nB + j)] - cy;
          cxy += dx * dy;
          cxx += dx * dx;
          cyy += dy * dy;
        }
        const double naive = cA[size_t(i)] || cB[size_t(j)] ? 0.0 : cxy / std::sqrt(cxx * cyy);
        worst_naive = std::max(worst_naive, std::fabs(naive - double(want[size_t(i * nB + j)])));
      }
    // B's never-active and constant features, and its duplicate pair (features 0 and 1 unmirrored).
    const int64_t b_dead = mirror_b ? 0 : nB - 1, b_const = mirror_b ? 1 : nB - 2;
    const int64_t b_dup0 = mirror_b ? nB - 1 : 0, b_dup1 = mirror_b ? nB - 2 : 1;
    bool flags_ok = cA[size_t(nA - 1)] == 1 && cA[size_t(nA - 2)] == 1 && cB[size_t(b_dead)] == 1 && cB[size_t(b_const)] == 1;
    for (int64_t i = 0; i < nA; ++i) flags_ok = flags_ok && want[size_t(i * nB + b_dup1)] == want[size_t(i * nB + b_dup0)];

    // Chunking and the heavy-row path (SAEKIT_CUDA_CORR_ROWS / _HEAVY / _TILE) change no bit.
    struct Layout {
      const char *rows, *heavy, *tile, *tag;
    };
    const Layout layouts[] = {{"", "", "", ""},
                              {"7", "", "", " [7-row chunks]"},
                              {"7", "0", "16", " [7-row chunks, every row heavy, 16-column tiles]"},
                              {"", "20", "9", " [rows over 20 postings heavy, 9-column tiles]"}};
    auto set = [](const char* name, const char* v) {
      if (*v) setenv(name, v, 1);
      else unsetenv(name);
    };
    for (const Layout& lay : layouts) {
      set("SAEKIT_CUDA_CORR_ROWS", lay.rows);
      set("SAEKIT_CUDA_CORR_HEAVY", lay.heavy);
      set("SAEKIT_CUDA_CORR_TILE", lay.tile);
      const std::string tag = lay.tag;
      CorrRun full;
      CALL("corr full", corr_call(A, B, T, 1, 0, 0, full, &st));
      size_t bad = 0;
      for (size_t q = 0; q < want.size(); ++q) bad += std::memcmp(&want[q], &full.r[q], 4) != 0;
      report(bad == 0 && full.ca == cA && full.cb == cB && flags_ok && worst_naive < 2e-6, name + ": full" + tag,
             strf("%zu of %zu r differ from the CPU formula's bits; flags %s; max |r - naive| %.1e", bad, want.size(),
                  full.ca == cA && full.cb == cB && flags_ok ? "ok" : "WRONG", worst_naive));
      for (int64_t top : {int64_t(1), int64_t(4), nA + nB}) {
        CorrRun o;
        CALL("corr top", corr_call(A, B, T, 0, top, 1, o, &st));
        std::vector<float> tv, rv;
        std::vector<int32_t> tx, rx;
        corr_argsort(nB, nA, o.kTop, [&](int64_t j, int64_t i) { return want[size_t(i * nB + j)]; }, tv, tx);
        corr_argsort(nA, nB, o.kRev, [&](int64_t i, int64_t j) { return want[size_t(i * nB + j)]; }, rv, rx);
        const bool ok = o.top_i == tx && o.rev_i == rx && std::memcmp(o.top_r.data(), tv.data(), tv.size() * 4) == 0 &&
                        std::memcmp(o.rev_r.data(), rv.data(), rv.size() * 4) == 0 && o.ca == cA && o.cb == cB;
        report(ok, name + strf(": top %lld + reverse", (long long)top) + tag,
               strf("kTop %lld, kRev %lld", (long long)o.kTop, (long long)o.kRev));
      }
    }
    set("SAEKIT_CUDA_CORR_ROWS", "");
    set("SAEKIT_CUDA_CORR_HEAVY", "");
    set("SAEKIT_CUDA_CORR_TILE", "");
    // Errors are statuses naming the argument.
    CorrRun o;
    sk_status st{};
    const int rc1 = corr_call(A, B, 1, 1, 0, 0, o, &st);
    const bool tokens_named = rc1 != 0 && std::strstr(st.message, "at least 2 tokens") != nullptr;
    sk_status st2{};
    const int rc2 = corr_call(A, B, T, 0, 0, 0, o, &st2);
    const bool top_named = rc2 != 0 && std::strstr(st2.message, "top >= 1") != nullptr;
    report(tokens_named && top_named, name + ": bad arguments fail with named errors", strf("%s | %s", st.message, st2.message));
    // Codes that do not fit: a Device error naming the memory needed (the emulation can report
    // little free memory; a real device cannot be made to).
    char dev_name[256] = {0};
    sk_status st3{};
    g_sae->device_name(&st3, 0, dev_name, sizeof(dev_name));
    if (std::strstr(dev_name, "emulation")) {
      setenv("EMU_FREE_BYTES", "100000", 1);
      sk_status st4{};
      const int rc4 = corr_call(A, B, T, 1, 0, 0, o, &st4);
      unsetenv("EMU_FREE_BYTES");
      const int device_code = 4 + 1;  // sk::ErrorCode::Device + 1
      report(rc4 != 0 && st4.code == device_code && std::strstr(st4.message, "MiB of device memory") != nullptr,
             name + ": codes that do not fit fail with ERR_SAEKIT_DEVICE naming the memory", st4.message);
    }
  });
}

int main(int argc, char** argv) {
  std::string path;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) g_quick = true;
    else path = argv[i];
  }
  if (path.empty()) {
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    std::string dir = ".";
    if (n > 0) {
      exe[n] = '\0';
      dir = exe;
      dir = dir.substr(0, dir.find_last_of('/'));
    }
    path = dir + "/libsaekit_cuda.so";
  }
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    std::printf("FAIL: cannot load %s: %s\n", path.c_str(), dlerror());
    return 1;
  }
  Plugin p;
  p.api_version = reinterpret_cast<int (*)(void)>(dlsym(h, "sk_plugin_api_version"));
  p.score = reinterpret_cast<int (*)(char*, size_t)>(dlsym(h, "sk_backend_score"));
  p.init = reinterpret_cast<int (*)(sk_backend*, sk_status*)>(dlsym(h, "sk_backend_init"));
  p.sae_api = reinterpret_cast<const sk_sae_i* (*)(int)>(dlsym(h, "sk_sae_api"));
  if (!p.api_version || !p.score || !p.init || !p.sae_api) {
    std::printf("FAIL: %s lacks one of sk_plugin_api_version, sk_backend_score, sk_backend_init, sk_sae_api\n",
                path.c_str());
    return 1;
  }
  if (p.api_version() != SK_BACKEND_API_VERSION) {
    std::printf("FAIL: plugin API version %d, expected %d\n", p.api_version(), SK_BACKEND_API_VERSION);
    return 1;
  }
  g_sae = p.sae_api(SK_SAE_API_VERSION);
  if (!g_sae || p.sae_api(SK_SAE_API_VERSION + 1) != nullptr) {
    std::printf("FAIL: sk_sae_api does not answer version %d (or answers an unknown version)\n", SK_SAE_API_VERSION);
    return 1;
  }
  // The sparse correlation table (a plugin without it fails here).
  auto corr_api = reinterpret_cast<const sk_corr_i* (*)(int)>(dlsym(h, "sk_corr_api"));
  g_corr = corr_api ? corr_api(SK_CORR_API_VERSION) : nullptr;
  if (!g_corr || corr_api(SK_CORR_API_VERSION + 1) != nullptr) {
    std::printf("FAIL: %s lacks sk_corr_api or it does not answer version %d alone\n", path.c_str(), SK_CORR_API_VERSION);
    return 1;
  }
  char reason[1024] = {0};
  int score = p.score(reason, sizeof(reason));
  if (score <= 0) {
    std::printf("SKIP: %s\n", reason);
    return 0;
  }
  sk_status st{};
  if (p.init(&g_be, &st) != 0) {
    std::printf("FAIL: sk_backend_init: %s\n", st.message);
    return 1;
  }
  char name[256] = {0};
  g_sae->device_name(&st, 0, name, sizeof(name));
  std::printf("device: %s (score %d)%s\n", name, score, g_quick ? " [quick]" : "");
  const auto t0 = std::chrono::steady_clock::now();

  run_test("convert", test_convert);
  run_test("convert int once", test_convert_int_once);
  run_test("fill", test_fill);
  run_test("gemm", test_gemm);
  test_params_roundtrip(67, 301, 21);
  test_corr(203, 45, 38, 6, 5, 23);
  test_corr(64, 9, 70, 3, 40, 24);  // kB above a warp: B entries of a token take two lane passes
  test_corr(203, 45, 38, 6, 5, 25, true);  // B's busiest feature is the last column

  // Odd sizes: D 67, M 301, k 7, N 129.
  {
    const int64_t D = 67, M = 301, k = 7, N = 129;
    run_test("encode small", [&] {
      Model m = random_model(D, M, true, 31);
      std::vector<float> x = random_x(N, D, 32);
      Sae s(m);
      for (int prec : {SK_PREC_F32, SK_PREC_TF32, SK_PREC_BF16}) {
        std::vector<float> pre;
        check_preacts(s, m, x, N, prec, &pre, N);
        check_encode_exact(s, m, x, N, k, prec, pre, nullptr, "topk");
      }
      // bf16 precision: the GEMM writes bf16 pre-activations (default) or float32 ones
      // (SAEKIT_CUDA_PRE16=0); the first are the second rounded to bf16 before b_enc is added.
      std::vector<float> p16 = dev_preacts(s, m, x, N, SK_PREC_BF16), p32;
      with_env("SAEKIT_CUDA_PRE16", "0", "float32 pre-activations", [&] {
        check_preacts(s, m, x, N, SK_PREC_BF16, &p32, N);
        check_encode_exact(s, m, x, N, k, SK_PREC_BF16, p32, nullptr, "topk, float32 pre-activations");
      });
      const float* be = m.slab.data() + 2 * M * D;
      int64_t rounded = 0, beyond = 0;
      for (int64_t n = 0; n < N; ++n) {
        double rowmax = 0;
        for (int64_t l = 0; l < M; ++l) rowmax = std::max(rowmax, std::fabs(double(p32[size_t(n * M + l)]) - be[l]));
        for (int64_t l = 0; l < M; ++l) {
          const double raw = double(p32[size_t(n * M + l)]) - be[l], d = std::fabs(double(p16[size_t(n * M + l)]) - p32[size_t(n * M + l)]);
          rounded += d > 0;
          beyond += d > std::ldexp(std::fabs(raw), -8) + 1e-5 * rowmax;
        }
      }
      report(beyond == 0 && rounded > 0, "bf16 pre-activations are the float32 ones rounded to bf16",
             strf("%lld of %lld differ, %lld by more than 2^-8 relative", (long long)rounded, (long long)(N * M),
                  (long long)beyond));
      // k at the limits: 1 and M (every latent, zeros by index).
      std::vector<float> pre = dev_preacts(s, m, x, N, SK_PREC_F32);
      // A batch in page-locked memory (host_alloc) takes the DMA path: same codes, bit for bit.
      if (g_sae->host_alloc && g_sae->host_free) {
        void* px = nullptr;
        CALL("host_alloc", g_sae->host_alloc(&st, &px, x.size() * sizeof(float)));
        std::memcpy(px, x.data(), x.size() * sizeof(float));
        std::vector<float> v1(size_t(N * k)), v2(size_t(N * k));
        std::vector<int32_t> i1(size_t(N * k)), i2(size_t(N * k));
        CALL("encode", g_sae->encode(&st, s.p, x.data(), N, k, SK_PREC_F32, v1.data(), i1.data()));
        CALL("encode", g_sae->encode(&st, s.p, static_cast<const float*>(px), N, k, SK_PREC_F32, v2.data(), i2.data()));
        g_sae->host_free(px);
        report(v1 == v2 && i1 == i2, "encode from page-locked host memory equals pageable", "");
      }
      check_encode_exact(s, m, x, N, 1, SK_PREC_F32, pre, nullptr, "topk k=1");
      check_encode_exact(s, m, x, N, M, SK_PREC_F32, pre, nullptr, "topk k=M");
    });
    test_decode(D, M, k, N, 41);
    test_grads(D, M, k, N, true, 0, SK_PREC_F32, 51);
    test_grads(D, M, k, N, true, 5, SK_PREC_F32, 52);     // 60 dead > D/2 = 33: partial AuxK selection
    test_grads(D, M, k, N, false, 11, SK_PREC_F32, 53);   // 28 dead < D/2: all of them, scale 28/33
    test_grads(D, M, k, N, true, 5, SK_PREC_TF32, 54);
    test_grads(D, M, k, N, true, 5, SK_PREC_BF16, 55);
    test_adam(D, M, k, N, 4, 61);
    test_nonfinite(D, M, k, N, 71);
    // AuxK as dense GEMMs over the dead latents (chosen by itself from dIn 128; forced here), in
    // chunks of 7 dead latents: several chunks and a partial last one.
    with_dense_aux("7", [&] {
      test_grads(D, M, k, N, true, 5, SK_PREC_F32, 152);
      test_grads(D, M, k, N, false, 11, SK_PREC_F32, 153);
      test_grads(D, M, k, N, true, 5, SK_PREC_TF32, 154);
      test_grads(D, M, k, N, true, 5, SK_PREC_BF16, 155);
      test_adam(D, M, k, N, 4, 161);
      test_nonfinite(D, M, k, N, 171);
    });
    with_env("SAEKIT_CUDA_PRE16", "0", "float32 pre-activations",
             [&] { test_grads(D, M, k, N, true, 5, SK_PREC_BF16, 156); });
    // The paper's AuxK (no b_dec in e_hat, the residual's variance): per pair and dense.
    with_paper_auxk([&] {
      test_grads(D, M, k, N, true, 5, SK_PREC_F32, 252);
      test_grads(D, M, k, N, false, 11, SK_PREC_F32, 253);
      test_grads(D, M, k, N, true, 5, SK_PREC_BF16, 255);
      test_adam(D, M, k, N, 4, 261);
      with_dense_aux("7", [&] {
        test_grads(D, M, k, N, true, 5, SK_PREC_F32, 352);
        test_adam(D, M, k, N, 4, 361);
      });
    });
    test_jumprelu(D, M, N, 81);
    test_prefetch(D, M, k, N, 85);
  }
  // Pre-activations of 17 MiB (2100 x 2048 floats) to pageable memory: the download takes both
  // 8 MiB staging buffers in turn and a partial third chunk; every row is checked.
  run_test("preacts through the download's staging buffers", [&] {
    const int64_t D = 16, M = 2048, N = 2100;
    Model m = random_model(D, M, true, 113);
    std::vector<float> x = random_x(N, D, 114);
    Sae s(m);
    check_preacts(s, m, x, N, SK_PREC_F32, nullptr, N);
  });
  // tf32 precision asks cuBLAS for tf32 tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32), whose
  // operands keep 10 mantissa bits: on shapes they take (multiples of 16) the pre-activations
  // differ from float32's, within tf32's tolerance (checked by check_preacts).
  run_test("tf32 pre-activations", [&] {
    const int64_t D = 64, M = 256, N = 64;
    Model m = random_model(D, M, true, 115);
    std::vector<float> x = random_x(N, D, 116);
    Sae s(m);
    std::vector<float> pt, pf = dev_preacts(s, m, x, N, SK_PREC_F32);
    check_preacts(s, m, x, N, SK_PREC_TF32, &pt, N);
    int64_t differ = 0;
    for (size_t i = 0; i < pf.size(); ++i) differ += pf[i] != pt[i];
    report(differ > 0, "tf32 pre-activations come from a tf32 GEMM (they differ from float32's)",
           strf("%lld of %lld differ", (long long)differ, (long long)(N * M)));
  });
  // A block has 48 KiB of shared memory, its static arrays and its dynamic part together, unless the
  // kernel opts in. The emulation reports SAEKIT_EMU_STATIC_SMEM bytes of static memory for every
  // kernel (emu/cuda_runtime.h; no effect on a GPU): at 48000 every launch with more than 1152
  // bytes of dynamic memory must opt in, as one with 49152 - static + 1 must on a GPU (dIn 12288's
  // decoder row of 48 KiB beside latent_dec_kernel's 128 static bytes). Before anything else opts
  // in: the selection's list (16 KiB); dIn 300 with dense AuxK (75 codes a row):
  // residual_fused_kernel (3 warps: 3 KiB) and latent_dec_kernel (dIn floats); dIn 301 with AuxK
  // pairs (60 codes): residual_kernel and latent_update_kernel (2 dIn floats each).
  with_env("SAEKIT_EMU_STATIC_SMEM", "48000", "48000 bytes of static shared memory", [&] {
    test_adam(300, 301, 20, 64, 4, 183);
    test_grads(301, 301, 20, 64, true, 5, SK_PREC_F32, 184);
  });
  // Column sums in more row / latent chunks than gridDim.y takes (SAEKIT_CUDA_GRID_Y), with AuxK
  // pairs and with dense AuxK (its db_enc column sums).
  test_grid_y(68, 301, 7, 300, 5, 191);
  with_dense_aux("7", [&] { test_grid_y(68, 301, 7, 300, 5, 192); });
  // Massive ties: W_enc = 0, so every row's keys are b_enc's few values. k 40 stays inside the
  // top value's 52 latents (the fast path's list, ties by index); k 64 reaches into 3,300 equal
  // keys, more than the list holds (the radix fallback); k 4000 needs inactive latents too.
  run_test("encode ties", [&] {
    const int64_t D = 16, M = 5000, N = 40;
    Model m = random_model(D, M, true, 87);
    float* be = m.slab.data() + 2 * M * D;
    for (int64_t i = 0; i < M * D; ++i) m.slab[size_t(i)] = 0.0f;
    for (int64_t l = 0; l < M; ++l) be[l] = l % 97 == 0 ? 0.5f : l % 3 != 0 ? 0.25f : -1.0f;
    std::vector<float> x = random_x(N, D, 88);
    Sae s(m);
    std::vector<float> pre = dev_preacts(s, m, x, N, SK_PREC_F32);
    for (int64_t k : {40, 64, 4000}) check_encode_exact(s, m, x, N, k, SK_PREC_F32, pre, nullptr, strf("ties k=%lld", (long long)k));
    // The radix fallback where the k-th key's group ends exactly at a digit of a middle pass: every
    // 10th latent (l % 10 == 1) of the 0.25 ones moves up 256 ulps (0x3e800100; its third byte
    // differs), and k takes the 52 keys of 0.5 and those. The third pass's digit then holds exactly
    // the keys still needed, and the tied keys taken last span all of the row's 512-latent tiles.
    uint32_t up_bits = 0x3e800100u;
    float up;
    std::memcpy(&up, &up_bits, sizeof(up));
    int64_t k_exact = 0;
    for (int64_t l = 0; l < M; ++l) {
      if (be[l] == 0.25f && l % 10 == 1) be[l] = up;
      k_exact += be[l] > 0.25f;
    }
    Sae s2(m);
    std::vector<float> pre2 = dev_preacts(s2, m, x, N, SK_PREC_F32);
    check_encode_exact(s2, m, x, N, k_exact, SK_PREC_F32, pre2, nullptr,
                       strf("ties k=%lld (the k-th key ends a digit of the radix fallback)", (long long)k_exact));
  });
  // Rows of a multiple of 4 latents: the selection's 4-wide loads, of float32 and of bf16 rows.
  test_encode_f32_bf16("encode aligned rows", 24, 1000, 37, 9, 89, 37, "topk 4-wide");
  // Rows go a warp per row first (k <= 256); rows that path cannot take go to the block kernel in
  // the same call. Odd rows have x = b_dec, so only the 5 latents with b_enc > 0 are active
  // (fewer than k: flagged, filled with the lowest-index inactive latents); even rows are
  // ordinary (the warp path). Then the block kernel alone (SAEKIT_CUDA_SELECT=block) on the
  // cases above.
  run_test("encode mixed rows", [&] {
    const int64_t D = 36, M = 600, N = 53, k = 20;
    Model m = random_model(D, M, true, 97);
    float* be = m.slab.data() + 2 * M * D;
    const float* bd = m.slab.data() + 2 * M * D + M;
    for (int64_t l = 0; l < M; ++l) be[l] = l % 120 == 7 ? 0.3f : -0.05f;
    std::vector<float> x = random_x(N, D, 98);
    for (int64_t n = 1; n < N; n += 2)
      for (int64_t c = 0; c < D; ++c) x[size_t(n * D + c)] = bd[c];
    Sae s(m);
    for (int prec : {SK_PREC_F32, SK_PREC_BF16}) {
      std::vector<float> pre = dev_preacts(s, m, x, N, prec);
      check_encode_exact(s, m, x, N, k, prec, pre, nullptr, "topk, rows a warp and a block each");
    }
  });
  with_env("SAEKIT_CUDA_SELECT", "block", "selection a block per row", [&] {
    test_encode_f32_bf16("encode aligned rows [block per row]", 24, 1000, 37, 9, 89, 37, "topk 4-wide");
    test_encode_f32_bf16("encode odd rows [block per row]", 67, 301, 129, 7, 31, 129, "topk");
  });
  // D % 4 == 0: the float4 update in two passes (per latent x column slice, then per decoder
  // row); D 68 leaves a partial slice, and M 301 puts b_enc / b_dec at unaligned offsets.
  test_grads(68, 301, 7, 129, true, 0, SK_PREC_F32, 56);
  test_grads(68, 301, 7, 129, true, 5, SK_PREC_F32, 57);
  test_grads(68, 301, 70, 129, false, 0, SK_PREC_BF16, 58);
  test_adam(68, 301, 7, 129, 4, 63);
  with_dense_aux("1000", [&] {  // one chunk
    test_grads(68, 301, 7, 129, true, 5, SK_PREC_F32, 157);
    test_grads(68, 301, 7, 129, false, 2, SK_PREC_F32, 158);
    test_adam(68, 301, 7, 129, 4, 163);
  });
  with_paper_auxk([&] {  // float4 columns
    test_grads(68, 301, 7, 129, true, 5, SK_PREC_F32, 257);
    with_dense_aux("1000", [&] { test_grads(68, 301, 7, 129, false, 2, SK_PREC_F32, 258); });
  });
  // The decode pass reads each selected decoder row once (residual_fused_kernel: up to 8 codes
  // per warp, a warp per 8 codes) where no AuxK pairs are decoded per pair: k 200 takes 25 warps
  // (the last of 8 codes), k 256 all 32 (scalar columns), k 257 goes back to residual_kernel.
  // SAEKIT_CUDA_DECODE=plain forces residual_kernel on the cases above that use the fused one.
  test_grads(68, 301, 200, 129, true, 0, SK_PREC_F32, 64);
  test_grads(67, 301, 256, 129, false, 0, SK_PREC_F32, 65);
  test_grads(67, 300, 257, 129, true, 0, SK_PREC_F32, 66);
  test_grads(68, 301, 61, 129, true, 0, SK_PREC_BF16, 67);  // 8 warps, the last of 5 codes
  with_env("SAEKIT_CUDA_DECODE", "plain", "decode gathering rows twice", [&] {
    test_grads(68, 301, 7, 129, true, 0, SK_PREC_F32, 56);
    test_grads(68, 301, 70, 129, false, 0, SK_PREC_BF16, 58);
    with_dense_aux("1000", [&] { test_grads(68, 301, 7, 129, true, 5, SK_PREC_F32, 157); });
  });
  if (!g_quick) {
    // Realistic: D 768, M 24576, k 32, N 4096 (selection checked exactly on every row).
    const int64_t D = 768, M = 24576, k = 32, N = 4096;
    test_encode_f32_bf16("encode large", D, M, N, k, 91, 8, "topk");
    // Rows too long for the selection's shared-memory key cache (40000 keys = 156 KiB).
    test_encode_f32_bf16("encode wide", 64, 40000, 300, 64, 95, 4, "topk uncached");
    test_corr(3001, 700, 513, 32, 24, 98);  // realistic k, many chunks of 32 rows on a GPU
    test_grads(D, M, k, 1024, true, 97, SK_PREC_F32, 93);  // 253 dead < D/2 = 384
    test_grads(D, 4096, 64, 512, true, 3, SK_PREC_BF16, 94);  // 1365 dead > 384: Kaux 384
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%s: %d failure(s) in %.1f s\n", g_failures ? "FAILED" : "ALL PASSED", g_failures, secs);
  return g_failures ? 1 : 0;
}
