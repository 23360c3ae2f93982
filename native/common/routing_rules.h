// Arithmetic of the routing family that the CUDA kernels and the CPU reference must compute
// identically: the 64-bit selection key, the exp/sigmoid used for scores, and the f32 operations
// they are built from. Every operation is a single IEEE-754 round-to-nearest step (explicit
// __f*_rn intrinsics on the device, where nvcc would otherwise contract a*b+c into an FMA; the
// CPU sources of this family are compiled with -ffp-contract=off), so both backends produce the
// same bits and therefore the same expert ids.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/align.h"

namespace moe::routing_rules {

#if defined(__CUDACC__)
#define ROUTING_HD __host__ __device__ __forceinline__
#else
#define ROUTING_HD inline
#endif

ROUTING_HD float add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

ROUTING_HD float mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

ROUTING_HD float div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

ROUTING_HD float fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

ROUTING_HD uint32_t bitsOf(float v) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(v);
#else
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u;
#endif
}

ROUTING_HD float floatOf(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

ROUTING_HD bool isNan(float v) { return (bitsOf(v) & 0x7FFFFFFFu) > 0x7F800000u; }

// Order-preserving bits of an f32: orderBits(a) < orderBits(b) iff a < b; -0 and +0 are equal;
// every NaN maps to 0, below -inf (0x007FFFFF), so a NaN never outranks a number.
ROUTING_HD uint32_t orderBits(float v) {
  uint32_t u = bitsOf(v);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0u;
  if (u == 0x80000000u) u = 0u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The float whose orderBits is `k` (k != 0); +0 for the key of either zero.
ROUTING_HD float fromOrderBits(uint32_t k) { return floatOf((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k); }

// Selection key: value bits above, 65535 - index below, so a max-reduction picks the larger
// value and, between equal values, the lower index; keys of distinct indices never tie. Index
// is < 65536 (experts and groups are at most 512).
ROUTING_HD uint64_t selectionKey(float v, int index) {
  return (static_cast<uint64_t>(orderBits(v)) << 32) | static_cast<uint32_t>(65535 - index);
}

ROUTING_HD int keyIndex(uint64_t key) { return 65535 - static_cast<int>(key & 0xFFFFu); }

// exp's steps for x in [-87, 88.72], where neither of its guards applies, with no branch
// (n = -126 near -87 gives a zero scale: exp's flush to 0).
ROUTING_HD float expInRange(float x);

// exp(x) from f32 operations only: n = rint(x log2 e), r = x - n ln2 in two Cody-Waite steps,
// a degree-7 Taylor polynomial on |r| <= ln2/2 (truncation error < 0.05 ulp), times 2^n.
// Results below 2^-125 flush to 0 (no subnormal outputs); above FLT_MAX give +inf; NaN stays NaN.
ROUTING_HD float exp(float x) {
  // one comparison on the common path (callers that exclude x < -87 and NaN drop it inlined)
  if (!(x >= -87.0f)) return isNan(x) ? x : 0.0f;
  if (x > 88.72283935546875f) return floatOf(0x7F800000u);
  return expInRange(x);
}

ROUTING_HD float expInRange(float x) {
#if defined(__CUDA_ARCH__)
  const float n = rintf(mul(x, 1.44269502162933349609375f));
#else
  const float n = std::rint(mul(x, 1.44269502162933349609375f));
#endif
  float r = fma(-n, 0.693145751953125f, x);           // ln2 high part: n * hi is exact
  r = fma(-n, 1.428606765330187045e-06f, r);          // ln2 low part
  float p = 1.0f / 5040.0f;
  p = fma(p, r, 1.0f / 720.0f);
  p = fma(p, r, 1.0f / 120.0f);
  p = fma(p, r, 1.0f / 24.0f);
  p = fma(p, r, 1.0f / 6.0f);
  p = fma(p, r, 0.5f);
  p = fma(p, r, 1.0f);
  p = fma(p, r, 1.0f);
  const int e = static_cast<int>(n);                  // in [-126, 128] here
  // 2^n as 2^(n-1) * 2: both factors are normal for n in [-125, 128], and each product is exact
  // unless it overflows, which is the right answer then; n = -126 makes the first factor 0.
  const float half = floatOf(static_cast<uint32_t>(e - 1 + 127) << 23);
  return mul(mul(p, half), 2.0f);
}

// sigmoid(x) = 1 / (1 + exp(-x)): 0 at -inf, 1 at +inf, NaN for NaN.
ROUTING_HD float sigmoid(float x) { return div(1.0f, add(1.0f, exp(-x))); }

// The epsilon of renormalized weights: w = s * scale / (sum + kRenormEpsilon).
constexpr float kRenormEpsilon = 1e-20f;

}  // namespace moe::routing_rules
