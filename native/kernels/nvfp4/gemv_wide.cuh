// NVFP4 GEMM for 16 < M <= 64 on Hopper (W4A16): out[M,N] = alpha*gsW * A[M,K] . W[N,K]^T.
//
// Still bound by the weight stream and the FP4 decode, as the streaming kernel (gemv.cuh) is,
// but each weight now meets up to 64 tokens, so the activations and the MMAs weigh as much as
// the weights. Three choices follow from that:
// - A CTA's 8 warps share one 128-row block and read the same activation chunk from shared
//   memory (staged with cp.async, three batches ahead), so the activations cross L2 once per
//   128 weight rows instead of once per 16.
// - Each thread decodes a weight word into bf16 pairs of consecutive k (dequantWordConsecutive),
//   so an activation fragment is four raw bf16x2 words from one 16-byte shared load: no
//   per-token shuffling in the inner loop.
// - K is split over the CTAs of a thread-block cluster (grid.x = splits) when the row blocks
//   alone cannot occupy the SMs; the partial sums meet in distributed shared memory and are
//   added in rank order, so the result is deterministic and the op is one launch with no
//   workspace.
//
// Fragment mapping (swap AB, as in gemv.cuh): mma.sync m16n8k16 with 16 weight rows as its M
// and 8 tokens as its N. Thread (g, t) owns k [32t, 32t+32) of every 128-k step, for rows g and
// g+8 of its warp's 16 and for token g of every 8-token tile; the MMA sums over k, so the
// per-thread k order is invisible in the result.
#pragma once
#include <cooperative_groups.h>

#include <cstdint>
#include <type_traits>

#include "kernels/nvfp4/common.cuh"
#include "kernels/nvfp4/gemv.cuh"

namespace moe::kernels::nvfp4::detail {

inline constexpr int kWideRows = 128;  // 8 warps x 16 rows
inline constexpr int kWideStages = 3;

template <int NT>
constexpr int gemvWideSmemBytes() {
  // the stages; the cluster reduction reuses them for the partial sums
  return kWideStages * NT * 8 * kGemvBatch * 2;
}

// Chunk c (16 bytes, 8 k) of token row m is stored at chunk c ^ ((c >> 3) & 1) ^ ((m & 1) << 1):
// the 8 threads of a shared-load phase (two tokens, four k ranges 64 bytes apart) then hit 8
// different bank groups, and a cp.async phase (8 consecutive chunks) still does.
__device__ __forceinline__ int wideChunk(int m, int c) { return c ^ ((c >> 3) & 1) ^ ((m & 1) << 1); }

// A 32-bit word of 8 E2M1 codes n0..n7 (n0 in bits 0..3, the checkpoint's k order) -> four bf16x2
// pairs (n_2i low, n_2i+1 high), each value * 2^-126 and then times `scale2` (scaleToBf16x2).
// q << 4 puts every byte's low code at the top of that byte; one byte permute then places the
// low code of byte i at the top of the low half and its high code at the top of the high half,
// the form dequantWord decodes.
__device__ __forceinline__ void dequantWordConsecutive(uint32_t q, uint32_t scale2, uint32_t out[4]) {
  const uint32_t z = q << 4;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint32_t x = __byte_perm(z, q, static_cast<uint32_t>(i | (i << 4) | ((4 + i) << 8) | ((4 + i) << 12)));
    uint32_t r = (x & 0x80008000u) | ((x & 0x70007000u) >> 6);
    __nv_bfloat162 v = __hmul2(*reinterpret_cast<__nv_bfloat162*>(&r), *reinterpret_cast<__nv_bfloat162*>(&scale2));
    out[i] = *reinterpret_cast<uint32_t*>(&v);
  }
}

