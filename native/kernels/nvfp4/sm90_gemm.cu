// Host launcher of the Hopper NVFP4 GEMM (sm90_gemm.cuh): capability checks, TMA descriptors,
// persistent grid.
#include <atomic>
#include <climits>
#include <cstring>
#include <mutex>

#include <cudaTypedefs.h>

#include "kernels/nvfp4/sm90_gemm.cuh"
#include "kernels/nvfp4/sm90_gemm.h"

namespace moe::kernels::nvfp4 {
namespace {

using sm90::Params;

bool aligned(const void* p, uintptr_t n) { return (reinterpret_cast<uintptr_t>(p) & (n - 1)) == 0; }

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

constexpr int kMaxDevices = 64;

template <class Kernel>
bool raiseSmemLimit(Kernel kernel, int bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) ==
         cudaSuccess;
}

template <int BM>
void launch(const CUtensorMap& mapA, const CUtensorMap& mapW, const CUtensorMap& mapOut,
            const Params& p, int grid, bool outF32, cudaStream_t stream) {
  const int smem = sm90::Config<BM>::kSmemBytes;
  if (outF32) {
    sm90::gemmKernel<BM, true><<<grid, sm90::kThreads, smem, stream>>>(mapA, mapW, mapOut, p);
  } else {
    sm90::gemmKernel<BM, false><<<grid, sm90::kThreads, smem, stream>>>(mapA, mapW, mapOut, p);
  }
}

// 256-token tiles halve the decode work per FLOP and are much faster per tile; 128-token tiles
// only pay off when a grid of them still fits in one wave while the 256-token grid leaves at
// least half of the SMs idle (e.g. M = 1024, N = 2048).
int chooseTileM(int64_t M, int64_t tilesN, int sms) {
  const int64_t t128 = ((M + 127) / 128) * tilesN;
  return t128 <= sms ? 128 : 256;
}

struct DeviceInfo {
  int sms = 0;
  bool usable = false;  // CC 9.0 and the sm_90a image is present
};

// Per-device facts, computed once: SM count, capability, and whether the kernel was built for
// sm_90a (a build without 90a would JIT the compute_80 PTX, whose body traps). Also raises the
// dynamic shared memory limit of both instantiations.
const DeviceInfo* deviceInfo() {
  static DeviceInfo info[kMaxDevices];
  static std::once_flag once[kMaxDevices];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) {
    cudaGetLastError();
    return nullptr;
  }
  std::call_once(once[dev], [dev] {
    DeviceInfo d{};
    int major = 0, minor = 0, sms = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
      cudaGetLastError();
      info[dev] = d;
      return;
    }
    d.sms = sms;
    bool ok = major == 9 && minor == 0 && encodeTiledFn() != nullptr;
    if (ok) {
      cudaFuncAttributes attr{};
      ok = cudaFuncGetAttributes(&attr, sm90::gemmKernel<256, false>) == cudaSuccess &&
           attr.ptxVersion == 90 && attr.binaryVersion == 90;
    }
    if (ok) {
      ok = raiseSmemLimit(sm90::gemmKernel<256, false>, sm90::Config<256>::kSmemBytes) &&
           raiseSmemLimit(sm90::gemmKernel<256, true>, sm90::Config<256>::kSmemBytes) &&
           raiseSmemLimit(sm90::gemmKernel<128, false>, sm90::Config<128>::kSmemBytes) &&
           raiseSmemLimit(sm90::gemmKernel<128, true>, sm90::Config<128>::kSmemBytes);
    }
    if (!ok) cudaGetLastError();
    d.usable = ok;
    info[dev] = d;
  });
  return &info[dev];
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

bool sm90GemmSupported(int64_t M, int64_t N, int64_t K, DType aType, DType outType, const void* a,
                       const uint8_t* wData) {
  if (aType != DType::BF16) return false;
  if (outType != DType::BF16 && outType != DType::F32) return false;
  if (M < 0 || N < 0 || K < 32 || K % 32 != 0) return false;
  if (M > INT_MAX || N > INT_MAX || K > INT_MAX / 2) return false;
  if (!aligned(a, 16) || !aligned(wData, 16)) return false;
  const DeviceInfo* d = deviceInfo();
  return d != nullptr && d->usable;
}

cudaError_t sm90Gemm(const void* a, DType aType, const uint8_t* /*aScales*/,
                     const float* /*aGlobalScale*/, const uint8_t* wData, const uint8_t* wScales,
                     const float* wGlobalScale, const void* bias, DType biasType, void* out,
                     DType outType, int64_t M, int64_t N, int64_t K, float alpha,
                     cudaStream_t stream) {
  if (aType != DType::BF16) return cudaErrorInvalidValue;
  if (outType != DType::BF16 && outType != DType::F32) return cudaErrorInvalidValue;
  if (bias != nullptr && biasType != DType::BF16 && biasType != DType::F32) {
    return cudaErrorInvalidValue;
  }
  if (!sm90GemmSupported(M, N, K, aType, outType, a, wData)) return cudaErrorNotSupported;
  if (M == 0 || N == 0) return cudaSuccess;

  const bool outF32 = outType == DType::F32;
  const int sms = deviceInfo()->sms;
  const int64_t tilesN = (N + sm90::kTileN - 1) / sm90::kTileN;
  const int BM = chooseTileM(M, tilesN, sms);
  const int64_t tilesM = (M + BM - 1) / BM;
  if (tilesM * tilesN > INT_MAX - 1024) return cudaErrorInvalidValue;

  Params p{};
  p.M = static_cast<int>(M);
  p.N = static_cast<int>(N);
  p.K = static_cast<int>(K);
  p.numKTiles = static_cast<int>((K + sm90::kTileK - 1) / sm90::kTileK);
  p.tilesM = static_cast<int>(tilesM);
  p.tilesN = static_cast<int>(tilesN);
  p.numTiles = static_cast<int>(tilesM * tilesN);
  p.wScales = wScales;
  p.wGlobalScale = wGlobalScale;
  p.bias = bias;
  p.out = out;
  p.alpha = alpha;
  p.biasF32 = biasType == DType::F32;
  p.outF32 = outF32;
  p.scalesVec4 = K % 64 == 0 && aligned(wScales, 4);
  p.outVec16 = (N * (outF32 ? 4 : 2)) % 16 == 0 && aligned(out, 16);
  p.tmaStore = !outF32 && p.outVec16;

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

  const int grid = static_cast<int>(std::min<int64_t>(p.numTiles, sms));
  if (BM == 256) launch<256>(mapA, mapW, mapOut, p, grid, outF32, stream);
  else launch<128>(mapA, mapW, mapOut, p, grid, outF32, stream);
  return cudaGetLastError();
}

}  // namespace moe::kernels::nvfp4
