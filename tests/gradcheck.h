// Gradient checking for tests: autograd gradients against central finite differences in float64.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "framework/ops.h"

namespace ml::testing {

using TensorFn = std::function<Tensor(const std::vector<Tensor>&)>;

// A float64 leaf with standard-normal entries (optionally shifted away from 0 for ops like log).
inline Tensor random_input(const Shape& shape, uint64_t seed, double shift = 0.0) {
  Generator gen(seed);
  Tensor t = add(randn(shape, DType::Float64, cpu(), gen), shift);
  t.requires_grad_();
  return t;
}

// Checks d/d(inputs) of sum(f(inputs) * w), with w a fixed random weighting so that every output
// element matters with a different weight. Inputs must be float64 leaves requiring grad.
inline void expect_gradients_match(const TensorFn& f, const std::vector<Tensor>& inputs, double tol = 1e-6,
                                   double eps = 1e-6) {
  Tensor out = f(inputs);
  ASSERT_TRUE(out.requires_grad()) << "the output does not depend on any input";
  Generator gen(1234);
  const Tensor weight = randn(out.shape(), DType::Float64, cpu(), gen);
  for (const Tensor& x : inputs) x.impl()->grad.reset();
  sum(mul(out, weight)).backward();

  auto objective = [&]() {
    NoGradGuard no_grad;
    return sum(mul(f(inputs), weight)).item();
  };
  for (size_t k = 0; k < inputs.size(); ++k) {
    const Tensor& x = inputs[k];
    ASSERT_TRUE(x.grad().defined()) << "input " << k << " received no gradient";
    const std::vector<double> analytic = x.grad().to_vector<double>();
    ASSERT_TRUE(x.is_contiguous());
    double* data = x.data<double>();
    for (int64_t i = 0; i < x.numel(); ++i) {
      const double saved = data[i];
      data[i] = saved + eps;
      const double up = objective();
      data[i] = saved - eps;
      const double down = objective();
      data[i] = saved;
      const double numeric = (up - down) / (2 * eps);
      EXPECT_NEAR(analytic[i], numeric, tol * std::max(1.0, std::abs(numeric)))
          << "input " << k << " element " << i << " of shape " << shape_str(x.shape());
    }
  }
}

// Expects f(inputs) to throw std::exception whose message contains every one of `parts`.
template <typename F>
void expect_error_mentions(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "expected an exception";
  } catch (const std::exception& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

}  // namespace ml::testing
