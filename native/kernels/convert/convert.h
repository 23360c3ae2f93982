// Elementwise conversion (common/convert.h), on the launch's stream.
#pragma once
#include "common/convert.h"
#include "kernels/common/launch.h"

namespace moe::kernels::convert {

cudaError_t convert(const ConvertArgs& args, const Launch& launch);

}  // namespace moe::kernels::convert
