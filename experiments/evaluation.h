// Scoring a model on the validation split: the loss (and accuracy) with optional test-time
// augmentation, during training and for `muonlab eval` on a saved checkpoint.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "datasets/batch.h"
#include "experiments/config.h"
#include "experiments/run_data.h"
#include "framework/distributed/communicator.h"
#include "framework/io/json.h"
#include "framework/tensor.h"
#include "models/model.h"

namespace ml {

struct EvalResult {
  double loss = 0.0;                // mean cross-entropy per predicted target (no label smoothing)
  std::optional<double> accuracy;   // classifiers only
  int64_t targets = 0;              // examples (classifiers) or tokens (language models) scored
  int64_t batches = 0;
};

struct EvalOptions {
  int64_t max_batches = 0;  // the first max_batches validation batches; 0: all
  bool classifier = false;  // also count correct predictions
  bool mirror = false;      // average the logits of each image [B, C, H, W] and its horizontal mirror
  // Also the logits of the image shifted by one pixel down-right and up-left (reflected border),
  // mirrored too when `mirror`: 1/2 on the unshifted view(s), 1/4 on each shift (airbench's
  // tta_level 2 with `mirror`).
  bool translate = false;
};

// The evaluation options of a run: train.eval_batches, data.eval_flip and data.eval_translate.
EvalOptions eval_options(const RunConfig& config, const RunData& data);

// Evaluates `model` in eval mode on the validation batches of `batcher`; the ranks of `comm`
// (which hold the same model) share the batches out and agree on the result.
EvalResult evaluate(Model& model, const Batcher& batcher, const EvalOptions& options, Device device,
                    Communicator* comm = nullptr);

// `muonlab eval`: loads the checkpoint at `checkpoint_path` (a run directory, a checkpoint
// folder or a file in one) into the model of `config` and evaluates it on the validation split
// (train.eval_batches of them; 0: all). Returns {"checkpoint", "step", "val_loss", "val_acc"
// (classifiers), "targets", "batches"}.
Json evaluate_checkpoint(const RunConfig& config, const std::string& checkpoint_path);

}  // namespace ml
