// The interposing CUDA driver library; see interpose.h.
#include "backends/cuda/interpose/interpose.h"

#include <cuda.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "backends/cuda/interpose/forwarders.h"
#include "backends/cuda/interpose/real_driver.h"

// cuda.h maps cuGetProcAddress to its _v2 form; this library defines both under their own names.
#undef cuGetProcAddress
extern "C" CUresult cuGetProcAddress(const char* symbol, void** pfn, int version, cuuint64_t flags);

using uhmm::interpose::Forwarder;
using uhmm::interpose::kCurrent;
using uhmm::interpose::kForwarderCount;
using uhmm::interpose::kForwarders;
using uhmm::interpose::kPtds;

// What the generated trampolines jump through (forwarders.S).
extern "C" __attribute__((visibility("hidden"))) void* uhmm_fwd_slots[kForwarderCount];
extern "C" __attribute__((visibility("hidden"))) char uhmm_fwd_text_begin[], uhmm_fwd_text_end[];
void* uhmm_fwd_slots[kForwarderCount];
extern "C" __attribute__((visibility("hidden"))) char uhmm_fwd_text_begin[], uhmm_fwd_text_end[];

namespace {

using GetProcV2 = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);
using GetProcV1 = CUresult (*)(const char*, void**, int, cuuint64_t);

struct Real {
  void* handle = nullptr;
  std::string path;
  std::string status = "uhmm interposer: not initialised";
  GetProcV2 get_proc_v2 = nullptr;
  GetProcV1 get_proc_v1 = nullptr;
};
Real& real() {
  static Real* r = new Real();  // process lifetime: the driver may be called during exit
  return *r;
}

// Trampoline targets for what cannot be forwarded. Every driver entry point returns a CUresult in
// the return register and the caller owns the arguments, so one body serves every signature.
extern "C" CUresult uhmm_interpose_not_found() { return CUDA_ERROR_NOT_FOUND; }
extern "C" CUresult uhmm_interpose_no_driver() { return CUDA_ERROR_NO_DEVICE; }

// libcuda.so.1 as the loader's cache (/etc/ld.so.cache, the "glibc-ld.so.cache1.1" format) names it.
std::string FromLoaderCache() {
  const int fd = open("/etc/ld.so.cache", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  std::string data;
  char buf[65536];
  for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) data.append(buf, static_cast<size_t>(n));
  close(fd);
  constexpr char kMagic[] = "glibc-ld.so.cache1.1";
  constexpr size_t kHeader = 48, kEntry = 24;  // struct cache_file_new, struct file_entry_new
  if (data.size() < kHeader || data.compare(0, sizeof(kMagic) - 1, kMagic) != 0) return "";
  uint32_t nlibs;
  std::memcpy(&nlibs, data.data() + 20, sizeof(nlibs));
  auto str = [&](uint32_t off) -> std::string {
    if (off >= data.size()) return "";
    return std::string(data.c_str() + off, strnlen(data.c_str() + off, data.size() - off));
  };
  for (uint32_t i = 0; i < nlibs && kHeader + (i + 1) * kEntry <= data.size(); ++i) {
    uint32_t key, value;
    std::memcpy(&key, data.data() + kHeader + i * kEntry + 4, sizeof(key));
    std::memcpy(&value, data.data() + kHeader + i * kEntry + 8, sizeof(value));
    if (str(key) == "libcuda.so.1") return str(value);
  }
  return "";
}

bool SameFile(const struct stat& a, const struct stat& b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

// Loads `path` as the real driver, or says why not in *why.
bool TryLoad(const std::string& path, const struct stat* self, std::string* why) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    *why = path + ": " + strerror(errno);
    return false;
  }
  if (self != nullptr && SameFile(st, *self)) {
    *why = path + ": is this interposer";
    return false;
  }
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) {
    const char* err = dlerror();
    *why = path + ": " + (err ? err : "dlopen failed");
    return false;
  }
  if (dlsym(h, "uhmm_interpose_driver") != nullptr) {
    dlclose(h);
    *why = path + ": is a uhmm interposer too";
    return false;
  }
  auto v2 = reinterpret_cast<GetProcV2>(dlsym(h, "cuGetProcAddress_v2"));
  if (v2 == nullptr) {
    dlclose(h);
    *why = path + ": has no cuGetProcAddress_v2 (a driver older than CUDA 12)";
    return false;
  }
  Real& r = real();
  r.handle = h;
  r.path = path;
  r.get_proc_v2 = v2;
  r.get_proc_v1 = reinterpret_cast<GetProcV1>(dlsym(h, "cuGetProcAddress"));
  return true;
}

