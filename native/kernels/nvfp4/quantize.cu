// amax, global scale, quantize, dequantize and the scale swizzles.
// All of these are memory bound; one thread owns one 16-element block where that is the unit.
#include <algorithm>

#include "common/align.h"
#include "kernels/nvfp4/common.cuh"
#include "kernels/nvfp4/nvfp4.h"
#include "kernels/nvfp4/quantize_block.cuh"

namespace moe::kernels::nvfp4 {
namespace detail {
namespace {

constexpr int kThreads = 256;

inline int gridFor(int64_t items, int64_t cap) {
  int64_t blocks = (items + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min(blocks, cap)));
}

// |v| as an order-preserving key: the f32 bit pattern of |v|, every NaN mapped to 0x7FC00000
// (larger than +inf's 0x7F800000, so a max over keys propagates NaN).
__device__ __forceinline__ uint32_t absKeyF32(uint32_t u) {
  u &= 0x7FFFFFFFu;
  return u > 0x7F800000u ? 0x7FC00000u : u;
}
__device__ __forceinline__ uint32_t absKeyF16(uint32_t h) {
  h &= 0x7FFFu;
  if (h > 0x7C00u) return 0x7FC00000u;
  return __float_as_uint(__half2float(__ushort_as_half(static_cast<unsigned short>(h))));
}
__device__ __forceinline__ uint32_t absKeyBf16(uint32_t h) {
  h &= 0x7FFFu;
  return h > 0x7F80u ? 0x7FC00000u : (h << 16);
}

template <DType T>
__device__ __forceinline__ uint32_t keyOfHalfWord(uint32_t h) {
  return T == DType::F16 ? absKeyF16(h) : absKeyBf16(h);
}

template <DType T>
__device__ __forceinline__ uint32_t keyAt(const void* x, int64_t i) {
  if constexpr (T == DType::F32) {
    return absKeyF32(static_cast<const uint32_t*>(x)[i]);
  } else {
    return keyOfHalfWord<T>(static_cast<const uint16_t*>(x)[i]);
  }
}

template <DType T>
__device__ __forceinline__ uint32_t keyOfVec(uint4 v) {
  if constexpr (T == DType::F32) {
    return max(max(absKeyF32(v.x), absKeyF32(v.y)), max(absKeyF32(v.z), absKeyF32(v.w)));
  } else {
    uint32_t w[4] = {v.x, v.y, v.z, v.w};
    uint32_t k = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      k = max(k, keyOfHalfWord<T>(w[i] & 0xFFFFu));
      k = max(k, keyOfHalfWord<T>(w[i] >> 16));
    }
    return k;
  }
}

// *out (zeroed beforehand) = max key over x. 16-byte loads for the aligned bulk.
template <DType T>
__global__ void __launch_bounds__(kThreads) amaxKernel(const void* __restrict__ x, int64_t numel,
                                                      bool vectorized, uint32_t* __restrict__ out) {
  constexpr int kPerVec = 16 / (T == DType::F32 ? 4 : 2);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  uint32_t key = 0;
  int64_t scalarFrom = 0;
  if (vectorized) {
    const int64_t numVec = numel / kPerVec;
    const uint4* xv = static_cast<const uint4*>(x);
    for (int64_t i = tid; i < numVec; i += stride) key = max(key, keyOfVec<T>(__ldg(xv + i)));
    scalarFrom = numVec * kPerVec;
  }
  for (int64_t i = scalarFrom + tid; i < numel; i += stride) key = max(key, keyAt<T>(x, i));

  key = __reduce_max_sync(0xFFFFFFFFu, key);
  __shared__ uint32_t warpMax[kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warpMax[warp] = key;
  __syncthreads();
  if (warp == 0) {
    uint32_t k = lane < kThreads / 32 ? warpMax[lane] : 0u;
    k = __reduce_max_sync(0xFFFFFFFFu, k);
    if (lane == 0 && k != 0) atomicMax(out, k);
  }
}

__global__ void globalScaleKernel(const float* __restrict__ amax, float* __restrict__ gs) {
  const float a = *amax;
  float s = __fdiv_rn(a, 2688.0f);
  if (s == 0.0f) s = 1.0f;
  // The GPU's division returns the canonical NaN 0x7FFFFFFF; the contract (and the CPU) keep
  // the amax's NaN bits.
  *gs = (a != a) ? a : s;
}

// One thread per 16-element block; blocks are contiguous in x, data (8 bytes) and scales
// (1 byte) alike because K % 16 == 0.
template <DType T>
__global__ void __launch_bounds__(kThreads) quantizeKernel(const void* __restrict__ x,
                                                          int64_t numBlocks,
                                                          const float* __restrict__ globalScale,
                                                          uint2* __restrict__ data,
                                                          uint8_t* __restrict__ scales) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= numBlocks) return;
  const float gs = __ldg(globalScale);
  float v[16];
  uint32_t signs;
  loadBlock<T>(x, b, v, signs);

