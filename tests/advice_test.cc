// Memory advice (uhmm_advise, uhmm_range_get_attribute): the per-range store (RangeAdvice: runs,
// merging, At, Attribute, ForEachRun, Any), then the API through the runtime and the C API: every
// advice and its unset read back, every bad input refused with its code and nothing changed.
#include "runtime/policy/advice.h"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <atomic>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "runtime/api/runtime_impl.h"
#include "runtime/base/sync.h"
#include "tests/test_util.h"
#include "uhmm/uhmm.h"

namespace uhmm::testing {
namespace {

// ---------------------------------------------------------------------------------------------
// RangeAdvice, alone.

constexpr uintptr_t kBase = uintptr_t{0x7f0000000000};  // 2 MiB aligned; never dereferenced

uintptr_t Page(size_t i) { return kBase + i * kPageSize; }

struct RunRecord {
  uintptr_t start, end;
  PageAdvice advice;
};

std::vector<RunRecord> Runs(const RangeAdvice& a, uintptr_t start, uintptr_t end) {
  std::vector<RunRecord> out;
  a.ForEachRun(start, end, [&](uintptr_t s, uintptr_t e, const PageAdvice& adv) {
    out.push_back({s, e, adv});
  });
  return out;
}

TEST(RangeAdviceTest, EmptyHasNoAdvice) {
  RangeAdvice a;
  EXPECT_FALSE(a.Any());
  EXPECT_TRUE(a.At(Page(3)).none());
  EXPECT_EQ(a.Attribute(Page(0), Page(16), RangeAttribute::kReadMostly), 0);
  EXPECT_EQ(a.Attribute(Page(0), Page(16), RangeAttribute::kPreferredLocation), kNoLocation);
  EXPECT_EQ(a.Attribute(Page(0), Page(16), RangeAttribute::kAccessedBy), 0);
  EXPECT_EQ(a.Attribute(Page(0), Page(16), RangeAttribute::kFaultGranule), 0);
  std::vector<RunRecord> runs = Runs(a, Page(2), Page(9));
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].start, Page(2));
  EXPECT_EQ(runs[0].end, Page(9));
  EXPECT_TRUE(runs[0].advice.none());
  EXPECT_EQ(a.run_count(), 0u);
}

TEST(RangeAdviceTest, ReadMostlyOverOverlappingSpansMergesAndSplits) {
  RangeAdvice a;
  a.Apply(Page(0), Page(8), Advice::kSetReadMostly, 0);
  EXPECT_TRUE(a.Any());
  a.Apply(Page(4), Page(12), Advice::kSetReadMostly, 0);
  EXPECT_EQ(a.run_count(), 1u);  // [0, 12) is one run
  EXPECT_TRUE(a.At(Page(0)).read_mostly);
  EXPECT_TRUE(a.At(Page(11)).read_mostly);
  EXPECT_TRUE(a.At(Page(11) + 123).read_mostly);
  EXPECT_FALSE(a.At(Page(12)).read_mostly);
  EXPECT_EQ(a.Attribute(Page(0), Page(12), RangeAttribute::kReadMostly), 1);
  EXPECT_EQ(a.Attribute(Page(0), Page(13), RangeAttribute::kReadMostly), 0);

  a.Apply(Page(2), Page(6), Advice::kUnsetReadMostly, 0);
  EXPECT_EQ(a.run_count(), 2u);  // [0, 2) and [6, 12)
  EXPECT_TRUE(a.At(Page(1)).read_mostly);
  EXPECT_FALSE(a.At(Page(2)).read_mostly);
  EXPECT_FALSE(a.At(Page(5)).read_mostly);
  EXPECT_TRUE(a.At(Page(6)).read_mostly);
  EXPECT_EQ(a.Attribute(Page(0), Page(2), RangeAttribute::kReadMostly), 1);
  EXPECT_EQ(a.Attribute(Page(1), Page(3), RangeAttribute::kReadMostly), 0);
  EXPECT_EQ(a.Attribute(Page(6), Page(12), RangeAttribute::kReadMostly), 1);

  // Filling the hole back joins the runs again.
  a.Apply(Page(2), Page(6), Advice::kSetReadMostly, 0);
  EXPECT_EQ(a.run_count(), 1u);
  a.Apply(Page(0), Page(12), Advice::kUnsetReadMostly, 0);
  EXPECT_EQ(a.run_count(), 0u);
  EXPECT_FALSE(a.Any());
}

TEST(RangeAdviceTest, PreferredLocationUniformMixedAndNone) {
  RangeAdvice a;
  a.Apply(Page(0), Page(4), Advice::kSetPreferredLocation, kHost);
  a.Apply(Page(4), Page(8), Advice::kSetPreferredLocation, 0);
  EXPECT_EQ(a.run_count(), 2u);
  EXPECT_EQ(a.At(Page(3)).preferred, kHost);
  EXPECT_EQ(a.At(Page(4)).preferred, 0);
  EXPECT_EQ(a.At(Page(8)).preferred, kNoLocation);
  EXPECT_EQ(a.Attribute(Page(0), Page(4), RangeAttribute::kPreferredLocation), kHost);
  EXPECT_EQ(a.Attribute(Page(4), Page(8), RangeAttribute::kPreferredLocation), 0);
  EXPECT_EQ(a.Attribute(Page(0), Page(8), RangeAttribute::kPreferredLocation), kMixedLocation);
  EXPECT_EQ(a.Attribute(Page(6), Page(10), RangeAttribute::kPreferredLocation), kMixedLocation);
  EXPECT_EQ(a.Attribute(Page(8), Page(10), RangeAttribute::kPreferredLocation), kNoLocation);
  // A later set replaces the earlier one where they overlap.
  a.Apply(Page(2), Page(6), Advice::kSetPreferredLocation, 1);
  EXPECT_EQ(a.run_count(), 3u);
  EXPECT_EQ(a.Attribute(Page(2), Page(6), RangeAttribute::kPreferredLocation), 1);
  EXPECT_EQ(a.At(Page(1)).preferred, kHost);
  EXPECT_EQ(a.At(Page(6)).preferred, 0);
  a.Apply(Page(0), Page(8), Advice::kUnsetPreferredLocation, 0);
  EXPECT_FALSE(a.Any());
  EXPECT_EQ(a.Attribute(Page(0), Page(8), RangeAttribute::kPreferredLocation), kNoLocation);
}

TEST(RangeAdviceTest, AccessedByIsOneBitPerDeviceAndTheAttributeIsTheirIntersection) {
  RangeAdvice a;
  a.Apply(Page(0), Page(8), Advice::kSetAccessedBy, 0);
  a.Apply(Page(4), Page(12), Advice::kSetAccessedBy, 3);
  a.Apply(Page(0), Page(1), Advice::kSetAccessedBy, 63);
  EXPECT_EQ(a.At(Page(0)).accessed_by, 1u | (uint64_t{1} << 63));
  EXPECT_EQ(a.At(Page(5)).accessed_by, 0b1001u);
  EXPECT_EQ(a.At(Page(10)).accessed_by, 0b1000u);
  EXPECT_EQ(a.Attribute(Page(4), Page(8), RangeAttribute::kAccessedBy), 0b1001);
  EXPECT_EQ(a.Attribute(Page(0), Page(8), RangeAttribute::kAccessedBy), 0b1);
  EXPECT_EQ(a.Attribute(Page(0), Page(12), RangeAttribute::kAccessedBy), 0);
  EXPECT_EQ(a.Attribute(Page(0), Page(1), RangeAttribute::kAccessedBy),
            static_cast<int64_t>(1u | (uint64_t{1} << 63)));
  a.Apply(Page(0), Page(12), Advice::kUnsetAccessedBy, 0);
  EXPECT_EQ(a.At(Page(5)).accessed_by, 0b1000u);
  EXPECT_EQ(a.Attribute(Page(4), Page(12), RangeAttribute::kAccessedBy), 0b1000);
  EXPECT_EQ(a.run_count(), 2u);  // {63} on page 0, {3} on [4, 12)
  a.Apply(Page(0), Page(12), Advice::kUnsetAccessedBy, 3);
  a.Apply(Page(0), Page(12), Advice::kUnsetAccessedBy, 63);
  EXPECT_FALSE(a.Any());
}

