// Unit tests of the page pool: descriptors carved from 2 MiB root chunks, the cap, refcount-1 free
// pages, LRU victim choice, chunk release, and chunk binding for devices that share managed
// addresses. A fake device stands in for the backend.
#include "runtime/mm/page_pool.h"

#include <gtest/gtest.h>

#include <map>

namespace uhmm {
namespace {

class FakeDevice final : public Device {
 public:
  explicit FakeDevice(Placement placement = Placement::kAnywhere) : placement_(placement) {}
  Placement placement() const override { return placement_; }
  absl::Status MapChunk(uint64_t chunk, uintptr_t block) override {
    if (fail_map_) return absl::AbortedError("injected map failure");
    if (mapped_.contains(block)) return absl::InternalError("block mapped twice");
    mapped_[block] = chunk;
    ++maps_;
    return absl::OkStatus();
  }
  void UnmapChunk(uint64_t chunk, uintptr_t block) override {
    auto it = mapped_.find(block);
    if (it == mapped_.end() || it->second != chunk) std::abort();
    mapped_.erase(it);
  }
  std::map<uintptr_t, uint64_t> mapped_;
  int maps_ = 0;
  bool fail_map_ = false;
  std::string name() const override { return "fake"; }
  Pagemap& pagemap() override { return pgmap_; }
  CopyEngine& copy_engine() override { std::abort(); }
  absl::StatusOr<uint64_t> AllocChunk() override {
    const uint64_t base = next_;
    next_ += kBlockSize;
    live_[base] = true;
    return base;
  }
  void FreeChunk(uint64_t addr) override { live_.erase(addr); }
  size_t default_pool_bytes() const override { return 0; }
  absl::Status MigrateToDevice(MigrateVma*) override { return absl::OkStatus(); }
  absl::Status MigrateToRam(MigrateVma*) override { return absl::OkStatus(); }
  size_t live_chunks() const { return live_.size(); }

