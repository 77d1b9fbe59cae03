// Philox 4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
// counter-based generator behind every random tensor in saekit. It is a pure function of
// (counter, key), so the CPU and CUDA backends produce the same bits for the same element.
//
// Stream layout (documented in docs/random.md; keep both in sync):
//   key     = (seed & 0xffffffff, seed >> 32)                       seed: uint64
//   counter = (block & 0xffffffff, block >> 32, stream & 0xffffffff, stream >> 32)
//   block   = element_index / 4, lane = element_index % 4
// Element i of a tensor filled with (seed, stream) takes 32-bit word `lane` of
// philox(counter(block), key). rand: u = (word >> 8) * 2^-24 in [0, 1). randn: Box-Muller on the
// lane pairs (0,1) and (2,3) of the same block, with u1 = ((w0 >> 8) + 0.5) * 2^-24 in (0, 1)
// and u2 = (w1 >> 8) * 2^-24: z0 = r cos(2 pi u2), z1 = r sin(2 pi u2), r = sqrt(-2 ln u1),
// computed in float64 and rounded to the output dtype.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define SK_PHILOX_HD __host__ __device__ __forceinline__
#else
#define SK_PHILOX_HD static inline
#endif

namespace sk {

struct Philox4x32 {
  uint32_t v[4];
};

SK_PHILOX_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  uint64_t p = uint64_t(a) * uint64_t(b);
  *hi = uint32_t(p >> 32);
  *lo = uint32_t(p);
}

// Ten rounds of Philox 4x32 on counter c with key (k0, k1).
SK_PHILOX_HD Philox4x32 philox4x32_10(Philox4x32 c, uint32_t k0, uint32_t k1) {
  const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  const uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(M0, c.v[0], &hi0, &lo0);
    philox_mulhilo(M1, c.v[2], &hi1, &lo1);
    Philox4x32 n;
    n.v[0] = hi1 ^ c.v[1] ^ k0;
    n.v[1] = lo1;
    n.v[2] = hi0 ^ c.v[3] ^ k1;
    n.v[3] = lo0;
    c = n;
    k0 += W0;
    k1 += W1;
  }
  return c;
}

// The block of four words for (seed, stream, block) per the layout above.
SK_PHILOX_HD Philox4x32 philox_block(uint64_t seed, uint64_t stream, uint64_t block) {
  Philox4x32 c;
  c.v[0] = uint32_t(block);
  c.v[1] = uint32_t(block >> 32);
  c.v[2] = uint32_t(stream);
  c.v[3] = uint32_t(stream >> 32);
  return philox4x32_10(c, uint32_t(seed), uint32_t(seed >> 32));
}

// [0, 1), 24-bit resolution, exact in float32.
SK_PHILOX_HD double philox_uniform(uint32_t w) { return double(w >> 8) * (1.0 / 16777216.0); }
// (0, 1), never 0, for the logarithm in Box-Muller.
SK_PHILOX_HD double philox_uniform_open(uint32_t w) { return (double(w >> 8) + 0.5) * (1.0 / 16777216.0); }

}  // namespace sk
