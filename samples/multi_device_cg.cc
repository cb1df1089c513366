// multi_device_cg: the memory pattern of NVIDIA's conjugateGradientMultiDeviceCG on every device
// the runtime has. A tridiagonal system A x = b is split in one slice of rows per device; every
// vector slice is advised to prefer its device and to be accessed by the others, the matrix is
// read-mostly, each slice is prefetched to its device, and each iteration runs one "kernel" per
// device on the shared vectors. The kernels are device-side reads and writes through
// uhmm/testing.h's DeviceAccess (so the sample runs on emulated devices as on GPUs); the host
// reduces the per-device dot products, as the CUDA sample's grid sync does. The result is checked
// against the same arithmetic on plain memory, word for word.
//
// Where every device reaches every other's memory (peer access), a kernel reads its neighbours'
// boundary rows where they lie and nothing moves after the prefetches. Without peer access, each
// kernel is preceded by uhmm_sync_for_device, which moves what the device cannot reach to it.
//
//   multi_device_cg [iterations]    (knobs from the environment: UHMM_BACKEND, UHMM_HOST_DEVICES,
//                                     UHMM_CUDA_DEVICES=all, ...; docs/CONFIG.md)
// Exit status: 0 when the result matches, 1 when it does not or uhmm fails.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "uhmm/testing.h"
#include "uhmm/uhmm.hpp"

