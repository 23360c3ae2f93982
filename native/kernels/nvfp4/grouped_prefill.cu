// The prefill-sized grouped GEMM variant (256 x 128 tiles, expert in the grid); launched from
// grouped_gemm.cu.
#include "kernels/nvfp4/gemm.cuh"

namespace moe::kernels::nvfp4::detail {

template <class S>
cudaError_t launchGroupedGemm(const GemmParams& p, dim3 grid, cudaStream_t stream) {
  return launchGemmImpl<S, true>(p, grid, stream);
}

template cudaError_t launchGroupedGemm<PrefillShape<false>>(const GemmParams&, dim3, cudaStream_t);

}  // namespace moe::kernels::nvfp4::detail
