// Host buffers that a job fills off the JS thread and then hands to JS without a copy (an
// external ArrayBuffer; a copy where the runtime forbids external buffers, e.g. Electron).
#pragma once
#include <napi.h>

#include <cstddef>
#include <memory>

namespace sk::napi {

class HostArray {
 public:
  // 64-byte aligned; throws ERR_SAEKIT_MEMORY.
  static std::shared_ptr<HostArray> allocate(size_t bytes);
  ~HostArray();
  void* data() { return p_; }
  template <typename T> T* as() { return static_cast<T*>(p_); }
  size_t bytes() const { return bytes_; }
  // A TypedArray over the buffer; the buffer then belongs to JS (this object is left empty).
  // Throws ERR_SAEKIT_MEMORY for a length past the runtime's longest typed array.
  Napi::Value to_js(Napi::Env env, napi_typedarray_type type, size_t length);
  // The buffer as an ArrayBuffer (which may be longer than any typed array: JS views it in pieces);
  // it then belongs to JS.
  napi_value to_arraybuffer(Napi::Env env);

 private:
  HostArray(void* p, size_t bytes) : p_(p), bytes_(bytes) {}
  void* p_;
  size_t bytes_;
};

// Wraps `data` (`bytes` long) in an external ArrayBuffer; `fin(env, data, hint)` runs once it is
// collected. Returns nullptr where the runtime refuses one: runtimes with a V8 sandbox (Electron)
// forbid external buffers, and Node 20 refuses any over 4 GiB (buffer.constants.MAX_LENGTH),
// calling the finalizer at once and leaving an exception pending. On nullptr `data` is still the
// caller's (`fin` has not freed it and never will) and no exception is pending.
// `fin` may run on any thread, after its env is gone, with env nullptr (see HostUse): it must only
// free memory.
napi_value external_arraybuffer(napi_env env, void* data, size_t bytes, napi_finalize fin, void* hint);

// Keeps the memory of a typed array alive while a job off the JS thread reads or writes it, even
// past its ArrayBuffer's finalizer: env teardown (a worker ending or terminated) frees external
// buffers in cleanup hooks that run before the env's own teardown waits for its jobs, and a
// finalizer that runs while a HostUse of its memory exists is deferred until the last one is
// destroyed (on the job's thread). Create it on the JS thread while the array is referenced;
// destroy it once the job no longer touches the memory. Costs a lock and a map entry.
class HostUse {
 public:
  explicit HostUse(const Napi::TypedArray& a);
  ~HostUse();
  HostUse(const HostUse&) = delete;
  HostUse& operator=(const HostUse&) = delete;

 private:
  const void* base_;  // the ArrayBuffer's data: what external_arraybuffer's finalizer is given
};

// A copy of a Float32Array's contents in native memory (for jobs that read it off-thread).
std::shared_ptr<HostArray> copy_typed_array(const Napi::TypedArray& a);

}  // namespace sk::napi
