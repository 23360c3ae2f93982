// Elementwise conversion between f32, f16, bf16 and fp8e4m3: round to nearest even,
// e4m3 saturating to +-448, NaN kept (as the target's canonical NaN).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/dtype.h"

namespace moe::kernels::convert {

cudaError_t convert(const void* src, DType srcType, void* dst, DType dstType, int64_t numel, cudaStream_t stream);

}  // namespace moe::kernels::convert
