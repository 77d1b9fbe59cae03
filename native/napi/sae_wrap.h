// NativeSae / NativeAdam: JS handles of a TopK SAE and its Adam optimiser (lib/sae/ wraps them).
#pragma once
#include <napi.h>

namespace sk::napi {

void register_sae(Napi::Env env, Napi::Object exports);

}  // namespace sk::napi
