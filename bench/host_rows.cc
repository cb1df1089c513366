// The host-backend table of uhmm_bench: the CPU-side rows of the goal table on the emulated
// device (memcpy copy engine), each against uhmm with that row's optimisation turned off. For
// regressions of the runtime's CPU path; it says nothing about GPU speed.
#include <cmath>
#include <functional>
#include <limits>
#include <memory>

#include "bench/bench_harness.h"
#include "uhmm/uhmm.hpp"

namespace uhmm::bench {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

Config HostConfig(const std::function<void(Config*)>& tweak) {
  Config c = Config::FromEnv();
  c.backend = "host";
  c.device_pool_bytes = 0;
  tweak(&c);
  return c;
}

// One side of a row: a runtime with `config`, a range of `bytes` with `backing`, `reps` times
// (CPU fill with a fresh seed, untimed), then `timed` -> seconds or a latency; then the data check.
struct Side {
  double value = kNaN;
  size_t wrong = 0;
  std::string error;
};

using Timed = std::function<double(Runtime&, uint64_t* p, size_t bytes, uint64_t seed, size_t* wrong)>;

Side Measure(const Options& o, const Config& config, Backing backing, size_t bytes, bool fill_on_device,
             const Timed& timed) {
  Side side;
  Config c = config;
  c.device_pool_bytes = (bytes + 4 * kBlockSize) & ~(kBlockSize - 1);  // no eviction in these rows
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Create(c);
  if (!rt.ok()) {
    side.error = std::string(rt.status().message());
    return side;
  }
  absl::StatusOr<void*> mem = (*rt)->Allocate(bytes, backing);
  if (!mem.ok()) {
    side.error = std::string(mem.status().message());
    return side;
  }
  auto* p = static_cast<uint64_t*>(*mem);
  std::vector<double> values;
  for (int rep = 0; rep < o.reps; ++rep) {
    const uint64_t seed = 1000 + static_cast<uint64_t>(rep);
    // Fresh data on the host, then (for the read-back rows) on the device: a stale page would
    // still hold the previous repetition's words.
    if (absl::Status s = (*rt)->Migrate(p, bytes, kHost); !s.ok()) side.error = std::string(s.message());
    FillCpu(p, bytes, seed);
    if (fill_on_device) {
      if (absl::Status s = (*rt)->Migrate(p, bytes, 0); !s.ok()) side.error = std::string(s.message());
    }
    if (!side.error.empty()) break;
    values.push_back(timed(**rt, p, bytes, seed, &side.wrong));
    side.wrong += CountWrong(p, bytes, seed);
  }
  (void)(*rt)->Free(p);
  if (side.error.empty()) side.value = Median(values);
  return side;
}

Row MakeRow(std::string name, std::string unit, bool higher, const Side& off, const Side& on,
            std::string note) {
  Row r;
  r.name = std::move(name);
  r.unit = std::move(unit);
  r.higher_is_better = higher;
  r.baseline = off.value;
  r.uhmm = on.value;
  r.wrong = off.wrong + on.wrong;
  r.note = std::move(note);
  if (!off.error.empty()) r.note += " | off: " + off.error;
  if (!on.error.empty()) r.note += " | uhmm: " + on.error;
  return r;
}

// CPU read-back, one touch per page in `order`: GB/s.
Timed ReadBack(bool random) {
  return [random](Runtime&, uint64_t* p, size_t bytes, uint64_t seed, size_t* wrong) {
    const std::vector<uint32_t> order = PageOrder(bytes, random);
    const auto t0 = Clock::now();
    *wrong += TouchPages(p, order, seed);
    return static_cast<double>(bytes) / Seconds(Clock::now() - t0) / 1e9;
  };
}

Timed Prefetch(int device) {
  return [device](Runtime& rt, uint64_t* p, size_t bytes, uint64_t, size_t*) {
    const auto t0 = Clock::now();
    absl::Status s = rt.PrefetchOnQueue(p, bytes, device, nullptr);
    const double secs = Seconds(Clock::now() - t0);
    if (!s.ok()) std::fprintf(stderr, "uhmm_bench: prefetch: %s\n", std::string(s.message()).c_str());
    if (device != kHost) (void)rt.Migrate(p, bytes, kHost);  // the data check reads on the CPU
    return static_cast<double>(bytes) / secs / 1e9;
  };
}

// Isolated faults (one touch per 2 MiB block); collects every latency into `all`.
Timed Isolated(std::vector<double>* all) {
  return [all](Runtime&, uint64_t* p, size_t bytes, uint64_t seed, size_t* wrong) {
    std::vector<double> us;
    *wrong += TouchBlocksTimed(p, bytes, seed, &us);
    all->insert(all->end(), us.begin(), us.end());
    return Median(us);
  };
}

}  // namespace