namespace {

constexpr size_t kSliceRows = uhmm::kBlockSize / sizeof(double);  // one 2 MiB block per slice
constexpr double kDiag = 4.0, kOff = -1.0;

#define CHECK_OK(expr)                                                                             \
  do {                                                                                             \
    if (absl::Status s_ = (expr); !s_.ok()) {                                                      \
      std::fprintf(stderr, "multi_device_cg: %s: %s\n", #expr, std::string(s_.message()).c_str()); \
      std::exit(1);                                                                                \
    }                                                                                              \
  } while (0)

// One device's view for its kernels: reads and writes of managed arrays at their device addresses
// (runs of pages whose device addresses are contiguous go in one call).
class DeviceView {
 public:
  DeviceView(uhmm::Runtime& rt, int device) : rt_(rt), access_(uhmm::testing::Access(rt, device)) {}
  absl::Status Read(const double* src, size_t n, double* dst) { return Copy(src, n, dst, false); }
  absl::Status Write(double* dst, size_t n, const double* src) {
    return Copy(dst, n, const_cast<double*>(src), true);
  }

 private:
  absl::Status Copy(const double* managed, size_t n, double* local, bool write) {
    if (access_ == nullptr) return absl::UnimplementedError("this backend has no device-side access");
    const auto* base = reinterpret_cast<const uint8_t*>(managed);
    auto* mine = reinterpret_cast<uint8_t*>(local);
    const size_t bytes = n * sizeof(double);
    for (size_t off = 0; off < bytes;) {
      absl::StatusOr<uint64_t> dev = rt_.DeviceAddress(base + off);
      if (!dev.ok()) return dev.status();
      // Extend the run while the next page's device address follows on.
      size_t len = std::min(bytes - off,
                            uhmm::kPageSize - (reinterpret_cast<uintptr_t>(base) + off) % uhmm::kPageSize);
      while (off + len < bytes) {
        absl::StatusOr<uint64_t> next = rt_.DeviceAddress(base + off + len);
        if (!next.ok() || *next != *dev + len) break;
        len += std::min(bytes - off - len, uhmm::kPageSize);
      }
      absl::Status s =
          write ? access_->DeviceWrite(*dev, mine + off, len) : access_->DeviceRead(*dev, mine + off, len);
      if (!s.ok()) return s;
      off += len;
    }
    return absl::OkStatus();
  }

  uhmm::Runtime& rt_;
  uhmm::testing::DeviceAccess* access_;
};

// The state CG keeps, managed (what the devices use) or plain (the reference).
template <typename Vec>
struct Cg {
  Vec lower, diag, upper;  // A's three diagonals (read-mostly)
  Vec x, r, p, ap;
};

// One kernel's work on rows [lo, hi) of an n-row system, on local copies: the same arithmetic for
// the devices and for the reference. `p` holds rows [lo - 1, hi + 1) clipped to [0, n), from p_lo.
double ApSlice(size_t lo, size_t hi, size_t n, const double* lower, const double* diag, const double* upper,
               const double* p, size_t p_lo, double* ap) {
  double dot = 0;
  for (size_t i = lo; i < hi; ++i) {
    double v = diag[i - lo] * p[i - p_lo];
    if (i > 0) v += lower[i - lo] * p[i - 1 - p_lo];
    if (i + 1 < n) v += upper[i - lo] * p[i + 1 - p_lo];
    ap[i - lo] = v;
    dot += p[i - p_lo] * v;
  }
  return dot;
}
double UpdateXr(size_t rows, double alpha, const double* p, const double* ap, double* x, double* r) {
  double dot = 0;
  for (size_t i = 0; i < rows; ++i) {
    x[i] += alpha * p[i];
    r[i] -= alpha * ap[i];
    dot += r[i] * r[i];
  }
  return dot;
}
void UpdateP(size_t rows, double beta, const double* r, double* p) {
  for (size_t i = 0; i < rows; ++i) p[i] = r[i] + beta * p[i];
}

}  // namespace

int main(int argc, char** argv) {
  const int iterations = argc > 1 ? std::atoi(argv[1]) : 8;
  uhmm::Config config = uhmm::Config::FromEnv();
  absl::StatusOr<std::unique_ptr<uhmm::Runtime>> created = uhmm::Runtime::Create(config);
  if (!created.ok()) {
    std::fprintf(stderr, "multi_device_cg: %s\n", created.status().ToString().c_str());
    return 1;
  }
  uhmm::Runtime& rt = **created;
  const int devices = rt.device_count();
  const size_t n = kSliceRows * static_cast<size_t>(devices);
  bool all_peers = true;
  for (int d = 0; d < devices; ++d) {
    absl::StatusOr<uhmm::Runtime::DeviceStats> st = rt.device_stats(d);
    CHECK_OK(st.status());
    const uint64_t others = ((devices < 64 ? uint64_t{1} << devices : 0) - 1) & ~(uint64_t{1} << d);
    all_peers &= (st->peer_access & others) == others;
  }
  std::printf("multi_device_cg: backend %s, %d device(s), %zu rows (%zu per device), %s\n",
              std::string(rt.backend_name()).c_str(), devices, n, kSliceRows,
              all_peers ? "peer access between all: kernels read neighbours in place"
                        : "no peer access: each kernel is preceded by uhmm_sync_for_device");

  auto managed = [&] {
    absl::StatusOr<uhmm::ManagedArray<double>> a = uhmm::ManagedArray<double>::Create(rt, n);
    CHECK_OK(a.status());
    return std::move(*a);
  };
  Cg<uhmm::ManagedArray<double>> m{managed(), managed(), managed(), managed(),
                                   managed(), managed(), managed()};
  Cg<std::vector<double>> ref;
  for (std::vector<double>* v : {&ref.lower, &ref.diag, &ref.upper, &ref.x, &ref.r, &ref.p, &ref.ap})
    v->assign(n, 0);
  // A x = b with b = 1, x0 = 0: r = p = b. Filled on the CPU.
  for (size_t i = 0; i < n; ++i) {
    m.lower[i] = ref.lower[i] = i > 0 ? kOff : 0;
    m.diag[i] = ref.diag[i] = kDiag;
    m.upper[i] = ref.upper[i] = i + 1 < n ? kOff : 0;
    m.x[i] = ref.x[i] = 0;
    m.r[i] = ref.r[i] = 1;
    m.p[i] = ref.p[i] = 1;
    m.ap[i] = ref.ap[i] = 0;
  }

  // The sample's advice and prefetches: the matrix read-mostly, each slice preferring its device
  // and accessed by the others, then every slice to its device.
  const auto t0 = std::chrono::steady_clock::now();
  for (uhmm::ManagedArray<double>* v : {&m.lower, &m.diag, &m.upper}) {
    CHECK_OK(rt.Advise(v->data(), v->bytes(), uhmm::Advice::kSetReadMostly));
  }
  for (int d = 0; d < devices; ++d) {
    for (uhmm::ManagedArray<double>* v : {&m.lower, &m.diag, &m.upper, &m.x, &m.r, &m.p, &m.ap}) {
      double* slice = v->data() + d * kSliceRows;
      CHECK_OK(rt.Advise(slice, uhmm::kBlockSize, uhmm::Advice::kSetPreferredLocation, d));
      for (int other = 0; other < devices; ++other) {
        if (other != d) CHECK_OK(rt.Advise(slice, uhmm::kBlockSize, uhmm::Advice::kSetAccessedBy, other));
      }
      CHECK_OK(rt.PrefetchOnQueue(slice, uhmm::kBlockSize, d, nullptr));
    }
  }
  const uhmm::Stats after_prefetch = rt.stats();

  std::vector<DeviceView> views;
  for (int d = 0; d < devices; ++d) views.emplace_back(rt, d);
  // Runs `kernel` as device d's launch: without peer access, launch coherence first.
  auto launch = [&](int d, auto&& kernel) {
    if (!all_peers) CHECK_OK(rt.SyncForDevice(d, nullptr));
    CHECK_OK(kernel());
  };
  std::vector<double> lo_buf(kSliceRows), di_buf(kSliceRows), up_buf(kSliceRows), p_buf(kSliceRows + 2),
      ap_buf(kSliceRows), x_buf(kSliceRows), r_buf(kSliceRows);
  std::vector<double> partial(static_cast<size_t>(devices));
  auto sum = [&] {
    double s = 0;
    for (double v : partial) s += v;  // in device order, as the reference
    return s;
  };

  double rs_old = static_cast<double>(n), ref_rs_old = rs_old;
  for (int it = 0; it < iterations; ++it) {
    // Kernel 1 on each device: ap = A p over its rows, and p . ap.
    for (int d = 0; d < devices; ++d) {
      const size_t lo = d * kSliceRows, hi = lo + kSliceRows;
      const size_t p_lo = lo > 0 ? lo - 1 : 0, p_hi = std::min(n, hi + 1);
      launch(d, [&]() -> absl::Status {
        DeviceView& v = views[d];
        for (auto [src, dst] :
             {std::pair{m.lower.data(), &lo_buf}, {m.diag.data(), &di_buf}, {m.upper.data(), &up_buf}}) {
          if (absl::Status s = v.Read(src + lo, kSliceRows, dst->data()); !s.ok()) return s;
        }
        // The neighbours' boundary rows: on another device, read in place over peer access.
        if (absl::Status s = v.Read(m.p.data() + p_lo, p_hi - p_lo, p_buf.data()); !s.ok()) return s;
        partial[d] = ApSlice(lo, hi, n, lo_buf.data(), di_buf.data(), up_buf.data(), p_buf.data(), p_lo,
                             ap_buf.data());
        return v.Write(m.ap.data() + lo, kSliceRows, ap_buf.data());
      });
    }
    const double alpha = rs_old / sum();
    for (int d = 0; d < devices; ++d) {
      const size_t lo = d * kSliceRows, hi = lo + kSliceRows;
      partial[d] = ApSlice(lo, hi, n, ref.lower.data() + lo, ref.diag.data() + lo, ref.upper.data() + lo,
                           ref.p.data(), 0, ref.ap.data() + lo);
    }
    const double ref_alpha = ref_rs_old / sum();
    // Kernel 2: x += alpha p, r -= alpha ap, and r . r.
    for (int d = 0; d < devices; ++d) {
      const size_t lo = d * kSliceRows;
      launch(d, [&]() -> absl::Status {
        DeviceView& v = views[d];
        for (auto [src, dst] : {std::pair{m.p.data(), &p_buf},
                                {m.ap.data(), &ap_buf},
                                {m.x.data(), &x_buf},
                                {m.r.data(), &r_buf}}) {
          if (absl::Status s = v.Read(src + lo, kSliceRows, dst->data()); !s.ok()) return s;
        }
        partial[d] = UpdateXr(kSliceRows, alpha, p_buf.data(), ap_buf.data(), x_buf.data(), r_buf.data());
        if (absl::Status s = v.Write(m.x.data() + lo, kSliceRows, x_buf.data()); !s.ok()) return s;
        return v.Write(m.r.data() + lo, kSliceRows, r_buf.data());
      });
    }
    const double rs_new = sum();
    for (int d = 0; d < devices; ++d) {
      const size_t lo = d * kSliceRows;
      partial[d] = UpdateXr(kSliceRows, ref_alpha, ref.p.data() + lo, ref.ap.data() + lo, ref.x.data() + lo,
                            ref.r.data() + lo);
    }
    const double ref_rs_new = sum();
    // Kernel 3: p = r + beta p.
    for (int d = 0; d < devices; ++d) {
      const size_t lo = d * kSliceRows;
      launch(d, [&]() -> absl::Status {
        DeviceView& v = views[d];
        if (absl::Status s = v.Read(m.r.data() + lo, kSliceRows, r_buf.data()); !s.ok()) return s;
        if (absl::Status s = v.Read(m.p.data() + lo, kSliceRows, p_buf.data()); !s.ok()) return s;
        UpdateP(kSliceRows, rs_new / rs_old, r_buf.data(), p_buf.data());
        return v.Write(m.p.data() + lo, kSliceRows, p_buf.data());
      });
      UpdateP(kSliceRows, ref_rs_new / ref_rs_old, ref.r.data() + lo, ref.p.data() + lo);
    }
    rs_old = rs_new;
    ref_rs_old = ref_rs_new;
    std::printf("  iteration %d: residual %.3e\n", it + 1, std::sqrt(rs_old));
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const uhmm::Stats st = rt.stats();

  // The CPU reads the result (each page faults home from its device) and checks it word for word.
  size_t wrong = 0;
  for (size_t i = 0; i < n; ++i) wrong += std::memcmp(&m.x[i], &ref.x[i], sizeof(double)) != 0;
  std::printf("| what | value |\n|---|---|\n");
  std::printf("| iterations | %d |\n| final residual | %.3e |\n", iterations, std::sqrt(rs_old));
  std::printf("| words of x that differ from the reference | %zu of %zu |\n", wrong, n);
  std::printf("| pages to devices: prefetches / during the iterations | %llu / %llu |\n",
              static_cast<unsigned long long>(after_prefetch.pages_to_device),
              static_cast<unsigned long long>(st.pages_to_device - after_prefetch.pages_to_device));
  std::printf("| pages to the host (the CPU check included) | %llu |\n",
              static_cast<unsigned long long>(rt.stats().pages_to_host));
  std::printf("| time, prefetches and iterations (emulated devices: not a GPU number) | %.2f s |\n", seconds);
  if (wrong != 0) {
    size_t first = 0;
    while (std::memcmp(&m.x[first], &ref.x[first], sizeof(double)) == 0) ++first;
    std::fprintf(stderr,
                 "multi_device_cg: FAILED: %zu words of x differ from the reference (first: x[%zu] is %.17g, "
                 "not %.17g)\n",
                 wrong, first, m.x[first], ref.x[first]);
    return 1;
  }
  std::printf("multi_device_cg: OK\n");
  return 0;
}
