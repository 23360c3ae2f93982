// The router GEMM, logits f32 [T, E] = x bf16 [T, H] . w bf16 [E, H]^T.
//
// Decode (T <= kDecodeMaxTokens): what costs is reading w (256 x 7168 bf16 = 3.7 MB), so each
// CTA takes two expert rows, four warps per row splitting H, and issues all of a thread's
// weight loads before using them; x (a few tokens) comes through L1. Eight tokens per pass
// keep the accumulators in registers; more tokens re-read w from L2.
// Larger T: a bf16 mma.sync kernel, fragments loaded straight from global memory (both operands
// are K-contiguous, so each fragment register is one aligned 32-bit load).
#include <cuda_bf16.h>

#include <cstdint>

#include "common/align.h"
#include "kernels/moe/moe.h"

namespace moe::kernels::moe_family {
namespace {

constexpr int64_t kDecodeMaxTokens = 128;
constexpr int kRowsPerCta = 2;
constexpr int kWarpsPerRow = 4;
constexpr int kThreadsPerRow = kWarpsPerRow * 32;
constexpr int kDecodeThreads = kRowsPerCta * kThreadsPerRow;
constexpr int kTokensPerPass = 8;
constexpr int kBatch = 8;  // 16-byte weight loads a thread keeps in flight

__device__ __forceinline__ float lo(uint32_t v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float hi(uint32_t v) { return __uint_as_float(v & 0xFFFF0000u); }

__device__ __forceinline__ float dot8(uint4 a, uint4 b, float acc) {
  acc = fmaf(lo(a.x), lo(b.x), acc);
  acc = fmaf(hi(a.x), hi(b.x), acc);
  acc = fmaf(lo(a.y), lo(b.y), acc);
  acc = fmaf(hi(a.y), hi(b.y), acc);
  acc = fmaf(lo(a.z), lo(b.z), acc);
  acc = fmaf(hi(a.z), hi(b.z), acc);
  acc = fmaf(lo(a.w), lo(b.w), acc);
  acc = fmaf(hi(a.w), hi(b.w), acc);
  return acc;
}

template <bool kVec>
__device__ __forceinline__ void decodePass(const RouterLogitsArgs& a, int64_t e, int64_t t0, int nt, int tid, int warp, int lane,
                                           int rowInCta, float (*partial)[kWarpsPerRow][kTokensPerPass]) {
  const int64_t H = a.hidden;
  float acc[kTokensPerPass];
#pragma unroll
  for (int t = 0; t < kTokensPerPass; ++t) acc[t] = 0.0f;

  if (e < a.experts) {
    if constexpr (kVec) {
      const uint4* w = reinterpret_cast<const uint4*>(a.weight + e * H);
      const uint4* x = reinterpret_cast<const uint4*>(a.x + t0 * H);
      const int64_t nv = H / 8;
      for (int64_t base = tid; base < nv; base += static_cast<int64_t>(kBatch) * kThreadsPerRow) {
        uint4 wv[kBatch];
#pragma unroll
        for (int j = 0; j < kBatch; ++j) {
          const int64_t v = base + static_cast<int64_t>(j) * kThreadsPerRow;
          wv[j] = v < nv ? __ldg(w + v) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int t = 0; t < kTokensPerPass; ++t) {
          if (t < nt) {
#pragma unroll
            for (int j = 0; j < kBatch; ++j) {
              const int64_t v = base + static_cast<int64_t>(j) * kThreadsPerRow;
              if (v < nv) acc[t] = dot8(__ldg(x + t * nv + v), wv[j], acc[t]);
            }
          }
        }
      }
    } else {
      const uint16_t* w = a.weight + e * H;
      const uint16_t* x = a.x + t0 * H;
      for (int64_t h = tid; h < H; h += kThreadsPerRow) {
        const float wf = __uint_as_float(static_cast<uint32_t>(w[h]) << 16);
#pragma unroll
        for (int t = 0; t < kTokensPerPass; ++t) {
          if (t < nt) acc[t] = fmaf(__uint_as_float(static_cast<uint32_t>(x[t * H + h]) << 16), wf, acc[t]);
        }
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kTokensPerPass; ++t) {
#pragma unroll
    for (int m = 16; m >= 1; m /= 2) acc[t] += __shfl_xor_sync(0xFFFFFFFFu, acc[t], m);
  }
  if (lane == 0) {
#pragma unroll
    for (int t = 0; t < kTokensPerPass; ++t) partial[rowInCta][warp][t] = acc[t];
  }
  __syncthreads();
  if (e < a.experts && tid < nt) {
    float s = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarpsPerRow; ++w) s += partial[rowInCta][w][tid];
    a.out[(t0 + tid) * a.experts + e] = s;
  }
}

template <bool kVec>
__global__ void __launch_bounds__(kDecodeThreads) decodeKernel(RouterLogitsArgs a) {
  __shared__ float partial[kRowsPerCta][kWarpsPerRow][kTokensPerPass];
  const int rowInCta = threadIdx.x / kThreadsPerRow;
  const int tid = threadIdx.x % kThreadsPerRow;
  const int warp = tid / 32, lane = tid % 32;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kRowsPerCta + rowInCta;
  // grid.y is capped: a CTA may take several passes
  for (int64_t t0 = static_cast<int64_t>(blockIdx.y) * kTokensPerPass; t0 < a.tokens;
       t0 += static_cast<int64_t>(gridDim.y) * kTokensPerPass) {
    const int nt = static_cast<int>(min(static_cast<int64_t>(kTokensPerPass), a.tokens - t0));
    decodePass<kVec>(a, e, t0, nt, tid, warp, lane, rowInCta, partial);
    __syncthreads();
  }
}

// ---- tensor cores ------------------------------------------------------------------------

constexpr int kMmaWarps = 4;     // stacked along tokens
constexpr int kTileM = 16 * kMmaWarps;
constexpr int kTileN = 32;       // four n8 tiles per warp

__device__ __forceinline__ uint32_t load2(const uint16_t* base, int64_t row, int64_t rows, int64_t H, int64_t k) {
  return row < rows ? __ldg(reinterpret_cast<const uint32_t*>(base + row * H + k)) : 0u;
}

__global__ void __launch_bounds__(kMmaWarps * 32) mmaKernel(RouterLogitsArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, q = lane % 4;
  const int64_t H = a.hidden;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileM + warp * 16;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTileN;
  float c[4][4];
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) c[j][i] = 0.0f;
#pragma unroll 2
  for (int64_t k = 0; k < H; k += 16) {
    const int64_t kq = k + 2 * q;
    const uint32_t a0 = load2(a.x, m0 + g, a.tokens, H, kq);
    const uint32_t a1 = load2(a.x, m0 + g + 8, a.tokens, H, kq);
    const uint32_t a2 = load2(a.x, m0 + g, a.tokens, H, kq + 8);
    const uint32_t a3 = load2(a.x, m0 + g + 8, a.tokens, H, kq + 8);
    uint32_t b[4][2];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      b[j][0] = load2(a.weight, n0 + j * 8 + g, a.experts, H, kq);
      b[j][1] = load2(a.weight, n0 + j * 8 + g, a.experts, H, kq + 8);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
          : "+f"(c[j][0]), "+f"(c[j][1]), "+f"(c[j][2]), "+f"(c[j][3])
          : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b[j][0]), "r"(b[j][1]));
    }
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int64_t n = n0 + j * 8 + 2 * q;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t m = m0 + g + half * 8;
      if (m >= a.tokens) continue;
      if (n < a.experts) a.out[m * a.experts + n] = c[j][2 * half];
      if (n + 1 < a.experts) a.out[m * a.experts + n + 1] = c[j][2 * half + 1];
    }
  }
