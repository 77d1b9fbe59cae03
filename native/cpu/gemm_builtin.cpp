// Built-in single-precision GEMM: the fallback when OpenBLAS is not available.
//
// GotoBLAS/BLIS structure. For each block of C that a thread owns:
//   for jc over N in steps of nc:          B block kc x nc, packed once per (jc, pc)
//     for pc over K in steps of kc:
//       pack op(B)[pc:pc+kc, jc:jc+nc] into nr-wide micro-panels
//       for ic over M in steps of mc:      A block mc x kc, sized to stay in L2
//         pack op(A)[ic:ic+mc, pc:pc+kc] into mr-tall micro-panels
//         macro kernel: mr x nr register tiles over the block (ISA-specific TU)
// Packing makes every micro-kernel access unit-stride and aligned whatever the transposes and
// leading dimensions, and turns the transpose cases into a layout choice at pack time.
//
// Threads split C into a grid of rectangles aligned to the register tile; each thread runs the
// loop above on its rectangle with its own packing buffers. K is never split and the K blocking
// depends only on K, so every element of C is summed in the same order for any thread count
// (results are bitwise independent of pool.size()).
#include "gemm_builtin.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

#include <immintrin.h>

#include "../core/cpu_features.h"
#include "../core/error.h"
#include "../core/aligned_memory.h"
#include "gemm_kernel.h"

