// NVFP4 kernels: calibration (amax, global scale), quantize/dequantize, scale swizzling and
// the block-scaled GEMM. Host launchers only; device code lives in the .cu/.cuh files here.
// The format and each op's arguments are in common/nvfp4.h.
//
// Common contract of every launcher:
//   - The arguments passed validate(args) (common/nvfp4.h) before the launcher runs: dtypes,
//     shapes (K % 16 == 0), pointers and their alignment are not checked again here.
//   - Launchers do not synchronize, enqueue on l.stream and return cudaGetLastError(). The
//     only memory they take is the stream's workspace arena (l.workspace), asked once.
//   - Results are bit-identical to the CPU reference (native/cpu/nvfp4) for amax, the global
//     scale, quantize, dequantize and the swizzles. The GEMM matches it within fp32
//     accumulation-order error.
#pragma once
#include "common/nvfp4.h"
#include "kernels/common/launch.h"

namespace moe::kernels::nvfp4 {

// NaN propagates: any NaN element makes the result the canonical NaN 0x7FC00000 (like
// torch.amax). +-inf gives +inf. The result is exact (no rounding), so it is order-independent.
cudaError_t amax(const AmaxArgs& args, const Launch& l);

// One IEEE division by 2688. When the quotient is 0 (amax == 0, or so small the division
// underflows) the scale is 1.0, so quantizing an all-zero tensor gives zero data with finite
// scales and no 0/0 downstream. NaN and inf pass through unchanged.
cudaError_t globalScaleFromAmax(const GlobalScaleArgs& args, const Launch& l);

// With gs = *globalScale (positive and finite):
//   blockAmax = max |x| over the 16 elements (NaN elements ignored)
//   s   = blockAmax / (6 * gs)            fp32: one multiply, one IEEE division
//   s   = (s == 0) ? 1 : s; s = min(max(s, 2^-9), 448)    (NaN s becomes 2^-9)
//   scale byte = e4m3(s), round to nearest even
//   q   = x / (e4m3ToF32(scale) * gs)     fp32: one multiply, one IEEE division
//   code = E2M1 of |q| rounded to nearest even, saturating at 6; sign bit = sign bit of x
//          (so -0 and small negatives encode as 0x8, as Blackwell's cvt...e2m1x2 does);
//          NaN elements encode as (sign of x) zero.
cudaError_t quantize(const QuantizeArgs& args, const Launch& l);

// out = e2m1(code) * e4m3(scale) * gs, computed as (e2m1 * scale) * gs in fp32 (the first
// product is exact, so the value is correctly rounded once), then converted with round to
// nearest even to outType (f16 overflows to inf). NaN results (only from NaN scale bytes
// 0x7F/0xFF or a NaN gs) are written as the canonical NaN (0x7FFFFFFF / 0x7FFF).
cudaError_t dequantize(const DequantizeArgs& args, const Launch& l);

// Byte offset of (row m, block k) in the swizzled layout is
//   ((m/128)*numKTiles + k/4)*512 + (m%32)*16 + ((m/32)%4)*4 + (k%4), numKTiles = ceil(K/64).
cudaError_t swizzleScales(const SwizzleScalesArgs& args, const Launch& l);
cudaError_t unswizzleScales(const UnswizzleScalesArgs& args, const Launch& l);

// Both operands are dequantized to BF16 in registers (e2m1 x e4m3 is exact in BF16) and
// multiplied on tensor cores: for M > 64 by the sm_90a wgmma kernel where sm90GemmSupported
// allows (unless args.portable; W4A4 expands its activations to bf16 first), for 16 < M <= 64
// (W4A16) on Hopper by the wide streaming kernel (unless args.portable), else by the mma.sync
// kernels compiled for every target. The configuration is chosen once per launch from l.facts;
// when it splits K, the fp32 partial sums live in l.workspace.
cudaError_t gemm(const GemmArgs& args, const Launch& l);

// The expert GEMM (common/nvfp4.h) with the mainloops of `gemm`: the streaming kernel, a tiled
// mma.sync one with the expert in the grid, or at prefill sizes on Hopper the wgmma kernel,
// persistent over every expert's tiles (heuristics.h, selectGroupedConfig; sm90_gemm.h). The
// grid depends only on the arguments, never on counts/offsets, so it can be captured in a
// graph; experts without rows cost no weight reads. No split K, no workspace.
cudaError_t groupedGemm(const GroupedGemmArgs& args, const Launch& l);

}  // namespace moe::kernels::nvfp4
