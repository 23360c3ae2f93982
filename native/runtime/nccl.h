// NCCL, loaded at run time: libnccl.so.2 is opened with dlopen on first use, so the addon has no
// build-time or load-time dependency on it. The communicators serve the ep family's nccl
// transport: each holds two fixed exchange plans (dispatch and combine) and moves, per peer, the
// count word and the whole region that this rank staged for it into that peer's receive buffers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "runtime/device.h"

namespace moe::runtime::nccl {

constexpr size_t kUniqueIdBytes = 128;  // sizeof(ncclUniqueId)

// Opens the library (once; MOE_KERNELS_NCCL_LIBRARY names another file instead of
// libnccl.so.2) and returns its name and version, e.g. "libnccl.so.2 (2.21.5)". Throws E_COMM
// naming the file when it cannot be opened or lacks an entry point.
std::string load();
// A new ncclUniqueId (rank 0 makes it; the group broadcasts it).
void uniqueId(uint8_t out[kUniqueIdBytes]);

// One exchange: rank r's region for peer p sits at send + p * regionBytes, its count word at
// sendCounts + 8 * p; it lands at recv + r * regionBytes and recvCounts + 8 * r of peer p.
struct Plan {
  void* send = nullptr;
  void* sendCounts = nullptr;
  void* recv = nullptr;
  void* recvCounts = nullptr;
  size_t regionBytes = 0;
};
constexpr int kPlanDispatch = 0;
constexpr int kPlanCombine = 1;

// Reserves the id of a communicator that create() will make, so that abort() can name it while
// it is being made.
int reserve();
// Makes communicator `handle` (ncclCommInitRank on `device`), then runs both plans once on
// `stream` and waits for them: NCCL connects peers on their first exchange, and that blocks the
// calling thread until the peer connects too. Blocks: call it from a worker thread. Throws E_COMM
// with NCCL's error; if abort(handle) came meanwhile, the communicator is aborted as soon as no
// NCCL call of this thread is in flight, and create throws E_COMM.
void create(int handle, int device, int ranks, int rank, const uint8_t id[kUniqueIdBytes], const Plan& dispatch, const Plan& combine, Stream stream);
// create() on a thread of its own, detached (a peer that never comes must not keep the process
// from exiting); created() polls it.
void start(int handle, int device, int ranks, int rank, const uint8_t id[kUniqueIdBytes], const Plan& dispatch, const Plan& combine, Stream stream);
// True once start()'s communicator is ready, false while it is being made; throws what create()
// threw (once), E_COMM for an id that was ended.
bool created(int handle);
// Enqueues one plan on `stream`: the count words of every peer (one NCCL group), then the
// regions (a second group), and the rank's own region and word as device copies.
void exchange(int handle, int plan, Stream stream);
// NCCL's asynchronous error of the communicator, as text; empty when there is none.
std::string asyncError(int handle);
// Ends the communicator: abort at any time (one still being made is aborted by create() as soon
// as that is safe), destroy once its work has finished. Unknown or ended ids are ignored.
void abort(int handle);
void destroy(int handle);

}  // namespace moe::runtime::nccl
