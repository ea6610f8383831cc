// Standard layers (torch.nn). Parameters are created on the CPU and initialized as PyTorch's
// defaults do, drawing from the Generator passed in so that a seeded model is reproducible;
// call Module::to(device) afterwards to move them.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <vector>

#include "framework/nn/module.h"
#include "framework/ops/elementwise.h"
#include "framework/random.h"

namespace ml {

// y = x W^T + b; weight [out, in], bias [out]. Both ~ U(-1/sqrt(in), 1/sqrt(in)) (PyTorch's
// kaiming_uniform_(a=sqrt(5)) and its bias rule).
class Linear : public UnaryModule {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true, Generator& gen = default_generator());
  Tensor forward(const Tensor& input) override;

  Tensor weight;
  Tensor bias;  // undefined without bias
};

// Rows of a [num_embeddings, dim] table ~ N(0, 1), looked up by Int64 indices of any shape.
class Embedding : public UnaryModule {
 public:
  Embedding(int64_t num_embeddings, int64_t dim, Generator& gen = default_generator());
  Tensor forward(const Tensor& indices) override;

  Tensor weight;
};

// Normalizes over the last dimension; the affine weight starts at 1 and bias at 0.
class LayerNorm : public UnaryModule {
 public:
  explicit LayerNorm(int64_t dim, double eps = 1e-5, bool affine = true);
  Tensor forward(const Tensor& input) override;

  Tensor weight;  // undefined unless affine
  Tensor bias;    // undefined unless affine
  double eps;
};

// x / sqrt(mean(x^2) + eps) * weight over the last dimension; weight starts at 1. Without eps,
// the machine epsilon of the input's dtype (as torch.nn.RMSNorm).
class RMSNorm : public UnaryModule {
 public:
  explicit RMSNorm(int64_t dim, std::optional<double> eps = std::nullopt);
  Tensor forward(const Tensor& input) override;

  Tensor weight;
  std::optional<double> eps;
};

// A kernel, stride or padding given as one number or as (height, width).
struct Size2 {
  Size2(int64_t both) : h(both), w(both) {}  // NOLINT: implicit, so that Conv2d(3, 8, 3) reads naturally
  Size2(int64_t height, int64_t width) : h(height), w(width) {}
  int64_t h, w;
};

// 2-D convolution over NCHW input; weight [out, in, kh, kw], bias [out], both
// ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in * kh * kw.
class Conv2d : public UnaryModule {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, Size2 kernel, Size2 stride = 1, Size2 padding = 0,
         bool bias = true, Generator& gen = default_generator());
  Tensor forward(const Tensor& input) override;

  Tensor weight;
  Tensor bias;  // undefined without bias
  Size2 stride, padding;
};

// Batch normalization over the channels of NCHW input. In training mode it normalizes with the
// batch statistics and updates running_mean/running_var (momentum-weighted, unbiased variance,
// as PyTorch); in eval mode it uses the running statistics. An activation, where given, follows
// the normalization in the same passes over memory (batch_norm2d).
class BatchNorm2d : public UnaryModule {
 public:
  explicit BatchNorm2d(int64_t channels, double momentum = 0.1, double eps = 1e-5, bool affine = true,
                       std::optional<UnaryOp> activation = std::nullopt);
  Tensor forward(const Tensor& input) override;

  Tensor weight;  // undefined unless affine
  Tensor bias;    // undefined unless affine
  Tensor running_mean, running_var;
  double momentum, eps;
  std::optional<UnaryOp> activation;
};

// Zeroes elements with probability p and scales the rest by 1/(1-p) in training mode; the
// identity in eval mode. Masks are drawn from `gen` at each forward call, so `gen` must outlive
// the layer.
class Dropout : public UnaryModule {
 public:
  explicit Dropout(double p = 0.5, Generator& gen = default_generator());
  Tensor forward(const Tensor& input) override;

  double p;

 private:
  Generator* generator_;
};

class ReLU : public UnaryModule {
 public:
  Tensor forward(const Tensor& input) override { return relu(input); }
};

class ReLU2 : public UnaryModule {
 public:
  Tensor forward(const Tensor& input) override { return relu2(input); }
};

class GELU : public UnaryModule {
 public:
  explicit GELU(GeluApprox approximate = GeluApprox::None) : approximate(approximate) {}
  Tensor forward(const Tensor& input) override { return gelu(input, approximate); }

  GeluApprox approximate;
};

class Tanh : public UnaryModule {
 public:
  Tensor forward(const Tensor& input) override { return tanh(input); }
};

// Applies its layers in order; they are registered as children "0", "1", ... as in PyTorch,
// so a Sequential's state_dict names match torch.nn.Sequential's.
class Sequential : public UnaryModule {
 public:
  Sequential() = default;
  Sequential(std::initializer_list<std::shared_ptr<UnaryModule>> layers);
  // Appends a layer and returns it.
  template <typename M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> layer) {
    append(layer);
    return layer;
  }
  Tensor forward(const Tensor& input) override;
  size_t size() const { return layers_.size(); }
  const std::shared_ptr<UnaryModule>& operator[](size_t index) const { return layers_.at(index); }

 private:
  void append(std::shared_ptr<UnaryModule> layer);

  std::vector<std::shared_ptr<UnaryModule>> layers_;
};

}  // namespace ml
