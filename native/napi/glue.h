// Shared pieces of the N-API glue: argument unwrapping, MoeError construction, and the
// promise-returning worker for calls that block. No math lives in native/napi.
#pragma once
#include <napi.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runtime/errors.h"

namespace moe::napi {

struct AddonData {
  Napi::FunctionReference errorClass;  // lib/errors.ts MoeError, set by setErrorClass()
  // The op argument buffer (lib/native.ts opArgs()): a Float64Array the JS side fills with
  // (device, stream, ...fields) before calling an op with no arguments. Kept referenced.
  Napi::Reference<Napi::Float64Array> argBuffer;
  const double* args = nullptr;
  size_t argCount = 0;
};

Napi::Error makeError(Napi::Env env, const std::string& code, const std::string& message);

// Runs fn, turning moe::Error and std::exception into a thrown JS MoeError.
template <typename F>
Napi::Value guard(const Napi::CallbackInfo& info, F&& fn) {
  try {
    return fn();
  } catch (const moe::Error& e) {
    throw makeError(info.Env(), e.code(), e.what());
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw makeError(info.Env(), "E_INTERNAL", e.what());
  }
}

uint64_t u64(const Napi::Value& v);  // BigInt or Number
void* ptr(const Napi::Value& v);
int32_t i32(const Napi::Value& v);
int64_t i64(const Napi::Value& v);
Napi::Value bigint(Napi::Env env, const void* p);
Napi::Value bigint(Napi::Env env, uint64_t v);

// A pointer and size into JS-owned memory (a TypedArray, DataView or ArrayBuffer).
struct JsBytes {
  void* data;
  size_t size;
};
JsBytes jsBytes(const Napi::Value& v);

// Runs `work` on the libuv thread pool and settles a promise: resolved with undefined, or
// rejected with a MoeError. `keepAlive` values stay referenced until then.
Napi::Promise runAsync(Napi::Env env, std::function<void()> work, const std::vector<Napi::Value>& keepAlive = {});

void registerDevice(Napi::Env env, Napi::Object exports);
void registerMemory(Napi::Env env, Napi::Object exports);
void registerStream(Napi::Env env, Napi::Object exports);
void registerGraph(Napi::Env env, Napi::Object exports);
void registerConvert(Napi::Env env, Napi::Object exports);
void registerDiagnostics(Napi::Env env, Napi::Object exports);
void registerNvfp4(Napi::Env env, Napi::Object exports);
void registerMtp(Napi::Env env, Napi::Object exports);
void registerRouting(Napi::Env env, Napi::Object exports);
void registerMoe(Napi::Env env, Napi::Object exports);
void registerEp(Napi::Env env, Napi::Object exports);

}  // namespace moe::napi
