// See cli.h.
#include "tools/uhmm_prof/cli.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "runtime/trace/trace_file.h"
#include "tools/uhmm_prof/analysis.h"
#include "tools/uhmm_prof/chrome.h"
#include "tools/uhmm_prof/plot.h"
#include "tools/uhmm_prof/report.h"

namespace uhmm::prof {

namespace {

constexpr std::string_view kUsage =
    R"(usage: uhmm-prof record [-o FILE] [--] PROGRAM [ARGS...]
       uhmm-prof report FILE [--chrome OUT.json] [--plot OUT.svg] [--top N]
       uhmm-prof --help

Profiles the CPU faults and migrations of a program that uses uhmm.

record   runs PROGRAM with UHMM_TRACE=FILE in its environment (FILE defaults to
         uhmm.trace in the current directory; %p in FILE stands for PROGRAM's process
         id), waits for it, and says what it traced. Exits with PROGRAM's exit status
         (128+N if signal N killed it).
           -o, --output FILE   where the trace goes

report   reads a trace and prints: what it holds (backend, duration, faults by kind,
         migrations by cause and direction, evictions, errors, dropped records); the
         latency of each fault phase (lookup, submit, copy, map, wake, end to end:
         count, p50, p90, p99, max and mean in microseconds, nearest-rank
         percentiles); a log2 histogram of end-to-end latency; the managed ranges
         that fault most; and migration throughput per direction and cause.
           --chrome OUT.json   also write the trace as Chrome trace-event JSON, for
                               ui.perfetto.dev or chrome://tracing
           --plot OUT.svg      also draw each phase's latency distribution (SVG)
           --top N             how many ranges to list (default 10; 0: none)

Exit status 2: a usage error, a trace that cannot be read, an output that cannot be
written.
)";

int UsageError(const std::string& what) {
  // The synopsis: the usage text up to its first blank line.
  const std::string_view synopsis = kUsage.substr(0, kUsage.find("\n\n") + 1);
  std::fprintf(stderr, "uhmm-prof: %s\n%s(uhmm-prof --help says more)\n", what.c_str(),
               std::string(synopsis).c_str());
  return 2;
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "uhmm-prof: %s\n", what.c_str());
  return 2;
}

bool IsHelp(std::string_view a) { return a == "-h" || a == "--help"; }

// Matches `--name VALUE` and `--name=VALUE` at args[*i] (advancing *i past VALUE). Sets *missing
// when VALUE is absent.
std::optional<std::string> OptionValue(const std::vector<std::string>& args, size_t* i, std::string_view name,
                                       bool* missing) {
  const std::string& a = args[*i];
  if (a == name) {
    if (*i + 1 >= args.size()) {
      *missing = true;
      return std::nullopt;
    }
    return args[++*i];
  }
  if (a.size() > name.size() && a.compare(0, name.size(), name) == 0 && a[name.size()] == '=') {
    return a.substr(name.size() + 1);
  }
  return std::nullopt;
}

