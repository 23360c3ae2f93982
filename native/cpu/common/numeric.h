// Bit-exact scalar conversions for the CPU reference backend. Written from the formats'
// definitions with integer arithmetic only, so they do not depend on the host's FPU modes;
// the GPU kernels use hardware conversions and are tested bit-for-bit against these.
//
// Rounding is to nearest, ties to even. NaN inputs become the target's canonical NaN
// (0x7FFF for f16 and bf16, 0x7F for e4m3, 0x7FFFFFFF for f32 from f16 or e4m3), which is what
// the sm_80+ cvt instructions return; bf16 -> f32 is a shift and keeps the payload.
// f32 -> e4m3 saturates to +-448 (also for +-inf), like cvt.rn.satfinite.e4m3x2.f32.
#pragma once
#include <cstdint>
#include <cstring>

namespace moe::cpu {

inline uint32_t floatBits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bitsFloat(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// Rounds the integer mantissa m right by `shift` bits (1..31), ties to even.
inline uint32_t roundShiftRne(uint32_t m, int shift) {
  uint32_t r = m >> shift;
  uint32_t rem = m & ((1u << shift) - 1u);
  uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (r & 1u))) ++r;
  return r;
}

inline uint16_t f32ToBf16Bits(float f) {
  uint32_t u = floatBits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FFF;
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float bf16BitsToF32(uint16_t h) { return bitsFloat(static_cast<uint32_t>(h) << 16); }

inline uint16_t f32ToF16Bits(float f) {
  uint32_t x = floatBits(f);
  uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  uint32_t a = x & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return 0x7FFF;
  if (a >= 0x477FF000u) return sign | 0x7C00;          // >= 65520 rounds to inf
  if (a >= 0x38800000u) {                              // normal f16 (>= 2^-14)
    uint32_t m = a + 0xFFFu + ((a >> 13) & 1u);
    return sign | static_cast<uint16_t>((m - 0x38000000u) >> 13);
  }
  if (a <= 0x33000000u) return sign;                   // <= 2^-25 rounds to zero
  int e = static_cast<int>(a >> 23);
  uint32_t m = (a & 0x7FFFFFu) | 0x800000u;            // value = m * 2^(e-150); unit 2^-24
  return sign | static_cast<uint16_t>(roundShiftRne(m, 126 - e));
}

inline float f16BitsToF32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1Fu;
  uint32_t m = h & 0x3FFu;
  if (e == 0x1F) return m ? bitsFloat(0x7FFFFFFFu) : bitsFloat(sign | 0x7F800000u);
  if (e != 0) return bitsFloat(sign | ((e + 112u) << 23) | (m << 13));
  if (m == 0) return bitsFloat(sign);
  // subnormal: m * 2^-24, exact in f32
  float v = static_cast<float>(m) * 5.9604644775390625e-08f;
  return sign ? -v : v;
}

inline uint8_t f32ToE4m3Bits(float f) {
  uint32_t x = floatBits(f);
  uint8_t sign = static_cast<uint8_t>((x >> 24) & 0x80u);
  uint32_t a = x & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return 0x7F;
  if (a >= 0x43E00000u) return sign | 0x7E;            // >= 448 (and inf) saturates
  if (a >= 0x3C800000u) {                              // normal e4m3 (>= 2^-6)
    uint32_t m = a + 0x7FFFFu + ((a >> 20) & 1u);
    return sign | static_cast<uint8_t>((m - 0x3C000000u) >> 20);
  }
  if (a <= 0x3A800000u) return sign;                   // <= 2^-10 rounds to zero
  int e = static_cast<int>(a >> 23);
  uint32_t m = (a & 0x7FFFFFu) | 0x800000u;            // unit 2^-9
  return sign | static_cast<uint8_t>(roundShiftRne(m, 141 - e));
}

inline float e4m3BitsToF32(uint8_t b) {
  uint32_t sign = static_cast<uint32_t>(b & 0x80u) << 24;
  uint32_t e = (b >> 3) & 0xFu;
  uint32_t m = b & 0x7u;
  if (e == 0xF && m == 0x7) return bitsFloat(0x7FFFFFFFu);
  if (e != 0) return bitsFloat(sign | ((e + 120u) << 23) | (m << 20));
  float v = static_cast<float>(m) * 0.001953125f;       // m * 2^-9
  return sign ? -v : v;
}

}  // namespace moe::cpu
