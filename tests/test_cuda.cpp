// CPU/CUDA parity: every op's forward and backward on cuda:0 against the CPU backend on the same
// float32 inputs. Without a CUDA device (or without CUDA compiled in) every test skips.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>

#include "framework/backend.h"
#include "framework/ops.h"
#include "optimizers/factory.h"
#include "tests/gradcheck.h"

#ifdef MUONLAB_WITH_CUDA
#include "framework/backends/cuda/cuda_backend.h"
#endif

using namespace ml;

namespace {

class CudaParity : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device (or built without CUDA): parity tests need a GPU";
  }
};

double relative_error(const Tensor& got, const Tensor& want) {
  const auto g = got.to_vector<double>(), w = want.to_vector<double>();
  double diff = 0, norm = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    diff += (g[i] - w[i]) * (g[i] - w[i]);
    norm += w[i] * w[i];
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
}

Tensor float_input(const Shape& shape, uint64_t seed, double shift = 0.0) {
  Generator gen(seed);
  return add(randn(shape, DType::Float32, cpu(), gen), shift);
}

// Runs f on CPU copies and on CUDA copies of `inputs` (float leaves that require grad, or
// constants such as Int64 indices), then compares the outputs and every input gradient.
void expect_parity(const std::function<Tensor(const std::vector<Tensor>&)>& f, const std::vector<Tensor>& inputs,
                   double tol = 1e-5) {
  auto run = [&](Device device, std::vector<Tensor>& leaves) {
    for (const Tensor& x : inputs) {
      Tensor copy = x.to(device).clone();
      if (is_floating(copy.dtype())) copy.requires_grad_();
      leaves.push_back(copy);
    }
    Tensor out = f(leaves);
    Generator gen(99);
    const Tensor weight = randn(out.shape(), out.dtype(), cpu(), gen).to(device);
    if (out.requires_grad()) sum(mul(out, weight)).backward();
    return out;
  };
  std::vector<Tensor> cpu_leaves, gpu_leaves;
  const Tensor want = run(cpu(), cpu_leaves);
  const Tensor got = run(cuda(), gpu_leaves);
  ASSERT_EQ(got.device(), cuda());
  ASSERT_EQ(got.shape(), want.shape());
  EXPECT_LE(relative_error(got, want), tol) << "forward";
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!cpu_leaves[i].grad().defined()) continue;
    ASSERT_TRUE(gpu_leaves[i].grad().defined()) << "input " << i;
    EXPECT_LE(relative_error(gpu_leaves[i].grad(), cpu_leaves[i].grad()), tol) << "gradient of input " << i;
  }
}

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

}  // namespace

TEST(CudaAvailability, ReportsOrSkipsCleanly) {
  // Without a device, asking for the CUDA backend is a clear error, never a crash.
  if (cuda_available()) GTEST_SKIP() << "a CUDA device is present";
  ml::testing::expect_error_mentions([] { Tensor::empty({2}, DType::Float32, cuda()); }, {"cuda"});
}

TEST_F(CudaParity, TransfersRoundTrip) {
  const Tensor x = float_input({3, 5}, 1);
  EXPECT_EQ(x.to(cuda()).to(cpu()).to_vector<float>(), x.to_vector<float>());
  EXPECT_EQ(x.t().to(cuda()).to(cpu()).to_vector<float>(), x.t().contiguous().to_vector<float>());
}

TEST_F(CudaParity, ElementwiseWithBroadcastingAndStrides) {
  const std::vector<std::pair<const char*, Fn>> unary = {
      {"exp", [](auto& in) { return exp(in[0]); }},        {"log", [](auto& in) { return log(add(abs(in[0]), 1.0)); }},
      {"tanh", [](auto& in) { return tanh(in[0]); }},      {"sigmoid", [](auto& in) { return sigmoid(in[0]); }},
      {"relu2", [](auto& in) { return relu2(in[0]); }},    {"gelu", [](auto& in) { return gelu(in[0]); }},
      {"gelu_tanh", [](auto& in) { return gelu(in[0], GeluApprox::Tanh); }},
      {"silu", [](auto& in) { return silu(in[0]); }},      {"rsqrt", [](auto& in) { return rsqrt(add(abs(in[0]), 1.0)); }},
      {"clamp", [](auto& in) { return clamp(in[0], -0.3, 0.4); }},
      {"transposed", [](auto& in) { return exp(in[0].t()); }},
  };
  for (const auto& [name, f] : unary) {
    SCOPED_TRACE(name);
    expect_parity(f, {float_input({17, 33}, 2)});
  }
  const Fn binary = [](auto& in) { return add(mul(in[0], in[1]), div(in[0], add(mul(in[1], in[1]), 1.0))); };
  expect_parity(binary, {float_input({4, 1, 6}, 3), float_input({5, 1}, 4)});
  expect_parity([](auto& in) { return maximum(in[0], in[1].t()); }, {float_input({6, 7}, 5), float_input({7, 6}, 6)});
  expect_parity([](auto& in) { return where(gt(in[0], in[1]), in[0], in[1]); }, {float_input({9}, 7), float_input({9}, 8)});
}

