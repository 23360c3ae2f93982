// Hopper (sm_90a) warp-specialized wgmma GEMM for NVFP4 weights x BF16 activations (W4A16), the
// prefill-regime companion of `gemm` in nvfp4.h. Host launchers only; the kernel is in
// sm90_gemm.cuh.
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "common/dtype.h"

namespace moe::kernels::nvfp4 {

// True when sm90Gemm can run these arguments on the current device:
//   - the device is compute capability 9.0 and this build carries the sm_90a kernel;
//   - aType == BF16 (W4A16) and outType is BF16 or F32;
//   - K % 32 == 0 and K >= 32 (TMA needs 16-byte row strides for the packed weights; other K go
//     to the portable kernel), M, N <= INT_MAX;
//   - `a` and `wData` are 16-byte aligned (TMA base addresses).
// Scales, bias and out may have any alignment (out is written with 16-byte stores when its rows
// allow it, element stores otherwise). Whether it is also the faster choice for a shape is the
// caller's decision (it targets M >= ~512).
bool sm90GemmSupported(int64_t M, int64_t N, int64_t K, DType aType, DType outType, const void* a,
                       const uint8_t* wData);

// Same contract and argument meanings as nvfp4::gemm for aType == BF16:
//   out[M, N] = alpha * gsW * (A . W^T) (+ bias[N]), fp32 accumulation, W dequantized exactly.
// aScales/aGlobalScale are ignored. Needs no workspace, does not synchronize, enqueues on
// `stream`. Returns cudaErrorNotSupported when sm90GemmSupported(...) is false (nothing is
// launched), cudaErrorInvalidValue for bad dtypes, else cudaGetLastError().
// Scale bytes 0x7F/0xFF (E4M3 NaN) make the affected outputs NaN, as in the portable kernel.
cudaError_t sm90Gemm(const void* a, DType aType, const uint8_t* aScales, const float* aGlobalScale,
                     const uint8_t* wData, const uint8_t* wScales, const float* wGlobalScale,
                     const void* bias, DType biasType, void* out, DType outType, int64_t M,
                     int64_t N, int64_t K, float alpha, cudaStream_t stream);

}  // namespace moe::kernels::nvfp4
