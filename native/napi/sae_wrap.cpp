#include "sae_wrap.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "../cpu/convert.h"
#include "../cpu/cpu_backend.h"
#include "../cpu/random.h"
#include "../cpu/sae_topk.h"
#include "args.h"
#include "async.h"
#include "buffers.h"
#include "env_data.h"
#include "device.h"
#include "tensor_wrap.h"

namespace sk::napi {

namespace {

using cpu::SaeView;

// The model: parameters in one slab and the per-latent dead-latent counters. Shared by the
// handle and every queued job; only the executor thread reads or writes it.
struct PinnedPool;

struct SaeModel {
  int64_t D = 0, M = 0, K = 0;        // K = 0 for JumpReLU
  bool jumprelu = false;
  bool apply_b_dec = true;
  ZeroedFloats slab;                  // cpu::sae_slab_floats(D, M), made with zeroed_floats
  std::vector<float> threshold;       // [M] for JumpReLU
  int64_t jump_width = 32;            // JumpReLU on a device: the codes per row asked for last time
  std::vector<int64_t> since_fired;   // tokens since each latent last had a positive code
  // Set (on the JS thread) when the model is sent to a device that offers page-locked memory.
  std::shared_ptr<PinnedPool> pinned;
  // Set when the parameters live on a device: `slab` is then a host mirror, refreshed by pull()
  // before the host reads it and written back by push() after the host changes it.
  std::shared_ptr<DeviceSae> dev;
  // Guards `dev` between its one writer (toDevice's job) and prefetch(), the one reader on the JS
  // thread; everything else reads it on the executor thread.
  std::mutex dev_mu;
  // Written on the JS thread only: the device index toDevice sent the model to (-1: none, the
  // CPU), set when it is called, before its job is queued (so jobs queued later may read it too);
  // and, on a device, the number of the optimizer that owns the device's Adam state. A device SAE
  // keeps one set of moments: each sae.adam() takes it (zeroed), and older optimizers of the SAE
  // are refused from then on (on the CPU each has its own).
  int device_index = -1;
  int64_t adam_owner = 0;
  // Whether allocPinned can hand out page-locked batch arrays: a device with host_alloc that
  // prefetches (set when toDevice is called, before its job runs).
  bool can_pin() const;
  std::shared_ptr<DeviceSae> device_now() {
    std::lock_guard<std::mutex> lock(dev_mu);
    return dev;
  }
  void pull() {
    if (!dev) return;
    sk_status st{};
    status_throw(dev->api->get_params(&st, dev->h, slab.data()), st);
  }
  void push() {
    if (!dev) return;
    sk_status st{};
    status_throw(dev->api->set_params(&st, dev->h, slab.data()), st);
  }
  SaeView view() {
    SaeView v = cpu::sae_view(slab.data(), D, M);
    v.apply_b_dec = apply_b_dec;
    v.threshold = jumprelu ? threshold.data() : nullptr;
    return v;
  }
  // Training keeps the decoder rows at unit norm: a step removes the decoder gradient's component
  // along each row assuming |row| = 1 and renormalises the rows after the update. On rows of
  // other norms that renormalisation would silently change what the model computes, so every
  // writer of W_dec records the rows off unit norm here (in the host slab, which is current when
  // they run) and a step refuses such a model. Rows within kUnitRowTol pass: a unit-norm file
  // saved in bfloat16 is off by up to about 2^-9 (SAEBench accepts 1e-2 in bf16).
  static constexpr double kUnitRowTol = 1e-2;
  int64_t off_unit_rows = 0;  // rows whose norm is off 1 by more than kUnitRowTol
  int64_t worst_row = -1;     // the row furthest from unit norm, and its norm
  double worst_norm = 1;
  void note_decoder_rows();
};

void SaeModel::note_decoder_rows() {
  const float* W = view().W_dec;
  std::vector<double> nrm(static_cast<size_t>(M));
  cpu::cpu_pool().parallel_for(M, 64, [&](int64_t a, int64_t b, int) {
    for (int64_t l = a; l < b; ++l) {
      const float* w = W + l * D;
      double s[4] = {0, 0, 0, 0};
      int64_t d = 0;
      for (; d + 4 <= D; d += 4)
        for (int j = 0; j < 4; ++j) s[j] += double(w[d + j]) * w[d + j];
      for (; d < D; ++d) s[0] += double(w[d]) * w[d];
      nrm[size_t(l)] = std::sqrt((s[0] + s[1]) + (s[2] + s[3]));
    }
  });
  off_unit_rows = 0;
  worst_row = -1;
  worst_norm = 1;
  double worst = 0;
  for (int64_t l = 0; l < M; ++l) {
    const double off = std::abs(nrm[size_t(l)] - 1);
    if (off > kUnitRowTol) ++off_unit_rows;
    if (off > worst) {
      worst = off;
      worst_row = l;
      worst_norm = nrm[size_t(l)];
    }
  }
}

// Refuses a training step on a model whose decoder rows are not unit norm (see note_decoder_rows).
void require_unit_rows(const SaeModel& m) {
  if (m.off_unit_rows == 0) return;
  throw Error(ErrorCode::Arg,
              fmt("Expected decoder rows of unit norm (within ", SaeModel::kUnitRowTol, ") for a training step but ",
                  m.off_unit_rows, " of the SAE's ", m.M, " rows are not (row ", m.worst_row, " has norm ",
                  m.worst_norm, "): the step keeps the rows at unit norm and would change what this model computes. ",
                  "Call sae.normalizeDecoder() first to fold the norms into the encoder"));
}

// Codes of x under the model's activation (TopK or JumpReLU).
// JumpReLU codes on the model's device, in cpu::sae_encode_jumprelu's layout. The device pads
// every row to the `k` it is given and refuses (ERR_SAEKIT_SHAPE) when a row has more active
// latents, so k starts at the width that sufficed last time and grows 4x on refusal, up to M or
// the most codes a device keeps per row (SK_SAE_MAX_CODES), where the device's refusal is final
// and names the row that is too wide. The result is then cut to the batch's largest count (at
// least 1) and re-padded on the host with (0, lowest unused index), exactly as the CPU pads.
void encode_jumprelu_device(SaeModel& m, const float* x, int64_t N, cpu::Codes* codes) {
  const int64_t widest = std::min<int64_t>(m.M, SK_SAE_MAX_CODES);
  int64_t k = std::min(widest, std::max<int64_t>(1, m.jump_width));
  std::vector<float> v;
  std::vector<int32_t> ix;
  for (;;) {
    v.resize(size_t(N * k));
    ix.resize(size_t(N * k));
    sk_status st{};
    const int rc = m.dev->api->encode(&st, m.dev->h, x, N, k, m.dev->precision, v.data(), ix.data());
    if (rc == 0) break;
    if (st.code != int(ErrorCode::Shape) + 1 || k >= widest) status_throw(rc, st);
    k = std::min(widest, k * 4);
  }
  m.jump_width = k;
  // Active codes are strictly positive (z > 0 and z > threshold) and come first in each row.
  std::vector<int64_t> count(size_t(N), 0);
  int64_t K = 1;
  for (int64_t n = 0; n < N; ++n) {
    int64_t c = 0;
    while (c < k && v[size_t(n * k + c)] > 0.0f) ++c;
    count[size_t(n)] = c;
    K = std::max(K, c);
  }
  codes->N = N;
  codes->K = K;
  codes->v.assign(size_t(N * K), 0.0f);
  codes->i.assign(size_t(N * K), 0);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t c = count[size_t(n)];
    std::copy_n(v.data() + n * k, c, codes->v.data() + n * K);
    std::copy_n(ix.data() + n * k, c, codes->i.data() + n * K);
    cpu::pad_unused_indices(codes->i.data() + n * K, c, K);
  }
}

void encode_codes_unchecked(SaeModel& m, const float* x, int64_t N, cpu::Codes* codes) {
  static const std::vector<int32_t> none;
  if (m.dev && m.jumprelu) return encode_jumprelu_device(m, x, N, codes);
  if (m.dev) {
    codes->N = N;
    codes->K = m.K;
    codes->v.resize(size_t(N * m.K));
    codes->i.resize(size_t(N * m.K));
    sk_status st{};
    status_throw(m.dev->api->encode(&st, m.dev->h, x, N, m.K, m.dev->precision, codes->v.data(), codes->i.data()), st);
    return;
  }
  if (m.jumprelu) cpu::sae_encode_jumprelu(m.view(), x, N, codes, cpu::cpu_pool());
  else cpu::sae_encode(m.view(), x, N, m.K, none, 0, codes, nullptr, nullptr, cpu::cpu_pool());
}

// Codes of x's rows. Finite inputs and weights can still give pre-activations past float32's
// range (inputs near 3e38): such codes are infinite (a NaN pre-activation, inf - inf, is kept as
// +Infinity: cpu::relu_code), which decode refuses and forward turns into NaN, so the encode
// itself is refused, naming the row.
void encode_codes(SaeModel& m, const float* x, int64_t N, cpu::Codes* codes) {
  encode_codes_unchecked(m, x, N, codes);
  const int64_t n = int64_t(codes->v.size());
  if (n == 0 || !cpu::convert_kernels().any_non_finite_f32(codes->v.data(), n)) return;
  int64_t j = 0;
  while (j < n && std::isfinite(codes->v[size_t(j)])) ++j;
  const int64_t row = codes->K > 0 ? j / codes->K : 0;
  const float v = codes->v[size_t(j)];
  const char* what = std::isnan(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity";
  throw Error(ErrorCode::NonFinite, fmt("Expected codes within float32's range but row ", row, " of x gives ", what, " for latent ",
                                        codes->i[size_t(j)], " (its pre-activation overflows: inputs or weights near the float32 limit)"),
              row);
}

// out [N, D] = (with_bias ? b_dec : 0) + sum_j v W_dec[i], on the model's device. Finite codes
// whose sum passes float32's range (values near its limit) are ERR_SAEKIT_NONFINITE naming the
// row of `of` ("the codes", "x") with err.row, as an encode's overflow is, not an infinite output.
void decode_codes(SaeModel& m, const cpu::Codes& c, bool with_bias, float* out, const char* of) {
  if (m.dev) {
    sk_status st{};
    status_throw(m.dev->api->decode(&st, m.dev->h, c.v.data(), c.i.data(), c.N, c.K, with_bias ? 1 : 0, out), st);
  } else {
    cpu::sae_decode(m.view(), c, with_bias, out, cpu::cpu_pool());
  }
  const int64_t n = c.N * m.D;
  if (n == 0 || !cpu::convert_kernels().any_non_finite_f32(out, n)) return;
  int64_t j = 0;
  while (j < n && std::isfinite(out[j])) ++j;
  const int64_t row = j / m.D;
  throw Error(ErrorCode::NonFinite, fmt("Expected a reconstruction within float32's range but row ", row, " of ", of, " decodes to ",
                                        js_nonfinite(out[j]), " at column ", j % m.D,
                                        " (its codes' sum overflows: code values or decoder weights near the float32 limit)"),
              row);
}

// An AuxK variant by name: undefined -> 'sparsify' (the default), or 'paper'.
cpu::AuxKVariant auxk_variant_arg(const Napi::Value& v, const char* name) {
  if (v.IsUndefined()) return cpu::AuxKVariant::Sparsify;
  if (v.IsString()) {
    const std::string s = v.As<Napi::String>().Utf8Value();
    if (s == "sparsify") return cpu::AuxKVariant::Sparsify;
    if (s == "paper") return cpu::AuxKVariant::Paper;
  }
  arg_error(ErrorCode::Arg, name, "'sparsify' or 'paper'", v);
}

// cpu::sae_step's contract on the model's device: with `grads`, the dense gradients (internal
// layout) and no change; with `adam`, the fused update using its hyper-parameters (the device
// keeps the moments and the step count).
cpu::StepStats device_step(SaeModel& m, const float* x, int64_t N, const std::vector<int32_t>& dead, float alpha,
                           cpu::AuxKVariant variant, cpu::SaeGrads* grads, const cpu::AdamState* adam) {
  const int64_t D = m.D, M = m.M, MD = M * D;
  sk_sae_step_opts o{};
  o.k = m.K;
  o.auxk_alpha = alpha;
  o.auxk_variant = int(variant);
  o.host_dead = dead.data();
  o.num_dead = int64_t(dead.size());
  o.precision = m.dev->precision;
  std::vector<float> g;
  if (grads) {
    g.resize(size_t(cpu::sae_slab_floats(D, M)));
    o.want_grads = 1;
    o.host_grads = g.data();
  } else {
    o.lr = adam->lr;
    o.beta1 = adam->beta1;
    o.beta2 = adam->beta2;
    o.eps = adam->eps;
  }
  cpu::StepStats stats;
  stats.fired.assign(size_t(M), 0);
  sk_sae_step_stats ss{};
  ss.host_fired = stats.fired.data();
  sk_status st{};
  status_throw(m.dev->api->step(&st, m.dev->h, x, N, &o, &ss), st);
  stats.loss = ss.loss;
  stats.fvu = ss.fvu;
  stats.auxk = ss.auxk;
  stats.l0 = ss.l0;
  stats.num_dead = ss.num_dead;
  stats.times = {ss.seconds[0], ss.seconds[1], ss.seconds[2], ss.seconds[3], ss.seconds[4]};
  if (grads) {
    grads->W_encT.assign(g.begin(), g.begin() + MD);
    grads->W_dec.assign(g.begin() + MD, g.begin() + 2 * MD);
    grads->b_enc.assign(g.begin() + 2 * MD, g.begin() + 2 * MD + M);
    grads->b_dec.assign(g.begin() + 2 * MD + M, g.end());
  }
  return stats;
}

void require_trainable(const SaeModel& m, const char* what) {
  if (m.jumprelu)
    throw Error(ErrorCode::Arg, fmt(what, " is not supported for a JumpReLU SAE yet (it encodes and decodes; ",
                                    "training it comes later)"));
}

// Page-locked host buffers of a device SAE (the device table's host_alloc), reused: a batch
// copied there goes to the device by one DMA instead of through the plugin's staging copy.
struct PinnedPool : std::enable_shared_from_this<PinnedPool> {
  const sk_sae_i* api = nullptr;
  std::mutex mu;
  std::vector<std::pair<void*, size_t>> free;
  ~PinnedPool() {
    for (auto& f : free) api->host_free(f.first);
  }
  // A buffer of at least `bytes` that returns to the pool with its last reference; null if the
  // device cannot allocate one (the caller then uses ordinary memory).
  std::shared_ptr<void> take(size_t bytes) {
    void* p = nullptr;
    size_t cap = 0;
    {
      std::lock_guard<std::mutex> lock(mu);
      for (size_t i = 0; i < free.size(); ++i)
        if (free[i].second >= bytes) {
          std::tie(p, cap) = free[i];
          free.erase(free.begin() + std::ptrdiff_t(i));
          break;
        }
    }
    if (p == nullptr) {
      sk_status st{};
      if (api->host_alloc(&st, &p, bytes) != 0 || p == nullptr) return nullptr;
      cap = bytes;
    }
    std::shared_ptr<PinnedPool> self = shared_from_this();
    return std::shared_ptr<void>(p, [self, cap](void* q) {
      std::lock_guard<std::mutex> lock(self->mu);
      if (self->free.size() < 3) self->free.emplace_back(q, cap);
      else self->api->host_free(q);
    });
  }
};

bool SaeModel::can_pin() const { return pinned && pinned->api->prefetch; }

// Page-locked arrays handed to JS by allocPinned (the Trainer's batch arrays on a device), by
// address: a borrowed prefetch finds the block behind a Float32Array here and holds it while its
// upload and step run, instead of copying the rows into the PinnedPool. A block leaves the
// registry (before its memory is freed) when its last holder lets go: the ArrayBuffer's
// finalizer or the step that borrowed it.
struct PinnedRegistry {
  std::mutex mu;
  std::map<uintptr_t, std::pair<size_t, std::weak_ptr<void>>> blocks;  // start -> (bytes, block)
};
PinnedRegistry& pinned_registry() {
  static PinnedRegistry* r = new PinnedRegistry;  // never destroyed: blocks may outlive main()
  return *r;
}

// The live block that holds [p, p + bytes), or null.
std::shared_ptr<void> pinned_block_of(const void* p, size_t bytes) {
  PinnedRegistry& r = pinned_registry();
  std::lock_guard<std::mutex> lock(r.mu);
  auto it = r.blocks.upper_bound(reinterpret_cast<uintptr_t>(p));
  if (it == r.blocks.begin()) return nullptr;
  --it;
  if (reinterpret_cast<uintptr_t>(p) + bytes > it->first + it->second.first) return nullptr;
  return it->second.second.lock();
}

// A block of page-locked memory from the model's PinnedPool, registered while it is out (it
// leaves the registry before it goes back to the pool); null if the device cannot allocate one.
std::shared_ptr<void> new_pinned_block(PinnedPool& pool, size_t bytes) {
  std::shared_ptr<void> buf = pool.take(bytes);
  if (!buf) return nullptr;
  void* p = buf.get();
  std::shared_ptr<void> block(p, [buf](void* q) mutable {
    {
      PinnedRegistry& r = pinned_registry();
      std::lock_guard<std::mutex> lock(r.mu);
      r.blocks.erase(reinterpret_cast<uintptr_t>(q));
    }
    buf.reset();  // back to the pool
  });
  PinnedRegistry& r = pinned_registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.blocks[reinterpret_cast<uintptr_t>(p)] = {bytes, block};
  return block;
}

// Rows of x: a Float32Array (copied: into page-locked memory for a device SAE) or a float32
// NativeTensor [rows, D] (shared).
struct Rows {
  std::shared_ptr<HostArray> host;
  std::shared_ptr<void> pinned;
  std::shared_ptr<void> keep;  // a prefetched batch: alive until the job ends
  Tensor tensor;
  Tensor on_device;  // (steps) a device tensor, not downloaded yet: see step_rows()
  int64_t n = 0;
  bool borrowed = false;  // `pinned` is the caller's own array (get_rows' borrow), not a copy
  const float* data() const {
    return pinned ? static_cast<const float*>(pinned.get()) : host ? host->as<const float>() : tensor.data<float>();
  }
};

// A batch copied out of JS by prefetch(): in page-locked memory, with its upload to the device
// started, when the model is on a device that can prefetch; else a plain native copy. Its
// destructor withdraws the device's prefetch of the buffer (a no-op once a step used it), so the
// buffer can go back to the pool without a later step mistaking it for this batch.
struct Prefetched {
  int64_t D = 0, n = 0;
  std::shared_ptr<void> pinned;
  std::shared_ptr<HostArray> host;
  std::shared_ptr<DeviceSae> dev;  // set when the device holds a prefetch of `pinned`
  ~Prefetched() {
    if (dev && pinned) {
      sk_status st{};
      dev->api->prefetch(&st, dev->h, static_cast<const float*>(pinned.get()), 0);
    }
  }
};

const napi_type_tag kPrefetchTag = {0x5ae1c17e6a5f0a14ULL, 0x3d2c4b7e13a8f0d6ULL};
// NativeSae and NativeAdam instances, tagged by their constructors (check_receiver).
const napi_type_tag kSaeTag = {0x5ae1c17e6a5f0a15ULL, 0x3d2c4b7e13a8f0d7ULL};
const napi_type_tag kAdamTag = {0x5ae1c17e6a5f0a16ULL, 0x3d2c4b7e13a8f0d8ULL};

// The Prefetched behind a JS external made by prefetch(), or null if v is not one.
std::shared_ptr<Prefetched>* prefetched_of(const Napi::Value& v) {
  if (!v.IsExternal()) return nullptr;
  bool ok = false;
  if (napi_check_object_type_tag(v.Env(), v, &kPrefetchTag, &ok) != napi_ok || !ok) return nullptr;
  return v.As<Napi::External<std::shared_ptr<Prefetched>>>().Data();
}

// dst[i] = float(double(src[i]) * s): what JS's `out[i] = x[i] * s` stores into a Float32Array.
void scaled_copy(float* dst, const float* src, size_t n, double s) {
  for (size_t i = 0; i < n; ++i) dst[i] = float(double(src[i]) * s);
}

// scale (prefetch's option) multiplies a Float32Array's rows while they are copied. With
// keep_device, a tensor on a device is kept there (on_device) for step_rows() to place. With
// borrow (the caller leaves the array untouched until the job that uses the rows has ended), a
// Float32Array inside a block from allocPinned is used where it lies (scale 1 only).
Rows get_rows(const Napi::Value& v, int64_t D, const char* name, PinnedPool* pool = nullptr, double scale = 1.0,
              bool keep_device = false, bool borrow = false) {
  Rows r;
  if (std::shared_ptr<Prefetched>* pp = prefetched_of(v)) {
    if (!*pp) throw Error(ErrorCode::Disposed, fmt("the prefetched batch passed as ", name, " was already used or disposed"));
    const Prefetched& p = **pp;
    if (p.D != D)
      throw Error(ErrorCode::Shape, fmt("Expected a batch of dIn = ", D, " for ", name, " but the prefetched batch has dIn = ", p.D));
    r.n = p.n;
    r.pinned = p.pinned;
    r.host = p.host;
    r.keep = *pp;
    pp->reset();  // used once: the job holds the last reference
    return r;
  }
  if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_float32_array) {
    Napi::TypedArray a = v.As<Napi::TypedArray>();
    int64_t len = int64_t(a.ElementLength());
    if (len == 0 || len % D != 0)
      throw Error(ErrorCode::Shape, fmt("Expected a Float32Array whose length is a positive multiple of dIn = ", D,
                                        " for ", name, " but received length ", len));
    r.n = len / D;
    const float* src = reinterpret_cast<const float*>(typed_array_data(a));
    if (borrow && scale == 1.0) {
      if (std::shared_ptr<void> block = pinned_block_of(src, a.ByteLength())) {
        r.pinned = std::shared_ptr<void>(std::move(block), const_cast<float*>(src));  // holds the block, points at the rows
        r.borrowed = true;
        return r;
      }
    }
    if (pool) r.pinned = pool->take(a.ByteLength());
    if (!r.pinned) r.host = HostArray::allocate(a.ByteLength());
    float* dst = r.pinned ? static_cast<float*>(r.pinned.get()) : r.host->as<float>();
    if (scale != 1.0) scaled_copy(dst, src, size_t(len), scale);
    else std::memcpy(dst, src, a.ByteLength());
    return r;
  }
  if (v.IsObject() && !v.IsTypedArray()) {
    Tensor& t = NativeTensor::unwrap(v, name);
    if (t.dtype != DType::F32)
      throw Error(ErrorCode::DType, fmt("Expected a float32 tensor for ", name, " but received ", dtype_name(t.dtype)));
    if (t.shape.size() != 2 || t.shape[1] != D || t.shape[0] < 1)
      throw Error(ErrorCode::Shape, fmt("Expected a tensor of shape [rows >= 1, ", D, "] for ", name, " but received shape ",
                                        shape_str(t.shape)));
    r.n = t.shape[0];
    if (keep_device && t.device().kind != DeviceKind::CPU) r.on_device = t;
    else r.tensor = NativeTensor::on_host(v.Env(), t);  // a tensor on a device: downloaded first (queued)
    return r;
  }
  arg_error(ErrorCode::Arg, name, "a Float32Array or a float32 Tensor", v);
}

// x's rows for a step of m, in the job (the executor runs jobs in order, so the tensor's own ops
// are complete): a tensor on m's own device is read where it lies (the device copies it there;
// no round trip through the host), one on any other device is downloaded into *host first.
const float* step_rows(const SaeModel& m, const Rows& x, Tensor* host) {
  const Tensor& t = x.on_device;
  if (!t.storage) return x.data();
  const Device d = t.device();
  if (m.dev && d.kind == DeviceKind::CUDA && d.index == m.dev->index) return t.data<float>();
  *host = Tensor::empty(t.dtype, t.shape);
  if (size_t bytes = t.nbytes()) backend_for(d).download(host->storage->data(), t.storage->data(), bytes);
  return host->data<float>();
}

Napi::Value f32(Napi::Env env, const std::vector<float>& v) {
  Napi::Float32Array a = Napi::Float32Array::New(env, v.size());
  if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size() * sizeof(float));
  return a;
}