namespace sk::cpu {

namespace {

using gemm_detail::KernelInfo;

const KernelInfo& pick_kernel() {
  // simd_level() has already checked that the CPU and OS support the ISA of each kernel.
  static const KernelInfo* const kernel = [] {
    switch (sk::simd_level()) {
      case SimdLevel::AVX512: return gemm_detail::gemm_kernel_avx512();
      case SimdLevel::AVX2: return gemm_detail::gemm_kernel_avx2();
      default: return gemm_detail::gemm_kernel_sse42();  // the baseline the addon is built for
    }
  }();
  return *kernel;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Splits `total` into ceil(total / max_block) near-equal blocks, rounded up to a multiple of
// `align`, so that no block is a small remainder (e.g. K = 300 gives 152 + 148, not 256 + 44).
int64_t balanced_block(int64_t total, int64_t max_block, int64_t align) {
  const int64_t blocks = ceil_div(total, max_block);
  return round_up(ceil_div(total, blocks), align);
}

// A strided view of op(X): element (r, k) of the operand is p[r * rs + k * ks]. For op(A), r is
// the row of C; for op(B), r is the column of C. A transpose is then just swapped strides.
struct Operand {
  const float* p;
  int64_t rs, ks;
  const float* at(int64_t r, int64_t k) const { return p + r * rs + k * ks; }
};

// ---------------------------------------------------------------------------------------------
// Packing. A micro-panel of width R holds `rows` <= R operand rows over kc steps, stored k-major
// (dst[k * R + r]) and zero-padded to R rows, so that the micro-kernel reads one contiguous
// R-vector per k and edge tiles need no special cases inside the kernel.

// Rows contiguous in memory for a fixed k (rs == 1): each k is one short copy.
template <int R>
void pack_panel_rows_contiguous(const float* src, int64_t ks, int rows, int64_t kc, float* dst) {
  if (rows == R) {
    for (int64_t k = 0; k < kc; ++k) std::memcpy(dst + k * R, src + k * ks, sizeof(float) * R);
    return;
  }
  for (int64_t k = 0; k < kc; ++k) {
    const float* s = src + k * ks;
    float* d = dst + k * R;
    int r = 0;
    for (; r < rows; ++r) d[r] = s[r];
    for (; r < R; ++r) d[r] = 0.0f;
  }
}

// Each row contiguous along k (ks == 1): a transpose, done 4 x 4 at a time with SSE so that
// both the loads and the stores stay vector-wide.
template <int R>
void pack_panel_rows_strided(const float* src, int64_t rs, int rows, int64_t kc, float* dst) {
  int r = 0;
  for (; r + 4 <= rows; r += 4) {
    const float* s0 = src + r * rs;
    const float* s1 = s0 + rs;
    const float* s2 = s1 + rs;
    const float* s3 = s2 + rs;
    int64_t k = 0;
    for (; k + 4 <= kc; k += 4) {
      __m128 x0 = _mm_loadu_ps(s0 + k), x1 = _mm_loadu_ps(s1 + k);
      __m128 x2 = _mm_loadu_ps(s2 + k), x3 = _mm_loadu_ps(s3 + k);
      _MM_TRANSPOSE4_PS(x0, x1, x2, x3);
      float* d = dst + k * R + r;
      _mm_storeu_ps(d, x0);
      _mm_storeu_ps(d + R, x1);
      _mm_storeu_ps(d + 2 * R, x2);
      _mm_storeu_ps(d + 3 * R, x3);
    }
    for (; k < kc; ++k) {
      float* d = dst + k * R + r;
      d[0] = s0[k], d[1] = s1[k], d[2] = s2[k], d[3] = s3[k];
    }
  }
  for (; r < rows; ++r) {
    const float* s = src + r * rs;
    for (int64_t k = 0; k < kc; ++k) dst[k * R + r] = s[k];
  }
  for (; r < R; ++r)
    for (int64_t k = 0; k < kc; ++k) dst[k * R + r] = 0.0f;
}

template <int R>
void pack_panel_generic(const float* src, int64_t rs, int64_t ks, int rows, int64_t kc,
                        float* dst) {
  for (int64_t k = 0; k < kc; ++k)
    for (int r = 0; r < R; ++r) dst[k * R + r] = r < rows ? src[r * rs + k * ks] : 0.0f;
}

template <int R>
void pack_panel(const float* src, int64_t rs, int64_t ks, int rows, int64_t kc, float* dst) {
  if (rs == 1)
    pack_panel_rows_contiguous<R>(src, ks, rows, kc, dst);
  else if (ks == 1)
    pack_panel_rows_strided<R>(src, rs, rows, kc, dst);
  else
    pack_panel_generic<R>(src, rs, ks, rows, kc, dst);
}

using PackPanelFn = void (*)(const float*, int64_t, int64_t, int, int64_t, float*);

// The panel widths the kernels use (their mr and nr); a new kernel shape needs a case here.
PackPanelFn pack_panel_for(int width) {
  switch (width) {
    case 6: return &pack_panel<6>;
    case 8: return &pack_panel<8>;
    case 14: return &pack_panel<14>;
    case 16: return &pack_panel<16>;
    case 32: return &pack_panel<32>;
  }
  throw Error(ErrorCode::Internal, fmt("gemm_builtin: no packing routine for panel width ", width));
}

// Packs rows [r0, r0 + rows) x steps [k0, k0 + kc) of an operand as consecutive width-R panels.
void pack_block(PackPanelFn pack, int width, const Operand& x, int64_t r0, int64_t rows, int64_t k0,
                int64_t kc, float* dst) {
  for (int64_t r = 0; r < rows; r += width) {
    const int n = int(std::min<int64_t>(width, rows - r));
    pack(x.at(r0 + r, k0), x.rs, x.ks, n, kc, dst + r * kc);
  }
}

// ---------------------------------------------------------------------------------------------
// Per-thread driver.

struct Problem {
  int64_t K;
  float alpha, beta;
  Operand a, b;  // op(A): r = row of C; op(B): r = column of C
  float* C;
  int64_t ldc;
};

// Effective block sizes for one problem: same K blocking for every thread (determinism).
struct Blocking {
  int64_t mc, kc, nc;
};

struct AlignedFree {
  void operator()(float* p) const { aligned_free(p); }
};
using Buffer = std::unique_ptr<float[], AlignedFree>;

Buffer alloc_floats(int64_t count) {
  const size_t bytes = size_t(round_up(std::max<int64_t>(count, 1) * int64_t(sizeof(float)), 64));
  float* p = static_cast<float*>(aligned_malloc(64, bytes));
  SK_CHECK(p != nullptr, ErrorCode::Memory, "gemm_builtin: cannot allocate ", bytes, " bytes");
  return Buffer(p);
}

// Computes the rectangle rows [i0, i0 + m) x columns [j0, j0 + n) of C.
void gemm_rect(const KernelInfo& ker, const Blocking& bl, const Problem& p, int64_t i0, int64_t m,
               int64_t j0, int64_t n) {
  if (m <= 0 || n <= 0) return;
  // Multiples of the register tile, so only the rectangle's own edge has partial tiles; the
  // buffers are sized to what this rectangle needs, never more than one block each.
  const int64_t mc_blk = balanced_block(m, bl.mc, ker.mr);
  const int64_t nc_blk = balanced_block(n, bl.nc, ker.nr);
  Buffer a_buf = alloc_floats(mc_blk * bl.kc);
  Buffer b_buf = alloc_floats(nc_blk * bl.kc);
  const PackPanelFn pack_a = pack_panel_for(ker.mr);
  const PackPanelFn pack_b = pack_panel_for(ker.nr);

  for (int64_t jc = 0; jc < n; jc += nc_blk) {
    const int64_t nc = std::min(nc_blk, n - jc);
    for (int64_t pc = 0; pc < p.K; pc += bl.kc) {
      const int64_t kc = std::min(bl.kc, p.K - pc);
      pack_block(pack_b, ker.nr, p.b, j0 + jc, nc, pc, kc, b_buf.get());
      // The first K block applies the caller's beta; later ones accumulate onto it.
      const float beta = pc == 0 ? p.beta : 1.0f;
      for (int64_t ic = 0; ic < m; ic += mc_blk) {
        const int64_t mc = std::min(mc_blk, m - ic);
        pack_block(pack_a, ker.mr, p.a, i0 + ic, mc, pc, kc, a_buf.get());
        ker.macro(mc, nc, kc, a_buf.get(), b_buf.get(), p.C + (i0 + ic) * p.ldc + j0 + jc, p.ldc,
                  p.alpha, beta);
      }
    }
  }
}

// C = beta * C, for K == 0 or alpha == 0 (BLAS semantics: A and B are not read).
void scale_c(int64_t M, int64_t N, float beta, float* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i) {
    float* row = C + i * ldc;
    if (beta == 0.0f)
      std::fill(row, row + N, 0.0f);
    else if (beta != 1.0f)
      for (int64_t j = 0; j < N; ++j) row[j] *= beta;
  }
}

// ---------------------------------------------------------------------------------------------
// Threading: C is cut into tm x tn rectangles, one per task.

struct Grid {
  int64_t tm, tn;  // tasks along M and N
  int64_t mt, nt;  // rows / columns per task (multiples of mr / nr, the last one shorter)
};

// Below this many flops per task, waking another thread costs more than it saves.
constexpr double kMinFlopsPerTask = 4.0 * 1024 * 1024;

Grid choose_grid(const KernelInfo& ker, int64_t M, int64_t N, int64_t K, int threads) {
  const int64_t m_tiles = ceil_div(M, ker.mr), n_tiles = ceil_div(N, ker.nr);
  const double flops = 2.0 * double(M) * double(N) * double(K);
  const int64_t max_tasks =
      std::min({int64_t(threads), std::max<int64_t>(1, int64_t(flops / kMinFlopsPerTask)),
                m_tiles * n_tiles});

  Grid best{1, 1, M, N};
  double best_cost = -1;
  for (int64_t tm = 1; tm <= max_tasks; ++tm) {
    const int64_t tn = max_tasks / tm;
    if (tm > m_tiles || tn > n_tiles) continue;
    const int64_t mt = ceil_div(m_tiles, tm) * ker.mr;
    const int64_t nt = ceil_div(n_tiles, tn) * ker.nr;
    // Time of the largest rectangle per step of K, in cycles: its mt * nt multiply-adds at ~16
    // per cycle, plus packing ~1 element per cycle (op(B) once, op(A) once per nc columns).
    const double cost = double(mt) * double(nt) / 16.0 + double(nt) +
                        double(mt) * double(ceil_div(nt, ker.nc));
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      best = Grid{ceil_div(M, mt), ceil_div(N, nt), mt, nt};
    }
  }
  return best;
}

void check_args(bool transA, bool transB, int64_t M, int64_t N, int64_t K, const float* A,
                int64_t lda, const float* B, int64_t ldb, const float* C, int64_t ldc) {
  SK_CHECK(M >= 0 && N >= 0 && K >= 0, ErrorCode::Arg, "gemm: negative size M=", M, " N=", N,
           " K=", K);
  SK_CHECK(lda >= (transA ? M : K), ErrorCode::Arg, "gemm: lda=", lda, " is less than ",
           transA ? "M=" : "K=", transA ? M : K);
  SK_CHECK(ldb >= (transB ? K : N), ErrorCode::Arg, "gemm: ldb=", ldb, " is less than ",
           transB ? "K=" : "N=", transB ? K : N);
  SK_CHECK(ldc >= N, ErrorCode::Arg, "gemm: ldc=", ldc, " is less than N=", N);
  const bool reads_ab = M > 0 && N > 0 && K > 0;
  SK_CHECK(!reads_ab || (A != nullptr && B != nullptr), ErrorCode::Arg, "gemm: null A or B");
  SK_CHECK(M == 0 || N == 0 || C != nullptr, ErrorCode::Arg, "gemm: null C");
}

}  // namespace

