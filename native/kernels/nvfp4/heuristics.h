// Which NVFP4 GEMM kernel runs for a problem, and how K is split. Host-only and free of CUDA
// types so it can be unit-tested and reasoned about on its own; gemm.cu static_asserts that the
// tile sizes here match the kernels it instantiates.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace moe::kernels::nvfp4 {

enum class GemmKernel : int {
  Decode8,   // M <= 8:  128 weight rows x 8 tokens per CTA
  Decode16,  // M <= 16
  Decode32,  // M <= 32
  Decode64,  // M <= 64
  Prefill,   // M > 64:  256 weight rows x 128 tokens per CTA
};

struct GemmConfig {
  GemmKernel kernel;
  int64_t tileN;           // weight rows per CTA
  int64_t tileM;           // tokens per CTA
  int64_t numChunks;       // ceil(K / kGemmChunkK)
  int64_t splits;          // CTAs along K; > 1 means fp32 partials in the workspace
  int64_t chunksPerSplit;  // every split gets at least one chunk
};

inline constexpr int64_t kGemmChunkK = 64;
inline constexpr int64_t kDecodeMaxM = 64;
inline constexpr int64_t kDecodeTileN = 128;
inline constexpr int64_t kPrefillTileN = 256;
inline constexpr int64_t kPrefillTileM = 128;
// Keeps split-K partials small next to the weights even for wide outputs.
inline constexpr int64_t kMaxSplitWorkspaceBytes = int64_t{64} << 20;

// Decode (M <= 64) is bound by streaming the packed weights and scales: it wants every SM busy
// with many loads in flight, so it splits K until there are about two CTAs per SM, keeping at
// least four 64-wide chunks per split so the cp.async pipeline stays full.
// Prefill is bound by the tensor cores: it splits only when the output tiles cannot occupy the
// SMs at all, keeping at least eight chunks per split.
// Every configuration here is the portable mma.sync kernel; preferSm90 below says when the
// Hopper wgmma kernel (sm90_gemm.h) takes the problem instead.
inline GemmConfig selectGemmConfig(int64_t M, int64_t N, int64_t K, int numSMs) {
  GemmConfig c{};
  c.numChunks = (K + kGemmChunkK - 1) / kGemmChunkK;
  if (M <= kDecodeMaxM) {
    c.tileN = kDecodeTileN;
    if (M <= 8) { c.kernel = GemmKernel::Decode8; c.tileM = 8; }
    else if (M <= 16) { c.kernel = GemmKernel::Decode16; c.tileM = 16; }
    else if (M <= 32) { c.kernel = GemmKernel::Decode32; c.tileM = 32; }
    else { c.kernel = GemmKernel::Decode64; c.tileM = 64; }
  } else {
    c.kernel = GemmKernel::Prefill;
    c.tileN = kPrefillTileN;
    c.tileM = kPrefillTileM;
  }
  const int64_t tiles = std::max<int64_t>(1, ((N + c.tileN - 1) / c.tileN) *
                                                 ((M + c.tileM - 1) / c.tileM));
  const int64_t sms = std::max(1, numSMs);
  int64_t splits = 1;
  if (c.kernel == GemmKernel::Prefill) {
    if (tiles < sms) splits = std::min(sms / tiles, c.numChunks / 8);
  } else {
    const int64_t target = 2 * sms;
    if (tiles < target) splits = std::min((target + tiles - 1) / tiles, c.numChunks / 4);
  }
  const int64_t perSplitBytes = std::max<int64_t>(1, M * N * 4);
  splits = std::min(splits, kMaxSplitWorkspaceBytes / perSplitBytes);
  splits = std::max<int64_t>(1, splits);
  c.chunksPerSplit = splits > 1 ? (c.numChunks + splits - 1) / splits : c.numChunks;
  c.splits = splits > 1 ? (c.numChunks + c.chunksPerSplit - 1) / c.chunksPerSplit : 1;
  return c;
}

