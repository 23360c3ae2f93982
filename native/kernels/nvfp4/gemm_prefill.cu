// Prefill-regime GEMM variants (M > 64), one per activation format.
#include "kernels/nvfp4/gemm.cuh"

namespace moe::kernels::nvfp4::detail {

template <class S>
cudaError_t launchGemm(const GemmParams& p, dim3 grid, cudaStream_t stream) {
  return launchGemmImpl<S>(p, grid, stream);
}

template cudaError_t launchGemm<PrefillShape<false>>(const GemmParams&, dim3, cudaStream_t);
template cudaError_t launchGemm<PrefillShape<true>>(const GemmParams&, dim3, cudaStream_t);

}  // namespace moe::kernels::nvfp4::detail
