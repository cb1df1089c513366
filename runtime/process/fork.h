// ForkHandler: fork() semantics for managed memory. pthread_atfork handlers bring device data home
// before the fork, give the child a private copy of every range, and hold the parent until the copy
// is done. Migrations to devices pass its gate, closed while a fork is being prepared.
//
// LOCKING: Prepare ends holding the VaSpace map lock exclusively (across the clone); Parent releases
// it and Child re-creates it. The child handlers allocate nothing (see abandoned_threads.h).
#ifndef UHMM_RUNTIME_PROCESS_FORK_H_
#define UHMM_RUNTIME_PROCESS_FORK_H_

#include "runtime/mm/managed_range.h"
#include "runtime/mm/migration_gate.h"
#include "runtime/mm/mm.h"

namespace uhmm {

class ForkHandler {
 public:
  explicit ForkHandler(Mm& mm) : mm_(mm) {}
  // Adds this runtime to those the process's atfork handlers serve, and removes it.
  void Register();
  void Unregister();

  // True in a child: the runtime was inherited across fork() and serves nothing.
  bool forked_child() const { return forked_child_; }
  // Migrations to a device pass it (Migrator::ToDevice).
  MigrationGate& gate() { return gate_; }

  void Prepare();
  void Parent();
  void Child();  // single-threaded: the child

 private:
  // In the child: pages the parent could not bring home raise SIGBUS (through the empty file
  // *empty, made on first use).
  void LoseUnreachablePages(ManagedRange& r, int* empty) ABSL_NO_THREAD_SAFETY_ANALYSIS;

  Mm& mm_;
  MigrationGate gate_;
  int pipe_[2] = {-1, -1};
  bool forked_child_ = false;
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_PROCESS_FORK_H_
