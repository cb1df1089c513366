// Coherence with CPU write tracking and read duplication, on the host backend (emulated device,
// memcpy copy engine), read duplication on against off in one run:
//   - relaunch after the CPU only read the data: pages copied to the device by the launch sync (goal
//     0 with duplication) and the sync's time;
//   - the simulator loop: each step a "kernel" rewrites a 16 MiB field on the device, the CPU reads
//     a few values, the next launch syncs: bytes moved per step and step time;
//   - a READ_MOSTLY table read by the CPU and by a "kernel" every step: bytes moved after the first
//     step (goal 0), with the advice against without it.
// Kernels are device-side writes through uhmm/testing.h (no GPU here). A launch is
// uhmm_sync_for_device, which transparent launches call. The GPU rows (against cudaMallocManaged
// with the same advice) are not built yet.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "uhmm/testing.h"
#include "uhmm/uhmm.hpp"

namespace {

using Clock = std::chrono::steady_clock;
double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }
constexpr size_t kPage = 4096;

struct Row {
  double ms = 0;
  double copied_to_device_mib = 0, copied_to_host_mib = 0;
  bool ok = false;
};

void Check(const absl::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, s.ToString().c_str());
    std::exit(1);
  }
}

std::unique_ptr<uhmm::Runtime> Make(bool duplication, size_t pool, int migration_threads = 2) {
  uhmm::Config c = uhmm::Config::FromEnv();
  c.migration_threads = migration_threads;
  // 4 KiB pages whether or not hugepages are reserved: hugetlb ranges (UHMM_HUGETLB=auto picks them
  // for 64 MiB and more) do not duplicate reads (docs/SEMANTICS.md).
  c.hugetlb = uhmm::HugetlbMode::kNever;
  c.backend = "host";
  c.read_duplication = duplication;
  c.device_pool_bytes = pool;
  c.fault_injection = "off";
  absl::StatusOr<std::unique_ptr<uhmm::Runtime>> rt = uhmm::Runtime::Create(c);
  Check(rt.status(), "Runtime::Create");
  return std::move(*rt);
}

// Pages a sync copied (moved minus duplicates it took back without a copy and never-written pages
// it gave device zeros).
double CopiedMiB(const uhmm::Stats& a, const uhmm::Stats& b) {
  const uint64_t moved = b.pages_to_device - a.pages_to_device;
  const uint64_t reused = b.duplicate_pages_reused - a.duplicate_pages_reused;
  const uint64_t filled = b.zero_pages_filled - a.zero_pages_filled;
  return static_cast<double>(moved - reused - filled) * kPage / (1 << 20);
}

// One launch sync: its time and what it copied.
Row TimedSync(uhmm::Runtime& rt) {
  Row r;
  const uhmm::Stats a = rt.stats();
  const auto t0 = Clock::now();
  Check(rt.SyncForDevice(0, nullptr), "sync");
  r.ms = Ms(Clock::now() - t0);
  r.copied_to_device_mib = CopiedMiB(a, rt.stats());
  return r;
}

// The device rewrites every page of [p, +bytes) (a kernel writing a field).
void DeviceRewrite(uhmm::Runtime& rt, uint8_t* p, size_t bytes, uint64_t value) {
  uhmm::testing::DeviceAccess* dev = uhmm::testing::Access(rt, 0);
  std::vector<uint64_t> page(kPage / 8, value);
  for (size_t off = 0; off < bytes; off += kPage) {
    absl::StatusOr<uint64_t> a = rt.DeviceAddress(p + off);
    Check(a.status(), "DeviceAddress");
    Check(dev->DeviceWrite(*a, page.data(), kPage), "DeviceWrite");
  }
}

// The per-step figures of a loop that started at `t0` with stats `a`; frees `mem`.
void FinishSteps(uhmm::Runtime& rt, void* mem, const uhmm::Stats& a, Clock::time_point t0, int steps,
                 Row* r) {
  r->ms = Ms(Clock::now() - t0) / steps;
  const uhmm::Stats b = rt.stats();
  r->copied_to_device_mib = CopiedMiB(a, b) / steps;
  r->copied_to_host_mib = static_cast<double>(b.pages_to_host - a.pages_to_host) * kPage / (1 << 20) / steps;
  Check(rt.Free(mem), "Free");
}

Row RelaunchAfterReads(bool duplication, size_t bytes) {
  auto rt = Make(duplication, bytes + (size_t{8} << 20));
  absl::StatusOr<void*> mem = rt->Allocate(bytes);
  Check(mem.status(), "Allocate");
  auto* p = static_cast<volatile uint64_t*>(*mem);
  for (size_t w = 0; w < bytes / 8; w += kPage / 8) p[w] = w;
  Check(rt->SyncForDevice(0, nullptr), "sync");
  uint64_t sum = 0;
  for (size_t w = 0; w < bytes / 8; w += kPage / 8) sum += p[w];  // the CPU only reads
  Row r = TimedSync(*rt);
  r.ok = sum != 0;
  for (size_t w = 0; w < bytes / 8; w += kPage / 8) r.ok &= p[w] == w;
  Check(rt->Free(*mem), "Free");
  return r;
}

