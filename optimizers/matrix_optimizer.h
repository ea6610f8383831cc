// Pieces shared by the Muon family: the matrix view of a parameter, the update scaling modes,
// decoupled weight decay, and the settings every member has.
#pragma once
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "optimizers/adamw.h"
#include "optimizers/lion.h"
#include "optimizers/momentum.h"
#include "optimizers/newton_schulz.h"
#include "optimizers/optimizer.h"
#include "optimizers/sgd.h"

namespace ml {

// How an orthogonalized m x n update (m = fan_out rows, n = fan_in columns) is scaled:
//  keller:    max(1, m/n)^0.5 (Keller Jordan, Muon)
//  moonlight: 0.2 sqrt(max(m, n)), matching AdamW's update RMS so Muon can share its lr and wd
//             (Liu et al., "Muon is Scalable for LLM Training", Moonshot AI 2025, arXiv 2502.16982)
//  spectral:  sqrt(m/n) = sqrt(fan_out/fan_in), the spectral-norm scaling of Yang, Simon & Bernstein,
//             "A Spectral Condition for Feature Learning" (2023, arXiv 2310.17813); Dion2's default.
enum class UpdateScaling { Keller, Moonlight, Spectral };
const EnumNames<UpdateScaling>& update_scaling_names();  // keller | moonlight | spectral
double update_scale(UpdateScaling scaling, int64_t rows, int64_t cols);

// The optimizer of the parameters a Muon-family optimizer does not handle (embeddings, output
// head, first conv, biases, norm gains): the first alternative is the default.
using NonMatrixSettings = std::variant<AdamWSettings, SgdSettings, LionSettings>;
// Its defaults in that role, by kind, where they differ from the optimizer's own: the AdamW of
// the Muon README example, SGD with Nesterov momentum, and Lion at a third of that AdamW's rate
// (the paper's advice: 3-10x smaller than AdamW's; 1e-4 is also the reference code's default).
const std::vector<std::pair<std::string, OtherDefaults>>& non_matrix_defaults();
// The settings table of the non-matrix kind S in that role.
template <typename S>
SettingList<S> non_matrix_settings() {
  for (const auto& [kind, defaults] : non_matrix_defaults())
    if (kind == S::kind) return with_other_defaults(S::settings(), defaults);
  return S::settings();
}
// AdamW with the role's defaults.
NonMatrixSettings default_non_matrix_settings();

// The settings every Muon-family optimizer has; each one's settings struct derives from it.
struct MatrixOptimizerSettings {
  double lr{};
  double weight_decay{};
  UpdateScaling scaling{};
  NonMatrixSettings non_matrix = default_non_matrix_settings();
};
// Those of the members with a momentum coefficient (all but Dion2).
struct MomentumSettings {
  double momentum{};
  bool nesterov{};
};
// Those of the members that run Newton–Schulz (all but RMNP).
struct NewtonSchulzSettings {
  int64_t ns_steps{};
  NsCoefficients ns_coefficients{};
};
NsSchedule ns_schedule(const NewtonSchulzSettings& settings, bool aol = false);

// The rows of the Muon family's settings tables (framework/settings.h), for a struct S derived
// from the structs above. The defaults that differ by method are arguments.
template <typename S>
Setting<S> momentum_setting(std::string meaning) {
  return number<S>("momentum", &S::momentum, closed_open(0, 1), 0.95, std::move(meaning));
}
template <typename S>
Setting<S> nesterov_setting() {
  return boolean<S>("nesterov", &S::nesterov, true, "orthogonalize the Nesterov look-ahead instead of the buffer");
}
template <typename S>
Setting<S> ns_steps_setting(int64_t fallback) {
  return integer<S>("ns_steps", &S::ns_steps, closed(1, 20), fallback, "Newton-Schulz iterations");
}
template <typename S>
Setting<S> ns_coefficients_setting(NsCoefficients fallback) {
  return choice<S, NsCoefficients>("ns_coefficients", &S::ns_coefficients, ns_coefficient_names(), fallback,
                   "the (a, b, c) triples of the Newton-Schulz iterations");
}
template <typename S>
Setting<S> scaling_setting(UpdateScaling fallback) {
  return choice<S, UpdateScaling>("scaling", &S::scaling, update_scaling_names(), fallback,
                   "how the orthogonalized update is scaled for the matrix's shape");
}
// Muon's rows, which the methods built on its momentum and Newton–Schulz share.
template <typename S>
SettingList<S> muon_settings(int64_t ns_steps, NsCoefficients ns_coefficients) {
  return {learning_rate_setting<S>(),
          decoupled_weight_decay_setting<S>(),
          momentum_setting<S>("momentum beta: M <- beta M + (1 - beta) G"),
          nesterov_setting<S>(),
          ns_steps_setting<S>(ns_steps),
          ns_coefficients_setting<S>(ns_coefficients),
          scaling_setting<S>(UpdateScaling::Keller)};
}

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
// three parts run back to back for one matrix at a time, or, for the methods that
// stacks_orthogonalization(), with the same-shape matrices' orthogonalizations as one stack.
class MatrixOptimizer : public Optimizer {
 public:
  MatrixOptimizer(std::string kind, std::vector<NamedParam> params, const MatrixOptimizerSettings& settings);
  void set_communicator(Communicator* comm) override { comm_ = comm; }

