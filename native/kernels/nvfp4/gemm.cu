// NVFP4 GEMM launcher: picks a configuration once (heuristics.h, from the device's facts),
// launches the chosen kernel and, when K is split, the deterministic reduction of the fp32
// partials held in the stream's workspace.
#include <algorithm>
#include <climits>

#include "common/align.h"
#include "kernels/nvfp4/gemm.cuh"
#include "kernels/nvfp4/gemv.cuh"
#include "kernels/nvfp4/gemv_wide.cuh"
#include "kernels/nvfp4/heuristics.h"
#include "kernels/nvfp4/nvfp4.h"
#include "kernels/nvfp4/sm90_gemm.h"

namespace moe::kernels::nvfp4 {
namespace detail {
namespace {

static_assert(DecodeShape<1, false>::kTileN == kDecodeTileN, "heuristics.h out of sync");
static_assert(DecodeShape<1, false>::kTileM == 8 && DecodeShape<8, true>::kTileM == 64,
              "heuristics.h out of sync");
static_assert(PrefillShape<false>::kTileN == kPrefillTileN &&
                  PrefillShape<true>::kTileM == kPrefillTileM,
              "heuristics.h out of sync");

// The M <= 16 tiles fit the default 48 KB of shared memory (launchGemmImpl relies on it).
static_assert(DecodeShape<1, false>::kSmemBytes <= 48 * 1024 && DecodeShape<2, false>::kSmemBytes <= 48 * 1024 &&
                  DecodeShape<1, true>::kSmemBytes <= 48 * 1024 && DecodeShape<2, true>::kSmemBytes <= 48 * 1024,
              "decode tiles outgrew the default shared memory");

// out[m, n] = sum over splits of partial[s, m, n] (fixed order) + bias[n].
__global__ void __launch_bounds__(256) splitReduceKernel(const float* __restrict__ partial,
                                                        int splits, int64_t MN, int N,
                                                        const void* __restrict__ bias, bool biasF32,
                                                        void* __restrict__ out, bool outF32) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < MN;
       i += stride) {
    float v = partial[i];
    for (int s = 1; s < splits; ++s) v += partial[s * MN + i];
    if (bias != nullptr) {
      const int64_t n = i % N;
      v += biasF32 ? static_cast<const float*>(bias)[n]
                   : __bfloat162float(static_cast<const __nv_bfloat16*>(bias)[n]);
    }
    if (outF32) static_cast<float*>(out)[i] = v;
    else static_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16_rn(v);
  }
}

template <bool AFp4>
cudaError_t dispatch(GemmKernel kernel, const GemmParams& p, dim3 grid, cudaStream_t stream) {
  switch (kernel) {
    case GemmKernel::Decode8: return launchGemm<DecodeShape<1, AFp4>>(p, grid, stream);
    case GemmKernel::Decode16: return launchGemm<DecodeShape<2, AFp4>>(p, grid, stream);
    case GemmKernel::Decode32: return launchGemm<DecodeShape<4, AFp4>>(p, grid, stream);
    case GemmKernel::Decode64: return launchGemm<DecodeShape<8, AFp4>>(p, grid, stream);
    case GemmKernel::Prefill: return launchGemm<PrefillShape<AFp4>>(p, grid, stream);
  }
  return cudaErrorInvalidValue;
}

static_assert(kGemvBatchK == kGemvBatch, "heuristics.h out of sync");
static_assert(kGemvWideRows == kWideRows, "heuristics.h out of sync");

// Both tiles fit two 256-thread CTAs per SM (<= 128 registers, no spills).
cudaError_t dispatchGemv(const GemvConfig& c, const GemvParams& p, cudaStream_t stream) {
  if (c.nt == 1 && c.mt == 1) return launchGemv<1, 1, 2>(p, stream);
  if (c.nt == 2 && c.mt == 1) return launchGemv<2, 1, 2>(p, stream);
  return cudaErrorInvalidConfiguration;
}

}  // namespace
}  // namespace detail

using namespace detail;

