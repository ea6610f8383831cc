#include "experiments/run_data.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "datasets/image_batcher.h"
#include "datasets/image_dataset.h"
#include "datasets/synthetic.h"

namespace ml {
namespace fs = std::filesystem;
namespace {

void keep_first_images(ImageDataset& data, int64_t limit) {
  if (limit <= 0 || limit >= data.size()) return;
  data.labels.resize(static_cast<size_t>(limit));
  data.pixels.resize(static_cast<size_t>(limit * data.image_numel()));
}

void keep_first_tokens(std::vector<uint16_t>& tokens, int64_t limit) {
  if (limit > 0 && limit < static_cast<int64_t>(tokens.size())) tokens.resize(static_cast<size_t>(limit));
}

ImageSplits load_image_splits(const RunConfig& config) {
  const DataConfig& data = config.data;
  // CIFAR-10's and IDX's files list the classes in random order, so their first examples are a
  // fair sample. Those readers' limit applies to both splits alike: read enough for the larger one.
  const int64_t read_limit = data.limit_train > 0 && data.limit_val > 0 ? std::max(data.limit_train, data.limit_val) : 0;
  ImageSplits splits;
  if (data.kind == DataKind::Cifar10) {
    splits = load_cifar10(data.path, read_limit);
  } else if (data.kind == DataKind::FashionMnist) {
    splits = load_idx_dir(data.path, 10, read_limit);
  } else {
    // An image folder lists its files class by class: its reader samples across the classes.
    ImageFolderOptions options;
    options.train_dir = data.path;
    options.val_dir = data.val_path;
    options.val_fraction = data.val_fraction;
    options.seed = static_cast<uint64_t>(config.seed);
    options.image_size = data.image_size;
    options.limit_train = data.limit_train;
    options.limit_val = data.limit_val;
    splits = load_image_folder(options);
  }
  keep_first_images(splits.train, data.limit_train);
  keep_first_images(splits.val, data.limit_val);
  return splits;
}

RunData image_data(const RunConfig& config) {
  const DataConfig& data = config.data;
  if (!data.normalize)
    fail_config_key(config, "data.normalize",
                    "false is not supported: image batches are always standardized per channel with the training "
                    "set's statistics");
  ImageSplits splits = load_image_splits(config);
  if (splits.train.size() == 0) throw std::runtime_error(data.path + ": no training images");
  // Without validation images every evaluation would report nothing (val_loss null).
  if (splits.val.size() == 0) {
    if (data.kind == DataKind::ImageFolder && data.val_path.empty())
      fail_config_key(config, "data.val_fraction",
                      "holds out no image of the " + std::to_string(splits.train.size()) + " in " + data.path +
                          ": the run would have no validation split (raise it, or give data.val_path)");
    throw std::runtime_error((data.val_path.empty() ? data.path : data.val_path) + ": no validation images");
  }
  RunData run;
  run.example_shape = {splits.train.channels, splits.train.height, splits.train.width};
  run.num_classes = splits.train.num_classes;
  ImageBatcherOptions options;
  options.batch_size = data.batch_size;
  options.val_batch_size = data.val_batch_size;
  options.seed = static_cast<uint64_t>(config.seed);
  options.drop_last = true;
  options.augment = {data.crop_padding, data.translate, data.flip, data.alternating_flip};
  if (data.batch_size > splits.train.size())
    fail_config_key(config, "data.batch_size", std::to_string(data.batch_size) + " is larger than the " +
                                                   std::to_string(splits.train.size()) + " training images of " +
                                                   data.path);
  run.batcher = std::make_unique<ImageBatcher>(std::make_shared<const ImageDataset>(std::move(splits.train)),
                                               std::make_shared<const ImageDataset>(std::move(splits.val)), options);
  return run;
}

// "byte 0x00" for a character text, "token 7" for token ids.
std::string single_symbol_text(const TokenCorpus& corpus, uint16_t token) {
  if (!corpus.vocab) return "token " + std::to_string(token);
  char text[16];
  std::snprintf(text, sizeof text, "byte 0x%02x", corpus.vocab->symbols()[token]);
  return text;
}

RunData text_data(const RunConfig& config, const std::optional<CharVocab>& stored_vocab) {
  const DataConfig& data = config.data;
  TokenCorpus corpus;
  if (data.kind == DataKind::TextChar) {
    TextCharOptions options;
    options.val_fraction = data.val_fraction;
    options.byte_level = data.byte_level;
    options.vocab = stored_vocab;
    corpus = load_text_char(data.path, options);
  } else {
    TextTokensOptions options;
    options.val_path = data.val_path;
    options.vocab_size = configured_vocab_size(config.model);
    corpus = load_text_tokens(data.path, options);
  }
  keep_first_tokens(corpus.train, data.limit_train);
  const size_t val_before_limit = corpus.val.size();
  keep_first_tokens(corpus.val, data.limit_val);
  if (static_cast<int64_t>(corpus.train.size()) <= data.block_size)
    fail_config_key(config, "data.block_size", std::to_string(data.block_size) + " needs more than " +
                                                   std::to_string(data.block_size) + " training tokens, but " +
                                                   data.path + " gives " + std::to_string(corpus.train.size()));
  // One validation window predicts block_size tokens from the block_size before them: with fewer
  // tokens than that every evaluation would report nothing (val_loss null).
  if (static_cast<int64_t>(corpus.val.size()) <= data.block_size) {
    const std::string source = data.val_path.empty() ? "the validation split of " + data.path : data.val_path;
    const std::string key = corpus.val.size() < val_before_limit ? "data.limit_val"
                            : !data.val_path.empty()             ? "data.val_path"
                                                                 : "data.block_size";
    fail_config_key(config, key, source + " has " + std::to_string(corpus.val.size()) +
                                     " tokens, too few for one validation window of data.block_size + 1 = " +
                                     std::to_string(data.block_size + 1) +
                                     (data.val_path.empty() ? " (a longer text, a larger data.val_fraction or a smaller "
                                                              "data.block_size)"
                                                            : ""));
  }
  // A text of one repeated symbol (a file of zero bytes, say) trains to a loss of exactly 0.
  if (std::adjacent_find(corpus.train.begin(), corpus.train.end(), std::not_equal_to<uint16_t>()) == corpus.train.end())
    fail_config_key(config, "data.path",
                    data.path + ": its " + std::to_string(corpus.train.size()) + " training tokens are all " +
                        single_symbol_text(corpus, corpus.train.front()) +
                        ": there is nothing to learn (the loss would fall to 0)");
  RunData run;
  run.is_text = true;
  run.example_shape = {data.block_size};
  run.vocab_size = corpus.vocab_size;
  run.vocab = corpus.vocab;
  TokenBatcherOptions options;
  options.batch_size = data.batch_size;
  options.block_size = data.block_size;
  options.seed = static_cast<uint64_t>(config.seed);
  run.batcher = std::make_unique<TokenBatcher>(std::make_shared<const TokenCorpus>(std::move(corpus)), options);
  return run;
}

RunData synthetic_data(const RunConfig& config) {
  const DataConfig& data = config.data;
  SyntheticOptions options;
  options.num_features = data.num_features;
  options.num_classes = data.num_classes;
  options.num_examples = data.limit_train > 0 ? std::min(data.limit_train, data.num_examples) : data.num_examples;
  // A quarter as many validation examples, from the same distribution.
  options.num_val_examples = std::max(data.num_classes, data.num_examples / 4);
  if (data.limit_val > 0) options.num_val_examples = std::min(options.num_val_examples, data.limit_val);
  options.seed = static_cast<uint64_t>(config.seed);
  if (data.batch_size > options.num_examples)
    fail_config_key(config, "data.batch_size", std::to_string(data.batch_size) + " is larger than the " +
                                                   std::to_string(options.num_examples) +
                                                   " synthetic training examples");
  RunData run;
  run.example_shape = {data.num_features};
  run.num_classes = data.num_classes;
  FeatureBatcherOptions batcher_options;
  batcher_options.batch_size = data.batch_size;
  batcher_options.seed = static_cast<uint64_t>(config.seed);
  run.batcher = std::make_unique<FeatureBatcher>(
      std::make_shared<const FeatureSplits>(make_gaussian_clusters(options)), batcher_options);
  return run;
}

}  // namespace

RunData load_run_data(const RunConfig& config, const std::optional<CharVocab>& stored_vocab) {
  const DataKind kind = config.data.kind;
  // A data path that does not exist is a mistake in the config: say where it was written.
  if (kind != DataKind::Synthetic && !fs::exists(config.data.path))
    fail_config_key(config, "data.path", config.data.path + ": no such file or folder");
  if (!config.data.val_path.empty() && !fs::exists(config.data.val_path))
    fail_config_key(config, "data.val_path", config.data.val_path + ": no such file or folder");
  RunData run = is_text_data(kind)              ? text_data(config, stored_vocab)
                : kind == DataKind::Synthetic ? synthetic_data(config)
                                              : image_data(config);
  // A label or token beyond the model's outputs has no logit: the model would be built wrong.
  const std::string data_name = kind == DataKind::Synthetic ? "the synthetic data" : config.data.path;
  const int64_t classes = configured_classes(config.model), vocab_size = configured_vocab_size(config.model);
  if (classes > 0 && classes < run.num_classes)
    fail_config_key(config, "model.num_classes", std::to_string(classes) + " is fewer than the " +
                                                     std::to_string(run.num_classes) + " classes of " + data_name);
  if (vocab_size > 0 && vocab_size < run.vocab_size)
    fail_config_key(config, "model.vocab_size", std::to_string(vocab_size) +
                                                    " is smaller than the vocabulary of " +
                                                    std::to_string(run.vocab_size) + " tokens of " + data_name);
  return run;
}

}  // namespace ml
