// Hopper (sm_90a) warp-specialized wgmma GEMM for NVFP4 weights x BF16 activations (W4A16), the
// prefill-regime companion of `gemm` in nvfp4.h. Host launchers only; the kernel is in
// sm90_gemm.cuh.
#pragma once
#include "common/nvfp4.h"
#include "kernels/common/launch.h"

namespace moe::kernels::nvfp4 {

// True when sm90Gemm can run these (validated) arguments on the device of `facts`:
//   - the device is compute capability 9.0 (facts.hopper), this build carries the sm_90a
//     kernel and the device grants its shared memory;
//   - aType == BF16 (W4A16), or U8 (W4A4: NVFP4 activations, 8-byte aligned codes);
//   - K % 32 == 0 and K >= 32 (TMA needs 16-byte row strides for the packed weights; other K go
//     to the portable kernel);
//   - bf16 `a` and `wData` are 16-byte aligned (TMA base addresses).
// Scales, bias and out may have any alignment (out is written with 16-byte stores when its rows
// allow it, element stores otherwise). Whether it is also the faster choice for a shape is the
// caller's decision (heuristics.h, preferSm90).
bool sm90GemmSupported(const GemmArgs& args, const DeviceFacts& facts);

// Same contract as nvfp4::gemm for arguments sm90GemmSupported accepts (the caller checks):
//   out[M, N] = alpha * gsA * gsW * (A . W^T) (+ bias[N]), fp32 accumulation, both operands
//   dequantized exactly (gsA = 1 for W4A16).
// W4A4 first expands the activations' codes times their block scales to bf16 (exact) in
// l.workspace, M * K * 2 bytes, and the kernel reads those; split K's fp32 partials follow them
// there. Does not synchronize, enqueues on l.stream.
// Scale bytes 0x7F/0xFF (E4M3 NaN) make the affected outputs NaN, as in the portable kernel.
cudaError_t sm90Gemm(const GemmArgs& args, const Launch& l);

// True when sm90GroupedGemm can run these (validated) grouped arguments on the device of
// `facts`: compute capability 9.0 with this build's sm_90a kernel; bf16 x, not gathered (TMA
// boxes read contiguous rows); bf16 out; K % 32 == 0; 16-byte aligned x and wData; at most
// kSm90GroupedMaxExperts experts and E * N < 2^31 (32-bit TMA coordinates). Whether it is the
// faster choice is heuristics.h's (selectGroupedConfig).
bool sm90GroupedSupported(const GroupedGemmArgs& args, const DeviceFacts& facts);

// nvfp4::groupedGemm on the wgmma kernel with tileM-token tiles (128, 192 or 256), one
// persistent CTA per SM walking every expert's tiles, for arguments sm90GroupedSupported accepts
// and rows, N > 0. Needs no workspace. Enqueues on l.stream.
cudaError_t sm90GroupedGemm(const GroupedGemmArgs& args, int tileM, const Launch& l);

}  // namespace moe::kernels::nvfp4
