// N-API glue of the mtp family: one binding per launcher of native/kernels/mtp/mtp.h.
// The first argument is the device (-1: the CPU reference in native/cpu/mtp). Pointers are
// bigints (0n for an absent optional array); sizes are numbers; dtypes are lib/dtype.ts ids.
#include "cpu/mtp/mtp.h"
#include "napi/glue.h"
#include "napi/launch.h"
#if MOE_WITH_CUDA
#include "kernels/mtp/mtp.h"
#endif

namespace moe::napi {
namespace {

[[noreturn]] void noCuda() { fail("E_NO_CUDA", "this build has no CUDA backend"); }

template <typename T>
T* typed(const Napi::Value& v) {
  return static_cast<T*>(ptr(v));
}

// verifyDraftsWorkspaceBytes(device, batch, numDrafts, vocab) -> number
Napi::Value WorkspaceBytes(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int device = i32(info[0]);
    const int64_t batch = i64(info[1]), numDrafts = i64(info[2]), vocab = i64(info[3]);
    size_t bytes = 0;
    if (device < 0) {
      bytes = cpu::mtp::verifyDraftsWorkspaceBytes(batch, numDrafts, vocab);
    } else {
#if MOE_WITH_CUDA
      bytes = kernels::mtp::verifyDraftsWorkspaceBytes(batch, numDrafts, vocab);
#else
      noCuda();
#endif
    }
    return Napi::Number::New(info.Env(), static_cast<double>(bytes));
  });
}

// verifyDrafts(device, targetLogits, logitsDType, draftTokens, draftLengths, draftData,
//   draftDType, draftKind, mode, temperature, topK, topP, seed, offset, relaxedTopK,
//   relaxedDelta, thinkBeginId, thinkEndId, inThinking, outTokens, outNumAccepted,
//   outAcceptMask, outInThinking, batch, numDrafts, vocab, workspace, workspaceBytes, stream)
Napi::Value VerifyDrafts(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int device = i32(info[0]);
    const void* target = ptr(info[1]);
    const DType logitsType = static_cast<DType>(i32(info[2]));
    const int32_t* draftTokens = typed<const int32_t>(info[3]);
    const int32_t* draftLengths = typed<const int32_t>(info[4]);
    const void* draftData = ptr(info[5]);
    const DType draftType = static_cast<DType>(i32(info[6]));
    const int32_t draftKind = i32(info[7]);
    const int32_t* mode = typed<const int32_t>(info[8]);
    const float* temperature = typed<const float>(info[9]);
    const int32_t* topK = typed<const int32_t>(info[10]);
    const float* topP = typed<const float>(info[11]);
    const uint64_t* seed = typed<const uint64_t>(info[12]);
    const uint64_t* offset = typed<const uint64_t>(info[13]);
    const int32_t* relaxedTopK = typed<const int32_t>(info[14]);
    const float* relaxedDelta = typed<const float>(info[15]);
    const int32_t* thinkBeginId = typed<const int32_t>(info[16]);
    const int32_t* thinkEndId = typed<const int32_t>(info[17]);
    const int32_t* inThinking = typed<const int32_t>(info[18]);
    int32_t* outTokens = typed<int32_t>(info[19]);
    int32_t* outNumAccepted = typed<int32_t>(info[20]);
    uint8_t* outAcceptMask = typed<uint8_t>(info[21]);
    int32_t* outInThinking = typed<int32_t>(info[22]);
    const int64_t batch = i64(info[23]), numDrafts = i64(info[24]), vocab = i64(info[25]);
    void* workspace = ptr(info[26]);
    const size_t workspaceBytes = static_cast<size_t>(i64(info[27]));
    if (device < 0) {
      cpu::mtp::verifyDrafts(target, logitsType, draftTokens, draftLengths, draftData, draftType, draftKind, mode,
                             temperature, topK, topP, seed, offset, relaxedTopK, relaxedDelta, thinkBeginId,
                             thinkEndId, inThinking, outTokens, outNumAccepted, outAcceptMask, outInThinking, batch,
                             numDrafts, vocab, workspace, workspaceBytes);
    } else {
#if MOE_WITH_CUDA
      launchOn(device, "verifyDrafts", [&] {
        return kernels::mtp::verifyDrafts(target, logitsType, draftTokens, draftLengths, draftData, draftType,
                                          draftKind, mode, temperature, topK, topP, seed, offset, relaxedTopK,
                                          relaxedDelta, thinkBeginId, thinkEndId, inThinking, outTokens,
                                          outNumAccepted, outAcceptMask, outInThinking, batch, numDrafts, vocab,
                                          workspace, workspaceBytes, streamArg(info[28]));
      });
#else
      noCuda();
#endif
    }
    return info.Env().Undefined();
  });
}

}  // namespace

void registerMtp(Napi::Env env, Napi::Object exports) {
  exports.Set("verifyDraftsWorkspaceBytes", Napi::Function::New(env, WorkspaceBytes));
  exports.Set("verifyDrafts", Napi::Function::New(env, VerifyDrafts));
}

}  // namespace moe::napi
