#include "device.h"

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include "../core/error.h"
#include "../core/plugin.h"
#include "../cpu/sae_loopback.h"

namespace sk::napi {

namespace {
std::mutex g_mu;
const DeviceApi* g_current = nullptr;

DeviceApi resolve(const std::vector<std::string>& candidates) {
  DeviceApi d;
  const char* lb = std::getenv("SAEKIT_DEVICE_LOOPBACK");
  if (lb && std::strcmp(lb, "1") == 0) {
    d.api = cpu::loopback_sae_api();
    d.kind = "loopback";
  } else {
    PluginProbe p = probe_plugin(candidates);
    d.api = plugin_sae_api(p, &d.reason);
    d.kind = "cuda";
  }
  if (!d.api) return d;
  sk_status st{};
  int count = 0;
  if (d.api->device_count(&st, &count) != 0 || count <= 0) {
    d.reason = st.code ? std::string(st.message) : "no CUDA device found";
    d.api = nullptr;
    return d;
  }
  for (int i = 0; i < count; ++i) {
    char name[256] = {0};
    sk_status s2{};
    if (d.api->device_name(&s2, i, name, sizeof(name)) != 0) std::snprintf(name, sizeof(name), "device %d", i);
    d.names.emplace_back(name);
  }
  return d;
}
}  // namespace

const DeviceApi& device_api(const std::vector<std::string>& candidates) {
  static std::map<std::vector<std::string>, DeviceApi> cache;
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = cache.find(candidates);
  if (it == cache.end()) it = cache.emplace(candidates, resolve(candidates)).first;
  g_current = &it->second;
  return it->second;
}

const DeviceApi& current_device_api() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_current == nullptr || g_current->api == nullptr)
    throw Error(ErrorCode::Device, g_current ? fmt("no CUDA device: ", g_current->reason)
                                             : std::string("no CUDA device has been resolved (call backend.info() first)"));
  return *g_current;
}

}  // namespace sk::napi
