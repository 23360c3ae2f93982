// Expert-parallel dispatch and combine on devices that write each other's memory. The bytes and
// their meaning are those of common/ep.h and the CPU reference (cpu/ep/ep.cpp); the payload
// arithmetic is the nvfp4 family's device code, so that both backends give the same bits.
//
// Ordering: a sender's CTAs write rows into the receivers' regions, fence at system scope and
// count themselves done on a counter in the sender's memory; the last CTA fences again and stores
// each count word with st.release.sys. A receiver loads the words with ld.acquire.sys (one CTA,
// bounded by %globaltimer) and then reads the regions in later kernels, bypassing L1 (__ldcg).
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>

#include "kernels/ep/ep.h"
#include "kernels/nvfp4/common.cuh"

namespace moe::kernels::ep {
namespace {
namespace E = moe::ep;
using nvfp4::detail::e2m1Magnitude;
using nvfp4::detail::e2m1ToFloat;
using nvfp4::detail::e4m3ToFloat;
using nvfp4::detail::floatToE4m3;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// ---- memory ordering -----------------------------------------------------------------------

__device__ __forceinline__ uint64_t loadAcquire(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void storeRelease(uint64_t* p, uint64_t v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ uint64_t globalTimer() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

template <typename T>
__device__ __forceinline__ T* at(uint64_t address) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(address));
}

// A little-endian u32 from any byte address (payload scales need not be 4-byte aligned).
__device__ __forceinline__ uint32_t loadU32(const uint8_t* p) {
  return static_cast<uint32_t>(__ldcg(p)) | (static_cast<uint32_t>(__ldcg(p + 1)) << 8) | (static_cast<uint32_t>(__ldcg(p + 2)) << 16) |
         (static_cast<uint32_t>(__ldcg(p + 3)) << 24);
}

__device__ __forceinline__ void storeU32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
  p[2] = static_cast<uint8_t>(v >> 16);
  p[3] = static_cast<uint8_t>(v >> 24);
}

__device__ __forceinline__ float bf16ToFloat(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }
// Round to nearest even; any NaN becomes 0x7FFF, as on the CPU.
__device__ __forceinline__ uint16_t floatToBf16(float v) { return v != v ? uint16_t{0x7FFF} : __bfloat16_as_ushort(__float2bfloat16_rn(v)); }

// |x| of a bf16 as an order-preserving key, every NaN above +inf (the nvfp4 amax's rule).
__device__ __forceinline__ uint32_t absKeyBf16(uint32_t h) {
  h &= 0x7FFFu;
  return h > 0x7F80u ? 0x7FC00000u : (h << 16);
}

__device__ __forceinline__ uint32_t blockMax(uint32_t v, uint32_t* shared) {
  v = __reduce_max_sync(0xFFFFFFFFu, v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  uint32_t r = 0;
  for (int w = 0; w < kWarps; ++w) r = max(r, shared[w]);
  return r;
}

// A warp copies n 16-byte chunks with kUnroll loads in flight per lane before their stores: with
// one load at a time a warp waits a DRAM latency per 512 bytes, which held a 16-CTA copy kernel
// near 7 GB/s per SM.
constexpr int kUnroll = 8;
__device__ __forceinline__ void warpCopy(uint4* __restrict__ to, const uint4* __restrict__ from, int64_t n, int lane) {
  int64_t c = lane;
  for (; c + 32 * (kUnroll - 1) < n; c += 32 * kUnroll) {
    uint4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) v[u] = from[c + 32 * u];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) to[c + 32 * u] = v[u];
  }
  for (; c < n; c += 32) to[c] = from[c];
}

// ---- dispatch: send ------------------------------------------------------------------------

// Block d: the tokens that go to destination d, in order, get slots 0..; combineIndex of their
// pairs for d, and sendCount[d]. Block 0 also marks the pairs whose id is out of range.
__global__ void __launch_bounds__(kThreads) slotsKernel(const int32_t* __restrict__ ids, int64_t tokens, int k, int experts, int local,
                                                        int64_t maxTokens, int32_t* __restrict__ combineIndex,
                                                        uint32_t* __restrict__ sendCount, int32_t* __restrict__ errors) {
  __shared__ uint32_t warpSum[kWarps];
  const int d = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint32_t base = 0;
  int32_t bad = 0;
  for (int64_t t0 = 0; t0 < tokens; t0 += kThreads) {
    const int64_t t = t0 + threadIdx.x;
    bool here = false;
    if (t < tokens) {
      for (int i = 0; i < k; ++i) {
        const int32_t id = ids[t * k + i];
        const bool valid = id >= 0 && id < experts;
        here |= valid && id / local == d;
        if (d == 0 && !valid) {
          combineIndex[t * k + i] = -1;
          ++bad;
        }
      }
    }
    // block-wide exclusive scan of `here`
    const uint32_t ballot = __ballot_sync(0xFFFFFFFFu, here);
    if (lane == 0) warpSum[warp] = __popc(ballot);
    __syncthreads();
    uint32_t before = base;
    for (int w = 0; w < warp; ++w) before += warpSum[w];
    before += __popc(ballot & ((1u << lane) - 1u));
    uint32_t total = 0;
    for (int w = 0; w < kWarps; ++w) total += warpSum[w];
    if (here) {
      const int64_t slot = static_cast<int64_t>(d) * maxTokens + before;
      for (int i = 0; i < k; ++i) {
        const int32_t id = ids[t * k + i];
        if (id >= 0 && id < experts && id / local == d) combineIndex[t * k + i] = static_cast<int32_t>(slot * k + i);
      }
    }
    base += total;
    __syncthreads();  // warpSum is rewritten by the next chunk
  }
  if (threadIdx.x == 0) sendCount[d] = base;
  if (d == 0) {
    bad = __reduce_add_sync(0xFFFFFFFFu, bad);
    if (lane == 0) warpSum[warp] = static_cast<uint32_t>(bad);
    __syncthreads();
    if (threadIdx.x == 0) {
      int32_t n = 0;
      for (int w = 0; w < kWarps; ++w) n += static_cast<int32_t>(warpSum[w]);
      *errors = n;
    }
  }
}

