// TopK SAE inner loops built with the sse42 flags (see binding.gyp).
#include "sae_kernels.inc"

namespace sk::cpu {
const SaeKernels& sae_kernels_sse42() { return kSaeKernels; }
}  // namespace sk::cpu
