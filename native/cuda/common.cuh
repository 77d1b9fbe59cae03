// Helpers shared by the CUDA plugin's translation units: error checks that throw sk::Error,
// a growable device buffer, the status plumbing of the C slots, and deterministic block
// reductions (fixed shuffle trees: the same inputs and launch shape give the same bits).
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/error.h"

namespace sk::cuda {

// Throws ERR_SAEKIT_DEVICE (or MEMORY for allocation failures) naming the call.
inline void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();  // clear a sticky-free error so the next call starts clean
  ErrorCode code = e == cudaErrorMemoryAllocation ? ErrorCode::Memory : ErrorCode::Device;
  throw Error(code, fmt("CUDA error in ", what, ": ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")"));
}
#define SK_CUDA(call) ::sk::cuda::check((call), #call)
// After a kernel launch: launch-configuration errors surface here.
#define SK_LAUNCHED(name) ::sk::cuda::check(cudaGetLastError(), name)

// Fills a C status from the current exception (the plugin cannot link core/backend.cpp).
inline void status_from_current(sk_status* st) {
  auto set = [&](ErrorCode c, const char* msg, int64_t row = -1) {
    st->code = int(c) + 1;
    std::snprintf(st->message, sizeof(st->message), "%s", msg);
    st->row = row;
  };
  try {
    throw;
  } catch (const Error& e) {
    set(e.code(), e.what(), e.row());
  } catch (const std::bad_alloc&) {
    set(ErrorCode::Memory, "out of host memory");
  } catch (const std::exception& e) {
    set(ErrorCode::Internal, e.what());
  } catch (...) {
    set(ErrorCode::Internal, "unknown exception in the CUDA plugin");
  }
}

// A slot that failed may have queued work before it threw: the device is drained (errors
// ignored and cleared) before the failure is reported, so no work of a failed call can still be
// writing buffers that the caller's next call reuses (e.g. a decode after a step that ran out
// of memory midway). Error paths only.
#define SK_CUDA_SLOT(st, ...)                \
  do {                                       \
    try {                                    \
      __VA_ARGS__;                           \
      return 0;                              \
    } catch (...) {                          \
      (void)cudaDeviceSynchronize();         \
      (void)cudaGetLastError();              \
      ::sk::cuda::status_from_current(st);   \
      return 1;                              \
    }                                        \
  } while (0)

// A device allocation that only grows (contents are not kept when it grows).
struct DevBuf {
  void* p = nullptr;
  size_t cap = 0;
  void* ensure(size_t bytes) {
    if (bytes <= cap && p) return p;
    if (p) SK_CUDA(cudaFree(p));
    p = nullptr;
    cap = 0;
    size_t want = bytes < 256 ? 256 : bytes;
    SK_CUDA(cudaMalloc(&p, want));
    cap = want;
    return p;
  }
  template <typename T>
  T* as(int64_t count) { return static_cast<T*>(ensure(size_t(count) * sizeof(T))); }
  void release() {
    if (p) cudaFree(p);
    p = nullptr;
    cap = 0;
  }
};

// The most shared memory a block of `device` may opt in to, asked once per device.
inline int smem_optin(int device) {
  static std::atomic<int> known[64];
  const bool cached = device >= 0 && device < 64;
  if (cached) {
    const int v = known[device].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int optin = 0;
  SK_CUDA(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (cached) known[device].store(optin, std::memory_order_relaxed);
  return optin;
}

// What a kernel may do on a device, asked of the runtime once per (kernel, device) and kept:
// launches read it every step. (The CPU emulation lets a test change what every kernel reports as
// its static shared memory, SAEKIT_EMU_STATIC_SMEM, which a GPU never does: there it is part of
// the key.)
struct FuncLimits {
  const void* kernel;
  int device;
  size_t emu_static;
  int max_threads;     // cudaFuncAttributes::maxThreadsPerBlock (registers permitting)
  size_t static_smem;  // its __shared__ arrays
  size_t dyn_bytes;    // dynamic shared memory it may launch with now
};
inline size_t func_limits_tag() {
#ifdef SK_CUDA_EMU
  return emu::static_smem();
#else
  return 0;
#endif
}
inline std::mutex& func_limits_mu() {
  static std::mutex m;
  return m;
}
inline std::vector<FuncLimits>& func_limits_all() {
  static std::vector<FuncLimits> all;  // a few dozen kernels x devices: a linear scan
  return all;
}
// The entry of (kernel, device), looked up or asked for. Call with func_limits_mu() held; the
// reference lasts until the next call.
template <typename F>
FuncLimits& func_limits_locked(F* kernel, int device) {
  const void* key = reinterpret_cast<const void*>(kernel);
  const size_t tag = func_limits_tag();
  for (FuncLimits& f : func_limits_all())
    if (f.kernel == key && f.device == device && f.emu_static == tag) return f;
  cudaFuncAttributes fa;
  SK_CUDA(cudaFuncGetAttributes(&fa, kernel));
  func_limits_all().push_back(
      {key, device, tag, fa.maxThreadsPerBlock, size_t(fa.sharedSizeBytes), size_t(fa.maxDynamicSharedSizeBytes)});
  return func_limits_all().back();
}

// The most threads a block of `kernel` may have on `device` (the current device).
template <typename F>
int func_max_threads(F* kernel, int device) {
  std::lock_guard<std::mutex> lock(func_limits_mu());
  return func_limits_locked(kernel, device).max_threads;
}

// Lets `kernel` launch with `bytes` of dynamic shared memory on the current device (`device`).
// Without an opt-in a block has 48 KiB in all: the dynamic part may not exceed 48 KiB less the
// kernel's static __shared__ arrays (cudaFuncAttributes::maxDynamicSharedSizeBytes says how much
// it may take now). Above that the kernel opts in (cudaFuncAttributeMaxDynamicSharedMemorySize),
// up to the device's opt-in limit less its static part. The limit only rises, under a lock, so
// two threads asking for different sizes (two SAEs of different dIn) never lower it below what
// the other is about to launch with. `what` names the limit a too-large request breaks. A size
// already allowed (every step after the first) costs a lookup.
template <typename F>
void allow_dynamic_smem(F* kernel, size_t bytes, int device, const char* what) {
  std::lock_guard<std::mutex> lock(func_limits_mu());
  FuncLimits& f = func_limits_locked(kernel, device);
  if (bytes <= f.dyn_bytes) return;
  const int optin = smem_optin(device);
  SK_CHECK(bytes + f.static_smem <= size_t(optin), ErrorCode::Shape, what, ": a block needs ", bytes,
           " bytes of dynamic shared memory beside ", f.static_smem, " static, and the device allows ", optin);
  SK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  f.dyn_bytes = bytes;
}

inline unsigned grid_for(int64_t n, int threads, int64_t max_blocks = 65535LL * 16) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > max_blocks) b = max_blocks;
  return unsigned(b);
}

#if defined(__CUDACC__) || defined(SK_CUDA_EMU)
// ---- deterministic reductions (blockDim.x a multiple of 32, at most 1024) --------------------
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;  // lane 0 holds the sum
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
  return v;
}
// Sum over the block, returned to every thread. `scratch` holds 32 T; the call synchronises.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T s = lane < nw ? scratch[lane] : T(0);
    s = warp_sum(s);
    if (lane == 0) scratch[0] = s;
  }
  __syncthreads();
  return scratch[0];
}
// Maximum over the block of values >= 0 (magnitudes, counts), returned to every thread; the call
// synchronises. The slots of warps the block does not have count as 0, so for a block of fewer
// than 1024 threads the result is max(maximum, 0): every caller passes non-negative values.
__device__ inline float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < nw ? scratch[lane] : 0.0f;
    s = warp_max(s);
    if (lane == 0) scratch[0] = s;
  }
  __syncthreads();
  return scratch[0];
}
#endif

}  // namespace sk::cuda
