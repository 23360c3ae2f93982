#include "runtime/allocator.h"

#include <string>

#include "runtime/cuda_check.h"

namespace moe::runtime {

size_t CachingAllocator::roundSize(size_t bytes) {
  constexpr size_t kSmall = 512, kLarge = size_t(2) << 20, kSmallLimit = size_t(1) << 20;
  if (bytes <= kSmallLimit) return (bytes + kSmall - 1) / kSmall * kSmall;
  return (bytes + kLarge - 1) / kLarge * kLarge;
}

namespace {
// Relaxed stream-capture mode for this thread while alive. cudaEventQuery (pending blocks) and
// cudaMalloc are not stream operations, but in the default mode either one, called while a
// graph capture is open on this thread, invalidates that capture.
class RelaxedCapture {
 public:
  RelaxedCapture() { cudaThreadExchangeStreamCaptureMode(&mode_); }
  ~RelaxedCapture() { cudaThreadExchangeStreamCaptureMode(&mode_); }
  RelaxedCapture(const RelaxedCapture&) = delete;
  RelaxedCapture& operator=(const RelaxedCapture&) = delete;

 private:
  cudaStreamCaptureMode mode_ = cudaStreamCaptureModeRelaxed;
};

// True once the event's work has finished (an error also ends the wait: the context is gone).
bool done(cudaEvent_t e) {
  const cudaError_t q = cudaEventQuery(e);
  if (q == cudaErrorNotReady) return false;
  if (q != cudaSuccess) (void)cudaGetLastError();
  return true;
}
}  // namespace

void CachingAllocator::collectPending() {
  for (size_t i = 0; i < pending_.size();) {
    bool finished = true;
    for (cudaEvent_t e : pending_[i].events) finished = finished && done(e);
    for (const auto& r : pending_[i].retired) finished = finished && done(r->event);
    if (!finished) { ++i; continue; }
    for (cudaEvent_t e : pending_[i].events) eventPool_.push_back(e);
    void* p = pending_[i].ptr;
    const Block& b = blocks_.at(p);
    free_[{b.stream, b.size}].push_back(p);
    pending_[i] = std::move(pending_.back());
    pending_.pop_back();
  }
}

void CachingAllocator::releaseCached() {
  for (auto& [key, ptrs] : free_) {
    for (void* p : ptrs) {
      cudaFree(p);
      blocks_.erase(p);
      stats_.reservedBytes -= key.second;
    }
  }
  free_.clear();
  cachedBytes_ = 0;
}

void* CachingAllocator::allocate(size_t bytes, cudaStream_t stream) {
  if (bytes == 0) return nullptr;
  size_t size = roundSize(bytes);
  std::lock_guard<std::mutex> lock(mu_);
  // a workspace or an output may be allocated inside a graph capture (the block then stays
  // valid for the graph's lifetime)
  RelaxedCapture relaxed;
  if (!pending_.empty()) collectPending();
  void* p = nullptr;
  auto it = free_.find({stream, size});
  if (it == free_.end() || it->second.empty()) it = free_.find({kAnyStream, size});
  if (it != free_.end() && !it->second.empty()) {
    p = it->second.back();
    it->second.pop_back();
    cachedBytes_ -= size;
    blocks_.at(p).live = true;
  } else {
    checkCuda(cudaSetDevice(device_), "cudaSetDevice");
    cudaError_t err = driverMalloc(&p, size);
    if (err == cudaErrorMemoryAllocation && cachedBytes_ > 0) {
      (void)cudaGetLastError();
      cudaDeviceSynchronize();
      releaseCached();
      err = driverMalloc(&p, size);
    }
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      std::string why = limit_ && stats_.reservedBytes + size > limit_
                            ? " (the limit set with setMemoryLimit is " + std::to_string(limit_) + " bytes)"
                            : "";
      fail("E_OOM", "out of device memory on cuda:" + std::to_string(device_) + " allocating " +
                        std::to_string(bytes) + " bytes (" + std::to_string(stats_.allocatedBytes) +
                        " bytes held by live tensors)" + why);
    }
    checkCuda(err, "cudaMalloc");
    blocks_[p] = Block{size, stream};
    stats_.reservedBytes += size;
    stats_.driverAllocations++;
  }
  stats_.allocatedBytes += size;
  if (stats_.allocatedBytes > stats_.peakAllocatedBytes) stats_.peakAllocatedBytes = stats_.allocatedBytes;
  stats_.allocations++;
  return p;
}

