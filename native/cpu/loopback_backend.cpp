// The loopback device's backend tables (sae_loopback.h): the CPU backend's kernels behind one
// table per loopback device, with every allocation tagged with the device that made it. Each slot
// checks that the device memory it is given (destinations, sources, GEMM operands) was allocated
// by its own device's table, so a tensor op dispatched to the wrong device's table, or a device
// pointer taken for a host one, fails with ERR_SAEKIT_DEVICE in the ordinary test run; the values
// it computes are the CPU's, bit for bit.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "../core/error.h"
#include "cpu_backend.h"
#include "sae_loopback.h"

namespace sk::cpu {

namespace {

// One context per loopback device: its index (the N of cuda:N). Filled once, read-only after.
struct LoopCtx {
  int device = 0;
};
LoopCtx* ctx_of(int device) {
  static LoopCtx* ctxs = [] {
    static LoopCtx all[kMaxLoopbackDevices];
    for (int d = 0; d < kMaxLoopbackDevices; ++d) all[d].device = d;
    return all;
  }();
  return &ctxs[device];
}

// Every live loopback allocation: start -> (bytes, device). Allocation runs on JS threads, the
// other slots on the executor thread. Never destroyed: the executor keeps running ops after exit()
// has begun, until its drain (core/executor.cpp) runs, and statics first used after the executor
// started are destroyed before that (a map destroyed under a running op was a use after free).
struct Alloc {
  size_t bytes;
  int device;
};
std::mutex g_mu;
std::map<const char*, Alloc>& allocs() {
  static auto* m = new std::map<const char*, Alloc>;
  return *m;
}

int dev_of(void* ctx) { return static_cast<LoopCtx*>(ctx)->device; }
const sk_backend_i& cpu_iface() { return *cpu_backend().iface; }

// Throws ERR_SAEKIT_DEVICE unless [p, p + bytes) lies in one allocation of `device`.
void check_mine(int device, const void* p, size_t bytes, const char* what) {
  const char* c = static_cast<const char*>(p);
  std::lock_guard<std::mutex> lock(g_mu);
  auto& m = allocs();
  auto it = m.upper_bound(c);
  if (it != m.begin()) {
    --it;
    const size_t cap = it->second.bytes == 0 ? 1 : it->second.bytes;
    if (c >= it->first && c + bytes <= it->first + cap) {
      SK_CHECK(it->second.device == device, ErrorCode::Device, "loopback cuda:", device, " was given memory of cuda:",
               it->second.device, " for ", what, " (an op dispatched to the wrong device's table)");
      return;
    }
  }
  throw Error(ErrorCode::Device, fmt("loopback cuda:", device, " was given ", bytes, " bytes at ", p, " for ", what,
                                     ", which are not memory of any loopback device (host memory, or freed)"));
}

// Runs the checks in `f`: 0, or 1 with `st` filled from the exception (SK_SLOT returns from the
// function it is in, so the checks made before delegating to the CPU table go through this).
template <class F>
int checked(sk_status* st, F&& f) {
  SK_SLOT(st, f());
}

size_t dtype_bytes(sk_dtype t) { return t == SK_F32 || t == SK_I32 ? 4 : 2; }

// ---- slots ----------------------------------------------------------------------------------
const char* lb_name(void*) { return "loopback"; }

int lb_alloc(void* ctx, sk_status* st, void** out, size_t bytes) {
  if (int rc = cpu_iface().alloc(nullptr, st, out, bytes)) return rc;
  return checked(st, [&] {
    std::lock_guard<std::mutex> lock(g_mu);
    allocs()[static_cast<const char*>(*out)] = Alloc{bytes, dev_of(ctx)};
  });
}

void lb_free(void* ctx, void* ptr) {
  if (!ptr) return;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = allocs().find(static_cast<const char*>(ptr));
    if (it == allocs().end() || it->second.device != dev_of(ctx)) {
      // Storage::adopt frees through the table that allocated; anything else is a saekit bug.
      std::fprintf(stderr, "saekit loopback: cuda:%d's free was given %p, %s\n", dev_of(ctx), ptr,
                   it == allocs().end() ? "not a live loopback allocation" : "memory of another device");
      std::abort();
    }
    allocs().erase(it);
  }
  cpu_iface().free(nullptr, ptr);
}

int lb_upload(void* ctx, sk_status* st, void* dst, const void* src, size_t bytes) {
  if (checked(st, [&] { check_mine(dev_of(ctx), dst, bytes, "upload's destination"); })) return 1;
  return cpu_iface().upload(nullptr, st, dst, src, bytes);
}

int lb_download(void* ctx, sk_status* st, void* dst, const void* src, size_t bytes) {
  if (checked(st, [&] { check_mine(dev_of(ctx), src, bytes, "download's source"); })) return 1;
  return cpu_iface().download(nullptr, st, dst, src, bytes);
}

int lb_set_threads(void*, sk_status* st, int threads) { return cpu_iface().set_threads(nullptr, st, threads); }

int lb_convert(void* ctx, sk_status* st, void* dst, sk_dtype dt, const void* src, sk_dtype stype, int64_t n) {
  const int rc = checked(st, [&] {
    if (n <= 0) return;
    check_mine(dev_of(ctx), dst, size_t(n) * dtype_bytes(dt), "convert's destination");
    check_mine(dev_of(ctx), src, size_t(n) * dtype_bytes(stype), "convert's source");
  });
  return rc ? rc : cpu_iface().convert(nullptr, st, dst, dt, src, stype, n);
}

int lb_fill_uniform(void* ctx, sk_status* st, void* dst, sk_dtype t, int64_t n, uint64_t seed, uint64_t stream,
                    uint64_t offset) {
  const int rc = checked(st, [&] {
    if (n > 0) check_mine(dev_of(ctx), dst, size_t(n) * dtype_bytes(t), "fill_uniform's destination");
  });
  return rc ? rc : cpu_iface().fill_uniform(nullptr, st, dst, t, n, seed, stream, offset);
}

int lb_fill_normal(void* ctx, sk_status* st, void* dst, sk_dtype t, int64_t n, uint64_t seed, uint64_t stream,
                   uint64_t offset) {
  const int rc = checked(st, [&] {
    if (n > 0) check_mine(dev_of(ctx), dst, size_t(n) * dtype_bytes(t), "fill_normal's destination");
  });
  return rc ? rc : cpu_iface().fill_normal(nullptr, st, dst, t, n, seed, stream, offset);
}

// Operands are checked by their first element (the CPU GEMM reads them with their strides).
int lb_gemm_f32(void* ctx, sk_status* st, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const int rc = checked(st, [&] {
    if (M <= 0 || N <= 0) return;
    check_mine(dev_of(ctx), C, 4, "gemm's C");
    if (K <= 0) return;
    check_mine(dev_of(ctx), A, 4, "gemm's A");
    check_mine(dev_of(ctx), B, 4, "gemm's B");
  });
  return rc ? rc : cpu_iface().gemm_f32(nullptr, st, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

const sk_backend_i kLoopbackBackend = {
    /* .api_version  = */ SK_BACKEND_API_VERSION,
    /* .name         = */ lb_name,
    /* .alloc        = */ lb_alloc,
    /* .free         = */ lb_free,
    /* .upload       = */ lb_upload,
    /* .download     = */ lb_download,
    /* .set_threads  = */ lb_set_threads,
    /* .convert      = */ lb_convert,
    /* .fill_uniform = */ lb_fill_uniform,
    /* .fill_normal  = */ lb_fill_normal,
    /* .gemm_f32     = */ lb_gemm_f32,
};

}  // namespace

int loopback_copy_peer(int dst_device, void* dst, int src_device, const void* src, size_t bytes, sk_status* st) {
  SK_SLOT(st, {
    if (bytes == 0) return 0;
    check_mine(src_device, src, bytes, "a peer copy's source");
    check_mine(dst_device, dst, bytes, "a peer copy's destination");
    std::memcpy(dst, src, bytes);
  });
}

int loopback_device_count(std::string* error) {
  const char* env = std::getenv("SAEKIT_DEVICE_LOOPBACK_DEVICES");
  if (env == nullptr || *env == '\0') return 1;
  char* end = nullptr;
  const long n = std::strtol(env, &end, 10);
  if (*end != '\0' || n < 1 || n > kMaxLoopbackDevices) {
    if (error)
      *error = fmt("Expected SAEKIT_DEVICE_LOOPBACK_DEVICES to be an integer between 1 and ", kMaxLoopbackDevices,
                   " but received '", env, "'");
    return 0;
  }
  return int(n);
}

sk_backend loopback_backend(int device) {
  SK_CHECK(device >= 0 && device < kMaxLoopbackDevices, ErrorCode::Device, "Expected a loopback device between 0 and ",
           kMaxLoopbackDevices - 1, " but received ", device);
  cpu_backend();  // the CPU backend's context (thread pool) exists before any slot runs
  return sk_backend{&kLoopbackBackend, ctx_of(device)};
}

}  // namespace sk::cpu
