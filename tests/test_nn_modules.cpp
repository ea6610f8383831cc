// Module trees (naming, weight tying, modes, devices), layer initialization, weight files,
// and memory stability of a training loop.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include "framework/backend.h"
#include "framework/io/safetensors.h"
#include "framework/nn/layers.h"
#include "framework/nn/module.h"
#include "framework/nn/serialize.h"
#include "framework/ops.h"
#include "tests/gradcheck.h"

namespace ml {
namespace {

using testing::expect_error_mentions;
using Names = std::vector<std::string>;

Names names_of(const NamedTensors& tensors) {
  Names names;
  for (const auto& entry : tensors) names.push_back(entry.first);
  return names;
}

std::vector<double> values(const Tensor& t) { return t.to_vector<double>(); }

// A small tree: an own parameter and buffer, nested children, and a Sequential of blocks.
struct Attention : Module {
  std::shared_ptr<Linear> qkv = register_module("qkv", std::make_shared<Linear>(4, 12));
  std::shared_ptr<Linear> proj = register_module("proj", std::make_shared<Linear>(4, 4, /*bias=*/false));
};
struct Block : UnaryModule {
  std::shared_ptr<LayerNorm> norm = register_module("norm", std::make_shared<LayerNorm>(4));
  std::shared_ptr<Attention> attn = register_module("attn", std::make_shared<Attention>());
  Tensor forward(const Tensor& x) override { return attn->proj->forward(norm->forward(x)); }
};
struct Net : Module {
  Tensor scale = register_parameter("scale", ones({4}));
  Tensor steps = register_buffer("steps", zeros({1}));
  std::shared_ptr<Sequential> blocks = register_module("blocks", std::make_shared<Sequential>());
  std::shared_ptr<BatchNorm2d> bn = register_module("bn", std::make_shared<BatchNorm2d>(3));
  Net() {
    for (int i = 0; i < 2; ++i) blocks->push_back(std::make_shared<Block>());
  }
};

TEST(NnModules, NamesAreDottedInRegistrationOrder) {
  Net net;
  const Names block0 = {"blocks.0.norm.weight", "blocks.0.norm.bias", "blocks.0.attn.qkv.weight",
                        "blocks.0.attn.qkv.bias", "blocks.0.attn.proj.weight"};
  Names expected = {"scale"};
  expected.insert(expected.end(), block0.begin(), block0.end());
  for (const std::string& name : block0) expected.push_back("blocks.1" + name.substr(8));
  expected.insert(expected.end(), {"bn.weight", "bn.bias"});
  EXPECT_EQ(names_of(net.named_parameters()), expected);
  EXPECT_EQ(names_of(net.named_buffers()), (Names{"steps", "bn.running_mean", "bn.running_var"}));
  Names state = expected;
  state.insert(state.end(), {"steps", "bn.running_mean", "bn.running_var"});
  EXPECT_EQ(names_of(net.state_dict()), state);

  // The listings hand out the registered tensors themselves, not copies.
  EXPECT_TRUE(net.named_parameters()[0].second.is_same(net.scale));
  EXPECT_TRUE(net.parameters()[3].is_same(std::static_pointer_cast<Block>((*net.blocks)[0])->attn->qkv->weight));
  for (const Tensor& p : net.parameters()) EXPECT_TRUE(p.requires_grad());
  for (const auto& [name, b] : net.named_buffers()) EXPECT_FALSE(b.requires_grad()) << name;
  EXPECT_EQ(net.num_parameters(), 4 + 2 * (4 + 4 + 48 + 12 + 16) + 3 + 3);
}

TEST(NnModules, TiedWeightIsListedOnceUnderItsFirstName) {
  struct TiedLM : Module {
    std::shared_ptr<Embedding> embed = register_module("embed", std::make_shared<Embedding>(10, 4));
    std::shared_ptr<LayerNorm> norm = register_module("norm", std::make_shared<LayerNorm>(4));
    std::shared_ptr<Linear> head = register_module("head", std::make_shared<Linear>(4, 10, false));
    TiedLM() { head->weight = head->replace_parameter("weight", embed->weight); }
  };
  TiedLM tied;
  EXPECT_EQ(names_of(tied.named_parameters()), (Names{"embed.weight", "norm.weight", "norm.bias"}));
  EXPECT_EQ(tied.num_parameters(), 40 + 8);
  EXPECT_TRUE(tied.head->weight.is_same(tied.embed->weight));
  EXPECT_TRUE(tied.head->own_parameters()[0].second.is_same(tied.embed->weight));
  EXPECT_EQ(names_of(tied.state_dict()), (Names{"embed.weight", "norm.weight", "norm.bias"}));

  // Gradients from both uses accumulate into the one tensor.
  const Tensor ids = Tensor::from_vector<int64_t>({1, 2}, {2});
  sum(tied.head->forward(tied.embed->forward(ids))).backward();
  EXPECT_TRUE(tied.embed->weight.grad().defined());

  expect_error_mentions([&] { tied.head->replace_parameter("bias", zeros({10})); }, {"'bias'", "not registered"});
  expect_error_mentions([&] { tied.head->replace_parameter("weight", zeros({4, 10})); },
                        {"'weight'", "[4, 10]", "[10, 4]"});
}

TEST(NnModules, RegistrationRejectsBadNamesAndTensors) {
  Module m;
  m.register_parameter("w", zeros({2}));
  expect_error_mentions([&] { m.register_parameter("w", zeros({2})); }, {"'w'", "already registered"});
  expect_error_mentions([&] { m.register_buffer("w", zeros({2})); }, {"'w'", "already registered"});
  expect_error_mentions([&] { m.register_module("w", std::make_shared<ReLU>()); }, {"'w'", "already registered"});
  expect_error_mentions([&] { m.register_parameter("a.b", zeros({2})); }, {"'a.b'", "invalid name"});
  expect_error_mentions([&] { m.register_buffer("", zeros({2})); }, {"invalid name"});
  expect_error_mentions([&] { m.register_parameter("u", Tensor()); }, {"'u'", "undefined"});
  expect_error_mentions([&] { m.register_parameter("i", zeros({2}, DType::Int64)); }, {"floating"});
  Tensor leaf = ones({2});
  leaf.requires_grad_();
  expect_error_mentions([&] { m.register_parameter("h", mul(leaf, 2.0)); }, {"'h'", "history"});
  expect_error_mentions([&] { m.register_module("n", std::shared_ptr<ReLU>()); }, {"'n'", "null"});
  EXPECT_EQ(names_of(m.named_parameters()), (Names{"w"}));
}

TEST(NnModules, TrainAndEvalPropagateThroughTheTree) {
  auto dropout = std::make_shared<Dropout>(0.5);
  auto bn = std::make_shared<BatchNorm2d>(2);
  Sequential outer;
  auto inner = outer.push_back(std::make_shared<Sequential>(std::initializer_list<std::shared_ptr<UnaryModule>>{bn}));
  outer.push_back(dropout);
  EXPECT_TRUE(outer.is_training() && inner->is_training() && bn->is_training() && dropout->is_training());
  outer.eval();
  EXPECT_FALSE(outer.is_training() || inner->is_training() || bn->is_training() || dropout->is_training());

  // Eval: dropout is the identity and batch norm uses (and keeps) the running statistics.
  Generator gen(5);
  const Tensor x = add(mul(randn({4, 2, 3, 3}, DType::Float32, cpu(), gen), 3.0), 2.0);
  const std::vector<double> input = values(x);
  EXPECT_EQ(values(dropout->forward(x)), input);
  const Tensor normalized = bn->forward(x);
  const std::vector<double> expected_eval = values(mul(x, 1.0 / std::sqrt(1.0 + 1e-5)));
  const std::vector<double> got_eval = values(normalized);
  for (size_t i = 0; i < input.size(); ++i) EXPECT_NEAR(got_eval[i], expected_eval[i], 1e-5);
  EXPECT_EQ(values(bn->running_mean), (std::vector<double>{0, 0}));
  EXPECT_EQ(values(bn->running_var), (std::vector<double>{1, 1}));

  // Train: dropout zeroes about half and scales the rest by 2; batch norm updates its statistics.
  outer.train();
  EXPECT_TRUE(bn->is_training() && dropout->is_training());
  const std::vector<double> dropped = values(dropout->forward(ones({1000})));
  int zeros_seen = 0;
  for (double v : dropped) {
    EXPECT_TRUE(v == 0.0 || std::abs(v - 2.0) < 1e-6) << v;
    zeros_seen += v == 0.0;
  }
  EXPECT_GT(zeros_seen, 400);
  EXPECT_LT(zeros_seen, 600);
  const Tensor batch_normalized = bn->forward(x);
  const std::vector<double> channel_mean = values(mean(batch_normalized, {0, 2, 3}));
  for (double m : channel_mean) EXPECT_NEAR(m, 0.0, 1e-5);
  const std::vector<double> expected_running = values(mul(mean(x, {0, 2, 3}), 0.1));
  const std::vector<double> running = values(bn->running_mean);
  for (size_t c = 0; c < 2; ++c) EXPECT_NEAR(running[c], expected_running[c], 1e-5);
}

TEST(NnModules, ZeroGradDropsEveryGradient) {
  Net net;
  Tensor loss = sum(net.scale);
  for (size_t i = 0; i < net.blocks->size(); ++i) loss = add(loss, sum((*net.blocks)[i]->forward(ones({3, 4}))));
  loss.backward();
  EXPECT_TRUE(net.scale.grad().defined());
  net.zero_grad();
  for (const auto& [name, p] : net.named_parameters()) EXPECT_FALSE(p.grad().defined()) << name;
}

TEST(NnModules, ToDeviceKeepsTensorIdentities) {
  Net net;
  const std::vector<Tensor> before = net.parameters();
  const std::vector<double> scale = values(net.scale);
  net.to(cpu());  // already there: nothing changes
  EXPECT_TRUE(net.parameters()[0].is_same(before[0]));
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device: moving between devices is not exercised";
  sum(net.scale).backward();
  net.to(cuda());
  const std::vector<Tensor> moved = net.parameters();
  ASSERT_EQ(moved.size(), before.size());
  for (size_t i = 0; i < moved.size(); ++i) {
    EXPECT_TRUE(moved[i].is_same(before[i]));
    EXPECT_TRUE(moved[i].device().is_cuda());
  }
  EXPECT_TRUE(net.scale.grad().device().is_cuda());
  for (const auto& [name, b] : net.named_buffers()) EXPECT_TRUE(b.device().is_cuda()) << name;
  net.to(cpu());
  EXPECT_EQ(values(net.scale), scale);
}

TEST(NnModules, SequentialAppliesLayersInOrder) {
  Generator gen(11);
  auto first = std::make_shared<Linear>(3, 5, true, gen);
  auto second = std::make_shared<Linear>(5, 2, true, gen);
  Sequential seq{first, std::make_shared<Tanh>(), second, std::make_shared<ReLU2>()};
  EXPECT_EQ(seq.size(), 4u);
  EXPECT_EQ(names_of(seq.named_parameters()), (Names{"0.weight", "0.bias", "2.weight", "2.bias"}));
  const Tensor x = randn({7, 3}, DType::Float32, cpu(), gen);
  const Tensor by_hand = relu2(add(matmul(tanh(add(matmul(x, first->weight.t()), first->bias)), second->weight.t()),
                                   second->bias));
  const std::vector<double> expected = values(by_hand), got = values(seq(x));
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], expected[i], 1e-5);
  expect_error_mentions([&] { seq.push_back(std::shared_ptr<ReLU>()); }, {"null"});
}

