// Streams and events. Waits run on worker threads and return promises.
#include "napi/glue.h"
#include "runtime/device.h"

namespace moe::napi {
namespace {

Napi::Value DefaultStream(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value { return bigint(info.Env(), runtime::defaultStream(i32(info[0]))); });
}

Napi::Value CreateStream(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value { return bigint(info.Env(), runtime::createStream(i32(info[0]))); });
}

Napi::Value DestroyStream(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    runtime::destroyStream(i32(info[0]), ptr(info[1]));
    return info.Env().Undefined();
  });
}

Napi::Value StreamSynchronize(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    int device = i32(info[0]);
    runtime::Stream s = ptr(info[1]);
    return runAsync(info.Env(), [=] { runtime::streamSynchronize(device, s); });
  });
}

Napi::Value StreamQuery(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    return Napi::Boolean::New(info.Env(), runtime::streamQuery(i32(info[0]), ptr(info[1])));
  });
}

Napi::Value StreamWaitEvent(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    runtime::streamWaitEvent(i32(info[0]), ptr(info[1]), ptr(info[2]));
    return info.Env().Undefined();
  });
}

Napi::Value CreateEvent(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    return bigint(info.Env(), runtime::createEvent(i32(info[0]), info[1].ToBoolean()));
  });
}

Napi::Value DestroyEvent(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    runtime::destroyEvent(i32(info[0]), ptr(info[1]));
    return info.Env().Undefined();
  });
}

Napi::Value RecordEvent(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    runtime::recordEvent(i32(info[0]), ptr(info[1]), ptr(info[2]));
    return info.Env().Undefined();
  });
}

Napi::Value EventSynchronize(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    int device = i32(info[0]);
    runtime::Event e = ptr(info[1]);
    return runAsync(info.Env(), [=] { runtime::eventSynchronize(device, e); });
  });
}

Napi::Value EventQuery(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    return Napi::Boolean::New(info.Env(), runtime::eventQuery(i32(info[0]), ptr(info[1])));
  });
}

Napi::Value EventElapsedMs(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    return Napi::Number::New(info.Env(), runtime::eventElapsedMs(i32(info[0]), ptr(info[1]), ptr(info[2])));
  });
}

}  // namespace

void registerStream(Napi::Env env, Napi::Object exports) {
  exports.Set("defaultStream", Napi::Function::New(env, DefaultStream));
  exports.Set("createStream", Napi::Function::New(env, CreateStream));
  exports.Set("destroyStream", Napi::Function::New(env, DestroyStream));
  exports.Set("streamSynchronize", Napi::Function::New(env, StreamSynchronize));
  exports.Set("streamQuery", Napi::Function::New(env, StreamQuery));
  exports.Set("streamWaitEvent", Napi::Function::New(env, StreamWaitEvent));
  exports.Set("createEvent", Napi::Function::New(env, CreateEvent));
  exports.Set("destroyEvent", Napi::Function::New(env, DestroyEvent));
  exports.Set("recordEvent", Napi::Function::New(env, RecordEvent));
  exports.Set("eventSynchronize", Napi::Function::New(env, EventSynchronize));
  exports.Set("eventQuery", Napi::Function::New(env, EventQuery));
  exports.Set("eventElapsedMs", Napi::Function::New(env, EventElapsedMs));
}

}  // namespace moe::napi