// Streaming decode kernel (gemv.cuh): W4A16, M <= 16, K % 32 == 0. It never splits K across
// CTAs, so it needs no workspace and runs as one launch.
struct GemvConfig {
  int nt;       // 8-token MMA tiles per warp: 1 or 2 (covers all M tokens)
  int mt;       // 16-row groups per warp
  int kWarps;   // of the CTA's 8 warps, how many split K (the rest split rows)
  int64_t rowsPerCta;
  int64_t ctas;
};

inline constexpr int64_t kGemvBatchK = 256;

// Up to 16 tokens. Above that the activation reads (one 16-byte load per 8 k per token tile
// and warp) outgrow the weight stream; the wide kernel below shares them across a CTA.
inline constexpr int64_t kGemvMaxM = 16;

inline bool gemvEligible(int64_t M, int64_t K, bool aFp4) {
  return !aFp4 && M >= 1 && M <= kGemvMaxM && K % 32 == 0 && K > 0;
}

// Memory-bound: every SM should stream about the same number of bytes with enough of them in
// flight. More K warps mean fewer rows per CTA (more, smaller CTAs: better balance over the SMs)
// but fewer 256-k batches per warp to pipeline. Measured on H200 (M = 1, 16): the fewest K warps
// that still give about 1.5 CTAs per SM won on every DeepSeek-V3 shape.
inline GemvConfig selectGemvConfig(int64_t M, int64_t N, int64_t K, int numSMs) {
  GemvConfig c{};
  c.nt = M <= 8 ? 1 : 2;
  c.mt = 1;
  const int64_t batches = (K + kGemvBatchK - 1) / kGemvBatchK;
  const int64_t wantCtas = 3 * static_cast<int64_t>(std::max(1, numSMs)) / 2;
  for (c.kWarps = 1; c.kWarps < 8 && 2 * c.kWarps <= batches; c.kWarps *= 2) {
    const int64_t rows = (8 / c.kWarps) * c.mt * 16;
    if ((N + rows - 1) / rows >= wantCtas) break;
  }
  c.rowsPerCta = (8 / c.kWarps) * c.mt * 16;
  c.ctas = (N + c.rowsPerCta - 1) / c.rowsPerCta;
  return c;
}

// Wide streaming kernel (gemv_wide.cuh): W4A16, 16 < M <= 64, K % 32 == 0, Hopper (it splits K
// over a thread-block cluster). Each CTA takes 128 weight rows and a run of 256-k batches.
// Splits: as many as keep the CTAs within about 1.7 per SM (two fit, by registers and shared
// memory) and at most 6. Measured on H200 at M = 32 and 64 over every split count 1..8 on the
// DeepSeek-V3 shapes: the CTAs are short-lived and a cluster waits for its slowest member, so a
// grid that mixes SMs holding two CTAs with SMs holding one loses more than it gains past this
// point. 7 or 8 splits lost about 30% on 2048 x 7168 against 6; the rule's pick measured within
// 14% of the best split count on every shape (13% on 4096 x 7168 at M = 64, where 7 was best).
struct GemvWideConfig {
  int nt;               // 8-token MMA tiles: 4 (M <= 32) or 8
  int64_t rowBlocks;    // grid.y
  int64_t splits;       // grid.x and the cluster size; split r takes 256-k batches [rB/S, (r+1)B/S)
};

inline constexpr int64_t kGemvWideMaxM = 64;
inline constexpr int64_t kGemvWideRows = 128;
inline constexpr int64_t kGemvWideMaxSplits = 6;

inline bool gemvWideEligible(int64_t M, int64_t K, bool aFp4) {
  return !aFp4 && M > kGemvMaxM && M <= kGemvWideMaxM && K % 32 == 0 && K > 0;
}

inline GemvWideConfig selectGemvWideConfig(int64_t M, int64_t N, int64_t K, int numSMs) {
  GemvWideConfig c{};
  c.nt = M <= 32 ? 4 : 8;
  c.rowBlocks = (N + kGemvWideRows - 1) / kGemvWideRows;
  const int64_t batches = (K + kGemvBatchK - 1) / kGemvBatchK;
  const int64_t fit = 17 * static_cast<int64_t>(std::max(1, numSMs)) / (10 * std::max<int64_t>(1, c.rowBlocks));
  c.splits = std::max<int64_t>(1, std::min({kGemvWideMaxSplits, batches, fit}));
  return c;
}