TEST_F(CudaParity, ReductionsAndIndexing) {
  for (const std::vector<int64_t>& axes : std::vector<std::vector<int64_t>>{{}, {0}, {2}, {0, 2}}) {
    expect_parity([&](auto& in) { return sum(in[0], axes); }, {float_input({5, 6, 7}, 9)});
    expect_parity([&](auto& in) { return amax(in[0], axes, true); }, {float_input({5, 6, 7}, 10)});
    expect_parity([&](auto& in) { return var(in[0], axes); }, {float_input({5, 6, 7}, 11)});
  }
  expect_parity([](auto& in) { return max(in[0], 1).first; }, {float_input({5, 300}, 12)});
  const Tensor idx = Tensor::from_vector<int64_t>({3, 0, 3, 1}, {4});
  expect_parity([](auto& in) { return index_select(in[0], 0, in[1]); }, {float_input({4, 5}, 13), idx});
  const Tensor gidx = Tensor::from_vector<int64_t>({1, 0, 2, 2, 0, 1}, {3, 2});
  expect_parity([](auto& in) { return gather(in[0], 1, in[1]); }, {float_input({3, 3}, 14), gidx});
  expect_parity([](auto& in) { return cat({in[0], in[1].narrow(1, 1, 2)}, 0); }, {float_input({2, 2}, 15), float_input({3, 4}, 16)});
}

TEST_F(CudaParity, MatmulPlainBatchedTransposed) {
  expect_parity([](auto& in) { return matmul(in[0], in[1]); }, {float_input({64, 48}, 17), float_input({48, 80}, 18)}, 1e-5);
  expect_parity([](auto& in) { return matmul(in[0], in[1].transpose(-1, -2)); },
                {float_input({3, 4, 16, 8}, 19), float_input({3, 4, 16, 8}, 20)}, 1e-5);
  expect_parity([](auto& in) { return matmul(in[0], in[1]); }, {float_input({2, 3, 7, 5}, 21), float_input({5, 9}, 22)}, 1e-5);
}

TEST_F(CudaParity, NeuralNetworkOps) {
  expect_parity([](auto& in) { return softmax(in[0], 1); }, {float_input({4, 37, 3}, 23)});
  expect_parity([](auto& in) { return log_softmax(in[0]); }, {float_input({6, 300}, 24)});
  expect_parity([](auto& in) { return layer_norm(in[0], in[1], in[2]); },
                {float_input({10, 96}, 25), float_input({96}, 26), float_input({96}, 27)});
  expect_parity([](auto& in) { return rms_norm(in[0], in[1]); }, {float_input({10, 96}, 28), float_input({96}, 29)});
  const Tensor targets = Tensor::from_vector<int64_t>({1, 4, -100, 0, 2, 3}, {6});
  expect_parity([](auto& in) { return cross_entropy(in[0], in[1], -100, 0.2); }, {float_input({6, 5}, 30), targets});
  const Tensor ids = Tensor::from_vector<int64_t>({0, 5, 5, 2, 7, 1}, {2, 3});
  expect_parity([](auto& in) { return embedding(in[1], in[0]); }, {float_input({8, 16}, 31), ids});
  expect_parity([](auto& in) { return scaled_dot_product_attention(in[0], in[1], in[2], true); },
                {float_input({2, 3, 16, 8}, 32), float_input({2, 3, 16, 8}, 33), float_input({2, 3, 16, 8}, 34)});
  // Dropout masks come from the counter-based generator: identical on both devices.
  expect_parity([](auto& in) { Generator gen(5); return dropout(in[0], 0.3, true, gen); }, {float_input({64, 64}, 35)});
}

