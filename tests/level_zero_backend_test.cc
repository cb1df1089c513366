// The Level Zero backend's own behaviour, through the real Level Zero loader with the emulated
// driver (tests/fake_level_zero) as its only driver: it reports itself unavailable with the reason
// when there is no loader or no driver, refuses devices that do not honour the reserve address,
// intercepts kernel launches with the loader's tracer (transparent mode), supports explicit
// prefetch around kernels, waits for kernels before evicting their memory, and turns a copy the
// driver fails during fault-back into SIGBUS. The behaviour suites cover the rest
// (level_zero_emulated.*).
#include <dlfcn.h>
#include <level_zero/ze_api.h>

#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace uhmm::testing {
namespace {

constexpr uint32_t kGroupSize = 64;

Config Emulated(bool transparent) {
  Config c;
  c.backend = "level_zero";
  c.transparent_launch = transparent;
  c.fault_threads = 2;
  c.device_pool_bytes = 16 * kMiB;
  setenv("ZE_ENABLE_ALT_DRIVERS", UHMM_FAKE_ZE_DRIVER, 1);  // read at the loader's first zeInit
  return c;
}

// An application's Level Zero objects in the runtime's context: a compute immediate list, an event
// and the emulated driver's `add_u32` kernel (p[i] += value for i < n). The module is a stand-in
// SPIR-V blob; the emulated driver maps kernel names to host code.
class App {
 public:
  explicit App(Runtime& rt, int device = 0) {
    absl::StatusOr<uhmm_native_handles_t> h = rt.NativeHandles(device);
    EXPECT_TRUE(h.ok()) << h.status();
    ctx_ = static_cast<ze_context_handle_t>(h->context);
    dev_ = static_cast<ze_device_handle_t>(h->device);
    EXPECT_NE(ctx_, nullptr);
    ze_command_queue_desc_t qd = {
        ZE_STRUCTURE_TYPE_COMMAND_QUEUE_DESC, nullptr, 0, 0, 0, ZE_COMMAND_QUEUE_MODE_ASYNCHRONOUS,
        ZE_COMMAND_QUEUE_PRIORITY_NORMAL};
    EXPECT_EQ(zeCommandListCreateImmediate(ctx_, dev_, &qd, &list_), ZE_RESULT_SUCCESS);
    ze_event_pool_desc_t pd = {ZE_STRUCTURE_TYPE_EVENT_POOL_DESC, nullptr, ZE_EVENT_POOL_FLAG_HOST_VISIBLE,
                               1};
    EXPECT_EQ(zeEventPoolCreate(ctx_, &pd, 0, nullptr, &pool_), ZE_RESULT_SUCCESS);
    ze_event_desc_t ed = {ZE_STRUCTURE_TYPE_EVENT_DESC, nullptr, 0, ZE_EVENT_SCOPE_FLAG_HOST,
                          ZE_EVENT_SCOPE_FLAG_HOST};
    EXPECT_EQ(zeEventCreate(pool_, &ed, &done_), ZE_RESULT_SUCCESS);
    const uint32_t spirv[] = {0x07230203u, 0x00010000u, 0, 8, 0};
    ze_module_desc_t md = {};
    md.stype = ZE_STRUCTURE_TYPE_MODULE_DESC;
    md.format = ZE_MODULE_FORMAT_IL_SPIRV;
    md.inputSize = sizeof(spirv);
    md.pInputModule = reinterpret_cast<const uint8_t*>(spirv);
    EXPECT_EQ(zeModuleCreate(ctx_, dev_, &md, &module_, nullptr), ZE_RESULT_SUCCESS);
    ze_kernel_desc_t kd = {ZE_STRUCTURE_TYPE_KERNEL_DESC, nullptr, 0, "add_u32"};
    EXPECT_EQ(zeKernelCreate(module_, &kd, &add_), ZE_RESULT_SUCCESS);
    EXPECT_EQ(zeKernelSetGroupSize(add_, kGroupSize, 1, 1), ZE_RESULT_SUCCESS);
  }
  ~App() {
    zeKernelDestroy(add_);
    zeModuleDestroy(module_);
    zeEventDestroy(done_);
    zeEventPoolDestroy(pool_);
    zeCommandListDestroy(list_);
  }

