// The convert family's argument struct, shared by the CPU reference, the CUDA launcher and the
// N-API glue. Elementwise conversion between F32, F16, BF16 and FP8E4M3: round to nearest
// even, e4m3 saturating to +-448, NaN kept as the target's canonical NaN.
#pragma once
#include <cstdint>
#include <string>

#include "common/check.h"
#include "common/dtype.h"

namespace moe {

struct ConvertArgs {
  const void* src;
  DType srcType;
  void* dst;
  DType dstType;
  int64_t numel;
};

inline bool isConvertible(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::FP8E4M3;
}

inline void validate(const ConvertArgs& a) {
  MOE_REQUIRE(isConvertible(a.srcType), "E_DTYPE", "x", "expected dtype f32, f16, bf16 or fp8e4m3");
  MOE_REQUIRE(isConvertible(a.dstType), "E_DTYPE", "dtype", "expected f32, f16, bf16 or fp8e4m3");
  MOE_REQUIRE(a.numel >= 0, "E_SHAPE", "x", "negative element count " + std::to_string(a.numel));
  MOE_REQUIRE(a.numel == 0 || (a.src && a.dst), "E_ARGUMENT", "x", "null data pointer");
}

}  // namespace moe
