// The gathering W4A16 grouped GEMM variants (x holds one row per token; GroupedGemmArgs::xRows):
// every tile size and the streaming kernel, bf16 or NVFP4 swiglu output; launched from
// grouped_gemm.cu.
#include "kernels/nvfp4/gemm.cuh"
#include "kernels/nvfp4/gemv.cuh"

namespace moe::kernels::nvfp4::detail {

template <class S, bool OutFp4, bool Gather>
cudaError_t launchGroupedGemm(const GemmParams& p, const GroupParams& group, dim3 grid, cudaStream_t stream) {
  return launchGroupedGemmImpl<S, OutFp4, Gather>(p, group, grid, stream);
}

template cudaError_t launchGroupedGemm<DecodeShape<2, false>, false, true>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
template cudaError_t launchGroupedGemm<DecodeShape<8, false>, false, true>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
template cudaError_t launchGroupedGemm<PrefillShape<false>, false, true>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
template cudaError_t launchGroupedGemm<DecodeShape<2, false>, true, true>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
template cudaError_t launchGroupedGemm<DecodeShape<8, false>, true, true>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);
template cudaError_t launchGroupedGemm<PrefillShape<false>, true, true>(const GemmParams&, const GroupParams&, dim3, cudaStream_t);

template <int NT, int MT, int MinBlocks, bool Gather>
cudaError_t launchGroupedGemv(const GemvParams& p, dim3 grid, cudaStream_t stream) {
  return launchGroupedGemvImpl<NT, MT, MinBlocks, Gather>(p, grid, stream);
}

template cudaError_t launchGroupedGemv<1, 1, 2, true>(const GemvParams&, dim3, cudaStream_t);
template cudaError_t launchGroupedGemv<2, 1, 2, true>(const GemvParams&, dim3, cudaStream_t);

}  // namespace moe::kernels::nvfp4::detail
