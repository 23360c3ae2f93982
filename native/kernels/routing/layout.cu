// expertLayout in three launches over tiles of 256 (token, slot) pairs:
//   count   per tile and expert, how many pairs it holds (column `experts`: ids out of range);
//   scan    one CTA: expert totals, padded offsets, each tile's starting rank per expert (written
//           over the counts), padding rows set to -1;
//   scatter each pair's rank = its tile's starting rank + pairs of the same expert before it in
//           the tile (earlier warps' counts + earlier lanes of its warp, from __match_any_sync).
// Ranks follow (token, slot) order, so the result is the CPU reference's counting sort exactly;
// nothing depends on the order atomics land in.
// One tile of pairs (small decode batches) takes one launch instead: one CTA counts, scans and
// scatters with the same arithmetic.
#include <cstdint>

#include "kernels/routing/routing.h"

namespace moe::kernels::routing {
namespace {

constexpr int kTile = 256;  // pairs per tile = threads per count / scatter CTA
constexpr int kTileWarps = kTile / 32;
constexpr int kScanThreads = 1024;
constexpr int kMaxCols = moe::routing::kMaxLayoutExperts + 1;
// One tile (T <= 32 at top-8). Measured on H200 (graph replay, noaux_tc 256 experts): the single
// CTA saved 0.9-1.9 µs at T = 1 and 16, and cost 3.7 µs at T = 128 (four tiles walked in turn
// against three launches of four CTAs).
constexpr int64_t kOneCtaMaxPairs = kTile;
static_assert((3 + kTileWarps) * kMaxCols * sizeof(int32_t) <= 48 * 1024, "oneCtaKernel's shared memory");

// Expert totals (column `experts`: ids out of range) -> counts, padded offsets, usedRows,
// dropped and errors; offset[] keeps the offsets in shared memory. Warp 0 scans, each lane over
// a run of consecutive experts; the other warps return at once.
__device__ void writeOffsets(const ExpertLayoutArgs& a, const int32_t* total, int32_t* offset) {
  const int E = a.experts;
  const bool masked = a.maxPerExpert > 0;
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    const int per = (E + 31) / 32;
    const int e0 = min(E, lane * per), e1 = min(E, e0 + per);
    int32_t local = 0, drop = 0;
    for (int e = e0; e < e1; ++e) {
      const int32_t c = total[e];
      local += masked ? a.maxPerExpert : (c + a.align - 1) / a.align * a.align;
      if (masked && c > a.maxPerExpert) drop += c - a.maxPerExpert;
    }
    int32_t incl = local;
#pragma unroll
    for (int off = 1; off < 32; off *= 2) {
      const int32_t o = __shfl_up_sync(0xFFFFFFFFu, incl, off);
      if (lane >= off) incl += o;
    }
#pragma unroll
    for (int off = 16; off >= 1; off /= 2) drop += __shfl_xor_sync(0xFFFFFFFFu, drop, off);
    int32_t run = incl - local;
    for (int e = e0; e < e1; ++e) {
      offset[e] = run;
      a.offsets[e] = run;
      const int32_t c = total[e];
      a.counts[e] = masked ? min(c, a.maxPerExpert) : c;
      run += masked ? a.maxPerExpert : (c + a.align - 1) / a.align * a.align;
    }
    if (lane == 31) {
      offset[E] = incl;
      a.offsets[E] = incl;
      *a.usedRows = incl;
      *a.dropped = drop;
      *a.errors = total[E];
    }
  }
}

// Rows no pair lands on get source -1: each expert's padding (its block past its pairs), then
// the tail past usedRows. The whole CTA takes part.
__device__ void fillPadding(const ExpertLayoutArgs& a, const int32_t* total, const int32_t* offset) {
  const int E = a.experts;
  const bool masked = a.maxPerExpert > 0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int e = warp; e < E; e += warps) {
    const int32_t used = masked ? min(total[e], a.maxPerExpert) : total[e];
    for (int64_t r = static_cast<int64_t>(offset[e]) + used + lane; r < offset[e + 1]; r += 32) a.sourceIndex[r] = -1;
  }
  for (int64_t r = static_cast<int64_t>(offset[E]) + threadIdx.x; r < a.rows; r += blockDim.x) a.sourceIndex[r] = -1;
}

