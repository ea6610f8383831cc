#include "models/cnn.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "framework/ops.h"
#include "models/patch_whitening.h"

namespace ml {
namespace {

constexpr int64_t kStemKernel = 2;

UnaryOp activation_op(CnnActivation activation) {
  return activation == CnnActivation::Relu ? UnaryOp::Relu : UnaryOp::GeluErf;
}

// torch.nn.init.dirac_ on the first min(out, in) filters of a conv weight [out, in, kh, kw]: filter
// o passes input channel o through its centre tap unchanged, so a fresh group starts close to the
// identity on the channels it receives (airbench94_muon.py, Conv.reset_parameters).
void dirac_init_leading_filters(Tensor& weight) {
  const int64_t out = weight.size(0), in = weight.size(1), kh = weight.size(2), kw = weight.size(3);
  const int64_t filter_size = in * kh * kw;
  std::vector<float> values = weight.to_vector<float>();
  for (int64_t o = 0; o < std::min(out, in); ++o) {
    float* filter = values.data() + o * filter_size;
    std::fill(filter, filter + filter_size, 0.0f);
    filter[(o * kh + kh / 2) * kw + kw / 2] = 1.0f;
  }
  NoGradGuard no_grad;
  copy_(weight, Tensor::from_vector(values, weight.shape()));
}

}  // namespace

const SettingList<CnnOptions>& CnnOptions::settings() {
  using S = CnnOptions;
  static const EnumNames<CnnActivation> activations{{CnnActivation::Gelu, "gelu"}, {CnnActivation::Relu, "relu"}};
  static const SettingList<S> settings{
      dropout_setting<S>("before the head"),
      integer<S>("in_channels", &S::in_channels, at_least(0), 0, "image channels; 0: the data's"),
      integer<S>("stem_width", &S::stem_width, at_least(1), 24, "the 2x2 stem convolution's output channels"),
      integer_list<S>("widths", &S::widths, at_least(1), false, kRequired, "one conv group per entry, its channels"),
      number<S>("bn_momentum", &S::bn_momentum, open_closed(0, 1), 0.1,
                "PyTorch's convention: running = (1 - m) running + m batch"),
      number<S>("logit_divisor", &S::logit_divisor, greater_than(0), 1.0, "the head's logits are divided by this"),
      choice<S>("activation", &S::activation, activations, CnnActivation::Gelu, "after the stem and each batch norm"),
      number<S>("bn_eps", &S::bn_eps, greater_than(0), 1e-5, "added to the batch variance"),
      boolean<S>("bn_freeze_weight", &S::bn_freeze_weight, false, "batch-norm scales stay 1"),
      boolean<S>("dirac_init", &S::dirac_init, false, "each conv's first in_channels filters start as the identity"),
      number<S>("head_init_std", &S::head_init_std, at_least(0), 0.0, "> 0: the initial head weights get this std"),
      boolean<S>("whiten", &S::whiten, false, "the stem is a frozen patch-whitening layer computed from the data"),
      integer<S>("whiten_examples", &S::whiten_examples, at_least(1), kDefaultWhitenExamples,
                 "training images the whitening covariance is measured on"),
      number<S>("whiten_eps", &S::whiten_eps, greater_than(0), kDefaultWhitenEps, "filters V / sqrt(lambda + eps)"),
      integer<S>("whiten_bias_epochs", &S::whiten_bias_epochs, at_least(0), 0,
                 "the stem's bias trains for this many epochs; 0: throughout"),
      num_classes_setting<S>(),
  };
  return settings;
}

ConvGroup::ConvGroup(int64_t in_channels, int64_t out_channels, const CnnOptions& options, Generator& gen) {
  // Each batch norm applies the activation after it in its own passes (batch_norm2d).
  const auto activated_norm = [&] {
    return std::make_shared<BatchNorm2d>(out_channels, options.bn_momentum, options.bn_eps, true,
                                         activation_op(options.activation));
  };
  conv1 = register_module("conv1", std::make_shared<Conv2d>(in_channels, out_channels, 3, 1, 1, false, gen));
  norm1 = register_module("norm1", activated_norm());
  conv2 = register_module("conv2", std::make_shared<Conv2d>(out_channels, out_channels, 3, 1, 1, false, gen));
  norm2 = register_module("norm2", activated_norm());
  for (const auto& conv : {conv1, conv2})
    if (options.dirac_init) dirac_init_leading_filters(conv->weight);
  for (const auto& norm : {norm1, norm2})
    if (options.bn_freeze_weight) norm->weight.requires_grad_(false);
}

Tensor ConvGroup::forward(const Tensor& x) {
  const Tensor pooled = max_pool2d(conv1->forward(x), 2);
  const Tensor h = norm1->forward(pooled);
  return norm2->forward(conv2->forward(h));
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
  const int64_t whitened_width = 2 * options.in_channels * kStemKernel * kStemKernel;
  if (options.whiten && options.stem_width != whitened_width)
    throw std::invalid_argument("cnn: the whitening stem has 2 * in_channels * 2 * 2 = " + std::to_string(whitened_width) +
                                " channels, but stem_width is " + std::to_string(options.stem_width));
  stem = register_module("stem", std::make_shared<Conv2d>(options.in_channels, options.stem_width, kStemKernel, 1, 0,
                                                          true, gen));
  if (options.whiten) stem->weight.requires_grad_(false);
  groups = register_module("groups", std::make_shared<Sequential>());
  int64_t channels = options.stem_width;
  for (int64_t width : options.widths) {
    groups->push_back(std::make_shared<ConvGroup>(channels, width, options, gen));
    channels = width;
  }
  dropout_ = register_module("dropout", std::make_shared<Dropout>(options.dropout));
  head = register_module("head", std::make_shared<Linear>(channels, options.num_classes, false, gen));
  if (options.head_init_std > 0) {
    NoGradGuard no_grad;
    mul_(head->weight, options.head_init_std / std::sqrt(var(head->weight).item()));  // unbiased, as torch.std
  }
}

int64_t Cnn::init_examples() const { return options_.whiten ? options_.whiten_examples : 0; }

void Cnn::init_from_data(const Tensor& inputs) {
  if (!options_.whiten) throw std::logic_error("cnn: init_from_data is only for the whitening stem (options.whiten)");
  NoGradGuard no_grad;
  copy_(stem->weight, patch_whitening_filters(inputs, kStemKernel, options_.whiten_eps).to(stem->weight.device()));
}

void Cnn::begin_training_step(double epochs_done) {
  if (options_.whiten && options_.whiten_bias_epochs > 0)
    stem->bias.requires_grad_(epochs_done < static_cast<double>(options_.whiten_bias_epochs));
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
  const Tensor features = groups->forward(activation(activation_op(options_.activation), stem->forward(images)));
  const Tensor pooled = dropout_->forward(global_max_pool2d(features));
  return head->forward(pooled) / options_.logit_divisor;
}

std::string Cnn::summary() const {
  std::string widths;
  for (int64_t width : options_.widths) widths += (widths.empty() ? "" : "/") + std::to_string(width);
  return std::string("cnn: ") + (options_.whiten ? "whitening " : "") + "stem " + std::to_string(options_.stem_width) +
         ", groups " + widths + ", " + std::to_string(options_.num_classes) + " classes, " +
         format_count(num_parameters()) + " parameters";
}

}  // namespace ml
