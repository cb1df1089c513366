// SpinThenBlock: how every backend waits for a copy. A fault-sized copy is done in microseconds (a
// synchronous pinned D2H copy took 7.7 us at 4 KiB and 8.7 us at 64 KiB on an H100), sooner than a
// blocking wait wakes up (an isolated 4 KiB fault took 21 us p50 busy-polling, 32 us sleeping in
// poll()), so poll for a while first, then block. Header-only; holds no backend types.
#ifndef UHMM_BACKENDS_COMMON_SPIN_WAIT_H_
#define UHMM_BACKENDS_COMMON_SPIN_WAIT_H_

#include <chrono>

namespace uhmm {

// How long a copy wait busy-polls before it blocks.
inline constexpr std::chrono::microseconds kCopySpin{200};

// Calls poll() until done(result) or `spin` passes; then, if still not done, returns block().
// `poll` and `block` return the same type (a driver status, say).
template <typename Poll, typename Done, typename Block>
auto SpinThenBlock(Poll poll, Done done, Block block, std::chrono::microseconds spin = kCopySpin) {
  const auto deadline = std::chrono::steady_clock::now() + spin;
  auto r = poll();
  while (!done(r) && std::chrono::steady_clock::now() < deadline) {
    __builtin_ia32_pause();
    r = poll();
  }
  return done(r) ? r : block();
}

}  // namespace uhmm

#endif  // UHMM_BACKENDS_COMMON_SPIN_WAIT_H_
