// Per-page memory advice of a range; see advice.h.
#include "runtime/policy/advice.h"

#include <algorithm>
#include <iterator>

#include "absl/container/btree_map.h"
#include "absl/container/inlined_vector.h"

namespace uhmm {

namespace {

struct Run {
  uintptr_t end;
  PageAdvice advice;
};

// One piece of a span, for rebuilding and for snapshots.
struct Piece {
  uintptr_t start;
  uintptr_t end;
  PageAdvice advice;
};

void Change(PageAdvice* a, Advice advice, int64_t arg) {
  switch (advice) {
    case Advice::kSetReadMostly:
      a->read_mostly = true;
      break;
    case Advice::kUnsetReadMostly:
      a->read_mostly = false;
      break;
    case Advice::kSetPreferredLocation:
      a->preferred = static_cast<int>(arg);
      break;
    case Advice::kUnsetPreferredLocation:
      a->preferred = kNoLocation;
      break;
    case Advice::kSetAccessedBy:
      if (arg >= 0 && arg < kMaxAdviceDevices) a->accessed_by |= uint64_t{1} << arg;
      break;
    case Advice::kUnsetAccessedBy:
      if (arg >= 0 && arg < kMaxAdviceDevices) a->accessed_by &= ~(uint64_t{1} << arg);
      break;
    case Advice::kSetFaultGranule:
      a->granule = static_cast<uint32_t>(arg);
      break;
    case Advice::kUnsetFaultGranule:
      a->granule = 0;
      break;
  }
}

}  // namespace

// Maximal runs of pages with the same advice, none of it default: no two runs overlap, and two runs
// that touch differ in advice.
struct RangeAdvice::Runs {
  absl::btree_map<uintptr_t, Run> map;

  // The run holding `addr`, or end().
  absl::btree_map<uintptr_t, Run>::const_iterator Find(uintptr_t addr) const {
    auto it = map.upper_bound(addr);
    if (it == map.begin()) return map.end();
    --it;
    return it->second.end > addr ? it : map.end();
  }

  // Splits the run that holds `addr` in its middle, so that a run starts at `addr`.
  void SplitAt(uintptr_t addr) {
    auto it = map.upper_bound(addr);
    if (it == map.begin()) return;
    --it;
    if (it->first == addr || it->second.end <= addr) return;
    const Run tail{it->second.end, it->second.advice};
    it->second.end = addr;
    map.emplace(addr, tail);
  }

  // The pieces of [start, end) in address order, gaps included (default advice).
  template <typename Out>
  void Pieces(uintptr_t start, uintptr_t end, Out* out) const {
    uintptr_t cur = start;
    auto it = Find(start);
    if (it == map.end()) it = map.lower_bound(start);
    for (; it != map.end() && it->first < end; ++it) {
      const uintptr_t s = std::max(it->first, start);
      const uintptr_t e = std::min(it->second.end, end);
      if (s > cur) out->push_back(Piece{cur, s, PageAdvice{}});
      out->push_back(Piece{s, e, it->second.advice});
      cur = e;
    }
    if (cur < end) out->push_back(Piece{cur, end, PageAdvice{}});
  }

  // Merges touching runs with equal advice from the run before `start` to the run at `end`.
  void MergeAround(uintptr_t start, uintptr_t end) {
    auto it = map.lower_bound(start);
    if (it != map.begin()) --it;
    while (it != map.end() && it->first <= end) {
      auto next = std::next(it);
      if (next != map.end() && it->second.end == next->first && it->second.advice == next->second.advice) {
        it->second.end = next->second.end;
        it = std::prev(map.erase(next));  // erasing invalidates every other btree iterator
      } else {
        it = next;
      }
    }
  }
};

RangeAdvice::RangeAdvice() : runs_(std::make_unique<Runs>()) {}

RangeAdvice::~RangeAdvice() = default;

void RangeAdvice::Apply(uintptr_t start, uintptr_t end, Advice advice, int64_t arg) {
  if (start >= end) return;
  MutexLock lock(&mu_);
  Runs& r = *runs_;
  r.SplitAt(start);
  r.SplitAt(end);
  // Runs now begin and end at the span's edges: take the span out whole, change it, put back what
  // is not default, then merge with the neighbours.
  absl::InlinedVector<Piece, 8> pieces;
  r.Pieces(start, end, &pieces);
  r.map.erase(r.map.lower_bound(start), r.map.lower_bound(end));
  for (Piece& p : pieces) {
    Change(&p.advice, advice, arg);
    if (!p.advice.none()) r.map.emplace(p.start, Run{p.end, p.advice});
  }
  r.MergeAround(start, end);
  any_.store(!r.map.empty(), std::memory_order_release);
}

PageAdvice RangeAdvice::At(uintptr_t addr) const {
  if (!Any()) return PageAdvice{};
  ReaderMutexLock lock(&mu_);
  auto it = runs_->Find(addr);
  return it == runs_->map.end() ? PageAdvice{} : it->second.advice;
}

int64_t RangeAdvice::Attribute(uintptr_t start, uintptr_t end, RangeAttribute attribute) const {
  absl::InlinedVector<Piece, 8> pieces;
  if (Any() && start < end) {
    ReaderMutexLock lock(&mu_);
    runs_->Pieces(start, end, &pieces);
  } else {
    pieces.push_back(Piece{start, end, PageAdvice{}});
  }
  const PageAdvice& first = pieces.front().advice;
  switch (attribute) {
    case RangeAttribute::kReadMostly:
      for (const Piece& p : pieces) {
        if (!p.advice.read_mostly) return 0;
      }
      return 1;
    case RangeAttribute::kPreferredLocation:
      for (const Piece& p : pieces) {
        if (p.advice.preferred != first.preferred) return kMixedLocation;
      }
      return first.preferred;
    case RangeAttribute::kAccessedBy: {
      uint64_t all = ~uint64_t{0};
      for (const Piece& p : pieces) all &= p.advice.accessed_by;
      return static_cast<int64_t>(all);
    }
    case RangeAttribute::kFaultGranule:
      for (const Piece& p : pieces) {
        if (p.advice.granule != first.granule) return kMixedLocation;
      }
      return first.granule;
  }
  return 0;
}

void RangeAdvice::ForEachRun(uintptr_t start, uintptr_t end,
                             absl::FunctionRef<void(uintptr_t, uintptr_t, const PageAdvice&)> fn) const {
  if (start >= end) return;
  absl::InlinedVector<Piece, 8> pieces;
  if (Any()) {
    ReaderMutexLock lock(&mu_);
    runs_->Pieces(start, end, &pieces);
  } else {
    pieces.push_back(Piece{start, end, PageAdvice{}});
  }
  for (const Piece& p : pieces) fn(p.start, p.end, p.advice);
}

size_t RangeAdvice::run_count() const {
  ReaderMutexLock lock(&mu_);
  return runs_->map.size();
}

}  // namespace uhmm
