// Transitional: the nvfp4 and mtp glue still call launchers with a bare stream.
#pragma once
#if MOE_WITH_CUDA
#include "runtime/cuda_check.h"
#include "runtime/device.h"

namespace moe::napi {

inline cudaStream_t streamArg(const Napi::Value& v) { return static_cast<cudaStream_t>(ptr(v)); }

template <typename F>
void launchOn(int device, const char* what, F&& fn) {
  runtime::setDevice(device);
  runtime::checkCuda(fn(), what);
}

}  // namespace moe::napi
#endif