void RunHostTable(const Options& o, Table* table) {
  const size_t bytes = o.bytes;
  auto no_policy = [](Config* c) {
    c->readahead_bytes = 0;
    c->growth_threshold = 0;
  };
  auto defaults = [](Config*) {};
  if (Selected(o, "read-back seq, 4K")) {
    Side off = Measure(o, HostConfig(no_policy), Backing::k4K, bytes, true, ReadBack(false));
    Side on = Measure(o, HostConfig(defaults), Backing::k4K, bytes, true, ReadBack(false));
    table->Add(MakeRow("read-back seq, 4K", "GB/s", true, off, on, "off: no read-ahead, no density growth"));
  }
  if (Selected(o, "read-back seq, hugetlb")) {
    Side off = Measure(o, HostConfig(defaults), Backing::k4K, bytes, true, ReadBack(false));
    Side on = Measure(o, HostConfig(defaults), Backing::kHugetlb, bytes, true, ReadBack(false));
    if (!on.error.empty()) on.error += " (this row needs " + std::to_string(bytes >> 21) + " free hugepages)";
    table->Add(MakeRow("read-back seq, hugetlb", "GB/s", true, off, on, "off: the same with 4 KiB pages"));
  }
  if (Selected(o, "read-back random, 4K")) {
    Side off = Measure(o, HostConfig(no_policy), Backing::k4K, bytes, true, ReadBack(true));
    Side on = Measure(o, HostConfig(defaults), Backing::k4K, bytes, true, ReadBack(true));
    table->Add(MakeRow("read-back random, 4K", "GB/s", true, off, on, "off: no density growth"));
  }
  if (Selected(o, "isolated fault")) {
    std::vector<double> poll_us, spin_us;
    auto poll = [](Config* c) { c->fault_spin_us = 0; };
    auto spin = [](Config* c) { c->fault_spin_us = 50; };
    Side off = Measure(o, HostConfig(poll), Backing::k4K, bytes, true, Isolated(&poll_us));
    Side on = Measure(o, HostConfig(spin), Backing::k4K, bytes, true, Isolated(&spin_us));
    off.value = poll_us.empty() ? kNaN : Percentile(poll_us, 0.5);
    on.value = spin_us.empty() ? kNaN : Percentile(spin_us, 0.5);
    table->Add(MakeRow("isolated fault p50, 4K", "us", false, off, on,
                       "off: fault threads sleep in poll(); uhmm: busy-poll 50 us (UHMM_FAULT_SPIN_US)"));
    off.value = poll_us.empty() ? kNaN : Percentile(poll_us, 0.99);
    on.value = spin_us.empty() ? kNaN : Percentile(spin_us, 0.99);
    off.wrong = on.wrong = 0;  // counted in the p50 row
    table->Add(MakeRow("isolated fault p99, 4K", "us", false, off, on, ""));
  }
  auto serial = [](Config* c) { c->migration_threads = 0; };
  if (Selected(o, "prefetch to device")) {
    Side off = Measure(o, HostConfig(serial), Backing::k4K, bytes, false, Prefetch(0));
    Side on = Measure(o, HostConfig(defaults), Backing::k4K, bytes, false, Prefetch(0));
    table->Add(
        MakeRow("prefetch to device", "GB/s", true, off, on, "off: one block at a time on the caller"));
  }
  if (Selected(o, "prefetch to host")) {
    Side off = Measure(o, HostConfig(serial), Backing::k4K, bytes, true, Prefetch(kHost));
    Side on = Measure(o, HostConfig(defaults), Backing::k4K, bytes, true, Prefetch(kHost));
    table->Add(MakeRow("prefetch to host", "GB/s", true, off, on, "off: one block at a time on the caller"));
  }
}

}  // namespace uhmm::bench
