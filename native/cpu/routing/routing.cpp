#include "cpu/routing/routing.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "common/routing_rules.h"
#include "cpu/common/numeric.h"
#include "cpu/nvfp4/nvfp4.h"

namespace moe::cpu::routing {
namespace R = moe::routing_rules;
namespace {

constexpr int kLanes = 32;  // the CUDA kernel's warp: expert e sits in lane e % 32

float loadLogit(const RouteTopKArgs& a, int64_t i) {
  return a.logitsType == DType::BF16 ? bf16BitsToF32(static_cast<const uint16_t*>(a.logits)[i])
                                     : static_cast<const float*>(a.logits)[i];
}

// Softmax in the kernel's order: each lane sums its experts in index order, then the 32 partial
// sums meet in an xor butterfly (16, 8, 4, 2, 1), which every lane computes to the same bits.
void softmaxScores(const std::vector<float>& x, int E, std::vector<float>& s) {
  uint32_t maxBits = 0;
  for (int e = 0; e < E; ++e) maxBits = std::max(maxBits, R::orderBits(x[e]));
  const float m = maxBits ? R::fromOrderBits(maxBits) : R::floatOf(0x7FC00000u);
  std::vector<float> ex(E);
  // x == m gives 1 even where x - m is NaN (m = +-inf): the limit of the softmax there
  for (int e = 0; e < E; ++e) ex[e] = R::isNan(x[e]) ? 0.0f : (x[e] == m ? 1.0f : R::exp(R::add(x[e], -m)));
  float partial[kLanes];
  for (int lane = 0; lane < kLanes; ++lane) {
    float p = 0.0f;
    for (int e = lane; e < E; e += kLanes) p = R::add(p, ex[e]);
    partial[lane] = p;
  }
  for (int m2 = kLanes / 2; m2 >= 1; m2 /= 2) {
    float next[kLanes];
    for (int lane = 0; lane < kLanes; ++lane) next[lane] = R::add(partial[lane], partial[lane ^ m2]);
    std::memcpy(partial, next, sizeof(partial));
  }
  const float sum = partial[0];
  // NaN logits keep a NaN score, so they rank below every number; their weight is 0
  for (int e = 0; e < E; ++e) s[e] = R::isNan(x[e]) ? x[e] : (sum > 0.0f ? R::div(ex[e], sum) : 0.0f);
}

void routeToken(const RouteTopKArgs& a, int64_t t, std::vector<float>& x, std::vector<float>& s, std::vector<float>& sel,
                std::vector<uint64_t>& key, std::vector<uint32_t>& groupBits) {
  const int E = a.experts;
  for (int e = 0; e < E; ++e) x[e] = loadLogit(a, t * E + e);
  if (a.scoring == moe::routing::kScoringSoftmax) softmaxScores(x, E, s);
  else for (int e = 0; e < E; ++e) s[e] = R::sigmoid(x[e]);
  for (int e = 0; e < E; ++e) sel[e] = a.bias ? R::add(s[e], a.bias[e]) : s[e];

  // Groups: each scored by the sum of its two best selection scores; the topkGroups best
  // groups (ties to the lower group) stay, the experts of the others are out of the running.
  const int G = a.groups, gs = E / G;
  for (int g = 0; g < G; ++g) {
    uint64_t k1 = 0, k2 = 0;
    for (int e = g * gs; e < (g + 1) * gs; ++e) {
      const uint64_t ke = R::selectionKey(sel[e], e);
      if (ke > k1) { k2 = k1; k1 = ke; } else if (ke > k2) k2 = ke;
    }
    const float score = gs == 1 ? sel[R::keyIndex(k1)] : R::add(sel[R::keyIndex(k1)], sel[R::keyIndex(k2)]);
    groupBits[g] = R::orderBits(score);
  }
  for (int e = 0; e < E; ++e) key[e] = R::selectionKey(sel[e], e);
  if (a.topkGroups < G) {
    for (int g = 0; g < G; ++g) {
      int rank = 0;
      for (int h = 0; h < G; ++h) rank += groupBits[h] > groupBits[g] || (groupBits[h] == groupBits[g] && h < g);
      // key 0 is below every candidate's key (whose low half is 65535 - e > 0)
      if (rank >= a.topkGroups) for (int e = g * gs; e < (g + 1) * gs; ++e) key[e] = 0;
    }
  }

  int32_t* ids = a.ids + t * a.k;
  float* w = a.weights + t * a.k;
  float chosen[moe::routing::kMaxTopK];
  float sum = 0.0f;
  for (int r = 0; r < a.k; ++r) {
    int best = 0;
    for (int e = 1; e < E; ++e) if (key[e] > key[best]) best = e;
    key[best] = 0;
    ids[r] = best;
    chosen[r] = R::isNan(s[best]) ? 0.0f : s[best];
    sum = R::add(sum, chosen[r]);
  }
  for (int r = 0; r < a.k; ++r) {
    const float v = R::mul(chosen[r], a.scale);
    w[r] = a.renormalize ? R::div(v, R::add(sum, R::kRenormEpsilon)) : v;
  }
}

}  // namespace

void routeTopK(const RouteTopKArgs& a) {
  std::vector<float> x(a.experts), s(a.experts), sel(a.experts);
  std::vector<uint64_t> key(a.experts);
  std::vector<uint32_t> groupBits(a.groups);
  for (int64_t t = 0; t < a.tokens; ++t) routeToken(a, t, x, s, sel, key, groupBits);
}

void expertLayout(const ExpertLayoutArgs& a) {
  const int E = a.experts;
  const int64_t n = a.tokens * a.k;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t id = a.ids[i];
    if (id < 0 || id >= E) {
      fail("E_RANGE", "ids: ids[" + std::to_string(i / a.k) + ", " + std::to_string(i % a.k) + "] = " + std::to_string(id) +
                          " is outside [0, " + std::to_string(E) + ")");
    }
  }
  std::vector<int64_t> total(E, 0);
  for (int64_t i = 0; i < n; ++i) ++total[a.ids[i]];
  const int64_t M = a.maxPerExpert;
  int64_t dropped = 0;
  a.offsets[0] = 0;
  for (int e = 0; e < E; ++e) {
    if (M > 0) {
      a.counts[e] = static_cast<int32_t>(std::min(total[e], M));
      dropped += total[e] - a.counts[e];
      a.offsets[e + 1] = static_cast<int32_t>((e + 1) * M);
    } else {
      a.counts[e] = static_cast<int32_t>(total[e]);
      a.offsets[e + 1] = static_cast<int32_t>(a.offsets[e] + (total[e] + a.align - 1) / a.align * a.align);
    }
  }
  std::fill(a.sourceIndex, a.sourceIndex + a.rows, -1);
  // pairs in (token, slot) order: a stable counting sort by expert
  std::vector<int64_t> next(E, 0);
  for (int64_t i = 0; i < n; ++i) {
    const int e = a.ids[i];
    const int64_t r = next[e]++;
    if (M > 0 && r >= M) {
      a.rowIndex[i] = -1;
      continue;
    }
    const int32_t row = static_cast<int32_t>(a.offsets[e] + r);
    a.sourceIndex[row] = static_cast<int32_t>(i);
    a.rowIndex[i] = row;
  }
  *a.usedRows = a.offsets[E];
  *a.dropped = static_cast<int32_t>(dropped);
  *a.errors = 0;
}