TEST(NnModules, LayersPassTheirSettingsToTheOps) {
  Generator gen(12);
  // Height and width settings must not be swapped: a 3x1 kernel, stride (2,1), padding (1,0).
  Conv2d conv(2, 4, {3, 1}, {2, 1}, {1, 0}, true, gen);
  EXPECT_EQ(conv.forward(randn({1, 2, 9, 5}, DType::Float32, cpu(), gen)).shape(), (Shape{1, 4, 5, 5}));

  RMSNorm rms(6, 0.5);
  {
    NoGradGuard no_grad;
    fill_(rms.weight, 2.0);
  }
  const Tensor x = randn({3, 6}, DType::Float32, cpu(), gen);
  const std::vector<double> expected = values(mul(div(x, sqrt(add(mean(mul(x, x), {1}, true), 0.5))), 2.0));
  const std::vector<double> got = values(rms(x));
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], expected[i], 1e-5);

  LayerNorm ln(6, 1e-5, /*affine=*/false);
  const std::vector<double> row_means = values(mean(ln(add(x, 3.0)), {1}));
  for (double m : row_means) EXPECT_NEAR(m, 0.0, 1e-5);

  expect_error_mentions([] { Dropout(1.0); }, {"Dropout", "[0, 1)"});
  expect_error_mentions([] { Linear(0, 3); }, {"Linear", "in_features"});
  expect_error_mentions([] { Conv2d(1, 1, {3, 0}); }, {"Conv2d", "kernel width"});
}

