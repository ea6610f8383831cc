// AdamW — Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019), Algorithm 2,
// in PyTorch's formulation (torch.optim.AdamW):
//   W <- W (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
//   W <- W - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps).
#include "optimizers/adamw.h"

#include <cmath>

#include "framework/ops.h"
#include "optimizers/momentum.h"

namespace ml {

// torch.optim.AdamW's defaults, except the weight decay (0, not 0.01).
const SettingList<AdamWSettings>& AdamWSettings::settings() {
  using S = AdamWSettings;
  static const SettingList<S> settings{
      learning_rate_setting<S>(),
      decoupled_weight_decay_setting<S>(),
      betas_setting<S>({0.9, 0.999}, "decay rates b1, b2 of the first and second moment averages m and v"),
      number<S>("eps", &S::eps, greater_than(0), 1e-8, "added to sqrt(v) so that the step stays finite"),
  };
  return settings;
}

AdamW::AdamW(std::vector<NamedParam> params, const AdamWSettings& settings)
    : Optimizer(AdamWSettings::kind, std::move(params), settings.lr),
      beta1_(settings.betas[0]),
      beta2_(settings.betas[1]),
      eps_(settings.eps),
      weight_decay_(settings.weight_decay) {
  check_betas(kind(), settings.betas);
  for (const NamedParam& p : this->params())
    slots_.push_back({add_buffer(p.name, "exp_avg", zeros_like(p.param)), add_buffer(p.name, "exp_avg_sq", zeros_like(p.param)),
                      &add_counter(p.name + ".step")});
}

void AdamW::step_impl() {
  for (size_t i = 0; i < params().size(); ++i) {
    Tensor param = params()[i].param;
    const Tensor grad = param.grad();
    if (!grad.defined()) continue;
    Slot& s = slots_[i];
    const int64_t t = ++*s.step;
    decay_weight(param, weight_decay_);
    lerp_momentum(s.exp_avg, grad, beta1_, /*nesterov=*/false);
    mul_(s.exp_avg_sq, beta2_);
    add_(s.exp_avg_sq, mul(grad, grad), 1.0 - beta2_);
    const double bias_correction1 = 1.0 - std::pow(beta1_, static_cast<double>(t));
    const double bias_correction2 = 1.0 - std::pow(beta2_, static_cast<double>(t));
    const Tensor denom = add(mul(sqrt(s.exp_avg_sq), 1.0 / std::sqrt(bias_correction2)), eps_);
    add_(param, div(s.exp_avg, denom), -lr() / bias_correction1);
  }
}

}  // namespace ml
