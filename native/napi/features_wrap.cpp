#include "features_wrap.h"

#include <algorithm>
#include <cmath>
#include <vector>
#include <cstring>
#include <limits>
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
  StoreSlot* s = tagged_external_data<StoreSlot>(v, kStoreTag, "store", "a sparse correlation store");
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
  return tagged_external(info.Env(), slot, [](Napi::Env, StoreSlot* s) { delete s; }, kStoreTag);
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
  o.scale = opt.scale;
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

// sparseCorrFree(store): frees the store's codes now (a correlation that failed before its run
// would otherwise hold them, unknown to V8, until the handle is collected); idempotent.
Napi::Value free_store(const Napi::CallbackInfo& info) {
  StoreSlot* s = tagged_external_data<StoreSlot>(info[0], kStoreTag, "store", "a sparse correlation store");
  if (s) s->store.reset();
  return info.Env().Undefined();
}

// sparseCorrRun(store, full, top, reverse, device = 'cpu', scale = 1, maxWorkBytes = 0): Promise<{ tokens, constantA,
// constantB, activeA, activeB, r? , topIndex?, topR?, kTop, revIndex?, revR?, kRev }>. Consumes
// the store. On a CUDA device ('cuda:N') the run goes through the device's correlation table.
Napi::Value run(const Napi::CallbackInfo& info) {
  StoreSlot* s = slot_of(info[0]);
  cpu::SparseCorrOptions opt;
  opt.full = get_bool(info[1], "full");
  opt.top = get_int(info[2], "top", opt.full ? 0 : 1, (int64_t(1) << 31) - 1);
  opt.reverse = get_bool(info[3], "reverse");
  const Device device = info.Length() > 4 && !info[4].IsUndefined() ? parse_device(get_string(info[4], "device")) : Device{};
  // Every r times scale before its rounding (options.compat 'univ-feat-geom': (n - 1) / n).
  opt.scale = info.Length() > 5 && !info[5].IsUndefined() ? get_double(info[5], "scale", std::numeric_limits<double>::min(), 1.0) : 1.0;
  // The CPU run's per-thread work arrays within this many bytes (0 or undefined: no bound).
  opt.max_work_bytes = info.Length() > 6 && !info[6].IsUndefined() ? get_int(info[6], "maxWorkBytes", 0, int64_t(1) << 62) : 0;
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

// Linear assignment in three steps, so that no call holds the JS thread for long at large sizes:
// lapCreate(rows, cols, maximize) reserves the float64 work matrix ([n, m], n <= m: transposed
// when rows > cols, negated to maximise); lapAppend(lap, values, rowStart, name) copies the next
// whole rows of the cost (a Float32Array or Float64Array chunk), checking every value (finite,
// |v| <= 1e300, named name[i] by its index in the [rows, cols] cost); lapRun(lap) solves it off
// the JS thread once every row is in: Promise<Int32Array rowToCol> (-1 for rows left unassigned
// when rows > cols). A lap runs once.
struct LapSlot {
  std::shared_ptr<HostArray> work;
  int64_t rows = 0, cols = 0, filled = 0;
  bool tr = false;
  double sign = 1.0;
};

// Tags the lap's External so that another External (a correlation store) is refused, never
// reinterpreted.
const napi_type_tag kLapTag = {0x5e1d0a55a1c3b7e1ULL, 0x9b2f4c6d8e0a1f3bULL};

LapSlot* lap_of(const Napi::Value& v) {
  LapSlot* s = tagged_external_data<LapSlot>(v, kLapTag, "lap", "a linear assignment from lapCreate");
  if (!s || !s->work) throw Error(ErrorCode::Disposed, "Expected a linear assignment that has not run yet");
  return s;
}

Napi::Value lap_create(const Napi::CallbackInfo& info) {
  const int64_t lim = (int64_t(1) << 31) - 1;
  int64_t rows = get_int(info[0], "rows", 0, lim), cols = get_int(info[1], "cols", 0, lim);
  bool maximize = get_bool(info[2], "maximize");
  // 8 * rows * cols must not overflow size_t (it cannot be allocated long before).
  if (rows * cols > (int64_t(1) << 56))
    throw Error(ErrorCode::Memory, fmt("Expected a cost of at most 2^56 entries for a linear assignment but received ", rows, " x ", cols));
  auto* slot = new LapSlot;
  try {
    slot->work = HostArray::allocate(size_t(std::max<int64_t>(rows * cols, 1)) * 8);
  } catch (...) {
    delete slot;
    throw;
  }
  slot->rows = rows;
  slot->cols = cols;
  slot->tr = rows > cols;
  slot->sign = maximize ? -1.0 : 1.0;
  // Reported to V8 until the handle is collected (lapRun and lapFree free the buffer itself earlier).
  return owned_external(info.Env(), slot, std::max<int64_t>(rows * cols, 1) * 8, kLapTag);
}

template <typename T>
void lap_copy(LapSlot& s, const T* src, int64_t row0, int64_t nrows, const std::string& name) {
  double* w = s.work->as<double>();
  const int64_t cols = s.cols, m = s.tr ? s.rows : s.cols;
  for (int64_t r = 0; r < nrows; ++r) {
    const int64_t i = row0 + r;
    for (int64_t j = 0; j < cols; ++j) {
      const double v = double(src[r * cols + j]);
      if (!std::isfinite(v) || std::fabs(v) > 1e300) {
        const std::string got = std::isnan(v) ? "NaN" : (std::isinf(v) ? (v > 0 ? "Infinity" : "-Infinity") : fmt(v));
        const std::string at = fmt(name, "[", i * cols + j, "]");
        // Reduced costs are differences of costs: near the float64 maximum they overflow.
        if (!std::isfinite(v)) throw Error(ErrorCode::NonFinite, fmt("Expected finite number for ", at, " but received ", got, " (number)"));
        throw Error(ErrorCode::Arg, fmt("Expected a number of magnitude at most 1e300 for ", at, " but received ", got, " (number)"));
      }
      if (!s.tr) w[i * m + j] = s.sign * v;
      else w[j * m + i] = s.sign * v;
    }
  }
}

Napi::Value lap_append(const Napi::CallbackInfo& info) {
  LapSlot* s = lap_of(info[0]);
  const Napi::Value& v = info[1];
  std::string name = info[3].IsString() ? info[3].As<Napi::String>().Utf8Value() : std::string("cost");
  if (!v.IsTypedArray()) arg_error(ErrorCode::DType, name, "a Float32Array or Float64Array", v);
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  const napi_typedarray_type type = ta.TypedArrayType();
  if (type != napi_float32_array && type != napi_float64_array) arg_error(ErrorCode::DType, name, "a Float32Array or Float64Array", v);
  int64_t row0 = get_int(info[2], "rowStart", s->filled, s->filled);
  const int64_t len = int64_t(ta.ElementLength());
  if (s->cols == 0 ? len != 0 : (len % s->cols != 0 || row0 + len / s->cols > s->rows))
    throw Error(ErrorCode::Shape, fmt("Expected a chunk of whole rows of ", name, " (a multiple of cols = ", s->cols, ", at most ",
                                      (s->rows - row0) * s->cols, " values) but received length ", len));
  const int64_t nrows = s->cols == 0 ? 0 : len / s->cols;
  if (nrows > 0) {
    try {
      if (type == napi_float32_array) lap_copy(*s, reinterpret_cast<const float*>(typed_array_data(ta)), row0, nrows, name);
      else lap_copy(*s, reinterpret_cast<const double*>(typed_array_data(ta)), row0, nrows, name);
    } catch (...) {
      s->work.reset();  // a refused value ends the lap: its rows x cols buffer is freed now, not at a GC
      throw;
    }
  }
  s->filled = row0 + nrows;
  return Napi::Number::New(info.Env(), double(s->filled));
}

// lapFree(lap): frees the lap's buffer now (a caller that gives up before lapRun); idempotent.
Napi::Value lap_free(const Napi::CallbackInfo& info) {
  LapSlot* s = tagged_external_data<LapSlot>(info[0], kLapTag, "lap", "a linear assignment from lapCreate");
  if (s) s->work.reset();
  return info.Env().Undefined();
}

Napi::Value lap_run(const Napi::CallbackInfo& info) {
  LapSlot* s = lap_of(info[0]);
  if (s->filled != s->rows && s->cols > 0)
    throw Error(ErrorCode::Shape, fmt("Expected all ", s->rows, " rows of the cost before lapRun but received ", s->filled));
  auto work_cost = std::move(s->work);
  const bool tr = s->tr;
  const int64_t rows = s->rows, n = tr ? s->cols : s->rows, m = tr ? s->rows : s->cols;
  auto out = HostArray::allocate(size_t(std::max<int64_t>(rows, 1)) * 4);
  auto work = [work_cost, out, n, m, rows, tr] {
    int32_t* r2c = out->as<int32_t>();
    if (n == 0) {
      std::fill(r2c, r2c + rows, -1);
      return;
    }
    std::vector<int32_t> col4row(static_cast<size_t>(n));
    cpu::linear_assignment(work_cost->as<double>(), n, m, col4row.data());
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
  exports.Set("sparseCorrFree", Napi::Function::New<guarded<free_store>>(env, "sparseCorrFree"));
  exports.Set("lapCreate", Napi::Function::New<guarded<lap_create>>(env, "lapCreate"));
  exports.Set("lapAppend", Napi::Function::New<guarded<lap_append>>(env, "lapAppend"));
  exports.Set("lapRun", Napi::Function::New<guarded<lap_run>>(env, "lapRun"));
  exports.Set("lapFree", Napi::Function::New<guarded<lap_free>>(env, "lapFree"));
}

}  // namespace sk::napi