// Block t: token t's payload into staging row t (metaAt bytes, the padding zeroed).
__global__ void __launch_bounds__(kThreads) encodeKernel(const uint16_t* __restrict__ x, int64_t hidden, int payload, int64_t metaAt,
                                                         uint8_t* __restrict__ staging) {
  __shared__ uint32_t shared[kWarps];
  const int64_t t = blockIdx.x;
  const uint16_t* row = x + t * hidden;
  uint8_t* out = staging + t * metaAt;
  const int64_t used = E::payloadBytes(payload, hidden);
  for (int64_t b = used + threadIdx.x; b < metaAt; b += kThreads) out[b] = 0;
  if (payload == E::kPayloadBf16) {
    uint16_t* o = reinterpret_cast<uint16_t*>(out);
    for (int64_t h = threadIdx.x; h < hidden; h += kThreads) o[h] = row[h];
    return;
  }
  if (payload == E::kPayloadFp8) {
    // a warp per block of 128: f32 scale amax / 448 (1 for a zero block), e4m3(x / scale)
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t blocks = (hidden + E::kFp8Block - 1) / E::kFp8Block;
    for (int64_t b = warp; b < blocks; b += kWarps) {
      const int64_t h0 = b * E::kFp8Block, h1 = min(hidden, h0 + E::kFp8Block);
      float amax = 0.0f;
      for (int64_t h = h0 + lane; h < h1; h += 32) {
        const float a = fabsf(bf16ToFloat(row[h]));
        amax = a > amax ? a : amax;  // NaN never wins
      }
      for (int off = 16; off >= 1; off /= 2) {
        const float o = __shfl_xor_sync(0xFFFFFFFFu, amax, off);
        amax = o > amax ? o : amax;
      }
      float s = __fdiv_rn(amax, 448.0f);
      if (s == 0.0f) s = 1.0f;
      if (lane == 0) storeU32(out + hidden + 4 * b, __float_as_uint(s));
      for (int64_t h = h0 + lane; h < h1; h += 32) {
        out[h] = static_cast<uint8_t>(__nv_cvt_float_to_fp8(__fdiv_rn(bf16ToFloat(row[h]), s), __NV_SATFINITE, __NV_E4M3));
      }
    }
    return;
  }
  // nvfp4: the quantizer of the nvfp4 family on one row: amax, global scale, 16-element blocks
  uint32_t key = 0;
  for (int64_t h = threadIdx.x; h < hidden; h += kThreads) key = max(key, absKeyBf16(row[h]));
  const float amax = __uint_as_float(blockMax(key, shared));
  float gs = __fdiv_rn(amax, 2688.0f);
  if (gs == 0.0f) gs = 1.0f;
  if (amax != amax) gs = amax;
  if (threadIdx.x == 0) storeU32(out + hidden / 2 + hidden / 16, __float_as_uint(gs));
  for (int64_t b = threadIdx.x; b < hidden / 16; b += kThreads) {
    float v[16];
    uint32_t signs = 0;
    float blockAmax = 0.0f;
    for (int i = 0; i < 16; ++i) {
      const uint16_t bits = row[b * 16 + i];
      signs |= static_cast<uint32_t>(bits >> 15) << i;
      v[i] = bf16ToFloat(bits);
      const float a = fabsf(v[i]);
      blockAmax = a > blockAmax ? a : blockAmax;
    }
    float s = __fdiv_rn(blockAmax, __fmul_rn(6.0f, gs));
    if (s == 0.0f) s = 1.0f;
    s = fminf(fmaxf(s, 0x1p-9f), 448.0f);
    const uint32_t code = floatToE4m3(s);
    const float denom = __fmul_rn(e4m3ToFloat(code), gs);
    for (int i = 0; i < 16; i += 2) {
      const uint32_t lo = e2m1Magnitude(fabsf(__fdiv_rn(v[i], denom))) | (((signs >> i) & 1u) << 3);
      const uint32_t hi = e2m1Magnitude(fabsf(__fdiv_rn(v[i + 1], denom))) | (((signs >> (i + 1)) & 1u) << 3);
      out[b * 8 + i / 2] = static_cast<uint8_t>(lo | (hi << 4));
    }
    out[hidden / 2 + b] = static_cast<uint8_t>(code);
  }
}

