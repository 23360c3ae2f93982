// verifyDrafts(device, stream, targetLogits, logitsDType, draftTokens, draftLengths, draftData,
//   draftDType, draftKind, mode, temperature, topK, topP, seed, offset, relaxedTopK,
//   relaxedDelta, thinkBeginId, thinkEndId, inThinking, outTokens, outNumAccepted,
//   outAcceptMask, outInThinking, batch, numDrafts, vocab)
// Pointers are bigints, 0n for an absent optional array (see common/mtp.h).
#include "cpu/mtp/mtp.h"
#include "napi/op.h"
#if MOE_WITH_CUDA
#include "kernels/mtp/mtp.h"
#endif

namespace moe::napi {

void registerMtp(Napi::Env env, Napi::Object exports) {
  registerOp<VerifyDraftsArgs>(
      env, exports, "verifyDrafts",
      [](ArgReader& r) {
        VerifyDraftsArgs a;
        a.targetLogits = r.ptr<const void>();
        a.logitsDType = r.dtype();
        a.draftTokens = r.ptr<const int32_t>();
        a.draftLengths = r.ptr<const int32_t>();
        a.draftData = r.ptr<const void>();
        a.draftDType = r.dtype();
        a.draftKind = r.i32();
        a.mode = r.ptr<const int32_t>();
        a.temperature = r.ptr<const float>();
        a.topK = r.ptr<const int32_t>();
        a.topP = r.ptr<const float>();
        a.seed = r.ptr<const uint64_t>();
        a.offset = r.ptr<const uint64_t>();
        a.relaxedTopK = r.ptr<const int32_t>();
        a.relaxedDelta = r.ptr<const float>();
        a.thinkBeginId = r.ptr<const int32_t>();
        a.thinkEndId = r.ptr<const int32_t>();
        a.inThinking = r.ptr<const int32_t>();
        a.outTokens = r.ptr<int32_t>();
        a.outNumAccepted = r.ptr<int32_t>();
        a.outAcceptMask = r.ptr<uint8_t>();
        a.outInThinking = r.ptr<int32_t>();
        a.batch = r.i64();
        a.numDrafts = r.i64();
        a.vocab = r.i64();
        return a;
      },
      cpu::mtp::verifyDrafts, MOE_GPU(kernels::mtp::verifyDrafts));
}

}  // namespace moe::napi
