// permute: a CTA per row copies its source token's row (16-byte vectors where the row and the
// pointers allow). unpermute: a CTA per (token, slice of the hidden dimension) accumulates the
// token's k rows, slot by slot, with the same f32 fused multiply-adds as the CPU reference,
// then rounds once; slicing the hidden dimension keeps a decode batch of a few tokens from
// running on a few CTAs.
#include <cuda_bf16.h>

#include <cstdint>

#include "common/routing_rules.h"
#include "kernels/nvfp4/quantize_block.cuh"
#include "kernels/routing/routing.h"

namespace moe::kernels::routing {
namespace {
namespace R = moe::routing_rules;

constexpr int kThreads = 128;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride beyond

template <typename V>
__global__ void __launch_bounds__(kThreads) permuteKernel(const V* __restrict__ x, const int32_t* __restrict__ sourceIndex,
                                                          const int32_t* __restrict__ usedRows, V* __restrict__ out, int64_t pairs,
                                                          int k, int64_t vecPerRow, int64_t rows) {
  const int64_t used = min(max(static_cast<int64_t>(*usedRows), int64_t{0}), rows);
  for (int64_t r = blockIdx.x; r < used; r += gridDim.x) {
    const int32_t src = sourceIndex[r];
    V* dst = out + r * vecPerRow;
    if (src >= 0 && src < pairs) {
      const V* from = x + (src / k) * vecPerRow;
      for (int64_t c = threadIdx.x; c < vecPerRow; c += kThreads) dst[c] = from[c];
    } else {
      const V zero{};
      for (int64_t c = threadIdx.x; c < vecPerRow; c += kThreads) dst[c] = zero;
    }
  }
}

template <typename V>
cudaError_t launchPermute(const PermuteArgs& a, int64_t rowBytes, cudaStream_t stream) {
  const int64_t blocks = a.rows < kMaxBlocks ? a.rows : kMaxBlocks;
  permuteKernel<V><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<const V*>(a.x), a.sourceIndex, a.usedRows, static_cast<V*>(a.out), a.tokens * a.k, a.k,
      rowBytes / static_cast<int64_t>(sizeof(V)), a.rows);
  return cudaGetLastError();
}

// permuteQuantize: a CTA per row (grid-stride), a thread per 16-element block of it, with the
// quantizer's block math; padding rows quantize a zero block, as quantize(permute(x)) does.
template <DType T>
__global__ void __launch_bounds__(kThreads) permuteQuantizeKernel(const void* __restrict__ x, const int32_t* __restrict__ sourceIndex,
                                                                  const int32_t* __restrict__ usedRows, const float* __restrict__ globalScale,
                                                                  uint2* __restrict__ data, uint8_t* __restrict__ scales, int64_t pairs,
                                                                  int k, int64_t blocksPerRow, int64_t rows) {
  namespace Q = moe::kernels::nvfp4::detail;
  const int64_t used = min(max(static_cast<int64_t>(*usedRows), int64_t{0}), rows);
  if (static_cast<int64_t>(blockIdx.x) >= used) return;
  const float gs = __ldg(globalScale);
  for (int64_t r = blockIdx.x; r < used; r += gridDim.x) {
    const int32_t src = sourceIndex[r];
    const bool gather = src >= 0 && src < pairs;
    const int64_t from = gather ? (src / k) * blocksPerRow : 0;
    for (int64_t b = threadIdx.x; b < blocksPerRow; b += kThreads) {
      float v[16];
      uint32_t signs = 0;
      if (gather) {
        Q::loadBlock<T>(x, from + b, v, signs);
      } else {
#pragma unroll
        for (int i = 0; i < 16; ++i) v[i] = 0.0f;
      }
      uint2 d;
      uint8_t scale;
      Q::quantizeBlockValues(v, signs, gs, d, scale);
      data[r * blocksPerRow + b] = d;
      scales[r * blocksPerRow + b] = scale;
    }
  }
}

template <DType T>
cudaError_t launchPermuteQuantize(const PermuteQuantizeArgs& a, cudaStream_t stream) {
  const int64_t blocks = a.rows < kMaxBlocks ? a.rows : kMaxBlocks;
  permuteQuantizeKernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      a.x, a.sourceIndex, a.usedRows, a.globalScale, reinterpret_cast<uint2*>(a.data), a.scales, a.tokens * a.k, a.k, a.hidden / 16,
      a.rows);
  return cudaGetLastError();
}

