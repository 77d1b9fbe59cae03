#include "sparse_corr.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>

#include <immintrin.h>  // SSE only: this file is baseline x86-64 + SSE4.2

#include "../core/corr_device.h"
#include "../core/aligned_memory.h"
#include "../core/error.h"

namespace sk::cpu {

SparseCorrStore::SparseCorrStore(int64_t nA_, int64_t nB_, int64_t reserveRows, int64_t reserveA, int64_t reserveB)
    : nA(nA_), nB(nB_) {
  try {
    pa.reserve(size_t(reserveRows + 1));
    pb.reserve(size_t(reserveRows + 1));
    pa.push_back(0);
    pb.push_back(0);
    va.reserve(size_t(reserveA));
    ia.reserve(size_t(reserveA));
    vb.reserve(size_t(reserveB));
    ib.reserve(size_t(reserveB));
    sa.assign(size_t(nA), 0.0);
    saa.assign(size_t(nA), 0.0);
    activeA.assign(size_t(nA), 0.0);
    sb.assign(size_t(nB), 0.0);
    sbb.assign(size_t(nB), 0.0);
    activeB.assign(size_t(nB), 0.0);
    stampA.assign(size_t(nA), -1);
    stampB.assign(size_t(nB), -1);
  } catch (const std::bad_alloc&) {
    throw Error(ErrorCode::Memory, fmt("Could not allocate the code store for ", reserveRows, " tokens"));
  }
}

namespace {

// Checks one side's batch: indices in range, values finite, nonzeros' indices distinct per row.
void check_side(const char* side, const float* v, const int32_t* idx, int64_t rows, int64_t k, int64_t n,
                std::vector<int64_t>& stamp, int64_t& gen) {
  for (int64_t t = 0; t < rows; ++t) {
    ++gen;
    for (int64_t p = t * k; p < (t + 1) * k; ++p) {
      const int32_t j = idx[p];
      if (j < 0 || j >= n)
        throw Error(ErrorCode::Arg, fmt("Expected codes", side, ".indices[", p, "] in [0, ", n, ") but received ", j));
      if (!std::isfinite(v[p]))
        throw Error(ErrorCode::NonFinite, fmt("Expected finite codes", side, ".values but element ", p, " is ", js_nonfinite(v[p])));
      if (v[p] == 0) continue;
      if (stamp[size_t(j)] == gen)
        throw Error(ErrorCode::Arg, fmt("Expected distinct codes", side, ".indices within a row but row ", t,
                                        " holds latent ", j, " twice"));
      stamp[size_t(j)] = gen;
    }
  }
}

// Adds a checked batch's per-feature sums (in token order) and appends its nonzeros.
void add_side(const float* v, const int32_t* idx, int64_t rows, int64_t k, std::vector<double>& s,
              std::vector<double>& ss, std::vector<double>& active, std::vector<int64_t>& ptr, std::vector<float>& vals,
              std::vector<int32_t>& inds) {
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t p = t * k; p < (t + 1) * k; ++p) {
      const double x = v[p];
      if (x == 0) continue;
      const size_t j = size_t(idx[p]);
      s[j] += x;
      ss[j] += x * x;
      active[j] += 1;
      vals.push_back(v[p]);
      inds.push_back(idx[p]);
    }
    ptr.push_back(int64_t(vals.size()));
  }
}

}  // namespace

void SparseCorrStore::append(const float* valuesA, const int32_t* indicesA, int64_t kA, const float* valuesB,
                             const int32_t* indicesB, int64_t kB, int64_t batchRows) {
  if (rows + batchRows >= (int64_t(1) << 31))
    throw Error(ErrorCode::Arg, fmt("Expected at most 2^31 - 1 tokens in a sparse correlation but received ", rows + batchRows));
  // Nothing changes unless the whole batch is valid. An allocation failure below leaves the store
  // unusable (the caller drops it).
  check_side("A", valuesA, indicesA, batchRows, kA, nA, stampA, gen);
  check_side("B", valuesB, indicesB, batchRows, kB, nB, stampB, gen);
  try {
    add_side(valuesA, indicesA, batchRows, kA, sa, saa, activeA, pa, va, ia);
    add_side(valuesB, indicesB, batchRows, kB, sb, sbb, activeB, pb, vb, ib);
  } catch (const std::bad_alloc&) {
    throw Error(ErrorCode::Memory, fmt("Could not grow the code store past ", rows, " tokens"));
  }
  rows += batchRows;
}

