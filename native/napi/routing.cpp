// routeTopK(device, stream, logits, logitsType, bias, ids, weights, tokens, experts, k, scoring,
//           groups, topkGroups, renormalize, scale)
// expertLayout(device, stream, ids, tokens, k, experts, align, maxPerExpert, rows, counts, offsets,
//              sourceIndex, rowIndex, usedRows, dropped, errors)
// permute(device, stream, x, type, sourceIndex, usedRows, out, tokens, k, hidden, rows)
// unpermute(device, stream, y, yType, rowIndex, weights, out, outType, tokens, k, hidden, rows)
#include "common/routing.h"
#include "cpu/routing/routing.h"
#include "napi/op.h"
#if MOE_WITH_CUDA
#include "kernels/routing/routing.h"
#endif

namespace moe::napi {

void registerRouting(Napi::Env env, Napi::Object exports) {
  registerOp<RouteTopKArgs>(
      env, exports, "routeTopK",
      [](ArgReader& r) {
        RouteTopKArgs a;
        a.logits = r.ptr();
        a.logitsType = r.dtype();
        a.bias = r.ptr<const float>();
        a.ids = r.ptr<int32_t>();
        a.weights = r.ptr<float>();
        a.tokens = r.i64();
        a.experts = r.i32();
        a.k = r.i32();
        a.scoring = r.i32();
        a.groups = r.i32();
        a.topkGroups = r.i32();
        a.renormalize = r.flag();
        a.scale = r.f32();
        return a;
      },
      cpu::routing::routeTopK, MOE_GPU(kernels::routing::routeTopK));

  registerOp<ExpertLayoutArgs>(
      env, exports, "expertLayout",
      [](ArgReader& r) {
        ExpertLayoutArgs a;
        a.ids = r.ptr<const int32_t>();
        a.tokens = r.i64();
        a.k = r.i32();
        a.experts = r.i32();
        a.align = r.i32();
        a.maxPerExpert = r.i32();
        a.rows = r.i64();
        a.counts = r.ptr<int32_t>();
        a.offsets = r.ptr<int32_t>();
        a.sourceIndex = r.ptr<int32_t>();
        a.rowIndex = r.ptr<int32_t>();
        a.usedRows = r.ptr<int32_t>();
        a.dropped = r.ptr<int32_t>();
        a.errors = r.ptr<int32_t>();
        return a;
      },
      cpu::routing::expertLayout, MOE_GPU(kernels::routing::expertLayout));

  registerOp<PermuteArgs>(
      env, exports, "permute",
      [](ArgReader& r) {
        PermuteArgs a;
        a.x = r.ptr();
        a.type = r.dtype();
        a.sourceIndex = r.ptr<const int32_t>();
        a.usedRows = r.ptr<const int32_t>();
        a.out = r.ptr();
        a.tokens = r.i64();
        a.k = r.i32();
        a.hidden = r.i64();
        a.rows = r.i64();
        return a;
      },
      cpu::routing::permute, MOE_GPU(kernels::routing::permute));

  registerOp<PermuteQuantizeArgs>(
      env, exports, "permuteQuantize",
      [](ArgReader& r) {
        PermuteQuantizeArgs a;
        a.x = r.ptr();
        a.type = r.dtype();
        a.sourceIndex = r.ptr<const int32_t>();
        a.usedRows = r.ptr<const int32_t>();
        a.globalScale = r.ptr<const float>();
        a.data = r.ptr<uint8_t>();
        a.scales = r.ptr<uint8_t>();
        a.globalScaleOut = r.ptr<float>();
        a.tokens = r.i64();
        a.k = r.i32();
        a.hidden = r.i64();
        a.rows = r.i64();
        return a;
      },
      cpu::routing::permuteQuantize, MOE_GPU(kernels::routing::permuteQuantize));

  registerOp<UnpermuteArgs>(
      env, exports, "unpermute",
      [](ArgReader& r) {
        UnpermuteArgs a;
        a.y = r.ptr();
        a.yType = r.dtype();
        a.rowIndex = r.ptr<const int32_t>();
        a.weights = r.ptr<const float>();
        a.out = r.ptr();
        a.outType = r.dtype();
        a.tokens = r.i64();
        a.k = r.i32();
        a.hidden = r.i64();
        a.rows = r.i64();
        return a;
      },
      cpu::routing::unpermute, MOE_GPU(kernels::routing::unpermute));
}

}  // namespace moe::napi
