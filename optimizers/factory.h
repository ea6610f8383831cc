// Building the configured optimizer for a model's named parameters.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "optimizers/adamw.h"
#include "optimizers/cache_muon.h"
#include "optimizers/dion2.h"
#include "optimizers/lion.h"
#include "optimizers/muon.h"
#include "optimizers/normuon.h"
#include "optimizers/optimizer.h"
#include "optimizers/rmnp.h"
#include "optimizers/sgd.h"
#include "optimizers/turbo_muon.h"

namespace ml {

// The optimizers muonlab builds, one settings struct each. A struct is declared beside its
// optimizer's update (optimizers/<name>.h): it names its kind, lists its settings with their
// defaults, bounds and meaning, and the config's `optimizer:` section is read into it
// (experiments/config.cpp). Adding an optimizer adds its struct here.
using OptimizerSettings = std::variant<SgdSettings, AdamWSettings, LionSettings, MuonSettings, TurboMuonSettings,
                                       CacheMuonSettings, Dion2Settings, RmnpSettings, NorMuonSettings>;

// sgd, adamw and lion update every parameter. A Muon-family kind (one whose settings derive from
// MatrixOptimizerSettings) updates the matrix parameters of split_parameters(params) and hands the
// rest to its non_matrix optimizer, combined into one CombinedOptimizer. `seed` is the run's:
// optimizers that draw random numbers (Dion2's random selection) start from it. Throws
// std::invalid_argument on invalid hyper-parameters.
std::unique_ptr<Optimizer> make_optimizer(const OptimizerSettings& settings, const std::vector<NamedParam>& params,
                                          uint64_t seed = 0);

// The non-matrix optimizer alone.
std::unique_ptr<Optimizer> make_non_matrix_optimizer(const NonMatrixSettings& settings,
                                                     const std::vector<NamedParam>& params);

// The learning rate, which every kind has.
double learning_rate(const OptimizerSettings& settings);
void set_learning_rate(OptimizerSettings& settings, double lr);

// The settings of the kind named `kind` with every default filled in, for code that builds an
// optimizer without a config file (tests, benchmarks, the demo). Throws std::invalid_argument on an
// unknown kind.
OptimizerSettings default_optimizer_settings(const std::string& kind);

}  // namespace ml
