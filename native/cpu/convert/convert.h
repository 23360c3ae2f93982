// CPU reference of kernels/convert: the same conversions, bit for bit.
#pragma once
#include "common/convert.h"

namespace moe::cpu::convert {

void convert(const ConvertArgs& args);

}  // namespace moe::cpu::convert
