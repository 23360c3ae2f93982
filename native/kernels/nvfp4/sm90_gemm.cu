// Host launcher of the Hopper NVFP4 GEMM (sm90_gemm.cuh): capability checks, TMA descriptors,
// persistent grid.
#include <algorithm>
#include <climits>
#include <cstring>

#include <cudaTypedefs.h>

#include "common/align.h"
#include "kernels/nvfp4/sm90_gemm.cuh"
#include "kernels/nvfp4/heuristics.h"
#include "kernels/nvfp4/sm90_gemm.h"

namespace moe::kernels::nvfp4 {
namespace {

using sm90::Params;

// The driver entry point is looked up through the runtime so the addon never links libcuda.
PFN_cuTensorMapEncodeTiled_v12000 encodeTiledFn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      f = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// W4A4: NVFP4 activations expanded to bf16 (code x block scale, exact in bf16; the global
// scale joins the epilogue's factor), one thread per 16-element block. The wgmma kernel reads
// its activations by TMA as bf16 tiles, so the expansion runs before it, into the workspace.
__global__ void __launch_bounds__(256) expandActivationsKernel(const uint2* __restrict__ data,
                                                              const uint8_t* __restrict__ scales,
                                                              int64_t numBlocks, uint4* __restrict__ out) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= numBlocks) return;
  const float scale = detail::e4m3ToFloat(__ldg(scales + b));
  const uint2 d = __ldg(data + b);
  uint32_t w[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const uint32_t word = i < 4 ? d.x : d.y;
    const float lo = detail::e2m1ToFloat(word >> (8 * (i % 4)));
    const float hi = detail::e2m1ToFloat(word >> (8 * (i % 4) + 4));
    __nv_bfloat162 v = __floats2bfloat162_rn(lo * scale, hi * scale);
    w[i] = *reinterpret_cast<uint32_t*>(&v);
  }
  out[2 * b] = make_uint4(w[0], w[1], w[2], w[3]);
  out[2 * b + 1] = make_uint4(w[4], w[5], w[6], w[7]);
}

