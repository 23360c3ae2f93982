// Portable (sm_80 / sm_90) NVFP4 GEMM: out[M,N] = alpha*gsA*gsW * A[M,K] . W[N,K]^T (+ bias).
//
// Swap-AB on mma.sync m16n8k16: the weight is the MMA's A operand (16 weight rows) and the
// tokens are its N (8 per fragment), so a decode-sized M wastes little. Each CTA covers
// kTileN weight rows x kTileM tokens and a range of 64-wide K chunks (split-K). Per chunk, a
// cp.async pipeline (kStages deep, 16-byte copies, zero-fill at every tail) brings in the packed
// weight bytes, their e4m3 scales and the activation tile; warps then dequantize their weight
// fragments in registers to BF16 (exact) and run the MMAs.
//
// K permutation. The MMA sums over k, so any bijection between the MMA's logical k and the
// physical k works if both operands use it. Thread t of a quad owns physical k [16t, 16t+16) of
// the chunk - exactly one scale block - as two 32-bit words of eight E2M1 codes. A word turns
// into four bf16x2 pairs (n_j, n_{j+4}) with a few bit operations (dequantWord); the activation
// side forms the same pairs from eight consecutive bf16 with byte permutes (pairBf16), or with
// dequantWord again when A is NVFP4.
#pragma once
#include <cstdint>
#include <type_traits>

#include "kernels/nvfp4/common.cuh"
#include "kernels/nvfp4/group.cuh"
#include "kernels/nvfp4/quantize_block.cuh"

