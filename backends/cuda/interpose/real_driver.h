// The real driver's entry points, by the name it exports: what the interposer's replacements call
// when an address is not uhmm's, and for the driver work they do themselves. Each name's slot
// (forwarders.h) holds the real driver's function, or a stub returning CUDA_ERROR_NOT_FOUND (or
// CUDA_ERROR_NO_DEVICE without a driver).
#ifndef UHMM_BACKENDS_CUDA_INTERPOSE_REAL_DRIVER_H_
#define UHMM_BACKENDS_CUDA_INTERPOSE_REAL_DRIVER_H_

namespace uhmm::interpose {

// The slot of the exported name `name`; the not-found stub for a name the table does not have.
void* RealEntry(const char* name);

template <typename Fn>
Fn Real(const char* name) {
  return reinterpret_cast<Fn>(RealEntry(name));
}

}  // namespace uhmm::interpose

// The real driver's `name`, typed as cuda.h declares it (the translation unit defines
// __CUDA_API_VERSION_INTERNAL, so every exported form is declared). Looked up once per call site.
#define UHMM_REAL(name)                                                                 \
  ([] {                                                                                 \
    static const auto uhmm_real_fn = ::uhmm::interpose::Real<decltype(&::name)>(#name); \
    return uhmm_real_fn;                                                                \
  }())

#endif  // UHMM_BACKENDS_CUDA_INTERPOSE_REAL_DRIVER_H_
