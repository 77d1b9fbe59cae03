#include "spectrum.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <emmintrin.h>

#include "../core/error.h"
#include "blas.h"
#include "cpu_backend.h"

#ifdef SAEKIT_HAVE_CBLAS
// LAPACK's symmetric eigensolver, declared here (no LAPACK header needed) and weak, so that a
// CBLAS without LAPACK still links: Debian's libopenblas exports it. Fortran ABI: every argument
// by reference, then the hidden lengths of the two character arguments.
extern "C" void dsyevd_(const char* jobz, const char* uplo, const int* n, double* a, const int* lda, double* w,
                        double* work, const int* lwork, int* iwork, const int* liwork, int* info, size_t jobz_len,
                        size_t uplo_len) __attribute__((weak));
#endif

namespace sk::cpu {

namespace {

constexpr int64_t kRowBlock = 8192;   // decoder rows per Gram GEMM
constexpr int64_t kGramTile = 512;    // column tile of the lower-triangle GEMMs
constexpr int kPanel = 32;            // reflectors per panel of the built-in tridiagonalisation
constexpr int kParts = 16;            // row ranges of equal area of the parallel panel update
constexpr int64_t kParallelRows = 192;  // below this the built-in solver's panel update runs serially

// Row boundaries that split the lower triangle of rows [0, m) into `parts` pieces of about equal
// area: row r costs about r + 1.
std::vector<int64_t> triangle_split(int64_t m, int parts) {
  std::vector<int64_t> b(size_t(parts) + 1);
  for (int p = 0; p <= parts; ++p) b[size_t(p)] = std::min<int64_t>(m, int64_t(std::llround(double(m) * std::sqrt(double(p) / parts))));
  b[size_t(parts)] = m;
  return b;
}

// ------------------------------------------------------------------ built-in solver

// Eigenvalues of the symmetric tridiagonal matrix (diag, off: off[i] = T[i][i-1], off[0] unused)
// by the implicit QL method with Wilkinson-type shifts; they overwrite diag (unsorted).
void tridiagonal_ql(double* diag, double* off, int64_t n) {
  double* e = off;
  for (int64_t i = 1; i < n; ++i) e[i - 1] = e[i];
  e[n - 1] = 0;
  for (int64_t l = 0; l < n; ++l) {
    int iter = 0;
    for (;;) {
      int64_t m = l;
      for (; m < n - 1; ++m) {
        const double dd = std::fabs(diag[m]) + std::fabs(diag[m + 1]);
        if (std::fabs(e[m]) <= 2.220446049250313e-16 * dd) break;
      }
      if (m == l) break;
      SK_CHECK(++iter <= 100, ErrorCode::Internal, "symmetric eigenvalues: the QL iteration did not converge");
      double g = (diag[l + 1] - diag[l]) / (2 * e[l]);
      double r = std::hypot(g, 1.0);
      g = diag[m] - diag[l] + e[l] / (g + (g >= 0 ? r : -r));
      double s = 1, c = 1, p = 0;
      bool underflow = false;
      for (int64_t i = m - 1; i >= l; --i) {
        const double f = s * e[i];
        const double b = c * e[i];
        r = std::hypot(f, g);
        e[i + 1] = r;
        if (r == 0) {
          diag[i + 1] -= p;
          e[m] = 0;
          underflow = true;
          break;
        }
        s = f / r;
        c = g / r;
        g = diag[i + 1] - p;
        r = (diag[i] - g) * s + 2 * c * b;
        p = s * r;
        diag[i + 1] = g + p;
        g = c * r - b;
      }
      if (underflow) continue;
      diag[l] -= p;
      e[l] = g;
      e[m] = 0;
    }
  }
}

double dot(const double* x, const double* y, int64_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    s0 += x[k] * y[k];
    s1 += x[k + 1] * y[k + 1];
    s2 += x[k + 2] * y[k + 2];
    s3 += x[k + 3] * y[k + 3];
  }
  for (; k < n; ++k) s0 += x[k] * y[k];
  return (s0 + s1) + (s2 + s3);
}

// One row of the lower-triangle matrix-vector product: y[0, r) += row[0, r) * vr and returns
// row[0, r) . v[0, r). SSE2 with four accumulators (the sums' latency, not the loads, bounded a
// scalar loop to half an element a cycle).
inline double symv_row(const double* row, const double* v, double* y, int64_t r, double vr) {
  __m128d s0 = _mm_setzero_pd(), s1 = _mm_setzero_pd(), s2 = _mm_setzero_pd(), s3 = _mm_setzero_pd();
  const __m128d b = _mm_set1_pd(vr);
  int64_t c = 0;
  for (; c + 8 <= r; c += 8) {
    const __m128d a0 = _mm_loadu_pd(row + c), a1 = _mm_loadu_pd(row + c + 2);
    const __m128d a2 = _mm_loadu_pd(row + c + 4), a3 = _mm_loadu_pd(row + c + 6);
    s0 = _mm_add_pd(s0, _mm_mul_pd(a0, _mm_loadu_pd(v + c)));
    s1 = _mm_add_pd(s1, _mm_mul_pd(a1, _mm_loadu_pd(v + c + 2)));
    s2 = _mm_add_pd(s2, _mm_mul_pd(a2, _mm_loadu_pd(v + c + 4)));
    s3 = _mm_add_pd(s3, _mm_mul_pd(a3, _mm_loadu_pd(v + c + 6)));
    _mm_storeu_pd(y + c, _mm_add_pd(_mm_loadu_pd(y + c), _mm_mul_pd(a0, b)));
    _mm_storeu_pd(y + c + 2, _mm_add_pd(_mm_loadu_pd(y + c + 2), _mm_mul_pd(a1, b)));
    _mm_storeu_pd(y + c + 4, _mm_add_pd(_mm_loadu_pd(y + c + 4), _mm_mul_pd(a2, b)));
    _mm_storeu_pd(y + c + 6, _mm_add_pd(_mm_loadu_pd(y + c + 6), _mm_mul_pd(a3, b)));
  }
  const __m128d t = _mm_add_pd(_mm_add_pd(s0, s1), _mm_add_pd(s2, s3));
  double s = _mm_cvtsd_f64(t) + _mm_cvtsd_f64(_mm_unpackhi_pd(t, t));
  for (; c < r; ++c) {
    s += row[c] * v[c];
    y[c] += row[c] * vr;
  }
  return s;
}

// row[c0, c1) -= sum over the 4 reflectors q of a_q w_q[c] + b_q v_q[c] (SSE2).
inline void update_row4(double* row, const double* const* v, const double* const* w, const double* a,
                        const double* b, int64_t c0, int64_t c1) {
  const __m128d a0 = _mm_set1_pd(a[0]), a1 = _mm_set1_pd(a[1]), a2 = _mm_set1_pd(a[2]), a3 = _mm_set1_pd(a[3]);
  const __m128d b0 = _mm_set1_pd(b[0]), b1 = _mm_set1_pd(b[1]), b2 = _mm_set1_pd(b[2]), b3 = _mm_set1_pd(b[3]);
  int64_t c = c0;
  for (; c + 2 <= c1; c += 2) {
    __m128d t0 = _mm_add_pd(_mm_mul_pd(a0, _mm_loadu_pd(w[0] + c)), _mm_mul_pd(b0, _mm_loadu_pd(v[0] + c)));
    __m128d t1 = _mm_add_pd(_mm_mul_pd(a1, _mm_loadu_pd(w[1] + c)), _mm_mul_pd(b1, _mm_loadu_pd(v[1] + c)));
    __m128d t2 = _mm_add_pd(_mm_mul_pd(a2, _mm_loadu_pd(w[2] + c)), _mm_mul_pd(b2, _mm_loadu_pd(v[2] + c)));
    __m128d t3 = _mm_add_pd(_mm_mul_pd(a3, _mm_loadu_pd(w[3] + c)), _mm_mul_pd(b3, _mm_loadu_pd(v[3] + c)));
    _mm_storeu_pd(row + c, _mm_sub_pd(_mm_loadu_pd(row + c), _mm_add_pd(_mm_add_pd(t0, t1), _mm_add_pd(t2, t3))));
  }
  for (; c < c1; ++c)
    row[c] -= ((a[0] * w[0][c] + b[0] * v[0][c]) + (a[1] * w[1][c] + b[1] * v[1][c])) +
              ((a[2] * w[2][c] + b[2] * v[2][c]) + (a[3] * w[3][c] + b[3] * v[3][c]));
}

// Reduces the symmetric matrix held in a's lower triangle (row-major [n, n], overwritten) to
// tridiagonal form T = Q^T A Q: diag[i] = T[i][i], off[i] = T[i][i-1]. Rows are reduced from the
// last one up (row i's entries left of column i - 1 are zeroed by a reflector acting on the
// leading block [0, i)), in panels of kPanel reflectors: within a panel the leading block is
// left as stored and each reflector's w = tau A v is corrected for the panel's earlier
// reflectors (dlatrd); the block then takes the panel's rank-2k update once (dsyr2k), over the
// pool. The symmetric matrix-vector products read the stored lower triangle once each (the bulk
// of the memory traffic) on the executor thread alone: as a fork and join per reflector they
// ran slower on two threads than on one (measured, 2-core VM: 11.5 s against 7.7 s at d = 2304),
// a pool that slept through the reflector's serial work taking about a millisecond to wake.
void tridiagonalise(double* a, int64_t n, double* diag, double* off, ThreadPool& pool) {
  std::vector<double> VT(size_t(kPanel) * size_t(n)), WT(size_t(kPanel) * size_t(n));
  std::vector<double> pv(kPanel), pw(kPanel);  // V^T v and W^T v
  off[0] = 0;
  int64_t top = n - 1;
  while (top >= 1) {
    const int nb = int(std::min<int64_t>(kPanel, top));
    for (int p = 0; p < nb; ++p) {
      const int64_t i = top - p, l = i - 1;
      double* x = a + i * n;  // row i, entries [0, i]
      // The panel's earlier reflectors, applied to row i: x -= V W[i]^T + W V[i]^T.
      for (int q = 0; q < p; ++q) {
        const double* vq = &VT[size_t(q) * size_t(n)];
        const double* wq = &WT[size_t(q) * size_t(n)];
        const double vi = vq[i], wi = wq[i];
        for (int64_t k = 0; k <= i; ++k) x[k] -= vq[k] * wi + wq[k] * vi;
      }
      diag[i] = x[i];
      double* v = &VT[size_t(p) * size_t(n)];
      double* w = &WT[size_t(p) * size_t(n)];
      double sigma = 0;
      for (int64_t k = 0; k < l; ++k) sigma += x[k] * x[k];
      if (sigma == 0) {  // nothing to zero (also i = 1): H = I
        off[i] = x[l];
        std::fill(v, v + l + 1, 0.0);
        std::fill(w, w + l + 1, 0.0);
        continue;
      }
      // The reflector H = I - tau v v^T (v[l] = 1) with H x[0, l] = beta e_l (dlarfg).
      const double alpha = x[l];
      const double beta = -std::copysign(std::sqrt(alpha * alpha + sigma), alpha);
      const double tau = (beta - alpha) / beta;
      const double sc = 1 / (alpha - beta);
      for (int64_t k = 0; k < l; ++k) v[k] = x[k] * sc;
      v[l] = 1;
      off[i] = beta;
      // w = tau (A - V W^T - W V^T) v over the leading block [0, l], A as stored.
      const int64_t m = l + 1;
      std::fill(w, w + m, 0.0);
      for (int64_t r = 0; r < m; ++r) {
        const double* row = a + r * n;
        w[r] += row[r] * v[r] + symv_row(row, v, w, r, v[r]);
      }
      for (int q = 0; q < p; ++q) {
        pv[size_t(q)] = dot(&VT[size_t(q) * size_t(n)], v, m);
        pw[size_t(q)] = dot(&WT[size_t(q) * size_t(n)], v, m);
      }
      for (int q = 0; q < p; ++q) {
        const double* vq = &VT[size_t(q) * size_t(n)];
        const double* wq = &WT[size_t(q) * size_t(n)];
        const double sw = pw[size_t(q)], sv = pv[size_t(q)];
        for (int64_t k = 0; k < m; ++k) w[k] -= vq[k] * sw + wq[k] * sv;
      }
      for (int64_t k = 0; k < m; ++k) w[k] *= tau;
      const double a2 = -0.5 * tau * dot(w, v, m);
      for (int64_t k = 0; k < m; ++k) w[k] += a2 * v[k];
    }
    // The panel's rank-2nb update of the rest of the leading block: A -= V W^T + W V^T, lower
    // triangle, by column tiles whose V and W pieces stay in L2; four reflectors per pass over a
    // row piece.
    const int64_t mrest = top - nb + 1;
    auto update_rows = [&](int64_t r0, int64_t r1) {
      constexpr int64_t kTile = 256;
      for (int64_t c0 = 0; c0 < r1; c0 += kTile) {
        for (int64_t r = std::max(r0, c0); r < r1; ++r) {
          double* row = a + r * n;
          const int64_t c1 = std::min(c0 + kTile, r + 1);
          int q = 0;
          for (; q + 4 <= nb; q += 4) {
            const double* vq[4];
            const double* wq[4];
            double aq[4], bq[4];
            for (int k = 0; k < 4; ++k) {
              vq[k] = &VT[size_t(q + k) * size_t(n)];
              wq[k] = &WT[size_t(q + k) * size_t(n)];
              aq[k] = vq[k][r];
              bq[k] = wq[k][r];
            }
            update_row4(row, vq, wq, aq, bq, c0, c1);
          }
          for (; q < nb; ++q) {
            const double* vq = &VT[size_t(q) * size_t(n)];
            const double* wq = &WT[size_t(q) * size_t(n)];
            const double aq = vq[r], bq = wq[r];
            for (int64_t c = c0; c < c1; ++c) row[c] -= aq * wq[c] + bq * vq[c];
          }
        }
      }
    };
    if (mrest < kParallelRows) {
      update_rows(0, mrest);
    } else {
      const std::vector<int64_t> b = triangle_split(mrest, kParts);
      pool.run(kParts, [&](int part) { update_rows(b[size_t(part)], b[size_t(part) + 1]); });
    }
    top = mrest - 1;
  }
  diag[0] = a[0];
}

void builtin_eigenvalues(double* a, int64_t d, double* w, ThreadPool& pool) {
  // Scale the largest entry to [0.5, 1) by a power of two (exact), so that no sum of squares
  // overflows or underflows where it matters.
  double amax = 0;
  for (int64_t r = 0; r < d; ++r)
    for (int64_t c = 0; c <= r; ++c) amax = std::max(amax, std::fabs(a[r * d + c]));
  if (amax == 0) {
    std::fill(w, w + d, 0.0);
    return;
  }
  int ex = 0;
  std::frexp(amax, &ex);
  // ldexp per entry: exact, and 2^-ex itself overflows for a subnormal amax (ex <= -1022).
  pool.parallel_for(d, 64, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c <= r; ++c) a[r * d + c] = std::ldexp(a[r * d + c], -ex);
  });
  std::vector<double> off(static_cast<size_t>(d));
  tridiagonalise(a, d, w, off.data(), pool);
  tridiagonal_ql(w, off.data(), d);
  for (int64_t i = 0; i < d; ++i) w[i] = std::ldexp(w[i], ex);
}

