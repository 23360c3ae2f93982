// Expert-parallel dispatch and combine on devices that write each other's memory. The bytes and
// their meaning are those of common/ep.h and the CPU reference (cpu/ep/ep.cpp); the payload
// arithmetic is the nvfp4 family's device code, so that both backends give the same bits.
//
// Ordering: a sender's CTAs write rows into the receivers' regions, fence at system scope and
// count themselves done on a counter in the sender's memory; the last CTA fences again and stores
// each count word with st.release.sys. A receiver loads the words with ld.acquire.sys (one CTA,
// bounded by %globaltimer) and then reads the regions in later kernels, bypassing L1 (__ldcg).
// An overlapped send's payloads are ordered per chunk of slots the same way: each thread fences
// its stores before its group's slots are counted, the slot completing a chunk stores the chunk's
// flag with st.release.sys, and the rows kernel loads it with ld.acquire.sys before the slot.
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "kernels/ep/ep.h"
#include "kernels/nvfp4/common.cuh"
#include "kernels/nvfp4/quantize_block.cuh"

namespace moe::kernels::ep {
namespace {
namespace E = moe::ep;
using nvfp4::detail::e2m1ToFloat;
using nvfp4::detail::e4m3ToFloat;

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

__device__ __forceinline__ uint32_t loadAcquire(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void storeRelease(uint32_t* p, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// A release/acquire fence at system scope: what ordering a thread's stores before a later strong
// write that another thread observes needs (no stronger fence.sc; both timed the same here).
__device__ __forceinline__ void fenceAcqRelSys() { asm volatile("fence.acq_rel.sys;" ::: "memory"); }

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

// The copy kernels keep kUnroll 16-byte loads in flight per lane before their stores: with one
// load at a time a warp waits a DRAM latency per 512 bytes, which held a 16-CTA copy kernel near
// 7 GB/s per SM.
constexpr int kUnroll = 8;

// A part of a row: kPart 16-byte chunks, one load per lane and unroll step (4 KB).
constexpr int kPart = 32 * kUnroll;

// Part `part` of a row of n 16-byte chunks, to several destinations: lane b holds destination
// b's row address in `to`, `mask` names the lanes that hold one; each chunk is loaded once and
// stored to each of them. Every lane runs every step (the shuffles need the whole warp).
__device__ __forceinline__ void warpScatterPart(uint64_t to, uint32_t mask, const uint4* __restrict__ from, int64_t n, int64_t part, int lane) {
  const int64_t c0 = part * kPart + lane;
  uint4 v[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    if (c0 + 32 * u < n) v[u] = from[c0 + 32 * u];
  }
  for (uint32_t m = mask; m != 0; m &= m - 1) {
    uint4* dst = at<uint4>(__shfl_sync(0xFFFFFFFFu, static_cast<unsigned long long>(to), __ffs(m) - 1));
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (c0 + 32 * u < n) dst[c0 + 32 * u] = v[u];
    }
  }
}

// ---- dispatch: send ------------------------------------------------------------------------

// 1024 threads, rounds of four tokens per thread.
constexpr int kSlotThreads = 1024;
constexpr int kSlotRound = 4 * kSlotThreads;

// f(q, ids[q]) for q in [0, pairs), a thread per pair: each thread's 16 loads are issued before
// any is used, so a pass costs a memory round trip per 16 pairs a thread, not one per pair.
template <class F>
__device__ __forceinline__ void forPairs(const int32_t* __restrict__ ids, int pairs, F f) {
  constexpr int kBatch = 16;
  for (int q0 = threadIdx.x; q0 < pairs; q0 += kBatch * kSlotThreads) {
    int32_t id[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) id[u] = q0 + u * kSlotThreads < pairs ? ids[q0 + u * kSlotThreads] : 0;
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      if (q0 + u * kSlotThreads < pairs) f(q0 + u * kSlotThreads, id[u]);
    }
  }
}

// Block d: the tokens that go to destination d, in order, get slots 0..; combineIndex of their
// pairs for d, and sendCount[d]. Block 0 also marks the pairs whose id is out of range. Per round
// of kSlotRound tokens: a thread per pair (coalesced loads of the ids) flags the tokens with a
// pair on d, each thread counts four consecutive tokens' flags, one block-wide scan gives their
// slots, and a second pass over the pairs writes combineIndex.
__global__ void __launch_bounds__(kSlotThreads) slotsKernel(const int32_t* __restrict__ ids, int64_t tokens, int k, int experts, int local,
                                                        int64_t maxTokens, int32_t* __restrict__ combineIndex,
                                                        uint32_t* __restrict__ sendCount, int32_t* __restrict__ errors, const uint32_t* __restrict__ epoch) {
  constexpr int kSlotWarps = kSlotThreads / 32;
  __shared__ uint32_t here[kSlotRound];
  __shared__ uint32_t slotOf[kSlotRound];
  __shared__ uint32_t warpSum[kSlotWarps];
  const int d = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint32_t base = 0;
  int32_t bad = 0;
  // The kernel runs on R SMs only, so its instructions count: no integer division per pair.
  // q / k as a high multiply by floor(2^32 / k) + 1, exact while q * k < 2^32 (here q < 2^16,
  // k <= 16); "id on d" as one unsigned compare.
  const uint32_t magic = static_cast<uint32_t>((uint64_t{1} << 32) / static_cast<uint64_t>(k) + 1);
  auto tokenOf = [&](int q) { return static_cast<int>(k == 1 ? static_cast<uint32_t>(q) : __umulhi(static_cast<uint32_t>(q), magic)); };
  auto onD = [&](int32_t id) { return static_cast<uint32_t>(id - d * local) < static_cast<uint32_t>(local); };
  for (int64_t t0 = 0; t0 < tokens; t0 += kSlotRound) {
    const int n = static_cast<int>(min(static_cast<int64_t>(kSlotRound), tokens - t0));
    const int pairs = n * k;
    const int32_t* roundIds = ids + t0 * k;
    int32_t* roundIndex = combineIndex + t0 * k;
    for (int i = threadIdx.x; i < n; i += kSlotThreads) here[i] = 0;
    __syncthreads();
    forPairs(roundIds, pairs, [&](int q, int32_t id) {
      const bool valid = id >= 0 && id < experts;
      if (valid && onD(id)) atomicOr(&here[tokenOf(q)], 1u);
      if (d == 0 && !valid) {
        roundIndex[q] = -1;
        ++bad;
      }
    });
    __syncthreads();
    const int i0 = threadIdx.x * 4;
    uint32_t flags = 0;
#pragma unroll
    for (int u = 0; u < 4; ++u) flags |= (i0 + u < n && here[i0 + u] != 0 ? 1u : 0u) << u;
    const uint32_t mine = __popc(flags);
    uint32_t inc = mine;
#pragma unroll
    for (int off = 1; off < 32; off *= 2) {
      const uint32_t v = __shfl_up_sync(0xFFFFFFFFu, inc, off);
      if (lane >= off) inc += v;
    }
    if (lane == 31) warpSum[warp] = inc;
    __syncthreads();
    uint32_t before = base + inc - mine, total = 0;
    for (int w = 0; w < kSlotWarps; ++w) {
      before += w < warp ? warpSum[w] : 0u;
      total += warpSum[w];
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      if ((flags >> u) & 1u) slotOf[i0 + u] = before + __popc(flags & ((1u << u) - 1u));
    }
    __syncthreads();
    forPairs(roundIds, pairs, [&](int q, int32_t id) {
      if (id >= 0 && id < experts && onD(id)) {
        const int t = tokenOf(q);
        roundIndex[q] = static_cast<int32_t>((static_cast<int64_t>(d) * maxTokens + slotOf[t]) * k + (q - t * k));
      }
    });
    base += total;
    __syncthreads();  // here, slotOf and warpSum are the next round's
  }
  if (threadIdx.x == 0) sendCount[d] = base;
  // sendCount[ranks]: this call's number, for an overlapped send's payloadKernel
  if (d == 0 && threadIdx.x == 0) sendCount[gridDim.x] = *epoch + 1;
  if (d == 0) {
    bad = __reduce_add_sync(0xFFFFFFFFu, bad);
    if (lane == 0) warpSum[warp] = static_cast<uint32_t>(bad);
    __syncthreads();
    if (threadIdx.x == 0) {
      int32_t n = 0;
      for (int w = 0; w < kSlotWarps; ++w) n += static_cast<int32_t>(warpSum[w]);
      *errors = n;
    }
  }
}

// Block t: token t's payload into staging row t (metaAt bytes, the padding zeroed). Rows of x
// that start on 16 bytes are read with vector loads (fewer load instructions; what is left is
// bound by the exact division per element that the CPU reference's bits need).
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
  const bool vec = reinterpret_cast<uintptr_t>(row) % 16 == 0;
  if (payload == E::kPayloadFp8) {
    // a warp per block of 128: f32 scale amax / 448 (1 for a zero block), e4m3(x / scale); a whole
    // block of an aligned row as four elements per lane (one 8-byte load, one 4-byte store)
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t blocks = (hidden + E::kFp8Block - 1) / E::kFp8Block;
    for (int64_t b = warp; b < blocks; b += kWarps) {
      const int64_t h0 = b * E::kFp8Block, h1 = min(hidden, h0 + E::kFp8Block);
      const bool whole = vec && h1 - h0 == E::kFp8Block;
      float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      float amax = 0.0f;
      if (whole) {
        const uint2 u = __ldg(reinterpret_cast<const uint2*>(row + h0) + lane);
        const uint32_t w[2] = {u.x, u.y};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          v[i] = bf16ToFloat(static_cast<uint16_t>(w[i / 2] >> (16 * (i % 2))));
          const float a = fabsf(v[i]);
          amax = a > amax ? a : amax;  // NaN never wins
        }
      } else {
        for (int64_t h = h0 + lane; h < h1; h += 32) {
          const float a = fabsf(bf16ToFloat(row[h]));
          amax = a > amax ? a : amax;
        }
      }
      for (int off = 16; off >= 1; off /= 2) {
        const float o = __shfl_xor_sync(0xFFFFFFFFu, amax, off);
        amax = o > amax ? o : amax;
      }
      float s = __fdiv_rn(amax, 448.0f);
      if (s == 0.0f) s = 1.0f;
      if (lane == 0) storeU32(out + hidden + 4 * b, __float_as_uint(s));
      if (whole) {
        uint32_t codes = 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) codes |= static_cast<uint32_t>(__nv_cvt_float_to_fp8(__fdiv_rn(v[i], s), __NV_SATFINITE, __NV_E4M3)) << (8 * i);
        reinterpret_cast<uint32_t*>(out + h0)[lane] = codes;
      } else {
        for (int64_t h = h0 + lane; h < h1; h += 32) {
          out[h] = static_cast<uint8_t>(__nv_cvt_float_to_fp8(__fdiv_rn(bf16ToFloat(row[h]), s), __NV_SATFINITE, __NV_E4M3));
        }
      }
    }
    return;
  }
  // nvfp4: the quantizer of the nvfp4 family on one row: amax, global scale, then each block of
  // 16 through the family's block routine (quantize_block.cuh); hidden % 16 == 0
  uint32_t key = 0;
  if (vec) {
    for (int64_t c = threadIdx.x; c < hidden / 8; c += kThreads) {
      const uint4 u = __ldg(reinterpret_cast<const uint4*>(row) + c);
      const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) key = max(key, max(absKeyBf16(w[i] & 0xFFFFu), absKeyBf16(w[i] >> 16)));
    }
  } else {
    for (int64_t h = threadIdx.x; h < hidden; h += kThreads) key = max(key, absKeyBf16(row[h]));
  }
  const float amax = __uint_as_float(blockMax(key, shared));
  float gs = __fdiv_rn(amax, 2688.0f);
  if (gs == 0.0f) gs = 1.0f;
  if (amax != amax) gs = amax;
  if (threadIdx.x == 0) storeU32(out + hidden / 2 + hidden / 16, __float_as_uint(gs));
  for (int64_t b = threadIdx.x; b < hidden / 16; b += kThreads) {
    float v[16];
    uint32_t signs = 0;
    if (vec) {
      nvfp4::detail::loadBlock<DType::BF16>(row, b, v, signs);
    } else {
      for (int i = 0; i < 16; ++i) {
        const uint16_t bits = row[b * 16 + i];
        signs |= static_cast<uint32_t>(bits >> 15) << i;
        v[i] = bf16ToFloat(bits);
      }
    }
    uint2 codes;
    uint8_t scale;
    nvfp4::detail::quantizeBlockValues(v, signs, gs, codes, scale);
    // staging rows start on 16 bytes: block b's codes on 8
    reinterpret_cast<uint2*>(out)[b] = codes;
    out[hidden / 2 + b] = scale;
  }
}

