// fork() support; see fork.h and docs/SEMANTICS.md.
//
// Before fork (prepare): new migrations to devices wait, in-flight ones finish, and every range is
// migrated to the host, so the memfd shadows hold all data. A pipe is opened.
// In the child: each range's user view is replaced by a private anonymous copy of its shadow (read
// through a new mapping of the memfd)
// (fork's copy semantics; the shared memfd must not leak writes between the processes), then the
// pipe's write end is closed. The child's runtime refuses further migrations.
// In the parent: it waits until the child closed the pipe (the copy is a consistent snapshot), then
// lets migrations resume. The child's views are not registered with userfaultfd at all (uffd.cc
// does not ask for fork events), so the fork never waits on the fault service.
#include "runtime/process/fork.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <vector>

#include "runtime/api/counters.h"
#include "runtime/fault/fault_service.h"
#include "runtime/mm/device_table.h"
#include "runtime/mm/migrator.h"
#include "runtime/mm/va_space.h"
#include "runtime/process/workers.h"

namespace uhmm {
namespace {

std::mutex g_mu;  // std::mutex: it is held across fork() and unlocked in both processes
std::vector<ForkHandler*>& Handlers() {
  static auto* v = new std::vector<ForkHandler*>();
  return *v;
}

void Prepare() {
  g_mu.lock();
  for (ForkHandler* h : Handlers()) h->Prepare();
}
void Parent() {
  for (ForkHandler* h : Handlers()) h->Parent();
  g_mu.unlock();
}
void Child() {
  for (ForkHandler* h : Handlers()) h->Child();
  g_mu.unlock();
}

}  // namespace

void ForkHandler::Register() {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(uhmm::Prepare, uhmm::Parent, uhmm::Child); });
  std::lock_guard<std::mutex> lock(g_mu);
  Handlers().push_back(this);
}

void ForkHandler::Unregister() {
  std::lock_guard<std::mutex> lock(g_mu);
  auto& v = Handlers();
  v.erase(std::remove(v.begin(), v.end(), this), v.end());
}

void ForkHandler::Prepare() {
  if (forked_child_) return;
  mm_.counters->forks.fetch_add(1, std::memory_order_relaxed);
  mm_.faults->AwaitDiscards(0, UINTPTR_MAX);
  gate_.Close();
  for (auto& r : mm_.va_space->All()) {
    RangeRef ref(r);
    if (!ref) continue;
    absl::Status s = mm_.migrator->ToHost(*r, r->start(), r->end(), MigrateCause::kFork);
    if (!s.ok()) {
      std::fprintf(stderr,
                   "uhmm: fork: %s; the child's accesses to the pages left on the device raise SIGBUS\n",
                   s.ToString().c_str());
    }
  }
  if (pipe2(pipe_, O_CLOEXEC) != 0) pipe_[0] = pipe_[1] = -1;
  // Held across the clone: the child walks the range map, which a thread adding or removing a range at
  // that instant would leave half-linked (a fuzzed fork child crashed there). Every holder keeps it
  // briefly and waits on nothing, and nothing the fork does needs it.
  mm_.va_space->LockForFork();
}

void ForkHandler::Parent() {
  if (forked_child_) return;
  mm_.va_space->UnlockForFork();
  if (pipe_[1] >= 0) {
    close(pipe_[1]);
    char c;
    while (read(pipe_[0], &c, 1) < 0 && errno == EINTR) {
    }
    close(pipe_[0]);
  }
  pipe_[0] = pipe_[1] = -1;
  gate_.Open();
}

namespace {
// Maps [start, end) over a file with no pages, so that every access there raises SIGBUS. `*empty`
// is that file, made on first use (one per fork child; each mapping keeps it alive).
void MapSigbus(uintptr_t start, uintptr_t end, int* empty) {
  if (*empty < 0) *empty = memfd_create("uhmm-lost", MFD_CLOEXEC);
  if (*empty < 0 || mmap(reinterpret_cast<void*>(start), end - start, PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_FIXED, *empty, 0) == MAP_FAILED) {
    std::fprintf(stderr,
                 "uhmm: fork child: cannot make [%#lx, %#lx) raise SIGBUS (%s); it holds stale data\n",
                 static_cast<unsigned long>(start), static_cast<unsigned long>(end), strerror(errno));
  }
}
}  // namespace

void ForkHandler::LoseUnreachablePages(ManagedRange& r, int* empty) {
  // The parent could not bring these pages home (a device error), so the shadow the copy came from
  // is stale there: the contract is SIGBUS on access, never stale data. Runs are mapped as they
  // end, without collecting them: a fork child must not allocate (see abandoned_threads.h).
  // The block locks are not taken (hence no thread-safety analysis here, fork.h): the child is
  // single-threaded, and a block lock some parent thread held at the fork stays locked forever.
  uintptr_t run = 0;  // start of the current run, 0 when none
  for (size_t b = 0; b < r.num_blocks(); ++b) {
    VaBlock& blk = r.block(b);
    for (size_t i = 0; i < kPagesPerBlock; ++i) {
      const uintptr_t a = r.block_start(b) + i * kPageSize;
      const PageState state = blk.State(i);
      const bool lost = a < r.end() && (state == PageState::kDevice || state == PageState::kPoisoned);
      if (lost && run == 0) run = a;
      if (!lost && run != 0) {
        MapSigbus(run, a, empty);
        run = 0;
      }
    }
  }
  if (run != 0) MapSigbus(run, (r.end() + kPageSize - 1) & ~(kPageSize - 1), empty);
}

void ForkHandler::Child() {
  if (forked_child_) return;
  forked_child_ = true;
  if (pipe_[0] >= 0) close(pipe_[0]);
  mm_.faults->AbandonAfterFork();
  mm_.workers->AbandonAfterFork();
  int lost_fd = -1;  // LoseUnreachablePages' empty file
  mm_.va_space->ForEachInForkChild([&](ManagedRange& r) {
    const uintptr_t start = r.start();
    void* copy = mmap(nullptr, r.size(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (copy == MAP_FAILED) {
      std::fprintf(stderr, "uhmm: fork child: no memory to copy range %#lx: %s\n",
                   static_cast<unsigned long>(start), strerror(errno));
      return;
    }
    // Read the shadow through a fresh mapping of the memfd: the runtime view may not exist here
    // (drivers mark pinned memory MADV_DONTFORK), and the user view may still be registered.
    void* shadow = mmap(nullptr, r.size(), PROT_READ, MAP_SHARED, r.memfd(), 0);
    if (shadow == MAP_FAILED) {
      std::fprintf(stderr, "uhmm: fork child: mapping the shadow of range %#lx: %s\n",
                   static_cast<unsigned long>(start), strerror(errno));
      munmap(copy, r.size());
      return;
    }
    std::memcpy(copy, shadow, r.size());
    munmap(shadow, r.size());
    if (mremap(copy, r.size(), r.size(), MREMAP_MAYMOVE | MREMAP_FIXED, reinterpret_cast<void*>(start)) ==
        MAP_FAILED) {
      std::fprintf(stderr, "uhmm: fork child: mremap over %#lx failed: %s\n",
                   static_cast<unsigned long>(start), strerror(errno));
      return;
    }
    LoseUnreachablePages(r, &lost_fd);
  });
  if (lost_fd >= 0) close(lost_fd);
  if (pipe_[1] >= 0) close(pipe_[1]);
  pipe_[0] = pipe_[1] = -1;
}

}  // namespace uhmm
