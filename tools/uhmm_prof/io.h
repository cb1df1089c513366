// uhmm-prof's output files.
#ifndef UHMM_TOOLS_UHMM_PROF_IO_H_
#define UHMM_TOOLS_UHMM_PROF_IO_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace uhmm::prof {

// Writes `data` to `path`, replacing it. The error names the file and says why (a missing
// directory, no permission, a full disk).
absl::Status WriteFile(const std::string& path, std::string_view data);

}  // namespace uhmm::prof

#endif  // UHMM_TOOLS_UHMM_PROF_IO_H_
