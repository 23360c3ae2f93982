// The mtp family's argument struct, shared by the CPU reference, the CUDA launcher and the
// N-API glue: multi-token-prediction (MTP) draft verification for speculative decoding.
//
// Shapes: B = batch, n = numDrafts (>= 0), V = vocab (>= 1). All tensors contiguous row-major.
//
//   targetLogits  [B, n+1, V]  f32 | f16 | bf16 (logitsDType). Row i scores position i; row n
//                              (or row draftLengths[b]) gives the bonus token.
//   draftTokens   i32 [B, n]   proposed tokens; an id outside [0, V) is always rejected.
//   draftLengths  i32 [B] | null   drafts to verify per request, clamped to [0, n]; null = n.
//   draftData     [B, n, V] | null, f32 | f16 | bf16 (draftDType), meaning set by draftKind:
//                   0 none   : drafts count as one-hot (q(x) = 1); draftData ignored.
//                   1 probs  : q used as given (no temperature, no filtering, no renormalizing).
//                   2 logits : q = same temperature / top-k / top-p pipeline as the target.
//                 Only rejection mode reads it; null draftData (or n = 0) means none.
//   Per-request arrays (on the device, so a decode step can be captured in a CUDA graph); each
//   may be null, which means the default in brackets for every request:
//     mode         i32 [0]   0 greedy, 1 rejection (speculative sampling), 2 relaxed; any other
//                            id verifies greedily.
//     temperature  f32 [1]   rejection only; <= 0, NaN or so small that 1/t overflows makes
//                            that request greedy.
//     topK         i32 [0]   rejection only; <= 0 or >= V is off.
//     topP         f32 [1]   rejection only; >= 1 (or NaN) is off; expected in (0, 1].
//     seed, offset u64 [0]   Philox4x32-10 key and counter base (see RNG below). Advancing the
//                            offset by 1 per call gives fresh, independent draws.
//     relaxedTopK  i32 [1]   relaxed only.
//     relaxedDelta f32 [0]   relaxed only.
//     thinkBeginId, thinkEndId i32 [-1]  token ids that switch the thinking phase on / off.
//     inThinking   i32 [1]   thinking state (nonzero = in phase) at the start of the window.
//   Outputs:
//     outTokens      i32 [B, n+1]  accepted drafts, then the emitted token, then -1.
//     outNumAccepted i32 [B]       accepted drafts + 1 (= number of tokens written).
//     outAcceptMask  u8  [B, n] | null   1 for accepted positions, else 0.
//     outInThinking  i32 [B] | null      thinking state after all emitted tokens (input for
//                                        the next window). Must not alias inThinking.
//   No output may share memory with an input or another output.
//
// Semantics (identical on both backends; the shared rules are in common/mtp_rules.h):
//  * Argmax: largest logit, ties to the lowest id; NaN never wins; an all -inf row gives 0.
//  * greedy: accept the longest prefix with draft[i] == argmax(row i); then emit argmax of the
//    first mismatching row, or of row L (L = draft length) after a full accept.
//  * rejection: p_i = target row i after temperature T (weights exp((l - max) / T)), top-k, then
//    top-p, renormalized; q_i likewise from draft logits, or as given, or one-hot. Position i is
//    accepted iff u_i * q_i(x_i) < p_i(x_i) (u_i uniform in [0,1)); this is probability
//    min(1, p/q), and with q = 0 it accepts iff p > 0. At the first rejection j the token is
//    drawn from w(x) = max(0, p_j(x) - q_j(x)) (one-hot: p_j without x_j); after a full accept
//    from p_L. If no w(x) > 0 (rounding), the argmax of row j is emitted.
//  * Filtering (ties kept, so the GPU can decide them exactly by threshold):
//      top-k keeps every token whose logit >= the k-th largest logit (duplicates counted);
//      top-p then keeps every token whose logit >= t, t the largest logit value for which the
//      mass of top-k-kept tokens with logit >= t reaches topP * (mass kept by top-k). If the
//      cumulative mass never reaches it (rounding), everything top-k kept stays. -0 == +0.
//  * relaxed: position i is accepted iff draft == argmax, or the request is in the thinking
//    phase at i and #{y : l(y) > l(x)} < relaxedTopK and softmax(l)(x) >= softmax(l)(argmax)
//    - delta, softmax at temperature 1 over the whole vocabulary. Emission as in greedy. The
//    phase for position 0 is inThinking; an accepted draft equal to thinkBeginId turns it on
//    for later positions, one equal to thinkEndId turns it off (begin checked first).
//  * Sampling. One-hot and bonus rows (weights exp((l - max)/T), at most 1, no float sum
//    involved): inverse CDF on fixed-point weights W(x) = floor(min(w(x), 1) * 2^S), S = 62 -
//    bitlength(V) (w <= 0 or NaN gives 0); the token is the smallest x whose prefix sum
//    W(0) + ... + W(x) exceeds U = floor(r * Z / 2^64), Z the sum of every W, r one 64-bit draw
//    per sampled row. Integer sums are exact in any order, and exp is computed with the same
//    bits on both backends (mtp_rules.h), so both find the same token. A weight below 2^-S is
//    never drawn (2.8e-14 at V = 129280). The residual against draft probabilities (w = p - q,
//    which depends on the float normalizer of p): an exponential race, token = argmax over x
//    with w(x) > 0 of w(x) / E(x), ties to the lowest id, E(x) = Exp(1) from Philox, so that a
//    last-ulp difference in the normalizer decides nothing but near-ties.
//  * RNG: Philox4x32-10, key = (seed lo, seed hi), counter = (c0, stream, offset lo, offset
//    hi). Acceptance uniform of position i: stream 0xFFFFFFFF, c0 = i >> 2, word i & 3, u =
//    (word >> 8) * 2^-24. Inverse-CDF draw of row i: stream i, c0 = 0, r = word 1 * 2^32 +
//    word 0. Race draw of token x in row i: stream i, c0 = x >> 2, word x & 3,
//    E = -log1p(-(word * 2^-32 + 2^-33)).
//  Backends agree token for token except where a float sum (softmax normalizer, top-p
//  cumulative mass) or a last-ulp log1p difference lands exactly on a decision boundary.
#pragma once
#include <cstdint>
#include <string>