void FindRealDriver() {
  Real& r = real();
  struct stat self_st;
  const struct stat* self = nullptr;
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&uhmm_interpose_driver), &info) != 0 && info.dli_fname != nullptr &&
      stat(info.dli_fname, &self_st) == 0) {
    self = &self_st;
  }
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("UHMM_REAL_LIBCUDA"); env != nullptr && *env != '\0') {
    candidates.push_back(env);
  } else {
    if (std::string cached = FromLoaderCache(); !cached.empty()) candidates.push_back(cached);
    for (const char* dir :
         {"/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/nvidia/lib64", "/usr/lib/wsl/lib"})
      candidates.push_back(std::string(dir) + "/libcuda.so.1");
  }
  std::string tried;
  for (const std::string& c : candidates) {
    std::string why;
    if (TryLoad(c, self, &why)) {
      r.status = "uhmm interposer: forwarding to the NVIDIA driver " + c;
      return;
    }
    tried += (tried.empty() ? "" : "; ") + why;
  }
  r.status =
      "uhmm interposer: no NVIDIA driver found (" + tried + "); every call returns CUDA_ERROR_NO_DEVICE";
}

// Fills every trampoline slot: the real driver's symbol; else, for the form this cuda.h resolves
// its name to, what the driver's cuGetProcAddress gives (drivers that export less than they serve,
// such as tests/fake_cuda); else a stub returning CUDA_ERROR_NOT_FOUND.
__attribute__((constructor(101))) void Init() {
  FindRealDriver();
  Real& r = real();
  for (size_t i = 0; i < kForwarderCount; ++i) {
    void* fn = nullptr;
    if (r.handle == nullptr) {
      fn = reinterpret_cast<void*>(&uhmm_interpose_no_driver);
    } else if ((fn = dlsym(r.handle, kForwarders[i].name)) == nullptr &&
               (kForwarders[i].version != 0 || (kForwarders[i].flags & kCurrent))) {
      // The form introduced at its version is what the driver serves for that version.
      CUdriverProcAddressQueryResult found = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
      const cuuint64_t flags = (kForwarders[i].flags & kPtds) ? CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM
                                                              : CU_GET_PROC_ADDRESS_DEFAULT;
      const int version = kForwarders[i].version != 0 ? kForwarders[i].version : CUDA_VERSION;
      if (r.get_proc_v2(kForwarders[i].base, &fn, version, flags, &found) != CUDA_SUCCESS) fn = nullptr;
    }
    uhmm_fwd_slots[i] = fn != nullptr ? fn : reinterpret_cast<void*>(&uhmm_interpose_not_found);
  }
}

// What cuGetProcAddress hands out for the real driver's `fn`: this library's replacement of the
// exported name whose slot holds `fn` (or whose symbol `fn` is, or, failing both, the form of
// `symbol` that `version` means), else `fn`. A pointer no slot holds (an entry point newer
// than this cuda.h) is returned as it is. fn == nullptr (the driver has none): the replacement of
// this cuda.h's form, or nullptr.
void* Replacement(const char* symbol, int version, void* fn, cuuint64_t flags);

CUresult GetProc(const char* symbol, void** pfn, int version, cuuint64_t flags,
                 CUdriverProcAddressQueryResult* status) {
  if (pfn == nullptr || symbol == nullptr) return CUDA_ERROR_INVALID_VALUE;
  // cuGetProcAddress itself: a caller that looks it up must keep coming back here. CUDA 12 and
  // later serve the _v2 form (with the status argument) under the plain name.
  if (std::strcmp(symbol, "cuGetProcAddress") == 0) {
    *pfn = version >= 12000 ? reinterpret_cast<void*>(&cuGetProcAddress_v2)
                            : reinterpret_cast<void*>(&cuGetProcAddress);
    if (status != nullptr) *status = CU_GET_PROC_ADDRESS_SUCCESS;
    return CUDA_SUCCESS;
  }
  Real& r = real();
  if (r.handle == nullptr) {
    *pfn = nullptr;
    if (status != nullptr) *status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return CUDA_ERROR_NO_DEVICE;
  }
  const CUresult res = r.get_proc_v2(symbol, pfn, version, flags, status);
  if (res == CUDA_SUCCESS && *pfn != nullptr) {
    *pfn = Replacement(symbol, version, *pfn, flags);
  } else if (void* own = Replacement(symbol, version, nullptr, flags)) {
    // The driver lacks it (a driver older than this cuda.h, or the test's fake), and this library
    // implements it: its own stands.
    *pfn = own;
    if (status != nullptr) *status = CU_GET_PROC_ADDRESS_SUCCESS;
    return CUDA_SUCCESS;
  }
  return res;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) CUresult cuGetProcAddress_v2(const char* symbol, void** pfn,
                                                                    int version, cuuint64_t flags,
                                                                    CUdriverProcAddressQueryResult* status) {
  return GetProc(symbol, pfn, version, flags, status);
}