// The last CTA of a grid to get here (after its own writes) publishes the count words.
__device__ __forceinline__ bool lastBlock(uint32_t* sync) {
  __shared__ bool last;
  __threadfence_system();
  __syncthreads();
  if (threadIdx.x == 0) {
    const uint32_t done = atomicAdd(sync, 1u);
    last = done == gridDim.x - 1;
  }
  __syncthreads();
  if (last) __threadfence_system();
  return last;
}

// A warp per pair (t, i) that is token t's first pair on its destination d: a copy of the token's
// payload row (source + t * sourceStride: the staging row, or x itself for an aligned bf16
// payload) and its metadata into d's slot, so each token reaches each destination once.
__global__ void __launch_bounds__(kThreads) sendKernel(E::EpShapeView s, const uint8_t* __restrict__ source, int64_t sourceStride,
                                                       const int32_t* __restrict__ ids, const float* __restrict__ weights, int64_t tokens,
                                                       const int32_t* __restrict__ combineIndex, const uint64_t* __restrict__ dataDst,
                                                       const uint64_t* __restrict__ countDst, const uint32_t* __restrict__ sendCount,
                                                       const uint32_t* __restrict__ epoch, uint32_t* __restrict__ sync) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
  const int k = s.k, local = s.experts / s.ranks;
  const int64_t chunks = s.metaAt / 16;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5); p < tokens * k; p += warps) {
    const int64_t t = p / k;
    const int i = static_cast<int>(p % k);
    const int32_t ci = combineIndex[p];
    if (ci < 0) continue;
    const int d = ids[p] / local;
    bool first = true;  // the token goes to d once, at its first pair there
    for (int j = 0; j < i; ++j) first &= !(combineIndex[t * k + j] >= 0 && ids[t * k + j] / local == d);
    if (!first) continue;
    const int64_t slot = static_cast<int64_t>(ci / k) - static_cast<int64_t>(d) * s.maxTokens;
    uint8_t* dst = at<uint8_t>(dataDst[d]) + slot * s.slotBytes;
    warpCopy(reinterpret_cast<uint4*>(dst), reinterpret_cast<const uint4*>(source + t * sourceStride), chunks, lane);
    int32_t* meta = reinterpret_cast<int32_t*>(dst + s.metaAt);
    float* w = reinterpret_cast<float*>(meta + 1 + k);
    if (lane == 0) meta[0] = static_cast<int32_t>(t);
    if (lane < k) {
      const int32_t id = ids[t * k + lane];
      const bool mine = combineIndex[t * k + lane] >= 0 && id / local == d;
      meta[1 + lane] = mine ? id - d * local : -1;
      w[lane] = mine ? weights[t * k + lane] : 0.0f;
    }
  }
  if (lastBlock(sync)) {
    const uint32_t e = *epoch + 1;
    for (int d = threadIdx.x; d < s.ranks; d += kThreads) storeRelease(at<uint64_t>(countDst[d]), E::countWord(e, sendCount[d]));
    __syncthreads();
    if (threadIdx.x == 0) *sync = 0;
  }
}

// ---- waits ---------------------------------------------------------------------------------

// One CTA: counts[r] = the rows of rank r's word once it carries call number *epoch + ahead, 0
// for a rank still missing at the deadline (then status records the first such rank).
__global__ void __launch_bounds__(kThreads) waitKernel(const uint64_t* __restrict__ words, int ranks, uint32_t* __restrict__ epoch, uint32_t ahead,
                                                       bool advance, int64_t maxTokens, int64_t timeoutNs, int32_t* __restrict__ status,
                                                       int32_t code, uint32_t* __restrict__ counts) {
  __shared__ uint64_t deadline;
  __shared__ int missing;
  const uint32_t e = *epoch + ahead;
  if (threadIdx.x == 0) {
    deadline = globalTimer() + static_cast<uint64_t>(timeoutNs);
    missing = INT_MAX;
  }
  __syncthreads();
  for (int r = threadIdx.x; r < ranks; r += kThreads) {
    uint32_t n = 0;
    for (;;) {
      const uint64_t w = loadAcquire(words + r);
      if (static_cast<uint32_t>(w >> 32) == e) {
        n = min(static_cast<uint32_t>(w), static_cast<uint32_t>(maxTokens));
        break;
      }
      if (globalTimer() > deadline) {
        atomicMin(&missing, r);
        break;
      }
      __nanosleep(128);
    }
    counts[r] = n;
  }
  __threadfence_system();
  __syncthreads();
  if (threadIdx.x == 0) {
    if (missing != INT_MAX && status[0] == 0) {
      status[1] = missing;
      status[0] = code;
    }
    if (advance) *epoch = e;
  }
}

// ---- dispatch: receive ---------------------------------------------------------------------

__device__ __forceinline__ int32_t localIdOf(const E::EpShapeView& s, const uint8_t* regions, const uint32_t* counts, int64_t i, int kk) {
  const int64_t r = i / s.maxTokens, j = i % s.maxTokens;
  if (j >= counts[r]) return -1;
  // slots and their metadata start on 16 bytes: an aligned load
  return __ldcg(reinterpret_cast<const int32_t*>(regions + r * s.regionBytes + j * s.slotBytes + s.metaAt) + 1 + kk);
}

