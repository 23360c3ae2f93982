// Multi-token-prediction (MTP) draft verification for speculative decoding, fused on the GPU:
// temperature, softmax, top-k, top-p, acceptance and the final sample run without writing any
// probability tensor. Contract and semantics: common/mtp.h; the CPU reference with the same
// contract is native/cpu/mtp.
#pragma once
#include "common/mtp.h"
#include "kernels/common/launch.h"

namespace moe::kernels::mtp {

// Enqueues the verification on the launch's stream. Its scratch (per-row records, the
// sampled rows' step sums and race partials, counters) comes from the stream's workspace arena: each call fully rewrites what it
// uses, and work on one stream is ordered, so no initial contents are needed.
cudaError_t verifyDrafts(const VerifyDraftsArgs& args, const Launch& launch);

}  // namespace moe::kernels::mtp
