#include "experiments/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <stdexcept>
#include <vector>

#include "framework/backend.h"
#include "framework/io/json.h"
#include "framework/ops.h"
#include "framework/parallel.h"
#include "models/cnn.h"
#include "models/gpt.h"
#include "optimizers/factory.h"

namespace ml {
namespace {

constexpr int kWarmupRuns = 2;

Device bench_device(const BenchArgs& args) {
  const Device device = Device::parse(args.device);
  if (device.is_cuda() && !cuda_available())
    throw std::runtime_error("bench --device cuda: no CUDA device is usable (built without CUDA, or no GPU)");
  return device;
}

// Median wall time of `fn` in milliseconds over `repeats` runs after a warm-up.
double median_ms(const std::function<void()>& fn, int64_t repeats, Device device) {
  for (int i = 0; i < kWarmupRuns; ++i) fn();
  std::vector<double> times;
  for (int64_t i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    backend_for(device).synchronize();
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
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

std::vector<NamedParam> named_params(const Module& model) {
  std::vector<NamedParam> params;
  for (const auto& [name, tensor] : model.named_parameters()) params.push_back({name, tensor});
  return params;
}

}  // namespace

void bench_models(const BenchArgs& args, std::ostream& out) {
  set_num_threads(static_cast<int>(args.threads));
  const Device device = bench_device(args);
  Generator gen(0);
  {
    GptOptions options;
    options.vocab_size = 65;
    options.block_size = 64;
    options.n_layer = 4;
    options.n_head = 4;
    options.n_embd = 128;
    const int64_t batch = 12;
    Gpt model(options, gen);
    model.to(device);
    OptimizerSpec spec;
    spec.kind = "adamw";
    spec.lr = 1e-3;
    const auto optimizer = make_optimizer(spec, named_params(model));
    const Tensor ids = random_ids({batch, options.block_size}, options.vocab_size, gen, device);
    const Tensor targets = random_ids({batch, options.block_size}, options.vocab_size, gen, device);
    const double ms = median_ms(train_step(model, *optimizer, ids, targets, 0.0), args.repeats, device);
    out << Json::object({{"bench", "gpt_nanogpt_cpu"},
                         {"vocab", options.vocab_size},
                         {"block", options.block_size},
                         {"layers", options.n_layer},
                         {"heads", options.n_head},
                         {"d", options.n_embd},
                         {"batch", batch},
                         {"threads", num_threads()},
                         {"ms_per_step", rounded(ms, 3)},
                         {"tokens_per_s", rounded(static_cast<double>(batch * options.block_size) / ms * 1000.0, 1)}})
               .dump()
        << "\n"
        << std::flush;
  }
  {
    CnnOptions options;
    options.widths = {32, 64, 128};
    options.logit_divisor = 9.0;
    const int64_t batch = 256;
    Cnn model(options, gen);
    model.to(device);
    OptimizerSpec spec;
    spec.kind = "sgd";
    spec.lr = 0.01;
    spec.momentum = 0.9;
    spec.nesterov = true;
    const auto optimizer = make_optimizer(spec, named_params(model));
    const Tensor images = randn({batch, 3, 32, 32}, DType::Float32, cpu(), gen).to(device);
    const Tensor labels = random_ids({batch}, options.num_classes, gen, device);
    const double ms = median_ms(train_step(model, *optimizer, images, labels, 0.2), args.repeats, device);
    out << Json::object({{"bench", "cnn_airbench_small"},
                         {"widths", Json::array({32, 64, 128})},
                         {"batch", batch},
                         {"threads", num_threads()},
                         {"ms_per_step", rounded(ms, 3)},
                         {"images_per_s", rounded(static_cast<double>(batch) / ms * 1000.0, 1)}})
               .dump()
        << "\n"
        << std::flush;
  }
}

void bench_ops(const BenchArgs& args, std::ostream& out) {
  set_num_threads(static_cast<int>(args.threads));
  const Device device = bench_device(args);
  Generator gen(0);
  const auto input = [&](const Shape& shape) {
    return randn(shape, DType::Float32, cpu(), gen).to(device).requires_grad_();
  };
  struct Case {
    const char* name;
    Shape shape;
    std::function<Tensor()> forward;  // a scalar to back-propagate from
  };
  // The ops the two benchmark models spend their time in, at their shapes.
  const Tensor a = input({768, 128}), w = input({512, 128});
  const Tensor images = input({256, 32, 16, 16}), filters = input({64, 32, 3, 3});
  const Tensor q = input({12, 4, 64, 32}), k = input({12, 4, 64, 32}), v = input({12, 4, 64, 32});
  const Tensor logits = input({768, 65});
  const Tensor targets = random_ids({768}, 65, gen, device);
  const Tensor activations = input({256, 64, 16, 16});
  const std::vector<Case> cases{
      {"linear", {768, 128, 512}, [&] { return sum(linear(a, w)); }},
      {"conv2d_3x3", {256, 32, 16, 16, 64}, [&] { return sum(conv2d(images, filters, Tensor(), 1, 1)); }},
      {"attention", {12, 4, 64, 32}, [&] { return sum(scaled_dot_product_attention(q, k, v)); }},
      {"layer_norm", {768, 128}, [&] { return sum(layer_norm(a)); }},
      {"cross_entropy", {768, 65}, [&] { return cross_entropy(logits, targets); }},
      {"max_pool2d", {256, 64, 16, 16}, [&] { return sum(max_pool2d(activations, 2)); }},
      {"gelu", {256, 64, 16, 16}, [&] { return sum(gelu(activations)); }},
  };
  for (const Case& c : cases) {
    const double forward_ms = median_ms([&] { NoGradGuard no_grad; c.forward(); }, args.repeats, device);
    const double step_ms = median_ms([&] { c.forward().backward(); }, args.repeats, device);
    Json::Array shape;
    for (int64_t size : c.shape) shape.push_back(size);
    out << Json::object({{"bench", "op"},
                         {"op", c.name},
                         {"shape", Json(shape)},
                         {"threads", num_threads()},
                         {"forward_ms", rounded(forward_ms, 4)},
                         {"forward_backward_ms", rounded(step_ms, 4)}})
               .dump()
        << "\n"
        << std::flush;
  }
}

}  // namespace ml