inline size_t gemmConfigWorkspaceBytes(const GemmConfig& c, int64_t M, int64_t N) {
  return c.splits > 1 ? static_cast<size_t>(c.splits) * static_cast<size_t>(M) *
                            static_cast<size_t>(N) * sizeof(float)
                      : 0;
}

// Above the decode sizes the wgmma kernel wins wherever it can run (K % 32 == 0, aligned
// operands on a CC 9.0 device; sm90GemmSupported checks): on the DeepSeek-V3 shapes it measured
// 3.5-4.5x the mma.sync kernel at M >= 1024. W4A4 takes it too, after one pass that expands the
// activations to bf16 (benchmarks/NOTES.md, v7). Decode stays on the streaming kernels.
inline bool preferSm90(int64_t M, bool portable) { return !portable && M > kDecodeMaxM; }

// Split K inside the wgmma kernel, for output tiles too few to occupy the SMs (M = 65..512 on
// the DeepSeek-V3 shapes gives 16-128 tiles of 128 x 128 on 132 SMs): each tile's k range is cut
// into `splits` work units of at least kSm90MinKTilesPerSplit 64-wide steps (so the pipeline
// fills), the units spread over the persistent grid, and the last unit of a tile sums the fp32
// partials. Partials are bounded like the portable kernel's split-K workspace.
inline constexpr int64_t kSm90MinKTilesPerSplit = 8;
struct Sm90Split {
  int64_t splits;
  int64_t kTilesPerSplit;
};
inline Sm90Split selectSm90Split(int64_t tiles, int64_t kTiles, int numSMs, int64_t bytesPerUnit) {
  const int64_t sms = std::max(1, numSMs);
  int64_t splits = 1;
  if (tiles < sms) splits = std::min(sms / std::max<int64_t>(1, tiles), kTiles / kSm90MinKTilesPerSplit);
  splits = std::min(splits, kMaxSplitWorkspaceBytes / std::max<int64_t>(1, tiles * bytesPerUnit));
  splits = std::max<int64_t>(1, splits);
  const int64_t per = (kTiles + splits - 1) / splits;
  return {(kTiles + per - 1) / per, per};  // every split gets at least one step
}

// The wgmma kernel's token tile, 128 or 256, and its split. A 64-k step has a fixed cost that
// does not shrink with the tile (benchmarks/NOTES.md, nvfp4 v6), so a 256-token step, which
// carries twice the MMAs for it, is the cheaper one wherever it keeps work units long:
//  - M <= 128: one 128-token tile covers M.
//  - 128-token tiles overfill a wave: 256-token tiles (they then number more than half the SMs,
//    so they take no split).
//  - otherwise 256-token tiles when they need at most kSm90WideMaxSplits splits of at least
//    kSm90WideMinKTiles steps each, else 128-token tiles. Measured on H200 (NOTES v8, v9): the
//    256-token tile won 8-30% with units of >= 28 steps and <= 4 splits (4096 x 7168 at
//    M = 129..512, 7168 x 16384 at M = 256, 2048 x 7168 at M = 512..1024) and lost 17-23% with
//    shorter units or more of them (7168 x 2048: 2 splits of 16 steps; 2048 x 7168 at
//    M <= 256: 8 splits of 14, whose last unit sums eight partials).
inline constexpr int64_t kSm90WideMaxSplits = 4;
inline constexpr int64_t kSm90WideMinKTiles = 28;
struct Sm90Tile {
  int tileM;
  Sm90Split split;
};
// bytesPerUnit(tileM): one work unit's fp32 partials.
inline Sm90Tile selectSm90Tile(int64_t M, int64_t tilesN, int64_t kTiles, int numSMs,
                               int64_t (*bytesPerUnit)(int)) {
  const int64_t sms = std::max(1, numSMs);
  const int64_t tiles128 = (M + 127) / 128 * tilesN;
  const Sm90Split split128 = selectSm90Split(tiles128, kTiles, numSMs, bytesPerUnit(128));
  if (M <= 128) return {128, split128};
  const Sm90Split split256 = selectSm90Split((M + 255) / 256 * tilesN, kTiles, numSMs, bytesPerUnit(256));
  if (tiles128 > sms) return {256, split256};
  if (split256.splits <= kSm90WideMaxSplits && split256.kTilesPerSplit >= kSm90WideMinKTiles) return {256, split256};
  return {128, split128};
}