  // Queues add_u32 over n words at p; with `wait`, signals an event of ours and waits for it.
  void Add(uint32_t* p, uint32_t value, uint32_t n, bool wait = true) {
    ASSERT_EQ(zeKernelSetArgumentValue(add_, 0, sizeof(p), &p), ZE_RESULT_SUCCESS);
    ASSERT_EQ(zeKernelSetArgumentValue(add_, 1, sizeof(value), &value), ZE_RESULT_SUCCESS);
    ASSERT_EQ(zeKernelSetArgumentValue(add_, 2, sizeof(n), &n), ZE_RESULT_SUCCESS);
    ze_group_count_t groups = {(n + kGroupSize - 1) / kGroupSize, 1, 1};
    ASSERT_EQ(zeCommandListAppendLaunchKernel(list_, add_, &groups, wait ? done_ : nullptr, 0, nullptr),
              ZE_RESULT_SUCCESS);
    if (!wait) return;
    ASSERT_EQ(zeEventHostSynchronize(done_, UINT64_MAX), ZE_RESULT_SUCCESS);
    ASSERT_EQ(zeEventHostReset(done_), ZE_RESULT_SUCCESS);
  }
  ze_command_list_handle_t list() const { return list_; }

 private:
  ze_context_handle_t ctx_ = nullptr;
  ze_device_handle_t dev_ = nullptr;
  ze_command_list_handle_t list_ = nullptr;
  ze_event_pool_handle_t pool_ = nullptr;
  ze_event_handle_t done_ = nullptr;
  ze_module_handle_t module_ = nullptr;
  ze_kernel_handle_t add_ = nullptr;
};

std::unique_ptr<Runtime> CreateEmulated(const Config& c) {
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Create(c);
  EXPECT_TRUE(rt.ok()) << rt.status();
  return rt.ok() ? std::move(*rt) : nullptr;
}

uint32_t* AllocWords(Runtime& rt, size_t words) {
  absl::StatusOr<void*> p = rt.Allocate(words * sizeof(uint32_t));
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? static_cast<uint32_t*>(*p) : nullptr;
}

TEST(LevelZeroBackendTest, WithoutTheLoaderOrADriverItIsUnavailableAndSaysWhy) {
  // The loader is loaded and initialized once per process: ask in fresh children.
  std::string msg = StatusInFreshChild([] {
    Config c = Emulated(false);
    c.ze_loader = "/nonexistent/libze_loader.so.1";
    return Runtime::Create(c).status();
  });
  EXPECT_EQ(msg.rfind("UNAVAILABLE: ", 0), 0u) << msg;
  EXPECT_NE(msg.find("/nonexistent/libze_loader.so.1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("install libze1"), std::string::npos) << msg;

  msg = StatusInFreshChild([] {
    Config c = Emulated(false);
    unsetenv("ZE_ENABLE_ALT_DRIVERS");  // only the drivers installed on this machine
    return Runtime::Create(c).status();
  });
  if (msg.rfind("OK", 0) == 0) GTEST_SKIP() << "this machine has a Level Zero GPU driver";
  EXPECT_EQ(msg.rfind("UNAVAILABLE: ", 0), 0u) << msg;
  EXPECT_NE(msg.find("zeInit"), std::string::npos) << msg;
}

TEST(LevelZeroBackendTest, ADeviceThatDoesNotHonourTheReserveAddressIsRefusedClearly) {
  const std::string msg = StatusInFreshChild([] {
    setenv("UHMM_FAKE_ZE_IGNORE_HINTS", "1", 1);  // the emulated driver places reservations itself
    return Runtime::Create(Emulated(false)).status();
  });
  EXPECT_EQ(msg.rfind("UNAVAILABLE: ", 0), 0u) << msg;
  EXPECT_NE(msg.find("only a hint"), std::string::npos) << msg;
  EXPECT_NE(msg.find("zeVirtualMemReserve"), std::string::npos) << msg;
}

TEST(LevelZeroBackendTest, TheGpuComesFromTheConfig) {
  Config c = Emulated(false);
  c.ze_device = 1;  // the emulated driver has one GPU
  // The named backend refuses it: a configuration mistake, reported as such with the reason.
  absl::Status s = Runtime::Create(c).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("ze_device (UHMM_ZE_DEVICE) names Level Zero GPU 1"), std::string::npos) << s;
  // A list: a GPU the machine lacks, and lists that do not parse.
  c.ze_device = 0;
  c.ze_devices = "0,7";
  s = Runtime::Create(c).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("ze_devices (UHMM_ZE_DEVICES) names Level Zero GPU 7"), std::string::npos) << s;
  for (const char* bad : {"0,0", "x", "-3"}) {
    c.ze_devices = bad;
    s = Runtime::Create(c).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad << ": " << s;
  }
}

TEST(LevelZeroBackendTest, OnePointerAndNativeHandles) {
  std::unique_ptr<Runtime> rt = CreateEmulated(Emulated(false));
  ASSERT_NE(rt, nullptr);
  EXPECT_EQ(rt->backend_name(), "level_zero");
  absl::StatusOr<uhmm_native_handles_t> h = rt->NativeHandles(0);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_NE(h->driver, nullptr);
  EXPECT_NE(h->device, nullptr);
  EXPECT_NE(h->context, nullptr);
  EXPECT_EQ(rt->NativeHandles(1).status().code(), absl::StatusCode::kInvalidArgument);

  uint32_t* p = AllocWords(*rt, kBlockSize / 4);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % kBlockSize, 0u);
  for (size_t i = 0; i < kBlockSize / 4; ++i) p[i] = static_cast<uint32_t>(i);
  ASSERT_TRUE(rt->Migrate(p, kBlockSize, 0).ok());
  // The device page backing managed address A has device address A.
  uint32_t word = 0;
  ASSERT_TRUE(Access(*rt, 0)->DeviceRead(reinterpret_cast<uint64_t>(p + 1000), &word, 4).ok());
  EXPECT_EQ(word, 1000u);
  EXPECT_EQ(p[77], 77u);  // faults back
  ASSERT_TRUE(rt->Free(p).ok());
}