// The last CTA of a grid to get here (after its own writes) publishes the count words.
// One fence per CTA, not per thread: the barrier orders every thread's stores before thread 0's
// fence, whose cumulativity carries them to whoever acquires what the last CTA publishes (the
// pattern of a cooperative grid barrier), so a CTA of 1024 threads pays one fence, not 32 warps' worth.
__device__ __forceinline__ bool lastBlock(uint32_t* sync) {
  __shared__ bool last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence_system();
    const uint32_t done = atomicAdd(sync, 1u);
    last = done == gridDim.x - 1;
    if (last) __threadfence_system();
  }
  __syncthreads();
  return last;
}

// In the grid's last CTA: count word (epoch *epoch + bump, count(d)) to every destination d, then
// sync re-armed for the next launch.
template <class Count>
__device__ __forceinline__ void publishCounts(uint32_t* sync, const uint64_t* __restrict__ countDst, int ranks,
                                              const uint32_t* epoch, uint32_t bump, Count count) {
  if (!lastBlock(sync)) return;
  const uint32_t e = *epoch + bump;
  for (int d = threadIdx.x; d < ranks; d += blockDim.x) storeRelease(at<uint64_t>(countDst[d]), E::countWord(e, count(d)));
  __syncthreads();
  if (threadIdx.x == 0) *sync = 0;
}

// A decode step's send does slotsKernel's work itself (Scan): at most kScanTokens tokens and
// kScanRanks ranks, every CTA scanning them into shared memory (a few thousand ids), CTA 0 also
// writing combineIndex and errors: one launch fewer where the launches are the cost.
constexpr int kScanTokens = 1024;
constexpr int kScanRanks = 8;

// What a send kernel writes: everything, then the count words (kSendAll); an overlapped send's
// metadata, then the count words with kPayloadFollows (kSendMeta; payloadKernel sends the rest).
constexpr int kSendAll = 0;
constexpr int kSendMeta = 1;

// Scan's shared memory: each token's destinations, then its slot on each (the order of the
// tokens that go there).
struct ScanShared {
  uint32_t destMask[kScanTokens];
  uint16_t slotAt[kScanTokens * kScanRanks];
  uint32_t destCount[kScanRanks];
  int32_t bad;
};

// A warp per (token, part of its row): lane i < k looks up pair i, and the lanes of the token's
// first pair on each destination hold that destination's slot; the part of the payload row
// (source + t * sourceStride: the staging row, or x itself for an aligned bf16 payload) is read
// once and stored to every such slot, so each token reaches each destination once; part 0 also
// writes each slot's metadata. Parts spread a decode step's few tokens over many warps. This is
// the body, on CTAs of Threads threads (sendKernel's 256, the one-launch decode dispatch's 1024);
// `scan` is Scan's shared memory.
template <bool Scan, int Stage, int Threads>
__device__ __forceinline__ void sendBody(const E::EpShapeView& s, const uint8_t* __restrict__ source, int64_t sourceStride,
                                         const int32_t* __restrict__ ids, const float* __restrict__ weights, int64_t tokens,
                                         int32_t* __restrict__ combineIndex, const uint64_t* __restrict__ dataDst,
                                         const uint64_t* __restrict__ countDst, const uint32_t* __restrict__ sendCount,
                                         int32_t* __restrict__ errors, const uint32_t* __restrict__ epoch, uint32_t* __restrict__ sync,
                                         ScanShared* scan) {
  static_assert(!Scan || Stage == kSendAll, "an overlapped send takes its slots from slotsKernel");
  constexpr int Warps = Threads / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * Warps;
  const int k = s.k, local = s.experts / s.ranks;
  const int64_t chunks = s.metaAt / 16, parts = Stage == kSendMeta ? 1 : (chunks + kPart - 1) / kPart;
  if constexpr (Scan) {
    uint32_t* destMask = scan->destMask;
    uint16_t* slotAt = scan->slotAt;
    uint32_t* destCount = scan->destCount;
    int32_t& bad = scan->bad;
    if (threadIdx.x == 0) bad = 0;
    for (int t = threadIdx.x; t < tokens; t += Threads) {
      uint32_t m = 0;
      for (int i = 0; i < k; ++i) {
        const int32_t id = ids[t * k + i];
        if (id >= 0 && id < s.experts) m |= 1u << (id / local);
      }
      destMask[t] = m;
    }
    __syncthreads();
    for (int d = warp; d < s.ranks; d += Warps) {
      uint32_t base = 0;
      for (int t0 = 0; t0 < tokens; t0 += 32) {
        const int t = t0 + lane;
        const bool here = t < tokens && ((destMask[t] >> d) & 1u) != 0;
        const uint32_t ballot = __ballot_sync(0xFFFFFFFFu, here);
        if (here) slotAt[t * kScanRanks + d] = static_cast<uint16_t>(base + __popc(ballot & ((1u << lane) - 1u)));
        base += __popc(ballot);
      }
      if (lane == 0) destCount[d] = base;
    }
    __syncthreads();
    if (blockIdx.x == 0) {
      int32_t n = 0;
      for (int p = threadIdx.x; p < tokens * k; p += Threads) {
        const int32_t id = ids[p];
        const bool valid = id >= 0 && id < s.experts;
        const int32_t d = valid ? id / local : 0, t = p / k;
        combineIndex[p] = valid ? static_cast<int32_t>((d * s.maxTokens + slotAt[t * kScanRanks + d]) * k + p % k) : -1;
        n += valid ? 0 : 1;
      }
      n = __reduce_add_sync(0xFFFFFFFFu, n);
      if (lane == 0 && n != 0) atomicAdd(&bad, n);
      __syncthreads();
      if (threadIdx.x == 0) *errors = bad;
    }
  }
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * Warps + warp; item < tokens * parts; item += warps) {
    const int64_t t = item / parts, part = item % parts;
    int32_t id = -1, d = -1;
    int64_t slot = 0;
    if (lane < k) {
      id = ids[t * k + lane];
      if constexpr (Scan) {
        if (id >= 0 && id < s.experts) {
          d = id / local;
          slot = scan->slotAt[t * kScanRanks + d];
        }
      } else {
        const int32_t ci = combineIndex[t * k + lane];
        d = ci >= 0 ? id / local : -1;
        slot = ci / k - static_cast<int64_t>(d) * s.maxTokens;
      }
    }
    const uint32_t same = __match_any_sync(0xFFFFFFFFu, d);
    const bool first = d >= 0 && (same & ((1u << lane) - 1u)) == 0;
    const uint32_t firsts = __ballot_sync(0xFFFFFFFFu, first);
    uint64_t dst = 0;
    if (first) dst = dataDst[d] + static_cast<uint64_t>(slot * s.slotBytes);
    if constexpr (Stage != kSendMeta) warpScatterPart(dst, firsts, reinterpret_cast<const uint4*>(source + t * sourceStride), chunks, part, lane);
    if (part != 0) continue;
    for (uint32_t m = firsts; m != 0; m &= m - 1) {
      const int b = __ffs(m) - 1;
      const int32_t db = __shfl_sync(0xFFFFFFFFu, d, b);
      int32_t* meta = reinterpret_cast<int32_t*>(at<uint8_t>(__shfl_sync(0xFFFFFFFFu, static_cast<unsigned long long>(dst), b)) + s.metaAt);
      float* w = reinterpret_cast<float*>(meta + 1 + k);
      if (lane == 0) meta[0] = static_cast<int32_t>(t);
      if (lane < k) {
        const bool mine = d == db;
        meta[1 + lane] = mine ? id - db * local : -1;
        w[lane] = mine ? weights[t * k + lane] : 0.0f;
      }
    }
  }
  publishCounts(sync, countDst, s.ranks, epoch, 1u, [&](int d) { return (Scan ? scan->destCount[d] : sendCount[d]) | (Stage == kSendMeta ? E::kPayloadFollows : 0u); });
}

template <bool Scan, int Stage>
__global__ void __launch_bounds__(kThreads) sendKernel(E::EpShapeView s, const uint8_t* __restrict__ source, int64_t sourceStride,
                                                       const int32_t* __restrict__ ids, const float* __restrict__ weights, int64_t tokens,
                                                       int32_t* __restrict__ combineIndex, const uint64_t* __restrict__ dataDst,
                                                       const uint64_t* __restrict__ countDst, const uint32_t* __restrict__ sendCount,
                                                       int32_t* __restrict__ errors, const uint32_t* __restrict__ epoch, uint32_t* __restrict__ sync) {
  __shared__ std::conditional_t<Scan, ScanShared, char> scan;
  sendBody<Scan, Stage, kThreads>(s, source, sourceStride, ids, weights, tokens, combineIndex, dataDst, countDst, sendCount, errors, epoch, sync,
                                  reinterpret_cast<ScanShared*>(&scan));
}

// An overlapped send's payloads (beside the receive, on the side stream): a CTA per group of
// kPayloadGroup tokens (grid-stride), the group's pairs looked up once into shared memory, its
// warps over the group's (token, part) items as in sendKernel; then every thread fences its
// stores, and a thread per pair counts the token's slot on the chunk of the pair's destination
// where the pair is the token's first there (chunkDone, in this device's memory). The slot
// that completes a chunk raises the chunk's flag in the destination region (call number
// sendCount[ranks]: the receive advances *epoch meanwhile) and re-arms the counter. One fence per
// thread and group of tokens, not per part: a fence waits for the thread's stores to land.
// skipOwn: the slots this rank sends itself get no payload (the receive reads them from x).
// The kernel runs on at most kPayloadCtas CTAs of kPayloadThreads: on every SM, the stores
// queued for the link (several MB in flight) held up every other load on the device, and the
// receive's layout kernels beside them ran 10-20x slower; 48 SMs of 32 warps keep the link about
// as busy (benchmarks/NOTES.md, ep v9).
constexpr int kPayloadGroup = 16;
constexpr int kPayloadThreads = 1024;
constexpr unsigned kPayloadCtas = 48;

