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

// Keller's coefficients for 5 steps.
const SettingList<MuonSettings>& MuonSettings::settings() {
  using S = MuonSettings;
  static const SettingList<S> settings = [] {
    SettingList<S> rows = muon_settings<S>(5, NsCoefficients::Keller);
    rows.push_back(boolean<S>("renormalize", &S::renormalize, false,
                              "W <- W sqrt(rows) / ||W||_F before each update, in place of weight decay"));
    return rows;
  }();
  return settings;
}

Muon::Muon(std::vector<NamedParam> params, const MuonSettings& settings)
    : Muon(MuonSettings::kind, std::move(params), settings, settings, ns_schedule(settings), settings.renormalize) {}

Muon::Muon(std::string kind, std::vector<NamedParam> params, const MatrixOptimizerSettings& settings,
           const MomentumSettings& momentum, NsSchedule schedule, bool renormalize)
    : MatrixOptimizer(std::move(kind), std::move(params), settings),
      schedule_(std::move(schedule)),
      momentum_(momentum),
      renormalize_(renormalize) {
  for (size_t i = 0; i < this->params().size(); ++i) momentum_buffers_.push_back(add_matrix_buffer(i, "momentum"));
}

Tensor Muon::begin_update(size_t index, const Tensor& grad) {
  return lerp_momentum(momentum_buffers_[index], grad, momentum_.momentum, momentum_.nesterov);
}

// -lr scale NS(U): the step itself, ready to add (for each matrix of a stack: they share a shape).
Tensor Muon::orthogonalize(size_t index, const Tensor& input) {
  const Shape shape = matrix_shape(index);
  return newton_schulz(input, schedule_, -lr() * scale_of(shape[0], shape[1]));
}

void Muon::finish_update(size_t, Tensor& weight, const Tensor& ortho) {
  if (renormalize_) mul_(weight, rdiv(std::sqrt(static_cast<double>(weight.size(0))), norm(weight)));
  decay_weight(weight);
  add_(weight, ortho);
}

}  // namespace ml