// The layout in three launches over tiles of kTile receive slots, so that the work spreads over
// (tile, expert) instead of running down every slot in one warp per expert:
//   countKernel: warp e of tile t counts expert e's pairs in the tile (warp L: malformed ids);
//   scanKernel:  one CTA: each expert's pairs before each tile, its rows, the offsets;
//   placeKernel: warp e of tile t places expert e's pairs of the tile, in slot order.
constexpr int kTile = 256;

// Expert e's pairs in slots [i0, i0 + 32) (bit kk of `which`: pair kk is e's; lanes past `slots` hold none).
__device__ __forceinline__ int32_t pairsOf(const E::EpShapeView& s, const uint8_t* regions, const uint32_t* counts, int64_t i, int64_t slots, int e,
                                          int L, uint32_t& which) {
  which = 0;
  int32_t n = 0;
  if (i >= slots) return 0;
  for (int kk = 0; kk < s.k; ++kk) {
    const int32_t id = localIdOf(s, regions, counts, i, kk);
    const bool hit = e < L ? id == e : (id < -1 || id >= L);
    if (hit) {
      which |= 1u << kk;
      ++n;
    }
  }
  return n;
}

__global__ void __launch_bounds__(kThreads) countKernel(E::EpShapeView s, const uint8_t* __restrict__ regions, const uint32_t* __restrict__ counts,
                                                        int32_t* __restrict__ tileCounts) {
  const int lane = threadIdx.x & 31;
  const int e = blockIdx.y * kWarps + (threadIdx.x >> 5);
  const int L = s.experts / s.ranks;
  if (e > L) return;
  const int64_t slots = static_cast<int64_t>(s.ranks) * s.maxTokens;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kTile;
  int32_t n = 0;
  for (int64_t i0 = first; i0 < first + kTile; i0 += 32) {
    uint32_t which;
    n += pairsOf(s, regions, counts, i0 + lane, slots, e, L, which);
  }
  n = __reduce_add_sync(0xFFFFFFFFu, n);
  if (lane == 0) tileCounts[static_cast<int64_t>(blockIdx.x) * (L + 1) + e] = n;
}

// One CTA. tileCounts becomes each expert's pairs before each tile (exclusive); placed[e] = the
// pairs of e that get a row; offsets, counts, usedRows, dropped, errors as the CPU computes them.
// Masked: layoutCounts holds the last call's counts on entry (zeros before the first call, whose
// rows start zeroed); touch[e] = the larger of that and this call's.
__global__ void __launch_bounds__(1024) scanKernel(int L, int64_t tiles, int32_t align, int32_t maxPerExpert, int32_t* __restrict__ tileCounts,
                                                   int32_t* __restrict__ placed, int32_t* __restrict__ touch, int32_t* __restrict__ layoutCounts,
                                                   int32_t* __restrict__ offsets,
                                                   int32_t* __restrict__ usedRows, int32_t* __restrict__ dropped, int32_t* __restrict__ errors) {
  __shared__ int64_t total[E::kMaxLocalExperts + 1];
  for (int e = threadIdx.x; e <= L; e += blockDim.x) {
    int64_t run = 0;
    for (int64_t t = 0; t < tiles; ++t) {
      int32_t* c = tileCounts + t * (L + 1) + e;
      const int32_t n = *c;
      *c = static_cast<int32_t>(run);
      run += n;
    }
    total[e] = run;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const bool masked = maxPerExpert > 0;
    int64_t at = 0, lost = 0;
    offsets[0] = 0;
    for (int e = 0; e < L; ++e) {
      const int64_t p = masked ? min(total[e], static_cast<int64_t>(maxPerExpert)) : total[e];
      lost += total[e] - p;
      placed[e] = static_cast<int32_t>(p);
      // masked: the rows the rows kernel writes, this call's and the last call's (now padding:
      // back to zeros), so that a call touches the rows in use and not every expert's capacity
      if (masked) touch[e] = max(layoutCounts[e], static_cast<int32_t>(p));
      layoutCounts[e] = static_cast<int32_t>(p);
      at += masked ? maxPerExpert : (total[e] + align - 1) / align * align;
      offsets[e + 1] = static_cast<int32_t>(at);
    }
    *usedRows = static_cast<int32_t>(at);
    *dropped = static_cast<int32_t>(lost);
    *errors = static_cast<int32_t>(total[L]);
  }
}

