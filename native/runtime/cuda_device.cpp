#include <cuda_runtime.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/allocator.h"
#include "runtime/cuda_check.h"
#include "runtime/device.h"

namespace moe::runtime {

void throwCuda(cudaError_t err, const char* what) {
  (void)cudaGetLastError();
  std::string msg = std::string(what) + " failed: " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  if (err == cudaErrorMemoryAllocation) fail("E_OOM", msg);
  if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) fail("E_NO_CUDA", msg);
  fail("E_CUDA", msg);
}

namespace {

struct DeviceState {
  std::unique_ptr<CachingAllocator> allocator;
  cudaStream_t defaultStream = nullptr;
};

std::once_flag g_probeOnce;
int g_count = 0;
std::string g_reason;
std::mutex g_mu;
std::vector<DeviceState> g_devices;

void probe() {
  std::call_once(g_probeOnce, [] {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      if (err == cudaErrorInsufficientDriver)
        g_reason = "no NVIDIA driver was found, or it is older than this build's CUDA 13 runtime needs";
      else if (err == cudaErrorNoDevice)
        g_reason = "the driver reports no CUDA device (check CUDA_VISIBLE_DEVICES)";
      else
        g_reason = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorName(err);
      n = 0;
    } else if (n == 0) {
      g_reason = "the driver reports no CUDA device";
    }
    g_count = n;
    g_devices.resize(n);
    for (int i = 0; i < n; ++i) g_devices[i].allocator = std::make_unique<CachingAllocator>(i);
  });
}

DeviceState& state(int device) {
  probe();
  if (device < 0 || device >= g_count)
    fail("E_DEVICE", "cuda:" + std::to_string(device) + " does not exist (" + std::to_string(g_count) + " CUDA devices)");
  return g_devices[device];
}

cudaStream_t S(Stream s) { return static_cast<cudaStream_t>(s); }
cudaEvent_t E(Event e) { return static_cast<cudaEvent_t>(e); }

}  // namespace

bool cudaCompiled() { return true; }

int deviceCount() {
  probe();
  return g_count;
}

std::string cudaUnavailableReason() {
  probe();
  return g_reason;
}

void setDevice(int device) {
  state(device);
  checkCuda(cudaSetDevice(device), "cudaSetDevice");
}

DeviceInfo deviceInfo(int device) {
  state(device);
  cudaDeviceProp p;
  checkCuda(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
  DeviceInfo info;
  info.index = device;
  info.name = p.name;
  info.major = p.major;
  info.minor = p.minor;
  info.multiprocessors = p.multiProcessorCount;
  info.totalMemory = p.totalGlobalMem;
  info.l2CacheBytes = p.l2CacheSize;
  info.sharedMemoryPerBlockOptin = p.sharedMemPerBlockOptin;
  return info;
}

Stream defaultStream(int device) {
  DeviceState& st = state(device);
  std::lock_guard<std::mutex> lock(g_mu);
  if (!st.defaultStream) {
    checkCuda(cudaSetDevice(device), "cudaSetDevice");
    // non-blocking: the legacy NULL stream would serialize with every other stream
    checkCuda(cudaStreamCreateWithFlags(&st.defaultStream, cudaStreamNonBlocking), "cudaStreamCreate");
  }
  return st.defaultStream;
}

Stream createStream(int device) {
  setDevice(device);
  cudaStream_t s;
  checkCuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  state(device).allocator->reviveStream(s);
  return s;
}

void destroyStream(int device, Stream s) {
  setDevice(device);
  // Memory allocated or used on the stream may outlive it: once its work is done, the allocator
  // stops naming it.
  checkCuda(cudaStreamSynchronize(S(s)), "cudaStreamSynchronize");
  state(device).allocator->forgetStream(S(s));
  checkCuda(cudaStreamDestroy(S(s)), "cudaStreamDestroy");
}

void streamSynchronize(int device, Stream s) {
  setDevice(device);
  checkCuda(cudaStreamSynchronize(S(s)), "cudaStreamSynchronize");
}

bool streamQuery(int device, Stream s) {
  setDevice(device);
  cudaError_t err = cudaStreamQuery(S(s));
  if (err == cudaErrorNotReady) { (void)cudaGetLastError(); return false; }
  checkCuda(err, "cudaStreamQuery");
  return true;
}

void streamWaitEvent(int device, Stream s, Event e) {
  setDevice(device);
  checkCuda(cudaStreamWaitEvent(S(s), E(e), 0), "cudaStreamWaitEvent");
}

Event createEvent(int device, bool timing) {
  setDevice(device);
  cudaEvent_t e;
  checkCuda(cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming), "cudaEventCreate");
  return e;
}

