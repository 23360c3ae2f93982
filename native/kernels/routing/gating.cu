// routeTopK: one warp per token. Lane l holds experts l, l+32, ... in registers; every score is
// computed with the shared f32 rules (common/routing_rules.h) in the CPU reference's order, so
// ids and weights are the reference's bits. Selection is k rounds of a warp-wide max over 64-bit
// keys (value bits, then 65535 - index), which yields descending scores, lower index first.
#include <cstdint>

#include "common/routing_rules.h"
#include "kernels/routing/routing.h"

namespace moe::kernels::routing {
namespace {
namespace R = moe::routing_rules;

constexpr int kWarps = 4;
constexpr unsigned kFull = 0xFFFFFFFFu;

__device__ __forceinline__ uint64_t warpMax(uint64_t v) {
#pragma unroll
  for (int off = 16; off >= 1; off /= 2) {
    const uint64_t o = __shfl_xor_sync(kFull, static_cast<unsigned long long>(v), off);
    v = o > v ? o : v;
  }
  return v;
}

__device__ __forceinline__ uint32_t warpMax(uint32_t v) {
#pragma unroll
  for (int off = 16; off >= 1; off /= 2) {
    const uint32_t o = __shfl_xor_sync(kFull, v, off);
    v = o > v ? o : v;
  }
  return v;
}

// kJ experts per lane: E <= 32 * kJ.
template <int kJ, bool kBf16>
__global__ void __launch_bounds__(kWarps * 32) routeTopKKernel(RouteTopKArgs a) {
  constexpr int kE = 32 * kJ;
  __shared__ float sScore[kWarps][kE];
  __shared__ float sSel[kWarps][kE];
  __shared__ uint32_t sGroupBits[kWarps][kE];
  __shared__ uint8_t sKept[kWarps][kE];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (t >= a.tokens) return;  // the whole warp: no block-wide barrier follows
  const int E = a.experts;

  float x[kJ];
#pragma unroll
  for (int j = 0; j < kJ; ++j) {
    const int e = lane + 32 * j;
    if (e < E) {
      x[j] = kBf16 ? R::floatOf(static_cast<uint32_t>(static_cast<const uint16_t*>(a.logits)[t * E + e]) << 16)
                   : static_cast<const float*>(a.logits)[t * E + e];
    } else {
      x[j] = R::floatOf(0x7FC00000u);
    }
  }

  float s[kJ];
  if (a.scoring == moe::routing::kScoringSoftmax) {
    uint32_t mb = 0;
#pragma unroll
    for (int j = 0; j < kJ; ++j) mb = max(mb, R::orderBits(x[j]));
    mb = warpMax(mb);
    const float m = mb ? R::fromOrderBits(mb) : R::floatOf(0x7FC00000u);
    float ex[kJ];
    float partial = 0.0f;
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      ex[j] = R::isNan(x[j]) ? 0.0f : (x[j] == m ? 1.0f : R::exp(R::add(x[j], -m)));
      if (lane + 32 * j < E) partial = R::add(partial, ex[j]);
    }
#pragma unroll
    for (int off = 16; off >= 1; off /= 2) partial = R::add(partial, __shfl_xor_sync(kFull, partial, off));
#pragma unroll
    for (int j = 0; j < kJ; ++j) s[j] = R::isNan(x[j]) ? x[j] : (partial > 0.0f ? R::div(ex[j], partial) : 0.0f);
  } else {
#pragma unroll
    for (int j = 0; j < kJ; ++j) s[j] = R::sigmoid(x[j]);
  }

  float sel[kJ];
#pragma unroll
  for (int j = 0; j < kJ; ++j) {
    const int e = lane + 32 * j;
    sel[j] = s[j];
    if (e < E) {
      if (a.bias) sel[j] = R::add(s[j], a.bias[e]);
      sScore[warp][e] = s[j];
      sSel[warp][e] = sel[j];
    }
  }

  __syncwarp();  // the scores in shared memory are read by other lanes below

  const bool grouped = a.topkGroups < a.groups;
  const int G = a.groups, gs = E / G;
  if (grouped) {
    for (int g = lane; g < G; g += 32) {
      uint64_t k1 = 0, k2 = 0;
      for (int e = g * gs; e < (g + 1) * gs; ++e) {
        const uint64_t ke = R::selectionKey(sSel[warp][e], e);
        if (ke > k1) {
          k2 = k1;
          k1 = ke;
        } else if (ke > k2) {
          k2 = ke;
        }
      }
      const float score = gs == 1 ? sSel[warp][R::keyIndex(k1)] : R::add(sSel[warp][R::keyIndex(k1)], sSel[warp][R::keyIndex(k2)]);
      sGroupBits[warp][g] = R::orderBits(score);
    }
    __syncwarp();
    for (int g = lane; g < G; g += 32) {
      const uint32_t mine = sGroupBits[warp][g];
      int rank = 0;
      for (int h = 0; h < G; ++h) {
        const uint32_t other = sGroupBits[warp][h];
        rank += other > mine || (other == mine && h < g);
      }
      sKept[warp][g] = rank < a.topkGroups;
    }
    __syncwarp();
  }

  // key 0 (padding, experts of dropped groups, experts already chosen) is below every candidate
  uint64_t key[kJ];
#pragma unroll
  for (int j = 0; j < kJ; ++j) {
    const int e = lane + 32 * j;
    key[j] = (e < E && (!grouped || sKept[warp][e / gs])) ? R::selectionKey(sel[j], e) : 0;
  }

  int myId = 0;  // lane r keeps the id chosen in round r
  for (int r = 0; r < a.k; ++r) {
    uint64_t best = 0;
#pragma unroll
    for (int j = 0; j < kJ; ++j) best = key[j] > best ? key[j] : best;
    best = warpMax(best);
    if (lane == r) myId = R::keyIndex(best);
#pragma unroll
    for (int j = 0; j < kJ; ++j)
      if (key[j] == best) key[j] = 0;  // keys are distinct: only the owner clears one
  }

  float c = 0.0f;
  if (lane < a.k) {
    c = sScore[warp][myId];
    if (R::isNan(c)) c = 0.0f;
  }
  float sum = 0.0f;  // in round order, as the reference sums
  for (int r = 0; r < a.k; ++r) sum = R::add(sum, __shfl_sync(kFull, c, r));
  if (lane < a.k) {
    const float v = R::mul(c, a.scale);
    a.ids[t * a.k + lane] = myId;
    a.weights[t * a.k + lane] = a.renormalize ? R::div(v, R::add(sum, R::kRenormEpsilon)) : v;
  }
}

template <int kJ>
cudaError_t launchRoute(const RouteTopKArgs& a, cudaStream_t stream) {
  const int64_t blocks = (a.tokens + kWarps - 1) / kWarps;
  if (a.logitsType == DType::BF16) routeTopKKernel<kJ, true><<<static_cast<unsigned>(blocks), kWarps * 32, 0, stream>>>(a);
  else routeTopKKernel<kJ, false><<<static_cast<unsigned>(blocks), kWarps * 32, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t routeTopK(const RouteTopKArgs& a, const Launch& l) {
  if (a.tokens == 0) return cudaSuccess;
  if (a.experts <= 64) return launchRoute<2>(a, l.stream);
  if (a.experts <= 128) return launchRoute<4>(a, l.stream);
  if (a.experts <= 256) return launchRoute<8>(a, l.stream);
  return launchRoute<16>(a, l.stream);
}

}  // namespace moe::kernels::routing