// The first launch after allocating `bytes` that the CPU only initialised in part: it wrote one
// word in every 16th page (a kernel fills in the rest).
Row FirstLaunch(bool duplication, size_t bytes) {
  auto rt = Make(duplication, bytes + (size_t{8} << 20));
  absl::StatusOr<void*> mem = rt->Allocate(bytes);
  Check(mem.status(), "Allocate");
  auto* p = static_cast<volatile uint64_t*>(*mem);
  for (size_t w = 0; w < bytes / 8; w += 16 * kPage / 8) p[w] = w + 1;
  Row r = TimedSync(*rt);
  r.ok = true;
  for (size_t w = 0; w < bytes / 8; w += kPage / 8) r.ok &= p[w] == (w % (16 * kPage / 8) ? 0 : w + 1);
  Check(rt->Free(*mem), "Free");
  return r;
}

Row SimulatorLoop(bool duplication, size_t bytes, int steps, int reads) {
  auto rt = Make(duplication, bytes + (size_t{8} << 20));
  absl::StatusOr<void*> mem = rt->Allocate(bytes);
  Check(mem.status(), "Allocate");
  auto* p = static_cast<volatile uint64_t*>(*mem);
  for (size_t w = 0; w < bytes / 8; w += kPage / 8) p[w] = 0;
  Check(rt->SyncForDevice(0, nullptr), "sync");
  Row r;
  r.ok = true;
  const uhmm::Stats a = rt->stats();
  const auto t0 = Clock::now();
  for (int s = 1; s <= steps; ++s) {
    Check(rt->SyncForDevice(0, nullptr), "sync");  // the launch
    DeviceRewrite(*rt, static_cast<uint8_t*>(*mem), bytes, s);
    for (int k = 0; k < reads; ++k) {  // the CPU reads a few values of the result
      const size_t w = (static_cast<size_t>(k) * 7919 * (kPage / 8)) % (bytes / 8);
      r.ok &= p[w] == static_cast<uint64_t>(s);
    }
  }
  FinishSteps(*rt, *mem, a, t0, steps, &r);
  return r;
}

// Steps of: launch, the device reads a few words of the table, the CPU reads every page. Bytes
// moved either way after the first step.
Row ReadMostlyTable(bool advise, size_t bytes, int steps) {
  auto rt = Make(true, bytes + (size_t{8} << 20));
  absl::StatusOr<void*> mem = rt->Allocate(bytes);
  Check(mem.status(), "Allocate");
  auto* p = static_cast<volatile uint64_t*>(*mem);
  for (size_t w = 0; w < bytes / 8; w += kPage / 8) p[w] = w;
  if (advise) Check(rt->Advise(*mem, bytes, uhmm::Advice::kSetReadMostly), "Advise");
  uhmm::testing::DeviceAccess* dev = uhmm::testing::Access(*rt, 0);
  Row r;
  r.ok = true;
  uhmm::Stats a{};
  Clock::time_point t0;
  for (int s = 0; s <= steps; ++s) {
    if (s == 1) {
      a = rt->stats();
      t0 = Clock::now();
    }
    Check(rt->SyncForDevice(0, nullptr), "sync");
    for (size_t k = 0; k < 16; ++k) {  // the kernel reads
      const size_t off = (k * 977 * kPage) % bytes;
      absl::StatusOr<uint64_t> d = rt->DeviceAddress(static_cast<uint8_t*>(*mem) + off);
      Check(d.status(), "DeviceAddress");
      uint64_t word = 0;
      Check(dev->DeviceRead(*d, &word, 8), "DeviceRead");
      r.ok &= word == off / 8;
    }
    for (size_t w = 0; w < bytes / 8; w += kPage / 8) r.ok &= p[w] == w;  // the CPU reads
  }
  FinishSteps(*rt, *mem, a, t0, steps, &r);
  return r;
}

// Launch sync after the CPU wrote `words_per_block` words (spread over its pages) in each 2 MiB
// block: the median of `reps` syncs, with the blocks pushed on the launching thread and `threads`
// migration workers.
Row PushEveryBlock(int threads, size_t bytes, size_t words_per_block, int reps) {
  auto rt = Make(true, bytes + (size_t{8} << 20), threads);
  absl::StatusOr<void*> mem = rt->Allocate(bytes);
  Check(mem.status(), "Allocate");
  auto* p = static_cast<volatile uint64_t*>(*mem);
  for (size_t w = 0; w < bytes / 8; w += kPage / 8) p[w] = w;
  Check(rt->SyncForDevice(0, nullptr), "sync");
  const size_t stride = (size_t{2} << 20) / 8 / words_per_block;
  std::vector<double> ms;
  const uhmm::Stats a = rt->stats();
  for (int rep = 1; rep <= reps; ++rep) {
    for (size_t w = 0; w < bytes / 8; w += stride) p[w] = w + rep;
    const auto t0 = Clock::now();
    Check(rt->SyncForDevice(0, nullptr), "sync");
    ms.push_back(Ms(Clock::now() - t0));
  }
  Row r;
  r.copied_to_device_mib = CopiedMiB(a, rt->stats()) / reps;
  std::sort(ms.begin(), ms.end());
  r.ms = ms[ms.size() / 2];
  r.ok = true;
  for (size_t w = 0; w < bytes / 8; w += kPage / 8) r.ok &= p[w] == (w % stride ? w : w + reps);
  Check(rt->Free(*mem), "Free");
  return r;
}

}  // namespace

