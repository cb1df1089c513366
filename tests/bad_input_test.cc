// Bad input gets a clear error and loses nothing: every call here fails with a specific code and a
// message, and the data of a live allocation (half on the device) is intact afterwards.
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/str_format.h"
#include "tests/test_util.h"
#include "uhmm/uhmm.h"

namespace uhmm::testing {
namespace {

class BadInputTest : public RuntimeTest {
 public:
  void SetUp() override {
    RuntimeTest::SetUp();
    UHMM_RETURN_IF_SKIPPED();
    live_ = AllocFilled(kBytes, 400);
    ASSERT_TRUE(rt_->Migrate(live_, kBytes / 2, 0).ok());
  }
  void TearDown() override {
    if (live_ == nullptr) return;  // skipped
    // Nothing was lost: residency unchanged, data intact, then a clean free.
    std::vector<int32_t> res = Residency(live_, kBytes);
    EXPECT_EQ(CountAt(res, 0), kBytes / kPageSize / 2);
    EXPECT_EQ(FirstMismatch(live_, kBytes, 400), -1);
    EXPECT_TRUE(rt_->Free(live_).ok());
    RuntimeTest::TearDown();
  }
  static constexpr size_t kBytes = 1 << 20;
  uint64_t* live_ = nullptr;
};

TEST_F(BadInputTest, NullPointerIsRejected) {
  EXPECT_ERROR(rt_->Free(nullptr), absl::StatusCode::kInvalidArgument, "NULL");
  EXPECT_ERROR(rt_->Migrate(nullptr, kPageSize, 0), absl::StatusCode::kInvalidArgument, "NULL");
  EXPECT_ERROR(rt_->Residency(nullptr, kPageSize).status(), absl::StatusCode::kInvalidArgument, "NULL");
}

TEST_F(BadInputTest, SizeZeroIsRejected) {
  EXPECT_ERROR(rt_->Allocate(0).status(), absl::StatusCode::kInvalidArgument, "size is 0");
  EXPECT_ERROR(rt_->Migrate(live_, 0, 0), absl::StatusCode::kInvalidArgument, "size is 0");
  EXPECT_ERROR(rt_->Residency(live_, 0).status(), absl::StatusCode::kInvalidArgument, "size is 0");
}

TEST_F(BadInputTest, UnalignedRangeIsRejected) {
  auto* byte = reinterpret_cast<uint8_t*>(live_);
  EXPECT_ERROR(rt_->Migrate(byte + 1, kPageSize, 0), absl::StatusCode::kInvalidArgument, "aligned");
  EXPECT_ERROR(rt_->Migrate(byte, kPageSize + 1, 0), absl::StatusCode::kInvalidArgument, "aligned");
  EXPECT_ERROR(rt_->Residency(byte + 8, kPageSize).status(), absl::StatusCode::kInvalidArgument, "aligned");
}

TEST_F(BadInputTest, UnmanagedAddressIsReported) {
  alignas(4096) static char not_managed[2 * 4096];
  void* heap = std::aligned_alloc(kPageSize, kPageSize);
  EXPECT_ERROR(rt_->Migrate(not_managed, kPageSize, 0), absl::StatusCode::kNotFound, "not managed");
  EXPECT_ERROR(rt_->Migrate(heap, kPageSize, 0), absl::StatusCode::kNotFound, "not managed");
  EXPECT_ERROR(rt_->Free(heap), absl::StatusCode::kNotFound, "not allocated by this uhmm runtime");
  EXPECT_ERROR(rt_->Residency(heap, kPageSize).status(), absl::StatusCode::kNotFound, "not managed");
  EXPECT_ERROR(rt_->DeviceAddress(heap).status(), absl::StatusCode::kNotFound, "not managed");
  std::free(heap);
}

TEST_F(BadInputTest, RangePastTheEndOfItsAllocationIsRejected) {
  EXPECT_ERROR(rt_->Migrate(live_, 2 * kBytes, 0), absl::StatusCode::kInvalidArgument, "runs past the end");
  EXPECT_ERROR(rt_->Residency(live_, 2 * kBytes).status(), absl::StatusCode::kInvalidArgument,
               "runs past the end");
}

TEST_F(BadInputTest, DoubleFreeAndInteriorFreeAreReported) {
  absl::StatusOr<void*> p = rt_->Allocate(3 * kPageSize);
  ASSERT_TRUE(p.ok());
  EXPECT_ERROR(rt_->Free(static_cast<char*>(*p) + kPageSize), absl::StatusCode::kInvalidArgument,
               "not its start");
  ASSERT_TRUE(rt_->Free(*p).ok());
  EXPECT_ERROR(rt_->Free(*p), absl::StatusCode::kNotFound, "already freed");
}

TEST_F(BadInputTest, SizeOverflowIsRejected) {
  EXPECT_ERROR(rt_->Allocate(SIZE_MAX).status(), absl::StatusCode::kInvalidArgument, "overflow");
  EXPECT_ERROR(rt_->Allocate(SIZE_MAX - kPageSize + 2).status(), absl::StatusCode::kInvalidArgument,
               "overflow");
  EXPECT_ERROR(rt_->Migrate(live_, SIZE_MAX & ~(kPageSize - 1), 0), absl::StatusCode::kInvalidArgument,
               "overflows");
  absl::StatusOr<ManagedArray<uint64_t>> arr = ManagedArray<uint64_t>::Create(*rt_, SIZE_MAX / 4);
  EXPECT_EQ(arr.status().code(), absl::StatusCode::kInvalidArgument);
}

// RAM + swap from /proc/meminfo (MemTotal + SwapTotal): what can back a managed range's data
// whenever it is not on a device. 0 when it cannot be read.
size_t HostMemoryBytes() {
  std::FILE* f = std::fopen("/proc/meminfo", "re");
  if (f == nullptr) return 0;
  size_t total_kb = 0;
  char line[256];
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    unsigned long long kb = 0;
    if (std::sscanf(line, "MemTotal: %llu kB", &kb) == 1 ||
        std::sscanf(line, "SwapTotal: %llu kB", &kb) == 1) {
      total_kb += kb;
    }
  }
  std::fclose(f);
  return total_kb * 1024;
}

// Sizes no machine here can back: 64 TiB (the address-space cap), 1 TiB, and one page more than
// RAM + swap. Sizes this machine could back are left out.
std::vector<size_t> UnbackableSizes() {
  const size_t host = HostMemoryBytes();
  std::vector<size_t> sizes = {size_t{1} << 46};
  if (host < (size_t{1} << 40)) sizes.push_back(size_t{1} << 40);
  if (host != 0) sizes.push_back(host + kPageSize);
  return sizes;
}

TEST_F(BadInputTest, HugeAllocationFailsWithOutOfMemory) {
  const size_t host = HostMemoryBytes();
  ASSERT_NE(host, 0u) << "cannot read /proc/meminfo";
  for (size_t size : UnbackableSizes()) {
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<void*> p = rt_->Allocate(size);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ASSERT_FALSE(p.ok()) << size << " bytes were allocated on a machine with " << host;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kResourceExhausted) << p.status();
    const std::string msg(p.status().message());
    EXPECT_NE(msg.find(std::to_string(size) + " bytes"), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::to_string(host) + " bytes"), std::string::npos) << msg;
    EXPECT_NE(msg.find("RAM + swap"), std::string::npos) << msg;
    EXPECT_NE(msg.find("lives in host memory whenever it is not on a device"), std::string::npos) << msg;
    EXPECT_LT(seconds, 1.0) << "refusing " << size << " bytes took " << seconds << " s";
  }
  // The runtime still allocates what fits.
  absl::StatusOr<void*> small = rt_->Allocate(kBytes);
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_TRUE(rt_->Free(*small).ok());
}

