// The routing family's argument structs, shared by the CPU reference, the CUDA launchers and the
// N-API glue: gating (top-k expert selection), the expert layout (which rows of the grouped GEMM
// each (token, slot) pair goes to), and the permute / unpermute row movements around it.
// What the ops compute is defined once, by the CPU reference (cpu/routing/routing.cpp) and the
// shared rules (common/routing_rules.h).
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "common/align.h"
#include "common/check.h"
#include "common/dtype.h"

namespace moe {

namespace routing {
constexpr int32_t kMaxExperts = 512;         // gating: a 64-bit key holds the index in 16 bits
constexpr int32_t kMaxTopK = 16;
constexpr int32_t kMaxLayoutExperts = 1024;  // layout: per-tile counters live in shared memory
constexpr int32_t kMaxAlign = 1024;
constexpr int32_t kScoringSoftmax = 0;
constexpr int32_t kScoringSigmoid = 1;
}  // namespace routing

// routeTopK: logits [tokens, experts] -> ids i32 [tokens, k], weights f32 [tokens, k].
struct RouteTopKArgs {
  const void* logits;
  DType logitsType;      // F32 or BF16
  const float* bias;     // [experts] added for selection only; null for none
  int32_t* ids;
  float* weights;
  int64_t tokens;
  int32_t experts;
  int32_t k;
  int32_t scoring;       // routing::kScoringSoftmax or kScoringSigmoid
  int32_t groups;        // 1: no grouping
  int32_t topkGroups;    // groups kept (== groups: no grouping)
  bool renormalize;
  float scale;
};

inline void validate(const RouteTopKArgs& a) {
  using namespace routing;
  MOE_REQUIRE(a.logitsType == DType::F32 || a.logitsType == DType::BF16, "E_DTYPE", "logits", "expected dtype f32 or bf16");
  MOE_REQUIRE(a.tokens >= 0, "E_SHAPE", "logits", "negative token count " + std::to_string(a.tokens));
  MOE_REQUIRE(a.experts >= 1 && a.experts <= kMaxExperts, "E_SHAPE", "logits",
          "expected 1 to " + std::to_string(kMaxExperts) + " experts, got " + std::to_string(a.experts));
  MOE_REQUIRE(a.k >= 1 && a.k <= kMaxTopK, "E_ARGUMENT", "k", "expected 1 to " + std::to_string(kMaxTopK) + ", got " + std::to_string(a.k));
  MOE_REQUIRE(a.k <= a.experts, "E_SHAPE", "k", std::to_string(a.k) + " exceeds the " + std::to_string(a.experts) + " experts");
  MOE_REQUIRE(a.scoring == kScoringSoftmax || a.scoring == kScoringSigmoid, "E_ARGUMENT", "scoring", "expected softmax or sigmoid");
  MOE_REQUIRE(a.groups >= 1 && a.experts % a.groups == 0, "E_SHAPE", "groups.count",
          std::to_string(a.experts) + " experts do not split into " + std::to_string(a.groups) + " equal groups");
  MOE_REQUIRE(a.topkGroups >= 1 && a.topkGroups <= a.groups, "E_SHAPE", "groups.topk",
          "expected 1 to " + std::to_string(a.groups) + ", got " + std::to_string(a.topkGroups));
  MOE_REQUIRE(static_cast<int64_t>(a.topkGroups) * (a.experts / a.groups) >= a.k, "E_SHAPE", "groups.topk",
          std::to_string(a.topkGroups) + " groups of " + std::to_string(a.experts / a.groups) + " experts hold fewer than k = " +
              std::to_string(a.k));
  MOE_REQUIRE(std::isfinite(a.scale), "E_ARGUMENT", "scale", "expected a finite number");
  MOE_REQUIRE(a.tokens == 0 || (a.logits && a.ids && a.weights), "E_ARGUMENT", "logits", "null data pointer");
}

// expertLayout: ids i32 [tokens, k] -> where each (token, slot) pair goes.
//   Contiguous (maxPerExpert == 0): expert e owns rows [offsets[e], offsets[e+1]); its pairs
//   come first in (token, slot) order, then padding up to a multiple of `align`. `rows` is the
//   worst case tokens*k + experts*(align-1), so no shape depends on the data.
//   Masked (maxPerExpert > 0): expert e owns rows [e*M, (e+1)*M); pairs past the first M of an
//   expert are dropped and counted. rows = experts * M.
struct ExpertLayoutArgs {
  const int32_t* ids;
  int64_t tokens;
  int32_t k;
  int32_t experts;
  int32_t align;          // contiguous form; 1 in the masked form
  int32_t maxPerExpert;   // 0: contiguous form
  int64_t rows;
  int32_t* counts;        // [experts] pairs placed (masked: at most M)
  int32_t* offsets;       // [experts + 1] first row of each expert; offsets[experts] = rows used
  int32_t* sourceIndex;   // [rows] row -> token * k + slot, -1 for padding and unused rows
  int32_t* rowIndex;      // [tokens * k] pair -> row, -1 when dropped or its id is out of range
  int32_t* usedRows;      // [1] offsets[experts]
  int32_t* dropped;       // [1] pairs dropped by maxPerExpert
  int32_t* errors;        // [1] ids outside [0, experts) (the CPU reference throws E_RANGE instead)
};

inline int64_t layoutRows(int64_t tokens, int32_t k, int32_t experts, int32_t align, int32_t maxPerExpert) {
  return maxPerExpert > 0 ? static_cast<int64_t>(experts) * maxPerExpert
                          : tokens * k + static_cast<int64_t>(experts) * (align - 1);
}

inline void validate(const ExpertLayoutArgs& a) {
  using namespace routing;
  MOE_REQUIRE(a.tokens >= 0 && a.k >= 1 && a.k <= kMaxTopK, "E_SHAPE", "ids",
          "expected [tokens, k] with 1 <= k <= " + std::to_string(kMaxTopK));
  MOE_REQUIRE(a.experts >= 1 && a.experts <= kMaxLayoutExperts, "E_ARGUMENT", "numExperts",
          "expected 1 to " + std::to_string(kMaxLayoutExperts) + ", got " + std::to_string(a.experts));
  MOE_REQUIRE(a.align >= 1 && a.align <= kMaxAlign, "E_ARGUMENT", "align",
          "expected 1 to " + std::to_string(kMaxAlign) + ", got " + std::to_string(a.align));
  MOE_REQUIRE(a.maxPerExpert >= 0, "E_ARGUMENT", "maxTokensPerExpert", "expected a positive integer");
  MOE_REQUIRE(a.maxPerExpert == 0 || a.align == 1, "E_ARGUMENT", "align", "the masked form (maxTokensPerExpert) has no alignment");
  MOE_REQUIRE(a.rows == layoutRows(a.tokens, a.k, a.experts, a.align, a.maxPerExpert) && a.rows <= 2147483647LL, "E_SHAPE", "layout",
          "the layout needs " + std::to_string(layoutRows(a.tokens, a.k, a.experts, a.align, a.maxPerExpert)) +
              " rows (at most 2^31 - 1), got " + std::to_string(a.rows));
  MOE_REQUIRE(a.counts && a.offsets && a.usedRows && a.dropped && a.errors && (a.rows == 0 || a.sourceIndex) &&
              (a.tokens == 0 || (a.ids && a.rowIndex)),
          "E_ARGUMENT", "layout", "null data pointer");
}

// permute: out[r] = x[sourceIndex[r] / k] for rows r < *usedRows whose source is in
// [0, tokens*k); zeros for the other rows below *usedRows; rows at or past *usedRows untouched.
struct PermuteArgs {
  const void* x;
  DType type;             // any float dtype: rows are moved as bytes
  const int32_t* sourceIndex;
  const int32_t* usedRows;
  void* out;
  int64_t tokens;
  int32_t k;
  int64_t hidden;
  int64_t rows;
};

inline int dtypeBytes(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: return 2;
    case DType::FP8E4M3: case DType::U8: return 1;
    case DType::I64: return 8;
  }
  return 0;
}

