// Element types shared by the launchers of both backends and the N-API glue.
// The numeric ids are part of the binding's contract with lib/dtype.ts.
#pragma once
#include <cstddef>
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

inline size_t dtypeSize(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::FP8E4M3: return 1;
    case DType::U8: return 1;
    case DType::I32: return 4;
    case DType::I64: return 8;
  }
  return 0;
}

inline bool isFloatDType(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::FP8E4M3;
}

}  // namespace moe
