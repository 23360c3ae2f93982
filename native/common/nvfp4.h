// The nvfp4 family's argument structs, shared by the CPU reference, the CUDA launchers and the
// N-API glue, with the preconditions both backends share.
//
// Format (NVIDIA ModelOpt convention):
//   data    u8    [rows, K/2]   E2M1 codes, element 2i in the low nibble of byte i
//   scales  e4m3  [rows, K/16]  one positive scale per 16 consecutive elements (linear layout)
//   global  f32   (one value)   weight_scale_2 = amax / (6 * 448)
//   value(r, k) = e2m1(data) * e4m3(scales[r, k/16]) * global
//
// Pointers are device pointers on CUDA and host pointers on the CPU; "device scalars" (global
// scales, amax) are single f32 values in that memory. The alignments below are the kernels'
// vector loads; both backends require them so that a tensor works alike on either. Any
// pointer the package's allocators return qualifies.
#pragma once
#include <climits>
#include <cstdint>
#include <string>

#include "common/align.h"
#include "common/check.h"
#include "common/dtype.h"

namespace moe {

// Elements per scale block.
inline constexpr int64_t kNvfp4Block = 16;

inline bool isNvfp4Source(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

// *amax = max |x| over numel elements (0 when numel == 0); NaN anywhere gives 0x7FC00000.
struct AmaxArgs {
  const void* x;
  DType xType;  // F32, F16 or BF16
  int64_t numel;
  float* amax;
};

// *globalScale = *amax / (6 * 448); a zero quotient gives 1; NaN and inf pass through.
struct GlobalScaleArgs {
  const float* amax;
  float* globalScale;
};

// x [rows, K] -> data [rows, K/2], scales [rows, K/16] with the global scale *globalScale.
// When globalScaleOut is set (and differs from globalScale) the scale used is also copied
// there, so that a quantized tensor's three parts come from one op.
struct QuantizeArgs {
  const void* x;  // 16-byte aligned
  DType xType;    // F32, F16 or BF16
  int64_t rows;
  int64_t K;      // a multiple of 16
  const float* globalScale;
  uint8_t* data;  // 8-byte aligned
  uint8_t* scales;
  float* globalScaleOut;  // or nullptr
};

// out [rows, K] = e2m1 * scale * *globalScale, rounded once to outType.
struct DequantizeArgs {
  const uint8_t* data;  // 8-byte aligned
  const uint8_t* scales;
  const float* globalScale;
  int64_t rows;
  int64_t K;  // a multiple of 16
  void* out;  // 16-byte aligned
  DType outType;  // F32, F16 or BF16
};

// Linear scales [rows, K/16] -> the Blackwell 128x4 swizzled layout (nvfp4SwizzledScaleBytes
// bytes, padding written as 0).
struct SwizzleScalesArgs {
  const uint8_t* scales;
  int64_t rows;
  int64_t K;  // a multiple of 16
  uint8_t* swizzled;
};

// The inverse: swizzled -> linear [rows, K/16] (padding dropped).
struct UnswizzleScalesArgs {
  const uint8_t* swizzled;
  int64_t rows;
  int64_t K;  // a multiple of 16
  uint8_t* scales;
};

// out[M, N] = alpha * gsA * gsW * (A . W^T) (+ bias[N]), fp32 accumulation.
//   W: NVFP4 [N, K] (wData, wScales, *wGlobalScale).
//   A: aType BF16: bf16 [M, K] (W4A16; aScales and aGlobalScale unused, gsA = 1);
//      aType U8: NVFP4 [M, K] (a = data [M, K/2], aScales [M, K/16], *aGlobalScale; W4A4).
//   bias: nullptr or [N] of biasType F32 or BF16. out: [M, N] of outType BF16 or F32.
struct GemmArgs {
  const void* a;  // 16-byte aligned (BF16) or 8-byte aligned (U8)
  DType aType;
  const uint8_t* aScales;
  const float* aGlobalScale;
  const uint8_t* wData;  // 8-byte aligned
  const uint8_t* wScales;
  const float* wGlobalScale;
  const void* bias;
  DType biasType;
  void* out;
  DType outType;
  int64_t M, N, K;  // K a multiple of 16
  float alpha;
  bool portable;  // keep to the mma.sync kernels where the Hopper one would run
};

// The expert GEMM of a Mixture-of-Experts layer, over the rows of an expert layout:
//   expert e owns rows offsets[e] .. offsets[e] + counts[e] - 1 of x and out (the contiguous
//   form's blocks, or the masked form's offsets[e] = e * maxRowsPerExpert), and
//   out[r, :] = gsX * gs[e] * (x[r, :] . W_e^T), W_e = w[e] of w [E, N, K], fp32 accumulation.
//   x: xType BF16: bf16 [rows, K] (W4A16, gsX = 1); xType U8: NVFP4 [rows, K] (x = data
//   [rows, K/2], xScales [rows, K/16], gsX = *xGlobalScale, one scale for all rows; W4A4).
//   Epilogue Swiglu: N = 2I with W_e's first I rows the gate and the last I the up projection
//   (ModelOpt w13 = concat(w1, w3)); out[r, j] = silu(gate[r, j]) * up[r, j], out [rows, I].
//   outType BF16: out bf16. outType U8 (Swiglu only, I % 16 == 0): the swiglu row rounded to
//   bf16, then quantized as QuantizeArgs does with the global scale *outGlobalScale: out = data
//   [rows, I/2], outScales [rows, I/16]; outGlobalScaleOut (when set and different) receives a
//   copy of the scale used, so the NVFP4 result's three parts come from one op.
// Gather (xRows set): x holds one row per token instead, x [xTokens, K] (either format), and
// row r of the layout reads x[xRows[r] / gatherK] (xRows = the layout's sourceIndex, the pair of
// each row, gatherK its k), so the activations are never permuted; a row whose pair names no
// row of x reads zeros.
// Rows that hold no pair (padding, rows past counts[e]) are not written. counts and offsets are
// read where the op runs (device memory on CUDA), so the launch never depends on them.
enum class GroupedEpilogue : int32_t { None = 0, Swiglu = 1 };

struct GroupedGemmArgs {
  const void* x;  // bf16 [rows, K] 16-byte aligned, or E2M1 [rows, K/2] 8-byte aligned
  DType xType;    // BF16, or U8 (NVFP4)
  const uint8_t* xScales;      // [rows, K/16] (U8 only)
  const float* xGlobalScale;   // [1] (U8 only)
  const uint8_t* wData;        // [E, N, K/2], 8-byte aligned
  const uint8_t* wScales;      // [E, N, K/16]
  const float* wGlobalScale;   // [E]
  const int32_t* counts;       // [E]
  const int32_t* offsets;      // [E + 1]
  void* out;                   // [rows, N] (None) or [rows, N/2] (Swiglu); U8: [rows, N/4] bytes, 8-byte aligned
  DType outType;               // BF16, or U8 (NVFP4, Swiglu only)
  uint8_t* outScales;          // [rows, N/32] (U8 only)
  const float* outGlobalScale; // [1] (U8 only)
  float* outGlobalScaleOut;    // [1] or nullptr (U8 only)
  int64_t E, rows, N, K;       // K a multiple of 16; N even for Swiglu
  int64_t maxRowsPerExpert;    // masked form: rows = E * maxRowsPerExpert; contiguous form: 0
  int64_t pairs;               // tokens * k of the layout: the host's size hint for the kernel choice
  GroupedEpilogue epilogue;
  const int32_t* xRows;        // gather: [rows] the layout's sourceIndex; null: row r reads x[r]
  int32_t gatherK;             // gather: pairs per token (the layout's k)
  int64_t xTokens;             // gather: rows of x
  bool portable;               // keep to the mma.sync kernels where the Hopper one would run
};

// Bytes of the swizzled layout of a [rows, K/16] scale tensor: roundUp(rows, 128) * roundUp(K/16, 4).
inline int64_t nvfp4SwizzledScaleBytes(int64_t rows, int64_t K) {
  const int64_t kBlocks = K / kNvfp4Block;
  return ((rows + 127) / 128 * 128) * ((kBlocks + 3) / 4 * 4);
}

namespace nvfp4detail {

inline void requireRowsK(int64_t rows, int64_t K, const char* argument) {
  MOE_REQUIRE(rows >= 0 && K >= 0, "E_SHAPE", argument,
          "negative size (rows " + std::to_string(rows) + ", K " + std::to_string(K) + ")");
  MOE_REQUIRE(K % kNvfp4Block == 0, "E_SHAPE", "K", "expected a multiple of 16, got " + std::to_string(K));
}

inline void requirePtr(const void* p, const char* argument) { MOE_REQUIRE(p != nullptr, "E_ARGUMENT", argument, "null pointer"); }

inline void requireAligned(const void* p, size_t bytes, const char* argument) {
  MOE_REQUIRE(isAligned(p, bytes), "E_ARGUMENT", argument,
          "the data must start at a " + std::to_string(bytes) + "-byte aligned address");
}

}  // namespace nvfp4detail

inline void validate(const AmaxArgs& a) {
  using namespace nvfp4detail;
  MOE_REQUIRE(isNvfp4Source(a.xType), "E_DTYPE", "x", "expected dtype f32, f16 or bf16");
  MOE_REQUIRE(a.numel >= 0, "E_SHAPE", "x", "negative element count " + std::to_string(a.numel));
  if (a.numel > 0) requirePtr(a.x, "x");
  requirePtr(a.amax, "amax");
}

inline void validate(const GlobalScaleArgs& a) {
  using namespace nvfp4detail;
  requirePtr(a.amax, "amax");
  requirePtr(a.globalScale, "globalScale");
}

inline void validate(const QuantizeArgs& a) {
  using namespace nvfp4detail;
  MOE_REQUIRE(isNvfp4Source(a.xType), "E_DTYPE", "x", "expected dtype f32, f16 or bf16");
  requireRowsK(a.rows, a.K, "x");
  requirePtr(a.globalScale, "globalScale");
  if (a.rows > 0 && a.K > 0) {
    requirePtr(a.x, "x");
    requirePtr(a.data, "data");
    requirePtr(a.scales, "scales");
    requireAligned(a.x, 16, "x");
    requireAligned(a.data, 8, "data");
  }
}

inline void validate(const DequantizeArgs& a) {
  using namespace nvfp4detail;
  MOE_REQUIRE(isNvfp4Source(a.outType), "E_DTYPE", "dtype", "expected f32, f16 or bf16");
  requireRowsK(a.rows, a.K, "q");
  if (a.rows > 0 && a.K > 0) {
    requirePtr(a.data, "q.data");
    requirePtr(a.scales, "q.scales");
    requirePtr(a.globalScale, "q.globalScale");
    requirePtr(a.out, "out");
    requireAligned(a.data, 8, "q.data");
    requireAligned(a.out, 16, "out");
  }
}

namespace nvfp4detail {
// Both directions: `from` is read and `to` written only when there is a scale to move (the
// swizzled size is 0 exactly when rows or K is).
inline void validateSwizzle(int64_t rows, int64_t K, const uint8_t* from, const char* fromName, const uint8_t* to,
                            const char* toName) {
  requireRowsK(rows, K, fromName);
  if (rows > 0 && K > 0) {
    requirePtr(from, fromName);
    requirePtr(to, toName);
  }
}
}  // namespace nvfp4detail

inline void validate(const SwizzleScalesArgs& a) { nvfp4detail::validateSwizzle(a.rows, a.K, a.scales, "scales", a.swizzled, "swizzled"); }

inline void validate(const UnswizzleScalesArgs& a) { nvfp4detail::validateSwizzle(a.rows, a.K, a.swizzled, "swizzled", a.scales, "scales"); }

inline void validate(const GemmArgs& a) {
  using namespace nvfp4detail;
  const bool aFp4 = a.aType == DType::U8;
  MOE_REQUIRE(a.aType == DType::BF16 || aFp4, "E_DTYPE", "a", "expected bf16 (W4A16) or u8 codes of an NVFP4 tensor (W4A4)");
  MOE_REQUIRE(a.outType == DType::BF16 || a.outType == DType::F32, "E_DTYPE", "out", "expected bf16 or f32");
  MOE_REQUIRE(a.bias == nullptr || a.biasType == DType::BF16 || a.biasType == DType::F32, "E_DTYPE", "bias",
          "expected bf16 or f32");
  MOE_REQUIRE(a.M >= 0, "E_SHAPE", "M", "negative size " + std::to_string(a.M));
  MOE_REQUIRE(a.N >= 0, "E_SHAPE", "N", "negative size " + std::to_string(a.N));
  MOE_REQUIRE(a.K >= 0 && a.K % kNvfp4Block == 0, "E_SHAPE", "K", "expected a multiple of 16, got " + std::to_string(a.K));
  // The kernels keep per-dimension indices (and K/2 bytes per row) in 32-bit ints.
  MOE_REQUIRE(a.M <= INT_MAX, "E_SHAPE", "M", "at most 2^31 - 1 rows are supported");
  MOE_REQUIRE(a.N <= INT_MAX, "E_SHAPE", "N", "at most 2^31 - 1 rows are supported");
  MOE_REQUIRE(a.K <= INT_MAX / 2, "E_SHAPE", "K", "at most 2^30 - 1 is supported");
  if (a.M == 0 || a.N == 0) return;
  requirePtr(a.out, "out");
  requirePtr(a.wGlobalScale, "w.globalScale");
  if (aFp4) requirePtr(a.aGlobalScale, "a.globalScale");
  if (a.K == 0) return;
  requirePtr(a.a, "a");
  requirePtr(a.wData, "w.data");
  requirePtr(a.wScales, "w.scales");
  if (aFp4) requirePtr(a.aScales, "a.scales");
  requireAligned(a.a, aFp4 ? 8 : 16, aFp4 ? "a.data" : "a");
  requireAligned(a.wData, 8, "w.data");
}

inline int64_t groupedOutColumns(const GroupedGemmArgs& a) { return a.epilogue == GroupedEpilogue::Swiglu ? a.N / 2 : a.N; }

inline void validate(const GroupedGemmArgs& a) {
  using namespace nvfp4detail;
  const bool xFp4 = a.xType == DType::U8, outFp4 = a.outType == DType::U8;
  MOE_REQUIRE(a.xType == DType::BF16 || xFp4, "E_DTYPE", "x", "expected bf16 (W4A16) or u8 codes of an NVFP4 tensor (W4A4)");
  MOE_REQUIRE(a.outType == DType::BF16 || outFp4, "E_DTYPE", "out", "expected bf16 or u8 codes of an NVFP4 tensor");
  MOE_REQUIRE(a.epilogue == GroupedEpilogue::None || a.epilogue == GroupedEpilogue::Swiglu, "E_ARGUMENT", "epilogue",
          "expected none (0) or swiglu (1)");
  MOE_REQUIRE(a.E >= 1 && a.E <= INT_MAX, "E_SHAPE", "w", "expected at least one expert, got E = " + std::to_string(a.E));
  MOE_REQUIRE(a.rows >= 0 && a.rows <= INT_MAX, "E_SHAPE", "x", "expected 0 .. 2^31 - 1 rows, got " + std::to_string(a.rows));
  MOE_REQUIRE(a.N >= 0 && a.N <= INT_MAX, "E_SHAPE", "w", "expected 0 .. 2^31 - 1 rows per expert, got N = " + std::to_string(a.N));
  MOE_REQUIRE(a.K >= 0 && a.K % kNvfp4Block == 0 && a.K <= INT_MAX / 2, "E_SHAPE", "K",
          "expected a multiple of 16 below 2^30, got " + std::to_string(a.K));
  MOE_REQUIRE(a.epilogue != GroupedEpilogue::Swiglu || a.N % 2 == 0, "E_SHAPE", "w",
          "swiglu needs N = 2 * I (gate rows, then up rows), got N = " + std::to_string(a.N));
  MOE_REQUIRE(!outFp4 || a.epilogue == GroupedEpilogue::Swiglu, "E_ARGUMENT", "out",
          "an NVFP4 output is written by the swiglu epilogue only");
  MOE_REQUIRE(!outFp4 || a.N % (2 * kNvfp4Block) == 0, "E_SHAPE", "out",
          "an NVFP4 output needs I = N/2 a multiple of 16, got N = " + std::to_string(a.N));
  MOE_REQUIRE(a.maxRowsPerExpert >= 0 && a.pairs >= 0, "E_ARGUMENT", "layout", "negative size");
  MOE_REQUIRE(a.maxRowsPerExpert == 0 || a.rows == a.E * a.maxRowsPerExpert, "E_SHAPE", "layout",
          "the masked form has E * maxTokensPerExpert rows, got " + std::to_string(a.rows));
  if (outFp4) requirePtr(a.outGlobalScale, "outGlobalScale");
  if (a.xRows) {
    MOE_REQUIRE(a.gatherK >= 1, "E_ARGUMENT", "layout", "gather needs the layout's k, got " + std::to_string(a.gatherK));
    MOE_REQUIRE(a.xTokens >= 0 && a.xTokens <= INT_MAX, "E_SHAPE", "x", "expected 0 .. 2^31 - 1 tokens, got " + std::to_string(a.xTokens));
  }
  if (a.rows == 0 || a.N == 0) return;
  requirePtr(a.counts, "layout.counts");
  requirePtr(a.offsets, "layout.offsets");
  requirePtr(a.out, outFp4 ? "out.data" : "out");
  requirePtr(a.wGlobalScale, "w.globalScale");
  if (outFp4) {
    requirePtr(a.outScales, "out.scales");
    requireAligned(a.out, 8, "out.data");
  }
  if (xFp4) requirePtr(a.xGlobalScale, "x.globalScale");
  if (a.K == 0 || (a.xRows && a.xTokens == 0)) return;
  requirePtr(a.x, xFp4 ? "x.data" : "x");
  requirePtr(a.wData, "w.data");
  requirePtr(a.wScales, "w.scales");
  if (xFp4) requirePtr(a.xScales, "x.scales");
  requireAligned(a.x, xFp4 ? 8 : 16, xFp4 ? "x.data" : "x");
  requireAligned(a.wData, 8, "w.data");
}

}  // namespace moe
