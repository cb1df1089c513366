// The CPU fault path; see cpu_fault.h.
#include "runtime/fault/cpu_fault.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "runtime/api/counters.h"
#include "runtime/fault/fault_service.h"
#include "runtime/fault/uffd.h"
#include "runtime/fault/write_tracker.h"
#include "runtime/mm/migrator.h"
#include "runtime/mm/va_space.h"
#include "runtime/policy/policy.h"
#include "runtime/policy/readahead_fence.h"
#include "runtime/process/workers.h"
#include "runtime/trace/tracer.h"

namespace uhmm {
namespace {

void LogIfError(const absl::Status& s) {
  if (!s.ok()) std::fprintf(stderr, "%s\n", s.ToString().c_str());
}

uffd_msg FaultMsg(uintptr_t address, uint32_t tid, uint32_t seq, bool deferred, bool minor, bool write) {
  uffd_msg m;
  std::memset(&m, 0, sizeof(m));
  m.event = UFFD_EVENT_PAGEFAULT;
  m.arg.pagefault.flags = (deferred ? FaultService::kDeferredFault : 0) |
                          (minor ? UFFD_PAGEFAULT_FLAG_MINOR : 0) | (write ? UFFD_PAGEFAULT_FLAG_WRITE : 0);
  m.arg.pagefault.address = address;
  m.arg.pagefault.feat.ptid = tid;
  FaultService::SetReadSeq(&m, seq);
  return m;
}

// The trace of one fault message on this thread: CpuFault::Handle stamps the lookup, the migration code
// the copy and mapping phases (through trace::CurrentFaultTrace()), and the destructor the wake-up,
// then emits the record. Inactive (no clock reads) when the message was read with tracing off.
class FaultTraceScope {
 public:
  // `current`: the migration code stamps this record from now on (CurrentFaultTrace); otherwise
  // only once MakeCurrent() is called (the faults of a group take turns).
  FaultTraceScope(uint64_t received_ns, uintptr_t address, uint32_t tid, bool deferred, bool current = true)
      : writer_(received_ns != 0 ? std::make_optional<trace::Tracer::ScopedWriter>() : std::nullopt),
        active_(writer_ && writer_->active()),
        deferred_(deferred) {
    if (!active_) return;
    ft_.rec.type = trace::RecordType::kFault;
    ft_.rec.device = -1;
    ft_.rec.addr = address;
    ft_.rec.aux = tid;
    ft_.rec.t[trace::kReceived] = received_ns;
    if (current) trace::CurrentFaultTrace() = &ft_;
  }
  ~FaultTraceScope() {
    if (!active_) return;
    ReleaseCurrent();
    if (ft_.deferred) return;
    // A migration that served this fault stamped its own wake-up; otherwise the wake was the
    // CONTINUE or WAKE just before returning.
    if (ft_.rec.t[trace::kWoken] == 0) ft_.rec.t[trace::kWoken] = trace::Tracer::Now();
    trace::Tracer::Emit(ft_.rec);
  }
  FaultTraceScope(const FaultTraceScope&) = delete;
  FaultTraceScope& operator=(const FaultTraceScope&) = delete;

  void Stamp(int phase) {
    if (active_) ft_.rec.t[phase] = trace::Tracer::Now();
  }
  void Flag(uint8_t flag) { ft_.rec.flags |= flag; }
  // Host resident when we looked: a duplicate, "covered" when it waited for the migration that
  // brought the page back.
  void Duplicate() { Flag(deferred_ ? trace::kFaultCovered : trace::kFaultDuplicate); }
  // Handed to a migration in flight: that message's next dispatch is the one traced.
  void Defer() { ft_.deferred = true; }
  void MakeCurrent() {
    if (active_) trace::CurrentFaultTrace() = &ft_;
  }
  void ReleaseCurrent() {
    if (active_ && trace::CurrentFaultTrace() == &ft_) trace::CurrentFaultTrace() = nullptr;
  }

