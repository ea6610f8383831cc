#include "datasets/batch.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "datasets/rng.h"

namespace ml {

EpochSampler::EpochSampler(int64_t num_examples, int64_t batch_size, bool drop_last, uint64_t seed)
    : num_examples_(num_examples), batch_size_(batch_size), seed_(seed) {
  if (batch_size <= 0) throw std::invalid_argument("batch_size must be positive, got " + std::to_string(batch_size));
  if (num_examples <= 0) throw std::invalid_argument("the training set is empty");
  if (drop_last && batch_size > num_examples) {
    throw std::invalid_argument("batch_size " + std::to_string(batch_size) + " exceeds the " +
                                std::to_string(num_examples) + " training examples (with drop_last)");
  }
  batches_per_epoch_ = drop_last ? num_examples / batch_size : (num_examples + batch_size - 1) / batch_size;
}

std::shared_ptr<const std::vector<int64_t>> EpochSampler::epoch_order(int64_t epoch) const {
  std::lock_guard<std::mutex> lock(cache_mutex_);
  if (epoch != cached_epoch_) {
    cached_order_ = std::make_shared<const std::vector<int64_t>>(
        seeded_permutation(num_examples_, rng_key(seed_, RngStream::Shuffle, {static_cast<uint64_t>(epoch)})));
    cached_epoch_ = epoch;
  }
  return cached_order_;
}

std::vector<int64_t> EpochSampler::batch_indices(int64_t epoch, int64_t index) const {
  if (epoch < 0 || index < 0 || index >= batches_per_epoch_) {
    throw std::out_of_range("batch " + std::to_string(index) + " of epoch " + std::to_string(epoch) +
                            " is outside an epoch of " + std::to_string(batches_per_epoch_) + " batches");
  }
  const auto order = epoch_order(epoch);
  const int64_t begin = index * batch_size_;
  const int64_t end = std::min(begin + batch_size_, num_examples_);
  return std::vector<int64_t>(order->begin() + begin, order->begin() + end);
}

int64_t num_ordered_batches(int64_t num_examples, int64_t batch_size) {
  if (batch_size <= 0) throw std::invalid_argument("batch_size must be positive, got " + std::to_string(batch_size));
  return (num_examples + batch_size - 1) / batch_size;
}

IndexRange ordered_batch_range(int64_t num_examples, int64_t batch_size, int64_t index) {
  const int64_t count = num_ordered_batches(num_examples, batch_size);
  if (index < 0 || index >= count) {
    throw std::out_of_range("batch " + std::to_string(index) + " is outside the " + std::to_string(count) +
                            " in-order batches");
  }
  const int64_t begin = index * batch_size;
  return {begin, std::min(begin + batch_size, num_examples)};
}

}  // namespace ml
