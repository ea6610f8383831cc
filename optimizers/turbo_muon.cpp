// Turbo-Muon — Boissin, Massena, Mamalet & Serrurier, "Turbo-Muon: Accelerating Orthogonality-Based
// Optimization with Pre-Conditioning" (arXiv 2512.04632), reference thib-s/flash-newton-schulz.
// Muon's update with the Newton–Schulz input preconditioned by AOL (Prach & Lampert 2022):
//   A = X X^T;  s_i = max(sum_j |A_ij|, 1e-7)^(-1/2);  X <- diag(s) X;  A <- diag(s) A diag(s)
// (implemented in newton_schulz.cpp, where the first iteration reuses that A), which lets one of
// the five iterations go: 4 iterations with the "Muon+" triples 2-5.
#include "optimizers/turbo_muon.h"

namespace ml {

// 4 iterations with the last four "Muon+" triples.
const SettingList<TurboMuonSettings>& TurboMuonSettings::settings() {
  static const SettingList<TurboMuonSettings> settings = muon_settings<TurboMuonSettings>(4, NsCoefficients::MuonPlus);
  return settings;
}

TurboMuon::TurboMuon(std::vector<NamedParam> params, const TurboMuonSettings& settings)
    : Muon(TurboMuonSettings::kind, std::move(params), settings, settings, ns_schedule(settings, true), false) {}

}  // namespace ml
