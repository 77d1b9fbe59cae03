#include "sae_loopback.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "../core/error.h"
#include "cpu_backend.h"
#include "../core/aligned_memory.h"
#include "sae_topk.h"

struct sk_sae_dev {
  int device = 0;  // the loopback device it was created on
  int64_t D = 0, M = 0;
  bool apply_b_dec = true;
  std::vector<float> slab, threshold;
  sk::cpu::AdamState adam;
  // Prefetched batches, as the device keeps them: copies made when prefetch is called.
  struct Prefetch {
    const float* host = nullptr;
    int64_t N = 0;
    uint64_t age = 0;
    std::vector<float> x;
  };
  std::mutex pf_mu;
  Prefetch pfs[2];
  uint64_t pf_clock = 0;
  sk::cpu::SaeView view() {
    sk::cpu::SaeView v = sk::cpu::sae_view(slab.data(), D, M);
    v.apply_b_dec = apply_b_dec;
    v.threshold = threshold.empty() ? nullptr : threshold.data();
    return v;
  }
};

namespace sk::cpu {

namespace {

// Throws ERR_SAEKIT_DEVICE unless `device` is one of the loopback devices.
void check_device(int device) {
  std::string error;
  const int count = loopback_device_count(&error);
  SK_CHECK(count > 0, ErrorCode::Device, error);
  SK_CHECK(device >= 0 && device < count, ErrorCode::Device, "Expected a loopback device between 0 and ", count - 1,
           " but received ", device);
}

int device_count(sk_status* st, int* count) {
  SK_SLOT(st, {
    std::string error;
    *count = loopback_device_count(&error);
    SK_CHECK(*count > 0, ErrorCode::Device, error);
  });
}

int device_name(sk_status* st, int device, char* out, size_t len) {
  SK_SLOT(st, {
    check_device(device);
    std::snprintf(out, len, "loopback %d (CPU kernels through the device interface)", device);
  });
}

int create(sk_status* st, sk_sae_dev** out, int device, int64_t D, int64_t M, int apply_b_dec, const float* slab,
           const float* threshold) {
  SK_SLOT(st, {
    check_device(device);
    auto* s = new sk_sae_dev();
    s->device = device;
    s->D = D;
    s->M = M;
    s->apply_b_dec = apply_b_dec != 0;
    s->slab.assign(slab, slab + sae_slab_floats(D, M));
    if (threshold) s->threshold.assign(threshold, threshold + M);
    s->adam.m.assign(s->slab.size(), 0.0f);
    s->adam.v.assign(s->slab.size(), 0.0f);
    *out = s;
  });
}

void destroy(sk_sae_dev* s) { delete s; }

int get_params(sk_status* st, sk_sae_dev* s, float* slab) {
  SK_SLOT(st, std::memcpy(slab, s->slab.data(), s->slab.size() * 4));
}
int set_params(sk_status* st, sk_sae_dev* s, const float* slab) {
  SK_SLOT(st, std::memcpy(s->slab.data(), slab, s->slab.size() * 4));
}
int get_adam(sk_status* st, sk_sae_dev* s, float* m, float* v, int64_t* t) {
  SK_SLOT(st, {
    std::memcpy(m, s->adam.m.data(), s->slab.size() * 4);
    std::memcpy(v, s->adam.v.data(), s->slab.size() * 4);
    *t = s->adam.t;
  });
}
int set_adam(sk_status* st, sk_sae_dev* s, const float* m, const float* v, int64_t t) {
  SK_SLOT(st, {
    SK_CHECK((m == nullptr) == (v == nullptr), ErrorCode::Arg, "set_adam: Expected both moments or neither");
    if (m == nullptr) {  // zeros (a new optimizer), as the CUDA plugin sets them on the device
      std::fill(s->adam.m.begin(), s->adam.m.end(), 0.0f);
      std::fill(s->adam.v.begin(), s->adam.v.end(), 0.0f);
    } else {
      std::memcpy(s->adam.m.data(), m, s->slab.size() * 4);
      std::memcpy(s->adam.v.data(), v, s->slab.size() * 4);
    }
    s->adam.t = t;
  });
}

int encode(sk_status* st, sk_sae_dev* s, const float* x, int64_t N, int64_t k, int, float* vals, int32_t* idx) {
  SK_SLOT(st, {
    Codes c;
    static const std::vector<int32_t> none;
    if (!s->threshold.empty()) sae_encode_jumprelu(s->view(), x, N, &c, cpu_pool());
    else sae_encode(s->view(), x, N, k, none, 0, &c, nullptr, nullptr, cpu_pool());
    if (c.K > k) {  // a JumpReLU row wider than k: refused as the CUDA plugin refuses it
      int64_t row = 0, worst = 0;
      for (int64_t n = 0; n < N; ++n) {
        int64_t a = 0;
        while (a < c.K && c.v[size_t(n * c.K + a)] > 0.0f) ++a;
        if (a > worst) {
          worst = a;
          row = n;
        }
      }
      const int64_t hi = std::min<int64_t>(s->M, SK_SAE_MAX_CODES);
      SK_CHECK(k < hi, ErrorCode::Shape, "Expected at most ", hi, " active latents per row for a JumpReLU encode on "
               "the loopback device (the most codes per row a device keeps) but row ", row, " of x has ", worst,
               "; encode it with the SAE on the CPU");
      throw Error(ErrorCode::Shape, fmt("loopback encode: row ", row, " has ", worst, " active latents but only k = ", k,
                                        " codes per row were requested"));
    }
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < k; ++j) {
        const bool have = j < c.K;
        vals[n * k + j] = have ? c.v[size_t(n * c.K + j)] : 0.0f;
        idx[n * k + j] = have ? c.i[size_t(n * c.K + j)] : 0;
      }
  });
}

int decode(sk_status* st, sk_sae_dev* s, const float* vals, const int32_t* idx, int64_t N, int64_t k, int with_bias,
           float* out) {
  SK_SLOT(st, {
    Codes c;
    c.N = N;
    c.K = k;
    c.v.assign(vals, vals + N * k);
    c.i.assign(idx, idx + N * k);
    sae_decode(s->view(), c, with_bias != 0, out, cpu_pool());
  });
}

int preacts(sk_status* st, sk_sae_dev* s, const float* x, int64_t N, int, float* out) {
  SK_SLOT(st, sae_preacts(s->view(), x, N, out, cpu_pool()));
}

int prefetch(sk_status* st, sk_sae_dev* s, const float* x, int64_t N) {
  SK_SLOT(st, {
    SK_CHECK(N >= 0 && x != nullptr, ErrorCode::Shape, "prefetch: expected N >= 0 rows but received ", N);
    std::lock_guard<std::mutex> lock(s->pf_mu);
    if (N == 0) {  // withdraw any prefetch of x
      for (auto& p : s->pfs)
        if (p.host == x) p.host = nullptr;
      return 0;
    }
    sk_sae_dev::Prefetch* e = s->pfs[0].host == nullptr ? &s->pfs[0]
                              : s->pfs[1].host == nullptr ? &s->pfs[1]
                              : s->pfs[0].age < s->pfs[1].age ? &s->pfs[0] : &s->pfs[1];
    e->x.assign(x, x + N * s->D);
    e->host = x;
    e->N = N;
    e->age = ++s->pf_clock;
  });
}

int step(sk_status* st, sk_sae_dev* s, const float* x, int64_t N, const sk_sae_step_opts* o, sk_sae_step_stats* out) {
  SK_SLOT(st, {
    std::vector<float> taken;  // the prefetched copy of x, when there is one
    {
      std::lock_guard<std::mutex> lock(s->pf_mu);
      for (auto& p : s->pfs)
        if (p.host == x && p.N == N) {
          taken.swap(p.x);
          p.host = nullptr;
          x = taken.data();
          break;
        }
    }
    SK_CHECK(s->threshold.empty(), ErrorCode::Arg, "training a JumpReLU SAE is not supported yet");
    std::vector<int32_t> dead(o->host_dead, o->host_dead + (o->host_dead ? o->num_dead : 0));
    StepOptions opt;
    opt.auxk_alpha = o->auxk_alpha;
    SK_CHECK(o->auxk_variant == 0 || o->auxk_variant == 1, ErrorCode::Arg, "Expected auxk_variant 0 or 1 but received ",
             o->auxk_variant);
    opt.auxk_variant = AuxKVariant(o->auxk_variant);
    opt.dead = &dead;
    StepStats stats;
    if (o->want_grads) {
      SaeGrads g;
      stats = sae_step(s->view(), x, N, o->k, opt, &g, nullptr, cpu_pool());
      const int64_t MD = s->M * s->D;
      std::memcpy(o->host_grads, g.W_encT.data(), size_t(MD) * 4);
      std::memcpy(o->host_grads + MD, g.W_dec.data(), size_t(MD) * 4);
      std::memcpy(o->host_grads + 2 * MD, g.b_enc.data(), size_t(s->M) * 4);
      std::memcpy(o->host_grads + 2 * MD + s->M, g.b_dec.data(), size_t(s->D) * 4);
    } else {
      s->adam.lr = o->lr;
      s->adam.beta1 = o->beta1;
      s->adam.beta2 = o->beta2;
      s->adam.eps = o->eps;
      const int64_t t_before = s->adam.t;
      try {
        stats = sae_step(s->view(), x, N, o->k, opt, nullptr, &s->adam, cpu_pool());
      } catch (...) {
        s->adam.t = t_before;
        throw;
      }
    }
    out->loss = stats.loss;
    out->fvu = stats.fvu;
    out->auxk = stats.auxk;
    out->l0 = stats.l0;
    out->num_dead = stats.num_dead;
    if (out->host_fired) std::memcpy(out->host_fired, stats.fired.data(), stats.fired.size());
    const double secs[5] = {stats.times.gemm, stats.times.select, stats.times.decode, stats.times.backward,
                            stats.times.update};
    std::memcpy(out->seconds, secs, sizeof(secs));
  });
}

int host_alloc(sk_status* st, void** out, size_t bytes) {
  SK_SLOT(st, {
    *out = aligned_malloc(64, (bytes + 63) / 64 * 64);
    SK_CHECK(*out != nullptr, ErrorCode::Memory, "loopback host_alloc: out of memory (", bytes, " bytes)");
  });
}

void host_free(void* p) { aligned_free(p); }

const sk_sae_i kLoopback = {
    /* .api_version  */ SK_SAE_API_VERSION,
    /* .device_count */ device_count,
    /* .device_name  */ device_name,
    /* .create       */ create,
    /* .destroy      */ destroy,
    /* .get_params   */ get_params,
    /* .set_params   */ set_params,
    /* .get_adam     */ get_adam,
    /* .set_adam     */ set_adam,
    /* .encode       */ encode,
    /* .decode       */ decode,
    /* .preacts      */ preacts,
    /* .step         */ step,
    /* .host_alloc   */ host_alloc,
    /* .host_free    */ host_free,
    /* .prefetch     */ prefetch,
};

}  // namespace

const sk_sae_i* loopback_sae_api() { return &kLoopback; }

}  // namespace sk::cpu