void destroyEvent(int device, Event e) {
  setDevice(device);
  checkCuda(cudaEventDestroy(E(e)), "cudaEventDestroy");
}

void recordEvent(int device, Event e, Stream s) {
  setDevice(device);
  checkCuda(cudaEventRecord(E(e), S(s)), "cudaEventRecord");
}

void eventSynchronize(int device, Event e) {
  setDevice(device);
  checkCuda(cudaEventSynchronize(E(e)), "cudaEventSynchronize");
}

bool eventQuery(int device, Event e) {
  setDevice(device);
  cudaError_t err = cudaEventQuery(E(e));
  if (err == cudaErrorNotReady) { (void)cudaGetLastError(); return false; }
  checkCuda(err, "cudaEventQuery");
  return true;
}

float eventElapsedMs(int device, Event start, Event end) {
  setDevice(device);
  float ms = 0;
  checkCuda(cudaEventElapsedTime(&ms, E(start), E(end)), "cudaEventElapsedTime");
  return ms;
}

void* deviceAlloc(int device, size_t bytes, Stream s) { return state(device).allocator->allocate(bytes, S(s)); }

void deviceFree(int device, void* p, const std::vector<Stream>& usedOn) {
  std::vector<cudaStream_t> streams;
  streams.reserve(usedOn.size());
  for (Stream s : usedOn) streams.push_back(S(s));
  state(device).allocator->release(p, streams);
}

MemoryStats memoryStats(int device) { return state(device).allocator->stats(); }

void emptyCache(int device) { state(device).allocator->emptyCache(); }

void setMemoryLimit(int device, size_t bytes) { state(device).allocator->setLimit(bytes); }

void copyAsync(int device, void* dst, const void* src, size_t bytes, CopyKind kind, Stream s) {
  if (bytes == 0) return;
  setDevice(device);
  cudaMemcpyKind k = kind == CopyKind::HostToDevice   ? cudaMemcpyHostToDevice
                     : kind == CopyKind::DeviceToHost ? cudaMemcpyDeviceToHost
                                                      : cudaMemcpyDeviceToDevice;
  checkCuda(cudaMemcpyAsync(dst, src, bytes, k, S(s)), "cudaMemcpyAsync");
}

void copyPeerAsync(int dstDevice, void* dst, int srcDevice, const void* src, size_t bytes, Stream s) {
  if (bytes == 0) return;
  setDevice(srcDevice);
  state(dstDevice);
  checkCuda(cudaMemcpyPeerAsync(dst, dstDevice, src, srcDevice, bytes, S(s)), "cudaMemcpyPeerAsync");
}

void memsetAsync(int device, void* dst, int value, size_t bytes, Stream s) {
  if (bytes == 0) return;
  setDevice(device);
  checkCuda(cudaMemsetAsync(dst, value, bytes, S(s)), "cudaMemsetAsync");
}

void beginCapture(int device, Stream s) {
  setDevice(device);
  checkCuda(cudaStreamBeginCapture(S(s), cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
}

GraphExec endCapture(int device, Stream s) {
  setDevice(device);
  cudaGraph_t graph = nullptr;
  checkCuda(cudaStreamEndCapture(S(s), &graph), "cudaStreamEndCapture");
  cudaGraphExec_t exec = nullptr;
  cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  checkCuda(err, "cudaGraphInstantiate");
  return exec;
}

void abortCapture(int device, Stream s) {
  setDevice(device);
  cudaGraph_t graph = nullptr;
  cudaError_t err = cudaStreamEndCapture(S(s), &graph);
  if (graph) cudaGraphDestroy(graph);
  if (err != cudaSuccess) (void)cudaGetLastError();
}

bool isCapturing(int device, Stream s) {
  setDevice(device);
  cudaStreamCaptureStatus st;
  checkCuda(cudaStreamIsCapturing(S(s), &st), "cudaStreamIsCapturing");
  return st != cudaStreamCaptureStatusNone;
}

void launchGraph(int device, GraphExec g, Stream s) {
  setDevice(device);
  checkCuda(cudaGraphLaunch(static_cast<cudaGraphExec_t>(g), S(s)), "cudaGraphLaunch");
}

void destroyGraph(int device, GraphExec g) {
  setDevice(device);
  checkCuda(cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(g)), "cudaGraphExecDestroy");
}

}  // namespace moe::runtime
