// Loading a backend plugin (the CUDA backend is a separate shared library, built by
// CMakeLists.txt, so a machine without CUDA never fails to load saekit).
//
// Plugin C ABI (every symbol extern "C"):
//   int  sk_plugin_api_version(void);                  must equal SK_BACKEND_API_VERSION
//   int  sk_backend_score(char* reason, size_t len);  0 = unusable here, with the reason
//   int  sk_backend_init_device(int device, sk_backend* out, sk_status* st);
//        fills the backend table (backend.h) of CUDA device `device` (the N of cuda:N). Each
//        device has its own context (stream, cuBLAS handle), created on the first call for that
//        device and kept for the process; every slot makes that device current before its work,
//        so one thread may call the tables of several devices in any order. Memory from one
//        device's alloc must only be passed to the same device's slots. Non-zero with `st`
//        filled (ERR_SAEKIT_DEVICE) for an index out of range or a device that cannot run.
//   int  sk_backend_copy_peer(int dst_device, void* dst, int src_device, const void* src,
//                             size_t bytes, sk_status* st);      (optional)
//        copies between the memory of two devices' tables (direct peer DMA where the hardware
//        allows it), complete when it returns; without it saekit copies through host memory
//   int  sk_backend_init(sk_backend* out, sk_status* st);
//        the same for device 0 (the first version of the ABI; optional when the above exists)
//   const sk_sae_i* sk_sae_api(int version);          the device SAE table (sae_device.h)
#pragma once
#include <string>
#include <vector>

#include "backend.h"
#include "corr_device.h"
#include "sae_device.h"

namespace sk {

struct PluginAttempt {
  std::string path;
  std::string outcome;  // "loaded", or why not
};

struct PluginProbe {
  bool available = false;
  std::string reason;  // why it is not available (empty when it is)
  std::vector<PluginAttempt> attempts;
  void* handle = nullptr;  // the loaded plugin (dlopen handle) when available
  int devices = 0;         // sk_backend_score's device count
};

// Tries each candidate path in order and keeps every attempt's outcome. Loads (dlopen) and
// scores the plugin, but does not initialise it. The result is cached per path list.
PluginProbe probe_plugin(const std::vector<std::string>& candidates);

// The backend table (backend.h) of device `device` of a loaded plugin, through its
// sk_backend_init_device (or, for device 0 of an older plugin, sk_backend_init): true and `out`
// filled, or false with `reason` set (not loaded, no such symbol, or the init failed).
bool plugin_backend(const PluginProbe& probe, int device, sk_backend* out, std::string* reason);

// Copies between two devices' memory (sk_backend_copy_peer): 0, or non-zero with `st` filled.
using PeerCopyFn = int (*)(int dst_device, void* dst, int src_device, const void* src, size_t bytes, sk_status* st);
// The plugin's peer copy, or null when it has none (older builds: copy through host memory).
PeerCopyFn plugin_peer_copy(const PluginProbe& probe);

// The device SAE table (sae_device.h) of a loaded plugin, or null with `reason` set.
const ::sk_sae_i* plugin_sae_api(const PluginProbe& probe, std::string* reason);

// The sparse-code correlation table (corr_device.h) of a loaded plugin, or null with `reason` set.
const ::sk_corr_i* plugin_corr_api(const PluginProbe& probe, std::string* reason);

}  // namespace sk