TEST(RangeAdviceTest, FaultGranuleUniformMixedAndNone) {
  RangeAdvice a;
  a.Apply(Page(0), Page(4), Advice::kSetFaultGranule, 64 * 1024);
  a.Apply(Page(4), Page(8), Advice::kSetFaultGranule, 4096);
  EXPECT_EQ(a.At(Page(0)).granule, 64u * 1024);
  EXPECT_EQ(a.At(Page(7)).granule, 4096u);
  EXPECT_EQ(a.At(Page(8)).granule, 0u);
  EXPECT_EQ(a.Attribute(Page(0), Page(4), RangeAttribute::kFaultGranule), 64 * 1024);
  EXPECT_EQ(a.Attribute(Page(0), Page(8), RangeAttribute::kFaultGranule), kMixedLocation);
  EXPECT_EQ(a.Attribute(Page(6), Page(9), RangeAttribute::kFaultGranule), kMixedLocation);  // some none
  EXPECT_EQ(a.Attribute(Page(8), Page(9), RangeAttribute::kFaultGranule), 0);
  a.Apply(Page(2), Page(6), Advice::kUnsetFaultGranule, 0);
  EXPECT_EQ(a.At(Page(2)).granule, 0u);
  EXPECT_EQ(a.At(Page(6)).granule, 4096u);
  EXPECT_EQ(a.Attribute(Page(2), Page(6), RangeAttribute::kFaultGranule), 0);
}

TEST(RangeAdviceTest, KindsAreIndependent) {
  RangeAdvice a;
  a.Apply(Page(0), Page(8), Advice::kSetReadMostly, 0);
  a.Apply(Page(2), Page(6), Advice::kSetPreferredLocation, 0);
  a.Apply(Page(4), Page(10), Advice::kSetAccessedBy, 1);
  a.Apply(Page(5), Page(7), Advice::kSetFaultGranule, 2 << 20);
  const PageAdvice p5 = a.At(Page(5));
  EXPECT_TRUE(p5.read_mostly);
  EXPECT_EQ(p5.preferred, 0);
  EXPECT_EQ(p5.accessed_by, 0b10u);
  EXPECT_EQ(p5.granule, 2u << 20);
  a.Apply(Page(0), Page(10), Advice::kUnsetReadMostly, 0);
  EXPECT_FALSE(a.At(Page(5)).read_mostly);
  EXPECT_EQ(a.At(Page(5)).preferred, 0);
  EXPECT_EQ(a.At(Page(5)).accessed_by, 0b10u);
  EXPECT_EQ(a.At(Page(5)).granule, 2u << 20);
}

TEST(RangeAdviceTest, PagewiseSetsMergeIntoOneRun) {
  RangeAdvice a;
  for (size_t i = 0; i < 32; i += 2) a.Apply(Page(i), Page(i + 1), Advice::kSetPreferredLocation, 0);
  EXPECT_EQ(a.run_count(), 16u);
  for (size_t i = 1; i < 32; i += 2) a.Apply(Page(i), Page(i + 1), Advice::kSetPreferredLocation, 0);
  EXPECT_EQ(a.run_count(), 1u);
  // Something different in the middle, then taken away: one run again.
  a.Apply(Page(10), Page(12), Advice::kSetReadMostly, 0);
  EXPECT_EQ(a.run_count(), 3u);
  a.Apply(Page(10), Page(12), Advice::kUnsetReadMostly, 0);
  EXPECT_EQ(a.run_count(), 1u);
  std::vector<RunRecord> runs = Runs(a, Page(0), Page(32));
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].advice.preferred, 0);
}

TEST(RangeAdviceTest, ForEachRunCoversTheSpanWithMaximalClippedRuns) {
  RangeAdvice a;
  a.Apply(Page(2), Page(6), Advice::kSetReadMostly, 0);
  a.Apply(Page(4), Page(8), Advice::kSetAccessedBy, 0);
  a.Apply(Page(10), Page(12), Advice::kSetPreferredLocation, kHost);
  // Pages 0-1 none, 2-3 RM, 4-5 RM+AB0, 6-7 AB0, 8-9 none, 10-11 host, 12- none.
  std::vector<RunRecord> runs = Runs(a, Page(3), Page(11));
  ASSERT_EQ(runs.size(), 5u);
  const std::vector<std::pair<size_t, size_t>> want = {{3, 4}, {4, 6}, {6, 8}, {8, 10}, {10, 11}};
  for (size_t k = 0; k < runs.size(); ++k) {
    EXPECT_EQ(runs[k].start, Page(want[k].first)) << k;
    EXPECT_EQ(runs[k].end, Page(want[k].second)) << k;
  }
  EXPECT_TRUE(runs[0].advice.read_mostly && runs[0].advice.accessed_by == 0);
  EXPECT_TRUE(runs[1].advice.read_mostly && runs[1].advice.accessed_by == 1);
  EXPECT_TRUE(!runs[2].advice.read_mostly && runs[2].advice.accessed_by == 1);
  EXPECT_TRUE(runs[3].advice.none());
  EXPECT_EQ(runs[4].advice.preferred, kHost);
  // A span inside one run, and one inside a gap.
  runs = Runs(a, Page(4) + 0, Page(5));
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].advice.accessed_by, 1u);
  runs = Runs(a, Page(20), Page(30));
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_TRUE(runs[0].advice.none());
  EXPECT_TRUE(Runs(a, Page(5), Page(5)).empty());
}

TEST(RangeAdviceTest, ForEachRunCallsBackWithoutTheLock) {
  RangeAdvice a;
  a.Apply(Page(0), Page(4), Advice::kSetReadMostly, 0);
  int calls = 0;
  a.ForEachRun(Page(0), Page(8), [&](uintptr_t s, uintptr_t e, const PageAdvice&) {
    ++calls;
    a.Apply(s, e, Advice::kSetAccessedBy, 2);  // would self-deadlock under the lock
  });
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(a.Attribute(Page(0), Page(8), RangeAttribute::kAccessedBy), 0b100);
}

