// What launchers need to know about a device, read once per device by the runtime.
#pragma once
#include <cstddef>

namespace moe {

struct DeviceFacts {
  int index = 0;
  int major = 0, minor = 0;          // compute capability
  int multiprocessors = 0;
  size_t sharedMemoryPerBlockOptin = 0;
  size_t l2CacheBytes = 0;
  // The sm_90a kernels exist in this build and the device runs them (compute capability 9.0).
  bool hopper = false;
};

}  // namespace moe