__global__ void __launch_bounds__(kThreads) placeKernel(E::EpShapeView s, const uint8_t* __restrict__ regions, const uint32_t* __restrict__ counts,
                                                        const int32_t* __restrict__ tileBefore, const int32_t* __restrict__ placed,
                                                        const int32_t* __restrict__ offsets, int32_t* __restrict__ sourceIndex,
                                                        int32_t* __restrict__ rowIndex) {
  const int lane = threadIdx.x & 31;
  const int e = blockIdx.y * kWarps + (threadIdx.x >> 5);
  const int L = s.experts / s.ranks;
  if (e >= L) return;
  const int64_t slots = static_cast<int64_t>(s.ranks) * s.maxTokens;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t base = offsets[e], limit = placed[e];
  int64_t next = tileBefore[static_cast<int64_t>(blockIdx.x) * (L + 1) + e];
  for (int64_t i0 = first; i0 < first + kTile; i0 += 32) {
    const int64_t i = i0 + lane;
    uint32_t which;
    const int32_t mine = pairsOf(s, regions, counts, i, slots, e, L, which);
    int32_t incl = mine;
    for (int off = 1; off < 32; off *= 2) {
      const int32_t o = __shfl_up_sync(0xFFFFFFFFu, incl, off);
      if (lane >= off) incl += o;
    }
    int64_t n = next + incl - mine;
    for (int kk = 0; kk < s.k; ++kk) {
      if (!((which >> kk) & 1u)) continue;
      if (n < limit) {
        const int64_t row = base + n;
        sourceIndex[row] = static_cast<int32_t>(i * s.k + kk);
        rowIndex[i * s.k + kk] = static_cast<int32_t>(row);
      }
      ++n;
    }
    next += __shfl_sync(0xFFFFFFFFu, incl, 31);
  }
}

// Row r: the slot of sourceIndex[r] decoded to bf16, zeros for padding (sourceIndex -1). V
// elements per thread: 8 (16-byte stores) where hidden % 8 == 0 and the output is aligned.
template <int V>
__device__ __forceinline__ void decodeRow(const E::EpShapeView& s, const uint8_t* __restrict__ regions, int32_t src, uint16_t* __restrict__ dst) {
  const int64_t H = s.hidden;
  const int64_t pairs = static_cast<int64_t>(s.ranks) * s.maxTokens * s.k;
  if (src < 0 || src >= pairs) {
    for (int64_t h = threadIdx.x * V; h < H; h += kThreads * V) {
      if constexpr (V == 8) *reinterpret_cast<uint4*>(dst + h) = make_uint4(0, 0, 0, 0);
      else dst[h] = 0;
    }
    return;
  }
  const int64_t i = src / s.k;
  const uint8_t* p = regions + (i / s.maxTokens) * s.regionBytes + (i % s.maxTokens) * s.slotBytes;
  if (s.payload == E::kPayloadBf16) {
    for (int64_t h = threadIdx.x * V; h < H; h += kThreads * V) {
      if constexpr (V == 8) *reinterpret_cast<uint4*>(dst + h) = __ldcg(reinterpret_cast<const uint4*>(p + 2 * h));
      else dst[h] = __ldcg(reinterpret_cast<const uint16_t*>(p) + h);
    }
  } else if (s.payload == E::kPayloadFp8) {
    for (int64_t h = threadIdx.x * V; h < H; h += kThreads * V) {
      // V divides the block of 128: one scale for the V elements
      const float scale = __uint_as_float(loadU32(p + H + 4 * (h / E::kFp8Block)));
      uint16_t o[V];
      if constexpr (V == 8) {
        const uint2 q = __ldcg(reinterpret_cast<const uint2*>(p + h));
#pragma unroll
        for (int u = 0; u < 8; ++u) o[u] = floatToBf16(__fmul_rn(e4m3ToFloat(((u < 4 ? q.x : q.y) >> (8 * (u % 4))) & 0xFFu), scale));
        *reinterpret_cast<uint4*>(dst + h) = *reinterpret_cast<const uint4*>(o);
      } else {
        dst[h] = floatToBf16(__fmul_rn(e4m3ToFloat(__ldcg(p + h)), scale));
      }
    }
  } else {
    const float gs = __uint_as_float(loadU32(p + H / 2 + H / 16));
    for (int64_t h = threadIdx.x * V; h < H; h += kThreads * V) {
      // V divides the block of 16: one block scale for the V elements
      const float bs = e4m3ToFloat(__ldcg(p + H / 2 + h / 16));
      if constexpr (V == 8) {
        const uint32_t codes = __ldcg(reinterpret_cast<const uint32_t*>(p + h / 2));
        uint16_t o[8];
#pragma unroll
        for (int u = 0; u < 8; ++u) o[u] = floatToBf16(__fmul_rn(__fmul_rn(e2m1ToFloat((codes >> (4 * u)) & 0xFu), bs), gs));
        *reinterpret_cast<uint4*>(dst + h) = *reinterpret_cast<const uint4*>(o);
      } else {
        const uint32_t code = (__ldcg(p + h / 2) >> ((h % 2) * 4)) & 0xFu;
        dst[h] = floatToBf16(__fmul_rn(__fmul_rn(e2m1ToFloat(code), bs), gs));  // a NaN becomes bf16's canonical NaN, as on the CPU
      }
    }
  }
}