namespace moe::kernels::nvfp4::detail {

// The row of x that A row `row` of the grouped kernel reads: itself, or in a gather the token of
// its pair (-1 where that is no row of x, which then reads zeros).
struct SameRows {
  __device__ __forceinline__ int64_t operator()(int64_t row) const { return row; }
};
struct GatherRows {
  const int32_t* pairs;
  int k, tokens;
  __device__ __forceinline__ int64_t operator()(int64_t row) const {
    const int pair = __ldg(pairs + row);
    const int t = pair >= 0 ? pair / k : -1;
    return t < tokens ? t : -1;
  }
};

// The rows of one tile, mapped once per tile into shared memory (table[r] for row m0 + r): the
// loaders then pay a shared-memory load per piece, not a global load and a division per stage.
struct TableRows {
  const int32_t* table;
  int64_t m0;
  __device__ __forceinline__ int64_t operator()(int64_t row) const { return table[row - m0]; }
};

// Row `row` (in range when inRange) through the map: SameRows leaves both as they are, so that
// the plain loaders compile to what they were before there was a map.
template <class RowMap>
__device__ __forceinline__ void mapRow(RowMap map, int64_t& row, bool& inRange) {
  if constexpr (!std::is_same_v<RowMap, SameRows>) {
    row = inRange ? map(row) : -1;
    inRange = row >= 0;
  }
}

// Swiglu row order: virtual row v of 16-row group G = v/16 is gate row 8G + v%8 when v%16 < 8
// and up row I + 8G + v%8 otherwise, so one MMA fragment holds gate and up of the same output
// column. -1 past the I columns.
__device__ __forceinline__ int64_t swigluRow(int64_t v, int I) {
  const int64_t j = (v >> 4) * 8 + (v & 7);
  return j < I ? ((v & 8) ? I + j : j) : -1;
}

struct GemmParams {
  const void* a;               // bf16 [M, K] or packed E2M1 [M, K/2]
  const uint8_t* aScales;      // e4m3 [M, K/16] (NVFP4 A only)
  const float* aGlobalScale;   // device (NVFP4 A only)
  const uint8_t* w;            // packed E2M1 [N, K/2]
  const uint8_t* wScales;      // e4m3 [N, K/16]
  const float* wGlobalScale;   // device
  const void* bias;            // [N] or nullptr
  void* out;                   // [M, N]
  float* partial;              // [splits, M, N] fp32 when split, else nullptr
  int M, N, K;
  int numChunks, chunksPerSplit;
  float alpha;
  bool biasF32, outF32;
  bool wVec16;   // weight/packed-A rows are 16-byte aligned (K % 32 == 0 and aligned base)
  bool sVec4;    // scale rows are 4-byte aligned (K % 64 == 0 and aligned base)
};

template <int WarpsW, int WarpsT, int MT, int NT, int Stages, bool AFp4, int MinBlocks>
struct GemmShape {
  static constexpr int kWarpsW = WarpsW, kWarpsT = WarpsT, kMT = MT, kNT = NT;
  static constexpr int kStages = Stages;
  static constexpr bool kAFp4 = AFp4;
  static constexpr int kMinBlocks = MinBlocks;
  static constexpr int kThreads = WarpsW * WarpsT * 32;
  static constexpr int kTileN = WarpsW * 16 * MT;
  static constexpr int kTileM = WarpsT * 8 * NT;
  // Per stage, one 64-wide K chunk: weight bytes, weight scales, activations (+ their scales).
  static constexpr int kWBytes = kTileN * 32;
  static constexpr int kWsBytes = kTileN * 4;
  static constexpr int kABytes = AFp4 ? kTileM * 32 : kTileM * 128;
  static constexpr int kAsBytes = AFp4 ? kTileM * 4 : 0;
  static constexpr int kStageBytes = kWBytes + kWsBytes + kABytes + kAsBytes;
  static constexpr int kSmemBytes = kStages * kStageBytes;
  static_assert(kStageBytes % 16 == 0, "stage regions must stay 16-byte aligned");
};

// Copies `rows` rows x 32 bytes of packed E2M1 (K chunk `c`) into dst (row stride 32 bytes).
// Rows at or past `rowLimit`, and bytes past K/2, are zero-filled.
template <int Threads, class RowMap = SameRows>
__device__ __forceinline__ void loadPackedChunk(uint8_t* dst, const uint8_t* src, int rows,
                                                int64_t row0, int rowLimit, int rowBytes, int c,
                                                bool vec16, RowMap map = {}) {
  const int tid = threadIdx.x;
  for (int idx = tid; idx < rows * 2; idx += Threads) {
    const int r = idx >> 1, piece = idx & 1;
    int64_t row = row0 + r;
    const int off = c * 32 + piece * 16;
    bool inRange = row < rowLimit;
    mapRow(map, row, inRange);
    int valid = inRange ? min(max(rowBytes - off, 0), 16) : 0;
    const uint8_t* s = src + row * rowBytes + off;
    uint8_t* d = dst + r * 32 + piece * 16;
    if (vec16) {
      cpAsync16(d, valid > 0 ? s : src, valid);
    } else {
      // rowBytes is a multiple of 8, so rows are at least 8-byte aligned.
      const int v0 = min(valid, 8), v1 = max(valid - 8, 0);
      cpAsync8(d, v0 > 0 ? s : src, v0);
      cpAsync8(d + 8, v1 > 0 ? s + 8 : src, v1);
    }
  }
}

// Copies `rows` rows x 4 scale bytes (K chunk `c`) into dst (row stride 4 bytes), zero-filled
// past the tensor.
template <int Threads, class RowMap = SameRows>
__device__ __forceinline__ void loadScaleChunk(uint8_t* dst, const uint8_t* src, int rows,
                                               int64_t row0, int rowLimit, int kBlocks, int c,
                                               bool vec4, RowMap map = {}) {
  const int tid = threadIdx.x;
  for (int r = tid; r < rows; r += Threads) {
    int64_t row = row0 + r;
    const int off = c * 4;
    bool inRange = row < rowLimit;
    mapRow(map, row, inRange);
    const int valid = inRange ? min(max(kBlocks - off, 0), 4) : 0;
    const uint8_t* s = src + row * kBlocks + off;
    if (vec4) {
      cpAsync4(dst + r * 4, valid > 0 ? s : src, valid);
    } else {
      // Unaligned scale rows (K % 64 != 0): a plain load; visible to the consumers after the
      // __syncthreads that precedes the compute on this stage.
      uint32_t v = 0;
      for (int j = 0; j < valid; ++j) v |= static_cast<uint32_t>(s[j]) << (8 * j);
      *reinterpret_cast<uint32_t*>(dst + r * 4) = v;
    }
  }
}

template <class S>
__device__ __forceinline__ void loadStage(const GemmParams& p, uint8_t* stage, int64_t n0,
                                          int64_t m0, int c) {
  uint8_t* sW = stage;
  uint8_t* sWs = sW + S::kWBytes;
  uint8_t* sA = sWs + S::kWsBytes;
  uint8_t* sAs = sA + S::kABytes;
  const int kBlocks = p.K / 16;
  loadPackedChunk<S::kThreads>(sW, p.w, S::kTileN, n0, p.N, p.K / 2, c, p.wVec16);
  loadScaleChunk<S::kThreads>(sWs, p.wScales, S::kTileN, n0, p.N, kBlocks, c, p.sVec4);
  if constexpr (S::kAFp4) {
    loadPackedChunk<S::kThreads>(sA, static_cast<const uint8_t*>(p.a), S::kTileM, m0, p.M,
                                 p.K / 2, c, p.wVec16);
    loadScaleChunk<S::kThreads>(sAs, p.aScales, S::kTileM, m0, p.M, kBlocks, c, p.sVec4);
  } else {
    // bf16 rows are 2K bytes (a multiple of 32), chunk = 128 bytes = 8 pieces of 16. Piece q of
    // row r lands in slot q ^ (r & 7) so a quad-per-row 16-byte read pattern is conflict-free.
    const uint8_t* a = static_cast<const uint8_t*>(p.a);
    const int rowBytes = p.K * 2;
    for (int idx = threadIdx.x; idx < S::kTileM * 8; idx += S::kThreads) {
      const int r = idx >> 3, piece = idx & 7;
      const int64_t row = m0 + r;
      const int off = c * 128 + piece * 16;
      const int valid = row < p.M ? min(max(rowBytes - off, 0), 16) : 0;
      const uint8_t* s = a + row * rowBytes + off;
      cpAsync16(sA + r * 128 + ((piece ^ (r & 7)) << 4), valid > 0 ? s : a, valid);
    }
  }
}

// The grouped kernel's weight loads: loadPackedChunk / loadScaleChunk with the rows read in the
// swiglu order (swigluRow) when swigluI > 0.
template <int Threads>
__device__ __forceinline__ void loadPackedChunkGrouped(uint8_t* dst, const uint8_t* src, int rows, int64_t row0,
                                                       int rowLimit, int rowBytes, int c, bool vec16, int swigluI) {
  for (int idx = threadIdx.x; idx < rows * 2; idx += Threads) {
    const int r = idx >> 1, piece = idx & 1;
    int64_t row = row0 + r;
    bool inRange = row < rowLimit;
    if (swigluI > 0) {
      row = swigluRow(row, swigluI);
      inRange = row >= 0;
    }
    const int off = c * 32 + piece * 16;
    const int valid = inRange ? min(max(rowBytes - off, 0), 16) : 0;
    const uint8_t* s = src + row * rowBytes + off;
    uint8_t* d = dst + r * 32 + piece * 16;
    if (vec16) {
      cpAsync16(d, valid > 0 ? s : src, valid);
    } else {
      const int v0 = min(valid, 8), v1 = max(valid - 8, 0);
      cpAsync8(d, v0 > 0 ? s : src, v0);
      cpAsync8(d + 8, v1 > 0 ? s + 8 : src, v1);
    }
  }
}

template <int Threads>
__device__ __forceinline__ void loadScaleChunkGrouped(uint8_t* dst, const uint8_t* src, int rows, int64_t row0,
                                                      int rowLimit, int kBlocks, int c, bool vec4, int swigluI) {
  for (int r = threadIdx.x; r < rows; r += Threads) {
    int64_t row = row0 + r;
    bool inRange = row < rowLimit;
    if (swigluI > 0) {
      row = swigluRow(row, swigluI);
      inRange = row >= 0;
    }
    const int off = c * 4;
    const int valid = inRange ? min(max(kBlocks - off, 0), 4) : 0;
    const uint8_t* s = src + row * kBlocks + off;
    if (vec4) {
      cpAsync4(dst + r * 4, valid > 0 ? s : src, valid);
    } else {
      uint32_t v = 0;
      for (int j = 0; j < valid; ++j) v |= static_cast<uint32_t>(s[j]) << (8 * j);
      *reinterpret_cast<uint32_t*>(dst + r * 4) = v;
    }
  }
}

// loadStage for the grouped kernel: the weights through the loaders above, the activations as
// loadStage reads them (bf16, or NVFP4 codes and scales).
template <class S, class RowMap>
__device__ __forceinline__ void loadActivationsGrouped(const GemmParams& p, uint8_t* sA, int64_t m0, int c, RowMap map) {
  if constexpr (S::kAFp4) {
    loadPackedChunk<S::kThreads>(sA, static_cast<const uint8_t*>(p.a), S::kTileM, m0, p.M, p.K / 2, c, p.wVec16, map);
    loadScaleChunk<S::kThreads>(sA + S::kABytes, p.aScales, S::kTileM, m0, p.M, p.K / 16, c, p.sVec4, map);
    return;
  }
  const uint8_t* a = static_cast<const uint8_t*>(p.a);
  const int rowBytes = p.K * 2;
  for (int idx = threadIdx.x; idx < S::kTileM * 8; idx += S::kThreads) {
    const int r = idx >> 3, piece = idx & 7;
    int64_t row = m0 + r;
    const int off = c * 128 + piece * 16;
    bool inRange = row < p.M;
    mapRow(map, row, inRange);
    const int valid = inRange ? min(max(rowBytes - off, 0), 16) : 0;
    const uint8_t* s = a + row * rowBytes + off;
    cpAsync16(sA + r * 128 + ((piece ^ (r & 7)) << 4), valid > 0 ? s : a, valid);
  }
}

template <class S, class RowMap>
__device__ __forceinline__ void loadStageGrouped(const GemmParams& p, int swigluI, uint8_t* stage, int64_t n0, int64_t m0,
                                                 int c, RowMap map) {
  uint8_t* sW = stage;
  uint8_t* sWs = sW + S::kWBytes;
  uint8_t* sA = sWs + S::kWsBytes;
  loadPackedChunkGrouped<S::kThreads>(sW, p.w, S::kTileN, n0, p.N, p.K / 2, c, p.wVec16, swigluI);
  loadScaleChunkGrouped<S::kThreads>(sWs, p.wScales, S::kTileN, n0, p.N, p.K / 16, c, p.sVec4, swigluI);
  loadActivationsGrouped<S>(p, sA, m0, c, map);
}

template <class S>
__device__ __forceinline__ void computeStage(const uint8_t* stage, int warpW, int warpT, int g,
                                             int t, float (&acc)[S::kMT][S::kNT][4]) {
  constexpr int MT = S::kMT, NT = S::kNT;
  const uint8_t* sW = stage;
  const uint8_t* sWs = sW + S::kWBytes;
  const uint8_t* sA = sWs + S::kWsBytes;
  const uint8_t* sAs = sA + S::kABytes;

  // This thread's weight words (rows g and g+8 of each 16-row fragment) and their scales.
  uint2 wq[MT][2];
  uint32_t wScale[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int r = (warpW * MT + mt) * 16 + hh * 8 + g;
      wq[mt][hh] = *reinterpret_cast<const uint2*>(sW + r * 32 + 8 * t);
      wScale[mt][hh] = scaleToBf16x2(sWs[r * 4 + t]);
    }
  }
  uint2 aq[S::kAFp4 ? NT : 1];
  uint32_t aScale[S::kAFp4 ? NT : 1];
  if constexpr (S::kAFp4) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int r = (warpT * NT + nt) * 8 + g;
      aq[nt] = *reinterpret_cast<const uint2*>(sA + r * 32 + 8 * t);
      aScale[nt] = scaleToBf16x2(sAs[r * 4 + t]);
    }
  }