// grid (splits, ceil(N / 128)), cluster (splits, 1, 1) when splits > 1; 256 threads.
template <int NT, int MinBlocks>
__global__ void __launch_bounds__(kGemvThreads, MinBlocks) gemvWideKernel(const GemvParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(16) uint8_t smem[];
  constexpr int kTokens = NT * 8;
  constexpr int kStageBytes = kTokens * kGemvBatch * 2;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int rowBase = blockIdx.y * kWideRows + warp * 16;
  const int K = p.K, M = p.M;
  const int numBatches = (K + kGemvBatch - 1) / kGemvBatch;
  // split r takes batches [r * B / splits, (r + 1) * B / splits): within one of each other
  const int b0 = static_cast<int>(blockIdx.x) * numBatches / p.splits;
  const int nb = (static_cast<int>(blockIdx.x) + 1) * numBatches / p.splits - b0;

  // Rows past N read row N-1: their results reach only output elements that are never
  // written. Tokens past M are zero-filled in the stages.
  const uint8_t* wRow[2];
  const uint8_t* sRow[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t row = min(rowBase + h * 8 + g, p.N - 1);
    wRow[h] = p.w + row * (K / 2) + 16 * t;
    sRow[h] = p.wScales + row * (K / 16) + 2 * t;
  }

  // Activation chunk of batch b into stage st. Thread i copies chunk c = i % 32 of token rows
  // i / 32 + 8j: its shared-memory offsets are fixed, and its source moves by 8 rows per j.
  // Rows past M and k past K are zero-filled (K % 32 == 0: a chunk is all in or all out).
  constexpr int kRowBytes = kGemvBatch * 2;
  const int cm = threadIdx.x / (kGemvBatch / 8), cc = threadIdx.x % (kGemvBatch / 8);
  const uint32_t stageDst = smemAddr(smem) + cm * kRowBytes + wideChunk(cm, cc) * 16;
  const __nv_bfloat16* stageSrc = p.a + static_cast<int64_t>(cm) * K + 8 * cc;
  auto stage = [&](int b, int st) {
    const int k = (b0 + b) * kGemvBatch;
    const bool kIn = k + 8 * cc < K;
#pragma unroll
    for (int j = 0; j < kTokens / 8; ++j) {
      const bool in = kIn && cm + 8 * j < M;
      const void* src = in ? static_cast<const void*>(stageSrc + static_cast<int64_t>(8 * j) * K + k) : p.a;
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(stageDst + st * kStageBytes + j * 8 * kRowBytes),
                   "l"(src), "r"(in ? 16 : 0));
    }
  };

  struct Batch {
    uint4 q[2][2];
    uint32_t s[2][2];
  };
  // Weights of batch b. Full batches (every k < K) load without a predicate; in the partial last
  // batch, k ranges past K load zero codes and zero scales: exact zeros.
  auto load = [&](int b, Batch& B, auto full) {
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      const int k0 = (b0 + b) * kGemvBatch + s * 128;
      const bool valid = decltype(full)::value || k0 + 32 * t < K;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        B.q[s][h] = valid ? ldStream16(wRow[h] + k0 / 2) : make_uint4(0, 0, 0, 0);
        B.s[s][h] = valid ? ldStream2(sRow[h] + k0 / 16) : 0u;
      }
    }
  };
  const int numFull = min(nb, K / kGemvBatch - b0);  // this split's batches with every k < K
  auto loadAny = [&](int b, Batch& B) {
    if (b < numFull) load(b, B, std::true_type{});
    else load(b, B, std::false_type{});
  };

  float acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.0f;

  // Thread (g, t) reads token rows g + 8nt, chunks 16s + 4t + w: by wideChunk's swizzle the
  // chunk index is 16s + 4t + (w ^ x) with x fixed per thread, so every address is one of four
  // per-thread bases plus a constant.
  const int x = (t >> 1) ^ ((g & 1) << 1);
  const uint8_t* actBase = smem + g * kRowBytes + 64 * t;
  auto compute = [&](int st, const Batch& B) {
    const uint8_t* act = actBase + st * kStageBytes;
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      uint32_t sc[2][2];
#pragma unroll
      for (int h = 0; h < 2; ++h) scalePairToBf16x2(B.s[s][h], sc[h]);
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        uint32_t lo[4], hi[4];
        dequantWordConsecutive(wordOf(B.q[s][0], w), sc[0][w >> 1], lo);
        dequantWordConsecutive(wordOf(B.q[s][1], w), sc[1][w >> 1], hi);
        const uint8_t* col = act + 256 * s + 16 * (w ^ x);
        uint4 v[NT];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) v[nt] = *reinterpret_cast<const uint4*>(col + nt * 8 * kRowBytes);
        // every tile's first MMA before any second one: the two MMAs of a tile depend on each
        // other through the accumulators, and back to back they would wait out the MMA latency
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mmaBf16(acc[nt], lo[0], hi[0], lo[1], hi[1], v[nt].x, v[nt].y);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mmaBf16(acc[nt], lo[2], hi[2], lo[3], hi[3], v[nt].z, v[nt].w);
      }
    }
  };

  // Activations run kWideStages - 1 batches ahead through shared memory, weights one batch
  // ahead in two register buffers used in turn.
#pragma unroll
  for (int i = 0; i < kWideStages - 1; ++i) {
    if (i < nb) stage(i, i);
    cpAsyncCommit();
  }
  Batch x0, x1;
  if (nb > 0) loadAny(0, x0);
  for (int b = 0; b < nb; b += 2) {
    cpAsyncWait<kWideStages - 2>();
    __syncthreads();  // stage b is in; every warp is done with the stage refilled below
    if (b + kWideStages - 1 < nb) stage(b + kWideStages - 1, (b + kWideStages - 1) % kWideStages);
    cpAsyncCommit();
    if (b + 1 < nb) loadAny(b + 1, x1);
    compute(b % kWideStages, x0);
    if (b + 1 >= nb) break;
    cpAsyncWait<kWideStages - 2>();
    __syncthreads();
    if (b + kWideStages < nb) stage(b + kWideStages, (b + kWideStages) % kWideStages);
    cpAsyncCommit();
    if (b + 2 < nb) loadAny(b + 2, x0);
    compute((b + 1) % kWideStages, x1);
  }
  cpAsyncWait<0>();
  __syncthreads();  // the stages become the partial sums below

  // Partial sums of the cluster's CTAs, added in rank order. Lane-major: conflict-free.
  constexpr int kAcc = NT * 4;
  float* red = reinterpret_cast<float*>(smem);
  const int splits = p.splits;
  if (splits > 1) {
    float* mine = red + warp * kAcc * 32 + lane;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int j = 0; j < 4; ++j) mine[(nt * 4 + j) * 32] = acc[nt][j];
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();
    // rank r finishes the warps w with w % splits == r
    const int rank = static_cast<int>(blockIdx.x);
    const bool finisher = warp % splits == rank;
    if (finisher) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[nt][j] = 0.0f;
      for (int r = 0; r < splits; ++r) {
        const float* theirs = cluster.map_shared_rank(mine, r);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[nt][j] += theirs[(nt * 4 + j) * 32];
      }
    }
    cluster.sync();  // no CTA leaves while another reads its shared memory
    if (!finisher) return;
  }

  // The dequantized weights carry 2^-8 (see scaleToBf16x2).
  storeRowGroup<NT>(p, p.out, acc, rowBase, 0, M, p.alpha * __ldg(p.wGlobalScale) * 0x1p8f);
#endif
}

// Defined in gemm_decode.cu, one instantiation per NT the heuristic picks; grid (splits, rowBlocks).
template <int NT>
cudaError_t launchGemvWide(const GemvParams& p, int rowBlocks, cudaStream_t stream);

}  // namespace moe::kernels::nvfp4::detail
