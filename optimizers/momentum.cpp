#include "optimizers/momentum.h"

#include "framework/ops.h"

namespace ml {

Tensor lerp_momentum(Tensor& momentum, const Tensor& grad, double beta, bool nesterov) {
  mul_(momentum, beta);
  add_(momentum, grad, 1.0 - beta);
  if (!nesterov) return momentum;
  return add(mul(grad, 1.0 - beta), mul(momentum, beta));
}

Tensor accumulate_momentum(Tensor& momentum, const Tensor& grad, double mu, bool nesterov) {
  mul_(momentum, mu);
  add_(momentum, grad);
  if (!nesterov) return momentum;
  return add(grad, mul(momentum, mu));
}

}  // namespace ml