// Random set/unset over 64 pages against a page-by-page model: At, the runs (maximal, none of them
// default) and every attribute of random spans agree.
TEST(RangeAdviceTest, AgreesWithAPageModel) {
  constexpr size_t kPages = 64;
  RangeAdvice a;
  std::vector<PageAdvice> model(kPages);
  std::mt19937 rng(1234);
  const Advice kinds[] = {Advice::kSetReadMostly,        Advice::kUnsetReadMostly,
                          Advice::kSetPreferredLocation, Advice::kUnsetPreferredLocation,
                          Advice::kSetAccessedBy,        Advice::kUnsetAccessedBy,
                          Advice::kSetFaultGranule,      Advice::kUnsetFaultGranule};
  for (int step = 0; step < 2000; ++step) {
    size_t s = rng() % kPages, e = rng() % kPages;
    if (s > e) std::swap(s, e);
    ++e;
    const Advice adv = kinds[rng() % 8];
    int64_t arg = 0;
    if (adv == Advice::kSetPreferredLocation) arg = static_cast<int64_t>(rng() % 3) - 1;  // host, 0, 1
    if (adv == Advice::kSetAccessedBy || adv == Advice::kUnsetAccessedBy) arg = rng() % 4;
    if (adv == Advice::kSetFaultGranule) arg = int64_t{4096} << (rng() % 3);
    a.Apply(Page(s), Page(e), adv, arg);
    for (size_t i = s; i < e; ++i) {
      PageAdvice& m = model[i];
      switch (adv) {
        case Advice::kSetReadMostly:
          m.read_mostly = true;
          break;
        case Advice::kUnsetReadMostly:
          m.read_mostly = false;
          break;
        case Advice::kSetPreferredLocation:
          m.preferred = static_cast<int>(arg);
          break;
        case Advice::kUnsetPreferredLocation:
          m.preferred = kNoLocation;
          break;
        case Advice::kSetAccessedBy:
          m.accessed_by |= uint64_t{1} << arg;
          break;
        case Advice::kUnsetAccessedBy:
          m.accessed_by &= ~(uint64_t{1} << arg);
          break;
        case Advice::kSetFaultGranule:
          m.granule = static_cast<uint32_t>(arg);
          break;
        case Advice::kUnsetFaultGranule:
          m.granule = 0;
          break;
      }
    }
    size_t want_runs = 0;
    bool any = false;
    for (size_t i = 0; i < kPages; ++i) {
      ASSERT_EQ(a.At(Page(i)), model[i]) << "step " << step << " page " << i;
      any |= !model[i].none();
      if (!model[i].none() && (i == 0 || !(model[i] == model[i - 1]))) ++want_runs;
    }
    ASSERT_EQ(a.run_count(), want_runs) << "step " << step;
    ASSERT_EQ(a.Any(), any) << "step " << step;
    // Runs of a random span: contiguous, maximal, equal to the model.
    size_t qs = rng() % kPages, qe = rng() % kPages;
    if (qs > qe) std::swap(qs, qe);
    ++qe;
    uintptr_t cur = Page(qs);
    const PageAdvice* prev = nullptr;
    std::vector<RunRecord> runs = Runs(a, Page(qs), Page(qe));
    for (const RunRecord& r : runs) {
      ASSERT_EQ(r.start, cur);
      ASSERT_LT(r.start, r.end);
      if (prev != nullptr) ASSERT_FALSE(*prev == r.advice) << "runs not maximal at step " << step;
      for (uintptr_t p = r.start; p < r.end; p += kPageSize) {
        ASSERT_EQ(r.advice, model[(p - kBase) / kPageSize]);
      }
      prev = &r.advice;
      cur = r.end;
    }
    ASSERT_EQ(cur, Page(qe));
    // Attributes of the same span.
    int64_t rm = 1, ab = -1;
    const int pref0 = model[qs].preferred;
    const uint32_t gr0 = model[qs].granule;
    bool pref_mixed = false, gr_mixed = false;
    for (size_t i = qs; i < qe; ++i) {
      rm &= model[i].read_mostly ? 1 : 0;
      ab &= static_cast<int64_t>(model[i].accessed_by);
      pref_mixed |= model[i].preferred != pref0;
      gr_mixed |= model[i].granule != gr0;
    }
    ASSERT_EQ(a.Attribute(Page(qs), Page(qe), RangeAttribute::kReadMostly), rm);
    ASSERT_EQ(a.Attribute(Page(qs), Page(qe), RangeAttribute::kAccessedBy), ab);
    ASSERT_EQ(a.Attribute(Page(qs), Page(qe), RangeAttribute::kPreferredLocation),
              pref_mixed ? kMixedLocation : pref0);
    ASSERT_EQ(a.Attribute(Page(qs), Page(qe), RangeAttribute::kFaultGranule),
              gr_mixed ? kMixedLocation : static_cast<int64_t>(gr0));
  }
}

// The fault path reads advice under a block lock: kAdvice ranks last (debug builds check the
// order and abort on a violation).
TEST(RangeAdviceTest, ReadUnderABlockLock) {
  RangeAdvice a;
  a.Apply(Page(0), Page(4), Advice::kSetReadMostly, 0);
  Mutex block(LockRank::kVaBlock), dirty(LockRank::kSpaceDirty);
  MutexLock b(&block);
  MutexLock d(&dirty);
  EXPECT_TRUE(a.At(Page(1)).read_mostly);
  a.Apply(Page(0), Page(4), Advice::kSetAccessedBy, 0);
  EXPECT_EQ(a.Attribute(Page(0), Page(4), RangeAttribute::kAccessedBy), 1);
}

// Readers during writes (a TSan target): what they read is always advice that was set.
TEST(RangeAdviceTest, ConcurrentReadersAndWriters) {
  RangeAdvice a;
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t) {
    readers.emplace_back([&] {
      while (!stop.load()) {
        // Page 7 only ever gets READ_MOSTLY; [8, 24) only ever ACCESSED_BY device 2.
        const PageAdvice p = a.At(Page(7));
        if (p.accessed_by != 0 || p.preferred != kNoLocation || p.granule != 0) bad.fetch_add(1);
        const int64_t ab = a.Attribute(Page(8), Page(24), RangeAttribute::kAccessedBy);
        if (ab != 0 && ab != 4) bad.fetch_add(1);
        uintptr_t cur = Page(0);
        a.ForEachRun(Page(0), Page(32), [&](uintptr_t s, uintptr_t e, const PageAdvice&) {
          if (s != cur || e <= s) bad.fetch_add(1);
          cur = e;
        });
        if (cur != Page(32)) bad.fetch_add(1);
      }
    });
  }
  for (int i = 0; i < 2000; ++i) {
    a.Apply(Page(0), Page(16), i % 2 ? Advice::kUnsetReadMostly : Advice::kSetReadMostly, 0);
    a.Apply(Page(8), Page(24), i % 3 ? Advice::kUnsetAccessedBy : Advice::kSetAccessedBy, 2);
  }
  stop.store(true);
  for (std::thread& t : readers) t.join();
  EXPECT_EQ(bad.load(), 0);
}

// ---------------------------------------------------------------------------------------------
// Through the runtime.

class AdviceTest : public RuntimeTest {
 public:
  void SetUp() override {
    RuntimeTest::SetUp();
    UHMM_RETURN_IF_SKIPPED();
    absl::StatusOr<void*> p = rt_->Allocate(kBytes);
    ASSERT_TRUE(p.ok()) << p.status();
    p_ = static_cast<char*>(*p);
  }
  void TearDown() override {
    if (p_ != nullptr) EXPECT_TRUE(rt_->Free(p_).ok());
    RuntimeTest::TearDown();
  }