// ------------------------------------------------------------------ LAPACK

bool lapack_linked_now() {
#ifdef SAEKIT_HAVE_CBLAS
  if (!dsyevd_) return false;
  // An OpenBLAS built with 64-bit integers (INTERFACE64) takes int64 arguments.
  return blas_info().config.find("USE64BITINT") == std::string::npos;
#else
  return false;
#endif
}

void lapack_eigenvalues(double* a, int64_t d, double* w) {
#ifdef SAEKIT_HAVE_CBLAS
  SK_CHECK(d <= 46340, ErrorCode::Shape, "symmetric eigenvalues: d = ", d, " is above LAPACK's 32-bit limit (46340)");
  // Row-major lower triangle = column-major upper triangle.
  const int n = int(d), lda = int(d);
  int info = 0, lwork = -1, liwork = -1, iwork_query = 0;
  double work_query = 0;
  dsyevd_("N", "U", &n, a, &lda, w, &work_query, &lwork, &iwork_query, &liwork, &info, 1, 1);
  SK_CHECK(info == 0, ErrorCode::Internal, "dsyevd workspace query failed (info = ", info, ")");
  lwork = std::max(int(work_query), 2 * n + 1);
  liwork = std::max(iwork_query, 1);
  std::vector<double> work(static_cast<size_t>(lwork));
  std::vector<int> iwork(static_cast<size_t>(liwork));
  dsyevd_("N", "U", &n, a, &lda, w, work.data(), &lwork, iwork.data(), &liwork, &info, 1, 1);
  SK_CHECK(info >= 0, ErrorCode::Internal, "dsyevd rejected argument ", -info);
  SK_CHECK(info == 0, ErrorCode::Internal, "dsyevd did not converge (", info, " off-diagonal elements left)");
#else
  (void)a; (void)d; (void)w;
  throw Error(ErrorCode::Internal, "lapack_eigenvalues called in a build without CBLAS");
#endif
}

}  // namespace

