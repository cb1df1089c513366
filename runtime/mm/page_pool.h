// The device page pool: Page descriptors for every device page, carved from 2 MiB root chunks that
// the backend allocates lazily up to a cap. Free pages sit at refcount 1 on per-chunk free lists.
// Chunks carry a use tick so eviction can pick the least recently used one. With
// Placement::kSameAddress each chunk in use is bound to one 2 MiB block (mapped there by the device)
// and the page for managed address A is the one at A's offset in its block's chunk.
//
// CHUNK STATES (nvidia-uvm's uvm_pmm_gpu_chunk_state_t in spirit). A chunk slot is in one of
//   kFree   no device memory behind it (never allocated, or given back to the device)
//   kEmpty  device memory allocated, no page in use, bound to no block
//   kBound  (kSameAddress) mapped at a 2 MiB block, no page in use
//   kInUse  at least one page allocated (kSameAddress: at the block it is bound to)
// and changes state only through these events, checked in debug builds like the page states:
//   kFree  --Allocate--> kEmpty --Bind--> kBound --Unbind--> kEmpty --GiveBack--> kFree
//   kEmpty --FirstPageOut--> kInUse --LastPageBack--> kEmpty      (kAnywhere)
//   kBound --FirstPageOut--> kInUse --LastPageBack--> kBound      (kSameAddress)
//   any    --Teardown--> kFree                                    (the pool's destructor)
// SEVERAL DEVICES (kSameAddress): a block maps one device's chunk at a time (BlockOwners). A pool
// claims the block before it binds a chunk there and lets go when it unbinds it; when another
// device holds the block, TryAlloc says which, and that device's pool gives it up once its chunk
// there is idle (UnbindIdle). A MOVE TO A PEER (Migrator::ToDevice) holds every page of a block's
// chunk and detaches the chunk (Detach): it is mapped at a window (PeerWindows) instead of the
// block, which goes to the peer, and stays in use there until its last page leaves; then the
// window is unmapped and the chunk is empty.
// LOCKING: mu_ (rank kPagePool) guards the chunks; Page refcounts and flags are atomics.
#ifndef UHMM_RUNTIME_MM_PAGE_POOL_H_
#define UHMM_RUNTIME_MM_PAGE_POOL_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "runtime/base/sync.h"
#include "runtime/mm/block_owners.h"
#include "runtime/mm/peer_windows.h"
#include "uhmm/backend.h"
#include "uhmm/pagemap.h"

namespace uhmm {

inline constexpr size_t kPagesPerChunk = kBlockSize / kPageSize;

enum class ChunkState : uint8_t { kFree, kEmpty, kBound, kInUse };
enum class ChunkEvent : uint8_t {
  kAllocate,
  kBind,
  kUnbind,
  kFirstPageOut,
  kLastPageBack,
  kGiveBack,
  kTeardown
};
const char* ChunkStateName(ChunkState s);
const char* ChunkEventName(ChunkEvent e);
// The state a chunk (in slot `slot`, bound to a block when `bound`) in state `from` enters on
// `event`. An event illegal in `from` aborts in debug builds, naming the slot, the state and the
// event; release builds return `from` unchanged for it.
ChunkState ChunkTransition(size_t slot, ChunkState from, ChunkEvent event, bool bound);

class PagePool {
 public:
  // `max_chunks` caps the device memory the pool may take (pool size / 2 MiB). `owners` (kSameAddress
  // with several devices, else nullptr) is shared by every device's pool; pgmap->device names this
  // device there. `windows`: where Detach's windows go back (nullptr: no moves to a peer).
  PagePool(Device* device, Pagemap* pgmap, size_t max_chunks, BlockOwners* owners = nullptr,
           PeerWindows* windows = nullptr);
  ~PagePool();  // returns every chunk to the device
  PagePool(const PagePool&) = delete;
  PagePool& operator=(const PagePool&) = delete;

  // A free page at refcount 2 (the caller's reference) for managed address `addr`, or nullptr when
  // the pool must evict first (every page in use and the cap reached; with kSameAddress: no chunk
  // bound to addr's block and none free to bind). Errors come from the device, and (kSameAddress)
  // from addr's page being still in use, with *slot_busy set: whoever dropped it from its block
  // (a discard, poison or unmap, a migration's finalize) puts it right after its block lock.
  // With several devices, UNAVAILABLE with *block_holder set when another device maps addr's block.
  absl::StatusOr<Page*> TryAlloc(uintptr_t addr, bool* slot_busy = nullptr, int* block_holder = nullptr);
  // Puts a page whose refcount dropped to 1 back on its chunk's free list.
  void Release(Page* page);

