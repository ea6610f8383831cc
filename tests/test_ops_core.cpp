// Forward values and gradient checks for elementwise, reduction, shape and matmul ops.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>

#include "framework/backends/cpu/blas_kernels.h"
#include "framework/backends/cpu/cpu_capability.h"
#include "framework/backends/elementwise_math.h"
#include "framework/ops.h"
#include "framework/parallel.h"
#include "tests/gradcheck.h"

using namespace ml;
using ml::testing::expect_error_mentions;
using ml::testing::expect_gradients_match;
using ml::testing::random_input;

namespace {
std::vector<double> values(const Tensor& t) { return t.to_vector<double>(); }
using V = std::vector<double>;
using I = std::vector<int64_t>;
constexpr double kNan = std::numeric_limits<double>::quiet_NaN();

// Top-k of one row by repeated selection: each pick scans the remaining entries from index 0 and
// moves on only for a strictly better one (NaN beats any number), so ties go to the lower index.
I reference_topk(const V& row, int64_t k, TopkOrder order) {
  std::vector<bool> taken(row.size(), false);
  I picks;
  for (int64_t p = 0; p < k; ++p) {
    int64_t best = -1;
    for (int64_t j = 0; j < static_cast<int64_t>(row.size()); ++j) {
      if (taken[j]) continue;
      const bool better = best < 0 || (std::isnan(row[j]) ? !std::isnan(row[best]) : !std::isnan(row[best]) && row[j] > row[best]);
      if (better) best = j;
    }
    taken[best] = true;
    picks.push_back(best);
  }
  if (order == TopkOrder::ByIndex) std::sort(picks.begin(), picks.end());
  return picks;
}

// Equal element by element, NaN matching NaN.
bool same_values(const V& a, const V& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(),
                    [](double x, double y) { return (std::isnan(x) && std::isnan(y)) || x == y; });
}
}  // namespace

TEST(Elementwise, ForwardValuesByHand) {
  const Tensor x = Tensor::from_vector<double>({-1.0, 0.0, 2.0}, {3});
  EXPECT_EQ(values(relu(x)), (V{0, 0, 2}));
  EXPECT_EQ(values(relu2(x)), (V{0, 0, 4}));
  EXPECT_EQ(values(abs(x)), (V{1, 0, 2}));
  EXPECT_EQ(values(clamp(x, -0.5, 1.0)), (V{-0.5, 0, 1}));
  EXPECT_NEAR(values(sigmoid(x))[0], 1 / (1 + std::exp(1.0)), 1e-15);
  EXPECT_NEAR(values(gelu(x))[2], 2 * 0.5 * (1 + std::erf(2 / std::sqrt(2.0))), 1e-15);
  EXPECT_NEAR(values(gelu(x, GeluApprox::Tanh))[2], 1.9545976940871788, 1e-12);
  EXPECT_NEAR(values(silu(x))[0], -1 / (1 + std::exp(1.0)), 1e-15);
  EXPECT_EQ(values(x * 2.0 + 1.0), (V{-1, 1, 5}));
  EXPECT_EQ(values(1.0 - x), (V{2, 1, -1}));
  EXPECT_EQ(values(where(gt(x, zeros_like(x)), x, full_like(x, 9))), (V{9, 9, 2}));
  EXPECT_EQ(values(masked_fill(x, lt(x, zeros_like(x)), 5)), (V{5, 0, 2}));
}

TEST(Elementwise, BroadcastingFollowsNumPy) {
  const Tensor a = arange(0, 3, 1, DType::Float64).reshape({3, 1});
  const Tensor b = arange(0, 2, 1, DType::Float64);
  const Tensor c = add(a, b);
  EXPECT_EQ(c.shape(), (Shape{3, 2}));
  EXPECT_EQ(values(c), (V{0, 1, 1, 2, 2, 3}));
  expect_error_mentions([&] { add(ones({2, 3}), ones({3, 2})); }, {"add", "[2, 3]", "[3, 2]", "broadcast"});
}

TEST(Elementwise, InPlaceUpdates) {
  Tensor x = ones({2, 2}, DType::Float64);
  add_(x, arange(0, 2, 1, DType::Float64), 2.0);
  EXPECT_EQ(values(x), (V{1, 3, 1, 3}));
  mul_(x, 0.5);
  EXPECT_EQ(values(x), (V{0.5, 1.5, 0.5, 1.5}));
  Tensor col = x.narrow(1, 0, 1);  // in place through a strided view
  fill_(col, 7);
  EXPECT_EQ(values(x), (V{7, 1.5, 7, 1.5}));
  expect_error_mentions([&] { add_(col, ones({3}, DType::Float64)); }, {"add_"});
}

TEST(ElementwiseGrad, UnaryOps) {
  struct Case {
    const char* name;
    Tensor (*fn)(const Tensor&);
    double shift;
  };
  const std::vector<Case> cases = {
      {"neg", [](const Tensor& x) { return neg(x); }, 0},      {"exp", [](const Tensor& x) { return exp(x); }, 0},
      {"log", [](const Tensor& x) { return log(x); }, 4},      {"sqrt", [](const Tensor& x) { return sqrt(x); }, 4},
      {"rsqrt", [](const Tensor& x) { return rsqrt(x); }, 4},  {"abs", [](const Tensor& x) { return abs(x); }, 0},
      {"tanh", [](const Tensor& x) { return tanh(x); }, 0},    {"sigmoid", [](const Tensor& x) { return sigmoid(x); }, 0},
      {"relu", [](const Tensor& x) { return relu(x); }, 0},    {"relu2", [](const Tensor& x) { return relu2(x); }, 0},
      {"gelu", [](const Tensor& x) { return gelu(x); }, 0},
      {"gelu_tanh", [](const Tensor& x) { return gelu(x, GeluApprox::Tanh); }, 0},
      {"silu", [](const Tensor& x) { return silu(x); }, 0},
      {"pow", [](const Tensor& x) { return pow(x, 2.5); }, 4},
      {"rdiv", [](const Tensor& x) { return rdiv(3.0, x); }, 4},
      {"clamp", [](const Tensor& x) { return clamp(x, -0.5, 0.7); }, 0},
      {"add_scalar", [](const Tensor& x) { return x + 3.0; }, 0},
      {"mul_scalar", [](const Tensor& x) { return x * -2.0; }, 0},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    expect_gradients_match([&](const std::vector<Tensor>& in) { return c.fn(in[0]); }, {random_input({3, 4}, 5, c.shift)});
    // a non-contiguous input
    expect_gradients_match([&](const std::vector<Tensor>& in) { return c.fn(in[0].t()); }, {random_input({4, 3}, 6, c.shift)});
  }
}

