// The backend contract, in the spirit of include/linux/memremap.h and mm/migrate_device.c:
// device memory is a Pagemap of Page descriptors with two callbacks (page_free, page_fault), and
// every migration goes through migrate_vma_setup / migrate_vma_pages / migrate_vma_finalize.
#ifndef UHMM_PAGEMAP_H_
#define UHMM_PAGEMAP_H_

#include <atomic>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace uhmm {

class CopyEngine;
struct Pagemap;
struct VmFault;

// Descriptor of one 4 KiB device page (struct page). Free pages sit at refcount 1 and a page never
// reaches 0: the drop to 1 calls pgmap->ops->page_free. The runtime owns the descriptors.
struct Page {
  std::atomic<int32_t> refcount{1};
  std::atomic<uint32_t> flags{0};
  Pagemap* pgmap = nullptr;
  uint64_t pfn = 0;                        // index of the page in its pagemap's pool
  uint64_t dma_addr = 0;                   // device address of the page (root chunk base + offset)
  void* zone_device_data = nullptr;        // the backend's, untouched by the runtime
  std::atomic<uintptr_t> managed_addr{0};  // managed address this page backs; 0 when free
};

enum PageFlags : uint32_t {
  kPageAllocated = 1u << 0,  // handed out by the pool, not yet returned by page_free
};

enum class MemoryType {
  kDevicePrivate = 1,   // the CPU cannot address it: CPU access faults and migrates back
  kDeviceCoherent = 2,  // reserved: CPU-coherent device memory (the seed's DEVICE_HOST)
};

struct PagemapOps {
  // Called once each time a reference drop brings `page` to refcount 1. The backend must return the
  // page to its allocator, normally with page_pool_release(page). Called without runtime locks held.
  void (*page_free)(Page* page);
  // Called when the CPU touches an address backed by `vmf->page`. Must migrate at least
  // [vmf->start, vmf->end) back to RAM with the migrate_vma_* calls. Cannot refuse: an error return
  // means the device could not copy, and the faulting access ends in SIGBUS.
  absl::Status (*page_fault)(VmFault* vmf);
};

// struct dev_pagemap. The backend fills type, ops, owner, device and copy_engine; the runtime
// attaches the pool when the device is registered and owns `internal`.
struct Pagemap {
  MemoryType type = MemoryType::kDevicePrivate;
  const PagemapOps* ops = nullptr;
  void* owner = nullptr;  // backend identity; migrate_vma selects pages by it (pgmap_owner)
  int device = -1;        // device ordinal within the runtime
  void* internal = nullptr;
  // The engine that copies this pagemap's pages in page_fault, MigrateToDevice and MigrateToRam:
  // the backend points it at its device's engine and copies through it, never through the engine
  // directly, so that a Device decorator (fault injection, uhmm/testing.h) can interpose its own.
  CopyEngine* copy_engine = nullptr;
};

// What page_fault is given. vma is the runtime's handle for the managed range: pass it on to
// MigrateVma. [start, end) is the granule the runtime's policy picked around `address`.
struct VmFault {
  void* vma = nullptr;
  uintptr_t address = 0;
  uintptr_t start = 0;
  uintptr_t end = 0;
  Page* page = nullptr;
  // Set by the runtime: keep the device copy of what comes back (read duplication: a CPU read
  // fault on a range that tracks CPU writes). migrate_fault_to_ram passes it on.
  bool keep_device_copy = false;
  // With kMigrateSelectDevicePrivate: the pages go to another device's pages (dst[].page, given by
  // migrate_alloc_and_copy_from_peer), not to RAM; the CPU mappings stay as they are.
  bool to_peer = false;
};

// migrate_vma flags.
enum MigrateSelect : uint32_t {
  kMigrateSelectSystem = 1u << 0,         // collect host-resident pages (migration to device)
  kMigrateSelectDevicePrivate = 1u << 1,  // collect pages on pgmap_owner's device (back to RAM)
};

enum MigratePfnFlags : uint32_t {
  kMigratePfnValid = 1u << 0,
  kMigratePfnMigrate = 1u << 1,  // src: collected and locked; dst: copied and ready to commit
  kMigratePfnDevice = 1u << 2,   // entry is a device page
  // src, to a device: the host page keeps a copy on this device (read duplication) at src.page,
  // which dst reuses; without kMigratePfnDirty the copy is current and nothing is copied.
  kMigratePfnDuplicate = 1u << 3,
  kMigratePfnDirty = 1u << 4,  // src duplicate that the CPU wrote: copied like any host page
  // src, to a device: the host page is zero (not written since the range was made), so its device
  // page is filled with zeros (a CopyOp without a host side) instead of copied to.
  kMigratePfnZero = 1u << 5,
};