  // The least recently used chunk holding committed pages, ignoring `exclude`.
  std::optional<size_t> PickVictim(const absl::flat_hash_set<size_t>& exclude);
  // Managed addresses of the committed pages of chunk `index`, sorted.
  std::vector<uintptr_t> CommittedAddresses(size_t index);
  // Gives chunks with no page in use back to the device ("pool release").
  void ReleaseEmptyChunks();
  // kSameAddress: unbinds the chunks bound to blocks in [start, end), which must hold no page in use
  // (the range is being destroyed and its pages were released).
  void UnbindRange(uintptr_t start, uintptr_t end);
  // kSameAddress: gives up `block` (unmaps this device's chunk there) if no page of it is in use.
  // True when this device no longer maps the block.
  bool UnbindIdle(uintptr_t block);
  // kSameAddress, a move to a peer that holds `held` pages of `block`: when those are all the pages
  // in use in this device's chunk there, maps the chunk at `window` (its pages' dma_addr follow),
  // unmaps it from the block (waiting for device work that may use it) and hands the block to
  // device `to`. FAILED_PRECONDITION (nothing changed) when the chunk has other pages in use or the
  // block is not this device's; the window goes back to PeerWindows when the last page leaves.
  absl::Status Detach(uintptr_t block, uintptr_t window, size_t held, int to);
  // Undoes Detach for the pages a failed move left here, which the caller holds (`held` of them,
  // all the chunk has in use): maps the chunk detached from `block` at the block again (claiming
  // it back; its current holder must have given it up, UnbindIdle). True when no chunk of this
  // device is detached from the block any more.
  bool Reattach(uintptr_t block, size_t held);

  size_t total_pages() const { return max_chunks_ * kPagesPerChunk; }
  size_t used_pages() const { return used_.load(std::memory_order_relaxed); }
  size_t chunk_count();

 private:
  struct Chunk {
    size_t slot = 0;  // its index in chunks_ (pfn / kPagesPerChunk)
    ChunkState state = ChunkState::kFree;
    uint64_t device_base = 0;       // AllocChunk's value (not kFree)
    uintptr_t bound = 0;            // kSameAddress: the block it is mapped at (0: none)
    uintptr_t window = 0;           // kInUse, detached (Detach): the window it is mapped at
    uintptr_t detached_from = 0;    // and the block it was mapped at
    std::unique_ptr<Page[]> pages;  // not kFree
    std::vector<uint32_t> free;     // kAnywhere: free page indices
    uint32_t used = 0;
    uint64_t last_use = 0;
  };

  // A new chunk in a free slot, or nullptr at the cap.
  absl::StatusOr<Chunk*> NewChunk() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Chunk*> ChunkForBlock(uintptr_t block, int* block_holder) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // An idle chunk to bind to a block: unbound, new, or the least recently used bound one (unbound
  // here); nullptr when every chunk holds pages.
  absl::StatusOr<Chunk*> BindableChunk() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Unmaps `chunk` from its block, if it is bound to one, and lets the block go (BlockOwners);
  // Unbind also moves it to kEmpty, the destructor to kFree.
  void Unmap(Chunk& chunk) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Unbind(Chunk& chunk) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Its pages' device addresses: base, base + 4 KiB, ... (the block, or a window, it is mapped at).
  void SetDeviceAddresses(Chunk& chunk, uint64_t base) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Maps `chunk` at `block` (the caller owns the block in BlockOwners) and makes it the block's
  // chunk here; the caller applies the state event that fits.
  absl::Status MapAtBlock(Chunk& chunk, uintptr_t block) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A detached chunk: unmaps it from its window and puts the window back.
  void CloseWindow(Chunk& chunk) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves `chunk` to its state after `event` (ChunkTransition), checking it in debug builds.
  void Apply(Chunk& chunk, ChunkEvent event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Device* const device_;
  Pagemap* const pgmap_;
  const size_t max_chunks_;
  const bool same_address_;
  BlockOwners* const owners_;  // nullptr: this device is the only one that maps blocks
  PeerWindows* const windows_;
  std::atomic<size_t> used_{0};
  Mutex mu_{LockRank::kPagePool};
  std::vector<std::unique_ptr<Chunk>> chunks_ ABSL_GUARDED_BY(mu_);  // every slot, kFree ones too
  uint64_t tick_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<uintptr_t, Chunk*> bound_ ABSL_GUARDED_BY(mu_);  // block -> chunk
  // Descriptor arrays of chunks given back to the device, reused by new chunks. A descriptor stays
  // valid memory for the pool's life: a fault handler may still hold one it read under a block lock
  // (for its pagemap) while eviction empties and releases the chunk.
  std::vector<std::unique_ptr<Page[]>> spare_pages_ ABSL_GUARDED_BY(mu_);
};

}  // namespace uhmm

#endif  // UHMM_RUNTIME_MM_PAGE_POOL_H_
