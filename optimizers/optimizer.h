// The optimizer interface the trainer sees. An optimizer owns a list of named parameters and
// every piece of state it keeps between steps: buffers (tensors on the parameters' device, named
// "<parameter name>.<buffer>") and integer counters (step counts, cache ages, generator offsets).
// Both round-trip through state_dict()/load_state_dict(), so a resumed run continues bit for bit.
//
// All state is created when the optimizer is constructed (zeros), not at the first step: the
// set of state entries is then fixed, and load_state_dict can check a checkpoint strictly.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "framework/settings.h"
#include "framework/tensor.h"

namespace ml {

// The two settings every optimizer has, as rows of its settings table (framework/settings.h).
template <typename S>
Setting<S> learning_rate_setting() {
  return number<S>("lr", &S::lr, greater_than(0), kRequired, "learning rate: the step size at the top of the schedule");
}
template <typename S>
Setting<S> weight_decay_setting(std::string meaning) {
  return number<S>("weight_decay", &S::weight_decay, at_least(0), 0.0, std::move(meaning));
}
// The weight decay of the optimizers that apply it with Optimizer::decay_weight (all but SGD).
template <typename S>
Setting<S> decoupled_weight_decay_setting() {
  return weight_decay_setting<S>("decoupled weight decay wd: W <- W (1 - lr wd) before the step");
}
// The two decay rates `betas` (b1, b2) of AdamW and Lion; `meaning` says what each one weighs.
template <typename S>
Setting<S> betas_setting(std::array<double, 2> fallback, std::string meaning) {
  return number_pair<S>("betas", &S::betas, closed_open(0, 1), fallback, std::move(meaning));
}
// Throws std::invalid_argument unless both rates lie in betas_setting's bounds, [0, 1): settings
// built in code skip the config reader's check.
void check_betas(const std::string& kind, const std::array<double, 2>& betas);

class Communicator;

struct NamedParam {
  std::string name;
  Tensor param;
};

// Counters appear as 0-d Int64 tensors beside the buffers.
using StateDict = std::map<std::string, Tensor>;

class Optimizer {
 public:
  // `kind` names the optimizer in error messages; `lr` is the configured learning rate.
  Optimizer(std::string kind, std::vector<NamedParam> params, double lr);
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // One update of every parameter that has a gradient, with history recording off.
  void step();
  // Drops the gradients (PyTorch's set_to_none).
  virtual void zero_grad();
  // The schedule's multiplier: the effective learning rate is lr * scale.
  virtual void set_lr_scale(double scale);
  double lr_scale() const { return lr_scale_; }
  double base_lr() const { return base_lr_; }

  virtual StateDict state_dict() const;
  // Restores every buffer and counter; throws std::runtime_error listing all missing, unexpected
  // and mismatched entries (and changes nothing) unless `state` matches this optimizer exactly.
  virtual void load_state_dict(const StateDict& state);

  // Quantities worth logging (name -> value); empty unless the optimizer measures something.
  virtual std::map<std::string, double> metrics() const { return {}; }

  // The ranks of a data-parallel job that step this optimizer together, each with the same
  // (all-reduced) gradients. Every rank keeps the complete state and updates it redundantly; an
  // optimizer may split expensive work between the ranks (the Muon family's orthogonalization)
  // as long as every rank ends the step with the same parameters and state. The default ignores
  // it: elementwise updates cost less than exchanging their results. null: this process alone.
  virtual void set_communicator(Communicator* comm) { (void)comm; }

  const std::string& kind() const { return kind_; }
  const std::vector<NamedParam>& params() const { return params_; }

 protected:
  virtual void step_impl() = 0;
  double lr() const { return base_lr_ * lr_scale_; }
  // W <- W (1 - lr wd): decoupled weight decay (Loshchilov & Hutter), applied before the step.
  void decay_weight(Tensor& weight, double weight_decay) const;

  // Registers a buffer under "<owner>.<buffer>" and returns it (a handle sharing its storage:
  // load_state_dict writes into it in place).
  Tensor add_buffer(const std::string& owner, const std::string& buffer, const Tensor& initial);
  // Registers a counter, initially 0. The reference stays valid for the optimizer's lifetime.
  int64_t& add_counter(const std::string& key);

 private:
  std::string kind_;
  std::vector<NamedParam> params_;
  double base_lr_;
  double lr_scale_ = 1.0;
  std::map<std::string, Tensor> buffers_;
  std::map<std::string, int64_t> counters_;
};

}  // namespace ml
