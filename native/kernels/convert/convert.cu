#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "kernels/convert/convert.h"

namespace moe::kernels::convert {
namespace {

// The hardware conversions (cvt.rn.*); the CPU reference computes the same results
// with integer arithmetic and the tests compare them bit for bit.
template <typename T> struct Elem;
template <> struct Elem<float> {
  __device__ static float load(float v) { return v; }
  __device__ static float store(float v) { return v; }
};
template <> struct Elem<__half> {
  __device__ static float load(__half v) { return __half2float(v); }
  __device__ static __half store(float v) { return __float2half_rn(v); }
};
template <> struct Elem<__nv_bfloat16> {
  __device__ static float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};
template <> struct Elem<__nv_fp8_storage_t> {
  __device__ static float load(__nv_fp8_storage_t v) {
    return __half2float(__half(__nv_cvt_fp8_to_halfraw(v, __NV_E4M3)));
  }
  __device__ static __nv_fp8_storage_t store(float v) { return __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3); }
};

constexpr int kThreads = 256;
constexpr int kPerThread = 8;

template <typename In, typename Out>
__global__ void __launch_bounds__(kThreads) convertKernel(const In* __restrict__ src, Out* __restrict__ dst, int64_t n) {
  int64_t base = (static_cast<int64_t>(blockIdx.x) * kThreads * kPerThread) + threadIdx.x;
  int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads * kPerThread;
  for (; base < n; base += stride) {
    In v[kPerThread];
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      int64_t i = base + j * kThreads;
      if (i < n) v[j] = src[i];
    }
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      int64_t i = base + j * kThreads;
      if (i < n) dst[i] = Elem<Out>::store(Elem<In>::load(v[j]));
    }
  }
}

template <typename In, typename Out>
cudaError_t launch(const void* src, void* dst, int64_t n, cudaStream_t stream) {
  int64_t blocks = (n + kThreads * kPerThread - 1) / (kThreads * kPerThread);
  if (blocks > 65535 * 8) blocks = 65535 * 8;  // grid-stride covers the rest
  convertKernel<In, Out><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(static_cast<const In*>(src),
                                                                                 static_cast<Out*>(dst), n);
  return cudaGetLastError();
}

template <typename In>
cudaError_t dispatchOut(const void* src, void* dst, DType dstType, int64_t n, cudaStream_t stream) {
  switch (dstType) {
    case DType::F32: return launch<In, float>(src, dst, n, stream);
    case DType::F16: return launch<In, __half>(src, dst, n, stream);
    case DType::BF16: return launch<In, __nv_bfloat16>(src, dst, n, stream);
    case DType::FP8E4M3: return launch<In, __nv_fp8_storage_t>(src, dst, n, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t convert(const ConvertArgs& a, const Launch& l) {
  const void* src = a.src;
  void* dst = a.dst;
  const DType dstType = a.dstType;
  const int64_t numel = a.numel;
  const cudaStream_t stream = l.stream;
  if (numel <= 0) return cudaSuccess;
  switch (a.srcType) {
    case DType::F32: return dispatchOut<float>(src, dst, dstType, numel, stream);
    case DType::F16: return dispatchOut<__half>(src, dst, dstType, numel, stream);
    case DType::BF16: return dispatchOut<__nv_bfloat16>(src, dst, dstType, numel, stream);
    case DType::FP8E4M3: return dispatchOut<__nv_fp8_storage_t>(src, dst, dstType, numel, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace moe::kernels::convert
