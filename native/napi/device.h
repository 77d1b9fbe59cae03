// The accelerator the SAE ops can run on: the CUDA plugin's device SAE table, or the loopback
// (SAEKIT_DEVICE_LOOPBACK=1: the CPU kernels behind the same table, for tests).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "../core/sae_device.h"

namespace sk::napi {

struct DeviceApi {
  const sk_sae_i* api = nullptr;  // null: no device; `reason` says why
  std::string kind;               // "cuda" or "loopback"
  std::string reason;
  std::vector<std::string> names;  // one per device
};

// Resolves (once per candidate list) and remembers the device table.
const DeviceApi& device_api(const std::vector<std::string>& plugin_candidates);
// The table resolved last (by backend.info()); throws ERR_SAEKIT_DEVICE if there is none.
const DeviceApi& current_device_api();

// One SAE on a device; destroyed with the last reference.
struct DeviceSae {
  const sk_sae_i* api = nullptr;
  sk_sae_dev* h = nullptr;
  int index = 0;
  int precision = SK_PREC_BF16;
  ~DeviceSae() {
    if (h) api->destroy(h);
  }
};

}  // namespace sk::napi