// Contiguous: a CTA per row below usedRows. Masked (touch != nullptr): blockIdx.y is the expert,
// its CTAs stride over its first touch[e] rows only.
template <int V>
__global__ void __launch_bounds__(kThreads) rowsKernel(E::EpShapeView s, const uint8_t* __restrict__ regions, const int32_t* __restrict__ sourceIndex,
                                                       const int32_t* __restrict__ usedRows, const int32_t* __restrict__ touch, int32_t maxPerExpert,
                                                       int64_t rows, uint16_t* __restrict__ out) {
  const int64_t H = s.hidden;
  if (touch != nullptr) {
    const int64_t e = blockIdx.y;
    const int64_t n = min(static_cast<int64_t>(touch[e]), static_cast<int64_t>(maxPerExpert));
    for (int64_t j = blockIdx.x; j < n; j += gridDim.x) {
      const int64_t r = e * maxPerExpert + j;
      decodeRow<V>(s, regions, sourceIndex[r], out + r * H);
    }
    return;
  }
  const int64_t used = min(max(static_cast<int64_t>(*usedRows), int64_t{0}), rows);
  for (int64_t r = blockIdx.x; r < used; r += gridDim.x) decodeRow<V>(s, regions, sourceIndex[r], out + r * H);
}

// ---- combine -------------------------------------------------------------------------------

// A warp per entry (source s, slot j, pair kk) of the received slots: its valid flag and output
// row into region `rank` of s's combine buffer.
__global__ void __launch_bounds__(kThreads) combineSendKernel(E::EpShapeView s, const uint16_t* __restrict__ y, int64_t rows,
                                                              const int32_t* __restrict__ rowIndex, const uint32_t* __restrict__ recvCounts,
                                                              const uint64_t* __restrict__ dataDst, const uint64_t* __restrict__ countDst,
                                                              const uint32_t* __restrict__ epoch, uint32_t* __restrict__ sync, bool vec) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
  const int64_t M = s.maxTokens, H = s.hidden, entries = static_cast<int64_t>(s.ranks) * M * s.k;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5); p < entries; p += warps) {
    const int64_t i = p / s.k, src = i / M, entry = p - src * M * s.k;
    if (i % M >= min(recvCounts[src], static_cast<uint32_t>(M))) continue;
    uint8_t* region = at<uint8_t>(dataDst[src]);
    const int32_t r = rowIndex[p];
    const bool ok = r >= 0 && r < rows;
    if (lane == 0) reinterpret_cast<int32_t*>(region)[entry] = ok ? 1 : 0;
    if (!ok) continue;
    uint16_t* to = reinterpret_cast<uint16_t*>(region + s.combineRowsAt) + entry * H;
    const uint16_t* from = y + static_cast<int64_t>(r) * H;
    if (vec) {
      warpCopy(reinterpret_cast<uint4*>(to), reinterpret_cast<const uint4*>(from), H / 8, lane);
    } else {
      for (int64_t h = lane; h < H; h += 32) to[h] = from[h];
    }
  }
  if (lastBlock(sync)) {
    const uint32_t e = *epoch;
    for (int d = threadIdx.x; d < s.ranks; d += kThreads) {
      storeRelease(at<uint64_t>(countDst[d]), E::countWord(e, min(recvCounts[d], static_cast<uint32_t>(M))));
    }
    __syncthreads();
    if (threadIdx.x == 0) *sync = 0;
  }
}

// A CTA per (token, slice of kThreads * V elements): the k returned rows summed in slot order.
// The pairs' entries are looked up once per CTA; V = 8 (16-byte loads) where hidden % 8 == 0 and
// the output is aligned.
template <int V>
__global__ void __launch_bounds__(kThreads) combineSumKernel(E::EpShapeView s, const uint8_t* __restrict__ regions, const uint32_t* __restrict__ counts,
                                                             const int32_t* __restrict__ combineIndex, const float* __restrict__ weights,
                                                             int64_t tokens, void* __restrict__ out, bool bf16Out) {
  __shared__ const uint16_t* rowOf[E::kMaxTopK];  // nullptr: the pair adds nothing
  __shared__ float weightOf[E::kMaxTopK];
  const int64_t H = s.hidden, MK = s.maxTokens * s.k;
  const int64_t h = (static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x) * V;
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    __syncthreads();  // the last token's entries are read
    if (threadIdx.x < s.k) {
      const int kk = threadIdx.x;
      const int32_t idx = combineIndex[t * s.k + kk];
      const uint16_t* row = nullptr;
      if (idx >= 0) {
        const int64_t d = idx / MK, e = idx % MK;
        if (d < s.ranks && e / s.k < counts[d]) {
          const uint8_t* base = regions + d * s.combineRegionBytes;
          if (static_cast<int32_t>(loadU32(base + 4 * e)) == 1) row = reinterpret_cast<const uint16_t*>(base + s.combineRowsAt) + e * H;
        }
      }
      rowOf[kk] = row;
      weightOf[kk] = weights[t * s.k + kk];
    }
    __syncthreads();
    if (h >= H) continue;
    float acc[V];
#pragma unroll
    for (int u = 0; u < V; ++u) acc[u] = 0.0f;
    for (int kk = 0; kk < s.k; ++kk) {
      const uint16_t* row = rowOf[kk];
      if (row == nullptr) continue;
      const float w = weightOf[kk];
      if constexpr (V == 8) {
        const uint4 q = __ldcg(reinterpret_cast<const uint4*>(row + h));
        const uint32_t words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int u = 0; u < 8; ++u) acc[u] = __fmaf_rn(w, bf16ToFloat(static_cast<uint16_t>(words[u / 2] >> (16 * (u % 2)))), acc[u]);
      } else {
        acc[0] = __fmaf_rn(w, bf16ToFloat(__ldcg(row + h)), acc[0]);
      }
    }
    if (bf16Out) {
      uint16_t* o = static_cast<uint16_t*>(out) + t * H + h;
      if constexpr (V == 8) {
        uint16_t b[8];
#pragma unroll
        for (int u = 0; u < 8; ++u) b[u] = floatToBf16(acc[u]);
        *reinterpret_cast<uint4*>(o) = *reinterpret_cast<const uint4*>(b);
      } else {
        o[0] = floatToBf16(acc[0]);
      }
    } else {
      float* o = static_cast<float*>(out) + t * H + h;
      if constexpr (V == 8) {
        reinterpret_cast<float4*>(o)[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
        reinterpret_cast<float4*>(o)[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
      } else {
        o[0] = acc[0];
      }
    }
  }
}

