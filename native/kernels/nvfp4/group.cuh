// The expert grid of the grouped GEMM, shared by its kernels (gemm.cuh, gemv.cuh, sm90_gemm.cuh):
// where an expert's rows and weights are, and the swiglu the epilogues apply.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace moe::kernels::nvfp4::detail {

// The expert grid of the grouped GEMM (GroupedGemmArgs): an expert's rows of x and out start at
// offsets[e], its weights at e * wStride / e * sStride bytes.
struct GroupParams {
  const int32_t* counts;   // [E], device
  const int32_t* offsets;  // [E + 1], device
  int64_t wStride;         // bytes of one expert's packed weights (N * K/2)
  int64_t sStride;         // bytes of one expert's scales (N * K/16)
  int rows;                // rows of x and out: no expert reads or writes past them
  int maxRows;             // masked form: rows per expert; 0 in the contiguous form
  int swigluI;             // I = N/2 when the epilogue is swiglu, else 0
  uint8_t* outScales;      // NVFP4 output: e4m3 [rows, I/16]; out holds the codes [rows, I/2]
  const float* outGlobalScale;  // NVFP4 output: its global scale, device
  const int32_t* xRows;    // gather: [rows] the pair of each row (x holds one row per token); else null
  int gatherK;             // gather: pairs per token
  int xTokens;             // gather: rows of x
};

// Expert e's first row and row count, clamped to its block; false when it has no rows (the CTA
// then leaves before reading any weight).
__device__ __forceinline__ bool groupSlot(const GroupParams& g, int e, int64_t& start, int& count) {
  const int c = __ldg(g.counts + e);
  const int s = __ldg(g.offsets + e);
  if (c <= 0 || s < 0 || s >= g.rows) return false;
  count = min(c, g.rows - s);
  if (g.maxRows > 0) count = min(count, g.maxRows);
  start = s;
  return true;
}

// silu(gate) * up in f32, as the CPU reference computes it.
__device__ __forceinline__ float swiglu(float gate, float up) { return gate / (1.0f + expf(-gate)) * up; }

}  // namespace moe::kernels::nvfp4::detail