  int64_t Attr(const void* ptr, size_t size, RangeAttribute attribute) {
    absl::StatusOr<int64_t> v = rt_->GetRangeAttribute(ptr, size, attribute);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : -1000;
  }
  // Every attribute of a few spans of p_, to compare before and after failed calls.
  std::vector<int64_t> Snapshot() {
    std::vector<int64_t> out;
    for (auto [off, len] : {std::pair<size_t, size_t>{0, kBytes},
                            {0, kBytes / 2},
                            {kBytes / 2, kBytes / 2},
                            {kPageSize, kPageSize},
                            {kBytes - kPageSize, kPageSize}}) {
      for (RangeAttribute at : {RangeAttribute::kReadMostly, RangeAttribute::kPreferredLocation,
                                RangeAttribute::kAccessedBy, RangeAttribute::kFaultGranule}) {
        out.push_back(Attr(p_ + off, len, at));
      }
    }
    return out;
  }

  static constexpr size_t kBytes = size_t{4} << 20;  // two blocks
  char* p_ = nullptr;
};

TEST_F(AdviceTest, NoAdviceAtFirst) {
  EXPECT_EQ(Attr(p_, kBytes, RangeAttribute::kReadMostly), 0);
  EXPECT_EQ(Attr(p_, kBytes, RangeAttribute::kPreferredLocation), kNoLocation);
  EXPECT_EQ(Attr(p_, kBytes, RangeAttribute::kAccessedBy), 0);
  EXPECT_EQ(Attr(p_, kBytes, RangeAttribute::kFaultGranule), 0);
}

TEST_F(AdviceTest, EachAdviceAndItsUnsetReadBack) {
  ASSERT_TRUE(rt_->Advise(p_, kBytes, Advice::kSetReadMostly).ok());
  EXPECT_EQ(Attr(p_, kBytes, RangeAttribute::kReadMostly), 1);
  ASSERT_TRUE(rt_->Advise(p_, kBytes, Advice::kUnsetReadMostly).ok());
  EXPECT_EQ(Attr(p_, kBytes, RangeAttribute::kReadMostly), 0);

  ASSERT_TRUE(rt_->Advise(p_, kBytes, Advice::kSetPreferredLocation, 0).ok());
  EXPECT_EQ(Attr(p_, kBytes, RangeAttribute::kPreferredLocation), 0);
  ASSERT_TRUE(rt_->Advise(p_, kBytes, Advice::kSetPreferredLocation, kHost).ok());
  EXPECT_EQ(Attr(p_, kBytes, RangeAttribute::kPreferredLocation), kHost);
  ASSERT_TRUE(rt_->Advise(p_, kBytes, Advice::kUnsetPreferredLocation).ok());
  EXPECT_EQ(Attr(p_, kBytes, RangeAttribute::kPreferredLocation), kNoLocation);

  ASSERT_TRUE(rt_->Advise(p_, kBytes, Advice::kSetAccessedBy, 0).ok());
  EXPECT_EQ(Attr(p_, kBytes, RangeAttribute::kAccessedBy), 1);
  ASSERT_TRUE(rt_->Advise(p_, kBytes, Advice::kUnsetAccessedBy, 0).ok());
  EXPECT_EQ(Attr(p_, kBytes, RangeAttribute::kAccessedBy), 0);

  for (int64_t g = 4096; g <= int64_t{2} << 20; g *= 2) {
    ASSERT_TRUE(rt_->Advise(p_, kBytes, Advice::kSetFaultGranule, g).ok()) << g;
    EXPECT_EQ(Attr(p_, kBytes, RangeAttribute::kFaultGranule), g);
  }
  ASSERT_TRUE(rt_->Advise(p_, kBytes, Advice::kUnsetFaultGranule).ok());
  EXPECT_EQ(Attr(p_, kBytes, RangeAttribute::kFaultGranule), 0);
}

TEST_F(AdviceTest, SubSpanAcrossABlockBoundary) {
  char* const from = p_ + (1 << 20) + kPageSize;
  const size_t len = (size_t{2} << 20) - kPageSize;  // to 3 MiB: across the first block's end
  ASSERT_TRUE(rt_->Advise(from, len, Advice::kSetPreferredLocation, 0).ok());
  ASSERT_TRUE(rt_->Advise(from, len, Advice::kSetFaultGranule, 16384).ok());
  EXPECT_EQ(Attr(from, len, RangeAttribute::kPreferredLocation), 0);
  EXPECT_EQ(Attr(from, len, RangeAttribute::kFaultGranule), 16384);
  EXPECT_EQ(Attr(from + kPageSize, kPageSize, RangeAttribute::kPreferredLocation), 0);
  EXPECT_EQ(Attr(p_, kPageSize, RangeAttribute::kPreferredLocation), kNoLocation);
  EXPECT_EQ(Attr(from - kPageSize, kPageSize, RangeAttribute::kPreferredLocation), kNoLocation);
  EXPECT_EQ(Attr(from + len, kPageSize, RangeAttribute::kPreferredLocation), kNoLocation);
  EXPECT_EQ(Attr(from - kPageSize, 2 * kPageSize, RangeAttribute::kPreferredLocation), kMixedLocation);
  EXPECT_EQ(Attr(p_, kBytes, RangeAttribute::kFaultGranule), kMixedLocation);
  // A size that ends inside a page covers that page.
  ASSERT_TRUE(rt_->Advise(p_, 1, Advice::kSetReadMostly).ok());
  EXPECT_EQ(Attr(p_, kPageSize, RangeAttribute::kReadMostly), 1);
  EXPECT_EQ(Attr(p_, 2 * kPageSize, RangeAttribute::kReadMostly), 0);
  EXPECT_EQ(Attr(p_, 100, RangeAttribute::kReadMostly), 1);
  // Data and residency do not care.
  std::memset(p_, 0x77, kBytes);
  ASSERT_TRUE(rt_->Migrate(p_, kBytes, 0).ok());
  EXPECT_EQ(CountAt(Residency(p_, kBytes), 0), kBytes / kPageSize);
  EXPECT_EQ(Attr(from, len, RangeAttribute::kPreferredLocation), 0);
  EXPECT_EQ(p_[kBytes - 1], 0x77);
}

TEST_F(AdviceTest, TwoRangesDoNotShareAdvice) {
  absl::StatusOr<void*> q = rt_->Allocate(kBytes);
  ASSERT_TRUE(q.ok()) << q.status();
  ASSERT_TRUE(rt_->Advise(p_, kBytes, Advice::kSetReadMostly).ok());
  ASSERT_TRUE(rt_->Advise(*q, kBytes, Advice::kSetAccessedBy, 0).ok());
  EXPECT_EQ(Attr(p_, kBytes, RangeAttribute::kReadMostly), 1);
  EXPECT_EQ(Attr(p_, kBytes, RangeAttribute::kAccessedBy), 0);
  EXPECT_EQ(Attr(*q, kBytes, RangeAttribute::kReadMostly), 0);
  EXPECT_EQ(Attr(*q, kBytes, RangeAttribute::kAccessedBy), 1);
  EXPECT_TRUE(rt_->Free(*q).ok());
  EXPECT_EQ(Attr(p_, kBytes, RangeAttribute::kReadMostly), 1);
}