template <int BM, bool OutF32, bool Split>
cudaError_t launchVariant(const CUtensorMap& mapA, const CUtensorMap& mapW, const CUtensorMap& mapOut,
                          const Params& p, int grid, cudaStream_t stream) {
  const int smem = sm90::Config<BM>::kSmemBytes;
  // The shared-memory allowance belongs to the current device's context: set at each launch,
  // so that no per-device state is kept here.
  const cudaError_t err =
      cudaFuncSetAttribute(sm90::gemmKernel<BM, OutF32, Split>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  sm90::gemmKernel<BM, OutF32, Split><<<grid, sm90::kThreads, smem, stream>>>(mapA, mapW, mapOut, p);
  return cudaGetLastError();
}

template <int BM, bool Swiglu>
cudaError_t launchGrouped(const CUtensorMap& mapA, const CUtensorMap& mapW, const sm90::GroupedParams& gp, int grid,
                          cudaStream_t stream) {
  // the unit table follows the dense kernel's shared memory
  const int smem = sm90::Config<BM>::kSmemBytes + 4 * (gp.E + 1);
  const cudaError_t err =
      cudaFuncSetAttribute(sm90::groupedKernel<BM, Swiglu>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  sm90::groupedKernel<BM, Swiglu><<<grid, sm90::kThreads, smem, stream>>>(mapA, mapW, gp);
  return cudaGetLastError();
}

template <int BM, bool OutF32>
cudaError_t launchSplit(const CUtensorMap& mapA, const CUtensorMap& mapW, const CUtensorMap& mapOut,
                        const Params& p, int grid, cudaStream_t stream) {
  return p.splits > 1 ? launchVariant<BM, OutF32, true>(mapA, mapW, mapOut, p, grid, stream)
                      : launchVariant<BM, OutF32, false>(mapA, mapW, mapOut, p, grid, stream);
}

cudaError_t launch(const CUtensorMap& mapA, const CUtensorMap& mapW, const CUtensorMap& mapOut,
                   const Params& p, int grid, int tileM, bool outF32, cudaStream_t stream) {
  if (tileM == 128)
    return outF32 ? launchSplit<128, true>(mapA, mapW, mapOut, p, grid, stream)
                  : launchSplit<128, false>(mapA, mapW, mapOut, p, grid, stream);
  return outF32 ? launchSplit<256, true>(mapA, mapW, mapOut, p, grid, stream)
                : launchSplit<256, false>(mapA, mapW, mapOut, p, grid, stream);
}

// fp32 partials of one work unit: kAcc registers x 256 consumer threads
int64_t partialBytesPerUnit(int tileM) { return static_cast<int64_t>(tileM / 2) * 256 * 4; }

// Whether this build carries the sm_90a image of the kernel (a build without 90a would JIT the
// compute_80 PTX, whose body traps) and the driver has the tensor-map encoder. A property of
// the build and the driver, the same on every compute capability 9.0 device, so it is asked
// once, on the first such device that needs it.
bool sm90ImagePresent() {
  static const bool present = [] {
    bool ok = encodeTiledFn() != nullptr;
    if (ok) {
      cudaFuncAttributes attr{};
      ok = cudaFuncGetAttributes(&attr, sm90::gemmKernel<256, false, false>) == cudaSuccess &&
           attr.ptxVersion == 90 && attr.binaryVersion == 90;
    }
    if (!ok) (void)cudaGetLastError();
    return ok;
  }();
  return present;
}

// 2-D row-major [rows, cols] tensor map with a box of boxCols x boxRows elements.
bool encode2d(CUtensorMap* map, CUtensorMapDataType type, size_t elemBytes, const void* ptr,
              uint64_t cols, uint64_t rows, uint32_t boxCols, uint32_t boxRows,
              CUtensorMapSwizzle swizzle) {
  const cuuint64_t dims[2] = {cols, rows};
  const cuuint64_t strides[1] = {cols * elemBytes};
  const cuuint32_t box[2] = {boxCols, boxRows};
  const cuuint32_t elemStrides[2] = {1, 1};
  return encodeTiledFn()(map, type, 2, const_cast<void*>(ptr), dims, strides, box, elemStrides,
                         CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                         CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                         CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace

// Shared memory the grouped kinds need at most: the largest kernel and the largest unit table.
constexpr int64_t kGroupedSmemBytes =
    std::max({sm90::Config<128>::kSmemBytes, sm90::Config<192>::kSmemBytes, sm90::Config<256>::kSmemBytes}) +
    4 * (kSm90GroupedMaxExperts + 1);
static_assert(kGroupedSmemBytes <= 227 * 1024, "shared memory budget");

bool sm90GemmSupported(const GemmArgs& g, const DeviceFacts& facts) {
  if (!facts.hopper || (g.aType != DType::BF16 && g.aType != DType::U8)) return false;
  if (g.K < 32 || g.K % 32 != 0) return false;
  if (!isAligned(g.a, g.aType == DType::U8 ? 8 : 16) || !isAligned(g.wData, 16)) return false;
  if (facts.sharedMemoryPerBlockOptin < static_cast<size_t>(sm90::Config<256>::kSmemBytes)) return false;
  return sm90ImagePresent();
}

cudaError_t sm90Gemm(const GemmArgs& g, const Launch& l) {
  const void* a = g.a;
  const uint8_t* wData = g.wData;
  const uint8_t* wScales = g.wScales;
  void* out = g.out;
  const int64_t M = g.M, N = g.N, K = g.K;
  if (M == 0 || N == 0) return cudaSuccess;

  const bool outF32 = g.outType == DType::F32;
  const int sms = l.facts.multiprocessors;
  const int64_t tilesN = (N + sm90::kTileN - 1) / sm90::kTileN;
  const int64_t numKTiles = (K + sm90::kTileK - 1) / sm90::kTileK;
  const Sm90Tile tile = selectSm90Tile(M, tilesN, numKTiles, sms, partialBytesPerUnit);
  const int BM = tile.tileM;
  const int64_t tilesM = (M + BM - 1) / BM;
  if (tilesM * tilesN > INT_MAX - 1024) return cudaErrorInvalidValue;

  Params p{};
  p.M = static_cast<int>(M);
  p.N = static_cast<int>(N);
  p.K = static_cast<int>(K);
  p.numKTiles = static_cast<int>(numKTiles);
  p.tilesM = static_cast<int>(tilesM);
  p.tilesN = static_cast<int>(tilesN);
  p.numTiles = static_cast<int>(tilesM * tilesN);
  p.wScales = wScales;
  p.wGlobalScale = g.wGlobalScale;
  p.bias = g.bias;
  p.out = out;
  p.alpha = g.alpha;
  p.biasF32 = g.biasType == DType::F32;
  p.outF32 = outF32;
  p.scalesVec4 = K % 64 == 0 && isAligned(wScales, 4);
  p.outVec16 = (N * (outF32 ? 4 : 2)) % 16 == 0 && isAligned(out, 16);
  p.tmaStore = !outF32 && p.outVec16;
  const int64_t bytesPerUnit = partialBytesPerUnit(BM);
  const Sm90Split split = tile.split;
  p.splits = static_cast<int>(split.splits);
  p.kTilesPerSplit = static_cast<int>(split.kTilesPerSplit);
  p.numUnits = p.numTiles * p.splits;
  // Workspace, asked once: W4A4's bf16 activations, then split K's partials and tile counters.
  const bool aFp4 = g.aType == DType::U8;
  const size_t expandedBytes = aFp4 ? (static_cast<size_t>(M * K) * 2 + 255) / 256 * 256 : 0;
  const size_t partialBytes = p.splits > 1 ? static_cast<size_t>(p.numUnits) * static_cast<size_t>(bytesPerUnit) : 0;
  const size_t counterBytes = p.splits > 1 ? 4 * static_cast<size_t>(p.numTiles) : 0;
  uint8_t* ws = expandedBytes + partialBytes + counterBytes > 0
                    ? static_cast<uint8_t*>(l.workspace.get(expandedBytes + partialBytes + counterBytes))
                    : nullptr;
  if (aFp4) {
    const int64_t numBlocks = M * (K / 16);
    const int64_t blocks = (numBlocks + 255) / 256;
    if (blocks > INT_MAX) return cudaErrorInvalidValue;
    expandActivationsKernel<<<static_cast<unsigned>(blocks), 256, 0, l.stream>>>(
        static_cast<const uint2*>(g.a), g.aScales, numBlocks, reinterpret_cast<uint4*>(ws));
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    a = ws;
    p.aGlobalScale = g.aGlobalScale;
  }
  if (p.splits > 1) {
    p.partials = reinterpret_cast<float*>(ws + expandedBytes);
    p.tileDone = reinterpret_cast<int*>(ws + expandedBytes + partialBytes);
    const cudaError_t err = cudaMemsetAsync(p.tileDone, 0, counterBytes, l.stream);
    if (err != cudaSuccess) return err;
  }

  CUtensorMap mapA, mapW, mapOut;
  std::memset(&mapOut, 0, sizeof(mapOut));
  if (!encode2d(&mapA, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, a, static_cast<uint64_t>(K),
                static_cast<uint64_t>(M), sm90::kTileK, BM, CU_TENSOR_MAP_SWIZZLE_128B) ||
      !encode2d(&mapW, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, wData, static_cast<uint64_t>(K / 2),
                static_cast<uint64_t>(N), sm90::kTileK / 2, sm90::kTileN,
                CU_TENSOR_MAP_SWIZZLE_32B) ||
      (p.tmaStore &&
       !encode2d(&mapOut, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, out, static_cast<uint64_t>(N),
                 static_cast<uint64_t>(M), 64, BM, CU_TENSOR_MAP_SWIZZLE_128B))) {
    return cudaErrorInvalidValue;
  }

  const int grid = static_cast<int>(std::min<int64_t>(p.numUnits, sms));
  return launch(mapA, mapW, mapOut, p, grid, BM, outF32, l.stream);
}

bool sm90GroupedSupported(const GroupedGemmArgs& g, const DeviceFacts& facts) {
  if (!facts.hopper || g.xType != DType::BF16 || g.outType != DType::BF16 || g.xRows != nullptr) return false;
  if (g.K < 32 || g.K % 32 != 0 || g.E < 1 || g.E > kSm90GroupedMaxExperts) return false;
  if (g.E * g.N >= INT_MAX || g.rows >= INT_MAX) return false;
  if (!isAligned(g.x, 16) || !isAligned(g.wData, 16)) return false;
  if (facts.sharedMemoryPerBlockOptin < static_cast<size_t>(kGroupedSmemBytes)) return false;
  return sm90ImagePresent();
}

cudaError_t sm90GroupedGemm(const GroupedGemmArgs& g, int tileM, const Launch& l) {
  const int64_t E = g.E, N = g.N, K = g.K, rows = g.rows;
  const bool swiglu = g.epilogue == GroupedEpilogue::Swiglu;
  const int64_t cols = swiglu ? N / 2 : N;  // output columns
  const int64_t tileCols = swiglu ? 64 : sm90::kTileN;

  sm90::GroupedParams gp{};
  Params& p = gp.base;
  p.N = static_cast<int>(N);
  p.K = static_cast<int>(K);
  p.numKTiles = static_cast<int>((K + sm90::kTileK - 1) / sm90::kTileK);
  p.tilesN = static_cast<int>((cols + tileCols - 1) / tileCols);
  p.wScales = g.wScales;
  p.wGlobalScale = g.wGlobalScale;
  p.out = g.out;
  p.scalesVec4 = K % 64 == 0 && isAligned(g.wScales, 4);
  p.outVec16 = (cols * 2) % 16 == 0 && isAligned(g.out, 16);
  gp.E = static_cast<int>(E);
  gp.group.counts = g.counts;
  gp.group.offsets = g.offsets;
  gp.group.wStride = N * (K / 2);
  gp.group.sStride = N * (K / kNvfp4Block);
  gp.group.rows = static_cast<int>(rows);
  gp.group.maxRows = static_cast<int>(std::min<int64_t>(g.maxRowsPerExpert, INT_MAX));
  gp.group.swigluI = swiglu ? static_cast<int>(N / 2) : 0;

  // x as [rows, K], every expert's weights as one [E * N, K/2] tensor read in 64-row boxes
  CUtensorMap mapA, mapW;
  if (!encode2d(&mapA, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, g.x, static_cast<uint64_t>(K),
                static_cast<uint64_t>(rows), sm90::kTileK, tileM, CU_TENSOR_MAP_SWIZZLE_128B) ||
      !encode2d(&mapW, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, g.wData, static_cast<uint64_t>(K / 2),
                static_cast<uint64_t>(E * N), sm90::kTileK / 2, 64, CU_TENSOR_MAP_SWIZZLE_32B)) {
    return cudaErrorInvalidValue;
  }
  // at most this many units: every expert's partial tile plus the rows in whole ones
  const int64_t maxUnits = (rows / tileM + std::min(E, rows)) * p.tilesN;
  const int grid = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(maxUnits, l.facts.multiprocessors)));
  if (tileM == 128) {
    return swiglu ? launchGrouped<128, true>(mapA, mapW, gp, grid, l.stream)
                  : launchGrouped<128, false>(mapA, mapW, gp, grid, l.stream);
  }
  if (tileM == 192) {
    return swiglu ? launchGrouped<192, true>(mapA, mapW, gp, grid, l.stream)
                  : launchGrouped<192, false>(mapA, mapW, gp, grid, l.stream);
  }
  return swiglu ? launchGrouped<256, true>(mapA, mapW, gp, grid, l.stream)
                : launchGrouped<256, false>(mapA, mapW, gp, grid, l.stream);
}

}  // namespace moe::kernels::nvfp4
