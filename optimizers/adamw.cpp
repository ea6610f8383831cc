// AdamW — Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019), Algorithm 2,
// in PyTorch's formulation (torch.optim.AdamW):
//   W <- W (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
//   W <- W - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps).
#include "optimizers/adamw.h"

#include <cmath>
#include <initializer_list>

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

void adamw_update_by_ops(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWStep& step) {
  if (step.weight_decay != 0.0) mul_(param, 1.0 - step.lr * step.weight_decay);
  lerp_momentum(exp_avg, grad, step.beta1, /*nesterov=*/false);
  mul_(exp_avg_sq, step.beta2);
  add_(exp_avg_sq, mul(grad, grad), 1.0 - step.beta2);
  const Tensor denom = add(mul(sqrt(exp_avg_sq), 1.0 / std::sqrt(step.bias_correction2)), step.eps);
  add_(param, div(exp_avg, denom), -step.lr / step.bias_correction1);
}

void AdamW::step_impl() {
  for (size_t i = 0; i < params().size(); ++i) {
    Tensor param = params()[i].param;
    const Tensor grad = param.grad();
    if (!grad.defined()) continue;
    Slot& s = slots_[i];
    const double t = static_cast<double>(++*s.step);
    const AdamWStep step{lr(), beta1_, beta2_, eps_, weight_decay_, 1.0 - std::pow(beta1_, t), 1.0 - std::pow(beta2_, t)};
    bool one_pass = true;  // adamw_update_ takes four contiguous tensors of one dtype
    for (const Tensor* tensor : std::initializer_list<const Tensor*>{&param, &grad, &s.exp_avg, &s.exp_avg_sq})
      one_pass = one_pass && tensor->is_contiguous() && tensor->dtype() == param.dtype();
    if (one_pass)
      adamw_update_(param, grad, s.exp_avg, s.exp_avg_sq, step);
    else
      adamw_update_by_ops(param, grad, s.exp_avg, s.exp_avg_sq, step);
  }
}

}  // namespace ml
