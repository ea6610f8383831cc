// `muonlab sample`: text generation from a trained character-level GPT.
//
// The model, its config and its vocabulary come from the run the checkpoint belongs to
// (RUN/config.yaml and the checkpoint's vocab.txt), so no training data is needed. Generation is
// the usual autoregressive loop: the last block_size characters are the context, the logits of
// the last position are divided by the temperature, cut to the top-k and sampled.
#pragma once
#include <cstdint>
#include <string>

namespace ml {

struct SampleOptions {
  std::string prompt;  // "": a newline, or the vocabulary's first character when it has no newline
  int64_t tokens = 200;
  double temperature = 0.8;  // 0: always the most likely character
  int64_t top_k = 0;         // 0: all characters
  uint64_t seed = 0;
};

// Returns the generated characters (without the prompt). Throws std::runtime_error when the
// checkpoint is not a character-level GPT's, or when the prompt holds characters outside its
// vocabulary.
std::string sample_text(const std::string& checkpoint_path, const SampleOptions& options);

}  // namespace ml
