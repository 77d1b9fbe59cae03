// The tensor descriptor shared by every backend: a dtype, a row-major shape and a reference to
// the storage that holds the bytes. Storage is reference counted, so a queued job keeps its
// inputs alive after the JS object that owned them was disposed.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dtype.h"

namespace sk {

enum class DeviceKind : int { CPU = 0, CUDA = 1 };

struct Device {
  DeviceKind kind = DeviceKind::CPU;
  int index = 0;
  std::string name() const;
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
};

// Parses "cpu" or "cuda:N" (the names Device::name() gives); throws ERR_SAEKIT_ARG otherwise.
Device parse_device(const std::string& name);

// A block of backend memory. On the CPU it is 64-byte aligned host memory; on a device it is
// whatever that backend's alloc slot returned, given back through its free slot.
class Storage {
 public:
  // Host memory (device must be the CPU).
  static std::shared_ptr<Storage> allocate(size_t bytes, Device device = {});
  // Takes ownership of `data` (allocated by a backend for `device`); `release(ctx, data)` frees it.
  using Release = void (*)(void* ctx, void* ptr);
  static std::shared_ptr<Storage> adopt(void* data, size_t bytes, Device device, Release release, void* ctx);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() { return data_; }
  const void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  Storage(void* data, size_t bytes, Device device, Release release, void* ctx)
      : data_(data), bytes_(bytes), device_(device), release_(release), ctx_(ctx) {}
  void* data_;
  size_t bytes_;
  Device device_;
  Release release_;  // null: aligned_free (host memory from allocate)
  void* ctx_;
};

// Number of elements of a shape, with an overflow check; throws ERR_SAEKIT_SHAPE.
int64_t shape_numel(const std::vector<int64_t>& shape, const char* what);
std::string shape_str(const std::vector<int64_t>& shape);

struct Tensor {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::shared_ptr<Storage> storage;

  int64_t numel() const { return shape_numel(shape, "tensor"); }
  Device device() const { return storage ? storage->device() : Device{}; }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
  template <typename T> T* data() { return static_cast<T*>(storage->data()); }
  template <typename T> const T* data() const { return static_cast<const T*>(storage->data()); }

  static Tensor empty(DType dtype, std::vector<int64_t> shape, Device device = {});
};

}  // namespace sk
