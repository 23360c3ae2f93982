// The one path of an op from JS to a backend. Every op binding has the same positional form,
//   name(device, stream, ...fields)
// where device is the native index (-1: the CPU reference), stream the cudaStream_t as a
// bigint (ignored on the CPU) and the fields fill the op's argument struct in declaration order.
// The glue reads the fields once, applies the shared preconditions (validate(args), in the
// family's header under native/common) and hands the same struct to cpu:: or kernels::.
// The hot path passes no arguments at all: lib/native.ts opArgs() fills a Float64Array shared
// with the addon with (device, stream, ...fields) (pointers as exact doubles: addresses are
// below 2^53) and calls name(); reading a field is then a load, not a Node-API call.
// Each op is also registered as `<name>LaunchLoop(n, device, stream, ...fields)`, which fills
// the struct once and launches it n times from C++: the baseline the launch benchmark compares
// the JS path against.
#pragma once
#include <chrono>
#include <cstddef>
#include <type_traits>

#include "common/dtype.h"
#include "napi/glue.h"
#include "runtime/device.h"
#if MOE_WITH_CUDA
#include "runtime/launch.h"
#endif

namespace moe::napi {

// Reads the fields in order, from the call's arguments or from the shared argument buffer.
class ArgReader {
 public:
  ArgReader(const Napi::CallbackInfo& info, size_t first) : info_(&info), i_(first) {}
  ArgReader(const double* buffer, size_t count, size_t first) : buf_(buffer), count_(count), i_(first) {}

  template <typename T = void>
  T* ptr() {
    if (buf_) return reinterpret_cast<T*>(static_cast<uintptr_t>(nextDouble()));
    return static_cast<T*>(napi::ptr(next()));
  }
  int64_t i64() { return buf_ ? static_cast<int64_t>(nextDouble()) : napi::i64(next()); }
  int32_t i32() { return buf_ ? static_cast<int32_t>(nextDouble()) : napi::i32(next()); }
  float f32() { return static_cast<float>(f64()); }
  double f64() {
    if (buf_) return nextDouble();
    const Napi::Value v = next();
    if (!v.IsNumber()) fail("E_ARGUMENT", "expected a number");
    return v.As<Napi::Number>().DoubleValue();
  }
  bool flag() { return buf_ ? nextDouble() != 0.0 : next().ToBoolean(); }
  DType dtype() { return static_cast<DType>(i32()); }

 private:
  Napi::Value next() {
    if (i_ >= info_->Length()) fail("E_ARGUMENT", "too few arguments for this op");
    return (*info_)[i_++];
  }
  double nextDouble() {
    if (i_ >= count_) fail("E_ARGUMENT", "the op argument buffer is too small for this op");
    return buf_[i_++];
  }
  const Napi::CallbackInfo* info_ = nullptr;
  const double* buf_ = nullptr;
  size_t count_ = 0;
  size_t i_;
};

template <typename Args>
using CpuFn = void (*)(const Args&);
#if MOE_WITH_CUDA
template <typename Args>
using GpuFn = cudaError_t (*)(const Args&, const kernels::Launch&);
#define MOE_GPU(fn) (fn)
#else
template <typename Args>
using GpuFn = std::nullptr_t;
#define MOE_GPU(fn) nullptr
#endif

template <typename Args, typename Fill>
void registerOp(Napi::Env env, Napi::Object exports, const char* name, Fill fill, CpuFn<Args> cpu, GpuFn<Args> gpu) {
  static_assert(std::is_invocable_r_v<Args, Fill, ArgReader&>, "fill(reader) must return the argument struct");
  // times < 0: one call; first: where (device, stream, ...fields) start in the call's arguments,
  // or -1 for the shared argument buffer
  auto run = [fill, cpu, gpu, name](const Napi::CallbackInfo& info, int64_t times, int first) {
    int device;
    void* stream;
    Args args;
    if (first < 0) {
      const AddonData* data = info.Env().GetInstanceData<AddonData>();
      if (data->args == nullptr || data->argCount < 2) fail("E_INTERNAL", "no op argument buffer was set");
      ArgReader r(data->args, data->argCount, 0);
      device = r.i32();
      stream = r.ptr();
      args = fill(r);
    } else {
      device = napi::i32(info[first]);
      stream = napi::ptr(info[first + 1]);
      ArgReader r(info, first + 2);
      args = fill(r);
    }
    validate(args);
    const int64_t n = times < 0 ? 1 : times;
    if (device < 0) {
      for (int64_t i = 0; i < n; ++i) cpu(args);
      return;
    }
#if MOE_WITH_CUDA
    runtime::launch(device, stream, name, [&](const kernels::Launch& l) {
      cudaError_t err = cudaSuccess;
      for (int64_t i = 0; i < n && err == cudaSuccess; ++i) err = gpu(args, l);
      return err;
    });
#else
    (void)stream;
    (void)gpu;
    runtime::noCudaBackend();
#endif
  };
  exports.Set(name, Napi::Function::New(env, [run](const Napi::CallbackInfo& info) -> Napi::Value {
                return guard(info, [&]() -> Napi::Value {
                  run(info, -1, info.Length() == 0 ? -1 : 0);
                  return info.Env().Undefined();
                });
              }));
  exports.Set(std::string(name) + "LaunchLoop", Napi::Function::New(env, [run](const Napi::CallbackInfo& info) -> Napi::Value {
                return guard(info, [&]() -> Napi::Value {
                  const int64_t n = napi::i64(info[0]);
                  const auto t0 = std::chrono::steady_clock::now();
                  run(info, n, info.Length() == 1 ? -1 : 1);
                  const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
                  return Napi::Number::New(info.Env(), dt.count());
                });
              }));
}

}  // namespace moe::napi
