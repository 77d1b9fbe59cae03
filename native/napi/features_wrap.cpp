#include "features_wrap.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>

#include "../cpu/cpu_backend.h"
#include "../cpu/lap.h"
#include "../cpu/sparse_corr.h"
#include "args.h"
#include "async.h"
#include "buffers.h"
#include "device.h"

namespace sk::napi {

namespace {

using StoreRef = std::shared_ptr<cpu::SparseCorrStore>;
// The JS handle owns a slot; a run takes the store out of it (one run per store).
struct StoreSlot {
  StoreRef store;
};

template <typename T, napi_typedarray_type Type>
const T* typed(const Napi::Value& v, const std::string& name, int64_t length, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != Type) arg_error(ErrorCode::DType, name, what, v);
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  if (int64_t(ta.ElementLength()) != length)
    throw Error(ErrorCode::Shape, fmt("Expected ", name, " of length ", length, " but received length ", ta.ElementLength()));
  if (length == 0) return nullptr;
  return reinterpret_cast<const T*>(typed_array_data(ta));
}

// Tags the store's External, so another External (a prefetched batch) is refused, not misread.
const napi_type_tag kStoreTag = {0x5ae1c0d7c0a5e11dULL, 0x9b27e4f1a3c6d805ULL};

StoreSlot* slot_of(const Napi::Value& v) {
  bool ok = false;
  if (!v.IsExternal() || napi_check_object_type_tag(v.Env(), v, &kStoreTag, &ok) != napi_ok || !ok)
    arg_error(ErrorCode::Arg, "store", "a sparse correlation store", v);
  StoreSlot* s = v.As<Napi::External<StoreSlot>>().Data();
  if (!s || !s->store) throw Error(ErrorCode::Disposed, "Expected a sparse correlation store that has not run yet");
  return s;
}

// sparseCorrCreate(nA, nB, reserveRows, reserveA, reserveB): an opaque store.
Napi::Value create(const Napi::CallbackInfo& info) {
  const int64_t lim = int64_t(1) << 31;
  int64_t nA = get_int(info[0], "nA", 1, lim - 1), nB = get_int(info[1], "nB", 1, lim - 1);
  int64_t rr = get_int(info[2], "reserveRows", 0, lim - 1);
  int64_t ra = get_int(info[3], "reserveA", 0, int64_t(1) << 40), rb = get_int(info[4], "reserveB", 0, int64_t(1) << 40);
  auto* slot = new StoreSlot{std::make_shared<cpu::SparseCorrStore>(nA, nB, rr, ra, rb)};
  auto ext = Napi::External<StoreSlot>::New(info.Env(), slot, [](Napi::Env, StoreSlot* s) { delete s; });
  if (napi_type_tag_object(info.Env(), ext, &kStoreTag) != napi_ok) throw Error(ErrorCode::Internal, "napi_type_tag_object failed");
  return ext;
}

// sparseCorrAppend(store, valuesA, indicesA, valuesB, indicesB, rows): synchronous copy of one
// batch ([rows, kA] and [rows, kB], k from the lengths); returns the tokens held.
Napi::Value append(const Napi::CallbackInfo& info) {
  StoreSlot* s = slot_of(info[0]);
  cpu::SparseCorrStore& st = *s->store;
  int64_t rows = get_int(info[5], "rows", 1, (int64_t(1) << 31) - 1);
  auto len = [&](const Napi::Value& v, const char* name) -> int64_t {
    if (!v.IsTypedArray()) arg_error(ErrorCode::DType, name, "a typed array", v);
    int64_t n = int64_t(v.As<Napi::TypedArray>().ElementLength());
    if (n % rows != 0) throw Error(ErrorCode::Shape, fmt("Expected ", name, " of a length divisible by rows = ", rows, " but received ", n));
    return n;
  };
  const int64_t na = len(info[1], "codesA.values"), nb = len(info[3], "codesB.values");
  const float* va = typed<float, napi_float32_array>(info[1], "codesA.values", na, "a Float32Array");
  const int32_t* ia = typed<int32_t, napi_int32_array>(info[2], "codesA.indices", na, "an Int32Array");
  const float* vb = typed<float, napi_float32_array>(info[3], "codesB.values", nb, "a Float32Array");
  const int32_t* ib = typed<int32_t, napi_int32_array>(info[4], "codesB.indices", nb, "an Int32Array");
  st.append(va, ia, na / rows, vb, ib, nb / rows, rows);
  return Napi::Number::New(info.Env(), double(st.rows));
}

// Runs the correlation on a device through its table (core/corr_device.h), with the store's
// arrays as they are (CSR by token, float64 sums); fills the same result as the CPU kernel.
void run_on_device(const sk_corr_i* api, int device, cpu::SparseCorrStore& st, const cpu::SparseCorrOptions& opt,
                   cpu::SparseCorrResult& res) {
  const int64_t T = st.rows;
  if (T < 2) throw Error(ErrorCode::Arg, fmt("Expected at least 2 tokens for a correlation but received ", T));
  sk_corr_codes c{};
  c.nA = st.nA;
  c.nB = st.nB;
  c.tokens = T;
  c.ptr_a = st.pa.data();
  c.idx_a = st.ia.data();
  c.val_a = st.va.data();
  c.ptr_b = st.pb.data();
  c.idx_b = st.ib.data();
  c.val_b = st.vb.data();
  c.sum_a = st.sa.data();
  c.sumsq_a = st.saa.data();
  c.sum_b = st.sb.data();
  c.sumsq_b = st.sbb.data();
  sk_corr_opts o{};
  o.full = opt.full ? 1 : 0;
  o.top = opt.top;
  o.reverse = opt.reverse ? 1 : 0;
  res.tokens = T;
  res.kTop = opt.full ? 0 : std::min<int64_t>(opt.top, st.nA);
  res.kRev = opt.full || !opt.reverse ? 0 : std::min<int64_t>(opt.top, st.nB);
  res.constantA.assign(size_t(st.nA), 0);
  res.constantB.assign(size_t(st.nB), 0);
  sk_corr_out out{};
  out.constant_a = res.constantA.data();
  out.constant_b = res.constantB.data();
  out.r = res.r;
  out.top_index = res.topIndex;
  out.top_r = res.topR;
  out.rev_index = res.revIndex;
  out.rev_r = res.revR;
  sk_status status{};
  status_throw(api->run(&status, device, &c, &o, &out), status);
  // The codes are consumed, as on the CPU: free them now rather than with the job.
  std::vector<float>().swap(st.va);
  std::vector<float>().swap(st.vb);
  std::vector<int32_t>().swap(st.ia);
  std::vector<int32_t>().swap(st.ib);
  std::vector<int64_t>().swap(st.pa);
  std::vector<int64_t>().swap(st.pb);
}

// sparseCorrRun(store, full, top, reverse, device = 'cpu'): Promise<{ tokens, constantA,
// constantB, activeA, activeB, r? , topIndex?, topR?, kTop, revIndex?, revR?, kRev }>. Consumes
// the store. On a CUDA device ('cuda:N') the run goes through the device's correlation table.
Napi::Value run(const Napi::CallbackInfo& info) {
  StoreSlot* s = slot_of(info[0]);
  cpu::SparseCorrOptions opt;
  opt.full = get_bool(info[1], "full");
  opt.top = get_int(info[2], "top", opt.full ? 0 : 1, (int64_t(1) << 31) - 1);
  opt.reverse = get_bool(info[3], "reverse");
  const Device device = info.Length() > 4 && !info[4].IsUndefined() ? parse_device(get_string(info[4], "device")) : Device{};
  // Resolved before the store is taken, so a missing device leaves the store usable.
  const sk_corr_i* api = device.kind == DeviceKind::CPU ? nullptr : corr_api_for(device);
  StoreRef st = std::move(s->store);
  const int64_t nA = st->nA, nB = st->nB;
  const int64_t kTop = opt.full ? 0 : std::min(opt.top, nA), kRev = opt.full || !opt.reverse ? 0 : std::min(opt.top, nB);
  auto alloc = [](int64_t n) { return HostArray::allocate(size_t(std::max<int64_t>(n, 1)) * 4); };
  std::shared_ptr<HostArray> r = opt.full ? alloc(nA * nB) : nullptr;
  std::shared_ptr<HostArray> ti = kTop ? alloc(nB * kTop) : nullptr, tr = kTop ? alloc(nB * kTop) : nullptr;
  std::shared_ptr<HostArray> ri = kRev ? alloc(nA * kRev) : nullptr, rr = kRev ? alloc(nA * kRev) : nullptr;
  auto res = std::make_shared<cpu::SparseCorrResult>();
  auto stats = std::make_shared<std::vector<double>>();
  auto work = [st, opt, r, ti, tr, ri, rr, res, stats, api, index = device.index] {
    if (r) res->r = r->as<float>();
    if (ti) res->topIndex = ti->as<int32_t>(), res->topR = tr->as<float>();
    if (ri) res->revIndex = ri->as<int32_t>(), res->revR = rr->as<float>();
    if (api) run_on_device(api, index, *st, opt, *res);
    else cpu::sparse_correlation(*st, opt, *res, cpu::cpu_pool());
    *stats = st->activeA;
    stats->insert(stats->end(), st->activeB.begin(), st->activeB.end());
  };
  auto complete = [st, r, ti, tr, ri, rr, res, stats, nA, nB](Napi::Env env) -> Napi::Value {
    Napi::Object o = Napi::Object::New(env);
    o.Set("tokens", double(res->tokens));
    auto u8 = [&](const std::vector<uint8_t>& v) {
      Napi::Uint8Array a = Napi::Uint8Array::New(env, v.size());
      if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size());
      return a;
    };
    auto f64 = [&](const double* p, size_t n) {
      Napi::Float64Array a = Napi::Float64Array::New(env, n);
      if (n) std::memcpy(a.Data(), p, n * 8);
      return a;
    };
    o.Set("constantA", u8(res->constantA));
    o.Set("constantB", u8(res->constantB));
    o.Set("activeA", f64(stats->data(), size_t(nA)));
    o.Set("activeB", f64(stats->data() + nA, size_t(nB)));
    if (r) o.Set("r", r->to_js(env, napi_float32_array, size_t(nA * nB)));
    o.Set("kTop", double(res->kTop));
    o.Set("kRev", double(res->kRev));
    if (ti) {
      o.Set("topIndex", ti->to_js(env, napi_int32_array, size_t(nB * res->kTop)));
      o.Set("topR", tr->to_js(env, napi_float32_array, size_t(nB * res->kTop)));
    }
    if (ri) {
      o.Set("revIndex", ri->to_js(env, napi_int32_array, size_t(nA * res->kRev)));
      o.Set("revR", rr->to_js(env, napi_float32_array, size_t(nA * res->kRev)));
    }
    return o;
  };
  return queue_job(info.Env(), work, complete);
}

