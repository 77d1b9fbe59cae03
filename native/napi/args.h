// Argument checks at the N-API boundary. The TypeScript layer validates first and gives the
// friendliest messages; these checks make sure that nothing reaching native code unchecked
// can crash the process. Messages follow "Expected <what> for <name> but received <actual>".
#pragma once
#include <napi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "../core/dtype.h"
#include "../core/error.h"

namespace sk::napi {

std::string describe(const Napi::Value& v);  // "3 (number)", "a string", "undefined", ...
[[noreturn]] void arg_error(ErrorCode code, const std::string& name, const std::string& expected,
                            const Napi::Value& actual);

int64_t get_int(const Napi::Value& v, const std::string& name, int64_t lo, int64_t hi);
bool get_bool(const Napi::Value& v, const std::string& name);
double get_double(const Napi::Value& v, const std::string& name, double lo, double hi);  // finite, in [lo, hi]
uint64_t get_u64(const Napi::Value& v, const std::string& name);  // number (safe integer) or bigint
DType get_dtype(const Napi::Value& v, const std::string& name);
std::vector<int64_t> get_shape(const Napi::Value& v, const std::string& name);
std::string get_string(const Napi::Value& v, const std::string& name);

// The TypedArray kind that holds a dtype's raw values.
napi_typedarray_type typedarray_type_for(DType t);

// The first byte of a TypedArray's elements (byte offset included), for arrays over an
// ArrayBuffer or a SharedArrayBuffer alike (TypedArray::ArrayBuffer().Data() fails for the
// latter). Null for an empty array.
uint8_t* typed_array_data(const Napi::TypedArray& a);

// Opaque handles: an External carrying a T, type-tagged so that another kind of External passed
// in its place is refused (an Arg error naming `name`), never reinterpreted.
template <typename T, typename Finalizer>
Napi::External<T> tagged_external(Napi::Env env, T* data, Finalizer finalize, const napi_type_tag& tag) {
  auto ext = Napi::External<T>::New(env, data, std::move(finalize));
  if (napi_type_tag_object(env, ext, &tag) != napi_ok) throw Error(ErrorCode::Internal, "napi_type_tag_object failed");
  return ext;
}
// A tagged External that owns `data` (deleted when the External is collected) and reports its
// `bytes` of native memory to V8 until then, so that handles dropped without being freed weigh
// on the collector as the memory they hold.
template <typename T>
Napi::External<T> owned_external(Napi::Env env, T* data, int64_t bytes, const napi_type_tag& tag) {
  auto ext = tagged_external(
      env, data,
      [bytes](Napi::Env e, T* p) {
        delete p;
        if (bytes) Napi::MemoryManagement::AdjustExternalMemory(e, -bytes);
      },
      tag);
  if (bytes) Napi::MemoryManagement::AdjustExternalMemory(env, bytes);
  return ext;
}
// The receiver of an ObjectWrap accessor, checked. V8 gives the accessors napi_define_class
// makes no signature (its methods get one, and throw "Illegal invocation" on another receiver),
// and node-addon-api's getter wrapper napi_unwrap()s whatever wrapped object `this` is: a getter
// taken off one class's prototype and called on an instance of another class would read that
// instance's memory as its own (a NativeTensor's nbytes on a NativeSae crashed). Every accessor
// calls this first, before it touches a member. Throws a TypeError unless info.This() carries `tag`.
inline void check_receiver(const Napi::CallbackInfo& info, const napi_type_tag& tag) {
  bool ok = false;
  if (napi_check_object_type_tag(info.Env(), info.This(), &tag, &ok) != napi_ok || !ok)
    throw Napi::TypeError::New(info.Env(), "Illegal invocation");
}

template <typename T>
T* tagged_external_data(const Napi::Value& v, const napi_type_tag& tag, const char* name, const char* what) {
  bool ok = false;
  if (!v.IsExternal() || napi_check_object_type_tag(v.Env(), v, &tag, &ok) != napi_ok || !ok)
    arg_error(ErrorCode::Arg, name, what, v);
  return v.As<Napi::External<T>>().Data();
}

}  // namespace sk::napi
