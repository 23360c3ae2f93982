// convert(device, stream, src, srcType, dst, dstType, numel)
#include "cpu/convert/convert.h"
#include "napi/op.h"
#if MOE_WITH_CUDA
#include "kernels/convert/convert.h"
#endif

namespace moe::napi {

void registerConvert(Napi::Env env, Napi::Object exports) {
  registerOp<ConvertArgs>(
      env, exports, "convert",
      [](ArgReader& r) {
        ConvertArgs a;
        a.src = r.ptr();
        a.srcType = r.dtype();
        a.dst = r.ptr();
        a.dstType = r.dtype();
        a.numel = r.i64();
        return a;
      },
      cpu::convert::convert, MOE_GPU(kernels::convert::convert));
}

}  // namespace moe::napi
