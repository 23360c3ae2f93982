// Every ep op starts with the shape: (ranks, rank, experts, k, hidden, maxTokens, payload, combine).
// epDispatchSend(device, stream, ...shape, x, ids, weights, tokens, dataDst, countDst, epoch, sync, sms, combineIndex, errors,
//                sideStream, forkEvent, staging, sendCounts, chunkDone)
// epDispatchRecv(device, stream, ...shape, regions, counts, epoch, timeoutNs, status, recvCounts, align, maxPerExpert,
//                rows, gather, tokensOut, layoutCounts, offsets, sourceIndex, rowIndex, usedRows, dropped, errors, sideStream, joinEvent)
// epDispatch(device, stream, ...shape, <epDispatchSend's arguments after the shape>, <epDispatchRecv's>, recvSync)
// epCombineSend(device, stream, ...shape, y, rows, regions, rowIndex, recvCounts, dataDst, countDst, epoch, sync, sms,
//               sideStream, forkEvent, chunkDone)
// epCombineRecv(device, stream, ...shape, regions, counts, epoch, timeoutNs, status, combineIndex, weights, tokens, out, outType,
//               sideStream, joinEvent, ownY, ownRows, ownRowIndex)
//
// On the CPU the host transport moves the regions between ranks; on a device the destination
// tables hold addresses the device writes (the nvlink transport), or this rank's staging, which
// the nccl transport's communicator (ncclCreate, ncclExchange, ...) moves to the peers.
#include "common/ep.h"
#include "cpu/ep/ep.h"
#include "napi/op.h"
#include "runtime/nccl.h"
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
  s.combine = r.i32();
  return s;
}

// The send's and the receive's arguments after the shape (the fused op reads both after one shape).
EpDispatchSendArgs readDispatchSend(ArgReader& r, const EpShape& shape) {
  EpDispatchSendArgs a;
  a.shape = shape;
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
  a.sideStream = r.ptr();
  a.forkEvent = r.ptr();
  a.staging = r.ptr<uint8_t>();
  a.sendCounts = r.ptr<uint32_t>();
  a.chunkDone = r.ptr<uint32_t>();
  return a;
}

EpDispatchRecvArgs readDispatchRecv(ArgReader& r, const EpShape& shape) {
  EpDispatchRecvArgs a;
  a.shape = shape;
  a.regions = r.ptr<const uint8_t>();
  a.counts = r.ptr<const uint64_t>();
  a.epoch = r.ptr<uint32_t>();
  a.timeoutNs = r.i64();
  a.status = r.ptr<int32_t>();
  a.recvCounts = r.ptr<uint32_t>();
  a.align = r.i32();
  a.maxPerExpert = r.i32();
  a.rows = r.i64();
  a.gather = r.flag();
  a.tokensOut = r.ptr<uint16_t>();
  a.layoutCounts = r.ptr<int32_t>();
  a.offsets = r.ptr<int32_t>();
  a.sourceIndex = r.ptr<int32_t>();
  a.rowIndex = r.ptr<int32_t>();
  a.usedRows = r.ptr<int32_t>();
  a.dropped = r.ptr<int32_t>();
  a.errors = r.ptr<int32_t>();
  a.sideStream = r.ptr();
  a.joinEvent = r.ptr();
  a.ownRows = r.ptr<const uint16_t>();
  return a;
}

namespace nccl = runtime::nccl;

nccl::Plan readPlan(const Napi::CallbackInfo& info, size_t at) {
  nccl::Plan p;
  p.send = ptr(info[at]);
  p.sendCounts = ptr(info[at + 1]);
  p.recv = ptr(info[at + 2]);
  p.recvCounts = ptr(info[at + 3]);
  const int64_t bytes = i64(info[at + 4]);
  if (bytes < 1) fail("E_ARGUMENT", "nccl: a region has at least one byte, got " + std::to_string(bytes));
  p.regionBytes = static_cast<size_t>(bytes);
  if (!p.send || !p.sendCounts || !p.recv || !p.recvCounts) fail("E_ARGUMENT", "nccl: null buffer pointer");
  return p;
}

// ncclLoad() -> "libnccl.so.2 (2.x.y)"; E_COMM naming the library when it cannot be loaded
Napi::Value NcclLoad(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value { return Napi::String::New(info.Env(), nccl::load()); });
}

// ncclUniqueId() -> Uint8Array(128)
Napi::Value NcclUniqueId(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    Napi::Uint8Array out = Napi::Uint8Array::New(info.Env(), nccl::kUniqueIdBytes);
    nccl::uniqueId(out.Data());
    return out;
  });
}

// ncclReserve() -> handle
Napi::Value NcclReserve(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value { return Napi::Number::New(info.Env(), nccl::reserve()); });
}

