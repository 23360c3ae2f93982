// CPU reference for the NVFP4 family: the oracle the CUDA kernels are tested against, and the
// backend where no GPU is present. Same launchers as native/kernels/nvfp4/nvfp4.h minus the
// stream; pointers are host pointers and "device" scalars (global scales, amax) are host floats.
// Inputs are validated by the caller. See the CUDA header for the full format contract; the
// results of amax, globalScaleFromAmax, quantize, dequantize and the swizzles are bit-identical
// to the GPU's, so the per-function notes here only restate the math.
//
// Must be built without -ffast-math (IEEE division and no reassociation are part of the
// contract).
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/dtype.h"

namespace moe::cpu::nvfp4 {

// *amaxOut = max |x| over numel elements of F32/F16/BF16; NaN anywhere -> 0x7FC00000; 0 if empty.
void amax(const void* x, DType xType, int64_t numel, float* amaxOut);

// *globalScale = *amax / 2688 in fp32; a zero quotient becomes 1.0; NaN/inf pass through.
void globalScaleFromAmax(const float* amax, float* globalScale);

// x [rows, K] (F32/F16/BF16, K % 16 == 0) -> data u8 [rows, K/2], scales e4m3 [rows, K/16].
// Per 16-block: s = amax/(6*gs) (0 -> 1, clamped to [2^-9, 448], NaN -> 2^-9), e4m3 RNE;
// q = x / (e4m3(s) * gs); E2M1 RNE saturating at 6; sign = sign bit of x; NaN -> signed zero.
void quantize(const void* x, DType xType, int64_t rows, int64_t K, const float* globalScale,
              uint8_t* data, uint8_t* scales);

// out [rows, K] = (e2m1 * scale) * gs in fp32, RNE to outType (F32/F16/BF16); NaN -> canonical.
void dequantize(const uint8_t* data, const uint8_t* scales, const float* globalScale, int64_t rows,
                int64_t K, void* out, DType outType);

// roundUp(rows, 128) * roundUp(K/16, 4).
int64_t swizzledScaleBytes(int64_t rows, int64_t K);

// Linear [rows, K/16] <-> Blackwell 128x4 swizzled layout (padding written as 0).
void swizzleScales(const uint8_t* scales, int64_t rows, int64_t K, uint8_t* swizzled);
void unswizzleScales(const uint8_t* swizzled, int64_t rows, int64_t K, uint8_t* scales);

// Always 0: the reference needs no scratch. Present so callers can treat backends alike.
size_t gemmWorkspaceBytes(int64_t M, int64_t N, int64_t K, DType aType, bool forcePortable);

// out[M, N] = alpha * gsA * gsW * (A . W^T) (+ bias[N]); A is BF16 [M, K] (gsA = 1) or NVFP4
// (aType U8: a = data [M, K/2], aScales [M, K/16], *aGlobalScale). bias F32/BF16 or nullptr;
// out BF16 or F32. The dot products of the exactly dequantized operands are accumulated in
// double, scaled in double, rounded once to fp32 and then (for BF16 out) to bf16 with RNE.
// Output columns (N) are spread over std::thread workers. forcePortable/workspace are ignored.
void gemm(const void* a, DType aType, const uint8_t* aScales, const float* aGlobalScale,
          const uint8_t* wData, const uint8_t* wScales, const float* wGlobalScale, const void* bias,
          DType biasType, void* out, DType outType, int64_t M, int64_t N, int64_t K, float alpha,
          bool forcePortable, void* workspace, size_t workspaceBytes);

}  // namespace moe::cpu::nvfp4
