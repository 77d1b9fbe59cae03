#include "backend.h"

#include <cstdio>
#include <exception>
#include <new>

namespace sk {

void status_set(sk_status* st, ErrorCode code, const std::string& message, int64_t row) {
  st->code = int(code) + 1;
  std::snprintf(st->message, sizeof(st->message), "%s", message.c_str());
  st->row = row;
}

void status_from_exception(sk_status* st) {
  try {
    throw;
  } catch (const Error& e) {
    status_set(st, e.code(), e.what(), e.row());
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
  throw Error(ErrorCode(code), utf8_whole(st.message, sizeof(st.message)), st.row >= 0 ? st.row : -1);
}

void Backend::unsupported(const char* op) const {
  throw Error(ErrorCode::Device, fmt("op ", op, " is not supported by the ", name(), " backend"));
}

void* Backend::alloc(size_t bytes) {
  if (!b_.iface->alloc || !b_.iface->free) unsupported("alloc");
  sk_status st{};
  void* p = nullptr;
  status_throw(b_.iface->alloc(b_.ctx, &st, &p, bytes), st);
  return p;
}

void Backend::free(void* ptr) {
  if (ptr && b_.iface->free) b_.iface->free(b_.ctx, ptr);
}

void Backend::upload(void* dst, const void* host_src, size_t bytes) {
  if (!b_.iface->upload) unsupported("upload");
  sk_status st{};
  status_throw(b_.iface->upload(b_.ctx, &st, dst, host_src, bytes), st);
}

void Backend::download(void* host_dst, const void* src, size_t bytes) {
  if (!b_.iface->download) unsupported("download");
  sk_status st{};
  status_throw(b_.iface->download(b_.ctx, &st, host_dst, src, bytes), st);
}

Tensor Backend::empty(DType dtype, std::vector<int64_t> shape, Device device) {
  Tensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  size_t bytes = t.nbytes();
  void* p = alloc(bytes);
  t.storage = Storage::adopt(p, bytes, device, b_.iface->free, b_.ctx);
  return t;
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
