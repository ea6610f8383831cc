// A multilayer perceptron classifier: the input example flattened, hidden Linear layers with an
// activation (and dropout), then a Linear "head". No hidden layers makes it a linear classifier.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "framework/nn/layers.h"
#include "models/model.h"

namespace ml {

enum class MlpActivation { Relu, Gelu, Tanh };

// The settings of `model: {kind: mlp}`. Members start at zero; the defaults are the table's
// (with_defaults(MlpOptions::settings())).
struct MlpOptions {
  static constexpr const char* kind = "mlp";
  static const SettingList<MlpOptions>& settings();
  double dropout{};  // after each hidden activation
  std::vector<int64_t> hidden;
  MlpActivation activation{};
  int64_t num_classes{};  // 0 in a config: the data's (make_model fills it in)
  int64_t in_features{};  // not a setting: the data's example size
};

class Mlp : public Model {
 public:
  Mlp(const MlpOptions& options, Generator& gen);
  // Float [B, ...] with in_features elements per example -> logits [B, num_classes].
  Tensor forward(const Tensor& inputs) override;
  std::string summary() const override;

  std::shared_ptr<Sequential> hidden;  // Linear, activation, Dropout per hidden layer
  std::shared_ptr<Linear> head;

 private:
  MlpOptions options_;
};

}  // namespace ml
