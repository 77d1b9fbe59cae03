#include "cublas_dl.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <vector>

#include "core/elf_check.h"

#ifdef SK_EMU_DEVICE_CHECKS
#include <cstring>
#include <map>

#include <cuda_runtime.h>  // the CPU emulation's (emu/build.sh defines SK_EMU_DEVICE_CHECKS)
#endif

namespace sk::cuda {

namespace {

std::once_flag g_once;
Cublas g_lib;
bool g_ok = false;
std::string g_why;

template <typename F>
bool resolve(void* h, const char* name, F* out, std::string* why) {
  *out = reinterpret_cast<F>(dlsym(h, name));
  if (*out == nullptr) *why += std::string("; ") + name + " missing";
  return *out != nullptr;
}

void load() {
  std::vector<std::string> names;
  if (const char* env = std::getenv("SAEKIT_CUBLAS")) names.push_back(env);
  // Newest first; the unversioned name last (a development symlink).
  names.insert(names.end(), {"libcublas.so.13", "libcublas.so.12", "libcublas.so"});
  std::string tried;
  for (const std::string& n : names) {
    // A path (SAEKIT_CUBLAS) is checked first: a truncated library would kill the process with
    // SIGBUS inside dlopen. Bare names are found by the loader and cannot be checked here.
    if (n.find('/') != std::string::npos) {
      if (std::string why = elf_damage(n); !why.empty()) {
        tried += (tried.empty() ? "" : "; ") + n + " " + why;
        continue;
      }
    }
    void* h = dlopen(n.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* e = dlerror();
      tried += (tried.empty() ? "" : "; ") + n + ": " + (e ? e : "not found");
      continue;
    }
    std::string missing;
    bool ok = resolve(h, "cublasCreate_v2", &g_lib.create, &missing) &&
              resolve(h, "cublasDestroy_v2", &g_lib.destroy, &missing) &&
              resolve(h, "cublasSetStream_v2", &g_lib.set_stream, &missing) &&
              resolve(h, "cublasGetVersion_v2", &g_lib.get_version, &missing) &&
              resolve(h, "cublasSgemm_v2", &g_lib.sgemm, &missing) &&
              resolve(h, "cublasGemmEx", &g_lib.gemm_ex, &missing);
    if (!ok) {
      tried += (tried.empty() ? "" : "; ") + n + missing;
      dlclose(h);
      continue;
    }
    g_lib.path = n;
    g_ok = true;
    return;
  }
  g_why = "the cuBLAS library was not found (tried " + tried +
          "). Install the CUDA runtime libraries (libcublas 12 or 13), add their folder to LD_LIBRARY_PATH, "
          "or set SAEKIT_CUBLAS to the library file";
}

#ifdef SK_EMU_DEVICE_CHECKS
// The emulation checks a GEMM like a kernel launch: the handle (made with some device current)
// must be used with that device current, and A, B and C must not be another device's memory;
// otherwise CUBLAS_STATUS_EXECUTION_FAILED, with a line on stderr from the emulation.
// GEMMs are queued on the handle's stream like kernels (emu/cuda_runtime.h: deferred streams),
// with alpha and beta read when the call is made, as cuBLAS's host pointer mode does.
Cublas g_real;
// Per handle: the device current when it was made and the stream set on it (null until then).
struct HandleInfo {
  int device = -1;
  cudaStream_t stream = nullptr;
};
std::mutex g_handles_mu;
std::map<cublasHandle_t, HandleInfo> g_handles;

HandleInfo info_of(cublasHandle_t h) {
  std::lock_guard<std::mutex> lock(g_handles_mu);
  auto it = g_handles.find(h);
  return it == g_handles.end() ? HandleInfo{} : it->second;
}

// Checks a GEMM's handle and operands; on success *stream is the handle's stream.
cublasStatus_t emu_check(cublasHandle_t h, const void* A, const void* B, const void* C, cudaStream_t* stream) {
  const HandleInfo hi = info_of(h);
  if (hi.device != ::emu::current_device()) {
    std::fprintf(stderr, "emu: a cuBLAS handle of device %d is used while device %d is current\n", hi.device,
                 ::emu::current_device());
    return 13;
  }
  for (const void* p : {A, B, C})
    if (::emu::check_ptr(p, "a cuBLAS GEMM operand") != cudaSuccess) return 13;
  *stream = hi.stream;
  return 0;
}
cublasStatus_t emu_create(cublasHandle_t* h) {
  cublasStatus_t s = g_real.create(h);
  if (s == 0) {
    std::lock_guard<std::mutex> lock(g_handles_mu);
    g_handles[*h] = HandleInfo{::emu::current_device(), nullptr};
  }
  return s;
}
cublasStatus_t emu_destroy(cublasHandle_t h) {
  ::emu::flush(info_of(h).stream);
  {
    std::lock_guard<std::mutex> lock(g_handles_mu);
    g_handles.erase(h);
  }
  return g_real.destroy(h);
}
cublasStatus_t emu_set_stream(cublasHandle_t h, void* stream) {
  cublasStatus_t s = g_real.set_stream(h, stream);
  if (s == 0) {
    std::lock_guard<std::mutex> lock(g_handles_mu);
    auto it = g_handles.find(h);
    if (it != g_handles.end()) it->second.stream = static_cast<cudaStream_t>(stream);
  }
  return s;
}
cublasStatus_t emu_sgemm(cublasHandle_t h, int ta, int tb, int m, int n, int k, const float* alpha, const float* A,
                         int lda, const float* B, int ldb, const float* beta, float* C, int ldc) {
  cudaStream_t st = nullptr;
  if (cublasStatus_t s = emu_check(h, A, B, C, &st)) return s;
  const float al = *alpha, be = *beta;
  ::emu::submit(st, [=] { g_real.sgemm(h, ta, tb, m, n, k, &al, A, lda, B, ldb, &be, C, ldc); });
  return 0;
}
cublasStatus_t emu_gemm_ex(cublasHandle_t h, int ta, int tb, int m, int n, int k, const void* alpha, const void* A,
                           int at, int lda, const void* B, int bt, int ldb, const void* beta, void* C, int ct, int ldc,
                           int compute, int algo) {
  cudaStream_t st = nullptr;
  if (cublasStatus_t s = emu_check(h, A, B, C, &st)) return s;
  // alpha and beta are doubles for the 64-bit compute types (70, 71), floats otherwise.
  const size_t sz = compute == 70 || compute == 71 ? 8 : 4;
  unsigned char al[8] = {0}, be[8] = {0};
  std::memcpy(al, alpha, sz);
  std::memcpy(be, beta, sz);
  ::emu::submit(st, [=] { g_real.gemm_ex(h, ta, tb, m, n, k, al, A, at, lda, B, bt, ldb, be, C, ct, ldc, compute, algo); });
  return 0;
}
void install_emu_checks() {
  g_real = g_lib;
  g_lib.create = emu_create;
  g_lib.destroy = emu_destroy;
  g_lib.set_stream = emu_set_stream;
  g_lib.sgemm = emu_sgemm;
  g_lib.gemm_ex = emu_gemm_ex;
}
#endif

}  // namespace

const Cublas* cublas(std::string* why) {
  std::call_once(g_once, [] {
    load();
#ifdef SK_EMU_DEVICE_CHECKS
    if (g_ok) install_emu_checks();
#endif
  });
  if (!g_ok && why) *why = g_why;
  return g_ok ? &g_lib : nullptr;
}

const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case 0: return "CUBLAS_STATUS_SUCCESS";
    case 1: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case 3: return "CUBLAS_STATUS_ALLOC_FAILED";
    case 7: return "CUBLAS_STATUS_INVALID_VALUE";
    case 8: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case 11: return "CUBLAS_STATUS_MAPPING_ERROR";
    case 13: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case 14: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case 15: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case 16: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_UNKNOWN";
  }
}

}  // namespace sk::cuda