bool SameFile(const std::string& a, const std::string& b) {
  struct stat sa, sb;
  return stat(a.c_str(), &sa) == 0 && stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

int Report(const std::vector<std::string>& args) {
  std::optional<std::string> path, chrome, plot;
  size_t top = 10;
  bool options_done = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (!options_done && a == "--") {
      options_done = true;
      continue;
    }
    if (!options_done && a.size() > 1 && a[0] == '-') {
      if (IsHelp(a)) {
        std::fputs(std::string(kUsage).c_str(), stdout);
        return 0;
      }
      bool missing = false;
      if (auto v = OptionValue(args, &i, "--chrome", &missing)) {
        chrome = *v;
      } else if (auto v = OptionValue(args, &i, "--plot", &missing)) {
        plot = *v;
      } else if (auto v = OptionValue(args, &i, "--top", &missing)) {
        if (!absl::SimpleAtoi(*v, &top)) {
          return UsageError(absl::StrFormat("--top wants a number of ranges, not '%s'", *v));
        }
      } else if (missing) {
        return UsageError(absl::StrFormat("%s needs a value", a));
      } else {
        return UsageError(absl::StrFormat("unknown report option '%s'", a));
      }
      if (missing) return UsageError(absl::StrFormat("%s needs a value", a));
      continue;
    }
    if (path) return UsageError(absl::StrFormat("report reads one trace file, not '%s' too", a));
    path = a;
  }
  if (!path) return UsageError("report needs a trace file");
  if (chrome && chrome->empty()) return UsageError("--chrome needs a file name");
  if (plot && !IsSvgPath(*plot)) {
    return Fail(absl::StrFormat("--plot writes SVG only: '%s' does not end in .svg", *plot));
  }
  for (const std::optional<std::string>* out : {&chrome, &plot}) {
    if (*out && SameFile(**out, *path)) {
      return Fail(absl::StrFormat("refusing to overwrite the trace file %s with an output", *path));
    }
  }

  absl::StatusOr<trace::Trace> t = trace::ReadTrace(*path);
  if (!t.ok()) return Fail(std::string(t.status().message()));
  const Analysis a = Analyze(*t);
  size_t events = 0;
  if (chrome) {
    if (absl::Status s = WriteChromeTrace(*t, *chrome, &events); !s.ok())
      return Fail(std::string(s.message()));
  }
  if (plot) {
    if (absl::Status s = WriteLatencySvg(a, *plot); !s.ok()) return Fail(std::string(s.message()));
  }
  std::fputs(FormatReport(a, *path, top).c_str(), stdout);
  if (chrome || plot) std::fputs("\n", stdout);
  if (chrome) {
    std::printf(
        "Chrome trace (%zu events) written to %s: open it in https://ui.perfetto.dev or "
        "chrome://tracing\n",
        events, chrome->c_str());
  }
  if (plot) std::printf("latency plot written to %s\n", plot->c_str());
  return std::fflush(stdout) == 0 ? 0 : 1;
}

// Whether the trace file can be created at `path` (it, or its directory, is writable).
absl::Status CheckWritable(const std::string& path) {
  std::string where = path;
  if (access(path.c_str(), F_OK) != 0) {
    const size_t slash = path.rfind('/');
    where = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  }
  if (access(where.c_str(), W_OK) != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("cannot write the trace to %s: %s", path, strerror(errno)));
  }
  return absl::OkStatus();
}

struct FileId {
  bool exists = false;
  struct stat st = {};
};
FileId Identify(const std::string& path) {
  FileId id;
  id.exists = stat(path.c_str(), &id.st) == 0;
  return id;
}
bool Changed(const FileId& before, const FileId& after) {
  if (!after.exists) return false;
  if (!before.exists) return true;
  const struct stat &a = before.st, &b = after.st;
  return a.st_dev != b.st_dev || a.st_ino != b.st_ino || a.st_size != b.st_size ||
         a.st_mtim.tv_sec != b.st_mtim.tv_sec || a.st_mtim.tv_nsec != b.st_mtim.tv_nsec ||
         a.st_ctim.tv_sec != b.st_ctim.tv_sec || a.st_ctim.tv_nsec != b.st_ctim.tv_nsec;
}

