// Streaming NVFP4 GEMM for decode (W4A16, M <= 16): out[M,N] = alpha*gsW * A[M,K] . W[N,K]^T.
//
// Decode is bound by reading the weights once, so this kernel keeps the bytes in flight high
// and the per-byte work low: every warp loads its own weight rows straight into registers with
// 16-byte non-caching loads (no shared-memory staging, no block-wide barrier in the main loop),
// prefetching the next batch while it computes the current one. The activations are small and
// reused by every CTA, so they are read through L1 with ordinary cached loads.
//
// Work split. A CTA has 8 warps: kWarps of them split K (batches of 256 k, interleaved so the
// CTA reads neighbouring bytes together), 8/kWarps of them split the CTA's rows. Each warp owns
// MT groups of 16 weight rows. The kWarps partial sums are added in shared memory in a fixed
// order, so the result is deterministic, the op is one launch and needs no workspace.
//
// MMA mapping (swap AB, like gemm.cuh): mma.sync m16n8k16 with 16 weight rows as its M and 8
// tokens as its N. Thread (g, t) of a warp loads, per 128-k step, bytes [16t, 16t+16) of rows g
// and g+8 - 32 consecutive k, two scale blocks - so a quad covers 64 contiguous bytes of a row
// and every load uses whole sectors. A 32-bit word of 8 codes becomes four bf16x2 pairs
// (n_j, n_{j+4}) (dequantWord); the activation pairs come from the same 8 k with pairBf16. The
// MMA sums over k, so this per-thread k permutation is invisible in the result.
#pragma once
#include <cstdint>
#include <type_traits>

#include "kernels/nvfp4/common.cuh"
#include "kernels/nvfp4/gemm.cuh"

namespace moe::kernels::nvfp4::detail {

struct GemvParams {
  const __nv_bfloat16* a;    // [M, K]
  const uint8_t* w;          // packed E2M1 [N, K/2]
  const uint8_t* wScales;    // e4m3 [N, K/16]
  const float* wGlobalScale; // device
  const void* bias;          // [N] or nullptr
  void* out;                 // [M, N]
  int M, N, K;
  int kWarps;                // 1, 2, 4 or 8 warps along K
  int splits;                // wide kernel (gemv_wide.cuh): CTAs of a cluster along K (grid.x)
  float alpha;
  bool biasF32, outF32;
  GroupParams group;         // grouped kernel only (gemm.cuh)
};

inline constexpr int kGemvThreads = 256;
inline constexpr int kGemvBatch = 256;  // k per batch: two 128-k steps

// Weights are read exactly once: keep them out of L1 so the activations stay there.
__device__ __forceinline__ uint4 ldStream16(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ uint32_t ldStream2(const void* p) {
  unsigned short v;
  asm volatile("ld.global.nc.L1::no_allocate.u16 %0, [%1];\n" : "=h"(v) : "l"(p));
  return v;
}

__device__ __forceinline__ uint32_t wordOf(const uint4& v, int w) {
  return w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w;
}

// Writes one 16-row group of a warp's results: acc[nt][j] belongs to weight row n0 + g (+ 8 when
// j & 2) and token m0 + 8nt + 2t + (j & 1); each is scaled by `factor`, given its row's bias and
// written to out[m, n] unless the row or token lies past N or M.
template <int NT>
__device__ __forceinline__ void storeRowGroup(const GemvParams& p, void* out, const float (&acc)[NT][4], int n0,
                                              int m0, int M, float factor) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int n = n0 + g + ((j & 2) ? 8 : 0);
    if (n >= p.N) continue;
    float bias = 0.0f;
    if (p.bias != nullptr) {
      bias = p.biasF32 ? static_cast<const float*>(p.bias)[n]
                       : __bfloat162float(static_cast<const __nv_bfloat16*>(p.bias)[n]);
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int m = m0 + nt * 8 + 2 * t + (j & 1);
      if (m >= M) continue;
      const float v = acc[nt][j] * factor + bias;
      const int64_t idx = static_cast<int64_t>(m) * p.N + n;
      if (p.outF32) static_cast<float*>(out)[idx] = v;
      else static_cast<__nv_bfloat16*>(out)[idx] = __float2bfloat16_rn(v);
    }
  }
}

