// Muon — Keller Jordan, "Muon: An optimizer for hidden layers in neural networks" (2024),
// reference KellerJordan/Muon (muon.py):
//   M <- beta M + (1 - beta) G;  U = (1 - beta) G + beta M (Nesterov) or M;
//   O = NS5(U) (quintic Newton–Schulz, a, b, c = 3.4445, -4.7750, 2.0315);
//   W <- W (1 - lr wd) - lr max(1, m/n)^0.5 O.
// With `renormalize` (KellerJordan/cifar10-airbench, airbench94_muon.py) the weight decay is
// replaced by a renormalization of the whole tensor before the update, every step:
//   W <- W sqrt(m) / ||W||_F;  W <- W - lr max(1, m/n)^0.5 O,
// m = rows (output channels of a conv filter), so that the mean squared norm of a row is 1.
// airbench's accumulating momentum (B <- mu B + G) is (1 - mu) times the lerp form here; the
// Newton–Schulz normalization removes that factor, so the two give the same update.
#include "optimizers/muon.h"

#include <cmath>

#include "framework/ops.h"

namespace ml {

Muon::Muon(std::vector<NamedParam> params, const OptimizerSpec& spec)
    : Muon("muon", std::move(params), spec, schedule_from_spec(spec, 5, "keller", false)) {}

Muon::Muon(std::string kind, std::vector<NamedParam> params, const OptimizerSpec& spec, NsSchedule schedule)
    : MatrixOptimizer(std::move(kind), std::move(params), spec.lr, spec.weight_decay),
      schedule_(std::move(schedule)),
      scaling_(scaling_from_spec(spec, UpdateScaling::Keller)),
      momentum_(spec.momentum),
      nesterov_(spec.nesterov),
      renormalize_(spec.renormalize) {
  for (size_t i = 0; i < this->params().size(); ++i) momentum_buffers_.push_back(add_matrix_buffer(i, "momentum"));
}

Tensor Muon::begin_update(size_t index, const Tensor& grad) {
  return lerp_momentum(momentum_buffers_[index], grad, momentum_, nesterov_);
}

// -lr scale NS(U): the step itself, ready to add.
Tensor Muon::orthogonalize(size_t index, const Tensor& input) {
  const Shape shape = matrix_shape(index);
  return newton_schulz(input, schedule_, -lr() * update_scale(scaling_, shape[0], shape[1]));
}

void Muon::finish_update(size_t, Tensor& weight, const Tensor& ortho) {
  if (renormalize_) mul_(weight, rdiv(std::sqrt(static_cast<double>(weight.size(0))), norm(weight)));
  decay_weight(weight);
  add_(weight, ortho);
}

}  // namespace ml