  uint2 d;
  uint8_t scale;
  quantizeBlockValues(v, signs, gs, d, scale);
  data[b] = d;
  scales[b] = scale;
}

template <DType T>
__device__ __forceinline__ uint32_t packOut(float lo, float hi) {
  if constexpr (T == DType::BF16) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  } else {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
}

template <DType T>
__global__ void __launch_bounds__(kThreads) dequantizeKernel(const uint2* __restrict__ data,
                                                            const uint8_t* __restrict__ scales,
                                                            const float* __restrict__ globalScale,
                                                            int64_t numBlocks, void* __restrict__ out) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= numBlocks) return;
  const float gs = __ldg(globalScale);
  const float scale = e4m3ToFloat(__ldg(scales + b));
  const uint2 d = __ldg(data + b);
  float v[16];
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    uint32_t nib = ((i < 8 ? d.x : d.y) >> (4 * (i % 8))) & 0xFu;
    float r = __fmul_rn(__fmul_rn(e2m1ToFloat(nib), scale), gs);
    v[i] = (r != r) ? __uint_as_float(0x7FFFFFFFu) : r;
  }
  if constexpr (T == DType::F32) {
    float4* o = static_cast<float4*>(out) + b * 4;
#pragma unroll
    for (int i = 0; i < 4; ++i) o[i] = make_float4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
  } else {
    uint4* o = static_cast<uint4*>(out) + b * 2;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      o[i] = make_uint4(packOut<T>(v[8 * i], v[8 * i + 1]), packOut<T>(v[8 * i + 2], v[8 * i + 3]),
                        packOut<T>(v[8 * i + 4], v[8 * i + 5]), packOut<T>(v[8 * i + 6], v[8 * i + 7]));
    }
  }
}

// One thread per swizzled byte, so padding is written too.
__global__ void __launch_bounds__(kThreads) swizzleKernel(const uint8_t* __restrict__ in,
                                                         int64_t rows, int64_t kBlocks,
                                                         int64_t numKTiles, int64_t total,
                                                         uint8_t* __restrict__ out) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= total) return;
  const int64_t tile = o >> 9;
  const int within = static_cast<int>(o & 511);
  const int64_t m = (tile / numKTiles) * 128 + ((within >> 2) & 3) * 32 + (within >> 4);
  const int64_t k = (tile % numKTiles) * 4 + (within & 3);
  out[o] = (m < rows && k < kBlocks) ? in[m * kBlocks + k] : uint8_t{0};
}

__global__ void __launch_bounds__(kThreads) unswizzleKernel(const uint8_t* __restrict__ in,
                                                           int64_t rows, int64_t kBlocks,
                                                           int64_t numKTiles,
                                                           uint8_t* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * kBlocks) return;
  const int64_t m = i / kBlocks, k = i % kBlocks;
  const int64_t off = ((m >> 7) * numKTiles + (k >> 2)) * 512 + (m & 31) * 16 + ((m >> 5) & 3) * 4 +
                      (k & 3);
  out[i] = in[off];
}

}  // namespace
}  // namespace detail

using namespace detail;