// VEC consecutive elements of a row as f32, and back.
template <typename T, int VEC> struct Vec;
template <> struct Vec<float, 4> {
  __device__ static void load(const void* p, int64_t i, float* v) {
    const float4 q = reinterpret_cast<const float4*>(p)[i / 4];
    v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
  }
  __device__ static void store(void* p, int64_t i, const float* v) { reinterpret_cast<float4*>(p)[i / 4] = make_float4(v[0], v[1], v[2], v[3]); }
};
template <> struct Vec<float, 1> {
  __device__ static void load(const void* p, int64_t i, float* v) { v[0] = static_cast<const float*>(p)[i]; }
  __device__ static void store(void* p, int64_t i, const float* v) { static_cast<float*>(p)[i] = v[0]; }
};
template <> struct Vec<__nv_bfloat16, 4> {
  __device__ static void load(const void* p, int64_t i, float* v) {
    const uint2 q = reinterpret_cast<const uint2*>(p)[i / 4];
    v[0] = R::floatOf(q.x << 16); v[1] = R::floatOf(q.x & 0xFFFF0000u);
    v[2] = R::floatOf(q.y << 16); v[3] = R::floatOf(q.y & 0xFFFF0000u);
  }
  __device__ static void store(void* p, int64_t i, const float* v) {
    uint32_t b[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) b[j] = __bfloat16_as_ushort(__float2bfloat16_rn(v[j]));
    reinterpret_cast<uint2*>(p)[i / 4] = make_uint2(b[0] | (b[1] << 16), b[2] | (b[3] << 16));
  }
};
template <> struct Vec<__nv_bfloat16, 1> {
  __device__ static void load(const void* p, int64_t i, float* v) {
    v[0] = R::floatOf(static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16);
  }
  __device__ static void store(void* p, int64_t i, const float* v) {
    static_cast<uint16_t*>(p)[i] = __bfloat16_as_ushort(__float2bfloat16_rn(v[0]));
  }
};

template <typename TY, typename TO, int VEC>
__global__ void __launch_bounds__(kThreads) unpermuteKernel(UnpermuteArgs a) {
  const int64_t H = a.hidden;
  constexpr int64_t kSlice = kThreads * VEC;
  for (int64_t t = blockIdx.x; t < a.tokens; t += gridDim.x) {
    for (int64_t h = static_cast<int64_t>(blockIdx.y) * kSlice + static_cast<int64_t>(threadIdx.x) * VEC; h < H;
         h += static_cast<int64_t>(gridDim.y) * kSlice) {
      float acc[VEC];
#pragma unroll
      for (int v = 0; v < VEC; ++v) acc[v] = 0.0f;
      for (int s = 0; s < a.k; ++s) {
        const int32_t r = a.rowIndex[t * a.k + s];
        if (r < 0 || r >= a.rows) continue;
        const float w = a.weights[t * a.k + s];
        float y[VEC];
        Vec<TY, VEC>::load(a.y, static_cast<int64_t>(r) * H + h, y);
#pragma unroll
        for (int v = 0; v < VEC; ++v) acc[v] = R::fma(w, y[v], acc[v]);
      }
      Vec<TO, VEC>::store(a.out, t * H + h, acc);
    }
  }
}

template <typename TY, typename TO>
cudaError_t launchUnpermute(const UnpermuteArgs& a, cudaStream_t stream) {
  const int64_t blocks = a.tokens < kMaxBlocks ? a.tokens : kMaxBlocks;
  // 4-wide when every row starts on a vector boundary
  const bool vec = a.hidden % 4 == 0 && isAligned(a.y, 4 * sizeof(TY)) && isAligned(a.out, 4 * sizeof(TO));
  const int64_t slice = kThreads * (vec ? 4 : 1);
  const int64_t slices = (a.hidden + slice - 1) / slice;
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(slices < 65535 ? slices : 65535));
  if (vec) unpermuteKernel<TY, TO, 4><<<grid, kThreads, 0, stream>>>(a);
  else unpermuteKernel<TY, TO, 1><<<grid, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t permute(const PermuteArgs& a, const Launch& l) {
  if (a.rows == 0 || a.hidden == 0) return cudaSuccess;
  const int64_t rowBytes = a.hidden * dtypeBytes(a.type);
  // the widest vector that divides the row and both base addresses
  auto fits = [&](int64_t b) { return rowBytes % b == 0 && isAligned(a.x, b) && isAligned(a.out, b); };
  if (fits(16)) return launchPermute<uint4>(a, rowBytes, l.stream);
  if (fits(8)) return launchPermute<uint2>(a, rowBytes, l.stream);
  if (fits(4)) return launchPermute<uint32_t>(a, rowBytes, l.stream);
  if (fits(2)) return launchPermute<uint16_t>(a, rowBytes, l.stream);
  return launchPermute<uint8_t>(a, rowBytes, l.stream);
}

cudaError_t permuteQuantize(const PermuteQuantizeArgs& a, const Launch& l) {
  if (a.globalScaleOut != nullptr && a.globalScaleOut != a.globalScale) {
    const cudaError_t err = cudaMemcpyAsync(a.globalScaleOut, a.globalScale, sizeof(float), cudaMemcpyDeviceToDevice, l.stream);
    if (err != cudaSuccess) return err;
  }
  if (a.rows == 0 || a.hidden == 0) return cudaSuccess;
  switch (a.type) {
    case DType::F32: return launchPermuteQuantize<DType::F32>(a, l.stream);
    case DType::F16: return launchPermuteQuantize<DType::F16>(a, l.stream);
    case DType::BF16: return launchPermuteQuantize<DType::BF16>(a, l.stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t unpermute(const UnpermuteArgs& a, const Launch& l) {
  if (a.tokens == 0 || a.hidden == 0) return cudaSuccess;
  const bool yBf16 = a.yType == DType::BF16, outBf16 = a.outType == DType::BF16;
  if (yBf16 && outBf16) return launchUnpermute<__nv_bfloat16, __nv_bfloat16>(a, l.stream);
  if (yBf16) return launchUnpermute<__nv_bfloat16, float>(a, l.stream);
  if (outBf16) return launchUnpermute<float, __nv_bfloat16>(a, l.stream);
  return launchUnpermute<float, float>(a, l.stream);
}

}  // namespace moe::kernels::routing
