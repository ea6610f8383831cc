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

Dion2::Dion2(std::vector<NamedParam> params, const OptimizerSpec& spec)
    : MatrixOptimizer("dion2", std::move(params), spec.lr, spec.weight_decay),
      schedule_(schedule_from_spec(spec, 5, "polar_express", false)),
      scaling_(scaling_from_spec(spec, UpdateScaling::Spectral)),
      fraction_(spec.fraction),
      ef_decay_(spec.ef_decay),
      generator_(spec.seed) {
  if (spec.selection == "random") {
    random_selection_ = true;
    generator_seed_ = &add_counter("selection_generator.seed");
    generator_offset_ = &add_counter("selection_generator.offset");
    *generator_seed_ = static_cast<int64_t>(spec.seed);
  } else if (spec.selection == "l1") {
    random_selection_ = false;
  } else {
    throw std::invalid_argument("dion2: unknown selection '" + spec.selection + "' (expected l1 or random)");
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
  return newton_schulz(input, schedule_, -lr() * update_scale(scaling_, shape[0], shape[1]));
}

void Dion2::finish_update(size_t index, Tensor& weight, const Tensor& ortho) {
  decay_weight(weight);
  add_at_slices_(weight, selections_[index], ortho);
  selections_[index] = {};
}

}  // namespace ml