// One pair per thread of a tile: its column (experts for ids out of range), its rank among the
// tile's earlier pairs of the same column, and, in warpCount[warp][col], each warp's count.
struct TilePair {
  bool valid;
  int col;
  int rankInTile;
};

__device__ TilePair rankInTile(const ExpertLayoutArgs& a, int64_t i, int32_t* warpCount) {
  const int E = a.experts, cols = E + 1;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int c = threadIdx.x; c < kTileWarps * cols; c += kTile) warpCount[c] = 0;
  __syncthreads();
  const bool valid = i < a.tokens * a.k;
  const int32_t id = valid ? a.ids[i] : -1;
  const int col = (id >= 0 && id < E) ? id : E;
  const unsigned same = __match_any_sync(0xFFFFFFFFu, valid ? col : -1);
  const int rankInWarp = __popc(same & ((1u << lane) - 1u));
  if (valid && rankInWarp == 0) warpCount[warp * cols + col] = __popc(same);
  __syncthreads();
  int rank = rankInWarp;
  if (valid) {
    for (int w = 0; w < warp; ++w) rank += warpCount[w * cols + col];
  }
  return {valid, col, rank};
}

// Pair i of rank `rank` in its expert: its row, or -1 when dropped (past maxPerExpert; the bound
// on rows only guards memory).
__device__ void place(const ExpertLayoutArgs& a, int64_t i, int col, int32_t rank, int32_t offset) {
  if (col == a.experts) {
    a.rowIndex[i] = -1;
    return;
  }
  const int64_t row = static_cast<int64_t>(offset) + rank;
  if ((a.maxPerExpert > 0 && rank >= a.maxPerExpert) || row >= a.rows) {
    a.rowIndex[i] = -1;
    return;
  }
  a.sourceIndex[row] = static_cast<int32_t>(i);
  a.rowIndex[i] = static_cast<int32_t>(row);
}

__global__ void __launch_bounds__(kTile) countKernel(const int32_t* __restrict__ ids, int64_t n, int experts,
                                                     int32_t* __restrict__ tileCounts) {
  extern __shared__ int32_t hist[];
  const int cols = experts + 1;
  for (int c = threadIdx.x; c < cols; c += kTile) hist[c] = 0;
  __syncthreads();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kTile + threadIdx.x;
  if (i < n) {
    const int32_t id = ids[i];
    atomicAdd(&hist[(id >= 0 && id < experts) ? id : experts], 1);
  }
  __syncthreads();
  for (int c = threadIdx.x; c < cols; c += kTile) tileCounts[static_cast<int64_t>(blockIdx.x) * cols + c] = hist[c];
}

__global__ void __launch_bounds__(kScanThreads) scanKernel(ExpertLayoutArgs a, int32_t* __restrict__ tileCounts, int64_t tiles) {
  __shared__ int32_t partSum[kMaxCols];  // [parts][cols], parts * cols <= max(1024, cols)
  __shared__ int32_t total[kMaxCols];
  __shared__ int32_t offset[kMaxCols];
  const int E = a.experts, cols = E + 1;
  // (column, part) work items; several parts per column when columns are few
  const int parts = cols >= kScanThreads ? 1 : kScanThreads / cols;
  const int64_t chunk = (tiles + parts - 1) / parts;

  for (int w = threadIdx.x; w < cols * parts; w += kScanThreads) {
    const int col = w % cols, part = w / cols;
    const int64_t t0 = part * chunk, t1 = min(tiles, t0 + chunk);
    int32_t sum = 0;
#pragma unroll 8
    for (int64_t t = t0; t < t1; ++t) sum += tileCounts[t * cols + col];
    partSum[part * cols + col] = sum;
  }
  __syncthreads();
  for (int col = threadIdx.x; col < cols; col += kScanThreads) {
    int32_t run = 0;
    for (int p = 0; p < parts; ++p) {
      const int32_t v = partSum[p * cols + col];
      partSum[p * cols + col] = run;  // becomes the part's starting rank
      run += v;
    }
    total[col] = run;
  }
  __syncthreads();

  writeOffsets(a, total, offset);
  __syncthreads();

  // Each tile's starting rank per expert, in place of its counts.
  for (int w = threadIdx.x; w < E * parts; w += kScanThreads) {
    const int col = w % E, part = w / E;
    const int64_t t0 = part * chunk, t1 = min(tiles, t0 + chunk);
    int32_t run = partSum[part * cols + col];
#pragma unroll 8
    for (int64_t t = t0; t < t1; ++t) {
      const int32_t c = tileCounts[t * cols + col];
      tileCounts[t * cols + col] = run;
      run += c;
    }
  }

  fillPadding(a, total, offset);
}

