// Stream-ordered caching allocator for one device (see device.h for the contract).
#pragma once
#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "runtime/device.h"

namespace moe::runtime {

class CachingAllocator {
 public:
  explicit CachingAllocator(int device) : device_(device) {}
  void* allocate(size_t bytes, cudaStream_t stream);
  void release(void* p, const std::vector<cudaStream_t>& usedOn);
  MemoryStats stats();
  void emptyCache();
  void setLimit(size_t bytes);
  // A stream is about to be destroyed with work still queued: its blocks become reusable on any
  // stream once that work has finished (an event recorded now), and it is no longer named in
  // cross-stream waits (its handle would dangle).
  void retireStream(cudaStream_t stream);
  // A new stream may reuse the handle of a destroyed one.
  void reviveStream(cudaStream_t stream);

  // Block sizes: 512-byte steps up to 1 MiB, 2 MiB steps above, so that repeated
  // allocations of one size always meet the same cached block.
  static size_t roundSize(size_t bytes);

 private:
  // The end of a destroyed stream's work: one event, shared by every block that waits for it.
  struct Retired {
    cudaEvent_t event = nullptr;
    ~Retired() {
      if (event) cudaEventDestroy(event);
    }
  };
  struct Block {
    size_t size;
    cudaStream_t stream;
    std::shared_ptr<Retired> retired;  // for a live block of a destroyed stream
    bool live = true;                  // handed out and not yet released
  };
  struct Pending {
    void* ptr;
    std::vector<cudaEvent_t> events;                // pooled, returned once complete
    std::vector<std::shared_ptr<Retired>> retired;  // destroyed streams it waits for
  };
  void collectPending();   // moves blocks whose cross-stream uses finished to the free lists
  void releaseCached();    // cudaFree of every cached block; the caller holds mu_

  int device_;
  std::mutex mu_;
  std::map<std::pair<cudaStream_t, size_t>, std::vector<void*>> free_;
  std::unordered_map<void*, Block> blocks_;  // every block obtained from the driver
  std::vector<Pending> pending_;
  std::vector<cudaEvent_t> eventPool_;
  size_t cachedBytes_ = 0;
  size_t limit_ = 0;
  // Destroyed streams, with the end of their work: a block they used waits for it when freed.
  std::unordered_map<cudaStream_t, std::shared_ptr<Retired>> dead_;
  static constexpr cudaStream_t kAnyStream = nullptr;  // blocks whose stream was destroyed
  MemoryStats stats_;
  cudaError_t driverMalloc(void** p, size_t size);  // cudaMalloc within limit_
  cudaEvent_t recordOn(cudaStream_t s);             // a pooled event recorded on s
};

}  // namespace moe::runtime
