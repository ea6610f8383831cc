// Building the configured optimizer for a model's named parameters.
#pragma once
#include <memory>
#include <vector>

#include "optimizers/optimizer.h"
#include "optimizers/optimizer_spec.h"

namespace ml {

// sgd and adamw update every parameter. A Muon-family kind (muon, turbo_muon, cache_muon, dion2,
// rmnp, normuon) updates the matrix parameters of split_parameters(params) and hands the rest to
// spec.non_matrix, combined into one CombinedOptimizer. Throws std::invalid_argument on an unknown
// kind or invalid hyper-parameters.
std::unique_ptr<Optimizer> make_optimizer(const OptimizerSpec& spec, const std::vector<NamedParam>& params);

// The non-matrix optimizer alone (AdamW or SGD as NonMatrixSpec describes).
std::unique_ptr<Optimizer> make_non_matrix_optimizer(const NonMatrixSpec& spec, const std::vector<NamedParam>& params);

}  // namespace ml
