// swiglu and add: grid-stride elementwise kernels, the arithmetic of common/moe_rules.h.
#include <cuda_bf16.h>

#include <cstdint>

#include "common/moe_rules.h"
#include "kernels/moe/moe.h"

namespace moe::kernels::moe_family {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float load(const void* p, bool bf16, int64_t i) {
  return bf16 ? __uint_as_float(static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16) : static_cast<const float*>(p)[i];
}

__device__ __forceinline__ void store(void* p, bool bf16, int64_t i, float v) {
  if (bf16) static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  else static_cast<float*>(p)[i] = v;
}

__global__ void __launch_bounds__(kThreads) swigluKernel(SwigluArgs a) {
  const bool xb = a.xType == DType::BF16, ob = a.outType == DType::BF16;
  const int64_t n = a.rows * a.inner;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t r = i / a.inner, c = i % a.inner;
    const int64_t src = r * 2 * a.inner + c;
    store(a.out, ob, i, moe_rules::swiglu(load(a.x, xb, src), load(a.x, xb, src + a.inner)));
  }
}

__global__ void __launch_bounds__(kThreads) addKernel(AddArgs a) {
  const bool ab = a.aType == DType::BF16, bb = a.bType == DType::BF16, ob = a.outType == DType::BF16;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < a.numel; i += static_cast<int64_t>(gridDim.x) * kThreads) {
    store(a.out, ob, i, routing_rules::add(load(a.a, ab, i), load(a.b, bb, i)));
  }
}

unsigned blocksFor(int64_t n, const Launch& l) {
  const int64_t cap = static_cast<int64_t>(l.facts.multiprocessors > 0 ? l.facts.multiprocessors : 132) * 8;
  const int64_t want = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(want < cap ? want : cap);
}

}  // namespace

cudaError_t swiglu(const SwigluArgs& a, const Launch& l) {
  const int64_t n = a.rows * a.inner;
  if (n == 0) return cudaSuccess;
  swigluKernel<<<blocksFor(n, l), kThreads, 0, l.stream>>>(a);
  return cudaGetLastError();
}

cudaError_t add(const AddArgs& a, const Launch& l) {
  if (a.numel == 0) return cudaSuccess;
  addKernel<<<blocksFor(a.numel, l), kThreads, 0, l.stream>>>(a);
  return cudaGetLastError();
}

}  // namespace moe::kernels::moe_family
