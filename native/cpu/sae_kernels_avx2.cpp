// TopK SAE inner loops built with the avx2 flags (see binding.gyp).
#include "sae_kernels.inc"

namespace sk::cpu {
const SaeKernels& sae_kernels_avx2() { return kSaeKernels; }
}  // namespace sk::cpu
