// The CUDA backend plugin's entry points (C ABI, see native/core/plugin.h). This skeleton only
// answers "can CUDA run here?"; the kernels fill the Backend table in a later change.
#include <cuda_runtime.h>

#include <cstdio>

#include "core/backend.h"

#define SK_EXPORT extern "C" __attribute__((visibility("default")))

SK_EXPORT int sk_plugin_api_version(void) { return SK_BACKEND_API_VERSION; }

// > 0 when a usable device exists; otherwise 0 and a reason naming the missing piece.
SK_EXPORT int sk_backend_score(char* reason, size_t len) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err == cudaErrorInsufficientDriver) {
    std::snprintf(reason, len, "the NVIDIA driver is missing or older than this CUDA %d.%d build needs",
                  CUDART_VERSION / 1000, (CUDART_VERSION % 1000) / 10);
    return 0;
  }
  if (err == cudaErrorNoDevice || (err == cudaSuccess && count == 0)) {
    std::snprintf(reason, len, "no CUDA device found");
    return 0;
  }
  if (err != cudaSuccess) {
    std::snprintf(reason, len, "CUDA initialisation failed: %s", cudaGetErrorString(err));
    return 0;
  }
  return count;
}

SK_EXPORT int sk_backend_init(sk_backend* out, sk_status* st) {
  (void)out;
  st->code = int(sk::ErrorCode::Device) + 1;
  std::snprintf(st->message, sizeof(st->message), "the CUDA kernels are not in this saekit version yet");
  return 1;
}
