// An emulated CUDA driver for CI, loaded by the CUDA backend through UHMM_CUDA_DRIVER instead of
// NVIDIA's libcuda.so.1. It is not a GPU: it gives the backend's own code (driver loading, VMM
// reservation and mapping, pinned host views, streams, events, errors) something to run against on
// machines without one. What it emulates, and how faithfully:
//  - UHMM_FAKE_CUDA_DEVICES devices (default 1, at most 8), each with its own primary context and
//    1 GiB of "VRAM" that is host memory the managed pointer never maps: device addresses are
//    resolved through one process-wide cuMemMap table, as a GPU's are, so a copy to an unmapped
//    device address fails with CUDA_ERROR_INVALID_VALUE as on a GPU, and a block mapped by one
//    device cannot be mapped again by another;
//  - peer access between every pair of devices, or none with UHMM_FAKE_CUDA_PEER=none
//    (cuDeviceCanAccessPeer; cuMemSetAccess refuses a device without access to the chunk's owner);
//    a device reaches a mapped block only once cuMemSetAccess named it: copies and sets on a stream
//    access memory as the stream's device, synchronous calls as the current context's (the fake's
//    kernels, below, reach any mapped block);
//  - cuMemAddressReserve leaves a PROT_NONE host mapping, as the real driver does;
//  - registered host memory is MADV_DONTFORK (not inherited by fork children);
//  - asynchronous copies require the host side to be pinned (cuMemHostRegister, cuMemAllocHost):
//    uhmm must never DMA into pageable memory. (The real driver accepts pageable memory, slowly.);
//  - every stream is a worker thread running its operations in order; events mark positions.
//  - for the interposer's tests (tests/interpose_uvm_test.cc): unified addressing for cuMemcpy and
//    the synchronous copies and sets (an address inside a reservation is device memory, anything
//    else host memory), cuMemcpy2D, cuMemAlloc/cuMemFree, a few pointer attributes, and "kernels":
//    host functions made into a CUfunction by uhmm_fake_cuda_kernel() that cuLaunchKernel runs on
//    the stream, reaching device memory through uhmm_fake_cuda_device_view() (nullptr where no
//    device memory is mapped: a GPU would fault there).
// Everything else (modules, CUPTI, peer copies, ...) is absent.
#include <cuda.h>
#include <sys/mman.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace {

constexpr size_t kChunk = size_t{2} << 20;
constexpr size_t kVram = size_t{1} << 30;

struct Stream {
  const int device;  // of the context it was created in
  std::mutex mu;
  std::condition_variable cv, done_cv;
  std::deque<std::function<void()>> work;
  uint64_t queued = 0, done = 0;
  bool stop = false;
  std::thread thread;

  explicit Stream(int dev) : device(dev) {
    thread = std::thread([this] {
      std::unique_lock<std::mutex> lock(mu);
      for (;;) {
        cv.wait(lock, [&] { return stop || !work.empty(); });
        if (work.empty()) return;
        auto fn = std::move(work.front());
        work.pop_front();
        lock.unlock();
        fn();
        lock.lock();
        ++done;
        done_cv.notify_all();
      }
    });
  }
  ~Stream() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stop = true;
    }
    cv.notify_all();
    thread.join();
  }
  uint64_t Enqueue(std::function<void()> fn) {
    std::lock_guard<std::mutex> lock(mu);
    work.push_back(std::move(fn));
    cv.notify_all();
    return ++queued;
  }
  void WaitFor(uint64_t pos) {
    std::unique_lock<std::mutex> lock(mu);
    done_cv.wait(lock, [&] { return done >= pos; });
  }
  bool Reached(uint64_t pos) {
    std::lock_guard<std::mutex> lock(mu);
    return done >= pos;
  }
};

struct Event {
  Stream* stream = nullptr;
  uint64_t pos = 0;
};

struct State {
  std::mutex mu;
  std::mutex vram_mu;
  bool initialized = false;
  std::map<uintptr_t, size_t> reservations;  // start -> bytes
  std::map<uintptr_t, uint8_t*> mapped;      // 2 MiB block -> chunk memory
  std::map<uintptr_t, uint32_t> access;      // block -> devices cuMemSetAccess gave it to (bits)
  std::map<uintptr_t, size_t> registered;    // host start -> bytes
  std::set<Stream*> streams;
  std::map<Stream*, int> stream_device;                      // the device of the stream's context
  std::map<CUmemGenericAllocationHandle, int> chunk_device;  // the device a chunk was created on
  size_t chunks[8] = {};                                     // per device
};
State& S() {
  static auto* s = new State();
  return *s;
}
thread_local CUcontext t_ctx = nullptr;

// Devices and their primary contexts (0x1000, 0x1100, ...).
constexpr int kMaxDevices = 8;
int Devices() {
  static const int n = [] {
    const char* e = std::getenv("UHMM_FAKE_CUDA_DEVICES");
    const int v = e != nullptr ? std::atoi(e) : 1;
    return std::clamp(v, 1, kMaxDevices);
  }();
  return n;
}
bool PeerAccess() {
  static const bool on = [] {
    const char* e = std::getenv("UHMM_FAKE_CUDA_PEER");
    return e == nullptr || std::strcmp(e, "none") != 0;
  }();
  return on;
}
CUcontext PrimaryOf(int device) { return reinterpret_cast<CUcontext>(uintptr_t{0x1000} + 0x100 * device); }
// The device whose primary context `ctx` is; -1 for anything else.
int DeviceOf(CUcontext ctx) {
  const auto v = reinterpret_cast<uintptr_t>(ctx);
  if (v < 0x1000 || (v - 0x1000) % 0x100 != 0) return -1;
  const auto d = static_cast<int>((v - 0x1000) / 0x100);
  return d < Devices() ? d : -1;
}
bool ValidDevice(CUdevice d) { return d >= 0 && d < Devices(); }