namespace {

struct FreeDeleter {
  void operator()(void* p) const { aligned_free(p); }
};
template <typename T>
using HugeArray = std::unique_ptr<T[], FreeDeleter>;

// An array the kernel reads at random (B's codes by token, the posting lists): 2 MiB aligned and,
// on Linux, marked for transparent huge pages, so that random rows cost a cache miss but rarely a
// TLB miss as well.
template <typename T>
HugeArray<T> huge_array(size_t n) {
  const size_t align = size_t(2) << 20;
  const size_t bytes = std::max<size_t>((n * sizeof(T) + align - 1) / align * align, align);
  void* p = aligned_malloc(align, bytes);
  if (p == nullptr) throw std::bad_alloc();
  advise_huge_pages(p, bytes);  // a hint; failure is harmless
  return HugeArray<T>(static_cast<T*>(p));
}

struct Entry {
  int32_t index;  // latent of B (in B's rows) or token (in A's posting lists)
  float value;
};

// Better = larger r, then lower index.
inline bool better(float r, int32_t i, float r2, int32_t i2) { return r > r2 || (r == r2 && i < i2); }

// Inserts (r, i) into a best-first list of k (v, x), whose last entry is the worst.
inline void heap_insert(float* v, int32_t* x, int64_t k, float r, int32_t i) {
  int64_t p = k - 1;
  while (p > 0 && better(r, i, v[p - 1], x[p - 1])) {
    v[p] = v[p - 1];
    x[p] = x[p - 1];
    --p;
  }
  v[p] = r;
  x[p] = i;
}

// mean and 1/sd (0 for a constant feature) from float64 raw sums over n tokens.
void moments(const std::vector<double>& s, const std::vector<double>& ss, double n, std::vector<double>& mean,
             std::vector<double>& inv, std::vector<uint8_t>& constant) {
  const size_t m = s.size();
  mean.resize(m);
  inv.resize(m);
  constant.resize(m);
  for (size_t i = 0; i < m; ++i) sk_corr_moments(s[i], ss[i], n, &mean[i], &inv[i], &constant[i]);
}

}  // namespace