void permute(const PermuteArgs& a) {
  const int64_t used = std::clamp<int64_t>(*a.usedRows, 0, a.rows);
  const size_t rowBytes = static_cast<size_t>(a.hidden) * dtypeBytes(a.type);
  const int64_t n = a.tokens * a.k;
  for (int64_t r = 0; r < used; ++r) {
    char* dst = static_cast<char*>(a.out) + r * rowBytes;
    const int32_t src = a.sourceIndex[r];
    if (src >= 0 && src < n) std::memcpy(dst, static_cast<const char*>(a.x) + (src / a.k) * rowBytes, rowBytes);
    else std::memset(dst, 0, rowBytes);
  }
}

// The quantizer of the nvfp4 family, one row at a time: the source row, or a zero row for
// padding, so both take exactly the path of quantize(permute(x)).
void permuteQuantize(const PermuteQuantizeArgs& a) {
  if (a.globalScaleOut != nullptr && a.globalScaleOut != a.globalScale) std::memcpy(a.globalScaleOut, a.globalScale, sizeof(float));
  const int64_t used = std::clamp<int64_t>(*a.usedRows, 0, a.rows);
  if (used == 0 || a.hidden == 0) return;
  const int64_t rowBytes = a.hidden * dtypeBytes(a.type);
  const int64_t n = a.tokens * a.k;
  // 16-byte aligned like any tensor the package allocates; QuantizeArgs asks for it
  std::vector<uint64_t> zero(static_cast<size_t>((rowBytes + 7) / 8), 0);
  for (int64_t r = 0; r < used; ++r) {
    const int32_t src = a.sourceIndex[r];
    QuantizeArgs q{};
    q.x = src >= 0 && src < n ? static_cast<const void*>(static_cast<const char*>(a.x) + (src / a.k) * rowBytes) : zero.data();
    q.xType = a.type;
    q.rows = 1;
    q.K = a.hidden;
    q.globalScale = a.globalScale;
    q.data = a.data + r * (a.hidden / 2);
    q.scales = a.scales + r * (a.hidden / 16);
    q.globalScaleOut = nullptr;
    nvfp4::quantize(q);
  }
}

void unpermute(const UnpermuteArgs& a) {
  const int64_t H = a.hidden;
  std::vector<float> acc(H);
  for (int64_t t = 0; t < a.tokens; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int s = 0; s < a.k; ++s) {
      const int32_t r = a.rowIndex[t * a.k + s];
      if (r < 0 || r >= a.rows) continue;
      const float w = a.weights[t * a.k + s];
      if (a.yType == DType::BF16) {
        const uint16_t* y = static_cast<const uint16_t*>(a.y) + r * H;
        for (int64_t h = 0; h < H; ++h) acc[h] = R::fma(w, bf16BitsToF32(y[h]), acc[h]);
      } else {
        const float* y = static_cast<const float*>(a.y) + r * H;
        for (int64_t h = 0; h < H; ++h) acc[h] = R::fma(w, y[h], acc[h]);
      }
    }
    if (a.outType == DType::BF16) {
      uint16_t* o = static_cast<uint16_t*>(a.out) + t * H;
      for (int64_t h = 0; h < H; ++h) o[h] = f32ToBf16Bits(acc[h]);
    } else {
      std::memcpy(static_cast<float*>(a.out) + t * H, acc.data(), H * sizeof(float));
    }
  }
}

}  // namespace moe::cpu::routing
