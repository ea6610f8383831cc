// Muon: momentum, then Newton–Schulz orthogonalization of the update.
#pragma once
#include "optimizers/matrix_optimizer.h"

namespace ml {

class Muon;

// Members start at zero; the defaults are the table's (with_defaults(MuonSettings::settings())).
struct MuonSettings : MatrixOptimizerSettings, MomentumSettings, NewtonSchulzSettings {
  using Optimizer = Muon;
  static constexpr const char* kind = "muon";
  static const SettingList<MuonSettings>& settings();
  bool renormalize{};
};

class Muon : public MatrixOptimizer {
 public:
  Muon(std::vector<NamedParam> params, const MuonSettings& settings);

 protected:
  // For Turbo-Muon: the kind and the Newton–Schulz schedule are the variant's.
  Muon(std::string kind, std::vector<NamedParam> params, const MatrixOptimizerSettings& settings,
       const MomentumSettings& momentum, NsSchedule schedule, bool renormalize);
  Tensor begin_update(size_t index, const Tensor& grad) override;
  Tensor orthogonalize(size_t index, const Tensor& input) override;
  void finish_update(size_t index, Tensor& weight, const Tensor& ortho) override;
  bool stacks_orthogonalization() const override { return true; }

 private:
  NsSchedule schedule_;
  MomentumSettings momentum_;
  bool renormalize_;  // W <- W sqrt(rows) / ||W||_F before each update (airbench94_muon)
  std::vector<Tensor> momentum_buffers_;
};

}  // namespace ml
