// Device page pool; see page_pool.h.
#include "runtime/mm/page_pool.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include "absl/strings/str_format.h"

namespace uhmm {

const char* ChunkStateName(ChunkState s) {
  switch (s) {
    case ChunkState::kFree:
      return "free";
    case ChunkState::kEmpty:
      return "empty";
    case ChunkState::kBound:
      return "bound";
    case ChunkState::kInUse:
      return "in use";
  }
  return "?";
}

const char* ChunkEventName(ChunkEvent e) {
  switch (e) {
    case ChunkEvent::kAllocate:
      return "Allocate";
    case ChunkEvent::kBind:
      return "Bind";
    case ChunkEvent::kUnbind:
      return "Unbind";
    case ChunkEvent::kFirstPageOut:
      return "FirstPageOut";
    case ChunkEvent::kLastPageBack:
      return "LastPageBack";
    case ChunkEvent::kGiveBack:
      return "GiveBack";
    case ChunkEvent::kTeardown:
      return "Teardown";
  }
  return "?";
}

ChunkState ChunkTransition(size_t slot, ChunkState from, ChunkEvent event, bool bound) {
  std::optional<ChunkState> to;
  switch (event) {
    case ChunkEvent::kAllocate:
      if (from == ChunkState::kFree) to = ChunkState::kEmpty;
      break;
    case ChunkEvent::kBind:
      if (from == ChunkState::kEmpty) to = ChunkState::kBound;
      break;
    case ChunkEvent::kUnbind:
      if (from == ChunkState::kBound) to = ChunkState::kEmpty;
      break;
    case ChunkEvent::kFirstPageOut:
      if (from == (bound ? ChunkState::kBound : ChunkState::kEmpty)) to = ChunkState::kInUse;
      break;
    case ChunkEvent::kLastPageBack:
      if (from == ChunkState::kInUse) to = bound ? ChunkState::kBound : ChunkState::kEmpty;
      break;
    case ChunkEvent::kGiveBack:
      if (from == ChunkState::kEmpty) to = ChunkState::kFree;
      break;
    case ChunkEvent::kTeardown:
      to = ChunkState::kFree;
      break;
  }
  if (to) return *to;
#if !defined(NDEBUG)
  std::fprintf(stderr, "uhmm: fatal: illegal chunk transition %s: chunk %zu is %s%s\n", ChunkEventName(event),
               slot, ChunkStateName(from), bound ? " (bound to a block)" : "");
  std::abort();
#else
  (void)slot;
  return from;
#endif
}

void PagePool::Apply(Chunk& chunk, ChunkEvent event) {
  chunk.state = ChunkTransition(chunk.slot, chunk.state, event, chunk.bound != 0);
#if !defined(NDEBUG)
  // What each state promises about the chunk's fields.
  const bool ok = chunk.state == ChunkState::kFree
                      ? chunk.pages == nullptr && chunk.bound == 0 && chunk.used == 0
                      : chunk.pages != nullptr && (chunk.state == ChunkState::kInUse) == (chunk.used > 0) &&
                            (chunk.state == ChunkState::kBound || chunk.state == ChunkState::kInUse ||
                             chunk.bound == 0) &&
                            (chunk.state != ChunkState::kBound || chunk.bound != 0) &&
                            (chunk.state == ChunkState::kInUse || chunk.window == 0) &&
                            (!same_address_ || chunk.state != ChunkState::kInUse || chunk.bound != 0 ||
                             chunk.window != 0);
  if (!ok) {
    std::fprintf(stderr,
                 "uhmm: fatal: chunk %zu is %s after %s but has %u pages in use, bound to %#lx, "
                 "descriptors %p\n",
                 chunk.slot, ChunkStateName(chunk.state), ChunkEventName(event), chunk.used,
                 static_cast<unsigned long>(chunk.bound), static_cast<void*>(chunk.pages.get()));
    std::abort();
  }
#endif
}

PagePool::PagePool(Device* device, Pagemap* pgmap, size_t max_chunks, BlockOwners* owners,
                   PeerWindows* windows)
    : device_(device),
      pgmap_(pgmap),
      max_chunks_(max_chunks),
      same_address_(device->placement() == Placement::kSameAddress),
      owners_(same_address_ ? owners : nullptr),
      windows_(same_address_ ? windows : nullptr) {}

PagePool::~PagePool() {
  MutexLock lock(&mu_);
  for (auto& chunk : chunks_) {
    if (chunk->state == ChunkState::kFree) continue;
    // Whatever its state: pages still in use are leaked by their holders, not by the pool.
    Unmap(*chunk);
    CloseWindow(*chunk);
    device_->FreeChunk(chunk->device_base);
    chunk->used = 0;
    spare_pages_.push_back(std::move(chunk->pages));
    Apply(*chunk, ChunkEvent::kTeardown);
  }
}

absl::StatusOr<PagePool::Chunk*> PagePool::NewChunk() {
  size_t live = 0;
  size_t slot = chunks_.size();
  for (size_t i = 0; i < chunks_.size(); ++i) {
    if (chunks_[i]->state != ChunkState::kFree) {
      ++live;
    } else if (slot == chunks_.size()) {
      slot = i;
    }
  }
  if (live >= max_chunks_) return nullptr;
  absl::StatusOr<uint64_t> base = device_->AllocChunk();
  if (!base.ok()) return base.status();
  if (slot == chunks_.size()) {
    chunks_.push_back(std::make_unique<Chunk>());
    chunks_.back()->slot = slot;
  }
  Chunk* chunk = chunks_[slot].get();
  chunk->device_base = *base;
  chunk->free.clear();
  chunk->last_use = 0;
  if (spare_pages_.empty()) {
    chunk->pages = std::make_unique<Page[]>(kPagesPerChunk);
  } else {
    chunk->pages = std::move(spare_pages_.back());  // every page free: refcount 1, no flags
    spare_pages_.pop_back();
  }
  if (!same_address_) chunk->free.reserve(kPagesPerChunk);
  for (size_t i = 0; i < kPagesPerChunk; ++i) {
    Page& p = chunk->pages[i];
    p.pgmap = pgmap_;
    p.pfn = slot * kPagesPerChunk + i;
    if (!same_address_) {
      p.dma_addr = *base + i * kPageSize;
      chunk->free.push_back(static_cast<uint32_t>(kPagesPerChunk - 1 - i));  // pop lowest first
    }
  }
  Apply(*chunk, ChunkEvent::kAllocate);
  return chunk;
}

void PagePool::Unmap(Chunk& chunk) {
  if (chunk.bound == 0) return;
  device_->UnmapChunk(chunk.device_base, chunk.bound);
  if (owners_ != nullptr) owners_->Release(chunk.bound, pgmap_->device);
  bound_.erase(chunk.bound);
  chunk.bound = 0;
}

void PagePool::SetDeviceAddresses(Chunk& chunk, uint64_t base) {
  for (size_t i = 0; i < kPagesPerChunk; ++i) chunk.pages[i].dma_addr = base + i * kPageSize;
}

absl::Status PagePool::MapAtBlock(Chunk& chunk, uintptr_t block) {
  if (absl::Status s = device_->MapChunk(chunk.device_base, block); !s.ok()) {
    return absl::Status(s.code(),
                        absl::StrFormat("mapping device memory at block %#x: %s", block, s.message()));
  }
  chunk.bound = block;
  bound_[block] = &chunk;
  SetDeviceAddresses(chunk, block);
  return absl::OkStatus();
}

void PagePool::CloseWindow(Chunk& chunk) {
  if (chunk.window == 0) return;
  // Only the move's copies used the window, and they are done: no wait for device work.
  if (absl::Status s = device_->UnmapWindow(chunk.device_base, chunk.window); !s.ok()) {
    std::fprintf(stderr,
                 "uhmm: device %d: unmapping a chunk from window %#lx: %s (the window is not reused)\n",
                 pgmap_->device, static_cast<unsigned long>(chunk.window), std::string(s.message()).c_str());
  } else if (windows_ != nullptr) {
    windows_->Put(chunk.window);
  }
  chunk.window = 0;
  chunk.detached_from = 0;
}

absl::Status PagePool::Detach(uintptr_t block, uintptr_t window, size_t held, int to) {
  MutexLock lock(&mu_);
  auto it = bound_.find(block);
  if (it == bound_.end() || owners_ == nullptr) {
    return absl::FailedPreconditionError(absl::StrFormat("block %#x is not mapped here", block));
  }
  Chunk& c = *it->second;
  if (c.state != ChunkState::kInUse || c.used != held) {
    return absl::FailedPreconditionError(
        absl::StrFormat("block %#x has %u pages in use here, the move holds %u", block, c.used, held));
  }
  // (Only this pool, under its lock, lets go of a block it maps: the owner stays this device.)
  if (owners_->OwnerOf(block) != pgmap_->device) {
    return absl::FailedPreconditionError(absl::StrFormat("block %#x is not this device's", block));
  }
  // The window first: a failure leaves everything as it was.
  if (absl::Status s = device_->MapChunk(c.device_base, window); !s.ok()) {
    return absl::Status(s.code(), absl::StrFormat("mapping a chunk at a window: %s", s.message()));
  }
  // Unmapped before `to` may map the block: a pool asking for it meanwhile sees this device.
  device_->UnmapChunk(c.device_base, block);
  owners_->Transfer(block, pgmap_->device, to);
  bound_.erase(it);
  c.bound = 0;
  c.window = window;
  c.detached_from = block;
  SetDeviceAddresses(c, window);
  return absl::OkStatus();
}

bool PagePool::Reattach(uintptr_t block, size_t held) {
  MutexLock lock(&mu_);
  Chunk* c = nullptr;
  for (auto& chunk : chunks_) {
    if (chunk->window != 0 && chunk->detached_from == block) c = chunk.get();
  }
  if (c == nullptr) return true;
  if (c->used != held) return false;  // a page there that the caller does not hold may be in a copy
  int holder = -1;
  if (owners_ == nullptr || bound_.contains(block) || !owners_->TryClaim(block, pgmap_->device, &holder)) {
    return false;
  }
  if (!MapAtBlock(*c, block).ok()) {
    owners_->Release(block, pgmap_->device);
    return false;
  }
  CloseWindow(*c);
  return true;
}

void PagePool::Unbind(Chunk& chunk) {
  if (chunk.bound == 0) return;
  Unmap(chunk);
  Apply(chunk, ChunkEvent::kUnbind);
}

absl::StatusOr<PagePool::Chunk*> PagePool::ChunkForBlock(uintptr_t block, int* block_holder) {
  if (auto it = bound_.find(block); it != bound_.end()) return it->second;
  int holder = -1;
  if (owners_ != nullptr && !owners_->TryClaim(block, pgmap_->device, &holder)) {
    if (block_holder != nullptr) *block_holder = holder;
    return absl::UnavailableError(absl::StrFormat("block %#x is mapped by device %d", block, holder));
  }
  absl::StatusOr<Chunk*> chunk = BindableChunk();
  if (chunk.ok() && *chunk != nullptr) {
    Chunk& c = **chunk;
    if (absl::Status s = MapAtBlock(c, block); !s.ok()) {
      chunk = s;
    } else {
      Apply(c, ChunkEvent::kBind);
      return &c;
    }
  }
  if (owners_ != nullptr) owners_->Release(block, pgmap_->device);  // not bound after all
  return chunk;
}

absl::StatusOr<PagePool::Chunk*> PagePool::BindableChunk() {
  // A chunk to bind, cheapest first: an idle unbound one, a new one while under the cap, else the
  // least recently used idle bound one (unbound from its block first).
  absl::StatusOr<Chunk*> chunk = nullptr;
  for (auto& c : chunks_) {
    if (c->state == ChunkState::kEmpty) {
      chunk = c.get();
      break;
    }
  }
  if (*chunk == nullptr) chunk = NewChunk();
  if (!chunk.ok()) return chunk.status();
  if (*chunk == nullptr) {
    for (auto& c : chunks_) {
      if ((c->state == ChunkState::kEmpty || c->state == ChunkState::kBound) &&
          (*chunk == nullptr || c->last_use < (*chunk)->last_use)) {
        *chunk = c.get();
      }
    }
    if (*chunk == nullptr) return nullptr;  // every chunk holds pages: evict one
    Unbind(**chunk);
  }
  return chunk;
}

absl::StatusOr<Page*> PagePool::TryAlloc(uintptr_t addr, bool* slot_busy, int* block_holder) {
  MutexLock lock(&mu_);
  Chunk* chosen = nullptr;
  Page* page = nullptr;
  if (same_address_) {
    absl::StatusOr<Chunk*> c = ChunkForBlock(addr & ~(kBlockSize - 1), block_holder);
    if (!c.ok()) return c.status();
    if (*c == nullptr) return nullptr;
    chosen = *c;
    page = &chosen->pages[(addr % kBlockSize) / kPageSize];
    if (page->flags.load(std::memory_order_relaxed) & kPageAllocated) {
      if (slot_busy != nullptr) *slot_busy = true;
      return absl::InternalError(absl::StrFormat(
          "device page for %#x (pfn %u) is still in use by an earlier migration", addr, page->pfn));
    }
  } else {
    // Prefer the most recently used chunk with room, so that chunks fill densely and LRU order
    // follows allocation order.
    for (auto& chunk : chunks_) {
      if (chunk->state != ChunkState::kFree && !chunk->free.empty() &&
          (!chosen || chunk->last_use > chosen->last_use)) {
        chosen = chunk.get();
      }
    }
    if (chosen == nullptr) {
      absl::StatusOr<Chunk*> c = NewChunk();
      if (!c.ok()) return c.status();
      if (*c == nullptr) return nullptr;
      chosen = *c;
    }
    page = &chosen->pages[chosen->free.back()];
    chosen->free.pop_back();
  }
  chosen->last_use = ++tick_;
  if (++chosen->used == 1) Apply(*chosen, ChunkEvent::kFirstPageOut);
  int32_t old = page->refcount.fetch_add(1, std::memory_order_acq_rel);
  if (old != 1) {
    std::fprintf(stderr, "uhmm: fatal: free device page pfn %llu had refcount %d, not 1\n",
                 static_cast<unsigned long long>(page->pfn), old);
    std::abort();
  }
  page->flags.fetch_or(kPageAllocated, std::memory_order_relaxed);
  page->managed_addr.store(0, std::memory_order_relaxed);
  used_.fetch_add(1, std::memory_order_relaxed);
  return page;
}

void PagePool::Release(Page* page) {
  page->managed_addr.store(0, std::memory_order_relaxed);
  page->flags.fetch_and(~kPageAllocated, std::memory_order_relaxed);
  MutexLock lock(&mu_);
  Chunk& chunk = *chunks_[page->pfn / kPagesPerChunk];
  if (chunk.state != ChunkState::kInUse) {
    std::fprintf(stderr, "uhmm: fatal: device page pfn %llu released to chunk %zu, which is %s\n",
                 static_cast<unsigned long long>(page->pfn), chunk.slot, ChunkStateName(chunk.state));
    std::abort();
  }
  if (!same_address_) chunk.free.push_back(static_cast<uint32_t>(page->pfn % kPagesPerChunk));
  if (--chunk.used == 0) {
    CloseWindow(chunk);  // a detached chunk's last page left
    Apply(chunk, ChunkEvent::kLastPageBack);
  }
  used_.fetch_sub(1, std::memory_order_relaxed);
}

std::optional<size_t> PagePool::PickVictim(const absl::flat_hash_set<size_t>& exclude) {
  MutexLock lock(&mu_);
  std::optional<size_t> best;
  for (size_t i = 0; i < chunks_.size(); ++i) {
    const Chunk* c = chunks_[i].get();
    if (c->state != ChunkState::kInUse || exclude.contains(i)) continue;
    if (!best || c->last_use < chunks_[*best]->last_use) best = i;
  }
  return best;
}

std::vector<uintptr_t> PagePool::CommittedAddresses(size_t index) {
  std::vector<uintptr_t> out;
  MutexLock lock(&mu_);
  if (index >= chunks_.size() || chunks_[index]->state == ChunkState::kFree) return out;
  const Chunk& c = *chunks_[index];
  for (size_t i = 0; i < kPagesPerChunk; ++i) {
    uintptr_t addr = c.pages[i].managed_addr.load(std::memory_order_acquire);
    if (addr != 0) out.push_back(addr);
  }
  std::sort(out.begin(), out.end());
  return out;
}

void PagePool::ReleaseEmptyChunks() {
  MutexLock lock(&mu_);
  for (auto& chunk : chunks_) {
    if (chunk->state == ChunkState::kEmpty || chunk->state == ChunkState::kBound) {
      Unbind(*chunk);
      device_->FreeChunk(chunk->device_base);
      spare_pages_.push_back(std::move(chunk->pages));
      Apply(*chunk, ChunkEvent::kGiveBack);
    }
  }
}

void PagePool::UnbindRange(uintptr_t start, uintptr_t end) {
  if (!same_address_) return;
  MutexLock lock(&mu_);
  for (auto& chunk : chunks_) {
    if (chunk->bound == 0 || chunk->bound < start || chunk->bound >= end) continue;
    if (chunk->state != ChunkState::kBound) {
      std::fprintf(stderr, "uhmm: fatal: unbinding chunk at %#llx with %u pages in use\n",
                   static_cast<unsigned long long>(chunk->bound), chunk->used);
      std::abort();
    }
    Unbind(*chunk);
  }
}

bool PagePool::UnbindIdle(uintptr_t block) {
  MutexLock lock(&mu_);
  auto it = bound_.find(block);
  if (it == bound_.end()) {
    // A block handed to this device by a move to a peer (BlockOwners::Transfer) and not bound yet:
    // the claim goes, and the move's own allocation claims it again (or learns who has it).
    if (owners_ != nullptr) owners_->Release(block, pgmap_->device);
    return true;
  }
  if (it->second->state != ChunkState::kBound) return false;  // pages in use there
  Unbind(*it->second);
  return true;
}

size_t PagePool::chunk_count() {
  MutexLock lock(&mu_);
  return static_cast<size_t>(std::count_if(chunks_.begin(), chunks_.end(),
                                           [](const auto& c) { return c->state != ChunkState::kFree; }));
}

}  // namespace uhmm
