// The inner loops of the TopK SAE, compiled once per ISA (sae_kernels_<isa>.cpp) and chosen at
// run time. Shape letters: D = dIn, M = numLatents, K = k.
#pragma once
#include <cstdint>

namespace sk::cpu {

// A bounded selection of the best (value, index) pairs seen so far, kept as a binary min-heap
// whose root is the worst kept pair. Order: larger value first; equal values, lower index first.
struct TopKHeap {
  float* v;
  int32_t* i;
  int64_t size;  // pairs kept so far
  int64_t cap;   // K
};

struct SaeKernels {
  // Offers (ReLU(pre[l] + bias[l]), base + l) for l in [0, count) to the heap, in index order.
  void (*topk_scan)(TopKHeap* h, const float* pre, const float* bias, int64_t count, int32_t base);
  // out[b] = the largest relu_code(pre[l] + bias[l]) over block b, l in [16 b, 16 b + 16), for b
  // in [0, blocks): the same values topk_scan offers (a NaN counts as +Infinity).
  void (*relu_block_max)(const float* pre, const float* bias, int64_t blocks, float* out);
  // dot(a, b) over n floats (float32 accumulation in vector lanes).
  float (*dot)(const float* a, const float* b, int64_t n);
  // y += a * x over n floats.
  void (*axpy)(float* y, float a, const float* x, int64_t n);
  // Adam on n parameters with gradient g (g may be null: zero gradient).
  //   m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr_t * m / (sqrt(v) * inv_sqrt_bc2 + eps)
  // where lr_t = lr / (1 - b1^t) and inv_sqrt_bc2 = 1 / sqrt(1 - b2^t).
  void (*adam)(float* p, float* m, float* v, const float* g, int64_t n, float b1, float b2, float lr_t,
               float inv_sqrt_bc2, float eps);
};

const SaeKernels& sae_kernels();  // the best for this CPU (SAEKIT_SIMD can lower it)
const SaeKernels& sae_kernels_sse42();
const SaeKernels& sae_kernels_avx2();
const SaeKernels& sae_kernels_avx512();

// Heap primitives shared by the kernels (header-only, internal linkage per ISA build).
// The value a latent's pre-activation a is offered as: ReLU(a), except that a NaN (inf - inf: finite
// inputs and weights whose products overflow float32) is +Infinity, so it is kept and the encode's
// check of its codes refuses the row (as ReLU, a NaN became a code of 0 and the latent was dropped).
static inline float relu_code(float a) {
  return a > 0.0f ? a : a == a ? 0.0f : __builtin_inff();
}

static inline bool topk_worse(float va, int32_t ia, float vb, int32_t ib) {
  return va < vb || (va == vb && ia > ib);
}

static inline void topk_sift_down(TopKHeap* h, int64_t pos) {
  const int64_t n = h->size;
  float v = h->v[pos];
  int32_t id = h->i[pos];
  for (;;) {
    int64_t c = 2 * pos + 1;
    if (c >= n) break;
    if (c + 1 < n && topk_worse(h->v[c + 1], h->i[c + 1], h->v[c], h->i[c])) ++c;
    if (!topk_worse(h->v[c], h->i[c], v, id)) break;
    h->v[pos] = h->v[c];
    h->i[pos] = h->i[c];
    pos = c;
  }
  h->v[pos] = v;
  h->i[pos] = id;
}

static inline void topk_sift_up(TopKHeap* h, int64_t pos) {
  float v = h->v[pos];
  int32_t id = h->i[pos];
  while (pos > 0) {
    int64_t p = (pos - 1) / 2;
    if (!topk_worse(v, id, h->v[p], h->i[p])) break;
    h->v[pos] = h->v[p];
    h->i[pos] = h->i[p];
    pos = p;
  }
  h->v[pos] = v;
  h->i[pos] = id;
}

// Offers one pair; pairs must arrive in increasing index order.
static inline void topk_push(TopKHeap* h, float v, int32_t id) {
  if (h->size < h->cap) {
    h->v[h->size] = v;
    h->i[h->size] = id;
    topk_sift_up(h, h->size++);
  } else if (v > h->v[0]) {  // equal value, larger index: worse than the root, never kept
    h->v[0] = v;
    h->i[0] = id;
    topk_sift_down(h, 0);
  }
}

}  // namespace sk::cpu
