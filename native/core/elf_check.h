// Checks a shared library file before dlopen. glibc maps each PT_LOAD segment of a library
// straight from the file and touches it while relocating, so a file shorter than its segments
// (an interrupted build or copy) kills the process with SIGBUS inside dlopen instead of failing.
// elf_damage reads the ELF64 header and program headers (bounded reads into fixed structs, no
// allocation from numbers in the file) and says why such a file must not be loaded.
// Header-only: the addon's plugin loader (core/plugin.cpp) and the CUDA plugin's cuBLAS loader
// (cuda/cublas_dl.cpp) both use it.
#pragma once
#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

namespace sk {

namespace elf_detail {

// Reads exactly `n` bytes at `off`; false on a short read or an error.
inline bool read_at(int fd, void* out, size_t n, uint64_t off) {
  size_t got = 0;
  while (got < n) {
    const ssize_t r = ::pread(fd, static_cast<char*>(out) + got, n - got, off_t(off + got));
    if (r <= 0) return false;
    got += size_t(r);
  }
  return true;
}

// Why the open regular file `fd` of `size` bytes cannot be loaded, or "".
inline std::string damage_of(int fd, uint64_t size) {
  Elf64_Ehdr eh;
  if (size < sizeof(eh) || !read_at(fd, &eh, sizeof(eh), 0))
    return "is damaged: truncated (" + std::to_string(size) + " bytes, shorter than an ELF header)";
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) return "is not an ELF file (no ELF magic number)";
  if (eh.e_ident[EI_CLASS] != ELFCLASS64) return "is not a 64-bit ELF file";
  if (eh.e_ident[EI_DATA] != ELFDATA2LSB) return "is not a little-endian ELF file";
  if (eh.e_type != ET_DYN) return "is not a shared library (ELF type " + std::to_string(eh.e_type) + ")";
  // glibc refuses any other entry size; it also bounds the reads below.
  if (eh.e_phentsize != sizeof(Elf64_Phdr))
    return "is damaged: program header entries of " + std::to_string(eh.e_phentsize) + " bytes (expected " +
           std::to_string(sizeof(Elf64_Phdr)) + ")";
  if (eh.e_phnum == 0) return "is damaged: no program headers";
  const uint64_t table = uint64_t(eh.e_phnum) * sizeof(Elf64_Phdr);  // at most 65535 * 56
  if (eh.e_phoff > size || table > size - eh.e_phoff)
    return "is damaged: truncated (" + std::to_string(size) + " bytes, its program headers end at " +
           (eh.e_phoff > UINT64_MAX - table ? std::string("an offset past any file") : std::to_string(eh.e_phoff + table)) +
           ")";
  uint64_t need = 0;
  for (uint16_t i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph;
    if (!read_at(fd, &ph, sizeof(ph), eh.e_phoff + uint64_t(i) * sizeof(Elf64_Phdr)))
      return "is damaged: its program headers could not be read";
    if (ph.p_type != PT_LOAD) continue;
    if (ph.p_offset > UINT64_MAX - ph.p_filesz)
      return "is damaged: segment " + std::to_string(i) + " lies past any file size";
    if (ph.p_offset + ph.p_filesz > need) need = ph.p_offset + ph.p_filesz;
  }
  if (size < need)
    return "is damaged: truncated (" + std::to_string(size) + " bytes, its segments need " + std::to_string(need) + ")";
  return "";
}

}  // namespace elf_detail

// "" when the file at `path` is a complete ELF64 little-endian shared library (every PT_LOAD
// segment lies within it); otherwise why not, as a predicate to follow the path: "is damaged:
// truncated (20000 bytes, its segments need 6468856)", "is not an ELF file (...)", "is not a
// file" or "cannot be read: <errno text>".
inline std::string elf_damage(const std::string& path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused as not a file).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return std::string("cannot be read: ") + std::strerror(errno);
  struct stat sb;
  std::string why;
  if (::fstat(fd, &sb) != 0) {
    why = std::string("cannot be read: ") + std::strerror(errno);
  } else if (!S_ISREG(sb.st_mode)) {
    why = "is not a file";
  } else {
    why = elf_detail::damage_of(fd, uint64_t(sb.st_size));
  }
  ::close(fd);
  return why;
}

}  // namespace sk