inline void validate(const PermuteArgs& a) {
  MOE_REQUIRE(a.type == DType::F32 || a.type == DType::F16 || a.type == DType::BF16 || a.type == DType::FP8E4M3, "E_DTYPE", "x",
          "expected dtype f32, f16, bf16 or fp8e4m3");
  MOE_REQUIRE(a.tokens >= 0 && a.hidden >= 0 && a.rows >= 0 && a.k >= 1, "E_SHAPE", "x", "negative size");
  MOE_REQUIRE(a.usedRows && (a.rows == 0 || a.sourceIndex), "E_ARGUMENT", "layout", "null data pointer");
  MOE_REQUIRE(a.rows * a.hidden == 0 || a.out, "E_ARGUMENT", "out", "null data pointer");
  MOE_REQUIRE(a.tokens * a.hidden == 0 || a.x, "E_ARGUMENT", "x", "null data pointer");
}

// permuteQuantize: permute fused with NVFP4 quantization (QuantizeArgs' rules) of each row with
// the global scale *globalScale: for rows r < *usedRows, data [rows, hidden/2] and scales
// [rows, hidden/16] of row r are those of x[sourceIndex[r] / k] when its source is in
// [0, tokens*k), else those of a zero row (codes 0, scales e4m3(1) = 0x38); rows at or past
// *usedRows are untouched. globalScaleOut (when set and different) receives a copy of the
// scale used. Bit-identical to quantize(permute(x)) on either backend.
struct PermuteQuantizeArgs {
  const void* x;          // [tokens, hidden], 16-byte aligned
  DType type;             // F32, F16 or BF16
  const int32_t* sourceIndex;
  const int32_t* usedRows;
  const float* globalScale;
  uint8_t* data;          // 8-byte aligned
  uint8_t* scales;
  float* globalScaleOut;  // or nullptr
  int64_t tokens;
  int32_t k;
  int64_t hidden;         // a multiple of 16
  int64_t rows;
};

