// The CUDA backend plugin's entry points (C ABI, see native/core/plugin.h) and the backend table
// (native/core/backend.h): memory, conversions, Philox fills and the float32 GEMM (cuBLAS).
// Every slot runs on the context's stream and returns when its work is complete, so the
// executor's FIFO order holds without other synchronisation.
#include <cuda_runtime.h>

#include <cmath>
#include <algorithm>
#include <cstdio>
#include <memory>
#include <mutex>

#include "common.cuh"
#include "core/backend.h"
#include "core/half.h"
#include "core/philox.h"
#include "cublas_dl.h"
#include "kernels.h"

#define SK_EXPORT extern "C" __attribute__((visibility("default")))

namespace sk::cuda {
namespace {

// Devices older than this have no machine code or PTX in the fatbin (see CMakeLists.txt).
constexpr int kMinMajor = 8;

struct BackendCtx {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  const Cublas* lib = nullptr;
};

void use(const BackendCtx* c) { SK_CUDA(cudaSetDevice(c->device)); }
void finish(const BackendCtx* c, const char* what) {
  check(cudaGetLastError(), what);
  check(cudaStreamSynchronize(c->stream), what);
}

// ---- element-wise kernels -----------------------------------------------------------------
__device__ __forceinline__ float load_f32(const void* src, int t, int64_t i) {
  switch (t) {
    case SK_F32: return static_cast<const float*>(src)[i];
    case SK_BF16: return bf16_to_f32(static_cast<const uint16_t*>(src)[i]);
    case SK_F16: return f16_to_f32(static_cast<const uint16_t*>(src)[i]);
    default: return float(static_cast<const int32_t*>(src)[i]);  // int32 -> float32 rounds to nearest
  }
}
__device__ __forceinline__ int32_t f32_to_i32_dev(float f) {
  if (f != f) return 0;
  if (f >= 2147483648.0f) return INT32_MAX;
  if (f <= -2147483648.0f) return INT32_MIN;
  return int32_t(f);  // truncates toward zero
}
__device__ __forceinline__ void store_f32(void* dst, int t, int64_t i, float f) {
  switch (t) {
    case SK_F32: static_cast<float*>(dst)[i] = f; break;
    case SK_BF16: static_cast<uint16_t*>(dst)[i] = f32_to_bf16(f); break;
    case SK_F16: static_cast<uint16_t*>(dst)[i] = f32_to_f16(f); break;
    default: static_cast<int32_t*>(dst)[i] = f32_to_i32_dev(f); break;
  }
}

// int32 -> float32 rounded to odd (toward zero, lowest bit set when inexact), so that narrowing
// it to a 16-bit type rounds the integer once, as the CPU backend does (native/cpu/convert.cpp).
__device__ __forceinline__ float i32_to_f32_odd(int32_t v) {
  float f = __int2float_rz(v);
  if (static_cast<long long>(f) != static_cast<long long>(v)) f = __uint_as_float(__float_as_uint(f) | 1u);
  return f;
}

__global__ void convert_kernel(void* dst, int dt, const void* src, int st, int64_t n) {
  const bool odd = st == SK_I32 && (dt == SK_BF16 || dt == SK_F16);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    store_f32(dst, dt, i, odd ? i32_to_f32_odd(static_cast<const int32_t*>(src)[i]) : load_f32(src, st, i));
}

// Element i is element (offset + i) of the (seed, stream) Philox stream; see core/philox.h.
__global__ void fill_kernel(void* dst, int t, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset, int normal) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint64_t pos = offset + uint64_t(i);
    Philox4x32 w = philox_block(seed, stream, pos / 4);
    int lane = int(pos % 4);
    double v;
    if (!normal) {
      v = philox_uniform(w.v[lane]);
    } else {
      const double kTwoPi = 6.283185307179586476925286766559;
      int p = lane >> 1;
      double r = sqrt(-2.0 * log(philox_uniform_open(w.v[2 * p])));
      double theta = kTwoPi * philox_uniform(w.v[2 * p + 1]);
      v = (lane & 1) ? r * sin(theta) : r * cos(theta);
    }
    // As the CPU fill: uniform values that round up to 1.0 in 16 bits keep the largest below it.
    if (t == SK_F32) {
      static_cast<float*>(dst)[i] = float(v);
    } else if (t == SK_BF16) {
      const uint16_t b = f32_to_bf16(float(v));
      static_cast<uint16_t*>(dst)[i] = !normal && b == 0x3f80 ? 0x3f7f : b;
    } else {
      const uint16_t h = f32_to_f16(float(v));
      static_cast<uint16_t*>(dst)[i] = !normal && h == 0x3c00 ? 0x3bff : h;
    }
  }
}

