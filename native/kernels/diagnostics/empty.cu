#include <chrono>

#include "kernels/diagnostics/empty.h"

namespace moe::kernels::diagnostics {

__global__ void emptyKernel() {}

cudaError_t launchEmpty(cudaStream_t stream) {
  emptyKernel<<<1, 32, 0, stream>>>();
  return cudaGetLastError();
}

cudaError_t launchEmptyLoop(cudaStream_t stream, int n, double* hostSeconds) {
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) emptyKernel<<<1, 32, 0, stream>>>();
  auto t1 = std::chrono::steady_clock::now();
  *hostSeconds = std::chrono::duration<double>(t1 - t0).count();
  return cudaGetLastError();
}

}  // namespace moe::kernels::diagnostics
