// Tests of the models: shapes and parameter counts of the benchmark shapes (the same counts as
// ../shared/bench/torch_reference.py's PyTorch models, derived by hand below), parameter names the
// optimizers group on, causality of the GPT, every parameter receiving a gradient, and the same
// gradients on one and two threads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "experiments/config.h"
#include "framework/backends/cpu/cpu_gemm.h"
#include "framework/ops.h"
#include "framework/parallel.h"
#include "models/cnn.h"
#include "models/factory.h"
#include "models/gpt.h"
#include "models/mlp.h"
#include "models/model.h"
#include "models/patch_whitening.h"

namespace ml {
namespace {

GptOptions spec_gpt_options() {
  GptOptions options = with_defaults(GptOptions::settings());  // SPEC.md gpt_nanogpt_cpu
  options.vocab_size = 65;
  options.block_size = 64;
  options.n_layer = 4;
  options.n_head = 4;
  options.n_embd = 128;
  return options;
}

GptOptions tiny_gpt_options() {
  GptOptions options = with_defaults(GptOptions::settings());
  options.vocab_size = 11;
  options.block_size = 8;
  options.n_layer = 2;
  options.n_head = 2;
  options.n_embd = 16;
  return options;
}

std::set<std::string> parameter_names(const Module& module) {
  std::set<std::string> names;
  for (const auto& [name, tensor] : module.named_parameters()) names.insert(name);
  return names;
}

Tensor token_ids(const std::vector<int64_t>& ids, int64_t batch, int64_t steps) {
  return Tensor::from_vector(ids, {batch, steps});
}

// One backward pass of a model's loss on one thread and on two (make(gen) returns the model and its
// loss), and every parameter's gradient the same to the last bit on both. Where OpenBLAS serves the
// float32 products (no AVX-512), how its threads split them is OpenBLAS's: skipped there.
using ModelAndLoss = std::pair<std::unique_ptr<Model>, std::function<Tensor(Model&)>>;
void expect_same_gradients_on_one_and_two_threads(const std::function<ModelAndLoss(Generator&)>& make) {
  if (!cpu_gemm::own_sgemm_runs()) GTEST_SKIP() << "OpenBLAS serves the float32 products here";
  const int threads = num_threads();
  std::vector<std::string> names;
  std::vector<std::vector<float>> grads[2];
  for (const int run_threads : {1, 2}) {
    set_num_threads(run_threads);
    Generator gen(7);
    auto [model, loss] = make(gen);
    loss(*model).backward();
    for (const auto& [name, parameter] : model->named_parameters()) {
      if (run_threads == 1) names.push_back(name);
      grads[run_threads - 1].push_back(parameter.grad().to_vector<float>());
    }
  }
  set_num_threads(threads);
  ASSERT_EQ(grads[0].size(), grads[1].size());
  for (size_t i = 0; i < grads[0].size(); ++i) EXPECT_EQ(grads[0][i], grads[1][i]) << names[i];
}

// ------------------------------------------------------------------ GPT

TEST(ModelsGpt, SpecShapeHasTheReferenceParameterCount) {
  const int64_t vocab = 65, block = 64, layers = 4, d = 128;
  const int64_t layer_norm = 2 * d;
  const int64_t per_block = layer_norm + (d * 3 * d + 3 * d) + (d * d + d) + layer_norm + (d * 4 * d + 4 * d) +
                            (4 * d * d + d);
  const int64_t expected = vocab * d + block * d + layers * per_block + layer_norm;  // head tied to wte
  ASSERT_EQ(expected, 809856);
  Generator gen(0);
  Gpt model(spec_gpt_options(), gen);
  EXPECT_EQ(model.num_parameters(), expected);
}

TEST(ModelsGpt, UntiedHeadAddsAMatrixNamedHead) {
  GptOptions options = spec_gpt_options();
  options.tie_weights = false;
  Generator gen(0);
  Gpt model(options, gen);
  EXPECT_EQ(model.num_parameters(), 809856 + 65 * 128);
  EXPECT_TRUE(parameter_names(model).count("head.weight"));
}

TEST(ModelsGpt, ParameterNamesFollowTheOptimizerGroupingConvention) {
  Generator gen(0);
  Gpt model(tiny_gpt_options(), gen);
  const std::set<std::string> names = parameter_names(model);
  for (const char* name : {"wte.weight", "wpe.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.proj.bias",
                           "blocks.0.norm1.weight", "norm_f.bias"})
    EXPECT_TRUE(names.count(name)) << name;
  EXPECT_FALSE(names.count("head.weight"));  // tied: the head is wte
}

TEST(ModelsGpt, RotaryRmsnormReluSquaredWithoutBiasHasNoPositionTableOrBiases) {
  GptOptions options = tiny_gpt_options();
  options.position = PositionKind::Rotary;
  options.norm = NormKind::RmsNorm;
  options.activation = GptActivation::Relu2;
  options.bias = false;
  Generator gen(0);
  Gpt model(options, gen);
  const int64_t d = 16, vocab = 11, layers = 2;
  EXPECT_EQ(model.num_parameters(), vocab * d + layers * (d + 3 * d * d + d * d + d + 4 * d * d + 4 * d * d) + d);
  for (const std::string& name : parameter_names(model)) {
    EXPECT_EQ(name.find("wpe"), std::string::npos) << name;
    EXPECT_EQ(name.find("bias"), std::string::npos) << name;
  }
}

TEST(ModelsGpt, LogitsHaveOneRowPerPositionAndDependOnlyOnThePast) {
  for (bool rotary : {false, true}) {
    for (AttentionImpl attention : {AttentionImpl::Composed, AttentionImpl::Fused}) {
      SCOPED_TRACE(attention == AttentionImpl::Fused ? "fused attention" : "composed attention");
      GptOptions options = tiny_gpt_options();
      options.position = rotary ? PositionKind::Rotary : PositionKind::Learned;
      options.attention = attention;
      Generator gen(3);
      Gpt model(options, gen);
      model.eval();
      NoGradGuard no_grad;
      std::vector<int64_t> ids{1, 2, 3, 4, 5, 6, 7, 8, 0, 9, 10, 1, 2, 3, 4, 5};
      const Tensor logits = model.forward(token_ids(ids, 2, 8));
      ASSERT_EQ(logits.shape(), (Shape{2, 8, 11}));
      // Changing the token at position 5 must leave positions 0..4 untouched and change position 5.
      ids[5] = 0;
      const Tensor changed = model.forward(token_ids(ids, 2, 8));
      const std::vector<float> before = logits.to_vector<float>(), after = changed.to_vector<float>();
      for (int64_t t = 0; t < 8; ++t) {
        float difference = 0;
        for (int64_t v = 0; v < 11; ++v) difference = std::max(difference, std::fabs(before[t * 11 + v] - after[t * 11 + v]));
        if (t < 5)
          EXPECT_EQ(difference, 0.0f) << "rotary " << rotary << " position " << t;
        else
          EXPECT_GT(difference, 0.0f) << "rotary " << rotary << " position " << t;
      }
    }
  }
}

TEST(ModelsGpt, RotaryScoresDependOnlyOnTheDistanceBetweenPositions) {
  // The same query and key vector at every position: after rotation, q_i . k_j must be a function
  // of i - j, and the rotation must keep each vector's length.
  const int64_t steps = 6, head_dim = 8;
  const auto tables = make_rotary_tables(steps, head_dim);
  Generator gen(4);
  const Tensor q = randn({1, 1, 1, head_dim}, DType::Float32, cpu(), gen).expand({1, 1, steps, head_dim});
  const Tensor k = randn({1, 1, 1, head_dim}, DType::Float32, cpu(), gen).expand({1, 1, steps, head_dim});
  const Tensor scores = matmul(apply_rotary(q, *tables), apply_rotary(k, *tables).transpose(2, 3));
  const std::vector<float> s = scores.contiguous().to_vector<float>();
  for (int64_t i = 1; i < steps; ++i)
    for (int64_t j = 1; j < steps; ++j) EXPECT_NEAR(s[i * steps + j], s[(i - 1) * steps + (j - 1)], 1e-5) << i << "," << j;
  EXPECT_GT(std::fabs(s[0] - s[1]), 1e-4);  // but it does depend on the distance
  const std::vector<float> norms = norm(apply_rotary(q, *tables), {3}).to_vector<float>();
  for (float n : norms) EXPECT_NEAR(n, norms[0], 1e-5);
}

TEST(ModelsGpt, FusedAttentionGivesTheComposedLogitsAndGradients) {
  const auto run = [](AttentionImpl attention) {
    GptOptions options = tiny_gpt_options();
    options.attention = attention;
    Generator gen(5);
    auto model = std::make_shared<Gpt>(options, gen);
    const Tensor logits = model->forward(token_ids({1, 2, 3, 4, 5, 6, 7, 8, 0, 9, 10, 1, 2, 3, 4, 5}, 2, 8));
    sum(mul(logits, logits)).backward();
    return std::make_pair(logits, model);
  };
  const auto [composed_logits, composed] = run(AttentionImpl::Composed);
  const auto [fused_logits, fused] = run(AttentionImpl::Fused);
  EXPECT_NE(fused->summary().find("fused attention"), std::string::npos);
  const std::vector<float> want = composed_logits.to_vector<float>(), got = fused_logits.to_vector<float>();
  for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-5) << "logit " << i;
  const NamedTensors want_params = composed->named_parameters(), got_params = fused->named_parameters();
  ASSERT_EQ(got_params.size(), want_params.size());
  for (size_t p = 0; p < want_params.size(); ++p) {
    const std::string& name = want_params[p].first;
    ASSERT_EQ(got_params[p].first, name);
    const std::vector<float> g_want = want_params[p].second.grad().to_vector<float>(),
                             g_got = got_params[p].second.grad().to_vector<float>();
    for (size_t i = 0; i < g_want.size(); ++i)
      ASSERT_NEAR(g_got[i], g_want[i], 1e-4 * std::max(1.0f, std::fabs(g_want[i]))) << name << " element " << i;
  }
}

// The GPT's ops sum in orders fixed by the shapes too: the same gradients on one and two threads.
TEST(ModelsGpt, GradientsDoNotDependOnTheThreadCount) {
  expect_same_gradients_on_one_and_two_threads([](Generator& gen) {
    auto model = std::make_unique<Gpt>(spec_gpt_options(), gen);
    const Tensor ids = rand({12, 64}, 0.0, 65.0, DType::Float32, cpu(), gen).to(DType::Int64);
    const Tensor targets = rand({12 * 64}, 0.0, 65.0, DType::Float32, cpu(), gen).to(DType::Int64);
    return ModelAndLoss{std::move(model), [ids, targets](Model& m) {
                          return cross_entropy(m.forward(ids).reshape({12 * 64, 65}), targets);
                        }};
  });
}

TEST(ModelsGpt, RejectsSequencesLongerThanTheBlock) {
  Generator gen(0);
  Gpt model(tiny_gpt_options(), gen);
  EXPECT_THROW(model.forward(zeros({1, 9}, DType::Int64)), std::invalid_argument);
  EXPECT_THROW(model.forward(zeros({1, 4})), std::invalid_argument);  // float ids
}

// ------------------------------------------------------------------ CNN

// CnnOptions with their defaults, for 3-channel images and 10 classes.
CnnOptions cnn_options() {
  CnnOptions options = with_defaults(CnnOptions::settings());
  options.in_channels = 3;
  options.num_classes = 10;
  return options;
}

CnnOptions spec_cnn_options() {
  CnnOptions options = cnn_options();  // SPEC.md cnn_airbench_small
  options.widths = {32, 64, 128};
  options.logit_divisor = 9.0;
  return options;
}

TEST(ModelsCnn, SpecShapeHasTheReferenceParameterCount) {
  const int64_t stem = 3 * 24 * 2 * 2 + 24;
  int64_t groups = 0, in = 24;
  for (int64_t width : {32, 64, 128}) {
    groups += in * width * 9 + 2 * width + width * width * 9 + 2 * width;  // two convs, two BNs (weight + bias)
    in = width;
  }
  const int64_t expected = stem + groups + 128 * 10;
  ASSERT_EQ(expected, 295096);
  Generator gen(0);
  Cnn model(spec_cnn_options(), gen);
  EXPECT_EQ(model.num_parameters(), expected);
  const std::set<std::string> names = parameter_names(model);
  for (const char* name : {"stem.weight", "stem.bias", "groups.0.conv1.weight", "groups.2.norm2.bias", "head.weight"})
    EXPECT_TRUE(names.count(name)) << name;
  EXPECT_FALSE(names.count("head.bias"));
  // Running statistics are buffers, saved with the weights but not trained.
  EXPECT_EQ(model.named_buffers().size(), 3u * 2u * 2u);
}

TEST(ModelsCnn, LogitsAreTheHeadOutputDividedByTheDivisor) {
  CnnOptions options = cnn_options();
  options.widths = {8, 16};
  options.stem_width = 4;
  Generator gen_a(5), gen_b(5);
  Cnn plain(options, gen_a);
  options.logit_divisor = 9.0;
  Cnn divided(options, gen_b);
  plain.eval();
  divided.eval();
  NoGradGuard no_grad;
  Generator data(6);
  const Tensor images = randn({3, 3, 12, 12}, DType::Float32, cpu(), data);
  const Tensor a = plain.forward(images), b = divided.forward(images);
  ASSERT_EQ(a.shape(), (Shape{3, 10}));
  const std::vector<float> va = a.to_vector<float>(), vb = b.to_vector<float>();
  for (size_t i = 0; i < va.size(); ++i) EXPECT_NEAR(vb[i] * 9.0f, va[i], 1e-5f * std::max(1.0f, std::fabs(va[i])));
}

// Every op of the CNN sums in an order fixed by the shapes (the stem's chunks of images, Winograd's
// chunks of the batch, batch norm's chunks of rows, the GEMM's tiles), so one and two threads give
// the same gradients to the last bit.
TEST(ModelsCnn, GradientsDoNotDependOnTheThreadCount) {
  expect_same_gradients_on_one_and_two_threads([](Generator& gen) {
    auto model = std::make_unique<Cnn>(spec_cnn_options(), gen);
    const Tensor images = randn({32, 3, 32, 32}, DType::Float32, cpu(), gen);
    const Tensor labels = Tensor::from_vector(std::vector<int64_t>(32, 3), {32});
    return ModelAndLoss{std::move(model),
                        [images, labels](Model& m) { return cross_entropy(m.forward(images), labels); }};
  });
}

TEST(ModelsCnn, RejectsImagesTooSmallForItsPoolings) {
  CnnOptions options = cnn_options();
  options.widths = {8, 16, 32};
  Generator gen(0);
  Cnn model(options, gen);
  EXPECT_EQ(Cnn::min_image_size(3), 9);
  EXPECT_THROW(model.forward(zeros({1, 3, 8, 8})), std::invalid_argument);
  EXPECT_THROW(model.forward(zeros({1, 1, 16, 16})), std::invalid_argument);
}

TEST(ModelsCnn, WhiteningFiltersGiveThePatchesOfTheSampleIdentityCovariance) {
  // Channels mixed and pixels smoothed so that the raw 2x2 patches are strongly correlated.
  Generator gen(8);
  const Tensor noise = randn({6, 3, 9, 9}, DType::Float32, cpu(), gen);
  const Tensor mixed = add(noise, mul(index_select(noise, 1, Tensor::from_vector(std::vector<int64_t>{1, 2, 0}, {3})), 2.0));
  const Tensor smooth = avg_pool2d(mixed, 2, 1);  // [6, 3, 8, 8]
  const Tensor filters = patch_whitening_filters(smooth, 2, 1e-9);
  ASSERT_EQ(filters.shape(), (Shape{24, 3, 2, 2}));
  const std::vector<float> f = filters.to_vector<float>();
  for (size_t i = 0; i < f.size() / 2; ++i) EXPECT_EQ(f[f.size() / 2 + i], -f[i]);

  // Covariance of the first 12 output channels over every position of every image.
  const Tensor out = conv2d(smooth, filters, Tensor(), 1, 0);  // [6, 24, 7, 7]
  const Tensor positive = index_select(out, 1, arange(0, 12, 1, DType::Int64));
  const Tensor rows = positive.permute({1, 0, 2, 3}).reshape({12, 6 * 7 * 7}).to(DType::Float64);
  const std::vector<double> covariance = (matmul(rows, rows.t()) / static_cast<double>(6 * 7 * 7)).to_vector<double>();
  for (int64_t i = 0; i < 12; ++i)
    for (int64_t j = 0; j < 12; ++j) EXPECT_NEAR(covariance[i * 12 + j], i == j ? 1.0 : 0.0, 1e-4) << i << " " << j;
}

TEST(ModelsCnn, Airbench94OptionsFreezeTheStemFiltersAndNormScalesAndInitTheConvsAndHead) {
  CnnOptions options = cnn_options();
  options.widths = {8, 16};
  options.whiten = true;
  options.whiten_bias_epochs = 2;
  options.bn_freeze_weight = true;
  options.dirac_init = true;
  options.head_init_std = 0.5;
  Generator gen(3);
  Cnn model(options, gen);
  EXPECT_FALSE(model.stem->weight.requires_grad());
  EXPECT_TRUE(model.stem->bias.requires_grad());
  const auto group = std::dynamic_pointer_cast<ConvGroup>((*model.groups)[1]);
  for (const auto& norm : {group->norm1, group->norm2}) {
    EXPECT_FALSE(norm->weight.requires_grad());
    EXPECT_TRUE(norm->bias.requires_grad());
  }
  // Group 1's conv1 maps 8 -> 16 channels: filters 0..7 are the centre tap of their own channel.
  const std::vector<float> w = group->conv1->weight.to_vector<float>();
  for (int64_t o = 0; o < 16; ++o) {
    double off_centre = 0.0;
    for (int64_t i = 0; i < 8; ++i)
      for (int64_t t = 0; t < 9; ++t) {
        const float value = w[(o * 8 + i) * 9 + t];
        if (o < 8) {
          EXPECT_EQ(value, o == i && t == 4 ? 1.0f : 0.0f) << o << " " << i << " " << t;
        }
        off_centre += std::fabs(value);
      }
    if (o >= 8) {
      EXPECT_GT(off_centre, 0.0) << "filter " << o << " keeps its random init";
    }
  }
  EXPECT_NEAR(std::sqrt(var(model.head->weight).item()), 0.5, 1e-6);

  model.begin_training_step(0.0);
  EXPECT_TRUE(model.stem->bias.requires_grad());
  model.begin_training_step(1.96);
  EXPECT_TRUE(model.stem->bias.requires_grad());
  model.begin_training_step(2.0);
  EXPECT_FALSE(model.stem->bias.requires_grad());
  EXPECT_EQ(model.init_examples(), 5000);

  options.stem_width = 16;
  EXPECT_THROW(Cnn(options, gen), std::invalid_argument);
}

// ------------------------------------------------------------------ MLP

TEST(ModelsMlp, FlattensExamplesAndCountsParameters) {
  MlpOptions options = with_defaults(MlpOptions::settings());
  options.hidden = {};
  options.in_features = 2 * 3 * 3;
  options.hidden = {7, 5};
  options.num_classes = 4;
  Generator gen(0);
  Mlp model(options, gen);
  EXPECT_EQ(model.num_parameters(), (18 * 7 + 7) + (7 * 5 + 5) + (5 * 4 + 4));
  EXPECT_TRUE(parameter_names(model).count("head.weight"));
  EXPECT_EQ(model.forward(zeros({6, 2, 3, 3})).shape(), (Shape{6, 4}));
  EXPECT_THROW(model.forward(zeros({6, 17})), std::invalid_argument);
}

TEST(ModelsMlp, NoHiddenLayersIsALinearClassifier) {
  MlpOptions options = with_defaults(MlpOptions::settings());
  options.hidden = {};
  options.in_features = 5;
  options.num_classes = 3;
  Generator gen(0);
  Mlp model(options, gen);
  EXPECT_EQ(model.num_parameters(), 5 * 3 + 3);
}

// ------------------------------------------------------------------ all models

ModelSettings model_config(const std::string& model_yaml, const std::string& data_yaml) {
  return parse_config("name: t\ndata: " + data_yaml + "\nmodel: " + model_yaml +
                          "\noptimizer: {kind: sgd, lr: 0.1}\ntrain: {steps: 1}\n",
                      "test.yaml")
      .model;
}

TEST(ModelsFactory, BuildsEachKindFromItsConfigAndTheData) {
  const ModelSettings gpt = model_config("{kind: gpt, n_layer: 1, n_head: 2, n_embd: 8, position: rotary}",
                                       "{kind: text_char, path: x.txt, batch_size: 2, block_size: 6}");
  const std::shared_ptr<Model> lm = make_model(gpt, {{6}, 0, 13}, 0);
  EXPECT_EQ(lm->forward(zeros({2, 6}, DType::Int64)).shape(), (Shape{2, 6, 13}));
  EXPECT_NE(lm->summary().find("rotary"), std::string::npos);
  EXPECT_EQ(lm->summary().find("fused attention"), std::string::npos);  // composed by default
  const ModelSettings fused_gpt = model_config("{kind: gpt, n_layer: 1, n_head: 2, n_embd: 8, attention: fused}",
                                             "{kind: text_char, path: x.txt, batch_size: 2, block_size: 6}");
  EXPECT_NE(make_model(fused_gpt, {{6}, 0, 13}, 0)->summary().find("fused attention"), std::string::npos);

  const ModelSettings cnn =
      model_config("{kind: cnn, widths: [8], stem_width: 4}", "{kind: fashion_mnist, batch_size: 2}");
  EXPECT_EQ(make_model(cnn, {{1, 28, 28}, 10, 0}, 0)->forward(zeros({2, 1, 28, 28})).shape(), (Shape{2, 10}));

  const ModelSettings mlp = model_config("{kind: mlp, hidden: [4], num_classes: 6}", "{kind: synthetic, batch_size: 2}");
  EXPECT_EQ(make_model(mlp, {{16}, 4, 0}, 0)->forward(zeros({2, 16})).shape(), (Shape{2, 6}));
}

TEST(ModelsFactory, SameSeedSameWeightsDifferentSeedDifferentWeights) {
  const ModelSettings mlp = model_config("{kind: mlp, hidden: [4]}", "{kind: synthetic, batch_size: 2}");
  const auto a = make_model(mlp, {{16}, 4, 0}, 7), b = make_model(mlp, {{16}, 4, 0}, 7), c = make_model(mlp, {{16}, 4, 0}, 8);
  EXPECT_EQ(a->parameters()[0].to_vector<float>(), b->parameters()[0].to_vector<float>());
  EXPECT_NE(a->parameters()[0].to_vector<float>(), c->parameters()[0].to_vector<float>());
}

TEST(ModelsFactory, ConfigThatDoesNotFitTheDataIsRejected) {
  const ModelSettings gpt = model_config("{kind: gpt, n_layer: 1, n_head: 2, n_embd: 8, vocab_size: 5}",
                                       "{kind: text_char, path: x.txt, batch_size: 2, block_size: 6}");
  EXPECT_THROW(make_model(gpt, {{6}, 0, 13}, 0), std::invalid_argument);  // vocabulary too small
  const ModelSettings cnn = model_config("{kind: cnn, widths: [8, 8, 8, 8, 8]}", "{kind: fashion_mnist, batch_size: 2}");
  EXPECT_THROW(make_model(cnn, {{1, 28, 28}, 10, 0}, 0), std::invalid_argument);  // 28x28 too small for 5 poolings
}

TEST(ModelsFactory, EveryParameterReceivesAGradient) {
  GptOptions gpt_options = tiny_gpt_options();
  gpt_options.tie_weights = false;
  gpt_options.dropout = 0.1;
  CnnOptions cnn_settings = cnn_options();
  cnn_settings.widths = {4, 8};
  cnn_settings.stem_width = 4;
  MlpOptions mlp_options = with_defaults(MlpOptions::settings());
  mlp_options.in_features = 6;
  mlp_options.hidden = {5, 5};
  mlp_options.num_classes = 3;
  Generator gen(9);
  const std::vector<std::pair<std::shared_ptr<Model>, Tensor>> cases{
      {std::make_shared<Gpt>(gpt_options, gen), token_ids({1, 2, 3, 4, 5, 6, 7, 8}, 1, 8)},
      {std::make_shared<Cnn>(cnn_settings, gen), randn({2, 3, 9, 9}, DType::Float32, cpu(), gen)},
      {std::make_shared<Mlp>(mlp_options, gen), randn({2, 6}, DType::Float32, cpu(), gen)},
  };
  for (const auto& [model, inputs] : cases) {
    const Tensor logits = model->forward(inputs);
    sum(mul(logits, logits)).backward();
    for (const auto& [name, param] : model->named_parameters()) {
      ASSERT_TRUE(param.grad().defined()) << model->summary() << ": " << name;
      EXPECT_GT(norm(param.grad()).item(), 0.0) << model->summary() << ": " << name;
    }
  }
}

}  // namespace
}  // namespace ml
