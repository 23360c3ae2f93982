// CPU reference for MTP draft verification (speculative decoding). It defines the exact
// semantics that native/kernels/mtp reproduces on the GPU; see native/kernels/mtp/mtp.h for the
// full contract (parameters, tie rules, random streams). Inputs are validated by the caller.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/dtype.h"

namespace moe::cpu::mtp {

// The CPU backend needs no scratch memory; kept for signature parity with the GPU launcher.
size_t verifyDraftsWorkspaceBytes(int64_t batch, int64_t numDrafts, int64_t vocab);

void verifyDrafts(const void* targetLogits, DType logitsDType,
                  const int32_t* draftTokens, const int32_t* draftLengths,
                  const void* draftData, DType draftDType, int32_t draftKind,
                  const int32_t* mode, const float* temperature, const int32_t* topK,
                  const float* topP, const uint64_t* seed, const uint64_t* offset,
                  const int32_t* relaxedTopK, const float* relaxedDelta,
                  const int32_t* thinkBeginId, const int32_t* thinkEndId,
                  const int32_t* inThinking,
                  int32_t* outTokens, int32_t* outNumAccepted, uint8_t* outAcceptMask,
                  int32_t* outInThinking,
                  int64_t batch, int64_t numDrafts, int64_t vocab,
                  void* workspace, size_t workspaceBytes);

}  // namespace moe::cpu::mtp
