// SGD as torch.optim.SGD implements it (Sutskever et al. 2013 for the Nesterov form):
//   g <- g + wd W (L2 weight decay, coupled);  B <- mu B + g;
//   d = g + mu B (Nesterov) or B;  W <- W - lr d.
// PyTorch starts B at g on the first step, which is what mu * 0 + g gives.
#include "optimizers/sgd.h"

#include <stdexcept>

#include "framework/ops.h"
#include "optimizers/momentum.h"

namespace ml {

// PyTorch's defaults: no momentum, no decay.
const SettingList<SgdSettings>& SgdSettings::settings() {
  using S = SgdSettings;
  static const SettingList<S> settings{
      learning_rate_setting<S>(),
      weight_decay_setting<S>("L2 penalty wd: g <- g + wd W, added to the gradient (coupled)"),
      number<S>("momentum", &S::momentum, closed_open(0, 1), 0.0, "momentum mu: B <- mu B + g"),
      boolean<S>("nesterov", &S::nesterov, false, "step along g + mu B (Nesterov) instead of B"),
  };
  return settings;
}

SGD::SGD(std::vector<NamedParam> params, const SgdSettings& settings)
    : Optimizer(SgdSettings::kind, std::move(params), settings.lr),
      momentum_(settings.momentum),
      nesterov_(settings.nesterov),
      weight_decay_(settings.weight_decay) {
  if (nesterov_ && momentum_ <= 0.0) throw std::invalid_argument("sgd: Nesterov momentum needs momentum > 0");
  if (momentum_ != 0.0)
    for (const NamedParam& p : this->params()) momentum_buffers_.push_back(add_buffer(p.name, "momentum", zeros_like(p.param)));
}

void SGD::step_impl() {
  for (size_t i = 0; i < params().size(); ++i) {
    Tensor param = params()[i].param;
    Tensor grad = param.grad();
    if (!grad.defined()) continue;
    if (weight_decay_ != 0.0) grad = add(grad, mul(param, weight_decay_));
    const Tensor direction = momentum_ != 0.0 ? accumulate_momentum(momentum_buffers_[i], grad, momentum_, nesterov_) : grad;
    add_(param, direction, -lr());
  }
}

}  // namespace ml
