// Device page pool; see page_pool.h.
#include "runtime/page_pool.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace uhmm {

PagePool::PagePool(Device* device, Pagemap* pgmap, size_t max_chunks)
    : device_(device), pgmap_(pgmap), max_chunks_(max_chunks) {}

PagePool::~PagePool() {
  MutexLock lock(&mu_);
  for (auto& chunk : chunks_) {
    if (chunk) device_->FreeChunk(chunk->device_base);
  }
}

absl::StatusOr<Page*> PagePool::TryAlloc() {
  MutexLock lock(&mu_);
  Chunk* chosen = nullptr;
  // Prefer the most recently used chunk with room, so that chunks fill densely and LRU order
  // follows allocation order.
  for (auto& chunk : chunks_) {
    if (chunk && !chunk->free.empty() && (!chosen || chunk->last_use > chosen->last_use)) {
      chosen = chunk.get();
    }
  }
  if (chosen == nullptr) {
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
    chunk->pages = std::make_unique<Page[]>(kPagesPerChunk);
    chunk->free.reserve(kPagesPerChunk);
    for (size_t i = 0; i < kPagesPerChunk; ++i) {
      Page& p = chunk->pages[i];
      p.pgmap = pgmap_;
      p.pfn = slot * kPagesPerChunk + i;
      p.dma_addr = *base + i * kPageSize;
      chunk->free.push_back(static_cast<uint32_t>(kPagesPerChunk - 1 - i));  // pop lowest first
    }
    chosen = chunk.get();
    if (slot == chunks_.size()) {
      chunks_.push_back(std::move(chunk));
    } else {
      chunks_[slot] = std::move(chunk);
    }
  }
  chosen->last_use = ++tick_;
  Page* page = &chosen->pages[chosen->free.back()];
  chosen->free.pop_back();
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
  chunk.free.push_back(static_cast<uint32_t>(page->pfn % kPagesPerChunk));
  used_.fetch_sub(1, std::memory_order_relaxed);
}

std::optional<size_t> PagePool::PickVictim(const absl::flat_hash_set<size_t>& exclude) {
  MutexLock lock(&mu_);
  std::optional<size_t> best;
  for (size_t i = 0; i < chunks_.size(); ++i) {
    const Chunk* c = chunks_[i].get();
    if (c == nullptr || c->free.size() == kPagesPerChunk || exclude.contains(i)) continue;
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
    if (chunk && chunk->free.size() == kPagesPerChunk) {
      device_->FreeChunk(chunk->device_base);
      chunk.reset();
    }
  }
}

size_t PagePool::chunk_count() {
  MutexLock lock(&mu_);
  return static_cast<size_t>(std::count_if(chunks_.begin(), chunks_.end(),
                                           [](const auto& c) { return c != nullptr; }));
}

}  // namespace uhmm
