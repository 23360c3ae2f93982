// Every ep op starts with the shape: (ranks, rank, experts, k, hidden, maxTokens, payload).
// epDispatchSend(device, stream, ...shape, x, ids, weights, tokens, dataDst, countDst, epoch, sync, sms, combineIndex, errors)
// epDispatchRecv(device, stream, ...shape, regions, counts, epoch, timeoutNs, status, recvCounts, align, maxPerExpert,
//                rows, tokensOut, layoutCounts, offsets, sourceIndex, rowIndex, usedRows, dropped, errors)
// epCombineSend(device, stream, ...shape, y, rows, rowIndex, recvCounts, dataDst, countDst, epoch, sync, sms)
// epCombineRecv(device, stream, ...shape, regions, counts, epoch, timeoutNs, status, combineIndex, weights, tokens, out, outType)
//
// On the CPU the host transport moves the regions between ranks; on a device the destination
// tables hold addresses the device writes (the nvlink transport).
#include "common/ep.h"
#include "cpu/ep/ep.h"
#include "napi/op.h"
#if MOE_WITH_CUDA
#include "kernels/ep/ep.h"
#endif

namespace moe::napi {
namespace {

EpShape readShape(ArgReader& r) {
  EpShape s;
  s.ranks = r.i32();
  s.rank = r.i32();
  s.experts = r.i32();
  s.k = r.i32();
  s.hidden = r.i64();
  s.maxTokens = r.i64();
  s.payload = r.i32();
  return s;
}

}  // namespace

void registerEp(Napi::Env env, Napi::Object exports) {
  registerOp<EpDispatchSendArgs>(
      env, exports, "epDispatchSend",
      [](ArgReader& r) {
        EpDispatchSendArgs a;
        a.shape = readShape(r);
        a.x = r.ptr<const uint16_t>();
        a.ids = r.ptr<const int32_t>();
        a.weights = r.ptr<const float>();
        a.tokens = r.i64();
        a.dataDst = r.ptr<const uint64_t>();
        a.countDst = r.ptr<const uint64_t>();
        a.epoch = r.ptr<const uint32_t>();
        a.sync = r.ptr<uint32_t>();
        a.sms = r.i32();
        a.combineIndex = r.ptr<int32_t>();
        a.errors = r.ptr<int32_t>();
        return a;
      },
      cpu::ep::dispatchSend, MOE_GPU(kernels::ep::dispatchSend));

  registerOp<EpDispatchRecvArgs>(
      env, exports, "epDispatchRecv",
      [](ArgReader& r) {
        EpDispatchRecvArgs a;
        a.shape = readShape(r);
        a.regions = r.ptr<const uint8_t>();
        a.counts = r.ptr<const uint64_t>();
        a.epoch = r.ptr<uint32_t>();
        a.timeoutNs = r.i64();
        a.status = r.ptr<int32_t>();
        a.recvCounts = r.ptr<uint32_t>();
        a.align = r.i32();
        a.maxPerExpert = r.i32();
        a.rows = r.i64();
        a.tokensOut = r.ptr<uint16_t>();
        a.layoutCounts = r.ptr<int32_t>();
        a.offsets = r.ptr<int32_t>();
        a.sourceIndex = r.ptr<int32_t>();
        a.rowIndex = r.ptr<int32_t>();
        a.usedRows = r.ptr<int32_t>();
        a.dropped = r.ptr<int32_t>();
        a.errors = r.ptr<int32_t>();
        return a;
      },
      cpu::ep::dispatchRecv, MOE_GPU(kernels::ep::dispatchRecv));

  registerOp<EpCombineSendArgs>(
      env, exports, "epCombineSend",
      [](ArgReader& r) {
        EpCombineSendArgs a;
        a.shape = readShape(r);
        a.y = r.ptr<const uint16_t>();
        a.rows = r.i64();
        a.rowIndex = r.ptr<const int32_t>();
        a.recvCounts = r.ptr<const uint32_t>();
        a.dataDst = r.ptr<const uint64_t>();
        a.countDst = r.ptr<const uint64_t>();
        a.epoch = r.ptr<const uint32_t>();
        a.sync = r.ptr<uint32_t>();
        a.sms = r.i32();
        return a;
      },
      cpu::ep::combineSend, MOE_GPU(kernels::ep::combineSend));

  registerOp<EpCombineRecvArgs>(
      env, exports, "epCombineRecv",
      [](ArgReader& r) {
        EpCombineRecvArgs a;
        a.shape = readShape(r);
        a.regions = r.ptr<const uint8_t>();
        a.counts = r.ptr<const uint64_t>();
        a.epoch = r.ptr<const uint32_t>();
        a.timeoutNs = r.i64();
        a.status = r.ptr<int32_t>();
        a.combineIndex = r.ptr<const int32_t>();
        a.weights = r.ptr<const float>();
        a.tokens = r.i64();
        a.out = r.ptr();
        a.outType = r.dtype();
        return a;
      },
      cpu::ep::combineRecv, MOE_GPU(kernels::ep::combineRecv));
}

}  // namespace moe::napi
