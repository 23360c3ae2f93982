// N-API glue of the nvfp4 family.
#include "napi/glue.h"
#include "napi/launch.h"

namespace moe::napi {

void registerNvfp4(Napi::Env, Napi::Object) {}

}  // namespace moe::napi
