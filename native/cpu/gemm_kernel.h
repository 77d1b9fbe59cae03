// Internal interface between the built-in GEMM driver (gemm_builtin.cpp, baseline flags) and its
// ISA-specific micro-kernels (gemm_kernel_{sse42,avx2,avx512}.cpp, each built with its own -m
// flags). Only plain declarations and a trivial struct live here: no inline code, so nothing in
// this header can be instantiated with AVX instructions in one TU and picked by the linker for
// another.
#pragma once
#include <cstdint>

namespace sk::cpu::gemm_detail {

// Computes C[mc, nc] = alpha * Ap * Bp + beta * C for one packed block (beta == 0: C not read).
// Ap holds ceil(mc / mr) micro-panels of mr rows, each stored k-major (panel[k * mr + i]), rows
// past mc zero-filled; Bp holds ceil(nc / nr) micro-panels of nr columns stored k-major
// (panel[k * nr + j]), columns past nc zero-filled. Both are 64-byte aligned.
using MacroKernelFn = void (*)(int64_t mc, int64_t nc, int64_t kc, const float* Ap, const float* Bp,
                               float* C, int64_t ldc, float alpha, float beta);

struct KernelInfo {
  const char* name;     // "avx512", "avx2" or "sse4.2"
  int mr, nr;           // register tile: rows of A broadcast, columns of B held in vectors
  int mc, kc, nc;       // cache blocking: A block mc x kc (L2), B block kc x nc (L3)
  MacroKernelFn macro;  // compiled for the kernel's ISA: call only when the CPU supports it
};

// Each returns a pointer to a constant-initialised table, so calling one executes no
// ISA-specific instruction; the macro kernel it points to does.
const KernelInfo* gemm_kernel_sse42();
const KernelInfo* gemm_kernel_avx2();
const KernelInfo* gemm_kernel_avx512();

}  // namespace sk::cpu::gemm_detail