void gemm_builtin_f32(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                      const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                      float* C, int64_t ldc, sk::ThreadPool& pool) {
  check_args(transA, transB, M, N, K, A, lda, B, ldb, C, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == 0.0f) {
    scale_c(M, N, beta, C, ldc);
    return;
  }

  const KernelInfo& ker = pick_kernel();
  Problem p{K, alpha, beta,
            transA ? Operand{A, 1, lda} : Operand{A, lda, 1},
            transB ? Operand{B, ldb, 1} : Operand{B, 1, ldb},
            C, ldc};
  // Rounded to 4 so that the transposing pack works on full 4 x 4 blocks inside a K block.
  const Blocking bl{ker.mc, balanced_block(K, ker.kc, 4), ker.nc};

  const Grid g = choose_grid(ker, M, N, K, pool.size());
  if (g.tm * g.tn == 1) {
    gemm_rect(ker, bl, p, 0, M, 0, N);
    return;
  }
  pool.run(int(g.tm * g.tn), [&](int task) {
    const int64_t i0 = (task / g.tn) * g.mt, j0 = (task % g.tn) * g.nt;
    gemm_rect(ker, bl, p, i0, std::min(g.mt, M - i0), j0, std::min(g.nt, N - j0));
  });
}

const char* gemm_builtin_kernel_name() { return pick_kernel().name; }

}  // namespace sk::cpu