__global__ void __launch_bounds__(kPayloadThreads) payloadKernel(E::EpShapeView s, const uint8_t* __restrict__ source, int64_t sourceStride,
                                                          const int32_t* __restrict__ ids, int64_t tokens, const int32_t* __restrict__ combineIndex,
                                                          const uint64_t* __restrict__ dataDst, const uint32_t* __restrict__ sendCount,
                                                          uint32_t* __restrict__ chunkDone, bool skipOwn) {
  // the group's pairs, looked up once per CTA: destination (-1: none, or this rank's own where
  // skipped) and slot there
  __shared__ int32_t dest[kPayloadGroup][E::kMaxTopK];
  __shared__ int32_t slotOn[kPayloadGroup][E::kMaxTopK];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int k = s.k, local = s.experts / s.ranks;
  const int64_t M = s.maxTokens, n16 = s.metaAt / 16, parts = (n16 + kPart - 1) / kPart, chunkCount = E::chunks(M);
  const uint32_t e = sendCount[s.ranks];
  for (int64_t t0 = static_cast<int64_t>(blockIdx.x) * kPayloadGroup; t0 < tokens; t0 += static_cast<int64_t>(gridDim.x) * kPayloadGroup) {
    const int n = static_cast<int>(min(static_cast<int64_t>(kPayloadGroup), tokens - t0));
    if (threadIdx.x < n * k) {
      const int g = threadIdx.x / k, i = threadIdx.x - g * k;
      const int64_t p = (t0 + g) * k + i;
      const int32_t ci = combineIndex[p];
      const int32_t d = ci >= 0 ? ids[p] / local : -1;
      dest[g][i] = skipOwn && d == s.rank ? -1 : d;
      slotOn[g][i] = d >= 0 ? ci / k - d * static_cast<int32_t>(M) : 0;
    }
    __syncthreads();
    for (int64_t item = warp; item < n * parts; item += kPayloadThreads / 32) {
      const int g = static_cast<int>(item / parts);
      const int64_t t = t0 + g, part = item % parts;
      const int32_t d = lane < k ? dest[g][lane] : -1;
      const uint32_t same = __match_any_sync(0xFFFFFFFFu, d);
      const bool first = d >= 0 && (same & ((1u << lane) - 1u)) == 0;
      const uint32_t firsts = __ballot_sync(0xFFFFFFFFu, first);
      const uint64_t dst = first ? dataDst[d] + static_cast<uint64_t>(static_cast<int64_t>(slotOn[g][lane]) * s.slotBytes) : 0;
      warpScatterPart(dst, firsts, reinterpret_cast<const uint4*>(source + t * sourceStride), n16, part, lane);
    }
    fenceAcqRelSys();  // this thread's stores, before the group's slots are counted
    __syncthreads();
    // a thread per pair: the token's slot on d is counted at its first pair there
    if (threadIdx.x < n * k) {
      const int g = threadIdx.x / k, i = threadIdx.x - g * k;
      const int32_t d = dest[g][i];
      bool seen = d < 0;
      for (int q = 0; q < i && !seen; ++q) seen = dest[g][q] == d;
      if (!seen) {
        const int64_t c = slotOn[g][i] / E::kChunkSlots;
        const uint32_t expected = static_cast<uint32_t>(min(static_cast<int64_t>(E::kChunkSlots), sendCount[d] - c * E::kChunkSlots));
        uint32_t* done = chunkDone + d * chunkCount + c;
        if (atomicAdd(done, 1u) + 1u == expected) {
          fenceAcqRelSys();  // every counted slot's stores, before the flag
          storeRelease(at<uint32_t>(dataDst[d] + static_cast<uint64_t>(s.flagsAt + 4 * c)), e);
          *done = 0;
        }
      }
    }
    __syncthreads();  // dest and slotOn are the next group's
  }
}

// ---- waits ---------------------------------------------------------------------------------

// One thread waits for a chunk flag to carry call number e, until `deadline` or until another wait
// of the call has run out (status set: the others then do not wait again). False where it did not
// come: the first to give up records `code` and `rank` in status.
__device__ __forceinline__ bool awaitFlag(const uint32_t* flag, uint32_t e, uint64_t deadline, int32_t* __restrict__ status, int32_t code,
                                          int32_t rank) {
  while (loadAcquire(flag) != e) {
    if (globalTimer() > deadline || __ldcg(status) != 0) {
      if (atomicCAS(status, 0, code) == 0) status[1] = rank;
      return false;
    }
    __nanosleep(64);
  }
  return true;
}

// The calling CTA waits for the count words of `ranks` ranks to carry call number e: counts[r] =
// the rows of rank r's word, 0 for a rank still missing at the deadline (the first CTA to see a
// timeout records it in status, with the first such rank); follows[r] (where given) = whether
// rank r's payloads follow behind chunk flags. Threads r < ranks spin; the whole CTA returns
// together, and its threads may then read what the words publish.
__device__ void ctaWait(const uint64_t* __restrict__ words, int ranks, uint32_t e, int64_t maxTokens, int64_t timeoutNs, int32_t* __restrict__ status,
                        int32_t code, uint32_t* __restrict__ counts, uint32_t* __restrict__ follows) {
  __shared__ uint64_t deadline;
  __shared__ int missing;
  if (threadIdx.x == 0) {
    deadline = globalTimer() + static_cast<uint64_t>(timeoutNs);
    missing = INT_MAX;
  }
  __syncthreads();
  for (int r = threadIdx.x; r < ranks; r += blockDim.x) {
    uint32_t n = 0, later = 0;
    for (;;) {
      const uint64_t w = loadAcquire(words + r);
      if (static_cast<uint32_t>(w >> 32) == e) {
        n = min(static_cast<uint32_t>(w) & ~E::kPayloadFollows, static_cast<uint32_t>(maxTokens));
        later = (static_cast<uint32_t>(w) & E::kPayloadFollows) != 0 ? 1u : 0u;
        break;
      }
      if (globalTimer() > deadline) {
        atomicMin(&missing, r);
        break;
      }
      __nanosleep(128);
    }
    counts[r] = n;
    if (follows) follows[r] = later;
  }
  __syncthreads();
  if (threadIdx.x == 0 && missing != INT_MAX && atomicCAS(status, 0, code) == 0) status[1] = missing;
}

// One CTA: ctaWait for call number *epoch + ahead into counts (global, for later kernels);
// advance: then *epoch = that number.
__global__ void __launch_bounds__(kThreads) waitKernel(const uint64_t* __restrict__ words, int ranks, uint32_t* __restrict__ epoch, uint32_t ahead,
                                                       bool advance, int64_t maxTokens, int64_t timeoutNs, int32_t* __restrict__ status,
                                                       int32_t code, uint32_t* __restrict__ counts, uint32_t* __restrict__ follows) {
  const uint32_t e = *epoch + ahead;
  ctaWait(words, ranks, e, maxTokens, timeoutNs, status, code, counts, follows);
  if (threadIdx.x == 0 && advance) *epoch = e;
}

// ---- dispatch: receive ---------------------------------------------------------------------

// The layout of a large receive in three launches over tiles of kTile receive slots (a small
// one takes layoutSmallKernel below):
//   countKernel: a thread per pair of the tile: its local id into lid (L for a malformed one, -1
//                for none), its rowIndex reset to -1, and the tile's count per expert through a
//                shared-memory histogram;
//   scanKernel:  one CTA: each expert's pairs before each tile, its rows, the offsets;
//   placeKernel: one warp per tile walks the tile's pairs in order (slot, then k) from shared
//                memory, so that within an expert the pairs keep slot order.
// Small tiles keep the ordered walk short (kTile * k pairs); the scan's loop over tiles reads
// eight at a time.
constexpr int kTile = 64;

// The local id of received pair p: L for a malformed one, -1 for none (a slot past its source's
// count, or a pair of another rank).
__device__ __forceinline__ int32_t receivedId(const E::EpShapeView& s, const uint8_t* __restrict__ regions, const uint32_t* __restrict__ counts,
                                              int64_t p, int L) {
  const int64_t i = p / s.k, r = i / s.maxTokens, j = i % s.maxTokens;
  if (j >= counts[r]) return -1;
  // slots and their metadata start on 16 bytes: aligned loads
  const int32_t raw = __ldcg(reinterpret_cast<const int32_t*>(regions + r * s.regionBytes + j * s.slotBytes + s.metaAt) + 1 + p % s.k);
  return raw == -1 ? -1 : (raw < -1 || raw >= L ? L : raw);
}

// Also clears sourceIndex (rows entries, grid-stride) before placeKernel writes the placed rows.
__global__ void __launch_bounds__(kThreads) countKernel(E::EpShapeView s, const uint8_t* __restrict__ regions, const uint32_t* __restrict__ counts,
                                                        int32_t* __restrict__ lid, int32_t* __restrict__ rowIndex,
                                                        int32_t* __restrict__ tileCounts, int32_t* __restrict__ sourceIndex, int64_t rows) {
  __shared__ int32_t hist[E::kMaxLocalExperts + 1];
  const int L = s.experts / s.ranks;
  for (int e = threadIdx.x; e <= L; e += kThreads) hist[e] = 0;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; r < rows; r += static_cast<int64_t>(gridDim.x) * kThreads) {
    sourceIndex[r] = -1;
  }
  __syncthreads();
  const int64_t pairs = static_cast<int64_t>(s.ranks) * s.maxTokens * s.k;
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * kTile * s.k, p1 = min(pairs, p0 + static_cast<int64_t>(kTile) * s.k);
  for (int64_t p = p0 + threadIdx.x; p < p1; p += kThreads) {
    const int32_t id = receivedId(s, regions, counts, p, L);
    if (id >= 0) atomicAdd(&hist[id], 1);
    lid[p] = id;
    rowIndex[p] = -1;
  }
  __syncthreads();
  for (int e = threadIdx.x; e <= L; e += kThreads) tileCounts[static_cast<int64_t>(blockIdx.x) * (L + 1) + e] = hist[e];
}

// A CTA of 1024 threads, total[e] (shared, e <= L <= 1024) each expert's pairs, total[L] the
// malformed ones: placed[e] = the pairs of e that get a row; offsets, counts, usedRows, dropped,
// errors as the CPU computes them. Masked: layoutCounts holds the last call's counts on entry
// (zeros before the first call, whose rows start zeroed); touch[e] = the larger of that and
// this call's.
__device__ void expertRows(int L, const int64_t* total, int32_t align, int32_t maxPerExpert, int32_t* __restrict__ placed,
                           int32_t* __restrict__ touch, int32_t* __restrict__ layoutCounts, int32_t* __restrict__ offsets,
                           int32_t* __restrict__ usedRows, int32_t* __restrict__ dropped, int32_t* __restrict__ errors) {
  // one thread per expert (L <= 1024 = blockDim.x): its rows, then a block-wide scan of them
  __shared__ long long warpRows[32], warpLost[32];
  const int e = threadIdx.x, lane = e & 31, warp = e >> 5;
  const bool masked = maxPerExpert > 0;
  long long size = 0, lost = 0;
  if (e < L) {
    const int64_t p = masked ? min(total[e], static_cast<int64_t>(maxPerExpert)) : total[e];
    lost = total[e] - p;
    size = masked ? maxPerExpert : (total[e] + align - 1) / align * align;
    placed[e] = static_cast<int32_t>(p);
    // masked: the rows the rows kernel writes, this call's and the last call's (now padding:
    // back to zeros), so that a call touches the rows in use and not every expert's capacity
    if (masked) touch[e] = max(layoutCounts[e], static_cast<int32_t>(p));
    layoutCounts[e] = static_cast<int32_t>(p);
  }
  long long inc = size;
  for (int off = 1; off < 32; off *= 2) {
    const long long v = __shfl_up_sync(0xFFFFFFFFu, inc, off);
    if (lane >= off) inc += v;
  }
  for (int off = 16; off >= 1; off /= 2) lost += __shfl_xor_sync(0xFFFFFFFFu, lost, off);
  if (lane == 31) warpRows[warp] = inc;
  if (lane == 0) warpLost[warp] = lost;
  __syncthreads();
  if (warp == 0) {
    long long w = warpRows[lane], all = w;
    for (int off = 1; off < 32; off *= 2) {
      const long long v = __shfl_up_sync(0xFFFFFFFFu, all, off);
      if (lane >= off) all += v;
    }
    warpRows[lane] = all - w;  // rows before warp `lane`
    long long l = warpLost[lane];
    for (int off = 16; off >= 1; off /= 2) l += __shfl_xor_sync(0xFFFFFFFFu, l, off);
    if (lane == 0) {
      *dropped = static_cast<int32_t>(l);
      *errors = static_cast<int32_t>(total[L]);
      offsets[0] = 0;
    }
  }
  __syncthreads();
  inc += warpRows[warp];
  if (e < L) offsets[e + 1] = static_cast<int32_t>(inc);
  if (e == L - 1) *usedRows = static_cast<int32_t>(inc);
}

