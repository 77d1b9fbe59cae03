// Feature-comparison bindings: the sparse code correlation (cpu/sparse_corr.h) and exact linear
// assignment (cpu/lap.h), both run as queued jobs (lib/features, lib/eval wrap them).
#pragma once
#include <napi.h>

namespace sk::napi {

void register_features(Napi::Env env, Napi::Object exports);

}  // namespace sk::napi
