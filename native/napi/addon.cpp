// Module entry: one register function per area.
#include "napi/glue.h"

namespace moe::napi {
namespace {

Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  AddonData* data = info.Env().GetInstanceData<AddonData>();
  data->errorClass = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

}  // namespace

Napi::Object init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData());
  exports.Set("setErrorClass", Napi::Function::New(env, SetErrorClass));
  registerDevice(env, exports);
  registerMemory(env, exports);
  registerStream(env, exports);
  registerGraph(env, exports);
  registerConvert(env, exports);
  registerDiagnostics(env, exports);
  registerNvfp4(env, exports);
  registerMtp(env, exports);
  registerRouting(env, exports);
  registerMoe(env, exports);
  return exports;
}

}  // namespace moe::napi

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return moe::napi::init(env, exports); }

NODE_API_MODULE(moe_kernels, InitAddon)
