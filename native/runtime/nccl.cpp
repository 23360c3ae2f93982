// NCCL through dlopen (runtime/nccl.h). No NCCL header is needed to build: the few types and
// entry points used are declared here with the values of the public nccl.h (ncclResult_t and
// ncclDataType_t are int enums, ncclComm_t an opaque pointer, ncclUniqueId 128 bytes by value).
// Device work goes through runtime/device.h, so this file compiles in the CPU-only build too,
// where loading works and everything that needs a device answers E_NO_CUDA.
#include "runtime/nccl.h"

#include <dlfcn.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "runtime/errors.h"

namespace moe::runtime::nccl {
namespace {

using ncclResult_t = int;
constexpr ncclResult_t ncclSuccess = 0;
constexpr ncclResult_t ncclInProgress = 7;
using ncclComm_t = void*;
struct ncclUniqueId {
  char internal[kUniqueIdBytes];
};
using ncclDataType_t = int;
constexpr ncclDataType_t ncclUint8 = 1;

struct Api {
  std::string name;
  ncclResult_t (*getVersion)(int*) = nullptr;
  ncclResult_t (*getUniqueId)(ncclUniqueId*) = nullptr;
  ncclResult_t (*commInitRank)(ncclComm_t*, int, ncclUniqueId, int) = nullptr;
  ncclResult_t (*groupStart)() = nullptr;
  ncclResult_t (*groupEnd)() = nullptr;
  // the stream is a cudaStream_t, a pointer
  ncclResult_t (*send)(const void*, size_t, ncclDataType_t, int, ncclComm_t, void*) = nullptr;
  ncclResult_t (*recv)(void*, size_t, ncclDataType_t, int, ncclComm_t, void*) = nullptr;
  ncclResult_t (*commGetAsyncError)(ncclComm_t, ncclResult_t*) = nullptr;
  ncclResult_t (*commAbort)(ncclComm_t) = nullptr;
  ncclResult_t (*commDestroy)(ncclComm_t) = nullptr;
  const char* (*getErrorString)(ncclResult_t) = nullptr;