 private:
  std::optional<trace::Tracer::ScopedWriter> writer_;  // the session stays open until we emit
  const bool active_;
  const bool deferred_;
  trace::FaultTrace ft_;
};

}  // namespace

absl::StatusOr<SigbusMode> ResolveSigbusMode(SigbusMode wanted, const Uffd& uffd) {
  switch (wanted) {
    case SigbusMode::kAuto:
      return uffd.has_poison() ? SigbusMode::kPoison : SigbusMode::kTkill;
    case SigbusMode::kPoison:
      if (!uffd.has_poison()) {
        return absl::UnavailableError(
            "uhmm: UHMM_SIGBUS_MODE=poison needs UFFDIO_POISON (Linux 6.6+); use auto or tkill");
      }
      return SigbusMode::kPoison;
    case SigbusMode::kTkill:
      break;
  }
  return SigbusMode::kTkill;
}

void CpuFault::Handle(uintptr_t address, uint32_t tid, uint32_t seq, uint64_t received_ns, bool deferred,
                      bool minor, bool write) {
  // A deferred message comes back once the migration that held its page is done: same fault.
  if (!deferred) mm_.counters->cpu_faults.fetch_add(1, std::memory_order_relaxed);
  FaultTraceScope trace(received_ns, address, tid, deferred);
  const uintptr_t page = address & ~(kPageSize - 1);
  RangeRef range = mm_.va_space->Lookup(page);
  if (!range) {
    // Registered memory that no live range covers (mremapped away, or racing with free): the
    // shadow page is the data, so map it; but first let pending mremaps bring their data home.
    if (mm_.faults->ParkIfRemapPending(FaultMsg(address, tid, seq, false, minor, write))) {
      trace.Defer();
      return;
    }
    trace.Stamp(trace::kLookedUp);
    trace.Duplicate();
    mm_.counters->unmanaged_faults.fetch_add(1, std::memory_order_relaxed);
    // A hugetlb mapping takes only whole 2 MiB pages (EINVAL otherwise). A page the shadow does not
    // have reads as zero.
    absl::Status st = minor ? mm_.uffd->Continue(page, kPageSize) : mm_.uffd->ZeroFill(page, kPageSize);
    if (absl::IsInvalidArgument(st)) {
      const uintptr_t huge = page & ~(kBlockSize - 1);
      st = minor ? mm_.uffd->Continue(huge, kBlockSize, /*wake=*/true, kBlockSize)
                 : mm_.uffd->ZeroFill(huge, kBlockSize);
    }
    LogIfError(st);
    return;
  }
  VaBlock& blk = range->block_of(page);
  const size_t i = ManagedRange::page_in_block(page);
  std::pair<uintptr_t, uintptr_t> granule;
  bool readahead_ok = false;
  for (int attempt = 0;; ++attempt) {
    Page* dpage = nullptr;
    bool poisoned = false;
    {
      MutexLock lock(&blk.mu);
      if (blk.busy[i]) {
        // A migration holds the page; finalize re-queues us. Never wait here: the migration may
        // itself be waiting for a service thread to read its REMOVE event.
        blk.deferred.push_back(FaultMsg(address, tid, seq, /*deferred=*/true, minor, write));
        trace.Defer();
        return;
      }
      poisoned = blk.poisoned[i];
      if (!poisoned && blk.device[i]) {
        // A message read before this block last gained device pages is stale when its thread has
        // moved on (a signal makes the kernel raise the fault again; our own fault-back already
        // woke it): migrating back would pull data from under a kernel that was just given it.
        // Wake instead: a thread that is still waiting retries and faults afresh.
        if (static_cast<int32_t>(seq - blk.device_seq) <= 0) {
          mm_.counters->stale_faults.fetch_add(1, std::memory_order_relaxed);
          trace.Stamp(trace::kLookedUp);
          trace.Flag(trace::kFaultStale);
          LogIfError(mm_.uffd->Wake(page & ~(range->cpu_page() - 1), range->cpu_page()));
          return;
        }
        dpage = blk.pages[i];
        if (attempt == 0) {
          granule = Granule(*range, blk, page, &readahead_ok);
        } else {
          // The page went back to a device between our migration and this look (or the policy's
          // granule missed it): move just the CPU's unit of it, so every round makes progress.
          const uintptr_t unit = page & ~(range->cpu_page() - 1);
          granule = {unit, std::min(unit + range->cpu_page(), range->end())};
        }
      }
      if (!poisoned && dpage == nullptr) {
        // Host resident: someone else brought it back (a duplicate) or it was never mapped here.
        // Map it under the block lock: a migration to a device that starts after we looked must
        // not zap first and see its zap undone by this CONTINUE (a lost CPU write).
        if (attempt == 0) {
          (minor ? mm_.counters->duplicate_faults : mm_.counters->zero_fill_faults)
              .fetch_add(1, std::memory_order_relaxed);
          trace.Stamp(trace::kLookedUp);
          trace.Duplicate();
        }
        const uintptr_t unit = page & ~(range->cpu_page() - 1);
        // A duplicate or zero page stays write-protected, so that a CPU write shows in write
        // tracking; unless it was written before it lost its mapping.
        const bool mapped =
            minor ? mm_.faults->MapUnlessDiscarded(
                        unit, unit + range->cpu_page(),
                        [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(blk.mu) {
                          return MapTracked(*range, blk, unit, unit + range->cpu_page(), Protect::kFlagged);
                        })
                  : ZeroFill(*range, blk, page, tid);
        // An application discard of this page was read meanwhile: wait for it, then map.
        if (mapped || mm_.faults->ParkIfDiscardPending(FaultMsg(address, tid, seq, true, minor, write))) {
          if (!mapped) trace.Defer();
          return;
        }
        continue;
      }
    }
    trace.Stamp(trace::kLookedUp);
    if (poisoned) {
      trace.Flag(trace::kFaultSigbus);
      DeliverSigbus(*range, page, tid);
      return;
    }
    VmFault vmf;
    vmf.vma = range.get();
    vmf.address = page;
    vmf.start = granule.first;
    vmf.end = granule.second;
    vmf.page = dpage;
    // The device copies stay (write tracking says, at the next push, which pages the CPU wrote): a
    // write fault's granule is mostly pages the CPU does not write, which then go back uncopied.
    vmf.keep_device_copy = range->duplicates_reads();
    // Read-ahead is decided as of now, before the fault-back wakes the thread: whatever that thread
    // does next (a prefetch to the device, say) is later and must win over it.
    const uint64_t decided_ns = readahead_ok ? trace::Tracer::Now() : 0;
    FaultService::MapRecord mapped(page);
    mm_.counters->fault_migrations.fetch_add(1, std::memory_order_relaxed);
    absl::Status s = dpage->pgmap->ops->page_fault(&vmf);
    if (!s.ok()) {
      std::fprintf(stderr, "uhmm: device could not migrate page %#lx back (%s); SIGBUS to thread %u\n",
                   static_cast<unsigned long>(page), s.ToString().c_str(), tid);
      trace.Flag(trace::kFaultSigbus);
      trace::TraceError(s.code(), page, dpage->pgmap->device);
      DeliverSigbus(*range, page, tid);
      return;
    }
    if (readahead_ok) {
      readahead_ok = false;
      auto [from, to] =
          range->readahead().OnFault(vmf.start, vmf.end, range->end(), mm_.config->readahead_bytes);
      if (from < to) PostReadAhead(range, from, to, decided_ns);
    }
    // The migration mapped the page, which woke this fault's thread (traced: woke it right after).
    // Done: if another migration takes the page back to a device before the thread runs, the
    // thread faults again by itself, a new message. (The old path looked again here, and mapped a
    // mapped page: a CONTINUE that met EEXIST, then a WAKE.)
    if (!mm_.config->fault_recheck && mapped.mapped(page)) return;
    // Not mapped by it: another migration held the page or had moved it to another device by the
    // time ours collected, or a pending application discard held the mapping back. Look again: the
    // next round defers, parks, maps a duplicate or migrates the CPU's unit.
  }
}

void CpuFault::HandleBlock(std::span<const uffd_msg> msgs, uint64_t received_ns) {
  // Another look through Handle, for faults this group does not serve itself. `counted`: already
  // counted and traced here; Handle then takes it as a deferred message (not counted again).
  auto alone = [&](const uffd_msg& m, bool counted) {
    Handle(m.arg.pagefault.address, m.arg.pagefault.feat.ptid, FaultService::ReadSeq(m), received_ns, counted,
           /*minor=*/true, FaultService::IsWrite(m));
  };
  const uintptr_t first = msgs[0].arg.pagefault.address & ~(kPageSize - 1);
  RangeRef range = mm_.va_space->Lookup(first);
  if (!range) {
    for (const uffd_msg& m : msgs) alone(m, false);
    return;
  }
  VaBlock& blk = range->block_of(first);
  // One trace writer for the group, outliving every record's.
  std::optional<trace::Tracer::ScopedWriter> writer;
  if (received_ns != 0) writer.emplace();
  enum class Fate { kAlone, kDone, kSigbus, kMigrate };
  struct Member {
    const uffd_msg* msg = nullptr;
    uintptr_t page = 0;
    Fate fate = Fate::kAlone;
    Page* dpage = nullptr;
    std::pair<uintptr_t, uintptr_t> granule;
    std::optional<FaultTraceScope> trace;
  };
  const size_t n = msgs.size();
  std::unique_ptr<Member[]> members(new Member[n]);
  bool readahead_ok = false;
  const Pagemap* pgmap = nullptr;  // the device the group's migrations come from
  {
    MutexLock lock(&blk.mu);
    for (size_t k = 0; k < n; ++k) {
      Member& m = members[k];
      m.msg = &msgs[k];
      const uintptr_t address = msgs[k].arg.pagefault.address;
      const uint32_t tid = msgs[k].arg.pagefault.feat.ptid, seq = FaultService::ReadSeq(msgs[k]);
      m.page = address & ~(kPageSize - 1);
      if (m.page < range->start() || m.page >= range->end() || &range->block_of(m.page) != &blk) continue;
      const size_t i = ManagedRange::page_in_block(m.page);
      // Host resident: a duplicate, which Handle maps. On another device than the group's: Handle.
      if (!blk.busy[i] && !blk.poisoned[i] &&
          (!blk.device[i] || (pgmap != nullptr && blk.pages[i]->pgmap != pgmap))) {
        continue;
      }
      mm_.counters->cpu_faults.fetch_add(1, std::memory_order_relaxed);
      m.trace.emplace(received_ns, address, tid, /*deferred=*/false, /*current=*/false);
      m.fate = Fate::kDone;
      if (blk.busy[i]) {
        // As in Handle: the migration holding the page re-queues the message.
        blk.deferred.push_back(
            FaultMsg(address, tid, seq, /*deferred=*/true, /*minor=*/true, FaultService::IsWrite(msgs[k])));
        m.trace->Defer();
        continue;
      }
      m.trace->Stamp(trace::kLookedUp);
      if (blk.poisoned[i]) {
        m.trace->Flag(trace::kFaultSigbus);
        m.fate = Fate::kSigbus;
        continue;
      }
      if (static_cast<int32_t>(seq - blk.device_seq) <= 0) {  // stale, as in Handle
        mm_.counters->stale_faults.fetch_add(1, std::memory_order_relaxed);
        m.trace->Flag(trace::kFaultStale);
        LogIfError(mm_.uffd->Wake(m.page & ~(range->cpu_page() - 1), range->cpu_page()));
        continue;
      }
      m.dpage = blk.pages[i];
      if (pgmap == nullptr) {
        pgmap = m.dpage->pgmap;
        m.granule = Granule(*range, blk, m.page, &readahead_ok);  // notes the block's return once
      } else {
        m.granule = GranuleAround(*range, blk, m.page);
      }
      m.fate = Fate::kMigrate;
    }
  }
  for (size_t k = 0; k < n; ++k) {
    if (members[k].fate == Fate::kSigbus)
      DeliverSigbus(*range, members[k].page, members[k].msg->arg.pagefault.feat.ptid);
  }
  // Runs of granules, in address order: a granule joins the run while the run stays at least half
  // pages that some fault asked for (as density growth would take it); each run is one migration.
  std::vector<Member*> moving;
  for (size_t k = 0; k < n; ++k) {
    if (members[k].fate == Fate::kMigrate) moving.push_back(&members[k]);
  }
  std::sort(moving.begin(), moving.end(),
            [](const Member* a, const Member* b) { return a->granule < b->granule; });
  FaultService::MapRecord mapped(first);
  for (size_t r = 0; r < moving.size();) {
    Member& leader = *moving[r];
    uintptr_t start = leader.granule.first, end = leader.granule.second, asked = end - start;
    size_t next = r + 1;
    for (; next < moving.size(); ++next) {
      const auto [s, e] = moving[next]->granule;
      const uintptr_t more = e > std::max(s, end) ? e - std::max(s, end) : 0;
      if (std::max(e, end) - start > 2 * (asked + more)) break;
      asked += more;
      end = std::max(e, end);
    }
    VmFault vmf;
    vmf.vma = range.get();
    vmf.address = leader.page;
    vmf.start = start;
    vmf.end = end;
    vmf.page = leader.dpage;
    vmf.keep_device_copy = range->duplicates_reads();  // as in Handle
    const uint64_t decided_ns = readahead_ok ? trace::Tracer::Now() : 0;
    leader.trace->MakeCurrent();  // the migration is traced as the leader's
    mm_.counters->fault_migrations.fetch_add(1, std::memory_order_relaxed);
    absl::Status s = leader.dpage->pgmap->ops->page_fault(&vmf);
    leader.trace->ReleaseCurrent();
    if (!s.ok()) {
      // The leader's access ends in SIGBUS, as a lone fault's would; the others of the run try
      // their own migrations (below, not mapped).
      const uint32_t tid = leader.msg->arg.pagefault.feat.ptid;
      std::fprintf(stderr, "uhmm: device could not migrate page %#lx back (%s); SIGBUS to thread %u\n",
                   static_cast<unsigned long>(leader.page), s.ToString().c_str(), tid);
      leader.trace->Flag(trace::kFaultSigbus);
      trace::TraceError(s.code(), leader.page, leader.dpage->pgmap->device);
      DeliverSigbus(*range, leader.page, tid);
      leader.fate = Fate::kDone;
    } else if (readahead_ok) {
      auto [from, to] = range->readahead().OnFault(start, end, range->end(), mm_.config->readahead_bytes);
      if (from < to) PostReadAhead(range, from, to, decided_ns);
    }
    for (size_t j = r + 1; j < next; ++j) moving[j]->trace->Flag(trace::kFaultCovered);  // by the leader's
    r = next;
  }
  for (size_t k = 0; k < n; ++k) {
    Member& m = members[k];
    if (m.fate == Fate::kAlone) {
      alone(*m.msg, false);
    } else if (m.fate == Fate::kMigrate && !mapped.mapped(m.page)) {
      // Not mapped by the group's migration (see the end of Handle): Handle looks again.
      m.trace->Defer();  // Handle traces it
      alone(*m.msg, true);
    }
  }
}

absl::Status CpuFault::MapTracked(ManagedRange& range, VaBlock& blk, uintptr_t start, uintptr_t end,
                                  Protect protect) {
  auto map = [&](uintptr_t s, uintptr_t e, bool write_protect) {
    return mm_.uffd->Continue(s, e - s, /*wake=*/true, range.cpu_page(), /*drain_events=*/false,
                              write_protect);
  };
  if (!range.duplicates_reads()) return map(start, end, false);
  auto flagged = [&](size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(blk.mu) {
    return !blk.Busy(i) && (blk.Zero(i) || blk.Duplicate(i));
  };
  bool any_flagged = false;
  for (uintptr_t a = start; a < end && !any_flagged; a += kPageSize)
    any_flagged = flagged(ManagedRange::page_in_block(a));
  // No flag trusts a write-protect mark here: map as asked, without a look.
  if (!any_flagged) return map(start, end, protect == Protect::kAll);
  const std::vector<uint8_t> marks = mm_.write_tracker->Marks(start, end);
  size_t dropped = 0;
  struct Run {
    uintptr_t start, end;
    bool write_protect;
  };
  std::vector<Run> runs;
  bool skipped = false;  // mapped pages left alone
  for (uintptr_t a = start; a < end; a += kPageSize) {
    const size_t i = ManagedRange::page_in_block(a);
    const uint8_t mark = marks[(a - start) / kPageSize];
    if ((mark & WriteTracker::kWritten) && !blk.Busy(i)) {
      blk.ForgetZero(i);
      if (blk.Duplicate(i)) {
        put_page(blk.DropDuplicate(i));  // under the block lock, as Evictor::DropDuplicates does
        ++dropped;
      }
    }
    if (mark & WriteTracker::kMapped) {
      skipped = true;
      continue;
    }
    const bool wp = protect == Protect::kAll || flagged(i);
    if (!runs.empty() && runs.back().end == a && runs.back().write_protect == wp) {
      runs.back().end = a + kPageSize;
    } else {
      runs.push_back({a, a + kPageSize, wp});
    }
  }
  if (dropped > 0) mm_.counters->duplicates_dropped.fetch_add(dropped, std::memory_order_relaxed);
  for (const Run& run : runs) {
    absl::Status s = map(run.start, run.end, run.write_protect);
    if (!s.ok()) return s;  // an event to read first (MapUnlessDiscarded looks again), or an error
  }
  // Whoever mapped a skipped page woke its waiters; the old path (Config::fault_recheck) wakes
  // after every page found mapped, as Uffd::Continue does for it.
  if (skipped && mm_.config->fault_recheck) return mm_.uffd->Wake(start, end - start);
  return absl::OkStatus();
}

bool CpuFault::ZeroFill(ManagedRange& range, VaBlock& blk, uintptr_t page, uint32_t tid) {
  // The shadow has no page here: this is its first touch, or a discard freed it. Give the whole
  // block (its host-resident pages that no migration holds) zero pages and map them, so that a
  // first pass over a new range takes one fault per 2 MiB, as transparent hugepages would.
  const uintptr_t start = page & ~(kBlockSize - 1);
  const uintptr_t end = std::min(start + kBlockSize, range.end());
  PageRuns runs;
  for (uintptr_t a = start; a < end; a += kPageSize) {
    const size_t i = ManagedRange::page_in_block(a);
    if (!blk.device[i] && !blk.busy[i] && !blk.poisoned[i] && !blk.unmapped[i]) AppendPageRun(&runs, a);
  }
  for (const auto& run : runs) {
    const uintptr_t s = run.first, e = run.second;
    if (fallocate(range.memfd(), 0, static_cast<off_t>(s - range.start()), static_cast<off_t>(e - s)) != 0) {
      const int err = errno;
      if (page < s || page >= e) continue;  // only the faulting page must exist
      // No memory for it (hugetlb: no free hugepage). Like the kernel for such memory: SIGBUS.
      std::fprintf(stderr, "uhmm: no host memory for managed page %#lx (%s); SIGBUS to thread %u\n",
                   static_cast<unsigned long>(page), strerror(err), tid);
      mm_.counters->sigbus.fetch_add(1, std::memory_order_relaxed);
      syscall(SYS_tgkill, getpid(), static_cast<pid_t>(tid), SIGBUS);
      LogIfError(mm_.uffd->Wake(page & ~(range.cpu_page() - 1), range.cpu_page()));
      continue;
    }
    // Write-protected where writes are tracked: a page the CPU only reads stays zero.
    if (!mm_.faults->MapUnlessDiscarded(s, e, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(blk.mu) {
          return MapTracked(range, blk, s, e, Protect::kAll);
        })) {
      return false;
    }
  }
  return true;
}

std::pair<uintptr_t, uintptr_t> CpuFault::Granule(ManagedRange& range, VaBlock& blk, uintptr_t page,
                                                  bool* readahead_ok) {
  // Thrashing: pages of this block keep coming back right after moving to a device.
  if (mm_.config->thrashing_threshold > 0 &&
      NoteReturn(blk, trace::Tracer::Now(), uint64_t{1000} * mm_.config->thrashing_lapse_us,
                 mm_.config->thrashing_threshold)) {
    mm_.counters->thrashing_blocks.fetch_add(1, std::memory_order_relaxed);
  }
  *readahead_ok = !blk.thrashing;
  return GranuleAround(range, blk, page);
}

std::pair<uintptr_t, uintptr_t> CpuFault::GranuleAround(ManagedRange& range, VaBlock& blk, uintptr_t page) {
  const uintptr_t block_start = page & ~(kBlockSize - 1);
  const uintptr_t lo = std::max(block_start, range.start());
  const uintptr_t hi = std::min(block_start + kBlockSize, range.end());
  if (range.hugetlb()) return {lo, hi};  // the CPU maps the block whole
  // The configured granule around the fault, clipped to the block and the range; grown by density
  // unless the block thrashes.
  uintptr_t gran = mm_.config->fault_granularity;
  if (range.advice().Any()) {
    if (const uint32_t advised = range.advice().At(page).granule; advised != 0)
      gran = advised;  // FAULT_GRANULE
  }
  uintptr_t start = std::max(page & ~(gran - 1), lo);
  uintptr_t end = std::min((page & ~(gran - 1)) + gran, hi);
  if (!blk.thrashing &&
      GrowGranule(~blk.device, block_start, lo, hi, mm_.config->growth_threshold, &start, &end)) {
    mm_.counters->grown_faults.fetch_add(1, std::memory_order_relaxed);
  }
  return {start, end};
}

void CpuFault::PostReadAhead(const RangeRef& range, uintptr_t from, uintptr_t to, uint64_t decided_ns) {
  if (range->advice().Any()) {
    // PREFERRED_LOCATION a device: read-ahead never pulls such pages home before the CPU asks.
    PageRuns wanted;
    range->advice().ForEachRun(from, to, [&](uintptr_t s, uintptr_t e, const PageAdvice& a) {
      if (a.preferred < 0) wanted.emplace_back(s, e);
    });
    for (auto [s, e] : wanted) PostReadAheadRun(range, s, e, decided_ns);
    return;
  }
  PostReadAheadRun(range, from, to, decided_ns);
}

void CpuFault::PostReadAheadRun(const RangeRef& range, uintptr_t from, uintptr_t to, uint64_t decided_ns) {
  for (uintptr_t a = from; a < to;) {
    const uintptr_t b = std::min(to, (a & ~(kBlockSize - 1)) + kBlockSize);
    RangeRef ref = range.Clone();
    if (!ref) return;
    auto job = [mm = &mm_, r = std::make_shared<RangeRef>(std::move(ref)), a, b, decided_ns] {
      // Not past a device use that began after the decision (policy/readahead_fence.h).
      if (!mm->readahead_fence->Enter(decided_ns)) {
        mm->counters->readahead_dropped.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      absl::Status s = mm->migrator->ToHost(**r, a, b, MigrateCause::kReadAhead, decided_ns);
      mm->readahead_fence->Leave();
      if (!s.ok()) trace::TraceError(s.code(), a, -1);  // the CPU's own fault reports it
    };
    if (!mm_.workers->Post(std::move(job))) return;
    a = b;
  }
}

void CpuFault::DeliverSigbus(ManagedRange& range, uintptr_t page, uint32_t tid) {
  mm_.counters->sigbus.fetch_add(1, std::memory_order_relaxed);
  // The CPU's unit: a hugetlb block is poisoned (and its data lost) whole.
  const size_t unit = range.cpu_page();
  const uintptr_t first = page & ~(unit - 1);
  if (sigbus_mode_ == SigbusMode::kPoison) {
    std::vector<Page*> release;
    {
      VaBlock& blk = range.block_of(page);
      MutexLock lock(&blk.mu);
      for (uintptr_t a = first; a < first + unit; a += kPageSize) {
        const size_t i = ManagedRange::page_in_block(a);
        if (blk.State(i) == PageState::kUnmapped) continue;  // no access left to poison
        // A page a migration holds keeps its device page until that migration lets it go.
        if (Page* p = blk.Poison(i)) release.push_back(p);
      }
    }
    for (Page* p : release) put_page(p);
    if (!mm_.uffd->Poison(first, unit).ok()) LogIfError(mm_.uffd->Wake(first, unit));
    return;
  }
  // Fallback without UFFDIO_POISON: signal the faulting thread, then wake it so it leaves the
  // fault and takes the signal. si_code is SI_TKILL and si_addr is not set. The page stays on the
  // device, so a later access asks the device again.
  syscall(SYS_tgkill, getpid(), static_cast<pid_t>(tid), SIGBUS);
  LogIfError(mm_.uffd->Wake(first, unit));
}

}  // namespace uhmm