TEST(LevelZeroBackendTest, TransparentLaunchThroughTheLoaderTracer) {
  std::unique_ptr<Runtime> rt = CreateEmulated(Emulated(true));
  ASSERT_NE(rt, nullptr);
  ASSERT_TRUE(rt->transparent_launch_enabled())
      << "the loader's tracing layer did not load (ZE_ENABLE_TRACING_LAYER)";
  App app(*rt);
  constexpr uint32_t kWords = 3 * kBlockSize / 4 + 123;
  uint32_t* p = AllocWords(*rt, kWords);
  ASSERT_NE(p, nullptr);
  for (uint32_t round = 1; round <= 3; ++round) {
    for (uint32_t i = 0; i < kWords; i += 7) p[i] = i;  // CPU writes between kernels
    app.Add(p, round, kWords);
    for (uint32_t i = 0; i < kWords; i += 7) ASSERT_EQ(p[i], i + round) << "word " << i;
  }
  Stats st = rt->stats();
  EXPECT_GE(st.launch_syncs, 3u);
  EXPECT_GT(st.cpu_faults, 0u);
  ASSERT_TRUE(rt->Free(p).ok());
}

// ctest runs this with the emulated driver's two GPUs (level_zero.two_gpus*), with and without peer
// access; it skips where there is one.
TEST(LevelZeroBackendTwoGpusTest, EachLaunchIsMadeCoherentForTheGpuItsListBelongsTo) {
  Config c = Emulated(true);
  c.ze_devices = "all";
  std::unique_ptr<Runtime> rt = CreateEmulated(c);
  ASSERT_NE(rt, nullptr);
  if (rt->device_count() < 2) GTEST_SKIP() << "one Level Zero GPU here";
  ASSERT_TRUE(rt->transparent_launch_enabled());
  const bool peer = rt->device_stats(0)->peer_access & 2;
  App app0(*rt, 0), app1(*rt, 1);
  constexpr uint32_t kWords = 2 * kBlockSize / 4 + 1024;  // a page into a third block
  uint32_t* p = AllocWords(*rt, kWords);
  ASSERT_NE(p, nullptr);
  for (uint32_t i = 0; i < kWords; ++i) p[i] = i;
  // A kernel on GPU 1's list: the tracer names GPU 1, so the data go there (a kernel on GPU 1
  // reaching GPU 0's memory without peer access would be a device fault).
  app1.Add(p, 1, kWords);
  absl::StatusOr<std::vector<int32_t>> res = rt->Residency(p, kWords * 4);
  ASSERT_TRUE(res.ok()) << res.status();
  EXPECT_EQ(std::count(res->begin(), res->end(), 1), static_cast<long>(res->size()));
  // Then on GPU 0's: with peer access the data stay on GPU 1 and GPU 0 reads them there; without,
  // they move to GPU 0.
  app0.Add(p, 2, kWords);
  res = rt->Residency(p, kWords * 4);
  ASSERT_TRUE(res.ok()) << res.status();
  EXPECT_EQ(std::count(res->begin(), res->end(), peer ? 1 : 0), static_cast<long>(res->size()))
      << (peer ? "peer" : "no peer");
  for (uint32_t i = 0; i < kWords; ++i) ASSERT_EQ(p[i], i + 3) << "word " << i;
  ASSERT_TRUE(rt->Free(p).ok());
}

