// What uhmm's file descriptors let others see: every fd it opens is close-on-exec (an exec'd child
// inherits no userfaultfd, memfd or trace file), a range's memfd is mode 0600, and trace files are
// created 0600.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <sstream>
#include <string>

#include "tests/proc_util.h"
#include "tests/test_util.h"

namespace uhmm::testing {
namespace {

// A temporary file name for this test process; removed by the destructor.
class TempPath {
 public:
  explicit TempPath(std::string_view what)
      : path_(::testing::TempDir() + "uhmm_" + std::string(what) + "_" + std::to_string(getpid())) {
    std::remove(path_.c_str());
  }
  ~TempPath() { std::remove(path_.c_str()); }
  const std::string& str() const { return path_; }

 private:
  std::string path_;
};

// The fds a freshly exec'd program has when this process forks and execs it: fd -> link target,
// as `ls -l /proc/self/fd/` in the child reports them (without ls's own directory fd and the
// stdout pipe it reports through).
std::map<int, std::string> FdsOfExecedChild() {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return {{-1, "pipe2 failed"}};
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], STDOUT_FILENO);  // dup2 clears close-on-exec on the copy
    execl("/bin/ls", "ls", "-l", "/proc/self/fd/", static_cast<char*>(nullptr));
    _exit(127);
  }
  close(out[1]);
  const std::string listing = ReadAllAndClose(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return {{-1, "ls failed: " + listing}};
  std::map<int, std::string> fds;
  std::istringstream lines(listing);
  for (std::string line; std::getline(lines, line);) {
    const size_t arrow = line.find(" -> ");
    if (arrow == std::string::npos) continue;
    const size_t name = line.rfind(' ', arrow - 1);
    const int fd = std::stoi(line.substr(name + 1, arrow - name - 1));
    std::string target = line.substr(arrow + 4);
    if (target.starts_with("/proc/")) continue;  // ls reading the directory
    if (fd != STDOUT_FILENO) fds[fd] = target;   // stdout: the pipe made for this listing
  }
  return fds;
}

std::string Describe(const std::map<int, std::string>& fds) {
  std::string s;
  for (const auto& [fd, target] : fds) s += std::to_string(fd) + " -> " + target + "\n";
  return s;
}

// A runtime at work: ranges on the host and on the device (one partly faulted back), the fault and
// migration threads started, and a trace being written to `trace`.
void StartBusyRuntime(Harness& h, const std::string& trace, std::vector<uint64_t*>* ranges) {
  h.Start();
  UHMM_RETURN_IF_SKIPPED();
  for (int i = 0; i < 3; ++i) ranges->push_back(h.AllocFilled(4 * kMiB, 700 + i));
  ASSERT_TRUE(h.rt_->StartTrace(trace).ok());
  ASSERT_TRUE(h.rt_->Migrate((*ranges)[1], 4 * kMiB, 0).ok());
  ASSERT_TRUE(h.rt_->Migrate((*ranges)[2], 4 * kMiB, 0).ok());
  ASSERT_EQ(Harness::FirstMismatch((*ranges)[2], kMiB, 702), -1);  // CPU faults
}

TEST(FdHardeningTest, ExecedChildInheritsNoUffdMemfdOrTraceFile) {
  const std::map<int, std::string> before = FdsOfExecedChild();
  ASSERT_FALSE(before.contains(-1)) << before.at(-1);
  TempPath trace("exec_trace");
  Harness h;
  std::vector<uint64_t*> ranges;
  StartBusyRuntime(h, trace.str(), &ranges);
  UHMM_RETURN_IF_SKIPPED();
  const std::map<int, std::string> after = FdsOfExecedChild();
  for (const auto& [fd, target] : after) {
    EXPECT_FALSE(IsMemfd(target)) << "fd " << fd << " -> " << target;
    EXPECT_FALSE(IsUserfaultfd(target)) << "fd " << fd << " -> " << target;
    EXPECT_EQ(target.find(trace.str()), std::string::npos) << "fd " << fd << " -> " << target;
  }
  // Nothing else either: the child has exactly the fds a child exec'd before uhmm started had.
  EXPECT_EQ(Describe(after), Describe(before));
  EXPECT_TRUE(h.rt_->StopTrace().ok());
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(Harness::FirstMismatch(ranges[i], 4 * kMiB, 700 + i), -1) << "range " << i;
    EXPECT_TRUE(h.rt_->Free(ranges[i]).ok());
  }
}

TEST(FdHardeningTest, EveryFdTheRuntimeOpensIsCloseOnExec) {
  const std::map<int, std::string> before = OpenFds();
  TempPath trace("cloexec_trace");
  Harness h;
  std::vector<uint64_t*> ranges;
  StartBusyRuntime(h, trace.str(), &ranges);
  UHMM_RETURN_IF_SKIPPED();
  size_t opened = 0;
  for (const auto& [fd, target] : OpenFds()) {
    if (before.contains(fd)) continue;
    ++opened;
    const int flags = fcntl(fd, F_GETFD);
    EXPECT_TRUE(flags >= 0 && (flags & FD_CLOEXEC) != 0) << "fd " << fd << " -> " << target;
  }
  EXPECT_GE(opened, 5u) << "3 memfds, the userfaultfd, the trace file at least";
  EXPECT_TRUE(h.rt_->StopTrace().ok());
  for (uint64_t* r : ranges) EXPECT_TRUE(h.rt_->Free(r).ok());
}

TEST(FdHardeningTest, ManagedRangeMemfdIsReadableByItsOwnerOnly) {
  Harness h;
  h.Start();
  UHMM_RETURN_IF_SKIPPED();
  uint64_t* a = h.AllocFilled(kMiB, 710);
  uint64_t* b = h.AllocFilled(3 * kPageSize, 711);
  ASSERT_TRUE(h.rt_->Migrate(b, 3 * kPageSize, 0).ok());
  size_t memfds = 0;
  for (const auto& [fd, target] : OpenFds()) {
    if (!IsMemfd(target)) continue;
    ++memfds;
    struct stat st = {};
    ASSERT_EQ(fstat(fd, &st), 0) << target;
    EXPECT_EQ(st.st_mode & 07777, 0600u)
        << "fd " << fd << " -> " << target << " has mode " << std::oct << (st.st_mode & 07777);
  }
  EXPECT_EQ(memfds, 2u);
  EXPECT_EQ(Harness::FirstMismatch(b, 3 * kPageSize, 711), -1);
  EXPECT_TRUE(h.rt_->Free(a).ok());
  EXPECT_TRUE(h.rt_->Free(b).ok());
}

TEST(FdHardeningTest, TraceFileIsCreatedReadableByItsOwnerOnly) {
  Harness h;
  h.Start();
  UHMM_RETURN_IF_SKIPPED();
  TempPath trace("mode_trace");
  const mode_t old_umask = umask(0);  // the mode must not depend on the umask being strict
  const absl::Status started = h.rt_->StartTrace(trace.str());
  umask(old_umask);
  ASSERT_TRUE(started.ok()) << started;
  struct stat st = {};
  ASSERT_EQ(stat(trace.str().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u) << trace.str() << " has mode " << std::oct << (st.st_mode & 07777);
  EXPECT_TRUE(h.rt_->StopTrace().ok());
}

}  // namespace
}  // namespace uhmm::testing