// Loads every kernel of the family on the current device, once. Under lazy loading (CUDA's
// default) a kernel is loaded at its first launch, and that load may synchronize the context:
// launched after a wait kernel that spins for another rank of this process whose work is not yet
// enqueued, it would block the host until the wait times out. The first ep launch on a device
// (a dispatch's send) loads them all, before any wait of the family can spin there.
cudaError_t loadKernels() {
  static std::atomic<uint64_t> loaded{0};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
  if (bit != 0 && (loaded.load(std::memory_order_acquire) & bit) != 0) return cudaSuccess;
  const void* kernels[] = {
      reinterpret_cast<const void*>(slotsKernel),      reinterpret_cast<const void*>(encodeKernel),
      reinterpret_cast<const void*>(sendKernel),       reinterpret_cast<const void*>(waitKernel),
      reinterpret_cast<const void*>(countKernel),      reinterpret_cast<const void*>(scanKernel),
      reinterpret_cast<const void*>(placeKernel),      reinterpret_cast<const void*>(rowsKernel<1>),
      reinterpret_cast<const void*>(rowsKernel<8>),
      reinterpret_cast<const void*>(combineSendKernel), reinterpret_cast<const void*>(combineSumKernel<1>),
      reinterpret_cast<const void*>(combineSumKernel<8>),
  };
  // not a stream operation: allowed while a graph capture is open on this thread
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  cudaThreadExchangeStreamCaptureMode(&mode);
  for (const void* k : kernels) {
    cudaFuncAttributes attributes;
    if ((err = cudaFuncGetAttributes(&attributes, k)) != cudaSuccess) break;
  }
  cudaThreadExchangeStreamCaptureMode(&mode);
  if (err == cudaSuccess) loaded.fetch_or(bit, std::memory_order_acq_rel);
  return err;
}

unsigned gridOf(int64_t n, int64_t cap) { return static_cast<unsigned>(std::max<int64_t>(1, std::min(n, cap))); }

size_t roundUp256(size_t n) { return (n + 255) / 256 * 256; }

}  // namespace