// ------------------------------------------------------------------------------- initialization

// Mean and (population) variance of all elements.
std::pair<double, double> moments(const Tensor& t) {
  const std::vector<double> v = values(t);
  double m = 0, s = 0;
  for (double x : v) m += x;
  m /= v.size();
  for (double x : v) s += (x - m) * (x - m);
  return {m, s / v.size()};
}

void expect_uniform(const Tensor& t, double bound, const std::string& what) {
  for (double v : values(t)) ASSERT_LT(std::abs(v), bound) << what;
  auto [m, var] = moments(t);
  const double expected_var = bound * bound / 3;
  EXPECT_NEAR(m, 0.0, 4 * std::sqrt(expected_var / t.numel())) << what;
  EXPECT_NEAR(var, expected_var, 0.1 * expected_var) << what;
  const std::vector<double> v = values(t);
  EXPECT_GT(*std::max_element(v.begin(), v.end()), 0.9 * bound) << what;
}

TEST(NnModules, InitializationFollowsPyTorchDefaults) {
  Generator gen(3);
  Linear linear(200, 64, true, gen);
  EXPECT_EQ(linear.weight.shape(), (Shape{64, 200}));
  expect_uniform(linear.weight, 1 / std::sqrt(200.0), "linear weight");
  for (double v : values(linear.bias)) EXPECT_LT(std::abs(v), 1 / std::sqrt(200.0));
  EXPECT_FALSE(Linear(3, 4, false, gen).bias.defined());

  Conv2d conv(16, 32, {3, 5}, 1, 0, true, gen);
  EXPECT_EQ(conv.weight.shape(), (Shape{32, 16, 3, 5}));
  expect_uniform(conv.weight, 1 / std::sqrt(16.0 * 15), "conv weight");
  for (double v : values(conv.bias)) EXPECT_LT(std::abs(v), 1 / std::sqrt(16.0 * 15));

  Embedding embedding(500, 40, gen);
  auto [m, var] = moments(embedding.weight);
  EXPECT_NEAR(m, 0.0, 0.02);
  EXPECT_NEAR(var, 1.0, 0.05);

  LayerNorm ln(6);
  EXPECT_EQ(values(ln.weight), std::vector<double>(6, 1.0));
  EXPECT_EQ(values(ln.bias), std::vector<double>(6, 0.0));
  EXPECT_TRUE(LayerNorm(6, 1e-5, false).named_parameters().empty());
  EXPECT_EQ(values(RMSNorm(5).weight), std::vector<double>(5, 1.0));
  BatchNorm2d bn(4);
  EXPECT_EQ(values(bn.weight), std::vector<double>(4, 1.0));
  EXPECT_EQ(values(bn.bias), std::vector<double>(4, 0.0));
  EXPECT_EQ(values(bn.running_mean), std::vector<double>(4, 0.0));
  EXPECT_EQ(values(bn.running_var), std::vector<double>(4, 1.0));
  EXPECT_EQ(names_of(BatchNorm2d(4, 0.1, 1e-5, false).state_dict()), (Names{"running_mean", "running_var"}));
}

