// `muonlab bench models`: the training-step time of the two benchmark models in
// ../shared/bench/SPEC.md (the nanoGPT CPU shape with AdamW, the small airbench CNN with Nesterov
// SGD), printed as one JSON object per line in the format of shared/bench/torch_reference.py so
// that the two can be put side by side.
#pragma once
#include <memory>
#include <ostream>
#include <vector>

#include "experiments/cli_args.h"
#include "framework/io/json.h"
#include "framework/tensor.h"
#include "models/model.h"
#include "optimizers/factory.h"

namespace ml {

// One benchmark model of SPEC.md with its optimizer and one batch, on `device`.
struct BenchmarkTask {
  Json shape;  // the fields of the benchmark's JSON line that say what ran ("bench", sizes, "batch")
  std::shared_ptr<Model> model;
  OptimizerSettings optimizer;
  Tensor inputs, targets;
  double label_smoothing = 0.0;
  const char* throughput_name;  // "tokens_per_s" or "images_per_s"
  int64_t items_per_step;       // tokens or images
};

// The nanoGPT CPU shape with AdamW and the small airbench CNN with Nesterov SGD, initialized and
// filled from `gen` in that order: the same generator state gives the same tasks on every device.
std::vector<BenchmarkTask> benchmark_tasks(Device device, Generator& gen);

// Returns the process exit code (0); throws std::runtime_error for a device this build or machine
// cannot use.
int run_bench_models(const BenchArgs& args, std::ostream& out);

}  // namespace ml
