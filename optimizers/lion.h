// Lion (EvoLved Sign Momentum): the sign of an interpolated momentum as the step, with decoupled
// weight decay; one state buffer per parameter where AdamW keeps two.
#pragma once
#include <array>

#include "optimizers/optimizer.h"

namespace ml {

class Lion;

// Members start at zero; the defaults are the table's (with_defaults(LionSettings::settings())).
struct LionSettings {
  using Optimizer = Lion;
  static constexpr const char* kind = "lion";
  static const SettingList<LionSettings>& settings();
  double lr{};
  double weight_decay{};
  std::array<double, 2> betas{};
};

class Lion : public Optimizer {
 public:
  Lion(std::vector<NamedParam> params, const LionSettings& settings);

 private:
  void step_impl() override;
  double beta1_, beta2_, weight_decay_;
  std::vector<Tensor> exp_avgs_;  // m, one per parameter
};

}  // namespace ml
