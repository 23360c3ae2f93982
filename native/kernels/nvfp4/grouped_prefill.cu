// The prefill-sized W4A16 grouped GEMM variants (256 x 128 tiles, expert in the grid; bf16 or
// NVFP4 swiglu output); launched from grouped_gemm.cu.
#include "kernels/nvfp4/gemm.cuh"

namespace moe::kernels::nvfp4::detail {

template <class S, bool OutFp4, bool Gather>
cudaError_t launchGroupedGemm(const GemmParams& p, const GroupParams& group, dim3 grid, cudaStream_t stream) {
  return launchGroupedGemmImpl<S, OutFp4, Gather>(p, group, grid, stream);
}

template cudaError_t launchGroupedGemm<PrefillShape<false>, false, false>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
template cudaError_t launchGroupedGemm<PrefillShape<false>, true, false>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);

}  // namespace moe::kernels::nvfp4::detail
