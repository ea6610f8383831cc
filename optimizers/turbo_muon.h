// Turbo-Muon: Muon with AOL-preconditioned Newton–Schulz.
#pragma once
#include "optimizers/muon.h"

namespace ml {

// 4 iterations with the last four "Muon+" triples unless the spec says otherwise.
class TurboMuon : public Muon {
 public:
  TurboMuon(std::vector<NamedParam> params, const OptimizerSpec& spec);
};

}  // namespace ml
