// Loading a backend plugin (the CUDA backend is a separate shared library, built by
// CMakeLists.txt, so a machine without CUDA never fails to load saekit).
//
// Plugin C ABI (every symbol extern "C"):
//   int  sk_plugin_api_version(void);                  must equal SK_BACKEND_API_VERSION
//   int  sk_backend_score(char* reason, size_t len);  0 = unusable here, with the reason
//   int  sk_backend_init(sk_backend* out, sk_status* st);  fills the backend table
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

// The backend table (backend.h) of a loaded plugin, through its sk_backend_init: true and `out`
// filled, or false with `reason` set (not loaded, no such symbol, or the init failed).
bool plugin_backend(const PluginProbe& probe, sk_backend* out, std::string* reason);

// The device SAE table (sae_device.h) of a loaded plugin, or null with `reason` set.
const ::sk_sae_i* plugin_sae_api(const PluginProbe& probe, std::string* reason);

// The sparse-code correlation table (corr_device.h) of a loaded plugin, or null with `reason` set.
const ::sk_corr_i* plugin_corr_api(const PluginProbe& probe, std::string* reason);

}  // namespace sk
