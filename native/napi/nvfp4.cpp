// N-API glue of the nvfp4 family: one registered op per struct of common/nvfp4.h, each taking
// (device, stream, ...fields in struct order); see napi/op.h.
#include "common/nvfp4.h"
#include "cpu/nvfp4/nvfp4.h"
#include "napi/op.h"
#if MOE_WITH_CUDA
#include "kernels/nvfp4/nvfp4.h"
#endif

namespace moe::napi {

void registerNvfp4(Napi::Env env, Napi::Object exports) {
  registerOp<AmaxArgs>(
      env, exports, "nvfp4Amax",
      [](ArgReader& r) {
        AmaxArgs a;
        a.x = r.ptr();
        a.xType = r.dtype();
        a.numel = r.i64();
        a.amax = r.ptr<float>();
        return a;
      },
      cpu::nvfp4::amax, MOE_GPU(kernels::nvfp4::amax));

  registerOp<GlobalScaleArgs>(
      env, exports, "nvfp4GlobalScaleFromAmax",
      [](ArgReader& r) {
        GlobalScaleArgs a;
        a.amax = r.ptr<const float>();
        a.globalScale = r.ptr<float>();
        return a;
      },
      cpu::nvfp4::globalScaleFromAmax, MOE_GPU(kernels::nvfp4::globalScaleFromAmax));

  registerOp<QuantizeArgs>(
      env, exports, "nvfp4Quantize",
      [](ArgReader& r) {
        QuantizeArgs a;
        a.x = r.ptr();
        a.xType = r.dtype();
        a.rows = r.i64();
        a.K = r.i64();
        a.globalScale = r.ptr<const float>();
        a.data = r.ptr<uint8_t>();
        a.scales = r.ptr<uint8_t>();
        a.globalScaleOut = r.ptr<float>();
        return a;
      },
      cpu::nvfp4::quantize, MOE_GPU(kernels::nvfp4::quantize));

  registerOp<DequantizeArgs>(
      env, exports, "nvfp4Dequantize",
      [](ArgReader& r) {
        DequantizeArgs a;
        a.data = r.ptr<const uint8_t>();
        a.scales = r.ptr<const uint8_t>();
        a.globalScale = r.ptr<const float>();
        a.rows = r.i64();
        a.K = r.i64();
        a.out = r.ptr();
        a.outType = r.dtype();
        return a;
      },
      cpu::nvfp4::dequantize, MOE_GPU(kernels::nvfp4::dequantize));

  registerOp<SwizzleScalesArgs>(
      env, exports, "nvfp4SwizzleScales",
      [](ArgReader& r) {
        SwizzleScalesArgs a;
        a.scales = r.ptr<const uint8_t>();
        a.rows = r.i64();
        a.K = r.i64();
        a.swizzled = r.ptr<uint8_t>();
        return a;
      },
      cpu::nvfp4::swizzleScales, MOE_GPU(kernels::nvfp4::swizzleScales));

  registerOp<UnswizzleScalesArgs>(
      env, exports, "nvfp4UnswizzleScales",
      [](ArgReader& r) {
        UnswizzleScalesArgs a;
        a.swizzled = r.ptr<const uint8_t>();
        a.rows = r.i64();
        a.K = r.i64();
        a.scales = r.ptr<uint8_t>();
        return a;
      },
      cpu::nvfp4::unswizzleScales, MOE_GPU(kernels::nvfp4::unswizzleScales));

  registerOp<GemmArgs>(
      env, exports, "nvfp4Gemm",
      [](ArgReader& r) {
        GemmArgs a;
        a.a = r.ptr();
        a.aType = r.dtype();
        a.aScales = r.ptr<const uint8_t>();
        a.aGlobalScale = r.ptr<const float>();
        a.wData = r.ptr<const uint8_t>();
        a.wScales = r.ptr<const uint8_t>();
        a.wGlobalScale = r.ptr<const float>();
        a.bias = r.ptr();
        a.biasType = r.dtype();
        a.out = r.ptr();
        a.outType = r.dtype();
        a.M = r.i64();
        a.N = r.i64();
        a.K = r.i64();
        a.alpha = r.f32();
        a.portable = r.flag();
        return a;
      },
      cpu::nvfp4::gemm, MOE_GPU(kernels::nvfp4::gemm));

  registerOp<GroupedGemmArgs>(
      env, exports, "nvfp4GroupedGemm",
      [](ArgReader& r) {
        GroupedGemmArgs a;
        a.x = r.ptr();
        a.xType = r.dtype();
        a.xScales = r.ptr<const uint8_t>();
        a.xGlobalScale = r.ptr<const float>();
        a.wData = r.ptr<const uint8_t>();
        a.wScales = r.ptr<const uint8_t>();
        a.wGlobalScale = r.ptr<const float>();
        a.counts = r.ptr<const int32_t>();
        a.offsets = r.ptr<const int32_t>();
        a.out = r.ptr();
        a.outType = r.dtype();
        a.outScales = r.ptr<uint8_t>();
        a.outGlobalScale = r.ptr<const float>();
        a.outGlobalScaleOut = r.ptr<float>();
        a.E = r.i64();
        a.rows = r.i64();
        a.N = r.i64();
        a.K = r.i64();
        a.maxRowsPerExpert = r.i64();
        a.pairs = r.i64();
        a.epilogue = static_cast<GroupedEpilogue>(r.i32());
        a.xRows = r.ptr<const int32_t>();
        a.gatherK = r.i32();
        a.xTokens = r.i64();
        a.portable = r.flag();
        return a;
      },
      cpu::nvfp4::groupedGemm, MOE_GPU(kernels::nvfp4::groupedGemm));
}

}  // namespace moe::napi
