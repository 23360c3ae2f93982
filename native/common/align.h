// The one alignment test, usable from host and device code.
#pragma once
#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define MOE_HOST_DEVICE __host__ __device__
#else
#define MOE_HOST_DEVICE
#endif

namespace moe {

// True when p is a multiple of n bytes (n a power of two).
MOE_HOST_DEVICE inline bool isAligned(const void* p, size_t n) {
  return (reinterpret_cast<uintptr_t>(p) & (n - 1)) == 0;
}

}  // namespace moe
