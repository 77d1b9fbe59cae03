// Conversion kernels built with the sse42 flags (see binding.gyp).
#include "convert_kernels.inc"

namespace sk::cpu {
const ConvertKernels& convert_kernels_sse42() { return kKernels; }
}  // namespace sk::cpu
