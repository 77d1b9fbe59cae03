// NativeTensor: the JS handle of an sk::Tensor. lib/tensor/ wraps it in the public Tensor class;
// this object only checks, enqueues and reports.
#pragma once
#include <napi.h>

#include <string>

#include "../core/tensor.h"

namespace sk::napi {

class NativeTensor : public Napi::ObjectWrap<NativeTensor> {
 public:
  static Napi::Function define(Napi::Env env);
  // A new JS handle owning `t` (its bytes are reported to V8 as external memory).
  static Napi::Object wrap(Napi::Env env, Tensor t);
  // The live tensor behind `v`; throws ERR_SAEKIT_ARG if `v` is not a NativeTensor and
  // ERR_SAEKIT_DISPOSED if it was disposed.
  static Tensor& unwrap(const Napi::Value& v, const std::string& name);
  // For ops that read the values on the host: `t` itself on the CPU; for a tensor on a device,
  // a host copy whose download is queued now, so every op queued after it reads the values.
  static Tensor on_host(Napi::Env env, const Tensor& t);

  explicit NativeTensor(const Napi::CallbackInfo& info);
  ~NativeTensor() override;

 private:
  Napi::Value dtype(const Napi::CallbackInfo& info);
  Napi::Value shape(const Napi::CallbackInfo& info);
  Napi::Value device(const Napi::CallbackInfo& info);
  Napi::Value nbytes(const Napi::CallbackInfo& info);
  Napi::Value disposed(const Napi::CallbackInfo& info);
  Napi::Value dispose(const Napi::CallbackInfo& info);
  Napi::Value to_array(const Napi::CallbackInfo& info);
  Napi::Value to_dtype(const Napi::CallbackInfo& info);
  Napi::Value to_device(const Napi::CallbackInfo& info);
  void release(Napi::Env env);

  Tensor t_;
  bool live_ = false;
  int64_t reported_ = 0;
};

}  // namespace sk::napi
