// A CPU emulation of the small part of the CUDA runtime and device language the plugin uses, so
// that the plugin's kernels and host code can be checked without a GPU (emu/build.sh). Each
// thread block runs as cooperative fibers (ucontext); __syncthreads and the warp intrinsics are
// barriers over the block or the warp. Memory is host memory. Not a performance model.
#pragma once
#include <ucontext.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <vector>

#define SK_CUDA_EMU 1
#define CUDART_VERSION 13000
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

using std::isfinite;
using std::max;
using std::min;

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct uint3 {
  unsigned x, y, z;
};

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
};
typedef cudaError_t cudaError;
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaMemoryType { cudaMemoryTypeUnregistered = 0, cudaMemoryTypeHost = 1, cudaMemoryTypeDevice = 2 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr {
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
#define cudaStreamNonBlocking 1
#define cudaEventDisableTiming 2
#define cudaHostAllocDefault 0
#define cudaHostAllocPortable 1
typedef struct emu_stream* cudaStream_t;
typedef struct emu_event* cudaEvent_t;
struct cudaPointerAttributes {
  cudaMemoryType type;
};
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  int major, minor;
};

namespace emu {

struct Fiber {
  ucontext_t ctx;
  uint3 tid;
  bool done = false;
  int wait = 0;  // 0 running, 1 block barrier, 2 warp barrier
  uint64_t slot = 0, snap[32] = {0}, bsnap_or = 0;
};

struct Block {
  std::vector<Fiber> f;
  std::vector<char> stacks;
  ucontext_t main;
  dim3 bdim, bidx, gdim;
  std::vector<unsigned char> smem;
  std::function<void()> body;
  int cur = -1;
};

inline Block*& blk() {
  static Block* b = nullptr;
  return b;
}
inline Fiber& me() { return blk()->f[size_t(blk()->cur)]; }

inline void fiber_entry() {
  Block* b = blk();
  b->body();
  b->f[size_t(b->cur)].done = true;
  swapcontext(&b->f[size_t(b->cur)].ctx, &b->main);
}

inline void yield(int wait) {
  Block* b = blk();
  b->f[size_t(b->cur)].wait = wait;
  swapcontext(&b->f[size_t(b->cur)].ctx, &b->main);
}

// Runs one block to completion, releasing barriers when every live member has arrived.
inline void run_block(Block& b) {
  const size_t n = b.f.size();
  for (;;) {
    bool any = false;
    for (size_t i = 0; i < n; ++i) {
      if (b.f[i].done || b.f[i].wait) continue;
      any = true;
      b.cur = int(i);
      swapcontext(&b.main, &b.f[i].ctx);
    }
    if (any) continue;
    bool all_done = true;
    for (auto& f : b.f) all_done = all_done && f.done;
    if (all_done) return;
    // Everyone live is waiting: release block barriers if all live fibers wait at one; warp
    // barriers per warp when all its live lanes wait at one.
    bool released = false;
    bool block_ready = true;
    for (auto& f : b.f)
      if (!f.done && f.wait != 1) block_ready = false;
    if (block_ready) {
      uint64_t orv = 0;
      for (auto& f : b.f)
        if (!f.done) orv |= f.slot ? 1u : 0u;
      for (auto& f : b.f)
        if (!f.done) {
          f.bsnap_or = orv;
          f.wait = 0;
        }
      released = true;
    } else {
      for (size_t w = 0; w * 32 < n; ++w) {
        bool ready = true, some = false;
        for (size_t l = w * 32; l < std::min(n, w * 32 + 32); ++l) {
          if (b.f[l].done) continue;
          some = true;
          if (b.f[l].wait != 2) ready = false;
        }
        if (!ready || !some) continue;
        uint64_t s[32] = {0};
        for (size_t l = w * 32; l < std::min(n, w * 32 + 32); ++l) s[l - w * 32] = b.f[l].slot;
        for (size_t l = w * 32; l < std::min(n, w * 32 + 32); ++l)
          if (!b.f[l].done) {
            std::memcpy(b.f[l].snap, s, sizeof(s));
            b.f[l].wait = 0;
          }
        released = true;
      }
    }
    if (!released) {
      std::fprintf(stderr, "emu: deadlock (threads wait at different barriers)\n");
      std::abort();
    }
  }
}

struct Cfg {
  dim3 g, b;
  size_t smem;
  Cfg(dim3 g_, dim3 b_, size_t s = 0, cudaStream_t = nullptr) : g(g_), b(b_), smem(s) {}
};

inline cudaError_t& last_error() {
  static cudaError_t e = cudaSuccess;
  return e;
}

template <class K, class... A>
void launch(K* kernel, Cfg c, A... args) {
  const size_t n = size_t(c.b.x) * c.b.y * c.b.z;
  if (n == 0 || n > 1024 || c.g.x == 0 || c.g.y == 0 || c.g.z == 0) {
    last_error() = cudaErrorInvalidValue;
    return;
  }
  constexpr size_t kStack = 64 << 10;
  static std::vector<char> stacks;
  if (stacks.size() < n * kStack) stacks.resize(n * kStack);
  for (unsigned bz = 0; bz < c.g.z; ++bz)
    for (unsigned by = 0; by < c.g.y; ++by)
      for (unsigned bx = 0; bx < c.g.x; ++bx) {
        Block b;
        b.bdim = c.b;
        b.gdim = c.g;
        b.bidx = dim3(bx, by, bz);
        b.smem.assign(c.smem + 16, 0xCD);  // uninitialised shared memory looks like garbage
        b.body = [&] { kernel(args...); };
        b.f.resize(n);
        for (size_t i = 0; i < n; ++i) {
          Fiber& f = b.f[i];
          f.tid = uint3{unsigned(i % c.b.x), unsigned((i / c.b.x) % c.b.y), unsigned(i / (size_t(c.b.x) * c.b.y))};
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = &stacks[i * kStack];
          f.ctx.uc_stack.ss_size = kStack;
          f.ctx.uc_link = nullptr;
          makecontext(&f.ctx, fiber_entry, 0);
        }
        Block* prev = blk();
        blk() = &b;
        run_block(b);
        blk() = prev;
      }
}

inline void* dyn_smem() { return blk()->smem.data(); }

inline std::map<const char*, size_t>& host_allocs() {
  static std::map<const char*, size_t> m;
  return m;
}

}  // namespace emu

#define threadIdx (::emu::me().tid)
#define blockIdx (::emu::blk()->bidx)
#define blockDim (::emu::blk()->bdim)
#define gridDim (::emu::blk()->gdim)

inline void __syncthreads() {
  ::emu::me().slot = 0;
  ::emu::yield(1);
}
inline int __syncthreads_or(int p) {
  ::emu::me().slot = p ? 1 : 0;
  ::emu::yield(1);
  return int(::emu::me().bsnap_or);
}
template <class T>
inline T emu_shfl(T v, int src_of_lane_delta, bool down) {
  auto& f = ::emu::me();
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  f.slot = bits;
  ::emu::yield(2);
  int lane = int(f.tid.x & 31);
  int src = down ? lane + src_of_lane_delta : lane - src_of_lane_delta;
  if (src < 0 || src > 31) src = lane;
  T out;
  std::memcpy(&out, &f.snap[src], sizeof(T));
  return out;
}
template <class T>
inline T __shfl_down_sync(unsigned, T v, int d) { return emu_shfl(v, d, true); }
template <class T>
inline T __shfl_up_sync(unsigned, T v, int d) { return emu_shfl(v, d, false); }
template <class T>
inline T __shfl_sync(unsigned, T v, int src) {
  return emu_shfl(v, src - int(::emu::me().tid.x & 31), true);
}
inline void __syncwarp(unsigned = 0xffffffffu) {
  ::emu::me().slot = 0;
  ::emu::yield(2);
}
// Double arithmetic rounded to nearest (the device's _rn intrinsics; no FMA contraction here).
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline unsigned __ballot_sync(unsigned, int p) {
  auto& f = ::emu::me();
  f.slot = p ? 1 : 0;
  ::emu::yield(2);
  unsigned r = 0;
  for (int l = 0; l < 32; ++l) r |= (f.snap[l] ? 1u : 0u) << l;
  return r;
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
template <class T>
inline T atomicAdd(T* p, T v) {
  T o = *p;
  *p = o + v;
  return o;
}
inline int atomicMin(int* p, int v) {
  int o = *p;
  if (v < o) *p = v;
  return o;
}

// ---- runtime API ----------------------------------------------------------------------------
inline cudaError_t cudaGetLastError() {
  cudaError_t e = ::emu::last_error();
  ::emu::last_error() = cudaSuccess;
  return e;
}
inline const char* cudaGetErrorName(cudaError_t e) { return e == cudaSuccess ? "cudaSuccess" : "cudaErrorEmu"; }
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated error"; }
inline cudaError_t cudaGetDeviceCount(int* c) {
  *c = 1;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::memset(p, 0, sizeof(*p));
  std::snprintf(p->name, sizeof(p->name), "CPU emulation");
  p->totalGlobalMem = size_t(16) << 30;
  p->major = 9;
  p->minor = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  *v = a == cudaDevAttrMaxSharedMemoryPerBlockOptin ? 232448 : 233472;
  return cudaSuccess;
}
template <class T>
inline cudaError_t cudaFuncSetAttribute(T*, cudaFuncAttribute, int) { return cudaSuccess; }
inline cudaError_t cudaMalloc(void** p, size_t b) {
  *p = std::malloc(b ? b : 1);
  if (*p) std::memset(*p, 0xAB, b);  // device memory is not zeroed
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
template <class T>
inline cudaError_t cudaMalloc(T** p, size_t b) { return cudaMalloc(reinterpret_cast<void**>(p), b); }
// EMU_FREE_BYTES overrides the free memory reported (tests of the plugin's memory checks).
inline cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  const char* e = std::getenv("EMU_FREE_BYTES");
  *free_bytes = e && *e ? size_t(std::strtoull(e, nullptr, 10)) : size_t(15) << 30;
  *total_bytes = size_t(16) << 30;
  return cudaSuccess;
}
inline cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaHostAlloc(void** p, size_t b, unsigned) {
  *p = std::malloc(b ? b : 1);
  ::emu::host_allocs()[static_cast<const char*>(*p)] = b;
  return cudaSuccess;
}
inline cudaError_t cudaFreeHost(void* p) {
  ::emu::host_allocs().erase(static_cast<const char*>(p));
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* a, const void* p) {
  a->type = cudaMemoryTypeUnregistered;
  auto& m = ::emu::host_allocs();
  auto it = m.upper_bound(static_cast<const char*>(p));
  if (it != m.begin()) {
    --it;
    if (static_cast<const char*>(p) < it->first + it->second) a->type = cudaMemoryTypeHost;
  }
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t b, cudaMemcpyKind) {
  std::memmove(d, s, b);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t b, cudaMemcpyKind k, cudaStream_t = nullptr) {
  return cudaMemcpy(d, s, b, k);
}
inline cudaError_t cudaMemset(void* d, int v, size_t b) {
  std::memset(d, v, b);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* d, int v, size_t b, cudaStream_t = nullptr) { return cudaMemset(d, v, b); }
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  *s = reinterpret_cast<cudaStream_t>(new char);
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete reinterpret_cast<char*>(s);
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) { return cudaSuccess; }
inline cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = reinterpret_cast<cudaEvent_t>(new char);
  return cudaSuccess;
}
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete reinterpret_cast<char*>(e);
  return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t = nullptr) { return cudaSuccess; }
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t, cudaEvent_t) {
  *ms = 0;
  return cudaSuccess;
}
