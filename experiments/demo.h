// `muonlab demo`: a short real training job on Fashion-MNIST (Debian's dataset-fashion-mnist) that
// compares AdamW with Muon and prints a small result table.
#pragma once
#include <ostream>
#include <string>
#include <vector>

#include "experiments/cli_args.h"
#include "experiments/config.h"

namespace ml {

// The demo's run configs, one per optimizer compared (AdamW first). `quick` shortens the runs
// for smoke tests; `data_path` replaces the Fashion-MNIST folder when not empty.
std::vector<RunConfig> demo_configs(bool quick, const std::string& data_path = "");

// Trains each demo config into a folder under `runs_root` and prints the comparison to `out`
// (progress to `progress`). Returns the process exit code.
int run_demo(const DemoArgs& args, std::ostream& out, std::ostream& progress, const std::string& runs_root = "runs");

}  // namespace ml