// The CUDA 11 form: no status argument.
__attribute__((visibility("default"))) CUresult cuGetProcAddress(const char* symbol, void** pfn, int version,
                                                                 cuuint64_t flags) {
  return GetProc(symbol, pfn, version, flags, nullptr);
}

__attribute__((visibility("default"))) const char* uhmm_interpose_driver(void) {
  const Real& r = real();
  return r.handle != nullptr ? r.path.c_str() : nullptr;
}

__attribute__((visibility("default"))) const char* uhmm_interpose_status(void) {
  return real().status.c_str();
}

}  // extern "C"

namespace {

void* Replacement(const char* symbol, int version, void* fn, cuuint64_t flags) {
  // This library as a loaded object: dlsym on it finds its own definitions first.
  static void* const self = [] {
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&uhmm_interpose_driver), &info) == 0 || info.dli_fname == nullptr)
      return static_cast<void*>(nullptr);
    return dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
  }();
  if (self == nullptr) return fn;
  // The exported name the driver's answer is (the version's form: cuMemAdvise or cuMemAdvise_v2).
  // A driver may give one function for several names (the fake gives one per base name): prefer
  // the name of the form asked for, per-thread stream or not.
  const bool ptds = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
  // Of several candidates, the per-thread form asked for, then the newest form `version` allows.
  const char* name = nullptr;
  std::tuple<bool, bool, int> best{false, false, INT_MIN};
  for (size_t i = 0; i < kForwarderCount; ++i) {
    const Forwarder& f = kForwarders[i];
    if (std::strcmp(f.base, symbol) != 0) continue;
    // fn == nullptr: the driver has none; this cuda.h's form of the name, if replaced.
    if (fn == nullptr ? (f.flags & kCurrent) == 0 : uhmm_fwd_slots[i] != fn) continue;
    const int introduced = f.version != 0 ? f.version : CUDA_VERSION;
    const bool allowed = introduced <= version;
    // Never a form newer than the caller, nor the other stream form, on this library's word alone.
    if (fn == nullptr && (!allowed || ((f.flags & kPtds) != 0) != ptds)) continue;
    const std::tuple<bool, bool, int> key{((f.flags & kPtds) != 0) == ptds, allowed,
                                          allowed ? introduced : -introduced};
    if (name == nullptr || key > best) {
      best = key;
      name = f.name;
    }
  }
  if (name == nullptr && fn != nullptr) {
    // A driver may answer with a function other than its export of that name (an alias): the
    // symbol its address has, if that is one of the names of `symbol`.
    Dl_info info;
    if (dladdr(fn, &info) != 0 && info.dli_sname != nullptr && info.dli_saddr == fn) {
      for (size_t i = 0; i < kForwarderCount && name == nullptr; ++i) {
        if (std::strcmp(kForwarders[i].name, info.dli_sname) == 0 &&
            std::strcmp(kForwarders[i].base, symbol) == 0)
          name = kForwarders[i].name;
      }
    }
  }
  if (name == nullptr && fn != nullptr) {
    // Neither: the form introduced last at or before `version` (cudaTypedefs.h) is the one the
    // driver serves for it.
    int best = 0;
    for (size_t i = 0; i < kForwarderCount; ++i) {
      const Forwarder& f = kForwarders[i];
      if (std::strcmp(f.base, symbol) != 0 || ((f.flags & kPtds) != 0) != ptds) continue;
      if (f.version != 0 && f.version <= version && f.version > best) {
        best = f.version;
        name = f.name;
      }
    }
  }
  if (name == nullptr) return fn;
  void* own = dlsym(self, name);
  // A trampoline only jumps to `fn`: hand out `fn` itself.
  const bool trampoline =
      static_cast<char*>(own) >= uhmm_fwd_text_begin && static_cast<char*>(own) < uhmm_fwd_text_end;
  return own == nullptr || trampoline ? fn : own;
}

}  // namespace

namespace uhmm::interpose {

void* RealEntry(const char* name) {
  // kForwarders is sorted by name (gen_forwarders.py).
  size_t lo = 0, hi = kForwarderCount;
  while (lo < hi) {
    const size_t mid = (lo + hi) / 2;
    const int c = std::strcmp(kForwarders[mid].name, name);
    if (c == 0) return uhmm_fwd_slots[mid];
    if (c < 0) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return reinterpret_cast<void*>(&uhmm_interpose_not_found);
}

}  // namespace uhmm::interpose
