#include "ops.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>

#include "../core/backend.h"
#include "../core/philox.h"
#include "../cpu/blas.h"
#include "../cpu/cpu_backend.h"
#include "../cpu/convert.h"
#include "../cpu/gemm_builtin.h"
#include "args.h"
#include "async.h"
#include "device.h"
#include "tensor_wrap.h"

namespace sk::napi {

namespace {

Backend cpu() { return Backend(cpu::cpu_backend()); }

// The optional device argument: 'cpu' (also when absent) or 'cuda:N', as lib/ resolved it.
Device get_device(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || info[i].IsUndefined()) return {};
  return parse_device(get_string(info[i], "device"));
}

// The dtype whose raw values a TypedArray holds, checked against what the caller declared.
void check_typed_array(const Napi::Value& v, DType raw, const std::string& name) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != typedarray_type_for(raw)) {
    const char* want = raw == DType::F32 ? "a Float32Array" : raw == DType::I32 ? "an Int32Array" : "a Uint16Array";
    arg_error(ErrorCode::DType, name, want, v);
  }
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  if (ta.ElementLength() != 0 && typed_array_data(ta) == nullptr) arg_error(ErrorCode::Arg, name, "an attached buffer", v);
}

// fromArray(data, shape, rawDtype, dtype, device?): copies `data` (raw values of rawDtype) into a
// new tensor; converts natively (queued) when dtype differs. On a device the raw values are
// uploaded (queued) and converted there.
Napi::Value from_array(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DType raw = get_dtype(info[2], "rawDtype");
  DType dt = get_dtype(info[3], "dtype");
  check_typed_array(info[0], raw, "data");
  std::vector<int64_t> shape = get_shape(info[1], "shape");
  Device device = get_device(info, 4);
  Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
  int64_t n = shape_numel(shape, "shape");
  if (int64_t(ta.ElementLength()) != n)
    throw Error(ErrorCode::Shape, fmt("Expected data of length ", n, " for shape ", shape_str(shape),
                                      " but received length ", ta.ElementLength()));
  Backend be = backend_for(device);
  Tensor src = Tensor::empty(raw, shape);
  if (n) std::memcpy(src.storage->data(), typed_array_data(ta), src.nbytes());
  if (device.kind == DeviceKind::CPU) {
    if (raw == dt) return NativeTensor::wrap(env, src);
    Tensor dst = Tensor::empty(dt, shape);
    queue_detached(env, [src, dst, n] { cpu().convert(dst.storage->data(), dst.dtype, src.storage->data(), src.dtype, n); });
    return NativeTensor::wrap(env, dst);
  }
  Tensor dst = be.empty(dt, shape, device);
  Tensor staged = raw == dt ? dst : be.empty(raw, shape, device);
  queue_detached(env, [src, staged, dst, be, n]() mutable {
    if (n == 0) return;
    be.upload(staged.storage->data(), src.storage->data(), src.nbytes());
    if (staged.storage != dst.storage)
      be.convert(dst.storage->data(), dst.dtype, staged.storage->data(), staged.dtype, n);
  });
  return NativeTensor::wrap(env, dst);
}

// zeros(shape, dtype, device?): on a device, zeros uploaded from the host (queued).
Napi::Value zeros(const Napi::CallbackInfo& info) {
  std::vector<int64_t> shape = get_shape(info[0], "shape");
  shape_numel(shape, "shape");  // a product past the limit is named as the caller's argument
  DType dt = get_dtype(info[1], "dtype");
  Device device = get_device(info, 2);
  if (device.kind == DeviceKind::CPU) {
    Tensor t = Tensor::empty(dt, shape);
    queue_detached(info.Env(), [t] { std::memset(t.storage->data(), 0, t.nbytes()); });
    return NativeTensor::wrap(info.Env(), t);
  }
  Backend be = backend_for(device);
  Tensor t = be.empty(dt, shape, device);
  queue_detached(info.Env(), [t, be]() mutable {
    size_t bytes = t.nbytes();
    if (bytes == 0) return;
    std::unique_ptr<uint8_t[]> host(new uint8_t[bytes]());
    be.upload(t.storage->data(), host.get(), bytes);
  });
  return NativeTensor::wrap(info.Env(), t);
}

