// The decoder spectrum (lib/eval/spectrum.ts), float64 throughout except the Gram GEMM:
// - decoder_covariance: the column-centred covariance Wc^T Wc / (n - 1) of the rows of W [n, d];
// - symmetric_eigenvalues: the eigenvalues of a real symmetric matrix, by LAPACK's dsyevd
//   (eigenvalues only: dsytrd, then dsterf) from the linked OpenBLAS when it exports one, else
//   by the built-in solver: blocked Householder tridiagonalisation (the dlatrd / dsytrd scheme:
//   panels of 32 reflectors, the trailing matrix read once per reflector and updated once per
//   panel) and the implicit QL method.
// Both run on the executor thread and fan out over the CPU pool (or OpenBLAS's threads).
#pragma once
#include <cstdint>

#include "../core/thread_pool.h"

namespace sk::cpu {

enum class EigenSolver { Auto, Lapack, Builtin };

// Whether LAPACK's dsyevd_ is linked (a CBLAS build whose library exports it with 32-bit
// integers). Auto runs it when it is and SAEKIT_BLAS is not 'builtin'.
bool lapack_eigen_linked();
// The solver Auto runs: "lapack" or "builtin".
const char* eigen_solver_name();

// Index of the first non-finite value of x[0, n), or -1.
int64_t first_non_finite(const float* x, int64_t n);
int64_t first_non_finite(const double* x, int64_t n);

// cov [d, d] row-major = the covariance of the n rows of W [n, d] (row-major float32, finite),
// each column centred on its float64 mean: the centred rows are formed in float32 in blocks of
// rows, each block's Gram matrix comes from gemm_f32 (lower triangle, in column tiles) and is
// summed in float64. Writes both triangles. n >= 2. Executor thread only.
void decoder_covariance(const float* W, int64_t n, int64_t d, double* cov);

// a [d, d] row-major := (a + a^T) / 2 (in place, tiled).
void symmetrise(double* a, int64_t d);

// The eigenvalues of the symmetric matrix whose lower triangle is a's (row-major [d, d]; the
// strict upper triangle is not read), sorted descending into w[d]. `a` is overwritten. Throws
// ERR_SAEKIT_DEVICE when Lapack is asked for and not linked. Executor thread only.
void symmetric_eigenvalues(double* a, int64_t d, double* w, EigenSolver solver);

}  // namespace sk::cpu
