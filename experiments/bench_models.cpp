#include "experiments/bench_models.h"

#include <cmath>
#include <functional>
#include <stdexcept>
#include <vector>

#include "experiments/bench_ops.h"
#include "experiments/trainer.h"
#include "framework/backend.h"
#include "framework/backends/cpu/blas_kernels.h"
#include "framework/backends/cpu/cpu_capability.h"
#include "framework/backends/cpu/cpu_gemm.h"
#include "framework/io/json.h"
#include "framework/ops.h"
#include "framework/parallel.h"
#include "models/cnn.h"
#include "models/gpt.h"
#include "optimizers/factory.h"

namespace ml {
namespace {

Device bench_device(const BenchArgs& args) {
  const Device device = Device::parse(args.device);
  if (device.is_cuda() && !cuda_available())
    throw std::runtime_error("bench models --device " + args.device +
                             ": no usable CUDA device (built without CUDA, or no GPU or driver)");
  return device;
}

double rounded(double value, int digits) {
  const double scale = std::pow(10.0, digits);
  return std::round(value * scale) / scale;
}

// Random Int64 values in [0, high).
Tensor random_ids(const Shape& shape, int64_t high, Generator& gen, Device device) {
  return rand(shape, 0.0, static_cast<double>(high), DType::Float32, cpu(), gen).to(DType::Int64).to(device);
}

std::function<void()> train_step(Model& model, Optimizer& optimizer, const Tensor& inputs, const Tensor& targets,
                                 double label_smoothing) {
  return [&model, &optimizer, inputs, targets, label_smoothing] {
    const Tensor loss = cross_entropy(model.forward(inputs), targets, -100, label_smoothing);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
  };
}

}  // namespace

std::vector<BenchmarkTask> benchmark_tasks(Device device, Generator& gen) {
  std::vector<BenchmarkTask> tasks;
  {
    GptOptions options = with_defaults(GptOptions::settings());
    options.vocab_size = 65;
    options.block_size = 64;
    options.n_layer = 4;
    options.n_head = 4;
    options.n_embd = 128;
    const int64_t batch = 12;
    BenchmarkTask task;
    task.shape = Json::object({{"bench", "gpt_nanogpt_cpu"},
                               {"vocab", options.vocab_size},
                               {"block", options.block_size},
                               {"layers", options.n_layer},
                               {"heads", options.n_head},
                               {"d", options.n_embd},
                               {"batch", batch}});
    task.model = std::make_shared<Gpt>(options, gen);
    task.model->to(device);
    AdamWSettings settings = with_defaults(AdamWSettings::settings());
    settings.lr = 1e-3;
    task.optimizer = settings;
    task.inputs = random_ids({batch, options.block_size}, options.vocab_size, gen, device);
    task.targets = random_ids({batch, options.block_size}, options.vocab_size, gen, device);
    task.throughput_name = "tokens_per_s";
    task.items_per_step = batch * options.block_size;
    tasks.push_back(std::move(task));
  }
  {
    CnnOptions options = with_defaults(CnnOptions::settings());
    options.in_channels = 3;
    options.num_classes = 10;
    options.widths = {32, 64, 128};
    options.logit_divisor = 9.0;
    const int64_t batch = 256;
    BenchmarkTask task;
    task.shape = Json::object({{"bench", "cnn_airbench_small"}, {"widths", Json::array({32, 64, 128})}, {"batch", batch}});
    task.model = std::make_shared<Cnn>(options, gen);
    task.model->to(device);
    SgdSettings settings = with_defaults(SgdSettings::settings());
    settings.lr = 0.01;
    settings.momentum = 0.9;
    settings.nesterov = true;
    task.optimizer = settings;
    task.inputs = randn({batch, 3, 32, 32}, DType::Float32, cpu(), gen).to(device);
    task.targets = random_ids({batch}, options.num_classes, gen, device);
    task.label_smoothing = 0.2;
    task.throughput_name = "images_per_s";
    task.items_per_step = batch;
    tasks.push_back(std::move(task));
  }
  return tasks;
}

int run_bench_models(const BenchArgs& args, std::ostream& out) {
  set_num_threads(static_cast<int>(args.threads));
  const Device device = bench_device(args);
  Generator gen(0);
  for (BenchmarkTask& task : benchmark_tasks(device, gen)) {
    // Both tasks are made (their initializations share the generator), only the chosen ones run.
    if (args.model != "all" && task.shape.at("bench").get<std::string>().rfind(args.model + "_", 0) != 0) continue;
    const auto optimizer = make_optimizer(task.optimizer, optimizer_params(*task.model));
    const double ms = median_ms_per_call(
        train_step(*task.model, *optimizer, task.inputs, task.targets, task.label_smoothing), args.repeats,
        backend_for(device));
    Json line = task.shape;
    line["device"] = device.str();
    line["threads"] = num_threads();
    line["blas"] = blas_kernel_name();
    line["float32_gemm"] = cpu_gemm::float32_gemm_name();
    line["cpu_capability"] = cpu_capability_name();
    line["ms_per_step"] = rounded(ms, 3);
    line[task.throughput_name] = rounded(static_cast<double>(task.items_per_step) / ms * 1000.0, 1);
    out << dump_json(line) << "\n" << std::flush;
  }
  return 0;
}

}  // namespace ml