TEST_F(BadInputTest, MigrateToNonexistentDeviceIsRejected) {
  const int missing = rt_->device_count();  // 1, or 2 in the two-device configurations
  EXPECT_ERROR(rt_->Migrate(live_, kPageSize, missing), absl::StatusCode::kInvalidArgument,
               absl::StrFormat("device %d does not exist", missing));
  EXPECT_ERROR(rt_->Migrate(live_, kPageSize, -7), absl::StatusCode::kInvalidArgument,
               "device -7 does not exist");
  EXPECT_ERROR(rt_->EvictDevice(3), absl::StatusCode::kInvalidArgument, "does not exist");
}

TEST(ConfigTest, BadConfigurationIsRejectedWithTheKnobName) {
  Config c = TestConfig();
  c.fault_threads = 0;
  EXPECT_ERROR(Runtime::Create(c).status(), absl::StatusCode::kInvalidArgument, "UHMM_FAULT_THREADS");
  c = TestConfig();
  c.fault_granularity = 3000;
  EXPECT_ERROR(Runtime::Create(c).status(), absl::StatusCode::kInvalidArgument, "UHMM_FAULT_GRANULARITY");
  c = TestConfig();
  c.device_pool_bytes = 3 * kMiB;
  EXPECT_ERROR(Runtime::Create(c).status(), absl::StatusCode::kInvalidArgument, "UHMM_DEVICE_POOL_BYTES");
  c = TestConfig();
  c.backend = "no-such-gpu";
  EXPECT_ERROR(Runtime::Create(c).status(), absl::StatusCode::kInvalidArgument, "built-in backends: ");
}

