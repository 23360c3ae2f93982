// What every CUDA launcher receives besides its argument struct: the stream, the device's
// facts (read once by the runtime) and the stream's workspace arena.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "common/device_facts.h"

namespace moe::kernels {

// Scratch memory owned by the runtime, one arena per stream. get() returns at least `bytes`
// bytes, valid for work enqueued on the launch's stream until the next get() on it; it grows
// the arena when needed (never during a launcher's own kernels), so a launcher asks once.
struct Workspace {
  virtual void* get(size_t bytes) = 0;

 protected:
  ~Workspace() = default;
};

struct Launch {
  cudaStream_t stream;
  const DeviceFacts& facts;
  Workspace& workspace;
};

}  // namespace moe::kernels