#pragma unroll
  for (int w2 = 0; w2 < 2; ++w2) {
    uint32_t b[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      if constexpr (S::kAFp4) {
        dequantWord(w2 ? aq[nt].y : aq[nt].x, aScale[nt], b[nt]);
      } else {
        const int r = (warpT * NT + nt) * 8 + g;
        const uint4 v =
            *reinterpret_cast<const uint4*>(sA + r * 128 + (((2 * t + w2) ^ (r & 7)) << 4));
        const uint32_t raw[4] = {v.x, v.y, v.z, v.w};
        pairBf16(raw, b[nt]);
      }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      uint32_t lo[4], hi[4];
      dequantWord(w2 ? wq[mt][0].y : wq[mt][0].x, wScale[mt][0], lo);
      dequantWord(w2 ? wq[mt][1].y : wq[mt][1].x, wScale[mt][1], hi);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          mmaBf16(acc[mt][nt], lo[2 * h], hi[2 * h], lo[2 * h + 1], hi[2 * h + 1], b[nt][2 * h],
                  b[nt][2 * h + 1]);
        }
      }
    }
  }
}

// gemmKernel's pipeline and epilogue for one output tile of the grouped kernel: weight rows
// [n0, n0 + kTileN) x tokens [m0, m0 + kTileM), all K chunks; p holds one expert's pointers and
// rows. (The dense kernel keeps its own copy and its parameters unchanged, so that its code
// generation stays what was measured.) OutFp4 (swiglu only): p.out holds the NVFP4 codes of the
// expert's rows and outScales their block scales, quantized with *outGs. map: the row of p.a each
// of the expert's rows reads (SameRows, or a gather's TableRows).
template <class S, bool OutFp4, class RowMap>
__device__ __forceinline__ void gemmTile(const GemmParams& p, int swigluI, uint8_t* smem, int64_t n0, int64_t m0,
                                         uint8_t* outScales, const float* outGs, RowMap map) {
  const int cBegin = 0, numLocal = p.numChunks;
  constexpr int MT = S::kMT, NT = S::kNT;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int warpW = warp % S::kWarpsW, warpT = warp / S::kWarpsW;

  float acc[MT][NT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;

  // One commit group per stage, empty ones included, so wait_group<kStages-2> always means
  // "the chunk about to be consumed has landed".
#pragma unroll
  for (int s = 0; s < S::kStages - 1; ++s) {
    if (s < numLocal) loadStageGrouped<S>(p, swigluI, smem + s * S::kStageBytes, n0, m0, cBegin + s, map);
    cpAsyncCommit();
  }
  for (int i = 0; i < numLocal; ++i) {
    cpAsyncWait<S::kStages - 2>();
    // Makes chunk i visible to all warps, and guarantees every warp is done with chunk i-1,
    // whose slot the next load overwrites.
    __syncthreads();
    const int next = i + S::kStages - 1;
    if (next < numLocal) loadStageGrouped<S>(p, swigluI, smem + (next % S::kStages) * S::kStageBytes, n0, m0, cBegin + next, map);
    cpAsyncCommit();
    computeStage<S>(smem + (i % S::kStages) * S::kStageBytes, warpW, warpT, g, t, acc);
  }
  cpAsyncWait<0>();

  // The dequantized operands carry 2^-8 each (see scaleToBf16x2).
  float factor;
  if constexpr (S::kAFp4) factor = p.alpha * __ldg(p.aGlobalScale) * __ldg(p.wGlobalScale) * 0x1p16f;
  else factor = p.alpha * __ldg(p.wGlobalScale) * 0x1p8f;
  if constexpr (OutFp4) {
    // The tile's swiglu values, rounded to bf16, are staged in shared memory; then one thread
    // per 16-column block quantizes a row's block with the quantizer's math (quantize_block.cuh).
    // So the bytes are those of quantize(bf16 swiglu output), whatever the tile shape.
    constexpr int kCols = S::kTileN / 2;  // output columns of the tile (swiglu order: gate, up per 16 rows)
    constexpr int kBlocks = kCols / 16;
    static_assert(kCols % 16 == 0, "a tile must hold whole 16-column blocks");
    static_assert(S::kTileM * kCols * 2 <= S::kSmemBytes, "the staged tile must fit in the pipeline's shared memory");
    const int I = swigluI;
    uint16_t* sOut = reinterpret_cast<uint16_t*>(smem);
    // every warp is done reading the pipeline's last stage before the tile overwrites it
    __syncthreads();
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int jl = (warpW * MT + mt) * 8 + g;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) {
          const int ml = (warpT * NT + nt) * 8 + 2 * t + jj;
          const float v = swiglu(acc[mt][nt][jj] * factor, acc[mt][nt][2 + jj] * factor);
          sOut[ml * kCols + jl] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
        }
      }
    }
    __syncthreads();
    const float gs = __ldg(outGs);
    const int64_t j0 = n0 >> 1;  // n0 is a multiple of kTileN: the tile's first output column
    for (int idx = threadIdx.x; idx < S::kTileM * kBlocks; idx += S::kThreads) {
      const int ml = idx / kBlocks, b = idx % kBlocks;
      const int64_t m = m0 + ml, j = j0 + b * 16;
      // I % 16 == 0: a block is wholly inside or wholly past the I columns
      if (m >= p.M || j >= I) continue;
      const uint4* src = reinterpret_cast<const uint4*>(sOut + ml * kCols + b * 16);
      const uint4 u0 = src[0], u1 = src[1];
      const uint32_t w0[4] = {u0.x, u0.y, u0.z, u0.w}, w1[4] = {u1.x, u1.y, u1.z, u1.w};
      float v[16];
      uint32_t signs = 0;
      bf16OrF16Words<DType::BF16>(w0, v, signs, 0);
      bf16OrF16Words<DType::BF16>(w1, v + 8, signs, 8);
      uint2 d;
      uint8_t scale;
      quantizeBlockValues(v, signs, gs, d, scale);
      const int64_t block = (m * I + j) / 16;
      static_cast<uint2*>(p.out)[block] = d;
      outScales[block] = scale;
    }
    return;
  }
  if (swigluI > 0) {
    const int I = swigluI;
    // acc[..][i]: i & 2 selects the fragment's up row, i & 1 the second token.
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int64_t j = ((n0 + (warpW * MT + mt) * 16) >> 1) + g;
      if (j >= I) continue;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) {
          const int64_t m = m0 + (warpT * NT + nt) * 8 + 2 * t + jj;
          if (m >= p.M) continue;
          const float v = swiglu(acc[mt][nt][jj] * factor, acc[mt][nt][2 + jj] * factor);
          static_cast<__nv_bfloat16*>(p.out)[m * I + j] = __float2bfloat16_rn(v);
        }
      }
    }
    return;
  }
  // bf16 out, no bias, no split
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t n = n0 + (warpW * MT + mt) * 16 + g + ((i & 2) ? 8 : 0);
        const int64_t m = m0 + (warpT * NT + nt) * 8 + 2 * t + (i & 1);
        if (n >= p.N || m >= p.M) continue;
        static_cast<__nv_bfloat16*>(p.out)[m * p.N + n] = __float2bfloat16_rn(acc[mt][nt][i] * factor);
      }
    }
  }
}