// Grouped: grid (CTAs per expert, E), blockIdx.y the expert; its weights, rows and global
// scale come from p.group, and M is its row count. All M rows are covered in passes of NT * 8
// tokens (one pass whenever M <= NT * 8, the masked decode case), each streaming the weights.
template <int NT, int MT, int MinBlocks, bool Grouped = false, bool Gather = false>
__global__ void __launch_bounds__(kGemvThreads, MinBlocks) gemvKernel(const GemvParams p) {
  extern __shared__ float red[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int kWarps = p.kWarps;
  const int wk = warp & (kWarps - 1), wr = warp / kWarps;
  const int rowsPerCta = (8 / kWarps) * MT * 16;
  const int rowBase = blockIdx.x * rowsPerCta + wr * MT * 16;
  const int K = p.K;

  const __nv_bfloat16* a = p.a;
  const uint8_t* w = p.w;
  const uint8_t* wScales = p.wScales;
  const float* wGlobalScale = p.wGlobalScale;
  void* out = p.out;
  int M = p.M;
  int swigluI = 0;
  const int32_t* gatherPairs = nullptr;  // gather: the expert's rows' pairs (x holds tokens)
  if constexpr (Grouped) {
    const int e = blockIdx.y;
    int64_t start;
    if (!groupSlot(p.group, e, start, M)) return;
    swigluI = p.group.swigluI;
    if constexpr (Gather) gatherPairs = p.group.xRows + start;
    else a += start * K;
    w += e * p.group.wStride;
    wScales += e * p.group.sStride;
    wGlobalScale += e;
    out = static_cast<__nv_bfloat16*>(out) + start * (swigluI > 0 ? swigluI : p.N);
  }

  // Rows past N and tokens past M read a valid row instead (no branch in the loop); their
  // results only reach output elements that are never written.
  const uint8_t* wRow[MT][2];
  const uint8_t* sRow[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      int64_t row = min(rowBase + mt * 16 + h * 8 + g, p.N - 1);
      if (Grouped && swigluI > 0) {
        // the swiglu order of gemm.cuh (swigluRow): gate rows, then the matching up rows
        const int j = min(((rowBase + mt * 16) >> 1) + g, swigluI - 1);
        row = h ? swigluI + j : j;
      }
      wRow[mt][h] = w + row * (K / 2) + 16 * t;
      sRow[mt][h] = wScales + row * (K / 16) + 2 * t;
    }
  }

  for (int m0 = 0; m0 < M; m0 += NT * 8) {
    const __nv_bfloat16* aRow[NT];
    bool aOk[NT];  // false: a gathered row that names no row of x, read as zeros
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      int64_t row = min(m0 + nt * 8 + g, M - 1);
      aOk[nt] = true;
      if constexpr (Gather) {
        row = GatherRows{gatherPairs, p.group.gatherK, p.group.xTokens}(row);
        aOk[nt] = row >= 0;
        row = max(row, int64_t{0});  // x has a row 0 (the launcher sends no tokens to the tiled kernels)
      }
      aRow[nt] = a + row * K + 32 * t;
    }

    float acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;

    // One batch: two 128-k steps x MT x 2 rows of 16 bytes, and their two scale bytes each.
    // Full batches (every k in range) take no predicate at all: per batch the predicates and the
    // zero-selects they need cost about a sixth of the instructions, and this kernel is bound by
    // instruction issue (benchmarks/NOTES.md). Only the last batch, when K % 256 != 0, checks k:
    // a thread's 32 k of a step are all in range or all out (K % 32 == 0); out of range is zero.
    struct Batch {
      uint4 q[2][MT][2];
      uint32_t s[2][MT][2];
    };
    auto load = [&](int b, Batch& B, auto full) {
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        const int k0 = b * kGemvBatch + s * 128;
        const bool valid = decltype(full)::value || k0 + 32 * t < K;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            B.q[s][mt][h] = valid ? ldStream16(wRow[mt][h] + k0 / 2) : make_uint4(0, 0, 0, 0);
            B.s[s][mt][h] = valid ? ldStream2(sRow[mt][h] + k0 / 16) : 0u;
          }
        }
      }
    };
    auto compute = [&](int b, const Batch& B, auto full) {
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        const int k0 = b * kGemvBatch + s * 128;
        const bool valid = decltype(full)::value || k0 + 32 * t < K;
        uint32_t sc[MT][2][2];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int h = 0; h < 2; ++h) scalePairToBf16x2(B.s[s][mt][h], sc[mt][h]);
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          uint32_t bf[NT][4];
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            const uint4 v = valid ? __ldg(reinterpret_cast<const uint4*>(aRow[nt] + k0 + 8 * w))
                                  : make_uint4(0, 0, 0, 0);
            const uint32_t raw[4] = {v.x, v.y, v.z, v.w};
            pairBf16(raw, bf[nt]);
          }
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            uint32_t lo[4], hi[4];
            dequantWord(wordOf(B.q[s][mt][0], w), sc[mt][0][w >> 1], lo);
            dequantWord(wordOf(B.q[s][mt][1], w), sc[mt][1][w >> 1], hi);
#pragma unroll
            for (int hh = 0; hh < 2; ++hh)
