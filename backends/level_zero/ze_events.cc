// See ze_events.h.
#include "backends/level_zero/ze_events.h"

namespace uhmm::level_zero {

thread_local bool ScopedUntraced::active_ = false;

EventCache::~EventCache() {
  ScopedUntraced untraced;
  for (ze_event_handle_t e : all_) l_->zeEventDestroy(e);
  for (ze_event_pool_handle_t p : pools_) l_->zeEventPoolDestroy(p);
}

absl::StatusOr<ze_event_handle_t> EventCache::Acquire() {
  std::lock_guard<std::mutex> lock(mu_);
  if (free_.empty()) {
    ScopedUntraced untraced;
    ze_event_pool_desc_t pool_desc = {ZE_STRUCTURE_TYPE_EVENT_POOL_DESC, nullptr,
                                      ZE_EVENT_POOL_FLAG_HOST_VISIBLE, kEventsPerPool};
    ze_event_pool_handle_t pool = nullptr;
    if (absl::Status s =
            ZeStatus(l_->zeEventPoolCreate(ctx_, &pool_desc, 0, nullptr, &pool), "zeEventPoolCreate");
        !s.ok()) {
      return s;
    }
    pools_.push_back(pool);
    for (uint32_t i = 0; i < kEventsPerPool; ++i) {
      ze_event_desc_t desc = {ZE_STRUCTURE_TYPE_EVENT_DESC, nullptr, i, ZE_EVENT_SCOPE_FLAG_HOST,
                              ZE_EVENT_SCOPE_FLAG_HOST};
      ze_event_handle_t e = nullptr;
      if (absl::Status s = ZeStatus(l_->zeEventCreate(pool, &desc, &e), "zeEventCreate"); !s.ok()) {
        return s;
      }
      all_.push_back(e);
      free_.push_back(e);
    }
  }
  ze_event_handle_t e = free_.back();
  free_.pop_back();
  return e;
}

void EventCache::Release(ze_event_handle_t event) {
  {
    ScopedUntraced untraced;
    l_->zeEventHostReset(event);
  }
  std::lock_guard<std::mutex> lock(mu_);
  free_.push_back(event);
}

}  // namespace uhmm::level_zero
