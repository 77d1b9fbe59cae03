// Element types that cross the native boundary. bf16 and f16 travel as raw uint16 bit patterns
// (JS sees them as Uint16Array).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace sk {

enum class DType : int { F32 = 0, BF16 = 1, F16 = 2, I32 = 3 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::I32: return 4;
  }
  return 0;
}

// Names as the JS API spells them.
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    case DType::I32: return "int32";
  }
  return "unknown";
}

// Returns false when `name` is not a dtype.
bool dtype_from_name(const std::string& name, DType* out);

}  // namespace sk
