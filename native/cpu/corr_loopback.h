// The loopback device's sparse-code correlation table (core/corr_device.h): the CPU kernel
// (sparse_corr.h) behind the device interface, so the N-API dispatch to a device is tested bit
// for bit on machines without a GPU (SAEKIT_DEVICE_LOOPBACK=1).
#pragma once
#include "../core/corr_device.h"

namespace sk::cpu {

const sk_corr_i* loopback_corr_api();

}  // namespace sk::cpu