cudaError_t amax(const AmaxArgs& a, const Launch& l) {
  const void* x = a.x;
  const DType xType = a.xType;
  const int64_t numel = a.numel;
  const cudaStream_t stream = l.stream;
  cudaError_t err = cudaMemsetAsync(a.amax, 0, sizeof(float), stream);
  if (err != cudaSuccess) return err;
  if (numel <= 0) return cudaSuccess;
  const bool vec = moe::isAligned(x, 16);
  const int perVec = xType == DType::F32 ? 4 : 8;
  const int grid = gridFor(vec ? (numel + perVec - 1) / perVec : numel, 1024);
  uint32_t* out = reinterpret_cast<uint32_t*>(a.amax);
  switch (xType) {
    case DType::F32: amaxKernel<DType::F32><<<grid, kThreads, 0, stream>>>(x, numel, vec, out); break;
    case DType::F16: amaxKernel<DType::F16><<<grid, kThreads, 0, stream>>>(x, numel, vec, out); break;
    case DType::BF16: amaxKernel<DType::BF16><<<grid, kThreads, 0, stream>>>(x, numel, vec, out); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t globalScaleFromAmax(const GlobalScaleArgs& a, const Launch& l) {
  globalScaleKernel<<<1, 1, 0, l.stream>>>(a.amax, a.globalScale);
  return cudaGetLastError();
}

cudaError_t quantize(const QuantizeArgs& a, const Launch& l) {
  const cudaStream_t stream = l.stream;
  if (a.globalScaleOut != nullptr && a.globalScaleOut != a.globalScale) {
    const cudaError_t err =
        cudaMemcpyAsync(a.globalScaleOut, a.globalScale, sizeof(float), cudaMemcpyDeviceToDevice, stream);
    if (err != cudaSuccess) return err;
  }
  const int64_t numBlocks = a.rows * (a.K / 16);
  if (numBlocks <= 0) return cudaSuccess;
  const int64_t grid = (numBlocks + kThreads - 1) / kThreads;
  const void* x = a.x;
  const float* gs = a.globalScale;
  uint2* d = reinterpret_cast<uint2*>(a.data);
  uint8_t* scales = a.scales;
  switch (a.xType) {
    case DType::F32: quantizeKernel<DType::F32><<<grid, kThreads, 0, stream>>>(x, numBlocks, gs, d, scales); break;
    case DType::F16: quantizeKernel<DType::F16><<<grid, kThreads, 0, stream>>>(x, numBlocks, gs, d, scales); break;
    case DType::BF16: quantizeKernel<DType::BF16><<<grid, kThreads, 0, stream>>>(x, numBlocks, gs, d, scales); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t dequantize(const DequantizeArgs& a, const Launch& l) {
  const int64_t numBlocks = a.rows * (a.K / 16);
  if (numBlocks <= 0) return cudaSuccess;
  const cudaStream_t stream = l.stream;
  const int64_t grid = (numBlocks + kThreads - 1) / kThreads;
  const uint2* d = reinterpret_cast<const uint2*>(a.data);
  const uint8_t* scales = a.scales;
  const float* gs = a.globalScale;
  void* out = a.out;
  switch (a.outType) {
    case DType::F32: dequantizeKernel<DType::F32><<<grid, kThreads, 0, stream>>>(d, scales, gs, numBlocks, out); break;
    case DType::F16: dequantizeKernel<DType::F16><<<grid, kThreads, 0, stream>>>(d, scales, gs, numBlocks, out); break;
    case DType::BF16: dequantizeKernel<DType::BF16><<<grid, kThreads, 0, stream>>>(d, scales, gs, numBlocks, out); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t swizzleScales(const SwizzleScalesArgs& a, const Launch& l) {
  const int64_t total = nvfp4SwizzledScaleBytes(a.rows, a.K);
  if (total <= 0) return cudaSuccess;
  const int64_t kBlocks = a.K / 16;
  const int64_t grid = (total + kThreads - 1) / kThreads;
  swizzleKernel<<<grid, kThreads, 0, l.stream>>>(a.scales, a.rows, kBlocks, (kBlocks + 3) / 4, total,
                                                 a.swizzled);
  return cudaGetLastError();
}

cudaError_t unswizzleScales(const UnswizzleScalesArgs& a, const Launch& l) {
  const int64_t kBlocks = a.K / 16;
  if (a.rows * kBlocks <= 0) return cudaSuccess;
  const int64_t grid = (a.rows * kBlocks + kThreads - 1) / kThreads;
  unswizzleKernel<<<grid, kThreads, 0, l.stream>>>(a.swizzled, a.rows, kBlocks, (kBlocks + 3) / 4,
                                                   a.scales);
  return cudaGetLastError();
}

}  // namespace moe::kernels::nvfp4
