// MigrationGate: migrations to devices pass through it, and whoever must see no such migration
// start for a while (fork preparing its copies, uhmm_evict_device emptying a device) closes it:
// Close() waits for the migrations already through, and new ones wait in Enter() until Open().
#ifndef UHMM_RUNTIME_MM_MIGRATION_GATE_H_
#define UHMM_RUNTIME_MM_MIGRATION_GATE_H_

#include "runtime/base/sync.h"

namespace uhmm {

class MigrationGate {
 public:
  void Enter() {
    MutexLock lock(&mu_);
    if (closed_ > 0) {
      ++waiting_;
      while (closed_ > 0) cv_.Wait(&mu_);
      --waiting_;
      if (admit_ > 0 && --admit_ == 0) cv_.SignalAll();
    }
    ++inside_;
  }
  void Exit() {
    MutexLock lock(&mu_);
    if (--inside_ == 0) cv_.SignalAll();
  }
  // Closers may overlap (a fork during an eviction); the gate opens when the last one opens it.
  // The caller must not be inside the gate itself.
  void Close() {
    MutexLock lock(&mu_);
    // Those held back by the last closing pass first: closing again at once must not starve them.
    while (admit_ > 0) cv_.Wait(&mu_);
    ++closed_;
    while (inside_ > 0) cv_.Wait(&mu_);
  }
  void Open() {
    MutexLock lock(&mu_);
    if (--closed_ == 0) {
      admit_ = waiting_;
      cv_.SignalAll();
    }
  }

 private:
  Mutex mu_{LockRank::kMigrationGate};
  CondVar cv_;
  int closed_ ABSL_GUARDED_BY(mu_) = 0;
  int inside_ ABSL_GUARDED_BY(mu_) = 0;
  int waiting_ ABSL_GUARDED_BY(mu_) = 0;  // in Enter(), held back
  int admit_ ABSL_GUARDED_BY(mu_) = 0;    // of those, still to pass since the gate last opened
};

// Holds a gate entered for a scope.
class GatePass {
 public:
  explicit GatePass(MigrationGate* gate) : gate_(gate) { gate_->Enter(); }
  ~GatePass() { gate_->Exit(); }
  GatePass(const GatePass&) = delete;
  GatePass& operator=(const GatePass&) = delete;

 private:
  MigrationGate* const gate_;
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_MM_MIGRATION_GATE_H_