// The vectorizable float32 exp and erf that GELU, sigmoid, softmax and cross-entropy use, against
// libm in double, over their whole range and at the edges softmax relies on (exp(-inf) = 0).
TEST(ElementMath, ExpAndErfApproximationsStayWithinTheirBounds) {
  double worst_exp = 0.0, worst_erf = 0.0;
  for (float x = -87.0f; x <= 88.0f; x += 1.0f / 1024) {
    const double exact = std::exp(double(x));
    worst_exp = std::max(worst_exp, std::fabs(double(elementwise::exp_approx(x)) - exact) / exact);
  }
  for (float x = -6.0f; x <= 6.0f; x += 1.0f / 4096)
    worst_erf = std::max(worst_erf, std::fabs(double(elementwise::erf_approx(x)) - std::erf(double(x))));
  // GELU's derivative shares one exp between erf and the normal density.
  double worst_gelu_derivative = 0.0;
  for (float x = -9.0f; x <= 9.0f; x += 1.0f / 4096)
    worst_gelu_derivative = std::max(worst_gelu_derivative, std::fabs(double(elementwise::gelu_erf_derivative(x)) -
                                                                       elementwise::gelu_erf_derivative(double(x))));
  EXPECT_LT(worst_exp, 2.5e-7);  // float's own rounding is 6e-8 relative
  EXPECT_LT(worst_erf, 5e-7);  // Abramowitz & Stegun's 1.5e-7, plus float rounding (4.6e-7 measured)
  EXPECT_LT(worst_gelu_derivative, 1e-6);
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(elementwise::exp_approx(-inf), 0.0f);
  EXPECT_EQ(elementwise::exp_approx(-87.5f), 0.0f);
  EXPECT_TRUE(std::isnan(elementwise::exp_approx(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isfinite(elementwise::exp_approx(inf)));
  EXPECT_EQ(elementwise::sigmoid(100.0f), 1.0f);
  EXPECT_LT(elementwise::sigmoid(-100.0f), 1e-38f);
}

// The vectorizable float32 log of the attention's log-sum-exp, against libm in double: over
// normalizers from 1 (a row of one key) to 2^20, across every power of two (where its split of x
// into m 2^e changes e) and on the smallest and largest normal floats.
TEST(ElementMath, LogOfPositiveStaysWithinItsBound) {
  double worst = 0.0;
  const auto check = [&](float x) {
    const double exact = std::log(double(x));
    const double error = std::fabs(double(elementwise::log_of_positive(x)) - exact);
    worst = std::max(worst, error / std::max(1.0, std::fabs(exact)));
  };
  for (float x = 1.0f; x <= 1048576.0f; x *= 1.0001f) check(x);
  for (float power = 1.0f / 64; power <= 65536.0f; power *= 2.0f)
    for (float x : {std::nextafter(power, 0.0f), power, std::nextafter(power, 2 * power), power * 0.70710677f,
                    power * 0.70710683f})
      check(x);
  check(std::numeric_limits<float>::min());
  check(std::numeric_limits<float>::max());
  EXPECT_LT(worst, 3e-7);  // relative where |ln x| >= 1, absolute nearer x = 1 (1.1e-7 measured)
  EXPECT_EQ(elementwise::log_of_positive(1.0f), 0.0f);
}

// The exp of softmax's normalizer terms: exp_approx's values on [-87, 0], and a negligible term
// (e^-87, not 0) below, -inf included; NaN stays NaN.
TEST(ElementMath, ExpOfNonpositiveTermsIsExpApproxWhereItDoesNotUnderflow) {
  for (float x = -87.0f; x <= 0.0f; x += 1.0f / 1024)
    ASSERT_EQ(elementwise::exp_of_nonpositive_term(x), elementwise::exp_approx(x)) << "x = " << x;
  const float inf = std::numeric_limits<float>::infinity(), e87 = elementwise::exp_approx(-87.0f);
  EXPECT_EQ(elementwise::exp_of_nonpositive_term(-87.5f), e87);
  EXPECT_EQ(elementwise::exp_of_nonpositive_term(-inf), e87);
  EXPECT_LT(e87, 1.7e-38f);
  EXPECT_TRUE(std::isnan(elementwise::exp_of_nonpositive_term(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(elementwise::exp_of_nonpositive_term(-2.0), std::exp(-2.0));
}

TEST(ElementwiseGrad, BinaryOpsWithBroadcasting) {
  const std::vector<std::pair<const char*, Tensor (*)(const Tensor&, const Tensor&)>> cases = {
      {"add", [](const Tensor& a, const Tensor& b) { return add(a, b); }},
      {"sub", [](const Tensor& a, const Tensor& b) { return sub(a, b); }},
      {"mul", [](const Tensor& a, const Tensor& b) { return mul(a, b); }},
      {"div", [](const Tensor& a, const Tensor& b) { return div(a, add(mul(b, b), 1.0)); }},
      {"pow", [](const Tensor& a, const Tensor& b) { return pow(add(mul(a, a), 1.0), b); }},
      {"maximum", [](const Tensor& a, const Tensor& b) { return maximum(a, b); }},
      {"minimum", [](const Tensor& a, const Tensor& b) { return minimum(a, b); }},
  };
  for (const auto& [name, fn] : cases) {
    SCOPED_TRACE(name);
    auto f = [fn = fn](const std::vector<Tensor>& in) { return fn(in[0], in[1]); };
    expect_gradients_match(f, {random_input({2, 3}, 1), random_input({2, 3}, 2)});
    expect_gradients_match(f, {random_input({2, 1, 3}, 3), random_input({4, 1}, 4)});
    expect_gradients_match([fn = fn](const std::vector<Tensor>& in) { return fn(in[0].t(), in[1]); },
                           {random_input({3, 2}, 7), random_input({3}, 8)});
  }
}

// Rows whose inputs are contiguous or broadcast along them take a vectorized loop (one
// instantiation per pattern); every pattern, and a strided output, against element-by-element math.
TEST(Elementwise, BroadcastRowsMatchElementByElement) {
  Generator gen(5);
  const Tensor a = randn({6, 40}, DType::Float32, cpu(), gen);
  const Tensor column = randn({6, 1}, DType::Float32, cpu(), gen);
  const Tensor row = randn({1, 40}, DType::Float32, cpu(), gen);
  const std::vector<float> av = a.to_vector<float>(), cv = column.to_vector<float>(), rv = row.to_vector<float>();
  auto expect_each = [](const Tensor& out, const std::function<float(int64_t, int64_t)>& expected) {
    const std::vector<float> got = out.contiguous().to_vector<float>();
    for (int64_t i = 0; i < 6; ++i)
      for (int64_t j = 0; j < 40; ++j) ASSERT_EQ(got[i * 40 + j], expected(i, j)) << i << "," << j;
  };
  expect_each(mul(a, column), [&](int64_t i, int64_t j) { return av[i * 40 + j] * cv[i]; });
  expect_each(mul(column, a), [&](int64_t i, int64_t j) { return cv[i] * av[i * 40 + j]; });
  expect_each(sub(column, row), [&](int64_t i, int64_t j) { return cv[i] - rv[j]; });
  expect_each(div(a, row), [&](int64_t i, int64_t j) { return av[i * 40 + j] / rv[j]; });
  const Tensor cond = gt(a, zeros({1}, DType::Float32));
  expect_each(where(cond, column, row), [&](int64_t i, int64_t j) { return av[i * 40 + j] > 0 ? cv[i] : rv[j]; });
  // A transposed input: strided along the row, so the element-by-element loop.
  const Tensor at = a.t().contiguous().t();
  expect_each(add(at, column), [&](int64_t i, int64_t j) { return av[i * 40 + j] + cv[i]; });
}

TEST(ElementwiseGrad, WhereAndMaskedFill) {
  const Tensor cond = Tensor::from_vector<double>({1, 0, 0, 1, 1, 0}, {2, 3});
  expect_gradients_match([&](const std::vector<Tensor>& in) { return where(cond, in[0], in[1]); },
                         {random_input({2, 3}, 1), random_input({3}, 2)});
  expect_gradients_match([&](const std::vector<Tensor>& in) { return masked_fill(in[0], cond, -1.0); },
                         {random_input({2, 3}, 3)});
}

TEST(Reduce, ForwardValuesByHand) {
  const Tensor x = Tensor::from_vector<double>({1, 5, 3, 4, 2, 6}, {2, 3});
  EXPECT_EQ(values(sum(x)), (V{21}));
  EXPECT_EQ(values(sum(x, {0})), (V{5, 7, 9}));
  EXPECT_EQ(sum(x, {1}, true).shape(), (Shape{2, 1}));
  EXPECT_EQ(values(mean(x, {1})), (V{3, 4}));
  EXPECT_EQ(values(amax(x, {0})), (V{4, 5, 6}));
  auto [v, i] = max(x, 1);
  EXPECT_EQ(values(v), (V{5, 6}));
  EXPECT_EQ(i.to_vector<int64_t>(), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(argmax(x, 0).to_vector<int64_t>(), (std::vector<int64_t>{1, 0, 1}));
  EXPECT_EQ(values(min(x, 1).first), (V{1, 2}));
  EXPECT_EQ(values(var(x, {1})), (V{4, 4}));
  EXPECT_NEAR(values(norm(x))[0], std::sqrt(91.0), 1e-12);
  EXPECT_EQ(values(sum(x.t(), {1})), (V{5, 7, 9}));
}

// The one-pass kernel against its definition, sum(x * x): the same float32 squares summed in
// the same order, so along the last axis (a row reduction either way) the bits agree.
TEST(Reduce, SumOfSquaresIsTheSumOfTheSquares) {
  Generator gen(21);
  const Tensor x = randn({5, 7, 300}, DType::Float32, cpu(), gen);
  for (bool keepdim : {false, true}) {
    EXPECT_EQ(sum_of_squares(x, {2}, keepdim).to_vector<float>(), sum(mul(x, x), {2}, keepdim).to_vector<float>());
    EXPECT_EQ(sum_of_squares(x.permute({2, 0, 1}), {0}, keepdim).to_vector<float>(),
              sum(mul(x, x), {2}, keepdim).to_vector<float>());
  }
  // Other axis sets go through a transposing copy here and a ones-vector product in sum: equal to rounding.
  const std::vector<float> over_leading = sum_of_squares(x, {0, 1}).to_vector<float>();
  const std::vector<float> reference = sum(mul(x, x), {0, 1}).to_vector<float>();
  for (size_t i = 0; i < reference.size(); ++i) EXPECT_NEAR(over_leading[i], reference[i], 1e-5 * reference[i]);
  EXPECT_EQ(values(sum_of_squares(zeros({2, 0}, DType::Float64), {1})), (V{0, 0}));
  EXPECT_EQ(values(sum_of_squares(Tensor::from_vector<double>({1, -2, 3}, {3}))), (V{14}));
}

TEST(ReduceGrad, AllReductionsOverSeveralAxes) {
  const std::vector<std::vector<int64_t>> axes_cases = {{}, {0}, {1}, {-1}, {0, 2}};
  for (const auto& axes : axes_cases) {
    for (bool keepdim : {false, true}) {
      SCOPED_TRACE(shape_str(axes) + (keepdim ? " keepdim" : ""));
      const auto x = random_input({2, 3, 4}, 11);
      expect_gradients_match([&](const std::vector<Tensor>& in) { return sum(in[0], axes, keepdim); }, {x});
      expect_gradients_match([&](const std::vector<Tensor>& in) { return mean(in[0], axes, keepdim); }, {x});
      expect_gradients_match([&](const std::vector<Tensor>& in) { return amax(in[0], axes, keepdim); }, {x});
      expect_gradients_match([&](const std::vector<Tensor>& in) { return amin(in[0], axes, keepdim); }, {x});
      expect_gradients_match([&](const std::vector<Tensor>& in) { return var(in[0], axes, keepdim); }, {x});
      expect_gradients_match([&](const std::vector<Tensor>& in) { return norm(in[0], axes, keepdim); }, {x});
      expect_gradients_match([&](const std::vector<Tensor>& in) { return sum_of_squares(in[0], axes, keepdim); }, {x});
    }
  }
  for (int64_t dim : {0, 1, 2}) {
    expect_gradients_match([&](const std::vector<Tensor>& in) { return max(in[0], dim).first; }, {random_input({2, 3, 4}, 12)});
    expect_gradients_match([&](const std::vector<Tensor>& in) { return min(in[0], dim, true).first; },
                           {random_input({2, 3, 4}, 13)});
  }
  // non-contiguous input
  expect_gradients_match([&](const std::vector<Tensor>& in) { return sum(in[0].permute({2, 0, 1}), {1}); },
                         {random_input({2, 3, 4}, 14)});
}

TEST(Topk, ValuesAndIndicesByHand) {
  const Tensor x = Tensor::from_vector<double>({1, 5, 3, 5, -2, 3}, {6});
  auto [v, i] = topk(x, 4);
  EXPECT_EQ(values(v), (V{5, 5, 3, 3}));
  EXPECT_EQ(i.to_vector<int64_t>(), (I{1, 3, 2, 5}));
  std::tie(v, i) = topk(x, 4, 0, TopkOrder::ByIndex);
  EXPECT_EQ(values(v), (V{5, 3, 5, 3}));
  EXPECT_EQ(i.to_vector<int64_t>(), (I{1, 2, 3, 5}));
  EXPECT_EQ(topk(x, 1).second.to_vector<int64_t>(), (I{1}));
  EXPECT_EQ(topk(x, 6).second.to_vector<int64_t>(), (I{1, 3, 2, 5, 0, 4}));
  // NaN ranks above every number; NaNs among themselves by index.
  const Tensor with_nan = Tensor::from_vector<double>({2, kNan, 7, kNan}, {4});
  EXPECT_EQ(topk(with_nan, 3).second.to_vector<int64_t>(), (I{1, 3, 2}));
  // -0 and +0 are equal: a tie, so the lower index comes first.
  EXPECT_EQ(topk(Tensor::from_vector<double>({-1, -0.0, 0.0}, {3}), 2).second.to_vector<int64_t>(), (I{1, 2}));
}

TEST(Topk, MatchesTheReferenceOnRowsWithTiesAndNans) {
  std::mt19937_64 rng(5);
  std::uniform_int_distribution<int> small(-2, 2);
  const int64_t rows = 4, n = 9;
  V data(static_cast<size_t>(rows * n));
  for (double& d : data) d = small(rng);  // few distinct values: many ties
  data[3] = data[12] = data[16] = kNan;
  for (DType dtype : {DType::Float32, DType::Float64})
    for (TopkOrder order : {TopkOrder::ByValue, TopkOrder::ByIndex})
      for (int64_t k : {1, 2, 5, 9}) {
        SCOPED_TRACE(std::string(dtype_name(dtype)) + " k " + std::to_string(k) +
                     (order == TopkOrder::ByIndex ? " by index" : " by value"));
        const Tensor x = Tensor::from_vector(data, {rows, n}).to(dtype);
        const auto [v, i] = topk(x, k, -1, order);
        ASSERT_EQ(v.shape(), (Shape{rows, k}));
        ASSERT_EQ(v.dtype(), dtype);
        ASSERT_EQ(i.dtype(), DType::Int64);
        const V got_values = values(v);
        const I got_indices = i.to_vector<int64_t>();
        for (int64_t r = 0; r < rows; ++r) {
          const V row(data.begin() + r * n, data.begin() + (r + 1) * n);
          const I want = reference_topk(row, k, order);
          V want_values;
          for (int64_t j : want) want_values.push_back(row[j]);
          EXPECT_EQ(I(got_indices.begin() + r * k, got_indices.begin() + (r + 1) * k), want) << "row " << r;
          EXPECT_TRUE(same_values(V(got_values.begin() + r * k, got_values.begin() + (r + 1) * k), want_values)) << "row " << r;
        }
      }
}

TEST(Topk, AlongAnyDimAndEmptyK) {
  Generator gen(3);
  const Tensor x = randn({4, 6, 5}, DType::Float64, cpu(), gen);
  for (int64_t dim : {0, 1}) {
    const auto [v, i] = topk(x, 3, dim);
    const auto [v_last, i_last] = topk(x.transpose(dim, 2), 3);
    EXPECT_EQ(values(v), values(v_last.transpose(dim, 2)));
    EXPECT_EQ(i.to_vector<int64_t>(), i_last.transpose(dim, 2).contiguous().to_vector<int64_t>());
    EXPECT_EQ(values(gather(x, dim, i)), values(v));
  }
  const auto [v, i] = topk(x, 0);
  EXPECT_EQ(v.shape(), (Shape{4, 6, 0}));
  EXPECT_EQ(i.shape(), (Shape{4, 6, 0}));
}

// No rows to rank: empty results (and an empty gradient), never a division by the row count.
TEST(Topk, NoRowsGiveEmptyResults) {
  for (const Shape& shape : {Shape{0, 5}, Shape{3, 0, 5}}) {
    const Tensor x = zeros(shape, DType::Float64).requires_grad_();
    for (TopkOrder order : {TopkOrder::ByValue, TopkOrder::ByIndex}) {
      const auto [v, i] = topk(x, 2, -1, order);
      Shape want = shape;
      want.back() = 2;
      EXPECT_EQ(v.shape(), want);
      EXPECT_EQ(i.shape(), want);
      sum(v).backward();
      EXPECT_EQ(x.grad().shape(), shape);
    }
  }
}

TEST(Topk, RejectsBadKDimAndDtype) {
  const Tensor x = zeros({2, 3});
  expect_error_mentions([&] { topk(x, 4); }, {"topk", "k = 4", "[0, 3]"});
  expect_error_mentions([&] { topk(x, -1); }, {"topk", "k = -1"});
  expect_error_mentions([&] { topk(x, 3, 0); }, {"topk", "k = 3", "[0, 2]"});
  expect_error_mentions([&] { topk(x, 1, 2); }, {"topk", "dimension 2"});
  expect_error_mentions([&] { topk(scalar_tensor(1.0), 1); }, {"topk", "0-d"});
  expect_error_mentions([&] { topk(Tensor::from_vector<int64_t>({1, 2}, {2}), 1); }, {"topk", "int64"});
}

TEST(TopkGrad, ValuesSendTheGradientToTheSelectedEntries) {
  for (int64_t dim : {0, 1, -1})
    for (TopkOrder order : {TopkOrder::ByValue, TopkOrder::ByIndex})
      expect_gradients_match([&](const std::vector<Tensor>& in) { return topk(in[0], 2, dim, order).first; },
                             {random_input({3, 4, 5}, 15)});
  // k = n: every entry is selected once, so the gradient is the upstream one, permuted back.
  expect_gradients_match([&](const std::vector<Tensor>& in) { return topk(in[0], 5).first; }, {random_input({2, 5}, 16)});
}

TEST(Shape, CatSplitChunkStack) {
  const Tensor a = arange(0, 4, 1, DType::Float64).reshape({2, 2});
  const Tensor b = arange(4, 6, 1, DType::Float64).reshape({2, 1});
  EXPECT_EQ(values(cat({a, b}, 1)), (V{0, 1, 4, 2, 3, 5}));
  const auto parts = split(arange(0, 5), 2, 0);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[2].to_vector<float>(), (std::vector<float>{4}));
  EXPECT_EQ(chunk(arange(0, 6), 3, 0)[1].to_vector<float>(), (std::vector<float>{2, 3}));
  EXPECT_EQ(stack({a, a}, 0).shape(), (Shape{2, 2, 2}));
  expect_error_mentions([&] { cat({a, ones({3, 3}, DType::Float64)}, 1); }, {"cat", "[2, 2]", "[3, 3]"});
}

TEST(ShapeGrad, ViewsAndCopies) {
  auto check = [](const char* name, const ml::testing::TensorFn& f, const std::vector<Tensor>& in) {
    SCOPED_TRACE(name);
    expect_gradients_match(f, in);
  };
  check("reshape", [](auto& in) { return in[0].reshape({4, 3}); }, {random_input({2, 6}, 1)});
  check("permute", [](auto& in) { return in[0].permute({2, 0, 1}); }, {random_input({2, 3, 4}, 2)});
  check("transpose+reshape", [](auto& in) { return in[0].transpose(0, 1).reshape({-1}); }, {random_input({2, 3}, 3)});
  check("narrow", [](auto& in) { return in[0].narrow(1, 1, 2); }, {random_input({3, 4}, 4)});
  check("unsqueeze/squeeze", [](auto& in) { return in[0].unsqueeze(1).squeeze(1).unsqueeze(0); }, {random_input({3}, 5)});
  check("expand", [](auto& in) { return in[0].expand({2, 3, 4}); }, {random_input({3, 1}, 6)});
  check("flatten", [](auto& in) { return in[0].flatten(1); }, {random_input({2, 3, 2}, 7)});
  check("cat", [](auto& in) { return cat({in[0], in[1]}, 0); }, {random_input({1, 3}, 8), random_input({2, 3}, 9)});
  check("stack", [](auto& in) { return stack({in[0], in[1]}, 1); }, {random_input({2, 3}, 10), random_input({2, 3}, 11)});
  check("split", [](auto& in) { auto p = split(in[0], 2, 1); return mul(p[0], p[1]); }, {random_input({3, 4}, 12)});
  check("chunk", [](auto& in) { auto p = chunk(in[0], 2, 0); return sub(p[0], p[1]); }, {random_input({4, 2}, 13)});
  check("clone+contiguous", [](auto& in) { return in[0].t().contiguous().clone(); }, {random_input({2, 3}, 14)});
}

TEST(ShapeGrad, DtypeCastPassesGradientBackInTheSourceDtype) {
  Tensor x = random_input({3}, 15);
  sum(mul(x.to(DType::Float32), 2.0)).backward();
  EXPECT_EQ(x.grad().dtype(), DType::Float64);
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{2, 2, 2}));
}

TEST(Indexing, IndexSelectGatherScatter) {
  const Tensor x = arange(0, 6, 1, DType::Float64).reshape({3, 2});
  const Tensor idx = Tensor::from_vector<int64_t>({2, 0, 2}, {3});
  EXPECT_EQ(values(index_select(x, 0, idx)), (V{4, 5, 0, 1, 4, 5}));
  const Tensor gidx = Tensor::from_vector<int64_t>({1, 0, 0}, {3, 1});
  EXPECT_EQ(values(gather(x, 1, gidx)), (V{1, 2, 4}));
  EXPECT_EQ(values(scatter_add(zeros({3, 2}, DType::Float64), 1, gidx, ones({3, 1}, DType::Float64))),
            (V{0, 1, 1, 0, 1, 0}));
  expect_error_mentions([&] { index_select(x, 0, Tensor::from_vector<int64_t>({3}, {1})); }, {"index_select", "3"});
  expect_error_mentions([&] { index_select(x, 0, ones({1})); }, {"index_select", "int64"});
}

// index_add_ against the plain definition self[o, index[j], i] += src[o, j, i], along each dim of a
// 3-D tensor, with a repeated index and an inner size that spans several of the kernel's blocks.
TEST(Indexing, IndexAddInPlaceMatchesTheDefinition) {
  const Shape shape{5, 6, 600};
  const std::vector<int64_t> positions{4, 0, 4, 2};
  const Tensor idx = Tensor::from_vector<int64_t>(positions, {4});
  for (int64_t dim = 0; dim < 3; ++dim) {
    Tensor self = random_input(shape, 20 + dim);
    Shape src_shape = shape;
    src_shape[dim] = 4;
    const Tensor src = random_input(src_shape, 30 + dim);
    std::vector<double> expected = self.to_vector<double>();
    const std::vector<double> added = src.to_vector<double>();
    for (int64_t a = 0; a < src_shape[0]; ++a)
      for (int64_t b = 0; b < src_shape[1]; ++b)
        for (int64_t c = 0; c < src_shape[2]; ++c) {
          int64_t at[3] = {a, b, c};
          at[dim] = positions[static_cast<size_t>(at[dim])];
          expected[static_cast<size_t>((at[0] * shape[1] + at[1]) * shape[2] + at[2])] +=
              added[static_cast<size_t>((a * src_shape[1] + b) * src_shape[2] + c)];
        }
    NoGradGuard no_grad;
    index_add_(self, dim, idx, src);
    EXPECT_EQ(self.to_vector<double>(), expected) << "dim " << dim;
  }
  Tensor small = zeros({3, 2}, DType::Float64);
  expect_error_mentions([&] { index_add_(small, 0, idx, ones({3, 2}, DType::Float64)); }, {"index_add_", "[4, 2]"});
  expect_error_mentions([&] { index_add_(small, 0, Tensor::from_vector<int64_t>({3}, {1}), ones({1, 2}, DType::Float64)); },
                        {"index_add", "index 3"});
  Tensor transposed = zeros({2, 3}, DType::Float64).t();
  expect_error_mentions([&] { index_add_(transposed, 0, Tensor::from_vector<int64_t>({1}, {1}), ones({1, 2}, DType::Float64)); },
                        {"index_add_", "contiguous"});
}

TEST(IndexingGrad, IndexSelectGatherScatter) {
  const Tensor idx = Tensor::from_vector<int64_t>({2, 0, 2, 1}, {4});
  expect_gradients_match([&](auto& in) { return index_select(in[0], 0, idx); }, {random_input({3, 2}, 1)});
  expect_gradients_match([&](auto& in) { return index_select(in[0], 1, idx); }, {random_input({2, 3}, 2)});
  const Tensor gidx = Tensor::from_vector<int64_t>({1, 0, 0, 1, 1, 1}, {3, 2});
  expect_gradients_match([&](auto& in) { return gather(in[0], 1, gidx); }, {random_input({3, 2}, 3)});
  expect_gradients_match([&](auto& in) { return scatter_add(in[0], 1, gidx, in[1]); },
                         {random_input({3, 2}, 4), random_input({3, 2}, 5)});
}

TEST(Matmul, ForwardShapesAndValues) {
  const Tensor a = arange(0, 6, 1, DType::Float64).reshape({2, 3});
  const Tensor b = arange(0, 6, 1, DType::Float64).reshape({3, 2});
  EXPECT_EQ(values(matmul(a, b)), (V{10, 13, 28, 40}));
  EXPECT_EQ(values(matmul(a, arange(0, 3, 1, DType::Float64))), (V{5, 14}));
  EXPECT_EQ(matmul(ones({5, 1, 2, 3}), ones({4, 3, 7})).shape(), (Shape{5, 4, 2, 7}));
  EXPECT_EQ(values(matmul(b.t(), a.t())), (V{10, 28, 13, 40}));
}

// An expanded operand repeats one row (row stride 0) or one column (column stride 0): BLAS must
// not read it as a dense matrix (M x K elements from a K-element buffer); the op copies it first.
TEST(Matmul, ExpandedOperandsAreNotReadAsDenseMatrices) {
  const Tensor row = arange(0, 3, 1, DType::Float64).reshape({1, 3}).expand({4, 3});  // 4 rows {0, 1, 2}
  const Tensor b = arange(0, 6, 1, DType::Float64).reshape({3, 2});
  EXPECT_EQ(values(matmul(row, b)), (V{10, 13, 10, 13, 10, 13, 10, 13}));
  const Tensor column = arange(1, 4, 1, DType::Float64).reshape({3, 1}).expand({3, 2});  // columns {1, 2, 3}
  const Tensor a = arange(0, 6, 1, DType::Float64).reshape({2, 3});
  EXPECT_EQ(values(matmul(a, column)), (V{8, 8, 26, 26}));
  EXPECT_EQ(values(matmul(row.reshape({1, 4, 3}).expand({2, 4, 3}), column)), V(16, 8.0));
  expect_gradients_match([](auto& in) { return matmul(in[0].expand({5, 4, 3}), in[1].expand({5, 3, 2})); },
                         {random_input({1, 1, 3}, 17), random_input({3, 1}, 18)});
}

// Attention's heads: q and k are views [B, H, T, D] of one packed [B, T, 3HD] activation, whose
// batch dims do not merge into one stride. The product runs per batch index on the views in place
// and equals the product of contiguous copies; so do the gradients, and a batch broadcast along
// the first dim only (strides 0 then K*N) takes the same path.
TEST(Matmul, HeadViewsOfAPackedActivationMultiplyInPlace) {
  const auto heads = [](const Tensor& packed, int64_t part) {
    return packed.narrow(2, part * 12, 12).reshape({2, 5, 3, 4}).transpose(1, 2);  // [2, 3, 5, 4]
  };
  const Tensor packed = random_input({2, 5, 36}, 19);
  const Tensor q = heads(packed, 0), k = heads(packed, 1);
  const std::vector<double> expected = values(matmul(q.contiguous(), k.contiguous().transpose(-1, -2)));
  const std::vector<double> got = values(matmul(q, k.transpose(-1, -2)));
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], expected[i], 1e-12) << i;
  expect_gradients_match([&](auto& in) { return matmul(heads(in[0], 0), heads(in[0], 2).transpose(-1, -2)); },
                         {random_input({2, 5, 36}, 20)});
  expect_gradients_match([](auto& in) { return matmul(in[0], in[1].expand({2, 3, 4, 2})); },
                         {random_input({2, 3, 5, 4}, 21), random_input({1, 3, 4, 2}, 22)});
}

// matmul(a, b, alpha) is alpha * (a @ b) on every path (one product, the batch folded into rows,
// per-head views), and its gradients carry the factor.
TEST(Matmul, AScaleFactorRidesInTheProduct) {
  const Tensor a = random_input({2, 3, 4}, 23), b = random_input({2, 4, 5}, 24), w = random_input({4, 5}, 25);
  const Tensor packed = random_input({2, 5, 36}, 26);
  const Tensor q = packed.narrow(2, 0, 12).reshape({2, 5, 3, 4}).transpose(1, 2);
  const Tensor k = packed.narrow(2, 12, 12).reshape({2, 5, 3, 4}).transpose(1, 2);
  for (const auto& [x, y] : std::vector<std::pair<Tensor, Tensor>>{{a, b}, {a, w}, {q, k.transpose(-1, -2)}}) {
    const std::vector<double> expected = values(mul(matmul(x, y), -0.75)), got = values(matmul(x, y, -0.75));
    ASSERT_EQ(got.size(), expected.size());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], expected[i], 1e-12) << i;
  }
  expect_gradients_match([](auto& in) { return matmul(in[0], in[1], 0.5); },
                         {random_input({2, 3, 4}, 27), random_input({2, 4, 5}, 28)});
  expect_gradients_match([](auto& in) { return matmul(in[0], in[1], -2.0); },
                         {random_input({2, 3, 4}, 29), random_input({4, 5}, 30)});
}

