// Pearson correlation between the sparse codes of two SAEs over aligned tokens (methods.md §1.3),
// as a row-streaming sparse product (Gustavson): the codes of both sides are kept in memory, A's
// are regrouped into per-latent posting lists (token, value) by a counting sort, and each row i of
// the cross-moment S_xy = sum_t x_ti y_t is accumulated in a float64 dense row of length nB from
// i's postings times B's codes of those tokens, then turned into Pearson r and either stored (the
// full float32 matrix) or reduced to top matches. The nA x nB matrix of sums is never held.
#pragma once
#include <cstdint>
#include <vector>

#include "../core/thread_pool.h"

namespace sk::cpu {

// The codes of both sides, appended batch by batch in token order, with per-feature float64 sums.
// Only nonzero entries are kept, row by row (CSR: token t's entries are [ptr[t], ptr[t + 1])).
struct SparseCorrStore {
  int64_t nA = 0, nB = 0;
  int64_t rows = 0;
  std::vector<int64_t> pa, pb;  // [rows + 1]
  std::vector<float> va, vb;
  std::vector<int32_t> ia, ib;
  std::vector<double> sa, saa, sb, sbb, activeA, activeB;
  std::vector<int64_t> stampA, stampB;  // duplicate-index check: the last row (gen) that used a latent
  int64_t gen = 0;

  // reserveEntries: expected nonzero entries per side (a hint).
  SparseCorrStore(int64_t nA, int64_t nB, int64_t reserveRows, int64_t reserveA, int64_t reserveB);
  // Copies one batch of codes [batchRows, kA] and [batchRows, kB] (any k per batch), dropping
  // zeros. Validated: indices in range and distinct within a row (among nonzeros), values finite.
  // Throws sk::Error naming the argument.
  void append(const float* valuesA, const int32_t* indicesA, int64_t kA, const float* valuesB, const int32_t* indicesB,
              int64_t kB, int64_t batchRows);
};

struct SparseCorrOptions {
  bool full = false;     // write the full [nA, nB] float32 r
  int64_t top = 0;       // else: for every B feature its best `top` A features
  bool reverse = false;  // and for every A feature its best `top` B features
  double scale = 1.0;    // every r times this before the clamp and the float32 rounding (compat)
  // The CPU run's per-thread work arrays (nB x (16 + 8 top) bytes each: the row's float64 sums,
  // its float32 r, and in top mode the thread's lists) within this many bytes: fewer threads run
  // when they would pass it, at least one. 0: no bound. The result is the same for any count.
  int64_t max_work_bytes = 0;
};

struct SparseCorrResult {
  int64_t tokens = 0;
  std::vector<uint8_t> constantA, constantB;
  float* r = nullptr;  // [nA, nB] when full (caller-owned buffer)
  int64_t kTop = 0, kRev = 0;
  int32_t* topIndex = nullptr;  // [nB, kTop] (caller-owned), best first, ties to the lower index
  float* topR = nullptr;
  int32_t* revIndex = nullptr;  // [nA, kRev] when reverse
  float* revR = nullptr;
};

// A feature is constant (r = 0 against everything, flagged) when its variance is <= 1e-12 of its
// raw second moment (or zero). Consumes the store: A's codes become posting lists and B's codes
// interleaved (latent, value) rows, both in 2 MiB-aligned memory marked for transparent huge
// pages (rows of B are read at random by token); each old array is freed once copied, so the
// peak is about the store plus one side. The partition over rows of A is fixed per thread count,
// and the result is identical for any thread count and any batch split.
void sparse_correlation(SparseCorrStore& store, const SparseCorrOptions& opt, SparseCorrResult& out, ThreadPool& pool);

}  // namespace sk::cpu