bool lapack_eigen_linked() {
  static const bool linked = lapack_linked_now();
  return linked;
}

const char* eigen_solver_name() { return lapack_eigen_linked() && blas_info().active ? "lapack" : "builtin"; }

int64_t first_non_finite(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return i;
  return -1;
}

int64_t first_non_finite(const double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return i;
  return -1;
}

void decoder_covariance(const float* W, int64_t n, int64_t d, double* cov) {
  ThreadPool& pool = cpu_pool();
  // Column means in float64, rows in order (each task owns a range of columns).
  std::vector<double> mean(size_t(d), 0.0);
  pool.parallel_for(d, 16, [&](int64_t c0, int64_t c1, int) {
    for (int64_t r = 0; r < n; ++r) {
      const float* row = W + r * d;
      for (int64_t c = c0; c < c1; ++c) mean[size_t(c)] += row[c];
    }
    for (int64_t c = c0; c < c1; ++c) mean[size_t(c)] /= double(n);
  });
  // The centred values are scaled by a power of two that puts the largest in [0.5, 1) (exact):
  // the float32 Gram products then neither overflow (|W| >~ 1.8e19) nor flush to zero
  // (|W| <~ 1e-23); the scale comes back out exactly at the end.
  std::vector<double> colmax(size_t(d), 0.0);
  pool.parallel_for(d, 16, [&](int64_t c0, int64_t c1, int) {
    for (int64_t r = 0; r < n; ++r) {
      const float* row = W + r * d;
      for (int64_t c = c0; c < c1; ++c) colmax[size_t(c)] = std::max(colmax[size_t(c)], std::fabs(double(row[c]) - mean[size_t(c)]));
    }
  });
  double amax = 0;
  for (double v : colmax) amax = std::max(amax, v);
  int ex = 0;
  if (amax > 0) std::frexp(amax, &ex);
  const double scale = std::ldexp(1.0, -ex);
  const int64_t rb = std::min(n, kRowBlock);
  std::unique_ptr<float[]> block(new float[size_t(rb * d)]);
  std::unique_ptr<float[]> gram(new float[size_t(d * d)]);
  std::memset(cov, 0, size_t(d * d) * sizeof(double));
  for (int64_t r0 = 0; r0 < n; r0 += rb) {
    const int64_t rows = std::min(rb, n - r0);
    pool.parallel_for(rows, 16, [&](int64_t a0, int64_t a1, int) {
      for (int64_t r = a0; r < a1; ++r) {
        const float* src = W + (r0 + r) * d;
        float* dst = block.get() + r * d;
        for (int64_t c = 0; c < d; ++c) dst[c] = float((double(src[c]) - mean[size_t(c)]) * scale);
      }
    });
    // Lower triangle of block^T block, one column tile (and the rows below it) per GEMM.
    for (int64_t j = 0; j < d; j += kGramTile) {
      const int64_t nj = std::min(kGramTile, d - j);
      gemm_f32(true, false, d - j, nj, rows, 1.0f, block.get() + j, d, block.get() + j, d, 0.0f,
               gram.get() + j * d + j, d);
    }
    pool.parallel_for(d, 16, [&](int64_t i0, int64_t i1, int) {
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t c = 0; c <= i; ++c) cov[i * d + c] += gram[size_t(i * d + c)];
    });
  }
  const double inv = std::ldexp(1.0 / double(n - 1), 2 * ex);  // the scale squared, back out
  pool.parallel_for(d, 16, [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t c = 0; c <= i; ++c) cov[i * d + c] *= inv;
  });
  // Mirror the lower triangle into the upper one, in tiles.
  constexpr int64_t T = 64;
  pool.parallel_for((d + T - 1) / T, 1, [&](int64_t b0, int64_t b1, int) {
    for (int64_t bi = b0; bi < b1; ++bi)
      for (int64_t bj = 0; bj <= bi; ++bj)
        for (int64_t i = bi * T; i < std::min(d, bi * T + T); ++i)
          for (int64_t j = bj * T; j < std::min(i, bj * T + T); ++j) cov[j * d + i] = cov[i * d + j];
  });
}

