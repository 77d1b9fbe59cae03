// TopK SAE inner loops built with the avx512 flags (see binding.gyp).
#include "sae_kernels.inc"

namespace sk::cpu {
const SaeKernels& sae_kernels_avx512() { return kSaeKernels; }
}  // namespace sk::cpu
