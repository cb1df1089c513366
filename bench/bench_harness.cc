// uhmm_bench's harness; see bench_harness.h.
#include "bench/bench_harness.h"

#include <algorithm>
#include <cmath>
#include <random>

namespace uhmm::bench {

double Median(std::vector<double> v) { return Percentile(std::move(v), 0.5); }

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5))];
}

void FillCpu(uint64_t* p, size_t bytes, uint64_t seed) {
  for (size_t i = 0; i < bytes / sizeof(uint64_t); ++i) p[i] = Pattern(seed, i);
}

size_t CountWrong(const uint64_t* p, size_t bytes, uint64_t seed) {
  size_t wrong = 0;
  for (size_t i = 0; i < bytes / sizeof(uint64_t); ++i) wrong += p[i] != Pattern(seed, i);
  return wrong;
}

std::vector<uint32_t> PageOrder(size_t bytes, bool random) {
  std::vector<uint32_t> order(bytes / 4096);
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<uint32_t>(i);
  if (random) std::shuffle(order.begin(), order.end(), std::mt19937_64(42));
  return order;
}

namespace {
constexpr size_t kWordsPerPage = 4096 / sizeof(uint64_t);
// The word of page `page` that a touch reads: varies with the page, so a page shifted by whole
// pages or filled from the wrong offset is caught.
size_t TouchedWord(size_t page) { return page * kWordsPerPage + (page * 7) % kWordsPerPage; }
}  // namespace

size_t TouchPages(const uint64_t* p, const std::vector<uint32_t>& order, uint64_t seed) {
  size_t wrong = 0;
  const volatile uint64_t* v = p;
  for (uint32_t page : order) {
    const size_t w = TouchedWord(page);
    wrong += v[w] != Pattern(seed, w);
  }
  return wrong;
}

size_t TouchBlocksTimed(const uint64_t* p, size_t bytes, uint64_t seed, std::vector<double>* us) {
  size_t wrong = 0;
  const volatile uint64_t* v = p;
  constexpr size_t kPagesPerBlock = (size_t{2} << 20) / 4096;
  for (size_t block = 0; block < bytes / (size_t{2} << 20); ++block) {
    const size_t w = TouchedWord(block * kPagesPerBlock + block % kPagesPerBlock);
    const auto t0 = Clock::now();
    const uint64_t got = v[w];
    us->push_back(Us(Clock::now() - t0));
    wrong += got != Pattern(seed, w);
  }
  return wrong;
}

bool Selected(const Options& o, const std::string& row_name) {
  if (o.only.empty()) return true;
  for (size_t begin = 0; begin <= o.only.size();) {
    size_t end = o.only.find('|', begin);
    if (end == std::string::npos) end = o.only.size();
    if (end > begin && row_name.find(o.only.substr(begin, end - begin)) != std::string::npos) return true;
    begin = end + 1;
  }
  return false;
}

namespace {
std::string Num(double v) {
  if (std::isnan(v)) return "—";
  char buf[32];
  std::snprintf(buf, sizeof(buf), v >= 100 ? "%.0f" : v >= 10 ? "%.1f" : "%.2f", v);
  return buf;
}
}  // namespace

void Table::Add(Row row) {
  std::fprintf(stderr, "uhmm_bench: row done: %s: %s %s, uhmm %s %s%s\n", row.name.c_str(), baseline_.c_str(),
               Num(row.baseline).c_str(), Num(row.uhmm).c_str(), row.unit.c_str(),
               row.wrong ? " (WRONG DATA)" : "");
  rows_.push_back(std::move(row));
}

size_t Table::data_failures() const {
  size_t n = 0;
  for (const Row& r : rows_) n += r.wrong != 0;
  return n;
}

void Table::Print(FILE* out) const {
  auto num = Num;
  std::fprintf(out, "\n%s\n\n", title_.c_str());
  std::fprintf(out, "| metric | unit | %s | uhmm | uhmm/%s | goal | met | data |\n", baseline_.c_str(),
               baseline_.c_str());
  std::fprintf(out, "|---|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows_) {
    std::string ratio = "—";
    if (!std::isnan(r.baseline) && !std::isnan(r.uhmm) && r.baseline != 0)
      ratio = num(r.uhmm / r.baseline) + "x";
    const char* met = r.met == 1 ? "yes" : r.met == 0 ? "NO" : "—";
    std::fprintf(out, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", r.name.c_str(), r.unit.c_str(),
                 num(r.baseline).c_str(), num(r.uhmm).c_str(), ratio.c_str(),
                 r.goal.empty() ? "—" : r.goal.c_str(), met,
                 r.wrong ? ("WRONG " + std::to_string(r.wrong)).c_str() : "ok");
  }
  for (const Row& r : rows_) {
    if (!r.note.empty()) std::fprintf(out, "- %s: %s\n", r.name.c_str(), r.note.c_str());
  }
}

}  // namespace uhmm::bench
