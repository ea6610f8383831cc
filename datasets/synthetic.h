// A seeded, learnable random classification set for tests and quick experiments:
// Gaussian clusters around random class centers.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "datasets/batch.h"

namespace ml {

struct FeatureDataset {
  int64_t num_features = 0;
  int64_t num_classes = 0;
  std::vector<float> features;  // [N, num_features]
  std::vector<int64_t> labels;  // [N]

  int64_t size() const { return static_cast<int64_t>(labels.size()); }
};

struct SyntheticOptions {
  int64_t num_features = 0;
  int64_t num_classes = 0;
  int64_t num_examples = 0;      // training examples
  int64_t num_val_examples = 0;  // validation examples, from the same distribution
  uint64_t seed = 0;
  double center_spread = 1.0;    // std of each center coordinate
  double noise = 1.0;            // std of each example around its center
};

struct FeatureSplits {
  FeatureDataset train;
  FeatureDataset val;
  std::vector<float> centers;  // [num_classes, num_features], for checks
};

// Example i has label i % num_classes, so classes are balanced.
FeatureSplits make_gaussian_clusters(const SyntheticOptions& options);

struct FeatureBatcherOptions {
  int64_t batch_size = 0;
  uint64_t seed = 0;
  bool drop_last = true;
};

// Shuffled batches of features [B, F] and labels [B]; validation batches in order.
class FeatureBatcher final : public Batcher {
 public:
  FeatureBatcher(std::shared_ptr<const FeatureSplits> data, const FeatureBatcherOptions& options);

  HostBatch train_batch(int64_t step) const override;
  int64_t steps_per_epoch() const override { return sampler_.batches_per_epoch(); }
  int64_t num_val_batches() const override;
  HostBatch val_batch(int64_t index) const override;

 private:
  static HostBatch gather(const FeatureDataset& data, const std::vector<int64_t>& examples);

  std::shared_ptr<const FeatureSplits> data_;
  FeatureBatcherOptions options_;
  EpochSampler sampler_;
};

}  // namespace ml
