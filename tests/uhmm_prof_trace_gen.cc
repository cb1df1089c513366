// Writes the files the uhmm-prof CLI tests read: uhmm_prof_trace_gen KIND [FILE].
//   full        the synthetic trace (tests/uhmm_prof_synthetic.h)
//   nofaults    the same without faults
//   incomplete  the synthetic trace without its end record
//   dropped     the synthetic trace, its end record saying 7 records were dropped
//   empty       an empty file
//   foreign     a text file
//   truncated-header, truncated-record: the synthetic trace cut inside the header / a record
// Without FILE it writes to $UHMM_TRACE ("%p" standing for its process id), like a program that
// uhmm-prof record runs.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

#include "tests/uhmm_prof_synthetic.h"

namespace {

int Usage() {
  std::fprintf(stderr,
               "usage: uhmm_prof_trace_gen full|nofaults|incomplete|dropped|empty|foreign|"
               "truncated-header|truncated-record [FILE]\n");
  return 2;
}

bool Cut(const std::string& path, size_t keep) {
  std::ifstream in(path, std::ios::binary);
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  if (data.size() < keep) return false;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(keep));
  return static_cast<bool>(out);
}

}  // namespace

int main(int argc, char** argv) {
  namespace syn = uhmm::prof::synthetic;
  if (argc < 2 || argc > 3) return Usage();
  const std::string kind = argv[1];
  std::string path;
  if (argc == 3) {
    path = argv[2];
  } else {
    const char* env = std::getenv("UHMM_TRACE");
    if (env == nullptr) {
      std::fprintf(stderr, "uhmm_prof_trace_gen: no FILE and no UHMM_TRACE\n");
      return 2;
    }
    path = env;
    if (size_t p = path.find("%p"); p != std::string::npos) path.replace(p, 2, std::to_string(getpid()));
  }
  absl::Status s;
  if (kind == "full") {
    s = syn::Write(path, syn::AllRecords());
  } else if (kind == "nofaults") {
    s = syn::Write(path, syn::AllRecords(false));
  } else if (kind == "incomplete") {
    s = syn::Write(path, syn::AllRecords(), false);
  } else if (kind == "dropped") {
    s = syn::Write(path, syn::AllRecords(), true, 7);
  } else if (kind == "empty" || kind == "foreign") {
    std::ofstream out(path, std::ios::trunc);
    if (kind == "foreign")
      out << "# not a trace\nthis is a text file that happens to be long enough to hold a header\n";
    if (!out) s = absl::InternalError("cannot write " + path);
  } else if (kind == "truncated-header" || kind == "truncated-record") {
    s = syn::Write(path, syn::AllRecords());
    const size_t keep = kind == "truncated-header"
                            ? 30
                            : sizeof(uhmm::trace::TraceHeader) + 5 * sizeof(uhmm::trace::TraceRecord) + 40;
    if (s.ok() && !Cut(path, keep)) s = absl::InternalError("cannot cut " + path);
  } else {
    return Usage();
  }
  if (!s.ok()) {
    std::fprintf(stderr, "uhmm_prof_trace_gen: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
