#include "error.h"

#include <cstring>

namespace sk {

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::Arg: return "ERR_SAEKIT_ARG";
    case ErrorCode::Shape: return "ERR_SAEKIT_SHAPE";
    case ErrorCode::DType: return "ERR_SAEKIT_DTYPE";
    case ErrorCode::Disposed: return "ERR_SAEKIT_DISPOSED";
    case ErrorCode::Device: return "ERR_SAEKIT_DEVICE";
    case ErrorCode::Format: return "ERR_SAEKIT_FORMAT";
    case ErrorCode::Memory: return "ERR_SAEKIT_MEMORY";
    case ErrorCode::NonFinite: return "ERR_SAEKIT_NONFINITE";
    case ErrorCode::Internal: return "ERR_SAEKIT_INTERNAL";
  }
  return "ERR_SAEKIT_INTERNAL";
}

std::string utf8_whole(const char* s, size_t n) {
  size_t len = ::strnlen(s, n);
  // Back over at most 3 continuation bytes (10xxxxxx) to the lead byte of the last sequence.
  size_t lead = len;
  while (lead > 0 && len - lead < 4 && (static_cast<unsigned char>(s[lead - 1]) & 0xC0) == 0x80) --lead;
  if (lead > 0) {
    const unsigned char c = static_cast<unsigned char>(s[lead - 1]);
    const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (len - (lead - 1) < need) len = lead - 1;  // the last sequence lacks bytes: drop it
  }
  return std::string(s, len);
}

}  // namespace sk
