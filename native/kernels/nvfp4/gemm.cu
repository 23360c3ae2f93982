// NVFP4 GEMM launcher: picks a configuration (heuristics.h), launches the tiled kernel and, when
// K is split, the deterministic reduction of the fp32 partials.
#include <atomic>
#include <climits>

#include "kernels/nvfp4/gemm.cuh"
#include "kernels/nvfp4/gemv.cuh"
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

int smCount() {
  static std::atomic<int> cache[64] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 132;
  if (dev >= 0 && dev < 64) {
    int v = cache[dev].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int n = 0;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) {
    return 132;
  }
  if (dev >= 0 && dev < 64) cache[dev].store(n, std::memory_order_relaxed);
  return n;
}

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
cudaError_t dispatch(GemmKernel kernel, const GemmArgs& p, dim3 grid, cudaStream_t stream) {
  switch (kernel) {
    case GemmKernel::Decode8: return launchGemm<DecodeShape<1, AFp4>>(p, grid, stream);
    case GemmKernel::Decode16: return launchGemm<DecodeShape<2, AFp4>>(p, grid, stream);
    case GemmKernel::Decode32: return launchGemm<DecodeShape<4, AFp4>>(p, grid, stream);
    case GemmKernel::Decode64: return launchGemm<DecodeShape<8, AFp4>>(p, grid, stream);
    case GemmKernel::Prefill: return launchGemm<PrefillShape<AFp4>>(p, grid, stream);
  }
  return cudaErrorInvalidValue;
}

bool aligned(const void* p, uintptr_t n) { return (reinterpret_cast<uintptr_t>(p) & (n - 1)) == 0; }

static_assert(kGemvBatchK == kGemvBatch, "heuristics.h out of sync");

// Both tiles fit two 256-thread CTAs per SM (<= 128 registers, no spills).
cudaError_t dispatchGemv(const GemvConfig& c, const GemvArgs& p, cudaStream_t stream) {
  if (c.nt == 1 && c.mt == 1) return launchGemv<1, 1, 2>(p, stream);
  if (c.nt == 2 && c.mt == 1) return launchGemv<2, 1, 2>(p, stream);
  return cudaErrorInvalidConfiguration;
}

}  // namespace
}  // namespace detail

using namespace detail;

size_t gemmWorkspaceBytes(int64_t M, int64_t N, int64_t K, DType aType, bool forcePortable) {
  if (M <= 0 || N <= 0) return 0;
  // The streaming kernel needs none; if gemm() later finds its operands unaligned, the tiled
  // kernel runs without splitting K instead.
  if (gemvEligible(M, K, aType == DType::U8)) return 0;
  // Likewise the Hopper kernel (alignment is checked again at launch, with the same fallback).
  if (aType == DType::BF16 && preferSm90(M, forcePortable) &&
      sm90GemmSupported(M, N, K, aType, DType::BF16, nullptr, nullptr)) {
    return 0;
  }
  return gemmConfigWorkspaceBytes(selectGemmConfig(M, N, K, smCount(), forcePortable), M, N);
}

