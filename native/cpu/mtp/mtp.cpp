// CPU reference for MTP draft verification. Written for clarity: each needed row is decoded to
// f32, filtered by sorting, and sampled by a running sum of its fixed-point weights (or, for a
// residual against draft probabilities, by a full exponential race). The GPU kernels must
// produce the same tokens; the only tolerated differences come from the order of float sums
// (softmax normalizers, top-p cumulative mass) and last-ulp differences of log1p in the race.
#include "cpu/mtp/mtp.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/common/numeric.h"
#include "common/mtp_rules.h"

namespace moe::cpu::mtp {

namespace {

using namespace moe::mtp_rules;

float loadValue(const void* base, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(base)[i];
    case DType::F16: return f16BitsToF32(static_cast<const uint16_t*>(base)[i]);
    case DType::BF16: return bf16BitsToF32(static_cast<const uint16_t*>(base)[i]);
    default: return 0.0f;
  }
}

// Statistics of one (target or draft-logit) row after temperature and filtering.
struct RowInfo {
  std::vector<float> v;  // decoded logits
  float m = -INFINITY;   // row maximum (over all tokens)
  int32_t argmax = 0;    // lowest index attaining m
  uint32_t tau = 0;      // keep x iff orderKey(v[x]) >= tau
  float z = 0.0f;        // sum of weights of kept tokens, relative to m
  float invT = 1.0f;

  float prob(int64_t x) const { return keptProb(v[x], tau, m, invT, z); }
};

RowInfo decodeRow(const void* base, DType t, int64_t rowOffset, int64_t vocab) {
  RowInfo r;
  r.v.resize(static_cast<size_t>(vocab));
  int64_t best = -1;
  for (int64_t x = 0; x < vocab; ++x) {
    float v = loadValue(base, t, rowOffset + x);
    r.v[x] = v;
    // NaN never compares greater, so it is never the argmax; an all -inf row yields token 0.
    if (best < 0 ? !(v != v) : v > r.m) {
      r.m = v;
      best = x;
    }
  }
  r.argmax = best < 0 ? 0 : static_cast<int32_t>(best);
  return r;
}

// Applies temperature, top-k and top-p. Top-k keeps every token whose logit is >= the k-th
// largest logit (duplicates counted), so ties at the boundary are all kept. Top-p then keeps
// every token whose logit is >= t, where t is the largest logit value such that the mass of
// kept tokens with logit >= t reaches topP * (mass kept by top-k); ties again all kept. If the
// cumulative mass never reaches the target (rounding), everything top-k kept stays.
void filterRow(RowInfo& r, float invT, int32_t topK, float topP) {
  r.invT = invT;
  const int64_t vocab = static_cast<int64_t>(r.v.size());
  r.tau = 0;
  if (topK > 0 && topK < vocab) {
    std::vector<uint32_t> keys(r.v.size());
    for (size_t x = 0; x < keys.size(); ++x) keys[x] = orderKey(r.v[x]);
    std::nth_element(keys.begin(), keys.begin() + (topK - 1), keys.end(), std::greater<uint32_t>());
    r.tau = keys[topK - 1];
  }
  if (topP < 1.0f) {
    std::vector<std::pair<uint32_t, float>> kept;
    for (int64_t x = 0; x < vocab; ++x) {
      uint32_t k = orderKey(r.v[x]);
      if (k >= r.tau) kept.emplace_back(k, weightOf(r.v[x], r.m, invT));
    }
    std::sort(kept.begin(), kept.end(),
              [](const auto& a, const auto& b) { return a.first > b.first; });
    // Sums in double: a float running sum over a sorted row drops every weight below half an
    // ulp of the sum (most of a long tail), which moves the top-p threshold.
    double zk = 0.0;
    for (const auto& e : kept) zk += e.second;
    const float target = topP * static_cast<float>(zk);
    double cum = 0.0;
    for (size_t i = 0; i < kept.size();) {
      size_t j = i;
      while (j < kept.size() && kept[j].first == kept[i].first) cum += kept[j++].second;
      if (cum >= target) {
        r.tau = kept[i].first;
        break;
      }
      i = j;
    }
    r.z = static_cast<float>(cum);
    return;
  }
  double z = 0.0;
  for (int64_t x = 0; x < vocab; ++x)
    if (orderKey(r.v[x]) >= r.tau) z += weightOf(r.v[x], r.m, invT);
  r.z = static_cast<float>(z);
}

// The token drawn from row i with weights weight(y), y in [0, V): the smallest y whose running
// sum of fixed-point weights exceeds the row's draw (common/mtp_rules.h); the argmax when every
// weight is 0.
template <class Weight>
int32_t sampleRow(const Walk& walk, int64_t i, int64_t vocab, int32_t argmax, Weight weight) {
  const float scale = sampleScale(sampleShift(vocab));
  std::vector<uint64_t> fixed(static_cast<size_t>(vocab));
  uint64_t z = 0;
  for (int64_t y = 0; y < vocab; ++y) z += fixed[y] = fixedWeight(weight(y), scale);
  if (z == 0) return argmax;
  const uint64_t u = drawBelow(sampleDraw(walk.seed, walk.offset, static_cast<uint32_t>(i)), z);
  uint64_t run = 0;
  for (int64_t y = 0; y < vocab; ++y) {
    run += fixed[y];
    if (run > u) return static_cast<int32_t>(y);
  }
  return argmax;  // not reached: the sum over every y is z > u
}

}  // namespace

