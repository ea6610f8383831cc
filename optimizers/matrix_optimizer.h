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

// Which rank orthogonalizes each of the matrices `shapes` (rows, cols) in a job of `ranks`: whole
// matrices, largest Newton–Schulz cost first (equal shapes stay together; ties in list order),
// each to the rank with the least work so far (ties: the lowest rank). A pure function of its
// arguments, so every rank computes the same plan.
std::vector<int> assign_matrix_owners(const std::vector<Shape>& shapes, int ranks);

// Base of the optimizers that treat each parameter as a matrix: 2-D weights as they are, conv
// filters (out, in, kh, kw) as (out, in*kh*kw).
//
// A matrix's update comes in three parts, so that a data-parallel job can share out the
// expensive middle one (the Keller Jordan / microsoft/dion DDP pattern): every rank runs
// begin_update (the state updates: momentum, selection) on the all-reduced gradient, the matrix's
// owner alone runs orthogonalize, the results are all-gathered, and every rank runs
// finish_update. The state thus stays complete on every rank (rank 0's checkpoint has it all, and
// a run resumes at any number of ranks), and only orthogonalize's result travels. Alone, the
// three parts run back to back for one matrix at a time.
class MatrixOptimizer : public Optimizer {
 public:
  MatrixOptimizer(std::string kind, std::vector<NamedParam> params, double lr, double weight_decay);
  void set_communicator(Communicator* comm) override { comm_ = comm; }

 protected:
  // Called for every parameter that has a gradient: updates the state and returns the input of
  // orthogonalize.
  virtual Tensor begin_update(size_t index, const Tensor& grad) = 0;
  // The expensive part. Must keep no state and keep the input's shape when shards_orthogonalization().
  virtual Tensor orthogonalize(size_t index, const Tensor& input) = 0;
  // Applies orthogonalize's result; `weight` is a matrix view of the parameter.
  virtual void finish_update(size_t index, Tensor& weight, const Tensor& ortho) = 0;
  // false: every rank orthogonalizes every matrix itself (cheap methods, whose results would
  // cost more to exchange than to compute, and stateful ones).
  virtual bool shards_orthogonalization() const { return true; }
  // W <- W (1 - lr wd): decoupled weight decay (Loshchilov & Hutter), as every Muon variant uses.
  void decay_weight(Tensor& weight) const;
  // The parameter's matrix shape (rows, cols).
  Shape matrix_shape(size_t index) const;
  // A zero buffer of that shape on the parameter's device, registered as "<param name>.<buffer>".
  Tensor add_matrix_buffer(size_t index, const std::string& buffer);

 private:
  void step_impl() final;
  // The data-parallel step: the orthogonalizations shared out between the ranks of comm_.
  void sharded_step(const std::vector<size_t>& present);
  double weight_decay_;
  Communicator* comm_ = nullptr;
};

}  // namespace ml