// ---- grouped (expert) GEMM ----

enum class GroupedKernel : int {
  Gemv,     // the streaming kernel, blockIdx.y = expert
  Tile16,   // DecodeShape<2>:  128 weight rows x 16 tokens per CTA, z = expert
  Tile64,   // DecodeShape<8>:  128 x 64
  Tile128,  // PrefillShape:    256 x 128
  Sm90,     // the Hopper wgmma kernel (sm90_gemm.h), tileM tokens x 128 weight rows, persistent
};

struct GroupedConfig {
  GroupedKernel kernel;
  int64_t virtualN;  // weight rows the grid covers: N, or 16 * ceil(I / 8) in the swiglu order
  GemvConfig gemv;   // Gemv
  int64_t tileN, tileM;
  int64_t tilesN;    // grid.x of the tiled kernels
  int64_t mSlots;    // grid.y: CTAs per (expert, N tile); each takes every mSlots-th m-tile
};

// The streaming kernel streams an expert's weights once per pass of 8 or 16 tokens. It takes
// every problem with few rows per expert: a masked capacity of at most 16 (the dense rule,
// kGemvMaxM), or a mean of at most 4 rows per expert in either form (decode: T <= 128 at top-8
// of 256), whatever the capacity. At such means one 8-token tile per pass is the cheaper one:
// the 16-token tile takes about 1.5x the time per weight byte on every expert (dense M = 16
// against M = 1, benchmarks/NOTES.md), while with rows per expert near Poisson(4) only a few
// percent of the experts hold more than 8 rows and pay a second pass over their weights.
// Measured on H200 at T = 32 and 128: 39-41% of the copy bandwidth on the Tile16 kernel these
// problems took before, 65-74% on the streaming kernel.
inline constexpr int64_t kGroupedGemvMaxMean = 4;

// Where the prefill tile (Tile128) would run, the Hopper wgmma kernel takes the problem when
// `wgmma` says the caller allows it (GroupedGemmArgs::portable unset) and so do the device and
// the arguments (sm90GroupedSupported: bf16 x that is not
// gathered, since its TMA boxes read contiguous rows; bf16 out; at most kSm90GroupedMaxExperts
// experts, for its per-CTA table of E + 1 counts). Its token tile by the expected rows per expert
// R: 128 below kSm90GroupedMidRows, 192 below kSm90GroupedWideRows, else 256. A 64-k step costs
// about 0.7 / 0.87 / 0.96 us at 128 / 192 / 256 tokens (mostly a fixed cost per step), so the
// larger tile wins once many experts overflow the smaller one. Measured on H200 (DeepSeek-V3 w13
// and w2, uniform top-8 of 256; benchmarks/NOTES.md, grouped v3 and v4): R = 96-112, 128-token
// tiles 10-23% faster than 192 or 256; R = 128, 192-token tiles 18% faster than 128 on w13;
// R = 128-160, 192 against 256: 7-10% faster on w13, -2% to +13% on w2; R >= 192, 256-token
// tiles 9-43% faster than 192.
inline constexpr int64_t kSm90GroupedMaxExperts = 1024;
inline constexpr int64_t kSm90GroupedMidRows = 120;
inline constexpr int64_t kSm90GroupedWideRows = 176;