TEST(ConfigTest, OutOfRangeModesAreRejectedWithTheKnobName) {
  Config c = TestConfig();
  c.sigbus_mode = static_cast<SigbusMode>(9);
  EXPECT_ERROR(Runtime::Create(c).status(), absl::StatusCode::kInvalidArgument,
               "sigbus_mode (UHMM_SIGBUS_MODE) is 9; use auto (0), poison (1) or tkill (2)");
  c = TestConfig();
  c.hugetlb = static_cast<HugetlbMode>(-1);
  EXPECT_ERROR(Runtime::Create(c).status(), absl::StatusCode::kInvalidArgument,
               "hugetlb (UHMM_HUGETLB) is -1");
  c = TestConfig();
  c.device_pool_fraction = std::nan("");
  EXPECT_ERROR(Runtime::Create(c).status(), absl::StatusCode::kInvalidArgument,
               "device_pool_fraction is nan");
}

TEST(ConfigTest, EnvironmentVariablesAreParsedAndMalformedOnesReported) {
  setenv("UHMM_FAULT_GRANULARITY", "16K", 1);
  setenv("UHMM_DEVICE_POOL_BYTES", "8M", 1);
  setenv("UHMM_SIGBUS_MODE", "tkill", 1);
  Config c = Config::FromEnv();
  EXPECT_EQ(c.fault_granularity, 16u * 1024);
  EXPECT_EQ(c.device_pool_bytes, 8u * kMiB);
  EXPECT_EQ(c.sigbus_mode, SigbusMode::kTkill);
  EXPECT_TRUE(c.Validate().ok());
  setenv("UHMM_FAULT_THREADS", "many", 1);
  EXPECT_ERROR(Config::FromEnv().Validate(), absl::StatusCode::kInvalidArgument, "UHMM_FAULT_THREADS='many'");
  unsetenv("UHMM_FAULT_GRANULARITY");
  unsetenv("UHMM_DEVICE_POOL_BYTES");
  unsetenv("UHMM_SIGBUS_MODE");
  unsetenv("UHMM_FAULT_THREADS");
}

TEST(ConfigTest, BackendKnobsAreConfigFieldsReadFromTheEnvironment) {
  const Config defaults;
  EXPECT_EQ(defaults.cuda_device, 0);
  EXPECT_EQ(defaults.ze_device, 0);
  EXPECT_TRUE(defaults.cuda_driver.empty() && defaults.cupti_library.empty() && defaults.ze_loader.empty());
  setenv("UHMM_CUDA_DEVICE", "1", 1);
  setenv("UHMM_CUDA_DRIVER", "/opt/x/libcuda.so.1", 1);
  setenv("UHMM_CUPTI_LIBRARY", "/opt/x/libcupti.so.13", 1);
  setenv("UHMM_ZE_DEVICE", "2", 1);
  setenv("UHMM_ZE_LOADER", "/opt/x/libze_loader.so.1", 1);
  Config c = Config::FromEnv();
  EXPECT_EQ(c.cuda_device, 1);
  EXPECT_EQ(c.cuda_driver, "/opt/x/libcuda.so.1");
  EXPECT_EQ(c.cupti_library, "/opt/x/libcupti.so.13");
  EXPECT_EQ(c.ze_device, 2);
  EXPECT_EQ(c.ze_loader, "/opt/x/libze_loader.so.1");
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
  setenv("UHMM_CUDA_DEVICE", "first", 1);
  EXPECT_ERROR(Config::FromEnv().Validate(), absl::StatusCode::kInvalidArgument,
               "UHMM_CUDA_DEVICE='first' is not an integer");
  setenv("UHMM_CUDA_DEVICE", "0", 1);
  setenv("UHMM_ZE_DEVICE", "2nd", 1);
  EXPECT_ERROR(Config::FromEnv().Validate(), absl::StatusCode::kInvalidArgument,
               "UHMM_ZE_DEVICE='2nd' is not an integer");
  for (const char* var :
       {"UHMM_CUDA_DEVICE", "UHMM_CUDA_DRIVER", "UHMM_CUPTI_LIBRARY", "UHMM_ZE_DEVICE", "UHMM_ZE_LOADER"}) {
    unsetenv(var);
  }
  c = TestConfig();
  c.cuda_device = -1;
  EXPECT_ERROR(Runtime::Create(c).status(), absl::StatusCode::kInvalidArgument,
               "cuda_device (UHMM_CUDA_DEVICE) is -1");
  c = TestConfig();
  c.ze_device = -2;
  EXPECT_ERROR(Runtime::Create(c).status(), absl::StatusCode::kInvalidArgument,
               "ze_device (UHMM_ZE_DEVICE) is -2");
}