#endif
}

}  // namespace

cudaError_t routerLogits(const RouterLogitsArgs& a, const Launch& l) {
  if (a.tokens == 0) return cudaSuccess;
  if (a.tokens > kDecodeMaxTokens && a.hidden % 16 == 0 && isAligned(a.x, 4) && isAligned(a.weight, 4) && l.facts.major >= 8) {
    const dim3 grid(static_cast<unsigned>((a.tokens + kTileM - 1) / kTileM), static_cast<unsigned>((a.experts + kTileN - 1) / kTileN));
    mmaKernel<<<grid, kMmaWarps * 32, 0, l.stream>>>(a);
    return cudaGetLastError();
  }
  const dim3 grid(static_cast<unsigned>((a.experts + kRowsPerCta - 1) / kRowsPerCta),
                  static_cast<unsigned>(min((a.tokens + kTokensPerPass - 1) / kTokensPerPass, int64_t{65535})));
  if (a.hidden % 8 == 0 && isAligned(a.x, 16) && isAligned(a.weight, 16)) {
    decodeKernel<true><<<grid, kDecodeThreads, 0, l.stream>>>(a);
  } else {
    decodeKernel<false><<<grid, kDecodeThreads, 0, l.stream>>>(a);
  }
  return cudaGetLastError();
}

}  // namespace moe::kernels::moe_family
