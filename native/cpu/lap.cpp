#include "lap.h"

#include <cmath>
#include <limits>
#include <vector>

#include "../core/error.h"

namespace sk::cpu {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kMaxCost = 1e300;  // see linear_assignment

// JV initialisation for square problems: column reduction, reduction transfer, then two rounds of
// augmenting row reduction. Leaves assigned rows at a minimum of their reduced costs c - v (so
// u_i = c[i, x_i] - v[x_i] is a feasible dual) and returns the rows still free.
std::vector<int32_t> jv_init(const double* c, int64_t n, std::vector<double>& v, std::vector<int32_t>& x,
                             std::vector<int32_t>& y) {
  std::vector<int32_t> matches(size_t(n), 0);
  // Column reduction, last column first (as JV): v_j = min_i c_ij. Row-major scan for the cache.
  std::vector<double> colmin(size_t(n), kInf);
  std::vector<int32_t> argmin(size_t(n), 0);
  for (int64_t i = 0; i < n; ++i) {
    const double* ci = c + i * n;
    for (int64_t j = 0; j < n; ++j)
      if (ci[j] < colmin[size_t(j)]) {  // strict: the lowest row on ties
        colmin[size_t(j)] = ci[j];
        argmin[size_t(j)] = int32_t(i);
      }
  }
  for (int64_t j = n - 1; j >= 0; --j) {
    v[size_t(j)] = colmin[size_t(j)];
    const int32_t i = argmin[size_t(j)];
    if (++matches[size_t(i)] == 1) {
      x[size_t(i)] = int32_t(j);
      y[size_t(j)] = i;
    } else if (v[size_t(j)] < v[size_t(x[size_t(i)])]) {
      const int32_t j1 = x[size_t(i)];
      x[size_t(i)] = int32_t(j);
      y[size_t(j)] = i;
      y[size_t(j1)] = -1;
    } else {
      y[size_t(j)] = -1;
    }
  }
  // Reduction transfer.
  std::vector<int32_t> free_rows;
  for (int64_t i = 0; i < n; ++i) {
    if (matches[size_t(i)] == 0) {
      free_rows.push_back(int32_t(i));
    } else if (matches[size_t(i)] == 1) {
      const int32_t j1 = x[size_t(i)];
      const double* ci = c + i * n;
      double mn = kInf;
      for (int64_t j = 0; j < n; ++j)
        if (j != j1 && ci[j] - v[size_t(j)] < mn) mn = ci[j] - v[size_t(j)];
      // Row i's reduced costs: 0 at j1 after this, >= 0 elsewhere (mn is the runner-up).
      if (mn < kInf) v[size_t(j1)] = ci[j1] - mn;
    }
    // matches > 1: the row holds one of its columns; the others became free columns.
  }
  // Rows that won several columns at reduction hold the cheapest; their duals are fine as long as
  // the held column is a row minimum of c - v, which the augmentation below needs. Re-check:
  // any row whose held column is not its minimum is freed.
  for (int64_t i = 0; i < n; ++i) {
    if (x[size_t(i)] < 0 || matches[size_t(i)] <= 1) continue;
    const double* ci = c + i * n;
    const int32_t j1 = x[size_t(i)];
    double mn = kInf;
    for (int64_t j = 0; j < n; ++j) mn = std::min(mn, ci[j] - v[size_t(j)]);
    if (ci[j1] - v[size_t(j1)] > mn) {
      y[size_t(j1)] = -1;
      x[size_t(i)] = -1;
      free_rows.push_back(int32_t(i));
    }
  }
  // Augmenting row reduction, two rounds.
  for (int round = 0; round < 2 && !free_rows.empty(); ++round) {
    std::vector<int32_t> next;
    size_t k = 0;
    int64_t budget = 4 * n + 16;  // reprocessing steps this round (a guard against float ping-pong)
    while (k < free_rows.size()) {
      const int32_t i = free_rows[k++];
      const double* ci = c + int64_t(i) * n;
      double u1 = kInf, u2 = kInf;
      int64_t j1 = -1, j2 = -1;
      for (int64_t j = 0; j < n; ++j) {
        const double h = ci[j] - v[size_t(j)];
        if (h < u2) {
          if (h < u1) {
            u2 = u1;
            j2 = j1;
            u1 = h;
            j1 = j;
          } else {
            u2 = h;
            j2 = j;
          }
        }
      }
      if (j1 < 0) throw Error(ErrorCode::Internal, "linear assignment: no column for a row (reduced costs overflowed)");
      int32_t i0 = y[size_t(j1)];
      const bool strict = u1 < u2;
      if (strict) {
        v[size_t(j1)] -= u2 - u1;  // row i's reduced cost at j1 rises to u2: still its minimum
      } else if (i0 >= 0 && j2 >= 0) {
        j1 = j2;
        i0 = y[size_t(j1)];
      }
      if (i0 >= 0) x[size_t(i0)] = -1;
      x[size_t(i)] = int32_t(j1);
      y[size_t(j1)] = i;
      if (i0 >= 0) {
        if (strict && budget-- > 0) free_rows[--k] = i0;
        else next.push_back(i0);
      }
    }
    free_rows.swap(next);
  }
  return free_rows;
}

}  // namespace

