// The testing API (uhmm/testing.h) as an application uses it: fault injection turned on through
// UHMM_INJECT or Config::fault_injection, device errors seen through the public API only (a
// migration's status, SIGBUS on a CPU access), and a bad spec refused with a clear message. Runs in
// every backend configuration; test_util.h only picks the configuration's Config.
#include <setjmp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tests/test_util.h"
#include "uhmm/testing.h"
#include "uhmm/uhmm.h"
#include "uhmm/uhmm.hpp"

namespace uhmm::testing {
namespace {

// The runtime for `config`, or skips the test when its backend is unavailable here.
#define CREATE_OR_SKIP(rt, config)                                                     \
  bool rt##_skip = false;                                                              \
  absl::StatusOr<std::unique_ptr<Runtime>> rt##_or = CreateOrSkip(config, &rt##_skip); \
  if (rt##_skip) GTEST_SKIP() << "backend unavailable: " << rt##_or.status();          \
  ASSERT_TRUE(rt##_or.ok()) << rt##_or.status();                                       \
  Runtime& rt = **rt##_or

sigjmp_buf g_jump;
volatile sig_atomic_t g_sigbus_count = 0;
void OnSigbus(int) {
  g_sigbus_count = g_sigbus_count + 1;
  siglongjmp(g_jump, 1);
}
void CatchSigbus() {
  struct sigaction sa = {};
  sa.sa_handler = OnSigbus;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGBUS, &sa, nullptr);
}

constexpr uint64_t kWord = 0x0123456789abcdefull;

// What an application testing its own SIGBUS handling does: UHMM_INJECT=copy_d2h:1 in the
// environment, data on the device, then a CPU access.
TEST(TestingApiTest, UhmmInjectMakesACpuAccessEndInSigbus) {
  const int status = InChild([] {
    setenv("UHMM_INJECT", "copy_d2h:1", 1);
    Config c = TestConfig();  // the configuration's backend, with what Config::FromEnv() reads
    c.fault_injection = Config::FromEnv().fault_injection;
    std::unique_ptr<Runtime> rt = CreateInChild(c);
    const size_t bytes = 2 * kMiB;
    absl::StatusOr<void*> p = rt->Allocate(bytes);
    if (!p.ok()) _exit(11);
    auto* w = static_cast<volatile uint64_t*>(*p);
    for (size_t i = 0; i < bytes / 8; ++i) w[i] = kWord ^ i;
    if (!rt->Migrate(*p, bytes, 0).ok()) _exit(12);
    CatchSigbus();
    const size_t victim = 100 * kPageSize / 8;
    if (sigsetjmp(g_jump, 1) == 0) {
      (void)w[victim];
      _exit(13);  // the access went through
    }
    if (g_sigbus_count != 1) _exit(14);
    if (rt->stats().sigbus_delivered != 1) _exit(15);
    // One batch failed, then the device works again: the rest of the range comes back intact.
    if (w[0] != kWord) _exit(16);
    if (w[bytes / 8 - 1] != (kWord ^ (bytes / 8 - 1))) _exit(17);
    FaultInjector* faults = Faults(*rt, 0);
    if (faults == nullptr || faults->injected(InjectSite::kCopyDeviceToHost) != 1) _exit(18);
    rt.reset();
    _exit(0);
  });
  UHMM_SKIP_IF_CHILD_SKIPPED(status);
  ASSERT_TRUE(WIFEXITED(status)) << "child died with signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "see UhmmInjectMakesACpuAccessEndInSigbus for the failed check";
}

// The same from C: UHMM_INJECT is read by uhmm_config_init / uhmm_create; an unhandled SIGBUS kills.
TEST(TestingApiTest, CProgramWithUhmmInjectDiesOfSigbusOnTheFailedAccess) {
  if (!TestingHostBackend()) GTEST_SKIP() << "the C API check runs on the host backend";
  const int status = InChild([] {
    setenv("UHMM_INJECT", "copy_d2h:all", 1);
    uhmm_config_t cfg;
    uhmm_config_init(&cfg);
    cfg.backend = "host";
    cfg.host_same_address = TestConfig().host_same_address ? 1 : 0;
    cfg.device_pool_bytes = 64 * kMiB;
    uhmm_runtime_t* rt = nullptr;
    if (uhmm_create(&cfg, &rt) != UHMM_OK) _exit(11);
    void* p = nullptr;
    if (uhmm_alloc(rt, kPageSize, &p) != UHMM_OK) _exit(12);
    std::memset(p, 7, kPageSize);
    if (uhmm_migrate(rt, p, kPageSize, 0) != UHMM_OK) _exit(13);
    // The migration home fails with the device error; the data stays on the device.
    if (uhmm_migrate(rt, p, kPageSize, UHMM_LOCATION_HOST) != UHMM_ERROR_DEVICE) _exit(14);
    if (std::strstr(uhmm_last_error(), "injected") == nullptr) _exit(15);
    signal(SIGBUS, SIG_DFL);
    (void)*static_cast<volatile char*>(p);
    _exit(16);  // the access went through
  });
  ASSERT_TRUE(WIFSIGNALED(status)) << "exit status " << WEXITSTATUS(status);
  EXPECT_EQ(WTERMSIG(status), SIGBUS);
}

TEST(TestingApiTest, InjectedCopyFailureMakesAMigrationFailAndLosesNothing) {
  Config c = TestConfig();
  c.fault_injection = "copy_h2d:1";
  CREATE_OR_SKIP(rt, c);
  const size_t bytes = kMiB;
  absl::StatusOr<void*> p = rt.Allocate(bytes);
  ASSERT_TRUE(p.ok()) << p.status();
  auto* w = static_cast<uint64_t*>(*p);
  for (size_t i = 0; i < bytes / 8; ++i) w[i] = kWord ^ i;
  absl::Status s = rt.Migrate(*p, bytes, 0);
  EXPECT_TRUE(absl::IsAborted(s)) << s;
  EXPECT_NE(s.message().find("injected fault"), std::string::npos) << s;
  absl::StatusOr<std::vector<int32_t>> res = rt.Residency(*p, bytes);
  ASSERT_TRUE(res.ok()) << res.status();
  for (int32_t r : *res) ASSERT_EQ(r, kHost);
  ASSERT_TRUE(rt.Migrate(*p, bytes, 0).ok());  // one failure only
  res = rt.Residency(*p, bytes);
  ASSERT_TRUE(res.ok()) << res.status();
  for (int32_t r : *res) ASSERT_EQ(r, 0);
  for (size_t i = 0; i < bytes / 8; ++i) ASSERT_EQ(w[i], kWord ^ i) << i;
  ASSERT_TRUE(rt.Free(*p).ok());
}

TEST(TestingApiTest, AfterLetsThatManyOperationsThroughFirst) {
  Config c = TestConfig();
  c.fault_injection = "copy_h2d:1:after=2";
  CREATE_OR_SKIP(rt, c);
  absl::StatusOr<void*> p = rt.Allocate(4 * kBlockSize);
  ASSERT_TRUE(p.ok()) << p.status();
  auto* bytes = static_cast<uint8_t*>(*p);
  std::memset(bytes, 1, 4 * kBlockSize);
  // One 4 KiB page per 2 MiB block: one copy batch each.
  std::vector<bool> ok;
  for (int i = 0; i < 4; ++i) ok.push_back(rt.Migrate(bytes + i * kBlockSize, kPageSize, 0).ok());
  EXPECT_EQ(ok, (std::vector<bool>{true, true, false, true}));
  FaultInjector* faults = Faults(rt, 0);
  ASSERT_NE(faults, nullptr);
  EXPECT_EQ(faults->attempts(InjectSite::kCopyHostToDevice), 4u);
  EXPECT_EQ(faults->injected(InjectSite::kCopyHostToDevice), 1u);
  ASSERT_TRUE(rt.Free(*p).ok());
}

TEST(TestingApiTest, ChunkAllocationFailuresUntilTheProgramCancelsThem) {
  Config c = TestConfig();
  c.fault_injection = "chunk_alloc:all";
  CREATE_OR_SKIP(rt, c);
  absl::StatusOr<void*> p = rt.Allocate(kMiB);
  ASSERT_TRUE(p.ok()) << p.status();
  std::memset(*p, 3, kMiB);
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(rt.Migrate(*p, kMiB, 0).ok());
  FaultInjector* faults = Faults(rt, 0);
  ASSERT_NE(faults, nullptr);
  EXPECT_GE(faults->injected(InjectSite::kChunkAlloc), 3u);
  faults->FailNext(InjectSite::kChunkAlloc, 0);  // cancel
  ASSERT_TRUE(rt.Migrate(*p, kMiB, 0).ok());
  EXPECT_EQ(static_cast<uint8_t*>(*p)[kMiB - 1], 3);
  ASSERT_TRUE(rt.Free(*p).ok());
}

TEST(TestingApiTest, DeviceRuleHitsThatDeviceOnly) {
  Config c = TestConfig();
  c.host_devices = 2;
  {
    CREATE_OR_SKIP(probe, c);
    if (probe.device_count() < 2) GTEST_SKIP() << "the " << c.backend << " backend has one device here";
  }
  c.fault_injection = "copy_h2d:all:device=1";
  CREATE_OR_SKIP(rt, c);
  absl::StatusOr<void*> p = rt.Allocate(kMiB);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(rt.Migrate(*p, kMiB, 0).ok());
  EXPECT_FALSE(rt.Migrate(*p, kMiB, 1).ok());
  EXPECT_EQ(Faults(rt, 0)->injected(InjectSite::kCopyHostToDevice), 0u);
  EXPECT_GE(Faults(rt, 1)->injected(InjectSite::kCopyHostToDevice), 1u);
  ASSERT_TRUE(rt.Free(*p).ok());
}

TEST(TestingApiTest, WithoutFaultInjectionNoDecoratorButDeviceAccessStays) {
  for (const char* spec : {"", "off"}) {
    Config c = TestConfig();
    c.fault_injection = spec;
    CREATE_OR_SKIP(rt, c);
    EXPECT_EQ(Faults(rt, 0), nullptr) << "'" << spec << "'";
    ASSERT_NE(Access(rt, 0), nullptr) << "'" << spec << "'";
    EXPECT_EQ(Access(rt, rt.device_count()), nullptr);
    // The device-side access works on the backend's own device.
    absl::StatusOr<void*> p = rt.Allocate(kPageSize);
    ASSERT_TRUE(p.ok()) << p.status();
    std::memset(*p, 0, kPageSize);
    ASSERT_TRUE(rt.Migrate(*p, kPageSize, 0).ok());
    absl::StatusOr<uint64_t> dev = rt.DeviceAddress(*p);
    ASSERT_TRUE(dev.ok()) << dev.status();
    const uint64_t v = kWord;
    ASSERT_TRUE(Access(rt, 0)->DeviceWrite(*dev + 8, &v, sizeof(v)).ok());
    EXPECT_EQ(static_cast<uint64_t*>(*p)[1], kWord);  // CPU fault: migrated back, then read
    ASSERT_TRUE(rt.Free(*p).ok());
  }
}

TEST(TestingApiTest, DeviceAccessToASpanAcrossBlocksNotStartingOnAPage) {
  Config c = TestConfig();
  CREATE_OR_SKIP(rt, c);
  absl::StatusOr<void*> p = rt.Allocate(2 * kBlockSize);
  ASSERT_TRUE(p.ok()) << p.status();
  auto* w = static_cast<uint64_t*>(*p);
  for (size_t i = 0; i < 2 * kBlockSize / 8; ++i) w[i] = kWord ^ i;
  ASSERT_TRUE(rt.Migrate(*p, 2 * kBlockSize, 0).ok());
  // 8 bytes before the second block, through a page and a half of it: each block is its own
  // chunk of device memory, so the access must follow the device pages, not one run of bytes.
  const size_t first = kBlockSize / 8 - 1, words = kPageSize / 8 + kPageSize / 16 + 1;
  absl::StatusOr<uint64_t> dev = rt.DeviceAddress(w + first);
  ASSERT_TRUE(dev.ok()) << dev.status();
  // The span must be one run of device addresses (one pointer: always; otherwise only where the pool
  // happened to place the pages in order).
  for (size_t i = 1; i < words; ++i) {
    absl::StatusOr<uint64_t> at = rt.DeviceAddress(w + first + i);
    ASSERT_TRUE(at.ok()) << at.status();
    if (*at != *dev + 8 * i) GTEST_SKIP() << "the span's device addresses are not one run here";
  }
  std::vector<uint64_t> got(words);
  ASSERT_TRUE(Access(rt, 0)->DeviceRead(*dev, got.data(), words * 8).ok());
  for (size_t i = 0; i < words; ++i) ASSERT_EQ(got[i], kWord ^ (first + i)) << "word " << i;
  std::vector<uint64_t> put(words);
  for (size_t i = 0; i < words; ++i) put[i] = ~(kWord ^ (first + i));
  ASSERT_TRUE(Access(rt, 0)->DeviceWrite(*dev, put.data(), words * 8).ok());
  for (size_t i = 0; i < words; ++i) ASSERT_EQ(w[first + i], put[i]) << "word " << i;  // faults home
  ASSERT_TRUE(rt.Free(*p).ok());
}

TEST(TestingApiTest, SpecsParse) {
  absl::StatusOr<InjectSpec> s = ParseInjectSpec("copy_h2d:2:after=3, CHUNK_ALLOC:all:device=1");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->enabled);
  ASSERT_EQ(s->rules.size(), 2u);
  EXPECT_EQ(s->rules[0].site, InjectSite::kCopyHostToDevice);
  EXPECT_EQ(s->rules[0].count, 2);
  EXPECT_EQ(s->rules[0].after, 3);
  EXPECT_EQ(s->rules[0].device, -1);
  EXPECT_EQ(s->rules[1].site, InjectSite::kChunkAlloc);
  EXPECT_EQ(s->rules[1].count, kInjectAll);
  EXPECT_EQ(s->rules[1].device, 1);
  for (const char* on : {"on", " ON "}) {
    s = ParseInjectSpec(on);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_TRUE(s->enabled);
    EXPECT_TRUE(s->rules.empty());
  }
  for (const char* off : {"", "off", "Off"}) {
    s = ParseInjectSpec(off);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_FALSE(s->enabled);
  }
}

TEST(TestingApiTest, BadSpecIsRefusedWithAClearError) {
  struct Case {
    const char* spec;
    const char* says;  // part of the message
  } cases[] = {
      {"copy_d2x:1", "names no site ('copy_d2x' is not one)"},
      {"yes", "names no site"},
      {"copy_d2h", "has no count"},
      {"copy_d2h:", "has no count"},
      {"copy_d2h:0", "is not a positive number or all"},
      {"copy_d2h:-3", "is not a positive number or all"},
      {"copy_d2h:many", "is not a positive number or all"},
      {"copy_d2h:1:after=x", "after='x' is not a number >= 0"},
      {"copy_d2h:1:device=-1", "device='-1' is not a device number"},
      {"copy_d2h:1:retries=2", "where after=N or device=N can go"},
      {"copy_d2h:1:after", "where after=N or device=N can go"},
      {"copy_d2h:1,,copy_h2d:1", "empty rule"},
      {"copy_d2h:1,", "empty rule"},
      {"on,copy_d2h:1", "'on' stands alone"},
  };
  for (const Case& k : cases) {
    Config c = TestConfig();
    c.fault_injection = k.spec;
    absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Create(c);
    ASSERT_FALSE(rt.ok()) << k.spec;
    EXPECT_TRUE(absl::IsInvalidArgument(rt.status())) << k.spec << ": " << rt.status();
    const std::string msg(rt.status().message());
    EXPECT_NE(msg.find("UHMM_INJECT"), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::string("'") + k.spec + "'"), std::string::npos) << msg;
    EXPECT_NE(msg.find(k.says), std::string::npos) << k.spec << ": " << msg;
    EXPECT_NE(msg.find("SITE:COUNT[:after=N][:device=N]"), std::string::npos) << msg;
  }
}

TEST(TestingApiTest, BadUhmmInjectInTheEnvironmentFailsRuntimeCreation) {
  const char* old = std::getenv("UHMM_INJECT");
  const std::string saved = old ? old : "";
  setenv("UHMM_INJECT", "copy_d2h:lots", 1);
  absl::Status s = Config::FromEnv().Validate();
  uhmm_runtime_t* rt = nullptr;
  const uhmm_status_t st = uhmm_create(nullptr, &rt);
  const std::string c_error = uhmm_last_error();
  if (old) {
    setenv("UHMM_INJECT", saved.c_str(), 1);
  } else {
    unsetenv("UHMM_INJECT");
  }
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_NE(s.message().find("UHMM_INJECT"), std::string::npos) << s;
  EXPECT_EQ(st, UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(rt, nullptr);
  EXPECT_NE(c_error.find("'copy_d2h:lots'"), std::string::npos) << c_error;
}

TEST(TestingApiTest, RuleForADeviceThatDoesNotExistIsRefused) {
  Config c = TestConfig();
  c.fault_injection = "copy_d2h:1:device=7";
  bool skip = false;
  absl::StatusOr<std::unique_ptr<Runtime>> rt = CreateOrSkip(c, &skip);
  if (skip) GTEST_SKIP() << "backend unavailable: " << rt.status();
  ASSERT_FALSE(rt.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(rt.status())) << rt.status();
  EXPECT_NE(rt.status().message().find("device 7"), std::string::npos) << rt.status();
}

}  // namespace
}  // namespace uhmm::testing
