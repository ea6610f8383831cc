#include "experiments/demo.h"

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "experiments/run_dir.h"
#include "experiments/trainer.h"
#include "optimizers/factory.h"

namespace ml {
namespace {

// An MLP on Fashion-MNIST: a CNN would be more accurate but several times slower on two cores,
// and the point here is the optimizer comparison on a run that finishes in a minute or two.
// One thread: the matrices are small, and on a busy machine a second OpenMP thread that is not
// scheduled stalls every parallel region (measured: 30 s single-threaded, 4m40s with two threads
// at load 9 on two cores).
constexpr const char* kDemoYaml = R"(
seed: 0
threads: 1
data:
  kind: fashion_mnist
  batch_size: 128
model:
  kind: mlp
  hidden: [256, 256]
  activation: relu
optimizer:
  kind: adamw
  lr: 1.0e-3
schedule:
  warmup_steps: 20
  decay: linear
train:
  epochs: 1
  log_every: 50
)";

struct DemoOptimizer {
  std::string name;
  std::vector<std::string> overrides;
};

const std::vector<DemoOptimizer>& demo_optimizers() {
  static const std::vector<DemoOptimizer> optimizers{
      {"adamw", {"optimizer={kind: adamw, lr: 1.0e-3, betas: [0.9, 0.999], weight_decay: 0.0}"}},
      {"muon",
       {"optimizer={kind: muon, lr: 0.02, momentum: 0.95, non_matrix: {kind: adamw, lr: 1.0e-3, betas: [0.9, 0.999]}}"}},
  };
  return optimizers;
}

std::string cell(const Json& value, const char* format) {
  if (!value.is_number()) return "-";
  char text[32];
  std::snprintf(text, sizeof text, format, value.get<double>());
  return text;
}

}  // namespace

std::vector<RunConfig> demo_configs(bool quick, const std::string& data_path) {
  std::vector<RunConfig> configs;
  for (const DemoOptimizer& optimizer : demo_optimizers()) {
    std::vector<std::string> overrides = optimizer.overrides;
    overrides.push_back("name=demo_fashion_mnist_" + optimizer.name);
    if (quick) {
      overrides.push_back("data.limit_train=6000");
      overrides.push_back("data.limit_val=2000");
    }
    if (!data_path.empty()) overrides.push_back("data.path=\"" + data_path + "\"");
    configs.push_back(parse_config(kDemoYaml, "the demo config (experiments/demo.cpp)", overrides));
  }
  return configs;
}

int run_demo(const DemoArgs& args, std::ostream& out, std::ostream& progress, const std::string& runs_root) {
  std::vector<RunConfig> configs = demo_configs(args.quick);
  const std::string data_path = configs.front().data.path;
  if (!std::filesystem::exists(data_path)) {
    out << "muonlab demo: Fashion-MNIST is not installed at " << data_path
        << " (Debian package dataset-fashion-mnist; scripts/setup-deps.sh installs it)\n";
    return 1;
  }
  const std::string root = new_run_dir(runs_root, "demo");
  out << "muonlab demo: " << (args.quick ? "quick " : "") << "Fashion-MNIST, MLP, " << configs.size()
      << " optimizer(s); runs in " << root << "\n"
      << std::flush;
  std::vector<std::pair<std::string, Json>> results;
  for (const RunConfig& config : configs) {
    TrainOptions options;
    options.out_dir = root + "/" + kind_of(config.optimizer);
    options.progress = &progress;
    results.emplace_back(kind_of(config.optimizer), train(config, options).summary);
  }

  out << "\n" << "optimizer   val_acc   val_loss   wall_s   optimizer_s\n";
  for (const auto& [name, summary] : results) {
    char line[160];
    std::snprintf(line, sizeof line, "%-10s  %7s   %8s   %6s   %11s\n", name.c_str(),
                  cell(summary.at("val_acc"), "%.4f").c_str(), cell(summary.at("val_loss"), "%.4f").c_str(),
                  cell(summary.at("total_s"), "%.1f").c_str(), cell(summary.at("optimizer_s"), "%.2f").c_str());
    out << line;
  }
  out << "(wall_s includes evaluation; optimizer_s is the time inside optimizer.step())\n";
  return 0;
}

}  // namespace ml