void linear_assignment(const double* c, int64_t n, int64_t m, int32_t* col4row) {
  if (n == 0) return;
  // Reduced costs are differences of costs and dual values: costs up to 1e300 in magnitude keep
  // them finite (near DBL_MAX a difference overflows to infinity and no column would be chosen).
  for (int64_t q = 0; q < n * m; ++q) {
    if (!std::isfinite(c[q])) throw Error(ErrorCode::NonFinite, fmt("Expected finite costs but cost[", q, "] is ", js_nonfinite(c[q])));
    if (std::fabs(c[q]) > kMaxCost) throw Error(ErrorCode::Arg, fmt("Expected costs of magnitude at most 1e300 but cost[", q, "] is ", c[q]));
  }
  std::vector<double> v(size_t(m), 0.0);
  std::vector<int32_t> x(size_t(n), -1), y(size_t(m), -1);
  std::vector<int32_t> free_rows;
  if (n == m) {
    free_rows = jv_init(c, n, v, x, y);
  } else {
    for (int64_t i = 0; i < n; ++i) free_rows.push_back(int32_t(i));
  }

  // Shortest augmenting path from each free row (Dijkstra over columns on reduced costs c - u - v,
  // with u implicit: u_i = c[i, x_i] - v[x_i]).
  std::vector<double> d(static_cast<size_t>(m));
  std::vector<int32_t> pred(static_cast<size_t>(m)), cols(static_cast<size_t>(m));
  for (const int32_t f : free_rows) {
    const double* cf = c + int64_t(f) * m;
    for (int64_t j = 0; j < m; ++j) {
      cols[size_t(j)] = int32_t(j);
      d[size_t(j)] = cf[j] - v[size_t(j)];
      pred[size_t(j)] = f;
    }
    // cols[0, low): scanned (final distance); [low, up): at the current minimum, to scan;
    // [up, m): not yet reached at the minimum.
    int64_t low = 0, up = 0, last = 0;
    double mn = 0;
    int32_t sink = -1;
    while (sink < 0) {
      if (up == low) {
        last = low;
        mn = d[size_t(cols[size_t(up)])];
        for (int64_t k = up; k < m; ++k) {
          const int32_t j = cols[size_t(k)];
          const double h = d[size_t(j)];
          if (h <= mn) {
            if (h < mn) {
              up = low;
              mn = h;
            }
            cols[size_t(k)] = cols[size_t(up)];
            cols[size_t(up++)] = j;
          }
        }
        for (int64_t k = low; k < up; ++k)
          if (y[size_t(cols[size_t(k)])] < 0) {
            sink = cols[size_t(k)];
            break;
          }
        if (sink >= 0) break;
      }
      const int32_t j1 = cols[size_t(low++)];
      const int32_t i = y[size_t(j1)];
      if (i < 0) throw Error(ErrorCode::Internal, "linear assignment: a scanned column has no row (reduced costs overflowed)");
      const double* ci = c + int64_t(i) * m;
      const double u1 = ci[j1] - v[size_t(j1)] - mn;
      for (int64_t k = up; k < m; ++k) {
        const int32_t j = cols[size_t(k)];
        const double h = ci[j] - v[size_t(j)] - u1;
        if (h < d[size_t(j)]) {
          pred[size_t(j)] = i;
          if (h == mn) {
            if (y[size_t(j)] < 0) {
              sink = j;
              break;
            }
            cols[size_t(k)] = cols[size_t(up)];
            cols[size_t(up++)] = j;
          }
          d[size_t(j)] = h;
        }
      }
      if (!(mn < kInf)) throw Error(ErrorCode::Internal, "linear assignment: no augmenting path");
    }
    // Dual update of the columns scanned before the final minimum, then augment.
    for (int64_t k = 0; k < last; ++k) {
      const int32_t j = cols[size_t(k)];
      v[size_t(j)] += d[size_t(j)] - mn;
    }
    int32_t j = sink;
    for (;;) {
      const int32_t i = pred[size_t(j)];
      y[size_t(j)] = i;
      const int32_t prev = x[size_t(i)];
      x[size_t(i)] = j;
      if (i == f) break;
      j = prev;
    }
  }
  for (int64_t i = 0; i < n; ++i) col4row[i] = x[size_t(i)];
}

}  // namespace sk::cpu
