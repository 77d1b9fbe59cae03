#include "device.h"

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include "../core/error.h"
#include "../core/plugin.h"
#include "../cpu/corr_loopback.h"
#include "../cpu/cpu_backend.h"
#include "../cpu/sae_loopback.h"

namespace sk::napi {

namespace {
std::mutex g_mu;
const DeviceApi* g_current = nullptr;

DeviceApi resolve(const std::vector<std::string>& candidates) {
  DeviceApi d;
  const char* lb = std::getenv("SAEKIT_DEVICE_LOOPBACK");
  if (lb && std::strcmp(lb, "1") == 0) {
    d.api = cpu::loopback_sae_api();  // SAEKIT_DEVICE_LOOPBACK_DEVICES devices (default 1)
    d.kind = "loopback";
    d.peer_copy = cpu::loopback_copy_peer;
  } else {
    d.probe = probe_plugin(candidates);
    d.api = plugin_sae_api(d.probe, &d.reason);
    d.kind = "cuda";
    d.peer_copy = plugin_peer_copy(d.probe);
  }
  if (!d.api) return d;
  sk_status st{};
  int count = 0;
  if (d.api->device_count(&st, &count) != 0 || count <= 0) {
    d.reason = st.code ? utf8_whole(st.message, sizeof(st.message)) : "no CUDA device found";
    d.api = nullptr;
    return d;
  }
  for (int i = 0; i < count; ++i) {
    char name[256] = {0};
    sk_status s2{};
    if (d.api->device_name(&s2, i, name, sizeof(name)) != 0) std::snprintf(name, sizeof(name), "device %d", i);
    d.names.push_back(utf8_whole(name, sizeof(name)));
  }
  return d;
}
}  // namespace

const DeviceApi& device_api(const std::vector<std::string>& candidates) {
  // Never destroyed, as `tables` below: ops on the executor (step_rows -> backend_for) read them
  // until the executor's exit drain runs, after static destructors registered later have run.
  static auto& cache = *new std::map<std::vector<std::string>, DeviceApi>;
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = cache.find(candidates);
  if (it == cache.end()) it = cache.emplace(candidates, resolve(candidates)).first;
  // The first plugin that works serves the process from then on: its device tensors must keep
  // reaching it. A later resolution under other candidates (SAEKIT_CUDA_PLUGIN changed, or a
  // relative path after process.chdir) is reported by backend.info() but no longer takes the
  // existing tensors away from their plugin. Until one works, the latest resolution gives the reason.
  if (g_current == nullptr || g_current->api == nullptr) g_current = &it->second;
  return it->second;
}

const DeviceApi& current_device_api() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_current == nullptr || g_current->api == nullptr)
    throw Error(ErrorCode::Device, g_current ? fmt("no CUDA device: ", g_current->reason)
                                             : std::string("no CUDA device has been resolved (call backend.info() first)"));
  return *g_current;
}

Backend backend_for(const Device& device) {
  if (device.kind == DeviceKind::CPU) return Backend(cpu::cpu_backend());
  const DeviceApi& dev = current_device_api();
  if (device.index < 0 || device.index >= int(dev.names.size()))
    throw Error(ErrorCode::Device, fmt("Expected a device between cuda:0 and cuda:", int(dev.names.size()) - 1,
                                       " but received ", device.name()));
  if (dev.kind == "loopback") return Backend(cpu::loopback_backend(device.index));
  // One table per (resolved plugin, device index), initialised on the device's first tensor.
  static std::mutex mu;
  static auto& tables = *new std::map<std::pair<const DeviceApi*, int>, sk_backend>;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(&dev, device.index);
  auto it = tables.find(key);
  if (it != tables.end()) return Backend(it->second);
  sk_backend b{nullptr, nullptr};
  std::string reason;
  if (!plugin_backend(dev.probe, device.index, &b, &reason))
    throw Error(ErrorCode::Device, fmt("no CUDA backend table for ", device.name(), ": ", reason));
  tables.emplace(key, b);
  return Backend(b);
}

PeerCopyFn peer_copy_for(const Device& from, const Device& to) {
  if (from.kind != DeviceKind::CUDA || to.kind != DeviceKind::CUDA) return nullptr;
  const char* env = std::getenv("SAEKIT_DEVICE_PEER_COPY");
  if (env && std::strcmp(env, "0") == 0) return nullptr;
  return current_device_api().peer_copy;
}

const sk_corr_i* corr_api_for(const Device& device) {
  if (device.kind == DeviceKind::CPU) throw Error(ErrorCode::Internal, "corr_api_for: the CPU runs the kernel directly");
  const DeviceApi& dev = current_device_api();
  if (device.index < 0 || device.index >= int(dev.names.size()))
    throw Error(ErrorCode::Device, fmt("Expected a device between cuda:0 and cuda:", int(dev.names.size()) - 1,
                                       " but received ", device.name()));
  if (dev.kind == "loopback") return cpu::loopback_corr_api();
  std::string reason;
  const sk_corr_i* api = plugin_corr_api(dev.probe, &reason);
  if (api == nullptr) throw Error(ErrorCode::Device, fmt("no sparse correlation on ", device.name(), ": ", reason));
  return api;
}

}  // namespace sk::napi