// One CTA of 1024 threads. tileCounts becomes each expert's pairs before each tile (exclusive);
// then expertRows. The threads form G = 1024 / (L + 1) groups, each with a contiguous range of
// the tiles: a group's sums per expert, their prefix over the groups, then each group writes its
// range; G times fewer dependent loads per thread than one thread per expert down every tile.
__global__ void __launch_bounds__(1024) scanKernel(int L, int64_t tiles, int32_t align, int32_t maxPerExpert, int32_t* __restrict__ tileCounts,
                                                   int32_t* __restrict__ placed, int32_t* __restrict__ touch, int32_t* __restrict__ layoutCounts,
                                                   int32_t* __restrict__ offsets,
                                                   int32_t* __restrict__ usedRows, int32_t* __restrict__ dropped, int32_t* __restrict__ errors) {
  __shared__ int64_t total[E::kMaxLocalExperts + 1];
  __shared__ int64_t part[1024];  // [group][expert]
  const int E1 = L + 1;
  const int groups = max(1, static_cast<int>(blockDim.x) / E1);
  const int64_t per = (tiles + groups - 1) / groups;
  auto range = [&](int g, int e, bool write, int64_t run) {
    const int64_t t1 = min(tiles, (g + 1) * per);
    for (int64_t t0 = g * per; t0 < t1; t0 += 8) {
      int32_t n[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) n[u] = t0 + u < t1 ? tileCounts[(t0 + u) * E1 + e] : 0;
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        if (write && t0 + u < t1) tileCounts[(t0 + u) * E1 + e] = static_cast<int32_t>(run);
        run += n[u];
      }
    }
    return run;
  };
  if (groups == 1) {
    for (int e = threadIdx.x; e < E1; e += blockDim.x) total[e] = range(0, e, true, 0);
  } else {
    const int g = threadIdx.x / E1, e = threadIdx.x % E1;
    if (g < groups) part[g * E1 + e] = range(g, e, false, 0);
    __syncthreads();
    if (g < groups) {
      int64_t before = 0, all = 0;
      for (int h = 0; h < groups; ++h) {
        before += h < g ? part[h * E1 + e] : 0;
        all += part[h * E1 + e];
      }
      range(g, e, true, before);
      if (g == 0) total[e] = all;
    }
  }
  __syncthreads();
  expertRows(L, total, align, maxPerExpert, placed, touch, layoutCounts, offsets, usedRows, dropped, errors);
}

// One warp places pairs p0 + [c0, c1) in order (ids[q]: pair p0 + q's local id): a pair of
// expert e gets row base[e] + next[e] + (its place among e's pairs of the round) while that is
// below limit[e]; next[e] advances by each round's pairs of e.
__device__ __forceinline__ void walkPairs(const int32_t* ids, int c0, int c1, int64_t p0, int L, int32_t* next, const int32_t* limit,
                                          const int32_t* base, int32_t* __restrict__ sourceIndex, int32_t* __restrict__ rowIndex, int lane) {
  for (int c = c0; c < c1; c += 32) {
    const int e = c + lane < c1 ? ids[c + lane] : -1;
    const bool mine = e >= 0 && e < L;
    const uint32_t peers = __match_any_sync(0xFFFFFFFFu, e);
    if (mine) {
      // this pair's place among the pairs of e: those of earlier rounds and of lower lanes
      const int at = next[e] + __popc(peers & ((1u << lane) - 1u));
      if (at < limit[e]) {
        const int32_t row = base[e] + at;
        const int32_t pair = static_cast<int32_t>(p0 + c + lane);
        sourceIndex[row] = pair;
        rowIndex[pair] = row;
      }
    }
    __syncwarp();
    if (mine && (peers >> lane) == 1u) next[e] += __popc(peers);  // the group's last lane
    __syncwarp();
  }
}

__global__ void __launch_bounds__(kThreads) placeKernel(E::EpShapeView s, const int32_t* __restrict__ lid, const int32_t* __restrict__ tileBefore,
                                                        const int32_t* __restrict__ placed, const int32_t* __restrict__ offsets,
                                                        int32_t* __restrict__ sourceIndex, int32_t* __restrict__ rowIndex) {
  __shared__ int32_t ids[kTile * E::kMaxTopK];
  __shared__ int32_t next[E::kMaxLocalExperts], limit[E::kMaxLocalExperts], base[E::kMaxLocalExperts];
  const int L = s.experts / s.ranks;
  const int64_t pairs = static_cast<int64_t>(s.ranks) * s.maxTokens * s.k;
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * kTile * s.k;
  const int n = static_cast<int>(min(pairs - p0, static_cast<int64_t>(kTile) * s.k));
  for (int q = threadIdx.x; q < n; q += kThreads) ids[q] = lid[p0 + q];
  for (int e = threadIdx.x; e < L; e += kThreads) {
    next[e] = tileBefore[static_cast<int64_t>(blockIdx.x) * (L + 1) + e];
    limit[e] = placed[e];
    base[e] = offsets[e];
  }
  __syncthreads();
  if (threadIdx.x < 32) walkPairs(ids, 0, n, p0, L, next, limit, base, sourceIndex, rowIndex, threadIdx.x);
}

// A small receive in one launch (the three kernels above for a single tile): a CTA of 1024
// threads, pairs <= kSmallPairs and L <= kSmallExperts. Warp w takes a contiguous range of the
// pairs; a histogram per warp gives each warp its place in every expert, expertRows the rows,
// and the warps then place their ranges at once.
constexpr int kSmallPairs = 4096;
constexpr int kSmallExperts = 128;

// The small layout's shared memory.
struct LayoutShared {
  int32_t ids[kSmallPairs];
  int32_t hist[32 * (kSmallExperts + 1)];  // [warp][expert]
  int64_t total[kSmallExperts + 1];
};

// One CTA of 1024 threads: the wait for the count words of call e (advance: then *epoch = e) and
// the layout of the receive.
__device__ __forceinline__ void layoutSmallBody(const E::EpShapeView& s, const uint8_t* __restrict__ regions, const uint64_t* __restrict__ words,
                                                uint32_t e, bool advance, uint32_t* __restrict__ epoch, int64_t timeoutNs,
                                                int32_t* __restrict__ status, uint32_t* __restrict__ counts, uint32_t* __restrict__ follows,
                                                int32_t align, int32_t maxPerExpert, int64_t rows, int32_t* __restrict__ placed,
                                                int32_t* __restrict__ touch, int32_t* __restrict__ layoutCounts, int32_t* __restrict__ offsets,
                                                int32_t* __restrict__ sourceIndex, int32_t* __restrict__ rowIndex, int32_t* __restrict__ usedRows,
                                                int32_t* __restrict__ dropped, int32_t* __restrict__ errors, LayoutShared& sh) {
  int32_t* ids = sh.ids;
  int32_t* hist = sh.hist;
  int64_t* total = sh.total;
  const int L = s.experts / s.ranks, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int pairs = static_cast<int>(static_cast<int64_t>(s.ranks) * s.maxTokens * s.k);
  const int per = (pairs + 31) / 32, c0 = min(pairs, warp * per), c1 = min(pairs, c0 + per);
  for (int i = threadIdx.x; i < 32 * (L + 1); i += 1024) hist[i] = 0;
  for (int64_t r = threadIdx.x; r < rows; r += 1024) sourceIndex[r] = -1;
  ctaWait(words, s.ranks, e, s.maxTokens, timeoutNs, status, E::kStatusDispatchTimeout, counts, follows);
  if (threadIdx.x == 0 && advance) *epoch = e;
  for (int q = c0 + lane; q < c1; q += 32) {
    const int32_t id = receivedId(s, regions, counts, q, L);
    if (id >= 0) atomicAdd(&hist[warp * (L + 1) + id], 1);
    ids[q] = id;
    rowIndex[q] = -1;
  }
  __syncthreads();
  // each expert's pairs before each warp's range (exclusive), and in all
  if (threadIdx.x <= L) {
    int64_t run = 0;
    for (int w = 0; w < 32; ++w) {
      const int32_t n = hist[w * (L + 1) + threadIdx.x];
      hist[w * (L + 1) + threadIdx.x] = static_cast<int32_t>(run);
      run += n;
    }
    total[threadIdx.x] = run;
  }
  __syncthreads();
  expertRows(L, total, align, maxPerExpert, placed, touch, layoutCounts, offsets, usedRows, dropped, errors);
  __syncthreads();  // placed and offsets written (global memory, visible to the block from here)
  walkPairs(ids, c0, c1, 0, L, hist + warp * (L + 1), placed, offsets, sourceIndex, rowIndex, lane);
}

__global__ void __launch_bounds__(1024) layoutSmallKernel(E::EpShapeView s, const uint8_t* __restrict__ regions, const uint64_t* __restrict__ words,
                                                          uint32_t* __restrict__ epoch, int64_t timeoutNs, int32_t* __restrict__ status,
                                                          uint32_t* __restrict__ counts, uint32_t* __restrict__ follows, int32_t align, int32_t maxPerExpert,
                                                          int64_t rows, int32_t* __restrict__ placed,
                                                          int32_t* __restrict__ touch, int32_t* __restrict__ layoutCounts,
                                                          int32_t* __restrict__ offsets, int32_t* __restrict__ sourceIndex,
                                                          int32_t* __restrict__ rowIndex, int32_t* __restrict__ usedRows,
                                                          int32_t* __restrict__ dropped, int32_t* __restrict__ errors) {
  __shared__ LayoutShared sh;
  // the wait of the receive, in this launch: the senders' count words of call *epoch + 1
  layoutSmallBody(s, regions, words, *epoch + 1, true, epoch, timeoutNs, status, counts, follows, align, maxPerExpert, rows, placed, touch, layoutCounts,
                  offsets, sourceIndex, rowIndex, usedRows, dropped, errors, sh);
}

// V elements of a slot's payload from element h, as bf16 bits (V = 8: h % 8 == 0, hidden % 8 == 0).
template <int V>
__device__ __forceinline__ void decodeAt(const E::EpShapeView& s, const uint8_t* __restrict__ p, int64_t h, uint16_t (&o)[V]) {
  const int64_t H = s.hidden;
  if (s.payload == E::kPayloadBf16) {
    if constexpr (V == 8) *reinterpret_cast<uint4*>(o) = __ldcg(reinterpret_cast<const uint4*>(p + 2 * h));
    else o[0] = __ldcg(reinterpret_cast<const uint16_t*>(p) + h);
  } else if (s.payload == E::kPayloadFp8) {
    // V divides the block of 128: one scale for the V elements
    const float scale = __uint_as_float(loadU32(p + H + 4 * (h / E::kFp8Block)));
    if constexpr (V == 8) {
      const uint2 q = __ldcg(reinterpret_cast<const uint2*>(p + h));
#pragma unroll
      for (int u = 0; u < 8; ++u) o[u] = floatToBf16(__fmul_rn(e4m3ToFloat(((u < 4 ? q.x : q.y) >> (8 * (u % 4))) & 0xFFu), scale));
    } else {
      o[0] = floatToBf16(__fmul_rn(e4m3ToFloat(__ldcg(p + h)), scale));
    }
  } else {
    // V divides the block of 16: one block scale for the V elements
    const float gs = __uint_as_float(loadU32(p + H / 2 + H / 16));
    const float bs = e4m3ToFloat(__ldcg(p + H / 2 + h / 16));
    if constexpr (V == 8) {
      const uint32_t codes = __ldcg(reinterpret_cast<const uint32_t*>(p + h / 2));
#pragma unroll
      for (int u = 0; u < 8; ++u) o[u] = floatToBf16(__fmul_rn(__fmul_rn(e2m1ToFloat((codes >> (4 * u)) & 0xFu), bs), gs));
    } else {
      const uint32_t code = (__ldcg(p + h / 2) >> ((h % 2) * 4)) & 0xFu;
      o[0] = floatToBf16(__fmul_rn(__fmul_rn(e2m1ToFloat(code), bs), gs));  // a NaN becomes bf16's canonical NaN, as on the CPU
    }
  }
}

// The q-th received slot in the order the rows kernel and the combine senders walk them: the
// sources' slots interleaved (j-th slot of rank 0, of rank 1, ..., then j + 1), the order in
// which they land, so that at any time the warps work on every source at once (the link and
// local memory busy together) instead of one source's region after the other.
__device__ __forceinline__ int64_t slotOf(int64_t q, int ranks, int64_t M) { return (q % ranks) * M + q / ranks; }

// Parts of a row (kThreads * V elements each) a rows CTA holds in registers at once.
constexpr int kRowBatch = 4;

// The padding of experts first, first + stride, ... (rowsKernel's blockIdx.y == 1), on CTAs of Threads threads.
template <int V, int Threads>
__device__ __forceinline__ void paddingBody(const E::EpShapeView& s, const int32_t* __restrict__ offsets, const int32_t* __restrict__ placed,
                                            const int32_t* __restrict__ touch, int32_t maxPerExpert, uint16_t* __restrict__ out, int first,
                                            int stride) {
  const int64_t H = s.hidden;
  const int L = s.experts / s.ranks;
  for (int e = first; e < L; e += stride) {
    const int64_t from = static_cast<int64_t>(offsets[e]) + placed[e];
    const int64_t to = maxPerExpert > 0 ? static_cast<int64_t>(offsets[e]) + min(touch[e], maxPerExpert) : offsets[e + 1];
    for (int64_t r = from; r < to; ++r) {
      for (int64_t h = threadIdx.x * V; h < H; h += Threads * V) {
        if constexpr (V == 8) *reinterpret_cast<uint4*>(out + r * H + h) = make_uint4(0, 0, 0, 0);
        else out[r * H + h] = 0;
      }
    }
  }
}