// ---- slots ----------------------------------------------------------------------------------
const char* be_name(void*) { return "cuda"; }

int be_alloc(void* ctx, sk_status* st, void** out, size_t bytes) {
  SK_CUDA_SLOT(st, {
    use(static_cast<BackendCtx*>(ctx));
    *out = nullptr;
    SK_CUDA(cudaMalloc(out, bytes == 0 ? 1 : bytes));
  });
}
void be_free(void* ctx, void* ptr) {
  if (!ptr) return;
  cudaSetDevice(static_cast<BackendCtx*>(ctx)->device);
  cudaFree(ptr);
}
int be_upload(void* ctx, sk_status* st, void* dst, const void* src, size_t bytes) {
  SK_CUDA_SLOT(st, {
    auto* c = static_cast<BackendCtx*>(ctx);
    use(c);
    if (bytes) SK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
    finish(c, "upload");
  });
}
int be_download(void* ctx, sk_status* st, void* dst, const void* src, size_t bytes) {
  SK_CUDA_SLOT(st, {
    auto* c = static_cast<BackendCtx*>(ctx);
    use(c);
    if (bytes) SK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    finish(c, "download");
  });
}
int be_convert(void* ctx, sk_status* st, void* dst, sk_dtype dt, const void* src, sk_dtype stype, int64_t n) {
  SK_CUDA_SLOT(st, {
    auto* c = static_cast<BackendCtx*>(ctx);
    SK_CHECK(n >= 0, ErrorCode::Arg, "convert: Expected n >= 0 but received ", n);
    SK_CHECK(dt >= SK_F32 && dt <= SK_I32 && stype >= SK_F32 && stype <= SK_I32, ErrorCode::DType,
             "convert: unknown dtype code ", int(dt), " or ", int(stype));
    use(c);
    if (n == 0) return 0;
    if (dt == stype) {
      size_t es = dt == SK_F32 || dt == SK_I32 ? 4 : 2;
      SK_CUDA(cudaMemcpyAsync(dst, src, size_t(n) * es, cudaMemcpyDeviceToDevice, c->stream));
    } else {
      convert_kernel<<<grid_for(n, 256), 256, 0, c->stream>>>(dst, int(dt), src, int(stype), n);
    }
    finish(c, "convert");
  });
}
int fill(void* ctx, sk_status* st, void* dst, sk_dtype t, int64_t n, uint64_t seed, uint64_t stream,
         uint64_t offset, int normal) {
  SK_CUDA_SLOT(st, {
    auto* c = static_cast<BackendCtx*>(ctx);
    SK_CHECK(n >= 0, ErrorCode::Arg, "random fill: Expected n >= 0 but received ", n);
    SK_CHECK(t == SK_F32 || t == SK_BF16 || t == SK_F16, ErrorCode::DType, "Expected a float dtype (float32, "
             "bfloat16 or float16) for a random fill but received ", t == SK_I32 ? "int32" : "an unknown dtype");
    use(c);
    if (n == 0) return 0;
    fill_kernel<<<grid_for(n, 256), 256, 0, c->stream>>>(dst, int(t), n, seed, stream, offset, normal);
    finish(c, normal ? "fill_normal" : "fill_uniform");
  });
}
int be_fill_uniform(void* ctx, sk_status* st, void* dst, sk_dtype t, int64_t n, uint64_t seed, uint64_t stream,
                    uint64_t offset) {
  return fill(ctx, st, dst, t, n, seed, stream, offset, 0);
}
int be_fill_normal(void* ctx, sk_status* st, void* dst, sk_dtype t, int64_t n, uint64_t seed, uint64_t stream,
                   uint64_t offset) {
  return fill(ctx, st, dst, t, n, seed, stream, offset, 1);
}