TEST_F(CudaParity, ConvolutionPoolingBatchNorm) {
  expect_parity([](auto& in) { return conv2d(in[0], in[1], in[2], 1, 1); },
                {float_input({4, 3, 9, 9}, 36), float_input({8, 3, 3, 3}, 37), float_input({8}, 38)}, 1e-5);
  expect_parity([](auto& in) { return conv2d(in[0], in[1], Tensor(), 2, 0); },
                {float_input({2, 4, 8, 8}, 39), float_input({5, 4, 2, 2}, 40)}, 1e-5);
  expect_parity([](auto& in) { return max_pool2d(in[0], 2); }, {float_input({2, 3, 8, 8}, 41)});
  expect_parity([](auto& in) { return avg_pool2d(in[0], 3, 2, 1); }, {float_input({2, 3, 9, 9}, 42)});
  expect_parity([](auto& in) { return global_max_pool2d(in[0]); }, {float_input({2, 3, 5, 5}, 43)});
  expect_parity(
      [](auto& in) {
        Tensor running_mean = zeros({4}, DType::Float32, in[0].device()), running_var = ones({4}, DType::Float32, in[0].device());
        return batch_norm2d(in[0], running_mean, running_var, in[1], in[2], true, 0.1);
      },
      {float_input({6, 4, 5, 5}, 44), float_input({4}, 45, 1.0), float_input({4}, 46)});
}

TEST_F(CudaParity, TopkMatchesTheCpuIncludingTiesAndNans) {
  std::mt19937_64 rng(17);
  std::uniform_int_distribution<int> small(-3, 3);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
    return std::equal(a.begin(), a.end(), b.begin(), b.end(),
                      [](float x, float y) { return (std::isnan(x) && std::isnan(y)) || x == y; });
  };
  // Few distinct values (many ties) plus NaNs; a 1 x 8192 row is the largest slice count Dion2 ranks.
  for (const Shape& shape : {Shape{1, 50}, Shape{7, 33}, Shape{2, 3000}, Shape{1, 8192}}) {
    const int64_t n = shape[1];
    std::vector<float> data(static_cast<size_t>(numel_of(shape)));
    for (float& d : data) d = static_cast<float>(small(rng));
    data[1] = data[static_cast<size_t>(n / 2)] = data.back() = nan;
    const Tensor x = Tensor::from_vector(data, shape);
    const Tensor x_gpu = x.to(cuda());
    for (const int64_t k : {int64_t{1}, int64_t{3}, n / 4, n})
      for (TopkOrder order : {TopkOrder::ByValue, TopkOrder::ByIndex}) {
        SCOPED_TRACE(shape_str(shape) + " k " + std::to_string(k) + (order == TopkOrder::ByIndex ? " by index" : ""));
        const auto [want_values, want_indices] = topk(x, k, -1, order);
        const auto [got_values, got_indices] = topk(x_gpu, k, -1, order);
        ASSERT_EQ(got_values.device(), cuda());
        EXPECT_EQ(got_indices.to_vector<int64_t>(), want_indices.to_vector<int64_t>());
        EXPECT_TRUE(same(got_values.to_vector<float>(), want_values.to_vector<float>()));
      }
  }
  // Distinct values along a middle dim, and the gradient of the values.
  expect_parity([](auto& in) { return topk(in[0], 4, 1).first; }, {float_input({3, 40, 5}, 47)});
  expect_parity([](auto& in) { return topk(in[0], 6, -1, TopkOrder::ByIndex).first; }, {float_input({5, 64}, 48)});
}

