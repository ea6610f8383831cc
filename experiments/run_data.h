// The data of a run, built from its config: the batcher the trainer draws from and what the
// model needs to know about the examples (input shape, number of classes or tokens).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "datasets/batch.h"
#include "datasets/text_dataset.h"
#include "experiments/config.h"

namespace ml {

struct RunData {
  std::unique_ptr<Batcher> batcher;
  bool is_text = false;
  std::vector<int64_t> example_shape;  // one input example: {C, H, W}, {features} or {block_size}
  int64_t num_classes = 0;             // classifiers
  int64_t vocab_size = 0;              // text
  std::optional<CharVocab> vocab;      // text_char: stored with the run
};

// Reads the dataset named by `config.data` (relative paths against the working directory).
// `stored_vocab` replaces the vocabulary a text_char run would build (used when resuming, so
// that token ids keep their meaning). Throws std::runtime_error naming the data file on failure.
RunData load_run_data(const RunConfig& config, const std::optional<CharVocab>& stored_vocab = std::nullopt);

}  // namespace ml
