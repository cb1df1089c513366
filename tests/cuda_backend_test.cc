// The CUDA backend's own behaviour, on machines without a GPU: it reports itself unavailable with
// the reason when there is no driver, and against the emulated driver (tests/fake_cuda) it keeps
// one pointer (device address == managed address), gives the address space back on free, and
// sizes its pool from free VRAM on request. The behaviour suites cover the rest (cuda_emulated.*).
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "tests/test_util.h"

namespace uhmm::testing {
namespace {

Config EmulatedCuda() {
  Config c;
  c.backend = "cuda";
  c.transparent_launch = false;
  c.device_pool_bytes = 16 * kMiB;
  c.cuda_driver = UHMM_FAKE_CUDA_DRIVER;
  return c;
}

bool Mapped(uintptr_t addr) {
  unsigned char v;
  return mincore(reinterpret_cast<void*>(addr & ~(kPageSize - 1)), kPageSize, &v) == 0 || errno != ENOMEM;
}

TEST(CudaBackendTest, WithoutADriverItIsUnavailableAndSaysWhy) {
  // A driver is loaded once per process: ask in a fresh child.
  const std::string msg = StatusInFreshChild([] {
    Config c;
    c.backend = "cuda";
    c.cuda_driver = "/nonexistent/libcuda.so.1";
    return Runtime::Create(c).status();
  });
  EXPECT_EQ(msg.rfind("UNAVAILABLE: ", 0), 0u) << msg;
  EXPECT_NE(msg.find("/nonexistent/libcuda.so.1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("no NVIDIA driver"), std::string::npos) << msg;
}

TEST(CudaBackendTest, OnePointerAndTheReservationGoesBackOnFree) {
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Create(EmulatedCuda());
  ASSERT_TRUE(rt.ok()) << rt.status();
  EXPECT_EQ((*rt)->backend_name(), "cuda");
  const size_t bytes = 3 * kMiB + 5 * kPageSize;  // not a multiple of 2 MiB
  absl::StatusOr<void*> p = (*rt)->Allocate(bytes);
  ASSERT_TRUE(p.ok()) << p.status();
  const uintptr_t a = reinterpret_cast<uintptr_t>(*p);
  EXPECT_EQ(a % kBlockSize, 0u);
  auto* w = static_cast<uint64_t*>(*p);
  for (size_t i = 0; i < bytes / 8; ++i) w[i] = i;
  ASSERT_TRUE((*rt)->Migrate(*p, bytes, 0).ok());
  for (size_t off = 0; off < bytes; off += 1 * kMiB) {
    absl::StatusOr<uint64_t> dev = (*rt)->DeviceAddress(static_cast<char*>(*p) + off);
    ASSERT_TRUE(dev.ok()) << dev.status();
    EXPECT_EQ(*dev, a + off);
  }
  // The device side really is separate memory: rewrite it there, read it back through faults.
  uint64_t v = 0xfeed;
  ASSERT_TRUE(Access(**rt, 0)->DeviceWrite(a + 8, &v, sizeof(v)).ok());
  EXPECT_EQ(w[1], 0xfeedu);
  EXPECT_EQ(w[bytes / 8 - 1], bytes / 8 - 1);
  EXPECT_TRUE(Mapped(a));
  EXPECT_TRUE(Mapped(a + 4 * kMiB - kPageSize)) << "the tail of the reservation is PROT_NONE";
  ASSERT_TRUE((*rt)->Free(*p).ok());
  // Freed: the user view, the PROT_NONE stand-in and the driver's reservation are all gone.
  EXPECT_FALSE(Mapped(a));
  EXPECT_FALSE(Mapped(a + 4 * kMiB - kPageSize));
}

TEST(CudaBackendTest, PoolCanBeAShareOfFreeDeviceMemory) {
  Config c = EmulatedCuda();
  c.device_pool_bytes = 0;
  c.device_pool_fraction = 0.25;  // of the emulated device's 1 GiB
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Create(c);
  ASSERT_TRUE(rt.ok()) << rt.status();
  EXPECT_EQ((*rt)->stats().device_pages_total, 256 * kMiB / kPageSize);
}

TEST(CudaBackendTest, TheDeviceAndDriverComeFromTheConfig) {
  Config c = EmulatedCuda();
  c.cuda_device = 1;  // the emulated driver has one GPU
  // The named backend refuses it: a configuration mistake, reported as such with the reason.
  absl::Status s = Runtime::Create(c).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("cuda_device (UHMM_CUDA_DEVICE) names CUDA device 1"), std::string::npos) << s;
  // The same for a list of GPUs: a device it does not have, and a list that does not parse.
  c.cuda_device = 0;
  c.cuda_devices = "0,1";
  s = Runtime::Create(c).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("cuda_devices (UHMM_CUDA_DEVICES) names CUDA device 1"), std::string::npos) << s;
  for (const char* bad : {"0,0", "-1", "one", "0,", "1;2"}) {
    c.cuda_devices = bad;
    s = Runtime::Create(c).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad << ": " << s;
    EXPECT_NE(s.message().find("use all, or device ordinals"), std::string::npos) << bad << ": " << s;
  }
  // "all" and a list of what there is work, with one GPU as with several.
  for (const char* good : {"all", "ALL", "0", " 0 "}) {
    c.cuda_devices = good;
    absl::StatusOr<std::unique_ptr<Runtime>> ok = Runtime::Create(c);
    ASSERT_TRUE(ok.ok()) << good << ": " << ok.status();
    EXPECT_EQ((*ok)->device_count(), 1) << good;
  }
  c.cuda_devices.clear();
  // The C API has no field for them: uhmm_create takes them from the environment.
  setenv("UHMM_CUDA_DRIVER", UHMM_FAKE_CUDA_DRIVER, 1);
  uhmm_config_t cfg;
  uhmm_config_init(&cfg);
  cfg.backend = "cuda";
  cfg.transparent_launch = 0;
  cfg.device_pool_bytes = 16 * kMiB;
  uhmm_runtime_t* rt = nullptr;
  EXPECT_EQ(uhmm_create(&cfg, &rt), UHMM_OK) << uhmm_last_error();
  uhmm_destroy(rt);
  setenv("UHMM_CUDA_DEVICE", "3", 1);
  EXPECT_EQ(uhmm_create(&cfg, &rt), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(uhmm_last_error()).find("UHMM_CUDA_DEVICE"), std::string::npos) << uhmm_last_error();
  unsetenv("UHMM_CUDA_DEVICE");
  unsetenv("UHMM_CUDA_DRIVER");
}

TEST(CudaBackendTest, NewRangesAreMappedWholeSoFirstTouchesDoNotFault) {
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Create(EmulatedCuda());
  ASSERT_TRUE(rt.ok()) << rt.status();
  const size_t bytes = 4 * kMiB;
  absl::StatusOr<void*> p = (*rt)->Allocate(bytes);
  ASSERT_TRUE(p.ok());
  auto* w = static_cast<volatile uint64_t*>(*p);
  for (size_t i = 0; i < bytes / 8; i += 512) w[i] = i;
  EXPECT_EQ((*rt)->stats().cpu_faults, 0u);
  ASSERT_TRUE((*rt)->Free(*p).ok());
}

}  // namespace
}  // namespace uhmm::testing
