#include "tensor.h"

#include <cstdlib>
#include <new>

#include "aligned_memory.h"
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
  void* p = aligned_malloc(64, rounded);
  SK_CHECK(p != nullptr, ErrorCode::Memory, "could not allocate ", bytes, " bytes of host memory");
  return std::shared_ptr<Storage>(new Storage(p, bytes, device, nullptr, nullptr));
}

std::shared_ptr<Storage> Storage::adopt(void* data, size_t bytes, Device device, Release release, void* ctx) {
  return std::shared_ptr<Storage>(new Storage(data, bytes, device, release, ctx));
}

Storage::~Storage() {
  if (release_) release_(ctx_, data_);
  else aligned_free(data_);
}

Device parse_device(const std::string& name) {
  if (name == "cpu") return {};
  if (name.size() > 5 && name.size() <= 9 && name.compare(0, 5, "cuda:") == 0 &&
      name.find_first_not_of("0123456789", 5) == std::string::npos)
    return {DeviceKind::CUDA, std::stoi(name.substr(5))};
  throw Error(ErrorCode::Arg, fmt("Expected a device name 'cpu' or 'cuda:N' but received '", name, "'"));
}

int64_t shape_numel(const std::vector<int64_t>& shape, const char* what) {
  for (int64_t d : shape)
    SK_CHECK(d >= 0, ErrorCode::Shape, "Expected non-negative dimensions for ", what, " but received shape ",
             shape_str(shape));
  for (int64_t d : shape)
    if (d == 0) return 0;  // empty, whatever the other dimensions (checked before any product)
  int64_t n = 1;
  for (int64_t d : shape) {
    // Keep byte counts of any dtype within int64 (and far below any real allocation limit):
    // n * d <= 2^60 - 1, i.e. fewer than 2^60 elements, as the message says.
    SK_CHECK(n <= ((int64_t(1) << 60) - 1) / d, ErrorCode::Shape, "Expected fewer than 2^60 elements for ",
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
