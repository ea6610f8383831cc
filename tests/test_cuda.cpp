// CPU/CUDA parity: every op's forward and backward on cuda:0 against the CPU backend on the same
// float32 inputs. Without a CUDA device (or without CUDA compiled in) every test skips.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <ios>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "experiments/bench_models.h"
#include "experiments/trainer.h"
#include "framework/backend.h"
#include "framework/backends/bfloat16.h"
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

// The norm of got - want over want's norm, or over an RMS of `floor_rms` per element where that is
// larger.
double relative_error(const Tensor& got, const Tensor& want, double floor_rms = 0.0) {
  const auto g = got.to_vector<double>(), w = want.to_vector<double>();
  double diff = 0, norm = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    diff += (g[i] - w[i]) * (g[i] - w[i]);
    norm += w[i] * w[i];
  }
  const double floor = floor_rms * std::sqrt(static_cast<double>(w.size()));
  return std::sqrt(diff) / std::max({std::sqrt(norm), floor, 1e-30});
}

Tensor float_input(const Shape& shape, uint64_t seed, double shift = 0.0) {
  Generator gen(seed);
  return add(randn(shape, DType::Float32, cpu(), gen), shift);
}

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

// Runs on_cuda on CUDA copies of `inputs` (float leaves that require grad, or constants such as
// Int64 indices) and on_cpu on CPU copies, then compares the outputs and every input gradient.
void expect_cuda_matches_cpu(const Fn& on_cuda, const Fn& on_cpu, const std::vector<Tensor>& inputs,
                             double tol = 1e-5) {
  auto run = [&](Device device, std::vector<Tensor>& leaves) {
    for (const Tensor& x : inputs) {
      Tensor copy = x.to(device).clone();
      if (is_floating(copy.dtype())) copy.requires_grad_();
      leaves.push_back(copy);
    }
    Tensor out = device.is_cuda() ? on_cuda(leaves) : on_cpu(leaves);
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

// The same function on both devices.
void expect_parity(const Fn& f, const std::vector<Tensor>& inputs, double tol = 1e-5) {
  expect_cuda_matches_cpu(f, f, inputs, tol);
}

// Equal element by element, a NaN equal to a NaN.
bool same_values(const std::vector<float>& a, const std::vector<float>& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(),
                    [](float x, float y) { return (std::isnan(x) && std::isnan(y)) || x == y; });
}

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
  // syrk of a stack and of a transposed stack (the backend's default: one batched product)
  expect_parity([](auto& in) { return syrk(in[0], 0.5); }, {float_input({3, 16, 24}, 23)}, 1e-5);
  expect_parity([](auto& in) { return syrk(in[0].transpose(-1, -2)); }, {float_input({3, 24, 16}, 24)}, 1e-5);
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
  for (UnaryOp activation : {UnaryOp::Relu, UnaryOp::GeluErf})
    expect_parity(
        [activation](auto& in) {
          return batch_norm2d(in[0], Tensor(), Tensor(), in[1], in[2], true, 0.1, 1e-5, activation);
        },
        {float_input({6, 4, 5, 5}, 47), float_input({4}, 48, 1.0), float_input({4}, 49)}, 1e-5);
}

// The fused kernels on CUDA against the composed op on the CPU. Sequence lengths are chosen
// around the kernels' tiles (8 rows per block, 32 keys or queries per staged tile): partial
// tiles at both ends, several tiles, fewer rows than one block; head sizes up to the 128 limit.
TEST_F(CudaParity, FusedAttentionMatchesComposedOnTheCpu) {
  struct Case {
    int64_t queries, keys, head_dim, value_dim;
    bool causal;
  };
  std::vector<Case> cases;
  for (int64_t head_dim : {16, 32, 64, 128}) {
    cases.push_back({45, 45, head_dim, head_dim, true});
    cases.push_back({70, 70, head_dim, head_dim, true});
    cases.push_back({37, 70, head_dim, head_dim, false});
    cases.push_back({5, 3, head_dim, head_dim, false});
  }
  cases.push_back({33, 40, 24, 40, false});  // value width differing from the head size
  cases.push_back({6, 6, 7, 7, true});       // a head size that is not a multiple of 32
  uint64_t seed = 100;
  for (const Case& c : cases) {
    SCOPED_TRACE("T " + std::to_string(c.queries) + ", S " + std::to_string(c.keys) + ", D " +
                 std::to_string(c.head_dim) + ", Dv " + std::to_string(c.value_dim) + (c.causal ? ", causal" : ""));
    const bool causal = c.causal;
    expect_cuda_matches_cpu(
        [causal](auto& in) { return scaled_dot_product_attention(in[0], in[1], in[2], causal, AttentionImpl::Fused); },
        [causal](auto& in) { return scaled_dot_product_attention(in[0], in[1], in[2], causal, AttentionImpl::Composed); },
        {float_input({2, 3, c.queries, c.head_dim}, seed++), float_input({2, 3, c.keys, c.head_dim}, seed++),
         float_input({2, 3, c.keys, c.value_dim}, seed++)});
  }
  // Heads split from a [B, T, H, D] layout: the op makes the views contiguous for the kernels.
  expect_cuda_matches_cpu(
      [](auto& in) {
        return scaled_dot_product_attention(in[0].transpose(1, 2), in[1].transpose(1, 2), in[2].transpose(1, 2), true,
                                            AttentionImpl::Fused);
      },
      [](auto& in) { return scaled_dot_product_attention(in[0].transpose(1, 2), in[1].transpose(1, 2), in[2].transpose(1, 2)); },
      {float_input({2, 19, 4, 32}, seed++), float_input({2, 19, 4, 32}, seed++), float_input({2, 19, 4, 32}, seed++)});
}