cudaEvent_t CachingAllocator::recordOn(cudaStream_t s) {
  cudaEvent_t e;
  if (!eventPool_.empty()) {
    e = eventPool_.back();
    eventPool_.pop_back();
  } else {
    checkCuda(cudaSetDevice(device_), "cudaSetDevice");
    checkCuda(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
  }
  checkCuda(cudaEventRecord(e, s), "cudaEventRecord");
  return e;
}

void CachingAllocator::release(void* p, const std::vector<cudaStream_t>& usedOn) {
  if (!p) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = blocks_.find(p);
  if (it == blocks_.end()) fail("E_ARGUMENT", "free of a pointer this allocator did not hand out");
  Block& b = it->second;
  if (!b.live) fail("E_INTERNAL", "a device block was released twice");
  b.live = false;
  stats_.allocatedBytes -= b.size;
  stats_.frees++;
  cachedBytes_ += b.size;
  Pending wait{p, {}, {}};
  if (b.retired) wait.retired.push_back(std::move(b.retired));
  for (cudaStream_t other : usedOn) {
    if (other == b.stream) continue;
    // a destroyed stream cannot take an event any more: wait for the end of its work instead
    auto dead = dead_.find(other);
    if (dead != dead_.end()) wait.retired.push_back(dead->second);
    else wait.events.push_back(recordOn(other));
  }
  if (wait.events.empty() && wait.retired.empty()) {
    free_[{b.stream, b.size}].push_back(p);
  } else {
    pending_.push_back(std::move(wait));
  }
}

cudaError_t CachingAllocator::driverMalloc(void** p, size_t size) {
  if (limit_ && stats_.reservedBytes + size > limit_) return cudaErrorMemoryAllocation;
  return cudaMalloc(p, size);
}

void CachingAllocator::setLimit(size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  limit_ = bytes;
}

void CachingAllocator::retireStream(cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(mu_);
  checkCuda(cudaSetDevice(device_), "cudaSetDevice");
  auto end = std::make_shared<Retired>();
  checkCuda(cudaEventCreateWithFlags(&end->event, cudaEventDisableTiming), "cudaEventCreate");
  checkCuda(cudaEventRecord(end->event, stream), "cudaEventRecord");
  // Cached blocks of the stream wait for its last work, then serve any stream.
  for (auto it = free_.begin(); it != free_.end();) {
    if (it->first.first != stream) {
      ++it;
      continue;
    }
    for (void* p : it->second) {
      blocks_.at(p).stream = kAnyStream;
      pending_.push_back(Pending{p, {}, {end}});
    }
    it = free_.erase(it);
  }
  for (auto& [ptr, block] : blocks_) {
    if (block.stream != stream) continue;
    block.stream = kAnyStream;
    bool waiting = false;
    for (Pending& q : pending_) {
      if (q.ptr == ptr) {
        q.retired.push_back(end);
        waiting = true;
        break;
      }
    }
    // still held by a tensor: its release will wait for the stream's last work
    if (!waiting) block.retired = end;
  }
  // blocks of other streams that this one used wait for the same point when they are freed
  dead_[stream] = end;
}

void CachingAllocator::reviveStream(cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(mu_);
  // a new stream took the handle: later uses name it (blocks already waiting keep the old end)
  dead_.erase(stream);
}

MemoryStats CachingAllocator::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void CachingAllocator::emptyCache() {
  std::lock_guard<std::mutex> lock(mu_);
  checkCuda(cudaSetDevice(device_), "cudaSetDevice");
  // blocks waiting on other streams stay until those streams pass them
  if (!pending_.empty()) collectPending();
  checkCuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  releaseCached();
}

}  // namespace moe::runtime
