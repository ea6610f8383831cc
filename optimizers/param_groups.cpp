#include "optimizers/param_groups.h"

namespace ml {

const std::vector<std::string>& default_non_matrix_fragments() {
  static const std::vector<std::string> fragments{"wte", "wpe", "head", "stem", "embed"};
  return fragments;
}

ParameterSplit split_parameters(const std::vector<NamedParam>& params, const std::vector<std::string>& excluded_fragments) {
  ParameterSplit split;
  for (const NamedParam& p : params) {
    bool excluded = false;
    for (const std::string& fragment : excluded_fragments) excluded = excluded || p.name.find(fragment) != std::string::npos;
    const bool matrix_shaped = p.param.dim() == 2 || p.param.dim() == 4;
    (matrix_shaped && !excluded ? split.matrix : split.other).push_back(p);
  }
  return split;
}

}  // namespace ml
