// Rules shared bit-for-bit by the MTP verification kernels and the CPU reference: how a
// request's parameters are read (defaults, greedy fallbacks), the acceptance tests, the
// thinking-phase update, the Philox4x32-10 generator and the draws taken from it, and the
// order-preserving key used for top-k / top-p thresholds. Both backends must compute these
// identically, so this header is plain C++ that also compiles as __host__ __device__ code.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/mtp.h"
#include "common/routing_rules.h"

#if defined(__CUDACC__)
#define MTP_HD __host__ __device__ __forceinline__
#else
#define MTP_HD inline
#endif

namespace moe::mtp_rules {

// Philox counter word c1 that selects the acceptance-uniform stream; the draws that sample row i
// use c1 = i (rows are 0..numDrafts, far below this value).
constexpr uint32_t kAcceptStream = 0xFFFFFFFFu;

// Race scores are w / E with E >= -log1p(-2^-33) ~ 1.164e-10, so a weight w can reach at most
// w * 8.59e9. A candidate with w * kRaceBound below the best score so far can never win.
constexpr float kRaceBound = 1.0e10f;

struct Philox4 {
  uint32_t v[4];
};

MTP_HD void mulHiLo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Philox4x32-10 (Salmon et al., SC'11): 10 rounds, key bumped between rounds.
MTP_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                             uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    mulHiLo(0xD2511F53u, c0, hi0, lo0);
    mulHiLo(0xCD9E8D57u, c2, hi1, lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0;
    uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Word i & 3 of a Philox block, by selects so device code keeps the block in registers.
MTP_HD uint32_t philoxWordAt(const Philox4& r, uint32_t i) {
  i &= 3u;
  return i == 0u ? r.v[0] : (i == 1u ? r.v[1] : (i == 2u ? r.v[2] : r.v[3]));
}

// One 32-bit draw of request stream (seed, offset): counter = (index >> 2, stream, offset),
// output word index & 3. Four consecutive indices share one Philox block.
MTP_HD uint32_t philoxWord(uint64_t seed, uint64_t offset, uint32_t stream, uint32_t index) {
  Philox4 r = philox4x32_10(index >> 2, stream, static_cast<uint32_t>(offset),
                            static_cast<uint32_t>(offset >> 32), static_cast<uint32_t>(seed),
                            static_cast<uint32_t>(seed >> 32));
  return philoxWordAt(r, index);
}

// Uniform in [0, 1) on a 2^-24 grid (exact in f32).
MTP_HD float uniformFromWord(uint32_t r) {
  return static_cast<float>(r >> 8) * 5.9604644775390625e-08f;
}

// Exp(1) variate for the exponential race. u = r * 2^-32 + 2^-33 has 2^-32 resolution near 0,
// so small E (the values that decide races) are not coarsely quantized. The product is exact
// (power-of-two scale), so fused or unfused evaluation agree. For r >= 2^32 - 128 the sum
// rounds to 1, which would give E = inf (a score of 0 that can never win); u is capped just
// below 1 so every draw stays finite.
MTP_HD float exponentialFromWord(uint32_t r) {
  float u = static_cast<float>(r) * 2.3283064365386963e-10f + 1.1641532182693481e-10f;
  u = u < 0.99999994f ? u : 0.99999994f;  // 1 - 2^-24, the largest float below 1
#if defined(__CUDA_ARCH__)
  return -log1pf(-u);
#else
  return -std::log1p(-u);
#endif
}

// ---- sampling by inverse CDF on fixed-point weights ------------------------------------------
//
// A row is sampled from weights w(x) in [0, 1] turned into integers W(x) = floor(w(x) * 2^S):
// integer sums are exact and the same in any order, so the GPU's chunked prefix sums and the
// CPU's running sum find the same token from one 64-bit draw per row. S = 62 - bitlength(V)
// keeps a row's sum below 2^62. A weight below 2^-S of the largest possible one is never drawn.

MTP_HD int sampleShift(int64_t vocab) {
  int bits = 0;
  while (bits < 63 && (vocab >> bits) != 0) ++bits;
  return 62 - bits;
}

// 2^S as a float (exact: S <= 61).
MTP_HD float sampleScale(int shift) { return static_cast<float>(uint64_t{1} << shift); }

// W(x): w clamped to [0, 1] (NaN and w <= 0 give 0), times 2^S (exact), truncated. fmax and
// fmin return the operand that is not NaN: no branch per element on the GPU.
MTP_HD uint64_t fixedWeight(float w, float scale) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(fminf(fmaxf(w, 0.0f), 1.0f) * scale);
#else
  return static_cast<uint64_t>(std::fmin(std::fmax(w, 0.0f), 1.0f) * scale);
#endif
}

// The one draw of sampled row i: counter (0, i, offset lo, offset hi), words 1 and 0.
MTP_HD uint64_t sampleDraw(uint64_t seed, uint64_t offset, uint32_t row) {
  const Philox4 r = philox4x32_10(0u, row, static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                                  static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return (static_cast<uint64_t>(r.v[1]) << 32) | r.v[0];
}

// U = floor(draw * Z / 2^64), uniform on [0, Z) up to 2^-64: the sampled token is the smallest
// x whose prefix sum W(0) + ... + W(x) exceeds U.
MTP_HD uint64_t drawBelow(uint64_t draw, uint64_t z) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(draw, z);
#else
  return static_cast<uint64_t>((static_cast<unsigned __int128>(draw) * z) >> 64);
#endif
}

// Order-preserving unsigned key of a float: key(a) < key(b) iff a < b, and -0 maps like +0 so
// equal values have equal keys. NaN maps above +inf.
MTP_HD uint32_t orderKey(float v) {
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(v);
#else
  std::memcpy(&u, &v, 4);
#endif
  if (u == 0x80000000u) u = 0u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Unnormalized weight of logit v at inverse temperature invT relative to the row maximum m.
// The exp is the routing family's (same bits on both backends), so the fixed-point weights of a
// sampled row and their prefix sums agree exactly. A NaN exponent (a NaN logit, or inf - inf)
// weighs 0, as does anything below e^-87.
MTP_HD float weightOf(float v, float m, float invT) {
  const float x = (v - m) * invT;
  return x >= -87.0f ? routing_rules::exp(x) : 0.0f;
}

// fixedWeight(weightOf(v, m, invT), scale) where `keep`, else 0, with no branch per element.
// Equal in every case: x = (v - m) * invT above 0 gives W = 2^S either way (exp(x) >= 1 is
// clamped to 1), and x < -87 or NaN gives 0 either way; in between the exp's steps are the same.
MTP_HD uint64_t sampleWeight(float v, float m, float invT, bool keep, float scale) {
  const float x = (v - m) * invT;
#if defined(__CUDA_ARCH__)
  const float w = routing_rules::expInRange(fminf(fmaxf(x, -87.0f), 0.0f));
#else
  const float w = routing_rules::expInRange(std::fmin(std::fmax(x, -87.0f), 0.0f));
#endif
  return keep && x >= -87.0f ? fixedWeight(w, scale) : 0ull;
}

// ---- per-request parameters -------------------------------------------------------------

// What draftData holds for this call: none without data or without drafts.
MTP_HD int32_t draftKindOf(const VerifyDraftsArgs& a) {
  return a.draftData == nullptr || a.numDrafts == 0 ? kDraftNone : a.draftKind;
}

// A request's mode and filter, defaults applied: every row of the request is read with these.
struct Request {
  int32_t len;   // drafts to verify, clamped to [0, n]
  int32_t mode;  // kModeGreedy, kModeRejection or kModeRelaxed
  float invT;    // 1 / temperature for rejection, else 1
  int32_t topK;
  float topP;
  bool filtered;  // rejection with top-k or top-p in effect
};

MTP_HD Request loadRequest(const VerifyDraftsArgs& a, int64_t b) {
  Request r;
  const int32_t n = static_cast<int32_t>(a.numDrafts);
  const int32_t len = a.draftLengths ? a.draftLengths[b] : n;
  r.len = len < 0 ? 0 : (len > n ? n : len);
  int32_t md = a.mode ? a.mode[b] : kModeGreedy;
  const float t = a.temperature ? a.temperature[b] : 1.0f;
  // 1/t must be finite: a temperature so small that it overflows is the greedy limit
#if defined(__CUDA_ARCH__)
  const bool invertible = t > 0.0f && isfinite(1.0f / t);
#else
  const bool invertible = t > 0.0f && std::isfinite(1.0f / t);
#endif
  if (md == kModeRejection && !invertible) md = kModeGreedy;
  if (md != kModeRejection && md != kModeRelaxed) md = kModeGreedy;
  r.mode = md;
  r.invT = md == kModeRejection ? 1.0f / t : 1.0f;
  r.topK = a.topK ? a.topK[b] : 0;
  r.topP = a.topP ? a.topP[b] : 1.0f;
  r.filtered = md == kModeRejection && ((r.topK > 0 && static_cast<int64_t>(r.topK) < a.vocab) || r.topP < 1.0f);
  return r;
}

// The rest of a request's parameters, read where its drafts are walked.
struct Walk {
  uint64_t seed, offset;
  int32_t relaxedTopK;
  float relaxedDelta;
  int32_t beginId, endId;
  int32_t state;  // thinking state (0 or 1) at the first draft
};

MTP_HD Walk loadWalk(const VerifyDraftsArgs& a, int64_t b) {
  Walk w;
  w.seed = a.seed ? a.seed[b] : 0ull;
  w.offset = a.offset ? a.offset[b] : 0ull;
  w.relaxedTopK = a.relaxedTopK ? a.relaxedTopK[b] : 1;
  w.relaxedDelta = a.relaxedDelta ? a.relaxedDelta[b] : 0.0f;
  w.beginId = a.thinkBeginId ? a.thinkBeginId[b] : -1;
  w.endId = a.thinkEndId ? a.thinkEndId[b] : -1;
  w.state = a.inThinking ? (a.inThinking[b] != 0 ? 1 : 0) : 1;
  return w;
}

// ---- decisions ---------------------------------------------------------------------------

// Thinking state after emitting or accepting `token` (begin checked first).
MTP_HD int32_t updateThinking(int32_t state, int32_t token, int32_t beginId, int32_t endId) {
  return token == beginId ? 1 : (token == endId ? 0 : state);
}

// Probability of logit v in a filtered row: kept iff its key reaches tau, weight over z.
MTP_HD float keptProb(float v, uint32_t tau, float m, float invT, float z) {
  return orderKey(v) >= tau ? weightOf(v, m, invT) / z : 0.0f;
}

// Relaxed acceptance of a draft that is not the argmax, in the thinking phase: fewer than
// relaxedTopK logits above its logit lx, and softmax(lx) within delta of the top token's
// (row maximum m, softmax normalizer z at temperature 1).
MTP_HD bool relaxedAccepts(int64_t countGreater, int32_t relaxedTopK, float lx, float m, float z, float delta) {
  const float pd = weightOf(lx, m, 1.0f) / z;
  const float p1 = 1.0f / z;
  return countGreater < relaxedTopK && pd >= p1 - delta;
}

// Rejection acceptance of draft position i: u * q(x) < p(x), u from the acceptance stream.
MTP_HD bool rejectionAccepts(uint64_t seed, uint64_t offset, int32_t i, float px, float qx) {
  const float u = uniformFromWord(philoxWord(seed, offset, kAcceptStream, static_cast<uint32_t>(i)));
  return u * qx < px;
}

// Element i of a request's output tokens: accepted drafts, the emitted token, then -1.
MTP_HD int32_t outputToken(int64_t i, int32_t accepted, const int32_t* drafts, int32_t emitted) {
  return i < accepted ? drafts[i] : (i == accepted ? emitted : -1);
}

}  // namespace moe::mtp_rules
