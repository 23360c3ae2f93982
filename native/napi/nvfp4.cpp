// N-API glue of the nvfp4 family: one binding per launcher of native/kernels/nvfp4/nvfp4.h.
// The first argument is the device (-1: the CPU reference in native/cpu/nvfp4). Pointers are
// bigints; shapes and sizes are numbers; dtypes are the numeric ids of lib/dtype.ts.
#include "cpu/nvfp4/nvfp4.h"
#include "napi/glue.h"
#include "napi/launch.h"
#if MOE_WITH_CUDA
#include "kernels/nvfp4/nvfp4.h"
#endif

namespace moe::napi {
namespace {

namespace cpuref = moe::cpu::nvfp4;
#if MOE_WITH_CUDA
namespace gpu = moe::kernels::nvfp4;
#endif

[[noreturn]] void noCuda() { fail("E_NO_CUDA", "this build has no CUDA backend"); }

DType dtypeArg(const Napi::Value& v) { return static_cast<DType>(i32(v)); }
const uint8_t* bytesArg(const Napi::Value& v) { return static_cast<const uint8_t*>(ptr(v)); }
uint8_t* mutableBytesArg(const Napi::Value& v) { return static_cast<uint8_t*>(ptr(v)); }
const float* floatArg(const Napi::Value& v) { return static_cast<const float*>(ptr(v)); }
float* mutableFloatArg(const Napi::Value& v) { return static_cast<float*>(ptr(v)); }

// nvfp4Amax(device, x, xType, numel, amaxOut, stream)
Napi::Value Amax(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int device = i32(info[0]);
    const void* x = ptr(info[1]);
    const DType xType = dtypeArg(info[2]);
    const int64_t numel = i64(info[3]);
    float* out = mutableFloatArg(info[4]);
    if (device < 0) {
      cpuref::amax(x, xType, numel, out);
    } else {
#if MOE_WITH_CUDA
      launchOn(device, "nvfp4 amax", [&] { return gpu::amax(x, xType, numel, out, streamArg(info[5])); });
#else
      noCuda();
#endif
    }
    return info.Env().Undefined();
  });
}

// nvfp4GlobalScaleFromAmax(device, amax, globalScale, stream)
Napi::Value GlobalScaleFromAmax(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int device = i32(info[0]);
    const float* amax = floatArg(info[1]);
    float* gs = mutableFloatArg(info[2]);
    if (device < 0) {
      cpuref::globalScaleFromAmax(amax, gs);
    } else {
#if MOE_WITH_CUDA
      launchOn(device, "nvfp4 globalScaleFromAmax", [&] { return gpu::globalScaleFromAmax(amax, gs, streamArg(info[3])); });
#else
      noCuda();
#endif
    }
    return info.Env().Undefined();
  });
}

// nvfp4Quantize(device, x, xType, rows, K, globalScale, data, scales, stream)
Napi::Value Quantize(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int device = i32(info[0]);
    const void* x = ptr(info[1]);
    const DType xType = dtypeArg(info[2]);
    const int64_t rows = i64(info[3]);
    const int64_t K = i64(info[4]);
    const float* gs = floatArg(info[5]);
    uint8_t* data = mutableBytesArg(info[6]);
    uint8_t* scales = mutableBytesArg(info[7]);
    if (device < 0) {
      cpuref::quantize(x, xType, rows, K, gs, data, scales);
    } else {
#if MOE_WITH_CUDA
      launchOn(device, "nvfp4 quantize",
               [&] { return gpu::quantize(x, xType, rows, K, gs, data, scales, streamArg(info[8])); });
#else
      noCuda();
#endif
    }
    return info.Env().Undefined();
  });
}

// nvfp4Dequantize(device, data, scales, globalScale, rows, K, out, outType, stream)
Napi::Value Dequantize(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int device = i32(info[0]);
    const uint8_t* data = bytesArg(info[1]);
    const uint8_t* scales = bytesArg(info[2]);
    const float* gs = floatArg(info[3]);
    const int64_t rows = i64(info[4]);
    const int64_t K = i64(info[5]);
    void* out = ptr(info[6]);
    const DType outType = dtypeArg(info[7]);
    if (device < 0) {
      cpuref::dequantize(data, scales, gs, rows, K, out, outType);
    } else {
#if MOE_WITH_CUDA
      launchOn(device, "nvfp4 dequantize",
               [&] { return gpu::dequantize(data, scales, gs, rows, K, out, outType, streamArg(info[8])); });
#else
      noCuda();
#endif
    }
    return info.Env().Undefined();
  });
}

// nvfp4SwizzledScaleBytes(rows, K) -> number. The layout is the same on both backends.
Napi::Value SwizzledScaleBytes(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int64_t bytes = cpuref::swizzledScaleBytes(i64(info[0]), i64(info[1]));
    return Napi::Number::New(info.Env(), static_cast<double>(bytes));
  });
}