  std::string error(ncclResult_t r) const {
    const char* s = getErrorString ? getErrorString(r) : nullptr;
    return std::string(s ? s : "unknown NCCL error") + " (ncclResult_t " + std::to_string(r) + ")";
  }
  void check(ncclResult_t r, const char* what) const {
    if (r != ncclSuccess) fail("E_COMM", std::string(what) + " failed: " + error(r));
  }
};

// The state below is never destroyed: a thread still inside NCCL at process exit may reach it.
std::mutex& g_mu = *new std::mutex;
// Libraries opened so far, by the name they were opened with (never closed: communicators and
// NCCL's own threads keep using them).
auto& g_libraries = *new std::unordered_map<std::string, std::shared_ptr<const Api>>;

template <typename F>
void entry(void* lib, const std::string& name, const char* symbol, F& f) {
  f = reinterpret_cast<F>(dlsym(lib, symbol));
  if (!f) fail("E_COMM", name + " has no entry point " + symbol + " (an NCCL 2 library is needed)");
}

std::shared_ptr<const Api> api() {
  const char* over = std::getenv("MOE_KERNELS_NCCL_LIBRARY");
  const std::string name = over && *over ? over : "libnccl.so.2";
  std::lock_guard<std::mutex> lock(g_mu);
  auto found = g_libraries.find(name);
  if (found != g_libraries.end()) return found->second;
  void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char* why = dlerror();
    fail("E_COMM", "the nccl transport needs NCCL, and " + name + " could not be loaded (" + (why ? why : "not found") +
                       "); install NCCL 2 (e.g. the nvidia-nccl-cu12 wheel or the libnccl2 package) and put its directory on LD_LIBRARY_PATH" +
                       (over && *over ? "" : ", or set MOE_KERNELS_NCCL_LIBRARY to the library's path"));
  }
  auto a = std::make_shared<Api>();
  a->name = name;
  entry(lib, name, "ncclGetVersion", a->getVersion);
  entry(lib, name, "ncclGetUniqueId", a->getUniqueId);
  entry(lib, name, "ncclCommInitRank", a->commInitRank);
  entry(lib, name, "ncclGroupStart", a->groupStart);
  entry(lib, name, "ncclGroupEnd", a->groupEnd);
  entry(lib, name, "ncclSend", a->send);
  entry(lib, name, "ncclRecv", a->recv);
  entry(lib, name, "ncclCommGetAsyncError", a->commGetAsyncError);
  entry(lib, name, "ncclCommAbort", a->commAbort);
  entry(lib, name, "ncclCommDestroy", a->commDestroy);
  entry(lib, name, "ncclGetErrorString", a->getErrorString);
  g_libraries[name] = a;
  return a;
}

// Where a communicator stands. Its NCCL calls run on one thread at a time: the thread of create()
// until it is Ready, then the caller of exchange(); abort() acts at once only where no NCCL call
// of create() can be in flight (Waiting: it waits on the stream; Ready).
enum class Phase { Creating, Waiting, Ready };

struct Comm {
  std::shared_ptr<const Api> api;
  ncclComm_t comm = nullptr;
  int device = 0, ranks = 0, rank = 0;
  Plan plans[2];
  Phase phase = Phase::Creating;
  bool aborted = false;  // abort() came while it was being made
};

std::mutex& g_commsMu = *new std::mutex;
auto& g_comms = *new std::unordered_map<int, std::shared_ptr<Comm>>;
// Why create() failed, by handle, until created() reports it.
auto& g_failures = *new std::unordered_map<int, Error>;
int g_next = 1;

std::shared_ptr<Comm> find(int handle) {
  std::lock_guard<std::mutex> lock(g_commsMu);
  auto it = g_comms.find(handle);
  return it == g_comms.end() ? nullptr : it->second;
}

// The NCCL part of a plan: every peer's count word in one group, then every peer's region in a
// second, so that an 8-byte word is never matched with a region. Each group is ended even when a
// call inside it failed.
void peers(const Comm& c, const Plan& p, Stream stream) {
  const Api& a = *c.api;
  auto* send = static_cast<const uint8_t*>(p.send);
  auto* sendCounts = static_cast<const uint8_t*>(p.sendCounts);
  auto* recv = static_cast<uint8_t*>(p.recv);
  auto* recvCounts = static_cast<uint8_t*>(p.recvCounts);
  for (int pass = 0; pass < 2; pass++) {
    a.check(a.groupStart(), "ncclGroupStart");
    ncclResult_t first = ncclSuccess;
    const char* what = "";
    for (int peer = 0; peer < c.ranks && first == ncclSuccess; peer++) {
      if (peer == c.rank) continue;
      const size_t at = pass == 0 ? 8 * size_t(peer) : p.regionBytes * size_t(peer);
      const size_t bytes = pass == 0 ? 8 : p.regionBytes;
      first = a.send((pass == 0 ? sendCounts : send) + at, bytes, ncclUint8, peer, c.comm, stream);
      what = "ncclSend";
      if (first != ncclSuccess) break;
      first = a.recv((pass == 0 ? recvCounts : recv) + at, bytes, ncclUint8, peer, c.comm, stream);
      what = "ncclRecv";
    }
    const ncclResult_t end = a.groupEnd();
    a.check(first, what);
    a.check(end, "ncclGroupEnd");
  }
}

void setPhase(Comm& c, Phase phase) {
  std::lock_guard<std::mutex> lock(g_commsMu);
  c.phase = phase;
}

bool abortedNow(const Comm& c) {
  std::lock_guard<std::mutex> lock(g_commsMu);
  return c.aborted;
}

// Ends an aborted-while-creating communicator from create()'s thread and says so.
[[noreturn]] void abandoned(int handle, Comm& c) {
  if (c.comm) (void)c.api->commAbort(c.comm);
  std::lock_guard<std::mutex> lock(g_commsMu);
  g_comms.erase(handle);
  fail("E_COMM", "the NCCL communicator was aborted while it was being made");
}

}  // namespace

std::string load() {
  std::shared_ptr<const Api> a = api();
  int v = 0;
  if (a->getVersion(&v) != ncclSuccess) return a->name;
  // NCCL_VERSION_CODE: major * 10000 + minor * 100 + patch since 2.9, major * 1000 + ... before
  const int major = v >= 10000 ? v / 10000 : v / 1000, minor = v >= 10000 ? v / 100 % 100 : v / 100 % 10, patch = v % 100;
  return a->name + " (" + std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch) + ")";
}

void uniqueId(uint8_t out[kUniqueIdBytes]) {
  std::shared_ptr<const Api> a = api();
  ncclUniqueId id;
  a->check(a->getUniqueId(&id), "ncclGetUniqueId");
  std::memcpy(out, id.internal, kUniqueIdBytes);
}

int reserve() {
  std::shared_ptr<const Api> a = api();
  // NVLink SHARP serves collectives only and reserves memory at init: off unless the user chose
  // (set here, on the thread that calls in from JS, before any communicator reads it)
  setenv("NCCL_NVLS_ENABLE", "0", 0);
  auto c = std::make_shared<Comm>();
  c->api = a;
  std::lock_guard<std::mutex> lock(g_commsMu);
  const int handle = g_next++;
  g_comms[handle] = c;
  return handle;
}

