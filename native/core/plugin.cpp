#include "plugin.h"

#include <dlfcn.h>
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

namespace sk {

namespace {

bool file_exists(const std::string& p) {
  struct stat sb;
  return ::stat(p.c_str(), &sb) == 0 && S_ISREG(sb.st_mode);
}

PluginProbe probe_uncached(const std::vector<std::string>& candidates) {
  PluginProbe probe;
  if (const char* env = std::getenv("SAEKIT_CUDA"); env && std::strcmp(env, "0") == 0) {
    probe.reason = "disabled by SAEKIT_CUDA=0";
    return probe;
  }
  for (const std::string& path : candidates) {
    if (!file_exists(path)) {
      probe.attempts.push_back({path, "not found"});
      continue;
    }
    void* h = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) {
      const char* e = ::dlerror();
      probe.attempts.push_back({path, fmt("dlopen failed: ", e ? e : "unknown error")});
      continue;
    }
    auto version = reinterpret_cast<int (*)()>(::dlsym(h, "sk_plugin_api_version"));
    auto score = reinterpret_cast<int (*)(char*, size_t)>(::dlsym(h, "sk_backend_score"));
    if (version == nullptr || score == nullptr) {
      probe.attempts.push_back({path, "missing symbol sk_plugin_api_version or sk_backend_score (not a saekit plugin?)"});
      continue;  // keep the handle: unloading libraries with CUDA state is unsafe
    }
    if (version() != SK_BACKEND_API_VERSION) {
      probe.attempts.push_back({path, fmt("incompatible API version (plugin: ", version(), ", saekit: ",
                                          SK_BACKEND_API_VERSION, "); rebuild it with `npm run build:cuda`")});
      continue;
    }
    char reason[512] = {0};
    int s = score(reason, sizeof(reason));
    if (s <= 0) {
      probe.attempts.push_back({path, reason[0] ? reason : "the plugin reports it cannot run here"});
      continue;
    }
    probe.attempts.push_back({path, "loaded"});
    probe.available = true;
    probe.handle = h;
    probe.devices = s;
    return probe;
  }
  // The most useful reason: the last real failure, or "not built".
  for (auto it = probe.attempts.rbegin(); it != probe.attempts.rend(); ++it)
    if (it->outcome != "not found") {
      probe.reason = it->outcome;
      return probe;
    }
  probe.reason = "the CUDA plugin is not built (run `npm run build:cuda` on a machine with nvcc)";
  return probe;
}

}  // namespace

PluginProbe probe_plugin(const std::vector<std::string>& candidates) {
  static std::mutex mu;
  static std::map<std::vector<std::string>, PluginProbe> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(candidates);
  if (it != cache.end()) return it->second;
  PluginProbe p = probe_uncached(candidates);
  cache[candidates] = p;
  return p;
}

bool plugin_backend(const PluginProbe& probe, int device, sk_backend* out, std::string* reason) {
  if (!probe.available || probe.handle == nullptr) {
    *reason = probe.reason;
    return false;
  }
  using InitDevice = int (*)(int, sk_backend*, sk_status*);
  using Init = int (*)(sk_backend*, sk_status*);
  auto init_device = reinterpret_cast<InitDevice>(::dlsym(probe.handle, "sk_backend_init_device"));
  auto init = reinterpret_cast<Init>(::dlsym(probe.handle, "sk_backend_init"));
  if (init_device == nullptr && (init == nullptr || device != 0)) {
    *reason = init == nullptr ? std::string("the CUDA plugin has no backend table (missing sk_backend_init_device); "
                                            "rebuild it with `npm run build:cuda`")
                              : fmt("the CUDA plugin serves tensors on cuda:0 only (it predates "
                                    "sk_backend_init_device); rebuild it with `npm run build:cuda`");
    return false;
  }
  sk_status st{};
  sk_backend b{nullptr, nullptr};
  const int rc = init_device ? init_device(device, &b, &st) : init(&b, &st);
  if (rc != 0 || b.iface == nullptr) {
    *reason = st.code ? std::string(st.message) : std::string("the CUDA plugin's backend init returned no table");
    return false;
  }
  if (b.iface->api_version != SK_BACKEND_API_VERSION) {
    *reason = fmt("the CUDA plugin's backend table has API version ", b.iface->api_version, " (saekit: ",
                  SK_BACKEND_API_VERSION, "); rebuild it with `npm run build:cuda`");
    return false;
  }
  *out = b;
  return true;
}

PeerCopyFn plugin_peer_copy(const PluginProbe& probe) {
  if (!probe.available || probe.handle == nullptr) return nullptr;
  return reinterpret_cast<PeerCopyFn>(::dlsym(probe.handle, "sk_backend_copy_peer"));
}

const ::sk_sae_i* plugin_sae_api(const PluginProbe& probe, std::string* reason) {
  if (!probe.available || probe.handle == nullptr) {
    *reason = probe.reason;
    return nullptr;
  }
  auto get = reinterpret_cast<const ::sk_sae_i* (*)(int)>(::dlsym(probe.handle, "sk_sae_api"));
  if (get == nullptr) {
    *reason = "the CUDA plugin has no SAE kernels (missing sk_sae_api); rebuild it with `npm run build:cuda`";
    return nullptr;
  }
  const ::sk_sae_i* api = get(SK_SAE_API_VERSION);
  if (api == nullptr || api->api_version != SK_SAE_API_VERSION) {
    *reason = fmt("the CUDA plugin speaks another SAE API version (saekit: ", SK_SAE_API_VERSION,
                  "); rebuild it with `npm run build:cuda`");
    return nullptr;
  }
  return api;
}

const ::sk_corr_i* plugin_corr_api(const PluginProbe& probe, std::string* reason) {
  if (!probe.available || probe.handle == nullptr) {
    *reason = probe.reason;
    return nullptr;
  }
  auto get = reinterpret_cast<const ::sk_corr_i* (*)(int)>(::dlsym(probe.handle, "sk_corr_api"));
  if (get == nullptr) {
    *reason = "the CUDA plugin has no sparse correlation kernels (missing sk_corr_api); rebuild it with `npm run build:cuda`";
    return nullptr;
  }
  const ::sk_corr_i* api = get(SK_CORR_API_VERSION);
  if (api == nullptr || api->api_version != SK_CORR_API_VERSION) {
    *reason = fmt("the CUDA plugin speaks another sparse correlation API version (saekit: ", SK_CORR_API_VERSION,
                  "); rebuild it with `npm run build:cuda`");
    return nullptr;
  }
  return api;
}

}  // namespace sk
