// Conversion kernels built with the avx512 flags (see binding.gyp).
#include "convert_kernels.inc"

namespace sk::cpu {
const ConvertKernels& convert_kernels_avx512() { return kKernels; }
}  // namespace sk::cpu