// The dense kernel: grid (ceil(N/tileN), ceil(M/tileM), splits).
template <class S>
__global__ void __launch_bounds__(S::kThreads, S::kMinBlocks) gemmKernel(const GemmParams p) {
  extern __shared__ __align__(16) uint8_t smem[];
  constexpr int MT = S::kMT, NT = S::kNT;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int warpW = warp % S::kWarpsW, warpT = warp / S::kWarpsW;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * S::kTileN;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * S::kTileM;
  const int cBegin = blockIdx.z * p.chunksPerSplit;
  const int numLocal = max(0, min(p.numChunks - cBegin, p.chunksPerSplit));

  float acc[MT][NT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;

  // One commit group per stage, empty ones included, so wait_group<kStages-2> always means
  // "the chunk about to be consumed has landed".
#pragma unroll
  for (int s = 0; s < S::kStages - 1; ++s) {
    if (s < numLocal) loadStage<S>(p, smem + s * S::kStageBytes, n0, m0, cBegin + s);
    cpAsyncCommit();
  }
  for (int i = 0; i < numLocal; ++i) {
    cpAsyncWait<S::kStages - 2>();
    // Makes chunk i visible to all warps, and guarantees every warp is done with chunk i-1,
    // whose slot the next load overwrites.
    __syncthreads();
    const int next = i + S::kStages - 1;
    if (next < numLocal) loadStage<S>(p, smem + (next % S::kStages) * S::kStageBytes, n0, m0, cBegin + next);
    cpAsyncCommit();
    computeStage<S>(smem + (i % S::kStages) * S::kStageBytes, warpW, warpT, g, t, acc);
  }
  cpAsyncWait<0>();

  // The dequantized operands carry 2^-8 each (see scaleToBf16x2).
  const float gsA = S::kAFp4 ? __ldg(p.aGlobalScale) : 1.0f;
  const float factor = p.alpha * gsA * __ldg(p.wGlobalScale) * (S::kAFp4 ? 0x1p16f : 0x1p8f);
  const int64_t MN = static_cast<int64_t>(p.M) * p.N;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t n = n0 + (warpW * MT + mt) * 16 + g + ((i & 2) ? 8 : 0);
        const int64_t m = m0 + (warpT * NT + nt) * 8 + 2 * t + (i & 1);
        if (n >= p.N || m >= p.M) continue;
        float v = acc[mt][nt][i] * factor;
        const int64_t idx = m * p.N + n;
        if (p.partial != nullptr) {
          p.partial[blockIdx.z * MN + idx] = v;
          continue;
        }
        if (p.bias != nullptr) {
          v += p.biasF32 ? static_cast<const float*>(p.bias)[n]
                         : __bfloat162float(static_cast<const __nv_bfloat16*>(p.bias)[n]);
        }
        if (p.outF32) static_cast<float*>(p.out)[idx] = v;
        else static_cast<__nv_bfloat16*>(p.out)[idx] = __float2bfloat16_rn(v);
      }
    }
  }
}

