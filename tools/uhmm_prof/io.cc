// See io.h.
#include "tools/uhmm_prof/io.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_format.h"

namespace uhmm::prof {

absl::Status WriteFile(const std::string& path, std::string_view data) {
  std::FILE* f = std::fopen(path.c_str(), "wbe");
  if (f == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("cannot write %s: %s", path, strerror(errno)));
  }
  const bool written = data.empty() || std::fwrite(data.data(), data.size(), 1, f) == 1;
  const int write_errno = errno;
  if (std::fclose(f) != 0 || !written) {
    return absl::InvalidArgumentError(
        absl::StrFormat("cannot write %s: %s", path, strerror(written ? errno : write_errno)));
  }
  return absl::OkStatus();
}

}  // namespace uhmm::prof
