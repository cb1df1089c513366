// PeerMatrix: which of a backend's GPUs reach which other's memory (peer access), asked of the
// driver once when the backend opens (cuDeviceCanAccessPeer, zeDeviceCanAccessPeer) and answered
// for Backend::PeerAccess and Device::CopiesFromPeers. Header-only; holds no backend types.
#ifndef UHMM_BACKENDS_COMMON_PEER_MATRIX_H_
#define UHMM_BACKENDS_COMMON_PEER_MATRIX_H_

#include <cstddef>
#include <vector>

namespace uhmm {

class PeerMatrix {
 public:
  PeerMatrix() = default;
  // For devices 0..n-1: can(i, j) asks the driver whether kernels on device i reach device j's
  // memory (never asked for i == j).
  template <typename Can>
  PeerMatrix(int n, Can can) : n_(n), reach_(static_cast<size_t>(n) * n, false) {
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < n; ++j) reach_[Index(i, j)] = i != j && can(i, j);
    }
  }

  // Whether kernels on `device` reach what `owner` maps (false for the same device or an ordinal
  // out of range).
  bool Reaches(int device, int owner) const {
    return device >= 0 && owner >= 0 && device < n_ && owner < n_ && reach_[Index(device, owner)];
  }
  // Whether `device` reaches another device's memory.
  bool ReachesAny(int device) const {
    for (int j = 0; j < n_; ++j) {
      if (Reaches(device, j)) return true;
    }
    return false;
  }

 private:
  size_t Index(int i, int j) const { return static_cast<size_t>(i) * n_ + j; }

  int n_ = 0;
  std::vector<bool> reach_;
};

}  // namespace uhmm

#endif  // UHMM_BACKENDS_COMMON_PEER_MATRIX_H_
