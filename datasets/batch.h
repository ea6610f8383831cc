// Host-side batches and the interface every dataset's batcher offers the trainer.
// Batches are plain arrays; the trainer turns them into tensors on its device.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace ml {

struct HostBatch {
  std::vector<float> inputs;        // float features or images, shape input_shape (image/feature sets)
  std::vector<int64_t> input_ids;   // token ids, shape input_shape (text sets)
  std::vector<int64_t> targets;     // class labels [B] or next-token ids [B, T]
  std::vector<int64_t> input_shape;
  std::vector<int64_t> target_shape;

  int64_t size() const { return target_shape.empty() ? 0 : target_shape[0]; }
};

// Part `part` of `parts` of a batch along its first dimension: examples [B part / parts,
// B (part + 1) / parts). A data-parallel rank trains on its part of the global batch that one
// process would draw, so the data order does not depend on the number of ranks. Parts differ in
// size by at most one example (and may be empty) when B is not a multiple of `parts`.
HostBatch batch_part(const HostBatch& batch, int64_t part, int64_t parts);

// Training batch `step` is a pure function of (seed, step): a run resumes exactly from the step
// count alone. Validation batches come in a fixed order, with no randomness.
class Batcher {
 public:
  virtual ~Batcher() = default;
  virtual HostBatch train_batch(int64_t step) const = 0;
  // Steps that make one pass over the training data (nominal for randomly windowed text).
  virtual int64_t steps_per_epoch() const = 0;
  virtual int64_t num_val_batches() const = 0;
  virtual HostBatch val_batch(int64_t index) const = 0;
};

// Splits a shuffled pass over `num_examples` into batches; epoch e uses its own seeded order.
class EpochSampler {
 public:
  // drop_last: an epoch has floor(N / B) full batches (as airbench trains); otherwise the
  // last batch of an epoch holds the remainder.
  EpochSampler(int64_t num_examples, int64_t batch_size, bool drop_last, uint64_t seed);

  int64_t batches_per_epoch() const { return batches_per_epoch_; }
  // Example indices of batch `index` (0 <= index < batches_per_epoch) of `epoch`.
  std::vector<int64_t> batch_indices(int64_t epoch, int64_t index) const;

 private:
  std::shared_ptr<const std::vector<int64_t>> epoch_order(int64_t epoch) const;

  int64_t num_examples_;
  int64_t batch_size_;
  int64_t batches_per_epoch_;
  uint64_t seed_;
  // The permutation of the latest epoch: batches are requested epoch by epoch, so one entry suffices.
  mutable std::mutex cache_mutex_;
  mutable int64_t cached_epoch_ = -1;
  mutable std::shared_ptr<const std::vector<int64_t>> cached_order_;
};

// [begin, end) of in-order batch `index` over `num_examples`; the last batch may be smaller.
struct IndexRange {
  int64_t begin;
  int64_t end;
};
int64_t num_ordered_batches(int64_t num_examples, int64_t batch_size);
IndexRange ordered_batch_range(int64_t num_examples, int64_t batch_size, int64_t index);

}  // namespace ml
