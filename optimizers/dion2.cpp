// Dion2 — Ahn, Amsel & Langford (arXiv 2512.16928), reference microsoft/dion (dion/dion2.py).
// Along the shorter dimension, per step:
//   M <- M + G                     (no decay of the whole buffer: error feedback)
//   idx = top-k slices of M by L1 norm, k = max(1, ceil(fraction * slices)) (or a random subset)
//   S = M[idx];  M[idx] <- ef_decay S      (only the selected slices decay)
//   O = orthogonalize(S)                    (Polar Express Newton–Schulz by default)
//   W <- W (1 - lr wd);  W[idx] -= lr sqrt(fan_out / fan_in) O   (scale from the full shape)
#include "optimizers/dion2.h"

#include <stdexcept>

#include "framework/ops.h"
#include "optimizers/selection.h"

namespace ml {

Dion2Selection dion2_select(const Tensor& momentum, double fraction, bool random, Generator* generator) {
  Dion2Selection s;
  s.dim = momentum.size(0) <= momentum.size(1) ? 0 : 1;
  const int64_t k = selection_count(momentum.size(s.dim), fraction);
  const Tensor scores = random ? random_slice_scores(momentum, s.dim, *generator) : l1_slice_scores(momentum, s.dim);
  s.indices = top_k_indices(scores, k);
  s.selected = index_select(momentum, s.dim, s.indices);
  return s;
}

void add_at_slices_(Tensor& base, const Dion2Selection& selection, const Tensor& update) {
  index_add_(base, selection.dim, selection.indices, update);
}

const EnumNames<SliceSelection>& slice_selection_names() {
  static const EnumNames<SliceSelection> names{{SliceSelection::L1, "l1"}, {SliceSelection::Random, "random"}};
  return names;
}

// Polar Express coefficients for 5 steps, and the spectral scaling sqrt(fan_out / fan_in) of the
// full matrix (the paper's choice).
const SettingList<Dion2Settings>& Dion2Settings::settings() {
  using S = Dion2Settings;
  static const SettingList<S> settings{
      learning_rate_setting<S>(),
      decoupled_weight_decay_setting<S>(),
      ns_steps_setting<S>(5),
      ns_coefficients_setting<S>(NsCoefficients::PolarExpress),
      scaling_setting<S>(UpdateScaling::Spectral),
      number<S>("fraction", &S::fraction, open_closed(0, 1), 0.25, "the share of slices updated per step"),
      number<S>("ef_decay", &S::ef_decay, closed(0, 1), 0.95, "the selected slices' buffer rows decay by this"),
      choice<S>("selection", &S::selection, slice_selection_names(), SliceSelection::L1,
                "which slices: the largest by L1 norm, or uniformly random ones"),
  };
  return settings;
}

Dion2::Dion2(std::vector<NamedParam> params, const Dion2Settings& settings, uint64_t seed)
    : MatrixOptimizer(Dion2Settings::kind, std::move(params), settings),
      schedule_(ns_schedule(settings)),
      fraction_(settings.fraction),
      ef_decay_(settings.ef_decay),
      random_selection_(settings.selection == SliceSelection::Random),
      generator_(seed) {
  if (random_selection_) {
    generator_seed_ = &add_counter("selection_generator.seed");
    generator_offset_ = &add_counter("selection_generator.offset");
    *generator_seed_ = static_cast<int64_t>(seed);
  }
  if (!(fraction_ > 0.0 && fraction_ <= 1.0))
    throw std::invalid_argument("dion2: fraction must lie in (0, 1], got " + std::to_string(fraction_));
  if (!(ef_decay_ >= 0.0 && ef_decay_ <= 1.0))
    throw std::invalid_argument("dion2: ef_decay must lie in [0, 1], got " + std::to_string(ef_decay_));
  for (size_t i = 0; i < this->params().size(); ++i) momentum_buffers_.push_back(add_matrix_buffer(i, "momentum"));
  selections_.resize(this->params().size());
}

Tensor Dion2::begin_update(size_t index, const Tensor& grad) {
  Tensor& momentum = momentum_buffers_[index];
  add_(momentum, grad);
  if (random_selection_)
    generator_.set_state(static_cast<uint64_t>(*generator_seed_), static_cast<uint64_t>(*generator_offset_));
  const Dion2Selection selection = dion2_select(momentum, fraction_, random_selection_, &generator_);
  if (random_selection_) *generator_offset_ = static_cast<int64_t>(generator_.offset());

  const int64_t slices = momentum.size(selection.dim);
  const int64_t k = selection.indices.numel();
  const Tensor decay = scatter_add(ones({slices}, momentum.dtype(), momentum.device()), 0, selection.indices,
                                   full({k}, ef_decay_ - 1.0, momentum.dtype(), momentum.device()));
  mul_(momentum, selection.dim == 0 ? decay.unsqueeze(1) : decay.unsqueeze(0));
  selections_[index] = selection;
  return selection.selected;
}

Tensor Dion2::orthogonalize(size_t index, const Tensor& input) {
  const Shape shape = matrix_shape(index);
  return newton_schulz(input, schedule_, -lr() * scale_of(shape[0], shape[1]));
}

void Dion2::finish_update(size_t index, Tensor& weight, const Tensor& ortho) {
  decay_weight(weight);
  add_at_slices_(weight, selections_[index], ortho);
  selections_[index] = {};
}

}  // namespace ml