TEST_F(CudaParity, BadIndicesAreReportedAtTheNextSynchronization) {
  const Tensor x = float_input({4, 3}, 60).to(cuda());
  const Tensor bad = Tensor::from_vector<int64_t>({1, 7}, {2}).to(cuda());
  // The op itself does not wait for the device: its kernel records the bad index, and the next
  // copy to the host reports it.
  const Tensor selected = index_select(x, 0, bad);
  ml::testing::expect_error_mentions([&] { selected.to_vector<float>(); }, {"index_select", "index 7", "[0, 4)"});
  // The report clears the record: valid work then runs clean, and a later bad index is reported anew.
  const Tensor good = Tensor::from_vector<int64_t>({3, 0}, {2});
  EXPECT_EQ(index_select(x, 0, good.to(cuda())).to_vector<float>(), index_select(x.to(cpu()), 0, good).to_vector<float>());
  const Tensor logits = float_input({3, 4}, 61).to(cuda());
  const Tensor targets = Tensor::from_vector<int64_t>({0, 5, -100}, {3}).to(cuda());
  const Tensor loss = cross_entropy(logits, targets);
  ml::testing::expect_error_mentions([&] { loss.item(); }, {"cross_entropy", "target 5", "4 classes"});
  const Tensor scatter_index = Tensor::from_vector<int64_t>({-1}, {1, 1}).to(cuda());
  const Tensor scattered = scatter_add(zeros({2, 2}, DType::Float32, cuda()), 1, scatter_index, ones({1, 1}, DType::Float32, cuda()));
  ml::testing::expect_error_mentions([&] { scattered.to_vector<float>(); }, {"scatter_add", "index -1", "[0, 2)"});
}

#ifdef MUONLAB_WITH_CUDA
namespace {

// Parameters of every shape a Muon-family optimizer meets (wide, tall, a conv filter) and a bias
// for the non-matrix optimizer, float32 on `device`.
std::vector<NamedParam> toy_parameters(Device device) {
  const std::vector<std::pair<std::string, Shape>> layout{
      {"fc.weight", {24, 40}}, {"proj.weight", {40, 24}}, {"conv.weight", {8, 3, 3, 3}}, {"fc.bias", {24}}};
  std::vector<NamedParam> params;
  for (size_t i = 0; i < layout.size(); ++i) {
    Tensor p = float_input(layout[i].second, 50 + i).to(device);
    p.requires_grad_();
    params.push_back({layout[i].first, p});
  }
  return params;
}

struct StepsOutcome {
  std::vector<Tensor> updates;  // parameter after the steps minus before, on the CPU
  int64_t device_to_host_copies = 0;  // made inside step() calls
};

StepsOutcome run_steps(const OptimizerSpec& spec, Device device) {
  std::vector<NamedParam> params = toy_parameters(device);
  std::vector<Tensor> initial;
  for (const NamedParam& p : params) initial.push_back(p.param.to(cpu()).clone());
  const auto optimizer = make_optimizer(spec, params);
  StepsOutcome outcome;
  for (int step = 0; step < 2; ++step) {
    for (size_t i = 0; i < params.size(); ++i)
      params[i].param.set_grad(float_input(params[i].param.shape(), 200 + 10 * step + i).to(device));
    const int64_t before = cuda_device_to_host_copies();
    optimizer->step();
    outcome.device_to_host_copies += cuda_device_to_host_copies() - before;
  }
  for (size_t i = 0; i < params.size(); ++i) outcome.updates.push_back(sub(params[i].param.to(cpu()), initial[i]));
  return outcome;
}

}  // namespace

TEST_F(CudaParity, OptimizerStepsMakeNoHostCopiesAndMatchTheCpu) {
  // CacheMuon is left out on purpose: its cache hit test reads one residual per matrix on the host.
  const std::vector<std::pair<std::string, std::string>> cases{
      {"sgd", "l1"},       {"adamw", "l1"},    {"muon", "l1"}, {"turbo_muon", "l1"},
      {"dion2", "l1"},     {"dion2", "random"}, {"rmnp", "l1"}, {"normuon", "l1"}};
  for (const auto& [kind, selection] : cases) {
    SCOPED_TRACE(kind + " " + selection);
    OptimizerSpec spec;
    spec.kind = kind;
    // Updates well above float32 rounding of the weights (the non-matrix default lr 3e-4 is not),
    // so that comparing them is meaningful.
    spec.lr = 0.05;
    spec.non_matrix.lr = 0.05;
    spec.weight_decay = 0.1;
    spec.selection = selection;
    spec.seed = 11;
    const StepsOutcome want = run_steps(spec, cpu());
    const StepsOutcome got = run_steps(spec, cuda());
    EXPECT_EQ(got.device_to_host_copies, 0);
    // Float32 Newton–Schulz on these shapes lands within 5e-6 of float64 (the elementwise
    // optimizers within 1e-6), so two float32 backends stay far inside 1e-4; a wrong slice choice
    // or a wrong kernel is off by O(1).
    for (size_t i = 0; i < want.updates.size(); ++i)
      EXPECT_LE(relative_error(got.updates[i], want.updates[i]), 1e-4) << "parameter " << i;
  }
}
#endif

