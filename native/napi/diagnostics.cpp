// launchEmpty(device, stream): an empty kernel through the op path (nothing on the CPU);
// launchEmptyLaunchLoop(n, device, stream) is its C++ loop (see napi/op.h).
#include "common/diagnostics.h"
#include "napi/op.h"
#if MOE_WITH_CUDA
#include "kernels/diagnostics/empty.h"
#endif

namespace moe::napi {

namespace {
void cpuEmpty(const EmptyArgs&) {}
}  // namespace

void registerDiagnostics(Napi::Env env, Napi::Object exports) {
  registerOp<EmptyArgs>(env, exports, "launchEmpty", [](ArgReader&) { return EmptyArgs{}; }, cpuEmpty,
                        MOE_GPU(kernels::diagnostics::launchEmpty));
}

}  // namespace moe::napi