// nvfp4SwizzleScales(device, scales, rows, K, swizzled, stream)
Napi::Value SwizzleScales(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int device = i32(info[0]);
    const uint8_t* scales = bytesArg(info[1]);
    const int64_t rows = i64(info[2]);
    const int64_t K = i64(info[3]);
    uint8_t* swizzled = mutableBytesArg(info[4]);
    if (device < 0) {
      cpuref::swizzleScales(scales, rows, K, swizzled);
    } else {
#if MOE_WITH_CUDA
      launchOn(device, "nvfp4 swizzleScales",
               [&] { return gpu::swizzleScales(scales, rows, K, swizzled, streamArg(info[5])); });
#else
      noCuda();
#endif
    }
    return info.Env().Undefined();
  });
}

// nvfp4UnswizzleScales(device, swizzled, rows, K, scales, stream)
Napi::Value UnswizzleScales(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int device = i32(info[0]);
    const uint8_t* swizzled = bytesArg(info[1]);
    const int64_t rows = i64(info[2]);
    const int64_t K = i64(info[3]);
    uint8_t* scales = mutableBytesArg(info[4]);
    if (device < 0) {
      cpuref::unswizzleScales(swizzled, rows, K, scales);
    } else {
#if MOE_WITH_CUDA
      launchOn(device, "nvfp4 unswizzleScales",
               [&] { return gpu::unswizzleScales(swizzled, rows, K, scales, streamArg(info[5])); });
#else
      noCuda();
#endif
    }
    return info.Env().Undefined();
  });
}

// nvfp4GemmWorkspaceBytes(device, M, N, K, aType, forcePortable) -> number
Napi::Value GemmWorkspaceBytes(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int device = i32(info[0]);
    const int64_t M = i64(info[1]), N = i64(info[2]), K = i64(info[3]);
    const DType aType = dtypeArg(info[4]);
    const bool forcePortable = info[5].ToBoolean();
    size_t bytes = 0;
    if (device < 0) {
      bytes = cpuref::gemmWorkspaceBytes(M, N, K, aType, forcePortable);
    } else {
#if MOE_WITH_CUDA
      // The configuration depends on the device's SM count: ask on that device.
      runtime::setDevice(device);
      bytes = gpu::gemmWorkspaceBytes(M, N, K, aType, forcePortable);
#else
      noCuda();
#endif
    }
    return Napi::Number::New(info.Env(), static_cast<double>(bytes));
  });
}

// nvfp4Gemm(device, a, aType, aScales, aGlobalScale, wData, wScales, wGlobalScale, bias,
//           biasType, out, outType, M, N, K, alpha, forcePortable, workspace, workspaceBytes,
//           stream)
Napi::Value Gemm(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int device = i32(info[0]);
    const void* a = ptr(info[1]);
    const DType aType = dtypeArg(info[2]);
    const uint8_t* aScales = bytesArg(info[3]);
    const float* aGs = floatArg(info[4]);
    const uint8_t* wData = bytesArg(info[5]);
    const uint8_t* wScales = bytesArg(info[6]);
    const float* wGs = floatArg(info[7]);
    const void* bias = ptr(info[8]);
    const DType biasType = dtypeArg(info[9]);
    void* out = ptr(info[10]);
    const DType outType = dtypeArg(info[11]);
    const int64_t M = i64(info[12]), N = i64(info[13]), K = i64(info[14]);
    const float alpha = static_cast<float>(info[15].As<Napi::Number>().DoubleValue());
    const bool forcePortable = info[16].ToBoolean();
    void* workspace = ptr(info[17]);
    const size_t workspaceBytes = static_cast<size_t>(i64(info[18]));
    if (device < 0) {
      cpuref::gemm(a, aType, aScales, aGs, wData, wScales, wGs, bias, biasType, out, outType, M, N, K, alpha,
                   forcePortable, workspace, workspaceBytes);
    } else {
#if MOE_WITH_CUDA
      launchOn(device, "nvfp4 gemm", [&] {
        return gpu::gemm(a, aType, aScales, aGs, wData, wScales, wGs, bias, biasType, out, outType, M, N, K, alpha,
                         forcePortable, workspace, workspaceBytes, streamArg(info[19]));
      });
#else
      noCuda();
#endif
    }
    return info.Env().Undefined();
  });
}

}  // namespace

void registerNvfp4(Napi::Env env, Napi::Object exports) {
  exports.Set("nvfp4Amax", Napi::Function::New(env, Amax));
  exports.Set("nvfp4GlobalScaleFromAmax", Napi::Function::New(env, GlobalScaleFromAmax));
  exports.Set("nvfp4Quantize", Napi::Function::New(env, Quantize));
  exports.Set("nvfp4Dequantize", Napi::Function::New(env, Dequantize));
  exports.Set("nvfp4SwizzledScaleBytes", Napi::Function::New(env, SwizzledScaleBytes));
  exports.Set("nvfp4SwizzleScales", Napi::Function::New(env, SwizzleScales));
  exports.Set("nvfp4UnswizzleScales", Napi::Function::New(env, UnswizzleScales));
  exports.Set("nvfp4GemmWorkspaceBytes", Napi::Function::New(env, GemmWorkspaceBytes));
  exports.Set("nvfp4Gemm", Napi::Function::New(env, Gemm));
}

}  // namespace moe::napi