__global__ void __launch_bounds__(kTile) scatterKernel(ExpertLayoutArgs a, const int32_t* __restrict__ tileBase) {
  extern __shared__ int32_t warpCount[];  // [kTileWarps][cols]: pairs of each expert per warp
  const int cols = a.experts + 1;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kTile + threadIdx.x;
  const TilePair p = rankInTile(a, i, warpCount);
  if (!p.valid) return;
  const int32_t base = p.col == a.experts ? 0 : tileBase[static_cast<int64_t>(blockIdx.x) * cols + p.col];
  place(a, i, p.col, base + p.rankInTile, p.col == a.experts ? 0 : a.offsets[p.col]);
}

// The three steps in one CTA, for decode: totals, offsets and padding, then the tiles in order,
// each pair's rank = the pairs of its expert in earlier tiles (base) + its rank in the tile.
__global__ void __launch_bounds__(kTile) oneCtaKernel(ExpertLayoutArgs a) {
  extern __shared__ int32_t sm[];
  const int E = a.experts, cols = E + 1;
  int32_t* total = sm;               // [cols]
  int32_t* offset = total + cols;    // [cols]
  int32_t* base = offset + cols;     // [cols]
  int32_t* warpCount = base + cols;  // [kTileWarps][cols]
  const int64_t n = a.tokens * a.k;
  for (int c = threadIdx.x; c < cols; c += kTile) total[c] = base[c] = 0;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < n; i += kTile) {
    const int32_t id = a.ids[i];
    atomicAdd(&total[(id >= 0 && id < E) ? id : E], 1);
  }
  __syncthreads();
  writeOffsets(a, total, offset);
  __syncthreads();
  fillPadding(a, total, offset);
  for (int64_t t0 = 0; t0 < n; t0 += kTile) {
    const int64_t i = t0 + threadIdx.x;
    const TilePair p = rankInTile(a, i, warpCount);  // starts and ends with a barrier
    if (p.valid) place(a, i, p.col, base[p.col] + p.rankInTile, offset[p.col]);
    __syncthreads();  // every thread has read base[] before it moves on
    for (int c = threadIdx.x; c < cols; c += kTile) {
      int32_t s = 0;
      for (int w = 0; w < kTileWarps; ++w) s += warpCount[w * cols + c];
      base[c] += s;
    }
    __syncthreads();  // base[] is complete before the next tile reads it
  }
}

}  // namespace

cudaError_t expertLayout(const ExpertLayoutArgs& a, const Launch& l) {
  const int64_t n = a.tokens * a.k;
  const int64_t tiles = (n + kTile - 1) / kTile;
  const int cols = a.experts + 1;
  if (n <= kOneCtaMaxPairs) {
    oneCtaKernel<<<1, kTile, (3 + kTileWarps) * cols * sizeof(int32_t), l.stream>>>(a);
    return cudaGetLastError();
  }
  int32_t* tileCounts = nullptr;
  if (tiles > 0) {
    tileCounts = static_cast<int32_t*>(l.workspace.get(static_cast<size_t>(tiles) * cols * sizeof(int32_t)));
    countKernel<<<static_cast<unsigned>(tiles), kTile, cols * sizeof(int32_t), l.stream>>>(a.ids, n, a.experts, tileCounts);
    if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  }
  scanKernel<<<1, kScanThreads, 0, l.stream>>>(a, tileCounts, tiles);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  if (tiles > 0) {
    scatterKernel<<<static_cast<unsigned>(tiles), kTile, kTileWarps * cols * sizeof(int32_t), l.stream>>>(a, tileCounts);
  }
  return cudaGetLastError();
}

}  // namespace moe::kernels::routing
