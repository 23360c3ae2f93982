// The CUDA side of one op launch: current device, the device's facts and the stream's
// workspace arena, then the launcher's cudaError_t turned into a MoeError. CUDA builds only.
#pragma once
#include "kernels/common/launch.h"
#include "runtime/cuda_check.h"
#include "runtime/device.h"

namespace moe::runtime {

// The workspace arena of stream s on device (created on first use, freed with the stream).
kernels::Workspace& workspace(int device, Stream s);

template <typename F>
void launch(int device, Stream s, const char* what, F&& fn) {
  const DeviceFacts& facts = deviceFacts(device);
  setDevice(device);
  const kernels::Launch l{static_cast<cudaStream_t>(s), facts, workspace(device, s)};
  checkCuda(fn(l), what);
}

}  // namespace moe::runtime
