// expertLayout in three launches over tiles of 256 (token, slot) pairs:
//   count   per tile and expert, how many pairs it holds (column `experts`: ids out of range);
//   scan    one CTA: expert totals, padded offsets, each tile's starting rank per expert (written
//           over the counts), padding rows set to -1;
//   scatter each pair's rank = its tile's starting rank + pairs of the same expert before it in
//           the tile (earlier warps' counts + earlier lanes of its warp, from __match_any_sync).
// Ranks follow (token, slot) order, so the result is the CPU reference's counting sort exactly;
// nothing depends on the order atomics land in.
#include <cstdint>

#include "kernels/routing/routing.h"

namespace moe::kernels::routing {
namespace {

constexpr int kTile = 256;  // pairs per tile = threads per count / scatter CTA
constexpr int kTileWarps = kTile / 32;
constexpr int kScanThreads = 1024;
constexpr int kMaxCols = moe::routing::kMaxLayoutExperts + 1;

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
  const bool masked = a.maxPerExpert > 0;
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

  // Offsets: warp 0 scans, each lane over a run of consecutive experts.
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

  // Rows no pair lands on: each expert's padding (its block past its pairs), then the tail.
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int e = warp; e < E; e += kScanThreads / 32) {
    const int32_t used = masked ? min(total[e], a.maxPerExpert) : total[e];
    for (int64_t r = static_cast<int64_t>(offset[e]) + used + lane; r < offset[e + 1]; r += 32) a.sourceIndex[r] = -1;
  }
  for (int64_t r = static_cast<int64_t>(offset[E]) + threadIdx.x; r < a.rows; r += kScanThreads) a.sourceIndex[r] = -1;
}

__global__ void __launch_bounds__(kTile) scatterKernel(ExpertLayoutArgs a, const int32_t* __restrict__ tileBase) {
  extern __shared__ int32_t warpCount[];  // [kTileWarps][cols]: pairs of each expert per warp
  const int E = a.experts, cols = E + 1;
  for (int c = threadIdx.x; c < kTileWarps * cols; c += kTile) warpCount[c] = 0;
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = a.tokens * a.k;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kTile + threadIdx.x;
  const bool valid = i < n;
  const int32_t id = valid ? a.ids[i] : -1;
  const int col = (id >= 0 && id < E) ? id : E;
  const unsigned same = __match_any_sync(0xFFFFFFFFu, valid ? col : -1);
  const int rankInWarp = __popc(same & ((1u << lane) - 1u));
  if (valid && rankInWarp == 0) warpCount[warp * cols + col] = __popc(same);
  __syncthreads();
  if (!valid) return;
  if (col == E) {
    a.rowIndex[i] = -1;
    return;
  }
  int32_t rank = tileBase[static_cast<int64_t>(blockIdx.x) * cols + col] + rankInWarp;
  for (int w = 0; w < warp; ++w) rank += warpCount[w * cols + col];
  const int64_t row = static_cast<int64_t>(a.offsets[col]) + rank;
  // beyond maxPerExpert the pair is dropped; the bound on rows only guards memory
  if ((a.maxPerExpert > 0 && rank >= a.maxPerExpert) || row >= a.rows) {
    a.rowIndex[i] = -1;
    return;
  }
  a.sourceIndex[row] = static_cast<int32_t>(i);
  a.rowIndex[i] = static_cast<int32_t>(row);
}

}  // namespace

cudaError_t expertLayout(const ExpertLayoutArgs& a, const Launch& l) {
  const int64_t n = a.tokens * a.k;
  const int64_t tiles = (n + kTile - 1) / kTile;
  const int cols = a.experts + 1;
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
