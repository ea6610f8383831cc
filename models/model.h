// The common interface of the trainable models (GPT, CNN, MLP); models/factory.h builds one from
// its settings.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "framework/nn/module.h"
#include "framework/settings.h"

namespace ml {

// Rows every model's settings table has (framework/settings.h).
template <typename S>
Setting<S> dropout_setting(std::string where) {
  return number<S>("dropout", &S::dropout, closed_open(0, 1), 0.0, "dropout probability " + std::move(where));
}
template <typename S>
Setting<S> num_classes_setting() {
  return integer<S>("num_classes", &S::num_classes, at_least(0), 0, "the classifier's outputs; 0: the data's classes");
}

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

// "1.23M", "45.6K", "789".
std::string format_count(int64_t count);

}  // namespace ml
