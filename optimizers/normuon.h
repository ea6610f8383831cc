// NorMuon: Muon followed by a per-row (per-neuron) adaptive normalization of the orthogonalized update.
#pragma once
#include "optimizers/matrix_optimizer.h"

namespace ml {

class NorMuon;

// Muon's settings plus beta2; members start at zero, the defaults are the table's.
struct NorMuonSettings : MatrixOptimizerSettings, MomentumSettings, NewtonSchulzSettings {
  using Optimizer = NorMuon;
  static constexpr const char* kind = "normuon";
  static const SettingList<NorMuonSettings>& settings();
  double beta2{};
};

class NorMuon : public MatrixOptimizer {
 public:
  NorMuon(std::vector<NamedParam> params, const NorMuonSettings& settings);

 private:
  Tensor begin_update(size_t index, const Tensor& grad) override;
  Tensor orthogonalize(size_t index, const Tensor& input) override;
  bool stacks_orthogonalization() const override { return true; }
  // The row second moments are updated here, from the gathered O, on every rank.
  void finish_update(size_t index, Tensor& weight, const Tensor& ortho) override;
  NsSchedule schedule_;
  MomentumSettings momentum_;
  double beta2_;
  std::vector<Tensor> momentum_buffers_;
  std::vector<Tensor> row_second_moments_;  // [rows, 1]
};

}  // namespace ml