cudaError_t gemm(const void* a, DType aType, const uint8_t* aScales, const float* aGlobalScale,
                 const uint8_t* wData, const uint8_t* wScales, const float* wGlobalScale,
                 const void* bias, DType biasType, void* out, DType outType, int64_t M, int64_t N,
                 int64_t K, float alpha, bool forcePortable, void* workspace, size_t workspaceBytes,
                 cudaStream_t stream) {
  if (aType != DType::BF16 && aType != DType::U8) return cudaErrorInvalidValue;
  if (outType != DType::BF16 && outType != DType::F32) return cudaErrorInvalidValue;
  if (bias != nullptr && biasType != DType::BF16 && biasType != DType::F32) return cudaErrorInvalidValue;
  if (M < 0 || N < 0 || K < 0 || K % 16 != 0) return cudaErrorInvalidValue;
  // Kernel index math keeps per-dimension values in int; K/2 bytes per row as well.
  if (M > INT_MAX || N > INT_MAX || K > INT_MAX / 2) return cudaErrorInvalidValue;
  if (M == 0 || N == 0) return cudaSuccess;
  const bool aFp4 = aType == DType::U8;
  // Packed rows need 8-byte alignment at least; bf16 activation rows are read 16 bytes at a time.
  if (!aligned(wData, 8) || (aFp4 && !aligned(a, 8)) || (!aFp4 && !aligned(a, 16))) {
    return cudaErrorMisalignedAddress;
  }

  if (!aFp4 && preferSm90(M, forcePortable) && sm90GemmSupported(M, N, K, aType, outType, a, wData)) {
    return sm90Gemm(a, aType, aScales, aGlobalScale, wData, wScales, wGlobalScale, bias, biasType, out, outType, M,
                    N, K, alpha, stream);
  }

  if (gemvEligible(M, K, aFp4) && aligned(wData, 16) && aligned(a, 16) && aligned(wScales, 2)) {
    const GemvConfig c = selectGemvConfig(M, N, K, smCount());
    if (c.ctas > INT_MAX) return cudaErrorInvalidConfiguration;
    GemvArgs g{};
    g.a = static_cast<const __nv_bfloat16*>(a);
    g.w = wData;
    g.wScales = wScales;
    g.wGlobalScale = wGlobalScale;
    g.bias = bias;
    g.out = out;
    g.M = static_cast<int>(M);
    g.N = static_cast<int>(N);
    g.K = static_cast<int>(K);
    g.kWarps = c.kWarps;
    g.alpha = alpha;
    g.biasF32 = biasType == DType::F32;
    g.outF32 = outType == DType::F32;
    return dispatchGemv(c, g, stream);
  }

  GemmConfig cfg = selectGemmConfig(M, N, K, smCount(), forcePortable);
  if (cfg.splits > 1 && (workspace == nullptr || workspaceBytes < gemmConfigWorkspaceBytes(cfg, M, N))) {
    // Fall back to as many slices as the workspace holds.
    const int64_t fit = workspace == nullptr ? 0 : static_cast<int64_t>(workspaceBytes / (static_cast<size_t>(M) * N * sizeof(float)));
    int64_t splits = fit >= 2 ? std::min<int64_t>(fit, cfg.splits) : 1;
    cfg.chunksPerSplit = splits > 1 ? (cfg.numChunks + splits - 1) / splits : cfg.numChunks;
    cfg.splits = splits > 1 ? (cfg.numChunks + cfg.chunksPerSplit - 1) / cfg.chunksPerSplit : 1;
  }

  GemmArgs p{};
  p.a = a;
  p.aScales = aScales;
  p.aGlobalScale = aGlobalScale;
  p.w = wData;
  p.wScales = wScales;
  p.wGlobalScale = wGlobalScale;
  p.bias = cfg.splits > 1 ? nullptr : bias;
  p.out = out;
  p.partial = cfg.splits > 1 ? static_cast<float*>(workspace) : nullptr;
  p.M = static_cast<int>(M);
  p.N = static_cast<int>(N);
  p.K = static_cast<int>(K);
  p.numChunks = static_cast<int>(cfg.numChunks);
  p.chunksPerSplit = static_cast<int>(cfg.chunksPerSplit);
  p.alpha = alpha;
  p.biasF32 = biasType == DType::F32;
  p.outF32 = outType == DType::F32;
  p.wVec16 = K % 32 == 0 && aligned(wData, 16) && (!aFp4 || aligned(a, 16));
  p.sVec4 = K % 64 == 0 && aligned(wScales, 4) && (!aFp4 || aligned(aScales, 4));

  const int64_t tilesM = (M + cfg.tileM - 1) / cfg.tileM;
  if (tilesM > 65535 || cfg.splits > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>((N + cfg.tileN - 1) / cfg.tileN),
                  static_cast<unsigned>(tilesM), static_cast<unsigned>(cfg.splits));
  cudaError_t err = aFp4 ? dispatch<true>(cfg.kernel, p, grid, stream)
                         : dispatch<false>(cfg.kernel, p, grid, stream);
  if (err != cudaSuccess || cfg.splits <= 1) return err;

  const int64_t MN = M * N;
  const int blocks = static_cast<int>(std::min<int64_t>((MN + 255) / 256, 4096));
  splitReduceKernel<<<blocks, 256, 0, stream>>>(p.partial, static_cast<int>(cfg.splits), MN,
                                                 static_cast<int>(N), bias, p.biasF32, out,
                                                 p.outF32);
  return cudaGetLastError();
}

}  // namespace moe::kernels::nvfp4
