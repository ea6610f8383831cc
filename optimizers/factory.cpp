#include "optimizers/factory.h"

#include <stdexcept>
#include <type_traits>

#include "optimizers/combined.h"
#include "optimizers/param_groups.h"

namespace ml {

namespace {

template <typename S>
std::unique_ptr<Optimizer> construct(std::vector<NamedParam> params, const S& settings, uint64_t seed) {
  using Class = typename S::Optimizer;
  if constexpr (std::is_constructible_v<Class, std::vector<NamedParam>, const S&, uint64_t>)
    return std::make_unique<Class>(std::move(params), settings, seed);
  else
    return std::make_unique<Class>(std::move(params), settings);
}

}  // namespace

std::unique_ptr<Optimizer> make_non_matrix_optimizer(const NonMatrixSettings& settings,
                                                     const std::vector<NamedParam>& params) {
  return std::visit([&](const auto& s) { return construct(params, s, 0); }, settings);
}

std::unique_ptr<Optimizer> make_optimizer(const OptimizerSettings& settings, const std::vector<NamedParam>& params,
                                          uint64_t seed) {
  return std::visit(
      [&](const auto& s) -> std::unique_ptr<Optimizer> {
        if constexpr (std::is_base_of_v<MatrixOptimizerSettings, std::decay_t<decltype(s)>>) {
          ParameterSplit split = split_parameters(params);
          return std::make_unique<CombinedOptimizer>(construct(std::move(split.matrix), s, seed),
                                                     make_non_matrix_optimizer(s.non_matrix, split.other));
        } else {
          return construct(params, s, seed);
        }
      },
      settings);
}

double learning_rate(const OptimizerSettings& settings) {
  return std::visit([](const auto& s) { return s.lr; }, settings);
}

void set_learning_rate(OptimizerSettings& settings, double lr) {
  std::visit([lr](auto& s) { s.lr = lr; }, settings);
}

OptimizerSettings default_optimizer_settings(const std::string& kind) {
  const std::optional<OptimizerSettings> settings = kind_with_defaults<OptimizerSettings>(kind);
  if (!settings) {
    std::string known;
    for (const std::string& name : kind_names<OptimizerSettings>()) known += (known.empty() ? "" : ", ") + name;
    throw std::invalid_argument("optimizer.kind: unknown '" + kind + "' (expected one of " + known + ")");
  }
  return *settings;
}

}  // namespace ml
