// NorMuon — Li et al., "NorMuon: Making Muon more efficient and scalable" (arXiv 2510.05491).
// After Newton–Schulz the rows of O can still have very different norms; an Adam-style second
// moment per row evens them out:
//   O = NS(U) (U from Muon's momentum);  v <- b2 v + (1 - b2) mean_j O_ij^2;
//   O' = O / (sqrt(v) + 1e-10), rescaled to ||O'||_F = ||O||_F;
//   W <- W (1 - lr wd) - lr scale O'.
// Everything after Newton–Schulz is computed from the per-row mean squares (a vector), so the
// normalization, the rescaling and lr * scale reach O through one per-row factor.
#include "optimizers/normuon.h"

#include "framework/ops.h"

namespace ml {

const SettingList<NorMuonSettings>& NorMuonSettings::settings() {
  using S = NorMuonSettings;
  static const SettingList<S> settings = [] {
    SettingList<S> rows = muon_settings<S>(5, NsCoefficients::Keller);
    rows.push_back(number<S>("beta2", &S::beta2, closed_open(0, 1), 0.95,
                             "decay rate b2 of the per-row second moment v"));
    return rows;
  }();
  return settings;
}

NorMuon::NorMuon(std::vector<NamedParam> params, const NorMuonSettings& settings)
    : MatrixOptimizer(NorMuonSettings::kind, std::move(params), settings),
      schedule_(ns_schedule(settings)),
      momentum_(settings),
      beta2_(settings.beta2) {
  for (size_t i = 0; i < this->params().size(); ++i) {
    momentum_buffers_.push_back(add_matrix_buffer(i, "momentum"));
    const Tensor& p = this->params()[i].param;
    row_second_moments_.push_back(add_buffer(this->params()[i].name, "row_second_moment", zeros({p.size(0), 1}, p.dtype(), p.device())));
  }
}

Tensor NorMuon::begin_update(size_t index, const Tensor& grad) {
  return lerp_momentum(momentum_buffers_[index], grad, momentum_.momentum, momentum_.nesterov);
}

Tensor NorMuon::orthogonalize(size_t, const Tensor& input) { return newton_schulz(input, schedule_); }

void NorMuon::finish_update(size_t index, Tensor& weight, const Tensor& ortho) {
  const Tensor row_mean_squares = mean(mul(ortho, ortho), {1}, true);
  Tensor& v = row_second_moments_[index];
  mul_(v, beta2_);
  add_(v, row_mean_squares, 1.0 - beta2_);
  const Tensor inv_rms = rdiv(1.0, add(sqrt(v), 1e-10));
  // ||O||_F^2 / ||O'||_F^2 = sum_i ms_i / sum_i ms_i inv_rms_i^2 (the row length n cancels); the
  // tiny floor keeps a zero update (a parameter whose gradient is zero) at 0 instead of 0/0.
  const Tensor hat_sum = sum(mul(row_mean_squares, mul(inv_rms, inv_rms)));
  const Tensor rescale = sqrt(div(sum(row_mean_squares), add(hat_sum, 1e-30)));
  const double scale = scale_of(weight.size(0), weight.size(1));
  decay_weight(weight);
  add_(weight, mul(ortho, mul(inv_rms, mul(rescale, -lr() * scale))));
}

}  // namespace ml
