// An empty kernel, for measuring what a launch costs from JS against a C++ loop.
#pragma once
#include "common/diagnostics.h"
#include "kernels/common/launch.h"

namespace moe::kernels::diagnostics {

cudaError_t launchEmpty(const EmptyArgs& args, const Launch& launch);

}  // namespace moe::kernels::diagnostics