// linearAssignment(cost: Float64Array, rows, cols, maximize): Promise<Int32Array rowToCol>
// (-1 for rows left unassigned when rows > cols). The cost is copied (transposed when rows >
// cols, negated to maximise) before the job runs.
Napi::Value linear_assignment(const Napi::CallbackInfo& info) {
  const int64_t lim = (int64_t(1) << 31) - 1;
  int64_t rows = get_int(info[1], "rows", 0, lim), cols = get_int(info[2], "cols", 0, lim);
  bool maximize = get_bool(info[3], "maximize");
  const double* c = typed<double, napi_float64_array>(info[0], "cost", rows * cols, "a Float64Array");
  const bool tr = rows > cols;
  const int64_t n = tr ? cols : rows, m = tr ? rows : cols;
  auto work_cost = HostArray::allocate(size_t(std::max<int64_t>(n * m, 1)) * 8);
  double* w = work_cost->as<double>();
  const double sign = maximize ? -1.0 : 1.0;
  if (!tr) {
    for (int64_t q = 0; q < n * m; ++q) w[q] = sign * c[q];
  } else {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) w[i * m + j] = sign * c[j * cols + i];
  }
  auto out = HostArray::allocate(size_t(std::max<int64_t>(rows, 1)) * 4);
  auto work = [work_cost, out, n, m, rows, tr] {
    std::vector<int32_t> col4row(static_cast<size_t>(n));
    cpu::linear_assignment(work_cost->as<double>(), n, m, col4row.data());
    int32_t* r2c = out->as<int32_t>();
    if (!tr) {
      std::copy(col4row.begin(), col4row.end(), r2c);
    } else {
      std::fill(r2c, r2c + rows, -1);
      for (int64_t i = 0; i < n; ++i) r2c[col4row[size_t(i)]] = int32_t(i);
    }
  };
  return queue_job(info.Env(), work, [out, rows](Napi::Env env) { return out->to_js(env, napi_int32_array, size_t(rows)); });
}

}  // namespace

void register_features(Napi::Env env, Napi::Object exports) {
  exports.Set("sparseCorrCreate", Napi::Function::New<guarded<create>>(env, "sparseCorrCreate"));
  exports.Set("sparseCorrAppend", Napi::Function::New<guarded<append>>(env, "sparseCorrAppend"));
  exports.Set("sparseCorrRun", Napi::Function::New<guarded<run>>(env, "sparseCorrRun"));
  exports.Set("linearAssignment", Napi::Function::New<guarded<linear_assignment>>(env, "linearAssignment"));
}

}  // namespace sk::napi