cudaError_t dispatchSend(const EpDispatchSendArgs& a, const Launch& l) {
  if (const cudaError_t loadErr = loadKernels(); loadErr != cudaSuccess) return loadErr;
  const E::EpShapeView s = E::view(a.shape);
  const size_t countBytes = roundUp256(4 * static_cast<size_t>(s.ranks));
  // a bf16 row that fills its payload exactly (hidden % 8 == 0) is sent straight from x
  const bool direct = s.payload == E::kPayloadBf16 && s.metaAt == 2 * s.hidden && reinterpret_cast<uintptr_t>(a.x) % 16 == 0;
  uint8_t* scratch = static_cast<uint8_t*>(l.workspace.get(countBytes + (direct ? 0 : static_cast<size_t>(a.tokens) * s.metaAt)));
  uint32_t* sendCount = reinterpret_cast<uint32_t*>(scratch);
  uint8_t* staging = scratch + countBytes;
  slotsKernel<<<static_cast<unsigned>(s.ranks), kThreads, 0, l.stream>>>(a.ids, a.tokens, s.k, s.experts, s.experts / s.ranks, s.maxTokens,
                                                                          a.combineIndex, sendCount, a.errors);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  if (a.tokens > 0 && !direct) {
    encodeKernel<<<static_cast<unsigned>(a.tokens), kThreads, 0, l.stream>>>(a.x, s.hidden, s.payload, s.metaAt, staging);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  const uint8_t* source = direct ? reinterpret_cast<const uint8_t*>(a.x) : staging;
  sendKernel<<<static_cast<unsigned>(a.sms), kThreads, 0, l.stream>>>(s, source, s.metaAt, a.ids, a.weights, a.tokens, a.combineIndex, a.dataDst,
                                                                      a.countDst, sendCount, a.epoch, a.sync);
  return cudaGetLastError();
}

cudaError_t dispatchRecv(const EpDispatchRecvArgs& a, const Launch& l) {
  if (const cudaError_t loadErr = loadKernels(); loadErr != cudaSuccess) return loadErr;
  const E::EpShapeView s = E::view(a.shape);
  const int L = s.experts / s.ranks;
  const int64_t slots = static_cast<int64_t>(s.ranks) * s.maxTokens;
  const int64_t tiles = (slots + kTile - 1) / kTile;
  int32_t* tileCounts = static_cast<int32_t*>(l.workspace.get(4 * static_cast<size_t>(tiles * (L + 1) + 2 * L)));
  int32_t* placed = tileCounts + tiles * (L + 1);
  int32_t* touch = placed + L;
  const bool masked = a.maxPerExpert > 0;
  cudaError_t err = cudaMemsetAsync(a.rowIndex, 0xFF, 4 * static_cast<size_t>(slots) * s.k, l.stream);
  if (err == cudaSuccess && a.rows > 0) err = cudaMemsetAsync(a.sourceIndex, 0xFF, 4 * static_cast<size_t>(a.rows), l.stream);
  if (err != cudaSuccess) return err;
  waitKernel<<<1, kThreads, 0, l.stream>>>(a.counts, s.ranks, a.epoch, 1, true, s.maxTokens, a.timeoutNs, a.status, E::kStatusDispatchTimeout,
                                           a.recvCounts);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  // tiles fit a grid's x dimension: slots * k < 2^31
  countKernel<<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>((L + 1 + kWarps - 1) / kWarps)), kThreads, 0, l.stream>>>(
      s, a.regions, a.recvCounts, tileCounts);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  scanKernel<<<1, 1024, 0, l.stream>>>(L, tiles, a.align, a.maxPerExpert, tileCounts, placed, touch, a.layoutCounts, a.offsets, a.usedRows,
                                       a.dropped, a.errors);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  placeKernel<<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>((L + kWarps - 1) / kWarps)), kThreads, 0, l.stream>>>(
      s, a.regions, a.recvCounts, tileCounts, placed, a.offsets, a.sourceIndex, a.rowIndex);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  if (a.rows > 0) {
    // 16-byte rows where every row of the output starts on 16 bytes
    const bool vec = s.hidden % 8 == 0 && reinterpret_cast<uintptr_t>(a.tokensOut) % 16 == 0;
    // masked: about 2048 CTAs over the experts (L <= 1024, so at least 2 per expert)
    const dim3 grid = masked ? dim3(gridOf(std::min<int64_t>(a.maxPerExpert, (2048 + L - 1) / L), 1 << 16), static_cast<unsigned>(L))
                             : dim3(gridOf(a.rows, 1 << 16));
    const int32_t* t = masked ? touch : nullptr;
    if (vec) rowsKernel<8><<<grid, kThreads, 0, l.stream>>>(s, a.regions, a.sourceIndex, a.usedRows, t, a.maxPerExpert, a.rows, a.tokensOut);
    else rowsKernel<1><<<grid, kThreads, 0, l.stream>>>(s, a.regions, a.sourceIndex, a.usedRows, t, a.maxPerExpert, a.rows, a.tokensOut);
    err = cudaGetLastError();
  }
  return err;
}

cudaError_t combineSend(const EpCombineSendArgs& a, const Launch& l) {
  if (const cudaError_t loadErr = loadKernels(); loadErr != cudaSuccess) return loadErr;
  const E::EpShapeView s = E::view(a.shape);
  // 16-byte copies where every row of y and of the regions starts on 16 bytes
  const bool vec = s.hidden % 8 == 0 && reinterpret_cast<uintptr_t>(a.y) % 16 == 0;
  combineSendKernel<<<static_cast<unsigned>(a.sms), kThreads, 0, l.stream>>>(s, a.y, a.rows, a.rowIndex, a.recvCounts, a.dataDst, a.countDst, a.epoch,
                                                                             a.sync, vec);
  return cudaGetLastError();
}

cudaError_t combineRecv(const EpCombineRecvArgs& a, const Launch& l) {
  if (const cudaError_t loadErr = loadKernels(); loadErr != cudaSuccess) return loadErr;
  const E::EpShapeView s = E::view(a.shape);
  uint32_t* counts = static_cast<uint32_t*>(l.workspace.get(4 * static_cast<size_t>(s.ranks)));
  waitKernel<<<1, kThreads, 0, l.stream>>>(a.counts, s.ranks, const_cast<uint32_t*>(a.epoch), 0, false, s.maxTokens, a.timeoutNs, a.status,
                                           E::kStatusCombineTimeout, counts);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || a.tokens == 0) return err;
  // 16-byte loads where every returned row and every output row starts on 16 bytes
  const bool vec = s.hidden % 8 == 0 && reinterpret_cast<uintptr_t>(a.out) % 16 == 0;
  const int64_t per = static_cast<int64_t>(kThreads) * (vec ? 8 : 1);
  const dim3 grid(gridOf(a.tokens, 1 << 16), static_cast<unsigned>((s.hidden + per - 1) / per));
  const bool bf16Out = a.outType == DType::BF16;
  if (vec) combineSumKernel<8><<<grid, kThreads, 0, l.stream>>>(s, a.regions, counts, a.combineIndex, a.weights, a.tokens, a.out, bf16Out);
  else combineSumKernel<1><<<grid, kThreads, 0, l.stream>>>(s, a.regions, counts, a.combineIndex, a.weights, a.tokens, a.out, bf16Out);
  return cudaGetLastError();
}

}  // namespace moe::kernels::ep