Napi::Value i32(Napi::Env env, const std::vector<int32_t>& v) {
  Napi::Int32Array a = Napi::Int32Array::New(env, v.size());
  if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size() * sizeof(int32_t));
  return a;
}

// [M, D] internal rows -> SAELens W_enc [D, M].
void transpose(const float* src, int64_t rows, int64_t cols, float* dst) {
  const int64_t B = 32;
  for (int64_t r0 = 0; r0 < rows; r0 += B)
    for (int64_t c0 = 0; c0 < cols; c0 += B)
      for (int64_t r = r0; r < std::min(rows, r0 + B); ++r)
        for (int64_t c = c0; c < std::min(cols, c0 + B); ++c) dst[c * rows + r] = src[r * cols + c];
}

std::vector<int32_t> dead_from_counters(const SaeModel& m, double threshold) {
  std::vector<int32_t> dead;
  for (int64_t l = 0; l < m.M; ++l)
    if (double(m.since_fired[size_t(l)]) > threshold) dead.push_back(int32_t(l));
  return dead;
}

class NativeSae : public Napi::ObjectWrap<NativeSae> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "NativeSae",
                       {
                           StaticMethod<&NativeSae::create>("create"),
                           StaticMethod<&NativeSae::from_weights>("fromWeights"),
                           InstanceAccessor<&NativeSae::disposed>("disposed"),
                           InstanceMethod<&NativeSae::dispose>("dispose"),
                           InstanceMethod<&NativeSae::weights>("weights"),
                           InstanceMethod<&NativeSae::encode>("encode"),
                           InstanceMethod<&NativeSae::decode>("decode"),
                           InstanceMethod<&NativeSae::forward>("forward"),
                           InstanceMethod<&NativeSae::preacts>("preActivations"),
                           InstanceMethod<&NativeSae::gradients>("gradients"),
                           InstanceMethod<&NativeSae::since_fired>("sinceFired"),
                           InstanceMethod<&NativeSae::adam>("adam"),
                           InstanceMethod<&NativeSae::set_weight>("setWeight"),
                           InstanceMethod<&NativeSae::set_since_fired>("setSinceFired"),
                           InstanceMethod<&NativeSae::to_device>("toDevice"),
                           InstanceMethod<&NativeSae::check_unit_rows>("checkUnitRows"),
                           InstanceMethod<&NativeSae::normalize_decoder>("normalizeDecoder"),
                       });
  }

  explicit NativeSae(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeSae>(info) {
    info.This().As<Napi::Object>().TypeTag(&kSaeTag);
  }
  ~NativeSae() override {
    if (model_ && reported_) Napi::MemoryManagement::AdjustExternalMemory(Env(), -reported_);
  }

 private:
  static Napi::Object make(Napi::Env env, std::shared_ptr<SaeModel> m) {
    Napi::Object o = env_data(env).sae_ctor.New({});
    NativeSae* self = Unwrap(o);
    self->model_ = std::move(m);
    self->reported_ = int64_t(self->model_->slab.size() * sizeof(float));
    Napi::MemoryManagement::AdjustExternalMemory(env, self->reported_);
    return o;
  }

  static void check_dims(int64_t D, int64_t M, int64_t K) {
    SK_CHECK(int64_t(D) * M <= (int64_t(1) << 34), ErrorCode::Arg, "Expected dIn * numLatents <= 2^34 but received ",
             D, " * ", M);
    SK_CHECK(K >= 1 && K <= M, ErrorCode::Arg, "Expected integer between 1 and numLatents = ", M, " for k but received ", K);
  }

  // create(dIn, numLatents, k, seed): decoder rows random unit vectors (Philox stream 0 of
  // seed), W_enc = W_dec^T, biases zero.
  static Napi::Value create(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      int64_t D = get_int(info[0], "dIn", 1, 1 << 20);
      int64_t M = get_int(info[1], "numLatents", 1, 1 << 24);
      int64_t K = get_int(info[2], "k", 1, 1 << 24);
      uint64_t seed = get_u64(info[3], "seed");
      check_dims(D, M, K);
      auto m = std::make_shared<SaeModel>();
      m->D = D;
      m->M = M;
      m->K = K;
      m->slab = zeroed_floats(size_t(cpu::sae_slab_floats(D, M)));  // no page written here (see zeroed_vector.h)
      m->since_fired.assign(size_t(M), 0);
      queue_detached(info.Env(), [m, seed] {
        SaeView p = m->view();
        cpu::fill_normal(p.W_dec, DType::F32, m->M * m->D, seed, 0, 0, &cpu::cpu_pool());
        cpu::normalize_rows(p.W_dec, m->M, m->D, cpu::cpu_pool());
        std::memcpy(p.W_encT, p.W_dec, size_t(m->M * m->D) * sizeof(float));
      });
      return make(info.Env(), m);
    });
  }

  // fromWeights(W_enc [D*M], b_enc [M], W_dec [M*D], b_dec [D], dIn, numLatents, k, architecture,
  // applyBDecToInput, threshold): { handle, read }. Float32Arrays are copied and checked now;
  // tensors are read by the queued job, which checks them the same way: `read` (present when a
  // weight is a tensor) rejects with ERR_SAEKIT_NONFINITE naming the weight and position.
  static Napi::Value from_weights(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      int64_t D = get_int(info[4], "dIn", 1, 1 << 20);
      int64_t M = get_int(info[5], "numLatents", 1, 1 << 24);
      std::string arch = info[7].IsUndefined() ? "topk" : get_string(info[7], "architecture");
      if (arch != "topk" && arch != "jumprelu") arg_error(ErrorCode::Arg, "architecture", "one of: topk, jumprelu", info[7]);
      const bool jump = arch == "jumprelu";
      int64_t K = jump ? 0 : get_int(info[6], "k", 1, 1 << 24);
      check_dims(D, M, jump ? 1 : K);
      const bool apply = info[8].IsUndefined() ? true : get_bool(info[8], "applyBDecToInput");
      std::vector<float> thr;
      if (jump) {
        if (!info[9].IsTypedArray() || info[9].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array ||
            int64_t(info[9].As<Napi::TypedArray>().ElementLength()) != M)
          arg_error(ErrorCode::Shape, "threshold", fmt("a Float32Array of length numLatents = ", M), info[9]);
        Napi::Float32Array t = info[9].As<Napi::Float32Array>();
        thr.assign(t.Data(), t.Data() + M);
        cpu::check_finite(thr.data(), M, "threshold");
      }
      const char* names[4] = {"W_enc", "b_enc", "W_dec", "b_dec"};
      const int64_t lens[4] = {D * M, M, M * D, D};
      const char* shapes[4] = {"[dIn, numLatents]", "[numLatents]", "[numLatents, dIn]", "[dIn]"};
      // Each weight: a Float32Array (copied now) or a float32 tensor (read by the queued job).
      struct Src {
        std::shared_ptr<HostArray> host;
        Tensor tensor;
        const char* name = nullptr;
        int64_t len = 0;
        const float* data() const { return host ? host->as<const float>() : tensor.data<float>(); }
        // A tensor's values exist only in queue order: checked in the job, as arrays are here.
        const float* checked() const {
          if (!host) cpu::check_finite(data(), len, name);
          return data();
        }
      };
      Src src[4];
      bool any_tensor = false;
      for (int w = 0; w < 4; ++w) {
        const Napi::Value v = info[w];
        int64_t len = -1;
        if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_float32_array) {
          len = int64_t(v.As<Napi::TypedArray>().ElementLength());
        } else if (v.IsObject() && !v.IsTypedArray()) {
          Tensor& t = NativeTensor::unwrap(v, names[w]);
          if (t.dtype != DType::F32)
            throw Error(ErrorCode::DType, fmt("Expected a float32 tensor for ", names[w], " but received ", dtype_name(t.dtype)));
          len = t.numel();
          src[w].tensor = NativeTensor::on_host(info.Env(), t);
          any_tensor = true;
        } else {
          arg_error(ErrorCode::Arg, names[w], "a Float32Array or a float32 Tensor", v);
        }
        if (len != lens[w])
          throw Error(ErrorCode::Shape, fmt("Expected ", names[w], " of shape ", shapes[w], " = ", lens[w],
                                            " values (dIn = ", D, ", numLatents = ", M, ") but received ", len));
        src[w].name = names[w];
        src[w].len = len;
        if (!src[w].tensor.storage) {
          src[w].host = copy_typed_array(v.As<Napi::TypedArray>());
          cpu::check_finite(src[w].host->as<const float>(), len, names[w]);
        }
      }
      auto m = std::make_shared<SaeModel>();
      m->D = D;
      m->M = M;
      m->K = K;
      m->jumprelu = jump;
      m->apply_b_dec = apply;
      m->threshold = std::move(thr);
      m->slab = zeroed_floats(size_t(cpu::sae_slab_floats(D, M)));  // no page written here (see zeroed_vector.h)
      m->since_fired.assign(size_t(M), 0);
      auto copy = [m, s0 = src[0], s1 = src[1], s2 = src[2], s3 = src[3]] {
        SaeView p = m->view();
        transpose(s0.checked(), m->D, m->M, p.W_encT);
        std::memcpy(p.b_enc, s1.checked(), size_t(m->M) * sizeof(float));
        std::memcpy(p.W_dec, s2.checked(), size_t(m->M * m->D) * sizeof(float));
        std::memcpy(p.b_dec, s3.checked(), size_t(m->D) * sizeof(float));
        m->note_decoder_rows();
      };
      Napi::Object out = Napi::Object::New(info.Env());
      out.Set("handle", make(info.Env(), m));
      if (any_tensor) out.Set("read", queue_job(info.Env(), copy, [](Napi::Env env) -> Napi::Value { return env.Undefined(); }));
      else queue_detached(info.Env(), copy);
      return out;
    });
  }

  std::shared_ptr<SaeModel> live() const {
    if (!model_) throw Error(ErrorCode::Disposed, "this SparseAutoencoder was disposed; it cannot be used any more");
    return model_;
  }

  Napi::Value disposed(const Napi::CallbackInfo& info) {
    check_receiver(info, kSaeTag);
    return Napi::Boolean::New(info.Env(), !model_);
  }

  Napi::Value dispose(const Napi::CallbackInfo& info) {
    if (model_) {
      Napi::MemoryManagement::AdjustExternalMemory(info.Env(), -reported_);
      reported_ = 0;
      model_.reset();  // queued jobs keep their own reference
    }
    return info.Env().Undefined();
  }

  // weights(): Promise<{ W_enc [D, M], b_enc, W_dec [M, D], b_dec }> (copies)
  Napi::Value weights(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      auto m = live();
      auto out = std::make_shared<std::vector<std::shared_ptr<HostArray>>>();
      for (int64_t n : {m->D * m->M, m->M, m->M * m->D, m->D}) out->push_back(HostArray::allocate(size_t(n) * 4));
      auto work = [m, out] {
        m->pull();
        SaeView p = m->view();
        transpose(p.W_encT, m->M, m->D, (*out)[0]->as<float>());
        std::memcpy((*out)[1]->data(), p.b_enc, size_t(m->M) * 4);
        std::memcpy((*out)[2]->data(), p.W_dec, size_t(m->M * m->D) * 4);
        std::memcpy((*out)[3]->data(), p.b_dec, size_t(m->D) * 4);
      };
      auto complete = [m, out](Napi::Env env) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        const char* names[4] = {"W_enc", "b_enc", "W_dec", "b_dec"};
        for (int w = 0; w < 4; ++w) o.Set(names[w], (*out)[size_t(w)]->to_js(env, napi_float32_array, (*out)[size_t(w)]->bytes() / 4));
        if (m->jumprelu) o.Set("threshold", f32(env, m->threshold));
        return o;
      };
      return queue_job(info.Env(), work, complete);
    });
  }

  // encode(x[, batchInvariant[, keepOverflow]]): Promise<{ values, indices }>. batchInvariant
  // (CPU SAEs): the encoder product on the built-in GEMM, so each row's codes are the bits of
  // encoding it alone. keepOverflow (EncodeBatcher): a row whose pre-activations overflow float32
  // keeps its non-finite codes instead of failing the call, so one request's overflow does not
  // cost the other requests of its batch another encode.
  Napi::Value encode(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      auto m = live();
      Rows x = get_rows(info[0], m->D, "x", m->pinned.get());
      const bool invariant = info.Length() > 1 && info[1].ToBoolean().Value();
      const bool keep_overflow = info.Length() > 2 && info[2].ToBoolean().Value();
      auto codes = std::make_shared<cpu::Codes>();
      auto work = [m, x, codes, invariant, keep_overflow] {
        // Checked in the job: a model is placed on its device by a job queued before this one.
        if (invariant && m->dev)
          throw Error(ErrorCode::Arg, "Expected options.batchInvariant only for an SAE on the CPU (a device's GEMM is not batch-invariant)");
        cpu::check_finite_rows(x.data(), x.n, m->D, "x");
        cpu::BuiltinGemmScope scope(invariant);
        if (keep_overflow) encode_codes_unchecked(*m, x.data(), x.n, codes.get());
        else encode_codes(*m, x.data(), x.n, codes.get());
      };
      auto complete = [codes](Napi::Env env) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        o.Set("values", f32(env, codes->v));
        o.Set("indices", i32(env, codes->i));
        o.Set("k", double(codes->K));
        return o;
      };
      return queue_job(info.Env(), work, complete);
    });
  }

  // Checks and copies (values, indices) of codes with `k` per row over numLatents.
  static std::shared_ptr<cpu::Codes> get_codes(const Napi::Value& vals, const Napi::Value& idx, const Napi::Value& rows,
                                               int64_t M) {
    int64_t N = get_int(rows, "codes.rows", 1, int64_t(1) << 40);
    if (!vals.IsTypedArray() || vals.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      arg_error(ErrorCode::Arg, "codes.values", "a Float32Array", vals);
    if (!idx.IsTypedArray() || idx.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      arg_error(ErrorCode::Arg, "codes.indices", "an Int32Array", idx);
    int64_t nv = int64_t(vals.As<Napi::TypedArray>().ElementLength());
    int64_t ni = int64_t(idx.As<Napi::TypedArray>().ElementLength());
    if (nv != ni || nv % N != 0 || nv == 0)
      throw Error(ErrorCode::Shape, fmt("Expected codes.values and codes.indices of equal length, a positive multiple of ",
                                        "codes.rows = ", N, ", but received ", nv, " and ", ni));
    auto c = std::make_shared<cpu::Codes>();
    c->N = N;
    c->K = nv / N;
    Napi::Float32Array fv = vals.As<Napi::Float32Array>();
    Napi::Int32Array iv = idx.As<Napi::Int32Array>();
    c->v.assign(fv.Data(), fv.Data() + nv);
    c->i.assign(iv.Data(), iv.Data() + ni);
    for (int64_t q = 0; q < ni; ++q) {
      if (c->i[size_t(q)] < 0 || c->i[size_t(q)] >= M)
        throw Error(ErrorCode::Arg, fmt("Expected codes.indices between 0 and ", M - 1, " but received ", c->i[size_t(q)],
                                        " at position ", q));
      if (const float v = c->v[size_t(q)]; !std::isfinite(v))
        throw Error(ErrorCode::NonFinite, fmt("Expected finite codes.values but received ", js_nonfinite(v),
                                              " at position ", q, " (row ", q / c->K, ")"), q / c->K);
    }
    return c;
  }

  // decode(values, indices, rows): Promise<Float32Array [rows, D]>
  Napi::Value decode(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      auto m = live();
      auto c = get_codes(info[0], info[1], info[2], m->M);
      auto out = HostArray::allocate(size_t(c->N * m->D) * 4);
      auto work = [m, c, out] { decode_codes(*m, *c, true, out->as<float>(), "the codes"); };
      size_t n = size_t(c->N * m->D);
      return queue_job(info.Env(), work, [out, n](Napi::Env env) { return out->to_js(env, napi_float32_array, n); });
    });
  }

  // forward(x): Promise<{ values, indices, recon, fvu }>
  Napi::Value forward(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      auto m = live();
      Rows x = get_rows(info[0], m->D, "x", m->pinned.get());
      auto codes = std::make_shared<cpu::Codes>();
      auto recon = HostArray::allocate(size_t(x.n * m->D) * 4);
      auto fvu = std::make_shared<double>(0.0);
      auto work = [m, x, codes, recon, fvu] {
        const int64_t N = x.n, D = m->D;
        cpu::check_finite_rows(x.data(), N, D, "x");
        encode_codes(*m, x.data(), N, codes.get());
        float* r = recon->as<float>();
        decode_codes(*m, *codes, true, r, "x");
        std::vector<double> mean(size_t(D), 0.0);
        for (int64_t n = 0; n < N; ++n)
          for (int64_t d = 0; d < D; ++d) mean[size_t(d)] += x.data()[n * D + d];
        for (double& v : mean) v /= double(N);
        double sse = 0, tv = 0;
        for (int64_t n = 0; n < N; ++n)
          for (int64_t d = 0; d < D; ++d) {
            double xv = x.data()[n * D + d];
            sse += (xv - r[n * D + d]) * (xv - r[n * D + d]);
            tv += (xv - mean[size_t(d)]) * (xv - mean[size_t(d)]);
          }
        *fvu = tv > 0 ? sse / tv : std::nan("");
      };
      size_t n = size_t(x.n * m->D);
      auto complete = [codes, recon, fvu, n](Napi::Env env) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        o.Set("values", f32(env, codes->v));
        o.Set("indices", i32(env, codes->i));
        o.Set("k", double(codes->K));
        o.Set("recon", recon->to_js(env, napi_float32_array, n));
        o.Set("fvu", *fvu);
        return o;
      };
      return queue_job(info.Env(), work, complete);
    });
  }

  // preActivations(x): Promise<Float32Array [rows, M]>
  Napi::Value preacts(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      auto m = live();
      Rows x = get_rows(info[0], m->D, "x", m->pinned.get());
      auto out = HostArray::allocate(size_t(x.n * m->M) * 4);
      auto work = [m, x, out] {
        cpu::check_finite_rows(x.data(), x.n, m->D, "x");
        if (m->dev) {
          sk_status st{};
          status_throw(m->dev->api->preacts(&st, m->dev->h, x.data(), x.n, m->dev->precision, out->as<float>()), st);
        } else {
          cpu::sae_preacts(m->view(), x.data(), x.n, out->as<float>(), cpu::cpu_pool());
        }
      };
      size_t n = size_t(x.n * m->M);
      return queue_job(info.Env(), work, [out, n](Napi::Env env) { return out->to_js(env, napi_float32_array, n); });
    });
  }

  // gradients(x, deadMask: Uint8Array | null, alpha, variant?): Promise<{ loss, fvu, auxkLoss, W_enc, b_enc, W_dec, b_dec }>
  Napi::Value gradients(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      auto m = live();
      require_trainable(*m, "gradients()");
      Rows x = get_rows(info[0], m->D, "x", m->pinned.get(), 1.0, true);
      auto dead = std::make_shared<std::vector<int32_t>>();
      if (!info[1].IsNull() && !info[1].IsUndefined()) {
        if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
            int64_t(info[1].As<Napi::TypedArray>().ElementLength()) != m->M)
          arg_error(ErrorCode::Shape, "auxk.deadMask", fmt("a Uint8Array of length numLatents = ", m->M), info[1]);
        Napi::Uint8Array mask = info[1].As<Napi::Uint8Array>();
        for (int64_t l = 0; l < m->M; ++l)
          if (mask[size_t(l)]) dead->push_back(int32_t(l));
      }
      float alpha = float(info[2].IsUndefined() ? 0.0 : get_double(info[2], "auxk.alpha", 0, 1e6));
      const cpu::AuxKVariant variant = auxk_variant_arg(info[3], "auxk.variant");
      auto grads = std::make_shared<cpu::SaeGrads>();
      auto stats = std::make_shared<cpu::StepStats>();
      auto wenc = HostArray::allocate(size_t(m->D * m->M) * 4);
      auto work = [m, x, dead, alpha, variant, grads, stats, wenc] {
        cpu::StepOptions opt;
        opt.auxk_alpha = alpha;
        opt.auxk_variant = variant;
        opt.dead = dead.get();
        Tensor staged;
        const float* xp = step_rows(*m, x, &staged);
        *stats = m->dev ? device_step(*m, xp, x.n, *dead, alpha, variant, grads.get(), nullptr)
                        : cpu::sae_step(m->view(), xp, x.n, m->K, opt, grads.get(), nullptr, cpu::cpu_pool());
        transpose(grads->W_encT.data(), m->M, m->D, wenc->as<float>());
        grads->W_encT.clear();
        grads->W_encT.shrink_to_fit();
      };
      size_t nenc = size_t(m->D * m->M);
      auto complete = [grads, stats, wenc, nenc](Napi::Env env) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        o.Set("loss", stats->loss);
        o.Set("fvu", stats->fvu);
        o.Set("auxkLoss", stats->auxk);
        o.Set("W_enc", wenc->to_js(env, napi_float32_array, nenc));
        o.Set("b_enc", f32(env, grads->b_enc));
        o.Set("W_dec", f32(env, grads->W_dec));
        o.Set("b_dec", f32(env, grads->b_dec));
        return o;
      };
      return queue_job(info.Env(), work, complete);
    });
  }

  // sinceFired(): Promise<Float64Array [M]>
  // setWeight(name, values): replaces one weight (SAELens orientation), in queue order.
  Napi::Value set_weight(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      auto m = live();
      std::string name = get_string(info[0], "name");
      int64_t len = name == "W_enc" || name == "W_dec" ? m->D * m->M : name == "b_enc" ? m->M : name == "b_dec" ? m->D : -1;
      if (len < 0) arg_error(ErrorCode::Arg, "name", "one of: W_enc, b_enc, W_dec, b_dec", info[0]);
      if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array ||
          int64_t(info[1].As<Napi::TypedArray>().ElementLength()) != len)
        arg_error(ErrorCode::Shape, name, fmt("a Float32Array of length ", len), info[1]);
      auto src = copy_typed_array(info[1].As<Napi::TypedArray>());
      cpu::check_finite(src->as<const float>(), len, name.c_str());
      queue_detached(info.Env(), [m, src, name, len] {
        m->pull();
        SaeView p = m->view();
        const float* v = src->as<const float>();
        if (name == "W_enc") transpose(v, m->D, m->M, p.W_encT);
        else std::memcpy(name == "W_dec" ? p.W_dec : name == "b_enc" ? p.b_enc : p.b_dec, v, size_t(len) * sizeof(float));
        if (name == "W_dec") m->note_decoder_rows();
        m->push();
      });
      return info.Env().Undefined();
    });
  }

  // setSinceFired(Float64Array [M]): restores the dead-latent counters (checkpoints).
  Napi::Value set_since_fired(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      auto m = live();
      if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
          int64_t(info[0].As<Napi::TypedArray>().ElementLength()) != m->M)
        arg_error(ErrorCode::Shape, "sinceFired", fmt("a Float64Array of length numLatents = ", m->M), info[0]);
      Napi::Float64Array a = info[0].As<Napi::Float64Array>();
      auto v = std::make_shared<std::vector<int64_t>>(size_t(m->M));
      for (int64_t l = 0; l < m->M; ++l) {
        double t = a[size_t(l)];
        if (!(t >= 0 && t < 9.0e15 && t == std::floor(t))) arg_error(ErrorCode::Arg, fmt("sinceFired[", l, "]"), "a non-negative integer count", Napi::Number::New(info.Env(), t));
        (*v)[size_t(l)] = int64_t(t);
      }
      queue_detached(info.Env(), [m, v] { m->since_fired = *v; });
      return info.Env().Undefined();
    });
  }

  Napi::Value since_fired(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      auto m = live();
      auto out = HostArray::allocate(size_t(m->M) * 8);
      auto work = [m, out] {
        for (int64_t l = 0; l < m->M; ++l) out->as<double>()[l] = double(m->since_fired[size_t(l)]);
      };
      size_t n = size_t(m->M);
      return queue_job(info.Env(), work, [out, n](Napi::Env env) { return out->to_js(env, napi_float64_array, n); });
    });
  }

  Napi::Value adam(const Napi::CallbackInfo& info);

  // toDevice(index, precision: 'fp32' | 'tf32' | 'bf16'): Promise<void>; moves the parameters
  // to device `index` of the resolved device table (queued after every earlier op).
  // checkUnitRows(): Promise<void>, in queue order: rejects as a step would on decoder rows off
  // unit norm (the Trainer asks before it changes any weight; the rows were measured when W_dec
  // was last written, so nothing is read again).
  Napi::Value check_unit_rows(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      auto m = live();
      return queue_job(info.Env(), [m] { require_unit_rows(*m); }, [](Napi::Env env) { return env.Undefined(); });
    });
  }

  // normalizeDecoder(): Promise<number>, one job in queue order (ops queued before see the old
  // weights, ops queued after the new ones): each decoder row i with norm n_i off 1 (by 1e-7 or
  // more) becomes W_dec[i] / n_i, and column i of W_enc and b_enc[i] are multiplied by n_i (the
  // norm and the products in float64, rounded once to float32). Resolves to the number of rows
  // rescaled. Nothing changes when a row is all zeros or a rescaled weight would overflow float32.
  Napi::Value normalize_decoder(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      auto m = live();
      auto rescaled = std::make_shared<int64_t>(0);
      auto work = [m, rescaled] {
        if (m->jumprelu) throw Error(ErrorCode::Arg, "Expected a TopK SAE for normalizeDecoder()");
        m->pull();
        SaeView p = m->view();
        const int64_t D = m->D, M = m->M;
        std::vector<double> norm(static_cast<size_t>(M));
        for (int64_t i = 0; i < M; ++i) {
          double s = 0;
          for (int64_t d = 0; d < D; ++d) s += double(p.W_dec[i * D + d]) * double(p.W_dec[i * D + d]);
          norm[size_t(i)] = std::sqrt(s);
          if (!(norm[size_t(i)] > 0))
            throw Error(ErrorCode::Arg, fmt("Expected decoder rows with a direction but row ", i, " of W_dec is all zeros; set it with setWeights first"));
        }
        auto scaled = [](float v, double n) { return float(double(v) * n); };
        for (int64_t i = 0; i < M; ++i) {
          const double n = norm[size_t(i)];
          if (std::abs(n - 1) < 1e-7) continue;
          bool finite = std::isfinite(scaled(p.b_enc[i], n));
          for (int64_t d = 0; d < D && finite; ++d) finite = std::isfinite(scaled(p.W_encT[i * D + d], n));
          if (!finite)
            throw Error(ErrorCode::NonFinite, fmt("Expected encoder weights that stay finite when latent ", i, " is rescaled by its decoder norm ", n,
                                                  " but they overflow float32; nothing was changed"));
        }
        int64_t count = 0;
        for (int64_t i = 0; i < M; ++i) {
          const double n = norm[size_t(i)];
          if (std::abs(n - 1) < 1e-7) continue;
          ++count;
          for (int64_t d = 0; d < D; ++d) {
            p.W_dec[i * D + d] = float(double(p.W_dec[i * D + d]) / n);
            p.W_encT[i * D + d] = scaled(p.W_encT[i * D + d], n);
          }
          p.b_enc[i] = scaled(p.b_enc[i], n);
        }
        *rescaled = count;
        if (count == 0) return;
        m->note_decoder_rows();
        m->push();
      };
      return queue_job(info.Env(), work, [rescaled](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, double(*rescaled)); });
    });
  }

  Napi::Value to_device(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      auto m = live();
      const DeviceApi& dev = current_device_api();
      int index = int(get_int(info[0], "device index", 0, int64_t(dev.names.size()) - 1));
      std::string prec = get_string(info[1], "precision");
      if (prec != "fp32" && prec != "tf32" && prec != "bf16") arg_error(ErrorCode::Arg, "precision", "one of: fp32, tf32, bf16", info[1]);
      const int p = prec == "fp32" ? SK_PREC_F32 : prec == "tf32" ? SK_PREC_TF32 : SK_PREC_BF16;
      const sk_sae_i* api = dev.api;
      if (api->host_alloc && api->host_free && !m->pinned) {
        m->pinned = std::make_shared<PinnedPool>();
        m->pinned->api = api;
      }
      m->device_index = index;
      auto work = [m, api, index, p] {
        auto d = std::make_shared<DeviceSae>();
        d->api = api;
        d->index = index;
        d->precision = p;
        sk_status st{};
        m->pull();  // from another device, if it was on one
        status_throw(api->create(&st, &d->h, index, m->D, m->M, m->apply_b_dec ? 1 : 0, m->slab.data(),
                                 m->jumprelu ? m->threshold.data() : nullptr),
                     st);
        std::lock_guard<std::mutex> lock(m->dev_mu);
        m->dev = d;
      };
      return queue_job(info.Env(), work, [](Napi::Env env) { return env.Undefined(); });
    });
  }

  std::shared_ptr<SaeModel> model_;
  int64_t reported_ = 0;
};

