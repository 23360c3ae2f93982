// Host memory behind "cpu" tensors: 64-byte aligned so the reference kernels may vectorize.
#pragma once
#include <cstddef>

namespace moe::runtime {

void* hostAlloc(size_t bytes, bool zero);
void hostFree(void* p);

}  // namespace moe::runtime
