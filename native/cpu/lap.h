// Exact linear assignment (min sum_i c[i, x_i] over one-to-one matchings that assign every row),
// float64 costs, by shortest augmenting paths with the dual updates of Jonker and Volgenant
// (1987). Square problems start with JV's column reduction, reduction transfer and two rounds of
// augmenting row reduction, which assign most rows of a dense random matrix cheaply; rectangular
// ones (rows < cols) start from zero duals, the rectangular form of Crouse (IEEE TAES 2016).
// O(n^2 m) worst case.
#pragma once
#include <cstdint>

namespace sk::cpu {

// c: [n, m] row-major, n <= m, finite. Writes the column of each row into col4row[n]. `c` is
// read only. Throws sk::Error on non-finite costs.
void linear_assignment(const double* c, int64_t n, int64_t m, int32_t* col4row);

}  // namespace sk::cpu
