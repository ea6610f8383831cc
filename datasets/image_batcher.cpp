#include "datasets/image_batcher.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>

#include "datasets/rng.h"

namespace ml {

namespace {

void check_augment_options(const AugmentOptions& options, int64_t height, int64_t width) {
  if (options.crop_padding < 0 || options.translate < 0) {
    throw std::invalid_argument("augmentation crop_padding and translate must be >= 0");
  }
  if (options.crop_padding > 0 && options.translate > 0) {
    throw std::invalid_argument("augmentation: set either crop_padding or translate, not both (both shift the image)");
  }
  if (options.translate >= std::min(height, width)) {
    throw std::invalid_argument("augmentation translate " + std::to_string(options.translate) +
                                " must be smaller than the image side " + std::to_string(std::min(height, width)) +
                                " (the border is filled by reflection)");
  }
}

}  // namespace

int64_t reflect_index(int64_t i, int64_t n) {
  if (i < 0) return -i;
  if (i >= n) return 2 * (n - 1) - i;
  return i;
}

ImageAugmentation draw_augmentation(const AugmentOptions& options, uint64_t seed, int64_t epoch, int64_t example) {
  ImageAugmentation augmentation;
  const int64_t shift = std::max(options.crop_padding, options.translate);
  if (shift == 0 && !options.flip) return augmentation;
  CounterRng rng(rng_key(seed, RngStream::Augment, {static_cast<uint64_t>(epoch), static_cast<uint64_t>(example)}));
  augmentation.dy = rng.symmetric(shift);
  augmentation.dx = rng.symmetric(shift);
  if (options.alternating_flip) {
    const bool first_epoch_flip =
        CounterRng(rng_key(seed, RngStream::AlternatingFlip, {static_cast<uint64_t>(example)})).below(2) == 1;
    augmentation.flip = options.flip && first_epoch_flip != (epoch % 2 == 1);
  } else {
    augmentation.flip = options.flip && rng.below(2) == 1;
  }
  augmentation.reflect = options.translate > 0;
  return augmentation;
}

void render_image(const uint8_t* chw, int64_t channels, int64_t height, int64_t width,
                  const ImageAugmentation& augmentation, const float* lookup, float* out) {
  // Source column of each output column; index `width` points at a zero byte appended to the row.
  std::vector<int32_t> columns(static_cast<size_t>(width));
  for (int64_t x = 0; x < width; ++x) {
    const int64_t source = (augmentation.flip ? width - 1 - x : x) + augmentation.dx;
    const bool inside = source >= 0 && source < width;
    columns[x] = static_cast<int32_t>(inside ? source : augmentation.reflect ? reflect_index(source, width) : width);
  }
  std::vector<uint8_t> row(static_cast<size_t>(width) + 1, 0);
  for (int64_t c = 0; c < channels; ++c) {
    const float* channel_lookup = lookup + c * 256;
    for (int64_t y = 0; y < height; ++y) {
      float* out_row = out + (c * height + y) * width;
      int64_t source_y = y + augmentation.dy;
      if (source_y < 0 || source_y >= height) {
        if (!augmentation.reflect) {
          std::fill(out_row, out_row + width, channel_lookup[0]);
          continue;
        }
        source_y = reflect_index(source_y, height);
      }
      std::memcpy(row.data(), chw + (c * height + source_y) * width, static_cast<size_t>(width));
      for (int64_t x = 0; x < width; ++x) out_row[x] = channel_lookup[row[columns[x]]];
    }
  }
}

ImageBatcher::ImageBatcher(std::shared_ptr<const ImageDataset> train, std::shared_ptr<const ImageDataset> val,
                           const ImageBatcherOptions& options)
    : train_(std::move(train)),
      val_(std::move(val)),
      options_(options),
      sampler_(train_ ? train_->size() : 0, options.batch_size, options.drop_last, options.seed) {
  if (options_.val_batch_size == 0) options_.val_batch_size = options_.batch_size;
  if (options_.val_batch_size < 0) throw std::invalid_argument("val_batch_size must be >= 0");
  check_augment_options(options_.augment, train_->height, train_->width);
  if (val_ && val_->size() > 0 &&
      (val_->channels != train_->channels || val_->height != train_->height || val_->width != train_->width)) {
    throw std::invalid_argument("validation images are not shaped like the training images");
  }

  const int64_t channels = train_->channels;
  const int64_t plane = train_->height * train_->width;
  std::vector<uint64_t> sum(static_cast<size_t>(channels), 0), sum_squares(static_cast<size_t>(channels), 0);
  for (int64_t i = 0; i < train_->size(); ++i) {
    const uint8_t* image = train_->image(i);
    for (int64_t c = 0; c < channels; ++c) {
      uint64_t s = 0, s2 = 0;
      for (const uint8_t* p = image + c * plane; p != image + (c + 1) * plane; ++p) {
        s += *p;
        s2 += uint64_t{*p} * *p;
      }
      sum[c] += s;
      sum_squares[c] += s2;
    }
  }
  const double count = static_cast<double>(train_->size() * plane);
  for (int64_t c = 0; c < channels; ++c) {
    const double mean = static_cast<double>(sum[c]) / count / 255.0;
    const double variance = static_cast<double>(sum_squares[c]) / count / (255.0 * 255.0) - mean * mean;
    const double stddev = variance > 1e-12 ? std::sqrt(variance) : 1.0;
    mean_.push_back(static_cast<float>(mean));
    std_.push_back(static_cast<float>(stddev));
    for (int v = 0; v < 256; ++v) lookup_.push_back(static_cast<float>((v / 255.0 - mean) / stddev));
  }
}

HostBatch ImageBatcher::assemble(const ImageDataset& data, const std::vector<int64_t>& examples, int64_t epoch,
                                 bool augment) const {
  const auto batch_size = static_cast<int64_t>(examples.size());
  const int64_t numel = data.image_numel();
  HostBatch batch;
  batch.input_shape = {batch_size, data.channels, data.height, data.width};
  batch.target_shape = {batch_size};
  batch.inputs.resize(static_cast<size_t>(batch_size * numel));
  batch.targets.resize(static_cast<size_t>(batch_size));
  for (int64_t i = 0; i < batch_size; ++i) {
    const int64_t example = examples[i];
    const ImageAugmentation augmentation =
        augment ? draw_augmentation(options_.augment, options_.seed, epoch, example) : ImageAugmentation{};
    render_image(data.image(example), data.channels, data.height, data.width, augmentation, lookup_.data(),
                 batch.inputs.data() + i * numel);
    batch.targets[i] = data.labels[example];
  }
  return batch;
}

HostBatch ImageBatcher::epoch_batch(int64_t epoch, int64_t index) const {
  return assemble(*train_, sampler_.batch_indices(epoch, index), epoch, true);
}

HostBatch ImageBatcher::train_batch(int64_t step) const {
  if (step < 0) throw std::out_of_range("training step " + std::to_string(step) + " is negative");
  return epoch_batch(step / steps_per_epoch(), step % steps_per_epoch());
}

HostBatch ImageBatcher::train_examples(int64_t count) const {
  std::vector<int64_t> examples(static_cast<size_t>(std::clamp<int64_t>(count, 0, train_->size())));
  std::iota(examples.begin(), examples.end(), int64_t{0});
  return assemble(*train_, examples, 0, false);
}

int64_t ImageBatcher::num_val_batches() const {
  return val_ ? num_ordered_batches(val_->size(), options_.val_batch_size) : 0;
}

HostBatch ImageBatcher::val_batch(int64_t index) const {
  if (!val_) throw std::out_of_range("no validation set");
  const IndexRange range = ordered_batch_range(val_->size(), options_.val_batch_size, index);
  std::vector<int64_t> examples(static_cast<size_t>(range.end - range.begin));
  std::iota(examples.begin(), examples.end(), range.begin);
  return assemble(*val_, examples, 0, false);
}

}  // namespace ml
