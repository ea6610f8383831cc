// RMNP — Deng et al. (arXiv 2603.20527), reference Dominator-Index/RMNP.
// The Hessian of a transformer is close to block diagonal with one block per output neuron, so
// each row (a neuron's weights over its inputs) is normalized on its own, in O(mn):
//   M <- mu M + G;  U = G + mu M (Nesterov) or M;  R_i = U_i / max(||U_i||_2, 1e-12);
//   W <- W (1 - lr wd) - lr max(1, m/n)^0.5 R.
#include "optimizers/rmnp.h"

#include "framework/ops.h"

namespace ml {

const SettingList<RmnpSettings>& RmnpSettings::settings() {
  using S = RmnpSettings;
  static const SettingList<S> settings{
      learning_rate_setting<S>(),
      decoupled_weight_decay_setting<S>(),
      momentum_setting<S>("momentum mu: M <- mu M + G"),
      nesterov_setting<S>(),
      scaling_setting<S>(UpdateScaling::Keller),
  };
  return settings;
}

RMNP::RMNP(std::vector<NamedParam> params, const RmnpSettings& settings)
    : MatrixOptimizer(RmnpSettings::kind, std::move(params), settings),
      momentum_(settings) {
  for (size_t i = 0; i < this->params().size(); ++i) momentum_buffers_.push_back(add_matrix_buffer(i, "momentum"));
}

Tensor RMNP::begin_update(size_t index, const Tensor& grad) {
  return accumulate_momentum(momentum_buffers_[index], grad, momentum_.momentum, momentum_.nesterov);
}

Tensor RMNP::orthogonalize(size_t index, const Tensor& input) {
  const Shape shape = matrix_shape(index);
  // R scaled by -lr max(1, m/n)^0.5 on the way: one fused pass (normalize_rows).
  return normalize_rows(input, -lr() * scale_of(shape[0], shape[1]));
}

void RMNP::finish_update(size_t, Tensor& weight, const Tensor& ortho) {
  decay_weight(weight);
  add_(weight, ortho);
}

}  // namespace ml
