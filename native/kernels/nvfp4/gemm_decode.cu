// Decode-regime GEMM variants (M <= 64): the streaming W4A16 kernels, gemv.cuh for M <= 16 and
// gemv_wide.cuh for 16 < M <= 64 on Hopper, and the tiled kernel (gemm.cuh) for W4A4 and for
// problems the streaming kernels do not take (K % 32 != 0, unaligned operands, other devices).
#include "kernels/nvfp4/gemm.cuh"
#include "kernels/nvfp4/gemv.cuh"
#include "kernels/nvfp4/gemv_wide.cuh"

namespace moe::kernels::nvfp4::detail {

template <class S>
cudaError_t launchGemm(const GemmParams& p, dim3 grid, cudaStream_t stream) {
  return launchGemmImpl<S>(p, grid, stream);
}

template cudaError_t launchGemm<DecodeShape<1, false>>(const GemmParams&, dim3, cudaStream_t);
template cudaError_t launchGemm<DecodeShape<2, false>>(const GemmParams&, dim3, cudaStream_t);
template cudaError_t launchGemm<DecodeShape<4, false>>(const GemmParams&, dim3, cudaStream_t);
template cudaError_t launchGemm<DecodeShape<8, false>>(const GemmParams&, dim3, cudaStream_t);
template cudaError_t launchGemm<DecodeShape<1, true>>(const GemmParams&, dim3, cudaStream_t);
template cudaError_t launchGemm<DecodeShape<2, true>>(const GemmParams&, dim3, cudaStream_t);
template cudaError_t launchGemm<DecodeShape<4, true>>(const GemmParams&, dim3, cudaStream_t);
template cudaError_t launchGemm<DecodeShape<8, true>>(const GemmParams&, dim3, cudaStream_t);

template <int NT, int MT, int MinBlocks>
cudaError_t launchGemv(const GemvParams& p, cudaStream_t stream) {
  const int rowsPerCta = (8 / p.kWarps) * MT * 16;
  const dim3 grid(static_cast<unsigned>((p.N + rowsPerCta - 1) / rowsPerCta));
  gemvKernel<NT, MT, MinBlocks><<<grid, kGemvThreads, gemvSmemBytes<NT, MT>(p.kWarps), stream>>>(p);
  return cudaGetLastError();
}


template cudaError_t launchGemv<1, 1, 2>(const GemvParams&, cudaStream_t);
template cudaError_t launchGemv<2, 1, 2>(const GemvParams&, cudaStream_t);

template <int NT>
cudaError_t launchGemvWide(const GemvParams& p, int rowBlocks, cudaStream_t stream) {
  constexpr int kSmem = gemvWideSmemBytes<NT>();
  // Two CTAs per SM (128 registers); the shared-memory allowance belongs to the current
  // device's context, so it is set at each launch.
  const auto kernel = gemvWideKernel<NT, 2>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err != cudaSuccess) return err;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(p.splits), static_cast<unsigned>(rowBlocks));
  cfg.blockDim = dim3(kGemvThreads);
  cfg.dynamicSmemBytes = kSmem;
  cfg.stream = stream;
  cudaLaunchAttribute cluster[1];
  cluster[0].id = cudaLaunchAttributeClusterDimension;
  cluster[0].val.clusterDim.x = static_cast<unsigned>(p.splits);
  cluster[0].val.clusterDim.y = 1;
  cluster[0].val.clusterDim.z = 1;
  cfg.attrs = cluster;
  cfg.numAttrs = p.splits > 1 ? 1 : 0;
  err = cudaLaunchKernelEx(&cfg, kernel, p);
  return err != cudaSuccess ? err : cudaGetLastError();
}

template cudaError_t launchGemvWide<4>(const GemvParams&, int, cudaStream_t);
template cudaError_t launchGemvWide<8>(const GemvParams&, int, cudaStream_t);

}  // namespace moe::kernels::nvfp4::detail
