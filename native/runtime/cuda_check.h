// Maps cudaError_t to MoeError codes. Only for files compiled with CUDA.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "runtime/errors.h"

namespace moe::runtime {

[[noreturn]] void throwCuda(cudaError_t err, const char* what);

inline void checkCuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throwCuda(err, what);
}

}  // namespace moe::runtime
