// Building the configured model for the data it trains on.
#pragma once
#include <cstdint>
#include <memory>
#include <variant>
#include <vector>

#include "models/cnn.h"
#include "models/gpt.h"
#include "models/mlp.h"
#include "models/model.h"

namespace ml {

// The models muonlab builds, one settings struct each, declared beside the model
// (models/<name>.h); the config's `model:` section is read into it (experiments/config.cpp).
using ModelSettings = std::variant<GptOptions, CnnOptions, MlpOptions>;

// What the data tells the model: the shape of one input example ({C, H, W}, {features} or
// {block_size}) and the number of classes (classifiers) or tokens (language models).
struct ModelInputs {
  std::vector<int64_t> example_shape;
  int64_t num_classes = 0;
  int64_t vocab_size = 0;
};

// Builds the model of `settings` (validated by the config) with its parameters drawn from `seed`;
// a size the settings leave at 0 is the data's. Throws std::invalid_argument when the settings and
// the data disagree (e.g. a vocab_size smaller than the data's, or images too small for the CNN's
// pooling).
std::shared_ptr<Model> make_model(const ModelSettings& settings, const ModelInputs& inputs, uint64_t seed);

// What the settings ask of the data, 0 where they take the data's: a classifier's classes, a
// language model's vocabulary.
int64_t configured_classes(const ModelSettings& settings);
int64_t configured_vocab_size(const ModelSettings& settings);

}  // namespace ml