TEST(ConfigTest, RenamedPolicyVariablesKeepTheirOldNamesAsAliases) {
  // Read-ahead workers and density growth are not "prefetch": new names, old ones still read.
  setenv("UHMM_PREFETCH_THREADS", "3", 1);
  setenv("UHMM_PREFETCH_THRESHOLD", "60", 1);
  Config c = Config::FromEnv();
  EXPECT_EQ(c.migration_threads, 3);
  EXPECT_EQ(c.growth_threshold, 60);
  setenv("UHMM_MIGRATION_THREADS", "5", 1);
  setenv("UHMM_GROWTH_THRESHOLD", "70", 1);
  c = Config::FromEnv();
  EXPECT_EQ(c.migration_threads, 5) << "the new name wins";
  EXPECT_EQ(c.growth_threshold, 70) << "the new name wins";
  // A malformed old name is not read when the new one is set, and a malformed new one is named.
  setenv("UHMM_PREFETCH_THREADS", "lots", 1);
  EXPECT_TRUE(Config::FromEnv().Validate().ok());
  setenv("UHMM_GROWTH_THRESHOLD", "most", 1);
  EXPECT_ERROR(Config::FromEnv().Validate(), absl::StatusCode::kInvalidArgument,
               "UHMM_GROWTH_THRESHOLD='most' is not an integer");
  for (const char* var : {"UHMM_PREFETCH_THREADS", "UHMM_PREFETCH_THRESHOLD", "UHMM_MIGRATION_THREADS",
                          "UHMM_GROWTH_THRESHOLD"}) {
    unsetenv(var);
  }
  c = TestConfig();
  c.migration_threads = 65;
  EXPECT_ERROR(Runtime::Create(c).status(), absl::StatusCode::kInvalidArgument,
               "UHMM_MIGRATION_THREADS, formerly UHMM_PREFETCH_THREADS) is 65");
  c = TestConfig();
  c.growth_threshold = 101;
  EXPECT_ERROR(Runtime::Create(c).status(), absl::StatusCode::kInvalidArgument,
               "UHMM_GROWTH_THRESHOLD, formerly UHMM_PREFETCH_THRESHOLD) is 101");
}

// The C API: the same checks come back as status codes with a per-thread message.

