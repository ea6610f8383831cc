#include "optimizers/factory.h"

#include <stdexcept>

#include "optimizers/adamw.h"
#include "optimizers/cache_muon.h"
#include "optimizers/combined.h"
#include "optimizers/dion2.h"
#include "optimizers/muon.h"
#include "optimizers/normuon.h"
#include "optimizers/param_groups.h"
#include "optimizers/rmnp.h"
#include "optimizers/sgd.h"
#include "optimizers/turbo_muon.h"

namespace ml {

namespace {

std::unique_ptr<Optimizer> make_matrix_optimizer(const OptimizerSpec& spec, std::vector<NamedParam> params) {
  if (spec.kind == "muon") return std::make_unique<Muon>(std::move(params), spec);
  if (spec.kind == "turbo_muon") return std::make_unique<TurboMuon>(std::move(params), spec);
  if (spec.kind == "cache_muon") return std::make_unique<CacheMuon>(std::move(params), spec);
  if (spec.kind == "dion2") return std::make_unique<Dion2>(std::move(params), spec);
  if (spec.kind == "rmnp") return std::make_unique<RMNP>(std::move(params), spec);
  if (spec.kind == "normuon") return std::make_unique<NorMuon>(std::move(params), spec);
  return nullptr;
}

}  // namespace

std::unique_ptr<Optimizer> make_non_matrix_optimizer(const NonMatrixSpec& spec, const std::vector<NamedParam>& params) {
  if (spec.kind == "adamw") return std::make_unique<AdamW>(params, spec.lr, spec.betas, spec.eps, spec.weight_decay);
  if (spec.kind == "sgd") return std::make_unique<SGD>(params, spec.lr, spec.momentum, spec.nesterov, spec.weight_decay);
  throw std::invalid_argument("optimizer.non_matrix.kind: unknown '" + spec.kind + "' (expected adamw or sgd)");
}

std::unique_ptr<Optimizer> make_optimizer(const OptimizerSpec& spec, const std::vector<NamedParam>& params) {
  if (spec.kind == "sgd") return std::make_unique<SGD>(params, spec.lr, spec.momentum, spec.nesterov, spec.weight_decay);
  if (spec.kind == "adamw") return std::make_unique<AdamW>(params, spec.lr, spec.betas, spec.eps, spec.weight_decay);
  ParameterSplit split = split_parameters(params);
  std::unique_ptr<Optimizer> matrix = make_matrix_optimizer(spec, std::move(split.matrix));
  if (!matrix)
    throw std::invalid_argument("optimizer.kind: unknown '" + spec.kind +
                                "' (expected sgd, adamw, muon, turbo_muon, cache_muon, dion2, rmnp or normuon)");
  return std::make_unique<CombinedOptimizer>(std::move(matrix), make_non_matrix_optimizer(spec.non_matrix, split.other));
}

}  // namespace ml
