#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/allocator.h"
#include "runtime/cuda_check.h"
#include "runtime/device.h"
#include "runtime/launch.h"

namespace moe::runtime {

void throwCuda(cudaError_t err, const char* what) {
  (void)cudaGetLastError();
  std::string msg = std::string(what) + " failed: " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  if (err == cudaErrorMemoryAllocation) fail("E_OOM", msg);
  if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) fail("E_NO_CUDA", msg);
  fail("E_CUDA", msg);
}

namespace {

// Workspace memory, held by its stream's arena and by every graph that captured work using it;
// returned to the allocator when the last holder lets go.
struct WorkspaceBlock {
  CachingAllocator* allocator;
  void* ptr;
  size_t size;
  std::vector<cudaStream_t> usedOn;  // streams a capturing graph was launched on
  WorkspaceBlock(CachingAllocator* a, void* p, size_t n) : allocator(a), ptr(p), size(n) {}
  // one owner of the memory: a copy would release it twice
  WorkspaceBlock(const WorkspaceBlock&) = delete;
  WorkspaceBlock& operator=(const WorkspaceBlock&) = delete;
  ~WorkspaceBlock() {
    try {
      allocator->release(ptr, usedOn);
    } catch (...) {
      // teardown after the context is gone: nothing to return the memory to
    }
  }
};

class Arena final : public kernels::Workspace {
 public:
  Arena(CachingAllocator* allocator, cudaStream_t stream) : allocator_(allocator), stream_(stream) {}

  void* get(size_t bytes) override {
    if (bytes == 0) return nullptr;
    if (!block_ || block_->size < bytes) {
      // geometric growth: a few sizes settle after warm-up; the old block goes back to the
      // allocator ordered on this stream (graphs that captured it keep their own reference)
      size_t size = block_ ? std::max(bytes, block_->size * 2) : std::max<size_t>(bytes, size_t(1) << 20);
      void* p = allocator_->allocate(size, stream_);
      block_ = std::make_shared<WorkspaceBlock>(allocator_, p, size);
    }
    if (capturing_) captured_.insert(block_);
    return block_->ptr;
  }

  void beginCapture() {
    capturing_ = true;
    captured_.clear();
  }
  std::set<std::shared_ptr<WorkspaceBlock>> endCapture() {
    capturing_ = false;
    return std::move(captured_);
  }

 private:
  CachingAllocator* allocator_;
  cudaStream_t stream_;
  std::shared_ptr<WorkspaceBlock> block_;
  bool capturing_ = false;
  std::set<std::shared_ptr<WorkspaceBlock>> captured_;
};

struct GraphRecord {
  std::set<std::shared_ptr<WorkspaceBlock>> workspace;
  std::set<cudaStream_t> launchedOn;
};

struct DeviceState {
  std::unique_ptr<CachingAllocator> allocator;
  cudaStream_t defaultStream = nullptr;
  DeviceFacts facts;
  std::unordered_map<cudaStream_t, std::unique_ptr<Arena>> arenas;
  std::unordered_map<cudaGraphExec_t, GraphRecord> graphs;
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
    for (int i = 0; i < n; ++i) {
      DeviceState& st = g_devices[i];
      st.allocator = std::make_unique<CachingAllocator>(i);
      cudaDeviceProp p;
      if (cudaGetDeviceProperties(&p, i) != cudaSuccess) {
        (void)cudaGetLastError();
        continue;  // facts stay zero: deviceFacts() reports the device unusable
      }
      st.facts.index = i;
      st.facts.major = p.major;
      st.facts.minor = p.minor;
      st.facts.multiprocessors = p.multiProcessorCount;
      st.facts.sharedMemoryPerBlockOptin = p.sharedMemPerBlockOptin;
      st.facts.l2CacheBytes = p.l2CacheSize;
      st.facts.hopper = p.major == 9 && p.minor == 0;
    }
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

void noCudaBackend() { fail("E_INTERNAL", "noCudaBackend() called in a CUDA build"); }

int deviceCount() {
  probe();
  return g_count;
}

std::string cudaUnavailableReason() {
  probe();
  return g_reason;
}

BuildInfo buildInfo() {
  BuildInfo b;
  b.cuda = true;
#ifdef MOE_CUDA_ARCHS
  b.cudaArchs = MOE_CUDA_ARCHS;
#endif
  if (cudaRuntimeGetVersion(&b.cudaRuntimeVersion) != cudaSuccess) (void)cudaGetLastError();
  if (cudaDriverGetVersion(&b.driverVersion) != cudaSuccess) (void)cudaGetLastError();
  for (const char* name : {"libnccl.so.2", "libnccl.so"}) {
    if (void* h = dlopen(name, RTLD_LAZY | RTLD_LOCAL)) {
      dlclose(h);
      b.ncclLibrary = name;
      break;
    }
  }
  return b;
}

bool canAccessPeer(int from, int to) {
  state(from);
  state(to);
  if (from == to) return true;
  int ok = 0;
  checkCuda(cudaDeviceCanAccessPeer(&ok, from, to), "cudaDeviceCanAccessPeer");
  return ok != 0;
}

void enablePeerAccess(int device, int peer) {
  state(peer);
  if (device == peer) return;
  setDevice(device);
  const cudaError_t err = cudaDeviceEnablePeerAccess(peer, 0);
  if (err == cudaErrorPeerAccessAlreadyEnabled) {
    (void)cudaGetLastError();
    return;
  }
  checkCuda(err, "cudaDeviceEnablePeerAccess");
}

static_assert(sizeof(cudaIpcMemHandle_t) == kIpcHandleBytes, "CUDA IPC handles are 64 bytes");

void* ipcAlloc(int device, size_t bytes) {
  setDevice(device);
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    fail("E_OOM", "out of device memory on cuda:" + std::to_string(device) + " allocating " + std::to_string(bytes) + " bytes of shared buffers");
  }
  checkCuda(err, "cudaMalloc");
  return p;
}

void ipcFree(int device, void* p) {
  setDevice(device);
  checkCuda(cudaFree(p), "cudaFree");
}

void ipcHandle(int device, void* p, uint8_t out[kIpcHandleBytes]) {
  setDevice(device);
  cudaIpcMemHandle_t h;
  checkCuda(cudaIpcGetMemHandle(&h, p), "cudaIpcGetMemHandle");
  std::memcpy(out, &h, kIpcHandleBytes);
}

void* ipcOpen(int device, const uint8_t handle[kIpcHandleBytes]) {
  setDevice(device);
  cudaIpcMemHandle_t h;
  std::memcpy(&h, handle, kIpcHandleBytes);
  void* p = nullptr;
  checkCuda(cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess), "cudaIpcOpenMemHandle");
  return p;
}