TEST(CApiTest, ErrorsComeBackAsCodesWithMessages) {
  uhmm_runtime_t* rt = CreateHostC();
  ASSERT_NE(rt, nullptr);
  EXPECT_STREQ(uhmm_backend_name(rt), "host");
  EXPECT_EQ(uhmm_device_count(rt), 1);
  void* p = nullptr;
  EXPECT_EQ(uhmm_alloc(rt, 0, &p), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(uhmm_last_error()).find("size is 0"), std::string::npos);
  ASSERT_EQ(uhmm_alloc(rt, 8 * kPageSize, &p), UHMM_OK);
  std::memset(p, 0x5a, 8 * kPageSize);
  EXPECT_EQ(uhmm_migrate(rt, p, 8 * kPageSize, 4), UHMM_ERROR_INVALID_ARGUMENT);
  ASSERT_EQ(uhmm_migrate(rt, p, 8 * kPageSize, 0), UHMM_OK);
  int32_t res[8];
  EXPECT_EQ(uhmm_query_residency(rt, p, 8 * kPageSize, res, 4), UHMM_ERROR_INVALID_ARGUMENT);
  ASSERT_EQ(uhmm_query_residency(rt, p, 8 * kPageSize, res, 8), UHMM_OK);
  for (int32_t r : res) EXPECT_EQ(r, 0);
  EXPECT_EQ(uhmm_query_copies(rt, p, 8 * kPageSize, nullptr, 8), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(uhmm_query_copies(rt, p, 8 * kPageSize, res, 4), UHMM_ERROR_INVALID_ARGUMENT);
  ASSERT_EQ(uhmm_query_copies(rt, p, 8 * kPageSize, res, 8), UHMM_OK);
  for (int32_t r : res) EXPECT_EQ(r, UHMM_LOCATION_NONE) << "pages on the device are not copies";
  EXPECT_EQ(static_cast<unsigned char*>(p)[8 * kPageSize - 1], 0x5a);
  uhmm_stats_t st;
  ASSERT_EQ(uhmm_get_stats(rt, &st), UHMM_OK);
  EXPECT_EQ(st.pages_to_device, 8u);
  EXPECT_EQ(uhmm_free(rt, p), UHMM_OK);
  EXPECT_EQ(uhmm_free(rt, p), UHMM_ERROR_NOT_FOUND);
  EXPECT_EQ(uhmm_migrate(nullptr, p, kPageSize, 0), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(uhmm_last_error()).find("runtime is NULL"), std::string::npos);
  EXPECT_STREQ(uhmm_status_string(UHMM_ERROR_DEVICE), "UHMM_ERROR_DEVICE");
  uhmm_destroy(rt);
}

TEST(CApiTest, FindAllocationNamesTheAllocationThatHoldsAnAddress) {
  uhmm_runtime_t* rt = CreateHostC();
  ASSERT_NE(rt, nullptr);
  void* p = nullptr;
  const size_t bytes = 5 * kPageSize + 7;
  ASSERT_EQ(uhmm_alloc(rt, bytes, &p), UHMM_OK);
  for (size_t off : {size_t{0}, size_t{1}, 3 * kPageSize, bytes - 1}) {
    void* base = nullptr;
    size_t size = 0;
    ASSERT_EQ(uhmm_find_allocation(rt, static_cast<char*>(p) + off, &base, &size), UHMM_OK) << off;
    EXPECT_EQ(base, p) << off;
    EXPECT_EQ(size, bytes) << "the size it was allocated with";
  }
  EXPECT_EQ(uhmm_find_allocation(rt, p, nullptr, nullptr), UHMM_OK) << "either out pointer may be NULL";
  int on_stack = 0;
  EXPECT_EQ(uhmm_find_allocation(rt, &on_stack, nullptr, nullptr), UHMM_ERROR_NOT_FOUND);
  EXPECT_NE(std::string(uhmm_last_error()).find("not managed"), std::string::npos) << uhmm_last_error();
  EXPECT_EQ(uhmm_find_allocation(rt, nullptr, nullptr, nullptr), UHMM_ERROR_NOT_FOUND);
  EXPECT_EQ(uhmm_find_allocation(nullptr, p, nullptr, nullptr), UHMM_ERROR_INVALID_ARGUMENT);
  ASSERT_EQ(uhmm_free(rt, p), UHMM_OK);
  EXPECT_EQ(uhmm_find_allocation(rt, p, nullptr, nullptr), UHMM_ERROR_NOT_FOUND) << "freed";
  uhmm_destroy(rt);
}

TEST(CApiTest, DeviceStatsSayWhichDeviceHoldsWhat) {
  uhmm_runtime_t* rt = CreateHostC(2);
  ASSERT_NE(rt, nullptr);
  void* p = nullptr;
  ASSERT_EQ(uhmm_alloc(rt, 16 * kPageSize, &p), UHMM_OK);
  std::memset(p, 1, 16 * kPageSize);
  ASSERT_EQ(uhmm_migrate(rt, p, 16 * kPageSize, 1), UHMM_OK);
  uhmm_device_stats_t d0, d1;
  ASSERT_EQ(uhmm_get_device_stats(rt, 0, &d0), UHMM_OK);
  ASSERT_EQ(uhmm_get_device_stats(rt, 1, &d1), UHMM_OK);
  EXPECT_EQ(d0.pool_pages_used, 0u);
  EXPECT_EQ(d1.pool_pages_used, 16u);
  EXPECT_GT(d1.pool_pages_total, 0u);
  EXPECT_NE(d1.name[0], '\0');
  uhmm_stats_t all;
  ASSERT_EQ(uhmm_get_stats(rt, &all), UHMM_OK);
  EXPECT_EQ(all.device_pages_used, d0.pool_pages_used + d1.pool_pages_used) << "the totals are their sum";
  EXPECT_EQ(all.device_pages_total, d0.pool_pages_total + d1.pool_pages_total);
  EXPECT_EQ(uhmm_get_device_stats(rt, 2, &d0), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(uhmm_last_error()).find("device 2 does not exist"), std::string::npos)
      << uhmm_last_error();
  EXPECT_EQ(uhmm_get_device_stats(rt, -1, &d0), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(uhmm_get_device_stats(rt, 0, nullptr), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(uhmm_get_device_stats(nullptr, 0, &d0), UHMM_ERROR_INVALID_ARGUMENT);
  ASSERT_EQ(uhmm_free(rt, p), UHMM_OK);
  uhmm_destroy(rt);
}

TEST(CApiTest, QueueOrderedPrefetchAndLaunchSync) {
  uhmm_runtime_t* rt = CreateHostC();
  ASSERT_NE(rt, nullptr);
  EXPECT_EQ(uhmm_transparent_launch_enabled(rt), 1);
  EXPECT_EQ(uhmm_transparent_launch_enabled(nullptr), 0);
  void* p = nullptr;
  ASSERT_EQ(uhmm_alloc(rt, 16 * kPageSize, &p), UHMM_OK);
  std::memset(p, 0x3c, 16 * kPageSize);
  EXPECT_EQ(uhmm_prefetch_on_queue(rt, p, 16 * kPageSize, 0, nullptr), UHMM_OK);
  EXPECT_EQ(uhmm_prefetch_on_queue(rt, static_cast<char*>(p) + 1, kPageSize, 0, nullptr),
            UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(uhmm_last_error()).find("uhmm_prefetch_on_queue"), std::string::npos);
  EXPECT_EQ(uhmm_prefetch_on_queue(rt, p, 32 * kPageSize, 0, nullptr), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(uhmm_prefetch_on_queue(rt, p, kPageSize, 3, nullptr), UHMM_ERROR_INVALID_ARGUMENT);
  // A page-aligned address the runtime does not manage: NOT_FOUND. (A stack variable is not
  // reliably unaligned — under ASan's fake stack it can sit on a page boundary.)
  void* not_managed = mmap(nullptr, kPageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(not_managed, MAP_FAILED);
  EXPECT_EQ(uhmm_prefetch_on_queue(rt, not_managed, kPageSize, 0, nullptr), UHMM_ERROR_NOT_FOUND);
  munmap(not_managed, kPageSize);
  EXPECT_EQ(uhmm_prefetch_on_queue(rt, p, 16 * kPageSize, UHMM_LOCATION_HOST, nullptr), UHMM_OK);
  EXPECT_EQ(uhmm_sync_for_device(rt, 0, nullptr), UHMM_OK);
  EXPECT_EQ(uhmm_sync_for_device(rt, -1, nullptr), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(uhmm_sync_for_device(nullptr, 0, nullptr), UHMM_ERROR_INVALID_ARGUMENT);
  int32_t res[16];
  ASSERT_EQ(uhmm_query_residency(rt, p, 16 * kPageSize, res, 16), UHMM_OK);
  for (int32_t r : res) EXPECT_EQ(r, 0);
  EXPECT_EQ(static_cast<unsigned char*>(p)[5 * kPageSize + 7], 0x3c);
  EXPECT_EQ(uhmm_free(rt, p), UHMM_OK);
  uhmm_destroy(rt);
}

// Stores `value` in an enum-typed field the way a C caller can: C enums hold any int, and in C++
// only copying the bytes (not a conversion) puts an out-of-range value there without UB.
template <typename E>
void StoreRaw(E* field, int value) {
  static_assert(sizeof(E) == sizeof(int));
  std::memcpy(field, &value, sizeof(value));
}

// uhmm_create with `config`: the status, with *out checked to stay NULL on failure.
uhmm_status_t CreateC(const uhmm_config_t& config) {
  uhmm_runtime_t* rt = reinterpret_cast<uhmm_runtime_t*>(0x1);
  const uhmm_status_t st = uhmm_create(&config, &rt);
  if (st == UHMM_OK) {
    uhmm_destroy(rt);
  } else {
    EXPECT_EQ(rt, nullptr);
  }
  return st;
}

#define EXPECT_C_ERROR(expr, want_status, fragment)                                                   \
  do {                                                                                                \
    EXPECT_EQ((expr), (want_status)) << uhmm_last_error();                                            \
    EXPECT_NE(std::string(uhmm_last_error()).find(fragment), std::string::npos) << uhmm_last_error(); \
  } while (0)

TEST(CApiTest, OutOfRangeEnumsInTheConfigAreRejectedWithFieldValueAndChoices) {
  uhmm_config_t cfg;
  uhmm_config_init(&cfg);
  cfg.backend = "host";
  StoreRaw(&cfg.sigbus_mode, 9);
  EXPECT_C_ERROR(CreateC(cfg), UHMM_ERROR_INVALID_ARGUMENT,
                 "uhmm_config_t.sigbus_mode is 9; use one of UHMM_SIGBUS_AUTO (0), UHMM_SIGBUS_POISON "
                 "(1), UHMM_SIGBUS_TKILL (2)");
  StoreRaw(&cfg.sigbus_mode, -1);
  EXPECT_C_ERROR(CreateC(cfg), UHMM_ERROR_INVALID_ARGUMENT, "uhmm_config_t.sigbus_mode is -1");
  cfg.sigbus_mode = UHMM_SIGBUS_AUTO;
  StoreRaw(&cfg.hugetlb, 3);
  EXPECT_C_ERROR(CreateC(cfg), UHMM_ERROR_INVALID_ARGUMENT,
                 "uhmm_config_t.hugetlb is 3; use one of UHMM_HUGETLB_AUTO (0), UHMM_HUGETLB_NEVER (1), "
                 "UHMM_HUGETLB_ALWAYS (2)");
  StoreRaw(&cfg.hugetlb, 1 << 30);
  EXPECT_C_ERROR(CreateC(cfg), UHMM_ERROR_INVALID_ARGUMENT, "uhmm_config_t.hugetlb is 1073741824");
  cfg.hugetlb = UHMM_HUGETLB_NEVER;
  EXPECT_EQ(CreateC(cfg), UHMM_OK) << uhmm_last_error();
}

TEST(CApiTest, BadSizesInTheConfigAreRejectedWithTheFieldName) {
  uhmm_config_t base;
  uhmm_config_init(&base);
  base.backend = "host";
  uhmm_config_t cfg = base;
  cfg.fault_granularity = 3000;
  EXPECT_C_ERROR(CreateC(cfg), UHMM_ERROR_INVALID_ARGUMENT,
                 "fault_granularity (UHMM_FAULT_GRANULARITY) is 3000");
  cfg = base;
  cfg.fault_granularity = size_t{1} << 40;
  EXPECT_C_ERROR(CreateC(cfg), UHMM_ERROR_INVALID_ARGUMENT, "fault_granularity");
  cfg = base;
  cfg.device_pool_bytes = 3 * kMiB;
  EXPECT_C_ERROR(CreateC(cfg), UHMM_ERROR_INVALID_ARGUMENT,
                 "device_pool_bytes (UHMM_DEVICE_POOL_BYTES) is 3145728");
  cfg = base;
  cfg.device_pool_fraction = std::nan("");
  EXPECT_C_ERROR(CreateC(cfg), UHMM_ERROR_INVALID_ARGUMENT, "device_pool_fraction is nan");
  cfg = base;
  cfg.readahead_bytes = SIZE_MAX;
  EXPECT_C_ERROR(CreateC(cfg), UHMM_ERROR_INVALID_ARGUMENT, "readahead_bytes (UHMM_READAHEAD)");
  cfg = base;
  cfg.fault_threads = -3;
  EXPECT_C_ERROR(CreateC(cfg), UHMM_ERROR_INVALID_ARGUMENT, "fault_threads (UHMM_FAULT_THREADS) is -3");
  cfg = base;
  cfg.host_devices = 1000;
  EXPECT_C_ERROR(CreateC(cfg), UHMM_ERROR_INVALID_ARGUMENT, "host_devices (UHMM_HOST_DEVICES) is 1000");
}

TEST(CApiTest, UnknownPageBackingIsRejectedWithTheChoices) {
  uhmm_runtime_t* rt = CreateHostC();
  ASSERT_NE(rt, nullptr);
  void* p = reinterpret_cast<void*>(0x1);
  // 3 is a value of the C enum's type (its range is 0..3) but no uhmm_page_backing_t.
  EXPECT_C_ERROR(uhmm_alloc_backed(rt, kPageSize, static_cast<uhmm_page_backing_t>(3), &p),
                 UHMM_ERROR_INVALID_ARGUMENT,
                 "uhmm_alloc_backed: backing is 3; use one of UHMM_BACKING_DEFAULT (0), UHMM_BACKING_4K "
                 "(1), UHMM_BACKING_HUGETLB (2)");
  EXPECT_EQ(p, nullptr);
  uhmm_destroy(rt);
}

TEST(CApiTest, HugeAllocationReturnsOutOfMemoryWithTheReason) {
  uhmm_runtime_t* rt = CreateHostC();
  ASSERT_NE(rt, nullptr);
  void* live = nullptr;
  ASSERT_EQ(uhmm_alloc(rt, 16 * kPageSize, &live), UHMM_OK);
  std::memset(live, 0x6b, 16 * kPageSize);
  ASSERT_EQ(uhmm_migrate(rt, live, 8 * kPageSize, 0), UHMM_OK);
  for (size_t size : UnbackableSizes()) {
    void* p = reinterpret_cast<void*>(0x1);
    const auto start = std::chrono::steady_clock::now();
    EXPECT_C_ERROR(uhmm_alloc(rt, size, &p), UHMM_ERROR_OUT_OF_MEMORY,
                   "more than this machine's host memory can back");
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1)) << size << " bytes";
    EXPECT_EQ(p, nullptr);
  }
  for (size_t i = 0; i < 16 * kPageSize; ++i) {
    ASSERT_EQ(static_cast<unsigned char*>(live)[i], 0x6b) << "byte " << i;
  }
  EXPECT_EQ(uhmm_free(rt, live), UHMM_OK);
  uhmm_destroy(rt);
}

#if defined(__SANITIZE_ADDRESS__)
#define UHMM_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UHMM_UNDER_ASAN 1
#endif
#endif

// The heap runs out inside the runtime (an address-space limit makes operator new throw
// std::bad_alloc): the C API returns OUT_OF_MEMORY with a message instead of letting the exception
// reach C (std::terminate, SIGABRT), and works again once memory is back.
TEST(CApiTest, HeapExhaustionInsideTheRuntimeComesBackAsOutOfMemory) {
#if defined(UHMM_UNDER_ASAN) || defined(UHMM_UNDER_TSAN)
  GTEST_SKIP() << "sanitizers reserve terabytes of shadow memory: an address-space limit breaks them";
#endif
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    // Exit codes: 0 ok, 10 create, 11 status, 12 no recovery.
    close(out[0]);
    uhmm_config_t cfg;
    uhmm_config_init(&cfg);
    cfg.backend = "host";
    uhmm_runtime_t* rt = nullptr;
    if (uhmm_create(&cfg, &rt) != UHMM_OK) _exit(10);
    rlimit old = {};
    getrlimit(RLIMIT_AS, &old);
    // Room for 4 MiB more of address space: enough for the call's own bookkeeping, not for a
    // range of 8 GiB (its views, or its block table of several MiB).
    size_t vm_kb = 0;
    if (std::FILE* f = std::fopen("/proc/self/status", "re")) {
      char line[256];
      while (std::fgets(line, sizeof(line), f) != nullptr) std::sscanf(line, "VmSize: %zu kB", &vm_kb);
      std::fclose(f);
    }
    rlimit tight = old;
    tight.rlim_cur = vm_kb * 1024 + (size_t{4} << 20);
    setrlimit(RLIMIT_AS, &tight);
    void* p = nullptr;
    const uhmm_status_t st = uhmm_alloc(rt, size_t{8} << 30, &p);
    setrlimit(RLIMIT_AS, &old);
    const std::string msg = uhmm_last_error();
    (void)!write(out[1], msg.data(), msg.size());
    if (st != UHMM_ERROR_OUT_OF_MEMORY || p != nullptr) _exit(11);
    if (uhmm_alloc(rt, kMiB, &p) != UHMM_OK || uhmm_free(rt, p) != UHMM_OK) _exit(12);
    uhmm_destroy(rt);
    _exit(0);
  }
  close(out[1]);
  const std::string msg = ReadAllAndClose(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  std::printf("uhmm_alloc(8 GiB) with the address space exhausted: %s\n", msg.c_str());
  ASSERT_TRUE(WIFEXITED(status)) << "child died with signal " << WTERMSIG(status)
                                 << " (an exception crossed the C API?)";
  EXPECT_EQ(WEXITSTATUS(status), 0) << "10: create, 11: not OUT_OF_MEMORY, 12: no recovery; " << msg;
  EXPECT_FALSE(msg.empty());
}

TEST(CApiTest, CreateReportsUnknownBackend) {
  uhmm_config_t cfg;
  uhmm_config_init(&cfg);
  cfg.backend = "quantum";
  uhmm_runtime_t* rt = reinterpret_cast<uhmm_runtime_t*>(0x1);
  EXPECT_EQ(uhmm_create(&cfg, &rt), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(rt, nullptr);
  EXPECT_NE(std::string(uhmm_last_error()).find("unknown backend 'quantum'"), std::string::npos);
}

TEST(RaiiTest, ManagedArrayFreesOnDestruction) {
  bool skip = false;
  absl::StatusOr<std::unique_ptr<Runtime>> rt = CreateOrSkip(TestConfig(), &skip);
  if (skip) GTEST_SKIP() << rt.status();
  ASSERT_TRUE(rt.ok()) << rt.status();
  {
    absl::StatusOr<ManagedArray<int>> a = ManagedArray<int>::Create(**rt, 5000);
    ASSERT_TRUE(a.ok()) << a.status();
    for (size_t i = 0; i < a->size(); ++i) (*a)[i] = static_cast<int>(i);
    ASSERT_TRUE(a->MigrateTo(0).ok());
    EXPECT_EQ((*a)[4999], 4999);
    ManagedArray<int> moved = std::move(*a);
    EXPECT_EQ(moved[10], 10);
  }
  EXPECT_EQ((*rt)->stats().device_pages_used, 0u);
}

}  // namespace
}  // namespace uhmm::testing
