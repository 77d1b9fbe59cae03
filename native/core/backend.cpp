#include "backend.h"

#include <cstdio>
#include <exception>
#include <new>

namespace sk {

void status_set(sk_status* st, ErrorCode code, const std::string& message) {
  st->code = int(code) + 1;
  std::snprintf(st->message, sizeof(st->message), "%s", message.c_str());
}

void status_from_exception(sk_status* st) {
  try {
    throw;
  } catch (const Error& e) {
    status_set(st, e.code(), e.what());
  } catch (const std::bad_alloc&) {
    status_set(st, ErrorCode::Memory, "out of memory");
  } catch (const std::exception& e) {
    status_set(st, ErrorCode::Internal, e.what());
  } catch (...) {
    status_set(st, ErrorCode::Internal, "unknown native exception");
  }
}

void status_throw(int rc, const sk_status& st) {
  if (rc == 0) return;
  int code = st.code - 1;
  if (code < int(ErrorCode::Arg) || code > int(ErrorCode::Internal)) code = int(ErrorCode::Internal);
  throw Error(ErrorCode(code), st.message);
}

void Backend::unsupported(const char* op) const {
  throw Error(ErrorCode::Device, fmt("op ", op, " is not supported by the ", name(), " backend"));
}

void Backend::set_threads(int threads) {
  if (!b_.iface->set_threads) return;  // (optional): a backend without a thread pool ignores it
  sk_status st{};
  status_throw(b_.iface->set_threads(b_.ctx, &st, threads), st);
}

void Backend::convert(void* dst, DType dst_type, const void* src, DType src_type, int64_t n) {
  if (!b_.iface->convert) unsupported("convert");
  sk_status st{};
  status_throw(b_.iface->convert(b_.ctx, &st, dst, sk_dtype(dst_type), src, sk_dtype(src_type), n), st);
}

void Backend::fill_uniform(void* dst, DType type, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset) {
  if (!b_.iface->fill_uniform) unsupported("fill_uniform");
  sk_status st{};
  status_throw(b_.iface->fill_uniform(b_.ctx, &st, dst, sk_dtype(type), n, seed, stream, offset), st);
}

void Backend::fill_normal(void* dst, DType type, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset) {
  if (!b_.iface->fill_normal) unsupported("fill_normal");
  sk_status st{};
  status_throw(b_.iface->fill_normal(b_.ctx, &st, dst, sk_dtype(type), n, seed, stream, offset), st);
}

void Backend::gemm_f32(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                       int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (!b_.iface->gemm_f32) unsupported("gemm_f32");
  sk_status st{};
  status_throw(b_.iface->gemm_f32(b_.ctx, &st, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc), st);
}

}  // namespace sk
