// Element types shared by both backends and the N-API glue. The numeric ids are part of the
// binding's contract with lib/dtype.ts.
#pragma once
#include <cstdint>

namespace moe {

enum class DType : int32_t {
  F32 = 0,
  F16 = 1,
  BF16 = 2,
  FP8E4M3 = 3,
  U8 = 4,
  I32 = 5,
  I64 = 6,
};

}  // namespace moe
