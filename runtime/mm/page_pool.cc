// Device page pool; see page_pool.h.
#include "runtime/mm/page_pool.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_format.h"

namespace uhmm {

PagePool::PagePool(Device* device, Pagemap* pgmap, size_t max_chunks)
    : device_(device),
      pgmap_(pgmap),
      max_chunks_(max_chunks),
      same_address_(device->placement() == Placement::kSameAddress) {}

PagePool::~PagePool() {
  MutexLock lock(&mu_);
  for (auto& chunk : chunks_) {
    if (!chunk) continue;
    Unbind(*chunk);
    device_->FreeChunk(chunk->device_base);
  }
}

absl::StatusOr<PagePool::Chunk*> PagePool::NewChunk() {
  size_t live = 0;
  size_t slot = chunks_.size();
  for (size_t i = 0; i < chunks_.size(); ++i) {
    if (chunks_[i]) {
      ++live;
    } else if (slot == chunks_.size()) {
      slot = i;
    }
  }
  if (live >= max_chunks_) return nullptr;
  absl::StatusOr<uint64_t> base = device_->AllocChunk();
  if (!base.ok()) return base.status();
  auto chunk = std::make_unique<Chunk>();
  chunk->device_base = *base;
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
  Chunk* out = chunk.get();
  if (slot == chunks_.size()) {
    chunks_.push_back(std::move(chunk));
  } else {
    chunks_[slot] = std::move(chunk);
  }
  return out;
}

void PagePool::Unbind(Chunk& chunk) {
  if (chunk.bound == 0) return;
  device_->UnmapChunk(chunk.device_base, chunk.bound);
  bound_.erase(chunk.bound);
  chunk.bound = 0;
}

absl::StatusOr<PagePool::Chunk*> PagePool::ChunkForBlock(uintptr_t block) {
  if (auto it = bound_.find(block); it != bound_.end()) return it->second;
  // A chunk to bind, cheapest first: an idle unbound one, a new one while under the cap, else the
  // least recently used idle bound one (unbound from its block first).
  absl::StatusOr<Chunk*> chunk = nullptr;
  for (auto& c : chunks_) {
    if (c && c->used == 0 && c->bound == 0) {
      chunk = c.get();
      break;
    }
  }
  if (*chunk == nullptr) chunk = NewChunk();
  if (!chunk.ok()) return chunk.status();
  if (*chunk == nullptr) {
    for (auto& c : chunks_) {
      if (c && c->used == 0 && (*chunk == nullptr || c->last_use < (*chunk)->last_use)) {
        *chunk = c.get();
      }
    }
    if (*chunk == nullptr) return nullptr;  // every chunk holds pages: evict one
    Unbind(**chunk);
  }
  Chunk& c = **chunk;
  if (absl::Status s = device_->MapChunk(c.device_base, block); !s.ok()) {
    return absl::Status(s.code(), absl::StrFormat("mapping device memory at block %#x: %s", block,
                                                  s.message()));
  }
  c.bound = block;
  bound_[block] = &c;
  for (size_t i = 0; i < kPagesPerChunk; ++i) c.pages[i].dma_addr = block + i * kPageSize;
  return &c;
}

absl::StatusOr<Page*> PagePool::TryAlloc(uintptr_t addr) {
  MutexLock lock(&mu_);
  Chunk* chosen = nullptr;
  Page* page = nullptr;
  if (same_address_) {
    absl::StatusOr<Chunk*> c = ChunkForBlock(addr & ~(kBlockSize - 1));
    if (!c.ok()) return c.status();
    if (*c == nullptr) return nullptr;
    chosen = *c;
    page = &chosen->pages[(addr % kBlockSize) / kPageSize];
    if (page->flags.load(std::memory_order_relaxed) & kPageAllocated) {
      return absl::InternalError(absl::StrFormat(
          "device page for %#x (pfn %u) is still in use by an earlier migration", addr, page->pfn));
    }
  } else {
    // Prefer the most recently used chunk with room, so that chunks fill densely and LRU order
    // follows allocation order.
    for (auto& chunk : chunks_) {
      if (chunk && !chunk->free.empty() && (!chosen || chunk->last_use > chosen->last_use)) {
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
  ++chosen->used;
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
  if (!same_address_) chunk.free.push_back(static_cast<uint32_t>(page->pfn % kPagesPerChunk));
  --chunk.used;
  used_.fetch_sub(1, std::memory_order_relaxed);
}

std::optional<size_t> PagePool::PickVictim(const absl::flat_hash_set<size_t>& exclude) {
  MutexLock lock(&mu_);
  std::optional<size_t> best;
  for (size_t i = 0; i < chunks_.size(); ++i) {
    const Chunk* c = chunks_[i].get();
    if (c == nullptr || c->used == 0 || exclude.contains(i)) continue;
    if (!best || c->last_use < chunks_[*best]->last_use) best = i;
  }
  return best;
}

std::vector<uintptr_t> PagePool::CommittedAddresses(size_t index) {
  std::vector<uintptr_t> out;
  MutexLock lock(&mu_);
  if (index >= chunks_.size() || !chunks_[index]) return out;
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
    if (chunk && chunk->used == 0) {
      Unbind(*chunk);
      device_->FreeChunk(chunk->device_base);
      spare_pages_.push_back(std::move(chunk->pages));
      chunk.reset();
    }
  }
}

void PagePool::UnbindRange(uintptr_t start, uintptr_t end) {
  if (!same_address_) return;
  MutexLock lock(&mu_);
  for (auto& chunk : chunks_) {
    if (!chunk || chunk->bound < start || chunk->bound >= end) continue;
    if (chunk->used != 0) {
      std::fprintf(stderr, "uhmm: fatal: unbinding chunk at %#llx with %u pages in use\n",
                   static_cast<unsigned long long>(chunk->bound), chunk->used);
      std::abort();
    }
    Unbind(*chunk);
  }
}

size_t PagePool::chunk_count() {
  MutexLock lock(&mu_);
  return static_cast<size_t>(std::count_if(chunks_.begin(), chunks_.end(),
                                           [](const auto& c) { return c != nullptr; }));
}

}  // namespace uhmm
