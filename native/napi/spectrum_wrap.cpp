#include "spectrum_wrap.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <string>

#include "../cpu/spectrum.h"
#include "args.h"
#include "async.h"
#include "buffers.h"

namespace sk::napi {

namespace {

// Native memory that JS fills piece by piece; a job takes it (one job per stage).
struct Stage {
  std::shared_ptr<HostArray> data;
  napi_typedarray_type type;
  int64_t length;
  int64_t written = 0;  // values written so far, in order (a job takes only a full stage)
};

constexpr int64_t kMaxStage = int64_t(1) << 32;  // elements

// Tags a stage's External, so another External (a correlation store, a prefetched batch) is
// refused, not misread as a stage.
const napi_type_tag kStageTag = {0x5ae1c5bec7a3e000ULL, 0x51a6e0e1f2c3d4b5ULL};

Stage* stage_of(const Napi::Value& v) {
  Stage* s = tagged_external_data<Stage>(v, kStageTag, "stage", "a spectrum stage");
  if (!s || !s->data) throw Error(ErrorCode::Disposed, "Expected a spectrum stage that no job has taken yet");
  return s;
}

cpu::EigenSolver get_solver(const Napi::Value& v) {
  if (v.IsString()) {
    const std::string s = v.As<Napi::String>().Utf8Value();
    if (s == "auto") return cpu::EigenSolver::Auto;
    if (s == "lapack") return cpu::EigenSolver::Lapack;
    if (s == "builtin") return cpu::EigenSolver::Builtin;
  }
  arg_error(ErrorCode::Arg, "solver", "one of: auto, lapack, builtin", v);
}

// A job reads every value of its stage: one not fully written would read uninitialised memory.
void require_full(const Stage& s) {
  if (s.written != s.length)
    throw Error(ErrorCode::Shape, fmt("Expected a fully written stage (", s.length, " values) but ", s.written, " were written"));
}

// spectrumStage(dtype: 'float32' | 'float64', length) -> stage
Napi::Value stage_create(const Napi::CallbackInfo& info) {
  const std::string dtype = get_string(info[0], "dtype");
  if (dtype != "float32" && dtype != "float64") arg_error(ErrorCode::Arg, "dtype", "one of: float32, float64", info[0]);
  const int64_t length = get_int(info[1], "length", 1, kMaxStage);
  const bool f64 = dtype == "float64";
  const int64_t bytes = length * (f64 ? 8 : 4);
  auto* s = new Stage{HostArray::allocate(size_t(bytes)), f64 ? napi_float64_array : napi_float32_array, length};
  // Reported to V8 until the handle is collected: an abandoned stage (a call that failed while
  // staging) then weighs on the GC as the memory it holds.
  return owned_external(info.Env(), s, bytes, kStageTag);
}

// spectrumStageWrite(stage, src: TypedArray of the stage's dtype, offset): copies src into
// stage[offset, offset + src.length), synchronously; offset must be the values written so far.
Napi::Value stage_write(const Napi::CallbackInfo& info) {
  Stage* s = stage_of(info[0]);
  const char* want = s->type == napi_float64_array ? "a Float64Array" : "a Float32Array";
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != s->type)
    arg_error(ErrorCode::DType, "src", want, info[1]);
  Napi::TypedArray src = info[1].As<Napi::TypedArray>();
  const int64_t len = int64_t(src.ElementLength());
  const int64_t offset = get_int(info[2], "offset", s->written, s->written);
  if (len > s->length - offset)
    throw Error(ErrorCode::Shape, fmt("Expected src of at most ", s->length - offset, " values at offset ", offset,
                                      " but received length ", len));
  if (len == 0) return info.Env().Undefined();
  const uint8_t* p = typed_array_data(src);
  if (p == nullptr) arg_error(ErrorCode::Arg, "src", "an attached buffer", info[1]);
  const size_t item = s->type == napi_float64_array ? 8 : 4;
  std::memcpy(s->data->as<uint8_t>() + size_t(offset) * item, p, size_t(len) * item);
  s->written = offset + len;
  return info.Env().Undefined();
}

// decoderSpectrum(stage: float32 [n, d], n, d, solver) -> Promise<Float64Array>: the eigenvalues
// of the column-centred covariance of the n rows, descending. Takes the stage.
Napi::Value decoder_spectrum(const Napi::CallbackInfo& info) {
  Stage* s = stage_of(info[0]);
  if (s->type != napi_float32_array) arg_error(ErrorCode::DType, "stage", "a float32 stage", info[0]);
  const int64_t n = get_int(info[1], "n", 2, kMaxStage), d = get_int(info[2], "d", 1, 65536);
  if (n * d != s->length) throw Error(ErrorCode::Shape, fmt("Expected a stage of n * d = ", n * d, " values but it holds ", s->length));
  require_full(*s);
  const cpu::EigenSolver solver = get_solver(info[3]);
  auto w = std::move(s->data);
  auto out = HostArray::allocate(size_t(d) * 8);
  auto work = [w, out, n, d, solver] {
    const float* W = w->as<float>();
    const int64_t bad = cpu::first_non_finite(W, n * d);
    if (bad >= 0) throw Error(ErrorCode::NonFinite, fmt("W_dec[", bad, "] is ", js_nonfinite(W[bad]), ": expected finite values"));
    auto cov = HostArray::allocate(size_t(d) * size_t(d) * 8);
    cpu::decoder_covariance(W, n, d, cov->as<double>());
    cpu::symmetric_eigenvalues(cov->as<double>(), d, out->as<double>(), solver);
  };
  return queue_job(info.Env(), work, [out, d](Napi::Env env) { return out->to_js(env, napi_float64_array, size_t(d)); });
}

// symmetricEigenvalues(stage: float64 [d, d], d, solver) -> Promise<Float64Array>: the
// eigenvalues of the symmetric part (A + A^T) / 2, descending. Takes the stage.
Napi::Value symmetric_eigenvalues(const Napi::CallbackInfo& info) {
  Stage* s = stage_of(info[0]);
  if (s->type != napi_float64_array) arg_error(ErrorCode::DType, "stage", "a float64 stage", info[0]);
  const int64_t d = get_int(info[1], "d", 1, 65536);
  if (d * d != s->length) throw Error(ErrorCode::Shape, fmt("Expected a stage of d * d = ", d * d, " values but it holds ", s->length));
  require_full(*s);
  const cpu::EigenSolver solver = get_solver(info[2]);
  auto a = std::move(s->data);
  auto out = HostArray::allocate(size_t(d) * 8);
  auto work = [a, out, d, solver] {
    double* m = a->as<double>();
    const int64_t bad = cpu::first_non_finite(m, d * d);
    if (bad >= 0) throw Error(ErrorCode::NonFinite, fmt("matrix[", bad, "] is ", js_nonfinite(m[bad]), ": expected finite values"));
    cpu::symmetrise(m, d);
    cpu::symmetric_eigenvalues(m, d, out->as<double>(), solver);
  };
  return queue_job(info.Env(), work, [out, d](Napi::Env env) { return out->to_js(env, napi_float64_array, size_t(d)); });
}

}  // namespace

void register_spectrum(Napi::Env env, Napi::Object exports) {
  exports.Set("spectrumStage", Napi::Function::New<guarded<stage_create>>(env, "spectrumStage"));
  exports.Set("spectrumStageWrite", Napi::Function::New<guarded<stage_write>>(env, "spectrumStageWrite"));
  exports.Set("decoderSpectrum", Napi::Function::New<guarded<decoder_spectrum>>(env, "decoderSpectrum"));
  exports.Set("symmetricEigenvalues", Napi::Function::New<guarded<symmetric_eigenvalues>>(env, "symmetricEigenvalues"));
}

}  // namespace sk::napi
