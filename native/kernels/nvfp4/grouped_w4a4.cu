// The W4A4 grouped GEMM variants (NVFP4 activations through the same tiled mainloop as the
// dense kernel's aFp4 path), every tile size, bf16 or NVFP4 swiglu output; launched from
// grouped_gemm.cu.
#include "kernels/nvfp4/gemm.cuh"

namespace moe::kernels::nvfp4::detail {

template <class S, bool OutFp4, bool Gather>
cudaError_t launchGroupedGemm(const GemmParams& p, const GroupParams& group, dim3 grid, cudaStream_t stream) {
  return launchGroupedGemmImpl<S, OutFp4, Gather>(p, group, grid, stream);
}

template cudaError_t launchGroupedGemm<DecodeShape<2, true>, false, false>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
template cudaError_t launchGroupedGemm<DecodeShape<8, true>, false, false>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
template cudaError_t launchGroupedGemm<PrefillShape<true>, false, false>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
template cudaError_t launchGroupedGemm<DecodeShape<2, true>, true, false>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
template cudaError_t launchGroupedGemm<DecodeShape<8, true>, true, false>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
template cudaError_t launchGroupedGemm<PrefillShape<true>, true, false>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);

}  // namespace moe::kernels::nvfp4::detail
