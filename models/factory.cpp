#include "models/factory.h"

#include <stdexcept>

#include "framework/random.h"

namespace ml {
namespace {

int64_t class_count(int64_t configured, const ModelInputs& inputs) {
  if (configured == 0) return inputs.num_classes;
  if (configured < inputs.num_classes)
    throw std::invalid_argument("model.num_classes " + std::to_string(configured) + " is smaller than the data's " +
                                std::to_string(inputs.num_classes) + " classes");
  return configured;
}

std::shared_ptr<Model> build(const GptOptions& settings, const ModelInputs& inputs, Generator& gen) {
  if (inputs.example_shape.size() != 1)
    throw std::invalid_argument("model.kind gpt needs token sequences as input");
  GptOptions options = settings;
  options.vocab_size = settings.vocab_size == 0 ? inputs.vocab_size : settings.vocab_size;
  if (options.vocab_size < inputs.vocab_size)
    throw std::invalid_argument("model.vocab_size " + std::to_string(settings.vocab_size) +
                                " is smaller than the data's vocabulary of " + std::to_string(inputs.vocab_size));
  options.block_size = settings.block_size == 0 ? inputs.example_shape[0] : settings.block_size;
  if (options.block_size < inputs.example_shape[0])
    throw std::invalid_argument("model.block_size " + std::to_string(settings.block_size) +
                                " is shorter than data.block_size " + std::to_string(inputs.example_shape[0]));
  return std::make_shared<Gpt>(options, gen);
}

std::shared_ptr<Model> build(const CnnOptions& settings, const ModelInputs& inputs, Generator& gen) {
  if (inputs.example_shape.size() != 3) throw std::invalid_argument("model.kind cnn needs images [C, H, W] as input");
  CnnOptions options = settings;
  options.in_channels = settings.in_channels == 0 ? inputs.example_shape[0] : settings.in_channels;
  if (options.in_channels != inputs.example_shape[0])
    throw std::invalid_argument("model.in_channels " + std::to_string(settings.in_channels) + " does not match the " +
                                std::to_string(inputs.example_shape[0]) + " channels of the data");
  const int64_t min_size = Cnn::min_image_size(settings.widths.size());
  if (inputs.example_shape[1] < min_size || inputs.example_shape[2] < min_size)
    throw std::invalid_argument("model.widths: " + std::to_string(settings.widths.size()) + " conv groups need images of at least " +
                                std::to_string(min_size) + "x" + std::to_string(min_size) + ", the data has " +
                                std::to_string(inputs.example_shape[1]) + "x" + std::to_string(inputs.example_shape[2]));
  options.num_classes = class_count(settings.num_classes, inputs);
  return std::make_shared<Cnn>(options, gen);
}

std::shared_ptr<Model> build(const MlpOptions& settings, const ModelInputs& inputs, Generator& gen) {
  MlpOptions options = settings;
  options.in_features = 1;
  for (int64_t size : inputs.example_shape) options.in_features *= size;
  options.num_classes = class_count(settings.num_classes, inputs);
  return std::make_shared<Mlp>(options, gen);
}

}  // namespace

std::shared_ptr<Model> make_model(const ModelSettings& settings, const ModelInputs& inputs, uint64_t seed) {
  Generator gen(seed);
  return std::visit([&](const auto& s) { return build(s, inputs, gen); }, settings);
}

int64_t configured_classes(const ModelSettings& settings) {
  if (const auto* cnn = std::get_if<CnnOptions>(&settings)) return cnn->num_classes;
  if (const auto* mlp = std::get_if<MlpOptions>(&settings)) return mlp->num_classes;
  return 0;
}

int64_t configured_vocab_size(const ModelSettings& settings) {
  const auto* gpt = std::get_if<GptOptions>(&settings);
  return gpt ? gpt->vocab_size : 0;
}

}  // namespace ml
