// A CPU emulation of the small part of the CUDA runtime and device language the plugin uses, so
// that the plugin's kernels and host code can be checked without a GPU (emu/build.sh). Each
// thread block runs as cooperative fibers (see Ctx); __syncthreads and the warp intrinsics are
// barriers over the block or the warp. Memory is host memory. Not a performance model. Streams
// queue their work and run it only when something waits for it (see emu_stream), so a missing
// stream synchronisation or event wait shows as stale data; SAEKIT_EMU_ORDER varies the order of
// threads and blocks (see RunOrder).
//
// Devices: SAEKIT_EMU_DEVICES (default 1, at most 16) emulated devices, with a current device
// per thread (cudaSetDevice). Device allocations, streams, events and cuBLAS handles (see
// cublas_dl.cpp) remember the device that was current when they were made, and a kernel launch,
// copy or GEMM that touches another device's memory or uses another device's stream fails
// (cudaErrorInvalidDevice, cudaErrorInvalidResourceHandle; a line on stderr says what), which is
// how a missing cudaSetDevice shows up without a second GPU. Real CUDA would fault or copy
// through peer access instead; the plugin never relies on either.
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include <sys/syscall.h>
#include <unistd.h>

#define SK_CUDA_EMU 1
#define CUDART_VERSION 13000
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