// The rows of items first, first + stride, ... (rowsKernel's blockIdx.y == 0), on CTAs of Threads
// threads; e: the call number of the chunk flags.
template <int V, int Threads>
__device__ __forceinline__ void rowsBody(const E::EpShapeView& s, const uint8_t* __restrict__ regions, const uint32_t* __restrict__ counts,
                                         const int32_t* __restrict__ rowIndex, uint16_t* __restrict__ out, const uint32_t* __restrict__ follows,
                                         uint32_t e, uint64_t deadline, int32_t* __restrict__ status, int shares, bool gather, int64_t first,
                                         int64_t stride, const uint16_t* __restrict__ ownRows) {
  __shared__ int32_t rowOf[E::kMaxTopK];
  __shared__ bool landed;
  const int64_t H = s.hidden;
  const int64_t slots = static_cast<int64_t>(s.ranks) * s.maxTokens;
  const int64_t parts = (H + Threads * V - 1) / (Threads * V), per = (parts + shares - 1) / shares;
  for (int64_t item = first; item < slots * shares; item += stride) {
    const int64_t i = slotOf(item / shares, s.ranks, s.maxTokens), share = item % shares;
    const int64_t r = i / s.maxTokens, j = i % s.maxTokens;
    if (j >= counts[r]) continue;  // the same for the whole CTA
    const bool own = ownRows != nullptr && r == s.rank;  // payload in x, not in the region
    __syncthreads();  // the last slot's rows are read
    if (threadIdx.x < s.k) rowOf[threadIdx.x] = gather ? (threadIdx.x == 0 ? static_cast<int32_t>(i) : -1) : rowIndex[i * s.k + threadIdx.x];
    if (threadIdx.x == 0) {
      const uint32_t* flag = reinterpret_cast<const uint32_t*>(regions + r * s.regionBytes + s.flagsAt) + j / E::kChunkSlots;
      landed = own || follows[r] == 0 || awaitFlag(flag, e, deadline, status, E::kStatusDispatchTimeout, static_cast<int32_t>(r));
    }
    __syncthreads();
    if (!landed) continue;
    const uint8_t* p = regions + r * s.regionBytes + j * s.slotBytes;
    if (own) p = reinterpret_cast<const uint8_t*>(ownRows) + static_cast<int64_t>(*reinterpret_cast<const int32_t*>(p + s.metaAt)) * s.metaAt;
    // the share's parts (Threads * V elements each), kRowBatch at a time: every part's loads
    // are issued before its stores, so a CTA waits one memory latency per batch, not per part
    const int64_t hEnd = min(H, (share + 1) * per * Threads * V);
    for (int64_t h0 = share * per * Threads * V + static_cast<int64_t>(threadIdx.x) * V; h0 < hEnd; h0 += static_cast<int64_t>(kRowBatch) * Threads * V) {
      uint16_t o[kRowBatch][V];
#pragma unroll
      for (int b = 0; b < kRowBatch; ++b) {
        const int64_t h = h0 + static_cast<int64_t>(b) * Threads * V;
        if (h < hEnd) decodeAt<V>(s, p, h, o[b]);
      }
      for (int kk = 0; kk < s.k; ++kk) {
        const int32_t row = rowOf[kk];
        if (row < 0) continue;
#pragma unroll
        for (int b = 0; b < kRowBatch; ++b) {
          const int64_t h = h0 + static_cast<int64_t>(b) * Threads * V;
          if (h >= hEnd) break;
          if constexpr (V == 8) *reinterpret_cast<uint4*>(out + row * H + h) = *reinterpret_cast<const uint4*>(o[b]);
          else out[row * H + h] = o[b][0];
        }
      }
    }
  }
}

// blockIdx.y == 0: a CTA per (received slot, share of its row: `shares` per slot), grid-stride,
// slots interleaved (slotOf): the share decoded once and stored into the row of each of the
// slot's pairs that got one, so that a token is read once however many local experts it has.
// A large receive takes whole rows (one lookup and one flag per slot); a small one splits them
// over CTAs, so that a decode step's few slots still fill the device. A slot from a rank whose
// payloads follow (follows[r]) waits for its chunk's flag first, bounded like the count words (a
// timeout recorded in status, the slot's rows left alone).
// blockIdx.y == 1: a CTA per expert zeroes its padding rows: contiguous, up to the next expert's
// offset; masked, up to touch[e] (the last call's rows included).
// Gather (out [slots, hidden]): each slot's row is stored once, at row i, and there is no padding.
// V elements per thread: 8 (16-byte stores) where hidden % 8 == 0 and the output is aligned.
template <int V>
__global__ void __launch_bounds__(kThreads) rowsKernel(E::EpShapeView s, const uint8_t* __restrict__ regions, const uint32_t* __restrict__ counts,
                                                       const int32_t* __restrict__ rowIndex, const int32_t* __restrict__ offsets,
                                                       const int32_t* __restrict__ placed, const int32_t* __restrict__ touch, int32_t maxPerExpert,
                                                       uint16_t* __restrict__ out, const uint32_t* __restrict__ follows,
                                                       const uint32_t* __restrict__ epoch, int64_t timeoutNs, int32_t* __restrict__ status,
                                                       int shares, bool gather, const uint16_t* __restrict__ ownRows) {
  if (blockIdx.y == 1) {
    paddingBody<V, kThreads>(s, offsets, placed, touch, maxPerExpert, out, blockIdx.x, gridDim.x);
    return;
  }
  rowsBody<V, kThreads>(s, regions, counts, rowIndex, out, follows, *epoch, globalTimer() + static_cast<uint64_t>(timeoutNs), status, shares, gather,
                        blockIdx.x, gridDim.x, ownRows);
}

// ---- dispatch in one launch ------------------------------------------------------------------

// A decode step's dispatch with gather in one launch, on at most as many CTAs of 1024 threads as
// the device holds at once (so that every CTA runs while others wait on it): the send of
// sendKernel<true> (slots scanned by every CTA, the count words published by the last CTA to
// finish its copies), then the receive: CTA 0 waits for the count words and lays out the receive
// (layoutSmallBody) while the others wait for the words too and copy a row per received slot,
// which needs no layout (CTA 0 copies too where it is alone). The last CTA to finish advances the
// call number, which every CTA read at its start. A missing rank's words time out as in the
// separate launches. Without gather the rows would wait for the layout: there the separate
// launches measured faster (benchmarks/NOTES.md, ep v8), so this kernel gathers only.
template <int V>
__global__ void __launch_bounds__(1024) dispatchDecodeKernel(
    E::EpShapeView s, const uint8_t* __restrict__ source, const int32_t* __restrict__ ids, const float* __restrict__ weights, int64_t tokens,
    int32_t* __restrict__ combineIndex, const uint64_t* __restrict__ dataDst, const uint64_t* __restrict__ countDst,
    int32_t* __restrict__ invalidIds, uint32_t* __restrict__ epoch, uint32_t* __restrict__ sendSync, const uint8_t* __restrict__ regions,
    const uint64_t* __restrict__ words, int64_t timeoutNs, int32_t* __restrict__ status, uint32_t* __restrict__ recvCounts,
    uint32_t* __restrict__ follows, int32_t align, int32_t maxPerExpert, int64_t rows, int32_t* __restrict__ placed, int32_t* __restrict__ touch,
    int32_t* __restrict__ layoutCounts, int32_t* __restrict__ offsets, int32_t* __restrict__ sourceIndex, int32_t* __restrict__ rowIndex,
    int32_t* __restrict__ usedRows, int32_t* __restrict__ dropped, int32_t* __restrict__ recvErrors, uint16_t* __restrict__ out, int shares,
    uint32_t* __restrict__ recvSync) {
  __shared__ union {
    ScanShared scan;
    LayoutShared layout;
  } sh;
  __shared__ uint32_t counts[kScanRanks], follow[kScanRanks];
  const uint32_t e = *epoch + 1;
  const uint64_t deadline = globalTimer() + static_cast<uint64_t>(timeoutNs);
  sendBody<true, kSendAll, 1024>(s, source, s.metaAt, ids, weights, tokens, combineIndex, dataDst, countDst, nullptr, invalidIds, epoch, sendSync,
                                 &sh.scan);
  __syncthreads();  // the scan's shared memory is the layout's from here
  const int64_t G = gridDim.x;
  if (blockIdx.x == 0) {
    layoutSmallBody(s, regions, words, e, false, epoch, timeoutNs, status, recvCounts, follows, align, maxPerExpert, rows, placed, touch, layoutCounts,
                    offsets, sourceIndex, rowIndex, usedRows, dropped, recvErrors, sh.layout);
    if (G == 1) rowsBody<V, 1024>(s, regions, recvCounts, rowIndex, out, follows, e, deadline, status, shares, true, 0, 1, nullptr);
  } else {
    ctaWait(words, s.ranks, e, s.maxTokens, timeoutNs, status, E::kStatusDispatchTimeout, counts, follow);
    rowsBody<V, 1024>(s, regions, counts, rowIndex, out, follow, e, deadline, status, shares, true, blockIdx.x - 1, G - 1, nullptr);
  }
  if (lastBlock(recvSync) && threadIdx.x == 0) {
    *epoch = e;
    *recvSync = 0;
  }
}

// ---- combine -------------------------------------------------------------------------------

// An overlapped combine send's count words, first (one warp): the slots of each source, with
// kPayloadFollows; the entries follow behind chunk flags.
__global__ void combineCountsKernel(const uint64_t* __restrict__ countDst, int ranks, const uint32_t* __restrict__ epoch,
                                    const uint32_t* __restrict__ recvCounts, int64_t maxTokens) {
  const uint32_t e = *epoch;
  for (int d = threadIdx.x; d < ranks; d += blockDim.x) {
    storeRelease(at<uint64_t>(countDst[d]), E::countWord(e, min(recvCounts[d], static_cast<uint32_t>(maxTokens)) | E::kPayloadFollows));
  }
}

// Slots per CTA group of an overlapped combine send: every thread fences once per group (a fence
// waits for the thread's stores to land), so a group carries a few hundred KB (exact: each slot's
// pairs; reduced: one row per slot, k rows read).
constexpr int kCombineGroupExact = 8;
constexpr int kCombineGroupReduced = 16;

