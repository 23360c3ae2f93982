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

// Up to 16 tokens. Above that the activation reads (one 16-byte load per 8 k per token tile)
// and the MMAs outgrow the weight stream, and the tiled kernel measured faster at M = 64.
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

inline size_t gemmConfigWorkspaceBytes(const GemmConfig& c, int64_t M, int64_t N) {
  return c.splits > 1 ? static_cast<size_t>(c.splits) * static_cast<size_t>(M) *
                            static_cast<size_t>(N) * sizeof(float)
                      : 0;
}

// Above the decode sizes the wgmma kernel wins wherever it can run (W4A16, K % 32 == 0, aligned
// operands on a CC 9.0 device; sm90GemmSupported checks): on the DeepSeek-V3 shapes it measured
// 3.5-4.5x the mma.sync kernel at M >= 1024. Decode stays on the streaming kernel, which splits K.
inline bool preferSm90(int64_t M, bool portable) { return !portable && M > kDecodeMaxM; }

}  // namespace moe::kernels::nvfp4
