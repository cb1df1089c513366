// The two-GPU rows of uhmm_bench (GPUs 0 and 1): a device-to-device move, cudaMemPrefetchAsync
// against uhmm_migrate (one hop on GPU 1's copy engine where GPU 1 reaches GPU 0, else through
// RAM), and a kernel on GPU 1 reading
// data that lies on GPU 0 in place (peer access), cudaMallocManaged with PREFERRED_LOCATION 0 and
// ACCESSED_BY 1 against uhmm's peer mapping. On a machine with one GPU both rows are printed as not
// measured. Each side runs o.reps times; a kernel checks every word after each run.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench/bench_harness.h"
#include "uhmm/uhmm.h"

namespace uhmm::bench {
namespace {

constexpr const char* kD2D = "GPU0 -> GPU1 move";
constexpr const char* kPeerRead = "GPU1 reads data on GPU0";
constexpr size_t kBlock = size_t{2} << 20;

cudaMemLocation OnGpu(int device) {
  cudaMemLocation loc{};
  loc.type = cudaMemLocationTypeDevice;
  loc.id = device;
  return loc;
}

__global__ void CountWrongOn(const uint64_t* p, size_t n, uint64_t seed, unsigned long long* wrong) {
  unsigned long long mine = 0;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    mine += p[i] != Pattern(seed, i);
  }
  if (mine) atomicAdd(wrong, mine);
}

using Status = std::string;  // "" or what failed

#define PEER_CUDA(call)                                                                                  \
  do {                                                                                                   \
    const cudaError_t e_ = (call);                                                                       \
    if (e_ != cudaSuccess)                                                                               \
      return std::string(#call).substr(0, std::string(#call).find('(')) + ": " + cudaGetErrorString(e_); \
  } while (0)
#define PEER_UHMM(call)                                                                             \
  do {                                                                                              \
    if ((call) != UHMM_OK)                                                                          \
      return std::string(#call).substr(0, std::string(#call).find('(')) + ": " + uhmm_last_error(); \
  } while (0)

struct Sides {
  std::vector<double> move, read;  // GB/s samples
  size_t wrong = 0;
  Status error;
};

// What GPU 1 uses: a stream and a counter word.
struct Gpu1 {
  cudaStream_t stream = nullptr;
  unsigned long long* counter = nullptr;
  int blocks = 0;
};

// A kernel on GPU 1 over [p, p+bytes) that counts wrong words; *seconds is its time.
Status ReadOnGpu1(const Gpu1& g, const uint64_t* p, size_t bytes, uint64_t seed, size_t* wrong,
                  double* seconds) {
  PEER_CUDA(cudaSetDevice(1));
  PEER_CUDA(cudaMemsetAsync(g.counter, 0, sizeof(*g.counter), g.stream));
  PEER_CUDA(cudaStreamSynchronize(g.stream));
  const auto t0 = Clock::now();
  CountWrongOn<<<g.blocks, 256, 0, g.stream>>>(p, bytes / 8, seed, g.counter);
  PEER_CUDA(cudaGetLastError());
  PEER_CUDA(cudaStreamSynchronize(g.stream));
  *seconds = Seconds(Clock::now() - t0);
  unsigned long long n = 0;
  PEER_CUDA(cudaMemcpy(&n, g.counter, sizeof(n), cudaMemcpyDeviceToHost));
  *wrong += n;
  return {};
}

// Fills the managed data with `seed`'s pattern on the CPU and prefetches it to GPU 0.
Status PutOnGpu0(uint64_t* p, size_t bytes, uint64_t seed) {
  FillCpu(p, bytes, seed);
  PEER_CUDA(cudaSetDevice(0));
  PEER_CUDA(cudaMemPrefetchAsync(p, bytes, OnGpu(0), 0, nullptr));
  PEER_CUDA(cudaDeviceSynchronize());
  return {};
}

Status MeasureUvm(const Options& o, const Gpu1& g, size_t bytes, Sides* s) {
  uint64_t* p = nullptr;
  PEER_CUDA(cudaMallocManaged(&p, bytes));
  Status st = [&]() -> Status {
    for (int r = 0; r < o.reps; ++r) {
      const uint64_t seed = 1000 + r;
      if (Status c = PutOnGpu0(p, bytes, seed); !c.empty()) return c;
      PEER_CUDA(cudaSetDevice(1));
      const auto t0 = Clock::now();
      PEER_CUDA(cudaMemPrefetchAsync(p, bytes, OnGpu(1), 0, g.stream));
      PEER_CUDA(cudaStreamSynchronize(g.stream));
      s->move.push_back(bytes / Seconds(Clock::now() - t0) / 1e9);
      double unused = 0;
      if (Status c = ReadOnGpu1(g, p, bytes, seed, &s->wrong, &unused); !c.empty()) return c;
    }
    // Read in place: the data prefer GPU 0 and GPU 1 maps them there.
    PEER_CUDA(cudaMemAdvise(p, bytes, cudaMemAdviseSetPreferredLocation, OnGpu(0)));
    PEER_CUDA(cudaMemAdvise(p, bytes, cudaMemAdviseSetAccessedBy, OnGpu(1)));
    for (int r = 0; r < o.reps; ++r) {
      const uint64_t seed = 2000 + r;
      if (Status c = PutOnGpu0(p, bytes, seed); !c.empty()) return c;
      double secs = 0;
      if (Status c = ReadOnGpu1(g, p, bytes, seed, &s->wrong, &secs); !c.empty()) return c;
      s->read.push_back(bytes / secs / 1e9);
    }
    return {};
  }();
  cudaFree(p);
  return st;
}

Status MeasureUhmm(const Options& o, const Gpu1& g, size_t bytes, Sides* s) {
  // GPUs 0 and 1 in one runtime (the C API takes the list from the environment).
  const char* old = std::getenv("UHMM_CUDA_DEVICES");
  const std::string saved = old ? old : "";
  setenv("UHMM_CUDA_DEVICES", "0,1", 1);
  uhmm_config_t cfg;
  uhmm_config_init(&cfg);
  cfg.backend = "cuda";
  cfg.transparent_launch = 0;  // explicit moves only: the rows time what they ask for
  uhmm_runtime_t* rt = nullptr;
  const uhmm_status_t created = uhmm_create(&cfg, &rt);
  if (old) {
    setenv("UHMM_CUDA_DEVICES", saved.c_str(), 1);
  } else {
    unsetenv("UHMM_CUDA_DEVICES");
  }
  if (created != UHMM_OK) return std::string("uhmm_create (UHMM_CUDA_DEVICES=0,1): ") + uhmm_last_error();
  void* mem = nullptr;
  Status st = [&]() -> Status {
    if (uhmm_device_count(rt) < 2) return "uhmm opened fewer than 2 GPUs";
    PEER_UHMM(uhmm_alloc(rt, bytes, &mem));
    auto* p = static_cast<uint64_t*>(mem);
    for (int r = 0; r < o.reps; ++r) {
      const uint64_t seed = 3000 + r;
      FillCpu(p, bytes, seed);
      PEER_UHMM(uhmm_migrate(rt, p, bytes, 0));
      const auto t0 = Clock::now();
      PEER_UHMM(uhmm_migrate(rt, p, bytes, 1));
      s->move.push_back(bytes / Seconds(Clock::now() - t0) / 1e9);
      double unused = 0;
      if (Status c = ReadOnGpu1(g, p, bytes, seed, &s->wrong, &unused); !c.empty()) return c;
    }
    uhmm_device_stats_t d1{};
    PEER_UHMM(uhmm_get_device_stats(rt, 1, &d1));
    if (!(d1.peer_access & 1)) return "GPU 1 has no peer access to GPU 0: nothing to read in place";
    for (int r = 0; r < o.reps; ++r) {
      const uint64_t seed = 4000 + r;
      FillCpu(p, bytes, seed);
      PEER_UHMM(uhmm_migrate(rt, p, bytes, 0));
      double secs = 0;
      if (Status c = ReadOnGpu1(g, p, bytes, seed, &s->wrong, &secs); !c.empty()) return c;
      s->read.push_back(bytes / secs / 1e9);
    }
    return {};
  }();
  if (mem != nullptr) uhmm_free(rt, mem);
  uhmm_destroy(rt);
  return st;
}

Row MakeRow(const char* name, const std::vector<double>& uvm, const std::vector<double>& uhmm, const Sides& a,
            const Sides& b, const std::string& note) {
  Row row;
  row.name = name;
  row.unit = "GB/s";
  row.baseline = a.error.empty() && !uvm.empty() ? Median(uvm) : std::nan("");
  row.uhmm = b.error.empty() && !uhmm.empty() ? Median(uhmm) : std::nan("");
  row.wrong = a.wrong + b.wrong;
  row.note = note;
  if (!a.error.empty()) row.note += "; UVM: " + a.error;
  if (!b.error.empty()) row.note += "; uhmm: " + b.error;
  return row;
}

}  // namespace

void RunPeerRows(const Options& o, Table* t) {
  if (!Selected(o, kD2D) && !Selected(o, kPeerRead)) return;
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess) gpus = 0;
  if (gpus < 2) {
    for (const char* name : {kD2D, kPeerRead}) {
      Row row;
      row.name = name;
      row.unit = "GB/s";
      row.baseline = row.uhmm = std::nan("");
      row.note = "not measured: " + std::to_string(gpus) + " GPU here, the row needs 2";
      t->Add(std::move(row));
    }
    return;
  }
  // Half the data size of the other rows, and never more than a quarter of either GPU's free
  // memory: cudaMallocManaged must not be asked for more than a card has.
  size_t bytes = o.bytes / 2;
  for (int d = 0; d < 2; ++d) {
    size_t free_bytes = 0, total = 0;
    if (cudaSetDevice(d) == cudaSuccess && cudaMemGetInfo(&free_bytes, &total) == cudaSuccess) {
      bytes = std::min(bytes, free_bytes / 4);
    }
  }
  bytes = std::max(bytes & ~(kBlock - 1), kBlock);
  int peer = 0;
  cudaDeviceCanAccessPeer(&peer, 1, 0);
  Gpu1 g;
  Sides uvm, uhmm;
  int sms = 0;
  if (cudaSetDevice(1) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 1) != cudaSuccess ||
      cudaStreamCreateWithFlags(&g.stream, cudaStreamNonBlocking) != cudaSuccess ||
      cudaMalloc(&g.counter, sizeof(*g.counter)) != cudaSuccess) {
    uvm.error = uhmm.error = "setting up GPU 1 failed";
  } else {
    g.blocks = std::max(sms, 1) * 16;
    uvm.error = MeasureUvm(o, g, bytes, &uvm);
    uhmm.error = MeasureUhmm(o, g, bytes, &uhmm);
  }
  if (g.counter) cudaFree(g.counter);
  if (g.stream) cudaStreamDestroy(g.stream);
  cudaSetDevice(0);
  const std::string size = std::to_string(bytes >> 20) + " MiB";
  t->Add(MakeRow(kD2D, uvm.move, uhmm.move, uvm, uhmm,
                 size + ", GPU 0 to GPU 1: cudaMemPrefetchAsync vs uhmm_migrate (one hop with peer access, "
                        "else through RAM)"));
  t->Add(MakeRow(kPeerRead, uvm.read, uhmm.read, uvm, uhmm,
                 size + " on GPU 0 read by a kernel on GPU 1 (cudaDeviceCanAccessPeer " +
                     std::to_string(peer) +
                     "): UVM PREFERRED_LOCATION 0 + ACCESSED_BY 1 vs uhmm's peer mapping"));
}

}  // namespace uhmm::bench
