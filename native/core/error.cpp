#include "error.h"

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

}  // namespace sk
