// What the N-API glue needs from CUDA, behind opaque handles so that the glue compiles
// without CUDA headers. cuda_device.cpp implements it; no_cuda.cpp answers E_NO_CUDA.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/device_facts.h"

namespace moe::runtime {

using Stream = void*;  // cudaStream_t
using Event = void*;   // cudaEvent_t
using GraphExec = void*;  // cudaGraphExec_t

struct DeviceInfo {
  int index = 0;
  std::string name;
  int major = 0, minor = 0;
  int multiprocessors = 0;
  size_t totalMemory = 0;
  size_t l2CacheBytes = 0;
  size_t sharedMemoryPerBlockOptin = 0;
};

struct MemoryStats {
  size_t allocatedBytes = 0;      // held by live tensors (after size rounding)
  size_t reservedBytes = 0;       // obtained from the driver: live plus cached
  size_t peakAllocatedBytes = 0;
  uint64_t allocations = 0;
  uint64_t frees = 0;
  uint64_t driverAllocations = 0;  // cudaMalloc calls made
};

// Throws E_NO_CUDA saying why: a CPU-only build was asked to run on a GPU.
[[noreturn]] void noCudaBackend();
// What this build and machine offer, for reporting (buildInfo / `moe-kernels info`).
struct BuildInfo {
  bool cuda = false;             // compiled with the CUDA backend
  std::string cudaArchs;         // the targets it was compiled for, e.g. "90a;80"
  int cudaRuntimeVersion = 0;    // e.g. 13000; 0 without CUDA
  int driverVersion = 0;         // the CUDA version the driver supports; 0 without a driver
  std::string ncclLibrary;       // the NCCL library found by dlopen, or empty
};
BuildInfo buildInfo();
// Whether kernels on device `from` can access memory of device `to` directly (NVLink or PCIe P2P).
bool canAccessPeer(int from, int to);
// Lets kernels on `device` read and write memory of `peer` (idempotent; a no-op for the same device).
void enablePeerAccess(int device, int peer);

// Device memory that other processes map (CUDA IPC): a cudaMalloc of its own, outside the
// caching allocator, so that it is never handed to another tensor while a peer may write it.
constexpr size_t kIpcHandleBytes = 64;
void* ipcAlloc(int device, size_t bytes);
void ipcFree(int device, void* p);
// The handle of an ipcAlloc block, and another process's block mapped into this one (peer
// access enabled on demand); ipcClose unmaps it.
void ipcHandle(int device, void* p, uint8_t out[kIpcHandleBytes]);
void* ipcOpen(int device, const uint8_t handle[kIpcHandleBytes]);
void ipcClose(int device, void* p);

// Number of CUDA devices; 0 when CUDA is not compiled in, there is no driver or no GPU.
int deviceCount();
// Why deviceCount() is 0, in words a user can act on; empty when devices exist.
std::string cudaUnavailableReason();
DeviceInfo deviceInfo(int device);
// Read once per device and kept: what launchers base their choices on.
const DeviceFacts& deviceFacts(int device);
// Makes `device` current on this thread (a no-op when it already is).
void setDevice(int device);

Stream defaultStream(int device);
Stream createStream(int device);
// Returns at once: the stream's queued work still runs, and the memory it allocated or used
// becomes reusable on other streams once that work has finished.
void destroyStream(int device, Stream s);
void streamSynchronize(int device, Stream s);  // blocks: call from a worker thread
bool streamQuery(int device, Stream s);
void streamWaitEvent(int device, Stream s, Event e);

Event createEvent(int device, bool timing);
void destroyEvent(int device, Event e);
void recordEvent(int device, Event e, Stream s);
void eventSynchronize(int device, Event e);  // blocks: call from a worker thread
bool eventQuery(int device, Event e);
float eventElapsedMs(int device, Event start, Event end);

// Stream-ordered caching allocator. Memory freed on stream s is reused at once by later
// allocations on s; `usedOn` lists other streams that touched it, and the block is reused
// only after the work queued on them so far has finished.
void* deviceAlloc(int device, size_t bytes, Stream s);
void deviceFree(int device, void* p, const std::vector<Stream>& usedOn);
MemoryStats memoryStats(int device);
void emptyCache(int device);
// Caps the bytes this process reserves on a device (0: no cap, the default). An allocation that
// would pass it fails with E_OOM after the cache is returned, like a full device.
void setMemoryLimit(int device, size_t bytes);

enum class CopyKind { HostToDevice, DeviceToHost, DeviceToDevice };
void copyAsync(int device, void* dst, const void* src, size_t bytes, CopyKind kind, Stream s);
void copyPeerAsync(int dstDevice, void* dst, int srcDevice, const void* src, size_t bytes, Stream s);
void memsetAsync(int device, void* dst, int value, size_t bytes, Stream s);

void beginCapture(int device, Stream s);
GraphExec endCapture(int device, Stream s);  // instantiates; throws E_CUDA when capture broke
void abortCapture(int device, Stream s);     // ends a capture whose callback threw, discarding it
bool isCapturing(int device, Stream s);
void launchGraph(int device, GraphExec g, Stream s);
// Workspace memory the graph captured is released once the graph's launches have finished.
void destroyGraph(int device, GraphExec g);

}  // namespace moe::runtime
