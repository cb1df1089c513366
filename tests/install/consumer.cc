// Built against the installed package only: allocate, migrate, fault back, check.
#include <cstdio>
#include <cstring>

#include "uhmm/uhmm.hpp"

int main() {
  uhmm::Config config;
  config.backend = "host";
  auto rt = uhmm::Runtime::Create(config);
  if (!rt.ok()) {
    std::fprintf(stderr, "%s\n", rt.status().ToString().c_str());
    return 1;
  }
  auto arr = uhmm::ManagedArray<int>::Create(**rt, 4096);
  if (!arr.ok()) return 2;
  for (size_t i = 0; i < arr->size(); ++i) (*arr)[i] = static_cast<int>(i);
  if (!arr->MigrateTo(0).ok()) return 3;
  for (size_t i = 0; i < arr->size(); ++i) {
    if ((*arr)[i] != static_cast<int>(i)) return 4;
  }
  std::printf("consumer: PASS (%llu pages faulted back)\n",
              static_cast<unsigned long long>((*rt)->stats().pages_to_host));
  return 0;
}
