// routerLogits(device, stream, x, weight, out, tokens, experts, hidden)
// moeSwiglu(device, stream, x, xType, out, outType, rows, inner)
// moeAdd(device, stream, a, aType, b, bType, out, outType, numel)
#include "common/moe.h"
#include "cpu/moe/moe.h"
#include "napi/op.h"
#if MOE_WITH_CUDA
#include "kernels/moe/moe.h"
#endif

namespace moe::napi {

void registerMoe(Napi::Env env, Napi::Object exports) {
  registerOp<RouterLogitsArgs>(
      env, exports, "routerLogits",
      [](ArgReader& r) {
        RouterLogitsArgs a;
        a.x = r.ptr<const uint16_t>();
        a.weight = r.ptr<const uint16_t>();
        a.out = r.ptr<float>();
        a.tokens = r.i64();
        a.experts = r.i32();
        a.hidden = r.i64();
        return a;
      },
      cpu::moe_family::routerLogits, MOE_GPU(kernels::moe_family::routerLogits));

  registerOp<SwigluArgs>(
      env, exports, "moeSwiglu",
      [](ArgReader& r) {
        SwigluArgs a;
        a.x = r.ptr();
        a.xType = r.dtype();
        a.out = r.ptr();
        a.outType = r.dtype();
        a.rows = r.i64();
        a.inner = r.i64();
        return a;
      },
      cpu::moe_family::swiglu, MOE_GPU(kernels::moe_family::swiglu));

  registerOp<AddArgs>(
      env, exports, "moeAdd",
      [](ArgReader& r) {
        AddArgs a;
        a.a = r.ptr();
        a.aType = r.dtype();
        a.b = r.ptr();
        a.bType = r.dtype();
        a.out = r.ptr();
        a.outType = r.dtype();
        a.numel = r.i64();
        return a;
      },
      cpu::moe_family::add, MOE_GPU(kernels::moe_family::add));
}

}  // namespace moe::napi
