// The routing family's CUDA launchers (common/routing.h), on the launch's stream.
#pragma once
#include "common/routing.h"
#include "kernels/common/launch.h"

namespace moe::kernels::routing {

// One launch: a warp per token.
cudaError_t routeTopK(const RouteTopKArgs& args, const Launch& launch);
// Three launches (count per tile, scan, stable scatter); scratch from the launch's workspace.
// Ids outside [0, experts) are counted in *errors and placed nowhere.
cudaError_t expertLayout(const ExpertLayoutArgs& args, const Launch& launch);
cudaError_t permute(const PermuteArgs& args, const Launch& launch);
// A CTA per row, a thread per 16-element block: the quantizer's block math (nvfp4/quantize_block.cuh).
cudaError_t permuteQuantize(const PermuteQuantizeArgs& args, const Launch& launch);
cudaError_t unpermute(const UnpermuteArgs& args, const Launch& launch);

}  // namespace moe::kernels::routing
