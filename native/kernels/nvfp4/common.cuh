// Device helpers shared by the NVFP4 kernels: exact scalar encode/decode, cp.async, mma.sync.
// Everything here compiles for sm_80 and sm_90a. No fast-math: the quantizer relies on IEEE
// division and on the absence of FMA contraction to match the CPU reference bit for bit.
#pragma once
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

namespace moe::kernels::nvfp4::detail {

// ---- scalar format helpers (same arithmetic as native/cpu/nvfp4/nvfp4.cpp) ----

// E4M3 byte -> f32, exact. Matches moe::cpu::e4m3BitsToF32 bit for bit, including the sign and
// NaN (0x7F/0xFF -> canonical 0x7FFFFFFF, what the hardware conversions return).
__device__ __forceinline__ float e4m3ToFloat(uint32_t b) {
  if ((b & 0x7Fu) == 0x7Fu) return __uint_as_float(0x7FFFFFFFu);
  // (e,m) placed in an f32's low exponent bits is value * 2^-120, subnormals included.
  float v = __fmul_rn(__uint_as_float((b & 0x7Fu) << 20), 0x1p120f);
  return (b & 0x80u) ? -v : v;
}

// Positive finite f32 in [2^-9, 448] -> E4M3 byte, round to nearest even.
__device__ __forceinline__ uint32_t floatToE4m3(float s) {
  return static_cast<uint32_t>(__nv_cvt_float_to_fp8(s, __NV_SATFINITE, __NV_E4M3));
}

// Magnitude code 0..7 of |q| rounded to nearest even on the E2M1 grid {0,.5,1,1.5,2,3,4,6},
// saturating at 6. Ties go to the even code: 0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2,
// 3.5->4, 5->4. NaN gives 0 (every compare is false).
__device__ __forceinline__ uint32_t e2m1Magnitude(float a) {
  return static_cast<uint32_t>(a > 0.25f) + static_cast<uint32_t>(a >= 0.75f) +
         static_cast<uint32_t>(a > 1.25f) + static_cast<uint32_t>(a >= 1.75f) +
         static_cast<uint32_t>(a > 2.5f) + static_cast<uint32_t>(a >= 3.5f) +
         static_cast<uint32_t>(a > 5.0f);
}

__device__ __forceinline__ float e2m1ToFloat(uint32_t code) {
  // 2 * value: 0,1,2,3,4,6,8,12 - exact small integers, halved exactly.
  constexpr uint32_t kTwice = 0u | (1u << 4) | (2u << 8) | (3u << 12) | (4u << 16) | (6u << 20) |
                              (8u << 24) | (12u << 28);
  float v = static_cast<float>((kTwice >> ((code & 7u) * 4u)) & 0xFu) * 0.5f;
  return (code & 8u) ? -v : v;
}

// ---- async copies (global -> shared); src_bytes < size zero-fills the rest ----

__device__ __forceinline__ uint32_t smemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cpAsync16(void* dst, const void* src, int srcBytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smemAddr(dst)), "l"(src),
               "r"(srcBytes));
}

__device__ __forceinline__ void cpAsync8(void* dst, const void* src, int srcBytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(smemAddr(dst)), "l"(src),
               "r"(srcBytes));
}

__device__ __forceinline__ void cpAsync4(void* dst, const void* src, int srcBytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smemAddr(dst)), "l"(src),
               "r"(srcBytes));
}

__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// ---- register-level NVFP4 -> BF16 ----

// Scale multiplier for dequantized pairs: bf16x2 of e4m3(b) * 2^118. With the raw pairs below
// (value * 2^-126) the product is value * scale * 2^-8: exact in BF16 for every code/scale
// (at most 6 significant bits, smallest magnitude 2^-18), and the 2^8 is undone in the epilogue.
__device__ __forceinline__ uint32_t scaleToBf16x2(uint32_t b) {
  float v = __fmul_rn(__fmul_rn(__uint_as_float((b & 0x7Fu) << 20), 0x1p119f), 0x1p119f);
  if ((b & 0x7Fu) == 0x7Fu) v = __uint_as_float(0x7FC00000u);
  if (b & 0x80u) v = -v;
  __nv_bfloat162 h = __float2bfloat162_rn(v);
  return *reinterpret_cast<uint32_t*>(&h);
}

// The two scale bytes of a 16-bit word at once, as scaleToBf16x2 gives each of them (out[0] for
// the low byte), in fewer instructions than two calls of it: the E4M3 bits placed in a bf16's low
// exponent and mantissa bits are the value times 2^-120, subnormals included, and two exact
// multiplications by 2^119 make it times 2^118. A magnitude of 0x7F (NaN) becomes a bf16 NaN.
__device__ __forceinline__ void scalePairToBf16x2(uint32_t s, uint32_t out[2]) {
  const uint32_t x = __byte_perm(s, 0, 0x4140);  // [s0, 0, s1, 0]
  const uint32_t mag = x & 0x007F007Fu;
  uint32_t r = (mag << 4) | ((x & 0x00800080u) << 8);  // bf16x2 of value * 2^-120
  const __nv_bfloat162 k = __floats2bfloat162_rn(0x1p119f, 0x1p119f);
  __nv_bfloat162 v = __hmul2(__hmul2(*reinterpret_cast<__nv_bfloat162*>(&r), k), k);
  r = *reinterpret_cast<uint32_t*>(&v);
  // 0x7F + 1 sets bit 7 of its half; times 0xFF that is an all-ones bf16 exponent, and the
  // mantissa is already non-zero: NaN.
  r |= ((mag + 0x00010001u) & 0x00800080u) * 0xFFu;
  out[0] = __byte_perm(r, 0, 0x1010);
  out[1] = __byte_perm(r, 0, 0x3232);
}

// A 32-bit word holds 8 E2M1 codes n0..n7 (n0 in bits 0..3). out[j] is the bf16x2 pair
// (n_j low, n_{j+4} high), each value * 2^-126 and then times `scale2` (see scaleToBf16x2).
// The sign and the three magnitude bits of a nibble at the top of a 16-bit half are moved into
// a bf16's sign, two low exponent bits and first mantissa bit; E2M1 subnormals (0.5) become
// bf16 subnormals, which the bf16 FMA handles exactly.
__device__ __forceinline__ void dequantWord(uint32_t q, uint32_t scale2, uint32_t out[4]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    uint32_t x = q << (4 * (3 - j));
    uint32_t r = (x & 0x80008000u) | ((x & 0x70007000u) >> 6);
    __nv_bfloat162 v = __hmul2(*reinterpret_cast<__nv_bfloat162*>(&r),
                               *reinterpret_cast<__nv_bfloat162*>(&scale2));
    out[j] = *reinterpret_cast<uint32_t*>(&v);
  }
}

// Eight consecutive bf16 x0..x7 in r[0..3] -> pairs (x_j, x_{j+4}), the same k pairing as
// dequantWord produces for the other operand.
__device__ __forceinline__ void pairBf16(const uint32_t r[4], uint32_t out[4]) {
  out[0] = __byte_perm(r[0], r[2], 0x5410);
  out[1] = __byte_perm(r[0], r[2], 0x7632);
  out[2] = __byte_perm(r[1], r[3], 0x5410);
  out[3] = __byte_perm(r[1], r[3], 0x7632);
}

// D += A(16x16, row) * B(16x8, col), bf16 inputs, fp32 accumulators.
__device__ __forceinline__ void mmaBf16(float c[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                        uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

}  // namespace moe::kernels::nvfp4::detail