// Row-major C[M,N] = op(A) op(B) is column-major C^T[N,M] = op(B)^T op(A)^T: swap the operands.
int be_gemm_f32(void* ctx, sk_status* st, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  SK_CUDA_SLOT(st, {
    auto* c = static_cast<BackendCtx*>(ctx);
    SK_CHECK(M >= 0 && N >= 0 && K >= 0, ErrorCode::Shape, "gemm: Expected non-negative sizes but received M=", M,
             " N=", N, " K=", K);
    SK_CHECK(M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX && lda <= INT32_MAX && ldb <= INT32_MAX &&
             ldc <= INT32_MAX, ErrorCode::Shape, "gemm: cuBLAS takes 32-bit sizes; received M=", M, " N=", N, " K=", K);
    if (M == 0 || N == 0) return 0;
    use(c);
    cublasStatus_t s = c->lib->sgemm(c->blas, trans_b ? kOpT : kOpN, trans_a ? kOpT : kOpN, int(N), int(M), int(K),
                                     &alpha, B, int(ldb), A, int(lda), &beta, C, int(ldc));
    SK_CHECK(s == 0, ErrorCode::Device, "cublasSgemm failed: ", cublas_status_name(s), " (M=", M, " N=", N, " K=", K,
             " lda=", lda, " ldb=", ldb, " ldc=", ldc, ")");
    finish(c, "gemm_f32");
  });
}

const sk_backend_i kCudaBackend = {
    /* .api_version  = */ SK_BACKEND_API_VERSION,
    /* .name         = */ be_name,
    /* .alloc        = */ be_alloc,
    /* .free         = */ be_free,
    /* .upload       = */ be_upload,
    /* .download     = */ be_download,
    /* .set_threads  = */ nullptr,
    /* .convert      = */ be_convert,
    /* .fill_uniform = */ be_fill_uniform,
    /* .fill_normal  = */ be_fill_normal,
    /* .gemm_f32     = */ be_gemm_f32,
};

}  // namespace

std::string unavailable_reason(int* count_out) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (count_out) *count_out = 0;
  if (err == cudaErrorInsufficientDriver)
    return fmt("the NVIDIA driver is missing or older than this CUDA ", CUDART_VERSION / 1000, ".",
               (CUDART_VERSION % 1000) / 10, " build needs");
  if (err == cudaErrorNoDevice || (err == cudaSuccess && count == 0)) return "no CUDA device found";
  if (err != cudaSuccess) return fmt("CUDA initialisation failed: ", cudaGetErrorString(err));
  int usable = 0;
  std::string old;
  for (int d = 0; d < count; ++d) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, d) != cudaSuccess) continue;
    if (p.major >= kMinMajor) ++usable;
    else old = fmt("device ", d, " (", p.name, ") has compute capability ", p.major, ".", p.minor,
                   "; this build needs 8.0 or newer");
  }
  if (usable == 0) return old.empty() ? "no usable CUDA device" : old;
  std::string why;
  if (!cublas(&why)) return why;
  if (count_out) *count_out = count;
  return "";
}

std::string device_unusable(int device) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) return fmt("CUDA initialisation failed: ", cudaGetErrorString(err));
  if (device < 0 || device >= count)
    return fmt("Expected a CUDA device index between 0 and ", count - 1, " but received ", device);
  cudaDeviceProp p;
  err = cudaGetDeviceProperties(&p, device);
  if (err != cudaSuccess) return fmt("cudaGetDeviceProperties(", device, ") failed: ", cudaGetErrorString(err));
  if (p.major < kMinMajor)
    return fmt("cuda:", device, " (", p.name, ") has compute capability ", p.major, ".", p.minor,
               "; this build needs 8.0 or newer");
  return "";
}

}  // namespace sk::cuda

SK_EXPORT int sk_plugin_api_version(void) { return SK_BACKEND_API_VERSION; }

// The device count (usable or not: index N is cuda:N) when a usable device exists; otherwise 0
// and a reason naming the missing piece (driver, device or the cuBLAS library).
SK_EXPORT int sk_backend_score(char* reason, size_t len) {
  int count = 0;
  std::string why = sk::cuda::unavailable_reason(&count);
  if (!why.empty()) {
    if (reason && len) std::snprintf(reason, len, "%s", why.c_str());
    return 0;
  }
  if (reason && len) reason[0] = '\0';
  return count;
}

