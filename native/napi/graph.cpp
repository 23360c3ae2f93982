// CUDA graph capture and replay.
#include "napi/glue.h"
#include "runtime/device.h"

namespace moe::napi {
namespace {

Napi::Value BeginCapture(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    runtime::beginCapture(i32(info[0]), ptr(info[1]));
    return info.Env().Undefined();
  });
}

Napi::Value EndCapture(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value { return bigint(info.Env(), runtime::endCapture(i32(info[0]), ptr(info[1]))); });
}

Napi::Value AbortCapture(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    runtime::abortCapture(i32(info[0]), ptr(info[1]));
    return info.Env().Undefined();
  });
}

Napi::Value IsCapturing(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    return Napi::Boolean::New(info.Env(), runtime::isCapturing(i32(info[0]), ptr(info[1])));
  });
}

Napi::Value LaunchGraph(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    runtime::launchGraph(i32(info[0]), ptr(info[1]), ptr(info[2]));
    return info.Env().Undefined();
  });
}

Napi::Value DestroyGraph(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    runtime::destroyGraph(i32(info[0]), ptr(info[1]));
    return info.Env().Undefined();
  });
}

}  // namespace

void registerGraph(Napi::Env env, Napi::Object exports) {
  exports.Set("beginCapture", Napi::Function::New(env, BeginCapture));
  exports.Set("endCapture", Napi::Function::New(env, EndCapture));
  exports.Set("abortCapture", Napi::Function::New(env, AbortCapture));
  exports.Set("isCapturing", Napi::Function::New(env, IsCapturing));
  exports.Set("launchGraph", Napi::Function::New(env, LaunchGraph));
  exports.Set("destroyGraph", Napi::Function::New(env, DestroyGraph));
}

}  // namespace moe::napi