cudaError_t gemm(const GemmArgs& g, const Launch& l) {
  const void* a = g.a;
  const uint8_t* wData = g.wData;
  const uint8_t* wScales = g.wScales;
  const int64_t M = g.M, N = g.N, K = g.K;
  const cudaStream_t stream = l.stream;
  const int sms = l.facts.multiprocessors;
  if (M == 0 || N == 0) return cudaSuccess;
  const bool aFp4 = g.aType == DType::U8;

  if (preferSm90(M, g.portable) && sm90GemmSupported(g, l.facts)) return sm90Gemm(g, l);

  // The streaming kernels' operands; each kernel then sets its own split of K.
  const auto streamParams = [&] {
    GemvParams p{};
    p.a = static_cast<const __nv_bfloat16*>(a);
    p.w = wData;
    p.wScales = wScales;
    p.wGlobalScale = g.wGlobalScale;
    p.bias = g.bias;
    p.out = g.out;
    p.M = static_cast<int>(M);
    p.N = static_cast<int>(N);
    p.K = static_cast<int>(K);
    p.alpha = g.alpha;
    p.biasF32 = g.biasType == DType::F32;
    p.outF32 = g.outType == DType::F32;
    return p;
  };
  const bool streamAligned = isAligned(wData, 16) && isAligned(a, 16) && isAligned(wScales, 2);

  if (gemvEligible(M, K, aFp4) && streamAligned) {
    const GemvConfig c = selectGemvConfig(M, N, K, sms);
    if (c.ctas > INT_MAX) return cudaErrorInvalidConfiguration;
    GemvParams p = streamParams();
    p.kWarps = c.kWarps;
    return dispatchGemv(c, p, stream);
  }

  // 16 < M <= 64 on Hopper: the wide streaming kernel (its cluster launch needs sm_90).
  if (!g.portable && l.facts.hopper && gemvWideEligible(M, K, aFp4) && streamAligned) {
    const GemvWideConfig c = selectGemvWideConfig(M, N, K, sms);
    if (c.rowBlocks > 65535) return cudaErrorInvalidConfiguration;
    GemvParams p = streamParams();
    p.splits = static_cast<int>(c.splits);
    return c.nt == 4 ? launchGemvWide<4>(p, static_cast<int>(c.rowBlocks), stream)
                     : launchGemvWide<8>(p, static_cast<int>(c.rowBlocks), stream);
  }

  const GemmConfig cfg = selectGemmConfig(M, N, K, sms);
  const int64_t tilesM = (M + cfg.tileM - 1) / cfg.tileM;
  if (tilesM > 65535 || cfg.splits > 65535) return cudaErrorInvalidConfiguration;
  const bool split = cfg.splits > 1;

  GemmParams p{};
  p.a = a;
  p.aScales = g.aScales;
  p.aGlobalScale = g.aGlobalScale;
  p.w = wData;
  p.wScales = wScales;
  p.wGlobalScale = g.wGlobalScale;
  p.bias = split ? nullptr : g.bias;
  p.out = g.out;
  // Asked once, after the configuration is fixed; the arena grows outside any kernel of ours.
  p.partial = split ? static_cast<float*>(l.workspace.get(gemmConfigWorkspaceBytes(cfg, M, N))) : nullptr;
  p.M = static_cast<int>(M);
  p.N = static_cast<int>(N);
  p.K = static_cast<int>(K);
  p.numChunks = static_cast<int>(cfg.numChunks);
  p.chunksPerSplit = static_cast<int>(cfg.chunksPerSplit);
  p.alpha = g.alpha;
  p.biasF32 = g.biasType == DType::F32;
  p.outF32 = g.outType == DType::F32;
  p.wVec16 = K % 32 == 0 && isAligned(wData, 16) && (!aFp4 || isAligned(a, 16));
  p.sVec4 = K % 64 == 0 && isAligned(wScales, 4) && (!aFp4 || isAligned(g.aScales, 4));

  const dim3 grid(static_cast<unsigned>((N + cfg.tileN - 1) / cfg.tileN),
                  static_cast<unsigned>(tilesM), static_cast<unsigned>(cfg.splits));
  cudaError_t err = aFp4 ? dispatch<true>(cfg.kernel, p, grid, stream)
                         : dispatch<false>(cfg.kernel, p, grid, stream);
  if (err != cudaSuccess || !split) return err;

  const int64_t MN = M * N;
  const int blocks = static_cast<int>(std::min<int64_t>((MN + 255) / 256, 4096));
  splitReduceKernel<<<blocks, 256, 0, stream>>>(p.partial, static_cast<int>(cfg.splits), MN,
                                                 static_cast<int>(N), g.bias, p.biasF32, g.out,
                                                 p.outF32);
  return cudaGetLastError();
}

}  // namespace moe::kernels::nvfp4
