// Lion — Chen, Liang, Huang, Real, Wang, Liu, Pham, Dong, Luong, Hsieh, Lu & Le, "Symbolic
// Discovery of Optimization Algorithms" (NeurIPS 2023, arXiv 2302.06675), Algorithm 2; reference
// code google/automl lion/lion_pytorch.py (also lucidrains/lion-pytorch). With g the gradient:
//   c <- b1 m + (1 - b1) g;  W <- W - lr (sign(c) + wd W);  m <- b2 m + (1 - b2) g.
// The code applies the decay first, W <- W (1 - lr wd), then W <- W - lr sign(c): the same update,
// in the reference code's order. sign(0) = 0, as torch.sign: a coordinate whose c is exactly 0
// does not move (apart from the decay).
#include "optimizers/lion.h"

#include "framework/ops.h"
#include "optimizers/momentum.h"

namespace ml {

// Betas (0.9, 0.99) as in the paper and the reference code; no weight decay, the reference code's
// default (the paper sets none). The paper finds a rate 3-10x smaller than AdamW's and a weight
// decay 3-10x larger work best: sign(c) has entries of size 1, a larger update than Adam's.
const SettingList<LionSettings>& LionSettings::settings() {
  using S = LionSettings;
  static const SettingList<S> settings{
      learning_rate_setting<S>(),
      decoupled_weight_decay_setting<S>(),
      betas_setting<S>({0.9, 0.99},
                       "b1 weighs m in the step's direction c = b1 m + (1 - b1) g; b2 is the decay rate of the "
                       "average m <- b2 m + (1 - b2) g"),
  };
  return settings;
}

Lion::Lion(std::vector<NamedParam> params, const LionSettings& settings)
    : Optimizer(LionSettings::kind, std::move(params), settings.lr),
      beta1_(settings.betas[0]),
      beta2_(settings.betas[1]),
      weight_decay_(settings.weight_decay) {
  check_betas(kind(), settings.betas);
  for (const NamedParam& p : this->params()) exp_avgs_.push_back(add_buffer(p.name, "exp_avg", zeros_like(p.param)));
}

void Lion::step_impl() {
  for (size_t i = 0; i < params().size(); ++i) {
    Tensor param = params()[i].param;
    const Tensor grad = param.grad();
    if (!grad.defined()) continue;
    Tensor& m = exp_avgs_[i];
    const Tensor c = add(mul(m, beta1_), mul(grad, 1.0 - beta1_));
    decay_weight(param, weight_decay_);
    add_(param, sign(c), -lr());
    lerp_momentum(m, grad, beta2_, /*nesterov=*/false);
  }
}

}  // namespace ml
