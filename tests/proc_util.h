// What /proc says about the test process: its open file descriptors (and what they are), threads
// and resident memory. For the hardening and soak tests, which check that uhmm leaks none of them
// into children or over time.
#ifndef UHMM_TESTS_PROC_UTIL_H_
#define UHMM_TESTS_PROC_UTIL_H_

#include <dirent.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>

namespace uhmm::testing {

// fd -> link target ("/memfd:uhmm-range (deleted)", "anon_inode:[userfaultfd]", "pipe:[123]", a
// path) for every open fd of this process, without the one used to list them.
inline std::map<int, std::string> OpenFds() {
  std::map<int, std::string> fds;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return fds;
  const int own = dirfd(dir);
  while (const dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    const int fd = std::atoi(e->d_name);
    if (fd == own) continue;
    char target[512];
    const std::string link = std::string("/proc/self/fd/") + e->d_name;
    const ssize_t n = readlink(link.c_str(), target, sizeof(target) - 1);
    fds[fd] = n < 0 ? std::string("?") : std::string(target, static_cast<size_t>(n));
  }
  closedir(dir);
  return fds;
}

// The kinds of descriptor uhmm opens: a range's memfd and the fault service's userfaultfd.
inline bool IsMemfd(std::string_view target) { return target.starts_with("/memfd:"); }
inline bool IsUserfaultfd(std::string_view target) { return target == "anon_inode:[userfaultfd]"; }

inline size_t CountMemfds() {
  size_t n = 0;
  for (const auto& [fd, target] : OpenFds()) n += IsMemfd(target);
  return n;
}

// Entries of a /proc directory (threads: /proc/self/task).
inline size_t CountDirEntries(const char* path) {
  DIR* dir = opendir(path);
  if (dir == nullptr) return 0;
  size_t n = 0;
  while (const dirent* e = readdir(dir)) n += e->d_name[0] != '.';
  closedir(dir);
  return n;
}

inline size_t CountThreads() { return CountDirEntries("/proc/self/task"); }

// Resident set size in bytes (/proc/self/statm).
inline size_t RssBytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "re");
  if (f == nullptr) return 0;
  unsigned long size = 0, resident = 0;
  if (std::fscanf(f, "%lu %lu", &size, &resident) != 2) resident = 0;
  std::fclose(f);
  return resident * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

}  // namespace uhmm::testing

#endif  // UHMM_TESTS_PROC_UTIL_H_
