// The process's one uhmm runtime behind the interposer's managed-memory entry points. It is made at
// the first cuMemAllocManaged, with the CUDA backend over the real driver the interposer loaded, on
// the GPU current on the calling thread, or on the GPUs UHMM_CUDA_DEVICES lists (`all`), and torn down at
// exit before the CUDA runtime's own exit handlers (which were registered earlier, at its initialisation).
// Calls from many threads at once share it; Use keeps it alive while a call works with it.
#ifndef UHMM_BACKENDS_CUDA_INTERPOSE_MANAGED_MEMORY_H_
#define UHMM_BACKENDS_CUDA_INTERPOSE_MANAGED_MEMORY_H_

#include <cuda.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "uhmm/uhmm.hpp"

namespace uhmm::interpose {

// The CUresult a driver would give for what a uhmm call reported (and the message goes to stderr,
// prefixed with `call`, since a CUresult cannot carry it).
CUresult ToCuResult(const char* call, const absl::Status& status);

class ManagedMemory {
 public:
  // A shared hold on the runtime: empty (false) when there is none.
  class Use {
   public:
    Use() = default;
    Use(std::shared_lock<std::shared_mutex> lock, ManagedMemory* mm) : lock_(std::move(lock)), mm_(mm) {}
    explicit operator bool() const { return mm_ != nullptr; }
    ManagedMemory* operator->() const { return mm_; }

   private:
    std::shared_lock<std::shared_mutex> lock_;
    ManagedMemory* mm_ = nullptr;
  };

  // The runtime, if the process has made one (and not yet torn it down).
  static Use Get();
  // The runtime, made now if there is none, on the calling thread's current device. Empty when it
  // cannot be made: *err says why, or is CUDA_SUCCESS when the caller should fall back to the real
  // driver's managed memory (uhmm could not start here; said once on stderr).
  static Use GetOrCreate(CUresult* err);

  Runtime& rt() { return *rt_; }
  // The GPU current when the runtime was made, and its context (what the pointer attributes of a
  // managed allocation report, as CUDA reports the allocating GPU).
  CUdevice device() const { return device_; }
  CUcontext context() const { return context_; }
  // The runtime's GPUs: its ordinal of CUDA device `dev`, nullopt when uhmm does not serve `dev`;
  // and the CUDA device of runtime ordinal `ordinal`.
  std::optional<int> OrdinalOf(CUdevice dev) const;
  CUdevice DeviceOf(int ordinal) const { return gpus_[ordinal]; }
  // The runtime ordinal of the GPU current on the calling thread, for a copy, set or launch it is
  // about to queue; the first GPU when the thread has none or uhmm does not serve it.
  int CurrentOrdinal() const;

  // The live allocation holding `addr`, if any.
  std::optional<Runtime::Allocation> Find(CUdeviceptr addr) const;
  // Makes the managed part of [addr, addr+bytes) resident on the calling thread's GPU
  // (CurrentOrdinal), for a copy, set or kernel that the driver is about to queue: what the CPU wrote reaches
  // the device, and the CPU's mappings go (its next touch faults the data back). Unmanaged addresses are left
  // alone.
  CUresult ToDevice(const char* call, CUdeviceptr addr, size_t bytes);
  // The same for every managed allocation that holds one of `addrs` (whole allocations).
  CUresult AllocationToDevice(const char* call, CUdeviceptr addr);
  // Before a kernel launch on `stream` (on the calling thread's GPU): every managed page the CPU
  // touched goes back to that GPU, or where it reaches it.
  CUresult BeforeLaunch(const char* call, CUstream stream);

  // Prefetch to the CPU, ordered on `stream` without blocking the caller: a worker waits for the
  // work queued on the stream so far, then brings [start, start+bytes) home. `per_thread`: the
  // stream handle 0 means the per-thread default stream. Later calls that move managed data to the
  // GPU wait for these first (WaitForPrefetchesHome), so the moves keep their order.
  CUresult PrefetchHome(const char* call, uintptr_t start, size_t bytes, CUstream stream, bool per_thread);
  void WaitForPrefetchesHome();

  // The location of the last prefetch of an allocation (CU_DEVICE_CPU, the device ordinal), for
  // CU_MEM_RANGE_ATTRIBUTE_LAST_PREFETCH_LOCATION; CU_DEVICE_INVALID when none.
  void NotePrefetch(uintptr_t allocation, int location);
  int LastPrefetch(uintptr_t allocation) const;
  // Frees the allocation that starts at `start` (after the GPU's queued work, as cuMemFree does).
  CUresult Free(uintptr_t start);

  ~ManagedMemory();

 private:
  ManagedMemory(std::unique_ptr<Runtime> rt, CUdevice device, CUcontext context);
  static void TearDown();
  void HomeWorker();

  std::unique_ptr<Runtime> rt_;
  const CUdevice device_;
  const CUcontext context_;
  std::vector<CUdevice> gpus_;       // runtime ordinal -> CUDA device
  std::vector<CUcontext> contexts_;  // runtime ordinal -> its primary context

  struct HomeMove {
    CUevent after;  // recorded on the prefetch's stream
    uintptr_t start;
    size_t bytes;
  };
  std::mutex home_mu_;
  std::condition_variable home_cv_;
  std::deque<HomeMove> home_queue_;
  size_t home_in_flight_ = 0;  // queued or being moved
  bool home_stop_ = false;
  std::thread home_worker_;

  mutable std::mutex prefetch_mu_;
  std::map<uintptr_t, int> last_prefetch_;
};

}  // namespace uhmm::interpose

#endif  // UHMM_BACKENDS_CUDA_INTERPOSE_MANAGED_MEMORY_H_
