// NVFP4 kernels: calibration (amax, global scale), quantize/dequantize, scale swizzling and
// the block-scaled GEMM. Host launchers only; device code lives in the .cu/.cuh files here.
//
// Format (NVIDIA ModelOpt convention):
//   data    u8    [rows, K/2]   E2M1 codes, element 2i in the low nibble of byte i
//   scales  e4m3  [rows, K/16]  one positive scale per 16 consecutive elements (linear layout)
//   global  f32   (device)      weight_scale_2 = amax / (6 * 448)
//   value(r, k) = e2m1(data) * e4m3(scales[r, k/16]) * global
//
// Common contract of every launcher:
//   - Pointers are device pointers. Alignment: quantize needs x 16-byte and data 8-byte aligned,
//     dequantize data 8 and out 16, gemm bf16 A 16 and packed A/W 8 (16 for full speed); a
//     violation returns cudaErrorMisalignedAddress without launching. Any pointer the package's
//     allocator returns qualifies. Scale pointers and amax's x may have any alignment.
//   - Arguments are validated by the caller (shapes, dtypes, K % 16 == 0); the launchers do not
//     synchronize, do not allocate, enqueue on `stream` and return cudaGetLastError() (or
//     cudaErrorInvalidValue for a dtype they do not support).
//   - Results are bit-identical to the CPU reference (native/cpu/nvfp4) for amax, the global
//     scale, quantize, dequantize and the swizzles. The GEMM matches it within fp32
//     accumulation-order error.
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "common/dtype.h"

namespace moe::kernels::nvfp4 {

// *amaxOut = max |x| over `numel` elements of an F32, F16 or BF16 tensor (0 when numel == 0).
// NaN propagates: any NaN element makes the result the canonical NaN 0x7FC00000 (like
// torch.amax). +-inf gives +inf. The result is exact (no rounding), so it is order-independent.
cudaError_t amax(const void* x, DType xType, int64_t numel, float* amaxOut, cudaStream_t stream);

// *globalScale = *amax / (6 * 448) in fp32 (one IEEE division by 2688).
// When that quotient is 0 (amax == 0, or so small the division underflows) the scale is 1.0, so
// quantizing an all-zero tensor gives zero data with finite scales and no 0/0 downstream.
// NaN and inf pass through unchanged.
cudaError_t globalScaleFromAmax(const float* amax, float* globalScale, cudaStream_t stream);

// Quantizes x [rows, K] (F32, F16 or BF16; K % 16 == 0) with the device global scale gs:
//   blockAmax = max |x| over the 16 elements (NaN elements ignored)
//   s   = blockAmax / (6 * gs)            fp32: one multiply, one IEEE division
//   s   = (s == 0) ? 1 : s; s = min(max(s, 2^-9), 448)    (NaN s becomes 2^-9)
//   scale byte = e4m3(s), round to nearest even
//   q   = x / (e4m3ToF32(scale) * gs)     fp32: one multiply, one IEEE division
//   code = E2M1 of |q| rounded to nearest even, saturating at 6; sign bit = sign bit of x
//          (so -0 and small negatives encode as 0x8, as Blackwell's cvt...e2m1x2 does);
//          NaN elements encode as (sign of x) zero.
// data u8 [rows, K/2], scales e4m3 [rows, K/16] linear. gs must be positive and finite.
cudaError_t quantize(const void* x, DType xType, int64_t rows, int64_t K, const float* globalScale,
                     uint8_t* data, uint8_t* scales, cudaStream_t stream);

// out [rows, K] = e2m1(code) * e4m3(scale) * gs, computed as (e2m1 * scale) * gs in fp32 (the
// first product is exact, so the value is correctly rounded once), then converted with round to
// nearest even to outType (F32, F16 or BF16; f16 overflows to inf). NaN results (only from NaN
// scale bytes 0x7F/0xFF or a NaN gs) are written as the canonical NaN (0x7FFFFFFF / 0x7FFF).
cudaError_t dequantize(const uint8_t* data, const uint8_t* scales, const float* globalScale,
                       int64_t rows, int64_t K, void* out, DType outType, cudaStream_t stream);

// Bytes of the Blackwell 128x4 swizzled scale layout for a [rows, K/16] scale tensor:
// roundUp(rows, 128) * roundUp(K/16, 4).
int64_t swizzledScaleBytes(int64_t rows, int64_t K);

// Linear [rows, K/16] -> swizzled. Byte offset of (row m, block k) is
//   ((m/128)*numKTiles + k/4)*512 + (m%32)*16 + ((m/32)%4)*4 + (k%4), numKTiles = ceil(K/64).
// Every byte of `swizzled` (swizzledScaleBytes) is written; padding bytes are 0.
cudaError_t swizzleScales(const uint8_t* scales, int64_t rows, int64_t K, uint8_t* swizzled,
                          cudaStream_t stream);

// Swizzled -> linear [rows, K/16] (padding is dropped).
cudaError_t unswizzleScales(const uint8_t* swizzled, int64_t rows, int64_t K, uint8_t* scales,
                            cudaStream_t stream);

// Scratch bytes `gemm` needs for these arguments on the current device (split-K partial sums;
// 0 when the chosen configuration does not split). Query it on the device that will run gemm.
size_t gemmWorkspaceBytes(int64_t M, int64_t N, int64_t K, DType aType, bool forcePortable);

// out[M, N] = alpha * gsA * gsW * (A . W^T) (+ bias[N]), fp32 accumulation.
//   W: NVFP4 [N, K]: wData u8 [N, K/2], wScales e4m3 [N, K/16] linear, wGlobalScale f32 device.
//   A: aType == BF16: bf16 [M, K] row-major (W4A16); aScales/aGlobalScale ignored, gsA = 1.
//      aType == U8:   NVFP4 [M, K]: a = data u8 [M, K/2], aScales e4m3 [M, K/16] linear,
//                     aGlobalScale f32 device (W4A4).
//   bias: nullptr or [N] of biasType F32 or BF16, added after the scaling.
//   out:  [M, N] of outType BF16 (round to nearest even) or F32.
//   M >= 0, N >= 0, K >= 0 with K % 16 == 0; any tails are handled.
// Both operands are dequantized to BF16 in registers (e2m1 x e4m3 is exact in BF16) and
// multiplied on tensor cores: for M > 64 (W4A16) by the sm_90a wgmma kernel where
// sm90GemmSupported allows, else by the mma.sync kernels compiled for every target.
// `forcePortable` keeps to the latter on Hopper too. `workspace` must hold gemmWorkspaceBytes(...) bytes; with
// less, the launcher uses fewer split-K slices (down to none) rather than fail.
cudaError_t gemm(const void* a, DType aType, const uint8_t* aScales, const float* aGlobalScale,
                 const uint8_t* wData, const uint8_t* wScales, const float* wGlobalScale,
                 const void* bias, DType biasType, void* out, DType outType, int64_t M, int64_t N,
                 int64_t K, float alpha, bool forcePortable, void* workspace, size_t workspaceBytes,
                 cudaStream_t stream);

}  // namespace moe::kernels::nvfp4
