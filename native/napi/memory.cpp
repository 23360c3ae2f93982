// Allocation and copies behind Tensor. Device memory is reported to V8 as external memory
// so that the garbage collector sees the pressure of tensors it has not yet collected.
#include <cstring>

#include "napi/glue.h"
#include "runtime/device.h"
#include "runtime/host_memory.h"

namespace moe::napi {
namespace {

void adjust(Napi::Env env, int64_t bytes) { Napi::MemoryManagement::AdjustExternalMemory(env, bytes); }

// deviceAlloc(device, bytes, stream) -> bigint
Napi::Value DeviceAlloc(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    int64_t bytes = i64(info[1]);
    void* p = runtime::deviceAlloc(i32(info[0]), static_cast<size_t>(bytes), ptr(info[2]));
    adjust(info.Env(), bytes);
    return bigint(info.Env(), p);
  });
}

// deviceFree(device, ptr, bytes, usedOn: bigint[])
Napi::Value DeviceFree(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    std::vector<runtime::Stream> usedOn;
    if (info[3].IsArray()) {
      Napi::Array a = info[3].As<Napi::Array>();
      for (uint32_t i = 0; i < a.Length(); ++i) usedOn.push_back(ptr(a.Get(i)));
    }
    runtime::deviceFree(i32(info[0]), ptr(info[1]), usedOn);
    adjust(info.Env(), -i64(info[2]));
    return info.Env().Undefined();
  });
}

// hostAlloc(bytes, zero) -> bigint
Napi::Value HostAlloc(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    int64_t bytes = i64(info[0]);
    void* p = runtime::hostAlloc(static_cast<size_t>(bytes), info[1].ToBoolean());
    adjust(info.Env(), bytes);
    return bigint(info.Env(), p);
  });
}

// hostFree(ptr, bytes)
Napi::Value HostFree(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    runtime::hostFree(ptr(info[0]));
    adjust(info.Env(), -i64(info[1]));
    return info.Env().Undefined();
  });
}

// hostWrite(dstPtr, src: ArrayBufferView) / hostRead(srcPtr, dst: ArrayBufferView)
Napi::Value HostWrite(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    JsBytes src = jsBytes(info[1]);
    if (src.size) std::memcpy(ptr(info[0]), src.data, src.size);
    return info.Env().Undefined();
  });
}

Napi::Value HostRead(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    JsBytes dst = jsBytes(info[1]);
    if (dst.size) std::memcpy(dst.data, ptr(info[0]), dst.size);
    return info.Env().Undefined();
  });
}

// hostCopy(dst, src, bytes)
Napi::Value HostCopy(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    size_t n = static_cast<size_t>(i64(info[2]));
    if (n) std::memmove(ptr(info[0]), ptr(info[1]), n);
    return info.Env().Undefined();
  });
}

// copyToDevice(device, dstPtr, src: bigint host pointer | ArrayBufferView, bytes, stream).
// Pageable sources are staged by the driver before the call returns, so the source may be
// reused at once.
Napi::Value CopyToDevice(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const void* src = info[2].IsBigInt() ? ptr(info[2]) : jsBytes(info[2]).data;
    runtime::copyAsync(i32(info[0]), ptr(info[1]), src, static_cast<size_t>(i64(info[3])),
                       runtime::CopyKind::HostToDevice, ptr(info[4]));
    return info.Env().Undefined();
  });
}

// copyDeviceToDevice(device, dst, src, bytes, stream)
Napi::Value CopyDeviceToDevice(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    runtime::copyAsync(i32(info[0]), ptr(info[1]), ptr(info[2]), static_cast<size_t>(i64(info[3])),
                       runtime::CopyKind::DeviceToDevice, ptr(info[4]));
    return info.Env().Undefined();
  });
}

// copyPeer(dstDevice, dst, srcDevice, src, bytes, stream)
Napi::Value CopyPeer(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    runtime::copyPeerAsync(i32(info[0]), ptr(info[1]), i32(info[2]), ptr(info[3]), static_cast<size_t>(i64(info[4])),
                           ptr(info[5]));
    return info.Env().Undefined();
  });
}

