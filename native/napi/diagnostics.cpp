// Launch-overhead probes: launchEmpty(device, stream), launchEmptyLoop(device, stream, n) -> seconds.
#include "napi/glue.h"
#include "napi/launch.h"
#if MOE_WITH_CUDA
#include "kernels/diagnostics/empty.h"
#endif

namespace moe::napi {
namespace {

Napi::Value LaunchEmpty(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
#if MOE_WITH_CUDA
    launchOn(i32(info[0]), "launchEmpty", [&] { return kernels::diagnostics::launchEmpty(streamArg(info[1])); });
    return info.Env().Undefined();
#else
    fail("E_NO_CUDA", "this build has no CUDA backend");
#endif
  });
}

Napi::Value LaunchEmptyLoop(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
#if MOE_WITH_CUDA
    double seconds = 0;
    launchOn(i32(info[0]), "launchEmptyLoop",
             [&] { return kernels::diagnostics::launchEmptyLoop(streamArg(info[1]), i32(info[2]), &seconds); });
    return Napi::Number::New(info.Env(), seconds);
#else
    fail("E_NO_CUDA", "this build has no CUDA backend");
#endif
  });
}

}  // namespace

void registerDiagnostics(Napi::Env env, Napi::Object exports) {
  exports.Set("launchEmpty", Napi::Function::New(env, LaunchEmpty));
  exports.Set("launchEmptyLoop", Napi::Function::New(env, LaunchEmptyLoop));
}

}  // namespace moe::napi