// The walk of a combine send's work items, perSlot per interleaved slot (slotOf order). Not
// Chunked: a warp per item, grid-stride, then the count words (the grid's last CTA). Chunked (an
// overlapped send, its count words already out): a CTA per group of `group` interleaved slots,
// its warps over the group's items; then every thread fences its stores, and a thread per slot
// counts the slot on its source's chunk (chunkDone); the slot that completes a chunk raises the
// chunk's flag in the source's combine region and re-arms the counter. Slots of source `skipSrc`
// (-1: none) are neither sent (work returns at once) nor counted.
template <bool Chunked, class Work>
__device__ __forceinline__ void combineWalk(const E::EpShapeView& s, int64_t perSlot, int group, int skipSrc, const uint32_t* __restrict__ recvCounts,
                                            const uint64_t* __restrict__ dataDst, const uint64_t* __restrict__ countDst,
                                            const uint32_t* __restrict__ epoch, uint32_t* __restrict__ sync, uint32_t* __restrict__ chunkDone,
                                            Work work) {
  const int warp = threadIdx.x >> 5;
  const int64_t M = s.maxTokens, slots = static_cast<int64_t>(s.ranks) * M;
  if constexpr (!Chunked) {
    const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
    for (int64_t item = static_cast<int64_t>(blockIdx.x) * kWarps + warp; item < slots * perSlot; item += warps) work(item);
    publishCounts(sync, countDst, s.ranks, epoch, 0u, [&](int d) { return min(recvCounts[d], static_cast<uint32_t>(M)); });
  } else {
    const int64_t chunkCount = E::chunks(M);
    const uint32_t e = *epoch;
    for (int64_t u0 = static_cast<int64_t>(blockIdx.x) * group; u0 < slots; u0 += static_cast<int64_t>(gridDim.x) * group) {
      const int64_t n = min(static_cast<int64_t>(group), slots - u0);
      for (int64_t item = u0 * perSlot + warp; item < (u0 + n) * perSlot; item += kWarps) work(item);
      fenceAcqRelSys();  // this thread's stores, before the group's slots are counted
      __syncthreads();
      if (threadIdx.x < n) {
        const int64_t i = slotOf(u0 + threadIdx.x, s.ranks, M), src = i / M, j = i - src * M;
        const uint32_t count = min(recvCounts[src], static_cast<uint32_t>(M));
        if (j < count && src != skipSrc) {
          const int64_t c = j / E::kChunkSlots;
          const uint32_t expected = static_cast<uint32_t>(min(static_cast<int64_t>(E::kChunkSlots), count - c * E::kChunkSlots));
          uint32_t* done = chunkDone + src * chunkCount + c;
          if (atomicAdd(done, 1u) + 1u == expected) {
            fenceAcqRelSys();  // every counted slot's stores, before the flag
            storeRelease(at<uint32_t>(dataDst[src] + static_cast<uint64_t>(s.combineFlagsAt + 4 * c)), e);
            *done = 0;
          }
        }
      }
    }
  }
}

// A warp per (received pair, part of its row), slots interleaved (slotOf): the pair's valid flag
// (part 0) and the part of its computed row into region `rank` of its source's combine buffer.
// The lookups of an item are independent loads, so a warp waits about one latency before its copy.
// skipOwn (an overlapped send, combineReadsOwnY): this rank's own pairs are left to its receive,
// which reads them from y; copying them would cross the device's memory twice more and hold SMs
// the link's copies need.
template <bool Chunked>
__global__ void __launch_bounds__(kThreads) combineSendKernel(E::EpShapeView s, const uint16_t* __restrict__ y, int64_t rows,
                                                              const int32_t* __restrict__ rowIndex, const uint32_t* __restrict__ recvCounts,
                                                              const uint64_t* __restrict__ dataDst, const uint64_t* __restrict__ countDst,
                                                              const uint32_t* __restrict__ epoch, uint32_t* __restrict__ sync,
                                                              uint32_t* __restrict__ chunkDone, bool vec, bool skipOwn) {
  const int lane = threadIdx.x & 31;
  const int64_t M = s.maxTokens, H = s.hidden;
  // vec: parts of kPart chunks of 8 elements; otherwise one part per row, element by element
  const int64_t parts = vec ? (H / 8 + kPart - 1) / kPart : 1;
  const int skipSrc = skipOwn ? s.rank : -1;
  combineWalk<Chunked>(s, s.k * parts, kCombineGroupExact, skipSrc, recvCounts, dataDst, countDst, epoch, sync, chunkDone, [&](int64_t item) {
    const int64_t q = item / parts, part = item % parts;
    const int64_t i = slotOf(q / s.k, s.ranks, M), p = i * s.k + q % s.k;
    const int64_t src = i / M, entry = p - src * M * s.k;
    if (src == skipSrc) return;
    const uint32_t count = recvCounts[src];
    uint8_t* region = at<uint8_t>(dataDst[src]);
    const int32_t r = rowIndex[p];
    if (i % M >= min(count, static_cast<uint32_t>(M))) return;
    const bool ok = r >= 0 && r < rows;
    if (part == 0 && lane == 0) reinterpret_cast<int32_t*>(region)[entry] = ok ? 1 : 0;
    if (!ok) return;
    uint16_t* to = reinterpret_cast<uint16_t*>(region + s.combineRowsAt) + entry * H;
    const uint16_t* from = y + static_cast<int64_t>(r) * H;
    if (vec) {
      const int64_t c0 = part * kPart + lane, n = H / 8;
      uint4 v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (c0 + 32 * u < n) v[u] = reinterpret_cast<const uint4*>(from)[c0 + 32 * u];
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (c0 + 32 * u < n) reinterpret_cast<uint4*>(to)[c0 + 32 * u] = v[u];
      }
    } else {
      for (int64_t h = lane; h < H; h += 32) to[h] = from[h];
    }
  });
}

// Reduced combine: a warp per (received slot, part of its row), the slots of the source ranks
// interleaved (slotOf). Lane kk < k looks up pair kk's row and its weight (the slot's metadata in
// the dispatch region); the part of each pair's row that got one is loaded while the previous
// pair's is summed (f32 fused multiply-adds from 0, in pair order), and the bf16 sum goes to entry
// j of region `rank` of the source's combine buffer: one row per (token, rank) crosses the link.
__device__ __forceinline__ void loadPart(uint4 (&v)[kUnroll], const uint4* __restrict__ row, int64_t c0, int64_t n) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    if (c0 + 32 * u < n) v[u] = row[c0 + 32 * u];
  }
}

__device__ __forceinline__ void addPart(float (&acc)[kUnroll][8], const uint4 (&v)[kUnroll], float w) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const uint32_t words[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[u][e] = __fmaf_rn(w, bf16ToFloat(static_cast<uint16_t>(words[e / 2] >> (16 * (e % 2)))), acc[u][e]);
  }
}

template <bool Chunked>
__global__ void __launch_bounds__(kThreads) combineReduceKernel(E::EpShapeView s, const uint16_t* __restrict__ y, int64_t rows,
                                                                const uint8_t* __restrict__ regions, const int32_t* __restrict__ rowIndex,
                                                                const uint32_t* __restrict__ recvCounts, const uint64_t* __restrict__ dataDst,
                                                                const uint64_t* __restrict__ countDst, const uint32_t* __restrict__ epoch,
                                                                uint32_t* __restrict__ sync, uint32_t* __restrict__ chunkDone, bool vec) {
  const int lane = threadIdx.x & 31;
  const int64_t M = s.maxTokens, H = s.hidden;
  const int64_t n = H / 8, parts = vec ? (n + kPart - 1) / kPart : 1;
  combineWalk<Chunked>(s, parts, kCombineGroupReduced, -1, recvCounts, dataDst, countDst, epoch, sync, chunkDone, [&](int64_t item) {
    const int64_t i = slotOf(item / parts, s.ranks, M), part = item % parts;
    const int64_t src = i / M, j = i - src * M;
    if (j >= min(recvCounts[src], static_cast<uint32_t>(M))) return;
    int32_t r = -1;
    float w = 0.0f;
    if (lane < s.k) {
      r = rowIndex[i * s.k + lane];
      w = __ldcg(reinterpret_cast<const float*>(regions + src * s.regionBytes + j * s.slotBytes + s.metaAt + 4 + 4 * s.k) + lane);
    }
    const uint32_t mask = __ballot_sync(0xFFFFFFFFu, r >= 0 && r < rows);
    uint8_t* region = at<uint8_t>(dataDst[src]);
    if (part == 0 && lane == 0) reinterpret_cast<int32_t*>(region)[j] = mask != 0 ? 1 : 0;
    if (mask == 0) return;
    uint16_t* to = reinterpret_cast<uint16_t*>(region + s.combineRowsAt) + j * H;
    if (!vec) {
      // every lane runs every step (the shuffles need the whole warp)
      for (int64_t h0 = 0; h0 < H; h0 += 32) {
        const int64_t h = h0 + lane;
        float acc = 0.0f;
        for (uint32_t m = mask; m != 0; m &= m - 1) {
          const int kk = __ffs(m) - 1;
          const float wk = __shfl_sync(0xFFFFFFFFu, w, kk);
          const int64_t rk = __shfl_sync(0xFFFFFFFFu, r, kk);
          if (h < H) acc = __fmaf_rn(wk, bf16ToFloat(y[rk * H + h]), acc);
        }
        if (h < H) to[h] = floatToBf16(acc);
      }
      return;
    }
    const int64_t c0 = part * kPart + lane;
    float acc[kUnroll][8];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[u][e] = 0.0f;
    }
    uint4 cur[kUnroll], next[kUnroll];
    uint32_t m = mask;
    int kk = __ffs(m) - 1;
    m &= m - 1;
    loadPart(cur, reinterpret_cast<const uint4*>(y + static_cast<int64_t>(__shfl_sync(0xFFFFFFFFu, r, kk)) * H), c0, n);
    for (;;) {
      const float wk = __shfl_sync(0xFFFFFFFFu, w, kk);
      const int kn = m != 0 ? __ffs(m) - 1 : -1;
      if (kn >= 0) {
        loadPart(next, reinterpret_cast<const uint4*>(y + static_cast<int64_t>(__shfl_sync(0xFFFFFFFFu, r, kn)) * H), c0, n);
        m &= m - 1;
      }
      addPart(acc, cur, wk);
      if (kn < 0) break;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) cur[u] = next[u];
      kk = kn;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (c0 + 32 * u >= n) continue;
      uint32_t b[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) b[e] = static_cast<uint32_t>(floatToBf16(acc[u][2 * e])) | (static_cast<uint32_t>(floatToBf16(acc[u][2 * e + 1])) << 16);
      reinterpret_cast<uint4*>(to)[c0 + 32 * u] = make_uint4(b[0], b[1], b[2], b[3]);
    }
  });
}

// Tokens per CTA of the sum: the lookups of a group of tokens (one thread per pair) are paid once
// for all of their rows' elements.
constexpr int kSumGroup = 8;

