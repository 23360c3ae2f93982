// The moe family's CUDA launchers (common/moe.h), on the launch's stream.
#pragma once
#include "common/moe.h"
#include "kernels/common/launch.h"

namespace moe::kernels::moe_family {

// tokens <= 128: CUDA cores, a CTA per two expert rows and eight tokens, the weight streamed
// once per eight tokens (from DRAM once, then L2). More tokens: bf16 mma.sync tiles of
// 64 tokens x 32 experts. f32 accumulation either way; deterministic.
cudaError_t routerLogits(const RouterLogitsArgs& args, const Launch& launch);
cudaError_t swiglu(const SwigluArgs& args, const Launch& launch);
cudaError_t add(const AddArgs& args, const Launch& launch);

}  // namespace moe::kernels::moe_family
