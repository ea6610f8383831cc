// Normalized, augmented float batches [B, C, H, W] from an ImageDataset.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "datasets/batch.h"
#include "datasets/image_dataset.h"

namespace ml {

// Train-time augmentation. crop_padding and translate both shift the image by up to that many
// pixels in each direction; they differ in what fills the uncovered border, and at most one may be set:
//  - crop_padding: a random crop of the zero-padded image (torchvision's RandomCrop(padding=p));
//    the border is black, i.e. pixel value 0 before normalization;
//  - translate: airbench's shift, the border is the image reflected at its edge (numpy "reflect",
//    the edge pixel itself not repeated).
// flip: mirror each image horizontally with probability 1/2: drawn anew every epoch, or with
// alternating_flip drawn once per image and inverted in every odd epoch, so that each image is
// seen both ways in any two consecutive epochs (airbench's CifarLoader: "this increases diversity
// relative to random flipping").
struct AugmentOptions {
  int64_t crop_padding = 0;
  int64_t translate = 0;
  bool flip = false;
  bool alternating_flip = false;
};

// One image's drawn augmentation: output(y, x) = input(y + dy, x' + dx) with x' = W-1-x when
// flipped, else x; sources outside the image are filled as described above.
struct ImageAugmentation {
  int64_t dy = 0;
  int64_t dx = 0;
  bool flip = false;
  bool reflect = false;  // reflection fill (translate) instead of zeros (crop_padding)
};

// Index i in [-(n-1), 2n-2] mapped into [0, n) by reflection at the edges, the edge itself not
// repeated (numpy's and torch.nn.functional.pad's "reflect"): -1 -> 1, n -> n-2.
int64_t reflect_index(int64_t i, int64_t n);

// The augmentation of one example in one epoch: a pure function of its arguments.
ImageAugmentation draw_augmentation(const AugmentOptions& options, uint64_t seed, int64_t epoch, int64_t example);

// Writes one augmented CHW image as floats: lookup[c * 256 + v] is the normalized value of byte v in channel c.
void render_image(const uint8_t* chw, int64_t channels, int64_t height, int64_t width,
                  const ImageAugmentation& augmentation, const float* lookup, float* out);

struct ImageBatcherOptions {
  int64_t batch_size = 0;
  int64_t val_batch_size = 0;  // 0: batch_size
  uint64_t seed = 0;
  bool drop_last = true;
  AugmentOptions augment;
};

// Normalization: per channel, (pixel / 255 - mean) / std with mean and std measured on the
// training set, so any dataset (CIFAR-10, Fashion-MNIST, image folders) is standardized
// without per-dataset constants. A constant channel gets std 1.
class ImageBatcher final : public Batcher {
 public:
  // `val` may be null or empty (no validation batches).
  ImageBatcher(std::shared_ptr<const ImageDataset> train, std::shared_ptr<const ImageDataset> val,
               const ImageBatcherOptions& options);

  HostBatch train_batch(int64_t step) const override;
  int64_t steps_per_epoch() const override { return sampler_.batches_per_epoch(); }
  int64_t num_val_batches() const override;
  HostBatch val_batch(int64_t index) const override;

  // Batch `index` of `epoch`; train_batch(step) is epoch_batch(step / steps_per_epoch, step % steps_per_epoch).
  HostBatch epoch_batch(int64_t epoch, int64_t index) const;
  // The first `count` training examples (all when there are fewer) in file order, normalized and
  // not augmented: the sample a data-dependent initialization measures.
  HostBatch train_examples(int64_t count) const;

  const std::vector<float>& channel_mean() const { return mean_; }  // on the [0, 1] scale
  const std::vector<float>& channel_std() const { return std_; }

 private:
  HostBatch assemble(const ImageDataset& data, const std::vector<int64_t>& examples, int64_t epoch, bool augment) const;

  std::shared_ptr<const ImageDataset> train_;
  std::shared_ptr<const ImageDataset> val_;
  ImageBatcherOptions options_;
  EpochSampler sampler_;
  std::vector<float> mean_;
  std::vector<float> std_;
  std::vector<float> lookup_;  // [C, 256]
};

}  // namespace ml
