// The machine a run ran on, recorded with its results: the sessions that run a study here land on
// different virtual machines (different processors, caches and loads), so wall-clock numbers are
// only comparable between runs that name the same host.
#pragma once
#include <string>

namespace ml {

// The processor as /proc/cpuinfo names it, the machine's number of logical CPUs and the kernels
// OpenBLAS runs, e.g. "Intel(R) Xeon(R) Processor, 2 logical CPUs, OpenBLAS SkylakeX kernels"
// ("unknown processor" where cpuinfo has no name).
std::string host_description();

}  // namespace ml
