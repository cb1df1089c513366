// Mm: the parts of one runtime, wired together by the facade (api/runtime_impl.cc) when it starts.
// Each part owns one responsibility and its state; parts reach each other through this table, never
// through the facade. Pointers are set before any thread that uses them starts and stay valid for
// the runtime's life.
#ifndef UHMM_RUNTIME_MM_MM_H_
#define UHMM_RUNTIME_MM_MM_H_

namespace uhmm {

struct Config;
struct Counters;
class Backend;
class CpuFault;
class DeviceTable;
class Evictor;
class FaultService;
class ForkHandler;
class Migrator;
class ReadAheadFence;
class NumaPlacement;
class Uffd;
class UffdEvents;
class VaSpace;
class WriteTracker;
class WorkerPool;
class ZapTracker;

struct Mm {
  const Config* config = nullptr;
  Counters* counters = nullptr;
  Backend* backend = nullptr;
  DeviceTable* devices = nullptr;             // mm/device_table.h: devices and their page pools
  Uffd* uffd = nullptr;                       // fault/uffd.h: the userfaultfd
  FaultService* faults = nullptr;             // fault/fault_service.h: reads and dispatches messages
  WorkerPool* workers = nullptr;              // process/workers.h: read-ahead and parallel migration
  VaSpace* va_space = nullptr;                // mm/va_space.h: the range map and range lifetime
  ZapTracker* zaps = nullptr;                 // fault/zap_tracker.h: the runtime's own REMOVE events
  UffdEvents* events = nullptr;               // fault/uffd_events.h: REMOVE, UNMAP, REMAP
  CpuFault* cpu_fault = nullptr;              // fault/cpu_fault.h: the CPU fault path and SIGBUS
  Migrator* migrator = nullptr;               // mm/migrator.h: the migration drivers
  Evictor* evictor = nullptr;                 // mm/evictor.h: device-page allocation and eviction
  NumaPlacement* placement = nullptr;         // process/numa_placement.h
  ForkHandler* fork = nullptr;                // process/fork.h
  WriteTracker* write_tracker = nullptr;      // fault/write_tracker.h: nullptr without read duplication
  ReadAheadFence* readahead_fence = nullptr;  // policy/readahead_fence.h: read-ahead vs device use
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_MM_MM_H_
