// uhmm-prof: records and reports uhmm traces (fault latency per phase, migrations). See cli.h.
#include "tools/uhmm_prof/cli.h"

int main(int argc, char** argv) { return uhmm::prof::Main(argc, argv); }