// The grouped kernel: grid (N tiles, mSlots, E). CTA (x, y, e) takes tiles y, y + mSlots, ...
// of expert e's rows, so every tile lies inside one expert whatever the layout's alignment, and
// the grid is the same for any counts. An expert without rows costs its CTAs two loads.
// Gather: x holds one row per token and the expert's rows name theirs (GroupParams::xRows); a
// variant of its own, so that the plain kernels' code stays as it was.
template <class S, bool OutFp4, bool Gather>
__global__ void __launch_bounds__(S::kThreads, S::kMinBlocks) groupedGemmKernel(const GemmParams p, const GroupParams group) {
  extern __shared__ __align__(16) uint8_t smem[];
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * S::kTileN;
  const int e = blockIdx.z;
  int64_t start;
  int count;
  if (!groupSlot(group, e, start, count)) return;
#pragma unroll 1
  for (int tile = blockIdx.y; tile * S::kTileM < count; tile += gridDim.y) {
    // every warp is done with the previous tile's stages before they are refilled
    if (tile != static_cast<int>(blockIdx.y)) __syncthreads();
    // Opaque to the compiler, so the expert's addresses are formed per tile instead of being
    // hoisted out of the loop into registers (ptxas: fewer registers per thread).
    int64_t s0 = start;
    asm volatile("mov.b64 %0, %0;" : "+l"(s0));
    GemmParams q = p;
    if constexpr (Gather) {
      // x stays whole: the expert's rows name their tokens
    } else if constexpr (S::kAFp4) {
      q.a = static_cast<const uint8_t*>(p.a) + s0 * (p.K / 2);
      q.aScales = p.aScales + s0 * (p.K / 16);
    } else {
      q.a = static_cast<const __nv_bfloat16*>(p.a) + s0 * p.K;
    }
    uint8_t* outScales = nullptr;
    if constexpr (OutFp4) {
      q.out = static_cast<uint8_t*>(p.out) + s0 * (group.swigluI / 2);
      outScales = group.outScales + s0 * (group.swigluI / 16);
    } else {
      q.out = static_cast<__nv_bfloat16*>(p.out) + s0 * (group.swigluI > 0 ? group.swigluI : p.N);
    }
    q.w = p.w + e * group.wStride;
    q.wScales = p.wScales + e * group.sStride;
    q.wGlobalScale = p.wGlobalScale + e;
    q.M = count;
    const int64_t m0 = static_cast<int64_t>(tile) * S::kTileM;
    if constexpr (Gather) {
      // the tile's tokens, after the pipeline's stages (the launch adds kTileM words)
      int32_t* table = reinterpret_cast<int32_t*>(smem + S::kSmemBytes);
      const GatherRows rows{group.xRows + s0, group.gatherK, group.xTokens};
      for (int r = threadIdx.x; r < S::kTileM; r += S::kThreads) table[r] = m0 + r < count ? static_cast<int32_t>(rows(m0 + r)) : -1;
      __syncthreads();
      gemmTile<S, OutFp4>(q, group.swigluI, smem, n0, m0, outScales, group.outGlobalScale, TableRows{table, m0});
    } else {
      gemmTile<S, OutFp4>(q, group.swigluI, smem, n0, m0, outScales, group.outGlobalScale, SameRows{});
    }
  }
}

