// The loopback device: the device SAE table (core/sae_device.h) implemented with the CPU
// kernels, so everything above the table (the N-API layer, device selection, the trainer) is
// exercised on machines without a GPU. Selected with SAEKIT_DEVICE_LOOPBACK=1 (tests); it
// reports one device named "loopback (CPU kernels through the device interface)".
#pragma once
#include "../core/sae_device.h"

namespace sk::cpu {

const sk_sae_i* loopback_sae_api();

}  // namespace sk::cpu
