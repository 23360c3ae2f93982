// An empty kernel, for measuring what a launch costs from JS against a C++ loop.
#pragma once
#include <cuda_runtime.h>

namespace moe::kernels::diagnostics {

cudaError_t launchEmpty(cudaStream_t stream);
// n launches from a C++ loop; *hostSeconds receives the loop's host time.
cudaError_t launchEmptyLoop(cudaStream_t stream, int n, double* hostSeconds);

}  // namespace moe::kernels::diagnostics
