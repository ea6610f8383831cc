#include "experiments/sample.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "datasets/rng.h"
#include "datasets/text_dataset.h"
#include "experiments/checkpoint.h"
#include "experiments/config.h"
#include "framework/autograd.h"
#include "framework/nn/serialize.h"
#include "models/model.h"

namespace fs = std::filesystem;

namespace ml {
namespace {

// Picks the next token from one row of logits: greedy at temperature 0, else a draw from the
// softmax of logits / temperature over the top_k largest (all when top_k is 0).
int64_t pick_token(const std::vector<float>& logits, const SampleOptions& options, CounterRng& rng) {
  std::vector<int64_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  // Ties go to the lower id, so the choice does not depend on the sort.
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  if (options.temperature == 0.0) return order.front();
  const size_t kept = options.top_k > 0 ? std::min<size_t>(order.size(), options.top_k) : order.size();
  std::vector<double> weights(kept);
  for (size_t i = 0; i < kept; ++i)
    weights[i] = std::exp((static_cast<double>(logits[order[i]]) - logits[order[0]]) / options.temperature);
  double draw = rng.uniform() * std::accumulate(weights.begin(), weights.end(), 0.0);
  for (size_t i = 0; i < kept; ++i) {
    draw -= weights[i];
    if (draw < 0.0) return order[i];
  }
  return order[kept - 1];
}

}  // namespace

std::string sample_text(const std::string& checkpoint_path, const SampleOptions& options) {
  const CheckpointRef checkpoint = resolve_checkpoint(checkpoint_path);
  verify_checkpoint(checkpoint);
  const std::string& dir = checkpoint.dir;
  if (!fs::exists(dir + "/model.safetensors"))
    throw std::runtime_error(checkpoint_path + ": no checkpoint there (expected a run folder with a checkpoint, a "
                             "checkpoint folder or a file in one)");
  const std::string run_dir = fs::path(dir).parent_path().parent_path().string();
  const std::string config_path = run_dir + "/config.yaml";
  if (!fs::exists(config_path)) throw std::runtime_error(checkpoint_path + ": no config.yaml in its run folder " + run_dir);
  const RunConfig config = load_run_config(config_path);
  if (!std::holds_alternative<GptOptions>(config.model) || config.data.kind != DataKind::TextChar ||
      !fs::exists(dir + "/vocab.txt"))
    throw std::runtime_error(checkpoint_path + ": sampling needs a character-level GPT (model.kind gpt, data.kind "
                             "text_char, vocab.txt in the checkpoint); this run is model.kind " + kind_of(config.model) +
                             ", data.kind " + name_of(data_kind_names(), config.data.kind));
  const CharVocab vocab = CharVocab::load(dir + "/vocab.txt");
  const int64_t block_size = std::get<GptOptions>(config.model).block_size;
  const int64_t block = block_size > 0 ? block_size : config.data.block_size;
  const std::shared_ptr<Model> model =
      make_model(config.model, {{block}, 0, vocab.size()}, static_cast<uint64_t>(config.seed));
  load_weights(*model, dir + "/model.safetensors");
  model->eval();

  std::vector<int64_t> context;
  if (options.prompt.empty()) {
    const auto& symbols = vocab.symbols();
    const auto newline = std::find(symbols.begin(), symbols.end(), '\n');
    context.push_back(newline != symbols.end() ? newline - symbols.begin() : 0);
  }
  try {
    for (const uint16_t id : vocab.encode(options.prompt)) context.push_back(id);
  } catch (const std::exception& error) {
    throw std::runtime_error("--prompt: " + std::string(error.what()));
  }
  CounterRng rng(mix64(options.seed ^ 0x73616d706c65ull));
  std::vector<int64_t> generated;
  NoGradGuard no_grad;
  for (int64_t t = 0; t < options.tokens; ++t) {
    const int64_t length = std::min<int64_t>(block, static_cast<int64_t>(context.size()));
    const std::vector<int64_t> window(context.end() - length, context.end());
    const Tensor logits = model->forward(Tensor::from_vector(window, {1, length}));  // [1, length, vocab]
    const std::vector<float> last = logits.narrow(1, length - 1, 1).contiguous().to_vector<float>();
    const int64_t next = pick_token(last, options, rng);
    context.push_back(next);
    generated.push_back(next);
  }
  return vocab.decode(generated);
}

}  // namespace ml
