// Muon: momentum, then Newton–Schulz orthogonalization of the update.
#pragma once
#include "optimizers/matrix_optimizer.h"

namespace ml {

class Muon : public MatrixOptimizer {
 public:
  // Keller's coefficients for 5 steps unless the spec says otherwise.
  Muon(std::vector<NamedParam> params, const OptimizerSpec& spec);

 protected:
  // For Turbo-Muon: the kind and the Newton–Schulz schedule are the variant's.
  Muon(std::string kind, std::vector<NamedParam> params, const OptimizerSpec& spec, NsSchedule schedule);
  Tensor begin_update(size_t index, const Tensor& grad) override;
  Tensor orthogonalize(size_t index, const Tensor& input) override;
  void finish_update(size_t index, Tensor& weight, const Tensor& ortho) override;

 private:
  NsSchedule schedule_;
  UpdateScaling scaling_;
  double momentum_;
  bool nesterov_;
  bool renormalize_;  // W <- W sqrt(rows) / ||W||_F before each update (airbench94_muon)
  std::vector<Tensor> momentum_buffers_;
};

}  // namespace ml
