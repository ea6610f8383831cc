// Two optimizers over disjoint parameter groups presented to the trainer as one: the Muon
// family's matrix optimizer plus AdamW/SGD for everything else.
#pragma once
#include <memory>

#include "optimizers/optimizer.h"

namespace ml {

class CombinedOptimizer : public Optimizer {
 public:
  CombinedOptimizer(std::unique_ptr<Optimizer> matrix, std::unique_ptr<Optimizer> other);

  void zero_grad() override;
  void set_lr_scale(double scale) override;
  // The parts' entries under "matrix." and "non_matrix.".
  StateDict state_dict() const override;
  void load_state_dict(const StateDict& state) override;
  // The matrix optimizer's metrics as they are, the other's under "non_matrix.".
  std::map<std::string, double> metrics() const override;
  void set_communicator(Communicator* comm) override;

  Optimizer& matrix_optimizer() { return *matrix_; }
  Optimizer& other_optimizer() { return *other_; }

 private:
  void step_impl() override;
  std::unique_ptr<Optimizer> matrix_;
  std::unique_ptr<Optimizer> other_;
};

}  // namespace ml
