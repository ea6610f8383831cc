// Which parameters the Muon family orthogonalizes. Muon is meant for the hidden weight matrices
// (and conv filters, as (out, in*kh*kw) matrices): an embedding is a lookup table and the output
// head maps to logits, and neither behaves like a hidden linear map, while vectors (biases, norm
// gains) have no matrix structure at all (Keller Jordan, "Muon", 2024; same split in
// modded-nanogpt and the CIFAR-10 airbench). Those go to a second optimizer, one of the kinds of
// NonMatrixSettings (optimizers/matrix_optimizer.h).
#pragma once
#include <string>
#include <vector>

#include "optimizers/optimizer.h"

namespace ml {

// Name fragments of parameters kept away from the matrix optimizer even when they are 2-D or
// 4-D, following the models' naming convention:
//   "wte", "wpe"  GPT token and position embeddings (the tied output head is the same tensor),
//   "head"        the output layer of GPT and of the CNN,
//   "stem"        the CNN's first convolution (it sees raw pixels, not hidden features),
//   "embed"       any other embedding table.
const std::vector<std::string>& default_non_matrix_fragments();

struct ParameterSplit {
  std::vector<NamedParam> matrix;  // for the Muon-family optimizer
  std::vector<NamedParam> other;   // for AdamW / SGD
};

// A parameter is a matrix parameter when it has 2 or 4 dimensions and its name contains none of
// `excluded_fragments`. Order within each group follows `params`.
ParameterSplit split_parameters(const std::vector<NamedParam>& params,
                                const std::vector<std::string>& excluded_fragments = default_non_matrix_fragments());

}  // namespace ml
