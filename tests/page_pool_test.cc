// Unit tests of the page pool: descriptors carved from 2 MiB root chunks, the cap, refcount-1 free
// pages, LRU victim choice and chunk release. A fake device stands in for the backend.
#include <gtest/gtest.h>

#include <map>

#include "runtime/page_pool.h"

namespace uhmm {
namespace {

class FakeDevice final : public Device {
 public:
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
    absl::StatusOr<Page*> p = pool.TryAlloc();
    ASSERT_TRUE(p.ok() && *p != nullptr) << i;
    EXPECT_EQ((*p)->refcount.load(), 2);  // the caller's reference on top of the free "1"
    EXPECT_EQ((*p)->pgmap, &dev.pagemap());
    EXPECT_EQ((*p)->dma_addr % kPageSize, 0u);
    pages.push_back(*p);
  }
  EXPECT_EQ(dev.live_chunks(), 2u);
  EXPECT_EQ(pages[0]->pfn, 0u);
  EXPECT_EQ(pages[1]->dma_addr, pages[0]->dma_addr + kPageSize);
  absl::StatusOr<Page*> full = pool.TryAlloc();
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
      Page* p = *pool.TryAlloc();
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
  Page* again = *pool.TryAlloc();
  EXPECT_EQ(again, chunk_pages[0][7]);
  EXPECT_EQ(pool.PickVictim(none), 1u);
}

}  // namespace
}  // namespace uhmm