// A CTA per group of `group` tokens (<= kSumGroup), after the wait launch (counts: what it
// found; the wait stays one CTA, so that it never holds the SMs another rank of the device needs
// to send what it waits for). A thread per pair looks up its returned row, a thread per token
// lists the rows that add (in slot order; reduced: the token's ranks' entries,
// weight 1, in the order of each rank's first pair), then the threads sum V elements at a time
// over the group's lists, up to eight rows' loads in flight.
// A region whose rows follow (follows[d], an overlapped send) is read once the chunk of the
// pair's slot carries the call (one thread per warp and chunk waits, bounded like the count
// words; a chunk that does not come adds nothing and is recorded in status).
template <int V>
__global__ void __launch_bounds__(kThreads) combineSumKernel(E::EpShapeView s, const uint8_t* __restrict__ regions, const uint32_t* __restrict__ counts,
                                                             const uint32_t* __restrict__ follows, const uint32_t* __restrict__ epoch,
                                                             int64_t timeoutNs, int32_t* __restrict__ status,
                                                             const int32_t* __restrict__ combineIndex, const float* __restrict__ weights,
                                                             int64_t tokens, int group, void* __restrict__ out, bool bf16Out,
                                                             const uint16_t* __restrict__ ownY, int64_t ownRows, const int32_t* __restrict__ ownRowIndex) {
  __shared__ const uint16_t* rowOf[kSumGroup * E::kMaxTopK];  // per pair; nullptr: it adds nothing
  __shared__ float weightOf[kSumGroup * E::kMaxTopK];
  __shared__ int64_t rankOf[kSumGroup * E::kMaxTopK];
  __shared__ const uint16_t* listRow[kSumGroup * E::kMaxTopK];  // per token: the rows that add, in order
  __shared__ float listWeight[kSumGroup * E::kMaxTopK];
  __shared__ int listLength[kSumGroup];
  const bool reduced = s.combine == E::kCombineReduced;
  const int64_t H = s.hidden, MK = s.maxTokens * s.k;
  const int per = static_cast<int>((H + V - 1) / V);  // tasks per token (hidden < 2^31)
  const uint32_t e = *epoch;
  const uint64_t deadline = globalTimer() + static_cast<uint64_t>(timeoutNs);
  for (int64_t t0 = static_cast<int64_t>(blockIdx.x) * group; t0 < tokens; t0 += static_cast<int64_t>(gridDim.x) * group) {
    const int n = static_cast<int>(min(static_cast<int64_t>(group), tokens - t0)), pairs = n * s.k;
    const int i = threadIdx.x;
    __syncthreads();  // the last group's lists are read
    const int32_t idx = i < pairs ? combineIndex[t0 * s.k + i] : -1;
    if (i < pairs) rankOf[i] = idx >= 0 ? idx / MK : -1;
    // where the rows follow: one thread per warp and chunk waits for the chunk's flag (a pair's
    // thread each would put tens of thousands of pollers on L2 beside the send)
    const int64_t d = idx >= 0 ? idx / MK : s.ranks, slot = idx >= 0 ? idx % MK / s.k : 0;
    // ownY: this rank's own pairs were not sent; their rows are read from y (combineSend's lookup)
    const bool own = ownY != nullptr && d == s.rank;
    const bool follow = !own && d < s.ranks && slot < counts[d] && follows[d] != 0;
    const uint32_t* chunkFlag = follow ? reinterpret_cast<const uint32_t*>(regions + d * s.combineRegionBytes + s.combineFlagsAt) + slot / E::kChunkSlots : nullptr;
    const uint32_t sameChunk = __match_any_sync(0xFFFFFFFFu, reinterpret_cast<uintptr_t>(chunkFlag));
    if (follow && (sameChunk & ((1u << (i & 31)) - 1u)) == 0) awaitFlag(chunkFlag, e, deadline, status, E::kStatusCombineTimeout, static_cast<int32_t>(d));
    __syncthreads();
    if (i < pairs) {
      const int kk = i % s.k;
      const uint16_t* row = nullptr;
      if (own) {
        const int32_t r = slot < counts[d] ? ownRowIndex[idx] : -1;
        if (r >= 0 && r < ownRows) row = ownY + static_cast<int64_t>(r) * H;
      } else if (d < s.ranks) {
        const int64_t entry = reduced ? slot : idx % MK;
        const uint8_t* base = regions + d * s.combineRegionBytes;
        // the valid flag and the count load together; a flag past the count is stale and ignored
        // (and one of a chunk that did not come)
        const bool landed = !follow || loadAcquire(chunkFlag) == e;
        bool adds = slot < counts[d] && landed && __ldcg(reinterpret_cast<const int32_t*>(base) + entry) == 1;
        // reduced: a rank's entry adds once, at the token's first pair on that rank
        if (reduced) {
          for (int q = i - kk; q < i; ++q) adds = adds && rankOf[q] != d;
        }
        if (adds) row = reinterpret_cast<const uint16_t*>(base + s.combineRowsAt) + entry * H;
      }
      rowOf[i] = row;
      weightOf[i] = reduced ? 1.0f : weights[t0 * s.k + i];
    }
    __syncthreads();
    if (i < n) {
      int m = 0;
      for (int kk = i * s.k; kk < (i + 1) * s.k; ++kk) {
        if (rowOf[kk] == nullptr) continue;
        listRow[i * s.k + m] = rowOf[kk];
        listWeight[i * s.k + m] = weightOf[kk];
        ++m;
      }
      listLength[i] = m;
    }
    __syncthreads();
    // task = g * per + c, walked without divisions; a lone token's tasks spread over gridDim.y CTAs
    const int step = kThreads * static_cast<int>(gridDim.y);
    int g = 0, c = threadIdx.x + static_cast<int>(blockIdx.y) * kThreads;
    while (c >= per && g < n) c -= per, ++g;
    for (; g < n;) {
      const int64_t h = static_cast<int64_t>(c) * V, t = t0 + g, m = listLength[g];
      const uint16_t* const* rows = listRow + g * s.k;
      const float* ws = listWeight + g * s.k;
      float acc[V];
#pragma unroll
      for (int u = 0; u < V; ++u) acc[u] = 0.0f;
      for (int k0 = 0; k0 < m; k0 += 8) {
        uint4 q[8];
#pragma unroll
        for (int u = 0; u < 8; ++u) {
          if (k0 + u >= m) break;
          if constexpr (V == 8) q[u] = __ldcg(reinterpret_cast<const uint4*>(rows[k0 + u] + h));
          else q[u].x = __ldcg(rows[k0 + u] + h);
        }
#pragma unroll
        for (int u = 0; u < 8; ++u) {
          if (k0 + u >= m) break;
          const float w = ws[k0 + u];
          if constexpr (V == 8) {
            const uint32_t words[4] = {q[u].x, q[u].y, q[u].z, q[u].w};
#pragma unroll
            for (int v = 0; v < 8; ++v) acc[v] = __fmaf_rn(w, bf16ToFloat(static_cast<uint16_t>(words[v / 2] >> (16 * (v % 2)))), acc[v]);
          } else {
            acc[0] = __fmaf_rn(w, bf16ToFloat(static_cast<uint16_t>(q[u].x)), acc[0]);
          }
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
      c += step;
      while (c >= per && g < n) c -= per, ++g;
    }
  }
}

// Loads every kernel of the family on the current device, once. Under lazy loading (CUDA's
// default) a kernel is loaded at its first launch, and that load may synchronize the context:
// launched after a wait kernel that spins for another rank of this process whose work is not yet
// enqueued, it would block the host until the wait times out. The first ep launch on a device
// (a dispatch's send) loads them all, before any wait of the family can spin there.
// CTAs of 1024 threads of dispatchDecodeKernel<1> and <8> an SM holds at once, per device
// (loadKernels reads them once, off the per-step host path).
std::atomic<int> decodeOccupancy[64][2];

cudaError_t loadKernels() {
  static std::atomic<uint64_t> loaded{0};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
  if (bit != 0 && (loaded.load(std::memory_order_acquire) & bit) != 0) return cudaSuccess;
  const void* kernels[] = {
      reinterpret_cast<const void*>(slotsKernel),      reinterpret_cast<const void*>(encodeKernel),
      reinterpret_cast<const void*>(sendKernel<true, kSendAll>), reinterpret_cast<const void*>(sendKernel<false, kSendAll>),
      reinterpret_cast<const void*>(sendKernel<false, kSendMeta>), reinterpret_cast<const void*>(payloadKernel),
      reinterpret_cast<const void*>(waitKernel),
      reinterpret_cast<const void*>(countKernel),      reinterpret_cast<const void*>(scanKernel),
      reinterpret_cast<const void*>(placeKernel),      reinterpret_cast<const void*>(layoutSmallKernel),      reinterpret_cast<const void*>(rowsKernel<1>),
      reinterpret_cast<const void*>(rowsKernel<8>),
      reinterpret_cast<const void*>(dispatchDecodeKernel<1>), reinterpret_cast<const void*>(dispatchDecodeKernel<8>),
      reinterpret_cast<const void*>(combineCountsKernel),
      reinterpret_cast<const void*>(combineSendKernel<false>), reinterpret_cast<const void*>(combineSendKernel<true>),
      reinterpret_cast<const void*>(combineReduceKernel<false>), reinterpret_cast<const void*>(combineReduceKernel<true>),
      reinterpret_cast<const void*>(combineSumKernel<1>),
      reinterpret_cast<const void*>(combineSumKernel<8>),
  };
  // not a stream operation: allowed while a graph capture is open on this thread
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  cudaThreadExchangeStreamCaptureMode(&mode);
  for (const void* k : kernels) {
    cudaFuncAttributes attributes;
    if ((err = cudaFuncGetAttributes(&attributes, k)) != cudaSuccess) break;
  }
  for (int v = 0; v < 2 && err == cudaSuccess && device < 64; ++v) {
    int perSm = 0;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, v ? dispatchDecodeKernel<8> : dispatchDecodeKernel<1>, 1024, 0);
    decodeOccupancy[device][v].store(perSm, std::memory_order_relaxed);
  }
  cudaThreadExchangeStreamCaptureMode(&mode);
  if (err == cudaSuccess) loaded.fetch_or(bit, std::memory_order_acq_rel);
  return err;
}

unsigned gridOf(int64_t n, int64_t cap) { return static_cast<unsigned>(std::max<int64_t>(1, std::min(n, cap))); }

size_t roundUp256(size_t n) { return (n + 255) / 256 * 256; }

// An overlapped send's side stream (if any) joined to the call's stream.
cudaError_t joinSide(void* sideStream, void* joinEvent, cudaStream_t stream) {
  if (!sideStream) return cudaSuccess;
  const auto join = static_cast<cudaEvent_t>(joinEvent);
  const cudaError_t err = cudaEventRecord(join, static_cast<cudaStream_t>(sideStream));
  return err != cudaSuccess ? err : cudaStreamWaitEvent(stream, join, 0);
}

}  // namespace

