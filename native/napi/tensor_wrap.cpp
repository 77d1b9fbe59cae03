#include "tensor_wrap.h"

#include <cstdlib>
#include <cstring>
#include <memory>

#include "../cpu/cpu_backend.h"
#include "args.h"
#include "async.h"
#include "buffers.h"
#include "device.h"
#include "env_data.h"

namespace sk::napi {

namespace {

// Distinguishes our handles from any other object passed in (napi_type_tag_object).
const napi_type_tag kTensorTag = {0x5ae1c17e6a5f0a11ULL, 0x9d2c4b7e13a8f0d3ULL};

}  // namespace

Napi::Function NativeTensor::define(Napi::Env env) {
  return DefineClass(env, "NativeTensor",
                     {
                         InstanceAccessor<&NativeTensor::dtype>("dtype"),
                         InstanceAccessor<&NativeTensor::shape>("shape"),
                         InstanceAccessor<&NativeTensor::device>("device"),
                         InstanceAccessor<&NativeTensor::nbytes>("nbytes"),
                         InstanceAccessor<&NativeTensor::disposed>("disposed"),
                         InstanceMethod<&NativeTensor::dispose>("dispose"),
                         InstanceMethod<&NativeTensor::to_array>("toArray"),
                         InstanceMethod<&NativeTensor::to_dtype>("to"),
                         InstanceMethod<&NativeTensor::to_device>("toDevice"),
                     });
}

NativeTensor::NativeTensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeTensor>(info) {
  info.This().As<Napi::Object>().TypeTag(&kTensorTag);
}

NativeTensor::~NativeTensor() {
  if (live_ && reported_) Napi::MemoryManagement::AdjustExternalMemory(Env(), -reported_);
}

Napi::Object NativeTensor::wrap(Napi::Env env, Tensor t) {
  Napi::Object obj = env_data(env).tensor_ctor.New({});
  NativeTensor* self = NativeTensor::Unwrap(obj);
  // Device memory is reported to V8 as well as host memory: it is the collector that frees a
  // tensor the program dropped without dispose(), and with only a wrapper's few bytes on its heap
  // it would never run for them before the device ran out of memory.
  self->reported_ = int64_t(t.storage ? t.storage->bytes() : 0);
  self->t_ = std::move(t);
  self->live_ = true;
  if (self->reported_) Napi::MemoryManagement::AdjustExternalMemory(env, self->reported_);
  return obj;
}

Tensor& NativeTensor::unwrap(const Napi::Value& v, const std::string& name) {
  if (!v.IsObject() || !v.As<Napi::Object>().CheckTypeTag(&kTensorTag)) arg_error(ErrorCode::Arg, name, "a Tensor", v);
  NativeTensor* self = NativeTensor::Unwrap(v.As<Napi::Object>());
  if (!self->live_) throw Error(ErrorCode::Disposed, fmt(name, " is a disposed Tensor; it cannot be used any more"));
  return self->t_;
}

Tensor NativeTensor::on_host(Napi::Env env, const Tensor& t) {
  if (t.device().kind == DeviceKind::CPU) return t;
  Backend be = backend_for(t.device());
  Tensor host = Tensor::empty(t.dtype, t.shape);
  queue_detached(env, [t, host, be]() mutable {
    if (size_t bytes = t.nbytes()) be.download(host.storage->data(), t.storage->data(), bytes);
  });
  return host;
}

void NativeTensor::release(Napi::Env env) {
  if (!live_) return;
  live_ = false;
  if (reported_) Napi::MemoryManagement::AdjustExternalMemory(env, -reported_);
  reported_ = 0;
  t_.storage.reset();  // queued jobs that use it keep their own reference
}

Napi::Value NativeTensor::dtype(const Napi::CallbackInfo& info) {
  check_receiver(info, kTensorTag);
  return Napi::String::New(info.Env(), dtype_name(t_.dtype));
}

Napi::Value NativeTensor::shape(const Napi::CallbackInfo& info) {
  check_receiver(info, kTensorTag);
  Napi::Array a = Napi::Array::New(info.Env(), t_.shape.size());
  for (size_t i = 0; i < t_.shape.size(); ++i) a.Set(uint32_t(i), Napi::Number::New(info.Env(), double(t_.shape[i])));
  return a;
}

Napi::Value NativeTensor::device(const Napi::CallbackInfo& info) {
  check_receiver(info, kTensorTag);
  return Napi::String::New(info.Env(), t_.storage ? t_.storage->device().name() : "cpu");
}

Napi::Value NativeTensor::nbytes(const Napi::CallbackInfo& info) {
  check_receiver(info, kTensorTag);
  return Napi::Number::New(info.Env(), double(live_ ? t_.nbytes() : 0));
}

Napi::Value NativeTensor::disposed(const Napi::CallbackInfo& info) {
  check_receiver(info, kTensorTag);
  return Napi::Boolean::New(info.Env(), !live_);
}

Napi::Value NativeTensor::dispose(const Napi::CallbackInfo& info) {
  release(info.Env());
  return info.Env().Undefined();
}

// toArray(): Promise<TypedArray> with a copy of the raw values (bf16/f16 as Uint16Array),
// downloaded from the tensor's device.
Napi::Value NativeTensor::to_array(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&] {
    Tensor src = unwrap(info.This(), "tensor");
    Backend be = backend_for(src.device());
    size_t bytes = src.nbytes();
    auto out = HostArray::allocate(bytes);
    auto work = [src, be, out, bytes]() mutable {
      if (bytes) be.download(out->data(), src.storage->data(), bytes);
    };
    size_t n = size_t(src.numel());
    DType dt = src.dtype;
    auto complete = [out, n, dt](Napi::Env env) -> Napi::Value { return out->to_js(env, typedarray_type_for(dt), n); };
    return queue_job(info.Env(), std::move(work), std::move(complete));
  });
}