// Enqueues gemmKernel<S> on a grid of (ceil(N/tileN), ceil(M/tileM), splits); defined in the
// per-regime .cu files so the variants compile in parallel.
template <class S>
cudaError_t launchGemm(const GemmParams& p, dim3 grid, cudaStream_t stream);

// The grouped variants (grid above): W4A16 in grouped_gemm.cu and grouped_prefill.cu, W4A4 in
// grouped_w4a4.cu; OutFp4 is the swiglu epilogue with NVFP4 output, Gather the gathering variant.
template <class S, bool OutFp4, bool Gather>
cudaError_t launchGroupedGemm(const GemmParams& p, const GroupParams& group, dim3 grid, cudaStream_t stream);

template <class S, bool OutFp4, bool Gather>
cudaError_t launchGroupedGemmImpl(const GemmParams& p, const GroupParams& group, dim3 grid, cudaStream_t stream) {
  constexpr int kSmem = S::kSmemBytes + (Gather ? S::kTileM * 4 : 0);  // gather: the tile's row table
  if constexpr (kSmem > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(groupedGemmKernel<S, OutFp4, Gather>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
    if (err != cudaSuccess) return err;
  }
  groupedGemmKernel<S, OutFp4, Gather><<<grid, S::kThreads, kSmem, stream>>>(p, group);
  return cudaGetLastError();
}

template <class S>
cudaError_t launchGemmImpl(const GemmParams& p, dim3 grid, cudaStream_t stream) {
  // Above the 48 KB default the kernel must be allowed its dynamic shared memory. The attribute
  // belongs to the current device's context; setting it at each launch keeps no per-device
  // state, and it costs nothing where it is not needed (every shape with M <= 16).
  if constexpr (S::kSmemBytes > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(gemmKernel<S>, cudaFuncAttributeMaxDynamicSharedMemorySize, S::kSmemBytes);
    if (err != cudaSuccess) return err;
  }
  gemmKernel<S><<<grid, S::kThreads, S::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

// Decode: 4 warps side by side along N (32 weight rows each), all sharing one token tile;
// 6 stages keep ~23 KB of weights and scales in flight per CTA.
template <int NT, bool AFp4>
using DecodeShape = GemmShape<4, 1, 2, NT, 6, AFp4, 2>;
// Prefill: 4 x 2 warps, 64 weight rows x 64 tokens each: 256 x 128 per CTA.
template <bool AFp4>
using PrefillShape = GemmShape<4, 2, 4, 8, 4, AFp4, 1>;

}  // namespace moe::kernels::nvfp4::detail
