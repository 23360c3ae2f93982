#include "cpu/moe/moe.h"

#include <vector>

#include "common/moe_rules.h"
#include "cpu/common/numeric.h"

namespace moe::cpu::moe_family {
namespace {

float load(const void* p, DType t, int64_t i) {
  return t == DType::BF16 ? bf16BitsToF32(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
}

void store(void* p, DType t, int64_t i, float v) {
  if (t == DType::BF16) static_cast<uint16_t*>(p)[i] = f32ToBf16Bits(v);
  else static_cast<float*>(p)[i] = v;
}

}  // namespace

void routerLogits(const RouterLogitsArgs& a) {
  const int64_t H = a.hidden;
  std::vector<double> w(static_cast<size_t>(H));
  for (int32_t e = 0; e < a.experts; ++e) {
    for (int64_t h = 0; h < H; ++h) w[h] = bf16BitsToF32(a.weight[e * H + h]);
    for (int64_t t = 0; t < a.tokens; ++t) {
      const uint16_t* x = a.x + t * H;
      double s = 0.0;
      for (int64_t h = 0; h < H; ++h) s += static_cast<double>(bf16BitsToF32(x[h])) * w[h];
      a.out[t * a.experts + e] = static_cast<float>(s);
    }
  }
}

void swiglu(const SwigluArgs& a) {
  const int64_t I = a.inner;
  for (int64_t r = 0; r < a.rows; ++r) {
    for (int64_t i = 0; i < I; ++i) {
      const float g = load(a.x, a.xType, r * 2 * I + i);
      const float u = load(a.x, a.xType, r * 2 * I + I + i);
      store(a.out, a.outType, r * I + i, moe_rules::swiglu(g, u));
    }
  }
}

void add(const AddArgs& a) {
  for (int64_t i = 0; i < a.numel; ++i) {
    store(a.out, a.outType, i, routing_rules::add(load(a.a, a.aType, i), load(a.b, a.bType, i)));
  }
}

}  // namespace moe::cpu::moe_family
