// Module entry: one register function per area.
#include "napi/glue.h"

namespace moe::napi {
namespace {

Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  AddonData* data = info.Env().GetInstanceData<AddonData>();
  data->errorClass = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

Napi::Value SetArgBuffer(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
      fail("E_ARGUMENT", "setArgBuffer: expected a Float64Array");
    }
    Napi::Float64Array a = info[0].As<Napi::Float64Array>();
    AddonData* data = info.Env().GetInstanceData<AddonData>();
    data->argBuffer = Napi::Persistent(a);
    data->args = a.Data();
    data->argCount = a.ElementLength();
    return info.Env().Undefined();
  });
}

}  // namespace

Napi::Object init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData());
  exports.Set("setErrorClass", Napi::Function::New(env, SetErrorClass));
  exports.Set("setArgBuffer", Napi::Function::New(env, SetArgBuffer));
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
  registerEp(env, exports);
  return exports;
}

}  // namespace moe::napi

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return moe::napi::init(env, exports); }

NODE_API_MODULE(moe_kernels, InitAddon)
