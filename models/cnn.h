// An airbench-style CIFAR network: a 2x2 "stem" convolution (with bias) and activation, groups of
// conv3x3 -> maxpool2 -> batch norm -> act -> conv3x3 -> batch norm -> act with widths from the
// config, a global max pool and a bias-free linear "head" whose logits are divided by a constant.
// The names "stem" and "head" are what the optimizers group on (they are not hidden matrices).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "framework/nn/layers.h"
#include "models/model.h"

namespace ml {

struct CnnOptions {
  int64_t in_channels = 3;
  int64_t stem_width = 24;
  std::vector<int64_t> widths;  // one conv group per entry
  int64_t num_classes = 10;
  bool relu = false;            // ReLU instead of GELU
  double bn_momentum = 0.1;
  double logit_divisor = 1.0;
  double dropout = 0.0;         // before the head
};

class ConvGroup : public UnaryModule {
 public:
  ConvGroup(int64_t in_channels, int64_t out_channels, const CnnOptions& options, Generator& gen);
  Tensor forward(const Tensor& x) override;  // halves the height and width

  std::shared_ptr<Conv2d> conv1;
  std::shared_ptr<BatchNorm2d> norm1;
  std::shared_ptr<Conv2d> conv2;
  std::shared_ptr<BatchNorm2d> norm2;

 private:
  bool relu_;
};

class Cnn : public Model {
 public:
  Cnn(const CnnOptions& options, Generator& gen);
  // Float images [B, C, H, W] -> logits [B, num_classes].
  Tensor forward(const Tensor& images) override;
  std::string summary() const override;

  // The smallest image side the stem and the groups' poolings leave at least 1x1 of.
  static int64_t min_image_size(size_t num_groups);

  std::shared_ptr<Conv2d> stem;
  std::shared_ptr<Sequential> groups;  // of ConvGroup
  std::shared_ptr<Linear> head;

 private:
  CnnOptions options_;
  std::shared_ptr<Dropout> dropout_;
};

}  // namespace ml
