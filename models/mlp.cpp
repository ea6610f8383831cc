#include "models/mlp.h"

#include <stdexcept>

#include "framework/ops.h"

namespace ml {
namespace {

std::shared_ptr<UnaryModule> make_activation(MlpActivation activation) {
  switch (activation) {
    case MlpActivation::Relu:
      return std::make_shared<ReLU>();
    case MlpActivation::Gelu:
      return std::make_shared<GELU>();
    case MlpActivation::Tanh:
      return std::make_shared<Tanh>();
  }
  throw std::invalid_argument("mlp: unknown activation");
}

}  // namespace

const SettingList<MlpOptions>& MlpOptions::settings() {
  using S = MlpOptions;
  static const EnumNames<MlpActivation> activations{
      {MlpActivation::Relu, "relu"}, {MlpActivation::Gelu, "gelu"}, {MlpActivation::Tanh, "tanh"}};
  static const SettingList<S> settings{
      dropout_setting<S>("after each hidden activation"),
      integer_list<S>("hidden", &S::hidden, at_least(1), true, std::vector<int64_t>{128},
                      "the hidden layers' widths; [] makes a linear classifier"),
      choice<S>("activation", &S::activation, activations, MlpActivation::Relu, "after each hidden layer"),
      num_classes_setting<S>(),
  };
  return settings;
}

Mlp::Mlp(const MlpOptions& options, Generator& gen) : options_(options) {
  if (options.in_features <= 0 || options.num_classes <= 0)
    throw std::invalid_argument("mlp: in_features and num_classes must be positive");
  hidden = register_module("hidden", std::make_shared<Sequential>());
  int64_t features = options.in_features;
  for (int64_t width : options.hidden) {
    if (width <= 0) throw std::invalid_argument("mlp: hidden widths must be positive, got " + std::to_string(width));
    hidden->push_back(std::make_shared<Linear>(features, width, true, gen));
    hidden->push_back(make_activation(options.activation));
    if (options.dropout > 0) hidden->push_back(std::make_shared<Dropout>(options.dropout));
    features = width;
  }
  head = register_module("head", std::make_shared<Linear>(features, options.num_classes, true, gen));
}

Tensor Mlp::forward(const Tensor& inputs) {
  if (inputs.dim() < 2 || inputs.numel() / inputs.size(0) != options_.in_features)
    throw std::invalid_argument("mlp: expected [B, ...] with " + std::to_string(options_.in_features) +
                                " features per example, got " + inputs.str());
  return head->forward(hidden->forward(inputs.reshape({inputs.size(0), options_.in_features})));
}

std::string Mlp::summary() const {
  std::string widths;
  for (int64_t width : options_.hidden) widths += (widths.empty() ? "" : "/") + std::to_string(width);
  return "mlp: " + std::to_string(options_.in_features) + " inputs, hidden " + (widths.empty() ? "none" : widths) +
         ", " + std::to_string(options_.num_classes) + " classes, " + format_count(num_parameters()) + " parameters";
}

}  // namespace ml
