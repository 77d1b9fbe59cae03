#include "tensor.h"

#include <cstdlib>
#include <new>

#include "error.h"

namespace sk {

std::string Device::name() const {
  if (kind == DeviceKind::CPU) return "cpu";
  return fmt("cuda:", index);
}

std::shared_ptr<Storage> Storage::allocate(size_t bytes, Device device) {
  SK_CHECK(device.kind == DeviceKind::CPU, ErrorCode::Device, "Storage::allocate: device ", device.name(),
           " is not available in this build");
  size_t rounded = ((bytes == 0 ? 1 : bytes) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  SK_CHECK(p != nullptr, ErrorCode::Memory, "could not allocate ", bytes, " bytes of host memory");
  return std::shared_ptr<Storage>(new Storage(p, bytes, device));
}

Storage::~Storage() { std::free(data_); }

int64_t shape_numel(const std::vector<int64_t>& shape, const char* what) {
  int64_t n = 1;
  for (int64_t d : shape) {
    SK_CHECK(d >= 0, ErrorCode::Shape, "Expected non-negative dimensions for ", what, " but received shape ",
             shape_str(shape));
    // Keep byte counts of any dtype within int64 (and far below any real allocation limit).
    SK_CHECK(d == 0 || n <= (int64_t(1) << 60) / d, ErrorCode::Shape, "Expected fewer than 2^60 elements for ",
             what, " but received shape ", shape_str(shape));
    n *= d;
  }
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

Tensor Tensor::empty(DType dtype, std::vector<int64_t> shape, Device device) {
  Tensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.storage = Storage::allocate(t.nbytes(), device);
  return t;
}

}  // namespace sk