TEST_F(CudaParity, FusedAttentionRejectsWhatItCannotRun) {
  const auto fused = [](const Shape& shape, DType dtype) {
    const Tensor x = ones(shape, dtype, cuda());
    return scaled_dot_product_attention(x, x, x, true, AttentionImpl::Fused);
  };
  ml::testing::expect_error_mentions([&] { fused({1, 2, 4, 129}, DType::Float32); }, {"attention", "128", "129"});
  ml::testing::expect_error_mentions([&] { fused({1, 2, 4, 8}, DType::Float64); }, {"attention", "float32", "float64"});
}

// Auto (the default) takes the composed path where the fused kernels cannot run (head size 129,
// float64), so it runs and matches the CPU where Fused is refused; float32 at 64 takes the fused one.
TEST_F(CudaParity, AutoAttentionRunsComposedWhereTheFusedKernelsCannot) {
  EXPECT_FALSE(backend_for(cuda()).can_fuse_attention(DType::Float32, 129, 129));
  EXPECT_FALSE(backend_for(cuda()).can_fuse_attention(DType::Float64, 64, 64));
  EXPECT_TRUE(backend_for(cuda()).can_fuse_attention(DType::Float32, 128, 128));
  uint64_t seed = 300;
  for (const auto& [shape, dtype] : {std::pair{Shape{1, 2, 16, 129}, DType::Float32},
                                     std::pair{Shape{1, 2, 16, 8}, DType::Float64},
                                     std::pair{Shape{2, 2, 16, 64}, DType::Float32}}) {
    SCOPED_TRACE(shape_str(shape) + " " + dtype_name(dtype));
    const auto input = [&] { return float_input(shape, seed++).to(dtype); };
    expect_cuda_matches_cpu(
        [](auto& in) { return scaled_dot_product_attention(in[0], in[1], in[2], true, AttentionImpl::Auto); },
        [](auto& in) { return scaled_dot_product_attention(in[0], in[1], in[2], true, AttentionImpl::Composed); },
        {input(), input(), input()}, 1e-4);
  }
}

// Runs everywhere: the rounding the CUDA backend applies to bf16 GEMM operands. bf16 keeps 7
// mantissa bits, so next to 1 its spacing is 2^-7 and 1 + 2^-8 lies halfway between two values.
TEST(Bfloat16Rounding, RoundsToNearestWithTiesToEven) {
  const std::vector<std::pair<float, float>> cases = {
      {1.0f, 1.0f},
      {0x1.02p0f, 0x1.02p0f},        // representable: unchanged
      {0x1.01p0f, 1.0f},             // tie between 1 (even) and 1 + 2^-7 (odd): down
      {0x1.03p0f, 0x1.04p0f},        // tie between 1 + 2^-7 (odd) and 1 + 2^-6 (even): up
      {0x1.010002p0f, 0x1.02p0f},    // just above a tie: up
      {0x1.00fffep0f, 1.0f},         // just below a tie: down
      {-0x1.01p0f, -1.0f},           // the sign does not change the rounding
      {-0x1.03p0f, -0x1.04p0f},
      {0x1.ffp0f, 2.0f},             // a tie rounding up carries into the exponent
      {0x1.8p-133f, 0x1p-132f},      // subnormal tie between 2^-133 (odd) and 2^-132 (even): up
      {0x1p-134f, 0.0f},             // subnormal tie between 0 (even) and 2^-133: down
      {0x1.fep127f, 0x1.fep127f},    // the largest finite bf16
      {0x1.fffffep127f, INFINITY},   // beyond it by more than half a step: overflows
      {-INFINITY, -INFINITY},
  };
  for (const auto& [x, want] : cases) EXPECT_EQ(round_to_bfloat16(x), want) << std::hexfloat << x;
  EXPECT_EQ(bfloat16_bits(1.0f), 0x3f80);
  EXPECT_EQ(bfloat16_bits(-2.0f), 0xc000);
  EXPECT_TRUE(std::signbit(round_to_bfloat16(-0.0f)));
  // A NaN whose payload lies only in the dropped bits must not round to infinity.
  const uint32_t signaling_nan_bits = 0x7f800001u;
  float signaling_nan;
  std::memcpy(&signaling_nan, &signaling_nan_bits, sizeof signaling_nan);
  EXPECT_TRUE(std::isnan(round_to_bfloat16(signaling_nan)));
  EXPECT_TRUE(std::isnan(round_to_bfloat16(-NAN)));
}