TEST(NnModules, InitializationIsReproducibleFromTheGenerator) {
  Generator a(9), b(9), c(10);
  const Linear la(8, 8, true, a), lb(8, 8, true, b), lc(8, 8, true, c);
  EXPECT_EQ(values(la.weight), values(lb.weight));
  EXPECT_EQ(values(la.bias), values(lb.bias));
  EXPECT_NE(values(la.weight), values(lc.weight));
  // Consecutive layers draw fresh numbers from the same generator.
  const Linear next(8, 8, true, a);
  EXPECT_NE(values(next.weight), values(la.weight));
  manual_seed(21);
  const Embedding e1(4, 4);
  manual_seed(21);
  const Embedding e2(4, 4);
  EXPECT_EQ(values(e1.weight), values(e2.weight));
}

// ------------------------------------------------------------------------------- weight files

class NnModulesFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("muonlab_nn_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  std::filesystem::path dir_;
};

TEST_F(NnModulesFiles, SaveLoadRoundTripWritesInPlace) {
  Generator gen_a(1), gen_b(2);
  Sequential a{std::make_shared<Linear>(4, 6, true, gen_a), std::make_shared<BatchNorm2d>(6)};
  Sequential b{std::make_shared<Linear>(4, 6, true, gen_b), std::make_shared<BatchNorm2d>(6)};
  {
    NoGradGuard no_grad;
    Tensor running_mean = a.state_dict()[4].second;
    fill_(running_mean, 0.25);
  }
  save_weights(a, path("w.safetensors"), {{"step", "7"}});
  const std::vector<Tensor> handles = b.parameters();
  const auto metadata = load_weights(b, path("w.safetensors"));
  EXPECT_EQ(metadata.at("step"), "7");
  const NamedTensors sa = a.state_dict(), sb = b.state_dict();
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    EXPECT_EQ(sa[i].first, sb[i].first);
    EXPECT_EQ(values(sa[i].second), values(sb[i].second)) << sa[i].first;
  }
  for (size_t i = 0; i < handles.size(); ++i) EXPECT_TRUE(handles[i].is_same(b.parameters()[i]));
  for (const Tensor& p : b.parameters()) EXPECT_TRUE(p.requires_grad() && p.is_leaf());
  EXPECT_EQ(names_of(load_safetensors(path("w.safetensors")).tensors), names_of(sa));
}

