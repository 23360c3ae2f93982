// CPU reference of kernels/routing: the definition of what the routing ops compute. Ids, layouts
// and permuted rows equal the CUDA results exactly; weights and unpermuted rows are computed with
// the same f32 operations in the same order (common/routing_rules.h).
#pragma once
#include "common/routing.h"

namespace moe::cpu::routing {

void routeTopK(const RouteTopKArgs& args);
// Throws E_RANGE naming the first id outside [0, experts) before writing anything.
void expertLayout(const ExpertLayoutArgs& args);
void permute(const PermuteArgs& args);
// The bytes of cpu::nvfp4::quantize applied to permute's rows (the same function, row by row).
void permuteQuantize(const PermuteQuantizeArgs& args);
void unpermute(const UnpermuteArgs& args);

}  // namespace moe::cpu::routing