namespace sk::cuda {
namespace {

constexpr int kMaxDevices = 64;
std::mutex g_ctx_mu;
BackendCtx* g_ctxs[kMaxDevices] = {};
bool g_peer_tried[kMaxDevices][kMaxDevices] = {};

// Device `device`'s context, created on first use: its own non-blocking stream and cuBLAS handle
// (made with that device current). Contexts live until the process exits. Caller holds g_ctx_mu.
BackendCtx* context_for(int device) {
  SK_CHECK(device >= 0 && device < kMaxDevices, ErrorCode::Device, "Expected a CUDA device index between 0 and ",
           kMaxDevices - 1, " but received ", device);
  if (g_ctxs[device]) return g_ctxs[device];
  std::string why = unavailable_reason(nullptr);
  SK_CHECK(why.empty(), ErrorCode::Device, "CUDA is not available: ", why);
  why = device_unusable(device);
  SK_CHECK(why.empty(), ErrorCode::Device, why);
  // Built in a holder that frees what was made if a later step fails (every failed attempt
  // would otherwise leak a stream and a cuBLAS handle: failures are not cached).
  auto c = std::make_unique<BackendCtx>();
  c->device = device;
  c->lib = cublas(nullptr);
  struct Undo {
    BackendCtx* c;
    bool armed = true;
    ~Undo() {
      if (!armed) return;
      if (c->blas) c->lib->destroy(c->blas);
      if (c->stream) cudaStreamDestroy(c->stream);
    }
  } undo{c.get()};
  SK_CUDA(cudaSetDevice(c->device));
  SK_CUDA(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
  cublasStatus_t s = c->lib->create(&c->blas);
  if (s != 0) c->blas = nullptr;
  SK_CHECK(s == 0, ErrorCode::Device, "cublasCreate failed on cuda:", device, ": ", cublas_status_name(s));
  s = c->lib->set_stream(c->blas, c->stream);
  SK_CHECK(s == 0, ErrorCode::Device, "cublasSetStream failed on cuda:", device, ": ", cublas_status_name(s));
  undo.armed = false;
  g_ctxs[device] = c.release();
  return g_ctxs[device];
}

}  // namespace
}  // namespace sk::cuda

// Fills the backend table for `device` (0 <= device < cudaGetDeviceCount, compute capability 8.0
// or newer), with that device's context (context_for); every slot makes the context's device
// current before any work, because the executor thread runs ops for every device.
SK_EXPORT int sk_backend_init_device(int device, sk_backend* out, sk_status* st) {
  using namespace sk::cuda;
  SK_CUDA_SLOT(st, {
    std::lock_guard<std::mutex> lock(g_ctx_mu);
    BackendCtx* c = context_for(device);
    out->iface = &kCudaBackend;
    out->ctx = c;
  });
}

// Copies `bytes` from src (memory of src_device's table) to dst (memory of dst_device's table)
// on the destination's stream, returning when the copy is complete. Peer access is enabled once
// per device pair where the hardware allows it (NVLink or PCIe P2P: a direct DMA); otherwise the
// runtime stages the copy through host memory itself.
SK_EXPORT int sk_backend_copy_peer(int dst_device, void* dst, int src_device, const void* src, size_t bytes,
                                   sk_status* st) {
  using namespace sk::cuda;
  SK_CUDA_SLOT(st, {
    BackendCtx* c = nullptr;
    {
      std::lock_guard<std::mutex> lock(g_ctx_mu);
      c = context_for(dst_device);
      context_for(src_device);
      use(c);
      if (dst_device != src_device && !g_peer_tried[dst_device][src_device]) {
        g_peer_tried[dst_device][src_device] = true;
        int can = 0;
        if (cudaDeviceCanAccessPeer(&can, dst_device, src_device) == cudaSuccess && can) {
          // Where peer access cannot be enabled (already enabled, too many peers on a PCIe
          // machine), the copy below still works: the runtime stages it through host memory.
          (void)cudaDeviceEnablePeerAccess(src_device, 0);
          (void)cudaGetLastError();
        }
      }
    }
    if (bytes) SK_CUDA(cudaMemcpyPeerAsync(dst, dst_device, src, src_device, bytes, c->stream));
    finish(c, "copy_peer");
  });
}

// The backend table of device 0 (the first ABI; kept for saekit builds that predate
// sk_backend_init_device).
SK_EXPORT int sk_backend_init(sk_backend* out, sk_status* st) { return sk_backend_init_device(0, out, st); }