// random(shape, dtype, kind: 'uniform' | 'normal', seed, stream, device?): the same Philox stream
// on every device (core/philox.h).
Napi::Value random_fill(const Napi::CallbackInfo& info) {
  std::vector<int64_t> shape = get_shape(info[0], "shape");
  shape_numel(shape, "shape");
  DType dt = get_dtype(info[1], "dtype");
  if (dt == DType::I32) arg_error(ErrorCode::DType, "dtype", "one of: float32, bfloat16, float16", info[1]);
  std::string kind = get_string(info[2], "kind");
  if (kind != "uniform" && kind != "normal") arg_error(ErrorCode::Arg, "kind", "one of: uniform, normal", info[2]);
  uint64_t seed = get_u64(info[3], "seed");
  uint64_t stream = get_u64(info[4], "stream");
  Device device = get_device(info, 5);
  Backend be = backend_for(device);
  Tensor t = be.empty(dt, shape, device);
  bool normal = kind == "normal";
  queue_detached(info.Env(), [t, be, normal, seed, stream]() mutable {
    int64_t n = t.numel();
    if (normal) be.fill_normal(t.storage->data(), t.dtype, n, seed, stream, 0);
    else be.fill_uniform(t.storage->data(), t.dtype, n, seed, stream, 0);
  });
  return NativeTensor::wrap(info.Env(), t);
}

// matmul(a, b, transA, transB): Promise<NativeTensor>, float32 2-D.
Napi::Value matmul(const Napi::CallbackInfo& info) {
  Tensor a = NativeTensor::unwrap(info[0], "a");
  Tensor b = NativeTensor::unwrap(info[1], "b");
  bool ta = get_bool(info[2], "transA");
  bool tb = get_bool(info[3], "transB");
  for (const auto* p : {&a, &b}) {
    const char* name = p == &a ? "a" : "b";
    if (p->dtype != DType::F32)
      throw Error(ErrorCode::DType, fmt("Expected a float32 tensor for ", name, " but received ", dtype_name(p->dtype)));
    if (p->shape.size() != 2)
      throw Error(ErrorCode::Shape, fmt("Expected a 2-D tensor for ", name, " but received shape ", shape_str(p->shape)));
  }
  int64_t M = ta ? a.shape[1] : a.shape[0], K = ta ? a.shape[0] : a.shape[1];
  int64_t Kb = tb ? b.shape[1] : b.shape[0], N = tb ? b.shape[0] : b.shape[1];
  if (K != Kb)
    throw Error(ErrorCode::Shape, fmt("matmul: inner dimensions differ: op(a) is [", M, ", ", K, "] and op(b) is [", Kb,
                                      ", ", N, "] (a ", shape_str(a.shape), (ta ? " transposed" : ""), ", b ",
                                      shape_str(b.shape), (tb ? " transposed" : ""), ")"));
  Device device = a.device();
  if (b.device() != device)
    throw Error(ErrorCode::Device, fmt("matmul: Expected a and b on one device but a is on ", device.name(),
                                       " and b is on ", b.device().name()));
  Tensor c;
  bool have_out = info.Length() > 4 && !info[4].IsUndefined() && !info[4].IsNull();
  if (have_out) {
    c = NativeTensor::unwrap(info[4], "out");
    if (c.dtype != DType::F32 || c.shape != std::vector<int64_t>{M, N})
      throw Error(ErrorCode::Shape, fmt("Expected a float32 tensor of shape [", M, ", ", N, "] for out but received ",
                                        dtype_name(c.dtype), " ", shape_str(c.shape)));
    if (c.storage == a.storage || c.storage == b.storage)
      throw Error(ErrorCode::Arg, "Expected out to be a different tensor from a and b (it is written while they are read)");
    if (c.device() != device)
      throw Error(ErrorCode::Device, fmt("matmul: Expected out on ", device.name(), " (as a and b) but it is on ",
                                         c.device().name()));
  }
  Backend be = backend_for(device);
  if (!have_out) c = be.empty(DType::F32, {M, N}, device);
  auto work = [a, b, c, be, ta, tb, M, N, K]() mutable {
    be.gemm_f32(ta, tb, M, N, K, 1.0f, a.data<float>(), std::max<int64_t>(1, a.shape[1]), b.data<float>(),
                   std::max<int64_t>(1, b.shape[1]), 0.0f, c.data<float>(), std::max<int64_t>(1, N));
  };
  if (have_out) {
    return queue_job(info.Env(), std::move(work), nullptr);
  }
  return queue_job(info.Env(), std::move(work), [c](Napi::Env env) -> Napi::Value { return NativeTensor::wrap(env, c); });
}

