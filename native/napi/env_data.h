// Per-env (main thread or worker_thread) state of the addon: the one napi instance-data slot.
#pragma once
#include <napi.h>

#include <memory>

namespace sk::napi {

struct DispatchState;  // async.cpp

struct EnvData {
  std::shared_ptr<DispatchState> dispatch;
  Napi::FunctionReference tensor_ctor;
  Napi::FunctionReference sae_ctor;
  Napi::FunctionReference adam_ctor;
};

// Throws if the addon was not initialised in this env.
EnvData& env_data(Napi::Env env);

}  // namespace sk::napi
