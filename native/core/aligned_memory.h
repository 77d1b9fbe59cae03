// Aligned host memory that a loop of same-size allocations can reuse.
//
// glibc's aligned_alloc / posix_memalign carve each block out of a larger chunk (size +
// alignment + a header) and give the rest back, so a freed block is a little too small for the
// next request of the same size: with large blocks served from the heap (glibc's mmap threshold
// rises to 32 MiB after the first frees), 1000 create/dispose rounds of a 4 MiB tensor grew the
// resident size to 4 GB with next to nothing live. Here the block is a plain malloc of bytes +
// align, which glibc reuses like any other, with the distance back to it stored just before the
// aligned address.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace sk {

// `bytes` of memory aligned to `align` (a power of two, at least 16); nullptr when out of memory.
// Free with aligned_free, never std::free.
inline void* aligned_malloc(size_t align, size_t bytes) {
  if (bytes > SIZE_MAX - align) return nullptr;
  void* base = std::malloc(bytes + align);
  if (base == nullptr) return nullptr;
  // malloc's result is 16-byte aligned, so the next multiple of `align` past it is at least 16
  // bytes on: room for the pointer back.
  const uintptr_t at = (reinterpret_cast<uintptr_t>(base) + align) & ~(uintptr_t(align) - 1);
  reinterpret_cast<void**>(at)[-1] = base;
  return reinterpret_cast<void*>(at);
}

// Frees a block of aligned_malloc (nullptr: nothing).
inline void aligned_free(void* p) {
  if (p != nullptr) std::free(static_cast<void**>(p)[-1]);
}

// Marks the whole 2 MiB pages inside [p, p + bytes) for transparent huge pages (madvise
// MADV_HUGEPAGE), so a first write to a part with no memory behind it yet faults once per 2 MiB,
// and random accesses rarely miss the TLB. A hint: false where nothing was marked (no whole page
// inside, the call failed, or no such advice on this system), which callers may ignore.
inline bool advise_huge_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t huge = uintptr_t(2) << 20;
  const auto start = reinterpret_cast<uintptr_t>(p);
  const uintptr_t first = (start + huge - 1) & ~(huge - 1);
  const uintptr_t end = (start + bytes) & ~(huge - 1);
  return p != nullptr && end > first && madvise(reinterpret_cast<void*>(first), size_t(end - first), MADV_HUGEPAGE) == 0;
#else
  (void)p;
  (void)bytes;
  return false;
#endif
}

}  // namespace sk