// Resolves [addr, addr+bytes) of device memory (within one block) as device `device` sees it (a
// stream's work passes its stream's device; kCurrentDevice: the current context's; -1, as for the
// fake's kernels, any mapped block); nullptr when not mapped or not accessible to that device.
// (An explicit argument, not a thread_local of the stream threads: LeakSanitizer's exit scan
// crashed on the dynamic TLS of this dlopen'ed module's threads.)
constexpr int kCurrentDevice = -2;
uint8_t* DevicePtr(CUdeviceptr addr, size_t bytes, int device = kCurrentDevice) {
  if (device == kCurrentDevice) device = DeviceOf(t_ctx);
  std::lock_guard<std::mutex> lock(S().mu);
  const uintptr_t block = addr & ~(kChunk - 1);
  if ((addr + bytes - 1) / kChunk != addr / kChunk) return nullptr;
  auto it = S().mapped.find(block);
  auto acc = S().access.find(block);
  if (it == S().mapped.end() || acc == S().access.end()) return nullptr;
  if (device >= 0 && !(acc->second & (1u << device))) return nullptr;
  return it->second + (addr - block);
}

bool HostRegistered(const void* p, size_t bytes) {
  std::lock_guard<std::mutex> lock(S().mu);
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = S().registered.upper_bound(a);
  if (it == S().registered.begin()) return false;
  --it;
  return a >= it->first && a + bytes <= it->first + it->second;
}

CUresult Ready() { return S().initialized ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED; }

