// Zero-filled float vectors whose zeroing costs nothing where they are made.
//
// A vector's zero fill writes every page: for an SAE's parameters or Adam moments (GBs at
// 65536 x 2304) that stalled the JS thread for seconds in create() and adam(). Here the memory
// comes from calloc, which hands out fresh pages already zero for large blocks (glibc maps them
// and skips the memset), and the elements are not written again, so the pages are faulted in
// later, where the executor first uses them.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>
#include <utility>
#include <vector>

namespace sk {

template <typename T>
struct ZeroedAllocator {
  using value_type = T;
  ZeroedAllocator() = default;
  template <typename U>
  ZeroedAllocator(const ZeroedAllocator<U>&) noexcept {}
  T* allocate(size_t n) {
    void* p = std::calloc(n, sizeof(T));
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) noexcept { std::free(p); }
  // Default-initialisation of an arithmetic T writes nothing: the element keeps calloc's zero.
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... A>
  void construct(U* p, A&&... a) {
    ::new (static_cast<void*>(p)) U(std::forward<A>(a)...);
  }
  friend bool operator==(const ZeroedAllocator&, const ZeroedAllocator&) { return true; }
  friend bool operator!=(const ZeroedAllocator&, const ZeroedAllocator&) { return false; }
};

// Only make one with zeroed_floats(n): resize() within a vector's capacity would leave old
// values in the new elements (they are not written), so never shrink and regrow one.
using ZeroedFloats = std::vector<float, ZeroedAllocator<float>>;

// n zeros: O(1) on this thread for large n.
inline ZeroedFloats zeroed_floats(size_t n) {
  ZeroedFloats v;
  v.resize(n);  // a fresh calloc block; the elements are not written
  return v;
}

}  // namespace sk
