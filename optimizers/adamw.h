// AdamW with PyTorch's torch.optim.AdamW semantics (decoupled weight decay, bias correction).
#pragma once
#include <array>

#include "framework/backend.h"  // AdamWStep
#include "optimizers/optimizer.h"

namespace ml {

class AdamW;

// Members start at zero; the defaults are the table's (with_defaults(AdamWSettings::settings())).
struct AdamWSettings {
  using Optimizer = AdamW;
  static constexpr const char* kind = "adamw";
  static const SettingList<AdamWSettings>& settings();
  double lr{};
  double weight_decay{};
  std::array<double, 2> betas{};
  double eps{};
};

// The step written one op per term, as the paper gives it: the reference that adamw_update_ (one
// pass per tensor) is tested against, and the path for tensors that op does not take (a gradient
// that is not contiguous, or of another dtype than the parameter).
void adamw_update_by_ops(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWStep& step);

class AdamW : public Optimizer {
 public:
  AdamW(std::vector<NamedParam> params, const AdamWSettings& settings);

 private:
  void step_impl() override;
  double beta1_, beta2_, eps_, weight_decay_;
  struct Slot {
    Tensor exp_avg, exp_avg_sq;
    int64_t* step;  // per parameter, as in PyTorch: a parameter without a gradient does not advance
  };
  std::vector<Slot> slots_;
};

}  // namespace ml