// An empty inner dimension sums nothing: zeros, and zero gradients of the empty shapes.
TEST(Matmul, EmptyInnerDimensionGivesZeros) {
  const Tensor a = ones({3, 0}, DType::Float64).requires_grad_(), b = ones({2, 0, 4}, DType::Float64).requires_grad_();
  const Tensor c = matmul(a, b);
  EXPECT_EQ(c.shape(), (Shape{2, 3, 4}));
  EXPECT_EQ(values(c), V(24, 0.0));
  sum(c).backward();
  EXPECT_EQ(a.grad().shape(), (Shape{3, 0}));
  EXPECT_EQ(b.grad().shape(), (Shape{2, 0, 4}));
}

// A product large enough to be split across threads, one block of C's rows per thread
// (framework/backends/cpu/cpu_linalg.cpp): in float32, with plain and transposed operands, a row
// count that is not a multiple of the block unit, a scale factor and a batch of such products, it
// matches float64 and gives the same bits on one thread and on two. A product wider than tall,
// which OpenBLAS threads itself (and rounds apart from its one-thread result), matches float64.
TEST(Matmul, AProductSplitAcrossThreadsMatchesFloat64AndOneThread) {
  const int saved = num_threads();
  Generator gen(31);
  const auto float32 = [&](const Shape& shape) { return randn(shape, DType::Float32, cpu(), gen); };
  struct Case {
    Tensor a, b;
    bool split;
    const char* what;
  };
  const std::vector<Case> cases{
      {float32({200, 100}), float32({100, 72}), true, "by rows"},
      {float32({100, 200}).t(), float32({72, 100}).t(), true, "by rows, both transposed"},
      {float32({2, 300, 80}), float32({80, 100}), true, "a batch of two, by rows"},
      {float32({40, 50}), float32({50, 333}), false, "wider than tall"},
      {float32({50, 40}).t(), float32({333, 50}).t(), false, "wider than tall, both transposed"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    set_num_threads(1);
    const Tensor one = matmul(c.a, c.b, -0.5);
    set_num_threads(2);
    const Tensor two = matmul(c.a, c.b, -0.5);
    if (c.split) {
      EXPECT_EQ(one.to_vector<float>(), two.to_vector<float>());
    }
    const Tensor expected = matmul(c.a.to(DType::Float64), c.b.to(DType::Float64), -0.5);
    EXPECT_LT(amax(abs(sub(two.to(DType::Float64), expected))).item(), 1e-4 * amax(abs(expected)).item());
  }
  set_num_threads(saved);
}

// Only OpenBLAS's fallback for a processor model it does not know (Prescott's SSE3 kernels) is
// overruled, with the best kernels the features allow; its deliberate choices and the user's stand.
TEST(BlasKernels, OnlyTheUnknownModelFallbackIsOverruled) {
  const X86Features avx512{true, true}, avx2{true, false}, neither{false, false};
  EXPECT_EQ(better_blas_kernels("Prescott", avx512, false), "SkylakeX");
  EXPECT_EQ(better_blas_kernels("Prescott", avx2, false), "Haswell");
  EXPECT_EQ(better_blas_kernels("Prescott", neither, false), "");
  EXPECT_EQ(better_blas_kernels("Prescott", avx512, true), "");
  EXPECT_EQ(better_blas_kernels("Zen", avx512, false), "");
  EXPECT_EQ(better_blas_kernels("Haswell", avx512, false), "");
}

// syrk is matmul(x, x.t()) (scaled, plus beta * c) with half the products: values against the
// product, in float64 where both are exact on small integers, for plain, transposed and expanded
// views, exact symmetry in float32 where matmul's two triangles may round apart, and gradients.
TEST(Syrk, MatchesTheProductWithItsTransposeAndIsExactlySymmetric) {
  const Tensor x = arange(0, 12, 1, DType::Float64).reshape({3, 4});
  EXPECT_EQ(values(syrk(x)), values(matmul(x, x.t())));
  EXPECT_EQ(values(syrk(x.t())), values(matmul(x.t(), x)));  // a transposed view, read as it is
  const Tensor c = add(matmul(x, x.t()), ones({3, 3}, DType::Float64));
  EXPECT_EQ(values(syrk(x, 2.0, c, -0.5)), values(sub(mul(matmul(x, x.t()), 2.0), mul(c, 0.5))));
  const Tensor repeated = arange(0, 3, 1, DType::Float64).reshape({1, 3}).expand({2, 3});
  EXPECT_EQ(values(syrk(repeated)), V(4, 5.0));
  EXPECT_EQ(values(syrk(ones({2, 0}, DType::Float64), 1.0, c.narrow(0, 0, 2).narrow(1, 0, 2), 3.0)),
            values(mul(c.narrow(0, 0, 2).narrow(1, 0, 2), 3.0)));  // an empty sum: beta * c
  Generator gen(7);
  const Tensor y = randn({65, 130}, DType::Float32, cpu(), gen);  // more than one 64-row mirror tile
  const V s = values(syrk(y)), reference = values(matmul(y.to(DType::Float64), y.t().to(DType::Float64)));
  for (int64_t i = 0; i < 65; ++i)
    for (int64_t j = 0; j < 65; ++j) {
      EXPECT_EQ(s[i * 65 + j], s[j * 65 + i]);
      EXPECT_NEAR(s[i * 65 + j], reference[i * 65 + j], 1e-4 * std::abs(reference[i * 65 + i]) + 1e-4);
    }
  // A lower triangle of 300 rows mirrored in two bands by two threads, in 16 x 16 register transposes
  // (AVX-512) and value by value (the reference): every entry set, to the upper triangle's bits.
  const int saved = num_threads();
  const CpuCapability saved_capability = cpu_capability();
  set_num_threads(2);
  const Tensor tall = randn({300, 20}, DType::Float32, cpu(), gen);
  const V tall_reference = values(matmul(tall.to(DType::Float64), tall.t().to(DType::Float64)));
  for (const CpuCapability capability : {CpuCapability::Default, CpuCapability::Avx512}) {
    if (capability == CpuCapability::Avx512 && !avx512_loops_available()) continue;
    set_cpu_capability(capability);
    const V t = values(syrk(tall));
    int64_t asymmetric = 0, off = 0;
    for (int64_t i = 0; i < 300; ++i)
      for (int64_t j = 0; j < 300; ++j) {
        asymmetric += t[i * 300 + j] != t[j * 300 + i];
        off += std::abs(t[i * 300 + j] - tall_reference[i * 300 + j]) > 1e-4 * tall_reference[i * 300 + i] + 1e-4;
      }
    EXPECT_EQ(asymmetric, 0) << cpu_capability_name();
    EXPECT_EQ(off, 0) << cpu_capability_name();
  }
  set_cpu_capability(saved_capability);
  set_num_threads(saved);
  expect_error_mentions([&] { syrk(ones({2, 2, 2, 2})); }, {"syrk", "matrix", "[2, 2, 2, 2]"});
  expect_error_mentions([&] { syrk(ones({2, 2, 3}), 1.0, ones({2, 3, 3}), 1.0); }, {"syrk", "[2, 3, 3]", "[2, 2, 2]"});
  expect_error_mentions([&] { syrk(ones({2, 3}), 1.0, ones({3, 3}), 1.0); }, {"syrk", "[3, 3]", "[2, 2]"});
  expect_error_mentions([&] { syrk(ones({2, 3}), 1.0, Tensor(), 1.0); }, {"syrk", "no matrix c"});
  expect_gradients_match([](auto& in) { return syrk(in[0], 1.5); }, {random_input({3, 4}, 19)});
  expect_gradients_match([](auto& in) { return syrk(in[0].t(), 0.5, add(in[1], in[1].t()), 2.0); },
                         {random_input({4, 3}, 20), random_input({3, 3}, 21)});
}

// A stack of matrices [B, k, l] gives each matrix the syrk it would get alone, bit for bit: in one
// backend call, with many small ones run one per thread at two threads, for a transposed stack, a
// stack with beta * c, and with gradients.
TEST(Syrk, AStackGivesEachMatrixItsOwnUpdate) {
  const int saved = num_threads();
  Generator gen(8);
  const Tensor many_small = randn({40, 12, 30}, DType::Float32, cpu(), gen);  // one per thread
  const Tensor few_large = randn({3, 70, 90}, DType::Float32, cpu(), gen);
  const Tensor c = syrk(randn({3, 70, 4}, DType::Float32, cpu(), gen));
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    for (const Tensor& stack : {many_small, few_large, few_large.transpose(1, 2)}) {
      const Tensor together = syrk(stack, 0.5);
      ASSERT_EQ(together.shape(), (Shape{stack.size(0), stack.size(1), stack.size(1)}));
      for (int64_t i = 0; i < stack.size(0); ++i)
        EXPECT_EQ(values(together.narrow(0, i, 1).squeeze(0)), values(syrk(stack.narrow(0, i, 1).squeeze(0), 0.5)))
            << "matrix " << i << " of " << shape_str(stack.shape()) << ", threads " << threads;
    }
    const Tensor with_c = syrk(few_large, 2.0, c, -0.5);
    for (int64_t i = 0; i < 3; ++i)
      EXPECT_EQ(values(with_c.narrow(0, i, 1).squeeze(0)),
                values(syrk(few_large.narrow(0, i, 1).squeeze(0), 2.0, c.narrow(0, i, 1).squeeze(0), -0.5)));
  }
  set_num_threads(saved);
  expect_gradients_match([](auto& in) { return syrk(in[0], 1.5); }, {random_input({2, 3, 4}, 22)});
  expect_gradients_match(
      [](auto& in) { return syrk(in[0].transpose(1, 2), 0.5, add(in[1], in[1].transpose(1, 2)), 2.0); },
      {random_input({2, 4, 3}, 23), random_input({2, 3, 3}, 24)});
}

