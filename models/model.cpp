#include "models/model.h"

#include <cstdio>
#include <stdexcept>

#include "framework/random.h"
#include "models/cnn.h"
#include "models/gpt.h"
#include "models/mlp.h"

namespace ml {
namespace {

int64_t class_count(const ModelConfig& config, const ModelInputs& inputs) {
  if (config.num_classes == 0) return inputs.num_classes;
  if (config.num_classes < inputs.num_classes)
    throw std::invalid_argument("model.num_classes " + std::to_string(config.num_classes) +
                                " is smaller than the data's " + std::to_string(inputs.num_classes) + " classes");
  return config.num_classes;
}

std::shared_ptr<Model> make_gpt(const ModelConfig& config, const ModelInputs& inputs, Generator& gen) {
  if (inputs.example_shape.size() != 1)
    throw std::invalid_argument("model.kind gpt needs token sequences as input");
  GptOptions options;
  options.vocab_size = config.vocab_size == 0 ? inputs.vocab_size : config.vocab_size;
  if (options.vocab_size < inputs.vocab_size)
    throw std::invalid_argument("model.vocab_size " + std::to_string(config.vocab_size) +
                                " is smaller than the data's vocabulary of " + std::to_string(inputs.vocab_size));
  options.block_size = config.block_size == 0 ? inputs.example_shape[0] : config.block_size;
  if (options.block_size < inputs.example_shape[0])
    throw std::invalid_argument("model.block_size " + std::to_string(config.block_size) +
                                " is shorter than data.block_size " + std::to_string(inputs.example_shape[0]));
  options.n_layer = config.n_layer;
  options.n_head = config.n_head;
  options.n_embd = config.n_embd;
  options.mlp_ratio = config.mlp_ratio;
  options.rmsnorm = config.norm == "rmsnorm";
  options.rotary = config.position == "rotary";
  options.relu2 = config.activation == "relu2";
  options.tie_weights = config.tie_weights;
  options.bias = config.bias;
  options.dropout = config.dropout;
  options.attention = config.attention == "fused" ? AttentionImpl::Fused : AttentionImpl::Composed;
  return std::make_shared<Gpt>(options, gen);
}

std::shared_ptr<Model> make_cnn(const ModelConfig& config, const ModelInputs& inputs, Generator& gen) {
  if (inputs.example_shape.size() != 3) throw std::invalid_argument("model.kind cnn needs images [C, H, W] as input");
  CnnOptions options;
  options.in_channels = config.in_channels == 0 ? inputs.example_shape[0] : config.in_channels;
  if (options.in_channels != inputs.example_shape[0])
    throw std::invalid_argument("model.in_channels " + std::to_string(config.in_channels) + " does not match the " +
                                std::to_string(inputs.example_shape[0]) + " channels of the data");
  const int64_t min_size = Cnn::min_image_size(config.widths.size());
  if (inputs.example_shape[1] < min_size || inputs.example_shape[2] < min_size)
    throw std::invalid_argument("model.widths: " + std::to_string(config.widths.size()) + " conv groups need images of at least " +
                                std::to_string(min_size) + "x" + std::to_string(min_size) + ", the data has " +
                                std::to_string(inputs.example_shape[1]) + "x" + std::to_string(inputs.example_shape[2]));
  options.stem_width = config.stem_width;
  options.widths = config.widths;
  options.num_classes = class_count(config, inputs);
  options.relu = config.activation == "relu";
  options.bn_momentum = config.bn_momentum;
  options.logit_divisor = config.logit_divisor;
  options.dropout = config.dropout;
  options.bn_eps = config.bn_eps;
  options.bn_freeze_weight = config.bn_freeze_weight;
  options.dirac_init = config.dirac_init;
  options.head_init_std = config.head_init_std;
  options.whiten = config.whiten;
  options.whiten_examples = config.whiten_examples;
  options.whiten_eps = config.whiten_eps;
  options.whiten_bias_epochs = config.whiten_bias_epochs;
  return std::make_shared<Cnn>(options, gen);
}

std::shared_ptr<Model> make_mlp(const ModelConfig& config, const ModelInputs& inputs, Generator& gen) {
  MlpOptions options;
  options.in_features = 1;
  for (int64_t size : inputs.example_shape) options.in_features *= size;
  options.hidden = config.hidden;
  options.num_classes = class_count(config, inputs);
  options.activation = config.activation == "gelu"   ? MlpActivation::Gelu
                       : config.activation == "tanh" ? MlpActivation::Tanh
                                                     : MlpActivation::Relu;
  options.dropout = config.dropout;
  return std::make_shared<Mlp>(options, gen);
}

}  // namespace

std::shared_ptr<Model> make_model(const ModelConfig& config, const ModelInputs& inputs, uint64_t seed) {
  Generator gen(seed);
  if (config.kind == "gpt") return make_gpt(config, inputs, gen);
  if (config.kind == "cnn") return make_cnn(config, inputs, gen);
  if (config.kind == "mlp") return make_mlp(config, inputs, gen);
  throw std::invalid_argument("model.kind: unknown kind '" + config.kind + "'");
}

std::string format_count(int64_t count) {
  char text[32];
  if (count >= 1000000)
    std::snprintf(text, sizeof text, "%.2fM", static_cast<double>(count) / 1e6);
  else if (count >= 1000)
    std::snprintf(text, sizeof text, "%.1fK", static_cast<double>(count) / 1e3);
  else
    std::snprintf(text, sizeof text, "%lld", static_cast<long long>(count));
  return text;
}

}  // namespace ml