// The vector types the kernels load rows with (aligned like CUDA's).
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

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
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorPeerAccessAlreadyEnabled = 704,
};
typedef cudaError_t cudaError;
enum cudaMemcpyKind {
  cudaMemcpyHostToHost,
  cudaMemcpyHostToDevice,
  cudaMemcpyDeviceToHost,
  cudaMemcpyDeviceToDevice,
  cudaMemcpyDefault
};
enum cudaMemoryType { cudaMemoryTypeUnregistered = 0, cudaMemoryTypeHost = 1, cudaMemoryTypeDevice = 2 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct cudaFuncAttributes {
  size_t sharedSizeBytes, constSizeBytes, localSizeBytes;
  int maxThreadsPerBlock, numRegs, ptxVersion, binaryVersion, cacheModeCA, maxDynamicSharedSizeBytes,
      preferredShmemCarveout;
};
enum cudaDeviceAttr {
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
#define cudaStreamNonBlocking 1
#define cudaEventDisableTiming 2
#define cudaHostAllocDefault 0
#define cudaHostAllocPortable 1
// Streams and events: the device that was current when they were created. A stream's work is
// queued and runs only when something waits for it (a synchronisation, a copy to pageable
// memory, an event wait, cudaFree), in the order it was queued: as late as CUDA allows, so work
// that is used before it is waited for sees stale data, as it may on a GPU. Destroyed streams
// are kept (flagged) so a pending wait never reads freed memory; a wait copies what it needs
// from its event, so events are freed.
struct emu_stream {
  int device;
  std::deque<std::function<void()>> q;
  uint64_t queued = 0, ran = 0;  // operations ever queued and ever run
  bool destroyed = false;
};
struct emu_event {
  int device;
  emu_stream* s = nullptr;  // where it was last recorded (null: never, or the null stream)
  uint64_t at = 0;          // the operations of s that come before it
};
typedef emu_stream* cudaStream_t;
typedef emu_event* cudaEvent_t;
struct cudaPointerAttributes {
  cudaMemoryType type;
  int device;
};
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  int major, minor;
};

// A fiber's saved context. On x86-64 a switch saves the callee-saved registers, the SSE and x87
// control words and the stack pointer, and nothing else (emu_fiber_switch below): glibc's
// swapcontext also saves the signal mask, a system call each way, and getcontext another, which
// on a paravirtualised VM (~1 us a system call) made the emulation ~3x slower. The fibers never
// touch the signal mask, so there is nothing to save. Elsewhere, and under AddressSanitizer (which
// follows ucontext switches, not this one), ucontext.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && !defined(EMU_UCONTEXT)
#define EMU_FAST_FIBERS 1
// emu_fiber_switch(&from_sp, to_sp): pushes rbp rbx r12-r15 and the control words on the current
// stack, stores the stack pointer in *from_sp, then pops the same from to_sp and returns there.
// Emitted in every translation unit as a COMDAT group, like an inline function: the linker keeps one.
asm(R"(
  .pushsection .text.emu_fiber_switch,"axG",@progbits,emu_fiber_switch,comdat
  .weak emu_fiber_switch
  .hidden emu_fiber_switch
  .type emu_fiber_switch,@function
emu_fiber_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_fiber_switch, .-emu_fiber_switch
  .popsection
)");
extern "C" void emu_fiber_switch(void** from_sp, void* to_sp);
#else
#include <ucontext.h>
#endif

namespace emu {

// ---- devices ----------------------------------------------------------------------------------
constexpr int kMaxDevices = 16;
// SAEKIT_EMU_DEVICES, read once: 1 when unset; 0 (no device) when it is not in [1, kMaxDevices].
inline int device_count() {
  static const int n = [] {
    const char* env = std::getenv("SAEKIT_EMU_DEVICES");
    if (env == nullptr || *env == '\0') return 1;
    char* end = nullptr;
    long v = std::strtol(env, &end, 10);
    if (*end != '\0' || v < 1 || v > kMaxDevices) {
      std::fprintf(stderr, "emu: Expected SAEKIT_EMU_DEVICES between 1 and %d but received '%s'\n", kMaxDevices, env);
      return 0;
    }
    return int(v);
  }();
  return n;
}
inline int& current_device() {
  thread_local int d = 0;
  return d;
}

// Live device allocations: start -> (bytes, device).
struct DevAlloc {
  size_t bytes;
  int device;
};
inline std::mutex& registry_mu() {
  static std::mutex m;
  return m;
}
inline std::map<const char*, DevAlloc>& dev_allocs() {
  static std::map<const char*, DevAlloc> m;
  return m;
}
// The entry of an allocation map (start -> record) whose block holds p (a 0-byte block holds its
// start), or m.end(). The caller holds registry_mu().
template <class M, class Bytes>
typename M::const_iterator block_holding(const M& m, const void* p, Bytes bytes_of) {
  const char* c = static_cast<const char*>(p);
  auto it = m.upper_bound(c);
  if (it == m.begin()) return m.end();
  --it;
  const size_t b = bytes_of(it->second);
  return c < it->first + (b ? b : 1) ? it : m.end();
}
// The device whose allocation holds p, or -1 for memory that is not device memory.
inline int device_of(const void* p) {
  std::lock_guard<std::mutex> lock(registry_mu());
  const auto& m = dev_allocs();
  auto it = block_holding(m, p, [](const DevAlloc& a) { return a.bytes; });
  return it == m.end() ? -1 : it->second.device;
}
// cudaSuccess, or cudaErrorInvalidDevice (with a line on stderr) when p is device memory of a
// device other than the current one.
inline cudaError_t check_ptr(const void* p, const char* what) {
  const int d = device_of(p);
  if (d < 0 || d == current_device()) return cudaSuccess;
  std::fprintf(stderr, "emu: %s touches memory of device %d while device %d is current (a missing cudaSetDevice?)\n",
               what, d, current_device());
  return cudaErrorInvalidDevice;
}
// The same for a stream or event made on another device (null: the current device's default stream).
template <class H>
inline cudaError_t check_handle(const H* h, const char* what) {
  if (h == nullptr || h->device == current_device()) return cudaSuccess;
  std::fprintf(stderr, "emu: %s uses a stream or event of device %d while device %d is current\n", what, h->device,
               current_device());
  return cudaErrorInvalidResourceHandle;
}

// ---- launch limits ----------------------------------------------------------------------------
// As on a GPU: gridDim.x <= 2^31 - 1, gridDim.y and gridDim.z <= 65535 (cudaErrorInvalidConfiguration),
// and a kernel's static plus dynamic shared memory at most 48 KiB unless it opted in
// (cudaFuncAttributeMaxDynamicSharedMemorySize, per kernel and device) up to the device's opt-in
// limit (cudaErrorInvalidValue). The emulation cannot see a kernel's static shared memory (its
// __shared__ arrays are statics): SAEKIT_EMU_STATIC_SMEM (bytes, read per call, default 0) is
// what it reports for every kernel, so tests can check that the plugin leaves room for it.
constexpr size_t kSmemDefault = 48 << 10, kSmemOptin = 232448;
inline size_t static_smem() {
  const char* e = std::getenv("SAEKIT_EMU_STATIC_SMEM");
  return e && *e ? size_t(std::strtoull(e, nullptr, 10)) : 0;
}
// Dynamic shared memory a kernel opted in to, per (kernel, device).
inline std::map<std::pair<const void*, int>, size_t>& smem_optins() {
  static std::map<std::pair<const void*, int>, size_t> m;
  return m;
}
// The most dynamic shared memory a launch of f on the current device may ask for.
inline size_t max_dynamic_smem(const void* f) {
  std::lock_guard<std::mutex> lock(registry_mu());
  auto it = smem_optins().find({f, current_device()});
  const size_t st = static_smem();
  if (it != smem_optins().end()) return it->second;
  return st >= kSmemDefault ? 0 : kSmemDefault - st;
}

struct Ctx {
#ifdef EMU_FAST_FIBERS
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

// Saves the running context in `from` and resumes `to`.
inline void ctx_switch(Ctx& from, Ctx& to) {
#ifdef EMU_FAST_FIBERS
  emu_fiber_switch(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
}

// Makes `c` start entry() on the given stack the first time it is switched to; entry never returns.
inline void ctx_make(Ctx& c, char* stack, size_t size, void (*entry)()) {
#ifdef EMU_FAST_FIBERS
  // From the top, 16-byte aligned: a null return address for entry (it never returns), entry's
  // address where emu_fiber_switch's ret finds it (16-byte aligned, so entry starts with
  // rsp = 8 mod 16, as after a call), six zeroed registers, then the control words.
  auto top = reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t(15);
  auto* w = reinterpret_cast<uint64_t*>(top);
  *--w = 0;
  *--w = reinterpret_cast<uint64_t>(entry);
  for (int i = 0; i < 6; ++i) *--w = 0;
  --w;
  const uint32_t mxcsr = 0x1F80;  // all exceptions masked, round to nearest (the ABI's initial state)
  const uint16_t fpucw = 0x037F;
  std::memcpy(w, &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(w) + 4, &fpucw, 2);
  c.sp = w;
#else
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
#endif
}

struct Fiber {
  Ctx ctx;
  uint3 tid;
  bool done = false;
  int wait = 0;  // 0 running, 1 block barrier, 2 warp barrier
  uint64_t slot = 0, snap[32] = {0}, bsnap_or = 0;
};

struct Block {
  std::vector<Fiber> f;
  Ctx main;
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
  ctx_switch(b->f[size_t(b->cur)].ctx, b->main);
}

inline void yield(int wait) {
  Block* b = blk();
  b->f[size_t(b->cur)].wait = wait;
  ctx_switch(b->f[size_t(b->cur)].ctx, b->main);
}

// SAEKIT_EMU_ORDER, read once: the order in which the emulation runs a block's threads between
// barriers and a grid's blocks. Unset or "index": index order. "reverse": highest first.
// "shuffle" or "shuffle:SEED": a new random order every round and every launch (SEED, or one
// from the clock, printed once to stderr so a failure can be replayed). A kernel whose threads
// or blocks communicate without a barrier, or whose result depends on which block runs first,
// gives different results under different orders; on a GPU the order is never fixed.
struct RunOrder {
  int mode = 0;  // 0 index, 1 reverse, 2 shuffle
  uint64_t seed = 0;
};
inline const RunOrder& run_order() {
  static const RunOrder o = [] {
    RunOrder r;
    const char* e = std::getenv("SAEKIT_EMU_ORDER");
    if (e == nullptr || *e == '\0' || std::strcmp(e, "index") == 0) return r;
    if (std::strcmp(e, "reverse") == 0) {
      r.mode = 1;
      return r;
    }
    if (std::strncmp(e, "shuffle", 7) == 0 && (e[7] == '\0' || e[7] == ':')) {
      r.mode = 2;
      r.seed = e[7] == ':' ? std::strtoull(e + 8, nullptr, 10) : uint64_t(std::time(nullptr));
      std::fprintf(stderr, "emu: SAEKIT_EMU_ORDER=shuffle:%llu\n", (unsigned long long)r.seed);
      return r;
    }
    std::fprintf(stderr, "emu: Expected SAEKIT_EMU_ORDER index, reverse, shuffle or shuffle:SEED but received '%s'\n", e);
    std::abort();
  }();
  return o;
}
// The next number of the shuffling stream (splitmix64 over SAEKIT_EMU_ORDER's seed).
inline uint64_t order_next() {
  static std::mutex mu;
  static uint64_t state = run_order().seed * 0x9E3779B97F4A7C15ull + 1;
  std::lock_guard<std::mutex> lock(mu);
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Fills v with 0..n-1 in the run order (a fresh permutation per call when shuffling).
inline void order_of(std::vector<size_t>& v, size_t n) {
  v.resize(n);
  const RunOrder& o = run_order();
  for (size_t i = 0; i < n; ++i) v[i] = o.mode == 1 ? n - 1 - i : i;
  if (o.mode != 2) return;
  for (size_t i = n; i > 1; --i) std::swap(v[i - 1], v[size_t(order_next() % i)]);  // Fisher-Yates
}

// Releases every warp whose live lanes all wait at a warp barrier (their values exchanged as
// the intrinsics see them). True when one was released.
inline bool release_warps(Block& b) {
  const size_t n = b.f.size();
  bool released = false;
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
  return released;
}

// Runs one block to completion, releasing barriers when every live member has arrived. In index
// and reverse order a warp barrier is released only once no thread can run; shuffling releases
// it as soon as its warp has arrived and lets about half the warps sit out each round, so warps
// drift apart between block barriers as they do on a GPU (a missing __syncthreads shows).
inline void run_block(Block& b) {
  const size_t n = b.f.size();
  const bool shuffle = run_order().mode == 2;
  std::vector<size_t> order;
  std::vector<char> resting((n + 31) / 32, 0);
  for (;;) {
    order_of(order, n);
    if (shuffle)
      for (auto& r : resting) r = char(order_next() & 1);
    bool any = false, rested = false;
    for (size_t i : order) {
      if (b.f[i].done || b.f[i].wait) continue;
      if (resting[i / 32]) {
        rested = true;
        continue;
      }
      any = true;
      b.cur = int(i);
      ctx_switch(b.main, b.f[i].ctx);
    }
    if (shuffle && release_warps(b)) continue;
    if (any || rested) continue;
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
      released = release_warps(b);
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
  cudaStream_t stream;
  Cfg(dim3 g_, dim3 b_, size_t s = 0, cudaStream_t st = nullptr) : g(g_), b(b_), smem(s), stream(st) {}
};

inline cudaError_t& last_error() {
  thread_local cudaError_t e = cudaSuccess;
  return e;
}

// A kernel argument: pointers must not be another device's memory.
template <class T>
inline cudaError_t check_arg(const T& v) {
  if constexpr (std::is_pointer_v<T>) return check_ptr(static_cast<const void*>(v), "a kernel argument");
  else return cudaSuccess;
}

// ---- deferred streams -------------------------------------------------------------------------
// One lock for queues and execution: operations run one at a time (blk() is process-wide), and
// running one may run another stream's earlier work (an event wait), hence recursive.
inline std::recursive_mutex& exec_mu() {
  static std::recursive_mutex m;
  return m;
}
// Every stream ever created, destroyed ones included (flagged): a wait queued on another stream
// may still name one. Never freed, so the streams stay reachable for LeakSanitizer at exit.
inline std::vector<emu_stream*>& all_streams() {
  static std::vector<emu_stream*>* v = new std::vector<emu_stream*>();
  return *v;
}
// Runs s's queued operations until `upto` of them have run.
inline void flush(emu_stream* s, uint64_t upto) {
  std::lock_guard<std::recursive_mutex> lock(exec_mu());
  while (s != nullptr && s->ran < upto && !s->q.empty()) {
    std::function<void()> fn = std::move(s->q.front());
    s->q.pop_front();
    ++s->ran;
    fn();
  }
}
inline void flush(emu_stream* s) {
  if (s != nullptr) flush(s, s->queued);
}
// SAEKIT_EMU_SYNC_TRACE=FILE appends "<call> <thread id>" to FILE for each call that waits for
// the whole device on a GPU (cudaFree, cudaFreeHost; read per call), so a test can check that
// none runs on Node's main thread (whose thread id is the process id) while a step is in flight.
inline void trace_sync(const char* what) {
  const char* f = std::getenv("SAEKIT_EMU_SYNC_TRACE");
  if (f == nullptr || *f == '\0') return;
  if (FILE* o = std::fopen(f, "a")) {
    std::fprintf(o, "%s %ld\n", what, long(::syscall(SYS_gettid)));
    std::fclose(o);
  }
}
// EMU_FREE_DELAY_MS=ms (tests; read per call): each cudaFree first takes that long, as one on a GPU
// does while the device's work in flight ends, so a test can see which threads wait for it.
inline void free_delay() {
  const char* e = std::getenv("EMU_FREE_DELAY_MS");
  const long ms = e && *e ? std::strtol(e, nullptr, 10) : 0;
  if (ms > 0) {
    const struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    ::nanosleep(&t, nullptr);
  }
}
// Everything queued on every stream (cudaFree, cudaFreeHost: they synchronise the device).
inline void flush_all() {
  std::lock_guard<std::recursive_mutex> lock(exec_mu());
  for (size_t i = 0; i < all_streams().size(); ++i) flush(all_streams()[i]);
}
// Queues fn on s; the null (legacy) stream runs it now.
inline void submit(emu_stream* s, std::function<void()> fn) {
  std::lock_guard<std::recursive_mutex> lock(exec_mu());
  if (s == nullptr) {
    fn();
    return;
  }
  s->q.push_back(std::move(fn));
  ++s->queued;
}
// True when p lies in page-locked host memory (cudaHostAlloc), which copies may read or write
// after they were queued; other host memory is copied at once, as CUDA does for pageable memory.
inline bool pinned(const void* p);

template <class K, class... A>
void run_grid(K* kernel, Cfg c, A... args);

template <class K, class... A>
void launch(K* kernel, Cfg c, A... args) {
  const size_t n = size_t(c.b.x) * c.b.y * c.b.z;
  if (n == 0 || n > 1024 || c.g.x == 0 || c.g.y == 0 || c.g.z == 0) {
    last_error() = cudaErrorInvalidValue;
    return;
  }
  if (c.g.x > 2147483647u || c.g.y > 65535 || c.g.z > 65535) {
    std::fprintf(stderr, "emu: a launch of grid (%u, %u, %u): gridDim.y and .z are at most 65535\n", c.g.x, c.g.y,
                 c.g.z);
    last_error() = cudaErrorInvalidConfiguration;
    return;
  }
  if (c.smem > max_dynamic_smem(reinterpret_cast<const void*>(kernel))) {
    std::fprintf(stderr, "emu: a launch with %zu bytes of dynamic shared memory (%zu static) above the kernel's "
                 "limit %zu (cudaFuncAttributeMaxDynamicSharedMemorySize)\n", c.smem, static_smem(),
                 max_dynamic_smem(reinterpret_cast<const void*>(kernel)));
    last_error() = cudaErrorInvalidValue;
    return;
  }
  // Another device's stream or memory: the launch fails and the kernel does not run.
  cudaError_t dev_err = check_handle(c.stream, "a kernel launch");
  if (c.stream != nullptr && c.stream->destroyed) dev_err = cudaErrorInvalidResourceHandle;
  for (cudaError_t e : {cudaSuccess, check_arg(args)...})
    if (dev_err == cudaSuccess) dev_err = e;
  if (dev_err != cudaSuccess) {
    last_error() = dev_err;
    return;
  }
  submit(c.stream, [=] { run_grid(kernel, c, args...); });
}

template <class K, class... A>
void run_grid(K* kernel, Cfg c, A... args) {
  const size_t n = size_t(c.b.x) * c.b.y * c.b.z;
  constexpr size_t kStack = 64 << 10;
  static std::vector<char> stacks;
  if (stacks.size() < n * kStack) stacks.resize(n * kStack);
  std::vector<size_t> blocks;
  order_of(blocks, size_t(c.g.x) * c.g.y * c.g.z);
  for (size_t bi : blocks) {
    const unsigned bx = unsigned(bi % c.g.x), by = unsigned((bi / c.g.x) % c.g.y), bz = unsigned(bi / (size_t(c.g.x) * c.g.y));
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
      ctx_make(f.ctx, &stacks[i * kStack], kStack, fiber_entry);
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
inline bool pinned(const void* p) {
  std::lock_guard<std::mutex> lock(registry_mu());
  const auto& m = host_allocs();
  return block_holding(m, p, [](size_t b) { return b; }) != m.end();
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
inline int __ffs(int v) { return v ? __builtin_ctz(unsigned(v)) + 1 : 0; }
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
// int -> float rounded toward zero (the device intrinsic).
inline float __int2float_rz(int v) {
  const double d = v;
  float f = float(d);
  if (std::fabs(double(f)) > std::fabs(d)) f = std::nextafter(f, 0.0f);
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
inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    default: return "cudaErrorEmu";
  }
}
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidDevice: return "invalid device ordinal, or memory of another device (emulated)";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle: a stream or event of another device (emulated)";
    default: return "emulated error";
  }
}
inline cudaError_t cudaGetDeviceCount(int* c) {
  *c = ::emu::device_count();
  return *c > 0 ? cudaSuccess : cudaErrorNoDevice;
}
inline bool emu_valid_device(int d) { return d >= 0 && d < ::emu::device_count(); }
inline cudaError_t cudaSetDevice(int d) {
  if (!emu_valid_device(d)) return cudaErrorInvalidDevice;
  ::emu::current_device() = d;
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* d) {
  *d = ::emu::current_device();
  return cudaSuccess;
}
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (!emu_valid_device(d)) return cudaErrorInvalidDevice;
  std::memset(p, 0, sizeof(*p));
  if (::emu::device_count() == 1) std::snprintf(p->name, sizeof(p->name), "CPU emulation");
  else std::snprintf(p->name, sizeof(p->name), "CPU emulation %d", d);
  p->totalGlobalMem = size_t(16) << 30;
  p->major = 9;
  p->minor = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d) {
  if (!emu_valid_device(d)) return cudaErrorInvalidDevice;
  *v = a == cudaDevAttrMaxSharedMemoryPerBlockOptin ? 232448 : 233472;
  return cudaSuccess;
}
template <class T>
inline cudaError_t cudaFuncSetAttribute(T* f, cudaFuncAttribute a, int v) {
  if (a != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (v < 0 || size_t(v) + ::emu::static_smem() > ::emu::kSmemOptin) return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lock(::emu::registry_mu());
  ::emu::smem_optins()[{reinterpret_cast<const void*>(f), ::emu::current_device()}] = size_t(v);
  return cudaSuccess;
}
// What a kernel's attributes would say on the emulated device (see max_dynamic_smem).
template <class T>
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* at, T* f) {
  std::memset(at, 0, sizeof(*at));
  at->sharedSizeBytes = ::emu::static_smem();
  at->maxThreadsPerBlock = 1024;
  at->maxDynamicSharedSizeBytes = int(::emu::max_dynamic_smem(reinterpret_cast<const void*>(f)));
  at->ptxVersion = at->binaryVersion = 90;
  return cudaSuccess;
}
// Device memory: host memory tagged with the current device.
inline cudaError_t cudaMalloc(void** p, size_t b) {
  *p = std::malloc(b ? b : 1);
  if (!*p) return cudaErrorMemoryAllocation;
  std::memset(*p, 0xAB, b);  // device memory is not zeroed
  std::lock_guard<std::mutex> lock(::emu::registry_mu());
  ::emu::dev_allocs()[static_cast<const char*>(*p)] = ::emu::DevAlloc{b, ::emu::current_device()};
  return cudaSuccess;
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
  if (p == nullptr) return cudaSuccess;
  ::emu::trace_sync("cudaFree");
  ::emu::free_delay();
  ::emu::flush_all();  // cudaFree synchronises the device
  {
    std::lock_guard<std::mutex> lock(::emu::registry_mu());
    if (::emu::dev_allocs().erase(static_cast<const char*>(p)) == 0) return cudaErrorInvalidValue;
  }
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaHostAlloc(void** p, size_t b, unsigned) {
  *p = std::malloc(b ? b : 1);
  if (!*p) return cudaErrorMemoryAllocation;
  std::lock_guard<std::mutex> lock(::emu::registry_mu());
  ::emu::host_allocs()[static_cast<const char*>(*p)] = b;
  return cudaSuccess;
}
inline cudaError_t cudaFreeHost(void* p) {
  ::emu::trace_sync("cudaFreeHost");
  ::emu::flush_all();  // as cudaFree
  {
    std::lock_guard<std::mutex> lock(::emu::registry_mu());
    ::emu::host_allocs().erase(static_cast<const char*>(p));
  }
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* a, const void* p) {
  a->type = cudaMemoryTypeUnregistered;
  a->device = ::emu::device_of(p);
  if (a->device >= 0) {
    a->type = cudaMemoryTypeDevice;
    return cudaSuccess;
  }
  a->device = -1;
  if (::emu::pinned(p)) a->type = cudaMemoryTypeHost;
  return cudaSuccess;
}
// Copies: both ends must be host memory or the current device's memory. cudaMemcpy runs on the
// null stream: at once, without waiting for the (non-blocking) streams.
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t b, cudaMemcpyKind) {
  if (cudaError_t e = ::emu::check_ptr(d, "a copy's destination")) return e;
  if (cudaError_t e = ::emu::check_ptr(s, "a copy's source")) return e;
  std::lock_guard<std::recursive_mutex> lock(::emu::exec_mu());
  std::memmove(d, s, b);
  return cudaSuccess;
}
// Queued on st, with CUDA's rules for pageable host memory: a pageable source is staged at once
// (the host may reuse it on return) and written in stream order; a pageable destination is
// written before the call returns, after st's earlier work.
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t b, cudaMemcpyKind k, cudaStream_t st = nullptr) {
  if (cudaError_t e = ::emu::check_handle(st, "an asynchronous copy")) return e;
  if (cudaError_t e = ::emu::check_ptr(d, "a copy's destination")) return e;
  if (cudaError_t e = ::emu::check_ptr(s, "a copy's source")) return e;
  if (::emu::device_of(d) < 0 && !::emu::pinned(d)) {
    ::emu::flush(st);
    return cudaMemcpy(d, s, b, k);
  }
  if (::emu::device_of(s) < 0 && !::emu::pinned(s)) {
    auto staged = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(s),
                                                               static_cast<const unsigned char*>(s) + b);
    ::emu::submit(st, [=] { std::memmove(d, staged->data(), b); });
    return cudaSuccess;
  }
  ::emu::submit(st, [=] { std::memmove(d, s, b); });
  return cudaSuccess;
}
// Peer copies: dst must be dstDevice's memory and src srcDevice's (any current device; the
// stream must be the current device's). Every device pair may access each other.
inline cudaError_t cudaMemcpyPeerAsync(void* d, int dd, const void* s, int sd, size_t b, cudaStream_t st = nullptr) {
  if (cudaError_t e = ::emu::check_handle(st, "a peer copy")) return e;
  if (::emu::device_of(d) != dd || ::emu::device_of(s) != sd) {
    std::fprintf(stderr, "emu: a peer copy from device %d to device %d was given memory of devices %d and %d\n", sd,
                 dd, ::emu::device_of(s), ::emu::device_of(d));
    return cudaErrorInvalidDevice;
  }
  ::emu::submit(st, [=] { std::memmove(d, s, b); });
  return cudaSuccess;
}
inline cudaError_t cudaDeviceCanAccessPeer(int* can, int device, int peer) {
  if (!emu_valid_device(device) || !emu_valid_device(peer)) return cudaErrorInvalidDevice;
  *can = device != peer;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceEnablePeerAccess(int peer, unsigned) {
  static std::mutex mu;
  static bool enabled[::emu::kMaxDevices][::emu::kMaxDevices] = {};
  if (!emu_valid_device(peer) || peer == ::emu::current_device()) return cudaErrorInvalidDevice;
  std::lock_guard<std::mutex> lock(mu);
  bool& e = enabled[::emu::current_device()][peer];
  if (e) return cudaErrorPeerAccessAlreadyEnabled;
  e = true;
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* d, int v, size_t b) {
  if (cudaError_t e = ::emu::check_ptr(d, "a memset")) return e;
  std::lock_guard<std::recursive_mutex> lock(::emu::exec_mu());
  std::memset(d, v, b);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* d, int v, size_t b, cudaStream_t st = nullptr) {
  if (cudaError_t e = ::emu::check_handle(st, "an asynchronous memset")) return e;
  if (cudaError_t e = ::emu::check_ptr(d, "a memset")) return e;
  ::emu::submit(st, [=] { std::memset(d, v, b); });
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  std::lock_guard<std::recursive_mutex> lock(::emu::exec_mu());
  *s = new emu_stream{::emu::current_device()};
  ::emu::all_streams().push_back(*s);
  return cudaSuccess;
}
// Work still queued runs first (CUDA lets it finish); the stream is kept, flagged.
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (s == nullptr || s->destroyed) return cudaErrorInvalidResourceHandle;
  ::emu::flush(s);
  s->destroyed = true;
  return cudaSuccess;
}
// Runs everything queued on every stream (the emulation does not tell devices apart here).
inline cudaError_t cudaDeviceSynchronize() {
  ::emu::flush_all();
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (s != nullptr && s->destroyed) return cudaErrorInvalidResourceHandle;
  ::emu::flush(s);
  return cudaSuccess;
}
// The wait is queued on s: when s reaches it, e's stream runs up to where e was recorded.
inline cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
  if (e == nullptr || (s != nullptr && s->destroyed)) return cudaErrorInvalidResourceHandle;
  emu_stream* es = e->s;
  const uint64_t at = e->at;
  ::emu::submit(s, [es, at] { ::emu::flush(es, at); });
  return cudaSuccess;
}
inline cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new emu_event{::emu::current_device()};
  return cudaSuccess;
}
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
  if (e == nullptr) return cudaErrorInvalidResourceHandle;
  delete e;
  return cudaSuccess;
}
// Recording needs the event and the stream on the current device (as CUDA requires). The event
// marks the operations queued on s so far.
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr) {
  if (cudaError_t r = ::emu::check_handle(s, "cudaEventRecord")) return r;
  if (cudaError_t r = ::emu::check_handle(e, "cudaEventRecord")) return r;
  std::lock_guard<std::recursive_mutex> lock(::emu::exec_mu());
  e->s = s;
  e->at = s ? s->queued : 0;
  return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  if (e == nullptr) return cudaErrorInvalidResourceHandle;
  ::emu::flush(e->s, e->at);
  return cudaSuccess;
}
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  cudaEventSynchronize(a);
  cudaEventSynchronize(b);
  *ms = 0;
  return cudaSuccess;
}
