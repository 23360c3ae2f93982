#include "napi/glue.h"

namespace moe::napi {

Napi::Error makeError(Napi::Env env, const std::string& code, const std::string& message) {
  AddonData* data = env.GetInstanceData<AddonData>();
  if (data && !data->errorClass.IsEmpty()) {
    Napi::Object err = data->errorClass.New({Napi::String::New(env, code), Napi::String::New(env, message)});
    return Napi::Error(env, err);
  }
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  return err;
}

uint64_t u64(const Napi::Value& v) {
  if (v.IsBigInt()) {
    bool lossless = true;
    return v.As<Napi::BigInt>().Uint64Value(&lossless);
  }
  if (v.IsNumber()) return static_cast<uint64_t>(v.As<Napi::Number>().Int64Value());
  fail("E_ARGUMENT", "expected a bigint or a number");
}

void* ptr(const Napi::Value& v) { return reinterpret_cast<void*>(static_cast<uintptr_t>(u64(v))); }

int32_t i32(const Napi::Value& v) {
  if (!v.IsNumber()) fail("E_ARGUMENT", "expected a number");
  return v.As<Napi::Number>().Int32Value();
}

int64_t i64(const Napi::Value& v) {
  if (v.IsBigInt()) {
    bool lossless = true;
    return v.As<Napi::BigInt>().Int64Value(&lossless);
  }
  if (!v.IsNumber()) fail("E_ARGUMENT", "expected a number");
  return v.As<Napi::Number>().Int64Value();
}

Napi::Value bigint(Napi::Env env, const void* p) {
  return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)));
}

Napi::Value bigint(Napi::Env env, uint64_t v) { return Napi::BigInt::New(env, v); }

JsBytes jsBytes(const Napi::Value& v) {
  if (v.IsTypedArray()) {
    Napi::TypedArray t = v.As<Napi::TypedArray>();
    uint8_t* base = static_cast<uint8_t*>(t.ArrayBuffer().Data());
    return {base + t.ByteOffset(), t.ByteLength()};
  }
  if (v.IsDataView()) {
    Napi::DataView d = v.As<Napi::DataView>();
    return {static_cast<uint8_t*>(d.ArrayBuffer().Data()) + d.ByteOffset(), d.ByteLength()};
  }
  if (v.IsArrayBuffer()) {
    Napi::ArrayBuffer b = v.As<Napi::ArrayBuffer>();
    return {b.Data(), b.ByteLength()};
  }
  fail("E_ARGUMENT", "expected a TypedArray, DataView or ArrayBuffer");
}

namespace {

class Worker : public Napi::AsyncWorker {
 public:
  Worker(Napi::Env env, std::function<void()> work, const std::vector<Napi::Value>& keepAlive)
      : Napi::AsyncWorker(env, "moe-kernels"), deferred_(Napi::Promise::Deferred::New(env)), work_(std::move(work)) {
    // only objects can be referenced (Node-API < 10); a bigint pointer needs no keeping
    for (const Napi::Value& v : keepAlive)
      if (v.IsObject()) refs_.push_back(Napi::Persistent(v.As<Napi::Object>()));
  }
  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    try {
      work_();
    } catch (const moe::Error& e) {
      code_ = e.code();
      SetError(e.what());
    } catch (const std::exception& e) {
      code_ = "E_INTERNAL";
      SetError(e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override {
    deferred_.Reject(makeError(Env(), code_, e.Message()).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::function<void()> work_;
  std::vector<Napi::ObjectReference> refs_;
  std::string code_;
};

}  // namespace

Napi::Promise runAsync(Napi::Env env, std::function<void()> work, const std::vector<Napi::Value>& keepAlive) {
  Worker* w = new Worker(env, std::move(work), keepAlive);
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

}  // namespace moe::napi
