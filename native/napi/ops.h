// The op bindings: tensor creation, conversion, matmul and internal test/bench hooks.
#pragma once
#include <napi.h>

namespace sk::napi {

void register_ops(Napi::Env env, Napi::Object exports);

}  // namespace sk::napi