CUresult Init(unsigned int) {
  S().initialized = true;
  return CUDA_SUCCESS;
}
CUresult DriverGetVersion(int* v) {
  *v = CUDA_VERSION;
  return CUDA_SUCCESS;
}
CUresult GetErrorName(CUresult r, const char** s) {
  switch (r) {
    case CUDA_SUCCESS:
      *s = "CUDA_SUCCESS";
      break;
    case CUDA_ERROR_INVALID_VALUE:
      *s = "CUDA_ERROR_INVALID_VALUE";
      break;
    case CUDA_ERROR_OUT_OF_MEMORY:
      *s = "CUDA_ERROR_OUT_OF_MEMORY";
      break;
    case CUDA_ERROR_NOT_INITIALIZED:
      *s = "CUDA_ERROR_NOT_INITIALIZED";
      break;
    case CUDA_ERROR_NOT_READY:
      *s = "CUDA_ERROR_NOT_READY";
      break;
    case CUDA_ERROR_INVALID_CONTEXT:
      *s = "CUDA_ERROR_INVALID_CONTEXT";
      break;
    case CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED:
      *s = "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED";
      break;
    default:
      *s = "CUDA_ERROR_UNKNOWN";
      return CUDA_ERROR_INVALID_VALUE;
  }
  return CUDA_SUCCESS;
}
CUresult GetErrorString(CUresult r, const char** s) {
  const CUresult rc = GetErrorName(r, s);
  if (rc == CUDA_SUCCESS) *s = "emulated driver error";
  return rc;
}
CUresult DeviceGetCount(int* n) {
  *n = Devices();
  return Ready();
}
CUresult DeviceGet(CUdevice* d, int ordinal) {
  if (!ValidDevice(ordinal)) return CUDA_ERROR_INVALID_DEVICE;
  *d = ordinal;
  return Ready();
}
CUresult DeviceCanAccessPeer(int* can, CUdevice dev, CUdevice peer) {
  if (can == nullptr || !ValidDevice(dev) || !ValidDevice(peer)) return CUDA_ERROR_INVALID_DEVICE;
  *can = dev != peer && PeerAccess() ? 1 : 0;
  return Ready();
}
CUresult DeviceGetName(char* name, int len, CUdevice) {
  std::snprintf(name, static_cast<size_t>(len), "uhmm emulated GPU (tests/fake_cuda)");
  return Ready();
}
CUresult DeviceGetAttribute(int* v, CUdevice_attribute attr, CUdevice) {
  *v = attr == CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED ? 1 : 0;
  return Ready();
}
CUresult PrimaryCtxRetain(CUcontext* ctx, CUdevice dev) {
  if (!ValidDevice(dev)) return CUDA_ERROR_INVALID_DEVICE;
  *ctx = PrimaryOf(dev);
  return Ready();
}
CUresult PrimaryCtxRelease(CUdevice) { return CUDA_SUCCESS; }
CUresult CtxSetCurrent(CUcontext ctx) {
  t_ctx = ctx;
  return CUDA_SUCCESS;
}
CUresult CtxGetCurrent(CUcontext* ctx) {
  *ctx = t_ctx;
  return CUDA_SUCCESS;
}
CUresult NeedCtx() { return DeviceOf(t_ctx) >= 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT; }
CUresult CtxGetDevice(CUdevice* d) {
  *d = std::max(DeviceOf(t_ctx), 0);
  return NeedCtx();
}
// Waits for the work queued so far on the streams of the current context.
CUresult CtxSynchronize() {
  if (NeedCtx() != CUDA_SUCCESS) return CUDA_ERROR_INVALID_CONTEXT;
  const int device = DeviceOf(t_ctx);
  std::vector<std::pair<Stream*, uint64_t>> marks;
  {
    std::lock_guard<std::mutex> lock(S().mu);
    for (Stream* s : S().streams) {
      if (S().stream_device[s] != device) continue;
      std::lock_guard<std::mutex> slock(s->mu);
      marks.emplace_back(s, s->queued);
    }
  }
  for (auto [s, pos] : marks) s->WaitFor(pos);
  return CUDA_SUCCESS;
}
CUresult MemGetInfo(size_t* free_bytes, size_t* total) {
  if (NeedCtx() != CUDA_SUCCESS) return CUDA_ERROR_INVALID_CONTEXT;
  std::lock_guard<std::mutex> lock(S().mu);
  *total = kVram;
  *free_bytes = kVram - S().chunks[DeviceOf(t_ctx)] * kChunk;
  return CUDA_SUCCESS;
}
CUresult MemGetAllocationGranularity(size_t* g, const CUmemAllocationProp*,
                                     CUmemAllocationGranularity_flags) {
  *g = kChunk;
  return Ready();
}
CUresult MemAddressReserve(CUdeviceptr* ptr, size_t size, size_t alignment, CUdeviceptr, unsigned long long) {
  if (size == 0 || size % kChunk || (alignment && alignment % kChunk && kChunk % alignment)) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  // Like the real driver: a PROT_NONE host mapping holds the range.
  const size_t span = size + kChunk;
  void* hole = mmap(nullptr, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (hole == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  const uintptr_t base = reinterpret_cast<uintptr_t>(hole);
  const uintptr_t start = (base + kChunk - 1) & ~(kChunk - 1);
  if (start > base) munmap(hole, start - base);
  if (base + span > start + size) munmap(reinterpret_cast<void*>(start + size), base + span - start - size);
  std::lock_guard<std::mutex> lock(S().mu);
  S().reservations[start] = size;
  *ptr = start;
  return CUDA_SUCCESS;
}
CUresult MemAddressFree(CUdeviceptr ptr, size_t size) {
  std::lock_guard<std::mutex> lock(S().mu);
  auto it = S().reservations.find(ptr);
  if (it == S().reservations.end() || it->second != size) return CUDA_ERROR_INVALID_VALUE;
  for (uintptr_t b = ptr; b < ptr + size; b += kChunk) {
    if (S().mapped.count(b)) return CUDA_ERROR_INVALID_VALUE;  // still mapped: a real error too
  }
  S().reservations.erase(it);
  munmap(reinterpret_cast<void*>(ptr), size);
  return CUDA_SUCCESS;
}
CUresult MemCreate(CUmemGenericAllocationHandle* h, size_t size, const CUmemAllocationProp* prop,
                   unsigned long long) {
  if (size != kChunk) return CUDA_ERROR_INVALID_VALUE;  // uhmm only creates 2 MiB chunks
  const int device = prop != nullptr ? prop->location.id : 0;
  if (!ValidDevice(device)) return CUDA_ERROR_INVALID_DEVICE;
  std::lock_guard<std::mutex> lock(S().mu);
  if ((S().chunks[device] + 1) * kChunk > kVram) return CUDA_ERROR_OUT_OF_MEMORY;
  void* p = mmap(nullptr, kChunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  std::memset(p, 0xA5, 64);  // VRAM is not zeroed
  ++S().chunks[device];
  *h = reinterpret_cast<uintptr_t>(p);
  S().chunk_device[*h] = device;
  return CUDA_SUCCESS;
}
CUresult MemRelease(CUmemGenericAllocationHandle h) {
  std::lock_guard<std::mutex> lock(S().mu);
  for (auto& [block, mem] : S().mapped) {
    if (reinterpret_cast<uintptr_t>(mem) == h) return CUDA_ERROR_INVALID_VALUE;  // still mapped
  }
  auto it = S().chunk_device.find(h);
  if (it == S().chunk_device.end()) return CUDA_ERROR_INVALID_VALUE;
  munmap(reinterpret_cast<void*>(h), kChunk);
  --S().chunks[it->second];
  S().chunk_device.erase(it);
  return CUDA_SUCCESS;
}
bool InReservation(uintptr_t addr, size_t size) {
  auto it = S().reservations.upper_bound(addr);
  if (it == S().reservations.begin()) return false;
  --it;
  return addr >= it->first && addr + size <= it->first + it->second;
}
CUresult MemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle h,
                unsigned long long) {
  std::lock_guard<std::mutex> lock(S().mu);
  if (size != kChunk || offset != 0 || ptr % kChunk || !InReservation(ptr, size))
    return CUDA_ERROR_INVALID_VALUE;
  if (!S().mapped.emplace(ptr, reinterpret_cast<uint8_t*>(h)).second) return CUDA_ERROR_INVALID_VALUE;
  return CUDA_SUCCESS;
}
CUresult MemUnmap(CUdeviceptr ptr, size_t size) {
  std::lock_guard<std::mutex> lock(S().mu);
  if (size != kChunk || !S().mapped.erase(ptr)) return CUDA_ERROR_INVALID_VALUE;
  S().access.erase(ptr);
  return CUDA_SUCCESS;
}
CUresult MemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc* desc, size_t count) {
  std::lock_guard<std::mutex> lock(S().mu);
  if (count == 0 || desc == nullptr) return CUDA_ERROR_INVALID_VALUE;
  for (uintptr_t b = ptr; b < ptr + size; b += kChunk) {
    auto m = S().mapped.find(b);
    if (m == S().mapped.end()) return CUDA_ERROR_INVALID_VALUE;
    const int owner = S().chunk_device[reinterpret_cast<uintptr_t>(m->second)];
    for (size_t i = 0; i < count; ++i) {
      if (desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE ||
          desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE || !ValidDevice(desc[i].location.id))
        return CUDA_ERROR_INVALID_VALUE;
      // Another device reaches the chunk over peer access only.
      if (desc[i].location.id != owner && !PeerAccess()) return CUDA_ERROR_INVALID_DEVICE;
    }
  }
  for (uintptr_t b = ptr; b < ptr + size; b += kChunk) {
    for (size_t i = 0; i < count; ++i) S().access[b] |= 1u << desc[i].location.id;
  }
  return CUDA_SUCCESS;
}
CUresult MemHostRegister(void* p, size_t bytes, unsigned int) {
  if (NeedCtx() != CUDA_SUCCESS) return CUDA_ERROR_INVALID_CONTEXT;
  // Pinning faults every page in, as the real driver does, and (worst case for uhmm's fork
  // handling) keeps the pinned mapping out of forked children.
  volatile uint8_t* b = static_cast<uint8_t*>(p);
  for (size_t off = 0; off < bytes; off += 4096) (void)b[off];
  madvise(p, bytes, MADV_DONTFORK);
  std::lock_guard<std::mutex> lock(S().mu);
  if (!S().registered.emplace(reinterpret_cast<uintptr_t>(p), bytes).second) {
    return CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
  }
  return CUDA_SUCCESS;
}
CUresult MemHostUnregister(void* p) {
  std::lock_guard<std::mutex> lock(S().mu);
  auto it = S().registered.find(reinterpret_cast<uintptr_t>(p));
  if (it == S().registered.end()) return CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
  madvise(p, it->second, MADV_DOFORK);
  S().registered.erase(it);
  return CUDA_SUCCESS;
}
CUresult MemAllocHost(void** p, size_t bytes) {
  if (NeedCtx() != CUDA_SUCCESS) return CUDA_ERROR_INVALID_CONTEXT;
  void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (m == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  std::lock_guard<std::mutex> lock(S().mu);
  S().registered.emplace(reinterpret_cast<uintptr_t>(m), bytes);
  *p = m;
  return CUDA_SUCCESS;
}
CUresult MemFreeHost(void* p) {
  std::lock_guard<std::mutex> lock(S().mu);
  auto it = S().registered.find(reinterpret_cast<uintptr_t>(p));
  if (it == S().registered.end()) return CUDA_ERROR_INVALID_VALUE;
  munmap(p, it->second);
  S().registered.erase(it);
  return CUDA_SUCCESS;
}
CUresult Copy(CUstream stream, uint8_t* host, CUdeviceptr dev, size_t bytes, bool to_device) {
  if (NeedCtx() != CUDA_SUCCESS) return CUDA_ERROR_INVALID_CONTEXT;
  auto* s = reinterpret_cast<Stream*>(stream);
  if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;  // uhmm never uses the legacy stream
  if (!HostRegistered(host, bytes)) return CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
  const int device = s->device;  // the stream's work accesses memory as its device
  for (size_t off = 0; off < bytes;) {
    const size_t n = std::min<size_t>(bytes - off, kChunk - (dev + off) % kChunk);
    if (DevicePtr(dev + off, n, device) == nullptr) return CUDA_ERROR_INVALID_VALUE;
    off += n;
  }
  s->Enqueue([=] {
    // Device memory is coherent across engines: copies on different streams that touch it in turn
    // are ordered (this lock also shows ThreadSanitizer that order, which on a GPU is the hardware's).
    std::lock_guard<std::mutex> vram(S().vram_mu);
    for (size_t off = 0; off < bytes;) {
      const size_t n = std::min<size_t>(bytes - off, kChunk - (dev + off) % kChunk);
      uint8_t* d = DevicePtr(dev + off, n, device);
      if (d != nullptr) {
        if (to_device) {
          std::memcpy(d, host + off, n);
        } else {
          std::memcpy(host + off, d, n);
        }
      }
      off += n;
    }
  });
  return CUDA_SUCCESS;
}
CUresult MemcpyHtoDAsync(CUdeviceptr dst, const void* src, size_t bytes, CUstream s) {
  return Copy(s, static_cast<uint8_t*>(const_cast<void*>(src)), dst, bytes, true);
}
CUresult MemcpyDtoHAsync(void* dst, CUdeviceptr src, size_t bytes, CUstream s) {
  return Copy(s, static_cast<uint8_t*>(dst), src, bytes, false);
}
CUresult MemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream stream) {
  if (stream == nullptr) return CUDA_ERROR_INVALID_VALUE;
  uint8_t* d = DevicePtr(dst, n, reinterpret_cast<Stream*>(stream)->device);
  if (d == nullptr) return CUDA_ERROR_INVALID_VALUE;
  reinterpret_cast<Stream*>(stream)->Enqueue([=] {
    std::lock_guard<std::mutex> vram(S().vram_mu);
    std::memset(d, v, n);
  });
  return CUDA_SUCCESS;
}
CUresult StreamCreate(CUstream* out, unsigned int) {
  if (NeedCtx() != CUDA_SUCCESS) return CUDA_ERROR_INVALID_CONTEXT;
  auto* s = new Stream(DeviceOf(t_ctx));
  std::lock_guard<std::mutex> lock(S().mu);
  S().streams.insert(s);
  S().stream_device[s] = DeviceOf(t_ctx);
  *out = reinterpret_cast<CUstream>(s);
  return CUDA_SUCCESS;
}
CUresult StreamDestroy(CUstream stream) {
  auto* s = reinterpret_cast<Stream*>(stream);
  {
    std::lock_guard<std::mutex> lock(S().mu);
    if (!S().streams.erase(s)) return CUDA_ERROR_INVALID_HANDLE;
    S().stream_device.erase(s);
  }
  delete s;
  return CUDA_SUCCESS;
}
CUresult StreamSynchronize(CUstream stream) {
  auto* s = reinterpret_cast<Stream*>(stream);
  if (s == nullptr) return CtxSynchronize();
  uint64_t pos;
  {
    std::lock_guard<std::mutex> lock(s->mu);
    pos = s->queued;
  }
  s->WaitFor(pos);
  return CUDA_SUCCESS;
}
CUresult EventCreate(CUevent* e, unsigned int) {
  *e = reinterpret_cast<CUevent>(new Event());
  return CUDA_SUCCESS;
}
CUresult EventDestroy(CUevent e) {
  delete reinterpret_cast<Event*>(e);
  return CUDA_SUCCESS;
}
CUresult EventRecord(CUevent e, CUstream stream) {
  auto* ev = reinterpret_cast<Event*>(e);
  auto* s = reinterpret_cast<Stream*>(stream);
  if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  std::lock_guard<std::mutex> lock(s->mu);
  ev->stream = s;
  ev->pos = s->queued;
  return CUDA_SUCCESS;
}
CUresult EventQuery(CUevent e) {
  auto* ev = reinterpret_cast<Event*>(e);
  return ev->stream == nullptr || ev->stream->Reached(ev->pos) ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}
CUresult EventSynchronize(CUevent e) {
  auto* ev = reinterpret_cast<Event*>(e);
  if (ev->stream != nullptr) ev->stream->WaitFor(ev->pos);
  return CUDA_SUCCESS;
}

// Unified addressing: where [addr, addr+bytes) lives. Device memory must be mapped and accessible
// chunk by chunk (a span may cross chunks); host memory is the address itself.
struct Resolved {
  bool ok = true;
  bool device = false;
};
Resolved Classify(CUdeviceptr addr, size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(S().mu);
    if (!InReservation(addr, 1)) return {};
  }
  for (size_t off = 0; off < bytes;) {
    const size_t n = std::min<size_t>(bytes - off, kChunk - (addr + off) % kChunk);
    if (DevicePtr(addr + off, n) == nullptr) return {false, true};
    off += n;
  }
  return {true, true};
}
// Copies bytes between resolved spans (device spans chunk by chunk).
void CopyResolved(CUdeviceptr dst, bool dst_dev, CUdeviceptr src, bool src_dev, size_t bytes) {
  std::lock_guard<std::mutex> vram(S().vram_mu);
  for (size_t off = 0; off < bytes;) {
    size_t n = bytes - off;
    if (dst_dev) n = std::min<size_t>(n, kChunk - (dst + off) % kChunk);
    if (src_dev) n = std::min<size_t>(n, kChunk - (src + off) % kChunk);
    uint8_t* d = dst_dev ? DevicePtr(dst + off, n) : reinterpret_cast<uint8_t*>(dst + off);
    const uint8_t* s = src_dev ? DevicePtr(src + off, n) : reinterpret_cast<const uint8_t*>(src + off);
    if (d != nullptr && s != nullptr) std::memmove(d, s, n);
    off += n;
  }
}
// Runs `fn` on `stream`, or now (after all queued work, as the legacy stream does) for stream 0.
CUresult RunOn(CUstream stream, std::function<void()> fn) {
  if (NeedCtx() != CUDA_SUCCESS) return CUDA_ERROR_INVALID_CONTEXT;
  if (stream == nullptr) {
    CtxSynchronize();
    fn();
    return CUDA_SUCCESS;
  }
  reinterpret_cast<Stream*>(stream)->Enqueue(std::move(fn));
  return CUDA_SUCCESS;
}
CUresult Memcpy(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream stream) {
  const Resolved d = Classify(dst, bytes), s = Classify(src, bytes);
  if (!d.ok || !s.ok) return CUDA_ERROR_INVALID_VALUE;  // unmapped device memory: a GPU faults
  return RunOn(stream, [=] { CopyResolved(dst, d.device, src, s.device, bytes); });
}
CUresult MemcpySync(CUdeviceptr dst, CUdeviceptr src, size_t bytes) {
  return Memcpy(dst, src, bytes, nullptr);
}
CUresult MemcpyHtoD(CUdeviceptr dst, const void* src, size_t bytes) {
  return Memcpy(dst, reinterpret_cast<CUdeviceptr>(src), bytes, nullptr);
}
CUresult MemcpyDtoH(void* dst, CUdeviceptr src, size_t bytes) {
  return Memcpy(reinterpret_cast<CUdeviceptr>(dst), src, bytes, nullptr);
}
// On a stream, both sides are device memory that the stream's device must reach (its own, or a
// peer's mapped with access for it: uhmm's copies from a peer); chunk by chunk, checked when queued
// and again when run (a block unmapped meanwhile is a device fault: nothing is copied there).
CUresult MemcpyDtoDAsync(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream stream) {
  if (stream == nullptr) return Memcpy(dst, src, bytes, stream);
  if (NeedCtx() != CUDA_SUCCESS) return CUDA_ERROR_INVALID_CONTEXT;
  const int device = reinterpret_cast<Stream*>(stream)->device;
  auto each = [=](auto fn) {
    for (size_t off = 0; off < bytes;) {
      const size_t n =
          std::min<size_t>({bytes - off, kChunk - (dst + off) % kChunk, kChunk - (src + off) % kChunk});
      if (!fn(DevicePtr(dst + off, n, device), DevicePtr(src + off, n, device), n)) return false;
      off += n;
    }
    return true;
  };
  if (!each([](uint8_t* d, uint8_t* s, size_t) { return d != nullptr && s != nullptr; })) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  reinterpret_cast<Stream*>(stream)->Enqueue([=] {
    std::lock_guard<std::mutex> vram(S().vram_mu);
    each([](uint8_t* d, uint8_t* s, size_t n) {
      if (d != nullptr && s != nullptr) std::memmove(d, s, n);
      return true;
    });
  });
  return CUDA_SUCCESS;
}
CUresult Memcpy2D(const CUDA_MEMCPY2D* c) {
  if (c == nullptr) return CUDA_ERROR_INVALID_VALUE;
  auto base = [](CUmemorytype t, const void* host, CUdeviceptr dev) {
    return t == CU_MEMORYTYPE_HOST ? reinterpret_cast<CUdeviceptr>(host) : dev;
  };
  if (c->srcMemoryType == CU_MEMORYTYPE_ARRAY || c->dstMemoryType == CU_MEMORYTYPE_ARRAY)
    return CUDA_ERROR_NOT_SUPPORTED;
  const CUdeviceptr src =
      base(c->srcMemoryType, c->srcHost, c->srcDevice) + c->srcY * c->srcPitch + c->srcXInBytes;
  const CUdeviceptr dst =
      base(c->dstMemoryType, c->dstHost, c->dstDevice) + c->dstY * c->dstPitch + c->dstXInBytes;
  for (size_t row = 0; row < c->Height; ++row) {
    if (CUresult r = Memcpy(dst + row * c->dstPitch, src + row * c->srcPitch, c->WidthInBytes, nullptr);
        r != CUDA_SUCCESS)
      return r;
  }
  return CUDA_SUCCESS;
}
template <typename T>
CUresult Memset(CUdeviceptr dst, T value, size_t n, CUstream stream) {
  const Resolved d = Classify(dst, n * sizeof(T));
  if (!d.ok) return CUDA_ERROR_INVALID_VALUE;
  return RunOn(stream, [=] {
    for (size_t i = 0; i < n; ++i)
      CopyResolved(dst + i * sizeof(T), d.device, reinterpret_cast<CUdeviceptr>(&value), false, sizeof(T));
  });
}
CUresult MemsetD8(CUdeviceptr d, unsigned char v, size_t n) { return Memset(d, v, n, nullptr); }
CUresult MemsetD32(CUdeviceptr d, unsigned int v, size_t n) { return Memset(d, v, n, nullptr); }
CUresult MemsetD32Async(CUdeviceptr d, unsigned int v, size_t n, CUstream s) { return Memset(d, v, n, s); }

