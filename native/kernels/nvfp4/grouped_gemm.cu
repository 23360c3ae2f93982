// Grouped (expert) GEMM launcher: one configuration from heuristics.h, one launch of the
// streaming kernel, of a tiled one with the expert in the grid, or of the Hopper wgmma kernel
// (sm90_gemm.h). Also the decode-sized W4A16 variants; the prefill-sized one is in
// grouped_prefill.cu, the W4A4 ones in grouped_w4a4.cu, the gathering ones in grouped_gather.cu
// and grouped_w4a4_gather.cu.
#include <algorithm>
#include <climits>

#include "common/align.h"
#include "kernels/nvfp4/gemm.cuh"
#include "kernels/nvfp4/gemv.cuh"
#include "kernels/nvfp4/heuristics.h"
#include "kernels/nvfp4/nvfp4.h"
#include "kernels/nvfp4/sm90_gemm.h"

namespace moe::kernels::nvfp4 {
namespace detail {


static_assert(DecodeShape<2, false>::kTileM == 16 && DecodeShape<8, false>::kTileM == 64 &&
                  DecodeShape<2, false>::kTileN == kDecodeTileN,
              "heuristics.h out of sync");

template <class S, bool OutFp4, bool Gather>
cudaError_t launchGroupedGemm(const GemmParams& p, const GroupParams& group, dim3 grid, cudaStream_t stream) {
  return launchGroupedGemmImpl<S, OutFp4, Gather>(p, group, grid, stream);
}

template cudaError_t launchGroupedGemm<DecodeShape<2, false>, false, false>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
template cudaError_t launchGroupedGemm<DecodeShape<8, false>, false, false>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
template cudaError_t launchGroupedGemm<DecodeShape<2, false>, true, false>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
template cudaError_t launchGroupedGemm<DecodeShape<8, false>, true, false>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
// compiled in grouped_prefill.cu
extern template cudaError_t launchGroupedGemm<PrefillShape<false>, false, false>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
extern template cudaError_t launchGroupedGemm<PrefillShape<false>, true, false>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
// compiled in grouped_w4a4.cu
extern template cudaError_t launchGroupedGemm<DecodeShape<2, true>, false, false>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
extern template cudaError_t launchGroupedGemm<DecodeShape<2, true>, true, false>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
extern template cudaError_t launchGroupedGemm<DecodeShape<8, true>, false, false>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
extern template cudaError_t launchGroupedGemm<DecodeShape<8, true>, true, false>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
extern template cudaError_t launchGroupedGemm<PrefillShape<true>, false, false>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
extern template cudaError_t launchGroupedGemm<PrefillShape<true>, true, false>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
// the gathering variants: grouped_gather.cu (W4A16) and grouped_w4a4_gather.cu (W4A4)
extern template cudaError_t launchGroupedGemm<DecodeShape<2, false>, false, true>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
extern template cudaError_t launchGroupedGemm<DecodeShape<8, false>, false, true>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
extern template cudaError_t launchGroupedGemm<PrefillShape<false>, false, true>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
extern template cudaError_t launchGroupedGemm<DecodeShape<2, false>, true, true>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
extern template cudaError_t launchGroupedGemm<DecodeShape<8, false>, true, true>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
extern template cudaError_t launchGroupedGemm<PrefillShape<false>, true, true>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
extern template cudaError_t launchGroupedGemm<DecodeShape<2, true>, false, true>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
extern template cudaError_t launchGroupedGemm<DecodeShape<8, true>, false, true>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
extern template cudaError_t launchGroupedGemm<PrefillShape<true>, false, true>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
extern template cudaError_t launchGroupedGemm<DecodeShape<2, true>, true, true>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
extern template cudaError_t launchGroupedGemm<DecodeShape<8, true>, true, true>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
extern template cudaError_t launchGroupedGemm<PrefillShape<true>, true, true>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
extern template cudaError_t launchGroupedGemv<1, 1, 2, true>(const GemvParams&, dim3, cudaStream_t);
extern template cudaError_t launchGroupedGemv<2, 1, 2, true>(const GemvParams&, dim3, cudaStream_t);

// The tiled kernel the configuration names, for one activation format, one output format and
// one way of reading x.
template <bool AFp4, bool OutFp4, bool Gather>
cudaError_t launchTiled(GroupedKernel kernel, const GemmParams& p, const GroupParams& group, dim3 grid, cudaStream_t stream) {
  switch (kernel) {
    case GroupedKernel::Tile16: return launchGroupedGemm<DecodeShape<2, AFp4>, OutFp4, Gather>(p, group, grid, stream);
    case GroupedKernel::Tile64: return launchGroupedGemm<DecodeShape<8, AFp4>, OutFp4, Gather>(p, group, grid, stream);
    case GroupedKernel::Tile128: return launchGroupedGemm<PrefillShape<AFp4>, OutFp4, Gather>(p, group, grid, stream);
    default: return cudaErrorInvalidConfiguration;
  }
}

template <bool Gather>
cudaError_t launchTiledAny(GroupedKernel kernel, bool xFp4, bool outFp4, const GemmParams& p, const GroupParams& group, dim3 grid,
                           cudaStream_t stream) {
  if (xFp4) {
    return outFp4 ? launchTiled<true, true, Gather>(kernel, p, group, grid, stream) : launchTiled<true, false, Gather>(kernel, p, group, grid, stream);
  }
  return outFp4 ? launchTiled<false, true, Gather>(kernel, p, group, grid, stream) : launchTiled<false, false, Gather>(kernel, p, group, grid, stream);
}

template <int NT, int MT, int MinBlocks, bool Gather>
cudaError_t launchGroupedGemv(const GemvParams& p, dim3 grid, cudaStream_t stream) {
  return launchGroupedGemvImpl<NT, MT, MinBlocks, Gather>(p, grid, stream);
}

template cudaError_t launchGroupedGemv<1, 1, 2, false>(const GemvParams&, dim3, cudaStream_t);
template cudaError_t launchGroupedGemv<2, 1, 2, false>(const GemvParams&, dim3, cudaStream_t);

}  // namespace detail

using namespace detail;

cudaError_t groupedGemm(const GroupedGemmArgs& g, const Launch& l) {
  const int64_t E = g.E, N = g.N, K = g.K;
  const bool xFp4 = g.xType == DType::U8, outFp4 = g.outType == DType::U8;
  if (outFp4 && g.outGlobalScaleOut != nullptr && g.outGlobalScaleOut != g.outGlobalScale) {
    const cudaError_t err =
        cudaMemcpyAsync(g.outGlobalScaleOut, g.outGlobalScale, sizeof(float), cudaMemcpyDeviceToDevice, l.stream);
    if (err != cudaSuccess) return err;
  }
  if (g.rows == 0 || N == 0) return cudaSuccess;
  if (E > 65535) return cudaErrorInvalidConfiguration;  // a grid dimension
  const bool swiglu = g.epilogue == GroupedEpilogue::Swiglu;
  const bool gather = g.xRows != nullptr;
  // the streaming kernel reads row 0 of x in place of a gathered row outside it: x needs one
  const bool gemvAligned = isAligned(g.wData, 16) && isAligned(g.x, 16) && isAligned(g.wScales, 2) && !(gather && g.xTokens == 0);
  const GroupedConfig c = selectGroupedConfig(E, N, K, swiglu, g.maxRowsPerExpert, g.pairs, gemvAligned,
                                              l.facts.multiprocessors, xFp4, outFp4,
                                              !g.portable && sm90GroupedSupported(g, l.facts));
  if (c.kernel == GroupedKernel::Sm90) return sm90GroupedGemm(g, static_cast<int>(c.tileM), l);

  GroupParams group{};
  group.counts = g.counts;
  group.offsets = g.offsets;
  group.wStride = N * (K / 2);
  group.sStride = N * (K / kNvfp4Block);
  group.rows = static_cast<int>(g.rows);
  group.maxRows = static_cast<int>(std::min<int64_t>(g.maxRowsPerExpert, INT_MAX));
  group.swigluI = swiglu ? static_cast<int>(N / 2) : 0;
  group.outScales = outFp4 ? g.outScales : nullptr;
  group.outGlobalScale = outFp4 ? g.outGlobalScale : nullptr;
  group.xRows = g.xRows;
  group.gatherK = gather ? g.gatherK : 1;
  group.xTokens = gather ? static_cast<int>(g.xTokens) : 0;

  if (c.kernel == GroupedKernel::Gemv) {
    // bf16 in, bf16 out only; selectGroupedConfig never picks it otherwise
    if (xFp4 || outFp4) return cudaErrorInvalidConfiguration;
    if (c.gemv.ctas > INT_MAX) return cudaErrorInvalidConfiguration;
    GemvParams p{};
    p.a = static_cast<const __nv_bfloat16*>(g.x);
    p.w = g.wData;
    p.wScales = g.wScales;
    p.wGlobalScale = g.wGlobalScale;
    p.bias = nullptr;
    p.out = g.out;
    p.M = 0;  // per expert: its count
    p.N = static_cast<int>(N);
    p.K = static_cast<int>(K);
    p.kWarps = c.gemv.kWarps;
    p.alpha = 1.0f;
    p.biasF32 = false;
    p.outF32 = false;
    p.group = group;
    const dim3 grid(static_cast<unsigned>(c.gemv.ctas), static_cast<unsigned>(E));
    if (c.gemv.nt == 1 && c.gemv.mt == 1) {
      return gather ? launchGroupedGemv<1, 1, 2, true>(p, grid, l.stream) : launchGroupedGemv<1, 1, 2, false>(p, grid, l.stream);
    }
    if (c.gemv.nt == 2 && c.gemv.mt == 1) {
      return gather ? launchGroupedGemv<2, 1, 2, true>(p, grid, l.stream) : launchGroupedGemv<2, 1, 2, false>(p, grid, l.stream);
    }
    return cudaErrorInvalidConfiguration;
  }

  GemmParams p{};
  p.a = g.x;
  p.aScales = xFp4 ? g.xScales : nullptr;
  p.aGlobalScale = xFp4 ? g.xGlobalScale : nullptr;
  p.w = g.wData;
  p.wScales = g.wScales;
  p.wGlobalScale = g.wGlobalScale;
  p.bias = nullptr;
  p.out = g.out;
  p.partial = nullptr;
  p.M = 0;  // per expert: its count
  p.N = static_cast<int>(N);
  p.K = static_cast<int>(K);
  p.numChunks = static_cast<int>((K + kGemmChunkK - 1) / kGemmChunkK);
  p.chunksPerSplit = p.numChunks;
  p.alpha = 1.0f;
  p.biasF32 = false;
  p.outF32 = false;
  // Expert strides keep these: N * K/2 is a multiple of 16 when K % 32 == 0, N * K/16 of 4 when K % 64 == 0;
  // so do NVFP4 x's row offsets (start * K/2, start * K/16), whose vector loads use the same flags.
  p.wVec16 = K % 32 == 0 && isAligned(g.wData, 16) && (!xFp4 || isAligned(g.x, 16));
  p.sVec4 = K % 64 == 0 && isAligned(g.wScales, 4) && (!xFp4 || isAligned(g.xScales, 4));
  if (c.tilesN > INT_MAX) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(c.tilesN), static_cast<unsigned>(c.mSlots), static_cast<unsigned>(E));
  return gather ? launchTiledAny<true>(c.kernel, xFp4, outFp4, p, group, grid, l.stream)
                : launchTiledAny<false>(c.kernel, xFp4, outFp4, p, group, grid, l.stream);
}

}  // namespace moe::kernels::nvfp4
