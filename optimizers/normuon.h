// NorMuon: Muon followed by a per-row (per-neuron) adaptive normalization of the orthogonalized update.
#pragma once
#include "optimizers/matrix_optimizer.h"

namespace ml {

class NorMuon : public MatrixOptimizer {
 public:
  NorMuon(std::vector<NamedParam> params, const OptimizerSpec& spec);

 private:
  Tensor begin_update(size_t index, const Tensor& grad) override;
  Tensor orthogonalize(size_t index, const Tensor& input) override;
  // The row second moments are updated here, from the gathered O, on every rank.
  void finish_update(size_t index, Tensor& weight, const Tensor& ortho) override;
  NsSchedule schedule_;
  UpdateScaling scaling_;
  double momentum_;
  bool nesterov_;
  double beta2_;
  std::vector<Tensor> momentum_buffers_;
  std::vector<Tensor> row_second_moments_;  // [rows, 1]
};

}  // namespace ml
