// Dion2: orthonormalize only a selected fraction of the rows (or columns) of the momentum, with
// error feedback for the rest; the update is sparse.
#pragma once
#include "framework/random.h"
#include "optimizers/matrix_optimizer.h"

namespace ml {

// Dion2's choice of slices of `momentum` along its shorter dimension: the top
// max(1, ceil(fraction * slices)) by L1 norm, or uniformly random ones drawn from `generator`.
// Used by the optimizer and the ortho benchmark.
struct Dion2Selection {
  int64_t dim = 0;   // 0: rows were selected, 1: columns
  Tensor indices;    // Int64 [k], ascending
  Tensor selected;   // momentum.index_select(dim, indices)
};
Dion2Selection dion2_select(const Tensor& momentum, double fraction, bool random, Generator* generator);
// base += update at the selected slices (update has the shape of `selected`), in place.
void add_at_slices_(Tensor& base, const Dion2Selection& selection, const Tensor& update);

// Which slices Dion2 updates: the largest by L1 norm, or a uniformly random subset.
enum class SliceSelection { L1, Random };
const EnumNames<SliceSelection>& slice_selection_names();  // l1 | random

class Dion2;

// Members start at zero; the defaults are the table's (with_defaults(Dion2Settings::settings())).
struct Dion2Settings : MatrixOptimizerSettings, NewtonSchulzSettings {
  using Optimizer = Dion2;
  static constexpr const char* kind = "dion2";
  static const SettingList<Dion2Settings>& settings();
  double fraction{};
  double ef_decay{};
  SliceSelection selection{};
};

class Dion2 : public MatrixOptimizer {
 public:
  // `seed` starts the random selection's generator (the run's seed).
  Dion2(std::vector<NamedParam> params, const Dion2Settings& settings, uint64_t seed = 0);

 private:
  // M <- M + G, the selection and the decay of the selected slices; returns them (k slices).
  Tensor begin_update(size_t index, const Tensor& grad) override;
  // -lr scale NS(selected): only these k slices travel between ranks.
  Tensor orthogonalize(size_t index, const Tensor& input) override;
  void finish_update(size_t index, Tensor& weight, const Tensor& ortho) override;
  NsSchedule schedule_;
  double fraction_;
  double ef_decay_;
  bool random_selection_;
  Generator generator_;
  int64_t* generator_seed_ = nullptr;  // checkpointed generator state (random selection only)
  int64_t* generator_offset_ = nullptr;
  std::vector<Tensor> momentum_buffers_;
  std::vector<Dion2Selection> selections_;  // of the step in progress, from begin_update to finish_update
};

}  // namespace ml
