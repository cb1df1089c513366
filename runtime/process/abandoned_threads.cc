#include "runtime/process/abandoned_threads.h"

#include <atomic>
#include <cstddef>
#include <new>

namespace uhmm {
namespace {

// Zero-initialised storage with no constructor or destructor to run: usable in a fork child, never
// torn down at exit. Enough for many runtimes' service and worker threads; beyond it, the rare
// overflow allocates.
constexpr size_t kSlots = 256;
alignas(std::thread) unsigned char g_slots[kSlots][sizeof(std::thread)];
std::atomic<size_t> g_used{0};

}  // namespace

void AbandonThreads(std::vector<std::thread>& threads) {
  for (std::thread& t : threads) {
    const size_t i = g_used.fetch_add(1, std::memory_order_relaxed);
    if (i < kSlots) {
      new (g_slots[i]) std::thread(std::move(t));
    } else {
      new std::thread(std::move(t));  // leaked on purpose, like the slots
    }
  }
  threads.clear();  // only moved-from, non-joinable objects are destroyed
}

}  // namespace uhmm
