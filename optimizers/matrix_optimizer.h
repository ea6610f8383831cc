// Pieces shared by the Muon family: the matrix view of a parameter, the update scaling modes,
// decoupled weight decay, and the spec defaults.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "optimizers/momentum.h"
#include "optimizers/newton_schulz.h"
#include "optimizers/optimizer.h"
#include "optimizers/optimizer_spec.h"

namespace ml {

// How an orthogonalized m x n update (m = fan_out rows, n = fan_in columns) is scaled:
//  keller:    max(1, m/n)^0.5 (Keller Jordan, Muon)
//  moonlight: 0.2 sqrt(max(m, n)), matching AdamW's update RMS so Muon can share its lr and wd
//             (Liu et al., "Muon is Scalable for LLM Training", Moonshot AI 2025, arXiv 2502.16982)
//  spectral:  sqrt(m/n) = sqrt(fan_out/fan_in), the spectral-norm scaling of Yang, Simon & Bernstein,
//             "A Spectral Condition for Feature Learning" (2023, arXiv 2310.17813); Dion2's default.
enum class UpdateScaling { Keller, Moonlight, Spectral };
UpdateScaling parse_update_scaling(const std::string& name);
double update_scale(UpdateScaling scaling, int64_t rows, int64_t cols);

// The spec's value, or the method's default where the spec leaves it open (0 / "").
NsSchedule schedule_from_spec(const OptimizerSpec& spec, int64_t default_steps, const std::string& default_coefficients,
                              bool aol);
UpdateScaling scaling_from_spec(const OptimizerSpec& spec, UpdateScaling method_default);

// Base of the optimizers that treat each parameter as a matrix: 2-D weights as they are, conv
// filters (out, in, kh, kw) as (out, in*kh*kw).
class MatrixOptimizer : public Optimizer {
 public:
  MatrixOptimizer(std::string kind, std::vector<NamedParam> params, double lr, double weight_decay);

 protected:
  // Called for every parameter that has a gradient; `weight` is a view of the parameter.
  virtual void update_matrix(size_t index, Tensor& weight, const Tensor& grad) = 0;
  // W <- W (1 - lr wd): decoupled weight decay (Loshchilov & Hutter), as every Muon variant uses.
  void decay_weight(Tensor& weight) const;
  // The parameter's matrix shape (rows, cols).
  Shape matrix_shape(size_t index) const;
  // A zero buffer of that shape on the parameter's device, registered as "<param name>.<buffer>".
  Tensor add_matrix_buffer(size_t index, const std::string& buffer);

 private:
  void step_impl() final;
  double weight_decay_;
};

}  // namespace ml