int main() {
  const size_t kRelaunch = size_t{64} << 20, kField = size_t{16} << 20;
  const Row on = RelaunchAfterReads(true, kRelaunch), off = RelaunchAfterReads(false, kRelaunch);
  const Row fon = FirstLaunch(true, kRelaunch), foff = FirstLaunch(false, kRelaunch);
  const Row lon = SimulatorLoop(true, kField, 10, 16), loff = SimulatorLoop(false, kField, 10, 16);
  const Row rm = ReadMostlyTable(true, kField, 10), norm = ReadMostlyTable(false, kField, 10);
  std::printf(
      "| coherence (host backend) | write tracking and read duplication on | off | goal |\n"
      "|---|---|---|---|\n");
  std::printf(
      "| relaunch after the CPU only read 64 MiB: copied to the device | %.1f MiB | %.1f MiB | 0 with "
      "duplication: %s |\n",
      on.copied_to_device_mib, off.copied_to_device_mib, on.copied_to_device_mib == 0 ? "met" : "NOT met");
  std::printf("| relaunch after the CPU only read 64 MiB: launch sync | %.2f ms | %.2f ms | - |\n", on.ms,
              off.ms);
  std::printf(
      "| first launch of a new 64 MiB range the CPU wrote 1/16 of the pages of: copied to the device | %.1f "
      "MiB "
      "| %.1f MiB | the written pages (4 MiB) with duplication: %s |\n",
      fon.copied_to_device_mib, foff.copied_to_device_mib,
      fon.copied_to_device_mib <= 4.0 ? "met" : "NOT met");
  std::printf("| first launch: launch sync | %.2f ms | %.2f ms | - |\n", fon.ms, foff.ms);
  std::printf(
      "| simulator loop (16 MiB field, 16 CPU reads a step): copied to the device per step | %.2f MiB | "
      "%.2f MiB | less with duplication: %s |\n",
      lon.copied_to_device_mib, loff.copied_to_device_mib,
      lon.copied_to_device_mib < loff.copied_to_device_mib ? "met" : "NOT met");
  std::printf("| simulator loop: copied to the host per step | %.2f MiB | %.2f MiB | same |\n",
              lon.copied_to_host_mib, loff.copied_to_host_mib);
  std::printf("| simulator loop: step time (sync + device rewrite + reads) | %.2f ms | %.2f ms | - |\n",
              lon.ms, loff.ms);
  std::printf(
      "\n| READ_MOSTLY table (16 MiB, CPU and kernel read it every step), per step after the first | "
      "advised | not advised | goal |\n|---|---|---|---|\n");
  std::printf("| copied to the device | %.2f MiB | %.2f MiB | 0 advised: %s |\n", rm.copied_to_device_mib,
              norm.copied_to_device_mib, rm.copied_to_device_mib == 0 ? "met" : "NOT met");
  std::printf("| copied to the host | %.2f MiB | %.2f MiB | 0 advised: %s |\n", rm.copied_to_host_mib,
              norm.copied_to_host_mib, rm.copied_to_host_mib == 0 ? "met" : "NOT met");
  std::printf("| step time (launch sync + 16 device reads + CPU reads) | %.2f ms | %.2f ms | - |\n", rm.ms,
              norm.ms);
  std::printf(
      "\n| launch sync after CPU writes in each of 32 blocks (64 MiB), median of 15 | 2 migration workers "
      "(whole blocks go to them) | no migration workers |\n|---|---|---|\n");
  bool pushes_ok = true;
  for (size_t words : {size_t{1}, size_t{512}}) {
    const Row par = PushEveryBlock(2, kRelaunch, words, 15), ser = PushEveryBlock(0, kRelaunch, words, 15);
    pushes_ok &= par.ok && ser.ok;
    std::printf("| %s: launch sync | %.2f ms | %.2f ms |\n",
                words == 1 ? "one word a block" : "every page written", par.ms, ser.ms);
    std::printf("| %s: copied to the device per sync | %.2f MiB | %.2f MiB |\n",
                words == 1 ? "one word a block" : "every page written", par.copied_to_device_mib,
                ser.copied_to_device_mib);
  }
  if (!on.ok || !off.ok || !fon.ok || !foff.ok || !lon.ok || !loff.ok || !rm.ok || !norm.ok || !pushes_ok) {
    std::printf("DATA CHECK FAILED\n");
    return 1;
  }
  std::printf("data checked: every value read back as written\n");
  return 0;
}