class NativeAdam : public Napi::ObjectWrap<NativeAdam> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "NativeAdam",
                       {
                           InstanceMethod<&NativeAdam::step>("step"),
                           InstanceMethod<&NativeAdam::prefetch>("prefetch"),
                           InstanceMethod<&NativeAdam::drop_prefetched>("dropPrefetched"),
                           InstanceMethod<&NativeAdam::alloc_pinned>("allocPinned"),
                           InstanceMethod<&NativeAdam::prefetch_counts>("prefetchCounts"),
                           InstanceMethod<&NativeAdam::can_pin>("canPin"),
                           InstanceMethod<&NativeAdam::dispose>("dispose"),
                           InstanceMethod<&NativeAdam::get_state>("state"),
                           InstanceMethod<&NativeAdam::set_state>("setState"),
                           InstanceAccessor<&NativeAdam::steps>("steps"),
                           InstanceAccessor<&NativeAdam::disposed>("disposed"),
                       });
  }
  explicit NativeAdam(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeAdam>(info) {
    info.This().As<Napi::Object>().TypeTag(&kAdamTag);
  }
  ~NativeAdam() override {
    if (state_ && reported_) Napi::MemoryManagement::AdjustExternalMemory(Env(), -reported_);
  }

  static Napi::Object make(Napi::Env env, std::shared_ptr<SaeModel> m, float lr, float b1, float b2, float eps) {
    Napi::Object o = env_data(env).adam_ctor.New({});
    NativeAdam* self = Unwrap(o);
    self->model_ = std::move(m);
    self->state_ = std::make_shared<cpu::AdamState>();
    self->state_->lr = lr;
    self->state_->beta1 = b1;
    self->state_->beta2 = b2;
    self->state_->eps = eps;
    if (self->model_->device_index < 0) {
      // On the CPU the optimizer holds its moments.
      const size_t n = self->model_->slab.size();
      self->state_->m = zeroed_floats(n);  // no page written on the JS thread (see zeroed_vector.h)
      self->state_->v = zeroed_floats(n);
      self->reported_ = int64_t(2 * n * sizeof(float));
      Napi::MemoryManagement::AdjustExternalMemory(env, self->reported_);
      return o;
    }
    // On a device the moments live there, one set per SAE, and no host copy is kept: this
    // optimizer takes them, zeroed on the device (if the model got there; else every op rejects).
    self->owner_ = ++self->model_->adam_owner;
    queue_detached(env, [m = self->model_] {
      if (!m->dev) return;
      sk_status s2{};
      status_throw(m->dev->api->set_adam(&s2, m->dev->h, nullptr, nullptr, 0), s2);
    });
    return o;
  }

 private:
  // prefetch(x: Float32Array, scale?: number): an external holding a copy of x (times scale),
  // taken now (so x may be reused at once): in page-locked memory with its upload started when
  // the SAE is on a device that can prefetch (the transfer then overlaps the step in flight),
  // else in plain native memory. Runs on the JS thread, beside the executor: the device table's
  // prefetch is thread-safe.
  Napi::Value prefetch(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      live_state();
      auto m = model_;
      if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
        arg_error(ErrorCode::Arg, "x", "a Float32Array", info[0]);
      auto p = std::make_shared<Prefetched>();
      std::shared_ptr<DeviceSae> dev = m->device_now();
      const bool device = dev && dev->api->prefetch && m->pinned;
      const double scale = info.Length() > 1 && !info[1].IsUndefined() ? get_double(info[1], "scale", 0, std::numeric_limits<double>::max()) : 1.0;
      const bool borrow = info.Length() > 2 && info[2].IsBoolean() && info[2].As<Napi::Boolean>().Value();
      Rows r = get_rows(info[0], m->D, "x", device ? m->pinned.get() : nullptr, scale, false, borrow);
      ++(r.borrowed ? borrowed_ : copied_);
      p->D = m->D;
      p->n = r.n;
      p->pinned = r.pinned;
      p->host = r.host;
      if (device && p->pinned) {
        sk_status st{};
        // A device that cannot take it now still gets the rows at the step, from `pinned`.
        if (dev->api->prefetch(&st, dev->h, static_cast<const float*>(p->pinned.get()), p->n) == 0) p->dev = dev;
      }
      // The copy is native memory V8 does not see: reported until the External is collected
      // (dropped batches that were never stepped or disposed grew the process by GiBs).
      const int64_t bytes = r.borrowed ? 0 : r.n * m->D * int64_t(sizeof(float));
      return owned_external(info.Env(), new std::shared_ptr<Prefetched>(std::move(p)), bytes, kPrefetchTag);
    });
  }

  // allocPinned(bytes): an ArrayBuffer of page-locked memory (a buffer of the model's PinnedPool)
  // that prefetch(x, 1, true) uploads without copying; undefined when the SAE is not headed for a
  // device that can prefetch. The buffer goes back to the pool once the ArrayBuffer is collected
  // and no step holds it.
  Napi::Value alloc_pinned(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      if (!state_) throw Error(ErrorCode::Disposed, "this optimizer was disposed; it cannot be used any more");
      const int64_t bytes = get_int(info[0], "bytes", 1, int64_t(1) << 40);
      auto m = model_;
      if (!m->can_pin()) return info.Env().Undefined();
      std::shared_ptr<void> block = new_pinned_block(*m->pinned, size_t(bytes));
      if (!block) return info.Env().Undefined();
      void* data = block.get();
      auto* holder = new std::shared_ptr<void>(std::move(block));
      napi_value ab = external_arraybuffer(
          info.Env(), data, size_t(bytes),
          [](napi_env, void*, void* hint) { delete static_cast<std::shared_ptr<void>*>(hint); }, holder);
      if (ab == nullptr) {  // no external buffer here (a V8 sandbox, or over 4 GiB on Node 20): the caller uses ordinary memory
        delete holder;
        return info.Env().Undefined();
      }
      return Napi::Value(info.Env(), ab);
    });
  }

  // canPin(): whether allocPinned can give page-locked memory (the SAE is on, or headed for, a
  // device that prefetches).
  Napi::Value can_pin(const Napi::CallbackInfo& info) {
    auto m = model_;
    return Napi::Boolean::New(info.Env(), state_ && m && m->can_pin());
  }

  // prefetchCounts(): { copied, borrowed }: prefetches that copied their rows and ones that used
  // an allocPinned array where it lies (tests and benchmarks).
  Napi::Value prefetch_counts(const Napi::CallbackInfo& info) {
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("copied", Napi::Number::New(info.Env(), double(copied_)));
    o.Set("borrowed", Napi::Number::New(info.Env(), double(borrowed_)));
    return o;
  }

  // dropPrefetched(batch): frees a prefetched batch now (a no-op if a step already took it).
  Napi::Value drop_prefetched(const Napi::CallbackInfo& info) {
    if (std::shared_ptr<Prefetched>* pp = prefetched_of(info[0])) pp->reset();
    return info.Env().Undefined();
  }

  // step(x, lr, auxkAlpha, deadThresholdTokens, auxkVariant?): Promise<{ loss, fvu, auxkLoss, l0, numDead }>
  Napi::Value step(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      auto st = live_state();
      auto m = model_;
      Rows x = get_rows(info[0], m->D, "x", m->pinned.get(), 1.0, true);
      double lr = get_double(info[1], "lr", 0, 1e6);
      float alpha = float(get_double(info[2], "auxkAlpha", 0, 1e6));
      double threshold = get_double(info[3], "deadThresholdTokens", 0, 9.0e15);
      const cpu::AuxKVariant variant = auxk_variant_arg(info[4], "auxkVariant");
      auto stats = std::make_shared<cpu::StepStats>();
      auto t_after = std::make_shared<int64_t>(0);
      const bool on_device = owner_ != 0;
      auto work = [m, st, x, lr, alpha, variant, threshold, stats, t_after, on_device] {
        require_device(*m, on_device);
        require_unit_rows(*m);
        std::vector<int32_t> dead = dead_from_counters(*m, threshold);
        cpu::StepOptions opt;
        opt.auxk_alpha = alpha;
        opt.auxk_variant = variant;
        opt.dead = &dead;
        st->lr = float(lr);
        int64_t t_before = st->t;
        Tensor staged;
        const float* xp = step_rows(*m, x, &staged);
        if (m->dev) {
          *stats = device_step(*m, xp, x.n, dead, alpha, variant, nullptr, st.get());
          ++st->t;
        } else {
          try {
            *stats = cpu::sae_step(m->view(), xp, x.n, m->K, opt, nullptr, st.get(), cpu::cpu_pool());
          } catch (...) {
            st->t = t_before;  // a rejected step (checked before any update) does not count
            throw;
          }
        }
        *t_after = st->t;
        m->off_unit_rows = 0;  // the step renormalised the rows
        for (int64_t l = 0; l < m->M; ++l) {
          int64_t& c = m->since_fired[size_t(l)];
          c = stats->fired[size_t(l)] ? 0 : c + x.n;
        }
      };
      auto done = done_;
      auto gen = gen_;
      const int64_t queued_gen = *gen_;
      auto complete = [stats, done, gen, queued_gen, t_after](Napi::Env env) -> Napi::Value {
        // Only steps that succeeded count; a step queued before a setState() does not overwrite
        // the count setState() set.
        if (*gen == queued_gen) *done = *t_after;
        Napi::Object o = Napi::Object::New(env);
        o.Set("loss", stats->loss);
        o.Set("fvu", stats->fvu);
        o.Set("auxkLoss", stats->auxk);
        o.Set("l0", stats->l0);
        o.Set("numDead", double(stats->num_dead));
        Napi::Object t = Napi::Object::New(env);
        t.Set("gemm", stats->times.gemm);
        t.Set("select", stats->times.select);
        t.Set("decode", stats->times.decode);
        t.Set("backward", stats->times.backward);
        t.Set("update", stats->times.update);
        o.Set("seconds", t);
        return o;
      };
      return queue_job(info.Env(), work, complete);
    });
  }

  Napi::Value steps(const Napi::CallbackInfo& info) {
    check_receiver(info, kAdamTag);
    return Napi::Number::New(info.Env(), double(*done_));
  }

  // Floats in the parameter slab, and so in each moment.
  size_t slab_floats() const { return size_t(cpu::sae_slab_floats(model_->D, model_->M)); }

  // A device optimizer has no host moments: its model must have reached the device (a failed
  // move rejects every op in JS too; this keeps the job from reaching for the missing moments).
  static void require_device(const SaeModel& m, bool on_device) {
    if (on_device && !m.dev)
      throw Error(ErrorCode::Device, fmt("the SAE's parameters are not on cuda:", m.device_index, " (moving them there failed)"));
  }

  // The state of an optimizer that may be used: not disposed and, on a device, still the owner
  // of the SAE's device Adam state (JS thread; ops queued before a newer sae.adam() ran first).
  std::shared_ptr<cpu::AdamState> live_state() const {
    if (!state_) throw Error(ErrorCode::Disposed, "this optimizer was disposed; it cannot be used any more");
    if (owner_ != 0 && model_->adam_owner != owner_)
      throw Error(ErrorCode::Disposed,
                  fmt("this optimizer was replaced: a later sae.adam() of the same SAE took its Adam state on cuda:",
                      model_->device_index, " (a device keeps one set of moments per SAE); use the newest optimizer"));
    return state_;
  }

  // state(buffers?): Promise<{ m, v, t }>: the moments in saekit's internal slab layout
  // (checkpoints): Float32Arrays, or with `buffers` true ArrayBuffers, which JS views in pieces
  // when the slab is longer than a typed array (2^32 elements on Node 20).
  Napi::Value get_state(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      const bool buffers = info.Length() > 0 && info[0].IsBoolean() && info[0].As<Napi::Boolean>().Value();
      auto st = live_state();
      const size_t n = slab_floats();
      auto m = HostArray::allocate(n * 4), v = HostArray::allocate(n * 4);
      auto t = std::make_shared<int64_t>(0);
      auto work = [st, m, v, t, n, model = model_, on_device = owner_ != 0] {
        require_device(*model, on_device);
        if (model->dev) {
          sk_status s2{};
          status_throw(model->dev->api->get_adam(&s2, model->dev->h, m->as<float>(), v->as<float>(), t.get()), s2);
          return;
        }
        std::memcpy(m->data(), st->m.data(), n * 4);
        std::memcpy(v->data(), st->v.data(), n * 4);
        *t = st->t;
      };
      auto complete = [m, v, t, n, buffers](Napi::Env env) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        o.Set("m", buffers ? Napi::Value(env, m->to_arraybuffer(env)) : m->to_js(env, napi_float32_array, n));
        o.Set("v", buffers ? Napi::Value(env, v->to_arraybuffer(env)) : v->to_js(env, napi_float32_array, n));
        o.Set("t", double(*t));
        return o;
      };
      return queue_job(info.Env(), work, complete);
    });
  }

  // A moment for setState: one Float32Array of the slab's length, or an Array of Float32Arrays
  // whose lengths add up to it (a slab longer than a typed array), copied into native memory.
  static std::shared_ptr<HostArray> moment_arg(const Napi::Value& a, const char* name, size_t n) {
    const auto is_f32 = [](const Napi::Value& x) {
      return x.IsTypedArray() && x.As<Napi::TypedArray>().TypedArrayType() == napi_float32_array;
    };
    if (is_f32(a)) {
      if (a.As<Napi::TypedArray>().ElementLength() != n) arg_error(ErrorCode::Shape, name, fmt("a Float32Array of length ", n), a);
      return copy_typed_array(a.As<Napi::TypedArray>());
    }
    if (!a.IsArray()) arg_error(ErrorCode::Shape, name, fmt("a Float32Array of length ", n, " or an Array of Float32Array pieces"), a);
    // Each element is read once (Get may run a getter, which may return another array each time
    // or resize an earlier piece's buffer): all of them first, then their lengths are summed and
    // they are copied with no JS running in between, each copy bounded by the slab.
    const Napi::Array parts = a.As<Napi::Array>();
    std::vector<Napi::TypedArray> pieces;
    for (uint32_t i = 0; i < parts.Length(); ++i) {
      const Napi::Value p = parts.Get(i);
      if (!is_f32(p)) arg_error(ErrorCode::Shape, fmt(name, "[", i, "]"), "a Float32Array", p);
      pieces.push_back(p.As<Napi::TypedArray>());
    }
    size_t total = 0;
    for (const Napi::TypedArray& p : pieces) total += p.ElementLength();
    if (total != n) throw Error(ErrorCode::Shape, fmt("Expected pieces of ", name, " of ", n, " floats in all but received ", total));
    auto h = HostArray::allocate(n * 4);
    size_t at = 0;
    for (const Napi::TypedArray& p : pieces) {
      const size_t bytes = p.ByteLength();
      SK_CHECK(bytes <= n * 4 - at, ErrorCode::Shape, "Expected pieces of ", name, " of ", n, " floats in all (a piece changed length)");
      if (bytes) std::memcpy(h->as<char>() + at, typed_array_data(p), bytes);
      at += bytes;
    }
    return h;
  }

  // setState(m, v, t): restores the moments and the step count (in queue order).
  Napi::Value set_state(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      auto st = live_state();
      const size_t n = slab_floats();
      // Named as the API names them (setState's argument is `state`).
      int64_t t = get_int(info[2], "state.t", 0, int64_t(1) << 50);
      auto m = moment_arg(info[0], "state.m", n), v = moment_arg(info[1], "state.v", n);
      cpu::check_finite(m->as<const float>(), int64_t(n), "state.m");
      cpu::check_finite(v->as<const float>(), int64_t(n), "state.v");
      queue_detached(info.Env(), [st, m, v, t, n, model = model_, on_device = owner_ != 0] {
        st->t = t;
        if (!on_device) {
          std::memcpy(st->m.data(), m->data(), n * 4);
          std::memcpy(st->v.data(), v->data(), n * 4);
        } else if (model->dev) {  // (a model that never got to its device: its ops reject)
          sk_status s2{};
          status_throw(model->dev->api->set_adam(&s2, model->dev->h, m->as<const float>(), v->as<const float>(), t), s2);
        }
      });
      *done_ = t;
      ++*gen_;  // steps queued before this call no longer set the count when they settle
      return info.Env().Undefined();
    });
  }
  Napi::Value disposed(const Napi::CallbackInfo& info) {
    check_receiver(info, kAdamTag);
    return Napi::Boolean::New(info.Env(), !state_);
  }
  Napi::Value dispose(const Napi::CallbackInfo& info) {
    if (state_) {
      Napi::MemoryManagement::AdjustExternalMemory(info.Env(), -reported_);
      reported_ = 0;
      state_.reset();
      model_.reset();
    }
    return info.Env().Undefined();
  }

  std::shared_ptr<SaeModel> model_;
  std::shared_ptr<cpu::AdamState> state_;
  int64_t owner_ = 0;  // on a device: this optimizer's number (see SaeModel::adam_owner); 0 on the CPU
  int64_t reported_ = 0;
  std::shared_ptr<int64_t> done_ = std::make_shared<int64_t>(0);  // completed steps (JS thread only)
  std::shared_ptr<int64_t> gen_ = std::make_shared<int64_t>(0);   // setState() calls so far (JS thread only)
  int64_t copied_ = 0, borrowed_ = 0;                              // prefetches by kind (JS thread only)
};

// adam(lr, beta1, beta2, eps): a NativeAdam bound to this model.
Napi::Value NativeSae::adam(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    auto m = live();
    require_trainable(*m, "adam()");
    return NativeAdam::make(info.Env(), m, float(get_double(info[0], "lr", 0, 1e6)), float(get_double(info[1], "beta1", 0, 0.99999)),
                            float(get_double(info[2], "beta2", 0, 0.9999999)), float(get_double(info[3], "eps", 1e-30, 1e6)));
  });
}

}  // namespace

void register_sae(Napi::Env env, Napi::Object exports) {
  Napi::Function sae = NativeSae::define(env);
  Napi::Function adam = NativeAdam::define(env);
  env_data(env).sae_ctor = Napi::Persistent(sae);
  env_data(env).adam_ctor = Napi::Persistent(adam);
  exports.Set("NativeSae", sae);
  exports.Set("NativeAdam", adam);
}

}  // namespace sk::napi
