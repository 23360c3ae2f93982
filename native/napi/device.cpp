// devices(), memory statistics, the cache.
#include "napi/glue.h"
#include "runtime/device.h"

namespace moe::napi {
namespace {

Napi::Value DeviceCount(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value { return Napi::Number::New(info.Env(), runtime::deviceCount()); });
}

Napi::Value UnavailableReason(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value { return Napi::String::New(info.Env(), runtime::cudaUnavailableReason()); });
}

Napi::Value DeviceInfo(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    runtime::DeviceInfo d = runtime::deviceInfo(i32(info[0]));
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("index", d.index);
    o.Set("name", d.name);
    o.Set("major", d.major);
    o.Set("minor", d.minor);
    o.Set("multiprocessors", d.multiprocessors);
    o.Set("totalMemory", Napi::Number::New(env, static_cast<double>(d.totalMemory)));
    o.Set("l2CacheBytes", Napi::Number::New(env, static_cast<double>(d.l2CacheBytes)));
    o.Set("sharedMemoryPerBlockOptin", Napi::Number::New(env, static_cast<double>(d.sharedMemoryPerBlockOptin)));
    return o;
  });
}

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    runtime::BuildInfo b = runtime::buildInfo();
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("cuda", b.cuda);
    o.Set("cudaArchs", b.cudaArchs);
    o.Set("cudaRuntimeVersion", b.cudaRuntimeVersion);
    o.Set("driverVersion", b.driverVersion);
    o.Set("ncclLibrary", b.ncclLibrary);
    return o;
  });
}

Napi::Value CanAccessPeer(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    return Napi::Boolean::New(info.Env(), runtime::canAccessPeer(i32(info[0]), i32(info[1])));
  });
}

Napi::Value EnablePeerAccess(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    runtime::enablePeerAccess(i32(info[0]), i32(info[1]));
    return info.Env().Undefined();
  });
}

Napi::Value MemoryStats(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    runtime::MemoryStats s = runtime::memoryStats(i32(info[0]));
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("allocatedBytes", Napi::Number::New(env, static_cast<double>(s.allocatedBytes)));
    o.Set("reservedBytes", Napi::Number::New(env, static_cast<double>(s.reservedBytes)));
    o.Set("peakAllocatedBytes", Napi::Number::New(env, static_cast<double>(s.peakAllocatedBytes)));
    o.Set("allocations", Napi::Number::New(env, static_cast<double>(s.allocations)));
    o.Set("frees", Napi::Number::New(env, static_cast<double>(s.frees)));
    o.Set("driverAllocations", Napi::Number::New(env, static_cast<double>(s.driverAllocations)));
    return o;
  });
}

Napi::Value EmptyCache(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    runtime::emptyCache(i32(info[0]));
    return info.Env().Undefined();
  });
}

Napi::Value SetMemoryLimit(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    runtime::setMemoryLimit(i32(info[0]), static_cast<size_t>(i64(info[1])));
    return info.Env().Undefined();
  });
}

}  // namespace

void registerDevice(Napi::Env env, Napi::Object exports) {
  exports.Set("buildInfo", Napi::Function::New(env, BuildInfo));
  exports.Set("canAccessPeer", Napi::Function::New(env, CanAccessPeer));
  exports.Set("enablePeerAccess", Napi::Function::New(env, EnablePeerAccess));
  exports.Set("deviceCount", Napi::Function::New(env, DeviceCount));
  exports.Set("cudaUnavailableReason", Napi::Function::New(env, UnavailableReason));
  exports.Set("deviceInfo", Napi::Function::New(env, DeviceInfo));
  exports.Set("memoryStats", Napi::Function::New(env, MemoryStats));
  exports.Set("emptyCache", Napi::Function::New(env, EmptyCache));
  exports.Set("setMemoryLimit", Napi::Function::New(env, SetMemoryLimit));
}

}  // namespace moe::napi
