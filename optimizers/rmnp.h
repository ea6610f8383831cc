// RMNP: Muon's momentum with Newton–Schulz replaced by row-wise l2 normalization.
#pragma once
#include "optimizers/matrix_optimizer.h"

namespace ml {

class RMNP;

// Muon's settings less Newton–Schulz's; members start at zero, the defaults are the table's.
struct RmnpSettings : MatrixOptimizerSettings, MomentumSettings {
  using Optimizer = RMNP;
  static constexpr const char* kind = "rmnp";
  static const SettingList<RmnpSettings>& settings();
};

class RMNP : public MatrixOptimizer {
 public:
  RMNP(std::vector<NamedParam> params, const RmnpSettings& settings);

 private:
  Tensor begin_update(size_t index, const Tensor& grad) override;
  Tensor orthogonalize(size_t index, const Tensor& input) override;
  void finish_update(size_t index, Tensor& weight, const Tensor& ortho) override;
  // Row normalization is O(mn), as cheap as exchanging its result: every rank does its own.
  bool shards_orthogonalization() const override { return false; }
  MomentumSettings momentum_;
  std::vector<Tensor> momentum_buffers_;
};

}  // namespace ml
