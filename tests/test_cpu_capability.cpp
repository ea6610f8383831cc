// The CPU loops compiled twice (framework/backends/cpu/cpu_loops.h: run_widest): the build's own
// code and the AVX-512 copy must compute the same thing, and MUONLAB_CPU_CAPABILITY must choose
// between them or say why it cannot.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "framework/backends/cpu/cpu_capability.h"
#include "framework/ops.h"
#include "tests/gradcheck.h"

namespace ml {
namespace {

using ml::testing::expect_error_mentions;

// Every kernel that runs in run_widest's copy, forward and backward, in float32 (where the
// copies differ: float64 loops have no vectorized element math) and float64 for the row kernels.
// Rows of 301 (not a multiple of any vector width) and causal rows of every length 1 to 40.
std::vector<std::pair<std::string, Tensor>> widest_loop_results(DType dtype) {
  Generator gen(11);
  const Tensor x = mul(randn({37, 301}, dtype, cpu(), gen), 3.0), g = randn({37, 301}, dtype, cpu(), gen);
  const Tensor bias = randn({301}, dtype, cpu(), gen);
  const Tensor targets = rand({37}, 0.0, 301.0, DType::Float32, cpu(), gen).to(DType::Int64);
  const Tensor q = randn({2, 3, 40, 16}, dtype, cpu(), gen), k = randn({2, 3, 40, 16}, dtype, cpu(), gen),
               v = randn({2, 3, 40, 16}, dtype, cpu(), gen);
  std::vector<std::pair<std::string, Tensor>> results;
  const auto forward_and_backward = [&](const std::string& name, const Tensor& input, const Tensor& grad,
                                        const std::function<Tensor(const Tensor&)>& f) {
    const Tensor leaf = input.detach().requires_grad_();
    const Tensor y = f(leaf);
    y.backward(grad);
    results.emplace_back(name, y.detach());
    results.emplace_back(name + " gradient", leaf.grad());
  };
  forward_and_backward("gelu tanh", x, g, [](const Tensor& t) { return gelu(t, GeluApprox::Tanh); });
  forward_and_backward("gelu erf", x, g, [](const Tensor& t) { return gelu(t); });
  forward_and_backward("silu", x, g, [](const Tensor& t) { return silu(t); });
  forward_and_backward("sigmoid", x, g, [](const Tensor& t) { return sigmoid(t); });
  forward_and_backward("bias add", x, g, [&](const Tensor& t) { return add(t, bias); });  // a broadcast row
  forward_and_backward("softmax", x, g, [](const Tensor& t) { return softmax(t); });
  forward_and_backward("log_softmax", x, g, [](const Tensor& t) { return log_softmax(t); });
  forward_and_backward("cross_entropy", x, ones({37}, dtype), [&](const Tensor& t) {
    return cross_entropy(t, targets, -100, 0.1, Reduction::None);
  });
  forward_and_backward("causal attention", q, ones({2, 3, 40, 16}, dtype), [&](const Tensor& t) {
    return scaled_dot_product_attention(t, k, v, true, AttentionImpl::Composed);
  });
  // The fused kernel's blocked path: its products run on the own GEMM's register tile in the
  // AVX-512 copy (float32), on plain loops in the other; the GPT's heads (64 x 32) also take the
  // 16 x 16 block transposes.
  forward_and_backward("fused causal attention", q, randn({2, 3, 40, 16}, dtype, cpu(), gen), [&](const Tensor& t) {
    return scaled_dot_product_attention(t, k, v, true, AttentionImpl::Fused);
  });
  const Tensor gpt_q = randn({2, 2, 64, 32}, dtype, cpu(), gen), gpt_k = randn({2, 2, 64, 32}, dtype, cpu(), gen),
               gpt_v = randn({2, 2, 64, 32}, dtype, cpu(), gen), gpt_g = randn({2, 2, 64, 32}, dtype, cpu(), gen);
  forward_and_backward("fused causal attention, the GPT's heads", gpt_q, gpt_g, [&](const Tensor& t) {
    return scaled_dot_product_attention(t, gpt_k, gpt_v, true, AttentionImpl::Fused);
  });
  // The norms' backward passes also sum their affine gradients over the rows.
  const Tensor ln_weight = randn({301}, dtype, cpu(), gen).requires_grad_(),
               ln_bias = randn({301}, dtype, cpu(), gen).requires_grad_(),
               rms_weight = randn({301}, dtype, cpu(), gen).requires_grad_();
  forward_and_backward("layer_norm", x, g, [&](const Tensor& t) { return layer_norm(t, ln_weight, ln_bias); });
  results.emplace_back("layer_norm weight gradient", ln_weight.grad());
  results.emplace_back("layer_norm bias gradient", ln_bias.grad());
  forward_and_backward("rms_norm", x, g, [&](const Tensor& t) { return rms_norm(t, rms_weight); });
  results.emplace_back("rms_norm weight gradient", rms_weight.grad());
  {
    NoGradGuard no_grad;  // an optimizer's tool (NorMuon, RMNP): it has no backward
    results.emplace_back("normalize_rows", normalize_rows(x));
  }
  return results;
}

TEST(CpuCapability, Avx512LoopsComputeWhatTheBuildsOwnLoopsCompute) {
  if (!avx512_loops_available()) GTEST_SKIP() << "this processor (or build) has no AVX-512 loops to compare";
  const CpuCapability saved = cpu_capability();
  for (DType dtype : {DType::Float32, DType::Float64}) {
    set_cpu_capability(CpuCapability::Default);
    const auto own = widest_loop_results(dtype);
    set_cpu_capability(CpuCapability::Avx512);
    const auto wide = widest_loop_results(dtype);
    ASSERT_EQ(own.size(), wide.size());
    for (size_t i = 0; i < own.size(); ++i) {
      SCOPED_TRACE(own[i].first + (dtype == DType::Float32 ? " float32" : " float64"));
      const std::vector<double> a = own[i].second.to_vector<double>(), b = wide[i].second.to_vector<double>();
      ASSERT_EQ(a.size(), b.size());
      // Elementwise math is the same arithmetic in both copies; row sums whose order follows the
      // vector width (omp simd reductions, in double) may round apart in their last bits.
      double largest = 0.0, worst = 0.0;
      for (size_t j = 0; j < a.size(); ++j) {
        largest = std::max(largest, std::abs(a[j]));
        worst = std::max(worst, std::abs(a[j] - b[j]));
      }
      EXPECT_LE(worst, 1e-6 * largest);
    }
  }
  set_cpu_capability(saved);
}

// The elementwise maps give the same bits: GELU's forward and backward over many elements.
TEST(CpuCapability, Avx512ElementwiseLoopsGiveTheSameBits) {
  if (!avx512_loops_available()) GTEST_SKIP() << "this processor (or build) has no AVX-512 loops to compare";
  const CpuCapability saved = cpu_capability();
  Generator gen(12);
  const Tensor x = mul(randn({100003}, DType::Float32, cpu(), gen), 4.0);
  const Tensor g = randn({100003}, DType::Float32, cpu(), gen);
  const auto gelu_and_gradient = [&] {
    const Tensor leaf = x.detach().requires_grad_();
    const Tensor y = gelu(leaf, GeluApprox::Tanh);
    y.backward(g);
    return std::pair{y.to_vector<float>(), leaf.grad().to_vector<float>()};
  };
  set_cpu_capability(CpuCapability::Default);
  const auto own = gelu_and_gradient();
  set_cpu_capability(CpuCapability::Avx512);
  const auto wide = gelu_and_gradient();
  set_cpu_capability(saved);
  EXPECT_EQ(own.first, wide.first);
  EXPECT_EQ(own.second, wide.second);
}

TEST(CpuCapability, TheVariableChoosesOrSaysWhyNot) {
  EXPECT_EQ(cpu_capability_for("default"), CpuCapability::Default);
  EXPECT_EQ(cpu_capability_for(nullptr),
            avx512_loops_available() ? CpuCapability::Avx512 : CpuCapability::Default);
  if (avx512_loops_available())
    EXPECT_EQ(cpu_capability_for("avx512"), CpuCapability::Avx512);
  else
    expect_error_mentions([] { cpu_capability_for("avx512"); }, {"MUONLAB_CPU_CAPABILITY=avx512", "not available"});
  expect_error_mentions([] { cpu_capability_for("avx2"); }, {"MUONLAB_CPU_CAPABILITY=avx2", "default or avx512"});
}

}  // namespace
}  // namespace ml
