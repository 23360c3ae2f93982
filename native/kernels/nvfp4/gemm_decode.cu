// Decode-regime GEMM variants (M <= 64): one per token tile and activation format.
#include "kernels/nvfp4/gemm.cuh"

namespace moe::kernels::nvfp4::detail {

template <class S>
cudaError_t launchGemm(const GemmArgs& p, dim3 grid, cudaStream_t stream) {
  return launchGemmImpl<S>(p, grid, stream);
}

template cudaError_t launchGemm<DecodeShape<1, false>>(const GemmArgs&, dim3, cudaStream_t);
template cudaError_t launchGemm<DecodeShape<2, false>>(const GemmArgs&, dim3, cudaStream_t);
template cudaError_t launchGemm<DecodeShape<4, false>>(const GemmArgs&, dim3, cudaStream_t);
template cudaError_t launchGemm<DecodeShape<8, false>>(const GemmArgs&, dim3, cudaStream_t);
template cudaError_t launchGemm<DecodeShape<1, true>>(const GemmArgs&, dim3, cudaStream_t);
template cudaError_t launchGemm<DecodeShape<2, true>>(const GemmArgs&, dim3, cudaStream_t);
template cudaError_t launchGemm<DecodeShape<4, true>>(const GemmArgs&, dim3, cudaStream_t);
template cudaError_t launchGemm<DecodeShape<8, true>>(const GemmArgs&, dim3, cudaStream_t);

}  // namespace moe::kernels::nvfp4::detail