TEST_F(CudaParity, TopkMatchesTheCpuIncludingTiesAndNans) {
  std::mt19937_64 rng(17);
  std::uniform_int_distribution<int> small(-3, 3);
  const float nan = std::numeric_limits<float>::quiet_NaN();
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
        EXPECT_TRUE(same_values(got_values.to_vector<float>(), want_values.to_vector<float>()));
      }
  }
  // Distinct values along a middle dim, and the gradient of the values.
  expect_parity([](auto& in) { return topk(in[0], 4, 1).first; }, {float_input({3, 40, 5}, 47)});
  expect_parity([](auto& in) { return topk(in[0], 6, -1, TopkOrder::ByIndex).first; }, {float_input({5, 64}, 48)});
}

// Attention at realistic shapes, composed and fused, against the CPU. [1, 1025, 64, 16] has
// 65,600 softmax rows: more than 65,535, with 65,535 not a multiple of T = 64, so a causal mask
// computed from the row within a launch slice (rather than the global row) would shift past the
// first slice. [2, 6, 256, 32] is a GPT block's shape.
TEST_F(CudaParity, CausalAttentionAtRealisticShapesAndPast65535Rows) {
  uint64_t seed = 200;
  for (const Shape& shape : {Shape{1, 1025, 64, 16}, Shape{2, 6, 256, 32}})
    for (AttentionImpl impl : {AttentionImpl::Composed, AttentionImpl::Fused}) {
      SCOPED_TRACE(shape_str(shape) + (impl == AttentionImpl::Fused ? " fused" : " composed"));
      expect_cuda_matches_cpu(
          [impl](auto& in) { return scaled_dot_product_attention(in[0], in[1], in[2], true, impl); },
          [](auto& in) { return scaled_dot_product_attention(in[0], in[1], in[2], true, AttentionImpl::Composed); },
          {float_input(shape, seed++), float_input(shape, seed++), float_input(shape, seed++)}, 1e-4);
    }
}

// Row kernels with row lengths that are not multiples of a warp and longer than a block's threads;
// 5000 is also longer than one block's chunk of a row reduction (4096), so sums and maxima add up
// two chunks, the second partial.
TEST_F(CudaParity, RowKernelsWithLongOddRows) {
  for (int64_t n : {33, 1025, 1500, 2049, 5000}) {
    SCOPED_TRACE("row length " + std::to_string(n));
    expect_parity([](auto& in) { return softmax(in[0]); }, {float_input({7, n}, 70)});
    expect_parity([](auto& in) { return log_softmax(in[0]); }, {float_input({5, n}, 71)});
    expect_parity([](auto& in) { return sum(in[0], {1}); }, {float_input({9, n}, 72)});
    expect_parity([](auto& in) { return amax(in[0], {1}); }, {float_input({9, n}, 73)});
    expect_parity([](auto& in) { return layer_norm(in[0], in[1], in[2]); },
                  {float_input({6, n}, 74), float_input({n}, 75), float_input({n}, 76)});
    expect_parity([](auto& in) { return rms_norm(in[0], in[1]); }, {float_input({6, n}, 77), float_input({n}, 78)});
    // RMNP's update, with row 2 all zeros (it must stay zeros, not NaN).
    expect_parity(
        [](auto& in) {
          NoGradGuard no_grad;
          return normalize_rows(in[0], -0.3);
        },
        {mul(float_input({5, n}, 80), Tensor::from_vector<float>({1, 1, 0, 1, 1}, {5, 1}))});
    const Tensor targets = Tensor::from_vector<int64_t>({0, n - 1, 5, -100}, {4});
    expect_parity([](auto& in) { return cross_entropy(in[0], in[1], -100, 0.1); }, {float_input({4, n}, 79), targets});
  }
}

