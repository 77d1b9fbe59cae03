#include "buffers.h"

#include "args.h"

#include <cstdlib>
#include <cstring>

#include "../core/error.h"

namespace sk::napi {

std::shared_ptr<HostArray> HostArray::allocate(size_t bytes) {
  void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
  if (p == nullptr) throw Error(ErrorCode::Memory, fmt("could not allocate ", bytes, " bytes of host memory"));
  return std::shared_ptr<HostArray>(new HostArray(p, bytes));
}

HostArray::~HostArray() { std::free(p_); }

Napi::Value HostArray::to_js(Napi::Env env, napi_typedarray_type type, size_t length) {
  void* p = p_;
  p_ = nullptr;
  napi_value ab;
  napi_status s = napi_create_external_arraybuffer(
      env, p, bytes_, [](napi_env, void* data, void*) { std::free(data); }, nullptr, &ab);
  if (s != napi_ok) {
    // Runtimes with a V8 sandbox (Electron) forbid external buffers: copy instead.
    void* copy = nullptr;
    s = napi_create_arraybuffer(env, bytes_, &copy, &ab);
    if (s != napi_ok) {
      std::free(p);
      throw Napi::Error::New(env, "saekit: could not allocate an ArrayBuffer for the result");
    }
    if (bytes_) std::memcpy(copy, p, bytes_);
    std::free(p);
  }
  napi_value arr;
  if (napi_create_typedarray(env, type, length, ab, 0, &arr) != napi_ok)
    throw Napi::Error::New(env, "saekit: could not create the result TypedArray");
  return Napi::Value(env, arr);
}

std::shared_ptr<HostArray> copy_typed_array(const Napi::TypedArray& a) {
  size_t bytes = a.ByteLength();
  auto h = HostArray::allocate(bytes);
  if (bytes) std::memcpy(h->data(), typed_array_data(a), bytes);
  return h;
}

}  // namespace sk::napi
