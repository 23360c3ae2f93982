// The runtime of a CPU-only build: no device exists, and every device call says why.
#include <string>

#include "runtime/device.h"
#include "runtime/errors.h"

namespace moe::runtime {

void noCudaBackend() {
  fail("E_NO_CUDA", "this build of @moe/kernels has no CUDA backend (nvcc was not found when it was built); "
                    "rebuild with nvcc on PATH or CUDACXX set: npm rebuild @moe/kernels --build-from-source");
}

namespace {
[[noreturn]] void noCuda() { noCudaBackend(); }
}  // namespace

BuildInfo buildInfo() { return BuildInfo{}; }
bool canAccessPeer(int, int) { noCuda(); }
void enablePeerAccess(int, int) { noCuda(); }
void* ipcAlloc(int, size_t) { noCuda(); }
void ipcFree(int, void*) { noCuda(); }
void ipcHandle(int, void*, uint8_t*) { noCuda(); }
void* ipcOpen(int, const uint8_t*) { noCuda(); }
void ipcClose(int, void*) { noCuda(); }
int deviceCount() { return 0; }
std::string cudaUnavailableReason() { return "this build of @moe/kernels was compiled without CUDA (no nvcc at build time)"; }
DeviceInfo deviceInfo(int) { noCuda(); }
const DeviceFacts& deviceFacts(int) { noCuda(); }
void setDevice(int) { noCuda(); }
Stream defaultStream(int) { noCuda(); }
Stream createStream(int) { noCuda(); }
void destroyStream(int, Stream) { noCuda(); }
void streamSynchronize(int, Stream) { noCuda(); }
bool streamQuery(int, Stream) { noCuda(); }
void streamWaitEvent(int, Stream, Event) { noCuda(); }
Event createEvent(int, bool) { noCuda(); }
void destroyEvent(int, Event) { noCuda(); }
void recordEvent(int, Event, Stream) { noCuda(); }
void eventSynchronize(int, Event) { noCuda(); }
bool eventQuery(int, Event) { noCuda(); }
float eventElapsedMs(int, Event, Event) { noCuda(); }
void* deviceAlloc(int, size_t, Stream) { noCuda(); }
void deviceFree(int, void*, const std::vector<Stream>&) { noCuda(); }
MemoryStats memoryStats(int) { noCuda(); }
void emptyCache(int) { noCuda(); }
void setMemoryLimit(int, size_t) { noCuda(); }
void copyAsync(int, void*, const void*, size_t, CopyKind, Stream) { noCuda(); }
void copyPeerAsync(int, void*, int, const void*, size_t, Stream) { noCuda(); }
void memsetAsync(int, void*, int, size_t, Stream) { noCuda(); }
void beginCapture(int, Stream) { noCuda(); }
GraphExec endCapture(int, Stream) { noCuda(); }
void abortCapture(int, Stream) { noCuda(); }
bool isCapturing(int, Stream) { noCuda(); }
void launchGraph(int, GraphExec, Stream) { noCuda(); }
void destroyGraph(int, GraphExec) { noCuda(); }

}  // namespace moe::runtime