#pragma unroll
              for (int nt = 0; nt < NT; ++nt)
                mmaBf16(acc[mt][nt], lo[2 * hh], hi[2 * hh], lo[2 * hh + 1], hi[2 * hh + 1],
                        bf[nt][2 * hh], bf[nt][2 * hh + 1]);
          }
        }
      }
    };
    using Full = std::true_type;
    using Partial = std::false_type;

    const int numFull = K / kGemvBatch;  // batches with every k in range
    // Two register buffers used in turn (no copy between them: a copy would wait for the loads).
    Batch x0, x1;
    int b = wk;
    if (b < numFull) load(b, x0, Full{});
    for (; b < numFull; b += 2 * kWarps) {
      if (b + kWarps < numFull) load(b + kWarps, x1, Full{});
      compute(b, x0, Full{});
      if (b + kWarps >= numFull) break;
      if (b + 2 * kWarps < numFull) load(b + 2 * kWarps, x0, Full{});
      compute(b + kWarps, x1, Full{});
    }
    // The partial last batch, if any, goes to the warp whose turn it is.
    if (K % kGemvBatch != 0 && numFull % kWarps == wk) {
      load(numFull, x0, Partial{});
      compute(numFull, x0, Partial{});
    }

    // Partial sums of the K warps, added in a fixed order: (((w1 + w2) + w3) ...) + w0. Lane-major
    // layout keeps the shared-memory accesses conflict-free.
    constexpr int kAcc = MT * NT * 4;
    bool writer = true;
    if (kWarps > 1) {
      float* mine = red + wr * kAcc * 32 + lane;
      for (int i = 1; i < kWarps; ++i) {
        if (wk == i) {
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
              for (int j = 0; j < 4; ++j) {
                float* slot = mine + ((mt * NT + nt) * 4 + j) * 32;
                *slot = i == 1 ? acc[mt][nt][j] : *slot + acc[mt][nt][j];
              }
        }
        __syncthreads();
      }
      if (!Grouped && wk != 0) return;
      writer = wk == 0;
      if (writer) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[mt][nt][j] += mine[((mt * NT + nt) * 4 + j) * 32];
      }
    }

    if constexpr (Gather) {
      // a gathered row that names no row of x read row 0 instead: its results become those of a
      // zero row here, once per pass, rather than a select on every activation load. Token
      // 2t + jj's flag is held by the lanes with g == 2t + jj.
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) {
          const bool ok = __shfl_sync(0xFFFFFFFFu, aOk[nt], (2 * t + jj) * 4);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            if (!ok) acc[mt][nt][jj] = acc[mt][nt][2 + jj] = 0.0f;
          }
        }
      }
    }
    // The dequantized weights carry 2^-8 (see scaleToBf16x2).
    const float factor = p.alpha * __ldg(wGlobalScale) * 0x1p8f;
    if (Grouped && writer && swigluI > 0) {
      // acc[..][j]: j & 2 selects the fragment's up row, j & 1 the second token.
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int col = ((rowBase + mt * 16) >> 1) + g;
        if (col >= swigluI) continue;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
          for (int jj = 0; jj < 2; ++jj) {
            const int m = m0 + nt * 8 + 2 * t + jj;
            if (m >= M) continue;
            const float v = swiglu(acc[mt][nt][jj] * factor, acc[mt][nt][2 + jj] * factor);
            static_cast<__nv_bfloat16*>(out)[static_cast<int64_t>(m) * swigluI + col] = __float2bfloat16_rn(v);
          }
        }
      }
    } else if (writer) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) storeRowGroup<NT>(p, out, acc[mt], rowBase + mt * 16, m0, M, factor);
    }
    if constexpr (!Grouped) break;  // the dense kernel has M <= NT * 8: one pass
    // the next pass reuses `red`
    if (kWarps > 1) __syncthreads();
  }
}

// Shared memory the fixed-order K reduction needs.
template <int NT, int MT>
constexpr int gemvSmemBytes(int kWarps) {
  return kWarps > 1 ? (8 / kWarps) * MT * NT * 4 * 32 * static_cast<int>(sizeof(float)) : 0;
}

// Defined in gemm_decode.cu, one instantiation per (NT, MT) the heuristic picks.
template <int NT, int MT, int MinBlocks>
cudaError_t launchGemv(const GemvParams& p, cudaStream_t stream);

// The grouped kernel on a grid of (ctasPerExpert, E); defined in grouped_gemm.cu, the gathering
// variant (x holds one row per token) in grouped_gather.cu.
template <int NT, int MT, int MinBlocks, bool Gather>
cudaError_t launchGroupedGemv(const GemvParams& p, dim3 grid, cudaStream_t stream);

template <int NT, int MT, int MinBlocks, bool Gather>
cudaError_t launchGroupedGemvImpl(const GemvParams& p, dim3 grid, cudaStream_t stream) {
  gemvKernel<NT, MT, MinBlocks, true, Gather><<<grid, kGemvThreads, gemvSmemBytes<NT, MT>(p.kWarps), stream>>>(p);
  return cudaGetLastError();
}

}  // namespace moe::kernels::nvfp4::detail
