#include "dtype.h"

namespace sk {

bool dtype_from_name(const std::string& name, DType* out) {
  if (name == "float32") *out = DType::F32;
  else if (name == "bfloat16") *out = DType::BF16;
  else if (name == "float16") *out = DType::F16;
  else if (name == "int32") *out = DType::I32;
  else return false;
  return true;
}

}  // namespace sk