void symmetrise(double* a, int64_t d) {
  constexpr int64_t T = 64;
  cpu_pool().parallel_for((d + T - 1) / T, 1, [&](int64_t b0, int64_t b1, int) {
    for (int64_t bi = b0; bi < b1; ++bi)
      for (int64_t bj = 0; bj <= bi; ++bj)
        for (int64_t i = bi * T; i < std::min(d, bi * T + T); ++i)
          for (int64_t j = bj * T; j < std::min(i, bj * T + T); ++j) {
            const double v = 0.5 * a[i * d + j] + 0.5 * a[j * d + i];  // a + b overflows past DBL_MAX / 2
            a[i * d + j] = v;
            a[j * d + i] = v;
          }
  });
}

void symmetric_eigenvalues(double* a, int64_t d, double* w, EigenSolver solver) {
  if (d <= 0) return;
  bool lapack = false;
  if (solver == EigenSolver::Lapack) {
    SK_CHECK(lapack_eigen_linked(), ErrorCode::Device,
             "LAPACK's dsyevd is not linked (saekit was built without OpenBLAS, or the library lacks LAPACK)");
    lapack = true;
  } else if (solver == EigenSolver::Auto) {
    lapack = std::strcmp(eigen_solver_name(), "lapack") == 0;
  }
  if (lapack) {
    lapack_eigenvalues(a, d, w);
  } else {
    builtin_eigenvalues(a, d, w, cpu_pool());
  }
  // Eigenvalues are bounded by the matrix's norm, but that bound can pass DBL_MAX: refuse rather
  // than return infinities (and sort no NaN).
  for (int64_t i = 0; i < d; ++i)
    SK_CHECK(std::isfinite(w[i]), ErrorCode::NonFinite, "an eigenvalue overflowed float64 (the matrix's entries are too large: ",
             "scale it down)");
  std::sort(w, w + d, [](double x, double y) { return x > y; });
}

}  // namespace sk::cpu
