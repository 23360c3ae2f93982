#include "runtime/host_memory.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "runtime/errors.h"

namespace moe::runtime {

void* hostAlloc(size_t bytes, bool zero) {
  if (bytes == 0) return nullptr;
  size_t rounded = (bytes + 63) & ~size_t(63);
  void* p = std::aligned_alloc(64, rounded);
  if (!p) fail("E_OOM", "out of host memory allocating " + std::to_string(bytes) + " bytes");
  if (zero) std::memset(p, 0, rounded);
  return p;
}

void hostFree(void* p) { std::free(p); }

}  // namespace moe::runtime