 private:
  const Placement placement_;
  Pagemap pgmap_;
  uint64_t next_ = 0x100000000ull;
  std::map<uint64_t, bool> live_;
};

TEST(PagePoolTest, CarvesDescriptorsFromRootChunksUpToTheCap) {
  FakeDevice dev;
  PagePool pool(&dev, &dev.pagemap(), 2);
  EXPECT_EQ(pool.total_pages(), 2 * kPagesPerChunk);
  std::vector<Page*> pages;
  for (size_t i = 0; i < 2 * kPagesPerChunk; ++i) {
    absl::StatusOr<Page*> p = pool.TryAlloc(0);
    ASSERT_TRUE(p.ok() && *p != nullptr) << i;
    EXPECT_EQ((*p)->refcount.load(), 2);  // the caller's reference on top of the free "1"
    EXPECT_EQ((*p)->pgmap, &dev.pagemap());
    EXPECT_EQ((*p)->dma_addr % kPageSize, 0u);
    pages.push_back(*p);
  }
  EXPECT_EQ(dev.live_chunks(), 2u);
  EXPECT_EQ(pages[0]->pfn, 0u);
  EXPECT_EQ(pages[1]->dma_addr, pages[0]->dma_addr + kPageSize);
  absl::StatusOr<Page*> full = pool.TryAlloc(0);
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(*full, nullptr) << "the cap must hold";
  EXPECT_EQ(pool.used_pages(), 2 * kPagesPerChunk);
  for (Page* p : pages) {
    p->refcount.fetch_sub(1);  // what put_page does before page_free
    pool.Release(p);
  }
  EXPECT_EQ(pool.used_pages(), 0u);
  pool.ReleaseEmptyChunks();
  EXPECT_EQ(dev.live_chunks(), 0u);
  EXPECT_EQ(pool.chunk_count(), 0u);
}

TEST(PagePoolTest, VictimIsTheLeastRecentlyUsedChunkWithCommittedPages) {
  FakeDevice dev;
  PagePool pool(&dev, &dev.pagemap(), 3);
  std::vector<Page*> chunk_pages[3];
  for (int c = 0; c < 3; ++c) {
    for (size_t i = 0; i < kPagesPerChunk; ++i) {
      Page* p = *pool.TryAlloc(0);
      p->managed_addr.store(0x10000000ull * (c + 1) + i * kPageSize);
      chunk_pages[c].push_back(p);
    }
  }
  absl::flat_hash_set<size_t> none;
  ASSERT_EQ(pool.PickVictim(none), 0u);
  std::vector<uintptr_t> addrs = pool.CommittedAddresses(0);
  ASSERT_EQ(addrs.size(), kPagesPerChunk);
  EXPECT_EQ(addrs.front(), 0x10000000ull);
  absl::flat_hash_set<size_t> skip0 = {0};
  EXPECT_EQ(pool.PickVictim(skip0), 1u);
  // Free one page of chunk 0 and allocate again: chunk 0 becomes the most recently used.
  chunk_pages[0][7]->refcount.fetch_sub(1);
  pool.Release(chunk_pages[0][7]);
  Page* again = *pool.TryAlloc(0);
  EXPECT_EQ(again, chunk_pages[0][7]);
  EXPECT_EQ(pool.PickVictim(none), 1u);
}

void Put(PagePool& pool, Page* p) {
  p->refcount.fetch_sub(1);  // what put_page does before page_free
  pool.Release(p);
}

TEST(PagePoolTest, SameAddressPlacementBindsOneChunkPerBlockAtTheManagedAddress) {
  FakeDevice dev(Placement::kSameAddress);
  PagePool pool(&dev, &dev.pagemap(), 2);
  constexpr uintptr_t kA = 0x7f0000000000, kB = kA + kBlockSize, kC = kA + 8 * kBlockSize;
  Page* a5 = *pool.TryAlloc(kA + 5 * kPageSize);
  ASSERT_NE(a5, nullptr);
  EXPECT_EQ(a5->dma_addr, kA + 5 * kPageSize) << "one pointer: device address == managed address";
  Page* a9 = *pool.TryAlloc(kA + 9 * kPageSize);
  EXPECT_EQ(a9->pfn / kPagesPerChunk, a5->pfn / kPagesPerChunk) << "same block, same chunk";
  EXPECT_EQ(a9->dma_addr, kA + 9 * kPageSize);
  EXPECT_FALSE(pool.TryAlloc(kA + 5 * kPageSize).ok()) << "a page in use cannot be handed out twice";
  Page* b0 = *pool.TryAlloc(kB);
  EXPECT_EQ(b0->dma_addr, kB);
  EXPECT_EQ(dev.mapped_.size(), 2u);
  // Cap reached and both chunks hold pages: a third block must wait for an eviction.
  absl::StatusOr<Page*> c0 = pool.TryAlloc(kC);
  ASSERT_TRUE(c0.ok());
  EXPECT_EQ(*c0, nullptr);
  // Block A's chunk empties: it is rebound to C, and A is no longer mapped.
  Put(pool, a5);
  Put(pool, a9);
  Page* c3 = *pool.TryAlloc(kC + 3 * kPageSize);
  ASSERT_NE(c3, nullptr);
  EXPECT_EQ(c3->dma_addr, kC + 3 * kPageSize);
  EXPECT_FALSE(dev.mapped_.contains(kA));
  EXPECT_TRUE(dev.mapped_.contains(kC));
  EXPECT_EQ(dev.maps_, 3);
  // A map failure is reported and binds nothing.
  Put(pool, b0);
  dev.fail_map_ = true;
  absl::StatusOr<Page*> failed = pool.TryAlloc(kA);
  EXPECT_FALSE(failed.ok());
  EXPECT_EQ(pool.used_pages(), 1u);
  dev.fail_map_ = false;
  // Destroying a range unbinds its idle chunks.
  Put(pool, c3);
  pool.UnbindRange(kA, kC + kBlockSize);
  EXPECT_TRUE(dev.mapped_.empty());
  pool.ReleaseEmptyChunks();
  EXPECT_EQ(dev.live_chunks(), 0u);
}

}  // namespace
}  // namespace uhmm
