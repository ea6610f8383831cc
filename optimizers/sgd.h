// Stochastic gradient descent with momentum, PyTorch's torch.optim.SGD semantics (no dampening).
#pragma once
#include "optimizers/optimizer.h"

namespace ml {

class SGD;

// Members start at zero; the defaults are the table's (with_defaults(SgdSettings::settings())).
struct SgdSettings {
  using Optimizer = SGD;
  static constexpr const char* kind = "sgd";
  static const SettingList<SgdSettings>& settings();
  double lr{};
  double weight_decay{};
  double momentum{};
  bool nesterov{};
};

class SGD : public Optimizer {
 public:
  SGD(std::vector<NamedParam> params, const SgdSettings& settings);

 private:
  void step_impl() override;
  double momentum_;
  bool nesterov_;
  double weight_decay_;
  std::vector<Tensor> momentum_buffers_;  // empty without momentum
};

}  // namespace ml
