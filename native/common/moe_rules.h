// Arithmetic of the moe family that both backends compute to the same bits: every step one
// IEEE round-to-nearest f32 operation, with the exp of the routing rules (no library expf,
// whose last bit differs between hosts and the device).
#pragma once
#include "common/routing_rules.h"

namespace moe::moe_rules {
namespace R = moe::routing_rules;

// silu(g) * u = (g * sigmoid(g)) * u.
ROUTING_HD float swiglu(float g, float u) { return R::mul(R::mul(g, R::sigmoid(g)), u); }

}  // namespace moe::moe_rules
