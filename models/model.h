// The common interface of the trainable models (GPT, CNN, MLP) and the factory that builds one
// from the `model` section of a run config.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "experiments/config.h"
#include "framework/nn/module.h"

namespace ml {

// A model maps a batch of inputs to logits: images or feature vectors (float [B, ...]) to class
// logits [B, classes], or token ids (Int64 [B, T]) to next-token logits [B, T, vocab].
class Model : public UnaryModule {
 public:
  // One line naming the architecture and its size, for logs.
  virtual std::string summary() const = 0;

  // Data-dependent initialization (the CNN's patch-whitening stem): the number of training
  // examples init_from_data wants; 0 for models initialized from the seed alone.
  virtual int64_t init_examples() const { return 0; }
  // Called once when a run starts fresh (never on resume: what it computes is a weight, saved in
  // the checkpoint), before the model moves to its device, with the first init_examples()
  // training inputs as the model sees them, normalized and not augmented.
  virtual void init_from_data(const Tensor& /*inputs*/) {}
  // Called by the trainer before every training step with the epochs completed so far, for
  // parameters that train only part of the run (the whitening bias).
  virtual void begin_training_step(double /*epochs_done*/) {}
};

// What the data tells the model: the shape of one input example ({C, H, W}, {features} or
// {block_size}) and the number of classes (classifiers) or tokens (language models).
struct ModelInputs {
  std::vector<int64_t> example_shape;
  int64_t num_classes = 0;
  int64_t vocab_size = 0;
};

// Builds the model of `config` (a validated ModelConfig) with its parameters drawn from `seed`.
// Throws std::invalid_argument when the config and the data disagree (e.g. a vocab_size smaller
// than the data's, or images too small for the CNN's pooling).
std::shared_ptr<Model> make_model(const ModelConfig& config, const ModelInputs& inputs, uint64_t seed);

// "1.23M", "45.6K", "789".
std::string format_count(int64_t count);

}  // namespace ml
