// Host-visible events for the Level Zero backend's fences: a cache that hands out reset events
// from pools it grows on demand, and the marker for calls the backend makes itself (the launch
// tracer ignores those).
#ifndef UHMM_BACKENDS_LEVEL_ZERO_ZE_EVENTS_H_
#define UHMM_BACKENDS_LEVEL_ZERO_ZE_EVENTS_H_

#include <mutex>
#include <vector>

#include "absl/status/statusor.h"
#include "backends/level_zero/ze_loader.h"

namespace uhmm::level_zero {

// While one is alive on a thread, the launch tracer's callbacks ignore that thread's calls: the
// backend's own event resets and list creations are not the application's.
class ScopedUntraced {
 public:
  ScopedUntraced() : prev_(active_) { active_ = true; }
  ~ScopedUntraced() { active_ = prev_; }
  ScopedUntraced(const ScopedUntraced&) = delete;
  ScopedUntraced& operator=(const ScopedUntraced&) = delete;
  static bool active() { return active_; }

 private:
  static thread_local bool active_;
  bool prev_;
};

class EventCache {
 public:
  EventCache(const Loader* l, ze_context_handle_t ctx) : l_(l), ctx_(ctx) {}
  ~EventCache();
  EventCache(const EventCache&) = delete;
  EventCache& operator=(const EventCache&) = delete;

  // An unsignalled host-visible event.
  absl::StatusOr<ze_event_handle_t> Acquire();
  // Resets `event` and makes it available again.
  void Release(ze_event_handle_t event);

 private:
  static constexpr uint32_t kEventsPerPool = 64;
  const Loader* const l_;
  const ze_context_handle_t ctx_;
  std::mutex mu_;
  std::vector<ze_event_pool_handle_t> pools_;
  std::vector<ze_event_handle_t> all_, free_;
};

}  // namespace uhmm::level_zero

#endif  // UHMM_BACKENDS_LEVEL_ZERO_ZE_EVENTS_H_