// copyToHostAsync(device, dst: bigint | ArrayBufferView, src, bytes, stream) -> Promise<void>.
// The copy and the wait run on a worker thread: the event loop never blocks on the GPU.
Napi::Value CopyToHostAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    int device = i32(info[0]);
    void* dst = info[1].IsBigInt() ? ptr(info[1]) : jsBytes(info[1]).data;
    const void* src = ptr(info[2]);
    size_t bytes = static_cast<size_t>(i64(info[3]));
    runtime::Stream s = ptr(info[4]);
    return runAsync(
        info.Env(),
        [=] {
          runtime::copyAsync(device, dst, src, bytes, runtime::CopyKind::DeviceToHost, s);
          runtime::streamSynchronize(device, s);
        },
        {info[1]});
  });
}

// memset(device, ptr, value, bytes, stream)
Napi::Value Memset(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    runtime::memsetAsync(i32(info[0]), ptr(info[1]), i32(info[2]), static_cast<size_t>(i64(info[3])), ptr(info[4]));
    return info.Env().Undefined();
  });
}

// ipcAlloc(device, bytes) -> bigint; ipcFree(device, ptr)
Napi::Value IpcAlloc(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int64_t bytes = i64(info[1]);
    void* p = runtime::ipcAlloc(i32(info[0]), static_cast<size_t>(bytes));
    adjust(info.Env(), bytes);
    return bigint(info.Env(), p);
  });
}

Napi::Value IpcFree(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    runtime::ipcFree(i32(info[0]), ptr(info[1]));
    adjust(info.Env(), -i64(info[2]));
    return info.Env().Undefined();
  });
}

// ipcHandle(device, ptr) -> Uint8Array(64)
Napi::Value IpcHandle(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    Napi::Uint8Array out = Napi::Uint8Array::New(info.Env(), runtime::kIpcHandleBytes);
    runtime::ipcHandle(i32(info[0]), ptr(info[1]), out.Data());
    return out;
  });
}

// ipcOpen(device, handle: Uint8Array(64)) -> bigint; ipcClose(device, ptr)
Napi::Value IpcOpen(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const JsBytes h = jsBytes(info[1]);
    if (h.size != runtime::kIpcHandleBytes) fail("E_COMM", "a CUDA IPC handle has 64 bytes, got " + std::to_string(h.size));
    return bigint(info.Env(), runtime::ipcOpen(i32(info[0]), static_cast<const uint8_t*>(h.data)));
  });
}

Napi::Value IpcClose(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    runtime::ipcClose(i32(info[0]), ptr(info[1]));
    return info.Env().Undefined();
  });
}

}  // namespace

void registerMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("ipcAlloc", Napi::Function::New(env, IpcAlloc));
  exports.Set("ipcFree", Napi::Function::New(env, IpcFree));
  exports.Set("ipcHandle", Napi::Function::New(env, IpcHandle));
  exports.Set("ipcOpen", Napi::Function::New(env, IpcOpen));
  exports.Set("ipcClose", Napi::Function::New(env, IpcClose));
  exports.Set("deviceAlloc", Napi::Function::New(env, DeviceAlloc));
  exports.Set("deviceFree", Napi::Function::New(env, DeviceFree));
  exports.Set("hostAlloc", Napi::Function::New(env, HostAlloc));
  exports.Set("hostFree", Napi::Function::New(env, HostFree));
  exports.Set("hostWrite", Napi::Function::New(env, HostWrite));
  exports.Set("hostRead", Napi::Function::New(env, HostRead));
  exports.Set("hostCopy", Napi::Function::New(env, HostCopy));
  exports.Set("copyToDevice", Napi::Function::New(env, CopyToDevice));
  exports.Set("copyDeviceToDevice", Napi::Function::New(env, CopyDeviceToDevice));
  exports.Set("copyPeer", Napi::Function::New(env, CopyPeer));
  exports.Set("copyToHostAsync", Napi::Function::New(env, CopyToHostAsync));
  exports.Set("memset", Napi::Function::New(env, Memset));
}

}  // namespace moe::napi