TEST_F(AdviceTest, FreedRangeIsNotFoundAndANewOneStartsClean) {
  absl::StatusOr<void*> q = rt_->Allocate(kBytes);
  ASSERT_TRUE(q.ok()) << q.status();
  ASSERT_TRUE(rt_->Advise(*q, kBytes, Advice::kSetPreferredLocation, 0).ok());
  ASSERT_TRUE(rt_->Free(*q).ok());
  EXPECT_ERROR(rt_->Advise(*q, kBytes, Advice::kSetReadMostly), absl::StatusCode::kNotFound, "uhmm_advise");
  EXPECT_ERROR(rt_->Advise(*q, kBytes, Advice::kSetReadMostly), absl::StatusCode::kNotFound, "not managed");
  EXPECT_ERROR(rt_->GetRangeAttribute(*q, kBytes, RangeAttribute::kPreferredLocation).status(),
               absl::StatusCode::kNotFound, "uhmm_range_get_attribute");
  // The address may well be handed out again: advice does not outlive its allocation.
  absl::StatusOr<void*> r = rt_->Allocate(kBytes);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(Attr(*r, kBytes, RangeAttribute::kPreferredLocation), kNoLocation);
  EXPECT_TRUE(rt_->Free(*r).ok());
}

TEST_F(AdviceTest, BadInputIsRefusedAndChangesNothing) {
  ASSERT_TRUE(rt_->Advise(p_, kBytes / 2, Advice::kSetReadMostly).ok());
  ASSERT_TRUE(rt_->Advise(p_, kBytes, Advice::kSetPreferredLocation, 0).ok());
  ASSERT_TRUE(rt_->Advise(p_, kBytes, Advice::kSetAccessedBy, 0).ok());
  ASSERT_TRUE(rt_->Advise(p_ + kBytes / 2, kBytes / 2, Advice::kSetFaultGranule, 65536).ok());
  const std::vector<int64_t> before = Snapshot();
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  const int devices = rt_->device_count();

  // The span.
  EXPECT_ERROR(rt_->Advise(nullptr, kPageSize, Advice::kSetReadMostly), kInvalid,
               "uhmm_advise: pointer is NULL");
  EXPECT_ERROR(rt_->Advise(p_, 0, Advice::kUnsetReadMostly), kInvalid, "uhmm_advise: size is 0");
  EXPECT_ERROR(rt_->Advise(p_ + 8, kPageSize, Advice::kUnsetReadMostly), kInvalid, "not 4 KiB aligned");
  EXPECT_ERROR(rt_->Advise(p_, SIZE_MAX, Advice::kUnsetReadMostly), kInvalid, "overflows");
  EXPECT_ERROR(rt_->Advise(p_, SIZE_MAX & ~(kPageSize - 1), Advice::kUnsetReadMostly), kInvalid, "overflows");
  EXPECT_ERROR(rt_->Advise(p_, kBytes + 1, Advice::kUnsetReadMostly), kInvalid, "runs past the end");
  EXPECT_ERROR(rt_->Advise(p_ + kPageSize, kBytes, Advice::kUnsetReadMostly), kInvalid, "runs past the end");
  void* not_managed = mmap(nullptr, kPageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(not_managed, MAP_FAILED);
  EXPECT_ERROR(rt_->Advise(not_managed, kPageSize, Advice::kSetReadMostly), absl::StatusCode::kNotFound,
               "not managed");

  // The advice and its argument.
  for (int raw : {0, 9, -1, 1000}) {
    EXPECT_ERROR(rt_->Advise(p_, kPageSize, static_cast<Advice>(raw)), kInvalid,
                 "advice " + std::to_string(raw) + " is not");
  }
  EXPECT_ERROR(rt_->Advise(p_, kPageSize, Advice::kSetPreferredLocation, devices), kInvalid,
               "device " + std::to_string(devices) + " does not exist");
  EXPECT_ERROR(rt_->Advise(p_, kPageSize, Advice::kSetPreferredLocation, kPoisoned), kInvalid,
               "does not exist");
  EXPECT_ERROR(rt_->Advise(p_, kPageSize, Advice::kSetPreferredLocation, int64_t{1} << 40), kInvalid,
               "does not exist");
  EXPECT_ERROR(rt_->Advise(p_, kPageSize, Advice::kSetAccessedBy, kHost), kInvalid,
               "UHMM_ADVISE_SET_ACCESSED_BY: device -1 does not exist");
  EXPECT_ERROR(rt_->Advise(p_, kPageSize, Advice::kSetAccessedBy, devices), kInvalid, "does not exist");
  EXPECT_ERROR(rt_->Advise(p_, kPageSize, Advice::kSetAccessedBy, 64), kInvalid, "does not exist");
  EXPECT_ERROR(rt_->Advise(p_, kPageSize, Advice::kUnsetAccessedBy, -1), kInvalid, "does not exist");
  for (int64_t g : {int64_t{0}, int64_t{2048}, int64_t{4097}, int64_t{3 * 4096}, int64_t{4} << 20,
                    int64_t{-4096}, int64_t{1} << 62}) {
    EXPECT_ERROR(rt_->Advise(p_, kPageSize, Advice::kSetFaultGranule, g), kInvalid,
                 "granule " + std::to_string(g) + " is not a power of two");
  }
  EXPECT_ERROR(rt_->Advise(p_, kPageSize, Advice::kSetReadMostly, 1), kInvalid,
               "takes no argument, but arg is 1");
  EXPECT_ERROR(rt_->Advise(p_, kPageSize, Advice::kUnsetReadMostly, -1), kInvalid, "takes no argument");
  EXPECT_ERROR(rt_->Advise(p_, kPageSize, Advice::kUnsetPreferredLocation, 1), kInvalid, "takes no argument");
  EXPECT_ERROR(rt_->Advise(p_, kPageSize, Advice::kUnsetFaultGranule, 4096), kInvalid, "takes no argument");
  // A bad span and a bad advice together: nothing happens either way.
  EXPECT_EQ(rt_->Advise(not_managed, kPageSize, static_cast<Advice>(77)).code(), kInvalid);

  // The read-back's own checks.
  EXPECT_ERROR(rt_->GetRangeAttribute(nullptr, kPageSize, RangeAttribute::kReadMostly).status(), kInvalid,
               "uhmm_range_get_attribute: pointer is NULL");
  EXPECT_ERROR(rt_->GetRangeAttribute(p_, 0, RangeAttribute::kReadMostly).status(), kInvalid, "size is 0");
  EXPECT_ERROR(rt_->GetRangeAttribute(p_ + 1, 1, RangeAttribute::kReadMostly).status(), kInvalid, "aligned");
  EXPECT_ERROR(rt_->GetRangeAttribute(p_, SIZE_MAX, RangeAttribute::kReadMostly).status(), kInvalid,
               "overflows");
  EXPECT_ERROR(rt_->GetRangeAttribute(p_, kBytes + kPageSize, RangeAttribute::kReadMostly).status(), kInvalid,
               "runs past the end");
  EXPECT_ERROR(rt_->GetRangeAttribute(not_managed, kPageSize, RangeAttribute::kReadMostly).status(),
               absl::StatusCode::kNotFound, "not managed");
  for (int raw : {0, 5, -3}) {
    EXPECT_ERROR(rt_->GetRangeAttribute(p_, kPageSize, static_cast<RangeAttribute>(raw)).status(), kInvalid,
                 "attribute " + std::to_string(raw) + " is not");
  }
  munmap(not_managed, kPageSize);

  EXPECT_EQ(Snapshot(), before);
  // The boundaries that are allowed.
  EXPECT_TRUE(rt_->Advise(p_, kBytes - 1, Advice::kSetFaultGranule, 4096).ok());
  EXPECT_TRUE(rt_->Advise(p_, kBytes, Advice::kSetFaultGranule, 2 << 20).ok());
  EXPECT_TRUE(rt_->Advise(p_, kPageSize, Advice::kSetPreferredLocation, devices - 1).ok());
  EXPECT_TRUE(rt_->Advise(p_, kPageSize, Advice::kUnsetAccessedBy, devices - 1).ok());
}

TEST_F(AdviceTest, SizeMayEndInsideTheLastPageOfAnOddSizedAllocation) {
  const size_t odd = 10 * kPageSize + 100;
  absl::StatusOr<void*> q = rt_->Allocate(odd);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_TRUE(rt_->Advise(*q, odd, Advice::kSetReadMostly).ok());
  EXPECT_EQ(Attr(*q, odd, RangeAttribute::kReadMostly), 1);
  EXPECT_EQ(Attr(*q, 11 * kPageSize, RangeAttribute::kReadMostly), 1);
  EXPECT_ERROR(rt_->Advise(*q, 11 * kPageSize + 1, Advice::kSetReadMostly),
               absl::StatusCode::kInvalidArgument, "runs past the end");
  EXPECT_TRUE(rt_->Free(*q).ok());
}

// ACCESSED_BY names several devices (the host backend emulates two here).
TEST(AdviceDevicesTest, AccessedBySeveralDevices) {
  UHMM_SKIP_UNLESS_HOST_BACKEND();
  Harness h;
  Config c = TestConfig();
  c.host_devices = 2;
  h.Start(c);
  UHMM_RETURN_IF_SKIPPED();
  ASSERT_EQ(h.rt_->device_count(), 2);
  absl::StatusOr<void*> p = h.rt_->Allocate(16 * kPageSize);
  ASSERT_TRUE(p.ok());
  char* const c0 = static_cast<char*>(*p);
  ASSERT_TRUE(h.rt_->Advise(c0, 16 * kPageSize, Advice::kSetAccessedBy, 0).ok());
  ASSERT_TRUE(h.rt_->Advise(c0 + 8 * kPageSize, 8 * kPageSize, Advice::kSetAccessedBy, 1).ok());
  ASSERT_TRUE(h.rt_->Advise(c0, 16 * kPageSize, Advice::kSetPreferredLocation, 1).ok());
  EXPECT_EQ(*h.rt_->GetRangeAttribute(c0, 16 * kPageSize, RangeAttribute::kAccessedBy), 0b01);
  EXPECT_EQ(*h.rt_->GetRangeAttribute(c0 + 8 * kPageSize, 8 * kPageSize, RangeAttribute::kAccessedBy), 0b11);
  EXPECT_EQ(*h.rt_->GetRangeAttribute(c0, 16 * kPageSize, RangeAttribute::kPreferredLocation), 1);
  EXPECT_EQ(h.rt_->Advise(c0, kPageSize, Advice::kSetAccessedBy, 2).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(h.rt_->Advise(c0, 16 * kPageSize, Advice::kUnsetAccessedBy, 0).ok());
  EXPECT_EQ(*h.rt_->GetRangeAttribute(c0, 16 * kPageSize, RangeAttribute::kAccessedBy), 0);
  EXPECT_EQ(*h.rt_->GetRangeAttribute(c0 + 8 * kPageSize, 8 * kPageSize, RangeAttribute::kAccessedBy), 0b10);
  EXPECT_TRUE(h.rt_->Free(c0).ok());
}

// ---------------------------------------------------------------------------------------------
// The C API (host backend, two devices).

// Unknown values as a C caller passes them. In C++ an unscoped enum may only hold values inside
// its range (0..15 for uhmm_advice_t, 0..7 for uhmm_range_attribute_t) without UB, so the test
// stays inside it (0 and 9..15 are not advice values; 0, 5..7 are not attributes).
std::string LastError() { return uhmm_last_error(); }

TEST(AdviceCApiTest, EachAdviceReadsBackAndBadInputIsRefused) {
  uhmm_runtime_t* rt = CreateHostC(2);
  ASSERT_NE(rt, nullptr);
  void* p = nullptr;
  const size_t n = 64 * kPageSize;
  ASSERT_EQ(uhmm_alloc(rt, n, &p), UHMM_OK);
  auto attr = [&](const void* ptr, size_t size, uhmm_range_attribute_t a) {
    int64_t v = -1000;
    EXPECT_EQ(uhmm_range_get_attribute(rt, ptr, size, a, &v), UHMM_OK) << uhmm_last_error();
    return v;
  };
  EXPECT_EQ(attr(p, n, UHMM_RANGE_ATTRIBUTE_PREFERRED_LOCATION), UHMM_LOCATION_NONE);

  EXPECT_EQ(uhmm_advise(rt, p, n, UHMM_ADVISE_SET_READ_MOSTLY, 0), UHMM_OK);
  EXPECT_EQ(attr(p, n, UHMM_RANGE_ATTRIBUTE_READ_MOSTLY), 1);
  EXPECT_EQ(uhmm_advise(rt, p, n / 2, UHMM_ADVISE_UNSET_READ_MOSTLY, 0), UHMM_OK);
  EXPECT_EQ(attr(p, n, UHMM_RANGE_ATTRIBUTE_READ_MOSTLY), 0);
  EXPECT_EQ(attr(static_cast<char*>(p) + n / 2, n / 2, UHMM_RANGE_ATTRIBUTE_READ_MOSTLY), 1);

  EXPECT_EQ(uhmm_advise(rt, p, n, UHMM_ADVISE_SET_PREFERRED_LOCATION, UHMM_LOCATION_HOST), UHMM_OK);
  EXPECT_EQ(attr(p, n, UHMM_RANGE_ATTRIBUTE_PREFERRED_LOCATION), UHMM_LOCATION_HOST);
  EXPECT_EQ(uhmm_advise(rt, p, kPageSize, UHMM_ADVISE_SET_PREFERRED_LOCATION, 1), UHMM_OK);
  EXPECT_EQ(attr(p, n, UHMM_RANGE_ATTRIBUTE_PREFERRED_LOCATION), UHMM_LOCATION_MIXED);
  EXPECT_EQ(attr(p, kPageSize, UHMM_RANGE_ATTRIBUTE_PREFERRED_LOCATION), 1);
  EXPECT_EQ(uhmm_advise(rt, p, n, UHMM_ADVISE_UNSET_PREFERRED_LOCATION, 0), UHMM_OK);
  EXPECT_EQ(attr(p, n, UHMM_RANGE_ATTRIBUTE_PREFERRED_LOCATION), UHMM_LOCATION_NONE);

  EXPECT_EQ(uhmm_advise(rt, p, n, UHMM_ADVISE_SET_ACCESSED_BY, 1), UHMM_OK);
  EXPECT_EQ(uhmm_advise(rt, p, n, UHMM_ADVISE_SET_ACCESSED_BY, 0), UHMM_OK);
  EXPECT_EQ(attr(p, n, UHMM_RANGE_ATTRIBUTE_ACCESSED_BY), 0b11);
  EXPECT_EQ(uhmm_advise(rt, p, n, UHMM_ADVISE_UNSET_ACCESSED_BY, 1), UHMM_OK);
  EXPECT_EQ(attr(p, n, UHMM_RANGE_ATTRIBUTE_ACCESSED_BY), 0b01);
  EXPECT_EQ(uhmm_advise(rt, p, n, UHMM_ADVISE_UNSET_ACCESSED_BY, 0), UHMM_OK);
  EXPECT_EQ(attr(p, n, UHMM_RANGE_ATTRIBUTE_ACCESSED_BY), 0);

  EXPECT_EQ(uhmm_advise(rt, p, n, UHMM_ADVISE_SET_FAULT_GRANULE, 1 << 20), UHMM_OK);
  EXPECT_EQ(attr(p, n, UHMM_RANGE_ATTRIBUTE_FAULT_GRANULE), 1 << 20);
  EXPECT_EQ(uhmm_advise(rt, p, kPageSize, UHMM_ADVISE_UNSET_FAULT_GRANULE, 0), UHMM_OK);
  EXPECT_EQ(attr(p, n, UHMM_RANGE_ATTRIBUTE_FAULT_GRANULE), UHMM_LOCATION_MIXED);
  EXPECT_EQ(attr(p, kPageSize, UHMM_RANGE_ATTRIBUTE_FAULT_GRANULE), 0);

  // Bad input: codes and messages, nothing changed.
  int64_t out = 0;
  EXPECT_EQ(uhmm_advise(nullptr, p, n, UHMM_ADVISE_SET_READ_MOSTLY, 0), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(LastError().find("uhmm_advise: runtime is NULL"), std::string::npos) << LastError();
  EXPECT_EQ(uhmm_range_get_attribute(nullptr, p, n, UHMM_RANGE_ATTRIBUTE_READ_MOSTLY, &out),
            UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(LastError().find("uhmm_range_get_attribute: runtime is NULL"), std::string::npos) << LastError();
  EXPECT_EQ(uhmm_range_get_attribute(rt, p, n, UHMM_RANGE_ATTRIBUTE_READ_MOSTLY, nullptr),
            UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(LastError().find("out is NULL"), std::string::npos) << LastError();
  EXPECT_EQ(uhmm_advise(rt, nullptr, n, UHMM_ADVISE_SET_READ_MOSTLY, 0), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(uhmm_advise(rt, p, 0, UHMM_ADVISE_SET_READ_MOSTLY, 0), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(uhmm_advise(rt, static_cast<char*>(p) + 1, n, UHMM_ADVISE_SET_READ_MOSTLY, 0),
            UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(uhmm_advise(rt, p, n + 1, UHMM_ADVISE_SET_READ_MOSTLY, 0), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(LastError().find("runs past the end"), std::string::npos) << LastError();
  EXPECT_EQ(uhmm_advise(rt, p, SIZE_MAX, UHMM_ADVISE_SET_READ_MOSTLY, 0), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(uhmm_advise(rt, p, n, static_cast<uhmm_advice_t>(9), 0), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(LastError().find("uhmm_advise: advice 9 is not"), std::string::npos) << LastError();
  EXPECT_EQ(uhmm_advise(rt, p, n, static_cast<uhmm_advice_t>(0), 0), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(uhmm_advise(rt, p, n, static_cast<uhmm_advice_t>(15), 0), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(uhmm_range_get_attribute(rt, p, n, static_cast<uhmm_range_attribute_t>(5), &out),
            UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(LastError().find("uhmm_range_get_attribute: attribute 5 is not"), std::string::npos)
      << LastError();
  EXPECT_EQ(uhmm_range_get_attribute(rt, p, n, static_cast<uhmm_range_attribute_t>(0), &out),
            UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(uhmm_advise(rt, p, n, UHMM_ADVISE_SET_ACCESSED_BY, 2), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(LastError().find("device 2 does not exist"), std::string::npos) << LastError();
  EXPECT_EQ(uhmm_advise(rt, p, n, UHMM_ADVISE_SET_ACCESSED_BY, UHMM_LOCATION_HOST),
            UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(uhmm_advise(rt, p, n, UHMM_ADVISE_SET_PREFERRED_LOCATION, 2), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(uhmm_advise(rt, p, n, UHMM_ADVISE_SET_FAULT_GRANULE, 12345), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(LastError().find("granule 12345"), std::string::npos) << LastError();
  EXPECT_EQ(uhmm_advise(rt, p, n, UHMM_ADVISE_SET_READ_MOSTLY, 5), UHMM_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(attr(p, n, UHMM_RANGE_ATTRIBUTE_READ_MOSTLY), 0);
  EXPECT_EQ(attr(p, n, UHMM_RANGE_ATTRIBUTE_ACCESSED_BY), 0);
  EXPECT_EQ(attr(p, n, UHMM_RANGE_ATTRIBUTE_PREFERRED_LOCATION), UHMM_LOCATION_NONE);
  EXPECT_EQ(attr(p, n, UHMM_RANGE_ATTRIBUTE_FAULT_GRANULE), UHMM_LOCATION_MIXED);

  ASSERT_EQ(uhmm_free(rt, p), UHMM_OK);
  EXPECT_EQ(uhmm_advise(rt, p, n, UHMM_ADVISE_SET_READ_MOSTLY, 0), UHMM_ERROR_NOT_FOUND);
  EXPECT_EQ(uhmm_range_get_attribute(rt, p, n, UHMM_RANGE_ATTRIBUTE_READ_MOSTLY, &out), UHMM_ERROR_NOT_FOUND);
  uhmm_destroy(rt);
}

// The new location values do not collide with the residency ones.
TEST(AdviceCApiTest, LocationValuesAreDistinct) {
  const std::vector<int> all = {UHMM_LOCATION_HOST, UHMM_LOCATION_POISONED, UHMM_LOCATION_UNMAPPED,
                                UHMM_LOCATION_NONE, UHMM_LOCATION_MIXED};
  for (size_t i = 0; i < all.size(); ++i) {
    EXPECT_LT(all[i], 0);
    for (size_t j = i + 1; j < all.size(); ++j) EXPECT_NE(all[i], all[j]);
  }
  EXPECT_EQ(kNoLocation, UHMM_LOCATION_NONE);
  EXPECT_EQ(kMixedLocation, UHMM_LOCATION_MIXED);
}

}  // namespace
}  // namespace uhmm::testing

// ---- What advice does ------------------------------------------------------------------------

namespace uhmm::testing {
namespace {

class AdviceEffectsTest : public RuntimeTest {};

TEST_F(AdviceEffectsTest, FaultGranuleSetsHowMuchACpuFaultBringsBack) {
  Config c = TestConfig();
  c.readahead_bytes = 0;  // counts the faults' own migrations only
  rt_.reset();
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  constexpr size_t kBytes = 4 * kMiB;
  uint64_t* p = AllocFilled(kBytes, 1);
  auto* second = reinterpret_cast<uint8_t*>(p) + 2 * kMiB;
  ASSERT_TRUE(rt_->Advise(p, 2 * kMiB, Advice::kSetFaultGranule, 2 * kMiB).ok());
  ASSERT_TRUE(rt_->Advise(second, 2 * kMiB, Advice::kSetFaultGranule, kPageSize).ok());
  ASSERT_TRUE(rt_->Migrate(p, kBytes, 0).ok());
  Stats before = rt_->stats();
  p[7] = Pattern(1, 7);  // a write fault in the 2 MiB-granule half
  EXPECT_EQ(rt_->stats().pages_to_host - before.pages_to_host, 2 * kMiB / kPageSize);
  before = rt_->stats();
  reinterpret_cast<uint64_t*>(second)[9] = Pattern(1, 2 * kMiB / 8 + 9);  // in the 4 KiB-granule half
  EXPECT_EQ(rt_->stats().pages_to_host - before.pages_to_host, 1u);
  ASSERT_TRUE(rt_->Advise(second, 2 * kMiB, Advice::kUnsetFaultGranule).ok());
  EXPECT_EQ(FirstMismatch(p, kBytes, 1), -1);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(AdviceEffectsTest, AHostPreferredRangeStaysHomeAtLaunchUnlessAccessedBy) {
  constexpr size_t kBytes = 2 * kMiB;
  uint64_t* home = AllocFilled(kBytes, 2);
  uint64_t* other = AllocFilled(kBytes, 3);
  ASSERT_TRUE(rt_->Advise(home, kBytes, Advice::kSetPreferredLocation, kHost).ok());
  ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
  EXPECT_EQ(CountAt(Residency(home, kBytes), kHost), kBytes / kPageSize)
      << "a host-preferred range was pushed";
  EXPECT_EQ(CountAt(Residency(other, kBytes), 0), kBytes / kPageSize);
  // ACCESSED_BY device 0: no backend maps host memory for kernels in place yet, so it migrates.
  ASSERT_TRUE(rt_->Advise(home, kBytes, Advice::kSetAccessedBy, 0).ok());
  ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
  EXPECT_EQ(CountAt(Residency(home, kBytes), 0), kBytes / kPageSize);
  EXPECT_EQ(DeviceMismatches(home, kBytes, 2), 0u);
  ASSERT_TRUE(rt_->Free(home).ok());
  ASSERT_TRUE(rt_->Free(other).ok());
}

TEST_F(AdviceEffectsTest, UnsettingHostPreferenceMakesTheNextLaunchPushIt) {
  constexpr size_t kBytes = 2 * kMiB;
  uint64_t* p = AllocFilled(kBytes, 4);
  ASSERT_TRUE(rt_->Advise(p, kBytes, Advice::kSetPreferredLocation, kHost).ok());
  ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
  EXPECT_EQ(CountAt(Residency(p, kBytes), kHost), kBytes / kPageSize);
  ASSERT_TRUE(rt_->Advise(p, kBytes, Advice::kUnsetPreferredLocation).ok());
  ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
  EXPECT_EQ(CountAt(Residency(p, kBytes), 0), kBytes / kPageSize);
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(AdviceEffectsTest, ReadAheadLeavesDevicePreferredPagesOnTheDevice) {
  constexpr size_t kBytes = 16 * kMiB;
  uint64_t* p = AllocFilled(kBytes, 5);
  ASSERT_TRUE(rt_->Advise(p, kBytes, Advice::kSetPreferredLocation, 0).ok());
  ASSERT_TRUE(rt_->Migrate(p, kBytes, 0).ok());
  const Stats before = rt_->stats();
  for (size_t w = 0; w < kBytes / 8; w += kPageSize / 8) ASSERT_EQ(p[w], Pattern(5, w)) << w;
  EXPECT_EQ(rt_->stats().readahead_pages, before.readahead_pages)
      << "read-ahead pulled device-preferred pages";
  ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(AdviceEffectsTest, EvictionTakesDevicePreferredDataLast) {
  Config c = TestConfig();
  c.device_pool_bytes = 4 * kMiB;  // two chunks
  rt_.reset();
  Start(c);
  UHMM_RETURN_IF_SKIPPED();
  constexpr size_t kBytes = 2 * kMiB;
  uint64_t* kept = AllocFilled(kBytes, 7);
  uint64_t* other = AllocFilled(kBytes, 8);
  uint64_t* third = AllocFilled(kBytes, 9);
  ASSERT_TRUE(rt_->Advise(kept, kBytes, Advice::kSetPreferredLocation, 0).ok());
  ASSERT_TRUE(rt_->Migrate(kept, kBytes, 0).ok());  // least recently used: the usual victim
  ASSERT_TRUE(rt_->Migrate(other, kBytes, 0).ok());
  ASSERT_TRUE(rt_->Migrate(third, kBytes, 0).ok());  // the pool is full: one chunk goes
  EXPECT_EQ(CountAt(Residency(kept, kBytes), 0), kBytes / kPageSize) << "device-preferred data was evicted";
  EXPECT_EQ(CountAt(Residency(other, kBytes), kHost), kBytes / kPageSize);
  // With nothing else to evict, preferred data goes too: a migration is not refused for advice.
  ASSERT_TRUE(rt_->Migrate(other, kBytes, 0).ok());
  EXPECT_EQ(CountAt(Residency(other, kBytes), 0), kBytes / kPageSize);
  EXPECT_EQ(FirstMismatch(kept, kBytes, 7), -1);
  EXPECT_EQ(FirstMismatch(other, kBytes, 8), -1);
  EXPECT_EQ(FirstMismatch(third, kBytes, 9), -1);
  for (uint64_t* p : {kept, other, third}) ASSERT_TRUE(rt_->Free(p).ok());
}

TEST_F(AdviceEffectsTest, ReadMostlyCopiesStayValidAcrossLaunches) {
  std::string tracking;
  if (!TracksWrites(*rt_, &tracking)) GTEST_SKIP() << "read duplication is " << tracking;
  constexpr size_t kBytes = 2 * kMiB;
  uint64_t* p = AllocFilled(kBytes, 6);
  ASSERT_TRUE(rt_->Advise(p, kBytes, Advice::kSetReadMostly).ok());
  ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());  // first launch: pushed
  uint64_t sum = 0;
  for (size_t w = 0; w < kBytes / 8; w += kPageSize / 8) sum += p[w];  // CPU reads: duplicates
  const Stats before = rt_->stats();
  for (int step = 0; step < 5; ++step) {
    ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
    EXPECT_EQ(DeviceMismatches(p, kBytes, 6), 0u) << "a kernel would read a stale copy";
    for (size_t w = 0; w < kBytes / 8; w += kPageSize / 8) sum += p[w];
  }
  const Stats after = rt_->stats();
  EXPECT_EQ(after.pages_to_device, before.pages_to_device) << "launches moved read-mostly pages";
  EXPECT_EQ(after.pages_to_host, before.pages_to_host) << "CPU reads moved read-mostly pages";
  // A CPU write: the next launch pushes that page only, and the kernel sees it.
  p[3 * kPageSize / 8] = 77;
  ASSERT_TRUE(rt_->SyncForDevice(0, nullptr).ok());
  EXPECT_EQ(rt_->stats().pages_to_device - after.pages_to_device, 1u);
  absl::StatusOr<uint64_t> dev = rt_->DeviceAddress(p + 3 * kPageSize / 8);
  ASSERT_TRUE(dev.ok()) << dev.status();
  uint64_t word = 0;
  ASSERT_TRUE(access0_->DeviceRead(*dev, &word, 8).ok());
  EXPECT_EQ(word, 77u);
  EXPECT_NE(sum, 0u);
  ASSERT_TRUE(rt_->Free(p).ok());
}

}  // namespace
}  // namespace uhmm::testing
