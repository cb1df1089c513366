// uhmm-prof's command line: `record` and `report`.
#ifndef UHMM_TOOLS_UHMM_PROF_CLI_H_
#define UHMM_TOOLS_UHMM_PROF_CLI_H_

#include <string_view>

namespace uhmm::prof {

// The text `uhmm-prof --help` prints.
std::string_view Usage();

// Runs uhmm-prof with argv (argv[0] is the program name); returns the exit status: for `record`,
// the traced program's (128+N when signal N killed it); 2 for a usage error, an unreadable trace or
// an unwritable output.
int Main(int argc, char** argv);

}  // namespace uhmm::prof

#endif  // UHMM_TOOLS_UHMM_PROF_CLI_H_
