// CPU reference of kernels/convert: the same conversions, bit for bit.
#pragma once
#include <cstdint>

#include "kernels/common/dtype.h"

namespace moe::cpu::convert {

void convert(const void* src, DType srcType, void* dst, DType dstType, int64_t numel);

}  // namespace moe::cpu::convert