// Why pages move (also the cause field of trace records). kPrefetch is an explicit migration the
// application asked for (uhmm_migrate, uhmm_prefetch_on_queue); kReadAhead is the runtime's own
// read-ahead after CPU faults.
enum class MigrateCause : uint32_t {
  kPrefetch = 0,
  kFault,
  kEviction,
  kAddressChange,
  kFork,
  kLaunch,
  kReadAhead
};

// One src[] or dst[] entry. For system memory `host` is the runtime's DMA-able view of the page; for
// device memory `page` is the descriptor.
struct MigratePfn {
  Page* page = nullptr;
  void* host = nullptr;
  uint32_t flags = 0;
};

// struct migrate_vma. Phases and who writes what:
//  setup (runtime): reads vma/start/end/flags/pgmap_owner; fills src[] (and dst[].host for moves to
//    RAM); locks the collected pages against other migrations and zaps their CPU mappings, so that
//    CPU accesses wait for finalize.
//  backend: for each src with kMigratePfnMigrate, provides dst (device page or RAM) and copies; clears
//    kMigratePfnMigrate in dst for pages it could not copy.
//  pages (runtime): drops entries that lost a race (range freed or unmapped meanwhile).
//  finalize (runtime): commits the rest, rolls back others, maps RAM pages on the CPU and unlocks.
struct MigrateVma {
  void* vma = nullptr;
  uintptr_t start = 0;
  uintptr_t end = 0;
  uint32_t flags = 0;
  const void* pgmap_owner = nullptr;
  std::vector<MigratePfn> src;
  std::vector<MigratePfn> dst;
  size_t cpages = 0;        // entries collected by setup
  size_t skipped_busy = 0;  // pages setup left out because another migration holds them
  MigrateCause cause = MigrateCause::kPrefetch;
  // Tracing (runtime-owned): CLOCK_MONOTONIC ns at setup, copy submitted, copy done; 0 when off.
  uint64_t trace_start_ns = 0, trace_submitted_ns = 0, trace_copied_ns = 0;
  // Runtime read-ahead (not 0): setup leaves out blocks that a migration to a device started on
  // after this time (the Tracer clock), so read-ahead decided earlier never undoes a later prefetch
  // or launch.
  uint64_t skip_if_moved_after_ns = 0;
  // To RAM: the device pages stay behind as copies of what came home (VaBlock "duplicate"), and
  // finalize maps the pages write-protected so that CPU writes are tracked.
  bool keep_device_copy = false;
  // With kMigrateSelectDevicePrivate: the pages go to another device's pages (dst[].page, given by
  // migrate_alloc_and_copy_from_peer), not to RAM; the CPU mappings stay as they are.
  bool to_peer = false;
};

absl::Status migrate_vma_setup(MigrateVma* migrate);
void migrate_vma_pages(MigrateVma* migrate);
void migrate_vma_finalize(MigrateVma* migrate);

// Phase-2 helpers every backend can use between setup and pages. On a copy error they clear
// kMigratePfnMigrate from the affected dst entries (so finalize rolls back) and return the error.
absl::Status migrate_copy_to_ram(MigrateVma* migrate, CopyEngine& engine);
absl::Status migrate_alloc_and_copy_to_device(MigrateVma* migrate, Pagemap& pgmap, CopyEngine& engine);
// For a to_peer migration: allocates `pgmap`'s pages and copies each collected page from its device
// page (src[].page->dma_addr, which `engine`'s device must reach) in one hop (kPeerToDevice).
absl::Status migrate_alloc_and_copy_from_peer(MigrateVma* migrate, Pagemap& pgmap, CopyEngine& engine);

// The usual page_fault body: migrates [vmf->start, vmf->end) of the faulting device (`owner`) back
// to RAM through the three phases, copying with `engine`. Returns the copy error, if any.
absl::Status migrate_fault_to_ram(VmFault* vmf, const void* owner, CopyEngine& engine);

// A free device page from `pgmap`'s pool at refcount 2 for managed address `addr`, evicting least
// recently used chunks back to RAM when the pool is full. RESOURCE_EXHAUSTED when nothing can be
// evicted. (`addr` matters for devices that share managed addresses, Placement::kSameAddress.)
absl::StatusOr<Page*> alloc_device_page(Pagemap& pgmap, uintptr_t addr);
// Returns a page to its pool's free list; for page_free implementations.
void page_pool_release(Page* page);

inline void get_page(Page* page) { page->refcount.fetch_add(1, std::memory_order_relaxed); }
// Drops a reference; the drop to 1 calls page_free. Dropping a free page is a fatal bug.
void put_page(Page* page);

}  // namespace uhmm

#endif  // UHMM_PAGEMAP_H_
