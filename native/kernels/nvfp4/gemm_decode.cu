// Decode-regime GEMM variants (M <= 64): the streaming W4A16 kernel (gemv.cuh) for M <= 16, and
// the tiled kernel (gemm.cuh) for W4A4, for M > 16 and for shapes the streaming kernel does not
// take (K % 32 != 0, unaligned operands).
#include "kernels/nvfp4/gemm.cuh"
#include "kernels/nvfp4/gemv.cuh"

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

}  // namespace moe::kernels::nvfp4::detail
