// An airbench-style CIFAR network: a 2x2 "stem" convolution (with bias) and activation, groups of
// conv3x3 -> maxpool2 -> batch norm -> act -> conv3x3 -> batch norm -> act with widths from the
// config, a global max pool and a bias-free linear "head" whose logits are divided by a constant.
// The names "stem" and "head" are what the optimizers group on (they are not hidden matrices).
//
// The airbench94_muon options (KellerJordan/cifar10-airbench, airbench94_muon.py): `whiten` makes
// the stem a frozen patch-whitening layer computed from training images (models/patch_whitening.h)
// whose bias trains for the first whiten_bias_epochs only; `bn_freeze_weight` keeps the batch-norm
// scales at 1; `dirac_init` starts each conv's first in_channels filters as the identity;
// `head_init_std` rescales the initial head weights to that standard deviation. Frozen
// parameters have requires_grad false: they get no gradient, and the trainer gives them to no
// optimizer.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "framework/nn/layers.h"
#include "models/model.h"

namespace ml {

enum class CnnActivation { Gelu, Relu };

// The settings of `model: {kind: cnn}`. Members start at zero; the defaults are the table's
// (with_defaults(CnnOptions::settings())).
struct CnnOptions {
  static constexpr const char* kind = "cnn";
  static const SettingList<CnnOptions>& settings();
  double dropout{};  // before the head
  int64_t in_channels{};  // 0 in a config: the data's (make_model fills it in)
  int64_t stem_width{};
  std::vector<int64_t> widths;  // one conv group per entry
  double bn_momentum{};
  double logit_divisor{};
  CnnActivation activation{};
  double bn_eps{};
  bool bn_freeze_weight{};
  bool dirac_init{};
  double head_init_std{};  // 0: PyTorch's default init of the head
  bool whiten{};           // needs stem_width = 2 * in_channels * 2 * 2
  int64_t whiten_examples{};
  double whiten_eps{};
  int64_t whiten_bias_epochs{};  // 0: the whitening bias trains throughout
  int64_t num_classes{};         // 0 in a config: the data's
};

// airbench94_muon.py's init_whiten: the first 5000 training images, eps 5e-4.
constexpr int64_t kDefaultWhitenExamples = 5000;
constexpr double kDefaultWhitenEps = 5e-4;

class ConvGroup : public UnaryModule {
 public:
  ConvGroup(int64_t in_channels, int64_t out_channels, const CnnOptions& options, Generator& gen);
  Tensor forward(const Tensor& x) override;  // halves the height and width

  std::shared_ptr<Conv2d> conv1;
  std::shared_ptr<BatchNorm2d> norm1;
  std::shared_ptr<Conv2d> conv2;
  std::shared_ptr<BatchNorm2d> norm2;
};

class Cnn : public Model {
 public:
  Cnn(const CnnOptions& options, Generator& gen);
  // Float images [B, C, H, W] -> logits [B, num_classes].
  Tensor forward(const Tensor& images) override;
  std::string summary() const override;
  int64_t init_examples() const override;
  // Sets the whitening filters from `inputs` [N, C, H, W] (only with options.whiten).
  void init_from_data(const Tensor& inputs) override;
  void begin_training_step(double epochs_done) override;

  // The smallest image side the stem and the groups' poolings leave at least 1x1 of.
  static int64_t min_image_size(size_t num_groups);

  std::shared_ptr<Conv2d> stem;
  std::shared_ptr<Sequential> groups;  // of ConvGroup
  std::shared_ptr<Linear> head;

 private:
  CnnOptions options_;
  std::shared_ptr<Dropout> dropout_;
};

}  // namespace ml