// ncclCreate(handle, device, ranks, rank, id: Uint8Array(128), ...dispatchPlan(5), ...combinePlan(5), stream): starts it
Napi::Value NcclCreate(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int handle = i32(info[0]), device = i32(info[1]), ranks = i32(info[2]), rank = i32(info[3]);
    const JsBytes id = jsBytes(info[4]);
    if (id.size != nccl::kUniqueIdBytes) fail("E_COMM", "an NCCL unique id has 128 bytes, got " + std::to_string(id.size));
    if (ranks < 1 || rank < 0 || rank >= ranks) fail("E_ARGUMENT", "nccl: rank " + std::to_string(rank) + " of " + std::to_string(ranks));
    const nccl::Plan dispatch = readPlan(info, 5), combine = readPlan(info, 10);
    nccl::start(handle, device, ranks, rank, static_cast<const uint8_t*>(id.data), dispatch, combine, ptr(info[15]));
    return info.Env().Undefined();
  });
}

// ncclCreated(handle) -> true once made, false while being made; throws why it failed
Napi::Value NcclCreated(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value { return Napi::Boolean::New(info.Env(), nccl::created(i32(info[0]))); });
}

// ncclExchange(handle, plan: 0 dispatch | 1 combine, stream)
Napi::Value NcclExchange(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    nccl::exchange(i32(info[0]), i32(info[1]), ptr(info[2]));
    return info.Env().Undefined();
  });
}

// ncclAsyncError(handle) -> "" or the error
Napi::Value NcclAsyncError(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value { return Napi::String::New(info.Env(), nccl::asyncError(i32(info[0]))); });
}

Napi::Value NcclAbort(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    nccl::abort(i32(info[0]));
    return info.Env().Undefined();
  });
}

Napi::Value NcclDestroy(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    nccl::destroy(i32(info[0]));
    return info.Env().Undefined();
  });
}

}  // namespace

void registerEp(Napi::Env env, Napi::Object exports) {
  registerOp<EpDispatchSendArgs>(
      env, exports, "epDispatchSend",
      [](ArgReader& r) {
        const EpShape shape = readShape(r);
        return readDispatchSend(r, shape);
      },
      cpu::ep::dispatchSend, MOE_GPU(kernels::ep::dispatchSend));

  registerOp<EpDispatchRecvArgs>(
      env, exports, "epDispatchRecv",
      [](ArgReader& r) {
        const EpShape shape = readShape(r);
        return readDispatchRecv(r, shape);
      },
      cpu::ep::dispatchRecv, MOE_GPU(kernels::ep::dispatchRecv));

  registerOp<EpDispatchArgs>(
      env, exports, "epDispatch",
      [](ArgReader& r) {
        EpDispatchArgs a;
        const EpShape shape = readShape(r);
        a.send = readDispatchSend(r, shape);
        a.recv = readDispatchRecv(r, shape);
        a.recvSync = r.ptr<uint32_t>();
        return a;
      },
      cpu::ep::dispatch, MOE_GPU(kernels::ep::dispatch));

  registerOp<EpCombineSendArgs>(
      env, exports, "epCombineSend",
      [](ArgReader& r) {
        EpCombineSendArgs a;
        a.shape = readShape(r);
        a.y = r.ptr<const uint16_t>();
        a.rows = r.i64();
        a.regions = r.ptr<const uint8_t>();
        a.rowIndex = r.ptr<const int32_t>();
        a.recvCounts = r.ptr<const uint32_t>();
        a.dataDst = r.ptr<const uint64_t>();
        a.countDst = r.ptr<const uint64_t>();
        a.epoch = r.ptr<const uint32_t>();
        a.sync = r.ptr<uint32_t>();
        a.sms = r.i32();
        a.sideStream = r.ptr();
        a.forkEvent = r.ptr();
        a.chunkDone = r.ptr<uint32_t>();
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
        a.sideStream = r.ptr();
        a.joinEvent = r.ptr();
        a.ownY = r.ptr<const uint16_t>();
        a.ownRows = r.i64();
        a.ownRowIndex = r.ptr<const int32_t>();
        return a;
      },
      cpu::ep::combineRecv, MOE_GPU(kernels::ep::combineRecv));

  // the nccl transport's communicator (runtime/nccl.h)
  exports.Set("ncclLoad", Napi::Function::New(env, NcclLoad));
  exports.Set("ncclUniqueId", Napi::Function::New(env, NcclUniqueId));
  exports.Set("ncclReserve", Napi::Function::New(env, NcclReserve));
  exports.Set("ncclCreate", Napi::Function::New(env, NcclCreate));
  exports.Set("ncclCreated", Napi::Function::New(env, NcclCreated));
  exports.Set("ncclExchange", Napi::Function::New(env, NcclExchange));
  exports.Set("ncclAsyncError", Napi::Function::New(env, NcclAsyncError));
  exports.Set("ncclAbort", Napi::Function::New(env, NcclAbort));
  exports.Set("ncclDestroy", Napi::Function::New(env, NcclDestroy));
}

}  // namespace moe::napi
