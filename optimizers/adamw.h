// AdamW with PyTorch's torch.optim.AdamW semantics (decoupled weight decay, bias correction).
#pragma once
#include <array>

#include "optimizers/optimizer.h"

namespace ml {

class AdamW : public Optimizer {
 public:
  AdamW(std::vector<NamedParam> params, double lr, std::array<double, 2> betas = {0.9, 0.999}, double eps = 1e-8,
        double weight_decay = 0.01);

 private:
  void step_impl() override;
  double beta1_, beta2_, eps_, weight_decay_;
  struct Slot {
    Tensor exp_avg, exp_avg_sq;
    int64_t* step;  // per parameter, as in PyTorch: a parameter without a gradient does not advance
  };
  std::vector<Slot> slots_;
};

}  // namespace ml
