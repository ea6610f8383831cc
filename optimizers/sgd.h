// Stochastic gradient descent with momentum, PyTorch's torch.optim.SGD semantics (no dampening).
#pragma once
#include "optimizers/optimizer.h"

namespace ml {

class SGD : public Optimizer {
 public:
  SGD(std::vector<NamedParam> params, double lr, double momentum = 0.0, bool nesterov = false,
      double weight_decay = 0.0);

 private:
  void step_impl() override;
  double momentum_;
  bool nesterov_;
  double weight_decay_;
  std::vector<Tensor> momentum_buffers_;  // empty without momentum
};

}  // namespace ml
