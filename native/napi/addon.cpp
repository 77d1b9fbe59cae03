// saekit.node: module init and the backend-level bindings (info, threads, plugin probe).
#include <napi.h>

#include <atomic>

#include "../core/cpu_features.h"
#include "../core/executor.h"
#include "../core/plugin.h"
#include "../cpu/blas.h"
#include "../cpu/cpu_backend.h"
#include "../cpu/sae_topk.h"
#include "../cpu/spectrum.h"
#include "args.h"
#include "async.h"
#include "env_data.h"
#include "device.h"
#include "features_wrap.h"
#include "io_read.h"
#include "ops.h"
#include "sae_wrap.h"
#include "spectrum_wrap.h"
#include "tensor_wrap.h"

namespace sk::napi {

EnvData& env_data(Napi::Env env) {
  auto* d = env.GetInstanceData<EnvData>();
  if (d == nullptr) throw Error(ErrorCode::Internal, "saekit is not initialised in this thread");
  return *d;
}

namespace {

// The thread count the next op will run with (set from any JS thread, applied on the executor).
std::atomic<int> g_threads{0};

// info(pluginCandidates: string[]): everything backend.info() reports.
Napi::Value backend_info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("backend", "cpu");
  o.Set("threads", g_threads.load());
  o.Set("hardwareThreads", hardware_threads());
  o.Set("simd", simd_level_name(simd_level()));
  const CpuFeatures& f = cpu_features();
  Napi::Array feats = Napi::Array::New(env);
  uint32_t i = 0;
  for (auto [name, on] : {std::pair<const char*, bool>{"sse4.2", f.sse42}, {"avx", f.avx}, {"avx2", f.avx2},
                          {"fma", f.fma}, {"avx512f", f.avx512f}, {"avx512bw", f.avx512bw}, {"avx512vl", f.avx512vl},
                          {"avx512dq", f.avx512dq}})
    if (on) feats.Set(i++, name);
  o.Set("cpuFeatures", feats);
  const cpu::BlasInfo& b = cpu::blas_info();
  Napi::Object blas = Napi::Object::New(env);
  blas.Set("name", b.name);
  blas.Set("version", b.version);
  if (!b.coretype.empty()) blas.Set("coretype", b.coretype);
  if (!b.config.empty()) blas.Set("config", b.config);
  blas.Set("linked", b.linked);
  if (!b.reason.empty()) blas.Set("reason", b.reason);
  blas.Set("eigen", cpu::eigen_solver_name());
  o.Set("blas", blas);

  std::vector<std::string> candidates;
  if (info[0].IsArray()) {
    Napi::Array a = info[0].As<Napi::Array>();
    for (uint32_t k = 0; k < a.Length() && k < 16; ++k) candidates.push_back(get_string(a.Get(k), "pluginCandidates[]"));
  }
  PluginProbe p = probe_plugin(candidates);
  const DeviceApi& dev = device_api(candidates);
  Napi::Object cuda = Napi::Object::New(env);
  cuda.Set("available", dev.api != nullptr);
  cuda.Set("reason", dev.api ? "" : dev.reason);
  cuda.Set("loopback", dev.kind == "loopback");
  Napi::Array names = Napi::Array::New(env);
  for (uint32_t k = 0; k < dev.names.size(); ++k) names.Set(k, dev.names[k]);
  cuda.Set("devices", names);
  Napi::Array attempts = Napi::Array::New(env);
  for (uint32_t k = 0; k < p.attempts.size(); ++k) {
    Napi::Object a = Napi::Object::New(env);
    a.Set("path", p.attempts[k].path);
    a.Set("outcome", p.attempts[k].outcome);
    attempts.Set(k, a);
  }
  cuda.Set("attempts", attempts);
  o.Set("cuda", cuda);
  o.Set("napiVersion", NAPI_VERSION);
  cpu::EncoderTiling tiling = cpu::encoder_tiling();
  Napi::Object tile = Napi::Object::New(env);
  tile.Set("bytes", double(tiling.bytes));
  tile.Set("rows", double(tiling.rows));
  o.Set("encoderTile", tile);
  return o;
}

// setThreads(n): applies before the next queued op; returns the previous count.
Napi::Value set_threads(const Napi::CallbackInfo& info) {
  int n = int(get_int(info[0], "threads", 1, 1024));
  int prev = g_threads.exchange(n);
  executor_submit([n] {
    try {
      Backend(cpu::cpu_backend()).set_threads(n);
    } catch (...) {
      // validated above; nothing to report
    }
  });
  return Napi::Number::New(info.Env(), prev);
}

// stats(): queue counters.
Napi::Value stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExecutorStats s = executor_stats();
  Napi::Object o = Napi::Object::New(env);
  o.Set("submitted", double(s.submitted));
  o.Set("completed", double(s.completed));
  o.Set("pendingInThisThread", double(pending_jobs(env)));
  return o;
}

// _noteExitCode(code): the status the process is exiting with (lib/native registers it from the
// process 'exit' event), for the executor's exit drain.
Napi::Value note_exit_code(const Napi::CallbackInfo& info) {
  if (info[0].IsNumber()) executor_note_exit_code(info[0].As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

void free_env_data(Napi::Env, EnvData* d) {
  close_dispatcher(d->dispatch);
  d->tensor_ctor.Reset();
  d->sae_ctor.Reset();
  d->adam_ctor.Reset();
  delete d;
}

}  // namespace

Napi::Object init(Napi::Env env, Napi::Object exports) {
  pin_library();  // before any thread of the addon starts (an env that only reads starts the I/O pool)
  auto* data = new EnvData();
  data->dispatch = open_dispatcher(env);
  Napi::Function ctor = NativeTensor::define(env);
  data->tensor_ctor = Napi::Persistent(ctor);
  env.SetInstanceData<EnvData, free_env_data>(data);
  if (g_threads.load() == 0) g_threads.store(cpu::cpu_threads());
  exports.Set("NativeTensor", ctor);
  exports.Set("info", Napi::Function::New<guarded<backend_info>>(env, "info"));
  exports.Set("setThreads", Napi::Function::New<guarded<set_threads>>(env, "setThreads"));
  exports.Set("stats", Napi::Function::New<guarded<stats>>(env, "stats"));
  exports.Set("_noteExitCode", Napi::Function::New<guarded<note_exit_code>>(env, "_noteExitCode"));
  register_ops(env, exports);
  register_sae(env, exports);
  register_io(env, exports);
  register_features(env, exports);
  register_spectrum(env, exports);
  return exports;
}

}  // namespace sk::napi

static Napi::Object InitSaekit(Napi::Env env, Napi::Object exports) { return sk::napi::init(env, exports); }

NODE_API_MODULE(saekit, InitSaekit)
