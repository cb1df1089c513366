// Bad input gets a clear error and loses nothing: every call here fails with a specific code and a
// message, and the data of a live allocation (half on the device) is intact afterwards.
#include <sys/mman.h>

#include <cstdlib>
#include <string>

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

#define EXPECT_ERROR(expr, want_code, fragment)                                         \
  do {                                                                             \
    absl::Status _s = (expr);                                                      \
    EXPECT_EQ(_s.code(), (want_code)) << _s;                                       \
    EXPECT_NE(std::string(_s.message()).find(fragment), std::string::npos) << _s;  \
  } while (0)

TEST_F(BadInputTest, NullPointerIsRejected) {
  EXPECT_ERROR(rt_->Free(nullptr), absl::StatusCode::kInvalidArgument, "NULL");
  EXPECT_ERROR(rt_->Migrate(nullptr, kPageSize, 0), absl::StatusCode::kInvalidArgument, "NULL");
  EXPECT_ERROR(rt_->Residency(nullptr, kPageSize).status(), absl::StatusCode::kInvalidArgument,
               "NULL");
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
  EXPECT_ERROR(rt_->Residency(byte + 8, kPageSize).status(), absl::StatusCode::kInvalidArgument,
               "aligned");
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
  EXPECT_ERROR(rt_->Migrate(live_, 2 * kBytes, 0), absl::StatusCode::kInvalidArgument,
               "runs past the end");
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
  EXPECT_ERROR(rt_->Migrate(live_, SIZE_MAX & ~(kPageSize - 1), 0),
               absl::StatusCode::kInvalidArgument, "overflows");
  absl::StatusOr<ManagedArray<uint64_t>> arr = ManagedArray<uint64_t>::Create(*rt_, SIZE_MAX / 4);
  EXPECT_EQ(arr.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(BadInputTest, MigrateToNonexistentDeviceIsRejected) {
  EXPECT_ERROR(rt_->Migrate(live_, kPageSize, 1), absl::StatusCode::kInvalidArgument,
               "device 1 does not exist");
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
  EXPECT_ERROR(Runtime::Create(c).status(), absl::StatusCode::kInvalidArgument,
               "UHMM_FAULT_GRANULARITY");
  c = TestConfig();
  c.device_pool_bytes = 3 * kMiB;
  EXPECT_ERROR(Runtime::Create(c).status(), absl::StatusCode::kInvalidArgument,
               "UHMM_DEVICE_POOL_BYTES");
  c = TestConfig();
  c.backend = "no-such-gpu";
  EXPECT_ERROR(Runtime::Create(c).status(), absl::StatusCode::kInvalidArgument, "built-in backends: ");
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
  EXPECT_ERROR(Config::FromEnv().Validate(), absl::StatusCode::kInvalidArgument,
               "UHMM_FAULT_THREADS='many'");
  unsetenv("UHMM_FAULT_GRANULARITY");
  unsetenv("UHMM_DEVICE_POOL_BYTES");
  unsetenv("UHMM_SIGBUS_MODE");
  unsetenv("UHMM_FAULT_THREADS");
}

// The C API: the same checks come back as status codes with a per-thread message.
// A C runtime on the host backend (nullptr and a test failure if it cannot be created).
uhmm_runtime_t* CreateHostC() {
  uhmm_config_t cfg;
  uhmm_config_init(&cfg);
  cfg.backend = "host";
  uhmm_runtime_t* rt = nullptr;
  EXPECT_EQ(uhmm_create(&cfg, &rt), UHMM_OK) << uhmm_last_error();
  return rt;
}

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
