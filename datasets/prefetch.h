// Prepares upcoming batches on a background thread while the training step runs.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "datasets/batch.h"

namespace ml {

// Yields make_batch(first), make_batch(first + 1), ..., make_batch(end - 1) in order: exactly the
// sequence of calling make_batch directly. With depth > 0 one worker thread keeps up to `depth`
// finished batches queued ahead of the consumer; depth 0 builds each batch inside next().
// An exception thrown by make_batch reaches the consumer from the next() that asks for that batch.
class PrefetchLoader {
 public:
  using MakeBatch = std::function<HostBatch(int64_t)>;

  PrefetchLoader(MakeBatch make_batch, int64_t first, int64_t end, int depth);
  PrefetchLoader(const PrefetchLoader&) = delete;
  PrefetchLoader& operator=(const PrefetchLoader&) = delete;
  ~PrefetchLoader();  // stops the worker after the batch it is building, if any

  bool has_next() const { return next_index_ < end_; }
  int64_t position() const { return next_index_; }  // index of the batch next() returns
  HostBatch next();  // throws std::out_of_range past the end

 private:
  void produce(int64_t first);

  MakeBatch make_batch_;
  int64_t next_index_;
  int64_t end_;
  int depth_;

  std::mutex mutex_;
  std::condition_variable ready_;   // signals the consumer: a batch or an error arrived
  std::condition_variable space_;   // signals the worker: a slot freed up, or stop
  std::deque<HostBatch> queue_;
  std::exception_ptr error_;        // set after the batches queued before the failure
  bool stop_ = false;
  std::thread worker_;
};

// Training batches [first_step, end_step) of `batcher`, which must outlive the loader.
std::unique_ptr<PrefetchLoader> train_loader(const Batcher& batcher, int64_t first_step, int64_t end_step, int depth);

}  // namespace ml
