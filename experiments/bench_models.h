// `muonlab bench models` and `muonlab bench ops`: step times of the benchmark models in
// ../shared/bench/SPEC.md and of the ops they spend their time in, printed as one JSON object per
// line (the format of shared/bench/torch_reference.py, so the two can be put side by side).
#pragma once
#include <ostream>

#include "experiments/cli_args.h"

namespace ml {

// Both throw std::runtime_error for a device this build cannot use.
void bench_models(const BenchArgs& args, std::ostream& out);
void bench_ops(const BenchArgs& args, std::ostream& out);

}  // namespace ml
