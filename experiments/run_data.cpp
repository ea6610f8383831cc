#include "experiments/run_data.h"

#include <algorithm>
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
  // The readers' own limit applies to both splits alike; read enough for the larger one.
  const int64_t read_limit = data.limit_train > 0 && data.limit_val > 0 ? std::max(data.limit_train, data.limit_val) : 0;
  ImageSplits splits;
  if (data.kind == "cifar10") {
    splits = load_cifar10(data.path, read_limit);
  } else if (data.kind == "fashion_mnist") {
    splits = load_idx_dir(data.path, 10, read_limit);
  } else {
    ImageFolderOptions options;
    options.train_dir = data.path;
    options.val_dir = data.val_path;
    options.val_fraction = data.val_fraction;
    options.seed = static_cast<uint64_t>(config.seed);
    options.image_size = data.image_size;
    options.limit = read_limit;
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

RunData text_data(const RunConfig& config, const std::optional<CharVocab>& stored_vocab) {
  const DataConfig& data = config.data;
  TokenCorpus corpus;
  if (data.kind == "text_char") {
    TextCharOptions options;
    options.val_fraction = data.val_fraction;
    options.byte_level = data.byte_level;
    options.vocab = stored_vocab;
    corpus = load_text_char(data.path, options);
  } else {
    TextTokensOptions options;
    options.val_path = data.val_path;
    options.vocab_size = config.model.vocab_size;
    corpus = load_text_tokens(data.path, options);
  }
  keep_first_tokens(corpus.train, data.limit_train);
  keep_first_tokens(corpus.val, data.limit_val);
  if (static_cast<int64_t>(corpus.train.size()) <= data.block_size)
    fail_config_key(config, "data.block_size", std::to_string(data.block_size) + " needs more than " +
                                                   std::to_string(data.block_size) + " training tokens, but " +
                                                   data.path + " gives " + std::to_string(corpus.train.size()));
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
  const std::string& kind = config.data.kind;
  // A data path that does not exist is a mistake in the config: say where it was written.
  if (kind != "synthetic" && !fs::exists(config.data.path))
    fail_config_key(config, "data.path", config.data.path + ": no such file or folder");
  if (!config.data.val_path.empty() && !fs::exists(config.data.val_path))
    fail_config_key(config, "data.val_path", config.data.val_path + ": no such file or folder");
  if (kind == "text_char" || kind == "text_tokens") return text_data(config, stored_vocab);
  if (kind == "synthetic") return synthetic_data(config);
  return image_data(config);
}

}  // namespace ml