void ipcClose(int device, void* p) {
  setDevice(device);
  checkCuda(cudaIpcCloseMemHandle(p), "cudaIpcCloseMemHandle");
}

void setDevice(int device) {
  state(device);
  int current = -1;
  // cudaGetDevice reads thread state; only a change costs a driver call
  if (cudaGetDevice(&current) == cudaSuccess && current == device) return;
  checkCuda(cudaSetDevice(device), "cudaSetDevice");
}

const DeviceFacts& deviceFacts(int device) {
  const DeviceFacts& f = state(device).facts;
  if (f.multiprocessors <= 0) fail("E_CUDA", "cuda:" + std::to_string(device) + ": its properties could not be read");
  return f;
}

kernels::Workspace& workspace(int device, Stream s) {
  DeviceState& st = state(device);
  std::lock_guard<std::mutex> lock(g_mu);
  std::unique_ptr<Arena>& a = st.arenas[S(s)];
  if (!a) a = std::make_unique<Arena>(st.allocator.get(), S(s));
  return *a;
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
  DeviceState& st = state(device);
  setDevice(device);
  {
    std::lock_guard<std::mutex> lock(g_mu);
    st.arenas.erase(S(s));  // its block is released on s, then retired with the stream's blocks
  }
  // No wait: memory the stream's queued work touches is reused only after an event recorded
  // here, and cudaStreamDestroy lets that work finish.
  st.allocator->retireStream(S(s));
  // Later work on the device's default stream (reads of what the stream wrote, say) is ordered
  // after the destroyed stream's work, as it was when destroying waited.
  cudaEvent_t done;
  checkCuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate");
  cudaError_t err = cudaEventRecord(done, S(s));
  if (err == cudaSuccess) err = cudaStreamWaitEvent(static_cast<cudaStream_t>(defaultStream(device)), done, 0);
  cudaEventDestroy(done);  // released once it completes
  checkCuda(err, "cudaStreamWaitEvent");
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

Arena& arenaOf(int device, Stream s) { return static_cast<Arena&>(workspace(device, s)); }

void beginCapture(int device, Stream s) {
  setDevice(device);
  checkCuda(cudaStreamBeginCapture(S(s), cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  arenaOf(device, s).beginCapture();
}

GraphExec endCapture(int device, Stream s) {
  setDevice(device);
  cudaGraph_t graph = nullptr;
  checkCuda(cudaStreamEndCapture(S(s), &graph), "cudaStreamEndCapture");
  auto captured = arenaOf(device, s).endCapture();
  cudaGraphExec_t exec = nullptr;
  cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  checkCuda(err, "cudaGraphInstantiate");
  std::lock_guard<std::mutex> lock(g_mu);
  state(device).graphs[exec] = GraphRecord{std::move(captured), {S(s)}};
  return exec;
}

void abortCapture(int device, Stream s) {
  setDevice(device);
  cudaGraph_t graph = nullptr;
  cudaError_t err = cudaStreamEndCapture(S(s), &graph);
  if (graph) cudaGraphDestroy(graph);
  if (err != cudaSuccess) (void)cudaGetLastError();
  arenaOf(device, s).endCapture();
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
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = state(device).graphs.find(static_cast<cudaGraphExec_t>(g));
  if (it != state(device).graphs.end()) it->second.launchedOn.insert(S(s));
}

void destroyGraph(int device, GraphExec g) {
  setDevice(device);
  checkCuda(cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(g)), "cudaGraphExecDestroy");
  GraphRecord record;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto& graphs = state(device).graphs;
    auto it = graphs.find(static_cast<cudaGraphExec_t>(g));
    if (it == graphs.end()) return;
    record = std::move(it->second);
    graphs.erase(it);
  }
  // the captured workspace is reused only after the graph's launches on other streams finish
  for (const auto& block : record.workspace)
    for (cudaStream_t t : record.launchedOn) block->usedOn.push_back(t);
}

}  // namespace moe::runtime
