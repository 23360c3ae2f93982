// convert(device, src, srcType, dst, dstType, numel, stream): device -1 runs the CPU reference.
#include "cpu/convert/convert.h"
#include "napi/glue.h"
#include "napi/launch.h"
#if MOE_WITH_CUDA
#include "kernels/convert/convert.h"
#endif

namespace moe::napi {
namespace {

Napi::Value Convert(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    int device = i32(info[0]);
    const void* src = ptr(info[1]);
    DType srcType = static_cast<DType>(i32(info[2]));
    void* dst = ptr(info[3]);
    DType dstType = static_cast<DType>(i32(info[4]));
    int64_t numel = i64(info[5]);
    if (device < 0) {
      cpu::convert::convert(src, srcType, dst, dstType, numel);
    } else {
#if MOE_WITH_CUDA
      launchOn(device, "convert", [&] {
        return kernels::convert::convert(src, srcType, dst, dstType, numel, streamArg(info[6]));
      });
#else
      fail("E_NO_CUDA", "this build has no CUDA backend");
#endif
    }
    return info.Env().Undefined();
  });
}

}  // namespace

void registerConvert(Napi::Env env, Napi::Object exports) { exports.Set("convert", Napi::Function::New(env, Convert)); }

}  // namespace moe::napi
