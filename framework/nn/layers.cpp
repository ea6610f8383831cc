#include "framework/nn/layers.h"

#include <cmath>

#include "framework/ops/creation.h"
#include "framework/ops/nn_conv.h"
#include "framework/ops/nn_core.h"

namespace ml {
namespace {

// PyTorch's default for Linear and Conv2d weights and biases: kaiming_uniform_(a=sqrt(5))
// reduces to U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the bias uses the same bound.
Tensor fan_in_uniform(const Shape& shape, int64_t fan_in, Generator& gen) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  return rand(shape, -bound, bound, DType::Float32, cpu(), gen);
}

void check_positive(const char* layer, const char* what, int64_t value) {
  if (value <= 0)
    throw std::invalid_argument(std::string(layer) + ": " + what + " must be positive, got " + std::to_string(value));
}

}  // namespace

Linear::Linear(int64_t in_features, int64_t out_features, bool with_bias, Generator& gen) {
  check_positive("Linear", "in_features", in_features);
  check_positive("Linear", "out_features", out_features);
  weight = register_parameter("weight", fan_in_uniform({out_features, in_features}, in_features, gen));
  if (with_bias) bias = register_parameter("bias", fan_in_uniform({out_features}, in_features, gen));
}

Tensor Linear::forward(const Tensor& input) { return linear(input, weight, bias); }

Embedding::Embedding(int64_t num_embeddings, int64_t dim, Generator& gen) {
  check_positive("Embedding", "num_embeddings", num_embeddings);
  check_positive("Embedding", "dim", dim);
  weight = register_parameter("weight", randn({num_embeddings, dim}, DType::Float32, cpu(), gen));
}

Tensor Embedding::forward(const Tensor& indices) { return embedding(indices, weight); }

LayerNorm::LayerNorm(int64_t dim, double eps, bool affine) : eps(eps) {
  check_positive("LayerNorm", "dim", dim);
  if (affine) {
    weight = register_parameter("weight", ones({dim}));
    bias = register_parameter("bias", zeros({dim}));
  }
}

Tensor LayerNorm::forward(const Tensor& input) { return layer_norm(input, weight, bias, eps); }

RMSNorm::RMSNorm(int64_t dim, std::optional<double> eps) : eps(eps) {
  check_positive("RMSNorm", "dim", dim);
  weight = register_parameter("weight", ones({dim}));
}

Tensor RMSNorm::forward(const Tensor& input) { return rms_norm(input, weight, eps); }

Conv2d::Conv2d(int64_t in_channels, int64_t out_channels, Size2 kernel, Size2 stride, Size2 padding, bool with_bias,
               Generator& gen)
    : stride(stride), padding(padding) {
  check_positive("Conv2d", "in_channels", in_channels);
  check_positive("Conv2d", "out_channels", out_channels);
  check_positive("Conv2d", "kernel height", kernel.h);
  check_positive("Conv2d", "kernel width", kernel.w);
  const int64_t fan_in = in_channels * kernel.h * kernel.w;
  weight = register_parameter("weight", fan_in_uniform({out_channels, in_channels, kernel.h, kernel.w}, fan_in, gen));
  if (with_bias) bias = register_parameter("bias", fan_in_uniform({out_channels}, fan_in, gen));
}

Tensor Conv2d::forward(const Tensor& input) {
  return conv2d(input, weight, bias, Conv2dParams{stride.h, stride.w, padding.h, padding.w});
}

BatchNorm2d::BatchNorm2d(int64_t channels, double momentum, double eps, bool affine, std::optional<UnaryOp> activation)
    : momentum(momentum), eps(eps), activation(activation) {
  check_positive("BatchNorm2d", "channels", channels);
  if (affine) {
    weight = register_parameter("weight", ones({channels}));
    bias = register_parameter("bias", zeros({channels}));
  }
  running_mean = register_buffer("running_mean", zeros({channels}));
  running_var = register_buffer("running_var", ones({channels}));
}

Tensor BatchNorm2d::forward(const Tensor& input) {
  return batch_norm2d(input, running_mean, running_var, weight, bias, is_training(), momentum, eps, activation);
}

Dropout::Dropout(double p, Generator& gen) : p(p), generator_(&gen) {
  if (!(p >= 0.0 && p < 1.0)) throw std::invalid_argument("Dropout: p must be in [0, 1), got " + std::to_string(p));
}

Tensor Dropout::forward(const Tensor& input) { return dropout(input, p, is_training(), *generator_); }

Sequential::Sequential(std::initializer_list<std::shared_ptr<UnaryModule>> layers) {
  for (const auto& layer : layers) append(layer);
}

void Sequential::append(std::shared_ptr<UnaryModule> layer) {
  layers_.push_back(register_module(std::to_string(layers_.size()), std::move(layer)));
}

Tensor Sequential::forward(const Tensor& input) {
  Tensor x = input;
  for (const auto& layer : layers_) x = layer->forward(x);
  return x;
}

}  // namespace ml