// cuMemAlloc: device memory outside uhmm (a "foreign" pointer for the interposer's tests).
std::map<uintptr_t, std::vector<CUmemGenericAllocationHandle>>& Allocs() {
  static auto* a = new std::map<uintptr_t, std::vector<CUmemGenericAllocationHandle>>();
  return *a;
}
CUresult MemAlloc(CUdeviceptr* out, size_t bytes) {
  if (out == nullptr || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  const size_t size = (bytes + kChunk - 1) / kChunk * kChunk;
  if (CUresult r = MemAddressReserve(out, size, 0, 0, 0); r != CUDA_SUCCESS) return r;
  std::vector<CUmemGenericAllocationHandle> chunks;
  // On the current context's device, as cuMemAlloc allocates.
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = std::max(DeviceOf(t_ctx), 0);
  CUmemAccessDesc access{};
  access.location = prop.location;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  for (size_t off = 0; off < size; off += kChunk) {
    CUmemGenericAllocationHandle h;
    if (MemCreate(&h, kChunk, &prop, 0) != CUDA_SUCCESS) return CUDA_ERROR_OUT_OF_MEMORY;
    MemMap(*out + off, kChunk, 0, h, 0);
    MemSetAccess(*out + off, kChunk, &access, 1);
    chunks.push_back(h);
  }
  std::lock_guard<std::mutex> lock(S().mu);
  Allocs()[*out] = std::move(chunks);
  return CUDA_SUCCESS;
}
CUresult MemFree(CUdeviceptr p) {
  std::vector<CUmemGenericAllocationHandle> chunks;
  {
    std::lock_guard<std::mutex> lock(S().mu);
    auto it = Allocs().find(p);
    if (it == Allocs().end()) return CUDA_ERROR_INVALID_VALUE;
    chunks = std::move(it->second);
    Allocs().erase(it);
  }
  CtxSynchronize();
  for (size_t i = 0; i < chunks.size(); ++i) {
    MemUnmap(p + i * kChunk, kChunk);
    MemRelease(chunks[i]);
  }
  return MemAddressFree(p, chunks.size() * kChunk);
}
CUresult PointerGetAttribute(void* data, CUpointer_attribute attribute, CUdeviceptr p) {
  bool found = false;
  {
    std::lock_guard<std::mutex> lock(S().mu);
    auto it = Allocs().upper_bound(p);
    found = it != Allocs().begin() && p < std::prev(it)->first + std::prev(it)->second.size() * kChunk;
  }
  if (!found) return CUDA_ERROR_INVALID_VALUE;
  switch (attribute) {
    case CU_POINTER_ATTRIBUTE_IS_MANAGED:
      *static_cast<int*>(data) = 0;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
      *static_cast<unsigned int*>(data) = CU_MEMORYTYPE_DEVICE;
      return CUDA_SUCCESS;
    default:
      return CUDA_ERROR_NOT_SUPPORTED;
  }
}

// No managed memory here: the driver's answer for a pointer that is not managed.
CUresult MemPrefetchAsync(CUdeviceptr, size_t, CUmemLocation, unsigned int, CUstream) {
  return CUDA_ERROR_INVALID_VALUE;
}
CUresult MemAdvise(CUdeviceptr, size_t, CUmem_advise, CUmemLocation) { return CUDA_ERROR_INVALID_VALUE; }
// The CUDA 8 forms (a device, not a location), served for versions before 12.2 and exported under
// no name: the interposer must map them by version (cudaTypedefs.h).
CUresult MemPrefetchAsyncV1(CUdeviceptr, size_t, CUdevice, CUstream) { return CUDA_ERROR_INVALID_VALUE; }
// CUDA 13's cuCtxSynchronize takes the context (PFN_cuCtxSynchronize_v13000), and a driver serves
// it to callers asking at 13000, as NVIDIA's does: a caller that asks at its toolkit's version but
// calls cuda.h's argument-less form passes garbage.
CUresult CtxSynchronizeV13000(CUcontext ctx) {
  if (DeviceOf(ctx) < 0) return CUDA_ERROR_INVALID_CONTEXT;
  const CUcontext saved = t_ctx;
  t_ctx = ctx;
  const CUresult r = CtxSynchronize();
  t_ctx = saved;
  return r;
}
CUresult MemAdviseV1(CUdeviceptr, size_t, CUmem_advise, CUdevice) { return CUDA_ERROR_INVALID_VALUE; }

// Kernels: a CUfunction is a host function taking the launch's parameter array.
struct Kernel {
  void (*fn)(void** params);
};
CUresult LaunchKernel(CUfunction f, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int,
                      unsigned int, unsigned int, CUstream stream, void** params, void**) {
  if (f == nullptr) return CUDA_ERROR_INVALID_HANDLE;
  auto* k = reinterpret_cast<Kernel*>(f);
  return RunOn(stream, [k, params] {
    // Ordered with the copies before and after it, as on a GPU (and visibly so to ThreadSanitizer);
    // not held while it runs: a kernel may wait for the host.
    { std::lock_guard<std::mutex> before(S().vram_mu); }
    k->fn(params);
    { std::lock_guard<std::mutex> after(S().vram_mu); }
  });
}

struct Entry {
  const char* name;
  void* fn;
};
#define UHMM_FAKE(name, impl) \
  Entry { #name, reinterpret_cast < void*>(static_cast <decltype(&::name)>(&impl)) }
const Entry kEntries[] = {
    UHMM_FAKE(cuInit, Init),
    UHMM_FAKE(cuDriverGetVersion, DriverGetVersion),
    UHMM_FAKE(cuGetErrorName, GetErrorName),
    UHMM_FAKE(cuGetErrorString, GetErrorString),
    UHMM_FAKE(cuDeviceGetCount, DeviceGetCount),
    UHMM_FAKE(cuDeviceGet, DeviceGet),
    UHMM_FAKE(cuDeviceCanAccessPeer, DeviceCanAccessPeer),
    UHMM_FAKE(cuDeviceGetName, DeviceGetName),
    UHMM_FAKE(cuDeviceGetAttribute, DeviceGetAttribute),
    UHMM_FAKE(cuDevicePrimaryCtxRetain, PrimaryCtxRetain),
    UHMM_FAKE(cuDevicePrimaryCtxRelease, PrimaryCtxRelease),
    UHMM_FAKE(cuCtxSetCurrent, CtxSetCurrent),
    UHMM_FAKE(cuCtxGetCurrent, CtxGetCurrent),
    UHMM_FAKE(cuCtxGetDevice, CtxGetDevice),
    UHMM_FAKE(cuCtxSynchronize, CtxSynchronize),
    UHMM_FAKE(cuMemGetInfo, MemGetInfo),
    UHMM_FAKE(cuMemGetAllocationGranularity, MemGetAllocationGranularity),
    UHMM_FAKE(cuMemAddressReserve, MemAddressReserve),
    UHMM_FAKE(cuMemAddressFree, MemAddressFree),
    UHMM_FAKE(cuMemCreate, MemCreate),
    UHMM_FAKE(cuMemRelease, MemRelease),
    UHMM_FAKE(cuMemMap, MemMap),
    UHMM_FAKE(cuMemUnmap, MemUnmap),
    UHMM_FAKE(cuMemSetAccess, MemSetAccess),
    UHMM_FAKE(cuMemHostRegister, MemHostRegister),
    UHMM_FAKE(cuMemHostUnregister, MemHostUnregister),
    UHMM_FAKE(cuMemAllocHost, MemAllocHost),
    UHMM_FAKE(cuMemFreeHost, MemFreeHost),
    UHMM_FAKE(cuMemcpyHtoDAsync, MemcpyHtoDAsync),
    UHMM_FAKE(cuMemcpyDtoHAsync, MemcpyDtoHAsync),
    UHMM_FAKE(cuMemsetD8Async, MemsetD8Async),
    UHMM_FAKE(cuStreamCreate, StreamCreate),
    UHMM_FAKE(cuStreamDestroy, StreamDestroy),
    UHMM_FAKE(cuStreamSynchronize, StreamSynchronize),
    UHMM_FAKE(cuEventCreate, EventCreate),
    UHMM_FAKE(cuEventDestroy, EventDestroy),
    UHMM_FAKE(cuEventRecord, EventRecord),
    UHMM_FAKE(cuEventQuery, EventQuery),
    UHMM_FAKE(cuEventSynchronize, EventSynchronize),
    UHMM_FAKE(cuMemcpy, MemcpySync),
    UHMM_FAKE(cuMemcpyAsync, Memcpy),
    UHMM_FAKE(cuMemcpyHtoD, MemcpyHtoD),
    UHMM_FAKE(cuMemcpyDtoH, MemcpyDtoH),
    UHMM_FAKE(cuMemcpyDtoD, MemcpySync),
    UHMM_FAKE(cuMemcpyDtoDAsync, MemcpyDtoDAsync),
    UHMM_FAKE(cuMemcpy2D, Memcpy2D),
    UHMM_FAKE(cuMemsetD8, MemsetD8),
    UHMM_FAKE(cuMemsetD32, MemsetD32),
    UHMM_FAKE(cuMemsetD32Async, MemsetD32Async),
    UHMM_FAKE(cuMemAlloc, MemAlloc),
    UHMM_FAKE(cuMemFree, MemFree),
    UHMM_FAKE(cuPointerGetAttribute, PointerGetAttribute),
    UHMM_FAKE(cuLaunchKernel, LaunchKernel),
    UHMM_FAKE(cuMemPrefetchAsync, MemPrefetchAsync),
    UHMM_FAKE(cuMemAdvise, MemAdvise),
};

}  // namespace

extern "C" __attribute__((visibility("default"))) CUresult cuGetProcAddress_v2(
    const char* symbol, void** fn, int version, cuuint64_t, CUdriverProcAddressQueryResult* status) {
  if (version >= 13000 && std::strcmp(symbol, "cuCtxSynchronize") == 0) {
    *fn = reinterpret_cast<void*>(&CtxSynchronizeV13000);
    if (status) *status = CU_GET_PROC_ADDRESS_SUCCESS;
    return CUDA_SUCCESS;
  }
  if (version < 12020 &&
      (std::strcmp(symbol, "cuMemPrefetchAsync") == 0 || std::strcmp(symbol, "cuMemAdvise") == 0)) {
    *fn = std::strcmp(symbol, "cuMemAdvise") == 0 ? reinterpret_cast<void*>(&MemAdviseV1)
                                                  : reinterpret_cast<void*>(&MemPrefetchAsyncV1);
    if (status) *status = CU_GET_PROC_ADDRESS_SUCCESS;
    return CUDA_SUCCESS;
  }
  for (const Entry& e : kEntries) {
    if (std::strcmp(e.name, symbol) == 0) {
      *fn = e.fn;
      if (status) *status = CU_GET_PROC_ADDRESS_SUCCESS;
      return CUDA_SUCCESS;
    }
  }
  *fn = nullptr;
  if (status) *status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  return CUDA_ERROR_NOT_FOUND;
}

// For the interposer's tests: a "kernel" from a host function, and device memory as a kernel sees it.
extern "C" __attribute__((visibility("default"))) CUfunction uhmm_fake_cuda_kernel(
    void (*fn)(void** params)) {
  static std::mutex mu;
  static auto* kernels = new std::map<void (*)(void**), Kernel>();  // process lifetime, like modules
  std::lock_guard<std::mutex> lock(mu);
  return reinterpret_cast<CUfunction>(&kernels->try_emplace(fn, Kernel{fn}).first->second);
}
extern "C" __attribute__((visibility("default"))) void* uhmm_fake_cuda_device_view(CUdeviceptr addr,
                                                                                   size_t bytes) {
  return DevicePtr(addr, bytes, -1);
}
// As a kernel on device `device` sees it: nullptr where that device has no access.
extern "C" __attribute__((visibility("default"))) void* uhmm_fake_cuda_device_view_on(CUdeviceptr addr,
                                                                                      size_t bytes,
                                                                                      int device) {
  return DevicePtr(addr, bytes, device);
}
