// The accelerator the SAE and tensor ops can run on: the CUDA plugin's device SAE table and
// backend table, or the loopback (SAEKIT_DEVICE_LOOPBACK=1: the CPU kernels behind the same
// tables, for tests).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "../core/backend.h"
#include "../core/corr_device.h"
#include "../core/plugin.h"
#include "../core/sae_device.h"
#include "../core/tensor.h"

namespace sk::napi {

struct DeviceApi {
  const sk_sae_i* api = nullptr;  // null: no device; `reason` says why
  std::string kind;               // "cuda" or "loopback"
  std::string reason;
  std::vector<std::string> names;  // one per device
  PluginProbe probe;               // the loaded plugin (kind "cuda")
  PeerCopyFn peer_copy = nullptr;  // copies between two devices' memory; null: through the host
};

// Resolves (once per candidate list) and remembers the device table.
const DeviceApi& device_api(const std::vector<std::string>& plugin_candidates);
// The first table that resolved with a working device (later resolutions under other candidates
// do not replace it: device tensors keep reaching their plugin), else the one resolved last;
// throws ERR_SAEKIT_DEVICE if it has no device.
const DeviceApi& current_device_api();

// The backend table that runs tensor ops on `device`: the CPU backend for the CPU; for cuda:N,
// device N's table of the resolved device (the plugin's sk_backend_init_device(N), called once
// per device on its first tensor: it creates that device's stream and cuBLAS handle; the
// loopback: loopback device N's table, the CPU kernels with allocations tagged by device).
// Throws ERR_SAEKIT_DEVICE naming the valid range for an index out of range, or the reason
// when the device has no table.
Backend backend_for(const Device& device);

// The copy between devices `from` and `to` (two CUDA devices of the resolved table) when it has
// one and SAEKIT_DEVICE_PEER_COPY is not "0" (read on each call); null: copy through host memory.
PeerCopyFn peer_copy_for(const Device& from, const Device& to);

// The sparse-code correlation table (core/corr_device.h) for a CUDA `device` of the resolved
// device: the plugin's sk_corr_api, or on the loopback the CPU kernel behind the table. Throws
// ERR_SAEKIT_DEVICE naming the device and the reason when there is none.
const sk_corr_i* corr_api_for(const Device& device);

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
