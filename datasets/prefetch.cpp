#include "datasets/prefetch.h"

#include <stdexcept>
#include <string>
#include <utility>

namespace ml {

PrefetchLoader::PrefetchLoader(MakeBatch make_batch, int64_t first, int64_t end, int depth)
    : make_batch_(std::move(make_batch)), next_index_(first), end_(end), depth_(depth) {
  if (depth < 0) throw std::invalid_argument("prefetch depth must be >= 0, got " + std::to_string(depth));
  if (depth > 0 && first < end) worker_ = std::thread(&PrefetchLoader::produce, this, first);
}

PrefetchLoader::~PrefetchLoader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  space_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void PrefetchLoader::produce(int64_t first) {
  for (int64_t index = first; index < end_; ++index) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      space_.wait(lock, [&] { return stop_ || static_cast<int>(queue_.size()) < depth_; });
      if (stop_) return;
    }
    try {
      HostBatch batch = make_batch_(index);
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(std::move(batch));
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      error_ = std::current_exception();
      ready_.notify_one();
      return;
    }
    ready_.notify_one();
  }
}

HostBatch PrefetchLoader::next() {
  if (!has_next()) throw std::out_of_range("prefetch loader is exhausted at batch " + std::to_string(end_));
  if (depth_ == 0) return make_batch_(next_index_++);
  std::unique_lock<std::mutex> lock(mutex_);
  ready_.wait(lock, [&] { return !queue_.empty() || error_; });
  if (queue_.empty()) std::rethrow_exception(error_);
  HostBatch batch = std::move(queue_.front());
  queue_.pop_front();
  ++next_index_;
  lock.unlock();
  space_.notify_one();
  return batch;
}

std::unique_ptr<PrefetchLoader> train_loader(const Batcher& batcher, int64_t first_step, int64_t end_step,
                                             int depth) {
  return std::make_unique<PrefetchLoader>([&batcher](int64_t step) { return batcher.train_batch(step); }, first_step, end_step, depth);
}

}  // namespace ml