// _philox(counter: Uint32Array(4), key: Uint32Array(2)): Uint32Array(4). For known-answer tests.
Napi::Value philox(const Napi::CallbackInfo& info) {
  auto get = [&](int i, size_t len, const char* name) {
    if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array ||
        info[i].As<Napi::TypedArray>().ElementLength() != len)
      arg_error(ErrorCode::Arg, name, fmt("a Uint32Array of length ", len), info[i]);
    return info[i].As<Napi::Uint32Array>();
  };
  Napi::Uint32Array c = get(0, 4, "counter"), k = get(1, 2, "key");
  Philox4x32 in{{c[0], c[1], c[2], c[3]}};
  Philox4x32 out = philox4x32_10(in, k[0], k[1]);
  Napi::Uint32Array r = Napi::Uint32Array::New(info.Env(), 4);
  for (int i = 0; i < 4; ++i) r[i] = out.v[i];
  return r;
}

// _gemmDirect(impl: 'blas' | 'builtin', transA, transB, M, N, K, A, B, C, alpha = 1, beta = 0): synchronous, on the
// calling thread, straight into the GEMM with no tensors or queue. For bench/ only.
Napi::Value gemm_direct(const Napi::CallbackInfo& info) {
  std::string impl = get_string(info[0], "impl");
  bool ta = get_bool(info[1], "transA"), tb = get_bool(info[2], "transB");
  int64_t M = get_int(info[3], "M", 1, 1 << 20), N = get_int(info[4], "N", 1, 1 << 20), K = get_int(info[5], "K", 1, 1 << 20);
  auto arr = [&](int i, int64_t len, const char* name) {
    if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array ||
        int64_t(info[i].As<Napi::TypedArray>().ElementLength()) != len)
      arg_error(ErrorCode::Arg, name, fmt("a Float32Array of length ", len), info[i]);
    return info[i].As<Napi::Float32Array>().Data();
  };
  float* A = arr(6, M * K, "A");
  float* B = arr(7, K * N, "B");
  float* C = arr(8, M * N, "C");
  int64_t lda = ta ? M : K, ldb = tb ? K : N;
  // Optional alpha and beta (default 1 and 0): C = alpha * op(A) op(B) + beta * C, as BLAS.
  auto scalar = [&](size_t i, const char* name, float dflt) {
    return info.Length() > i && !info[i].IsUndefined() ? float(get_double(info[i], name, -3.4e38, 3.4e38)) : dflt;
  };
  const float alpha = scalar(9, "alpha", 1.0f), beta = scalar(10, "beta", 0.0f);
  if (impl == "blas") {
    if (!cpu::blas_info().linked) throw Error(ErrorCode::Device, "this build has no CBLAS library");
    cpu::blas_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, N);
  } else if (impl == "builtin") {
    // The backend pool belongs to the executor thread; this synchronous path gets its own, one per
    // JS thread: ThreadPool::run is not re-entrant, and workers may call this at the same time (a
    // shared pool hung, crashed or returned wrong products).
    thread_local std::unique_ptr<ThreadPool> pool;
    if (!pool || pool->size() != cpu::cpu_threads()) pool = std::make_unique<ThreadPool>(cpu::cpu_threads());
    cpu::gemm_builtin_f32(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, N, *pool);
  } else {
    arg_error(ErrorCode::Arg, "impl", "one of: blas, builtin", info[0]);
  }
  return info.Env().Undefined();
}