// Tiled kernels by the expected rows per expert R (the mean pairs / E, capped by the masked
// capacity): the tile's token width is the smallest of 16 / 64 / 128 that holds R, so the last,
// partial m-tile of an expert wastes little (Decode8 and Decode32 add little next to these and
// are not instantiated for the grouped GEMM). Above 64 rows the prefill tile's 256 x 128 reuse
// wins, as in the dense heuristic.
// gemvAligned: the weights and activations allow the streaming kernel's 16-byte loads.
// xFp4 (NVFP4 activations, W4A4) and outFp4 (the swiglu epilogue writing NVFP4) always take a
// tiled kernel: the streaming kernel reads bf16 activations and writes each output element from
// registers, while the tiled mainloop takes NVFP4 operands on both sides and its epilogue stages
// the output tile in shared memory, where the per-16-column block scales are formed.
inline GroupedConfig selectGroupedConfig(int64_t E, int64_t N, int64_t K, bool swiglu, int64_t maxRowsPerExpert,
                                         int64_t pairs, bool gemvAligned, int numSMs, bool xFp4 = false,
                                         bool outFp4 = false, bool wgmma = false) {
  GroupedConfig c{};
  const int64_t sms = std::max(1, numSMs);
  c.virtualN = swiglu ? 16 * ((N / 2 + 7) / 8) : N;
  const bool masked = maxRowsPerExpert > 0;
  const int64_t mean = std::max<int64_t>(1, (pairs + E - 1) / std::max<int64_t>(1, E));
  const bool gemvShape = gemvAligned && K > 0 && K % 32 == 0;
  const bool streamable = !xFp4 && !outFp4;
  const bool fewRows = mean <= kGroupedGemvMaxMean;
  if (streamable && gemvShape && (fewRows || (masked && maxRowsPerExpert <= kGemvMaxM))) {
    c.kernel = GroupedKernel::Gemv;
    // At most min(E, pairs) experts have rows: each needs enough CTAs of its own for the
    // dense rule (about 1.5 CTAs per SM over all of them).
    const int64_t active = std::max<int64_t>(1, std::min(E, pairs));
    const int64_t bound = masked ? maxRowsPerExpert : std::min<int64_t>(pairs, kGemvMaxM);
    const int64_t passRows = std::min<int64_t>(bound, fewRows ? 8 : kGemvMaxM);
    c.gemv = selectGemvConfig(std::max<int64_t>(1, passRows), c.virtualN, K,
                              static_cast<int>((sms + active - 1) / active));
    return c;
  }
  const int64_t rows = masked ? std::min(maxRowsPerExpert, mean) : mean;
  if (rows > 64 && wgmma) {
    c.kernel = GroupedKernel::Sm90;
    c.tileM = rows >= kSm90GroupedWideRows ? 256 : rows >= kSm90GroupedMidRows ? 192 : 128;
    // output columns per tile: 128 weight rows, or for swiglu 64 gate rows and their 64 up rows
    c.tileN = swiglu ? 64 : 128;
    c.tilesN = ((swiglu ? N / 2 : N) + c.tileN - 1) / c.tileN;
    c.mSlots = 1;  // persistent: the grid is one CTA per SM
    return c;
  }
  if (rows <= 16) { c.kernel = GroupedKernel::Tile16; c.tileN = kDecodeTileN; c.tileM = 16; }
  else if (rows <= 64) { c.kernel = GroupedKernel::Tile64; c.tileN = kDecodeTileN; c.tileM = 64; }
  else { c.kernel = GroupedKernel::Tile128; c.tileN = kPrefillTileN; c.tileM = kPrefillTileM; }
  c.tilesN = (c.virtualN + c.tileN - 1) / c.tileN;
  // Masked: enough slots for the capacity, so no CTA loops. Contiguous: slots for twice the
  // mean, so an expert up to twice as busy as the mean finishes in one round; busier ones loop.
  const int64_t cover = masked ? maxRowsPerExpert : std::min(2 * mean, std::max<int64_t>(1, pairs));
  c.mSlots = std::min<int64_t>(65535, std::max<int64_t>(1, (cover + c.tileM - 1) / c.tileM));
  return c;
}

}  // namespace moe::kernels::nvfp4