void create(int handle, int device, int ranks, int rank, const uint8_t id[kUniqueIdBytes], const Plan& dispatch, const Plan& combine, Stream stream) {
  std::shared_ptr<Comm> c = find(handle);
  if (!c) fail("E_COMM", "the NCCL communicator was aborted before it was made");
  c->device = device;
  c->ranks = ranks;
  c->rank = rank;
  c->plans[kPlanDispatch] = dispatch;
  c->plans[kPlanCombine] = combine;
  try {
    // NCCL takes the device current on the calling thread
    setDevice(device);
    ncclUniqueId uid;
    std::memcpy(uid.internal, id, kUniqueIdBytes);
    ncclComm_t comm = nullptr;
    c->api->check(c->api->commInitRank(&comm, ranks, uid, rank), "ncclCommInitRank");
    {
      std::lock_guard<std::mutex> lock(g_commsMu);
      c->comm = comm;
    }
    if (abortedNow(*c)) abandoned(handle, *c);
    if (ranks > 1) {
      peers(*c, c->plans[kPlanDispatch], stream);
      peers(*c, c->plans[kPlanCombine], stream);
    }
    {
      std::lock_guard<std::mutex> lock(g_commsMu);
      c->phase = Phase::Waiting;
    }
    // abort() that came during an NCCL call of this thread is carried out here
    if (abortedNow(*c)) abandoned(handle, *c);
    // a peer that never connects leaves NCCL's kernel waiting here; abort() now ends it at once
    streamSynchronize(device, stream);
    std::lock_guard<std::mutex> lock(g_commsMu);
    if (c->aborted) fail("E_COMM", "the NCCL communicator was aborted while it was being made");
    c->phase = Phase::Ready;
  } catch (...) {
    std::lock_guard<std::mutex> lock(g_commsMu);
    if (c->comm && !c->aborted) {
      c->aborted = true;
      (void)c->api->commAbort(c->comm);
    }
    g_comms.erase(handle);
    throw;
  }
}

void start(int handle, int device, int ranks, int rank, const uint8_t id[kUniqueIdBytes], const Plan& dispatch, const Plan& combine, Stream stream) {
  std::array<uint8_t, kUniqueIdBytes> bytes;
  std::memcpy(bytes.data(), id, kUniqueIdBytes);
  std::thread([=]() {
    try {
      create(handle, device, ranks, rank, bytes.data(), dispatch, combine, stream);
    } catch (const Error& e) {
      std::lock_guard<std::mutex> lock(g_commsMu);
      g_failures.emplace(handle, e);
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(g_commsMu);
      g_failures.emplace(handle, Error("E_COMM", e.what()));
    }
  }).detach();
}

bool created(int handle) {
  std::lock_guard<std::mutex> lock(g_commsMu);
  auto failed = g_failures.find(handle);
  if (failed != g_failures.end()) {
    const Error e = failed->second;
    g_failures.erase(failed);
    throw e;
  }
  auto it = g_comms.find(handle);
  if (it == g_comms.end()) fail("E_COMM", "the NCCL communicator was ended");
  return it->second->phase == Phase::Ready && !it->second->aborted;
}

void exchange(int handle, int plan, Stream stream) {
  std::shared_ptr<Comm> c = find(handle);
  if (!c || c->phase != Phase::Ready || c->aborted) fail("E_COMM", "the NCCL communicator of this buffer was ended");
  const Plan& p = c->plans[plan == kPlanCombine ? kPlanCombine : kPlanDispatch];
  setDevice(c->device);
  if (c->ranks > 1) peers(*c, p, stream);
  // this rank's own region and count word
  auto self = [](void* base, size_t at) { return static_cast<uint8_t*>(base) + at; };
  copyAsync(c->device, self(p.recv, p.regionBytes * size_t(c->rank)), self(p.send, p.regionBytes * size_t(c->rank)), p.regionBytes, CopyKind::DeviceToDevice, stream);
  copyAsync(c->device, self(p.recvCounts, 8 * size_t(c->rank)), self(p.sendCounts, 8 * size_t(c->rank)), 8, CopyKind::DeviceToDevice, stream);
}

std::string asyncError(int handle) {
  std::shared_ptr<Comm> c = find(handle);
  if (!c || c->phase != Phase::Ready || c->aborted) return "the NCCL communicator was ended";
  ncclResult_t e = ncclSuccess;
  const ncclResult_t r = c->api->commGetAsyncError(c->comm, &e);
  if (r != ncclSuccess) return "ncclCommGetAsyncError failed: " + c->api->error(r);
  if (e != ncclSuccess && e != ncclInProgress) return c->api->error(e);
  return "";
}

void abort(int handle) {
  std::lock_guard<std::mutex> lock(g_commsMu);
  auto it = g_comms.find(handle);
  if (it == g_comms.end()) return;
  Comm& c = *it->second;
  if (c.aborted) return;
  c.aborted = true;
  // while create() is inside an NCCL call, it aborts the communicator itself when that returns
  if (c.phase == Phase::Creating) return;
  (void)c.api->commAbort(c.comm);
  if (c.phase == Phase::Ready) g_comms.erase(it);
}

void destroy(int handle) {
  std::shared_ptr<Comm> c;
  {
    std::lock_guard<std::mutex> lock(g_commsMu);
    auto it = g_comms.find(handle);
    if (it == g_comms.end()) return;
    if (it->second->phase != Phase::Ready || it->second->aborted) {
      c = nullptr;
    } else {
      c = it->second;
      g_comms.erase(it);
    }
  }
  if (!c) return abort(handle);
  setDevice(c->device);
  c->api->check(c->api->commDestroy(c->comm), "ncclCommDestroy");
}

}  // namespace moe::runtime::nccl
