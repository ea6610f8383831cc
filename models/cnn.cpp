#include "models/cnn.h"

#include <stdexcept>

#include "framework/ops.h"

namespace ml {
namespace {

Tensor activation(const Tensor& x, bool relu_instead_of_gelu) { return relu_instead_of_gelu ? relu(x) : gelu(x); }

}  // namespace

ConvGroup::ConvGroup(int64_t in_channels, int64_t out_channels, const CnnOptions& options, Generator& gen)
    : relu_(options.relu) {
  conv1 = register_module("conv1", std::make_shared<Conv2d>(in_channels, out_channels, 3, 1, 1, false, gen));
  norm1 = register_module("norm1", std::make_shared<BatchNorm2d>(out_channels, options.bn_momentum));
  conv2 = register_module("conv2", std::make_shared<Conv2d>(out_channels, out_channels, 3, 1, 1, false, gen));
  norm2 = register_module("norm2", std::make_shared<BatchNorm2d>(out_channels, options.bn_momentum));
}

Tensor ConvGroup::forward(const Tensor& x) {
  const Tensor pooled = max_pool2d(conv1->forward(x), 2);
  const Tensor h = activation(norm1->forward(pooled), relu_);
  return activation(norm2->forward(conv2->forward(h)), relu_);
}

int64_t Cnn::min_image_size(size_t num_groups) {
  // The 2x2 stem takes one pixel off each side; each group's pooling halves (rounding down).
  int64_t size = 1;
  for (size_t i = 0; i < num_groups; ++i) size *= 2;
  return size + 1;
}

Cnn::Cnn(const CnnOptions& options, Generator& gen) : options_(options) {
  if (options.widths.empty()) throw std::invalid_argument("cnn: needs at least one conv group width");
  if (options.in_channels <= 0 || options.stem_width <= 0 || options.num_classes <= 0 || options.logit_divisor <= 0)
    throw std::invalid_argument("cnn: in_channels, stem_width, num_classes and logit_divisor must be positive");
  stem = register_module("stem", std::make_shared<Conv2d>(options.in_channels, options.stem_width, 2, 1, 0, true, gen));
  groups = register_module("groups", std::make_shared<Sequential>());
  int64_t channels = options.stem_width;
  for (int64_t width : options.widths) {
    groups->push_back(std::make_shared<ConvGroup>(channels, width, options, gen));
    channels = width;
  }
  dropout_ = register_module("dropout", std::make_shared<Dropout>(options.dropout));
  head = register_module("head", std::make_shared<Linear>(channels, options.num_classes, false, gen));
}

Tensor Cnn::forward(const Tensor& images) {
  if (images.dim() != 4 || images.size(1) != options_.in_channels)
    throw std::invalid_argument("cnn: expected images [B, " + std::to_string(options_.in_channels) +
                                ", H, W], got " + images.str());
  const int64_t min_size = min_image_size(options_.widths.size());
  if (images.size(2) < min_size || images.size(3) < min_size)
    throw std::invalid_argument("cnn: images of " + std::to_string(images.size(2)) + "x" +
                                std::to_string(images.size(3)) + " are too small for " +
                                std::to_string(options_.widths.size()) + " conv groups (need at least " +
                                std::to_string(min_size) + "x" + std::to_string(min_size) + ")");
  const Tensor features = groups->forward(activation(stem->forward(images), options_.relu));
  const Tensor pooled = dropout_->forward(global_max_pool2d(features));
  return head->forward(pooled) / options_.logit_divisor;
}

std::string Cnn::summary() const {
  std::string widths;
  for (int64_t width : options_.widths) widths += (widths.empty() ? "" : "/") + std::to_string(width);
  return "cnn: stem " + std::to_string(options_.stem_width) + ", groups " + widths + ", " +
         std::to_string(options_.num_classes) + " classes, " + format_count(num_parameters()) + " parameters";
}

}  // namespace ml
