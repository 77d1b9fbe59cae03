#include "buffers.h"

#include "args.h"

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "../core/aligned_memory.h"
#include "../core/error.h"

namespace sk::napi {

std::shared_ptr<HostArray> HostArray::allocate(size_t bytes) {
  void* p = aligned_malloc(64, (bytes + 63) / 64 * 64 + 64);
  if (p == nullptr) throw Error(ErrorCode::Memory, fmt("could not allocate ", bytes, " bytes of host memory"));
  return std::shared_ptr<HostArray>(new HostArray(p, bytes));
}

HostArray::~HostArray() { aligned_free(p_); }

namespace {

// external_arraybuffer's finalizer: the real one and its hint, or, while the buffer is being
// created, a note that the runtime refused it (Node 20 calls the finalizer then, synchronously).
struct ExternalFin {
  napi_finalize fin;
  void* hint;
};
thread_local void* t_creating = nullptr;
thread_local bool t_refused = false;

// Memory that jobs are using (HostUse), by ArrayBuffer data pointer: how many uses, and the
// finalizer deferred until the last one ends. Never destroyed (as the I/O pool): an I/O job still
// running when the process exits ends its HostUse after exit() has run the static destructors.
struct InUse {
  int uses = 0;
  ExternalFin* deferred = nullptr;
};
std::mutex g_use_mu;
std::unordered_map<const void*, InUse>& g_in_use = *new std::unordered_map<const void*, InUse>;

void external_fin(napi_env env, void* data, void* hint) {
  auto* f = static_cast<ExternalFin*>(hint);
  if (data != nullptr && data == t_creating) {  // refused during creation: the data stays the caller's
    t_refused = true;
    delete f;
    return;
  }
  {
    std::lock_guard<std::mutex> lock(g_use_mu);
    auto it = g_in_use.find(data);
    if (it != g_in_use.end()) {  // a job still uses the memory: the last HostUse frees it
      it->second.deferred = f;
      return;
    }
  }
  napi_finalize fin = f->fin;
  void* h = f->hint;
  delete f;
  fin(env, data, h);
}

}  // namespace

napi_value external_arraybuffer(napi_env env, void* data, size_t bytes, napi_finalize fin, void* hint) {
  auto* f = new ExternalFin{fin, hint};
  t_creating = data;
  t_refused = false;
  napi_value ab = nullptr;
  napi_status s = napi_create_external_arraybuffer(env, data, bytes, external_fin, f, &ab);
  t_creating = nullptr;
  if (s == napi_ok && !t_refused) return ab;
  if (!t_refused) delete f;  // refused without calling the finalizer (no external buffers at all)
  t_refused = false;
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
    napi_value ignored;
    napi_get_and_clear_last_exception(env, &ignored);
  }
  return nullptr;
}

HostUse::HostUse(const Napi::TypedArray& a) {
  void* data = nullptr;
  size_t offset = 0;
  if (napi_get_typedarray_info(a.Env(), a, nullptr, nullptr, &data, nullptr, &offset) != napi_ok)
    throw Error(ErrorCode::Arg, "could not read a TypedArray's memory");
  base_ = static_cast<const uint8_t*>(data) - offset;
  std::lock_guard<std::mutex> lock(g_use_mu);
  ++g_in_use[base_].uses;
}

HostUse::~HostUse() {
  ExternalFin* deferred = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_use_mu);
    auto it = g_in_use.find(base_);
    if (it == g_in_use.end() || --it->second.uses > 0) return;
    deferred = it->second.deferred;
    g_in_use.erase(it);
  }
  if (deferred != nullptr) {
    napi_finalize fin = deferred->fin;
    void* hint = deferred->hint;
    delete deferred;
    fin(nullptr, const_cast<void*>(base_), hint);
  }
}

Napi::Value HostArray::to_js(Napi::Env env, napi_typedarray_type type, size_t length) {
  napi_value ab = to_arraybuffer(env);
  napi_value arr;
  if (napi_create_typedarray(env, type, length, ab, 0, &arr) != napi_ok) {
    bool pending = false;
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
      napi_value ignored;
      napi_get_and_clear_last_exception(env, &ignored);
    }
    throw Error(ErrorCode::Memory, fmt("a result of ", length, " elements is longer than the longest typed array this runtime makes",
                                       " (2^32 elements on Node 20)"));
  }
  return Napi::Value(env, arr);
}

napi_value HostArray::to_arraybuffer(Napi::Env env) {
  void* p = p_;
  p_ = nullptr;
  napi_value ab = external_arraybuffer(env, p, bytes_, [](napi_env, void* data, void*) { aligned_free(data); }, nullptr);
  if (ab == nullptr) {
    // No external buffer here (a V8 sandbox, or over Node 20's 4 GiB limit): copy instead.
    void* copy = nullptr;
    napi_status s = napi_create_arraybuffer(env, bytes_, &copy, &ab);
    if (s != napi_ok) {
      aligned_free(p);
      bool pending = false;
      if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
        napi_value ignored;
        napi_get_and_clear_last_exception(env, &ignored);
      }
      throw Error(ErrorCode::Memory, fmt("could not allocate an ArrayBuffer of ", bytes_, " bytes for the result"));
    }
    if (bytes_) std::memcpy(copy, p, bytes_);
    aligned_free(p);
  }
  return ab;
}

std::shared_ptr<HostArray> copy_typed_array(const Napi::TypedArray& a) {
  size_t bytes = a.ByteLength();
  auto h = HostArray::allocate(bytes);
  if (bytes) std::memcpy(h->data(), typed_array_data(a), bytes);
  return h;
}

}  // namespace sk::napi