// symmetric_product(x, y) is matmul(x, y.t()) where that product is symmetric (x and y polynomials
// in one symmetric matrix), with half the products: exact on small integers in float64, exactly
// symmetric in float32 on both float32 paths (muonlab's GEMM and OpenBLAS), the upper triangle of
// the product and its mirror where the product is not symmetric, a stack matrix by matrix at one
// and two threads, and errors.
TEST(SymmetricProduct, MatchesTheProductOfCommutingMatricesAndIsExactlySymmetric) {
  const Tensor s = syrk(arange(0, 12, 1, DType::Float64).reshape({3, 4}));  // symmetric, small integers
  const Tensor p = syrk(s, 1.0, s, 2.0);                                    // S^2 + 2 S: commutes with S
  EXPECT_EQ(values(symmetric_product(p, s, 0.5)), values(matmul(p, s, 0.5)));
  EXPECT_EQ(values(symmetric_product(p.t(), s)), values(matmul(p, s)));  // a transposed view, read as it is
  const Tensor x = arange(0, 6, 1, DType::Float64).reshape({2, 3}), y = arange(1, 7, 1, DType::Float64).reshape({2, 3});
  const V general = values(matmul(x, y.t()));  // [[8, 17], [26, 62]]: not symmetric
  EXPECT_EQ(values(symmetric_product(x, y)), V({general[0], general[1], general[1], general[3]}));

  Generator gen(9);
  const Tensor a = syrk(randn({65, 130}, DType::Float32, cpu(), gen), 1.0 / 130);  // more than one mirror tile
  const Tensor q = syrk(a, -0.5, a, 1.5);
  const V reference = values(matmul(q.to(DType::Float64), a.to(DType::Float64)));
  const CpuCapability saved = cpu_capability();
  for (const CpuCapability capability : {CpuCapability::Default, CpuCapability::Avx512}) {
    if (capability == CpuCapability::Avx512 && !avx512_loops_available()) continue;
    set_cpu_capability(capability);
    const V product = values(symmetric_product(q, a));
    for (int64_t i = 0; i < 65; ++i)
      for (int64_t j = 0; j < 65; ++j) {
        EXPECT_EQ(product[i * 65 + j], product[j * 65 + i]);
        EXPECT_NEAR(product[i * 65 + j], reference[i * 65 + j], 1e-5);
      }
  }
  set_cpu_capability(saved);

  const int saved_threads = num_threads();
  const Tensor stack = randn({5, 40, 24}, DType::Float32, cpu(), gen),
               other = randn({5, 40, 24}, DType::Float32, cpu(), gen);
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    const Tensor together = symmetric_product(stack, other, 2.0);
    ASSERT_EQ(together.shape(), (Shape{5, 40, 40}));
    for (int64_t i = 0; i < 5; ++i)
      EXPECT_EQ(values(together.narrow(0, i, 1).squeeze(0)),
                values(symmetric_product(stack.narrow(0, i, 1).squeeze(0), other.narrow(0, i, 1).squeeze(0), 2.0)))
          << "matrix " << i << ", threads " << threads;
  }
  set_num_threads(saved_threads);

  expect_error_mentions(
      [&] {
        symmetric_product(ones({2, 3}), ones({3, 2}));
      },
      {"symmetric_product", "[2, 3]", "[3, 2]"});
  expect_error_mentions(
      [&] {
        symmetric_product(ones({1, 2, 2, 2}), ones({1, 2, 2, 2}));
      },
      {"symmetric_product", "[1, 2, 2, 2]"});
  expect_error_mentions(
      [&] {
        symmetric_product(ones({2, 2}).requires_grad_(), ones({2, 2}));
      },
      {"symmetric_product", "gradient", "matmul"});
}

TEST(MatmulGrad, PlainBatchedBroadcastAndTransposed) {
  auto mm = [](auto& in) { return matmul(in[0], in[1]); };
  expect_gradients_match(mm, {random_input({3, 4}, 1), random_input({4, 2}, 2)});
  expect_gradients_match(mm, {random_input({2, 3, 4}, 3), random_input({4, 5}, 4)});
  expect_gradients_match(mm, {random_input({2, 3, 4}, 5), random_input({2, 4, 5}, 6)});
  expect_gradients_match(mm, {random_input({2, 1, 3, 4}, 7), random_input({3, 4, 2}, 8)});
  expect_gradients_match(mm, {random_input({4}, 9), random_input({4, 3}, 10)});
  expect_gradients_match(mm, {random_input({3, 4}, 11), random_input({4}, 12)});
  expect_gradients_match([](auto& in) { return matmul(in[0].transpose(-1, -2), in[1].transpose(-1, -2)); },
                         {random_input({2, 4, 3}, 13), random_input({2, 5, 4}, 14)});
  expect_gradients_match([](auto& in) { return matmul(in[0].permute({1, 0, 2}), in[1]); },
                         {random_input({3, 2, 4}, 15), random_input({2, 4, 3}, 16)});
}