cudaError_t dispatchSend(const EpDispatchSendArgs& a, const Launch& l) {
  if (const cudaError_t loadErr = loadKernels(); loadErr != cudaSuccess) return loadErr;
  const E::EpShapeView s = E::view(a.shape);
  const size_t countBytes = roundUp256(4 * (static_cast<size_t>(s.ranks) + 1));
  const bool direct = E::sendsRaw(s.payload, s.hidden, a.x);
  // an overlapped send: what the side stream reads is the caller's memory, not the workspace,
  // which the receive's launches reuse while the payloads are still being sent
  const bool overlap = a.sideStream != nullptr;
  uint8_t* scratch = overlap ? nullptr : static_cast<uint8_t*>(l.workspace.get(countBytes + (direct ? 0 : static_cast<size_t>(a.tokens) * s.metaAt)));
  uint32_t* sendCount = overlap ? a.sendCounts : reinterpret_cast<uint32_t*>(scratch);
  uint8_t* staging = overlap ? a.staging : scratch + countBytes;
  const uint8_t* source = direct ? reinterpret_cast<const uint8_t*>(a.x) : staging;
  const unsigned grid = static_cast<unsigned>(a.sms);
  const bool scan = !overlap && a.tokens <= kScanTokens && s.ranks <= kScanRanks;
  cudaError_t err = cudaSuccess;
  if (!scan) {
    slotsKernel<<<static_cast<unsigned>(s.ranks), kSlotThreads, 0, l.stream>>>(a.ids, a.tokens, s.k, s.experts, s.experts / s.ranks, s.maxTokens,
                                                                            a.combineIndex, sendCount, a.errors, a.epoch);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  if (!overlap) {
    if (a.tokens > 0 && !direct) {
      encodeKernel<<<static_cast<unsigned>(a.tokens), kThreads, 0, l.stream>>>(a.x, s.hidden, s.payload, s.metaAt, staging);
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
    if (scan) {
      sendKernel<true, kSendAll><<<grid, kThreads, 0, l.stream>>>(s, source, s.metaAt, a.ids, a.weights, a.tokens, a.combineIndex, a.dataDst, a.countDst,
                                                                  sendCount, a.errors, a.epoch, a.sync);
    } else {
      sendKernel<false, kSendAll><<<grid, kThreads, 0, l.stream>>>(s, source, s.metaAt, a.ids, a.weights, a.tokens, a.combineIndex, a.dataDst,
                                                                   a.countDst, sendCount, a.errors, a.epoch, a.sync);
    }
    return cudaGetLastError();
  }
  // overlapped: the side stream encodes the rows once the slots are known, while the launch
  // stream sends the metadata and the count words; the payloads follow once those are sent, so
  // that they do not queue on the link behind the payloads (the receiver lays out its rows from
  // them meanwhile)
  const auto side = static_cast<cudaStream_t>(a.sideStream);
  const auto fork = static_cast<cudaEvent_t>(a.forkEvent);
  if (a.tokens > 0 && !direct) {
    if ((err = cudaEventRecord(fork, l.stream)) != cudaSuccess) return err;
    if ((err = cudaStreamWaitEvent(side, fork, 0)) != cudaSuccess) return err;
    encodeKernel<<<static_cast<unsigned>(a.tokens), kThreads, 0, side>>>(a.x, s.hidden, s.payload, s.metaAt, staging);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  sendKernel<false, kSendMeta><<<grid, kThreads, 0, l.stream>>>(s, source, s.metaAt, a.ids, a.weights, a.tokens, a.combineIndex, a.dataDst, a.countDst,
                                                                sendCount, a.errors, a.epoch, a.sync);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  if ((err = cudaEventRecord(fork, l.stream)) != cudaSuccess) return err;
  if ((err = cudaStreamWaitEvent(side, fork, 0)) != cudaSuccess) return err;
  // this rank's own slots are read from x by the receive where x is sent as it is (ownRows)
  payloadKernel<<<std::min(grid, kPayloadCtas), kPayloadThreads, 0, side>>>(s, source, s.metaAt, a.ids, a.tokens, a.combineIndex, a.dataDst, sendCount,
                                                                           a.chunkDone, direct);
  return cudaGetLastError();
}

cudaError_t dispatchRecv(const EpDispatchRecvArgs& a, const Launch& l) {
  if (const cudaError_t loadErr = loadKernels(); loadErr != cudaSuccess) return loadErr;
  const E::EpShapeView s = E::view(a.shape);
  const int L = s.experts / s.ranks;
  const int64_t slots = static_cast<int64_t>(s.ranks) * s.maxTokens;
  const int64_t tiles = (slots + kTile - 1) / kTile;
  int32_t* lid = static_cast<int32_t*>(l.workspace.get(4 * static_cast<size_t>(slots * s.k + tiles * (L + 1) + 2 * L + s.ranks)));
  int32_t* tileCounts = lid + slots * s.k;
  int32_t* placed = tileCounts + tiles * (L + 1);
  int32_t* touch = placed + L;
  uint32_t* follows = reinterpret_cast<uint32_t*>(touch + L);
  cudaError_t err = cudaSuccess;
  if (slots * s.k <= kSmallPairs && L <= kSmallExperts) {
    // a decode step's receive: the wait and the layout in one launch (the tiled path takes four)
    layoutSmallKernel<<<1, 1024, 0, l.stream>>>(s, a.regions, a.counts, a.epoch, a.timeoutNs, a.status, a.recvCounts, follows, a.align, a.maxPerExpert, a.rows,
                                                placed, touch, a.layoutCounts, a.offsets, a.sourceIndex, a.rowIndex, a.usedRows, a.dropped, a.errors);
  } else {
    waitKernel<<<1, kThreads, 0, l.stream>>>(a.counts, s.ranks, a.epoch, 1, true, s.maxTokens, a.timeoutNs, a.status, E::kStatusDispatchTimeout,
                                             a.recvCounts, follows);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    // tiles fit a grid's x dimension: slots * k < 2^31
    countKernel<<<static_cast<unsigned>(tiles), kThreads, 0, l.stream>>>(s, a.regions, a.recvCounts, lid, a.rowIndex, tileCounts, a.sourceIndex,
                                                                         a.rows);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    scanKernel<<<1, 1024, 0, l.stream>>>(L, tiles, a.align, a.maxPerExpert, tileCounts, placed, touch, a.layoutCounts, a.offsets, a.usedRows,
                                         a.dropped, a.errors);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    placeKernel<<<static_cast<unsigned>(tiles), kThreads, 0, l.stream>>>(s, lid, tileCounts, placed, a.offsets, a.sourceIndex, a.rowIndex);
  }
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  if (a.rows > 0) {
    // 16-byte rows where every row of the output starts on 16 bytes
    const bool vec = s.hidden % 8 == 0 && reinterpret_cast<uintptr_t>(a.tokensOut) % 16 == 0;
    // whole rows per CTA once the slots alone give several CTAs per SM
    const int64_t parts = (s.hidden + kThreads * (vec ? 8 : 1) - 1) / (kThreads * (vec ? 8 : 1));
    const int shares = slots >= 8 * std::max(1, l.facts.multiprocessors) ? 1 : static_cast<int>(std::min<int64_t>(parts, 1 << 16));
    // gather has no padding rows to zero (grid.y 1)
    const dim3 grid(gridOf(std::max<int64_t>(slots * shares, L), 1 << 16), a.gather ? 1 : 2);
    if (vec) {
      rowsKernel<8><<<grid, kThreads, 0, l.stream>>>(s, a.regions, a.recvCounts, a.rowIndex, a.offsets, placed, touch, a.maxPerExpert, a.tokensOut,
                                                     follows, a.epoch, a.timeoutNs, a.status, shares, a.gather, a.ownRows);
    } else {
      rowsKernel<1><<<grid, kThreads, 0, l.stream>>>(s, a.regions, a.recvCounts, a.rowIndex, a.offsets, placed, touch, a.maxPerExpert, a.tokensOut,
                                                     follows, a.epoch, a.timeoutNs, a.status, shares, a.gather, a.ownRows);
    }
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  // the overlapped send's payload launch (on the side stream) ends before this call's work does
  return joinSide(a.sideStream, a.joinEvent, l.stream);
}

cudaError_t dispatch(const EpDispatchArgs& a, const Launch& l) {
  if (const cudaError_t loadErr = loadKernels(); loadErr != cudaSuccess) return loadErr;
  const EpDispatchSendArgs& sa = a.send;
  const EpDispatchRecvArgs& ra = a.recv;
  const E::EpShapeView s = E::view(sa.shape);
  const int L = s.experts / s.ranks;
  const int64_t slots = static_cast<int64_t>(s.ranks) * s.maxTokens;
  const bool direct = E::sendsRaw(s.payload, s.hidden, sa.x);
  // one launch where the send scans its own slots, the receive's layout is a small one, the
  // payload needs no encoding and the rows need no layout (gather); otherwise the two launchers
  // one after the other
  if (sa.sideStream || ra.sideStream || sa.tokens > kScanTokens || s.ranks > kScanRanks || slots * s.k > kSmallPairs || L > kSmallExperts || !direct ||
      !ra.gather) {
    const cudaError_t err = dispatchSend(sa, l);
    return err != cudaSuccess ? err : dispatchRecv(ra, l);
  }
  // 16-byte rows where every row of the output starts on 16 bytes
  const bool vec = s.hidden % 8 == 0 && reinterpret_cast<uintptr_t>(ra.tokensOut) % 16 == 0;
  auto kernel = vec ? dispatchDecodeKernel<8> : dispatchDecodeKernel<1>;
  // every CTA resident at once: some wait for others (the count words, the layout)
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  int perSm = 1;
  if (device < 64) perSm = std::max(1, decodeOccupancy[device][vec ? 1 : 0].load(std::memory_order_relaxed));
  const int64_t resident = static_cast<int64_t>(std::max(1, perSm)) * std::max(1, l.facts.multiprocessors);
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(sa.sms, resident));
  uint32_t* ws = static_cast<uint32_t*>(l.workspace.get(4 * static_cast<size_t>(2 * L + s.ranks)));
  int32_t* placed = reinterpret_cast<int32_t*>(ws);
  int32_t* touch = placed + L;
  uint32_t* follows = reinterpret_cast<uint32_t*>(touch + L);
  const int64_t parts = (s.hidden + 1024 * (vec ? 8 : 1) - 1) / (1024 * (vec ? 8 : 1));
  const int shares = static_cast<int>(std::min<int64_t>(parts, 1 << 16));
  kernel<<<grid, 1024, 0, l.stream>>>(s, reinterpret_cast<const uint8_t*>(sa.x), sa.ids, sa.weights, sa.tokens, sa.combineIndex, sa.dataDst, sa.countDst,
                                      sa.errors, const_cast<uint32_t*>(sa.epoch), sa.sync, ra.regions, ra.counts, ra.timeoutNs, ra.status, ra.recvCounts,
                                      follows, ra.align, ra.maxPerExpert, ra.rows, placed, touch, ra.layoutCounts, ra.offsets, ra.sourceIndex, ra.rowIndex,
                                      ra.usedRows, ra.dropped, ra.errors, ra.tokensOut, shares, a.recvSync);
  return cudaGetLastError();
}

cudaError_t combineSend(const EpCombineSendArgs& a, const Launch& l) {
  if (const cudaError_t loadErr = loadKernels(); loadErr != cudaSuccess) return loadErr;
  const E::EpShapeView s = E::view(a.shape);
  // 16-byte copies where every row of y and of the regions starts on 16 bytes
  const bool vec = s.hidden % 8 == 0 && reinterpret_cast<uintptr_t>(a.y) % 16 == 0;
  const unsigned grid = static_cast<unsigned>(a.sms);
  const bool reduced = s.combine == E::kCombineReduced;
  if (!a.sideStream) {
    if (reduced) {
      combineReduceKernel<false><<<grid, kThreads, 0, l.stream>>>(s, a.y, a.rows, a.regions, a.rowIndex, a.recvCounts, a.dataDst, a.countDst, a.epoch,
                                                                  a.sync, nullptr, vec);
    } else {
      combineSendKernel<false><<<grid, kThreads, 0, l.stream>>>(s, a.y, a.rows, a.rowIndex, a.recvCounts, a.dataDst, a.countDst, a.epoch, a.sync, nullptr,
                                                                vec, false);
    }
    return cudaGetLastError();
  }
  // overlapped: the count words first, then the entries on the side stream behind chunk flags,
  // so that each source sums its tokens while the rest of its rows travel
  combineCountsKernel<<<1, 32, 0, l.stream>>>(a.countDst, s.ranks, a.epoch, a.recvCounts, s.maxTokens);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const auto side = static_cast<cudaStream_t>(a.sideStream);
  const auto fork = static_cast<cudaEvent_t>(a.forkEvent);
  if ((err = cudaEventRecord(fork, l.stream)) != cudaSuccess) return err;
  if ((err = cudaStreamWaitEvent(side, fork, 0)) != cudaSuccess) return err;
  if (reduced) {
    combineReduceKernel<true><<<grid, kThreads, 0, side>>>(s, a.y, a.rows, a.regions, a.rowIndex, a.recvCounts, a.dataDst, a.countDst, a.epoch, a.sync,
                                                           a.chunkDone, vec);
  } else {
    combineSendKernel<true><<<grid, kThreads, 0, side>>>(s, a.y, a.rows, a.rowIndex, a.recvCounts, a.dataDst, a.countDst, a.epoch, a.sync, a.chunkDone,
                                                         vec, E::combineReadsOwnY(s.combine, s.hidden, a.y));
  }
  return cudaGetLastError();
}

cudaError_t combineRecv(const EpCombineRecvArgs& a, const Launch& l) {
  if (const cudaError_t loadErr = loadKernels(); loadErr != cudaSuccess) return loadErr;
  const E::EpShapeView s = E::view(a.shape);
  uint32_t* counts = static_cast<uint32_t*>(l.workspace.get(8 * static_cast<size_t>(s.ranks)));
  uint32_t* follows = counts + s.ranks;
  waitKernel<<<1, kThreads, 0, l.stream>>>(a.counts, s.ranks, const_cast<uint32_t*>(a.epoch), 0, false, s.maxTokens, a.timeoutNs, a.status,
                                           E::kStatusCombineTimeout, counts, follows);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  if (a.tokens > 0) {
    // 16-byte loads where every returned row and every output row starts on 16 bytes
    const bool vec = s.hidden % 8 == 0 && reinterpret_cast<uintptr_t>(a.out) % 16 == 0;
    // groups small enough that the CTAs fill the device about six times over, large enough that
    // the lookups are paid once per several tokens' rows
    const int64_t sms = std::max(1, l.facts.multiprocessors);
    const int group = static_cast<int>(std::clamp<int64_t>(a.tokens / (6 * sms), 1, kSumGroup));
    // one token per CTA: its row over several CTAs, about one 16-byte task per thread
    const int64_t per = vec ? s.hidden / 8 : s.hidden;
    const dim3 grid(gridOf((a.tokens + group - 1) / group, 1 << 16),
                    group == 1 ? static_cast<unsigned>(std::min<int64_t>((per + kThreads - 1) / kThreads, 64)) : 1);
    const bool bf16Out = a.outType == DType::BF16;
    if (vec) {
      combineSumKernel<8><<<grid, kThreads, 0, l.stream>>>(s, a.regions, counts, follows, a.epoch, a.timeoutNs, a.status, a.combineIndex, a.weights,
                                                           a.tokens, group, a.out, bf16Out, a.ownY, a.ownRows, a.ownRowIndex);
    } else {
      combineSumKernel<1><<<grid, kThreads, 0, l.stream>>>(s, a.regions, counts, follows, a.epoch, a.timeoutNs, a.status, a.combineIndex, a.weights,
                                                           a.tokens, group, a.out, bf16Out, a.ownY, a.ownRows, a.ownRowIndex);
    }
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  // the overlapped send's entries (on the side stream) end before this call's work does
  return joinSide(a.sideStream, a.joinEvent, l.stream);
}

}  // namespace moe::kernels::ep
