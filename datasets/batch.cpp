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

namespace {
// Rows [begin, end) of a row-major array whose first dimension is shape[0].
template <typename T>
std::vector<T> rows_of(const std::vector<T>& values, const std::vector<int64_t>& shape, int64_t begin, int64_t end) {
  if (values.empty()) return {};
  const int64_t row = static_cast<int64_t>(values.size()) / shape[0];
  return std::vector<T>(values.begin() + begin * row, values.begin() + end * row);
}
}  // namespace

HostBatch batch_part(const HostBatch& batch, int64_t part, int64_t parts) {
  if (parts < 1 || part < 0 || part >= parts)
    throw std::invalid_argument("batch_part: part " + std::to_string(part) + " of " + std::to_string(parts));
  if (parts == 1) return batch;
  const int64_t size = batch.size(), begin = size * part / parts, end = size * (part + 1) / parts;
  HostBatch slice;
  slice.inputs = rows_of(batch.inputs, batch.input_shape, begin, end);
  slice.input_ids = rows_of(batch.input_ids, batch.input_shape, begin, end);
  slice.targets = rows_of(batch.targets, batch.target_shape, begin, end);
  slice.input_shape = batch.input_shape;
  slice.target_shape = batch.target_shape;
  slice.input_shape[0] = slice.target_shape[0] = end - begin;
  return slice;
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
