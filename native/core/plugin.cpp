#include "plugin.h"

#include <dlfcn.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "elf_check.h"

namespace sk {

namespace {

// The plugin's reason for a score of 0. The ABI has no length query, so sk_backend_score is
// asked again with a larger buffer while its reason fills the one given (it is cheap and says
// the same each time); the text is never cut inside a UTF-8 sequence.
std::string score_reason(int (*score)(char*, size_t), int* s) {
  std::vector<char> reason(4096);
  for (;;) {
    std::fill(reason.begin(), reason.end(), '\0');
    *s = score(reason.data(), reason.size());
    reason.back() = '\0';
    if (*s > 0 || std::strlen(reason.data()) + 1 < reason.size() || reason.size() >= (size_t(1) << 20)) break;
    reason.resize(reason.size() * 8);
  }
  return utf8_whole(reason.data(), reason.size());
}

PluginProbe probe_uncached(const std::vector<std::string>& candidates) {
  PluginProbe probe;
  if (const char* env = std::getenv("SAEKIT_CUDA"); env && std::strcmp(env, "0") == 0) {
    probe.reason = "disabled by SAEKIT_CUDA=0";
    return probe;
  }
  for (const std::string& path : candidates) {
    struct stat sb;
    if (::stat(path.c_str(), &sb) != 0) {
      probe.attempts.push_back({path, "not found"});
      continue;
    }
    if (!S_ISREG(sb.st_mode)) {
      probe.attempts.push_back({path, fmt(path, " is not a file", S_ISDIR(sb.st_mode) ? " (a folder)" : "")});
      continue;
    }
    // A file shorter than its segments would kill the process with SIGBUS inside dlopen.
    if (std::string why = elf_damage(path); !why.empty()) {
      probe.attempts.push_back({path, fmt(path, " ", why, "; rebuild it with `npm run build:cuda` in saekit's folder")});
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
                                          SK_BACKEND_API_VERSION, "); rebuild it with `npm run build:cuda` in saekit's folder")});
      continue;
    }
    int s = 0;
    const std::string reason = score_reason(score, &s);
    if (s <= 0) {
      probe.attempts.push_back({path, reason.empty() ? "the plugin reports it cannot run here" : reason});
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
  probe.reason = "the CUDA plugin is not built (run `npm run build:cuda` in saekit's folder, e.g. node_modules/saekit, on a machine with nvcc)";
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
                                            "rebuild it with `npm run build:cuda` in saekit's folder")
                              : fmt("the CUDA plugin serves tensors on cuda:0 only (it predates "
                                    "sk_backend_init_device); rebuild it with `npm run build:cuda` in saekit's folder");
    return false;
  }
  sk_status st{};
  sk_backend b{nullptr, nullptr};
  const int rc = init_device ? init_device(device, &b, &st) : init(&b, &st);
  if (rc != 0 || b.iface == nullptr) {
    *reason = st.code ? utf8_whole(st.message, sizeof(st.message)) : std::string("the CUDA plugin's backend init returned no table");
    return false;
  }
  if (b.iface->api_version != SK_BACKEND_API_VERSION) {
    *reason = fmt("the CUDA plugin's backend table has API version ", b.iface->api_version, " (saekit: ",
                  SK_BACKEND_API_VERSION, "); rebuild it with `npm run build:cuda` in saekit's folder");
    return false;
  }
  *out = b;
  return true;
}

PeerCopyFn plugin_peer_copy(const PluginProbe& probe) {
  if (!probe.available || probe.handle == nullptr) return nullptr;
  return reinterpret_cast<PeerCopyFn>(::dlsym(probe.handle, "sk_backend_copy_peer"));
}

namespace {
// A versioned C table exported as `const Table* symbol(int version)`, or null with `reason` set
// (plugin not loaded, symbol missing, or another version). `what` names the kernels in messages ("SAE").
template <typename Table>
const Table* plugin_table(const PluginProbe& probe, const char* symbol, int version, const char* what,
                          std::string* reason) {
  if (!probe.available || probe.handle == nullptr) {
    *reason = probe.reason;
    return nullptr;
  }
  auto get = reinterpret_cast<const Table* (*)(int)>(::dlsym(probe.handle, symbol));
  if (get == nullptr) {
    *reason = fmt("the CUDA plugin has no ", what, " kernels (missing ", symbol, "); rebuild it with `npm run build:cuda` in saekit's folder");
    return nullptr;
  }
  const Table* api = get(version);
  if (api == nullptr || api->api_version != version) {
    *reason = fmt("the CUDA plugin speaks another ", what, " API version (saekit: ", version,
                  "); rebuild it with `npm run build:cuda` in saekit's folder");
    return nullptr;
  }
  return api;
}
}  // namespace

const ::sk_sae_i* plugin_sae_api(const PluginProbe& probe, std::string* reason) {
  return plugin_table<::sk_sae_i>(probe, "sk_sae_api", SK_SAE_API_VERSION, "SAE", reason);
}

const ::sk_corr_i* plugin_corr_api(const PluginProbe& probe, std::string* reason) {
  return plugin_table<::sk_corr_i>(probe, "sk_corr_api", SK_CORR_API_VERSION, "sparse correlation", reason);
}

}  // namespace sk
