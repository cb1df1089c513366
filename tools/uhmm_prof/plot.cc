// See plot.h.
#include "tools/uhmm_prof/plot.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tools/uhmm_prof/io.h"
#include "tools/uhmm_prof/report.h"

namespace uhmm::prof {

namespace {

// Layout, in SVG user units (pixels).
constexpr double kWidth = 960;
constexpr double kLeft = 170;  // row titles to the left of this
constexpr double kRight = 30;
constexpr double kTop = 70;  // title above
constexpr double kRowHeight = 100;
constexpr double kBarsTop = 26;  // inside a row: room for the p50/p99 labels above the bars
constexpr double kBarsHeight = 62;
constexpr double kAxisHeight = 60;
constexpr int kBinsPerDecade = 10;
constexpr double kPlotWidth = kWidth - kLeft - kRight;

constexpr const char* kPhaseColors[kNumPhases] = {"#4e79a7", "#59a14f", "#f28e2b",
                                                  "#b07aa1", "#76b7b2", "#5c5c5c"};
constexpr const char* kP50Color = "#1f3b99";
constexpr const char* kP99Color = "#c0392b";

// Text for XML: markup characters escaped; control characters (not allowed in XML) and bytes that
// are not part of valid UTF-8 (a backend name from a file need not be) become '?'.
std::string Xml(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    const char ch = s[i];
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x80) {
      const size_t more = (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : 0;
      size_t k = 1;
      while (more > 0 && k <= more && i + k < s.size() &&
             (static_cast<unsigned char>(s[i + k]) & 0xc0) == 0x80)
        ++k;
      if (more > 0 && k == more + 1) {
        out.append(s.substr(i, k));
        i += more;
      } else {
        out += '?';
      }
      continue;
    }
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += (c < 0x20 || c == 0x7f) ? '?' : ch;
    }
  }
  return out;
}

// A latency for labels: "850 ns", "12.3 µs", "4.56 ms".
std::string Pretty(uint64_t ns) {
  if (ns < 1000) return absl::StrFormat("%d ns", ns);
  const double us = static_cast<double>(ns) / 1000.0;
  if (us < 10) return absl::StrFormat("%.2f µs", us);
  if (us < 1000) return absl::StrFormat("%.1f µs", us);
  const double ms = us / 1000.0;
  if (ms < 1000) return absl::StrFormat("%.2f ms", ms);
  return absl::StrFormat("%.2f s", ms / 1000.0);
}

// A power of ten in microseconds as an axis label: "0.01", "1", "1000".
std::string DecadeLabel(int decade) {
  if (decade >= 0) return absl::StrCat(static_cast<uint64_t>(std::llround(std::pow(10.0, decade))));
  return absl::StrFormat("%.*f", -decade, std::pow(10.0, decade));
}

double Log10Us(uint64_t ns) { return std::log10(std::max<double>(static_cast<double>(ns), 1.0) / 1000.0); }

}  // namespace

bool IsSvgPath(std::string_view path) {
  return path.size() > 4 && absl::EndsWithIgnoreCase(absl::string_view(path.data(), path.size()), ".svg");
}

