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

struct MlpOptions {
  int64_t in_features = 0;
  std::vector<int64_t> hidden;
  int64_t num_classes = 0;
  MlpActivation activation = MlpActivation::Relu;
  double dropout = 0.0;  // after each hidden activation
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
