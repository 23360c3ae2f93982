// N-API glue of the mtp family.
#include "napi/glue.h"
#include "napi/launch.h"

namespace moe::napi {

void registerMtp(Napi::Env, Napi::Object) {}

}  // namespace moe::napi