// to(dtype): Promise<NativeTensor> converted natively (round to nearest even), on the same device.
Napi::Value NativeTensor::to_dtype(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&] {
    Tensor src = unwrap(info.This(), "tensor");
    DType dt = get_dtype(info[0], "dtype");
    Backend be = backend_for(src.device());
    Tensor dst = be.empty(dt, src.shape, src.device());
    int64_t n = src.numel();
    auto work = [src, dst, be, n]() mutable { be.convert(dst.storage->data(), dst.dtype, src.storage->data(), src.dtype, n); };
    auto complete = [dst](Napi::Env env) -> Napi::Value { return wrap(env, dst); };
    return queue_job(info.Env(), std::move(work), std::move(complete));
  });
}

// toDevice(name: 'cpu' | 'cuda:N'): Promise<NativeTensor>, a copy of the values (same dtype) on
// that device: an upload, a download, a copy on one device (convert to the same dtype), or, between
// two devices (cuda:0 -> cuda:1), the plugin's peer copy (direct where the hardware allows) or,
// without one (or with SAEKIT_DEVICE_PEER_COPY=0), a download into host memory and an upload from
// it, each through its own device's table.
Napi::Value NativeTensor::to_device(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&] {
    Tensor src = unwrap(info.This(), "tensor");
    Device to = parse_device(get_string(info[0], "device"));
    Device from = src.device();
    Backend dst_be = backend_for(to);
    Backend src_be = backend_for(from);
    Tensor dst = dst_be.empty(src.dtype, src.shape, to);
    size_t bytes = src.nbytes();
    int64_t n = src.numel();
    PeerCopyFn peer = from != to ? peer_copy_for(from, to) : nullptr;
    auto work = [src, dst, src_be, dst_be, from, to, bytes, n, peer]() mutable {
      if (bytes == 0) return;
      if (from == to) {
        dst_be.convert(dst.storage->data(), dst.dtype, src.storage->data(), src.dtype, n);
      } else if (from.kind == DeviceKind::CPU) {
        dst_be.upload(dst.storage->data(), src.storage->data(), bytes);
      } else if (to.kind == DeviceKind::CPU) {
        src_be.download(dst.storage->data(), src.storage->data(), bytes);
      } else if (peer) {  // two devices: directly
        sk_status st{};
        status_throw(peer(to.index, dst.storage->data(), from.index, src.storage->data(), bytes, &st), st);
      } else {  // two devices: through the host
        Tensor host = Tensor::empty(src.dtype, src.shape);
        src_be.download(host.storage->data(), src.storage->data(), bytes);
        dst_be.upload(dst.storage->data(), host.storage->data(), bytes);
      }
    };
    auto complete = [dst](Napi::Env env) -> Napi::Value { return wrap(env, dst); };
    return queue_job(info.Env(), std::move(work), std::move(complete));
  });
}

}  // namespace sk::napi
