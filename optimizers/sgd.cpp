// SGD as torch.optim.SGD implements it (Sutskever et al. 2013 for the Nesterov form):
//   g <- g + wd W (L2 weight decay, coupled);  B <- mu B + g;
//   d = g + mu B (Nesterov) or B;  W <- W - lr d.
// PyTorch starts B at g on the first step, which is what mu * 0 + g gives.
#include "optimizers/sgd.h"

#include <stdexcept>

#include "framework/ops.h"
#include "optimizers/momentum.h"

namespace ml {

SGD::SGD(std::vector<NamedParam> params, double lr, double momentum, bool nesterov, double weight_decay)
    : Optimizer("sgd", std::move(params), lr), momentum_(momentum), nesterov_(nesterov), weight_decay_(weight_decay) {
  if (nesterov && momentum <= 0.0) throw std::invalid_argument("sgd: Nesterov momentum needs momentum > 0");
  if (momentum != 0.0)
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
