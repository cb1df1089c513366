// ZapTracker: the runtime's own zaps of the user view (MADV_DONTNEED while a migration to a device
// collects pages), from just before their madvise to just after. Their REMOVE events are the
// runtime's, not application discards: the fault service asks Claim() as it reads each one.
#ifndef UHMM_RUNTIME_FAULT_ZAP_TRACKER_H_
#define UHMM_RUNTIME_FAULT_ZAP_TRACKER_H_

#include <cstdint>
#include <vector>

#include "runtime/base/sync.h"
#include "runtime/mm/mm.h"

namespace uhmm {

class ZapTracker {
 public:
  explicit ZapTracker(Mm& mm) : mm_(mm) {}
  void Begin(uintptr_t start, uintptr_t end);
  // After the madvise returned: waits until its last event is classified, then forgets the zap.
  void End(uintptr_t start, uintptr_t end);
  // For the fault service, as it reads a REMOVE event: true when it belongs to a zap in flight.
  bool Claim(uintptr_t start, uintptr_t end);

 private:
  struct Zap {
    uintptr_t start, end;
    uintptr_t next;  // where its next REMOVE event starts (it raises one per mapping, in order)
  };
  Mm& mm_;
  Mutex mu_{LockRank::kZapTracker};
  std::vector<Zap> zaps_ ABSL_GUARDED_BY(mu_);
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_FAULT_ZAP_TRACKER_H_
