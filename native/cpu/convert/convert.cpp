#include "cpu/convert/convert.h"

#include <cstring>

#include "cpu/common/numeric.h"

namespace moe::cpu::convert {
namespace {

// Every source value is exact in f32, so each conversion rounds once.
float loadF32(const void* src, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(src)[i];
    case DType::F16: return f16BitsToF32(static_cast<const uint16_t*>(src)[i]);
    case DType::BF16: return bf16BitsToF32(static_cast<const uint16_t*>(src)[i]);
    case DType::FP8E4M3: return e4m3BitsToF32(static_cast<const uint8_t*>(src)[i]);
    default: return 0.0f;
  }
}

void storeF32(void* dst, DType t, int64_t i, float v) {
  switch (t) {
    case DType::F32: static_cast<float*>(dst)[i] = v; break;
    case DType::F16: static_cast<uint16_t*>(dst)[i] = f32ToF16Bits(v); break;
    case DType::BF16: static_cast<uint16_t*>(dst)[i] = f32ToBf16Bits(v); break;
    case DType::FP8E4M3: static_cast<uint8_t*>(dst)[i] = f32ToE4m3Bits(v); break;
    default: break;
  }
}

}  // namespace

void convert(const ConvertArgs& a) {
  for (int64_t i = 0; i < a.numel; ++i) storeF32(a.dst, a.dstType, i, loadF32(a.src, a.srcType, i));
}

}  // namespace moe::cpu::convert
