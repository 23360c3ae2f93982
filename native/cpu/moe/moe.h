// CPU reference of kernels/moe. routerLogits sums in double and rounds once (the CUDA kernels
// sum in f32 in another order: the tests bound the difference); swiglu and add are computed
// with the same f32 operations as the kernels (common/moe_rules.h), to the same bits.
#pragma once
#include "common/moe.h"

namespace moe::cpu::moe_family {

void routerLogits(const RouterLogitsArgs& args);
void swiglu(const SwigluArgs& args);
void add(const AddArgs& args);

}  // namespace moe::cpu::moe_family
