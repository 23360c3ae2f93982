// The moe family's argument structs, shared by the CPU reference, the CUDA launchers and the
// N-API glue: the router GEMM (logits of every expert for every token), the SwiGLU of a dense
// [tokens, 2I] projection, and the elementwise sum that joins the routed and shared experts.
#pragma once
#include <cstdint>
#include <string>

#include "common/check.h"
#include "common/dtype.h"

namespace moe {

namespace moe_family {
constexpr int32_t kMaxRouterExperts = 512;  // routeTopK's limit: more could never be routed
}  // namespace moe_family

// routerLogits: out f32 [tokens, experts] = x bf16 [tokens, hidden] . weight bf16 [experts, hidden]^T,
// products exact in f32, sums in f32 (CPU: double, rounded once to f32).
struct RouterLogitsArgs {
  const uint16_t* x;       // bf16 bits
  const uint16_t* weight;  // bf16 bits
  float* out;
  int64_t tokens;
  int32_t experts;
  int64_t hidden;
};

inline void validate(const RouterLogitsArgs& a) {
  MOE_REQUIRE(a.tokens >= 0, "E_SHAPE", "x", "negative token count " + std::to_string(a.tokens));
  MOE_REQUIRE(a.hidden >= 1, "E_SHAPE", "x", "expected a hidden size of at least 1, got " + std::to_string(a.hidden));
  MOE_REQUIRE(a.experts >= 1 && a.experts <= moe_family::kMaxRouterExperts, "E_SHAPE", "weight",
          "expected 1 to " + std::to_string(moe_family::kMaxRouterExperts) + " experts, got " + std::to_string(a.experts));
  MOE_REQUIRE(a.tokens * a.hidden <= 2147483647LL && a.tokens * a.experts <= 2147483647LL, "E_SHAPE", "x", "more than 2^31 - 1 elements");
  MOE_REQUIRE(a.weight, "E_ARGUMENT", "weight", "null data pointer");
  MOE_REQUIRE(a.tokens == 0 || (a.x && a.out), "E_ARGUMENT", "x", "null data pointer");
}

// swiglu: out [rows, I] = silu(x[:, :I]) * x[:, I:] for x [rows, 2I] (moe_rules.h: swiglu).
struct SwigluArgs {
  const void* x;
  DType xType;    // BF16 or F32
  void* out;
  DType outType;  // BF16 or F32
  int64_t rows;
  int64_t inner;  // I
};

inline void validate(const SwigluArgs& a) {
  MOE_REQUIRE(a.xType == DType::BF16 || a.xType == DType::F32, "E_DTYPE", "x", "expected dtype bf16 or f32");
  MOE_REQUIRE(a.outType == DType::BF16 || a.outType == DType::F32, "E_DTYPE", "out", "expected dtype bf16 or f32");
  MOE_REQUIRE(a.rows >= 0 && a.inner >= 0, "E_SHAPE", "x", "negative size");
  MOE_REQUIRE(a.rows * a.inner == 0 || (a.x && a.out), "E_ARGUMENT", "x", "null data pointer");
}

// add: out = a + b elementwise, in f32, rounded once to out's dtype.
struct AddArgs {
  const void* a;
  DType aType;    // BF16 or F32
  const void* b;
  DType bType;    // BF16 or F32
  void* out;
  DType outType;  // BF16 or F32
  int64_t numel;
};

inline void validate(const AddArgs& a) {
  auto ok = [](DType t) { return t == DType::BF16 || t == DType::F32; };
  MOE_REQUIRE(ok(a.aType), "E_DTYPE", "a", "expected dtype bf16 or f32");
  MOE_REQUIRE(ok(a.bType), "E_DTYPE", "b", "expected dtype bf16 or f32");
  MOE_REQUIRE(ok(a.outType), "E_DTYPE", "out", "expected dtype bf16 or f32");
  MOE_REQUIRE(a.numel >= 0, "E_SHAPE", "a", "negative size");
  MOE_REQUIRE(a.numel == 0 || (a.a && a.b && a.out), "E_ARGUMENT", "a", "null data pointer");
}

}  // namespace moe
