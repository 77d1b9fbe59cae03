// Conversion kernels built with the avx2 flags (see binding.gyp).
#include "convert_kernels.inc"

namespace sk::cpu {
const ConvertKernels& convert_kernels_avx2() { return kKernels; }
}  // namespace sk::cpu