int Record(const std::vector<std::string>& args) {
  std::string out = "uhmm.trace";
  size_t i = 0;
  for (; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      ++i;
      break;
    }
    if (a.size() < 2 || a[0] != '-') break;  // PROGRAM
    if (IsHelp(a)) {
      std::fputs(std::string(kUsage).c_str(), stdout);
      return 0;
    }
    bool missing = false;
    if (auto v = OptionValue(args, &i, "--output", &missing)) {
      out = *v;
    } else if (auto v2 = OptionValue(args, &i, "-o", &missing)) {
      out = *v2;
    } else if (!missing && a.compare(0, 2, "-o") == 0) {
      out = a.substr(2);
    } else if (missing) {
      return UsageError(absl::StrFormat("%s needs a file name", a));
    } else {
      return UsageError(absl::StrFormat("unknown record option '%s'", a));
    }
    if (missing) return UsageError(absl::StrFormat("%s needs a file name", a));
  }
  if (out.empty()) return UsageError("the trace file name is empty");
  if (i >= args.size()) return UsageError("record needs a program to run");
  const std::vector<std::string> program(args.begin() + static_cast<ptrdiff_t>(i), args.end());
  const bool per_pid = out.find("%p") != std::string::npos;
  if (absl::Status s = CheckWritable(out); !s.ok()) return Fail(std::string(s.message()));

  // The program may change directory before it creates its runtime: give it an absolute path.
  std::string env_path = out;
  if (out[0] != '/') {
    char cwd[4096];
    if (getcwd(cwd, sizeof(cwd)) != nullptr) env_path = absl::StrCat(cwd, "/", out);
  }
  if (setenv("UHMM_TRACE", env_path.c_str(), 1) != 0) {
    return Fail(absl::StrFormat("cannot set UHMM_TRACE: %s", strerror(errno)));
  }
  const FileId before = per_pid ? FileId{} : Identify(out);

  // Ctrl-C reaches the program (same process group); uhmm-prof waits for it and reports what it
  // wrote before it died.
  struct sigaction ignore = {}, old_int = {}, old_quit = {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  sigaction(SIGINT, &ignore, &old_int);
  sigaction(SIGQUIT, &ignore, &old_quit);
  const auto restore = [&] {
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGQUIT, &old_quit, nullptr);
  };

  int exec_pipe[2];
  if (pipe2(exec_pipe, O_CLOEXEC) != 0) {
    restore();
    return Fail(absl::StrFormat("pipe: %s", strerror(errno)));
  }
  std::vector<char*> argv;
  for (const std::string& a : program) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) {
    const int err = errno;
    restore();
    close(exec_pipe[0]);
    close(exec_pipe[1]);
    return Fail(absl::StrFormat("cannot fork: %s", strerror(err)));
  }
  if (pid == 0) {
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGQUIT, &old_quit, nullptr);
    close(exec_pipe[0]);
    execvp(argv[0], argv.data());
    const int err = errno;
    (void)!write(exec_pipe[1], &err, sizeof(err));
    _exit(127);
  }
  close(exec_pipe[1]);
  int exec_errno = 0;
  ssize_t got;
  do {
    got = read(exec_pipe[0], &exec_errno, sizeof(exec_errno));
  } while (got < 0 && errno == EINTR);
  close(exec_pipe[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  restore();
  if (got == static_cast<ssize_t>(sizeof(exec_errno))) {
    std::fprintf(stderr, "uhmm-prof: cannot run %s: %s\n", program[0].c_str(), strerror(exec_errno));
    return exec_errno == ENOENT ? 127 : 126;
  }

  int code = 0;
  if (WIFEXITED(status)) {
    code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    code = 128 + sig;
    std::fprintf(stderr, "uhmm-prof: %s was killed by signal %d (%s)\n", program[0].c_str(), sig,
                 strsignal(sig));
  }

  const std::string path = per_pid ? absl::StrReplaceAll(out, {{"%p", absl::StrCat(pid)}}) : out;
  if (!Changed(before, Identify(path))) {
    std::fprintf(stderr,
                 "uhmm-prof: %s wrote no trace to %s (did it create a uhmm runtime? The runtime starts "
                 "tracing when it is created with UHMM_TRACE set)\n",
                 program[0].c_str(), path.c_str());
    return code;
  }
  absl::StatusOr<trace::Trace> t = trace::ReadTrace(path);
  if (!t.ok()) {
    std::fprintf(stderr, "uhmm-prof: %s\n", std::string(t.status().message()).c_str());
    return code;
  }
  size_t faults = 0;
  for (const trace::TraceRecord& r : t->records) faults += r.type == trace::RecordType::kFault;
  std::string note;
  if (!t->complete) note += "; incomplete: no end record, the program did not stop tracing";
  if (t->dropped > 0) note += absl::StrFormat("; %d records dropped", t->dropped);
  std::fprintf(stderr,
               "uhmm-prof: trace written to %s (%zu records, %zu faults%s); see uhmm-prof report %s\n",
               path.c_str(), t->records.size(), faults, note.c_str(), path.c_str());
  return code;
}

}  // namespace

std::string_view Usage() { return kUsage; }

int Main(int argc, char** argv) {
  std::vector<std::string> args(argv + (argc > 0 ? 1 : 0), argv + argc);
  if (args.empty()) return UsageError("a command is needed: record or report");
  const std::string cmd = args[0];
  args.erase(args.begin());
  if (IsHelp(cmd) || cmd == "help") {
    std::fputs(std::string(kUsage).c_str(), stdout);
    return 0;
  }
  if (cmd == "record") return Record(args);
  if (cmd == "report") return Report(args);
  return UsageError(absl::StrFormat("unknown command '%s'", cmd));
}

}  // namespace uhmm::prof
