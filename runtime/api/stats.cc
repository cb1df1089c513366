// UHMM_STATS: the counters, printed to stderr; see stats.h.
#include "runtime/api/stats.h"

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/api/runtime_impl.h"

namespace uhmm {

void PrintStats(const Runtime& rt) {
  const Stats s = rt.stats();
  const double mib = 1.0 / (1 << 20);
  std::fprintf(
      stderr,
      "uhmm stats (backend %s, %d device(s)):\n"
      "  cpu faults        %llu (duplicates %llu, stale %llu, unmanaged %llu)\n"
      "  to device         %.1f MiB (%llu pages; %llu by launch syncs in %llu passes)\n"
      "  to host           %.1f MiB (%llu pages)\n"
      "  evictions         %llu chunks, %llu pages\n"
      "  SIGBUS delivered  %llu\n"
      "  device pool       %llu of %llu pages in use (%.1f%%)\n",
      std::string(rt.backend_name()).c_str(), rt.device_count(),
      static_cast<unsigned long long>(s.cpu_faults), static_cast<unsigned long long>(s.duplicate_faults),
      static_cast<unsigned long long>(s.stale_faults), static_cast<unsigned long long>(s.unmanaged_faults),
      s.pages_to_device * kPageSize * mib, static_cast<unsigned long long>(s.pages_to_device),
      static_cast<unsigned long long>(s.launch_pages_to_device),
      static_cast<unsigned long long>(s.launch_syncs), s.pages_to_host * kPageSize * mib,
      static_cast<unsigned long long>(s.pages_to_host), static_cast<unsigned long long>(s.evicted_chunks),
      static_cast<unsigned long long>(s.evicted_pages), static_cast<unsigned long long>(s.sigbus_delivered),
      static_cast<unsigned long long>(s.device_pages_used),
      static_cast<unsigned long long>(s.device_pages_total),
      s.device_pages_total ? 100.0 * s.device_pages_used / s.device_pages_total : 0.0);
  if (rt.device_count() > 1) {
    std::fprintf(stderr, "  device to device  %.1f MiB (%llu pages) in one hop (peer copies)\n",
                 s.pages_device_to_device * kPageSize * mib,
                 static_cast<unsigned long long>(s.pages_device_to_device));
    for (int d = 0; d < rt.device_count(); ++d) {
      absl::StatusOr<Runtime::DeviceStats> ds = rt.device_stats(d);
      if (!ds.ok()) continue;
      std::fprintf(stderr, "    device %d        %llu of %llu pages in use (%s)\n", d,
                   static_cast<unsigned long long>(ds->pool_pages_used),
                   static_cast<unsigned long long>(ds->pool_pages_total), ds->name.c_str());
    }
  }
  std::fprintf(
      stderr,
      "  policy            %llu pages read ahead, %llu faults grown, %llu blocks thrashing, "
      "%llu hugetlb ranges\n",
      static_cast<unsigned long long>(s.readahead_pages), static_cast<unsigned long long>(s.grown_faults),
      static_cast<unsigned long long>(s.thrashing_blocks), static_cast<unsigned long long>(s.hugetlb_ranges));
  if (auto* impl = dynamic_cast<const RuntimeImpl*>(&rt)) {
    const Counters& c = *impl->mm().counters;
    std::fprintf(
        stderr,
        "  uffd ioctls       %llu CONTINUE (%llu met EEXIST), %llu WAKE, %llu ZEROPAGE, %llu POISON; "
        "%llu fault migrations\n",
        static_cast<unsigned long long>(c.uffd_continue.load()),
        static_cast<unsigned long long>(c.uffd_eexist.load()),
        static_cast<unsigned long long>(c.uffd_wake.load()),
        static_cast<unsigned long long>(c.uffd_zeropage.load()),
        static_cast<unsigned long long>(c.uffd_poison.load()),
        static_cast<unsigned long long>(c.fault_migrations.load()));
    std::fprintf(stderr,
                 "  read-ahead        %llu runs dropped: a device use began after they were decided\n",
                 static_cast<unsigned long long>(c.readahead_dropped.load()));
    std::fprintf(stderr,
                 "  read duplication  %s; %llu pages came home keeping a device copy, %llu went back without "
                 "a copy, %llu copies dropped; %llu never-written pages got device zeros instead of a copy\n",
                 impl->write_tracking().c_str(), static_cast<unsigned long long>(c.duplicates_kept.load()),
                 static_cast<unsigned long long>(c.duplicates_reused.load()),
                 static_cast<unsigned long long>(c.duplicates_dropped.load()),
                 static_cast<unsigned long long>(c.zero_pages_filled.load()));
    std::fprintf(stderr, "  placement         %s\n", impl->placement().c_str());
  }
}

// Runtimes with UHMM_STATS=1 that are still alive at exit print then.
void StatsAtExit(RuntimeImpl* rt, bool add) {
  static std::mutex mu;
  static auto* live = new std::vector<RuntimeImpl*>();
  static std::once_flag registered;
  std::lock_guard<std::mutex> lock(mu);
  if (add) {
    std::call_once(registered, [] {
      std::atexit([] {
        std::lock_guard<std::mutex> l(mu);
        for (RuntimeImpl* r : *live) PrintStats(*r);
        live->clear();
      });
    });
    live->push_back(rt);
  } else {
    std::erase(*live, rt);
  }
}

}  // namespace uhmm