TEST(LevelZeroBackendTest, ExplicitPrefetchAroundKernelsWithoutTransparentMode) {
  std::unique_ptr<Runtime> rt = CreateEmulated(Emulated(false));
  ASSERT_NE(rt, nullptr);
  EXPECT_FALSE(rt->transparent_launch_enabled());
  App app(*rt);
  constexpr uint32_t kWords = kBlockSize / 4;
  uint32_t* p = AllocWords(*rt, kWords);
  ASSERT_NE(p, nullptr);
  for (uint32_t i = 0; i < kWords; ++i) p[i] = 2 * i;
  const uint64_t fill_faults = rt->stats().cpu_faults;  // first touches (zero-fill)
  ASSERT_TRUE(rt->PrefetchOnQueue(p, kBlockSize, 0, app.list()).ok());
  app.Add(p, 5, kWords, /*wait=*/false);
  // To the host on the same list: waits for the kernel first.
  ASSERT_TRUE(rt->PrefetchOnQueue(p, kBlockSize, kHost, app.list()).ok());
  EXPECT_EQ(rt->stats().cpu_faults, fill_faults);
  for (uint32_t i = 0; i < kWords; ++i) ASSERT_EQ(p[i], 2 * i + 5) << "word " << i;
  ASSERT_TRUE(rt->Free(p).ok());
}

TEST(LevelZeroBackendTest, EvictionWaitsForKernelsStillRunning) {
  // Explicit mode: the tracer still tracks launches, so eviction can wait for them.
  std::unique_ptr<Runtime> rt = CreateEmulated(Emulated(false));
  ASSERT_NE(rt, nullptr);
  App app(*rt);
  // Four times the 16 MiB pool, in 2 MiB slices: each prefetch evicts a slice whose kernel was
  // queued without a wait (the tracer gave it an event of uhmm's).
  constexpr size_t kBytes = 64 * kMiB;
  constexpr uint32_t kSliceWords = kBlockSize / 4;
  uint32_t* p = AllocWords(*rt, kBytes / 4);
  ASSERT_NE(p, nullptr);
  for (size_t i = 0; i < kBytes / 4; ++i) p[i] = static_cast<uint32_t>(i);
  for (size_t s = 0; s < kBytes / kBlockSize; ++s) {
    uint32_t* slice = p + s * kSliceWords;
    ASSERT_TRUE(rt->PrefetchOnQueue(slice, kBlockSize, 0, nullptr).ok()) << "slice " << s;
    app.Add(slice, 9, kSliceWords, /*wait=*/false);
  }
  ASSERT_TRUE(rt->EvictDevice(0).ok());
  for (size_t i = 0; i < kBytes / 4; ++i) ASSERT_EQ(p[i], static_cast<uint32_t>(i) + 9) << "word " << i;
  EXPECT_GT(rt->stats().evicted_chunks, 0u);
  ASSERT_TRUE(rt->Free(p).ok());
}

TEST(LevelZeroBackendDeathTest, ACopyTheDriverFailsDuringFaultBackEndsInSigbus) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        std::unique_ptr<Runtime> rt = CreateEmulated(Emulated(false));
        if (rt == nullptr) std::exit(2);
        auto* p = static_cast<volatile uint32_t*>(AllocWords(*rt, kBlockSize / 4));
        p[0] = 1;
        if (!rt->Migrate(const_cast<uint32_t*>(p), kBlockSize, 0).ok()) std::exit(3);
        // The emulated driver's own fault injection: the copy fails inside the driver, and its
        // barrier event reports ZE_RESULT_ERROR_DEVICE_LOST.
        void* drv = dlopen(std::getenv("ZE_ENABLE_ALT_DRIVERS"), RTLD_NOW | RTLD_NOLOAD);
        auto fail =
            drv ? reinterpret_cast<void (*)(int)>(dlsym(drv, "uhmm_fake_ze_fail_next_copies")) : nullptr;
        if (fail == nullptr) std::exit(4);
        fail(1);
        signal(SIGBUS, SIG_DFL);  // the default disposition (sanitizers install their own)
        (void)p[0];
        std::exit(0);
      },
      ::testing::KilledBySignal(SIGBUS), "");
}

}  // namespace
}  // namespace uhmm::testing