TEST_F(NnModulesFiles, LoadErrorsNameFileAndTensorAndLeaveTheModuleUnchanged) {
  Generator gen(4);
  Linear model(3, 2, true, gen);
  const std::vector<double> weight = values(model.weight);
  const std::vector<double> bias = values(model.bias);
  auto expect_load_fails = [&](const std::string& file, const std::vector<std::string>& parts) {
    std::vector<std::string> all = parts;
    all.push_back(path(file));
    expect_error_mentions([&] { load_weights(model, path(file)); }, all);
    EXPECT_EQ(values(model.weight), weight);
    EXPECT_EQ(values(model.bias), bias);
  };
  const Tensor new_weight = ones({2, 3}), new_bias = ones({2});

  save_safetensors(path("missing.safetensors"), {{"weight", new_weight}});
  expect_load_fails("missing.safetensors", {"missing", "'bias'"});
  save_safetensors(path("unexpected.safetensors"),
                   {{"weight", new_weight}, {"bias", new_bias}, {"extra", new_bias}});
  expect_load_fails("unexpected.safetensors", {"unexpected", "'extra'"});
  save_safetensors(path("shape.safetensors"), {{"weight", ones({3, 2})}, {"bias", new_bias}});
  expect_load_fails("shape.safetensors", {"'weight'", "[3, 2]", "[2, 3]"});
  save_safetensors(path("dtype.safetensors"), {{"weight", new_weight}, {"bias", ones({2}, DType::Float64)}});
  expect_load_fails("dtype.safetensors", {"'bias'", "float64", "float32"});

  save_weights(model, path("corrupt.safetensors"));
  std::filesystem::resize_file(path("corrupt.safetensors"), std::filesystem::file_size(path("corrupt.safetensors")) - 4);
  expect_load_fails("corrupt.safetensors", {});
  {
    std::ofstream garbage(path("garbage.safetensors"), std::ios::binary);
    garbage << "not a safetensors file at all";
  }
  expect_load_fails("garbage.safetensors", {});
  expect_load_fails("absent.safetensors", {});
}

// ------------------------------------------------------------------------------- memory

// Resident set size in bytes, from /proc/self/statm (second field, in pages).
double resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  long total_pages = 0, resident_pages = 0;
  statm >> total_pages >> resident_pages;
  return static_cast<double>(resident_pages) * static_cast<double>(::sysconf(_SC_PAGESIZE));
}

TEST(NnModules, TrainingLoopMemoryStaysFlat) {
#ifdef __SANITIZE_ADDRESS__
  // AddressSanitizer keeps freed blocks in a quarantine (256 MB by default), so RSS measures the
  // quarantine, not us; the release build runs this test, and ASan itself reports real leaks.
  GTEST_SKIP() << "RSS is not meaningful under AddressSanitizer";
#endif
  Generator gen(8);
  Sequential mlp{std::make_shared<Linear>(32, 64, true, gen), std::make_shared<GELU>(),
                 std::make_shared<Linear>(64, 64, true, gen), std::make_shared<ReLU>(),
                 std::make_shared<Linear>(64, 10, true, gen)};
  const Tensor x = randn({32, 32}, DType::Float32, cpu(), gen);
  const Tensor labels = Tensor::from_vector<int64_t>(std::vector<int64_t>(32, 3), {32});
  std::vector<Tensor> params = mlp.parameters();
  double first_loss = 0, last_loss = 0, rss_at_warmup = 0;
  for (int step = 1; step <= 1000; ++step) {
    mlp.zero_grad();
    Tensor loss = cross_entropy(mlp(x), labels);
    loss.backward();
    {
      NoGradGuard no_grad;
      for (Tensor& p : params) add_(p, p.grad(), -0.05);
    }
    if (step == 1) first_loss = loss.item();
    if (step == 100) rss_at_warmup = resident_bytes();
    last_loss = loss.item();
  }
  const double growth = resident_bytes() - rss_at_warmup;
  EXPECT_LT(growth, 5e6) << "RSS grew by " << growth / 1e6 << " MB between steps 100 and 1000";
  EXPECT_LT(last_loss, 0.1 * first_loss);  // the loop really trained
}

}  // namespace
}  // namespace ml