void verifyDrafts(const VerifyDraftsArgs& a) {
  const int64_t n = a.numDrafts, vocab = a.vocab;
  const int32_t draftKind = draftKindOf(a);
  for (int64_t b = 0; b < a.batch; ++b) {
    const Request req = loadRequest(a, b);
    const Walk walk = loadWalk(a, b);
    const int32_t md = req.mode, len = req.len;
    int32_t state = walk.state;

    const int32_t* drafts = a.draftTokens + b * n;
    auto targetRow = [&](int64_t i) {
      RowInfo r = decodeRow(a.targetLogits, a.logitsDType, (b * (n + 1) + i) * vocab, vocab);
      if (md == kModeRejection) filterRow(r, req.invT, req.topK, req.topP);
      else if (md == kModeRelaxed) filterRow(r, 1.0f, 0, 1.0f);
      return r;
    };

    int32_t accepted = 0;
    int32_t emitted = -1;
    for (int64_t i = 0; i <= len; ++i) {
      RowInfo row = targetRow(i);
      if (i == len) {  // every draft accepted: bonus token from the last needed row
        if (md == kModeRejection) {
          emitted = sampleRow(walk, i, vocab, row.argmax, [&](int64_t y) {
            return orderKey(row.v[y]) >= row.tau ? weightOf(row.v[y], row.m, row.invT) : 0.0f;
          });
        } else {
          emitted = row.argmax;
        }
        break;
      }
      const int32_t x = drafts[i];
      const bool inRange = x >= 0 && x < vocab;
      bool accept = false;
      RowInfo draftRow;
      if (md == kModeGreedy) {
        accept = inRange && x == row.argmax;
      } else if (md == kModeRelaxed) {
        if (inRange) {
          accept = x == row.argmax;
          if (!accept && state) {
            const float lx = row.v[x];
            int64_t greater = 0;
            for (int64_t y = 0; y < vocab; ++y) greater += row.v[y] > lx ? 1 : 0;
            accept = relaxedAccepts(greater, walk.relaxedTopK, lx, row.m, row.z, walk.relaxedDelta);
          }
        }
      } else {
        float q = 1.0f;
        if (draftKind == kDraftLogits) {
          draftRow = decodeRow(a.draftData, a.draftDType, (b * n + i) * vocab, vocab);
          filterRow(draftRow, req.invT, req.topK, req.topP);
        }
        if (inRange) {
          const float px = row.prob(x);
          if (draftKind == kDraftProbs) q = loadValue(a.draftData, a.draftDType, (b * n + i) * vocab + x);
          else if (draftKind == kDraftLogits) q = draftRow.prob(x);
          accept = rejectionAccepts(walk.seed, walk.offset, static_cast<int32_t>(i), px, q);
        }
      }
      if (accept) {
        ++accepted;
        state = updateThinking(state, x, walk.beginId, walk.endId);
        continue;
      }
      // First rejection at position i.
      if (md == kModeRejection && draftKind == kDraftNone) {
        emitted = sampleRow(walk, i, vocab, row.argmax, [&](int64_t y) {
          return orderKey(row.v[y]) >= row.tau && y != x ? weightOf(row.v[y], row.m, row.invT) : 0.0f;
        });
      } else if (md == kModeRejection) {
        // the residual max(0, p - q) depends on the float normalizer z: an exponential race
        // (each token's own score) keeps an ulp of z from moving a prefix-sum boundary
        float best = 0.0f;
        int64_t bestIdx = -1;
        for (int64_t y = 0; y < vocab; ++y) {
          if (orderKey(row.v[y]) < row.tau) continue;
          const float e = weightOf(row.v[y], row.m, row.invT);
          const float qy = draftKind == kDraftProbs ? loadValue(a.draftData, a.draftDType, (b * n + i) * vocab + y)
                                                    : draftRow.prob(y);
          const float w = e / row.z - qy;
          if (!(w > 0.0f)) continue;
          const float sc = w / exponentialFromWord(philoxWord(walk.seed, walk.offset, static_cast<uint32_t>(i),
                                                              static_cast<uint32_t>(y)));
          if (sc > best) {
            best = sc;
            bestIdx = y;
          }
        }
        emitted = bestIdx >= 0 ? static_cast<int32_t>(bestIdx) : row.argmax;
      } else {
        emitted = row.argmax;
      }
      break;
    }

    int32_t* out = a.outTokens + b * (n + 1);
    for (int64_t i = 0; i <= n; ++i) out[i] = outputToken(i, accepted, drafts, emitted);
    a.outNumAccepted[b] = accepted + 1;
    if (a.outAcceptMask)
      for (int64_t i = 0; i < n; ++i) a.outAcceptMask[b * n + i] = i < accepted ? 1 : 0;
    if (a.outInThinking) a.outInThinking[b] = updateThinking(state, emitted, walk.beginId, walk.endId);
  }
}

}  // namespace moe::cpu::mtp
