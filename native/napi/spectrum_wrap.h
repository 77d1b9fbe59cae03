// Decoder spectrum bindings (cpu/spectrum.h): inputs are staged in native memory in pieces (the
// JS side copies a large W_dec a few MiB at a time, between turns of the event loop), then one
// queued job screens them, forms the covariance and solves for the eigenvalues.
#pragma once
#include <napi.h>

namespace sk::napi {

void register_spectrum(Napi::Env env, Napi::Object exports);

}  // namespace sk::napi