inline void validate(const PermuteQuantizeArgs& a) {
  MOE_REQUIRE(a.type == DType::F32 || a.type == DType::F16 || a.type == DType::BF16, "E_DTYPE", "x", "expected dtype f32, f16 or bf16");
  MOE_REQUIRE(a.tokens >= 0 && a.hidden >= 0 && a.rows >= 0 && a.k >= 1, "E_SHAPE", "x", "negative size");
  MOE_REQUIRE(a.hidden % 16 == 0, "E_SHAPE", "x", "NVFP4 needs hidden a multiple of 16, got " + std::to_string(a.hidden));
  MOE_REQUIRE(a.usedRows && (a.rows == 0 || a.sourceIndex), "E_ARGUMENT", "layout", "null data pointer");
  MOE_REQUIRE(a.globalScale, "E_ARGUMENT", "globalScale", "null data pointer");
  MOE_REQUIRE(a.rows * a.hidden == 0 || (a.data && a.scales), "E_ARGUMENT", "out", "null data pointer");
  MOE_REQUIRE(a.tokens * a.hidden == 0 || a.x, "E_ARGUMENT", "x", "null data pointer");
  MOE_REQUIRE(a.tokens * a.hidden == 0 || isAligned(a.x, 16), "E_ARGUMENT", "x", "the data must start at a 16-byte aligned address");
  MOE_REQUIRE(a.rows * a.hidden == 0 || isAligned(a.data, 8), "E_ARGUMENT", "out.data", "the data must start at an 8-byte aligned address");
}

// unpermute: out[t] = sum over slots s = 0..k-1 with 0 <= rowIndex[t*k+s] < rows, in that
// order, of weights[t*k+s] * y[rowIndex[t*k+s]], each step one f32 fused multiply-add from 0,
// then rounded once to the output dtype.
struct UnpermuteArgs {
  const void* y;
  DType yType;            // F32 or BF16
  const int32_t* rowIndex;
  const float* weights;
  void* out;
  DType outType;          // F32 or BF16
  int64_t tokens;
  int32_t k;
  int64_t hidden;
  int64_t rows;
};

inline void validate(const UnpermuteArgs& a) {
  MOE_REQUIRE(a.yType == DType::F32 || a.yType == DType::BF16, "E_DTYPE", "y", "expected dtype f32 or bf16");
  MOE_REQUIRE(a.outType == DType::F32 || a.outType == DType::BF16, "E_DTYPE", "out", "expected dtype f32 or bf16");
  MOE_REQUIRE(a.tokens >= 0 && a.hidden >= 0 && a.rows >= 0 && a.k >= 1, "E_SHAPE", "y", "negative size");
  MOE_REQUIRE(a.tokens == 0 || (a.rowIndex && a.weights), "E_ARGUMENT", "layout", "null data pointer");
  MOE_REQUIRE(a.tokens * a.hidden == 0 || a.out, "E_ARGUMENT", "out", "null data pointer");
  MOE_REQUIRE(a.rows * a.hidden == 0 || a.y, "E_ARGUMENT", "y", "null data pointer");
}

}  // namespace moe
