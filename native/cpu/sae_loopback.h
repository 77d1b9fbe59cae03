// The loopback device: the device SAE table (core/sae_device.h) implemented with the CPU
// kernels, so everything above the table (the N-API layer, device selection, the trainer) is
// exercised on machines without a GPU. Selected with SAEKIT_DEVICE_LOOPBACK=1 (tests); it
// reports SAEKIT_DEVICE_LOOPBACK_DEVICES devices (default 1, at most kMaxLoopbackDevices), named
// "loopback N (CPU kernels through the device interface)", so multi-device dispatch is tested too.
#pragma once
#include <string>

#include "../core/backend.h"
#include "../core/sae_device.h"

namespace sk::cpu {

constexpr int kMaxLoopbackDevices = 16;

// The device SAE table (sae_loopback.cpp). Its create slot accepts any loopback device index.
const sk_sae_i* loopback_sae_api();

// How many loopback devices there are (SAEKIT_DEVICE_LOOPBACK_DEVICES, default 1), or 0 with
// `error` set when the variable is not an integer in [1, kMaxLoopbackDevices].
int loopback_device_count(std::string* error);

// The backend table of loopback device `device` (loopback_backend.cpp): the CPU kernels, with
// each allocation tagged by its device and every slot refusing (ERR_SAEKIT_DEVICE) memory that
// another device's table allocated.
sk_backend loopback_backend(int device);

// The loopback's peer copy (plugin.h's sk_backend_copy_peer): checks that src is memory of
// src_device and dst of dst_device (ERR_SAEKIT_DEVICE otherwise), then copies.
int loopback_copy_peer(int dst_device, void* dst, int src_device, const void* src, size_t bytes, sk_status* st);

}  // namespace sk::cpu
