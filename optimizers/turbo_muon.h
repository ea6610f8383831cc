// Turbo-Muon: Muon with AOL-preconditioned Newton–Schulz.
#pragma once
#include "optimizers/muon.h"

namespace ml {

class TurboMuon;

// Muon's settings less `renormalize`; members start at zero, the defaults are the table's.
struct TurboMuonSettings : MatrixOptimizerSettings, MomentumSettings, NewtonSchulzSettings {
  using Optimizer = TurboMuon;
  static constexpr const char* kind = "turbo_muon";
  static const SettingList<TurboMuonSettings>& settings();
};

class TurboMuon : public Muon {
 public:
  TurboMuon(std::vector<NamedParam> params, const TurboMuonSettings& settings);
};

}  // namespace ml
