// The emulation's cuBLAS: the five entry points the plugin resolves, as plain loops (column-major,
// like cuBLAS). tf32 rounds both operands to 10 mantissa bits; bf16 reads bf16 inputs and may
// write a bf16 output. Loaded by the plugin through SAEKIT_CUBLAS, which also exercises its
// dlopen path.
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {
float tf32(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu;
  std::memcpy(&f, &u, 4);
  return f;
}
float bf16(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
float load(const void* p, int type, int64_t i, bool round_tf32) {
  if (type == 14) return bf16(static_cast<const uint16_t*>(p)[i]);
  float f = static_cast<const float*>(p)[i];
  return round_tf32 ? tf32(f) : f;
}
uint16_t to_bf16(float f) {  // round to nearest even (finite values)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
// C is float32 (ct 0) or bf16 (ct 14, written rounded to nearest; beta applies to its bf16 value).
int gemm(int ta, int tb, int m, int n, int k, float alpha, const void* A, int at, int lda, const void* B, int bt,
         int ldb, float beta, void* C, int ct, int ldc, bool r) {
  if (m < 0 || n < 0 || k < 0) return 7;
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      float s = 0.0f;
      for (int p = 0; p < k; ++p) {
        float a = load(A, at, ta ? int64_t(p) + int64_t(i) * lda : int64_t(i) + int64_t(p) * lda, r);
        float b = load(B, bt, tb ? int64_t(j) + int64_t(p) * ldb : int64_t(p) + int64_t(j) * ldb, r);
        s += a * b;
      }
      const int64_t at_c = int64_t(i) + int64_t(j) * ldc;
      if (ct == 14) {
        uint16_t& c = static_cast<uint16_t*>(C)[at_c];
        c = to_bf16(beta == 0.0f ? alpha * s : alpha * s + beta * bf16(c));
      } else {
        float& c = static_cast<float*>(C)[at_c];
        c = beta == 0.0f ? alpha * s : alpha * s + beta * c;
      }
    }
  return 0;
}
}  // namespace

extern "C" {
// Each handle is a distinct object, so the emulation can tell handles (and their devices) apart.
int cublasCreate_v2(void** h) {
  *h = new int(0);
  return 0;
}
int cublasDestroy_v2(void* h) {
  delete static_cast<int*>(h);
  return 0;
}
int cublasSetStream_v2(void*, void*) { return 0; }
int cublasGetVersion_v2(void*, int* v) {
  *v = 130000;
  return 0;
}
int cublasSgemm_v2(void*, int ta, int tb, int m, int n, int k, const float* alpha, const float* A, int lda,
                   const float* B, int ldb, const float* beta, float* C, int ldc) {
  return gemm(ta, tb, m, n, k, *alpha, A, 0, lda, B, 0, ldb, *beta, C, 0, ldc, false);
}
int cublasGemmEx(void*, int ta, int tb, int m, int n, int k, const void* alpha, const void* A, int at, int lda,
                 const void* B, int bt, int ldb, const void* beta, void* C, int ct, int ldc, int compute, int) {
  if (ct != 0 && ct != 14) return 15;
  return gemm(ta, tb, m, n, k, *static_cast<const float*>(alpha), A, at, lda, B, bt, ldb,
              *static_cast<const float*>(beta), C, ct, ldc, compute == 77);
}
}