 protected:
  // Called for every parameter that has a gradient: updates the state and returns the input of
  // orthogonalize.
  virtual Tensor begin_update(size_t index, const Tensor& grad) = 0;
  // The expensive part. Must keep no state and keep the input's shape when shards_orthogonalization().
  // Where stacks_orthogonalization(), `input` may be a stack [G, rows, cols] of G same-shape
  // matrices (`index`: the first of them), whose results come back stacked in the same order.
  virtual Tensor orthogonalize(size_t index, const Tensor& input) = 0;
  // Applies orthogonalize's result; `weight` is a matrix view of the parameter.
  virtual void finish_update(size_t index, Tensor& weight, const Tensor& ortho) = 0;
  // false: every rank orthogonalizes every matrix itself (cheap methods, whose results would
  // cost more to exchange than to compute, and stateful ones).
  virtual bool shards_orthogonalization() const { return true; }
  // true: orthogonalize is a stateless function of the input and the matrix shape that takes a
  // stack (Newton-Schulz): a step then solves a group of G same-shape matrices at once where the
  // backend says batched products pay (Backend::batched_products_pay for G of the solve's k x k
  // products): one batched product per iteration instead of G (on a GPU the launches, not the
  // FLOPs, are most of a small model's optimizer step; on the CPU, small matrices on 2+ threads).
  virtual bool stacks_orthogonalization() const { return false; }
  // Optimizer::decay_weight with the configured weight decay, as every Muon variant uses it.
  void decay_weight(Tensor& weight) const { Optimizer::decay_weight(weight, weight_decay_); }
  // The configured scaling of a rows x cols update.
  double scale_of(int64_t rows, int64_t cols) const { return update_scale(scaling_, rows, cols); }
  // The parameter's matrix shape (rows, cols).
  Shape matrix_shape(size_t index) const;
  // A zero buffer of that shape on the parameter's device, registered as "<param name>.<buffer>".
  Tensor add_matrix_buffer(size_t index, const std::string& buffer);

 private:
  void step_impl() final;
  // The single-process step with same-shape matrices stacked (stacks_orthogonalization()).
  void stacked_step(const std::vector<size_t>& present);
  // begin_update on the parameter's gradient viewed as its matrix.
  Tensor begin_update_of(size_t index);
  // One matrix's three parts, back to back.
  void update_alone(size_t index);
  // The data-parallel step: the orthogonalizations shared out between the ranks of comm_.
  void sharded_step(const std::vector<size_t>& present);
  double weight_decay_;
  UpdateScaling scaling_;
  Communicator* comm_ = nullptr;
};

}  // namespace ml