void sparse_correlation(SparseCorrStore& st, const SparseCorrOptions& opt, SparseCorrResult& out, ThreadPool& pool) {
  const int64_t T = st.rows, nA = st.nA, nB = st.nB;
  if (T < 2) throw Error(ErrorCode::Arg, fmt("Expected at least 2 tokens for a correlation but received ", T));
  const double n = double(T);
  out.tokens = T;
  std::vector<double> meanA, invA, meanB, invB;
  moments(st.sa, st.saa, n, meanA, invA, out.constantA);
  moments(st.sb, st.sbb, n, meanB, invB, out.constantB);

  // Posting lists of A: (token, value) per latent, in token order (counting sort); B's codes as
  // interleaved (latent, value) rows.
  std::vector<int64_t> start(size_t(nA) + 1, 0);
  HugeArray<Entry> post, brow;
  HugeArray<int64_t> bptr;
  try {
    const int64_t E = int64_t(st.va.size());
    for (int64_t p = 0; p < E; ++p) ++start[size_t(st.ia[size_t(p)]) + 1];
    for (int64_t i = 0; i < nA; ++i) start[size_t(i) + 1] += start[size_t(i)];
    post = huge_array<Entry>(size_t(E));
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t p = st.pa[size_t(t)]; p < st.pa[size_t(t) + 1]; ++p) {
        const int64_t q = fill[size_t(st.ia[size_t(p)])]++;
        post[size_t(q)] = Entry{int32_t(t), st.va[size_t(p)]};
      }
    std::vector<float>().swap(st.va);
    std::vector<int32_t>().swap(st.ia);
    std::vector<int64_t>().swap(st.pa);
    const size_t EB = st.vb.size();
    brow = huge_array<Entry>(EB);
    for (size_t p = 0; p < EB; ++p) brow[p] = Entry{st.ib[p], st.vb[p]};
    std::vector<float>().swap(st.vb);
    std::vector<int32_t>().swap(st.ib);
    bptr = huge_array<int64_t>(st.pb.size());
    std::memcpy(bptr.get(), st.pb.data(), st.pb.size() * sizeof(int64_t));
    std::vector<int64_t>().swap(st.pb);
  } catch (const std::bad_alloc&) {
    throw Error(ErrorCode::Memory, "Could not allocate the posting lists of the codes");
  }

  const int64_t kTop = opt.full ? 0 : std::min<int64_t>(opt.top, nA);
  const int64_t kRev = opt.full || !opt.reverse ? 0 : std::min<int64_t>(opt.top, nB);
  // Each task holds nB float64 sums, a float32 row of r (top mode) and its own lists (kTop + 1
  // floats and kTop indices per B feature): with a large top, one per thread could pass the
  // memory the caller allows, so fewer tasks run (at least one).
  const int64_t task_bytes = nB * (8 + (opt.full ? 0 : 4) + (kTop ? 4 + 8 * kTop : 0));
  int P = std::max(1, pool.size());
  if (opt.max_work_bytes > 0) P = int(std::max<int64_t>(1, std::min<int64_t>(P, opt.max_work_bytes / std::max<int64_t>(1, task_bytes))));
  out.kTop = kTop;
  out.kRev = kRev;
  // Per-task best-first lists for every B feature (merged below).
  std::vector<std::vector<float>> tv(static_cast<size_t>(P));
  std::vector<std::vector<int32_t>> tx(static_cast<size_t>(P));
  const Entry* bv = brow.get();
  const int64_t* pb = bptr.get();
  const Entry* ps = post.get();
  pool.run(P, [&](int task) {
    const int64_t i0 = nA * task / P, i1 = nA * (task + 1) / P;
    std::vector<double> acc(size_t(nB), 0.0);
    std::vector<float>& hv = tv[size_t(task)];
    std::vector<int32_t>& hx = tx[size_t(task)];
    std::vector<float> worst, rowf(opt.full ? 0 : size_t(nB));
    if (kTop > 0) {
      hv.assign(size_t(nB * kTop), -std::numeric_limits<float>::infinity());
      hx.assign(size_t(nB * kTop), std::numeric_limits<int32_t>::max());
      worst.assign(size_t(nB), -std::numeric_limits<float>::infinity());
    }
    for (int64_t i = i0; i < i1; ++i) {
      double* a = acc.data();
      // B's rows are read in token order per latent, i.e. at random over all tokens: prefetch the
      // row pointers 16 postings ahead and the rows 8 ahead.
      const int64_t q0 = start[size_t(i)], q1 = start[size_t(i) + 1];
      for (int64_t q = q0; q < q1; ++q) {
        if (q + 16 < q1) __builtin_prefetch(pb + ps[q + 16].index);
        if (q + 8 < q1) {
          const int64_t o = pb[ps[q + 8].index], e = pb[ps[q + 8].index + 1];
          for (int64_t c = o; c < e; c += 8) __builtin_prefetch(bv + c);
        }
        const double u = ps[q].value;
        const int64_t t = ps[q].index;
        for (int64_t p = pb[t]; p < pb[t + 1]; ++p) a[bv[p].index] += u * double(bv[p].value);
      }
      const double mi = n * meanA[size_t(i)], si = invA[size_t(i)], scale = opt.scale;
      const double* mB = meanB.data();
      const double* sB = invB.data();
      // Pass 1 (branch-free, vectorised): the row of r as float32, the accumulator re-zeroed.
      float* row = opt.full ? out.r + i * nB : rowf.data();
      for (int64_t j = 0; j < nB; ++j) {
        double r = (a[j] - mi * mB[j]) * si * sB[j] * scale;  // scale 1 is exact
        a[j] = 0;
        r = r < -1.0 ? -1.0 : r;
        r = r > 1.0 ? 1.0 : r;
        row[j] = float(r + 0.0);  // + 0.0 turns -0 into +0
      }
      if (opt.full) continue;
      // Pass 2: offer the row to the lists; almost every compare fails.
      float* rv = kRev ? out.revR + i * kRev : nullptr;
      int32_t* rx = kRev ? out.revIndex + i * kRev : nullptr;
      if (kRev) {
        std::fill(rv, rv + kRev, -std::numeric_limits<float>::infinity());
        std::fill(rx, rx + kRev, std::numeric_limits<int32_t>::max());
      }
      // Four columns per compare (SSE); the scalar path runs only where some column qualifies.
      float* wst = worst.data();
      float bar = kRev ? rv[kRev - 1] : std::numeric_limits<float>::infinity();
      auto offer = [&](int64_t j) {
        const float f = row[j];
        // Rows come in increasing i within a task, so an equal r never displaces a kept one.
        if (f > wst[j]) {
          heap_insert(hv.data() + j * kTop, hx.data() + j * kTop, kTop, f, int32_t(i));
          wst[j] = hv[size_t(j * kTop + kTop - 1)];
        }
        if (f > bar) {
          heap_insert(rv, rx, kRev, f, int32_t(j));
          bar = rv[kRev - 1];
        }
      };
      int64_t j = 0;
      for (; j + 4 <= nB; j += 4) {
        const __m128 r4 = _mm_loadu_ps(row + j);
        const int m = _mm_movemask_ps(_mm_or_ps(_mm_cmpgt_ps(r4, _mm_loadu_ps(wst + j)), _mm_cmpgt_ps(r4, _mm_set1_ps(bar))));
        if (m == 0) continue;
        for (int64_t c = j; c < j + 4; ++c) offer(c);
      }
      for (; j < nB; ++j) offer(j);
    }
  });
  if (kTop == 0) return;
  // Merge the tasks' lists per B feature under the total order (r desc, index asc).
  pool.run(P, [&](int task) {
    const int64_t j0 = nB * task / P, j1 = nB * (task + 1) / P;
    std::vector<float> v(static_cast<size_t>(kTop));
    std::vector<int32_t> x(static_cast<size_t>(kTop));
    for (int64_t j = j0; j < j1; ++j) {
      std::fill(v.begin(), v.end(), -std::numeric_limits<float>::infinity());
      std::fill(x.begin(), x.end(), std::numeric_limits<int32_t>::max());
      for (int s = 0; s < P; ++s)
        for (int64_t q = 0; q < kTop; ++q) {
          const float r = tv[size_t(s)][size_t(j * kTop + q)];
          const int32_t i = tx[size_t(s)][size_t(j * kTop + q)];
          if (better(r, i, v[size_t(kTop - 1)], x[size_t(kTop - 1)])) heap_insert(v.data(), x.data(), kTop, r, i);
        }
      std::copy(v.begin(), v.end(), out.topR + j * kTop);
      std::copy(x.begin(), x.end(), out.topIndex + j * kTop);
    }
  });
}

}  // namespace sk::cpu