std::string LatencySvg(const Analysis& a) {
  // The shared axis: whole decades around every sample.
  uint64_t lo_ns = UINT64_MAX, hi_ns = 0;
  for (const auto& s : a.samples) {
    if (s.empty()) continue;
    lo_ns = std::min(lo_ns, s.front());
    hi_ns = std::max(hi_ns, s.back());
  }
  int lo_dec = 0, hi_dec = 3;  // 1 us .. 1 ms without samples
  if (hi_ns > 0 || lo_ns != UINT64_MAX) {
    lo_dec = static_cast<int>(std::floor(Log10Us(lo_ns) + 1e-9));
    hi_dec = static_cast<int>(std::floor(Log10Us(hi_ns) + 1e-9)) + 1;
    lo_dec = std::max(lo_dec, -3);  // 1 ns
    hi_dec = std::max(hi_dec, lo_dec + 1);
  }
  const int decades = hi_dec - lo_dec;
  const int bins = decades * kBinsPerDecade;
  const auto x_of = [&](double log10_us) { return kLeft + (log10_us - lo_dec) / decades * kPlotWidth; };

  const double height = kTop + kNumPhases * kRowHeight + kAxisHeight;
  const double axis_y = kTop + kNumPhases * kRowHeight;
  std::string s;
  absl::StrAppendFormat(&s,
                        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
                        "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" font-size=\"12\">\n",
                        kWidth, height, kWidth, height);
  const std::string title = absl::StrFormat("uhmm fault latency by phase: backend %s, %d CPU faults",
                                            a.backend.empty() ? "(unnamed)" : a.backend, a.faults.faults);
  absl::StrAppend(&s, "<title>", Xml(title), "</title>\n");
  absl::StrAppendFormat(&s, "<rect x=\"0\" y=\"0\" width=\"%.0f\" height=\"%.0f\" fill=\"white\"/>\n", kWidth,
                        height);
  absl::StrAppendFormat(&s, "<text x=\"%.0f\" y=\"28\" font-size=\"18\" font-weight=\"bold\">%s</text>\n",
                        kLeft, Xml(title));
  std::string subtitle = absl::StrFormat(
      "histogram per phase, %d bins per decade, each row scaled to its fullest bin; pid %d, %s",
      kBinsPerDecade, a.pid, HumanDuration(a.duration_ns()));
  if (!a.complete) subtitle += "; incomplete trace";
  if (a.dropped > 0) subtitle += absl::StrFormat("; %d records dropped", a.dropped);
  absl::StrAppendFormat(&s, "<text x=\"%.0f\" y=\"48\" fill=\"#555\">%s</text>\n", kLeft, Xml(subtitle));
  // Legend.
  const double lx = kWidth - kRight - 150;
  absl::StrAppendFormat(&s,
                        "<line x1=\"%.0f\" y1=\"44\" x2=\"%.0f\" y2=\"56\" stroke=\"%s\" stroke-width=\"2\"/>"
                        "<text x=\"%.0f\" y=\"54\">p50</text>\n",
                        lx, lx, kP50Color, lx + 6);
  absl::StrAppendFormat(&s,
                        "<line x1=\"%.0f\" y1=\"44\" x2=\"%.0f\" y2=\"56\" stroke=\"%s\" stroke-width=\"2\" "
                        "stroke-dasharray=\"4 2\"/><text x=\"%.0f\" y=\"54\">p99</text>\n",
                        lx + 50, lx + 50, kP99Color, lx + 56);

  // Grid: a line per decade through every row, lighter ones at 2..9 x.
  for (int d = lo_dec; d <= hi_dec; ++d) {
    const double x = x_of(d);
    absl::StrAppendFormat(&s,
                          "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#bbb\" "
                          "stroke-width=\"1\"/>\n",
                          x, kTop, x, axis_y);
    if (d == hi_dec) break;
    for (int m = 2; m <= 9; ++m) {
      const double xm = x_of(d + std::log10(static_cast<double>(m)));
      absl::StrAppendFormat(&s,
                            "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#eee\" "
                            "stroke-width=\"1\"/>\n",
                            xm, kTop, xm, axis_y);
    }
  }

  for (int p = 0; p < kNumPhases; ++p) {
    const double y = kTop + p * kRowHeight;
    const double base = y + kBarsTop + kBarsHeight;
    const std::vector<uint64_t>& samples = a.samples[p];
    const Latency& l = a.phases[p];
    absl::StrAppendFormat(&s, "<g class=\"phase\" id=\"phase-%d\">\n", p);
    if (p > 0) {
      absl::StrAppendFormat(&s, "<line x1=\"10\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"#ddd\"/>\n", y,
                            kWidth - 10, y);
    }
    absl::StrAppendFormat(&s,
                          "<text class=\"phase-title\" x=\"14\" y=\"%.0f\" font-size=\"15\" "
                          "font-weight=\"bold\">%s</text>\n",
                          y + 44, Xml(PhaseName(p)));
    absl::StrAppendFormat(&s, "<text x=\"14\" y=\"%.0f\" fill=\"#555\">%d faults</text>\n", y + 62, l.count);
    // Baseline.
    absl::StrAppendFormat(&s, "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"#888\"/>\n",
                          kLeft, base, kLeft + kPlotWidth, base);
    if (samples.empty()) {
      absl::StrAppendFormat(&s, "<text x=\"%.0f\" y=\"%.0f\" fill=\"#888\">no samples</text>\n", kLeft + 10,
                            base - kBarsHeight / 2);
      absl::StrAppend(&s, "</g>\n");
      continue;
    }
    absl::StrAppendFormat(&s, "<text x=\"14\" y=\"%.0f\" fill=\"#555\">mean %s</text>\n", y + 78,
                          Xml(Pretty(static_cast<uint64_t>(std::llround(l.mean)))));
    std::vector<size_t> counts(bins, 0);
    for (uint64_t v : samples) {
      const int b = static_cast<int>(std::floor((Log10Us(v) - lo_dec) * kBinsPerDecade + 1e-9));
      ++counts[std::clamp(b, 0, bins - 1)];
    }
    const size_t top = *std::max_element(counts.begin(), counts.end());
    const double bin_w = kPlotWidth / bins;
    for (int b = 0; b < bins; ++b) {
      if (counts[b] == 0) continue;
      const double h = std::max(1.0, kBarsHeight * static_cast<double>(counts[b]) / static_cast<double>(top));
      absl::StrAppendFormat(&s,
                            "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"%s\">"
                            "<title>%d</title></rect>\n",
                            kLeft + b * bin_w + 0.5, base - h, std::max(bin_w - 1.0, 0.5), h, kPhaseColors[p],
                            counts[b]);
    }
    // p50 and p99: a line through the bars and a label above them, on two lines so they never
    // overlap; a label near the right edge is anchored at its end.
    const struct {
      const char* name;
      uint64_t ns;
      const char* color;
      const char* dash;
      double label_y;
    } marks[] = {{"p50", l.p50, kP50Color, "", y + 11},
                 {"p99", l.p99, kP99Color, " stroke-dasharray=\"4 2\"", y + 23}};
    for (const auto& m : marks) {
      const double x = x_of(Log10Us(m.ns));
      absl::StrAppendFormat(&s,
                            "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"%s\" "
                            "stroke-width=\"2\"%s/>\n",
                            x, m.label_y + 2, x, base, m.color, m.dash);
      // Left of the line only where the label (about 6.6 units a character) would leave the picture.
      const std::string label = absl::StrCat(m.name, " ", Pretty(m.ns));
      const bool right = x + 4 + 6.6 * static_cast<double>(label.size()) > kWidth - 4;
      absl::StrAppendFormat(&s, "<text x=\"%.2f\" y=\"%.2f\" fill=\"%s\" text-anchor=\"%s\">%s</text>\n",
                            right ? x - 4 : x + 4, m.label_y, m.color, right ? "end" : "start", Xml(label));
    }
    absl::StrAppend(&s, "</g>\n");
  }

  // The axis.
  absl::StrAppendFormat(&s, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n",
                        kLeft, axis_y, kLeft + kPlotWidth, axis_y);
  for (int d = lo_dec; d <= hi_dec; ++d) {
    const double x = x_of(d);
    absl::StrAppendFormat(&s,
                          "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"black\"/>"
                          "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%s</text>\n",
                          x, axis_y, x, axis_y + 6, x, axis_y + 20, DecadeLabel(d));
  }
  absl::StrAppendFormat(&s,
                        "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">latency (µs, log scale)</text>\n",
                        kLeft + kPlotWidth / 2, axis_y + 42);
  absl::StrAppend(&s, "</svg>\n");
  return s;
}

absl::Status WriteLatencySvg(const Analysis& a, const std::string& path) {
  return WriteFile(path, LatencySvg(a));
}

}  // namespace uhmm::prof