// Full reductions over more than a million elements run as many blocks' partial results (the
// last chunk partial) combined by a second pass; so do long rows. The extremes' positions must
// still be the row's first extreme: with few distinct values every chunk holds ties, row 1's
// first extremes lie in its second chunk (its first 5000 entries are all 2), and row 2's NaN in
// a late chunk wins over every number before it.
TEST_F(CudaParity, FullReductionsOverMillionsOfElements) {
  const Tensor big = float_input({1031, 1025}, 120);  // 1,056,775 elements: 258 chunks of 4096
  expect_parity([](auto& in) { return sum(in[0]); }, {big});
  expect_parity([](auto& in) { return sum_of_squares(in[0]); }, {big});
  expect_parity([](auto& in) { return amax(in[0]); }, {big});
  expect_parity([](auto& in) { return amin(in[0]); }, {big});
  expect_parity([](auto& in) { return sum(in[0], {1}); }, {float_input({3, 300000}, 121)});
  std::vector<float> data(3 * 10000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>(i * 7919 % 5);
  std::fill(data.begin() + 10000, data.begin() + 15000, 2.0f);
  data[2 * 10000 + 9000] = data[2 * 10000 + 9500] = std::numeric_limits<float>::quiet_NaN();
  const Tensor x = Tensor::from_vector(data, {3, 10000});
  using AlongDim = std::pair<Tensor, Tensor> (*)(const Tensor&, int64_t, bool);
  for (const AlongDim along : {AlongDim(max), AlongDim(min)}) {
    const auto [want_values, want_indices] = along(x, 1, false);
    const auto [got_values, got_indices] = along(x.to(cuda()), 1, false);
    EXPECT_EQ(got_indices.to_vector<int64_t>(), want_indices.to_vector<int64_t>());
    EXPECT_TRUE(same_values(got_values.to_vector<float>(), want_values.to_vector<float>()));
  }
}

// Layer/RMS-norm weight and bias gradients are column sums computed per row tile and then added
// tile by tile: fewer rows than one tile (64), several tiles with a partial last one, and so many
// rows that the tile count is capped (256) and tiles grow taller; widths with a partial tile of
// 32 columns.
TEST_F(CudaParity, NormParameterGradientsOverManyRows) {
  for (const Shape& shape : {Shape{37, 50}, Shape{2500, 96}, Shape{20000, 40}}) {
    SCOPED_TRACE(shape_str(shape));
    const int64_t n = shape[1];
    expect_parity([](auto& in) { return layer_norm(in[0], in[1], in[2]); },
                  {float_input(shape, 122), float_input({n}, 123), float_input({n}, 124)});
    expect_parity([](auto& in) { return rms_norm(in[0], in[1]); }, {float_input(shape, 125), float_input({n}, 126)});
  }
}

// Average-pool backward visits exactly the windows that cover each input element: overlapping
// windows with padding, gaps between windows (elements no window covers get 0), and unequal
// kernel, stride and padding along the two axes.
TEST_F(CudaParity, AveragePoolBackwardWithStridesAndPadding) {
  expect_parity([](auto& in) { return avg_pool2d(in[0], 3, 1, 1); }, {float_input({2, 3, 10, 11}, 127)});
  expect_parity([](auto& in) { return avg_pool2d(in[0], 2, 3, 0); }, {float_input({2, 2, 11, 10}, 128)});
  Pool2dParams uneven;
  uneven.kernel_h = 4, uneven.kernel_w = 2, uneven.stride_h = 3, uneven.stride_w = 1, uneven.pad_h = 2, uneven.pad_w = 1;
  expect_parity([uneven](auto& in) { return avg_pool2d(in[0], uneven); }, {float_input({1, 2, 9, 7}, 129)});
}

// Copies to the device do not wait for the stream: each copies its source into pinned staging
// before it returns. Overwriting the source at once must not change what arrives, also when the
// copies are larger than one staging buffer (4 MiB) and outnumber the buffers (16).
TEST_F(CudaParity, CopiesToTheDeviceTakeTheirSourceBeforeReturning) {
  std::vector<float> host(1500000);  // 6 MB: two pieces, the second partial
  std::vector<Tensor> copies;
  for (int round = 0; round < 20; ++round) {
    std::fill(host.begin(), host.end(), static_cast<float>(round));
    copies.push_back(Tensor::from_vector(host, {static_cast<int64_t>(host.size())}, cuda()));
  }
  for (int round = 0; round < 20; ++round) {
    EXPECT_EQ(amin(copies[round]).item(), round);
    EXPECT_EQ(amax(copies[round]).item(), round);
  }
  const Tensor x = float_input({1500000}, 130);
  EXPECT_EQ(x.to(cuda()).to(cpu()).to_vector<float>(), x.to_vector<float>());
}

// Degenerate products: an empty inner dimension (cuBLAS rejects its leading dimension 0) gives
// zeros; expanded operands (stride 0) are copied rather than read as dense matrices.
TEST_F(CudaParity, MatmulWithEmptyInnerDimensionAndExpandedOperands) {
  const Fn mm = [](auto& in) { return matmul(in[0], in[1]); };
  expect_parity(mm, {float_input({3, 0}, 90), float_input({0, 4}, 91)});
  expect_parity(mm, {float_input({2, 5, 0}, 92), float_input({2, 0, 6}, 93)});
  expect_parity([](auto& in) { return matmul(in[0].expand({6, 5}), in[1]); }, {float_input({1, 5}, 94), float_input({5, 7}, 95)});
  expect_parity([](auto& in) { return matmul(in[0], in[1].expand({5, 7})); }, {float_input({6, 5}, 96), float_input({5, 1}, 97)});
  expect_parity([](auto& in) { return matmul(in[0].expand({3, 6, 5}), in[1].expand({3, 5, 7})); },
                {float_input({1, 1, 5}, 98), float_input({5, 1}, 99)});
}

// Empty batches: convolution (cuDNN rejects a zero dim), pooling, evaluation-mode batch norm;
// and batch norm with no channels in training.
TEST_F(CudaParity, ConvolutionAndBatchNormWithEmptyShapes) {
  expect_parity([](auto& in) { return conv2d(in[0], in[1], in[2], 1, 1); },
                {float_input({0, 3, 8, 8}, 100), float_input({4, 3, 3, 3}, 101), float_input({4}, 102)});
  expect_parity([](auto& in) { return max_pool2d(in[0], 2); }, {float_input({0, 3, 8, 8}, 103)});
  expect_parity([](auto& in) { return avg_pool2d(in[0], 2); }, {float_input({0, 3, 8, 8}, 104)});
  expect_parity(
      [](auto& in) {
        Tensor running_mean = zeros({3}, DType::Float32, in[0].device()), running_var = ones({3}, DType::Float32, in[0].device());
        return batch_norm2d(in[0], running_mean, running_var, in[1], in[2], false, 0.1);
      },
      {float_input({0, 3, 4, 4}, 105), float_input({3}, 106), float_input({3}, 107)});
  expect_parity(
      [](auto& in) {
        Tensor running_mean = zeros({0}, DType::Float32, in[0].device()), running_var = ones({0}, DType::Float32, in[0].device());
        return batch_norm2d(in[0], running_mean, running_var, in[1], in[2], true, 0.1);
      },
      {float_input({4, 0, 5, 5}, 108), float_input({0}, 109), float_input({0}, 110)});
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

// Each product layout the backend's gemm handles: plain, batched, either operand transposed, a
// batch folded into rows, a broadcast (batch stride 0) operand, transposed or not, and a vector.
struct MatmulCase {
  const char* name;
  Fn f;
  std::vector<Tensor> inputs;
};

std::vector<MatmulCase> matmul_cases() {
  const Fn product = [](auto& in) { return matmul(in[0], in[1]); };
  const Fn times_transposed = [](auto& in) { return matmul(in[0], in[1].transpose(-1, -2)); };
  return {
      {"2-D", product, {float_input({64, 48}, 50), float_input({48, 80}, 51)}},
      {"batched, right transposed", times_transposed, {float_input({3, 4, 16, 8}, 52), float_input({3, 4, 16, 8}, 53)}},
      {"batched, left transposed", [](auto& in) { return matmul(in[0].transpose(-1, -2), in[1]); },
       {float_input({2, 24, 10}, 54), float_input({2, 24, 12}, 55)}},
      {"batch folded into rows", product, {float_input({2, 3, 7, 5}, 56), float_input({5, 9}, 57)}},
      {"broadcast right", product, {float_input({4, 7, 33}, 58), float_input({1, 33, 9}, 59)}},
      {"broadcast right, transposed", times_transposed, {float_input({4, 7, 33}, 60), float_input({1, 9, 33}, 61)}},
      {"matrix-vector", product, {float_input({7, 40}, 62), float_input({40}, 63)}},
  };
}

// relu(x @ w1 + b1) @ w2 + b2
Tensor mlp(const std::vector<Tensor>& in) { return add(matmul(relu(add(matmul(in[0], in[1]), in[2])), in[3]), in[4]); }

std::vector<Tensor> mlp_inputs() {
  return {float_input({32, 20}, 64), float_input({20, 64}, 65), float_input({64}, 66), float_input({64, 10}, 67),
          float_input({10}, 68)};
}

// Reduced precisions and the relative error each may leave against exact float32: bf16 operands
// carry 8 significant bits (relative rounding error up to 2^-8), TF32 operands 11 (2^-11).
const std::vector<std::pair<MatmulPrecision, double>> kReducedPrecisions = {{MatmulPrecision::Tf32, 3e-3},
                                                                           {MatmulPrecision::Bf16, 5e-3}};

const char* precision_name(MatmulPrecision precision) {
  return precision == MatmulPrecision::Tf32 ? "tf32" : precision == MatmulPrecision::Bf16 ? "bf16" : "float32";
}

Tensor bf16_rounded(const Tensor& x) {
  std::vector<float> values = x.to_vector<float>();
  for (float& v : values) v = round_to_bfloat16(v);
  return Tensor::from_vector(values, x.shape());
}

// Parameters of every shape a Muon-family optimizer meets (wide, tall, a conv filter) and a bias
// for the non-matrix optimizer, float32 on `device`.
std::vector<NamedParam> toy_parameters(Device device) {
  const std::vector<std::pair<std::string, Shape>> layout{
      {"fc.weight", {24, 40}}, {"proj.weight", {40, 24}}, {"conv.weight", {8, 3, 3, 3}}, {"fc.bias", {24}},
      {"fc2.weight", {24, 40}}};  // with fc.weight, a stack for the Newton-Schulz methods on a GPU
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

StepsOutcome run_steps(const OptimizerSettings& settings, Device device) {
  std::vector<NamedParam> params = toy_parameters(device);
  std::vector<Tensor> initial;
  for (const NamedParam& p : params) initial.push_back(p.param.to(cpu()).clone());
  const auto optimizer = make_optimizer(settings, params, 11);
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

TEST_F(CudaParity, ReducedPrecisionProductsStayNearFloat32) {
  for (const auto& [precision, tol] : kReducedPrecisions) {
    SCOPED_TRACE(precision_name(precision));
    const CudaMatmulPrecisionScope scope(precision);
    for (const MatmulCase& c : matmul_cases()) {
      SCOPED_TRACE(c.name);
      expect_parity(c.f, c.inputs, tol);
    }
    {
      SCOPED_TRACE("mlp");
      expect_parity(mlp, mlp_inputs(), tol);
    }
    SCOPED_TRACE("conv2d");
    expect_parity([](auto& in) { return conv2d(in[0], in[1], in[2], 1, 1); },
                  {float_input({4, 3, 9, 9}, 69), float_input({8, 3, 3, 3}, 70), float_input({8}, 71)}, tol);
  }
}

// Tighter than the bound above: with bf16 operands the result is the float32 product of the
// bf16-rounded operands, up to float32 accumulation in another order. An exact float32 product
// (bf16 mode ignored) misses this by about 1e-3, and a wrongly packed element by far more.
TEST_F(CudaParity, Bf16ProductIsTheFloat32ProductOfRoundedOperands) {
  const CudaMatmulPrecisionScope bf16(MatmulPrecision::Bf16);
  for (const MatmulCase& c : matmul_cases()) {
    SCOPED_TRACE(c.name);
    std::vector<Tensor> rounded, on_device;
    for (const Tensor& x : c.inputs) {
      rounded.push_back(bf16_rounded(x));
      on_device.push_back(x.to(cuda()));
    }
    const Tensor want = c.f(rounded), got = c.f(on_device);
    ASSERT_EQ(got.shape(), want.shape());
    EXPECT_LE(relative_error(got, want), 2e-5);
  }
}

TEST_F(CudaParity, Float64ProductsAndSumsStayExactUnderReducedPrecision) {
  for (const MatmulPrecision precision : {MatmulPrecision::Tf32, MatmulPrecision::Bf16}) {
    SCOPED_TRACE(precision_name(precision));
    const CudaMatmulPrecisionScope scope(precision);
    const Tensor a = float_input({40, 30}, 72).to(DType::Float64), b = float_input({30, 20}, 73).to(DType::Float64);
    EXPECT_LE(relative_error(matmul(a.to(cuda()), b.to(cuda())), matmul(a, b)), 1e-12);
    // Sums over the leading axes run as a product with a ones vector (GemmMath::Exact).
    expect_parity([](auto& in) { return sum(in[0], {0}); }, {float_input({300, 7, 3}, 74)}, 1e-5);
  }
}

// The fused AdamW step (adamw_update_) over more elements than one grid covers, two steps.
TEST_F(CudaParity, AdamWUpdateMatchesTheCpuOverMillionsOfElements) {
  const int64_t n = 3'000'017;
  Tensor on_cpu[3] = {float_input({n}, 1), zeros({n}), zeros({n})};
  Tensor on_gpu[3] = {on_cpu[0].to(cuda()), zeros({n}, DType::Float32, cuda()), zeros({n}, DType::Float32, cuda())};
  for (int t = 1; t <= 2; ++t) {
    const Tensor grad = float_input({n}, 10 + t);
    const AdamWStep step{1e-2, 0.9, 0.95, 1e-8, 0.1, 1.0 - std::pow(0.9, t), 1.0 - std::pow(0.95, t)};
    adamw_update_(on_cpu[0], grad, on_cpu[1], on_cpu[2], step);
    adamw_update_(on_gpu[0], grad.to(cuda()), on_gpu[1], on_gpu[2], step);
  }
  for (int k = 0; k < 3; ++k) EXPECT_LE(relative_error(on_gpu[k].to(cpu()), on_cpu[k]), 1e-6) << "tensor " << k;
}

TEST_F(CudaParity, OptimizerStepsMakeNoHostCopiesAndMatchTheCpu) {
  // CacheMuon is left out on purpose: its cache hit test reads one residual per matrix on the host.
  const std::vector<std::pair<std::string, std::string>> cases{
      {"sgd", "l1"},   {"adamw", "l1"},     {"lion", "l1"}, {"muon", "l1"},    {"turbo_muon", "l1"},
      {"dion2", "l1"}, {"dion2", "random"}, {"rmnp", "l1"}, {"normuon", "l1"}};
  for (const auto& [kind, selection] : cases) {
    SCOPED_TRACE(kind + " " + selection);
    OptimizerSettings settings = default_optimizer_settings(kind);
    std::visit(
        [](auto& s) {
          // Updates well above float32 rounding of the weights (the non-matrix default lr 3e-4 is
          // not), so that comparing them is meaningful.
          s.lr = 0.05;
          s.weight_decay = 0.1;
          if constexpr (std::is_base_of_v<MatrixOptimizerSettings, std::decay_t<decltype(s)>>)
            std::get<AdamWSettings>(s.non_matrix).lr = 0.05;
        },
        settings);
    if (auto* sgd = std::get_if<SgdSettings>(&settings)) {  // the momentum the former spec defaulted to
      sgd->momentum = 0.95;
      sgd->nesterov = true;
    }
    if (auto* dion2 = std::get_if<Dion2Settings>(&settings))
      dion2->selection = value_named(slice_selection_names(), selection);
    const StepsOutcome want = run_steps(settings, cpu());
    const StepsOutcome got = run_steps(settings, cuda());
    EXPECT_EQ(got.device_to_host_copies, 0);
    // Float32 Newton–Schulz on these shapes lands within 5e-6 of float64 (the elementwise
    // optimizers within 1e-6), so two float32 backends stay far inside 1e-4; a wrong slice choice
    // or a wrong kernel is off by O(1).
    for (size_t i = 0; i < want.updates.size(); ++i)
      EXPECT_LE(relative_error(got.updates[i], want.updates[i]), 1e-4) << "parameter " << i;
  }
}
// Index ops whose many contributions land on few elements: embedding and index_add backward,
// scatter_add (gather's backward), max-pool backward with overlapping windows. They match the
// CPU, and in deterministic mode (the default) two runs give the same bits; with atomics they
// still match the CPU within rounding.
TEST_F(CudaParity, IndexOpsWithManyCollisionsAreDeterministic) {
  std::vector<int64_t> ids(64 * 64), cols(300 * 40);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int64_t>(i * 7 % 3);
  for (size_t i = 0; i < cols.size(); ++i) cols[i] = static_cast<int64_t>(i * 13 % 5);
  const Tensor id_tensor = Tensor::from_vector(ids, {64, 64}), col_tensor = Tensor::from_vector(cols, {300, 40});
  const std::vector<std::pair<Fn, std::vector<Tensor>>> cases = {
      {[](auto& in) { return embedding(in[1], in[0]); }, {float_input({5, 48}, 80), id_tensor}},
      {[](auto& in) { return gather(in[0], 1, in[1]); }, {float_input({300, 5}, 81), col_tensor}},
      {[](auto& in) { return max_pool2d(in[0], 3, 1, 1); }, {float_input({2, 3, 17, 17}, 82)}},
  };
  const auto gpu_gradient = [](const Fn& f, const std::vector<Tensor>& inputs) {
    std::vector<Tensor> leaves;
    for (const Tensor& x : inputs) {
      Tensor copy = x.to(cuda()).clone();
      if (is_floating(copy.dtype())) copy.requires_grad_();
      leaves.push_back(copy);
    }
    sum(f(leaves)).backward();
    return leaves[0].grad().to_vector<float>();
  };
  for (size_t c = 0; c < cases.size(); ++c) {
    SCOPED_TRACE("case " + std::to_string(c));
    const auto& [f, inputs] = cases[c];
    expect_parity(f, inputs, 1e-5);
    EXPECT_EQ(gpu_gradient(f, inputs), gpu_gradient(f, inputs));
    cuda_set_deterministic(false);
    expect_parity(f, inputs, 1e-5);
    cuda_set_deterministic(true);
  }
}

#endif


namespace {

struct TrainingOutcome {
  std::vector<double> losses;                              // of each step, before its update
  std::vector<std::pair<std::string, Tensor>> parameters;  // after the last step, on the CPU
};

// Three training steps of one benchmark task of SPEC.md on `device`, with the task's optimizer or
// `optimizer` when given.
TrainingOutcome three_training_steps(size_t task_index, Device device,
                                     const std::optional<OptimizerSettings>& optimizer) {
  Generator gen(0);
  BenchmarkTask task = std::move(benchmark_tasks(device, gen)[task_index]);
  const auto step_optimizer = make_optimizer(optimizer.value_or(task.optimizer), optimizer_params(*task.model), 0);
  TrainingOutcome outcome;
  for (int step = 0; step < 3; ++step) {
    const Tensor loss = cross_entropy(task.model->forward(task.inputs), task.targets, -100, task.label_smoothing);
    outcome.losses.push_back(loss.item());
    step_optimizer->zero_grad();
    loss.backward();
    step_optimizer->step();
  }
  for (const auto& [name, param] : task.model->named_parameters()) outcome.parameters.push_back({name, param.to(cpu())});
  return outcome;
}

// Losses agree to `loss_tol` relative; parameters to `parameter_tol` (norm of the difference over the
// norm): looser, since an update divides by a running second moment that rounding moves most where
// it is near zero. A parameter smaller than an RMS of 0.003 is measured against that instead: the
// CNN's batch-norm biases start at zero and after three steps hold sums of gradients over the batch
// and the image that nearly cancel (1e-4 of the weights' norms), where float32 rounding, of the
// order of the sums' terms rather than of their result, reads as a percent of the value (the CPU's
// Winograd and im2col convolutions differ there by 0.7-1%, an RMS of up to 8e-7). Held so, their
// differences must still stay under 3e-6 RMS, 3-17% of their values (RMS 2e-5 to 9e-5).
void expect_training_parity(size_t task_index, const std::optional<OptimizerSettings>& optimizer,
                            double loss_tol = 1e-4, double parameter_tol = 1e-3) {
  constexpr double kParameterFloorRms = 0.003;
  const TrainingOutcome want = three_training_steps(task_index, cpu(), optimizer);
  const TrainingOutcome got = three_training_steps(task_index, cuda(), optimizer);
  for (size_t step = 0; step < want.losses.size(); ++step)
    EXPECT_NEAR(got.losses[step], want.losses[step], loss_tol * std::abs(want.losses[step])) << "loss of step " << step;
  ASSERT_EQ(got.parameters.size(), want.parameters.size());
  for (size_t i = 0; i < want.parameters.size(); ++i)
    EXPECT_LE(relative_error(got.parameters[i].second, want.parameters[i].second, kParameterFloorRms), parameter_tol)
        << want.parameters[i].first;
}

}  // namespace

// The benchmark models end to end: the GPT (embedding, attention, layer norm, GELU, tied head)
// with AdamW and with Muon, the CNN (whitening, convolutions, batch norm, pooling) with Nesterov
// SGD, three steps each on the same data from the same initial weights.
TEST_F(CudaParity, BenchmarkModelsTrainAlikeForThreeSteps) {
  expect_training_parity(0, std::nullopt);
  MuonSettings muon = with_defaults(MuonSettings::settings());
  muon.lr = 0.02;
  expect_training_parity(0, muon);
  expect_training_parity(1, std::nullopt);
}
