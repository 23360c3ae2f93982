// CPU reference for the NVFP4 family: the oracle the CUDA kernels are tested against, and the
// backend where no GPU is present. Same ops as native/kernels/nvfp4/nvfp4.h on host pointers,
// with the arguments of common/nvfp4.h, already validated. The results of amax,
// globalScaleFromAmax, quantize, dequantize and the swizzles are bit-identical to the GPU's;
// the CUDA header states the math.
//
// Must be built without -ffast-math (IEEE division and no reassociation are part of the
// contract).
#pragma once
#include "common/nvfp4.h"

namespace moe::cpu::nvfp4 {

void amax(const AmaxArgs& args);
void globalScaleFromAmax(const GlobalScaleArgs& args);
void quantize(const QuantizeArgs& args);
void dequantize(const DequantizeArgs& args);
void swizzleScales(const SwizzleScalesArgs& args);
void unswizzleScales(const UnswizzleScalesArgs& args);

// The dot products of the exactly dequantized operands are accumulated in double, scaled in
// double, rounded once to fp32 and then (for BF16 out) to bf16 with RNE. Output columns (N)
// are spread over std::thread workers. args.portable does not apply here.
void gemm(const GemmArgs& args);

// Expert by expert, the dense reference above on the expert's rows (counts and offsets read
// from host memory); with Swiglu, gate and up are rounded to f32 like gemm's f32 output and
// silu(g) * u = g / (1 + exp(-g)) * u is computed in f32, then rounded once to bf16; an NVFP4
// output is `quantize` of those bf16 rows. NVFP4 x goes through gemm's W4A4 path.
void groupedGemm(const GroupedGemmArgs& args);

}  // namespace moe::cpu::nvfp4