#include "common/check.h"
#include "common/dtype.h"

namespace moe {

// Verification modes (values of `mode`).
constexpr int32_t kModeGreedy = 0;
constexpr int32_t kModeRejection = 1;
constexpr int32_t kModeRelaxed = 2;

// What draftData holds (values of `draftKind`).
constexpr int32_t kDraftNone = 0;
constexpr int32_t kDraftProbs = 1;
constexpr int32_t kDraftLogits = 2;

struct VerifyDraftsArgs {
  const void* targetLogits;
  DType logitsDType;
  const int32_t* draftTokens;
  const int32_t* draftLengths;
  const void* draftData;
  DType draftDType;
  int32_t draftKind;
  const int32_t* mode;
  const float* temperature;
  const int32_t* topK;
  const float* topP;
  const uint64_t* seed;
  const uint64_t* offset;
  const int32_t* relaxedTopK;
  const float* relaxedDelta;
  const int32_t* thinkBeginId;
  const int32_t* thinkEndId;
  const int32_t* inThinking;
  int32_t* outTokens;
  int32_t* outNumAccepted;
  uint8_t* outAcceptMask;
  int32_t* outInThinking;
  int64_t batch;
  int64_t numDrafts;
  int64_t vocab;
};

inline bool isLogitType(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

inline void validate(const VerifyDraftsArgs& a) {
  constexpr int64_t kI32Max = INT32_MAX;
  MOE_REQUIRE(isLogitType(a.logitsDType), "E_DTYPE", "targetLogits", "expected dtype f32, f16 or bf16");
  MOE_REQUIRE(a.batch >= 0 && a.numDrafts >= 0, "E_SHAPE", "targetLogits",
          "negative size (B = " + std::to_string(a.batch) + ", n = " + std::to_string(a.numDrafts) + ")");
  MOE_REQUIRE(a.vocab >= 1 && a.vocab <= kI32Max, "E_SHAPE", "targetLogits",
          "vocabulary size V = " + std::to_string(a.vocab) + " outside [1, 2^31 - 1]");
  // Token ids, draft positions and row numbers (target rows, then draft-logit rows) are 32-bit.
  MOE_REQUIRE(a.numDrafts < kI32Max / 2 && a.batch <= kI32Max / (2 * a.numDrafts + 1), "E_SHAPE", "targetLogits",
          "B * (2n + 1) rows with B = " + std::to_string(a.batch) + ", n = " + std::to_string(a.numDrafts) +
              " exceed 2^31 - 1");
  MOE_REQUIRE(a.draftKind >= kDraftNone && a.draftKind <= kDraftLogits, "E_ARGUMENT", "draftKind",
          "expected 0 (none), 1 (probs) or 2 (logits), got " + std::to_string(a.draftKind));
  if (a.draftKind != kDraftNone && a.draftData != nullptr) {
    MOE_REQUIRE(isLogitType(a.draftDType), "E_DTYPE", a.draftKind == kDraftProbs ? "draftProbs" : "draftLogits",
            "expected dtype f32, f16 or bf16");
  }
  if (a.batch > 0) {
    MOE_REQUIRE(a.targetLogits != nullptr, "E_ARGUMENT", "targetLogits", "null data pointer");
    MOE_REQUIRE(a.numDrafts == 0 || a.draftTokens != nullptr, "E_ARGUMENT", "draftTokens", "null data pointer");
    MOE_REQUIRE(a.outTokens != nullptr, "E_ARGUMENT", "out.tokens", "null data pointer");
    MOE_REQUIRE(a.outNumAccepted != nullptr, "E_ARGUMENT", "out.numAccepted", "null data pointer");
  }
  // The GPU reads a request's inThinking from several CTAs while one of them writes its output.
  MOE_REQUIRE(a.outInThinking == nullptr || a.outInThinking != a.inThinking, "E_ARGUMENT", "out.inThinking",
          "must not be the params.inThinking array");
}

}  // namespace moe
