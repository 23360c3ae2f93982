// The quantizer's per-16-block math (nvfp4.h, quantize), shared by every kernel that writes
// NVFP4: the quantize op, permute's fused gather + quantize and the grouped GEMM's swiglu
// epilogue, so that all of them produce the same bytes as the CPU reference.
#pragma once
#include <cstdint>

#include "common/dtype.h"
#include "kernels/nvfp4/common.cuh"

namespace moe::kernels::nvfp4::detail {

// Four words of eight 16-bit values (bf16 or f16, the low half first) -> v[0..7] as f32, their
// sign bits or-ed into `signs` from bit `bit0` on.
template <DType T>
__device__ __forceinline__ void bf16OrF16Words(const uint32_t w[4], float v[8], uint32_t& signs, int bit0) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      unsigned short bits = static_cast<unsigned short>(h ? (w[j] >> 16) : (w[j] & 0xFFFFu));
      signs |= static_cast<uint32_t>(bits >> 15) << (bit0 + 2 * j + h);
      v[2 * j + h] = T == DType::F16 ? __half2float(__ushort_as_half(bits)) : __uint_as_float(static_cast<uint32_t>(bits) << 16);
    }
  }
}

// Block `block` (16 consecutive elements, 16-byte aligned) of x as f32, with the sign bits of
// the stored values in `signs` (bit i for element i).
template <DType T>
__device__ __forceinline__ void loadBlock(const void* x, int64_t block, float v[16], uint32_t& signs) {
  // Signs come from the stored bits, not from the converted value, so that a NaN's sign is
  // never subject to how a conversion treats NaN payloads.
  signs = 0;
  if constexpr (T == DType::F32) {
    const float4* p = static_cast<const float4*>(x) + block * 4;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float4 f = __ldg(p + i);
      v[4 * i] = f.x; v[4 * i + 1] = f.y; v[4 * i + 2] = f.z; v[4 * i + 3] = f.w;
    }
#pragma unroll
    for (int i = 0; i < 16; ++i) signs |= (__float_as_uint(v[i]) >> 31) << i;
  } else {
    const uint4* p = static_cast<const uint4*>(x) + block * 2;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      uint4 u = __ldg(p + i);
      uint32_t w[4] = {u.x, u.y, u.z, u.w};
      bf16OrF16Words<T>(w, v + 8 * i, signs, 8 * i);
    }
  }
}

// 16 values (with the sign bits of their stored form) -> 8 bytes of E2M1 codes (element 2i in
// the low nibble of byte i) and the block's E4M3 scale, with the global scale gs:
//   s = blockAmax / (6 * gs), 0 -> 1, clamped to [2^-9, 448], rounded to E4M3;
//   code = E2M1(|v| / (e4m3(s) * gs)), nearest even, saturating at 6, sign from `signs`.
__device__ __forceinline__ void quantizeBlockValues(const float v[16], uint32_t signs, float gs, uint2& data, uint8_t& scale) {
  float amaxBlock = 0.0f;
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    float a = fabsf(v[i]);
    amaxBlock = a > amaxBlock ? a : amaxBlock;  // NaN never wins a compare
  }
  float s = __fdiv_rn(amaxBlock, __fmul_rn(6.0f, gs));
  if (s == 0.0f) s = 1.0f;
  s = fminf(fmaxf(s, 0x1p-9f), 448.0f);
  const uint32_t code = floatToE4m3(s);
  const float denom = __fmul_rn(e4m3ToFloat(code), gs);

  uint32_t packed[2] = {0u, 0u};
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    float q = __fdiv_rn(v[i], denom);
    uint32_t nib = e2m1Magnitude(fabsf(q)) | (((signs >> i) & 1u) << 3);
    packed[i / 8] |= nib << (4 * (i % 8));
  }
  data = make_uint2(packed[0], packed[1]);
  scale = static_cast<uint8_t>(code);
}

}  // namespace moe::kernels::nvfp4::detail
