#include "datasets/synthetic.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <string>

#include "datasets/rng.h"

namespace ml {

namespace {

enum SyntheticPart : uint64_t { kCenters, kTrainExamples, kValExamples };

FeatureDataset sample_clusters(const SyntheticOptions& options, const std::vector<float>& centers, int64_t count,
                               SyntheticPart part) {
  FeatureDataset data;
  data.num_features = options.num_features;
  data.num_classes = options.num_classes;
  data.features.resize(static_cast<size_t>(count * options.num_features));
  data.labels.resize(static_cast<size_t>(count));
  CounterRng rng(rng_key(options.seed, RngStream::Synthetic, {part}));
  for (int64_t i = 0; i < count; ++i) {
    const int64_t label = i % options.num_classes;
    data.labels[i] = label;
    for (int64_t f = 0; f < options.num_features; ++f) {
      data.features[i * options.num_features + f] =
          centers[label * options.num_features + f] + static_cast<float>(options.noise * rng.normal());
    }
  }
  return data;
}

}  // namespace

FeatureSplits make_gaussian_clusters(const SyntheticOptions& options) {
  if (options.num_features <= 0 || options.num_classes <= 0 || options.num_examples <= 0 || options.num_val_examples < 0) {
    throw std::invalid_argument("synthetic data needs positive num_features, num_classes and num_examples "
                                "(and num_val_examples >= 0)");
  }
  FeatureSplits splits;
  splits.centers.resize(static_cast<size_t>(options.num_classes * options.num_features));
  CounterRng rng(rng_key(options.seed, RngStream::Synthetic, {kCenters}));
  for (float& c : splits.centers) c = static_cast<float>(options.center_spread * rng.normal());
  splits.train = sample_clusters(options, splits.centers, options.num_examples, kTrainExamples);
  splits.val = sample_clusters(options, splits.centers, options.num_val_examples, kValExamples);
  return splits;
}

FeatureBatcher::FeatureBatcher(std::shared_ptr<const FeatureSplits> data, const FeatureBatcherOptions& options)
    : data_(std::move(data)),
      options_(options),
      sampler_(data_->train.size(), options.batch_size, options.drop_last, options.seed) {}

HostBatch FeatureBatcher::gather(const FeatureDataset& data, const std::vector<int64_t>& examples) {
  const auto batch_size = static_cast<int64_t>(examples.size());
  const int64_t width = data.num_features;
  HostBatch batch;
  batch.input_shape = {batch_size, width};
  batch.target_shape = {batch_size};
  batch.inputs.resize(static_cast<size_t>(batch_size * width));
  batch.targets.resize(static_cast<size_t>(batch_size));
  for (int64_t i = 0; i < batch_size; ++i) {
    const float* row = data.features.data() + examples[i] * width;
    std::copy(row, row + width, batch.inputs.begin() + i * width);
    batch.targets[i] = data.labels[examples[i]];
  }
  return batch;
}

HostBatch FeatureBatcher::train_batch(int64_t step) const {
  if (step < 0) throw std::out_of_range("training step " + std::to_string(step) + " is negative");
  return gather(data_->train, sampler_.batch_indices(step / steps_per_epoch(), step % steps_per_epoch()));
}

int64_t FeatureBatcher::num_val_batches() const { return num_ordered_batches(data_->val.size(), options_.batch_size); }

HostBatch FeatureBatcher::val_batch(int64_t index) const {
  const IndexRange range = ordered_batch_range(data_->val.size(), options_.batch_size, index);
  std::vector<int64_t> examples(static_cast<size_t>(range.end - range.begin));
  std::iota(examples.begin(), examples.end(), range.begin);
  return gather(data_->val, examples);
}

}  // namespace ml
