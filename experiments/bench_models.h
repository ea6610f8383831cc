// `muonlab bench models`: the training-step time of the two benchmark models in
// ../shared/bench/SPEC.md (the nanoGPT CPU shape with AdamW, the small airbench CNN with Nesterov
// SGD), printed as one JSON object per line in the format of shared/bench/torch_reference.py so
// that the two can be put side by side.
#pragma once
#include <ostream>

#include "experiments/cli_args.h"

namespace ml {

// Returns the process exit code (0); throws std::runtime_error for a device this build or machine
// cannot use.
int run_bench_models(const BenchArgs& args, std::ostream& out);

}  // namespace ml
