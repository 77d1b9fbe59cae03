#include "cublas_dl.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <vector>

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

}  // namespace

const Cublas* cublas(std::string* why) {
  std::call_once(g_once, load);
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
