// The Backend interface: the one place that lists every op a backend provides.
//
// A backend is a table of labelled function pointers plus an opaque context, in the manner of
// ggml's backend tables, so the CUDA plugin (a separately built shared library, see
// native/cuda/) can fill the same table through a C ABI. Slots marked (optional) may be null;
// the wrappers in backend.cpp then use the core fallback or throw ERR_SAEKIT_DEVICE naming the
// op and the backend. Every slot reports failure by returning a non-zero status and filling
// `sk_status`; the wrappers turn that into sk::Error, so callers just call and catch.
//
// Shape letters: M, N, K for GEMM (C[M,N] = op(A)[M,K] op(B)[K,N]); n for element counts.
// Arguments go outputs first, then inputs, then sizes. Pointers are backend memory.
#pragma once
#include <cstddef>
#include <cstdint>

extern "C" {

#define SK_BACKEND_API_VERSION 2  // 2: sk_status.row

typedef struct sk_status {
  int code;            // 0 = ok, else an sk::ErrorCode + 1
  char message[1024];  // NUL-terminated
  // An error about one row of an input: its index (JS: the error's `row`), else -1. C++ callers'
  // `sk_status st{}` starts at -1, so a slot that fails without setting it names no row.
#ifdef __cplusplus
  int64_t row = -1;
#else
  int64_t row;
#endif
} sk_status;

// dtype codes match sk::DType.
typedef enum sk_dtype { SK_F32 = 0, SK_BF16 = 1, SK_F16 = 2, SK_I32 = 3 } sk_dtype;

typedef struct sk_backend_i {
  int api_version;  // SK_BACKEND_API_VERSION of the code that filled the table
  /* .name          */ const char* (*name)(void* ctx);
  // ---- memory ------------------------------------------------------------------------------
  /* .alloc         */ int (*alloc)(void* ctx, sk_status* st, void** out, size_t bytes);
  /* .free          */ void (*free)(void* ctx, void* ptr);
  /* .upload        */ int (*upload)(void* ctx, sk_status* st, void* dst, const void* host_src, size_t bytes);
  /* .download      */ int (*download)(void* ctx, sk_status* st, void* host_dst, const void* src, size_t bytes);
  // ---- threads (optional) ------------------------------------------------------------------
  /* .set_threads   */ int (*set_threads)(void* ctx, sk_status* st, int threads);
  // ---- element-wise ------------------------------------------------------------------------
  // dst[n] (dst_type) = src[n] (src_type); float narrowing rounds to nearest even, exact
  // NaN/inf/subnormals; float -> int32 truncates toward zero, saturating, NaN -> 0.
  /* .convert       */ int (*convert)(void* ctx, sk_status* st, void* dst, sk_dtype dst_type, const void* src,
                                      sk_dtype src_type, int64_t n);
  // dst[n] = Philox stream (seed, stream) starting at element `offset`, as uniform [0,1) or
  // standard normal values; see core/philox.h for the exact layout.
  /* .fill_uniform  */ int (*fill_uniform)(void* ctx, sk_status* st, void* dst, sk_dtype type, int64_t n,
                                           uint64_t seed, uint64_t stream, uint64_t offset);
  /* .fill_normal   */ int (*fill_normal)(void* ctx, sk_status* st, void* dst, sk_dtype type, int64_t n,
                                          uint64_t seed, uint64_t stream, uint64_t offset);
  // ---- linear algebra ----------------------------------------------------------------------
  // C[M,N] = alpha op(A) op(B) + beta C, row-major, float32. A is [M,K] (or [K,M] if trans_a),
  // B is [K,N] (or [N,K] if trans_b). Leading dimensions are the stored row lengths.
  /* .gemm_f32      */ int (*gemm_f32)(void* ctx, sk_status* st, int trans_a, int trans_b, int64_t M, int64_t N,
                                       int64_t K, float alpha, const float* A, int64_t lda, const float* B,
                                       int64_t ldb, float beta, float* C, int64_t ldc);
} sk_backend_i;

typedef struct sk_backend {
  const sk_backend_i* iface;
  void* ctx;
} sk_backend;

}  // extern "C"

#include <cstring>
#include <string>

#include "error.h"
#include "tensor.h"

namespace sk {

// Fills `st` from an exception; used by backends to implement the C slots.
void status_from_exception(sk_status* st);
void status_set(sk_status* st, ErrorCode code, const std::string& message, int64_t row = -1);
// Throws sk::Error if `rc` is non-zero.
void status_throw(int rc, const sk_status& st);

// Typed wrappers over a backend table: check the slot, call it, throw on failure.
class Backend {
 public:
  explicit Backend(sk_backend b) : b_(b) {}
  const char* name() const { return b_.iface->name(b_.ctx); }
  const sk_backend& raw() const { return b_; }

  void* alloc(size_t bytes);
  void free(void* ptr);
  void upload(void* dst, const void* host_src, size_t bytes);
  void download(void* host_dst, const void* src, size_t bytes);
  // An uninitialised tensor in this backend's memory, recorded as living on `device`, freed
  // through this backend's free slot with its last reference.
  Tensor empty(DType dtype, std::vector<int64_t> shape, Device device);
  void set_threads(int threads);
  void convert(void* dst, DType dst_type, const void* src, DType src_type, int64_t n);
  void fill_uniform(void* dst, DType type, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset);
  void fill_normal(void* dst, DType type, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset);
  void gemm_f32(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

 private:
  [[noreturn]] void unsupported(const char* op) const;
  sk_backend b_;
};

}  // namespace sk

// Implements a backend slot body: runs `body`, turning any exception into a status.
#define SK_SLOT(st, ...)           \
  do {                             \
    try {                          \
      __VA_ARGS__;                 \
      return 0;                    \
    } catch (...) {                \
      ::sk::status_from_exception(st); \
      return 1;                    \
    }                              \
  } while (0)