// convertInto(src, srcDtype, dst, dstDtype): synchronous element conversion between typed
// arrays on the calling thread (single-threaded: for data loaders converting one batch).
// float16/bfloat16 are raw Uint16Array bits. Lengths must match.
Napi::Value convert_into(const Napi::CallbackInfo& info) {
  DType st = get_dtype(info[1], "srcDtype");
  DType dt = get_dtype(info[3], "dstDtype");
  check_typed_array(info[0], st, "src");
  check_typed_array(info[2], dt, "dst");
  Napi::TypedArray src = info[0].As<Napi::TypedArray>(), dst = info[2].As<Napi::TypedArray>();
  if (src.ElementLength() != dst.ElementLength())
    throw Error(ErrorCode::Shape, fmt("Expected dst of length ", src.ElementLength(), " (as src) but received length ",
                                      dst.ElementLength()));
  const void* sp = typed_array_data(src);
  void* dp = typed_array_data(dst);
  cpu::convert(dp, dt, sp, st, int64_t(src.ElementLength()), nullptr);
  return info.Env().Undefined();
}

// anyNonFinite(a: Float32Array, start, end): true when a[start, end) holds a NaN or an infinity.
Napi::Value any_non_finite(const Napi::CallbackInfo& info) {
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    arg_error(ErrorCode::Arg, "a", "a Float32Array", info[0]);
  Napi::Float32Array a = info[0].As<Napi::Float32Array>();
  int64_t n = int64_t(a.ElementLength());
  int64_t start = get_int(info[1], "start", 0, n), end = get_int(info[2], "end", start, n);
  return Napi::Boolean::New(info.Env(), cpu::convert_kernels().any_non_finite_f32(a.Data() + start, end - start));
}

// _poolFault(threads, tasks, kind, out): test hook for the thread pool's error path, which no
// kernel takes on purpose (a task's scratch allocation failing does). Runs `tasks` tasks of about
// 0.2 ms each on a new pool of `threads` threads; every task counts itself and then throws (kind
// 'memory': std::bad_alloc; 'format': a coded saekit error; otherwise std::runtime_error). Sets
// out.ran (tasks that ran before the pool returned) and out.again (tasks of a second, clean run
// on the same pool), then rethrows what the first run threw.
Napi::Value pool_fault(const Napi::CallbackInfo& info) {
  const int threads = int(get_int(info[0], "threads", 1, 64));
  const int tasks = int(get_int(info[1], "tasks", 1, 4096));
  const std::string kind = get_string(info[2], "kind");
  if (!info[3].IsObject()) arg_error(ErrorCode::Arg, "out", "an object", info[3]);
  Napi::Object out = info[3].As<Napi::Object>();
  ThreadPool pool(threads);
  std::atomic<int> ran{0};
  std::exception_ptr err;
  try {
    pool.run(tasks, [&](int t) {
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
      while (std::chrono::steady_clock::now() < until) {
      }
      ran.fetch_add(1);
      if (kind == "memory") throw std::bad_alloc();
      if (kind == "format") throw Error(ErrorCode::Format, fmt("task ", t, " failed"));
      throw std::runtime_error(fmt("task ", t, " failed"));
    });
  } catch (...) {
    err = std::current_exception();
  }
  out.Set("ran", Napi::Number::New(info.Env(), ran.load()));
  std::atomic<int> again{0};
  pool.run(tasks, [&](int) { again.fetch_add(1); });
  out.Set("again", Napi::Number::New(info.Env(), again.load()));
  if (err) std::rethrow_exception(err);
  return info.Env().Undefined();
}

}  // namespace

void register_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("fromArray", Napi::Function::New<guarded<from_array>>(env, "fromArray"));
  exports.Set("zeros", Napi::Function::New<guarded<zeros>>(env, "zeros"));
  exports.Set("random", Napi::Function::New<guarded<random_fill>>(env, "random"));
  exports.Set("matmul", Napi::Function::New<guarded<matmul>>(env, "matmul"));
  exports.Set("anyNonFinite", Napi::Function::New<guarded<any_non_finite>>(env, "anyNonFinite"));
  exports.Set("convertInto", Napi::Function::New<guarded<convert_into>>(env, "convertInto"));
  exports.Set("_philox", Napi::Function::New<guarded<philox>>(env, "_philox"));
  exports.Set("_gemmDirect", Napi::Function::New<guarded<gemm_direct>>(env, "_gemmDirect"));
  exports.Set("_poolFault", Napi::Function::New<guarded<pool_fault>>(env, "_poolFault"));
}

}  // namespace sk::napi
